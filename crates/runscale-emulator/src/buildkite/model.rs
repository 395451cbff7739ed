//! The emulator's vocabulary: jobs submitted by tests, and the snapshots and violations they
//! read back.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A command step's job to schedule.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Agent query rules (`queue=linux`, `os=linux`); without a `queue=` rule the job goes to
    /// the `default` queue.
    pub agent_query_rules: Vec<String>,
    /// The step's command: the agent's job runner runs it in a shell (`BUILDKITE_COMMAND`),
    /// and the job passes when it exits 0.
    pub command: String,
    /// Further variables of the job's environment (the step's `env`).
    pub env: BTreeMap<String, String>,
}

impl JobSpec {
    /// A job for `queue` that sleeps for `duration` (`sleep <seconds>`) and passes.
    pub fn new(queue: &str, duration: Duration) -> Self {
        Self::command(queue, &format!("sleep {}", duration.as_secs_f64()))
    }

    /// A job for `queue` running `command`.
    pub fn command(queue: &str, command: &str) -> Self {
        JobSpec {
            agent_query_rules: vec![format!("queue={queue}")],
            command: command.to_owned(),
            env: BTreeMap::new(),
        }
    }

    /// Adds an agent query rule (`key=value`).
    pub fn rule(mut self, rule: &str) -> Self {
        self.agent_query_rules.push(rule.to_owned());
        self
    }

    /// Adds a variable to the job's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// The queue named by agent query rules or agent tags: the value of `queue=`, else `default`.
pub fn queue_of(rules: &[String]) -> &str {
    rules
        .iter()
        .find_map(|r| r.strip_prefix("queue="))
        .unwrap_or("default")
}

/// Jobs scheduled over time: each entry is scheduled `at` after the workload starts.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// (offset from start, jobs scheduled then).
    pub arrivals: Vec<(Duration, Vec<JobSpec>)>,
}

/// Where a job is in its life (a subset of Buildkite's job states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Runnable, waiting for an agent.
    Scheduled,
    /// Handed to an agent by a ping; the agent has not accepted it yet.
    Assigned,
    /// Accepted (or acquired) by its agent, not started yet.
    Accepted,
    /// Running on its agent.
    Running,
    /// Finished with exit status 0.
    Passed,
    /// Finished with another exit status.
    Failed,
    /// Cancelled because its agent was stopped with `force: true`. Always a [`Violation`].
    Canceled,
    /// Its agent disconnected or went silent while running it. Always a [`Violation`].
    Lost,
}

impl JobStatus {
    /// Whether the job is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Passed | JobStatus::Failed | JobStatus::Canceled | JobStatus::Lost
        )
    }

    /// Whether an agent holds the job (assigned, accepted or running).
    pub fn is_held(self) -> bool {
        matches!(
            self,
            JobStatus::Assigned | JobStatus::Accepted | JobStatus::Running
        )
    }

    /// Buildkite's name of the state (the agent API's `GET /jobs/{id}` and the Stacks API).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Assigned => "assigned",
            JobStatus::Accepted => "accepted",
            JobStatus::Running => "running",
            JobStatus::Passed | JobStatus::Failed => "finished",
            JobStatus::Canceled => "canceled",
            JobStatus::Lost => "expired",
        }
    }
}

/// One job as the emulator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct JobSnapshot {
    /// Job UUID.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its agent query rules.
    pub agent_query_rules: Vec<String>,
    /// Its command.
    pub command: String,
    /// Its status.
    pub status: JobStatus,
    /// The name of the agent it was assigned to.
    pub agent: Option<String>,
    /// How many times an agent started it (more than one is a violation).
    pub starts: u32,
    /// When it became runnable.
    pub scheduled_at: DateTime<Utc>,
    /// When an agent started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The exit status its agent reported.
    pub exit_status: Option<i32>,
    /// Log bytes its agent uploaded (see [`EmulatorHandle::job_log`](super::EmulatorHandle::job_log)).
    pub log_bytes: u64,
    /// The stack that last reserved it through the Stacks API (the reservation may have
    /// expired).
    pub reserved_by: Option<String>,
    /// Successful reservations (a re-reservation by the holder counts again).
    pub reservations: u32,
}

/// Buildkite's connection states of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Registered, not connected yet.
    NeverConnected,
    /// Connected and taking jobs.
    Connected,
    /// Asked to stop; finishes its job first (unless forced), then disconnects.
    Stopping,
    /// Disconnected by itself.
    Disconnected,
    /// Went silent.
    Lost,
}

impl ConnectionState {
    /// Buildkite's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::NeverConnected => "never_connected",
            ConnectionState::Connected => "connected",
            ConnectionState::Stopping => "stopping",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Lost => "lost",
        }
    }

    /// Whether the agent is connected (REST lists only these).
    pub fn is_connected(self) -> bool {
        matches!(self, ConnectionState::Connected | ConnectionState::Stopping)
    }
}

/// One agent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentSnapshot {
    /// Agent UUID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its tags (`queue=linux`, ...).
    pub meta_data: Vec<String>,
    /// Its connection state.
    pub connection_state: ConnectionState,
    /// The job it runs.
    pub job: Option<String>,
    /// Jobs it finished.
    pub jobs_finished: u32,
    /// Paused through the REST API: no job is dispatched to it, and its pings answer `pause`.
    pub paused: bool,
    /// Registered with `ignore_in_dispatches` (`--acquire-job`), or finished a job with
    /// `ignore_agent_in_dispatches` (`--disconnect-after-job`): no ping hands it a job.
    pub ignore_in_dispatches: bool,
}

/// Something that must never happen in a correct autoscaling run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A job was started a second time.
    JobStartedTwice,
    /// An agent was stopped with `force: true` while running a job.
    StoppedWhileBusy,
    /// An agent disconnected while running a job.
    DisconnectedWhileBusy,
    /// An agent went silent (killed) while running a job.
    LostWhileBusy,
}

/// A recorded violation.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    /// What happened.
    pub kind: ViolationKind,
    /// The agent's name.
    pub agent: String,
    /// The job concerned.
    pub job: String,
    /// When it was noticed.
    pub at: DateTime<Utc>,
}

/// The emulator's state at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Every job ever scheduled, in order.
    pub jobs: Vec<JobSnapshot>,
    /// Every agent ever registered, by registration order.
    pub agents: Vec<AgentSnapshot>,
    /// Violations, in order.
    pub violations: Vec<Violation>,
    /// Most jobs running at once.
    pub peak_running: u32,
    /// Requests answered, by route (`GET /v3/metrics`, ...), faults included.
    pub requests: BTreeMap<String, u64>,
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

    /// Agents connected now (connected or stopping).
    pub fn connected(&self) -> usize {
        self.agents
            .iter()
            .filter(|a| a.connection_state.is_connected())
            .count()
    }
}
