//! The emulator's public vocabulary: what tests and the demo put in (jobs, workloads) and
//! what they read back (snapshots, violations, webhook delivery records), plus the JIT
//! configuration format the fake runner agent understands.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// One job to queue: the `runs-on` labels, how long it runs and where.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The repository, `owner/repo`; it must be served by the emulator.
    pub repo: String,
    /// The job name (the `jobs.<id>.name` of a workflow).
    #[serde(default = "default_job_name")]
    pub name: String,
    /// The `runs-on` labels; a runner must carry every one of them (case-insensitively).
    pub labels: Vec<String>,
    /// How long the job runs once a runner takes it, in workload time (divided by the
    /// emulator's `speed`).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The workflow name of the run the job belongs to.
    #[serde(default = "default_workflow_name")]
    pub workflow_name: String,
}

fn default_job_name() -> String {
    "build".to_owned()
}
fn default_workflow_name() -> String {
    "CI".to_owned()
}

impl JobSpec {
    /// A job named `build` in workflow `CI`.
    pub fn new(repo: impl Into<String>, labels: &[&str], duration: Duration) -> Self {
        JobSpec {
            repo: repo.into(),
            name: default_job_name(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            duration,
            workflow_name: default_workflow_name(),
        }
    }

    /// The same job with another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// Where a queued job lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct JobRef {
    /// The workflow run id.
    pub run_id: u64,
    /// The job id.
    pub job_id: u64,
}

/// A scripted workload: workflow runs arriving at offsets from its start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// The arrivals, in any order.
    pub arrivals: Vec<Arrival>,
}

/// One workflow run of a workload: its jobs are queued together.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    /// When the run is queued, in workload time from the workload's start (divided by the
    /// emulator's `speed`).
    pub at: Duration,
    /// Its jobs (all in one repository).
    pub jobs: Vec<JobSpec>,
}

impl Workload {
    /// An empty workload.
    pub fn new() -> Self {
        Workload::default()
    }

    /// Adds a run with one job arriving at `at`.
    pub fn job(self, at: Duration, job: JobSpec) -> Self {
        self.run(at, vec![job])
    }

    /// Adds a run with several jobs arriving at `at`.
    pub fn run(mut self, at: Duration, jobs: Vec<JobSpec>) -> Self {
        self.arrivals.push(Arrival { at, jobs });
        self
    }

    /// The number of jobs in the workload.
    pub fn job_count(&self) -> usize {
        self.arrivals.iter().map(|a| a.jobs.len()).sum()
    }
}

/// A job's status, as in the REST API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Running on a runner.
    InProgress,
    /// Finished (see its conclusion).
    Completed,
}

impl JobStatus {
    /// The status as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }
}

/// How a completed job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// The runner reported success.
    Success,
    /// The runner reported failure, or was lost while running it.
    Failure,
    /// Cancelled before a runner took it.
    Cancelled,
}

impl Conclusion {
    /// The conclusion as GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// One job as the emulator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct JobSnapshot {
    /// The job id.
    pub id: u64,
    /// Its run.
    pub run_id: u64,
    /// `owner/repo`.
    pub repo: String,
    /// The job name.
    pub name: String,
    /// The `runs-on` labels.
    pub labels: Vec<String>,
    /// Its status.
    pub status: JobStatus,
    /// Its conclusion, once completed.
    pub conclusion: Option<Conclusion>,
    /// The runner that took it.
    pub runner_id: Option<u64>,
    /// That runner's name.
    pub runner_name: Option<String>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When a runner took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Real time spent waiting for a runner: until it started, or until now (or until it
    /// was cancelled) if it never did. Seconds in JSON.
    #[serde(serialize_with = "secs")]
    pub wait: Duration,
    /// [`JobSnapshot::wait`] in workload time (multiplied by the speed). Seconds in JSON.
    #[serde(serialize_with = "secs")]
    pub wait_workload: Duration,
    /// Its duration in workload time. Seconds in JSON.
    #[serde(serialize_with = "opt_secs")]
    pub duration: Option<Duration>,
}

/// A runner's connectivity, as in the REST API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    /// Its agent is connected and heartbeating.
    Online,
    /// Not connected yet, disconnected, or silent for longer than `offline_after`.
    Offline,
}

