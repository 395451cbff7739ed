//! The emulator's state and every rule it enforces: runners and their managers, job picking
//! by tags / `run_untagged` / paused / runner scope (a project runner: the projects it is enabled
//! in), users and their project memberships, each runner's queue value (what Workhorse
//! long polling watches), job updates, traces and leases, deletions that lose running jobs,
//! and the Job Hook events all of this produces. Pure bookkeeping: no I/O, the time is passed
//! in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{
    JobSnapshot, JobSpec, JobStatus, ManagerSnapshot, RunnerSnapshot, Snapshot, Violation,
    ViolationKind,
};

pub(crate) struct Manager {
    created_at: DateTime<Utc>,
    contacted_at: DateTime<Utc>,
    running: BTreeSet<u64>,
    jobs_done: u32,
}

pub(crate) struct Runner {
    pub(crate) id: u64,
    token: String,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) run_untagged: bool,
    pub(crate) paused: bool,
    pub(crate) locked: bool,
    pub(crate) runner_type: String,
    /// Group id (group_type) or owner project id (project_type).
    pub(crate) scope: Option<u64>,
    /// The projects a project runner is enabled in (`runner_projects`), its owner included.
    pub(crate) projects: BTreeSet<u64>,
    pub(crate) maintenance_note: String,
    created_at: DateTime<Utc>,
    contacted_at: Option<DateTime<Utc>>,
    managers: BTreeMap<String, Manager>,
    /// The runner's queue value (`X-GitLab-Last-Update`) and until when it lives; a new
    /// value is set whenever a job it may take is queued or the runner changes.
    queue: Option<(String, Instant)>,
}

struct Job {
    snap: JobSnapshot,
    spec: JobSpec,
    token: String,
    lease_until: Option<Instant>,
    trace: Vec<u8>,
}

/// Most trace bytes kept per job.
pub(crate) const MAX_TRACE: usize = 1 << 20;

/// What `POST /jobs/request` answers once it reaches "GitLab".
#[derive(Debug)]
pub(crate) enum Assigned {
    /// 201: this job payload.
    Job(Box<Value>, Box<Event>),
    /// 204 with this `X-GitLab-Last-Update`.
    Nothing(String),
}

/// What Workhorse sees when it watches a runner's queue value against `last_update`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queue {
    /// The value is `last_update`: hold the request.
    Unchanged,
    /// Another value, none, or an unknown token: pass the request on to GitLab.
    Changed,
}

/// Why a trace patch was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TraceRefusal {
    /// Unknown job or token, or the job is not running (with its status).
    Forbidden(Option<&'static str>),
    /// The range does not start at the trace's end (with the trace's size).
    Range(usize),
    /// The trace would exceed [`MAX_TRACE`].
    TooLarge,
}

/// A project: id, path, group.
#[derive(Clone, Debug)]
pub(crate) struct Project {
    pub(crate) id: u64,
    pub(crate) path: String,
    pub(crate) group: Option<u64>,
}

/// A Job Hook event: the job as it is after a status change.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) job: JobSnapshot,
    pub(crate) name: String,
    pub(crate) project_path: String,
    pub(crate) runner: Option<(u64, String, String, Vec<String>)>,
}

/// Why a call made with a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown token or id.
    Forbidden,
    /// The job is not running (finished, lost).
    Gone,
    /// A job update with a state GitLab does not take.
    Invalid,
}

/// What `POST /user/runners` may set.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewRunner {
    pub(crate) runner_type: String,
    pub(crate) scope: Option<u64>,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) run_untagged: bool,
    pub(crate) paused: bool,
    pub(crate) locked: bool,
    pub(crate) maintenance_note: String,
}

/// A user who is not an administrator.
struct User {
    username: String,
    token: SecretString,
    /// Project id → access level.
    memberships: BTreeMap<u64, u32>,
}

/// Who made an admin-API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// An administrator (an admin token).
    Admin,
    /// The user at this index.
    User(usize),
}

/// GitLab's Maintainer access level: needed to create project runners and enable them.
pub(crate) const MAINTAINER: u32 = 40;

pub(crate) struct State {
    admin_tokens: Vec<SecretString>,
    users: Vec<User>,
    pub(crate) projects: Vec<Project>,
    pub(crate) groups: Vec<(u64, String)>,
    pub(crate) faults: Faults,
    pub(crate) outage_until: Option<Instant>,
    rate_limit: Option<u32>,
    window: (Instant, u32),
    job_lease: Duration,
    online_window: Duration,
    queue_expiry: Duration,
    runner_created_at: bool,
    /// `http://127.0.0.1:PORT`, for the repository URL of job payloads.
    base_url: String,
    runners: BTreeMap<u64, Runner>,
    jobs: Vec<Job>,
    by_id: HashMap<u64, usize>,
    next_runner: u64,
    next_job: u64,
    seen: BTreeSet<(u64, String)>,
    violations: Vec<Violation>,
    peak_running: u32,
    runners_created: u32,
    pub(crate) requests: BTreeMap<String, u64>,
    pub(crate) faulted: u64,
    pub(crate) webhooks_sent: u64,
    pub(crate) rng: StdRng,
}

