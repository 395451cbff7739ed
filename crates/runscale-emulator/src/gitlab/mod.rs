//! A stateful emulator of the GitLab REST API (v4) parts an external runner autoscaler and
//! its runners use — the real gitlab-runner included — with Job Hook delivery, fault
//! injection and a violation log; and a fake runner that takes jobs like `gitlab-runner
//! run-single`.
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
//! - Users who are not administrators ([`EmulatorConfig::users`], each with a token and
//!   project memberships; [`EmulatorHandle::add_member`] adds one while running):
//!   `GET /api/v4/user` says who the token belongs to, `GET /api/v4/projects?membership=true`
//!   (`min_access_level`, `order_by=id`, `sort`, paginated) lists the caller's projects,
//!   `POST /api/v4/projects/:id/runners {runner_id}` enables a project runner in another
//!   project (201; 403 without Maintainer, for a locked or group runner, or one the user does
//!   not maintain; 400 "has already been taken"), and a project runner takes jobs only of the
//!   projects it is enabled in. A user may create project runners in projects it maintains;
//!   instance and group runners and `/runners/all` need an administrator.
//! - `GET /api/v4/projects/:id`, `GET /api/v4/projects/:id/jobs?scope[]=pending&scope[]=running`,
//!   `GET /api/v4/projects/:id/jobs/:job_id`, `GET /api/v4/groups/:id/projects` (projects
//!   and groups by numeric id or URL-encoded path). Lists are paginated with `page` /
//!   `per_page` (20 by default, 100 at most) and `x-total`, `x-total-pages`, `x-next-page`,
//!   `x-page`, `x-per-page`, `link` headers.
//!
//! Runner API, in the formats gitlab-runner uses (`network/gitlab.go`, `common/network.go`,
//! `common/spec`); runner token in the JSON body (and `RUNNER-TOKEN`), job token in the body or
//! `JOB-TOKEN`; never faulted:
//! - `POST /api/v4/runners/verify {token, system_id, info}` → 200 `{id, token,
//!   token_expires_at}` | 403; makes the manager's record.
//! - `POST /api/v4/jobs/request {token, system_id, last_update, info}` → 201 job payload (the
//!   `JobRequest::Response` entity: `id`, `token`, `job_info`, `git_info`, `runner_info`,
//!   `variables` with `GIT_STRATEGY=none`, `steps` with the job's `script:`, `features`, …) |
//!   204 with `X-GitLab-Last-Update` | 403. Every request that reaches GitLab moves the
//!   manager's `contacted_at` (and makes its record on first contact). With
//!   [`EmulatorConfig::long_poll`], Workhorse first: a request whose `last_update` is the
//!   runner's current queue value is held until the value changes or the poll ends, and
//!   answered 204 without reaching GitLab (no contact). A runner's queue value changes when a
//!   job it may take is queued or the runner is updated, and lives
//!   [`EmulatorConfig::queue_expiry`].
//! - `PUT /api/v4/jobs/:id {token, state, exit_code, failure_reason}` → 200 | 400 (unknown
//!   state) | 403 (with `Job-Status` when the job is not running).
//! - `PATCH /api/v4/jobs/:id/trace` (`Content-Range: start-end`) → 202 with `Job-Status`,
//!   `Range` and `X-GitLab-Trace-Update-Interval` | 416 with `Range` | 400 | 403; the trace is
//!   kept (1 MiB per job) in [`JobSnapshot::trace`].
//! - `DELETE /api/v4/runners/managers {token, system_id}` → 204 | 404;
//!   `DELETE /api/v4/runners {token}` → 204.
//!
//! Rules: a runner takes the oldest pending job whose tags it all has (an untagged job only
//! with `run_untagged`), of a project in its scope, unless paused. Each `system_id` that asks
//! is a manager of the runner. Runners and managers are `online` while contacted within
//! [`EmulatorConfig::online_window`] (2 hours, as GitLab); a paused runner's `status` is
//! `paused`; runner listings carry no `created_at` unless
//! [`EmulatorConfig::runner_created_at`]. A job whose runner or manager is deleted while it
//! runs, or whose runner sends no update for [`EmulatorConfig::job_lease`], fails with
//! `runner_system_failure` and is recorded as a [`Violation`].
//!
//! Not modelled: protected refs / `access_level`, `maximum_timeout`, artifacts, caches,
//! pipelines beyond an id, keyset pagination, archived projects, group memberships, project
//! visibility and permissions on the job and runner reads, token expiry and rotation, the `stale` status,
//! two-phase job commit, trace checksums.

mod agent;
mod config;
mod model;
mod server;
mod state;
mod webhook;

pub use agent::{
    AgentConfig, AgentError, AgentExit, AgentReport, CHECK_INTERVAL_VAR, MAX_BUILDS_VAR, NAME_VAR,
    SLOTS_DIR_VAR, SYSTEM_ID_VAR, TOKEN_VAR, URL_VAR, configs_from_credentials_file, run_agent,
    valid_system_id,
};
pub use config::{
    EmulatorConfig, Faults, GroupConfig, MembershipConfig, ProjectConfig, UserConfig, WebhookConfig,
};
pub use model::{
    JobSnapshot, JobSpec, JobStatus, ManagerSnapshot, RunnerSnapshot, Snapshot, Violation,
    ViolationKind, Workload,
};
pub use server::{Emulator, EmulatorHandle};
