//! Buildkite agents: demand per queue from the agent metrics API, agents registered with the
//! agent token, scale-in by graceful stop, webhooks that wake pools.
//!
//! One [`BuildkiteProvider`] serves one organisation (or one cluster: its agent token),
//! with a REST API token for the agents calls. Each pool bound to it has a [`PoolSelector`]:
//! one queue, extra tags, and how its agents live.
//!
//! - **Demand**: `GET <agent_endpoint>/metrics` with the agent token: the queue's `scheduled`
//!   jobs wait, its `running` jobs run (`waiting` jobs, blocked on dependencies, are not
//!   counted). One read serves every pool, and the next read waits for the
//!   `Buildkite-Agent-Metrics-Poll-Duration` Buildkite sends, unless a webhook woke a pool
//!   (the event shows the last read is out of date). A 429 (or `Retry-After`) keeps
//!   the last good read, and the view is marked stale (the policy then launches but removes
//!   nothing) until the pause is over.
//! - **Runners**: `GET /v2/organizations/{org}/agents` (connected agents only, `Link`
//!   pagination, 100 per page): a pool owns the agents runscale named for it (the agent
//!   name is the runner name, `BUILDKITE_AGENT_NAME`). An agent with a `job` is busy,
//!   otherwise idle; `stopping` marks it draining.
//! - **Register**: the agent token is handed to the agent as the secret
//!   `BUILDKITE_AGENT_TOKEN` (the backend's private channel), with `BUILDKITE_AGENT_NAME`,
//!   `BUILDKITE_AGENT_TAGS` (`queue=<queue>,k=v`), `BUILDKITE_AGENT_ENDPOINT`, and
//!   `BUILDKITE_AGENT_DISCONNECT_AFTER_JOB=true` / `BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT`
//!   (whole seconds) when the pool sets them.
//! - **One agent per job** (`reserve_jobs`, Stacks API, cluster agent token): the pool's
//!   demand is its queue's scheduled, unreserved jobs (`GET /stacks/<stack_key>-<queue>/
//!   scheduled-jobs`, the stack registered on first use) whose `agent_query_rules` the pool's
//!   tags satisfy; registering an agent reserves one of them (`batch-reserve`, for
//!   `reservation_expiry`) and hands it over as `BUILDKITE_AGENT_ACQUIRE_JOB`, so two
//!   controllers never start the same job; if none is left, registration fails as
//!   insufficient capacity and nothing is launched.
//! - **Drain**: `PUT .../agents/{id}/stop {"force": false}`: the agent takes no new job,
//!   finishes the one it runs, then disconnects.
//! - **Remove**: `Ok` only once Buildkite no longer lists the agent as connected. A busy
//!   agent answers [`Busy`](runscale_core::ErrorKind::Busy) (and is left alone); an idle one
//!   is stopped gracefully and waited for up to `stop_wait`, else busy again (the next pass
//!   asks again). Agents that leave by themselves (`disconnect_after_job`,
//!   `disconnect_after_idle_timeout`) simply disappear from the listing and their instances
//!   are reaped.
//! - **Webhooks**: `X-Buildkite-Token` (constant-time) or `X-Buildkite-Signature`
//!   (HMAC-SHA256 of `<timestamp>.<body>`, constant-time, timestamps more than 5 minutes
//!   away refused), checked before parsing; bodies over 1 MiB refused; a delivery seen in
//!   the last 10 minutes (same event and job/agent, or same signature) wakes nothing.
//!   `job.scheduled` wakes the pools whose tags satisfy the job's `agent_query_rules`;
//!   `agent.disconnected`/`lost`/`stopped` wake the agent's queue.
//! - **Rate limits**: REST calls stay within `rest_requests_per_minute` (Buildkite: 200 per
//!   organisation) counted over a sliding minute, and pause when Buildkite answers 429 or
//!   `RateLimit-Remaining: 0` (until `Retry-After` / `RateLimit-Reset`); a call over budget
//!   is not sent and fails as rate limited. `RateLimit-Remaining` is reported as the
//!   provider's budget left.
//!
//! Not here: releasing a reservation at once when an instance dies before its agent starts
//! (the job comes back when the reservation expires), the rest of the Stacks API (job
//! states, finish, notifications), Buildscaler's Job-template discovery (a backend concern),
//! clusters with several agent tokens.

mod client;
mod config;
mod provider;
mod webhook;

pub use config::{Config, PoolSelector};
pub use provider::BuildkiteProvider;
