//! A stateful emulator of the Buildkite APIs an autoscaler and its agents use, with outbound
//! webhooks, fault injection, the REST rate limits, scripted workloads and a violation log;
//! and a fake agent that runs its jobs. It serves the real `buildkite-agent start`
//! (registration, polling, `--acquire-job`, one job then `--disconnect-after-job`), so the
//! end-to-end tests run the software that runs in production.
//!
//! Sources: Buildkite's documentation (`apis/rest_api/agents.md`, `rest_api/rate_limits.md`,
//! `apis/agent_api/stacks.md`, `agent_api/metrics.md`, the webhooks pages) and the
//! buildkite-agent source (`api/*.go` for the agent calls, `agent/` and `core/` for what the
//! agent does with the answers). What no source says is marked *assumption* below.
//!
//! What it serves to runscale:
//! - Agent metrics API, with an agent token (`Authorization: Token <token>`):
//!   `GET /v3/metrics` (agents idle/busy/total and jobs scheduled/running/waiting/total, in
//!   total and per queue, and `organization.slug`) and `GET /v3/metrics/queue?name=<q>`; both
//!   send `Buildkite-Agent-Metrics-Poll-Duration` when configured.
//! - REST v2, with an API token (`Authorization: Bearer <token>`; each token is one user):
//!   `GET /v2/organizations/{org}/agents?name=&hostname=&version=&cluster_queue_id=&per_page=
//!   &page=` (connected and stopping agents only, 30 per page by default, at most 100, `Link`
//!   pagination keeping the filters; an agent belongs to the cluster queue of its `queue` tag,
//!   whose id is [`cluster_queue_id`]), `GET .../agents/{id}` (any agent, with its
//!   `connection_state`), `PUT .../agents/{id}/stop {"force": bool}` (`force` defaults to
//!   true; 204; **400 `Can only stop connected agents`** for an agent neither connected nor
//!   stopping; 404), `PUT .../agents/{id}/pause` and `/resume` (204; 422 `Agent is already
//!   paused`, `Only connected agents may be paused`, `Agent is not paused`; 404). A graceful
//!   stop lets a running job finish, then the agent is told to disconnect; a forced stop
//!   cancels the job (a [`Violation`]). Stopping a stopping agent is accepted and changes
//!   nothing (*assumption*).
//! - REST rate limits (`rate_limits.md`): [`EmulatorConfig::rest_requests_per_minute`] per
//!   organisation (200) and [`EmulatorConfig::rest_requests_per_minute_per_user`] per API
//!   token (50), each over a fixed minute starting with its first request (*assumption*: the
//!   page speaks of a window that resets). Every answer carries `RateLimit-Scope: rest`,
//!   `RateLimit-Limit/Remaining/Reset` and `RateLimit-User-Scope: rest_user`,
//!   `RateLimit-User-Limit/Remaining/Reset`; over either limit the answer is 429 with
//!   `{message, scope, limit, current, reset}` and no `Retry-After`. Refused requests count.
//! - Stacks API (`stacks.md`), with an agent (cluster) token: `POST /v3/stacks/register {key,
//!   type, queue_key, metadata}` (all required; the key 1 to 80 bytes of alphanumerics, `_`
//!   and `-`; `type` `kubernetes`, `elastic` or `custom`; flat string metadata; 201 new, 200
//!   updated; 422 otherwise, *assumption* for the status), `POST /v3/stacks/{key}/deregister`
//!   (204), `GET /v3/stacks/{key}/scheduled-jobs?queue_key=&limit=&after=` (`queue_key`
//!   required, `__default__` for the default queue; scheduled jobs not held by a reservation,
//!   oldest first, with `agent_query_rules`, `page_info`, and `cluster_queue {id,
//!   dispatch_paused}`), and `PUT /v3/stacks/{key}/scheduled-jobs/batch-reserve {job_uuids,
//!   reservation_expiry_seconds}` (→ `{reserved, not_reserved}`; 1 to 3600 s, default 900 s;
//!   at most 1000 ids). A reserved job goes to no agent by pings; an agent started with
//!   `--acquire-job` takes it; a reservation that expires puts the job back in the list.
//!   Reserving again by the holding stack extends the reservation and never shortens it
//!   (shortening is not documented). A queue's dispatch is paused with
//!   [`EmulatorHandle::set_dispatch_paused`]: its jobs stay listed, with `dispatch_paused:
//!   true`, and no ping hands one out (*assumption*, from the field's name).
//! - Webhooks ([`WebhookConfig`]): `job.scheduled`, `job.started`, `job.finished`,
//!   `agent.connected`, `agent.stopping`, `agent.disconnected`, `agent.lost`, with
//!   `X-Buildkite-Event` and either `X-Buildkite-Token` or `X-Buildkite-Signature`
//!   (`timestamp=<unix>,signature=<hex HMAC-SHA256(token, "<timestamp>.<body>")>`, see
//!   [`signature`]).
//!
//! What agents call (the buildkite-agent `api` package; routes relative to the agent endpoint
//! `/v3`, see `agent_api.rs`): `POST /register` with the agent token (`{name, hostname,
//! meta_data, ignore_in_dispatches, version, …}` → `{id, name, access_token, meta_data,
//! ping_interval, job_status_interval, heartbeat_interval}`, the intervals from
//! [`EmulatorConfig`]), then with `Authorization: Token <access_token>`: `POST /connect`,
//! `GET /ping` (→ `{"action":"idle"}`, `{"job":{"id"}}`, `{"action":"pause"}` or
//! `{"action":"disconnect"}`), `POST /heartbeat {sent_at}` (→ `{sent_at, received_at}`),
//! `PUT /jobs/{id}/accept` and `PUT /jobs/{id}/acquire` (→ the job: `{id, state, env,
//! runnable_at, chunks_max_size_bytes, chunks_interval_seconds, log_max_size_bytes}`; acquire
//! answers 422 for a job no longer scheduled, which makes the agent exit), `PUT
//! /jobs/{id}/start`, `POST /jobs/{id}/chunks?sequence=&offset=&size=` (a gzip body; kept, see
//! [`EmulatorHandle::job_log`]), `POST /jobs/{id}/header_times`, `GET /jobs/{id}` (→
//! `{state}`; `canceled` after a forced stop), `POST /jobs/{id}/data/{set,get,exists,keys}`
//! (the build's meta-data, which the job runner's `buildkite-agent meta-data` uses; `get` of
//! an unset key is a 404, *assumption*), `PUT /jobs/{id}/finish {exit_status: "<n>",
//! ignore_agent_in_dispatches, …}`, `POST /disconnect` (idempotent). The streaming ping
//! service is not served; the agent falls back to polling. A job's `env` holds what the
//! agent's job runner requires (`BUILDKITE_JOB_ID`, `_REPO` ([`EmulatorConfig::repository`]),
//! `_COMMIT`, `_BRANCH`, `_AGENT_NAME`, `_ORGANIZATION_SLUG`, `_PIPELINE_SLUG`,
//! `_PIPELINE_PROVIDER`, `_COMMAND`, …; which ones from `clicommand/bootstrap.go`, their
//! values an *assumption*), the agent's tags as `BUILDKITE_AGENT_META_DATA_<KEY>`, and the
//! step's own variables. No job token is issued: the agent keeps using its access token.
//! Status codes of refused agent calls (401 unknown token, 404 unknown job, 422 a call that
//! does not fit the state) are *assumptions*; the agent gives up on any of them.
//!
//! Rules: a ping hands the oldest free job whose agent query rules the agent's tags satisfy
//! (`key=value`, `value` `*` matches any; the queue defaults to `default`) to a connected,
//! unpaused agent without a job that takes dispatches (not registered with
//! `ignore_in_dispatches`, and not after finishing a job with `ignore_agent_in_dispatches`);
//! a stopping agent without a job is told to disconnect. Violations: a job started twice, an
//! agent force-stopped, disconnecting or going silent for [`EmulatorConfig::agent_lost_after`]
//! (no call with its access token) while it runs a job.
//!
//! Not modelled: the rest of the Stacks API (job details, states, finish, notifications),
//! clusters, agent and job priorities, job retries, job tokens, the streaming ping service,
//! `POST /stop` of the agent API, GraphQL.

mod agent;
mod agent_api;
mod config;
mod limits;
mod model;
mod server;
mod stacks;
mod state;
mod webhook;

pub use agent::{
    ACQUIRE_JOB_VAR, AgentConfig, AgentError, AgentExit, AgentReport, BUILD_PATH_VAR, CONFIG_VAR,
    DISCONNECT_AFTER_IDLE_TIMEOUT_VAR, DISCONNECT_AFTER_JOB_VAR, ENDPOINT_VAR, NAME_VAR, TAGS_VAR,
    TOKEN_VAR, run_agent,
};
pub use config::{EmulatorConfig, Faults, WebhookAuth, WebhookConfig};
pub use model::{
    AgentSnapshot, ConnectionState, JobSnapshot, JobSpec, JobStatus, Snapshot, Violation,
    ViolationKind, Workload, queue_of,
};
pub use server::{Emulator, EmulatorHandle};
pub use state::cluster_queue_id;
pub use webhook::signature;
