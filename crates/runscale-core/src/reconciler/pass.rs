//! One pass over one pool: observe, plan (pure), act, record.
//!
//! A pass is not told why it woke; it always looks at the whole world, so running it twice is
//! harmless. It returns when to come back; every error goes through [`super::backoff`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use foldhash::HashSet as FastSet;
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::Batcher;
use super::status::{ActionRecord, ErrorView, ObservationSummary, PoolStatus};
use crate::adapter::{LaunchRequest, ProviderView, Registration, ReuseRequest};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::instrument::{InstrumentedBackend, InstrumentedProvider};
use crate::memory::{Observed, PoolMemory};
use crate::metrics::{
    ActionSeries, FailureLabels, INSTANCE_STATES, Metrics, ObservedSeries, RUNNER_STATES,
    SeriesCache,
};
use crate::model::{
    Instance, InstanceId, InstanceState, Observation, PoolSpec, RunnerId, RunnerState, Timestamp,
};
use crate::naming;
use crate::plan::{Action, Plan, Planned};
use crate::policy;

/// Instances launched (or actions carried out) at once within one pass.
const ACT_CONCURRENCY: usize = 8;
/// Soonest a pass comes back on its own.
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// A pass whose launches were held back by a cap comes back this soon at the latest.
const HELD_BACK_REQUEUE: Duration = Duration::from_secs(5);

/// What the reconciler remembers between passes: what it derives from successive views
/// ([`PoolMemory`], shared with the simulator) and the last fresh view of the CI system.
#[derive(Default)]
pub(crate) struct Memory {
    /// Last busy times, departures, launches, waiting jobs and the demand history.
    pub(super) pool: PoolMemory,
    /// The last fresh view of the CI system, and when it was read: planned on (launches only)
    /// when a read fails, while it is at most [`PassContext::view_max_age`] old.
    last_view: Option<(ProviderView, Timestamp)>,
}

/// Everything the reconciler holds for one pool.
pub(crate) struct PoolRuntime {
    pub(crate) spec: PoolSpec,
    /// The instrumented adapters, as their concrete types: their calls are awaited directly.
    pub(crate) provider: Arc<InstrumentedProvider>,
    pub(crate) backend: Arc<InstrumentedBackend>,
    pub(crate) observe: Batcher<ProviderView>,
    pub(crate) instances: Batcher<Vec<Instance>>,
    pub(crate) notify: Notify,
    /// Set by a wake-up, cleared when a pass starts: wake-ups between two passes cause one.
    pub(crate) dirty: std::sync::atomic::AtomicBool,
    pub(crate) status: Mutex<PoolStatus>,
    pub(crate) memory: Mutex<Memory>,
    /// When the pass under way started (`None` between passes): a pool is alive while it
    /// completes passes or works on one.
    pub(crate) pass_started_at: Mutex<Option<Timestamp>>,
    /// The pool's metric series, looked up once (when a pass first sets them) and kept.
    pub(crate) series: PoolSeries,
}

/// One pool's metric series, each created when a pass first sets it (as a lookup by labels
/// would) and kept, so a pass sets metrics without hashing label sets or allocating.
#[derive(Default)]
pub(crate) struct PoolSeries {
    observed: OnceLock<ObservedSeries>,
    desired: OnceLock<Gauge>,
    actions: SeriesCache<ActionSeries>,
}

