//! The configuration `runscale buildscaler` stands for: Buildscaler's (elotl buildscaler-eks)
//! settings, and the Jobs it discovers, turned into runscale's providers, backends and pools.
//!
//! - **Discovery.** Every Job labelled `app.elotl.co: buildscaler` with a
//!   `buildscaler.elotl.co/queue` label, in one namespace or (Buildscaler's blank `-n`) in all
//!   of them, is one pool: the queue's Buildkite jobs, run in bare pods made from the Job's pod
//!   template in the Job's namespace (one kubernetes backend per namespace, named after it).
//!   [`load`] reads the cluster and builds the configuration; it holds no state, so calling it
//!   again re-discovers (`runscale buildscaler` does, every `--sync-interval`).
//! - **Skipped Jobs.** A Job is left out, with an error naming it, when its queue label is not
//!   a usable label value, its `spec.parallelism` is not 0, or one of its annotations has a bad
//!   value; and when another Job has the same queue (Buildscaler forbids it): the **oldest**
//!   Job of the queue keeps it (creation time, then namespace and name), so a Job added by
//!   mistake never takes over a queue that is running. The other Jobs are not affected.
//! - **Pods of a Job that is gone** (deleted, relabelled, or now skipped) keep a pool of their
//!   own, found by their labels (`app.elotl.co` and `runscale/pool`): it launches nothing (a
//!   schedule holds its `max` at 0) and retires the pods once idle, never while busy, as
//!   Buildscaler stopped such agents gracefully; the pool goes once its pods are gone.
//! - **Annotations** of a Job: `buildscaler.elotl.co/max-active-builds` (1 to 1000) is the
//!   pool's `max` (one build per pod); `buildscaler.elotl.co/max-agent-lifetime` (whole seconds,
//!   or a duration such as `12h`; the name is runscale's, see below) overrides
//!   `--max-agent-lifetime` as the pool's `max_lifetime`: older pods are retired once idle,
//!   never while busy; `buildscaler.elotl.co/pvc-size`, `pvc-mount-path` (both needed) and
//!   `pvc-storage-class-name` give each pod a claim of its own (the kubernetes backend's
//!   `volume_claim`: a generic ephemeral volume, created with the pod and deleted with it).
//!   Buildscaler documents that `--max-agent-lifetime` "can be overridden per agent using job
//!   annotation" without naming the annotation.
//! - **Pools** have `ephemeral: false` (agents stay for more jobs), `boot_timeout` =
//!   `--agent-startup-timeout` (default 600 s, Buildscaler's "10 minutes"), `idle_timeout` and
//!   the agents' own `disconnect_after_idle_timeout` = `--disconnect-after-idle-timeout`
//!   (default: runscale's 5 minutes, agents without their own timeout), and `max` =
//!   `RUNSCALE_POOL_MAX` (default 20) unless annotated.
//!
//! Nothing here opens a socket except [`load`] (through the kubernetes backend's discovery).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runscale_core::secret::SecretRef;
use serde_json::{Map, Value, json};

use super::error::ConfigError;
use super::validate::{MAX_POOL_NAME, Validated};

/// Buildscaler's label value marking a template Job (`app.elotl.co`).
pub const LABEL_APP: (&str, &str) = ("app.elotl.co", "buildscaler");
/// Buildscaler's label naming a template Job's queue.
pub const LABEL_QUEUE: &str = "buildscaler.elotl.co/queue";
/// Annotation: most builds at once on the Job's queue.
pub const ANN_MAX_ACTIVE_BUILDS: &str = "buildscaler.elotl.co/max-active-builds";
/// Annotation: the age after which the Job's agents are retired once idle (runscale's name).
pub const ANN_MAX_AGENT_LIFETIME: &str = "buildscaler.elotl.co/max-agent-lifetime";
/// Annotation: the size of each pod's claim.
pub const ANN_PVC_SIZE: &str = "buildscaler.elotl.co/pvc-size";
/// Annotation: where each pod's claim is mounted.
pub const ANN_PVC_MOUNT_PATH: &str = "buildscaler.elotl.co/pvc-mount-path";
/// Annotation: the StorageClass of each pod's claim.
pub const ANN_PVC_STORAGE_CLASS: &str = "buildscaler.elotl.co/pvc-storage-class-name";

