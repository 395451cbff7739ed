//! Predictive warm capacity: what a pool's demand history says about the next provisioning
//! lead time, and how many spare slots that calls for.
//!
//! The history ([`DemandHistory`]) lives with whoever drives the policy — the reconciler, the
//! simulator — and is fed the pool's job arrivals and the lead times of its launches (launch
//! to runner registered). It predicts a [`Forecast`]: the arrival rate now and over the
//! next lead time, and the lead time itself. The forecast is an input of
//! [`plan`](crate::plan) through [`Observation::forecast`](crate::Observation::forecast); the
//! policy stays pure.
//!
//! The rate is the larger of
//! - a short-term rate: an exponentially weighted moving average of arrivals with a time
//!   constant of [`SHORT_TERM`] (a sudden rise shows within minutes, a lull fades as fast), and
//! - a seasonal rate: per 15 minutes of the day (UTC), weekdays apart from weekends, an
//!   average over the days seen of the arrivals in that quarter hour ([`DAY_WEIGHT`] for the
//!   newest day), read for the quarter hours the next lead time covers — so a morning ramp is
//!   anticipated from the previous mornings.
//!
//! After a restart the history is seeded from the CI system's recent job history where its API
//! keeps one ([`DemandHistory::seeded`], fed by [`Provider::job_history`]): the same arrivals
//! in the same order give the same rates a daemon that ran through them would have learnt.
//! The lead time is then estimated from the jobs' waits until the first launch is measured.
//!
//! [`Provider::job_history`]: crate::Provider::job_history
//!
//! Arrivals closer than 10 s to each other form a cluster (a workflow run queueing its jobs);
//! the clusters' sizes give the arrivals' dispersion.
//!
//! [`warm_slots`] turns a forecast into spare capacity: the arrivals over the part of the lead
//! time a job cannot wait for (`lead_time - target_wait`) are taken as Poisson (or, clustered,
//! negative binomial with the observed dispersion), and enough idle + booting slots are kept
//! that they all find one with probability `coverage` (a base-stock policy: each arrival that
//! takes a spare slot is replaced by a launch). Where arrivals are rare the window is most
//! likely empty and nothing is kept: a job there waits for its launch, which costs less than
//! runners idling through the night. (Asking instead that a share of the *jobs* find a spare
//! slot keeps runners idle through every quiet hour: on the simulator's workday trace that
//! cost about 9 % more of the reactive policy's cost for the same mean wait.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::adapter::PastJob;
use crate::model::Timestamp;

/// Time constant of the short-term arrival rate.
pub const SHORT_TERM: Duration = Duration::from_secs(300);
/// Weight of the newest day in a quarter hour's seasonal rate.
pub const DAY_WEIGHT: f64 = 0.3;
/// Arrivals closer than this to the previous one belong to its cluster (a workflow run's
/// jobs are queued within seconds of each other).
const CLUSTER_GAP: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// Weight of the newest cluster in the cluster-size averages.
const CLUSTER_WEIGHT: f64 = 0.05;
/// Weight of the newest lead time in the lead-time average.
const LEAD_WEIGHT: f64 = 0.2;
/// Length of a seasonal bin.
const BIN_SECS: i64 = 15 * 60;
/// Seasonal bins per day.
const BINS_PER_DAY: usize = 96;
/// At most this many empty bins are closed when time jumps (a week).
const MAX_CATCH_UP: i64 = 7 * 96;
/// A past job that waited at least this long found no spare runner: its wait stands for the
/// lead time of the launch made for it (plus up to one pass).
const LONG_WAIT: Duration = Duration::from_secs(10);
/// Fewest such waits from which a lead time is estimated.
const MIN_LEAD_SAMPLES: usize = 5;

/// A pool's `warm` setting: keep spare capacity for the arrivals the forecast expects.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warm {
    /// How long a job may wait for a runner: arrivals within this of a launch can be served
    /// by it, so only the rest of the lead time needs spare capacity.
    pub target_wait: Duration,
    /// The probability (0..1) that all the arrivals over that window find a spare slot.
    pub coverage: f64,
}

