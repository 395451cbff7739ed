//! In-memory adapters and builders for tests, benchmarks and the simulator (feature `testing`).
//!
//! [`World`] is a small stateful CI system and cloud in one: jobs queue per pool, runners
//! register, connect when their instance has booted, take jobs, finish them, and (ephemeral)
//! leave. [`MemoryProvider`] and [`MemoryBackend`] are the two adapter views of it. The world
//! advances lazily to the clock's time on every adapter call. It has fault knobs ("fail the
//! next N calls of an operation"), a call log, and it records every safety violation it sees
//! (an instance terminated while one of its runners was still registered, more instances than
//! a pool's cap).

pub mod conformance;
mod fuzz_corpus;
pub mod prerequisite;
mod reconcile;

pub use fuzz_corpus::{fuzz_inputs, replay_fuzz_inputs};
pub use prerequisite::{program_on_path, require, require_program};
pub use reconcile::{live_instances, spawn_reconciler};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::adapter::{
    Backend, Credentials, LaunchRequest, Provider, ProviderView, Registration, ReuseRequest,
    WebhookRequest,
};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{
    Instance, InstanceId, InstanceState, PoolId, PoolSpec, Reused, Runner, RunnerId, RunnerState,
    Timestamp, WaitingJob,
};
use crate::naming;

impl PoolSpec {
    /// A spec for tests: max 10, no warm runners, 60 s timeouts, ephemeral, one slot.
    pub fn test(name: &str) -> Self {
        Self {
            name: PoolId::new(name),
            min_idle: 0,
            max: 10,
            max_booting: 10,
            launches_per_minute: 0,
            boot_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_lifetime: None,
            scale_down_delay: Duration::ZERO,
            schedules: Vec::new(),
            runners_per_instance: 1,
            ephemeral: true,
            template_hash: "t1".to_owned(),
            runners_unattributed: false,
            warm: None,
            reuse: None,
        }
    }
    /// Sets `max` (and `max_booting` if it was larger).
    pub fn max(mut self, n: u32) -> Self {
        self.max = n;
        self.max_booting = self.max_booting.min(n);
        self
    }
    /// Sets `reuse`.
    pub fn reuse(mut self, reuse: Option<crate::model::Reuse>) -> Self {
        self.reuse = reuse;
        self
    }
    /// Sets `min_idle`.
    pub fn min_idle(mut self, n: u32) -> Self {
        self.min_idle = n;
        self
    }
    /// Sets `max_booting`.
    pub fn max_booting(mut self, n: u32) -> Self {
        self.max_booting = n;
        self
    }
    /// Sets `launches_per_minute`.
    pub fn launches_per_minute(mut self, n: u32) -> Self {
        self.launches_per_minute = n;
        self
    }
    /// Sets `idle_timeout`.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Sets `boot_timeout`.
    pub fn boot_timeout(mut self, d: Duration) -> Self {
        self.boot_timeout = d;
        self
    }
    /// Sets `ephemeral`.
    pub fn ephemeral(mut self, e: bool) -> Self {
        self.ephemeral = e;
        self
    }
    /// Sets `runners_per_instance`.
    pub fn slots(mut self, n: u32) -> Self {
        self.runners_per_instance = n;
        self
    }
    /// Sets `runners_unattributed`.
    pub fn unattributed(mut self, u: bool) -> Self {
        self.runners_unattributed = u;
        self
    }
    /// Sets `warm`.
    pub fn warm(mut self, warm: Option<crate::forecast::Warm>) -> Self {
        self.warm = warm;
        self
    }
}

/// A job in the world.
#[derive(Clone, Debug)]
struct Job {
    id: String,
    pool: PoolId,
    queued_at: Timestamp,
    duration: Duration,
    runner: Option<String>,
    started_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    /// Registered, its instance has not started it yet.
    Registered,
    Idle,
    Busy,
}

#[derive(Clone, Debug)]
struct RunnerRec {
    id: RunnerId,
    pool: PoolId,
    conn: Connection,
    draining: bool,
    job: Option<String>,
    last_busy: Option<Timestamp>,
    registered_at: Timestamp,
}

#[derive(Clone, Debug)]
struct InstanceRec {
    pool: PoolId,
    state: InstanceState,
    launched_at: Timestamp,
    template_hash: String,
    runner_names: Vec<String>,
    reused: Option<Reused>,
}