/// Default `max` of a pool whose Job has no `max-active-builds` (Buildscaler had no cap).
pub const DEFAULT_MAX: u32 = 20;
/// Largest `max-active-builds` accepted.
const MAX_ACTIVE_BUILDS: u32 = 1000;
/// Longest max agent lifetime accepted (30 days).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How errors name this configuration's origin.
const ORIGIN: &str = "(buildscaler command line)";

/// Buildscaler's settings, as `runscale buildscaler` read them from its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `--buildkite-org`.
    pub org: String,
    /// `--token` / `BUILDKITE_ACCESS_TOKEN`: where the REST access token is read from.
    pub access_token: SecretRef,
    /// The agent token (`BUILDKITE_AGENT_TOKEN`), which runscale's Buildkite provider reads
    /// demand with and hands to agents.
    pub agent_token: SecretRef,
    /// `-n/--namespace`; `None` (blank) means every namespace.
    pub namespace: Option<String>,
    /// `--sync-interval`: how often pools are reconciled when nothing wakes them, and how
    /// often Jobs are discovered again.
    pub sync_interval: Duration,
    /// `--disconnect-after-idle-timeout`.
    pub idle_timeout: Option<Duration>,
    /// `--agent-startup-timeout`.
    pub agent_startup_timeout: Duration,
    /// `--max-agent-lifetime`: default for Jobs without the annotation.
    pub max_agent_lifetime: Option<Duration>,
    /// `--kubeconfig` / `KUBECONFIG`; `None`: kube's inference (in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `--healthz-address` and `--healthz-port`: where runscale's HTTP server listens.
    pub listen: SocketAddr,
    /// Buildkite's REST API (`RUNSCALE_BUILDKITE_API_URL`), default Buildkite's.
    pub api_url: Option<String>,
    /// Buildkite's agent API (`RUNSCALE_BUILDKITE_AGENT_ENDPOINT`), default Buildkite's.
    pub agent_endpoint: Option<String>,
    /// `max` of pools without `max-active-builds` (`RUNSCALE_POOL_MAX`).
    pub default_max: u32,
}

/// A labelled Job as discovery saw it.
pub use runscale_backends::kubernetes::TemplateJob as FoundJob;

/// A runner pod that carries a Buildscaler Job's labels, as discovery saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundPod {
    /// Namespace.
    pub namespace: String,
    /// Its `runscale/pool` label.
    pub pool: String,
    /// Its `buildscaler.elotl.co/queue` label.
    pub queue: String,
}

/// How messages name a Job.
fn job_id(job: &FoundJob) -> String {
    format!("Job {}/{}", job.namespace, job.name)
}

/// The configuration for what discovery found, and why Jobs were left out (one message each,
/// naming the Job).
#[derive(Debug)]
pub struct Discovery {
    /// The configuration; `None` when no Job is usable (runscale then waits for one).
    pub config: Option<Validated>,
    /// The configuration as JSON, to tell whether a re-discovery changed anything.
    pub value: Value,
    /// `(queue, pool, Job)` of each pool.
    pub pools: Vec<(String, String, String)>,
    /// `(queue, pool, namespace)` of each pool kept only to retire the pods of a Job that is
    /// gone.
    pub retiring: Vec<(String, String, String)>,
    /// Why Jobs were skipped.
    pub skipped: Vec<String>,
}

