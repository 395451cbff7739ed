//! The fake runner agent's command line, for all four CI systems: the one entry point of both
//! the `runscale-fake-runner` binary and `runscale fake-runner` (what the demo's, the chaos
//! soak's and the tests' runner processes run). [`main`] takes the arguments after the
//! program name's place and returns the exit code; the caller sets up logging.
//!
//! Where its runner comes from, first match wins:
//! 1. `--jitconfig <encoded>` or `RUNSCALE_JITCONFIG`;
//! 2. `GITHUB_JIT_CONFIG` (runscale's `env` credentials delivery);
//! 3. the file named by `RUNSCALE_CREDENTIALS_FILE` (runscale's `file` delivery; one agent
//!    per runner listed, run side by side);
//! 4. `--url <emulator>/<owner>[/<repo>] --token <registration token> --name <name>`
//!    (`config.sh`-style; persistent unless `--ephemeral`), also read from `GITHUB_URL`,
//!    `GITHUB_RUNNER_TOKEN`, `RUNNER_NAME` and `RUNNER_LABELS` (what runscale's GitHub
//!    provider hands persistent runners with `env` delivery).
//!
//! A CircleCI machine runner instead, when `CIRCLECI_RUNNER_API_AUTH_TOKEN` (or the
//! launch-agent's `LAUNCH_AGENT_API_AUTH_TOKEN`) is set, or the credentials file holds one:
//! with `CIRCLECI_RUNNER_NAME`, `CIRCLECI_RUNNER_API_URL`, `CIRCLECI_RUNNER_MODE`
//! (`single-task` | `continuous`) and `CIRCLECI_RUNNER_IDLE_TIMEOUT` (or their `LAUNCH_AGENT_*`
//! names); see `runscale_emulator::circleci::AgentConfig`.
//!
//! A Buildkite agent instead, when `BUILDKITE_AGENT_TOKEN` is set (or the `token` of the
//! configuration file `BUILDKITE_AGENT_CONFIG` names): with
//! `BUILDKITE_AGENT_NAME`, `BUILDKITE_AGENT_TAGS`, `BUILDKITE_AGENT_ENDPOINT`,
//! `BUILDKITE_AGENT_DISCONNECT_AFTER_JOB`, `BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT`,
//! `BUILDKITE_AGENT_ACQUIRE_JOB` and `BUILDKITE_BUILD_PATH`; it makes the calls
//! `buildkite-agent start` makes and runs each job's command in a shell; see
//! `runscale_emulator::buildkite::AgentConfig`.
//!
//! A GitLab runner instead, when `CI_SERVER_TOKEN` is set or the credentials file holds it:
//! one worker (runner manager) per runner entry, each like `gitlab-runner run-single
//! --max-builds`, with `CI_SERVER_URL`, `RUNNER_NAME`, `RUNSCALE_GITLAB_SYSTEM_ID` (written into
//! the slot's `.runner_system_id` under `GITLAB_RUNNER_SLOTS_DIR`, then read back with
//! gitlab-runner's check) and `RUNSCALE_GITLAB_MAX_BUILDS`; see
//! `runscale_emulator::gitlab::AgentConfig`. As `runscale-fake-runner run-single -c
//! <dir>/config.toml -r <name> [--max-builds <n>]` it stands in for gitlab-runner under
//! runscale's start-up script (`deploy/exec/gitlab-runner-slots.sh`).
//!
//! Exit codes: 0 done (job finished, shutdown, or runner removed), 1 runtime failure,
//! 2 bad arguments or credentials, 27 a Buildkite job that could not be acquired (as
//! `buildkite-agent start --acquire-job`). SIGTERM/SIGINT: idle agents disconnect and exit at once;
//! busy ones finish their job first.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::circleci;
use crate::github::{
    AgentExit, JIT_CONFIG_SECRET, JitConfig, Registration, RunnerSource, read_credentials_file,
    run_agent, split_labels,
};
use clap::Parser;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// A fake GitHub Actions runner that takes jobs from the runscale GitHub emulator.
#[derive(Parser)]
#[command(name = "runscale-fake-runner", version)]
struct Args {
    /// An `encoded_jit_config` from `generate-jitconfig`.
    #[arg(long, env = "RUNSCALE_JITCONFIG", hide_env_values = true)]
    jitconfig: Option<String>,
    /// Registration URL: `<emulator base URL>/<owner>[/<repo>]`.
    #[arg(long, env = "GITHUB_URL")]
    url: Option<String>,
    /// Registration token (with `--url`).
    #[arg(long, env = "GITHUB_RUNNER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Runner name (with `--url`).
    #[arg(long, env = "RUNNER_NAME")]
    name: Option<String>,
    /// Comma-separated custom labels (with `--url`).
    #[arg(long, env = "RUNNER_LABELS")]
    labels: Option<String>,
    /// Take one job, then exit (with `--url`).
    #[arg(long)]
    ephemeral: bool,
    /// Replace an idle runner of the same name (with `--url`).
    #[arg(long)]
    replace: bool,
}

