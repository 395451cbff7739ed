//! The HTTP client of one GitHub account: authentication, ETag caching, pagination, the
//! rate-limit budget and back-off, and one-at-a-time mutations.
//!
//! Every request goes through [`Client::request`]. It refuses to send while the account is
//! throttled, records `x-ratelimit-*` from every answer, turns 403/429 rate-limit answers into
//! [`ErrorKind::RateLimited`], serves `304 Not Modified` from the ETag cache (free against
//! GitHub's primary limit), and retries once with a fresh installation token on 401. Headers
//! carrying credentials are marked sensitive and never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use runscale_core::{Error, ErrorKind, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::auth::{AppKey, Credential, TokenCache};
use super::config::Scope;
use super::convert::{ExpiringToken, Installation};
use super::errors::{self, RateHeaders, Throttle};

/// Items per page (GitHub's maximum).
pub(crate) const PER_PAGE: usize = 100;
/// Pages read at most from one listing (10,000 items).
const MAX_PAGES: usize = 100;
/// ETag cache entries kept at most.
const ETAG_CAPACITY: usize = 10_000;
/// Bytes of cached bodies kept at most.
const ETAG_MAX_BYTES: usize = 128 << 20;

/// First back-off after a secondary rate limit without `retry-after` (GitHub: at least 1 min).
const SECONDARY_BACKOFF: Duration = Duration::from_secs(60);
/// Longest back-off after repeated secondary limits.
const MAX_BACKOFF: Duration = Duration::from_secs(16 * 60);
/// Pause after a primary limit whose reset time is unknown or past.
const DEFAULT_PRIMARY_PAUSE: Duration = Duration::from_secs(60);
/// The longest pause an answer can impose (`retry-after`, a primary limit's reset): GitHub's
/// primary window is an hour, so a longer one is malformed (and added to the clock it could
/// overflow).
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// Largest response body read.
const MAX_RESPONSE: usize = 32 << 20;

/// A paginated listing to read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listing<'a> {
    /// The operation, for errors and metrics.
    pub op: &'static str,
    /// The path relative to the API base, with its query.
    pub path: &'a str,
    /// What the pages hold, for decoding errors.
    pub what: &'a str,
    /// Pages read at most.
    pub max_pages: usize,
    /// Whether the pages go through the ETag cache.
    pub cached: bool,
}

/// What reading a listing took.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Paged {
    /// Requests sent.
    pub requests: usize,
    /// `max_pages` stopped the read with items left.
    pub more: bool,
}

/// A response: its status and body (the cached body for a 304).
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status; a 304 served from the cache is reported as 200.
    pub status: StatusCode,
    /// The body.
    pub body: Arc<Vec<u8>>,
}

impl Reply {
    /// GitHub's error message in the body, shortened.
    pub(crate) fn message(&self) -> String {
        errors::github_message(&self.body)
    }

    /// The body as `T` if the status is one of `ok`, else the mapped error.
    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        ok: &[StatusCode],
        what: &str,
    ) -> Result<T> {
        if !ok.contains(&self.status) {
            return Err(errors::status_error(op, self.status, &self.message()));
        }
        serde_json::from_slice(&self.body).map_err(|e| errors::decode_error(op, what, e))
    }
}

/// The account's rate-limit state.
#[derive(Debug, Default)]
struct RateState {
    /// `x-ratelimit-remaining`: the lowest reported in the current window (answers to
    /// concurrent requests arrive in any order, so the last one is not the newest).
    remaining: Option<u64>,
    /// `x-ratelimit-reset` of the window `remaining` belongs to.
    reset: Option<i64>,
    /// Requests are refused until then.
    paused_until: Option<Instant>,
    /// Why (for the error message).
    why: &'static str,
    /// Next back-off for a secondary limit without `retry-after`.
    next_backoff: Option<Duration>,
}

/// One cached GET response.
#[derive(Debug)]
struct CacheEntry {
    etag: String,
    body: Arc<Vec<u8>>,
    used: Instant,
}

