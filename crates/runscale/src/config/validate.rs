//! The pure check of a parsed [`Config`]: every rule, every error collected, each naming its
//! field path. No file, network or environment access happens here (secrets are only read by
//! [`build`](super::build)).
//!
//! On success the result is a [`Validated`] configuration: adapter settings, selectors and
//! templates parsed into their types, and one [`PoolSpec`] per pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use runscale_core::reconciler::Options;
use runscale_core::{PoolId, PoolSpec, Schedule, ScheduleError};

use super::error::FieldError;
use super::model::{Config, LeaderElectionConfig, PoolConfig, ScheduleConfig};
use super::registry::{
    self, BackendSettings, ProviderSettings, SelectorSettings, TemplateSettings,
};
use super::secrets_aws::{self, RemoteSecret};
use super::source::{join_index, join_key};
use crate::leader;

/// Longest pool name: runner names are `rs-{pool}-{10 characters}` and must stay short for
/// CI systems that limit them.
pub const MAX_POOL_NAME: usize = 40;
/// Longest provider or backend name.
pub const MAX_ADAPTER_NAME: usize = 63;

/// A provider with its parsed settings.
#[derive(Clone, Debug)]
pub struct ProviderEntry {
    /// Configured name.
    pub name: String,
    /// Parsed settings.
    pub settings: ProviderSettings,
}

/// A backend with its parsed settings.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    /// Configured name.
    pub name: String,
    /// Parsed settings.
    pub settings: BackendSettings,
}

/// A pool, ready to be bound to its adapters.
#[derive(Clone, Debug)]
pub struct ValidPool {
    /// Limits, timeouts, schedules and template hash.
    pub spec: PoolSpec,
    /// Index into [`Validated::providers`].
    pub provider: usize,
    /// Index into [`Validated::backends`].
    pub backend: usize,
    /// The selector, parsed for the provider's type.
    pub selector: SelectorSettings,
    /// The template, parsed for the backend's type.
    pub template: TemplateSettings,
}

/// A configuration that passed [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Validated {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// Reconciler options (`dry_run` false; backoff at its defaults).
    pub options: Options,
    /// Providers, in file order.
    pub providers: Vec<ProviderEntry>,
    /// Backends, in file order.
    pub backends: Vec<BackendEntry>,
    /// Pools, in file order.
    pub pools: Vec<ValidPool>,
    /// Leader election, when enabled.
    pub leader_election: Option<leader::Settings>,
    /// Secrets kept in remote stores, to fetch before building.
    pub remote_secrets: Vec<RemoteSecret>,
}

