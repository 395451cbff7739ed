//! Configuration of the CircleCI provider: the organisation-level [`Config`] and the per-pool
//! [`PoolSelector`], with their pure validation. Nothing here reads a secret or opens a
//! connection; that happens in [`CircleciProvider::new`](super::CircleciProvider::new).

use std::time::Duration;

use runscale_core::adapter_type::{Problems, Selector, Validate};
use runscale_core::secret::SecretRef;
use schemars::JsonSchema;
use serde::Deserialize;

use super::webhook;
use crate::http::{self, push};

/// One CircleCI organisation whose self-hosted runners runscale scales.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the runner API, without the version: `https://runner.circleci.com`
    /// (default). Runners are given the same URL.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Which paths to read: `v3` (default; `/api/v3/runner/tasks`, `/api/v3/runner/tasks/running`,
    /// `/api/v3/runner`) or `v2` (`/api/v2/tasks`, `/api/v2/tasks/running`, `/api/v2/runner`,
    /// the paths circleci-runner-autoscaler and the CircleCI Lambda example use).
    #[serde(default)]
    pub api_version: ApiVersion,
    /// A personal or project API token, sent as `Circle-Token` (only reads the runner API).
    pub token: SecretRef,
    /// Secret of the outbound webhooks (`circleci-signature: v1=...`); deliveries to
    /// `/webhooks/circleci` are verified with it. Without it, webhooks are rejected.
    #[serde(default)]
    pub webhook_secret: Option<SecretRef>,
    /// The organisation's runner concurrency (the plan's limit, shared by every resource
    /// class; queued tasks count against it). runscale then never asks for more capacity than
    /// `max_concurrency` minus the running tasks of all pools. Default: no limit.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A listed runner whose last contact (`last_connected`) is older than this is taken as
    /// gone: its instance may be reaped. Keep it well above how long a runner can go without
    /// contacting CircleCI.
    #[serde(default = "default_disconnect_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub disconnect_grace: Duration,
    /// Timeout of one API request, including reading the response.
    #[serde(default = "http::default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Timeout for opening a connection.
    #[serde(default = "http::default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

/// The runner API generation whose paths are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// `/api/v3/runner/...` (current).
    #[default]
    V3,
    /// `/api/v2/tasks`, `/api/v2/runner` (what the seed systems call).
    V2,
}

/// One pool: a resource class, the token its runners claim tasks with, and how they live.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    /// `namespace/name` of the resource class. One pool per resource class.
    pub resource_class: String,
    /// The resource-class token. It reaches each runner through the backend's private
    /// credentials channel (never argv, user data or logs). Without it, runscale hands the
    /// runner no token: the instance template must carry one (as circleci-runner-autoscaler's
    /// CronJobs and the CircleCI Lambda example's launch templates do).
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// Which runners of the resource class are the pool's: `runscale` (default: those runscale
    /// named for this pool) or `any` (every runner of the class, named however its instance
    /// names it — circleci-runner-autoscaler's convention of runners named by their EC2
    /// instance id or pod name; pair it with a backend that names instances that way, e.g.
    /// aws-asg's `runner_name: instance-id`). Runners that no instance hosts are never stopped
    /// while connected, so `any` is safe with runners runscale did not start.
    #[serde(default)]
    pub runner_names: RunnerNames,
    /// `single-task` (default: one task, then the runner exits and its instance is reaped)
    /// or `continuous` (the runner takes tasks until `runner_idle_timeout`).
    #[serde(default)]
    pub runner_mode: RunnerMode,
    /// How long a runner waits for a task before it exits by itself. runscale never stops a
    /// connected runner, so this is how idle capacity goes away: set it (required for
    /// `continuous`).
    #[serde(
        default = "default_runner_idle_timeout",
        with = "humantime_serde::option"
    )]
    #[schemars(with = "Option<String>")]
    pub runner_idle_timeout: Option<Duration>,
    /// Project slugs whose webhooks wake this pool: `github/org/repo` (or `gh/org/repo`),
    /// `bitbucket/org/repo` (or `bb/org/repo`), or `circleci/<org-id>/<project-id>` for
    /// GitHub App and GitLab organisations; compared without regard to case or the short
    /// forms. Empty (default): every project's.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Variable names the runner is configured with: `circleci-runner` (machine runner 3,
    /// `CIRCLECI_RUNNER_*`; default) or `launch-agent` (`LAUNCH_AGENT_*`).
    #[serde(default)]
    pub agent_env: AgentEnv,
}

