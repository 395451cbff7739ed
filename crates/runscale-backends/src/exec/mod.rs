//! The `exec` backend: runners on machines that an operator-supplied executable creates,
//! deletes and lists, so any cloud CLI or Terraform wrapper becomes a backend.
//!
//! The full protocol, with examples, is `deploy/exec/PROTOCOL.md`; its JSON Schemas are
//! `deploy/exec/*.schema.json` (generated from the types in `protocol`, checked by a test).
//!
//! # One run per call
//!
//! Every [`Backend`](runscale_core::Backend) call runs [`Config::command`] (argv, no shell)
//! once per pool with one JSON request on stdin — `{"version":1,"action":...,"pool":...,
//! "params":{...}}` plus the action's fields — and reads one JSON object from stdout:
//!
//! - `create` (launch): `instance_name`, `runner_names`, `template_hash`, and `runners` with
//!   each runner's `vars` and `secrets`. Answer `{"id":...,"state":"booting"|"running"}`.
//! - `list` (instances): answer `{"instances":[{"id","runner_names","state","created_at",
//!   "template_hash"}]}`, every machine of the pool not yet gone.
//! - `delete` (terminate): `instance_id`. Answer `{"ok":true}`, or exit 3 when it is already
//!   gone (idempotent).
//! - `probe`: read-only check; answer `{"message":...}`.
//! - `reuse` (pools with `reuse`): `instance_id`, `runner_names`, `uses` and `runners` as for
//!   `create`; start them on the running machine and list them (with `uses`, `reused_at`)
//!   from now on. Answer `{"ok":true}`, or exit 3 when the machine is gone.
//!
//! # Exit codes
//!
//! 0: done, the answer on stdout. 3: not found (success for `delete`). 4: no capacity
//! (`InsufficientCapacity`). 75: temporary failure (`Transient`, retried on a later pass).
//! 78: configuration error (`Misconfigured`). Any other code: `Protocol`; killed by a signal
//! or by the timeout: `Transient`. Errors quote the end of stderr.
//!
//! # Safety
//!
//! - Secrets travel only in the `create` request on stdin, a pipe only the child reads:
//!   never argv or environment. They are cut out of every error message (stderr excerpts and
//!   answer-parsing errors alike) and never logged.
//! - The executable gets a clean environment (`PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`,
//!   `LANG`, `LC_ALL`, `LC_CTYPE`, `TZ`, `TMPDIR`, `CREDENTIALS_DIRECTORY`, the config's `env`,
//!   `RUNSCALE_EXEC_ACTION` and `RUNSCALE_POOL`) and its own process group. On timeout
//!   ([`Timeouts`]), too much output ([`Config::max_output`]) or cancellation the whole group
//!   is killed with SIGKILL. A run ends when the executable exited and closed stdout and
//!   stderr; machines or helpers it starts in the background must not keep those open.
//! - Answers are parsed strictly (unknown fields are errors; errors name the field path).
//!
//! # Listing lag
//!
//! Cloud listings lag behind create and delete calls. An instance this process created stays
//! listed (as created) until `list` shows it, for at most [`Config::listing_grace`]; one it
//! deleted is listed as `stopping` while `list` still shows it, for as long. Nothing else is
//! kept: after a restart `list` alone is the truth, so the executable must find machines by
//! pool (labels, tags, a name prefix) and return their runner names and template hash.

pub(crate) mod backend;
mod config;
mod kind;
pub(crate) mod protocol;
mod run;

pub use backend::ExecBackend;
pub use config::{Config, PoolTemplate, Timeouts};
pub use kind::ExecType;
