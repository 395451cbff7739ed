//! A fake kube-apiserver for tests: the core/v1 pods (with `status` and `log`), secrets,
//! persistentvolumeclaims and namespaces, batch/v1 jobs and cronjobs, and coordination.k8s.io/v1 leases, over plain HTTP
//! on loopback, faithful enough for the real `kubectl` and the kube-rs client and
//! `kube::runtime::watcher`; plus a scheduler and kubelet that run each pod's first container
//! as a local process.
//!
//! What lives here: configuration ([`KubeConfig`]), the server ([`KubeEmulator::start`] →
//! [`KubeHandle`], or [`serve`] for a command line), snapshots and counters for tests. What
//! does not: controllers other than a minimal Job controller (`jobs`: a Job with
//! `parallelism >= 1` gets its pods) and the ephemeral volume controller (a pod's generic
//! ephemeral claims are created with it; no CronJob controller, no ReplicaSets), RBAC and
//! admission webhooks, protobuf and CBOR encodings, aggregated discovery, OpenAPI documents,
//! server-side apply field ownership (apply is a strategic merge without `managedFields`),
//! `kubectl logs -f` (logs are a snapshot), exec/attach/port-forward, and nodes as objects.
//!
//! Semantics kept: resourceVersion (one global counter), uid, creationTimestamp, generation,
//! generateName, defaulting, validation (`422 Invalid`), unknown fields dropped with a
//! `Warning` (or `400` under `fieldValidation=Strict`), optimistic concurrency (`409
//! Conflict`), status subresources, graceful pod deletion, finalizers, owner-reference garbage
//! collection with the three propagation policies, namespace termination, label selectors
//! (equality and set-based), field selectors, pagination, watches with bookmarks and `410
//! Gone`, and `Table` output for kubectl.
//!
//! **Local processes.** [`KubeConfig::images`] maps an image to an entrypoint, a `CMD` and
//! program translations ([`ImageConfig`]); the pod's first container runs as a local process
//! in its own process group, with its output in a log file (`GET .../pods/{name}/log`). Its
//! volumes (secret, emptyDir) are files under the pod root, which the process finds in
//! [`POD_ROOT_VAR`]; env values and arguments that name a mount path (or a path below one)
//! are rewritten to the local path.

mod admission;
mod config;
mod discovery;
mod gc;
mod jobs;
mod kubelet;
mod patch;
mod resources;
mod selectors;
mod server;
mod status;
mod store;
mod table;
mod validation;
mod watch;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_TOKEN, ImageConfig, KubeConfig, KubeConfigError, KubeFaults, NodeConfig};
pub use kubelet::process::POD_ROOT_VAR;
pub use server::RequestRecord;

use resources::ResourceType;
use server::Shared;

/// The kubeconfig context (and cluster and user) name [`KubeHandle::write_kubeconfig`] writes.
pub const CONTEXT: &str = "runscale-fake";

