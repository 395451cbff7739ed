//! End to end: runscale's reconciler with the Buildkite provider and the local-process
//! backend running `runscale-fake-runner` processes as Buildkite agents (agent token and
//! settings in their environment) against the emulator, on three queues: `linux` agents run one
//! job and disconnect (`disconnect_after_job`), `arm` agents stay until runscale stops them
//! (graceful stop, then the process is terminated), and `k8s` agents each get one job
//! reserved through the Stacks API and acquire it. Every job runs exactly once, capacity
//! returns to zero, and the emulator records no violation (no job started twice, no agent
//! stopped, killed or disconnected while running a job).

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod buildkite_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildkite_support as support;
use runscale_core::PoolId;
use runscale_emulator::buildkite::{JobSpec, JobStatus, Workload};
use runscale_providers::buildkite::BuildkiteProvider;

/// The fake runner: `runscale fake-runner`.
const BIN: &str = env!("CARGO_BIN_EXE_runscale");
const POOLS: [&str; 3] = ["linux", "arm", "k8s"];
const LINUX_MAX: u32 = 3;
const ARM_MAX: u32 = 2;
const K8S_MAX: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_three_queues_all_run_once_and_the_fleet_returns_to_zero() {
    let emu = support::emulator(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(
        BuildkiteProvider::new(
            support::provider_config(&emu, dir.path(), Duration::from_secs(2)),
            vec![
                (
                    PoolId::new("linux"),
                    support::selector("linux", true, false),
                ),
                (PoolId::new("arm"), support::selector("arm", false, false)),
                (PoolId::new("k8s"), support::selector("k8s", false, true)),
            ],
        )
        .expect("provider"),
    );
    let backend = support::backend(
        dir.path(),
        &serde_json::json!({ "command": [BIN, "fake-runner"], "credentials": "env" }),
        &POOLS,
    );
    let (idle, boot) = (Duration::from_secs(1), Duration::from_secs(10));
    let (stop, task) = support::reconcile(
        provider,
        backend.clone(),
        vec![
            support::spec("linux", LINUX_MAX, true, idle, boot),
            support::spec("arm", ARM_MAX, false, idle, boot),
            support::spec("k8s", K8S_MAX, true, idle, boot),
        ],
    );

    let jobs =
        |queue: &str, n| vec![JobSpec::new(queue, Duration::from_millis(600)).rule("os=linux"); n];
    let mut first = jobs("linux", 5);
    first.extend(jobs("arm", 3));
    first.extend(jobs("k8s", 2));
    let mut second = jobs("linux", 3);
    second.extend(jobs("arm", 3));
    second.extend(jobs("k8s", 2));
    let total = first.len() + second.len();
    emu.play(Workload {
        arrivals: vec![(Duration::ZERO, first), (Duration::from_secs(3), second)],
    });
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(support::live(&backend, &POOLS).await);
        let s = emu.snapshot();
        if s.jobs.len() == total && s.all_finished() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "jobs not done: {:?}",
            s.jobs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = started.elapsed();
    loop {
        peak = peak.max(support::live(&backend, &POOLS).await);
        if support::live(&backend, &POOLS).await == 0 && emu.snapshot().connected() == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "fleet not back to zero: {} processes, {:?}",
            support::live(&backend, &POOLS).await,
            emu.snapshot().agents
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = emu.snapshot();
    assert_eq!(
        s.count(JobStatus::Passed),
        total,
        "every job ran: {:?}",
        s.jobs
    );
    assert!(s.jobs.iter().all(|j| j.starts == 1), "no job started twice");
    assert!(s.violations.is_empty(), "violations: {:?}", s.violations);
    assert!(
        peak <= (LINUX_MAX + ARM_MAX + K8S_MAX) as usize,
        "at most {} processes, saw {peak}",
        LINUX_MAX + ARM_MAX + K8S_MAX
    );
    let by_queue = |pool: &'static str| {
        s.agents
            .iter()
            .filter(move |a| runscale_core::naming::owned_by(pool, &a.name))
    };
    assert!(
        by_queue("linux").all(|a| a.jobs_finished <= 1),
        "linux agents run one job each"
    );
    let arm_jobs: u32 = by_queue("arm").map(|a| a.jobs_finished).sum();
    assert_eq!(arm_jobs, 6);
    let k8s: Vec<_> = s.jobs.iter().filter(|j| j.queue == "k8s").collect();
    assert!(
        k8s.iter().all(|j| j.reservations == 1
            && j.reserved_by.as_deref() == Some("runscale-k8s")
            && j.agent.as_deref().is_some_and(|a| a.starts_with("rs-k8s-"))),
        "each k8s job reserved once and run by a k8s agent: {k8s:?}"
    );
    assert!(by_queue("k8s").all(|a| a.jobs_finished == 1));
    let stops = s
        .requests
        .get("PUT /v2/organizations/{org}/agents/{id}/stop")
        .copied()
        .unwrap_or(0);
    assert!(
        stops >= by_queue("arm").count() as u64,
        "every arm agent left because runscale stopped it ({stops} stops)"
    );
    println!(
        "{total} jobs done in {:.1}s, fleet at zero after {:.1}s, peak {peak} processes, \
         {} linux, {} arm and {} k8s agents, {} REST agent listings",
        done.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        by_queue("linux").count(),
        by_queue("arm").count(),
        by_queue("k8s").count(),
        s.requests
            .get("GET /v2/organizations/{org}/agents")
            .copied()
            .unwrap_or(0),
    );
    stop.cancel();
    task.await.expect("reconciler");
}
