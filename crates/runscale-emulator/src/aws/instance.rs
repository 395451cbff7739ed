//! The instance agent: plays every instance of one Auto Scaling group as
//! `deploy/aws/runner-user-data.sh` would run on it, and records what happened to each —
//! and every busy instance that was terminated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::moto::{GroupState, MotoClient};
use crate::github::{
    AgentError, AgentReport, JIT_CONFIG_SECRET, JitConfig, RunnerSource, run_agent,
};

/// How long a runner gets to finish when the harness stops, before its instance is powered off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of an [`InstanceAgent`].
#[derive(Clone, Debug)]
pub struct InstanceAgentConfig {
    /// The Auto Scaling group whose members are played.
    pub group: String,
    /// The runscale pool driving it: the parameters are `{ssm_prefix}/{pool}/{instance-id}`.
    pub pool: String,
    /// runscale's `ssm_prefix`.
    pub ssm_prefix: String,
    /// How often the group is read, and a missing parameter read again.
    pub poll_interval: Duration,
    /// How long an instance waits for its parameter before it gives up (`RUNSCALE_WAIT` of
    /// the user data); it then stays [`InstancePhase::Unclaimed`] until terminated.
    pub registration_wait: Duration,
}

impl InstanceAgentConfig {
    /// Group `group` driven by pool `pool`, prefix `/runscale`, reading every 200 ms and
    /// waiting up to 60 s for a registration.
    pub fn new(group: &str, pool: &str) -> Self {
        Self {
            group: group.to_owned(),
            pool: pool.to_owned(),
            ssm_prefix: "/runscale".to_owned(),
            poll_interval: Duration::from_millis(200),
            registration_wait: Duration::from_secs(60),
        }
    }
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstancePhase {
    /// `InService`, waiting for its parameter.
    WaitingForRegistration,
    /// Its runner agent is up.
    Running,
    /// Its runner exited; it waits to be terminated.
    RunnerExited,
    /// No parameter came within [`InstanceAgentConfig::registration_wait`] (or it was
    /// unusable); it waits to be terminated.
    Unclaimed,
    /// It left the group or turned `Terminating`.
    Terminated,
}

/// How an instance's runner agent ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutcome {
    /// It exited by itself (an ephemeral runner after its job, a runner removed while idle).
    Exited(AgentReport),
    /// It failed (the message never includes a token).
    Failed(String),
    /// The instance was terminated while the agent was up; it was stopped at once.
    Killed,
    /// The harness stopped before the agent ended.
    Stopped,
}

/// One instance's life, times relative to [`InstanceAgent::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The EC2 instance id.
    pub instance_id: String,
    /// When it was first seen `InService`.
    pub seen_at: Duration,
    /// When it read (and deleted) its parameter.
    pub registered_at: Option<Duration>,
    /// The runner its parameter named (from the JIT configuration).
    pub runner_name: Option<String>,
    /// Where it is now.
    pub phase: InstancePhase,
    /// How its runner agent ended, once it did.
    pub outcome: Option<AgentOutcome>,
    /// When it was seen gone from the group (or `Terminating`).
    pub terminated_at: Option<Duration>,
}

/// Something AWS or runscale must never do to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The instance.
    pub instance_id: String,
    /// When it was seen, relative to [`InstanceAgent::start`].
    pub at: Duration,
    /// What happened.
    pub kind: ViolationKind,
}

/// The kinds of [`Violation`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViolationKind {
    /// The instance was terminated while its runner was running a job (`job_id` is `None`
    /// when the CI emulator could not be asked and the agent was still up).
    BusyInstanceTerminated {
        /// The runner.
        runner_name: String,
        /// The job it was running.
        job_id: Option<u64>,
    },
    /// The instance's parameter had no usable `GITHUB_JIT_CONFIG` line.
    BadRegistration {
        /// What was wrong (never the value).
        message: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_secs_f64();
        match &self.kind {
            ViolationKind::BusyInstanceTerminated {
                runner_name,
                job_id: Some(job),
            } => write!(
                f,
                "{at:.1}s: instance {} terminated while runner {runner_name} ran job {job}",
                self.instance_id
            ),
            ViolationKind::BusyInstanceTerminated { runner_name, .. } => write!(
                f,
                "{at:.1}s: instance {} terminated while runner {runner_name} was up and its \
                 state unknown",
                self.instance_id
            ),
            ViolationKind::BadRegistration { message } => write!(
                f,
                "{at:.1}s: instance {}: unusable registration: {message}",
                self.instance_id
            ),
        }
    }
}

