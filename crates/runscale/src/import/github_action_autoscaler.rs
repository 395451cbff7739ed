//! `runscale import github-action-autoscaler`: devjoes/github-runner-autoscaler's
//! `ScaledActionRunner` custom resources (`runner.devjoes.com/v1alpha1`) → a runscale
//! configuration.
//!
//! Input: YAML as `kubectl get scaledactionrunners -A -o yaml` prints it (a `List` with
//! `items`), `---`-separated documents (the files `add-runner` writes, which also hold the
//! Secrets), or both. Documents of other kinds are skipped with a note; Secrets are never
//! read beyond their kind and name.
//!
//! Output: one `github` provider whose `repositories` are every resource's `owner/repo`
//! (repository-level runners in each, one rate budget), one `kubernetes` backend per
//! namespace (the runner pods stay where the resource's service account, node selectors and
//! secrets are), and one pool per resource: its repository, its runner labels, `minRunners` →
//! `min_idle`, `maxRunners` → `max`, and a pod template built like the seed's StatefulSet
//! (image, env, resources, annotations, node selector, tolerations, service account, work
//! volume, Docker socket). Runners are ephemeral and registered just in time, so the
//! pre-registered `runnerSecrets` are not used. Fields without an equivalent become a comment
//! above the pool and a warning.
//!
//! Pure: text in, text and warnings out; the caller reads and writes files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::config::{MAX_ADAPTER_NAME, MAX_POOL_NAME};

/// The seed's API group and version.
pub const API_VERSION: &str = "runner.devjoes.com/v1alpha1";
/// The seed's kind.
pub const KIND: &str = "ScaledActionRunner";
/// The seed's default runner image (`operator/api/v1alpha1`, `DefaultImage`).
pub const DEFAULT_IMAGE: &str = "myoung34/github-runner:latest";
/// Where the seed's runner image keeps the runner and its work directory.
const RUNNER_DIR: &str = "/actions-runner";
/// Largest input accepted.
pub const MAX_INPUT: usize = 16 << 20;
/// Most resources accepted.
pub const MAX_RESOURCES: usize = 10_000;

/// Settings of the import that are not in the resources.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Namespace of resources whose metadata names none (files applied with `-n`).
    pub namespace: String,
    /// GitHub API URL (GitHub Enterprise Server, or an emulator); default github.com.
    pub api_url: Option<String>,
    /// Secret reference of the token (`{env: NAME}` or `{file: PATH}`).
    pub token: Value,
    /// Secret reference of the webhook secret, if webhooks are used.
    pub webhook_secret: Option<Value>,
    /// Kubeconfig file of the backends; default: in-cluster.
    pub kubeconfig: Option<String>,
    /// Kubeconfig context of the backends.
    pub context: Option<String>,
}

/// What the import produced.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The configuration file's text (YAML with comments).
    pub text: String,
    /// One line per field without an equivalent (also in the text as comments).
    pub warnings: Vec<String>,
    /// Resources imported.
    pub resources: usize,
}

/// Bad input: names the resource (or document) and the field.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct ImportError {
    /// `ScaledActionRunner ns/name spec.field`, or `document 3`.
    pub what: String,
    /// What is wrong.
    pub message: String,
}

fn err(what: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError {
        what: what.into(),
        message: message.into(),
    }
}

/// One resource as read.
struct Resource {
    namespace: String,
    name: String,
    labels: Map<String, Value>,
    spec: Map<String, Value>,
}

impl Resource {
    fn field(&self, path: &str) -> String {
        format!("ScaledActionRunner {}/{} {path}", self.namespace, self.name)
    }
}

