//! [`GithubProvider`]: the [`Provider`] implementation — observing demand and runners,
//! registering (JIT or registration token), removing, webhooks and the probe.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use runscale_core::adapter_type::Validate as _;
use runscale_core::{
    Credentials, Demand, Error, ErrorKind, JobHistory, PoolId, Provider, ProviderView,
    Registration, Result, RunnerId, Timestamp, WaitingJob, WebhookRequest,
};
use secrecy::{ExposeSecret, SecretString};

use super::auth::{AppKey, Credential, TokenCache};
use super::client::Client;
use super::config::{Auth, Config, MAX_REPOSITORIES, PoolSelector, Scope, split_repo};
use super::convert::{
    ExpiringToken, GhJob, GhRun, GhRunner, InstallationRepos, JitConfig, JobList, JobPhase,
    LabelSet, PoolMatcher, RunList, RunnerList, job_phase, to_runner,
};
use super::history;
use super::repos::{RepoBook, key};
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
    web_base: String,
    runner_url: String,
    runner_group_id: u64,
    poll_jobs: bool,
    repositories: Vec<String>,
    from_installation: bool,
    installation_refresh: Duration,
    /// The installation's repositories and when they were listed.
    installation_repos: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    max_per_pass: usize,
    /// The distinct repositories pools are bound to (repository scope of many repositories).
    pool_repos: Vec<String>,
    pools: Vec<(PoolId, PoolSelector)>,
    matcher: PoolMatcher,
    webhook_secret: Option<SecretString>,
    hooks: Mutex<HookState>,
    book: Mutex<RepoBook>,
    last_good: Mutex<HashMap<PoolId, ProviderView>>,
    registration_token: tokio::sync::Mutex<TokenCache>,
    /// Registration tokens per repository (repository scope of many repositories).
    repo_tokens: tokio::sync::Mutex<HashMap<String, TokenCache>>,
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
        let listed = config.poll_repositories();
        let mut pool_repos: Vec<String> = Vec::new();
        for (pool, sel) in &pools {
            match (&scope, &sel.repository) {
                (Scope::Repos { .. }, None) => {
                    return Err(misconfigured(format!(
                        "pool {pool}: repository: set it: without org, repo or enterprise \
                         runners are repository-level, and a repository-level runner takes \
                         only its repository's jobs"
                    )));
                }
                (Scope::Repos { .. }, Some(r))
                    if !listed.iter().any(|l| l.eq_ignore_ascii_case(r)) =>
                {
                    return Err(misconfigured(format!(
                        "pool {pool}: repository: {r:?} is not listed in repositories"
                    )));
                }
                (Scope::Repo { owner, name }, Some(r))
                    if !r.eq_ignore_ascii_case(&format!("{owner}/{name}")) =>
                {
                    return Err(misconfigured(format!(
                        "pool {pool}: repository: {r:?} is not the account's repository \
                         {owner}/{name}"
                    )));
                }
                _ => {}
            }
            if let Some(r) = &sel.repository
                && !pool_repos.iter().any(|p| p.eq_ignore_ascii_case(r))
            {
                pool_repos.push(key(r));
            }
        }
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
        let matcher = PoolMatcher::with_repositories(
            pools
                .iter()
                .map(|(p, s)| (p.clone(), LabelSet::new(&s.labels), s.repository.clone())),
        );
        Ok(Self {
            web_base: config.web_base(),
            runner_url: format!("{}/{}", config.web_base(), scope.web_path()),
            client,
            scope,
            runner_group_id: config.runner_group_id,
            poll_jobs: config.poll_jobs,
            repositories: listed,
            from_installation: config.repositories.is_installation(),
            installation_refresh: config.installation_refresh,
            installation_repos: tokio::sync::Mutex::new(None),
            max_per_pass: config.max_repositories_per_pass,
            pool_repos,
            pools,
            matcher,
            webhook_secret,
            hooks: Mutex::new(HookState::default()),
            book: Mutex::new(RepoBook::default()),
            last_good: Mutex::new(HashMap::new()),
            registration_token: tokio::sync::Mutex::new(TokenCache::default()),
            repo_tokens: tokio::sync::Mutex::new(HashMap::new()),
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
            Scope::Repos { .. } => self
                .repositories
                .iter()
                .any(|r| r.eq_ignore_ascii_case(repo)),
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

    /// The installation's repositories (`GET /installation/repositories`, every page),
    /// listed again every `installation_refresh`. A failed refresh keeps the last list.
    async fn installation_repositories(&self) -> Result<Vec<String>> {
        let mut cached = self.installation_repos.lock().await;
        if let Some((at, repos)) = cached.as_ref()
            && at.elapsed() < self.installation_refresh
        {
            return Ok(repos.clone());
        }
        let listed = self
            .client
            .get_all(
                "github.list_installation_repositories",
                "installation/repositories",
                "installation repository list",
                |p: InstallationRepos| (p.total_count, p.repositories),
            )
            .await;
        match listed {
            Ok(repos) => {
                let mut names: Vec<String> = repos
                    .into_iter()
                    .map(|r| r.full_name)
                    .filter(|r| split_repo(r).is_some())
                    .collect();
                names.truncate(MAX_REPOSITORIES);
                tracing::debug!(
                    repositories = names.len(),
                    "listed the installation's repositories"
                );
                *cached = Some((Instant::now(), names.clone()));
                Ok(names)
            }
            Err(e) => match cached.as_ref() {
                Some((_, repos)) if !matches!(e.kind(), ErrorKind::RateLimited { .. }) => {
                    tracing::warn!(error = %e, "listing the installation's repositories failed; keeping the last list");
                    Ok(repos.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// The repositories polled for jobs: configured ones (and the installation's), plus those
    /// webhooks named in the last day, each with when a webhook last named it.
    async fn poll_universe(&self) -> Result<Vec<(String, Option<Instant>)>> {
        let recent = lock(&self.hooks).recent_repos(Instant::now());
        let mut out: Vec<(String, Option<Instant>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut add = |repo: &str, hooked: Option<Instant>| match index.get(&key(repo)) {
            Some(&i) => {
                if hooked.is_some() {
                    out[i].1 = hooked;
                }
            }
            None => {
                index.insert(key(repo), out.len());
                out.push((repo.to_owned(), hooked));
            }
        };
        if matches!(self.scope, Scope::Repos { .. }) {
            // Repository-level runners take only their repository's jobs: only repositories a
            // pool is bound to can have demand.
            for r in &self.pool_repos {
                add(r, None);
            }
            for (r, at) in recent {
                if self.pool_repos.iter().any(|p| p.eq_ignore_ascii_case(&r)) {
                    add(&r, Some(at));
                }
            }
            return Ok(out);
        }
        for r in &self.repositories {
            add(r, None);
        }
        if self.from_installation {
            for r in self.installation_repositories().await? {
                add(&r, None);
            }
        }
        for (r, at) in recent {
            add(&r, Some(at));
        }
        Ok(out)
    }

    /// The repositories whose job history `pools` need: those they are bound to when every
    /// one is bound to one, else every polled repository.
    async fn history_repositories(&self, pools: &[PoolId]) -> Result<Vec<String>> {
        let bound: Option<Vec<&str>> = pools
            .iter()
            .map(|p| self.matcher.repository_of(p))
            .collect();
        let mut repos: Vec<String> = match bound {
            Some(bound) => bound.into_iter().map(str::to_owned).collect(),
            None => self
                .poll_universe()
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect(),
        };
        repos.sort_by_key(|r| key(r));
        repos.dedup_by_key(|r| key(r));
        Ok(repos)
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

    /// The queued and running jobs of one repository.
    async fn repo_jobs(&self, repo: &str) -> Result<Vec<GhJob>> {
        let runs = self.active_runs(repo).await?;
        let jobs: Vec<Vec<GhJob>> = stream::iter(runs)
            .map(|run| async move { self.run_jobs(repo, run).await })
            .buffer_unordered(POLL_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(jobs.into_iter().flatten().collect())
    }

    /// Demand per pool from polling: at most `max_repositories_per_pass` repositories are
    /// polled (queued and in-progress runs → their jobs); the others count their last poll.
    async fn poll_demand(&self) -> Result<HashMap<PoolId, Demand>> {
        let universe = self.poll_universe().await?;
        let picked = lock(&self.book).select_polls(&universe, self.max_per_pass);
        let polled: Vec<(String, Vec<GhJob>)> = stream::iter(picked)
            .map(|repo| async move {
                let jobs = self.repo_jobs(&repo).await?;
                Ok::<_, Error>((repo, jobs))
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .try_collect()
            .await?;
        let now = Instant::now();
        let mut book = lock(&self.book);
        for (repo, jobs) in polled {
            // Only jobs some pool would count are kept: a repository whose jobs no pool runs
            // does not keep its priority.
            let wanted = jobs
                .into_iter()
                .filter(|j| match job_phase(&j.status) {
                    JobPhase::Waiting => self.matcher.first(Some(&repo), &j.labels).is_some(),
                    JobPhase::Running => self.matcher.pool_of(Some(&repo), j).is_some(),
                    JobPhase::Other => false,
                })
                .collect();
            book.record_poll(&repo, wanted, now);
        }
        book.retain(&universe);
        let mut jobs: Vec<(&str, &GhJob)> = book.jobs(&universe).collect();
        jobs.sort_by_key(|(_, j)| (j.created_at, j.id));
        let mut seen = HashSet::new();
        let mut out: HashMap<PoolId, Demand> = HashMap::new();
        let wall = Utc::now();
        for (repo, job) in jobs {
            if !seen.insert(job.id) {
                continue;
            }
            match job_phase(&job.status) {
                JobPhase::Waiting => {
                    if let Some(pool) = self.matcher.first(Some(repo), &job.labels) {
                        out.entry(pool.clone())
                            .or_default()
                            .waiting
                            .push(WaitingJob {
                                id: job.id.to_string(),
                                queued_at: job.created_at.unwrap_or(wall),
                            });
                    }
                }
                JobPhase::Running => {
                    if let Some(pool) = self.matcher.pool_of(Some(repo), job) {
                        out.entry(pool.clone()).or_default().running += 1;
                    }
                }
                JobPhase::Other => {}
            }
        }
        Ok(out)
    }

    /// Lists the runners of the pool repositories that need it (see [`RepoBook`]); returns
    /// the repositories whose listing failed. A rate limit fails the whole pass.
    async fn list_repo_runners(&self) -> Result<HashSet<String>> {
        let picked = lock(&self.book).select_listings(&self.pool_repos, self.max_per_pass);
        let started = Instant::now();
        let results: Vec<(String, Result<Vec<GhRunner>>)> = stream::iter(picked)
            .map(|repo| async move {
                let listed = self
                    .client
                    .get_all(
                        "github.list_runners",
                        &format!("repos/{repo}/actions/runners"),
                        "runner list",
                        |p: RunnerList| (p.total_count, p.runners),
                    )
                    .await;
                (repo, listed)
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        let mut failed = HashSet::new();
        let mut book = lock(&self.book);
        for (repo, listed) in results {
            match listed {
                Ok(runners) => {
                    let ours = runners
                        .into_iter()
                        .filter(|r| self.matcher.owner_of(&r.name).is_some())
                        .collect();
                    book.record_listing(&repo, ours, started);
                }
                Err(e) if matches!(e.kind(), ErrorKind::RateLimited { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(repo = %repo, error = %e, "listing the repository's runners failed; its runners are kept and its pools remove nothing this pass");
                    failed.insert(repo);
                }
            }
        }
        Ok(failed)
    }

    /// A fresh view of every pool.
    async fn fetch_views(&self) -> Result<HashMap<PoolId, ProviderView>> {
        let per_repo = matches!(self.scope, Scope::Repos { .. });
        let (runners, failed) = if per_repo {
            (Vec::new(), self.list_repo_runners().await?)
        } else {
            (self.list_runners().await?, HashSet::new())
        };
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
        if per_repo {
            let book = lock(&self.book);
            for (pool, view) in &mut views {
                let Some(repo) = self.matcher.repository_of(pool) else {
                    continue;
                };
                let (listed, ever) = book.runners(repo);
                view.stale = !ever || failed.contains(repo);
                for r in listed {
                    if self.matcher.owner_of(&r.name) == Some(pool) {
                        let mut runner = to_runner(r);
                        runner.id = RunnerId::new(format!("{repo}:{}", r.id));
                        view.runners.push(runner);
                    }
                }
            }
        }
        Ok(views)
    }

    /// A JIT configuration for an ephemeral runner.
    async fn register_jit(
        &self,
        op: &'static str,
        pool: &PoolId,
        sel: &PoolSelector,
        runner_name: &str,
    ) -> Result<Registration> {
        let (api_path, runner_url, repo) = self.registration_target(pool);
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
                &format!("{api_path}/actions/runners/generate-jitconfig"),
                Some(&body),
            )
            .await?;
        let jit: JitConfig =
            reply.json(op, &[StatusCode::CREATED, StatusCode::OK], "JIT config")?;
        if let Some(repo) = &repo {
            lock(&self.book).record_registration(repo, Instant::now());
        }
        let mut credentials = Credentials::default();
        credentials.vars.insert("GITHUB_URL".into(), runner_url);
        credentials
            .vars
            .insert("RUNNER_NAME".into(), runner_name.to_owned());
        credentials.secrets.insert(
            "GITHUB_JIT_CONFIG".into(),
            SecretString::from(jit.encoded_jit_config),
        );
        let id = match &repo {
            Some(repo) => format!("{repo}:{}", jit.runner.id),
            None => jit.runner.id.to_string(),
        };
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: Some(RunnerId::new(id)),
            credentials,
        })
    }

    /// Where a pool's runners register: the API path of the scope, the URL `config.sh`
    /// takes, and (repository scope of many repositories) the pool's repository.
    fn registration_target(&self, pool: &PoolId) -> (String, String, Option<String>) {
        match (&self.scope, self.matcher.repository_of(pool)) {
            (Scope::Repos { .. }, Some(repo)) => (
                format!("repos/{repo}"),
                format!("{}/{repo}", self.web_base),
                Some(repo.to_owned()),
            ),
            _ => (self.scope.api_path(), self.runner_url.clone(), None),
        }
    }

    /// The registration token of a pool's scope (the account, or the pool's repository),
    /// cached until five minutes before it expires.
    async fn registration_token(&self, op: &'static str, pool: &PoolId) -> Result<SecretString> {
        let (api_path, _, repo) = self.registration_target(pool);
        let Some(repo) = repo else {
            let mut cache = self.registration_token.lock().await;
            return self
                .fetch_registration_token(op, &api_path, &mut cache)
                .await;
        };
        let mut caches = self.repo_tokens.lock().await;
        let cache = caches.entry(repo.clone()).or_default();
        let token = self.fetch_registration_token(op, &api_path, cache).await?;
        lock(&self.book).record_registration(&repo, Instant::now());
        Ok(token)
    }

    /// The registration token of `api_path` from `cache`, or a fresh one.
    async fn fetch_registration_token(
        &self,
        op: &'static str,
        api_path: &str,
        cache: &mut TokenCache,
    ) -> Result<SecretString> {
        if let Some(t) = cache.get(Utc::now()) {
            return Ok(t);
        }
        let reply = self
            .client
            .mutate(
                op,
                Method::POST,
                &format!("{api_path}/actions/runners/registration-token"),
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

    /// The runs created since `since` in the pools' repositories and their jobs (see
    /// `history`).
    async fn job_history(
        &self,
        pools: &[PoolId],
        since: Timestamp,
    ) -> Result<Option<HashMap<PoolId, JobHistory>>> {
        let repos = self.history_repositories(pools).await?;
        history::read(&self.client, &self.matcher, &repos, pools, since)
            .await
            .map(Some)
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
            return self.register_jit(op, pool, sel, runner_name).await;
        }
        let token = self.registration_token(op, pool).await?;
        let (_, runner_url, _) = self.registration_target(pool);
        let mut credentials = Credentials::default();
        credentials.vars.insert("GITHUB_URL".into(), runner_url);
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
        let (api_path, raw_id) = match runner.as_str().rsplit_once(':') {
            Some((repo, id)) if split_repo(repo).is_some() => (format!("repos/{repo}"), id),
            _ => (self.scope.api_path(), runner.as_str()),
        };
        let id: u64 = raw_id.parse().map_err(|_| {
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
                &format!("{api_path}/actions/runners/{id}"),
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
        let api_path = match &self.scope {
            Scope::Repos { .. } => match self.repositories.first() {
                Some(repo) => format!("repos/{repo}"),
                None => self.scope.api_path(),
            },
            _ => self.scope.api_path(),
        };
        let reply = self
            .client
            .request(
                op,
                Method::GET,
                &format!("{api_path}/actions/runners?per_page=1"),
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
