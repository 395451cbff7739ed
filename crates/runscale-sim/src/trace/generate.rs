//! Synthetic workloads, deterministic for a seed. Each describes one day starting Monday
//! 2025-03-03 00:00 UTC (repeat with [`GenOptions::days`]); jobs come in workflow runs that
//! share a `run` id. Durations are log-normal.
//!
//! - `workday`: a working day with a morning ramp (07:00–09:00), a lunch dip (12:00–13:00),
//!   an afternoon peak and a quiet night; runs of 1–6 jobs; median job 5 min. About 2,800
//!   jobs, peak concurrency around 35 (bursts of runs touch a max of 50). Labels: 80 % `linux x64`, 15 % `linux arm64`,
//!   5 % `linux x64 gpu`.
//! - `burst`: a monorepo push storm: light background from 08:00, then at 10:00 thirty
//!   pushes within 15 minutes, each fanning out to 8–24 jobs, and a second storm of twelve
//!   pushes within 5 minutes at 12:30. Median job 4 min. About 850 jobs.
//! - `nightly`: a cron spike: 100 scheduled workflows (1–3 jobs, median 25 min) start between
//!   02:00 and 02:01:30, fifty more single jobs at 04:00, light background all day. About 540
//!   jobs.
//! - `matrix`: matrix fan-out from 08:00 to 18:00: a run every 6 minutes on average, each a
//!   matrix of 6, 12, 24 or 48 jobs queued together with similar durations (median 8 min).
//!   About 1,700 jobs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};
use runscale_core::Timestamp;

use super::{Trace, TraceJob};
use crate::SimError;

/// A generated workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeneratorKind {
    /// A working day: morning ramp, lunch dip, afternoon peak.
    Workday,
    /// A monorepo push storm.
    Burst,
    /// A nightly cron spike.
    Nightly,
    /// Matrix fan-out.
    Matrix,
}

impl GeneratorKind {
    /// Every generator, in documentation order.
    pub const ALL: [GeneratorKind; 4] = [
        GeneratorKind::Workday,
        GeneratorKind::Burst,
        GeneratorKind::Nightly,
        GeneratorKind::Matrix,
    ];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            GeneratorKind::Workday => "workday",
            GeneratorKind::Burst => "burst",
            GeneratorKind::Nightly => "nightly",
            GeneratorKind::Matrix => "matrix",
        }
    }
}

impl fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GeneratorKind {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GeneratorKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| SimError::Invalid {
                field: "generate",
                message: format!(
                    "unknown generator `{s}`; expected workday, burst, nightly or matrix"
                ),
            })
    }
}

/// Scaling knobs of a generator (the CLI uses the defaults; benchmarks scale up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenOptions {
    /// Consecutive days generated (each a fresh draw of the same pattern).
    pub days: u32,
    /// Multiplies every arrival rate and storm size.
    pub intensity: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            days: 1,
            intensity: 1.0,
        }
    }
}

impl GenOptions {
    /// The most days a generator draws.
    pub const MAX_DAYS: u32 = 60;
    /// The largest intensity.
    pub const MAX_INTENSITY: f64 = 20.0;

