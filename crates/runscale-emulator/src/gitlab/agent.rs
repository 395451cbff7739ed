//! The fake GitLab runner: one worker per runner slot, each behaving like
//! `gitlab-runner run-single -c <slot dir>/config.toml -r <name> --max-builds <n>` with the
//! shell executor, as runscale's start-up script (`deploy/exec/gitlab-runner-slots.sh`) starts
//! the real one.
//!
//! - **Identity**: like the script, a worker writes `RUNSCALE_GITLAB_SYSTEM_ID` into its slot
//!   directory's `.runner_system_id` (`$GITLAB_RUNNER_SLOTS_DIR/<RUNNER_NAME>`, 0700/0600);
//!   like gitlab-runner, it then reads the file and uses the id only if it matches
//!   `^[sr]_[0-9a-zA-Z]{12}$`, otherwise it makes one up (`s_` + a hash of the machine id —
//!   the same for every slot of the machine — or a random `r_` id) and writes it back.
//! - **Wire calls**: `POST /api/v4/jobs/request {token, system_id, last_update, info}` (the
//!   last `X-GitLab-Last-Update` echoed), then, every `check_interval` (3 s, fixed in
//!   gitlab-runner) after a 204 and at once after a job. A job: `PUT /api/v4/jobs/:id
//!   {state: running}`, its `script:` lines run by `bash` with the job's variables in the
//!   environment, the output sent with `PATCH /api/v4/jobs/:id/trace` (`Content-Range`,
//!   `JOB-TOKEN`), keep-alive `PUT`s, and a final `PUT {state: success | failed, exit_code,
//!   failure_reason}`.
//! - **`--max-builds`** (`RUNSCALE_GITLAB_MAX_BUILDS`, 0 or unset: no limit): the worker exits
//!   after that many jobs.
//! - A 403 on the job request (runner deleted) makes the runner "unhealthy": it waits 5 minutes
//!   before asking again, and keeps running (gitlab-runner does not exit).
//!
//! Differs from gitlab-runner: on shutdown (SIGTERM) a job in hand is finished first
//! (gitlab-runner does that on SIGQUIT and aborts the job on SIGTERM); no executor but bash, no
//! git, artifacts, caches or services; keep-alive job updates every `update_interval` (1 s)
//! rather than every 30 s of silence.
//!
//! Started as `runscale-fake-runner run-single -c <dir>/config.toml -r <name> [--max-builds n]`
//! ([`AgentConfig::from_run_single`]), it stands in for gitlab-runner under runscale's start-up
//! script: it reads the `[[runners]]` entry and the `.runner_system_id` next to the file.
//! Otherwise it is configured with the variables runscale's GitLab provider hands over (`CI_SERVER_URL`,
//! `CI_SERVER_TOKEN` (secret), `RUNNER_NAME`, `RUNSCALE_GITLAB_SYSTEM_ID`,
//! `RUNSCALE_GITLAB_MAX_BUILDS`) plus `GITLAB_RUNNER_SLOTS_DIR` and, for tests,
//! `FAKE_RUNNER_CHECK_INTERVAL_MS` — from the environment or from each entry of runscale's
//! credentials file (`RUNSCALE_CREDENTIALS_FILE`), so an instance with N slots runs N workers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The GitLab URL (without `/api/v4`).
pub const URL_VAR: &str = "CI_SERVER_URL";
/// The runner authentication token (`glrt-...`).
pub const TOKEN_VAR: &str = "CI_SERVER_TOKEN";
/// The runner (slot) name: the `[[runners]]` entry's `name`, and the slot directory's name.
pub const NAME_VAR: &str = "RUNNER_NAME";
/// The slot's `system_id`, written into its `.runner_system_id`.
pub const SYSTEM_ID_VAR: &str = "RUNSCALE_GITLAB_SYSTEM_ID";
/// Optional: jobs before the worker exits (`--max-builds`; 0: no limit).
pub const MAX_BUILDS_VAR: &str = "RUNSCALE_GITLAB_MAX_BUILDS";
/// The directory holding one config directory per slot (default: under the temp directory).
pub const SLOTS_DIR_VAR: &str = "GITLAB_RUNNER_SLOTS_DIR";
/// Test knob: the pause after a 204, in milliseconds (gitlab-runner: 3 s, fixed).
pub const CHECK_INTERVAL_VAR: &str = "FAKE_RUNNER_CHECK_INTERVAL_MS";

