//! Configuration of the GitHub emulator: the accounts and repositories it serves, who may
//! call it, where it sends webhooks, its rate limits, its fault knobs and its time
//! compression. [`EmulatorOptions`] builds a configuration from a handful of CLI-style
//! options.
//!
//! Secrets (tokens, webhook secrets) are [`SecretString`]s: `Debug` output is redacted.

use std::collections::BTreeSet;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

/// Everything the GitHub emulator needs to start.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Accounts (organisations or users) served, each with its repositories.
    pub owners: Vec<OwnerConfig>,
    /// Personal access tokens accepted as `Authorization: Bearer <token>` (or
    /// `token <token>`). Each may access every account and has its own rate-limit bucket.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub tokens: Vec<SecretString>,
    /// Webhooks receiving `workflow_job` events. Several hooks (say one per organisation and
    /// one per repository) each receive their own delivery of the same event, as on GitHub.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// A GitHub App whose JWTs are accepted on the `/app` endpoints, and its installations.
    #[serde(default)]
    pub app: Option<AppConfig>,
    /// Primary rate limit of every token.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Faults injected from the start (can be changed while running).
    #[serde(default)]
    pub faults: Faults,
    /// Seed of the random generators behind faults and generated ids: equal seeds and equal
    /// request sequences give equal faults.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Time compression of workloads: job durations and arrival offsets are divided by it
    /// (`10.0` runs a 60 s job in 6 s). Timeouts in [`RunnerTimeouts`] are real time.
    #[serde(default = "default_speed")]
    pub speed: f64,
    /// How the emulator decides that a runner's agent went away.
    #[serde(default)]
    pub runners: RunnerTimeouts,
    /// The URL clients use to reach the emulator (in links, `url` fields and JIT configs).
    /// Defaults to `http://<bound address>`; set it when listening on `0.0.0.0`.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// One account served by the emulator.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerConfig {
    /// The login, e.g. `octo-org`. Matched case-insensitively, as on GitHub.
    pub login: String,
    /// Whether the account is an organisation (has `/orgs/{org}` endpoints) or a user.
    #[serde(default = "default_owner_kind")]
    pub kind: OwnerKind,
    /// Repository names (without the owner), e.g. `app`.
    #[serde(default)]
    pub repos: Vec<String>,
    /// Runner groups of an organisation. Group 1 (`Default`) always exists; repository
    /// runners always use it.
    #[serde(default)]
    pub runner_groups: Vec<RunnerGroupConfig>,
}

/// The type of a GitHub account.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum OwnerKind {
    /// An organisation: runners can be registered at organisation scope.
    Organization,
    /// A personal account: only repository-scoped runners.
    User,
}

impl OwnerKind {
    /// The account type as GitHub spells it (`Organization` or `User`).
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Organization => "Organization",
            OwnerKind::User => "User",
        }
    }
}

/// A runner group of an organisation, beyond the default group 1.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerGroupConfig {
    /// The group id used in `generate-jitconfig` (`runner_group_id`).
    pub id: u64,
    /// The group name reported in jobs (`runner_group_name`).
    pub name: String,
}

/// One webhook receiving `workflow_job` events.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The secret signing `X-Hub-Signature-256`; without it no signature header is sent.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret: Option<SecretString>,
    /// The hook id sent as `X-GitHub-Hook-ID`.
    #[serde(default = "default_hook_id")]
    pub id: u64,
    /// Limit the hook to one repository (`owner/repo`, a repository hook); without it the hook
    /// receives the events of every repository of `owner` (an organisation hook) or, when
    /// `owner` is unset too, of every account.
    #[serde(default)]
    pub repo: Option<String>,
    /// Limit the hook to one account's repositories (an organisation hook).
    #[serde(default)]
    pub owner: Option<String>,
}

/// A GitHub App: its identity, the public key its JWTs are verified with, its installations.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The App id; JWTs whose `iss` is this number (or its decimal string) are accepted.
    pub app_id: u64,
    /// The App's client id; JWTs whose `iss` is this string are accepted too.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The App slug, reported in installations.
    #[serde(default = "default_app_slug")]
    pub slug: String,
    /// The RSA public key (PEM) matching the App's private key; JWTs are verified (RS256)
    /// with it.
    pub public_key_pem: String,
    /// The App's installations, one per account.
    #[serde(default)]
    pub installations: Vec<InstallationConfig>,
}

