//! Pure construction of what the backend sends to the cluster: the pod template taken from a
//! CronJob or a Job, the runner pod (or, from a CronJob, the runner Job), and its credentials
//! Secret.
//!
//! No I/O: every function here takes objects and returns objects, so it is unit-tested on the
//! seed YAML files.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EphemeralVolumeSource, ObjectFieldSelector,
    PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate, Pod, PodTemplateSpec, Secret,
    SecretEnvSource, SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use runscale_core::Credentials;
use sha2::{Digest, Sha256};

use super::config::{CredentialsDelivery, PoolTemplate, canonical_json, hex16};

/// Label naming the pool of a runner pod (and of its Secret).
pub(crate) const LABEL_POOL: &str = "runscale/pool";
/// Label naming the runner a pod was launched for (also the pod's name).
pub(crate) const LABEL_RUNNER: &str = "runscale/runner-name";
/// The standard "managed by" label.
pub(crate) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub(crate) const MANAGED_BY: &str = "runscale";
/// Annotation with the pool's template hash at launch.
pub(crate) const ANN_TEMPLATE_HASH: &str = "runscale/template-hash";
/// Annotation with the version of the template source at launch (see [`Resolved::version`]).
pub(crate) const ANN_TEMPLATE_VERSION: &str = "runscale/template-version";
/// Annotation set to `template` when the pod template itself carries the disruption
/// annotations: runscale then leaves them alone.
pub(crate) const ANN_DISRUPTION: &str = "runscale/disruption";
/// Karpenter: a pod with this annotation set to `"true"` blocks voluntary disruption of its
/// node.
pub(crate) const ANN_KARPENTER: &str = "karpenter.sh/do-not-disrupt";
/// cluster-autoscaler: `"false"` keeps the node from being scaled down.
pub(crate) const ANN_SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// CircleCI resource class labels (circleci-runner-autoscaler).
pub(crate) const LABEL_RC_ORG: &str = "resource-class-org";
/// See [`LABEL_RC_ORG`].
pub(crate) const LABEL_RC_NAME: &str = "resource-class-name";
/// Buildscaler's label marking a template Job, and its value.
pub(crate) const LABEL_BUILDSCALER: (&str, &str) = ("app.elotl.co", "buildscaler");
/// Buildscaler's label naming a template Job's Buildkite queue.
pub(crate) const LABEL_BUILDSCALER_QUEUE: &str = "buildscaler.elotl.co/queue";
/// Environment variable naming the pool, set in the credential containers.
pub(crate) const ENV_POOL: &str = "RUNSCALE_POOL";
/// Environment variable naming the runner, set in the credential containers.
pub(crate) const ENV_RUNNER_NAME: &str = "RUNSCALE_RUNNER_NAME";
/// Environment variable naming the credentials directory (`volume` delivery).
pub(crate) const ENV_CREDENTIALS_DIR: &str = "RUNSCALE_CREDENTIALS_DIR";
/// Annotation the CronJob controller and `kubectl create job --from=cronjob/...` put on a
/// Job made by hand from a CronJob (circleci-runner-autoscaler set it too).
pub(crate) const ANN_INSTANTIATE: (&str, &str) = ("cronjob.kubernetes.io/instantiate", "manual");
/// Name of the credentials volume (`volume` delivery).
const CREDENTIALS_VOLUME: &str = "runscale-credentials";
/// Name of the per-pod claim's volume; Kubernetes names the claim `{pod}-runscale-pvc`.
pub(crate) const CLAIM_VOLUME: &str = "runscale-pvc";
/// Labels the Job controller puts on a Job's pod template; copied onto bare pods they would
/// let the Job controller (parallelism 0) adopt and delete them.
const JOB_CONTROLLER_LABELS: [&str; 4] = [
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// A pool's pod template as found (in the configuration or the cluster), and its version.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resolved {
    /// The pod template.
    pub template: PodTemplateSpec,
    /// Changes when the template does: `inline/{hash}`, `cronjob/{uid}/{hash}` or
    /// `job/{uid}` (a Job's pod template is immutable, so its UID marks the version).
    pub version: String,
    /// What it was taken from, for messages (`CronJob small-runner`).
    pub origin: String,
    /// Labels of the source that its pods carry too: a Buildscaler Job's
    /// `app.elotl.co` and `buildscaler.elotl.co/queue`, so that selecting by them (the seed's
    /// uninstall, `kubectl delete jobs,pods -l app.elotl.co=buildscaler`) finds the pods.
    pub labels: BTreeMap<String, String>,
    /// For a CronJob: runners are Jobs made from its `jobTemplate` (`None`: bare pods).
    pub job: Option<JobOrigin>,
}

