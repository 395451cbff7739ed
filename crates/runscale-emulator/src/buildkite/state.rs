//! The emulator's state and the rules of agents and jobs: registration and connection, job
//! dispatch by queue and tags, accept, acquire, start, log chunks and finish, stop and pause
//! requests, lost agents, metrics, and the webhook events all this produces. The Stacks API's
//! bookkeeping is in [`super::stacks`], the REST rate limits in [`super::limits`]. Pure
//! bookkeeping: no I/O, the time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::config::{EmulatorConfig, Faults};
use super::limits::RestLimits;
use super::model::{
    AgentSnapshot, ConnectionState, JobSnapshot, JobSpec, JobStatus, Snapshot, Violation,
    ViolationKind, queue_of,
};
use super::stacks::Stack;

/// Most log bytes kept per job (`log_max_size_bytes` told to agents); later chunks are
/// refused.
pub(crate) const LOG_MAX_BYTES: u64 = 4 << 20;

pub(crate) struct Job {
    pub(crate) snap: JobSnapshot,
    /// The step's own environment.
    env: BTreeMap<String, String>,
    /// Its build's number (one build per job).
    build_number: u64,
    /// Id of the agent it is assigned to.
    agent_id: Option<String>,
    /// Stacks API reservation: the stack and when it expires.
    pub(crate) reservation: Option<(String, Instant)>,
    /// Log chunks by offset.
    log: BTreeMap<u64, Vec<u8>>,
    /// Header times the agent reported.
    header_times: usize,
    /// Its build's meta-data (one build per job).
    meta_data: BTreeMap<String, String>,
}

impl Job {
    /// Scheduled and not held by an unexpired reservation.
    pub(crate) fn free(&self, instant: Instant) -> bool {
        self.snap.status == JobStatus::Scheduled
            && self
                .reservation
                .as_ref()
                .is_none_or(|(_, until)| *until <= instant)
    }
}

pub(crate) struct Agent {
    pub(crate) snap: AgentSnapshot,
    pub(crate) hostname: String,
    pub(crate) version: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) connected_at: Option<DateTime<Utc>>,
    pub(crate) last_job_finished_at: Option<DateTime<Utc>>,
    last_contact: Instant,
}

/// What an agent sends to register (the fields the emulator uses).
#[derive(Clone, Debug, Default)]
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) hostname: String,
    pub(crate) version: String,
    pub(crate) meta_data: Vec<String>,
    pub(crate) ignore_in_dispatches: bool,
}

/// What a registered agent is told.
#[derive(Clone, Debug)]
pub(crate) struct Registered {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) access_token: String,
    pub(crate) meta_data: Vec<String>,
}

/// What a ping tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PingAnswer {
    /// Nothing to do.
    Idle,
    /// Take this job (accept it first).
    Job(String),
    /// Paused: no job, keep pinging.
    Pause,
    /// Leave now.
    Disconnect,
}

/// A job as the agent receives it from accept or acquire.
#[derive(Clone, Debug)]
pub(crate) struct JobPayload {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) runnable_at: DateTime<Utc>,
}

/// A meta-data answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MetaData {
    /// A key's value (`None`: not set).
    Value(Option<String>),
    /// Every key.
    Keys(Vec<String>),
}

/// A webhook event to deliver.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) name: &'static str,
    pub(crate) job: Option<JobSnapshot>,
    pub(crate) agent: Option<AgentSnapshot>,
}

/// Why a call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown agent, job or stack (404).
    Unknown,
    /// Unknown access token (401).
    Unauthorized,
    /// A malformed request, or one Buildkite answers 400 (`Can only stop connected agents`).
    BadRequest(&'static str),
    /// The call does not fit the current state (422).
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

/// The intervals registering agents are told (whole seconds, at least 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Intervals {
    pub(crate) ping: u64,
    pub(crate) heartbeat: u64,
    pub(crate) job_status: u64,
}

