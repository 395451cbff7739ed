//! The fake CircleCI machine runner: polls the emulator for tasks of its resource class with
//! the resource-class token, "runs" each for its scripted duration while sending heartbeats,
//! reports the result, and exits after one task (`single-task`) or after `idle_timeout`
//! without a task (`continuous`). Shutdown (SIGTERM) drains: a running task is finished
//! first, as the real runner does.
//!
//! It is configured the way the real agents are: machine runner 3's `CIRCLECI_RUNNER_*`
//! variables, or the older launch-agent's `LAUNCH_AGENT_*` ones (see [`AgentConfig::from_vars`]),
//! also when they come in runscale's credentials file (`RUNSCALE_CREDENTIALS_FILE`).

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::ClaimedTask;

/// The resource-class token (machine runner 3 name first, launch-agent name second).
pub const TOKEN_VARS: [&str; 2] = [
    "CIRCLECI_RUNNER_API_AUTH_TOKEN",
    "LAUNCH_AGENT_API_AUTH_TOKEN",
];
/// The runner name.
pub const NAME_VARS: [&str; 2] = ["CIRCLECI_RUNNER_NAME", "LAUNCH_AGENT_RUNNER_NAME"];
/// The runner API base URL (without `/api/v3`).
pub const URL_VARS: [&str; 2] = ["CIRCLECI_RUNNER_API_URL", "LAUNCH_AGENT_API_URL"];
/// `single-task` or `continuous`.
pub const MODE_VARS: [&str; 2] = ["CIRCLECI_RUNNER_MODE", "LAUNCH_AGENT_RUNNER_MODE"];
/// How long a `continuous` runner waits for a task before it exits (`5m`, `30s`).
pub const IDLE_TIMEOUT_VARS: [&str; 2] = [
    "CIRCLECI_RUNNER_IDLE_TIMEOUT",
    "LAUNCH_AGENT_RUNNER_IDLE_TIMEOUT",
];

/// How the runner lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerMode {
    /// Exit after one task (or after the idle timeout without one).
    SingleTask,
    /// Take tasks until the idle timeout (or forever without one).
    Continuous,
}

impl RunnerMode {
    /// Parses `single-task` / `continuous`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "single-task" => Some(RunnerMode::SingleTask),
            "continuous" => Some(RunnerMode::Continuous),
            _ => None,
        }
    }
}

/// One fake runner's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Base URL of the emulator (`http://127.0.0.1:PORT`).
    pub api_url: String,
    /// The resource-class token.
    pub token: SecretString,
    /// The runner name shown in the listing.
    pub name: String,
    /// The host name reported.
    pub hostname: String,
    /// Single-task or continuous.
    pub mode: RunnerMode,
    /// Exit after this long without a task.
    pub idle_timeout: Option<Duration>,
    /// Pause between two polls that found no task.
    pub poll_interval: Duration,
    /// Pause between two heartbeats while running a task.
    pub heartbeat_interval: Duration,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The emulator refused the token.
    #[error("the runner API refused the resource-class token")]
    Unauthorized,
    /// The emulator answered something unexpected.
    #[error("runner API error: {0}")]
    Api(String),
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// A `single-task` runner finished its task.
    TaskDone,
    /// No task came within the idle timeout.
    IdleTimeout,
    /// Asked to stop (after finishing any task it held).
    Shutdown,
}

/// What the agent did.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The runner's name.
    pub runner_name: String,
    /// Tasks run to completion.
    pub tasks_completed: u32,
    /// Why it exited.
    pub exit: AgentExit,
}

fn first(lookup: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| lookup(n).filter(|v| !v.trim().is_empty()))
}

