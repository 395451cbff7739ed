//! The simulated CI system and backend, per pool, with aggregated counters so a policy reads
//! its inputs in O(1) and walks only live instances.
//!
//! - **CI side**: a FIFO queue of waiting jobs per pool. An idle, non-draining runner of the
//!   pool takes the oldest waiting job at once (a random one of the idle runners, as a CI
//!   system does). Removing a busy runner is refused, as GitHub (422), Buildkite and GitLab
//!   refuse it.
//! - **Runners**: registered offline at launch; online (idle) once their instance booted plus
//!   the registration delay; busy while running a job. Ephemeral runners leave after one job;
//!   persistent ones stay. Some baselines' runners also leave after an idle timeout.
//! - **Instances**: booting, then running. An instance whose runners all left may shut itself
//!   down (a pod, a `single-task` VM). Paid from launch until it ends.
//! - **Auto Scaling group** (for baselines that only set a desired capacity): launches up to
//!   the desired count at once; scales in by terminating the oldest instances unless they are
//!   protected; replaces instances that shut down by themselves unless they decremented the
//!   desired capacity on the way out.
//!
//! Invariant violations are counted here: a launch that takes a pool above its `max`, a busy
//! runner killed (its job goes back to the head of the queue), a job never started.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runscale_core::{PoolSpec, Timestamp};

use super::mirror::Mirror;
use super::{Compiled, SimJob};
use crate::boot::BootSampler;
use crate::config::{SimPool, WorldParams};
use crate::policies::{Policy, PolicyName, Setup};
use crate::report::{PolicyReport, Series, SeriesPoint, Violations, WaitStats};

/// Virtual time: milliseconds since the first job of the trace was queued.
pub(crate) type Ms = i64;

pub(crate) fn ms(d: Duration) -> Ms {
    super::ms_of(d)
}

const NONE: u32 = u32::MAX;
const MAX_EXAMPLES: usize = 5;

/// A CI event a policy may subscribe to (a webhook or a message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    Queued,
    Completed,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Booted(u32),
    Connect(u32),
    Finish(u32, u32),
    Timer(u16, u32),
    Wake(u16),
    PassEnd(u16),
    Hook(u16, Hook, u32),
    IdleExit(u32, u32),
}

/// An event of the queue: a handle the loop hands back to [`World::dispatch`].
pub(crate) struct Event {
    t: Ms,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.t == o.t && self.seq == o.seq
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    /// Reversed: the heap pops the earliest event, ties in scheduling order.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

/// Instance state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IState {
    Booting,
    Running,
    Gone,
}

/// Runner state as the CI system reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RState {
    /// Registered, not connected yet.
    Offline,
    Idle,
    Busy,
    Gone,
}

pub(crate) struct Inst {
    pub pool: u16,
    pub state: IState,
    pub launched: Ms,
    pub ended: Ms,
    /// First runner index; the instance's runners are `first..first + slots`.
    pub first: u32,
    pub slots: u32,
    /// Runners not gone.
    pub present: u32,
    /// Jobs started on it so far.
    pub jobs_started: u32,
    /// When its last job ended (or its launch time).
    pub last_job_end: Ms,
    /// Scratch for policies (an orphan tag, a status).
    pub tag: u32,
    /// Scratch for policies (an idle-since time).
    pub mark: Ms,
    live_pos: u32,
    pub(super) mpos: u32,
}

pub(crate) struct Run {
    pub inst: u32,
    pub state: RState,
    pub draining: bool,
    pub job: u32,
    pub last_busy: Ms,
    idle_since: Ms,
    idle_pos: u32,
    idle_gen: u32,
    pub(super) mpos: u32,
}

/// How a pool's runners and instances behave under a policy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifecycle {
    /// Runners leave after one job.
    pub ephemeral: bool,
    /// Runners leave after being idle (online, no job) this long.
    pub idle_exit: Option<Ms>,
    /// An instance whose runners all left shuts itself down.
    pub exit_when_empty: bool,
    /// Such a shutdown lowers the Auto Scaling group's desired capacity by one.
    pub exit_decrements_desired: bool,
}