/// GET responses by URL with their ETags, bounded in entries and bytes; the least recently
/// used entry goes first.
#[derive(Debug, Default)]
struct EtagCache {
    entries: HashMap<String, CacheEntry>,
    bytes: usize,
}

impl EtagCache {
    /// The ETag to send for `url`.
    fn etag(&self, url: &str) -> Option<String> {
        self.entries.get(url).map(|e| e.etag.clone())
    }

    /// The cached body of `url` (after a 304), marked used.
    fn hit(&mut self, url: &str) -> Option<Arc<Vec<u8>>> {
        let e = self.entries.get_mut(url)?;
        e.used = Instant::now();
        Some(e.body.clone())
    }

    /// Stores a fresh response, evicting the least recently used ones to stay in bounds.
    fn put(&mut self, url: String, etag: String, body: Arc<Vec<u8>>) {
        self.remove(&url);
        if body.len() > ETAG_MAX_BYTES / 4 {
            return;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= ETAG_CAPACITY || self.bytes + body.len() > ETAG_MAX_BYTES)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.remove(&k),
                None => break,
            }
        }
        self.bytes += body.len();
        self.entries.insert(
            url,
            CacheEntry {
                etag,
                body,
                used: Instant::now(),
            },
        );
    }

    /// Forgets `url`.
    fn remove(&mut self, url: &str) {
        if let Some(e) = self.entries.remove(url) {
            self.bytes -= e.body.len();
        }
    }

    /// Forgets entries unused for `age`.
    fn sweep(&mut self, age: Duration) {
        let now = Instant::now();
        let old: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.used) >= age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove(&k);
        }
    }
}

/// The HTTP client of one account.
pub(crate) struct Client {
    http: reqwest::Client,
    api: String,
    scope: Scope,
    credential: Credential,
    installation: Mutex<Option<u64>>,
    installation_token: tokio::sync::Mutex<TokenCache>,
    rate: Mutex<RateState>,
    etags: Mutex<EtagCache>,
    mutations: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.api)
            .field("scope", &self.scope)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// The `Authorization` header for `token`, marked sensitive so it is never logged.
