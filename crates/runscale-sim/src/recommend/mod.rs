//! `runscale simulate --recommend`: from a job history, the settings each pool should use.
//!
//! For each pool, the jobs routed to it are replayed against runscale's policy once per
//! setting of a bounded grid ([`grid`]: `warm` × `max`), at most a budget of simulations per
//! pool; a [`Rule`] picks one. The pool's current setting, `warm: off` at the current `max`
//! (the reference the cost ratio is taken against) and the selected baselines are reported
//! beside it. Rendering (table, YAML snippet) is in `render`.
//!
//! Not here: reading runscale's configuration (the binary converts its pools) and charts.

pub mod grid;
mod render;

use std::time::Duration;

use serde::Serialize;

use crate::boot::BootSampler;
use crate::config::{SimPool, WorldParams};
use crate::engine::{self, Compiled};
use crate::report::{self, PolicyReport, TraceSummary, WaitStats};
use crate::{PolicyName, SimError, SimulateArgs, Trace};

pub use grid::{Dimension, Knob, SearchKind, Setting};

/// How the recommended setting is chosen among the simulated ones that ran every job without
/// violating an invariant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// The shortest mean wait among settings that cost at most this multiple of `warm: off`
    /// at the current `max`; then the cheapest within 1 % of that wait.
    MaxCostRatio(f64),
    /// The cheapest setting whose mean wait is at most this; then the shortest wait within
    /// 1 % of that cost.
    MaxMeanWait(Duration),
}

impl Default for Rule {
    fn default() -> Self {
        Rule::MaxCostRatio(Rule::DEFAULT_COST_RATIO)
    }
}

impl Rule {
    /// The default cost ratio: pay at most 10 % more than the reactive policy.
    pub const DEFAULT_COST_RATIO: f64 = 1.10;
    /// The largest cost ratio accepted.
    pub const MAX_COST_RATIO: f64 = 10.0;

    /// Checks the rule's parameter.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, message: &str| {
            Err(SimError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        match *self {
            Rule::MaxCostRatio(r) if !(1.0..=Self::MAX_COST_RATIO).contains(&r) => {
                bad("max_cost_ratio", "must be at least 1 and at most 10")
            }
            Rule::MaxMeanWait(d) if d > Duration::from_secs(3600) => {
                bad("max_mean_wait", "must be at most 1h")
            }
            _ => Ok(()),
        }
    }

    /// The rule in one sentence; `reference_paid_s` is the reference's paid runner-seconds.
    pub fn describe(&self, reference_paid_s: f64) -> String {
        match self {
            Rule::MaxCostRatio(r) => format!(
                "the shortest mean wait among settings costing at most {r:.2}× warm: off at the \
                 current max ({} runner-hours), then the cheapest within 1 % of that wait",
                report::fmt_hours(r * reference_paid_s)
            ),
            Rule::MaxMeanWait(d) => format!(
                "the cheapest setting with a mean wait of at most {}, then the shortest wait \
                 within 1 % of that cost",
                humantime::format_duration(*d)
            ),
        }
    }

    /// The index of the row the rule picks among those that ran every job without a
    /// violation; `reference_paid_s` as above. `None` when no row satisfies the rule.
    pub fn pick(&self, rows: &[Row], reference_paid_s: f64) -> Option<usize> {
        type Axis = fn(&Row) -> f64;
        let paid: Axis = |r| r.paid_runner_s;
        let wait: Axis = |r| r.wait.mean_s;
        // The axis bounded by the rule, its bound, and the axis to minimise.
        let (bounded, limit, objective) = match *self {
            Rule::MaxCostRatio(ratio) => (paid, ratio * reference_paid_s, wait),
            Rule::MaxMeanWait(d) => (wait, d.as_secs_f64(), paid),
        };
        let admitted: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].ran_clean() && bounded(&rows[i]) <= limit * (1.0 + 1e-9))
            .collect();
        let best = admitted
            .iter()
            .map(|&i| objective(&rows[i]))
            .fold(f64::INFINITY, f64::min);
        let band = best * (1.0 + report::PARETO_TOLERANCE) + 1e-9;
        admitted
            .into_iter()
            .filter(|&i| objective(&rows[i]) <= band)
            .min_by(|&a, &b| {
                let key = |i: usize| (bounded(&rows[i]), objective(&rows[i]));
                let ((ba, oa), (bb, ob)) = (key(a), key(b));
                ba.total_cmp(&bb).then(oa.total_cmp(&ob))
            })
    }
}

/// What `--recommend` needs besides the simulation's arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecommendArgs {
    /// How the setting is chosen.
    pub rule: Rule,
    /// At most this many simulations of runscale's policy per pool (baselines not counted).
    pub budget: usize,
}

impl Default for RecommendArgs {
    fn default() -> Self {
        Self {
            rule: Rule::default(),
            budget: Self::DEFAULT_BUDGET,
        }
    }
}

