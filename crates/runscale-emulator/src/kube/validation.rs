//! Validation of stored objects, as the API server's `422 Invalid` answers: names, labels,
//! annotations, and per kind the rules a client is most likely to trip over (containers,
//! images, restart policies, volume references, secret keys and size, lease durations).
//! Runs on the typed round-trip of the body, after defaulting.

use std::collections::BTreeSet;

use serde_json::Value;

use super::resources::ResourceType;
use super::status::Cause;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (RFC 1123 label).
pub(crate) fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Dot-separated RFC 1123 labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The name part of a qualified name or a label value: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`,
/// at most 63 characters.
pub(crate) fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name`.
fn is_qualified_name(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// An environment variable name: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A secret data key: `[-._a-zA-Z0-9]+`.
fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Checks the name of an object of type `rt`.
pub(crate) fn validate_name(rt: &ResourceType, name: &str) -> Vec<Cause> {
    let ok = if rt.plural == "namespaces" {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if ok {
        Vec::new()
    } else {
        vec![Cause::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
        )]
    }
}

fn validate_metadata(rt: &ResourceType, meta: &Value, causes: &mut Vec<Cause>) {
    if let Some(name) = str_at(meta, "name") {
        causes.extend(validate_name(rt, name));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and \
                     must start and end with an alphanumeric character",
                ));
            }
            let v = v.as_str().unwrap_or_default();
            if !v.is_empty() && !is_qualified_name_part(v) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    v,
                    "a valid label must be an empty string or consist of alphanumeric \
                     characters, '-', '_' or '.', and must start and end with an alphanumeric \
                     character",
                ));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
}

/// Checks a pod spec at `path` (`spec`, `spec.template.spec`, ...). `restart_policies` are
/// the allowed `restartPolicy` values.
fn validate_pod_spec(spec: &Value, path: &str, restart_policies: &[&str], out: &mut Vec<Cause>) {
    let containers = array_at(spec, "containers");
    if containers.is_empty() {
        out.push(Cause::required(format!("{path}.containers"), ""));
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in array_at(spec, "volumes").iter().enumerate() {
        let name = str_at(v, "name").unwrap_or_default();
        let field = format!("{path}.volumes[{i}].name");
        if !is_dns_label(name) {
            out.push(Cause::invalid(field, name, "must be a DNS label"));
        } else if !volumes.insert(name) {
            out.push(Cause::duplicate(field, name));
        }
    }
    let mut names = BTreeSet::new();
    for (list, key) in [
        (array_at(spec, "initContainers"), "initContainers"),
        (containers, "containers"),
    ] {
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}.{key}[{i}]");
            let name = str_at(c, "name").unwrap_or_default();
            if !is_dns_label(name) {
                out.push(Cause::invalid(
                    format!("{at}.name"),
                    name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                     characters or '-'",
                ));
            } else if !names.insert(name) {
                out.push(Cause::duplicate(format!("{at}.name"), name));
            }
            if str_at(c, "image").is_none_or(|s| s.trim().is_empty()) {
                out.push(Cause::required(format!("{at}.image"), ""));
            }
            for (j, e) in array_at(c, "env").iter().enumerate() {
                let n = str_at(e, "name").unwrap_or_default();
                if !is_env_name(n) {
                    out.push(Cause::invalid(
                        format!("{at}.env[{j}].name"),
                        n,
                        "a valid environment variable name must consist of alphabetic \
                         characters, digits, '_', '-', or '.', and must not start with a digit",
                    ));
                }
            }
            for (j, m) in array_at(c, "volumeMounts").iter().enumerate() {
                let n = str_at(m, "name").unwrap_or_default();
                if !volumes.contains(n) {
                    out.push(Cause {
                        reason: "FieldValueNotFound",
                        field: format!("{at}.volumeMounts[{j}].name"),
                        message: format!("Not found: {n:?}"),
                    });
                }
                if str_at(m, "mountPath").is_none_or(str::is_empty) {
                    out.push(Cause::required(
                        format!("{at}.volumeMounts[{j}].mountPath"),
                        "",
                    ));
                }
            }
        }
    }
    let policy = str_at(spec, "restartPolicy").unwrap_or_default();
    if !restart_policies.contains(&policy) {
        out.push(Cause::unsupported(
            format!("{path}.restartPolicy"),
            policy,
            restart_policies,
        ));
    }
    if spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g < 0)
    {
        out.push(Cause::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            "negative",
            "must be greater than or equal to 0",
        ));
    }
}