fn sources(args: Args) -> Result<Vec<RunnerSource>, String> {
    if let Some(encoded) = args.jitconfig {
        return Ok(vec![RunnerSource::Jit(
            JitConfig::decode(&encoded).map_err(|e| e.to_string())?,
        )]);
    }
    if let Ok(encoded) = std::env::var(JIT_CONFIG_SECRET) {
        return Ok(vec![RunnerSource::Jit(
            JitConfig::decode(&encoded).map_err(|e| e.to_string())?,
        )]);
    }
    if let Some(path) = std::env::var_os("RUNSCALE_CREDENTIALS_FILE") {
        return read_credentials_file(&PathBuf::from(path)).map_err(|e| e.to_string());
    }
    match (args.url, args.token, args.name) {
        (Some(url), Some(token), Some(name)) => Ok(vec![RunnerSource::Register(Registration {
            url,
            token: SecretString::from(token),
            name,
            labels: args.labels.as_deref().map(split_labels).unwrap_or_default(),
            ephemeral: args.ephemeral,
            replace: args.replace,
        })]),
        _ => Err(
            "no runner: give --jitconfig (or RUNSCALE_JITCONFIG, GITHUB_JIT_CONFIG, \
             RUNSCALE_CREDENTIALS_FILE), or --url, --token and --name"
                .to_owned(),
        ),
    }
}

/// Runs the fake runner with `args` (the first is the program name, as in `std::env::args_os`)
/// until its runners are done; returns the exit code (see the module docs). Logs through
/// `tracing`: the caller installs a subscriber.
pub async fn main(args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "run-single") {
        return gitlab_run_single(args).await;
    }
    if std::env::var_os(crate::buildkite::TOKEN_VAR).is_some()
        || std::env::var_os(crate::buildkite::CONFIG_VAR).is_some()
    {
        return run_buildkite(shutdown_on_signal()).await;
    }
    if let Some(code) = gitlab_main().await {
        return code;
    }
    let circleci = match circleci_runners() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("runscale-fake-runner: {message}");
            return ExitCode::from(2);
        }
    };
    if !circleci.is_empty() {
        return run_circleci(circleci).await;
    }
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let sources = match sources(args) {
        Ok(sources) => sources,
        Err(message) => {
            eprintln!("runscale-fake-runner: {message}");
            return ExitCode::from(2);
        }
    };
    run_all("github", sources, run_agent, |report| {
        let why = match report.exit {
            AgentExit::EphemeralDone => "ephemeral job done",
            AgentExit::Shutdown => "shutdown",
            AgentExit::RunnerRemoved => "runner removed",
        };
        tracing::info!(runner = %report.runner_name, jobs = report.jobs_completed, "agent exited: {why}");
    })
    .await
}

/// Runs one agent per configuration side by side until each has exited (the first SIGTERM or
/// SIGINT asks them all to stop); `report` logs a finished one. Exit code 1 if any failed.
async fn run_all<C, R, E, F>(
    kind: &'static str,
    configs: Vec<C>,
    run: impl Fn(C, CancellationToken) -> F,
    report: impl Fn(R),
) -> ExitCode
where
    F: std::future::Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let shutdown = shutdown_on_signal();
    let agents: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(run(c, shutdown.clone())))
        .collect();
    let mut code = ExitCode::SUCCESS;
    for agent in agents {
        match agent.await {
            Ok(Ok(r)) => report(r),
            Ok(Err(error)) => {
                tracing::error!(%error, kind, "runner failed");
                code = ExitCode::from(1);
            }
            Err(error) => {
                tracing::error!(%error, kind, "runner task failed");
                code = ExitCode::from(1);
            }
        }
    }
    code
}

/// A token cancelled by the first SIGTERM or SIGINT.
fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
    shutdown
}

