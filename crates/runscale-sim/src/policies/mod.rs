//! The policies a simulation compares.
//!
//! - [`runscale`](runscale): runscale's real policy, [`runscale_core::plan`], driven the way
//!   the reconciler drives it (webhook wake-ups, requeue, actions carried out in order with the
//!   CI system refusing to remove busy runners).
//! - Baselines, each reimplemented from the system's published source or documentation,
//!   with its own pass interval, runner lifecycle and quirks; each
//!   module's docs say what is modelled and what is left out.
//! - [`clairvoyant`](clairvoyant): a lower bound that knows every arrival in advance.
//!
//! Every baseline uses the pool's `max`, `min_idle` and `idle_timeout` where the system has
//! such a knob, and the system's documented default where it has a fixed behaviour instead.

mod agent_scaler;
mod arc;
mod buildscaler;
mod circleci_lambda;
mod clairvoyant;
mod github_action_autoscaler;
mod gitlab_fleet;
mod runscale;
mod taskscaler;
mod terraform_aws;
mod vela;

use std::fmt;
use std::str::FromStr;

use runscale_core::Timestamp;

use crate::SimError;
use crate::config::{Detection, SimPool, WorldParams};
use crate::engine::world::{Asg, Lifecycle};
use crate::engine::{Compiled, Hook, Ms, World};

/// A policy the simulator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyName {
    /// runscale's own policy (`runscale_core::plan`).
    Runscale,
    /// actions-runner-controller scale sets: target = min(min + assigned jobs, max).
    Arc,
    /// terraform-aws-github-runner: one runner per queued webhook after a 30 s delay;
    /// scale-down every 5 minutes after a minimum running time.
    TerraformAws,
    /// GitLab taskscaler (docker-autoscaler): slots, idle_count, idle_time.
    Taskscaler,
    /// Buildkite agent-scaler with the Elastic CI Stack defaults.
    AgentScaler,
    /// vela-games circleci-runner-autoscaler.
    Vela,
    /// The simple CircleCI runner Lambda.
    CircleciLambda,
    /// sio/gitlab-runners-fleet (terraform branch).
    GitlabFleet,
    /// devjoes github-runner-autoscaler (logistic scaling, cached queue).
    GithubActionAutoscaler,
    /// elotl buildscaler (waiting + running, idle disconnect).
    Buildscaler,
    /// Knows every arrival in advance; a lower bound.
    Clairvoyant,
}

impl PolicyName {
    /// Every policy, in report order.
    pub const ALL: [PolicyName; 11] = [
        PolicyName::Runscale,
        PolicyName::Arc,
        PolicyName::TerraformAws,
        PolicyName::Taskscaler,
        PolicyName::AgentScaler,
        PolicyName::Vela,
        PolicyName::CircleciLambda,
        PolicyName::GitlabFleet,
        PolicyName::GithubActionAutoscaler,
        PolicyName::Buildscaler,
        PolicyName::Clairvoyant,
    ];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Runscale => "runscale",
            PolicyName::Arc => "arc",
            PolicyName::TerraformAws => "terraform-aws",
            PolicyName::Taskscaler => "taskscaler",
            PolicyName::AgentScaler => "agent-scaler",
            PolicyName::Vela => "vela",
            PolicyName::CircleciLambda => "circleci-lambda",
            PolicyName::GitlabFleet => "gitlab-fleet",
            PolicyName::GithubActionAutoscaler => "github-action-autoscaler",
            PolicyName::Buildscaler => "buildscaler",
            PolicyName::Clairvoyant => "clairvoyant",
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyName {
    type Err = SimError;
    /// One policy name (not `all`; see [`PolicySelection`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| SimError::Invalid {
                field: "policies",
                message: format!(
                    "unknown policy `{s}`; expected all or one of: {}",
                    PolicyName::ALL.map(PolicyName::as_str).join(", ")
                ),
            })
    }
}

/// An ordered, duplicate-free list of policies, parsed from `all` or `runscale,arc,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySelection(pub Vec<PolicyName>);

impl PolicySelection {
    /// Every policy.
    pub fn all() -> Self {
        Self(PolicyName::ALL.to_vec())
    }
}

impl FromStr for PolicySelection {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out: Vec<PolicyName> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let names = if part.eq_ignore_ascii_case("all") {
                PolicyName::ALL.to_vec()
            } else {
                vec![part.parse()?]
            };
            for n in names {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        if out.is_empty() {
            return Err(SimError::Invalid {
                field: "policies",
                message: "no policy named".to_owned(),
            });
        }
        Ok(Self(out))
    }
}