/// The rate budget after one admin request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset_in: Duration,
    /// The request is over the budget (answer 429).
    pub(crate) exhausted: bool,
}

/// The length of a rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Equality of a presented token and a stored one, in time independent of where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    crate::serve::constant_time_eq(a.as_bytes(), b.as_bytes())
}

impl State {
    pub(crate) fn new(config: &EmulatorConfig, base_url: String) -> Self {
        State {
            admin_tokens: config.admin_tokens.clone(),
            users: config
                .users
                .iter()
                .map(|u| User {
                    username: u.username.clone(),
                    token: u.token.clone(),
                    memberships: u
                        .memberships
                        .iter()
                        .map(|m| (m.project, m.access_level))
                        .collect(),
                })
                .collect(),
            projects: config
                .projects
                .iter()
                .map(|p| Project {
                    id: p.id,
                    path: p.path.clone(),
                    group: p.group,
                })
                .collect(),
            groups: config
                .groups
                .iter()
                .map(|g| (g.id, g.path.clone()))
                .collect(),
            faults: config.faults.clone(),
            outage_until: None,
            rate_limit: config.rate_limit,
            window: (Instant::now(), 0),
            job_lease: config.job_lease,
            online_window: config.online_window,
            queue_expiry: config.queue_expiry,
            runner_created_at: config.runner_created_at,
            base_url,
            runners: BTreeMap::new(),
            jobs: Vec::new(),
            by_id: HashMap::new(),
            next_runner: 1000,
            next_job: 5000,
            seen: BTreeSet::new(),
            violations: Vec::new(),
            peak_running: 0,
            runners_created: 0,
            requests: BTreeMap::new(),
            faulted: 0,
            webhooks_sent: 0,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Admin requests allowed per minute; the window restarts at `at`.
    pub(crate) fn set_rate_limit(&mut self, per_minute: Option<u32>, at: Instant) {
        self.rate_limit = per_minute;
        self.window = (at, 0);
    }

    /// Counts one admin request against the per-minute budget, if there is one.
    pub(crate) fn spend_rate_budget(&mut self, at: Instant) -> Option<Budget> {
        let limit = self.rate_limit?;
        if at.saturating_duration_since(self.window.0) >= RATE_WINDOW {
            self.window = (at, 0);
        }
        let exhausted = self.window.1 >= limit;
        if !exhausted {
            self.window.1 += 1;
        }
        Some(Budget {
            limit,
            remaining: limit - self.window.1,
            reset_in: RATE_WINDOW.saturating_sub(at.saturating_duration_since(self.window.0)),
            exhausted,
        })
    }

    /// Who `token` belongs to: an administrator or a user; `None` for an unknown token.
    pub(crate) fn caller(&self, token: &str) -> Option<Caller> {
        if self
            .admin_tokens
            .iter()
            .any(|t| same(token, t.expose_secret()))
        {
            return Some(Caller::Admin);
        }
        self.users
            .iter()
            .position(|u| same(token, u.token.expose_secret()))
            .map(Caller::User)
    }

    /// `GET /user`: the caller's username and whether it is an administrator.
    pub(crate) fn user_json(&self, caller: Caller) -> Value {
        match caller {
            Caller::Admin => json!({ "id": 1, "username": "root", "is_admin": true }),
            Caller::User(i) => json!({
                "id": 2 + i,
                "username": self.users.get(i).map(|u| u.username.as_str()),
                "is_admin": false,
            }),
        }
    }

    /// The caller's access level in `project` (`None`: not a member; an administrator is
    /// a member of nothing but may do everything).
    fn level(&self, caller: Caller, project: u64) -> Option<u32> {
        match caller {
            Caller::Admin => None,
            Caller::User(i) => self
                .users
                .get(i)
                .and_then(|u| u.memberships.get(&project).copied()),
        }
    }

    /// Whether the caller may manage `project`'s runners (Maintainer, or an administrator).
    pub(crate) fn maintains(&self, caller: Caller, project: u64) -> bool {
        caller == Caller::Admin || self.level(caller, project).is_some_and(|l| l >= MAINTAINER)
    }

    /// Projects the caller is a member of with at least `min_level` (`membership=true`);
    /// without `membership`, an administrator sees every project and a user the projects it
    /// is a member of. Ordered by id.
    pub(crate) fn visible_projects(
        &self,
        caller: Caller,
        membership: bool,
        min_level: Option<u32>,
    ) -> Vec<Project> {
        self.projects
            .iter()
            .filter(|p| match (caller, membership) {
                (Caller::Admin, false) => min_level.is_none(),
                _ => self
                    .level(caller, p.id)
                    .is_some_and(|l| l >= min_level.unwrap_or(0)),
            })
            .cloned()
            .collect()
    }

    /// Makes `username` a member of `project` with `access_level` (a user joining a project).
    /// `false` when there is no such user.
    pub(crate) fn add_member(&mut self, username: &str, project: u64, access_level: u32) -> bool {
        match self.users.iter_mut().find(|u| u.username == username) {
            Some(u) => {
                u.memberships.insert(project, access_level);
                true
            }
            None => false,
        }
    }

    /// `POST /projects/:project/runners {runner_id}` by `caller`, as GitLab decides it
    /// (`lib/api/ci/runners.rb`, `Ci::Runners::AssignRunnerService`, `Ci::Runner#assign_to`):
    /// the runner's entity, or the status and message of the refusal.
    pub(crate) fn enable_runner(
        &mut self,
        caller: Caller,
        project: &str,
        runner: u64,
        now: DateTime<Utc>,
    ) -> Result<Value, (u16, Value)> {
        let refuse = |code: u16, message: &str| Err((code, json!({ "message": message })));
        let Some(project) = self.project(project).map(|p| p.id) else {
            return refuse(404, "404 Project Not Found");
        };
        if caller != Caller::Admin && self.level(caller, project).is_none() {
            return refuse(404, "404 Project Not Found");
        }
        if !self.maintains(caller, project) {
            return refuse(403, "403 Forbidden");
        }
        let Some(r) = self.runners.get(&runner) else {
            return refuse(404, "404 Runner Not Found");
        };
        if r.runner_type == "group_type" {
            return refuse(403, "403 Forbidden - Runner is a group runner");
        }
        if caller != Caller::Admin {
            if r.locked {
                return refuse(403, "403 Forbidden - Runner is locked");
            }
            if !r.projects.iter().any(|p| self.maintains(caller, *p)) {
                return refuse(403, "403 Forbidden - No access granted");
            }
        }
        if r.runner_type != "project_type" {
            return refuse(
                400,
                "Transitioning an instance runner to a project runner is not supported",
            );
        }
        if r.projects.contains(&project) {
            return Err((
                400,
                json!({
                    "message": ["Assign to Validation failed: Runner projects project has already been taken"],
                    "reason": "runner_error",
                }),
            ));
        }
        if let Some(r) = self.runners.get_mut(&runner) {
            r.projects.insert(project);
        }
        self.runner_json(runner, true, now)
            .ok_or((404, json!({ "message": "404 Runner Not Found" })))
    }

    /// Random lower-case hex.
    pub(crate) fn hex(&mut self, bytes: usize) -> String {
        let random: Vec<u8> = (0..bytes).map(|_| self.rng.random()).collect();
        hex::encode(random)
    }

    /// A random UUID-shaped string.
    pub(crate) fn uuid(&mut self) -> String {
        let h = self.hex(16);
        crate::serve::uuid_shape(&h)
    }

    /// A project by numeric id or `path_with_namespace`.
    pub(crate) fn project(&self, key: &str) -> Option<&Project> {
        match key.parse::<u64>() {
            Ok(id) => self.projects.iter().find(|p| p.id == id),
            Err(_) => self.projects.iter().find(|p| p.path == key),
        }
    }

    /// A group by numeric id or full path.
    pub(crate) fn group(&self, key: &str) -> Option<u64> {
        match key.parse::<u64>() {
            Ok(id) => self.groups.iter().find(|g| g.0 == id).map(|g| g.0),
            Err(_) => self.groups.iter().find(|g| g.1 == key).map(|g| g.0),
        }
    }

    /// Projects of a group and of its subgroups (by path prefix).
    pub(crate) fn group_projects(&self, group: u64) -> Vec<Project> {
        let Some(path) = self
            .groups
            .iter()
            .find(|g| g.0 == group)
            .map(|g| g.1.clone())
        else {
            return Vec::new();
        };
        let prefix = format!("{path}/");
        let in_tree: BTreeSet<u64> = self
            .groups
            .iter()
            .filter(|g| g.0 == group || g.1.starts_with(&prefix))
            .map(|g| g.0)
            .collect();
        self.projects
            .iter()
            .filter(|p| p.group.is_some_and(|g| in_tree.contains(&g)))
            .cloned()
            .collect()
    }

    /// Whether something contacted at `contacted` is online at `now`.
    fn online(&self, contacted: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let window =
            chrono::Duration::from_std(self.online_window).unwrap_or(chrono::Duration::MAX);
        contacted.is_some_and(|t| t + window > now)
    }

    /// A manager's `status`.
    fn status_of(&self, contacted: Option<DateTime<Utc>>, now: DateTime<Utc>) -> &'static str {
        match contacted {
            None => "never_contacted",
            Some(_) if self.online(contacted, now) => "online",
            Some(_) => "offline",
        }
    }

    /// A runner's (deprecated REST) `status`: `paused` for a paused runner that has been in
    /// contact. (`stale`, after 7 days, is not modelled.)
    fn runner_status(&self, r: &Runner, now: DateTime<Utc>) -> &'static str {
        match r.contacted_at {
            None => "never_contacted",
            Some(_) if r.paused => "paused",
            c => self.status_of(c, now),
        }
    }

