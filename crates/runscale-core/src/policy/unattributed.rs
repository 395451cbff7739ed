//! The policy for pools whose runners cannot be attributed to instances
//! ([`PoolSpec::runners_unattributed`]): the instances start and name their runners themselves
//! (CircleCI's simple-Lambda example names them `$RUNNER_NAME-<time>`, or gives them all one
//! name), so no runner can be tied to an instance and no instance can be shown idle by its
//! runner.
//!
//! What is known is the pool's counts: jobs waiting, jobs running, live instances. The rules:
//!
//! 1. **Capacity** is the seed's formula: `running` of the live instances' slots may be busy
//!    (any of them: the policy cannot tell which), the rest are free (booting or idle). Unmet
//!    demand (waiting + `min_idle` beyond the free slots) is launched, capped by `max`,
//!    `max_booting` (an instance younger than `boot_timeout` counts as booting: its runner may
//!    not have connected yet) and `launches_per_minute`. The plan's `desired_instances` is the
//!    seed's `min(ceil((running + waiting + min_idle) / slots), max)`: instances beyond it are
//!    surplus, which a backend whose cloud keeps a target size may stop replacing
//!    ([`Backend::lower_target`](crate::Backend::lower_target)) while they end by themselves.
//! 2. **Retirement only when the pool is quiet**: an instance is terminated only when the
//!    observation is fresh and no job waits and none runs. While one job runs, any instance
//!    may be the one running it; while one waits, any idle runner may be about to take it. So
//!    nothing is terminated, drained or deregistered then, whatever the timeouts say — and a
//!    runner that never shows up under an expected name (there is none) never makes an
//!    instance look abandoned. When quiet: instances from an old template or past
//!    `max_lifetime` go first, then any above `max`, then surplus above `min_idle` once the
//!    instance has been idle for `idle_timeout` (since its launch and since the last job any
//!    runner of the pool was seen with: any of them may have run here) and no sooner than `scale_down_delay` after the
//!    newest launch, oldest first. The reconciler confirms quiet with a fresh read just before
//!    each termination ([`Provider::confirm_quiet`](crate::Provider::confirm_quiet)).
//! 3. Runners are never deregistered: any of them may run on one of the pool's instances.

use crate::model::{Instance, InstanceState, Observation, PoolSpec, Timestamp};
use crate::plan::{Action, Plan, Planned, Reason};

use super::{Due, RATE_WINDOW, Up, add, elapsed, launch_for_demand, outdated};

/// Computes the plan of a pool whose runners cannot be attributed. See the module docs.
pub(super) fn plan(spec: &PoolSpec, obs: &Observation, now: Timestamp) -> Plan {
    let limits = spec.limits_at(now);
    let k = spec.runners_per_instance.max(1);
    let mut due = Due::new(now);
    let mut actions = Vec::new();

    let mut live: Vec<&Instance> = obs
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Stopping)
        .collect();
    live.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
    let running = obs.demand.running;
    let waiting = u32::try_from(obs.demand.waiting.len()).unwrap_or(u32::MAX);
    let wanted_free = waiting.saturating_add(limits.min_idle);
    let quiet = !obs.stale && running == 0 && waiting == 0;
    let newest_launch = live.iter().map(|i| i.launched_at).max();

    // Rule 2, first part: when quiet, retire old templates and lifetimes, then shed above max.
    let mut kept: Vec<&Instance> = Vec::with_capacity(live.len());
    for inst in live {
        match outdated(spec, inst, now, &mut due) {
            Some(reason) if quiet => actions.push(retire(inst, reason)),
            _ => kept.push(inst),
        }
    }
    if quiet && kept.len() as u64 > u64::from(limits.max) {
        let excess = kept.len() - limits.max as usize;
        for inst in kept.drain(..excess) {
            actions.push(retire(inst, Reason::OverMax));
        }
    }

    // Rule 1: capacity from counts.
    let n = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    let slots = n.saturating_mul(k);
    let free = slots - running.min(slots);
    let booting = kept
        .iter()
        .filter(|i| {
            i.state == InstanceState::Booting || elapsed(i.launched_at, now) < spec.boot_timeout
        })
        .count() as u32;
    let mut held_back = None;
    if wanted_free > free {
        let need = (wanted_free - free).div_ceil(k);
        let reason = if waiting > free {
            Reason::Demand
        } else {
            Reason::MinIdle
        };
        let up = Up {
            active: n,
            booting,
            launched_in_window: kept
                .iter()
                .filter(|i| elapsed(i.launched_at, now) < RATE_WINDOW)
                .count() as u32,
        };
        let launch;
        (launch, held_back) = launch_for_demand(spec, &limits, obs, now, need, up, &mut due);
        if launch > 0 {
            actions.push(Planned {
                action: Action::Launch { count: launch },
                reason,
            });
        }
    } else if quiet {
        // Rule 2, last part: surplus above min_idle, once the pool has been idle long enough.
        let last_job = obs.runners.iter().filter_map(|r| r.last_busy).max();
        let calm_from = newest_launch.map(|t| add(t, spec.scale_down_delay));
        let calm = calm_from.is_none_or(|t| t <= now);
        let mut surplus = free - wanted_free;
        for inst in kept.iter() {
            if surplus < k {
                break;
            }
            // Any runner's last job may have run here.
            let idle_since = last_job.map_or(inst.launched_at, |t| t.max(inst.launched_at));
            let ready = add(idle_since, spec.idle_timeout);
            if calm && ready <= now {
                surplus -= k;
                actions.push(retire(inst, Reason::IdleTimeout));
            } else {
                due.until(ready);
                if let Some(t) = calm_from {
                    due.until(t);
                }
            }
        }
    }

    let wanted_slots = running.saturating_add(wanted_free);
    Plan {
        actions,
        limits,
        desired_slots: wanted_slots,
        desired_instances: wanted_slots.div_ceil(k).min(limits.max),
        held_back,
        requeue_after: due.next,
    }
}

/// A termination of an instance with no runner to remove first: none can be named.
fn retire(inst: &Instance, reason: Reason) -> Planned {
    Planned {
        action: Action::Terminate {
            instance: inst.id.clone(),
            runners: Vec::new(),
        },
        reason,
    }
}
