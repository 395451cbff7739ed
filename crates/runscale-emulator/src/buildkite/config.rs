//! Configuration of the Buildkite emulator: the organisation, the agent registration tokens,
//! the REST API tokens and their rate limits, the metrics poll duration, the intervals agents
//! are told to keep, webhooks, fault knobs and the silence after which a connected agent is
//! lost.
//!
//! Secrets are [`SecretString`]s: `Debug` output is redacted.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Everything the Buildkite emulator needs to start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// The organisation slug (`/v2/organizations/{org}/...`, `organization.slug` of metrics).
    pub org: String,
    /// Agent (or cluster) tokens: `Authorization: Token <token>` on `/v3/metrics` and on agent
    /// registration.
    #[serde(default)]
    pub agent_tokens: Vec<SecretString>,
    /// REST API access tokens: `Authorization: Bearer <token>` on `/v2/...`. Each token
    /// belongs to its own user (for the per-user rate limit).
    #[serde(default)]
    pub api_tokens: Vec<SecretString>,
    /// REST requests allowed per minute over the organisation (Buildkite: 200); further ones
    /// answer 429. Every answer carries `RateLimit-Scope/Limit/Remaining/Reset`.
    #[serde(default = "default_rest_per_minute")]
    pub rest_requests_per_minute: u32,
    /// REST requests allowed per minute to one user, i.e. one API token (Buildkite: 50);
    /// further ones answer 429. Every answer carries `RateLimit-User-Scope/Limit/Remaining/
    /// Reset`.
    #[serde(default = "default_rest_per_minute_per_user")]
    pub rest_requests_per_minute_per_user: u32,
    /// `Buildkite-Agent-Metrics-Poll-Duration` sent with metrics, in whole seconds; `None`:
    /// not sent.
    #[serde(default, with = "humantime_serde::option")]
    pub metrics_poll_duration: Option<Duration>,
    /// A connected agent that has not pinged for this long is `lost` (killed); a job it held
    /// is lost too and recorded as a violation.
    #[serde(default = "default_agent_lost_after", with = "humantime_serde")]
    pub agent_lost_after: Duration,
    /// `ping_interval` told to registering agents (whole seconds, at least 1): how often an
    /// idle agent asks for work.
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// `heartbeat_interval` told to registering agents (whole seconds, at least 1).
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// `job_status_interval` told to registering agents (whole seconds, at least 1): how often
    /// a busy agent reads its job's state (to notice a cancellation).
    #[serde(default = "default_job_status_interval", with = "humantime_serde")]
    pub job_status_interval: Duration,
    /// `BUILDKITE_REPO` of every job. The default names a host under `.invalid`, which never
    /// resolves: an agent that does check out (no checkout hook, no `--skip-checkout`) fails
    /// at once instead of reaching the network.
    #[serde(default = "default_repository")]
    pub repository: String,
    /// Webhooks receiving `job.*` and `agent.*` events.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Faults injected from the start (changeable while running).
    #[serde(default)]
    pub faults: Faults,
    /// Seed of the generator behind faults and ids.
    #[serde(default)]
    pub seed: u64,
}

impl EmulatorConfig {
    /// A configuration for organisation `org` with one agent token and one API token;
    /// everything else default.
    pub fn new(org: &str, agent_token: &str, api_token: &str) -> Self {
        EmulatorConfig {
            org: org.to_owned(),
            agent_tokens: vec![SecretString::from(agent_token.to_owned())],
            api_tokens: vec![SecretString::from(api_token.to_owned())],
            rest_requests_per_minute: default_rest_per_minute(),
            rest_requests_per_minute_per_user: default_rest_per_minute_per_user(),
            metrics_poll_duration: None,
            agent_lost_after: default_agent_lost_after(),
            ping_interval: default_ping_interval(),
            heartbeat_interval: default_heartbeat_interval(),
            job_status_interval: default_job_status_interval(),
            repository: default_repository(),
            webhooks: Vec::new(),
            faults: Faults::default(),
            seed: 0,
        }
    }
}

/// How a webhook proves it comes from Buildkite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookAuth {
    /// `X-Buildkite-Token: <token>`.
    #[default]
    Token,
    /// `X-Buildkite-Signature: timestamp=<unix>,signature=<hex HMAC-SHA256(token,
    /// "<timestamp>.<body>")>`.
    Signature,
}

/// One outbound webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The webhook token (sent as is, or the HMAC key).
    pub token: SecretString,
    /// Token or signature.
    #[serde(default)]
    pub auth: WebhookAuth,
}

/// Faults injected into the API runscale calls (metrics and REST; never the agents' own
/// calls).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Probability that a request fails with 502/503 before doing anything.
    #[serde(default)]
    pub error_rate_5xx: f64,
    /// The next this-many requests fail with 503.
    #[serde(default)]
    pub fail_next: u32,
    /// The next this-many requests answer 429 with `Retry-After: 1`.
    #[serde(default)]
    pub throttle_next: u32,
    /// Latency added before every response.
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
    /// Every webhook is delivered twice (same body and headers).
    #[serde(default)]
    pub duplicate_webhooks: bool,
    /// The faults above hit the metrics API only, not REST.
    #[serde(default)]
    pub metrics_only: bool,
}

fn default_rest_per_minute() -> u32 {
    200
}

fn default_rest_per_minute_per_user() -> u32 {
    50
}

fn default_agent_lost_after() -> Duration {
    Duration::from_secs(10)
}

fn default_ping_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_job_status_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_repository() -> String {
    "https://git.example.invalid/acme/app.git".to_owned()
}
