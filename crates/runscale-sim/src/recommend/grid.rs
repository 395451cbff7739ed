//! The candidate grid of `--recommend` and its search.
//!
//! A [`Setting`] is one value per [`Dimension`] (a [`Knob`] each). The search simulates the
//! whole grid when it fits the budget, else it searches one dimension at a time from the
//! pool's current setting (coordinate search), memoising every simulated setting. Adding a
//! dimension is a [`Knob`] variant (its name, value, YAML and how it changes the pool) and one
//! more entry in [`dimensions`].

use std::fmt;

use runscale_core::{Reuse, Warm};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::TraceJob;
use crate::config::{ReuseArg, SimPool, WarmArg};

/// The largest `max` the grid proposes.
pub const MAX_MAX: u32 = 10_000;

/// The warm settings of the grid besides `off` and the pool's own: every target wait ×
/// every coverage.
const TARGET_WAITS_S: [u64; 3] = [0, 10, 30];
const COVERAGES: [f64; 4] = [0.6, 0.8, 0.9, 0.95];
/// The reuse setting the grid tries besides off and the pool's own: the configuration's
/// defaults.
const REUSE: Reuse = Reuse {
    max_uses: 10,
    max_age: std::time::Duration::from_secs(12 * 3600),
};
/// `max` candidates as shares of the trace's peak concurrency.
const MAX_SHARES: [f64; 4] = [0.5, 0.75, 1.0, 1.25];

/// One value of one dimension of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Knob {
    /// The pool's `warm` (`None` is `off`).
    Warm(Option<Warm>),
    /// The pool's `max` (instances).
    Max(u32),
    /// The pool's `reuse` (`None` is off).
    Reuse(Option<Reuse>),
}

impl Knob {
    /// The setting's key in runscale's pool configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Knob::Warm(_) => "warm",
            Knob::Max(_) => "max",
            Knob::Reuse(_) => "reuse",
        }
    }

    /// The value as YAML for the pool configuration.
    pub fn yaml(&self) -> String {
        match self {
            Knob::Warm(None) => "off".to_owned(),
            Knob::Warm(Some(w)) => format!(
                "{{target_wait: {}, coverage: {}}}",
                humantime::format_duration(w.target_wait),
                w.coverage
            ),
            Knob::Max(m) => m.to_string(),
            Knob::Reuse(None) => "null".to_owned(),
            Knob::Reuse(Some(r)) => format!(
                "{{max_uses: {}, max_age: {}}}",
                r.max_uses,
                humantime::format_duration(r.max_age)
            ),
        }
    }

    /// Whether the baselines have this knob too (they honour `max`; `warm` and `reuse` are
    /// runscale's).
    pub fn applies_to_baselines(&self) -> bool {
        matches!(self, Knob::Max(_))
    }

    /// Writes the value into a pool.
    pub fn apply(&self, pool: &mut SimPool) {
        match *self {
            Knob::Warm(w) => pool.spec.warm = w,
            Knob::Reuse(r) => pool.spec.reuse = r,
            Knob::Max(m) => {
                let s = &mut pool.spec;
                s.max_booting = if s.max_booting >= s.max {
                    m
                } else {
                    s.max_booting.min(m)
                };
                s.max = m;
            }
        }
    }
}

impl fmt::Display for Knob {
    /// The value as on the command line: `off`, `10s@0.8`, `50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Knob::Warm(w) => write!(f, "{}", WarmArg(*w)),
            Knob::Max(m) => write!(f, "{m}"),
            Knob::Reuse(r) => write!(f, "{}", ReuseArg(*r)),
        }
    }
}

/// One axis of the grid: its name and the values tried.
#[derive(Clone, Debug)]
pub struct Dimension {
    /// The setting's key (`warm`, `max`).
    pub name: &'static str,
    /// The values tried, the pool's current one included.
    pub values: Vec<Knob>,
}

impl Serialize for Dimension {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("name", self.name)?;
        let values: Vec<String> = self.values.iter().map(Knob::to_string).collect();
        m.serialize_entry("values", &values)?;
        m.end()
    }
}

/// One value per dimension, in the dimensions' order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Setting(pub Vec<Knob>);

impl Setting {
    /// The pool with this setting.
    pub fn applied(&self, pool: &SimPool) -> SimPool {
        let mut p = pool.clone();
        for k in &self.0 {
            k.apply(&mut p);
        }
        p
    }

    /// The value of the dimension `name`.
    pub fn get(&self, name: &str) -> Option<&Knob> {
        self.0.iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Setting {
    /// `warm=10s@0.8 max=50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|k| format!("{}={k}", k.name())).collect();
        f.write_str(&parts.join(" "))
    }
}

impl Serialize for Setting {
    /// `{"warm": "10s@0.8", "max": "50"}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for k in &self.0 {
            m.serialize_entry(k.name(), &k.to_string())?;
        }
        m.end()
    }
}

