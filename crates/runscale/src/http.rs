//! The HTTP interface: health, readiness, metrics, the pools API and webhooks.
//!
//! [`router`] builds the whole service from an [`AppState`] and never opens a socket, so tests
//! drive it with `tower::ServiceExt::oneshot`; [`crate::daemon`] serves it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the status page (HTML, refreshes itself) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 once every pool has completed a pass, else 503 |
//! | `GET /metrics` | the registry in the OpenMetrics text format |
//! | `GET /api/v1/pools` | JSON array of every pool's status |
//! | `POST /webhooks/{provider}` | see below |
//!
//! [`crate::daemon`] adds `GET /api/v1/leader` (this replica's view of the election) and answers
//! `/readyz` on a standby replica, which is ready without reconciling.
//!
//! Webhooks: the body is limited to 1 MiB (413 beyond). The delivery is handed to the
//! provider configured under that name, which verifies and parses it; the pools it names are
//! woken. Answers: 202 `{"woke": [pools]}`; 404 for an unknown provider; 401 when the
//! provider rejects the delivery's authentication (signature or token missing or wrong, or no
//! webhook secret configured: error kind `misconfigured`); 400 when the delivery is malformed
//! (kind `protocol`); 500 otherwise. Error answers are fixed texts: neither the body nor the
//! provider's message is echoed (the message is logged).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use runscale_core::reconciler::Handle;
use runscale_core::{ErrorKind, WebhookRequest};
use serde_json::json;
use tracing::{debug, warn};

/// Largest webhook body accepted.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The reconciler.
    pub handle: Handle,
    /// The metrics registry.
    pub registry: Arc<Registry>,
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/pools", get(pools))
        .route(
            "/webhooks/{provider}",
            post(webhook).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .with_state(state)
}

async fn status_page(State(state): State<AppState>) -> Response {
    let page = crate::status_page::render(
        &state.handle.status(),
        &state.handle.budgets(),
        chrono::Utc::now(),
        env!("CARGO_PKG_VERSION"),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.handle.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: some pool has not completed its first pass",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            warn!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}

async fn pools(State(state): State<AppState>) -> Response {
    axum::Json(state.handle.status()).into_response()
}

async fn webhook(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = WebhookRequest {
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                // Header names from `http` are already lower case.
                value
                    .to_str()
                    .ok()
                    .map(|v| (name.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    };
    match state.handle.webhook(&provider, &request) {
        Ok(woke) => {
            debug!(provider = %provider, pools = woke.len(), "webhook accepted");
            (StatusCode::ACCEPTED, axum::Json(json!({ "woke": woke }))).into_response()
        }
        Err(e) => {
            let (status, text) = match e.kind() {
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "no such provider"),
                ErrorKind::Misconfigured => (
                    StatusCode::UNAUTHORIZED,
                    "delivery rejected: authentication missing or invalid",
                ),
                ErrorKind::Protocol => (StatusCode::BAD_REQUEST, "malformed delivery"),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "delivery could not be handled",
                ),
            };
            warn!(provider = %provider, status = status.as_u16(), error = %e, "webhook rejected");
            (status, axum::Json(json!({ "error": text }))).into_response()
        }
    }
}
