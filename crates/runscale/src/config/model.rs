//! The configuration file's types, as written: top-level settings, providers, backends and
//! pools, with their defaults and documentation (which becomes the JSON Schema).
//!
//! Adapter-specific parts (a provider's or backend's settings, a pool's `selector` and
//! `template`) are kept as JSON values here and turned into the adapter's own types by
//! [`Config::validate`](super::Config::validate), once it is known which adapter they belong
//! to. That keeps error paths exact (`providers[0].token`, `pools[2].template.command`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::registry;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server (health, readiness, metrics, webhooks, API) listens on.
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// A pool with nothing due is still reconciled this often (a duration such as "30s").
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Reconcile passes running at once, over all pools (at least 1).
    #[serde(default = "default_max_concurrent_passes")]
    pub max_concurrent_passes: usize,
    /// On SIGTERM or SIGINT, how long in-flight passes may take to finish before runscale
    /// exits anyway (a duration such as "30s").
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
    /// Leader election among replicas over a Kubernetes Lease: only the replica holding the
    /// lease reconciles. Off unless `enabled` is true or `run --leader-elect` is given.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// CI systems (accounts) to read demand from. Each has a unique `name` that pools refer to,
    /// a `type`, and the settings of that type.
    #[schemars(schema_with = "registry::providers_schema")]
    pub providers: Vec<ProviderConfig>,
    /// Places runners run. Each has a unique `name` that pools refer to, a `type`, and the
    /// settings of that type.
    #[schemars(schema_with = "registry::backends_schema")]
    pub backends: Vec<BackendConfig>,
    /// Scaling units: each binds a selector of one provider to a template of one backend.
    pub pools: Vec<PoolConfig>,
}

/// The default [`Config::listen`]: 127.0.0.1:9090 (loopback only).
fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9090))
}

/// The default [`Config::interval`]: 30 seconds.
fn default_interval() -> Duration {
    Duration::from_secs(30)
}

/// The default [`Config::max_concurrent_passes`]: 16.
fn default_max_concurrent_passes() -> usize {
    16
}

/// The default [`Config::shutdown_timeout`]: 30 seconds.
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Leader election settings (see `crate::leader`). The `run` flags `--leader-elect*` override
/// them.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Elect a leader among the replicas; only the leader reconciles.
    #[serde(default)]
    pub enabled: bool,
    /// Name of the `coordination.k8s.io/v1` Lease the replicas compete for.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// Namespace of the Lease. Default: the namespace of the Kubernetes client (the service
    /// account's in a pod, else the kubeconfig context's, else "default").
    #[serde(default)]
    pub namespace: Option<String>,
    /// This replica's identity in the Lease; unique among the replicas. Default: the host name
    /// (in a pod, the pod name) and the process id, as `{hostname}_{pid}`.
    #[serde(default)]
    pub identity: Option<String>,
    /// How long a Lease holder's claim lasts after its last renewal, as the other replicas see
    /// it (a duration in whole seconds such as "15s").
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lease_duration: Duration,
    /// The leader stops reconciling when it has not renewed the Lease for this long (a
    /// duration such as "10s"); shorter than `lease_duration`, so it stops before anyone else
    /// can take over.
    #[serde(default = "default_renew_deadline", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub renew_deadline: Duration,
    /// How often the leader renews and the other replicas try to acquire (a duration such as
    /// "2s"); shorter than `renew_deadline`.
    #[serde(default = "default_retry_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_period: Duration,
    /// Kubeconfig file to reach the Kubernetes API. Default: `$KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster service account.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use. Default: the file's current context.
    #[serde(default)]
    pub context: Option<String>,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: default_lease_name(),
            namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
            kubeconfig: None,
            context: None,
        }
    }
}

/// The default [`LeaderElectionConfig::lease_name`]: "runscale".
fn default_lease_name() -> String {
    crate::leader::DEFAULT_LEASE_NAME.to_owned()
}

/// The default [`LeaderElectionConfig::lease_duration`]: 15 seconds.
fn default_lease_duration() -> Duration {
    crate::leader::DEFAULT_LEASE_DURATION
}

/// The default [`LeaderElectionConfig::renew_deadline`]: 10 seconds.
fn default_renew_deadline() -> Duration {
    crate::leader::DEFAULT_RENEW_DEADLINE
}

/// The default [`LeaderElectionConfig::retry_period`]: 2 seconds.
fn default_retry_period() -> Duration {
    crate::leader::DEFAULT_RETRY_PERIOD
}

