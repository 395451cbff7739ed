//! HTTP plumbing the CircleCI, GitLab and Buildkite providers share: the client with its
//! timeouts, one exchange with transport failures mapped to core [`ErrorKind`]s, answers'
//! numeric headers, the status-to-kind mapping (429 with `Retry-After` included), JSON
//! decoding whose errors say where the answer went wrong, the small helpers of config
//! validation and provider construction, and the hex of webhook signatures.
//!
//! What differs per API (auth headers, paging, budgets, error bodies, hints) stays in the
//! providers. Errors never carry a token.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use runscale_core::secret::SecretRef;
use runscale_core::{Error, ErrorKind, PoolId, Result};
use secrecy::SecretString;
use serde::de::DeserializeOwned;

/// Longest error message kept from a response body.
pub(crate) const MESSAGE_MAX: usize = 200;

/// The HTTP client of a provider; `op` names it in the error when it cannot be built.
pub(crate) fn client(
    op: &'static str,
    request_timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("runscale/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            Error::new(op, ErrorKind::Misconfigured, "cannot build the HTTP client").with_source(e)
        })
}

/// The longest wait an answer can impose (`Retry-After`, rate-limit resets, poll intervals):
/// anything longer is malformed, and added to the clock it could overflow.
pub(crate) const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// A wait of `secs` seconds an answer asks for, at most [`MAX_SERVER_WAIT`].
pub(crate) fn server_wait(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_SERVER_WAIT)
}

/// An answer: status, headers and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// `Retry-After` in whole seconds, at most [`MAX_SERVER_WAIT`].
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        header_u64(&self.headers, "retry-after").map(server_wait)
    }
}

/// Whether transport errors keep the request URL in their source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceUrl {
    /// As reqwest reports it (Buildkite's and CircleCI's).
    #[cfg_attr(
        not(any(feature = "buildkite", feature = "circleci", test)),
        expect(
            dead_code,
            reason = "only the Buildkite and CircleCI clients keep URLs"
        )
    )]
    Keep,
    /// Stripped from the source error (GitLab's).
    #[cfg_attr(
        not(any(feature = "gitlab", test)),
        expect(dead_code, reason = "only the GitLab client strips URLs")
    )]
    Strip,
}

/// Sends `req` (asking for JSON) and reads the whole answer, whatever its status. A `GET` that
/// fails in transit or is answered with a 5xx is sent again (see [`crate::retry`]). A request
/// that cannot be built is `Misconfigured`; one that fails in transit, or whose answer cannot
/// be read, is `Transient`.
pub(crate) async fn exchange(
    op: &'static str,
    what: &str,
    req: reqwest::RequestBuilder,
    url: SourceUrl,
) -> Result<Answer> {
    let (client, request) = req.header("accept", "application/json").build_split();
    let request = request.map_err(|e| {
        Error::new(
            op,
            ErrorKind::Misconfigured,
            format!("{what}: request failed"),
        )
        .with_source(strip_url(e, url))
    })?;
    if request.method() != reqwest::Method::GET {
        return exchange_once(op, what, &client, request, url).await;
    }
    crate::retry::read(
        || async {
            match request.try_clone() {
                Some(r) => exchange_once(op, what, &client, r, url).await,
                // A GET has no streamed body; kept for completeness.
                None => Err(Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    format!("{what}: the request cannot be repeated"),
                )),
            }
        },
        |a: &Answer| a.status.is_server_error(),
    )
    .await
}

fn strip_url(e: reqwest::Error, url: SourceUrl) -> reqwest::Error {
    match url {
        SourceUrl::Keep => e,
        SourceUrl::Strip => e.without_url(),
    }
}

/// One exchange of [`exchange`].
async fn exchange_once(
    op: &'static str,
    what: &str,
    client: &reqwest::Client,
    request: reqwest::Request,
    url: SourceUrl,
) -> Result<Answer> {
    let resp = client.execute(request).await.map_err(|e| {
        let kind = if e.is_builder() {
            ErrorKind::Misconfigured
        } else {
            ErrorKind::Transient
        };
        Error::new(op, kind, format!("{what}: request failed")).with_source(strip_url(e, url))
    })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Error::new(
            op,
            ErrorKind::Transient,
            format!("{what}: reading the answer failed"),
        )
        .with_source(strip_url(e, url))
    })? {
        if body.len() + chunk.len() > ANSWER_MAX {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                format!("{what}: answer larger than {ANSWER_MAX} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Largest answer body read; a larger one is an error, not a memory hazard.
pub(crate) const ANSWER_MAX: usize = 32 << 20;

/// A header holding a whole number.
pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `text` on one short printable line.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MESSAGE_MAX)
        .collect()
}

/// The `message` string of a JSON error body, on one short printable line (empty without).
#[cfg(any(feature = "buildkite", feature = "circleci", feature = "gitlab"))]
pub(crate) fn json_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = match (&v["message"], &v["error"]) {
        (serde_json::Value::String(s), _) | (_, serde_json::Value::String(s)) => s.clone(),
        (m, _) if !m.is_null() => m.to_string(),
        _ => String::new(),
    };
    one_line(&text)
}

/// How one API's non-success answers map to error kinds.
#[cfg(any(feature = "buildkite", feature = "circleci", feature = "gitlab"))]
pub(crate) struct StatusMap {
    /// Appended to 401/403 errors: what to check about the credentials.
    pub(crate) auth_hint: &'static str,
    /// Whether 422 means a bad request (`Misconfigured`) rather than a `Protocol` surprise.
    pub(crate) unprocessable_is_misconfigured: bool,
}

