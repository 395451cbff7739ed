//! Every GitHub failure mapped to a core [`ErrorKind`], in one place: HTTP statuses, rate-limit
//! answers, transport failures and undecodable bodies.
//!
//! Messages carry GitHub's own `message` (shortened) and never a token: requests' headers are
//! not part of any error.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use runscale_core::{Error, ErrorKind};

/// The rate-limit headers of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`, UTC epoch seconds.
    pub reset: Option<i64>,
    /// `retry-after`, in seconds.
    pub retry_after: Option<Duration>,
}

impl RateHeaders {
    /// Reads the headers (absent or malformed ones are `None`).
    pub(crate) fn from_headers(h: &HeaderMap) -> Self {
        fn num<T: std::str::FromStr>(h: &HeaderMap, name: &str) -> Option<T> {
            h.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        Self {
            remaining: num(h, "x-ratelimit-remaining"),
            reset: num(h, "x-ratelimit-reset"),
            retry_after: num::<u64>(h, "retry-after").map(Duration::from_secs),
        }
    }
}

/// How GitHub throttled a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// The primary (hourly) budget is spent: wait until `reset` (epoch seconds), if known.
    Primary {
        /// When the budget refills.
        reset: Option<i64>,
    },
    /// A secondary limit: wait `retry_after` if GitHub said, else back off exponentially.
    Secondary {
        /// GitHub's `retry-after`.
        retry_after: Option<Duration>,
    },
}

/// Whether a response is a rate-limit answer, and which. GitHub answers 403 or 429; a
/// `retry-after` header means a secondary limit, `x-ratelimit-remaining: 0` the primary one; a
/// 429 (or a 403 whose message speaks of a rate limit) without either is a secondary limit.
pub(crate) fn throttle(status: StatusCode, rate: &RateHeaders, message: &str) -> Option<Throttle> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    if let Some(retry_after) = rate.retry_after {
        return Some(Throttle::Secondary {
            retry_after: Some(retry_after),
        });
    }
    if rate.remaining == Some(0) {
        return Some(Throttle::Primary { reset: rate.reset });
    }
    if status == StatusCode::TOO_MANY_REQUESTS || message.to_lowercase().contains("rate limit") {
        return Some(Throttle::Secondary { retry_after: None });
    }
    None
}

/// GitHub's `message` from an error body, shortened to one printable line. Empty when the
/// body is not GitHub's JSON error shape.
pub(crate) fn github_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        message: Option<String>,
    }
    let msg = serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_default();
    shorten(&msg, 200)
}

/// At most `max` characters of `s`, control characters replaced by spaces.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// The error for a non-success status that is not a rate limit. `message` is GitHub's
/// (already shortened).
pub(crate) fn status_error(op: &'static str, status: StatusCode, message: &str) -> Error {
    let code = status.as_u16();
    let (kind, what) = match code {
        401 => (ErrorKind::Misconfigured, "credentials rejected"),
        403 => (
            ErrorKind::Misconfigured,
            "permission denied (check the token's scopes or the App's permissions)",
        ),
        404 => (ErrorKind::NotFound, "not found"),
        409 => (ErrorKind::Protocol, "conflict"),
        422 => (ErrorKind::Protocol, "validation failed"),
        408 | 500..=599 => (ErrorKind::Transient, "server error"),
        _ => (ErrorKind::Protocol, "unexpected status"),
    };
    let text = if message.is_empty() {
        format!("HTTP {code}: {what}")
    } else {
        format!("HTTP {code}: {what}: {message}")
    };
    Error::new(op, kind, text)
}

/// The error for a request that got no response.
pub(crate) fn transport_error(op: &'static str, e: reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "response interrupted"
    } else {
        "request failed"
    };
    // reqwest's Display may include the URL, never headers; the URL carries no secret.
    let text = format!("{what}: {e}");
    Error::new(op, ErrorKind::Transient, text).with_source(e)
}