/// The pool's own setting, one value per dimension of [`dimensions`].
pub fn current(pool: &SimPool) -> Setting {
    Setting(vec![
        Knob::Warm(pool.spec.warm),
        Knob::Max(pool.spec.max),
        Knob::Reuse(pool.spec.reuse),
    ])
}

/// The grid for a pool and the jobs routed to it: `warm` is off, the pool's own, and every
/// target wait of 0s, 10s, 30s with every coverage of 0.6, 0.8, 0.9, 0.95; `max` is the
/// pool's own and 50 %, 75 %, 100 % and 125 % of the jobs' peak concurrency (in instances);
/// `reuse` is off, the pool's own and `{max_uses: 10, max_age: 12h}` (for ephemeral pools on a
/// backend that can reuse instances).
pub fn dimensions(pool: &SimPool, jobs: &[&TraceJob]) -> Vec<Dimension> {
    let mut warm = vec![Knob::Warm(None), Knob::Warm(pool.spec.warm)];
    for t in TARGET_WAITS_S {
        for coverage in COVERAGES {
            warm.push(Knob::Warm(Some(Warm {
                target_wait: std::time::Duration::from_secs(t),
                coverage,
            })));
        }
    }
    let per_instance = f64::from(pool.spec.runners_per_instance.max(1));
    let peak = peak_concurrency(jobs) as f64;
    let mut max = vec![Knob::Max(pool.spec.max)];
    for share in MAX_SHARES {
        let m = (peak * share / per_instance)
            .ceil()
            .clamp(1.0, f64::from(MAX_MAX)) as u32;
        max.push(Knob::Max(m));
    }
    let mut reuse = vec![Knob::Reuse(None), Knob::Reuse(pool.spec.reuse)];
    if pool.spec.ephemeral && pool.reuse_possible {
        reuse.push(Knob::Reuse(Some(REUSE)));
    }
    vec![
        Dimension {
            name: "warm",
            values: dedup(warm),
        },
        Dimension {
            name: "max",
            values: dedup(max),
        },
        Dimension {
            name: "reuse",
            values: dedup(reuse),
        },
    ]
}

