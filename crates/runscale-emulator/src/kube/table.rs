//! Server-side printing: `meta.k8s.io/v1` `Table` answers for clients that ask for them in
//! `Accept` (`kubectl get` does), with the columns kubectl shows for each type (pods: NAME
//! READY STATUS RESTARTS AGE, and IP/NODE in `-o wide`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::store::meta_str;

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    /// Nothing.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

/// A request for Table output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableRequest {
    /// `includeObject`.
    pub include: IncludeObject,
}

impl TableRequest {
    /// Table output when `Accept` asks for `as=Table` first and `includeObject` allows it.
    pub fn from_request(accept: Option<&str>, include: Option<&str>) -> Option<Self> {
        let first = accept?.split(',').next()?;
        if !first.split(';').any(|p| p.trim() == "as=Table") {
            return None;
        }
        let include = match include {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        };
        Some(TableRequest { include })
    }

    /// A Table of `items` at list resourceVersion `rv`.
    pub fn render_list(
        &self,
        rt: &ResourceType,
        items: &[&Value],
        rv: u64,
        continue_token: Option<&str>,
    ) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = continue_token {
            meta["continue"] = json!(token);
        }
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "columnDefinitions": columns(rt),
            "rows": items.iter().map(|o| self.row(rt, o)).collect::<Vec<_>>(),
        })
    }

    /// A one-row Table (a get, or one watch event).
    pub fn render_one(&self, rt: &ResourceType, object: &Value) -> Value {
        let rv = meta_str(object, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        self.render_list(rt, &[object], rv, None)
    }

    fn row(&self, rt: &ResourceType, object: &Value) -> Value {
        let mut row = json!({"cells": cells(rt, object, Utc::now())});
        match self.include {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                row["object"] = json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
                });
            }
            IncludeObject::Object => row["object"] = object.clone(),
        }
        row
    }
}

fn column(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    let mut c = json!({"name": name, "type": kind, "format": "", "description": description,
        "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was \
         created.",
    );
    let mut cols = vec![name];
    match rt.plural {
        "pods" => {
            cols.push(column(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ));
            cols.push(column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ));
            cols.push(column("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."));
            cols.push(age);
            cols.push(column("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."));
            cols.push(column(
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ));
            cols.push(column(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ));
            cols.push(column(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ));
        }
        "secrets" => {
            cols.push(column(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ));
            cols.push(column(
                "Data",
                "string",
                0,
                "Data contains the secret data.",
            ));
            cols.push(age);
        }
        "jobs" => {
            cols.push(column("Status", "string", 0, "Status of the job."));
            cols.push(column(
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ));
            cols.push(column(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ));
            cols.push(age);
        }
        "cronjobs" => {
            cols.push(column(
                "Schedule",
                "string",
                0,
                "The schedule in Cron format.",
            ));
            cols.push(column(
                "Timezone",
                "string",
                0,
                "The time zone name for the given schedule.",
            ));
            cols.push(column(
                "Suspend",
                "boolean",
                0,
                "This flag tells the controller to suspend subsequent executions.",
            ));
            cols.push(column(
                "Active",
                "integer",
                0,
                "A list of pointers to currently running jobs.",
            ));
            cols.push(column(
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ));
            cols.push(age);
        }
        "leases" => {
            cols.push(column(
                "Holder",
                "string",
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ));
            cols.push(age);
        }
        "namespaces" => {
            cols.push(column("Status", "string", 0, "The status of the namespace"));
            cols.push(age);
        }
        _ => cols.push(age),
    }
    cols
}

/// kubectl's short human durations: `42s`, `3m12s`, `95m`, `5h4m`, `30h`, `12d`.
pub(crate) fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        format!("{m}m{}s", secs % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else {
        format!("{d}d")
    }
}

fn age(object: &Value, now: DateTime<Utc>, field: &str) -> String {
    meta_str(object, field)
        .or_else(|| object.pointer(field).and_then(Value::as_str))
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration((now - t.with_timezone(&Utc)).num_seconds()),
        )
}

/// The STATUS column of a pod, following kubectl: the phase, overridden by a container's
/// waiting or terminated reason, and `Terminating` once deletion started.
pub(crate) fn pod_status(pod: &Value) -> String {
    let mut reason = pod
        .pointer("/status/reason")
        .or_else(|| pod.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("Pending")
        .to_owned();
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for cs in statuses.iter().rev() {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_owned();
        } else if let Some(t) = cs.pointer("/state/terminated") {
            reason = t
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    )
                });
        }
    }
    let unschedulable = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type") == Some(&json!("PodScheduled"))
                    && c.get("reason") == Some(&json!("Unschedulable"))
            })
        });
    if unschedulable && statuses.is_empty() {
        reason = "Pending".to_owned();
    }
    if meta_str(pod, "deletionTimestamp").is_some() {
        reason = "Terminating".to_owned();
    }
    reason
}

fn cells(rt: &ResourceType, o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(meta_str(o, "name").unwrap_or_default());
    let created = json!(age(o, now, "creationTimestamp"));
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_owned()
    };
    match rt.plural {
        "pods" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                created,
                json!(s("/status/podIP")),
                json!(s("/spec/nodeName")),
                json!(s("/status/nominatedNodeName")),
                json!("<none>"),
            ]
        }
        "secrets" => vec![
            name,
            json!(s("/type")),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
            ),
            created,
        ],
        "jobs" => {
            let succeeded = o
                .pointer("/status/succeeded")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let completions = o.pointer("/spec/completions").and_then(Value::as_i64);
            let status = if o.pointer("/spec/suspend") == Some(&json!(true)) {
                "Suspended"
            } else if completions.is_some_and(|c| succeeded >= c) {
                "Complete"
            } else {
                "Running"
            };
            vec![
                name,
                json!(status),
                json!(format!(
                    "{succeeded}/{}",
                    completions.map_or("1".into(), |c| c.to_string())
                )),
                json!(""),
                created,
            ]
        }
        "cronjobs" => vec![
            name,
            json!(s("/spec/schedule")),
            json!(s("/spec/timeZone")),
            json!(
                o.pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(
                o.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(
                o.pointer("/status/lastScheduleTime")
                    .map_or("<none>".to_owned(), |_| age(
                        o,
                        now,
                        "/status/lastScheduleTime"
                    ))
            ),
            created,
        ],
        "leases" => vec![name, json!(s("/spec/holderIdentity")), created],
        "namespaces" => vec![name, json!(s("/status/phase")), created],
        _ => vec![name, created],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(5 * 86400), "5d");
    }

    #[test]
    fn accept_header_selects_tables() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(TableRequest::from_request(Some(kubectl), None).is_some());
        assert!(TableRequest::from_request(Some("application/json"), None).is_none());
        assert!(TableRequest::from_request(None, None).is_none());
    }

    #[test]
    fn pod_status_column() {
        let pod = json!({"status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ErrImagePull"}}}]}});
        assert_eq!(pod_status(&pod), "ErrImagePull");
        let pod = json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&pod), "Terminating");
    }
}
