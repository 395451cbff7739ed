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
//! The rules, in the order they are applied:
//! 1. Instances with no registered runner after `boot_timeout` are terminated, and so are
//!    younger ones whose every runner registered and has since left (`departed`: gone from the
//!    listing, or listed offline after it was online — an ephemeral runner after its job, a
//!    runner that exited after its last job). A departed slot never counts as booting.
//! 2. Instances from an old template, or older than `max_lifetime`, are terminated when none of
//!    their runners is busy; otherwise their runners are drained so they take no new job.
//! 3. Instances whose runners are all offline after `boot_timeout`, or all draining, with none
//!    busy, are terminated.
//! 4. Registered runners that no instance hosts are deregistered, unless busy.
//! 5. If waiting jobs + `min_idle` exceed idle + booting slots, instances are launched, capped
//!    by `max`, `max_booting` and `launches_per_minute`.
//! 6. Otherwise surplus idle instances are terminated, oldest idle first, once idle for
//!    `idle_timeout` and no sooner than `scale_down_delay` after the newest launch.
//! 7. If the fleet is above `max` (lowered by a schedule), idle instances are terminated until
//!    it is not, regardless of `idle_timeout`.
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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::model::{
    EffectiveLimits, Instance, InstanceState, Observation, PoolSpec, Runner, RunnerState, Timestamp,
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
    let slots_per_instance = spec.runners_per_instance.max(1);
    let mut due = Due::new(now);
    let mut actions = Vec::new();

    // Runner name → index; `hosted[i]` is set when an instance names runner i.
    let by_name: HashMap<&str, usize> = obs
        .runners
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let mut hosted = vec![false; obs.runners.len()];
    let departed: HashSet<&str> = obs.departed.iter().map(String::as_str).collect();

    let mut active = 0u32; // booting + running instances that stay
    let mut booting = 0u32; // of which booting (state, or no runner registered yet)
    let mut booting_slots = 0u32;
    let mut idle_slots = 0u32;
    let mut busy_slots = 0u32;
    let mut newest_launch: Option<Timestamp> = None;
    let mut launched_in_window = 0u32;
    let mut idle_candidates: Vec<IdleInstance<'_>> = Vec::new();

    for inst in &obs.instances {
        let mut regs: Vec<&Runner> = Vec::with_capacity(inst.runner_names.len());
        for n in &inst.runner_names {
            if let Some(&i) = by_name.get(n.as_str()) {
                hosted[i] = true;
                regs.push(&obs.runners[i]);
            }
        }
        if inst.state == InstanceState::Stopping {
            continue;
        }
        newest_launch = newest_launch.max(Some(inst.launched_at));
        if elapsed(inst.launched_at, now) < RATE_WINDOW {
            launched_in_window += 1;
        }
        let past_boot = elapsed(inst.launched_at, now) >= spec.boot_timeout;
        // Slots whose runner registered and left (gone from the listing, or listed offline
        // after it was online): they will not come up again. The listing has the last word: a
        // departed name listed online again is not left.
        let left = inst
            .runner_names
            .iter()
            .filter(|n| {
                departed.contains(n.as_str())
                    && by_name.get(n.as_str()).is_none_or(|&i| {
                        obs.runners[i].state == RunnerState::Offline && !obs.runners[i].draining
                    })
            })
            .count() as u32;
        let all_left = left > 0 && left as usize == inst.runner_names.len();
        let any_busy = regs.iter().any(|r| r.state == RunnerState::Busy);

        // Rule 2 (first, so it also covers instances still booting): old template or too old.
        if let Some(reason) = outdated(spec, inst, now, &mut due) {
            if any_busy {
                active += 1;
                booting += u32::from(inst.state == InstanceState::Booting);
                busy_slots += count(&regs, RunnerState::Busy);
                for r in regs.iter().filter(|r| !r.draining) {
                    actions.push(Planned {
                        action: Action::Drain {
                            runner: r.id.clone(),
                            name: r.name.clone(),
                        },
                        reason,
                    });
                }
            } else {
                actions.push(terminate(inst, &regs, reason));
            }
            continue;
        }

        // Rule 1: nothing registered after boot_timeout.
        if regs.is_empty() {
            if past_boot {
                actions.push(terminate(inst, &regs, Reason::BootTimeout));
            } else if all_left {
                actions.push(terminate(inst, &regs, Reason::RunnerLeft));
            } else {
                active += 1;
                booting += 1;
                booting_slots += slots_per_instance.saturating_sub(left);
                due.at(inst.launched_at, spec.boot_timeout);
            }
            continue;
        }

        // Rule 3: unusable with nothing running: every runner offline or draining.
        let usable = regs
            .iter()
            .any(|r| r.state == RunnerState::Idle && !r.draining);
        if !any_busy && !usable {
            if regs.iter().all(|r| r.draining) {
                actions.push(terminate(inst, &regs, Reason::Drained));
                continue;
            }
            if past_boot {
                actions.push(terminate(inst, &regs, Reason::RunnerOffline));
                continue;
            }
            if all_left {
                actions.push(terminate(inst, &regs, Reason::RunnerLeft));
                continue;
            }
        }

        active += 1;
        // Slots still coming up: no runner yet, or registered but not connected yet (GitHub
        // lists a JIT runner as offline from the moment its config is generated).
        let online = regs
            .iter()
            .filter(|r| r.state != RunnerState::Offline || r.draining)
            .count() as u32;
        let missing = slots_per_instance
            .saturating_sub(online)
            .saturating_sub(left);
        let is_booting = inst.state == InstanceState::Booting || (missing > 0 && !past_boot);
        if is_booting {
            booting += 1;
        }
        let booting_here = if past_boot { 0 } else { missing };
        booting_slots += booting_here;
        if booting_here > 0 {
            due.at(inst.launched_at, spec.boot_timeout);
        }
        busy_slots += count(&regs, RunnerState::Busy);
        let idle_here = regs
            .iter()
            .filter(|r| r.state == RunnerState::Idle && !r.draining)
            .count() as u32;
        idle_slots += idle_here;
        // A scale-in candidate: nothing busy, at least one idle runner, the rest offline.
        if !any_busy && idle_here > 0 {
            let idle_since = regs
                .iter()
                .map(|r| {
                    r.last_busy
                        .unwrap_or(inst.launched_at)
                        .max(inst.launched_at)
                })
                .max()
                .unwrap_or(inst.launched_at);
            idle_candidates.push(IdleInstance {
                inst,
                regs,
                idle_slots: idle_here,
                booting_slots: booting_here,
                is_booting,
                idle_since,
            });
        }
    }

    // A stale observation (provider throttled) may only add capacity: whatever would have
    // been retired stays, and counts against the caps.
    if obs.stale {
        for a in actions.drain(..) {
            if let Action::Terminate { instance, .. } = &a.action
                && let Some(i) = obs.instances.iter().find(|i| i.id == *instance)
            {
                active += 1;
                booting += u32::from(i.state == InstanceState::Booting);
            }
        }
        idle_candidates.clear();
    }

    // Rule 4: runners that no instance hosts.
    for (r, _) in obs
        .runners
        .iter()
        .zip(&hosted)
        .filter(|(_, hosted)| !obs.stale && !**hosted)
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

    // Rule 7: above max (lowered by a schedule), shed idle instances, oldest idle first,
    // regardless of idle_timeout. Done before counting free capacity, which they no longer add.
    idle_candidates.sort_by_key(|c| c.idle_since);
    if active > limits.max {
        let excess = (active - limits.max) as usize;
        for c in idle_candidates.drain(..excess.min(idle_candidates.len())) {
            active -= 1;
            idle_slots -= c.idle_slots;
            booting_slots -= c.booting_slots;
            booting -= u32::from(c.is_booting);
            actions.push(terminate(c.inst, &c.regs, Reason::OverMax));
        }
    }

    let waiting = u32::try_from(obs.demand.waiting.len()).unwrap_or(u32::MAX);
    let wanted_free = waiting.saturating_add(limits.min_idle);
    let free = idle_slots + booting_slots;
    let mut held_back = None;
    let mut launch = 0u32;

    if wanted_free > free {
        // Rule 5: launch for unmet demand, up to the caps.
        let need = (wanted_free - free).div_ceil(slots_per_instance);
        let reason = if waiting > free {
            Reason::Demand
        } else {
            Reason::MinIdle
        };
        let up = Fleet {
            active,
            booting,
            launched_in_window,
        };
        (launch, held_back) = capped(spec, &limits, obs, now, need, up, &mut due);
        if launch > 0 {
            actions.push(Planned {
                action: Action::Launch { count: launch },
                reason,
            });
        }
    } else {
        // Rule 6: surplus idle capacity, oldest idle first.
        let mut surplus = free - wanted_free;
        let calm_from = newest_launch.map(|t| add(t, spec.scale_down_delay));
        let calm = !obs.stale && calm_from.is_none_or(|t| t <= now);
        if !calm && let Some(t) = calm_from {
            due.until(t);
        }
        for c in idle_candidates {
            let ready = add(c.idle_since, spec.idle_timeout);
            // Terminating removes the instance's idle slots and any still booting.
            let capacity = c.idle_slots + c.booting_slots;
            if calm && surplus > 0 && capacity <= surplus && ready <= now {
                surplus -= capacity;
                active -= 1;
                actions.push(terminate(c.inst, &c.regs, Reason::IdleTimeout));
            } else if surplus > 0 && ready > now {
                due.until(ready);
            }
        }
    }

    let desired_slots = wanted_free.saturating_add(busy_slots);
    Plan {
        actions,
        limits,
        desired_slots,
        desired_instances: active + launch,
        held_back,
        requeue_after: due.next,
    }
}