/// CircleCI runners from the environment or runscale's credentials file; empty when this is
/// not a CircleCI runner.
fn circleci_runners() -> Result<Vec<circleci::AgentConfig>, String> {
    if let Some(c) = circleci::AgentConfig::from_env().map_err(|e| e.to_string())? {
        return Ok(vec![c]);
    }
    match std::env::var_os("RUNSCALE_CREDENTIALS_FILE") {
        Some(path) => {
            circleci::configs_from_credentials_file(&PathBuf::from(path)).map_err(|e| e.to_string())
        }
        None => Ok(Vec::new()),
    }
}

/// Runs the CircleCI runners until each has exited (after its task in single-task mode, after
/// its idle timeout, or on SIGTERM, finishing a task in hand first).
async fn run_circleci(configs: Vec<circleci::AgentConfig>) -> ExitCode {
    run_all("circleci", configs, circleci::run_agent, |report| {
        tracing::info!(
            runner = %report.runner_name,
            tasks = report.tasks_completed,
            exit = ?report.exit,
            "circleci runner exited"
        );
    })
    .await
}

/// A Buildkite agent from `BUILDKITE_AGENT_*` variables (see
/// `crate::buildkite::AgentConfig`).
async fn run_buildkite(shutdown: CancellationToken) -> ExitCode {
    use crate::buildkite;
    let config = match buildkite::AgentConfig::from_env() {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprintln!("runscale-fake-runner: {} is empty", buildkite::TOKEN_VAR);
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("runscale-fake-runner: {e}");
            return ExitCode::from(2);
        }
    };
    match buildkite::run_agent(config, shutdown).await {
        Ok(report) => {
            tracing::info!(
                agent = %report.name,
                jobs = report.jobs_finished,
                exit = ?report.exit,
                "buildkite agent exited"
            );
            ExitCode::SUCCESS
        }
        // As `buildkite-agent start --acquire-job` does when Buildkite refuses the job.
        Err(error @ buildkite::AgentError::AcquireRejected(_)) => {
            tracing::error!(%error, "buildkite agent failed");
            ExitCode::from(27)
        }
        Err(error) => {
            tracing::error!(%error, "buildkite agent failed");
            ExitCode::from(1)
        }
    }
}

/// `run-single`, as runscale's GitLab start-up script starts gitlab-runner.
#[derive(Parser)]
#[command(name = "runscale-fake-runner run-single")]
struct RunSingle {
    /// The config file (its directory holds `.runner_system_id`).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// The `[[runners]]` entry to run, by name.
    #[arg(short = 'r', long = "runner")]
    runner: String,
    /// Jobs before exiting; 0: no limit.
    #[arg(long = "max-builds", default_value_t = 0)]
    max_builds: u32,
}

/// One GitLab runner manager like `gitlab-runner run-single -c FILE -r NAME --max-builds N`.
async fn gitlab_run_single(args: Vec<OsString>) -> ExitCode {
    use crate::gitlab;
    let args = match RunSingle::try_parse_from(args.into_iter().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let config =
        match gitlab::AgentConfig::from_run_single(&args.config, &args.runner, args.max_builds) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("runscale-fake-runner: {e}");
                return ExitCode::from(2);
            }
        };
    run_all("gitlab", vec![config], gitlab::run_agent, log_gitlab_exit).await
}

/// GitLab runner managers from `CI_SERVER_*` / `RUNNER_*` variables or runscale's
/// credentials file (one per slot, run side by side); `None` when this is not a GitLab runner.
async fn gitlab_main() -> Option<ExitCode> {
    use crate::gitlab;
    let configs = match gitlab::AgentConfig::from_vars(&|n| std::env::var(n).ok()) {
        Ok(Some(c)) => Ok(vec![c]),
        Ok(None) => match std::env::var_os("RUNSCALE_CREDENTIALS_FILE") {
            Some(path) => gitlab::configs_from_credentials_file(&PathBuf::from(path)),
            None => Ok(Vec::new()),
        },
        Err(e) => Err(e),
    };
    let configs = match configs {
        Ok(c) if c.is_empty() => return None,
        Ok(c) => c,
        Err(e) => {
            eprintln!("runscale-fake-runner: {e}");
            return Some(ExitCode::from(2));
        }
    };
    Some(run_all("gitlab", configs, gitlab::run_agent, log_gitlab_exit).await)
}

fn log_gitlab_exit(r: crate::gitlab::AgentReport) {
    tracing::info!(runner = %r.runner_name, system_id = %r.system_id, jobs = r.jobs_completed, exit = ?r.exit, "gitlab runner exited");
}
