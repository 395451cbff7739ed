//! The emulator's state and every rule it enforces: task claiming by resource class within
//! the plan's concurrency, runner contact and the listing, heartbeats and leases, completion
//! and the webhook events it produces. Pure bookkeeping: no I/O, the time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{
    RunnerSnapshot, Snapshot, TaskSnapshot, TaskSpec, TaskStatus, Violation, ViolationKind,
};

struct Task {
    snap: TaskSnapshot,
    spec: TaskSpec,
    token: String,
    lease_until: Option<Instant>,
    /// The host of the runner that claimed it (runners are told apart by name and host).
    host: Option<String>,
}

/// A runner in the listing: resource class, name, host. CircleCI's handling of two machines
/// with one runner name (CircleCI's simple-Lambda example can give every instance the same
/// name) is undocumented; the emulator keeps them apart by the hostname they report, so
/// neither takes the other's task or leaves with it.
type RunnerKey = (String, String, String);

fn key(class: &str, name: &str, host: &str) -> RunnerKey {
    (class.to_owned(), name.to_owned(), host.to_owned())
}

struct RunnerRec {
    hostname: String,
    first_connected: DateTime<Utc>,
    last_connected: DateTime<Utc>,
    last_contact: Instant,
    last_used: Option<DateTime<Utc>>,
    task: Option<String>,
}

struct Workflow {
    name: String,
    project: String,
    remaining: usize,
    failed: bool,
}

/// A task handed to a runner.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClaimedTask {
    /// Task id.
    pub id: String,
    /// The task-scoped token for heartbeats and completion.
    pub token: String,
    /// How long the job runs, in milliseconds.
    pub duration_ms: u64,
    /// Whether the job fails.
    pub fail: bool,
}

/// A webhook event to deliver.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) kind: &'static str,
    pub(crate) project: String,
    pub(crate) workflow_id: String,
    pub(crate) workflow_name: String,
    pub(crate) workflow_status: Option<&'static str>,
    pub(crate) job: Option<(String, String, &'static str)>,
}

/// Why a task call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TaskRefusal {
    /// No such task, or the token does not match.
    Unknown,
    /// The task is no longer the caller's (lost, finished).
    Gone,
}

pub(crate) struct State {
    classes: BTreeMap<String, SecretString>,
    api_tokens: Vec<SecretString>,
    pub(crate) plan_concurrency: Option<u32>,
    pub(crate) faults: Faults,
    task_lease: Duration,
    runner_expiry: Duration,
    tasks: Vec<Task>,
    by_id: HashMap<String, usize>,
    runners: BTreeMap<RunnerKey, RunnerRec>,
    seen: BTreeSet<String>,
    workflows: HashMap<String, Workflow>,
    violations: Vec<Violation>,
    peak_running: u32,
    pub(crate) requests: BTreeMap<String, u64>,
    pub(crate) webhooks_sent: u64,
    pub(crate) rng: StdRng,
}

fn same(a: &str, b: &SecretString) -> bool {
    crate::serve::constant_time_eq(a.as_bytes(), b.expose_secret().as_bytes())
}

impl State {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        State {
            classes: config
                .resource_classes
                .iter()
                .map(|c| (c.name.clone(), c.token.clone()))
                .collect(),
            api_tokens: config.api_tokens.clone(),
            plan_concurrency: config.plan_concurrency,
            faults: config.faults.clone(),
            task_lease: config.task_lease,
            runner_expiry: config.runner_expiry,
            tasks: Vec::new(),
            by_id: HashMap::new(),
            runners: BTreeMap::new(),
            seen: BTreeSet::new(),
            workflows: HashMap::new(),
            violations: Vec::new(),
            peak_running: 0,
            requests: BTreeMap::new(),
            webhooks_sent: 0,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Whether `token` is an API token.
    pub(crate) fn api_token_ok(&self, token: &str) -> bool {
        self.api_tokens.iter().any(|t| same(token, t))
    }

    /// The resource class whose runner token this is.
    pub(crate) fn class_of_token(&self, token: &str) -> Option<String> {
        self.classes
            .iter()
            .find(|(_, t)| same(token, t))
            .map(|(c, _)| c.clone())
    }

    /// Whether the resource class exists.
    pub(crate) fn has_class(&self, class: &str) -> bool {
        self.classes.contains_key(class)
    }

    /// A random id shaped like a UUID.
    pub(crate) fn uuid(&mut self) -> String {
        crate::serve::random_uuid(&mut self.rng)
    }

    /// Queues the tasks of one workflow; returns their ids.
    pub(crate) fn submit(&mut self, specs: Vec<TaskSpec>, now: DateTime<Utc>) -> Vec<String> {
        if specs.is_empty() {
            return Vec::new();
        }
        let workflow_id = self.uuid();
        self.workflows.insert(
            workflow_id.clone(),
            Workflow {
                name: "workflow".to_owned(),
                project: specs[0].project.clone(),
                remaining: specs.len(),
                failed: false,
            },
        );
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.uuid();
            let token = self.uuid();
            self.by_id.insert(id.clone(), self.tasks.len());
            self.tasks.push(Task {
                snap: TaskSnapshot {
                    id: id.clone(),
                    resource_class: spec.resource_class.clone(),
                    workflow_id: workflow_id.clone(),
                    status: TaskStatus::Unclaimed,
                    runner: None,
                    queued_at: now,
                    claimed_at: None,
                    finished_at: None,
                },
                spec,
                token,
                lease_until: None,
                host: None,
            });
            ids.push(id);
        }
        ids
    }