/// Knobs of the world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    /// How long an instance boots before its runners connect.
    pub boot_delay: Duration,
    /// Whether runners are ephemeral (leave after one job) per pool; default true.
    pub ephemeral: HashMap<PoolId, bool>,
    /// When every runner of an instance has left, the instance shuts itself down.
    pub instances_exit_when_runners_leave: bool,
    /// Most instances the backend will hold in total (capacity), if limited.
    pub capacity: Option<usize>,
    /// Registered runners connect `boot_delay` after registration even if no instance of this
    /// world hosts them: for pairing [`MemoryProvider`] with a real backend.
    pub auto_connect: bool,
    /// Registered runners are listed (offline) before they connect, as GitHub lists a JIT
    /// runner; `false`: listed only once connected, as CircleCI and Buildkite do.
    pub registrations_listed: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            boot_delay: Duration::from_secs(5),
            ephemeral: HashMap::new(),
            instances_exit_when_runners_leave: true,
            capacity: None,
            auto_connect: false,
            registrations_listed: true,
        }
    }
}

#[derive(Default)]
struct State {
    config: WorldConfig,
    next: u64,
    queue: VecDeque<Job>,
    running: HashMap<String, Job>,
    runners: BTreeMap<String, RunnerRec>,
    instances: BTreeMap<InstanceId, InstanceRec>,
    faults: HashMap<&'static str, VecDeque<ErrorKind>>,
    calls: Vec<String>,
    violations: Vec<String>,
    completed: Vec<(String, Duration)>,
    launches: u64,
    terminations: u64,
    reuses: u64,
    caps: HashMap<PoolId, u32>,
    /// Instances that vanish when they would finish booting, runners never started.
    crash_boots: usize,
}

/// The in-memory CI system and cloud.
pub struct World {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl World {
    /// A new empty world on `clock`.
    pub fn new(clock: Arc<dyn Clock>, config: WorldConfig) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                config,
                ..Default::default()
            }),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state after advancing it to the clock's time.
    fn advanced(&self) -> MutexGuard<'_, State> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.step(now);
        s
    }

    /// The provider view.
    pub fn provider(self: &Arc<Self>) -> Arc<MemoryProvider> {
        Arc::new(MemoryProvider(self.clone()))
    }

    /// The backend view.
    pub fn backend(self: &Arc<Self>) -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend(self.clone()))
    }

    /// Queues `n` jobs for `pool`, each running `duration` once started.
    pub fn enqueue(&self, pool: &str, n: usize, duration: Duration) {
        let now = self.clock.now();
        let mut s = self.advanced();
        for _ in 0..n {
            s.next += 1;
            let id = format!("job-{}", s.next);
            s.queue.push_back(Job {
                id,
                pool: PoolId::new(pool),
                queued_at: now,
                duration,
                runner: None,
                started_at: None,
            });
        }
        s.step(now);
    }

    /// Records a pool's `max` so the world can flag a breach.
    pub fn set_cap(&self, pool: &str, max: u32) {
        self.lock().caps.insert(PoolId::new(pool), max);
    }

    /// Makes the next `n` calls of `op` (`observe`, `register`, `remove`, `drain`, `instances`,
    /// `launch`, `terminate`) fail with `kind`.
    pub fn fail_next(&self, op: &'static str, n: usize, kind: ErrorKind) {
        let mut s = self.lock();
        let q = s.faults.entry(op).or_default();
        for _ in 0..n {
            q.push_back(kind);
        }
    }

    /// The next `n` instances to finish booting vanish instead (the machine or pod died before
    /// its runners started); their registrations stay unconnected.
    pub fn crash_next_boots(&self, n: usize) {
        self.lock().crash_boots = n;
    }

    /// Makes a registered runner busy right now with a long job, as if the CI system assigned
    /// one between an observation and a removal.
    pub fn make_busy(&self, runner_name: &str) {
        let now = self.clock.now();
        let mut s = self.lock();
        s.next += 1;
        let id = format!("job-{}", s.next);
        if let Some(r) = s.runners.get_mut(runner_name) {
            r.conn = Connection::Busy;
            r.job = Some(id.clone());
            r.last_busy = Some(now);
            let pool = r.pool.clone();
            s.running.insert(
                id.clone(),
                Job {
                    id,
                    pool,
                    queued_at: now,
                    duration: Duration::from_secs(3600),
                    runner: Some(runner_name.to_owned()),
                    started_at: Some(now),
                },
            );
        }
    }

    /// Advances the world to the clock's time.
    pub fn step(&self) {
        drop(self.advanced());
    }

    /// A read-only summary.
    pub fn snapshot(&self) -> WorldSnapshot {
        let s = self.advanced();
        WorldSnapshot {
            waiting: s.queue.len(),
            running: s.running.len(),
            completed: s.completed.clone(),
            runners: s.runners.len(),
            busy_runners: s
                .runners
                .values()
                .filter(|r| r.conn == Connection::Busy)
                .count(),
            instances: s.instances.len(),
            launches: s.launches,
            terminations: s.terminations,
            reuses: s.reuses,
            violations: s.violations.clone(),
            calls: s.calls.clone(),
        }
    }
}

