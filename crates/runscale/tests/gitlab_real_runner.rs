//! End to end with the real gitlab-runner: runscale's reconciler with the GitLab provider and
//! the local-process backend, whose instance command is the committed start-up script
//! `deploy/exec/gitlab-runner-slots.sh`, which starts one `gitlab-runner run-single` per slot
//! (two slots per instance), against the GitLab emulator with GitLab's defaults (2-hour online
//! window, no long polling). Jobs are shell scripts the runner runs (a line appended to a
//! marker file, a sleep, a line in the trace).
//!
//! The binary comes from `RUNSCALE_GITLAB_RUNNER`; without it (or if it is not executable) the
//! test fails, saying so (it skips only under `RUNSCALE_ALLOW_SKIP=1`). A second test runs the
//! same scenario through the same script with the fake runner's `run-single` mode.
//!
//! One test, three phases, each a runscale process (a restart between them):
//! 1. `max_use_count: 1`: 20 tagged and untagged jobs, each run exactly once (marker file,
//!    trace), each slot taking one job and leaving, at most `MAX` instances, no violation.
//! 2. Under the 2-hour online window, a slot that exited (after its one job) stops counting as
//!    idle capacity within 30 s: a job that only it could have taken gets a new instance.
//! 3. A template change retires the idle instance at once and keeps the busy one until its
//!    jobs are done.
//!
//! At the end: no instance, no runner manager, no runner left.

mod gitlab_support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gitlab_support::{ADMIN, Harness, Run, slot_name};
use runscale_emulator::gitlab::{EmulatorConfig, JobSpec, JobStatus, Snapshot, valid_system_id};
use runscale_providers::gitlab::RunnerPer;

const MAX: u32 = 4;
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/exec/gitlab-runner-slots.sh"
);

/// The gitlab-runner binary to run, from `RUNSCALE_GITLAB_RUNNER`. Without it the test fails,
/// or skips under `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
fn runner_binary() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("RUNSCALE_GITLAB_RUNNER").map(PathBuf::from);
    let executable = path.filter(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    runscale_core::testing::require(
        executable,
        "the real gitlab-runner (an executable in RUNSCALE_GITLAB_RUNNER)",
        "scripts/test.sh builds it from the Go module proxy when the proxy serves all it needs \
         (scripts/agents/gitlab-runner), and leaves this test out, naming the refused modules, \
         when it does not",
    )
}

/// The start-up script running `runner`, slot directories under `dir`; GitLab's defaults
/// (`contact_timeout` 20 s: the real runner polls every 3 s).
fn run(dir: &Path, runner: &Path) -> Run {
    Run {
        command: vec![SCRIPT.to_owned()],
        env: serde_json::json!({
            "GITLAB_RUNNER": runner,
            "GITLAB_RUNNER_SLOTS_DIR": dir.join("slots"),
        }),
        runner_per: RunnerPer::Pool,
        max_use_count: Some(1),
        template_hash: "t1",
        max: MAX,
        min_idle: 0,
        idle_timeout: Duration::from_secs(3),
        boot_timeout: Duration::from_secs(15),
        contact_timeout: Duration::from_secs(20),
        stale_runner_timeout: Duration::from_secs(5),
        interval: Duration::from_millis(500),
    }
}

fn marker(h: &Harness) -> PathBuf {
    h.dir.path().join("ran.txt")
}

/// A job of acme/app with `tags` that appends its id to the marker file, sleeps `secs` and
/// says it is done in its trace.
fn job(h: &Harness, tags: &[&str], secs: u32) -> JobSpec {
    let marker = marker(h).display().to_string();
    JobSpec::new(100, tags, Duration::from_secs(u64::from(secs))).with_script(&[
        &format!("echo \"$CI_JOB_ID\" >> '{marker}'"),
        &format!("sleep {secs}"),
        "echo \"job $CI_JOB_ID done\"",
    ])
}