/// The CronJob runner Jobs are made from and owned by.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobOrigin {
    /// The CronJob's name.
    pub name: String,
    /// The CronJob's uid (the Jobs' owner reference).
    pub uid: String,
    /// `spec.jobTemplate.metadata`.
    pub metadata: ObjectMeta,
    /// `spec.jobTemplate.spec`.
    pub spec: JobSpec,
}

/// A pod template's content hash.
fn template_digest(template: &PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).unwrap_or(serde_json::Value::Null);
    hex16(&Sha256::digest(canonical_json(&value).as_bytes()))
}

/// The inline template of a pool.
pub(crate) fn from_inline(template: &PodTemplateSpec) -> Resolved {
    Resolved {
        template: template.clone(),
        version: format!("inline/{}", template_digest(template)),
        origin: "the inline pod template".to_owned(),
        labels: BTreeMap::new(),
        job: None,
    }
}

/// The pod template of a suspended CronJob (its `spec.jobTemplate.spec.template`).
pub(crate) fn from_cron_job(cron_job: &CronJob) -> Result<Resolved, String> {
    let name = cron_job.metadata.name.as_deref().unwrap_or_default();
    let spec = cron_job
        .spec
        .as_ref()
        .ok_or_else(|| format!("CronJob {name} has no spec"))?;
    if spec.suspend != Some(true) {
        return Err(format!(
            "CronJob {name} is not suspended (spec.suspend: true): it would start runners on \
             its own schedule"
        ));
    }
    let job_spec = spec
        .job_template
        .spec
        .clone()
        .ok_or_else(|| format!("CronJob {name} has no spec.jobTemplate.spec"))?;
    for (field, value) in [
        ("parallelism", job_spec.parallelism),
        ("completions", job_spec.completions),
    ] {
        if value.is_some_and(|v| v != 1) {
            return Err(format!(
                "CronJob {name}: spec.jobTemplate.spec.{field} must be 1 or unset: each runner \
                 is one Job with one pod"
            ));
        }
    }
    let template = job_spec.template.clone();
    let uid = cron_job.metadata.uid.as_deref().unwrap_or_default();
    Ok(Resolved {
        version: format!("cronjob/{uid}/{}", template_digest(&template)),
        template,
        origin: format!("CronJob {name}"),
        labels: BTreeMap::new(),
        job: Some(JobOrigin {
            name: name.to_owned(),
            uid: uid.to_owned(),
            metadata: spec.job_template.metadata.clone().unwrap_or_default(),
            spec: job_spec,
        }),
    })
}

/// The pod template of a Job with `parallelism: 0`; the labels the Job controller added to
/// it are dropped.
pub(crate) fn from_job(job: &Job) -> Result<Resolved, String> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| format!("Job {name} has no spec"))?;
    if spec.parallelism != Some(0) {
        return Err(format!(
            "Job {name} must have spec.parallelism: 0, or the Job controller runs its pods \
             itself"
        ));
    }
    let mut template = spec.template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        for l in JOB_CONTROLLER_LABELS {
            labels.remove(l);
        }
    }
    let uid = job
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("Job {name} has no metadata.uid"))?;
    let labels = job
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| [LABEL_BUILDSCALER.0, LABEL_BUILDSCALER_QUEUE].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Resolved {
        template,
        version: format!("job/{uid}"),
        origin: format!("Job {name}"),
        labels,
        job: None,
    })
}

/// Everything one runner pod is made from.
pub(crate) struct PodParams<'a> {
    /// The pool.
    pub pool: &'a str,
    /// The runner's name: also the pod's name.
    pub runner_name: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The pool's template hash (annotation).
    pub template_hash: &'a str,
    /// The template and its version.
    pub resolved: &'a Resolved,
    /// The pool's settings (credentials delivery, directory, containers).
    pub settings: &'a PoolTemplate,
}

