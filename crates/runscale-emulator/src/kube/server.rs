//! The HTTP side: state shared by handlers and background tasks ([`Shared`]), the bearer
//! token check, fault injection, the request log, path routing (`/api/v1/...`,
//! `/apis/{group}/{version}/...`, namespaced and cluster-scoped) and the verb handlers that
//! turn requests into store operations and answers (objects, lists, Tables, Status errors).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admission::FieldValidation;
use super::config::{KubeFaults, NodeConfig};
use super::patch::PatchType;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::{DeleteOptions, Deleted, ListOptions, Propagation, Store, WriteOptions};
use super::table::TableRequest;
use super::{discovery, gc, jobs, kubelet, watch as watches};

/// How many requests the request log keeps.
const REQUEST_LOG: usize = 10_000;
/// Rounds of garbage collection and Job syncs after one change.
const JOB_SYNC_ROUNDS: usize = 4;

/// One request, as the request log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string (empty when none).
    pub query: String,
    /// The answer's status code (200 for a watch that started).
    pub status: u16,
}

/// What handlers and background tasks share.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion; watchers and the kubelet wait on it.
    pub changed: watch::Sender<u64>,
    /// Cancelled on shutdown.
    pub cancel: CancellationToken,
    token: SecretString,
    anonymous: bool,
    /// How often watches get bookmarks.
    pub bookmark_interval: Duration,
    faults: Mutex<(KubeFaults, StdRng)>,
    /// The simulated node (changeable at run time).
    pub node: Mutex<NodeConfig>,
    /// Processes the kubelet started.
    pub processes: kubelet::Processes,
    /// Where pod roots live.
    pub work_dir: std::path::PathBuf,
    /// `host:port` the server listens on.
    pub address: String,
    requests: Mutex<VecDeque<RequestRecord>>,
    /// Requests served.
    pub requests_total: AtomicU64,
    /// Watches started.
    pub watches_total: AtomicU64,
    /// Faults injected.
    pub faults_total: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves state consistent enough for a test double.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Builds the shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        token: SecretString,
        anonymous: bool,
        bookmark_interval: Duration,
        faults: KubeFaults,
        node: NodeConfig,
        work_dir: std::path::PathBuf,
        address: String,
        cancel: CancellationToken,
    ) -> Self {
        let rng = StdRng::seed_from_u64(faults.seed);
        let rv = store.resource_version();
        Shared {
            store: Mutex::new(store),
            changed: watch::channel(rv).0,
            cancel,
            token,
            anonymous,
            bookmark_interval,
            faults: Mutex::new((faults, rng)),
            node: Mutex::new(node),
            processes: kubelet::Processes::default(),
            work_dir,
            address,
            requests: Mutex::new(VecDeque::new()),
            requests_total: AtomicU64::new(0),
            watches_total: AtomicU64::new(0),
            faults_total: AtomicU64::new(0),
        }
    }

    /// The bearer token requests must carry.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// Reads the store.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    /// Changes the store, runs the garbage collector and the Job controller, and wakes watchers if anything
    /// changed.
    pub fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, rv) = {
            let mut store = lock(&self.store);
            let result = f(&mut store);
            // The Job controller's pods may need the collector, and the other way round.
            for _ in 0..JOB_SYNC_ROUNDS {
                gc::sweep(&mut store);
                if !jobs::sync(&mut store) {
                    break;
                }
            }
            gc::sweep(&mut store);
            (result, store.resource_version())
        };
        self.changed.send_if_modified(|current| {
            let changed = *current != rv;
            *current = rv;
            changed
        });
        result
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: KubeFaults) {
        let mut f = lock(&self.faults);
        f.1 = StdRng::seed_from_u64(faults.seed);
        f.0 = faults;
    }

    fn draw_fault(&self, update: bool) -> (Option<ApiError>, Duration) {
        let mut guard = lock(&self.faults);
        let (faults, rng) = &mut *guard;
        let latency = faults.latency;
        if faults.error_rate > 0.0 && rng.random_bool(faults.error_rate) {
            let error = if rng.random_bool(0.5) {
                ApiError::internal(
                    "an error on the server (\"injected fault\") has prevented the request from succeeding",
                )
            } else {
                ApiError::unavailable()
            };
            return (Some(error), latency);
        }
        if update && faults.conflict_rate > 0.0 && rng.random_bool(faults.conflict_rate) {
            // Filled in with the resource by the caller.
            return (Some(ApiError::conflict(&resources::PODS, "")), latency);
        }
        (None, latency)
    }

    /// A random watch lifetime, when watch disconnects are injected.
    pub fn watch_disconnect_after(&self) -> Option<Duration> {
        let mut guard = lock(&self.faults);
        let (faults, rng) = &mut *guard;
        let max = faults.watch_disconnect_after?;
        let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
        Some(Duration::from_millis(rng.random_range(1..=millis)))
    }

    fn record(&self, method: &Method, uri: &Uri, status: u16) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.requests);
        if log.len() == REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(RequestRecord {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            status,
        });
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).iter().cloned().collect()
    }
}

