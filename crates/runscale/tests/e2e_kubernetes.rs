//! End to end on Kubernetes: the GitHub emulator, the real daemon (`daemon::serve` from
//! configuration text) with the `kubernetes` backend against the fake kube-apiserver, whose
//! kubelet runs every pod's container as a local process — here `runscale fake-runner`, which
//! takes its JIT configuration from the pod's Secret through `envFrom`. 100 jobs must complete
//! with one pod per runner (no pod created twice), and once the pool has scaled back to zero
//! no pod, Secret or process may be left. Then the same with two `runscale run` replicas
//! electing a leader over a Lease: the leader is killed (SIGKILL) mid-run, the other takes over
//! within the lease duration plus one pass, every job completes and no pod is created twice.

#![cfg(all(feature = "backend-kubernetes", feature = "provider-github"))]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use runscale::config;
use runscale_emulator::github::{
    Conclusion, Emulator, EmulatorHandle, EmulatorOptions, JobSpec, Snapshot, Workload,
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
const FAILOVER_JOBS: usize = 60;
const LEASE_DURATION: Duration = Duration::from_secs(4);
const INTERVAL: Duration = Duration::from_secs(3);

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

/// `jobs` jobs, one every `every`, each running `min_run` plus up to `spread`.
fn workload(jobs: usize, every: Duration, min_run: Duration, spread: Duration) -> Workload {
    let mut w = Workload::new();
    for i in 0..jobs as u32 {
        let extra = spread.mul_f64(f64::from((i * 379) % 1000) / 1000.0);
        w = w.job(
            every * i,
            JobSpec::new("octo-org/app", &["self-hosted", "k8s"], min_run + extra)
                .named(format!("job-{i}")),
        );
    }
    w
}

/// Waits until the workload has played and its `jobs` jobs are done, then until the pool has
/// scaled back to zero: ephemeral runners exit after their job and idle_timeout is short, so
/// no pod, Secret (collected with its pod) or process may be left.
async fn wait_done_and_gone(
    github: &EmulatorHandle,
    kube: &KubeHandle,
    playing: &tokio::task::JoinHandle<()>,
    jobs: usize,
) {
    wait_for("every job to complete", Duration::from_secs(240), || {
        playing.is_finished()
            && github.snapshot().jobs.len() == jobs
            && github.snapshot().all_done()
    })
    .await;
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
}

/// No violation, every job succeeded, each on a runner of its own (ephemeral); returns how
/// many runners ran jobs.
fn assert_one_successful_job_per_runner(snap: &Snapshot) -> usize {
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    let mut runners = BTreeSet::new();
    for j in &snap.jobs {
        assert_eq!(j.conclusion, Some(Conclusion::Success), "{j:?}");
        let name = j.runner_name.as_deref().expect("a job ran on a runner");
        assert!(runners.insert(name), "runner {name} ran two jobs");
    }
    runners.len()
}

/// How many pod creations there were; each must have succeeded (a second create of a
/// runner's pod name is a 409), so no pod was created twice for one runner.
fn successful_pod_creates(kube: &KubeHandle) -> usize {
    let creates: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{NAMESPACE}/pods"))
        .collect();
    let failed: Vec<_> = creates.iter().filter(|r| r.status != 201).collect();
    assert!(failed.is_empty(), "failed pod creations: {failed:?}");
    assert_eq!(kube.pods_created_total() as usize, creates.len());
    creates.len()
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
        async move { runscale::daemon::serve(&validated, false, stop, None).await }
    });

    // 100 jobs over about 20 s, each running 0.5 to 2 s.
    let jobs = workload(
        JOBS,
        Duration::from_millis(200),
        Duration::from_millis(500),
        Duration::from_millis(1500),
    );
    let playing = github.run_workload(jobs).expect("workload");
    wait_done_and_gone(&github, &kube, &playing, JOBS).await;
    stop.cancel();
    daemon
        .await
        .expect("daemon task")
        .expect("daemon stopped cleanly");

    let snap = github.snapshot();
    assert_eq!(assert_one_successful_job_per_runner(&snap), JOBS);
    assert!(
        snap.runners.is_empty(),
        "no runner left registered: {:?}",
        snap.runners
    );
    // One pod per runner: every create succeeded, and there was one per launch.
    let created = successful_pod_creates(&kube);
    assert!(
        (JOBS..=JOBS + 8).contains(&created),
        "{created} pods for {JOBS} jobs"
    );
    eprintln!(
        "{JOBS} jobs, {created} pods created, {} Kubernetes API requests",
        kube.requests().len()
    );
    let created = created as u64;
    assert_eq!(kube.secrets_created_total(), created, "one Secret per pod");
    assert_eq!(
        kube.secrets_deleted_total(),
        created,
        "every Secret collected"
    );

    kube.shutdown().await;
    github.shutdown().await;
}