    /// A new queue value for runner `id` (a job it may take was queued, or it changed).
    pub(crate) fn tick(&mut self, id: u64, at: Instant) {
        let value = self.hex(8);
        let expiry = self.queue_expiry;
        if let Some(r) = self.runners.get_mut(&id) {
            r.queue = Some((value, at + expiry));
        }
    }

    /// The queue value of runner `id`, made if it has none or it expired.
    fn ensure_queue_value(&mut self, id: u64, at: Instant) -> String {
        let current = self
            .runners
            .get(&id)
            .and_then(|r| r.queue.as_ref())
            .filter(|(_, until)| *until > at)
            .map(|(v, _)| v.clone());
        match current {
            Some(v) => v,
            None => {
                self.tick(id, at);
                self.runners
                    .get(&id)
                    .and_then(|r| r.queue.as_ref())
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default()
            }
        }
    }

    /// Workhorse's check: whether the queue value of the runner with `token` is still
    /// `last_update`.
    pub(crate) fn watch(&self, token: &str, last_update: &str, at: Instant) -> Queue {
        let current = self
            .runner_by_token(token)
            .and_then(|id| self.runners.get(&id))
            .and_then(|r| r.queue.as_ref())
            .filter(|(_, until)| *until > at);
        match current {
            Some((v, _)) if same(v, last_update) => Queue::Unchanged,
            _ => Queue::Changed,
        }
    }