    fn running_total(&self) -> u32 {
        self.tasks
            .iter()
            .filter(|t| t.snap.status == TaskStatus::Running)
            .count() as u32
    }

    /// `unclaimed_task_count` of a resource class.
    pub(crate) fn unclaimed(&self, class: &str) -> u64 {
        self.count(class, TaskStatus::Unclaimed)
    }

    /// `running_runner_tasks` of a resource class.
    pub(crate) fn running(&self, class: &str) -> u64 {
        self.count(class, TaskStatus::Running)
    }

    fn count(&self, class: &str, status: TaskStatus) -> u64 {
        self.tasks
            .iter()
            .filter(|t| t.snap.status == status && t.snap.resource_class == class)
            .count() as u64
    }

    /// Records a poll of runner `name` of `class`: it is (still) connected.
    fn contact(
        &mut self,
        class: &str,
        name: &str,
        hostname: &str,
        now: DateTime<Utc>,
        at: Instant,
    ) {
        self.seen.insert(format!("{class}\u{0}{name}"));
        let r = self
            .runners
            .entry(key(class, name, hostname))
            .or_insert_with(|| RunnerRec {
                hostname: hostname.to_owned(),
                first_connected: now,
                last_connected: now,
                last_contact: at,
                last_used: None,
                task: None,
            });
        r.last_connected = now;
        r.last_contact = at;
    }

