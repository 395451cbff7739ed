//! CircleCI self-hosted (machine) runners: demand per resource class from the runner API,
//! runners registered with the pool's resource-class token, scale-in by the runners
//! themselves, webhooks that wake pools.
//!
//! One [`CircleciProvider`] serves one organisation, authenticated with a personal or project
//! API token (`Circle-Token`). Each pool bound to it has a [`PoolSelector`]: one resource
//! class and its runner token.
//!
//! - **Demand**: per resource class, `unclaimed_task_count` waits and `running_runner_tasks`
//!   runs (`GET /api/v3/runner/tasks`, `/api/v3/runner/tasks/running`; or the v2 paths
//!   `/api/v2/tasks`, `/api/v2/tasks/running` with `api_version: v2`). With
//!   `max_concurrency` (the plan's runner concurrency, shared by every class), waiting tasks
//!   beyond the concurrency left over by running tasks are not counted, so runscale does not
//!   launch runners CircleCI would not give a task.
//! - **Runners**: `GET /api/v3/runner?resource-class=` (or `/api/v2/runner`); a pool owns
//!   the runners runscale named for it (the runner name is what the backend launched it as:
//!   `CIRCLECI_RUNNER_NAME`). The listing has no busy flag: the `running_runner_tasks` most
//!   recently used runners are taken as busy, other runners in contact within
//!   `disconnect_grace` as idle, the rest as offline.
//! - **Register**: CircleCI has no per-runner token. The pool's resource-class token (from a
//!   secret) is handed to the runner as a secret credential, so the backend passes it through
//!   its private channel (Secret, SSM SecureString, 0600 file), with the runner's name, API
//!   URL, mode (`single-task` default) and idle timeout as variables: `CIRCLECI_RUNNER_*`
//!   for machine runner 3, `LAUNCH_AGENT_*` for the launch-agent.
//! - **Scale-in without a busy flag**: runscale never stops a connected runner on a guess.
//!   `remove` succeeds only once the runner left the listing, or has been silent for
//!   `disconnect_grace` while no more tasks run than runners are connected; otherwise it
//!   answers busy and the instance stays. Capacity goes away because runners exit by
//!   themselves (single-task, or `runner_idle_timeout`), after which the policy reaps their
//!   instance (no runner past `boot_timeout`, or runner offline). The cost: an idle runner
//!   lives until its own idle timeout, and a crashed runner's instance until
//!   `disconnect_grace` has passed.
//! - **Runners the instances name themselves** (CircleCI's simple-Lambda example:
//!   `$RUNNER_NAME-<time>` or one fixed name; a pool whose backend cannot attribute runners,
//!   such as aws-asg's `runner_name: unknown`): no runner can be tied to an instance, so
//!   runscale retires an instance only when the class has no unclaimed and no running task.
//!   `confirm_quiet` checks that right before each termination with two reads in order,
//!   unclaimed then running, so a task claimed between them shows as running.
//! - **Webhooks**: `job-completed` and `workflow-completed` with `circleci-signature:
//!   v1=<hex HMAC-SHA256>` verified in constant time before parsing, bodies over 1 MiB
//!   refused, duplicates (by event id) ignored; they wake the pools of the event's project
//!   (pools without `projects` wake on every event). CircleCI sends no event when a task is
//!   queued, so scale-up comes from polling.
//! - **Rate limits**: a 429 pauses nothing by itself; `observe` then returns the pool's last
//!   good view marked stale (launch only), and the error's `retry-after` sets the backoff.

pub(crate) mod client;
mod config;
mod kind;
mod provider;
mod webhook;

pub use config::{AgentEnv, ApiVersion, Config, PoolSelector, RunnerMode, RunnerNames};
pub use kind::CircleciType;
pub use provider::CircleciProvider;
