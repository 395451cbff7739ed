//! The fake Buildkite agent: registers with the agent token, connects, pings for a job of its
//! queue and tags, "runs" it for its scripted duration (pinging on), finishes it, and leaves
//! after one job (`disconnect-after-job`), after `disconnect-after-idle-timeout` without one,
//! when stopped through the REST API (after finishing its job, unless forced), or on
//! shutdown (SIGTERM: a job in hand is finished first, as `buildkite-agent stop` does).
//!
//! It is configured like the real agent, from `BUILDKITE_AGENT_*` variables (see
//! [`AgentConfig::from_vars`]); it speaks the emulator's own agent protocol (see the module
//! documentation of [`crate::buildkite`]), not Buildkite's.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::{AssignedJob, PingAnswer};

/// The agent (registration) token.
pub const TOKEN_VAR: &str = "BUILDKITE_AGENT_TOKEN";
/// The agent's name.
pub const NAME_VAR: &str = "BUILDKITE_AGENT_NAME";
/// Comma-separated `key=value` tags (`queue=linux,os=linux`).
pub const TAGS_VAR: &str = "BUILDKITE_AGENT_TAGS";
/// The agent API endpoint (`https://agent.buildkite.com/v3`).
pub const ENDPOINT_VAR: &str = "BUILDKITE_AGENT_ENDPOINT";
/// `true`: run one job, then disconnect.
pub const DISCONNECT_AFTER_JOB_VAR: &str = "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB";
/// Seconds (or a duration such as `5m`) without a job after which the agent disconnects.
pub const DISCONNECT_AFTER_IDLE_TIMEOUT_VAR: &str = "BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT";

/// A job id: acquire exactly this job, run it, then disconnect (`--acquire-job`).
pub const ACQUIRE_JOB_VAR: &str = "BUILDKITE_AGENT_ACQUIRE_JOB";

/// Buildkite's default agent endpoint.
const DEFAULT_ENDPOINT: &str = "https://agent.buildkite.com/v3";

/// One fake agent's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The agent API endpoint, `.../v3`.
    pub endpoint: String,
    /// The agent token.
    pub token: SecretString,
    /// The agent's name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Leave after one job.
    pub disconnect_after_job: bool,
    /// Leave after this long without a job.
    pub disconnect_after_idle_timeout: Option<Duration>,
    /// Acquire this job (reserved or not), run it and leave, instead of waiting for work.
    pub acquire_job: Option<String>,
    /// Pause between pings.
    pub ping_interval: Duration,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The emulator refused the agent token.
    #[error("the agent API refused the agent token")]
    Unauthorized,
    /// The emulator answered something unexpected.
    #[error("agent API error: {0}")]
    Api(String),
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// `disconnect-after-job`: its job is done.
    JobDone,
    /// No job came within the idle timeout.
    IdleTimeout,
    /// Stopped through the REST API (or told it is no longer connected).
    Stopped,
    /// Asked to stop by a signal (after finishing any job it held).
    Shutdown,
}

/// What the agent did.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The agent's name.
    pub name: String,
    /// Jobs run to completion.
    pub jobs_finished: u32,
    /// Why it exited.
    pub exit: AgentExit,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, AgentError> {
    match v.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(AgentError::Config(format!(
            "{name}: expected true or false"
        ))),
    }
}

/// Whole seconds (the agent's historical form) or a duration such as `5m`.
fn parse_timeout(v: &str) -> Result<Duration, AgentError> {
    let v = v.trim();
    v.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime_serde::re::humantime::parse_duration(v))
        .map_err(|e| AgentError::Config(format!("{DISCONNECT_AFTER_IDLE_TIMEOUT_VAR}: {e}")))
}

