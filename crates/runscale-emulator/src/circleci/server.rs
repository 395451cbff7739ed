//! The HTTP server: the runner API runscale reads (v3 and the older v2 paths), the calls the
//! fake runner agent makes with its resource-class token, fault injection, the sweeper that
//! gives up on silent runners, and webhook delivery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{Snapshot, TaskSpec, Workload};
use super::state::{Event, State, TaskRefusal};
use super::webhook;
use crate::serve::{self, error};

/// How often the sweeper looks for lost tasks and expired runners.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

pub(crate) type Shared = serve::Hub<State, Event>;

serve::sweep_and_count!(Shared);

/// The CircleCI emulator.
pub struct Emulator;

/// A running emulator. Dropping it stops the server.
pub struct EmulatorHandle {
    server: serve::Server,
    shared: Arc<Shared>,
}

impl Emulator {
    /// Binds `127.0.0.1:0` and serves until the handle is dropped.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
        Self::start_on(config, serve::loopback()).await
    }

    /// Binds `addr` and serves until the handle is dropped.
    pub async fn start_on(
        config: EmulatorConfig,
        addr: SocketAddr,
    ) -> std::io::Result<EmulatorHandle> {
        let (server, listener) = serve::Server::bind(addr).await?;
        let (shared, rx) = Shared::new(State::new(&config));
        let shared = Arc::new(shared);
        server.run(
            listener,
            router(shared.clone()),
            SWEEP_EVERY,
            shared.clone(),
            |cancel| webhook::delivery_loop(rx, shared.clone(), config.webhooks.clone(), cancel),
        );
        Ok(EmulatorHandle { server, shared })
    }
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The runner API base runscale is configured with: `<url>/api/v3`.
    pub fn api_v3(&self) -> String {
        format!("{}/api/v3", self.url())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Queues the tasks of one workflow; returns their ids.
    pub fn submit(&self, tasks: Vec<TaskSpec>) -> Vec<String> {
        self.shared.lock().submit(tasks, Utc::now())
    }

    /// Plays a workload in the background: each workflow is queued at its offset.
    pub fn play(&self, workload: Workload) {
        let shared = self.shared.clone();
        serve::spawn_arrivals(
            self.server.cancel().clone(),
            workload.arrivals,
            move |tasks| {
                shared.lock().submit(tasks, Utc::now());
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

    /// Changes the plan's concurrency.
    pub fn set_plan_concurrency(&self, limit: Option<u32>) {
        self.shared.lock().plan_concurrency = limit;
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v3/runner", get(list_runners))
        .route("/api/v3/runner/tasks", get(unclaimed))
        .route("/api/v3/runner/tasks/running", get(running))
        .route("/api/v3/runner/resource", get(list_classes))
        .route("/api/v2/runner", get(list_runners))
        .route("/api/v2/tasks", get(unclaimed))
        .route("/api/v2/tasks/running", get(running))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api_auth,
        ))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), faults));
    let agent = Router::new()
        .route("/api/v3/runner/claim", post(claim))
        .route("/api/v3/runner/disconnect", post(disconnect))
        .route("/api/v3/runner/tasks/{id}/heartbeat", post(heartbeat))
        .route("/api/v3/runner/tasks/{id}/complete", post(complete));
    serve::counted(api.merge(agent), shared)
}

/// Latency, failures and throttling, before anything else happens.
async fn faults(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (latency, outcome) = {
        let mut s = shared.lock();
        let outcome = serve::injected_fault!(s, serve::bad_gateway_or_unavailable);
        (s.faults.latency, outcome)
    };
    let messages = ("Rate limit exceeded", "Service unavailable");
    serve::answer_fault(latency, outcome, messages, req, next).await
}

/// `Circle-Token: <token>` or HTTP Basic with the token as user name.
fn api_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("circle-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_owned());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let b64 = auth.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(u, _)| u.to_owned()),
    )
}

async fn api_auth(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let ok = api_token(req.headers()).is_some_and(|t| shared.lock().api_token_ok(&t));
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "You must log in first.");
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    serve::authorization(headers, "Bearer ")
}

#[derive(Deserialize)]
struct ClassQuery {
    #[serde(rename = "resource-class")]
    resource_class: Option<String>,
    namespace: Option<String>,
}

