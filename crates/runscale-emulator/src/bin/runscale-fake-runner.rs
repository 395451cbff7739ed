//! `runscale-fake-runner`: a fake GitHub Actions runner for the runscale emulator.
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

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use runscale_emulator::circleci;
use runscale_emulator::github::{
    AgentExit, JIT_CONFIG_SECRET, JitConfig, Registration, RunnerSource, read_credentials_file,
    run_agent, split_labels,
};
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "run-single")
    {
        return gitlab_run_single().await;
    }
    if std::env::var_os(runscale_emulator::buildkite::TOKEN_VAR).is_some()
        || std::env::var_os(runscale_emulator::buildkite::CONFIG_VAR).is_some()
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
        return run_circleci(circleci, shutdown_on_signal()).await;
    }
    let sources = match sources(Args::parse()) {
        Ok(sources) => sources,
        Err(message) => {
            eprintln!("runscale-fake-runner: {message}");
            return ExitCode::from(2);
        }
    };
    let shutdown = shutdown_on_signal();
    let agents: Vec<_> = sources
        .into_iter()
        .map(|source| tokio::spawn(run_agent(source, shutdown.clone())))
        .collect();
    let mut code = ExitCode::SUCCESS;
    for agent in agents {
        match agent.await {
            Ok(Ok(report)) => {
                let why = match report.exit {
                    AgentExit::EphemeralDone => "ephemeral job done",
                    AgentExit::Shutdown => "shutdown",
                    AgentExit::RunnerRemoved => "runner removed",
                };
                tracing::info!(
                    runner = %report.runner_name,
                    jobs = report.jobs_completed,
                    "agent exited: {why}"
                );
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "agent failed");
                code = ExitCode::from(1);
            }
            Err(error) => {
                tracing::error!(%error, "agent task failed");
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

async fn run_circleci(
    configs: Vec<circleci::AgentConfig>,
    shutdown: CancellationToken,
) -> ExitCode {
    let agents: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(circleci::run_agent(c, shutdown.clone())))
        .collect();
    let mut code = ExitCode::SUCCESS;
    for agent in agents {
        match agent.await {
            Ok(Ok(report)) => tracing::info!(
                runner = %report.runner_name,
                tasks = report.tasks_completed,
                exit = ?report.exit,
                "circleci runner exited"
            ),
            Ok(Err(error)) => {
                tracing::error!(%error, "circleci runner failed");
                code = ExitCode::from(1);
            }
            Err(error) => {
                tracing::error!(%error, "circleci runner task failed");
                code = ExitCode::from(1);
            }
        }
    }
    code
}

/// A Buildkite agent from `BUILDKITE_AGENT_*` variables (see
/// `runscale_emulator::buildkite::AgentConfig`).
async fn run_buildkite(shutdown: CancellationToken) -> ExitCode {
    use runscale_emulator::buildkite;
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
async fn gitlab_run_single() -> ExitCode {
    use runscale_emulator::gitlab;
    let args = RunSingle::parse_from(std::env::args_os().skip(1));
    let config =
        match gitlab::AgentConfig::from_run_single(&args.config, &args.runner, args.max_builds) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("runscale-fake-runner: {e}");
                return ExitCode::from(2);
            }
        };
    match gitlab::run_agent(config, shutdown_on_signal()).await {
        Ok(r) => {
            tracing::info!(runner = %r.runner_name, system_id = %r.system_id, jobs = r.jobs_completed, exit = ?r.exit, "gitlab runner exited");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "gitlab runner failed");
            ExitCode::from(1)
        }
    }
}

/// GitLab runner managers from `CI_SERVER_*` / `RUNNER_*` variables or runscale's
/// credentials file (one per slot, run side by side); `None` when this is not a GitLab runner.
async fn gitlab_main() -> Option<ExitCode> {
    use runscale_emulator::gitlab;
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
    let shutdown = shutdown_on_signal();
    let workers: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(gitlab::run_agent(c, shutdown.clone())))
        .collect();
    let mut code = ExitCode::SUCCESS;
    for worker in workers {
        match worker.await {
            Ok(Ok(r)) => {
                tracing::info!(runner = %r.runner_name, system_id = %r.system_id, jobs = r.jobs_completed, exit = ?r.exit, "gitlab runner exited")
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "gitlab runner failed");
                code = ExitCode::from(1);
            }
            Err(error) => {
                tracing::error!(%error, "gitlab runner task failed");
                code = ExitCode::from(1);
            }
        }
    }
    Some(code)
}
