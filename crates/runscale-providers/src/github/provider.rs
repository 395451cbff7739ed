//! [`GithubProvider`]: the [`Provider`] implementation — observing demand and runners,
//! registering (JIT or registration token), removing, webhooks and the probe.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use runscale_core::{
    Credentials, Demand, Error, ErrorKind, PoolId, Provider, ProviderView, Registration, Result,
    RunnerId, WaitingJob, WebhookRequest,
};
use secrecy::{ExposeSecret, SecretString};

use super::auth::{AppKey, Credential, TokenCache};
use super::client::Client;
use super::config::{Auth, Config, PoolSelector, Scope};
use super::convert::{
    ExpiringToken, GhJob, GhRun, GhRunner, JitConfig, JobList, JobPhase, LabelSet, PoolMatcher,
    RunList, RunnerList, job_phase, to_runner,
};
use super::webhook::{Handling, HookState};

/// Requests in flight at once while polling runs and jobs.
const POLL_CONCURRENCY: usize = 8;
/// Cached responses unused this long are dropped.
const CACHE_AGE: Duration = Duration::from_secs(15 * 60);

/// The GitHub Actions provider of one account (organisation, repository or enterprise).
///
/// Built from a [`Config`] and the [`PoolSelector`] of every pool bound to the account, in
/// configuration order: a job that several pools could run counts as demand for the first of
/// them only (it wakes all of them on a webhook).
pub struct GithubProvider {
    client: Client,
    scope: Scope,
    runner_url: String,
    runner_group_id: u64,
    poll_jobs: bool,
    repositories: Vec<String>,
    pools: Vec<(PoolId, PoolSelector)>,
    matcher: PoolMatcher,
    webhook_secret: Option<SecretString>,
    hooks: Mutex<HookState>,
    last_good: Mutex<HashMap<PoolId, ProviderView>>,
    registration_token: tokio::sync::Mutex<TokenCache>,
}

impl std::fmt::Debug for GithubProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubProvider")
            .field("scope", &self.scope)
            .field("client", &self.client)
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

/// Locks a std mutex, recovering from poisoning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A configuration error naming the field.
fn misconfigured(message: String) -> Error {
    Error::new("github.config", ErrorKind::Misconfigured, message)
}

impl GithubProvider {
    /// Builds the provider: validates `config` and every selector, reads the secrets (token or
    /// App key, webhook secret) and builds the HTTP client. Makes no request.
    ///
    /// `pools` lists the pools bound to this account in configuration order (the order decides
    /// which pool a job matching several counts for). Errors are
    /// [`ErrorKind::Misconfigured`] and name the field.
    pub fn new(config: Config, pools: Vec<(PoolId, PoolSelector)>) -> Result<Self> {
        if let Err(errs) = config.validate() {
            let text = errs
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(misconfigured(text));
        }
        let mut seen = HashSet::new();
        for (pool, sel) in &pools {
            if !seen.insert(pool.clone()) {
                return Err(misconfigured(format!("pool {pool} is listed twice")));
            }
            if let Err(errs) = sel.validate() {
                let text = errs
                    .iter()
                    .map(|(f, m)| format!("pool {pool}: {f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(misconfigured(text));
            }
        }
        let scope = config
            .scope()
            .ok_or_else(|| misconfigured("org: no account named".to_owned()))?;
        let secret = |field: &str, r: &runscale_core::secret::SecretRef| {
            r.resolve()
                .map_err(|e| misconfigured(format!("{field}: {e}")))
        };
        let (credential, installation) = match &config.auth {
            Auth::Token(r) => (Credential::Token(secret("auth.token", r)?), None),
            Auth::App(app) => {
                let issuer = app
                    .client_id
                    .clone()
                    .or_else(|| app.app_id.map(|id| id.to_string()))
                    .unwrap_or_default();
                let pem = secret("auth.app.private_key", &app.private_key)?;
                let key = AppKey::new(issuer, &pem)
                    .map_err(|e| misconfigured(format!("auth.app.private_key: {}", e.message())))?;
                (Credential::App(key), app.installation_id)
            }
        };
        let webhook_secret = config
            .webhook_secret
            .as_ref()
            .map(|r| secret("webhook_secret", r))
            .transpose()?;
        let client = Client::new(
            config.api_base(),
            scope.clone(),
            credential,
            installation,
            config.request_timeout,
            config.connect_timeout,
        )?;
        let matcher = PoolMatcher::new(
            pools
                .iter()
                .map(|(p, s)| (p.clone(), LabelSet::new(&s.labels))),
        );
        Ok(Self {
            runner_url: format!("{}/{}", config.web_base(), scope.web_path()),
            client,
            scope,
            runner_group_id: config.runner_group_id,
            poll_jobs: config.poll_jobs,
            repositories: config.poll_repositories(),
            pools,
            matcher,
            webhook_secret,
            hooks: Mutex::new(HookState::default()),
            last_good: Mutex::new(HashMap::new()),
            registration_token: tokio::sync::Mutex::new(TokenCache::default()),
        })
    }

    /// The selector of a pool, or `NotFound`.
    fn selector(&self, op: &'static str, pool: &PoolId) -> Result<&PoolSelector> {
        self.pools
            .iter()
            .find(|(p, _)| p == pool)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                Error::new(
                    op,
                    ErrorKind::NotFound,
                    format!(
                        "pool {pool} is not bound to GitHub {}",
                        self.scope.describe()
                    ),
                )
            })
    }

