//! actions-runner-controller, scale-set mode (`gha-runner-scale-set`), from the reference
//! notes (github.md §2).
//!
//! - Demand is pushed: the listener long-polls the Actions service and gets a message when a
//!   job is queued, started or completed (modelled as a wake-up after the webhook latency),
//!   and re-applies the last statistics on an empty poll (every 50 s).
//! - `target = min(minRunners + totalAssignedJobs, maxRunners)`, where assigned = waiting +
//!   running; `minRunners` is the pool's `min_idle`, `maxRunners` its `max`.
//! - Runners are always ephemeral, one per pod (`runners_per_instance` is ignored). Scale-up
//!   creates pods; scale-down deletes pending pods first, then idle ones, and skips busy ones
//!   (the service refuses to remove them, `JobStillRunningException`).
//! - Left out: the patch-ID race guard (actions are instantaneous here), job re-assignment.

use runscale_core::Timestamp;

use super::{Policy, SEC, Setup, webhook_latency};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::RState;
use crate::engine::{Ms, World};

/// An empty long poll returns after about this long.
const EMPTY_POLL: Ms = 50 * SEC;

pub(crate) struct Arc {
    min: u32,
    max: u32,
}

impl Arc {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            min: pool.spec.min_idle,
            max: pool.spec.max,
        }
    }
}

impl Policy for Arc {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.slots = 1;
        s.life.ephemeral = true;
        s.life.exit_when_empty = true;
        let lat = webhook_latency(params);
        s.hook_queued = Some(lat);
        s.hook_completed = Some(lat);
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let pr = &w.pools[p];
        let assigned = pr.waiting() + pr.busy;
        let target = (self.min + assigned).min(self.max);
        let current = pr.live.len() as u32;
        if target > current {
            w.launch(p, target - current, None);
        } else if target < current {
            // Pending (not yet online) first, then idle; never busy.
            let mut cands: Vec<(u8, u32)> = w.pools[p]
                .live
                .iter()
                .filter_map(|&i| {
                    let r = w.runners_of(i).start;
                    match w.runners[r as usize].state {
                        RState::Offline => Some((0, i)),
                        RState::Idle => Some((1, i)),
                        RState::Busy | RState::Gone => None,
                    }
                })
                .collect();
            cands.sort_unstable();
            let mut excess = current - target;
            for (_, i) in cands {
                if excess == 0 {
                    break;
                }
                if w.terminate(i, false) {
                    excess -= 1;
                }
            }
        }
        Some(w.now() + EMPTY_POLL)
    }

    fn notes(&self) -> String {
        "ARC scale set: target=min(min+waiting+running,max) on every job message (long poll), ephemeral pods, scale-down skips busy".to_owned()
    }
}
