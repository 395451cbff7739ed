//! The runner API client: three reads per resource class (unclaimed tasks, running tasks,
//! connected runners) on the v3 or v2 paths, with `Circle-Token` auth, and every failure
//! mapped to a core [`ErrorKind`] in [`status_error`]. Errors never carry the token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use runscale_core::{Error, ErrorKind, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::ApiVersion;

/// Longest error message kept from a response body.
const MESSAGE_MAX: usize = 200;

/// One runner of the listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiRunner {
    pub(crate) name: String,
    pub(crate) last_connected: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) last_used: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct RunnerList {
    #[serde(default)]
    items: Option<Vec<ApiRunner>>,
}

#[derive(Deserialize)]
struct Unclaimed {
    unclaimed_task_count: u32,
}

#[derive(Deserialize)]
struct Running {
    running_runner_tasks: u32,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    version: ApiVersion,
    token: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// CircleCI's `message` from an error body, on one short printable line.
fn message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
    }
    let text = serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_default();
    text.chars()
        .filter(|c| !c.is_control())
        .take(MESSAGE_MAX)
        .collect()
}

/// Maps a non-success answer to an error kind.
pub(crate) fn status_error(
    op: &'static str,
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Error {
    let msg = message(body);
    let detail = if msg.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {msg}")
    };
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Error::new(
                op,
                ErrorKind::Misconfigured,
                format!("{detail} (is the Circle-Token a valid personal or project API token?)"),
            );
        }
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited { retry_after },
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::Misconfigured,
        s if s.is_server_error() => ErrorKind::Transient,
        _ => ErrorKind::Protocol,
    };
    Error::new(op, kind, detail)
}

impl Client {
    pub(crate) fn new(
        base: &str,
        version: ApiVersion,
        token: SecretString,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .user_agent(concat!("runscale/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::new(
                    "circleci.client",
                    ErrorKind::Misconfigured,
                    "cannot build the HTTP client",
                )
                .with_source(e)
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            version,
            token,
        })
    }

    fn url(&self, v3: &str, v2: &str) -> String {
        match self.version {
            ApiVersion::V3 => format!("{}/api/v3{v3}", self.base),
            ApiVersion::V2 => format!("{}/api/v2{v2}", self.base),
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        op: &'static str,
        url: &str,
        what: &str,
        class: &str,
    ) -> Result<T> {
        let url =
            reqwest::Url::parse_with_params(url, [("resource-class", class)]).map_err(|e| {
                Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    format!("{what}: bad URL: {e}"),
                )
            })?;
        let resp = self
            .http
            .get(url)
            .header("Circle-Token", self.token.expose_secret())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_builder() {
                    ErrorKind::Misconfigured
                } else {
                    ErrorKind::Transient
                };
                Error::new(op, kind, format!("{what}: request failed")).with_source(e)
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.map_err(|e| {
            Error::new(
                op,
                ErrorKind::Transient,
                format!("{what}: reading the answer failed"),
            )
            .with_source(e)
        })?;
        if !status.is_success() {
            return Err(status_error(op, what, status, retry_after, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
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

    /// `unclaimed_task_count` of a resource class.
    pub(crate) async fn unclaimed(&self, op: &'static str, class: &str) -> Result<u32> {
        let url = self.url("/runner/tasks", "/tasks");
        let what = format!("unclaimed tasks of {class}");
        Ok(self
            .get::<Unclaimed>(op, &url, &what, class)
            .await?
            .unclaimed_task_count)
    }

    /// `running_runner_tasks` of a resource class.
    pub(crate) async fn running(&self, op: &'static str, class: &str) -> Result<u32> {
        let url = self.url("/runner/tasks/running", "/tasks/running");
        let what = format!("running tasks of {class}");
        Ok(self
            .get::<Running>(op, &url, &what, class)
            .await?
            .running_runner_tasks)
    }

    /// The runners of a resource class.
    pub(crate) async fn runners(&self, op: &'static str, class: &str) -> Result<Vec<ApiRunner>> {
        let url = self.url("/runner", "/runner");
        let what = format!("runners of {class}");
        Ok(self
            .get::<RunnerList>(op, &url, &what, class)
            .await?
            .items
            .unwrap_or_default())
    }
}
