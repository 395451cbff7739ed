//! GitLab CI (gitlab.com or self-managed): demand from pending jobs matched to pools by tags,
//! runner slots from runner managers, registration with `glrt-` runner tokens created through
//! `POST /user/runners`, scale-in only of idle managers, and Job Hook webhooks.
//!
//! One [`GitlabProvider`] serves one GitLab instance, authenticated with an access token
//! (`PRIVATE-TOKEN`, or `Authorization: Bearer`). Each pool bound to it has a
//! [`PoolSelector`]: the runner's tags, `run_untagged`, its scope and whether its runner is
//! shared by the pool or made per instance.
//!
//! - **Demand**: GitLab has no instance-wide queue API, so the configured `projects` and the
//!   projects of the configured `groups` (listed once per `group_refresh`) are read with
//!   `GET /projects/:id/jobs?scope[]=pending&scope[]=running`, every page (`x-next-page`).
//!   Each pending job goes to the first pool, in configuration order, that would run it: all
//!   its tags among the pool's, or no tags and `run_untagged`, and a project in the runner's
//!   scope.
//! - **Runners**: each runner slot runscale launches is a runner *manager*: it connects with
//!   the runner's token and `system_id` = the slot's runner name. `GET /runners/:id/managers`
//!   gives each slot's state: `job_execution_status: active` → busy, `status: online` → idle,
//!   otherwise offline. A runner paused by runscale marks its slots draining. Runners are
//!   found again after a restart by their description (`runscale pool <pool>`, or the
//!   instance name).
//! - **Register**: the pool's runner is created on first use (`runner_per: pool`, default;
//!   token shared by its instances, as GitLab recommends) or one per instance
//!   (`runner_per: instance`). Each slot gets `CI_SERVER_URL`, `RUNNER_NAME`,
//!   `RUNNER_SYSTEM_ID` and the secret `CI_SERVER_TOKEN`. With the real gitlab-runner, the
//!   instance's start-up script must write `RUNNER_SYSTEM_ID` into the runner's
//!   `.runner_system_id` file before starting it (it otherwise makes up its own id, and the
//!   slot would never be recognised: its instance would be reaped as runner-less after
//!   `boot_timeout`). Tokens are shown once, so they live
//!   in memory; after a restart a new pool runner is created and the old one is deleted once
//!   none of its managers is online.
//! - **Drain and remove**: `remove` answers busy while the slot's manager is `active`. With
//!   `runner_per: instance`, `drain` pauses the runner, and `remove` pauses it, looks again,
//!   then deletes the runner (`DELETE /runners/:id`) once none of its slots runs a job. With a shared runner (which cannot be
//!   paused for one instance), `remove` unregisters the idle manager
//!   (`DELETE /runners/managers`); a job picked between that check and the instance's stop is
//!   finished by the runner's graceful shutdown (stop gitlab-runner with `SIGQUIT`, and give
//!   the backend a stop grace longer than a job).
//! - **Clean-up**: a runner runscale created that is `never_contacted` or `offline`, with
//!   no manager online, and not created or handed out within `stale_runner_timeout`, is
//!   reported as an offline runner without manager (named after its description), so the
//!   policy deregisters it and `remove` deletes it; observing never deletes anything (dry-run
//!   stays read-only).
//! - **Failures**: a failed call fails the observation of the pools it concerns; it never
//!   yields an empty view, so no instance is ever taken for runner-less because GitLab was
//!   down (the seed's fleet-wide destruction). A 429 returns the last good view, marked stale,
//!   and its `Retry-After` sets the backoff; `RateLimit-Remaining` is reported as the budget
//!   left.
//! - **Webhooks**: Job Hooks with `X-Gitlab-Token` compared in constant time before the body
//!   is parsed, bodies over 1 MiB refused, retries (same `Idempotency-Key`, else
//!   `X-Gitlab-Event-UUID`) ignored. The payload has no tags: a job seen by the last
//!   observation wakes its pool, a job's runner wakes the runner's pool, and a job not seen yet
//!   wakes every pool that may run jobs of its project, whose next observation reads the tags.
//!
//! - **Uses per slot**: with `max_use_count`, each slot gets `RUNNER_MAX_BUILDS` and its runner
//!   exits after that many jobs (`gitlab-runner run-single --max-builds`); once its manager is
//!   gone (or offline for a minute) the reconciler counts the slot as departed, and an instance
//!   whose slots all left is retired. With one slot per instance that is taskscaler's jobs per instance; with
//!   several, each slot counts its own jobs.
//!
//! Not done: protected-branch runners (`access_level`), token expiry and rotation.

mod client;
mod config;
mod provider;
mod webhook;

pub use config::{AuthHeader, Config, PoolSelector, RunnerPer, RunnerType};
pub use provider::GitlabProvider;
