//! Configuration of the CircleCI emulator: API tokens, resource classes and their runner
//! tokens, the plan's concurrency, webhooks, fault knobs and the timeouts after which a
//! silent runner or task is given up.
//!
//! Secrets are [`SecretString`]s: `Debug` output is redacted.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Everything the CircleCI emulator needs to start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Personal or project API tokens accepted as `Circle-Token: <token>` or as the user name
    /// of HTTP Basic auth, on the runner API (`/api/v3/runner...`, `/api/v2/...`).
    #[serde(default)]
    pub api_tokens: Vec<SecretString>,
    /// Resource classes (`namespace/name`) and their runner tokens.
    #[serde(default)]
    pub resource_classes: Vec<ResourceClassConfig>,
    /// The organisation's runner concurrency (the plan's limit): at most this many tasks run
    /// at once over all resource classes; further claims get no task. `None`: unlimited.
    #[serde(default)]
    pub plan_concurrency: Option<u32>,
    /// Webhooks receiving `job-completed` and `workflow-completed` events.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Faults injected from the start (changeable while running).
    #[serde(default)]
    pub faults: Faults,
    /// A claimed task whose runner sent no heartbeat for this long is lost (recorded as a
    /// violation: its runner was killed while holding it).
    #[serde(default = "default_task_lease", with = "humantime_serde")]
    pub task_lease: Duration,
    /// A runner that neither polled nor sent a heartbeat for this long leaves the listing
    /// (CircleCI: 12 hours). Runners that exit cleanly leave at once.
    #[serde(default = "default_runner_expiry", with = "humantime_serde")]
    pub runner_expiry: Duration,
    /// Seed of the generator behind faults and ids.
    #[serde(default)]
    pub seed: u64,
}

impl EmulatorConfig {
    /// A configuration with one API token and the given resource classes (name, runner
    /// token); everything else default.
    pub fn new(api_token: &str, classes: &[(&str, &str)]) -> Self {
        EmulatorConfig {
            api_tokens: vec![SecretString::from(api_token.to_owned())],
            resource_classes: classes
                .iter()
                .map(|(name, token)| ResourceClassConfig {
                    name: (*name).to_owned(),
                    token: SecretString::from((*token).to_owned()),
                })
                .collect(),
            plan_concurrency: None,
            webhooks: Vec::new(),
            faults: Faults::default(),
            task_lease: default_task_lease(),
            runner_expiry: default_runner_expiry(),
            seed: 0,
        }
    }
}

/// A resource class and the runner token that claims its tasks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceClassConfig {
    /// `namespace/name`.
    pub name: String,
    /// The resource-class token (sent by runners as `Authorization: Bearer <token>`).
    pub token: SecretString,
}

/// One outbound webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The secret signing `circleci-signature`; without it no signature is sent.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// Only events of this project (its slug, e.g. `github/org/repo`); `None`: every project.
    #[serde(default)]
    pub project: Option<String>,
}

/// Faults injected into the API.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Probability that an API request (runner API of runscale, not the runners' own calls)
    /// fails with 502/503 before doing anything.
    #[serde(default)]
    pub error_rate_5xx: f64,
    /// The next this-many API requests fail with 503.
    #[serde(default)]
    pub fail_next: u32,
    /// The next this-many API requests answer 429 with `retry-after: 1`.
    #[serde(default)]
    pub throttle_next: u32,
    /// Latency added before every API response.
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
    /// Every webhook is delivered twice (same id), to exercise de-duplication.
    #[serde(default)]
    pub duplicate_webhooks: bool,
}

fn default_task_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_runner_expiry() -> Duration {
    Duration::from_secs(12 * 3600)
}
