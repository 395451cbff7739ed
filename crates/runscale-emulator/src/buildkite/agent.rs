//! The fake Buildkite agent. It makes the calls `buildkite-agent start` makes, in their shapes:
//! registers with the agent token (`POST /register`), connects, heartbeats, pings for work
//! (`GET /ping`), accepts the job it is given (or acquires the one it was started for with
//! `--acquire-job`), starts it, runs its command in a shell (`sh -c "$BUILDKITE_COMMAND"`, with
//! the job's environment), uploads the output in gzip chunks and its header times, reads the
//! job's state to notice a cancellation, finishes it with the exit status, and disconnects.
//!
//! It leaves after one job (`disconnect-after-job`, telling Buildkite to ignore it in
//! dispatches; or `acquire-job`), after `disconnect-after-idle-timeout` without a job, when
//! told to disconnect (stopped through the REST API; after finishing its job unless forced),
//! or on shutdown (SIGTERM: a job in hand is finished first, as `buildkite-agent stop` does).
//! It is configured like the real agent, from `BUILDKITE_AGENT_*` variables (see
//! [`AgentConfig::from_vars`]). Unlike the real one it does no checkout, no hooks, no plugins.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
/// Whole seconds without a job after which the agent disconnects.
pub const DISCONNECT_AFTER_IDLE_TIMEOUT_VAR: &str = "BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT";
/// A job id: acquire exactly this job, run it, then disconnect (`--acquire-job`).
pub const ACQUIRE_JOB_VAR: &str = "BUILDKITE_AGENT_ACQUIRE_JOB";
/// Where job commands run (`--build-path`).
pub const BUILD_PATH_VAR: &str = "BUILDKITE_BUILD_PATH";
/// A configuration file (`--config`); the fake agent reads its `token` when
/// [`TOKEN_VAR`] is not set.
pub const CONFIG_VAR: &str = "BUILDKITE_AGENT_CONFIG";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Buildkite's default agent endpoint.
const DEFAULT_ENDPOINT: &str = "https://agent.buildkite.com/v3";
/// Attempts of register and connect (one second apart) before giving up.
const ATTEMPTS: u32 = 5;
/// Largest log piece per chunk when the job does not say.
const DEFAULT_CHUNK_BYTES: usize = 100 * 1024;
/// Most output kept per job.
const MAX_LOG_BYTES: usize = 4 << 20;
/// How long the output pipes may stay open after the command exited (a background process
/// holding them).
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);

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
    /// Pause between pings; `None`: the `ping_interval` Buildkite answers at registration.
    pub ping_interval: Option<Duration>,
    /// Working directory of job commands; `None`: the current directory.
    pub build_path: Option<PathBuf>,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The agent API refused the agent token.
    #[error("the agent API refused the agent token")]
    Unauthorized,
    /// `--acquire-job`: the job could not be acquired (422: taken, finished or cancelled).
    #[error("job {0} could not be acquired")]
    AcquireRejected(String),
    /// The agent API answered something unexpected.
    #[error("agent API error: {0}")]
    Api(String),
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// `disconnect-after-job` or `acquire-job`: its job is done.
    JobDone,
    /// No job came within the idle timeout.
    IdleTimeout,
    /// Told to disconnect (stopped through the REST API) or no longer connected.
    Stopped,
    /// Asked to stop by a signal (after finishing any job it held).
    Shutdown,
}

/// What the agent did.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The agent's name.
    pub name: String,
    /// Jobs run to completion (finished with Buildkite's agreement).
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

