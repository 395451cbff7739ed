//! A stateful emulator of CircleCI's self-hosted runner API, with outbound webhooks, fault
//! injection, scripted workloads and a violation log; and a fake machine runner that takes
//! its tasks.
//!
//! What it serves, with an API token (`Circle-Token: <token>` or HTTP Basic with the token as
//! user name):
//! - `GET /api/v3/runner?resource-class=ns/rc` (or `?namespace=ns`): the runners connected
//!   now — name, hostname, first/last connected, last used. A runner appears with its first
//!   poll, stays while it polls or sends heartbeats, and leaves when it exits (or, if killed,
//!   after [`EmulatorConfig::runner_expiry`]; CircleCI: 12 h). Runners sharing a name (every
//!   instance of CircleCI's simple-Lambda example may use one fixed name) are told apart by
//!   the hostname they report and listed once each: CircleCI does not document this case.
//! - `GET /api/v3/runner/tasks?resource-class=` → `unclaimed_task_count`;
//!   `GET /api/v3/runner/tasks/running?resource-class=` → `running_runner_tasks`;
//!   `GET /api/v3/runner/resource?namespace=` → the resource classes.
//! - The same three reads under the older paths the seed systems use: `/api/v2/runner`,
//!   `/api/v2/tasks`, `/api/v2/tasks/running`.
//!
//! What runners call with their resource-class token (`Authorization: Bearer`); CircleCI's
//! real claim protocol is undocumented, so this one is the emulator's own:
//! `POST /api/v3/runner/claim {name, hostname}` (200 with a task and its task-scoped token, or
//! 204), `POST /api/v3/runner/tasks/{id}/heartbeat` and `.../complete {success}` with the task
//! token, `POST /api/v3/runner/disconnect {name, hostname}`.
//!
//! Rules: tasks are claimed oldest first by runners of their resource class; the plan's
//! concurrency caps running tasks over all classes; tasks of a class without runners stay
//! unclaimed. A task whose runner stops sending heartbeats for
//! [`EmulatorConfig::task_lease`] is lost and recorded as a [`Violation`] (the runner was
//! killed while holding it), as is a runner leaving with a task.
//!
//! Not modelled: resource-class and token CRUD, task-agent steps, `max_run_time`, unsafe
//! retries, the container runner.

mod agent;
mod config;
mod model;
mod server;
mod state;
mod webhook;

pub use agent::{
    AgentConfig, AgentError, AgentExit, AgentReport, IDLE_TIMEOUT_VARS, MODE_VARS, NAME_VARS,
    RunnerMode, TOKEN_VARS, URL_VARS, configs_from_credentials_file, run_agent,
};
pub use config::{EmulatorConfig, Faults, ResourceClassConfig, WebhookConfig};
pub use model::{
    RunnerSnapshot, Snapshot, TaskSnapshot, TaskSpec, TaskStatus, Violation, ViolationKind,
    Workload,
};
pub use server::{Emulator, EmulatorHandle};
pub use state::ClaimedTask;
pub use webhook::signature;
