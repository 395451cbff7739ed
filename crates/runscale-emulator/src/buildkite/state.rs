//! The emulator's state and every rule it enforces: agent registration and connection,
//! job assignment by queue and tags, starts and finishes, stop requests (graceful or
//! forced), lost agents, the REST rate limit, metrics, and the webhook events all this
//! produces. Pure bookkeeping: no I/O, the time is passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::model::{
    AgentSnapshot, ConnectionState, JobSnapshot, JobSpec, JobStatus, Snapshot, Violation,
    ViolationKind, queue_of,
};

/// The window of the REST rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

struct Job {
    snap: JobSnapshot,
    duration: Duration,
    exit_status: i32,
    /// Id of the agent it is assigned to.
    agent_id: Option<String>,
    /// Stacks API reservation: the stack and when it expires.
    reservation: Option<(String, Instant)>,
}

impl Job {
    /// Scheduled and not held by an unexpired reservation.
    fn free(&self, instant: Instant) -> bool {
        self.snap.status == JobStatus::Scheduled
            && self
                .reservation
                .as_ref()
                .is_none_or(|(_, until)| *until <= instant)
    }
}

/// A stack registered through the Stacks API.
#[derive(Clone, Debug)]
pub(crate) struct Stack {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) kind: String,
    pub(crate) queue_key: String,
    pub(crate) metadata: serde_json::Value,
    pub(crate) registered_at: DateTime<Utc>,
}

/// One page of a stack's scheduled jobs.
pub(crate) struct ScheduledPage {
    pub(crate) jobs: Vec<JobSnapshot>,
    pub(crate) has_next_page: bool,
    pub(crate) end_cursor: Option<String>,
}

/// The queue a Stacks API queue key names (`_default` is the default queue).
fn queue_of_key(key: &str) -> &str {
    if key == "_default" { "default" } else { key }
}

pub(crate) struct Agent {
    pub(crate) snap: AgentSnapshot,
    pub(crate) hostname: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) connected_at: Option<DateTime<Utc>>,
    pub(crate) last_job_finished_at: Option<DateTime<Utc>>,
    last_contact: Instant,
}

/// A job handed to an agent by a ping.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssignedJob {
    /// Job UUID.
    pub id: String,
    /// How long the job runs, in milliseconds.
    pub duration_ms: u64,
    /// The exit status to report.
    pub exit_status: i32,
}

/// What a ping tells the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingAnswer {
    /// `idle` (nothing to do), `busy` (keep running your job), `run` (start `job`) or
    /// `disconnect` (leave now).
    pub action: String,
    /// The job to run, with `run`.
    #[serde(default)]
    pub job: Option<AssignedJob>,
}

/// A webhook event to deliver.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) name: &'static str,
    pub(crate) job: Option<JobSnapshot>,
    pub(crate) agent: Option<AgentSnapshot>,
}

/// Why an agent or REST call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown token, agent or job.
    Unknown,
    /// The call does not fit the current state (agent not connected, job not the caller's).
    Conflict(&'static str),
}

/// Counts of one queue for the metrics API.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueCounts {
    pub(crate) idle: u32,
    pub(crate) busy: u32,
    pub(crate) scheduled: u32,
    pub(crate) running: u32,
}

pub(crate) struct State {
    pub(crate) org: String,
    agent_tokens: Vec<SecretString>,
    api_tokens: Vec<SecretString>,
    pub(crate) faults: Faults,
    pub(crate) metrics_poll_duration: Option<Duration>,
    rest_per_minute: u32,
    rest_window: VecDeque<Instant>,
    agent_lost_after: Duration,
    jobs: Vec<Job>,
    job_index: HashMap<String, usize>,
    agents: Vec<Agent>,
    agent_index: HashMap<String, usize>,
    by_token: HashMap<String, usize>,
    violations: Vec<Violation>,
    stacks: BTreeMap<String, Stack>,
    peak_running: u32,
    pub(crate) rng: StdRng,
    pub(crate) requests: BTreeMap<String, u64>,
    pub(crate) webhooks_sent: u64,
}