/// What a pass needs besides the pool.
pub(crate) struct PassContext<'a> {
    pub(crate) clock: &'a dyn Clock,
    pub(crate) metrics: &'a Metrics,
    pub(crate) dry_run: bool,
    /// Once cancelled, no new launch starts.
    pub(crate) stopping: &'a CancellationToken,
    pub(crate) interval: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// How old the last fresh view of the CI system may be to plan on it when a read fails.
    pub(crate) view_max_age: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PoolRuntime {
    /// Runs one pass and records its outcome. Returns the outcome and when to come back.
    pub(crate) async fn pass(&self, ctx: &PassContext<'_>) -> (Result<Plan>, Duration) {
        let started = std::time::Instant::now();
        *lock(&self.pass_started_at) = Some(ctx.clock.now());
        let outcome = self.pass_inner(ctx).await;
        *lock(&self.pass_started_at) = None;
        ctx.metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        let now = ctx.clock.now();
        let mut status = lock(&self.status);
        status.passes += 1;
        status.last_pass_at = Some(now);
        let delay = match &outcome {
            Ok(plan) => {
                status.consecutive_failures = 0;
                status.last_error = None;
                let mut d = plan.requeue_after.unwrap_or(ctx.interval).min(ctx.interval);
                if plan.held_back.is_some() {
                    d = d.min(HELD_BACK_REQUEUE);
                }
                d.max(MIN_REQUEUE)
            }
            Err(e) => {
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.last_error = Some(ErrorView::of(e, now));
                ctx.metrics
                    .failures
                    .get_or_create(&FailureLabels {
                        pool: self.spec.name.to_string(),
                        kind: e.kind().as_str(),
                    })
                    .inc();
                warn!(pool = %self.spec.name, error = %e, failures = status.consecutive_failures, "pass failed");
                super::backoff::jittered(
                    e.kind(),
                    status.consecutive_failures,
                    ctx.backoff_base,
                    ctx.backoff_max,
                    &mut rand::rng(),
                )
            }
        };
        status.next_pass_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
        (outcome, delay)
    }

    async fn pass_inner(&self, ctx: &PassContext<'_>) -> Result<Plan> {
        let pool = &self.spec.name;
        let (view, instances) = tokio::join!(self.observe.get(pool), self.instances.get(pool));
        // Without the instances nothing can be decided: a launch could exceed `max`.
        let instances = instances?;
        let now = ctx.clock.now();
        let (view, read_error) = match view {
            Ok(view) => (view, None),
            Err(e) => match self.recent_view(&e, now, ctx.view_max_age) {
                Some((view, age)) => {
                    warn!(pool = %pool, error = %e, view_age_s = age.as_secs(), "the CI system could not be read; planning on its last view (launches only)");
                    (view, Some(e))
                }
                None => return Err(e),
            },
        };
        let view_at = match &read_error {
            Some(_) => lock(&self.memory).last_view.as_ref().map(|(_, at)| *at),
            None if view.stale => None,
            None => Some(now),
        };
        // A fresh view is kept as the last view once the pass is done with it (see
        // `keep_view`): moved back out of the observation, not copied.
        let fresh = read_error.is_none() && !view.stale;
        let Observed {
            observation: obs,
            never_registered,
            read_last_busy,
            waited_secs,
            recheck_after,
        } = self.observation(view, instances, now);
        if !ctx.dry_run {
            self.release(&never_registered).await;
        }
        self.record_observation(ctx.metrics, &obs, &waited_secs);
        if !ctx.dry_run && !obs.stale {
            self.mark_busy(&obs).await;
        }

        let mut plan = policy::plan(&self.spec, &obs, now);
        plan.requeue_soon(recheck_after);
        self.series
            .desired
            .get_or_init(|| ctx.metrics.desired_series(pool))
            .set(i64::from(plan.desired_instances));
        {
            let mut status = lock(&self.status);
            let mut summary = ObservationSummary::of(&obs, now);
            summary.view_at = view_at;
            status.last_observation = Some(summary);
            status.last_plan = Some(plan.clone());
        }
        let result = if plan.is_empty() {
            debug!(pool = %pool, "nothing to do");
            Ok(())
        } else {
            self.act(ctx, &plan).await
        };
        if !ctx.dry_run && !obs.stale {
            self.lower_target(plan.desired_instances).await;
        }
        if fresh {
            self.keep_view(obs, read_last_busy, now);
        }
        // The pass acted on what it knew, but the read failed: it counts as failed (and backs
        // off) all the same.
        match read_error {
            Some(e) => result.and(Err(e)),
            None => result.map(|()| plan),
        }
    }

    /// The last fresh view of the CI system, marked stale, if the read failed for a reason
    /// that may pass (a 5xx answer, a timeout, throttling) and that view is at most `max_age`
    /// old; with its age. A stale view only ever launches (see [`policy`]): known demand is
    /// still served while the CI system cannot be read, and nothing is removed on old facts.
    fn recent_view(
        &self,
        e: &Error,
        now: Timestamp,
        max_age: Duration,
    ) -> Option<(ProviderView, Duration)> {
        if !matches!(
            e.kind(),
            ErrorKind::Transient | ErrorKind::RateLimited { .. }
        ) {
            return None;
        }
        let memory = lock(&self.memory);
        let (view, at) = memory.last_view.as_ref()?;
        let age = (now - *at).to_std().unwrap_or(Duration::ZERO);
        (age <= max_age).then(|| {
            (
                ProviderView {
                    stale: true,
                    ..view.clone()
                },
                age,
            )
        })
    }

    /// Keeps the CI system's view this pass read afresh at `now` as the last view, planned on
    /// when a later read fails. The view is taken back out of the observation it became: its
    /// demand unchanged, its runners in their order with the `last_busy` the CI system gave
    /// (`read_last_busy`), which the observation had filled from memory. (A pass abandoned
    /// before this keeps the previous last view: only older, never wrong.)
    fn keep_view(&self, obs: Observation, read_last_busy: Vec<Option<Timestamp>>, now: Timestamp) {
        let Observation {
            demand,
            mut runners,
            ..
        } = obs;
        for (r, t) in runners.iter_mut().zip(read_last_busy) {
            r.last_busy = t;
        }
        let view = ProviderView {
            demand,
            runners,
            stale: false,
        };
        lock(&self.memory).last_view = Some((view, now));
    }

    /// Tells the backend how many instances the pool wants, so a cloud that replaces instances
    /// that end may stop doing so. A failure is logged, never fails the pass.
    async fn lower_target(&self, wanted: u32) {
        if let Err(e) = self.backend.lower_target(&self.spec.name, wanted).await {
            warn!(pool = %self.spec.name, wanted, error = %e, "cannot lower the backend's target size");
        }
    }

    /// Tells the backend which instances host a busy runner (it may shield them from
    /// disruption). A failure is logged, never fails the pass: the next pass tries again. When
    /// runners cannot be attributed to instances, every instance may host a running job while
    /// one runs: all are named.
    async fn mark_busy(&self, obs: &Observation) {
        let busy_names: FastSet<&str> = obs
            .runners
            .iter()
            .filter(|r| r.state == RunnerState::Busy)
            .map(|r| r.name.as_str())
            .collect();
        let any_may_be_busy = self.spec.runners_unattributed && obs.demand.running > 0;
        let busy: Vec<InstanceId> = obs
            .instances
            .iter()
            .filter(|i| i.state != InstanceState::Stopping)
            .filter(|i| {
                any_may_be_busy
                    || i.runner_names
                        .iter()
                        .any(|n| busy_names.contains(n.as_str()))
            })
            .map(|i| i.id.clone())
            .collect();
        if let Err(e) = self.backend.mark_busy(&self.spec.name, &busy).await {
            warn!(pool = %self.spec.name, busy = busy.len(), error = %e, "cannot mark busy instances");
        }
    }

    /// Tells the provider about runners whose instance is gone before they ever registered, so
    /// it can give back what their registration holds. Failures are logged; nothing retries.
    async fn release(&self, names: &[String]) {
        for name in names {
            match self.provider.release(&self.spec.name, name).await {
                Ok(()) => debug!(pool = %self.spec.name, runner = %name, "registration released"),
                Err(e) => {
                    warn!(pool = %self.spec.name, runner = %name, error = %e, "cannot release a registration whose instance is gone");
                }
            }
        }
    }

    /// Builds the observation, filling what the provider could not tell from memory (see
    /// [`PoolMemory::observe`]).
    fn observation(
        &self,
        view: ProviderView,
        instances: Vec<Instance>,
        now: Timestamp,
    ) -> Observed {
        let mut memory = lock(&self.memory);
        let observed = memory.pool.observe(&self.spec, view, instances, now);
        let obs = &observed.observation;
        tracing::trace!(pool = %self.spec.name, departed = ?obs.departed, listed = obs.runners.len(), instances = obs.instances.len(), tracked = memory.pool.tracked(), "departures");
        observed
    }

    fn record_observation(&self, metrics: &Metrics, obs: &Observation, waited_secs: &[f64]) {
        let series = self
            .series
            .observed
            .get_or_init(|| ObservedSeries::new(metrics, &self.spec.name));
        let set = |gauge: &Gauge, v: usize| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&series.demand[0], obs.demand.waiting.len());
        set(&series.demand[1], obs.demand.running as usize);
        for (gauge, s) in series.runners.iter().zip(RUNNER_STATES) {
            set(gauge, obs.runners.iter().filter(|r| r.state == s).count());
        }
        for (gauge, s) in series.instances.iter().zip(INSTANCE_STATES) {
            set(gauge, obs.instances.iter().filter(|i| i.state == s).count());
        }
        // Jobs that left the queue since the last fresh observation waited until about now.
        for &secs in waited_secs {
            series.job_wait.observe(secs);
        }
    }

    async fn act(&self, ctx: &PassContext<'_>, plan: &Plan) -> Result<()> {
        let pool = &self.spec.name;
        for p in &plan.actions {
            info!(pool = %pool, action = p.action.kind(), reason = p.reason.as_str(), target = %target(&p.action), dry_run = ctx.dry_run, "planned");
        }
        if ctx.dry_run {
            let now = ctx.clock.now();
            let mut status = lock(&self.status);
            for p in &plan.actions {
                status.push_action(record(now, p, "dry_run"));
            }
            return Ok(());
        }
        let mut first_error: Option<Error> = None;
        // Launches first: they are what waiting jobs are waiting for.
        let mut tasks = Vec::new();
        for p in &plan.actions {
            if let Action::Launch { count } = &p.action {
                for _ in 0..*count {
                    tasks.push(p);
                }
            }
        }
        for p in &plan.actions {
            if !matches!(p.action, Action::Launch { .. }) {
                tasks.push(p);
            }
        }
        let results: Vec<(&Planned, Result<Outcome>)> = if tasks.len() == 1 {
            // One action, the common case: carried out directly, with no stream to run it in.
            let p = tasks[0];
            vec![(p, self.carry_out(ctx, p).await)]
        } else {
            let futures: Vec<_> = tasks
                .into_iter()
                .map(|p| Box::pin(async move { (p, self.carry_out(ctx, p).await) }))
                .collect();
            futures::stream::iter(futures)
                .buffer_unordered(ACT_CONCURRENCY)
                .collect()
                .await
        };
        let now = ctx.clock.now();
        let mut status = lock(&self.status);
        for (p, r) in results {
            let outcome = match &r {
                Ok(Outcome::Done) => "ok",
                Ok(Outcome::KeptBusy) => "kept_busy",
                Ok(Outcome::Skipped) => "skipped",
                Err(e) => e.kind().as_str(),
            };
            if let Ok(Outcome::Done) = r {
                let (action, reason) = (p.action.kind(), p.reason.as_str());
                let series = self.series.actions.get(action, reason, || {
                    ctx.metrics.action_series(pool, action, reason)
                });
                series.actions.inc();
                if let Some(kind) = &series.kind {
                    kind.inc();
                }
            }
            // A launch is recorded per instance.
            let target = match p.action {
                Action::Launch { .. } => "1".to_owned(),
                _ => target(&p.action),
            };
            status.push_action(ActionRecord {
                at: now,
                action: p.action.kind(),
                reason: p.reason.as_str(),
                target,
                outcome,
            });
            if let Err(e) = r {
                warn!(pool = %pool, action = p.action.kind(), reason = p.reason.as_str(), error = %e, "action failed");
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn carry_out(&self, ctx: &PassContext<'_>, p: &Planned) -> Result<Outcome> {
        let pool = &self.spec.name;
        match &p.action {
            Action::Launch { .. } => {
                if ctx.stopping.is_cancelled() {
                    return Ok(Outcome::Skipped);
                }
                self.launch_one(ctx).await.map(|()| Outcome::Done)
            }
            Action::Drain { runner, .. } => self
                .provider
                .drain(pool, runner)
                .await
                .map(|()| Outcome::Done),
            Action::Deregister { runner, name } => match self.provider.remove(pool, runner).await {
                Ok(()) => Ok(Outcome::Done),
                Err(e) if e.kind() == ErrorKind::Busy => {
                    info!(pool = %pool, runner = %name, "runner is busy; not deregistered");
                    Ok(Outcome::KeptBusy)
                }
                Err(e) => Err(e),
            },
            Action::Terminate { instance, runners } => {
                // Runners that cannot be attributed: no job may wait or run, read afresh.
                if self.spec.runners_unattributed {
                    match self.provider.confirm_quiet(pool).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::Busy => {
                            info!(pool = %pool, instance = %instance, error = %e, "the pool is not quiet; instance kept");
                            return Ok(Outcome::KeptBusy);
                        }
                        Err(e) => return Err(e),
                    }
                }
                // The CI system must confirm every runner gone before the instance goes.
                if !self.remove_all(instance, runners).await? {
                    return Ok(Outcome::KeptBusy);
                }
                self.backend
                    .terminate(pool, instance)
                    .await
                    .map(|()| Outcome::Done)
            }
            Action::Reuse {
                instance,
                runners,
                uses,
            } => {
                if !self.remove_all(instance, runners).await? {
                    return Ok(Outcome::KeptBusy);
                }
                self.reuse_one(instance, *uses)
                    .await
                    .map(|()| Outcome::Done)
            }
        }
    }

    /// Removes an instance's runners from the CI system: `Ok(false)` if one is busy (the
    /// instance stays as it is).
    async fn remove_all(&self, instance: &InstanceId, runners: &[RunnerId]) -> Result<bool> {
        let pool = &self.spec.name;
        for runner in runners {
            match self.provider.remove(pool, runner).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Busy => {
                    info!(pool = %pool, instance = %instance, runner = %runner, "runner took a job; instance kept");
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Registers fresh runners for an instance whose runners left and hands them over. If
    /// registering or the hand-over fails, the registrations are withdrawn and the instance,
    /// on which nothing runs, is terminated (the next pass launches instead).
    async fn reuse_one(&self, instance: &InstanceId, uses: u32) -> Result<()> {
        let pool = &self.spec.name;
        let names = self.fresh_names();
        let result = match self.register_all(&names).await {
            Ok(regs) => {
                let ids: Vec<Option<RunnerId>> = regs.iter().map(|r| r.runner_id.clone()).collect();
                let request = ReuseRequest {
                    pool: pool.clone(),
                    instance: instance.clone(),
                    runners: regs,
                    uses,
                };
                let result = self.backend.reuse(request).await;
                if result.is_err() {
                    self.withdraw(&made(&names, &ids)).await;
                }
                result
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                info!(pool = %pool, instance = %instance, runners = ?names, uses, "reused");
                lock(&self.memory).pool.hosts(names);
                Ok(())
            }
            Err(e) => {
                warn!(pool = %pool, instance = %instance, error = %e, "reuse failed; terminating the instance");
                self.backend.terminate(pool, instance).await?;
                Err(e)
            }
        }
    }

    /// Fresh runner names for one instance of the pool.
    fn fresh_names(&self) -> Vec<String> {
        naming::generate(
            self.spec.name.as_str(),
            self.spec.runners_per_instance,
            &mut rand::rng(),
        )
        .1
    }

    /// Registers one runner per name; if one fails, those made are withdrawn.
    async fn register_all(&self, names: &[String]) -> Result<Vec<Registration>> {
        let mut regs: Vec<Registration> = Vec::with_capacity(names.len());
        for name in names {
            match self.provider.register(&self.spec.name, name).await {
                Ok(r) => regs.push(r),
                Err(e) => {
                    let made: Vec<(&str, Option<&RunnerId>)> = regs
                        .iter()
                        .map(|r| (r.runner_name.as_str(), r.runner_id.as_ref()))
                        .collect();
                    self.withdraw(&made).await;
                    return Err(e);
                }
            }
        }
        Ok(regs)
    }

    /// Registers the runners of one new instance and launches it. If the launch fails, the
    /// registrations are withdrawn (best effort; a leftover is deregistered by the next pass).
    async fn launch_one(&self, ctx: &PassContext<'_>) -> Result<()> {
        let pool = &self.spec.name;
        let names = self.fresh_names();
        let regs = self.register_all(&names).await?;
        // The registrations go to the backend; what withdrawing them takes is kept.
        let ids: Vec<Option<RunnerId>> = regs.iter().map(|r| r.runner_id.clone()).collect();
        let request = LaunchRequest {
            pool: pool.clone(),
            runners: regs,
            template_hash: self.spec.template_hash.clone(),
        };
        match self.backend.launch(request).await {
            Ok(instance) => {
                info!(pool = %pool, instance = %instance.id, runners = ?names, "launched");
                // Hosted from now on, even if the instance dies before an observation lists it.
                lock(&self.memory).pool.launched(ctx.clock.now(), names);
                Ok(())
            }
            Err(e) => {
                self.withdraw(&made(&names, &ids)).await;
                Err(e)
            }
        }
    }

    /// Withdraws registrations, given as (runner name, CI-side id if any).
    async fn withdraw(&self, regs: &[(&str, Option<&RunnerId>)]) {
        for &(name, id) in regs {
            if let Some(id) = id
                && let Err(e) = self.provider.remove(&self.spec.name, id).await
            {
                debug!(pool = %self.spec.name, runner = %name, error = %e, "withdrawing registration failed; the next pass deregisters it");
            }
        }
    }
}

enum Outcome {
    Done,
    KeptBusy,
    Skipped,
}

/// Registrations as (runner name, CI-side id if any): a registration's runner name is the name
/// it was made for.
fn made<'a>(
    names: &'a [String],
    ids: &'a [Option<RunnerId>],
) -> Vec<(&'a str, Option<&'a RunnerId>)> {
    names
        .iter()
        .map(String::as_str)
        .zip(ids.iter().map(Option::as_ref))
        .collect()
}

fn target(a: &Action) -> String {
    match a {
        Action::Launch { count } => count.to_string(),
        Action::Drain { name, .. } | Action::Deregister { name, .. } => name.clone(),
        Action::Terminate { instance, .. } | Action::Reuse { instance, .. } => instance.to_string(),
    }
}

fn record(at: Timestamp, p: &Planned, outcome: &'static str) -> ActionRecord {
    ActionRecord {
        at,
        action: p.action.kind(),
        reason: p.reason.as_str(),
        target: target(&p.action),
        outcome,
    }
}
