//! Reconciler scenarios against the in-memory world, in tokio's paused (virtual) time.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use prometheus_client::registry::Registry;
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{Clock, ErrorKind, PoolId, PoolSpec, TokioClock, WebhookRequest};
use tokio_util::sync::CancellationToken;

fn clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock::starting_at(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .single()
            .expect("valid"),
    ))
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::register(&mut Registry::default()))
}

fn binding(world: &Arc<World>, spec: PoolSpec, account: &str) -> PoolBinding {
    world.set_cap(spec.name.as_str(), spec.max);
    PoolBinding {
        spec,
        provider_name: account.to_owned(),
        provider: world.provider(),
        backend_name: format!("{account}-backend"),
        backend: world.backend(),
    }
}

fn options() -> Options {
    Options {
        interval: Duration::from_secs(10),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        ..Options::default()
    }
}

/// Runs the reconciler for `d` of virtual time, then stops it.
async fn run_for(r: Reconciler, d: Duration) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(d).await;
    stop.cancel();
    task.await.expect("reconciler task");
}

#[tokio::test(start_paused = true)]
async fn scales_up_to_demand_runs_every_job_and_back_to_zero() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let spec = PoolSpec::test("linux")
        .max(5)
        .idle_timeout(Duration::from_secs(30));
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        options(),
    );
    world.enqueue("linux", 12, Duration::from_secs(20));
    run_for(r, Duration::from_secs(300)).await;
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 12, "{s:?}");
    assert_eq!(s.waiting, 0);
    assert_eq!(s.instances, 0, "fleet back to zero");
    assert_eq!(s.runners, 0, "no registration left over");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[tokio::test(start_paused = true)]
async fn persistent_runners_are_removed_only_after_idle_timeout() {
    let clock = clock();
    let mut cfg = WorldConfig::default();
    cfg.ephemeral.insert(PoolId::new("p"), false);
    let world = World::new(clock.clone(), cfg);
    let spec = PoolSpec::test("p")
        .max(3)
        .ephemeral(false)
        .idle_timeout(Duration::from_secs(120));
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        options(),
    );
    let handle = r.handle();
    world.enqueue("p", 3, Duration::from_secs(10));
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    // Jobs done after ~15 s; runners idle but within idle_timeout: still there at 100 s.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 3);
    assert_eq!(s.instances, 3, "idle runners kept until idle_timeout");
    tokio::time::sleep(Duration::from_secs(100)).await;
    let s = world.snapshot();
    assert_eq!(s.instances, 0, "removed after idle_timeout");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let status = handle.status();
    assert!(
        status[0]
            .recent_actions
            .iter()
            .any(|a| a.action == "terminate" && a.reason == "idle_timeout" && a.outcome == "ok"),
        "{:?}",
        status[0].recent_actions
    );
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn removal_refused_as_busy_keeps_the_instance() {
    // The race: the observation saw the runner idle, the CI system assigned it a job before
    // the removal call arrived, and the removal is refused as busy.
    let clock = clock();
    let mut cfg = WorldConfig::default();
    cfg.ephemeral.insert(PoolId::new("p"), false);
    let world = World::new(clock.clone(), cfg);
    let spec = PoolSpec::test("p")
        .ephemeral(false)
        .idle_timeout(Duration::ZERO);
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        options(),
    );
    let handle = r.handle();
    world.enqueue("p", 1, Duration::from_secs(5));
    r.once().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.step(); // booted; the job starts
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.step(); // the job is done; the runner is idle
    assert_eq!(world.snapshot().completed.len(), 1);
    world.fail_next("remove", 1, ErrorKind::Busy);
    let reports = r.once().await;
    assert!(
        reports[0].outcome.is_ok(),
        "a busy refusal is not a failure"
    );
    let s = world.snapshot();
    assert_eq!(s.instances, 1);
    assert_eq!(s.terminations, 0);
    let status = handle.status();
    assert!(
        status[0]
            .recent_actions
            .iter()
            .any(|a| a.action == "terminate" && a.outcome == "kept_busy")
    );
    // Next pass: removal confirmed, instance goes.
    r.once().await;
    assert_eq!(world.snapshot().instances, 0);
    assert!(world.snapshot().violations.is_empty());
}

