//! The HTTP server: the agent metrics API, the Stacks API and the REST v2 agents calls
//! runscale makes, fault injection and the REST rate limits, the sweeper that marks silent
//! agents lost, and webhook delivery. The routes agents call are in [`super::agent_api`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::limits::Quota;
use super::model::{JobSnapshot, JobSpec, JobStatus, Snapshot, Workload, queue_of};
use super::stacks::Stack;
use super::state::{Agent, Event, QueueCounts, Refusal, State, cluster_queue_id};
use super::{agent_api, webhook};
use crate::serve::{self, error};

/// How often the sweeper looks for lost agents.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Default and largest `per_page` of the agents listing.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;
/// Default and largest page of scheduled jobs (Stacks API).
const DEFAULT_JOBS_PAGE: usize = 100;
const MAX_JOBS_PAGE: usize = 1000;
/// Most job ids per reservation request.
const MAX_RESERVE_IDS: usize = 1000;
/// Longest reservation (Stacks API), in seconds.
const MAX_RESERVATION_SECS: u64 = 3600;
/// Reservation when none is asked for, in seconds (`agent_api/stacks.md`: 15 minutes).
const DEFAULT_RESERVATION_SECS: u64 = 900;

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

    /// Records jobs that ran before the test (the organisation's build history, one build
    /// each): scheduled at `at`, each started `waited` later and passed. No webhook is sent.
    pub fn record_past(
        &self,
        jobs: Vec<JobSpec>,
        at: DateTime<Utc>,
        waited: Duration,
    ) -> Vec<String> {
        let waited = chrono::Duration::from_std(waited).unwrap_or_default();
        self.shared.lock().record_past(jobs, at, waited)
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

    /// A job's log as its agent uploaded it (chunks in offset order, invalid UTF-8 replaced),
    /// and how many header times the agent reported; `None` for an unknown job.
    pub fn job_log(&self, id: &str) -> Option<(String, usize)> {
        let (bytes, headers) = self.shared.lock().job_log(id)?;
        Some((String::from_utf8_lossy(&bytes).into_owned(), headers))
    }

    /// Pauses or resumes the dispatch of a queue's jobs (the cluster queue's
    /// `dispatch_paused`): its jobs stay scheduled and listed, no agent gets one.
    pub fn set_dispatch_paused(&self, queue: &str, paused: bool) {
        let mut s = self.shared.lock();
        if paused {
            s.dispatch_paused.insert(queue.to_owned());
        } else {
            s.dispatch_paused.remove(queue);
        }
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

fn router(shared: Arc<Shared>) -> Router<()> {
    let agent_token = Router::new()
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
        .route("/v2/organizations/{org}/builds", get(list_builds))
        .route("/v2/organizations/{org}/agents/{id}", get(get_agent))
        .route("/v2/organizations/{org}/agents/{id}/stop", put(stop_agent))
        .route(
            "/v2/organizations/{org}/agents/{id}/pause",
            put(pause_agent),
        )
        .route(
            "/v2/organizations/{org}/agents/{id}/resume",
            put(resume_agent),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            rest_gate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), faults));
    serve::counted(agent_token.merge(rest).merge(agent_api::routes()), shared)
}

/// The answer to a refused call.
pub(crate) fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Unknown => error(StatusCode::NOT_FOUND, "Not Found"),
        Refusal::Unauthorized => error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Refusal::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
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
    let messages = ("Too Many Requests", "Service Unavailable");
    serve::answer_fault(latency, outcome, messages, req, next).await
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

