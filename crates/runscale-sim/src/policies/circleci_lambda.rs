//! The "Simple CircleCI Runner AutoScaling in AWS" Lambda, as its published source
//! behaves.
//!
//! - An EventBridge schedule runs it once a minute (on the minute):
//!   `desired = min(unclaimed + running, AUTO_SCALING_MAX)` (the pool's `max`).
//! - Instances are protected from scale-in, so lowering desired terminates nothing. The
//!   original install script runs the agent in `single-task` mode with `idle_timeout: 1m` and
//!   shuts the instance down when the agent exits: one job per instance, or one idle minute.
//!   A shutdown does not lower desired, so the group replaces the instance while desired is
//!   still higher (the documented race). One runner per instance.
//! - Not modelled: the 2024 regression (machine runner 3 without single-task and shutdown,
//!   which never scales in).

use runscale_core::Timestamp;

use super::{MIN, Policy, Setup, aligned};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::Asg;
use crate::engine::{Ms, World};

const IDLE_TIMEOUT: Ms = MIN;

pub(crate) struct CircleciLambda {
    max: u32,
    t0: Option<Timestamp>,
}

impl CircleciLambda {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            max: pool.spec.max,
            t0: None,
        }
    }
}

impl Policy for CircleciLambda {
    fn setup(&self, pool: &SimPool, params: &WorldParams, t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.slots = 1;
        s.life.ephemeral = true;
        s.life.idle_exit = Some(IDLE_TIMEOUT);
        s.life.exit_when_empty = true;
        s.life.exit_decrements_desired = false;
        s.asg = Some(Asg {
            desired: 0,
            max: self.max,
            protect: true,
        });
        s.first_pass = aligned(t0, 0, MIN);
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let t0 = *self.t0.get_or_insert_with(|| w.ts(0));
        let pr = &w.pools[p];
        let desired = (pr.waiting() + pr.busy).min(self.max);
        w.set_desired(p, desired);
        Some(aligned(t0, w.now() + 1, MIN))
    }

    fn notes(&self) -> String {
        "CircleCI Lambda: every minute desired=min(unclaimed+running,max), protected instances, single-task runners with 1 min idle timeout, self-shutdown replaced by the ASG".to_owned()
    }
}