/// The name of a runner pod's credentials Secret.
pub(crate) fn secret_name(pod_name: &str) -> String {
    format!("{pod_name}-credentials")
}

/// The runner pod: the template with `restartPolicy: Never`, runscale's labels and
/// annotations, and the credentials Secret wired into the credential containers. Errors say
/// what in the template is unusable.
pub(crate) fn render_pod(p: &PodParams<'_>) -> Result<Pod, String> {
    let origin = &p.resolved.origin;
    let problems = super::config::pod_template_problems(&p.resolved.template);
    if let Some((field, message)) = problems.first() {
        return Err(format!("{origin}: {field}: {message}"));
    }
    let template = p.resolved.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for l in JOB_CONTROLLER_LABELS {
        labels.remove(l);
    }
    labels.extend(p.resolved.labels.clone());
    labels.insert(LABEL_POOL.to_owned(), p.pool.to_owned());
    labels.insert(LABEL_RUNNER.to_owned(), p.runner_name.to_owned());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    let mut annotations = meta.annotations.unwrap_or_default();
    if annotations.contains_key(ANN_KARPENTER) || annotations.contains_key(ANN_SAFE_TO_EVICT) {
        annotations.insert(ANN_DISRUPTION.to_owned(), "template".to_owned());
    }
    annotations.insert(ANN_TEMPLATE_HASH.to_owned(), p.template_hash.to_owned());
    annotations.insert(
        ANN_TEMPLATE_VERSION.to_owned(),
        p.resolved.version.to_owned(),
    );

    let mut spec = template.spec.unwrap_or_default();
    spec.restart_policy = Some("Never".to_owned());
    let secret = secret_name(p.runner_name);
    let wanted: Vec<&str> = if p.settings.credentials_containers.is_empty() {
        spec.containers
            .first()
            .map(|c| c.name.as_str())
            .into_iter()
            .collect()
    } else {
        p.settings
            .credentials_containers
            .iter()
            .map(String::as_str)
            .collect()
    };
    let wanted: Vec<String> = wanted.into_iter().map(str::to_owned).collect();
    for name in &wanted {
        if !spec.containers.iter().any(|c| &c.name == name) {
            return Err(format!(
                "{origin} has no container {name:?} (credentials_containers)"
            ));
        }
    }
    let volume = p.settings.credentials == CredentialsDelivery::Volume;
    for c in spec
        .containers
        .iter_mut()
        .filter(|c| wanted.contains(&c.name))
    {
        let env = c.env.get_or_insert_with(Vec::new);
        env.retain(|e| !e.name.starts_with("RUNSCALE_"));
        let mut vars = vec![(ENV_POOL, p.pool), (ENV_RUNNER_NAME, p.runner_name)];
        if volume {
            vars.push((ENV_CREDENTIALS_DIR, p.settings.credentials_dir.as_str()));
        }
        env.extend(vars.into_iter().map(|(name, value)| EnvVar {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            value_from: None,
        }));
        if volume {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: CREDENTIALS_VOLUME.to_owned(),
                    mount_path: p.settings.credentials_dir.clone(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
        } else {
            // Last, so the runner's own credentials win over a template-wide Secret.
            c.env_from.get_or_insert_with(Vec::new).push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            });
        }
    }
    if volume {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        if volumes.iter().any(|v| v.name == CREDENTIALS_VOLUME) {
            return Err(format!(
                "{origin} already has a volume named {CREDENTIALS_VOLUME}"
            ));
        }
        volumes.push(Volume {
            name: CREDENTIALS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(0o400),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(claim) = &p.settings.volume_claim {
        add_claim(&mut spec, claim, &labels, origin)?;
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(p.runner_name.to_owned()),
            namespace: Some(p.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// Adds the pod's own claim: a generic ephemeral volume (Kubernetes creates the claim
/// `{pod}-runscale-pvc` owned by the pod, and deletes it with the pod), mounted at
/// `claim.mount_path` in every container. The claim carries the pod's labels.
fn add_claim(
    spec: &mut k8s_openapi::api::core::v1::PodSpec,
    claim: &super::config::VolumeClaim,
    labels: &BTreeMap<String, String>,
    origin: &str,
) -> Result<(), String> {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if volumes.iter().any(|v| v.name == CLAIM_VOLUME) {
        return Err(format!(
            "{origin} already has a volume named {CLAIM_VOLUME}"
        ));
    }
    for c in &mut spec.containers {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        if mounts.iter().any(|m| m.mount_path == claim.mount_path) {
            return Err(format!(
                "{origin}: container {} already mounts a volume at {} (the claim's mount path)",
                c.name, claim.mount_path
            ));
        }
        mounts.push(VolumeMount {
            name: CLAIM_VOLUME.to_owned(),
            mount_path: claim.mount_path.clone(),
            ..VolumeMount::default()
        });
    }
    volumes.push(Volume {
        name: CLAIM_VOLUME.to_owned(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(claim.size.clone()),
                        )])),
                        limits: None,
                    }),
                    storage_class_name: claim.storage_class_name.clone(),
                    ..PersistentVolumeClaimSpec::default()
                },
            }),
        }),
        ..Volume::default()
    });
    Ok(())
}