/// An Auto Scaling group in front of the pool's instances.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asg {
    pub desired: u32,
    pub max: u32,
    /// Instances are protected from scale-in: lowering desired terminates nothing.
    pub protect: bool,
}

pub(crate) struct PoolRt {
    pub spec: PoolSpec,
    pub slots: u32,
    pub life: Lifecycle,
    /// Waiting job indices, oldest first.
    pub queue: VecDeque<u32>,
    idle: Vec<u32>,
    /// Live instance indices (booting or running), in no particular order.
    pub live: Vec<u32>,
    /// Instances in the booting state.
    pub booting: u32,
    /// Runners registered and not connected.
    pub offline: u32,
    /// Runners running a job.
    pub busy: u32,
    pub asg: Option<Asg>,
    pub(crate) mirror: Option<Mirror>,
    cap_from_schedule: bool,
    busy_until: Ms,
    dirty: bool,
    timer_gen: u32,
    pass_latency: Ms,
    hook_queued: Option<Ms>,
    hook_completed: Option<Ms>,
}

impl PoolRt {
    /// Idle, non-draining runners.
    pub fn idle(&self) -> u32 {
        self.idle.len() as u32
    }
    /// Waiting jobs.
    pub fn waiting(&self) -> u32 {
        self.queue.len() as u32
    }
}

struct SeriesAcc {
    bucket: Ms,
    edge: Ms,
    fleet_max: u32,
    queue_max: u32,
    points: Vec<SeriesPoint>,
}

pub(crate) struct World<'a> {
    now: Ms,
    t0: Timestamp,
    pub jobs: &'a [SimJob],
    job_start: Vec<Ms>,
    pub(super) job_mpos: Vec<u32>,
    pub pools: Vec<PoolRt>,
    pub insts: Vec<Inst>,
    pub runners: Vec<Run>,
    heap: BinaryHeap<Event>,
    seq: u64,
    pub rng: StdRng,
    boot: &'a BootSampler,
    reg_delay: Ms,
    // metrics
    paid_ms: i64,
    idle_ms: i64,
    launches: u64,
    fleet: u32,
    peak: u32,
    queued: u32,
    done: usize,
    last_done: Ms,
    violations: Violations,
    series: SeriesAcc,
    passes: u64,
}