/// One provider (CI system account).
///
/// Keys other than `name` and `type` are the settings of the type and are checked, unknown
/// keys included, against that type's settings when the configuration is validated.
#[derive(Clone, Debug, Deserialize)]
pub struct ProviderConfig {
    /// Unique name: pools refer to it, webhooks are received at `/webhooks/{name}`, and it is
    /// the `account` label of metrics.
    pub name: String,
    /// The provider type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The settings of that type.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// One backend.
///
/// Keys other than `name` and `type` are the settings of the type and are checked, unknown
/// keys included, against that type's settings when the configuration is validated.
#[derive(Clone, Debug, Deserialize)]
pub struct BackendConfig {
    /// Unique name: pools refer to it, and it is the `account` label of metrics.
    pub name: String,
    /// The backend type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The settings of that type.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// One pool: a selector on the CI side, a template on the backend, and the scaling limits.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name: lower-case letters, digits and '-', starting and ending with a letter or
    /// digit, at most 40 characters. It is part of every runner's name
    /// (`rs-{pool}-{10 characters}`) and of metric labels.
    pub name: String,
    /// Name of the provider (from `providers`) whose jobs this pool serves.
    pub provider: String,
    /// Name of the backend (from `backends`) this pool's runners run on.
    pub backend: String,
    /// Which jobs of the provider this pool serves; its shape depends on the provider's type.
    #[serde(default = "default_selector")]
    #[schemars(schema_with = "registry::selector_schema")]
    pub selector: Value,
    /// How the backend starts one instance; its shape depends on the backend's type.
    #[schemars(schema_with = "registry::template_schema")]
    pub template: Value,
    /// Idle runners kept warm on top of demand (runners, not instances).
    #[serde(default = "default_min_idle")]
    pub min_idle: u32,
    /// Most instances (booting and running) at any time; at least 1.
    pub max: u32,
    /// Most instances booting at once, which also bounds launches per pass; from 1 to `max`.
    /// Default: `max`.
    #[serde(default = "default_max_booting")]
    pub max_booting: Option<u32>,
    /// Most launches in any 60-second window; 0 means no limit.
    #[serde(default = "default_launches_per_minute")]
    pub launches_per_minute: u32,
    /// An instance whose runner has not registered this long after launch is terminated (a
    /// duration such as "5m").
    #[serde(default = "default_boot_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub boot_timeout: Duration,
    /// A runner beyond `min_idle` that has been idle this long is removed (a duration such as
    /// "5m").
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Instances older than this are retired once idle (a duration such as "12h"; must be
    /// longer than `boot_timeout`). Default: no limit.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_lifetime: Option<Duration>,
    /// After a launch, no idle runner is removed for this long, so a burst that is being
    /// served does not scale in and out again (a duration such as "2m"). Default 0s:
    /// `idle_timeout` already keeps a fresh runner for its whole timeout. At most
    /// `idle_timeout`: a longer delay would keep idle runners past their timeout after every
    /// launch; raise `idle_timeout` instead.
    #[serde(default = "default_scale_down_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_down_delay: Duration,
    /// Runners (job slots) hosted by one instance; at least 1.
    #[serde(default = "default_runners_per_instance")]
    pub runners_per_instance: u32,
    /// One job per runner: a runner unregisters itself after its job.
    #[serde(default = "default_ephemeral")]
    pub ephemeral: bool,
    /// Time-of-day overrides of `min_idle` and `max`. When several entries are active, the
    /// last one in the list wins.
    #[serde(default = "default_schedules")]
    pub schedules: Vec<ScheduleConfig>,
    /// Predictive warm capacity: `auto` (default), `off` (purely reactive), or
    /// `{target_wait: 10s, coverage: 0.8}`. runscale forecasts the pool's job arrivals over
    /// the next launch lead time (boot + registration, as measured) from the recent rate and
    /// from the same quarter hour on previous days, and keeps enough idle + booting runners
    /// that the arrivals a job could not wait `target_wait` for fit with probability
    /// `coverage`. `min_idle` stays a floor, `max` the ceiling.
    #[serde(default)]
    pub warm: WarmConfig,
    /// Instance reuse for ephemeral runners, e.g. `{max_uses: 10, max_age: 12h}`: an
    /// instance whose runner finished its job gets a fresh one-job registration instead of
    /// being terminated, when the pool wants a runner at that moment, so a job waits for
    /// registration instead of a boot. A fresh runner identity per job; the machine is not
    /// rebooted or cleaned in between, so use it only where jobs may share a machine one
    /// after another. Needs a backend that can hand runners to a running instance (`exec`
    /// with a `reuse` action). Default: off.
    #[serde(default = "default_reuse")]
    pub reuse: Option<ReuseConfig>,
}

/// Off by default.
fn default_reuse() -> Option<ReuseConfig> {
    None
}

/// A pool's `reuse` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReuseConfig {
    /// Most jobs one instance runs, the first included (2 to 1000). Default 10.
    #[serde(default = "default_max_uses")]
    pub max_uses: u32,
    /// An instance older than this is not reused but retired as without reuse (a duration
    /// such as "12h"; at most 7 days). Default 12h.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

fn default_max_uses() -> u32 {
    10
}

fn default_max_age() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl ReuseConfig {
    /// The policy's setting.
    pub fn to_reuse(self) -> runscale_core::Reuse {
        runscale_core::Reuse {
            max_uses: self.max_uses,
            max_age: self.max_age,
        }
    }
}

/// A pool's `warm` setting.
#[derive(Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum WarmConfig {
    /// `auto` or `off`.
    Mode(WarmMode),
    /// Explicit settings.
    Settings(WarmSettings),
}

/// Not set: `auto`.
impl Default for WarmConfig {
    fn default() -> Self {
        WarmConfig::Mode(WarmMode::Auto)
    }
}

impl<'de> Deserialize<'de> for WarmConfig {
    /// `auto`, `off` or a mapping, with an error that says so for anything else.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "auto" => Ok(WarmConfig::Mode(WarmMode::Auto)),
                "off" => Ok(WarmConfig::Mode(WarmMode::Off)),
                other => Err(D::Error::custom(format!(
                    "`{other}` is not a warm mode; expected auto, off or \
                     {{target_wait, coverage}}"
                ))),
            },
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(WarmConfig::Settings)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "expected auto, off or {target_wait, coverage}",
            )),
        }
    }
}