/// The `ScaledActionRunner` resources of `text`, skipping other kinds (noted in `notes`).
fn resources(
    text: &str,
    default_ns: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<Resource>, ImportError> {
    if text.len() > MAX_INPUT {
        return Err(err("input", format!("larger than {MAX_INPUT} bytes")));
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| err("input", format!("not valid YAML: {e}")))?;
    let mut objects: Vec<(String, Value)> = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let where_ = format!("document {}", i + 1);
        match doc {
            Value::Null => {}
            Value::Object(ref o)
                if o.get("items").is_some()
                    && o.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List")) =>
            {
                let Some(items) = o.get("items").and_then(Value::as_array) else {
                    return Err(err(where_, "items: must be a list"));
                };
                for (j, item) in items.iter().enumerate() {
                    objects.push((format!("{where_} items[{j}]"), item.clone()));
                }
            }
            Value::Object(_) => objects.push((where_, doc)),
            _ => return Err(err(where_, "must be a mapping (a Kubernetes object)")),
        }
        if objects.len() > MAX_RESOURCES {
            return Err(err("input", format!("more than {MAX_RESOURCES} objects")));
        }
    }
    let mut out = Vec::new();
    for (where_, obj) in objects {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let meta = obj.get("metadata").and_then(Value::as_object);
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if kind != KIND {
            let what = if kind.is_empty() {
                "an object without kind"
            } else {
                kind
            };
            notes.push(format!(
                "{where_}: skipped {what} {name:?} (only {KIND} resources are imported)"
            ));
            continue;
        }
        let api = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api != API_VERSION {
            return Err(err(
                format!("{where_} {KIND} {name:?} apiVersion"),
                format!("is {api:?}; only {API_VERSION} is known"),
            ));
        }
        if name.is_empty() {
            return Err(err(format!("{where_} {KIND} metadata.name"), "missing"));
        }
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(default_ns)
            .to_owned();
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let spec = match obj.get("spec") {
            Some(Value::Object(s)) => s.clone(),
            _ => {
                return Err(err(
                    format!("{KIND} {namespace}/{name} spec"),
                    "missing or not a mapping",
                ));
            }
        };
        out.push(Resource {
            namespace,
            name,
            labels,
            spec,
        });
    }
    Ok(out)
}

/// A string field, if present.
fn string(
    r: &Resource,
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, ImportError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err(r.field(path), "must be a string")),
    }
}

/// An integer field, if present.
fn integer(r: &Resource, path: &str, key: &str) -> Result<Option<i64>, ImportError> {
    match r.spec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| err(r.field(path), "must be an integer")),
    }
}

/// A login or repository name as GitHub allows them.
fn github_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `s` as a runscale name: lower case, runs of other characters as one '-', at most `max`.
fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "runner".to_owned()
    } else {
        out
    }
}

/// A name not yet in `taken` made from `base`, within `max` characters.
fn unique(base: String, max: usize, taken: &mut BTreeSet<String>) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        let suffix = format!("-{n}");
        let stem: String = base.chars().take(max - suffix.len()).collect();
        name = format!("{}{suffix}", stem.trim_end_matches('-'));
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// Kubernetes quantities as strings (`cpu: 1` in YAML is a number).
fn quantities(
    r: &Resource,
    runner: &Map<String, Value>,
    key: &str,
    default: Value,
) -> Result<Value, ImportError> {
    let Some(v) = runner.get(key).filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let Some(map) = v.as_object() else {
        return Err(err(
            r.field(&format!("spec.runner.{key}")),
            "must be a mapping of resource names to quantities",
        ));
    };
    let mut out = Map::new();
    for (k, q) in map {
        let text = match q {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(err(
                    r.field(&format!("spec.runner.{key}.{k}")),
                    "must be a quantity such as 500m or 2Gi",
                ));
            }
        };
        out.insert(k.clone(), Value::String(text));
    }
    Ok(Value::Object(out))
}

/// One pool (and its comments and warnings) from one resource.
struct Pool {
    comments: Vec<String>,
    value: Value,
    namespace: String,
    repository: String,
    polling_interval: Option<i64>,
}

/// Records a field without an equivalent: a comment above the pool and a warning.
fn unmapped(
    r: &Resource,
    comments: &mut Vec<String>,
    warnings: &mut Vec<String>,
    field: &str,
    why: &str,
) {
    comments.push(format!("{field}: no equivalent; {why}"));
    warnings.push(format!(
        "{}: no equivalent in runscale; {why}",
        r.field(field)
    ));
}

