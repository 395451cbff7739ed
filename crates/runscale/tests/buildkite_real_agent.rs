//! End to end with the real `buildkite-agent`: runscale's reconciler with the Buildkite
//! provider and the local-process backend, whose instance command is the committed start-up
//! script `deploy/buildkite/buildkite-agent-start.sh`; it starts `buildkite-agent start` with
//! the variables the provider hands over. Two queues: `linux` agents take a job from a ping and
//! leave after it (`BUILDKITE_AGENT_DISCONNECT_AFTER_JOB`), `k8s` agents each get one job
//! reserved through the Stacks API and acquire it (`BUILDKITE_AGENT_ACQUIRE_JOB`). The agent's
//! job runner checks nothing out: its hooks directory holds a `checkout` hook that does nothing
//! (the agent runs a global `checkout` hook instead of git, `internal/job/checkout.go`), and
//! plugins are off. Each job appends its id to a marker file and prints it to its log.
//!
//! Every job runs exactly once (marker file, uploaded log, the emulator's start count), none is
//! lost, no agent is stopped, lost or disconnected while running a job, and agents and
//! instances are back to zero at the end. Timings are printed.
//!
//! The agent binary comes from `RUNSCALE_BUILDKITE_AGENT`: without it (or if it is not
//! executable) `the_real_buildkite_agent_runs_every_job_once` fails (it skips only under
//! `RUNSCALE_ALLOW_SKIP=1`). The same
//! scenario runs through the same script with the emulator's fake agent in
//! `the_start_script_runs_the_fake_agent_the_same_way`.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod buildkite_support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildkite_support as support;
use runscale_core::PoolId;
use runscale_emulator::buildkite::{JobSpec, JobStatus, Snapshot};
use runscale_providers::buildkite::BuildkiteProvider;

const AGENT_VAR: &str = "RUNSCALE_BUILDKITE_AGENT";
/// The fake runner: `runscale fake-runner`.
const RUNSCALE: &str = env!("CARGO_BIN_EXE_runscale");
const POOLS: [&str; 2] = ["linux", "k8s"];
const LINUX_JOBS: usize = 4;
const K8S_JOBS: usize = 3;
const LINUX_MAX: u32 = 3;
const K8S_MAX: u32 = 2;

/// The start-up script, from the repository.
fn start_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/buildkite/buildkite-agent-start.sh")
        .canonicalize()
        .expect("deploy/buildkite/buildkite-agent-start.sh")
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What one run measured.
struct Run {
    snapshot: Snapshot,
    logs: HashMap<String, String>,
    marker: String,
    first_start: Duration,
    all_done: Duration,
    at_zero: Duration,
    peak: usize,
}