impl Warm {
    /// `warm: auto`: the defaults measured in `docs/forecast.md`.
    pub const AUTO: Warm = Warm {
        target_wait: Duration::from_secs(10),
        coverage: 0.8,
    };
}

/// What a pool's demand history predicts over the next provisioning lead time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Expected job arrivals per second.
    pub arrivals_per_sec: f64,
    /// How long a launch takes to give a usable runner (boot + registration), as observed.
    pub lead_time: Duration,
    /// How clustered arrivals are: the variance of the arrivals in a window over their mean
    /// (1 for independent arrivals; a workflow run queueing several jobs at once raises it).
    #[serde(default = "one")]
    pub dispersion: f64,
}

fn one() -> f64 {
    1.0
}

/// The spare slots (idle + booting, beyond those waiting jobs take) that `warm` asks of
/// `forecast`, at most `cap`: the fewest that hold all the arrivals over the window a job
/// cannot wait for (`lead_time - target_wait`) with probability `coverage`.
pub fn warm_slots(warm: &Warm, forecast: &Forecast, cap: u32) -> u32 {
    let window = forecast.lead_time.saturating_sub(warm.target_wait);
    let mean = forecast.arrivals_per_sec * window.as_secs_f64();
    if mean.is_nan() || mean <= 0.0 || warm.coverage.is_nan() || warm.coverage <= 0.0 {
        return 0;
    }
    quantile(mean, forecast.dispersion, warm.coverage.min(0.9999), cap)
}

/// The smallest k ≤ `cap` with P(N ≤ k) ≥ `q`. N is Poisson with this mean, or negative
/// binomial with variance `mean × dispersion` when `dispersion` > 1 (arrivals in clusters).
fn quantile(mean: f64, dispersion: f64, q: f64, cap: u32) -> u32 {
    let Some(mut pmf) = Pmf::new(mean, dispersion) else {
        // The first terms underflow (a large mean): the normal approximation.
        let k = (mean + normal_quantile(q) * (mean * dispersion.max(1.0)).sqrt()).ceil();
        return if k >= f64::from(cap) {
            cap
        } else {
            k.max(0.0) as u32
        };
    };
    let mut cdf = pmf.next_term();
    let mut k = 0u32;
    while cdf < q && k < cap {
        cdf += pmf.next_term();
        k += 1;
    }
    k
}

/// The probabilities P(N = 0), P(N = 1), ... of the arrivals in a window.
struct Pmf {
    term: f64,
    k: u32,
    /// Poisson (mean) or negative binomial (r, 1 − p).
    kind: PmfKind,
}

enum PmfKind {
    Poisson(f64),
    NegativeBinomial(f64, f64),
}

impl Pmf {
    fn new(mean: f64, dispersion: f64) -> Option<Self> {
        let (term, kind) = if dispersion > 1.01 {
            let dispersion = dispersion.min(100.0);
            let p = 1.0 / dispersion;
            let r = mean / (dispersion - 1.0);
            (p.powf(r), PmfKind::NegativeBinomial(r, 1.0 - p))
        } else {
            ((-mean).exp(), PmfKind::Poisson(mean))
        };
        (term > 0.0).then_some(Self { term, k: 0, kind })
    }

    /// P(N = k) for the next k, from 0.
    fn next_term(&mut self) -> f64 {
        let current = self.term;
        let k = f64::from(self.k);
        self.term *= match self.kind {
            PmfKind::Poisson(mean) => mean / (k + 1.0),
            PmfKind::NegativeBinomial(r, q) => (k + r) / (k + 1.0) * q,
        };
        self.k += 1;
        current
    }
}