    /// Checks the options: 1 to [`Self::MAX_DAYS`] days, an intensity above 0 and at most
    /// [`Self::MAX_INTENSITY`].
    pub fn validate(&self) -> Result<(), SimError> {
        if self.days == 0 || self.days > Self::MAX_DAYS {
            return Err(SimError::Invalid {
                field: "days",
                message: format!("{} days: give 1 to {}", self.days, Self::MAX_DAYS),
            });
        }
        if !(self.intensity > 0.0 && self.intensity <= Self::MAX_INTENSITY) {
            return Err(SimError::Invalid {
                field: "intensity",
                message: format!(
                    "{}: must be above 0 and at most {}",
                    self.intensity,
                    Self::MAX_INTENSITY
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for GenOptions {
    /// `days=2 intensity=1.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "days={} intensity={}", self.days, self.intensity)
    }
}

/// Generates a workload with default options.
pub fn generate(kind: GeneratorKind, seed: u64) -> Trace {
    generate_with(kind, seed, &GenOptions::default())
}

/// The first day generated: Monday 2025-03-03 00:00 UTC.
pub fn epoch() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2025, 3, 3, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

struct Gen {
    rng: StdRng,
    jobs: Vec<TraceJob>,
    runs: u64,
    kind: GeneratorKind,
    x64: Arc<[String]>,
    arm: Arc<[String]>,
    gpu: Arc<[String]>,
}

fn labels(ls: &[&str]) -> Arc<[String]> {
    ls.iter().map(|s| (*s).to_owned()).collect()
}

fn ms(t: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((t * 1000.0).round() as i64)
}

impl Gen {
    fn lognormal(&mut self, median_s: f64, sigma: f64, lo: f64, hi: f64) -> Duration {
        let d = LogNormal::new(median_s.ln(), sigma)
            .map(|d| d.sample(&mut self.rng))
            .unwrap_or(median_s);
        Duration::from_secs_f64(d.clamp(lo, hi))
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        Poisson::new(mean)
            .map(|p| p.sample(&mut self.rng) as u64)
            .unwrap_or(0)
    }

    fn pick_labels(&mut self) -> Arc<[String]> {
        let x: f64 = self.rng.random();
        if x < 0.80 {
            self.x64.clone()
        } else if x < 0.95 {
            self.arm.clone()
        } else {
            self.gpu.clone()
        }
    }

    /// One run of `jobs` jobs queued at `at` plus up to `spread` seconds each.
    fn run(
        &mut self,
        at: Timestamp,
        jobs: usize,
        spread: f64,
        mut duration: impl FnMut(&mut Self) -> Duration,
    ) {
        self.runs += 1;
        let run = format!("{}-{}", self.kind, self.runs);
        let labels = self.pick_labels();
        for _ in 0..jobs {
            let jitter = self.rng.random_range(0.0..=spread.max(0.0));
            let d = duration(self);
            self.jobs.push(TraceJob {
                queued_at: at + ms(jitter),
                duration: d,
                labels: labels.clone(),
                pool: None,
                run: Some(run.clone()),
            });
        }
    }

    /// Runs arriving as a Poisson process whose rate (runs per minute) depends on the hour.
    fn background(
        &mut self,
        day: Timestamp,
        from_h: f64,
        to_h: f64,
        runs_per_min: impl Fn(f64) -> f64,
        mut jobs_per_run: impl FnMut(&mut Self) -> usize,
        duration: impl Fn(&mut Self) -> Duration + Copy,
    ) {
        let mut minute = (from_h * 60.0) as i64;
        while (minute as f64) < to_h * 60.0 {
            let rate = runs_per_min(minute as f64 / 60.0);
            let n = self.poisson(rate);
            for _ in 0..n {
                let at = day + ms(minute as f64 * 60.0 + self.rng.random_range(0.0..60.0));
                let k = jobs_per_run(self);
                self.run(at, k, 5.0, duration);
            }
            minute += 1;
        }
    }
}

/// Piecewise-linear interpolation of `(hour, value)` points.
fn curve(points: &[(f64, f64)], h: f64) -> f64 {
    for w in points.windows(2) {
        let ((h0, v0), (h1, v1)) = (w[0], w[1]);
        if h >= h0 && h < h1 {
            return v0 + (v1 - v0) * (h - h0) / (h1 - h0);
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

/// Generates a workload with explicit options.
pub fn generate_with(kind: GeneratorKind, seed: u64, opts: &GenOptions) -> Trace {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed ^ 0x5eed_0000_0000_0000 ^ (kind as u64) << 32),
        jobs: Vec::new(),
        runs: 0,
        kind,
        x64: labels(&["self-hosted", "linux", "x64"]),
        arm: labels(&["self-hosted", "linux", "arm64"]),
        gpu: labels(&["self-hosted", "linux", "x64", "gpu"]),
    };
    let k = opts.intensity.max(0.0);
    for d in 0..opts.days.max(1) {
        let day = epoch() + chrono::Duration::days(i64::from(d));
        match kind {
            GeneratorKind::Workday => {
                // Jobs per minute by hour; a run averages 19/7 jobs.
                let jobs_per_min = [
                    (0.0, 0.3),
                    (7.0, 0.3),
                    (9.0, 4.0),
                    (12.0, 4.0),
                    (12.25, 1.5),
                    (12.75, 1.5),
                    (13.0, 4.5),
                    (17.0, 4.5),
                    (20.0, 0.5),
                    (24.0, 0.5),
                ];
                g.background(
                    day,
                    0.0,
                    24.0,
                    |h| k * curve(&jobs_per_min, h) / (19.0 / 7.0),
                    |g| [1, 1, 2, 2, 3, 4, 6][g.rng.random_range(0..7)],
                    |g| g.lognormal(300.0, 0.8, 30.0, 7200.0),
                );
            }
            GeneratorKind::Burst => {
                let dur = |g: &mut Gen| g.lognormal(240.0, 0.6, 30.0, 3600.0);
                g.background(
                    day,
                    8.0,
                    14.0,
                    |_| k * 0.5 / 2.0,
                    |g| g.rng.random_range(1..=3),
                    dur,
                );
                for (start_h, pushes, window_s) in [(10.0, 30.0, 900.0), (12.5, 12.0, 300.0)] {
                    let n = (pushes * k).round() as usize;
                    for _ in 0..n {
                        let at = day + ms(start_h * 3600.0 + g.rng.random_range(0.0..window_s));
                        let jobs = g.rng.random_range(8..=24);
                        g.run(at, jobs, 10.0, dur);
                    }
                }
            }
            GeneratorKind::Nightly => {
                let dur_bg = |g: &mut Gen| g.lognormal(300.0, 0.8, 30.0, 7200.0);
                g.background(
                    day,
                    0.0,
                    24.0,
                    |_| k * 0.2 / 2.0,
                    |g| g.rng.random_range(1..=3),
                    dur_bg,
                );
                let n = (100.0 * k).round() as usize;
                for _ in 0..n {
                    let at = day + ms(2.0 * 3600.0 + g.rng.random_range(0.0..90.0));
                    let jobs = g.rng.random_range(1..=3);
                    g.run(at, jobs, 2.0, |g| {
                        g.lognormal(1500.0, 0.5, 60.0, 3.0 * 3600.0)
                    });
                }
                let n = (50.0 * k).round() as usize;
                for _ in 0..n {
                    let at = day + ms(4.0 * 3600.0 + g.rng.random_range(0.0..60.0));
                    g.run(at, 1, 0.0, |g| g.lognormal(600.0, 0.5, 60.0, 3600.0));
                }
            }
            GeneratorKind::Matrix => {
                let mut minute = 8 * 60;
                while minute < 18 * 60 {
                    let n = g.poisson(k / 6.0);
                    for _ in 0..n {
                        let at = day + ms(f64::from(minute) * 60.0 + g.rng.random_range(0.0..60.0));
                        let size = [6, 6, 6, 12, 12, 12, 24, 24, 48][g.rng.random_range(0..9)];
                        let base = g.lognormal(480.0, 0.5, 60.0, 3600.0).as_secs_f64();
                        g.run(at, size, 3.0, move |g| {
                            g.lognormal(base, 0.25, 30.0, 7200.0)
                        });
                    }
                    minute += 1;
                }
            }
        }
    }
    g.jobs.sort_by_key(|j| j.queued_at);
    let suffix = if *opts == GenOptions::default() {
        String::new()
    } else {
        format!(" {opts}")
    };
    Trace {
        source: format!("generate:{kind} seed={seed}{suffix}"),
        jobs: g.jobs,
        skipped: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_bounded_and_named_in_the_source() {
        let opts = |days, intensity| GenOptions { days, intensity };
        for (bad, field) in [
            (opts(0, 1.0), "days"),
            (opts(61, 1.0), "days"),
            (opts(1, 0.0), "intensity"),
            (opts(1, 21.0), "intensity"),
            (opts(1, f64::NAN), "intensity"),
        ] {
            let e = bad.validate().expect_err("rejected").to_string();
            assert!(e.starts_with(&format!("invalid {field}")), "{e}");
        }
        let t = generate_with(GeneratorKind::Burst, 1, &opts(2, 0.5));
        assert_eq!(t.source, "generate:burst seed=1 days=2 intensity=0.5");
    }

    #[test]
    fn generators_are_deterministic_and_sized_as_documented() {
        for (kind, lo, hi) in [
            (GeneratorKind::Workday, 2_300, 3_400),
            (GeneratorKind::Burst, 600, 1_100),
            (GeneratorKind::Nightly, 380, 700),
            (GeneratorKind::Matrix, 1_000, 2_600),
        ] {
            let a = generate(kind, 3);
            let b = generate(kind, 3);
            assert_eq!(a.jobs, b.jobs, "{kind} is deterministic");
            assert!(
                (lo..=hi).contains(&a.jobs.len()),
                "{kind}: {} jobs",
                a.jobs.len()
            );
            assert!(a.jobs.windows(2).all(|w| w[0].queued_at <= w[1].queued_at));
            assert_ne!(generate(kind, 4).jobs, a.jobs, "{kind} depends on the seed");
        }
    }

    #[test]
    fn workday_has_a_morning_ramp_and_a_lunch_dip() {
        let t = generate(GeneratorKind::Workday, 1);
        let per_hour = |h: i64| {
            t.jobs
                .iter()
                .filter(|j| (j.queued_at - epoch()).num_hours() == h)
                .count()
        };
        assert!(per_hour(3) * 5 < per_hour(10), "night is quiet");
        assert!(per_hour(12) < per_hour(11), "lunch dip");
        assert!(
            per_hour(12) < per_hour(14),
            "afternoon is busier than lunch"
        );
    }

    #[test]
    fn names_parse() {
        for k in GeneratorKind::ALL {
            assert_eq!(k.as_str().parse::<GeneratorKind>().expect("parse"), k);
        }
        assert!("weekend".parse::<GeneratorKind>().is_err());
    }
}
