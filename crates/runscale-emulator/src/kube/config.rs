//! Configuration of the fake kube-apiserver: the bearer token it accepts, its namespaces,
//! the watch history it keeps, the one node its scheduler and kubelet simulate, the
//! image → local program mapping, and fault knobs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

/// Everything the fake API server needs to start. `KubeConfig::default()` serves a cluster
/// with the usual four namespaces, one schedulable node and no image mapping (every pod then
/// stays `Pending` with `ErrImagePull`).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    /// The bearer token the server accepts. A request with another token gets `401`.
    #[serde(default = "default_token")]
    #[schemars(with = "String")]
    pub token: SecretString,
    /// Whether requests without any token are served (as the legacy insecure port of a real
    /// API server did). kubectl needs it: it sends credentials only over TLS, and this server
    /// speaks plain HTTP. kube-rs sends the kubeconfig's token either way.
    #[serde(default = "default_true")]
    pub anonymous: bool,
    /// Namespaces that exist from the start.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<String>,
    /// Whether writing into a namespace that does not exist creates it (convenient for
    /// tests) instead of answering 404 like a real API server.
    #[serde(default = "default_true")]
    pub create_namespaces_on_demand: bool,
    /// How many change events are kept for watches. A watch from a resourceVersion older
    /// than the oldest kept event is answered `410 Gone` (reason `Expired`).
    #[serde(default = "default_watch_history")]
    pub watch_history: usize,
    /// How often a watch that asked for bookmarks gets a `BOOKMARK` event.
    #[serde(default = "default_bookmark_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub bookmark_interval: Duration,
    /// How often the garbage collector, the namespace finalizer and the kubelet run on their
    /// own (they also run after every change).
    #[serde(default = "default_resync", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub resync_interval: Duration,
    /// The simulated node.
    #[serde(default)]
    pub node: NodeConfig,
    /// Time between a pod's creation and the scheduler's decision.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scheduling_delay: Duration,
    /// Time between scheduling and the container's start (the "image pull").
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub start_delay: Duration,
    /// Delay before a container of a `restartPolicy: Always`/`OnFailure` pod is restarted
    /// (the pod shows `CrashLoopBackOff` meanwhile).
    #[serde(default = "default_restart_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub restart_backoff: Duration,
    /// Images the kubelet can "pull": image reference (as written in the pod) → what runs.
    #[serde(default)]
    pub images: BTreeMap<String, ImageConfig>,
    /// What runs for an image not in `images`; with none, such pods stay `Pending` with the
    /// container waiting in `ErrImagePull`.
    #[serde(default)]
    pub default_image: Option<ImageConfig>,
    /// Host environment variables passed to every container process (a container otherwise
    /// starts with an empty environment).
    #[serde(default = "default_inherit_env")]
    pub inherit_env: Vec<String>,
    /// Directory for pod roots (secret volumes, logs). Default: a fresh directory under the
    /// system temporary directory, removed at shutdown.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Faults injected from the start (can be changed while running).
    #[serde(default)]
    pub faults: KubeFaults,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            token: default_token(),
            anonymous: true,
            namespaces: default_namespaces(),
            create_namespaces_on_demand: true,
            watch_history: default_watch_history(),
            bookmark_interval: default_bookmark_interval(),
            resync_interval: default_resync(),
            node: NodeConfig::default(),
            scheduling_delay: Duration::ZERO,
            start_delay: Duration::ZERO,
            restart_backoff: default_restart_backoff(),
            images: BTreeMap::new(),
            default_image: None,
            inherit_env: default_inherit_env(),
            work_dir: None,
            faults: KubeFaults::default(),
        }
    }
}

impl KubeConfig {
    /// Adds (or replaces) the mapping of `image` to what runs for it.
    pub fn image(mut self, image: impl Into<String>, config: ImageConfig) -> Self {
        self.images.insert(image.into(), config);
        self
    }

    /// Checks the knobs are within range; the error names the field.
    pub fn validate(&self) -> Result<(), KubeConfigError> {
        if self.watch_history == 0 {
            return Err(KubeConfigError::new("watch_history", "must be at least 1"));
        }
        if self.bookmark_interval.is_zero() {
            return Err(KubeConfigError::new(
                "bookmark_interval",
                "must be positive",
            ));
        }
        if self.resync_interval.is_zero() {
            return Err(KubeConfigError::new("resync_interval", "must be positive"));
        }
        for ns in &self.namespaces {
            if !super::validation::is_dns_label(ns) {
                return Err(KubeConfigError::new(
                    "namespaces",
                    format!("{ns:?} is not a valid namespace name"),
                ));
            }
        }
        if !super::validation::is_dns_subdomain(&self.node.name) {
            return Err(KubeConfigError::new("node.name", "not a valid node name"));
        }
        self.faults.validate()
    }
}