fn validate_job_spec(spec: &Value, path: &str, out: &mut Vec<Cause>) {
    for key in ["parallelism", "completions", "backoffLimit"] {
        if spec.get(key).and_then(Value::as_i64).is_some_and(|n| n < 0) {
            out.push(Cause::invalid(
                format!("{path}.{key}"),
                &spec[key].to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    match spec.pointer("/template/spec") {
        Some(pod) => validate_pod_spec(
            pod,
            &format!("{path}.template.spec"),
            &["OnFailure", "Never"],
            out,
        ),
        None => out.push(Cause::required(format!("{path}.template.spec"), "")),
    }
}

fn valid_schedule(schedule: &str) -> bool {
    let s = schedule.trim();
    let s = match s.strip_prefix("CRON_TZ=").or_else(|| s.strip_prefix("TZ=")) {
        Some(rest) => rest.split_once(' ').map_or("", |(_, r)| r.trim()),
        None => s,
    };
    if s.starts_with('@') {
        return matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        ) || s.starts_with("@every ");
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        })
}

/// Checks a whole object of type `rt` (already defaulted).
pub(crate) fn validate(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_metadata(rt, obj.get("metadata").unwrap_or(&Value::Null), &mut out);
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    match rt.plural {
        "pods" => {
            if spec.is_null() {
                out.push(Cause::required("spec", ""));
            } else {
                validate_pod_spec(spec, "spec", &["Always", "OnFailure", "Never"], &mut out);
            }
        }
        "jobs" => validate_job_spec(spec, "spec", &mut out),
        "cronjobs" => {
            match str_at(spec, "schedule") {
                None | Some("") => out.push(Cause::required("spec.schedule", "")),
                Some(s) if !valid_schedule(s) => {
                    out.push(Cause::invalid("spec.schedule", s, "unparseable schedule"))
                }
                Some(_) => {}
            }
            match spec.pointer("/jobTemplate/spec") {
                Some(job) => validate_job_spec(job, "spec.jobTemplate.spec", &mut out),
                None => out.push(Cause::required("spec.jobTemplate.spec", "")),
            }
        }
        "secrets" => {
            let mut size = 0;
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    if !is_config_key(k) {
                        out.push(Cause::invalid(
                            format!("data[{k}]"),
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', \
                             '_' or '.'",
                        ));
                    }
                    size += v.as_str().map_or(0, |s| s.len() * 3 / 4);
                }
            }
            if size > 1024 * 1024 {
                out.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "data".into(),
                    message: "Too long: must have at most 1048576 bytes".into(),
                });
            }
        }
        "leases" => {
            if spec
                .get("leaseDurationSeconds")
                .and_then(Value::as_i64)
                .is_some_and(|d| d <= 0)
            {
                out.push(Cause::invalid(
                    "spec.leaseDurationSeconds",
                    &spec["leaseDurationSeconds"].to_string(),
                    "must be greater than 0",
                ));
            }
            if spec
                .get("leaseTransitions")
                .and_then(Value::as_i64)
                .is_some_and(|d| d < 0)
            {
                out.push(Cause::invalid(
                    "spec.leaseTransitions",
                    &spec["leaseTransitions"].to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        _ => {}
    }
    out
}

/// Checks an update of a pod: only images, `activeDeadlineSeconds`, added tolerations and
/// `terminationGracePeriodSeconds` may change in the spec.
pub(crate) fn validate_pod_update(old: &Value, new: &Value) -> Vec<Cause> {
    let strip = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(s) = spec.as_object_mut() {
            for key in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                s.remove(key);
            }
        }
        spec
    };
    if strip(old) == strip(new) {
        Vec::new()
    } else {
        vec![Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`, \
             `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, \
             `spec.tolerations` (only additions to existing tolerations), \
             `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
             previously negative)",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns_label("runner-1"));
        assert!(!is_dns_label("Runner"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(is_qualified_name("runscale/pool"));
        assert!(is_qualified_name("karpenter.sh/do-not-disrupt"));
        assert!(!is_qualified_name("a/b/c"));
    }

    #[test]
    fn pod_without_image_or_containers_is_invalid() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "c"}]}});
        let causes = validate(&super::super::resources::PODS, &pod);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].image");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Never",
            "containers": []}});
        assert_eq!(
            validate(&super::super::resources::PODS, &pod)[0].field,
            "spec.containers"
        );
    }

    #[test]
    fn schedules() {
        assert!(valid_schedule("* * * * *"));
        assert!(valid_schedule("CRON_TZ=UTC 0 5 * * 1-5"));
        assert!(valid_schedule("@hourly"));
        assert!(!valid_schedule("* * *"));
    }
}
