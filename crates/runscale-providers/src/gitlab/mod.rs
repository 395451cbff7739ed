//! GitLab CI (gitlab.com or self-managed): demand from pending jobs matched to pools by tags,
//! runner slots from runner managers, registration with `glrt-` runner tokens created through
//! `POST /user/runners`, scale-in only of idle managers, and Job Hook webhooks.
//!
//! One [`GitlabProvider`] serves one GitLab instance, authenticated with an access token
//! (`PRIVATE-TOKEN`, or `Authorization: Bearer`). Each pool bound to it has a
//! [`PoolSelector`]: the runner's tags, `run_untagged`, its scope and whether its runner is
//! shared by the pool or made per instance.
//!
//! - **Demand**: GitLab has no instance-wide queue API, so the configured `projects`, the
//!   projects of the configured `groups` (listed once per `group_refresh`) and, with
//!   `membership`, every project the token's user is a member of (with `min_access_level`,
//!   listed once per `membership_refresh`; a failed listing keeps the previous list) are read with
//!   `GET /projects/:id/jobs?scope[]=pending&scope[]=running`, every page (`x-next-page`).
//!   Each pending job goes to the first pool, in configuration order, that would run it: all
//!   its tags among the pool's, or no tags and `run_untagged`, and a project in the runner's
//!   scope.
//! - **Runners**: each runner slot runscale launches is a runner *manager*: one
//!   `gitlab-runner run-single` process with the runner's token and its own `system_id`,
//!   `s_` + the 10 random characters of the slot's runner name + the slot on two digits (`00`
//!   for a single-slot instance, `01`–`99`), a valid gitlab-runner id that decodes back to the
//!   runner name, so a restarted runscale matches managers to instances with no memory
//!   (`identity`). Managers whose `system_id` does not decode are not ours and are ignored.
//!   `GET /runners/:id/managers` gives each slot's state: `job_execution_status: active` →
//!   busy, whatever its contact age; otherwise idle while `contacted_at` is within
//!   `contact_timeout` (20 s; gitlab-runner polls every 3 s), then not listed (its process
//!   exited: the reconciler counts it departed after two observations — GitLab itself calls it
//!   `online` for 2 hours), and listed offline once its contact is older than
//!   `contact_timeout` + `stale_runner_timeout`, so it is unregistered. Ages are taken on
//!   GitLab's clock (the answer's `Date`). A paused runner (`paused`, `active: false` or
//!   `status: paused`) marks its slots draining: never idle capacity. Runners are found again
//!   after a restart by their description (`runscale pool <pool>`, or the instance name).
//!   With Workhorse long polling (gitlab.com), idle runners reach GitLab only when their queue
//!   changes or hourly: raise `contact_timeout` above an hour there (see its doc).
//! - **Register**: the pool's runner is created on first use (`runner_per: pool`, default;
//!   token shared by its instances, as GitLab recommends) or one per instance
//!   (`runner_per: instance`). Each slot gets `CI_SERVER_URL`, `RUNNER_NAME`,
//!   `RUNSCALE_GITLAB_SYSTEM_ID`, the secret `CI_SERVER_TOKEN` and, with `max_use_count`,
//!   `RUNSCALE_GITLAB_MAX_BUILDS`. The instance's start-up script
//!   (`deploy/exec/gitlab-runner-slots.sh`) gives each slot its own config directory —
//!   `config.toml` (0600) with one `[[runners]]` entry and `.runner_system_id` — and runs
//!   `gitlab-runner run-single -c <dir>/config.toml -r <name> --max-builds <n>`, which reads
//!   that id (plain `run-single` would make one up). A slot number above 99 is refused. Tokens
//!   are shown once, so they live in memory; after a restart a new pool runner is created and
//!   the old one is deleted once it is unused (below).
//! - **Member projects' runner**: with `membership`, a `project_type` pool's runner is created
//!   unlocked (in its `project_id`, or the lowest member project) and enabled in every member
//!   project (`POST /projects/:id/runners`, at most 20 per pass, "already enabled" is done,
//!   failures logged and retried next pass), then updated so GitLab hands it the jobs already
//!   pending there. Only runners this process created (so nothing in dry-run).
//! - **Drain and remove**: `remove` answers busy while the slot's manager is `active`. With
//!   `runner_per: instance`, `drain` pauses the runner, and `remove` pauses it, looks again,
//!   then deletes the runner (`DELETE /runners/:id`) once none of its slots runs a job. With a
//!   shared runner (which cannot be paused for one instance), `remove` unregisters the idle
//!   manager (`DELETE /runners/managers`); a job picked between that check and the instance's
//!   stop fails when the instance stops (gitlab-runner aborts jobs on SIGTERM; a process that
//!   still runs re-creates its manager at its next request, and it is unregistered again once
//!   it has left).
//! - **Clean-up**: a runner runscale created whose managers all run nothing and have not
//!   contacted GitLab within `contact_timeout` + `stale_runner_timeout` (each gone for
//!   `stale_runner_timeout`), and that this process has not created,
//!   handed out or first listed within `stale_runner_timeout` (GitLab's `created_at` counts when
//!   listed; a missing one is never read as old), is reported as an offline runner without
//!   manager (named after its description), so the policy deregisters it and `remove` deletes
//!   it after checking again; observing never deletes anything (dry-run stays read-only).
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
//! - **Uses per slot**: with `max_use_count`, each slot gets `RUNSCALE_GITLAB_MAX_BUILDS` and
//!   its runner exits after that many jobs (`run-single --max-builds`); once its contact is older
//!   than `contact_timeout` it is no longer listed, the reconciler counts the slot as departed,
//!   and an instance whose slots all left is retired. With one slot per instance that is
//!   taskscaler's jobs per instance; with several, each slot counts its own jobs.
//!
//! - **Job history** (`history`): at start-up, the jobs of the last 14 days of every project
//!   above (`GET /projects/:id/jobs`, newest first) seed the warm pools' forecasts, each job
//!   counted for the pool its demand would count for; at most 400 requests per read.
//!
//! Not done: protected-branch runners (`access_level`), token expiry and rotation.

pub(crate) mod client;
mod config;
pub(crate) mod history;
mod identity;
mod kind;
mod provider;
mod webhook;

pub use config::{AuthHeader, Config, PoolSelector, RunnerPer, RunnerType, validate_pool};
pub use kind::GitlabType;
pub use provider::GitlabProvider;
