//! elotl buildscaler (the Buildkite Job-template controller of buildscaler-eks), as its
//! documentation describes it (its source is closed).
//!
//! - A sync loop every `--sync-interval` (20 s in the manifests).
//! - Needed agents = scheduled (waiting) + running jobs; it creates bare pods for the
//!   difference with the pods it has. It never kills a running build.
//! - Agents disconnect after `--disconnect-after-idle-timeout` (the pool's `idle_timeout`; no
//!   documented default) and their pod ends; pods with no registered agent after 10 minutes
//!   are deleted. Runners per pod and ephemerality follow the pool.

use runscale_core::Timestamp;

use super::{MIN, Policy, SEC, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::ms;
use crate::engine::{Ms, World};

const SYNC: Ms = 20 * SEC;
const STARTUP_TIMEOUT: Ms = 10 * MIN;

pub(crate) struct Buildscaler {
    idle_timeout: Ms,
    max: u32,
}

impl Buildscaler {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            idle_timeout: ms(pool.spec.idle_timeout),
            max: pool.spec.max,
        }
    }
}

impl Policy for Buildscaler {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.life.idle_exit = Some(self.idle_timeout);
        s.life.exit_when_empty = true;
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let pr = &w.pools[p];
        let needed = pr.waiting() + pr.busy;
        let have = pr.idle() + pr.busy + pr.offline;
        let live = pr.live.len() as u32;
        if needed > have {
            let n = (needed - have)
                .div_ceil(pr.slots)
                .min(self.max.saturating_sub(live));
            if n > 0 {
                w.launch(p, n, None);
            }
        }
        let stuck: Vec<u32> = w.pools[p]
            .live
            .iter()
            .copied()
            .filter(|&i| !w.inst_online(i) && now - w.insts[i as usize].launched >= STARTUP_TIMEOUT)
            .collect();
        for i in stuck {
            w.terminate(i, false);
        }
        Some(now + SYNC)
    }

    fn notes(&self) -> String {
        "buildscaler: 20 s sync, pods for scheduled+running jobs, never kills a build, agents disconnect after idle_timeout, unregistered pods deleted after 10 min".to_owned()
    }
}
