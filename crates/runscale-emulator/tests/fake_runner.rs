//! The fake runner agent as a real process (`runscale-fake-runner`) and in-process:
//! jobs flow end to end from JIT configs (argument, environment, credentials file) and from a
//! registration token; SIGTERM while idle and while busy; SIGKILL while busy is a violation;
//! a deleted runner's agent exits.

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runscale_emulator::github::{
    AgentExit, Conclusion, EmulatorConfig, JitConfig, JobSpec, JobStatus, RunnerSource,
    RunnerStatus, ViolationKind, run_agent,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const ORG: &str = "/orgs/octo-org";
const BIN: &str = env!("CARGO_BIN_EXE_runscale-fake-runner");

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("RUNSCALE_JITCONFIG")
            .env_remove("GITHUB_JIT_CONFIG")
            .env_remove("RUNSCALE_CREDENTIALS_FILE")
            .env_remove("GITHUB_URL")
            .env_remove("GITHUB_RUNNER_TOKEN")
            .env_remove("RUNNER_NAME")
            .env_remove("RUNNER_LABELS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc(cmd.spawn().expect("spawn fake runner"))
    }

    fn signal(&self, signal: Signal) {
        let pid = self.0.id().expect("running") as i32;
        kill(Pid::from_raw(pid), signal).expect("signal");
    }

    async fn exit_within(&mut self, secs: u64) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(secs), self.0.wait())
            .await
            .expect("process exits in time")
            .expect("wait")
    }

    fn still_running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

fn fast(speed: f64) -> EmulatorConfig {
    let mut c = config();
    c.speed = speed;
    c
}

async fn online(emu: &runscale_emulator::github::EmulatorHandle, id: u64) -> bool {
    eventually(emu, 20, |s| {
        s.runners
            .iter()
            .any(|r| r.id == id && r.status == RunnerStatus::Online)
    })
    .await
}

#[tokio::test]
async fn jobs_flow_end_to_end_through_fake_runner_processes() {
    let emu = start(fast(10.0)).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (_, arg_cfg) = api.jit(ORG, "rs-arg", &["linux"]).await;
    let (_, env_cfg) = api.jit(ORG, "rs-env", &["linux"]).await;
    let (_, gh_env_cfg) = api.jit(ORG, "rs-gh-env", &["linux"]).await;
    let (_, file_a) = api.jit(ORG, "rs-file-a", &["gpu"]).await;
    let (_, file_b) = api.jit("/repos/octo-org/app", "rs-file-b", &["gpu"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds.json");
    std::fs::write(
        &creds,
        json!({"runners": [
            {"name": "rs-file-a", "runner_id": "4", "vars": {}, "secrets": {"GITHUB_JIT_CONFIG": file_a}},
            {"name": "rs-file-b", "runner_id": "5", "vars": {}, "secrets": {"GITHUB_JIT_CONFIG": file_b}},
        ]})
        .to_string(),
    )
    .expect("write credentials");
    let creds = creds.to_str().expect("utf-8").to_owned();

    for labels in [&["self-hosted", "linux"][..], &["self-hosted", "gpu"][..]] {
        for _ in 0..(if labels[1] == "gpu" { 2 } else { 3 }) {
            emu.enqueue(JobSpec::new("octo-org/app", labels, Duration::from_secs(2)))
                .expect("queued");
        }
    }
    let mut procs = vec![
        Proc::spawn(&["--jitconfig", &arg_cfg], &[]),
        Proc::spawn(&[], &[("RUNSCALE_JITCONFIG", &env_cfg)]),
        Proc::spawn(&[], &[("GITHUB_JIT_CONFIG", &gh_env_cfg)]),
        Proc::spawn(&[], &[("RUNSCALE_CREDENTIALS_FILE", &creds)]),
    ];
    assert!(
        emu.wait_all_done(Duration::from_secs(60)).await,
        "{:?}",
        emu.snapshot()
    );
    for p in &mut procs {
        assert!(p.exit_within(30).await.success());
    }
    let snap = emu.snapshot();
    assert_eq!(snap.jobs.len(), 5);
    assert!(
        snap.jobs
            .iter()
            .all(|j| j.conclusion == Some(Conclusion::Success))
    );
    // GPU jobs ran on GPU runners only.
    for j in &snap.jobs {
        let runner = j.runner_name.as_deref().expect("ran somewhere");
        assert_eq!(
            j.labels.contains(&"gpu".to_owned()),
            runner.starts_with("rs-file"),
            "{runner}"
        );
    }
    assert!(snap.runners.is_empty(), "ephemeral runners are removed");
    assert!(emu.check_all_done().is_empty());
    assert!(emu.violations().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn sigterm_while_idle_disconnects_and_exits_promptly() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, cfg) = api.jit(ORG, "rs-idle", &["linux"]).await;
    let mut p = Proc::spawn(&["--jitconfig", &cfg], &[]);
    assert!(online(&emu, id).await);
    p.signal(Signal::SIGTERM);
    assert!(p.exit_within(10).await.success());
    let snap = emu.snapshot();
    let r = snap
        .runners
        .iter()
        .find(|r| r.id == id)
        .expect("registered");
    assert_eq!((r.status, r.busy), (RunnerStatus::Offline, false));
    // Idle and offline: the autoscaler may delete it.
    assert_eq!(
        api.delete(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        204
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn sigterm_while_busy_finishes_the_job_before_exiting() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, cfg) = api.jit(ORG, "rs-busy", &["linux"]).await;
    let job = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["linux"],
            Duration::from_secs(3),
        ))
        .expect("queued");
    let mut p = Proc::spawn(&["--jitconfig", &cfg], &[]);
    assert!(eventually(&emu, 20, |s| s.runners.iter().any(|r| r.id == id && r.busy)).await);
    p.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.still_running(), "a busy agent finishes its job first");
    assert!(p.exit_within(30).await.success());
    let snap = emu.snapshot();
    let j = snap.jobs.iter().find(|j| j.id == job.job_id).expect("job");
    assert_eq!(
        (j.status, j.conclusion),
        (JobStatus::Completed, Some(Conclusion::Success))
    );
    assert!(emu.violations().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn a_runner_killed_mid_job_is_recorded_as_a_violation() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, cfg) = api.jit(ORG, "rs-killed", &["linux"]).await;
    let job = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["linux"],
            Duration::from_secs(120),
        ))
        .expect("queued");
    let mut p = Proc::spawn(&["--jitconfig", &cfg], &[]);
    assert!(eventually(&emu, 20, |s| s.runners.iter().any(|r| r.id == id && r.busy)).await);
    p.signal(Signal::SIGKILL);
    let _ = p.exit_within(10).await;
    assert!(
        eventually(&emu, 30, |s| s.violations.iter().any(|v| matches!(
            &v.kind,
            ViolationKind::RunnerLostMidJob { job_id, .. } if *job_id == job.job_id
        )))
        .await
    );
    let snap = emu.snapshot();
    let j = snap.jobs.iter().find(|j| j.id == job.job_id).expect("job");
    assert_eq!(j.conclusion, Some(Conclusion::Failure));
    emu.shutdown().await;
}