    /// A runner asks for a task. It gets the oldest unclaimed task of its class unless it
    /// holds one already or the plan's concurrency is used up.
    pub(crate) fn claim(
        &mut self,
        class: &str,
        name: &str,
        hostname: &str,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Option<ClaimedTask> {
        self.contact(class, name, hostname, now, at);
        let key = key(class, name, hostname);
        if self.runners.get(&key).is_some_and(|r| r.task.is_some()) {
            return None;
        }
        if self
            .plan_concurrency
            .is_some_and(|limit| self.running_total() >= limit)
        {
            return None;
        }
        let lease = self.task_lease;
        let task = self
            .tasks
            .iter_mut()
            .find(|t| t.snap.status == TaskStatus::Unclaimed && t.snap.resource_class == class)?;
        task.snap.status = TaskStatus::Running;
        task.snap.runner = Some(name.to_owned());
        task.snap.claimed_at = Some(now);
        task.lease_until = Some(at + lease);
        task.host = Some(hostname.to_owned());
        let claimed = ClaimedTask {
            id: task.snap.id.clone(),
            token: task.token.clone(),
            duration_ms: u64::try_from(task.spec.duration.as_millis()).unwrap_or(u64::MAX),
            fail: task.spec.fail,
        };
        if let Some(r) = self.runners.get_mut(&key) {
            r.task = Some(claimed.id.clone());
            r.last_used = Some(now);
        }
        self.peak_running = self.peak_running.max(self.running_total());
        Some(claimed)
    }

    fn task_for(&mut self, id: &str, token: &str) -> Result<usize, TaskRefusal> {
        let i = *self.by_id.get(id).ok_or(TaskRefusal::Unknown)?;
        if self.tasks[i].token != token {
            return Err(TaskRefusal::Unknown);
        }
        if self.tasks[i].snap.status != TaskStatus::Running {
            return Err(TaskRefusal::Gone);
        }
        Ok(i)
    }

    /// A runner reports it is still working on a task: the lease is renewed and the runner
    /// counts as connected.
    pub(crate) fn heartbeat(
        &mut self,
        id: &str,
        token: &str,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<(), TaskRefusal> {
        let i = self.task_for(id, token)?;
        self.tasks[i].lease_until = Some(at + self.task_lease);
        if let Some(k) = self.runner_of(i)
            && let Some(r) = self.runners.get_mut(&k)
        {
            r.last_connected = now;
            r.last_contact = at;
        }
        Ok(())
    }

    /// A runner finished a task. Returns the webhook events it causes.
    pub(crate) fn complete(
        &mut self,
        id: &str,
        token: &str,
        success: bool,
        now: DateTime<Utc>,
        at: Instant,
    ) -> Result<Vec<Event>, TaskRefusal> {
        let i = self.task_for(id, token)?;
        let status = if success {
            TaskStatus::Succeeded
        } else {
            TaskStatus::Failed
        };
        if let Some(k) = self.runner_of(i)
            && let Some(r) = self.runners.get_mut(&k)
        {
            r.task = None;
            r.last_used = Some(now);
            r.last_connected = now;
            r.last_contact = at;
        }
        Ok(self.finish(i, status, now))
    }

    /// The listing key of the runner holding task `i`.
    fn runner_of(&self, i: usize) -> Option<RunnerKey> {
        let t = &self.tasks[i];
        Some(key(
            &t.snap.resource_class,
            t.snap.runner.as_deref()?,
            t.host.as_deref()?,
        ))
    }

    fn finish(&mut self, i: usize, status: TaskStatus, now: DateTime<Utc>) -> Vec<Event> {
        let task = &mut self.tasks[i];
        task.snap.status = status;
        task.snap.finished_at = Some(now);
        task.lease_until = None;
        let job_status = match status {
            TaskStatus::Succeeded => "success",
            TaskStatus::Failed => "failed",
            _ => "infrastructure_fail",
        };
        let (task_id, job_name, wf_id) = (
            task.snap.id.clone(),
            task.spec.job_name.clone(),
            task.snap.workflow_id.clone(),
        );
        let mut events = Vec::new();
        let Some(wf) = self.workflows.get_mut(&wf_id) else {
            return events;
        };
        wf.remaining = wf.remaining.saturating_sub(1);
        wf.failed |= status != TaskStatus::Succeeded;
        events.push(Event {
            kind: "job-completed",
            project: wf.project.clone(),
            workflow_id: wf_id.clone(),
            workflow_name: wf.name.clone(),
            workflow_status: None,
            job: Some((task_id, job_name, job_status)),
        });
        if wf.remaining == 0 {
            events.push(Event {
                kind: "workflow-completed",
                project: wf.project.clone(),
                workflow_id: wf_id,
                workflow_name: wf.name.clone(),
                workflow_status: Some(if wf.failed { "failed" } else { "success" }),
                job: None,
            });
        }
        events
    }

    /// A runner exits cleanly: it leaves the listing. Leaving with a task loses it.
    pub(crate) fn disconnect(
        &mut self,
        class: &str,
        name: &str,
        hostname: &str,
        now: DateTime<Utc>,
    ) -> Vec<Event> {
        let Some(r) = self.runners.remove(&key(class, name, hostname)) else {
            return Vec::new();
        };
        match r.task.and_then(|t| self.by_id.get(&t).copied()) {
            Some(i) if self.tasks[i].snap.status == TaskStatus::Running => {
                self.violations.push(Violation {
                    kind: ViolationKind::DisconnectedWhileBusy,
                    runner: name.to_owned(),
                    task: self.tasks[i].snap.id.clone(),
                    at: now,
                });
                self.finish(i, TaskStatus::Lost, now)
            }
            _ => Vec::new(),
        }
    }

    /// Gives up on silent runners: a task whose lease ran out is lost (a violation), a runner
    /// silent for `runner_expiry` leaves the listing.
    pub(crate) fn sweep(&mut self, now: DateTime<Utc>, at: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..self.tasks.len() {
            let t = &self.tasks[i];
            if t.snap.status == TaskStatus::Running && t.lease_until.is_some_and(|l| l <= at) {
                let runner = t.snap.runner.clone().unwrap_or_default();
                self.violations.push(Violation {
                    kind: ViolationKind::TaskLost,
                    runner,
                    task: t.snap.id.clone(),
                    at: now,
                });
                if let Some(k) = self.runner_of(i)
                    && let Some(r) = self.runners.get_mut(&k)
                {
                    r.task = None;
                }
                events.extend(self.finish(i, TaskStatus::Lost, now));
            }
        }
        let expiry = self.runner_expiry;
        self.runners
            .retain(|_, r| at.saturating_duration_since(r.last_contact) < expiry);
        events
    }

    /// The listing of one resource class, or of every class of a namespace.
    pub(crate) fn listing(
        &self,
        class: Option<&str>,
        namespace: Option<&str>,
    ) -> Vec<RunnerSnapshot> {
        self.runners
            .iter()
            .filter(|((c, _, _), _)| match (class, namespace) {
                (Some(want), _) => c == want,
                (None, Some(ns)) => c.split_once('/').is_some_and(|(n, _)| n == ns),
                (None, None) => true,
            })
            .map(|((c, n, _), r)| RunnerSnapshot {
                resource_class: c.clone(),
                name: n.clone(),
                hostname: r.hostname.clone(),
                first_connected: r.first_connected,
                last_connected: r.last_connected,
                last_used: r.last_used,
                task: r.task.clone(),
            })
            .collect()
    }

    /// Resource classes of a namespace.
    pub(crate) fn classes_of(&self, namespace: &str) -> Vec<String> {
        self.classes
            .keys()
            .filter(|c| c.split_once('/').is_some_and(|(n, _)| n == namespace))
            .cloned()
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            tasks: self.tasks.iter().map(|t| t.snap.clone()).collect(),
            runners: self.listing(None, None),
            violations: self.violations.clone(),
            peak_running: self.peak_running,
            runners_seen: self.seen.len(),
            requests: self.requests.clone(),
            webhooks_sent: self.webhooks_sent,
        }
    }
}
