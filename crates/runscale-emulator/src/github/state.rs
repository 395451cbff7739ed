//! The emulator's state and every rule that changes it: accounts, runners, workflow runs and
//! jobs, job assignment (GitHub's label matching), runner liveness, tokens, rate-limit
//! buckets, fault draws, and the webhook outbox. No I/O and no clock: every operation is
//! given the time, so the rules are unit-tested without sockets.
//!
//! HTTP handlers (in `api` and `runner_api`) lock the state, call one operation, unlock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::config::{EmulatorConfig, Faults, OwnerKind, RunnerTimeouts, WebhookConfig};
use super::error::{ApiError, DOC_RUNNERS, EmulatorError};
use super::model::{
    Conclusion, DeliveryRecord, JitConfig, JobRef, JobSnapshot, JobSpec, JobStatus, RunnerSnapshot,
    RunnerStatus, Snapshot, Violation, ViolationKind, WebhookStats,
};
use super::shapes;
use crate::serve::constant_time_eq;

/// The time an operation happens at: monotonic for durations, wall clock for timestamps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall-clock time.
    pub wall: DateTime<Utc>,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        Now {
            mono: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// This time plus `d` (both clocks).
    #[cfg(test)]
    pub fn plus(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall + chrono::Duration::from_std(d).unwrap_or_default(),
        }
    }
}

/// A served account.
pub(crate) struct Owner {
    pub login: String,
    pub kind: OwnerKind,
    pub id: u64,
    pub repos: Vec<Repo>,
    /// Runner groups (id, name); group 1 `Default` first.
    pub groups: Vec<(u64, String)>,
}

/// A served repository.
pub(crate) struct Repo {
    pub name: String,
    pub id: u64,
}

/// Where runners are registered and which endpoint prefix addresses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    /// Index into the owners.
    pub owner: usize,
    /// Index into the owner's repos, for repository scope.
    pub repo: Option<usize>,
}

/// A runner label.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
}

/// A registered runner.
pub(crate) struct RunnerRec {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<Label>,
    pub os: &'static str,
    pub group_id: u64,
    pub group_name: String,
    pub ephemeral: bool,
    pub secret: String,
    pub online: bool,
    pub last_seen: Option<Instant>,
    pub job: Option<u64>,
    pub lost_since: Option<Instant>,
    pub jobs_completed: u32,
}

impl RunnerRec {
    fn has_label(&self, wanted: &str) -> bool {
        self.labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(wanted))
    }
}

/// The runner that took a job, as recorded on the job.
#[derive(Clone, Debug)]
pub(crate) struct JobRunner {
    pub id: u64,
    pub name: String,
    pub group_id: u64,
    pub group_name: String,
}

/// A workflow job.
pub(crate) struct JobRec {
    pub id: u64,
    pub run_id: u64,
    pub owner: usize,
    pub repo: usize,
    pub name: String,
    pub workflow_name: String,
    pub labels: Vec<String>,
    pub duration: Duration,
    pub status: JobStatus,
    pub conclusion: Option<Conclusion>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub queued_mono: Instant,
    pub ended_wait_mono: Option<Instant>,
    pub runner: Option<JobRunner>,
    pub head_sha: String,
}

/// A workflow run.
pub(crate) struct RunRec {
    pub id: u64,
    pub owner: usize,
    pub repo: usize,
    pub workflow_name: String,
    pub run_number: u64,
    pub jobs: Vec<u64>,
    pub created_at: DateTime<Utc>,
    pub head_sha: String,
}

/// A job handed to a runner's agent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Assignment {
    /// The job id.
    pub job_id: u64,
    /// Its run.
    pub run_id: u64,
    /// `owner/repo`.
    pub repo: String,
    /// The job name.
    pub name: String,
    /// Its `runs-on` labels.
    pub labels: Vec<String>,
    /// How long to run it, real milliseconds (already divided by the speed).
    pub run_ms: u64,
}

/// Who is calling the REST API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A token (PAT or installation token).
    Token {
        /// Its rate-limit bucket.
        bucket: String,
        /// The only account it may access (installation tokens), or any (PATs).
        owner: Option<usize>,
    },
    /// A GitHub App JWT (the `/app` endpoints and installation look-ups).
    App,
}

impl Principal {
    /// The rate-limit bucket.
    pub fn bucket(&self) -> &str {
        match self {
            Principal::Token { bucket, .. } => bucket,
            Principal::App => "app",
        }
    }

    /// Whether it may read or change `owner`'s runners, runs and jobs.
    pub fn may_access(&self, owner: usize) -> bool {
        match self {
            Principal::Token { owner: only, .. } => only.is_none_or(|o| o == owner),
            Principal::App => false,
        }
    }
}

/// A rate-limit bucket.
struct Bucket {
    limit: u32,
    remaining: u32,
    reset_mono: Instant,
    reset_epoch: i64,
}

/// A bucket's state, for the `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    pub reset_epoch: i64,
}

impl RateInfo {
    /// `x-ratelimit-used`.
    pub fn used(&self) -> u32 {
        self.limit - self.remaining
    }
}

/// A fault drawn for one REST request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiFault {
    /// 429 with `retry-after` seconds.
    SecondaryLimit(u64),
    /// 502 or 503.
    ServerError(StatusCode),
}

/// A short-lived token issued by the emulator.
struct IssuedToken {
    /// Registration tokens: the scope; installation tokens: the installation's owner scope.
    scope: Scope,
    installation: Option<u64>,
    expires_mono: Instant,
}

/// An installation of the App.
pub(crate) struct Installation {
    pub id: u64,
    pub owner: usize,
}

/// A webhook delivery waiting to be sent.
pub(crate) struct Outgoing {
    pub url: String,
    pub secret: Option<SecretString>,
    pub hook_id: u64,
    pub target_type: &'static str,
    pub target_id: u64,
    pub delivery_id: String,
    pub body: Arc<Vec<u8>>,
    /// Index of its record in the delivery log.
    pub record: usize,
}

/// Body of `generate-jitconfig` (and of the emulator's registration endpoint).
#[derive(Clone, Debug)]
pub(crate) struct NewRunner {
    pub name: String,
    pub group_id: u64,
    pub labels: Vec<String>,
    pub ephemeral: bool,
}