/// Whether `token` is one of `tokens` (compared over the whole length).
fn token_in(tokens: &[SecretString], token: &str) -> bool {
    tokens.iter().any(|t| {
        let t = t.expose_secret().as_bytes();
        t.len() == token.len()
            && t.iter()
                .zip(token.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Whether an agent with `tags` may run a job with `rules`: every rule `key=value` is one of
/// the tags (`value` `*` matches any value of `key`); the queue defaults to `default` on both
/// sides.
pub(crate) fn matches(rules: &[String], tags: &[String]) -> bool {
    if queue_of(rules) != queue_of(tags) {
        return false;
    }
    rules.iter().filter(|r| !r.starts_with("queue=")).all(|r| {
        let (k, v) = r.split_once('=').unwrap_or((r.as_str(), ""));
        tags.iter().any(|t| {
            t.split_once('=')
                .is_some_and(|(tk, tv)| tk == k && (v == "*" || tv == v))
        })
    })
}

impl State {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        State {
            org: config.org.clone(),
            agent_tokens: config.agent_tokens.clone(),
            api_tokens: config.api_tokens.clone(),
            faults: config.faults.clone(),
            metrics_poll_duration: config.metrics_poll_duration,
            rest_per_minute: config.rest_requests_per_minute,
            rest_window: VecDeque::new(),
            agent_lost_after: config.agent_lost_after,
            jobs: Vec::new(),
            job_index: HashMap::new(),
            agents: Vec::new(),
            agent_index: HashMap::new(),
            by_token: HashMap::new(),
            violations: Vec::new(),
            stacks: BTreeMap::new(),
            peak_running: 0,
            rng: StdRng::seed_from_u64(config.seed),
            requests: BTreeMap::new(),
            webhooks_sent: 0,
        }
    }

    pub(crate) fn uuid(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        crate::serve::uuid_shape(&crate::serve::hex(&b))
    }

    pub(crate) fn agent_token_ok(&self, token: &str) -> bool {
        token_in(&self.agent_tokens, token)
    }

    pub(crate) fn api_token_ok(&self, token: &str) -> bool {
        token_in(&self.api_tokens, token)
    }

    /// Takes one REST request from the budget: `Ok(remaining)`, or `Err(seconds until a
    /// request is allowed)`.
    pub(crate) fn take_rest(&mut self, now: Instant) -> Result<u32, u64> {
        while self
            .rest_window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.rest_window.pop_front();
        }
        if self.rest_window.len() as u64 >= u64::from(self.rest_per_minute) {
            let wait = self.rest_window.front().map_or(RATE_WINDOW, |t| {
                RATE_WINDOW.saturating_sub(now.duration_since(*t))
            });
            return Err(wait.as_secs().max(1));
        }
        self.rest_window.push_back(now);
        Ok(self.rest_per_minute - self.rest_window.len() as u32)
    }

    pub(crate) fn rest_limit(&self) -> u32 {
        self.rest_per_minute
    }

    fn violation(&mut self, kind: ViolationKind, agent: &str, job: &str, now: DateTime<Utc>) {
        tracing::warn!(?kind, agent, job, "buildkite emulator: violation");
        self.violations.push(Violation {
            kind,
            agent: agent.to_owned(),
            job: job.to_owned(),
            at: now,
        });
    }

    fn running_now(&self) -> u32 {
        self.jobs
            .iter()
            .filter(|j| j.snap.status == JobStatus::Running)
            .count() as u32
    }

    fn job_event(&self, name: &'static str, i: usize) -> Event {
        Event {
            name,
            job: Some(self.jobs[i].snap.clone()),
            agent: None,
        }
    }

    fn agent_event(&self, name: &'static str, i: usize) -> Event {
        Event {
            name,
            job: None,
            agent: Some(self.agents[i].snap.clone()),
        }
    }

    /// Schedules jobs; returns their ids and the `job.scheduled` events.
    pub(crate) fn submit(
        &mut self,
        specs: Vec<JobSpec>,
        now: DateTime<Utc>,
    ) -> (Vec<String>, Vec<Event>) {
        let mut ids = Vec::with_capacity(specs.len());
        let mut events = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.uuid();
            self.job_index.insert(id.clone(), self.jobs.len());
            self.jobs.push(Job {
                snap: JobSnapshot {
                    id: id.clone(),
                    queue: queue_of(&spec.agent_query_rules).to_owned(),
                    agent_query_rules: spec.agent_query_rules,
                    status: JobStatus::Scheduled,
                    agent: None,
                    starts: 0,
                    scheduled_at: now,
                    started_at: None,
                    finished_at: None,
                    reserved_by: None,
                    reservations: 0,
                },
                duration: spec.duration,
                exit_status: spec.exit_status,
                agent_id: None,
                reservation: None,
            });
            events.push(self.job_event("job.scheduled", self.jobs.len() - 1));
            ids.push(id);
        }
        (ids, events)
    }

    /// Registers an agent; returns its id and access token.
    pub(crate) fn register(
        &mut self,
        name: &str,
        hostname: &str,
        meta_data: Vec<String>,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> (String, String) {
        let id = self.uuid();
        let access_token = self.uuid();
        let name = if name.is_empty() {
            format!("{hostname}-{}", self.agents.len() + 1)
        } else {
            name.to_owned()
        };
        let i = self.agents.len();
        self.agents.push(Agent {
            snap: AgentSnapshot {
                id: id.clone(),
                name,
                meta_data,
                connection_state: ConnectionState::NeverConnected,
                job: None,
                jobs_finished: 0,
            },
            hostname: hostname.to_owned(),
            created_at: now,
            connected_at: None,
            last_job_finished_at: None,
            last_contact: instant,
        });
        self.agent_index.insert(id.clone(), i);
        self.by_token.insert(access_token.clone(), i);
        (id, access_token)
    }

    fn agent_by_token(&mut self, token: &str, instant: Instant) -> Result<usize, Refusal> {
        let i = *self.by_token.get(token).ok_or(Refusal::Unknown)?;
        let a = &mut self.agents[i];
        if matches!(
            a.snap.connection_state,
            ConnectionState::Disconnected | ConnectionState::Lost
        ) {
            return Err(Refusal::Conflict("agent is no longer connected"));
        }
        a.last_contact = instant;
        Ok(i)
    }

    pub(crate) fn connect(
        &mut self,
        token: &str,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let a = &mut self.agents[i];
        if a.snap.connection_state != ConnectionState::NeverConnected {
            return Ok(Vec::new());
        }
        a.snap.connection_state = ConnectionState::Connected;
        a.connected_at = Some(now);
        Ok(vec![self.agent_event("agent.connected", i)])
    }

    /// A ping: the agent's contact, and what it should do next. An idle agent that is not
    /// stopping is assigned the oldest scheduled job its tags match.
    pub(crate) fn ping(
        &mut self,
        token: &str,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<(PingAnswer, Vec<Event>), Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let state = self.agents[i].snap.connection_state;
        if state == ConnectionState::NeverConnected {
            return Err(Refusal::Conflict("agent has not connected"));
        }
        let answer = |action: &str, job| PingAnswer {
            action: action.to_owned(),
            job,
        };
        if self.agents[i].snap.job.is_some() {
            return Ok((answer("busy", None), Vec::new()));
        }
        if state == ConnectionState::Stopping {
            let events = self.disconnect_at(i, now);
            return Ok((answer("disconnect", None), events));
        }
        let tags = self.agents[i].snap.meta_data.clone();
        let Some(j) = self
            .jobs
            .iter()
            .position(|j| j.free(instant) && matches(&j.snap.agent_query_rules, &tags))
        else {
            return Ok((answer("idle", None), Vec::new()));
        };
        let assigned = self.assign(i, j);
        Ok((answer("run", Some(assigned)), Vec::new()))
    }

    /// Hands job `j` to agent `i` (ending any reservation).
    fn assign(&mut self, i: usize, j: usize) -> AssignedJob {
        let agent_id = self.agents[i].snap.id.clone();
        let job = &mut self.jobs[j];
        job.snap.status = JobStatus::Assigned;
        job.snap.agent = Some(self.agents[i].snap.name.clone());
        job.agent_id = Some(agent_id);
        job.reservation = None;
        let assigned = AssignedJob {
            id: job.snap.id.clone(),
            duration_ms: job.duration.as_millis() as u64,
            exit_status: job.exit_status,
        };
        self.agents[i].snap.job = Some(assigned.id.clone());
        assigned
    }

    /// The agent starts its assigned job. Starting a job that was started before is refused
    /// and recorded as a violation.
    pub(crate) fn start(
        &mut self,
        token: &str,
        job_id: &str,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        let agent_name = self.agents[i].snap.name.clone();
        if self.jobs[j].snap.starts > 0 {
            self.jobs[j].snap.starts += 1;
            self.violation(ViolationKind::JobStartedTwice, &agent_name, job_id, now);
            return Err(Refusal::Conflict("job was already started"));
        }
        if self.agents[i].snap.job.as_deref() != Some(job_id)
            || self.jobs[j].snap.status != JobStatus::Assigned
        {
            return Err(Refusal::Conflict("job is not assigned to this agent"));
        }
        let job = &mut self.jobs[j];
        job.snap.status = JobStatus::Running;
        job.snap.starts = 1;
        job.snap.started_at = Some(now);
        self.peak_running = self.peak_running.max(self.running_now());
        Ok(vec![self.job_event("job.started", j)])
    }

    /// The agent finishes its job.
    pub(crate) fn finish(
        &mut self,
        token: &str,
        job_id: &str,
        exit_status: i32,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        if self.agents[i].snap.job.as_deref() != Some(job_id)
            || self.jobs[j].snap.status != JobStatus::Running
        {
            return Err(Refusal::Conflict("job is not running on this agent"));
        }
        let job = &mut self.jobs[j];
        job.snap.status = if exit_status == 0 {
            JobStatus::Passed
        } else {
            JobStatus::Failed
        };
        job.snap.finished_at = Some(now);
        let a = &mut self.agents[i];
        a.snap.job = None;
        a.snap.jobs_finished += 1;
        a.last_job_finished_at = Some(now);
        Ok(vec![self.job_event("job.finished", j)])
    }

    /// The agent disconnects by itself.
    pub(crate) fn disconnect(
        &mut self,
        token: &str,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        Ok(self.disconnect_at(i, now))
    }

    /// Ends the job an agent holds when it leaves: an assigned job goes back to the queue, a
    /// running one is lost (a violation of `kind`).
    fn drop_job(&mut self, i: usize, kind: ViolationKind, now: DateTime<Utc>) -> Vec<Event> {
        let Some(job_id) = self.agents[i].snap.job.take() else {
            return Vec::new();
        };
        let Some(&j) = self.job_index.get(&job_id) else {
            return Vec::new();
        };
        match self.jobs[j].snap.status {
            JobStatus::Assigned => {
                let job = &mut self.jobs[j];
                job.snap.status = JobStatus::Scheduled;
                job.snap.agent = None;
                job.agent_id = None;
                Vec::new()
            }
            JobStatus::Running => {
                let status = if kind == ViolationKind::StoppedWhileBusy {
                    JobStatus::Canceled
                } else {
                    JobStatus::Lost
                };
                self.jobs[j].snap.status = status;
                self.jobs[j].snap.finished_at = Some(now);
                let agent = self.agents[i].snap.name.clone();
                self.violation(kind, &agent, &job_id, now);
                vec![self.job_event("job.finished", j)]
            }
            _ => Vec::new(),
        }
    }

    fn disconnect_at(&mut self, i: usize, now: DateTime<Utc>) -> Vec<Event> {
        let mut events = self.drop_job(i, ViolationKind::DisconnectedWhileBusy, now);
        self.agents[i].snap.connection_state = ConnectionState::Disconnected;
        events.push(self.agent_event("agent.disconnected", i));
        events
    }

    /// `PUT .../agents/{id}/stop`: a connected agent becomes `stopping`; with `force` a job it
    /// runs is cancelled (a violation), without it the job finishes first.
    pub(crate) fn stop(
        &mut self,
        id: &str,
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, Refusal> {
        let i = *self.agent_index.get(id).ok_or(Refusal::Unknown)?;
        if !self.agents[i].snap.connection_state.is_connected() {
            return Err(Refusal::Conflict("Only connected agents can be stopped"));
        }
        let mut events = Vec::new();
        if force {
            events.extend(self.drop_job(i, ViolationKind::StoppedWhileBusy, now));
        }
        if self.agents[i].snap.connection_state != ConnectionState::Stopping {
            self.agents[i].snap.connection_state = ConnectionState::Stopping;
            events.push(self.agent_event("agent.stopping", i));
        }
        Ok(events)
    }

    /// `POST /stacks/register`: registers (or re-registers) a stack.
    pub(crate) fn register_stack(
        &mut self,
        key: &str,
        kind: &str,
        queue_key: &str,
        metadata: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Stack {
        let id = match self.stacks.get(key) {
            Some(s) => s.id.clone(),
            None => self.uuid(),
        };
        let stack = Stack {
            id,
            key: key.to_owned(),
            kind: kind.to_owned(),
            queue_key: queue_key.to_owned(),
            metadata,
            registered_at: now,
        };
        self.stacks.insert(key.to_owned(), stack.clone());
        stack
    }

    /// `POST /stacks/{key}/deregister`.
    pub(crate) fn deregister_stack(&mut self, key: &str) -> Result<(), Refusal> {
        self.stacks.remove(key).map(|_| ()).ok_or(Refusal::Unknown)
    }

    /// `GET /stacks/{key}/scheduled-jobs`: free scheduled jobs of the queue, oldest first,
    /// after the job `after`.
    pub(crate) fn scheduled_jobs(
        &self,
        key: &str,
        queue_key: Option<&str>,
        limit: usize,
        after: Option<&str>,
        instant: Instant,
    ) -> Result<ScheduledPage, Refusal> {
        let stack = self.stacks.get(key).ok_or(Refusal::Unknown)?;
        let queue = queue_of_key(queue_key.unwrap_or(&stack.queue_key));
        let start = match after {
            Some(id) => self.job_index.get(id).map_or(0, |i| i + 1),
            None => 0,
        };
        let mut free = self.jobs[start.min(self.jobs.len())..]
            .iter()
            .filter(|j| j.snap.queue == queue && j.free(instant));
        let jobs: Vec<JobSnapshot> = free.by_ref().take(limit).map(|j| j.snap.clone()).collect();
        let has_next_page = free.next().is_some();
        Ok(ScheduledPage {
            end_cursor: jobs.last().map(|j| j.id.clone()),
            jobs,
            has_next_page,
        })
    }

    /// `PUT /stacks/{key}/scheduled-jobs/batch-reserve`: reserves each free job (or one this
    /// stack already holds) until `expiry`; returns (reserved, not reserved).
    pub(crate) fn batch_reserve(
        &mut self,
        key: &str,
        ids: &[String],
        expiry: Duration,
        instant: Instant,
    ) -> Result<(Vec<String>, Vec<String>), Refusal> {
        if !self.stacks.contains_key(key) {
            return Err(Refusal::Unknown);
        }
        let (mut reserved, mut not_reserved) = (Vec::new(), Vec::new());
        for id in ids {
            let job = self.job_index.get(id).map(|&i| &mut self.jobs[i]);
            let ok = job.is_some_and(|j| {
                let mine = j.snap.status == JobStatus::Scheduled
                    && j.reservation.as_ref().is_some_and(|(k, _)| k == key);
                if !(j.free(instant) || mine) {
                    return false;
                }
                j.reservation = Some((key.to_owned(), instant + expiry));
                j.snap.reserved_by = Some(key.to_owned());
                j.snap.reservations += 1;
                true
            });
            if ok {
                reserved.push(id.clone());
            } else {
                not_reserved.push(id.clone());
            }
        }
        Ok((reserved, not_reserved))
    }

    /// An agent started with `--acquire-job` takes that job, reserved or not, if it is still
    /// scheduled.
    pub(crate) fn acquire(
        &mut self,
        token: &str,
        job_id: &str,
        instant: Instant,
    ) -> Result<AssignedJob, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        if self.agents[i].snap.job.is_some() {
            return Err(Refusal::Conflict("agent already has a job"));
        }
        if self.jobs[j].snap.status != JobStatus::Scheduled {
            return Err(Refusal::Conflict("job is not scheduled"));
        }
        Ok(self.assign(i, j))
    }

    /// Agents silent for `agent_lost_after` are lost, with any job they held.
    pub(crate) fn sweep(&mut self, now: DateTime<Utc>, instant: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..self.agents.len() {
            let a = &self.agents[i];
            if a.snap.connection_state.is_connected()
                && instant.duration_since(a.last_contact) >= self.agent_lost_after
            {
                events.extend(self.drop_job(i, ViolationKind::LostWhileBusy, now));
                self.agents[i].snap.connection_state = ConnectionState::Lost;
                events.push(self.agent_event("agent.lost", i));
            }
        }
        events
    }

    /// Connected agents, in registration order.
    pub(crate) fn connected(&self) -> Vec<&Agent> {
        self.agents
            .iter()
            .filter(|a| a.snap.connection_state.is_connected())
            .collect()
    }

    pub(crate) fn agent(&self, id: &str) -> Option<&Agent> {
        self.agent_index.get(id).map(|&i| &self.agents[i])
    }

    /// A job's snapshot.
    pub(crate) fn job(&self, id: &str) -> Option<&JobSnapshot> {
        self.job_index.get(id).map(|&i| &self.jobs[i].snap)
    }

    /// Per-queue counts: agents by their `queue=` tag, jobs by their rules. Assigned jobs
    /// count as running.
    pub(crate) fn metrics(&self) -> BTreeMap<String, QueueCounts> {
        let mut out: BTreeMap<String, QueueCounts> = BTreeMap::new();
        for a in self.connected() {
            let c = out
                .entry(queue_of(&a.snap.meta_data).to_owned())
                .or_default();
            if a.snap.job.is_some() {
                c.busy += 1;
            } else {
                c.idle += 1;
            }
        }
        for j in &self.jobs {
            let c = out.entry(j.snap.queue.clone()).or_default();
            match j.snap.status {
                JobStatus::Scheduled => c.scheduled += 1,
                JobStatus::Assigned | JobStatus::Running => c.running += 1,
                _ => {}
            }
        }
        out
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self.jobs.iter().map(|j| j.snap.clone()).collect(),
            agents: self.agents.iter().map(|a| a.snap.clone()).collect(),
            violations: self.violations.clone(),
            peak_running: self.peak_running,
            requests: self.requests.clone(),
            webhooks_sent: self.webhooks_sent,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rules_match_queue_and_every_tag() {
        assert!(matches(
            &tags(&["queue=a"]),
            &tags(&["queue=a", "os=linux"])
        ));
        assert!(matches(
            &tags(&["queue=a", "os=*"]),
            &tags(&["queue=a", "os=mac"])
        ));
        assert!(!matches(
            &tags(&["queue=a", "os=linux"]),
            &tags(&["queue=a"])
        ));
        assert!(!matches(&tags(&["queue=a"]), &tags(&["queue=b"])));
        assert!(matches(&tags(&[]), &tags(&["os=linux"])), "default queue");
        assert!(!matches(&tags(&[]), &tags(&["queue=a"])));
    }

    fn state() -> State {
        State::new(&EmulatorConfig::new("acme", "agent", "api"))
    }

    #[test]
    fn a_graceful_stop_lets_the_job_finish_and_a_forced_one_is_a_violation() {
        let mut s = state();
        let (now, t) = (Utc::now(), Instant::now());
        s.submit(vec![JobSpec::new("a", Duration::from_secs(1)); 2], now);
        let run = |s: &mut State, name: &str| {
            let (id, tok) = s.register(name, "h", tags(&["queue=a"]), now, t);
            s.connect(&tok, now, t).unwrap();
            let (ans, _) = s.ping(&tok, now, t).unwrap();
            let job = ans.job.unwrap().id;
            s.start(&tok, &job, now, t).unwrap();
            (id, tok, job)
        };
        let (id, tok, job) = run(&mut s, "gentle");
        s.stop(&id, false, now).unwrap();
        assert_eq!(s.ping(&tok, now, t).unwrap().0.action, "busy");
        s.finish(&tok, &job, 0, now, t).unwrap();
        assert_eq!(s.ping(&tok, now, t).unwrap().0.action, "disconnect");
        assert!(s.violations.is_empty());
        assert!(
            s.stop(&id, false, now).is_err(),
            "gone agents cannot be stopped"
        );

        let (id, tok, job) = run(&mut s, "forced");
        assert!(s.start(&tok, &job, now, t).is_err());
        s.stop(&id, true, now).unwrap();
        let kinds: Vec<_> = s.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            [
                ViolationKind::JobStartedTwice,
                ViolationKind::StoppedWhileBusy
            ]
        );
        assert_eq!(s.job(&job).unwrap().status, JobStatus::Canceled);
    }

    #[test]
    fn the_rest_budget_refills_after_a_minute() {
        let mut config = EmulatorConfig::new("acme", "agent", "api");
        config.rest_requests_per_minute = 2;
        let mut s = State::new(&config);
        let t = Instant::now();
        assert_eq!(s.take_rest(t), Ok(1));
        assert_eq!(s.take_rest(t), Ok(0));
        assert!(s.take_rest(t + Duration::from_secs(30)).is_err());
        assert_eq!(s.take_rest(t + Duration::from_secs(61)), Ok(1));
    }
}
