//! `runscale-sim`: a discrete-event simulator that replays a job trace against runscale's real
//! policy ([`runscale_core::plan`]) and against reimplementations of the autoscalers runscale
//! replaces, in virtual time, and reports what each one costs and how long jobs wait.
//!
//! The entry points, for the `runscale simulate` subcommand:
//!
//! ```no_run
//! use runscale_sim::{SimulateArgs, TraceSource, GeneratorKind, PolicySelection};
//!
//! let args = SimulateArgs {
//!     trace: TraceSource::Generate { kind: GeneratorKind::Workday, seed: 1 },
//!     policies: "all".parse::<PolicySelection>().unwrap(),
//!     ..SimulateArgs::default()
//! };
//! let report = runscale_sim::run(&args).unwrap();
//! println!("{}", report.to_table());
//! runscale_sim::charts::write(&report, std::path::Path::new("charts")).unwrap();
//! ```
//!
//! Layout: [`trace`] (CSV, JSON Lines, GitHub jobs JSON, generators), [`boot`] (boot-time
//! distributions), [`config`] (pools and world parameters), `engine` (the event loop and the
//! simulated CI system and backend), [`policies`] (runscale's policy driver, the baselines and
//! the clairvoyant bound), [`report`] (statistics, Pareto front, table) and [`charts`].
//!
//! Not here: argument parsing (the binary owns the CLI; [`SimulateArgs`] is a plain struct)
//! and reading runscale's YAML configuration (the binary converts its pools into
//! [`config::SimPool`]s).

pub mod boot;
pub mod charts;
pub mod config;
mod engine;
pub mod policies;
pub mod report;
pub mod trace;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

pub use boot::BootDist;
pub use config::{Detection, ReuseArg, SimPool, SweepArg, WarmArg, WorldParams};
pub use policies::{PolicyName, PolicySelection};
pub use report::{PolicyReport, SimReport};
pub use trace::{GenOptions, GeneratorKind, Trace, TraceError, TraceJob, TraceSource};

/// Everything one simulation run needs. Plain data: the binary fills it from its arguments
/// and configuration file.
#[derive(Clone, Debug)]
pub struct SimulateArgs {
    /// Where the jobs come from: a trace file or a generator.
    pub trace: TraceSource,
    /// The pools jobs are routed to. Empty means one pool that matches every job, with
    /// runscale's defaults ([`SimPool::default_pool`]).
    pub pools: Vec<SimPool>,
    /// Policies to compare, in report order.
    pub policies: PolicySelection,
    /// Boot time of an instance, from launch until its runners can register.
    pub boot: BootDist,
    /// The simulated world: detection of new jobs, pass interval, registration delay, ...
    pub world: WorldParams,
    /// Seed of the simulation's own randomness (boot-time samples, which idle runner the CI
    /// system hands a job to). The generator's seed is in [`TraceSource::Generate`].
    pub seed: u64,
    /// Output format the caller wants; [`execute`] renders it, [`run`] ignores it.
    pub format: OutputFormat,
    /// Directory for charts; [`execute`] writes them there, [`run`] ignores it.
    pub charts_dir: Option<PathBuf>,
    /// Overrides every pool's `warm` setting.
    pub warm: Option<WarmArg>,
    /// Overrides every pool's `reuse` setting (runscale's policy only: no baseline reuses).
    pub reuse: Option<ReuseArg>,
    /// runscale's policy again with each of these `warm` settings, as extra rows.
    pub sweep: Option<SweepArg>,
}

impl Default for SimulateArgs {
    fn default() -> Self {
        Self {
            trace: TraceSource::Generate {
                kind: GeneratorKind::Workday,
                seed: 1,
            },
            pools: Vec::new(),
            policies: PolicySelection::all(),
            boot: BootDist::default(),
            world: WorldParams::default(),
            seed: 1,
            format: OutputFormat::Table,
            charts_dir: None,
            warm: None,
            reuse: None,
            sweep: None,
        }
    }
}