/// The whole state.
pub(crate) struct State {
    pub base_url: String,
    pub speed: f64,
    pub timeouts: RunnerTimeouts,
    pub owners: Vec<Owner>,
    pub runners: BTreeMap<u64, RunnerRec>,
    pub runs: BTreeMap<u64, RunRec>,
    pub jobs: BTreeMap<u64, JobRec>,
    queued: BTreeSet<u64>,
    label_ids: HashMap<String, u64>,
    next_runner: u64,
    next_run: u64,
    next_job: u64,
    next_label: u64,
    run_numbers: HashMap<(usize, usize), u64>,
    violations: Vec<Violation>,
    pats: Vec<SecretString>,
    pub app: Option<AppState>,
    issued: HashMap<String, IssuedToken>,
    buckets: HashMap<String, Bucket>,
    rate_limit: u32,
    rate_start_remaining: u32,
    rate_window: Duration,
    pub faults: Faults,
    burst_left: u32,
    api_rng: StdRng,
    hook_rng: StdRng,
    id_rng: StdRng,
    hooks: Vec<WebhookConfig>,
    outbox: Vec<Outgoing>,
    pub deliveries: Vec<DeliveryRecord>,
    pub webhook_stats: WebhookStats,
    pub started_wall: DateTime<Utc>,
    /// Authenticated REST requests received (a test-side counter, not a GitHub feature).
    pub rest_requests: u64,
}

/// The App as the state knows it.
pub(crate) struct AppState {
    pub app_id: u64,
    pub client_id: Option<String>,
    pub slug: String,
    pub decoding_key: jsonwebtoken::DecodingKey,
    pub installations: Vec<Installation>,
}

/// Runner look-ups for the runner API.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunnerApiError {
    /// The runner was removed (or never existed).
    Gone,
    /// The runner is busy with this job and must finish it first.
    Busy(Box<Assignment>),
    /// The job is not (or no longer) this runner's.
    NotAssigned,
}

/// The label matching of GitHub: every job label is on the runner, case-insensitively.
pub(crate) fn labels_match(job_labels: &[String], runner: &RunnerRec) -> bool {
    job_labels.iter().all(|l| runner.has_label(l))
}

