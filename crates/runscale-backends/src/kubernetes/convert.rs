//! Pure conversion of runner pods (and runner Jobs) into core [`Instance`]s: which pod belongs
//! to which pool, the state its phase and conditions mean, and why a pending pod is stuck.
//!
//! A runner Job's instance is the Job (its id is the Job's name, the runner name); it is seen
//! through the Job's pod, or through the Job itself while it has none.

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use runscale_core::{Instance, InstanceId, InstanceState};

use super::template::{ANN_TEMPLATE_HASH, ANN_TEMPLATE_VERSION, LABEL_POOL, LABEL_RUNNER};

/// Suffix of the template hash reported for a pod whose template source changed since its
/// launch (a recreated Job, an edited CronJob, a deleted source): it no longer equals the
/// pool's hash, so the policy retires the pod once idle.
pub(crate) const OUTDATED: &str = "/outdated";

/// The pool a pod belongs to (its `runscale/pool` label).
pub(crate) fn pool_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_POOL))
        .map(String::as_str)
}

/// The Job controlling the pod (its controller owner reference), if a Job does.
pub(crate) fn job_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "Job")
        .map(|r| r.name.as_str())
}

/// The id of the instance a pod is: its runner Job's name, else the pod's name.
pub(crate) fn instance_id(pod: &Pod) -> Option<&str> {
    job_of(pod).or(pod.metadata.name.as_deref())
}

/// Whether a Job has finished (condition `Complete` or `Failed`).
pub(crate) fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        })
}

/// A runner Job that has no pod (yet, or any more): `stopping` when it is being deleted or
/// finished, else `booting` (the policy's `boot_timeout` retires one whose pod never comes).
pub(crate) fn job_instance(job: &Job, current_version: Option<&str>) -> Option<Instance> {
    let name = job.metadata.name.as_deref()?;
    let state = if job.metadata.deletion_timestamp.is_some() || job_finished(job) {
        InstanceState::Stopping
    } else {
        InstanceState::Booting
    };
    Some(Instance {
        id: InstanceId::new(name),
        state,
        launched_at: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(time)
            .unwrap_or_default(),
        template_hash: template_hash(&job.metadata, current_version),
        runner_names: vec![name.to_owned()],
        reused: None,
    })
}

/// The template hash recorded on a pod or Job, suffixed [`OUTDATED`] when its template
/// version is not `current_version`.
fn template_hash(meta: &ObjectMeta, current_version: Option<&str>) -> String {
    let mut hash = annotation(meta, ANN_TEMPLATE_HASH)
        .unwrap_or_default()
        .to_owned();
    if let Some(current) = current_version
        && annotation(meta, ANN_TEMPLATE_VERSION) != Some(current)
    {
        hash.push_str(OUTDATED);
    }
    hash
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The pod's phase (`Pending` when not reported yet).
pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod has ended (its containers exited and will not restart).
pub(crate) fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The instance state of a pod: being deleted or finished → `stopping`; `Running` (and
/// `Unknown`, a node out of touch whose runner may still work) → `running`; otherwise
/// `booting`.
pub(crate) fn state(pod: &Pod) -> InstanceState {
    if pod.metadata.deletion_timestamp.is_some() || is_finished(pod) {
        InstanceState::Stopping
    } else if matches!(phase(pod), "Running" | "Unknown") {
        InstanceState::Running
    } else {
        InstanceState::Booting
    }
}

/// A Kubernetes timestamp as a chrono one.
pub(crate) fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    let ts = t.0;
    DateTime::from_timestamp(
        ts.as_second(),
        u32::try_from(ts.subsec_nanosecond()).unwrap_or(0),
    )
    .unwrap_or_default()
}

/// The instance a runner pod is. `current_version` is the version of the pool's template
/// source now (`None` when unknown: the pod is then taken as current); a pod launched from
/// another version is reported with an [`OUTDATED`] template hash.
pub(crate) fn instance(pod: &Pod, current_version: Option<&str>) -> Option<Instance> {
    let name = instance_id(pod)?;
    let runner = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_RUNNER))
        .cloned()
        .unwrap_or_else(|| name.to_owned());
    let template_hash = template_hash(&pod.metadata, current_version);
    Some(Instance {
        id: InstanceId::new(name),
        state: state(pod),
        launched_at: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(time)
            .unwrap_or_default(),
        template_hash,
        runner_names: vec![runner],
        reused: None,
    })
}

/// Why a pod has not started, from its conditions and container states: the scheduler's
/// verdict (`Unschedulable: 0/3 nodes are available: ...`) or a container waiting on
/// something (`ImagePullBackOff: ...`, `CreateContainerConfigError: ...`). `None` when
/// nothing says.
pub(crate) fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        return Some(join(
            c.reason.as_deref(),
            c.message.as_deref(),
            "not scheduled",
        ));
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|s| s.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| r != "ContainerCreating")
        })
        .map(|w| join(w.reason.as_deref(), w.message.as_deref(), "waiting"))
}

fn join(reason: Option<&str>, message: Option<&str>, fallback: &str) -> String {
    match (reason, message) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => fallback.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn runner_pod(phase: &str) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "rs-p-0123456789",
                "creationTimestamp": "2026-11-23T12:00:00Z",
                "labels": {"runscale/pool": "p", "runscale/runner-name": "rs-p-0123456789"},
                "annotations": {
                    "runscale/template-hash": "h1",
                    "runscale/template-version": "job/uid-1"
                }
            },
            "status": {"phase": phase}
        }))
    }

    #[test]
    fn phases_map_to_states() {
        for (phase, want) in [
            ("Pending", InstanceState::Booting),
            ("Running", InstanceState::Running),
            ("Unknown", InstanceState::Running),
            ("Succeeded", InstanceState::Stopping),
            ("Failed", InstanceState::Stopping),
        ] {
            assert_eq!(state(&runner_pod(phase)), want, "{phase}");
        }
        let mut p = pod(serde_json::json!({"metadata": {"name": "x"}}));
        assert_eq!(state(&p), InstanceState::Booting, "no status yet");
        p = runner_pod("Running");
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        assert_eq!(state(&p), InstanceState::Stopping, "being deleted");
    }

    #[test]
    fn a_pod_becomes_an_instance_with_its_identity() {
        let p = runner_pod("Running");
        assert_eq!(pool_of(&p), Some("p"));
        let i = instance(&p, Some("job/uid-1")).expect("instance");
        assert_eq!(i.id.as_str(), "rs-p-0123456789");
        assert_eq!(i.runner_names, ["rs-p-0123456789"]);
        assert_eq!(i.template_hash, "h1");
        assert_eq!(i.launched_at.to_rfc3339(), "2026-11-23T12:00:00+00:00");
        assert_eq!(i.state, InstanceState::Running);
        // Unknown current version: taken as current.
        assert_eq!(instance(&p, None).expect("instance").template_hash, "h1");
        // The Job was recreated: the pod is outdated.
        assert_eq!(
            instance(&p, Some("job/uid-2"))
                .expect("instance")
                .template_hash,
            "h1/outdated"
        );
    }

    #[test]
    fn the_scheduler_verdict_explains_a_pending_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "x"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."
            }]}
        }));
        assert_eq!(
            pending_reason(&p).as_deref(),
            Some("Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
        );
        let p = pod(serde_json::json!({
            "metadata": {"name": "x"},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"}
            ], "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}
            }]}
        }));
        assert_eq!(
            pending_reason(&p).as_deref(),
            Some("ImagePullBackOff: no such image")
        );
        assert_eq!(pending_reason(&runner_pod("Pending")), None);
    }
}
