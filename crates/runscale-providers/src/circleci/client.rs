//! The runner API client: three reads per resource class (unclaimed tasks, running tasks,
//! connected runners) on the v3 or v2 paths, with `Circle-Token` auth, and every failure
//! mapped to a core [`ErrorKind`] in [`STATUS_MAP`]. Errors never carry the token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runscale_core::{Error, ErrorKind, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::ApiVersion;
use crate::http;

/// One runner of the listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiRunner {
    pub(crate) name: String,
    pub(crate) last_connected: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) last_used: Option<DateTime<Utc>>,
}

/// `GET /runner`.
#[derive(Deserialize)]
pub(crate) struct RunnerList {
    #[serde(default)]
    pub(crate) items: Option<Vec<ApiRunner>>,
}

/// `GET /runner/tasks`.
#[derive(Deserialize)]
pub(crate) struct Unclaimed {
    pub(crate) unclaimed_task_count: u32,
}

/// `GET /runner/tasks/running`.
#[derive(Deserialize)]
pub(crate) struct Running {
    pub(crate) running_runner_tasks: u32,
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

/// How the runner API's non-success answers map to error kinds.
const STATUS_MAP: http::StatusMap = http::StatusMap {
    auth_hint: "is the Circle-Token a valid personal or project API token?",
    unprocessable_is_misconfigured: true,
};

/// What the runner API answered: the error of a non-success status, else the body as `T`.
pub(crate) fn answer<T: DeserializeOwned>(
    op: &'static str,
    what: &str,
    a: &http::Answer,
) -> Result<T> {
    if !a.status.is_success() {
        return Err(STATUS_MAP.error(op, what, a));
    }
    http::decode(op, what, &a.body)
}

impl Client {
    pub(crate) fn new(
        base: &str,
        version: ApiVersion,
        token: SecretString,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let http = http::client("circleci.client", request_timeout, connect_timeout)?;
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
        let req = self
            .http
            .get(url)
            .header("Circle-Token", self.token.expose_secret());
        let a = http::exchange(op, what, req, http::SourceUrl::Keep).await?;
        answer(op, what, &a)
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
