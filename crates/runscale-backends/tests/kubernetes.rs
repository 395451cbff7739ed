//! The kubernetes backend against the fake kube-apiserver of `runscale-emulator`, over HTTP on
//! loopback, through the kubeconfig it writes: the core conformance suite, pods and their
//! owned Secrets, credentials reaching the runner process, disruption annotations, an
//! unschedulable pod under the reconciler, watch recovery after 410 Gone, periodic re-lists,
//! clean-up of finished pods, and the seed CronJob and Buildscaler Job templates.

#![cfg(feature = "kubernetes")]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use runscale_backends::kubernetes::{
    Config, CredentialsDelivery, CronJobRef, JobRef, Kubernetes, PoolTemplate,
};
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::testing::conformance::backend_contract;
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{
    Backend, Credentials, InstanceId, InstanceState, LaunchRequest, PoolId, PoolSpec, Registration,
    SystemClock,
};
use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator, KubeFaults, KubeHandle};
use secrecy::SecretString;
use tempfile::TempDir;
use tokio::sync::mpsc;

const NS: &str = "ci";
const SECRET: &str = "jit-s3cret-4be1c9";
const WAIT: Duration = Duration::from_secs(30);
/// The runner: records what it was given, then waits to be stopped.
const RUNNER_SCRIPT: &str = "printf '%s|%s|%s' \"$RUNSCALE_RUNNER_NAME\" \"$RUNNER_NAME\" \
     \"$RUNNER_TOKEN\" > \"$RUNSCALE_POD_ROOT/seen\"; exec sleep 300";

/// A fake cluster, a kubeconfig for it, and a scratch directory.
struct Cluster {
    handle: KubeHandle,
    dir: TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts the fake with `runner:1` running pod commands on this host, plus `images`
    /// (image → local script body).
    async fn start(images: &[(&str, &str, &str)]) -> Self {
        Self::start_with(images, KubeFaults::default()).await
    }

    /// [`Cluster::start`] with faults injected from the start.
    async fn start_with(images: &[(&str, &str, &str)], faults: KubeFaults) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = KubeConfig {
            faults,
            ..KubeConfig::default()
        }
        .image("runner:1", ImageConfig::host());
        for (image, in_image_path, body) in images {
            let script = dir
                .path()
                .join(format!("{}.sh", image.replace(['/', ':'], "_")));
            write_script(&script, body);
            let image_config = if in_image_path.is_empty() {
                ImageConfig::program(&script)
            } else {
                ImageConfig::default().with_program(*in_image_path, &script)
            };
            config = config.image(*image, image_config);
        }
        let handle = KubeEmulator::start(config, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("fake kube-apiserver");
        let kubeconfig = dir.path().join("kubeconfig");
        handle.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Self {
            handle,
            dir,
            kubeconfig,
        }
    }

    fn config(&self, namespace: &str) -> Config {
        let mut c = Config::new(Some(self.kubeconfig.clone()), Some(namespace.to_owned()));
        c.grace_period = Duration::from_secs(5);
        c.template_refresh = Duration::from_secs(1);
        c
    }

    fn backend(&self, namespace: &str, pools: &[(&str, PoolTemplate)]) -> Kubernetes {
        let templates = pools
            .iter()
            .map(|(p, t)| (PoolId::new(*p), t.clone()))
            .collect();
        Kubernetes::new(self.config(namespace), templates).expect("valid backend")
    }

    /// A kube client of the test itself (to play the cluster's other users).
    async fn client(&self) -> Client {
        // As the backend does: ring and aws-lc-rs are both compiled in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let file = kube::config::Kubeconfig::from_yaml(&self.handle.kubeconfig())
            .expect("kubeconfig parses");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// What the runner process of `pod` wrote, once it has.
    async fn seen(&self, namespace: &str, pod: &str) -> String {
        let path = wait_for("the runner process to start", || {
            let p = self.handle.pod_root(namespace, pod)?.join("seen");
            p.exists().then_some(p)
        })
        .await;
        std::fs::read_to_string(path).expect("seen")
    }

    async fn shutdown(self) {
        self.handle.shutdown().await;
        drop(self.dir);
    }
}

fn write_script(path: &Path, body: &str) {
    let mut f = std::fs::File::create(path).expect("script");
    writeln!(f, "#!/bin/sh\n{body}").expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Polls `f` every 50 ms until it gives a value; panics after [`WAIT`].
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inline(script: &str) -> PoolTemplate {
    let pod: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "metadata": {"labels": {"app": "runner"}},
        "spec": {"containers": [{
            "name": "runner", "image": "runner:1", "command": ["/bin/sh", "-c", script]
        }]}
    }))
    .expect("pod template");
    PoolTemplate::inline(pod)
}

