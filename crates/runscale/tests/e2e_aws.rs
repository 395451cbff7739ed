//! End to end on AWS, emulated: moto (`moto_server`) with an Auto Scaling group (MinSize 0,
//! MaxSize N, a launch configuration), the GitHub emulator, and the real daemon — a
//! `runscale run` process, so the AWS SDK's default credential chain finds the dummy keys in
//! its environment — with the `aws-asg` backend pointed at moto. moto launches no machines:
//! `runscale_emulator::aws::InstanceAgent` plays each instance's user data (read and delete
//! the SSM parameter, run the fake runner from its JIT configuration, wait to be terminated)
//! and records every busy instance that gets terminated.
//!
//! 30 jobs in three bursts of 10 (more than N at once): every job completes on one of the
//! group's instances, the desired capacity goes 0 → N → 0 and never above N, no busy
//! instance is terminated, the emulator records no violation, and at the end no parameter is
//! left under the prefix and no instance is `InService`.
//!
//! A second test plays a runscale that terminates a busy instance, to show the harness
//! reports it (and that the instance's runner really stops: the emulator loses its job).
//!
//! Needs `moto_server` (`RUNSCALE_MOTO_SERVER`, set by scripts/test.sh): without it the test
//! prints a note and passes, except under `CI`, where it fails.

#![cfg(all(feature = "backend-aws-asg", feature = "provider-github"))]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use runscale::config;
use runscale_emulator::aws::aws_sdk_ssm::types::ParameterType;
use runscale_emulator::aws::{
    AgentOutcome, DUMMY_KEY, InstanceAgent, InstanceAgentConfig, InstancePhase, MotoClient,
    MotoServer, ViolationKind, moto_server_from_env,
};
use runscale_emulator::github::{
    Conclusion, Emulator, EmulatorOptions, JobSpec, ViolationKind as EmulatorViolation, Workload,
};
use secrecy::SecretString;

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
const REGION: &str = "us-east-1";
const GROUP: &str = "e2e-runners";
const POOL: &str = "asg";
/// The group's MaxSize and the pool's max.
const N: i32 = 5;
const JOBS: u64 = 30;
const TOKEN: &str = "e2e-token";
const WEBHOOK_SECRET: &str = "e2e-webhook-secret";

/// The daemon's configuration: one GitHub organisation, one pool on the moto group. An
/// instance outlives its ephemeral runner (the user data waits to be terminated), and the
/// policy terminates an instance with no registered runner only `boot_timeout` after its
/// launch — until then it counts as booting — so `boot_timeout` is short here (the instance
/// agent starts a runner within a second of the launch).
fn config_text(listen: &str, api_url: &str, moto_url: &str, dir: &Path) -> String {
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    format!(
        "listen: \"{listen}\"\ninterval: 2s\nshutdown_timeout: 10s\n\
         providers:\n  - name: github\n    type: github\n    api_url: \"{api_url}\"\n    \
         org: octo-org\n    repositories: [app]\n    auth: {{token: {{file: {token}}}}}\n    \
         webhook_secret: {{file: {secret}}}\n\
         backends:\n  - name: aws\n    type: aws-asg\n    region: {REGION}\n    \
         endpoint_url: \"{moto_url}\"\n    claim_timeout: 30s\n    poll_interval: 100ms\n    \
         max_attempts: 3\n\
         pools:\n  - name: {POOL}\n    provider: github\n    backend: aws\n    \
         selector: {{labels: [asg]}}\n    template: {{group: {GROUP}}}\n    \
         min_idle: 0\n    max: {N}\n    boot_timeout: 10s\n    idle_timeout: 5s\n    \
         ephemeral: true\n",
        token = q(&dir.join("token")),
        secret = q(&dir.join("webhook-secret")),
    )
}