/// One registered runner as the emulator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerSnapshot {
    /// The runner id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Where it is registered: `owner` (organisation) or `owner/repo`.
    pub scope: String,
    /// Online or offline.
    pub status: RunnerStatus,
    /// Whether it is running a job (possibly while offline).
    pub busy: bool,
    /// The job it runs.
    pub job_id: Option<u64>,
    /// Ephemeral (one job, then removed): JIT runners and `--ephemeral` registrations.
    pub ephemeral: bool,
    /// Its labels (read-only and custom).
    pub labels: Vec<String>,
    /// Jobs it completed.
    pub jobs_completed: u32,
}

/// Counters of webhook deliveries since the start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// `workflow_job` events produced, per hook.
    pub events: u64,
    /// Deliveries dropped by the `webhook_drop_rate` fault (never sent).
    pub dropped: u64,
    /// Deliveries sent a second time by the `webhook_duplicate_rate` fault.
    pub duplicated: u64,
    /// HTTP requests answered with a 2xx.
    pub delivered: u64,
    /// HTTP requests that failed (connection error, timeout or non-2xx); never retried, as
    /// on GitHub.
    pub failed: u64,
}

/// One webhook delivery decision and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// `X-GitHub-Delivery` (shared by a duplicate and its original).
    pub delivery_id: String,
    /// `X-GitHub-Hook-ID`.
    pub hook_id: u64,
    /// The `action` (`queued`, `in_progress`, `completed`).
    pub action: String,
    /// The job.
    pub job_id: u64,
    /// Whether this is the duplicate copy.
    pub duplicate: bool,
    /// Whether the fault injector dropped it (then nothing was sent).
    pub dropped: bool,
    /// The receiver's HTTP status, once sent and answered.
    pub status: Option<u16>,
}

/// What the emulator holds at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Every job ever queued, by id.
    pub jobs: Vec<JobSnapshot>,
    /// Every registered runner, by id.
    pub runners: Vec<RunnerSnapshot>,
    /// Webhook counters.
    pub webhooks: WebhookStats,
    /// Violations recorded so far.
    pub violations: Vec<Violation>,
    /// The time compression in force.
    pub speed: f64,
}

impl Snapshot {
    /// Jobs waiting for a runner.
    pub fn queued(&self) -> impl Iterator<Item = &JobSnapshot> {
        self.jobs.iter().filter(|j| j.status == JobStatus::Queued)
    }

    /// Jobs running.
    pub fn in_progress(&self) -> impl Iterator<Item = &JobSnapshot> {
        self.jobs
            .iter()
            .filter(|j| j.status == JobStatus::InProgress)
    }

    /// Jobs completed (any conclusion).
    pub fn completed(&self) -> impl Iterator<Item = &JobSnapshot> {
        self.jobs
            .iter()
            .filter(|j| j.status == JobStatus::Completed)
    }

    /// Whether every job queued so far has completed.
    pub fn all_done(&self) -> bool {
        self.jobs.iter().all(|j| j.status == JobStatus::Completed)
    }
}

/// Something that must never happen to a well-behaved autoscaler, seen by the emulator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// When it was seen.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: ViolationKind,
}

/// The kinds of [`Violation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViolationKind {
    /// A runner was removed while running a job. The REST API refuses this with 422, so it
    /// is an internal-consistency check: seeing it means the emulator itself is broken.
    BusyRunnerDeleted {
        /// The runner.
        runner_id: u64,
        /// Its name.
        runner_name: String,
        /// The job it was running.
        job_id: u64,
    },
    /// A busy runner's agent stopped heartbeating (its process or machine vanished
    /// mid-job) and did not come back within `lost_job_timeout`; the job failed.
    RunnerLostMidJob {
        /// The runner.
        runner_id: u64,
        /// Its name.
        runner_name: String,
        /// The job that failed.
        job_id: u64,
    },
    /// A job was still queued when the caller checked that everything was done.
    JobNeverStarted {
        /// The job.
        job_id: u64,
    },
    /// A job was still running when the caller checked that everything was done.
    JobNotFinished {
        /// The job.
        job_id: u64,
        /// The runner running it.
        runner_name: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ViolationKind::BusyRunnerDeleted {
                runner_name,
                job_id,
                ..
            } => write!(
                f,
                "runner {runner_name} deleted while busy with job {job_id}"
            ),
            ViolationKind::RunnerLostMidJob {
                runner_name,
                job_id,
                ..
            } => write!(
                f,
                "runner {runner_name} vanished while running job {job_id}; the job failed"
            ),
            ViolationKind::JobNeverStarted { job_id } => {
                write!(f, "job {job_id} never started")
            }
            ViolationKind::JobNotFinished {
                job_id,
                runner_name,
            } => write!(f, "job {job_id} still running on {runner_name}"),
        }
    }
}

