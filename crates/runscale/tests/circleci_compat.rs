//! The environment-only modes that replace two CircleCI seed systems, through the real
//! `runscale` executable with no configuration file:
//!
//! - the simple-Lambda mode runs one pass (`runscale once`) against moto (Secrets Manager and
//!   an Auto Scaling group) and the CircleCI emulator, and sets the group's desired capacity to
//!   what the Lambda would: `min(unclaimed + running, AUTO_SCALING_MAX)` while the running
//!   tasks run on the group's instances, and its MaxSize to `AUTO_SCALING_MAX`;
//! - on the seed README's own setup — a group created at 0/0/0 with scale-in protection, whose
//!   instances start a single-task runner named `$RUNNER_NAME-<time>` (or one fixed name) and
//!   power off when it exits ([`SeedFleet`] plays them) — a busy instance is never terminated
//!   or unprotected, not even long past `boot_timeout` (the regression: runscale took the
//!   runner for missing and killed the instance with its task), and `runscale run` scales the
//!   group out from 0/0/0 and back in, the instances ending by themselves;
//! - the circleci-runner-autoscaler mode discovers its pools from a group tagged
//!   `resource-class` (moto) and a CronJob labelled `resource-class-org`/`-name` (the fake
//!   kube-apiserver), and from nothing else;
//! - end to end with the seed's artefacts: `runscale run` in that mode runs every task in
//!   Jobs made from the seed README's CronJob, unchanged, owned by it (the fake kubelet runs
//!   `/opt/circleci/start.sh` as `runscale fake-runner`), picks up a CronJob created while it
//!   runs within seconds, capacity returns to zero, and no runner loses its task.
//!
//! Without `RUNSCALE_MOTO_SERVER` (set by scripts/test.sh) the tests print a note and pass,
//! unless `CI` is set.

#![cfg(all(
    feature = "secrets-aws",
    feature = "provider-circleci",
    feature = "backend-aws-asg",
    feature = "backend-kubernetes"
))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use runscale_emulator::aws::{MotoClient, MotoServer};
use runscale_emulator::circleci::{
    self, AgentConfig, Emulator, EmulatorConfig, EmulatorHandle, TaskSpec, TaskStatus,
};
use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator, KubeHandle};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

mod support;

use support::{BIN, aws_env, fake_runner_script, kube_api, kube_fixture, moto, run_with_aws};

const REGION: &str = "us-east-1";
const API_TOKEN: &str = "circle-api-token-7d1e";
const RC_TOKEN: &str = "rc-token-0b9a";
/// The seed's Kubernetes namespace (`APP_KUBERNETES_NAMESPACE`'s default).
const RC_NS: &str = "circleci-runners";