/// A runner Job made from a CronJob's `jobTemplate`, as circleci-runner-autoscaler made
/// them: named after the runner, owned by the CronJob (`controller`), annotated
/// `cronjob.kubernetes.io/instantiate: manual`, its spec the template's (restart policy,
/// back-off limit, TTL) with one pod (`parallelism` and `completions` 1). The pod template is
/// [`render_pod`]'s, keeping the template's restart policy, so the Job's pod carries
/// runscale's labels and annotations and gets the credentials. The Job controller names the
/// pod `{job}-{5 chars}`; a variable the template reads from `metadata.name` (the seed's
/// `LAUNCH_AGENT_RUNNER_NAME`) is read from the `runscale/runner-name` label instead, so it
/// is still the runner's name. `None` when the template is not a CronJob's.
pub(crate) fn render_job(p: &PodParams<'_>) -> Result<Option<Job>, String> {
    let Some(origin) = &p.resolved.job else {
        return Ok(None);
    };
    let pod = render_pod(p)?;
    let mut spec = pod.spec.unwrap_or_default();
    spec.restart_policy.clone_from(
        &p.resolved
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone()),
    );
    let by_label = format!("metadata.labels['{LABEL_RUNNER}']");
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        read_runner_name_from_label(c, &by_label);
    }
    let mut labels = origin.metadata.labels.clone().unwrap_or_default();
    let mut annotations = origin.metadata.annotations.clone().unwrap_or_default();
    for (k, v) in pod.metadata.labels.iter().flatten() {
        if [LABEL_POOL, LABEL_RUNNER, LABEL_MANAGED_BY].contains(&k.as_str()) {
            labels.insert(k.clone(), v.clone());
        }
    }
    for k in [ANN_TEMPLATE_HASH, ANN_TEMPLATE_VERSION] {
        if let Some(v) = pod.metadata.annotations.as_ref().and_then(|a| a.get(k)) {
            annotations.insert(k.to_owned(), v.clone());
        }
    }
    annotations.insert(ANN_INSTANTIATE.0.to_owned(), ANN_INSTANTIATE.1.to_owned());
    let mut job_spec = origin.spec.clone();
    job_spec.parallelism = Some(1);
    job_spec.completions = Some(1);
    job_spec.suspend = None;
    job_spec.selector = None;
    job_spec.manual_selector = None;
    job_spec.template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: pod.metadata.labels,
            annotations: pod.metadata.annotations,
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    };
    Ok(Some(Job {
        metadata: ObjectMeta {
            name: Some(p.runner_name.to_owned()),
            namespace: Some(p.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "CronJob".to_owned(),
                name: origin.name.clone(),
                uid: origin.uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(job_spec),
        status: None,
    }))
}

/// Points the container's variables read from `metadata.name` at `by_label`.
fn read_runner_name_from_label(c: &mut Container, by_label: &str) {
    for e in c.env.iter_mut().flatten() {
        if let Some(field) = e.value_from.as_mut().and_then(|f| f.field_ref.as_mut())
            && field.field_path == "metadata.name"
        {
            *field = ObjectFieldSelector {
                api_version: field.api_version.clone(),
                field_path: by_label.to_owned(),
            };
        }
    }
}

/// Why `key` cannot be a Secret data key, if it cannot.
fn secret_key_problem(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then(|| {
        format!(
            "credential name {key:?} cannot be a Secret key (letters, digits, '-', '_' and '.')"
        )
    })
}

/// What a credentials Secret is owned by: a runner pod, or a runner Job.
pub(crate) struct Owner<'a> {
    /// `v1` or `batch/v1`.
    pub api_version: &'a str,
    /// `Pod` or `Job`.
    pub kind: &'a str,
    /// The owner's metadata, as created (with its uid).
    pub meta: &'a ObjectMeta,
}

