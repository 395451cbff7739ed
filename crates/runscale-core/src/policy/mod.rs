//! The scaling policy: `plan(spec, observation, now) -> Plan`.
//!
//! Pure: no I/O, no clock, no randomness. The daemon, `once`, the simulator, benchmarks and
//! tests all call this one function. Its safety properties (`docs/architecture.md`) are checked by
//! property tests in `tests/policy_properties.rs`; each rule has a unit test in `tests.rs`.
//!
//! Capacity is counted in *slots* (runners): an instance hosts `runners_per_instance` of them.
//! A slot is *idle* when its runner is registered, idle and not draining; *booting* when its
//! instance is younger than `boot_timeout` and the runner has not registered or not connected
//! yet (registered and offline).
//!
//! The rules, in the order they are applied (and in the order `plan` reads):
//! 1. Instances from an old template, or older than `max_lifetime`, are terminated when none of
//!    their runners is busy; otherwise their runners are drained so they take no new job.
//!    First, so it also covers instances still booting.
//! 2. Instances with no registered runner after `boot_timeout` are terminated, and so are
//!    younger ones whose every runner registered and has since left (`departed`: gone from the
//!    listing, or listed offline after it was online — an ephemeral runner after its job, a
//!    runner that exited after its last job). A departed slot never counts as booting. With
//!    `reuse` the latter are candidates for rule 6 instead (not on a stale observation). A
//!    reused instance's boot time runs from its hand-over.
//! 3. Instances whose runners are all offline after `boot_timeout`, or all draining, with none
//!    busy, are terminated.
//! 4. Registered runners that no instance hosts are deregistered, unless busy.
//! 5. If the fleet is above `max` (lowered by a schedule), idle instances are terminated until
//!    it is not, oldest idle first, regardless of `idle_timeout`.
//! 6. If waiting jobs + spare slots exceed idle + booting slots, instances are launched,
//!    capped by `max` (counting the instances this plan terminates: they are still up while
//!    the launches start), `max_booting` and `launches_per_minute`. The spare slots are `min_idle`,
//!    or with `warm` what the demand forecast calls for if that is more
//!    ([`crate::forecast::warm_slots`]).
//!    With `reuse`, instances whose runners all left (younger than `max_age`, below
//!    `max_uses`) are handed fresh runners first, and only what they cannot cover is
//!    launched; those not wanted are terminated as without `reuse`.
//! 7. Otherwise surplus idle instances are terminated, oldest idle first, once idle for
//!    `idle_timeout` and no sooner than `scale_down_delay` after the newest launch.
//!
//! Rules 1–3 judge each instance ([`Verdict`]); what stays is tallied in a [`Fleet`], over
//! which rules 5–7 decide.
//!
//! A *stale* observation (the provider is throttled and returned its last good view) only
//! ever launches: nothing is terminated, drained or deregistered, and what would have been
//! retired still counts against the caps.
//!
//! Every termination removes the instance's runners from the CI system first; the reconciler
//! terminates only after the CI system confirmed every removal.
//!
//! A pool whose runners cannot be attributed to instances ([`PoolSpec::runners_unattributed`]:
//! the instances name their runners themselves) has rules of its own, from counts alone and
//! retiring instances only when no job waits or runs: see `policy/unattributed.rs`.

// Runner names come from the CI system: foldhash is randomly seeded per process.
use foldhash::{HashMap, HashSet};
use smallvec::SmallVec;
use std::time::Duration;

use crate::model::{
    EffectiveLimits, Instance, InstanceState, Observation, PoolSpec, Runner, RunnerState,
    Timestamp, span,
};
use crate::plan::{Action, Limit, Plan, Planned, Reason};

#[cfg(test)]
mod tests;
mod unattributed;