/// What a test asserts on.
#[derive(Clone, Debug)]
pub struct WorldSnapshot {
    /// Jobs queued.
    pub waiting: usize,
    /// Jobs running.
    pub running: usize,
    /// Finished jobs with how long each waited.
    pub completed: Vec<(String, Duration)>,
    /// Registered runners.
    pub runners: usize,
    /// Busy runners.
    pub busy_runners: usize,
    /// Live instances.
    pub instances: usize,
    /// Instances launched so far.
    pub launches: u64,
    /// Instances terminated by runscale so far.
    pub terminations: u64,
    /// Instances handed fresh runners so far.
    pub reuses: u64,
    /// Safety violations seen.
    pub violations: Vec<String>,
    /// Every adapter call, in order (`op pool target`).
    pub calls: Vec<String>,
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl State {
    fn fault(&mut self, op: &'static str) -> Result<()> {
        if let Some(kind) = self.faults.get_mut(op).and_then(|q| q.pop_front()) {
            return Err(Error::new(op, kind, "injected fault"));
        }
        Ok(())
    }

    fn ephemeral(&self, pool: &PoolId) -> bool {
        self.config.ephemeral.get(pool).copied().unwrap_or(true)
    }

    fn step(&mut self, now: Timestamp) {
        // Boot.
        let boot = to_chrono(self.config.boot_delay);
        let mut connect = Vec::new();
        let mut crash_boots = self.crash_boots;
        self.instances.retain(|_, inst| {
            let booted = inst.state == InstanceState::Booting && inst.launched_at + boot <= now;
            if booted && crash_boots > 0 {
                crash_boots -= 1;
                return false;
            }
            true
        });
        self.crash_boots = crash_boots;
        for inst in self.instances.values_mut() {
            if inst.state == InstanceState::Booting && inst.launched_at + boot <= now {
                inst.state = InstanceState::Running;
            }
            if inst.state == InstanceState::Running {
                connect.extend(inst.runner_names.iter().cloned());
            }
        }
        if self.config.auto_connect {
            for (name, r) in &self.runners {
                if r.conn == Connection::Registered && r.registered_at + boot <= now {
                    connect.push(name.clone());
                }
            }
        }
        for name in connect {
            if let Some(r) = self.runners.get_mut(&name)
                && r.conn == Connection::Registered
            {
                r.conn = Connection::Idle;
            }
        }
        // Finish jobs.
        let done: Vec<String> = self
            .running
            .values()
            .filter(|j| {
                j.started_at
                    .is_some_and(|t| t + to_chrono(j.duration) <= now)
            })
            .map(|j| j.id.clone())
            .collect();
        for id in done {
            let Some(job) = self.running.remove(&id) else {
                continue;
            };
            let (Some(started), Some(name)) = (job.started_at, job.runner.clone()) else {
                continue;
            };
            let waited = (started - job.queued_at).to_std().unwrap_or_default();
            self.completed.push((job.id.clone(), waited));
            let ephemeral = self.ephemeral(&job.pool);
            if ephemeral {
                self.runners.remove(&name);
            } else if let Some(r) = self.runners.get_mut(&name) {
                r.conn = Connection::Idle;
                r.job = None;
                r.last_busy = Some(now);
            }
        }
        // Instances whose runners all left shut down by themselves.
        if self.config.instances_exit_when_runners_leave {
            let runners = &self.runners;
            self.instances.retain(|_, i| {
                i.state == InstanceState::Booting
                    || i.runner_names.iter().any(|n| runners.contains_key(n))
            });
        }
        // Assign queued jobs, oldest first, to idle runners of their pool.
        let mut still = VecDeque::with_capacity(self.queue.len());
        while let Some(mut job) = self.queue.pop_front() {
            let pick = self
                .runners
                .iter_mut()
                .find(|(_, r)| r.pool == job.pool && r.conn == Connection::Idle && !r.draining);
            match pick {
                Some((name, r)) => {
                    r.conn = Connection::Busy;
                    r.job = Some(job.id.clone());
                    r.last_busy = Some(now);
                    job.runner = Some(name.clone());
                    job.started_at = Some(now);
                    self.running.insert(job.id.clone(), job);
                }
                None => still.push_back(job),
            }
        }
        self.queue = still;
    }
}

/// The provider view of a [`World`].
pub struct MemoryProvider(Arc<World>);

#[async_trait]
impl Provider for MemoryProvider {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let mut s = self.0.advanced();
        s.calls.push(format!("observe {}", pools.len()));
        if let Err(e) = s.fault("observe") {
            return pools.iter().map(|p| (p.clone(), Err(e.clone()))).collect();
        }
        let mut out: HashMap<PoolId, ProviderView> = pools
            .iter()
            .map(|p| (p.clone(), ProviderView::default()))
            .collect();
        for job in &s.queue {
            if let Some(v) = out.get_mut(&job.pool) {
                v.demand.waiting.push(WaitingJob {
                    id: job.id.clone(),
                    queued_at: job.queued_at,
                });
            }
        }
        for job in s.running.values() {
            if let Some(v) = out.get_mut(&job.pool) {
                v.demand.running += 1;
            }
        }
        let listed = s.config.registrations_listed;
        for (name, r) in &s.runners {
            if let Some(v) = out.get_mut(&r.pool)
                && naming::owned_by(r.pool.as_str(), name)
                && (listed || r.conn != Connection::Registered)
            {
                v.runners.push(Runner {
                    id: r.id.clone(),
                    name: name.clone(),
                    state: match r.conn {
                        Connection::Registered => RunnerState::Offline,
                        Connection::Idle => RunnerState::Idle,
                        Connection::Busy => RunnerState::Busy,
                    },
                    draining: r.draining,
                    last_busy: r.last_busy,
                });
            }
        }
        out.into_iter().map(|(k, v)| (k, Ok(v))).collect()
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let now = self.0.clock.now();
        let mut s = self.0.advanced();
        s.calls.push(format!("register {pool} {runner_name}"));
        s.fault("register")?;
        s.next += 1;
        let id = RunnerId::new(format!("r{}", s.next));
        s.runners.insert(
            runner_name.to_owned(),
            RunnerRec {
                id: id.clone(),
                pool: pool.clone(),
                conn: Connection::Registered,
                draining: false,
                job: None,
                last_busy: None,
                registered_at: now,
            },
        );
        let mut credentials = Credentials::default();
        credentials
            .vars
            .insert("RUNNER_NAME".to_owned(), runner_name.to_owned());
        credentials.secrets.insert(
            "RUNNER_TOKEN".to_owned(),
            SecretString::from(format!("secret-token-{}", s.next)),
        );
        Ok(Registration {
            runner_name: runner_name.to_owned(),
            runner_id: Some(id),
            credentials,
        })
    }

