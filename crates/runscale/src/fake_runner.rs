//! `runscale fake-runner`: the GitHub emulator's fake runner agent, built into the runscale
//! binary so `runscale demo` needs no second executable.
//!
//! It takes its runner from `GITHUB_JIT_CONFIG` (runscale's `env` credentials delivery, e.g. a
//! Kubernetes pod's Secret through `envFrom`), else reads the runners from the credentials file
//! the local-process backend writes (`RUNSCALE_CREDENTIALS_FILE`) and runs one agent per runner
//! listed, side by side ([`runscale_emulator::github::run_agent`]). The first SIGTERM or SIGINT asks every agent to
//! stop: an idle one disconnects and exits at once, a busy one finishes its job first.
//!
//! A CircleCI machine runner instead (the CircleCI emulator's fake), when
//! `CIRCLECI_RUNNER_API_AUTH_TOKEN` or the launch-agent's `LAUNCH_AGENT_API_AUTH_TOKEN` is set
//! (with `*_RUNNER_NAME`, `*_API_URL`, `*_MODE`, `*_IDLE_TIMEOUT`; e.g. circleci-runner-
//! autoscaler's CronJob pods), or the credentials file holds such runners.
//!
//! A Buildkite agent (the Buildkite emulator's fake, making the real agent's calls) when
//! `BUILDKITE_AGENT_TOKEN` is set (with `BUILDKITE_AGENT_NAME`, `_TAGS`, `_ENDPOINT`,
//! `_DISCONNECT_AFTER_JOB`, `_DISCONNECT_AFTER_IDLE_TIMEOUT`, `_ACQUIRE_JOB` and
//! `BUILDKITE_BUILD_PATH`, as `buildkite-agent start` reads them; e.g. a Buildscaler Job's pod).
//!
//! A GitLab runner slot (the GitLab emulator's fake, one worker per slot like `gitlab-runner
//! run-single` with the `system_id` runscale chose) when `CI_SERVER_TOKEN` is set or the
//! credentials file holds such runners (the variables runscale's GitLab provider hands out).
//!
//! What does not live here: the agent protocol itself (in `runscale-emulator`), and the other
//! ways the standalone `runscale-fake-runner` binary accepts a runner (`--jitconfig`, `--url`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use runscale_emulator::github::{
    AgentExit, JIT_CONFIG_SECRET, JitConfig, RunnerSource, read_credentials_file, run_agent,
};
use runscale_emulator::{buildkite, circleci, gitlab};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The environment variable naming the credentials file (set by the local-process backend).
pub const CREDENTIALS_FILE_VAR: &str = "RUNSCALE_CREDENTIALS_FILE";

/// The runners to run: the JIT configuration in `GITHUB_JIT_CONFIG`, else those of the
/// credentials file.
fn sources() -> anyhow::Result<Vec<RunnerSource>> {
    if let Ok(encoded) = std::env::var(JIT_CONFIG_SECRET) {
        let jit = JitConfig::decode(&encoded)
            .with_context(|| format!("{JIT_CONFIG_SECRET} is not a JIT configuration"))?;
        return Ok(vec![RunnerSource::Jit(jit)]);
    }
    let Some(path) = std::env::var_os(CREDENTIALS_FILE_VAR) else {
        bail!(
            "neither {JIT_CONFIG_SECRET} nor {CREDENTIALS_FILE_VAR} is set: fake-runner is \
             started by a runscale backend"
        );
    };
    let path = PathBuf::from(path);
    read_credentials_file(&path)
        .with_context(|| format!("cannot read runners from {}", path.display()))
}