/// The node the scheduler places pods on.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name (`spec.nodeName` of scheduled pods).
    #[serde(default = "default_node_name")]
    pub name: String,
    /// The node's labels, on top of `kubernetes.io/hostname`, `kubernetes.io/os: linux` and
    /// `kubernetes.io/arch: amd64`. A pod whose `nodeSelector` they do not satisfy stays
    /// `Pending` and unschedulable.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many pods that have not finished may be bound to the node; the others stay
    /// `Pending` (`Too many pods`).
    #[serde(default = "default_max_pods")]
    pub max_pods: usize,
    /// A cordoned node: no new pod is scheduled (can be changed while running).
    #[serde(default)]
    pub unschedulable: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_node_name(),
            labels: BTreeMap::new(),
            max_pods: default_max_pods(),
            unschedulable: false,
        }
    }
}

/// What a container image means on this machine: Docker's `ENTRYPOINT`, `CMD` and `ENV`, and
/// a translation of program paths inside the image to local programs.
///
/// The container's argv follows Kubernetes' rules: `command` replaces the entrypoint (and
/// drops the image's `CMD`), `args` replaces `CMD`. Then, if argv\[0\] is a key of `programs`,
/// it is replaced by the local path. The result runs as a local process.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The image's `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The image's `ENV`, set before the pod's own variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Program paths inside the image → local programs (e.g. `/opt/circleci/start.sh` →
    /// the `runscale-fake-runner` binary).
    #[serde(default)]
    pub programs: BTreeMap<String, PathBuf>,
}

impl ImageConfig {
    /// An image whose entrypoint is the local `program` (with no `CMD`): a pod with only
    /// `args` runs `program args...`; a pod with a `command` runs that command instead (map
    /// the command's path with [`ImageConfig::with_program`]).
    pub fn program(program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        ImageConfig {
            entrypoint: vec![program.display().to_string()],
            ..ImageConfig::default()
        }
    }

    /// An image with no entrypoint: the pod's `command` runs as written on this machine
    /// (think `busybox` with `sh -c ...`).
    pub fn host() -> Self {
        ImageConfig::default()
    }

    /// Maps the in-image path `path` to the local `program`.
    pub fn with_program(mut self, path: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        self.programs.insert(path.into(), program.into());
        self
    }
}

/// Faults the API server injects. Discovery (`/api`, `/apis`, `/version`) is never faulted.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeFaults {
    /// Probability that a resource request fails with a `500 InternalError` or `503
    /// ServiceUnavailable` Status before it does anything.
    #[serde(default)]
    pub error_rate: f64,
    /// Probability that an update (PUT or PATCH) fails with `409 Conflict` as if its
    /// resourceVersion were stale, changing nothing.
    #[serde(default)]
    pub conflict_rate: f64,
    /// Latency added before every resource response.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub latency: Duration,
    /// When set, every watch is cut (the stream ends without an error) after a random time up
    /// to this long.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub watch_disconnect_after: Option<Duration>,
    /// Seed of the fault generator.
    #[serde(default)]
    pub seed: u64,
}

impl KubeFaults {
    /// Checks every probability is within `[0, 1]`.
    pub fn validate(&self) -> Result<(), KubeConfigError> {
        for (field, value) in [
            ("faults.error_rate", self.error_rate),
            ("faults.conflict_rate", self.conflict_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(KubeConfigError::new(field, "must be within [0, 1]"));
            }
        }
        if self.watch_disconnect_after == Some(Duration::ZERO) {
            return Err(KubeConfigError::new(
                "faults.watch_disconnect_after",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KubeConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl KubeConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        KubeConfigError {
            field,
            message: message.into(),
        }
    }
}

/// The token written into kubeconfigs by default.
pub const DEFAULT_TOKEN: &str = "runscale-fake-token";

fn default_token() -> SecretString {
    SecretString::from(DEFAULT_TOKEN)
}

fn default_namespaces() -> Vec<String> {
    ["default", "kube-system", "kube-public", "kube-node-lease"]
        .map(String::from)
        .to_vec()
}

fn default_true() -> bool {
    true
}

fn default_watch_history() -> usize {
    10_000
}

fn default_bookmark_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_resync() -> Duration {
    Duration::from_millis(200)
}

fn default_restart_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_inherit_env() -> Vec<String> {
    vec!["PATH".to_owned()]
}

fn default_node_name() -> String {
    "runscale-node-1".to_owned()
}

fn default_max_pods() -> usize {
    110
}