/// What the emulator encodes (base64 of this JSON) as `encoded_jit_config`, and what the
/// fake runner agent decodes. GitHub's real JIT configuration is opaque runner settings for
/// its private broker; this one names the emulator's runner API instead.
#[derive(Clone, Debug)]
pub struct JitConfig {
    /// The emulator's base URL (its `/_emulator/runner` API lives below it).
    pub url: String,
    /// The runner id.
    pub runner_id: u64,
    /// The runner name.
    pub runner_name: String,
    /// The runner's secret, sent as `Authorization: Bearer` to the runner API.
    pub token: SecretString,
    /// The runner's labels.
    pub labels: Vec<String>,
    /// Whether the runner takes one job only.
    pub ephemeral: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JitWire {
    url: String,
    runner_id: u64,
    runner_name: String,
    token: String,
    labels: Vec<String>,
    ephemeral: bool,
}

/// A JIT configuration could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid JIT configuration: {0}")]
pub struct JitConfigError(String);

impl JitConfig {
    /// Base64 of the JSON form.
    pub fn encode(&self) -> String {
        let wire = JitWire {
            url: self.url.clone(),
            runner_id: self.runner_id,
            runner_name: self.runner_name.clone(),
            token: self.token.expose_secret().to_owned(),
            labels: self.labels.clone(),
            ephemeral: self.ephemeral,
        };
        // A struct of strings and numbers always serializes.
        BASE64.encode(serde_json::to_vec(&wire).unwrap_or_default())
    }

    /// Parses an `encoded_jit_config`. The error never quotes the input.
    pub fn decode(encoded: &str) -> Result<Self, JitConfigError> {
        let bytes = BASE64
            .decode(encoded.trim())
            .map_err(|_| JitConfigError("not base64".to_owned()))?;
        let wire: JitWire = serde_json::from_slice(&bytes).map_err(|e| {
            // Only the category and position: serde messages may quote values.
            JitConfigError(format!(
                "not the emulator's JSON form ({:?} error at column {})",
                e.classify(),
                e.column()
            ))
        })?;
        Ok(JitConfig {
            url: wire.url,
            runner_id: wire.runner_id,
            runner_name: wire.runner_name,
            token: SecretString::from(wire.token),
            labels: wire.labels,
            ephemeral: wire.ephemeral,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_config_round_trips_and_hides_its_token() {
        let jit = JitConfig {
            url: "http://127.0.0.1:1".into(),
            runner_id: 7,
            runner_name: "rs-a-1".into(),
            token: SecretString::from("s3cret"),
            labels: vec!["self-hosted".into()],
            ephemeral: true,
        };
        let back = JitConfig::decode(&jit.encode()).expect("round trip");
        assert_eq!(back.runner_id, 7);
        assert_eq!(back.token.expose_secret(), "s3cret");
        assert!(!format!("{back:?}").contains("s3cret"));
        assert!(JitConfig::decode("%%%").is_err());
        let err =
            JitConfig::decode(&BASE64.encode(b"{\"token\":\"s3cret\"}")).expect_err("incomplete");
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn job_spec_reads_humantime_durations() {
        let spec: JobSpec =
            serde_json::from_str(r#"{"repo":"o/r","labels":["self-hosted"],"duration":"1m 30s"}"#)
                .expect("valid");
        assert_eq!(spec.duration, Duration::from_secs(90));
        assert_eq!(spec.name, "build");
    }
}