/// `warm: auto | off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WarmMode {
    /// `target_wait: 10s`, `coverage: 0.8`.
    Auto,
    /// No warm capacity beyond `min_idle`.
    Off,
}

/// `warm: {target_wait, coverage}`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WarmSettings {
    /// How long a job may wait for a runner (a duration such as "10s"; at most 1h).
    #[serde(default = "default_target_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub target_wait: Duration,
    /// The probability, above 0 and below 1, that the arrivals the spare runners are kept for
    /// fit in them. Default 0.8.
    #[serde(default = "default_coverage")]
    pub coverage: f64,
}

fn default_target_wait() -> Duration {
    runscale_core::Warm::AUTO.target_wait
}

fn default_coverage() -> f64 {
    runscale_core::Warm::AUTO.coverage
}

impl WarmConfig {
    /// The policy's setting: `None` for `off`.
    pub fn to_warm(self) -> Option<runscale_core::Warm> {
        match self {
            WarmConfig::Mode(WarmMode::Auto) => Some(runscale_core::Warm::AUTO),
            WarmConfig::Mode(WarmMode::Off) => None,
            WarmConfig::Settings(s) => Some(runscale_core::Warm {
                target_wait: s.target_wait,
                coverage: s.coverage,
            }),
        }
    }
}

/// The default [`PoolConfig::selector`]: an empty mapping.
fn default_selector() -> Value {
    Value::Object(Map::new())
}

/// The default [`PoolConfig::min_idle`]: 0 (scale to zero).
fn default_min_idle() -> u32 {
    0
}

/// The default [`PoolConfig::max_booting`]: unset, meaning `max`.
fn default_max_booting() -> Option<u32> {
    None
}

/// The default [`PoolConfig::launches_per_minute`]: 0 (no limit).
fn default_launches_per_minute() -> u32 {
    0
}

/// The default [`PoolConfig::boot_timeout`]: 5 minutes.
fn default_boot_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The default [`PoolConfig::idle_timeout`]: 5 minutes.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The default [`PoolConfig::max_lifetime`]: none.
fn default_max_lifetime() -> Option<Duration> {
    None
}

/// The default [`PoolConfig::scale_down_delay`]: 0 seconds.
fn default_scale_down_delay() -> Duration {
    Duration::ZERO
}

/// The default [`PoolConfig::runners_per_instance`]: 1.
fn default_runners_per_instance() -> u32 {
    1
}

/// The default [`PoolConfig::ephemeral`]: true.
fn default_ephemeral() -> bool {
    true
}

/// The default [`PoolConfig::schedules`]: none.
fn default_schedules() -> Vec<ScheduleConfig> {
    Vec::new()
}

/// A time-of-day override of a pool's `min_idle` and `max`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// When the entry is active: a five-field cron expression (minute hour day-of-month month
    /// day-of-week), e.g. "* 8-17 * * MON-FRI" for working hours. Active during every
    /// matching minute.
    pub cron: String,
    /// IANA time zone the expression is evaluated in, e.g. "Europe/Berlin".
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// `min_idle` while active; default: the pool's.
    #[serde(default = "default_override")]
    pub min_idle: Option<u32>,
    /// `max` while active (0 turns the pool off); default: the pool's.
    #[serde(default = "default_override")]
    pub max: Option<u32>,
}

/// The default [`ScheduleConfig::timezone`]: UTC.
fn default_timezone() -> String {
    "UTC".to_owned()
}

/// The default of [`ScheduleConfig::min_idle`] and [`ScheduleConfig::max`]: no override.
fn default_override() -> Option<u32> {
    None
}
