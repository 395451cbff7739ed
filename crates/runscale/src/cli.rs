//! The command line: arguments (clap), logging, then one command; errors become exit codes.
//!
//! Exit codes: 0 success; 2 invalid configuration (unreadable file, `${VAR}` problem, YAML
//! syntax, a field with a wrong type or value, or an adapter that blames its configuration,
//! such as a missing secret) and command-line usage errors; 1 any other failure (a pool's
//! pass failed, a probe failed, the port is taken). Errors go to stderr with their chain of
//! causes; logs go to stderr too; command output (tables, the schema) to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, BuildError, ConfigError, LeaderElectionConfig, Validated};
use crate::logging::{self, LogFormat};
use crate::rediscovery::Rediscovery;
use crate::{commands, daemon};

/// Exit code for an invalid configuration.
pub const EXIT_INVALID_CONFIG: u8 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// runscale: autoscaler for self-hosted CI runners.
#[derive(Debug, Parser)]
#[command(name = "runscale", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RUNSCALE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter: a level (`info`, `debug`) or tracing directives
    /// (`runscale_core=debug,info`).
    #[arg(long, global = true, default_value = "info", env = "RUNSCALE_LOG_LEVEL", value_parser = logging::parse_level)]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP server and reconciler, until SIGTERM or SIGINT.
    Run(DaemonArgs),
    /// Run one pass over every pool, print what was planned, and exit (non-zero if any pool
    /// failed).
    Once(RunArgs),
    /// Validate the configuration, then probe every provider and backend read-only.
    Check(ConfigArg),
    /// Configuration tools.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Buildscaler's command line (elotl buildscaler-eks): autoscale Buildkite agents in pods
    /// made from every Job labelled `app.elotl.co: buildscaler`, with Buildscaler's options.
    #[cfg(all(feature = "backend-kubernetes", feature = "provider-buildkite"))]
    Buildscaler(crate::buildscaler::BuildscalerArgs),
    /// Replay a job trace (or a generated one) against runscale's policy and the policies of
    /// the autoscalers it replaces; report waits and cost per policy.
    Simulate(SimulateCli),
    /// Print the version and the provider and backend types compiled in.
    Version,
    /// Run runscale end to end on this machine against the GitHub emulator, with runner
    /// processes and a synthetic workload; print live progress and a summary.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// The chaos soak: runscale as child processes against the GitHub emulator with API
    /// errors, 429 bursts, lost and duplicated webhooks, `kill -9` of runscale and of a busy
    /// runner, and an API outage; reports lost jobs, busy runners killed, `max` exceeded,
    /// orphans and waits, and fails if a safety number is not 0.
    #[cfg(feature = "demo")]
    Chaos(crate::chaos::ChaosArgs),
    /// Convert the configuration of a system runscale replaces into a runscale configuration
    /// file (warnings on stderr for fields without an equivalent).
    Import {
        /// Which system.
        #[command(subcommand)]
        command: crate::import::ImportCommand,
    },
    /// Run an emulator of a CI system (for trying runscale without an account).
    #[cfg(feature = "demo")]
    Emulator(crate::demo::EmulatorCli),
    /// Run the emulators' fake runner agent (what the demo's runner processes run): its runners
    /// come from the environment or `RUNSCALE_CREDENTIALS_FILE`; the arguments are those of
    /// `runscale-fake-runner`.
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    FakeRunner {
        /// `runscale-fake-runner`'s arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Arguments of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateCli {
    /// Trace file: CSV or JSON Lines (`queued_at`, `duration_s`, `labels`, optional `pool`),
    /// or GitHub Actions jobs JSON as returned by the REST API (`.json`).
    #[arg(long, conflicts_with = "generate")]
    pub trace: Option<PathBuf>,
    /// Generate the trace instead: `workday`, `burst`, `nightly` or `matrix`.
    #[arg(long)]
    pub generate: Option<String>,
    /// Seed of the generator and of the simulation's own randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Take the pools (limits, timeouts, selector labels) from this configuration file;
    /// default: one pool matching every job, with runscale's defaults.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Policies to compare: `all`, or a comma-separated list (`runscale,arc,terraform-aws,
    /// taskscaler,agent-scaler,vela,circleci-lambda,gitlab-fleet,github-action-autoscaler,
    /// buildscaler,clairvoyant`).
    #[arg(long, default_value = "all")]
    pub policies: String,
    /// Boot time of an instance: `45s`, `uniform:30s..90s`, `lognormal:mean=45s,sd=15s`.
    #[arg(long, default_value = "45s", conflicts_with = "boot_dist")]
    pub boot: String,
    /// Boot times sampled from a file (one duration per line).
    #[arg(long)]
    pub boot_dist: Option<PathBuf>,
    /// Output: `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Write charts (SVG and PNG) into this directory.
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// Every pool's predictive warm capacity: `off`, `auto`, or `TARGET_WAIT[@COVERAGE]`
    /// (`10s`, `5s@0.9`); default: the configuration's (`auto` without one).
    #[arg(long)]
    pub warm: Option<String>,
    /// Every pool's instance reuse for ephemeral runners: `off`, or `MAX_USES[@MAX_AGE]`
    /// (`10`, `10@12h`); default: the configuration's (off without one).
    #[arg(long)]
    pub reuse: Option<String>,
    /// Also runscale's policy once per setting, as extra rows (its cost-against-wait
    /// frontier): `target_wait=0s,5s,10s,30s`, `coverage=0.6,0.8,0.9` or `warm=off,10s@0.8`.
    #[arg(long)]
    pub sweep: Option<String>,
}