fn dedup(values: Vec<Knob>) -> Vec<Knob> {
    let mut out: Vec<Knob> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The most jobs running at once if every job started when it was queued.
pub fn peak_concurrency(jobs: &[&TraceJob]) -> usize {
    let mut edges: Vec<(runscale_core::Timestamp, i32)> = Vec::with_capacity(jobs.len() * 2);
    for j in jobs {
        let end = chrono::Duration::from_std(j.duration)
            .ok()
            .and_then(|d| j.queued_at.checked_add_signed(d))
            .unwrap_or(j.queued_at);
        edges.push((j.queued_at, 1));
        edges.push((end, -1));
    }
    // An end before a start at the same instant: back-to-back jobs do not overlap.
    edges.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, step) in edges {
        now += i64::from(step);
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// Every setting of the grid, in order (the last dimension varies fastest).
pub fn all(dims: &[Dimension]) -> Vec<Setting> {
    let mut out = vec![Setting(Vec::new())];
    for d in dims {
        out = out
            .into_iter()
            .flat_map(|s| {
                d.values.iter().map(move |v| {
                    let mut next = s.clone();
                    next.0.push(*v);
                    next
                })
            })
            .collect();
    }
    out
}

/// Settings of the grid (number of points).
pub fn size(dims: &[Dimension]) -> usize {
    dims.iter()
        .map(|d| d.values.len())
        .fold(1usize, usize::saturating_mul)
}

/// How the grid was searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    /// Every setting simulated.
    FullGrid,
    /// One dimension at a time from the current setting, until nothing changes or the budget
    /// is spent.
    Coordinate,
}

/// A search over the grid: `eval` simulates a setting (called at most `budget` times, never
/// twice for one setting), `pick` chooses among the results so far (indices into them).
/// `start` is simulated first. Returns the settings simulated with their results, in order.
pub fn search<R>(
    dims: &[Dimension],
    start: &[Setting],
    budget: usize,
    mut eval: impl FnMut(&Setting) -> R,
    pick: impl Fn(&[(Setting, R)]) -> Option<usize>,
) -> (Vec<(Setting, R)>, SearchKind) {
    let mut done: Vec<(Setting, R)> = Vec::new();
    let mut run = |s: &Setting, done: &mut Vec<(Setting, R)>| {
        if done.len() < budget && !done.iter().any(|(d, _)| d == s) {
            let r = eval(s);
            done.push((s.clone(), r));
        }
    };
    for s in start {
        run(s, &mut done);
    }
    if size(dims) <= budget {
        for s in all(dims) {
            run(&s, &mut done);
        }
        return (done, SearchKind::FullGrid);
    }
    let best_of = |done: &[(Setting, R)]| pick(done).and_then(|i| done.get(i)).map(|d| d.0.clone());
    let mut best = best_of(&done);
    for _round in 0..dims.len().max(1) * 4 {
        let Some(from) = best.clone() else { break };
        for (d, dim) in dims.iter().enumerate() {
            for v in &dim.values {
                let mut s = best.clone().unwrap_or_else(|| from.clone());
                if let Some(slot) = s.0.get_mut(d) {
                    *slot = *v;
                }
                run(&s, &mut done);
            }
            best = best_of(&done);
        }
        if best.as_ref() == Some(&from) || done.len() >= budget {
            break;
        }
    }
    (done, SearchKind::Coordinate)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    fn job(at_s: i64, dur_s: u64) -> TraceJob {
        TraceJob {
            queued_at: crate::trace::generate::epoch() + chrono::Duration::seconds(at_s),
            duration: Duration::from_secs(dur_s),
            labels: std::sync::Arc::from(Vec::new()),
            pool: None,
            run: None,
        }
    }

    fn grid() -> Vec<Dimension> {
        let jobs = [job(0, 100)];
        dimensions(
            &crate::SimPool::default_pool(),
            &jobs.iter().collect::<Vec<_>>(),
        )
    }

    /// A score with its minimum at warm 30s@0.9, max 1 (the grid's smallest max here).
    fn score(s: &Setting) -> f64 {
        let warm = match s.get("warm") {
            Some(Knob::Warm(Some(w))) => {
                (w.target_wait.as_secs_f64() - 30.0).abs() + (w.coverage - 0.9).abs()
            }
            _ => 100.0,
        };
        let max = match s.get("max") {
            Some(Knob::Max(m)) => f64::from(*m),
            _ => 1000.0,
        };
        warm + max
    }

    fn argmin(done: &[(Setting, f64)]) -> Option<usize> {
        (0..done.len()).min_by(|&a, &b| done[a].1.total_cmp(&done[b].1))
    }

    #[test]
    fn peak_concurrency_counts_overlapping_jobs_only() {
        let jobs = [job(0, 10), job(5, 10), job(10, 10), job(30, 1)];
        assert_eq!(peak_concurrency(&jobs.iter().collect::<Vec<_>>()), 2);
    }

    #[test]
    fn the_grid_is_every_combination_of_its_dimensions() {
        let dims = grid();
        // off, auto (also 10s@0.8 of the 12), and 3 target waits × 4 coverages.
        assert_eq!(dims[0].values.len(), 13);
        // max 50, and 1 for every share of a peak of one job.
        assert_eq!(dims[1].values, [Knob::Max(50), Knob::Max(1), Knob::Max(2)]);
        // Off (the pool's own) and the configuration's defaults, for an ephemeral pool.
        assert_eq!(dims[2].values.len(), 2);
        let all = all(&dims);
        assert_eq!(all.len(), size(&dims));
        assert_eq!(all.len(), 78);
        assert_eq!(all[0].to_string(), "warm=off max=50 reuse=off");
        assert_eq!(all[1].to_string(), "warm=off max=50 reuse=10@12h");
    }

    #[test]
    fn a_grid_within_the_budget_is_simulated_whole_and_once_per_setting() {
        let dims = grid();
        let calls = Cell::new(0);
        let start = [all(&dims)[5].clone()];
        let (done, kind) = search(
            &dims,
            &start,
            100,
            |s| {
                calls.set(calls.get() + 1);
                score(s)
            },
            argmin,
        );
        assert_eq!(kind, SearchKind::FullGrid);
        assert_eq!((done.len(), calls.get()), (78, 78));
        assert_eq!(done[0].0, start[0], "the start comes first");
    }

    #[test]
    fn a_coordinate_search_finds_a_separable_optimum_within_the_budget() {
        let dims = grid();
        let start = [Setting(vec![
            Knob::Warm(None),
            Knob::Max(50),
            Knob::Reuse(None),
        ])];
        let (done, kind) = search(&dims, &start, 20, score, argmin);
        assert_eq!(kind, SearchKind::Coordinate);
        assert!(done.len() <= 20, "{}", done.len());
        let best = argmin(&done).map(|i| done[i].0.to_string());
        assert_eq!(best.as_deref(), Some("warm=30s@0.9 max=1 reuse=off"));
        let (cut, _) = search(&dims, &start, 4, score, argmin);
        assert_eq!(cut.len(), 4, "the budget caps the simulations");
    }
}