/// gitlab-runner's `check_interval`.
const CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// gitlab-runner's pause after a 403 (`NotHealthyCheckInterval`).
const UNHEALTHY_INTERVAL: Duration = Duration::from_secs(300);
/// Most bytes read from one answer, and most trace bytes kept.
const MAX_BODY: usize = 1 << 20;
/// Most trace bytes sent per patch.
const MAX_PATCH: usize = 64 * 1024;
/// A job step's longest run when its `timeout` says nothing.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);

/// One worker's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Base URL of the emulator (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The runner token.
    pub token: SecretString,
    /// The runner (slot) name.
    pub name: String,
    /// The slot's config directory (holds `.runner_system_id`).
    pub config_dir: PathBuf,
    /// Written into `.runner_system_id` before the worker reads it, as the start-up script
    /// does; `None`: the file is read as it is.
    pub system_id: Option<String>,
    /// Exit after this many jobs; 0: no limit.
    pub max_builds: u32,
    /// Pause after a 204 or a failed request.
    pub check_interval: Duration,
    /// Pause after a 403 (the runner is gone or its token wrong).
    pub unhealthy_interval: Duration,
    /// Pause between two keep-alive job updates (and trace patches) while a job runs.
    pub update_interval: Duration,
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The slot directory could not be prepared.
    #[error("slot directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The emulator answered something unexpected.
    #[error("runner API error: {0}")]
    Api(String),
}

/// Why the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// Asked to stop (after finishing its job).
    Shutdown,
    /// Ran `max_builds` jobs.
    MaxBuilds,
}

/// What the worker did.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The slot's name.
    pub runner_name: String,
    /// The `system_id` it used (from `.runner_system_id`, or made up).
    pub system_id: String,
    /// Jobs it ran (whatever their outcome).
    pub jobs_completed: u32,
    /// Why it exited.
    pub exit: AgentExit,
}

/// Whether `name` can name a directory of its own.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
        if !safe_name(&name) {
            return Err(AgentError::Config(format!(
                "{NAME_VAR} {name:?} cannot name a directory"
            )));
        }
        let number = |var: &str| {
            get(var)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|e| AgentError::Config(format!("{var}: {e}")))
                })
                .transpose()
        };
        let max_builds = number(MAX_BUILDS_VAR)?.unwrap_or(0);
        let check_interval = number(CHECK_INTERVAL_VAR)?
            .map_or(CHECK_INTERVAL, |ms| Duration::from_millis(u64::from(ms)));
        let slots = get(SLOTS_DIR_VAR).map_or_else(
            || std::env::temp_dir().join("runscale-fake-gitlab-runner"),
            PathBuf::from,
        );
        Ok(Some(AgentConfig {
            url: url.trim_end_matches('/').to_owned(),
            token: SecretString::from(token),
            config_dir: slots.join(&name),
            system_id: get(SYSTEM_ID_VAR),
            name,
            max_builds,
            check_interval,
            unhealthy_interval: UNHEALTHY_INTERVAL,
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

/// Most bytes of a `config.toml` the fake runner reads.
const MAX_CONFIG: u64 = 64 * 1024;

/// The `[[runners]]` entries of a `config.toml` as runscale's start-up script writes it: only
/// `key = "string"` lines (no escapes) are read; other keys and tables are skipped.
fn runner_entries(text: &str) -> Result<Vec<std::collections::HashMap<String, String>>, String> {
    let mut entries = Vec::new();
    let mut current: Option<std::collections::HashMap<String, String>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            entries.extend(current.take());
            if line == "[[runners]]" {
                current = Some(std::collections::HashMap::new());
            }
            continue;
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not key = value", n + 1));
        };
        let value = value.trim();
        if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            if v.contains(['\\', '"']) {
                return Err(format!("line {}: escapes are not supported", n + 1));
            }
            entry.insert(key.trim().to_owned(), v.to_owned());
        }
    }
    entries.extend(current);
    Ok(entries)
}

