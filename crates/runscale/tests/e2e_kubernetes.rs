//! End to end on Kubernetes: the GitHub emulator, the real daemon (`daemon::serve` from
//! configuration text) with the `kubernetes` backend against the fake kube-apiserver, whose
//! kubelet runs every pod's container as a local process — here `runscale fake-runner`, which
//! takes its JIT configuration from the pod's Secret through `envFrom`. 100 jobs must complete
//! with one pod per runner (no pod created twice), and once the pool has scaled back to zero
//! no pod, Secret or process may be left.

#![cfg(all(feature = "backend-kubernetes", feature = "provider-github"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use runscale::config;
use runscale_emulator::github::{
    Conclusion, Emulator, EmulatorHandle, EmulatorOptions, JobSpec, Workload,
};
use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator, KubeHandle};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
const IMAGE: &str = "ghcr.io/example/runscale-fake-runner:e2e";
const NAMESPACE: &str = "ci";
const JOBS: usize = 100;
const TOKEN: &str = "e2e-token";
const WEBHOOK_SECRET: &str = "e2e-webhook-secret";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// The daemon's configuration: one GitHub organisation, one pool of ephemeral runners as pods.
fn config_text(listen: &str, api_url: &str, dir: &Path) -> String {
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    format!(
        "listen: \"{listen}\"\ninterval: 3s\nshutdown_timeout: 10s\n\
         providers:\n  - name: github\n    type: github\n    api_url: \"{api_url}\"\n    \
         org: octo-org\n    repositories: [app]\n    auth: {{token: {{file: {token}}}}}\n    \
         webhook_secret: {{file: {secret}}}\n\
         backends:\n  - name: k8s\n    type: kubernetes\n    kubeconfig: {kubeconfig}\n    \
         context: runscale-fake\n    namespace: {NAMESPACE}\n    grace_period: 5s\n    \
         resync_period: 30s\n\
         pools:\n  - name: pods\n    provider: github\n    backend: k8s\n    \
         selector: {{labels: [k8s]}}\n    \
         template:\n      credentials: env\n      pod:\n        spec:\n          \
         containers: [{{name: runner, image: \"{IMAGE}\", args: [fake-runner]}}]\n    \
         min_idle: 0\n    max: 8\n    boot_timeout: 1m\n    idle_timeout: 5s\n    \
         ephemeral: true\n",
        token = q(&dir.join("token")),
        secret = q(&dir.join("webhook-secret")),
        kubeconfig = q(&dir.join("kubeconfig")),
    )
}

/// 100 jobs over about 20 s, each running 0.5 to 2 s.
fn workload() -> Workload {
    let mut w = Workload::new();
    for i in 0..JOBS as u64 {
        let at = Duration::from_millis(i * 200);
        let run = Duration::from_millis(500 + (i * 379) % 1500);
        w = w.job(
            at,
            JobSpec::new("octo-org/app", &["self-hosted", "k8s"], run).named(format!("job-{i}")),
        );
    }
    w
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_emulators(listen: &str) -> (EmulatorHandle, KubeHandle) {
    let github = EmulatorOptions {
        org: "octo-org".to_owned(),
        repos: vec!["app".to_owned()],
        token: SecretString::from(TOKEN),
        webhook_url: Some(format!("http://{listen}/webhooks/github")),
        webhook_secret: Some(SecretString::from(WEBHOOK_SECRET)),
        speed: 1.0,
        fault_rate: 0.0,
        seed: 1,
        public_url: None,
    }
    .into_config()
    .expect("emulator options");
    let github = Emulator::start(github, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("GitHub emulator");
    let kube = KubeEmulator::start(
        KubeConfig {
            namespaces: vec!["default".to_owned(), NAMESPACE.to_owned()],
            ..KubeConfig::default()
        }
        .image(IMAGE, ImageConfig::program(BIN)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("fake kube-apiserver");
    (github, kube)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_run_in_pods_with_no_duplicate_and_nothing_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let (github, kube) = start_emulators(&listen).await;
    write(&dir.path().join("token"), TOKEN);
    write(&dir.path().join("webhook-secret"), WEBHOOK_SECRET);
    kube.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    let text = config_text(&listen, github.base_url(), dir.path());
    let validated = config::load_str(&text, Path::new("e2e.yaml"), |_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));

    let stop = CancellationToken::new();
    let daemon = tokio::spawn({
        let stop = stop.clone();
        async move { runscale::daemon::serve(&validated, false, stop).await }
    });

    let playing = github.run_workload(workload()).expect("workload");
    wait_for("every job to complete", Duration::from_secs(240), || {
        playing.is_finished()
            && github.snapshot().jobs.len() == JOBS
            && github.snapshot().all_done()
    })
    .await;
    // Ephemeral runners exit after their job and idle_timeout is short: the pool scales back
    // to zero, and the pods' Secrets go with them.
    wait_for(
        "no pod, Secret or process left",
        Duration::from_secs(90),
        || {
            kube.pods(NAMESPACE).is_empty()
                && kube.secrets(NAMESPACE).is_empty()
                && kube.process_ids().is_empty()
        },
    )
    .await;
    stop.cancel();
    daemon
        .await
        .expect("daemon task")
        .expect("daemon stopped cleanly");

    let snap = github.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert!(
        snap.jobs
            .iter()
            .all(|j| j.conclusion == Some(Conclusion::Success)),
        "every job succeeded"
    );
    // One job per runner (ephemeral), each runner its own pod.
    let mut jobs_per_runner: BTreeMap<&str, u32> = BTreeMap::new();
    for j in &snap.jobs {
        let name = j.runner_name.as_deref().expect("a job ran on a runner");
        *jobs_per_runner.entry(name).or_default() += 1;
    }
    assert!(
        jobs_per_runner.values().all(|n| *n == 1),
        "{jobs_per_runner:?}"
    );
    assert!(
        snap.runners.is_empty(),
        "no runner left registered: {:?}",
        snap.runners
    );

    // No pod created twice for one runner: every pod creation succeeded with a new name (a
    // second create of a name is a 409), and there was one pod per launch.
    let requests = kube.requests();
    let pod_creates: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{NAMESPACE}/pods"))
        .collect();
    assert!(
        pod_creates.iter().all(|r| r.status == 201),
        "failed pod creations: {:?}",
        pod_creates
            .iter()
            .filter(|r| r.status != 201)
            .collect::<Vec<_>>()
    );
    let created = kube.pods_created_total();
    assert_eq!(created as usize, pod_creates.len());
    assert!(
        created as usize >= JOBS && created as usize <= JOBS + 8,
        "{created} pods for {JOBS} jobs"
    );
    eprintln!(
        "{JOBS} jobs, {created} pods created, {} Kubernetes API requests",
        requests.len()
    );
    let runners_with_jobs: BTreeSet<&str> = jobs_per_runner.keys().copied().collect();
    assert_eq!(runners_with_jobs.len(), JOBS);
    assert_eq!(kube.secrets_created_total(), created, "one Secret per pod");
    assert_eq!(
        kube.secrets_deleted_total(),
        created,
        "every Secret collected"
    );

    kube.shutdown().await;
    github.shutdown().await;
}