/// Rule 2's test: why an instance is to be retired for its template or its age, if it is (and
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

/// The instances that count against rule 5's caps.
#[derive(Clone, Copy)]
struct Fleet {
    /// Booting and running instances that stay.
    active: u32,
    /// Of which booting.
    booting: u32,
    /// Launched within the rate window.
    launched_in_window: u32,
}

/// Rule 5's caps: how many of `need` instances may launch (`max`, `max_booting`, the launch
/// rate), and how many were held back by which cap; when the rate holds launches back, the
/// pass comes back as the oldest launch in the window leaves it.
fn capped(
    spec: &PoolSpec,
    limits: &EffectiveLimits,
    obs: &Observation,
    now: Timestamp,
    need: u32,
    up: Fleet,
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
        && let Some(t) = obs
            .recent_launches
            .iter()
            .copied()
            .chain(obs.instances.iter().map(|i| i.launched_at))
            .filter(|t| elapsed(*t, now) < RATE_WINDOW)
            .min()
    {
        due.at(t, RATE_WINDOW);
    }
    (launch, held_back)
}

struct IdleInstance<'a> {
    inst: &'a Instance,
    regs: Vec<&'a Runner>,
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

fn count(regs: &[&Runner], state: RunnerState) -> u32 {
    regs.iter().filter(|r| r.state == state).count() as u32
}

/// Time from `since` to `now`, zero if `since` is in the future (clock skew between hosts).
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now - since).to_std().unwrap_or(Duration::ZERO)
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

    fn at(&mut self, since: Timestamp, after: Duration) {
        self.until(add(since, after));
    }

    fn until(&mut self, t: Timestamp) {
        if t <= self.now {
            return;
        }
        let d = elapsed(self.now, t);
        self.next = Some(self.next.map_or(d, |n| n.min(d)));
    }
}
