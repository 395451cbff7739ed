//! Buildkite agents: demand per queue from the agent metrics API (or a queue's scheduled jobs
//! from the Stacks API), agents registered with the agent token, scale-in by graceful stop,
//! webhooks that wake pools.
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
//! - **Runners**: `GET /v2/organizations/{org}/agents` (connected and stopping agents only,
//!   `Link` pagination, 100 per page): a pool owns the agents runscale named for it (the
//!   agent name is the runner name, `BUILDKITE_AGENT_NAME`). An agent with a `job` is busy,
//!   otherwise idle; `stopping` marks it draining. When every pool observed names its
//!   `cluster_queue_id`, each reads its cluster queue's agents only (`?cluster_queue_id=`);
//!   otherwise the organisation's listing is read to its last page. A listing is never cut
//!   short: if a page cannot be read (or there are more than 100,000 agents) the observation
//!   fails, since an agent on an unread page would look gone and its instance be reaped.
//!   Throttled, the pool keeps its last runners, marked stale (nothing is removed).
//! - **Register**: the agent token is handed to the agent as the secret
//!   `BUILDKITE_AGENT_TOKEN` (the backend's private channel), with `BUILDKITE_AGENT_NAME`,
//!   `BUILDKITE_AGENT_TAGS` (`queue=<queue>,k=v`), `BUILDKITE_AGENT_ENDPOINT`, and
//!   `BUILDKITE_AGENT_DISCONNECT_AFTER_JOB=true` / `BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT`
//!   (whole seconds) when the pool sets them. `buildkite-agent start` reads them all.
//! - **One agent per job** (`reserve_jobs`, Stacks API, cluster agent token): the pool's
//!   demand is its queue's scheduled, unreserved jobs (`GET /stacks/<key>/scheduled-jobs`,
//!   the stack registered on first use) whose `agent_query_rules` the pool's tags satisfy;
//!   registering an agent reserves one of them (`batch-reserve`, for `reservation_expiry`)
//!   and hands it over as `BUILDKITE_AGENT_ACQUIRE_JOB`, so two controllers never start the
//!   same job; if none is left, registration fails as insufficient capacity and nothing is
//!   launched. While the cluster queue's `dispatch_paused` is true, the pool has no demand
//!   and nothing is reserved. The stack key is `<stack_key>-<queue>`, or for a queue name a key
//!   cannot hold (`linux.large`, longer than fits 80 bytes) the cleaned, shortened name and a
//!   hash of it; two pools never share a key.
//! - **Release**: when an instance dies before its agent started, its job stays reserved by
//!   the stack until the reservation expires (the Stacks API documents no way to drop or
//!   shorten one; reserving again only extends it). runscale keeps it as given back: it counts
//!   as waiting and the pool's next agent gets it, reserved again. After a restart it waits
//!   for the reservation to expire.
//! - **Drain**: `PUT .../agents/{id}/stop {"force": false}`: the agent takes no new job,
//!   finishes the one it runs, then disconnects. A 400 (`Can only stop connected agents`)
//!   for an agent no longer connected is success: there is nothing to drain.
//! - **Remove**: `Ok` only once Buildkite no longer lists the agent as connected. A busy
//!   agent answers [`Busy`](runscale_core::ErrorKind::Busy) (and is left alone); an idle one
//!   is stopped gracefully and waited for up to `stop_wait`, else busy again (the next pass
//!   asks again). A refused stop (400) is never a configuration error: the agent is read
//!   again, and it is removed if no longer connected, busy (kept) otherwise. Agents that leave
//!   by themselves (`disconnect_after_job`, `disconnect_after_idle_timeout`) simply disappear
//!   from the listing and their instances are reaped.
//! - **Webhooks**: `X-Buildkite-Token` (constant-time) or `X-Buildkite-Signature`
//!   (HMAC-SHA256 of `<timestamp>.<body>`, constant-time, timestamps more than 5 minutes
//!   away refused), checked before parsing; bodies over 1 MiB refused; a delivery seen in
//!   the last 10 minutes (same event and job/agent, or same signature) wakes nothing.
//!   `job.scheduled` wakes the pools whose tags satisfy the job's `agent_query_rules`;
//!   `agent.disconnected`/`lost`/`stopped` wake the agent's queue.
//! - **Rate limits**: REST calls stay within `rest_requests_per_minute` (Buildkite: 200 per
//!   organisation) and `rest_requests_per_minute_per_user` (Buildkite: 50 per user, the owner
//!   of `api_token`), counted over a sliding minute, and pause when Buildkite answers 429 or
//!   either `RateLimit-Remaining` or `RateLimit-User-Remaining` reaches 0 (until
//!   `Retry-After`, else the matching `RateLimit-Reset` / `RateLimit-User-Reset`); a call over
//!   budget is not sent and fails as rate limited. The smaller of the two remaining counts is
//!   reported as the provider's budget left.
//!
//! - **Job history** (`history`): at start-up, the organisation's builds of the last 14 days
//!   (`GET /v2/organizations/{org}/builds?created_from=`, at most 10 pages) seed the warm
//!   pools' forecasts, each command job counted for the pool whose demand counts it.
//!
//! Not here: the queue's `dispatch_paused` for pools without `reserve_jobs` (the metrics API
//! does not carry it), the rest of the Stacks API (job states, finish, notifications),
//! Buildscaler's Job-template discovery (a backend concern), clusters with several agent
//! tokens.

pub(crate) mod client;
mod config;
pub(crate) mod history;
mod kind;
mod provider;
mod reservations;
mod webhook;

pub use config::{Config, PoolSelector};
pub use kind::BuildkiteType;
pub use provider::BuildkiteProvider;
