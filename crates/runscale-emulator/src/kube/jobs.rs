//! A minimal Job controller (batch/v1), run in the same lock as every change (and on every
//! resync), after the garbage collector.
//!
//! As the Kubernetes documentation describes it (concepts/workloads/controllers/job):
//!
//! - a Job that is not suspended, not finished and has `parallelism >= 1` gets pods made from
//!   `spec.template` until `min(parallelism, completions - succeeded)` are active. Each pod is
//!   named `{job}-{5 chars}` (`generateName`), carries the template's labels (the API server
//!   put `controller-uid`, `batch.kubernetes.io/controller-uid`, `job-name` and
//!   `batch.kubernetes.io/job-name` there when the Job was created) and a controller owner
//!   reference to the Job (`blockOwnerDeletion`), so the garbage collector deletes it with the
//!   Job. Pods are created through the same admission and validation as an API request; a
//!   pod the API refuses is retried at the next change or resync;
//! - `status.active` (the next sync counts the pods just made), `status.succeeded`, `status.failed` (counted over the Job's pods;
//!   never decreasing for the last two), `status.ready`, `startTime`;
//! - the Job is `Complete` (condition and `completionTime`) once `completions` pods
//!   succeeded (without `completions`: one pod succeeded and none is active), `Failed` with
//!   reason `BackoffLimitExceeded` once more than `backoffLimit` pods failed; its active pods
//!   are then deleted.
//!
//! Not modelled: Jobs with `parallelism: 0` are left alone (no status either: Buildscaler's
//! template Jobs), pod-tracking finalizers and `uncountedTerminatedPods`, the back-off delay
//! between failed pods, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`, indexed
//! completion, pod failure and success policies, and suspending a running Job.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};

use super::resources::{JOBS, PODS};
use super::store::{
    DeleteOptions, Key, Propagation, Store, WriteOptions, is_deleting, meta_str, timestamp,
};

/// Most pods one Job gets in one sync (the rest at the next).
const MAX_CREATES_PER_SYNC: i64 = 100;

/// What the controller does to one Job.
struct Work {
    key: Key,
    /// Pods to create.
    create: i64,
    /// Active pods to delete (the Job failed).
    delete: Vec<String>,
    /// The status to write.
    status: Value,
}

/// Syncs every Job; returns whether anything changed.
pub(crate) fn sync(store: &mut Store) -> bool {
    let mut pods_of: HashMap<String, Vec<&Arc<Value>>> = HashMap::new();
    for (_, pod) in store.all(&PODS, None) {
        if let Some(uid) = controller_uid(pod) {
            pods_of.entry(uid.to_owned()).or_default().push(pod);
        }
    }
    let mut work = Vec::new();
    for (key, job) in store.all(&JOBS, None) {
        let uid = meta_str(job, "uid").unwrap_or_default();
        let pods = pods_of.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(w) = plan(key, job, pods) {
            work.push(w);
        }
    }
    let mut changed = false;
    for w in work {
        changed |= apply(store, w);
    }
    changed
}

/// The uid of the pod's controller, if a Job's.
fn controller_uid(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| {
            r.get("controller") == Some(&Value::Bool(true))
                && r.get("kind").and_then(Value::as_str) == Some("Job")
        })?
        .get("uid")?
        .as_str()
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn has_condition(job: &Value, kind: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

fn plan(key: &Key, job: &Value, pods: &[&Arc<Value>]) -> Option<Work> {
    let parallelism = int(job, "/spec/parallelism").unwrap_or(1);
    if parallelism < 1 || is_deleting(job) {
        return None;
    }
    let completions = int(job, "/spec/completions");
    let backoff_limit = int(job, "/spec/backoffLimit").unwrap_or(6);
    let suspended = job.pointer("/spec/suspend") == Some(&Value::Bool(true));
    let count = |p: &str| pods.iter().filter(|pod| phase(pod) == p).count() as i64;
    let active_pods: Vec<&&Arc<Value>> = pods
        .iter()
        .filter(|p| !is_deleting(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let active = active_pods.len() as i64;
    let ready = active_pods
        .iter()
        .filter(|p| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Ready")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                })
        })
        .count() as i64;
    let succeeded = count("Succeeded").max(int(job, "/status/succeeded").unwrap_or(0));
    let failed = count("Failed").max(int(job, "/status/failed").unwrap_or(0));
    let now = timestamp(Utc::now());
    let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
    let finished = has_condition(job, "Complete") || has_condition(job, "Failed");
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut create = 0;
    let mut delete = Vec::new();
    if !finished {
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => succeeded >= 1 && active == 0,
        };
        if complete {
            conditions.push(json!({"type": "Complete", "status": "True",
                "lastProbeTime": now, "lastTransitionTime": now}));
            status["completionTime"] = json!(now);
        } else if failed > backoff_limit {
            conditions.push(json!({"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastProbeTime": now, "lastTransitionTime": now}));
            delete = active_pods
                .iter()
                .filter_map(|p| meta_str(p, "name").map(str::to_owned))
                .collect();
        } else if !suspended {
            let remaining = match completions {
                Some(c) => c - succeeded,
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            create = (parallelism.min(remaining) - active).clamp(0, MAX_CREATES_PER_SYNC);
        }
    }
    if status.get("startTime").is_none() && !suspended {
        status["startTime"] = json!(now);
    }
    let put = |status: &mut Value, field: &str, n: i64| {
        if n > 0 {
            status[field] = json!(n);
        } else if let Some(m) = status.as_object_mut() {
            m.remove(field);
        }
    };
    put(&mut status, "active", active);
    put(&mut status, "succeeded", succeeded);
    put(&mut status, "failed", failed);
    status["ready"] = json!(ready);
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    Some(Work {
        key: key.clone(),
        create,
        delete,
        status,
    })
}

fn apply(store: &mut Store, w: Work) -> bool {
    let (_, ns, name) = w.key.clone();
    let mut changed = false;
    let Some(job) = store.by_key(&w.key).cloned() else {
        return false;
    };
    let uid = meta_str(&job, "uid").unwrap_or_default().to_owned();
    let template = job
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    for _ in 0..w.create {
        let mut meta = template
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.remove("name");
            m.insert("generateName".into(), json!(format!("{name}-")));
            m.insert(
                "ownerReferences".into(),
                json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                        "controller": true, "blockOwnerDeletion": true}]),
            );
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        });
        match store.create(&PODS, &ns, &pod, WriteOptions::default()) {
            Ok(_) => changed = true,
            Err(e) => {
                tracing::debug!(job = name, error = ?e, "the Job controller cannot create a pod");
                break;
            }
        }
    }
    for pod in w.delete {
        let opts = DeleteOptions {
            propagation: Some(Propagation::Background),
            ..DeleteOptions::default()
        };
        changed |= store.delete(&PODS, &ns, &pod, &opts).is_ok();
    }
    changed |= store
        .write_internal(&JOBS, &w.key, |job| job["status"] = w.status)
        .is_some();
    changed
}