impl<'a> Owner<'a> {
    /// A runner pod.
    pub(crate) fn pod(pod: &'a Pod) -> Self {
        Self {
            api_version: "v1",
            kind: "Pod",
            meta: &pod.metadata,
        }
    }

    /// A runner Job.
    pub(crate) fn job(job: &'a Job) -> Self {
        Self {
            api_version: "batch/v1",
            kind: "Job",
            meta: &job.metadata,
        }
    }
}

/// The credentials Secret of a runner, owned by its pod or Job (deleted with it by the
/// garbage collector). Every credential, variable or secret, is one key. Errors name the bad
/// key, never a value.
pub(crate) fn render_secret(
    owner: &Owner<'_>,
    pool: &str,
    credentials: &Credentials,
) -> Result<Secret, String> {
    let name = owner.meta.name.clone().unwrap_or_default();
    let uid = owner
        .meta
        .uid
        .clone()
        .ok_or_else(|| format!("{} {name} has no uid", owner.kind))?;
    let mut data = BTreeMap::new();
    for (key, value) in credentials.expose_all() {
        if let Some(problem) = secret_key_problem(&key) {
            return Err(problem);
        }
        data.insert(key, ByteString(value.into_bytes()));
    }
    let labels = BTreeMap::from([
        (LABEL_POOL.to_owned(), pool.to_owned()),
        (LABEL_RUNNER.to_owned(), name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: owner.meta.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: owner.api_version.to_owned(),
                kind: owner.kind.to_owned(),
                name,
                uid,
                controller: None,
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use secrecy::SecretString;

    use super::*;

    const SECRET: &str = "jit-s3cret-9d2e";

    /// Reads a fixture (YAML) under `tests/fixtures/kube/`.
    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube")
            .join(name);
        let text = std::fs::read_to_string(&path).expect("fixture");
        serde_saphyr::from_str(&text).expect("fixture parses")
    }

    fn credentials() -> Credentials {
        let mut c = Credentials::default();
        c.vars.insert("RUNNER_NAME".into(), "rs-p-abc".into());
        c.secrets
            .insert("RUNNER_TOKEN".into(), SecretString::from(SECRET.to_owned()));
        c
    }

    fn params<'a>(resolved: &'a Resolved, settings: &'a PoolTemplate) -> PodParams<'a> {
        PodParams {
            pool: "small",
            runner_name: "rs-small-0123456789",
            namespace: "circleci-runners",
            template_hash: "h1",
            resolved,
            settings,
        }
    }

    fn env_of(pod: &Pod, container: usize) -> Vec<(&str, Option<&str>)> {
        pod.spec.as_ref().expect("spec").containers[container]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect()
    }

    #[test]
    fn the_seed_cron_job_gives_a_runner_pod() {
        let cron: CronJob = fixture("circleci-cronjob.yaml");
        let resolved = from_cron_job(&cron).expect("suspended CronJob");
        assert_eq!(resolved.origin, "CronJob small-runner");
        assert!(resolved.version.starts_with("cronjob/"));
        let settings = PoolTemplate::cron_job(super::super::config::CronJobRef {
            name: None,
            resource_class: Some("vela-games/k8s-small".into()),
        });
        let pod = render_pod(&params(&resolved, &settings)).expect("pod");
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("rs-small-0123456789"));
        assert_eq!(meta.namespace.as_deref(), Some("circleci-runners"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[LABEL_RC_ORG], "vela-games");
        assert_eq!(labels[LABEL_RC_NAME], "k8s-small");
        assert_eq!(labels[LABEL_POOL], "small");
        assert_eq!(labels[LABEL_RUNNER], "rs-small-0123456789");
        let annotations = meta.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[ANN_TEMPLATE_HASH], "h1");
        assert_eq!(annotations[ANN_TEMPLATE_VERSION], resolved.version);
        assert!(!annotations.contains_key(ANN_DISRUPTION));
        let spec = pod.spec.as_ref().expect("spec");
        // The seed says OnFailure: runscale replaces, never restarts, a runner pod.
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert_eq!(c.name, "ci-small");
        assert_eq!(c.image.as_deref(), Some("circleci-image:latest"));
        // The template's own variables stay (the runner name from metadata.name is the pod
        // name, which is the runner name).
        let env = env_of(&pod, 0);
        assert!(env.contains(&("LAUNCH_AGENT_RUNNER_NAME", None)));
        assert!(env.contains(&("LAUNCH_AGENT_API_AUTH_TOKEN", None)));
        assert!(env.contains(&(ENV_POOL, Some("small"))));
        assert!(env.contains(&(ENV_RUNNER_NAME, Some("rs-small-0123456789"))));
        let from = c.env_from.as_ref().expect("envFrom");
        assert_eq!(
            from.last()
                .and_then(|f| f.secret_ref.as_ref())
                .map(|s| s.name.as_str()),
            Some("rs-small-0123456789-credentials")
        );
        let resources = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(resources["memory"].0, "1Gi");
        // Nothing secret in the pod.
        let text = serde_json::to_string(&pod).expect("json");
        assert!(!text.contains(SECRET));
    }

    #[test]
    fn the_seed_cron_job_gives_a_runner_job_owned_by_the_cron_job() {
        let mut cron: CronJob = fixture("circleci-cronjob.yaml");
        cron.metadata.uid = Some("cron-uid-1".into());
        let resolved = from_cron_job(&cron).expect("suspended CronJob");
        let settings = PoolTemplate::cron_job(super::super::config::CronJobRef {
            name: None,
            resource_class: Some("vela-games/k8s-small".into()),
        });
        let job = render_job(&params(&resolved, &settings))
            .expect("job")
            .expect("a CronJob makes Jobs");
        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some("rs-small-0123456789"));
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("CronJob", "small-runner", "cron-uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let annotations = meta.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[ANN_INSTANTIATE.0], ANN_INSTANTIATE.1);
        assert_eq!(annotations[ANN_TEMPLATE_HASH], "h1");
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[LABEL_POOL], "small");
        assert_eq!(labels[LABEL_RUNNER], "rs-small-0123456789");
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.ttl_seconds_after_finished, Some(21600));
        assert_eq!((spec.parallelism, spec.completions), (Some(1), Some(1)));
        // The pod template: the seed's labels, runscale's identity, the template's restart
        // policy, the credentials; the runner name from the label, not the pod name.
        let pod_meta = spec.template.metadata.as_ref().expect("pod metadata");
        let pod_labels = pod_meta.labels.as_ref().expect("pod labels");
        assert_eq!(pod_labels[LABEL_RC_NAME], "k8s-small");
        assert_eq!(pod_labels[LABEL_POOL], "small");
        assert_eq!(pod_labels[LABEL_RUNNER], "rs-small-0123456789");
        assert!(pod_meta.name.is_none());
        assert_eq!(
            pod_meta.annotations.as_ref().expect("pod annotations")[ANN_TEMPLATE_VERSION],
            resolved.version
        );
        let pod_spec = spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(pod_spec.restart_policy.as_deref(), Some("OnFailure"));
        let c = &pod_spec.containers[0];
        let name_var = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LAUNCH_AGENT_RUNNER_NAME")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(name_var, Some("metadata.labels['runscale/runner-name']"));
        assert!(c.env_from.iter().flatten().any(|f| {
            f.secret_ref
                .as_ref()
                .is_some_and(|s| s.name == "rs-small-0123456789-credentials")
        }));
        // Pods and Jobs from other sources stay bare pods.
        let inline = from_inline(&resolved.template);
        assert!(
            render_job(&params(&inline, &settings))
                .expect("inline")
                .is_none()
        );
        // One runner, one Job, one pod.
        if let Some(s) = cron
            .spec
            .as_mut()
            .and_then(|s| s.job_template.spec.as_mut())
        {
            s.parallelism = Some(2);
        }
        let e = from_cron_job(&cron).expect_err("parallelism 2");
        assert!(e.contains("spec.jobTemplate.spec.parallelism"), "{e}");
    }

    #[test]
    fn a_cron_job_that_is_not_suspended_is_refused() {
        let mut cron: CronJob = fixture("circleci-cronjob.yaml");
        if let Some(s) = cron.spec.as_mut() {
            s.suspend = Some(false);
        }
        let err = from_cron_job(&cron).expect_err("must be refused");
        assert!(err.contains("not suspended"), "{err}");
    }

    #[test]
    fn the_buildscaler_job_gives_a_runner_pod_and_its_uid_is_the_version() {
        let mut job: Job = fixture("buildscaler-job.yaml");
        job.metadata.uid = Some("0b5c7e8a-uid".into());
        // What the API server adds to a Job's template; it must not reach bare pods.
        job.spec
            .as_mut()
            .expect("spec")
            .template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("batch.kubernetes.io/controller-uid".into(), "0b5c".into());
        let resolved = from_job(&job).expect("parallelism 0");
        assert_eq!(resolved.version, "job/0b5c7e8a-uid");
        let mut settings = PoolTemplate::job(super::super::config::JobRef {
            name: None,
            queue: Some("bash".into()),
        });
        settings.credentials = CredentialsDelivery::Volume;
        let pod = render_pod(&params(&resolved, &settings)).expect("pod");
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert!(!labels.contains_key("batch.kubernetes.io/controller-uid"));
        // The Job's own labels, so the seed's `kubectl delete jobs,pods -l
        // app.elotl.co=buildscaler` selects the pods.
        assert_eq!(labels[LABEL_BUILDSCALER.0], LABEL_BUILDSCALER.1);
        assert_eq!(labels[LABEL_BUILDSCALER_QUEUE], "bash");
        assert_eq!(labels[LABEL_POOL], "small");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("buildkite/agent:3"));
        // The template's agent-token Secret stays; credentials come through the volume.
        let from: Vec<&str> = c
            .env_from
            .iter()
            .flatten()
            .filter_map(|f| f.secret_ref.as_ref().map(|s| s.name.as_str()))
            .collect();
        assert_eq!(from, ["buildkite-agent-token"]);
        let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.mount_path, "/run/runscale/credentials");
        assert_eq!(mount.read_only, Some(true));
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("rs-small-0123456789-credentials")
        );
        assert!(
            env_of(&pod, 0).contains(&(ENV_CREDENTIALS_DIR, Some("/run/runscale/credentials")))
        );
        assert!(env_of(&pod, 0).contains(&("BASH_JOB", Some("my_bash_job"))));
    }

    #[test]
    fn a_volume_claim_is_an_ephemeral_volume_mounted_in_every_container() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [
                {"name": "agent", "image": "buildkite/agent:3"},
                {"name": "docker", "image": "docker:dind"}
            ]}
        }))
        .expect("template");
        let resolved = from_inline(&template);
        let mut settings = PoolTemplate::inline(template.clone());
        settings.volume_claim = Some(super::super::config::VolumeClaim {
            size: "10Gi".into(),
            mount_path: "/var/lib/buildkite-agent".into(),
            storage_class_name: Some("standard".into()),
        });
        let pod = render_pod(&params(&resolved, &settings)).expect("pod");
        let spec = pod.spec.as_ref().expect("spec");
        for c in &spec.containers {
            let mounts = c.volume_mounts.as_ref().expect("mounts");
            assert!(
                mounts
                    .iter()
                    .any(|m| m.name == CLAIM_VOLUME && m.mount_path == "/var/lib/buildkite-agent"),
                "{}",
                c.name
            );
        }
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == CLAIM_VOLUME)
            .expect("claim volume");
        let claim = volume
            .ephemeral
            .as_ref()
            .and_then(|e| e.volume_claim_template.as_ref())
            .expect("claim template");
        assert_eq!(claim.spec.storage_class_name.as_deref(), Some("standard"));
        let requests = claim
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests");
        assert_eq!(requests["storage"].0, "10Gi");
        let claim_labels = claim
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(claim_labels[LABEL_POOL], "small");
        // A container that already mounts something there is a clear error.
        let mut taken = template;
        if let Some(s) = taken.spec.as_mut() {
            s.containers[1].volume_mounts = Some(vec![VolumeMount {
                name: "x".into(),
                mount_path: "/var/lib/buildkite-agent".into(),
                ..VolumeMount::default()
            }]);
        }
        let err = render_pod(&params(&from_inline(&taken), &settings)).expect_err("taken");
        assert!(
            err.contains("docker") && err.contains("/var/lib/buildkite-agent"),
            "{err}"
        );
    }

    #[test]
    fn a_job_that_would_run_pods_itself_is_refused() {
        let mut job: Job = fixture("buildscaler-job.yaml");
        job.metadata.uid = Some("u".into());
        if let Some(s) = job.spec.as_mut() {
            s.parallelism = Some(1);
        }
        assert!(
            from_job(&job)
                .expect_err("refused")
                .contains("parallelism: 0")
        );
    }

    #[test]
    fn only_the_credential_containers_get_credentials() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}},
            "spec": {
                "restartPolicy": "Always",
                "containers": [
                    {"name": "sidecar", "image": "proxy:1",
                     "env": [{"name": "RUNSCALE_POOL", "value": "spoofed"}]},
                    {"name": "runner", "image": "runner:1",
                     "env": [{"name": "RUNSCALE_POOL", "value": "spoofed"}]}
                ]
            }
        }))
        .expect("template");
        let resolved = from_inline(&template);
        let mut settings = PoolTemplate::inline(template.clone());
        settings.credentials_containers = vec!["runner".into()];
        let pod = render_pod(&params(&resolved, &settings)).expect("pod");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert!(spec.containers[0].env_from.is_none());
        assert_eq!(env_of(&pod, 0), [(ENV_POOL, Some("spoofed"))]);
        assert!(spec.containers[1].env_from.is_some());
        assert_eq!(
            env_of(&pod, 1)
                .iter()
                .filter(|(n, _)| *n == ENV_POOL)
                .collect::<Vec<_>>(),
            [&(ENV_POOL, Some("small"))]
        );
        // The template asked for protection itself: runscale leaves it alone.
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[ANN_DISRUPTION], "template");
        settings.credentials_containers = vec!["missing".into()];
        assert!(render_pod(&params(&resolved, &settings)).is_err());
    }

    #[test]
    fn the_secret_is_owned_by_the_pod_and_holds_every_credential() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "runner", "image": "runner:1"}]}
        }))
        .expect("template");
        let resolved = from_inline(&template);
        let settings = PoolTemplate::inline(template);
        let mut pod = render_pod(&params(&resolved, &settings)).expect("pod");
        assert!(
            render_secret(&Owner::pod(&pod), "small", &credentials()).is_err(),
            "no uid yet"
        );
        pod.metadata.uid = Some("pod-uid-1".into());
        let secret = render_secret(&Owner::pod(&pod), "small", &credentials()).expect("secret");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("rs-small-0123456789-credentials")
        );
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Pod", "rs-small-0123456789", "pod-uid-1")
        );
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data["RUNNER_TOKEN"].0, SECRET.as_bytes());
        assert_eq!(data["RUNNER_NAME"].0, b"rs-p-abc");
        assert_eq!(secret.immutable, Some(true));
        let mut bad = credentials();
        bad.vars.insert("NOT OK".into(), "v".into());
        let err = render_secret(&Owner::pod(&pod), "small", &bad).expect_err("bad key");
        assert!(err.contains("NOT OK") && !err.contains(SECRET));
    }

    #[test]
    fn inline_versions_follow_the_content() {
        let a: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "r", "image": "r:1"}]}
        }))
        .expect("a");
        let mut b = a.clone();
        if let Some(s) = b.spec.as_mut() {
            s.containers[0].image = Some("r:2".into());
        }
        assert_eq!(from_inline(&a).version, from_inline(&a.clone()).version);
        assert_ne!(from_inline(&a).version, from_inline(&b).version);
    }
}
