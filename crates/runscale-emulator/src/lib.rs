//! Stateful fakes of the CI systems runscale talks to, speaking their real wire protocols
//! on loopback, so runscale's production code paths are what the tests exercise.
//!
//! - [`github`]: the GitHub Actions REST subset (runners, JIT configs, tokens, workflow
//!   runs and jobs, App installations, rate limits), `workflow_job` webhooks, fault
//!   injection, workloads, an invariant log, and the fake runner agent (also the
//!   `runscale-fake-runner` binary).
//! - [`kube`]: a fake kube-apiserver (pods, secrets, jobs, cronjobs, leases; watches,
//!   selectors, garbage collection) with a scheduler and a kubelet that runs pods as local
//!   processes.

// `serde_json::json!` of a full repository object nests deeper than the default allows.
#![recursion_limit = "256"]

pub mod github;
pub mod kube;
