//! The HTTP client: the agent metrics API and the Stacks API (`Authorization: Token`) and the
//! REST v2 agents calls (`Authorization: Bearer`), the REST budgets (the organisation's and the
//! token owner's, each a sliding minute here, plus what the `RateLimit-*` and
//! `RateLimit-User-*` headers say), and every failure mapped to a core [`ErrorKind`] in
//! [`STATUS_MAP`]. Errors never carry a token.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use runscale_core::{Error, ErrorKind, Result, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::http::{self, Answer};

/// The window of the REST budget.
const WINDOW: Duration = Duration::from_secs(60);
/// Page size of the agents listing (Buildkite's maximum).
const PER_PAGE: u32 = 100;
/// Most pages of one agents listing (100,000 agents). A listing with more fails: it is never
/// cut short, since an agent on an unread page would look gone.
const MAX_PAGES: u32 = 1000;

/// Counts of one queue in the metrics API.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct JobCounts {
    #[serde(default)]
    pub(crate) scheduled: u32,
    #[serde(default)]
    pub(crate) running: u32,
}

#[derive(Deserialize)]
struct JobsPart {
    #[serde(default)]
    queues: HashMap<String, JobCounts>,
}

#[derive(Deserialize)]
struct Organization {
    slug: String,
}

/// `GET /metrics`.
#[derive(Deserialize)]
pub(crate) struct MetricsBody {
    jobs: JobsPart,
    organization: Organization,
}

/// `GET /metrics`: job counts per queue, and how long to wait before the next poll.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) queues: HashMap<String, JobCounts>,
    pub(crate) poll_duration: Option<Duration>,
}

/// One agent of the REST API.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiAgent {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) connection_state: String,
    #[serde(default)]
    /// The job it runs (`null` when idle); only its presence matters.
    pub(crate) job: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) last_job_finished_at: Option<DateTime<Utc>>,
    /// Its tags (`queue=linux`, ...).
    #[serde(default)]
    pub(crate) meta_data: Vec<String>,
}

impl ApiAgent {
    /// Connected to Buildkite (taking jobs, or finishing one before it stops).
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.connection_state.as_str(), "connected" | "stopping")
    }
}

/// A build of the builds listing, with its jobs (`rest_api/builds.md`).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiBuild {
    pub(crate) created_at: Option<Timestamp>,
    #[serde(default)]
    pub(crate) jobs: Vec<ApiBuildJob>,
}

/// A job of a build: only command steps (`script`) run on agents.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ApiBuildJob {
    #[serde(rename = "type", default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) agent_query_rules: Vec<String>,
    /// When it became runnable (its dependencies done): its arrival for an agent.
    #[serde(default)]
    pub(crate) runnable_at: Option<Timestamp>,
    #[serde(default)]
    pub(crate) started_at: Option<Timestamp>,
}

/// A scheduled job of the Stacks API.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct StackJob {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) agent_query_rules: Vec<String>,
}

#[derive(Deserialize)]
struct PageInfo {
    #[serde(default)]
    has_next_page: bool,
    #[serde(default)]
    end_cursor: Option<String>,
}

/// The cluster queue of a scheduled-jobs page.
#[derive(Deserialize)]
struct ClusterQueue {
    #[serde(default)]
    dispatch_paused: bool,
}

/// A page of `GET /stacks/{key}/scheduled-jobs`.
#[derive(Deserialize)]
pub(crate) struct ScheduledJobs {
    jobs: Vec<StackJob>,
    page_info: Option<PageInfo>,
    #[serde(default)]
    cluster_queue: Option<ClusterQueue>,
}

/// A queue's scheduled, unreserved jobs, as a stack sees them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scheduled {
    pub(crate) jobs: Vec<StackJob>,
    /// The cluster queue's `dispatch_paused`: no job may be started.
    pub(crate) dispatch_paused: bool,
}

/// What a stop request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Accepted: the agent finishes its job, then disconnects.
    Accepted,
    /// Buildkite does not know the agent (404).
    Unknown,
    /// Refused with 400 (`Can only stop connected agents`) or 422: the agent's state decides
    /// what it means.
    Refused(StatusCode),
}