/// The rate-limit window for `launches_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Computes what to do for one pool. See the module docs for the rules.
pub fn plan(spec: &PoolSpec, obs: &Observation, now: Timestamp) -> Plan {
    if spec.runners_unattributed {
        return unattributed::plan(spec, obs, now);
    }
    let limits = spec.limits_at(now);
    let mut due = Due::new(now);
    let mut actions = Vec::new();
    let (mut fleet, hosted) = judge_instances(spec, obs, now, &mut due, &mut actions);
    if obs.stale {
        keep_retiring(obs, &mut fleet, &mut actions);
    }
    deregister_unhosted(obs, &hosted, &mut actions);

    fleet.idle.sort_by_key(|c| c.idle_since);
    // Youngest first: they have the most reuses left.
    fleet
        .reusable
        .sort_by_key(|c| std::cmp::Reverse(c.inst.launched_at));
    shed_over_max(&limits, &mut fleet, &mut actions);

    let waiting = u32::try_from(obs.demand.waiting.len()).unwrap_or(u32::MAX);
    let warm = warm_floor(spec, obs, &limits, &mut due);
    let wanted_free = waiting.saturating_add(limits.min_idle.max(warm));
    let free = fleet.idle_slots + fleet.booting_slots;
    let reason = launch_reason(waiting, free, warm, limits.min_idle);
    let need = (wanted_free.saturating_sub(free)).div_ceil(spec.runners_per_instance.max(1));
    let reused = reuse(need, reason, &mut fleet, &mut actions);
    let (launch, held_back) = if wanted_free > free {
        let up = fleet.up_during(&actions);
        let (launch, held_back) = launch_for_demand(
            spec,
            &limits,
            obs,
            now,
            need.saturating_sub(reused),
            up,
            &mut due,
        );
        if launch > 0 {
            actions.push(Planned {
                action: Action::Launch { count: launch },
                reason,
            });
        }
        (launch, held_back)
    } else {
        scale_in(
            spec,
            obs,
            now,
            free - wanted_free,
            &mut fleet,
            &mut due,
            &mut actions,
        );
        (0, None)
    };

    Plan {
        actions,
        limits,
        desired_slots: wanted_free.saturating_add(fleet.busy_slots),
        desired_instances: fleet.active + launch,
        held_back,
        requeue_after: due.next,
    }
}

/// Why rule 6 launches: for waiting jobs if they outnumber the free slots, else for the spare
/// slots — the forecast's when it asks for more than `min_idle`.
fn launch_reason(waiting: u32, free: u32, warm: u32, min_idle: u32) -> Reason {
    if waiting > free {
        Reason::Demand
    } else if warm > min_idle {
        Reason::Forecast
    } else {
        Reason::MinIdle
    }
}

/// How often a pool keeping warm capacity is planned again while nothing happens: the
/// forecast fades between arrivals, and the spare capacity with it.
const WARM_REFRESH: Duration = Duration::from_secs(30);

/// Rule 6's floor from `warm`: the spare slots the forecast calls for (0 without `warm` or a
/// forecast), at most the pool's slots.
fn warm_floor(spec: &PoolSpec, obs: &Observation, limits: &EffectiveLimits, due: &mut Due) -> u32 {
    let (Some(warm), Some(forecast)) = (&spec.warm, &obs.forecast) else {
        return 0;
    };
    if forecast.arrivals_per_sec > 0.0 {
        due.at(due.now, WARM_REFRESH);
    }
    let cap = limits.max.saturating_mul(spec.runners_per_instance.max(1));
    crate::forecast::warm_slots(warm, forecast, cap)
}

/// Rule 6 with `reuse`: up to `need` of the reusable instances are handed fresh runners; the
/// rest are terminated (their runners left). Returns how many were reused.
fn reuse(need: u32, reason: Reason, fleet: &mut Fleet<'_>, actions: &mut Vec<Planned>) -> u32 {
    let reused = need.min(fleet.reusable.len() as u32);
    for (i, c) in std::mem::take(&mut fleet.reusable).into_iter().enumerate() {
        let runners = c.regs.iter().map(|r| r.id.clone()).collect();
        if (i as u32) < reused {
            actions.push(Planned {
                action: Action::Reuse {
                    instance: c.inst.id.clone(),
                    runners,
                    uses: c.inst.uses().saturating_add(1),
                },
                reason,
            });
        } else {
            fleet.drop_reusable(&c);
            actions.push(terminate(c.inst, &c.regs, Reason::RunnerLeft));
        }
    }
    reused
}