#[tokio::test(start_paused = true)]
async fn wake_ups_during_a_pass_coalesce_into_one_more_pass() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let spec = PoolSpec::test("p");
    let mut opts = options();
    opts.interval = Duration::from_secs(3600);
    let r = Reconciler::new(vec![binding(&world, spec, "ci")], clock, metrics(), opts);
    let handle = r.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passes_before = handle.status()[0].passes;
    assert_eq!(passes_before, 1, "first pass at start");
    for _ in 0..10 {
        assert!(handle.wake(&PoolId::new("p")));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.status()[0].passes, 2, "ten wake-ups, one pass");
    assert!(!handle.wake(&PoolId::new("nope")));
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn a_failing_pool_backs_off_and_does_not_stall_the_others() {
    let clock = clock();
    let good = World::new(clock.clone(), WorldConfig::default());
    let bad = World::new(clock.clone(), WorldConfig::default());
    let r = Reconciler::new(
        vec![
            binding(&bad, PoolSpec::test("bad"), "bad-account"),
            binding(&good, PoolSpec::test("good"), "good-account"),
        ],
        clock,
        metrics(),
        options(),
    );
    let handle = r.handle();
    bad.fail_next("observe", 4, ErrorKind::Transient);
    good.enqueue("good", 3, Duration::from_secs(5));
    bad.enqueue("bad", 2, Duration::from_secs(5));
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = handle.status();
    let bad_status = st.iter().find(|s| s.pool.as_str() == "bad").expect("bad");
    assert!(bad_status.consecutive_failures >= 2, "{bad_status:?}");
    assert_eq!(
        bad_status.last_error.as_ref().map(|e| e.kind),
        Some("transient")
    );
    // Backoff at most 1, 2, 4, 8 s (jittered between 1 s and those): four failures take 4 to
    // 15 s; meanwhile the good pool works.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(good.snapshot().completed.len(), 3, "good pool unaffected");
    let observe_calls = bad
        .snapshot()
        .calls
        .iter()
        .filter(|c| c.starts_with("observe"))
        .count();
    // Four failures, the first success, and at most one more pass an interval later.
    assert!(
        observe_calls <= 6,
        "backoff bounds retries, saw {observe_calls}"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(bad.snapshot().completed.len(), 2, "bad pool recovers");
    let st = handle.status();
    let bad_status = st.iter().find(|s| s.pool.as_str() == "bad").expect("bad");
    assert_eq!(bad_status.consecutive_failures, 0);
    assert!(bad_status.last_error.is_none());
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn dry_run_plans_but_does_nothing() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let mut opts = options();
    opts.dry_run = true;
    let r = Reconciler::new(
        vec![binding(&world, PoolSpec::test("p"), "ci")],
        clock,
        metrics(),
        opts,
    );
    world.enqueue("p", 4, Duration::from_secs(5));
    let reports = r.once().await;
    let plan = reports[0].outcome.as_ref().expect("plan");
    assert_eq!(plan.launches(), 4);
    let s = world.snapshot();
    assert_eq!(s.launches, 0);
    assert!(
        s.calls
            .iter()
            .all(|c| c.starts_with("observe") || c.starts_with("instances")),
        "{:?}",
        s.calls
    );
    let st = r.handle().status();
    assert!(st[0].recent_actions.iter().all(|a| a.outcome == "dry_run"));
}

#[tokio::test(start_paused = true)]
async fn pools_of_one_account_share_one_observation_call() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let pools: Vec<PoolBinding> = (0..6)
        .map(|i| binding(&world, PoolSpec::test(&format!("p{i}")), "one-account"))
        .collect();
    let r = Reconciler::new(pools, clock, metrics(), options());
    let reports = r.once().await;
    assert_eq!(reports.len(), 6);
    let calls = world.snapshot().calls;
    let observe: Vec<&String> = calls.iter().filter(|c| c.starts_with("observe")).collect();
    assert_eq!(observe.len(), 1, "{observe:?}");
    assert_eq!(observe[0], "observe 6");
}

#[tokio::test(start_paused = true)]
async fn a_failed_launch_withdraws_its_registration() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let r = Reconciler::new(
        vec![binding(&world, PoolSpec::test("p"), "ci")],
        clock,
        metrics(),
        options(),
    );
    world.enqueue("p", 1, Duration::from_secs(5));
    world.fail_next("launch", 1, ErrorKind::InsufficientCapacity);
    let reports = r.once().await;
    let err = reports[0].outcome.as_ref().expect_err("launch failed");
    assert_eq!(err.kind(), ErrorKind::InsufficientCapacity);
    let s = world.snapshot();
    assert_eq!(s.runners, 0, "registration withdrawn");
    assert!(s.calls.iter().any(|c| c.starts_with("remove p ")));
    // The next pass launches.
    r.once().await;
    assert_eq!(world.snapshot().launches, 1);
}