fn pool_of(r: &Resource, name: &str, warnings: &mut Vec<String>) -> Result<Pool, ImportError> {
    let mut comments = vec![format!("ScaledActionRunner {}/{}", r.namespace, r.name)];
    let mut unmapped = |comments: &mut Vec<String>, field: &str, why: &str| {
        unmapped(r, comments, warnings, field, why);
    };
    let owner = string(r, &r.spec, "spec.owner", "owner")?
        .ok_or_else(|| err(r.field("spec.owner"), "missing"))?;
    let repo = string(r, &r.spec, "spec.repo", "repo")?
        .ok_or_else(|| err(r.field("spec.repo"), "missing"))?;
    if !github_name(&owner) {
        return Err(err(
            r.field("spec.owner"),
            format!("{owner:?} is not a GitHub login"),
        ));
    }
    if !github_name(&repo) {
        return Err(err(
            r.field("spec.repo"),
            format!("{repo:?} is not a repository name"),
        ));
    }
    let max = integer(r, "spec.maxRunners", "maxRunners")?
        .ok_or_else(|| err(r.field("spec.maxRunners"), "missing"))?;
    if !(1..=10_000).contains(&max) {
        return Err(err(
            r.field("spec.maxRunners"),
            format!("{max} is not from 1 to 10000"),
        ));
    }
    let min = integer(r, "spec.minRunners", "minRunners")?.unwrap_or(0);
    if min < 0 || min > max {
        return Err(err(
            r.field("spec.minRunners"),
            format!("{min} is not from 0 to maxRunners ({max})"),
        ));
    }
    let runner = match r.spec.get("runner") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(err(r.field("spec.runner"), "must be a mapping")),
    };

    // Demand and scaling.
    if let Some(v) = r.spec.get("scaleFactor").filter(|v| !v.is_null()) {
        let text = v
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        if text.trim().parse::<f64>().is_err() {
            return Err(err(
                r.field("spec.scaleFactor"),
                format!("{text:?} is not a number"),
            ));
        }
        unmapped(
            &mut comments,
            "spec.scaleFactor",
            "runscale starts one runner per queued job (up to max), not a logistic curve of queued runs",
        );
    }
    let selector = string(r, &r.spec, "spec.metricsSelector", "metricsSelector")?.or(string(
        r,
        &r.spec,
        "spec.selector",
        "selector",
    )?);
    if selector.is_some() {
        unmapped(
            &mut comments,
            "spec.metricsSelector",
            "jobs are matched by their runs-on labels against the pool's labels (from runner.runnerLabels)",
        );
    }
    for field in ["forceScaleUpWindow", "forceScaleUpFrequency"] {
        if r.spec.get(field).is_some_and(|v| !v.is_null()) {
            unmapped(
                &mut comments,
                &format!("spec.{field}"),
                "runners are registered just in time, so no registration expires and none is kept alive",
            );
        }
    }
    let mut idle_timeout = None;
    let mut polling_interval = None;
    if let Some(scaling) = r.spec.get("scaling").filter(|v| !v.is_null()) {
        let Some(s) = scaling.as_object() else {
            return Err(err(r.field("spec.scaling"), "must be a mapping"));
        };
        if let Some(c) = s.get("cooldownPeriod").filter(|v| !v.is_null()) {
            let secs = c
                .as_i64()
                .filter(|n| (1..=7 * 24 * 3600).contains(n))
                .ok_or_else(|| {
                    err(
                        r.field("spec.scaling.cooldownPeriod"),
                        "must be seconds from 1 to 604800",
                    )
                })?;
            idle_timeout = Some(format!("{secs}s"));
        }
        if let Some(p) = s.get("pollingInterval").filter(|v| !v.is_null()) {
            let secs = p
                .as_i64()
                .filter(|n| (1..=3600).contains(n))
                .ok_or_else(|| {
                    err(
                        r.field("spec.scaling.pollingInterval"),
                        "must be seconds from 1 to 3600",
                    )
                })?;
            polling_interval = Some(secs);
            comments.push(format!(
                "spec.scaling.pollingInterval {secs}: runscale's interval is global (the shortest of all resources)"
            ));
        }
        if s.get("behavior").is_some_and(|v| !v.is_null()) {
            unmapped(
                &mut comments,
                "spec.scaling.behavior",
                "scale-in is per runner: an idle runner goes after idle_timeout, a busy one never",
            );
        }
    }

    // Registration: just in time instead of pre-registered identities.
    if r.spec
        .get("runnerSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        comments.push(
            "spec.runnerSecrets: not used: each runner is registered just in time for the \
             repository (ephemeral), so the pre-registered identities can be deleted"
                .to_owned(),
        );
    }
    if let Some(t) = string(r, &r.spec, "spec.githubTokenSecret", "githubTokenSecret")? {
        comments.push(format!(
            "spec.githubTokenSecret {t}: replaced by the provider's one token, which must be \
             allowed to register runners (Administration: write on the repository)"
        ));
    }

    // The pod, as the seed's StatefulSet builds it.
    let image = string(r, &runner, "spec.runner.image", "image")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    let labels_text = string(r, &runner, "spec.runner.runnerLabels", "runnerLabels")?
        .or(string(r, &runner, "spec.runner.labels", "labels")?)
        .unwrap_or_default();
    let mut labels: Vec<String> = Vec::new();
    for l in labels_text
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !labels.iter().any(|o: &String| o.eq_ignore_ascii_case(l)) {
            labels.push(l.to_owned());
        }
    }
    if labels.is_empty() {
        labels.push("self-hosted".to_owned());
    }
    let mut env = vec![json!({"name": "RUNNER_WORKDIR", "value": format!("{RUNNER_DIR}/_work")})];
    match runner.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, e) in items.iter().enumerate() {
                let ok = e
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                if !ok {
                    return Err(err(
                        r.field(&format!("spec.runner.env[{i}].name")),
                        "missing",
                    ));
                }
                env.retain(|o| o.get("name") != e.get("name"));
                env.push(e.clone());
            }
        }
        Some(_) => {
            return Err(err(
                r.field("spec.runner.env"),
                "must be a list of variables",
            ));
        }
    }
    let resources = json!({
        "requests": quantities(r, &runner, "requests", json!({"cpu": "200m", "memory": "200Mi"}))?,
        "limits": quantities(r, &runner, "limits", json!({"cpu": "2000m", "memory": "2000Mi"}))?,
    });
    let mut volumes = Vec::new();
    let mut mounts = vec![json!({"name": "workdir", "mountPath": format!("{RUNNER_DIR}/_work")})];
    match runner
        .get("workVolumeClaimTemplate")
        .filter(|v| !v.is_null())
    {
        Some(Value::Object(claim)) => {
            volumes.push(
                json!({"name": "workdir", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}),
            );
            comments.push(
                "spec.runner.workVolumeClaimTemplate: a claim per runner pod (generic ephemeral \
                 volume), deleted with the pod: each runner takes one job"
                    .to_owned(),
            );
        }
        Some(_) => {
            return Err(err(
                r.field("spec.runner.workVolumeClaimTemplate"),
                "must be a PersistentVolumeClaim spec",
            ));
        }
        None => volumes.push(json!({"name": "workdir", "emptyDir": {}})),
    }
    let docker = match runner.get("mountDockerSock") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(err(
                r.field("spec.runner.mountDockerSock"),
                "must be true or false",
            ));
        }
    };
    if docker {
        volumes.push(
            json!({"name": "dockersock", "hostPath": {"path": "/var/run/docker.sock", "type": ""}}),
        );
        mounts.push(json!({"name": "dockersock", "mountPath": "/var/run/docker.sock"}));
    }
    let container = json!({
        "name": "runner",
        "image": image,
        "command": ["/bin/bash", "-c", format!("exec {RUNNER_DIR}/run.sh --jitconfig \"$GITHUB_JIT_CONFIG\"")],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
    });
    let mut spec = Map::new();
    spec.insert("containers".into(), json!([container]));
    spec.insert("volumes".into(), Value::Array(volumes));
    let sa = string(
        r,
        &runner,
        "spec.runner.serviceAccountName",
        "serviceAccountName",
    )?
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "default".to_owned());
    spec.insert("serviceAccountName".into(), Value::String(sa));
    for (key, kind) in [("nodeSelector", "mapping"), ("tolerations", "list")] {
        match runner.get(key) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Object(_)) if kind == "mapping" => {
                spec.insert(key.into(), v.clone());
            }
            Some(v @ Value::Array(_)) if kind == "list" => {
                spec.insert(key.into(), v.clone());
            }
            Some(_) => {
                return Err(err(
                    r.field(&format!("spec.runner.{key}")),
                    format!("must be a {kind}"),
                ));
            }
        }
    }
    let mut pod_labels = r.labels.clone();
    pod_labels.insert("app".into(), Value::String("action-runner".into()));
    let mut metadata = Map::new();
    metadata.insert("labels".into(), Value::Object(pod_labels));
    match runner.get("annotations") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            metadata.insert("annotations".into(), v.clone());
        }
        Some(_) => return Err(err(r.field("spec.runner.annotations"), "must be a mapping")),
    }
    if string(r, &runner, "spec.runner.patch", "patch")?.is_some_and(|p| !p.trim().is_empty()) {
        unmapped(
            &mut comments,
            "spec.runner.patch",
            "a JSON patch of the StatefulSet: apply its pod-template changes to this pool's template by hand",
        );
    }

    let repository = format!("{owner}/{repo}");
    let mut pool = Map::new();
    pool.insert("name".into(), Value::String(name.to_owned()));
    pool.insert("provider".into(), Value::String("github".into()));
    pool.insert("backend".into(), Value::String(String::new()));
    pool.insert(
        "selector".into(),
        json!({"labels": labels, "repository": repository}),
    );
    pool.insert(
        "template".into(),
        json!({"credentials": "env", "pod": {"metadata": metadata, "spec": spec}}),
    );
    pool.insert("min_idle".into(), json!(min));
    pool.insert("max".into(), json!(max));
    if let Some(t) = idle_timeout {
        pool.insert("idle_timeout".into(), Value::String(t));
    }
    pool.insert("ephemeral".into(), Value::Bool(true));
    Ok(Pool {
        comments,
        value: Value::Object(pool),
        namespace: r.namespace.clone(),
        repository,
        polling_interval,
    })
}

