//! What a simulation reports, per policy: job waits, cost, invariant violations and whether
//! the policy is on the wait-vs-cost Pareto front; rendered as a text table or JSON.
//!
//! Definitions:
//! - *wait*: from a job being queued to a runner starting it (a job killed mid-run and
//!   retried counts from its original queue time to its last start);
//! - *paid runner-seconds*: Σ over instances of (end − launch) × runners per instance, every
//!   second from launch (booting included) until the instance is gone or the simulation ends;
//! - *idle runner-seconds*: time runners spent online with no job;
//! - *overhead ratio*: paid ÷ Σ(job duration + one boot time per job), where a boot time runs
//!   from launch until the runner is online (boot + registration delay); 1.0 is what launching
//!   one instance per job exactly in time costs (the clairvoyant bound with one slot);
//! - *Pareto front*: among realizable policies (not the clairvoyant bound) that ran every job
//!   without violating an invariant, those no other such policy beats on both mean wait and
//!   paid runner-seconds.

use std::fmt::Write as _;

use runscale_core::Timestamp;
use serde::Serialize;

use crate::config::WorldParams;

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The trace replayed.
    pub trace: TraceSummary,
    /// The boot-time distribution.
    pub boot: String,
    /// World parameters.
    pub world: WorldParams,
    /// One result per policy, in the order asked.
    pub results: Vec<PolicyReport>,
    /// Indices into `results` of the rows `--sweep` added, in sweep order (for charts).
    #[serde(skip)]
    pub sweep_rows: Vec<usize>,
}

/// What was replayed.
#[derive(Clone, Debug, Serialize)]
pub struct TraceSummary {
    /// File or generator.
    pub source: String,
    /// Queue time of the first job.
    pub start: Timestamp,
    /// Jobs replayed.
    pub jobs: usize,
    /// Jobs no pool matched (not replayed).
    pub unmatched_jobs: usize,
    /// Why some jobs matched no pool (first few).
    pub unmatched_examples: Vec<String>,
    /// Records of the input that were not jobs to replay (never started, skipped).
    pub skipped_records: usize,
    /// From the first to the last arrival, seconds.
    pub span_s: f64,
    /// Σ job durations, seconds.
    pub job_runner_s: f64,
    /// Σ one boot time per job, seconds (the other half of the overhead ratio's denominator).
    pub boot_s: f64,
    /// The pools.
    pub pools: Vec<PoolSummary>,
}

/// A pool as simulated.
#[derive(Clone, Debug, Serialize)]
pub struct PoolSummary {
    /// Name.
    pub name: String,
    /// Jobs routed to it.
    pub jobs: usize,
    /// Instance cap.
    pub max: u32,
    /// Warm idle runners.
    pub min_idle: u32,
    /// Runners per instance.
    pub runners_per_instance: u32,
    /// One job per runner.
    pub ephemeral: bool,
    /// Idle timeout, seconds.
    pub idle_timeout_s: f64,
    /// Boot timeout, seconds.
    pub boot_timeout_s: f64,
}

/// Wait statistics, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WaitStats {
    /// Median.
    pub p50_s: f64,
    /// 95th percentile.
    pub p95_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Longest.
    pub max_s: f64,
    /// Mean.
    pub mean_s: f64,
}

/// The nearest-rank `q` quantile (0 < `q` ≤ 1) of `sorted` (ascending): the smallest value
/// with at least a fraction `q` of the values at or below it. `None` when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied()
}

impl WaitStats {
    /// Statistics of waits in milliseconds (sorts the slice). Nearest-rank percentiles.
    pub(crate) fn of(waits_ms: &mut [i64]) -> Self {
        if waits_ms.is_empty() {
            return Self::default();
        }
        waits_ms.sort_unstable();
        let n = waits_ms.len();
        let pct = |q: f64| nearest_rank(waits_ms, q).unwrap_or_default() as f64 / 1000.0;
        Self {
            p50_s: pct(0.50),
            p95_s: pct(0.95),
            p99_s: pct(0.99),
            max_s: waits_ms[n - 1] as f64 / 1000.0,
            mean_s: waits_ms.iter().map(|&w| w as f64).sum::<f64>() / n as f64 / 1000.0,
        }
    }
}

/// Invariant violations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Violations {
    /// Launches that took a pool above its `max`.
    pub over_max: u64,
    /// Busy runners killed (their jobs were retried).
    pub busy_killed: u64,
    /// Jobs never started before the end.
    pub never_run: u64,
    /// The first few, described.
    pub examples: Vec<String>,
}