#[tokio::test(start_paused = true)]
async fn webhooks_are_verified_by_the_provider_and_wake_pools() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let r = Reconciler::new(
        vec![binding(&world, PoolSpec::test("p"), "ci")],
        clock,
        metrics(),
        options(),
    );
    let h = r.handle();
    let good = WebhookRequest {
        headers: vec![("x-memory-signature".into(), "valid".into())],
        body: b"p\nunknown\n".to_vec(),
    };
    assert_eq!(h.webhook("ci", &good).expect("ok"), vec![PoolId::new("p")]);
    let bad = WebhookRequest {
        headers: vec![],
        body: b"p".to_vec(),
    };
    assert_eq!(
        h.webhook("ci", &bad).expect_err("unsigned").kind(),
        ErrorKind::Misconfigured
    );
    assert_eq!(
        h.webhook("nope", &good).expect_err("unknown").kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_in_flight_passes_and_launches_nothing_new() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let r = Reconciler::new(
        vec![binding(&world, PoolSpec::test("p"), "ci")],
        clock,
        metrics(),
        options(),
    );
    let h = r.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.expect("stopped");
    assert!(h.ready());
    world.enqueue("p", 5, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(world.snapshot().launches, 0, "nothing after shutdown");
}

/// A backend that records what [`Backend::mark_busy`] was told, around the memory backend.
struct BusyRecorder {
    inner: Arc<dyn runscale_core::Backend>,
    calls: std::sync::Mutex<Vec<(PoolId, Vec<runscale_core::InstanceId>)>>,
    /// `lower_target` calls: the instances wanted.
    targets: std::sync::Mutex<Vec<u32>>,
}

#[async_trait::async_trait]
impl runscale_core::Backend for BusyRecorder {
    fn kind(&self) -> &'static str {
        "busy-recorder"
    }
    async fn instances(
        &self,
        pools: &[PoolId],
    ) -> runscale_core::Result<std::collections::HashMap<PoolId, Vec<runscale_core::Instance>>>
    {
        self.inner.instances(pools).await
    }
    async fn launch(
        &self,
        request: runscale_core::LaunchRequest,
    ) -> runscale_core::Result<runscale_core::Instance> {
        self.inner.launch(request).await
    }
    async fn terminate(
        &self,
        pool: &PoolId,
        instance: &runscale_core::InstanceId,
    ) -> runscale_core::Result<()> {
        self.inner.terminate(pool, instance).await
    }
    async fn probe(&self) -> runscale_core::Result<String> {
        self.inner.probe().await
    }
    async fn mark_busy(
        &self,
        pool: &PoolId,
        busy: &[runscale_core::InstanceId],
    ) -> runscale_core::Result<()> {
        self.calls
            .lock()
            .expect("lock")
            .push((pool.clone(), busy.to_vec()));
        Ok(())
    }
    async fn lower_target(&self, _pool: &PoolId, wanted: u32) -> runscale_core::Result<()> {
        self.targets.lock().expect("lock").push(wanted);
        Ok(())
    }
}

/// A provider whose `confirm_quiet` answers busy the next `refuse` times, then asks the
/// world; every call is counted.
struct QuietGate {
    inner: Arc<dyn runscale_core::Provider>,
    refuse: std::sync::atomic::AtomicU32,
    asked: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl runscale_core::Provider for QuietGate {
    fn kind(&self) -> &'static str {
        "quiet-gate"
    }
    async fn observe(
        &self,
        pools: &[PoolId],
    ) -> std::collections::HashMap<PoolId, runscale_core::Result<runscale_core::ProviderView>> {
        self.inner.observe(pools).await
    }
    async fn register(
        &self,
        pool: &PoolId,
        runner_name: &str,
    ) -> runscale_core::Result<runscale_core::Registration> {
        self.inner.register(pool, runner_name).await
    }
    async fn remove(
        &self,
        pool: &PoolId,
        runner: &runscale_core::RunnerId,
    ) -> runscale_core::Result<()> {
        self.inner.remove(pool, runner).await
    }
    async fn probe(&self) -> runscale_core::Result<String> {
        self.inner.probe().await
    }
    async fn confirm_quiet(&self, pool: &PoolId) -> runscale_core::Result<()> {
        use std::sync::atomic::Ordering;
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(runscale_core::Error::new(
                "test.confirm_quiet",
                ErrorKind::Busy,
                "a task was just queued",
            ));
        }
        self.inner.confirm_quiet(pool).await
    }
}