    async fn release(&self, pool: &PoolId, runner_name: &str) -> Result<()> {
        let mut s = self.0.advanced();
        s.calls.push(format!("release {pool} {runner_name}"));
        // The registration of a runner that never connected is given back.
        if s.runners
            .get(runner_name)
            .is_some_and(|r| r.conn == Connection::Registered)
        {
            s.runners.remove(runner_name);
        }
        Ok(())
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let mut s = self.0.advanced();
        s.calls.push(format!("remove {pool} {runner}"));
        s.fault("remove")?;
        let name = s
            .runners
            .iter()
            .find(|(_, r)| r.id == *runner)
            .map(|(n, r)| (n.clone(), r.conn));
        match name {
            None => Ok(()),
            Some((_, Connection::Busy)) => Err(Error::new(
                "memory.remove",
                ErrorKind::Busy,
                format!("runner {runner} is running a job"),
            )),
            Some((n, _)) => {
                s.runners.remove(&n);
                Ok(())
            }
        }
    }

    async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let mut s = self.0.advanced();
        s.calls.push(format!("drain {pool} {runner}"));
        s.fault("drain")?;
        if let Some(r) = s.runners.values_mut().find(|r| r.id == *runner) {
            r.draining = true;
        }
        Ok(())
    }

    /// Deliveries must carry `x-memory-signature: valid`; the body lists pool names, one per
    /// line.
    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        if request.header("x-memory-signature") != Some("valid") {
            return Err(Error::new(
                "memory.webhook",
                ErrorKind::Misconfigured,
                "signature missing or wrong",
            ));
        }
        let body = std::str::from_utf8(&request.body)
            .map_err(|_| Error::new("memory.webhook", ErrorKind::Protocol, "body is not UTF-8"))?;
        Ok(body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(PoolId::new)
            .collect())
    }

    async fn probe(&self) -> Result<String> {
        let mut s = self.0.advanced();
        s.fault("observe")?;
        Ok(format!("memory CI with {} runners", s.runners.len()))
    }
}