    /// Whether webhooks naming `repo` (`owner/name`) add it to the polled repositories.
    fn repo_allowed(&self, repo: &str) -> bool {
        match &self.scope {
            Scope::Org(org) => repo
                .split_once('/')
                .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(org)),
            Scope::Repo { .. } => false,
            Scope::Enterprise(_) => repo.contains('/'),
        }
    }

    /// Every runner of the account (one paginated, ETag-cached listing).
    async fn list_runners(&self) -> Result<Vec<GhRunner>> {
        self.client
            .get_all(
                "github.list_runners",
                &format!("{}/actions/runners", self.scope.api_path()),
                "runner list",
                |p: RunnerList| (p.total_count, p.runners),
            )
            .await
    }

    /// The repositories to poll: configured ones plus those webhooks named in the last day.
    fn poll_targets(&self) -> Vec<String> {
        let mut repos = self.repositories.clone();
        let recent = lock(&self.hooks).recent_repos(Instant::now());
        for r in recent {
            if !repos.iter().any(|o| o.eq_ignore_ascii_case(&r)) {
                repos.push(r);
            }
        }
        repos
    }

    /// The queued and in-progress runs of one repository. A repository that is gone or not
    /// readable is skipped with a warning (it must not stop the others).
    async fn active_runs(&self, repo: &str) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for status in ["queued", "in_progress"] {
            let runs = self
                .client
                .get_all(
                    "github.list_runs",
                    &format!("repos/{repo}/actions/runs?status={status}"),
                    "workflow run list",
                    |p: RunList| (p.total_count, p.workflow_runs),
                )
                .await;
            match runs {
                Ok(runs) => ids.extend(runs.iter().map(|r: &GhRun| r.id)),
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Misconfigured) => {
                    tracing::warn!(repo, error = %e, "skipping a repository that cannot be read");
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The latest attempt's jobs of one run. A run that vanished has none.
    async fn run_jobs(&self, repo: &str, run: u64) -> Result<Vec<GhJob>> {
        let jobs = self
            .client
            .get_all(
                "github.list_jobs",
                &format!("repos/{repo}/actions/runs/{run}/jobs?filter=latest"),
                "job list",
                |p: JobList| (p.total_count, p.jobs),
            )
            .await;
        match jobs {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    /// Demand per pool from polling: queued and in-progress runs → their jobs.
    async fn poll_demand(&self) -> Result<HashMap<PoolId, Demand>> {
        let repos = self.poll_targets();
        let runs: Vec<(String, u64)> = stream::iter(repos)
            .map(|repo| async move {
                let ids = self.active_runs(&repo).await?;
                Ok::<_, Error>(ids.into_iter().map(move |id| (repo.clone(), id)))
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .map_ok(|it| stream::iter(it.map(Ok::<_, Error>)))
            .try_flatten()
            .try_collect()
            .await?;
        let mut jobs: Vec<GhJob> = stream::iter(runs)
            .map(|(repo, run)| async move { self.run_jobs(&repo, run).await })
            .buffer_unordered(POLL_CONCURRENCY)
            .map_ok(|v| stream::iter(v.into_iter().map(Ok::<_, Error>)))
            .try_flatten()
            .try_collect()
            .await?;
        jobs.sort_by_key(|j| (j.created_at, j.id));
        let mut seen = HashSet::new();
        let mut out: HashMap<PoolId, Demand> = HashMap::new();
        let now = Utc::now();
        for job in jobs {
            if !seen.insert(job.id) {
                continue;
            }
            match job_phase(&job.status) {
                JobPhase::Waiting => {
                    if let Some(pool) = self.matcher.first(&job.labels) {
                        out.entry(pool.clone())
                            .or_default()
                            .waiting
                            .push(WaitingJob {
                                id: job.id.to_string(),
                                queued_at: job.created_at.unwrap_or(now),
                            });
                    }
                }
                JobPhase::Running => {
                    if let Some(pool) = self.matcher.pool_of(&job) {
                        out.entry(pool.clone()).or_default().running += 1;
                    }
                }
                JobPhase::Other => {}
            }
        }
        Ok(out)
    }

    /// A fresh view of every pool.
    async fn fetch_views(&self) -> Result<HashMap<PoolId, ProviderView>> {
        let runners = self.list_runners().await?;
        let mut demand = if self.poll_jobs {
            self.poll_demand().await?
        } else {
            lock(&self.hooks).demand(&self.matcher, Instant::now())
        };
        self.client.sweep_cache(CACHE_AGE);
        let mut views: HashMap<PoolId, ProviderView> = self
            .matcher
            .pools()
            .map(|p| {
                (
                    p.clone(),
                    ProviderView {
                        demand: demand.remove(p).unwrap_or_default(),
                        runners: Vec::new(),
                        stale: false,
                    },
                )
            })
            .collect();
        for r in &runners {
            if let Some(pool) = self.matcher.owner_of(&r.name)
                && let Some(view) = views.get_mut(pool)
            {
                view.runners.push(to_runner(r));
            }
        }
        Ok(views)
    }

    /// A JIT configuration for an ephemeral runner.
    async fn register_jit(
        &self,
        op: &'static str,
        sel: &PoolSelector,
        runner_name: &str,
    ) -> Result<Registration> {
        let labels = jit_labels(&sel.labels);
        let body = serde_json::json!({
            "name": runner_name,
            "runner_group_id": sel.runner_group_id.unwrap_or(self.runner_group_id),
            "labels": labels,
            "work_folder": "_work",
        });
        let reply = self
            .client
            .mutate(
                op,
                Method::POST,
                &format!(
                    "{}/actions/runners/generate-jitconfig",
                    self.scope.api_path()
                ),
                Some(&body),
            )
            .await?;
        let jit: JitConfig =
            reply.json(op, &[StatusCode::CREATED, StatusCode::OK], "JIT config")?;
        let mut credentials = Credentials::default();
        credentials
            .vars
            .insert("GITHUB_URL".into(), self.runner_url.clone());
        credentials
            .vars
            .insert("RUNNER_NAME".into(), runner_name.to_owned());
        credentials.secrets.insert(
            "GITHUB_JIT_CONFIG".into(),
            SecretString::from(jit.encoded_jit_config),
        );
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: Some(RunnerId::new(jit.runner.id.to_string())),
            credentials,
        })
    }

    /// The account's registration token, cached until five minutes before it expires.
    async fn registration_token(&self, op: &'static str) -> Result<SecretString> {
        let mut cache = self.registration_token.lock().await;
        if let Some(t) = cache.get(Utc::now()) {
            return Ok(t);
        }
        let reply = self
            .client
            .mutate(
                op,
                Method::POST,
                &format!(
                    "{}/actions/runners/registration-token",
                    self.scope.api_path()
                ),
                None,
            )
            .await?;
        let t: ExpiringToken = reply.json(
            op,
            &[StatusCode::CREATED, StatusCode::OK],
            "registration token",
        )?;
        let token = SecretString::from(t.token);
        cache.put(token.clone(), t.expires_at);
        Ok(token)
    }
}

/// The labels a JIT runner is created with: `self-hosted` (as in GitHub's documented
/// example) and the pool's labels, without case-insensitive duplicates.
fn jit_labels(pool: &[String]) -> Vec<String> {
    let mut out = vec!["self-hosted".to_owned()];
    for l in pool {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(l)) {
            out.push(l.clone());
        }
    }
    out
}

#[async_trait]
impl Provider for GithubProvider {
    fn kind(&self) -> &'static str {
        "github"
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let op = "github.observe";
        let result = match self.client.paused_for() {
            Some(left) => Err(Error::new(
                op,
                ErrorKind::RateLimited {
                    retry_after: Some(left),
                },
                "GitHub throttled this account; not polling",
            )),
            None => self.fetch_views().await,
        };
        let unknown = |p: &PoolId| {
            Error::new(
                op,
                ErrorKind::NotFound,
                format!("pool {p} is not bound to GitHub {}", self.scope.describe()),
            )
        };
        match result {
            Ok(mut views) => {
                lock(&self.last_good).clone_from(&views);
                pools
                    .iter()
                    .map(|p| (p.clone(), views.remove(p).ok_or_else(|| unknown(p))))
                    .collect()
            }
            Err(e) if matches!(e.kind(), ErrorKind::RateLimited { .. }) => {
                let last = lock(&self.last_good);
                pools
                    .iter()
                    .map(|p| {
                        let view = match last.get(p) {
                            Some(v) => Ok(ProviderView {
                                stale: true,
                                ..v.clone()
                            }),
                            None if self.matcher.pools().any(|q| q == p) => Err(e.clone()),
                            None => Err(unknown(p)),
                        };
                        (p.clone(), view)
                    })
                    .collect()
            }
            Err(e) => pools.iter().map(|p| (p.clone(), Err(e.clone()))).collect(),
        }
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let op = "github.register";
        let sel = self.selector(op, pool)?;
        if sel.ephemeral {
            return self.register_jit(op, sel, runner_name).await;
        }
        let token = self.registration_token(op).await?;
        let mut credentials = Credentials::default();
        credentials
            .vars
            .insert("GITHUB_URL".into(), self.runner_url.clone());
        credentials
            .vars
            .insert("RUNNER_NAME".into(), runner_name.to_owned());
        credentials
            .vars
            .insert("RUNNER_LABELS".into(), sel.labels.join(","));
        credentials
            .secrets
            .insert("GITHUB_RUNNER_TOKEN".into(), token);
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: None,
            credentials,
        })
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "github.remove";
        self.selector(op, pool)?;
        let id: u64 = runner.as_str().parse().map_err(|_| {
            Error::new(
                op,
                ErrorKind::Protocol,
                format!("{runner:?} is not a GitHub runner id"),
            )
        })?;
        let reply = self
            .client
            .mutate(
                op,
                Method::DELETE,
                &format!("{}/actions/runners/{id}", self.scope.api_path()),
                None,
            )
            .await?;
        match reply.status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::UNPROCESSABLE_ENTITY => Err(Error::new(
                op,
                ErrorKind::Busy,
                format!("runner {id} is running a job: {}", reply.message()),
            )),
            status => Err(super::errors::status_error(op, status, &reply.message())),
        }
    }

    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let allowed = |r: &str| self.repo_allowed(r);
        lock(&self.hooks).handle(
            request,
            &Handling {
                secret: self
                    .webhook_secret
                    .as_ref()
                    .map(|s| s.expose_secret().as_bytes()),
                matcher: &self.matcher,
                track_jobs: !self.poll_jobs,
                repo_allowed: &allowed,
            },
        )
    }

    async fn probe(&self) -> Result<String> {
        let op = "github.probe";
        let reply = self
            .client
            .request(
                op,
                Method::GET,
                &format!("{}/actions/runners?per_page=1", self.scope.api_path()),
                None,
                false,
            )
            .await?;
        let list: RunnerList = reply.json(op, &[StatusCode::OK], "runner list")?;
        let remaining = self
            .client
            .rate_limit_remaining()
            .map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        Ok(format!(
            "github {}: {} runners, rate limit remaining {remaining}",
            self.scope.describe(),
            list.total_count
        ))
    }

    fn rate_limit_remaining(&self) -> Option<u64> {
        self.client.rate_limit_remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_labels_add_self_hosted_once() {
        assert_eq!(
            jit_labels(&["linux".into(), "X64".into()]),
            ["self-hosted", "linux", "X64"]
        );
        assert_eq!(
            jit_labels(&["Self-Hosted".into(), "gpu".into()]),
            ["self-hosted", "gpu"]
        );
    }
}
