//! Configuration of the kubernetes backend: the backend-level [`Config`] (cluster, namespace,
//! timings) and the per-pool [`PoolTemplate`] (where the pod template comes from and how the
//! credentials reach the runner), their pure validation, and the template hash.
//!
//! Nothing here opens a connection or reads a file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use runscale_core::adapter_type::{PoolContext, Problems, Template, Validate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest pool name: the runner name `rs-{pool}-{10 chars}` is a pod name and a label value,
/// which may not exceed 63 characters.
pub(crate) const MAX_POOL_NAME: usize = 63 - 14;

/// Backend-level settings of the kubernetes backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of a kubeconfig file. Default: `KUBECONFIG` or `~/.kube/config` if present, else
    /// the in-cluster service account (kube's inference).
    #[serde(default = "default_kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use. Default: the kubeconfig's `current-context`.
    #[serde(default = "default_context")]
    pub context: Option<String>,
    /// Namespace of the runner pods, their Secrets and the CronJob/Job templates. Default: the
    /// context's namespace, or the service account's namespace in-cluster.
    #[serde(default = "default_namespace")]
    pub namespace: Option<String>,
    /// How long a deleted runner pod may take to stop (its `terminationGracePeriod` on
    /// delete), a duration such as "30s".
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace_period: Duration,
    /// How often the pod inventory is re-listed from scratch, on top of the watch (which
    /// already re-lists after a dropped watch or a 410 Gone). At least 10 s.
    #[serde(default = "default_resync_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub resync_period: Duration,
    /// How long a CronJob or Job template fetched from the cluster is reused before it is
    /// fetched again (edits are noticed within this time). At least 1 s.
    #[serde(default = "default_template_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub template_refresh: Duration,
}

/// The default [`Config::kubeconfig`]: kube's inference.
fn default_kubeconfig() -> Option<PathBuf> {
    None
}

/// The default [`Config::context`]: the kubeconfig's current context.
fn default_context() -> Option<String> {
    None
}

/// The default [`Config::namespace`]: the client's default namespace.
fn default_namespace() -> Option<String> {
    None
}

/// The default [`Config::grace_period`]: 30 seconds.
fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

/// The default [`Config::resync_period`]: 5 minutes.
fn default_resync_period() -> Duration {
    Duration::from_secs(300)
}

/// The default [`Config::template_refresh`]: 15 seconds.
fn default_template_refresh() -> Duration {
    Duration::from_secs(15)
}

impl Config {
    /// A configuration with every default and this namespace and kubeconfig.
    pub fn new(kubeconfig: Option<PathBuf>, namespace: Option<String>) -> Self {
        Self {
            kubeconfig,
            context: default_context(),
            namespace,
            grace_period: default_grace_period(),
            resync_period: default_resync_period(),
            template_refresh: default_template_refresh(),
        }
    }
}

