//! `runscale simulate`: arguments and the configuration's pools to `runscale-sim`, the report
//! to stdout. Invalid arguments, traces and configurations exit 2.

use std::io::Write;

use runscale_sim::config::MAX_WORLD_DELAY;
use runscale_sim::recommend::{RecommendArgs, Rule};
use runscale_sim::{
    BootDist, GenOptions, GeneratorKind, OutputFormat, SimError, SimPool, SimulateArgs, SweepArg,
    TraceSource, WarmArg, WorldParams,
};

use crate::cli::SimulateCli;
use crate::config;

/// Builds the simulation from the command line and prints its report.
pub fn run(cli: &SimulateCli, out: &mut impl Write) -> anyhow::Result<()> {
    let args = args(cli)?;
    let text = runscale_sim::execute(&args)?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// The simulator's arguments for a command line.
pub fn args(cli: &SimulateCli) -> anyhow::Result<SimulateArgs> {
    let trace = match (&cli.trace, &cli.generate) {
        (Some(path), _) => TraceSource::File(path.clone()),
        (None, Some(kind)) => TraceSource::Generate {
            kind: kind.parse::<GeneratorKind>()?,
            seed: cli.seed,
        },
        (None, None) => TraceSource::Generate {
            kind: GeneratorKind::Workday,
            seed: cli.seed,
        },
    };
    let boot = match &cli.boot_dist {
        Some(path) => format!("file:{}", path.display()).parse::<BootDist>()?,
        None => cli.boot.parse::<BootDist>()?,
    };
    let pools = match &cli.config {
        Some(path) => {
            let valid = config::load(path)?;
            valid
                .pools
                .iter()
                .map(|p| SimPool {
                    spec: p.spec.clone(),
                    labels: p.selector.labels(),
                    reuse_possible: p.spec.ephemeral
                        && valid.backends[p.backend].settings.reuses_instances(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    let warm: Option<WarmArg> = cli.warm.as_deref().map(str::parse).transpose()?;
    Ok(SimulateArgs {
        trace,
        pools,
        policies: cli.policies.parse()?,
        boot,
        seed: cli.seed,
        format: cli.format.parse::<OutputFormat>()?,
        charts_dir: cli.charts.clone(),
        warm,
        reuse: cli.reuse.as_deref().map(str::parse).transpose()?,
        sweep: cli
            .sweep
            .as_deref()
            .map(|s| SweepArg::parse(s, warm.and_then(|w| w.0)))
            .transpose()?,
        world: world(cli)?,
        generator: GenOptions {
            days: cli.days.unwrap_or(1),
            intensity: cli.intensity.unwrap_or(1.0),
        },
        recommend: recommend(cli)?,
    })
}

/// The world's parameters from `--detection`, `--pass-interval` and `--registration-delay`.
fn world(cli: &SimulateCli) -> Result<WorldParams, SimError> {
    let mut world = WorldParams::default();
    if let Some(d) = &cli.pass_interval {
        world.pass_interval = duration("pass_interval", d)?;
    }
    if let Some(d) = &cli.registration_delay {
        world.registration_delay = duration("registration_delay", d)?;
    }
    if let Some(d) = &cli.detection {
        let interval = world.pass_interval;
        world.set_detection(d)?;
        if cli.pass_interval.is_some() && world.pass_interval != interval {
            return Err(SimError::Invalid {
                field: "detection",
                message: format!(
                    "`{d}` and --pass-interval both set the pass interval; give it once"
                ),
            });
        }
    }
    world.validate()?;
    Ok(world)
}

fn duration(field: &'static str, s: &str) -> Result<std::time::Duration, SimError> {
    runscale_sim::config::duration_arg(field, s, MAX_WORLD_DELAY)
}

/// `--recommend` and its rule and budget.
fn recommend(cli: &SimulateCli) -> Result<Option<RecommendArgs>, SimError> {
    if !cli.recommend {
        return Ok(None);
    }
    let rule = match (&cli.max_mean_wait, cli.max_cost_ratio) {
        (Some(d), _) => Rule::MaxMeanWait(duration("max_mean_wait", d)?),
        (None, Some(r)) => Rule::MaxCostRatio(r),
        (None, None) => Rule::default(),
    };
    let rec = RecommendArgs {
        rule,
        budget: cli
            .recommend_budget
            .unwrap_or(RecommendArgs::DEFAULT_BUDGET),
    };
    rec.validate()?;
    Ok(Some(rec))
}
