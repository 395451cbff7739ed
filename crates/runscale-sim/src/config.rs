//! What is simulated besides the trace: the pools jobs are routed to, and the parameters of
//! the simulated world (how fast runscale learns about a job, how often it passes, how long a
//! runner takes to register).
//!
//! Not here: runscale's YAML configuration. The binary converts its pools into [`SimPool`]s.

use std::time::Duration;

use runscale_core::{PoolId, PoolSpec};
use serde::Serialize;

use crate::SimError;

/// One pool of the simulation: runscale's [`PoolSpec`] plus the label selector that routes
/// jobs to it.
#[derive(Clone, Debug)]
pub struct SimPool {
    /// Limits, timeouts, slots per instance (`runners_per_instance`) and `ephemeral`.
    pub spec: PoolSpec,
    /// A job goes to the first pool whose labels include every label of the job
    /// (case-insensitive; `self-hosted` is implied). Empty matches every job. A trace's `pool`
    /// column overrides the selector.
    pub labels: Vec<String>,
}

impl SimPool {
    /// One pool named `default` that matches every job, with runscale's defaults: max 50,
    /// min_idle 0, idle_timeout 5 min, boot_timeout 5 min, ephemeral runners, one runner per
    /// instance, max_booting = max, no launch-rate limit, no scale-down delay.
    pub fn default_pool() -> Self {
        SimPool {
            spec: PoolSpec {
                name: PoolId::new("default"),
                min_idle: 0,
                max: 50,
                max_booting: 50,
                launches_per_minute: 0,
                boot_timeout: Duration::from_secs(300),
                idle_timeout: Duration::from_secs(300),
                max_lifetime: None,
                scale_down_delay: Duration::ZERO,
                schedules: Vec::new(),
                runners_per_instance: 1,
                ephemeral: true,
                template_hash: "sim".to_owned(),
                runners_unattributed: false,
                warm: Some(runscale_core::Warm::AUTO),
                reuse: None,
            },
            labels: Vec::new(),
        }
    }

    /// Whether a job with these labels is routed here by the selector.
    pub fn matches(&self, job_labels: &[String]) -> bool {
        self.labels.is_empty()
            || job_labels.iter().all(|l| {
                l.eq_ignore_ascii_case("self-hosted")
                    || self.labels.iter().any(|p| p.eq_ignore_ascii_case(l))
            })
    }

    /// Checks the pool; `index` is its position, for the error's field path.
    pub fn validate(&self, index: usize) -> Result<(), SimError> {
        let bad = |field: &'static str, message: String| SimError::Invalid { field, message };
        if self.spec.name.as_str().is_empty() {
            return Err(bad(
                "pools[].name",
                format!("pool {index} has an empty name"),
            ));
        }
        if self.spec.max == 0 {
            return Err(bad(
                "pools[].max",
                format!("pool `{}`: max must be at least 1", self.spec.name),
            ));
        }
        if self.spec.runners_per_instance == 0 || self.spec.runners_per_instance > 64 {
            return Err(bad(
                "pools[].runners_per_instance",
                format!(
                    "pool `{}`: runners_per_instance must be 1..=64",
                    self.spec.name
                ),
            ));
        }
        Ok(())
    }
}

/// How runscale learns that a job was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Detection {
    /// A webhook wakes the pool this long after the job is queued.
    Webhook {
        /// Delivery latency.
        #[serde(with = "secs")]
        latency: Duration,
    },
    /// No webhook: passes run on the pass interval only.
    Poll,
}

/// Parameters of the simulated world.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorldParams {
    /// How runscale learns about new jobs (baselines use their own documented mechanism; the
    /// webhook-driven ones reuse this latency).
    pub detection: Detection,
    /// A "job completed" webhook also wakes runscale's pool, not only "job queued" (runscale's
    /// GitHub provider wakes the matching pools on every `workflow_job` delivery, so this is
    /// on by default). Under saturation runscale then reacts to freed capacity within the
    /// webhook latency instead of the held-back requeue (up to 5 s). Off halves the `plan`
    /// calls, for providers that only poll.
    pub wake_on_completion: bool,
    /// runscale's reconciler interval: a pool with nothing due is passed this often.
    #[serde(with = "secs")]
    pub pass_interval: Duration,
    /// How long one pass takes (observe + act), for every policy (the clairvoyant bound has
    /// no passes). Wake-ups during a pass coalesce into one more pass right after it.
    #[serde(with = "secs")]
    pub pass_latency: Duration,
    /// From the end of an instance's boot until its runners are online (runner start-up and
    /// registration with the CI system).
    #[serde(with = "secs")]
    pub registration_delay: Duration,
    /// An instance whose runners all left (ephemeral runners after their job) shuts itself
    /// down, as a pod or a `single-task` VM does.
    pub instance_exits_when_runners_leave: bool,
    /// After the last job finished, instances still running are paid for at most this long
    /// (then the simulation ends).
    #[serde(with = "secs")]
    pub drain_window: Duration,
    /// Jobs not started this long after the last arrival count as never run.
    #[serde(with = "secs")]
    pub give_up_after: Duration,
}

