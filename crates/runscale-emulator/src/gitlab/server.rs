//! The HTTP server: the admin API runscale calls (`PRIVATE-TOKEN` or Bearer; faults and
//! outages apply), the runner API gitlab-runner calls (runner token in the body, job token in
//! the body or `JOB-TOKEN`; never faulted), Workhorse's long poll in front of
//! `POST /jobs/request`, the lease sweeper and webhook delivery.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use axum::extract::{Extension, MatchedPath, Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use chrono::Utc;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{JobSpec, Snapshot, Workload};
use super::state::{Assigned, Caller, Event, NewRunner, Queue, Refusal, State, TraceRefusal};
use super::webhook;
use crate::serve::{self, error};

/// How often the sweeper looks for lost jobs.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Largest page size.
const PER_PAGE_MAX: usize = 100;

pub(crate) struct Shared {
    hub: serve::Hub<State, Event>,
    /// Woken when a runner's queue value changes (a job queued, a runner updated): ends long
    /// polls early.
    work: Notify,
    long_poll: Duration,
    trace_update_interval: Duration,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.hub.lock()
    }

    fn emit(&self, events: impl IntoIterator<Item = Event>) {
        self.hub.emit(events);
    }
}

serve::sweep_and_count!(Shared);

/// The GitLab emulator.
pub struct Emulator;

/// A running emulator. Dropping it stops the server.
pub struct EmulatorHandle {
    server: serve::Server,
    shared: Arc<Shared>,
}