/// `PUT /stacks/{key}/scheduled-jobs/batch-reserve`.
#[derive(Deserialize)]
pub(crate) struct Reserved {
    #[serde(default)]
    reserved: Vec<String>,
}

/// Page size of the scheduled jobs (the Stacks API's maximum) and most pages read.
const JOBS_PAGE: u32 = 1000;
const JOBS_PAGES: u32 = 2;

/// What the REST budgets know. Every request counts against both the organisation's and the
/// user's budget (`rest_api/rate_limits.md`); runscale's own requests are all the same user's,
/// so one record of sending times serves both limits.
#[derive(Debug, Default)]
struct Budget {
    sent: VecDeque<Instant>,
    /// The server said no request before this.
    blocked_until: Option<Instant>,
    /// `RateLimit-Remaining` of the last answer.
    remaining: Option<u64>,
    /// `RateLimit-User-Remaining` of the last answer.
    user_remaining: Option<u64>,
}

/// REST requests allowed per minute: the organisation's budget and the user's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RestBudgets {
    pub(crate) org: u32,
    pub(crate) user: u32,
}

pub(crate) struct Client {
    http: reqwest::Client,
    rest_base: String,
    agent_endpoint: String,
    api_token: SecretString,
    agent_token: SecretString,
    budgets: RestBudgets,
    budget: Mutex<Budget>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("rest_base", &self.rest_base)
            .field("agent_endpoint", &self.agent_endpoint)
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

/// How Buildkite's non-success answers map to error kinds.
const STATUS_MAP: http::StatusMap = http::StatusMap {
    auth_hint: "check the token and its scopes",
    unprocessable_is_misconfigured: false,
};

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// The metrics API's answer for `org`: job counts per queue and the poll interval it asks
/// for.
pub(crate) fn metrics_answer(op: &'static str, org: &str, a: &Answer) -> Result<Metrics> {
    let what = "agent metrics";
    let body: MetricsBody = Client::parse(op, what, a)?;
    if !body.organization.slug.eq_ignore_ascii_case(org) {
        return Err(Error::new(
            op,
            ErrorKind::Misconfigured,
            format!(
                "the agent token belongs to organisation {:?}, not {org:?}",
                body.organization.slug
            ),
        ));
    }
    Ok(Metrics {
        queues: body.jobs.queues,
        poll_duration: http::header_u64(&a.headers, "buildkite-agent-metrics-poll-duration")
            .map(http::server_wait),
    })
}

/// What an answer to a stop request means: accepted, unknown (404), refused (400, 422), or
/// an error.
pub(crate) fn stop_answer(op: &'static str, what: &str, a: &Answer) -> Result<Stop> {
    match a.status {
        s if s.is_success() => Ok(Stop::Accepted),
        StatusCode::NOT_FOUND => Ok(Stop::Unknown),
        s @ (StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) => Ok(Stop::Refused(s)),
        _ => Err(STATUS_MAP.error(op, what, a)),
    }
}

impl Client {
    pub(crate) fn new(
        rest_base: &str,
        agent_endpoint: &str,
        api_token: SecretString,
        agent_token: SecretString,
        budgets: RestBudgets,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let http = http::client("buildkite.client", request_timeout, connect_timeout)?;
        Ok(Client {
            http,
            rest_base: rest_base.trim_end_matches('/').to_owned(),
            agent_endpoint: agent_endpoint.trim_end_matches('/').to_owned(),
            api_token,
            agent_token,
            budgets,
            budget: Mutex::new(Budget::default()),
        })
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The smaller of `RateLimit-Remaining` and `RateLimit-User-Remaining` of the last REST
    /// answer.
    pub(crate) fn remaining(&self) -> Option<u64> {
        let b = self.budget();
        match (b.remaining, b.user_remaining) {
            (Some(o), Some(u)) => Some(o.min(u)),
            (o, u) => o.or(u),
        }
    }

    /// Takes one REST request from both budgets, or says how long to wait.
    fn take(&self, op: &'static str) -> Result<()> {
        let now = Instant::now();
        let mut b = self.budget();
        if let Some(until) = b.blocked_until {
            if until > now {
                return Err(throttled(op, until - now));
            }
            b.blocked_until = None;
        }
        while b
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            b.sent.pop_front();
        }
        let per_minute = self.budgets.org.min(self.budgets.user);
        if b.sent.len() as u64 >= u64::from(per_minute) {
            let wait = b
                .sent
                .front()
                .map_or(WINDOW, |t| WINDOW.saturating_sub(now.duration_since(*t)));
            return Err(throttled(op, wait));
        }
        b.sent.push_back(now);
        Ok(())
    }

