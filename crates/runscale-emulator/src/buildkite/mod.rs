//! A stateful emulator of the Buildkite APIs an autoscaler uses, with outbound webhooks,
//! fault injection, a REST rate limit, scripted workloads and a violation log; and a fake
//! agent that runs its jobs.
//!
//! What it serves to runscale:
//! - Agent metrics API, with an agent token (`Authorization: Token <token>`):
//!   `GET /v3/metrics` (agents idle/busy/total and jobs scheduled/running/waiting/total, in
//!   total and per queue, and `organization.slug`) and `GET /v3/metrics/queue?name=<q>`; both
//!   send `Buildkite-Agent-Metrics-Poll-Duration` when configured.
//! - REST v2, with an API token (`Authorization: Bearer <token>`), limited to
//!   [`EmulatorConfig::rest_requests_per_minute`] per organisation (429 with `Retry-After`;
//!   `RateLimit-Limit/Remaining/Reset` on every answer):
//!   `GET /v2/organizations/{org}/agents?name=&per_page=&page=` (connected agents only, `Link`
//!   pagination), `GET .../agents/{id}` (any agent, with its `connection_state`), and
//!   `PUT .../agents/{id}/stop {"force": bool}` (204; 422 for an agent not connected). A
//!   graceful stop lets a running job finish, then the agent disconnects; a forced stop
//!   cancels the job (a [`Violation`]).
//! - Webhooks ([`WebhookConfig`]): `job.scheduled`, `job.started`, `job.finished`,
//!   `agent.connected`, `agent.stopping`, `agent.disconnected`, `agent.lost`, with
//!   `X-Buildkite-Event` and either `X-Buildkite-Token` or `X-Buildkite-Signature`
//!   (`timestamp=<unix>,signature=<hex HMAC-SHA256(token, "<timestamp>.<body>")>`, see
//!   [`signature`]).
//!
//! - Stacks API subset, with an agent (cluster) token: `POST /v3/stacks/register {key, type,
//!   queue_key, metadata}`, `POST /v3/stacks/{key}/deregister`,
//!   `GET /v3/stacks/{key}/scheduled-jobs?queue_key=&limit=&after=` (scheduled jobs not held
//!   by a reservation, with `agent_query_rules`, and `page_info`), and
//!   `PUT /v3/stacks/{key}/scheduled-jobs/batch-reserve {job_uuids,
//!   reservation_expiry_seconds}` (→ `{reserved, not_reserved}`; 1 to 3600 s, default
//!   300 s). A reserved job goes to no agent by itself; an agent started with
//!   `BUILDKITE_AGENT_ACQUIRE_JOB` takes it (`POST /v3/jobs/{id}/acquire`); a reservation that
//!   expires puts the job back in the list.
//!
//! What agents call: Buildkite's agent protocol is internal, so this one is the emulator's
//! own, loosely shaped like it: `POST /v3/register {name, hostname, meta_data}` with the
//! agent token (→ `{id, access_token}`), then with `Authorization: Token <access_token>`:
//! `POST /v3/connect`, `POST /v3/ping` (→ `{action: idle|run|busy|disconnect, job?}`),
//! `PUT /v3/jobs/{id}/start`, `PUT /v3/jobs/{id}/finish {exit_status}`, `POST /v3/disconnect`.
//!
//! Rules: a job goes to the first idle, connected agent (not stopping) whose tags satisfy
//! every agent query rule (`key=value`, `value` `*` matches any; the queue defaults to
//! `default`), oldest job first. Violations: a job started twice, an agent force-stopped,
//! disconnecting or going silent for [`EmulatorConfig::agent_lost_after`] while it runs a
//! job.
//!
//! Not modelled: the rest of the Stacks API (job details, states, finish, notifications),
//! clusters, pausing, agent and job priorities, job retries, GraphQL.

mod agent;
mod config;
mod model;
mod server;
mod state;
mod webhook;

pub use agent::{
    ACQUIRE_JOB_VAR, AgentConfig, AgentError, AgentExit, AgentReport,
    DISCONNECT_AFTER_IDLE_TIMEOUT_VAR, DISCONNECT_AFTER_JOB_VAR, ENDPOINT_VAR, NAME_VAR, TAGS_VAR,
    TOKEN_VAR, run_agent,
};
pub use config::{EmulatorConfig, Faults, WebhookAuth, WebhookConfig};
pub use model::{
    AgentSnapshot, ConnectionState, JobSnapshot, JobSpec, JobStatus, Snapshot, Violation,
    ViolationKind, Workload, queue_of,
};
pub use server::{Emulator, EmulatorHandle};
pub use state::{AssignedJob, PingAnswer};
pub use webhook::signature;