/// Rule 2 with `reuse`: an instance whose runners all left, none listed busy or idle, on a
/// fresh observation, below `max_uses` and younger than `max_age`, waits for rule 6.
fn reuse_candidate(
    spec: &PoolSpec,
    obs: &Observation,
    seen: &Seen<'_>,
    now: Timestamp,
) -> Option<Verdict> {
    let reuse = spec.reuse?;
    let slots = seen.inst.runner_names.len() as u32;
    let fits = !obs.stale
        && seen.left > 0
        && seen.left + seen.leaving == slots
        && !seen.any_busy()
        && seen.idle_runners() == 0
        && seen.inst.uses() < reuse.max_uses
        && elapsed(seen.inst.launched_at, now) < reuse.max_age;
    // A runner that went missing once is confirmed departed by the next view (the memory
    // asks for it soon): the instance waits for it instead of being retired at
    // `boot_timeout` meanwhile.
    let leaving_only = !obs.stale
        && seen.left == 0
        && seen.leaving == slots
        && seen.regs.is_empty()
        && seen.inst.uses() < reuse.max_uses
        && elapsed(seen.inst.launched_at, now) < reuse.max_age;
    if fits && seen.leaving == 0 {
        Some(Verdict::Reusable)
    } else if fits || leaving_only {
        Some(Verdict::Leaving)
    } else {
        None
    }
}

/// Rules 1–3 on every instance: retires what they retire and tallies what stays. Also says
/// which runners an instance (even one stopping) names: `hosted[i]` for runner i.
fn judge_instances<'a>(
    spec: &PoolSpec,
    obs: &'a Observation,
    now: Timestamp,
    due: &mut Due,
    actions: &mut Vec<Planned>,
) -> (Fleet<'a>, Vec<bool>) {
    let mut fleet = Fleet::default();
    let listing = Listing::new(obs);
    let mut hosted = vec![false; obs.runners.len()];
    for inst in &obs.instances {
        let seen = listing.instance(inst, &mut hosted, spec, now);
        if inst.state == InstanceState::Stopping {
            continue;
        }
        fleet.note_launch(inst.launched_at, now);
        let verdict = retire_outdated(spec, &seen, now, due)
            .or_else(|| reuse_candidate(spec, obs, &seen, now))
            .or_else(|| retire_unregistered(&seen))
            .or_else(|| retire_unusable(&seen))
            .unwrap_or(Verdict::Serve);
        fleet.add(verdict, seen, spec, due, actions);
    }
    (fleet, hosted)
}

/// The runners of the observation, by name, and which of them departed (or are leaving).
struct Listing<'a> {
    obs: &'a Observation,
    by_name: HashMap<&'a str, usize>,
    departed: HashSet<&'a str>,
    leaving: HashSet<&'a str>,
}

impl<'a> Listing<'a> {
    fn new(obs: &'a Observation) -> Self {
        Self {
            obs,
            by_name: obs
                .runners
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.as_str(), i))
                .collect(),
            departed: obs.departed.iter().map(String::as_str).collect(),
            leaving: obs.leaving.iter().map(String::as_str).collect(),
        }
    }

    /// One instance as the listing shows it; marks the runners it hosts.
    fn instance(
        &self,
        inst: &'a Instance,
        hosted: &mut [bool],
        spec: &PoolSpec,
        now: Timestamp,
    ) -> Seen<'a> {
        let runners = &self.obs.runners;
        let mut regs = Regs::with_capacity(inst.runner_names.len());
        for n in &inst.runner_names {
            if let Some(&i) = self.by_name.get(n.as_str()) {
                hosted[i] = true;
                regs.push(&runners[i]);
            }
        }
        // Slots whose runner registered and left (gone from the listing, or listed offline
        // after it was online): they will not come up again. The listing has the last word: a
        // departed name listed online again is not left.
        let left = inst
            .runner_names
            .iter()
            .filter(|n| {
                self.departed.contains(n.as_str())
                    && self.by_name.get(n.as_str()).is_none_or(|&i| {
                        runners[i].state == RunnerState::Offline && !runners[i].draining
                    })
            })
            .count() as u32;
        let leaving = if self.leaving.is_empty() {
            0
        } else {
            inst.runner_names
                .iter()
                .filter(|n| {
                    self.leaving.contains(n.as_str()) && !self.by_name.contains_key(n.as_str())
                })
                .count() as u32
        };
        Seen {
            inst,
            regs,
            left,
            leaving,
            past_boot: elapsed(inst.armed_at(), now) >= spec.boot_timeout,
        }
    }
}

