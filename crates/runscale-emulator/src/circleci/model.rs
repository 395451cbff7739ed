//! The emulator's vocabulary: tasks submitted by tests, and the snapshots and violations they
//! read back.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A task to queue (one job of a workflow that runs on a self-hosted resource class).
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// `namespace/name` of the resource class it runs on.
    pub resource_class: String,
    /// The project slug as CircleCI's webhooks write it: `github/org/repo`,
    /// `bitbucket/org/repo` or `circleci/<org-id>/<project-id>`.
    pub project: String,
    /// The job's name.
    pub job_name: String,
    /// How long the runner takes to run it.
    pub duration: Duration,
    /// Whether the job fails (reported as `failed` instead of `success`).
    pub fail: bool,
}

impl TaskSpec {
    /// A task of `resource_class` in project `github/org/app` running for `duration`.
    pub fn new(resource_class: &str, duration: Duration) -> Self {
        TaskSpec {
            resource_class: resource_class.to_owned(),
            project: "github/org/app".to_owned(),
            job_name: "build".to_owned(),
            duration,
            fail: false,
        }
    }
}

/// Tasks arriving over time: each entry is queued `at` after the workload starts; the tasks
/// of one entry form one workflow.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// (offset from start, the tasks of one workflow).
    pub arrivals: Vec<(Duration, Vec<TaskSpec>)>,
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued, no runner has claimed it.
    Unclaimed,
    /// Claimed by a runner, which sends heartbeats.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with a failure reported by the runner.
    Failed,
    /// Its runner went silent while holding it (killed): CircleCI reports an infrastructure
    /// failure. Always a [`Violation`].
    Lost,
}

impl TaskStatus {
    /// Whether the task is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Lost
        )
    }
}

/// One task as the emulator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSnapshot {
    /// Task id (also the job id in webhooks).
    pub id: String,
    /// Its resource class.
    pub resource_class: String,
    /// Its workflow's id.
    pub workflow_id: String,
    /// Its status.
    pub status: TaskStatus,
    /// The runner that claimed it.
    pub runner: Option<String>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When it was claimed.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One runner in the listing.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerSnapshot {
    /// Its resource class.
    pub resource_class: String,
    /// Its name.
    pub name: String,
    /// The host it reported.
    pub hostname: String,
    /// First contact.
    pub first_connected: DateTime<Utc>,
    /// Latest poll or heartbeat.
    pub last_connected: DateTime<Utc>,
    /// When it last claimed or finished a task.
    pub last_used: Option<DateTime<Utc>>,
    /// The task it holds.
    pub task: Option<String>,
}

/// Something that must never happen in a correct autoscaling run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A runner was killed (went silent) while it held a task.
    TaskLost,
    /// A runner disconnected while it held a task.
    DisconnectedWhileBusy,
}

/// A recorded violation.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    /// What happened.
    pub kind: ViolationKind,
    /// The runner concerned.
    pub runner: String,
    /// The task concerned.
    pub task: String,
    /// When it was noticed.
    pub at: DateTime<Utc>,
}

/// The emulator's state at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Every task ever queued, in order.
    pub tasks: Vec<TaskSnapshot>,
    /// Runners in the listing.
    pub runners: Vec<RunnerSnapshot>,
    /// Violations, in order.
    pub violations: Vec<Violation>,
    /// Most tasks running at once over the organisation.
    pub peak_running: u32,
    /// Distinct runner names that ever connected.
    pub runners_seen: usize,
    /// API requests answered, by route (`GET /api/v3/runner/tasks`, ...), faults included.
    pub requests: BTreeMap<String, u64>,
    /// Webhook deliveries attempted (duplicates included).
    pub webhooks_sent: u64,
}

impl Snapshot {
    /// Tasks with the given status.
    pub fn count(&self, status: TaskStatus) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }

    /// Whether every task is finished.
    pub fn all_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.status.is_finished())
    }
}