    /// Creates a runner; returns its id and glrt- token.
    pub(crate) fn create_runner(&mut self, new: NewRunner, now: DateTime<Utc>) -> (u64, String) {
        let id = self.next_runner;
        self.next_runner += 1;
        let token = format!("glrt-{}", self.hex(12));
        let projects = match new.runner_type.as_str() {
            "project_type" => new.scope.into_iter().collect(),
            _ => BTreeSet::new(),
        };
        self.runners.insert(
            id,
            Runner {
                id,
                token: token.clone(),
                description: new.description,
                tags: new.tags,
                run_untagged: new.run_untagged,
                paused: new.paused,
                locked: new.locked,
                runner_type: new.runner_type,
                scope: new.scope,
                projects,
                maintenance_note: new.maintenance_note,
                created_at: now,
                contacted_at: None,
                managers: BTreeMap::new(),
                queue: None,
            },
        );
        self.runners_created += 1;
        (id, token)
    }

    pub(crate) fn runner_mut(&mut self, id: u64) -> Option<&mut Runner> {
        self.runners.get_mut(&id)
    }

    fn active(r: &Runner) -> bool {
        r.managers.values().any(|m| !m.running.is_empty())
    }

    /// The listing item of a runner (`GET /runners`), or with `detail` the full record
    /// (`GET /runners/:id`).
    pub(crate) fn runner_json(&self, id: u64, detail: bool, now: DateTime<Utc>) -> Option<Value> {
        let r = self.runners.get(&id)?;
        let mut v = json!({
            "id": r.id,
            "description": r.description,
            "active": !r.paused,
            "paused": r.paused,
            "is_shared": r.runner_type == "instance_type",
            "runner_type": r.runner_type,
            "name": "gitlab-runner",
            "online": self.online(r.contacted_at, now),
            "status": self.runner_status(r, now),
            "job_execution_status": if Self::active(r) { "active" } else { "idle" },
            "ip_address": Value::Null,
        });
        if self.runner_created_at {
            v["created_at"] = json!(r.created_at);
        }
        if detail {
            let scope = match (r.runner_type.as_str(), r.scope) {
                ("group_type", Some(g)) => json!({ "groups": [{ "id": g }] }),
                ("project_type", Some(_)) => json!({
                    "projects": r.projects.iter().map(|p| json!({ "id": p })).collect::<Vec<_>>(),
                }),
                _ => json!({}),
            };
            v["contacted_at"] = json!(r.contacted_at);
            v["tag_list"] = json!(r.tags);
            v["run_untagged"] = json!(r.run_untagged);
            v["locked"] = json!(r.locked);
            v["access_level"] = json!("not_protected");
            v["maximum_timeout"] = Value::Null;
            v["maintenance_note"] = json!(r.maintenance_note);
            if let Some(obj) = scope.as_object() {
                for (k, val) in obj {
                    v[k] = val.clone();
                }
            }
        }
        Some(v)
    }

    /// Ids of every runner, in order.
    pub(crate) fn runner_ids(&self, filter: impl Fn(&Runner) -> bool) -> Vec<u64> {
        self.runners
            .values()
            .filter(|r| filter(r))
            .map(|r| r.id)
            .collect()
    }

    /// `GET /runners/:id/managers`.
    pub(crate) fn managers_json(&self, id: u64, now: DateTime<Utc>) -> Option<Value> {
        let r = self.runners.get(&id)?;
        let items: Vec<Value> = r
            .managers
            .iter()
            .zip(1..)
            .map(|((sid, m), n)| {
                json!({
                    "id": r.id * 1000 + n,
                    "system_id": sid,
                    "version": "17.5.0-emulated",
                    "revision": "emulated",
                    "platform": "linux",
                    "architecture": "amd64",
                    "created_at": m.created_at,
                    "contacted_at": m.contacted_at,
                    "ip_address": "127.0.0.1",
                    "status": self.status_of(Some(m.contacted_at), now),
                    "job_execution_status": if m.running.is_empty() { "idle" } else { "active" },
                })
            })
            .collect();
        Some(Value::Array(items))
    }

