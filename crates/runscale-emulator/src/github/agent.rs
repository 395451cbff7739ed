//! The fake runner agent: what `run.sh` is to GitHub, this is to the emulator. It speaks
//! the emulator's runner API (see `runner_api`), never GitHub's private broker.
//!
//! Lifecycle: (register with a registration token, like `config.sh`, unless started from a
//! JIT configuration) → connect (online) → heartbeat in the background → long-poll for a
//! job → "run" it (sleep for its duration, already scaled by the emulator's speed) → report
//! success → exit if ephemeral, else poll again.
//!
//! Shutdown (SIGTERM in the binary, a [`CancellationToken`] in the library): while idle the
//! agent disconnects and returns at once; while busy it finishes the job first. If the
//! emulator removes the runner (REST DELETE), the agent notices on its next call and
//! returns [`AgentExit::RunnerRemoved`].

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::model::{JitConfig, JitConfigError};
use super::state::Assignment;

/// The name of the secret holding a JIT configuration in runscale's credentials file (and
/// the environment variable with `env` credentials delivery).
pub const JIT_CONFIG_SECRET: &str = "GITHUB_JIT_CONFIG";

/// How an agent gets its runner.
#[derive(Clone, Debug)]
pub enum RunnerSource {
    /// An `encoded_jit_config` (decoded): the runner exists already, ephemeral.
    Jit(JitConfig),
    /// Register a new runner with a registration token first.
    Register(Registration),
}

/// `config.sh`-style registration.
#[derive(Clone, Debug)]
pub struct Registration {
    /// `<emulator base URL>/<owner>` or `<emulator base URL>/<owner>/<repo>`.
    pub url: String,
    /// A registration token from `POST .../actions/runners/registration-token`.
    pub token: SecretString,
    /// The runner name.
    pub name: String,
    /// Custom labels.
    pub labels: Vec<String>,
    /// Take one job, then be removed.
    pub ephemeral: bool,
    /// Replace an idle runner of the same name.
    pub replace: bool,
}

/// Why an agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// An ephemeral runner completed its one job (the emulator removed it).
    EphemeralDone,
    /// Shutdown was requested (after finishing the job in hand, if any).
    Shutdown,
    /// The runner was removed by someone else (or never existed).
    RunnerRemoved,
}

/// What an agent did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    /// The runner name.
    pub runner_name: String,
    /// Jobs it completed.
    pub jobs_completed: u32,
    /// Why it stopped.
    pub exit: AgentExit,
}

