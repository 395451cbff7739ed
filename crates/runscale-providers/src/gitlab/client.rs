//! The REST client: `PRIVATE-TOKEN` or Bearer auth, listings followed page by page through
//! `x-next-page` (complete or an error, never truncated), and every failure mapped to a core
//! [`ErrorKind`] in [`STATUS_MAP`]. Errors never carry a token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use runscale_core::{Error, ErrorKind, Result, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::config::AuthHeader;
use crate::http;

/// Page size of listings.
const PER_PAGE: u32 = 100;

pub(crate) struct Client {
    http: reqwest::Client,
    api: String,
    auth: AuthHeader,
    token: SecretString,
    max_pages: u32,
    /// `RateLimit-Remaining` of the latest admin answer; `u64::MAX` until one says.
    remaining: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.api)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// How GitLab's non-success answers map to error kinds.
const STATUS_MAP: http::StatusMap = http::StatusMap {
    auth_hint: "does the token have the api scope, and create_runner to create runners?",
    unprocessable_is_misconfigured: true,
};

/// A path segment: ids as they are, full paths URL-encoded (`acme%2Fapp`).
pub(crate) fn segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One successful answer: `x-next-page`, GitLab's clock (`Date`) and the body.
pub(crate) struct Answer {
    pub(crate) next_page: Option<u32>,
    pub(crate) date: Option<Timestamp>,
    pub(crate) body: Vec<u8>,
}

/// What GitLab answered: the error of a non-success status, else the pagination, clock and
/// body of a success.
pub(crate) fn answer(op: &'static str, what: &str, a: http::Answer) -> Result<Answer> {
    if !a.status.is_success() {
        return Err(STATUS_MAP.error(op, what, &a));
    }
    let next_page = http::header_u64(&a.headers, "x-next-page").and_then(|v| u32::try_from(v).ok());
    Ok(Answer {
        next_page,
        date: date(&a.headers),
        body: a.body,
    })
}

/// The `Date` header (`Tue, 15 Nov 1994 08:12:31 GMT`): GitLab's clock when it answered.
fn date(headers: &reqwest::header::HeaderMap) -> Option<Timestamp> {
    let text = headers.get("date")?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc2822(text.trim())
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

impl Client {
    pub(crate) fn new(
        base: &str,
        auth: AuthHeader,
        token: SecretString,
        max_pages: u32,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let http = http::client("gitlab.client", request_timeout, connect_timeout)?;
        Ok(Client {
            http,
            api: format!("{}/api/v4", base.trim_end_matches('/')),
            auth,
            token,
            max_pages,
            remaining: AtomicU64::new(u64::MAX),
        })
    }

    /// One request, answered with any status (the rate budget it reports recorded).
    async fn exchange(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        admin: bool,
    ) -> Result<http::Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if admin {
            req = match self.auth {
                AuthHeader::PrivateToken => req.header("PRIVATE-TOKEN", self.token.expose_secret()),
                AuthHeader::Bearer => req.bearer_auth(self.token.expose_secret()),
            };
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let a = http::exchange(op, what, req, http::SourceUrl::Strip).await?;
        if let Some(left) = http::header_u64(&a.headers, "ratelimit-remaining") {
            self.remaining.store(left, Ordering::Relaxed);
        }
        Ok(a)
    }

    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        admin: bool,
    ) -> Result<Answer> {
        let a = self.exchange(op, method, path, body, what, admin).await?;
        answer(op, what, a)
    }

    /// The most pages a listing may have (`max_pages`).
    pub(crate) fn max_pages(&self) -> u32 {
        self.max_pages
    }

    /// The API budget left, as GitLab last reported it (`RateLimit-Remaining`).
    pub(crate) fn rate_limit_remaining(&self) -> Option<u64> {
        Some(self.remaining.load(Ordering::Relaxed)).filter(|&n| n != u64::MAX)
    }

    /// `GET` one object.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        what: &str,
    ) -> Result<T> {
        let a = self.call(op, Method::GET, path, None, what, true).await?;
        http::decode(op, what, &a.body)
    }

    /// `GET` one object, with GitLab's clock at the answer (its `Date` header), so that ages
    /// of GitLab's timestamps do not depend on this host's clock.
    pub(crate) async fn get_dated<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        what: &str,
    ) -> Result<(T, Option<Timestamp>)> {
        let a = self.call(op, Method::GET, path, None, what, true).await?;
        Ok((http::decode(op, what, &a.body)?, a.date))
    }

    /// `GET` every page of a listing (`path` may carry a query). More than `max_pages` pages
    /// is an error: a truncated listing would look like fewer jobs or runners.
    pub(crate) async fn get_all<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        what: &str,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let (items, next) = self.get_page(op, path, page, what).await?;
            out.extend(items);
            match next {
                Some(next) if next > page => {
                    if next > self.max_pages {
                        return Err(Error::new(
                            op,
                            ErrorKind::Misconfigured,
                            format!("{what}: more than max_pages ({}) pages", self.max_pages),
                        ));
                    }
                    page = next;
                }
                _ => return Ok(out),
            }
        }
    }

    /// `GET` page `page` of a listing (`path` may carry a query): its items and the next
    /// page's number (`x-next-page`), if any.
    pub(crate) async fn get_page<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        page: u32,
        what: &str,
    ) -> Result<(Vec<T>, Option<u32>)> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{path}{sep}per_page={PER_PAGE}&page={page}");
        let a = self.call(op, Method::GET, &url, None, what, true).await?;
        let next = a.next_page.filter(|n| *n > page);
        Ok((http::decode::<Vec<T>>(op, what, &a.body)?, next))
    }

    /// An admin call with a JSON body; the answer parsed (`Value::Null` when empty).
    pub(crate) async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value> {
        let a = self.call(op, method, path, Some(body), what, true).await?;
        if a.body.is_empty() {
            return Ok(Value::Null);
        }
        http::decode(op, what, &a.body)
    }

    /// `POST /projects/:project/runners {runner_id}`: enables a project runner in another
    /// project. GitLab refuses a runner that is enabled there already (400 "has already been
    /// taken" from current versions, 409 from old ones): that is [`Enabled::Already`].
    pub(crate) async fn enable_runner(
        &self,
        op: &'static str,
        project: u64,
        runner: u64,
    ) -> Result<Enabled> {
        let what = format!("enabling runner {runner} in project {project}");
        let body = serde_json::json!({ "runner_id": runner });
        let path = format!("/projects/{project}/runners");
        let a = self
            .exchange(op, Method::POST, &path, Some(&body), &what, true)
            .await?;
        if a.status.is_success() {
            return Ok(Enabled::Now);
        }
        if a.status == StatusCode::CONFLICT
            || (a.status == StatusCode::BAD_REQUEST
                && http::json_message(&a.body).contains("already been taken"))
        {
            return Ok(Enabled::Already);
        }
        Err(STATUS_MAP.error(op, &what, &a))
    }

    /// `DELETE` with the admin token.
    pub(crate) async fn delete(&self, op: &'static str, path: &str, what: &str) -> Result<()> {
        self.call(op, Method::DELETE, path, None, what, true)
            .await
            .map(|_| ())
    }

    /// A runner-API call authenticated by the runner token in the body (no admin token).
    pub(crate) async fn runner_delete(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<()> {
        self.call(op, Method::DELETE, path, Some(body), what, false)
            .await
            .map(|_| ())
    }
}