/// Why the fake API server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// The configuration is invalid.
    #[error("invalid fake kube-apiserver configuration: {0}")]
    Config(#[from] KubeConfigError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The work directory could not be created.
    #[error("cannot create the work directory {path}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the URL or the kubeconfig failed ([`serve`]).
    #[error("cannot write {what}")]
    Output {
        /// What was being written.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Counters of what happened since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeStats {
    /// HTTP requests served (every path).
    pub requests: u64,
    /// Watches started.
    pub watches: u64,
    /// Faults injected.
    pub faults: u64,
    /// Pods created.
    pub pods_created: u64,
    /// Pods removed from the store.
    pub pods_deleted: u64,
    /// Secrets created.
    pub secrets_created: u64,
    /// Secrets removed from the store.
    pub secrets_deleted: u64,
    /// Local container processes running now.
    pub processes_running: usize,
}

/// The fake kube-apiserver.
pub struct KubeEmulator;

impl KubeEmulator {
    /// Validates `config`, binds `addr` (use `127.0.0.1:0` in tests) and starts the server,
    /// the scheduler/kubelet and the garbage collector.
    pub async fn start(config: KubeConfig, addr: SocketAddr) -> Result<KubeHandle, KubeError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| KubeError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| KubeError::Bind { addr, source })?;
        let (work_dir, own_work_dir) = match &config.work_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let dir = std::env::temp_dir().join(format!(
                    "runscale-kube-{}-{}-{nanos}",
                    std::process::id(),
                    local.port()
                ));
                (dir, true)
            }
        };
        std::fs::create_dir_all(&work_dir).map_err(|source| KubeError::WorkDir {
            path: work_dir.clone(),
            source,
        })?;
        let cancel = CancellationToken::new();
        let store = store::Store::new(
            &config.namespaces,
            config.watch_history,
            config.create_namespaces_on_demand,
            config.faults.seed,
        );
        let shared = Arc::new(Shared::new(
            store,
            config.token.clone(),
            config.anonymous,
            config.bookmark_interval,
            config.faults.clone(),
            config.node.clone(),
            work_dir.clone(),
            local.to_string(),
            cancel.clone(),
        ));
        let app = server::router(shared.clone());
        let server = crate::serve::spawn_server(
            listener,
            app,
            cancel.clone(),
            "fake kube-apiserver stopped",
        );
        let kubelet = tokio::spawn(kubelet::run(
            shared.clone(),
            kubelet::KubeletConfig {
                images: config.images.clone(),
                default_image: config.default_image.clone(),
                inherit_env: config.inherit_env.clone(),
                scheduling_delay: config.scheduling_delay,
                start_delay: config.start_delay,
                restart_backoff: config.restart_backoff,
                resync: config.resync_interval,
            },
        ));
        let collector = {
            let shared = shared.clone();
            crate::serve::spawn_every(cancel.clone(), config.resync_interval, move || {
                shared.write(|_| ())
            })
        };
        Ok(KubeHandle {
            shared,
            addr: local,
            tasks: vec![server, kubelet, collector],
            own_work_dir: own_work_dir.then_some(work_dir),
        })
    }
}

/// A running fake API server. Dropping it stops the server and SIGKILLs every local
/// process; [`KubeHandle::shutdown`] does the same and waits for them.
pub struct KubeHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    own_work_dir: Option<PathBuf>,
}