/// Runs both queues' jobs through runscale with `agent` (a `buildkite-agent` executable).
async fn scenario(agent: &Path) -> Run {
    // The real agent heartbeats every 5 s and reads its job's state every second while it
    // runs one; anything silent for 20 s is lost.
    let emu = support::emulator(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| dir.path().join(p);
    std::fs::create_dir_all(path("hooks")).unwrap();
    write_executable(
        &path("hooks/checkout"),
        "#!/bin/bash\n# runscale test: nothing to check out (no network).\n",
    );
    let marker = path("marker");
    let provider = Arc::new(
        BuildkiteProvider::new(
            support::provider_config(&emu, dir.path(), Duration::from_secs(120)),
            vec![
                (
                    PoolId::new("linux"),
                    support::selector("linux", true, false),
                ),
                (PoolId::new("k8s"), support::selector("k8s", true, true)),
            ],
        )
        .expect("provider"),
    );
    let env = serde_json::json!({
        "BUILDKITE_AGENT_BINARY": agent,
        "BUILDKITE_BUILD_PATH": path("builds"),
        "BUILDKITE_HOOKS_PATH": path("hooks"),
        "BUILDKITE_SOCKETS_PATH": path("sockets"),
        "BUILDKITE_PLUGINS_PATH": path("plugins"),
        "BUILDKITE_NO_PLUGINS": "true",
    });
    let backend = support::backend(
        dir.path(),
        &serde_json::json!({ "command": [start_script()], "env": env, "credentials": "env" }),
        &POOLS,
    );
    let (idle, boot) = (Duration::from_secs(2), Duration::from_secs(60));
    let (stop, task) = support::reconcile(
        provider,
        backend.clone(),
        vec![
            support::spec("linux", LINUX_MAX, true, idle, boot),
            support::spec("k8s", K8S_MAX, true, idle, boot),
        ],
    );

    let job = |queue: &str| {
        JobSpec::command(
            queue,
            &format!(
                "sleep 1; echo \"ran $BUILDKITE_JOB_ID on $BUILDKITE_AGENT_NAME\" | tee -a {}",
                marker.display()
            ),
        )
        .rule("os=linux")
    };
    let mut jobs: Vec<JobSpec> = (0..LINUX_JOBS).map(|_| job("linux")).collect();
    jobs.extend((0..K8S_JOBS).map(|_| job("k8s")));
    let total = jobs.len();
    let started = Instant::now();
    emu.submit(jobs);
    let (mut peak, mut first_start) = (0, None);
    let all_done = loop {
        peak = peak.max(support::live(&backend, &POOLS).await);
        let s = emu.snapshot();
        if first_start.is_none() && s.jobs.iter().any(|j| j.starts > 0) {
            first_start = Some(started.elapsed());
        }
        if s.all_finished() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "jobs not done after 180 s: {:?}\nagents: {:?}\nlogs under {}",
            s.jobs,
            s.agents,
            path("state").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at_zero = loop {
        peak = peak.max(support::live(&backend, &POOLS).await);
        if support::live(&backend, &POOLS).await == 0 && emu.snapshot().connected() == 0 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "fleet not back to zero: {} processes, agents {:?}",
            support::live(&backend, &POOLS).await,
            emu.snapshot().agents
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();
    task.await.expect("reconciler");
    let snapshot = emu.snapshot();
    assert_eq!(snapshot.jobs.len(), total);
    let logs = snapshot
        .jobs
        .iter()
        .map(|j| (j.id.clone(), emu.job_log(&j.id).unwrap_or_default().0))
        .collect();
    Run {
        snapshot,
        logs,
        marker: std::fs::read_to_string(&marker).unwrap_or_default(),
        first_start: first_start.unwrap_or(all_done),
        all_done,
        at_zero,
        peak,
    }
}

/// Every job ran exactly once by an agent of its pool, and the fleet is back to zero.
fn check(run: &Run, label: &str) {
    let s = &run.snapshot;
    for j in &s.jobs {
        assert_eq!(
            j.status,
            JobStatus::Passed,
            "{j:?}\nits log: {:?}",
            run.logs[&j.id]
        );
        assert_eq!(j.starts, 1, "started once: {j:?}");
        let line = format!("ran {} on ", j.id);
        assert_eq!(
            run.marker.matches(&line).count(),
            1,
            "job {} ran once (marker file):\n{}",
            j.id,
            run.marker
        );
        assert!(
            run.logs[&j.id].contains(&line),
            "job {}'s log holds its output: {:?}",
            j.id,
            run.logs[&j.id]
        );
        let agent = j.agent.as_deref().unwrap_or_default();
        assert!(
            agent.starts_with(&format!("rs-{}-", j.queue)),
            "run by an agent of its pool: {j:?}"
        );
        if j.queue == "k8s" {
            assert_eq!(j.reserved_by.as_deref(), Some("runscale-k8s"), "{j:?}");
        }
    }
    assert!(s.violations.is_empty(), "violations: {:?}", s.violations);
    assert!(
        s.agents.iter().all(|a| a.jobs_finished <= 1),
        "one job per agent: {:?}",
        s.agents
    );
    assert_eq!(s.connected(), 0);
    assert!(
        run.peak <= (LINUX_MAX + K8S_MAX) as usize,
        "at most {} instances, saw {}",
        LINUX_MAX + K8S_MAX,
        run.peak
    );
    let waits: Vec<f64> = s
        .jobs
        .iter()
        .filter_map(|j| Some((j.started_at? - j.scheduled_at).num_milliseconds() as f64 / 1000.0))
        .collect();
    let mean = waits.iter().sum::<f64>() / waits.len().max(1) as f64;
    let max = waits.iter().copied().fold(0.0, f64::max);
    println!(
        "{label}: {} jobs ({LINUX_JOBS} linux by ping, {K8S_JOBS} k8s acquired), {} agents; \
         first job started after {:.1}s, all done after {:.1}s, agents and instances at zero \
         after {:.1}s; wait from scheduled to started mean {mean:.1}s, max {max:.1}s; peak {} \
         instances; {} pings, {} heartbeats, {} log chunks",
        s.jobs.len(),
        s.agents.len(),
        run.first_start.as_secs_f64(),
        run.all_done.as_secs_f64(),
        run.at_zero.as_secs_f64(),
        run.peak,
        s.requests.get("GET /v3/ping").copied().unwrap_or(0),
        s.requests.get("POST /v3/heartbeat").copied().unwrap_or(0),
        s.requests
            .get("POST /v3/jobs/{id}/chunks")
            .copied()
            .unwrap_or(0),
    );
    if let Some(j) = s.jobs.first() {
        let log = &run.logs[&j.id];
        println!("{label}: the log of job {}:\n{}", j.id, log.trim_end());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_buildkite_agent_runs_every_job_once() {
    let agent = std::env::var_os(AGENT_VAR).map(PathBuf::from);
    let Some(agent) = runscale_core::testing::require(
        agent.filter(|a| executable(a)),
        &format!("the real buildkite-agent (an executable in {AGENT_VAR})"),
        "scripts/test.sh builds v3.84.0 with `go install`",
    ) else {
        return;
    };
    let run = scenario(&agent).await;
    check(&run, "buildkite-agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_script_runs_the_fake_agent_the_same_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `buildkite-agent start` → the fake agent, which reads the same variables.
    let shim = dir.path().join("buildkite-agent");
    write_executable(
        &shim,
        &format!("#!/bin/sh\n[ \"$1\" = start ] && shift\nexec '{RUNSCALE}' fake-runner \"$@\"\n"),
    );
    let run = scenario(&shim).await;
    check(&run, "fake agent");
}