/// The pool name of a queue: the queue itself when it is a valid pool name; otherwise its
/// letters and digits (lower case, the rest as `-`), shortened, and 8 hex digits of a hash
/// of the queue, so that two queues never share a pool and a queue's pool name never depends
/// on the other queues.
pub fn pool_name(queue: &str) -> String {
    if super::validate::name_problem(queue, MAX_POOL_NAME).is_none() {
        return queue.to_owned();
    }
    let mut short = super::environment::pool_name(queue);
    short.truncate(MAX_POOL_NAME - 9);
    let short = short.trim_matches('-');
    // FNV-1a: stable across runs and versions.
    let hash = queue.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    if short.is_empty() {
        format!("q-{hash:08x}")
    } else {
        format!("{short}-{hash:08x}")
    }
}

/// A duration in whole seconds (Buildscaler's options and annotation) or with a unit (`12h`).
fn seconds_or_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(s) => Some(Duration::from_secs(s)),
        Err(_) => humantime::parse_duration(text).ok(),
    }
}

/// Why a label value is unusable as a queue, if it is.
fn queue_problem(queue: &str) -> Option<&'static str> {
    let ok = !queue.is_empty()
        && queue.len() <= 63
        && queue
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then_some("is not a usable queue name (1 to 63 letters, digits, '-', '_' and '.')")
}

/// One Job's pool, or why the Job is skipped.
fn pool_of(settings: &Settings, job: &FoundJob) -> Result<Value, String> {
    let id = job_id(job);
    if let Some(p) = queue_problem(&job.queue) {
        return Err(format!("{id}: label {LABEL_QUEUE}={:?} {p}", job.queue));
    }
    if job.parallelism != Some(0) {
        return Err(format!(
            "{id}: spec.parallelism must be 0 (it is {}), or the Job controller runs its pods \
             itself",
            job.parallelism
                .map_or_else(|| "unset".to_owned(), |p| p.to_string())
        ));
    }
    let bad = |annotation: &str, value: &str, why: &str| {
        format!("{id}: annotation {annotation}: {value:?} {why}")
    };
    let get = |k: &str| job.annotations.get(k).map(|v| v.trim());
    let max = match get(ANN_MAX_ACTIVE_BUILDS) {
        None => settings.default_max,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_ACTIVE_BUILDS).contains(&n) => n,
            _ => {
                return Err(bad(
                    ANN_MAX_ACTIVE_BUILDS,
                    v,
                    &format!("is not a whole number from 1 to {MAX_ACTIVE_BUILDS}"),
                ));
            }
        },
    };
    let lifetime = match get(ANN_MAX_AGENT_LIFETIME) {
        None => settings.max_agent_lifetime,
        Some(v) => match seconds_or_duration(v) {
            Some(d) if d > settings.agent_startup_timeout && d <= MAX_LIFETIME => Some(d),
            _ => {
                return Err(bad(
                    ANN_MAX_AGENT_LIFETIME,
                    v,
                    &format!(
                        "is not a lifetime longer than the agent startup timeout ({}s) and at \
                         most 30 days (whole seconds, or a duration such as \"12h\")",
                        settings.agent_startup_timeout.as_secs()
                    ),
                ));
            }
        },
    };
    let mut template = json!({"job": {"name": job.name}});
    match (get(ANN_PVC_SIZE), get(ANN_PVC_MOUNT_PATH)) {
        (None, None) => {
            if let Some(class) = get(ANN_PVC_STORAGE_CLASS) {
                return Err(bad(
                    ANN_PVC_STORAGE_CLASS,
                    class,
                    &format!("needs {ANN_PVC_SIZE} and {ANN_PVC_MOUNT_PATH} too"),
                ));
            }
        }
        (Some(size), Some(path)) => {
            let claim = runscale_backends::kubernetes::VolumeClaim {
                size: size.to_owned(),
                mount_path: path.to_owned(),
                storage_class_name: get(ANN_PVC_STORAGE_CLASS).map(str::to_owned),
            };
            if let Some((field, message)) = claim.problems().into_iter().next() {
                let (annotation, value) = match field.as_str() {
                    "size" => (ANN_PVC_SIZE, size),
                    "mount_path" => (ANN_PVC_MOUNT_PATH, path),
                    _ => (
                        ANN_PVC_STORAGE_CLASS,
                        get(ANN_PVC_STORAGE_CLASS).unwrap_or(""),
                    ),
                };
                return Err(format!(
                    "{id}: annotation {annotation}: {value:?}: {message}"
                ));
            }
            template["volume_claim"] = serde_json::to_value(&claim).unwrap_or(Value::Null);
        }
        (Some(v), None) | (None, Some(v)) => {
            let (given, missing) = if get(ANN_PVC_SIZE).is_some() {
                (ANN_PVC_SIZE, ANN_PVC_MOUNT_PATH)
            } else {
                (ANN_PVC_MOUNT_PATH, ANN_PVC_SIZE)
            };
            return Err(bad(given, v, &format!("needs {missing} too")));
        }
    }
    let mut selector = json!({"queue": job.queue});
    let mut pool = json!({
        "name": pool_name(&job.queue),
        "provider": "buildkite",
        "backend": job.namespace,
        "max": max,
        "ephemeral": false,
        "boot_timeout": format!("{}s", settings.agent_startup_timeout.as_secs()),
        "selector": {},
        "template": template,
    });
    if let Some(idle) = settings.idle_timeout {
        let text = format!("{}s", idle.as_secs());
        selector["disconnect_after_idle_timeout"] = json!(text);
        pool["idle_timeout"] = json!(text);
    }
    if let Some(d) = lifetime {
        pool["max_lifetime"] = json!(format!("{}s", d.as_secs()));
    }
    pool["selector"] = selector;
    Ok(pool)
}

