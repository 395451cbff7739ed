//! What every GitHub REST request goes through, in order: injected latency; authentication
//! (401 in GitHub's shape); injected faults (429 burst with `retry-after`, 502/503); the
//! primary rate limit (403 with `x-ratelimit-remaining: 0` when exhausted); the handler;
//! `ETag` / `If-None-Match` on successful GETs (a 304 does not use the rate limit); and the
//! `x-ratelimit-*` headers on every response.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::auth::{bearer, verify_app_jwt};
use super::error::{ApiError, DOC_RATE, DOC_REST};
use super::server::Shared;
use super::state::{ApiFault, Principal, RateInfo};

/// Largest response body buffered to compute an ETag.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Whether a path is one of the App endpoints that take a JWT instead of a token.
fn needs_jwt(path: &str) -> bool {
    path.starts_with("/app/") || path == "/app" || path.ends_with("/installation")
}

fn set_rate_headers(headers: &mut HeaderMap, info: RateInfo) {
    let pairs = [
        ("x-ratelimit-limit", info.limit.to_string()),
        ("x-ratelimit-remaining", info.remaining.to_string()),
        ("x-ratelimit-used", info.used().to_string()),
        ("x-ratelimit-reset", info.reset_epoch.to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static("2022-11-28"),
    );
}

/// The limits shown to unauthenticated callers (not enforced: they get 401 anyway).
fn anonymous(reset_epoch: i64) -> RateInfo {
    RateInfo {
        limit: 60,
        remaining: 60,
        reset_epoch,
    }
}

fn with_rate(resp: impl IntoResponse, info: RateInfo) -> Response {
    let mut resp = resp.into_response();
    set_rate_headers(resp.headers_mut(), info);
    resp
}

fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("W/\"{}\"", hex::encode(&digest[..20]))
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let wanted = strip(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == wanted)
}

/// The middleware (see the module docs).
pub(crate) async fn github_layer(
    State(shared): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let latency = shared.with_state(|s, _| s.faults.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = req.uri().path().to_owned();
    let hour_from_now = chrono::Utc::now().timestamp() + 3600;

    // Authentication.
    let Some(token) = bearer(req.headers()).map(str::to_owned) else {
        return with_rate(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Requires authentication",
                DOC_REST,
            ),
            anonymous(hour_from_now),
        );
    };
    let principal = if needs_jwt(&path) {
        let now = chrono::Utc::now().timestamp();
        match shared.with_state(|s, _| verify_app_jwt(s.app.as_ref(), &token, now)) {
            Ok(()) => Principal::App,
            Err(e) => return with_rate(e, anonymous(hour_from_now)),
        }
    } else {
        match shared.with_state(|s, now| s.principal_for_token(&token, now)) {
            Some(p) => p,
            None => return with_rate(ApiError::bad_credentials(), anonymous(hour_from_now)),
        }
    };
    let bucket = principal.bucket().to_owned();
    let free = path == "/rate_limit";

    // Faults, then the primary limit.
    let (fault, info) = shared.with_state(|s, now| {
        s.rest_requests += 1;
        (s.draw_api_fault(), s.rate_info(&bucket, now))
    });
    match fault {
        Some(ApiFault::SecondaryLimit(retry_after)) => {
            let mut resp = with_rate(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before \
                     you try again.",
                    DOC_RATE,
                ),
                info,
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        Some(ApiFault::ServerError(status)) => {
            let message = if status == StatusCode::BAD_GATEWAY {
                "Server Error"
            } else {
                "Service Unavailable"
            };
            return with_rate(ApiError::new(status, message, DOC_REST), info);
        }
        None => {}
    }
    if !free && info.remaining == 0 {
        let who = match &principal {
            Principal::Token { bucket, .. } => bucket.replace(':', " ID "),
            Principal::App => "app".to_owned(),
        };
        return with_rate(
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("API rate limit exceeded for {who}."),
                DOC_RATE,
            ),
            info,
        );
    }

    let is_get = req.method() == Method::GET;
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;

    if is_get && resp.status() == StatusCode::OK {
        let (mut parts, body) = resp.into_parts();
        let bytes = match to_bytes(body, MAX_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Server Error", DOC_REST)
                    .into_response();
            }
        };
        let etag = etag_of(&bytes);
        if let Ok(v) = HeaderValue::from_str(&etag) {
            parts.headers.insert(header::ETAG, v);
        }
        parts.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=60, s-maxage=60"),
        );
        parts.headers.insert(
            header::VARY,
            HeaderValue::from_static("Accept, Authorization, Cookie, X-GitHub-OTP"),
        );
        if if_none_match.is_some_and(|inm| etag_matches(&inm, &etag)) {
            parts.status = StatusCode::NOT_MODIFIED;
            parts.headers.remove(header::CONTENT_TYPE);
            parts.headers.remove(header::CONTENT_LENGTH);
            resp = Response::from_parts(parts, Body::empty());
        } else {
            resp = Response::from_parts(parts, Body::from(bytes));
        }
    }

    let info = shared.with_state(|s, now| {
        if free || resp.status() == StatusCode::NOT_MODIFIED {
            s.rate_info(&bucket, now)
        } else {
            s.consume(&bucket, now)
        }
    });
    set_rate_headers(resp.headers_mut(), info);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_weak_strong_lists_and_star() {
        let tag = etag_of(b"{}");
        assert!(tag.starts_with("W/\""));
        assert!(etag_matches(&tag, &tag));
        assert!(etag_matches(&tag.replace("W/", ""), &tag));
        assert!(etag_matches(&format!("\"x\", {tag}"), &tag));
        assert!(etag_matches("*", &tag));
        assert!(!etag_matches("\"other\"", &tag));
    }

    #[test]
    fn app_endpoints_need_a_jwt() {
        assert!(needs_jwt("/app/installations/1/access_tokens"));
        assert!(needs_jwt("/orgs/o/installation"));
        assert!(needs_jwt("/repos/o/r/installation"));
        assert!(!needs_jwt("/orgs/o/actions/runners"));
        assert!(!needs_jwt("/application"));
    }
}
