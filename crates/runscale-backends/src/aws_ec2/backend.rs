//! The [`Backend`] implementation: launches with spot-to-on-demand fallback, inventory and
//! orphans by tag, terminations checked against the ownership tags, credential parameters
//! written and cleaned up.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runscale_core::adapter_type::{PoolContext, Template as _, Validate as _};
use runscale_core::{
    Backend, BackendEvent, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest,
    PoolId, Result, Timestamp,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::client::{
    Attempt, DryRun, Ec2, Ec2Instance, TAG_HASH, TAG_OWNER, TAG_POOL, TAG_RUNNER, action,
};
use super::config::{Config, LaunchApi, Market, PoolTemplate};
use crate::aws_common::ssm::{Ssm, credentials_name, credentials_value};
use crate::aws_common::{ProbeReport, build_pools, load_sdk, lock, misconfigured, unknown_pool};

/// How often leftover credential parameters are swept, besides the first listing of a pool.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How long an instance this process launched is listed even if DescribeInstances does not
/// show it yet (EC2's API is eventually consistent).
const LISTING_LAG: Duration = Duration::from_secs(120);
/// An instance id that never exists, for dry runs.
const PROBE_INSTANCE: &str = "i-00000000000000000";

/// Event: spot had no capacity and the instance was launched on-demand.
pub(crate) const EVENT_FALLBACK: &str = "spot_fallback_on_demand";
/// Event: a spot attempt found no capacity in any override.
pub(crate) const EVENT_NO_SPOT: &str = "spot_no_capacity";
/// Event: an instance was launched on spot capacity.
pub(crate) const EVENT_SPOT: &str = "launched_spot";
/// Event: an instance was launched on on-demand capacity.
pub(crate) const EVENT_ON_DEMAND: &str = "launched_on_demand";

/// Instance states DescribeInstances is asked for (everything but `terminated`).
const LIVE_STATES: &[&str] = &["pending", "running", "shutting-down", "stopping", "stopped"];

#[derive(Default)]
struct Known {
    /// Instances this process launched, with when, until the listing shows them.
    recent: HashMap<String, (Instant, Instance)>,
    /// Instances whose credentials parameter is already deleted.
    credentials_gone: HashSet<String>,
    last_sweep: Option<Instant>,
}

struct PoolState {
    template: PoolTemplate,
    /// Held shared by each launch from the instance's creation to its credentials parameter,
    /// and exclusively by a sweep, which thus never deletes a parameter being handed over.
    /// Launches of a pool run concurrently.
    act: tokio::sync::RwLock<()>,
    known: Mutex<Known>,
}

/// The aws-ec2 backend. See the [module docs](super).
pub struct AwsEc2 {
    config: Config,
    ec2: Ec2,
    ssm: Ssm,
    pools: HashMap<PoolId, PoolState>,
    /// The served pool orphans are listed under (the first by name).
    orphan_pool: Option<PoolId>,
    events: Mutex<Vec<BackendEvent>>,
}

impl std::fmt::Debug for AwsEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsEc2")
            .field("config", &self.config)
            .field("pools", &self.pools.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Maps EC2's instance state to ours; `None` for instances that are gone.
fn state_of(name: &str) -> Option<InstanceState> {
    match name {
        "pending" => Some(InstanceState::Booting),
        "running" => Some(InstanceState::Running),
        "terminated" => None,
        // shutting-down, stopping, stopped
        _ => Some(InstanceState::Stopping),
    }
}

/// A client token (at most 64 characters, stable for one runner and market).
fn client_token(owner: &str, pool: &str, runner: &str, market: &str) -> String {
    let digest = Sha256::digest(format!("{owner}\n{pool}\n{runner}").as_bytes());
    format!("rs-{}-{market}", hex::encode(&digest[..16]))
}

impl AwsEc2 {
    /// Builds the backend from an SDK configuration (region, credentials, endpoint already
    /// set); no AWS call is made. The settings and templates are validated first.
    pub fn new(
        config: Config,
        templates: HashMap<PoolId, PoolTemplate>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self> {
        let pools = build_pools(
            "aws_ec2.config",
            config.validate().err().unwrap_or_default(),
            templates,
            sdk,
            |pool, template| {
                template.validate_for(PoolContext::single(pool.as_str()))?;
                Ok(PoolState {
                    template,
                    act: tokio::sync::RwLock::new(()),
                    known: Mutex::new(Known::default()),
                })
            },
        )?;
        let orphan_pool = pools.keys().min().cloned();
        Ok(Self {
            ec2: Ec2::new(sdk, config.max_attempts),
            ssm: Ssm::new(sdk, config.max_attempts),
            config,
            pools,
            orphan_pool,
            events: Mutex::new(Vec::new()),
        })
    }

    /// Builds the backend with the SDK's default credential chain (environment, profile, web
    /// identity, container and instance metadata) and the configured region and endpoint.
    pub async fn connect(config: Config, templates: HashMap<PoolId, PoolTemplate>) -> Result<Self> {
        config
            .validate()
            .map_err(|e| misconfigured("aws_ec2.config", e))?;
        let sdk = load_sdk(config.region.as_deref(), config.endpoint_url.as_deref()).await;
        Self::new(config, templates, &sdk)
    }

    fn pool(&self, pool: &PoolId) -> Result<&PoolState> {
        self.pools
            .get(pool)
            .ok_or_else(|| unknown_pool("aws_ec2", "aws-ec2", pool))
    }

    fn event(&self, pool: &PoolId, event: &'static str) {
        lock(&self.events).push(BackendEvent {
            pool: pool.clone(),
            event,
        });
    }

    fn credentials_name(&self, pool: &PoolId, id: &str) -> String {
        credentials_name(&self.config.ssm_prefix, pool.as_str(), id)
    }

    /// The tags of a new instance.
    fn tags(&self, pool: &PoolId, runner: &str, template_hash: &str) -> Vec<(String, String)> {
        [
            (TAG_OWNER, self.config.owner.as_str()),
            (TAG_POOL, pool.as_str()),
            (TAG_RUNNER, runner),
            (TAG_HASH, template_hash),
            ("Name", runner),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Whether `pool` may act on an instance tagged with `tagged` (its own, or an orphan's
    /// when `pool` is the one orphans are listed under).
    fn may_act(&self, pool: &PoolId, tagged: Option<&str>) -> bool {
        match tagged {
            Some(p) if p == pool.as_str() => true,
            Some(p) if self.pools.contains_key(&PoolId::new(p)) => false,
            _ => self.orphan_pool.as_ref() == Some(pool),
        }
    }

    /// One attempt on one market, with the configured call.
    async fn attempt(
        &self,
        template: &PoolTemplate,
        spot: bool,
        tags: &[(String, String)],
        token: &str,
    ) -> Result<Attempt> {
        const OP: &str = "aws_ec2.launch";
        match self.config.api {
            LaunchApi::CreateFleet => self.ec2.create_fleet(OP, template, spot, tags, token).await,
            LaunchApi::RunInstances => {
                self.ec2
                    .run_instances(OP, template, spot, tags, token)
                    .await
            }
        }
    }

    /// Terminates a just-launched instance whose hand-over failed (best effort: otherwise the
    /// policy terminates it after boot_timeout, as its runner never registers).
    async fn abandon(&self, pool: &PoolId, id: &str, why: &Error) {
        warn!(pool = %pool, instance = %id, error = %why, "the runner's credentials could not be handed over; terminating the new instance");
        if let Err(e) = self.ec2.terminate("aws_ec2.launch", id).await {
            warn!(pool = %pool, instance = %id, error = %e, "terminating the new instance failed; the policy terminates it after boot_timeout");
        }
    }

    /// Deletes credential parameters of `pool` whose instance is not alive.
    async fn sweep(&self, pool: &PoolId, state: &PoolState, alive: &HashSet<String>) -> Result<()> {
        const OP: &str = "aws_ec2.instances";
        let due = lock(&state.known)
            .last_sweep
            .is_none_or(|t| t.elapsed() >= SWEEP_INTERVAL);
        if !due {
            return Ok(());
        }
        // Never while a launch is between "instance created" and "parameter written".
        let Ok(_guard) = state.act.try_write() else {
            return Ok(());
        };
        let root = format!("{}/{pool}", self.config.ssm_prefix);
        let recent: HashSet<String> = lock(&state.known).recent.keys().cloned().collect();
        for (name, _) in self.ssm.parameters_under(OP, &root).await? {
            let Some(id) = name.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if !id.starts_with("i-")
                || id.contains('/')
                || alive.contains(id)
                || recent.contains(id)
            {
                continue;
            }
            info!(pool = %pool, parameter = %name, "deleting the credentials parameter of an instance that is gone");
            self.ssm.delete_parameter(OP, &name).await?;
        }
        lock(&state.known).last_sweep = Some(Instant::now());
        Ok(())
    }

    /// Converts a listed instance of a served pool.
    fn instance(i: &Ec2Instance, st: InstanceState, now: Timestamp) -> Instance {
        Instance {
            id: InstanceId::new(&i.id),
            state: st,
            launched_at: i.launched_at.unwrap_or(now),
            template_hash: i.tag(TAG_HASH).unwrap_or_default().to_owned(),
            runner_names: i
                .tag(TAG_RUNNER)
                .unwrap_or_default()
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
            reused: None,
        }
    }
}

#[async_trait]
impl Backend for AwsEc2 {
    fn kind(&self) -> &'static str {
        "aws-ec2"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        const OP: &str = "aws_ec2.instances";
        let now = chrono::Utc::now();
        let served: Vec<&PoolId> = pools
            .iter()
            .filter(|p| self.pools.contains_key(*p))
            .collect();
        let mut out: HashMap<PoolId, Vec<Instance>> =
            served.iter().map(|p| ((*p).clone(), Vec::new())).collect();
        if served.is_empty() {
            return Ok(out);
        }
        let listed = self
            .ec2
            .describe_instances(
                OP,
                &format!("listing instances tagged {TAG_OWNER}={}", self.config.owner),
                &[
                    (
                        &format!("tag:{TAG_OWNER}") as &str,
                        vec![self.config.owner.clone()],
                    ),
                    (
                        "instance-state-name",
                        LIVE_STATES.iter().map(|s| (*s).to_owned()).collect(),
                    ),
                ],
            )
            .await?;
        let grace =
            chrono::Duration::from_std(self.config.orphan_grace).unwrap_or(chrono::Duration::MAX);
        let mut stopped = Vec::new();
        for i in &listed {
            // The filter is the server's; the owner is checked again here.
            if i.tag(TAG_OWNER) != Some(self.config.owner.as_str()) {
                continue;
            }
            let Some(st) = state_of(&i.state) else {
                continue;
            };
            let tagged = i.tag(TAG_POOL).unwrap_or_default();
            let pool = PoolId::new(tagged);
            let (target, instance) = if self.pools.contains_key(&pool) {
                (pool, Self::instance(i, st, now))
            } else {
                // An orphan: its pool is not served here.
                let Some(adopter) = self.orphan_pool.clone() else {
                    continue;
                };
                let launched = i.launched_at.unwrap_or(now);
                if now - launched < grace && st != InstanceState::Stopping {
                    continue;
                }
                info!(instance = %i.id, pool = %tagged, adopted_by = %adopter, "an instance of a pool this backend does not serve; listing it for termination");
                let mut inst = Self::instance(i, st, now);
                inst.runner_names.clear();
                (adopter, inst)
            };
            if i.state == "stopped" {
                stopped.push((target.clone(), i.id.clone()));
            }
            if let Some(list) = out.get_mut(&target) {
                list.push(instance);
            }
        }
        // A stopped instance's runner has exited: nothing can run there any more.
        for (pool, id) in stopped {
            info!(pool = %pool, instance = %id, "the instance stopped by itself; terminating it");
            if let Err(e) = self.ec2.terminate(OP, &id).await {
                warn!(pool = %pool, instance = %id, error = %e, "terminating a stopped instance failed; retried at the next listing");
            }
        }
        for pool in served {
            let Some(state) = self.pools.get(pool) else {
                continue;
            };
            let Some(list) = out.get_mut(pool) else {
                continue;
            };
            let seen: HashSet<String> = list.iter().map(|i| i.id.to_string()).collect();
            {
                let mut k = lock(&state.known);
                k.recent
                    .retain(|id, (at, _)| !seen.contains(id) && at.elapsed() < LISTING_LAG);
                list.extend(k.recent.values().map(|(_, i)| i.clone()));
                k.credentials_gone.retain(|id| seen.contains(id));
            }
            self.sweep(pool, state, &seen).await?;
        }
        Ok(out)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        const OP: &str = "aws_ec2.launch";
        let pool = &request.pool;
        let state = self.pool(pool)?;
        let [registration] = request.runners.as_slice() else {
            return Err(Error::new(
                OP,
                ErrorKind::Misconfigured,
                format!(
                    "pool {pool}: an aws-ec2 instance hosts exactly one runner (runners_per_instance must be 1, got {})",
                    request.runners.len()
                ),
            ));
        };
        let runner = registration.runner_name.as_str();
        // Refuse bad credentials before anything is launched.
        credentials_value(
            pool.as_str(),
            PROBE_INSTANCE,
            &request.template_hash,
            registration,
        )
        .map_err(|problem| Error::new(OP, ErrorKind::Misconfigured, problem))?;
        let template = &state.template;
        let markets: &[bool] = match template.market {
            Market::SpotFirst => &[true, false],
            Market::Spot => &[true],
            Market::OnDemand => &[false],
        };
        let tags = self.tags(pool, runner, &request.template_hash);
        let _guard = state.act.read().await;
        let mut no_capacity: Vec<String> = Vec::new();
        let mut launched = None;
        for &spot in markets {
            let market = if spot { "spot" } else { "on-demand" };
            let token = client_token(&self.config.owner, pool.as_str(), runner, market);
            match self.attempt(template, spot, &tags, &token).await? {
                Attempt::Launched(id) => {
                    launched = Some((id, spot));
                    break;
                }
                Attempt::NoCapacity(errors) => {
                    if spot {
                        self.event(pool, EVENT_NO_SPOT);
                    }
                    warn!(pool = %pool, market, template = %template.describe(), errors = %errors.join("; "), "no {market} capacity in any instance type and subnet");
                    no_capacity.extend(errors.into_iter().map(|e| format!("{market}: {e}")));
                }
            }
        }
        let Some((id, spot)) = launched else {
            return Err(Error::new(
                OP,
                ErrorKind::InsufficientCapacity,
                format!(
                    "pool {pool}: no capacity for {}: {}",
                    template.describe(),
                    no_capacity.join("; ")
                ),
            ));
        };
        if spot {
            self.event(pool, EVENT_SPOT);
        } else {
            self.event(pool, EVENT_ON_DEMAND);
            if template.market == Market::SpotFirst {
                self.event(pool, EVENT_FALLBACK);
                warn!(pool = %pool, instance = %id, spot_errors = %no_capacity.join("; "), "spot had no capacity; launched on-demand instead");
            }
        }
        let now = chrono::Utc::now();
        let value = credentials_value(pool.as_str(), &id, &request.template_hash, registration)
            .map_err(|problem| Error::new(OP, ErrorKind::Misconfigured, problem));
        let written = match value {
            Ok(v) => {
                self.ssm
                    .put_parameter(OP, &self.credentials_name(pool, &id), v, true)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.abandon(pool, &id, &e).await;
            return Err(e);
        }
        let instance = Instance {
            id: InstanceId::new(&id),
            state: InstanceState::Booting,
            launched_at: now,
            template_hash: request.template_hash.clone(),
            runner_names: vec![runner.to_owned()],
            reused: None,
        };
        lock(&state.known)
            .recent
            .insert(id.clone(), (Instant::now(), instance.clone()));
        info!(pool = %pool, instance = %id, runner, market = if spot { "spot" } else { "on-demand" }, "instance launched");
        Ok(instance)
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        const OP: &str = "aws_ec2.terminate";
        let state = self.pool(pool)?;
        let id = instance.as_str();
        lock(&state.known).recent.remove(id);
        // The credentials parameter is named after the pool the instance was launched for
        // (an orphan's is not this pool).
        let mut param_pool = pool.clone();
        match self.ec2.describe_instance(OP, id).await? {
            None => debug!(pool = %pool, instance = %id, "instance unknown to EC2"),
            Some(i) if i.tag(TAG_OWNER) != Some(self.config.owner.as_str()) => {
                warn!(pool = %pool, instance = %id, "instance does not carry this backend's owner tag; left alone");
                return Ok(());
            }
            Some(i) if !self.may_act(pool, i.tag(TAG_POOL)) => {
                warn!(pool = %pool, instance = %id, tagged = i.tag(TAG_POOL).unwrap_or_default(), "instance belongs to another pool; left alone");
                return Ok(());
            }
            Some(i) => {
                if let Some(p) = i.tag(TAG_POOL)
                    && crate::aws_common::pool_name_problem(p).is_none()
                {
                    param_pool = PoolId::new(p);
                }
                if matches!(i.state.as_str(), "shutting-down" | "terminated") {
                    debug!(pool = %pool, instance = %id, state = %i.state, "instance already going");
                } else {
                    self.ec2.terminate(OP, id).await?;
                    info!(pool = %pool, instance = %id, "instance terminated");
                }
            }
        }
        self.ssm
            .delete_parameter(OP, &self.credentials_name(&param_pool, id))
            .await?;
        lock(&state.known).credentials_gone.insert(id.to_owned());
        Ok(())
    }

    async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        const OP: &str = "aws_ec2.mark_busy";
        let Some(state) = self.pools.get(pool) else {
            return Ok(());
        };
        let pending: Vec<String> = {
            let k = lock(&state.known);
            busy.iter()
                .filter(|i| !k.credentials_gone.contains(i.as_str()))
                .map(|i| i.to_string())
                .collect()
        };
        // A busy runner has registered: its credentials are no longer needed.
        for id in pending {
            self.ssm
                .delete_parameter(OP, &self.credentials_name(pool, &id))
                .await?;
            lock(&state.known).credentials_gone.insert(id);
        }
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        const OP: &str = "aws_ec2.probe";
        let mut report = ProbeReport::default();
        let mut pools: Vec<(&PoolId, &PoolState)> = self.pools.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        let mut seen = Vec::new();
        let mut checked: Vec<&'static str> = Vec::new();
        for (pool, state) in &pools {
            match self.ec2.check_template(OP, &state.template).await {
                Ok(()) => seen.push(format!("{pool} -> {}", state.template.describe())),
                Err(e) => report.check::<()>(action::DESCRIBE_TEMPLATES, Err(e)),
            }
            let tags = self.tags(pool, "probe", "probe");
            let fleet = self.config.api == LaunchApi::CreateFleet;
            let dry_runs = self
                .ec2
                .dry_runs(OP, &state.template, fleet, PROBE_INSTANCE, &tags)
                .await;
            for (act, verdict) in dry_runs {
                match verdict {
                    DryRun::Allowed => {}
                    DryRun::Denied => report.denied(act),
                    DryRun::Failed(e) => report.problem(e.to_string()),
                }
                if !checked.contains(&act) {
                    checked.push(act);
                }
            }
            let root = format!("{}/{pool}", self.config.ssm_prefix);
            let probe_param = self.credentials_name(pool, PROBE_INSTANCE);
            self.ssm.probe(OP, &root, &probe_param, &mut report).await;
        }
        report.finish(OP)?;
        Ok(format!(
            "aws-ec2 (owner {}): {}; IAM checked by dry run: {}; SSM checked: {}, {}, {}; not checkable without side effects: {}, {}, {}, {}",
            self.config.owner,
            seen.join(", "),
            checked.join(", "),
            crate::aws_common::ssm::action::PARAMETERS_BY_PATH,
            crate::aws_common::ssm::action::GET_PARAMETER,
            crate::aws_common::ssm::action::DELETE_PARAMETER,
            action::CREATE_TAGS,
            action::PASS_ROLE,
            crate::aws_common::ssm::action::PUT_PARAMETER,
            crate::aws_common::ssm::action::KMS_ENCRYPT,
        ))
    }

    fn take_events(&self) -> Vec<BackendEvent> {
        std::mem::take(&mut *lock(&self.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_states_map() {
        assert_eq!(state_of("pending"), Some(InstanceState::Booting));
        assert_eq!(state_of("running"), Some(InstanceState::Running));
        for s in ["shutting-down", "stopping", "stopped"] {
            assert_eq!(state_of(s), Some(InstanceState::Stopping), "{s}");
        }
        assert_eq!(state_of("terminated"), None);
    }

    #[test]
    fn client_tokens_are_short_stable_and_per_market() {
        let a = client_token("o", "p", "rs-p-aaaaaaaaaa", "spot");
        assert_eq!(a, client_token("o", "p", "rs-p-aaaaaaaaaa", "spot"));
        assert_ne!(a, client_token("o", "p", "rs-p-aaaaaaaaaa", "on-demand"));
        assert_ne!(a, client_token("o", "p", "rs-p-bbbbbbbbbb", "spot"));
        // RunInstances appends "-{override}"; AWS allows 64 characters.
        assert!(client_token("o", "p", "r", "on-demand").len() + 3 <= 64);
    }
}
