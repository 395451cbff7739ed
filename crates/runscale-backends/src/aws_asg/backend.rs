//! The [`Backend`] implementation: groups resolved per pool, launches claimed and bound,
//! terminations with protection lifted first, parameters cleaned up.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runscale_core::adapter_type::{Template as _, Validate as _};
use runscale_core::{
    Backend, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, PoolId,
    Registration, Result, Timestamp,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::client::{Aws, Group, GroupInstance, action};
use super::config::{Config, GroupSelector, PoolTemplate, RunnerName};
use crate::aws_common::ssm::{credentials_name, credentials_value};
use crate::aws_common::{ProbeReport, build_pools, load_sdk, lock, misconfigured, unknown_pool};

/// How often leftover parameters (of instances that ended while runscale was not looking) are
/// swept, besides the first listing of each pool.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// An instance id that never exists, for permission probes without side effects.
const PROBE_INSTANCE: &str = "i-00000000000000000";

/// What runscale records about an instance it claimed, as the String parameter
/// `{ssm_prefix}/{pool}/binding/{instance-id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Binding {
    runner_names: Vec<String>,
    template_hash: String,
    launched_at: Timestamp,
}

#[derive(Default)]
struct Known {
    /// Bindings were loaded from SSM once.
    loaded: bool,
    bindings: HashMap<String, Binding>,
    /// When instances without a binding were first seen (their launch time, as far as we know).
    first_seen: HashMap<String, Timestamp>,
    /// Protection as of the last listing.
    protected: HashMap<String, bool>,
    /// Instances whose credentials parameter is already deleted.
    credentials_gone: HashSet<String>,
    last_sweep: Option<Instant>,
}

struct PoolState {
    selector: GroupSelector,
    runner_name: RunnerName,
    /// The group's `MaxSize` to keep (with `MinSize` 0), if the template asks for it.
    max_size: Option<i32>,
    /// The template's hash, given to members adopted in `instance-id` mode.
    template_hash: String,
    /// The resolved group name.
    group: Mutex<Option<String>>,
    /// Serialises launches, terminations and sweeps of the pool: each reads the desired
    /// capacity or the member list and acts on it.
    act: tokio::sync::Mutex<()>,
    known: Mutex<Known>,
}

/// The aws-asg backend. See the [module docs](super).
pub struct AwsAsg {
    config: Config,
    aws: Aws,
    pools: HashMap<PoolId, PoolState>,
}