    /// Fails a running job because its runner is gone, recording `kind`.
    fn lose(&mut self, job: u64, kind: ViolationKind, now: DateTime<Utc>) -> Option<Event> {
        let i = *self.by_id.get(&job)?;
        if self.jobs[i].snap.status != JobStatus::Running {
            return None;
        }
        let (runner, system_id) = self.jobs[i].snap.runner.clone().unwrap_or_default();
        self.violations.push(Violation {
            kind,
            runner,
            system_id,
            job,
            at: now,
        });
        Some(self.finish(i, JobStatus::Failed, Some("runner_system_failure"), now))
    }

    /// `DELETE /runners/:id`: the runner and its managers go; their running jobs are lost.
    pub(crate) fn delete_runner(&mut self, id: u64, now: DateTime<Utc>) -> Option<Vec<Event>> {
        let r = self.runners.remove(&id)?;
        let jobs: Vec<u64> = r
            .managers
            .values()
            .flat_map(|m| m.running.clone())
            .collect();
        Some(
            jobs.into_iter()
                .filter_map(|j| self.lose(j, ViolationKind::RunnerDeletedWhileBusy, now))
                .collect(),
        )
    }

    fn runner_by_token(&self, token: &str) -> Option<u64> {
        self.runners
            .values()
            .find(|r| same(token, &r.token))
            .map(|r| r.id)
    }

    /// `DELETE /runners {token}`.
    pub(crate) fn delete_runner_by_token(
        &mut self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, Refusal> {
        let id = self.runner_by_token(token).ok_or(Refusal::Forbidden)?;
        self.delete_runner(id, now).ok_or(Refusal::Forbidden)
    }

    /// `DELETE /runners/managers {token, system_id}`.
    pub(crate) fn delete_manager(
        &mut self,
        token: &str,
        system_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, Refusal> {
        let id = self.runner_by_token(token).ok_or(Refusal::Forbidden)?;
        let m = self
            .runners
            .get_mut(&id)
            .and_then(|r| r.managers.remove(system_id))
            .ok_or(Refusal::Gone)?;
        Ok(m.running
            .into_iter()
            .filter_map(|j| self.lose(j, ViolationKind::ManagerDeletedWhileBusy, now))
            .collect())
    }

    /// Records contact by manager `system_id` of the runner with `token` (GitLab's heartbeat);
    /// the manager's record is made on its first contact. Without a `system_id` only the runner
    /// is in contact.
    fn contact(&mut self, token: &str, system_id: &str, now: DateTime<Utc>) -> Option<u64> {
        let id = self.runner_by_token(token)?;
        let r = self.runners.get_mut(&id)?;
        r.contacted_at = Some(now);
        if system_id.is_empty() {
            return Some(id);
        }
        let m = r
            .managers
            .entry(system_id.to_owned())
            .or_insert_with(|| Manager {
                created_at: now,
                contacted_at: now,
                running: BTreeSet::new(),
                jobs_done: 0,
            });
        m.contacted_at = now;
        self.seen.insert((id, system_id.to_owned()));
        Some(id)
    }

    /// `POST /runners/verify`: the runner's id, if the token is known.
    pub(crate) fn verify(
        &mut self,
        token: &str,
        system_id: &str,
        now: DateTime<Utc>,
    ) -> Option<u64> {
        self.contact(token, system_id, now)
    }

    fn project_of(&self, id: u64) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id)
    }

    /// Whether runner `r` may run `job` (tags, untagged, scope).
    fn matches(&self, r: &Runner, job: &JobSpec) -> bool {
        let tags_ok = if job.tags.is_empty() {
            r.run_untagged
        } else {
            job.tags.iter().all(|t| r.tags.contains(t))
        };
        let scope_ok = match (r.runner_type.as_str(), r.scope) {
            ("project_type", Some(_)) => r.projects.contains(&job.project_id),
            ("group_type", Some(g)) => self
                .group_projects(g)
                .iter()
                .any(|p| p.id == job.project_id),
            _ => true,
        };
        tags_ok && scope_ok
    }