impl Validate for Config {
    /// Checks the settings without touching the file system or the network. Errors name the
    /// field (relative to this struct) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("grace_period", Some(self.grace_period)),
            ("resync_period", Some(self.resync_period)),
            ("template_refresh", Some(self.template_refresh)),
        ]));
        if let Some(path) = &self.kubeconfig
            && path.as_os_str().is_empty()
        {
            errors.push((
                "kubeconfig".to_owned(),
                "must not be empty (leave it out to infer the cluster)".to_owned(),
            ));
        }
        if let Some(context) = &self.context
            && context.is_empty()
        {
            errors.push((
                "context".to_owned(),
                "must not be empty (leave it out for the current context)".to_owned(),
            ));
        }
        if let Some(ns) = &self.namespace
            && let Some(problem) = dns_label_problem(ns)
        {
            errors.push(("namespace".to_owned(), problem));
        }
        if self.resync_period < Duration::from_secs(10) {
            errors.push((
                "resync_period".to_owned(),
                "must be at least 10s (the watch keeps the inventory current in between)"
                    .to_owned(),
            ));
        }
        if self.template_refresh < Duration::from_secs(1) {
            errors.push((
                "template_refresh".to_owned(),
                "must be at least 1s".to_owned(),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// How the runner's registration credentials reach its pod. Either way they live in a Secret
/// per pod (owned by the pod), never in the pod spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsDelivery {
    /// Every credential is an environment variable of the credential containers
    /// (`envFrom: secretRef`). Variables the template sets itself take precedence.
    #[default]
    Env,
    /// The Secret is mounted read-only at `credentials_dir`, one file per credential named
    /// after it; `RUNSCALE_CREDENTIALS_DIR` names the directory.
    Volume,
}

/// A suspended CronJob whose job template's pod template is the runner pod template
/// (circleci-runner-autoscaler compatibility). Exactly one of the fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobRef {
    /// The CronJob's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A CircleCI resource class `org/name`: the CronJob labelled `resource-class-org: org`
    /// and `resource-class-name: name`.
    #[serde(default)]
    pub resource_class: Option<String>,
}

/// A Job with `parallelism: 0` whose pod template is the runner pod template (Buildscaler
/// compatibility). Its UID is the template version: pods made from a deleted and recreated
/// Job are retired once idle. Exactly one of the fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    /// The Job's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A Buildkite queue: the Job labelled `app.elotl.co: buildscaler` and
    /// `buildscaler.elotl.co/queue: <queue>`.
    #[serde(default)]
    pub queue: Option<String>,
}

/// How one pool's runners are made, from exactly one of `pod`, `cron_job` and `job`: one pod
/// per runner with `restartPolicy: Never` (`pod`, `job`), or one Job per runner made from the
/// CronJob's `jobTemplate` (`cron_job`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTemplate {
    /// An inline pod template (`metadata` with labels and annotations, and `spec`), as in a
    /// Deployment's `spec.template`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub pod: Option<PodTemplateSpec>,
    /// A suspended CronJob in the backend's namespace, by name or by CircleCI resource class:
    /// each runner is a Job made from its `jobTemplate` and owned by it.
    #[serde(default)]
    pub cron_job: Option<CronJobRef>,
    /// A Job with `parallelism: 0` in the backend's namespace, by name or by Buildkite queue.
    #[serde(default)]
    pub job: Option<JobRef>,
    /// How credentials reach the pod: `env` (default) or `volume`.
    #[serde(default = "default_credentials")]
    pub credentials: CredentialsDelivery,
    /// Where the credentials Secret is mounted with `volume` delivery.
    #[serde(default = "default_credentials_dir")]
    pub credentials_dir: String,
    /// Names of the containers that get the credentials and the `RUNSCALE_*` variables.
    /// Default: the first container only.
    #[serde(default = "default_credentials_containers")]
    pub credentials_containers: Vec<String>,
    /// A PersistentVolumeClaim of its own for every runner pod (Buildscaler's `pvc-*` Job
    /// annotations), mounted in each of the pod's containers. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<VolumeClaim>,
}

/// A claim made for each runner pod as a generic ephemeral volume: Kubernetes creates the
/// PersistentVolumeClaim `{pod}-runscale-pvc` with the pod, owned by it, and the garbage
/// collector deletes it with the pod. runscale needs no permission on claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeClaim {
    /// The storage requested, a Kubernetes quantity such as "10Gi".
    pub size: String,
    /// Where the volume is mounted in every container of the pod (an absolute path).
    pub mount_path: String,
    /// The StorageClass of the claim. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl VolumeClaim {
    /// Problems of the settings, with field names relative to the claim.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if let Some(p) = quantity_problem(&self.size) {
            errors.push(("size".to_owned(), p));
        }
        if !(self.mount_path.starts_with('/') && self.mount_path.len() > 1)
            || self.mount_path.contains(':')
            || self.mount_path.split('/').any(|part| part == "..")
        {
            errors.push((
                "mount_path".to_owned(),
                format!(
                    "{:?} is not an absolute path below / (without '..' or ':')",
                    self.mount_path
                ),
            ));
        }
        if let Some(class) = &self.storage_class_name
            && let Some(p) = dns_subdomain_problem(class)
        {
            errors.push(("storage_class_name".to_owned(), p));
        }
        errors
    }
}