/// Which runners of a resource class belong to a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerNames {
    /// Runners runscale named for the pool.
    #[default]
    Runscale,
    /// Every runner of the resource class.
    Any,
}

/// How a runner lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerMode {
    /// One task, then exit.
    #[default]
    SingleTask,
    /// Tasks until the idle timeout.
    Continuous,
}

impl RunnerMode {
    /// As the runner's configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerMode::SingleTask => "single-task",
            RunnerMode::Continuous => "continuous",
        }
    }
}

/// The family of environment variables a runner reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentEnv {
    /// Machine runner 3: `CIRCLECI_RUNNER_API_AUTH_TOKEN`, `CIRCLECI_RUNNER_NAME`, ...
    #[default]
    CircleciRunner,
    /// The older launch-agent: `LAUNCH_AGENT_API_AUTH_TOKEN`, `LAUNCH_AGENT_RUNNER_NAME`, ...
    LaunchAgent,
}

impl AgentEnv {
    /// (token, name, api url, mode, idle timeout) variable names.
    pub(crate) fn names(self) -> [&'static str; 5] {
        match self {
            AgentEnv::CircleciRunner => [
                "CIRCLECI_RUNNER_API_AUTH_TOKEN",
                "CIRCLECI_RUNNER_NAME",
                "CIRCLECI_RUNNER_API_URL",
                "CIRCLECI_RUNNER_MODE",
                "CIRCLECI_RUNNER_IDLE_TIMEOUT",
            ],
            AgentEnv::LaunchAgent => [
                "LAUNCH_AGENT_API_AUTH_TOKEN",
                "LAUNCH_AGENT_RUNNER_NAME",
                "LAUNCH_AGENT_API_URL",
                "LAUNCH_AGENT_RUNNER_MODE",
                "LAUNCH_AGENT_RUNNER_IDLE_TIMEOUT",
            ],
        }
    }
}

fn default_api_url() -> String {
    "https://runner.circleci.com".to_owned()
}

fn default_disconnect_grace() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_runner_idle_timeout() -> Option<Duration> {
    Some(Duration::from_secs(5 * 60))
}

/// A `namespace/name` resource class.
pub(crate) fn valid_resource_class(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    s.split_once('/').is_some_and(|(ns, n)| ok(ns) && ok(n))
}

impl Validate for Config {
    /// Checks the settings without reading secrets or touching the network. Errors name the
    /// field and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("disconnect_grace", Some(self.disconnect_grace)),
            ("request_timeout", Some(self.request_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
        ]));
        match reqwest::Url::parse(&self.api_url) {
            Err(e) => push(&mut errors, "api_url", format!("not a URL: {e}")),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                push(&mut errors, "api_url", "must be http or https");
            }
            Ok(u) if u.query().is_some() => {
                push(&mut errors, "api_url", "must not have a query");
            }
            Ok(_) => {}
        }
        if self.max_concurrency == Some(0) {
            push(
                &mut errors,
                "max_concurrency",
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if self.disconnect_grace < Duration::from_secs(1) {
            push(
                &mut errors,
                "disconnect_grace",
                "must be at least 1s (keep it well above the time a runner can go without contact)",
            );
        }
        if self.request_timeout.is_zero() {
            push(&mut errors, "request_timeout", "must not be zero");
        }
        http::result(errors)
    }
}

impl Selector for PoolSelector {
    fn labels(&self) -> Vec<String> {
        vec![self.resource_class.clone()]
    }
}

impl Validate for PoolSelector {
    /// Checks the selector without reading secrets. Errors name the field.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([(
            "runner_idle_timeout",
            self.runner_idle_timeout,
        )]));
        if !valid_resource_class(&self.resource_class) {
            push(
                &mut errors,
                "resource_class",
                format!(
                    "{:?} is not of the form namespace/name",
                    self.resource_class
                ),
            );
        }
        if self.runner_mode == RunnerMode::Continuous && self.runner_idle_timeout.is_none() {
            push(
                &mut errors,
                "runner_idle_timeout",
                "required with runner_mode continuous: runscale never stops a connected \
                 runner, so a runner without an idle timeout would never leave",
            );
        }
        if self.runner_idle_timeout.is_some_and(|d| d.is_zero()) {
            push(&mut errors, "runner_idle_timeout", "must not be zero");
        }
        for (i, p) in self.projects.iter().enumerate() {
            if let Err(why) = webhook::canonical_slug(p) {
                errors.push((format!("projects[{i}]"), format!("{p:?} {why}")));
            }
        }
        http::result(errors)
    }
}