fn set_header(resp: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

fn set_quota_headers(resp: &mut Response, org: &Quota, user: &Quota) {
    set_header(resp, "ratelimit-scope", org.scope);
    set_header(resp, "ratelimit-limit", org.limit);
    set_header(resp, "ratelimit-remaining", org.remaining);
    set_header(resp, "ratelimit-reset", org.reset);
    set_header(resp, "ratelimit-user-scope", user.scope);
    set_header(resp, "ratelimit-user-limit", user.limit);
    set_header(resp, "ratelimit-user-remaining", user.remaining);
    set_header(resp, "ratelimit-user-reset", user.reset);
}

/// The API token (its user), then the organisation's and the user's budgets
/// (`rest_api/rate_limits.md`): both header sets on every answer, 429 when either is over.
async fn rest_gate(AxState(shared): AxState<Arc<Shared>>, req: Request, next: Next) -> Response {
    let quotas = {
        let mut s = shared.lock();
        let user = serve::authorization(req.headers(), "Bearer ").and_then(|t| s.api_user(t));
        user.map(|user| s.limits.take(user, Instant::now()))
    };
    let Some((org, user)) = quotas else {
        return error(StatusCode::UNAUTHORIZED, "Authentication required");
    };
    let over = [&user, &org].into_iter().find(|q| q.exceeded()).copied();
    let mut resp = match over {
        Some(q) => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "message": format!(
                    "You have exceeded your API rate limit. Please wait {} seconds before \
                     making more requests.",
                    q.reset
                ),
                "scope": q.scope,
                "limit": q.limit,
                "current": q.current,
                "reset": q.reset,
            })),
        )
            .into_response(),
        None => next.run(req).await,
    };
    set_quota_headers(&mut resp, &org, &user);
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
    if let Some(d) = poll {
        set_header(
            &mut resp,
            "buildkite-agent-metrics-poll-duration",
            d.as_secs(),
        );
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
        "user_agent": format!("buildkite-agent/{}", a.version),
        "version": a.version,
        "creator": null,
        "created_at": a.created_at,
        "connected_at": a.connected_at,
        "job": job,
        "last_job_finished_at": a.last_job_finished_at,
        "priority": null,
        "meta_data": a.snap.meta_data,
        "paused": a.snap.paused,
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
    hostname: Option<String>,
    version: Option<String>,
    cluster_queue_id: Option<String>,
    per_page: Option<usize>,
    page: Option<usize>,
}

impl ListQuery {
    fn keeps(&self, a: &Agent) -> bool {
        self.name.as_ref().is_none_or(|n| a.snap.name == *n)
            && self.hostname.as_ref().is_none_or(|h| a.hostname == *h)
            && self.version.as_ref().is_none_or(|v| a.version == *v)
            && self
                .cluster_queue_id
                .as_ref()
                .is_none_or(|q| cluster_queue_id(queue_of(&a.snap.meta_data)) == *q)
    }

    /// The query of another page, filters kept.
    fn page_query(&self, page: usize, per_page: usize) -> String {
        let mut url = match reqwest::Url::parse("http://x/") {
            Ok(u) => u,
            Err(_) => return String::new(),
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in [
                ("name", &self.name),
                ("hostname", &self.hostname),
                ("version", &self.version),
                ("cluster_queue_id", &self.cluster_queue_id),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("page", &page.to_string());
            q.append_pair("per_page", &per_page.to_string());
        }
        url.query().unwrap_or_default().to_owned()
    }
}

/// Connected (and stopping) agents only, filtered, `Link` pagination.
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
    let (page, per_page) = paging(q.page, q.per_page);
    let (items, more) = {
        let s = shared.lock();
        let all: Vec<_> = s.connected().into_iter().filter(|a| q.keeps(a)).collect();
        one_page(&all, page, per_page, |a| agent_json(&base, &org, a, &s))
    };
    let mut resp = Json(items).into_response();
    if more {
        let link = format!(
            "<{base}/v2/organizations/{org}/agents?{}>; rel=\"next\"",
            q.page_query(page + 1, per_page)
        );
        set_header(&mut resp, "link", link);
    }
    resp
}

/// The page asked for (from 1) and its size (`per_page`, at most [`MAX_PER_PAGE`]).
fn paging(page: Option<usize>, per_page: Option<usize>) -> (usize, usize) {
    (
        page.unwrap_or(1).max(1),
        per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE),
    )
}

/// Page `page` of `all` as JSON, and whether a later page has more.
fn one_page<T, J>(
    all: &[T],
    page: usize,
    per_page: usize,
    json: impl FnMut(&T) -> J,
) -> (Vec<J>, bool) {
    let items = all
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(json)
        .collect();
    (items, all.len() > page.saturating_mul(per_page))
}

#[derive(Deserialize)]
struct BuildsQuery {
    created_from: Option<String>,
    /// Every job here ran once: with or without retried jobs, the list is the same.
    #[serde(default, rename = "include_retried_jobs")]
    _include_retried_jobs: Option<String>,
    per_page: Option<usize>,
    page: Option<usize>,
}