/// Why an agent failed. Messages never include tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The JIT configuration is unreadable.
    #[error(transparent)]
    JitConfig(#[from] JitConfigError),
    /// The credentials file is unreadable.
    #[error("credentials file {path}: {message}")]
    CredentialsFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The emulator could not be reached for too long.
    #[error("emulator unreachable at {url}")]
    Unreachable {
        /// The emulator URL.
        url: String,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The emulator answered something unexpected.
    #[error("unexpected answer from the emulator to {call}: HTTP {status}")]
    Protocol {
        /// The call.
        call: String,
        /// The HTTP status.
        status: u16,
    },
}

#[derive(Deserialize)]
struct CredentialsFile {
    runners: Vec<CredentialsEntry>,
}

#[derive(Deserialize)]
struct CredentialsEntry {
    name: String,
    #[serde(default)]
    vars: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, SecretString>,
}

/// The secret holding a registration token for persistent runners (with the variables
/// [`URL_VAR`], [`NAME_VAR`] and [`LABELS_VAR`]), as runscale's GitHub provider hands them out.
pub const RUNNER_TOKEN_SECRET: &str = "GITHUB_RUNNER_TOKEN";
/// The registration URL variable (`<web base>/<owner>[/<repo>]`).
pub const URL_VAR: &str = "GITHUB_URL";
/// The runner name variable.
pub const NAME_VAR: &str = "RUNNER_NAME";
/// The comma-separated labels variable.
pub const LABELS_VAR: &str = "RUNNER_LABELS";

/// Reads runscale's credentials file
/// (`{"runners":[{"name","runner_id","vars","secrets"}]}`): a runner with a
/// [`JIT_CONFIG_SECRET`] secret runs from its JIT configuration; one with a
/// [`RUNNER_TOKEN_SECRET`] secret and a [`URL_VAR`] variable registers as a persistent runner
/// (replacing an idle runner of the same name, like `config.sh --replace`).
pub fn read_credentials_file(path: &Path) -> Result<Vec<RunnerSource>, AgentError> {
    let err = |message: String| AgentError::CredentialsFile {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file: CredentialsFile = serde_json::from_slice(&bytes).map_err(|e| {
        err(format!(
            "not the expected JSON ({:?} error at line {})",
            e.classify(),
            e.line()
        ))
    })?;
    if file.runners.is_empty() {
        return Err(err("lists no runner".into()));
    }
    file.runners
        .into_iter()
        .map(|r| {
            if let Some(secret) = r.secrets.get(JIT_CONFIG_SECRET) {
                return Ok(RunnerSource::Jit(JitConfig::decode(
                    secret.expose_secret(),
                )?));
            }
            match (r.secrets.get(RUNNER_TOKEN_SECRET), r.vars.get(URL_VAR)) {
                (Some(token), Some(url)) => Ok(RunnerSource::Register(Registration {
                    url: url.clone(),
                    token: token.clone(),
                    name: r.vars.get(NAME_VAR).cloned().unwrap_or(r.name),
                    labels: r
                        .vars
                        .get(LABELS_VAR)
                        .map(|l| split_labels(l))
                        .unwrap_or_default(),
                    ephemeral: false,
                    replace: true,
                })),
                _ => Err(err(format!(
                    "runner {} has neither {JIT_CONFIG_SECRET} nor {RUNNER_TOKEN_SECRET} with \
                     {URL_VAR}",
                    r.name
                ))),
            }
        })
        .collect()
}

/// Splits comma-separated labels, dropping empty ones.
pub fn split_labels(labels: &str) -> Vec<String> {
    labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long transport errors are retried before giving up.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

struct Conn {
    client: reqwest::Client,
    base: String,
    token: SecretString,
}

impl Conn {
    /// One call, retrying transport errors and 5xx answers for a while.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), AgentError> {
        let url = format!("{}{path}", self.base);
        let give_up = tokio::time::Instant::now() + UNREACHABLE_AFTER;
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(self.token.expose_secret())
                .timeout(timeout);
            if let Some(body) = body {
                req = req.json(body);
            }
            let result = match req.send().await {
                Ok(resp) if !resp.status().is_server_error() => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) => return Ok((status, bytes.to_vec())),
                        Err(e) => Err(e),
                    }
                }
                Ok(resp) => {
                    tracing::debug!(
                        status = resp.status().as_u16(),
                        path,
                        "emulator error; retrying"
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if tokio::time::Instant::now() >= give_up {
                return match result {
                    Err(source) => Err(AgentError::Unreachable {
                        url: self.base.clone(),
                        source,
                    }),
                    Ok(()) => Err(AgentError::Protocol {
                        call: path.to_owned(),
                        status: 503,
                    }),
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn protocol(call: &str, status: StatusCode) -> AgentError {
    AgentError::Protocol {
        call: call.to_owned(),
        status: status.as_u16(),
    }
}

async fn register(client: &reqwest::Client, r: Registration) -> Result<JitConfig, AgentError> {
    let base = r
        .url
        .split_once("://")
        .map(|(scheme, rest)| format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
        .unwrap_or_default();
    let conn = Conn {
        client: client.clone(),
        base,
        token: SecretString::from(String::new()),
    };
    let body = json!({
        "url": r.url,
        "token": r.token.expose_secret(),
        "name": r.name,
        "labels": r.labels,
        "ephemeral": r.ephemeral,
        "replace": r.replace,
    });
    let (status, bytes) = conn
        .call(
            Method::POST,
            "/_emulator/runners/register",
            Some(&body),
            Duration::from_secs(30),
        )
        .await?;
    if status != StatusCode::CREATED {
        return Err(protocol("register", status));
    }
    #[derive(Deserialize)]
    struct Registered {
        encoded_jit_config: SecretString,
    }
    let reg: Registered =
        serde_json::from_slice(&bytes).map_err(|_| protocol("register", status))?;
    Ok(JitConfig::decode(reg.encoded_jit_config.expose_secret())?)
}

#[derive(Deserialize)]
struct Hello {
    heartbeat_interval_ms: u64,
    poll_wait_ms: u64,
}

enum Polled {
    Job(Assignment),
    Nothing,
    Gone,
}

/// Runs one agent until its runner is done (see the module docs).
pub async fn run_agent(
    source: RunnerSource,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let client = reqwest::Client::builder()
        .user_agent("runscale-fake-runner")
        .build()
        .map_err(|source| AgentError::Unreachable {
            url: String::new(),
            source,
        })?;
    let jit = match source {
        RunnerSource::Jit(jit) => jit,
        RunnerSource::Register(r) => register(&client, r).await?,
    };
    let name = jit.runner_name.clone();
    let conn = Conn {
        client,
        base: jit.url.trim_end_matches('/').to_owned(),
        token: jit.token.clone(),
    };
    let report = |jobs_completed, exit| AgentReport {
        runner_name: name.clone(),
        jobs_completed,
        exit,
    };
    let short = Duration::from_secs(15);
    let (status, bytes) = conn
        .call(Method::POST, "/_emulator/runner/connect", None, short)
        .await?;
    if status == StatusCode::NOT_FOUND {
        tracing::info!(runner = %name, "runner not registered; exiting");
        return Ok(report(0, AgentExit::RunnerRemoved));
    }
    if status != StatusCode::OK {
        return Err(protocol("connect", status));
    }
    let hello: Hello = serde_json::from_slice(&bytes).map_err(|_| protocol("connect", status))?;
    tracing::info!(runner = %name, "connected; listening for jobs");

    let conn = std::sync::Arc::new(conn);
    let beat_stop = CancellationToken::new();
    let beats = {
        let conn = conn.clone();
        let stop = beat_stop.clone();
        let every = Duration::from_millis(hello.heartbeat_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let call = conn.call(Method::POST, "/_emulator/runner/heartbeat", None, every * 5);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = call => if matches!(result, Ok((StatusCode::NOT_FOUND, _))) { return },
                }
            }
        })
    };
    let outcome = work_loop(&conn, &name, jit.ephemeral, hello.poll_wait_ms, &shutdown).await;
    beat_stop.cancel();
    let _ = beats.await;
    outcome.map(|(jobs, exit)| report(jobs, exit))
}

async fn poll(conn: &Conn, wait_ms: u64) -> Result<Polled, AgentError> {
    let path = format!("/_emulator/runner/job?wait_ms={wait_ms}");
    let timeout = Duration::from_millis(wait_ms) + Duration::from_secs(15);
    let (status, bytes) = conn.call(Method::GET, &path, None, timeout).await?;
    match status {
        StatusCode::OK => serde_json::from_slice(&bytes)
            .map(Polled::Job)
            .map_err(|_| protocol("poll", status)),
        StatusCode::NO_CONTENT => Ok(Polled::Nothing),
        StatusCode::NOT_FOUND => Ok(Polled::Gone),
        other => Err(protocol("poll", other)),
    }
}

/// Runs a job and reports it. Returns why the agent must stop, if it must.
async fn run_job(
    conn: &Conn,
    name: &str,
    job: &Assignment,
) -> Result<Option<AgentExit>, AgentError> {
    tracing::info!(runner = %name, job_id = job.job_id, run_ms = job.run_ms, "running job");
    tokio::time::sleep(Duration::from_millis(job.run_ms)).await;
    let path = format!("/_emulator/runner/jobs/{}/complete", job.job_id);
    let body = json!({"conclusion": "success"});
    let (status, bytes) = conn
        .call(Method::POST, &path, Some(&body), Duration::from_secs(15))
        .await?;
    match status {
        StatusCode::OK => {
            let removed = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("removed").and_then(Value::as_bool))
                .unwrap_or(false);
            tracing::info!(runner = %name, job_id = job.job_id, "job completed");
            Ok(removed.then_some(AgentExit::EphemeralDone))
        }
        StatusCode::NOT_FOUND => Ok(Some(AgentExit::RunnerRemoved)),
        // The emulator gave the job up (we were silent too long): nothing to report.
        StatusCode::CONFLICT => {
            tracing::warn!(runner = %name, job_id = job.job_id, "job no longer ours");
            Ok(None)
        }
        other => Err(protocol("complete", other)),
    }
}

async fn work_loop(
    conn: &Conn,
    name: &str,
    ephemeral: bool,
    poll_wait_ms: u64,
    shutdown: &CancellationToken,
) -> Result<(u32, AgentExit), AgentError> {
    let mut jobs = 0;
    loop {
        if shutdown.is_cancelled() {
            let (status, bytes) = conn
                .call(
                    Method::POST,
                    "/_emulator/runner/disconnect",
                    None,
                    Duration::from_secs(15),
                )
                .await?;
            match status {
                StatusCode::OK => {
                    tracing::info!(runner = %name, "disconnected on shutdown");
                    return Ok((jobs, AgentExit::Shutdown));
                }
                StatusCode::NOT_FOUND => return Ok((jobs, AgentExit::RunnerRemoved)),
                StatusCode::CONFLICT => {
                    // A job was assigned while we were leaving: finish it, then go.
                    #[derive(Deserialize)]
                    struct Busy {
                        job: Assignment,
                    }
                    let busy: Busy = serde_json::from_slice(&bytes)
                        .map_err(|_| protocol("disconnect", status))?;
                    let end = run_job(conn, name, &busy.job).await?;
                    jobs += 1;
                    if let Some(exit) = end {
                        return Ok((jobs, exit));
                    }
                    continue;
                }
                other => return Err(protocol("disconnect", other)),
            }
        }
        let polled = tokio::select! {
            polled = poll(conn, poll_wait_ms) => polled?,
            _ = shutdown.cancelled() => continue,
        };
        match polled {
            Polled::Nothing => {}
            Polled::Gone => {
                tracing::info!(runner = %name, "runner removed; exiting");
                return Ok((jobs, AgentExit::RunnerRemoved));
            }
            Polled::Job(job) => {
                let end = run_job(conn, name, &job).await?;
                jobs += 1;
                if let Some(exit) = end {
                    return Ok((jobs, exit));
                }
                if ephemeral {
                    // The emulator keeps ephemeral runners only when it gave their job up.
                    return Ok((jobs, AgentExit::EphemeralDone));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_yields_jit_configs_and_errors_hide_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jit = JitConfig {
            url: "http://127.0.0.1:1".into(),
            runner_id: 3,
            runner_name: "rs-a-1".into(),
            token: SecretString::from("tok"),
            labels: vec![],
            ephemeral: true,
        };
        let path = dir.path().join("c.json");
        let content = json!({"runners":[{"name":"rs-a-1","runner_id":"3","vars":{},
            "secrets":{"GITHUB_JIT_CONFIG": jit.encode()}}]});
        std::fs::write(&path, content.to_string()).expect("write");
        let got = read_credentials_file(&path).expect("readable");
        assert!(matches!(&got[0], RunnerSource::Jit(j) if j.runner_id == 3));

        let persistent = json!({"runners":[{"name":"rs-p-1","runner_id":null,
            "vars":{"GITHUB_URL":"http://127.0.0.1:1/octo-org","RUNNER_NAME":"rs-p-1",
                    "RUNNER_LABELS":"a, b,,"},
            "secrets":{"GITHUB_RUNNER_TOKEN":"REGTOKEN"}}]});
        std::fs::write(&path, persistent.to_string()).expect("write");
        match &read_credentials_file(&path).expect("readable")[0] {
            RunnerSource::Register(r) => {
                assert_eq!(r.url, "http://127.0.0.1:1/octo-org");
                assert_eq!(r.name, "rs-p-1");
                assert_eq!(r.labels, vec!["a", "b"]);
                assert!(!r.ephemeral && r.replace);
                assert_eq!(r.token.expose_secret(), "REGTOKEN");
            }
            other => panic!("unexpected {other:?}"),
        }

        std::fs::write(
            &path,
            r#"{"runners":[{"name":"x","secrets":{"OTHER":"hush"}}]}"#,
        )
        .expect("write");
        let err = read_credentials_file(&path).expect_err("no jit config");
        assert!(err.to_string().contains("GITHUB_JIT_CONFIG"));
        assert!(err.to_string().contains("GITHUB_RUNNER_TOKEN"));
        assert!(!err.to_string().contains("hush"));
        std::fs::write(&path, r#"{"runners":[{"name":1,"secrets":"hush"}]}"#).expect("write");
        let err = read_credentials_file(&path).expect_err("bad json");
        assert!(!err.to_string().contains("hush"));
    }
}
