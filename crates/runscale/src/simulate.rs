//! `runscale simulate`: arguments and the configuration's pools to `runscale-sim`, the report
//! to stdout. Invalid arguments, traces and configurations exit 2.

use std::io::Write;

use runscale_sim::{
    BootDist, GeneratorKind, OutputFormat, SimPool, SimulateArgs, SweepArg, TraceSource, WarmArg,
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
        Some(path) => config::load(path)?
            .pools
            .iter()
            .map(|p| SimPool {
                spec: p.spec.clone(),
                labels: p.selector.labels(),
            })
            .collect(),
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
        ..SimulateArgs::default()
    })
}
