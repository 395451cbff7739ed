//! The reconciler driving the local-process backend: real child processes, an in-memory CI
//! system, and a crash (the reconciler's runtime dropped mid-run, as `kill -9` would leave it)
//! followed by a restart on the same state directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use runscale_backends::local_process::{Config, LocalProcess, PoolTemplate};
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{Backend, PoolId, PoolSpec, SystemClock};
use tokio_util::sync::CancellationToken;

const POOL: &str = "local";

fn runner_script(dir: &Path) -> String {
    let path = dir.join("runner.sh");
    // A persistent "runner": stays up until told to stop; exits 0 on SIGTERM.
    std::fs::write(
        &path,
        "#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.2; done\n",
    )
    .expect("write script");
    path.to_string_lossy().into_owned()
}

fn backend(state: &Path, script: &str) -> Arc<LocalProcess> {
    let config: Config = serde_json::from_value(serde_json::json!({
        "state_dir": state,
        "stop_grace": "2s",
    }))
    .expect("config");
    let template: PoolTemplate = serde_json::from_value(serde_json::json!({
        "command": ["/bin/sh", script],
    }))
    .expect("template");
    Arc::new(
        LocalProcess::new(config, HashMap::from([(PoolId::new(POOL), template)])).expect("backend"),
    )
}

fn spec() -> PoolSpec {
    let mut s = PoolSpec::test(POOL)
        .max(4)
        .ephemeral(false)
        .idle_timeout(Duration::from_secs(2))
        .boot_timeout(Duration::from_secs(30));
    s.template_hash = "t1".into();
    s
}

fn reconciler(world: &Arc<World>, backend: Arc<LocalProcess>) -> Reconciler {
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    Reconciler::new(
        vec![PoolBinding {
            spec: spec(),
            provider_name: "memory".into(),
            provider: world.provider(),
            backend_name: "local".into(),
            backend,
        }],
        Arc::new(SystemClock),
        metrics,
        Options {
            interval: Duration::from_millis(300),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            ..Options::default()
        },
    )
}

fn world() -> Arc<World> {
    let mut cfg = WorldConfig {
        boot_delay: Duration::from_millis(200),
        auto_connect: true,
        instances_exit_when_runners_leave: false,
        ..WorldConfig::default()
    };
    cfg.ephemeral.insert(PoolId::new(POOL), false);
    World::new(Arc::new(SystemClock), cfg)
}

/// Live instances as the backend sees them (it checks the processes themselves).
async fn live(backend: &LocalProcess) -> usize {
    backend
        .instances(&[PoolId::new(POOL)])
        .await
        .expect("instances")
        .get(&PoolId::new(POOL))
        .map_or(0, Vec::len)
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn state_files(state: &Path) -> usize {
    std::fs::read_dir(state.join(POOL))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_follow_demand_up_and_back_to_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = runner_script(dir.path());
    let state = dir.path().join("state");
    let world = world();
    let be = backend(&state, &script);
    let r = reconciler(&world, be.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));

    world.enqueue(POOL, 6, Duration::from_millis(800));
    // Capped at max 4 processes; all six jobs complete.
    let mut peak = 0;
    wait_until("six jobs done", Duration::from_secs(30), async || {
        peak = peak.max(live(&be).await);
        world.snapshot().completed.len() == 6
    })
    .await;
    assert!(peak <= 4, "max 4 respected, saw {peak}");
    assert!(peak >= 2, "scaled up, saw {peak}");
    wait_until("fleet back to zero", Duration::from_secs(30), async || {
        live(&be).await == 0
    })
    .await;
    let s = world.snapshot();
    assert_eq!(s.runners, 0, "every runner deregistered");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(state_files(&state), 0, "no state file left over");
    stop.cancel();
    task.await.expect("reconciler");
}

#[test]
fn a_crash_mid_run_then_a_restart_re_adopts_live_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = runner_script(dir.path());
    let state = dir.path().join("state");
    let world = world();

    // First life: scale up to 3 processes for 3 long jobs, then crash: the runtime is dropped
    // with every task at whatever await point it was (nothing graceful runs).
    let first = tokio::runtime::Runtime::new().expect("runtime");
    first.block_on(async {
        let be = backend(&state, &script);
        let r = reconciler(&world, be.clone());
        tokio::spawn(r.run(CancellationToken::new()));
        world.enqueue(POOL, 3, Duration::from_secs(4));
        wait_until("three processes", Duration::from_secs(20), async || {
            live(&be).await == 3
        })
        .await;
    });
    drop(first);
    let launched_before = world
        .snapshot()
        .calls
        .iter()
        .filter(|c| c.starts_with("register"))
        .count();
    assert_eq!(launched_before, 3);

    // Second life on the same state directory: the live processes are found, not relaunched.
    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let be = backend(&state, &script);
        assert_eq!(live(&be).await, 3, "re-adopted exactly once each");
        let r = reconciler(&world, be.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(r.run(stop.clone()));
        wait_until("jobs done", Duration::from_secs(30), async || {
            world.snapshot().completed.len() == 3
        })
        .await;
        wait_until("back to zero", Duration::from_secs(30), async || {
            live(&be).await == 0
        })
        .await;
        let registers = world
            .snapshot()
            .calls
            .iter()
            .filter(|c| c.starts_with("register"))
            .count();
        assert_eq!(
            registers,
            3,
            "no duplicate launch after the restart: {:#?}",
            world.snapshot().calls
        );
        assert!(world.snapshot().violations.is_empty());
        assert_eq!(state_files(&state), 0, "no state file left over");
        stop.cancel();
        task.await.expect("reconciler");
    });
}
