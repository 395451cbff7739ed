//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}` and
//! `/apis/{group}/{version}`, in the legacy (unaggregated) format, which kubectl and kube-rs
//! fall back to when the server does not answer the aggregated `apidiscovery.k8s.io` kind;
//! and the OpenAPI v3 index and per-group-version documents, with operations and their
//! parameters but no schemas (kubectl reads them to see that the server validates fields).

use serde_json::{Value, json};

use super::resources::{self, GROUPS, ResourceType};

/// The Kubernetes version the fake claims (the k8s-openapi feature it is built with).
pub(crate) const GIT_VERSION: &str = "v1.33.0+runscale";

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`.
pub(crate) fn api_groups() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|(n, v)| group(n, v)).collect::<Vec<_>>(),
    })
}

/// `/apis/{group}`, if served.
pub(crate) fn api_group(name: &str) -> Option<Value> {
    GROUPS.iter().find(|(n, _)| *n == name).map(|(n, v)| {
        let mut g = group(n, v);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

fn resource_entries(rt: &ResourceType) -> Vec<Value> {
    let mut main = json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": rt.verbs(),
    });
    if !rt.short_names.is_empty() {
        main["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        main["categories"] = json!(rt.categories);
    }
    let mut entries = vec![main];
    for sub in rt.subresources {
        let verbs: &[&str] = if *sub == "log" {
            &["get"]
        } else {
            &["get", "patch", "update"]
        };
        entries.push(json!({
            "name": format!("{}/{sub}", rt.plural),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": if *sub == "log" { "Pod" } else { rt.kind },
            "verbs": verbs,
        }));
    }
    entries
}

/// `/api/v1` or `/apis/{group}/{version}`, if served.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = resources::in_group_version(group, version)
        .flat_map(resource_entries)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// The hash part of OpenAPI v3 URLs (clients cache documents by it).
const OPENAPI_HASH: &str = "8a1e5c0d2b7f4e6a9c3d1f0b5e7a2c4d6f8b0a1c3e5d7f9b2a4c6e8d0f1b3a5c";

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the per-group-version documents served.
pub(crate) fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    for (group, version) in std::iter::once(&("", "v1")).chain(GROUPS.iter()) {
        let path = gv_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={OPENAPI_HASH}")}),
        );
    }
    json!({ "paths": paths })
}

fn operation(rt: &ResourceType, action: &str, params: &[&str]) -> Value {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    json!({
        "description": format!("{action} the specified {}", rt.kind),
        "operationId": format!("{action}{}", rt.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    })
}

/// `/openapi/v3/{api/v1 | apis/group/version}`: the operations of each resource, with their
/// query parameters (kubectl looks for `fieldValidation` on PATCH to decide that the server
/// validates fields itself). Schemas are not included.
pub(crate) fn openapi_v3_document(group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = resources::in_group_version(group, version).collect();
    if types.is_empty() {
        return None;
    }
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let mut paths = serde_json::Map::new();
    for rt in types {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(rt, "list", &["labelSelector", "fieldSelector", "limit",
                    "continue", "resourceVersion", "watch", "timeoutSeconds"]),
                "post": operation(rt, "post", &write),
                "delete": operation(rt, "deletecollection", &["labelSelector", "fieldSelector"]),
            }),
        );
        let mut patch_params = write.to_vec();
        patch_params.push("force");
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(rt, "get", &["pretty"]),
                "put": operation(rt, "put", &write),
                "patch": operation(rt, "patch", &patch_params),
                "delete": operation(rt, "delete", &["dryRun", "gracePeriodSeconds",
                    "propagationPolicy"]),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
