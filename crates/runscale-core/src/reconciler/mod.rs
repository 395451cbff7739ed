//! The reconciler: one task per pool, woken by a timer, webhooks and backend events.
//!
//! - Triggers coalesce: any number of wake-ups during a pass cause one more pass.
//! - Passes of one pool never overlap; pools run concurrently under a global limit.
//! - Observations are batched per provider and per backend ([`batch`]): pools woken together
//!   share one API call.
//! - Errors are per pool: a failing pool backs off ([`backoff`]: exponential with full jitter,
//!   seconds for transient errors) and the others keep working. The back-off delays only the
//!   timer: a webhook or a backend event still starts a pass, except while a server asked to
//!   wait (`Retry-After`) or the configuration is wrong.
//! - Wake-ups within [`Options::coalesce_window`] of a pass's end are served by one pass at the
//!   window's end; a lone wake-up after a quiet spell starts its pass at once.
//! - Shutdown: once the token is cancelled no new pass and no new launch starts; in-flight
//!   passes finish within `shutdown_timeout`.
//!
//! Not here: the policy (pure, in [`crate::policy`]) and the adapters.

mod backoff;
mod batch;
mod history;
mod pass;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use backoff::backoff;
use batch::{BatchCall, Batcher};
use pass::{PassContext, PoolRuntime};
pub use status::PoolStatus;

use crate::adapter::{Backend, Provider, ProviderView, WebhookRequest};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::instrument::{InstrumentedBackend, InstrumentedProvider};
use crate::metrics::{Metrics, PoolLabels, WebhookLabels};
use crate::model::{Instance, PoolId, PoolSpec};
use crate::plan::Plan;

/// A pool with the adapters it is bound to.
pub struct PoolBinding {
    /// Limits and timeouts.
    pub spec: PoolSpec,
    /// Configured name of the provider (the account); pools with the same name share it.
    pub provider_name: String,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// Configured name of the backend; pools with the same name share it.
    pub backend_name: String,
    /// The backend.
    pub backend: Arc<dyn Backend>,
}

/// Reconciler settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// A pool with nothing due is still reconciled this often.
    pub interval: Duration,
    /// Passes running at once, over all pools.
    pub max_concurrent_passes: usize,
    /// Compute and log plans, act on nothing.
    pub dry_run: bool,
    /// How long in-flight passes may take to finish after shutdown was requested.
    pub shutdown_timeout: Duration,
    /// First backoff after a failed pass.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Wake-ups (webhooks, backend events) within this time after a pass of the pool ended
    /// are served by one pass at its end: a burst becomes one pass per pool per window, and a
    /// lone wake-up after a quiet spell starts its pass at once.
    pub coalesce_window: Duration,
    /// When the CI system cannot be read (a 5xx answer, a timeout, throttling), a pool plans on
    /// its last fresh view if it is at most this old: it may launch for the demand it knew,
    /// and removes nothing (see [`crate::policy`]). Older than this, the pass fails and the
    /// pool waits.
    pub view_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            max_concurrent_passes: 16,
            dry_run: false,
            shutdown_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            coalesce_window: Duration::from_secs(1),
            view_max_age: Duration::from_secs(60),
        }
    }
}

/// The outcome of one pass of one pool.
#[derive(Debug)]
pub struct PassReport {
    /// The pool.
    pub pool: PoolId,
    /// The plan carried out (or, with `dry_run`, only logged), or why the pass failed.
    pub outcome: Result<Plan>,
}

struct Shared {
    pools: Vec<Arc<PoolRuntime>>,
    by_name: HashMap<PoolId, usize>,
    providers: HashMap<String, Arc<dyn Provider>>,
}

/// Cheap handle to a reconciler: wake pools, feed webhooks, read status.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// A pool that has neither completed a pass nor been working on one for this long makes
    /// the reconciler not ready ([`Handle::not_ready`]).
    stale_after: Duration,
    /// A pool's view of its CI system older than this is shown as stale (two intervals).
    fresh_for: Duration,
}

impl Handle {
    /// Wakes a pool for an early pass. Returns false for an unknown pool.
    pub fn wake(&self, pool: &PoolId) -> bool {
        match self.shared.by_name.get(pool) {
            Some(&i) => {
                let rt = &self.shared.pools[i];
                if !rt.dirty.swap(true, Ordering::AcqRel) {
                    rt.notify.notify_one();
                }
                true
            }
            None => false,
        }
    }