/// The backend view of a [`World`].
pub struct MemoryBackend(Arc<World>);

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        let mut s = self.0.advanced();
        s.calls.push(format!("instances {}", pools.len()));
        s.fault("instances")?;
        let mut out: HashMap<PoolId, Vec<Instance>> = HashMap::new();
        for (id, i) in &s.instances {
            if pools.contains(&i.pool) {
                out.entry(i.pool.clone()).or_default().push(Instance {
                    id: id.clone(),
                    state: i.state,
                    launched_at: i.launched_at,
                    template_hash: i.template_hash.clone(),
                    runner_names: i.runner_names.clone(),
                    reused: i.reused,
                });
            }
        }
        Ok(out)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        let now = self.0.clock.now();
        let mut s = self.0.advanced();
        s.calls.push(format!("launch {}", request.pool));
        s.fault("launch")?;
        if s.config.capacity.is_some_and(|c| s.instances.len() >= c) {
            return Err(Error::new(
                "memory.launch",
                ErrorKind::InsufficientCapacity,
                "no capacity left",
            ));
        }
        s.next += 1;
        let id = InstanceId::new(format!("i-{}", s.next));
        let rec = InstanceRec {
            pool: request.pool.clone(),
            state: InstanceState::Booting,
            launched_at: now,
            template_hash: request.template_hash.clone(),
            runner_names: request
                .runners
                .iter()
                .map(|r| r.runner_name.clone())
                .collect(),
            reused: None,
        };
        s.instances.insert(id.clone(), rec.clone());
        s.launches += 1;
        let live = s
            .instances
            .values()
            .filter(|i| i.pool == request.pool && i.state != InstanceState::Stopping)
            .count() as u32;
        if let Some(cap) = s.caps.get(&request.pool).copied()
            && live > cap
        {
            s.violations.push(format!(
                "pool {} has {live} instances, above max {cap}",
                request.pool
            ));
        }
        Ok(Instance {
            id,
            state: rec.state,
            launched_at: rec.launched_at,
            template_hash: rec.template_hash,
            runner_names: rec.runner_names,
            reused: None,
        })
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        let mut s = self.0.advanced();
        s.calls.push(format!("terminate {pool} {instance}"));
        s.fault("terminate")?;
        let Some(rec) = s.instances.remove(instance) else {
            return Ok(());
        };
        s.terminations += 1;
        for name in &rec.runner_names {
            if let Some(r) = s.runners.remove(name) {
                let what = if r.conn == Connection::Busy {
                    "busy"
                } else {
                    "still registered"
                };
                s.violations.push(format!(
                    "instance {instance} terminated while its runner {name} was {what}"
                ));
                if let Some(job) = r.job {
                    s.running.remove(&job);
                }
            }
        }
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        Ok("memory backend".to_owned())
    }

    /// Hands the instance its new runners, which connect on the next step; a violation if one
    /// of its runners is still registered.
    async fn reuse(&self, request: ReuseRequest) -> Result<()> {
        let now = self.0.clock.now();
        let mut s = self.0.advanced();
        s.calls
            .push(format!("reuse {} {}", request.pool, request.instance));
        s.fault("reuse")?;
        let Some(rec) = s.instances.get(&request.instance).cloned() else {
            return Err(Error::new(
                "memory.reuse",
                ErrorKind::NotFound,
                format!("no instance {}", request.instance),
            ));
        };
        for name in &rec.runner_names {
            if let Some(r) = s.runners.get(name) {
                let state = if r.conn == Connection::Busy {
                    "busy"
                } else {
                    "still registered"
                };
                s.violations.push(format!(
                    "instance {} reused while its runner {name} was {state}",
                    request.instance
                ));
            }
        }
        let rec = InstanceRec {
            runner_names: request
                .runners
                .iter()
                .map(|r| r.runner_name.clone())
                .collect(),
            reused: Some(Reused {
                uses: request.uses,
                at: now,
            }),
            ..rec
        };
        s.instances.insert(request.instance, rec);
        s.reuses += 1;
        Ok(())
    }
}
