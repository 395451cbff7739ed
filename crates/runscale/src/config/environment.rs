//! Configurations made from the environment alone, so runscale can replace two seed systems
//! without a configuration file (`check`, `once` and `run` without `-c`):
//!
//! - **Simple-Lambda** (CircleCI's "Simple Runner AutoScaling in AWS" Lambda), when
//!   `SECRET_NAME` is set: `SECRET_NAME` and `SECRET_REGION` name a Secrets Manager secret
//!   holding a JSON object with `resource_class` and `circle_token` (or the variant's
//!   `resource_class_` and `circle_token_`), as `SecretString` or as base64 `SecretBinary`;
//!   `AUTO_SCALING_GROUP_NAME`, `AUTO_SCALING_GROUP_REGION` and `AUTO_SCALING_MAX` name the
//!   group and the cap. One pool: the resource class on that group, set up as the seed's
//!   README sets it up (a group created at 0/0/0 with scale-in protection, a launch template
//!   whose user data installs and starts a single-task runner named `$RUNNER_NAME-<time>` or a
//!   fixed name, which shuts its machine down when it exits):
//!   - like the Lambda, runscale keeps the group's `MinSize` at 0 and `MaxSize` at
//!     `AUTO_SCALING_MAX` (aws-asg's `max_size`; `autoscaling:UpdateAutoScalingGroup`, see
//!     `deploy/aws/iam-policy-simple-lambda.json`), and `check` says when it will change them;
//!   - the runners are named by the instances, so runscale cannot tell which runner runs on
//!     which instance (aws-asg's `runner_name: unknown`). It plans from the counts, as the
//!     Lambda did: the group's desired capacity goes to `min(unclaimed + running, max)` —
//!     raised by launching (each new instance protected from scale-in), lowered so that
//!     instances whose runner has finished and shut them down are not replaced, never below
//!     the members by removing one;
//!   - it terminates an instance only when the resource class has no unclaimed and no running
//!     task (read again right before), since any instance may hold the running one: a busy
//!     instance is never terminated or unprotected, whatever its age.
//! - **circleci-runner-autoscaler**, when `APP_CIRCLE_TOKEN` is set:
//!   `APP_CIRCLE_RESOURCE_NAMESPACE` (required) filters resource classes; pools are discovered
//!   from Auto Scaling groups tagged `resource-class: <namespace>/<name>` (every page) and,
//!   unless `APP_KUBERNETES_SCALER_ENABLED` is `false`, from the CronJobs of
//!   `APP_KUBERNETES_NAMESPACE` (default `circleci-runners`) labelled
//!   `resource-class-org: <namespace>` and `resource-class-name: <name>`; each runner of a
//!   CronJob's class is a Job made from its `jobTemplate`, as the seed made them. Unlike the
//!   seed, runscale scales in, caps Kubernetes pools (`RUNSCALE_POOL_MAX`, default 20, logged
//!   at start and shown by `runscale check`), counts pods that are still starting, and does
//!   not need the group to be named like the class. Pools on groups wait 15 minutes for their
//!   runner (`boot_timeout`; the seed waited as long).
//!
//! In the autoscaler mode, runners on Auto Scaling instances are named by their instance id
//! (that seed's convention) and pods by runscale (pod name = runner name); in both modes every
//! runner of the class is the pool's. The runner token stays where the seed kept it (the
//! launch template's user data, the CronJob's pod template). CircleCI is reached at
//! `RUNSCALE_CIRCLECI_URL` (default `https://runner.circleci.com`, for CircleCI server or a
//! proxy) with the v2 runner paths the seeds call; `RUNSCALE_LISTEN` sets the HTTP address.
//!
//! In both modes `RUNSCALE_BOOT_TIMEOUT` and `RUNSCALE_IDLE_TIMEOUT` set every pool's
//! timeouts and, in the autoscaler mode, `RUNSCALE_POOL_MAX` every pool's cap (each bounded;
//! errors name the variable); `RUNSCALE_LEADER_ELECT=true` (with
//! `RUNSCALE_LEADER_ELECT_LEASE_NAME`, `_NAMESPACE`, `_IDENTITY`) turns on leader election.
//!
//! Discovery runs at start-up and, in the autoscaler mode ([`Mode::rediscovers`]), again every
//! `RUNSCALE_DISCOVERY_INTERVAL` (default 5 s, as the seed) through [`Loader`]:
//! [`crate::rediscovery`] swaps the daemon to the new set of pools. A failed discovery keeps
//! the pools (a failed side keeps its last classes); a class that goes away is no longer
//! reconciled (the seed kept a worker for it forever).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Config;
use super::error::{ConfigError, FieldError};
use super::validate::{MAX_POOL_NAME, Validated};

/// The Lambda's secret name; its presence selects the simple-Lambda mode.
pub const LAMBDA_SECRET_NAME: &str = "SECRET_NAME";
/// circleci-runner-autoscaler's API token; its presence selects that mode.
pub const AUTOSCALER_TOKEN: &str = "APP_CIRCLE_TOKEN";