fn registration(name: &str) -> Registration {
    let mut credentials = Credentials::default();
    credentials
        .vars
        .insert("RUNNER_NAME".into(), name.to_owned());
    credentials
        .secrets
        .insert("RUNNER_TOKEN".into(), SecretString::from(SECRET.to_owned()));
    Registration {
        runner_name: name.to_owned(),
        runner_id: None,
        credentials,
    }
}

fn runner_name(pool: &str) -> String {
    runscale_core::naming::generate(pool, 1, &mut rand::rng())
        .1
        .remove(0)
}

async fn launch(backend: &Kubernetes, pool: &str, hash: &str) -> runscale_core::Instance {
    backend
        .launch(LaunchRequest {
            pool: PoolId::new(pool),
            runners: vec![registration(&runner_name(pool))],
            template_hash: hash.to_owned(),
        })
        .await
        .expect("launch")
}

/// Lists `pool` until `f` accepts the listing.
async fn list_until(
    backend: &Kubernetes,
    pool: &str,
    what: &str,
    f: impl Fn(&[runscale_core::Instance]) -> bool,
) -> Vec<runscale_core::Instance> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = backend
            .instances(&[PoolId::new(pool)])
            .await
            .expect("instances")
            .remove(&PoolId::new(pool))
            .unwrap_or_default();
        if f(&listed) {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

async fn create_secret(client: &Client, namespace: &str, name: &str, key: &str, value: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
}

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(name);
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("parses")
}