async fn create_secret(moto: &MotoServer, name: &str, value: &str) {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(moto.url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret");
}

/// Runs `runscale <args>` with no configuration file and `env` on top of an AWS environment
/// pointing at moto: exit code, stdout, stderr.
async fn runscale(
    moto: &MotoServer,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    run_with_aws(
        moto,
        dir,
        ("testing", "testing"),
        args,
        env,
        Duration::from_secs(180),
    )
    .await
}

/// Starts a fake machine runner named `name` that takes one task of `class`.
fn runner(emu: &EmulatorHandle, name: &str, stop: &CancellationToken) {
    let config = AgentConfig {
        api_url: emu.url(),
        token: SecretString::from(RC_TOKEN),
        name: name.to_owned(),
        hostname: name.to_owned(),
        mode: circleci::RunnerMode::SingleTask,
        idle_timeout: Some(Duration::from_secs(60)),
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(500),
    };
    tokio::spawn(circleci::run_agent(config, stop.clone()));
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_lambda_mode_sets_the_desired_capacity_the_lambda_would() {
    let Some(moto) = moto().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let aws = MotoClient::new(moto.url(), REGION);
    const GROUP: &str = "circleci-lambda-runners";
    const CLASS: &str = "acme/lambda";
    aws.create_group(GROUP, 10).await.expect("group");
    // Two instances (not protected from scale-in) already run a task each.
    aws.set_desired(GROUP, 2).await.expect("desired 2");
    let group = aws.group(GROUP).await.expect("describe").expect("group");
    let busy: Vec<String> = group
        .members
        .iter()
        .map(|m| m.instance_id.clone())
        .collect();
    assert_eq!(busy.len(), 2, "{group:?}");
    create_secret(
        &moto,
        "runscale/circleci-lambda",
        &format!(r#"{{"resource_class": "{CLASS}", "circle_token": "{API_TOKEN}"}}"#),
    )
    .await;

    let emu = Emulator::start(EmulatorConfig::new(API_TOKEN, &[(CLASS, RC_TOKEN)]))
        .await
        .expect("CircleCI emulator");
    emu.submit(
        (0..5)
            .map(|_| TaskSpec::new(CLASS, Duration::from_secs(120)))
            .collect(),
    );
    let stop = CancellationToken::new();
    for id in &busy {
        runner(&emu, id, &stop);
    }
    wait_until("two running tasks", || {
        emu.snapshot().count(TaskStatus::Running) == 2
    })
    .await;

    let url = emu.url();
    let lambda_env = |max: &'static str| {
        vec![
            ("SECRET_NAME", "runscale/circleci-lambda"),
            ("SECRET_REGION", REGION),
            ("AUTO_SCALING_GROUP_NAME", GROUP),
            ("AUTO_SCALING_GROUP_REGION", REGION),
            ("AUTO_SCALING_MAX", max),
            ("RUNSCALE_CIRCLECI_URL", url.as_str()),
        ]
    };
    // Lambda: min(3 unclaimed + 2 running, 4) = 4, with MaxSize set to 4.
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &lambda_env("4")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let group = aws.group(GROUP).await.expect("describe").expect("group");
    assert_eq!(
        (group.desired, group.max),
        (4, 4),
        "{stdout}{stderr}{group:?}"
    );
    // Lambda: min(3 + 2, 10) = 5: one more, as two new instances are still coming up.
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &lambda_env("10")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let group = aws.group(GROUP).await.expect("describe").expect("group");
    assert_eq!(group.desired, 5, "{stdout}{stderr}{group:?}");
    for id in &busy {
        assert!(
            group.members.iter().any(|m| m.instance_id == *id),
            "busy instance {id} was terminated: {group:?}"
        );
    }
    // MaxSize follows AUTO_SCALING_MAX; while tasks run every instance is protected from
    // scale-in (any may be running one), and runscale hands the new ones nothing: the launch
    // template starts and names their runners.
    assert_eq!((group.min, group.max), (0, 10), "{group:?}");
    let params = aws.parameters("/runscale").await.expect("parameters");
    for m in &group.members {
        assert!(m.protected, "{m:?}");
        let credentials = format!("/runscale/lambda/{}", m.instance_id);
        assert!(
            !params.contains(&credentials),
            "{credentials} in {params:?}"
        );
    }
    for text in [&stdout, &stderr] {
        assert!(!text.contains(API_TOKEN), "{text}");
    }
    stop.cancel();

    // A missing variable is named.
    let mut partial = lambda_env("4");
    partial.retain(|(k, _)| *k != "AUTO_SCALING_GROUP_NAME");
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &partial).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("AUTO_SCALING_GROUP_NAME"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_mode_discovers_pools_from_group_tags_and_cron_job_labels() {
    let Some(moto) = moto().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let aws = MotoClient::new(moto.url(), REGION);
    // The group's name differs from its class (the seed required them equal).
    aws.create_group("asg-large", 3).await.expect("group");
    aws.tag_group("asg-large", "resource-class", "vela-games/large")
        .await
        .expect("tag");
    // Another namespace's group and an untagged one are not runscale's.
    aws.create_group("asg-other", 3).await.expect("group");
    aws.tag_group("asg-other", "resource-class", "someone-else/large")
        .await
        .expect("tag");
    aws.create_group("asg-untagged", 3).await.expect("group");

    let (kube, kubeconfig) = seed_cluster(dir.path(), KubeConfig::default()).await;

    let emu = Emulator::start(EmulatorConfig::new(
        API_TOKEN,
        &[
            ("vela-games/large", RC_TOKEN),
            ("vela-games/k8s-small", RC_TOKEN),
        ],
    ))
    .await
    .expect("CircleCI emulator");
    let url = emu.url();
    let kubeconfig_text = kubeconfig.display().to_string();
    let env = [
        ("APP_CIRCLE_TOKEN", API_TOKEN),
        ("APP_CIRCLE_RESOURCE_NAMESPACE", "vela-games"),
        ("RUNSCALE_CIRCLECI_URL", url.as_str()),
        ("KUBECONFIG", kubeconfig_text.as_str()),
    ];
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once", "--dry-run"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let pools: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["large", "k8s-small"].contains(w))
        .collect();
    assert_eq!(pools, ["large", "k8s-small"], "{stdout}{stderr}");
    assert!(!stdout.contains("other"), "{stdout}");

    // check shows every pool's cap: the CronJob's the default 20, the group's its MaxSize's.
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["check"], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let row = |pool: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pool) && l.contains("circleci"))
            .unwrap_or_else(|| panic!("no row for {pool}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert!(stdout.contains("BOOT_TIMEOUT"), "{stdout}");
    assert_eq!(
        row("k8s-small")[1..4],
        ["circleci", "kubernetes", "20"],
        "{stdout}"
    );
    assert_eq!(
        row("large")[1..5],
        ["circleci", "asg", "1000", "15m"],
        "{stdout}"
    );

    // Without the Kubernetes scaler only the group's class is a pool.
    let mut no_kube = env.to_vec();
    no_kube.push(("APP_KUBERNETES_SCALER_ENABLED", "false"));
    let (code, stdout, stderr) =
        runscale(&moto, dir.path(), &["once", "--dry-run"], &no_kube).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("large") && !stdout.contains("k8s-small"),
        "{stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(API_TOKEN), "{text}");
    }
    kube.shutdown().await;
}

/// The seed's artefacts end to end: its environment (`APP_*`), its README's CronJob
/// (`resource-class-org`/`resource-class-name`) and its runner token Secret, a group tagged
/// `resource-class`; `runscale run` runs every task in Jobs made from the CronJob's
/// `jobTemplate` (owned by the CronJob, never bare pods), picks up a CronJob created while it
/// runs within seconds (re-discovery), terminates no busy runner, and scales back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_mode_runs_every_task_in_jobs_from_the_seed_cron_jobs_and_rediscovers() {
    let Some(moto) = moto().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // The seed's Terraform tags its groups `resource-class`; no task asks for this class.
    let aws = MotoClient::new(moto.url(), REGION);
    aws.create_group("vela-games-large", 3)
        .await
        .expect("group");
    aws.tag_group("vela-games-large", "resource-class", "vela-games/large")
        .await
        .expect("tag");
    // The seed image's entrypoint, played by runscale's fake machine runner.
    let start = fake_runner_script(dir.path(), "start.sh");
    let (kube, kubeconfig) = seed_cluster(
        dir.path(),
        KubeConfig::default().image(
            "circleci-image:latest",
            ImageConfig::host().with_program("/opt/circleci/start.sh", &start),
        ),
    )
    .await;
    // The runner token, where the seed's CronJob reads it from.
    token_secret(&kube, "api-token", RC_TOKEN).await;
    let small_uid = kube.cronjobs(RC_NS)[0].metadata.uid.clone().expect("uid");

    const SMALL: &str = "vela-games/k8s-small";
    const LARGE: &str = "vela-games/k8s-large";
    const TASKS: usize = 12;
    const LATE_TASKS: usize = 4;
    // Each resource class has its own runner token (CircleCI issues one per class).
    const LARGE_TOKEN: &str = "rc-token-large-5c1f";
    let emu = Emulator::start(EmulatorConfig::new(
        API_TOKEN,
        &[
            (SMALL, RC_TOKEN),
            (LARGE, LARGE_TOKEN),
            ("vela-games/large", "rc-token-group"),
        ],
    ))
    .await
    .expect("CircleCI emulator");
    let started = Instant::now();
    emu.submit(
        (0..TASKS)
            .map(|i| TaskSpec::new(SMALL, Duration::from_millis(800 + 100 * i as u64)))
            .collect(),
    );
    let url = emu.url();
    let log_path = dir.path().join("runscale.log");
    let mut daemon = tokio::process::Command::new(BIN)
        .arg("run")
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("SECRET_NAME")
        // The seed's environment, as its README gives it.
        .env("APP_CIRCLE_TOKEN", API_TOKEN)
        .env("APP_CIRCLE_RESOURCE_NAMESPACE", "vela-games")
        .env("APP_KUBERNETES_NAMESPACE", RC_NS)
        .env("APP_KUBERNETES_SCALER_ENABLED", "true")
        // runscale's own: where the emulator is, and quick passes for the test.
        .env("RUNSCALE_CIRCLECI_URL", &url)
        .env("RUNSCALE_LISTEN", "127.0.0.1:0")
        .env("RUNSCALE_INTERVAL", "1s")
        .env("RUNSCALE_DISCOVERY_INTERVAL", "1s")
        .env("RUNSCALE_POOL_MAX", "4")
        .env("KUBECONFIG", &kubeconfig)
        .envs(aws_env(&moto, dir.path(), ("testing", "testing")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("runscale run");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut most_jobs = 0;
    let mut jobs_seen = std::collections::BTreeSet::new();
    let mut large_created: Option<Instant> = None;
    let mut large_picked_up: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(170);
    loop {
        let jobs = kube.jobs(RC_NS);
        let pods = kube.pods(RC_NS);
        most_jobs = most_jobs.max(jobs.len());
        // Every runner is a Job owned by its CronJob; every pod is a Job's.
        for job in &jobs {
            let name = job.metadata.name.clone().unwrap_or_default();
            let owner = job
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .unwrap_or_else(|| panic!("Job {name} has no owner"));
            assert_eq!(owner.kind, "CronJob", "{job:?}");
            if owner.name == "small-runner" {
                assert_eq!(owner.uid, small_uid);
            }
            jobs_seen.insert(name);
        }
        for pod in &pods {
            let owner = pod
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| o.kind.as_str());
            assert_eq!(owner, Some("Job"), "a bare pod: {pod:?}");
        }
        // Once the first task has run, a second CronJob appears (a new resource class).
        let snap = emu.snapshot();
        if large_created.is_none() && snap.count(TaskStatus::Succeeded) > 0 {
            let mut large = kube_fixture("circleci-cronjob.yaml");
            large["metadata"]["name"] = serde_json::json!("large-runner");
            large["metadata"]["labels"]["resource-class-name"] = serde_json::json!("k8s-large");
            let template = &mut large["spec"]["jobTemplate"]["spec"]["template"];
            template["metadata"]["labels"]["resource-class-name"] = serde_json::json!("k8s-large");
            // Its own runner token, in its own Secret.
            template["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"] =
                serde_json::json!("api-token-large");
            token_secret(&kube, "api-token-large", LARGE_TOKEN).await;
            kube_api(
                &kube,
                reqwest::Method::POST,
                "/apis/batch/v1/namespaces/circleci-runners/cronjobs",
                large,
            )
            .await;
            emu.submit(
                (0..LATE_TASKS)
                    .map(|_| TaskSpec::new(LARGE, Duration::from_millis(800)))
                    .collect(),
            );
            large_created = Some(Instant::now());
        }
        if let (Some(at), None) = (large_created, large_picked_up)
            && jobs.iter().any(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.name == "large-runner")
            })
        {
            large_picked_up = Some(at.elapsed());
        }
        if snap.count(TaskStatus::Succeeded) == TASKS + LATE_TASKS
            && jobs.is_empty()
            && pods.is_empty()
        {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("runscale exited with {status}: {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "not done in 170 s: {snap:?}, {} Jobs, {} pods\n{}",
            jobs.len(),
            pods.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let snap = emu.snapshot();
    let text = log();
    assert!(snap.violations.is_empty(), "{:?}\n{text}", snap.violations);
    let picked_up = large_picked_up.expect("the new CronJob's class got Jobs");
    assert!(
        picked_up < Duration::from_secs(15),
        "the new CronJob took {picked_up:?}\n{text}"
    );
    assert!(
        text.contains("the set of pools changed") && text.contains("k8s-large"),
        "{text}"
    );
    assert!(
        most_jobs <= 8,
        "{most_jobs} Jobs at once, above RUNSCALE_POOL_MAX per pool"
    );
    for secret in [API_TOKEN, RC_TOKEN, LARGE_TOKEN] {
        assert!(!text.contains(secret), "{text}");
    }
    // The group's pool exists but had no task: nothing was launched on it.
    let group = aws
        .group("vela-games-large")
        .await
        .expect("describe")
        .expect("group");
    assert_eq!(group.desired, 0, "{group:?}");
    eprintln!(
        "seed artefacts: {} tasks ({TASKS} + {LATE_TASKS} on a CronJob added while running) \
         in {} Jobs from the CronJobs' jobTemplate, at most {most_jobs} at once, {} pods; the \
         new CronJob had Jobs {picked_up:?} after it was created; all done and no Job or pod \
         left after {took:?}; no task lost",
        TASKS + LATE_TASKS,
        jobs_seen.len(),
        kube.pods_created_total(),
    );
    daemon.kill().await.expect("stop runscale");
    kube.shutdown().await;
}

/// A runner token Secret as the seed's README has it (`LAUNCH_AGENT_API_AUTH_TOKEN`).
async fn token_secret(kube: &KubeHandle, name: &str, token: &str) {
    kube_api(
        kube,
        reqwest::Method::POST,
        "/api/v1/namespaces/circleci-runners/secrets",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"LAUNCH_AGENT_API_AUTH_TOKEN": token},
        }),
    )
    .await;
}

