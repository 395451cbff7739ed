//! The emulator's vocabulary: jobs submitted by tests, and the snapshots and violations they
//! read back.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A CI job to queue as `pending`.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The project it belongs to.
    pub project_id: u64,
    /// The job's name.
    pub name: String,
    /// Its `tags:`; a runner takes it only if it has all of them (or, for an untagged job,
    /// if it runs untagged jobs).
    pub tags: Vec<String>,
    /// How long its default script runs (`sleep`).
    pub duration: Duration,
    /// Whether its default script fails (`exit 1` after the sleep).
    pub fail: bool,
    /// The job's `script:` lines, run by the runner's shell (bash) with the job's variables in
    /// its environment. Empty: `sleep <duration>`, then `exit 1` if `fail`.
    pub script: Vec<String>,
}

impl JobSpec {
    /// A job of `project_id` with `tags`, running for `duration`.
    pub fn new(project_id: u64, tags: &[&str], duration: Duration) -> Self {
        JobSpec {
            project_id,
            name: "build".to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            duration,
            fail: false,
            script: Vec::new(),
        }
    }

    /// The same job with these `script:` lines instead of the default `sleep`.
    pub fn with_script(mut self, lines: &[&str]) -> Self {
        self.script = lines.iter().map(|l| (*l).to_owned()).collect();
        self
    }

    /// The lines the runner runs.
    pub fn script_lines(&self) -> Vec<String> {
        if !self.script.is_empty() {
            return self.script.clone();
        }
        let mut lines = vec![format!("sleep {:.3}", self.duration.as_secs_f64())];
        if self.fail {
            lines.push("exit 1".to_owned());
        }
        lines
    }
}

/// Jobs arriving over time: each entry is queued `at` after the workload starts.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// (offset from start, jobs queued then).
    pub arrivals: Vec<(Duration, Vec<JobSpec>)>,
}

/// A job's status, as GitLab spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a runner.
    Pending,
    /// Picked by a runner.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with a failure (script failure, or lost runner: see `failure_reason`).
    Failed,
}

impl JobStatus {
    /// GitLab's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        }
    }

    /// Whether the job is over.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Failed)
    }
}

/// One job as the emulator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct JobSnapshot {
    /// Job id.
    pub id: u64,
    /// Project id.
    pub project_id: u64,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its status.
    pub status: JobStatus,
    /// `script_failure`, `runner_system_failure`, ... when failed.
    pub failure_reason: Option<String>,
    /// The runner (id) and manager (system id) that picked it.
    pub runner: Option<(u64, String)>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When a runner picked it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its log as the runner sent it (`PATCH /jobs/:id/trace`), lossily decoded; the emulator
    /// keeps at most 1 MiB per job.
    pub trace: String,
}

/// One runner manager (one runner process, by `system_id`).
#[derive(Clone, Debug, Serialize)]
pub struct ManagerSnapshot {
    /// Its `system_id`.
    pub system_id: String,
    /// Last contact.
    pub contacted_at: DateTime<Utc>,
    /// Jobs it runs now.
    pub running: Vec<u64>,
    /// Jobs it finished.
    pub jobs_done: u32,
}

/// One runner (one authentication token).
#[derive(Clone, Debug, Serialize)]
pub struct RunnerSnapshot {
    /// Runner id.
    pub id: u64,
    /// Description.
    pub description: String,
    /// Paused runners get no job.
    pub paused: bool,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether it takes untagged jobs.
    pub run_untagged: bool,
    /// Its managers.
    pub managers: Vec<ManagerSnapshot>,
}

/// Something that must never happen in a correct autoscaling run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A runner was deleted while one of its managers ran a job.
    RunnerDeletedWhileBusy,
    /// A manager was unregistered while it ran a job.
    ManagerDeletedWhileBusy,
    /// A running job's runner went silent past the lease (killed mid-job).
    JobLost,
}

/// A recorded violation.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    /// What happened.
    pub kind: ViolationKind,
    /// The runner id.
    pub runner: u64,
    /// The manager's system id.
    pub system_id: String,
    /// The job lost.
    pub job: u64,
    /// When it was noticed.
    pub at: DateTime<Utc>,
}

/// The emulator's state at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Every job ever queued, in order.
    pub jobs: Vec<JobSnapshot>,
    /// Runners that exist now.
    pub runners: Vec<RunnerSnapshot>,
    /// Violations, in order.
    pub violations: Vec<Violation>,
    /// Most jobs running at once.
    pub peak_running: u32,
    /// Distinct managers (runner id, system id) that ever contacted GitLab.
    pub managers_seen: usize,
    /// Runners ever created through `POST /user/runners`.
    pub runners_created: u32,
    /// Requests answered, by route (`GET /api/v4/projects/{id}/jobs`, ...), faults included.
    pub requests: BTreeMap<String, u64>,
    /// Admin requests refused by a fault or an outage.
    pub faulted: u64,
    /// Webhook deliveries attempted (duplicates included).
    pub webhooks_sent: u64,
}

impl Snapshot {
    /// Jobs with the given status.
    pub fn count(&self, status: JobStatus) -> usize {
        self.jobs.iter().filter(|j| j.status == status).count()
    }

    /// Whether every job is finished.
    pub fn all_finished(&self) -> bool {
        self.jobs.iter().all(|j| j.status.is_finished())
    }

    /// Managers of every runner.
    pub fn managers(&self) -> usize {
        self.runners.iter().map(|r| r.managers.len()).sum()
    }
}