#[tokio::test]
async fn the_backend_contract_holds_against_the_fake_api_server() {
    let cluster = Cluster::start(&[]).await;
    let backend = cluster.backend(
        NS,
        &[
            ("conf", inline(RUNNER_SCRIPT)),
            ("other", inline(RUNNER_SCRIPT)),
        ],
    );
    backend_contract(
        &backend,
        &PoolId::new("conf"),
        &PoolId::new("other"),
        registration,
    )
    .await
    .expect("backend contract");
    assert_eq!(backend.kind(), "kubernetes");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_runner_pod_gets_its_credentials_from_an_owned_secret_and_terminates_idempotently() {
    let cluster = Cluster::start(&[]).await;
    let backend = cluster.backend(NS, &[("p", inline(RUNNER_SCRIPT))]);
    let instance = launch(&backend, "p", "h1").await;
    let name = instance.id.to_string();
    assert_eq!(
        instance.runner_names,
        std::slice::from_ref(&name),
        "the pod is named after its runner"
    );
    assert_eq!(instance.state, InstanceState::Booting);
    assert_eq!(instance.template_hash, "h1");

    let pod = cluster.handle.pod(NS, &name).expect("pod created");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["runscale/pool"], "p");
    assert_eq!(labels["runscale/runner-name"], name);
    assert_eq!(labels["app"], "runner", "template labels kept");
    assert_eq!(annotations(&pod)["runscale/template-hash"], "h1");
    let spec = pod.spec.clone().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let pod_json = serde_json::to_string(&pod).expect("json");
    assert!(!pod_json.contains(SECRET), "no secret in the pod spec");

    let secrets = cluster.handle.secrets(NS);
    let secret = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&format!("{name}-credentials")))
        .expect("credentials Secret");
    let owner = &secret.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(owner.kind, "Pod");
    assert_eq!(Some(&owner.uid), pod.metadata.uid.as_ref());

    // The runner process got its name and credentials through envFrom.
    assert_eq!(
        cluster.seen(NS, &name).await,
        format!("{name}|{name}|{SECRET}")
    );
    list_until(&backend, "p", "the pod running", |l| {
        l.len() == 1 && l[0].state == InstanceState::Running
    })
    .await;

    // Terminating a pod of another pool does nothing.
    backend
        .terminate(&PoolId::new("q"), &instance.id)
        .await
        .expect("not ours: Ok");
    assert!(
        cluster
            .handle
            .pod(NS, &name)
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    );

    backend
        .terminate(&PoolId::new("p"), &instance.id)
        .await
        .expect("terminate");
    let listed = backend.instances(&[PoolId::new("p")]).await.expect("list");
    assert!(
        listed[&PoolId::new("p")]
            .iter()
            .all(|i| i.state == InstanceState::Stopping),
        "{listed:?}"
    );
    backend
        .terminate(&PoolId::new("p"), &instance.id)
        .await
        .expect("again: Ok");
    // The pod goes (SIGTERM ends the runner), and the garbage collector takes its Secret.
    wait_for("the pod and its Secret to be gone", || {
        (cluster.handle.pod(NS, &name).is_none() && cluster.handle.secrets(NS).is_empty())
            .then_some(())
    })
    .await;
    backend
        .terminate(&PoolId::new("p"), &instance.id)
        .await
        .expect("gone: Ok");
    backend
        .terminate(&PoolId::new("p"), &InstanceId::new("rs-p-neverexist"))
        .await
        .expect("unknown: Ok");
    list_until(&backend, "p", "an empty pool", <[_]>::is_empty).await;
    assert!(
        backend
            .probe()
            .await
            .expect("probe")
            .contains("namespace ci")
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn busy_runner_pods_carry_do_not_disrupt_annotations_until_idle() {
    let cluster = Cluster::start(&[]).await;
    let mut protected = inline(RUNNER_SCRIPT);
    if let Some(pod) = protected.pod.as_mut() {
        pod.metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("karpenter.sh/do-not-disrupt".into(), "true".into());
    }
    let backend = cluster.backend(NS, &[("p", inline(RUNNER_SCRIPT)), ("q", protected)]);
    let a = launch(&backend, "p", "h").await;
    let b = launch(&backend, "p", "h").await;
    let c = launch(&backend, "q", "h").await;
    list_until(&backend, "p", "both pods running", |l| {
        l.len() == 2 && l.iter().all(|i| i.state == InstanceState::Running)
    })
    .await;
    let pool = PoolId::new("p");
    let protection = |name: &InstanceId| {
        let a = annotations(&cluster.handle.pod(NS, name.as_str()).expect("pod"));
        (
            a.get("karpenter.sh/do-not-disrupt").cloned(),
            a.get("cluster-autoscaler.kubernetes.io/safe-to-evict")
                .cloned(),
        )
    };
    let on = (Some("true".to_owned()), Some("false".to_owned()));
    assert_eq!(protection(&a.id), (None, None));

    backend
        .mark_busy(&pool, std::slice::from_ref(&a.id))
        .await
        .expect("mark");
    assert_eq!(protection(&a.id), on);
    assert_eq!(protection(&b.id), (None, None));
    backend
        .mark_busy(&pool, &[a.id.clone(), b.id.clone()])
        .await
        .expect("mark");
    assert_eq!(protection(&a.id), on);
    assert_eq!(protection(&b.id), on);
    // Level-triggered: once the watch shows the patches, the same call sends nothing.
    let patches = || {
        cluster
            .handle
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let before = patches();
        backend
            .mark_busy(&pool, &[a.id.clone(), b.id.clone()])
            .await
            .expect("mark");
        if patches() == before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "patches never stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idle again: the annotations go.
    backend
        .mark_busy(&pool, std::slice::from_ref(&b.id))
        .await
        .expect("mark");
    assert_eq!(protection(&a.id), (None, None));
    assert_eq!(protection(&b.id), on);

    // A template that protects its pods itself is left alone.
    list_until(&backend, "q", "pod q running", |l| l.len() == 1).await;
    backend
        .mark_busy(&PoolId::new("q"), &[])
        .await
        .expect("mark");
    assert_eq!(protection(&c.id).0.as_deref(), Some("true"));
    cluster.shutdown().await;
}

/// Captured log output.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_unschedulable_pod_is_deleted_at_boot_timeout_with_the_scheduler_reason() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = Cluster::start(&[]).await;
    cluster.handle.set_unschedulable(true);
    let backend: Arc<dyn Backend> = Arc::new(cluster.backend(NS, &[("u", inline(RUNNER_SCRIPT))]));
    let clock = Arc::new(SystemClock);
    let world = World::new(clock.clone(), WorldConfig::default());
    let spec = PoolSpec::test("u")
        .max(1)
        .boot_timeout(Duration::from_secs(2));
    let reconciler = Reconciler::new(
        vec![PoolBinding {
            spec,
            provider_name: "ci".into(),
            provider: world.provider(),
            backend_name: "kube".into(),
            backend: backend.clone(),
        }],
        clock,
        Arc::new(Metrics::register(&mut Registry::default())),
        Options::default(),
    );
    world.enqueue("u", 1, Duration::from_secs(60));
    let first = reconciler.once().await;
    assert!(first[0].outcome.is_ok(), "{first:?}");
    let pods = cluster.handle.pods(NS);
    assert_eq!(pods.len(), 1);
    let name = pods[0].metadata.name.clone().expect("name");
    wait_for("the scheduler's verdict", || {
        let pod = cluster.handle.pod(NS, &name)?;
        pod.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
            .then_some(())
    })
    .await;
    // Listed as booting before the timeout...
    let listed = backend.instances(&[PoolId::new("u")]).await.expect("list");
    assert_eq!(listed[&PoolId::new("u")][0].state, InstanceState::Booting);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // ... and deleted after it, with the scheduler's reason in the log.
    let second = reconciler.once().await;
    assert!(second[0].outcome.is_ok(), "{second:?}");
    let gone = cluster
        .handle
        .pod(NS, &name)
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    assert!(gone, "the unschedulable pod was not deleted");
    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
    let line = text
        .lines()
        .find(|l| l.contains("never started") && l.contains(&name))
        .unwrap_or_else(|| panic!("no deletion report in:\n{text}"));
    assert!(line.contains("Unschedulable"), "{line}");
    assert!(
        !text.contains(SECRET) && !text.contains("secret-token-"),
        "a secret was logged"
    );
    assert!(world.snapshot().violations.is_empty());
    cluster.shutdown().await;
}

/// Number of LIST requests (not watches) of pods the fake served.
fn pod_lists(handle: &KubeHandle) -> usize {
    handle
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/pods") && !r.query.contains("watch"))
        .count()
}

/// A runner pod of pool `pool` made by someone else (another replica).
fn foreign_runner_pod(pool: &str, name: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("runscale/pool".to_owned(), pool.to_owned()),
                ("runscale/runner-name".to_owned(), name.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                "runscale/template-hash".to_owned(),
                "h".to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(
            serde_json::from_value(serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{"name": "r", "image": "runner:1", "command": ["sleep", "300"]}]
            }))
            .expect("spec"),
        ),
        status: None,
    }
}

