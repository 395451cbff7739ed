//! The routes `buildkite-agent start` calls, in the shapes of its `api` package: register
//! with the agent (registration) token, then with the access token it got: connect, ping,
//! heartbeat, accept or acquire a job, start it, upload its log in gzip chunks and its header
//! times, read its state, finish it, disconnect.
//!
//! The streaming ping endpoint (a ConnectRPC service at the endpoint's root) is not served:
//! its 404 makes the agent fall back to polling `GET /ping`.

use std::io::Read as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::server::{Shared, refusal};
use super::state::{
    Event, JobPayload, LOG_MAX_BYTES, MetaData, PingAnswer, Refusal, Registration, State,
};
use crate::serve::{self, error};

/// `chunks_max_size_bytes` told to agents with each job.
const CHUNK_MAX_BYTES: u64 = 100 * 1024;
/// Largest decompressed chunk accepted.
const CHUNK_LIMIT: u64 = 4 * CHUNK_MAX_BYTES;

/// The routes, relative to the agent endpoint `/v3`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v3/register", post(register))
        .route("/v3/connect", post(connect))
        .route("/v3/disconnect", post(disconnect))
        .route("/v3/ping", get(ping))
        .route("/v3/heartbeat", post(heartbeat))
        .route("/v3/jobs/{id}", get(job_state))
        .route("/v3/jobs/{id}/accept", put(accept))
        .route("/v3/jobs/{id}/acquire", put(acquire))
        .route("/v3/jobs/{id}/start", put(start))
        .route("/v3/jobs/{id}/chunks", post(chunk))
        .route("/v3/jobs/{id}/header_times", post(header_times))
        .route("/v3/jobs/{id}/finish", put(finish))
        .route("/v3/jobs/{id}/data/{op}", post(meta_data))
}

/// What an agent sends to register (`AgentRegisterRequest`; the fields the emulator uses).
#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    meta_data: Vec<String>,
    #[serde(default)]
    ignore_in_dispatches: bool,
}

async fn register(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Response {
    let mut s = shared.lock();
    let ok = serve::authorization(&headers, "Token ").is_some_and(|t| s.agent_token_ok(t));
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Invalid agent registration token");
    }
    let intervals = s.intervals;
    let r = s.register(
        Registration {
            name: body.name,
            hostname: body.hostname,
            version: if body.version.is_empty() {
                "unknown".to_owned()
            } else {
                body.version
            },
            meta_data: body.meta_data,
            ignore_in_dispatches: body.ignore_in_dispatches,
        },
        Utc::now(),
        Instant::now(),
    );
    Json(json!({
        "id": r.id,
        "name": r.name,
        "access_token": r.access_token,
        "meta_data": r.meta_data,
        "ping_interval": intervals.ping,
        "job_status_interval": intervals.job_status,
        "heartbeat_interval": intervals.heartbeat,
    }))
    .into_response()
}

fn access_token(headers: &HeaderMap) -> Option<&str> {
    serve::authorization(headers, "Token ")
}

/// Runs an agent call with its access token; `answer` turns its result into the response.
fn with_agent<T>(
    shared: &Shared,
    headers: &HeaderMap,
    call: impl FnOnce(&mut State, &str) -> Result<T, Refusal>,
    answer: impl FnOnce(&Shared, T) -> Response,
) -> Response {
    let Some(token) = access_token(headers) else {
        return refusal(Refusal::Unauthorized);
    };
    let result = call(&mut shared.lock(), token);
    match result {
        Ok(v) => answer(shared, v),
        Err(r) => refusal(r),
    }
}

/// Emits the call's events and answers 204.
fn emitted(shared: &Shared, events: Vec<Event>) -> Response {
    shared.emit(events);
    StatusCode::NO_CONTENT.into_response()
}

async fn connect(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    with_agent(
        &shared,
        &headers,
        |s, t| s.connect(t, Utc::now(), Instant::now()),
        emitted,
    )
}

async fn disconnect(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    with_agent(
        &shared,
        &headers,
        |s, t| s.disconnect(t, Utc::now(), Instant::now()),
        emitted,
    )
}

async fn ping(AxState(shared): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    with_agent(
        &shared,
        &headers,
        |s, t| s.ping(t, Instant::now()),
        |_, answer| {
            Json(match answer {
                PingAnswer::Idle => json!({ "action": "idle" }),
                PingAnswer::Job(id) => json!({ "job": { "id": id } }),
                PingAnswer::Pause => json!({ "action": "pause", "message": "Agent is paused" }),
                PingAnswer::Disconnect => json!({ "action": "disconnect" }),
            })
            .into_response()
        },
    )
}

#[derive(Deserialize)]
struct HeartbeatBody {
    #[serde(default)]
    sent_at: String,
}

async fn heartbeat(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    body: Option<Json<HeartbeatBody>>,
) -> Response {
    let sent_at = body.map(|b| b.0.sent_at).unwrap_or_default();
    with_agent(
        &shared,
        &headers,
        |s, t| s.heartbeat(t, Instant::now()),
        |_, ()| Json(json!({ "sent_at": sent_at, "received_at": Utc::now() })).into_response(),
    )
}

