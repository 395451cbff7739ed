//! Configuration of the Buildkite provider: the organisation-level [`Config`] and the
//! per-pool [`PoolSelector`], with their pure validation. Nothing here reads a secret or
//! opens a connection; that happens in [`BuildkiteProvider::new`](super::BuildkiteProvider::new).

use std::collections::BTreeMap;
use std::time::Duration;

use runscale_core::adapter_type::{Problems, Selector, Validate};
use runscale_core::secret::SecretRef;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::{self, push};

/// One Buildkite organisation (or one cluster of it) whose agents runscale scales.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The organisation slug (`/v2/organizations/{org}/agents`).
    pub org: String,
    /// Base URL of the REST API, without `/v2`: `https://api.buildkite.com` (default).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The agent API endpoint, with `/v3`: `https://agent.buildkite.com/v3` (default). Metrics
    /// are read from `<agent_endpoint>/metrics`, and agents are given it as
    /// `BUILDKITE_AGENT_ENDPOINT`.
    #[serde(default = "default_agent_endpoint")]
    pub agent_endpoint: String,
    /// A REST API access token with `read_agents` and `write_agents` (sent as `Bearer`).
    pub api_token: SecretRef,
    /// The agent token (or the cluster's agent token): reads the agent metrics API and is
    /// handed to every agent as `BUILDKITE_AGENT_TOKEN` through the backend's private
    /// credentials channel.
    pub agent_token: SecretRef,
    /// The webhook token of the notification service: deliveries to `/webhooks/buildkite`
    /// carry it as `X-Buildkite-Token`, or sign with it (`X-Buildkite-Signature`). Without it,
    /// webhooks are rejected.
    #[serde(default)]
    pub webhook_token: Option<SecretRef>,
    /// REST requests runscale allows itself per minute against the organisation's budget
    /// (Buildkite: 200 per organisation, shared with every other client of the organisation:
    /// leave room for them). Calls beyond it are not sent; they fail as rate limited.
    #[serde(default = "default_rest_per_minute")]
    pub rest_requests_per_minute: u32,
    /// REST requests runscale allows itself per minute against the budget of the user who
    /// owns `api_token` (Buildkite: 50 per user, shared with that user's other clients).
    /// Calls beyond it are not sent; they fail as rate limited.
    #[serde(default = "default_rest_per_minute_per_user")]
    pub rest_requests_per_minute_per_user: u32,
    /// After a stop request to an idle agent, `remove` waits up to this long for the agent
    /// to disconnect before answering busy (the next pass asks again). `0s`: do not wait.
    #[serde(default = "default_stop_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stop_wait: Duration,
    /// Prefix of the stacks runscale registers with the Stacks API for pools with
    /// `reserve_jobs`: one stack per queue, `<stack_key>-<queue>`, or, when the queue name has
    /// characters a stack key cannot have (Buildkite allows alphanumerics, `_` and `-`, at most
    /// 80 bytes) or is too long, `<stack_key>-<queue with _ for those, shortened>-<12 hex
    /// digits of its SHA-256>`. Alphanumerics, `_` and `-`, at most 40 bytes. Two runscale
    /// installations serving one queue need different keys.
    #[serde(default = "default_stack_key")]
    pub stack_key: String,
    /// How long a job reserved for a new agent stays reserved (1s to 1h): if the agent has
    /// not acquired it by then, the job is scheduled again.
    #[serde(default = "default_reservation_expiry", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reservation_expiry: Duration,
    /// Timeout of one API request, including reading the response.
    #[serde(default = "http::default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Timeout for opening a connection.
    #[serde(default = "http::default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

/// One pool: a queue, extra agent tags, and how its agents live.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    /// The queue (`queue=` tag) whose scheduled jobs this pool runs. One pool per queue: the
    /// metrics API counts jobs per queue only.
    pub queue: String,
    /// Further agent tags (`os: linux`), given to the agents with the queue as
    /// `BUILDKITE_AGENT_TAGS`; webhooks wake the pool only for jobs whose agent query rules
    /// these tags satisfy.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Agents run one job, then disconnect (`--disconnect-after-job`; for ephemeral pools).
    #[serde(default)]
    pub disconnect_after_job: bool,
    /// Agents disconnect by themselves after this long without a job
    /// (`--disconnect-after-idle-timeout`, whole seconds). runscale then reaps the instance
    /// of an agent that left. Default: not set (runscale stops idle agents itself).
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub disconnect_after_idle_timeout: Option<Duration>,
    /// One agent per job through the Stacks API (needs a cluster agent token): demand is the
    /// queue's scheduled, unreserved jobs whose agent query rules these tags satisfy, and each
    /// new agent gets one of them reserved (`batch-reserve`) and handed over as
    /// `BUILDKITE_AGENT_ACQUIRE_JOB`, so two controllers never start the same job. The agent
    /// runs it and leaves. While the cluster queue's dispatch is paused (`dispatch_paused`),
    /// nothing is reserved or launched.
    #[serde(default)]
    pub reserve_jobs: bool,
    /// The id (UUID) of the queue's cluster queue. With it, the pool's agents are read from
    /// the agents listing filtered by this cluster queue (`?cluster_queue_id=`), so a large
    /// organisation's other agents are never paged through. Without it, every page of the
    /// organisation's listing is read (an observation fails rather than miss a page).
    #[serde(default)]
    pub cluster_queue_id: Option<String>,
}

