//! The `local-process` backend: each instance is one process on this host (and its process
//! group), hosting the runners of one launch.
//!
//! # Files
//!
//! Under [`Config::state_dir`] (mode 0700), one directory per pool holds, per instance:
//!
//! - `{id}.json` — the state file (0600, written atomically): pid, process start time (field
//!   22 of `/proc/<pid>/stat`, so a reused pid is never taken for the instance), runner names,
//!   template hash, launch time, and `stopping_since` once terminated. It is how a restarted
//!   runscale finds its instances.
//! - `{id}.credentials.json` — with `file` delivery, the runners' credentials (0600), written
//!   before the process starts and removed when it is gone.
//! - `{id}.log` — the process's stdout and stderr (appended). Logs of gone instances are kept,
//!   the newest 20 per pool; older ones are deleted.
//!
//! # The process
//!
//! Started in its own process group, stdin from `/dev/null`, with a clean environment: `PATH`,
//! `HOME`, `USER`, `LOGNAME`, `SHELL`, `LANG`, `LC_ALL`, `LC_CTYPE`, `TZ` and `TMPDIR` from the
//! daemon, the template's `env`, then `RUNSCALE_POOL`, `RUNSCALE_INSTANCE_ID`,
//! `RUNSCALE_RUNNER_NAME` (the first runner), `RUNSCALE_RUNNER_NAMES` (comma-separated),
//! `RUNSCALE_STATE_DIR`, `RUNSCALE_TEMPLATE_HASH`, `RUNSCALE_LAUNCHED_AT` and, with `file`
//! delivery, `RUNSCALE_CREDENTIALS_FILE`. With `env` delivery (one runner only) each credential
//! variable and secret is an environment variable. Secrets never appear in argv, logs, `Debug`
//! output or errors. Processes outlive runscale.
//!
//! # Lifecycle
//!
//! - A child's exit is noticed at once (a task awaits it): its state is removed and its pool
//!   sent to the [subscribers](runscale_core::Backend::subscribe). Processes started by an
//!   earlier runscale are checked through `/proc` every 2 s once somebody subscribed, and at
//!   every listing.
//! - `terminate` sends SIGTERM to the process group, records `stopping_since`, and SIGKILLs the
//!   group after [`Config::stop_grace`] if the process is still there — also after a restart,
//!   since the deadline is in the state file. When an instance's main process is gone, what it
//!   left in its process group is killed.
//! - If runscale dies between starting a process and writing its state file, the next
//!   runscale finds the process through `/proc/*/environ` (`RUNSCALE_STATE_DIR` names this
//!   directory; only process-group leaders of the daemon's own user are considered) and
//!   rebuilds its state file, so nothing leaks. One state directory serves one
//!   runscale daemon.
//!
//! Linux only (`/proc`).

mod backend;
mod config;
mod errors;
mod kind;
mod procfs;
mod spawn;
mod state;

pub use backend::LocalProcess;
pub use config::{Config, CredentialsDelivery, PoolTemplate};
pub use kind::LocalProcessType;