/// A job as `accept` and `acquire` return it (the agent's `api.Job`).
fn job_json(p: JobPayload) -> Response {
    Json(json!({
        "id": p.id,
        "state": p.state,
        "env": p.env,
        "runnable_at": p.runnable_at,
        "chunks_max_size_bytes": CHUNK_MAX_BYTES,
        "chunks_interval_seconds": 1,
        "log_max_size_bytes": LOG_MAX_BYTES,
    }))
    .into_response()
}

async fn accept(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    take_job(&shared, &headers, &id, false)
}

async fn acquire(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    take_job(&shared, &headers, &id, true)
}

/// Accept (a job a ping assigned) or acquire (`--acquire-job`): the job in the answer.
fn take_job(shared: &Shared, headers: &HeaderMap, id: &str, acquire: bool) -> Response {
    with_agent(
        shared,
        headers,
        |s, t| {
            if acquire {
                s.acquire(t, id, Instant::now())
            } else {
                s.accept(t, id, Instant::now())
            }
        },
        |_, p| job_json(p),
    )
}

async fn start(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    with_agent(
        &shared,
        &headers,
        |s, t| s.start(t, &id, Utc::now(), Instant::now()),
        emitted,
    )
}

#[derive(Deserialize)]
struct ChunkQuery {
    #[serde(default)]
    offset: u64,
}

/// A gzip-compressed piece of the log (`Content-Encoding: gzip`), at `offset`.
async fn chunk(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<ChunkQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let data = if gzip {
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&body[..])
            .take(CHUNK_LIMIT + 1)
            .read_to_end(&mut out);
        match read {
            Ok(n) if n as u64 <= CHUNK_LIMIT => out,
            Ok(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "chunk too large"),
            Err(_) => return error(StatusCode::BAD_REQUEST, "chunk is not gzip"),
        }
    } else {
        body.to_vec()
    };
    with_agent(
        &shared,
        &headers,
        |s, t| s.chunk(t, &id, q.offset, data, Instant::now()),
        |_, ()| StatusCode::NO_CONTENT.into_response(),
    )
}

#[derive(Deserialize)]
struct HeaderTimesBody {
    #[serde(default)]
    header_times: std::collections::BTreeMap<String, String>,
}

async fn header_times(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<HeaderTimesBody>,
) -> Response {
    let n = body.header_times.len();
    with_agent(
        &shared,
        &headers,
        |s, t| s.header_times(t, &id, n, Instant::now()),
        |_, ()| StatusCode::NO_CONTENT.into_response(),
    )
}

async fn job_state(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    with_agent(
        &shared,
        &headers,
        |s, t| s.job_state(t, &id, Instant::now()),
        |_, state| Json(json!({ "state": state })).into_response(),
    )
}

#[derive(Deserialize, Default)]
struct MetaDataBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

/// `POST /jobs/{id}/data/set {key, value}` (204), `get {key}` (→ `{key, value}`, 404 when
/// unset), `exists {key}` (→ `{exists}`), `keys` (→ `[key, …]`).
async fn meta_data(
    AxState(shared): AxState<Arc<Shared>>,
    Path((id, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<MetaDataBody>>,
) -> Response {
    let body = body.map(|b| b.0).unwrap_or_default();
    let key = body.key.filter(|k| !k.is_empty());
    let (key, set) = match op.as_str() {
        "set" => match (key, body.value) {
            (Some(k), Some(v)) => (Some(k), Some(v)),
            _ => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "key and value are required",
                );
            }
        },
        "get" | "exists" => match key {
            Some(k) => (Some(k), None),
            None => return error(StatusCode::UNPROCESSABLE_ENTITY, "key is required"),
        },
        "keys" => (None, None),
        _ => return refusal(Refusal::Unknown),
    };
    let asked = key.clone();
    with_agent(
        &shared,
        &headers,
        |s, t| s.meta_data(t, &id, key.as_deref(), set, Instant::now()),
        |_, answer| match (op.as_str(), answer) {
            ("set", _) => StatusCode::NO_CONTENT.into_response(),
            ("exists", MetaData::Value(v)) => {
                Json(json!({ "exists": v.is_some() })).into_response()
            }
            ("get", MetaData::Value(Some(v))) => {
                Json(json!({ "key": asked, "value": v })).into_response()
            }
            ("get", _) => error(StatusCode::NOT_FOUND, "No key found"),
            (_, MetaData::Keys(keys)) => Json(keys).into_response(),
            (_, MetaData::Value(_)) => refusal(Refusal::Unknown),
        },
    )
}

/// `JobFinishRequest`: the exit status is a string (`"0"`, `"-1"`).
#[derive(Deserialize)]
struct FinishBody {
    #[serde(default)]
    exit_status: Option<String>,
    #[serde(default)]
    ignore_agent_in_dispatches: Option<bool>,
}

async fn finish(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FinishBody>,
) -> Response {
    let exit = body.exit_status.and_then(|s| s.trim().parse::<i32>().ok());
    let ignore = body.ignore_agent_in_dispatches.unwrap_or(false);
    with_agent(
        &shared,
        &headers,
        |s, t| s.finish(t, &id, exit, ignore, Utc::now(), Instant::now()),
        emitted,
    )
}