/// How [`execute`] renders a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// A fixed-width text table ([`SimReport::to_table`]).
    #[default]
    Table,
    /// Pretty-printed JSON of the [`SimReport`].
    Json,
}

impl FromStr for OutputFormat {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            other => Err(SimError::Invalid {
                field: "format",
                message: format!("unknown format `{other}`; expected `table` or `json`"),
            }),
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The trace could not be read or parsed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// An argument or pool setting is invalid; `field` names it.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field (`boot`, `pools[0].labels`, `policies`, ...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Reading a file (boot distribution) failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing charts failed.
    #[error("writing chart {path}: {message}")]
    Chart {
        /// The chart file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Serialising the report failed.
    #[error("serialising the report: {0}")]
    Json(#[from] serde_json::Error),
}

impl SimulateArgs {
    /// Checks the arguments without running anything. Errors name the field.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.policies.0.is_empty() {
            return Err(SimError::Invalid {
                field: "policies",
                message: "no policy selected".to_owned(),
            });
        }
        self.world.validate()?;
        self.boot.validate()?;
        for (i, p) in self.pools.iter().enumerate() {
            p.validate(i)?;
        }
        let mut names: Vec<&str> = self.pools.iter().map(|p| p.spec.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(SimError::Invalid {
                field: "pools",
                message: "two pools have the same name".to_owned(),
            });
        }
        Ok(())
    }
}

/// Loads the trace, then simulates every selected policy on it, one after the other, and
/// returns the report (one result per policy, Pareto front marked).
pub fn run(args: &SimulateArgs) -> Result<SimReport, SimError> {
    args.validate()?;
    let trace = trace::load(&args.trace)?;
    run_trace(args, &trace)
}

/// Like [`run`], on a trace already in memory (args.trace is only used as its label).
pub fn run_trace(args: &SimulateArgs, trace: &Trace) -> Result<SimReport, SimError> {
    args.validate()?;
    let mut pools = if args.pools.is_empty() {
        vec![SimPool::default_pool()]
    } else {
        args.pools.clone()
    };
    if let Some(WarmArg(warm)) = args.warm {
        for p in &mut pools {
            p.spec.warm = warm;
        }
    }
    if let Some(ReuseArg(reuse)) = args.reuse {
        for p in &mut pools {
            p.spec.reuse = reuse;
        }
    }
    let boot = args.boot.sampler()?;
    let compiled = engine::compile(trace, &pools, &boot, args.seed);
    let mut results = Vec::with_capacity(args.policies.0.len());
    for &name in &args.policies.0 {
        let started = Instant::now();
        let mut r = engine::simulate(&compiled, &pools, name, &boot, &args.world, args.seed);
        r.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        results.push(r);
    }
    for &warm in args.sweep.iter().flat_map(|s| &s.0) {
        let mut swept = pools.clone();
        for p in &mut swept {
            p.spec.warm = warm.0;
        }
        let started = Instant::now();
        let mut r = engine::simulate(
            &compiled,
            &swept,
            PolicyName::Runscale,
            &boot,
            &args.world,
            args.seed,
        );
        r.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        r.policy = format!("runscale warm={warm}");
        results.push(r);
    }
    report::mark_pareto(&mut results);
    Ok(SimReport {
        trace: compiled.summary(trace, &pools),
        boot: args.boot.to_string(),
        world: args.world.clone(),
        results,
    })
}

/// Runs the simulation and renders it in `args.format`; writes charts to `args.charts_dir`
/// when set. Returns the rendered text.
pub fn execute(args: &SimulateArgs) -> Result<String, SimError> {
    let report = run(args)?;
    if let Some(dir) = &args.charts_dir {
        charts::write(&report, dir)?;
    }
    match args.format {
        OutputFormat::Table => Ok(report.to_table()),
        OutputFormat::Json => Ok(serde_json::to_string_pretty(&report)?),
    }
}