/// The Jobs that serve a queue, and messages for the others: per queue the oldest usable
/// Job (creation time, then namespace and name) wins; Jobs whose pool name is taken by
/// another queue (only with hand-made collisions) are skipped too.
fn choose(settings: &Settings, found: &[FoundJob]) -> (Vec<(FoundJob, Value)>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut usable: Vec<(FoundJob, Value)> = Vec::new();
    for job in found {
        match pool_of(settings, job) {
            Ok(pool) => usable.push((job.clone(), pool)),
            Err(e) => skipped.push(format!("{e}; the Job is skipped")),
        }
    }
    usable.sort_by(|(a, _), (b, _)| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    let mut by_pool: HashMap<String, FoundJob> = HashMap::new();
    let mut kept = Vec::new();
    for (job, pool) in usable {
        let name = pool["name"].as_str().unwrap_or_default().to_owned();
        if let Some(first) = by_pool.get(&name) {
            skipped.push(format!(
                "{}: queue {} is already served by {} (created {}); two Buildscaler Jobs \
                 cannot share a queue: the newer Job is skipped until the older one is deleted",
                job_id(&job),
                job.queue,
                job_id(first),
                if first.created.is_empty() {
                    "earlier"
                } else {
                    first.created.as_str()
                }
            ));
            continue;
        }
        by_pool.insert(name, job.clone());
        kept.push((job, pool));
    }
    kept.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (kept, skipped)
}

/// Pools that only retire the pods of Jobs that are gone: one per pool label of `pods` that no
/// kept Job serves, with the queue label, no launches (a schedule holding `max` at 0 all day)
/// and the Job looked up by queue (not found: the pods are outdated), so idle pods are removed
/// and busy ones left to finish, as Buildscaler stopped them gracefully.
fn retiring(settings: &Settings, kept: &[(FoundJob, Value)], pods: &[FoundPod]) -> Vec<Value> {
    let mut taken: Vec<&str> = kept
        .iter()
        .filter_map(|(_, p)| p["name"].as_str())
        .collect();
    let mut queues: Vec<&str> = kept.iter().map(|(j, _)| j.queue.as_str()).collect();
    let mut out = Vec::new();
    for pod in pods {
        if taken.contains(&pod.pool.as_str())
            || queues.contains(&pod.queue.as_str())
            || super::validate::name_problem(&pod.pool, MAX_POOL_NAME).is_some()
            || queue_problem(&pod.queue).is_some()
        {
            continue;
        }
        taken.push(pod.pool.as_str());
        queues.push(pod.queue.as_str());
        let mut pool = json!({
            "name": pod.pool,
            "provider": "buildkite",
            "backend": pod.namespace,
            "max": 1,
            "ephemeral": false,
            "boot_timeout": format!("{}s", settings.agent_startup_timeout.as_secs()),
            "selector": {"queue": pod.queue},
            "template": {"job": {"queue": pod.queue}},
            "schedules": [{"cron": "* * * * *", "max": 0}],
        });
        if let Some(idle) = settings.idle_timeout {
            pool["idle_timeout"] = json!(format!("{}s", idle.as_secs()));
        }
        out.push(pool);
    }
    out
}

/// The configuration for the Jobs found, and for the pods of Jobs that are gone (pure; see
/// the module documentation).
pub fn configure(
    settings: &Settings,
    found: &[FoundJob],
    pods: &[FoundPod],
) -> Result<Discovery, ConfigError> {
    let (kept, skipped) = choose(settings, found);
    let retire = retiring(settings, &kept, pods);
    let retiring_pools: Vec<(String, String, String)> = retire
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (
                p["selector"]["queue"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                field("name"),
                field("backend"),
            )
        })
        .collect();
    let mut provider = json!({
        "name": "buildkite",
        "type": "buildkite",
        "org": settings.org,
        "api_token": settings.access_token,
        "agent_token": settings.agent_token,
    });
    if let Some(url) = &settings.api_url {
        provider["api_url"] = json!(url);
    }
    if let Some(url) = &settings.agent_endpoint {
        provider["agent_endpoint"] = json!(url);
    }
    let mut namespaces: Vec<&str> = kept
        .iter()
        .map(|(j, _)| j.namespace.as_str())
        .chain(retiring_pools.iter().map(|(_, _, ns)| ns.as_str()))
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let backends: Vec<Value> = namespaces
        .iter()
        .map(|ns| {
            let mut b = json!({"name": ns, "type": "kubernetes", "namespace": ns});
            if let Some(path) = &settings.kubeconfig {
                b["kubeconfig"] = json!(path);
            }
            b
        })
        .collect();
    let pools: Vec<(String, String, String)> = kept
        .iter()
        .map(|(j, p)| {
            (
                j.queue.clone(),
                p["name"].as_str().unwrap_or_default().to_owned(),
                job_id(j),
            )
        })
        .collect();
    let mut top = Map::new();
    top.insert("listen".into(), json!(settings.listen.to_string()));
    top.insert(
        "interval".into(),
        json!(format!("{}s", settings.sync_interval.as_secs())),
    );
    top.insert("providers".into(), json!([provider]));
    top.insert("backends".into(), Value::Array(backends));
    top.insert(
        "pools".into(),
        Value::Array(kept.into_iter().map(|(_, p)| p).chain(retire).collect()),
    );
    let value = Value::Object(top);
    let config = if pools.is_empty() && retiring_pools.is_empty() {
        None
    } else {
        Some(super::load_value(value.clone(), Path::new(ORIGIN))?)
    };
    Ok(Discovery {
        config,
        value,
        pools,
        retiring: retiring_pools,
        skipped,
    })
}