impl<'a> World<'a> {
    pub(crate) fn new(
        c: &'a Compiled,
        pools: &[SimPool],
        setups: &[Setup],
        boot: &'a BootSampler,
        params: &WorldParams,
        seed: u64,
    ) -> Self {
        let span = c.jobs.last().map_or(0, |j| j.queued);
        let bucket = (span / 1500).max(60_000);
        let pools = pools
            .iter()
            .zip(setups)
            .enumerate()
            .map(|(i, (p, s))| PoolRt {
                spec: p.spec.clone(),
                slots: s.slots.max(1),
                life: s.life,
                queue: VecDeque::new(),
                idle: Vec::new(),
                live: Vec::new(),
                booting: 0,
                offline: 0,
                busy: 0,
                asg: s.asg,
                mirror: s.mirror.then(|| Mirror::new(&p.spec, i)),
                cap_from_schedule: s.mirror,
                busy_until: Ms::MIN,
                dirty: false,
                timer_gen: 0,
                pass_latency: s.pass_latency,
                hook_queued: s.hook_queued,
                hook_completed: s.hook_completed,
            })
            .collect();
        World {
            // Before any event: the clairvoyant bound launches before the first arrival.
            now: Ms::MIN / 4,
            t0: c.t0,
            jobs: &c.jobs,
            job_start: vec![-1; c.jobs.len()],
            job_mpos: vec![NONE; c.jobs.len()],
            pools,
            insts: Vec::new(),
            runners: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x51e0_51e0),
            boot,
            reg_delay: ms(params.registration_delay),
            paid_ms: 0,
            idle_ms: 0,
            launches: 0,
            fleet: 0,
            peak: 0,
            queued: 0,
            done: 0,
            last_done: 0,
            violations: Violations::default(),
            series: SeriesAcc {
                bucket,
                edge: bucket,
                fleet_max: 0,
                queue_max: 0,
                points: Vec::new(),
            },
            passes: 0,
        }
    }

    // ---- time and events -------------------------------------------------------------

    /// Current virtual time.
    pub fn now(&self) -> Ms {
        self.now
    }

    /// A virtual time as a wall-clock timestamp.
    pub fn ts(&self, t: Ms) -> Timestamp {
        self.t0 + chrono::Duration::milliseconds(t)
    }

    fn push(&mut self, t: Ms, ev: Ev) {
        self.seq += 1;
        self.heap.push(Event {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    pub(super) fn peek_time(&self) -> Option<Ms> {
        self.heap.peek().map(|e| e.t)
    }

    pub(super) fn pop(&mut self) -> Option<Event> {
        self.heap.pop()
    }

    pub(super) fn advance(&mut self, t: Ms) {
        while t >= self.series.edge {
            self.series.points.push(SeriesPoint {
                t_s: (self.series.edge - self.series.bucket) as f64 / 1000.0,
                fleet: self.series.fleet_max,
                queue: self.series.queue_max,
            });
            self.series.fleet_max = self.fleet;
            self.series.queue_max = self.queued;
            self.series.edge += self.series.bucket;
        }
        self.now = t;
    }

    pub(super) fn observe_series(&mut self) {
        self.series.fleet_max = self.series.fleet_max.max(self.fleet);
        self.series.queue_max = self.series.queue_max.max(self.queued);
    }

    pub(super) fn all_done(&self) -> bool {
        self.done == self.jobs.len()
    }

    pub(super) fn last_done(&self) -> Ms {
        self.last_done
    }

    /// Live instances over all pools.
    pub fn fleet(&self) -> u32 {
        self.fleet
    }

    pub(super) fn schedule_timer(&mut self, pool: usize, at: Ms) {
        let gen_ = self.pools[pool].timer_gen;
        self.push(at, Ev::Timer(pool as u16, gen_));
    }

    /// Wakes the pool's policy at `at` (coalesced with other wake-ups).
    pub fn wake_at(&mut self, pool: usize, at: Ms) {
        self.push(at, Ev::Wake(pool as u16));
    }

    pub(super) fn dispatch(&mut self, e: Event, pols: &mut [Box<dyn Policy>]) {
        match e.ev {
            Ev::Booted(i) => self.on_booted(i),
            Ev::Connect(i) => self.on_connect(i),
            Ev::Finish(r, j) => self.on_finish(r, j),
            Ev::Timer(p, g) => {
                if self.pools[p as usize].timer_gen == g {
                    self.wake(p as usize, pols);
                }
            }
            Ev::Wake(p) => self.wake(p as usize, pols),
            Ev::PassEnd(p) => {
                let pr = &mut self.pools[p as usize];
                if pr.dirty {
                    pr.dirty = false;
                    self.run_pass(p as usize, pols);
                }
            }
            Ev::Hook(p, kind, job) => {
                if pols[p as usize].on_hook(self, p as usize, kind, job) {
                    self.wake(p as usize, pols);
                }
            }
            Ev::IdleExit(r, g) => {
                let run = &self.runners[r as usize];
                if run.state == RState::Idle && run.idle_gen == g {
                    self.runner_leaves(r);
                }
            }
        }
    }

    fn wake(&mut self, p: usize, pols: &mut [Box<dyn Policy>]) {
        if self.now < self.pools[p].busy_until {
            self.pools[p].dirty = true;
        } else {
            self.run_pass(p, pols);
        }
    }

    fn run_pass(&mut self, p: usize, pols: &mut [Box<dyn Policy>]) {
        self.passes += 1;
        let next = pols[p].pass(self, p);
        let pr = &mut self.pools[p];
        pr.timer_gen = pr.timer_gen.wrapping_add(1);
        let lat = pr.pass_latency;
        pr.busy_until = self.now + lat;
        if lat > 0 {
            self.push(self.now + lat, Ev::PassEnd(p as u16));
        }
        if let Some(t) = next {
            let at = t.max(self.now + lat);
            self.schedule_timer(p, at);
        }
    }

    // ---- CI side -------------------------------------------------------------------------

    pub(super) fn arrive(&mut self, j: u32) {
        let p = self.jobs[j as usize].pool as usize;
        self.enqueue(j, false);
        self.match_pool(p);
        if let Some(lat) = self.pools[p].hook_queued {
            self.push(self.now + lat, Ev::Hook(p as u16, Hook::Queued, j));
        }
    }

    fn enqueue(&mut self, j: u32, front: bool) {
        let p = self.jobs[j as usize].pool as usize;
        if front {
            self.pools[p].queue.push_front(j);
        } else {
            self.pools[p].queue.push_back(j);
        }
        self.queued += 1;
        self.mirror_job_added(p, j);
    }

    /// Hands waiting jobs to idle runners.
    fn match_pool(&mut self, p: usize) {
        loop {
            let pr = &mut self.pools[p];
            if pr.queue.is_empty() || pr.idle.is_empty() {
                return;
            }
            let k = self.rng.random_range(0..pr.idle.len());
            let r = pr.idle[k];
            let Some(j) = pr.queue.pop_front() else {
                return;
            };
            self.queued -= 1;
            self.mirror_job_removed(p, j);
            self.start(r, j);
        }
    }

    fn start(&mut self, r: u32, j: u32) {
        let now = self.now;
        self.leave_idle(r);
        let run = &mut self.runners[r as usize];
        run.state = RState::Busy;
        run.job = j;
        run.last_busy = now;
        let inst = run.inst as usize;
        let p = self.insts[inst].pool as usize;
        self.insts[inst].jobs_started += 1;
        self.pools[p].busy += 1;
        let job = self.jobs[j as usize];
        self.job_start[j as usize] = now;
        self.mirror_runner_changed(r);
        if let Some(m) = &mut self.pools[p].mirror {
            m.view.demand.running += 1;
            m.version += 1;
        }
        self.push(now + job.dur, Ev::Finish(r, j));
    }

    fn on_finish(&mut self, r: u32, j: u32) {
        let run = &self.runners[r as usize];
        if run.state != RState::Busy || run.job != j {
            return; // killed meanwhile
        }
        let now = self.now;
        let inst = run.inst as usize;
        let p = self.insts[inst].pool as usize;
        self.done += 1;
        self.last_done = now;
        self.pools[p].busy -= 1;
        self.insts[inst].last_job_end = now;
        if let Some(m) = &mut self.pools[p].mirror {
            m.view.demand.running = m.view.demand.running.saturating_sub(1);
            m.version += 1;
        }
        let run = &mut self.runners[r as usize];
        run.last_busy = now;
        run.job = NONE;
        if self.pools[p].life.ephemeral {
            run.state = RState::Offline; // transient: runner_leaves accounts for it
            self.pools[p].offline += 1;
            self.runner_leaves(r);
        } else {
            run.state = RState::Offline;
            self.pools[p].offline += 1;
            self.become_idle(r);
            self.match_pool(p);
        }
        if let Some(lat) = self.pools[p].hook_completed {
            self.push(now + lat, Ev::Hook(p as u16, Hook::Completed, j));
        }
    }

    /// An offline runner comes online (or a busy one finished): idle, takes work.
    fn become_idle(&mut self, r: u32) {
        let now = self.now;
        let run = &mut self.runners[r as usize];
        debug_assert_eq!(run.state, RState::Offline);
        run.state = RState::Idle;
        run.idle_since = now;
        run.idle_gen = run.idle_gen.wrapping_add(1);
        let g = run.idle_gen;
        let draining = run.draining;
        let p = self.insts[run.inst as usize].pool as usize;
        let pr = &mut self.pools[p];
        pr.offline -= 1;
        if !draining {
            self.runners[r as usize].idle_pos = pr.idle.len() as u32;
            pr.idle.push(r);
        }
        if let Some(d) = pr.life.idle_exit {
            self.push(now + d, Ev::IdleExit(r, g));
        }
        self.mirror_runner_changed(r);
    }

    /// Bookkeeping when a runner stops being idle (takes a job, drains, leaves).
    fn leave_idle(&mut self, r: u32) {
        let now = self.now;
        let run = &mut self.runners[r as usize];
        if run.state != RState::Idle {
            return;
        }
        self.idle_ms += now - run.idle_since;
        run.idle_gen = run.idle_gen.wrapping_add(1);
        if run.idle_pos != NONE {
            let pos = run.idle_pos as usize;
            run.idle_pos = NONE;
            let p = self.insts[run.inst as usize].pool as usize;
            let idle = &mut self.pools[p].idle;
            idle.swap_remove(pos);
            if let Some(&moved) = idle.get(pos) {
                self.runners[moved as usize].idle_pos = pos as u32;
            }
        }
    }

    /// Removes a runner's registration. Counts it as gone; does not end the instance.
    fn unregister(&mut self, r: u32) {
        self.leave_idle(r);
        let run = &mut self.runners[r as usize];
        let p = self.insts[run.inst as usize].pool as usize;
        match run.state {
            RState::Offline => self.pools[p].offline -= 1,
            RState::Busy => self.pools[p].busy -= 1,
            RState::Idle | RState::Gone => {}
        }
        if run.state == RState::Gone {
            return;
        }
        run.state = RState::Gone;
        let inst = run.inst as usize;
        self.insts[inst].present -= 1;
        self.mirror_runner_removed(r);
    }

    /// A runner leaves on its own (ephemeral after its job, idle timeout); its instance may
    /// shut down.
    fn runner_leaves(&mut self, r: u32) {
        self.unregister(r);
        let inst = self.runners[r as usize].inst as usize;
        let p = self.insts[inst].pool as usize;
        let life = self.pools[p].life;
        if self.insts[inst].present == 0
            && life.exit_when_empty
            && self.insts[inst].state != IState::Gone
        {
            self.end_instance(inst as u32);
            if let Some(asg) = &mut self.pools[p].asg {
                if life.exit_decrements_desired {
                    asg.desired = asg.desired.saturating_sub(1);
                }
                self.asg_sync(p);
            }
        }
    }

    // ---- backend side --------------------------------------------------------------------

    fn on_booted(&mut self, i: u32) {
        let inst = &mut self.insts[i as usize];
        if inst.state != IState::Booting {
            return;
        }
        inst.state = IState::Running;
        let p = inst.pool as usize;
        self.pools[p].booting -= 1;
        self.mirror_instance_running(i);
        if self.reg_delay == 0 {
            self.on_connect(i);
        }
    }

    fn on_connect(&mut self, i: u32) {
        let inst = &self.insts[i as usize];
        if inst.state != IState::Running {
            return;
        }
        let p = inst.pool as usize;
        for r in inst.first..inst.first + inst.slots {
            if self.runners[r as usize].state == RState::Offline {
                self.become_idle(r);
            }
        }
        self.match_pool(p);
    }

    /// Registers runners and launches `n` instances (a boot time may be forced). Returns the
    /// new instance indices' start.
    pub fn launch(&mut self, p: usize, n: u32, boot: Option<Ms>) -> u32 {
        let first_inst = self.insts.len() as u32;
        let now = self.now;
        for _ in 0..n {
            let i = self.insts.len() as u32;
            let b = boot
                .unwrap_or_else(|| self.boot.sample(&mut self.rng))
                .max(0);
            let slots = self.pools[p].slots;
            let first = self.new_runners(i, slots);
            let pr = &mut self.pools[p];
            pr.offline += slots;
            pr.booting += 1;
            self.insts.push(Inst {
                pool: p as u16,
                state: IState::Booting,
                launched: now,
                ended: -1,
                first,
                slots,
                present: slots,
                jobs_started: 0,
                last_job_end: now,
                tag: 0,
                mark: -1,
                live_pos: pr.live.len() as u32,
                mpos: NONE,
            });
            pr.live.push(i);
            self.fleet += 1;
            self.peak = self.peak.max(self.fleet);
            self.launches += 1;
            self.mirror_instance_added(i);
            self.push(now + b, Ev::Booted(i));
            if self.reg_delay > 0 {
                self.push(now + b + self.reg_delay, Ev::Connect(i));
            }
            // Invariant: never more instances than max.
            let pr = &self.pools[p];
            let cap = if pr.cap_from_schedule {
                pr.spec.limits_at(self.ts(now)).max
            } else {
                pr.spec.max
            };
            if pr.live.len() as u32 > cap {
                self.violations.over_max += 1;
                if self.violations.examples.len() < MAX_EXAMPLES {
                    let msg = format!(
                        "t={}: pool {} launched its {}th instance, above max {cap}",
                        fmt_t(now),
                        pr.spec.name,
                        pr.live.len()
                    );
                    self.violations.examples.push(msg);
                }
            }
        }
        first_inst
    }

    /// Registers `slots` new runners (offline) of instance `i`; returns the first's index.
    fn new_runners(&mut self, i: u32, slots: u32) -> u32 {
        let first = self.runners.len() as u32;
        for _ in 0..slots {
            self.runners.push(Run {
                inst: i,
                state: RState::Offline,
                draining: false,
                job: NONE,
                last_busy: -1,
                idle_since: 0,
                idle_pos: NONE,
                idle_gen: 0,
                mpos: NONE,
            });
        }
        first
    }

    /// Hands a live instance whose runners all left fresh runners (reuse): registered offline
    /// now, online after the registration delay (no boot). Refused (false) if the instance is
    /// gone or still has a runner.
    pub fn reuse(&mut self, i: u32, uses: u32) -> bool {
        let Some(inst) = self.insts.get(i as usize) else {
            return false;
        };
        if inst.state == IState::Gone || inst.present > 0 {
            return false;
        }
        let (p, slots, running) = (
            inst.pool as usize,
            inst.slots,
            inst.state == IState::Running,
        );
        let first = self.new_runners(i, slots);
        let inst = &mut self.insts[i as usize];
        inst.first = first;
        inst.present = slots;
        self.pools[p].offline += slots;
        self.mirror_instance_reused(i, uses);
        if running {
            if self.reg_delay > 0 {
                self.push(self.now + self.reg_delay, Ev::Connect(i));
            } else {
                self.on_connect(i);
            }
        }
        true
    }

    /// Asks the CI system to remove a runner. Refused (false) while it runs a job.
    pub fn remove_runner(&mut self, r: u32) -> bool {
        match self.runners.get(r as usize).map(|x| x.state) {
            None | Some(RState::Gone) => true,
            Some(RState::Busy) => false,
            Some(_) => {
                self.unregister(r);
                true
            }
        }
    }

    /// Marks a runner so it takes no new job.
    pub fn drain(&mut self, r: u32) {
        let Some(run) = self.runners.get(r as usize) else {
            return;
        };
        if run.draining || run.state == RState::Gone {
            return;
        }
        if run.state == RState::Idle && run.idle_pos != NONE {
            // Out of the idle set, but still idle (paid, counted idle).
            let pos = run.idle_pos as usize;
            let p = self.insts[run.inst as usize].pool as usize;
            let idle = &mut self.pools[p].idle;
            idle.swap_remove(pos);
            if let Some(&moved) = idle.get(pos) {
                self.runners[moved as usize].idle_pos = pos as u32;
            }
            self.runners[r as usize].idle_pos = NONE;
        }
        self.runners[r as usize].draining = true;
        self.mirror_runner_changed(r);
    }

    /// Terminates an instance. Graceful: refused (false) if one of its runners is busy,
    /// otherwise its runners are removed first. Forced: busy runners are killed (a violation;
    /// their jobs go back to the head of the queue).
    pub fn terminate(&mut self, i: u32, force: bool) -> bool {
        let Some(inst) = self.insts.get(i as usize) else {
            return true;
        };
        if inst.state == IState::Gone {
            return true;
        }
        let (first, slots, p) = (inst.first, inst.slots, inst.pool as usize);
        let busy = (first..first + slots).any(|r| self.runners[r as usize].state == RState::Busy);
        if busy && !force {
            return false;
        }
        for r in first..first + slots {
            let run = &self.runners[r as usize];
            if run.state == RState::Busy {
                let j = run.job;
                self.violations.busy_killed += 1;
                if self.violations.examples.len() < MAX_EXAMPLES {
                    let msg = format!(
                        "t={}: pool {}: a busy runner was killed with its instance",
                        fmt_t(self.now),
                        self.pools[p].spec.name
                    );
                    self.violations.examples.push(msg);
                }
                // The job is lost mid-run and retried: back to the head of the queue.
                self.job_start[j as usize] = -1;
                if let Some(m) = &mut self.pools[p].mirror {
                    m.view.demand.running = m.view.demand.running.saturating_sub(1);
                    m.version += 1;
                }
                self.runners[r as usize].job = NONE;
                self.unregister(r);
                self.enqueue(j, true);
            } else {
                self.unregister(r);
            }
        }
        self.end_instance(i);
        self.match_pool(p);
        true
    }

    fn end_instance(&mut self, i: u32) {
        let now = self.now;
        let inst = &mut self.insts[i as usize];
        let p = inst.pool as usize;
        if inst.state == IState::Booting {
            self.pools[p].booting -= 1;
        }
        inst.state = IState::Gone;
        inst.ended = now;
        self.paid_ms += (now - inst.launched) * i64::from(inst.slots);
        let pos = inst.live_pos as usize;
        let live = &mut self.pools[p].live;
        live.swap_remove(pos);
        if let Some(&moved) = live.get(pos) {
            self.insts[moved as usize].live_pos = pos as u32;
        }
        self.fleet -= 1;
        self.mirror_instance_removed(i);
    }

    /// Sets an Auto Scaling group's desired capacity (clamped to its max) and lets the group
    /// act on it.
    pub fn set_desired(&mut self, p: usize, desired: u32) {
        if let Some(asg) = &mut self.pools[p].asg {
            asg.desired = desired.min(asg.max);
            self.asg_sync(p);
        }
    }

    fn asg_sync(&mut self, p: usize) {
        let Some(asg) = self.pools[p].asg else {
            return;
        };
        let live = self.pools[p].live.len() as u32;
        if live < asg.desired {
            self.launch(p, asg.desired - live, None);
        } else if live > asg.desired && !asg.protect {
            // Scale-in: the group terminates the oldest instances, busy or not.
            let mut order = self.pools[p].live.clone();
            order.sort_by_key(|&i| (self.insts[i as usize].launched, i));
            for i in order.into_iter().take((live - asg.desired) as usize) {
                self.terminate(i, true);
            }
        }
    }

    // ---- reading --------------------------------------------------------------------------

    /// The runners of an instance.
    pub fn runners_of(&self, i: u32) -> std::ops::Range<u32> {
        let inst = &self.insts[i as usize];
        inst.first..inst.first + inst.slots
    }

    /// Whether any runner of an instance is busy.
    pub fn inst_busy(&self, i: u32) -> u32 {
        self.runners_of(i)
            .filter(|&r| self.runners[r as usize].state == RState::Busy)
            .count() as u32
    }

    /// Whether any runner of an instance is online (idle or busy).
    pub fn inst_online(&self, i: u32) -> bool {
        self.runners_of(i)
            .any(|r| matches!(self.runners[r as usize].state, RState::Idle | RState::Busy))
    }

    /// Distinct workflow runs among waiting and running jobs of a pool.
    pub fn active_runs(&self, p: usize) -> Vec<(u32, Ms)> {
        let mut runs: Vec<(u32, Ms)> = self.pools[p]
            .queue
            .iter()
            .map(|&j| (self.jobs[j as usize].run, self.jobs[j as usize].queued))
            .collect();
        for &i in &self.pools[p].live {
            for r in self.runners_of(i) {
                let run = &self.runners[r as usize];
                if run.state == RState::Busy {
                    let j = &self.jobs[run.job as usize];
                    runs.push((j.run, j.queued));
                }
            }
        }
        runs.sort_unstable();
        runs.dedup_by_key(|x| x.0);
        runs
    }

    /// Whether job `j` is still waiting (not started).
    pub fn job_waiting(&self, j: u32) -> bool {
        self.job_start[j as usize] < 0 && self.jobs[j as usize].queued <= self.now
    }

    // ---- the report ----------------------------------------------------------------------

    pub(super) fn report(
        mut self,
        name: PolicyName,
        pols: &[Box<dyn Policy>],
        end: Ms,
    ) -> PolicyReport {
        self.advance(end);
        // Close what is still open at the end.
        for i in 0..self.insts.len() {
            let inst = &self.insts[i];
            if inst.state != IState::Gone {
                self.paid_ms += (end - inst.launched) * i64::from(inst.slots);
            }
        }
        for r in &self.runners {
            if r.state == RState::Idle {
                self.idle_ms += end - r.idle_since;
            }
        }
        let never = self.job_start.iter().filter(|&&s| s < 0).count() as u64;
        self.violations.never_run = never;
        if never > 0 && self.violations.examples.len() < MAX_EXAMPLES {
            self.violations.examples.push(format!(
                "{never} job(s) never started before the end (t={})",
                fmt_t(end)
            ));
        }
        let denom = self
            .jobs
            .iter()
            .map(|j| (j.dur + j.boot_hint + self.reg_delay) as f64)
            .sum::<f64>();
        let mut waits: Vec<Ms> = self
            .job_start
            .iter()
            .zip(self.jobs)
            .filter(|(s, _)| **s >= 0)
            .map(|(s, j)| s - j.queued)
            .collect();
        let wait = WaitStats::of(&mut waits);
        let paid = self.paid_ms as f64 / 1000.0;
        let notes = pols.first().map(|p| p.notes()).unwrap_or_default();
        PolicyReport {
            policy: name.to_string(),
            model: notes,
            lower_bound: name == PolicyName::Clairvoyant,
            jobs: self.jobs.len(),
            jobs_run: waits.len(),
            wait,
            paid_runner_s: paid,
            idle_runner_s: self.idle_ms as f64 / 1000.0,
            overhead_ratio: if denom > 0.0 {
                paid * 1000.0 / denom
            } else {
                0.0
            },
            launches: self.launches,
            peak_fleet: self.peak,
            violations: self.violations,
            pareto: false,
            passes: self.passes,
            wall_ms: 0.0,
            series: Series {
                bucket_s: self.series.bucket as f64 / 1000.0,
                points: self.series.points,
            },
        }
    }
}

fn fmt_t(t: Ms) -> String {
    let s = t / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}