/// What the agent saw so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// Every instance ever seen `InService`, in order of appearance.
    pub instances: Vec<InstanceRecord>,
    /// Violations, in order.
    pub violations: Vec<Violation>,
    /// The group's desired capacity at the last successful read.
    pub desired: Option<i32>,
    /// The highest desired capacity read.
    pub peak_desired: i32,
    /// `InService` members at the last successful read.
    pub in_service: usize,
    /// The most `InService` members read at once.
    pub peak_in_service: usize,
    /// Reads of the group.
    pub polls: u64,
    /// Reads that failed (or found no group).
    pub poll_errors: u64,
    /// The last such failure.
    pub last_error: Option<String>,
}

impl FleetSnapshot {
    /// Instances in `phase`.
    pub fn count(&self, phase: InstancePhase) -> usize {
        self.instances.iter().filter(|i| i.phase == phase).count()
    }
}

/// Plays the instances of one Auto Scaling group (see the module docs of [`crate::aws`]).
/// Dropping it stops the polling; [`InstanceAgent::stop`] also waits for every instance.
pub struct InstanceAgent {
    log: Arc<Mutex<FleetSnapshot>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl InstanceAgent {
    /// Starts polling the group with `client`.
    pub fn start(client: MotoClient, config: InstanceAgentConfig) -> Self {
        let log: Arc<Mutex<FleetSnapshot>> = Arc::default();
        let stop = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            client,
            config,
            log: log.clone(),
            started: Instant::now(),
            http: reqwest::Client::new(),
        });
        let task = tokio::spawn(watch(ctx, stop.clone()));
        Self {
            log,
            stop,
            task: Some(task),
        }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> FleetSnapshot {
        lock(&self.log).clone()
    }

    /// Stops polling; runners still up get [`STOP_GRACE`] (5 s) to finish, then their
    /// instances are powered off. Returns the final snapshot.
    pub async fn stop(mut self) -> FleetSnapshot {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.snapshot()
    }
}

impl Drop for InstanceAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(log: &Mutex<FleetSnapshot>) -> MutexGuard<'_, FleetSnapshot> {
    // A panic while holding the lock leaves a usable record for a test harness.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the group task and the instance tasks share.
struct Ctx {
    client: MotoClient,
    config: InstanceAgentConfig,
    log: Arc<Mutex<FleetSnapshot>>,
    started: Instant,
    http: reqwest::Client,
}

impl Ctx {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut InstanceRecord)) {
        let mut log = lock(&self.log);
        if let Some(r) = log.instances.iter_mut().find(|r| r.instance_id == id) {
            f(r);
        }
    }

    fn violation(&self, id: &str, kind: ViolationKind) {
        let v = Violation {
            instance_id: id.to_owned(),
            at: self.now(),
            kind,
        };
        tracing::warn!(violation = %v, "instance agent");
        lock(&self.log).violations.push(v);
    }

    fn terminated(&self, id: &str, outcome: Option<AgentOutcome>) {
        let at = self.now();
        self.update(id, |r| {
            r.phase = InstancePhase::Terminated;
            r.terminated_at = Some(at);
            if outcome.is_some() {
                r.outcome = outcome;
            }
        });
    }
}

/// Whether a member is gone for good: absent, or terminating or detaching.
fn gone(group: &GroupState, id: &str) -> bool {
    group
        .members
        .iter()
        .find(|m| m.instance_id == id)
        .is_none_or(|m| {
            m.lifecycle_state.starts_with("Terminat") || m.lifecycle_state.starts_with("Detach")
        })
}

