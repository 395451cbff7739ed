//! End to end: runscale's reconciler with the GitLab provider and the local-process backend
//! running `runscale-fake-runner` processes as GitLab runners (two slots per instance, each a
//! runner manager of the pool's shared runner with its own `.runner_system_id`, token through
//! the 0600 credentials file) against the GitLab emulator with GitLab's 2-hour online window.
//! Tagged and untagged jobs all succeed, no running job is lost (the emulator records a job
//! lost to a deleted runner/manager or a killed process as a violation), capacity returns to
//! zero; and an outage of the GitLab API terminates nothing. The same with the real
//! gitlab-runner is `gitlab_real_runner.rs`.

mod gitlab_support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gitlab_support::{ADMIN, Harness, Run};
use runscale_emulator::gitlab::{EmulatorConfig, JobSpec, JobStatus, Snapshot, Workload};
use runscale_providers::gitlab::RunnerPer;

/// The fake runner: `runscale fake-runner`.
const BIN: &str = env!("CARGO_BIN_EXE_runscale");
const MAX: u32 = 3;

/// How long an idle slot may be out of contact: the fake runners poll every 200 ms.
const CONTACT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fake runner as instance command (slot directories under `dir`), 2 slots per instance.
fn run(dir: &Path, runner_per: RunnerPer) -> Run {
    Run {
        command: vec![BIN.to_owned(), "fake-runner".to_owned()],
        env: serde_json::json!({
            "GITLAB_RUNNER_SLOTS_DIR": dir.join("slots"),
            "FAKE_RUNNER_CHECK_INTERVAL_MS": "200",
        }),
        runner_per,
        max_use_count: None,
        template_hash: "t1",
        max: MAX,
        min_idle: 0,
        idle_timeout: Duration::from_secs(2),
        boot_timeout: Duration::from_secs(10),
        contact_timeout: CONTACT_TIMEOUT,
        stale_runner_timeout: Duration::from_secs(2),
        interval: Duration::from_millis(300),
    }
}

fn emulator_config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(ADMIN, &["app", "lib"]);
    c.job_lease = Duration::from_secs(5);
    c
}

async fn start(runner_per: RunnerPer) -> Harness {
    Harness::start(emulator_config(), |dir| run(dir, runner_per)).await
}

fn jobs(s: &Snapshot) -> String {
    format!("{:?}", s.jobs)
}

fn runners(s: &Snapshot) -> String {
    format!("{:?}", s.runners)
}