/// Three bursts of 10 jobs, 8 s apart, each job running 2 to 4 s.
fn workload() -> Workload {
    let mut w = Workload::new();
    for i in 0..JOBS {
        let at = Duration::from_secs((i / 10) * 8) + Duration::from_millis((i % 10) * 50);
        let run = Duration::from_millis(2000 + (i * 379) % 2000);
        w = w.job(
            at,
            JobSpec::new("octo-org/app", &["self-hosted", "asg"], run).named(format!("job-{i}")),
        );
    }
    w
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `runscale run` process with dummy AWS credentials in its environment (and no host AWS
/// configuration), killed by its PID when dropped; its stderr goes to a file.
struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: &Path) -> Self {
        let log = dir.join("daemon.log");
        let child = std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .env("AWS_ACCESS_KEY_ID", DUMMY_KEY)
            .env("AWS_SECRET_ACCESS_KEY", DUMMY_KEY)
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.join("no-aws-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("RUNSCALE_CONFIG")
            .env_remove("RUNSCALE_LOG_LEVEL")
            .env_remove("RUNSCALE_LOG_FORMAT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn runscale run");
        Self { child, log }
    }

    /// The last lines of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    daemon: &Daemon,
    fleet: Option<&InstanceAgent>,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\ndaemon log:\n{}\ninstances: {:#?}",
            daemon.log_tail(),
            fleet.map(InstanceAgent::snapshot)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `moto_server` to start. Without `RUNSCALE_MOTO_SERVER` the test fails, or skips under
/// `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
fn moto_bin() -> Option<std::path::PathBuf> {
    runscale_core::testing::require(
        moto_server_from_env(),
        "moto_server (RUNSCALE_MOTO_SERVER)",
        "scripts/test.sh installs moto[server] into a virtualenv and sets RUNSCALE_MOTO_SERVER",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_jobs_scale_a_group_zero_to_n_to_zero_with_no_busy_instance_terminated() {
    let Some(moto_bin) = moto_bin() else { return };
    let moto = MotoServer::start(&moto_bin).await.expect("moto_server");
    let aws = MotoClient::new(moto.url(), REGION);
    aws.create_group(GROUP, N).await.expect("group");
    let group = aws.group(GROUP).await.expect("describe").expect("group");
    assert_eq!((group.min, group.desired, group.max), (0, 0, N));

    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    // Organisation octo-org with repository app, real time, no faults.
    let github = EmulatorOptions {
        token: SecretString::from(TOKEN),
        webhook_url: Some(format!("http://{listen}/webhooks/github")),
        webhook_secret: Some(SecretString::from(WEBHOOK_SECRET)),
        ..EmulatorOptions::default()
    };
    let github = github.into_config().expect("emulator options");
    let addr = "127.0.0.1:0".parse().expect("addr");
    let github = Emulator::start(github, addr)
        .await
        .expect("GitHub emulator");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    std::fs::write(dir.path().join("webhook-secret"), WEBHOOK_SECRET).expect("secret file");
    let text = config_text(&listen, github.base_url(), moto.url(), dir.path());
    // The same text, validated in this process first: a bad configuration fails here, clearly.
    config::load_str(&text, Path::new("e2e-aws.yaml"), |_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let config_path = dir.path().join("e2e-aws.yaml");
    std::fs::write(&config_path, &text).expect("config file");

    let instances = InstanceAgent::start(aws.clone(), InstanceAgentConfig::new(GROUP, POOL));
    let daemon = Daemon::start(&config_path, dir.path());
    let http = reqwest::Client::new();
    wait_for(
        "the daemon to be ready",
        Duration::from_secs(60),
        &daemon,
        Some(&instances),
        async || {
            http.get(format!("http://{listen}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;

    let start = Instant::now();
    let playing = github.run_workload(workload()).expect("workload");
    wait_for(
        "every job to complete",
        Duration::from_secs(240),
        &daemon,
        Some(&instances),
        async || {
            let snap = github.snapshot();
            playing.is_finished() && snap.jobs.len() == JOBS as usize && snap.all_done()
        },
    )
    .await;
    let jobs_done = start.elapsed();
    // Ephemeral runners leave after their job: runscale terminates their instances with the
    // desired capacity decremented, down to zero, and deletes every parameter.
    wait_for(
        "the group back at zero",
        Duration::from_secs(90),
        &daemon,
        Some(&instances),
        async || {
            let Ok(Some(g)) = aws.group(GROUP).await else {
                return false;
            };
            let snap = instances.snapshot();
            g.desired == 0
                && g.in_service().count() == 0
                && snap
                    .instances
                    .iter()
                    .all(|i| i.phase == InstancePhase::Terminated)
                && aws
                    .parameters("/runscale")
                    .await
                    .is_ok_and(|p| p.is_empty())
        },
    )
    .await;
    let wall = start.elapsed();
    let fleet = instances.stop().await;
    let daemon_log = daemon.log_tail();
    drop(daemon);

    eprintln!(
        "{JOBS} jobs: all done after {:.1}s, group back at zero after {:.1}s; peak desired \
         capacity {} (MaxSize {N}), peak InService {}, {} instances launched, {} group reads",
        jobs_done.as_secs_f64(),
        wall.as_secs_f64(),
        fleet.peak_desired,
        fleet.peak_in_service,
        fleet.instances.len(),
        fleet.polls,
    );

    // The instance side: no busy instance terminated, every registration usable, every
    // runner started and ended well, every instance terminated.
    assert!(
        fleet.violations.is_empty(),
        "{}\ndaemon log:\n{daemon_log}",
        fleet
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let failed: Vec<_> = fleet
        .instances
        .iter()
        .filter(|i| matches!(i.outcome, Some(AgentOutcome::Failed(_))))
        .collect();
    assert!(failed.is_empty(), "runner agents failed: {failed:?}");
    assert_eq!(
        fleet.count(InstancePhase::Terminated),
        fleet.instances.len()
    );
    // 0 → N → 0: the group reached its MaxSize under a burst of 10 and never went above it.
    assert_eq!(fleet.peak_desired, N, "peak desired capacity");
    assert!(fleet.peak_in_service <= N as usize, "{fleet:?}");
    assert_eq!(fleet.desired, Some(0));
    assert_eq!(fleet.poll_errors, 0, "{:?}", fleet.last_error);

    // The CI side: every job succeeded, each on its own runner, and each runner was one of
    // the group's instances.
    let snap = github.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert!(
        snap.jobs
            .iter()
            .all(|j| j.conclusion == Some(Conclusion::Success)),
        "every job succeeded"
    );
    let on_instances: BTreeSet<&str> = fleet
        .instances
        .iter()
        .filter_map(|i| i.runner_name.as_deref())
        .collect();
    let mut runners = BTreeSet::new();
    for j in &snap.jobs {
        let name = j.runner_name.as_deref().expect("a job ran on a runner");
        assert!(runners.insert(name), "runner {name} ran two jobs");
        assert!(
            on_instances.contains(name),
            "runner {name} ran on no instance"
        );
    }
    assert!(snap.runners.is_empty(), "runners left: {:?}", snap.runners);
    assert!(
        fleet.instances.len() >= JOBS as usize
            && fleet.instances.len() <= JOBS as usize + N as usize,
        "{} instances for {JOBS} jobs",
        fleet.instances.len()
    );

    // AWS: nothing left.
    let g = aws.group(GROUP).await.expect("describe").expect("group");
    assert_eq!(g.desired, 0);
    assert_eq!(g.in_service().count(), 0, "{g:?}");
    assert_eq!(
        aws.parameters("/runscale").await.expect("parameters"),
        Vec::<String>::new()
    );
    github.shutdown().await;
}

/// Waits for `done` to give a value, polling every 100 ms.
async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut done: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = done().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_reports_a_busy_instance_terminated_and_powers_it_off() {
    let Some(moto_bin) = moto_bin() else { return };
    let moto = MotoServer::start(&moto_bin).await.expect("moto_server");
    let aws = MotoClient::new(moto.url(), REGION);
    aws.create_group(GROUP, 2).await.expect("group");
    let mut config = EmulatorOptions {
        token: SecretString::from(TOKEN),
        ..EmulatorOptions::default()
    }
    .into_config()
    .expect("emulator options");
    // A runner whose heartbeats stop is offline after 1 s and loses its job 1 s later.
    config.runners.heartbeat_interval = Duration::from_millis(200);
    config.runners.offline_after = Duration::from_secs(1);
    config.runners.lost_job_timeout = Duration::from_secs(1);
    let addr = "127.0.0.1:0".parse().expect("addr");
    let github = Emulator::start(config, addr)
        .await
        .expect("GitHub emulator");
    let instances = InstanceAgent::start(aws.clone(), InstanceAgentConfig::new(GROUP, POOL));

    // A careless autoscaler: a JIT runner, one instance, its registration in SSM.
    let runner = "rs-asg-careless01";
    let jit: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/orgs/octo-org/actions/runners/generate-jitconfig",
            github.base_url()
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "name": runner, "runner_group_id": 1, "labels": ["self-hosted", "asg"],
        }))
        .send()
        .await
        .expect("generate-jitconfig")
        .error_for_status()
        .expect("a JIT configuration")
        .json()
        .await
        .expect("JSON");
    let encoded = jit["encoded_jit_config"]
        .as_str()
        .expect("encoded_jit_config");
    aws.asg
        .set_desired_capacity()
        .auto_scaling_group_name(GROUP)
        .desired_capacity(1)
        .send()
        .await
        .expect("set desired capacity");
    let id = eventually("an InService member", Duration::from_secs(10), async || {
        let g = aws.group(GROUP).await.ok().flatten()?;
        g.in_service().next().map(|m| m.instance_id.clone())
    })
    .await;
    aws.ssm
        .put_parameter()
        .name(format!("/runscale/{POOL}/{id}"))
        .value(format!(
            "RUNSCALE_INSTANCE_ID={id}\nGITHUB_JIT_CONFIG={encoded}\n"
        ))
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .expect("put parameter");
    let job = github
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted", "asg"],
            Duration::from_secs(60),
        ))
        .expect("job");
    eventually(
        "the runner to take the job",
        Duration::from_secs(20),
        async || {
            let snap = github.snapshot();
            snap.runners
                .iter()
                .any(|r| r.name == runner && r.job_id == Some(job.job_id))
                .then_some(())
        },
    )
    .await;
    // The instance read and deleted its parameter.
    assert_eq!(
        aws.parameters("/runscale").await.expect("parameters"),
        Vec::<String>::new()
    );

    // Terminated mid-job.
    aws.asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect("terminate");
    let violation = eventually("the violation", Duration::from_secs(10), async || {
        instances.snapshot().violations.first().cloned()
    })
    .await;
    assert_eq!(violation.instance_id, id);
    assert_eq!(
        violation.kind,
        ViolationKind::BusyInstanceTerminated {
            runner_name: runner.to_owned(),
            job_id: Some(job.job_id),
        }
    );
    eprintln!("reported: {violation}");
    // Powered off: no more heartbeats, so the emulator fails the job and records it.
    let lost = eventually("the emulator to lose the job", Duration::from_secs(15), async || {
        github.violations().into_iter().find(|v| {
            matches!(&v.kind, EmulatorViolation::RunnerLostMidJob { job_id, .. } if *job_id == job.job_id)
        })
    })
    .await;
    eprintln!("emulator: {lost}");
    let fleet = instances.stop().await;
    assert_eq!(fleet.violations.len(), 1, "{:?}", fleet.violations);
    let record = &fleet.instances[0];
    assert_eq!(record.phase, InstancePhase::Terminated);
    assert_eq!(record.outcome, Some(AgentOutcome::Killed));
    assert_eq!(record.runner_name.as_deref(), Some(runner));
    github.shutdown().await;
}
