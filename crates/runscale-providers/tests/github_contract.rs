//! Contract test: every request the GitHub provider makes, and every answer the GitHub
//! emulator gives it, checked against GitHub's published OpenAPI description
//! (`@octokit/openapi`, `api.github.com.json`) by Prism in proxy mode with `--errors`:
//!
//! ```text
//! GithubProvider → recorder (127.0.0.1) → prism proxy --errors (127.0.0.1) → emulator (127.0.0.1)
//! ```
//!
//! Prism refuses a request that breaks the description with a 422 `application/problem+json`
//! (and never forwards it), answers 500 `VIOLATIONS` for a response that breaks it, and lists
//! lesser findings in an `sl-violations` header. The recorder, a small reverse proxy in this
//! test, keeps every exchange so the test can assert that each one was forwarded and clean,
//! and that every call the provider makes was seen: runner list (two pages, then 304s),
//! queued and in-progress runs and their jobs (two pages), JIT configuration, registration
//! token, runner deletion (204, 422 for a busy runner, 404), GitHub App installation look-up
//! and installation token, at organisation and repository scope, and on a GitHub Enterprise
//! Server style base URL.
//!
//! GitHub's description has `servers: https://api.github.com` (no base path) and its paths
//! start at `/orgs/...`, so Prism matches request paths as they come. A provider configured
//! for GitHub Enterprise Server (`api_url: https://HOST/api/v3`) sends `/api/v3/orgs/...`; the
//! recorder strips that base path before Prism, as GHES's own description puts `/api/v3` in
//! its server URL rather than in its paths.
//!
//! Prism and the description are found under `RUNSCALE_NPM_DIR` (where `scripts/test.sh`
//! installs them), then `~/.cache/runscale/npm` and `target/npm`. Without them the test prints
//! a note and passes, except under CI (`CI` set), where it fails. Prism takes 10–30 s to load
//! the 13 MB description, so one Prism process serves every scenario; it is killed (by its
//! PID) when the test ends, panics included.
#![cfg(feature = "github")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use runscale_core::{ErrorKind, PoolId, Provider, ProviderView, RunnerState};
use runscale_emulator::github::{
    AppConfig, Emulator, EmulatorConfig, EmulatorHandle, InstallationConfig, JitConfig, JobSpec,
    OwnerConfig, OwnerKind, RunnerSource, run_agent,
};
use runscale_providers::github::{Config, GithubProvider, PoolSelector};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ghp_contract_token";
const REPO_TOKEN: &str = "ghp_contract_repo_token";
const INSTALLATION: u64 = 7;
const APP_ID: u64 = 42;
/// The emulator's test key pair for the App (PKCS#8 private key, SPKI public key).
const APP_PRIVATE_KEY: &str = include_str!("../../runscale-emulator/tests/fixtures/app-key.pem");
const APP_PUBLIC_KEY: &str = include_str!("../../runscale-emulator/tests/fixtures/app-key.pub.pem");
/// GitHub Enterprise Server's API base path.
const GHES_PREFIX: &str = "/api/v3";
/// Longest wait for Prism to load the description and listen (2 cores, other builds).
const PRISM_START: Duration = Duration::from_secs(240);
/// Longest time for all scenarios together, once Prism listens.
const SCENARIOS: Duration = Duration::from_secs(420);
/// Longest wait for the fake runner to come online or take a job.
const PATIENCE: Duration = Duration::from_secs(60);
/// Runners registered in the organisation: more than one page of 100.
const ORG_RUNNERS: usize = 101;
/// Jobs in one workflow run: more than one page of 100.
const RUN_JOBS: usize = 120;

// ---------------------------------------------------------------------------------------
// Finding Prism and the description.

/// Prism's launcher and GitHub's description.
struct Tools {
    prism: PathBuf,
    spec: PathBuf,
}

