//! The environment-only modes that replace two CircleCI seed systems, through the real
//! `runscale` executable with no configuration file:
//!
//! - the simple-Lambda mode runs one pass (`runscale once`) against moto (Secrets Manager and
//!   an Auto Scaling group) and the CircleCI emulator, and sets the group's desired capacity to
//!   what the Lambda would: `min(unclaimed + running, AUTO_SCALING_MAX)` while the running
//!   tasks run on the group's instances, whose runners are named by instance id;
//! - the circleci-runner-autoscaler mode discovers its pools from a group tagged
//!   `resource-class` (moto) and a CronJob labelled `resource-class-org`/`-name` (the fake
//!   kube-apiserver), and from nothing else;
//! - end to end on Kubernetes: `runscale run` in that mode runs every task in pods made from
//!   the seed README's CronJob, unchanged (the fake kubelet runs `/opt/circleci/start.sh` as
//!   `runscale fake-runner`), capacity returns to zero, and no runner loses its task.
//!
//! Without `RUNSCALE_MOTO_SERVER` (set by scripts/test.sh) the tests print a note and pass,
//! unless `CI` is set.

#![cfg(all(
    feature = "secrets-aws",
    feature = "provider-circleci",
    feature = "backend-aws-asg",
    feature = "backend-kubernetes"
))]

use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    // Two instances already run a task each; their runners are named by instance id.
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
    // Lambda: min(3 unclaimed + 2 running, 4) = 4.
    let (code, stdout, stderr) = runscale(&moto, dir.path(), &["once"], &lambda_env("4")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let group = aws.group(GROUP).await.expect("describe").expect("group");
    assert_eq!(group.desired, 4, "{stdout}{stderr}{group:?}");
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
    // The new instances' runners are to be named by their instance id; nothing secret is
    // printed.
    let params = aws.parameters("/runscale").await.expect("parameters");
    let new: Vec<&str> = group
        .members
        .iter()
        .map(|m| m.instance_id.as_str())
        .filter(|id| !busy.iter().any(|b| b == id))
        .collect();
    assert_eq!(new.len(), 3, "{group:?}");
    for id in &new {
        let name = format!("/runscale/lambda/{id}");
        assert!(params.contains(&name), "{name} missing from {params:?}");
        let value = aws
            .ssm
            .get_parameter()
            .name(&name)
            .with_decryption(true)
            .send()
            .await
            .expect("get parameter");
        let text = value
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default();
        assert!(
            text.contains(&format!("CIRCLECI_RUNNER_NAME={id}")),
            "{text}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_mode_runs_every_task_in_pods_from_the_seed_cron_job() {
    let Some(moto) = moto().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
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
    kube_api(
        &kube,
        reqwest::Method::POST,
        "/api/v1/namespaces/circleci-runners/secrets",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "api-token"},
            "stringData": {"LAUNCH_AGENT_API_AUTH_TOKEN": RC_TOKEN},
        }),
    )
    .await;

    const CLASS: &str = "vela-games/k8s-small";
    const TASKS: usize = 12;
    let emu = Emulator::start(EmulatorConfig::new(API_TOKEN, &[(CLASS, RC_TOKEN)]))
        .await
        .expect("CircleCI emulator");
    let started = Instant::now();
    emu.submit(
        (0..TASKS)
            .map(|i| TaskSpec::new(CLASS, Duration::from_millis(500 + 100 * i as u64)))
            .collect(),
    );
    let url = emu.url();
    let mut daemon = tokio::process::Command::new(BIN)
        .arg("run")
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("SECRET_NAME")
        .env("APP_CIRCLE_TOKEN", API_TOKEN)
        .env("APP_CIRCLE_RESOURCE_NAMESPACE", "vela-games")
        .env("RUNSCALE_CIRCLECI_URL", &url)
        .env("RUNSCALE_LISTEN", "127.0.0.1:0")
        .env("RUNSCALE_INTERVAL", "1s")
        .env("RUNSCALE_POOL_MAX", "4")
        .env("KUBECONFIG", &kubeconfig)
        .envs(aws_env(&moto, dir.path(), ("testing", "testing")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("runscale.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("runscale run");

    let mut most_pods = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    let log = || std::fs::read_to_string(dir.path().join("runscale.log")).unwrap_or_default();
    loop {
        let pods = kube.pods("circleci-runners").len();
        most_pods = most_pods.max(pods);
        let snap = emu.snapshot();
        if snap.count(TaskStatus::Succeeded) == TASKS && pods == 0 {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("runscale exited with {status}: {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "not done in 150 s: {snap:?}, {pods} pods\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let snap = emu.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert!(
        most_pods <= 4,
        "{most_pods} pods at once, above RUNSCALE_POOL_MAX"
    );
    assert!(kube.pods_created_total() >= TASKS as u64 / 4);
    eprintln!(
        "{TASKS} tasks in pods from the seed CronJob: all done and no pod left after {took:?}, \
         {} pods created, at most {most_pods} at once",
        kube.pods_created_total()
    );
    let text = log();
    assert!(
        !text.contains(API_TOKEN) && !text.contains(RC_TOKEN),
        "{text}"
    );
    daemon.kill().await.expect("stop runscale");
    kube.shutdown().await;
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
