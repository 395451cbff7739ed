//! gitlab-runners-fleet's users switch with one conversion step: the seed's JSON configuration
//! (the keys of its `scale/app/config.go`, `env:VAR` token included) goes through `runscale
//! import gitlab-runners-fleet`, the generated file passes `runscale check`, and `runscale run`
//! on it serves every project the token's user is a member of, against the GitLab emulator:
//!
//! - the user is Owner or Maintainer of acme/app (100) and acme/lib (101), Developer of
//!   acme/docs (103), and joins acme/web (102) while runscale runs;
//! - jobs tagged with the seed's `runner_tag` wait in all four;
//! - runscale creates its project runner in acme/app and enables it in acme/lib (as the seed's
//!   `runnerUpdate(associatedProjects)` did), the jobs of both run; acme/web's run once the
//!   user has joined it (next member listing); acme/docs' job is never counted (below
//!   Maintainer, the runner could not be enabled there) and never gets an instance;
//! - no runner slot is removed while busy (the emulator records any job lost), and the idle
//!   instances go after the seed's `instance_max_idle_time`.
//!
//! Instances are local processes (`--backend local-process`) running `runscale fake-runner`,
//! which runs one GitLab runner slot per runner of runscale's credentials file, as
//! `deploy/exec/gitlab-runner-slots.sh` runs `gitlab-runner run-single`. The one difference from
//! the seed's file: `gitlab_host` carries the emulator's `http://` URL (the seed only speaks
//! https to a host name).

#![cfg(all(feature = "provider-gitlab", feature = "backend-local-process"))]

use std::process::Stdio;
use std::time::{Duration, Instant};

use runscale_emulator::gitlab::{
    Emulator, EmulatorConfig, JobSpec, JobStatus, MembershipConfig, Snapshot, UserConfig,
};

mod support;

use support::BIN;

const USER_TOKEN: &str = "glpat-fleet-user-4c1d";
const TAG: &str = "gitlab_runner_fleet";

fn summary(s: &Snapshot) -> String {
    let jobs: Vec<String> = s
        .jobs
        .iter()
        .map(|j| format!("{}@{}:{:?}", j.id, j.project_id, j.status))
        .collect();
    format!(
        "jobs [{}], {} runners, {} managers, violations {:?}",
        jobs.join(" "),
        s.runners.len(),
        s.managers(),
        s.violations
    )
}

