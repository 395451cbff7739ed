//! What the reconciler knows about each pool, for `/api/v1/pools`, the status page and `once`.

use std::collections::VecDeque;

use serde::Serialize;

use crate::error::Error;
use crate::model::{InstanceState, Observation, PoolId, PoolSpec, RunnerState, Timestamp};
use crate::plan::Plan;

/// How many recent actions each pool keeps for display.
pub const RECENT_ACTIONS: usize = 32;

/// A pool's configured limits.
#[derive(Clone, Debug, Serialize)]
pub struct LimitsView {
    /// Warm idle runners.
    pub min_idle: u32,
    /// Instance cap.
    pub max: u32,
    /// Booting cap.
    pub max_booting: u32,
    /// Launch rate cap (0 = none).
    pub launches_per_minute: u32,
    /// Seconds.
    pub boot_timeout_secs: f64,
    /// Seconds.
    pub idle_timeout_secs: f64,
    /// Seconds, if set.
    pub max_lifetime_secs: Option<f64>,
    /// Seconds.
    pub scale_down_delay_secs: f64,
    /// Slots per instance.
    pub runners_per_instance: u32,
    /// One job per runner.
    pub ephemeral: bool,
    /// Schedules as configured.
    pub schedules: Vec<ScheduleView>,
}

/// One schedule entry.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleView {
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Override, if any.
    pub min_idle: Option<u32>,
    /// Override, if any.
    pub max: Option<u32>,
}

impl LimitsView {
    pub(crate) fn of(spec: &PoolSpec) -> Self {
        Self {
            min_idle: spec.min_idle,
            max: spec.max,
            max_booting: spec.max_booting,
            launches_per_minute: spec.launches_per_minute,
            boot_timeout_secs: spec.boot_timeout.as_secs_f64(),
            idle_timeout_secs: spec.idle_timeout.as_secs_f64(),
            max_lifetime_secs: spec.max_lifetime.map(|d| d.as_secs_f64()),
            scale_down_delay_secs: spec.scale_down_delay.as_secs_f64(),
            runners_per_instance: spec.runners_per_instance,
            ephemeral: spec.ephemeral,
            schedules: spec
                .schedules
                .iter()
                .map(|s| ScheduleView {
                    cron: s.expression().to_owned(),
                    timezone: s.timezone().to_owned(),
                    min_idle: s.min_idle,
                    max: s.max,
                })
                .collect(),
        }
    }
}

/// Counts from one observation.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ObservationSummary {
    /// When it was taken.
    pub at: Option<Timestamp>,
    /// When the CI system's part of it was read: before `at` when a read failed and the pass
    /// planned on the last fresh view; `None` when the provider could only return an old copy
    /// of unknown age (it was throttled).
    pub view_at: Option<Timestamp>,
    /// The CI system's part is an old copy (a read failed, or the provider was throttled):
    /// the pass could only launch.
    pub stale: bool,
    /// Jobs waiting.
    pub waiting: u32,
    /// Jobs running.
    pub running: u32,
    /// Seconds the oldest waiting job has waited.
    pub oldest_waiting_secs: Option<i64>,
    /// Idle runners.
    pub runners_idle: u32,
    /// Busy runners.
    pub runners_busy: u32,
    /// Offline runners.
    pub runners_offline: u32,
    /// Booting instances.
    pub instances_booting: u32,
    /// Running instances.
    pub instances_running: u32,
    /// Stopping instances.
    pub instances_stopping: u32,
}

impl ObservationSummary {
    /// Summarises `obs` taken at `at`.
    pub fn of(obs: &Observation, at: Timestamp) -> Self {
        let runners = |s: RunnerState| obs.runners.iter().filter(|r| r.state == s).count() as u32;
        let instances =
            |s: InstanceState| obs.instances.iter().filter(|i| i.state == s).count() as u32;
        Self {
            at: Some(at),
            view_at: (!obs.stale).then_some(at),
            stale: obs.stale,
            waiting: obs.demand.waiting.len() as u32,
            running: obs.demand.running,
            oldest_waiting_secs: obs
                .demand
                .waiting
                .iter()
                .map(|j| j.queued_at)
                .min()
                .map(|t| (at - t).num_seconds().max(0)),
            runners_idle: runners(RunnerState::Idle),
            runners_busy: runners(RunnerState::Busy),
            runners_offline: runners(RunnerState::Offline),
            instances_booting: instances(InstanceState::Booting),
            instances_running: instances(InstanceState::Running),
            instances_stopping: instances(InstanceState::Stopping),
        }
    }
}

/// The last error of a pool.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorView {
    /// When.
    pub at: Timestamp,
    /// Operation that failed.
    pub op: &'static str,
    /// Error kind.
    pub kind: &'static str,
    /// Message (never contains secrets).
    pub message: String,
}

impl ErrorView {
    pub(crate) fn of(e: &Error, at: Timestamp) -> Self {
        Self {
            at,
            op: e.op(),
            kind: e.kind().as_str(),
            message: e.to_string(),
        }
    }
}

/// One action carried out (or attempted).
#[derive(Clone, Debug, Serialize)]
pub struct ActionRecord {
    /// When.
    pub at: Timestamp,
    /// Action kind.
    pub action: &'static str,
    /// Why.
    pub reason: &'static str,
    /// What it acted on (instance id, runner name, or a count).
    pub target: String,
    /// `ok`, `dry_run`, `kept_busy` or an error kind.
    pub outcome: &'static str,
}

/// Everything known about one pool.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    /// Pool name.
    pub pool: PoolId,
    /// Configured provider name.
    pub provider: String,
    /// Configured backend name.
    pub backend: String,
    /// Configured limits.
    pub limits: LimitsView,
    /// The last observation (taken by a pass that planned, even if it then failed).
    pub last_observation: Option<ObservationSummary>,
    /// Seconds since the CI system was last read afresh for this pool, when this status was
    /// taken; `None` before the first fresh read.
    pub view_age_secs: Option<f64>,
    /// What is known of the pool is out of date: the CI system has not been read afresh within
    /// two intervals (reads fail, or no pass completed), or never was.
    pub stale: bool,
    /// The last plan, with reasons.
    pub last_plan: Option<Plan>,
    /// When the last pass finished.
    pub last_pass_at: Option<Timestamp>,
    /// The last error, cleared by a successful pass.
    pub last_error: Option<ErrorView>,
    /// Failed passes in a row.
    pub consecutive_failures: u32,
    /// When the next pass is due (absent a trigger).
    pub next_pass_at: Option<Timestamp>,
    /// Passes completed (successful or not).
    pub passes: u64,
    /// The latest actions, newest last.
    pub recent_actions: VecDeque<ActionRecord>,
}

impl PoolStatus {
    pub(crate) fn new(spec: &PoolSpec, provider: &str, backend: &str) -> Self {
        Self {
            pool: spec.name.clone(),
            provider: provider.to_owned(),
            backend: backend.to_owned(),
            limits: LimitsView::of(spec),
            last_observation: None,
            view_age_secs: None,
            stale: true,
            last_plan: None,
            last_pass_at: None,
            last_error: None,
            consecutive_failures: 0,
            next_pass_at: None,
            passes: 0,
            recent_actions: VecDeque::new(),
        }
    }

    pub(crate) fn push_action(&mut self, record: ActionRecord) {
        if self.recent_actions.len() == RECENT_ACTIONS {
            self.recent_actions.pop_front();
        }
        self.recent_actions.push_back(record);
    }
}