impl Default for WorldParams {
    fn default() -> Self {
        Self {
            detection: Detection::Webhook {
                latency: Duration::from_secs(1),
            },
            wake_on_completion: true,
            pass_interval: Duration::from_secs(30),
            pass_latency: Duration::from_millis(500),
            registration_delay: Duration::from_secs(5),
            instance_exits_when_runners_leave: true,
            drain_window: Duration::from_secs(6 * 3600),
            give_up_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl WorldParams {
    /// Checks the parameters; errors name the field.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.pass_interval < Duration::from_secs(1) {
            return Err(SimError::Invalid {
                field: "world.pass_interval",
                message: "must be at least 1s".to_owned(),
            });
        }
        if self.give_up_after < Duration::from_secs(60) {
            return Err(SimError::Invalid {
                field: "world.give_up_after",
                message: "must be at least 1m".to_owned(),
            });
        }
        Ok(())
    }
}

mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_needs_every_job_label() {
        let mut p = SimPool::default_pool();
        assert!(p.matches(&["gpu".to_owned()]), "empty selector matches all");
        p.labels = vec!["linux".into(), "X64".into()];
        assert!(p.matches(&["self-hosted".into(), "Linux".into(), "x64".into()]));
        assert!(!p.matches(&["linux".into(), "gpu".into()]));
        assert!(p.matches(&[]));
    }
}

/// A `warm` setting given on the command line: `off`, `auto`, or `TARGET_WAIT[@COVERAGE]`
/// (`10s`, `5s@0.9`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmArg(pub Option<runscale_core::Warm>);

impl std::str::FromStr for WarmArg {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: String| SimError::Invalid {
            field: "warm",
            message,
        };
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "off" => return Ok(Self(None)),
            "auto" => return Ok(Self(Some(runscale_core::Warm::AUTO))),
            _ => {}
        }
        let (wait, coverage) = s.split_once('@').unwrap_or((s, ""));
        let target_wait = humantime::parse_duration(wait.trim()).map_err(|e| {
            bad(format!(
                "`{wait}` is not a duration ({e}); expected off, auto or TARGET_WAIT[@COVERAGE]"
            ))
        })?;
        let coverage = if coverage.is_empty() {
            runscale_core::Warm::AUTO.coverage
        } else {
            coverage
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|c| *c > 0.0 && *c < 1.0)
                .ok_or_else(|| bad(format!("coverage `{coverage}` must be above 0 and below 1")))?
        };
        if target_wait > Duration::from_secs(3600) {
            return Err(bad("target wait must be at most 1h".to_owned()));
        }
        Ok(Self(Some(runscale_core::Warm {
            target_wait,
            coverage,
        })))
    }
}

impl std::fmt::Display for WarmArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(w) => write!(
                f,
                "{}@{}",
                humantime::format_duration(w.target_wait),
                w.coverage
            ),
        }
    }
}

/// A `reuse` setting given on the command line: `off`, or `MAX_USES[@MAX_AGE]` (`10`,
/// `10@12h`; the age defaults to 12h, as in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseArg(pub Option<runscale_core::Reuse>);

impl std::str::FromStr for ReuseArg {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: String| SimError::Invalid {
            field: "reuse",
            message,
        };
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        let (uses, age) = s.split_once('@').unwrap_or((s, "12h"));
        let max_uses = uses
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (2..=1000).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "`{uses}` is not a use count from 2 to 1000; expected off or \
                     MAX_USES[@MAX_AGE]"
                ))
            })?;
        let max_age = humantime::parse_duration(age.trim())
            .map_err(|e| bad(format!("`{age}` is not a duration ({e})")))?;
        if max_age.is_zero() || max_age > Duration::from_secs(7 * 24 * 3600) {
            return Err(bad("max age must be above 0 and at most 7 days".to_owned()));
        }
        Ok(Self(Some(runscale_core::Reuse { max_uses, max_age })))
    }
}

/// `--sweep`: runscale's policy once per `warm` setting, each a row of its own, to draw its
/// cost-against-wait frontier. `target_wait=0s,5s,10s` (coverage from `--warm`, else `auto`'s),
/// `coverage=0.6,0.8,0.9` (target wait likewise), or `warm=off,10s@0.8,5s@0.9`.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepArg(pub Vec<WarmArg>);

impl SweepArg {
    /// Parses `spec` with `base` the setting the other parameter comes from.
    pub fn parse(spec: &str, base: Option<runscale_core::Warm>) -> Result<Self, SimError> {
        let bad = |message: String| SimError::Invalid {
            field: "sweep",
            message,
        };
        let base = base.unwrap_or(runscale_core::Warm::AUTO);
        let (key, values) = spec.split_once('=').ok_or_else(|| {
            bad(format!(
                "`{spec}`: expected target_wait=..., coverage=... or warm=..., values separated by commas"
            ))
        })?;
        let values: Vec<&str> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() || values.len() > 20 {
            return Err(bad(format!("`{spec}`: give 1 to 20 values")));
        }
        let settings = values
            .iter()
            .map(|v| match key.trim() {
                "warm" => v.parse::<WarmArg>(),
                "target_wait" => format!("{v}@{}", base.coverage).parse::<WarmArg>(),
                "coverage" => format!("{}@{v}", humantime::format_duration(base.target_wait))
                    .parse::<WarmArg>(),
                other => Err(bad(format!(
                    "unknown parameter `{other}`; expected target_wait, coverage or warm"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(settings))
    }
}