async fn list_runners(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<ClassQuery>,
) -> Response {
    if q.resource_class.is_none() && q.namespace.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "one of resource-class or namespace is required",
        );
    }
    let items: Vec<_> = shared
        .lock()
        .listing(q.resource_class.as_deref(), q.namespace.as_deref())
        .into_iter()
        .map(|r| {
            json!({
                "resource_class": r.resource_class,
                "hostname": r.hostname,
                "name": r.name,
                "first_connected": r.first_connected,
                "last_connected": r.last_connected,
                "last_used": r.last_used,
                "version": "3.0.0-emulated",
            })
        })
        .collect();
    Json(json!({ "items": items })).into_response()
}

/// A refusal: status and message.
type Refused = (StatusCode, &'static str);

fn class_param(shared: &Shared, q: &ClassQuery) -> Result<String, Refused> {
    let Some(class) = q.resource_class.clone() else {
        return Err((StatusCode::BAD_REQUEST, "resource-class is required"));
    };
    if !shared.lock().has_class(&class) {
        return Err((StatusCode::NOT_FOUND, "resource class not found"));
    }
    Ok(class)
}

async fn unclaimed(AxState(shared): AxState<Arc<Shared>>, Query(q): Query<ClassQuery>) -> Response {
    match class_param(&shared, &q) {
        Ok(class) => {
            Json(json!({ "unclaimed_task_count": shared.lock().unclaimed(&class) })).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

async fn running(AxState(shared): AxState<Arc<Shared>>, Query(q): Query<ClassQuery>) -> Response {
    match class_param(&shared, &q) {
        Ok(class) => {
            Json(json!({ "running_runner_tasks": shared.lock().running(&class) })).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

async fn list_classes(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<ClassQuery>,
) -> Response {
    let Some(ns) = q.namespace else {
        return error(StatusCode::BAD_REQUEST, "namespace is required");
    };
    let items: Vec<_> = shared
        .lock()
        .classes_of(&ns)
        .into_iter()
        .map(|c| json!({ "id": c, "resource_class": c, "description": "" }))
        .collect();
    Json(json!({ "items": items })).into_response()
}

/// What a runner sends when it polls for a task or leaves.
#[derive(Deserialize)]
struct AgentHello {
    name: String,
    #[serde(default)]
    hostname: String,
}

fn runner_class(shared: &Shared, headers: &HeaderMap) -> Result<String, Refused> {
    bearer(headers)
        .and_then(|t| shared.lock().class_of_token(t))
        .ok_or((StatusCode::UNAUTHORIZED, "invalid resource class token"))
}

async fn claim(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    Json(hello): Json<AgentHello>,
) -> Response {
    let class = match runner_class(&shared, &headers) {
        Ok(c) => c,
        Err((status, message)) => return error(status, message),
    };
    if hello.name.is_empty() {
        return error(StatusCode::BAD_REQUEST, "runner name is required");
    }
    let claimed = shared.lock().claim(
        &class,
        &hello.name,
        &hello.hostname,
        Utc::now(),
        Instant::now(),
    );
    match claimed {
        Some(task) => Json(task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn disconnect(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    Json(hello): Json<AgentHello>,
) -> Response {
    let class = match runner_class(&shared, &headers) {
        Ok(c) => c,
        Err((status, message)) => return error(status, message),
    };
    let events = shared
        .lock()
        .disconnect(&class, &hello.name, &hello.hostname, Utc::now());
    shared.emit(events);
    StatusCode::NO_CONTENT.into_response()
}

fn refusal(r: TaskRefusal) -> Response {
    match r {
        TaskRefusal::Unknown => error(StatusCode::NOT_FOUND, "task not found"),
        TaskRefusal::Gone => error(StatusCode::CONFLICT, "task is no longer running"),
    }
}

async fn heartbeat(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    match shared
        .lock()
        .heartbeat(&id, &token, Utc::now(), Instant::now())
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refusal(r),
    }
}

#[derive(Deserialize)]
struct Completion {
    success: bool,
}

async fn complete(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(c): Json<Completion>,
) -> Response {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let result = shared
        .lock()
        .complete(&id, &token, c.success, Utc::now(), Instant::now());
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => refusal(r),
    }
}