impl State {
    /// The state for a validated configuration.
    pub fn new(config: &EmulatorConfig, base_url: String, now: Now) -> Self {
        let owners = config
            .owners
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut groups = vec![(1, "Default".to_owned())];
                groups.extend(o.runner_groups.iter().map(|g| (g.id, g.name.clone())));
                Owner {
                    login: o.login.clone(),
                    kind: o.kind,
                    id: 1_000 + i as u64,
                    repos: o
                        .repos
                        .iter()
                        .enumerate()
                        .map(|(j, name)| Repo {
                            name: name.clone(),
                            id: 100_000 + (i as u64) * 1_000 + j as u64,
                        })
                        .collect(),
                    groups,
                }
            })
            .collect::<Vec<_>>();
        let app = config.app.as_ref().and_then(|a| {
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(a.public_key_pem.as_bytes()).ok()?;
            Some(AppState {
                app_id: a.app_id,
                client_id: a.client_id.clone(),
                slug: a.slug.clone(),
                decoding_key: key,
                installations: a
                    .installations
                    .iter()
                    .filter_map(|inst| {
                        let owner = owners
                            .iter()
                            .position(|o| o.login.eq_ignore_ascii_case(&inst.owner))?;
                        Some(Installation { id: inst.id, owner })
                    })
                    .collect(),
            })
        });
        let seed = config.seed;
        State {
            base_url,
            speed: config.speed,
            timeouts: config.runners.clone(),
            owners,
            runners: BTreeMap::new(),
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queued: BTreeSet::new(),
            label_ids: HashMap::new(),
            next_runner: 1,
            next_run: 10_000_000,
            next_job: 20_000_000,
            next_label: 1,
            run_numbers: HashMap::new(),
            violations: Vec::new(),
            pats: config.tokens.clone(),
            app,
            issued: HashMap::new(),
            buckets: HashMap::new(),
            rate_limit: config.rate_limit.limit,
            rate_start_remaining: config
                .rate_limit
                .start_remaining
                .unwrap_or(config.rate_limit.limit),
            rate_window: config.rate_limit.window,
            faults: config.faults.clone(),
            burst_left: config.faults.burst_429.map_or(0, |(n, _)| n),
            api_rng: StdRng::seed_from_u64(seed),
            hook_rng: StdRng::seed_from_u64(seed.wrapping_add(1)),
            id_rng: StdRng::seed_from_u64(seed.wrapping_add(2)),
            hooks: config.webhooks.clone(),
            outbox: Vec::new(),
            deliveries: Vec::new(),
            webhook_stats: WebhookStats::default(),
            started_wall: now.wall,
            rest_requests: 0,
        }
    }

    // ----- accounts and scopes -------------------------------------------------------

    /// The organisation scope `/orgs/{org}` (404 for unknown accounts and users).
    pub fn org_scope(&self, org: &str) -> Result<Scope, ApiError> {
        self.owners
            .iter()
            .position(|o| o.login.eq_ignore_ascii_case(org) && o.kind == OwnerKind::Organization)
            .map(|owner| Scope { owner, repo: None })
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))
    }

    /// The repository scope `/repos/{owner}/{repo}` (404 if not served).
    pub fn repo_scope(&self, owner: &str, repo: &str) -> Result<Scope, ApiError> {
        let o = self
            .owners
            .iter()
            .position(|o| o.login.eq_ignore_ascii_case(owner))
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))?;
        let r = self.owners[o]
            .repos
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(repo))
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))?;
        Ok(Scope {
            owner: o,
            repo: Some(r),
        })
    }

    /// The scope named by a URL path `owner` or `owner/repo` (runner registration).
    pub fn scope_from_path(&self, path: &str) -> Result<Scope, ApiError> {
        let path = path.trim_matches('/');
        match path.split_once('/') {
            Some((owner, repo)) => self.repo_scope(owner, repo),
            None => self.org_scope(path),
        }
    }

    /// `owner` or `owner/repo`.
    pub fn scope_name(&self, scope: Scope) -> String {
        let owner = &self.owners[scope.owner];
        match scope.repo {
            Some(r) => format!("{}/{}", owner.login, owner.repos[r].name),
            None => owner.login.clone(),
        }
    }

    fn repo_full_name(&self, owner: usize, repo: usize) -> String {
        format!(
            "{}/{}",
            self.owners[owner].login, self.owners[owner].repos[repo].name
        )
    }

    // ----- auth ----------------------------------------------------------------------

    /// The principal a bearer token belongs to, if any (PATs and unexpired installation
    /// tokens; JWTs are checked elsewhere).
    pub fn principal_for_token(&self, token: &str, now: Now) -> Option<Principal> {
        if let Some(i) = self
            .pats
            .iter()
            .position(|p| constant_time_eq(p.expose_secret().as_bytes(), token.as_bytes()))
        {
            return Some(Principal::Token {
                bucket: format!("pat:{i}"),
                owner: None,
            });
        }
        let issued = self.issued.get(token)?;
        let installation = issued.installation?;
        (issued.expires_mono > now.mono).then(|| Principal::Token {
            bucket: format!("installation:{installation}"),
            owner: Some(issued.scope.owner),
        })
    }

    fn new_token(&mut self, prefix: &str, len: usize) -> String {
        format!(
            "{prefix}{}",
            Alphanumeric.sample_string(&mut self.id_rng, len)
        )
    }

    /// A registration (or remove) token for `scope`, valid one hour.
    pub fn issue_runner_token(&mut self, scope: Scope, now: Now) -> (String, DateTime<Utc>) {
        let token = self.new_token("", 29).to_ascii_uppercase();
        let ttl = Duration::from_secs(3600);
        self.issued.insert(
            token.clone(),
            IssuedToken {
                scope,
                installation: None,
                expires_mono: now.mono + ttl,
            },
        );
        (token, now.wall + chrono::Duration::hours(1))
    }

    /// An installation access token, valid one hour.
    pub fn issue_installation_token(
        &mut self,
        installation_id: u64,
        now: Now,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let owner = self
            .app
            .as_ref()
            .and_then(|a| a.installations.iter().find(|i| i.id == installation_id))
            .map(|i| i.owner)
            .ok_or_else(|| ApiError::not_found(super::error::DOC_APPS))?;
        let token = self.new_token("ghs_", 36);
        self.issued.insert(
            token.clone(),
            IssuedToken {
                scope: Scope { owner, repo: None },
                installation: Some(installation_id),
                expires_mono: now.mono + Duration::from_secs(3600),
            },
        );
        Ok((token, now.wall + chrono::Duration::hours(1)))
    }

    /// The installation on `owner`, if the App has one.
    pub fn installation_of(&self, owner: usize) -> Option<&Installation> {
        self.app
            .as_ref()?
            .installations
            .iter()
            .find(|i| i.owner == owner)
    }

    // ----- rate limits and faults ------------------------------------------------------

    fn bucket(&mut self, key: &str, now: Now) -> &mut Bucket {
        let (limit, start, window) = (self.rate_limit, self.rate_start_remaining, self.rate_window);
        let bucket = self
            .buckets
            .entry(key.to_owned())
            .or_insert_with(|| Bucket {
                limit,
                remaining: start,
                reset_mono: now.mono + window,
                reset_epoch: (now.wall + chrono::Duration::from_std(window).unwrap_or_default())
                    .timestamp(),
            });
        if now.mono >= bucket.reset_mono {
            bucket.remaining = bucket.limit;
            bucket.reset_mono = now.mono + window;
            bucket.reset_epoch =
                (now.wall + chrono::Duration::from_std(window).unwrap_or_default()).timestamp();
        }
        bucket
    }

    /// The bucket's state without using it.
    pub fn rate_info(&mut self, key: &str, now: Now) -> RateInfo {
        let b = self.bucket(key, now);
        RateInfo {
            limit: b.limit,
            remaining: b.remaining,
            reset_epoch: b.reset_epoch,
        }
    }

    /// Uses one request of the bucket (never below zero).
    pub fn consume(&mut self, key: &str, now: Now) -> RateInfo {
        let b = self.bucket(key, now);
        b.remaining = b.remaining.saturating_sub(1);
        RateInfo {
            limit: b.limit,
            remaining: b.remaining,
            reset_epoch: b.reset_epoch,
        }
    }

    /// Replaces the faults; a 429 burst starts again.
    pub fn set_faults(&mut self, faults: Faults) {
        self.burst_left = faults.burst_429.map_or(0, |(n, _)| n);
        self.faults = faults;
    }

    /// Draws the fault (if any) for one REST request.
    pub fn draw_api_fault(&mut self) -> Option<ApiFault> {
        if self.burst_left > 0
            && let Some((_, retry_after)) = self.faults.burst_429
        {
            self.burst_left -= 1;
            return Some(ApiFault::SecondaryLimit(retry_after));
        }
        if self.faults.error_rate_5xx > 0.0 && self.api_rng.random_bool(self.faults.error_rate_5xx)
        {
            let status = if self.api_rng.random_bool(0.5) {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return Some(ApiFault::ServerError(status));
        }
        None
    }

    // ----- runners ---------------------------------------------------------------------

    fn label_id(&mut self, name: &str) -> u64 {
        let key = name.to_ascii_lowercase();
        if let Some(id) = self.label_ids.get(&key) {
            return *id;
        }
        let id = self.next_label;
        self.next_label += 1;
        self.label_ids.insert(key, id);
        id
    }

    /// The runner's labels: read-only `self-hosted`, OS and architecture, then the given
    /// labels that are not one of those as custom labels (deduplicated).
    fn runner_labels(&mut self, given: &[String]) -> (Vec<Label>, &'static str) {
        let has = |want: &str| given.iter().any(|l| l.eq_ignore_ascii_case(want));
        let (os, os_label) = if has("windows") {
            ("windows", "Windows")
        } else if has("macos") {
            ("macos", "macOS")
        } else {
            ("linux", "Linux")
        };
        let arch = if has("arm64") {
            "ARM64"
        } else if has("arm") {
            "ARM"
        } else {
            "X64"
        };
        let mut labels: Vec<Label> = Vec::new();
        for name in ["self-hosted", os_label, arch] {
            let id = self.label_id(name);
            labels.push(Label {
                id,
                name: name.to_owned(),
                read_only: true,
            });
        }
        for name in given {
            if labels.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            let id = self.label_id(name);
            labels.push(Label {
                id,
                name: name.clone(),
                read_only: false,
            });
        }
        (labels, os)
    }

    /// Runners registered exactly at `scope`, by id, optionally with this exact name.
    pub fn list_runners(&self, scope: Scope, name: Option<&str>) -> Vec<&RunnerRec> {
        self.runners
            .values()
            .filter(|r| r.scope == scope && name.is_none_or(|n| r.name == n))
            .collect()
    }

    /// One runner of `scope`.
    pub fn get_runner(&self, scope: Scope, id: u64) -> Result<&RunnerRec, ApiError> {
        self.runners
            .get(&id)
            .filter(|r| r.scope == scope)
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))
    }

    /// `DELETE .../runners/{id}`: 404 unknown, 422 busy, else removed.
    pub fn delete_runner(&mut self, scope: Scope, id: u64, now: Now) -> Result<(), ApiError> {
        let runner = self.get_runner(scope, id)?;
        if runner.job.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "Bad request - Runner \"{}\" is still running a job.",
                    runner.name
                ),
                DOC_RUNNERS,
            ));
        }
        self.remove_runner(id, now);
        Ok(())
    }

    /// Removes a runner; records a violation if it was busy (which the API never allows).
    fn remove_runner(&mut self, id: u64, now: Now) {
        if let Some(runner) = self.runners.remove(&id)
            && let Some(job_id) = runner.job
        {
            self.violations.push(Violation {
                at: now.wall,
                kind: ViolationKind::BusyRunnerDeleted {
                    runner_id: runner.id,
                    runner_name: runner.name,
                    job_id,
                },
            });
        }
    }

    /// Validates the group and creates a runner (offline until its agent connects).
    pub fn create_runner(
        &mut self,
        scope: Scope,
        spec: NewRunner,
        replace: bool,
        now: Now,
    ) -> Result<u64, ApiError> {
        let group_name = match scope.repo {
            Some(_) => (spec.group_id == 1).then(|| "Default".to_owned()),
            None => self.owners[scope.owner]
                .groups
                .iter()
                .find(|(id, _)| *id == spec.group_id)
                .map(|(_, name)| name.clone()),
        }
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Runner group {} not found", spec.group_id),
                DOC_RUNNERS,
            )
        })?;
        if let Some(existing) = self
            .runners
            .values()
            .find(|r| r.scope == scope && r.name.eq_ignore_ascii_case(&spec.name))
        {
            if !replace {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "Already exists - A runner with the name {} already exists.",
                        spec.name
                    ),
                    DOC_RUNNERS,
                ));
            }
            let existing = existing.id;
            self.delete_runner(scope, existing, now)?;
        }
        let (labels, os) = self.runner_labels(&spec.labels);
        let id = self.next_runner;
        self.next_runner += 1;
        let secret = self.new_token("rsr_", 40);
        self.runners.insert(
            id,
            RunnerRec {
                id,
                name: spec.name,
                scope,
                labels,
                os,
                group_id: spec.group_id,
                group_name,
                ephemeral: spec.ephemeral,
                secret,
                online: false,
                last_seen: None,
                job: None,
                lost_since: None,
                jobs_completed: 0,
            },
        );
        Ok(id)
    }

    /// The JIT configuration of a runner.
    pub fn jit_config(&self, id: u64) -> Option<JitConfig> {
        let r = self.runners.get(&id)?;
        Some(JitConfig {
            url: self.base_url.clone(),
            runner_id: r.id,
            runner_name: r.name.clone(),
            token: SecretString::from(r.secret.clone()),
            labels: r.labels.iter().map(|l| l.name.clone()).collect(),
            ephemeral: r.ephemeral,
        })
    }

    /// A persistent (or `--ephemeral`) runner registered with a registration token.
    pub fn register_runner(
        &mut self,
        token: &str,
        scope: Scope,
        spec: NewRunner,
        replace: bool,
        now: Now,
    ) -> Result<u64, ApiError> {
        let valid = self.issued.get(token).is_some_and(|t| {
            t.installation.is_none() && t.scope == scope && t.expires_mono > now.mono
        });
        if !valid {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid or expired registration token for this URL",
                DOC_RUNNERS,
            ));
        }
        self.create_runner(scope, spec, replace, now)
    }

    /// The runner holding this runner-API secret.
    pub fn runner_by_secret(&self, secret: &str) -> Option<u64> {
        self.runners
            .values()
            .find(|r| constant_time_eq(r.secret.as_bytes(), secret.as_bytes()))
            .map(|r| r.id)
    }

    fn seen(&mut self, id: u64, now: Now) -> Result<&mut RunnerRec, RunnerApiError> {
        let r = self.runners.get_mut(&id).ok_or(RunnerApiError::Gone)?;
        r.online = true;
        r.last_seen = Some(now.mono);
        r.lost_since = None;
        Ok(r)
    }

    /// The agent says it is alive.
    pub fn heartbeat(&mut self, id: u64, now: Now) -> Result<(), RunnerApiError> {
        self.seen(id, now).map(|_| ())
    }

    fn assignment(&self, job_id: u64) -> Option<Assignment> {
        let job = self.jobs.get(&job_id)?;
        let run_ms = (job.duration.as_secs_f64() * 1000.0 / self.speed).round() as u64;
        Some(Assignment {
            job_id,
            run_id: job.run_id,
            repo: self.repo_full_name(job.owner, job.repo),
            name: job.name.clone(),
            labels: job.labels.clone(),
            run_ms,
        })
    }

    /// The agent asks for work: its current job if it has one, else the oldest queued job
    /// it can take (its scope covers the job's repository and it has every label).
    pub fn poll(&mut self, id: u64, now: Now) -> Result<Option<Assignment>, RunnerApiError> {
        let runner = self.seen(id, now)?;
        if let Some(job) = runner.job {
            return Ok(self.assignment(job));
        }
        let scope = runner.scope;
        let runner = &self.runners[&id];
        let pick = self.queued.iter().copied().find(|job_id| {
            let job = &self.jobs[job_id];
            job.owner == scope.owner
                && scope.repo.is_none_or(|r| r == job.repo)
                && labels_match(&job.labels, runner)
        });
        let Some(job_id) = pick else {
            return Ok(None);
        };
        self.queued.remove(&job_id);
        let runner = &self.runners[&id];
        let taker = JobRunner {
            id,
            name: runner.name.clone(),
            group_id: runner.group_id,
            group_name: runner.group_name.clone(),
        };
        if let Some(runner) = self.runners.get_mut(&id) {
            runner.job = Some(job_id);
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.status = JobStatus::InProgress;
            job.started_at = Some(now.wall);
            job.ended_wait_mono = Some(now.mono);
            job.runner = Some(taker);
        }
        self.emit(job_id, "in_progress");
        Ok(self.assignment(job_id))
    }

    /// The agent finished `job_id`. Returns whether the runner was removed (ephemeral).
    pub fn complete(
        &mut self,
        id: u64,
        job_id: u64,
        conclusion: Conclusion,
        now: Now,
    ) -> Result<bool, RunnerApiError> {
        let runner = self.seen(id, now)?;
        if runner.job != Some(job_id) {
            return Err(RunnerApiError::NotAssigned);
        }
        runner.job = None;
        runner.jobs_completed += 1;
        let ephemeral = runner.ephemeral;
        self.finish_job(job_id, conclusion, now);
        if ephemeral {
            self.remove_runner(id, now);
        }
        Ok(ephemeral)
    }

    /// The agent leaves. Refused (with its job) while busy: it must finish it first.
    pub fn disconnect(&mut self, id: u64) -> Result<(), RunnerApiError> {
        let runner = self.runners.get_mut(&id).ok_or(RunnerApiError::Gone)?;
        if let Some(job) = runner.job {
            return match self.assignment(job) {
                Some(a) => Err(RunnerApiError::Busy(Box::new(a))),
                None => Err(RunnerApiError::NotAssigned),
            };
        }
        runner.online = false;
        runner.last_seen = None;
        Ok(())
    }

    fn finish_job(&mut self, job_id: u64, conclusion: Conclusion, now: Now) {
        self.queued.remove(&job_id);
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.status = JobStatus::Completed;
            job.conclusion = Some(conclusion);
            job.completed_at = Some(now.wall);
            job.ended_wait_mono.get_or_insert(now.mono);
        }
        self.emit(job_id, "completed");
    }

    /// Time passes: silent runners go offline; busy ones that stay silent for
    /// `lost_job_timeout` lose their job (failed) and a violation is recorded.
    pub fn tick(&mut self, now: Now) {
        let offline_after = self.timeouts.offline_after;
        let lost_timeout = self.timeouts.lost_job_timeout;
        let mut lost = Vec::new();
        for runner in self.runners.values_mut() {
            if runner.online
                && runner
                    .last_seen
                    .is_none_or(|seen| now.mono.saturating_duration_since(seen) > offline_after)
            {
                runner.online = false;
                if runner.job.is_some() {
                    runner.lost_since = Some(now.mono);
                }
            }
            if let (Some(since), Some(job)) = (runner.lost_since, runner.job)
                && now.mono.saturating_duration_since(since) >= lost_timeout
            {
                runner.job = None;
                runner.lost_since = None;
                lost.push((runner.id, runner.name.clone(), job));
            }
        }
        for (runner_id, runner_name, job_id) in lost {
            self.violations.push(Violation {
                at: now.wall,
                kind: ViolationKind::RunnerLostMidJob {
                    runner_id,
                    runner_name,
                    job_id,
                },
            });
            self.finish_job(job_id, Conclusion::Failure, now);
        }
    }

    // ----- jobs ------------------------------------------------------------------------

    /// Checks a run before queueing it: at least one job, one served repository, non-empty
    /// labels. Returns the (owner, repo) indices.
    pub fn check_run(&self, jobs: &[JobSpec]) -> Result<(usize, usize), EmulatorError> {
        let Some(first) = jobs.first() else {
            return Err(EmulatorError::InvalidJob(
                "a run needs at least one job".into(),
            ));
        };
        let (owner, repo) = first
            .repo
            .split_once('/')
            .and_then(|(o, r)| self.repo_scope(o, r).ok())
            .and_then(|s| s.repo.map(|r| (s.owner, r)))
            .ok_or_else(|| {
                EmulatorError::InvalidJob(format!("repository {:?} is not served", first.repo))
            })?;
        if jobs
            .iter()
            .any(|j| !j.repo.eq_ignore_ascii_case(&first.repo))
        {
            return Err(EmulatorError::InvalidJob(
                "all jobs of a run must be in one repository".into(),
            ));
        }
        if let Some(bad) = jobs
            .iter()
            .find(|j| j.labels.is_empty() || j.labels.iter().any(|l| l.trim().is_empty()))
        {
            return Err(EmulatorError::InvalidJob(format!(
                "job {:?} needs non-empty labels",
                bad.name
            )));
        }
        Ok((owner, repo))
    }

    /// Queues one workflow run with `jobs` (all in one repository).
    pub fn enqueue_run(
        &mut self,
        jobs: Vec<JobSpec>,
        now: Now,
    ) -> Result<Vec<JobRef>, EmulatorError> {
        let refs = self.insert_run(&jobs, now.wall, now)?;
        for r in &refs {
            self.queued.insert(r.job_id);
            self.emit(r.job_id, "queued");
        }
        Ok(refs)
    }

    /// Records a workflow run that was created at `created` and has finished: each job
    /// started `waited` after it was created, by a runner named `runner_name`, and succeeded;
    /// with `waited` `None` it was cancelled before any runner took it. No webhook is sent.
    pub fn record_past_run(
        &mut self,
        jobs: Vec<JobSpec>,
        created: DateTime<Utc>,
        waited: Option<Duration>,
        now: Now,
    ) -> Result<Vec<JobRef>, EmulatorError> {
        let refs = self.insert_run(&jobs, created, now)?;
        let waited = waited.map(|w| chrono::Duration::from_std(w).unwrap_or_default());
        for r in &refs {
            let Some(job) = self.jobs.get_mut(&r.job_id) else {
                continue;
            };
            job.status = JobStatus::Completed;
            job.ended_wait_mono = Some(now.mono);
            let Some(waited) = waited else {
                job.conclusion = Some(Conclusion::Cancelled);
                job.completed_at = Some(created);
                continue;
            };
            let started = created + waited;
            let ran = chrono::Duration::from_std(job.duration).unwrap_or_default();
            job.conclusion = Some(Conclusion::Success);
            job.started_at = Some(started);
            job.completed_at = Some(started + ran);
            job.runner = Some(JobRunner {
                id: 0,
                name: format!("past-runner-{}", r.job_id),
                group_id: 1,
                group_name: "Default".into(),
            });
        }
        Ok(refs)
    }

    /// Adds a run created at `created` with `jobs`, all queued.
    fn insert_run(
        &mut self,
        jobs: &[JobSpec],
        created: DateTime<Utc>,
        now: Now,
    ) -> Result<Vec<JobRef>, EmulatorError> {
        let (owner, repo) = self.check_run(jobs)?;
        let workflow_name = jobs[0].workflow_name.clone();
        let run_id = self.next_run;
        self.next_run += 1;
        let number = self.run_numbers.entry((owner, repo)).or_insert(0);
        *number += 1;
        let run_number = *number;
        let head_sha = hex::encode(&Sha256::digest(run_id.to_be_bytes())[..20]);
        let mut refs = Vec::with_capacity(jobs.len());
        for spec in jobs {
            let job_id = self.next_job;
            self.next_job += 1;
            self.jobs.insert(
                job_id,
                JobRec {
                    id: job_id,
                    run_id,
                    owner,
                    repo,
                    name: spec.name.clone(),
                    workflow_name: spec.workflow_name.clone(),
                    labels: spec.labels.clone(),
                    duration: spec.duration,
                    status: JobStatus::Queued,
                    conclusion: None,
                    created_at: created,
                    started_at: None,
                    completed_at: None,
                    queued_mono: now.mono,
                    ended_wait_mono: None,
                    runner: None,
                    head_sha: head_sha.clone(),
                },
            );
            refs.push(JobRef { run_id, job_id });
        }
        self.runs.insert(
            run_id,
            RunRec {
                id: run_id,
                owner,
                repo,
                workflow_name,
                run_number,
                jobs: refs.iter().map(|r| r.job_id).collect(),
                created_at: created,
                head_sha,
            },
        );
        Ok(refs)
    }

    /// Cancels a queued job: it completes as `cancelled` with no runner, as on GitHub.
    pub fn cancel_queued_job(&mut self, job_id: u64, now: Now) -> Result<(), EmulatorError> {
        match self.jobs.get(&job_id) {
            Some(job) if job.status == JobStatus::Queued => {
                self.finish_job(job_id, Conclusion::Cancelled, now);
                Ok(())
            }
            Some(_) => Err(EmulatorError::Job {
                job_id,
                message: "is not queued".into(),
            }),
            None => Err(EmulatorError::Job {
                job_id,
                message: "does not exist".into(),
            }),
        }
    }

    /// A run's status and conclusion, from its jobs.
    pub fn run_status(&self, run: &RunRec) -> (&'static str, Option<&'static str>) {
        let jobs: Vec<&JobRec> = run.jobs.iter().filter_map(|j| self.jobs.get(j)).collect();
        if jobs.iter().all(|j| j.status == JobStatus::Completed) {
            let conclusion = if jobs
                .iter()
                .any(|j| j.conclusion == Some(Conclusion::Failure))
            {
                "failure"
            } else if jobs
                .iter()
                .any(|j| j.conclusion == Some(Conclusion::Cancelled))
            {
                "cancelled"
            } else {
                "success"
            };
            ("completed", Some(conclusion))
        } else if jobs.iter().all(|j| j.status == JobStatus::Queued) {
            ("queued", None)
        } else {
            ("in_progress", None)
        }
    }

    /// Records (and returns) a violation for every job not completed.
    pub fn check_all_done(&mut self, now: Now) -> Vec<Violation> {
        let mut found = Vec::new();
        for job in self.jobs.values() {
            let kind = match job.status {
                JobStatus::Queued => ViolationKind::JobNeverStarted { job_id: job.id },
                JobStatus::InProgress => ViolationKind::JobNotFinished {
                    job_id: job.id,
                    runner_name: job
                        .runner
                        .as_ref()
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                },
                JobStatus::Completed => continue,
            };
            found.push(Violation { at: now.wall, kind });
        }
        self.violations.extend(found.iter().cloned());
        found
    }

    /// Violations so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.violations.clone()
    }

    /// Everything, for tests and the demo.
    pub fn snapshot(&self, now: Now) -> Snapshot {
        let jobs = self
            .jobs
            .values()
            .map(|j| {
                let end = j.ended_wait_mono.unwrap_or(now.mono);
                let wait = end.saturating_duration_since(j.queued_mono);
                JobSnapshot {
                    id: j.id,
                    run_id: j.run_id,
                    repo: self.repo_full_name(j.owner, j.repo),
                    name: j.name.clone(),
                    labels: j.labels.clone(),
                    status: j.status,
                    conclusion: j.conclusion,
                    runner_id: j.runner.as_ref().map(|r| r.id),
                    runner_name: j.runner.as_ref().map(|r| r.name.clone()),
                    queued_at: j.created_at,
                    started_at: j.started_at,
                    completed_at: j.completed_at,
                    wait,
                    wait_workload: wait.mul_f64(self.speed),
                    duration: Some(j.duration),
                }
            })
            .collect();
        let runners = self
            .runners
            .values()
            .map(|r| RunnerSnapshot {
                id: r.id,
                name: r.name.clone(),
                scope: self.scope_name(r.scope),
                status: if r.online {
                    RunnerStatus::Online
                } else {
                    RunnerStatus::Offline
                },
                busy: r.job.is_some(),
                job_id: r.job,
                ephemeral: r.ephemeral,
                labels: r.labels.iter().map(|l| l.name.clone()).collect(),
                jobs_completed: r.jobs_completed,
            })
            .collect();
        Snapshot {
            jobs,
            runners,
            webhooks: self.webhook_stats.clone(),
            violations: self.violations.clone(),
            speed: self.speed,
        }
    }

    // ----- webhooks --------------------------------------------------------------------

    fn new_delivery_id(&mut self) -> String {
        let b: [u8; 16] = self.id_rng.random();
        let h = hex::encode(b);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// Produces one `workflow_job` event per matching hook, with drop/duplicate faults.
    fn emit(&mut self, job_id: u64, action: &str) {
        if self.hooks.is_empty() {
            return;
        }
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let (owner, repo) = (job.owner, job.repo);
        let full = self.repo_full_name(owner, repo);
        let body = Arc::new(
            serde_json::to_vec(&shapes::workflow_job_event(self, job, action)).unwrap_or_default(),
        );
        let hooks = self.hooks.clone();
        for hook in hooks {
            let matches = match (&hook.repo, &hook.owner) {
                (Some(r), _) => r.eq_ignore_ascii_case(&full),
                (None, Some(o)) => o.eq_ignore_ascii_case(&self.owners[owner].login),
                (None, None) => true,
            };
            if !matches {
                continue;
            }
            let (target_type, target_id) = if hook.repo.is_some() {
                ("repository", self.owners[owner].repos[repo].id)
            } else {
                ("organization", self.owners[owner].id)
            };
            self.webhook_stats.events += 1;
            let delivery_id = self.new_delivery_id();
            let drop = self.faults.webhook_drop_rate > 0.0
                && self.hook_rng.random_bool(self.faults.webhook_drop_rate);
            let duplicate = !drop
                && self.faults.webhook_duplicate_rate > 0.0
                && self
                    .hook_rng
                    .random_bool(self.faults.webhook_duplicate_rate);
            let copies: &[bool] = if drop {
                self.webhook_stats.dropped += 1;
                &[]
            } else if duplicate {
                self.webhook_stats.duplicated += 1;
                &[false, true]
            } else {
                &[false]
            };
            if drop {
                self.deliveries.push(DeliveryRecord {
                    delivery_id: delivery_id.clone(),
                    hook_id: hook.id,
                    action: action.to_owned(),
                    job_id,
                    duplicate: false,
                    dropped: true,
                    status: None,
                });
            }
            for &is_dup in copies {
                self.deliveries.push(DeliveryRecord {
                    delivery_id: delivery_id.clone(),
                    hook_id: hook.id,
                    action: action.to_owned(),
                    job_id,
                    duplicate: is_dup,
                    dropped: false,
                    status: None,
                });
                self.outbox.push(Outgoing {
                    url: hook.url.clone(),
                    secret: hook.secret.clone(),
                    hook_id: hook.id,
                    target_type,
                    target_id,
                    delivery_id: delivery_id.clone(),
                    body: body.clone(),
                    record: self.deliveries.len() - 1,
                });
            }
        }
    }

    /// Deliveries produced since the last call, to be sent (outside the lock).
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// Records the outcome of one delivery.
    pub fn record_delivery(&mut self, record: usize, status: Option<u16>) {
        if let Some(r) = self.deliveries.get_mut(record) {
            r.status = status;
        }
        if status.is_some_and(|s| (200..300).contains(&s)) {
            self.webhook_stats.delivered += 1;
        } else {
            self.webhook_stats.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::config::{EmulatorOptions, WebhookConfig};

    fn state() -> (State, Now) {
        let mut config = EmulatorOptions::default().into_config().expect("valid");
        config.runners.offline_after = Duration::from_secs(10);
        config.runners.lost_job_timeout = Duration::from_secs(20);
        let now = Now::current();
        (State::new(&config, "http://emu".into(), now), now)
    }

    fn org(s: &State) -> Scope {
        s.org_scope("octo-org").expect("served")
    }

    fn runner(s: &mut State, name: &str, labels: &[&str], now: Now) -> u64 {
        let scope = org(s);
        s.create_runner(
            scope,
            NewRunner {
                name: name.into(),
                group_id: 1,
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                ephemeral: true,
            },
            false,
            now,
        )
        .expect("created")
    }

    fn job(s: &mut State, labels: &[&str], now: Now) -> u64 {
        s.enqueue_run(
            vec![JobSpec::new(
                "octo-org/app",
                labels,
                Duration::from_secs(60),
            )],
            now,
        )
        .expect("queued")[0]
            .job_id
    }

    #[test]
    fn runner_labels_add_read_only_defaults_once() {
        let (mut s, now) = state();
        let id = runner(&mut s, "r1", &["self-hosted", "LINUX", "gpu", "GPU"], now);
        let r = &s.runners[&id];
        let names: Vec<(&str, bool)> = r
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.read_only))
            .collect();
        assert_eq!(
            names,
            vec![
                ("self-hosted", true),
                ("Linux", true),
                ("X64", true),
                ("gpu", false)
            ]
        );
        assert_eq!(r.os, "linux");
    }

    #[test]
    fn matching_is_case_insensitive_and_requires_every_label() {
        let (mut s, now) = state();
        let gpu = runner(&mut s, "gpu", &["gpu"], now);
        let plain = runner(&mut s, "plain", &[], now);
        let j = job(&mut s, &["Self-Hosted", "GPU"], now);
        assert_eq!(s.poll(plain, now), Ok(None));
        let a = s.poll(gpu, now).expect("alive").expect("assigned");
        assert_eq!(a.job_id, j);
        assert_eq!(a.run_ms, 60_000);
        assert_eq!(s.jobs[&j].status, JobStatus::InProgress);
        // Polling again returns the same job (a lost response is harmless).
        assert_eq!(s.poll(gpu, now).expect("alive").map(|a| a.job_id), Some(j));
    }

    #[test]
    fn any_idle_matching_runner_takes_the_oldest_job() {
        let (mut s, now) = state();
        let a = runner(&mut s, "a", &[], now);
        let b = runner(&mut s, "b", &[], now);
        let j1 = job(&mut s, &["self-hosted"], now);
        let j2 = job(&mut s, &["self-hosted"], now);
        assert_eq!(s.poll(b, now).expect("alive").map(|x| x.job_id), Some(j1));
        assert_eq!(s.poll(a, now).expect("alive").map(|x| x.job_id), Some(j2));
    }

    #[test]
    fn delete_busy_runner_is_refused_with_422_then_allowed_after_completion() {
        let (mut s, now) = state();
        let scope = org(&s);
        let r = runner(&mut s, "r", &[], now);
        let j = job(&mut s, &["self-hosted"], now);
        s.poll(r, now).expect("alive");
        let err = s.delete_runner(scope, r, now).expect_err("busy");
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("Runner \"r\" is still running a job"));
        // Ephemeral: completing removes it.
        assert_eq!(s.complete(r, j, Conclusion::Success, now), Ok(true));
        assert_eq!(
            s.delete_runner(scope, r, now).map_err(|e| e.status),
            Err(StatusCode::NOT_FOUND)
        );
        assert!(s.violations().is_empty());
        assert_eq!(s.jobs[&j].conclusion, Some(Conclusion::Success));
    }

    #[test]
    fn silent_busy_runner_stays_busy_offline_then_its_job_fails() {
        let (mut s, now) = state();
        let scope = org(&s);
        let r = runner(&mut s, "r", &[], now);
        let j = job(&mut s, &["self-hosted"], now);
        s.poll(r, now).expect("alive");
        let later = now.plus(Duration::from_secs(11));
        s.tick(later);
        assert!(!s.runners[&r].online);
        assert_eq!(s.runners[&r].job, Some(j));
        assert!(s.delete_runner(scope, r, later).is_err());
        s.tick(later.plus(Duration::from_secs(21)));
        assert_eq!(s.jobs[&j].conclusion, Some(Conclusion::Failure));
        assert!(matches!(
            s.violations()[0].kind,
            ViolationKind::RunnerLostMidJob { job_id, .. } if job_id == j
        ));
        // Released: now it can be deleted.
        assert!(s.delete_runner(scope, r, later).is_ok());
    }

    #[test]
    fn a_runner_heard_again_before_the_timeout_keeps_its_job() {
        let (mut s, now) = state();
        let r = runner(&mut s, "r", &[], now);
        let j = job(&mut s, &["self-hosted"], now);
        s.poll(r, now).expect("alive");
        s.tick(now.plus(Duration::from_secs(11)));
        s.heartbeat(r, now.plus(Duration::from_secs(12)))
            .expect("alive");
        s.tick(now.plus(Duration::from_secs(40)));
        assert_eq!(s.jobs[&j].status, JobStatus::InProgress);
        assert!(s.violations().is_empty());
    }

    #[test]
    fn disconnect_while_busy_hands_back_the_job() {
        let (mut s, now) = state();
        let r = runner(&mut s, "r", &[], now);
        let j = job(&mut s, &["self-hosted"], now);
        s.poll(r, now).expect("alive");
        match s.disconnect(r) {
            Err(RunnerApiError::Busy(a)) => assert_eq!(a.job_id, j),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn jit_names_conflict_and_groups_must_exist() {
        let (mut s, now) = state();
        let scope = org(&s);
        runner(&mut s, "r", &[], now);
        let spec = NewRunner {
            name: "R".into(),
            group_id: 1,
            labels: vec![],
            ephemeral: true,
        };
        let err = s
            .create_runner(scope, spec.clone(), false, now)
            .expect_err("dup");
        assert_eq!(err.status, StatusCode::CONFLICT);
        let err = s
            .create_runner(
                scope,
                NewRunner {
                    name: "x".into(),
                    group_id: 9,
                    ..spec
                },
                false,
                now,
            )
            .expect_err("no group");
        assert_eq!(err.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn check_all_done_reports_unstarted_and_unfinished_jobs() {
        let (mut s, now) = state();
        let r = runner(&mut s, "r", &[], now);
        let running = job(&mut s, &["self-hosted"], now);
        let waiting = job(&mut s, &["gpu"], now);
        s.poll(r, now).expect("alive");
        let v = s.check_all_done(now);
        assert_eq!(v.len(), 2);
        assert!(
            v.iter()
                .any(|v| v.kind == ViolationKind::JobNeverStarted { job_id: waiting })
        );
        assert!(v.iter().any(|v| matches!(&v.kind,
            ViolationKind::JobNotFinished { job_id, .. } if *job_id == running)));
        assert!(!v[0].to_string().is_empty());
    }

    #[test]
    fn run_status_follows_its_jobs() {
        let (mut s, now) = state();
        let r = runner(&mut s, "r", &[], now);
        let refs = s
            .enqueue_run(
                vec![
                    JobSpec::new("octo-org/app", &["self-hosted"], Duration::from_secs(1)),
                    JobSpec::new("octo-org/app", &["self-hosted"], Duration::from_secs(1)),
                ],
                now,
            )
            .expect("queued");
        let run = refs[0].run_id;
        assert_eq!(s.run_status(&s.runs[&run]), ("queued", None));
        s.poll(r, now).expect("alive");
        assert_eq!(s.run_status(&s.runs[&run]), ("in_progress", None));
        s.complete(r, refs[0].job_id, Conclusion::Success, now)
            .expect("done");
        s.cancel_queued_job(refs[1].job_id, now).expect("cancelled");
        assert_eq!(
            s.run_status(&s.runs[&run]),
            ("completed", Some("cancelled"))
        );
        assert!(s.cancel_queued_job(refs[1].job_id, now).is_err());
    }

    #[test]
    fn rate_limit_bucket_drains_and_refills_after_the_window() {
        let (mut s, now) = state();
        let first = s.consume("pat:0", now);
        assert_eq!(
            (first.limit, first.remaining, first.used()),
            (5000, 4999, 1)
        );
        let later = now.plus(Duration::from_secs(3601));
        assert_eq!(s.rate_info("pat:0", later).remaining, 5000);
    }

    #[test]
    fn burst_429_then_seeded_5xx_rate() {
        let (mut s, _) = state();
        s.set_faults(Faults {
            burst_429: Some((2, 7)),
            error_rate_5xx: 0.5,
            ..Faults::default()
        });
        assert_eq!(s.draw_api_fault(), Some(ApiFault::SecondaryLimit(7)));
        assert_eq!(s.draw_api_fault(), Some(ApiFault::SecondaryLimit(7)));
        let errors = (0..1000).filter(|_| s.draw_api_fault().is_some()).count();
        assert!((400..600).contains(&errors), "{errors}");
    }

    #[test]
    fn webhook_faults_drop_and_duplicate_with_the_same_delivery_id() {
        let mut config = EmulatorOptions::default().into_config().expect("valid");
        config.webhooks.push(WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret: None,
            id: 5,
            repo: None,
            owner: None,
        });
        config.faults.webhook_drop_rate = 0.2;
        config.faults.webhook_duplicate_rate = 0.2;
        let now = Now::current();
        let mut s = State::new(&config, "http://emu".into(), now);
        for _ in 0..500 {
            job(&mut s, &["self-hosted"], now);
        }
        let out = s.take_outbox();
        let stats = s.webhook_stats.clone();
        assert_eq!(stats.events, 500);
        assert!((60..140).contains(&stats.dropped), "{stats:?}");
        assert!((50..120).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(out.len() as u64, 500 - stats.dropped + stats.duplicated);
        let dups: Vec<&DeliveryRecord> = s.deliveries.iter().filter(|d| d.duplicate).collect();
        for d in dups {
            assert_eq!(
                s.deliveries
                    .iter()
                    .filter(|o| o.delivery_id == d.delivery_id)
                    .count(),
                2
            );
        }
    }

    #[test]
    fn installation_tokens_access_only_their_account_and_expire() {
        let (mut s, now) = state();
        s.app = Some(AppState {
            app_id: 1,
            client_id: None,
            slug: "x".into(),
            decoding_key: jsonwebtoken::DecodingKey::from_secret(b"unused"),
            installations: vec![Installation { id: 42, owner: 0 }],
        });
        let (token, _) = s.issue_installation_token(42, now).expect("issued");
        let p = s.principal_for_token(&token, now).expect("valid");
        assert!(p.may_access(0));
        assert!(!p.may_access(1));
        assert_eq!(p.bucket(), "installation:42");
        assert!(
            s.principal_for_token(&token, now.plus(Duration::from_secs(3601)))
                .is_none()
        );
        assert!(s.issue_installation_token(7, now).is_err());
        assert!(s.principal_for_token("emulator-token", now).is_some());
        assert!(s.principal_for_token("nope", now).is_none());
    }
}