impl AgentConfig {
    /// Builds a configuration from variables: [`TOKEN_VAR`], else the `token` of the file
    /// [`CONFIG_VAR`] names (`Ok(None)` without either: not a Buildkite agent), [`NAME_VAR`]
    /// (default: `HOSTNAME`), [`TAGS_VAR`], [`ENDPOINT_VAR`] (default Buildkite's),
    /// [`DISCONNECT_AFTER_JOB_VAR`], [`DISCONNECT_AFTER_IDLE_TIMEOUT_VAR`] (whole seconds; `0`
    /// or unset: never), [`ACQUIRE_JOB_VAR`] and [`BUILD_PATH_VAR`].
    pub fn from_vars(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, AgentError> {
        let token = match lookup(TOKEN_VAR).filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(t),
            None => lookup(CONFIG_VAR)
                .filter(|p| !p.is_empty())
                .map(|p| config_token(&p))
                .transpose()?
                .flatten(),
        };
        let Some(token) = token else {
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
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    AgentError::Config(format!(
                        "{DISCONNECT_AFTER_IDLE_TIMEOUT_VAR}: expected whole seconds"
                    ))
                })
            })
            .transpose()?
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        Ok(Some(AgentConfig {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: SecretString::from(token.trim().to_owned()),
            name,
            tags,
            disconnect_after_job,
            disconnect_after_idle_timeout,
            acquire_job: lookup(ACQUIRE_JOB_VAR).filter(|j| !j.trim().is_empty()),
            ping_interval: None,
            build_path: lookup(BUILD_PATH_VAR)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        }))
    }

    /// [`from_vars`](Self::from_vars) over the process environment.
    pub fn from_env() -> Result<Option<Self>, AgentError> {
        Self::from_vars(&|n| std::env::var(n).ok())
    }
}

/// The `token` of an agent configuration file (`key="value"` lines, `#` comments).
fn config_token(path: &str) -> Result<Option<String>, AgentError> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
        .map_err(|e| AgentError::Config(format!("{CONFIG_VAR}: cannot read {path}: {e}")))?;
    Ok(text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "token").then(|| {
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned()
        })
    }))
}

/// The registration answer (`AgentRegisterResponse`; the fields used).
#[derive(Deserialize)]
struct Registered {
    access_token: String,
    #[serde(default)]
    ping_interval: u64,
    #[serde(default)]
    heartbeat_interval: u64,
    #[serde(default)]
    job_status_interval: u64,
}

/// A ping answer (`Ping`).
#[derive(Deserialize)]
struct Ping {
    #[serde(default)]
    action: String,
    #[serde(default)]
    job: Option<PingJob>,
}

#[derive(Deserialize)]
struct PingJob {
    id: String,
}

/// A job as accept or acquire return it (`Job`; the fields used).
#[derive(Deserialize)]
struct Job {
    id: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    chunks_max_size_bytes: u64,
}

#[derive(Deserialize)]
struct JobState {
    #[serde(default)]
    state: String,
}

/// What the agent does after a ping.
enum Next {
    Idle,
    Pause,
    Disconnect,
    Run(String),
}