/// Why `name` is not a valid DNS-label-style name of at most `max` characters, if it is not.
pub fn name_problem(name: &str, max: usize) -> Option<String> {
    const RULE: &str = "use lower-case letters, digits and '-', starting and ending with a \
                        letter or digit";
    if name.is_empty() {
        return Some(format!("must not be empty; {RULE}"));
    }
    if name.len() > max {
        return Some(format!(
            "{name:?} is {} characters long; at most {max} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!("{name:?} contains {c:?}; {RULE}"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("{name:?} starts or ends with '-'; {RULE}"));
    }
    None
}

/// The template hash recorded on instances: [`runscale_core::template_hash`] (the backend's
/// hash of the template, combined with the slots per instance; changing either replaces the
/// pool's instances once idle).
pub fn combined_template_hash(backend_hash: &str, runners_per_instance: u32) -> String {
    runscale_core::template_hash(backend_hash, runners_per_instance)
}

impl Config {
    /// Checks everything that can be checked without touching the world, and returns every
    /// problem found (each naming its field), or the validated configuration.
    pub fn validate(&self) -> Result<Validated, Vec<FieldError>> {
        let mut errors = Vec::new();

        positive(self.interval, "interval", &mut errors);
        at_most(self.interval, MAX_INTERVAL, "interval", &mut errors);
        at_most(
            self.shutdown_timeout,
            MAX_SHUTDOWN_TIMEOUT,
            "shutdown_timeout",
            &mut errors,
        );
        if self.max_concurrent_passes == 0 {
            errors.push(FieldError::new(
                "max_concurrent_passes",
                "must be at least 1",
            ));
        }
        count_at_most(
            u64::try_from(self.max_concurrent_passes).unwrap_or(u64::MAX),
            MAX_CONCURRENT_PASSES,
            "max_concurrent_passes",
            &mut errors,
        );

        let leader_election = check_leader_election(&self.leader_election, &mut errors);
        let remote_secrets = secrets_aws::references(self, &mut errors);

        let adapters = Adapters {
            providers: self.check_providers(&mut errors),
            provider_names: self.providers.iter().map(|p| p.name.as_str()).collect(),
            backends: self.check_backends(&mut errors),
            backend_names: self.backends.iter().map(|b| b.name.as_str()).collect(),
        };

        if self.pools.is_empty() {
            errors.push(FieldError::new(
                "pools",
                "no pool is configured; add at least one",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut pools = Vec::with_capacity(self.pools.len());
        for (i, pool) in self.pools.iter().enumerate() {
            let path = join_index("pools", i);
            if let Some(&first) = seen.get(pool.name.as_str()) {
                errors.push(FieldError::new(
                    join_key(&path, "name"),
                    format!(
                        "pool name {:?} is already used by pools[{first}]; names must be unique",
                        pool.name
                    ),
                ));
            } else {
                seen.insert(&pool.name, i);
            }
            if let Some(p) = check_pool(pool, &path, &adapters, &mut errors) {
                pools.push(p);
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Validated {
            listen: self.listen,
            options: Options {
                interval: self.interval,
                max_concurrent_passes: self.max_concurrent_passes,
                shutdown_timeout: self.shutdown_timeout,
                // A pool plans on its last view of the CI system when a read fails while that
                // view is no older than an interval (at least a minute, at most five).
                view_max_age: self
                    .interval
                    .clamp(Duration::from_secs(60), Duration::from_secs(300)),
                ..Options::default()
            },
            // Every entry parsed (no error was recorded), so none is missing.
            providers: adapters.providers.into_iter().flatten().collect(),
            backends: adapters.backends.into_iter().flatten().collect(),
            pools,
            leader_election,
            remote_secrets,
        })
    }

    /// Parses every provider; `None` where it failed (the error is recorded).
    fn check_providers(&self, errors: &mut Vec<FieldError>) -> Vec<Option<ProviderEntry>> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        self.providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let path = join_index("providers", i);
                check_adapter_name(&p.name, &path, "provider", &mut seen, i, errors);
                match registry::parse_provider(&p.kind, p.settings.clone(), &path) {
                    Ok(settings) => Some(ProviderEntry {
                        name: p.name.clone(),
                        settings,
                    }),
                    Err(e) => {
                        errors.extend(e);
                        None
                    }
                }
            })
            .collect()
    }

    /// Parses every backend; `None` where it failed (the error is recorded).
    fn check_backends(&self, errors: &mut Vec<FieldError>) -> Vec<Option<BackendEntry>> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        self.backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let path = join_index("backends", i);
                check_adapter_name(&b.name, &path, "backend", &mut seen, i, errors);
                match registry::parse_backend(&b.kind, b.settings.clone(), &path) {
                    Ok(settings) => Some(BackendEntry {
                        name: b.name.clone(),
                        settings,
                    }),
                    Err(e) => {
                        errors.extend(e);
                        None
                    }
                }
            })
            .collect()
    }
}

fn check_adapter_name<'a>(
    name: &'a str,
    path: &str,
    role: &str,
    seen: &mut HashMap<&'a str, usize>,
    index: usize,
    errors: &mut Vec<FieldError>,
) {
    let field = join_key(path, "name");
    if let Some(problem) = name_problem(name, MAX_ADAPTER_NAME) {
        errors.push(FieldError::new(field, problem));
    } else if let Some(&first) = seen.get(name) {
        errors.push(FieldError::new(
            field,
            format!(
                "{role} name {name:?} is already used by {role}s[{first}]; names must be unique"
            ),
        ));
    } else {
        seen.insert(name, index);
    }
}

