//! The `runscale` binary's library: configuration, command line, HTTP server and wiring.
//!
//! `main.rs` only calls [`cli::main`]; everything else lives here so tests reach it.
//!
//! - [`config`]: the YAML file, from text to validated configuration to built adapters.
//! - [`cli`]: arguments, exit codes.
//! - [`commands`]: `once`, `check`, `config schema`, `version`.
//! - [`daemon`]: `run` (HTTP server + reconciler + signals).
//! - [`http`]: the HTTP routes, as a `Router` built without a socket.
//! - [`simulate`]: `simulate`, the policy simulator (`runscale-sim`) on a trace.
//! - [`status_page`]: the HTML status page at `/`.
//! - [`logging`], [`table`]: output helpers.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod http;
pub mod logging;
pub mod simulate;
pub mod status_page;
pub mod table;