/// Default cap of a pool discovered from a CronJob (the seed had none): `RUNSCALE_POOL_MAX`.
pub const DEFAULT_KUBERNETES_MAX: u32 = 20;
/// Cap of a pool discovered from an Auto Scaling group: the group's MaxSize binds first.
const GROUP_MAX: u32 = 1000;
/// Per-pool cap: `RUNSCALE_POOL_MAX`, within [`POOL_MAX_BOUNDS`].
pub const POOL_MAX: &str = "RUNSCALE_POOL_MAX";
/// Bounds of `RUNSCALE_POOL_MAX`.
const POOL_MAX_BOUNDS: (u32, u32) = (1, GROUP_MAX);
/// How long an instance may take to get its runner online: `RUNSCALE_BOOT_TIMEOUT`.
pub const BOOT_TIMEOUT: &str = "RUNSCALE_BOOT_TIMEOUT";
/// How long a runner may sit idle before it is retired: `RUNSCALE_IDLE_TIMEOUT`.
pub const IDLE_TIMEOUT: &str = "RUNSCALE_IDLE_TIMEOUT";
/// Bounds of `RUNSCALE_BOOT_TIMEOUT`.
const BOOT_TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(2 * 3600));
/// Bounds of `RUNSCALE_IDLE_TIMEOUT`.
const IDLE_TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(24 * 3600));
/// The seed waited up to 15 minutes for an Auto Scaling group's runners to come up: the
/// default `boot_timeout` of a pool on a group in the autoscaler mode.
const GROUP_BOOT_TIMEOUT: &str = "15m";
/// How often the autoscaler mode discovers its pools again: `RUNSCALE_DISCOVERY_INTERVAL`.
pub const DISCOVERY_INTERVAL: &str = "RUNSCALE_DISCOVERY_INTERVAL";
/// The seed's discovery period.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds of `RUNSCALE_DISCOVERY_INTERVAL`.
const DISCOVERY_INTERVAL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Leader election in the environment modes: `RUNSCALE_LEADER_ELECT` (`true`/`false`; the
/// variable `run --leader-elect` reads), with the Lease's name, namespace and this replica's
/// identity in the three below.
pub const LEADER_ELECT: &str = "RUNSCALE_LEADER_ELECT";
/// The Lease's name (default `runscale`).
pub const LEADER_ELECT_LEASE_NAME: &str = "RUNSCALE_LEADER_ELECT_LEASE_NAME";
/// The Lease's namespace (default: the Kubernetes client's).
pub const LEADER_ELECT_NAMESPACE: &str = "RUNSCALE_LEADER_ELECT_NAMESPACE";
/// This replica's identity (default `{hostname}_{pid}`).
pub const LEADER_ELECT_IDENTITY: &str = "RUNSCALE_LEADER_ELECT_IDENTITY";

/// Which seed system the environment configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CircleCI's simple-Lambda autoscaler.
    SimpleLambda,
    /// vela-games/circleci-runner-autoscaler.
    CircleciAutoscaler,
}

impl Mode {
    /// The mode the environment selects, if any (the simple-Lambda mode wins when both are
    /// set).
    pub fn detect(lookup: &impl Fn(&str) -> Option<String>) -> Option<Mode> {
        if lookup(LAMBDA_SECRET_NAME).is_some() {
            Some(Mode::SimpleLambda)
        } else if lookup(AUTOSCALER_TOKEN).is_some() {
            Some(Mode::CircleciAutoscaler)
        } else {
            None
        }
    }

    /// Whether the mode's pools come from a discovery that [`crate::daemon`] repeats every
    /// [`discovery_interval`] (the set of pools may change while runscale runs).
    pub fn rediscovers(self) -> bool {
        match self {
            Mode::SimpleLambda => false,
            Mode::CircleciAutoscaler => true,
        }
    }

    /// How errors name the configuration's origin.
    pub fn origin(self) -> &'static Path {
        Path::new(match self {
            Mode::SimpleLambda => "(environment: simple-Lambda mode)",
            Mode::CircleciAutoscaler => "(environment: circleci-runner-autoscaler mode)",
        })
    }
}

/// What the environment-only configuration is built from, once read and discovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// (resource class, Auto Scaling group name).
    pub groups: Vec<(String, String)>,
    /// (resource class, CronJob name).
    pub cron_jobs: Vec<(String, String)>,
}

fn invalid(mode: Mode, errors: Vec<FieldError>) -> ConfigError {
    ConfigError::Invalid {
        path: mode.origin().to_owned(),
        errors,
    }
}

fn required(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
    names: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match lookup(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => values.push(v.trim().to_owned()),
            None => errors.push(FieldError::new(*name, "must be set and not empty")),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(invalid(mode, errors))
    }
}

fn number(mode: Mode, name: &str, text: &str) -> Result<u32, ConfigError> {
    text.parse::<u32>().map_err(|_| {
        invalid(
            mode,
            vec![FieldError::new(
                name,
                format!("{text:?} is not a whole number"),
            )],
        )
    })
}

fn one(mode: Mode, name: &str, message: String) -> ConfigError {
    invalid(mode, vec![FieldError::new(name, message)])
}

