//! Stateful fakes of the CI systems runscale talks to, speaking their real wire protocols
//! on loopback, so runscale's production code paths are what the tests exercise.
//!
//! - [`github`]: the GitHub Actions REST subset (runners, JIT configs, tokens, workflow
//!   runs and jobs, App installations, rate limits), `workflow_job` webhooks, fault
//!   injection, workloads, an invariant log, and the fake runner agent.
//! - [`circleci`]: CircleCI's self-hosted runner API (v3 and v2 paths), task claiming by
//!   resource class, plan concurrency, `job-completed`/`workflow-completed` webhooks, fault
//!   injection, a violation log, and the fake machine runner.
//! - [`gitlab`]: GitLab's jobs API and runner API as gitlab-runner uses them (pending jobs by
//!   tags, runner managers by `system_id`, job requests), job webhooks, and the fake runner
//!   manager (`run-single`).
//! - [`buildkite`]: Buildkite's agent API (register, connect, ping, accept, finish), the agent
//!   metrics and REST APIs, webhooks, and the fake agent making the real agent's calls.
//! - [`fake_runner`]: the fake runner agents' one command line, for all four CI systems (the
//!   `runscale-fake-runner` binary and `runscale fake-runner`).
//! - [`kube`]: a fake kube-apiserver (pods, secrets, jobs, cronjobs, leases; watches,
//!   selectors, garbage collection) with a scheduler and a kubelet that runs pods as local
//!   processes.
//! - [`aws`] (feature `aws`, on by default): a `moto_server` child on loopback, clients to
//!   set up and inspect it, and an instance agent that plays every Auto Scaling instance's
//!   user data (`deploy/aws/runner-user-data.sh`) with the fake runner agent.

// `serde_json::json!` of a full repository object nests deeper than the default allows.
#![recursion_limit = "256"]

#[cfg(feature = "aws")]
pub mod aws;
pub mod buildkite;
pub mod circleci;
mod credentials;
pub mod fake_runner;
pub mod github;
pub mod gitlab;
pub mod kube;
mod serve;
