//! A stateful emulator of the subset of GitHub's REST API that runscale uses, with webhook
//! delivery, rate limits, fault injection, scripted workloads and an invariant log; and the
//! fake runner agent that takes its jobs.
//!
//! What lives here: configuration ([`EmulatorConfig`], [`EmulatorOptions`]), the server
//! ([`Emulator::start`] → [`EmulatorHandle`]), the vocabulary of jobs, snapshots and
//! violations, webhook signing ([`signature`], [`verify_signature`]) and the agent
//! ([`run_agent`]). What does not: anything of runscale itself — the emulator speaks only
//! the wire protocol, so runscale's GitHub provider is tested exactly as it runs against
//! github.com.
//!
//! Not modelled: enterprise-scope endpoints, environments (`waiting` jobs), re-runs (every
//! run has one attempt), workflow-run filters other than `status`, the legacy SHA-1
//! `X-Hub-Signature` header, rate-limit buckets other than `core`, and the consumption of
//! remove tokens (they are issued but nothing uses them).

mod agent;
mod api;
mod auth;
mod config;
mod error;
mod middleware;
mod model;
mod runner_api;
mod server;
mod shapes;
mod state;
mod webhook;

pub use agent::{
    AgentError, AgentExit, AgentReport, JIT_CONFIG_SECRET, LABELS_VAR, NAME_VAR,
    RUNNER_TOKEN_SECRET, Registration, RunnerSource, URL_VAR, read_credentials_file, run_agent,
    split_labels,
};
pub use config::{
    AppConfig, ConfigError, EmulatorConfig, EmulatorOptions, Faults, InstallationConfig,
    OwnerConfig, OwnerKind, RateLimitConfig, RunnerGroupConfig, RunnerTimeouts, WebhookConfig,
};
pub use error::EmulatorError;
pub use model::{
    Arrival, Conclusion, DeliveryRecord, JitConfig, JitConfigError, JobRef, JobSnapshot, JobSpec,
    JobStatus, RunnerSnapshot, RunnerStatus, Snapshot, Violation, ViolationKind, WebhookStats,
    Workload,
};
pub use server::{Emulator, EmulatorHandle};
pub use state::Assignment;
pub use webhook::{signature, verify_signature};