/// Waits for `done` on the emulator's state, at most `limit` from `since`.
async fn wait(
    emu: &runscale_emulator::gitlab::EmulatorHandle,
    since: Instant,
    limit: Duration,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    loop {
        let s = emu.snapshot();
        if done(&s) {
            return s;
        }
        assert!(
            since.elapsed() < limit,
            "{what}: not after {limit:?}: {}",
            summary(&s)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn finished(s: &Snapshot, project: u64) -> bool {
    let of: Vec<_> = s.jobs.iter().filter(|j| j.project_id == project).collect();
    !of.is_empty() && of.iter().all(|j| j.status == JobStatus::Success)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_json_config_imported_serves_every_member_project() {
    let started = Instant::now();
    let mut c = EmulatorConfig::new("glpat-admin-unused", &["app", "lib", "web", "docs"]);
    c.users.push(UserConfig {
        username: "sio".into(),
        token: USER_TOKEN.to_owned().into(),
        memberships: [(100, 50), (101, 40), (103, 30)]
            .into_iter()
            .map(|(project, access_level)| MembershipConfig {
                project,
                access_level,
            })
            .collect(),
    });
    let emu = Emulator::start(c).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");

    // The seed's configuration file, as `scale` reads it.
    let fleet = dir.path().join("fleet.json");
    let seed = serde_json::json!({
        "gitlab_host": emu.url(),
        "gitlab_token": "env:GITLAB_TOKEN",
        "scale_state_file": "scale.state",
        "terraform_state_file": "terraform.tfstate",
        "runner_tag": TAG,
        "runner_max_jobs": 2,
        "instance_count_max": 3,
        "instance_count_min": 0,
        "instance_grow_max": 2,
        "instance_provision_time": "2m",
        "instance_max_age": "24h",
        "instance_max_idle_time": 15,
        "debug": false
    });
    std::fs::write(&fleet, serde_json::to_vec_pretty(&seed).expect("json")).expect("write");

    // One conversion step.
    let config = dir.path().join("runscale.yaml");
    let out = std::process::Command::new(BIN)
        .args(["import", "gitlab-runners-fleet", "-f"])
        .arg(&fleet)
        .arg("-o")
        .arg(&config)
        .args([
            "--backend",
            "local-process",
            "--command",
            BIN,
            "fake-runner",
        ])
        .output()
        .expect("import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(
        stderr.contains("instance_max_age") && stderr.contains("instance_provision_time"),
        "keys that change meaning are warned about: {stderr}"
    );
    let yaml = std::fs::read_to_string(&config).expect("config");
    assert!(yaml.contains("# scale_state_file"), "{yaml}");

    let env = [
        ("GITLAB_TOKEN", USER_TOKEN.to_owned()),
        ("RUNSCALE_LISTEN", "127.0.0.1:0".to_owned()),
        ("RUNSCALE_INTERVAL", "1s".to_owned()),
        ("RUNSCALE_MEMBERSHIP_REFRESH", "5s".to_owned()),
        (
            "RUNSCALE_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
        (
            "GITLAB_RUNNER_SLOTS_DIR",
            dir.path().join("slots").display().to_string(),
        ),
    ];
    let check = std::process::Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "runscale check: {}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Jobs with the seed's tag wait in every project, acme/web's before the user joined it.
    let job = |project: u64| JobSpec::new(project, &[TAG], Duration::from_secs(4));
    let ids = emu.submit(vec![job(100), job(100), job(101), job(101), job(101)]);
    let web = emu.submit(vec![job(102), job(102)]);
    let docs = emu.submit(vec![job(103)]);

    let log = dir.path().join("runscale.log");
    let mut daemon = tokio::process::Command::new(BIN)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("runscale run");
    let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();

    let s = wait(
        &emu,
        started,
        Duration::from_secs(90),
        "member projects' jobs",
        |s| finished(s, 100) && finished(s, 101),
    )
    .await;
    let phase1 = started.elapsed();
    assert_eq!(s.runners_created, 1, "one project runner for the pool");
    assert!(
        s.jobs
            .iter()
            .filter(|j| web.contains(&j.id))
            .all(|j| j.status == JobStatus::Pending),
        "acme/web is no member project yet"
    );

    // The user joins acme/web: picked up at the next member listing (every 5 s here).
    assert!(emu.add_member("sio", 102, 40));
    let joined = Instant::now();
    let s = wait(
        &emu,
        joined,
        Duration::from_secs(60),
        "acme/web's jobs",
        |s| finished(s, 102),
    )
    .await;
    let joined_to_done = joined.elapsed();
    let slots_seen = s.managers_seen;

    // Idle instances go after instance_max_idle_time (15 s): no slot is left; acme/docs' job
    // (Developer) was never counted and got no instance.
    let idle_from = Instant::now();
    let s = wait(
        &emu,
        idle_from,
        Duration::from_secs(90),
        "scale-in to zero",
        |s| s.managers() == 0,
    )
    .await;
    let scale_in = idle_from.elapsed();
    let docs_job = s.jobs.iter().find(|j| j.id == docs[0]).expect("docs job");
    assert_eq!(
        docs_job.status,
        JobStatus::Pending,
        "never run: {}",
        log_tail()
    );
    assert!(
        s.violations.is_empty(),
        "a busy slot was removed: {}",
        summary(&s)
    );
    let all: Vec<u64> = ids.iter().chain(&web).copied().collect();
    assert!(
        all.iter().all(|id| s
            .jobs
            .iter()
            .any(|j| j.id == *id && j.status == JobStatus::Success && j.runner.is_some())),
        "{}",
        summary(&s)
    );
    assert!(
        slots_seen <= 6,
        "instance_count_max 3 × runner_max_jobs 2: at most 6 slots, saw {slots_seen}"
    );
    println!(
        "gitlab-runners-fleet import: 7 jobs in 3 member projects (one joined later) ran on {} \
         runner slots (2 per instance, ≤ 3 instances), peak {} at once; jobs of the first two \
         projects done after {:.1}s; the joined project's 2 jobs done {:.1}s after joining \
         (member list every 5s); all slots gone {:.1}s after the last job (idle 15s); the \
         Developer-only project's job never counted; {} runner created, no violation",
        slots_seen,
        s.peak_running,
        phase1.as_secs_f64(),
        joined_to_done.as_secs_f64(),
        scale_in.as_secs_f64(),
        s.runners_created
    );
    daemon.kill().await.expect("stop runscale");
}