/// An instance's registered runners: inline up to two (one slot per instance is the usual
/// shape), so judging an instance allocates nothing.
type Regs<'a> = SmallVec<[&'a Runner; 2]>;

/// One instance and its registered runners.
struct Seen<'a> {
    inst: &'a Instance,
    regs: Regs<'a>,
    /// Slots whose runner departed.
    left: u32,
    /// Slots whose runner went missing once and may be departing (not listed).
    leaving: u32,
    past_boot: bool,
}

impl Seen<'_> {
    fn all_left(&self) -> bool {
        self.left > 0 && self.left as usize == self.inst.runner_names.len()
    }

    fn any_busy(&self) -> bool {
        self.regs.iter().any(|r| r.state == RunnerState::Busy)
    }

    fn count(&self, state: RunnerState) -> u32 {
        self.regs.iter().filter(|r| r.state == state).count() as u32
    }

    /// When its runners last finished a job (or it got them, if later or never busy).
    fn idle_since(&self) -> Timestamp {
        let launched = self.inst.armed_at();
        self.regs
            .iter()
            .map(|r| r.last_busy.unwrap_or(launched).max(launched))
            .max()
            .unwrap_or(launched)
    }

    fn idle_runners(&self) -> u32 {
        self.regs
            .iter()
            .filter(|r| r.state == RunnerState::Idle && !r.draining)
            .count() as u32
    }
}

/// What rules 1–3 decide for one instance.
enum Verdict {
    /// Retired now.
    Terminate(Reason),
    /// Retiring: busy, so its runners are drained and it stays until they are done.
    Drain(Reason),
    /// No runner registered yet, within `boot_timeout`.
    Booting,
    /// Its runners all left; rule 6 reuses or terminates it.
    Reusable,
    /// Its runners all left or went missing once (reuse pools): kept until the next view
    /// confirms the departures; no capacity meanwhile.
    Leaving,
    /// Stays, serving or coming up.
    Serve,
}

/// Rule 1: an old template or past `max_lifetime`: drained while busy, else terminated.
fn retire_outdated(
    spec: &PoolSpec,
    seen: &Seen<'_>,
    now: Timestamp,
    due: &mut Due,
) -> Option<Verdict> {
    let reason = outdated(spec, seen.inst, now, due)?;
    Some(if seen.any_busy() {
        Verdict::Drain(reason)
    } else {
        Verdict::Terminate(reason)
    })
}

/// Rule 1's test: why an instance is to be retired for its template or its age, if it is (and
/// when its lifetime runs out, if that is to come).
fn outdated(spec: &PoolSpec, inst: &Instance, now: Timestamp, due: &mut Due) -> Option<Reason> {
    if inst.template_hash != spec.template_hash {
        return Some(Reason::TemplateChanged);
    }
    match spec.max_lifetime {
        Some(life) if elapsed(inst.launched_at, now) >= life => Some(Reason::MaxLifetime),
        Some(life) => {
            due.at(inst.launched_at, life);
            None
        }
        None => None,
    }
}

/// Rule 2: no runner registered after `boot_timeout`, or every runner registered and left.
fn retire_unregistered(seen: &Seen<'_>) -> Option<Verdict> {
    if !seen.regs.is_empty() {
        return None;
    }
    Some(if seen.past_boot {
        Verdict::Terminate(Reason::BootTimeout)
    } else if seen.all_left() {
        Verdict::Terminate(Reason::RunnerLeft)
    } else {
        Verdict::Booting
    })
}

/// Rule 3: unusable with nothing running: every runner draining, or offline after
/// `boot_timeout` (or departed).
fn retire_unusable(seen: &Seen<'_>) -> Option<Verdict> {
    if seen.any_busy() || seen.idle_runners() > 0 {
        return None;
    }
    let reason = if seen.regs.iter().all(|r| r.draining) {
        Reason::Drained
    } else if seen.past_boot {
        Reason::RunnerOffline
    } else if seen.all_left() {
        Reason::RunnerLeft
    } else {
        return None;
    };
    Some(Verdict::Terminate(reason))
}