struct Session {
    client: reqwest::Client,
    endpoint: String,
    access_token: String,
    ping_interval: Duration,
    job_status_interval: Duration,
    build_path: Option<PathBuf>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Session {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.endpoint))
            .header("authorization", format!("Token {}", self.access_token))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, AgentError> {
        req.send().await.map_err(|e| AgentError::Api(e.to_string()))
    }

    /// `GET /ping`. A refused ping (4xx: the agent is gone) reads as a disconnect, as the
    /// real agent gives up on a non-retryable status.
    async fn ping(&self) -> Result<Next, AgentError> {
        let r = self.send(self.request(Method::GET, "/ping")).await?;
        if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(status = %r.status(), "ping refused: no longer connected");
            return Ok(Next::Disconnect);
        }
        if !r.status().is_success() {
            return Err(AgentError::Api(format!("ping: HTTP {}", r.status())));
        }
        let p: Ping = r.json().await.map_err(|e| AgentError::Api(e.to_string()))?;
        Ok(match (p.action.as_str(), p.job) {
            ("disconnect", _) => Next::Disconnect,
            ("pause", _) => Next::Pause,
            (_, Some(job)) => Next::Run(job.id),
            _ => Next::Idle,
        })
    }

    /// `PUT /jobs/{id}/accept` or `/acquire`.
    async fn take_job(&self, id: &str, acquire: bool) -> Result<Option<Job>, AgentError> {
        let verb = if acquire { "acquire" } else { "accept" };
        let mut req = self.request(Method::PUT, &format!("/jobs/{id}/{verb}"));
        if acquire {
            req = req
                .header("x-buildkite-lock-acquire-job", "1")
                .header("x-buildkite-backoff-sequence", "0");
        }
        let r = self.send(req).await?;
        if r.status() == StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(AgentError::Api(format!("{verb} job: HTTP {}", r.status())));
        }
        r.json()
            .await
            .map(Some)
            .map_err(|e| AgentError::Api(e.to_string()))
    }

    /// The job's state (`canceling`/`canceled` mean stop it).
    async fn job_state(&self, id: &str) -> Option<String> {
        let r = self
            .send(self.request(Method::GET, &format!("/jobs/{id}")))
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json::<JobState>().await.ok().map(|s| s.state)
    }

    /// Uploads `data` (the log from `offset`) in gzip chunks of at most `max` bytes.
    async fn upload(&self, id: &str, seq: &mut u64, offset: &mut u64, data: &[u8], max: usize) {
        for piece in data.chunks(max.max(1)) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let body = match gz.write_all(piece).and_then(|()| gz.finish()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot compress a log chunk");
                    return;
                }
            };
            *seq += 1;
            let path = format!(
                "/jobs/{id}/chunks?sequence={seq}&offset={offset}&size={}",
                piece.len()
            );
            let req = self
                .request(Method::POST, &path)
                .header("content-type", "text/plain")
                .header("content-encoding", "gzip")
                .body(body);
            match self.send(req).await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(job = %id, status = %r.status(), "log chunk refused"),
                Err(e) => tracing::warn!(job = %id, error = %e, "log chunk not sent"),
            }
            *offset += piece.len() as u64;
        }
    }

    /// Runs one accepted job to its end: start, the command with its output streamed, finish.
    async fn run_job(&self, job: Job, ignore_in_dispatches: bool) -> JobEnd {
        let id = job.id.clone();
        let started = self
            .send(
                self.request(Method::PUT, &format!("/jobs/{id}/start"))
                    .json(&json!({ "started_at": now_rfc3339() })),
            )
            .await;
        match started {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(job = %id, status = %r.status(), "job start refused");
                return JobEnd::NotDone;
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "job start failed");
                return JobEnd::NotDone;
            }
        }
        let (status, cancelled, output) = self.run_command(&job).await;
        // A command killed by a signal has no exit code: -1, as the real agent reports.
        let exit = status.unwrap_or(-1);
        let signal = cancelled.then_some("SIGTERM");
        let headers: BTreeMap<String, String> = String::from_utf8_lossy(&output)
            .lines()
            .enumerate()
            .filter(|(_, l)| ["~~~ ", "--- ", "+++ "].iter().any(|p| l.starts_with(p)))
            .map(|(i, _)| (i.to_string(), now_rfc3339()))
            .collect();
        if !headers.is_empty() {
            let _ = self
                .send(
                    self.request(Method::POST, &format!("/jobs/{id}/header_times"))
                        .json(&json!({ "header_times": headers })),
                )
                .await;
        }
        let mut body = json!({
            "exit_status": exit.to_string(),
            "finished_at": now_rfc3339(),
            "chunks_failed_count": 0,
        });
        if let Some(s) = signal {
            body["signal"] = s.into();
            body["signal_reason"] = "cancel".into();
        }
        if ignore_in_dispatches {
            body["ignore_agent_in_dispatches"] = true.into();
        }
        for _ in 0..ATTEMPTS {
            let r = self
                .send(
                    self.request(Method::PUT, &format!("/jobs/{id}/finish"))
                        .json(&body),
                )
                .await;
            match r {
                Ok(r) if r.status().is_success() && !cancelled => return JobEnd::Finished,
                Ok(r) if r.status().is_success() || r.status().is_client_error() => {
                    return JobEnd::NotDone;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        JobEnd::NotDone
    }

    /// Runs the job's command in a shell with the job's environment, uploading its output
    /// every second and reading the job's state every `job_status_interval` (a cancelled job's
    /// process group gets SIGTERM). Returns the exit code (`None` if killed by a signal),
    /// whether the job was cancelled, and the output.
    async fn run_command(&self, job: &Job) -> (Option<i32>, bool, Vec<u8>) {
        let id = &job.id;
        let command = job
            .env
            .get("BUILDKITE_COMMAND")
            .cloned()
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .envs(&job.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.build_path {
            cmd.current_dir(dir);
        }
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let line = format!(
                    "runscale fake agent: cannot run the command with sh in {}: {e}\n",
                    self.build_path
                        .as_deref()
                        .map_or_else(|| ".".to_owned(), |p| p.display().to_string()),
                );
                let (mut seq, mut offset) = (0, 0);
                self.upload(
                    id,
                    &mut seq,
                    &mut offset,
                    line.as_bytes(),
                    DEFAULT_CHUNK_BYTES,
                )
                .await;
                return (Some(-1), false, line.into_bytes());
            }
        };
        let readers: Vec<_> = [
            child.stdout.take().map(|o| Box::new(o) as Box<OutputPipe>),
            child.stderr.take().map(|e| Box::new(e) as Box<OutputPipe>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            let output = output.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                    let room = MAX_LOG_BYTES.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            })
        })
        .collect();
        let max_chunk = usize::try_from(job.chunks_max_size_bytes)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_CHUNK_BYTES);
        let (mut seq, mut offset) = (0u64, 0u64);
        let mut chunks = tokio::time::interval(Duration::from_secs(1));
        let mut states = tokio::time::interval(self.job_status_interval);
        let mut cancelled = false;
        let status = loop {
            tokio::select! {
                s = child.wait() => break s.ok().and_then(|s| s.code()),
                _ = chunks.tick() => {
                    let new = {
                        let out = output.lock().unwrap_or_else(|e| e.into_inner());
                        out[(offset as usize).min(out.len())..].to_vec()
                    };
                    self.upload(id, &mut seq, &mut offset, &new, max_chunk).await;
                }
                _ = states.tick(), if !cancelled => {
                    if let Some(state) = self.job_state(id).await
                        && matches!(state.as_str(), "canceling" | "canceled")
                    {
                        tracing::info!(job = %id, "job cancelled: stopping its command");
                        cancelled = true;
                        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                            let _ = nix::sys::signal::killpg(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                    }
                }
            }
        };
        for r in readers {
            if tokio::time::timeout(DRAIN_OUTPUT, r).await.is_err() {
                tracing::warn!(job = %id, "the command's output stayed open; not read further");
            }
        }
        let output = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rest = output[(offset as usize).min(output.len())..].to_vec();
        self.upload(id, &mut seq, &mut offset, &rest, max_chunk)
            .await;
        (status, cancelled, output)
    }
}

