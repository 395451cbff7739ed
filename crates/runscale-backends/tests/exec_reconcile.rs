//! The reconciler driving the exec backend through the local example script
//! (`deploy/exec/local-runners.sh`): machines are real background processes, two runner
//! slots each. Every job completes, capacity returns to zero, and no instance is terminated
//! while one of its runners is busy.
//!
//! The CI system is runscale-core's in-memory world (its runners connect by themselves); the
//! same machines with the GitHub emulator's fake runner agents are the emulator crate's
//! `exec_github` test (it runs the emulator's `runscale-fake-runner` binary).

#![cfg(feature = "exec")]

#[path = "fixtures/exec/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runscale_backends::exec::ExecBackend;
use runscale_core::testing::{MemoryProvider, World, WorldConfig};
use runscale_core::{
    Backend, Instance, InstanceId, LaunchRequest, PoolId, Provider, Result, RunnerState,
    SystemClock,
};
use support::{
    POOL, Reaper, assert_nothing_left, eventually, example_backend, example_template, idle_runner,
    no_machines, pool_spec, start,
};

/// Forwards to the exec backend and checks, at every terminate, with the CI system that no
/// runner of the instance is busy.
struct Watched {
    inner: ExecBackend,
    ci: Arc<MemoryProvider>,
    /// Runner names per instance, from the latest listings and launches.
    names: Mutex<HashMap<InstanceId, Vec<String>>>,
    violations: Mutex<Vec<String>>,
    peak: Mutex<usize>,
}

#[async_trait]
impl Backend for Watched {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        let listed = self.inner.instances(pools).await?;
        let mut names = self.names.lock().expect("lock");
        for instance in listed.values().flatten() {
            names.insert(instance.id.clone(), instance.runner_names.clone());
        }
        let count = listed.values().map(Vec::len).sum();
        let mut peak = self.peak.lock().expect("lock");
        *peak = (*peak).max(count);
        Ok(listed)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        let instance = self.inner.launch(request).await?;
        self.names
            .lock()
            .expect("lock")
            .insert(instance.id.clone(), instance.runner_names.clone());
        Ok(instance)
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        let names = self
            .names
            .lock()
            .expect("lock")
            .get(instance)
            .cloned()
            .unwrap_or_default();
        let view = self.ci.observe(std::slice::from_ref(pool)).await;
        if let Some(Ok(view)) = view.get(pool) {
            for runner in &view.runners {
                if names.contains(&runner.name) && runner.state == RunnerState::Busy {
                    self.violations.lock().expect("lock").push(format!(
                        "{instance} terminated while {} is busy",
                        runner.name
                    ));
                }
            }
        }
        self.inner.terminate(pool, instance).await
    }

    async fn probe(&self) -> Result<String> {
        self.inner.probe().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_script_made_machines_and_the_fleet_returns_to_zero() {
    if !support::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let reaper = Reaper::new(state.clone());
    let runner = idle_runner();
    let template = example_template(&state, &runner, &BTreeMap::new());

    let mut cfg = WorldConfig {
        boot_delay: Duration::from_millis(200),
        auto_connect: true,
        instances_exit_when_runners_leave: false,
        ..WorldConfig::default()
    };
    cfg.ephemeral.insert(PoolId::new(POOL), false);
    let world = World::new(Arc::new(SystemClock), cfg);
    let backend = Arc::new(Watched {
        inner: example_backend(&[(POOL, template.clone())]),
        ci: world.provider(),
        names: Mutex::new(HashMap::new()),
        violations: Mutex::new(Vec::new()),
        peak: Mutex::new(0),
    });
    let spec = pool_spec(&template, false);
    world.set_cap(POOL, 3);
    let (stop, task) = start(spec, "memory", world.provider(), backend.clone());

    let started = Instant::now();
    world.enqueue(POOL, 8, Duration::from_millis(1500));
    eventually("eight jobs done", Duration::from_secs(60), async || {
        reaper.watch_recorded();
        world.snapshot().completed.len() == 8
    })
    .await;
    let done = started.elapsed();
    eventually("fleet back to zero", Duration::from_secs(60), async || {
        no_machines(backend.as_ref()).await
    })
    .await;
    let zero = started.elapsed();
    stop.cancel();
    task.await.expect("reconciler");

    let s = world.snapshot();
    assert_eq!(s.completed.len(), 8, "every job completed");
    assert_eq!(s.runners, 0, "every runner deregistered");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let violations = backend.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "{violations:?}");
    let peak = *backend.peak.lock().expect("lock");
    assert!((1..=3).contains(&peak), "max 3 machines, saw {peak}");
    let launches = s.calls.iter().filter(|c| c.starts_with("register")).count();
    assert_eq!(launches % 2, 0, "two runners per machine: {launches}");
    assert_nothing_left(&reaper);
    println!(
        "exec reconcile: 8 jobs done in {:.1}s, fleet at zero after {:.1}s, peak {peak} machines, \
         {} runners registered",
        done.as_secs_f64(),
        zero.as_secs_f64(),
        launches
    );
}