/// The standard normal quantile, by bisection on its cumulative distribution.
fn normal_quantile(q: f64) -> f64 {
    let cdf = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let (mut lo, mut hi) = (-8.0, 8.0);
    for _ in 0..60 {
        let mid = f64::midpoint(lo, hi);
        if cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The error function (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

/// One quarter hour's seasonal rate (8 bytes: a pool keeps 192 of them).
#[derive(Clone, Copy, Debug, Default)]
struct Bin {
    /// Arrivals per second, averaged over the days seen.
    rate: f32,
    /// Days seen.
    days: u16,
}

/// A pool's demand history: arrivals and lead times. See the module docs.
#[derive(Clone, Debug)]
pub struct DemandHistory {
    /// Short-term rate (arrivals per second) as of `rate_at`.
    rate: f64,
    rate_at: Option<Timestamp>,
    /// Weekday bins, then weekend bins; allocated when the first quarter hour closes.
    bins: Vec<Bin>,
    /// The bin being counted (its index since the epoch) and its arrivals so far.
    open: Option<(i64, u32)>,
    /// Average lead time in seconds, once one was seen.
    lead_secs: Option<f64>,
    /// `lead_secs` was estimated from past jobs' waits: the first measured lead time replaces
    /// it.
    lead_estimated: bool,
    /// The cluster of arrivals being counted: its last arrival and its size.
    cluster: Option<(Timestamp, u32)>,
    /// Averages of the clusters' sizes and of their squares, once one closed.
    cluster_moments: Option<(f64, f64)>,
}

impl Default for DemandHistory {
    fn default() -> Self {
        Self {
            rate: 0.0,
            rate_at: None,
            bins: Vec::new(),
            open: None,
            lead_secs: None,
            lead_estimated: false,
            cluster: None,
            cluster_moments: None,
        }
    }
}

impl DemandHistory {
    /// A job arrived (was queued) at `at`.
    pub fn arrival(&mut self, at: Timestamp) {
        match &mut self.cluster {
            Some((last, size)) if at.signed_duration_since(*last) <= CLUSTER_GAP => {
                *last = (*last).max(at);
                *size += 1;
            }
            _ => {
                self.close_cluster();
                self.cluster = Some((at, 1));
            }
        }
        let tau = SHORT_TERM.as_secs_f64();
        self.rate = self.rate_now(at) + 1.0 / tau;
        self.rate_at = Some(self.rate_at.map_or(at, |t| t.max(at)));
        self.advance(at);
        if let Some((bin, count)) = &mut self.open
            && *bin == bin_of(at)
        {
            *count += 1;
        }
    }

    /// A launch gave a usable runner after `lead`.
    pub fn lead_time(&mut self, lead: Duration) {
        let secs = lead.as_secs_f64();
        self.lead_secs = Some(match self.lead_secs {
            Some(avg) if !self.lead_estimated => avg + LEAD_WEIGHT * (secs - avg),
            _ => secs,
        });
        self.lead_estimated = false;
    }

    /// The history a daemon that ran from `since` to `now` would have built from these past
    /// jobs' arrivals (those queued in that span, taken in time order; the seasonal bins of
    /// the quiet time before the first arrival are closed too). The lead time, which the
    /// history of jobs does not show, is estimated as the median wait (start − queued) of the
    /// jobs that waited at least 10 s and at most `max_lead` (those that found no spare runner
    /// and waited for a launch), given at least 5 of them; the first lead time measured after
    /// it replaces it. A pool whose `max` held jobs back waits longer than a launch takes:
    /// the estimate is then too long, which keeps more spares (cost), never fewer.
    pub fn seeded(since: Timestamp, jobs: &[PastJob], max_lead: Duration, now: Timestamp) -> Self {
        let mut arrivals: Vec<Timestamp> = jobs
            .iter()
            .map(|j| j.queued_at)
            .filter(|t| *t >= since && *t <= now)
            .collect();
        arrivals.sort_unstable();
        let mut h = Self::default();
        h.advance(since.min(now));
        for at in arrivals {
            h.arrival(at);
        }
        h.advance(now);
        h.lead_secs = estimated_lead(jobs, max_lead);
        h.lead_estimated = h.lead_secs.is_some();
        h
    }

    /// Takes over `seeded` (built by [`DemandHistory::seeded`] while this one ran), keeping
    /// the lead time this one measured, if any. Arrivals this one counted since the read are
    /// in the seeded history already (the read covers them) or, if they came after it, lost:
    /// a few seconds' worth at most.
    pub fn adopt(&mut self, seeded: DemandHistory) {
        let measured = self.lead_secs.filter(|_| !self.lead_estimated);
        *self = seeded;
        if measured.is_some() {
            self.lead_secs = measured;
            self.lead_estimated = false;
        }
    }

    /// The lead time estimated from past jobs' waits, until one is measured.
    pub fn estimated_lead(&self) -> Option<Duration> {
        self.lead_secs
            .filter(|_| self.lead_estimated)
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
    }

    /// Whether any arrival was counted (by [`DemandHistory::arrival`] or a seed).
    pub fn has_arrivals(&self) -> bool {
        self.rate_at.is_some()
    }

    /// What the history predicts at `now`: `None` until a lead time was seen.
    pub fn forecast(&mut self, now: Timestamp) -> Option<Forecast> {
        let lead = self.lead_secs?;
        self.advance(now);
        let short = self.rate_now(now);
        let seasonal = self.seasonal(now, lead);
        Some(Forecast {
            arrivals_per_sec: short.max(seasonal),
            lead_time: Duration::from_secs_f64(lead.max(0.0)),
            dispersion: self.dispersion(),
        })
    }

    fn close_cluster(&mut self) {
        let Some((_, size)) = self.cluster.take() else {
            return;
        };
        let (m1, m2) = (f64::from(size), f64::from(size) * f64::from(size));
        self.cluster_moments = Some(match self.cluster_moments {
            Some((a, b)) => (a + CLUSTER_WEIGHT * (m1 - a), b + CLUSTER_WEIGHT * (m2 - b)),
            None => (m1, m2),
        });
    }

    /// The arrivals' dispersion: E[size²] / E[size] of their clusters (1 for single arrivals).
    fn dispersion(&self) -> f64 {
        match self.cluster_moments {
            Some((m1, m2)) if m1 > 0.0 => (m2 / m1).max(1.0),
            _ => 1.0,
        }
    }

    /// The short-term rate decayed to `at`.
    fn rate_now(&self, at: Timestamp) -> f64 {
        match self.rate_at {
            Some(t) if at > t => {
                let dt = (at - t).num_milliseconds() as f64 / 1000.0;
                self.rate * (-dt / SHORT_TERM.as_secs_f64()).exp()
            }
            _ => self.rate,
        }
    }

    /// The largest seasonal rate of the quarter hours from `now` to `now + lead`.
    fn seasonal(&self, now: Timestamp, lead: f64) -> f64 {
        let first = bin_of(now);
        let last = bin_of(now + chrono::Duration::milliseconds((lead * 1000.0) as i64));
        (first..=last.min(first + 4))
            .filter_map(|b| self.bins.get(slot(b)))
            .filter(|b| b.days > 0)
            .map(|b| f64::from(b.rate))
            .fold(0.0, f64::max)
    }

    /// Closes the bins that ended before `now` (empty ones count as days without arrivals)
    /// and opens `now`'s.
    fn advance(&mut self, now: Timestamp) {
        let current = bin_of(now);
        match self.open {
            None => self.open = Some((current, 0)),
            Some((bin, _)) if bin >= current => {}
            Some((bin, count)) => {
                self.close(bin, count);
                let from = (bin + 1).max(current - MAX_CATCH_UP);
                for b in from..current {
                    self.close(b, 0);
                }
                self.open = Some((current, 0));
            }
        }
    }

    fn close(&mut self, bin: i64, count: u32) {
        if self.bins.is_empty() {
            self.bins = vec![Bin::default(); 2 * BINS_PER_DAY];
        }
        let rate = f64::from(count) / BIN_SECS as f64;
        let b = &mut self.bins[slot(bin)];
        let old = f64::from(b.rate);
        b.rate = if b.days == 0 {
            rate as f32
        } else {
            (old + DAY_WEIGHT * (rate - old)) as f32
        };
        b.days = b.days.saturating_add(1);
    }
}

/// The median wait of the past jobs that waited for a launch (see [`DemandHistory::seeded`]),
/// in seconds.
fn estimated_lead(jobs: &[PastJob], max_lead: Duration) -> Option<f64> {
    let mut waits: Vec<f64> = jobs
        .iter()
        .filter_map(|j| {
            j.started_at?
                .signed_duration_since(j.queued_at)
                .to_std()
                .ok()
        })
        .filter(|w| *w >= LONG_WAIT && *w <= max_lead)
        .map(|w| w.as_secs_f64())
        .collect();
    if waits.len() < MIN_LEAD_SAMPLES {
        return None;
    }
    waits.sort_unstable_by(f64::total_cmp);
    Some(waits[waits.len() / 2])
}

/// The index of the quarter hour holding `t`, since the epoch.
fn bin_of(t: Timestamp) -> i64 {
    t.timestamp().div_euclid(BIN_SECS)
}

/// The seasonal slot of a quarter hour: its time of day, weekdays and weekends apart.
fn slot(bin: i64) -> usize {
    let day = bin.div_euclid(BINS_PER_DAY as i64);
    // 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday = 0).
    let weekend = (day + 3).rem_euclid(7) >= 5;
    let of_day = bin.rem_euclid(BINS_PER_DAY as i64) as usize;
    of_day + if weekend { BINS_PER_DAY } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(day: u32, h: u32, m: u32, s: u32) -> Timestamp {
        // 2026-12-07 is a Monday.
        Utc.with_ymd_and_hms(2026, 12, 7 + day, h, m, s)
            .single()
            .expect("a time")
    }

    #[test]
    fn quantiles() {
        // Poisson, mean 1: P(N = 0) ≈ 0.368, P(N ≤ 1) ≈ 0.736, P(N ≤ 2) ≈ 0.920.
        assert_eq!(quantile(1.0, 1.0, 0.3, 100), 0);
        assert_eq!(quantile(1.0, 1.0, 0.7, 100), 1);
        assert_eq!(quantile(1.0, 1.0, 0.9, 100), 2);
        assert_eq!(quantile(1.0, 1.0, 0.95, 100), 3);
        assert_eq!(quantile(1000.0, 1.0, 0.5, 10_000), 1000);
        assert!((1040..=1060).contains(&quantile(1000.0, 1.0, 0.95, 10_000)));
        assert_eq!(quantile(50.0, 1.0, 0.99, 10), 10, "capped");
        // A dispersion of 1 is Poisson.
        assert_eq!(quantile(3.0, 1.0, 0.9, 100), quantile(3.0, 1.005, 0.9, 100));
    }

    #[test]
    fn clustered_arrivals_have_a_longer_tail() {
        // Mean 10, variance 40: the median is below the mean, the 95th percentile far above.
        let median = quantile(10.0, 4.0, 0.5, 100);
        let p95 = quantile(10.0, 4.0, 0.95, 100);
        assert!((7..=10).contains(&median), "{median}");
        assert!((20..=24).contains(&p95), "{p95}");
        assert!(p95 > quantile(10.0, 1.0, 0.95, 100) + 3);
    }

    #[test]
    fn no_spare_capacity_without_arrivals_or_when_the_lead_time_is_within_the_target() {
        let warm = Warm::AUTO;
        let quiet = Forecast {
            arrivals_per_sec: 0.0,
            lead_time: Duration::from_secs(60),
            dispersion: 1.0,
        };
        assert_eq!(warm_slots(&warm, &quiet, 50), 0);
        let fast = Forecast {
            arrivals_per_sec: 5.0,
            lead_time: Duration::from_secs(8),
            dispersion: 1.0,
        };
        assert_eq!(warm_slots(&warm, &fast, 50), 0);
        let busy = Forecast {
            arrivals_per_sec: 0.1,
            lead_time: Duration::from_secs(60),
            dispersion: 1.0,
        };
        // 5 arrivals expected in the 50 s a job cannot wait for: P(N ≤ 6) ≈ 0.76, P(N ≤ 7)
        // ≈ 0.87.
        assert_eq!(warm_slots(&warm, &busy, 50), 7);
    }

    #[test]
    fn the_short_term_rate_follows_a_steady_stream_and_fades_after_it() {
        let mut h = DemandHistory::default();
        assert_eq!(h.forecast(at(0, 9, 0, 0)), None, "no lead time seen yet");
        h.lead_time(Duration::from_secs(50));
        // One job every 10 s for an hour.
        for i in 0..360 {
            h.arrival(at(0, 9, 0, 0) + chrono::Duration::seconds(i * 10));
        }
        let f = h.forecast(at(0, 10, 0, 0)).expect("a forecast");
        assert!((f.arrivals_per_sec - 0.1).abs() < 0.01, "{f:?}");
        assert_eq!(f.lead_time, Duration::from_secs(50));
        // An hour later (no seasonal data for a weekday morning yet beyond today's).
        let later = h.forecast(at(0, 11, 0, 0)).expect("a forecast");
        assert!(later.arrivals_per_sec < 0.001, "{later:?}");
    }

    #[test]
    fn a_morning_ramp_is_anticipated_from_the_previous_weekdays() {
        let mut h = DemandHistory::default();
        h.lead_time(Duration::from_secs(60));
        // Monday to Thursday: 60 jobs between 09:00 and 09:15, nothing else.
        for day in 0..4 {
            for i in 0..60 {
                h.arrival(at(day, 9, 0, 0) + chrono::Duration::seconds(i * 15));
            }
        }
        // Friday 08:59:30: nothing arrived since Thursday, but the 09:00 quarter hour is near.
        let f = h.forecast(at(4, 8, 59, 30)).expect("a forecast");
        assert!(
            (f.arrivals_per_sec - 60.0 / 900.0).abs() < 0.01,
            "the 09:00 rate of the previous days: {f:?}"
        );
        // Saturday 08:59:30: weekends are apart, and none was seen.
        let f = h.forecast(at(5, 8, 59, 30)).expect("a forecast");
        assert!(f.arrivals_per_sec < 0.001, "{f:?}");
        // Friday 12:00: a weekday quarter hour without arrivals.
        let f = h.forecast(at(4, 12, 0, 0)).expect("a forecast");
        assert!(f.arrivals_per_sec < 0.001, "{f:?}");
    }

    #[test]
    fn clusters_of_arrivals_raise_the_dispersion() {
        let mut h = DemandHistory::default();
        h.lead_time(Duration::from_secs(60));
        // A run of 4 jobs every 5 minutes.
        for run in 0..40 {
            for j in 0..4 {
                h.arrival(at(0, 9, 0, 0) + chrono::Duration::seconds(run * 300 + j));
            }
        }
        let f = h.forecast(at(0, 12, 20, 0)).expect("a forecast");
        assert!((f.dispersion - 4.0).abs() < 0.01, "{f:?}");
        let mut single = DemandHistory::default();
        single.lead_time(Duration::from_secs(60));
        for i in 0..40 {
            single.arrival(at(0, 9, 0, 0) + chrono::Duration::seconds(i * 60));
        }
        let f = single.forecast(at(0, 9, 40, 0)).expect("a forecast");
        assert!((f.dispersion - 1.0).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn lead_times_are_averaged() {
        let mut h = DemandHistory::default();
        h.lead_time(Duration::from_secs(40));
        h.lead_time(Duration::from_secs(90));
        let f = h.forecast(at(0, 0, 0, 0)).expect("a forecast");
        assert_eq!(f.lead_time, Duration::from_secs(50));
    }

    /// Two weeks' trace from Monday 00:00: on weekdays a job every 90 s from 09:00 to 12:00,
    /// and a run of three jobs at 10:00; each started 45 s after it was queued.
    fn two_weeks() -> Vec<PastJob> {
        let mut jobs = Vec::new();
        for day in (0..11).filter(|d| d % 7 < 5) {
            let mut queued: Vec<Timestamp> = (0..120)
                .map(|i| at(day, 9, 0, 0) + chrono::Duration::seconds(i * 90))
                .collect();
            queued.extend((0..3).map(|j| at(day, 10, 0, 20) + chrono::Duration::seconds(j)));
            jobs.extend(queued.into_iter().map(|q| PastJob {
                queued_at: q,
                started_at: Some(q + chrono::Duration::seconds(45)),
            }));
        }
        jobs
    }

    /// What a daemon passing every 30 s from `since` to `now` learnt from `jobs`.
    fn ran_through(since: Timestamp, jobs: &[PastJob], now: Timestamp) -> DemandHistory {
        let mut queued: Vec<Timestamp> = jobs.iter().map(|j| j.queued_at).collect();
        queued.sort_unstable();
        let mut h = DemandHistory::default();
        h.lead_time(Duration::from_secs(45));
        let (mut t, mut next) = (since, 0);
        while t <= now {
            while next < queued.len() && queued[next] <= t {
                h.arrival(queued[next]);
                next += 1;
            }
            h.forecast(t);
            t += chrono::Duration::seconds(30);
        }
        h
    }

    #[test]
    fn a_seeded_history_forecasts_as_one_that_ran_through_the_same_jobs() {
        let jobs = two_weeks();
        let (since, now) = (at(0, 0, 0, 0), at(11, 8, 58, 0));
        let mut ran = ran_through(since, &jobs, now);
        let mut seeded = DemandHistory::seeded(since, &jobs, Duration::from_secs(600), now);
        // Friday 08:58, the next morning's ramp ahead, then during it and after it.
        for t in [now, at(11, 9, 30, 0), at(11, 10, 0, 0), at(11, 14, 0, 0)] {
            let a = ran.forecast(t).expect("a forecast");
            let b = seeded.forecast(t).expect("a forecast");
            // Tolerance: 1 % of the rate (plus 1e-9/s), 1 % of the dispersion, the same lead.
            let close = |x: f64, y: f64| (x - y).abs() <= 0.01 * x.abs().max(y.abs()) + 1e-9;
            assert!(
                close(a.arrivals_per_sec, b.arrivals_per_sec),
                "{t}: {a:?} {b:?}"
            );
            assert!(close(a.dispersion, b.dispersion), "{t}: {a:?} {b:?}");
            assert_eq!(a.lead_time, b.lead_time, "{t}");
        }
        // Seeded, Friday 08:59:30 keeps a spare for the ramp the previous mornings showed.
        let mut seeded = DemandHistory::seeded(since, &jobs, Duration::from_secs(600), now);
        let f = seeded.forecast(at(11, 8, 59, 30)).expect("a forecast");
        assert_eq!(warm_slots(&Warm::AUTO, &f, 50), 1, "{f:?}");
        assert_eq!(
            DemandHistory::default().forecast(now),
            None,
            "empty: no forecast"
        );
    }

    #[test]
    fn the_seeded_lead_time_comes_from_long_waits_and_yields_to_a_measured_one() {
        let job = |wait: i64| PastJob {
            queued_at: at(0, 9, 0, 0),
            started_at: Some(at(0, 9, 0, 0) + chrono::Duration::seconds(wait)),
        };
        // Jobs that found a spare runner (2 s) and one held past `max_lead` do not count.
        let jobs: Vec<PastJob> = [2, 2, 2, 2, 40, 50, 60, 70, 80, 5000]
            .into_iter()
            .map(job)
            .collect();
        let (since, now) = (at(0, 0, 0, 0), at(0, 12, 0, 0));
        let max = Duration::from_secs(600);
        let mut h = DemandHistory::seeded(since, &jobs, max, now);
        assert_eq!(
            h.forecast(now).map(|f| f.lead_time),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            DemandHistory::seeded(since, &jobs[..8], max, now).forecast(now),
            None
        );
        // A lead time measured while the seed was read is kept; a later one replaces the
        // estimate.
        let mut live = DemandHistory::default();
        live.lead_time(Duration::from_secs(30));
        live.adopt(DemandHistory::seeded(since, &jobs, max, now));
        assert!(live.has_arrivals());
        assert_eq!(
            live.forecast(now).map(|f| f.lead_time),
            Some(Duration::from_secs(30))
        );
        h.lead_time(Duration::from_secs(20));
        assert_eq!(
            h.forecast(now).map(|f| f.lead_time),
            Some(Duration::from_secs(20))
        );
    }
}