pub(crate) struct State {
    pub(crate) org: String,
    agent_tokens: Vec<SecretString>,
    api_tokens: Vec<SecretString>,
    pub(crate) faults: Faults,
    pub(crate) metrics_poll_duration: Option<Duration>,
    pub(crate) limits: RestLimits,
    pub(crate) intervals: Intervals,
    repository: String,
    agent_lost_after: Duration,
    pub(crate) jobs: Vec<Job>,
    pub(crate) job_index: HashMap<String, usize>,
    agents: Vec<Agent>,
    agent_index: HashMap<String, usize>,
    by_token: HashMap<String, usize>,
    violations: Vec<Violation>,
    pub(crate) stacks: BTreeMap<String, Stack>,
    /// Queues whose dispatch is paused.
    pub(crate) dispatch_paused: BTreeSet<String>,
    peak_running: u32,
    pub(crate) rng: StdRng,
    pub(crate) requests: BTreeMap<String, u64>,
    pub(crate) webhooks_sent: u64,
}

/// Whether `token` is one of `tokens` (compared over the whole length): its index.
fn token_index(tokens: &[SecretString], token: &str) -> Option<usize> {
    tokens.iter().position(|t| {
        crate::serve::constant_time_eq(t.expose_secret().as_bytes(), token.as_bytes())
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

/// The id of the cluster queue with key `queue` (stable: derived from the key).
pub fn cluster_queue_id(queue: &str) -> String {
    let digest = Sha256::digest(format!("cluster-queue:{queue}").as_bytes());
    crate::serve::uuid_shape(&crate::serve::hex(&digest[..16]))
}

/// Whole seconds, at least 1.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl State {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        State {
            org: config.org.clone(),
            agent_tokens: config.agent_tokens.clone(),
            api_tokens: config.api_tokens.clone(),
            faults: config.faults.clone(),
            metrics_poll_duration: config.metrics_poll_duration,
            limits: RestLimits::new(
                config.rest_requests_per_minute,
                config.rest_requests_per_minute_per_user,
            ),
            intervals: Intervals {
                ping: whole_secs(config.ping_interval),
                heartbeat: whole_secs(config.heartbeat_interval),
                job_status: whole_secs(config.job_status_interval),
            },
            repository: config.repository.clone(),
            agent_lost_after: config.agent_lost_after,
            jobs: Vec::new(),
            job_index: HashMap::new(),
            agents: Vec::new(),
            agent_index: HashMap::new(),
            by_token: HashMap::new(),
            violations: Vec::new(),
            stacks: BTreeMap::new(),
            dispatch_paused: BTreeSet::new(),
            peak_running: 0,
            rng: StdRng::seed_from_u64(config.seed),
            requests: BTreeMap::new(),
            webhooks_sent: 0,
        }
    }

    pub(crate) fn uuid(&mut self) -> String {
        crate::serve::random_uuid(&mut self.rng)
    }

    pub(crate) fn agent_token_ok(&self, token: &str) -> bool {
        token_index(&self.agent_tokens, token).is_some()
    }

    /// The user (index of the API token) a REST token belongs to.
    pub(crate) fn api_user(&self, token: &str) -> Option<usize> {
        token_index(&self.api_tokens, token)
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
            let index = self.add_job(spec, now);
            events.push(self.job_event("job.scheduled", index));
            ids.push(self.jobs[index].snap.id.clone());
        }
        (ids, events)
    }

    /// Records jobs that ran before the test (a build history): each scheduled at `at`,
    /// started `waited` later by an agent no longer there, passed a second after. No event
    /// is sent.
    pub(crate) fn record_past(
        &mut self,
        specs: Vec<JobSpec>,
        at: DateTime<Utc>,
        waited: chrono::Duration,
    ) -> Vec<String> {
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let index = self.add_job(spec, at);
            let snap = &mut self.jobs[index].snap;
            snap.status = JobStatus::Passed;
            snap.started_at = Some(at + waited);
            snap.finished_at = Some(at + waited + chrono::Duration::seconds(1));
            snap.exit_status = Some(0);
            snap.starts = 1;
            ids.push(snap.id.clone());
        }
        ids
    }

    /// Adds a scheduled job (in a build of its own) at `at`; returns its index.
    fn add_job(&mut self, spec: JobSpec, at: DateTime<Utc>) -> usize {
        let id = self.uuid();
        let index = self.jobs.len();
        self.job_index.insert(id.clone(), index);
        self.jobs.push(Job {
            snap: JobSnapshot {
                id,
                queue: queue_of(&spec.agent_query_rules).to_owned(),
                agent_query_rules: spec.agent_query_rules,
                command: spec.command,
                status: JobStatus::Scheduled,
                agent: None,
                starts: 0,
                scheduled_at: at,
                started_at: None,
                finished_at: None,
                exit_status: None,
                log_bytes: 0,
                reserved_by: None,
                reservations: 0,
            },
            env: spec.env,
            build_number: index as u64 + 1,
            agent_id: None,
            reservation: None,
            log: BTreeMap::new(),
            header_times: 0,
            meta_data: BTreeMap::new(),
        });
        index
    }

    /// The builds (one per job) created at or after `from`, newest first, with their build
    /// number.
    pub(crate) fn builds(&self, from: Option<DateTime<Utc>>) -> Vec<(u64, &JobSnapshot)> {
        let mut out: Vec<(u64, &JobSnapshot)> = self
            .jobs
            .iter()
            .filter(|j| from.is_none_or(|f| j.snap.scheduled_at >= f))
            .map(|j| (j.build_number, &j.snap))
            .collect();
        out.sort_by_key(|(n, j)| std::cmp::Reverse((j.scheduled_at, *n)));
        out
    }

    /// `POST /register` with an agent token: a new agent, never connected yet.
    pub(crate) fn register(
        &mut self,
        r: Registration,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Registered {
        let id = self.uuid();
        let access_token = self.uuid();
        let name = if r.name.is_empty() {
            format!("{}-{}", r.hostname, self.agents.len() + 1)
        } else {
            r.name
        };
        let i = self.agents.len();
        self.agents.push(Agent {
            snap: AgentSnapshot {
                id: id.clone(),
                name: name.clone(),
                meta_data: r.meta_data.clone(),
                connection_state: ConnectionState::NeverConnected,
                job: None,
                jobs_finished: 0,
                paused: false,
                ignore_in_dispatches: r.ignore_in_dispatches,
            },
            hostname: r.hostname,
            version: r.version,
            created_at: now,
            connected_at: None,
            last_job_finished_at: None,
            last_contact: instant,
        });
        self.agent_index.insert(id.clone(), i);
        self.by_token.insert(access_token.clone(), i);
        Registered {
            id,
            name,
            access_token,
            meta_data: r.meta_data,
        }
    }

    /// The agent an access token belongs to, as long as it is not gone (disconnected or
    /// lost); its contact is refreshed.
    fn agent_by_token(&mut self, token: &str, instant: Instant) -> Result<usize, Refusal> {
        let i = *self.by_token.get(token).ok_or(Refusal::Unauthorized)?;
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

    /// `POST /heartbeat`: only the contact.
    pub(crate) fn heartbeat(&mut self, token: &str, instant: Instant) -> Result<(), Refusal> {
        self.agent_by_token(token, instant).map(|_| ())
    }

    /// A ping: the agent's contact, and what it should do next. A stopping agent without a
    /// job is told to disconnect, a paused one to pause; otherwise an agent without a job
    /// that takes dispatches is assigned the oldest free job its tags match whose queue's
    /// dispatch is not paused.
    pub(crate) fn ping(&mut self, token: &str, instant: Instant) -> Result<PingAnswer, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let a = &self.agents[i].snap;
        match a.connection_state {
            ConnectionState::NeverConnected => {
                return Err(Refusal::Conflict("agent has not connected"));
            }
            ConnectionState::Stopping if a.job.is_none() => return Ok(PingAnswer::Disconnect),
            _ => {}
        }
        if a.paused {
            return Ok(PingAnswer::Pause);
        }
        if a.job.is_some()
            || a.ignore_in_dispatches
            || a.connection_state != ConnectionState::Connected
        {
            return Ok(PingAnswer::Idle);
        }
        let tags = a.meta_data.clone();
        let Some(j) = self.jobs.iter().position(|j| {
            j.free(instant)
                && !self.dispatch_paused.contains(&j.snap.queue)
                && matches(&j.snap.agent_query_rules, &tags)
        }) else {
            return Ok(PingAnswer::Idle);
        };
        self.hold(i, j, JobStatus::Assigned);
        Ok(PingAnswer::Job(self.jobs[j].snap.id.clone()))
    }

    /// Gives job `j` to agent `i` in `status` (ending any reservation).
    fn hold(&mut self, i: usize, j: usize, status: JobStatus) {
        let agent_id = self.agents[i].snap.id.clone();
        let job = &mut self.jobs[j];
        job.snap.status = status;
        job.snap.agent = Some(self.agents[i].snap.name.clone());
        job.agent_id = Some(agent_id);
        job.reservation = None;
        self.agents[i].snap.job = Some(job.snap.id.clone());
    }

    /// The job `job_id` if agent `i` holds it.
    fn held_job(&self, i: usize, job_id: &str) -> Result<usize, Refusal> {
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        if self.jobs[j].agent_id.as_deref() != Some(self.agents[i].snap.id.as_str()) {
            return Err(Refusal::Conflict("job is not assigned to this agent"));
        }
        Ok(j)
    }

    /// The job's environment as its agent receives it: what Buildkite sets for every job,
    /// the agent's tags as `BUILDKITE_AGENT_META_DATA_*`, then the step's own variables.
    fn job_env(&self, i: usize, j: usize) -> BTreeMap<String, String> {
        let (agent, job) = (&self.agents[i], &self.jobs[j]);
        let build_id = crate::serve::uuid_shape(&crate::serve::hex(
            &Sha256::digest(format!("build:{}", job.snap.id).as_bytes())[..16],
        ));
        let mut env: BTreeMap<String, String> = [
            ("BUILDKITE", "true".to_owned()),
            ("CI", "true".to_owned()),
            ("BUILDKITE_JOB_ID", job.snap.id.clone()),
            ("BUILDKITE_BUILD_ID", build_id),
            ("BUILDKITE_BUILD_NUMBER", job.build_number.to_string()),
            (
                "BUILDKITE_BUILD_URL",
                format!(
                    "https://buildkite.com/{}/app/builds/{}",
                    self.org, job.build_number
                ),
            ),
            ("BUILDKITE_COMMAND", job.snap.command.clone()),
            ("BUILDKITE_LABEL", "build".to_owned()),
            ("BUILDKITE_STEP_KEY", "build".to_owned()),
            ("BUILDKITE_REPO", self.repository.clone()),
            ("BUILDKITE_COMMIT", "HEAD".to_owned()),
            ("BUILDKITE_BRANCH", "main".to_owned()),
            ("BUILDKITE_ORGANIZATION_SLUG", self.org.clone()),
            ("BUILDKITE_PIPELINE_SLUG", "app".to_owned()),
            ("BUILDKITE_PIPELINE_PROVIDER", "git".to_owned()),
            ("BUILDKITE_AGENT_ID", agent.snap.id.clone()),
            ("BUILDKITE_AGENT_NAME", agent.snap.name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for tag in &agent.snap.meta_data {
            if let Some((k, v)) = tag.split_once('=') {
                let key = k
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect::<String>();
                env.insert(format!("BUILDKITE_AGENT_META_DATA_{key}"), v.to_owned());
            }
        }
        env.extend(job.env.clone());
        env
    }

    fn payload(&self, i: usize, j: usize) -> JobPayload {
        let job = &self.jobs[j];
        JobPayload {
            id: job.snap.id.clone(),
            state: job.snap.status.as_str(),
            env: self.job_env(i, j),
            runnable_at: job.snap.scheduled_at,
        }
    }

    /// `PUT /jobs/{id}/accept`: the agent takes the job a ping assigned it.
    pub(crate) fn accept(
        &mut self,
        token: &str,
        job_id: &str,
        instant: Instant,
    ) -> Result<JobPayload, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = self.held_job(i, job_id)?;
        if !matches!(
            self.jobs[j].snap.status,
            JobStatus::Assigned | JobStatus::Accepted
        ) {
            return Err(Refusal::Conflict("job is not assigned"));
        }
        self.jobs[j].snap.status = JobStatus::Accepted;
        Ok(self.payload(i, j))
    }

    /// `PUT /jobs/{id}/acquire` (`--acquire-job`): the agent takes that job, reserved or not,
    /// if it is still scheduled and the agent has none; otherwise 422 (the agent then exits,
    /// see `core/client.go`).
    pub(crate) fn acquire(
        &mut self,
        token: &str,
        job_id: &str,
        instant: Instant,
    ) -> Result<JobPayload, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        if self.agents[i].snap.job.is_some() {
            return Err(Refusal::Conflict("agent already has a job"));
        }
        if self.jobs[j].snap.status != JobStatus::Scheduled {
            return Err(Refusal::Conflict("job can no longer be acquired"));
        }
        self.hold(i, j, JobStatus::Accepted);
        Ok(self.payload(i, j))
    }

    /// `PUT /jobs/{id}/start`. Starting a job that was started before is refused and
    /// recorded as a violation.
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
        let j = self.held_job(i, job_id)?;
        if self.jobs[j].snap.status != JobStatus::Accepted {
            return Err(Refusal::Conflict("job is not accepted"));
        }
        let job = &mut self.jobs[j];
        job.snap.status = JobStatus::Running;
        job.snap.starts = 1;
        job.snap.started_at = Some(now);
        self.peak_running = self.peak_running.max(self.running_now());
        Ok(vec![self.job_event("job.started", j)])
    }

    /// `POST /jobs/{id}/chunks`: one piece of the job's log at `offset`, from the agent that
    /// holds (or held) the job. The log is capped at [`LOG_MAX_BYTES`].
    pub(crate) fn chunk(
        &mut self,
        token: &str,
        job_id: &str,
        offset: u64,
        data: Vec<u8>,
        instant: Instant,
    ) -> Result<(), Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = self.held_job(i, job_id)?;
        let job = &mut self.jobs[j];
        let size = data.len() as u64;
        if job.snap.log_bytes.saturating_add(size) > LOG_MAX_BYTES {
            return Err(Refusal::Conflict("log is larger than log_max_size_bytes"));
        }
        if let Some(old) = job.log.insert(offset, data) {
            job.snap.log_bytes -= old.len() as u64;
        }
        job.snap.log_bytes += size;
        Ok(())
    }

    /// `POST /jobs/{id}/header_times`: counted only.
    pub(crate) fn header_times(
        &mut self,
        token: &str,
        job_id: &str,
        count: usize,
        instant: Instant,
    ) -> Result<(), Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = self.held_job(i, job_id)?;
        self.jobs[j].header_times += count;
        Ok(())
    }

    /// `GET /jobs/{id}`: the job's state (`canceled` tells a running agent to stop it).
    pub(crate) fn job_state(
        &mut self,
        token: &str,
        job_id: &str,
        instant: Instant,
    ) -> Result<&'static str, Refusal> {
        self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        Ok(self.jobs[j].snap.status.as_str())
    }

    /// `POST /jobs/{id}/data/{set,get,exists,keys}` (the job's build's meta-data, which the
    /// job runner reads and writes with `buildkite-agent meta-data`): `set` with a value,
    /// otherwise the value of `key` (`None` if unset), or with no key the keys.
    pub(crate) fn meta_data(
        &mut self,
        token: &str,
        job_id: &str,
        key: Option<&str>,
        set: Option<String>,
        instant: Instant,
    ) -> Result<MetaData, Refusal> {
        self.agent_by_token(token, instant)?;
        let j = *self.job_index.get(job_id).ok_or(Refusal::Unknown)?;
        let data = &mut self.jobs[j].meta_data;
        Ok(match (key, set) {
            (Some(k), Some(v)) => {
                data.insert(k.to_owned(), v);
                MetaData::Value(None)
            }
            (Some(k), None) => MetaData::Value(data.get(k).cloned()),
            (None, _) => MetaData::Keys(data.keys().cloned().collect()),
        })
    }

    /// `PUT /jobs/{id}/finish`: the job ends with the agent's exit status (a missing or
    /// non-numeric one fails it). With `ignore_in_dispatches` the agent gets no further job
    /// from pings. Finishing a job that was cancelled meanwhile is accepted and changes
    /// nothing.
    pub(crate) fn finish(
        &mut self,
        token: &str,
        job_id: &str,
        exit_status: Option<i32>,
        ignore_in_dispatches: bool,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        let i = self.agent_by_token(token, instant)?;
        let j = self.held_job(i, job_id)?;
        if ignore_in_dispatches {
            self.agents[i].snap.ignore_in_dispatches = true;
        }
        match self.jobs[j].snap.status {
            JobStatus::Canceled => return Ok(Vec::new()),
            JobStatus::Running => {}
            _ => return Err(Refusal::Conflict("job is not running")),
        }
        let job = &mut self.jobs[j];
        job.snap.status = if exit_status == Some(0) {
            JobStatus::Passed
        } else {
            JobStatus::Failed
        };
        job.snap.exit_status = exit_status;
        job.snap.finished_at = Some(now);
        let a = &mut self.agents[i];
        a.snap.job = None;
        a.snap.jobs_finished += 1;
        a.last_job_finished_at = Some(now);
        Ok(vec![self.job_event("job.finished", j)])
    }

    /// `POST /disconnect`: the agent leaves. Idempotent: an agent already gone is fine.
    pub(crate) fn disconnect(
        &mut self,
        token: &str,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<Vec<Event>, Refusal> {
        match self.agent_by_token(token, instant) {
            Ok(i) => Ok(self.disconnect_at(i, now)),
            Err(Refusal::Conflict(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Ends the job an agent holds when it leaves: a job not started yet goes back to the
    /// queue, a running one is lost (a violation of `kind`).
    fn drop_job(&mut self, i: usize, kind: ViolationKind, now: DateTime<Utc>) -> Vec<Event> {
        let Some(job_id) = self.agents[i].snap.job.take() else {
            return Vec::new();
        };
        let Some(&j) = self.job_index.get(&job_id) else {
            return Vec::new();
        };
        match self.jobs[j].snap.status {
            JobStatus::Assigned | JobStatus::Accepted => {
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

    /// `PUT .../agents/{id}/stop`: a connected agent becomes `stopping` (a stopping one stays
    /// so); with `force` a job it runs is cancelled (a violation), without it the job finishes
    /// first. Any other agent: 400 `Can only stop connected agents` (`rest_api/agents.md`).
    pub(crate) fn stop(
        &mut self,
        id: &str,
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, Refusal> {
        let i = *self.agent_index.get(id).ok_or(Refusal::Unknown)?;
        if !self.agents[i].snap.connection_state.is_connected() {
            return Err(Refusal::BadRequest("Can only stop connected agents"));
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

    /// `PUT .../agents/{id}/pause` and `/resume` (`rest_api/agents.md`): a paused agent gets
    /// no job and its pings answer `pause`.
    pub(crate) fn set_paused(&mut self, id: &str, paused: bool) -> Result<(), Refusal> {
        let i = *self.agent_index.get(id).ok_or(Refusal::Unknown)?;
        let a = &mut self.agents[i].snap;
        match (paused, a.paused) {
            (true, _) if !a.connection_state.is_connected() => {
                Err(Refusal::Conflict("Only connected agents may be paused"))
            }
            (true, true) => Err(Refusal::Conflict("Agent is already paused")),
            (false, false) => Err(Refusal::Conflict("Agent is not paused")),
            _ => {
                a.paused = paused;
                Ok(())
            }
        }
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

    /// A job's log as uploaded so far (chunks in offset order), and how many header times
    /// its agent reported.
    pub(crate) fn job_log(&self, id: &str) -> Option<(Vec<u8>, usize)> {
        let job = &self.jobs[*self.job_index.get(id)?];
        Some((
            job.log.values().flatten().copied().collect(),
            job.header_times,
        ))
    }

    /// Per-queue counts: agents by their `queue=` tag, jobs by their rules. Jobs held by an
    /// agent count as running.
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
                s if s.is_held() => c.running += 1,
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

    /// Registers and connects an agent of queue `a`: (id, access token).
    fn agent(s: &mut State, name: &str, acquire: bool) -> (String, String) {
        let (now, t) = (Utc::now(), Instant::now());
        let r = s.register(
            Registration {
                name: name.to_owned(),
                meta_data: tags(&["queue=a"]),
                ignore_in_dispatches: acquire,
                ..Registration::default()
            },
            now,
            t,
        );
        s.connect(&r.access_token, now, t).unwrap();
        (r.id, r.access_token)
    }

    /// Pings for a job, accepts and starts it.
    fn run(s: &mut State, tok: &str) -> String {
        let (now, t) = (Utc::now(), Instant::now());
        let PingAnswer::Job(job) = s.ping(tok, t).unwrap() else {
            panic!("no job")
        };
        let payload = s.accept(tok, &job, t).unwrap();
        assert_eq!(payload.env["BUILDKITE_COMMAND"], "sleep 1");
        assert_eq!(payload.env["BUILDKITE_AGENT_META_DATA_QUEUE"], "a");
        s.start(tok, &job, now, t).unwrap();
        job
    }

    #[test]
    fn a_graceful_stop_lets_the_job_finish_and_a_forced_one_is_a_violation() {
        let mut s = state();
        let (now, t) = (Utc::now(), Instant::now());
        s.submit(vec![JobSpec::new("a", Duration::from_secs(1)); 2], now);
        let (id, tok) = agent(&mut s, "gentle", false);
        let job = run(&mut s, &tok);
        s.stop(&id, false, now).unwrap();
        assert_eq!(s.ping(&tok, t).unwrap(), PingAnswer::Idle, "busy");
        s.chunk(&tok, &job, 0, b"hello\n".to_vec(), t).unwrap();
        s.finish(&tok, &job, Some(0), false, now, t).unwrap();
        assert_eq!(s.ping(&tok, t).unwrap(), PingAnswer::Disconnect);
        s.disconnect(&tok, now, t).unwrap();
        s.disconnect(&tok, now, t).expect("idempotent");
        assert!(s.violations.is_empty());
        assert_eq!(s.job_log(&job).unwrap().0, b"hello\n");
        assert_eq!(
            s.stop(&id, false, now).unwrap_err(),
            Refusal::BadRequest("Can only stop connected agents")
        );

        let (id, tok) = agent(&mut s, "forced", false);
        let job = run(&mut s, &tok);
        assert!(s.start(&tok, &job, now, t).is_err());
        s.stop(&id, true, now).unwrap();
        assert_eq!(s.job_state(&tok, &job, t).unwrap(), "canceled");
        s.finish(&tok, &job, Some(143), false, now, t)
            .expect("a cancelled job's finish is accepted");
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
    fn acquiring_agents_and_agents_done_after_a_job_get_nothing_from_pings() {
        let mut s = state();
        let (now, t) = (Utc::now(), Instant::now());
        let (ids, _) = s.submit(vec![JobSpec::new("a", Duration::from_secs(1)); 3], now);
        let (_, acq) = agent(&mut s, "acquirer", true);
        assert_eq!(s.ping(&acq, t).unwrap(), PingAnswer::Idle);
        s.acquire(&acq, &ids[2], t).unwrap();
        s.start(&acq, &ids[2], now, t).unwrap();
        let (_, once) = agent(&mut s, "once", false);
        let job = run(&mut s, &once);
        assert_eq!(job, ids[0], "oldest first");
        s.finish(&once, &job, Some(1), true, now, t).unwrap();
        assert_eq!(s.job(&job).unwrap().status, JobStatus::Failed);
        assert_eq!(s.ping(&once, t).unwrap(), PingAnswer::Idle);
        let (_, other) = agent(&mut s, "other", false);
        assert_eq!(
            s.acquire(&other, &ids[2], t).unwrap_err(),
            Refusal::Conflict("job can no longer be acquired")
        );
        s.dispatch_paused.insert("a".to_owned());
        assert_eq!(s.ping(&other, t).unwrap(), PingAnswer::Idle, "paused queue");
        s.dispatch_paused.clear();
        let id = s.connected()[2].snap.id.clone();
        s.set_paused(&id, true).unwrap();
        assert_eq!(s.ping(&other, t).unwrap(), PingAnswer::Pause);
        assert!(s.set_paused(&id, true).is_err());
        s.set_paused(&id, false).unwrap();
        assert_eq!(s.ping(&other, t).unwrap(), PingAnswer::Job(ids[1].clone()));
        assert_eq!(s.ping("nope", t).unwrap_err(), Refusal::Unauthorized);
    }
}