impl RecommendArgs {
    /// Simulations per pool by default: the whole default grid (at most 14 × 5 × 3).
    pub const DEFAULT_BUDGET: usize = 210;
    /// The largest budget accepted.
    pub const MAX_BUDGET: usize = 1000;

    /// Checks the rule and the budget (at least 2: the reference and the current setting).
    pub fn validate(&self) -> Result<(), SimError> {
        self.rule.validate()?;
        if !(2..=Self::MAX_BUDGET).contains(&self.budget) {
            return Err(SimError::Invalid {
                field: "recommend_budget",
                message: format!("{}: give 2 to {}", self.budget, Self::MAX_BUDGET),
            });
        }
        Ok(())
    }
}

/// The recommendation for every pool.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// The trace replayed (all pools).
    pub trace: TraceSummary,
    /// The boot-time distribution.
    pub boot: String,
    /// World parameters.
    pub world: WorldParams,
    /// One per pool with jobs, in configuration order.
    pub pools: Vec<PoolRecommendation>,
}

/// One pool's recommendation.
#[derive(Clone, Debug, Serialize)]
pub struct PoolRecommendation {
    /// The pool.
    pub pool: String,
    /// Jobs routed to it.
    pub jobs: usize,
    /// The rule, in one sentence.
    pub rule: String,
    /// The grid's dimensions and the values tried.
    pub grid: Vec<Dimension>,
    /// Settings in the grid.
    pub grid_size: usize,
    /// How it was searched.
    pub search: SearchKind,
    /// Simulations of runscale's policy run (at most `budget`).
    pub simulations: usize,
    /// The cap on `simulations`.
    pub budget: usize,
    /// The setting the rule picks; `None` when no simulated setting satisfies it.
    pub recommended: Option<Row>,
    /// The pool's setting as configured (or as `--warm` set it).
    pub current: Row,
    /// `warm: off` at the current `max`: what cost ratios are relative to.
    pub reference: Row,
    /// The selected baselines, with the recommended `max` (the current one without a
    /// recommendation).
    pub baselines: Vec<Row>,
    /// Every simulated setting, in the order simulated.
    pub candidates: Vec<Row>,
}

/// One simulated setting or policy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// `runscale`, or a baseline's name.
    pub policy: String,
    /// The pool's setting simulated (a baseline: its `max`).
    pub setting: Setting,
    /// Jobs replayed.
    pub jobs: usize,
    /// Jobs started.
    pub jobs_run: usize,
    /// Waits of the jobs started.
    pub wait: WaitStats,
    /// Paid runner-seconds.
    pub paid_runner_s: f64,
    /// Paid ÷ the reference's paid.
    pub cost_ratio: f64,
    /// Invariant violations (a row with any is never recommended).
    pub violations: u64,
    /// The clairvoyant lower bound.
    pub lower_bound: bool,
    /// On the wait-vs-cost Pareto front of every row of the pool (1 % tolerance).
    pub pareto: bool,
}

impl Row {
    /// Every job ran and no invariant was violated.
    pub fn ran_clean(&self) -> bool {
        self.violations == 0 && self.jobs_run == self.jobs
    }

    fn of(r: &PolicyReport, setting: Setting) -> Self {
        Row {
            policy: r.policy.clone(),
            setting,
            jobs: r.jobs,
            jobs_run: r.jobs_run,
            wait: r.wait,
            paid_runner_s: r.paid_runner_s,
            cost_ratio: 0.0,
            violations: r.violations.total(),
            lower_bound: r.lower_bound,
            pareto: r.pareto,
        }
    }
}

/// Loads the trace and recommends settings for every pool that has jobs (a pool no job is
/// routed to is left out).
pub fn run(args: &SimulateArgs, rec: &RecommendArgs) -> Result<Recommendation, SimError> {
    args.validate()?;
    rec.validate()?;
    let trace = crate::trace::load_with(&args.trace, &args.generator)?;
    let pools = crate::effective_pools(args);
    let boot = args.boot.sampler()?;
    let all = engine::compile(&trace, &pools, &boot, args.seed);
    let routes: Vec<Option<usize>> = trace
        .jobs
        .iter()
        .map(|j| SimPool::route(&pools, j))
        .collect();
    let mut out = Vec::with_capacity(pools.len());
    for (i, pool) in pools.iter().enumerate() {
        let jobs: Vec<&crate::TraceJob> = trace
            .jobs
            .iter()
            .zip(&routes)
            .filter(|(_, r)| **r == Some(i))
            .map(|(j, _)| j)
            .collect();
        if jobs.is_empty() {
            continue;
        }
        let sub = Trace {
            source: trace.source.clone(),
            jobs: jobs.iter().map(|&j| pinned(j, pool)).collect(),
            skipped: 0,
        };
        let bench = Bench {
            compiled: engine::compile(&sub, std::slice::from_ref(pool), &boot, args.seed),
            boot: &boot,
            world: &args.world,
            seed: args.seed,
        };
        let dims = grid::dimensions(pool, &jobs);
        out.push(recommend_pool(&bench, pool, dims, args, rec));
    }
    Ok(Recommendation {
        trace: all.summary(&trace, &pools),
        boot: args.boot.to_string(),
        world: args.world.clone(),
        pools: out,
    })
}