impl AgentConfig {
    /// The worker of `gitlab-runner run-single -c <config_file> -r <runner_name> --max-builds
    /// <max_builds>`: the `[[runners]]` entry named `runner_name` (its `url`, `token`, and
    /// `executor`, which must be `shell`), the `system_id` read from `.runner_system_id` next
    /// to the file as gitlab-runner reads it (made up if missing or invalid).
    pub fn from_run_single(
        config_file: &Path,
        runner_name: &str,
        max_builds: u32,
    ) -> Result<Self, AgentError> {
        use std::io::Read as _;
        let bad = |m: String| AgentError::Config(format!("{}: {m}", config_file.display()));
        let mut text = String::new();
        std::fs::File::open(config_file)
            .and_then(|f| f.take(MAX_CONFIG).read_to_string(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        let entries = runner_entries(&text).map_err(bad)?;
        let entry = entries
            .into_iter()
            .find(|e| e.get("name").is_some_and(|n| n == runner_name))
            .ok_or_else(|| bad(format!("no [[runners]] entry named {runner_name:?}")))?;
        let field = |k: &str| {
            entry
                .get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| bad(format!("runner {runner_name}: {k} is missing")))
        };
        if field("executor")? != "shell" {
            return Err(bad("the fake runner has the shell executor only".to_owned()));
        }
        let check_interval = std::env::var(CHECK_INTERVAL_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(CHECK_INTERVAL, Duration::from_millis);
        Ok(AgentConfig {
            url: field("url")?.trim_end_matches('/').to_owned(),
            token: SecretString::from(field("token")?),
            name: runner_name.to_owned(),
            config_dir: config_file
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            system_id: None,
            max_builds,
            check_interval,
            unhealthy_interval: UNHEALTHY_INTERVAL,
            update_interval: Duration::from_secs(1),
        })
    }
}

/// Whether gitlab-runner takes `id` from `.runner_system_id`.
pub fn valid_system_id(id: &str) -> bool {
    id.len() == 14
        && (id.starts_with("s_") || id.starts_with("r_"))
        && id[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The id gitlab-runner makes up without a valid file: `s_` + 12 hex of HMAC-SHA256(machine
/// id, "gitlab-runner"), else `r_` + 12 random letters and digits.
fn made_up_system_id() -> String {
    let machine = ["/var/lib/dbus/machine-id", "/etc/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 256);
    if let Some(hex) =
        machine.and_then(|m| crate::serve::hmac_sha256_hex(m.as_bytes(), &[b"gitlab-runner"]))
    {
        return format!("s_{}", &hex[..12]);
    }
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let id: String = (0..12)
        .map(|_| CHARSET[rng.random_range(0..CHARSET.len())] as char)
        .collect();
    format!("r_{id}")
}

/// Writes `contents` to `path` with mode 0600.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Prepares the slot directory as the start-up script does, then reads the `system_id` as
/// gitlab-runner does.
fn system_id_of(config: &AgentConfig) -> Result<String, AgentError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = &config.config_dir;
    let io = |e| AgentError::Io(dir.clone(), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let file = dir.join(".runner_system_id");
    if let Some(id) = &config.system_id {
        write_private(&file, &format!("{id}\n")).map_err(io)?;
    }
    let found = match std::fs::read(&file) {
        Ok(bytes) if bytes.len() <= 1024 => Some(String::from_utf8_lossy(&bytes).trim().to_owned()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    match found.filter(|id| valid_system_id(id)) {
        Some(id) => Ok(id),
        None => {
            let id = made_up_system_id();
            tracing::warn!(runner = %config.name, system_id = %id, "no valid .runner_system_id: using a made-up system id");
            write_private(&file, &id).map_err(io)?;
            Ok(id)
        }
    }
}

/// The runner's `info` (what gitlab-runner reports about itself).
fn info() -> Value {
    json!({
        "name": "gitlab-runner", "version": "17.5.0-fake", "revision": "fake",
        "platform": "linux", "architecture": "amd64", "executor": "shell", "shell": "bash",
        "features": { "variables": true, "cancelable": true, "trace_reset": true,
                      "trace_checksum": false, "trace_size": true, "return_exit_code": true,
                      "raw_variables": true, "multi_build_steps": true },
        "config": { "gpus": "" },
    })
}

/// A job as `POST /jobs/request` hands it over (the parts the fake runner reads).
#[derive(Deserialize)]
struct Job {
    id: u64,
    token: String,
    #[serde(default)]
    variables: Vec<Variable>,
    #[serde(default)]
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Variable {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct Step {
    #[serde(default)]
    name: String,
    #[serde(default)]
    script: Vec<String>,
    #[serde(default)]
    timeout: u64,
}

/// An answer's body, at most [`MAX_BODY`] bytes.
async fn body(mut r: reqwest::Response) -> Result<Vec<u8>, AgentError> {
    let mut out = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| AgentError::Api(e.without_url().to_string()))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(AgentError::Api("answer larger than 1 MiB".to_owned()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Runs one worker until `shutdown` (a job in hand is finished first) or `max_builds` jobs.
pub async fn run_agent(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let system_id = system_id_of(&config)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| AgentError::Api(e.to_string()))?;
    let mut last_update: Option<String> = None;
    let mut done = 0u32;
    let exit = loop {
        if shutdown.is_cancelled() {
            break AgentExit::Shutdown;
        }
        if config.max_builds > 0 && done >= config.max_builds {
            break AgentExit::MaxBuilds;
        }
        let mut request = json!({
            "info": info(),
            "token": config.token.expose_secret(),
            "system_id": system_id,
        });
        if let Some(lu) = &last_update {
            request["last_update"] = json!(lu);
        }
        // Not raced with shutdown: a job GitLab hands over must be run, not dropped.
        let resp = client
            .post(format!("{}/api/v4/jobs/request", config.url))
            .header("RUNNER-TOKEN", config.token.expose_secret())
            .json(&request)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "job request failed");
                wait(&shutdown, config.check_interval).await;
                continue;
            }
        };
        if let Some(lu) = resp
            .headers()
            .get("x-gitlab-last-update")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            last_update = Some(lu.to_owned());
        }
        match resp.status() {
            reqwest::StatusCode::CREATED => {
                let bytes = body(resp).await?;
                let job: Job = serde_json::from_slice(&bytes)
                    .map_err(|e| AgentError::Api(format!("job payload: {e}")))?;
                tracing::info!(runner = %config.name, job = job.id, "running job");
                run_job(&client, &config, &job).await;
                done += 1;
            }
            reqwest::StatusCode::FORBIDDEN => {
                tracing::warn!(runner = %config.name, "job request forbidden: runner is not healthy");
                wait(&shutdown, config.unhealthy_interval).await;
            }
            status => {
                if !status.is_success() {
                    tracing::warn!(%status, "job request failed");
                }
                wait(&shutdown, config.check_interval).await;
            }
        }
    };
    Ok(AgentReport {
        runner_name: config.name,
        system_id,
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

/// The job's calls: updates and trace patches, authenticated with its job token.
struct JobApi<'a> {
    client: &'a reqwest::Client,
    config: &'a AgentConfig,
    job: &'a Job,
    /// Trace bytes the emulator has.
    sent: usize,
}

impl JobApi<'_> {
    fn url(&self, tail: &str) -> String {
        format!("{}/api/v4/jobs/{}{tail}", self.config.url, self.job.id)
    }

    /// `PUT /jobs/:id`; `false` when GitLab says the job is over for it (403, 404).
    async fn update(&self, body: Value) -> bool {
        let mut body = body;
        body["token"] = json!(self.job.token);
        body["info"] = info();
        match self
            .client
            .put(self.url(""))
            .header("JOB-TOKEN", &self.job.token)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_client_error() => false,
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(job = self.job.id, error = %e.without_url(), "job update failed");
                true
            }
        }
    }

    /// Sends what of `trace` GitLab does not have yet; `false` when the job is over for it.
    async fn patch(&mut self, trace: &[u8]) -> bool {
        while self.sent < trace.len() {
            let end = trace.len().min(self.sent + MAX_PATCH);
            let r = self
                .client
                .patch(self.url("/trace?debug_trace=false"))
                .header("JOB-TOKEN", &self.job.token)
                .header("Content-Range", format!("{}-{}", self.sent, end - 1))
                .header("Content-Type", "text/plain")
                .body(trace[self.sent..end].to_vec())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => self.sent = end,
                Ok(r) if r.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                    // GitLab says where its copy ends: go on from there.
                    let at = r
                        .headers()
                        .get("range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_once('-'))
                        .and_then(|(_, end)| end.parse::<usize>().ok());
                    match at {
                        Some(at) if at <= trace.len() && at != self.sent => self.sent = at,
                        _ => return true,
                    }
                }
                Ok(r) if r.status().is_client_error() => return false,
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(job = self.job.id, error = %e.without_url(), "trace patch failed");
                    return true;
                }
            }
        }
        true
    }
}

/// Runs one job to its end: `running`, the script under bash with its output as the trace,
/// then the final state. A job GitLab takes away (403) is abandoned.
async fn run_job(client: &reqwest::Client, config: &AgentConfig, job: &Job) {
    let mut api = JobApi {
        client,
        config,
        job,
        sent: 0,
    };
    if !api.update(json!({ "state": "running" })).await {
        tracing::warn!(job = job.id, "job was taken away");
        return;
    }
    let trace = Arc::new(Mutex::new(
        format!(
            "Running with runscale-fake-runner on {} (system id file in {})\n",
            config.name,
            config.config_dir.display()
        )
        .into_bytes(),
    ));
    let script: Vec<String> = job
        .steps
        .iter()
        .filter(|s| s.name == "script")
        .flat_map(|s| s.script.clone())
        .collect();
    let timeout = job
        .steps
        .iter()
        .find(|s| s.name == "script")
        .map(|s| Duration::from_secs(s.timeout))
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_STEP_TIMEOUT);
    let dir = config.config_dir.join("builds").join(job.id.to_string());
    let outcome = match std::fs::create_dir_all(&dir) {
        Ok(()) => run_script(job, &script, &dir, timeout, &trace, &mut api).await,
        Err(e) => Outcome::System(format!("builds directory: {e}")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (state, code, reason) = match &outcome {
        Outcome::Exited(0) => ("success", 0, None),
        Outcome::Exited(code) => ("failed", *code, Some("script_failure")),
        Outcome::TimedOut => ("failed", 1, Some("job_execution_timeout")),
        Outcome::System(why) => {
            push_trace(&trace, format!("ERROR: {why}\n").as_bytes());
            ("failed", 1, Some("runner_system_failure"))
        }
        Outcome::Abandoned => return,
    };
    let text = snapshot(&trace);
    let mut update = json!({
        "state": state,
        "exit_code": code,
        "output": { "bytesize": text.len() },
    });
    if let Some(r) = reason {
        update["failure_reason"] = json!(r);
    }
    for _ in 0..20 {
        if !api.patch(&text).await {
            return;
        }
        let r = client
            .put(api.url(""))
            .header("JOB-TOKEN", &job.token)
            .json(&{
                let mut u = update.clone();
                u["token"] = json!(job.token);
                u["info"] = info();
                u
            })
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_client_error() => return,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

enum Outcome {
    Exited(i32),
    TimedOut,
    System(String),
    Abandoned,
}

fn push_trace(trace: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut t = trace.lock().unwrap_or_else(|e| e.into_inner());
    let room = MAX_BODY.saturating_sub(t.len());
    t.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn snapshot(trace: &Mutex<Vec<u8>>) -> Vec<u8> {
    trace.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs the script lines with `bash -eo pipefail`, output (stdout and stderr) into `trace`,
/// patching the trace and touching the job every `update_interval` meanwhile.
async fn run_script(
    job: &Job,
    script: &[String],
    dir: &Path,
    timeout: Duration,
    trace: &Arc<Mutex<Vec<u8>>>,
    api: &mut JobApi<'_>,
) -> Outcome {
    let mut text = String::from("exec 2>&1\nset -eo pipefail\n");
    for line in script {
        text.push_str(&format!("echo {}\n", shell_quote(&format!("$ {line}"))));
        text.push_str(line);
        text.push('\n');
    }
    let mut command = tokio::process::Command::new("bash");
    command
        .arg("-c")
        .arg(&text)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for v in &job.variables {
        command.env(&v.key, &v.value);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::System(format!("cannot start bash: {e}")),
    };
    let reader = child.stdout.take().map(|mut out| {
        let trace = trace.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                push_trace(&trace, &buf[..n]);
            }
        })
    });
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        let tick = Instant::now() + api.config.update_interval;
        tokio::select! {
            status = child.wait() => break match status {
                Ok(s) => Outcome::Exited(s.code().unwrap_or(1)),
                Err(e) => Outcome::System(format!("waiting for bash: {e}")),
            },
            _ = tokio::time::sleep_until(tick.min(deadline)) => {
                if Instant::now() >= deadline {
                    let _ = child.kill().await;
                    break Outcome::TimedOut;
                }
                let text = snapshot(trace);
                if !api.patch(&text).await || !api.update(json!({ "state": "running" })).await {
                    tracing::warn!(job = job.id, "job was taken away");
                    let _ = child.kill().await;
                    break Outcome::Abandoned;
                }
            }
        }
    };
    if let Some(r) = reader {
        let _ = r.await;
    }
    outcome
}

/// `s` in single quotes for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ids_are_checked_like_gitlab_runner_checks_them() {
        assert!(valid_system_id("s_abcdefghij01"));
        assert!(valid_system_id("r_AbCdEfGhIj12"));
        assert!(!valid_system_id("rs-linux-abcdefghij-1"));
        assert!(!valid_system_id("s_abc"));
        assert!(!valid_system_id("x_abcdefghij01"));
        assert!(!valid_system_id("s_abcdefghij-1"));
        assert!(valid_system_id(&made_up_system_id()));
    }

    #[test]
    fn run_single_reads_the_runner_entry_and_the_system_id_file_next_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "concurrent = 1\n\n[[runners]]\n  name = \"other\"\n  url = \"http://x\"\n  \
             token = \"t1\"\n  executor = \"shell\"\n\n[[runners]]\n  name = \"rs-p-abcdefghij\"\n  \
             url = \"http://127.0.0.1:1/\"\n  token = \"glrt-y\"\n  executor = \"shell\"\n  \
             [runners.custom_build_dir]\n",
        )
        .expect("write");
        std::fs::write(dir.path().join(".runner_system_id"), "s_abcdefghij00\n").expect("id");
        let c = AgentConfig::from_run_single(&file, "rs-p-abcdefghij", 3).expect("config");
        assert_eq!(c.url, "http://127.0.0.1:1");
        assert_eq!(c.token.expose_secret(), "glrt-y");
        assert_eq!(c.max_builds, 3);
        assert_eq!(c.system_id, None);
        assert_eq!(system_id_of(&c).expect("id"), "s_abcdefghij00");
        assert!(AgentConfig::from_run_single(&file, "missing", 0).is_err());
    }

    #[test]
    fn the_slot_directory_gets_the_id_and_an_invalid_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = |id: &'static str| {
            let slots = dir.path().to_string_lossy().into_owned();
            move |n: &str| match n {
                TOKEN_VAR => Some("glrt-x".to_owned()),
                URL_VAR => Some("http://127.0.0.1:1".to_owned()),
                NAME_VAR => Some("rs-p-abcdefghij-1".to_owned()),
                SYSTEM_ID_VAR => Some(id.to_owned()),
                SLOTS_DIR_VAR => Some(slots.clone()),
                _ => None,
            }
        };
        let c = AgentConfig::from_vars(&vars("s_abcdefghij01"))
            .expect("vars")
            .expect("gitlab");
        assert_eq!(c.config_dir, dir.path().join("rs-p-abcdefghij-1"));
        assert_eq!(system_id_of(&c).expect("id"), "s_abcdefghij01");
        let c = AgentConfig::from_vars(&vars("rs-p-abcdefghij-1"))
            .expect("vars")
            .expect("gitlab");
        let made_up = system_id_of(&c).expect("id");
        assert_ne!(made_up, "rs-p-abcdefghij-1");
        assert!(valid_system_id(&made_up));
    }
}