impl KubeHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (YAML) with cluster, user (bearer token) and context all named
    /// [`CONTEXT`], namespace `default`.
    pub fn kubeconfig(&self) -> String {
        let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {CONTEXT}\n  cluster:\n    server: {}\n\
             users:\n- name: {CONTEXT}\n  user:\n    token: {}\ncontexts:\n- name: {CONTEXT}\n  \
             context:\n    cluster: {CONTEXT}\n    user: {CONTEXT}\n    namespace: default\n\
             current-context: {CONTEXT}\npreferences: {{}}\n",
            quote(&self.url()),
            quote(self.shared.token().expose_secret()),
        )
    }

    /// Writes [`KubeHandle::kubeconfig`] to `path` (mode 0600: it holds the token).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(self.kubeconfig().as_bytes())
    }

    fn snapshot<K: DeserializeOwned>(&self, rt: &ResourceType, namespace: &str) -> Vec<K> {
        self.shared.read(|s| {
            s.all(rt, Some(namespace))
                .filter_map(|(_, v)| serde_json::from_value((**v).clone()).ok())
                .collect()
        })
    }

    /// The pods of a namespace, sorted by name.
    pub fn pods(&self, namespace: &str) -> Vec<Pod> {
        self.snapshot(&resources::PODS, namespace)
    }

    /// One pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.shared
            .read(|s| s.get(&resources::PODS, namespace, name).ok())
            .and_then(|v| serde_json::from_value((*v).clone()).ok())
    }

    /// The secrets of a namespace, sorted by name.
    pub fn secrets(&self, namespace: &str) -> Vec<Secret> {
        self.snapshot(&resources::SECRETS, namespace)
    }

    /// The PersistentVolumeClaims of a namespace, sorted by name.
    pub fn persistent_volume_claims(&self, namespace: &str) -> Vec<PersistentVolumeClaim> {
        self.snapshot(&resources::PERSISTENT_VOLUME_CLAIMS, namespace)
    }

    /// The jobs of a namespace.
    pub fn jobs(&self, namespace: &str) -> Vec<Job> {
        self.snapshot(&resources::JOBS, namespace)
    }

    /// The cronjobs of a namespace.
    pub fn cronjobs(&self, namespace: &str) -> Vec<CronJob> {
        self.snapshot(&resources::CRONJOBS, namespace)
    }

    /// The leases of a namespace.
    pub fn leases(&self, namespace: &str) -> Vec<Lease> {
        self.snapshot(&resources::LEASES, namespace)
    }

    /// Counters.
    pub fn stats(&self) -> KubeStats {
        let counters = self.shared.read(|s| s.counters.clone());
        let n = |m: &std::collections::BTreeMap<&str, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        KubeStats {
            requests: self.shared.requests_total.load(Ordering::Relaxed),
            watches: self.shared.watches_total.load(Ordering::Relaxed),
            faults: self.shared.faults_total.load(Ordering::Relaxed),
            pods_created: n(&counters.created, "pods"),
            pods_deleted: n(&counters.removed, "pods"),
            secrets_created: n(&counters.created, "secrets"),
            secrets_deleted: n(&counters.removed, "secrets"),
            processes_running: self.shared.processes.count(),
        }
    }

    /// Pods created since the start.
    pub fn pods_created_total(&self) -> u64 {
        self.stats().pods_created
    }

    /// Pods removed from the store since the start.
    pub fn pods_deleted_total(&self) -> u64 {
        self.stats().pods_deleted
    }

    /// Secrets created since the start.
    pub fn secrets_created_total(&self) -> u64 {
        self.stats().secrets_created
    }

    /// Secrets removed since the start.
    pub fn secrets_deleted_total(&self) -> u64 {
        self.stats().secrets_deleted
    }

    /// The pids (process group ids) of the local container processes running now.
    pub fn process_ids(&self) -> Vec<u32> {
        self.shared.processes.pids()
    }

    /// The last requests served (at most 10 000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(store::Store::resource_version)
    }

    /// Forgets the watch history (like an etcd compaction): every watch resuming from an
    /// older resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        self.shared.write(store::Store::compact);
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: KubeFaults) {
        self.shared.set_faults(faults);
    }

    /// Cordons (`true`) or uncordons the node: cordoned, new pods stay `Pending` and
    /// unschedulable.
    pub fn set_unschedulable(&self, unschedulable: bool) {
        self.shared
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unschedulable = unschedulable;
        // Wake the scheduler.
        self.shared.changed.send_modify(|_| ());
    }

    /// The directory holding the pods' roots and logs.
    pub fn work_dir(&self) -> &Path {
        &self.shared.work_dir
    }

    /// The root directory of a pod's container (where its volumes are written), if the pod
    /// exists.
    pub fn pod_root(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        let pod = self
            .shared
            .read(|s| s.get(&resources::PODS, namespace, name).ok())?;
        let uid = store::meta_str(&pod, "uid")?;
        Some(kubelet::pod_dir(&self.shared.work_dir, namespace, name, uid).join("root"))
    }

    /// Stops the server and the kubelet, kills every local process and waits (up to 5 s)
    /// until they are gone; removes the work directory if the emulator made it.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.shared.processes.kill_all();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.shared.processes.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(dir) = self.own_work_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for KubeHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.processes.kill_all();
        for task in &self.tasks {
            task.abort();
        }
        if let Some(dir) = self.own_work_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The command-line entry point (`runscale emulator kubernetes --listen ADDR`): starts the
/// fake API server, writes a kubeconfig to `kubeconfig` if given, prints the URL on `out`,
/// serves until `shutdown` completes (say, SIGINT or SIGTERM), then shuts down.
pub async fn serve(
    config: KubeConfig,
    addr: SocketAddr,
    kubeconfig: Option<&Path>,
    out: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeError> {
    let handle = KubeEmulator::start(config, addr).await?;
    if let Some(path) = kubeconfig {
        handle
            .write_kubeconfig(path)
            .map_err(|source| KubeError::Output {
                what: "the kubeconfig",
                source,
            })?;
    }
    writeln!(out, "{}", handle.url())
        .and_then(|()| out.flush())
        .map_err(|source| KubeError::Output {
            what: "the URL",
            source,
        })?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}