/// The fake API server (`config` with the namespaces `default` and `circleci-runners`) holding
/// the circleci-runner-autoscaler README's CronJob, unchanged, and its kubeconfig in `dir`.
async fn seed_cluster(dir: &Path, config: KubeConfig) -> (KubeHandle, PathBuf) {
    let kube = KubeEmulator::start(
        KubeConfig {
            namespaces: vec!["default".to_owned(), "circleci-runners".to_owned()],
            ..config
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("fake kube-apiserver");
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    kube_api(
        &kube,
        reqwest::Method::POST,
        "/apis/batch/v1/namespaces/circleci-runners/cronjobs",
        kube_fixture("circleci-cronjob.yaml"),
    )
    .await;
    (kube, kubeconfig)
}

/// The runner name of the seed's install script (`RUNNER_NAME` in `install_runner_ubuntu.sh`).
const SEED_RUNNER_NAME: &str = "lambda";

/// How the seed's install script names the runner of an instance.
#[derive(Clone, Copy, Debug)]
enum SeedName {
    /// `$RUNNER_NAME-$(date +"%g%m%d-%H%M%S-%3N")`, the original script.
    Timestamped,
    /// `$RUNNER_NAME` on every instance (the script with the timestamp dropped, or machine
    /// runner 3's packaged configuration).
    Fixed,
}

impl SeedName {
    fn name(self) -> String {
        match self {
            SeedName::Timestamped => format!(
                "{SEED_RUNNER_NAME}-{}",
                chrono::Utc::now().format("%y%m%d-%H%M%S-%3f")
            ),
            SeedName::Fixed => SEED_RUNNER_NAME.to_owned(),
        }
    }
}

/// One instance of the seed's group, as [`SeedFleet`] plays it.
struct SeedInstance {
    runner: String,
    hostname: String,
    agent: tokio::task::JoinHandle<Result<circleci::AgentReport, circleci::AgentError>>,
    /// Its runner exited and it powered itself off.
    shut_down: bool,
    /// It is no longer a member of the group.
    gone: bool,
}

#[derive(Default)]
struct FleetState {
    instances: BTreeMap<String, SeedInstance>,
    violations: Vec<String>,
    most_in_service: usize,
}

/// The seed's instances: every member of the group boots the launch template's user data — a
/// single-task runner with the resource-class token baked in, named as the install script
/// names it, that exits after one task or after `idle` without one, and then powers the
/// machine off (`ExecStopPost=shutdown now -h`: the group terminates the member without
/// lowering its desired capacity). Every 100 ms it also checks moto's state against the
/// emulator's: a member whose runner holds a task must be in the group and protected from
/// scale-in; otherwise that is a violation. An instance taken out of the group while its
/// runner is up is powered off at once (its task, if any, is then lost in the emulator too).
struct SeedFleet {
    state: Arc<Mutex<FleetState>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SeedFleet {
    fn start(
        aws: MotoClient,
        emu: &Arc<EmulatorHandle>,
        group: &'static str,
        naming: SeedName,
        idle: Duration,
    ) -> Self {
        let state = Arc::new(Mutex::new(FleetState::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(fleet_loop(
            aws,
            emu.clone(),
            group,
            naming,
            idle,
            state.clone(),
            stop.clone(),
        ));
        Self { state, stop, task }
    }

    fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }

    fn most_in_service(&self) -> usize {
        lock(&self.state).most_in_service
    }

    fn booted(&self) -> usize {
        lock(&self.state).instances.len()
    }

    /// Stops watching and powers off every instance still up.
    async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        let _ = self.task.await;
        let mut s = lock(&self.state);
        for i in s.instances.values_mut() {
            i.agent.abort();
        }
        s.violations.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn fleet_loop(
    aws: MotoClient,
    emu: Arc<EmulatorHandle>,
    group: &'static str,
    naming: SeedName,
    idle: Duration,
    state: Arc<Mutex<FleetState>>,
    stop: CancellationToken,
) {
    let mut n = 0u32;
    while !stop.is_cancelled() {
        let Ok(Some(g)) = aws.group(group).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Runners holding a task, by (name, hostname), read after the group.
        let busy: Vec<(String, String)> = emu
            .snapshot()
            .runners
            .into_iter()
            .filter(|r| r.task.is_some())
            .map(|r| (r.name, r.hostname))
            .collect();
        let mut to_shut_down = Vec::new();
        {
            let mut s = lock(&state);
            s.most_in_service = s.most_in_service.max(g.in_service().count());
            for m in g.in_service() {
                if !s.instances.contains_key(&m.instance_id) {
                    n += 1;
                    let runner = naming.name();
                    let hostname = format!("ip-10-0-0-{n}");
                    let config = circleci::AgentConfig {
                        api_url: emu.url(),
                        token: SecretString::from(RC_TOKEN),
                        name: runner.clone(),
                        hostname: hostname.clone(),
                        mode: circleci::RunnerMode::SingleTask,
                        idle_timeout: Some(idle),
                        poll_interval: Duration::from_millis(100),
                        heartbeat_interval: Duration::from_millis(300),
                    };
                    let agent = tokio::spawn(circleci::run_agent(config, CancellationToken::new()));
                    s.instances.insert(
                        m.instance_id.clone(),
                        SeedInstance {
                            runner,
                            hostname,
                            agent,
                            shut_down: false,
                            gone: false,
                        },
                    );
                }
            }
            let FleetState {
                instances,
                violations,
                ..
            } = &mut *s;
            for (id, i) in instances.iter_mut().filter(|(_, i)| !i.gone) {
                let holds_task = busy.contains(&(i.runner.clone(), i.hostname.clone()));
                match g.members.iter().find(|m| m.instance_id == *id) {
                    Some(m) if m.in_service() => {
                        if holds_task && !m.protected {
                            violations.push(format!(
                                "busy instance {id} (runner {}) lost its scale-in protection",
                                i.runner
                            ));
                        }
                        if i.agent.is_finished() && !i.shut_down {
                            i.shut_down = true;
                            to_shut_down.push(id.clone());
                        }
                    }
                    _ => {
                        i.gone = true;
                        if !i.shut_down {
                            // Terminated from outside while its runner was up: power off.
                            i.agent.abort();
                            if holds_task {
                                violations.push(format!(
                                    "busy instance {id} (runner {}) was terminated while its \
                                     task ran",
                                    i.runner
                                ));
                            }
                        }
                    }
                }
            }
        }
        for id in to_shut_down {
            if let Err(e) = aws.shut_down(&id).await {
                lock(&state)
                    .violations
                    .push(format!("cannot shut {id} down: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seed's secret, as `SecretString` or as the base64 `SecretBinary` the Lambda decodes.
async fn create_seed_secret(moto: &MotoServer, name: &str, binary: bool) {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(moto.url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .build();
    let json = format!(r#"{{"resource_class": "{SEED_CLASS}", "circle_token": "{API_TOKEN}"}}"#);
    let request = aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(name);
    let request = if binary {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(json);
        request.secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(text))
    } else {
        request.secret_string(json)
    };
    request.send().await.expect("create secret");
}

const SEED_CLASS: &str = "acme/lambda-seed";
const SEED_GROUP: &str = "cci-runner-auto-scaling-group";
const SEED_SECRET: &str = "cci-runner-lambda-secrets";

/// The Lambda's environment for the seed's group.
fn seed_env(url: &str, max: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("SECRET_NAME", SEED_SECRET.to_owned()),
        ("SECRET_REGION", REGION.to_owned()),
        ("AUTO_SCALING_GROUP_NAME", SEED_GROUP.to_owned()),
        ("AUTO_SCALING_GROUP_REGION", REGION.to_owned()),
        ("AUTO_SCALING_MAX", max.to_owned()),
        ("RUNSCALE_CIRCLECI_URL", url.to_owned()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto with the seed's group (MinSize 0, DesiredCapacity 0, MaxSize `max`, scale-in
/// protection on) and its secret (`SecretBinary` if `binary`), and the CircleCI emulator with
/// the seed's resource class (a task is lost 2 s after its runner went silent); `None` without
/// moto.
async fn seed_setup(
    max: i32,
    binary: bool,
) -> Option<(
    MotoServer,
    tempfile::TempDir,
    MotoClient,
    Arc<EmulatorHandle>,
)> {
    let moto = moto().await?;
    let dir = tempfile::tempdir().expect("tempdir");
    let aws = MotoClient::new(moto.url(), REGION);
    aws.create_group(SEED_GROUP, max).await.expect("group");
    aws.protect_new_instances(SEED_GROUP)
        .await
        .expect("protect");
    create_seed_secret(&moto, SEED_SECRET, binary).await;
    let mut config = EmulatorConfig::new(API_TOKEN, &[(SEED_CLASS, RC_TOKEN)]);
    config.task_lease = Duration::from_secs(2);
    let emu = Arc::new(Emulator::start(config).await.expect("CircleCI emulator"));
    Some((moto, dir, aws, emu))
}

/// Regression (issue 15): a busy instance whose runner has the seed's name (not its instance
/// id) was terminated at `boot_timeout` while its task ran. Driven like the Lambda, by one
/// `runscale once` after another, on a group the Lambda has run against (MaxSize set).
async fn busy_seed_instance_outlives_boot_timeout(naming: SeedName) {
    let Some((moto, dir, aws, emu)) = seed_setup(10, false).await else {
        return;
    };
    let fleet = SeedFleet::start(
        aws.clone(),
        &emu,
        SEED_GROUP,
        naming,
        Duration::from_secs(3),
    );
    emu.submit(vec![TaskSpec::new(SEED_CLASS, Duration::from_secs(15))]);
    let env = seed_env(&emu.url(), "10");
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &borrowed(&env)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_until("the task running on the new instance", || {
        emu.snapshot().count(TaskStatus::Running) == 1
    })
    .await;
    let group = aws
        .group(SEED_GROUP)
        .await
        .expect("describe")
        .expect("group");
    let [busy] = group.members.as_slice() else {
        panic!("one instance: {group:?}");
    };
    // Ten minutes pass (boot_timeout is five): runscale's record of the launch says so.
    let binding = format!("/runscale/lambda-seed/binding/{}", busy.instance_id);
    let value = aws
        .ssm
        .get_parameter()
        .name(&binding)
        .send()
        .await
        .expect("binding")
        .parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .expect("binding value");
    let mut record: serde_json::Value = serde_json::from_str(&value).expect("binding JSON");
    record["launched_at"] = serde_json::json!(chrono::Utc::now() - chrono::Duration::minutes(10));
    aws.ssm
        .put_parameter()
        .name(&binding)
        .value(record.to_string())
        .r#type(runscale_emulator::aws::aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("rewrite binding");
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &borrowed(&env)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.violations(), Vec::<String>::new(), "{stdout}{stderr}");
    let group = aws
        .group(SEED_GROUP)
        .await
        .expect("describe")
        .expect("group");
    assert!(
        group
            .members
            .iter()
            .any(|m| m.instance_id == busy.instance_id && m.protected),
        "busy instance {} not kept protected: {group:?}\n{stdout}{stderr}",
        busy.instance_id
    );
    assert!(!stderr.contains("terminate"), "{stderr}");

    // The task ends, its runner exits and powers the machine off; the next run lowers the
    // desired capacity, so what the group put in its place ends too and is not replaced.
    wait_until("the task to succeed", || {
        emu.snapshot().count(TaskStatus::Succeeded) == 1
    })
    .await;
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &borrowed(&env)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_for("the group to empty", Duration::from_secs(30), async || {
        aws.group(SEED_GROUP)
            .await
            .ok()
            .flatten()
            .is_some_and(|g| g.members.is_empty() && g.desired == 0)
    })
    .await;
    let violations = fleet.stop().await;
    let snap = emu.snapshot();
    assert!(violations.is_empty(), "{violations:?}");
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    for text in [&stdout, &stderr] {
        assert!(!text.contains(API_TOKEN), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_named_busy_instance_is_kept_past_boot_timeout() {
    busy_seed_instance_outlives_boot_timeout(SeedName::Timestamped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_named_busy_instance_is_kept_past_boot_timeout() {
    busy_seed_instance_outlives_boot_timeout(SeedName::Fixed).await;
}

/// The seed README's setup end to end: a group created at 0/0/0 with scale-in protection, a
/// `SecretBinary` secret, runners that all share one fixed name; `runscale check`, then
/// `runscale run` scales the group out and back to zero while every task runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_lambda_mode_scales_the_seed_group_out_from_zero_and_back() {
    let Some((moto, dir, aws, emu)) = seed_setup(0, true).await else {
        return;
    };
    let env = seed_env(&emu.url(), "3");

    // check: the group's limits will change, and that needs UpdateAutoScalingGroup.
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["check"], &borrowed(&env)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for wanted in [
        "MaxSize 0 -> 3",
        "autoscaling:UpdateAutoScalingGroup",
        "runners named by the instances",
    ] {
        assert!(
            stdout.contains(wanted),
            "{wanted:?} missing:\n{stdout}{stderr}"
        );
    }

    const TASKS: usize = 7;
    let fleet = SeedFleet::start(
        aws.clone(),
        &emu,
        SEED_GROUP,
        SeedName::Fixed,
        Duration::from_secs(3),
    );
    let started = Instant::now();
    emu.submit(
        (0..TASKS)
            .map(|i| TaskSpec::new(SEED_CLASS, Duration::from_millis(1500 + 400 * i as u64)))
            .collect(),
    );
    let log = dir.path().join("runscale.log");
    let mut daemon = tokio::process::Command::new(BIN)
        .arg("run")
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("APP_CIRCLE_TOKEN")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUNSCALE_LISTEN", "127.0.0.1:0")
        .env("RUNSCALE_INTERVAL", "1s")
        .envs(aws_env(&moto, dir.path(), ("testing", "testing")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("runscale run");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let snap = emu.snapshot();
        let group = aws
            .group(SEED_GROUP)
            .await
            .expect("describe")
            .expect("group");
        if snap.all_finished() && group.members.is_empty() && group.desired == 0 {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("runscale exited with {status}: {}", text());
        }
        assert!(
            Instant::now() < deadline,
            "not done in 150 s: {snap:?}\n{group:?}\n{:?}\n{}",
            fleet.violations(),
            text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let (most, booted) = (fleet.most_in_service(), fleet.booted());
    let violations = fleet.stop().await;
    daemon.kill().await.expect("stop runscale");
    let snap = emu.snapshot();
    let group = aws
        .group(SEED_GROUP)
        .await
        .expect("describe")
        .expect("group");
    let log = text();
    assert!(violations.is_empty(), "{violations:?}\n{log}");
    assert!(snap.violations.is_empty(), "{:?}\n{log}", snap.violations);
    assert_eq!(snap.count(TaskStatus::Succeeded), TASKS, "{snap:?}");
    assert_eq!((group.min, group.max), (0, 3), "{group:?}");
    assert!(
        most <= 3,
        "{most} instances in service, above AUTO_SCALING_MAX"
    );
    assert!(most >= 2, "never scaled out beyond one instance");
    assert!(!log.contains("reason=boot_timeout"), "{log}");
    assert!(!log.contains(API_TOKEN) && !log.contains(RC_TOKEN), "{log}");
    eprintln!(
        "{TASKS} tasks on the seed's group from 0/0/0: all done and the group back at 0 after \
         {took:?}; {booted} instances booted, at most {most} in service"
    );
}