/// A job of the listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiJob {
    pub(crate) id: u64,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) tag_list: Vec<String>,
    pub(crate) created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a runner started it.
    #[serde(default)]
    pub(crate) started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds it waited pending for a runner (once started).
    #[serde(default)]
    pub(crate) queued_duration: Option<f64>,
    #[serde(default)]
    pub(crate) pipeline: Option<ApiPipeline>,
}

/// A job's pipeline (for its project id).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiPipeline {
    pub(crate) project_id: Option<u64>,
}

/// What enabling a runner in a project did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enabled {
    /// It is enabled now.
    Now,
    /// It was enabled there already.
    Already,
}

/// A runner's details (`GET /runners/:id`): the projects it is enabled in.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiRunnerDetail {
    #[serde(default)]
    pub(crate) projects: Vec<ApiProject>,
}

/// A project of a group listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiProject {
    pub(crate) id: u64,
}

/// A runner of a listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiRunner {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) status: Option<String>,
    #[serde(default)]
    pub(crate) paused: Option<bool>,
    #[serde(default)]
    pub(crate) active: Option<bool>,
    /// Newer GitLab versions list it; older ones do not (then it is unknown, never "old").
    #[serde(default)]
    pub(crate) created_at: Option<Timestamp>,
}

impl ApiRunner {
    /// Paused (`paused`, else the deprecated `active: false` or `status: paused`).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.unwrap_or_else(|| {
            self.active.is_some_and(|a| !a) || self.status.as_deref() == Some("paused")
        })
    }
}

/// A runner manager.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiManager {
    pub(crate) system_id: String,
    #[serde(default)]
    pub(crate) status: Option<String>,
    #[serde(default)]
    pub(crate) job_execution_status: Option<String>,
    /// When its runner process last reached GitLab's API.
    #[serde(default)]
    pub(crate) contacted_at: Option<Timestamp>,
}

impl ApiManager {
    pub(crate) fn active(&self) -> bool {
        self.job_execution_status.as_deref() == Some("active")
    }

    /// GitLab's `online`: contacted within its online window (2 hours).
    pub(crate) fn online(&self) -> bool {
        self.status.as_deref() == Some("online")
    }

    /// How long ago it last contacted GitLab, by GitLab's clock `now` (zero if `now` is
    /// earlier); `None` when the listing has no `contacted_at`.
    pub(crate) fn contact_age(&self, now: Timestamp) -> Option<Duration> {
        self.contacted_at
            .map(|c| (now - c).to_std().unwrap_or(Duration::ZERO))
    }
}