impl Violations {
    /// All violations.
    pub fn total(&self) -> u64 {
        self.over_max + self.busy_killed + self.never_run
    }
}

/// Fleet size and queue length over time (the maximum within each bucket).
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Bucket width, seconds.
    pub bucket_s: f64,
    /// Points, oldest first.
    pub points: Vec<SeriesPoint>,
}

/// One bucket of a [`Series`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeriesPoint {
    /// Bucket start, seconds after the trace start.
    pub t_s: f64,
    /// Most live instances during the bucket.
    pub fleet: u32,
    /// Most waiting jobs during the bucket.
    pub queue: u32,
}

/// One policy's result.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    /// Policy name.
    pub policy: String,
    /// How the policy is modelled (pass interval, lifecycle, quirks).
    pub model: String,
    /// This is the clairvoyant lower bound, not a realizable policy.
    pub lower_bound: bool,
    /// Jobs replayed.
    pub jobs: usize,
    /// Jobs started.
    pub jobs_run: usize,
    /// Waits of the jobs started.
    pub wait: WaitStats,
    /// Paid runner-seconds.
    pub paid_runner_s: f64,
    /// Idle runner-seconds.
    pub idle_runner_s: f64,
    /// Paid ÷ Σ(job duration + boot time).
    pub overhead_ratio: f64,
    /// Instances launched.
    pub launches: u64,
    /// Most instances alive at once (all pools).
    pub peak_fleet: u32,
    /// Invariant violations.
    pub violations: Violations,
    /// On the wait-vs-cost Pareto front.
    pub pareto: bool,
    /// Policy passes simulated.
    pub passes: u64,
    /// Wall-clock time the simulation of this policy took, milliseconds.
    pub wall_ms: f64,
    /// Fleet and queue over time, for charts (not serialised).
    #[serde(skip)]
    pub series: Series,
}

/// Marks the Pareto front (see the module docs).
pub(crate) fn mark_pareto(results: &mut [PolicyReport]) {
    let eligible = |r: &PolicyReport| !r.lower_bound && r.violations.total() == 0;
    let points: Vec<(f64, f64, bool)> = results
        .iter()
        .map(|r| (r.wait.mean_s, r.paid_runner_s, eligible(r)))
        .collect();
    let better = |a: f64, b: f64| a < b * (1.0 - PARETO_TOLERANCE);
    for (i, r) in results.iter_mut().enumerate() {
        let (w, c, ok) = points[i];
        r.pareto = ok
            && !points.iter().enumerate().any(|(k, &(w2, c2, ok2))| {
                k != i && ok2 && w2 <= w && c2 <= c && (better(w2, w) || better(c2, c))
            });
    }
}

/// A policy is beaten only by one at least as good on both mean wait and paid cost and better
/// by more than this share on one: differences within it are noise (a 10 ms wait, a pass).
pub const PARETO_TOLERANCE: f64 = 0.01;

/// `1h02m`, `4m05s`, `12.3s`.
pub(crate) fn human_secs(s: f64) -> String {
    if s < 60.0 {
        if s < 10.0 {
            format!("{s:.1}s")
        } else {
            format!("{s:.0}s")
        }
    } else if s < 3600.0 {
        let t = s.round() as u64;
        format!("{}m{:02}s", t / 60, t % 60)
    } else {
        let t = (s / 60.0).round() as u64;
        format!("{}h{:02}m", t / 60, t % 60)
    }
}

