//! GitLab docker-autoscaler / instance executor (taskscaler + fleeting), from the reference
//! notes (gitlab-buildkite-circleci.md §2.2; taskscaler's source is not public, so this is the
//! documented algorithm).
//!
//! - The runner manager polls GitLab for jobs every `check_interval` (3 s); each poll is a
//!   pass.
//! - Capacity is counted in slots (`capacity_per_instance` = the pool's runners per
//!   instance). Idle target = `idle_count` (the pool's `min_idle`; `scale_factor` 0).
//!   Instances to create = ceil((waiting + idle target − free slots) / capacity), free = idle
//!   + still booting slots, capped by `max_instances` (the pool's `max`).
//! - Removal: an instance with no job running, idle longer than `idle_time` (the pool's
//!   `idle_timeout`) since its last job ended (or since it was provisioned), is removed
//!   unless needed for the idle target; oldest idle first.
//! - Ephemeral pools: `max_use_count` = slots, so a used-up instance is deleted.
//! - Left out: version-specific bugs listed in the notes (idle_count=0 with capacity > 1,
//!   churn), `scale_throttle`, preemptive-mode job locking (it does not change when capacity
//!   exists), heartbeats.

use runscale_core::Timestamp;

use super::{Policy, SEC, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::ms;
use crate::engine::{Ms, World};

const CHECK_INTERVAL: Ms = 3 * SEC;

pub(crate) struct Taskscaler {
    idle_count: u32,
    idle_time: Ms,
    max: u32,
}

impl Taskscaler {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            idle_count: pool.spec.min_idle,
            idle_time: ms(pool.spec.idle_timeout),
            max: pool.spec.max,
        }
    }
}

impl Policy for Taskscaler {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.life.exit_when_empty = true;
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let pr = &w.pools[p];
        let cap = pr.slots;
        let need = pr.waiting() + self.idle_count;
        let free = pr.idle() + pr.offline;
        let live = pr.live.len() as u32;
        if need > free {
            let create = (need - free)
                .div_ceil(cap)
                .min(self.max.saturating_sub(live));
            if create > 0 {
                w.launch(p, create, None);
            }
        } else {
            let mut surplus = free - need;
            let mut cands: Vec<(Ms, u32)> = w.pools[p]
                .live
                .iter()
                .filter(|&&i| w.inst_busy(i) == 0 && w.inst_online(i))
                .map(|&i| (w.insts[i as usize].last_job_end, i))
                .filter(|&(since, _)| now - since >= self.idle_time)
                .collect();
            cands.sort_unstable();
            for (_, i) in cands {
                let its_free = w
                    .runners_of(i)
                    .filter(|&r| {
                        matches!(
                            w.runners[r as usize].state,
                            crate::engine::world::RState::Idle
                                | crate::engine::world::RState::Offline
                        )
                    })
                    .count() as u32;
                if its_free <= surplus && w.terminate(i, false) {
                    surplus -= its_free;
                }
            }
        }
        Some(now + CHECK_INTERVAL)
    }

    fn notes(&self) -> String {
        "GitLab taskscaler: 3 s job polling, slots, idle_count=min_idle, idle_time=idle_timeout since last job, used-up ephemeral instances deleted".to_owned()
    }
}
