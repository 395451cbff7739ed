//! The emulator's own API under `/_emulator`: the runner protocol spoken by the fake agent,
//! and a small admin surface for driving a standalone emulator.
//!
//! Real runners talk to GitHub's private broker; this is a small documented stand-in.
//! Runner calls carry `Authorization: Bearer <runner token>` (the `token` of the JIT config):
//!
//! | call | answers |
//! |---|---|
//! | `POST /_emulator/runners/register` `{url, token, name, labels, ephemeral?, replace?}` (a registration token, like `config.sh`) | 201 `{encoded_jit_config}`; 401 bad token; 409 name taken |
//! | `POST /_emulator/runner/connect` | 200 `{runner_id, runner_name, heartbeat_interval_ms, poll_wait_ms}`: the runner is online |
//! | `POST /_emulator/runner/heartbeat` | 200 `{}` |
//! | `GET /_emulator/runner/job?wait_ms=N` (long-poll, also a heartbeat) | 200 assignment `{job_id, run_id, repo, name, labels, run_ms}`, or 204 after the wait |
//! | `POST /_emulator/runner/jobs/{job_id}/complete` `{conclusion}` | 200 `{removed}` (ephemeral runners are removed); 409 not this runner's job |
//! | `POST /_emulator/runner/disconnect` | 200: offline; 409 `{job}` while busy (finish it first) |
//!
//! Every runner call answers 404 once the runner is removed (deleted through the REST API,
//! or ephemeral and done): the agent then exits.
//!
//! Admin (no authentication; the emulator is meant for loopback): `POST /_emulator/jobs`
//! `{"jobs": [JobSpec...]}` queues one run (201, job refs); `GET /_emulator/snapshot`;
//! `GET /_emulator/violations`; `POST /_emulator/check` (records and returns violations for
//! unfinished jobs).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::bearer;
use super::error::{ApiError, DOC_REST};
use super::model::{Conclusion, JobSpec};
use super::server::Shared;
use super::state::{NewRunner, RunnerApiError};

/// The `/_emulator` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_emulator/runners/register", post(register))
        .route("/_emulator/runner/connect", post(connect))
        .route("/_emulator/runner/heartbeat", post(heartbeat))
        .route("/_emulator/runner/job", get(poll))
        .route("/_emulator/runner/jobs/{job_id}/complete", post(complete))
        .route("/_emulator/runner/disconnect", post(disconnect))
        .route("/_emulator/jobs", post(enqueue))
        .route("/_emulator/snapshot", get(snapshot))
        .route("/_emulator/violations", get(violations))
        .route("/_emulator/check", post(check))
}

fn error(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message, DOC_REST).into_response()
}

fn gone() -> Response {
    error(StatusCode::NOT_FOUND, "runner not found")
}

fn runner_error(e: RunnerApiError) -> Response {
    match e {
        RunnerApiError::Gone => gone(),
        RunnerApiError::Busy(job) => (
            StatusCode::CONFLICT,
            Json(json!({"message": "runner is busy; finish the job first", "job": job})),
        )
            .into_response(),
        RunnerApiError::NotAssigned => {
            error(StatusCode::CONFLICT, "job is not assigned to this runner")
        }
    }
}

/// The runner a request authenticates as.
fn runner_id(shared: &Shared, headers: &HeaderMap) -> Option<u64> {
    let token = bearer(headers)?;
    shared.with_state(|s, _| s.runner_by_secret(token))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    url: String,
    token: String,
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    replace: bool,
    #[serde(default = "default_group")]
    runner_group_id: u64,
}

fn default_group() -> u64 {
    1
}

async fn register(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<RegisterBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    // The URL is like `config.sh --url`: `<emulator>/<owner>[/<repo>]`.
    let path = body
        .url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let result = shared.with_state(|s, now| {
        let scope = s.scope_from_path(path)?;
        let spec = NewRunner {
            name: body.name,
            group_id: body.runner_group_id,
            labels: body.labels,
            ephemeral: body.ephemeral,
        };
        let id = s.register_runner(&body.token, scope, spec, body.replace, now)?;
        s.jit_config(id)
            .ok_or_else(|| ApiError::not_found(DOC_REST))
    });
    match result {
        Ok(jit) => (
            StatusCode::CREATED,
            Json(json!({"runner_id": jit.runner_id, "encoded_jit_config": jit.encode()})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn connect(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(id) = runner_id(&shared, &headers) else {
        return gone();
    };
    let result = shared.with_state(|s, now| {
        s.heartbeat(id, now)?;
        let r = &s.runners[&id];
        Ok::<_, RunnerApiError>(json!({
            "runner_id": r.id,
            "runner_name": r.name,
            "heartbeat_interval_ms": s.timeouts.heartbeat_interval.as_millis() as u64,
            "poll_wait_ms": s.timeouts.poll_wait.as_millis() as u64,
        }))
    });
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => runner_error(e),
    }
}

async fn heartbeat(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(id) = runner_id(&shared, &headers) else {
        return gone();
    };
    match shared.with_state(|s, now| s.heartbeat(id, now)) {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => runner_error(e),
    }
}

#[derive(Deserialize)]
struct PollQuery {
    wait_ms: Option<u64>,
}

async fn poll(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<PollQuery>,
) -> Response {
    let Some(id) = runner_id(&shared, &headers) else {
        return gone();
    };
    let max_wait = shared.with_state(|s, _| s.timeouts.poll_wait);
    let wait = q
        .wait_ms
        .map_or(max_wait, |ms| Duration::from_millis(ms).min(max_wait));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = shared.changed.subscribe();
    loop {
        // Mark the current generation seen before looking, so no wake-up is missed.
        changes.borrow_and_update();
        match shared.with_state(|s, now| s.poll(id, now)) {
            Ok(Some(job)) => return Json(job).into_response(),
            Ok(None) => {}
            Err(e) => return runner_error(e),
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shared.cancel.cancelled() => break,
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct CompleteBody {
    conclusion: Conclusion,
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(job_id): Path<u64>,
    body: Bytes,
) -> Response {
    let Some(id) = runner_id(&shared, &headers) else {
        return gone();
    };
    let Ok(body) = serde_json::from_slice::<CompleteBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    match shared.with_state(|s, now| s.complete(id, job_id, body.conclusion, now)) {
        Ok(removed) => Json(json!({"removed": removed})).into_response(),
        Err(e) => runner_error(e),
    }
}

async fn disconnect(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(id) = runner_id(&shared, &headers) else {
        return gone();
    };
    match shared.with_state(|s, _| s.disconnect(id)) {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => runner_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    jobs: Vec<JobSpec>,
}

async fn enqueue(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body = match serde_json::from_slice::<EnqueueBody>(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    match shared.with_state(|s, now| s.enqueue_run(body.jobs, now)) {
        Ok(refs) => {
            shared.notify();
            (StatusCode::CREATED, Json(refs)).into_response()
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

async fn snapshot(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.with_state(|s, now| s.snapshot(now))).into_response()
}

async fn violations(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.with_state(|s, _| s.violations())).into_response()
}

async fn check(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.with_state(|s, now| s.check_all_done(now))).into_response()
}