fn default_api_url() -> String {
    "https://api.buildkite.com".to_owned()
}

fn default_agent_endpoint() -> String {
    "https://agent.buildkite.com/v3".to_owned()
}

fn default_rest_per_minute() -> u32 {
    200
}

fn default_rest_per_minute_per_user() -> u32 {
    50
}

fn default_stop_wait() -> Duration {
    Duration::from_secs(5)
}

fn default_stack_key() -> String {
    "runscale".to_owned()
}

fn default_reservation_expiry() -> Duration {
    Duration::from_secs(300)
}

fn check_url(field: &str, value: &str, errors: &mut Vec<(String, String)>) {
    match reqwest::Url::parse(value) {
        Err(e) => errors.push((field.to_owned(), format!("not a URL: {e}"))),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            errors.push((field.to_owned(), "must be http or https".to_owned()));
        }
        Ok(u) if u.query().is_some() => {
            errors.push((field.to_owned(), "must not have a query".to_owned()));
        }
        Ok(_) => {}
    }
}

/// Longest stack key (Buildkite's limit, in bytes).
const MAX_STACK_KEY: usize = 80;
/// Longest [`Config::stack_key`], so a queue part and a hash always fit after it.
const MAX_STACK_KEY_PREFIX: usize = 40;
/// Hex digits of the queue name's SHA-256 in a derived stack key.
const STACK_HASH_HEX: usize = 12;

/// A usable stack key: 1 to 80 bytes of alphanumerics, `_` and `-`.
pub(crate) fn valid_stack_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_STACK_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The stack key of `queue`'s pool: `<prefix>-<queue>` when that is a usable key; otherwise
/// the queue with `_` for every character a key cannot have, shortened to fit, and 12 hex
/// digits of the queue name's SHA-256, so queues that look alike once cleaned
/// (`linux.large`, `linux:large`) get different keys. `prefix` must be a valid key of at most
/// 40 bytes.
pub(crate) fn stack_key(prefix: &str, queue: &str) -> String {
    let plain = format!("{prefix}-{queue}");
    if valid_stack_key(&plain) {
        return plain;
    }
    let room = MAX_STACK_KEY.saturating_sub(prefix.len() + 2 + STACK_HASH_HEX);
    let cleaned: String = queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    let digest = Sha256::digest(queue.as_bytes());
    let hash: String = hex::encode(digest).chars().take(STACK_HASH_HEX).collect();
    format!("{prefix}-{cleaned}-{hash}")
}

/// A tag key or value: printable, no `,` or `=` (they separate tags) and no spaces.
fn valid_tag_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '=')
}

impl Validate for Config {
    /// Checks the settings without reading secrets or touching the network. Errors name the
    /// field and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("stop_wait", Some(self.stop_wait)),
            ("reservation_expiry", Some(self.reservation_expiry)),
            ("request_timeout", Some(self.request_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
        ]));
        if !valid_tag_part(&self.org) || self.org.contains('/') {
            push(
                &mut errors,
                "org",
                format!("{:?} is not an organisation slug", self.org),
            );
        }
        check_url("api_url", &self.api_url, &mut errors);
        check_url("agent_endpoint", &self.agent_endpoint, &mut errors);
        if self.rest_requests_per_minute == 0 {
            push(
                &mut errors,
                "rest_requests_per_minute",
                "must be at least 1",
            );
        }
        if self.rest_requests_per_minute_per_user == 0 {
            push(
                &mut errors,
                "rest_requests_per_minute_per_user",
                "must be at least 1",
            );
        }
        if !valid_stack_key(&self.stack_key) || self.stack_key.len() > MAX_STACK_KEY_PREFIX {
            push(
                &mut errors,
                "stack_key",
                format!(
                    "{:?} is not a usable stack key prefix (1 to 40 bytes of alphanumerics, `_` \
                     and `-`)",
                    self.stack_key
                ),
            );
        }
        if !(1..=3600).contains(&self.reservation_expiry.as_secs()) {
            push(
                &mut errors,
                "reservation_expiry",
                "must be between 1s and 1h",
            );
        }
        if self.request_timeout.is_zero() {
            push(&mut errors, "request_timeout", "must not be zero");
        }
        http::result(errors)
    }
}