/// One of the command's output pipes.
type OutputPipe = dyn tokio::io::AsyncRead + Send + Unpin;

/// How a job ended for the agent.
enum JobEnd {
    /// Finished and reported.
    Finished,
    /// Refused, not accepted, or cancelled; the agent goes on.
    NotDone,
}

/// Retries `call` up to [`ATTEMPTS`] times, a second apart, while it fails with an API
/// error (not an authorisation or configuration one).
async fn retried<T, F, Fut>(what: &str, mut call: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(AgentError::Api(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "{what} failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// `POST /register` with the agent token.
async fn register(
    client: &reqwest::Client,
    config: &AgentConfig,
) -> Result<Registered, AgentError> {
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| config.name.clone());
    let r = client
        .post(format!("{}/register", config.endpoint))
        .header(
            "authorization",
            format!("Token {}", config.token.expose_secret()),
        )
        .json(&json!({
            "name": config.name,
            "hostname": hostname,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "script_eval_enabled": true,
            "ignore_in_dispatches": config.acquire_job.is_some(),
            "version": "3.0.0-runscale-fake",
            "build": "",
            "meta_data": config.tags,
            "pid": std::process::id(),
            "features": if config.acquire_job.is_some() { vec!["acquire-job"] } else { vec![] },
        }))
        .send()
        .await
        .map_err(|e| AgentError::Api(e.to_string()))?;
    if r.status() == StatusCode::UNAUTHORIZED {
        return Err(AgentError::Unauthorized);
    }
    if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS {
        return Err(AgentError::Config(format!("register: HTTP {}", r.status())));
    }
    if !r.status().is_success() {
        return Err(AgentError::Api(format!("register: HTTP {}", r.status())));
    }
    r.json().await.map_err(|e| AgentError::Api(e.to_string()))
}

/// Heartbeats every `every` until `stop` fires.
async fn heartbeats(session: Arc<Session>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = session
            .request(Method::POST, "/heartbeat")
            .json(&json!({ "sent_at": now_rfc3339() }));
        if let Err(e) = session.send(req).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
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
    let registered = retried("register", || register(&client, &config)).await?;
    let session = Arc::new(Session {
        client,
        endpoint: config.endpoint.clone(),
        access_token: registered.access_token,
        ping_interval: config
            .ping_interval
            .unwrap_or_else(|| secs(registered.ping_interval)),
        job_status_interval: secs(registered.job_status_interval),
        build_path: config.build_path.clone(),
    });
    retried("connect", || async {
        let r = session
            .send(session.request(Method::POST, "/connect"))
            .await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(AgentError::Api(format!("connect: HTTP {}", r.status())))
        }
    })
    .await?;
    tracing::info!(agent = %config.name, tags = ?config.tags, "agent connected");
    let stop_heartbeats = CancellationToken::new();
    tokio::spawn(heartbeats(
        session.clone(),
        secs(registered.heartbeat_interval),
        stop_heartbeats.clone(),
    ));
    let result = work(&session, &config, &shutdown).await;
    stop_heartbeats.cancel();
    let _ = session
        .send(session.request(Method::POST, "/disconnect"))
        .await;
    let (jobs_finished, exit) = result?;
    Ok(AgentReport {
        name: config.name,
        jobs_finished,
        exit,
    })
}

/// The agent's life between connect and disconnect: (jobs finished, why it left).
async fn work(
    session: &Session,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<(u32, AgentExit), AgentError> {
    if let Some(id) = &config.acquire_job {
        let job = session
            .take_job(id, true)
            .await?
            .ok_or_else(|| AgentError::AcquireRejected(id.clone()))?;
        let done = matches!(session.run_job(job, false).await, JobEnd::Finished);
        // As the real agent does after its acquired job: one ping, then leave.
        let _ = session.ping().await;
        return Ok((u32::from(done), AgentExit::JobDone));
    }
    let mut done = 0u32;
    let mut idle_since = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return Ok((done, AgentExit::Shutdown));
        }
        if config
            .disconnect_after_idle_timeout
            .is_some_and(|t| idle_since.elapsed() >= t)
        {
            return Ok((done, AgentExit::IdleTimeout));
        }
        let next = session.ping().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ping failed");
            Next::Idle
        });
        match next {
            Next::Disconnect => return Ok((done, AgentExit::Stopped)),
            Next::Run(id) => {
                tracing::info!(agent = %config.name, job = %id, "running job");
                match session.take_job(&id, false).await {
                    Ok(Some(job)) => {
                        if matches!(
                            session.run_job(job, config.disconnect_after_job).await,
                            JobEnd::Finished
                        ) {
                            done += 1;
                        }
                        idle_since = Instant::now();
                        if config.disconnect_after_job {
                            // The real agent pings once more, then leaves.
                            let _ = session.ping().await;
                            return Ok((done, AgentExit::JobDone));
                        }
                        continue;
                    }
                    Ok(None) => tracing::warn!(job = %id, "job could not be accepted"),
                    Err(e) => tracing::warn!(job = %id, error = %e, "accepting the job failed"),
                }
            }
            // Paused counts as busy for the idle timeout.
            Next::Pause => idle_since = Instant::now(),
            Next::Idle => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(session.ping_interval) => {}
        }
    }
}