fn tools() -> Option<Tools> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("RUNSCALE_NPM_DIR") {
        dirs.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/runscale/npm"));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/npm"));
    dirs.into_iter().find_map(|d| {
        let t = Tools {
            prism: d.join("node_modules/@stoplight/prism-cli/dist/index.js"),
            spec: d.join("node_modules/@octokit/openapi/generated/api.github.com.json"),
        };
        (t.prism.is_file() && t.spec.is_file()).then_some(t)
    })
}

// ---------------------------------------------------------------------------------------
// Prism as a child process.

/// A running `prism proxy`, killed by its PID when dropped (also while a test panics).
struct Prism {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Prism {
    /// Starts `prism proxy --errors SPEC UPSTREAM` on a free loopback port and waits until it
    /// listens, up to [`PRISM_START`].
    async fn start(tools: &Tools, upstream: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("prism.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("node")
            .arg(&tools.prism)
            .args([
                "proxy",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--errors",
            ])
            .arg(&tools.spec)
            .arg(upstream)
            // One process (NODE_ENV=production would fork a second one for logging).
            .env_remove("NODE_ENV")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("node runs Prism (scripts/test.sh needs Node.js 20+)");
        let mut prism = Prism {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let ready = format!("Prism is listening on {}", prism.url);
        let deadline = Instant::now() + PRISM_START;
        loop {
            if let Some(status) = prism.child.try_wait().expect("wait") {
                panic!(
                    "Prism exited with {status} while starting:\n{}",
                    prism.tail()
                );
            }
            if std::fs::read_to_string(&prism.log).is_ok_and(|l| l.contains(&ready)) {
                return prism;
            }
            assert!(
                Instant::now() < deadline,
                "Prism did not listen within {PRISM_START:?}:\n{}",
                prism.tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end of Prism's log, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..]
            .iter()
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID (SIGKILL); Prism runs as one node process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The recorder: a reverse proxy between the provider and Prism.

/// One request and Prism's answer to it.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    /// Path and query as Prism saw them (GHES base path stripped).
    path: String,
    /// Whether the provider sent it under the GHES base path.
    ghes: bool,
    status: u16,
    content_type: String,
    /// `x-ratelimit-remaining` of the answer.
    remaining: Option<u64>,
    /// Prism's `sl-violations` findings (raw text if the header is not JSON).
    violations: Vec<Value>,
    /// The body of problem answers (Prism's own), shortened.
    problem: String,
}

impl Exchange {
    /// Whether this is `method` on `path` answered with `status`; a `path` ending in `*`
    /// matches every path starting with the rest.
    fn is(&self, method: &str, path: &str, status: u16) -> bool {
        let path_matches = match path.strip_suffix('*') {
            Some(prefix) => self.path.starts_with(prefix),
            None => self.path == path,
        };
        self.method == method && path_matches && self.status == status
    }
}

struct RecorderState {
    http: reqwest::Client,
    upstream: String,
    exchanges: Mutex<Vec<Exchange>>,
}

/// The recorder's address and log; its server stops when dropped.
struct Recorder {
    url: String,
    state: Arc<RecorderState>,
    server: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(upstream: &str) -> Self {
        let state = Arc::new(RecorderState {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            upstream: upstream.to_owned(),
            exchanges: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { url, state, server }
    }

    /// The exchanges since the last call.
    fn take(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.state.exchanges.lock().expect("lock"))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn forward(State(rec): State<Arc<RecorderState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .expect("request body");
    let full = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (ghes, path) = match full.strip_prefix(GHES_PREFIX) {
        Some(rest) if rest.starts_with('/') => (true, rest.to_owned()),
        _ => (false, full),
    };
    let mut out = rec
        .http
        .request(parts.method.clone(), format!("{}{path}", rec.upstream));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    if !body.is_empty() {
        out = out.body(body.to_vec());
    }
    let mut exchange = Exchange {
        method: parts.method.to_string(),
        path,
        ghes,
        status: 0,
        content_type: String::new(),
        remaining: None,
        violations: Vec::new(),
        problem: String::new(),
    };
    let response = match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            exchange.status = status.as_u16();
            exchange.content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            exchange.remaining = headers
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            if let Some(v) = headers.get("sl-violations") {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                exchange.violations = match serde_json::from_str::<Vec<Value>>(&text) {
                    Ok(list) => list,
                    Err(_) => vec![Value::String(text)],
                };
            }
            if exchange.content_type.contains("problem+json") {
                exchange.problem = String::from_utf8_lossy(&bytes).chars().take(2000).collect();
            }
            let mut builder = Response::builder().status(status);
            for (name, value) in &headers {
                if !hop_by_hop(name) {
                    builder = builder.header(name, value);
                }
            }
            builder.body(Body::from(bytes)).expect("response")
        }
        Err(e) => {
            exchange.status = 502;
            exchange.problem = format!("recorder could not reach Prism: {e}");
            Response::builder()
                .status(502)
                .body(Body::from(exchange.problem.clone()))
                .expect("response")
        }
    };
    rec.exchanges.lock().expect("lock").push(exchange);
    response
}

/// What Prism refused or found in `exchanges`: its own problem answers (422 for a request
/// that breaks GitHub's description, 500 `VIOLATIONS` for an answer that does, 404 for a path
/// GitHub does not have), transport failures, and every finding except the one GitHub's
/// description cannot avoid: a 304 or 404 answer, which it does not list for these
/// operations (a warning, which `--errors` lets through).
fn findings(exchanges: &[Exchange]) -> Vec<String> {
    let mut out = Vec::new();
    for e in exchanges {
        let what = format!("{} {} → {}", e.method, e.path, e.status);
        if e.content_type.contains("problem+json") || e.status == 502 {
            out.push(format!("{what}: not passed through: {}", e.problem));
        }
        for v in &e.violations {
            let undocumented_status = v["severity"] == "Warning"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Unable to match the returned status code"))
                && matches!(e.status, 304 | 404);
            if !undocumented_status {
                out.push(format!("{what}: {v}"));
            }
        }
    }
    out
}

/// Asserts that a scenario made requests and Prism forwarded all of them and found nothing
/// wrong with them or with the emulator's answers.
fn assert_conforming(scenario: &str, exchanges: &[Exchange]) {
    assert!(!exchanges.is_empty(), "{scenario}: no request was made");
    let found = findings(exchanges);
    assert!(
        found.is_empty(),
        "{scenario}: exchanges that break GitHub's OpenAPI description:\n{}",
        found.join("\n")
    );
}

/// Asserts that some exchange matches `method`, `path` and `status` (see [`Exchange::is`]);
/// returns how many do.
fn count(scenario: &str, exchanges: &[Exchange], method: &str, path: &str, status: u16) -> usize {
    let n = exchanges
        .iter()
        .filter(|e| e.is(method, path, status))
        .count();
    assert!(
        n > 0,
        "{scenario}: expected {method} {path} answered {status}; saw:\n{}",
        summary(exchanges)
    );
    n
}

/// Asserts that every `(method, path, status)` of `expected` was seen (see [`Exchange::is`]).
fn expect_calls(scenario: &str, exchanges: &[Exchange], expected: &[(&str, &str, u16)]) {
    for (method, path, status) in expected {
        count(scenario, exchanges, method, path, *status);
    }
}

fn summary(exchanges: &[Exchange]) -> String {
    exchanges
        .iter()
        .map(|e| format!("  {} {} {}", e.status, e.method, e.path))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// The emulator and the provider.

fn emulator_config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(
        vec![OwnerConfig {
            login: "acme".into(),
            kind: OwnerKind::Organization,
            repos: vec!["app".into(), "lib".into()],
            runner_groups: Vec::new(),
        }],
        vec![SecretString::from(TOKEN), SecretString::from(REPO_TOKEN)],
    );
    c.app = Some(AppConfig {
        app_id: APP_ID,
        client_id: Some("Iv1.contract".into()),
        slug: "runscale-contract".into(),
        public_key_pem: APP_PUBLIC_KEY.into(),
        installations: vec![InstallationConfig {
            id: INSTALLATION,
            owner: "acme".into(),
        }],
    });
    c
}

/// Secret files for the providers.
fn secrets() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("token", TOKEN),
        ("repo-token", REPO_TOKEN),
        ("app.pem", APP_PRIVATE_KEY),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

fn selector(labels: &[&str], ephemeral: bool) -> PoolSelector {
    PoolSelector {
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        repository: None,
        runner_group_id: None,
        ephemeral,
    }
}

fn linux() -> PoolId {
    PoolId::new("linux")
}

fn gpu() -> PoolId {
    PoolId::new("gpu")
}

/// A provider for `api_url` configured by `settings` (scope, auth, repositories), with an
/// ephemeral `linux` pool and a persistent `gpu` pool.
fn provider(api_url: &str, settings: Value) -> GithubProvider {
    let mut v = json!({"api_url": api_url, "request_timeout": "60s"});
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), settings.as_object()) {
        obj.extend(extra.clone());
    }
    let config: Config = serde_json::from_value(v).expect("config");
    GithubProvider::new(
        config,
        vec![
            (linux(), selector(&["linux"], true)),
            (gpu(), selector(&["linux", "gpu"], false)),
        ],
    )
    .expect("provider")
}

async fn views(p: &GithubProvider) -> (ProviderView, ProviderView) {
    let mut seen = p.observe(&[linux(), gpu()]).await;
    let mut one = |pool: PoolId| {
        seen.remove(&pool)
            .expect("pool answered")
            .unwrap_or_else(|e| panic!("observe {pool}: {e}"))
    };
    (one(linux()), one(gpu()))
}

/// Observes the `linux` runner `reg` registered, then removes it.
async fn listed_then_removed(p: &GithubProvider, reg: &runscale_core::Registration) {
    let id = reg.runner_id.as_ref().expect("JIT runner id");
    let (l, _) = views(p).await;
    assert!(l.runners.iter().any(|r| r.id == *id), "{:?}", l.runners);
    p.remove(&linux(), id).await.expect("removed");
}

fn runner_name(pool: &str, i: usize) -> String {
    format!("rs-{pool}-c{i:09}")
}

fn jobs(repo: &str, labels: &[&str], n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec::new(repo, labels, Duration::from_secs(3600)).named(format!("job-{i}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// Organisation scope with a token: every call, pagination, ETags, the three answers of
/// DELETE.
async fn organisation_with_a_token(emu: &EmulatorHandle, rec: &Recorder, secrets: &Path) {
    let s = "organisation, token";
    let p = provider(
        &rec.url,
        json!({"org": "acme", "repositories": ["app"],
               "auth": {"token": {"file": secrets.join("token")}}}),
    );
    let line = p.probe().await.expect("probe");
    assert!(line.starts_with("github org acme: 0 runners"), "{line}");

    // More runners than one page holds, each with a JIT configuration.
    let mut registrations = Vec::new();
    for i in 0..ORG_RUNNERS {
        let name = runner_name("linux", i);
        let reg = p.register(&linux(), &name).await.expect("JIT registration");
        assert_eq!(reg.runner_name, name);
        registrations.push(reg);
    }
    // Demand: one run with two pages of jobs, runs for the gpu pool, a job nobody runs.
    emu.enqueue_run(jobs("acme/app", &["self-hosted", "linux"], RUN_JOBS))
        .expect("enqueue");
    for _ in 0..3 {
        emu.enqueue(JobSpec::new(
            "acme/app",
            &["linux", "gpu"],
            Duration::from_secs(3600),
        ))
        .expect("enqueue");
    }
    emu.enqueue(JobSpec::new(
        "acme/app",
        &["windows"],
        Duration::from_secs(60),
    ))
    .expect("enqueue");

    let (l, g) = views(&p).await;
    assert_eq!(l.demand.waiting.len(), RUN_JOBS);
    assert_eq!(g.demand.waiting.len(), 3);
    assert_eq!(l.runners.len(), ORG_RUNNERS, "both pages of runners");
    assert!(l.runners.iter().all(|r| r.state == RunnerState::Offline));
    assert!(g.runners.is_empty());

    // Unchanged listings: every GET is answered 304 and costs nothing (the budget GitHub
    // reports stays where the first observation left it).
    let first = rec.take();
    let (l2, g2) = views(&p).await;
    assert_eq!((&l2, &g2), (&l, &g), "the same view from the ETag cache");
    let second = rec.take();
    assert!(
        second.iter().all(|e| e.method == "GET" && e.status == 304),
        "{s}: a second observation of unchanged listings is all 304s:\n{}",
        summary(&second)
    );
    assert_eq!(
        second.len(),
        first.iter().filter(|e| e.method == "GET").count() - 1,
        "every listing again, without the probe"
    );
    let budget = first.iter().filter_map(|e| e.remaining).min();
    assert!(
        budget.is_some(),
        "{s}: rate-limit headers pass through Prism"
    );
    assert!(
        second.iter().all(|e| e.remaining == budget),
        "{s}: 304s are free"
    );

    // A persistent runner's registration token, fetched once and cached.
    let a = p
        .register(&gpu(), &runner_name("gpu", 0))
        .await
        .expect("token registration");
    let b = p
        .register(&gpu(), &runner_name("gpu", 1))
        .await
        .expect("token registration");
    let token = |r: &runscale_core::Registration| {
        r.credentials.secrets["GITHUB_RUNNER_TOKEN"]
            .expose_secret()
            .to_owned()
    };
    assert_eq!(token(&a), token(&b));
    assert!(a.runner_id.is_none());

    // One runner connects and takes a job: deleting it is refused (422), it stays.
    let busy = &registrations[0];
    let busy_id = busy.runner_id.clone().expect("JIT runner id");
    let jit = JitConfig::decode(busy.credentials.secrets["GITHUB_JIT_CONFIG"].expose_secret())
        .expect("JIT configuration decodes");
    assert_eq!(jit.runner_id.to_string(), busy_id.as_str());
    let stop = CancellationToken::new();
    let agent = tokio::spawn(run_agent(RunnerSource::Jit(jit), stop.clone()));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (l, _) = views(&p).await;
        if l.runners
            .iter()
            .any(|r| r.id == busy_id && r.state == RunnerState::Busy)
        {
            assert_eq!(l.demand.running, 1, "the running job counts for the pool");
            assert_eq!(l.demand.waiting.len(), RUN_JOBS - 1);
            break;
        }
        assert!(Instant::now() < deadline, "{s}: the runner never got busy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = p.remove(&linux(), &busy_id).await.expect_err("busy");
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");

    // An idle (never connected) runner is deleted (204); an unknown one is gone (404).
    let idle_id = registrations[1].runner_id.clone().expect("id");
    p.remove(&linux(), &idle_id)
        .await
        .expect("idle runner removed");
    p.remove(&linux(), &runscale_core::RunnerId::new("987654321"))
        .await
        .expect("an unknown runner counts as removed");
    let (l, _) = views(&p).await;
    assert_eq!(l.runners.len(), ORG_RUNNERS - 1);
    assert!(l.runners.iter().any(|r| r.id == busy_id));
    assert!(!l.runners.iter().any(|r| r.id == idle_id));
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    agent.abort();
    stop.cancel();

    let rest = rec.take();
    let all: Vec<Exchange> = first.into_iter().chain(second).chain(rest).collect();
    assert_conforming(s, &all);
    let runners = "/orgs/acme/actions/runners?per_page=100";
    let (page1, page2) = (format!("{runners}&page=1"), format!("{runners}&page=2"));
    let runs =
        |status: &str| format!("/repos/acme/app/actions/runs?status={status}&per_page=100&page=1");
    let (queued, in_progress) = (runs("queued"), runs("in_progress"));
    let (busy, idle) = (
        format!("/orgs/acme/actions/runners/{busy_id}"),
        format!("/orgs/acme/actions/runners/{idle_id}"),
    );
    expect_calls(
        s,
        &all,
        &[
            ("GET", "/orgs/acme/actions/runners?per_page=1", 200),
            ("GET", &page1, 200),
            ("GET", &page2, 200),
            ("GET", &page1, 304),
            ("GET", &page2, 304),
            ("GET", &queued, 200),
            ("GET", &queued, 304),
            ("GET", &in_progress, 200),
            ("GET", &in_progress, 304),
            ("GET", "/repos/acme/app/actions/runs/*", 304),
            ("DELETE", &busy, 422),
            ("DELETE", &idle, 204),
            ("DELETE", "/orgs/acme/actions/runners/987654321", 404),
        ],
    );
    assert_eq!(
        count(
            s,
            &all,
            "POST",
            "/orgs/acme/actions/runners/generate-jitconfig",
            201
        ),
        ORG_RUNNERS
    );
    let jobs_pages = all
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains("/jobs?filter=latest&per_page=100&page=2"))
        .count();
    assert!(
        jobs_pages >= 2,
        "{s}: the long run's second page of jobs, then its 304"
    );
    assert_eq!(
        count(
            s,
            &all,
            "POST",
            "/orgs/acme/actions/runners/registration-token",
            201
        ),
        1,
        "the registration token is cached"
    );
    assert!(all.iter().all(|e| !e.ghes));
    // Prism checked the answers against the operations: it notes that GitHub's description
    // lists neither this 404 nor the 304s (a warning, which `--errors` lets through).
    let gone = all
        .iter()
        .find(|e| e.path == "/orgs/acme/actions/runners/987654321")
        .expect("the 404");
    assert_eq!(gone.violations.len(), 1, "{gone:?}");
    assert!(
        all.iter()
            .filter(|e| e.status == 304)
            .all(|e| e.violations.len() == 1)
    );
}

/// The test's own control: a request that breaks GitHub's description (a JIT configuration
/// without `runner_group_id`) is refused by Prism with its 422 problem and never reaches the
/// emulator. Proves the other scenarios' clean exchanges mean something.
async fn a_bad_request_is_refused(emu: &EmulatorHandle, rec: &Recorder) {
    let s = "control";
    let before = emu.snapshot().runners.len();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/orgs/acme/actions/runners/generate-jitconfig",
            rec.url
        ))
        .bearer_auth(TOKEN)
        .json(&json!({"name": runner_name("linux", 999), "labels": ["linux"]}))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 422);
    let all = rec.take();
    assert_eq!(all.len(), 1);
    assert!(
        all[0].problem.contains("runner_group_id"),
        "{s}: Prism names the missing field: {}",
        all[0].problem
    );
    assert_eq!(emu.snapshot().runners.len(), before, "not forwarded");
    assert_eq!(
        findings(&all).len(),
        1,
        "{s}: the check the scenarios pass flags Prism's refusal"
    );
}

/// Repository scope with a token.
async fn repository_with_a_token(emu: &EmulatorHandle, rec: &Recorder, secrets: &Path) {
    let s = "repository, token";
    let p = provider(
        &rec.url,
        json!({"repo": "acme/lib", "auth": {"token": {"file": secrets.join("repo-token")}}}),
    );
    let reg = p
        .register(&linux(), &runner_name("linux", 900))
        .await
        .expect("JIT registration");
    let id = reg.runner_id.clone().expect("id");
    p.register(&gpu(), &runner_name("gpu", 900))
        .await
        .expect("token registration");
    emu.enqueue_run(jobs("acme/lib", &["linux"], 2))
        .expect("enqueue");
    let (l, g) = views(&p).await;
    assert_eq!(l.demand.waiting.len(), 2);
    assert_eq!(l.runners.len(), 1, "repository runners only");
    assert_eq!(l.runners[0].id, id);
    assert!(g.demand.waiting.is_empty());
    p.remove(&linux(), &id).await.expect("removed");
    p.remove(&linux(), &id).await.expect("already gone");

    let all = rec.take();
    assert_conforming(s, &all);
    let delete = format!("/repos/acme/lib/actions/runners/{id}");
    expect_calls(
        s,
        &all,
        &[
            (
                "POST",
                "/repos/acme/lib/actions/runners/generate-jitconfig",
                201,
            ),
            (
                "POST",
                "/repos/acme/lib/actions/runners/registration-token",
                201,
            ),
            (
                "GET",
                "/repos/acme/lib/actions/runners?per_page=100&page=1",
                200,
            ),
            ("GET", "/repos/acme/lib/actions/runs?status=queued*", 200),
            ("GET", "/repos/acme/lib/actions/runs/*", 200),
            ("DELETE", &delete, 204),
            ("DELETE", &delete, 404),
        ],
    );
}

/// A GitHub App: the installation is looked up with the App's JWT, then an installation
/// token is bought and used; at organisation and repository scope.
async fn github_app(rec: &Recorder, secrets: &Path) {
    let s = "GitHub App";
    let key = json!({"file": secrets.join("app.pem")});
    let org = provider(
        &rec.url,
        json!({"org": "acme", "repositories": ["app"],
               "auth": {"app": {"client_id": "Iv1.contract", "private_key": key}}}),
    );
    let reg = org
        .register(&linux(), &runner_name("linux", 800))
        .await
        .expect("JIT with an installation token");
    listed_then_removed(&org, &reg).await;

    let repo = provider(
        &rec.url,
        json!({"repo": "acme/lib", "auth": {"app": {"app_id": APP_ID, "private_key": key}}}),
    );
    let line = repo.probe().await.expect("probe");
    assert!(line.starts_with("github repo acme/lib: "), "{line}");
    repo.register(&gpu(), &runner_name("gpu", 800))
        .await
        .expect("registration token with an installation token");

    let all = rec.take();
    assert_conforming(s, &all);
    expect_calls(
        s,
        &all,
        &[
            ("GET", "/orgs/acme/installation", 200),
            ("GET", "/repos/acme/lib/installation", 200),
            ("POST", "/orgs/acme/actions/runners/generate-jitconfig", 201),
            (
                "POST",
                "/repos/acme/lib/actions/runners/registration-token",
                201,
            ),
        ],
    );
    assert_eq!(
        count(
            s,
            &all,
            "POST",
            &format!("/app/installations/{INSTALLATION}/access_tokens"),
            201
        ),
        2,
        "one installation token per provider, cached"
    );
}

/// Many repositories under one budget: a list of repositories (each pool bound to one, its
/// runners registered and removed at that repository), and every repository of an App
/// installation (`GET /installation/repositories`).
async fn many_repositories(emu: &EmulatorHandle, rec: &Recorder, secrets: &Path) {
    let s = "a list of repositories; an installation's repositories";
    let config: Config = serde_json::from_value(json!({
        "api_url": rec.url, "request_timeout": "60s",
        "repositories": ["acme/app", "acme/lib"],
        "auth": {"token": {"file": secrets.join("token")}},
    }))
    .expect("config");
    let bound = |labels: &[&str], repo: &str| PoolSelector {
        repository: Some(repo.to_owned()),
        ..selector(labels, true)
    };
    let p = GithubProvider::new(
        config,
        vec![
            (linux(), bound(&["linux"], "acme/app")),
            (gpu(), bound(&["linux", "gpu"], "acme/lib")),
        ],
    )
    .expect("provider");
    let app = p
        .register(&linux(), &runner_name("linux", 700))
        .await
        .expect("JIT at acme/app");
    let lib = p
        .register(&gpu(), &runner_name("gpu", 700))
        .await
        .expect("JIT at acme/lib");
    emu.enqueue_run(jobs("acme/app", &["linux"], 1))
        .expect("enqueue");
    emu.enqueue_run(jobs("acme/lib", &["linux", "gpu"], 1))
        .expect("enqueue");
    let (l, g) = views(&p).await;
    // Earlier scenarios left queued jobs in both repositories: each pool sees some.
    assert!(!l.demand.waiting.is_empty() && !g.demand.waiting.is_empty());
    for (pool, reg) in [(linux(), &app), (gpu(), &lib)] {
        let id = reg.runner_id.as_ref().expect("runner id");
        p.remove(&pool, id)
            .await
            .expect("removed at its repository");
    }

    let key = json!({"file": secrets.join("app.pem")});
    let installed = provider(
        &rec.url,
        json!({"org": "acme", "repositories": "installation",
               "auth": {"app": {"app_id": APP_ID, "private_key": key}}}),
    );
    views(&installed).await;

    let all = rec.take();
    assert_conforming(s, &all);
    expect_calls(
        s,
        &all,
        &[
            (
                "POST",
                "/repos/acme/app/actions/runners/generate-jitconfig",
                201,
            ),
            (
                "POST",
                "/repos/acme/lib/actions/runners/generate-jitconfig",
                201,
            ),
            ("GET", "/repos/acme/app/actions/runners?*", 200),
            ("GET", "/repos/acme/lib/actions/runners?*", 200),
            ("GET", "/repos/acme/app/actions/runs?status=queued*", 200),
            ("GET", "/repos/acme/lib/actions/runs?status=queued*", 200),
            ("DELETE", "/repos/acme/app/actions/runners/*", 204),
            ("DELETE", "/repos/acme/lib/actions/runners/*", 204),
            ("GET", "/installation/repositories*", 200),
        ],
    );
}

/// A GitHub Enterprise Server style base URL (`.../api/v3`).
async fn enterprise_server_base_url(rec: &Recorder, secrets: &Path) {
    let s = "GHES base URL";
    let p = provider(
        &format!("{}{GHES_PREFIX}", rec.url),
        json!({"org": "acme", "repositories": ["lib"],
               "auth": {"token": {"file": secrets.join("token")}}}),
    );
    let reg = p
        .register(&linux(), &runner_name("linux", 700))
        .await
        .expect("JIT registration");
    assert_eq!(
        reg.credentials.vars.get("GITHUB_URL").map(String::as_str),
        Some(format!("{}/acme", rec.url).as_str()),
        "runners register against the server's web URL, without /api/v3"
    );
    listed_then_removed(&p, &reg).await;
    let all = rec.take();
    assert_conforming(s, &all);
    assert!(
        all.iter().all(|e| e.ghes),
        "{s}: every request under /api/v3"
    );
    expect_calls(
        s,
        &all,
        &[
            ("POST", "/orgs/acme/actions/runners/generate-jitconfig", 201),
            ("GET", "/orgs/acme/actions/runners?per_page=100&page=1", 200),
            ("DELETE", "/orgs/acme/actions/runners/*", 204),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_requests_and_emulator_answers_follow_githubs_openapi_description() {
    let tools = runscale_core::testing::require(
        tools(),
        "the npm packages @stoplight/prism-cli and @octokit/openapi",
        "scripts/test.sh installs them into RUNSCALE_NPM_DIR",
    )
    .filter(|_| {
        runscale_core::testing::require_program("node", "Node.js (Debian's nodejs)").is_some()
    });
    let Some(tools) = tools else {
        return;
    };
    let emu = Emulator::start(emulator_config(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts");
    let started = Instant::now();
    let prism = Prism::start(&tools, emu.base_url()).await;
    println!(
        "Prism listened after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let rec = Recorder::start(&prism.url).await;
    let dir = secrets();

    let scenarios = async {
        let t = Instant::now();
        organisation_with_a_token(&emu, &rec, dir.path()).await;
        println!("organisation scenario: {:.1} s", t.elapsed().as_secs_f64());
        repository_with_a_token(&emu, &rec, dir.path()).await;
        github_app(&rec, dir.path()).await;
        many_repositories(&emu, &rec, dir.path()).await;
        enterprise_server_base_url(&rec, dir.path()).await;
        a_bad_request_is_refused(&emu, &rec).await;
    };
    if tokio::time::timeout(SCENARIOS, scenarios).await.is_err() {
        panic!(
            "the scenarios did not finish within {SCENARIOS:?}; Prism's log ends:\n{}",
            prism.tail()
        );
    }
    drop(rec);
    drop(prism);
    emu.shutdown().await;
}
