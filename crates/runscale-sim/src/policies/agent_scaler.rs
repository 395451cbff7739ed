//! Buildkite buildkite-agent-scaler with the Elastic CI Stack for AWS defaults, from the
//! reference notes (gitlab-buildkite-circleci.md §3.2).
//!
//! - Polls the agent metrics API every `MinPollInterval` (10 s).
//! - `required = scheduled + running` (waiting jobs are not counted by default);
//!   `desired = ceil(required / AgentsPerInstance)` capped at the maximum; availability
//!   threshold 0.5: while jobs exist, if connected agents / (agents per instance × instances)
//!   < 0.5 and the group's instance count equals its desired count, desired is raised to the
//!   group's desired + 1; `InstanceBuffer` 0; `ScaleOutFactor` 1.0.
//! - Scale-out cooldown 300 s (`ScaleOutCooldownPeriod`); `DisableScaleIn` true: the scaler
//!   never lowers the desired count. Agents are persistent and disconnect after
//!   `ScaleInIdlePeriod` (600 s) idle; the instance then terminates itself and decrements the
//!   group's desired capacity.
//! - Agents per instance = the pool's runners per instance; max = the pool's `max`.

use runscale_core::Timestamp;

use super::{MIN, Policy, SEC, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::Asg;
use crate::engine::{Ms, World};

const POLL: Ms = 10 * SEC;
const SCALE_OUT_COOLDOWN: Ms = 5 * MIN;
const SCALE_IN_IDLE: Ms = 10 * MIN;
const AVAILABILITY_THRESHOLD: f64 = 0.5;

pub(crate) struct AgentScaler {
    max: u32,
    last_scale_out: Option<Ms>,
}

impl AgentScaler {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            max: pool.spec.max,
            last_scale_out: None,
        }
    }
}

impl Policy for AgentScaler {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.life.ephemeral = false;
        s.life.idle_exit = Some(SCALE_IN_IDLE);
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
        let pr = &w.pools[p];
        let api = pr.slots;
        let required = pr.waiting() + pr.busy;
        let instances = pr.live.len() as u32;
        let Some(asg) = pr.asg else {
            return Some(now + POLL);
        };
        let mut desired = if required == 0 {
            0
        } else {
            required.div_ceil(api).min(self.max)
        };
        let agents = pr.idle() + pr.busy;
        if required > 0
            && instances > 0
            && f64::from(agents) / f64::from(api * instances) < AVAILABILITY_THRESHOLD
            && instances == asg.desired
        {
            desired = desired.max(asg.desired + 1);
        }
        let desired = desired.min(self.max);
        if desired > asg.desired {
            let cooling = self
                .last_scale_out
                .is_some_and(|t| now - t < SCALE_OUT_COOLDOWN);
            if !cooling {
                w.set_desired(p, desired);
                self.last_scale_out = Some(now);
            }
        }
        Some(now + POLL)
    }

    fn notes(&self) -> String {
        "Buildkite agent-scaler, Elastic CI Stack defaults: 10 s poll, desired=ceil((scheduled+running)/agents), availability bump, 300 s scale-out cooldown, scale-in disabled, agents exit after 600 s idle".to_owned()
    }
}