fn bearer(op: &'static str, token: &SecretString) -> Result<HeaderValue> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            Error::new(
                op,
                ErrorKind::Misconfigured,
                "the token contains characters not allowed in an HTTP header",
            )
        })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Locks a std mutex, recovering from poisoning (the state stays usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Client {
    /// A client for `api` (no trailing slash).
    pub(crate) fn new(
        api: String,
        scope: Scope,
        credential: Credential,
        installation: Option<u64>,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        let http = reqwest::Client::builder()
            .user_agent(concat!("runscale/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            // Redirects would carry the Authorization header elsewhere; GitHub's runner API
            // does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(
                    "github.client",
                    ErrorKind::Misconfigured,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        Ok(Self {
            http,
            api,
            scope,
            credential,
            installation: Mutex::new(installation),
            installation_token: tokio::sync::Mutex::new(TokenCache::default()),
            rate: Mutex::new(RateState::default()),
            etags: Mutex::new(EtagCache::default()),
            mutations: tokio::sync::Mutex::new(()),
        })
    }

    /// The `x-ratelimit-remaining` GitHub reported: the lowest seen in the current window.
    pub(crate) fn rate_limit_remaining(&self) -> Option<u64> {
        lock(&self.rate).remaining
    }

    /// How long requests stay refused, if the account is throttled now.
    pub(crate) fn paused_for(&self) -> Option<Duration> {
        let rate = lock(&self.rate);
        let until = rate.paused_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Refuses with [`ErrorKind::RateLimited`] while throttled.
    fn check_paused(&self, op: &'static str) -> Result<()> {
        let rate = lock(&self.rate);
        if let Some(until) = rate.paused_until
            && let Some(left) = until.checked_duration_since(Instant::now())
        {
            return Err(errors::rate_limited(op, left, rate.why));
        }
        Ok(())
    }

    /// Records a rate-limit answer and returns the pause it imposes.
    fn throttled(&self, t: Throttle) -> (Duration, &'static str) {
        let mut rate = lock(&self.rate);
        let (pause, why) = match t {
            Throttle::Primary { reset } => {
                let left = reset
                    .map(|r| r.saturating_sub(Utc::now().timestamp()))
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(s as u64 + 1))
                    .unwrap_or(DEFAULT_PRIMARY_PAUSE);
                rate.remaining = Some(0);
                (left, "GitHub's primary rate limit is exhausted")
            }
            Throttle::Secondary {
                retry_after: Some(d),
            } => (d, "GitHub's secondary rate limit (retry-after)"),
            Throttle::Secondary { retry_after: None } => {
                let d = rate.next_backoff.unwrap_or(SECONDARY_BACKOFF);
                rate.next_backoff = Some((d * 2).min(MAX_BACKOFF));
                (d, "GitHub's secondary rate limit")
            }
        };
        let pause = pause.min(MAX_PAUSE);
        let until = Instant::now() + pause;
        if rate.paused_until.is_none_or(|u| u < until) {
            rate.paused_until = Some(until);
        }
        rate.why = why;
        (pause, why)
    }

    /// Records the budget of a non-throttled answer.
    fn record(&self, h: &RateHeaders) {
        let mut rate = lock(&self.rate);
        if let Some(r) = h.remaining {
            // A new window (a later reset) starts afresh; within one, the budget only falls.
            let same_window = h.reset.is_none() || h.reset == rate.reset;
            let newer_window = match (h.reset, rate.reset) {
                (Some(new), Some(old)) => new > old,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if newer_window || rate.remaining.is_none() {
                rate.remaining = Some(r);
                rate.reset = h.reset.or(rate.reset);
            } else if same_window {
                rate.remaining = rate.remaining.map(|old| old.min(r));
            }
        }
        rate.next_backoff = None;
    }

    /// The token of account requests: the personal access token, or the App's installation
    /// token.
    async fn account_token(&self) -> Result<SecretString> {
        match &self.credential {
            Credential::Token(t) => Ok(t.clone()),
            Credential::App(key) => self.installation_token(key).await,
        }
    }

    /// The App's installation token for the account, fetched or refreshed when it has less
    /// than five minutes left.
    async fn installation_token(&self, key: &AppKey) -> Result<SecretString> {
        let mut cache = self.installation_token.lock().await;
        if let Some(t) = cache.get(Utc::now()) {
            return Ok(t);
        }
        let configured = *lock(&self.installation);
        let id = match configured {
            Some(id) => id,
            None => {
                let id = self.lookup_installation().await?;
                *lock(&self.installation) = Some(id);
                id
            }
        };
        let op = "github.installation_token";
        let jwt = key.jwt(Utc::now())?;
        let reply = self
            .send(
                op,
                Method::POST,
                &format!("app/installations/{id}/access_tokens"),
                None,
                false,
                jwt,
            )
            .await?;
        let t: ExpiringToken = reply.json(
            op,
            &[StatusCode::CREATED, StatusCode::OK],
            "installation token",
        )?;
        let token = SecretString::from(t.token);
        cache.put(token.clone(), t.expires_at);
        Ok(token)
    }

    /// Finds the App's installation on the organisation or repository.
    async fn lookup_installation(&self) -> Result<u64> {
        let op = "github.find_installation";
        let path = match &self.scope {
            Scope::Org(org) => format!("orgs/{org}/installation"),
            Scope::Repo { owner, name }
            | Scope::Repos {
                lookup: Some((owner, name)),
            } => format!("repos/{owner}/{name}/installation"),
            Scope::Repos { lookup: None } => {
                return Err(Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    "no repository to look the installation up from: set \
                     auth.app.installation_id",
                ));
            }
            Scope::Enterprise(_) => {
                return Err(Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    "GitHub Apps cannot manage enterprise runners",
                ));
            }
        };
        let jwt = match &self.credential {
            Credential::App(key) => key.jwt(Utc::now())?,
            Credential::Token(_) => {
                return Err(Error::new(
                    op,
                    ErrorKind::Misconfigured,
                    "installations are looked up with App credentials only",
                ));
            }
        };
        let reply = self.send(op, Method::GET, &path, None, false, jwt).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(Error::new(
                op,
                ErrorKind::Misconfigured,
                format!(
                    "the App is not installed on {} (set auth.app.installation_id or install it)",
                    self.scope.describe()
                ),
            ));
        }
        let inst: Installation = reply.json(op, &[StatusCode::OK], "installation")?;
        Ok(inst.id)
    }

    /// Sends one request with the account's token (the App's installation token, fetched or
    /// refreshed as needed). `path` is relative to the API base (no leading slash). `cached`
    /// GETs use and fill the ETag cache. Returns the reply whatever its status, except for
    /// rate-limit answers (an error) and transport failures.
    pub(crate) async fn request(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        cached: bool,
    ) -> Result<Reply> {
        let token = self.account_token().await?;
        let reply = if method == Method::GET {
            self.get_with_retries(op, path, cached, token).await?
        } else {
            self.send(op, method.clone(), path, body, cached, token)
                .await?
        };
        if reply.status == StatusCode::UNAUTHORIZED && matches!(self.credential, Credential::App(_))
        {
            // The installation token was revoked or expired early: fetch a new one, once.
            self.installation_token.lock().await.clear();
            let token = self.account_token().await?;
            return self.send(op, method, path, body, cached, token).await;
        }
        Ok(reply)
    }

    /// A GET, retried within the call on a transport failure or a 5xx answer (GETs are
    /// idempotent; see [`crate::retry`]): one failed page out of many must not fail a whole
    /// observation.
    async fn get_with_retries(
        &self,
        op: &'static str,
        path: &str,
        cached: bool,
        token: SecretString,
    ) -> Result<Reply> {
        crate::retry::read(
            || self.send(op, Method::GET, path, None, cached, token.clone()),
            |reply: &Reply| reply.status.is_server_error(),
        )
        .await
    }

    /// Sends one request with `token`.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        cached: bool,
        token: SecretString,
    ) -> Result<Reply> {
        self.check_paused(op)?;
        let url = format!("{}/{}", self.api, path);
        let authorization = bearer(op, &token)?;
        let mut req = self
            .http
            .request(method, &url)
            .header(header::AUTHORIZATION, authorization);
        let cached_etag = if cached {
            lock(&self.etags).etag(&url)
        } else {
            None
        };
        if let Some(etag) = &cached_etag
            && let Ok(v) = HeaderValue::from_str(etag)
        {
            req = req.header(header::IF_NONE_MATCH, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| errors::transport_error(op, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| errors::transport_error(op, e))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(Error::new(
                    op,
                    ErrorKind::Protocol,
                    format!("response larger than {MAX_RESPONSE} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        self.receive(op, url, cached, status, &headers, bytes)
    }

    /// What an answer to a request for `url` means: its rate-limit headers recorded, a
    /// rate-limit answer turned into an error (and a pause), a 304 served from the ETag cache,
    /// a 200 of a `cached` request kept there. Pure but for this client's state (the fuzz
    /// harness feeds it arbitrary answers).
    pub(crate) fn receive(
        &self,
        op: &'static str,
        url: String,
        cached: bool,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: Vec<u8>,
    ) -> Result<Reply> {
        let rate = RateHeaders::from_headers(headers);
        let etag = headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == StatusCode::NOT_MODIFIED {
            self.record(&rate);
            return match lock(&self.etags).hit(&url) {
                Some(body) => Ok(Reply {
                    status: StatusCode::OK,
                    body,
                }),
                None => Err(Error::new(
                    op,
                    ErrorKind::Protocol,
                    "304 Not Modified for a request without a cached response",
                )),
            };
        }
        let message = errors::github_message(&bytes);
        if let Some(t) = errors::throttle(status, &rate, &message) {
            let (pause, why) = self.throttled(t);
            tracing::warn!(
                op,
                status = status.as_u16(),
                pause_s = pause.as_secs(),
                "{why}"
            );
            return Err(errors::rate_limited(op, pause, why));
        }
        self.record(&rate);
        let body = Arc::new(bytes);
        if cached && status == StatusCode::OK {
            let mut cache = lock(&self.etags);
            match etag {
                Some(etag) => cache.put(url, etag, body.clone()),
                None => cache.remove(&url),
            }
        }
        Ok(Reply { status, body })
    }

    /// A request that changes something (POST, DELETE): one at a time per account.
    pub(crate) async fn mutate(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        let _one_at_a_time = self.mutations.lock().await;
        self.request(op, method, path, body, false).await
    }

    /// Reads every page of a listing: `path` (relative, may carry a query) with `per_page`
    /// and `page` added, through the ETag cache. `items` extracts a page's total count and
    /// items. Stops at a short page, at the total, or after 100 pages.
    pub(crate) async fn get_all<P, T>(
        &self,
        op: &'static str,
        path: &str,
        what: &str,
        items: impl Fn(P) -> (u64, Vec<T>),
    ) -> Result<Vec<T>>
    where
        P: DeserializeOwned,
    {
        let listing = Listing {
            op,
            path,
            what,
            max_pages: MAX_PAGES,
            cached: true,
        };
        Ok(self.get_pages(&listing, items).await?.0)
    }

    /// Reads the pages of a listing up to `listing.max_pages`, as [`Client::get_all`] does;
    /// also says whether more items were left unread, and how many requests it sent.
    pub(crate) async fn get_pages<P, T>(
        &self,
        listing: &Listing<'_>,
        items: impl Fn(P) -> (u64, Vec<T>),
    ) -> Result<(Vec<T>, Paged)>
    where
        P: DeserializeOwned,
    {
        let Listing { op, path, what, .. } = *listing;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut paged = Paged::default();
        for page in 1..=listing.max_pages {
            let reply = self
                .request(
                    op,
                    Method::GET,
                    &format!("{path}{sep}per_page={PER_PAGE}&page={page}"),
                    None,
                    listing.cached,
                )
                .await?;
            paged.requests += 1;
            let (total, batch): (u64, Vec<T>) =
                items(reply.json::<P>(op, &[StatusCode::OK], what)?);
            let n = batch.len();
            out.extend(batch);
            if n < PER_PAGE || out.len() as u64 >= total {
                return Ok((out, paged));
            }
        }
        paged.more = true;
        Ok((out, paged))
    }

    /// Drops cached responses not used for `age`.
    pub(crate) fn sweep_cache(&self, age: Duration) {
        lock(&self.etags).sweep(age);
    }

    /// Number of cached responses (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        lock(&self.etags).entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(
            "http://127.0.0.1:9".into(),
            Scope::Org("acme".into()),
            Credential::Token(SecretString::from("ghp_secret".to_owned())),
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("client")
    }

    #[test]
    fn secondary_limits_back_off_exponentially_from_a_minute() {
        let c = client();
        let secondary = Throttle::Secondary { retry_after: None };
        assert_eq!(c.throttled(secondary).0, Duration::from_secs(60));
        assert_eq!(c.throttled(secondary).0, Duration::from_secs(120));
        assert_eq!(c.throttled(secondary).0, Duration::from_secs(240));
        for _ in 0..10 {
            c.throttled(secondary);
        }
        assert_eq!(c.throttled(secondary).0, MAX_BACKOFF);
        c.record(&RateHeaders::default());
        assert_eq!(
            c.throttled(secondary).0,
            Duration::from_secs(60),
            "a good answer resets the back-off"
        );
    }

    #[test]
    fn the_budget_is_the_lowest_reported_in_the_current_window() {
        let c = client();
        let h = |remaining, reset| RateHeaders {
            remaining: Some(remaining),
            reset: Some(reset),
            ..RateHeaders::default()
        };
        c.record(&h(4_900, 1_000));
        // An answer to an earlier, concurrent request arrives last: the budget stays.
        c.record(&h(4_902, 1_000));
        assert_eq!(c.rate_limit_remaining(), Some(4_900));
        c.record(&h(4_899, 1_000));
        assert_eq!(c.rate_limit_remaining(), Some(4_899));
        // A late answer from the previous window changes nothing; a new window starts afresh.
        c.record(&h(10, 400));
        assert_eq!(c.rate_limit_remaining(), Some(4_899));
        c.record(&h(5_000, 4_600));
        assert_eq!(c.rate_limit_remaining(), Some(5_000));
    }

    #[test]
    fn throttled_accounts_refuse_requests_with_the_time_left() {
        let c = client();
        assert!(c.check_paused("t").is_ok());
        c.throttled(Throttle::Secondary {
            retry_after: Some(Duration::from_secs(30)),
        });
        let e = c.check_paused("t").expect_err("paused");
        match e.kind() {
            ErrorKind::RateLimited {
                retry_after: Some(d),
            } => assert!(d <= Duration::from_secs(30) && d > Duration::from_secs(25)),
            k => panic!("unexpected kind {k:?}"),
        }
        assert!(c.paused_for().is_some());
    }

    #[test]
    fn primary_limit_pauses_until_reset() {
        let c = client();
        let reset = Utc::now().timestamp() + 120;
        let (pause, _) = c.throttled(Throttle::Primary { reset: Some(reset) });
        assert!(pause >= Duration::from_secs(119) && pause <= Duration::from_secs(122));
        assert_eq!(c.rate_limit_remaining(), Some(0));
        let (pause, _) = c.throttled(Throttle::Primary {
            reset: Some(reset - 1000),
        });
        assert_eq!(
            pause, DEFAULT_PRIMARY_PAUSE,
            "a past reset falls back to a minute"
        );
    }

    #[test]
    fn the_etag_cache_is_bounded_in_entries_and_bytes() {
        let mut c = EtagCache::default();
        let body = |n: usize| Arc::new(vec![0u8; n]);
        for i in 0..ETAG_CAPACITY + 10 {
            c.put(format!("u{i}"), format!("e{i}"), body(1));
        }
        assert_eq!(c.entries.len(), ETAG_CAPACITY);
        assert!(
            c.etag("u0").is_none(),
            "the least recently used entry went first"
        );
        assert_eq!(
            c.etag(&format!("u{}", ETAG_CAPACITY + 9)).as_deref(),
            Some(&*format!("e{}", ETAG_CAPACITY + 9))
        );
        assert_eq!(c.bytes, ETAG_CAPACITY);

        let mut c = EtagCache::default();
        let big = ETAG_MAX_BYTES / 5;
        for i in 0..6 {
            c.put(format!("b{i}"), "e".into(), body(big));
        }
        assert!(c.bytes <= ETAG_MAX_BYTES);
        assert_eq!(c.entries.len(), 5);
        c.put("b5".into(), "e2".into(), body(10));
        assert_eq!(c.bytes, 4 * big + 10, "replacing an entry frees its bytes");
        c.put("huge".into(), "e".into(), body(ETAG_MAX_BYTES / 2));
        assert!(c.etag("huge").is_none(), "oversized bodies are not cached");
        c.sweep(Duration::ZERO);
        assert_eq!((c.entries.len(), c.bytes), (0, 0));
        assert!(c.hit("b1").is_none());
    }

    #[test]
    fn debug_output_has_no_token() {
        let c = client();
        assert!(!format!("{c:?}").contains("ghp_secret"));
        assert_eq!(c.cached(), 0);
    }
}