#[tokio::test]
async fn a_persistent_runner_registered_with_a_token_takes_job_after_job() {
    let emu = start(fast(10.0)).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let token: Value = api
        .post(
            "/repos/octo-org/app/actions/runners/registration-token",
            json!({}),
        )
        .await
        .json()
        .await
        .expect("json");
    let url = format!("{}/octo-org/app", emu.base_url());
    let mut p = Proc::spawn(
        &[
            "--url",
            &url,
            "--token",
            token["token"].as_str().expect("token"),
            "--name",
            "persistent",
            "--labels",
            "big,linux",
        ],
        &[],
    );
    for _ in 0..3 {
        emu.enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted", "big"],
            Duration::from_secs(1),
        ))
        .expect("queued");
    }
    assert!(emu.wait_all_done(Duration::from_secs(60)).await);
    let snap = emu.snapshot();
    assert!(
        snap.jobs
            .iter()
            .all(|j| j.runner_name.as_deref() == Some("persistent"))
    );
    let runner = snap
        .runners
        .iter()
        .find(|r| r.name == "persistent")
        .expect("kept");
    assert_eq!((runner.ephemeral, runner.jobs_completed), (false, 3));
    assert!(
        p.still_running(),
        "persistent runners wait for the next job"
    );
    p.signal(Signal::SIGTERM);
    assert!(p.exit_within(10).await.success());
    assert_eq!(
        api.delete(&format!(
            "/repos/octo-org/app/actions/runners/{}",
            runner.id
        ))
        .await
        .status(),
        204
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn an_in_process_agent_exits_when_its_idle_runner_is_deleted() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, cfg) = api.jit(ORG, "rs-lib", &["linux"]).await;
    let agent = tokio::spawn(run_agent(
        RunnerSource::Jit(JitConfig::decode(&cfg).expect("config")),
        CancellationToken::new(),
    ));
    assert!(online(&emu, id).await);
    assert_eq!(
        api.delete(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        204
    );
    let report = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent exits")
        .expect("task")
        .expect("agent ok");
    assert_eq!(report.exit, AgentExit::RunnerRemoved);
    assert_eq!(report.jobs_completed, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn an_in_process_agent_cancelled_while_idle_disconnects() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, cfg) = api.jit(ORG, "rs-lib-2", &["linux"]).await;
    let stop = CancellationToken::new();
    let agent = tokio::spawn(run_agent(
        RunnerSource::Jit(JitConfig::decode(&cfg).expect("config")),
        stop.clone(),
    ));
    assert!(online(&emu, id).await);
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent exits")
        .expect("task")
        .expect("agent ok");
    assert_eq!(report.exit, AgentExit::Shutdown);
    assert!(
        eventually(&emu, 5, |s| s
            .runners
            .iter()
            .any(|r| r.id == id && r.status == RunnerStatus::Offline))
        .await
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_arguments_exit_with_code_2() {
    let mut none = Proc::spawn(&[], &[]);
    assert_eq!(none.exit_within(10).await.code(), Some(2));
    let mut garbage = Proc::spawn(&["--jitconfig", "not-base64!"], &[]);
    assert_eq!(garbage.exit_within(10).await.code(), Some(2));
}

#[tokio::test]
async fn a_workload_arrives_on_schedule_scaled_by_speed_and_drains() {
    use runscale_emulator::github::Workload;
    let emu = start(fast(10.0)).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let job = || JobSpec::new("octo-org/app", &["linux"], Duration::from_secs(1));
    // Invalid workloads are refused whole.
    let bad = Workload::new().job(Duration::ZERO, job()).job(
        Duration::ZERO,
        JobSpec::new("nope/nope", &["x"], Duration::ZERO),
    );
    assert!(emu.run_workload(bad).is_err());
    assert!(emu.snapshot().jobs.is_empty());

    // Two runs of 3 jobs, 5 s apart in workload time: 0.5 s real at speed 10.
    let workload = Workload::new()
        .run(Duration::ZERO, vec![job(), job(), job()])
        .run(Duration::from_secs(5), vec![job(), job(), job()]);
    assert_eq!(workload.job_count(), 6);
    let mut agents = Vec::new();
    for i in 0..6 {
        let (_, cfg) = api.jit(ORG, &format!("rs-w-{i}"), &["linux"]).await;
        agents.push(tokio::spawn(run_agent(
            RunnerSource::Jit(JitConfig::decode(&cfg).expect("config")),
            CancellationToken::new(),
        )));
    }
    let player = emu.run_workload(workload).expect("valid workload");
    tokio::time::timeout(Duration::from_secs(30), player)
        .await
        .expect("workload ends")
        .expect("task");
    assert!(emu.wait_all_done(Duration::from_secs(60)).await);
    for agent in agents {
        let report = agent.await.expect("task").expect("agent");
        assert_eq!(
            (report.exit, report.jobs_completed),
            (AgentExit::EphemeralDone, 1)
        );
    }
    let snap = emu.snapshot();
    let runs: std::collections::BTreeSet<u64> = snap.jobs.iter().map(|j| j.run_id).collect();
    assert_eq!(runs.len(), 2);
    let first = snap.jobs.iter().map(|j| j.queued_at).min().expect("jobs");
    let last = snap.jobs.iter().map(|j| j.queued_at).max().expect("jobs");
    assert!(
        last - first >= chrono::Duration::milliseconds(400),
        "{:?}",
        last - first
    );
    assert!(snap.jobs.iter().all(|j| j.wait_workload >= j.wait));
    assert!(emu.violations().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn persistent_runners_start_from_the_providers_env_and_credentials_file() {
    let emu = start(fast(10.0)).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let token = |api: &Api| {
        let api = Api::new(&api.base, &api.token);
        async move {
            let body: Value = api
                .post(
                    "/orgs/octo-org/actions/runners/registration-token",
                    json!({}),
                )
                .await
                .json()
                .await
                .expect("json");
            body["token"].as_str().expect("token").to_owned()
        }
    };
    let url = format!("{}/octo-org", emu.base_url());
    let env_token = token(&api).await;
    let mut by_env = Proc::spawn(
        &[],
        &[
            ("GITHUB_URL", &url),
            ("GITHUB_RUNNER_TOKEN", &env_token),
            ("RUNNER_NAME", "rs-env-p"),
            ("RUNNER_LABELS", "env-only"),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds.json");
    std::fs::write(
        &creds,
        json!({"runners": [{"name": "rs-file-p", "runner_id": null,
            "vars": {"GITHUB_URL": url, "RUNNER_NAME": "rs-file-p", "RUNNER_LABELS": "file-only"},
            "secrets": {"GITHUB_RUNNER_TOKEN": token(&api).await}}]})
        .to_string(),
    )
    .expect("write credentials");
    let mut by_file = Proc::spawn(
        &[],
        &[("RUNSCALE_CREDENTIALS_FILE", creds.to_str().expect("utf-8"))],
    );
    for label in ["env-only", "file-only", "env-only", "file-only"] {
        emu.enqueue(JobSpec::new(
            "octo-org/web",
            &["self-hosted", label],
            Duration::from_secs(1),
        ))
        .expect("queued");
    }
    assert!(emu.wait_all_done(Duration::from_secs(60)).await);
    for j in emu.snapshot().jobs {
        let expected = if j.labels.contains(&"env-only".to_owned()) {
            "rs-env-p"
        } else {
            "rs-file-p"
        };
        assert_eq!(j.runner_name.as_deref(), Some(expected));
    }
    for p in [&mut by_env, &mut by_file] {
        assert!(p.still_running());
        p.signal(Signal::SIGTERM);
        assert!(p.exit_within(10).await.success());
    }
    emu.shutdown().await;
}