/// The Lease's holder, if any.
fn lease_holder(kube: &KubeHandle) -> Option<String> {
    kube.leases(NAMESPACE)
        .into_iter()
        .find(|l| l.metadata.name.as_deref() == Some("runscale"))
        .and_then(|l| l.spec?.holder_identity)
}

/// A `runscale run` process, killed when dropped; its stderr goes to a file.
struct Replica {
    child: std::process::Child,
}

impl Replica {
    fn start(config: &Path, identity: &str, log: &Path) -> Self {
        let child = std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .args(["--leader-elect-identity", identity])
            .env_remove("RUNSCALE_LOG_LEVEL")
            .env_remove("RUNSCALE_LOG_FORMAT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn runscale run");
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_killed_mid_run_and_the_other_replica_finishes_every_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen_a = format!("127.0.0.1:{}", free_port());
    let listen_b = format!("127.0.0.1:{}", free_port());
    // Webhooks go to the first replica only; once it is dead, the second one's poll sees
    // every change.
    let (github, kube) = start_emulators(&listen_a).await;
    write(&dir.path().join("token"), TOKEN);
    write(&dir.path().join("webhook-secret"), WEBHOOK_SECRET);
    kube.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    let leader_election = format!(
        "leader_election:\n  enabled: true\n  namespace: {NAMESPACE}\n  \
         lease_duration: {}s\n  renew_deadline: 3s\n  retry_period: 1s\n  \
         kubeconfig: {}\n  context: runscale-fake\n",
        LEASE_DURATION.as_secs(),
        serde_json::Value::String(dir.path().join("kubeconfig").display().to_string()),
    );
    let mut configs = Vec::new();
    for (name, listen) in [("a", &listen_a), ("b", &listen_b)] {
        let text = config_text(listen, github.base_url(), dir.path()) + &leader_election;
        let path = dir.path().join(format!("{name}.yaml"));
        write(&path, &text);
        configs.push(path);
    }

    let mut a = Replica::start(&configs[0], "replica-a", &dir.path().join("a.log"));
    wait_for("replica a to lead", Duration::from_secs(60), || {
        lease_holder(&kube).as_deref() == Some("replica-a")
    })
    .await;
    let _b = Replica::start(&configs[1], "replica-b", &dir.path().join("b.log"));

    // 60 jobs over about 24 s, each running 1 to 3 s.
    let jobs = workload(
        FAILOVER_JOBS,
        Duration::from_millis(400),
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let playing = github.run_workload(jobs).expect("workload");
    // Mid-run: a third of the jobs done, others running in pods the leader created.
    wait_for("a third of the jobs done", Duration::from_secs(120), || {
        github.snapshot().completed().count() >= FAILOVER_JOBS / 3
    })
    .await;
    let running_pods = kube.pods(NAMESPACE).len();
    a.kill();
    let killed = Instant::now();
    wait_for("replica b to take over", Duration::from_secs(60), || {
        lease_holder(&kube).as_deref() == Some("replica-b")
    })
    .await;
    let takeover = killed.elapsed();
    // Then b acts: its first pod appears within one more pass (jobs keep arriving).
    let created_before = kube.pods_created_total();
    wait_for("replica b to launch a pod", Duration::from_secs(60), || {
        kube.pods_created_total() > created_before
    })
    .await;
    let first_launch = killed.elapsed();
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    wait_done_and_gone(&github, &kube, &playing, FAILOVER_JOBS).await;
    eprintln!(
        "killed the leader with {running_pods} pods up; lease taken over after {:.1}s, first \
         launch by the new leader after {:.1}s; {} pods for {FAILOVER_JOBS} jobs",
        takeover.as_secs_f64(),
        first_launch.as_secs_f64(),
        kube.pods_created_total(),
    );
    // The lease runs out LEASE_DURATION after the last renewal; the standby tries every
    // retry period; allow one pass and scheduling slack on a shared machine.
    assert!(
        takeover <= LEASE_DURATION + INTERVAL + Duration::from_secs(2),
        "takeover took {takeover:?}\nb:\n{}",
        log("b.log")
    );

    assert_eq!(
        assert_one_successful_job_per_runner(&github.snapshot()),
        FAILOVER_JOBS
    );
    // No pod created twice, from either replica.
    let created = successful_pod_creates(&kube);
    assert!(
        (FAILOVER_JOBS..=FAILOVER_JOBS + 8).contains(&created),
        "{created} pods for {FAILOVER_JOBS} jobs\na:\n{}\nb:\n{}",
        log("a.log"),
        log("b.log")
    );
    drop(_b);
    kube.shutdown().await;
    github.shutdown().await;
}
