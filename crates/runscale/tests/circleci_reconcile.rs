//! End to end: runscale's reconciler with the CircleCI provider and the local-process backend
//! running `runscale-fake-runner` processes as single-task CircleCI runners against the
//! emulator. Every task runs, capacity returns to zero, and no runner is stopped while it
//! holds a task (the emulator records a lost task as a violation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runscale_backends::local_process::{Config as LocalConfig, LocalProcess, PoolTemplate};
use runscale_core::reconciler::PoolBinding;
use runscale_core::secret::SecretRef;
use runscale_core::testing;
use runscale_core::{PoolId, PoolSpec};
use runscale_emulator::circleci::{Emulator, EmulatorConfig, TaskSpec, TaskStatus, Workload};
use runscale_providers::circleci::{
    AgentEnv, ApiVersion, CircleciProvider, Config, PoolSelector, RunnerMode, RunnerNames,
};

const POOL: &str = "linux";
const RC: &str = "acme/linux";
/// The fake runner: `runscale fake-runner`.
const BIN: &str = env!("CARGO_BIN_EXE_runscale");

async fn live(backend: &LocalProcess) -> usize {
    testing::live_instances(backend, &[PoolId::new(POOL)])
        .await
        .expect("instances")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_task_runners_take_every_task_and_the_fleet_returns_to_zero() {
    let seen = run(RunnerMode::SingleTask, Duration::from_secs(2)).await;
    assert!(seen >= 8, "one single-task runner per task, saw {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_runners_leave_after_their_idle_timeout_and_the_fleet_returns_to_zero() {
    let seen = run(RunnerMode::Continuous, Duration::from_secs(1)).await;
    assert!(seen >= 1, "saw {seen} runners");
}

/// Plays 8 tasks in two waves through the reconciler; checks every task ran, no task was
/// lost, at most `max` processes, and processes and listed runners back to zero. Returns how
/// many runners connected.
async fn run(mode: RunnerMode, runner_idle_timeout: Duration) -> usize {
    let emu = Emulator::start(EmulatorConfig::new("api-token", &[(RC, "rc-token")]))
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    for (f, v) in [("api", "api-token"), ("rc", "rc-token")] {
        std::fs::write(dir.path().join(f), v).expect("secret");
    }
    let provider = CircleciProvider::new(
        Config {
            api_url: emu.url(),
            api_version: ApiVersion::V3,
            token: SecretRef::File(dir.path().join("api")),
            webhook_secret: None,
            max_concurrency: None,
            disconnect_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        },
        vec![(
            PoolId::new(POOL),
            PoolSelector {
                resource_class: RC.to_owned(),
                token: Some(SecretRef::File(dir.path().join("rc"))),
                runner_names: RunnerNames::Runscale,
                runner_mode: mode,
                runner_idle_timeout: Some(runner_idle_timeout),
                projects: Vec::new(),
                agent_env: AgentEnv::CircleciRunner,
            },
        )],
    )
    .expect("provider");
    let config: LocalConfig = serde_json::from_value(serde_json::json!({
        "state_dir": dir.path().join("state"),
        "stop_grace": "2s",
    }))
    .expect("config");
    let template: PoolTemplate =
        serde_json::from_value(serde_json::json!({ "command": [BIN, "fake-runner"] }))
            .expect("template");
    let backend = Arc::new(
        LocalProcess::new(config, HashMap::from([(PoolId::new(POOL), template)])).expect("backend"),
    );
    let mut spec = PoolSpec::test(POOL)
        .max(4)
        .ephemeral(true)
        .idle_timeout(Duration::from_secs(3))
        .boot_timeout(Duration::from_secs(10));
    spec.template_hash = "t1".into();
    let (stop, task) = testing::spawn_reconciler(
        vec![PoolBinding {
            spec,
            provider_name: "circleci".into(),
            provider: Arc::new(provider),
            backend_name: "local".into(),
            backend: backend.clone(),
        }],
        Duration::from_millis(300),
        Duration::from_secs(2),
    );

    let tasks = |n| vec![TaskSpec::new(RC, Duration::from_millis(700)); n];
    emu.play(Workload {
        arrivals: vec![
            (Duration::ZERO, tasks(5)),
            (Duration::from_secs(2), tasks(3)),
        ],
    });
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(live(&backend).await);
        let s = emu.snapshot();
        if s.tasks.len() == 8 && s.all_finished() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tasks not done: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = started.elapsed();
    loop {
        if live(&backend).await == 0 && emu.snapshot().runners.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "fleet not back to zero"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = emu.snapshot();
    assert_eq!(
        s.count(TaskStatus::Succeeded),
        8,
        "every task ran: {:?}",
        s.tasks
    );
    assert!(
        s.violations.is_empty(),
        "no runner lost a task: {:?}",
        s.violations
    );
    assert!(peak <= 4, "max 4 processes, saw {peak}");
    println!(
        "{mode:?}: 8 tasks done in {:.1}s, fleet at zero after {:.1}s, peak {peak} processes, {} runners",
        done.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        s.runners_seen
    );
    stop.cancel();
    task.await.expect("reconciler");
    s.runners_seen
}
