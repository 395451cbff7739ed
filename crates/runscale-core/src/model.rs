//! The domain model: pools, what the CI system and the backend report about them, and the
//! observation the policy plans from.
//!
//! Nothing here performs I/O. Identifiers are plain strings wrapped in newtypes so that a
//! runner name can never be passed where an instance id is expected.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// A point in time. Always UTC; the policy never reads a clock, it is handed one of these.
pub type Timestamp = DateTime<Utc>;

/// `later - earlier`, exactly as chrono computes it, without chrono's conversion of both dates
/// to day counts when they fall on the same day (most spans the policy and the memory measure:
/// a pass subtracts timestamps for every instance).
pub fn span(earlier: Timestamp, later: Timestamp) -> chrono::TimeDelta {
    let (a, b) = (earlier.naive_utc(), later.naive_utc());
    if a.date() == b.date() {
        b.time() - a.time()
    } else {
        later - earlier
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string.
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(Arc::from(s.as_ref()))
            }
            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// The name of a pool, unique within one configuration.
    PoolId
);
id_type!(
    /// The CI system's id of a runner (GitHub's numeric id, a Buildkite agent UUID, ...).
    RunnerId
);
id_type!(
    /// The backend's id of an instance (EC2 instance id, pod name, process key, ...).
    InstanceId
);

/// The scaling limits and timeouts of one pool: everything the policy needs besides the
/// observation. Built from configuration; see the binary's config module for field docs.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    /// Name of the pool.
    pub name: PoolId,
    /// Idle runners kept warm on top of demand.
    pub min_idle: u32,
    /// Most instances (booting + running) at any time.
    pub max: u32,
    /// Most instances booting at once; also bounds launches per pass.
    pub max_booting: u32,
    /// Most launches in any 60 s window; 0 means no limit.
    pub launches_per_minute: u32,
    /// An instance whose runner has not registered after this long is terminated.
    pub boot_timeout: Duration,
    /// A surplus runner idle for this long is removed.
    pub idle_timeout: Duration,
    /// Instances older than this are retired once idle.
    pub max_lifetime: Option<Duration>,
    /// No idle scale-in until this long after the newest launch (prevents flapping).
    pub scale_down_delay: Duration,
    /// Time-of-day overrides of `min_idle` and `max`; the last matching entry wins.
    pub schedules: Vec<Schedule>,
    /// Runners (job slots) hosted by one instance.
    pub runners_per_instance: u32,
    /// One job per runner: the runner unregisters itself after its job.
    pub ephemeral: bool,
    /// Hash of the current launch template; instances with another hash are replaced.
    pub template_hash: String,
    /// The pool's runners are named by the instances themselves (a launch template's own
    /// start-up script, as CircleCI's simple-Lambda example names them `$RUNNER_NAME-<time>`),
    /// so which runner runs on which instance cannot be known. The policy then plans from
    /// counts alone and retires an instance only when no job of the pool waits or runs (see
    /// the policy's module docs).
    pub runners_unattributed: bool,
    /// Predictive warm capacity: spare slots for the arrivals the forecast expects
    /// ([`Observation::forecast`]), beyond `min_idle`. `None`: purely reactive.
    pub warm: Option<crate::forecast::Warm>,
    /// Instance reuse for ephemeral runners: an instance whose runners all finished and left is
    /// handed fresh one-job registrations instead of being terminated, when the pool wants
    /// capacity. `None`: every instance serves one registration.
    pub reuse: Option<Reuse>,
}

/// How far a pool's instances may be reused ([`PoolSpec::reuse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// Most registrations one instance serves, the first included (at least 2).
    pub max_uses: u32,
    /// An instance older than this is not reused (it is retired as without reuse).
    pub max_age: Duration,
}

impl PoolSpec {
    /// The `min_idle` and `max` in force at `now`, after schedules.
    pub fn limits_at(&self, now: Timestamp) -> EffectiveLimits {
        let mut limits = EffectiveLimits {
            min_idle: self.min_idle,
            max: self.max,
            schedule: None,
        };
        for (i, s) in self.schedules.iter().enumerate() {
            if s.matches(now) {
                if let Some(m) = s.min_idle {
                    limits.min_idle = m;
                }
                if let Some(m) = s.max {
                    limits.max = m;
                }
                limits.schedule = Some(i);
            }
        }
        limits
    }
}

/// Limits after schedules were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveLimits {
    /// Warm idle runners wanted.
    pub min_idle: u32,
    /// Instance cap.
    pub max: u32,
    /// Index of the schedule entry that set them, if any.
    pub schedule: Option<usize>,
}

/// A job waiting for a runner of this pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingJob {
    /// The CI system's job id.
    pub id: String,
    /// When the job was queued.
    pub queued_at: Timestamp,
}

/// Jobs that want this pool, counted from the CI system's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// Jobs queued and not yet assigned to a runner.
    pub waiting: Vec<WaitingJob>,
    /// Jobs currently running on this pool's runners.
    pub running: u32,
}

