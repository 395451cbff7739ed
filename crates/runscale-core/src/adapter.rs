//! The two adapter traits: [`Provider`] (a CI system) and [`Backend`] (where runners run).
//!
//! Each has a handful of required async methods shaped like list / create / delete, with their
//! contracts written here. Optional abilities (webhooks, draining, backend events) are default
//! methods that do nothing, never methods that fail with "not implemented".
//!
//! No HTTP, SDK or Kubernetes type appears here: adapters convert at their edge.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Demand, Instance, InstanceId, PoolId, Runner, RunnerId};

/// What a provider sees of one pool: its demand and its runners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderView {
    /// Waiting and running jobs.
    pub demand: Demand,
    /// Runners owned by the pool (named by runscale for this pool).
    pub runners: Vec<Runner>,
    /// The provider could not refresh (throttled) and returned its last good view. The
    /// policy then launches for demand but removes nothing.
    pub stale: bool,
}

/// What a new runner needs to join the CI system. Handed to the backend, which must pass the
/// secrets through a channel nobody else can read (0600 file, Kubernetes Secret, SSM
/// SecureString), never argv, launch-template user data or logs.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Non-secret settings (server URL, labels), by variable name.
    pub vars: BTreeMap<String, String>,
    /// Secret settings (JIT config, token), by variable name.
    pub secrets: BTreeMap<String, SecretString>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("vars", &self.vars)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// All settings as (name, value) pairs, secrets exposed: only for the backend's private
    /// channel.
    pub fn expose_all(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                self.secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose_secret().to_owned())),
            )
            .collect()
    }
}

/// A runner registered with the CI system, ready to be started.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The runner's name (as passed to [`Provider::register`]).
    pub runner_name: String,
    /// The CI-side id, when registration creates the runner record up front (GitHub JIT).
    pub runner_id: Option<RunnerId>,
    /// What the runner needs to connect.
    pub credentials: Credentials,
}

/// A raw webhook delivery, as received.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body, unparsed (signatures are computed over these bytes).
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A CI system account: one GitHub org/App installation, one GitLab instance, ...
///
/// A provider is built with the selectors of every pool bound to it, so its methods take
/// only the pool's name.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Stable kind (`github`, `memory`, ...), for metric labels.
    fn kind(&self) -> &'static str;

    /// Observes a batch of pools in as few API calls as possible (one runner list serves every
    /// pool of the account). Returns one entry per requested pool; an account-wide failure is
    /// reported for each of them.
    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>>;

    /// Registers a new runner named `runner_name` for `pool` and returns what it needs to
    /// connect. Credentials are short-lived and per runner where the CI system allows it.
    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration>;

    /// Removes a runner from the CI system. `Ok` means the CI system confirmed it is gone (or
    /// it was already gone); an error of kind [`ErrorKind::Busy`](crate::ErrorKind::Busy)
    /// means it is running a job and stays. Only after `Ok` may its instance be terminated.
    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()>;

    /// Asks the CI system to give the runner no new job. Providers without such a notion keep
    /// the default, which does nothing.
    async fn drain(&self, _pool: &PoolId, _runner: &RunnerId) -> Result<()> {
        Ok(())
    }

    /// The instance launched for `runner_name` is gone and its runner never registered (the
    /// machine or pod died before the runner started, or was terminated at `boot_timeout`):
    /// give back whatever the registration holds in the CI system, e.g. a job reserved for this
    /// runner, so it is not stuck until a reservation expires. Best effort and idempotent; in
    /// dry-run it is not called. Providers that hold nothing per registration keep the
    /// default, which does nothing.
    async fn release(&self, _pool: &PoolId, _runner_name: &str) -> Result<()> {
        Ok(())
    }

    /// Verifies and parses a webhook delivery, returning the pools to wake. `Ok(vec![])` for a
    /// valid delivery that concerns no pool. Providers without webhooks keep the default,
    /// which wakes nothing.
    fn webhook(&self, _request: &WebhookRequest) -> Result<Vec<PoolId>> {
        Ok(Vec::new())
    }

    /// A read-only check that the account is reachable and the credentials work. Returns a
    /// one-line description of what was checked.
    async fn probe(&self) -> Result<String>;

    /// For a pool whose runners cannot be attributed to instances
    /// ([`PoolSpec::runners_unattributed`](crate::PoolSpec::runners_unattributed)): confirms
    /// with a fresh read, right before one of its instances is terminated, that no job of the
    /// pool waits or runs. `Ok` only on that proof; [`ErrorKind::Busy`](crate::ErrorKind::Busy)
    /// when a job waits or runs; any other error when the read failed (the instance stays).
    /// The default observes the pool once and requires a fresh view with no waiting and no
    /// running job; a provider whose reads can be ordered more tightly overrides it.
    async fn confirm_quiet(&self, pool: &PoolId) -> Result<()> {
        const OP: &str = "provider.confirm_quiet";
        let view = self
            .observe(std::slice::from_ref(pool))
            .await
            .remove(pool)
            .unwrap_or_else(|| {
                Err(Error::new(
                    OP,
                    ErrorKind::Transient,
                    format!("pool {pool} was not observed"),
                ))
            })?;
        if view.stale {
            return Err(Error::new(
                OP,
                ErrorKind::Transient,
                format!("pool {pool}: the CI system could not be read afresh"),
            ));
        }
        if !view.demand.waiting.is_empty() || view.demand.running > 0 {
            return Err(Error::new(
                OP,
                ErrorKind::Busy,
                format!(
                    "pool {pool}: {} jobs wait and {} run; any instance may be taking one",
                    view.demand.waiting.len(),
                    view.demand.running
                ),
            ));
        }
        Ok(())
    }

    /// The API budget left, as last reported by the CI system (e.g. GitHub's
    /// `x-ratelimit-remaining`). Providers without a budget keep the default, `None`.
    fn rate_limit_remaining(&self) -> Option<u64> {
        None
    }
}