impl AgentConfig {
    /// Builds a configuration from variables: [`TOKEN_VARS`], [`NAME_VARS`], [`URL_VARS`]
    /// (all required), [`MODE_VARS`] (default `continuous`, as the real runner),
    /// [`IDLE_TIMEOUT_VARS`] (default: never). `Ok(None)` when no token variable is set (not a
    /// CircleCI runner).
    pub fn from_vars(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, AgentError> {
        let Some(token) = first(lookup, &TOKEN_VARS) else {
            return Ok(None);
        };
        let missing = |what: &[&str; 2]| AgentError::Config(format!("{} is not set", what[0]));
        let name = first(lookup, &NAME_VARS).ok_or_else(|| missing(&NAME_VARS))?;
        let api_url = first(lookup, &URL_VARS).ok_or_else(|| missing(&URL_VARS))?;
        let mode = match first(lookup, &MODE_VARS) {
            Some(m) => RunnerMode::parse(&m).ok_or_else(|| {
                AgentError::Config(format!(
                    "{}: expected single-task or continuous",
                    MODE_VARS[0]
                ))
            })?,
            None => RunnerMode::Continuous,
        };
        let idle_timeout = first(lookup, &IDLE_TIMEOUT_VARS)
            .map(|v| {
                humantime_serde::re::humantime::parse_duration(v.trim())
                    .map_err(|e| AgentError::Config(format!("{}: {e}", IDLE_TIMEOUT_VARS[0])))
            })
            .transpose()?;
        Ok(Some(AgentConfig {
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: SecretString::from(token),
            hostname: lookup("HOSTNAME").unwrap_or_else(|| name.clone()),
            name,
            mode,
            idle_timeout,
            poll_interval: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(1),
        }))
    }

    /// [`from_vars`](Self::from_vars) over the process environment.
    pub fn from_env() -> Result<Option<Self>, AgentError> {
        Self::from_vars(&|n| std::env::var(n).ok())
    }
}

/// The CircleCI runners of runscale's credentials file (`{"runners":[{"name","vars",
/// "secrets"}]}`): entries without a resource-class token are skipped. Settings missing from
/// an entry are taken from the environment.
pub fn configs_from_credentials_file(path: &Path) -> Result<Vec<AgentConfig>, AgentError> {
    crate::credentials::configs(path, AgentConfig::from_vars, AgentError::Config)
}

/// Runs one fake runner until it exits by itself or `shutdown` is cancelled (a task in hand
/// is finished first).
pub async fn run_agent(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Api(e.to_string()))?;
    let base = format!("{}/api/v3/runner", config.api_url);
    let hello = json!({ "name": config.name, "hostname": config.hostname });
    let mut done = 0u32;
    let mut idle_since = Instant::now();
    let exit = loop {
        if shutdown.is_cancelled() {
            break AgentExit::Shutdown;
        }
        if config
            .idle_timeout
            .is_some_and(|t| idle_since.elapsed() >= t)
        {
            break AgentExit::IdleTimeout;
        }
        let resp = client
            .post(format!("{base}/claim"))
            .bearer_auth(config.token.expose_secret())
            .json(&hello)
            .send()
            .await;
        let task = match resp {
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                return Err(AgentError::Unauthorized);
            }
            Ok(r) if r.status() == reqwest::StatusCode::OK => Some(
                r.json::<ClaimedTask>()
                    .await
                    .map_err(|e| AgentError::Api(e.to_string()))?,
            ),
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "claim failed");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed");
                None
            }
        };
        let Some(task) = task else {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
            continue;
        };
        tracing::info!(runner = %config.name, task = %task.id, "running task");
        if run_task(&client, &base, &config, &task).await {
            done += 1;
        }
        idle_since = Instant::now();
        if config.mode == RunnerMode::SingleTask {
            break AgentExit::TaskDone;
        }
    };
    let _ = client
        .post(format!("{base}/disconnect"))
        .bearer_auth(config.token.expose_secret())
        .json(&hello)
        .send()
        .await;
    Ok(AgentReport {
        runner_name: config.name,
        tasks_completed: done,
        exit,
    })
}

/// Runs one task to its end with heartbeats; true if its completion was accepted.
async fn run_task(
    client: &reqwest::Client,
    base: &str,
    config: &AgentConfig,
    task: &ClaimedTask,
) -> bool {
    let end = Instant::now() + Duration::from_millis(task.duration_ms);
    let url = format!("{base}/tasks/{}", task.id);
    while Instant::now() < end {
        tokio::time::sleep_until(end.min(Instant::now() + config.heartbeat_interval)).await;
        if Instant::now() >= end {
            break;
        }
        match client
            .post(format!("{url}/heartbeat"))
            .bearer_auth(&task.token)
            .send()
            .await
        {
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                tracing::warn!(task = %task.id, "task was taken away");
                return false;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
    for _ in 0..5 {
        match client
            .post(format!("{url}/complete"))
            .bearer_auth(&task.token)
            .json(&json!({ "success": !task.fail }))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().is_client_error() => return false,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    false
}
