//! Configuration of the GitLab emulator: admin tokens, projects and groups, webhooks, fault
//! knobs, Workhorse long polling, the job lease, GitLab's online window and trace interval,
//! and which runner fields the API lists.
//!
//! Secrets are [`SecretString`]s: `Debug` output is redacted.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Everything the GitLab emulator needs to start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Personal access tokens accepted as `PRIVATE-TOKEN: <token>` or
    /// `Authorization: Bearer <token>` on the admin API.
    #[serde(default)]
    pub admin_tokens: Vec<SecretString>,
    /// Users who are not administrators, with their tokens and project memberships (their
    /// `GET /projects?membership=true`, and what they may do with project runners).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Groups (id and full path).
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Projects (id, path and the group they belong to).
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
    /// Project or group hooks receiving Job Hook events.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Faults injected into the admin API from the start (changeable while running).
    #[serde(default)]
    pub faults: Faults,
    /// GitLab Workhorse long polling (`apiCiLongPollingDuration`): a `POST /jobs/request`
    /// whose `last_update` is the runner's current queue value is held until the queue changes
    /// or this passes, then answered 204 by "Workhorse" without reaching GitLab — so the
    /// manager's `contacted_at` does not move. Zero (default, as on self-managed GitLab, where
    /// it is effectively off): every request reaches GitLab and is answered at once. gitlab.com
    /// uses 50 s.
    #[serde(default, with = "humantime_serde")]
    pub long_poll: Duration,
    /// How long a runner's queue value lives (GitLab's `RUNNER_QUEUE_EXPIRY_TIME`, 1 hour):
    /// past it, a long-polled request reaches GitLab again.
    #[serde(default = "default_queue_expiry", with = "humantime_serde")]
    pub queue_expiry: Duration,
    /// A running job whose runner sent no update (job update or trace patch) for this long is
    /// lost (failed with `runner_system_failure`, recorded as a violation: its runner was
    /// killed mid-job). A test knob: GitLab drops such jobs only after an hour. It must exceed
    /// the runner's silences: gitlab-runner patches the trace every trace update interval when
    /// there is output, and otherwise touches the job every 30 s.
    #[serde(default = "default_job_lease", with = "humantime_serde")]
    pub job_lease: Duration,
    /// A runner or manager contacted within this long is `online` (GitLab's
    /// `ONLINE_CONTACT_TIMEOUT`, 2 hours; the default). Tests may shorten it only to test that
    /// path.
    #[serde(default = "default_online_window", with = "humantime_serde")]
    pub online_window: Duration,
    /// `X-GitLab-Trace-Update-Interval` answered to trace patches: how often the runner sends
    /// its job log (GitLab: 60 s, 3 s while somebody watches the log).
    #[serde(default = "default_trace_update_interval", with = "humantime_serde")]
    pub trace_update_interval: Duration,
    /// Whether runner listings carry `created_at` (newer GitLab versions do, older ones not).
    /// Default: not, so that clients cope without it.
    #[serde(default)]
    pub runner_created_at: bool,
    /// Admin requests allowed per minute (gitlab.com: 2,000 per user); beyond it, 429 with
    /// `Retry-After`. Every admin answer then carries `RateLimit-Limit`,
    /// `RateLimit-Remaining` and `RateLimit-Reset`. `None` (default): unlimited.
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Seed of the generator behind faults, tokens and UUIDs.
    #[serde(default)]
    pub seed: u64,
}

impl EmulatorConfig {
    /// One admin token, one group `acme` (id 10) holding the given projects (ids from 100,
    /// paths `acme/<name>`); everything else default.
    pub fn new(admin_token: &str, projects: &[&str]) -> Self {
        EmulatorConfig {
            admin_tokens: vec![SecretString::from(admin_token.to_owned())],
            users: Vec::new(),
            groups: vec![GroupConfig {
                id: 10,
                path: "acme".to_owned(),
            }],
            projects: projects
                .iter()
                .zip(100..)
                .map(|(name, id)| ProjectConfig {
                    id,
                    path: format!("acme/{name}"),
                    group: Some(10),
                })
                .collect(),
            webhooks: Vec::new(),
            faults: Faults::default(),
            long_poll: Duration::ZERO,
            queue_expiry: default_queue_expiry(),
            job_lease: default_job_lease(),
            online_window: default_online_window(),
            trace_update_interval: default_trace_update_interval(),
            runner_created_at: false,
            rate_limit: None,
            seed: 0,
        }
    }
}

/// A user who is not an administrator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The username.
    pub username: String,
    /// Personal access token, accepted like the admin tokens.
    pub token: SecretString,
    /// Project memberships.
    #[serde(default)]
    pub memberships: Vec<MembershipConfig>,
}

/// A user's role in a project.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipConfig {
    /// Project id.
    pub project: u64,
    /// GitLab's access level: 10 Guest, 15 Planner, 20 Reporter, 30 Developer, 40 Maintainer,
    /// 50 Owner.
    pub access_level: u32,
}

/// A group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Numeric id.
    pub id: u64,
    /// Full path (`acme`, `acme/platform`).
    pub path: String,
}

/// A project.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Numeric id.
    pub id: u64,
    /// `path_with_namespace` (`acme/app`).
    pub path: String,
    /// The group it belongs to, if any.
    #[serde(default)]
    pub group: Option<u64>,
}

/// One outbound hook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The secret token sent as `X-Gitlab-Token`; without it none is sent.
    #[serde(default)]
    pub token: Option<SecretString>,
}

/// Faults injected into the admin API (runscale's calls; the runners' own calls are not
/// affected).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Probability that an admin request fails with 500/502/503 before doing anything.
    #[serde(default)]
    pub error_rate_5xx: f64,
    /// The next this-many admin requests fail with 503.
    #[serde(default)]
    pub fail_next: u32,
    /// The next this-many admin requests answer 429 with `retry-after: 1`.
    #[serde(default)]
    pub throttle_next: u32,
    /// Latency added before every admin response.
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
    /// Every webhook is delivered twice with the same `Idempotency-Key` (a retry).
    #[serde(default)]
    pub duplicate_webhooks: bool,
    /// Admin routes (as routed, e.g. `/api/v4/runners/{id}/managers`) that answer 503 while
    /// listed: one failing call among many that succeed.
    #[serde(default)]
    pub failing_routes: Vec<String>,
}

fn default_queue_expiry() -> Duration {
    Duration::from_secs(3600)
}

fn default_trace_update_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_job_lease() -> Duration {
    Duration::from_secs(10)
}

fn default_online_window() -> Duration {
    Duration::from_secs(2 * 3600)
}