/// Runners the instances name themselves: while a job runs every instance is reported busy;
/// the backend is told the seed's desired count after each pass; an idle instance goes only
/// after the provider confirms, afresh, that nothing waits or runs.
#[tokio::test(start_paused = true)]
async fn unattributed_pools_protect_every_instance_while_a_job_runs_and_retire_on_a_fresh_quiet_read()
 {
    use runscale_core::Backend as _;
    use std::sync::atomic::Ordering;
    let clock = clock();
    let mut cfg = WorldConfig::default();
    cfg.ephemeral.insert(PoolId::new("p"), false);
    let world = World::new(clock.clone(), cfg);
    let recorder = Arc::new(BusyRecorder {
        inner: world.backend(),
        calls: Default::default(),
        targets: Default::default(),
    });
    let gate = Arc::new(QuietGate {
        inner: world.provider(),
        refuse: 1.into(),
        asked: 0.into(),
    });
    let mut b = binding(
        &world,
        PoolSpec::test("p")
            .ephemeral(false)
            .unattributed(true)
            .idle_timeout(Duration::from_secs(30)),
        "ci",
    );
    b.backend = recorder.clone();
    b.provider = gate.clone();
    let r = Reconciler::new(vec![b], clock, metrics(), options());
    let list = async || {
        world
            .backend()
            .instances(&[PoolId::new("p")])
            .await
            .expect("list")
            .get(&PoolId::new("p"))
            .map_or(0, Vec::len)
    };
    world.enqueue("p", 1, Duration::from_secs(20));
    r.once().await; // launches
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.step(); // booted; the job starts
    r.once().await;
    assert_eq!(list().await, 1);
    tokio::time::sleep(Duration::from_secs(25)).await;
    world.step(); // the job is done
    r.once().await;
    {
        let calls = recorder.calls.lock().expect("lock");
        assert_eq!(
            calls[1].1.len(),
            1,
            "every instance may hold the running job"
        );
        assert!(calls[2].1.is_empty(), "nothing runs");
        assert_eq!(*recorder.targets.lock().expect("lock"), [1, 1, 0]);
    }
    // Idle for idle_timeout: the plan retires it, but the fresh read says a task came.
    tokio::time::sleep(Duration::from_secs(40)).await;
    r.once().await;
    assert_eq!(gate.asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        list().await,
        1,
        "kept: the pool was not quiet when read again"
    );
    r.once().await;
    assert_eq!(gate.asked.load(Ordering::SeqCst), 2);
    assert_eq!(list().await, 0, "retired once quiet was confirmed");
}

#[tokio::test(start_paused = true)]
async fn the_backend_is_told_which_instances_are_busy_and_when_they_are_idle_again() {
    use runscale_core::Backend as _;
    let clock = clock();
    let mut cfg = WorldConfig::default();
    cfg.ephemeral.insert(PoolId::new("p"), false);
    let world = World::new(clock.clone(), cfg);
    let recorder = Arc::new(BusyRecorder {
        inner: world.backend(),
        calls: Default::default(),
        targets: Default::default(),
    });
    let mut b = binding(
        &world,
        PoolSpec::test("p")
            .ephemeral(false)
            .idle_timeout(Duration::from_secs(600)),
        "ci",
    );
    b.backend = recorder.clone();
    let r = Reconciler::new(vec![b], clock, metrics(), options());
    world.enqueue("p", 1, Duration::from_secs(20));
    r.once().await; // launches
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.step(); // booted; the job starts
    r.once().await;
    let instances = world
        .backend()
        .instances(&[PoolId::new("p")])
        .await
        .expect("list");
    let id = instances[&PoolId::new("p")][0].id.clone();
    tokio::time::sleep(Duration::from_secs(25)).await;
    world.step(); // the job is done
    r.once().await;
    let calls = recorder.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3, "one call per pass: {calls:?}");
    assert!(calls.iter().all(|(p, _)| p.as_str() == "p"));
    assert!(calls[0].1.is_empty(), "nothing busy before the launch");
    assert_eq!(calls[1].1, vec![id], "busy while the job runs");
    assert!(calls[2].1.is_empty(), "idle again after the job");

    // Dry-run passes do not call it.
    let before = recorder.calls.lock().expect("lock").len();
    let mut b = binding(&world, PoolSpec::test("p").ephemeral(false), "ci");
    b.backend = recorder.clone();
    let dry = Reconciler::new(
        vec![b],
        self::clock(),
        metrics(),
        Options {
            dry_run: true,
            ..options()
        },
    );
    dry.once().await;
    assert_eq!(recorder.calls.lock().expect("lock").len(), before);
}