/// `GET /v2/organizations/{org}/builds` (`rest_api/builds.md`): the organisation's builds,
/// newest first, each with its jobs; `created_from` (ISO 8601) keeps those created at or
/// after it; `Link` paging, `per_page` at most 100.
async fn list_builds(
    AxState(shared): AxState<Arc<Shared>>,
    Path(org): Path<String>,
    Query(q): Query<BuildsQuery>,
    headers: HeaderMap,
) -> Response {
    if !org_ok(&shared, &org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let from = match q.created_from.as_deref().map(DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        Some(Err(_)) => return error(StatusCode::UNPROCESSABLE_ENTITY, "created_from is invalid"),
    };
    let base = base_url(&headers);
    let (page, per_page) = paging(q.page, q.per_page);
    let (items, more) = {
        let s = shared.lock();
        let all = s.builds(from);
        one_page(&all, page, per_page, |(number, job)| {
            build_json(&base, &org, *number, job)
        })
    };
    let mut resp = Json(items).into_response();
    if more
        && let Ok(mut next) = reqwest::Url::parse(&format!("{base}/v2/organizations/{org}/builds"))
    {
        {
            let mut pairs = next.query_pairs_mut();
            if let Some(from) = &q.created_from {
                pairs.append_pair("created_from", from);
            }
            pairs.append_pair("page", &(page + 1).to_string());
            pairs.append_pair("per_page", &per_page.to_string());
        }
        set_header(&mut resp, "link", format!("<{next}>; rel=\"next\""));
    }
    resp
}

/// A build of one job (the emulator's builds hold one job each).
fn build_json(base: &str, org: &str, number: u64, job: &JobSnapshot) -> serde_json::Value {
    json!({
        "id": job.id,
        "url": format!("{base}/v2/organizations/{org}/pipelines/app/builds/{number}"),
        "number": number,
        "state": match job.status {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Passed => "passed",
            JobStatus::Failed | JobStatus::Lost => "failed",
            JobStatus::Canceled => "canceled",
            _ => "running",
        },
        "created_at": job.scheduled_at,
        "scheduled_at": job.scheduled_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "pipeline": { "slug": "app" },
        "jobs": [webhook::job_json(job)],
    })
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
    /// `rest_api/agents.md`: defaults to true.
    #[serde(default = "default_force")]
    force: bool,
}

fn default_force() -> bool {
    true
}

async fn stop_agent(
    AxState(shared): AxState<Arc<Shared>>,
    Path((org, id)): Path<(String, String)>,
    body: Option<Json<StopBody>>,
) -> Response {
    if !org_ok(&shared, &org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let force = body.is_none_or(|b| b.force);
    let result = shared.lock().stop(&id, force, Utc::now());
    match result {
        Ok(events) => {
            shared.emit(events);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(Refusal::Unknown) => error(StatusCode::NOT_FOUND, "No agent found"),
        Err(r) => refusal(r),
    }
}

async fn pause_agent(
    AxState(shared): AxState<Arc<Shared>>,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    set_paused(&shared, &org, &id, true)
}

async fn resume_agent(
    AxState(shared): AxState<Arc<Shared>>,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    set_paused(&shared, &org, &id, false)
}

fn set_paused(shared: &Shared, org: &str, id: &str, paused: bool) -> Response {
    if !org_ok(shared, org) {
        return error(StatusCode::NOT_FOUND, "No organization found");
    }
    let result = shared.lock().set_paused(id, paused);
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(Refusal::Unknown) => error(StatusCode::NOT_FOUND, "No agent found"),
        Err(r) => refusal(r),
    }
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

/// Every field is required (`agent_api/stacks.md`); a missing one is a 422.
#[derive(Deserialize)]
struct RegisterStack {
    key: String,
    #[serde(rename = "type")]
    kind: String,
    queue_key: String,
    metadata: serde_json::Map<String, serde_json::Value>,
}

async fn register_stack(
    AxState(shared): AxState<Arc<Shared>>,
    Json(body): Json<RegisterStack>,
) -> Response {
    let result = shared.lock().register_stack(
        &body.key,
        &body.kind,
        &body.queue_key,
        body.metadata,
        Utc::now(),
    );
    match result {
        Ok((stack, true)) => (StatusCode::CREATED, Json(stack_json(&stack))).into_response(),
        Ok((stack, false)) => Json(stack_json(&stack)).into_response(),
        Err(r) => refusal(r),
    }
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
    let Some(queue_key) = q.queue_key.filter(|k| !k.is_empty()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "queue_key is required");
    };
    let limit = q.limit.unwrap_or(DEFAULT_JOBS_PAGE).clamp(1, MAX_JOBS_PAGE);
    let page = shared.lock().scheduled_jobs(
        &key,
        &queue_key,
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
                "cluster_queue": { "id": page.queue_id, "dispatch_paused": page.dispatch_paused },
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
    if body.job_uuids.len() > MAX_RESERVE_IDS {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 1000 job_uuids per request",
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