/// How many times each job id was written to the marker file.
fn runs(h: &Harness) -> HashMap<u64, usize> {
    let text = std::fs::read_to_string(marker(h)).unwrap_or_default();
    let mut runs = HashMap::new();
    for line in text.lines() {
        if let Ok(id) = line.trim().parse::<u64>() {
            *runs.entry(id).or_default() += 1;
        }
    }
    runs
}

/// Jobs and violations, for failure messages.
fn summary(s: &Snapshot) -> String {
    let jobs: Vec<String> = s
        .jobs
        .iter()
        .map(|j| {
            format!(
                "{}:{}{}",
                j.id,
                j.status.as_str(),
                j.runner
                    .as_ref()
                    .map(|(_, sid)| format!("@{sid}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!(
        "jobs [{}], managers {:?}, violations {:?}",
        jobs.join(" "),
        s.runners
            .iter()
            .flat_map(|r| r.managers.iter().map(|m| m.system_id.clone()))
            .collect::<Vec<_>>(),
        s.violations
    )
}

fn check_jobs(h: &Harness, s: &Snapshot, ids: &[u64]) {
    assert!(s.violations.is_empty(), "no violation: {}", summary(s));
    let runs = runs(h);
    for id in ids {
        let j = s.jobs.iter().find(|j| j.id == *id).expect("job");
        assert_eq!(j.status, JobStatus::Success, "job {id}: {}", summary(s));
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran exactly once: {runs:?}"
        );
        assert!(
            j.trace.contains(&format!("job {id} done")),
            "job {id}'s trace: {:?}",
            j.trace
        );
        let (_, system_id) = j.runner.clone().expect("ran on a runner");
        assert!(valid_system_id(&system_id), "{system_id}");
    }
    h.check_slots(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_gitlab_runner_slots_run_every_job_once_leave_and_are_retired() {
    let Some(runner) = runner_binary() else {
        return;
    };
    scenario(runner).await;
}

/// The same scenario through the same start-up script with the fake runner's `run-single`
/// mode, so the script and the scenario run in every test run, also where the real
/// gitlab-runner cannot be built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_script_runs_the_fake_runner_the_same_way() {
    use std::os::unix::fs::PermissionsExt as _;
    // The script runs `$GITLAB_RUNNER run-single ...`: a one-line wrapper makes that
    // `runscale fake-runner run-single ...`.
    let dir = tempfile::tempdir().expect("temporary directory");
    let fake = dir.path().join("gitlab-runner");
    let runscale = env!("CARGO_BIN_EXE_runscale");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nexec '{runscale}' fake-runner \"$@\"\n"),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    scenario(fake).await;
}

async fn scenario(runner: PathBuf) {
    let started = Instant::now();
    let mut c = EmulatorConfig::new(ADMIN, &["app", "lib"]);
    // GitLab's defaults otherwise: 2-hour online window, no long polling, no created_at. The
    // lease only has to outlast the runner's silences (30 s keep-alive) to notice a killed job.
    c.job_lease = Duration::from_secs(45);
    c.trace_update_interval = Duration::from_secs(3);
    let mut h = Harness::start(c, |dir| run(dir, &runner)).await;

    // Phase 1: 20 tagged and untagged jobs, one per slot.
    let wave = |h: &Harness| {
        let tags: [&[&str]; 5] = [&["linux"], &[], &["docker"], &["linux", "docker"], &[]];
        (0..10).map(|i| job(h, tags[i % 5], 2)).collect::<Vec<_>>()
    };
    let mut ids = h.emu.submit(wave(&h));
    tokio::time::sleep(Duration::from_secs(4)).await;
    ids.extend(h.emu.submit(wave(&h)));
    let peak = h
        .wait_done(20, started, Duration::from_secs(240), summary)
        .await;
    let phase1 = started.elapsed();
    let s = h.emu.snapshot();
    check_jobs(&h, &s, &ids);
    assert!(peak <= MAX as usize, "at most {MAX} instances, saw {peak}");
    let mut per_slot: HashMap<String, usize> = HashMap::new();
    for j in &s.jobs {
        let (_, sid) = j.runner.clone().expect("runner");
        *per_slot.entry(sid).or_default() += 1;
    }
    assert!(
        per_slot.values().all(|n| *n == 1),
        "max_use_count 1: one job per slot: {per_slot:?}"
    );
    let s = h
        .wait_zero(started, Duration::from_secs(300), summary)
        .await;
    let zero1 = started.elapsed();
    println!(
        "real gitlab-runner phase 1: 20 jobs (12 tagged, 8 untagged) done in {:.1}s on {} slots, \
         peak {peak} instances / {} jobs at once; zero instances and managers after {:.1}s",
        phase1.as_secs_f64(),
        per_slot.len(),
        s.peak_running,
        zero1.as_secs_f64()
    );

    // Phase 2: a slot that exited stops counting as idle capacity within 30 s, though GitLab
    // calls it online for 2 hours.
    let t2 = Instant::now();
    let first = h.emu.submit(vec![job(&h, &["linux"], 1)])[0];
    let exited = loop {
        let s = h.emu.snapshot();
        if let Some(j) = s
            .jobs
            .iter()
            .find(|j| j.id == first && j.status.is_finished())
        {
            break j.clone();
        }
        assert!(t2.elapsed() < Duration::from_secs(60), "{}", summary(&s));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exited_at = Instant::now();
    let (_, gone_slot) = exited.runner.clone().expect("runner");
    let instances = h.instances().await;
    assert_eq!(instances.len(), 1, "one instance: {instances:?}");
    let (first_instance, names) = instances.into_iter().next().expect("instance");
    assert!(names.contains(&slot_name(&gone_slot).expect("our slot")));
    // The other slot takes the long job; the short one waits for capacity that only the slot
    // that left could have offered.
    let long = h.emu.submit(vec![job(&h, &["linux"], 35)])[0];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = h.emu.submit(vec![job(&h, &[], 1)])[0];
    let mut launched_after = None;
    while exited_at.elapsed() < Duration::from_secs(34) {
        if h.instances().await.len() == 2 {
            launched_after = Some(exited_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = h.emu.snapshot();
    let launched_after = launched_after.unwrap_or_else(|| {
        panic!(
            "no new instance within 34 s of the slot's exit: the exited slot still counts as \
             idle: {}",
            summary(&s)
        )
    });
    let online: Vec<bool> = s
        .runners
        .iter()
        .flat_map(|r| r.managers.iter())
        .filter(|m| m.system_id == gone_slot)
        .map(|m| {
            (chrono::Utc::now() - m.contacted_at)
                .to_std()
                .unwrap_or_default()
                < Duration::from_secs(7200)
        })
        .collect();
    assert_eq!(online, [true], "GitLab still calls the exited slot online");
    assert!(
        launched_after <= Duration::from_secs(30),
        "the exited slot counted as departed after {launched_after:?}"
    );
    assert!(
        h.instances().await.contains_key(&first_instance),
        "the instance whose other slot runs a job stays"
    );
    let n = s.jobs.len();
    h.wait_done(n, t2, Duration::from_secs(120), summary).await;
    let s = h.emu.snapshot();
    check_jobs(&h, &s, &[first, long, waiting]);
    h.wait_zero(t2, Duration::from_secs(180), summary).await;
    println!(
        "real gitlab-runner phase 2: the slot that exited after its job stopped counting as idle \
         capacity {:.1}s after it exited (contact_timeout 20s; GitLab: online for 2 h): a new \
         instance took the waiting job; phase done in {:.1}s",
        launched_after.as_secs_f64(),
        t2.elapsed().as_secs_f64()
    );

    // Phase 3: a template change retires the idle instance at once and the busy one only once
    // its jobs are done.
    let t3 = Instant::now();
    h.restart(&Run {
        max_use_count: None,
        min_idle: 2,
        idle_timeout: Duration::from_secs(60),
        ..run(h.dir.path(), &runner)
    })
    .await;
    // min_idle 2: one instance whose two slots are in contact and idle.
    loop {
        let s = h.emu.snapshot();
        if h.instances().await.len() == 1 && s.managers() == 2 {
            break;
        }
        assert!(t3.elapsed() < Duration::from_secs(60), "{}", summary(&s));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two jobs take both slots of that instance; min_idle launches a second, idle one.
    let busy_jobs = h
        .emu
        .submit(vec![job(&h, &["linux"], 15), job(&h, &[], 15)]);
    let (busy, idle) = loop {
        let s = h.emu.snapshot();
        let running: HashSet<String> = s
            .jobs
            .iter()
            .filter(|j| busy_jobs.contains(&j.id) && j.status == JobStatus::Running)
            .filter_map(|j| j.runner.as_ref().and_then(|(_, sid)| slot_name(sid)))
            .collect();
        let instances = h.instances().await;
        let busy = instances
            .iter()
            .find(|(_, names)| names.iter().all(|n| running.contains(n)))
            .map(|(id, _)| id.clone());
        let idle = instances
            .iter()
            .find(|(_, names)| names.iter().all(|n| !running.contains(n)))
            .map(|(id, _)| id.clone());
        let idle_managers = s
            .runners
            .iter()
            .flat_map(|r| r.managers.iter())
            .filter(|m| m.running.is_empty())
            .count();
        if let (Some(b), Some(i), 2..) = (busy, idle, idle_managers) {
            break (b, i);
        }
        assert!(t3.elapsed() < Duration::from_secs(60), "{}", summary(&s));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let changed = Instant::now();
    h.restart(&Run {
        max_use_count: None,
        template_hash: "t2",
        ..run(h.dir.path(), &runner)
    })
    .await;
    let mut idle_gone = None;
    let mut busy_gone = None;
    while changed.elapsed() < Duration::from_secs(90) && busy_gone.is_none() {
        let instances = h.instances().await;
        if idle_gone.is_none() && !instances.contains_key(&idle) {
            idle_gone = Some(changed.elapsed());
        }
        if !instances.contains_key(&busy) {
            busy_gone = Some(changed.elapsed());
            let s = h.emu.snapshot();
            assert!(
                busy_jobs
                    .iter()
                    .all(|id| s.jobs.iter().any(|j| j.id == *id && j.status.is_finished())),
                "the busy instance went before its jobs were done: {}",
                summary(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_gone = idle_gone.expect("the idle old instance is retired");
    let busy_gone = busy_gone.expect("the busy old instance is retired once idle");
    assert!(
        idle_gone < Duration::from_secs(10),
        "idle old instance retired at once, took {idle_gone:?}"
    );
    let s = h.emu.snapshot();
    let done_at = busy_jobs
        .iter()
        .filter_map(|id| s.jobs.iter().find(|j| j.id == *id)?.finished_at)
        .max()
        .expect("finished");
    assert!(
        busy_gone > idle_gone,
        "busy instance kept while its jobs ran"
    );
    check_jobs(&h, &s, &busy_jobs);
    let s = h
        .wait_zero(changed, Duration::from_secs(180), summary)
        .await;
    assert!(
        s.runners.iter().all(|r| r.managers.is_empty()) && s.runners.len() <= 1,
        "no stale runner: {:?}",
        s.runners
    );
    // The old runner (its token went with the old process) is deleted once unused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h.emu.snapshot().runners.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = h.emu.snapshot();
    assert!(s.runners.is_empty(), "no runner left: {:?}", s.runners);
    assert!(s.violations.is_empty(), "{}", summary(&s));
    let all: Vec<u64> = s.jobs.iter().map(|j| j.id).collect();
    check_jobs(&h, &s, &all);
    println!(
        "real gitlab-runner phase 3: template change: idle old instance retired after {:.1}s, \
         busy one kept until its jobs were done ({}), retired after {:.1}s; no instance, \
         manager or runner left {:.1}s after the change; {} jobs, {} runners created, total \
         {:.1}s",
        idle_gone.as_secs_f64(),
        done_at.format("%H:%M:%S"),
        busy_gone.as_secs_f64(),
        changed.elapsed().as_secs_f64(),
        s.jobs.len(),
        s.runners_created,
        started.elapsed().as_secs_f64()
    );
    h.stop().await;
}