/// What the CI system says a runner is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerState {
    /// Online and free to take a job.
    Idle,
    /// Running a job (online or not: a busy runner that went offline is still busy).
    Busy,
    /// Registered but not connected, and not running a job.
    Offline,
}

impl RunnerState {
    /// Stable lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Idle => "idle",
            RunnerState::Busy => "busy",
            RunnerState::Offline => "offline",
        }
    }
}

/// A runner as the CI system knows it. Only runners owned by the pool are observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// CI-side id.
    pub id: RunnerId,
    /// Runner name; it names the instance it was launched for.
    pub name: String,
    /// Current state.
    pub state: RunnerState,
    /// The CI system has confirmed the runner takes no new job (paused, stopping).
    #[serde(default)]
    pub draining: bool,
    /// When it last finished or started a job, if known. Unknown falls back to the launch time.
    #[serde(default)]
    pub last_busy: Option<Timestamp>,
}

/// What the backend says an instance is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Starting; its runner may not have registered yet.
    Booting,
    /// Up.
    Running,
    /// On its way out; counts against nothing.
    Stopping,
}

impl InstanceState {
    /// Stable lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Booting => "booting",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
        }
    }
}

/// An instance as the backend knows it, identified by the tags/labels runscale put on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Backend id.
    pub id: InstanceId,
    /// Current state.
    pub state: InstanceState,
    /// When it was launched.
    pub launched_at: Timestamp,
    /// Template hash it was launched from.
    pub template_hash: String,
    /// Names of the runners it hosts now (one per slot): those it was launched for, or those
    /// it was last handed when it was reused.
    pub runner_names: Vec<String>,
    /// Set once the instance was reused ([`PoolSpec::reuse`]): its count of registrations
    /// and when it got its current ones. `None`: it still serves its first registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
}

/// An instance's reuse so far ([`Instance::reused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reused {
    /// Registrations it has served, the first included (2 after its first reuse).
    pub uses: u32,
    /// When it was handed its current registrations.
    pub at: Timestamp,
}

impl Instance {
    /// Registrations it has served, the current one included.
    pub fn uses(&self) -> u32 {
        self.reused.map_or(1, |r| r.uses)
    }

    /// When its current runners were handed to it: its launch, or its last reuse.
    pub fn armed_at(&self) -> Timestamp {
        self.reused
            .map_or(self.launched_at, |r| r.at.max(self.launched_at))
    }
}

/// Everything the policy sees of one pool at one instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Jobs waiting and running.
    pub demand: Demand,
    /// Runners registered for this pool.
    pub runners: Vec<Runner>,
    /// Instances of this pool.
    pub instances: Vec<Instance>,
    /// Launch times this process remembers from the last minute (instances that launched and
    /// already vanished still count against the launch rate). May be empty after a restart:
    /// the policy also counts instances launched in the last minute.
    #[serde(default)]
    pub recent_launches: Vec<Timestamp>,
    /// The CI side of this observation is an old copy (the provider is throttled): plan
    /// launches only, remove nothing.
    #[serde(default)]
    pub stale: bool,
    /// Names of runners of this pool's instances that this process saw registered and that
    /// the CI system has since stopped listing (on two observations in a row): an ephemeral
    /// runner that finished its job, a runner that exited after its idle timeout. A slot whose
    /// runner departed will not come up again, so it is not booting capacity. Empty after a
    /// restart; the policy then falls back to `boot_timeout`.
    #[serde(default)]
    pub departed: Vec<String>,
    /// Names of runners of this pool's instances that registered and were missing from the last
    /// fresh observation, once: one more makes them departed. A pool with `reuse` keeps such an
    /// instance for that confirmation instead of retiring it at `boot_timeout`.
    #[serde(default)]
    pub leaving: Vec<String>,
    /// What the pool's demand history predicts over the next lead time (arrival rate, lead
    /// time), for [`PoolSpec::warm`]. `None` until a lead time was seen.
    #[serde(default)]
    pub forecast: Option<crate::forecast::Forecast>,
}

/// A pool's template hash (`PoolSpec::template_hash`, recorded on instances): the backend's
/// hash of its template combined with the slots per instance, so changing either replaces the
/// pool's instances once idle. Backends that adopt instances they did not launch use it to
/// give them the pool's current hash.
pub fn template_hash(backend_hash: &str, runners_per_instance: u32) -> String {
    format!("{backend_hash}-{runners_per_instance}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Timestamp, span};

    proptest! {
        /// `span` is chrono's subtraction, on the same day or across days, leap seconds
        /// included.
        #[test]
        fn span_is_chronos_subtraction(
            a_ms in -4_000_000_000_000i64..4_000_000_000_000i64,
            gap_ms in -200_000_000i64..200_000_000i64,
            a_nanos in 0u32..2_000_000_000,
        ) {
            let a = Timestamp::from_timestamp(a_ms.div_euclid(1000), a_nanos)
                .unwrap_or_default();
            let b = a + chrono::Duration::milliseconds(gap_ms);
            prop_assert_eq!(span(a, b), b - a);
            prop_assert_eq!(span(b, a), a - b);
        }
    }
}