/// The router: everything goes through one handler that parses the path itself.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What a path names.
enum Target {
    Version,
    Health,
    ApiVersions,
    Groups,
    Group(String),
    ResourceList(String, String),
    OpenApiRoot,
    OpenApi(String, String),
    Resource(ResourcePath),
    Unknown,
}

/// A resource URL.
struct ResourcePath {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Target {
    let found = |plural: &str| resources::lookup(group, version, plural);
    let path = |rt, namespace: Option<&str>, name: Option<&&str>, sub: Option<&&str>| {
        Target::Resource(ResourcePath {
            rt,
            namespace: namespace.map(str::to_owned),
            name: name.map(|s| (*s).to_owned()),
            sub: sub.map(|s| (*s).to_owned()),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => match found(plural) {
            Some(rt) if rt.namespaced => path(rt, Some(ns), tail.first(), tail.get(1)),
            _ if group.is_empty()
                && tail.is_empty()
                && matches!(*plural, "status" | "finalize") =>
            {
                path(&resources::NAMESPACES, None, Some(ns), Some(plural))
            }
            _ => Target::Unknown,
        },
        [plural, tail @ ..] if tail.len() <= 2 => match found(plural) {
            Some(rt) if tail.is_empty() || !rt.namespaced => {
                path(rt, None, tail.first(), tail.get(1))
            }
            _ => Target::Unknown,
        },
        _ => Target::Unknown,
    }
}

fn route(path: &str) -> Target {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Target::Version,
        ["healthz" | "readyz" | "livez", ..] => Target::Health,
        ["api"] => Target::ApiVersions,
        ["api", version] => Target::ResourceList(String::new(), (*version).to_owned()),
        ["api", version, rest @ ..] => resource_path("", version, rest),
        ["apis"] => Target::Groups,
        ["apis", group] => Target::Group((*group).to_owned()),
        ["apis", group, version] => {
            Target::ResourceList((*group).to_owned(), (*version).to_owned())
        }
        ["apis", group, version, rest @ ..] => resource_path(group, version, rest),
        ["openapi", "v3"] => Target::OpenApiRoot,
        ["openapi", "v3", "api", version] => Target::OpenApi(String::new(), (*version).to_owned()),
        ["openapi", "v3", "apis", group, version] => {
            Target::OpenApi((*group).to_owned(), (*version).to_owned())
        }
        _ => Target::Unknown,
    }
}

fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(body)).into_response();
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// A request with the right bearer token, or without any when anonymous requests are
/// served.
fn authorized(headers: &HeaderMap, token: &SecretString, anonymous: bool) -> bool {
    match headers.get(header::AUTHORIZATION) {
        None => anonymous,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token.expose_secret()),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = route(uri.path());
    let response = match target {
        Target::Version => json_response(StatusCode::OK, &discovery::version(), &[]),
        Target::Health => (StatusCode::OK, "ok").into_response(),
        _ if !authorized(&headers, &shared.token, shared.anonymous) => {
            ApiError::unauthorized().into_response()
        }
        Target::ApiVersions => json_response(
            StatusCode::OK,
            &discovery::api_versions(&shared.address),
            &[],
        ),
        Target::Groups => json_response(StatusCode::OK, &discovery::api_groups(), &[]),
        Target::Group(g) => match discovery::api_group(&g) {
            Some(doc) => json_response(StatusCode::OK, &doc, &[]),
            None => ApiError::no_such_resource().into_response(),
        },
        Target::ResourceList(g, v) => match discovery::resource_list(&g, &v) {
            Some(doc) => json_response(StatusCode::OK, &doc, &[]),
            None => ApiError::no_such_resource().into_response(),
        },
        Target::OpenApiRoot => json_response(StatusCode::OK, &discovery::openapi_v3_root(), &[]),
        Target::OpenApi(g, v) => match discovery::openapi_v3_document(&g, &v) {
            Some(doc) => json_response(StatusCode::OK, &doc, &[]),
            None => ApiError::no_such_resource().into_response(),
        },
        Target::Unknown => ApiError::no_such_resource().into_response(),
        Target::Resource(path) => {
            let query: HashMap<String, String> = query.into_iter().collect();
            let update = matches!(method, Method::PUT | Method::PATCH);
            let (fault, latency) = shared.draw_fault(update);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match fault {
                Some(mut e) => {
                    shared.faults_total.fetch_add(1, Ordering::Relaxed);
                    if e.code == 409 {
                        e = ApiError::conflict(path.rt, path.name.as_deref().unwrap_or_default());
                    }
                    e.into_response()
                }
                None => resource(&shared, &method, path, &query, &headers, &body)
                    .unwrap_or_else(IntoResponse::into_response),
            }
        }
    };
    shared.record(&method, &uri, response.status().as_u16());
    response
}

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("true" | "1"))
}