impl AgentConfig {
    /// Builds a configuration from variables: [`TOKEN_VAR`] (`Ok(None)` without it: not a
    /// Buildkite agent), [`NAME_VAR`] (default: `HOSTNAME`), [`TAGS_VAR`], [`ENDPOINT_VAR`]
    /// (default Buildkite's), [`DISCONNECT_AFTER_JOB_VAR`] and
    /// [`DISCONNECT_AFTER_IDLE_TIMEOUT_VAR`] (`0` or unset: never), [`ACQUIRE_JOB_VAR`].
    pub fn from_vars(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, AgentError> {
        let Some(token) = lookup(TOKEN_VAR).filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        let name = lookup(NAME_VAR)
            .or_else(|| lookup("HOSTNAME"))
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| AgentError::Config(format!("{NAME_VAR} is not set")))?;
        let tags = lookup(TAGS_VAR)
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let endpoint = lookup(ENDPOINT_VAR).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let disconnect_after_job = lookup(DISCONNECT_AFTER_JOB_VAR)
            .map(|v| parse_bool(DISCONNECT_AFTER_JOB_VAR, &v))
            .transpose()?
            .unwrap_or(false);
        let disconnect_after_idle_timeout = lookup(DISCONNECT_AFTER_IDLE_TIMEOUT_VAR)
            .map(|v| parse_timeout(&v))
            .transpose()?
            .filter(|d| !d.is_zero());
        Ok(Some(AgentConfig {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: SecretString::from(token.trim().to_owned()),
            name,
            tags,
            disconnect_after_job,
            disconnect_after_idle_timeout,
            acquire_job: lookup(ACQUIRE_JOB_VAR).filter(|j| !j.trim().is_empty()),
            ping_interval: Duration::from_millis(200),
        }))
    }

    /// [`from_vars`](Self::from_vars) over the process environment.
    pub fn from_env() -> Result<Option<Self>, AgentError> {
        Self::from_vars(&|n| std::env::var(n).ok())
    }
}

#[derive(Deserialize)]
struct Registered {
    access_token: String,
}

