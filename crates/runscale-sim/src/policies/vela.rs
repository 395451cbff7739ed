//! vela-games/circleci-runner-autoscaler (AWS worker), as its published source
//! behaves.
//!
//! - Polls every 5 s. `U` = unclaimed tasks; if `U == 0`, or desired equals the group's
//!   maximum, nothing happens. Otherwise `desired = min(D + U, max)`.
//! - After raising desired it blocks until the number of in-service instances whose runner
//!   has connected equals the desired count, re-checking with exponential backoff (0.5 s,
//!   ×1.5, at most 60 s apart, giving up after 15 minutes); the next poll is 5 s after that.
//! - It never scales in. The README relies on a runner-side idle timeout that detaches the
//!   instance from the group and shuts it down (the script is not in the repository): modelled
//!   as persistent runners that leave after the pool's `idle_timeout` idle, the instance then
//!   detaching with a decrement of desired.

use runscale_core::Timestamp;

use super::{MIN, Policy, SEC, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::{Asg, IState, ms};
use crate::engine::{Ms, World};

const POLL: Ms = 5 * SEC;
const BACKOFF_START: Ms = 500;
const BACKOFF_MAX: Ms = 60 * SEC;
const BACKOFF_GIVE_UP: Ms = 15 * MIN;

pub(crate) struct Vela {
    max: u32,
    idle_timeout: Ms,
    waiting: Option<(Ms, Ms)>,
}

impl Vela {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            max: pool.spec.max,
            idle_timeout: ms(pool.spec.idle_timeout),
            waiting: None,
        }
    }
}

impl Policy for Vela {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.life.ephemeral = false;
        s.life.idle_exit = Some(self.idle_timeout);
        s.life.exit_when_empty = true;
        s.life.exit_decrements_desired = true;
        s.asg = Some(Asg {
            desired: 0,
            max: self.max,
            protect: false,
        });
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let desired = w.pools[p].asg.map_or(0, |a| a.desired);
        if let Some((since, delay)) = self.waiting {
            let found = w.pools[p]
                .live
                .iter()
                .filter(|&&i| w.insts[i as usize].state == IState::Running && w.inst_online(i))
                .count() as u32;
            if found >= desired || now - since >= BACKOFF_GIVE_UP {
                self.waiting = None;
                return Some(now + POLL);
            }
            let next = (delay * 3 / 2).min(BACKOFF_MAX);
            self.waiting = Some((since, next));
            return Some(now + delay);
        }
        let unclaimed = w.pools[p].waiting();
        if unclaimed == 0 || desired >= self.max {
            return Some(now + POLL);
        }
        let new = (desired + unclaimed).min(self.max);
        w.set_desired(p, new);
        self.waiting = Some((now, BACKOFF_START * 3 / 2));
        Some(now + BACKOFF_START)
    }

    fn notes(&self) -> String {
        "vela circleci-runner-autoscaler: 5 s poll, desired=min(D+unclaimed,max), blocks until runners are up (backoff ≤15 min), never scales in; runners leave after idle_timeout and detach".to_owned()
    }
}