/// Runs one agent per runner until each is done. Fails if no runner is given or its
/// credentials are unreadable, or if any agent failed.
pub async fn run() -> anyhow::Result<()> {
    if let Some(agent) = buildkite::AgentConfig::from_env()? {
        return run_buildkite(agent).await;
    }
    let circleci = circleci_runners()?;
    if !circleci.is_empty() {
        return run_circleci(circleci).await;
    }
    let gitlab = gitlab_runners()?;
    if !gitlab.is_empty() {
        return run_gitlab(gitlab).await;
    }
    let sources = sources()?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let agents: Vec<_> = sources
        .into_iter()
        .map(|source| tokio::spawn(run_agent(source, shutdown.clone())))
        .collect();
    let mut failed = 0usize;
    for agent in agents {
        match agent.await {
            Ok(Ok(report)) => {
                let why = match report.exit {
                    AgentExit::EphemeralDone => "ephemeral job done",
                    AgentExit::Shutdown => "shutdown",
                    AgentExit::RunnerRemoved => "runner removed",
                };
                info!(runner = %report.runner_name, jobs = report.jobs_completed, "agent exited: {why}");
            }
            Ok(Err(e)) => {
                error!(error = %e, "agent failed");
                failed += 1;
            }
            Err(e) => {
                error!(error = %e, "agent task failed");
                failed += 1;
            }
        }
    }
    signals.abort();
    if failed > 0 {
        bail!("{failed} agent(s) failed");
    }
    Ok(())
}

/// CircleCI runners from the environment, or from the credentials file when it holds any;
/// empty when this is not a CircleCI runner.
fn circleci_runners() -> anyhow::Result<Vec<circleci::AgentConfig>> {
    if let Some(c) = circleci::AgentConfig::from_env()? {
        return Ok(vec![c]);
    }
    match std::env::var_os(CREDENTIALS_FILE_VAR) {
        Some(path) => Ok(circleci::configs_from_credentials_file(&PathBuf::from(
            path,
        ))?),
        None => Ok(Vec::new()),
    }
}

/// Runs one agent per configuration side by side until each has exited (the first SIGTERM or
/// SIGINT asks them all to stop); `report` logs a finished one. Fails if any failed.
async fn run_all<C, R, E, F>(
    kind: &'static str,
    configs: Vec<C>,
    run: impl Fn(C, CancellationToken) -> F,
    report: impl Fn(R),
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let agents: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(run(c, shutdown.clone())))
        .collect();
    let mut failed = 0usize;
    for agent in agents {
        match agent.await {
            Ok(Ok(r)) => report(r),
            Ok(Err(e)) => {
                error!(error = %e, kind, "runner failed");
                failed += 1;
            }
            Err(e) => {
                error!(error = %e, kind, "runner task failed");
                failed += 1;
            }
        }
    }
    signals.abort();
    if failed > 0 {
        bail!("{failed} {kind} runner(s) failed");
    }
    Ok(())
}

/// Runs the CircleCI runners until each has exited (after its task in single-task mode, after
/// its idle timeout, or on SIGTERM, finishing a task in hand first).
async fn run_circleci(configs: Vec<circleci::AgentConfig>) -> anyhow::Result<()> {
    run_all("circleci", configs, circleci::run_agent, |report| {
        info!(
            runner = %report.runner_name,
            tasks = report.tasks_completed,
            exit = ?report.exit,
            "circleci runner exited"
        );
    })
    .await
}

/// GitLab runner slots from the environment, or from the credentials file when it holds any;
/// empty when this is not a GitLab runner.
fn gitlab_runners() -> anyhow::Result<Vec<gitlab::AgentConfig>> {
    if let Some(c) = gitlab::AgentConfig::from_vars(&|name| std::env::var(name).ok())? {
        return Ok(vec![c]);
    }
    match std::env::var_os(CREDENTIALS_FILE_VAR) {
        Some(path) => Ok(gitlab::configs_from_credentials_file(&PathBuf::from(path))?),
        None => Ok(Vec::new()),
    }
}

/// Runs the GitLab runner slots until each has exited (after its `max_builds` jobs, or on
/// SIGTERM once its job is done).
async fn run_gitlab(configs: Vec<gitlab::AgentConfig>) -> anyhow::Result<()> {
    run_all("gitlab", configs, gitlab::run_agent, |report| {
        info!(
            runner = %report.runner_name,
            jobs = report.jobs_completed,
            exit = ?report.exit,
            "gitlab runner slot exited"
        );
    })
    .await
}

/// Runs the Buildkite agent until it leaves (after its job with disconnect-after-job, after its
/// idle timeout, when stopped through the API, or on SIGTERM once its job is done).
async fn run_buildkite(config: buildkite::AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let report = buildkite::run_agent(config, shutdown).await;
    signals.abort();
    let report = report.context("buildkite agent failed")?;
    info!(agent = %report.name, jobs = report.jobs_finished, exit = ?report.exit, "buildkite agent exited");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutdown requested");
    shutdown.cancel();
}