    /// Hands a webhook delivery to the provider configured as `provider_name` and wakes the
    /// pools it names. Errors: [`ErrorKind::NotFound`] for an unknown provider, else the
    /// provider's verdict (bad signature, malformed body).
    /// Every delivery is counted in `runscale_webhook_deliveries` by outcome.
    pub fn webhook(&self, provider_name: &str, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let count = |provider: &str, outcome: &'static str| {
            self.metrics
                .webhooks
                .get_or_create(&WebhookLabels {
                    provider: provider.to_owned(),
                    outcome,
                })
                .inc();
        };
        let Some(provider) = self.shared.providers.get(provider_name) else {
            count("", "unknown_provider");
            return Err(Error::new(
                "webhook",
                ErrorKind::NotFound,
                format!("no provider named {provider_name:?}"),
            ));
        };
        match provider.webhook(request) {
            Ok(pools) => {
                count(provider_name, "accepted");
                Ok(pools.into_iter().filter(|p| self.wake(p)).collect())
            }
            Err(e) => {
                let outcome = match e.kind() {
                    ErrorKind::Misconfigured => "unauthenticated",
                    ErrorKind::Protocol => "malformed",
                    _ => "failed",
                };
                count(provider_name, outcome);
                Err(e)
            }
        }
    }

    /// A snapshot of every pool's status, in configuration order, with the age of what is
    /// known of each as of now.
    pub fn status(&self) -> Vec<PoolStatus> {
        let now = self.clock.now();
        self.shared
            .pools
            .iter()
            .map(|p| {
                let mut status = p.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let age = status
                    .last_observation
                    .as_ref()
                    .and_then(|o| o.view_at)
                    .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO));
                status.view_age_secs = age.map(|a| a.as_secs_f64());
                status.stale = age.is_none_or(|a| a > self.fresh_for);
                status
            })
            .collect()
    }

    /// The API budget each provider account last reported (accounts without one are left out),
    /// sorted by account name.
    pub fn budgets(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .shared
            .providers
            .iter()
            .filter_map(|(name, p)| p.rate_limit_remaining().map(|left| (name.clone(), left)))
            .collect();
        out.sort();
        out
    }

    /// True once every pool has completed a pass (successful or not) and none has stalled:
    /// see [`Handle::not_ready`].
    pub fn ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the reconciler is not ready, if it is not: a pool has not completed its first pass,
    /// or has neither completed a pass nor worked on one for `stale_after` (three intervals,
    /// and at least the longest back-off plus an interval: a pool backing off is alive).
    pub fn not_ready(&self) -> Option<String> {
        let now = self.clock.now();
        for p in &self.shared.pools {
            let last = {
                let status = p.status.lock().unwrap_or_else(|e| e.into_inner());
                if status.passes == 0 {
                    return Some(format!(
                        "pool {} has not completed its first pass",
                        p.spec.name
                    ));
                }
                status.last_pass_at
            };
            let working = *p.pass_started_at.lock().unwrap_or_else(|e| e.into_inner());
            let alive = last.max(working);
            let stale = alive
                .and_then(|t| (now - t).to_std().ok())
                .is_some_and(|age| age > self.stale_after);
            if stale {
                return Some(format!(
                    "pool {} has not completed a pass for more than {}s",
                    p.spec.name,
                    self.stale_after.as_secs()
                ));
            }
        }
        None
    }
}

/// The pause before a dead pool task is started again, times its restarts so far.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// The longest such pause.
const RESTART_PAUSE_MAX: Duration = Duration::from_secs(60);

/// Drives every pool.
pub struct Reconciler {
    shared: Arc<Shared>,
    backends: Vec<Arc<dyn Backend>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    options: Options,
    semaphore: Arc<Semaphore>,
    stopping: CancellationToken,
}

struct ObserveCall(Arc<InstrumentedProvider>);

impl BatchCall<ProviderView> for ObserveCall {
    fn call<'a>(
        &'a self,
        pools: &'a [PoolId],
    ) -> Pin<Box<dyn Future<Output = HashMap<PoolId, Result<ProviderView>>> + Send + 'a>> {
        Box::pin(self.0.observe(pools))
    }
}

struct InstancesCall(Arc<InstrumentedBackend>);

impl BatchCall<Vec<Instance>> for InstancesCall {
    fn call<'a>(
        &'a self,
        pools: &'a [PoolId],
    ) -> Pin<Box<dyn Future<Output = HashMap<PoolId, Result<Vec<Instance>>>> + Send + 'a>> {
        Box::pin(async move {
            match self.0.instances(pools).await {
                Ok(mut found) => pools
                    .iter()
                    .map(|p| (p.clone(), Ok(found.remove(p).unwrap_or_default())))
                    .collect(),
                Err(e) => pools.iter().map(|p| (p.clone(), Err(e.clone()))).collect(),
            }
        })
    }
}