/// How the engine sets a pool up for a policy.
pub(crate) struct Setup {
    /// Runners per instance.
    pub slots: u32,
    /// Runner and instance lifecycle.
    pub life: Lifecycle,
    /// An Auto Scaling group in front of the instances, if the system only sets a desired
    /// capacity.
    pub asg: Option<Asg>,
    /// First timer pass.
    pub first_pass: Ms,
    /// How long a pass takes; wake-ups meanwhile coalesce.
    pub pass_latency: Ms,
    /// Delivery latency of a "job queued" event, if the policy subscribes.
    pub hook_queued: Option<Ms>,
    /// Delivery latency of a "job completed" event, if the policy subscribes.
    pub hook_completed: Option<Ms>,
    /// Keep runscale's `Observation` up to date (only runscale reads it).
    pub mirror: bool,
}

impl Setup {
    /// A plain setup: the pool's slots and lifecycle, no ASG, first pass at 0, and the world's
    /// pass latency (the same for every policy).
    fn plain(pool: &SimPool, params: &WorldParams) -> Self {
        Setup {
            slots: pool.spec.runners_per_instance.max(1),
            life: Lifecycle {
                ephemeral: pool.spec.ephemeral,
                idle_exit: None,
                exit_when_empty: params.instance_exits_when_runners_leave,
                exit_decrements_desired: false,
            },
            asg: None,
            first_pass: 0,
            pass_latency: crate::engine::world::ms(params.pass_latency),
            hook_queued: None,
            hook_completed: None,
            mirror: false,
        }
    }
}

/// A policy bound to one pool.
pub(crate) trait Policy {
    /// How the pool behaves under this policy.
    fn setup(&self, pool: &SimPool, params: &WorldParams, t0: Timestamp) -> Setup;
    /// A subscribed CI event arrived; returns whether to wake the pool for a pass.
    fn on_hook(&mut self, _w: &mut World<'_>, _pool: usize, _kind: Hook, _job: u32) -> bool {
        true
    }
    /// One pass: observe `w.pools[pool]`, act on it. Returns when the next timer pass is due.
    fn pass(&mut self, w: &mut World<'_>, pool: usize) -> Option<Ms>;
    /// One line on how the policy is modelled, for the report.
    fn notes(&self) -> String;
}

pub(crate) fn webhook_latency(params: &WorldParams) -> Ms {
    match params.detection {
        Detection::Webhook { latency } => crate::engine::world::ms(latency),
        Detection::Poll => 1_000,
    }
}

/// The first time at or after `t0 + from` that is a multiple of `period` on the wall clock.
pub(crate) fn aligned(t0: Timestamp, from: Ms, period: Ms) -> Ms {
    let wall = t0.timestamp_millis() + from;
    let next = wall.div_euclid(period) * period;
    let next = if next < wall { next + period } else { next };
    next - t0.timestamp_millis()
}

pub(crate) const SEC: Ms = 1_000;
pub(crate) const MIN: Ms = 60 * SEC;

/// Builds the policy `name` for pool `index`.
pub(crate) fn build(
    name: PolicyName,
    index: usize,
    pool: &SimPool,
    params: &WorldParams,
    c: &Compiled,
    seed: u64,
) -> Box<dyn Policy> {
    match name {
        PolicyName::Runscale => Box::new(runscale::Runscale::new(pool, params)),
        PolicyName::Arc => Box::new(arc::Arc::new(pool)),
        PolicyName::TerraformAws => Box::new(terraform_aws::TerraformAws::new(pool)),
        PolicyName::Taskscaler => Box::new(taskscaler::Taskscaler::new(pool)),
        PolicyName::AgentScaler => Box::new(agent_scaler::AgentScaler::new(pool)),
        PolicyName::Vela => Box::new(vela::Vela::new(pool)),
        PolicyName::CircleciLambda => Box::new(circleci_lambda::CircleciLambda::new(pool)),
        PolicyName::GitlabFleet => Box::new(gitlab_fleet::GitlabFleet::new(pool)),
        PolicyName::GithubActionAutoscaler => Box::new(
            github_action_autoscaler::GithubActionAutoscaler::new(pool, pool_seed(seed, index)),
        ),
        PolicyName::Buildscaler => Box::new(buildscaler::Buildscaler::new(pool)),
        PolicyName::Clairvoyant => Box::new(clairvoyant::Clairvoyant::new(
            pool,
            index,
            c,
            crate::engine::world::ms(params.registration_delay),
        )),
    }
}

/// The seed of the pool at `index` of a simulation run with `seed`.
fn pool_seed(seed: u64, index: usize) -> u64 {
    seed ^ index as u64
}

/// When the first forced scale-up of the github-action-autoscaler baseline (its metric at
/// `max` for 20 minutes, to keep registrations alive) starts, after the simulation's start,
/// for the pool at `pool_index` of a run with `seed`. It is random in the first day.
pub fn github_action_autoscaler_first_forced_scale_up(
    seed: u64,
    pool_index: usize,
) -> std::time::Duration {
    let ms =
        github_action_autoscaler::GithubActionAutoscaler::first_forced(pool_seed(seed, pool_index));
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