impl Emulator {
    /// Binds `127.0.0.1:0` and serves until the handle is dropped.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
        let (server, listener) = serve::Server::bind(serve::loopback()).await?;
        let (hub, rx) = serve::Hub::new(State::new(&config, server.url()));
        let shared = Arc::new(Shared {
            hub,
            work: Notify::new(),
            long_poll: config.long_poll,
            trace_update_interval: config.trace_update_interval,
        });
        server.run(
            listener,
            router(shared.clone()),
            SWEEP_EVERY,
            shared.clone(),
            |cancel| {
                webhook::delivery_loop(
                    rx,
                    shared.clone(),
                    config.webhooks.clone(),
                    server.url(),
                    cancel,
                )
            },
        );
        Ok(EmulatorHandle { server, shared })
    }
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT` (what runscale and runners are configured with).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Queues jobs as pending; returns their ids.
    pub fn submit(&self, jobs: Vec<JobSpec>) -> Vec<u64> {
        let (ids, events) = self.shared.lock().submit(jobs, Utc::now(), Instant::now());
        self.shared.emit(events);
        self.shared.work.notify_waiters();
        ids
    }

    /// Records finished jobs that ran before the test (a job history): created at `created`,
    /// each started `waited` after it. Record them before submitting live jobs: GitLab's ids
    /// grow with creation time.
    pub fn record_past(
        &self,
        jobs: Vec<JobSpec>,
        created: chrono::DateTime<Utc>,
        waited: Duration,
    ) -> Vec<u64> {
        let waited = chrono::Duration::from_std(waited).unwrap_or_default();
        self.shared.lock().record_past(jobs, created, waited)
    }

    /// Plays a workload in the background: each batch is queued at its offset.
    pub fn play(&self, workload: Workload) {
        let shared = self.shared.clone();
        serve::spawn_arrivals(
            self.server.cancel().clone(),
            workload.arrivals,
            move |jobs| {
                let (_, events) = shared.lock().submit(jobs, Utc::now(), Instant::now());
                shared.emit(events);
                shared.work.notify_waiters();
            },
        );
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snapshot()
    }

    /// Replaces the fault knobs.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Admin requests allowed per minute (`None`: unlimited); the window restarts now.
    pub fn set_rate_limit(&self, per_minute: Option<u32>) {
        self.shared
            .lock()
            .set_rate_limit(per_minute, Instant::now());
    }

    /// Every admin request answers 503 for `length` from now (the runner API stays up).
    pub fn outage(&self, length: Duration) {
        self.shared.lock().outage_until = Some(Instant::now() + length);
    }

    /// Makes the user `username` (of [`EmulatorConfig::users`]) a member of `project` with
    /// `access_level` (40: Maintainer), as when somebody adds them to a project. `false` when
    /// there is no such user.
    pub fn add_member(&self, username: &str, project: u64, access_level: u32) -> bool {
        self.shared
            .lock()
            .add_member(username, project, access_level)
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        // Admin API.
        .route("/api/v4/user", get(user))
        .route("/api/v4/user/runners", post(create_runner))
        .route("/api/v4/runners", get(list_runners).delete(delete_by_token))
        .route("/api/v4/runners/all", get(list_runners))
        .route("/api/v4/groups/{id}/runners", get(list_runners))
        .route(
            "/api/v4/projects/{id}/runners",
            get(list_runners).post(enable_runner),
        )
        .route("/api/v4/projects", get(list_projects))
        .route(
            "/api/v4/runners/{id}",
            get(get_runner).put(update_runner).delete(delete_runner),
        )
        .route("/api/v4/runners/{id}/managers", get(managers))
        .route("/api/v4/projects/{id}", get(get_project))
        .route("/api/v4/projects/{id}/jobs", get(project_jobs))
        .route("/api/v4/projects/{id}/jobs/{job}", get(project_job))
        .route("/api/v4/groups/{id}/projects", get(group_projects))
        // Runner API.
        .route("/api/v4/runners/verify", post(verify))
        .route(
            "/api/v4/runners/managers",
            axum::routing::delete(delete_manager),
        )
        .route("/api/v4/jobs/request", post(request_job))
        .route("/api/v4/jobs/{id}", put(update_job))
        .route("/api/v4/jobs/{id}/trace", patch(patch_trace))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), gate));
    serve::counted(routes, shared)
}

/// Calls runners make with their own tokens: never faulted, no admin token.
fn runner_call(method: &Method, route: &str) -> bool {
    matches!(
        (method.as_str(), route),
        ("POST", "/api/v4/jobs/request")
            | ("POST", "/api/v4/runners/verify")
            | ("PUT", "/api/v4/jobs/{id}")
            | ("PATCH", "/api/v4/jobs/{id}/trace")
            | ("DELETE", "/api/v4/runners/managers")
            | ("DELETE", "/api/v4/runners")
    )
}

/// `PRIVATE-TOKEN: <t>` or `Authorization: Bearer <t>`.
fn admin_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get("private-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    serve::authorization(headers, "Bearer ")
}

/// Outage, faults and admin authentication for admin calls.
async fn gate(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if runner_call(req.method(), &route) {
        return next.run(req).await;
    }
    let (latency, outcome, budget) = {
        let mut s = shared.lock();
        let latency = s.faults.latency;
        let budget = s.spend_rate_budget(Instant::now());
        let outcome = if budget.is_some_and(|b| b.exhausted) {
            Some(StatusCode::TOO_MANY_REQUESTS)
        } else if s.outage_until.is_some_and(|u| Instant::now() < u)
            || s.faults.failing_routes.contains(&route)
        {
            Some(StatusCode::SERVICE_UNAVAILABLE)
        } else {
            serve::injected_fault!(s, |rng| {
                [
                    StatusCode::INTERNAL_SERVER_ERROR,
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                ][rng.random_range(0..3)]
            })
        };
        if outcome.is_some() {
            s.faulted += 1;
        }
        (latency, outcome, budget)
    };
    serve::delay(latency).await;
    let mut response = match outcome {
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            let wait = budget.map_or(1, |b| b.reset_in.as_secs().max(1));
            serve::throttled("429 Too Many Requests", wait)
        }
        Some(status) => error(status, "502 GitLab is not responding"),
        None => {
            let caller = admin_token(req.headers()).and_then(|t| shared.lock().caller(t));
            match caller {
                Some(caller) => {
                    let mut req = req;
                    req.extensions_mut().insert(caller);
                    next.run(req).await
                }
                None => error(StatusCode::UNAUTHORIZED, "401 Unauthorized"),
            }
        }
    };
    if let Some(b) = budget {
        let reset = Utc::now().timestamp() + i64::try_from(b.reset_in.as_secs()).unwrap_or(0);
        for (k, v) in [
            ("ratelimit-limit", b.limit.to_string()),
            ("ratelimit-remaining", b.remaining.to_string()),
            ("ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                response.headers_mut().insert(k, v);
            }
        }
    }
    response
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters in order, repeated keys kept (`scope[]=a&scope[]=b`).
fn params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param<'a>(ps: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// One page of `items` with GitLab's offset pagination headers.
fn paginated(uri: &Uri, items: Vec<Value>) -> Response {
    let ps = params(uri);
    let per_page = param(&ps, "per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, PER_PAGE_MAX);
    let page = param(&ps, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut r = Json(slice).into_response();
    let h = r.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set("x-total", total.to_string());
    set("x-total-pages", pages.to_string());
    set(
        "x-next-page",
        if page < pages {
            (page + 1).to_string()
        } else {
            String::new()
        },
    );
    set(
        "x-prev-page",
        if page > 1 {
            (page - 1).to_string()
        } else {
            String::new()
        },
    );
    if page < pages {
        let kept: String = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("page=") && !p.starts_with("per_page="))
            .map(|p| format!("{p}&"))
            .collect();
        let next = format!("{}?{kept}page={}&per_page={per_page}", uri.path(), page + 1);
        set("link", format!("<{next}>; rel=\"next\""));
    }
    r
}

async fn user(
    AxState(shared): AxState<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(shared.lock().user_json(caller)).into_response()
}

#[derive(Deserialize)]
struct CreateRunner {
    runner_type: String,
    #[serde(default)]
    group_id: Option<u64>,
    #[serde(default)]
    project_id: Option<u64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    run_untagged: Option<bool>,
    #[serde(default)]
    tag_list: Option<TagList>,
    #[serde(default)]
    maintenance_note: Option<String>,
}

/// `tag_list` as an array or a comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum TagList {
    List(Vec<String>),
    Text(String),
}

impl TagList {
    fn into_vec(self) -> Vec<String> {
        match self {
            TagList::List(v) => v,
            TagList::Text(s) => s
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }
}

async fn create_runner(
    AxState(shared): AxState<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(c) = serde_json::from_slice::<CreateRunner>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400 Bad request - runner_type is missing",
        );
    };
    let mut s = shared.lock();
    let scope = match c.runner_type.as_str() {
        "instance_type" => None,
        "group_type" => match c.group_id.and_then(|g| s.group(&g.to_string())) {
            Some(g) => Some(g),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "400 Bad request - group_id is invalid",
                );
            }
        },
        "project_type" => match c
            .project_id
            .and_then(|p| s.project(&p.to_string()).map(|p| p.id))
        {
            Some(p) => Some(p),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "400 Bad request - project_id is invalid",
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "400 Bad request - runner_type does not have a valid value",
            );
        }
    };
    // Instance runners need an administrator, project runners a Maintainer of the project
    // (group membership is not modelled: group runners need an administrator here).
    let allowed = match (c.runner_type.as_str(), scope) {
        ("project_type", Some(p)) => s.maintains(caller, p),
        _ => caller == Caller::Admin,
    };
    if !allowed {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let tags = c.tag_list.map(TagList::into_vec).unwrap_or_default();
    let (id, token) = s.create_runner(
        NewRunner {
            runner_type: c.runner_type,
            scope,
            description: c.description.unwrap_or_default(),
            run_untagged: c.run_untagged.unwrap_or(tags.is_empty()),
            tags,
            paused: c.paused.unwrap_or(false),
            locked: c.locked.unwrap_or(false),
            maintenance_note: c.maintenance_note.unwrap_or_default(),
        },
        Utc::now(),
    );
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "token": token, "token_expires_at": null })),
    )
        .into_response()
}

async fn list_runners(
    AxState(shared): AxState<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: Option<Path<String>>,
    uri: Uri,
) -> Response {
    let ps = params(&uri);
    let now = Utc::now();
    let s = shared.lock();
    let p = uri.path();
    if p.ends_with("/runners/all") && caller != Caller::Admin {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    // `GET /runners` ("owned runners"): for a user, the project runners of projects it
    // maintains.
    let owned_only = path.is_none() && !p.ends_with("/all") && caller != Caller::Admin;
    let scope: Option<(&str, u64)> = match &path {
        Some(Path(key)) if p.contains("/groups/") => match s.group(key) {
            Some(g) => Some(("group_type", g)),
            None => return error(StatusCode::NOT_FOUND, "404 Group Not Found"),
        },
        Some(Path(key)) => match s.project(key) {
            Some(pr) => Some(("project_type", pr.id)),
            None => return error(StatusCode::NOT_FOUND, "404 Project Not Found"),
        },
        None => None,
    };
    let want_type = param(&ps, "type").map(str::to_owned);
    let want_paused = param(&ps, "paused").map(|v| v == "true");
    let want_tags: Vec<String> = param(&ps, "tag_list")
        .map(|t| t.split(',').map(|x| x.trim().to_owned()).collect())
        .unwrap_or_default();
    let ids = s.runner_ids(|r| {
        scope.is_none_or(|(t, id)| match t {
            "project_type" => r.runner_type == t && r.projects.contains(&id),
            _ => r.runner_type == t && r.scope == Some(id),
        }) && (!owned_only
            || (r.runner_type == "project_type"
                && r.projects.iter().any(|p| s.maintains(caller, *p))))
            && want_type.as_deref().is_none_or(|t| r.runner_type == t)
            && want_paused.is_none_or(|p| r.paused == p)
            && want_tags.iter().all(|t| r.tags.contains(t))
    });
    let want_status = param(&ps, "status").map(str::to_owned);
    let items: Vec<Value> = ids
        .into_iter()
        .filter_map(|id| s.runner_json(id, false, now))
        .filter(|v| want_status.as_deref().is_none_or(|st| v["status"] == st))
        .collect();
    drop(s);
    paginated(&uri, items)
}

fn runner_id(key: &str) -> Option<u64> {
    key.parse().ok()
}

async fn get_runner(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match runner_id(&id).and_then(|id| shared.lock().runner_json(id, true, Utc::now())) {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

#[derive(Deserialize)]
struct UpdateRunner {
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tag_list: Option<TagList>,
    #[serde(default)]
    run_untagged: Option<bool>,
}

async fn update_runner(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(u) = serde_json::from_slice::<UpdateRunner>(&body) else {
        return error(StatusCode::BAD_REQUEST, "400 Bad request");
    };
    let now = Utc::now();
    let v = {
        let mut s = shared.lock();
        let Some(r) = runner_id(&id).and_then(|id| s.runner_mut(id)) else {
            return error(StatusCode::NOT_FOUND, "404 Runner Not Found");
        };
        if let Some(p) = u.paused.or(u.active.map(|a| !a)) {
            r.paused = p;
        }
        if let Some(d) = u.description {
            r.description = d;
        }
        if let Some(t) = u.tag_list {
            r.tags = t.into_vec();
        }
        if let Some(x) = u.run_untagged {
            r.run_untagged = x;
        }
        let rid = r.id;
        s.tick(rid, Instant::now());
        s.runner_json(rid, true, now)
    };
    shared.work.notify_waiters();
    Json(v).into_response()
}

async fn delete_runner(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let events = runner_id(&id).and_then(|id| shared.lock().delete_runner(id, Utc::now()));
    match events {
        Some(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

async fn managers(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match runner_id(&id).and_then(|id| shared.lock().managers_json(id, Utc::now())) {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "404 Runner Not Found"),
    }
}

fn project_json(p: &super::state::Project) -> Value {
    json!({
        "id": p.id,
        "path_with_namespace": p.path,
        "path": p.path.rsplit('/').next().unwrap_or_default(),
        "name": p.path.rsplit('/').next().unwrap_or_default(),
        "namespace": { "id": p.group },
    })
}

/// `POST /projects/:id/runners {runner_id}`: enables a project runner in another project.
async fn enable_runner(
    AxState(shared): AxState<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Enable {
        runner_id: u64,
    }
    let Ok(e) = serde_json::from_slice::<Enable>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400 Bad request - runner_id is missing",
        );
    };
    let result = shared
        .lock()
        .enable_runner(caller, &id, e.runner_id, Utc::now());
    match result {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err((code, body)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(body),
        )
            .into_response(),
    }
}

/// `GET /projects`: `membership=true` (with `min_access_level`) lists the caller's member
/// projects; `order_by=id` with `sort=asc|desc` (default: newest first); paginated.
async fn list_projects(
    AxState(shared): AxState<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let ps = params(&uri);
    let membership = param(&ps, "membership") == Some("true");
    let min_level = param(&ps, "min_access_level").and_then(|v| v.parse().ok());
    let mut list = shared
        .lock()
        .visible_projects(caller, membership, min_level);
    if param(&ps, "sort") != Some("asc") {
        list.reverse();
    }
    paginated(&uri, list.iter().map(project_json).collect())
}

async fn get_project(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.lock().project(&id) {
        Some(p) => Json(project_json(p)).into_response(),
        None => error(StatusCode::NOT_FOUND, "404 Project Not Found"),
    }
}

async fn group_projects(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let ps = params(&uri);
    let subgroups = param(&ps, "include_subgroups") == Some("true");
    let items: Vec<Value> = {
        let s = shared.lock();
        let Some(g) = s.group(&id) else {
            return error(StatusCode::NOT_FOUND, "404 Group Not Found");
        };
        s.group_projects(g)
            .iter()
            .filter(|p| subgroups || p.group == Some(g))
            .map(project_json)
            .collect()
    };
    paginated(&uri, items)
}

async fn project_jobs(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let scopes: Vec<String> = params(&uri)
        .into_iter()
        .filter(|(k, _)| k == "scope[]" || k == "scope")
        .map(|(_, v)| v)
        .collect();
    let ps = params(&uri);
    let ascending = match param(&ps, "sort") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "sort does not have a valid value"),
    };
    if param(&ps, "order_by").is_some_and(|o| o != "id") {
        return error(
            StatusCode::BAD_REQUEST,
            "order_by does not have a valid value",
        );
    }
    let items = {
        let s = shared.lock();
        let Some(p) = s.project(&id).map(|p| p.id) else {
            return error(StatusCode::NOT_FOUND, "404 Project Not Found");
        };
        s.project_jobs(p, &scopes, ascending, Utc::now())
    };
    paginated(&uri, items)
}

async fn project_job(
    AxState(shared): AxState<Arc<Shared>>,
    Path((id, job)): Path<(String, u64)>,
) -> Response {
    let s = shared.lock();
    let found = s
        .project(&id)
        .map(|p| p.id)
        .and_then(|p| s.project_job(p, job, Utc::now()));
    match found {
        Some(v) => Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "404 Not found"),
    }
}

/// What runners send with their runner token.
#[derive(Deserialize)]
struct RunnerHello {
    token: String,
    #[serde(default)]
    system_id: Option<String>,
}

/// `POST /runners/verify {token, system_id, info}`: 200 with the runner's id (the runner also
/// takes the legacy plain-text answer), 403 for an unknown token. Makes the manager's record.
async fn verify(AxState(shared): AxState<Arc<Shared>>, Json(h): Json<RunnerHello>) -> Response {
    let sid = h.system_id.unwrap_or_default();
    match shared.lock().verify(&h.token, &sid, Utc::now()) {
        Some(id) => {
            Json(json!({ "id": id, "token": h.token, "token_expires_at": null })).into_response()
        }
        None => error(StatusCode::FORBIDDEN, "403 Forbidden"),
    }
}

async fn delete_manager(
    AxState(shared): AxState<Arc<Shared>>,
    Json(h): Json<RunnerHello>,
) -> Response {
    let sid = h.system_id.unwrap_or_default();
    let result = shared.lock().delete_manager(&h.token, &sid, Utc::now());
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(Refusal::Gone) => error(StatusCode::NOT_FOUND, "404 Runner Manager Not Found"),
        Err(_) => error(StatusCode::FORBIDDEN, "403 Forbidden"),
    }
}

async fn delete_by_token(
    AxState(shared): AxState<Arc<Shared>>,
    Json(h): Json<RunnerHello>,
) -> Response {
    let result = shared.lock().delete_runner_by_token(&h.token, Utc::now());
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => error(StatusCode::FORBIDDEN, "403 Forbidden"),
    }
}

/// `POST /jobs/request {token, system_id, last_update, info}`.
#[derive(Deserialize)]
struct JobRequest {
    token: String,
    #[serde(default)]
    system_id: Option<String>,
    #[serde(default)]
    last_update: Option<String>,
}

/// A 204, with `X-GitLab-Last-Update` when GitLab (not Workhorse) answered.
fn no_job(last_update: Option<&str>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = last_update.and_then(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert("x-gitlab-last-update", v);
    }
    r
}

/// `POST /jobs/request`. With long polling on, Workhorse first: a request whose
/// `last_update` is the runner's current queue value is held until the value changes (then
/// 204: the runner asks again) or `long_poll` passes (204), without reaching GitLab — so the
/// manager's `contacted_at` stays where it was. Otherwise GitLab answers at once: 201 with a
/// job, or 204 with `X-GitLab-Last-Update`; 403 for an unknown token.
async fn request_job(AxState(shared): AxState<Arc<Shared>>, Json(h): Json<JobRequest>) -> Response {
    let sid = h.system_id.unwrap_or_default();
    if sid.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "400 Bad request - system_id is missing",
        );
    }
    let last = h.last_update.filter(|l| !l.is_empty());
    if let Some(last) = last.as_deref().filter(|_| !shared.long_poll.is_zero()) {
        let deadline = Instant::now() + shared.long_poll;
        let mut waited = false;
        loop {
            let notified = shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let queue = shared.lock().watch(&h.token, last, Instant::now());
            match queue {
                // Changed before watching: on to GitLab.
                Queue::Changed if !waited => break,
                // Changed while watching, or the poll is over: Workhorse answers.
                Queue::Changed => return no_job(None),
                Queue::Unchanged if Instant::now() >= deadline => return no_job(None),
                Queue::Unchanged => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                    waited = true;
                }
            }
        }
    }
    let result =
        shared
            .lock()
            .request_job(&h.token, &sid, last.as_deref(), Utc::now(), Instant::now());
    match result {
        Err(_) => error(StatusCode::FORBIDDEN, "403 Forbidden"),
        Ok(Assigned::Job(payload, event)) => {
            shared.emit([*event]);
            (StatusCode::CREATED, Json(*payload)).into_response()
        }
        Ok(Assigned::Nothing(value)) => no_job(Some(&value)),
    }
}

/// The job token: the `JOB-TOKEN` header, else `token` from the body or query.
fn job_token(headers: &HeaderMap, fallback: Option<String>) -> String {
    headers
        .get("job-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(fallback)
        .unwrap_or_default()
}

/// A 403 for a job that is not running, with its `Job-Status` (the runner then stops it).
fn not_running(status: Option<&'static str>) -> Response {
    let mut r = error(StatusCode::FORBIDDEN, "403 Forbidden - Job is not running");
    if let Some(s) = status {
        r.headers_mut()
            .insert("job-status", HeaderValue::from_static(s));
    }
    r
}

#[derive(Deserialize)]
struct JobUpdate {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    failure_reason: Option<String>,
}

/// `PUT /jobs/:id {token, state, failure_reason, exit_code, output}`: 200; 403 for a wrong
/// token or a job that is not running (with `Job-Status`); 400 for an unknown state.
async fn update_job(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Json(u): Json<JobUpdate>,
) -> Response {
    let token = job_token(&headers, u.token);
    let state = u.state.unwrap_or_default();
    let mut s = shared.lock();
    let result = s.update_job(
        id,
        &token,
        &state,
        u.failure_reason.as_deref(),
        Utc::now(),
        Instant::now(),
    );
    let status = s.job_status(id);
    drop(s);
    match result {
        Ok(event) => {
            shared.emit(event);
            (StatusCode::OK, "200").into_response()
        }
        Err(Refusal::Forbidden) => error(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err(Refusal::Gone) => not_running(status),
        Err(Refusal::Invalid) => error(StatusCode::BAD_REQUEST, "400 Bad request - state"),
    }
}

/// `start-end` of a `Content-Range` header.
fn content_range(headers: &HeaderMap) -> Option<Result<usize, ()>> {
    let v = headers.get("content-range")?;
    let parsed = v
        .to_str()
        .ok()
        .and_then(|t| t.trim().split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .filter(|(a, b)| a <= b)
        .map(|(a, _)| a);
    Some(parsed.ok_or(()))
}

/// `PATCH /jobs/:id/trace` (`JOB-TOKEN`, `Content-Range: start-end`, the bytes): 202 with
/// `Job-Status`, `Range: 0-<size>` and `X-GitLab-Trace-Update-Interval`; 416 (with `Range`)
/// when `start` is not the trace's size; 400 without `Content-Range`; 403 for a wrong token or
/// a job that is not running.
async fn patch_trace(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<u64>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let query_token = params(&uri)
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    let token = job_token(&headers, query_token);
    let start = match content_range(&headers) {
        None => return error(StatusCode::BAD_REQUEST, "400 Missing header Content-Range"),
        Some(Err(())) => usize::MAX,
        Some(Ok(start)) => start,
    };
    let result = shared
        .lock()
        .append_trace(id, &token, start, &body, Utc::now(), Instant::now());
    let range = |size: usize| HeaderValue::from_str(&format!("0-{size}")).ok();
    match result {
        Ok(size) => {
            let mut r = StatusCode::ACCEPTED.into_response();
            let h = r.headers_mut();
            h.insert("job-status", HeaderValue::from_static("running"));
            if let Some(v) = range(size) {
                h.insert("range", v);
            }
            h.insert(
                "x-gitlab-trace-update-interval",
                HeaderValue::from(shared.trace_update_interval.as_secs()),
            );
            r
        }
        Err(TraceRefusal::Range(size)) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "416 Range Not Satisfiable",
            );
            if let Some(v) = range(size) {
                r.headers_mut().insert("range", v);
            }
            r
        }
        Err(TraceRefusal::Forbidden(None)) => error(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err(TraceRefusal::Forbidden(status)) => not_running(status),
        Err(TraceRefusal::TooLarge) => error(
            StatusCode::FORBIDDEN,
            "403 Forbidden - trace larger than the emulator keeps",
        ),
    }
}