impl SimReport {
    /// A fixed-width text table, one row per policy, followed by notes.
    pub fn to_table(&self) -> String {
        let mut out = header(&self.trace, &self.boot, &self.world);
        let header = [
            "policy",
            "wait p50",
            "p95",
            "p99",
            "max",
            "mean",
            "paid h",
            "idle h",
            "overhead",
            "launches",
            "peak",
            "violations",
            "pareto",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
        for r in &self.results {
            let v = &r.violations;
            rows.push(vec![
                r.policy.clone(),
                human_secs(r.wait.p50_s),
                human_secs(r.wait.p95_s),
                human_secs(r.wait.p99_s),
                human_secs(r.wait.max_s),
                human_secs(r.wait.mean_s),
                fmt_hours(r.paid_runner_s),
                fmt_hours(r.idle_runner_s),
                format!("{:.2}", r.overhead_ratio),
                r.launches.to_string(),
                r.peak_fleet.to_string(),
                if v.total() == 0 {
                    "0".to_owned()
                } else {
                    format!(
                        "{} (max {}, kill {}, lost {})",
                        v.total(),
                        v.over_max,
                        v.busy_killed,
                        v.never_run
                    )
                },
                if r.lower_bound {
                    "bound".to_owned()
                } else if r.pareto {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
            ]);
        }
        out.push_str(&align(&rows));
        let _ = writeln!(
            out,
            "paid/idle in runner-hours; overhead = paid ÷ Σ(job + boot); pareto = not beaten by another policy without violations: as good on mean wait and paid cost, and more than 1 % better on one"
        );
        for r in &self.results {
            for e in &r.violations.examples {
                let _ = writeln!(out, "{}: {e}", r.policy);
            }
        }
        out
    }
}

/// The lines above a table: the trace, the world, the pools, and jobs no pool matched.
pub(crate) fn header(t: &TraceSummary, boot: &str, world: &WorldParams) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace: {} — {} jobs over {}, {} runner-hours of work; boot {}",
        t.source,
        t.jobs,
        human_secs(t.span_s),
        fmt_hours(t.job_runner_s),
        boot
    );
    let _ = writeln!(out, "world: {}", world.summary());
    for p in &t.pools {
        let _ = writeln!(
            out,
            "pool {}: {} jobs, max {}, min_idle {}, {} runner(s)/instance, {}, idle_timeout {}",
            p.name,
            p.jobs,
            p.max,
            p.min_idle,
            p.runners_per_instance,
            if p.ephemeral {
                "ephemeral"
            } else {
                "persistent"
            },
            human_secs(p.idle_timeout_s)
        );
    }
    if t.unmatched_jobs > 0 {
        let _ = writeln!(
            out,
            "warning: {} jobs matched no pool and were not replayed ({})",
            t.unmatched_jobs,
            t.unmatched_examples.join("; ")
        );
    }
    out
}

/// Rows as a fixed-width table: the first column left-aligned, the others right-aligned, a
/// rule under the first row (the header).
pub(crate) fn align(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let w = widths.get(c).copied().unwrap_or(0);
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

pub(crate) fn fmt_hours(s: f64) -> String {
    let h = s / 3600.0;
    if h < 10.0 {
        format!("{h:.2}")
    } else {
        format!("{h:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, wait: f64, paid: f64) -> PolicyReport {
        PolicyReport {
            policy: name.to_owned(),
            model: String::new(),
            lower_bound: name == "clairvoyant",
            jobs: 1,
            jobs_run: 1,
            wait: WaitStats {
                mean_s: wait,
                ..WaitStats::default()
            },
            paid_runner_s: paid,
            idle_runner_s: 0.0,
            overhead_ratio: 1.0,
            launches: 1,
            peak_fleet: 1,
            violations: Violations::default(),
            pareto: false,
            passes: 0,
            wall_ms: 0.0,
            series: Series::default(),
        }
    }

    #[test]
    fn pareto_front_excludes_dominated_bound_and_violators() {
        let mut v = vec![
            r("a", 10.0, 100.0),
            r("b", 20.0, 50.0),
            r("c", 25.0, 120.0), // dominated by a and b
            r("clairvoyant", 0.0, 10.0),
            r("bad", 1.0, 1.0),
        ];
        v[4].violations.busy_killed = 1;
        mark_pareto(&mut v);
        let front: Vec<_> = v
            .iter()
            .filter(|r| r.pareto)
            .map(|r| r.policy.as_str())
            .collect();
        assert_eq!(front, ["a", "b"]);
    }

    #[test]
    fn differences_within_the_tolerance_do_not_beat_a_policy() {
        let mut v = vec![
            r("a", 50.0, 1000.0),
            r("b", 49.8, 999.0),  // better on both, by less than 1 %
            r("c", 49.0, 1000.0), // 2 % shorter waits at the same cost: beats a
        ];
        mark_pareto(&mut v);
        let front: Vec<_> = v.iter().map(|r| (r.policy.as_str(), r.pareto)).collect();
        assert_eq!(front, [("a", false), ("b", true), ("c", true)]);
        let mut v = vec![r("a", 50.0, 1000.0), r("b", 49.8, 999.0)];
        mark_pareto(&mut v);
        assert!(
            v.iter().all(|r| r.pareto),
            "a tie within 1 % leaves both on the front"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut w: Vec<i64> = (1..=100).map(|s| s * 1000).collect();
        let s = WaitStats::of(&mut w);
        assert_eq!(
            (s.p50_s, s.p95_s, s.p99_s, s.max_s),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean_s - 50.5).abs() < 1e-9);
        assert_eq!(human_secs(45.0), "45s");
        assert_eq!(human_secs(125.0), "2m05s");
        assert_eq!(human_secs(3720.0), "1h02m");
    }
}