fn selectors(rt: &ResourceType, query: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(rt, query.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn write_options(query: &HashMap<String, String>) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions {
        dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
        validation: FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?,
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn delete_options(
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let grace =
        match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => match query.get("gracePeriodSeconds") {
                Some(g) => Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
                None => None,
            },
        };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| query.get("propagationPolicy").cloned());
    let orphan = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| query.get("orphanDependents").map(|v| v == "true"));
    let propagation = match (policy.as_deref(), orphan) {
        (Some("Orphan"), _) => Some(Propagation::Orphan),
        (Some("Background"), _) => Some(Propagation::Background),
        (Some("Foreground"), _) => Some(Propagation::Foreground),
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "invalid propagationPolicy {other:?}"
            )));
        }
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    };
    let dry_run = body
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || query.get("dryRun").is_some_and(|v| v == "All");
    Ok(DeleteOptions {
        grace,
        propagation,
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
    })
}

fn list_item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    path: ResourcePath,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let rt = path.rt;
    let ns = path.namespace.clone().unwrap_or_default();
    let table = TableRequest::from_request(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
        query.get("includeObject").map(String::as_str),
    );
    let status_only = match path.sub.as_deref() {
        None => false,
        Some("status") => true,
        Some("log") if rt.plural == "pods" && *method == Method::GET => {
            let name = path.name.as_deref().unwrap_or_default();
            return kubelet::logs(shared, &ns, name, query);
        }
        Some(_) => return Err(ApiError::no_such_resource()),
    };
    match (method.clone(), path.name.as_deref()) {
        (Method::GET, None) if flag(query, "watch") => {
            shared.watches_total.fetch_add(1, Ordering::Relaxed);
            let timeout = match query.get("timeoutSeconds") {
                Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
                })?)),
                None => None,
            };
            watches::start(
                shared.clone(),
                watches::WatchRequest {
                    rt,
                    namespace: path.namespace,
                    selectors: selectors(rt, query)?,
                    resource_version: query.get("resourceVersion").cloned(),
                    send_initial_events: flag(query, "sendInitialEvents"),
                    bookmarks: flag(query, "allowWatchBookmarks"),
                    timeout,
                    table,
                },
            )
        }
        (Method::GET, None) => {
            let opts = ListOptions {
                selectors: selectors(rt, query)?,
                limit: match query.get("limit") {
                    Some(l) => l
                        .parse()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
                    None => 0,
                },
                continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
            };
            let page = shared.read(|s| s.list(rt, path.namespace.as_deref(), &opts))?;
            let body = match table {
                Some(t) => {
                    let items: Vec<&Value> = page.items.iter().map(AsRef::as_ref).collect();
                    t.render_list(
                        rt,
                        &items,
                        page.resource_version,
                        page.continue_token.as_deref(),
                    )
                }
                None => {
                    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
                    if let Some(c) = &page.continue_token {
                        meta["continue"] = json!(c);
                    }
                    json!({
                        "kind": rt.list_kind(),
                        "apiVersion": rt.api_version(),
                        "metadata": meta,
                        "items": page.items.iter().map(|o| list_item(o)).collect::<Vec<_>>(),
                    })
                }
            };
            Ok(json_response(StatusCode::OK, &body, &[]))
        }
        (Method::GET, Some(name)) => {
            let obj = shared.read(|s| s.get(rt, &ns, name))?;
            let body = match table {
                Some(t) => t.render_one(rt, &obj),
                None => (*obj).clone(),
            };
            Ok(json_response(StatusCode::OK, &body, &[]))
        }
        (Method::POST, None) if rt.namespaced == path.namespace.is_some() && !status_only => {
            let body = parse_body(body)?;
            let opts = write_options(query)?;
            let (obj, warnings) = shared.write(|s| s.create(rt, &ns, &body, opts))?;
            Ok(json_response(StatusCode::CREATED, &obj, &warnings))
        }
        (Method::PUT, Some(name)) => {
            let body = parse_body(body)?;
            let opts = write_options(query)?;
            let (obj, warnings) =
                shared.write(|s| s.update(rt, &ns, name, &body, status_only, opts))?;
            Ok(json_response(StatusCode::OK, &obj, &warnings))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            if kind == PatchType::Apply && query.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::bad_request(
                    "PATCH requests with apply content type must specify fieldManager",
                ));
            }
            let body = parse_body(body)?;
            let opts = write_options(query)?;
            let (obj, warnings, created) =
                shared.write(|s| s.patch(rt, &ns, name, kind, &body, status_only, opts))?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &obj, &warnings))
        }
        (Method::DELETE, Some(name)) if !status_only => {
            let opts = delete_options(query, body)?;
            match shared.write(|s| s.delete(rt, &ns, name, &opts))? {
                Deleted::Object(obj) => {
                    let code = if super::store::is_deleting(&obj)
                        && obj.pointer("/metadata/resourceVersion").is_some()
                        && shared.read(|s| s.get(rt, &ns, name).is_ok())
                    {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::OK
                    };
                    Ok(json_response(code, &obj, &[]))
                }
                Deleted::Status(status) => Ok(json_response(StatusCode::OK, &status, &[])),
            }
        }
        (Method::DELETE, None) => {
            let sel = selectors(rt, query)?;
            let opts = delete_options(query, body)?;
            let items = shared
                .write(|s| s.delete_collection(rt, path.namespace.as_deref(), &sel, &opts))?;
            let rv = shared.read(Store::resource_version);
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": rt.list_kind(),
                    "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items.iter().map(list_item).collect::<Vec<_>>(),
                }),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