/// A whole number from `name`, within `bounds`; `None` when unset or empty.
fn bounded_number(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    (low, high): (u32, u32),
) -> Result<Option<u32>, ConfigError> {
    let Some(text) = lookup(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let n = number(mode, name, text.trim())?;
    if !(low..=high).contains(&n) {
        return Err(one(
            mode,
            name,
            format!("is {n}; must be between {low} and {high}"),
        ));
    }
    Ok(Some(n))
}

/// A duration (`90s`, `15m`) from `name`, within `bounds`; `None` when unset or empty.
fn bounded_duration(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    (low, high): (Duration, Duration),
) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = lookup(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        one(
            mode,
            name,
            format!(
                "{:?} is not a duration such as 90s or 15m: {e}",
                text.trim()
            ),
        )
    })?;
    if d < low || d > high {
        return Err(one(
            mode,
            name,
            format!(
                "is {}; must be between {} and {}",
                humantime::format_duration(d),
                humantime::format_duration(low),
                humantime::format_duration(high)
            ),
        ));
    }
    Ok(Some(d))
}

/// `true`/`false` (also `1`/`0`, `t`/`f`, `yes`/`no`) from `name`; `None` when unset or empty.
fn boolean(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<bool>, ConfigError> {
    let Some(text) = lookup(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Ok(Some(true)),
        "false" | "0" | "f" | "no" => Ok(Some(false)),
        t => Err(one(mode, name, format!("{t:?} is neither true nor false"))),
    }
}

/// The pool settings the environment overrides: `boot_timeout` (`RUNSCALE_BOOT_TIMEOUT`) and
/// `idle_timeout` (`RUNSCALE_IDLE_TIMEOUT`), as configuration keys.
fn timeouts(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, ConfigError> {
    let mut keys = Map::new();
    for (name, key, bounds) in [
        (BOOT_TIMEOUT, "boot_timeout", BOOT_TIMEOUT_BOUNDS),
        (IDLE_TIMEOUT, "idle_timeout", IDLE_TIMEOUT_BOUNDS),
    ] {
        if let Some(d) = bounded_duration(mode, lookup, name, bounds)? {
            keys.insert(key.into(), json!(humantime::format_duration(d).to_string()));
        }
    }
    Ok(keys)
}

/// How often the autoscaler mode discovers its pools again (`RUNSCALE_DISCOVERY_INTERVAL`,
/// default 5 s as the seed, between 1 s and 1 h).
pub fn discovery_interval(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Duration, ConfigError> {
    Ok(
        bounded_duration(mode, lookup, DISCOVERY_INTERVAL, DISCOVERY_INTERVAL_BOUNDS)?
            .unwrap_or(DEFAULT_DISCOVERY_INTERVAL),
    )
}

/// The `leader_election` section from `RUNSCALE_LEADER_ELECT*`, if election is asked for.
fn leader_election(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Value>, ConfigError> {
    if boolean(mode, lookup, LEADER_ELECT)? != Some(true) {
        return Ok(None);
    }
    let mut section = json!({"enabled": true});
    for (name, key) in [
        (LEADER_ELECT_LEASE_NAME, "lease_name"),
        (LEADER_ELECT_NAMESPACE, "namespace"),
        (LEADER_ELECT_IDENTITY, "identity"),
    ] {
        if let Some(v) = lookup(name).filter(|v| !v.trim().is_empty()) {
            section[key] = json!(v.trim());
        }
    }
    Ok(Some(section))
}

/// A pool name from a resource class `namespace/name`: the name, lower case, anything but
/// letters and digits as `-`, at most [`MAX_POOL_NAME`] characters.
pub fn pool_name(class: &str) -> String {
    let short = class.rsplit('/').next().unwrap_or(class);
    let mut name: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(MAX_POOL_NAME);
    name.trim_matches('-').to_owned()
}

/// `listen`, `interval` and `leader_election` from `RUNSCALE_LISTEN`, `RUNSCALE_INTERVAL`
/// (defaulting to `interval`) and `RUNSCALE_LEADER_ELECT*`.
fn common(
    mode: Mode,
    lookup: &impl Fn(&str) -> Option<String>,
    interval: Option<&str>,
) -> Result<Map<String, Value>, ConfigError> {
    let mut top = Map::new();
    if let Some(section) = leader_election(mode, lookup)? {
        top.insert("leader_election".into(), section);
    }
    if let Some(listen) = lookup("RUNSCALE_LISTEN") {
        top.insert("listen".into(), json!(listen));
    }
    if let Some(interval) = lookup("RUNSCALE_INTERVAL").or(interval.map(str::to_owned)) {
        top.insert("interval".into(), json!(interval));
    }
    Ok(top)
}

fn circleci_provider(lookup: &impl Fn(&str) -> Option<String>, token: Value) -> Value {
    json!({
        "name": "circleci",
        "type": "circleci",
        "api_url": lookup("RUNSCALE_CIRCLECI_URL")
            .unwrap_or_else(|| "https://runner.circleci.com".to_owned()),
        "api_version": "v2",
        "token": token,
    })
}

/// Sets `keys` on the JSON object `pool`.
fn extend(pool: &mut Value, keys: &Map<String, Value>) {
    if let Some(object) = pool.as_object_mut() {
        object.extend(keys.clone());
    }
}

/// The secret of the simple-Lambda mode: `(name, region)`.
pub fn lambda_secret(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(String, String), ConfigError> {
    let v = required(
        Mode::SimpleLambda,
        lookup,
        &[LAMBDA_SECRET_NAME, "SECRET_REGION"],
    )?;
    Ok((v[0].clone(), v[1].clone()))
}

/// From the secret's JSON text: the resource class and the key holding the API token
/// (`resource_class`/`circle_token`, or the variant's names with a trailing `_`). Errors name
/// the keys, never a value.
pub fn lambda_secret_fields(text: &str) -> Result<(String, &'static str), ConfigError> {
    let problem = |message: String| {
        invalid(
            Mode::SimpleLambda,
            vec![FieldError::new(LAMBDA_SECRET_NAME, message)],
        )
    };
    let object: Map<String, Value> = serde_json::from_str(text)
        .map_err(|_| problem("the secret is not a JSON object".to_owned()))?;
    let class = ["resource_class", "resource_class_"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))
        .ok_or_else(|| problem("the secret has no string key resource_class".to_owned()))?;
    let token_key = ["circle_token", "circle_token_"]
        .into_iter()
        .find(|k| object.get(*k).is_some_and(Value::is_string))
        .ok_or_else(|| problem("the secret has no string key circle_token".to_owned()))?;
    Ok((class.to_owned(), token_key))
}

/// The simple-Lambda configuration, with the resource class and token key read from the
/// secret.
pub fn simple_lambda(
    lookup: &impl Fn(&str) -> Option<String>,
    class: &str,
    token_key: &str,
    adjust: &dyn Fn(&mut Config),
) -> Result<Validated, ConfigError> {
    let mode = Mode::SimpleLambda;
    let (secret, region) = lambda_secret(lookup)?;
    let v = required(
        mode,
        lookup,
        &[
            "AUTO_SCALING_GROUP_NAME",
            "AUTO_SCALING_GROUP_REGION",
            "AUTO_SCALING_MAX",
        ],
    )?;
    let max = number(mode, "AUTO_SCALING_MAX", &v[2])?;
    if lookup(POOL_MAX).is_some() {
        return Err(one(
            mode,
            POOL_MAX,
            "does not apply in this mode: AUTO_SCALING_MAX is the pool's cap".to_owned(),
        ));
    }
    let timeouts = timeouts(mode, lookup)?;
    let mut top = common(mode, lookup, None)?;
    top.insert(
        "providers".into(),
        json!([circleci_provider(
            lookup,
            json!({"aws_secrets_manager": {"name": secret, "key": token_key, "region": region}}),
        )]),
    );
    top.insert(
        "backends".into(),
        json!([{"name": "asg", "type": "aws-asg", "region": v[1]}]),
    );
    let mut pool = json!({
        "name": pool_name(class),
        "provider": "circleci",
        "backend": "asg",
        "max": max,
        "selector": {"resource_class": class, "runner_names": "any"},
        "template": {"group": v[0], "runner_name": "unknown", "max_size": max},
    });
    extend(&mut pool, &timeouts);
    top.insert("pools".into(), json!([pool]));
    super::load_value_with(Value::Object(top), mode.origin(), adjust)
}

/// The settings of the circleci-runner-autoscaler mode: (resource namespace, Kubernetes
/// scaler enabled, Kubernetes namespace).
pub fn autoscaler_settings(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(String, bool, String), ConfigError> {
    let mode = Mode::CircleciAutoscaler;
    let v = required(
        mode,
        lookup,
        &[AUTOSCALER_TOKEN, "APP_CIRCLE_RESOURCE_NAMESPACE"],
    )?;
    let enabled = match lookup("APP_KUBERNETES_SCALER_ENABLED")
        .as_deref()
        .map(str::trim)
    {
        None | Some("") => true,
        Some(t) => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => true,
            "false" | "0" | "f" => false,
            _ => {
                return Err(invalid(
                    mode,
                    vec![FieldError::new(
                        "APP_KUBERNETES_SCALER_ENABLED",
                        format!("{t:?} is neither true nor false"),
                    )],
                ));
            }
        },
    };
    let namespace = lookup("APP_KUBERNETES_NAMESPACE")
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "circleci-runners".to_owned());
    Ok((v[1].clone(), enabled, namespace))
}

/// The circleci-runner-autoscaler configuration for what discovery found: one pool per
/// resource class, on its group or its CronJob.
pub fn circleci_autoscaler(
    lookup: &impl Fn(&str) -> Option<String>,
    found: &Discovered,
    adjust: &dyn Fn(&mut Config),
) -> Result<Validated, ConfigError> {
    let mode = Mode::CircleciAutoscaler;
    let (resource_namespace, _, kube_namespace) = autoscaler_settings(lookup)?;
    let max = bounded_number(mode, lookup, POOL_MAX, POOL_MAX_BOUNDS)?;
    let kube_max = max.unwrap_or(DEFAULT_KUBERNETES_MAX);
    let timeouts = timeouts(mode, lookup)?;
    if found.groups.is_empty() && found.cron_jobs.is_empty() {
        return Err(invalid(
            mode,
            vec![FieldError::new(
                "APP_CIRCLE_RESOURCE_NAMESPACE",
                format!(
                    "no resource class of namespace {resource_namespace} found: no Auto Scaling \
                     group tagged resource-class={resource_namespace}/<name> and no CronJob in \
                     namespace {kube_namespace} labelled resource-class-org={resource_namespace}"
                ),
            )],
        ));
    }
    let mut errors = Vec::new();
    for (class, group) in &found.groups {
        if let Some((_, cj)) = found.cron_jobs.iter().find(|(c, _)| c == class) {
            errors.push(FieldError::new(
                "APP_CIRCLE_RESOURCE_NAMESPACE",
                format!(
                    "resource class {class} is both Auto Scaling group {group} and CronJob \
                     {cj}; one resource class can have one home"
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(invalid(mode, errors));
    }
    let mut pools = Vec::new();
    let mut backends = Vec::new();
    if !found.groups.is_empty() {
        let mut backend = json!({"name": "asg", "type": "aws-asg"});
        if let Some(region) = lookup("AWS_REGION") {
            backend["region"] = json!(region);
        }
        backends.push(backend);
    }
    for (class, group) in &found.groups {
        let mut pool = json!({
            "name": pool_name(class),
            "provider": "circleci",
            "backend": "asg",
            "max": max.unwrap_or(GROUP_MAX),
            "boot_timeout": GROUP_BOOT_TIMEOUT,
            "selector": {"resource_class": class, "runner_names": "any"},
            "template": {"group": group, "runner_name": "instance-id"},
        });
        extend(&mut pool, &timeouts);
        pools.push(pool);
    }
    if !found.cron_jobs.is_empty() {
        backends.push(json!({
            "name": "kubernetes",
            "type": "kubernetes",
            "namespace": kube_namespace,
        }));
    }
    for (class, cron_job) in &found.cron_jobs {
        let mut pool = json!({
            "name": pool_name(class),
            "provider": "circleci",
            "backend": "kubernetes",
            "max": kube_max,
            "selector": {"resource_class": class, "agent_env": "launch-agent"},
            "template": {"cron_job": {"name": cron_job}},
        });
        extend(&mut pool, &timeouts);
        pools.push(pool);
    }
    // The seed polled every 5 s.
    let mut top = common(mode, lookup, Some("5s"))?;
    top.insert(
        "providers".into(),
        json!([circleci_provider(lookup, json!({"env": AUTOSCALER_TOKEN}))]),
    );
    top.insert("backends".into(), Value::Array(backends));
    top.insert("pools".into(), Value::Array(pools));
    super::load_value_with(Value::Object(top), mode.origin(), adjust)
}

/// Reads what `mode` needs from outside — the Lambda's secret, or the groups and CronJobs of
/// the autoscaler mode — and builds the configuration from the process environment.
pub async fn load(mode: Mode) -> anyhow::Result<Validated> {
    Loader::new(mode, Arc::new(|_| {})).load().await
}

/// Adjusts a configuration before validation (command-line flags over the environment).
pub type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Builds an environment mode's configuration, and builds it again for re-discovery
/// ([`crate::daemon`] calls [`Loader::load`] every [`discovery_interval`] when
/// [`Mode::rediscovers`]). It remembers what the last discovery found, so a read that fails
/// keeps the pools it would have found: in the autoscaler mode a failed side (groups or
/// CronJobs) keeps its last resource classes, and both failing is an error (the caller keeps
/// its pools).
pub struct Loader {
    mode: Mode,
    adjust: Adjust,
    last: Option<Discovered>,
}

impl Loader {
    /// A loader for `mode`, applying `adjust` to every configuration it builds.
    pub fn new(mode: Mode, adjust: Adjust) -> Self {
        Self {
            mode,
            adjust,
            last: None,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Reads and discovers what the mode needs, from the process environment, and builds the
    /// configuration. The first load logs at `info`, later ones at `debug`.
    pub async fn load(&mut self) -> anyhow::Result<Validated> {
        let lookup = |name: &str| std::env::var(name).ok();
        let adjust = self.adjust.clone();
        match self.mode {
            Mode::SimpleLambda => {
                let text = lambda_secret_text(&lookup).await?;
                let (class, token_key) = lambda_secret_fields(&text)?;
                Ok(simple_lambda(&lookup, &class, token_key, &*adjust)?)
            }
            Mode::CircleciAutoscaler => {
                let first = self.last.is_none();
                let found = self.discover(&lookup).await?;
                let config = circleci_autoscaler(&lookup, &found, &*adjust)?;
                if first {
                    let max = bounded_number(self.mode, &lookup, POOL_MAX, POOL_MAX_BOUNDS)
                        .ok()
                        .flatten();
                    tracing::info!(
                        groups = found.groups.len(),
                        cron_jobs = found.cron_jobs.len(),
                        kubernetes_pool_max = max.unwrap_or(DEFAULT_KUBERNETES_MAX),
                        kubernetes_pool_max_from = if max.is_some() { POOL_MAX } else { "default" },
                        "circleci-runner-autoscaler mode: resource classes discovered (pools on \
                         CronJobs are capped at kubernetes_pool_max; set RUNSCALE_POOL_MAX to change it)"
                    );
                } else {
                    tracing::debug!(
                        groups = found.groups.len(),
                        cron_jobs = found.cron_jobs.len(),
                        "circleci-runner-autoscaler mode: resource classes discovered again"
                    );
                }
                self.last = Some(found);
                Ok(config)
            }
        }
    }

    /// The autoscaler mode's groups and CronJobs. Like the seed, one side failing does not
    /// stop the other (a cluster without AWS credentials, an AWS account without a
    /// cluster): the failed side keeps what it found last (nothing at the first discovery);
    /// both failing is an error.
    async fn discover(
        &self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Discovered> {
        let (namespace, kubernetes, kube_namespace) = autoscaler_settings(lookup)?;
        let groups = discover_groups(&namespace).await;
        let cron_jobs = if kubernetes {
            discover_cron_jobs(&namespace, &kube_namespace).await
        } else {
            Ok(Vec::new())
        };
        let last = self.last.clone().unwrap_or_default();
        Ok(match (groups, cron_jobs) {
            (Err(g), Err(k)) => anyhow::bail!("{g}; {k}"),
            (Ok(groups), Ok(cron_jobs)) => Discovered { groups, cron_jobs },
            (Ok(groups), Err(e)) => {
                tracing::warn!(error = %e, kept = last.cron_jobs.len(), "CronJob discovery failed: keeping the CronJobs found before");
                Discovered {
                    groups,
                    cron_jobs: last.cron_jobs,
                }
            }
            (Err(e), Ok(cron_jobs)) => {
                tracing::warn!(error = %e, kept = last.groups.len(), "Auto Scaling group discovery failed: keeping the groups found before");
                Discovered {
                    groups: last.groups,
                    cron_jobs,
                }
            }
        })
    }
}

#[cfg(feature = "secrets-aws")]
async fn lambda_secret_text(lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    use runscale_core::secret::{AwsSecret, SecretRef};
    use secrecy::ExposeSecret;
    let (name, region) = lambda_secret(lookup)?;
    let reference = SecretRef::AwsSecretsManager(Box::new(AwsSecret {
        name: name.clone(),
        key: None,
        region: Some(region),
    }));
    super::secrets_aws::fetch(&[super::secrets_aws::RemoteSecret {
        path: LAMBDA_SECRET_NAME.to_owned(),
        reference: reference.clone(),
    }])
    .await;
    let text = reference
        .resolve()
        .map_err(|e| anyhow::anyhow!("{LAMBDA_SECRET_NAME}: secret {name:?}: {e}"))?;
    Ok(text.expose_secret().to_owned())
}

#[cfg(not(feature = "secrets-aws"))]
async fn lambda_secret_text(_: &impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    anyhow::bail!(
        "the simple-Lambda mode needs AWS Secrets Manager: build with feature secrets-aws"
    )
}

#[cfg(feature = "backend-aws-asg")]
async fn discover_groups(namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    use runscale_backends::aws_asg::{AwsAsg, Config};
    // The SDK's own chain gives the region (AWS_REGION, a profile, instance metadata).
    AwsAsg::discover_resource_classes(&Config::default(), namespace)
        .await
        .map_err(|e| anyhow::anyhow!("discovering Auto Scaling groups: {e}"))
}

#[cfg(not(feature = "backend-aws-asg"))]
async fn discover_groups(_: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(Vec::new())
}

#[cfg(feature = "backend-kubernetes")]
async fn discover_cron_jobs(org: &str, namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    use runscale_backends::kubernetes::{Config, Kubernetes};
    let config = Config::new(None, Some(namespace.to_owned()));
    Kubernetes::discover_cron_jobs(&config, org)
        .await
        .map_err(|e| anyhow::anyhow!("discovering CronJobs: {e}"))
}

#[cfg(not(feature = "backend-kubernetes"))]
async fn discover_cron_jobs(_: &str, _: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn messages(e: ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn the_mode_follows_the_variables_present() {
        assert_eq!(Mode::detect(&env(&[])), None);
        assert_eq!(
            Mode::detect(&env(&[("APP_CIRCLE_TOKEN", "t")])),
            Some(Mode::CircleciAutoscaler)
        );
        assert_eq!(
            Mode::detect(&env(&[("APP_CIRCLE_TOKEN", "t"), ("SECRET_NAME", "s")])),
            Some(Mode::SimpleLambda)
        );
    }

    #[test]
    fn pool_names_come_from_the_class_name() {
        assert_eq!(pool_name("acme/Linux_Large"), "linux-large");
        assert_eq!(pool_name("acme/x.y"), "x-y");
        assert!(pool_name(&format!("acme/{}", "a".repeat(90))).len() <= MAX_POOL_NAME);
    }

    #[test]
    fn the_secret_must_hold_a_class_and_a_token_and_errors_never_quote_it() {
        assert_eq!(
            lambda_secret_fields(r#"{"resource_class": "acme/l", "circle_token": "x"}"#)
                .expect("fields"),
            ("acme/l".to_owned(), "circle_token")
        );
        assert_eq!(
            lambda_secret_fields(r#"{"resource_class_": "acme/l", "circle_token_": "x"}"#)
                .expect("variant fields"),
            ("acme/l".to_owned(), "circle_token_")
        );
        let e = messages(
            lambda_secret_fields(r#"{"resource_class": "acme/l", "token": "sekrit"}"#)
                .expect_err("no token"),
        );
        assert!(e.contains("circle_token") && !e.contains("sekrit"), "{e}");
        let e = messages(lambda_secret_fields("sekrit-not-json").expect_err("not JSON"));
        assert!(
            e.contains("not a JSON object") && !e.contains("sekrit"),
            "{e}"
        );
    }

    #[test]
    fn lambda_variables_are_required_and_the_cap_is_a_number() {
        let e = messages(
            simple_lambda(
                &env(&[("SECRET_NAME", "s"), ("SECRET_REGION", "eu-west-1")]),
                "acme/l",
                "circle_token",
                &|_| {},
            )
            .expect_err("missing"),
        );
        for name in [
            "AUTO_SCALING_GROUP_NAME",
            "AUTO_SCALING_GROUP_REGION",
            "AUTO_SCALING_MAX",
        ] {
            assert!(e.contains(name), "{e}");
        }
        let e = messages(
            simple_lambda(
                &env(&[
                    ("SECRET_NAME", "s"),
                    ("SECRET_REGION", "eu-west-1"),
                    ("AUTO_SCALING_GROUP_NAME", "g"),
                    ("AUTO_SCALING_GROUP_REGION", "eu-west-1"),
                    ("AUTO_SCALING_MAX", "ten"),
                ]),
                "acme/l",
                "circle_token",
                &|_| {},
            )
            .expect_err("not a number"),
        );
        assert!(
            e.contains("AUTO_SCALING_MAX") && e.contains("\"ten\""),
            "{e}"
        );
    }

    #[cfg(all(
        feature = "secrets-aws",
        feature = "provider-circleci",
        feature = "backend-aws-asg"
    ))]
    #[test]
    fn the_lambda_pool_sizes_the_group_and_plans_from_counts() {
        let config = simple_lambda(
            &env(&[
                ("SECRET_NAME", "s"),
                ("SECRET_REGION", "eu-west-1"),
                ("AUTO_SCALING_GROUP_NAME", "cci-runner-auto-scaling-group"),
                ("AUTO_SCALING_GROUP_REGION", "eu-west-1"),
                ("AUTO_SCALING_MAX", "7"),
            ]),
            "acme/lambda",
            "circle_token",
            &|_| {},
        )
        .expect("valid");
        let [pool] = config.pools.as_slice() else {
            panic!("one pool: {:?}", config.pools);
        };
        assert_eq!(pool.spec.max, 7);
        assert!(
            pool.spec.runners_unattributed,
            "runners are named by the instances"
        );
        let Some(t) = pool
            .template
            .get::<runscale_backends::aws_asg::PoolTemplate>()
        else {
            panic!("an aws-asg template: {:?}", pool.template);
        };
        assert_eq!(t.group.as_deref(), Some("cci-runner-auto-scaling-group"));
        assert_eq!(t.max_size, Some(7), "MaxSize follows AUTO_SCALING_MAX");
    }

    #[test]
    fn autoscaler_needs_a_namespace_and_finds_one_home_per_class() {
        let e = messages(
            circleci_autoscaler(
                &env(&[("APP_CIRCLE_TOKEN", "t")]),
                &Discovered::default(),
                &|_| {},
            )
            .expect_err("no namespace"),
        );
        assert!(e.contains("APP_CIRCLE_RESOURCE_NAMESPACE"), "{e}");
        let vars = env(&[
            ("APP_CIRCLE_TOKEN", "t"),
            ("APP_CIRCLE_RESOURCE_NAMESPACE", "acme"),
        ]);
        let e = messages(
            circleci_autoscaler(&vars, &Discovered::default(), &|_| {}).expect_err("nothing found"),
        );
        assert!(e.contains("no resource class of namespace acme"), "{e}");
        let both = Discovered {
            groups: vec![("acme/l".into(), "g".into())],
            cron_jobs: vec![("acme/l".into(), "cj".into())],
        };
        let e = messages(circleci_autoscaler(&vars, &both, &|_| {}).expect_err("two homes"));
        assert!(
            e.contains("both Auto Scaling group g and CronJob cj"),
            "{e}"
        );
        let e = messages(
            autoscaler_settings(&env(&[
                ("APP_CIRCLE_TOKEN", "t"),
                ("APP_CIRCLE_RESOURCE_NAMESPACE", "acme"),
                ("APP_KUBERNETES_SCALER_ENABLED", "maybe"),
            ]))
            .expect_err("not a boolean"),
        );
        assert!(e.contains("APP_KUBERNETES_SCALER_ENABLED"), "{e}");
    }

    #[cfg(all(
        feature = "provider-circleci",
        feature = "backend-aws-asg",
        feature = "backend-kubernetes"
    ))]
    #[test]
    fn autoscaler_caps_and_timeouts_default_and_follow_the_environment() {
        let found = Discovered {
            groups: vec![("acme/large".into(), "asg-large".into())],
            cron_jobs: vec![("acme/small".into(), "small-runner".into())],
        };
        let base = [
            ("APP_CIRCLE_TOKEN", "t"),
            ("APP_CIRCLE_RESOURCE_NAMESPACE", "acme"),
        ];
        let spec = |config: &Validated, name: &str| {
            config
                .pools
                .iter()
                .find(|p| p.spec.name.as_str() == name)
                .map(|p| p.spec.clone())
                .expect("pool")
        };
        let config = circleci_autoscaler(&env(&base), &found, &|_| {}).expect("valid");
        let (large, small) = (spec(&config, "large"), spec(&config, "small"));
        assert_eq!(small.max, DEFAULT_KUBERNETES_MAX);
        assert_eq!(large.max, GROUP_MAX, "the group's MaxSize binds");
        assert_eq!(
            large.boot_timeout,
            Duration::from_secs(15 * 60),
            "the seed's wait"
        );
        assert!(config.leader_election.is_none());

        let mut vars = base.to_vec();
        vars.extend([
            (POOL_MAX, "7"),
            (BOOT_TIMEOUT, "3m"),
            (IDLE_TIMEOUT, "90s"),
            (LEADER_ELECT, "true"),
            (LEADER_ELECT_LEASE_NAME, "vela"),
            (LEADER_ELECT_NAMESPACE, "ci"),
        ]);
        let config = circleci_autoscaler(&env(&vars), &found, &|_| {}).expect("valid");
        for name in ["large", "small"] {
            let s = spec(&config, name);
            assert_eq!(s.max, 7, "{name}");
            assert_eq!(s.boot_timeout, Duration::from_secs(180), "{name}");
            assert_eq!(s.idle_timeout, Duration::from_secs(90), "{name}");
        }
        let leader = config.leader_election.as_ref().expect("leader election");
        assert_eq!(leader.lease_name, "vela");
        assert_eq!(leader.namespace.as_deref(), Some("ci"));

        for (name, value, wanted) in [
            (POOL_MAX, "0", "between 1 and 1000"),
            (POOL_MAX, "many", "not a whole number"),
            (BOOT_TIMEOUT, "1s", "between 10s and 2h"),
            (IDLE_TIMEOUT, "soon", "not a duration"),
            (LEADER_ELECT, "maybe", "neither true nor false"),
        ] {
            let mut vars = base.to_vec();
            vars.push((name, value));
            let e = messages(
                circleci_autoscaler(&env(&vars), &found, &|_| {}).expect_err("out of bounds"),
            );
            assert!(
                e.contains(name) && e.contains(wanted),
                "{name}={value}: {e}"
            );
        }
        let mode = Mode::CircleciAutoscaler;
        assert_eq!(
            discovery_interval(mode, &env(&base)).expect("default"),
            DEFAULT_DISCOVERY_INTERVAL
        );
        assert_eq!(
            discovery_interval(mode, &env(&[(DISCOVERY_INTERVAL, "30s")])).expect("30s"),
            Duration::from_secs(30)
        );
        let e = messages(
            discovery_interval(mode, &env(&[(DISCOVERY_INTERVAL, "2h")])).expect_err("too long"),
        );
        assert!(e.contains(DISCOVERY_INTERVAL), "{e}");
    }

    #[cfg(all(
        feature = "secrets-aws",
        feature = "provider-circleci",
        feature = "backend-aws-asg"
    ))]
    #[test]
    fn the_lambda_mode_takes_timeouts_and_refuses_a_second_cap() {
        let mut vars = vec![
            ("SECRET_NAME", "s"),
            ("SECRET_REGION", "eu-west-1"),
            ("AUTO_SCALING_GROUP_NAME", "g"),
            ("AUTO_SCALING_GROUP_REGION", "eu-west-1"),
            ("AUTO_SCALING_MAX", "4"),
            (BOOT_TIMEOUT, "15m"),
        ];
        let config = simple_lambda(&env(&vars), "acme/l", "circle_token", &|_| {}).expect("valid");
        assert_eq!(config.pools[0].spec.boot_timeout, Duration::from_secs(900));
        vars.push((POOL_MAX, "3"));
        let e = messages(
            simple_lambda(&env(&vars), "acme/l", "circle_token", &|_| {}).expect_err("two caps"),
        );
        assert!(
            e.contains(POOL_MAX) && e.contains("AUTO_SCALING_MAX"),
            "{e}"
        );
    }
}