    /// Records what the answer says about both budgets: no request until the reset of a
    /// budget that has none left; after a 429, until `Retry-After`, else the reset of the
    /// exhausted budget(s), else the later reset. No wait is longer than
    /// [`http::MAX_SERVER_WAIT`].
    pub(crate) fn note_limits(&self, headers: &HeaderMap, status: StatusCode) {
        let remaining = http::header_u64(headers, "ratelimit-remaining");
        let reset = http::header_u64(headers, "ratelimit-reset");
        let user_remaining = http::header_u64(headers, "ratelimit-user-remaining");
        let user_reset = http::header_u64(headers, "ratelimit-user-reset");
        let retry = http::header_u64(headers, "retry-after");
        let mut b = self.budget();
        if remaining.is_some() {
            b.remaining = remaining;
        }
        if user_remaining.is_some() {
            b.user_remaining = user_remaining;
        }
        let exhausted = [(remaining, reset), (user_remaining, user_reset)]
            .into_iter()
            .filter(|(left, _)| *left == Some(0))
            .filter_map(|(_, reset)| reset)
            .max();
        let pause = if status == StatusCode::TOO_MANY_REQUESTS {
            retry.or(exhausted).or(reset.max(user_reset)).or(Some(1))
        } else {
            exhausted
        };
        if let Some(s) = pause {
            b.blocked_until = Some(Instant::now() + http::server_wait(s));
        }
    }

    async fn send(
        &self,
        op: &'static str,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer> {
        http::exchange(op, what, req, http::SourceUrl::Keep).await
    }

    pub(crate) fn parse<T: DeserializeOwned>(
        op: &'static str,
        what: &str,
        a: &Answer,
    ) -> Result<T> {
        if !a.status.is_success() {
            return Err(STATUS_MAP.error(op, what, a));
        }
        http::decode(op, what, &a.body)
    }

    /// One REST call within the budget.
    async fn rest(
        &self,
        op: &'static str,
        what: &str,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer> {
        self.take(op)?;
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.api_token.expose_secret());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let a = self.send(op, what, req).await?;
        self.note_limits(&a.headers, a.status);
        Ok(a)
    }

    /// `GET <agent endpoint>/metrics`.
    pub(crate) async fn metrics(&self, op: &'static str, org: &str) -> Result<Metrics> {
        let what = "agent metrics";
        let req = self
            .http
            .get(format!("{}/metrics", self.agent_endpoint))
            .header(
                "authorization",
                format!("Token {}", self.agent_token.expose_secret()),
            );
        let a = self.send(op, what, req).await?;
        metrics_answer(op, org, &a)
    }