/// The group task: reads the group, starts a life for every new `InService` member and
/// tells lives whose member went that their instance is terminated.
async fn watch(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut lives: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let read = ctx.client.group(&ctx.config.group).await;
        {
            let mut log = lock(&ctx.log);
            log.polls += 1;
            match &read {
                Ok(Some(g)) => {
                    let in_service = g.in_service().count();
                    log.desired = Some(g.desired);
                    log.peak_desired = log.peak_desired.max(g.desired);
                    log.in_service = in_service;
                    log.peak_in_service = log.peak_in_service.max(in_service);
                }
                Ok(None) => {
                    log.poll_errors += 1;
                    log.last_error = Some(format!("group {} does not exist", ctx.config.group));
                }
                Err(e) => {
                    log.poll_errors += 1;
                    log.last_error = Some(e.to_string());
                }
            }
        }
        if let Ok(Some(group)) = &read {
            for m in group.in_service() {
                if lives.contains_key(&m.instance_id) {
                    continue;
                }
                lock(&ctx.log).instances.push(InstanceRecord {
                    instance_id: m.instance_id.clone(),
                    seen_at: ctx.now(),
                    registered_at: None,
                    runner_name: None,
                    phase: InstancePhase::WaitingForRegistration,
                    outcome: None,
                    terminated_at: None,
                });
                let terminated = CancellationToken::new();
                let task = tokio::spawn(life(
                    ctx.clone(),
                    m.instance_id.clone(),
                    terminated.clone(),
                    stop.clone(),
                ));
                lives.insert(m.instance_id.clone(), (terminated, task));
            }
            let seen: HashSet<&str> = lives.keys().map(String::as_str).collect();
            for id in seen {
                if gone(group, id)
                    && let Some((terminated, _)) = lives.get(id)
                {
                    terminated.cancel();
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(ctx.config.poll_interval) => {}
        }
    }
    for (_, (_, task)) in lives {
        let _ = task.await;
    }
}

/// One instance, from `InService` to terminated: the user data's steps.
async fn life(ctx: Arc<Ctx>, id: String, terminated: CancellationToken, stop: CancellationToken) {
    let c = &ctx.config;
    let name = format!("{}/{}/{}", c.ssm_prefix, c.pool, id);
    let Some(value) = wait_for_registration(&ctx, &name, &terminated, &stop).await else {
        if terminated.is_cancelled() {
            ctx.terminated(&id, None);
            return;
        }
        if stop.is_cancelled() {
            return;
        }
        ctx.update(&id, |r| r.phase = InstancePhase::Unclaimed);
        return wait_for_termination(&ctx, &id, None, &terminated, &stop).await;
    };
    // The user data deletes it even if runscale would (it also does once the runner is busy).
    let _ = ctx.client.ssm.delete_parameter().name(&name).send().await;
    let at = ctx.now();
    ctx.update(&id, |r| r.registered_at = Some(at));

    let jit = match jit_config(&value) {
        Ok(jit) => jit,
        Err(message) => {
            ctx.violation(&id, ViolationKind::BadRegistration { message });
            ctx.update(&id, |r| r.phase = InstancePhase::Unclaimed);
            return wait_for_termination(&ctx, &id, None, &terminated, &stop).await;
        }
    };
    drop(value);
    ctx.update(&id, |r| {
        r.runner_name = Some(jit.runner_name.clone());
        r.phase = InstancePhase::Running;
    });
    let mut machine = match Machine::boot(&id, RunnerSource::Jit(jit.clone())) {
        Ok(m) => m,
        Err(e) => {
            ctx.update(&id, |r| {
                r.outcome = Some(AgentOutcome::Failed(format!("cannot start the agent: {e}")));
                r.phase = InstancePhase::RunnerExited;
            });
            return wait_for_termination(&ctx, &id, None, &terminated, &stop).await;
        }
    };
    tokio::select! {
        biased;
        done = &mut machine.done => {
            let outcome = match done {
                Ok(Ok(report)) => AgentOutcome::Exited(report),
                Ok(Err(e)) => AgentOutcome::Failed(e.to_string()),
                Err(_) => AgentOutcome::Killed,
            };
            ctx.update(&id, |r| {
                r.outcome = Some(outcome);
                r.phase = InstancePhase::RunnerExited;
            });
            machine.join().await;
            wait_for_termination(&ctx, &id, None, &terminated, &stop).await;
        }
        _ = terminated.cancelled() => {
            // Ask the CI emulator before the power goes, so the answer is about this agent.
            let busy = busy_job(&ctx.http, &jit).await;
            machine.power.cancel();
            match busy {
                Ok(None) => {}
                Ok(Some(job)) => ctx.violation(&id, ViolationKind::BusyInstanceTerminated {
                    runner_name: jit.runner_name.clone(),
                    job_id: Some(job),
                }),
                Err(()) => ctx.violation(&id, ViolationKind::BusyInstanceTerminated {
                    runner_name: jit.runner_name.clone(),
                    job_id: None,
                }),
            }
            ctx.terminated(&id, Some(AgentOutcome::Killed));
            machine.join().await;
        }
        _ = stop.cancelled() => {
            machine.graceful.cancel();
            let outcome = match tokio::time::timeout(STOP_GRACE, &mut machine.done).await {
                Ok(Ok(Ok(report))) => AgentOutcome::Exited(report),
                Ok(Ok(Err(e))) => AgentOutcome::Failed(e.to_string()),
                _ => AgentOutcome::Stopped,
            };
            machine.power.cancel();
            ctx.update(&id, |r| r.outcome = Some(outcome));
            machine.join().await;
        }
    }
}

/// Reads the parameter until it exists, the wait runs out (`None`), or the instance or the
/// harness stops (`None`).
async fn wait_for_registration(
    ctx: &Ctx,
    name: &str,
    terminated: &CancellationToken,
    stop: &CancellationToken,
) -> Option<SecretString> {
    let deadline = Instant::now() + ctx.config.registration_wait;
    loop {
        let read = ctx
            .client
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send();
        tokio::select! {
            _ = terminated.cancelled() => return None,
            _ = stop.cancelled() => return None,
            resp = read => {
                if let Ok(resp) = resp
                    && let Some(value) = resp.parameter().and_then(|p| p.value())
                {
                    return Some(SecretString::from(value.to_owned()));
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::select! {
            _ = terminated.cancelled() => return None,
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(ctx.config.poll_interval) => {}
        }
    }
}

/// After the runner: waits to be terminated (recorded) or for the harness to stop.
async fn wait_for_termination(
    ctx: &Ctx,
    id: &str,
    outcome: Option<AgentOutcome>,
    terminated: &CancellationToken,
    stop: &CancellationToken,
) {
    tokio::select! {
        _ = terminated.cancelled() => ctx.terminated(id, outcome),
        _ = stop.cancelled() => {}
    }
}

/// The `NAME=value` lines of a registration, split at the first `=` (names as in a shell
/// variable; other lines are skipped, as the user data does).
fn registration_lines(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| {
            let mut bytes = name.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .collect()
}

/// The runner's JIT configuration from a registration; errors never quote the value.
fn jit_config(value: &SecretString) -> Result<JitConfig, String> {
    let lines = registration_lines(value.expose_secret());
    let encoded = lines
        .get(JIT_CONFIG_SECRET)
        .ok_or_else(|| format!("no {JIT_CONFIG_SECRET} line"))?;
    JitConfig::decode(encoded).map_err(|e| e.to_string())
}

/// The job the runner is running, as the GitHub emulator's snapshot says (`Err` if it could
/// not be asked).
async fn busy_job(http: &reqwest::Client, jit: &JitConfig) -> Result<Option<u64>, ()> {
    #[derive(Deserialize)]
    struct Snapshot {
        runners: Vec<Runner>,
    }
    #[derive(Deserialize)]
    struct Runner {
        id: u64,
        busy: bool,
        job_id: Option<u64>,
    }
    let url = format!("{}/_emulator/snapshot", jit.url.trim_end_matches('/'));
    let snapshot: Snapshot = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|_| ())?
        .json()
        .await
        .map_err(|_| ())?;
    Ok(snapshot
        .runners
        .iter()
        .find(|r| r.id == jit.runner_id && r.busy)
        .map(|r| r.job_id.unwrap_or_default()))
}

/// An instance's runner agent on its own runtime thread: powering off drops every task of
/// that runtime (the agent's heartbeats too), as a terminated machine stops everything.
struct Machine {
    /// Asks the agent to stop after the job in hand (SIGTERM).
    graceful: CancellationToken,
    /// Stops everything at once.
    power: CancellationToken,
    /// The agent's result; closed without one when powered off.
    done: oneshot::Receiver<Result<AgentReport, AgentError>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Machine {
    fn boot(id: &str, source: RunnerSource) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, done) = oneshot::channel();
        let graceful = CancellationToken::new();
        let power = CancellationToken::new();
        let (g, p) = (graceful.clone(), power.clone());
        let thread = std::thread::Builder::new()
            .name(format!("instance-{id}"))
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        result = run_agent(source, g) => { let _ = tx.send(result); }
                        _ = p.cancelled() => {}
                    }
                });
                // Dropping the runtime drops the tasks the agent spawned.
                drop(rt);
            })?;
        Ok(Self {
            graceful,
            power,
            done,
            thread: Some(thread),
        })
    }

    /// Waits for the thread to end (after the agent returned or the power went).
    async fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lines_split_at_the_first_equals_and_skip_bad_names() {
        let lines = registration_lines("A=1\nGITHUB_JIT_CONFIG=ab==\n9X=no\nnot a line\n_b=x=y\n");
        assert_eq!(
            lines.into_iter().collect::<Vec<_>>(),
            [("A", "1"), ("GITHUB_JIT_CONFIG", "ab=="), ("_b", "x=y")]
        );
    }

    #[test]
    fn a_registration_without_a_jit_config_is_refused_without_quoting_it() {
        let e = jit_config(&SecretString::from("RUNNER_TOKEN=s3cret\n")).expect_err("no jit");
        assert_eq!(e, "no GITHUB_JIT_CONFIG line");
        let e = jit_config(&SecretString::from("GITHUB_JIT_CONFIG=s3cret!\n")).expect_err("bad");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