/// Discovers the labelled Jobs and the pods made from them (in `settings.namespace`, or in
/// every namespace) and builds the configuration for them. Holds no state: calling it again
/// re-discovers.
pub async fn load(settings: &Settings) -> anyhow::Result<Discovery> {
    use runscale_backends::kubernetes::{Config, Kubernetes};
    let config = Config::new(settings.kubeconfig.clone(), settings.namespace.clone());
    let all = settings.namespace.is_none();
    let jobs = Kubernetes::discover_template_jobs(&config, all)
        .await
        .map_err(|e| anyhow::anyhow!("discovering Buildscaler Jobs: {e}"))?;
    let pods: Vec<FoundPod> = Kubernetes::discover_template_job_pods(&config, all)
        .await
        .map_err(|e| anyhow::anyhow!("discovering the pods of Buildscaler Jobs: {e}"))?
        .into_iter()
        .map(|(namespace, mut labels)| FoundPod {
            namespace,
            pool: labels.remove("runscale/pool").unwrap_or_default(),
            queue: labels.remove(LABEL_QUEUE).unwrap_or_default(),
        })
        .collect();
    Ok(configure(settings, &jobs, &pods)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn settings() -> Settings {
        Settings {
            org: "acme".into(),
            access_token: SecretRef::Env("BUILDKITE_ACCESS_TOKEN".into()),
            agent_token: SecretRef::Env("BUILDKITE_AGENT_TOKEN".into()),
            namespace: None,
            sync_interval: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(120)),
            agent_startup_timeout: Duration::from_secs(600),
            max_agent_lifetime: None,
            kubeconfig: None,
            listen: "127.0.0.1:8080".parse().expect("addr"),
            api_url: None,
            agent_endpoint: None,
            default_max: DEFAULT_MAX,
        }
    }

    fn job(ns: &str, name: &str, queue: &str, created: &str) -> FoundJob {
        FoundJob {
            namespace: ns.into(),
            name: name.into(),
            created: created.into(),
            queue: queue.into(),
            parallelism: Some(0),
            annotations: BTreeMap::new(),
            uid: format!("uid-{name}"),
        }
    }

    fn annotated(mut j: FoundJob, pairs: &[(&str, &str)]) -> FoundJob {
        for (k, v) in pairs {
            j.annotations.insert((*k).into(), (*v).into());
        }
        j
    }

    #[test]
    fn every_labelled_job_is_a_pool_on_its_namespace_with_its_annotations() {
        let found = [
            annotated(
                job("ci", "bash-job", "bash", "2024-01-01T00:00:00Z"),
                &[
                    (ANN_MAX_ACTIVE_BUILDS, "2"),
                    (ANN_PVC_SIZE, "10Gi"),
                    (ANN_PVC_MOUNT_PATH, "/var/lib/buildkite-agent"),
                    (ANN_PVC_STORAGE_CLASS, "standard"),
                    (ANN_MAX_AGENT_LIFETIME, "3600"),
                ],
            ),
            job("builds", "linux", "Linux.Large", "2024-01-02T00:00:00Z"),
        ];
        let d = configure(&settings(), &found, &[]).expect("valid");
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        let config = d.config.expect("pools");
        assert_eq!(config.pools.len(), 2);
        let bash = &d.value["pools"][1];
        assert_eq!(bash["name"], "bash");
        assert_eq!(bash["backend"], "ci");
        assert_eq!(bash["max"], 2);
        assert_eq!(bash["max_lifetime"], "3600s");
        assert_eq!(bash["boot_timeout"], "600s");
        assert_eq!(bash["idle_timeout"], "120s");
        assert_eq!(bash["selector"]["disconnect_after_idle_timeout"], "120s");
        assert_eq!(bash["template"]["job"]["name"], "bash-job");
        assert_eq!(bash["template"]["volume_claim"]["size"], "10Gi");
        assert_eq!(
            bash["template"]["volume_claim"]["storage_class_name"],
            "standard"
        );
        let linux = &d.value["pools"][0];
        assert_eq!(linux["backend"], "builds");
        assert_eq!(linux["max"], DEFAULT_MAX);
        assert_eq!(linux["selector"]["queue"], "Linux.Large");
        let backends: Vec<&str> = d.value["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .filter_map(|b| b["namespace"].as_str())
            .collect();
        assert_eq!(backends, ["builds", "ci"]);
    }

    #[test]
    fn two_jobs_on_one_queue_keep_the_oldest_and_name_both() {
        let found = [
            job("b", "newer", "bash", "2024-03-01T00:00:00Z"),
            job("a", "older", "bash", "2024-01-01T00:00:00Z"),
        ];
        let d = configure(&settings(), &found, &[]).expect("valid");
        assert_eq!(
            d.pools,
            [("bash".into(), "bash".into(), "Job a/older".into())]
        );
        let [message] = d.skipped.as_slice() else {
            panic!("{:?}", d.skipped);
        };
        assert!(
            message.contains("Job b/newer") && message.contains("Job a/older"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_annotation_skips_only_its_job_and_names_job_annotation_and_value() {
        let cases = [
            (ANN_MAX_ACTIVE_BUILDS, "ten"),
            (ANN_MAX_ACTIVE_BUILDS, "0"),
            (ANN_MAX_AGENT_LIFETIME, "60"),
            (ANN_MAX_AGENT_LIFETIME, "forever"),
            (ANN_PVC_SIZE, "lots"),
            (ANN_PVC_STORAGE_CLASS, "standard"),
        ];
        for (annotation, value) in cases {
            let mut bad = annotated(job("ci", "bad", "bad", "1"), &[(annotation, value)]);
            if annotation == ANN_PVC_SIZE {
                bad = annotated(bad, &[(ANN_PVC_MOUNT_PATH, "/data")]);
            }
            let found = [bad, job("ci", "good", "good", "2")];
            let d = configure(&settings(), &found, &[]).expect("the rest is valid");
            assert_eq!(d.pools.len(), 1, "{annotation}={value}");
            let [message] = d.skipped.as_slice() else {
                panic!("{:?}", d.skipped);
            };
            assert!(
                message.contains("Job ci/bad")
                    && message.contains(annotation)
                    && message.contains(&format!("{value:?}")),
                "{message}"
            );
        }
        let mut running = job("ci", "runs-itself", "q", "1");
        running.parallelism = Some(1);
        let d = configure(&settings(), &[running], &[]).expect("valid");
        assert!(d.config.is_none());
        assert!(d.skipped[0].contains("spec.parallelism"), "{:?}", d.skipped);
    }

    #[test]
    fn the_lifetime_option_is_the_default_and_the_annotation_wins() {
        let mut s = settings();
        s.max_agent_lifetime = Some(Duration::from_secs(7200));
        let found = [
            job("ci", "a", "a", "1"),
            annotated(job("ci", "b", "b", "2"), &[(ANN_MAX_AGENT_LIFETIME, "12h")]),
        ];
        let d = configure(&s, &found, &[]).expect("valid");
        assert_eq!(d.value["pools"][0]["max_lifetime"], "7200s");
        assert_eq!(d.value["pools"][1]["max_lifetime"], "43200s");
    }

    #[test]
    fn pods_of_a_job_that_is_gone_are_retired_without_launches() {
        let pods = [
            FoundPod {
                namespace: "ci".into(),
                pool: "gone".into(),
                queue: "gone".into(),
            },
            FoundPod {
                namespace: "ci".into(),
                pool: "bash".into(),
                queue: "bash".into(),
            },
            FoundPod {
                namespace: "ci".into(),
                pool: "gone".into(),
                queue: "gone".into(),
            },
        ];
        let d =
            configure(&settings(), &[job("ci", "bash-job", "bash", "1")], &pods).expect("valid");
        assert_eq!(d.retiring, [("gone".into(), "gone".into(), "ci".into())]);
        let pools = d.value["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 2, "{pools:?}");
        let gone = &pools[1];
        assert_eq!(gone["name"], "gone");
        assert_eq!(gone["schedules"][0]["max"], 0);
        assert_eq!(gone["template"]["job"]["queue"], "gone");
        // Only such pods: still a configuration, so they are retired.
        let d = configure(&settings(), &[], &pods[..1]).expect("valid");
        assert!(d.config.is_some() && d.pools.is_empty());
    }

    #[test]
    fn pool_names_are_the_queue_or_a_stable_hashed_form() {
        assert_eq!(pool_name("bash"), "bash");
        let a = pool_name("linux.large");
        let b = pool_name("linux_large");
        assert_ne!(a, b);
        assert!(a.starts_with("linux-large-"), "{a}");
        assert_eq!(a, pool_name("linux.large"));
        for q in ["x".repeat(63), "_".to_owned(), "A".to_owned()] {
            let n = pool_name(&q);
            assert!(
                super::super::validate::name_problem(&n, MAX_POOL_NAME).is_none(),
                "{n}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever Jobs and pods the cluster holds: discovery never fails as a whole, no
        /// queue is served by two pools (two pools on one queue would both launch for its
        /// jobs), pool names are unique and valid, and every Job either serves its queue or is
        /// named in a message saying why not.
        #[test]
        fn each_queue_has_at_most_one_pool_and_every_job_is_accounted_for(
            jobs in proptest::collection::vec(
                (0..3usize, 0..6usize, 0..4usize, 0..5usize, proptest::option::of(0..3i32)),
                0..12,
            ),
            pods in proptest::collection::vec((0..3usize, 0..6usize), 0..6),
        ) {
            const NS: [&str; 3] = ["ci", "deploy", "x"];
            const QUEUES: [&str; 6] = ["bash", "linux.large", "linux_large", "", "a b", "Deploy"];
            const MAX: [&str; 5] = ["1", "0", "ten", "1000", "1001"];
            let found: Vec<FoundJob> = jobs
                .iter()
                .enumerate()
                .map(|(i, &(ns, q, created, max, parallelism))| {
                    let mut j = job(NS[ns], &format!("job-{i}"), QUEUES[q], &created.to_string());
                    j.parallelism = parallelism;
                    if max < MAX.len() - 1 {
                        j.annotations.insert(ANN_MAX_ACTIVE_BUILDS.into(), MAX[max].into());
                    }
                    j
                })
                .collect();
            let found_pods: Vec<FoundPod> = pods
                .iter()
                .map(|&(ns, q)| FoundPod {
                    namespace: NS[ns].into(),
                    pool: pool_name(QUEUES[q]),
                    queue: QUEUES[q].into(),
                })
                .collect();
            let d = configure(&settings(), &found, &found_pods).expect("never fails as a whole");
            let pools = d.value["pools"].as_array().cloned().unwrap_or_default();
            let mut queues = std::collections::HashSet::new();
            let mut names = std::collections::HashSet::new();
            for p in &pools {
                let queue = p["selector"]["queue"].as_str().unwrap_or_default().to_owned();
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                proptest::prop_assert!(queues.insert(queue.clone()), "queue {queue} twice");
                proptest::prop_assert!(
                    super::super::validate::name_problem(&name, MAX_POOL_NAME).is_none()
                );
                proptest::prop_assert!(names.insert(name));
            }
            for j in &found {
                let serves = d.pools.iter().any(|(_, _, id)| *id == job_id(j));
                let named = d.skipped.iter().any(|m| m.starts_with(&format!("{}:", job_id(j))));
                proptest::prop_assert!(serves != named, "{}: {:?}", job_id(j), d.skipped);
            }
            proptest::prop_assert_eq!(d.config.is_some(), !pools.is_empty());
        }
    }

    #[test]
    fn no_usable_job_is_no_configuration_yet() {
        let d = configure(&settings(), &[], &[]).expect("valid");
        assert!(d.config.is_none() && d.pools.is_empty());
    }
}