/// A stale observation (the CI side is an old copy) may only add capacity: whatever rules 1–3
/// would have retired stays and counts against the caps, nothing is drained, and nothing is
/// shed or scaled in.
fn keep_retiring(obs: &Observation, fleet: &mut Fleet<'_>, actions: &mut Vec<Planned>) {
    for a in actions.drain(..) {
        if let Action::Terminate { instance, .. } = &a.action
            && let Some(i) = obs.instances.iter().find(|i| i.id == *instance)
        {
            fleet.active += 1;
            fleet.booting += u32::from(i.state == InstanceState::Booting);
        }
    }
    fleet.idle.clear();
}

/// Rule 4: registered runners that no instance hosts, unless busy (not on a stale view).
fn deregister_unhosted(obs: &Observation, hosted: &[bool], actions: &mut Vec<Planned>) {
    if obs.stale {
        return;
    }
    for (r, _) in obs
        .runners
        .iter()
        .zip(hosted)
        .filter(|(_, hosted)| !**hosted)
    {
        if r.state != RunnerState::Busy {
            actions.push(Planned {
                action: Action::Deregister {
                    runner: r.id.clone(),
                    name: r.name.clone(),
                },
                reason: Reason::NoInstance,
            });
        }
    }
}

/// Rule 5: above `max` (lowered by a schedule), shed idle instances, oldest idle first,
/// regardless of `idle_timeout`. Before free capacity is counted, which they no longer add.
fn shed_over_max(limits: &EffectiveLimits, fleet: &mut Fleet<'_>, actions: &mut Vec<Planned>) {
    while fleet.active > limits.max
        && let Some(c) = fleet.reusable.pop()
    {
        fleet.drop_reusable(&c);
        actions.push(terminate(c.inst, &c.regs, Reason::OverMax));
    }
    if fleet.active <= limits.max {
        return;
    }
    let excess = ((fleet.active - limits.max) as usize).min(fleet.idle.len());
    for c in fleet.idle.drain(..excess) {
        fleet.active -= 1;
        fleet.idle_slots -= c.idle_slots;
        fleet.booting_slots -= c.booting_slots;
        fleet.booting -= u32::from(c.is_booting);
        actions.push(terminate(c.inst, &c.regs, Reason::OverMax));
    }
}

/// Rule 7: terminate `surplus` slots' worth of idle instances, oldest idle first, each once
/// idle for `idle_timeout`, and none sooner than `scale_down_delay` after the newest launch.
fn scale_in(
    spec: &PoolSpec,
    obs: &Observation,
    now: Timestamp,
    mut surplus: u32,
    fleet: &mut Fleet<'_>,
    due: &mut Due,
    actions: &mut Vec<Planned>,
) {
    let calm_from = fleet.newest_launch.map(|t| add(t, spec.scale_down_delay));
    let calm = !obs.stale && calm_from.is_none_or(|t| t <= now);
    if !calm && let Some(t) = calm_from {
        due.until(t);
    }
    for c in fleet.idle.drain(..) {
        let ready = span(c.idle_since, now)
            .to_std()
            .is_ok_and(|idle| idle >= spec.idle_timeout);
        // Terminating removes the instance's idle slots and any still booting.
        let capacity = c.idle_slots + c.booting_slots;
        if calm && surplus > 0 && capacity <= surplus && ready {
            surplus -= capacity;
            fleet.active -= 1;
            actions.push(terminate(c.inst, &c.regs, Reason::IdleTimeout));
        } else if surplus > 0 && !ready {
            due.at(c.idle_since, spec.idle_timeout);
        }
    }
}

/// The instances that stay, tallied for rules 5–7.
#[derive(Default)]
struct Fleet<'a> {
    /// Booting and running instances that stay.
    active: u32,
    /// Of which booting (state, or a slot's runner not registered or connected yet).
    booting: u32,
    booting_slots: u32,
    idle_slots: u32,
    busy_slots: u32,
    newest_launch: Option<Timestamp>,
    /// Launched within the rate window.
    launched_in_window: u32,
    /// Scale-in candidates: nothing busy, at least one idle runner, the rest offline.
    idle: Vec<IdleInstance<'a>>,
    /// Instances whose runners all left, for rule 6 to reuse (counted in `active`).
    reusable: Vec<Retiring<'a>>,
}