/// An installation of the App on one account.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallationConfig {
    /// The installation id.
    pub id: u64,
    /// The account (an `owners` login) it is installed on; its tokens access only that
    /// account's repositories and runners.
    pub owner: String,
}

/// The primary rate limit, per token (an installation's tokens share one bucket).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per window (`x-ratelimit-limit`).
    #[serde(default = "default_rate_limit")]
    pub limit: u32,
    /// Requests left in the first window; defaults to `limit`. Lower it to test exhaustion.
    #[serde(default)]
    pub start_remaining: Option<u32>,
    /// The window length (GitHub: one hour). After it, the bucket is full again.
    #[serde(default = "default_rate_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            limit: default_rate_limit(),
            start_remaining: None,
            window: default_rate_window(),
        }
    }
}

/// Faults injected into the REST API and webhook deliveries. Draws come from a generator
/// seeded by [`EmulatorConfig::seed`].
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Probability that a REST request fails with a GitHub-like 502 or 503 before it does
    /// anything (no side effect, no rate-limit use).
    #[serde(default)]
    pub error_rate_5xx: f64,
    /// A burst of secondary rate limiting: the next `count` REST requests answer 429 with
    /// `retry-after: retry_after_secs`. Setting faults again restarts the burst.
    #[serde(default)]
    pub burst_429: Option<(u32, u64)>,
    /// Latency added before every REST response.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub latency: Duration,
    /// Probability that a webhook delivery is never sent.
    #[serde(default)]
    pub webhook_drop_rate: f64,
    /// Probability that a webhook delivery is sent twice, with the same `X-GitHub-Delivery`.
    #[serde(default)]
    pub webhook_duplicate_rate: f64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Faults::default()
    }

    /// The same probability `rate` for API 5xx errors, dropped and duplicated webhooks.
    pub fn uniform(rate: f64) -> Self {
        Faults {
            error_rate_5xx: rate,
            webhook_drop_rate: rate,
            webhook_duplicate_rate: rate,
            ..Faults::default()
        }
    }

    /// Checks every probability is within `[0, 1]`; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("faults.error_rate_5xx", self.error_rate_5xx),
            ("faults.webhook_drop_rate", self.webhook_drop_rate),
            ("faults.webhook_duplicate_rate", self.webhook_duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::new(field, "must be a probability in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// Real-time limits of the runner protocol.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerTimeouts {
    /// How often agents are asked to heartbeat.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat_interval: Duration,
    /// A runner whose agent was not heard from for this long is `offline`.
    #[serde(default = "default_offline_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub offline_after: Duration,
    /// A busy runner that went offline stays busy (DELETE answers 422) for this long after
    /// going offline; then its job fails, the runner is released and a violation is recorded.
    #[serde(default = "default_lost_job_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lost_job_timeout: Duration,
    /// The longest a job long-poll waits before answering 204.
    #[serde(default = "default_poll_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_wait: Duration,
}

impl Default for RunnerTimeouts {
    fn default() -> Self {
        RunnerTimeouts {
            heartbeat_interval: default_heartbeat_interval(),
            offline_after: default_offline_after(),
            lost_job_timeout: default_lost_job_timeout(),
            poll_wait: default_poll_wait(),
        }
    }
}

fn default_seed() -> u64 {
    1
}
fn default_speed() -> f64 {
    1.0
}
fn default_owner_kind() -> OwnerKind {
    OwnerKind::Organization
}
fn default_hook_id() -> u64 {
    1
}
fn default_app_slug() -> String {
    "runscale-emulator".to_owned()
}
fn default_rate_limit() -> u32 {
    5000
}
fn default_rate_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_offline_after() -> Duration {
    Duration::from_secs(10)
}
fn default_lost_job_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_poll_wait() -> Duration {
    Duration::from_secs(5)
}

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field path, e.g. `owners[0].repos[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl EmulatorConfig {
    /// A configuration serving `owners`, accepting `tokens`, with defaults for the rest.
    pub fn new(owners: Vec<OwnerConfig>, tokens: Vec<SecretString>) -> Self {
        EmulatorConfig {
            owners,
            tokens,
            webhooks: Vec::new(),
            app: None,
            rate_limit: RateLimitConfig::default(),
            faults: Faults::none(),
            seed: default_seed(),
            speed: default_speed(),
            runners: RunnerTimeouts::default(),
            public_url: None,
        }
    }

    /// Checks the configuration without touching the network; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.owners.is_empty() {
            return Err(ConfigError::new("owners", "at least one account is needed"));
        }
        let mut logins = BTreeSet::new();
        for (i, owner) in self.owners.iter().enumerate() {
            if !valid_name(&owner.login) {
                return Err(ConfigError::new(
                    format!("owners[{i}].login"),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                ));
            }
            if !logins.insert(owner.login.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("owners[{i}].login"),
                    format!("duplicate account {:?}", owner.login),
                ));
            }
            let mut repos = BTreeSet::new();
            for (j, repo) in owner.repos.iter().enumerate() {
                if !valid_name(repo) || !repos.insert(repo.to_ascii_lowercase()) {
                    return Err(ConfigError::new(
                        format!("owners[{i}].repos[{j}]"),
                        format!("invalid or duplicate repository name {repo:?}"),
                    ));
                }
            }
            for (j, group) in owner.runner_groups.iter().enumerate() {
                if group.id <= 1 || group.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("owners[{i}].runner_groups[{j}]"),
                        "needs an id above 1 (1 is the default group) and a name",
                    ));
                }
                if owner.kind == OwnerKind::User {
                    return Err(ConfigError::new(
                        format!("owners[{i}].runner_groups"),
                        "only organisations have runner groups",
                    ));
                }
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(ConfigError::new(
                    format!("webhooks[{i}].url"),
                    "must be an http:// or https:// URL",
                ));
            }
            if let Some(repo) = &hook.repo
                && !self.has_repo(repo)
            {
                return Err(ConfigError::new(
                    format!("webhooks[{i}].repo"),
                    format!("{repo:?} is not a served repository (owner/repo)"),
                ));
            }
            if let Some(owner) = &hook.owner
                && !logins.contains(&owner.to_ascii_lowercase())
            {
                return Err(ConfigError::new(
                    format!("webhooks[{i}].owner"),
                    format!("{owner:?} is not a served account"),
                ));
            }
        }
        if let Some(app) = &self.app {
            if jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "app.public_key_pem",
                    "is not an RSA public key in PEM form",
                ));
            }
            let mut ids = BTreeSet::new();
            for (i, inst) in app.installations.iter().enumerate() {
                if !ids.insert(inst.id) {
                    return Err(ConfigError::new(
                        format!("app.installations[{i}].id"),
                        "duplicate installation id",
                    ));
                }
                if !logins.contains(&inst.owner.to_ascii_lowercase()) {
                    return Err(ConfigError::new(
                        format!("app.installations[{i}].owner"),
                        format!("{:?} is not a served account", inst.owner),
                    ));
                }
            }
        }
        if self.rate_limit.limit == 0 {
            return Err(ConfigError::new("rate_limit.limit", "must be at least 1"));
        }
        if self
            .rate_limit
            .start_remaining
            .is_some_and(|r| r > self.rate_limit.limit)
        {
            return Err(ConfigError::new(
                "rate_limit.start_remaining",
                "cannot exceed rate_limit.limit",
            ));
        }
        if self.rate_limit.window.is_zero() {
            return Err(ConfigError::new("rate_limit.window", "must be positive"));
        }
        self.faults.validate()?;
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(ConfigError::new("speed", "must be a positive number"));
        }
        let t = &self.runners;
        for (field, value) in [
            ("runners.heartbeat_interval", t.heartbeat_interval),
            ("runners.offline_after", t.offline_after),
            ("runners.poll_wait", t.poll_wait),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be positive"));
            }
        }
        if t.offline_after <= t.heartbeat_interval {
            return Err(ConfigError::new(
                "runners.offline_after",
                "must be longer than runners.heartbeat_interval",
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "public_url",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    /// Whether `full_name` (`owner/repo`) is served, case-insensitively.
    pub fn has_repo(&self, full_name: &str) -> bool {
        let Some((owner, repo)) = full_name.split_once('/') else {
            return false;
        };
        self.owners.iter().any(|o| {
            o.login.eq_ignore_ascii_case(owner)
                && o.repos.iter().any(|r| r.eq_ignore_ascii_case(repo))
        })
    }
}

/// A few CLI-style options, enough to run the emulator from a command line
/// (`runscale emulator github --listen ADDR ...`).
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// The organisation served.
    pub org: String,
    /// Its repositories.
    pub repos: Vec<String>,
    /// The accepted personal access token.
    pub token: SecretString,
    /// Where to send `workflow_job` webhooks (an organisation hook), if anywhere.
    pub webhook_url: Option<String>,
    /// The webhook secret.
    pub webhook_secret: Option<SecretString>,
    /// Time compression of workloads.
    pub speed: f64,
    /// One probability for API 5xx errors, dropped and duplicated webhooks.
    pub fault_rate: f64,
    /// Seed of the fault generators.
    pub seed: u64,
    /// The public URL, when it differs from `http://<listen address>`.
    pub public_url: Option<String>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            org: "octo-org".to_owned(),
            repos: vec!["app".to_owned()],
            token: SecretString::from("emulator-token"),
            webhook_url: None,
            webhook_secret: None,
            speed: default_speed(),
            fault_rate: 0.0,
            seed: default_seed(),
            public_url: None,
        }
    }
}