/// Every job succeeded, on a slot runscale launched, and none was lost.
fn check(h: &Harness, s: &Snapshot, n: usize) {
    assert_eq!(
        s.count(JobStatus::Success),
        n,
        "every job ran: {:?}",
        s.jobs
    );
    h.check_slots(s);
    assert!(s.violations.is_empty(), "no job lost: {:?}", s.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_and_untagged_jobs_run_on_two_slot_instances_and_the_fleet_returns_to_zero() {
    let runners = tagged_and_untagged(RunnerPer::Pool).await;
    assert_eq!(runners, 1, "one runner (token) shared by the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_runners_are_paused_and_deleted_and_every_job_completes() {
    let runners = tagged_and_untagged(RunnerPer::Instance).await;
    assert!(runners >= 2, "one runner per instance, saw {runners}");
}

/// Ten tagged and untagged jobs in two waves on instances of two slots; checks every job
/// ran, none was lost, at most `MAX` instances, then instances, managers and runners back
/// to zero (the pool's shared runner stays). Returns how many runners were created.
async fn tagged_and_untagged(runner_per: RunnerPer) -> u32 {
    let h = start(runner_per).await;
    let job = |tags: &[&str]| JobSpec::new(100, tags, Duration::from_millis(800));
    let lib = |tags: &[&str]| JobSpec::new(101, tags, Duration::from_millis(800));
    h.emu.play(Workload {
        arrivals: vec![
            (
                Duration::ZERO,
                vec![
                    job(&["linux"]),
                    job(&[]),
                    lib(&["linux", "docker"]),
                    job(&[]),
                    lib(&["docker"]),
                ],
            ),
            (
                Duration::from_secs(2),
                vec![
                    job(&["linux"]),
                    lib(&[]),
                    job(&["docker"]),
                    lib(&["linux"]),
                    job(&[]),
                ],
            ),
        ],
    });
    let started = Instant::now();
    let peak = h
        .wait_done(10, started, Duration::from_secs(60), jobs)
        .await;
    let done = started.elapsed();
    let s = h.wait_zero(started, Duration::from_secs(90), runners).await;
    check(&h, &s, 10);
    assert!(peak <= MAX as usize, "max {MAX} instances, saw {peak}");
    assert!(
        s.peak_running >= 3,
        "slots ran jobs side by side: peak {}",
        s.peak_running
    );
    println!(
        "gitlab e2e ({runner_per:?}): 10 jobs (6 tagged, 4 untagged) done in {:.1}s, fleet and managers at zero after {:.1}s, \
         peak {peak} instances / {} jobs running at once, {} managers seen, {} runner(s) created",
        done.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        s.peak_running,
        s.managers_seen,
        s.runners_created
    );
    if runner_per == RunnerPer::Instance {
        assert!(
            s.runners.is_empty(),
            "per-instance runners deleted: {:?}",
            s.runners
        );
    }
    h.stop().await;
    s.runners_created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_terminates_nothing() {
    // The issue asks for 2 minutes; 10 s by default keeps the suite short, and
    // `GITLAB_OUTAGE_SECS=120` runs the full length.
    let secs = std::env::var("GITLAB_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let outage = Duration::from_secs(secs);
    let h = start(RunnerPer::Pool).await;
    h.emu.submit(vec![
        JobSpec::new(100, &["linux"], Duration::from_secs(4));
        4
    ]);
    let started = Instant::now();
    // Wait until the four jobs run on two instances.
    loop {
        let s = h.emu.snapshot();
        if s.count(JobStatus::Running) == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "jobs did not start: {:?}",
            s.jobs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = h.live().await;
    assert_eq!(before, 2, "two instances of two slots");
    // GitLab's API goes down (the runners' own API stays up): the jobs finish during the
    // outage and the runners go idle, but runscale cannot see it and must keep everything.
    h.emu.outage(outage);
    let outage_started = Instant::now();
    let mut min_live = before;
    while outage_started.elapsed() < outage - Duration::from_millis(300) {
        min_live = min_live.min(h.live().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = h.emu.snapshot();
    assert_eq!(min_live, before, "no instance terminated during the outage");
    assert_eq!(
        s.count(JobStatus::Success),
        4,
        "the jobs finished during the outage"
    );
    assert!(s.faulted > 0, "runscale did call GitLab during the outage");
    let faulted = s.faulted;
    // After the outage the idle fleet is scaled in as usual.
    let s = h
        .wait_zero(outage_started, outage + Duration::from_secs(60), runners)
        .await;
    check(&h, &s, 4);
    println!(
        "gitlab outage: {}s outage, {} admin calls refused, {} of {} instances kept throughout, \
         fleet at zero {:.1}s after the outage ended",
        outage.as_secs(),
        faulted,
        min_live,
        before,
        (outage_started.elapsed() - outage).as_secs_f64()
    );
    h.stop().await;
}

/// runscale restarts with a new template while jobs run: the new process has lost the old
/// runner's token, creates a new runner, waits for the old instances' jobs to finish before
/// retiring them, and deletes the old runner once its managers are quiet — with GitLab's
/// 2-hour online window, in which they still look online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_new_template_retires_old_instances_only_when_idle() {
    let mut h = start(RunnerPer::Pool).await;
    h.emu.submit(vec![
        JobSpec::new(100, &["linux"], Duration::from_secs(4));
        4
    ]);
    let started = Instant::now();
    while h.emu.snapshot().count(JobStatus::Running) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "jobs did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.restart(&Run {
        template_hash: "t2",
        ..run(h.dir.path(), RunnerPer::Pool)
    })
    .await;
    h.emu
        .submit(vec![JobSpec::new(100, &[], Duration::from_millis(500)); 2]);
    h.wait_done(6, started, Duration::from_secs(60), jobs).await;
    let s = h.wait_zero(started, Duration::from_secs(90), runners).await;
    check(&h, &s, 6);
    assert_eq!(
        s.runners_created, 2,
        "the restarted process made its own runner"
    );
    assert!(
        s.runners.iter().all(|r| r.managers.is_empty()),
        "{:?}",
        s.runners
    );
    println!(
        "gitlab restart: 4 running jobs kept through a restart with a new template, 2 more \
         on new instances, {} runners left, zero after {:.1}s",
        s.runners.len(),
        started.elapsed().as_secs_f64()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_use_count_each_slot_takes_that_many_jobs_and_leaves() {
    let h = Harness::start(emulator_config(), |dir| Run {
        max_use_count: Some(1),
        ..run(dir, RunnerPer::Pool)
    })
    .await;
    h.emu.submit(vec![
        JobSpec::new(
            100,
            &["linux"],
            Duration::from_millis(600)
        );
        12
    ]);
    let started = Instant::now();
    let peak = h
        .wait_done(12, started, Duration::from_secs(60), jobs)
        .await;
    let s = h.wait_zero(started, Duration::from_secs(90), runners).await;
    check(&h, &s, 12);
    assert!(peak <= MAX as usize, "max {MAX} instances, saw {peak}");
    // One job per slot: every job ran on a manager of its own (12 jobs, at most 6 slots at
    // once: without the limit, slots would take several).
    let mut per_slot: HashMap<String, usize> = HashMap::new();
    for j in &s.jobs {
        let (_, system_id) = j.runner.clone().expect("job ran on a runner");
        *per_slot.entry(system_id).or_default() += 1;
    }
    assert!(
        per_slot.values().all(|n| *n == 1),
        "a slot took more than max_use_count jobs: {per_slot:?}"
    );
    println!(
        "gitlab max_use_count 1: 12 jobs on {} slots, zero after {:.1}s, peak {peak} instances",
        per_slot.len(),
        started.elapsed().as_secs_f64()
    );
    h.stop().await;
}