    /// `POST /jobs/request` once it reaches GitLab: the manager's contact is recorded (its
    /// record made on first contact); a paused runner, or a `last_update` that is still the
    /// runner's queue value, gets nothing; otherwise the oldest pending job this runner may run,
    /// flipped to running. `Err` for an unknown token.
    pub(crate) fn request_job(
        &mut self,
        token: &str,
        system_id: &str,
        last_update: Option<&str>,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<Assigned, Refusal> {
        let id = self
            .contact(token, system_id, now)
            .ok_or(Refusal::Forbidden)?;
        let paused = self.runners.get(&id).is_none_or(|r| r.paused);
        let value = self.ensure_queue_value(id, at);
        if paused {
            return Ok(Assigned::Nothing(value));
        }
        if let Some(last) = last_update.filter(|l| same(l, &value)) {
            return Ok(Assigned::Nothing(last.to_owned()));
        }
        let Some(r) = self.runners.get(&id) else {
            return Err(Refusal::Forbidden);
        };
        let Some(i) = self
            .jobs
            .iter()
            .position(|j| j.snap.status == JobStatus::Pending && self.matches(r, &j.spec))
        else {
            return Ok(Assigned::Nothing(value));
        };
        let (desc, rtype, rtags) = (r.description.clone(), r.runner_type.clone(), r.tags.clone());
        let lease = self.job_lease;
        let job = &mut self.jobs[i];
        job.snap.status = JobStatus::Running;
        job.snap.runner = Some((id, system_id.to_owned()));
        job.snap.started_at = Some(now);
        job.lease_until = Some(at + lease);
        let job_id = job.snap.id;
        let payload = self.payload(i);
        let job = &self.jobs[i];
        let snap = job.snap.clone();
        let name = job.spec.name.clone();
        if let Some(m) = self
            .runners
            .get_mut(&id)
            .and_then(|r| r.managers.get_mut(system_id))
        {
            m.running.insert(job_id);
        }
        let running = self
            .jobs
            .iter()
            .filter(|j| j.snap.status == JobStatus::Running)
            .count() as u32;
        self.peak_running = self.peak_running.max(running);
        let event = self.event(snap, name, Some((id, desc, rtype, rtags)));
        Ok(Assigned::Job(Box::new(payload), Box::new(event)))
    }

    /// The job payload of job `i` (GitLab's `JobRequest::Response` entity): what
    /// gitlab-runner needs to run it with the shell executor. `GIT_STRATEGY=none`: no
    /// repository is fetched.
    fn payload(&self, i: usize) -> Value {
        let job = &self.jobs[i];
        let id = job.snap.id;
        let project = job.spec.project_id;
        let path = self
            .project_of(project)
            .map_or_else(|| format!("project-{project}"), |p| p.path.clone());
        let sha = "0".repeat(40);
        let host = self
            .base_url
            .strip_prefix("http://")
            .unwrap_or(&self.base_url);
        let var = |key: &str, value: String, public: bool, masked: bool| {
            json!({ "key": key, "value": value, "public": public, "masked": masked,
                    "file": false, "raw": false })
        };
        json!({
            "id": id,
            "token": job.token,
            "allow_git_fetch": true,
            "job_info": {
                "id": id,
                "name": job.spec.name,
                "stage": "test",
                "project_id": project,
                "project_name": path.rsplit('/').next().unwrap_or_default(),
                "project_full_path": path,
                "pipeline_id": id / 10,
                "time_in_queue_seconds": 0.0,
            },
            "git_info": {
                "repo_url": format!("http://gitlab-ci-token:{}@{host}/{path}.git", job.token),
                "repo_object_format": "sha1",
                "ref": "main",
                "sha": sha,
                "before_sha": sha,
                "ref_type": "branch",
                "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
                "depth": 20,
            },
            "runner_info": { "timeout": 3600, "runner_session_url": Value::Null },
            "variables": [
                var("CI_JOB_ID", id.to_string(), true, false),
                var("CI_JOB_NAME", job.spec.name.clone(), true, false),
                var("CI_JOB_STAGE", "test".to_owned(), true, false),
                var("CI_JOB_TOKEN", job.token.clone(), false, true),
                var("CI_PROJECT_ID", project.to_string(), true, false),
                var("CI_PROJECT_PATH", path.clone(), true, false),
                var("CI_PIPELINE_ID", (id / 10).to_string(), true, false),
                var("CI_SERVER_URL", self.base_url.clone(), true, false),
                var("GIT_STRATEGY", "none".to_owned(), true, false),
            ],
            "steps": [{ "name": "script", "script": job.spec.script_lines(), "timeout": 3600,
                        "when": "on_success", "allow_failure": false }],
            "image": Value::Null,
            "services": [],
            "artifacts": [],
            "cache": [],
            "credentials": [],
            "dependencies": [],
            "features": {
                "trace_sections": true,
                "failure_reasons": ["unknown_failure", "script_failure", "runner_system_failure",
                                    "job_execution_timeout", "runner_unsupported"],
            },
        })
    }

    fn event(
        &self,
        job: JobSnapshot,
        name: String,
        runner: Option<(u64, String, String, Vec<String>)>,
    ) -> Event {
        let project_path = self
            .project_of(job.project_id)
            .map(|p| p.path.clone())
            .unwrap_or_default();
        Event {
            job,
            name,
            project_path,
            runner,
        }
    }

    /// The running job `id` if `token` is its job token: `Err(Forbidden)` for an unknown job
    /// or token, `Err(Gone)` when it is not running. A known job renews its lease and its
    /// manager's contact (GitLab's heartbeat on job calls).
    fn running_job(
        &mut self,
        id: u64,
        token: &str,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<usize, Refusal> {
        let i = *self.by_id.get(&id).ok_or(Refusal::Forbidden)?;
        if !same(token, &self.jobs[i].token) {
            return Err(Refusal::Forbidden);
        }
        if self.jobs[i].snap.status != JobStatus::Running {
            return Err(Refusal::Gone);
        }
        let lease = self.job_lease;
        self.jobs[i].lease_until = Some(at + lease);
        if let Some((rid, sid)) = self.jobs[i].snap.runner.clone()
            && let Some(r) = self.runners.get_mut(&rid)
        {
            r.contacted_at = Some(now);
            if let Some(m) = r.managers.get_mut(&sid) {
                m.contacted_at = now;
            }
        }
        Ok(i)
    }

    /// A job's status, as GitLab spells it (the `Job-Status` header of a refusal).
    pub(crate) fn job_status(&self, id: u64) -> Option<&'static str> {
        self.by_id
            .get(&id)
            .map(|&i| self.jobs[i].snap.status.as_str())
    }

    /// `PUT /jobs/:id {token, state, exit_code, failure_reason}`: `running` renews the lease,
    /// `success` / `failed` finish the job; any other state is `Err(Invalid)`.
    pub(crate) fn update_job(
        &mut self,
        id: u64,
        token: &str,
        state: &str,
        failure_reason: Option<&str>,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<Option<Event>, Refusal> {
        let i = self.running_job(id, token, now, at)?;
        Ok(match state {
            "running" => None,
            "success" => Some(self.finish(i, JobStatus::Success, None, now)),
            "failed" => {
                let reason = failure_reason.filter(|r| {
                    !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                });
                Some(self.finish(
                    i,
                    JobStatus::Failed,
                    Some(reason.unwrap_or("script_failure")),
                    now,
                ))
            }
            _ => return Err(Refusal::Invalid),
        })
    }

    /// `PATCH /jobs/:id/trace` with `Content-Range: start-end`: appends `body` if `start` is
    /// the trace's current size; returns the new size.
    pub(crate) fn append_trace(
        &mut self,
        id: u64,
        token: &str,
        start: usize,
        body: &[u8],
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<usize, TraceRefusal> {
        let i = match self.running_job(id, token, now, at) {
            Ok(i) => i,
            Err(Refusal::Gone) => return Err(TraceRefusal::Forbidden(self.job_status(id))),
            Err(_) => return Err(TraceRefusal::Forbidden(None)),
        };
        let trace = &mut self.jobs[i].trace;
        if start != trace.len() {
            return Err(TraceRefusal::Range(trace.len()));
        }
        if trace.len() + body.len() > MAX_TRACE {
            return Err(TraceRefusal::TooLarge);
        }
        trace.extend_from_slice(body);
        Ok(trace.len())
    }

    fn finish(
        &mut self,
        i: usize,
        status: JobStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Event {
        let job = &mut self.jobs[i];
        job.snap.status = status;
        job.snap.failure_reason = reason.map(str::to_owned);
        job.snap.finished_at = Some(now);
        job.lease_until = None;
        let snap = job.snap.clone();
        let name = job.spec.name.clone();
        let mut runner = None;
        if let Some((rid, sid)) = &snap.runner
            && let Some(r) = self.runners.get_mut(rid)
        {
            if let Some(m) = r.managers.get_mut(sid) {
                m.running.remove(&snap.id);
                m.jobs_done += 1;
            }
            runner = Some((
                r.id,
                r.description.clone(),
                r.runner_type.clone(),
                r.tags.clone(),
            ));
        }
        self.event(snap, name, runner)
    }

    /// Queues jobs as pending; returns their ids and the events.
    pub(crate) fn submit(
        &mut self,
        specs: Vec<JobSpec>,
        now: DateTime<Utc>,
        at: Instant,
    ) -> (Vec<u64>, Vec<Event>) {
        let mut ids = Vec::with_capacity(specs.len());
        let mut events = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.next_job;
            self.next_job += 1;
            let token = format!("glcbt-{}", self.hex(12));
            let snap = JobSnapshot {
                id,
                project_id: spec.project_id,
                tags: spec.tags.clone(),
                status: JobStatus::Pending,
                failure_reason: None,
                runner: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                trace: String::new(),
            };
            events.push(self.event(snap.clone(), spec.name.clone(), None));
            // The queue value of every runner that may take it changes (what ends long polls).
            let takers: Vec<u64> = self
                .runners
                .values()
                .filter(|r| self.matches(r, &spec))
                .map(|r| r.id)
                .collect();
            for r in takers {
                self.tick(r, at);
            }
            self.store_job(snap, spec, token);
            ids.push(id);
        }
        (ids, events)
    }

    /// Adds a job with its job token.
    fn store_job(&mut self, snap: JobSnapshot, spec: JobSpec, token: String) {
        self.by_id.insert(snap.id, self.jobs.len());
        self.jobs.push(Job {
            snap,
            spec,
            token,
            lease_until: None,
            trace: Vec::new(),
        });
    }

    /// Jobs of a project with one of `scopes` (all when empty), by id: newest first (GitLab's
    /// default, `sort=desc`) or oldest first (`ascending`).
    pub(crate) fn project_jobs(
        &self,
        project: u64,
        scopes: &[String],
        ascending: bool,
        now: DateTime<Utc>,
    ) -> Vec<Value> {
        let mut jobs: Vec<&Job> = self
            .jobs
            .iter()
            .filter(|j| j.snap.project_id == project)
            .filter(|j| scopes.is_empty() || scopes.iter().any(|s| s == j.snap.status.as_str()))
            .collect();
        jobs.sort_by_key(|j| j.snap.id);
        if !ascending {
            jobs.reverse();
        }
        jobs.into_iter().map(|j| self.job_json(j, now)).collect()
    }

    /// Records jobs that ran before the test: created at `created`, started `waited` after
    /// it, finished successfully; no event is sent and no runner is named.
    pub(crate) fn record_past(
        &mut self,
        specs: Vec<JobSpec>,
        created: DateTime<Utc>,
        waited: chrono::Duration,
    ) -> Vec<u64> {
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.next_job;
            self.next_job += 1;
            let started = created + waited;
            let ran = chrono::Duration::from_std(spec.duration).unwrap_or_default();
            let snap = JobSnapshot {
                id,
                project_id: spec.project_id,
                tags: spec.tags.clone(),
                status: JobStatus::Success,
                failure_reason: None,
                runner: None,
                created_at: created,
                started_at: Some(started),
                finished_at: Some(started + ran),
                trace: String::new(),
            };
            let token = format!("glcbt-{}", self.hex(12));
            self.store_job(snap, spec, token);
            ids.push(id);
        }
        ids
    }

    /// One job of a project.
    pub(crate) fn project_job(&self, project: u64, id: u64, now: DateTime<Utc>) -> Option<Value> {
        let j = &self.jobs[*self.by_id.get(&id)?];
        (j.snap.project_id == project).then(|| self.job_json(j, now))
    }

    fn job_json(&self, j: &Job, now: DateTime<Utc>) -> Value {
        let s = &j.snap;
        let secs = |a: DateTime<Utc>, b: Option<DateTime<Utc>>| {
            (b.unwrap_or(now) - a).num_milliseconds() as f64 / 1000.0
        };
        let runner = s.runner.as_ref().and_then(|(rid, _)| {
            self.runners.get(rid).map(|r| {
                json!({ "id": r.id, "description": r.description, "active": !r.paused,
                        "paused": r.paused, "is_shared": r.runner_type == "instance_type",
                        "runner_type": r.runner_type, "name": "gitlab-runner",
                        "online": true, "status": "online" })
            })
        });
        let path = self
            .project_of(s.project_id)
            .map(|p| p.path.clone())
            .unwrap_or_default();
        json!({
            "id": s.id,
            "name": j.spec.name,
            "stage": "test",
            "status": s.status.as_str(),
            "ref": "main",
            "tag": false,
            "tag_list": s.tags,
            "allow_failure": false,
            "created_at": s.created_at,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "queued_duration": secs(s.created_at, s.started_at),
            "duration": s.started_at.map(|t| secs(t, s.finished_at)),
            "failure_reason": s.failure_reason,
            "runner": runner,
            "pipeline": { "id": s.id / 10, "project_id": s.project_id, "ref": "main",
                          "sha": "0000000", "status": s.status.as_str() },
            "web_url": format!("https://gitlab.example/{path}/-/jobs/{}", s.id),
            "user": { "id": 1, "username": "root" },
            "commit": { "id": "0000000", "short_id": "0000000", "title": "emulated" },
        })
    }

    /// Fails running jobs whose runner went silent past the lease (violations).
    pub(crate) fn sweep(&mut self, now: DateTime<Utc>, at: Instant) -> Vec<Event> {
        let expired: Vec<u64> = self
            .jobs
            .iter()
            .filter(|j| {
                j.snap.status == JobStatus::Running && j.lease_until.is_some_and(|l| l <= at)
            })
            .map(|j| j.snap.id)
            .collect();
        expired
            .into_iter()
            .filter_map(|j| self.lose(j, ViolationKind::JobLost, now))
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self
                .jobs
                .iter()
                .map(|j| JobSnapshot {
                    trace: String::from_utf8_lossy(&j.trace).into_owned(),
                    ..j.snap.clone()
                })
                .collect(),
            runners: self
                .runners
                .values()
                .map(|r| RunnerSnapshot {
                    id: r.id,
                    description: r.description.clone(),
                    paused: r.paused,
                    tags: r.tags.clone(),
                    run_untagged: r.run_untagged,
                    managers: r
                        .managers
                        .iter()
                        .map(|(sid, m)| ManagerSnapshot {
                            system_id: sid.clone(),
                            contacted_at: m.contacted_at,
                            running: m.running.iter().copied().collect(),
                            jobs_done: m.jobs_done,
                        })
                        .collect(),
                })
                .collect(),
            violations: self.violations.clone(),
            peak_running: self.peak_running,
            managers_seen: self.seen.len(),
            runners_created: self.runners_created,
            requests: self.requests.clone(),
            faulted: self.faulted,
            webhooks_sent: self.webhooks_sent,
        }
    }
}