impl PoolSelector {
    /// The agent's tags: `queue=<queue>`, then the others in key order.
    pub(crate) fn agent_tags(&self) -> Vec<String> {
        std::iter::once(format!("queue={}", self.queue))
            .chain(self.tags.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
    }
}

impl Selector for PoolSelector {
    fn labels(&self) -> Vec<String> {
        self.agent_tags()
    }
}

impl Validate for PoolSelector {
    /// Checks the selector without reading secrets. Errors name the field.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([(
            "disconnect_after_idle_timeout",
            self.disconnect_after_idle_timeout,
        )]));
        if !valid_tag_part(&self.queue) {
            push(
                &mut errors,
                "queue",
                format!("{:?} is not a queue name", self.queue),
            );
        }
        for (k, v) in &self.tags {
            if k == "queue" {
                errors.push((
                    "tags.queue".to_owned(),
                    "set the queue with `queue`, not as a tag".to_owned(),
                ));
            } else if !valid_tag_part(k) || !valid_tag_part(v) {
                errors.push((
                    format!("tags.{k}"),
                    "keys and values must be non-empty, without spaces, `,` or `=`".to_owned(),
                ));
            }
        }
        if let Some(id) = &self.cluster_queue_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            push(
                &mut errors,
                "cluster_queue_id",
                format!("{id:?} is not a cluster queue id (a UUID)"),
            );
        }
        if let Some(d) = self.disconnect_after_idle_timeout
            && d.as_secs() == 0
        {
            push(
                &mut errors,
                "disconnect_after_idle_timeout",
                "must be at least 1s (the agent counts whole seconds)",
            );
        }
        http::result(errors)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    fn selector() -> PoolSelector {
        PoolSelector {
            queue: "linux".into(),
            tags: BTreeMap::from([("os".into(), "linux".into())]),
            disconnect_after_job: false,
            disconnect_after_idle_timeout: None,
            reserve_jobs: false,
            cluster_queue_id: None,
        }
    }

    #[test]
    fn selectors_name_the_bad_field() {
        assert!(selector().validate().is_ok());
        assert_eq!(selector().agent_tags(), ["queue=linux", "os=linux"]);
        let mut s = selector();
        s.tags.insert("queue".into(), "x".into());
        s.tags.insert("a b".into(), "c".into());
        s.disconnect_after_idle_timeout = Some(Duration::from_millis(300));
        let fields: Vec<_> = s.validate().unwrap_err().into_iter().map(|e| e.0).collect();
        assert_eq!(
            fields,
            ["tags.a b", "tags.queue", "disconnect_after_idle_timeout"]
        );
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_urls() {
        let yaml = r#"{"org":"acme","api_token":{"env":"A"},"agent_token":{"env":"B"},"x":1}"#;
        assert!(serde_json::from_str::<Config>(yaml).is_err());
        let mut c: Config = serde_json::from_str(
            r#"{"org":"acme","api_token":{"env":"A"},"agent_token":{"env":"B"}}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.rest_requests_per_minute, 200);
        c.agent_endpoint = "ftp://x".into();
        c.org = "a/b".into();
        let fields: Vec<_> = c.validate().unwrap_err().into_iter().map(|e| e.0).collect();
        assert_eq!(fields, ["org", "agent_endpoint"]);
        c.org = "acme".into();
        c.agent_endpoint = "https://agent.buildkite.com/v3".into();
        for bad in ["", "a.b", "a/b", &"k".repeat(41)] {
            c.stack_key = bad.to_owned();
            let fields: Vec<_> = c.validate().unwrap_err().into_iter().map(|e| e.0).collect();
            assert_eq!(fields, ["stack_key"], "{bad:?}");
        }
        assert_eq!(c.rest_requests_per_minute_per_user, 50);
    }

    #[test]
    fn stack_keys_are_valid_for_any_queue_and_never_collide() {
        assert_eq!(stack_key("runscale", "linux"), "runscale-linux");
        let dotted = stack_key("runscale", "linux.large");
        assert!(dotted.starts_with("runscale-linux_large-"), "{dotted}");
        let queues = [
            "linux.large",
            "linux:large",
            "linux_large",
            "linux large",
            "ünïcode",
            &"q".repeat(200),
            &format!("{}x", "q".repeat(199)),
        ];
        let prefix = "p".repeat(40);
        let mut keys: Vec<String> = queues.iter().map(|q| stack_key(&prefix, q)).collect();
        for k in &keys {
            assert!(valid_stack_key(k), "{k}");
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), queues.len(), "all distinct");
    }
}