/// An instance and its listed runners, on its way to reuse or termination.
struct Retiring<'a> {
    inst: &'a Instance,
    regs: Regs<'a>,
}

/// The instances that count against rule 6's caps.
#[derive(Clone, Copy)]
struct Up {
    /// Booting and running instances that stay.
    active: u32,
    /// Of which booting.
    booting: u32,
    /// Launched within the rate window.
    launched_in_window: u32,
}

impl<'a> Fleet<'a> {
    fn up(&self) -> Up {
        Up {
            active: self.active,
            booting: self.booting,
            launched_in_window: self.launched_in_window,
        }
    }

    /// What counts against rule 6's caps while the plan is carried out: instances it
    /// terminates are still up while its launches start (the reconciler carries both out at
    /// once), so they count against `max` until they are gone.
    fn up_during(&self, actions: &[Planned]) -> Up {
        let terminating = actions
            .iter()
            .filter(|a| matches!(a.action, Action::Terminate { .. }))
            .count() as u32;
        Up {
            active: self.active + terminating,
            ..self.up()
        }
    }

    /// Takes a reusable instance that is terminated out of the tally.
    fn drop_reusable(&mut self, c: &Retiring<'_>) {
        self.active -= 1;
        self.booting -= u32::from(c.inst.state == InstanceState::Booting);
    }

    fn note_launch(&mut self, launched_at: Timestamp, now: Timestamp) {
        self.newest_launch = self.newest_launch.max(Some(launched_at));
        if elapsed(launched_at, now) < RATE_WINDOW {
            self.launched_in_window += 1;
        }
    }

    /// Carries out rules 1–3's verdict on one instance and counts what stays.
    fn add(
        &mut self,
        verdict: Verdict,
        seen: Seen<'a>,
        spec: &PoolSpec,
        due: &mut Due,
        actions: &mut Vec<Planned>,
    ) {
        match verdict {
            Verdict::Terminate(reason) => actions.push(terminate(seen.inst, &seen.regs, reason)),
            Verdict::Drain(reason) => {
                self.active += 1;
                self.booting += u32::from(seen.inst.state == InstanceState::Booting);
                self.busy_slots += seen.count(RunnerState::Busy);
                actions.extend(seen.regs.iter().filter(|r| !r.draining).map(|r| Planned {
                    action: Action::Drain {
                        runner: r.id.clone(),
                        name: r.name.clone(),
                    },
                    reason,
                }));
            }
            Verdict::Booting => {
                self.active += 1;
                self.booting += 1;
                self.booting_slots += spec.runners_per_instance.max(1).saturating_sub(seen.left);
                due.at(seen.inst.armed_at(), spec.boot_timeout);
            }
            Verdict::Leaving => {
                self.active += 1;
                self.booting += u32::from(seen.inst.state == InstanceState::Booting);
            }
            Verdict::Reusable => {
                self.active += 1;
                self.booting += u32::from(seen.inst.state == InstanceState::Booting);
                self.reusable.push(Retiring {
                    inst: seen.inst,
                    regs: seen.regs,
                });
            }
            Verdict::Serve => self.serve(seen, spec, due),
        }
    }

    /// An instance that stays with registered runners: its slots, idle, busy or coming up.
    fn serve(&mut self, seen: Seen<'a>, spec: &PoolSpec, due: &mut Due) {
        let inst = seen.inst;
        self.active += 1;
        // Slots still coming up: no runner yet, or registered but not connected yet (GitHub
        // lists a JIT runner as offline from the moment its config is generated).
        let online = seen
            .regs
            .iter()
            .filter(|r| r.state != RunnerState::Offline || r.draining)
            .count() as u32;
        let missing = (spec.runners_per_instance.max(1))
            .saturating_sub(online)
            .saturating_sub(seen.left);
        let is_booting = inst.state == InstanceState::Booting || (missing > 0 && !seen.past_boot);
        self.booting += u32::from(is_booting);
        let booting_slots = if seen.past_boot { 0 } else { missing };
        self.booting_slots += booting_slots;
        if booting_slots > 0 {
            due.at(inst.armed_at(), spec.boot_timeout);
        }
        self.busy_slots += seen.count(RunnerState::Busy);
        let idle_slots = seen.idle_runners();
        self.idle_slots += idle_slots;
        if seen.any_busy() || idle_slots == 0 {
            return;
        }
        let idle_since = seen.idle_since();
        self.idle.push(IdleInstance {
            inst,
            regs: seen.regs,
            idle_slots,
            booting_slots,
            is_booting,
            idle_since,
        });
    }
}

