//! [`GitlabProvider`]: the [`Provider`] implementation. Demand from pending jobs matched to
//! pools by tags, runner slots from runner managers, registration with a per-pool (or
//! per-instance) runner token, removal only of idle managers, pausing, clean-up of runners
//! that never came up, and webhooks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use reqwest::Method;
use runscale_core::adapter_type::Validate as _;
use runscale_core::{
    Credentials, Demand, Error, ErrorKind, JobHistory, PoolId, Provider, ProviderView,
    Registration, Result, Runner, RunnerId, RunnerState, Timestamp, WaitingJob, WebhookRequest,
    naming,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::client::{
    ApiJob, ApiManager, ApiProject, ApiRunner, ApiRunnerDetail, Client, Enabled, segment,
};
use super::config::{Config, PoolSelector, RunnerPer, RunnerType, validate_pool};
use super::history;
use super::identity;
use super::webhook::{self, Seen};
use crate::http::{self, lock};

/// Variables handed to each runner slot. The start-up script (`deploy/exec/gitlab-runner-slots.sh`)
/// turns them into the slot's config directory and `gitlab-runner run-single` command line.
const URL_VAR: &str = "CI_SERVER_URL";
const TOKEN_VAR: &str = "CI_SERVER_TOKEN";
const NAME_VAR: &str = "RUNNER_NAME";
/// The slot's `system_id`, for its `.runner_system_id` file.
const SYSTEM_ID_VAR: &str = "RUNSCALE_GITLAB_SYSTEM_ID";
/// Jobs before the slot's runner exits (`max_use_count`; `run-single --max-builds`).
const MAX_BUILDS_VAR: &str = "RUNSCALE_GITLAB_MAX_BUILDS";

/// How old an idle runner's `contacted_at` can be behind GitLab Workhorse long polling: GitLab's
/// `RUNNER_QUEUE_EXPIRY_TIME` (1 hour) plus a margin.
const LONG_POLL_CONTACT: Duration = Duration::from_secs(65 * 60);

/// Most `POST /projects/:id/runners` calls one pass makes: a user who joins many projects at
/// once has the runner enabled over a few passes, within the REST budget.
const MAX_ENABLES_PER_PASS: usize = 20;

/// The member projects scope (`membership`).
struct MemberScope {
    refresh: Duration,
    min_access_level: u32,
    max_projects: u32,
}

/// One pool as the provider keeps it.
struct Pool {
    id: PoolId,
    tags: BTreeSet<String>,
    run_untagged: bool,
    runner_type: RunnerType,
    group_id: Option<u64>,
    project_id: Option<u64>,
    per: RunnerPer,
    max_use_count: Option<u32>,
    /// A project runner enabled in every member project (the provider's `membership`).
    assigns: bool,
}

impl Pool {
    /// The description of the pool's shared runner.
    fn shared_description(&self) -> String {
        format!("runscale pool {}", self.id)
    }

    /// Whether a runner with this description is one runscale made for this pool.
    fn owns(&self, description: &str) -> bool {
        description == self.shared_description() || naming::owned_by(self.id.as_str(), description)
    }

    /// The listing of the runners of this pool's scope.
    fn listing(&self) -> String {
        match (self.runner_type, self.group_id, self.project_id) {
            (RunnerType::GroupType, Some(g), _) => format!("/groups/{g}/runners?type=group_type"),
            (RunnerType::ProjectType, _, Some(p)) => {
                format!("/projects/{p}/runners?type=project_type")
            }
            // Created in a member project chosen then: the project runners the user can see.
            (RunnerType::ProjectType, _, None) => "/runners?type=project_type".to_owned(),
            _ => "/runners/all?type=instance_type".to_owned(),
        }
    }

    /// The key of the runner a slot uses: the pool (shared) or the instance.
    fn registry_key(&self, runner_name: &str) -> String {
        match self.per {
            RunnerPer::Pool => format!("pool:{}", self.id),
            RunnerPer::Instance => instance_base(self.id.as_str(), runner_name).to_owned(),
        }
    }
}

/// The instance base name of a slot name (`rs-pool-abc-2` → `rs-pool-abc`).
fn instance_base<'a>(pool: &str, name: &'a str) -> &'a str {
    let rest = name
        .strip_prefix(naming::PREFIX)
        .and_then(|r| r.strip_prefix(pool))
        .and_then(|r| r.strip_prefix('-'))
        .unwrap_or("");
    match (rest.contains('-'), name.rfind('-')) {
        (true, Some(i)) => &name[..i],
        _ => name,
    }
}

/// The managers of one runner, and GitLab's clock when it listed them (its `Date` header; this
/// host's clock if absent).
struct Managers {
    list: Vec<ApiManager>,
    now: Timestamp,
}

/// A runner token runscale holds.
struct Held {
    runner_id: u64,
    token: SecretString,
    /// Its description, as created.
    description: String,
}

/// The waiting jobs of every pool, from one read of the account.
struct DemandView {
    waiting: HashMap<PoolId, Vec<WaitingJob>>,
}