impl std::fmt::Debug for AwsAsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsAsg")
            .field("config", &self.config)
            .field("pools", &self.pools.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Maps AWS's lifecycle state to ours; `None` for instances that are gone.
fn state_of(lifecycle: &str) -> Option<InstanceState> {
    match lifecycle {
        "Terminated" | "Detached" => None,
        s if s.starts_with("Terminating") || s.starts_with("Detaching") => {
            Some(InstanceState::Stopping)
        }
        s if s.starts_with("Pending") || s.starts_with("Warmed") => Some(InstanceState::Booting),
        // InService, Standby, EnteringStandby, ...
        _ => Some(InstanceState::Running),
    }
}

fn is_leaving(i: &GroupInstance) -> bool {
    state_of(&i.lifecycle).is_none_or(|s| s == InstanceState::Stopping)
}

/// Members that are not leaving.
fn live_members(group: &Group) -> i32 {
    let live = group.instances.iter().filter(|i| !is_leaving(i)).count();
    i32::try_from(live).unwrap_or(i32::MAX)
}

/// The `(MinSize, MaxSize)` the template's `max_size` asks of `group`, if they differ from its
/// own: MinSize 0, and MaxSize never below the desired capacity (AWS would lower that too).
fn wanted_limits(max_size: Option<i32>, group: &Group) -> Option<(i32, i32)> {
    let max = max_size?.max(group.desired);
    (group.min != 0 || group.max != max).then_some((0, max))
}

impl AwsAsg {
    /// Builds the backend from an SDK configuration (region, credentials, endpoint already
    /// set); no AWS call is made. The settings and templates are validated first.
    pub fn new(
        config: Config,
        templates: HashMap<PoolId, PoolTemplate>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self> {
        let pools = build_pools(
            "aws_asg.config",
            config.validate().err().unwrap_or_default(),
            templates,
            sdk,
            |pool, template| {
                Ok(PoolState {
                    selector: template.selector(pool.as_str())?,
                    runner_name: template.runner_name,
                    max_size: template
                        .max_size
                        .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
                    // One runner per instance (checked by the binary's configuration).
                    template_hash: runscale_core::template_hash(&template.hash(), 1),
                    group: Mutex::new(None),
                    act: tokio::sync::Mutex::new(()),
                    known: Mutex::new(Known::default()),
                })
            },
        )?;
        let aws = Aws::new(sdk, config.max_attempts);
        Ok(Self { config, aws, pools })
    }

    /// Builds the backend with the SDK's default credential chain (environment, profile, web
    /// identity, container and instance metadata) and the configured region and endpoint.
    pub async fn connect(config: Config, templates: HashMap<PoolId, PoolTemplate>) -> Result<Self> {
        config
            .validate()
            .map_err(|e| misconfigured("aws_asg.config", e))?;
        let sdk = load_sdk(config.region.as_deref(), config.endpoint_url.as_deref()).await;
        Self::new(config, templates, &sdk)
    }

    /// circleci-runner-autoscaler's discovery: the groups tagged `resource-class` with a value
    /// `{namespace}/...`, as (resource class, group name) sorted by class, across every page
    /// (the seed read only the first). Uses the SDK's default credential chain with the
    /// configured region and endpoint; needs `autoscaling:DescribeAutoScalingGroups`.
    pub async fn discover_resource_classes(
        config: &Config,
        namespace: &str,
    ) -> Result<Vec<(String, String)>> {
        config
            .validate()
            .map_err(|e| misconfigured("aws_asg.discover", e))?;
        let sdk = load_sdk(config.region.as_deref(), config.endpoint_url.as_deref()).await;
        Self::discover_resource_classes_with(&sdk, config.max_attempts, namespace).await
    }

    /// [`AwsAsg::discover_resource_classes`] with a given SDK configuration.
    pub async fn discover_resource_classes_with(
        sdk: &aws_config::SdkConfig,
        max_attempts: u32,
        namespace: &str,
    ) -> Result<Vec<(String, String)>> {
        const OP: &str = "aws_asg.discover";
        let aws = Aws::new(sdk, max_attempts);
        let prefix = format!("{namespace}/");
        let mut found: Vec<(String, String)> = aws
            .groups_with_tag_key(OP, super::config::RESOURCE_CLASS_TAG)
            .await?
            .into_iter()
            .filter(|(_, class)| class.strip_prefix(&prefix).is_some_and(|n| !n.is_empty()))
            .map(|(group, class)| (class, group))
            .collect();
        found.sort();
        Ok(found)
    }

    fn pool(&self, pool: &PoolId) -> Result<&PoolState> {
        self.pools
            .get(pool)
            .ok_or_else(|| unknown_pool("aws_asg", "aws-asg", pool))
    }

    fn credentials_name(&self, pool: &PoolId, id: &str) -> String {
        credentials_name(&self.config.ssm_prefix, pool.as_str(), id)
    }

    fn binding_name(&self, pool: &PoolId, id: &str) -> String {
        format!("{}/{pool}/binding/{id}", self.config.ssm_prefix)
    }

    /// The group of `pool`: by name, or the one group carrying the tag (cached).
    async fn group_name(
        &self,
        op: &'static str,
        pool: &PoolId,
        state: &PoolState,
    ) -> Result<String> {
        if let Some(name) = lock(&state.group).clone() {
            return Ok(name);
        }
        let name = match &state.selector {
            GroupSelector::Name(n) => n.clone(),
            GroupSelector::Tag { key, value } => {
                let found = self.aws.groups_by_tag(op, key, value).await?;
                match found.as_slice() {
                    [one] => {
                        info!(pool = %pool, group = %one.name, tag = %key, value = %value, "found the pool's Auto Scaling group by tag");
                        one.name.clone()
                    }
                    [] => {
                        return Err(Error::new(
                            op,
                            ErrorKind::Misconfigured,
                            format!("pool {pool}: no Auto Scaling group is tagged {key}={value}"),
                        ));
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|g| g.name.as_str()).collect();
                        return Err(Error::new(
                            op,
                            ErrorKind::Misconfigured,
                            format!(
                                "pool {pool}: {} Auto Scaling groups are tagged {key}={value} ({}); tag exactly one",
                                many.len(),
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        *lock(&state.group) = Some(name.clone());
        Ok(name)
    }

    /// A fresh description of the pool's group. A group that no longer exists is a
    /// configuration error (and a tag-found one is looked up again next time).
    async fn describe(&self, op: &'static str, pool: &PoolId, state: &PoolState) -> Result<Group> {
        let name = self.group_name(op, pool, state).await?;
        let mut groups = self
            .aws
            .describe_groups(op, std::slice::from_ref(&name))
            .await?;
        match groups.iter().position(|g| g.name == name) {
            Some(i) => Ok(groups.swap_remove(i)),
            None => Err(self.missing_group(op, pool, state, &name)),
        }
    }

    fn missing_group(
        &self,
        op: &'static str,
        pool: &PoolId,
        state: &PoolState,
        name: &str,
    ) -> Error {
        *lock(&state.group) = None;
        Error::new(
            op,
            ErrorKind::Misconfigured,
            format!(
                "pool {pool}: Auto Scaling group {name} does not exist (or is not visible in this account and region)"
            ),
        )
    }

    /// Loads bindings once, and sweeps parameters of instances no longer in the group.
    async fn sweep(
        &self,
        pool: &PoolId,
        state: &PoolState,
        members: &HashSet<String>,
    ) -> Result<()> {
        const OP: &str = "aws_asg.instances";
        let due = {
            let k = lock(&state.known);
            !k.loaded || k.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_INTERVAL)
        };
        if !due {
            return Ok(());
        }
        // Never while a launch is between "instance appeared" and "parameters written".
        let Ok(_guard) = state.act.try_lock() else {
            return Ok(());
        };
        // Members are re-read under the lock: the caller's list may predate a launch.
        let group = self.describe(OP, pool, state).await?;
        let members: HashSet<String> = members
            .iter()
            .cloned()
            .chain(group.instances.iter().map(|i| i.id.clone()))
            .collect();
        let root = format!("{}/{pool}", self.config.ssm_prefix);
        let binding_dir = format!("{root}/binding/");
        let params = self.aws.ssm.parameters_under(OP, &root).await?;
        let mut stale = Vec::new();
        let mut loaded = HashMap::new();
        for (name, value) in params {
            let (id, is_binding) = match name.strip_prefix(&binding_dir) {
                Some(id) => (id.to_owned(), true),
                None => match name.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) {
                    Some(id) if !id.contains('/') => (id.to_owned(), false),
                    _ => continue,
                },
            };
            if !members.contains(&id) {
                stale.push(name);
                continue;
            }
            if is_binding {
                match value.as_deref().map(serde_json::from_str::<Binding>) {
                    Some(Ok(b)) => {
                        loaded.insert(id, b);
                    }
                    _ => {
                        warn!(pool = %pool, parameter = %name, "unreadable binding parameter; its instance is treated as unclaimed")
                    }
                }
            }
        }
        for name in &stale {
            info!(pool = %pool, parameter = %name, "deleting the parameter of an instance that is gone");
            self.aws.ssm.delete_parameter(OP, name).await?;
        }
        let mut k = lock(&state.known);
        for (id, b) in loaded {
            k.bindings.entry(id).or_insert(b);
        }
        k.loaded = true;
        k.last_sweep = Some(Instant::now());
        Ok(())
    }

    /// With the template's `max_size`: sets the group's `MinSize` to 0 and `MaxSize` to it if
    /// they differ (as CircleCI's simple-Lambda example does on every run); `group` follows.
    async fn keep_limits(
        &self,
        op: &'static str,
        pool: &PoolId,
        state: &PoolState,
        group: &mut Group,
    ) -> Result<()> {
        let Some((min, max)) = wanted_limits(state.max_size, group) else {
            return Ok(());
        };
        self.aws.update_limits(op, &group.name, min, max).await?;
        info!(pool = %pool, group = %group.name, min_size = min, max_size = max, was_min_size = group.min, was_max_size = group.max, "group size limits set");
        group.min = min;
        group.max = max;
        Ok(())
    }

    async fn delete_parameters(&self, op: &'static str, pool: &PoolId, id: &str) -> Result<()> {
        self.aws
            .ssm
            .delete_parameter(op, &self.credentials_name(pool, id))
            .await?;
        self.aws
            .ssm
            .delete_parameter(op, &self.binding_name(pool, id))
            .await
    }

    /// The instances of one pool's group, bound to their runners.
    async fn list_pool(
        &self,
        pool: &PoolId,
        state: &PoolState,
        group: &Group,
        now: Timestamp,
    ) -> Result<Vec<Instance>> {
        const OP: &str = "aws_asg.instances";
        let members: HashSet<String> = group.instances.iter().map(|i| i.id.clone()).collect();
        self.sweep(pool, state, &members).await?;
        // Bindings of instances another runscale claimed after our load.
        let unknown: Vec<String> = {
            let k = lock(&state.known);
            group
                .instances
                .iter()
                .filter(|i| !is_leaving(i) && !k.bindings.contains_key(&i.id))
                .map(|i| i.id.clone())
                .collect()
        };
        for id in unknown {
            if let Some(v) = self
                .aws
                .ssm
                .get_parameter(OP, &self.binding_name(pool, &id))
                .await?
                && let Ok(b) = serde_json::from_str::<Binding>(&v)
            {
                lock(&state.known).bindings.insert(id, b);
            }
        }
        // Instances that left the group: their parameters go too.
        let gone: Vec<String> = {
            let k = lock(&state.known);
            k.bindings
                .keys()
                .filter(|id| !members.contains(*id))
                .cloned()
                .collect()
        };
        for id in &gone {
            self.delete_parameters(OP, pool, id).await?;
            let mut k = lock(&state.known);
            k.bindings.remove(id);
            k.credentials_gone.remove(id);
        }
        let mut k = lock(&state.known);
        k.first_seen.retain(|id, _| members.contains(id));
        k.protected = group
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.protected))
            .collect();
        let mut out = Vec::new();
        for i in &group.instances {
            let Some(st) = state_of(&i.lifecycle) else {
                continue;
            };
            let instance = match k.bindings.get(&i.id) {
                Some(b) => Instance {
                    id: InstanceId::new(&i.id),
                    state: st,
                    launched_at: b.launched_at,
                    template_hash: b.template_hash.clone(),
                    // Runners the instances name themselves are nobody's to claim.
                    runner_names: if state.runner_name == RunnerName::Unknown {
                        Vec::new()
                    } else {
                        b.runner_names.clone()
                    },
                    reused: None,
                },
                None => {
                    let seen = *k.first_seen.entry(i.id.clone()).or_insert(now);
                    // With runners named by instance id, a member without a binding (there
                    // before runscale) hosts the runner named by its id; with runners the
                    // instances name themselves, it hosts one runscale cannot name; otherwise
                    // it is nobody's (a replacement the group launched by itself).
                    let (template_hash, runner_names) = match state.runner_name {
                        RunnerName::InstanceId => (state.template_hash.clone(), vec![i.id.clone()]),
                        RunnerName::Unknown => (state.template_hash.clone(), Vec::new()),
                        RunnerName::Runscale => (String::new(), Vec::new()),
                    };
                    Instance {
                        id: InstanceId::new(&i.id),
                        state: st,
                        launched_at: seen,
                        template_hash,
                        runner_names,
                        reused: None,
                    }
                }
            };
            out.push(instance);
        }
        Ok(out)
    }

    /// Waits for an instance that is in the group, was not there before and is not leaving.
    async fn wait_for_new(
        &self,
        pool: &PoolId,
        state: &PoolState,
        before: &HashSet<String>,
        desired: i32,
    ) -> Result<(String, String)> {
        const OP: &str = "aws_asg.launch";
        let deadline = Instant::now() + self.config.claim_timeout;
        loop {
            let group = self.describe(OP, pool, state).await?;
            let mut fresh: Vec<&GroupInstance> = group
                .instances
                .iter()
                .filter(|i| !before.contains(&i.id) && !is_leaving(i))
                .collect();
            fresh.sort_by(|a, b| a.id.cmp(&b.id));
            if let Some(i) = fresh.first() {
                return Ok((group.name.clone(), i.id.clone()));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    OP,
                    ErrorKind::Transient,
                    format!(
                        "group {}: no new instance within {:?} after raising the desired capacity to {desired} (see the group's scaling activities)",
                        group.name, self.config.claim_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

#[async_trait]
impl Backend for AwsAsg {
    fn kind(&self) -> &'static str {
        "aws-asg"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        const OP: &str = "aws_asg.instances";
        let now = chrono::Utc::now();
        let mut names = Vec::new();
        let mut mine = Vec::new();
        for pool in pools {
            // Pools of other backends are not ours to list.
            let Some(state) = self.pools.get(pool) else {
                continue;
            };
            let name = self.group_name(OP, pool, state).await?;
            names.push(name.clone());
            mine.push((pool, state, name));
        }
        names.sort();
        names.dedup();
        let groups: HashMap<String, Group> = self
            .aws
            .describe_groups(OP, &names)
            .await?
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect();
        let mut out = HashMap::new();
        for (pool, state, name) in mine {
            let Some(group) = groups.get(&name) else {
                return Err(self.missing_group(OP, pool, state, &name));
            };
            out.insert(pool.clone(), self.list_pool(pool, state, group, now).await?);
        }
        Ok(out)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        const OP: &str = "aws_asg.launch";
        let pool = &request.pool;
        let state = self.pool(pool)?;
        let [registration] = request.runners.as_slice() else {
            return Err(Error::new(
                OP,
                ErrorKind::Misconfigured,
                format!(
                    "pool {pool}: an Auto Scaling group instance hosts exactly one runner (runners_per_instance must be 1, got {})",
                    request.runners.len()
                ),
            ));
        };
        let _guard = state.act.lock().await;
        let mut group = self.describe(OP, pool, state).await?;
        self.keep_limits(OP, pool, state, &mut group).await?;
        // A desired capacity lowered below the members (`lower_target`) would launch nothing.
        let base = group.desired.max(live_members(&group));
        if base >= group.max {
            warn!(pool = %pool, group = %group.name, desired = group.desired, max_size = group.max, "the group is at its MaxSize; not launching");
            return Err(Error::new(
                OP,
                ErrorKind::InsufficientCapacity,
                format!(
                    "group {} is at its MaxSize {} (desired capacity {}); raise MaxSize or lower the pool's max",
                    group.name, group.max, group.desired
                ),
            ));
        }
        let before: HashSet<String> = group.instances.iter().map(|i| i.id.clone()).collect();
        let desired = base + 1;
        self.aws.set_desired(OP, &group.name, desired).await?;
        let (group_name, id) = self.wait_for_new(pool, state, &before, desired).await?;
        let now = chrono::Utc::now();
        // Protected first: from now on only runscale removes it.
        self.aws
            .set_protection(OP, &group_name, std::slice::from_ref(&id), true)
            .await?;
        let runner_name = match state.runner_name {
            RunnerName::Runscale => Some(registration.runner_name.clone()),
            RunnerName::InstanceId => Some(id.clone()),
            RunnerName::Unknown => None,
        };
        let binding = Binding {
            runner_names: runner_name.iter().cloned().collect(),
            template_hash: request.template_hash.clone(),
            launched_at: now,
        };
        let value = serde_json::to_string(&binding).map_err(|e| {
            Error::new(OP, ErrorKind::Protocol, "cannot serialise a binding").with_source(e)
        })?;
        self.aws
            .ssm
            .put_parameter(OP, &self.binding_name(pool, &id), value, false)
            .await?;
        lock(&state.known)
            .bindings
            .insert(id.clone(), binding.clone());
        let Some(runner_name) = runner_name else {
            // The launch template starts and names the runner: no credentials to hand over.
            lock(&state.known).credentials_gone.insert(id.clone());
            info!(pool = %pool, group = %group_name, instance = %id, desired, "instance claimed (its runner is named by the instance)");
            return Ok(Instance {
                id: InstanceId::new(id),
                state: InstanceState::Booting,
                launched_at: now,
                template_hash: binding.template_hash,
                runner_names: Vec::new(),
                reused: None,
            });
        };
        let renamed;
        let registration = if runner_name == registration.runner_name {
            registration
        } else {
            renamed = renamed_registration(registration, &runner_name);
            &renamed
        };
        let file = credentials_value(pool.as_str(), &id, &request.template_hash, registration)
            .map_err(|problem| Error::new(OP, ErrorKind::Misconfigured, problem))?;
        self.aws
            .ssm
            .put_parameter(OP, &self.credentials_name(pool, &id), file, true)
            .await?;
        info!(pool = %pool, group = %group_name, instance = %id, runner = %runner_name, desired, "instance claimed");
        Ok(Instance {
            id: InstanceId::new(id),
            state: InstanceState::Booting,
            launched_at: now,
            template_hash: binding.template_hash,
            runner_names: binding.runner_names,
            reused: None,
        })
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        const OP: &str = "aws_asg.terminate";
        let state = self.pool(pool)?;
        let _guard = state.act.lock().await;
        let id = instance.as_str();
        let group = self.group_name(OP, pool, state).await?;
        match self.aws.instance_group(OP, id).await? {
            Some((g, lifecycle))
                if g == group
                    && state_of(&lifecycle).is_some_and(|s| s != InstanceState::Stopping) =>
            {
                // The desired capacity is decremented so AWS does not replace the instance,
                // unless `lower_target` already put it below the members (and so it would not).
                let decrement = match state.runner_name {
                    RunnerName::Unknown => {
                        let g = self.describe(OP, pool, state).await?;
                        g.desired > g.min && g.desired >= live_members(&g)
                    }
                    RunnerName::Runscale | RunnerName::InstanceId => true,
                };
                self.aws
                    .set_protection(OP, &group, &[id.to_owned()], false)
                    .await?;
                self.aws.terminate(OP, &group, id, decrement).await?;
                info!(pool = %pool, group = %group, instance = %id, decrement, "instance terminated");
            }
            Some((g, _)) if g != group => {
                warn!(pool = %pool, instance = %id, group = %g, "instance belongs to another group; left alone");
                return Ok(());
            }
            _ => debug!(pool = %pool, instance = %id, "instance already gone or going"),
        }
        self.delete_parameters(OP, pool, id).await?;
        lock(&state.known).credentials_gone.insert(id.to_owned());
        Ok(())
    }

    async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        const OP: &str = "aws_asg.mark_busy";
        let Some(state) = self.pools.get(pool) else {
            return Ok(());
        };
        let (unprotected, creds): (Vec<String>, Vec<String>) = {
            let k = lock(&state.known);
            let unprotected = busy
                .iter()
                .filter(|i| k.protected.get(i.as_str()) == Some(&false))
                .map(|i| i.to_string())
                .collect();
            // Runners the instances name themselves had no credentials parameter.
            let creds = busy
                .iter()
                .filter(|i| {
                    state.runner_name != RunnerName::Unknown
                        && !k.credentials_gone.contains(i.as_str())
                })
                .map(|i| i.to_string())
                .collect();
            (unprotected, creds)
        };
        if !unprotected.is_empty() {
            let group = self.group_name(OP, pool, state).await?;
            warn!(pool = %pool, group = %group, instances = ?unprotected, "busy instances had lost their scale-in protection; protecting them again");
            self.aws
                .set_protection(OP, &group, &unprotected, true)
                .await?;
            let mut k = lock(&state.known);
            for id in &unprotected {
                k.protected.insert(id.clone(), true);
            }
        }
        // A busy runner has registered: its credentials are no longer needed.
        for id in creds {
            self.aws
                .ssm
                .delete_parameter(OP, &self.credentials_name(pool, &id))
                .await?;
            lock(&state.known).credentials_gone.insert(id);
        }
        Ok(())
    }

    async fn lower_target(&self, pool: &PoolId, wanted: u32) -> Result<()> {
        const OP: &str = "aws_asg.lower_target";
        let Some(state) = self.pools.get(pool) else {
            return Ok(());
        };
        let unknown = state.runner_name == RunnerName::Unknown;
        if !unknown && state.max_size.is_none() {
            return Ok(());
        }
        let _guard = state.act.lock().await;
        let mut group = self.describe(OP, pool, state).await?;
        self.keep_limits(OP, pool, state, &mut group).await?;
        // Only where runners name themselves do instances end by themselves: elsewhere
        // runscale terminates them with the desired capacity decremented.
        if !unknown {
            return Ok(());
        }
        let wanted = i32::try_from(wanted).unwrap_or(i32::MAX).max(group.min);
        if group.desired <= wanted {
            return Ok(());
        }
        // AWS removes unprotected members above the desired capacity: none may be.
        let unprotected: Vec<String> = group
            .instances
            .iter()
            .filter(|i| !is_leaving(i) && !i.protected)
            .map(|i| i.id.clone())
            .collect();
        if !unprotected.is_empty() {
            info!(pool = %pool, group = %group.name, instances = ?unprotected, "protecting members from scale-in before lowering the desired capacity");
            self.aws
                .set_protection(OP, &group.name, &unprotected, true)
                .await?;
            let mut k = lock(&state.known);
            for id in &unprotected {
                k.protected.insert(id.clone(), true);
            }
        }
        self.aws.set_desired(OP, &group.name, wanted).await?;
        info!(pool = %pool, group = %group.name, from = group.desired, to = wanted, members = live_members(&group), "desired capacity lowered: members that end by themselves are not replaced");
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        const OP: &str = "aws_asg.probe";
        let mut report = ProbeReport::default();
        let mut seen = Vec::new();
        let mut changes = Vec::new();
        let mut pools: Vec<(&PoolId, &PoolState)> = self.pools.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        for (pool, state) in pools {
            match self.describe(OP, pool, state).await {
                Ok(g) => {
                    if let Some((min, max)) = wanted_limits(state.max_size, &g) {
                        changes.push(format!(
                            "group {} MinSize {} -> {min} and MaxSize {} -> {max} (needs {})",
                            g.name,
                            g.min,
                            g.max,
                            action::UPDATE_GROUP
                        ));
                    } else if g.min != 0 {
                        report.problem(format!(
                            "pool {pool}: group {} has MinSize {}; runscale needs MinSize 0 to scale in",
                            g.name, g.min
                        ));
                    } else if g.max == 0 {
                        report.problem(format!(
                            "pool {pool}: group {} has MaxSize 0; runscale cannot launch (raise MaxSize, or set the template's max_size)",
                            g.name
                        ));
                    }
                    // Harmless permission checks: the instance id never exists.
                    if let Err(e) = self
                        .aws
                        .set_protection(OP, &g.name, &[PROBE_INSTANCE.to_owned()], false)
                        .await
                        && e.kind() == ErrorKind::Misconfigured
                        && e.message().contains("access denied")
                    {
                        report.denied(action::SET_PROTECTION);
                    }
                    let naming = if state.runner_name == RunnerName::Unknown {
                        "; runners named by the instances: an instance is retired only while no \
                         job waits or runs, and the desired capacity is lowered so members that \
                         end by themselves are not replaced"
                    } else {
                        ""
                    };
                    seen.push(format!(
                        "{pool} -> {} (min {}, desired {}, max {}, {} instances{naming})",
                        g.name,
                        g.min,
                        g.desired,
                        g.max,
                        g.instances.len()
                    ));
                }
                Err(e) => report.check::<()>(action::DESCRIBE_GROUPS, Err(e)),
            }
            let root = format!("{}/{pool}", self.config.ssm_prefix);
            let probe_param = self.binding_name(pool, PROBE_INSTANCE);
            self.aws
                .ssm
                .probe(OP, &root, &probe_param, &mut report)
                .await;
        }
        report.check(
            action::DESCRIBE_INSTANCES,
            self.aws.instance_group(OP, PROBE_INSTANCE).await,
        );
        report.finish(OP)?;
        let updates = if changes.is_empty() {
            String::new()
        } else {
            format!(
                "; size limits changed at the first pass: {}",
                changes.join(", ")
            )
        };
        let update_action = if self.pools.values().any(|p| p.max_size.is_some()) {
            format!(", {}", action::UPDATE_GROUP)
        } else {
            String::new()
        };
        Ok(format!(
            "aws-asg: {}{updates}; IAM checked: {}, {}, {}, {}, {}, {}; not checkable without side effects: {}, {}, {}, {}{update_action}",
            seen.join(", "),
            action::DESCRIBE_GROUPS,
            action::DESCRIBE_INSTANCES,
            action::SET_PROTECTION,
            action::GET_PARAMETER,
            action::PARAMETERS_BY_PATH,
            action::DELETE_PARAMETER,
            action::SET_DESIRED,
            action::TERMINATE,
            action::PUT_PARAMETER,
            action::KMS_ENCRYPT,
        ))
    }
}

/// The registration with the runner's name replaced by `name` wherever a (non-secret)
/// credential variable carries it, for runners named by their instance id.
fn renamed_registration(registration: &Registration, name: &str) -> Registration {
    let mut renamed = registration.clone();
    renamed.runner_name = name.to_owned();
    for value in renamed.credentials.vars.values_mut() {
        if *value == registration.runner_name {
            *value = name.to_owned();
        }
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states_map() {
        assert_eq!(state_of("Pending"), Some(InstanceState::Booting));
        assert_eq!(state_of("Pending:Wait"), Some(InstanceState::Booting));
        assert_eq!(state_of("InService"), Some(InstanceState::Running));
        assert_eq!(state_of("Standby"), Some(InstanceState::Running));
        assert_eq!(state_of("Terminating:Wait"), Some(InstanceState::Stopping));
        assert_eq!(state_of("Detaching"), Some(InstanceState::Stopping));
        assert_eq!(state_of("Terminated"), None);
    }

    #[test]
    fn renaming_replaces_the_name_in_variables_only() {
        use secrecy::{ExposeSecret, SecretString};
        let mut registration = Registration {
            runner_name: "rs-p-abc".to_owned(),
            runner_id: None,
            credentials: runscale_core::Credentials::default(),
        };
        let vars = &mut registration.credentials.vars;
        vars.insert("CIRCLECI_RUNNER_NAME".into(), "rs-p-abc".into());
        vars.insert("CIRCLECI_RUNNER_API_URL".into(), "https://x".into());
        registration
            .credentials
            .secrets
            .insert("TOKEN".into(), SecretString::from("rs-p-abc"));
        let renamed = renamed_registration(&registration, "i-0123");
        assert_eq!(renamed.runner_name, "i-0123");
        assert_eq!(renamed.credentials.vars["CIRCLECI_RUNNER_NAME"], "i-0123");
        assert_eq!(
            renamed.credentials.vars["CIRCLECI_RUNNER_API_URL"],
            "https://x"
        );
        assert_eq!(
            renamed.credentials.secrets["TOKEN"].expose_secret(),
            "rs-p-abc"
        );
    }
}
