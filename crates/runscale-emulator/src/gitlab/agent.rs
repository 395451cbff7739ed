//! The fake GitLab runner: one worker per runner entry (slot), each a runner manager with its
//! own `system_id`, asking `POST /api/v4/jobs/request` for jobs with the runner's glrt- token.
//! GitLab picks the job by the runner's tags, `run_untagged` and paused flag; the worker
//! "runs" it for the duration in its `FAKE_JOB_DURATION_MS` variable, sending
//! `PUT /api/v4/jobs/:id {state: running}` updates, then reports `success` (or `failed`).
//! Shutdown (SIGTERM) finishes running jobs first, then exits; a 403 on the job request
//! (runner deleted) ends the worker.
//!
//! Configured with the variables runscale's GitLab provider hands over: `CI_SERVER_URL`,
//! `CI_SERVER_TOKEN` (secret), `RUNNER_NAME`, `RUNNER_SYSTEM_ID` (default: the name), and
//! optionally `RUNNER_MAX_BUILDS` (exit after that many jobs) — from the environment or from
//! each entry of runscale's credentials file (`RUNSCALE_CREDENTIALS_FILE`), so an instance
//! with N slots runs N jobs at once.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The GitLab URL (without `/api/v4`).
pub const URL_VAR: &str = "CI_SERVER_URL";
/// The runner authentication token (`glrt-...`).
pub const TOKEN_VAR: &str = "CI_SERVER_TOKEN";
/// The runner (slot) name.
pub const NAME_VAR: &str = "RUNNER_NAME";
/// The manager's `system_id`.
pub const SYSTEM_ID_VAR: &str = "RUNNER_SYSTEM_ID";
/// Optional: jobs before the worker exits.
pub const MAX_BUILDS_VAR: &str = "RUNNER_MAX_BUILDS";

/// One worker's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Base URL of the emulator (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The runner token.
    pub token: SecretString,
    /// The runner (slot) name, for logs.
    pub name: String,
    /// The manager's `system_id`.
    pub system_id: String,
    /// Exit after this many jobs.
    pub max_jobs: Option<u32>,
    /// Pause after a failed job request.
    pub retry_interval: Duration,
    /// Pause between two job updates while a job runs.
    pub update_interval: Duration,
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The emulator answered something unexpected.
    #[error("runner API error: {0}")]
    Api(String),
}

/// Why the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// Asked to stop (after finishing its job).
    Shutdown,
    /// Ran `max_jobs` jobs.
    MaxJobs,
    /// GitLab refused the token: the runner was deleted.
    RunnerRemoved,
}

/// What the worker did.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The slot's name.
    pub runner_name: String,
    /// Jobs run to completion.
    pub jobs_completed: u32,
    /// Why it exited.
    pub exit: AgentExit,
}

impl AgentConfig {
    /// Builds a configuration from variables. `Ok(None)` when [`TOKEN_VAR`] is not set (not a
    /// GitLab runner).
    pub fn from_vars(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, AgentError> {
        let get = |n: &str| lookup(n).filter(|v| !v.trim().is_empty());
        let Some(token) = get(TOKEN_VAR) else {
            return Ok(None);
        };
        let url =
            get(URL_VAR).ok_or_else(|| AgentError::Config(format!("{URL_VAR} is not set")))?;
        let name =
            get(NAME_VAR).ok_or_else(|| AgentError::Config(format!("{NAME_VAR} is not set")))?;
        let max_jobs = get(MAX_BUILDS_VAR)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|e| AgentError::Config(format!("{MAX_BUILDS_VAR}: {e}")))
            })
            .transpose()?;
        Ok(Some(AgentConfig {
            url: url.trim_end_matches('/').to_owned(),
            token: SecretString::from(token),
            system_id: get(SYSTEM_ID_VAR).unwrap_or_else(|| name.clone()),
            name,
            max_jobs,
            retry_interval: Duration::from_millis(200),
            update_interval: Duration::from_secs(1),
        }))
    }
}

/// The GitLab runners of runscale's credentials file (`{"runners":[{"name","vars",
/// "secrets"}]}`): entries without [`TOKEN_VAR`] are skipped; settings missing from an entry
/// come from the environment.
pub fn configs_from_credentials_file(path: &Path) -> Result<Vec<AgentConfig>, AgentError> {
    crate::credentials::configs(path, AgentConfig::from_vars, AgentError::Config)
}

/// A job as `POST /jobs/request` hands it over (the parts the fake runner reads).
#[derive(Deserialize)]
struct Job {
    id: u64,
    token: String,
    #[serde(default)]
    variables: Vec<Variable>,
}

#[derive(Deserialize)]
struct Variable {
    key: String,
    value: String,
}

impl Job {
    fn var(&self, key: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }
}

/// Runs one worker until `shutdown` (a job in hand is finished first), `max_jobs`, or the
/// runner's deletion.
pub async fn run_agent(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| AgentError::Api(e.to_string()))?;
    let request = json!({
        "token": config.token.expose_secret(),
        "system_id": config.system_id,
        "info": { "name": "gitlab-runner", "version": "17.5.0-fake", "revision": "fake",
                  "platform": "linux", "architecture": "amd64", "executor": "shell",
                  "features": { "variables": true, "cancelable": true } },
    });
    let mut done = 0u32;
    let exit = loop {
        if shutdown.is_cancelled() {
            break AgentExit::Shutdown;
        }
        if config.max_jobs.is_some_and(|m| done >= m) {
            break AgentExit::MaxJobs;
        }
        // Not raced with shutdown: a job GitLab hands over must be run, not dropped.
        let resp = client
            .post(format!("{}/api/v4/jobs/request", config.url))
            .json(&request)
            .send()
            .await;
        let job = match resp {
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => {
                break AgentExit::RunnerRemoved;
            }
            Ok(r) if r.status() == reqwest::StatusCode::CREATED => Some(
                r.json::<Job>()
                    .await
                    .map_err(|e| AgentError::Api(e.to_string()))?,
            ),
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "job request failed");
                wait(&shutdown, config.retry_interval).await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "job request failed");
                wait(&shutdown, config.retry_interval).await;
                None
            }
        };
        let Some(job) = job else {
            continue;
        };
        tracing::info!(runner = %config.name, job = job.id, "running job");
        if run_job(&client, &config, &job).await {
            done += 1;
        }
    };
    Ok(AgentReport {
        runner_name: config.name,
        jobs_completed: done,
        exit,
    })
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Runs one job to its end with updates; true if the final state was accepted.
async fn run_job(client: &reqwest::Client, config: &AgentConfig, job: &Job) -> bool {
    let ms = job
        .var("FAKE_JOB_DURATION_MS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fail = job.var("FAKE_JOB_FAIL") == Some("true");
    let end = Instant::now() + Duration::from_millis(ms);
    let url = format!("{}/api/v4/jobs/{}", config.url, job.id);
    while Instant::now() < end {
        tokio::time::sleep_until(end.min(Instant::now() + config.update_interval)).await;
        if Instant::now() >= end {
            break;
        }
        match client
            .put(&url)
            .json(&json!({ "token": job.token, "state": "running" }))
            .send()
            .await
        {
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => {
                tracing::warn!(job = job.id, "job was taken away");
                return false;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "job update failed"),
        }
    }
    let (state, code) = if fail { ("failed", 1) } else { ("success", 0) };
    for _ in 0..20 {
        match client
            .put(&url)
            .json(&json!({ "token": job.token, "state": state, "exit_code": code }))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().is_client_error() => return false,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    false
}