/// Finds the entry a pool refers to among `names` (as configured): `None` when no entry has
/// that name (the error is recorded here) or when it failed to parse (already reported).
fn find<'a, T>(
    entries: &'a [Option<T>],
    names: &[&str],
    wanted: &str,
    role: &str,
    field: String,
    errors: &mut Vec<FieldError>,
) -> Option<(usize, &'a T)> {
    match names.iter().position(|n| *n == wanted) {
        Some(i) => entries.get(i)?.as_ref().map(|e| (i, e)),
        None => {
            let known = if names.is_empty() {
                format!("no {role} is configured")
            } else {
                format!("configured {role}s: {}", names.join(", "))
            };
            errors.push(FieldError::new(
                field,
                format!("no {role} is named {wanted:?}; {known}"),
            ));
            None
        }
    }
}

/// The parsed providers and backends, by position, with their configured names.
struct Adapters<'a> {
    providers: Vec<Option<ProviderEntry>>,
    provider_names: Vec<&'a str>,
    backends: Vec<Option<BackendEntry>>,
    backend_names: Vec<&'a str>,
}

fn check_pool(
    pool: &PoolConfig,
    path: &str,
    adapters: &Adapters<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<ValidPool> {
    let before = errors.len();
    let field = |name: &str| join_key(path, name);

    if let Some(problem) = name_problem(&pool.name, MAX_POOL_NAME) {
        errors.push(FieldError::new(field("name"), problem));
    }
    if pool.max == 0 {
        errors.push(FieldError::new(
            field("max"),
            "must be at least 1 (use a schedule with max: 0 to switch a pool off at times)",
        ));
    }
    count_at_most(pool.max.into(), MAX_INSTANCES, &field("max"), errors);
    count_at_most(
        pool.launches_per_minute.into(),
        MAX_LAUNCHES_PER_MINUTE,
        &field("launches_per_minute"),
        errors,
    );
    count_at_most(
        pool.runners_per_instance.into(),
        MAX_RUNNERS_PER_INSTANCE,
        &field("runners_per_instance"),
        errors,
    );
    let max_booting = pool.max_booting.unwrap_or(pool.max);
    if let Some(b) = pool.max_booting
        && (b == 0 || b > pool.max)
    {
        errors.push(FieldError::new(
            field("max_booting"),
            format!(
                "is {b}; must be from 1 to max ({}), or left out to mean max",
                pool.max
            ),
        ));
    }
    if pool.runners_per_instance == 0 {
        errors.push(FieldError::new(
            field("runners_per_instance"),
            "must be at least 1",
        ));
    }
    let slots = u64::from(pool.max) * u64::from(pool.runners_per_instance.max(1));
    if pool.max > 0 && u64::from(pool.min_idle) > slots {
        errors.push(FieldError::new(
            field("min_idle"),
            format!(
                "is {}, more idle runners than max × runners_per_instance ({slots}) can host; \
                 must be at most {slots}",
                pool.min_idle
            ),
        ));
    }
    if let super::model::WarmConfig::Settings(w) = pool.warm {
        if !(w.coverage > 0.0 && w.coverage < 1.0) {
            errors.push(FieldError::new(
                field("warm.coverage"),
                format!("is {}; must be above 0 and below 1", w.coverage),
            ));
        }
        if w.target_wait > Duration::from_secs(3600) {
            errors.push(FieldError::new(
                field("warm.target_wait"),
                "must be at most 1h",
            ));
        }
    }
    check_reuse(pool, &field("reuse"), errors);
    positive(pool.boot_timeout, &field("boot_timeout"), errors);
    positive(pool.idle_timeout, &field("idle_timeout"), errors);
    at_most(
        pool.boot_timeout,
        MAX_BOOT_TIMEOUT,
        &field("boot_timeout"),
        errors,
    );
    at_most(
        pool.idle_timeout,
        MAX_IDLE_TIMEOUT,
        &field("idle_timeout"),
        errors,
    );
    if let Some(lifetime) = pool.max_lifetime {
        at_most(lifetime, MAX_LIFETIME, &field("max_lifetime"), errors);
    }
    if let Some(lifetime) = pool.max_lifetime
        && lifetime <= pool.boot_timeout
    {
        errors.push(FieldError::new(
            field("max_lifetime"),
            format!(
                "is {}, not longer than boot_timeout ({}): instances would be retired while \
                 booting; make it longer or leave it out",
                fmt_duration(lifetime),
                fmt_duration(pool.boot_timeout)
            ),
        ));
    }
    if pool.scale_down_delay > pool.idle_timeout {
        errors.push(FieldError::new(
            field("scale_down_delay"),
            format!(
                "is {}, longer than idle_timeout ({}): idle runners would outlive their \
                 timeout after every launch; must be at most idle_timeout (raise idle_timeout \
                 instead)",
                fmt_duration(pool.scale_down_delay),
                fmt_duration(pool.idle_timeout)
            ),
        ));
    }
    let schedules = check_schedules(pool, path, errors);

    let provider = find(
        &adapters.providers,
        &adapters.provider_names,
        &pool.provider,
        "provider",
        field("provider"),
        errors,
    );
    let backend = find(
        &adapters.backends,
        &adapters.backend_names,
        &pool.backend,
        "backend",
        field("backend"),
        errors,
    );
    let context = runscale_core::PoolContext {
        name: &pool.name,
        runners_per_instance: pool.runners_per_instance,
        ephemeral: pool.ephemeral,
    };
    let selector = provider.and_then(|(_, p)| {
        registry::parse_selector(
            &p.settings,
            pool.selector.clone(),
            &field("selector"),
            context,
        )
        .map_err(|e| errors.extend(e))
        .ok()
    });
    let template = backend.and_then(|(_, b)| {
        registry::parse_template(
            &b.settings,
            pool.template.clone(),
            &field("template"),
            context,
        )
        .map_err(|e| errors.extend(e))
        .ok()
    });

    // Runners named by the instances themselves are never registered or removed one by one:
    // only a provider whose registration creates nothing in the CI system can serve them.
    if let (Some(t), Some((_, p))) = (&template, provider)
        && t.runners_unattributed()
        && !p.settings.serves_unattributed_runners()
    {
        errors.push(FieldError::new(
            join_key(&field("template"), "runner_name"),
            format!(
                "\"unknown\" (runners named by the instances) needs a circleci provider, whose \
                 registration creates nothing in the CI system; provider {} is {}",
                pool.provider,
                p.settings.kind()
            ),
        ));
    }
    if let (Some(_), Some((_, b))) = (pool.reuse, backend)
        && !b.settings.reuses_instances()
    {
        errors.push(FieldError::new(
            field("reuse"),
            format!(
                "backend {} is of type {}, which cannot hand runners to a running instance; \
                 reuse needs an exec backend (with a `reuse` action) — leave reuse out",
                pool.backend,
                b.settings.kind()
            ),
        ));
    }
    if pool.reuse.is_some() && template.as_ref().is_some_and(|t| t.runners_unattributed()) {
        errors.push(FieldError::new(
            field("reuse"),
            "runners named by the instances cannot be handed over one by one; leave reuse out",
        ));
    }
    if errors.len() != before {
        return None;
    }
    let (provider, _) = provider?;
    let (backend, _) = backend?;
    let (selector, template) = (selector?, template?);
    let spec = PoolSpec {
        name: PoolId::new(&pool.name),
        min_idle: pool.min_idle,
        max: pool.max,
        max_booting,
        launches_per_minute: pool.launches_per_minute,
        boot_timeout: pool.boot_timeout,
        idle_timeout: pool.idle_timeout,
        max_lifetime: pool.max_lifetime,
        scale_down_delay: pool.scale_down_delay,
        schedules,
        runners_per_instance: pool.runners_per_instance,
        ephemeral: pool.ephemeral,
        template_hash: combined_template_hash(&template.backend_hash(), pool.runners_per_instance),
        runners_unattributed: template.runners_unattributed(),
        warm: pool.warm.to_warm(),
        reuse: pool.reuse.map(super::model::ReuseConfig::to_reuse),
    };
    Some(ValidPool {
        spec,
        provider,
        backend,
        selector,
        template,
    })
}

/// `reuse`: for ephemeral runners only, with bounded uses and age.
fn check_reuse(pool: &PoolConfig, path: &str, errors: &mut Vec<FieldError>) {
    let Some(reuse) = pool.reuse else {
        return;
    };
    if !pool.ephemeral {
        errors.push(FieldError::new(
            path,
            "is for ephemeral runners (one job each); a persistent runner already serves many \
             jobs on its instance: leave reuse out or set ephemeral: true",
        ));
    }
    if !(2..=1000).contains(&reuse.max_uses) {
        errors.push(FieldError::new(
            join_key(path, "max_uses"),
            format!("is {}; must be from 2 to 1000", reuse.max_uses),
        ));
    }
    positive(reuse.max_age, &join_key(path, "max_age"), errors);
    at_most(
        reuse.max_age,
        Duration::from_secs(7 * 24 * 3600),
        &join_key(path, "max_age"),
        errors,
    );
}

fn check_schedules(pool: &PoolConfig, path: &str, errors: &mut Vec<FieldError>) -> Vec<Schedule> {
    let mut out = Vec::with_capacity(pool.schedules.len());
    for (i, s) in pool.schedules.iter().enumerate() {
        let spath = join_index(&join_key(path, "schedules"), i);
        if let Some(schedule) = check_schedule(pool, s, &spath, errors) {
            out.push(schedule);
        }
    }
    out
}

fn check_schedule(
    pool: &PoolConfig,
    s: &ScheduleConfig,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Schedule> {
    let before = errors.len();
    if let Err(ScheduleError::Cron { reason, .. }) = Schedule::new(&s.cron, "UTC", None, None) {
        errors.push(FieldError::new(
            join_key(path, "cron"),
            format!(
                "invalid cron expression {:?} ({reason}); expected five fields: minute hour \
                 day-of-month month day-of-week, e.g. \"* 8-17 * * MON-FRI\"",
                s.cron
            ),
        ));
    }
    // The time zone is checked on its own so that a bad cron and a bad zone are both reported.
    if let Err(ScheduleError::TimeZone(_)) = Schedule::new("* * * * *", &s.timezone, None, None) {
        errors.push(FieldError::new(
            join_key(path, "timezone"),
            format!(
                "unknown time zone {:?}; expected an IANA name such as \"UTC\" or \
                 \"Europe/Berlin\"",
                s.timezone
            ),
        ));
    }
    let max = s.max.unwrap_or(pool.max);
    if let Some(min_idle) = s.min_idle {
        let slots = u64::from(max) * u64::from(pool.runners_per_instance.max(1));
        if u64::from(min_idle) > slots {
            errors.push(FieldError::new(
                join_key(path, "min_idle"),
                format!(
                    "is {min_idle}, more idle runners than max × runners_per_instance ({slots}) \
                     can host while this schedule is active; must be at most {slots}"
                ),
            ));
        }
    }
    if s.min_idle.is_none() && s.max.is_none() {
        errors.push(FieldError::new(
            path,
            "overrides nothing; set min_idle, max or both",
        ));
    }
    if errors.len() != before {
        return None;
    }
    Schedule::new(&s.cron, &s.timezone, s.min_idle, s.max).ok()
}

/// The longest `interval`: a pool is reconciled at least daily.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest `shutdown_timeout`.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most passes running at once.
pub const MAX_CONCURRENT_PASSES: u64 = 1024;
/// The largest pool `max`.
pub const MAX_INSTANCES: u64 = 100_000;
/// The largest `launches_per_minute`.
pub const MAX_LAUNCHES_PER_MINUTE: u64 = 100_000;
/// The most `runners_per_instance`.
pub const MAX_RUNNERS_PER_INSTANCE: u64 = 1000;
/// The longest `boot_timeout`.
pub const MAX_BOOT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest `idle_timeout`.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest `max_lifetime`.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Records an error when `d` is longer than `max`. Every duration the daemon adds to a clock
/// or multiplies is bounded this way, so no arithmetic on it can overflow.
fn at_most(d: Duration, max: Duration, field: &str, errors: &mut Vec<FieldError>) {
    if d > max {
        errors.push(FieldError::new(
            field,
            format!(
                "is {}; must be at most {}",
                fmt_duration(d),
                fmt_duration(max)
            ),
        ));
    }
}

/// Records an error when the count `n` is above `max`.
fn count_at_most(n: u64, max: u64, field: &str, errors: &mut Vec<FieldError>) {
    if n > max {
        errors.push(FieldError::new(
            field,
            format!("is {n}; must be at most {max}"),
        ));
    }
}

fn positive(d: Duration, field: &str, errors: &mut Vec<FieldError>) {
    if d.is_zero() {
        errors.push(FieldError::new(
            field,
            "must be longer than 0s, e.g. \"30s\"",
        ));
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Checks the `leader_election` section; the settings when election is enabled.
fn check_leader_election(
    c: &LeaderElectionConfig,
    errors: &mut Vec<FieldError>,
) -> Option<leader::Settings> {
    let before = errors.len();
    let mut problem = |field: &str, message: String| {
        errors.push(FieldError::new(join_key("leader_election", field), message));
    };
    if c.enabled && !cfg!(feature = "leader-election") {
        problem(
            "enabled",
            "leader election is not compiled into this runscale; build it with the cargo \
             feature \"leader-election\""
                .to_owned(),
        );
    }
    if let Some(p) = leader::lease_name_problem(&c.lease_name) {
        problem("lease_name", p);
    }
    if let Some(ns) = &c.namespace
        && let Some(p) = name_problem(ns, leader::MAX_NAMESPACE)
    {
        problem("namespace", p);
    }
    if let Some(id) = &c.identity
        && let Some(p) = leader::identity_problem(id)
    {
        problem("identity", p);
    }
    if c.context.as_deref() == Some("") {
        problem(
            "context",
            "must not be empty; leave it out for the current context".to_owned(),
        );
    }
    let secs = c.lease_duration.as_secs_f64();
    if secs < 1.0 || c.lease_duration.subsec_nanos() != 0 {
        problem(
            "lease_duration",
            format!(
                "{} is not a whole number of seconds of at least 1s (the Lease stores seconds)",
                humantime::format_duration(c.lease_duration)
            ),
        );
    } else if c.lease_duration > leader::MAX_LEASE_DURATION {
        problem(
            "lease_duration",
            format!(
                "must be at most {}",
                humantime::format_duration(leader::MAX_LEASE_DURATION)
            ),
        );
    }
    if c.renew_deadline.is_zero() || c.renew_deadline >= c.lease_duration {
        problem(
            "renew_deadline",
            format!(
                "must be longer than 0s and shorter than lease_duration ({}), so the leader \
                 stops before another replica can take the lease",
                humantime::format_duration(c.lease_duration)
            ),
        );
    }
    if c.retry_period.is_zero() || c.retry_period >= c.renew_deadline {
        problem(
            "retry_period",
            format!(
                "must be longer than 0s and shorter than renew_deadline ({}), so a failed \
                 renewal is retried before the deadline",
                humantime::format_duration(c.renew_deadline)
            ),
        );
    }
    if errors.len() > before || !c.enabled {
        return None;
    }
    Some(leader::Settings {
        lease_name: c.lease_name.clone(),
        namespace: c.namespace.clone(),
        identity: c.identity.clone(),
        lease_duration: c.lease_duration,
        renew_deadline: c.renew_deadline,
        retry_period: c.retry_period,
        kubeconfig: c.kubeconfig.clone(),
        context: c.context.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        assert_eq!(name_problem("linux-x64", 40), None);
        assert_eq!(name_problem("a", 40), None);
        assert_eq!(name_problem("0abc9", 40), None);
        for bad in ["", "Linux", "a_b", "-a", "a-", "a.b", "ü"] {
            assert!(name_problem(bad, 40).is_some(), "{bad:?} accepted");
        }
        let long = "a".repeat(41);
        let p = name_problem(&long, 40).expect("too long");
        assert!(p.contains("41") && p.contains("40"), "{p}");
        assert_eq!(name_problem(&"a".repeat(40), 40), None);
    }

    #[test]
    fn template_hash_changes_with_slots() {
        let a = combined_template_hash("abc", 1);
        let b = combined_template_hash("abc", 2);
        let c = combined_template_hash("abd", 1);
        assert!(a != b && b != c && a != c, "{a} {b} {c}");
        assert_eq!(a, combined_template_hash("abc", 1));
    }
}
