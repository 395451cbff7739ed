//! The `exec` provider: any CI system runscale does not speak natively, driven through
//! commands the operator supplies.
//!
//! One [`ExecProvider`] runs the commands of one [`Config`]; each pool bound to it has a
//! [`PoolSelector`] (its labels). A command is an argv list run directly, without a shell.
//!
//! # How every command runs
//!
//! - Environment: runscale's own, plus the config's `env`, plus the protocol variables of the
//!   call below (the protocol variables of other calls are removed).
//! - Working directory: `working_dir`, else runscale's own.
//! - stdin: `/dev/null`, except for `observe`, which gets JSON.
//! - The command runs in its own process group. After `timeout` (default 30 s) the whole group
//!   is killed with SIGKILL and the call fails as `Transient` ("timed out after 30s"). The
//!   same happens when the call is cancelled. A command must not leave processes holding its
//!   stdout or stderr open: runscale reads both to their end.
//! - stdout and stderr are read up to 16 MiB each; more is a `Protocol` error (the group is
//!   killed).
//! - A program that cannot be started (not found, not executable, missing working directory)
//!   is `Misconfigured`. A non-zero exit (except the codes given below) is `Transient`, and
//!   the error quotes the first 300 characters of stderr: do not print secrets on stderr.
//!
//! # `observe` (read-only)
//!
//! One run serves a whole batch of pools. Environment: `RUNSCALE_POOLS=a,b` (pool names,
//! comma-separated). stdin:
//!
//! ```json
//! {"pools":[{"name":"a","labels":["linux"]},{"name":"b","labels":[]}]}
//! ```
//!
//! stdout, exit 0:
//!
//! ```json
//! {"pools":{
//!   "a":{"waiting":[{"id":"j1","queued_at":"2024-05-01T10:00:00Z"}],
//!        "running":1,
//!        "runners":[{"id":"r1","name":"rs-a-0123456789","state":"busy",
//!                    "draining":false,"last_busy":"2024-05-01T10:01:00Z"}]},
//!   "b":{"waiting":[],"running":0,"runners":[]}}}
//! ```
//!
//! - `waiting`: jobs queued for the pool and not yet taken by a runner; `queued_at` is RFC 3339.
//! - `running`: jobs running on the pool's runners.
//! - `runners`: `id` (the CI system's id, later passed to `remove`/`drain`; a string or a
//!   whole number), `name`, `state` (`idle`: connected and free; `busy`: running a job;
//!   `offline`: registered but not connected), `draining` (optional, default false: takes no
//!   new job), `last_busy` (optional RFC 3339 time or null).
//!
//! `waiting`, `running` and `runners` are required and unknown fields are errors, so a typo
//! cannot read as "no demand". Runners whose names runscale did not make for the pool
//! (`rs-{pool}-{10 chars}[-{slot}]`) are dropped: runscale never touches runners it did not
//! make. Pools not asked about are ignored. A pool asked about but missing from the answer,
//! or malformed, is a `Protocol` error for that pool only; output that is not JSON of this
//! shape at all is a `Protocol` error for every pool of the batch, naming the path, line and
//! column.
//!
//! # `register`
//!
//! Environment: `RUNSCALE_POOL`, `RUNSCALE_RUNNER_NAME` (the name runscale chose; the runner
//! must register under it), `RUNSCALE_LABELS` (the pool's labels, comma-separated). stdout,
//! exit 0 (every field optional):
//!
//! ```json
//! {"runner_id":"r1","vars":{"CI_URL":"https://ci.example"},"secrets":{"CI_TOKEN":"..."}}
//! ```
//!
//! `runner_id` is the CI-side id when registration creates it up front (a string or a whole
//! number). `vars` and `secrets` are strings handed to the runner by the backend; secrets only
//! through a private channel, and never logged. Errors about this output name the field and
//! the JSON type found, never the text.
//!
//! # `remove`
//!
//! Environment: `RUNSCALE_POOL`, `RUNSCALE_RUNNER_ID`. Exit 0: the runner is gone, or was
//! already gone. Exit 3: the runner is running a job and stays (`Busy`; runscale retries
//! later and keeps its instance). Anything else: `Transient`. runscale terminates a runner's
//! machine only after exit 0.
//!
//! # `drain` (optional)
//!
//! Environment: `RUNSCALE_POOL`, `RUNSCALE_RUNNER_ID`. Exit 0: the runner takes no new job
//! (`observe` should then report `"draining":true`). Anything else: `Transient`. Without a
//! `drain` command, draining does nothing.
//!
//! # `probe`
//!
//! Runs `observe` for every pool bound to the provider and reports how many it observed.
//!
//! Not here: webhooks (the exec provider is polled only) and rate-limit budgets.

mod command;
mod config;
mod errors;
mod kind;
mod protocol;
mod provider;

pub use config::{Config, PoolSelector};
pub use kind::ExecType;
pub use provider::ExecProvider;