/// The error for a body that is not the JSON expected.
pub(crate) fn decode_error(op: &'static str, what: &str, e: serde_json::Error) -> Error {
    Error::new(
        op,
        ErrorKind::Protocol,
        format!("unexpected {what} from GitHub: {e}"),
    )
    .with_source(e)
}

/// The error for a rate-limited request.
pub(crate) fn rate_limited(op: &'static str, retry_after: Duration, why: &str) -> Error {
    Error::new(
        op,
        ErrorKind::RateLimited {
            retry_after: Some(retry_after),
        },
        format!(
            "{why}; requests paused for {}s",
            retry_after.as_secs().max(1)
        ),
    )
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> RateHeaders {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        RateHeaders::from_headers(&h)
    }

    #[test]
    fn statuses_map_to_kinds() {
        let k = |code: u16| status_error("t", StatusCode::from_u16(code).expect("code"), "").kind();
        assert_eq!(k(401), ErrorKind::Misconfigured);
        assert_eq!(k(403), ErrorKind::Misconfigured);
        assert_eq!(k(404), ErrorKind::NotFound);
        assert_eq!(k(409), ErrorKind::Protocol);
        assert_eq!(k(422), ErrorKind::Protocol);
        assert_eq!(k(500), ErrorKind::Transient);
        assert_eq!(k(502), ErrorKind::Transient);
        assert_eq!(k(503), ErrorKind::Transient);
        assert_eq!(k(418), ErrorKind::Protocol);
    }

    #[test]
    fn rate_limit_answers_are_classified() {
        let forbidden = StatusCode::FORBIDDEN;
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            throttle(
                forbidden,
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1700000000")
                ]),
                "API rate limit exceeded"
            ),
            Some(Throttle::Primary {
                reset: Some(1_700_000_000)
            })
        );
        assert_eq!(
            throttle(
                too_many,
                &headers(&[("retry-after", "30"), ("x-ratelimit-remaining", "4000")]),
                ""
            ),
            Some(Throttle::Secondary {
                retry_after: Some(Duration::from_secs(30))
            })
        );
        assert_eq!(
            throttle(too_many, &headers(&[("x-ratelimit-remaining", "10")]), ""),
            Some(Throttle::Secondary { retry_after: None })
        );
        assert_eq!(
            throttle(
                forbidden,
                &headers(&[]),
                "You have exceeded a secondary rate limit"
            ),
            Some(Throttle::Secondary { retry_after: None })
        );
        assert_eq!(
            throttle(
                forbidden,
                &headers(&[("x-ratelimit-remaining", "10")]),
                "Must have admin rights"
            ),
            None,
            "a plain 403 is a permission problem"
        );
        assert_eq!(
            throttle(
                StatusCode::INTERNAL_SERVER_ERROR,
                &headers(&[("retry-after", "5")]),
                ""
            ),
            None
        );
    }

    #[test]
    fn malformed_headers_are_ignored() {
        let h = headers(&[("x-ratelimit-remaining", "lots"), ("retry-after", "-3")]);
        assert_eq!(h, RateHeaders::default());
    }

    #[test]
    fn github_messages_are_extracted_and_shortened() {
        assert_eq!(
            github_message(br#"{"message":"Not Found","documentation_url":"x"}"#),
            "Not Found"
        );
        assert_eq!(github_message(b"<html>oops</html>"), "");
        let long = format!(r#"{{"message":"{}\n"}}"#, "a".repeat(300));
        let m = github_message(long.as_bytes());
        assert_eq!(m.chars().count(), 201);
        assert!(!m.contains('\n'));
    }

    #[test]
    fn messages_name_status_and_github_message() {
        let e = status_error("github.remove", StatusCode::NOT_FOUND, "Not Found");
        assert_eq!(e.message(), "HTTP 404: not found: Not Found");
        let e = rate_limited("github.observe", Duration::from_millis(10), "secondary");
        assert!(matches!(
            e.kind(),
            ErrorKind::RateLimited {
                retry_after: Some(_)
            }
        ));
    }
}
