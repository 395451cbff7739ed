//! What happens to a body before it is stored: decoding into the k8s-openapi type of its
//! resource (unknown fields are dropped, reported as warnings, or refused under
//! `fieldValidation=Strict`), conversion of `stringData`, and the defaults a real API server
//! fills in (pod spec defaults, the service account, default tolerations, Job selectors and
//! labels, CronJob policies, the secret type, namespace finalizers).

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::resources::ResourceType;
use super::status::{ApiError, Cause};

/// How unknown fields are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum FieldValidation {
    /// Dropped silently.
    Ignore,
    /// Dropped, with a `Warning` header per field (the server default).
    #[default]
    Warn,
    /// Refused with `400 BadRequest`.
    Strict,
}

impl FieldValidation {
    /// Parses the query value; unknown values are a 400.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            ))),
        }
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(v.clone())?;
    serde_json::to_value(typed)
}

/// Paths present (and not null) in `input` but missing from `output`.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `body` as an object of type `rt` and re-encodes it, so only the fields the type
/// knows are kept. Returns the object and the warnings to send.
pub(crate) fn decode(
    rt: &ResourceType,
    body: &Value,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a JSON object of kind {}",
            rt.kind
        )));
    }
    if let Some(v) = body.get("apiVersion").and_then(Value::as_str)
        && v != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    let result = match rt.plural {
        "pods" => round_trip::<Pod>(body),
        "secrets" => round_trip::<Secret>(body),
        "jobs" => round_trip::<Job>(body),
        "cronjobs" => round_trip::<CronJob>(body),
        "leases" => round_trip::<Lease>(body),
        "namespaces" => round_trip::<Namespace>(body),
        "persistentvolumeclaims" => round_trip::<PersistentVolumeClaim>(body),
        _ => Ok(body.clone()),
    };
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let output = result.map_err(|e| {
        let message = e.to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            ApiError::invalid(rt, name, vec![Cause::required(field, "")])
        } else {
            ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {message}",
                rt.kind, rt.version, rt.kind
            ))
        }
    })?;
    let mut unknown = Vec::new();
    unknown_fields(body, &output, "", &mut unknown);
    let warnings = match validation {
        FieldValidation::Ignore => Vec::new(),
        _ if unknown.is_empty() => Vec::new(),
        FieldValidation::Warn => unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect(),
        FieldValidation::Strict => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    };
    Ok((output, warnings))
}

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

/// Defaults of a pod spec, wherever it appears.
fn default_pod_spec(spec: &mut Value) {
    let s = obj(spec);
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        let Some(containers) = s.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let c = obj(c);
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let after_slash = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@')
                && after_slash
                    .split_once(':')
                    .is_none_or(|(_, tag)| tag == "latest");
            let pull = if latest { "Always" } else { "IfNotPresent" };
            set_default(c, "imagePullPolicy", json!(pull));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(obj(p), "protocol", json!("TCP"));
                }
            }
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env {
                    if let Some(field_ref) = e.pointer_mut("/valueFrom/fieldRef") {
                        set_default(obj(field_ref), "apiVersion", json!("v1"));
                    }
                }
            }
        }
    }
    if let Some(volumes) = s.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            if let Some(secret) = v.get_mut("secret") {
                set_default(obj(secret), "defaultMode", json!(0o644));
            }
        }
    }
}

fn pod_template_labels(template: &mut Value) -> &mut Map<String, Value> {
    let meta = obj(template).entry("metadata").or_insert_with(|| json!({}));
    obj(obj(meta).entry("labels").or_insert_with(|| json!({})))
}

