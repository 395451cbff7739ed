//! Configuration of the Buildkite provider: the organisation-level [`Config`] and the
//! per-pool [`PoolSelector`], with their pure validation. Nothing here reads a secret or
//! opens a connection; that happens in [`BuildkiteProvider::new`](super::BuildkiteProvider::new).

use std::collections::BTreeMap;
use std::time::Duration;

use runscale_core::secret::SecretRef;
use schemars::JsonSchema;
use serde::Deserialize;

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
    /// REST requests runscale allows itself per minute (Buildkite: 200 per organisation,
    /// shared with every other client of the organisation: leave room for them). Calls
    /// beyond the budget are not sent; they fail as rate limited.
    #[serde(default = "default_rest_per_minute")]
    pub rest_requests_per_minute: u32,
    /// After a stop request to an idle agent, `remove` waits up to this long for the agent
    /// to disconnect before answering busy (the next pass asks again). `0s`: do not wait.
    #[serde(default = "default_stop_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stop_wait: Duration,
    /// Prefix of the stacks runscale registers with the Stacks API for pools with
    /// `reserve_jobs` (one stack per queue: `<stack_key>-<queue>`). Two runscale
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
    /// runs it and leaves.
    #[serde(default)]
    pub reserve_jobs: bool,
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

/// A tag key or value: printable, no `,` or `=` (they separate tags) and no spaces.
fn valid_tag_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '=')
}

impl Config {
    /// Checks the settings without reading secrets or touching the network. Errors name the
    /// field and say what is wrong.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut errors = Vec::new();
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
        if !valid_tag_part(&self.stack_key) || self.stack_key.contains('/') {
            push(
                &mut errors,
                "stack_key",
                format!("{:?} is not a usable stack key", self.stack_key),
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
    /// Checks the selector without reading secrets. Errors name the field.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut errors = Vec::new();
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

    /// The agent's tags: `queue=<queue>`, then the others in key order.
    pub(crate) fn agent_tags(&self) -> Vec<String> {
        std::iter::once(format!("queue={}", self.queue))
            .chain(self.tags.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
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
    }
}