/// Instances that outlive their ephemeral runner (nothing on them shuts them down) are
/// retired once the runner has left, long before `boot_timeout`, and a second wave of jobs
/// gets new instances at once instead of waiting for the finished ones to time out.
#[tokio::test(start_paused = true)]
async fn instances_whose_ephemeral_runner_left_are_retired_before_boot_timeout() {
    let clock = clock();
    let world = World::new(
        clock.clone(),
        WorldConfig {
            instances_exit_when_runners_leave: false,
            ..WorldConfig::default()
        },
    );
    let spec = PoolSpec::test("linux")
        .max(5)
        .boot_timeout(Duration::from_secs(900));
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        options(),
    );
    world.enqueue("linux", 3, Duration::from_secs(20));
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(90)).await;
    let first = world.snapshot();
    assert_eq!(first.completed.len(), 3, "{first:?}");
    assert_eq!(first.instances, 0, "finished instances retired: {first:?}");
    world.enqueue("linux", 3, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(90)).await;
    stop.cancel();
    task.await.expect("reconciler task");
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 6, "second wave ran within 90 s: {s:?}");
    assert_eq!(s.instances, 0, "{s:?}");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

/// Runners listed only once connected (CircleCI, Buildkite): when instances die before their
/// runners start, the provider is told to release those registrations (a reserved job comes
/// back at once), never for runners that did register, and the jobs still all run.
#[tokio::test(start_paused = true)]
async fn registrations_of_instances_that_died_before_their_runner_started_are_released() {
    let clock = clock();
    let world = World::new(
        clock.clone(),
        WorldConfig {
            registrations_listed: false,
            ..WorldConfig::default()
        },
    );
    let spec = PoolSpec::test("linux")
        .max(5)
        .boot_timeout(Duration::from_secs(60));
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        options(),
    );
    world.crash_next_boots(2);
    world.enqueue("linux", 3, Duration::from_secs(20));
    run_for(r, Duration::from_secs(240)).await;
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 3, "{s:?}");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let registered: Vec<&str> = s
        .calls
        .iter()
        .filter_map(|c| c.strip_prefix("register linux "))
        .collect();
    let released: Vec<&str> = s
        .calls
        .iter()
        .filter_map(|c| c.strip_prefix("release linux "))
        .collect();
    assert_eq!(
        released.len(),
        2,
        "one release per crashed instance: {:?}",
        s.calls
    );
    assert_eq!(
        registered.len(),
        5,
        "3 that ran + 2 that crashed: {:?}",
        s.calls
    );
    let mut unique = released.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 2, "each released once: {released:?}");
}

/// One pool `p` on a fresh world, its reconciler running with `options`.
fn one_pool_running(
    options: Options,
) -> (
    Arc<World>,
    runscale_core::reconciler::Handle,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let r = Reconciler::new(
        vec![binding(&world, PoolSpec::test("p"), "ci")],
        clock,
        metrics(),
        options,
    );
    let handle = r.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    (world, handle, stop, task)
}

