//! GitHub Actions (github.com and GitHub Enterprise Server): demand from workflow jobs,
//! runners registered just in time, webhooks that wake pools.
//!
//! One [`GithubProvider`] serves one account — an organisation, a repository, an enterprise,
//! or a list of repositories each with its own repository-level runners — authenticated with a
//! personal access token or a GitHub App (RS256 JWT → installation token, refreshed five
//! minutes before it expires), under one rate budget. Each pool bound to it has a
//! [`PoolSelector`]: its runner labels and, optionally, its repository.
//!
//! - **Demand** is polled, and the poll is the truth: queued and in-progress workflow runs of
//!   the configured repositories (or the App installation's; plus every repository a webhook
//!   named in the last 24 h), at most `max_repositories_per_pass` per pass by priority
//!   (webhook, active, least recently polled; see `repos`), then their latest jobs;
//!   `queued`/`waiting` jobs wait, `in_progress` ones run. Listings are paginated and sent
//!   with `If-None-Match`, so unchanged pages cost nothing.
//! - **Label matching** is GitHub's: every `runs-on` label must be a runner label,
//!   case-insensitively, `self-hosted` implied. A job several pools could run counts for the
//!   first pool in configuration order.
//! - **Runners**: one runner listing per account per observation, shared by all its pools
//!   (for a list of repositories: one per repository holding runscale's runners, a failed
//!   one leaving its pools stale); a pool owns the runners runscale named for it. Busy (even
//!   offline) → busy; online → idle; else offline.
//! - **Register**: ephemeral pools get a JIT configuration (`GITHUB_JIT_CONFIG`), persistent
//!   pools a cached registration token (`GITHUB_RUNNER_TOKEN`).
//! - **Remove**: `DELETE` the runner; 204 or 404 is done, 422 means busy and it stays.
//! - **Rate limits**: the budget from `x-ratelimit-*`; a spent primary budget pauses until
//!   its reset, a secondary limit for `retry-after` (else 1 min, doubling); mutations go one
//!   at a time. While paused, `observe` returns the last good view marked stale.
//! - **Webhooks**: `X-Hub-Signature-256` verified in constant time before parsing, bodies over
//!   1 MiB refused, duplicates (by delivery id, and by job + attempt + action) ignored;
//!   `workflow_job` wakes the pools that can run the job, other events are acknowledged.
//!
//! - **Job history** (`history`): at start-up, the runs created in the last 14 days and their
//!   jobs seed the warm pools' forecasts; at most 400 requests per read.
//!
//! Not here: GitHub's scale-set (Actions service) long-poll protocol, runner-group look-up by
//! name, and spreading the budget over several Apps.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod convert;
pub(crate) mod errors;
mod history;
mod kind;
mod provider;
mod repos;
mod webhook;

pub use config::{AppAuth, Auth, Config, InstallationKeyword, PoolSelector, Repositories};
pub use kind::GithubType;
pub use provider::GithubProvider;