impl Reconciler {
    /// Builds the reconciler. Adapters are wrapped so every call is measured. Must be called
    /// within a tokio runtime (it starts the batching tasks).
    pub fn new(
        pools: Vec<PoolBinding>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Self {
        type ByName<A, V> = HashMap<String, (Arc<A>, Batcher<V>)>;
        // The concrete wrappers: the reconciler awaits their calls without boxing them.
        let mut providers: ByName<InstrumentedProvider, ProviderView> = HashMap::new();
        let mut backends: ByName<InstrumentedBackend, Vec<Instance>> = HashMap::new();
        let mut runtimes = Vec::with_capacity(pools.len());
        let mut by_name = HashMap::with_capacity(pools.len());
        for b in pools {
            let (provider, observe) = providers
                .entry(b.provider_name.clone())
                .or_insert_with(|| {
                    let p = Arc::new(InstrumentedProvider::new(
                        b.provider,
                        b.provider_name.clone(),
                        metrics.clone(),
                    ));
                    let batcher = Batcher::spawn("observe", Arc::new(ObserveCall(p.clone())));
                    (p, batcher)
                })
                .clone();
            let (backend, instances) = backends
                .entry(b.backend_name.clone())
                .or_insert_with(|| {
                    let be = Arc::new(InstrumentedBackend::new(
                        b.backend,
                        b.backend_name.clone(),
                        metrics.clone(),
                    ));
                    let batcher = Batcher::spawn("instances", Arc::new(InstancesCall(be.clone())));
                    (be, batcher)
                })
                .clone();
            by_name.insert(b.spec.name.clone(), runtimes.len());
            runtimes.push(Arc::new(PoolRuntime {
                status: Mutex::new(PoolStatus::new(&b.spec, &b.provider_name, &b.backend_name)),
                spec: b.spec,
                provider,
                backend,
                observe,
                instances,
                notify: Notify::new(),
                dirty: AtomicBool::new(false),
                memory: Mutex::new(Default::default()),
                pass_started_at: Mutex::new(None),
                series: Default::default(),
            }));
        }
        let shared = Arc::new(Shared {
            pools: runtimes,
            by_name,
            providers: providers
                .into_iter()
                .map(|(k, (p, _))| (k, p as Arc<dyn Provider>))
                .collect(),
        });
        Self {
            shared,
            backends: backends
                .into_values()
                .map(|(b, _)| b as Arc<dyn Backend>)
                .collect(),
            clock,
            semaphore: Arc::new(Semaphore::new(options.max_concurrent_passes.max(1))),
            metrics,
            options,
            stopping: CancellationToken::new(),
        }
    }

    /// A handle for the HTTP server and webhooks.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            stale_after: (self.options.interval.saturating_mul(3)).max(
                self.options
                    .backoff_max
                    .saturating_add(self.options.interval),
            ),
            fresh_for: self.options.interval.saturating_mul(2),
        }
    }

    fn context(&self) -> PassContext<'_> {
        PassContext {
            clock: self.clock.as_ref(),
            metrics: &self.metrics,
            dry_run: self.options.dry_run,
            stopping: &self.stopping,
            interval: self.options.interval,
            backoff_base: self.options.backoff_base,
            backoff_max: self.options.backoff_max,
            view_max_age: self.options.view_max_age,
        }
    }

    /// Seeds the demand history of every warm pool from its CI system's recent job history
    /// (one read per provider account; see [`crate::forecast`]). [`Reconciler::run`] does this
    /// by itself, beside the first passes; call it only with [`Reconciler::once`].
    pub async fn seed_history(&self) {
        history::seed_all(&self.shared.pools, self.clock.as_ref(), &self.metrics).await;
    }

    /// Seeds the warm pools' histories in the background, beside the passes (see
    /// [`Reconciler::seed_history`]); given up at shutdown.
    fn spawn_seeding(this: &Arc<Self>, shutdown: &CancellationToken) {
        let this = this.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                () = this.seed_history() => {}
            }
        });
    }

    /// One pass over every pool (concurrently, under the global limit). Not to be run while
    /// [`Reconciler::run`] runs.
    pub async fn once(&self) -> Vec<PassReport> {
        let ctx = self.context();
        // Only as many passes as may run at once exist at a time (each is a future of about
        // a kilobyte and a half: all of them at once was 14 MB at 10,000 pools); the next
        // starts as soon as any ends. The semaphore is still taken, as by `run`'s pool tasks.
        let limit = self.options.max_concurrent_passes.max(1);
        let ctx = &ctx;
        // By index: a closure taking a reference would make this future's Send-ness depend on
        // a higher-ranked lifetime the compiler cannot prove.
        let passes = (0..self.shared.pools.len()).map(|i| {
            let rt = &self.shared.pools[i];
            let sem = &self.semaphore;
            async move {
                let _permit = sem.acquire().await;
                let (outcome, _) = rt.pass(ctx).await;
                let report = PassReport {
                    pool: rt.spec.name.clone(),
                    outcome,
                };
                (i, report)
            }
        });
        let mut reports: Vec<(usize, PassReport)> = futures::stream::iter(passes)
            .buffer_unordered(limit)
            .collect()
            .await;
        // In configuration order.
        reports.sort_unstable_by_key(|(i, _)| *i);
        reports.into_iter().map(|(_, report)| report).collect()
    }

    /// Runs until `shutdown` is cancelled, then lets in-flight passes finish (no new launch
    /// starts) for at most `shutdown_timeout`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<PoolId>();
        for b in &this.backends {
            b.subscribe(events_tx.clone());
        }
        drop(events_tx);
        Self::spawn_seeding(&this, &shutdown);
        let handle = this.handle();
        let forward_stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = forward_stop.cancelled() => break,
                    ev = events_rx.recv() => match ev {
                        Some(pool) => { handle.wake(&pool); }
                        None => break,
                    },
                }
            }
        });

        let mut tasks = tokio::task::JoinSet::new();
        let mut running = HashMap::new();
        for rt in this.shared.pools.iter().cloned() {
            let this = this.clone();
            let shutdown = shutdown.clone();
            let task = rt.clone();
            let id = tasks
                .spawn(async move { this.pool_loop(rt, shutdown).await })
                .id();
            running.insert(id, (task, 0u32));
        }
        info!(
            pools = this.shared.pools.len(),
            dry_run = this.options.dry_run,
            "reconciler started"
        );
        // A pool task that dies (a panic) is started again after a pause that grows with its
        // restarts, and counted; the other pools are not affected.
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(ended) = tasks.join_next_with_id() => {
                    let (id, panicked) = match ended {
                        Ok((id, ())) => (id, false),
                        Err(e) => (e.id(), e.is_panic()),
                    };
                    let Some((rt, restarts)) = running.remove(&id) else { continue };
                    if !panicked || shutdown.is_cancelled() {
                        continue;
                    }
                    let restarts = restarts.saturating_add(1);
                    this.metrics
                        .pool_restarts
                        .get_or_create(&PoolLabels { pool: rt.spec.name.to_string() })
                        .inc();
                    let pause = RESTART_PAUSE
                        .saturating_mul(restarts)
                        .min(RESTART_PAUSE_MAX);
                    error!(pool = %rt.spec.name, restarts, pause_s = pause.as_secs(), "pool task died; starting it again");
                    let this = this.clone();
                    let shutdown = shutdown.clone();
                    let task = rt.clone();
                    let id = tasks
                        .spawn(async move {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(pause) => {}
                            }
                            this.pool_loop(rt, shutdown).await
                        })
                        .id();
                    running.insert(id, (task, restarts));
                }
            }
        }
        this.stopping.cancel();
        info!("shutting down: no new launches; waiting for in-flight passes");
        let drained = tokio::time::timeout(this.options.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(timeout = ?this.options.shutdown_timeout, "in-flight passes did not finish in time; abandoning them");
            tasks.abort_all();
        }
        info!("reconciler stopped");
    }

    async fn pool_loop(&self, rt: Arc<PoolRuntime>, shutdown: CancellationToken) {
        let mut next = tokio::time::Instant::now();
        // When the last pass ended; the first wake-up is never held back.
        let mut last_end: Option<tokio::time::Instant> = None;
        // Whether a wake-up may end the wait (not while a server asked to wait, nor while the
        // configuration is wrong: then only the timer does).
        let mut wakeable = true;
        loop {
            let woken = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = rt.notify.notified(), if wakeable => true,
                _ = tokio::time::sleep_until(next) => false,
            };
            if woken && !rt.dirty.load(Ordering::Acquire) {
                // A permit left from before the last pass started (that pass served it).
                continue;
            }
            if woken && let Some(end) = last_end {
                // Coalesce: wake-ups arriving this soon after a pass share one pass at the
                // window's end (they are absorbed by the same notify permit meanwhile).
                let at = end + self.options.coalesce_window;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            let _permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                p = self.semaphore.acquire() => p,
            };
            rt.dirty.store(false, Ordering::Release);
            let ctx = self.context();
            let (outcome, delay) = rt.pass(&ctx).await;
            wakeable = outcome
                .as_ref()
                .err()
                .is_none_or(|e| backoff::wake_ends_backoff(e.kind()));
            let now = tokio::time::Instant::now();
            last_end = Some(now);
            next = now + delay;
        }
    }
}