/// Rule 6: how many of the `need` instances unmet demand asks for may launch (`max`,
/// `max_booting`, the launch rate), and how many were held back by which cap; when the rate
/// holds launches back, the pass comes back as the oldest launch in the window leaves it.
fn launch_for_demand(
    spec: &PoolSpec,
    limits: &EffectiveLimits,
    obs: &Observation,
    now: Timestamp,
    need: u32,
    up: Up,
    due: &mut Due,
) -> (u32, Option<(u32, Limit)>) {
    let recent = (obs
        .recent_launches
        .iter()
        .filter(|t| elapsed(**t, now) < RATE_WINDOW)
        .count() as u32)
        .max(up.launched_in_window);
    let mut caps = vec![
        (limits.max.saturating_sub(up.active), Limit::Max),
        (
            spec.max_booting.saturating_sub(up.booting),
            Limit::MaxBooting,
        ),
    ];
    if spec.launches_per_minute > 0 {
        caps.push((
            spec.launches_per_minute.saturating_sub(recent),
            Limit::LaunchRate,
        ));
    }
    let mut launch = need;
    let mut held_back = None;
    for (room, limit) in caps {
        if room < launch {
            launch = room;
            held_back = Some((need - room, limit));
        }
    }
    if let Some((_, Limit::LaunchRate)) = held_back
        && let Some(t) = oldest_in_rate_window(obs, now)
    {
        due.at(t, RATE_WINDOW);
    }
    (launch, held_back)
}

/// The oldest launch within the rate window: the rate allows one more when it leaves.
fn oldest_in_rate_window(obs: &Observation, now: Timestamp) -> Option<Timestamp> {
    obs.recent_launches
        .iter()
        .copied()
        .chain(obs.instances.iter().map(|i| i.launched_at))
        .filter(|t| elapsed(*t, now) < RATE_WINDOW)
        .min()
}

struct IdleInstance<'a> {
    inst: &'a Instance,
    regs: Regs<'a>,
    idle_slots: u32,
    booting_slots: u32,
    is_booting: bool,
    idle_since: Timestamp,
}

fn terminate(inst: &Instance, regs: &[&Runner], reason: Reason) -> Planned {
    Planned {
        action: Action::Terminate {
            instance: inst.id.clone(),
            runners: regs.iter().map(|r| r.id.clone()).collect(),
        },
        reason,
    }
}

/// Time from `since` to `now`, zero if `since` is in the future (clock skew between hosts).
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    span(since, now).to_std().unwrap_or(Duration::ZERO)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(Timestamp::MAX_UTC)
}

/// Tracks the soonest future instant at which the plan could change without a trigger.
struct Due {
    now: Timestamp,
    next: Option<Duration>,
}

impl Due {
    fn new(now: Timestamp) -> Self {
        Self { now, next: None }
    }

    /// Plans again `after` from `since`, if that is to come.
    fn at(&mut self, since: Timestamp, after: Duration) {
        let gone = span(since, self.now);
        let d = match gone.to_std() {
            Ok(gone) if gone >= after => return,
            Ok(gone) => after - gone,
            // `since` is ahead of now (clock skew): `after` from then.
            Err(_) => after.saturating_add(span(self.now, since).to_std().unwrap_or_default()),
        };
        self.next = Some(self.next.map_or(d, |n| n.min(d)));
    }

    fn until(&mut self, t: Timestamp) {
        if t <= self.now {
            return;
        }
        let d = elapsed(self.now, t);
        self.next = Some(self.next.map_or(d, |n| n.min(d)));
    }
}
