//! A stateful emulator of the GitLab REST API (v4) parts an external runner autoscaler and
//! its runners use, with Job Hook delivery, fault injection and a violation log; and a fake
//! runner that takes jobs.
//!
//! Admin API (`PRIVATE-TOKEN: <token>` or `Authorization: Bearer <token>`; faults and
//! outages apply):
//! - `POST /api/v4/user/runners` → 201 `{id, token: "glrt-...", token_expires_at}`
//!   (`runner_type` `instance_type` | `group_type` + `group_id` | `project_type` +
//!   `project_id`, `description`, `tag_list`, `run_untagged`, `paused`, `locked`,
//!   `maintenance_note`).
//! - `GET /api/v4/runners`, `/runners/all`, `/groups/:id/runners`, `/projects/:id/runners`
//!   (filters `type`, `status`, `paused`, `tag_list`; paginated), `GET|PUT|DELETE
//!   /api/v4/runners/:id`, `GET /api/v4/runners/:id/managers` (`system_id`, `status`,
//!   `job_execution_status` `idle`|`active`).
//! - `GET /api/v4/projects/:id`, `GET /api/v4/projects/:id/jobs?scope[]=pending&scope[]=running`,
//!   `GET /api/v4/projects/:id/jobs/:job_id`, `GET /api/v4/groups/:id/projects` (projects
//!   and groups by numeric id or URL-encoded path). Lists are paginated with `page` /
//!   `per_page` (20 by default, 100 at most) and `x-total`, `x-total-pages`, `x-next-page`,
//!   `x-page`, `x-per-page`, `link` headers.
//!
//! Runner API (runner token or job token in the JSON body; never faulted):
//! `POST /api/v4/jobs/request {token, system_id, info}` → 201 job | 204 none (held up to
//! [`EmulatorConfig::long_poll`]) | 403; `PUT /api/v4/jobs/:id {token, state}`;
//! `POST /api/v4/runners/verify`; `DELETE /api/v4/runners/managers {token, system_id}`;
//! `DELETE /api/v4/runners {token}`.
//!
//! Rules: a runner takes the oldest pending job whose tags it all has (an untagged job only
//! with `run_untagged`), of a project in its scope, unless paused. Each `system_id` that asks
//! is a manager of the runner. A job whose runner or manager is deleted while it runs, or
//! whose runner sends no update for [`EmulatorConfig::job_lease`], fails with
//! `runner_system_failure` and is recorded as a [`Violation`].
//!
//! Not modelled: protected refs / `access_level`, `maximum_timeout`, traces, artifacts,
//! pipelines beyond an id, keyset pagination, token expiry and rotation.

mod agent;
mod config;
mod model;
mod server;
mod state;
mod webhook;

pub use agent::{
    AgentConfig, AgentError, AgentExit, AgentReport, MAX_BUILDS_VAR, NAME_VAR, SYSTEM_ID_VAR,
    TOKEN_VAR, URL_VAR, configs_from_credentials_file, run_agent,
};
pub use config::{EmulatorConfig, Faults, GroupConfig, ProjectConfig, WebhookConfig};
pub use model::{
    JobSnapshot, JobSpec, JobStatus, ManagerSnapshot, RunnerSnapshot, Snapshot, Violation,
    ViolationKind, Workload,
};
pub use server::{Emulator, EmulatorHandle};