/// Why `s` is not a positive storage quantity (`10Gi`, `500M`, `1.5Ti`), if it is not.
pub(crate) fn quantity_problem(s: &str) -> Option<String> {
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.len() <= 18
        && number.matches('.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.bytes().any(|b| (b'1'..=b'9').contains(&b));
    if number_ok && (suffix.is_empty() || SUFFIXES.contains(&suffix)) {
        None
    } else {
        Some(format!(
            "{s:?} is not a storage size (a positive number with an optional suffix Ki, Mi, \
             Gi, Ti, Pi, Ei, k, M, G, T, P or E, such as \"10Gi\")"
        ))
    }
}

/// The default [`PoolTemplate::credentials`]: environment variables.
fn default_credentials() -> CredentialsDelivery {
    CredentialsDelivery::Env
}

/// The default [`PoolTemplate::credentials_dir`].
fn default_credentials_dir() -> String {
    "/run/runscale/credentials".to_owned()
}

/// The default [`PoolTemplate::credentials_containers`]: the first container.
fn default_credentials_containers() -> Vec<String> {
    Vec::new()
}

/// Where a pool's pod template comes from, once validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Source<'a> {
    /// Inline in the configuration.
    Inline(&'a PodTemplateSpec),
    /// A CronJob by name.
    CronJobNamed(&'a str),
    /// A CronJob by CircleCI resource class `(org, name)`.
    CronJobClass(&'a str, &'a str),
    /// A Job by name.
    JobNamed(&'a str),
    /// A Job by Buildkite queue.
    JobQueue(&'a str),
}

impl PoolTemplate {
    /// A template from an inline pod template, with the other fields defaulted.
    pub fn inline(pod: PodTemplateSpec) -> Self {
        Self::with_source(Some(pod), None, None)
    }

    /// A template from a CronJob reference, with the other fields defaulted.
    pub fn cron_job(cron_job: CronJobRef) -> Self {
        Self::with_source(None, Some(cron_job), None)
    }

    /// A template from a Job reference, with the other fields defaulted.
    pub fn job(job: JobRef) -> Self {
        Self::with_source(None, None, Some(job))
    }

    fn with_source(
        pod: Option<PodTemplateSpec>,
        cron_job: Option<CronJobRef>,
        job: Option<JobRef>,
    ) -> Self {
        Self {
            pod,
            cron_job,
            job,
            credentials: default_credentials(),
            credentials_dir: default_credentials_dir(),
            credentials_containers: default_credentials_containers(),
            volume_claim: None,
        }
    }

    /// The source, if exactly one is set and well-formed (see [`PoolTemplate::validate`]).
    /// Whether the pool's runners are Jobs made from a CronJob's `jobTemplate` (else pods).
    pub(crate) fn makes_jobs(&self) -> bool {
        self.cron_job.is_some()
    }

    pub(crate) fn source(&self) -> Option<Source<'_>> {
        match (&self.pod, &self.cron_job, &self.job) {
            (Some(pod), None, None) => Some(Source::Inline(pod)),
            (None, Some(c), None) => match (&c.name, &c.resource_class) {
                (Some(name), None) => Some(Source::CronJobNamed(name)),
                (None, Some(class)) => class
                    .split_once('/')
                    .map(|(org, name)| Source::CronJobClass(org, name)),
                _ => None,
            },
            (None, None, Some(j)) => match (&j.name, &j.queue) {
                (Some(name), None) => Some(Source::JobNamed(name)),
                (None, Some(queue)) => Some(Source::JobQueue(queue)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Template for PoolTemplate {
    /// Checks the template without touching the network. Errors name the field (relative to
    /// this struct, e.g. `pod.spec.containers` or `cron_job.resource_class`) and say what is
    /// wrong.
    fn validate_for(&self, _: PoolContext<'_>) -> Problems {
        let mut errors = Vec::new();
        let set = [
            self.pod.is_some(),
            self.cron_job.is_some(),
            self.job.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            errors.push((
                "pod".to_owned(),
                format!(
                    "exactly one of pod, cron_job and job must be set ({set} are); it says \
                     where the runner pod template comes from"
                ),
            ));
        }
        if let Some(pod) = &self.pod {
            errors.extend(
                pod_template_problems(pod)
                    .into_iter()
                    .map(|(f, m)| (format!("pod.{f}"), m)),
            );
        }
        if let Some(c) = &self.cron_job {
            match (&c.name, &c.resource_class) {
                (Some(name), None) => {
                    if let Some(p) = dns_subdomain_problem(name) {
                        errors.push(("cron_job.name".to_owned(), p));
                    }
                }
                (None, Some(class)) => match class.split_once('/') {
                    Some((org, name)) => {
                        for v in [org, name] {
                            if let Some(p) = label_value_problem(v) {
                                errors.push(("cron_job.resource_class".to_owned(), p));
                            }
                        }
                    }
                    None => errors.push((
                        "cron_job.resource_class".to_owned(),
                        format!("{class:?} must be org/name"),
                    )),
                },
                _ => errors.push((
                    "cron_job".to_owned(),
                    "exactly one of name and resource_class must be set".to_owned(),
                )),
            }
        }
        if let Some(j) = &self.job {
            match (&j.name, &j.queue) {
                (Some(name), None) => {
                    if let Some(p) = dns_subdomain_problem(name) {
                        errors.push(("job.name".to_owned(), p));
                    }
                }
                (None, Some(queue)) => {
                    if let Some(p) = label_value_problem(queue) {
                        errors.push(("job.queue".to_owned(), p));
                    }
                }
                _ => errors.push((
                    "job".to_owned(),
                    "exactly one of name and queue must be set".to_owned(),
                )),
            }
        }
        if self.credentials == CredentialsDelivery::Volume
            && !(self.credentials_dir.starts_with('/') && self.credentials_dir.len() > 1)
        {
            errors.push((
                "credentials_dir".to_owned(),
                "must be an absolute path below /".to_owned(),
            ));
        }
        for (i, name) in self.credentials_containers.iter().enumerate() {
            if let Some(p) = dns_label_problem(name) {
                errors.push((format!("credentials_containers[{i}]"), p));
            }
        }
        if let Some(claim) = &self.volume_claim {
            errors.extend(
                claim
                    .problems()
                    .into_iter()
                    .map(|(f, m)| (format!("volume_claim.{f}"), m)),
            );
        }
        if let Some(pod) = &self.pod {
            let names: Vec<&str> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().map(|c| c.name.as_str()))
                .collect();
            for (i, name) in self.credentials_containers.iter().enumerate() {
                if !names.contains(&name.as_str()) {
                    errors.push((
                        format!("credentials_containers[{i}]"),
                        format!("the pod template has no container {name:?}"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A short hash of everything in the configuration that decides how a pod is made: the
    /// source (the inline template, or the CronJob/Job reference) and the credentials
    /// settings. Stable across runs: SHA-256 over canonical JSON (sorted keys), the first 16
    /// hex digits. Edits of a referenced CronJob or Job are noticed separately (the template
    /// version, see the module docs).
    fn hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut h = Sha256::new();
        h.update(b"runscale/kubernetes/template/v1\n");
        h.update(canonical_json(&value).as_bytes());
        hex16(&h.finalize())
    }
}

/// Problems of a pod template that would make every launch fail. Field names are relative to
/// the template (`spec.containers[0].name`).
pub(crate) fn pod_template_problems(pod: &PodTemplateSpec) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let Some(spec) = &pod.spec else {
        return vec![("spec".to_owned(), "is missing".to_owned())];
    };
    if spec.containers.is_empty() {
        errors.push((
            "spec.containers".to_owned(),
            "must list at least one container".to_owned(),
        ));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if let Some(p) = dns_label_problem(&c.name) {
            errors.push((format!("spec.containers[{i}].name"), p));
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            errors.push((
                format!("spec.containers[{i}].image"),
                "must name an image".to_owned(),
            ));
        }
    }
    errors
}

/// JSON with object keys sorted at every level, so a hash does not depend on map order.
pub(crate) fn canonical_json(value: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The first 16 hex digits of a digest.
pub(crate) fn hex16(digest: &[u8]) -> String {
    hex::encode(&digest[..digest.len().min(8)])
}

/// Why `s` is not a DNS-1123 label (namespace, container name), if it is not.
pub(crate) fn dns_label_problem(s: &str) -> Option<String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = s
        .bytes()
        .next()
        .zip(s.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ends_ok {
        Some(format!(
            "{s:?} is not a DNS label (1 to 63 lower-case letters, digits and '-', starting and \
             ending with a letter or digit)"
        ))
    } else {
        None
    }
}

/// Why `s` is not a DNS-1123 subdomain (object name), if it is not.
pub(crate) fn dns_subdomain_problem(s: &str) -> Option<String> {
    let parts_ok = s.split('.').all(|p| dns_label_problem(p).is_none());
    if s.is_empty() || s.len() > 253 || !parts_ok {
        Some(format!(
            "{s:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.', at \
             most 253 characters)"
        ))
    } else {
        None
    }
}

/// Why `s` is not a label value, if it is not.
pub(crate) fn label_value_problem(s: &str) -> Option<String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = s.is_empty()
        || s.bytes()
            .next()
            .zip(s.bytes().last())
            .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ends_ok {
        Some(format!(
            "{s:?} is not a label value (1 to 63 letters, digits, '-', '_' and '.', starting and \
             ending with a letter or digit)"
        ))
    } else {
        None
    }
}

/// Checks that a pool can run on this backend, for configuration validation: its name can
/// name runner pods (field `name`), and it hosts one runner per pod (field
/// `runners_per_instance`). [`Kubernetes::new`](super::Kubernetes::new) refuses the same.
pub fn validate_pool(pool: &str, runners_per_instance: u32) -> Result<(), Vec<(String, String)>> {
    let mut errors = Vec::new();
    if let Some(problem) = pool_name_problem(pool) {
        errors.push(("name".to_owned(), problem));
    }
    if runners_per_instance != 1 {
        errors.push((
            "runners_per_instance".to_owned(),
            format!(
                "the kubernetes backend runs one runner per pod; set 1, not {runners_per_instance}"
            ),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Why a pool name cannot name runner pods, if it cannot: runner names `rs-{pool}-{suffix}`
/// are pod names and label values.
pub(crate) fn pool_name_problem(pool: &str) -> Option<String> {
    if pool.len() > MAX_POOL_NAME || dns_label_problem(pool).is_some() {
        Some(format!(
            "pool name {pool:?} cannot name runner pods: use 1 to {MAX_POOL_NAME} lower-case \
             letters, digits and '-', starting and ending with a letter or digit"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runscale_core::adapter_type::PoolContext;

    fn fields(r: Result<(), Vec<(String, String)>>) -> Vec<String> {
        let mut f: Vec<String> = r
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        f.sort();
        f
    }

    fn pod(json: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json).expect("pod template")
    }

    fn runner_pod() -> PodTemplateSpec {
        pod(serde_json::json!({
            "metadata": {"labels": {"app": "runner"}},
            "spec": {"containers": [{"name": "runner", "image": "runner:1"}]}
        }))
    }

    #[test]
    fn config_parses_durations_defaults_and_rejects_unknown_fields() {
        let c: Config = serde_json::from_str(
            r#"{"kubeconfig": "/k", "context": "c", "namespace": "ci", "grace_period": "2m"}"#,
        )
        .expect("valid");
        assert_eq!(c.grace_period, Duration::from_secs(120));
        assert_eq!(c.resync_period, Duration::from_secs(300));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/k")));
        let c: Config = serde_json::from_str("{}").expect("all optional");
        assert_eq!(c, Config::new(None, None));
        assert!(serde_json::from_str::<Config>(r#"{"namespace": "a", "x": 1}"#).is_err());
    }

    #[test]
    fn config_validate_names_each_bad_field() {
        let c = Config {
            kubeconfig: Some(PathBuf::new()),
            context: Some(String::new()),
            namespace: Some("Not_A_Label".to_owned()),
            grace_period: Duration::from_secs(2 * 24 * 3600),
            resync_period: Duration::from_secs(1),
            template_refresh: Duration::ZERO,
        };
        assert_eq!(
            fields(c.validate()),
            [
                "context",
                "grace_period",
                "kubeconfig",
                "namespace",
                "resync_period",
                "template_refresh"
            ]
        );
        assert!(
            Config::new(None, Some("ci-runners".into()))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn template_needs_exactly_one_source() {
        let mut t = PoolTemplate::inline(runner_pod());
        assert!(t.validate_for(PoolContext::single("p")).is_ok());
        t.job = Some(JobRef {
            name: Some("j".into()),
            queue: None,
        });
        assert_eq!(fields(t.validate_for(PoolContext::single("p"))), ["pod"]);
        let none = PoolTemplate::with_source(None, None, None);
        assert_eq!(fields(none.validate_for(PoolContext::single("p"))), ["pod"]);
    }

    #[test]
    fn template_validate_names_nested_fields() {
        let t = PoolTemplate::inline(pod(serde_json::json!({
            "spec": {"containers": [{"name": "Bad_Name"}]}
        })));
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            [
                "pod.spec.containers[0].image",
                "pod.spec.containers[0].name"
            ]
        );
        let t = PoolTemplate::inline(pod(serde_json::json!({"metadata": {}})));
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["pod.spec"]
        );
        let t = PoolTemplate::cron_job(CronJobRef {
            name: None,
            resource_class: Some("no-slash".into()),
        });
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["cron_job.resource_class"]
        );
        let t = PoolTemplate::cron_job(CronJobRef {
            name: Some("a".into()),
            resource_class: Some("o/n".into()),
        });
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["cron_job"]
        );
        let t = PoolTemplate::job(JobRef {
            name: None,
            queue: Some("bad queue".into()),
        });
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["job.queue"]
        );
        let mut t = PoolTemplate::inline(runner_pod());
        t.credentials = CredentialsDelivery::Volume;
        t.credentials_dir = "relative".into();
        t.credentials_containers = vec!["sidecar".into()];
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["credentials_containers[0]", "credentials_dir"]
        );
    }

    #[test]
    fn template_parses_from_yaml_shapes() {
        let t: PoolTemplate = serde_json::from_value(serde_json::json!({
            "cron_job": {"resource_class": "vela-games/k8s-small"}
        }))
        .expect("valid");
        assert_eq!(
            t.source(),
            Some(Source::CronJobClass("vela-games", "k8s-small"))
        );
        assert_eq!(t.credentials, CredentialsDelivery::Env);
        let t: PoolTemplate = serde_json::from_value(serde_json::json!({
            "job": {"queue": "bash"}, "credentials": "volume"
        }))
        .expect("valid");
        assert_eq!(t.source(), Some(Source::JobQueue("bash")));
        assert_eq!(t.credentials, CredentialsDelivery::Volume);
        assert!(
            serde_json::from_value::<PoolTemplate>(serde_json::json!({
                "job": {"queue": "bash"}, "typo": 1
            }))
            .is_err()
        );
    }

    #[test]
    fn hash_is_stable_and_tells_sources_and_settings_apart() {
        let base = PoolTemplate::inline(runner_pod());
        // A literal (also computed independently, with Python's json.dumps(sort_keys=True)):
        // if it changes, every deployed pod is seen as outdated.
        assert_eq!(base.hash(), "31afe9922efd8115");
        let mut others = vec![
            PoolTemplate::cron_job(CronJobRef {
                name: Some("small-runner".into()),
                resource_class: None,
            }),
            PoolTemplate::job(JobRef {
                name: Some("small-runner".into()),
                queue: None,
            }),
        ];
        let mut t = base.clone();
        t.credentials = CredentialsDelivery::Volume;
        others.push(t);
        let mut t = base.clone();
        t.credentials_containers = vec!["runner".into()];
        others.push(t);
        let mut t = base.clone();
        if let Some(spec) = t.pod.as_mut().and_then(|p| p.spec.as_mut()) {
            spec.containers[0].image = Some("runner:2".into());
        }
        others.push(t);
        for o in &others {
            assert_ne!(o.hash(), base.hash(), "{o:?}");
        }
    }

    #[test]
    fn volume_claims_need_a_size_and_an_absolute_path() {
        let claim = |size: &str, path: &str, class: Option<&str>| VolumeClaim {
            size: size.into(),
            mount_path: path.into(),
            storage_class_name: class.map(str::to_owned),
        };
        assert!(
            claim("10Gi", "/data", Some("standard"))
                .problems()
                .is_empty()
        );
        assert!(
            claim("1.5Ti", "/var/lib/buildkite-agent", None)
                .problems()
                .is_empty()
        );
        assert!(claim("500M", "/d", None).problems().is_empty());
        for bad in [
            "", "0", "0Gi", "ten", "10GB", ".5Gi", "10 Gi", "-1Gi", "1e3",
        ] {
            assert_eq!(
                claim(bad, "/d", None)
                    .problems()
                    .into_iter()
                    .map(|(f, _)| f)
                    .collect::<Vec<_>>(),
                ["size"],
                "{bad:?}"
            );
        }
        for bad in ["relative", "/", "/a/../etc", "/a:b"] {
            assert_eq!(
                claim("1Gi", bad, None).problems()[0].0,
                "mount_path",
                "{bad}"
            );
        }
        assert_eq!(
            claim("1Gi", "/d", Some("Bad_Class")).problems()[0].0,
            "storage_class_name"
        );
        let mut t = PoolTemplate::inline(runner_pod());
        let before = t.hash();
        t.volume_claim = Some(claim("1Gi", "relative", None));
        assert_eq!(
            fields(t.validate_for(PoolContext::single("p"))),
            ["volume_claim.mount_path"]
        );
        t.volume_claim = Some(claim("1Gi", "/d", None));
        assert_ne!(t.hash(), before, "the claim is part of the template");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(dns_label_problem("ci-runners").is_none());
        assert!(dns_label_problem("-x").is_some());
        assert!(dns_label_problem("A").is_some());
        assert!(dns_subdomain_problem("a.b-c").is_none());
        assert!(dns_subdomain_problem("a..b").is_some());
        assert!(label_value_problem("k8s_small.v1").is_none());
        assert!(label_value_problem("x/y").is_some());
        assert!(pool_name_problem("linux-x64").is_none());
        assert!(pool_name_problem(&"a".repeat(MAX_POOL_NAME + 1)).is_some());
        assert!(pool_name_problem("Linux").is_some());
        assert!(validate_pool("linux", 1).is_ok());
        assert_eq!(
            fields(validate_pool("Linux", 2)),
            ["name", "runners_per_instance"]
        );
    }

    #[test]
    fn json_schema_describes_every_field() {
        let schema = serde_json::to_value(schemars::schema_for!(PoolTemplate)).expect("schema");
        for field in [
            "pod",
            "cron_job",
            "job",
            "credentials",
            "credentials_dir",
            "credentials_containers",
        ] {
            assert!(
                schema["properties"][field]["description"].is_string(),
                "{field} has no description"
            );
        }
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema");
        assert_eq!(schema["properties"]["grace_period"]["type"], "string");
    }
}