/// Configuration subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of the configuration file.
    Schema,
}

/// The configuration file argument.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (YAML). Without it, the configuration comes from the environment of
    /// a seed system runscale replaces: `SECRET_NAME`, ... (CircleCI's simple-Lambda
    /// autoscaler) or `APP_CIRCLE_TOKEN`, ... (circleci-runner-autoscaler); see the README.
    #[arg(short, long, env = "RUNSCALE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Arguments of `run` and `once`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Compute and log plans, act on nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file and `--dry-run`.
    #[command(flatten)]
    pub run: RunArgs,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// Leader election flags of `run`; each overrides its key of the configuration's
/// `leader_election` section (in the environment modes, of the one `RUNSCALE_LEADER_ELECT*`
/// make).
#[derive(Clone, Debug, Default, Args)]
pub struct LeaderArgs {
    /// Elect a leader among the replicas over a Kubernetes Lease; only the leader reconciles
    /// (`leader_election.enabled`).
    #[arg(long, env = "RUNSCALE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease (`leader_election.lease_name`; default "runscale").
    #[arg(long, value_name = "NAME")]
    pub leader_elect_lease_name: Option<String>,
    /// Namespace of the Lease (`leader_election.namespace`; default: the Kubernetes client's).
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_elect_namespace: Option<String>,
    /// This replica's identity in the Lease (`leader_election.identity`; default
    /// `{hostname}_{pid}`).
    #[arg(long, value_name = "ID", env = "RUNSCALE_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,
    /// How long a claim lasts after its last renewal (`leader_election.lease_duration`;
    /// default 15s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub leader_elect_lease_duration: Option<Duration>,
    /// The leader stops reconciling after this long without a renewal
    /// (`leader_election.renew_deadline`; default 10s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub leader_elect_renew_deadline: Option<Duration>,
    /// How often the leader renews and the others try to acquire
    /// (`leader_election.retry_period`; default 2s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub leader_elect_retry_period: Option<Duration>,
}