/// A pool backing off after transient failures still answers a wake-up (a webhook) at once:
/// the back-off delays only the timer. A server's Retry-After is still obeyed.
#[tokio::test(start_paused = true)]
async fn a_wake_up_ends_a_transient_backoff_but_not_a_retry_after() {
    let (world, handle, stop, task) = one_pool_running(Options {
        backoff_base: Duration::from_secs(20),
        backoff_max: Duration::from_secs(300),
        ..options()
    });
    world.fail_next("observe", 1, ErrorKind::Transient);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = &handle.status()[0];
    assert_eq!((st.passes, st.consecutive_failures), (1, 1), "{st:?}");
    // Backing off for at least 20 s; a wake-up starts a pass within 100 ms.
    assert!(handle.wake(&PoolId::new("p")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = &handle.status()[0];
    assert_eq!((st.passes, st.consecutive_failures), (2, 0), "{st:?}");

    // A rate limit with Retry-After: wake-ups wait for it.
    world.fail_next(
        "observe",
        1,
        ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        },
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let failed_at = handle.status()[0].passes;
    assert_eq!(handle.status()[0].consecutive_failures, 1);
    for _ in 0..5 {
        handle.wake(&PoolId::new("p"));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(handle.status()[0].passes, failed_at, "Retry-After obeyed");
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(handle.status()[0].passes > failed_at);
    stop.cancel();
    task.await.expect("task");
}

/// A burst of wake-ups right after a pass becomes one pass at the end of the coalescing
/// window; a lone wake-up after a quiet spell is served at once.
#[tokio::test(start_paused = true)]
async fn bursts_of_wake_ups_coalesce_and_a_lone_one_is_not_delayed() {
    let (_world, handle, stop, task) = one_pool_running(Options {
        interval: Duration::from_secs(600),
        coalesce_window: Duration::from_secs(2),
        ..options()
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.status()[0].passes, 1);

    // Quiet for 30 s: a lone wake-up is served at once.
    handle.wake(&PoolId::new("p"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.status()[0].passes, 2);

    // 580 wake-ups within 1.5 s of that pass: one more pass, at the window's end.
    for _ in 0..580 {
        handle.wake(&PoolId::new("p"));
        tokio::time::sleep(Duration::from_micros(2500)).await;
    }
    assert_eq!(handle.status()[0].passes, 2, "held until the window ends");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.status()[0].passes, 3, "one pass for the burst");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.status()[0].passes, 3, "nothing more");
    stop.cancel();
    task.await.expect("task");
}

/// The in-memory CI system, with faults the world cannot inject: `register` panics the
/// first `panics` times; `observe` never answers while `hang` is set, and fails (a 5xx, say)
/// while `down` is set.
struct Faulty {
    inner: Arc<dyn runscale_core::Provider>,
    panics: std::sync::atomic::AtomicU32,
    hang: std::sync::atomic::AtomicBool,
    down: std::sync::atomic::AtomicBool,
}

impl Faulty {
    fn new(inner: Arc<dyn runscale_core::Provider>, panics: u32) -> Arc<Self> {
        Arc::new(Self {
            inner,
            panics: std::sync::atomic::AtomicU32::new(panics),
            hang: std::sync::atomic::AtomicBool::new(false),
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl runscale_core::Provider for Faulty {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn observe(
        &self,
        pools: &[PoolId],
    ) -> std::collections::HashMap<PoolId, runscale_core::Result<runscale_core::ProviderView>> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return pools
                .iter()
                .map(|p| {
                    let e = runscale_core::Error::new("observe", ErrorKind::Transient, "HTTP 503");
                    (p.clone(), Err(e))
                })
                .collect();
        }
        self.inner.observe(pools).await
    }

    async fn register(
        &self,
        pool: &PoolId,
        runner_name: &str,
    ) -> runscale_core::Result<runscale_core::Registration> {
        use std::sync::atomic::Ordering;
        if self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected panic in register");
        }
        self.inner.register(pool, runner_name).await
    }

    async fn remove(
        &self,
        pool: &PoolId,
        runner: &runscale_core::RunnerId,
    ) -> runscale_core::Result<()> {
        self.inner.remove(pool, runner).await
    }

    async fn probe(&self) -> runscale_core::Result<String> {
        self.inner.probe().await
    }
}

/// A pool task that dies is started again (and counted), the others are not affected, and
/// the pool's jobs still run; a pool whose pass never ends makes the reconciler not ready.
#[tokio::test(start_paused = true)]
async fn a_dead_pool_task_is_restarted_and_a_stalled_pool_is_not_ready() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let faulty = Faulty::new(world.provider(), 1);
    let mut b = binding(&world, PoolSpec::test("p").max(2), "ci");
    b.provider = faulty.clone();
    let other = World::new(clock.clone(), WorldConfig::default());
    let metrics = metrics();
    let r = Reconciler::new(
        vec![b, binding(&other, PoolSpec::test("q").max(2), "other")],
        clock,
        metrics.clone(),
        options(),
    );
    let handle = r.handle();
    world.enqueue("p", 2, Duration::from_secs(5));
    other.enqueue("q", 2, Duration::from_secs(5));
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let restarts = metrics
        .pool_restarts
        .get_or_create(&runscale_core::metrics::PoolLabels {
            pool: "p".to_owned(),
        })
        .get();
    assert_eq!(restarts, 1);
    assert_eq!(
        world.snapshot().completed.len(),
        2,
        "the restarted pool's jobs ran"
    );
    assert_eq!(
        other.snapshot().completed.len(),
        2,
        "the other pool was not affected"
    );
    assert!(handle.ready(), "{:?}", handle.not_ready());

    // Observing never answers from now on: the pool stalls, and after three intervals and
    // the longest back-off plus an interval (options(): 10 s and 30 s) it is reported.
    faulty.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(handle.ready(), "{:?}", handle.not_ready());
    tokio::time::sleep(Duration::from_secs(40)).await;
    let why = handle
        .not_ready()
        .expect("a stalled pool makes the reconciler not ready");
    assert!(why.contains("pool p"), "{why}");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
}

/// Runs pool `p` (max 5) whose first pass sees 3 waiting jobs but cannot launch (the cloud
/// fails), and whose CI reads then fail for a while; returns the world and the pool's status
/// 1.5 s in, while the reads still fail.
async fn demand_known_then_reads_fail(
    view_max_age: Duration,
    read_failure: ErrorKind,
) -> (Arc<World>, runscale_core::reconciler::PoolStatus) {
    let (world, handle, stop, task) = one_pool_running(Options {
        view_max_age,
        ..options()
    });
    world.enqueue("p", 3, Duration::from_secs(60));
    world.fail_next("launch", 3, ErrorKind::Transient);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handle.status()[0].passes, 1);
    world.fail_next("observe", 5, read_failure);
    // The launch failure backs off 1 s (the base); the second pass cannot read the CI system.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = handle.status()[0].clone();
    assert_eq!(status.consecutive_failures, 2, "{status:?}");
    assert_eq!(
        status.last_error.as_ref().map(|e| e.op),
        Some("observe"),
        "the pass failed on the read: {status:?}"
    );
    stop.cancel();
    task.await.expect("task");
    (world, status)
}

/// While the CI system cannot be read (5xx answers), a pool still launches for the demand its
/// last fresh view showed, if that view is recent; the pass still counts as failed, and the
/// status marks the observation as planned on an old view.
#[tokio::test(start_paused = true)]
async fn known_demand_is_launched_for_while_reads_fail_if_the_last_view_is_recent() {
    let (world, status) =
        demand_known_then_reads_fail(Duration::from_secs(60), ErrorKind::Transient).await;
    assert_eq!(world.snapshot().launches, 3, "launched on the 1 s old view");
    let o = status.last_observation.clone().expect("observed");
    assert!(o.stale, "{o:?}");
    assert!(
        o.view_at.is_some_and(|v| o.at.is_some_and(|at| v < at)),
        "{o:?}"
    );
    assert!(!status.stale, "a view 1.5 s old is not stale: {status:?}");
}

/// A view older than `view_max_age`, or a failure that will not pass by itself (credentials),
/// launches nothing.
#[tokio::test(start_paused = true)]
async fn nothing_is_launched_on_an_old_view_or_when_the_read_failed_for_good() {
    let (world, _) =
        demand_known_then_reads_fail(Duration::from_millis(500), ErrorKind::Transient).await;
    assert_eq!(world.snapshot().launches, 0, "the view was too old");
    let (world, _) =
        demand_known_then_reads_fail(Duration::from_secs(60), ErrorKind::Misconfigured).await;
    assert_eq!(
        world.snapshot().launches,
        0,
        "credentials wrong: nothing launched"
    );
}

/// An idle instance past its idle timeout is not terminated while the CI system cannot be
/// read, however recent the last view: old facts never remove anything.
#[tokio::test(start_paused = true)]
async fn nothing_is_removed_while_reads_fail() {
    let clock = clock();
    let mut cfg = WorldConfig::default();
    cfg.ephemeral.insert(PoolId::new("p"), false);
    let world = World::new(clock.clone(), cfg);
    let spec = PoolSpec::test("p")
        .ephemeral(false)
        .idle_timeout(Duration::from_secs(20));
    let r = Reconciler::new(
        vec![binding(&world, spec, "ci")],
        clock,
        metrics(),
        Options {
            view_max_age: Duration::from_secs(600),
            ..options()
        },
    );
    let handle = r.handle();
    // Persistent runners: the instance stays after its job, idle.
    world.enqueue("p", 1, Duration::from_secs(1));
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(14)).await;
    let s = world.snapshot();
    assert_eq!((s.completed.len(), s.instances), (1, 1), "{s:?}");
    world.fail_next("observe", 1000, ErrorKind::Transient);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let s = world.snapshot();
    assert_eq!((s.instances, s.terminations), (1, 0), "{s:?}");
    let status = handle.status()[0].clone();
    assert!(status.consecutive_failures > 3, "{status:?}");
    // Two intervals without a fresh read: the pool's counts are shown as stale, with their age.
    assert!(status.stale, "{status:?}");
    assert!(
        status.view_age_secs.is_some_and(|a| a > 100.0),
        "{status:?}"
    );
    stop.cancel();
    task.await.expect("task");
}

/// After a 60 s outage of the CI system's API, with the default options (transient back-off
/// up to 30 s), a job queued after recovery starts within boot + 5 s: its webhook ends the
/// back-off at once.
#[tokio::test(start_paused = true)]
async fn after_a_60s_outage_the_first_job_queued_starts_within_boot_plus_5s() {
    let clock = clock();
    let world = World::new(clock.clone(), WorldConfig::default());
    let faulty = Faulty::new(world.provider(), 0);
    let mut b = binding(&world, PoolSpec::test("p"), "ci");
    b.provider = faulty.clone();
    let r = Reconciler::new(vec![b], clock, metrics(), Options::default());
    let handle = r.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    faulty.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        handle.status()[0].consecutive_failures >= 3,
        "{:?}",
        handle.status()[0]
    );
    faulty
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.enqueue("p", 1, Duration::from_secs(1));
    assert!(handle.wake(&PoolId::new("p")), "the job's webhook");
    // Boot is 5 s in this world; it moves on when stepped, and records the job's wait when
    // the job finishes.
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        world.step();
    }
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 1, "{s:?}");
    let waited = s.completed[0].1;
    assert!(waited <= Duration::from_secs(10), "waited {waited:?}");
    stop.cancel();
    task.await.expect("task");
}