/// Fills in the defaults of a new object of type `rt` (whose `metadata.uid` and name are
/// already set).
pub(crate) fn apply_defaults(rt: &ResourceType, object: &mut Value) {
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let root = obj(object);
    match rt.plural {
        "pods" => {
            let spec = root.entry("spec").or_insert_with(|| json!({}));
            default_pod_spec(spec);
            let s = obj(spec);
            set_default(s, "serviceAccountName", json!("default"));
            let sa = s.get("serviceAccountName").cloned().unwrap_or_default();
            set_default(s, "serviceAccount", sa);
            set_default(s, "enableServiceLinks", json!(true));
            set_default(s, "priority", json!(0));
            set_default(s, "preemptionPolicy", json!("PreemptLowerPriority"));
            let tolerations = s.entry("tolerations").or_insert_with(|| json!([]));
            if let Some(list) = tolerations.as_array_mut() {
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    if !list.iter().any(|t| t.get("key") == Some(&json!(key))) {
                        list.push(json!({"key": key, "operator": "Exists",
                            "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
            }
        }
        "jobs" => {
            let spec = obj(root.entry("spec").or_insert_with(|| json!({})));
            default_job_spec(spec);
            let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
            if !manual && !uid.is_empty() {
                spec.insert(
                    "selector".into(),
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                let template = spec.entry("template").or_insert_with(|| json!({}));
                let labels = pod_template_labels(template);
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("controller-uid", &uid),
                    ("job-name", &name),
                ] {
                    labels.insert(k.into(), json!(v));
                }
            }
        }
        "cronjobs" => {
            let spec = obj(root.entry("spec").or_insert_with(|| json!({})));
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(pod) = spec
                .get_mut("jobTemplate")
                .and_then(|j| j.pointer_mut("/spec/template/spec"))
            {
                default_pod_spec(pod);
            }
        }
        "secrets" => {
            set_default(root, "type", json!("Opaque"));
        }
        "namespaces" => {
            let spec = obj(root.entry("spec").or_insert_with(|| json!({})));
            set_default(spec, "finalizers", json!(["kubernetes"]));
            let meta = obj(root.entry("metadata").or_insert_with(|| json!({})));
            let labels = obj(meta.entry("labels").or_insert_with(|| json!({})));
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        _ => {}
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    // Both unset: one pod to completion. Parallelism alone leaves completions unset.
    if spec.get("parallelism").is_none_or(Value::is_null)
        && spec.get("completions").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(pod);
    }
}

/// Defaults that apply on every write, not only on create: `stringData` of a Secret is
/// merged into `data` (base64-encoded) and dropped.
pub(crate) fn normalize_on_write(rt: &ResourceType, object: &mut Value) {
    use base64::Engine;
    if rt.plural != "secrets" {
        return;
    }
    let root = obj(object);
    if let Some(Value::Object(string_data)) = root.remove("stringData") {
        let data = obj(root.entry("data").or_insert_with(|| json!({})));
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// The QoS class of a pod spec: `Guaranteed` when every container's CPU and memory requests
/// equal its limits, `BestEffort` when no container asks for anything, `Burstable` otherwise.
pub(crate) fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
    if containers
        .iter()
        .all(|c| empty(c.pointer("/resources/requests")) && empty(c.pointer("/resources/limits")))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = c.pointer(&format!("/resources/limits/{r}"));
            let request = c.pointer(&format!("/resources/requests/{r}")).or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resources::{JOBS, PODS};

    #[test]
    fn unknown_fields_are_dropped_and_reported() {
        let body = json!({"metadata": {"name": "p", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}});
        let (out, warnings) = decode(&PODS, &body, FieldValidation::Warn).expect("ok");
        assert_eq!(
            warnings,
            vec![
                "unknown field \"metadata.bogus\"",
                "unknown field \"spec.containers[0].colour\""
            ]
        );
        assert!(out.pointer("/spec/containers/0/colour").is_none());
        assert_eq!(out["kind"], "Pod");
        let err = decode(&PODS, &body, FieldValidation::Strict).expect_err("an error");
        assert_eq!(err.code, 400);
    }

    #[test]
    fn type_errors_are_bad_requests() {
        let body = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        assert_eq!(
            decode(&PODS, &body, FieldValidation::Warn)
                .expect_err("an error")
                .code,
            400
        );
        let body = json!({"apiVersion": "v2", "metadata": {"name": "p"}});
        assert_eq!(
            decode(&PODS, &body, FieldValidation::Warn)
                .expect_err("an error")
                .code,
            400
        );
    }

    #[test]
    fn job_gets_a_selector_and_template_labels() {
        let mut job = json!({"metadata": {"name": "j", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
        apply_defaults(&JOBS, &mut job);
        assert_eq!(
            job.pointer("/spec/selector/matchLabels/batch.kubernetes.io~1controller-uid"),
            Some(&json!("u-1"))
        );
        assert_eq!(
            job.pointer("/spec/template/metadata/labels/job-name"),
            Some(&json!("j"))
        );
        assert_eq!(
            job.pointer("/spec/template/spec/containers/0/imagePullPolicy"),
            Some(&json!("IfNotPresent"))
        );
        assert_eq!(job.pointer("/spec/parallelism"), Some(&json!(1)));
    }
}