/// What the backend needs to start one instance.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    /// The pool.
    pub pool: PoolId,
    /// One registration per slot; the instance is identified by these names.
    pub runners: Vec<Registration>,
    /// The hash of the template it is launched from (recorded on the instance).
    pub template_hash: String,
}

/// What the backend needs to hand an instance fresh runners after its runners all finished
/// and left ([`crate::PoolSpec::reuse`]).
#[derive(Clone, Debug)]
pub struct ReuseRequest {
    /// The pool.
    pub pool: PoolId,
    /// The instance, as listed (still alive, no runner of it registered).
    pub instance: InstanceId,
    /// One fresh registration per slot: the instance's runner names from now on.
    pub runners: Vec<Registration>,
    /// Registrations the instance will have served once these are, the first included.
    pub uses: u32,
}

/// Something notable a backend did that is worth counting, beyond the call's outcome: a spot
/// launch that fell back to on-demand capacity, a group at its size limit, ... Counted by the
/// instrumenting wrapper under `runscale_backend_events_total{account, pool, event}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEvent {
    /// The pool it concerns.
    pub pool: PoolId,
    /// A stable, static name (a metric label, so never built from data), e.g.
    /// `spot_fallback_on_demand`.
    pub event: &'static str,
}

/// Somewhere runners run: local processes, pods, EC2 instances, an Auto Scaling group.
///
/// A backend is built with the template of every pool bound to it. Instances carry the pool,
/// the runner names and the template hash (tags, labels, a state file), so a restarted
/// runscale finds everything it launched.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stable kind (`local-process`, `memory`, ...), for metric labels.
    fn kind(&self) -> &'static str;

    /// Lists the instances of a batch of pools (not yet terminated ones, `stopping` included).
    /// Must include instances this process launched even if the backend's own listing lags.
    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>>;

    /// Starts one instance hosting the given runners.
    async fn launch(&self, request: LaunchRequest) -> Result<Instance>;

    /// Terminates an instance. Idempotent: terminating an instance that is gone or going is
    /// `Ok`.
    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()>;

    /// A read-only check that the backend is usable with this configuration.
    async fn probe(&self) -> Result<String>;

    /// Hands an instance whose runners all finished and left fresh registrations: it starts
    /// one runner per registration without rebooting, and from now on lists these runner
    /// names, `uses` and the time of the hand-over ([`Instance::reused`]), also after a
    /// restart of runscale (and while its own listing lags). An error leaves the instance as
    /// it was; the reconciler then terminates it.
    ///
    /// The one exception to "optional abilities do nothing by default": a backend type that
    /// cannot reuse instances ([`BackendType::reuses_instances`](crate::BackendType) is
    /// `false`) keeps this default, which refuses; the configuration rejects `reuse` for its
    /// pools, so it is not called.
    async fn reuse(&self, request: ReuseRequest) -> Result<()> {
        Err(Error::new(
            "backend.reuse",
            ErrorKind::Misconfigured,
            format!(
                "the {} backend cannot reuse instances (pool {})",
                self.kind(),
                request.pool
            ),
        ))
    }

    /// Tells the backend which instances of `pool` host a runner that is running a job, so it
    /// can shield them from disruption by others (cluster autoscalers, node consolidation,
    /// eviction). Level-triggered: called after every fresh observation with the complete
    /// list, so every other instance of the pool is not busy (any protection added earlier
    /// should be lifted). Not called in dry-run or on a stale observation. An error is logged
    /// and the pass goes on; the next pass calls again. Default: nothing.
    async fn mark_busy(&self, _pool: &PoolId, _busy: &[InstanceId]) -> Result<()> {
        Ok(())
    }

    /// Tells the backend how many instances `pool` wants now (the plan's `desired_instances`),
    /// after every pass that acted on a fresh observation (not in dry-run). A backend whose
    /// cloud keeps a target size of its own and replaces instances that end (an Auto Scaling
    /// group's desired capacity) may lower that target to `wanted`, so that instances that
    /// end by themselves are not replaced; it must never stop an instance by doing so, and
    /// never raise the target (launches do). An error is logged and the pass goes on.
    /// Default: nothing.
    async fn lower_target(&self, _pool: &PoolId, _wanted: u32) -> Result<()> {
        Ok(())
    }

    /// Takes the [`BackendEvent`]s recorded since the last call. The instrumenting wrapper calls
    /// it after every call and counts them, so adapter code never touches metrics. Default:
    /// none. Wrappers that forward calls to another backend must forward this too.
    fn take_events(&self) -> Vec<BackendEvent> {
        Vec::new()
    }

    /// Subscribes to instance changes the backend notices by itself (a process exited, a pod
    /// failed): the pool is sent so it is reconciled early. Default: no events.
    fn subscribe(&self, _events: mpsc::UnboundedSender<PoolId>) {}
}
