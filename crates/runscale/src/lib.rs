//! The `runscale` binary's library: configuration, command line, HTTP server and wiring.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so tests reach it.
//!
//! - [`config`]: the YAML file, from text to validated configuration to built adapters.
//! - [`cli`]: arguments, exit codes.
//! - [`commands`]: `once`, `check`, `config schema`, `version`.
//! - [`daemon`]: `run` (HTTP server + reconciler + signals).
//! - [`buildscaler`]: `buildscaler`, Buildscaler's command line over Job discovery and the
//!   daemon.
//! - [`http`]: the HTTP routes, as a `Router` built without a socket.
//! - [`import`]: `import <seed>`, a seed system's artefacts → a configuration file.
//! - [`leader`]: leader election among replicas over a Kubernetes Lease (`run --leader-elect`).
//! - [`rediscovery`]: the environment modes' periodic re-discovery of their pools.
//! - `demo` (feature `demo`): `demo` (runscale, the GitHub emulator, runner processes and a
//!   workload, end to end on one machine) and `emulator github`.
//! - `chaos` (feature `demo`): `chaos`, the chaos soak (runscale processes killed and
//!   restarted under API faults, webhook loss and an outage; safety numbers checked from
//!   outside).
//! - `fake-runner` (feature `demo`, in `cli`): the emulators' runner agent
//!   (`runscale_emulator::fake_runner`) as the demo's runner process.
//! - [`fuzz_harness`]: entry points for fuzzing and corpus replay (`fuzz/`, `docs/fuzzing.md`).
//! - [`simulate`]: `simulate`, the policy simulator (`runscale-sim`) on a trace.
//! - [`status_page`]: the HTML status page at `/`.
//! - [`logging`], [`table`]: output helpers.

#[cfg(all(feature = "backend-kubernetes", feature = "provider-buildkite"))]
pub mod buildscaler;
#[cfg(feature = "demo")]
pub mod chaos;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fuzz_harness;
pub mod http;
pub mod import;
pub mod leader;
pub mod logging;
pub mod rediscovery;
pub mod server;
pub mod simulate;
pub mod status_page;
pub mod table;
