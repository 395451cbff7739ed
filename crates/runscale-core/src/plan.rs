//! What the policy decides: actions, each with a reason.

use std::time::Duration;

use serde::Serialize;

use crate::model::{EffectiveLimits, InstanceId, RunnerId};

/// Why an action was planned. Bounded: used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Jobs are waiting with no idle or booting runner to take them.
    Demand,
    /// Keeping `min_idle` warm runners.
    MinIdle,
    /// Keeping the spare runners the demand forecast calls for (`warm`).
    Forecast,
    /// A surplus runner was idle longer than `idle_timeout`.
    IdleTimeout,
    /// An instance has no registered runner `boot_timeout` after launch (it never registered,
    /// or its ephemeral runner finished and left).
    BootTimeout,
    /// Every runner of an instance is draining and none is busy: it can take no more jobs.
    Drained,
    /// A runner is registered but no instance hosts it.
    NoInstance,
    /// An instance's runners are offline and it is past `boot_timeout`.
    RunnerOffline,
    /// Every runner of an instance registered and has since left the CI system (an
    /// ephemeral runner after its job): the instance can take no job, whatever its age.
    RunnerLeft,
    /// An instance outlived `max_lifetime`.
    MaxLifetime,
    /// An instance was launched from an older template.
    TemplateChanged,
    /// Fleet is above `max` (lowered by configuration or schedule).
    OverMax,
}

impl Reason {
    /// Stable snake-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Demand => "demand",
            Reason::MinIdle => "min_idle",
            Reason::Forecast => "forecast",
            Reason::IdleTimeout => "idle_timeout",
            Reason::BootTimeout => "boot_timeout",
            Reason::Drained => "drained",
            Reason::NoInstance => "no_instance",
            Reason::RunnerOffline => "runner_offline",
            Reason::RunnerLeft => "runner_left",
            Reason::MaxLifetime => "max_lifetime",
            Reason::TemplateChanged => "template_changed",
            Reason::OverMax => "over_max",
        }
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Launch `count` instances (each registers `runners_per_instance` runners).
    Launch {
        /// Number of instances.
        count: u32,
    },
    /// Ask the CI system to give no new job to a busy runner that is to be retired.
    Drain {
        /// The runner.
        runner: RunnerId,
        /// Its name.
        name: String,
    },
    /// Remove a registered runner that no instance hosts.
    Deregister {
        /// The runner.
        runner: RunnerId,
        /// Its name.
        name: String,
    },
    /// Hand an instance whose runners all finished and left fresh registrations (one per
    /// slot), instead of terminating it and launching another ([`crate::PoolSpec::reuse`]).
    /// The runners listed are removed from the CI system first, as for `Terminate`; if that or
    /// the hand-over fails, the instance is terminated (nothing runs on it).
    Reuse {
        /// The instance.
        instance: InstanceId,
        /// Its old runners the CI system still lists (offline), to remove first.
        runners: Vec<RunnerId>,
        /// Registrations it will have served once reused, the first included.
        uses: u32,
    },
    /// Terminate an instance. Every runner listed is removed from the CI system first, and the
    /// instance is terminated only if the CI system confirmed every removal (a busy runner
    /// makes the removal fail and the instance stays).
    Terminate {
        /// The instance.
        instance: InstanceId,
        /// Its registered runners, to remove first (empty when none is registered).
        runners: Vec<RunnerId>,
    },
}

impl Action {
    /// Stable name of the action kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Launch { .. } => "launch",
            Action::Drain { .. } => "drain",
            Action::Deregister { .. } => "deregister",
            Action::Reuse { .. } => "reuse",
            Action::Terminate { .. } => "terminate",
        }
    }
}

/// An action and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

/// A cap that held launches back this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `max` instances reached.
    Max,
    /// `max_booting` reached.
    MaxBooting,
    /// `launches_per_minute` reached.
    LaunchRate,
}

/// The policy's output for one pool and one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Actions in the order they should be carried out.
    pub actions: Vec<Planned>,
    /// Limits in force (after schedules).
    pub limits: EffectiveLimits,
    /// Job slots wanted: waiting + busy + `min_idle`.
    pub desired_slots: u32,
    /// Instances wanted after this plan is carried out (capped by `max`).
    pub desired_instances: u32,
    /// Launches that were wanted but held back, and by which cap.
    pub held_back: Option<(u32, Limit)>,
    /// When something time-based becomes due (a timeout expiring), so the caller can come
    /// back then even without a trigger.
    #[serde(with = "opt_secs")]
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// Number of instances this plan reuses.
    pub fn reuses(&self) -> u32 {
        self.actions
            .iter()
            .filter(|p| matches!(p.action, Action::Reuse { .. }))
            .count() as u32
    }

    /// Number of instances this plan launches.
    pub fn launches(&self) -> u32 {
        self.actions
            .iter()
            .map(|p| match p.action {
                Action::Launch { count } => count,
                _ => 0,
            })
            .sum()
    }

    /// Comes back no later than `after`, if given (the caller knows of something due that the
    /// policy does not see, such as a departure to confirm).
    pub fn requeue_soon(&mut self, after: Option<Duration>) {
        if let Some(after) = after {
            self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
        }
    }

    /// Whether the plan does nothing.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