impl EmulatorOptions {
    /// The configuration these options describe, validated.
    pub fn into_config(self) -> Result<EmulatorConfig, ConfigError> {
        let mut config = EmulatorConfig::new(
            vec![OwnerConfig {
                login: self.org.clone(),
                kind: OwnerKind::Organization,
                repos: self.repos,
                runner_groups: Vec::new(),
            }],
            vec![self.token],
        );
        if let Some(url) = self.webhook_url {
            config.webhooks.push(WebhookConfig {
                url,
                secret: self.webhook_secret,
                id: default_hook_id(),
                repo: None,
                owner: Some(self.org),
            });
        }
        config.speed = self.speed;
        config.faults = Faults::uniform(self.fault_rate);
        config.seed = self.seed;
        config.public_url = self.public_url;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EmulatorConfig {
        EmulatorOptions::default()
            .into_config()
            .expect("defaults are valid")
    }

    #[test]
    fn defaults_are_valid_and_serve_the_org() {
        let c = config();
        assert!(c.has_repo("octo-org/app"));
        assert!(c.has_repo("OCTO-ORG/App"));
        assert!(!c.has_repo("octo-org/other"));
        assert_eq!(c.rate_limit.limit, 5000);
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = config();
        c.faults.webhook_drop_rate = 1.5;
        assert_eq!(
            c.validate().map_err(|e| e.field),
            Err("faults.webhook_drop_rate".to_owned())
        );
        let mut c = config();
        c.owners[0].repos.push("APP".into());
        assert_eq!(
            c.validate().map_err(|e| e.field),
            Err("owners[0].repos[1]".to_owned())
        );
        let mut c = config();
        c.speed = 0.0;
        assert_eq!(c.validate().map_err(|e| e.field), Err("speed".to_owned()));
        let mut c = config();
        c.runners.offline_after = c.runners.heartbeat_interval;
        assert_eq!(
            c.validate().map_err(|e| e.field),
            Err("runners.offline_after".to_owned())
        );
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let c: EmulatorConfig = serde_json::from_str(
            r#"{"owners":[{"login":"o","repos":["r"]}],"tokens":["t"],
                "faults":{"latency":"50ms","burst_429":[3,1]}}"#,
        )
        .expect("valid");
        assert_eq!(c.faults.latency, Duration::from_millis(50));
        assert_eq!(c.faults.burst_429, Some((3, 1)));
        assert_eq!(c.owners[0].kind, OwnerKind::Organization);
        assert!(c.validate().is_ok());
        let bad = serde_json::from_str::<EmulatorConfig>(r#"{"owners":[],"nope":1}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn debug_output_hides_tokens() {
        let c = config();
        assert!(!format!("{c:?}").contains("emulator-token"));
    }
}