impl LeaderArgs {
    /// Writes the flags that were given over `config`.
    pub fn apply(&self, config: &mut LeaderElectionConfig) {
        if self.leader_elect {
            config.enabled = true;
        }
        if let Some(name) = &self.leader_elect_lease_name {
            config.lease_name.clone_from(name);
        }
        if let Some(ns) = &self.leader_elect_namespace {
            config.namespace = Some(ns.clone());
        }
        if let Some(id) = &self.leader_elect_identity {
            config.identity = Some(id.clone());
        }
        for (value, field) in [
            (self.leader_elect_lease_duration, &mut config.lease_duration),
            (self.leader_elect_renew_deadline, &mut config.renew_deadline),
            (self.leader_elect_retry_period, &mut config.retry_period),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
    }
}

/// Parses the process's arguments, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws progress on the terminal: keep routine logs out of it unless asked.
    let level = match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo(_) | Command::Chaos(_) if cli.log_level == "info" => "warn",
        #[cfg(all(feature = "backend-kubernetes", feature = "provider-buildkite"))]
        Command::Buildscaler(ref a) if a.verbose && cli.log_level == "info" => "debug",
        _ => &cli.log_level,
    };
    logging::init(cli.log_format, level);
    #[cfg(feature = "demo")]
    if let Command::FakeRunner { args } = cli.command {
        return fake_runner(args);
    }
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", render(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Runs one command.
pub fn execute(command: Command) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Config {
            command: ConfigCommand::Schema,
        } => commands::schema(&mut stdout),
        Command::Version => commands::version(&mut stdout),
        Command::Simulate(args) => crate::simulate::run(&args, &mut stdout),
        Command::Import { command } => {
            crate::import::run(&command, &mut stdout, &mut std::io::stderr())
        }
        Command::Check(args) => {
            let rt = runtime()?;
            let (config, _) = rt.block_on(load(&args, Arc::new(|_| {})))?;
            rt.block_on(commands::check(&config, &mut stdout))
        }
        Command::Once(args) => {
            let rt = runtime()?;
            let (config, _) = rt.block_on(load(&args.config, Arc::new(|_| {})))?;
            rt.block_on(commands::once(&config, args.dry_run, &mut stdout))
        }
        Command::Run(args) => {
            let rt = runtime()?;
            let leader = args.leader.clone();
            let (config, rediscovery) = rt.block_on(load(
                &args.run.config,
                Arc::new(move |c: &mut config::Config| leader.apply(&mut c.leader_election)),
            ))?;
            drop(stdout);
            rt.block_on(daemon::run(&config, args.run.dry_run, rediscovery))
        }
        #[cfg(all(feature = "backend-kubernetes", feature = "provider-buildkite"))]
        Command::Buildscaler(args) => {
            drop(stdout);
            runtime()?.block_on(crate::buildscaler::run(&args))
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            drop(stdout);
            runtime()?.block_on(crate::demo::run(&args))
        }
        #[cfg(feature = "demo")]
        Command::Chaos(args) => {
            drop(stdout);
            runtime()?.block_on(crate::chaos::run(&args))
        }
        #[cfg(feature = "demo")]
        Command::Emulator(args) => {
            // Locked stdout cannot cross threads; the emulator prints one line.
            drop(stdout);
            runtime()?.block_on(crate::demo::emulator(args, &mut std::io::stdout()))
        }
        #[cfg(feature = "demo")]
        Command::FakeRunner { args } => match fake_runner(args) {
            code if code == ExitCode::SUCCESS => Ok(()),
            _ => anyhow::bail!("the fake runner failed"),
        },
    }
}

/// `fake-runner`: the emulators' fake runner agent with `args`; its own exit codes.
#[cfg(feature = "demo")]
fn fake_runner(args: Vec<std::ffi::OsString>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    let args = std::iter::once("runscale fake-runner".into())
        .chain(args)
        .collect();
    runtime.block_on(runscale_emulator::fake_runner::main(args))
}

/// The configuration file, or else the environment-only configuration of a seed system, with
/// `adjust` applied before validation; for an environment mode that discovers its pools, the
/// re-discovery `run` repeats every `RUNSCALE_DISCOVERY_INTERVAL`.
async fn load(
    args: &ConfigArg,
    adjust: config::environment::Adjust,
) -> anyhow::Result<(Validated, Option<Rediscovery>)> {
    use config::environment::{Loader, Mode, discovery_interval};
    if let Some(path) = &args.config {
        return Ok((config::load_with(path, |c| adjust(c))?, None));
    }
    let lookup = |name: &str| std::env::var(name).ok();
    let Some(mode) = Mode::detect(&lookup) else {
        return Err(ConfigError::Missing.into());
    };
    let every = mode
        .rediscovers()
        .then(|| discovery_interval(mode, &lookup))
        .transpose()?;
    let mut loader = Loader::new(mode, adjust);
    let config = loader.load().await?;
    Ok((config, every.map(|every| Rediscovery::new(loader, every))))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The exit code for an error: 2 for a bad configuration, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some()
            || cause
                .downcast_ref::<crate::import::github_action_autoscaler::ImportError>()
                .is_some()
        {
            return EXIT_INVALID_CONFIG;
        }
        if let Some(b) = cause.downcast_ref::<BuildError>()
            && b.is_misconfiguration()
        {
            return EXIT_INVALID_CONFIG;
        }
        if let Some(runscale_sim::SimError::Invalid { .. } | runscale_sim::SimError::Trace(_)) =
            cause.downcast_ref::<runscale_sim::SimError>()
        {
            return EXIT_INVALID_CONFIG;
        }
    }
    EXIT_FAILURE
}

/// The error and its causes, one per line after the first.
pub fn render(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
    }
    text
}
