//! The HTTP server: the agent metrics API and the REST v2 agents calls runscale makes, the
//! emulator's own agent protocol the fake agent speaks, fault injection and the REST rate
//! limit, the sweeper that marks silent agents lost, and webhook delivery.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{JobSpec, Snapshot, Workload};
use super::state::{Agent, Event, QueueCounts, Refusal, Stack, State};
use super::webhook;
use crate::serve::{self, error};

/// How often the sweeper looks for lost agents.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Largest `per_page` of the agents listing.
const MAX_PER_PAGE: usize = 100;
/// Largest page of scheduled jobs (Stacks API).
const MAX_JOBS_PAGE: usize = 1000;
/// Longest reservation (Stacks API), in seconds.
const MAX_RESERVATION_SECS: u64 = 3600;
/// Reservation when none is asked for, in seconds.
const DEFAULT_RESERVATION_SECS: u64 = 300;

pub(crate) type Shared = serve::Hub<State, Event>;

serve::sweep_and_count!(Shared);

/// The Buildkite emulator.
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
        let (shared, rx) = Shared::new(State::new(&config));
        let shared = Arc::new(shared);
        server.serve(listener, router(shared.clone()));
        let cancel = server.cancel().clone();
        serve::spawn_sweeper(cancel.clone(), SWEEP_EVERY, shared.clone());
        tokio::spawn(webhook::delivery_loop(
            rx,
            shared.clone(),
            config.webhooks.clone(),
            cancel,
        ));
        Ok(EmulatorHandle { server, shared })
    }
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`: the base of both the agent API (`/v3`) and REST (`/v2`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The agent endpoint agents are configured with: `<url>/v3`.
    pub fn agent_endpoint(&self) -> String {
        format!("{}/v3", self.url())
    }

    /// Schedules jobs; returns their ids.
    pub fn submit(&self, jobs: Vec<JobSpec>) -> Vec<String> {
        let (ids, events) = self.shared.lock().submit(jobs, Utc::now());
        self.shared.emit(events);
        ids
    }

    /// Plays a workload in the background: each entry is scheduled at its offset.
    pub fn play(&self, workload: Workload) {
        let shared = self.shared.clone();
        serve::spawn_arrivals(
            self.server.cancel().clone(),
            workload.arrivals,
            move |jobs| {
                let (_, events) = shared.lock().submit(jobs, Utc::now());
                shared.emit(events);
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

    /// Changes the `Buildkite-Agent-Metrics-Poll-Duration` sent with metrics.
    pub fn set_metrics_poll_duration(&self, d: Option<Duration>) {
        self.shared.lock().metrics_poll_duration = d;
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let metrics = Router::new()
        .route("/v3/metrics", get(metrics))
        .route("/v3/metrics/queue", get(queue_metrics))
        .route("/v3/stacks/register", post(register_stack))
        .route("/v3/stacks/{key}/deregister", post(deregister_stack))
        .route("/v3/stacks/{key}/scheduled-jobs", get(scheduled_jobs))
        .route(
            "/v3/stacks/{key}/scheduled-jobs/batch-reserve",
            put(batch_reserve),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            agent_token_auth,
        ))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), faults));
    let rest = Router::new()
        .route("/v2/organizations/{org}/agents", get(list_agents))
        .route("/v2/organizations/{org}/agents/{id}", get(get_agent))
        .route("/v2/organizations/{org}/agents/{id}/stop", put(stop_agent))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            rate_limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api_auth,
        ))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), faults));
    let agent = Router::new()
        .route("/v3/register", post(register))
        .route("/v3/connect", post(connect))
        .route("/v3/ping", post(ping))
        .route("/v3/disconnect", post(disconnect))
        .route("/v3/jobs/{id}/acquire", post(acquire_job))
        .route("/v3/jobs/{id}/start", put(start_job))
        .route("/v3/jobs/{id}/finish", put(finish_job));
    metrics
        .merge(rest)
        .merge(agent)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            serve::count::<Shared>,
        ))
        .with_state(shared)
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Unknown => error(StatusCode::NOT_FOUND, "Not Found"),
        Refusal::Conflict(m) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
    }
}

/// Latency, failures and throttling, before anything else happens.
async fn faults(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let spared = shared.lock().faults.metrics_only && !req.uri().path().starts_with("/v3/metrics");
    if spared {
        return next.run(req).await;
    }
    let (latency, outcome) = {
        let mut s = shared.lock();
        let outcome = serve::injected_fault!(s, serve::bad_gateway_or_unavailable);
        (s.faults.latency, outcome)
    };
    serve::delay(latency).await;
    match outcome {
        Some(StatusCode::TOO_MANY_REQUESTS) => serve::throttled("Too Many Requests", 1),
        Some(status) => error(status, "Service Unavailable"),
        None => next.run(req).await,
    }
}

async fn agent_token_auth(
    AxState(shared): AxState<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = serve::authorization(req.headers(), "Token ")
        .is_some_and(|t| shared.lock().agent_token_ok(t));
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Invalid agent token");
    }
    next.run(req).await
}

async fn api_auth(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let ok = serve::authorization(req.headers(), "Bearer ")
        .is_some_and(|t| shared.lock().api_token_ok(t));
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    next.run(req).await
}

/// The organisation's REST budget, with `RateLimit-*` headers on every answer.
async fn rate_limit(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (taken, limit) = {
        let mut s = shared.lock();
        (s.take_rest(Instant::now()), s.rest_limit())
    };
    let (mut resp, remaining, reset) = match taken {
        Ok(remaining) => (next.run(req).await, remaining, 60),
        Err(wait) => {
            let r = serve::throttled("Too Many Requests", wait);
            (r, 0, wait)
        }
    };
    for (name, value) in [
        ("ratelimit-limit", u64::from(limit)),
        ("ratelimit-remaining", u64::from(remaining)),
        ("ratelimit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

fn counts_json(c: &QueueCounts) -> (serde_json::Value, serde_json::Value) {
    (
        json!({ "idle": c.idle, "busy": c.busy, "total": c.idle + c.busy }),
        json!({
            "scheduled": c.scheduled,
            "running": c.running,
            "waiting": 0,
            "total": c.scheduled + c.running,
        }),
    )
}

fn with_poll_duration(shared: &Shared, body: serde_json::Value) -> Response {
    let poll = shared.lock().metrics_poll_duration;
    let mut resp = Json(body).into_response();
    if let Some(d) = poll
        && let Ok(v) = HeaderValue::from_str(&d.as_secs().to_string())
    {
        resp.headers_mut()
            .insert("buildkite-agent-metrics-poll-duration", v);
    }
    resp
}

async fn metrics(AxState(shared): AxState<Arc<Shared>>) -> Response {
    let (per_queue, org) = {
        let s = shared.lock();
        (s.metrics(), s.org.clone())
    };
    let mut total = QueueCounts::default();
    let mut agent_queues = serde_json::Map::new();
    let mut job_queues = serde_json::Map::new();
    for (q, c) in &per_queue {
        total.idle += c.idle;
        total.busy += c.busy;
        total.scheduled += c.scheduled;
        total.running += c.running;
        let (a, j) = counts_json(c);
        agent_queues.insert(q.clone(), a);
        job_queues.insert(q.clone(), j);
    }
    let (mut agents, mut jobs) = counts_json(&total);
    agents["queues"] = agent_queues.into();
    jobs["queues"] = job_queues.into();
    with_poll_duration(
        &shared,
        json!({ "agents": agents, "jobs": jobs, "organization": { "slug": org } }),
    )
}

#[derive(Deserialize)]
struct QueueQuery {
    name: Option<String>,
}

async fn queue_metrics(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<QueueQuery>,
) -> Response {
    let Some(name) = q.name else {
        return error(StatusCode::BAD_REQUEST, "name is required");
    };
    let (c, org) = {
        let s = shared.lock();
        (s.metrics().remove(&name).unwrap_or_default(), s.org.clone())
    };
    let (agents, jobs) = counts_json(&c);
    with_poll_duration(
        &shared,
        json!({ "agents": agents, "jobs": jobs, "organization": { "slug": org } }),
    )
}

fn agent_json(base: &str, org: &str, a: &Agent, s: &State) -> serde_json::Value {
    let job = a
        .snap
        .job
        .as_deref()
        .and_then(|id| s.job(id))
        .map(webhook::job_json);
    json!({
        "id": a.snap.id,
        "graphql_id": format!("QWdlbnQt{}", a.snap.id),
        "url": format!("{base}/v2/organizations/{org}/agents/{}", a.snap.id),
        "web_url": format!("{base}/organizations/{org}/agents/{}", a.snap.id),
        "name": a.snap.name,
        "connection_state": a.snap.connection_state.as_str(),
        "hostname": a.hostname,
        "ip_address": "127.0.0.1",
        "user_agent": "buildkite-agent/3.0.0-emulated",
        "version": "3.0.0-emulated",
        "creator": null,
        "created_at": a.created_at,
        "connected_at": a.connected_at,
        "job": job,
        "last_job_finished_at": a.last_job_finished_at,
        "priority": 0,
        "meta_data": a.snap.meta_data,
        "paused": false,
    })
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn org_ok(shared: &Shared, org: &str) -> bool {
    shared.lock().org == org
}

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
    per_page: Option<usize>,
    page: Option<usize>,
}

async fn list_agents(
    AxState(shared): AxState<Arc<Shared>>,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if !org_ok(&shared, &org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let base = base_url(&headers);
    let per_page = q.per_page.unwrap_or(30).clamp(1, MAX_PER_PAGE);
    let page = q.page.unwrap_or(1).max(1);
    let (items, more) = {
        let s = shared.lock();
        let all: Vec<_> = s
            .connected()
            .into_iter()
            .filter(|a| q.name.as_ref().is_none_or(|n| a.snap.name == *n))
            .collect();
        let items: Vec<_> = all
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|a| agent_json(&base, &org, a, &s))
            .collect();
        (items, all.len() > page * per_page)
    };
    let mut resp = Json(items).into_response();
    if more {
        let link = format!(
            "<{base}/v2/organizations/{org}/agents?page={}&per_page={per_page}>; rel=\"next\"",
            page + 1
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
}

async fn get_agent(
    AxState(shared): AxState<Arc<Shared>>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !org_ok(&shared, &org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let base = base_url(&headers);
    let s = shared.lock();
    match s.agent(&id) {
        Some(a) => Json(agent_json(&base, &org, a, &s)).into_response(),
        None => error(StatusCode::NOT_FOUND, "No agent found"),
    }
}

#[derive(Deserialize)]
struct StopBody {
    #[serde(default)]
    force: bool,
}

async fn stop_agent(
    AxState(shared): AxState<Arc<Shared>>,
    Path((org, id)): Path<(String, String)>,
    body: Option<Json<StopBody>>,
) -> Response {
    if !org_ok(&shared, &org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let force = body.is_some_and(|b| b.force);
    let result = shared.lock().stop(&id, force, Utc::now());
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => refusal(r),
    }
}

/// What an agent sends to register.
#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    meta_data: Vec<String>,
}

async fn register(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Response {
    let ok =
        serve::authorization(&headers, "Token ").is_some_and(|t| shared.lock().agent_token_ok(t));
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Invalid agent registration token");
    }
    let (id, access_token) = shared.lock().register(
        &body.name,
        &body.hostname,
        body.meta_data.clone(),
        Utc::now(),
        Instant::now(),
    );
    Json(json!({
        "id": id,
        "name": body.name,
        "access_token": access_token,
        "meta_data": body.meta_data,
    }))
    .into_response()
}

fn access_token(headers: &HeaderMap) -> Option<String> {
    serve::authorization(headers, "Token ").map(str::to_owned)
}

fn bad_access_token() -> Response {
    error(StatusCode::UNAUTHORIZED, "Invalid access token")
}

/// Runs an agent call with its access token, emitting the events it produced.
fn agent_call(
    shared: &Shared,
    headers: &HeaderMap,
    call: impl FnOnce(&mut State, &str) -> Result<Vec<Event>, Refusal>,
) -> Response {
    let Some(token) = access_token(headers) else {
        return bad_access_token();
    };
    let result = call(&mut shared.lock(), &token);
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(Refusal::Unknown) => bad_access_token(),
        Err(r) => refusal(r),
    }
}

async fn connect(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    agent_call(&shared, &headers, |s, t| {
        s.connect(t, Utc::now(), Instant::now())
    })
}

async fn disconnect(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    agent_call(&shared, &headers, |s, t| {
        s.disconnect(t, Utc::now(), Instant::now())
    })
}

async fn ping(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(token) = access_token(&headers) else {
        return bad_access_token();
    };
    let result = shared.lock().ping(&token, Utc::now(), Instant::now());
    match result {
        Ok((answer, events)) => {
            shared.emit(events);
            Json(answer).into_response()
        }
        Err(Refusal::Unknown) => bad_access_token(),
        Err(r) => refusal(r),
    }
}

async fn start_job(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    agent_call(&shared, &headers, |s, t| {
        s.start(t, &id, Utc::now(), Instant::now())
    })
}

#[derive(Deserialize)]
struct FinishBody {
    exit_status: i32,
}

async fn finish_job(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FinishBody>,
) -> Response {
    agent_call(&shared, &headers, |s, t| {
        s.finish(t, &id, body.exit_status, Utc::now(), Instant::now())
    })
}

fn stack_json(stack: &Stack) -> serde_json::Value {
    json!({
        "id": stack.id,
        "organization_uuid": "00000000-0000-0000-0000-000000000001",
        "cluster_queue_key": stack.queue_key,
        "key": stack.key,
        "type": stack.kind,
        "metadata": stack.metadata,
        "last_connected_on": stack.registered_at,
        "state": "connected",
    })
}

#[derive(Deserialize)]
struct RegisterStack {
    key: String,
    #[serde(rename = "type", default = "custom")]
    kind: String,
    #[serde(default = "default_queue_key")]
    queue_key: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

fn custom() -> String {
    "custom".to_owned()
}

fn default_queue_key() -> String {
    "_default".to_owned()
}

async fn register_stack(
    AxState(shared): AxState<Arc<Shared>>,
    Json(body): Json<RegisterStack>,
) -> Response {
    if body.key.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "key is required");
    }
    let stack = shared.lock().register_stack(
        &body.key,
        &body.kind,
        &body.queue_key,
        body.metadata,
        Utc::now(),
    );
    Json(stack_json(&stack)).into_response()
}

async fn deregister_stack(
    AxState(shared): AxState<Arc<Shared>>,
    Path(key): Path<String>,
) -> Response {
    let result = shared.lock().deregister_stack(&key);
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refusal(r),
    }
}

#[derive(Deserialize)]
struct ScheduledQuery {
    queue_key: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn scheduled_jobs(
    AxState(shared): AxState<Arc<Shared>>,
    Path(key): Path<String>,
    Query(q): Query<ScheduledQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_JOBS_PAGE);
    let page = shared.lock().scheduled_jobs(
        &key,
        q.queue_key.as_deref(),
        limit,
        q.after.as_deref().filter(|a| !a.is_empty()),
        Instant::now(),
    );
    match page {
        Ok(page) => {
            let jobs: Vec<_> = page
                .jobs
                .iter()
                .map(|j| {
                    json!({
                        "id": j.id,
                        "priority": 0,
                        "agent_query_rules": j.agent_query_rules,
                        "scheduled_at": j.scheduled_at,
                        "pipeline": { "slug": "app", "uuid": "pipeline-1" },
                        "build": { "uuid": "build-1", "number": 1, "branch": "main" },
                        "step": { "key": "build" },
                    })
                })
                .collect();
            Json(json!({
                "jobs": jobs,
                "cluster_queue": { "id": key, "paused": false },
                "page_info": {
                    "has_next_page": page.has_next_page,
                    "end_cursor": page.end_cursor,
                },
            }))
            .into_response()
        }
        Err(r) => refusal(r),
    }
}

#[derive(Deserialize)]
struct ReserveBody {
    job_uuids: Vec<String>,
    #[serde(default)]
    reservation_expiry_seconds: Option<u64>,
}

async fn batch_reserve(
    AxState(shared): AxState<Arc<Shared>>,
    Path(key): Path<String>,
    Json(body): Json<ReserveBody>,
) -> Response {
    let secs = body
        .reservation_expiry_seconds
        .unwrap_or(DEFAULT_RESERVATION_SECS);
    if secs == 0 || secs > MAX_RESERVATION_SECS {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reservation_expiry_seconds must be between 1 and 3600",
        );
    }
    let result = shared.lock().batch_reserve(
        &key,
        &body.job_uuids,
        Duration::from_secs(secs),
        Instant::now(),
    );
    match result {
        Ok((reserved, not_reserved)) => {
            Json(json!({ "reserved": reserved, "not_reserved": not_reserved })).into_response()
        }
        Err(r) => refusal(r),
    }
}

async fn acquire_job(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = access_token(&headers) else {
        return bad_access_token();
    };
    let result = shared.lock().acquire(&token, &id, Instant::now());
    match result {
        Ok(job) => Json(job).into_response(),
        Err(Refusal::Unknown) => error(StatusCode::NOT_FOUND, "No job found"),
        Err(r) => refusal(r),
    }
}