#[tokio::test]
async fn the_inventory_relists_after_410_gone_and_converges() {
    // Every watch is cut after at most 300 ms and resumed from its last resourceVersion.
    let cluster = Cluster::start_with(
        &[],
        KubeFaults {
            watch_disconnect_after: Some(Duration::from_millis(300)),
            ..KubeFaults::default()
        },
    )
    .await;
    // The default resync period (5 min) is far away: any re-list here is the watcher's.
    let backend = cluster.backend(NS, &[("w", inline(RUNNER_SCRIPT))]);
    let a = launch(&backend, "w", "h").await;
    list_until(&backend, "w", "pod a running", |l| {
        l.len() == 1 && l[0].state == InstanceState::Running
    })
    .await;
    let lists_before = pod_lists(&cluster.handle);

    // The history is compacted after changes the pod watch does not see (Secrets): a
    // resumed watch is answered 410 Gone. Meanwhile a is deleted and another replica creates
    // b.
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(a.id.as_str(), &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a");
    let b_name = runner_name("w");
    pods.create(&PostParams::default(), &foreign_runner_pod("w", &b_name))
        .await
        .expect("create b");
    let deadline = tokio::time::Instant::now() + WAIT;
    for i in 0.. {
        if pod_lists(&cluster.handle) > lists_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no re-list after 410 Gone"
        );
        create_secret(&client, NS, &format!("bump-{i}"), "K", "v").await;
        cluster.handle.compact();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    list_until(&backend, "w", "a gone and b listed", |l| {
        l.len() == 1 && l[0].id.as_str() == b_name
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_inventory_is_relisted_every_resync_period() {
    let cluster = Cluster::start(&[]).await;
    let mut config = cluster.config(NS);
    config.resync_period = Duration::from_secs(10);
    let backend = Kubernetes::new(
        config,
        HashMap::from([(PoolId::new("r"), inline(RUNNER_SCRIPT))]),
    )
    .expect("backend");
    list_until(&backend, "r", "the first list", <[_]>::is_empty).await;
    let before = pod_lists(&cluster.handle);
    assert_eq!(before, 1, "one initial list");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        pod_lists(&cluster.handle),
        2,
        "one re-list per resync period"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn finished_pods_wake_their_pool_and_are_cleaned_up_with_their_secret() {
    let cluster = Cluster::start(&[]).await;
    let backend = cluster.backend(NS, &[("f", inline("exit 0"))]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    backend.subscribe(tx);
    let instance = launch(&backend, "f", "h").await;
    let woken = tokio::time::timeout(WAIT, rx.recv()).await.expect("woken");
    assert_eq!(woken, Some(PoolId::new("f")));
    let listed = list_until(&backend, "f", "the finished pod", |l| !l.is_empty()).await;
    assert_eq!(listed[0].id, instance.id);
    assert_eq!(listed[0].state, InstanceState::Stopping);
    wait_for("the finished pod and its Secret to be gone", || {
        (cluster.handle.pods(NS).is_empty() && cluster.handle.secrets(NS).is_empty()).then_some(())
    })
    .await;
    list_until(&backend, "f", "an empty pool", <[_]>::is_empty).await;
    cluster.shutdown().await;
}

/// The fake API server running `script` as the seed image's `/opt/circleci/start.sh`, with the
/// seed's `api-token` Secret and README CronJob in `circleci-runners`: the cluster, a client
/// and the CronJob's uid.
async fn seed_cron_cluster(script: &str) -> (Cluster, kube::Client, String) {
    let cluster =
        Cluster::start(&[("circleci-image:latest", "/opt/circleci/start.sh", script)]).await;
    let client = cluster.client().await;
    // What a circleci-runner-autoscaler user already has in the cluster.
    create_secret(
        &client,
        RC_NS,
        "api-token",
        "LAUNCH_AGENT_API_AUTH_TOKEN",
        "circle-rc-token",
    )
    .await;
    let cron: CronJob = fixture("circleci-cronjob.yaml");
    let cron_uid = Api::<CronJob>::namespaced(client.clone(), RC_NS)
        .create(&PostParams::default(), &cron)
        .await
        .expect("the seed CronJob is accepted")
        .metadata
        .uid
        .expect("uid");
    (cluster, client, cron_uid)
}

/// The seed's namespace.
const RC_NS: &str = "circleci-runners";

#[tokio::test]
async fn the_seed_cron_job_works_unchanged() {
    let (cluster, _, cron_uid) = seed_cron_cluster(
        "printf '%s|%s|%s' \"$LAUNCH_AGENT_RUNNER_NAME\" \"$LAUNCH_AGENT_API_AUTH_TOKEN\" \
         \"$RUNNER_TOKEN\" > \"$RUNSCALE_POD_ROOT/seen\"; exec sleep 300",
    )
    .await;

    let by_class = PoolTemplate::cron_job(CronJobRef {
        name: None,
        resource_class: Some("vela-games/k8s-small".into()),
    });
    let by_name = PoolTemplate::cron_job(CronJobRef {
        name: Some("small-runner".into()),
        resource_class: None,
    });
    let backend = cluster.backend(RC_NS, &[("small", by_class), ("named", by_name)]);
    let probe = backend.probe().await.expect("probe");
    assert!(probe.contains("small from CronJob small-runner"), "{probe}");
    assert!(probe.contains("named from CronJob small-runner"), "{probe}");

    let instance = launch(&backend, "small", "h").await;
    let name = instance.id.to_string();
    // The runner is a Job made from the CronJob's jobTemplate, owned by the CronJob.
    let jobs = cluster.handle.jobs(RC_NS);
    let [job] = jobs.as_slice() else {
        panic!("one Job: {jobs:?}")
    };
    assert_eq!(job.metadata.name.as_deref(), Some(name.as_str()));
    let owner = &job.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CronJob", "small-runner")
    );
    assert_eq!(owner.uid, cron_uid);
    let spec = job.spec.clone().expect("job spec");
    assert_eq!(spec.ttl_seconds_after_finished, Some(21600));
    // Its pod, named by the Job controller, carries runscale's labels and the template's
    // restart policy; LAUNCH_AGENT_RUNNER_NAME (metadata.name in the template) is the
    // runner name.
    let pod = wait_for("the Job's pod", || {
        cluster.handle.pods(RC_NS).into_iter().find(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("job-name") == Some(&name))
        })
    })
    .await;
    let pod_name = pod.metadata.name.clone().expect("pod name");
    assert_ne!(pod_name, name);
    assert_eq!(
        cluster.seen(RC_NS, &pod_name).await,
        format!("{name}|circle-rc-token|{SECRET}")
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["resource-class-org"], "vela-games");
    assert_eq!(labels["resource-class-name"], "k8s-small");
    assert_eq!(labels["runscale/pool"], "small");
    assert_eq!(labels["runscale/runner-name"], name);
    assert_eq!(
        pod.spec.and_then(|s| s.restart_policy).as_deref(),
        Some("OnFailure")
    );
    let listed = list_until(&backend, "small", "the Job's pod running", |l| {
        l.len() == 1 && l[0].state == InstanceState::Running
    })
    .await;
    assert_eq!(listed[0].template_hash, "h");
    assert_eq!(listed[0].id, instance.id);
    assert_eq!(listed[0].runner_names, std::slice::from_ref(&name));
    // Busy: its pod is protected from disruption.
    let pool = PoolId::new("small");
    backend
        .mark_busy(&pool, std::slice::from_ref(&instance.id))
        .await
        .expect("busy");
    let annotated = cluster.handle.pod(RC_NS, &pod_name).expect("pod");
    assert_eq!(
        annotated.metadata.annotations.unwrap_or_default()["karpenter.sh/do-not-disrupt"],
        "true"
    );
    // Terminate deletes the Job, its pod and its Secret.
    backend
        .terminate(&pool, &instance.id)
        .await
        .expect("terminate");
    wait_for("the Job, its pod and its Secret to be gone", || {
        (cluster.handle.jobs(RC_NS).is_empty()
            && cluster.handle.pods(RC_NS).is_empty()
            && !cluster
                .handle
                .secrets(RC_NS)
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(&format!("{name}-credentials"))))
        .then_some(())
    })
    .await;
    list_until(&backend, "small", "an empty pool", <[_]>::is_empty).await;
    cluster.shutdown().await;
}

/// A finished runner Job is deleted with its pod; a runner Job without a pod is seen through
/// the Job, as booting, so the policy's `boot_timeout` retires it.
#[tokio::test]
async fn a_runner_job_without_a_pod_is_listed_and_a_finished_one_deleted() {
    let (cluster, client, _) = seed_cron_cluster("exit 0").await;
    let backend = cluster.backend(
        RC_NS,
        &[(
            "small",
            PoolTemplate::cron_job(CronJobRef {
                name: Some("small-runner".into()),
                resource_class: None,
            }),
        )],
    );
    let instance = launch(&backend, "small", "h").await;
    // The runner exits at once: its pod succeeds, the Job completes and a listing deletes
    // it (with its pod).
    let listed = list_until(&backend, "small", "the finished Job", |l| {
        l.iter().any(|i| i.state == InstanceState::Stopping)
    })
    .await;
    assert!(listed.iter().all(|i| i.id == instance.id), "{listed:?}");
    list_until(&backend, "small", "an empty pool", <[_]>::is_empty).await;
    assert!(cluster.handle.jobs(RC_NS).is_empty());
    assert!(cluster.handle.pods(RC_NS).is_empty());

    // A runner Job without a pod: here suspended, so the Job controller makes none (in a
    // cluster: a quota, an admission webhook refusing the pod).
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client, RC_NS);
    let stuck: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rs-small-stuckstuck", "labels": {"runscale/pool": "small"},
            "annotations": {"runscale/template-hash": "h"}},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "circleci-image:latest"}]}}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &stuck)
        .await
        .expect("job");
    let listed = list_until(&backend, "small", "the stuck Job", |l| l.len() == 1).await;
    assert_eq!(listed[0].id.as_str(), "rs-small-stuckstuck");
    assert_eq!(listed[0].state, InstanceState::Booting);
    assert_eq!(listed[0].runner_names, ["rs-small-stuckstuck"]);
    backend
        .terminate(&PoolId::new("small"), &listed[0].id)
        .await
        .expect("terminate");
    wait_for("the stuck Job to be gone", || {
        cluster.handle.jobs(RC_NS).is_empty().then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_buildscaler_job_works_and_its_uid_is_the_template_version() {
    let cluster = Cluster::start(&[(
        "buildkite/agent:3",
        "",
        "printf '%s|%s|%s' \"$BUILDKITE_AGENT_TOKEN\" \"$(cat \"$RUNSCALE_CREDENTIALS_DIR/RUNNER_TOKEN\")\" \
         \"$BASH_JOB\" > \"$RUNSCALE_POD_ROOT/seen\"; exec sleep 300",
    )])
    .await;
    let client = cluster.client().await;
    create_secret(
        &client,
        NS,
        "buildkite-agent-token",
        "BUILDKITE_AGENT_TOKEN",
        "bk-agent-token",
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client, NS);
    let job: Job = fixture("buildscaler-job.yaml");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("the Buildscaler Job is accepted");

    let mut template = PoolTemplate::job(JobRef {
        name: None,
        queue: Some("bash".into()),
    });
    template.credentials = CredentialsDelivery::Volume;
    let backend = cluster.backend(NS, &[("bash", template)]);
    let old = launch(&backend, "bash", "h").await;
    // The agent token from the template's Secret, the runner's own credential from the
    // volume, the template's variables.
    assert_eq!(
        cluster.seen(NS, old.id.as_str()).await,
        format!("bk-agent-token|{SECRET}|my_bash_job")
    );
    list_until(&backend, "bash", "the pod current", |l| {
        l.len() == 1 && l[0].template_hash == "h"
    })
    .await;

    // The Job is deleted and recreated (how Buildscaler users change a template): a new UID,
    // so the old pod is outdated and a new launch is current.
    jobs.delete("bash-job", &DeleteParams::default())
        .await
        .expect("delete job");
    list_until(&backend, "bash", "the pod outdated (Job gone)", |l| {
        l.len() == 1 && l[0].template_hash == "h/outdated"
    })
    .await;
    wait_for("the old Job to be gone", || {
        cluster.handle.jobs(NS).is_empty().then_some(())
    })
    .await;
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("recreate");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = launch(&backend, "bash", "h").await;
    let listed = list_until(&backend, "bash", "both pods listed", |l| l.len() == 2).await;
    let hash_of = |id: &InstanceId| {
        listed
            .iter()
            .find(|i| &i.id == id)
            .map(|i| i.template_hash.clone())
    };
    assert_eq!(hash_of(&old.id).as_deref(), Some("h/outdated"));
    assert_eq!(hash_of(&new.id).as_deref(), Some("h"));
    cluster.shutdown().await;
}

/// The RBAC verb and resource of a request to the fake, from its method, path and query.
fn rbac_of(r: &runscale_emulator::kube::RequestRecord) -> Option<(String, String)> {
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    // api/v1/namespaces/{ns}/{resource}[/{name}] or apis/{group}/{version}/namespaces/...
    let rest = match parts.as_slice() {
        ["api", _, "namespaces", _, rest @ ..] => rest,
        ["apis", _, _, "namespaces", _, rest @ ..] => rest,
        _ => return None,
    };
    let (resource, named) = match rest {
        [resource] => (*resource, false),
        [resource, _] => (*resource, true),
        _ => return None,
    };
    let verb = match (r.method.as_str(), named) {
        ("GET", false) if r.query.contains("watch=true") || r.query.contains("watch=1") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("DELETE", true) => "delete",
        ("PATCH", true) => "patch",
        ("PUT", true) => "update",
        _ => return None,
    };
    Some((resource.to_owned(), verb.to_owned()))
}

#[tokio::test]
async fn every_api_call_is_one_the_helm_chart_grants_and_every_grant_is_used() {
    let cluster = Cluster::start(&[(
        "circleci-image:latest",
        "/opt/circleci/start.sh",
        "exec sleep 300",
    )])
    .await;
    let client = cluster.client().await;
    create_secret(&client, NS, "api-token", "LAUNCH_AGENT_API_AUTH_TOKEN", "t").await;
    let mut cron: CronJob = fixture("circleci-cronjob.yaml");
    cron.metadata.namespace = None;
    Api::<CronJob>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &cron)
        .await
        .expect("cronjob");
    let job: Job = fixture("buildscaler-job.yaml");
    Api::<Job>::namespaced(client, NS)
        .create(&PostParams::default(), &job)
        .await
        .expect("job");
    let setup = cluster.handle.requests().len();

    let cron_named = PoolTemplate::cron_job(CronJobRef {
        name: Some("small-runner".into()),
        resource_class: None,
    });
    let cron_class = PoolTemplate::cron_job(CronJobRef {
        name: None,
        resource_class: Some("vela-games/k8s-small".into()),
    });
    let job_named = PoolTemplate::job(JobRef {
        name: Some("bash-job".into()),
        queue: None,
    });
    let job_queue = PoolTemplate::job(JobRef {
        name: None,
        queue: Some("bash".into()),
    });
    let backend = cluster.backend(
        NS,
        &[
            ("a", inline(RUNNER_SCRIPT)),
            ("f", inline("exit 0")),
            ("c1", cron_named),
            ("c2", cron_class),
            ("j1", job_named),
            ("j2", job_queue),
        ],
    );
    backend.probe().await.expect("probe");
    let a = launch(&backend, "a", "h").await;
    let c1 = launch(&backend, "c1", "h").await;
    launch(&backend, "f", "h").await;
    list_until(&backend, "a", "pod a running", |l| {
        l.len() == 1 && l[0].state == InstanceState::Running
    })
    .await;
    let pool = PoolId::new("a");
    backend
        .mark_busy(&pool, std::slice::from_ref(&a.id))
        .await
        .expect("busy");
    backend.terminate(&pool, &a.id).await.expect("terminate");
    backend
        .terminate(&PoolId::new("c1"), &c1.id)
        .await
        .expect("terminate the runner Job");
    // The finished pod is deleted by a listing.
    list_until(&backend, "f", "f cleaned up", <[_]>::is_empty).await;

    let used: std::collections::BTreeSet<(String, String)> = cluster
        .handle
        .requests()
        .iter()
        .skip(setup)
        .filter_map(rbac_of)
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/helm/runscale/rbac-required.json");
    let rbac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("rbac-required.json"))
            .expect("json");
    let granted: std::collections::BTreeSet<(String, String)> = rbac["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["component"] == "kubernetes-backend")
        .flat_map(|r| {
            let resource = r["resource"].as_str().unwrap_or_default().to_owned();
            r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| Some((resource.clone(), v.as_str()?.to_owned())))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(used, granted, "calls made vs the chart's grants");
    cluster.shutdown().await;
}

#[tokio::test]
async fn connection_problems_are_configuration_errors_naming_the_field() {
    let cluster = Cluster::start(&[]).await;
    let probe = |config: Config| async move {
        let backend = Kubernetes::new(
            config,
            HashMap::from([(PoolId::new("p"), inline(RUNNER_SCRIPT))]),
        )
        .expect("valid");
        backend.probe().await.expect_err("must fail")
    };
    let mut config = cluster.config(NS);
    config.kubeconfig = Some(cluster.dir.path().join("missing"));
    let e = probe(config).await;
    assert_eq!(e.kind(), runscale_core::ErrorKind::Misconfigured);
    assert!(e.message().starts_with("kubeconfig: "), "{e}");

    let mut config = cluster.config(NS);
    config.context = Some("nope".into());
    let e = probe(config).await;
    assert_eq!(e.kind(), runscale_core::ErrorKind::Misconfigured);
    assert!(e.message().starts_with("context: "), "{e}");

    // A wrong token: the API server answers 401.
    let text = cluster.handle.kubeconfig();
    let token = runscale_emulator::kube::DEFAULT_TOKEN;
    assert!(text.contains(token));
    let bad = cluster.dir.path().join("bad-kubeconfig");
    std::fs::write(&bad, text.replace(token, "not-the-token")).expect("write");
    let mut config = cluster.config(NS);
    config.kubeconfig = Some(bad);
    let e = probe(config).await;
    assert_eq!(e.kind(), runscale_core::ErrorKind::Misconfigured, "{e}");
    assert!(e.to_string().contains("401"), "{e}");
    assert!(!e.to_string().contains("not-the-token"), "{e}");

    // A template source that does not exist.
    let backend = cluster.backend(
        NS,
        &[(
            "c",
            PoolTemplate::cron_job(CronJobRef {
                name: Some("absent".into()),
                resource_class: None,
            }),
        )],
    );
    let e = backend.probe().await.expect_err("no CronJob");
    assert!(
        e.message().contains("pool c") && e.message().contains("absent"),
        "{e}"
    );
    let e = backend
        .launch(LaunchRequest {
            pool: PoolId::new("c"),
            runners: vec![registration(&runner_name("c"))],
            template_hash: "h".into(),
        })
        .await
        .expect_err("no CronJob");
    assert_eq!(e.kind(), runscale_core::ErrorKind::Misconfigured, "{e}");
    // One pod hosts one runner.
    let backend = cluster.backend(NS, &[("p", inline(RUNNER_SCRIPT))]);
    let e = backend
        .launch(LaunchRequest {
            pool: PoolId::new("p"),
            runners: vec![
                registration("rs-p-aaaaaaaaaa-1"),
                registration("rs-p-aaaaaaaaaa-2"),
            ],
            template_hash: "h".into(),
        })
        .await
        .expect_err("two runners");
    assert!(e.message().contains("runners_per_instance"), "{e}");
    assert!(cluster.handle.pods(NS).is_empty());
    cluster.shutdown().await;
}