/// Jobs arriving one every `every` for `count` arrivals, each running `run`.
async fn stream(world: &Arc<World>, pool: &str, every: Duration, count: usize, run: Duration) {
    for _ in 0..count {
        world.enqueue(pool, 1, run);
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(start_paused = true)]
async fn with_warm_capacity_a_steady_stream_finds_runners_ready_and_the_spares_are_retired_after() {
    async fn waits(warm: Option<runscale_core::Warm>) -> (Vec<Duration>, usize) {
        let clock = clock();
        let config = WorldConfig {
            boot_delay: Duration::from_secs(60),
            ..WorldConfig::default()
        };
        let world = World::new(clock.clone(), config);
        let mut spec = PoolSpec::test("linux")
            .max(20)
            .idle_timeout(Duration::from_secs(60))
            .warm(warm);
        spec.boot_timeout = Duration::from_secs(300);
        let r = Reconciler::new(
            vec![binding(&world, spec, "ci")],
            clock,
            metrics(),
            options(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(r.run(stop.clone()));
        // A job every 15 s for 20 minutes, each running 30 s; then an hour of quiet.
        stream(
            &world,
            "linux",
            Duration::from_secs(15),
            80,
            Duration::from_secs(30),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        stop.cancel();
        task.await.expect("reconciler task");
        let s = world.snapshot();
        assert_eq!(s.completed.len(), 80, "{s:?}");
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        (s.completed.iter().map(|(_, w)| *w).collect(), s.instances)
    }
    let (reactive, left) = waits(None).await;
    assert!(
        reactive.iter().all(|w| *w >= Duration::from_secs(60)),
        "{reactive:?}"
    );
    assert_eq!(left, 0);
    let warm = runscale_core::Warm {
        target_wait: Duration::ZERO,
        coverage: 0.9,
    };
    let (warmed, left) = waits(Some(warm)).await;
    // Once the first launches measured the lead time, jobs find a runner up: none waits for a
    // boot. (The in-memory world starts a job when the reconciler next calls it, at most an
    // interval later.)
    let ready = warmed
        .iter()
        .filter(|w| **w <= Duration::from_secs(20))
        .count();
    assert!(
        ready >= 70,
        "{ready} of 80 did not wait for a boot: {warmed:?}"
    );
    // After the stream, the forecast fades and the spares are retired.
    assert_eq!(left, 0, "spare runners retired after the stream");
}

/// A pool with `reuse` whose instances outlive their runners (a VM after its ephemeral
/// runner's job).
fn reuse_world(clock: &Arc<dyn Clock>) -> Arc<World> {
    let cfg = WorldConfig {
        instances_exit_when_runners_leave: false,
        ..WorldConfig::default()
    };
    World::new(clock.clone(), cfg)
}

fn reuse_spec() -> PoolSpec {
    PoolSpec::test("p").max(3).reuse(Some(runscale_core::Reuse {
        max_uses: 4,
        max_age: Duration::from_secs(3600),
    }))
}

#[tokio::test(start_paused = true)]
async fn a_backlog_is_served_by_reusing_instances_whose_runners_finished() {
    let clock = clock();
    let world = reuse_world(&clock);
    let r = Reconciler::new(
        vec![binding(&world, reuse_spec(), "ci")],
        clock,
        metrics(),
        options(),
    );
    world.enqueue("p", 9, Duration::from_secs(20));
    run_for(r, Duration::from_secs(400)).await;
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 9, "{s:?}");
    assert_eq!(
        s.launches, 3,
        "three instances serve nine jobs: {:?}",
        s.calls
    );
    assert_eq!(s.reuses, 6);
    assert_eq!(s.instances, 0, "terminated once nothing waits");
    assert_eq!(s.runners, 0);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[tokio::test(start_paused = true)]
async fn a_failed_hand_over_terminates_the_instance_and_the_job_still_runs() {
    let clock = clock();
    let world = reuse_world(&clock);
    let r = Reconciler::new(
        vec![binding(&world, reuse_spec().max(1), "ci")],
        clock,
        metrics(),
        options(),
    );
    world.fail_next("reuse", 1, ErrorKind::Transient);
    world.enqueue("p", 2, Duration::from_secs(20));
    run_for(r, Duration::from_secs(400)).await;
    let s = world.snapshot();
    assert_eq!(s.completed.len(), 2, "{s:?}");
    assert_eq!(s.launches, 2, "the refused reuse is replaced by a launch");
    assert_eq!(s.instances, 0);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}