#[cfg(any(feature = "buildkite", feature = "circleci", feature = "gitlab"))]
impl StatusMap {
    /// The error of a non-success answer: 401/403 `Misconfigured` (with the hint), 404
    /// `NotFound`, 429 `RateLimited` (with `retry_after`), 400 (and 422 where so mapped)
    /// `Misconfigured`, 5xx `Transient`, anything else `Protocol`; the message is the body's
    /// ([`json_message`]).
    pub(crate) fn error(&self, op: &'static str, what: &str, answer: &Answer) -> Error {
        let (status, retry_after) = (answer.status, answer.retry_after());
        let message = json_message(&answer.body);
        let detail = if message.is_empty() {
            format!("{what}: HTTP {status}")
        } else {
            format!("{what}: HTTP {status}: {message}")
        };
        let kind = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    format!("{detail} ({})", self.auth_hint),
                );
            }
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited { retry_after },
            StatusCode::BAD_REQUEST => ErrorKind::Misconfigured,
            StatusCode::UNPROCESSABLE_ENTITY if self.unprocessable_is_misconfigured => {
                ErrorKind::Misconfigured
            }
            s if s.is_server_error() => ErrorKind::Transient,
            _ => ErrorKind::Protocol,
        };
        Error::new(op, kind, detail)
    }
}

/// A provider's pool `id` if `found`, else `NotFound` naming the CI `system`.
#[cfg(any(feature = "buildkite", feature = "circleci", feature = "gitlab"))]
pub(crate) fn bound_pool<'a, P>(
    found: Option<&'a P>,
    op: &'static str,
    id: &PoolId,
    system: &str,
) -> Result<&'a P> {
    found.ok_or_else(|| {
        Error::new(
            op,
            ErrorKind::NotFound,
            format!("pool {id} is not bound to this {system} provider"),
        )
    })
}

/// Decodes a JSON answer; a surprise is `Protocol`, saying what kind of error and where.
pub(crate) fn decode<T: DeserializeOwned>(op: &'static str, what: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::new(
            op,
            ErrorKind::Protocol,
            format!(
                "{what}: unexpected answer ({:?} error at column {})",
                e.classify(),
                e.column()
            ),
        )
    })
}

/// Default timeout of one API request, including reading the answer.
pub(crate) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Default timeout for opening a connection.
pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A validation error list: `(field, message)`.
pub(crate) type FieldErrors = Vec<(String, String)>;

/// Adds `message` about `field`.
pub(crate) fn push(errors: &mut FieldErrors, field: &str, message: impl Into<String>) {
    errors.push((field.to_owned(), message.into()));
}

/// `Ok` without errors.
pub(crate) fn result(errors: FieldErrors) -> std::result::Result<(), FieldErrors> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The value behind `m`, even if a holder panicked (every update leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A provider's construction: validation and secret errors are `Misconfigured` under `op`
/// and name the field.
pub(crate) struct Setup {
    /// The operation errors name (`circleci.config`, ...).
    pub(crate) op: &'static str,
}

impl Setup {
    /// A `Misconfigured` error saying `message`.
    pub(crate) fn misconfigured(&self, message: String) -> Error {
        Error::new(self.op, ErrorKind::Misconfigured, message)
    }

    /// A validation result as one error: `<prefix><field>: <message>`, joined by `; `.
    pub(crate) fn checked(
        &self,
        prefix: &str,
        r: std::result::Result<(), FieldErrors>,
    ) -> Result<()> {
        r.map_err(|errs| {
            self.misconfigured(
                errs.iter()
                    .map(|(f, m)| format!("{prefix}{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    /// The secret `r` refers to; `field` names it in the error.
    pub(crate) fn secret(&self, field: &str, r: &SecretRef) -> Result<SecretString> {
        r.resolve()
            .map_err(|e| self.misconfigured(format!("{field}: {e}")))
    }

    /// The secret `r` refers to, if set.
    pub(crate) fn optional_secret(
        &self,
        field: &str,
        r: Option<&SecretRef>,
    ) -> Result<Option<SecretString>> {
        r.map(|r| self.secret(field, r)).transpose()
    }

    /// Builds each pool in order: its id must be new and its selector valid (errors prefixed
    /// `pool <id>: `), then `build` makes it.
    pub(crate) fn pools<S, P>(
        &self,
        pools: Vec<(PoolId, S)>,
        validate: impl Fn(&S) -> std::result::Result<(), FieldErrors>,
        mut build: impl FnMut(PoolId, S) -> Result<P>,
    ) -> Result<Vec<P>> {
        let mut ids = HashSet::new();
        let mut built = Vec::with_capacity(pools.len());
        for (id, sel) in pools {
            if !ids.insert(id.clone()) {
                return Err(self.misconfigured(format!("pool {id} is listed twice")));
            }
            self.checked(&format!("pool {id}: "), validate(&sel))?;
            built.push(build(id, sel)?);
        }
        Ok(built)
    }
}

/// The 32 bytes of a SHA-256 MAC written as 64 hex digits (webhook signatures).
#[cfg(any(feature = "buildkite", feature = "circleci"))]
pub(crate) fn decode_sha256_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok().filter(|tag| tag.len() == 32)
}

#[cfg(test)]
mod answer_bound_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An answer body larger than [`ANSWER_MAX`] is refused while it is read, not held.
    #[tokio::test]
    async fn an_answer_larger_than_the_cap_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let size = ANSWER_MAX + 1024 * 1024;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                if conn.write_all(&block).await.is_err() {
                    return;
                }
                sent += block.len();
            }
        });
        let http = client("t", Duration::from_secs(30), Duration::from_secs(5)).expect("client");
        let req = http.get(format!("http://{addr}/big"));
        let e = exchange("t.get", "a big answer", req, SourceUrl::Strip)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