struct Session {
    client: reqwest::Client,
    endpoint: String,
    access_token: String,
}

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, AgentError> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.endpoint))
            .header("authorization", format!("Token {}", self.access_token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.map_err(|e| AgentError::Api(e.to_string()))
    }

    /// A ping; a 4xx answer (the agent is no longer connected) reads as `disconnect`.
    async fn ping(&self) -> Result<PingAnswer, AgentError> {
        let r = self.call(reqwest::Method::POST, "/ping", None).await?;
        if r.status().is_client_error() {
            tracing::warn!(status = %r.status(), "ping refused: no longer connected");
            return Ok(PingAnswer {
                action: "disconnect".to_owned(),
                job: None,
            });
        }
        if !r.status().is_success() {
            return Err(AgentError::Api(format!("ping: HTTP {}", r.status())));
        }
        r.json().await.map_err(|e| AgentError::Api(e.to_string()))
    }

    /// Runs one job to its end, pinging on.
    async fn run_job(&self, job: &AssignedJob, ping_interval: Duration) -> JobEnd {
        let path = format!("/jobs/{}", job.id);
        match self
            .call(reqwest::Method::PUT, &format!("{path}/start"), None)
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(job = %job.id, status = %r.status(), "job start refused");
                return JobEnd::NotDone;
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "job start failed");
                return JobEnd::NotDone;
            }
        }
        let end = Instant::now() + Duration::from_millis(job.duration_ms);
        while Instant::now() < end {
            tokio::time::sleep_until(end.min(Instant::now() + ping_interval)).await;
            if Instant::now() >= end {
                break;
            }
            match self.ping().await {
                Ok(a) if a.action == "disconnect" => {
                    tracing::warn!(job = %job.id, "job taken away: disconnected");
                    return JobEnd::Disconnected;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ping failed"),
            }
        }
        for _ in 0..5 {
            let r = self
                .call(
                    reqwest::Method::PUT,
                    &format!("{path}/finish"),
                    Some(json!({ "exit_status": job.exit_status })),
                )
                .await;
            match r {
                Ok(r) if r.status().is_success() => return JobEnd::Finished,
                Ok(r) if r.status().is_client_error() => return JobEnd::NotDone,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        JobEnd::NotDone
    }
}

/// How a job ended for the agent.
enum JobEnd {
    /// Finished and reported.
    Finished,
    /// Refused or not accepted; the agent goes on.
    NotDone,
    /// The agent was disconnected (forced stop, lost) meanwhile.
    Disconnected,
}

/// Runs one fake agent until it leaves (see the module documentation).
pub async fn run_agent(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Api(e.to_string()))?;
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| config.name.clone());
    let r = client
        .post(format!("{}/register", config.endpoint))
        .header(
            "authorization",
            format!("Token {}", config.token.expose_secret()),
        )
        .json(&json!({ "name": config.name, "hostname": hostname, "meta_data": config.tags }))
        .send()
        .await
        .map_err(|e| AgentError::Api(e.to_string()))?;
    if r.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(AgentError::Unauthorized);
    }
    if !r.status().is_success() {
        return Err(AgentError::Api(format!("register: HTTP {}", r.status())));
    }
    let registered: Registered = r.json().await.map_err(|e| AgentError::Api(e.to_string()))?;
    let session = Session {
        client,
        endpoint: config.endpoint.clone(),
        access_token: registered.access_token,
    };
    let r = session
        .call(reqwest::Method::POST, "/connect", None)
        .await?;
    if !r.status().is_success() {
        return Err(AgentError::Api(format!("connect: HTTP {}", r.status())));
    }
    tracing::info!(agent = %config.name, tags = ?config.tags, "agent connected");
    if let Some(id) = &config.acquire_job {
        return acquire_and_run(&session, config.clone(), id).await;
    }
    let mut done = 0u32;
    let mut idle_since = Instant::now();
    let exit = loop {
        if shutdown.is_cancelled() {
            break AgentExit::Shutdown;
        }
        if config
            .disconnect_after_idle_timeout
            .is_some_and(|t| idle_since.elapsed() >= t)
        {
            break AgentExit::IdleTimeout;
        }
        let answer = match session.ping().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ping failed");
                PingAnswer {
                    action: "idle".to_owned(),
                    job: None,
                }
            }
        };
        match (answer.action.as_str(), answer.job) {
            ("disconnect", _) => {
                return Ok(AgentReport {
                    name: config.name,
                    jobs_finished: done,
                    exit: AgentExit::Stopped,
                });
            }
            ("run", Some(job)) => {
                tracing::info!(agent = %config.name, job = %job.id, "running job");
                match session.run_job(&job, config.ping_interval).await {
                    JobEnd::Finished => done += 1,
                    JobEnd::NotDone => {}
                    JobEnd::Disconnected => {
                        return Ok(AgentReport {
                            name: config.name,
                            jobs_finished: done,
                            exit: AgentExit::Stopped,
                        });
                    }
                }
                idle_since = Instant::now();
                if config.disconnect_after_job {
                    break AgentExit::JobDone;
                }
            }
            _ => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(config.ping_interval) => {}
                }
            }
        }
    };
    let _ = session
        .call(reqwest::Method::POST, "/disconnect", None)
        .await;
    Ok(AgentReport {
        name: config.name,
        jobs_finished: done,
        exit,
    })
}

/// `--acquire-job`: take that job, run it, disconnect.
async fn acquire_and_run(
    session: &Session,
    config: AgentConfig,
    id: &str,
) -> Result<AgentReport, AgentError> {
    let r = session
        .call(reqwest::Method::POST, &format!("/jobs/{id}/acquire"), None)
        .await?;
    let job: Option<AssignedJob> = if r.status().is_success() {
        Some(r.json().await.map_err(|e| AgentError::Api(e.to_string()))?)
    } else {
        tracing::warn!(job = %id, status = %r.status(), "job could not be acquired");
        None
    };
    let done = match &job {
        Some(job) => matches!(
            session.run_job(job, config.ping_interval).await,
            JobEnd::Finished
        ),
        None => false,
    };
    let _ = session
        .call(reqwest::Method::POST, "/disconnect", None)
        .await;
    match job {
        Some(_) => Ok(AgentReport {
            name: config.name,
            jobs_finished: u32::from(done),
            exit: AgentExit::JobDone,
        }),
        None => Err(AgentError::Api(format!("job {id} could not be acquired"))),
    }
}