    /// A call to the agent API with the agent (cluster) token.
    async fn agent_api<T: DeserializeOwned>(
        &self,
        op: &'static str,
        what: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.agent_endpoint))
            .header(
                "authorization",
                format!("Token {}", self.agent_token.expose_secret()),
            );
        if let Some(b) = body {
            req = req.json(&b);
        }
        let a = self.send(op, what, req).await?;
        Self::parse(op, what, &a)
    }

    /// `POST /stacks/register` (idempotent).
    pub(crate) async fn register_stack(
        &self,
        op: &'static str,
        key: &str,
        queue: &str,
    ) -> Result<()> {
        let body = serde_json::json!({
            "key": key,
            "type": "custom",
            "queue_key": queue,
            "metadata": { "registered_by": "runscale" },
        });
        self.agent_api::<serde_json::Value>(
            op,
            &format!("register stack {key}"),
            Method::POST,
            "/stacks/register",
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// The stack's scheduled, unreserved jobs of `queue` (the first two pages, as Buildkite
    /// recommends), and whether the queue's dispatch is paused.
    pub(crate) async fn scheduled_jobs(
        &self,
        op: &'static str,
        key: &str,
        queue: &str,
    ) -> Result<Scheduled> {
        let what = format!("scheduled jobs of stack {key}");
        let mut out = Scheduled::default();
        let mut after = String::new();
        for _ in 0..JOBS_PAGES {
            let mut url = reqwest::Url::parse("http://x/")
                .map_err(|e| Error::new(op, ErrorKind::Protocol, e.to_string()))?;
            url.query_pairs_mut()
                .append_pair("queue_key", queue)
                .append_pair("limit", &JOBS_PAGE.to_string())
                .append_pair("after", &after);
            let path = format!(
                "/stacks/{key}/scheduled-jobs?{}",
                url.query().unwrap_or_default()
            );
            let page: ScheduledJobs = self.agent_api(op, &what, Method::GET, &path, None).await?;
            out.jobs.extend(page.jobs);
            out.dispatch_paused |= page.cluster_queue.is_some_and(|q| q.dispatch_paused);
            match page.page_info {
                Some(PageInfo {
                    has_next_page: true,
                    end_cursor: Some(c),
                }) => after = c,
                _ => break,
            }
        }
        Ok(out)
    }

    /// `PUT /stacks/{key}/scheduled-jobs/batch-reserve`: the ids reserved.
    pub(crate) async fn reserve(
        &self,
        op: &'static str,
        key: &str,
        ids: &[String],
        expiry: Duration,
    ) -> Result<Vec<String>> {
        let body = serde_json::json!({
            "job_uuids": ids,
            "reservation_expiry_seconds": expiry.as_secs().clamp(1, 3600),
        });
        let r: Reserved = self
            .agent_api(
                op,
                &format!("reserve jobs for stack {key}"),
                Method::PUT,
                &format!("/stacks/{key}/scheduled-jobs/batch-reserve"),
                Some(body),
            )
            .await?;
        Ok(r.reserved)
    }

    /// One page of the organisation's builds created at or after `since` (newest first, with
    /// every job execution): `url` is the first page's (`None`) or a `Link` to the next.
    /// Returns the builds and the next page's URL.
    pub(crate) async fn builds_page(
        &self,
        op: &'static str,
        org: &str,
        since: Timestamp,
        url: Option<String>,
    ) -> Result<(Vec<ApiBuild>, Option<String>)> {
        let what = "build history";
        let url = match url {
            Some(u) => u,
            None => {
                let base = format!("{}/v2/organizations/{org}/builds", self.rest_base);
                let mut u = reqwest::Url::parse(&base).map_err(|e| {
                    Error::new(op, ErrorKind::Misconfigured, format!("api_url: {e}"))
                })?;
                u.query_pairs_mut()
                    .append_pair(
                        "created_from",
                        &since.to_rfc3339_opts(SecondsFormat::Secs, true),
                    )
                    .append_pair("include_retried_jobs", "true")
                    .append_pair("per_page", &PER_PAGE.to_string());
                u.to_string()
            }
        };
        let a = self.rest(op, what, Method::GET, &url, None).await?;
        let builds: Vec<ApiBuild> = Self::parse(op, what, &a)?;
        match next_link(&a.headers) {
            Some(next) if next == url => Err(Error::new(
                op,
                ErrorKind::Protocol,
                "the builds listing links a page to itself",
            )),
            next => Ok((builds, next)),
        }
    }

    fn agents_url(&self, org: &str) -> String {
        format!("{}/v2/organizations/{org}/agents", self.rest_base)
    }

    /// Every connected agent of the organisation, or of one cluster queue: every page
    /// (`Link` pagination), or an error. Never a partial list.
    pub(crate) async fn agents(
        &self,
        op: &'static str,
        org: &str,
        cluster_queue: Option<&str>,
    ) -> Result<Vec<ApiAgent>> {
        let what = "agents";
        let mut url = reqwest::Url::parse(&self.agents_url(org))
            .map_err(|e| Error::new(op, ErrorKind::Misconfigured, format!("api_url: {e}")))?;
        url.query_pairs_mut()
            .append_pair("per_page", &PER_PAGE.to_string());
        if let Some(q) = cluster_queue {
            url.query_pairs_mut().append_pair("cluster_queue_id", q);
        }
        let mut url = url.to_string();
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let a = self.rest(op, what, Method::GET, &url, None).await?;
            let page: Vec<ApiAgent> = Self::parse(op, what, &a)?;
            out.extend(page);
            match next_link(&a.headers) {
                Some(next) if next == url => {
                    return Err(Error::new(
                        op,
                        ErrorKind::Protocol,
                        "the agents listing links a page to itself",
                    ));
                }
                Some(next) => url = next,
                None => return Ok(out),
            }
        }
        Err(Error::new(
            op,
            ErrorKind::Misconfigured,
            format!(
                "more than {} agents listed: set the pools' cluster_queue_id so each reads its \
                 queue's agents only",
                MAX_PAGES * PER_PAGE
            ),
        ))
    }

    /// One agent, in any connection state; `None` when Buildkite does not know it.
    pub(crate) async fn agent(
        &self,
        op: &'static str,
        org: &str,
        id: &str,
    ) -> Result<Option<ApiAgent>> {
        let what = format!("agent {id}");
        let url = format!("{}/{id}", self.agents_url(org));
        let a = self.rest(op, &what, Method::GET, &url, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::parse(op, &what, &a).map(Some)
    }

    /// `PUT .../agents/{id}/stop {"force": false}`: accepted, unknown (404), or refused (400
    /// `Can only stop connected agents`, 422). Other failures are errors.
    pub(crate) async fn stop(&self, op: &'static str, org: &str, id: &str) -> Result<Stop> {
        let what = format!("stop agent {id}");
        let url = format!("{}/{id}/stop", self.agents_url(org));
        let a = self
            .rest(
                op,
                &what,
                Method::PUT,
                &url,
                Some(serde_json::json!({ "force": false })),
            )
            .await?;
        stop_answer(op, &what, &a)
    }
}

fn throttled(op: &'static str, wait: Duration) -> Error {
    Error::new(
        op,
        ErrorKind::RateLimited {
            retry_after: Some(wait.max(Duration::from_secs(1))),
        },
        "REST budget used up (the organisation's or the user's)",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "<http://x/a?page=1>; rel=\"prev\", <http://x/a?page=3>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("http://x/a?page=3"));
        h.insert("link", "<http://x/a?page=1>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn the_budget_refuses_beyond_its_minute() {
        let c = Client::new(
            "http://127.0.0.1:1",
            "http://127.0.0.1:1/v3",
            SecretString::from("a"),
            SecretString::from("b"),
            RestBudgets { org: 5, user: 2 },
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(c.take("t").is_ok());
        assert!(c.take("t").is_ok());
        let e = c.take("t").unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::RateLimited { retry_after: Some(d) } if d <= WINDOW));
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        c.note_limits(&h, StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(
            c.take("t").unwrap_err().kind(),
            ErrorKind::RateLimited { .. }
        ));
    }

    #[test]
    fn an_exhausted_user_budget_pauses_until_its_reset() {
        let c = Client::new(
            "http://127.0.0.1:1",
            "http://127.0.0.1:1/v3",
            SecretString::from("a"),
            SecretString::from("b"),
            RestBudgets { org: 200, user: 50 },
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("ratelimit-remaining", "120"),
            ("ratelimit-reset", "3"),
            ("ratelimit-user-remaining", "7"),
            ("ratelimit-user-reset", "30"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        c.note_limits(&h, StatusCode::OK);
        assert_eq!(c.remaining(), Some(7), "the smaller budget");
        assert!(c.take("t").is_ok());
        h.insert("ratelimit-user-remaining", "0".parse().unwrap());
        c.note_limits(&h, StatusCode::OK);
        let e = c.take("t").unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::RateLimited { retry_after: Some(d) } if d > Duration::from_secs(20)),
            "paused until the user's reset: {e}"
        );
    }
}