/// The GitLab provider of one GitLab instance.
///
/// Each runner slot runscale launches is a runner manager whose `system_id` encodes the slot's
/// runner name ([`identity`]); its `job_execution_status` says busy, its `contacted_at` whether
/// it is still there. Runner tokens are shown once, so the provider keeps them in memory; after
/// a restart it creates a new runner for the pool and deletes the old one once its managers
/// are quiet.
pub struct GitlabProvider {
    client: Client,
    url: String,
    pools: Vec<Pool>,
    projects: Vec<String>,
    groups: Vec<String>,
    group_refresh: Duration,
    membership: Option<MemberScope>,
    /// The member projects and when they were listed.
    member_cache: Mutex<Option<(Instant, Vec<u64>)>>,
    /// Projects each runner runscale holds is known to be enabled in.
    enabled_in: Mutex<HashMap<u64, BTreeSet<u64>>>,
    contact_timeout: Duration,
    stale_runner_timeout: Duration,
    webhook_token: Option<SecretString>,
    registry: tokio::sync::Mutex<HashMap<String, Held>>,
    /// When this process last created a runner or handed out its token, by runner id.
    issued: Mutex<HashMap<u64, Instant>>,
    /// When this process first listed a runner, by runner id (its age when GitLab does not
    /// say when it was created).
    first_seen: Mutex<HashMap<u64, Instant>>,
    group_cache: Mutex<HashMap<String, (Instant, Vec<u64>)>>,
    job_pools: Mutex<HashMap<u64, PoolId>>,
    runner_pools: Mutex<HashMap<u64, PoolId>>,
    last_busy: Mutex<HashMap<String, Timestamp>>,
    last_good: Mutex<HashMap<PoolId, ProviderView>>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for GitlabProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabProvider")
            .field("client", &self.client)
            .field(
                "pools",
                &self.pools.iter().map(|p| &p.id).collect::<Vec<_>>(),
            )
            .field("projects", &self.projects)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Construction errors: `Misconfigured` under `gitlab.config`.
const SETUP: http::Setup = http::Setup {
    op: "gitlab.config",
};

fn slot_id(runner: u64, system_id: &str) -> RunnerId {
    RunnerId::new(format!("{runner}/{system_id}"))
}

fn parse_slot(op: &'static str, id: &RunnerId) -> Result<(u64, String)> {
    id.as_str()
        .split_once('/')
        .and_then(|(r, s)| Some((r.parse().ok()?, s.to_owned())))
        .ok_or_else(|| {
            Error::new(
                op,
                ErrorKind::NotFound,
                format!("{id} is not a runscale GitLab runner slot"),
            )
        })
}

impl GitlabProvider {
    /// Builds the provider: validates `config` and every selector, reads the secrets (API
    /// token, webhook token) and builds the HTTP client. Makes no request. Errors are
    /// [`ErrorKind::Misconfigured`] and name the field.
    pub fn new(config: Config, pools: Vec<(PoolId, PoolSelector)>) -> Result<Self> {
        SETUP.checked("", config.validate())?;
        let check = |sel: &PoolSelector| {
            let mut errors = sel.validate().err().unwrap_or_default();
            errors.extend(validate_pool(&config, sel, 1).err().unwrap_or_default());
            http::result(errors)
        };
        let built = SETUP.pools(pools, check, |id, sel| {
            Ok(Pool {
                assigns: config.membership && sel.runner_type == RunnerType::ProjectType,
                id,
                tags: sel.tags.into_iter().collect(),
                run_untagged: sel.run_untagged,
                runner_type: sel.runner_type,
                group_id: sel.group_id,
                project_id: sel.project_id,
                per: sel.runner_per,
                max_use_count: sel.max_use_count,
            })
        })?;
        if reqwest::Url::parse(&config.url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case("gitlab.com")))
            .unwrap_or(false)
            && config.contact_timeout < LONG_POLL_CONTACT
        {
            tracing::warn!(
                contact_timeout = ?config.contact_timeout,
                "gitlab.com answers idle runners' job requests in Workhorse (long polling), so \
                 their contacted_at can be up to an hour old: idle slots will be taken for gone; \
                 set contact_timeout above 1h"
            );
        }
        let token = SETUP.secret("token", &config.token)?;
        let webhook_token =
            SETUP.optional_secret("webhook_token", config.webhook_token.as_ref())?;
        let client = Client::new(
            &config.url,
            config.auth,
            token,
            config.max_pages,
            config.request_timeout,
            config.connect_timeout,
        )?;
        Ok(GitlabProvider {
            client,
            url: config.url.trim_end_matches('/').to_owned(),
            pools: built,
            projects: config.projects,
            groups: config.groups,
            group_refresh: config.group_refresh,
            membership: config.membership.then_some(MemberScope {
                refresh: config.membership_refresh,
                min_access_level: config.min_access_level,
                max_projects: config.max_projects,
            }),
            member_cache: Mutex::new(None),
            enabled_in: Mutex::new(HashMap::new()),
            contact_timeout: config.contact_timeout,
            stale_runner_timeout: config.stale_runner_timeout,
            webhook_token,
            registry: tokio::sync::Mutex::new(HashMap::new()),
            issued: Mutex::new(HashMap::new()),
            first_seen: Mutex::new(HashMap::new()),
            group_cache: Mutex::new(HashMap::new()),
            job_pools: Mutex::new(HashMap::new()),
            runner_pools: Mutex::new(HashMap::new()),
            last_busy: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn pool(&self, op: &'static str, id: &PoolId) -> Result<&Pool> {
        http::bound_pool(self.pools.iter().find(|p| p.id == *id), op, id, "GitLab")
    }

    /// Project ids of a group (subgroups included), cached for `group_refresh`. A failed
    /// refresh keeps using the old list; with none, it is an error.
    async fn group_projects(&self, op: &'static str, group: &str) -> Result<Vec<u64>> {
        if let Some((at, ids)) = lock(&self.group_cache).get(group)
            && at.elapsed() < self.group_refresh
        {
            return Ok(ids.clone());
        }
        let path = format!(
            "/groups/{}/projects?include_subgroups=true&simple=true",
            segment(group)
        );
        match self
            .client
            .get_all::<ApiProject>(op, &path, &format!("projects of group {group}"))
            .await
        {
            Ok(list) => {
                let ids: Vec<u64> = list.into_iter().map(|p| p.id).collect();
                lock(&self.group_cache).insert(group.to_owned(), (Instant::now(), ids.clone()));
                Ok(ids)
            }
            Err(e) => match lock(&self.group_cache).get(group) {
                Some((_, ids)) => {
                    tracing::warn!(group, error = %e, "listing the group's projects failed; using the cached list");
                    Ok(ids.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The projects the token's user is a member of (`membership`), with at least
    /// `min_access_level`, lowest id first; listed again after `membership_refresh`. A failed
    /// listing keeps the previous list (logged); with none yet, it is an error, never "no
    /// projects". Empty without `membership`.
    async fn member_projects(&self, op: &'static str) -> Result<Vec<u64>> {
        let Some(scope) = &self.membership else {
            return Ok(Vec::new());
        };
        if let Some((at, ids)) = &*lock(&self.member_cache)
            && at.elapsed() < scope.refresh
        {
            return Ok(ids.clone());
        }
        let path = format!(
            "/projects?membership=true&archived=false&min_access_level={}&simple=true\
             &order_by=id&sort=asc",
            scope.min_access_level
        );
        let listed = self
            .client
            .get_all::<ApiProject>(op, &path, "member projects")
            .await
            .and_then(|list| {
                if list.len() > scope.max_projects as usize {
                    return Err(Error::new(
                        op,
                        ErrorKind::Misconfigured,
                        format!(
                            "the user is a member of more than max_projects ({}) projects",
                            scope.max_projects
                        ),
                    ));
                }
                let mut ids: Vec<u64> = list.into_iter().map(|p| p.id).collect();
                ids.sort_unstable();
                ids.dedup();
                Ok(ids)
            });
        let mut cache = lock(&self.member_cache);
        match listed {
            Ok(ids) => {
                *cache = Some((Instant::now(), ids.clone()));
                Ok(ids)
            }
            Err(e) => match &*cache {
                Some((_, ids)) => {
                    tracing::warn!(error = %e, projects = ids.len(), "listing the member projects failed; using the previous list");
                    Ok(ids.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Pending and running jobs of every configured project, group project and member
    /// project, each once.
    async fn jobs(&self, op: &'static str) -> Result<Vec<ApiJob>> {
        let keys = self.project_keys(op).await?;
        let fetches = keys.iter().map(|k| {
            let path = format!(
                "/projects/{}/jobs?scope[]=pending&scope[]=running",
                segment(k)
            );
            let what = format!("jobs of project {k}");
            async move { self.client.get_all::<ApiJob>(op, &path, &what).await }
        });
        let mut by_id = HashMap::new();
        for list in futures::future::join_all(fetches).await {
            for job in list? {
                by_id.insert(job.id, job);
            }
        }
        let mut jobs: Vec<ApiJob> = by_id.into_values().collect();
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Every configured project, group project and member project, each once.
    async fn project_keys(&self, op: &'static str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.projects.clone();
        keys.extend(
            self.member_projects(op)
                .await?
                .into_iter()
                .map(|id| id.to_string()),
        );
        for g in &self.groups {
            keys.extend(
                self.group_projects(op, g)
                    .await?
                    .into_iter()
                    .map(|id| id.to_string()),
            );
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Whether `pool`'s runners may run a job of `project` (runner scope).
    async fn in_scope(&self, op: &'static str, pool: &Pool, project: Option<u64>) -> bool {
        match (pool.runner_type, project) {
            (RunnerType::ProjectType, Some(p)) if pool.assigns => {
                pool.project_id == Some(p)
                    || match self.member_projects(op).await {
                        Ok(ids) => ids.contains(&p),
                        Err(_) => true,
                    }
            }
            (RunnerType::ProjectType, Some(p)) => pool.project_id == Some(p),
            (RunnerType::GroupType, Some(p)) => match pool.group_id {
                Some(g) => match self.group_projects(op, &g.to_string()).await {
                    Ok(ids) => ids.contains(&p),
                    // Unknown: count the job rather than miss demand.
                    Err(_) => true,
                },
                None => false,
            },
            _ => true,
        }
    }

    /// Whether `pool` would run a job with these tags.
    fn tags_match(pool: &Pool, tags: &[String]) -> bool {
        if tags.is_empty() {
            pool.run_untagged
        } else {
            tags.iter().all(|t| pool.tags.contains(t))
        }
    }

    /// The first pool (in configuration order) that would run `job`, so that a job two pools
    /// could run is counted once.
    async fn pool_for(&self, op: &'static str, job: &ApiJob) -> Option<&Pool> {
        let project = job.pipeline.as_ref().and_then(|p| p.project_id);
        for pool in &self.pools {
            if Self::tags_match(pool, &job.tag_list) && self.in_scope(op, pool, project).await {
                return Some(pool);
            }
        }
        None
    }

    /// The jobs of the last `since` of every project, each counted for the pool its demand
    /// would count for (see `history`).
    async fn read_history(
        &self,
        pools: &[PoolId],
        since: Timestamp,
    ) -> Result<HashMap<PoolId, JobHistory>> {
        let op = "gitlab.job_history";
        let keys = self.project_keys(op).await?;
        let read = history::read(&self.client, op, &keys, since).await?;
        let mut out = JobHistory::for_pools(pools, read.complete_from);
        for job in &read.jobs {
            let Some(past) = history::past_job(job) else {
                continue;
            };
            if let Some(pool) = self.pool_for(op, job).await
                && let Some(h) = out.get_mut(&pool.id)
            {
                h.jobs.push(past);
            }
        }
        Ok(out)
    }

    async fn demand(&self, op: &'static str) -> Result<DemandView> {
        let jobs = self.jobs(op).await?;
        let mut waiting: HashMap<PoolId, Vec<WaitingJob>> = HashMap::new();
        let mut job_pools = HashMap::new();
        for job in jobs.iter().filter(|j| j.status == "pending") {
            if let Some(pool) = self.pool_for(op, job).await {
                job_pools.insert(job.id, pool.id.clone());
                waiting
                    .entry(pool.id.clone())
                    .or_default()
                    .push(WaitingJob {
                        id: job.id.to_string(),
                        queued_at: job.created_at.unwrap_or_else(Utc::now),
                    });
            }
        }
        *lock(&self.job_pools) = job_pools;
        Ok(DemandView { waiting })
    }

    /// The runners runscale made for `pool`, their managers, and GitLab's clock when it
    /// listed them.
    async fn owned_runners(
        &self,
        op: &'static str,
        pool: &Pool,
        listing: &[ApiRunner],
    ) -> Result<Vec<(ApiRunner, Managers)>> {
        let owned: Vec<&ApiRunner> = listing
            .iter()
            .filter(|r| r.description.as_deref().is_some_and(|d| pool.owns(d)))
            .collect();
        let results =
            futures::future::join_all(owned.iter().map(|r| self.fetch_managers(op, r.id))).await;
        let mut out = Vec::with_capacity(owned.len());
        for (r, managers) in owned.into_iter().zip(results) {
            match managers {
                Ok(m) => out.push((r.clone(), m)),
                // Deleted between the listing and now: it has no slot any more.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Runner slots of `pool`, and runscale's runners nobody uses (reported offline, without a
    /// manager, so the policy deregisters them; nothing is deleted while observing).
    async fn slots(
        &self,
        op: &'static str,
        pool: &Pool,
        listing: &[ApiRunner],
    ) -> Result<Vec<Runner>> {
        let owned = self.owned_runners(op, pool, listing).await?;
        let mut slots = Vec::new();
        for (r, managers) in &owned {
            lock(&self.runner_pools).insert(r.id, pool.id.clone());
            lock(&self.first_seen)
                .entry(r.id)
                .or_insert_with(Instant::now);
            let paused = r.is_paused();
            for m in &managers.list {
                // Not a slot of ours (a made-up system_id): never a reason to act.
                let Some(name) = identity::runner_name(pool.id.as_str(), &m.system_id) else {
                    continue;
                };
                let Some(state) = self.slot_state(m, managers.now) else {
                    // Gone: its runner exited. Not listed, so the reconciler counts it departed.
                    continue;
                };
                let last_busy = {
                    let mut memory = lock(&self.last_busy);
                    if state == RunnerState::Busy {
                        memory.insert(m.system_id.clone(), managers.now);
                    }
                    memory.get(&m.system_id).copied()
                };
                slots.push(Runner {
                    id: slot_id(r.id, &m.system_id),
                    name,
                    state,
                    draining: paused,
                    last_busy,
                });
            }
            if self.unused(r, managers) {
                slots.push(Runner {
                    id: slot_id(r.id, ""),
                    name: r.description.clone().unwrap_or_default(),
                    state: RunnerState::Offline,
                    draining: paused,
                    last_busy: None,
                });
            }
        }
        Ok(slots)
    }

    /// What a manager of ours is, at GitLab's time `now`: busy while it runs a job, whatever its
    /// contact age; idle while it contacted GitLab within `contact_timeout`; then gone (`None`:
    /// not listed — GitLab still calls it `online` for 2 hours); offline once its contact is
    /// older than `contact_timeout` + `stale_runner_timeout` (its instance retired long ago), so
    /// it is unregistered. Without `contacted_at`, GitLab's `status` decides.
    fn slot_state(&self, m: &ApiManager, now: Timestamp) -> Option<RunnerState> {
        if m.active() {
            return Some(RunnerState::Busy);
        }
        match m.contact_age(now) {
            None if m.online() => Some(RunnerState::Idle),
            None => Some(RunnerState::Offline),
            Some(age) if age <= self.contact_timeout => Some(RunnerState::Idle),
            Some(age) if age > self.contact_timeout + self.stale_runner_timeout => {
                Some(RunnerState::Offline)
            }
            Some(_) => None,
        }
    }

    /// A manager that runs nothing and has been gone for `stale_runner_timeout`: out of contact
    /// for `contact_timeout` + `stale_runner_timeout` (when it is also listed offline). Never
    /// sooner than it is gone, so a `contact_timeout` raised for Workhorse long polling protects
    /// live runners from clean-up too.
    fn quiet(&self, m: &ApiManager, now: Timestamp) -> bool {
        !m.active()
            && m.contact_age(now).map_or(!m.online(), |age| {
                age > self.contact_timeout + self.stale_runner_timeout
            })
    }

    /// A runner runscale made that nobody uses: every manager quiet, and not created, handed
    /// out or first seen by this process within `stale_runner_timeout`. Its age is what runscale
    /// knows: GitLab's `created_at` when listed (newer versions), else this process's own
    /// memory — an unknown age never reads as old.
    fn unused(&self, r: &ApiRunner, managers: &Managers) -> bool {
        let timeout = self.stale_runner_timeout;
        let quiet = managers.list.iter().all(|m| self.quiet(m, managers.now));
        // Created in the future (clocks) counts as recent.
        let created_recently = r.created_at.is_some_and(|c| {
            (managers.now - c)
                .to_std()
                .ok()
                .is_none_or(|age| age < timeout)
        });
        let handed_out = lock(&self.issued)
            .get(&r.id)
            .is_some_and(|at| at.elapsed() < timeout);
        // Never seen by this process: unknown age, kept.
        let seen_recently = lock(&self.first_seen)
            .get(&r.id)
            .is_none_or(|at| at.elapsed() < timeout);
        quiet && !created_recently && !handed_out && !seen_recently
    }

    /// The runner (id, token) a new slot of `pool` uses, created when needed.
    async fn runner_for(
        &self,
        op: &'static str,
        pool: &Pool,
        runner_name: &str,
    ) -> Result<(u64, SecretString)> {
        let key = pool.registry_key(runner_name);
        let mut registry = self.registry.lock().await;
        if let Some(h) = registry.get(&key) {
            return Ok((h.runner_id, h.token.clone()));
        }
        let description = match pool.per {
            RunnerPer::Pool => pool.shared_description(),
            RunnerPer::Instance => key.clone(),
        };
        let mut body = json!({
            "runner_type": pool.runner_type.as_str(),
            "description": description,
            "tag_list": pool.tags.iter().cloned().collect::<Vec<_>>(),
            "run_untagged": pool.run_untagged,
            // GitLab refuses to enable a locked runner in another project.
            "locked": !pool.assigns,
            "maintenance_note": "created and deleted by runscale",
        });
        if let Some(g) = pool.group_id {
            body["group_id"] = json!(g);
        }
        let owner = match (pool.project_id, pool.assigns) {
            (Some(p), _) => Some(p),
            (None, true) => Some(
                self.member_projects(op)
                    .await?
                    .first()
                    .copied()
                    .ok_or_else(|| {
                        Error::new(
                            op,
                            ErrorKind::Misconfigured,
                            "the user is a member of no project (with min_access_level) to create \
                         the project runner in",
                        )
                    })?,
            ),
            (None, false) => None,
        };
        if let Some(p) = owner {
            body["project_id"] = json!(p);
        }
        let v = self
            .client
            .send(
                op,
                Method::POST,
                "/user/runners",
                &body,
                &format!("creating a runner for pool {}", pool.id),
            )
            .await?;
        let (Some(id), Some(token)) = (v["id"].as_u64(), v["token"].as_str()) else {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                "POST /user/runners answered without id and token",
            ));
        };
        let token = SecretString::from(token.to_owned());
        registry.insert(
            key,
            Held {
                runner_id: id,
                token: token.clone(),
                description: description.clone(),
            },
        );
        lock(&self.runner_pools).insert(id, pool.id.clone());
        if let Some(p) = owner {
            lock(&self.enabled_in).insert(id, BTreeSet::from([p]));
        }
        Ok((id, token))
    }

    /// Enables the project runners runscale holds (created by this process) in every member
    /// project they are not enabled in yet, at most [`MAX_ENABLES_PER_PASS`] calls. A runner's
    /// projects are read once (`GET /runners/:id`) when runscale does not know them. Failures
    /// are logged per runner and project and retried at the next pass; they never fail the
    /// observation. Runners this process did not create (before a restart, or none in dry-run)
    /// are left alone.
    async fn enable_runners(&self, op: &'static str) {
        if !self.pools.iter().any(|p| p.assigns) {
            return;
        }
        let members = match self.member_projects(op).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "member projects unknown: runners not enabled in them this pass");
                return;
            }
        };
        let held: BTreeMap<u64, String> = self
            .registry
            .lock()
            .await
            .values()
            .map(|h| (h.runner_id, h.description.clone()))
            .collect();
        let runners: Vec<(u64, String)> = {
            let pools = lock(&self.runner_pools);
            held.into_iter()
                .filter(|(id, _)| {
                    pools
                        .get(id)
                        .is_some_and(|p| self.pools.iter().any(|q| q.id == *p && q.assigns))
                })
                .collect()
        };
        let mut budget = MAX_ENABLES_PER_PASS;
        for (runner, description) in runners {
            let mut newly = false;
            let known = lock(&self.enabled_in).get(&runner).cloned();
            let known = match known {
                Some(k) => k,
                None => {
                    let what = format!("runner {runner}");
                    match self
                        .client
                        .get::<ApiRunnerDetail>(op, &format!("/runners/{runner}"), &what)
                        .await
                    {
                        Ok(d) => {
                            let k: BTreeSet<u64> = d.projects.into_iter().map(|p| p.id).collect();
                            lock(&self.enabled_in).insert(runner, k.clone());
                            k
                        }
                        Err(e) => {
                            tracing::warn!(runner, error = %e, "reading the runner's projects failed; retried next pass");
                            continue;
                        }
                    }
                }
            };
            for project in members.iter().filter(|p| !known.contains(p)) {
                if budget == 0 {
                    tracing::info!("enabling runners in member projects: the rest next pass");
                    break;
                }
                budget -= 1;
                match self.client.enable_runner(op, *project, runner).await {
                    Ok(how) => {
                        if how == Enabled::Now {
                            tracing::info!(runner, project, "runner enabled in member project");
                            newly = true;
                        }
                        lock(&self.enabled_in)
                            .entry(runner)
                            .or_default()
                            .insert(*project);
                    }
                    Err(e)
                        if e.kind() == ErrorKind::NotFound
                            && self.runner_gone(op, runner).await =>
                    {
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(runner, project, error = %e, "enabling the runner in a member project failed; retried next pass");
                    }
                }
            }
            if newly {
                self.kick(op, runner, &description).await;
            }
        }
    }

    /// Makes GitLab look for jobs for `runner` again: enabling a runner in a project does not
    /// change its job queue value, so a runner that asked before would not be given the jobs
    /// already pending there until that value changes (the seed's "new runners do not pick up
    /// old pending jobs unless kicked"). Updating the runner changes it
    /// (`Ci::Runners::UpdateRunnerService` ticks the queue); the description is set to what it
    /// is. Best effort: a failure is logged.
    async fn kick(&self, op: &'static str, runner: u64, description: &str) {
        if let Err(e) = self
            .client
            .send(
                op,
                Method::PUT,
                &format!("/runners/{runner}"),
                &json!({ "description": description }),
                &format!("refreshing runner {runner}'s job queue"),
            )
            .await
        {
            tracing::warn!(runner, error = %e, "refreshing the runner's job queue failed");
        }
    }

    /// Whether `runner` no longer exists (a 404 of `POST /projects/:id/runners` may be the
    /// project's or the runner's).
    async fn runner_gone(&self, op: &'static str, runner: u64) -> bool {
        let gone = matches!(
            self.client
                .get::<serde_json::Value>(op, &format!("/runners/{runner}"), "runner")
                .await,
            Err(e) if e.kind() == ErrorKind::NotFound
        );
        if gone {
            lock(&self.enabled_in).remove(&runner);
        }
        gone
    }

    /// `GET /runners/:id/managers` (not paginated), with GitLab's clock.
    async fn fetch_managers(&self, op: &'static str, runner: u64) -> Result<Managers> {
        let (list, date) = self
            .client
            .get_dated::<Vec<ApiManager>>(
                op,
                &format!("/runners/{runner}/managers"),
                &format!("managers of runner {runner}"),
            )
            .await?;
        Ok(Managers {
            list,
            now: date.unwrap_or_else(Utc::now),
        })
    }

    /// The managers of a runner, `None` once the runner is gone.
    async fn managers(&self, op: &'static str, runner: u64) -> Result<Option<Managers>> {
        match self.fetch_managers(op, runner).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pause(&self, op: &'static str, runner: u64) -> Result<()> {
        self.client
            .send(
                op,
                Method::PUT,
                &format!("/runners/{runner}"),
                &json!({ "paused": true }),
                &format!("pausing runner {runner}"),
            )
            .await
            .map(|_| ())
    }

    /// Deletes a runner reported as unused, unless one of its managers ran a job or contacted
    /// GitLab since.
    async fn delete_unused(
        &self,
        op: &'static str,
        runner_id: u64,
        managers: &Managers,
    ) -> Result<()> {
        if !managers.list.iter().all(|m| self.quiet(m, managers.now)) {
            return Err(Error::new(
                op,
                ErrorKind::Busy,
                format!("runner {runner_id} has a manager in contact now"),
            ));
        }
        self.delete_runner(op, runner_id).await
    }

    /// `DELETE /runners/:id` (gone already is fine), and its token forgotten.
    async fn delete_runner(&self, op: &'static str, runner_id: u64) -> Result<()> {
        match self
            .client
            .delete(
                op,
                &format!("/runners/{runner_id}"),
                &format!("deleting runner {runner_id}"),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.registry
            .lock()
            .await
            .retain(|_, h| h.runner_id != runner_id);
        Ok(())
    }

    fn token_of(registry: &HashMap<String, Held>, runner: u64) -> Option<SecretString> {
        registry
            .values()
            .find(|h| h.runner_id == runner)
            .map(|h| h.token.clone())
    }

    /// Pools to wake for a Job Hook.
    fn pools_for_event(&self, event: &webhook::JobEvent) -> Vec<PoolId> {
        if let Some(p) = event
            .build_id
            .and_then(|id| lock(&self.job_pools).get(&id).cloned())
        {
            return vec![p];
        }
        if let Some(p) = event
            .runner
            .as_ref()
            .and_then(|r| lock(&self.runner_pools).get(&r.id).cloned())
        {
            return vec![p];
        }
        // A job not seen yet: the payload has no tags, so every pool that may run jobs of
        // its project wakes, and its next observation reads the tags.
        let groups = lock(&self.group_cache);
        self.pools
            .iter()
            .filter(|p| match (p.runner_type, event.project_id) {
                (RunnerType::ProjectType, Some(id)) => p.assigns || p.project_id == Some(id),
                (RunnerType::GroupType, Some(id)) => p
                    .group_id
                    .and_then(|g| groups.get(&g.to_string()))
                    .is_none_or(|(_, ids)| ids.contains(&id)),
                _ => true,
            })
            .map(|p| p.id.clone())
            .collect()
    }
}

#[async_trait]
impl Provider for GitlabProvider {
    fn kind(&self) -> &'static str {
        "gitlab"
    }

    async fn job_history(
        &self,
        pools: &[PoolId],
        since: Timestamp,
    ) -> Result<Option<HashMap<PoolId, JobHistory>>> {
        self.read_history(pools, since).await.map(Some)
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let op = "gitlab.observe";
        let demand = self.demand(op).await;
        self.enable_runners(op).await;
        let mut listings: HashMap<String, Result<Vec<ApiRunner>>> = HashMap::new();
        for id in pools {
            if let Ok(pool) = self.pool(op, id) {
                let path = pool.listing();
                if let std::collections::hash_map::Entry::Vacant(slot) = listings.entry(path) {
                    let r = self
                        .client
                        .get_all::<ApiRunner>(op, slot.key(), "runners")
                        .await;
                    slot.insert(r);
                }
            }
        }
        let mut out = HashMap::with_capacity(pools.len());
        for id in pools {
            let result: Result<ProviderView> = async {
                let pool = self.pool(op, id)?;
                let demand = demand.as_ref().map_err(Clone::clone)?;
                let listing = listings
                    .get(&pool.listing())
                    .ok_or_else(|| Error::new(op, ErrorKind::Protocol, "runner listing missing"))?
                    .as_ref()
                    .map_err(Clone::clone)?;
                let runners = self.slots(op, pool, listing).await?;
                let running = runners
                    .iter()
                    .filter(|r| r.state == RunnerState::Busy)
                    .count() as u32;
                Ok(ProviderView {
                    demand: Demand {
                        waiting: demand.waiting.get(id).cloned().unwrap_or_default(),
                        running,
                    },
                    runners,
                    stale: false,
                })
            }
            .await;
            let view = match result {
                Ok(view) => {
                    lock(&self.last_good).insert(id.clone(), view.clone());
                    Ok(view)
                }
                // Throttled: the last good view, marked stale (launch only, remove nothing).
                Err(e) if matches!(e.kind(), ErrorKind::RateLimited { .. }) => {
                    match lock(&self.last_good).get(id) {
                        Some(v) => Ok(ProviderView {
                            stale: true,
                            ..v.clone()
                        }),
                        None => Err(e),
                    }
                }
                // Any other failure is an error, never an empty view: an empty view would make
                // every instance look runner-less and get it terminated.
                Err(e) => Err(e),
            };
            out.insert(id.clone(), view);
        }
        out
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let op = "gitlab.register";
        let pool = self.pool(op, pool)?;
        let system_id = identity::system_id(pool.id.as_str(), runner_name)
            .map_err(|e| Error::new(op, ErrorKind::Misconfigured, e))?;
        let (runner_id, token) = self.runner_for(op, pool, runner_name).await?;
        lock(&self.issued).insert(runner_id, Instant::now());
        if pool.assigns {
            // A new runner takes jobs of every member project from its first request.
            self.enable_runners(op).await;
        }
        let mut credentials = Credentials::default();
        credentials.vars.insert(URL_VAR.into(), self.url.clone());
        credentials
            .vars
            .insert(NAME_VAR.into(), runner_name.to_owned());
        credentials
            .vars
            .insert(SYSTEM_ID_VAR.into(), system_id.clone());
        if let Some(n) = pool.max_use_count {
            credentials
                .vars
                .insert(MAX_BUILDS_VAR.into(), n.to_string());
        }
        credentials.secrets.insert(TOKEN_VAR.into(), token);
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: Some(slot_id(runner_id, &system_id)),
            credentials,
        })
    }

    async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "gitlab.drain";
        let pool = self.pool(op, pool)?;
        let (runner_id, _) = parse_slot(op, runner)?;
        match pool.per {
            // Pausing the shared runner would stop the whole pool.
            RunnerPer::Pool => Ok(()),
            RunnerPer::Instance => match self.pause(op, runner_id).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                r => r,
            },
        }
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let op = "gitlab.remove";
        let pool = self.pool(op, pool)?;
        let (runner_id, system_id) = parse_slot(op, runner)?;
        let busy = || {
            Error::new(
                op,
                ErrorKind::Busy,
                format!("runner manager {system_id} is running a job"),
            )
        };
        let Some(managers) = self.managers(op, runner_id).await? else {
            return Ok(());
        };
        if managers
            .list
            .iter()
            .any(|m| m.system_id == system_id && m.active())
        {
            return Err(busy());
        }
        if system_id.is_empty() {
            return self.delete_unused(op, runner_id, &managers).await;
        }
        let token = Self::token_of(&*self.registry.lock().await, runner_id);
        if pool.per == RunnerPer::Instance {
            // Pause first, then look again: a job picked in between shows as active.
            match self.pause(op, runner_id).await {
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                r => r?,
            }
            let Some(managers) = self.managers(op, runner_id).await? else {
                return Ok(());
            };
            if managers
                .list
                .iter()
                .any(|m| m.system_id == system_id && m.active())
            {
                return Err(busy());
            }
            // The runner serves this instance only, is paused, and this slot is idle: when no
            // other slot runs a job either, the runner goes (its processes then stop asking
            // for jobs); otherwise it stays, paused, for the busy slot.
            if managers.list.iter().any(ApiManager::active) {
                return Ok(());
            }
            return self.delete_runner(op, runner_id).await;
        }
        if !managers.list.iter().any(|m| m.system_id == system_id) {
            return Ok(());
        }
        match token {
            Some(token) => {
                let body = json!({ "token": token.expose_secret(), "system_id": system_id });
                match self
                    .client
                    .runner_delete(
                        op,
                        "/runners/managers",
                        &body,
                        &format!("unregistering manager {system_id}"),
                    )
                    .await
                {
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
            // A runner from before a restart: its token is gone with the old process, and an
            // idle manager stops with its instance; GitLab forgets it later.
            None => Ok(()),
        }
    }

    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let op = "gitlab.webhook";
        let Some(expected) = &self.webhook_token else {
            return Err(SETUP
                .misconfigured("webhook_token is not set: webhooks are not accepted".to_owned()));
        };
        if !webhook::token_matches(
            expected.expose_secret().as_bytes(),
            request.header("x-gitlab-token"),
        ) {
            return Err(Error::new(
                op,
                ErrorKind::Misconfigured,
                "X-Gitlab-Token missing or wrong",
            ));
        }
        if request.body.len() > webhook::MAX_BODY {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                "body larger than 1 MiB",
            ));
        }
        let event: webhook::JobEvent = serde_json::from_slice(&request.body).map_err(|e| {
            Error::new(
                op,
                ErrorKind::Protocol,
                format!("not a GitLab event ({:?} error)", e.classify()),
            )
        })?;
        let key = request
            .header("idempotency-key")
            .or_else(|| request.header("x-gitlab-event-uuid"));
        if let Some(key) = key
            && !lock(&self.seen).first_time(key)
        {
            return Ok(Vec::new());
        }
        if event.object_kind != "build" {
            return Ok(Vec::new());
        }
        let relevant = matches!(
            event.build_status.as_deref(),
            Some("created" | "pending" | "running" | "success" | "failed" | "canceled")
        );
        Ok(if relevant {
            self.pools_for_event(&event)
        } else {
            Vec::new()
        })
    }

    fn rate_limit_remaining(&self) -> Option<u64> {
        self.client.rate_limit_remaining()
    }

    async fn probe(&self) -> Result<String> {
        let op = "gitlab.probe";
        self.client
            .get::<serde_json::Value>(op, "/user", "the token's user")
            .await?;
        for p in &self.projects {
            self.client
                .get::<serde_json::Value>(
                    op,
                    &format!("/projects/{}", segment(p)),
                    &format!("project {p}"),
                )
                .await?;
        }
        let mut n = self.projects.len();
        for g in &self.groups {
            n += self.group_projects(op, g).await?.len();
        }
        n += self.member_projects(op).await?.len();
        Ok(format!(
            "read the user, {} project(s) and {} group(s) at {}",
            n,
            self.groups.len(),
            self.url
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_map_to_their_instance() {
        assert_eq!(
            instance_base("linux", "rs-linux-abcdefghij-2"),
            "rs-linux-abcdefghij"
        );
        assert_eq!(
            instance_base("linux", "rs-linux-abcdefghij"),
            "rs-linux-abcdefghij"
        );
        assert_eq!(
            instance_base("a-b", "rs-a-b-abcdefghij"),
            "rs-a-b-abcdefghij"
        );
        assert_eq!(
            instance_base("a-b", "rs-a-b-abcdefghij-1"),
            "rs-a-b-abcdefghij"
        );
    }

    fn provider(dir: &tempfile::TempDir) -> GitlabProvider {
        std::fs::write(dir.path().join("t"), "glpat-x").expect("token");
        let config: Config = serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:9",
            "token": { "file": dir.path().join("t") },
            "projects": ["a/b"],
            "contact_timeout": "20s",
            "stale_runner_timeout": "60s",
        }))
        .expect("config");
        let selector: PoolSelector =
            serde_json::from_value(serde_json::json!({ "tags": ["linux"] })).expect("selector");
        GitlabProvider::new(config, vec![(PoolId::new("linux"), selector)]).expect("provider")
    }

    fn manager(status: &str, job: &str, contacted_secs_ago: Option<i64>) -> ApiManager {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "system_id": "s_abcdefghij01",
            "status": status,
            "job_execution_status": job,
            "contacted_at": contacted_secs_ago.map(|s| now - chrono::Duration::seconds(s)),
        }))
        .expect("manager")
    }

    #[test]
    fn a_slot_is_busy_while_active_then_idle_gone_and_offline_by_its_contact_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = provider(&dir);
        let now = Utc::now();
        let state = |m: ApiManager| p.slot_state(&m, now);
        // Busy whatever its contact age (a long job with Workhorse answering its polls).
        assert_eq!(
            state(manager("online", "active", Some(5000))),
            Some(RunnerState::Busy)
        );
        assert_eq!(
            state(manager("online", "idle", Some(3))),
            Some(RunnerState::Idle)
        );
        // GitLab still says online (2 h window); it has left.
        assert_eq!(state(manager("online", "idle", Some(21))), None);
        assert_eq!(state(manager("online", "idle", Some(79))), None);
        // contact_timeout + stale_runner_timeout: offline, for unregistration.
        assert_eq!(
            state(manager("online", "idle", Some(81))),
            Some(RunnerState::Offline)
        );
        // No contacted_at in the listing: GitLab's status decides.
        assert_eq!(
            state(manager("online", "idle", None)),
            Some(RunnerState::Idle)
        );
        assert_eq!(
            state(manager("offline", "idle", None)),
            Some(RunnerState::Offline)
        );
        // A clock ahead of GitLab's does not make a fresh contact old: ages are on GitLab's
        // clock (the answer's Date), and a contact "in the future" is age zero.
        assert_eq!(
            state(manager("online", "idle", Some(-30))),
            Some(RunnerState::Idle)
        );
    }

    #[test]
    fn slot_ids_round_trip() {
        let id = slot_id(42, "s_abcdefghij01");
        assert_eq!(
            parse_slot("t", &id).expect("parse"),
            (42, "s_abcdefghij01".to_owned())
        );
        assert!(parse_slot("t", &RunnerId::new("nope")).is_err());
    }
}