/// A job routed to `pool`, named so the single-pool simulation keeps it there.
fn pinned(job: &crate::TraceJob, pool: &SimPool) -> crate::TraceJob {
    crate::TraceJob {
        pool: Some(pool.spec.name.to_string()),
        ..job.clone()
    }
}

/// One pool's jobs, ready to simulate under any setting.
struct Bench<'a> {
    compiled: Compiled,
    boot: &'a BootSampler,
    world: &'a WorldParams,
    seed: u64,
}

impl Bench<'_> {
    fn simulate(&self, pool: &SimPool, policy: PolicyName) -> PolicyReport {
        engine::simulate(
            &self.compiled,
            std::slice::from_ref(pool),
            policy,
            self.boot,
            self.world,
            self.seed,
        )
    }
}

/// Searches one pool's grid, picks by the rule, and runs the baselines beside the pick.
fn recommend_pool(
    bench: &Bench<'_>,
    pool: &SimPool,
    dims: Vec<Dimension>,
    args: &SimulateArgs,
    rec: &RecommendArgs,
) -> PoolRecommendation {
    let current = grid::current(pool);
    let reference = reference_of(&current);
    let eval = |s: &Setting| bench.simulate(&s.applied(pool), PolicyName::Runscale);
    let reference_paid = |done: &[(Setting, PolicyReport)]| {
        done.iter()
            .find(|(s, _)| *s == reference)
            .map_or(0.0, |(_, r)| r.paid_runner_s)
    };
    let pick = |done: &[(Setting, PolicyReport)]| {
        let rows: Vec<Row> = done.iter().map(|(s, r)| Row::of(r, s.clone())).collect();
        rec.rule.pick(&rows, reference_paid(done))
    };
    let start = [reference.clone(), current.clone()];
    let (mut done, search) = grid::search(&dims, &start, rec.budget, eval, pick);
    let paid_ref = reference_paid(&done);
    let chosen = pick(&done);
    let picked = chosen
        .and_then(|i| done.get(i))
        .map_or(&current, |(s, _)| s);
    let simulations = done.len();
    done.extend(baselines(bench, pool, picked, args));
    let rows = rows(done, paid_ref);
    let (candidates, baselines) = rows.split_at(simulations);
    let find = |s: &Setting| {
        candidates
            .iter()
            .find(|r| r.setting == *s)
            .cloned()
            .unwrap_or_default()
    };
    PoolRecommendation {
        pool: pool.spec.name.to_string(),
        jobs: bench.compiled.jobs.len(),
        rule: rec.rule.describe(paid_ref),
        grid_size: grid::size(&dims),
        grid: dims,
        search,
        simulations,
        budget: rec.budget,
        recommended: chosen.and_then(|i| candidates.get(i).cloned()),
        current: find(&current),
        reference: find(&reference),
        baselines: baselines.to_vec(),
        candidates: candidates.to_vec(),
    }
}

/// The selected baselines, with the knobs of `picked` they have (`max`), so the rows compare
/// policies under the same limits.
fn baselines(
    bench: &Bench<'_>,
    pool: &SimPool,
    picked: &Setting,
    args: &SimulateArgs,
) -> Vec<(Setting, PolicyReport)> {
    let setting = Setting(
        picked
            .0
            .iter()
            .copied()
            .filter(Knob::applies_to_baselines)
            .collect(),
    );
    let baseline_pool = setting.applied(pool);
    args.policies
        .0
        .iter()
        .filter(|&&p| p != PolicyName::Runscale)
        .map(|&p| (setting.clone(), bench.simulate(&baseline_pool, p)))
        .collect()
}

/// Rows of every simulation, the Pareto front marked over all of them, cost ratios against
/// `paid_ref`.
fn rows(done: Vec<(Setting, PolicyReport)>, paid_ref: f64) -> Vec<Row> {
    let (settings, mut reports): (Vec<Setting>, Vec<PolicyReport>) = done.into_iter().unzip();
    report::mark_pareto(&mut reports);
    settings
        .into_iter()
        .zip(&reports)
        .map(|(setting, r)| Row {
            cost_ratio: if paid_ref > 0.0 {
                r.paid_runner_s / paid_ref
            } else {
                0.0
            },
            ..Row::of(r, setting)
        })
        .collect()
}

/// `warm: off` with the other values of `current`.
fn reference_of(current: &Setting) -> Setting {
    Setting(
        current
            .0
            .iter()
            .map(|k| match k {
                Knob::Warm(_) => Knob::Warm(None),
                other => *other,
            })
            .collect(),
    )
}
