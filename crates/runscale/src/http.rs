//! The HTTP interface: health, readiness, metrics, the pools API and webhooks.
//!
//! [`router`] builds the whole service from an [`AppState`] and never opens a socket, so tests
//! drive it with `tower::ServiceExt::oneshot`; [`crate::daemon`] serves it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the status page (HTML, refreshes itself) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 once every pool has completed a pass and none has stalled (no pass completed or under way for three intervals, and at least the longest back-off plus one), else 503 naming the pool |
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
//! provider's message is echoed (the message is logged: at WARN level for the first rejection
//! and then at most once a minute, with the number left out, otherwise at debug level). Every
//! delivery is counted in `runscale_webhook_deliveries{provider, outcome}`.
//!
//! Connection and time limits are the server's: [`crate::server`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// At most one WARN line for rejected webhooks per this period.
const REJECTION_WARN_EVERY: Duration = Duration::from_secs(60);

/// When rejected webhooks were last logged at WARN level, and how many were not since.
static REJECTIONS: Mutex<RejectionLog> = Mutex::new(RejectionLog {
    last: None,
    left_out: 0,
});

/// Decides which rejections are worth a WARN line: the first, then one per
/// [`REJECTION_WARN_EVERY`].
#[derive(Debug)]
struct RejectionLog {
    last: Option<Instant>,
    left_out: u64,
}

impl RejectionLog {
    /// `Some(n)` when this rejection gets a WARN line (`n` were logged at debug level since
    /// the last one), else `None`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < REJECTION_WARN_EVERY => {
                self.left_out = self.left_out.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.left_out))
            }
        }
    }
}

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
    match state.handle.not_ready() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
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
            // Anyone can send requests: one WARN a minute at most (with the count left out),
            // every delivery counted in runscale_webhook_deliveries.
            let now = Instant::now();
            match REJECTIONS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(now)
            {
                Some(left_out) => warn!(
                    provider = %provider,
                    status = status.as_u16(),
                    error = %e,
                    rejections_not_logged = left_out,
                    "webhook rejected (further rejections within a minute are logged at debug \
                     level; all are counted in runscale_webhook_deliveries)"
                ),
                None => {
                    debug!(provider = %provider, status = status.as_u16(), error = %e, "webhook rejected")
                }
            }
            (status, axum::Json(json!({ "error": text }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_get_one_warn_line_a_minute_with_the_count_left_out() {
        let mut log = RejectionLog {
            last: None,
            left_out: 0,
        };
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        for i in 1..=5_000u64 {
            assert_eq!(log.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(log.admit(t0 + REJECTION_WARN_EVERY), Some(5_001));
        assert_eq!(log.admit(t0 + REJECTION_WARN_EVERY * 3), Some(0));
    }
}