/// `value` as YAML, every line indented by `indent` spaces.
fn yaml(value: &Value, indent: usize) -> Result<String, ImportError> {
    let text = serde_saphyr::to_string(value).map_err(|e| err("output", e.to_string()))?;
    let pad = " ".repeat(indent);
    Ok(text.lines().map(|l| format!("{pad}{l}\n")).collect())
}

/// Imports the resources in `text`.
pub fn import(text: &str, options: &Options) -> Result<Imported, ImportError> {
    let mut notes = Vec::new();
    let found = resources(text, &options.namespace, &mut notes)?;
    if found.is_empty() {
        return Err(err(
            "input",
            format!("no {KIND} resource ({API_VERSION}) found"),
        ));
    }
    let mut warnings = Vec::new();
    let mut pool_names = BTreeSet::new();
    let mut pools = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &found {
        if !seen.insert((r.namespace.clone(), r.name.clone())) {
            return Err(err(
                format!("ScaledActionRunner {}/{}", r.namespace, r.name),
                "listed twice",
            ));
        }
        let base = if found.iter().filter(|o| o.name == r.name).count() > 1 {
            format!("{}-{}", r.namespace, r.name)
        } else {
            r.name.clone()
        };
        let name = unique(
            sanitize(&base, MAX_POOL_NAME),
            MAX_POOL_NAME,
            &mut pool_names,
        );
        pools.push(pool_of(r, &name, &mut warnings)?);
    }
    // One backend per namespace.
    let mut backends: BTreeMap<String, String> = BTreeMap::new();
    let mut backend_names = BTreeSet::new();
    for p in &pools {
        if !backends.contains_key(&p.namespace) {
            let name = unique(
                sanitize(&format!("k8s-{}", p.namespace), MAX_ADAPTER_NAME),
                MAX_ADAPTER_NAME,
                &mut backend_names,
            );
            backends.insert(p.namespace.clone(), name);
        }
    }
    let mut repositories: Vec<String> = Vec::new();
    for p in &mut pools {
        if let Some(obj) = p.value.as_object_mut() {
            obj.insert(
                "backend".into(),
                Value::String(backends.get(&p.namespace).cloned().unwrap_or_default()),
            );
        }
        if !repositories
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&p.repository))
        {
            repositories.push(p.repository.clone());
        }
    }

    let mut provider = Map::new();
    provider.insert("name".into(), Value::String("github".into()));
    provider.insert("type".into(), Value::String("github".into()));
    if let Some(url) = &options.api_url {
        provider.insert("api_url".into(), Value::String(url.clone()));
    }
    provider.insert("repositories".into(), json!(repositories));
    provider.insert("auth".into(), json!({"token": options.token}));
    if let Some(w) = &options.webhook_secret {
        provider.insert("webhook_secret".into(), w.clone());
    }
    let backend_values: Vec<Value> = backends
        .iter()
        .map(|(ns, name)| {
            let mut b = Map::new();
            b.insert("name".into(), Value::String(name.clone()));
            b.insert("type".into(), Value::String("kubernetes".into()));
            b.insert("namespace".into(), Value::String(ns.clone()));
            if let Some(k) = &options.kubeconfig {
                b.insert("kubeconfig".into(), Value::String(k.clone()));
            }
            if let Some(c) = &options.context {
                b.insert("context".into(), Value::String(c.clone()));
            }
            Value::Object(b)
        })
        .collect();
    let interval = pools
        .iter()
        .filter_map(|p| p.polling_interval)
        .min()
        .unwrap_or(30)
        .max(5);

    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Imported by `runscale import github-action-autoscaler` from {} {KIND} resource(s).",
        found.len()
    );
    text.push_str(
        "# Runners are ephemeral and registered just in time at each pool's repository; the\n\
         # token must be allowed to register runners there. Busy runners are never removed.\n",
    );
    for n in &notes {
        let _ = writeln!(text, "# {n}");
    }
    let _ = writeln!(text, "interval: {interval}s");
    text.push_str("providers:\n");
    text.push_str(&yaml(&Value::Array(vec![Value::Object(provider)]), 2)?);
    text.push_str("backends:\n");
    text.push_str(&yaml(&Value::Array(backend_values), 2)?);
    text.push_str("pools:\n");
    for p in &pools {
        for c in &p.comments {
            let _ = writeln!(text, "  # {c}");
        }
        text.push_str(&yaml(&Value::Array(vec![p.value.clone()]), 2)?);
    }
    warnings.extend(notes);
    // `${` would be read as a variable by the configuration loader: keep it literal.
    let text = text.replace("${", "$${");
    Ok(Imported {
        text,
        warnings,
        resources: found.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates the output as `runscale check` does, and returns it as written.
    fn check(text: &str) -> crate::config::Config {
        let path = std::path::Path::new("imported.yaml");
        crate::config::load_str(text, path, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        crate::config::parse_str(text, path, |_| None)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .0
    }

    fn options() -> Options {
        Options {
            namespace: "default".into(),
            token: json!({"env": "GITHUB_TOKEN"}),
            ..Options::default()
        }
    }

    const ADD_RUNNER_FILE: &str = r#"
kind: ScaledActionRunner
apiVersion: runner.devjoes.com/v1alpha1
metadata:
  name: example-repo
spec:
  githubTokenSecret: example-repo
  maxRunners: 4
  owner: devjoes
  repo: example-repo
  runnerSecrets:
    - example-repo-0
    - example-repo-1
    - example-repo-2
    - example-repo-3
---
apiVersion: v1
kind: Secret
metadata:
  name: example-repo
data:
  token: c2VjcmV0LXRva2Vu
type: Opaque
"#;

    #[test]
    fn the_add_runner_file_imports_and_validates() {
        let out = import(ADD_RUNNER_FILE, &options()).expect("imports");
        assert_eq!(out.resources, 1);
        assert!(
            !out.text.contains("c2VjcmV0"),
            "secret data is never copied"
        );
        let v = check(&out.text);
        assert_eq!(v.pools.len(), 1);
        let pool = &v.pools[0];
        assert_eq!(pool.name, "example-repo");
        assert_eq!((pool.min_idle, pool.max), (0, 4));
        assert_eq!(pool.selector["repository"], "devjoes/example-repo");
        assert_eq!(pool.selector["labels"], json!(["self-hosted"]));
        assert!(out.text.contains("spec.runnerSecrets: not used"));
        assert!(out.warnings.iter().any(|w| w.contains("skipped Secret")));
    }

    #[test]
    fn a_kubectl_list_with_every_field_maps_and_warns() {
        let list = r#"
apiVersion: v1
kind: List
items:
- apiVersion: runner.devjoes.com/v1alpha1
  kind: ScaledActionRunner
  metadata: {name: web, namespace: team-a, labels: {team: a}}
  spec:
    owner: acme
    repo: web
    minRunners: 1
    maxRunners: 3
    githubTokenSecret: pat
    runnerSecrets: [web-0, web-1, web-2]
    scaleFactor: "0.5"
    metricsSelector: wf_runs_on_gpu
    forceScaleUpWindow: 20m
    scaling: {cooldownPeriod: 600, pollingInterval: 15, behavior: {scaleDown: {stabilizationWindowSeconds: 60}}}
    runner:
      image: ghcr.io/acme/runner:2
      runnerLabels: "linux,gpu"
      annotations: {iam.amazonaws.com/role: web-ci}
      nodeSelector: {pool: ci}
      env: [{name: FOO, value: bar}]
      limits: {cpu: 2, memory: 4Gi}
      tolerations: [{key: ci, operator: Exists}]
      serviceAccountName: web-ci
      mountDockerSock: false
      workVolumeClaimTemplate: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}
      patch: '[{"op":"add","path":"/x","value":1}]'
- apiVersion: runner.devjoes.com/v1alpha1
  kind: ScaledActionRunner
  metadata: {name: web, namespace: team-b}
  spec: {owner: acme, repo: api, maxRunners: 2}
"#;
        let out = import(list, &options()).expect("imports");
        let v = check(&out.text);
        let names: Vec<&str> = v.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["team-a-web", "team-b-web"],
            "same names in two namespaces"
        );
        let backends: Vec<&str> = v.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(backends, ["k8s-team-a", "k8s-team-b"]);
        assert_eq!(v.interval, std::time::Duration::from_secs(15));
        let a = &v.pools[0];
        assert_eq!((a.min_idle, a.max), (1, 3));
        assert_eq!(a.idle_timeout, std::time::Duration::from_secs(600));
        assert_eq!(a.selector["labels"], json!(["linux", "gpu"]));
        let spec = &a.template["pod"]["spec"];
        assert_eq!(spec["serviceAccountName"], "web-ci");
        assert_eq!(spec["containers"][0]["resources"]["limits"]["cpu"], "2");
        assert_eq!(spec["containers"][0]["image"], "ghcr.io/acme/runner:2");
        assert!(spec["volumes"].to_string().contains("10Gi"));
        assert!(!spec["volumes"].to_string().contains("docker.sock"));
        for field in [
            "spec.scaleFactor",
            "spec.metricsSelector",
            "spec.forceScaleUpWindow",
            "spec.scaling.behavior",
            "spec.runner.patch",
        ] {
            assert!(
                out.warnings
                    .iter()
                    .any(|w| w.contains(field) && w.contains("team-a/web")),
                "no warning for {field}: {:?}",
                out.warnings
            );
            assert!(
                out.text.contains(&format!("# {field}: no equivalent")),
                "{field}"
            );
        }
    }

    #[test]
    fn bad_input_names_the_resource_and_field() {
        let doc = |spec: &str| {
            format!(
                "apiVersion: runner.devjoes.com/v1alpha1\nkind: ScaledActionRunner\n\
                 metadata: {{name: r1, namespace: ns}}\nspec: {spec}\n"
            )
        };
        let cases = [
            (
                "{repo: a, maxRunners: 1}",
                "ScaledActionRunner ns/r1 spec.owner",
            ),
            (
                "{owner: o, repo: a}",
                "ScaledActionRunner ns/r1 spec.maxRunners",
            ),
            ("{owner: o, repo: a, maxRunners: 0}", "spec.maxRunners"),
            (
                "{owner: o, repo: a, maxRunners: 2, minRunners: 3}",
                "spec.minRunners",
            ),
            ("{owner: 'o o', repo: a, maxRunners: 1}", "spec.owner"),
            ("{owner: o, repo: a, maxRunners: x}", "spec.maxRunners"),
            (
                "{owner: o, repo: a, maxRunners: 1, scaleFactor: abc}",
                "spec.scaleFactor",
            ),
            (
                "{owner: o, repo: a, maxRunners: 1, runner: {limits: {cpu: [1]}}}",
                "spec.runner.limits.cpu",
            ),
        ];
        for (spec, want) in cases {
            let e = import(&doc(spec), &options()).expect_err(spec);
            assert!(e.to_string().contains(want), "{spec}: {e}");
        }
        let e = import("kind: ScaledActionRunner\napiVersion: runner.devjoes.com/v2\nmetadata: {name: x}\nspec: {}\n", &options())
            .expect_err("version");
        assert!(e.to_string().contains("apiVersion"), "{e}");
        assert!(import("a: [", &options()).is_err());
        let e = import("kind: ConfigMap\napiVersion: v1\n", &options()).expect_err("nothing");
        assert!(e.to_string().contains("no ScaledActionRunner"), "{e}");
    }

    #[test]
    fn names_are_sanitized_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(
            unique(sanitize("My_Repo..X", 40), 40, &mut taken),
            "my-repo-x"
        );
        assert_eq!(
            unique(sanitize("my-repo-x", 40), 40, &mut taken),
            "my-repo-x-2"
        );
        let long = "a".repeat(60);
        let n = unique(sanitize(&long, 40), 40, &mut taken);
        assert_eq!(n.len(), 40);
        assert_eq!(unique(sanitize(&long, 40), 40, &mut taken).len(), 40);
        assert_eq!(sanitize("---", 40), "runner");
    }
}
