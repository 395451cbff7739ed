//! Webhook latency: from a signed `workflow_job` (`queued`) delivery POSTed to runscale's
//! `/webhooks/github` until the backend's `launch` is called, through the real path: the HTTP
//! router, the GitHub provider (signature check, wake-up), one reconciler pass that observes
//! the GitHub emulator over loopback HTTP (the poll is the truth), the policy, the JIT
//! registration, then `Backend::launch`.
//!
//! Run: `cargo bench -p runscale --all-features --bench webhook_latency`
//! (`-- --samples N --warmup N --burst N --burst-rounds N --json`).
//!
//! What keeps the numbers honest:
//! - The reconciler's interval is 10 minutes, so only a webhook can start a pass. The bench
//!   fails unless every webhook caused exactly one pass and one launch, and no launch came
//!   before its webhook was sent.
//! - The emulator has no webhook configured, so it queues the job and delivers nothing. The
//!   bench builds the delivery itself: the emulator's job object (`GET .../actions/jobs/{id}`),
//!   signed with the webhook secret. The clock starts just before the request is sent.
//! - runscale is built from configuration text (`config::load_str`, `config::build`), as
//!   `runscale run` does, and its backend is replaced by one that records the instant `launch`
//!   is called. Nothing in the measured path sleeps.
//! - Between samples the world is reset: the job is cancelled, the runner deleted and the
//!   instance dropped. Every sequential pass therefore sees exactly one queued job.
//!
//! The burst variant queues N jobs, then POSTs their N webhooks at once (N connections) and
//! measures until the N-th launch. The webhooks coalesce into one or two passes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use async_trait::async_trait;
use runscale::commands;
use runscale::config;
use runscale::http::{AppState, router};
use runscale_core::reconciler::{Handle, Reconciler};
use runscale_core::{
    Backend, Clock as _, Instance, InstanceId, InstanceState, LaunchRequest, PoolId, RunnerId,
    SystemClock,
};
use runscale_emulator::github::{
    Emulator, EmulatorConfig, EmulatorHandle, JobRef, JobSpec, OwnerConfig, OwnerKind, signature,
};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The organisation the emulator serves.
const ORG: &str = "bench";
/// Its repository.
const REPO: &str = "app";
/// The one pool.
const POOL: &str = "bench";
/// The jobs' `runs-on`.
const LABELS: &[&str] = &["self-hosted", "linux", "x64"];
/// Longest wait for a launch, a pass or the world to settle.
const TIMEOUT: Duration = Duration::from_secs(10);
/// After a burst, passes are over once their count has not moved for this long.
const SETTLE: Duration = Duration::from_millis(200);

/// One `launch` call, as the backend saw it.
struct Launched {
    at: Instant,
    runners: Vec<RunnerId>,
}

/// A backend that keeps its instances in memory and reports the instant of every launch.
struct RecordingBackend {
    instances: Mutex<HashMap<InstanceId, Instance>>,
    launched: mpsc::UnboundedSender<Launched>,
}

impl RecordingBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Instance>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for RecordingBackend {
    fn kind(&self) -> &'static str {
        "recording"
    }
    async fn instances(
        &self,
        pools: &[PoolId],
    ) -> runscale_core::Result<HashMap<PoolId, Vec<Instance>>> {
        let all: Vec<Instance> = self.lock().values().cloned().collect();
        Ok(pools
            .iter()
            .map(|p| {
                let mine = if p.as_str() == POOL {
                    all.clone()
                } else {
                    Vec::new()
                };
                (p.clone(), mine)
            })
            .collect())
    }
    async fn launch(&self, request: LaunchRequest) -> runscale_core::Result<Instance> {
        let at = Instant::now();
        let names: Vec<String> = request
            .runners
            .iter()
            .map(|r| r.runner_name.clone())
            .collect();
        let instance = Instance {
            id: InstanceId::new(format!("i-{}", names.join("-"))),
            state: InstanceState::Booting,
            launched_at: SystemClock.now(),
            template_hash: request.template_hash,
            runner_names: names,
            reused: None,
        };
        self.lock().insert(instance.id.clone(), instance.clone());
        let runners = request
            .runners
            .into_iter()
            .filter_map(|r| r.runner_id)
            .collect();
        // The receiver lives as long as the bench.
        let _ = self.launched.send(Launched { at, runners });
        Ok(instance)
    }
    async fn terminate(&self, _pool: &PoolId, instance: &InstanceId) -> runscale_core::Result<()> {
        self.lock().remove(instance);
        Ok(())
    }
    async fn probe(&self) -> runscale_core::Result<String> {
        Ok("recording".into())
    }
}

/// Command-line options (after `--`).
#[derive(Clone, Debug, Serialize)]
struct Args {
    samples: usize,
    warmup: usize,
    burst: usize,
    burst_rounds: usize,
    json: bool,
}

impl Args {
    fn parse() -> Self {
        let mut a = Args {
            samples: 500,
            warmup: 50,
            burst: 50,
            burst_rounds: 10,
            json: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number =
                |default: usize| args.next().and_then(|v| v.parse().ok()).unwrap_or(default);
            match arg.as_str() {
                "--samples" => a.samples = number(a.samples).max(1),
                "--warmup" => a.warmup = number(a.warmup),
                "--burst" => a.burst = number(a.burst),
                "--burst-rounds" => a.burst_rounds = number(a.burst_rounds),
                "--json" => a.json = true,
                _ => {} // cargo bench passes --bench
            }
        }
        a
    }
}

/// Latency statistics, in milliseconds (nearest-rank percentiles).
#[derive(Clone, Debug, Default, Serialize)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(durations: &[Duration]) -> Self {
        let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| runscale_sim::report::nearest_rank(&ms, q).unwrap_or(0.0);
        Stats {
            n: ms.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        }
    }
}

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    runtime_workers: usize,
}

impl Machine {
    fn here(runtime_workers: usize) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|v| v.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            runtime_workers,
        }
    }
}

/// What was measured and checked.
#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    args: Args,
    /// Sequential webhooks: POST sent → 202 received.
    ack: Stats,
    /// Sequential webhooks: POST sent → `launch` called.
    launch: Stats,
    /// Bursts: all POSTs sent → first `launch`.
    burst_first: Stats,
    /// Bursts: all POSTs sent → N-th `launch`.
    burst_all: Stats,
    /// Passes during the sequential phase (warm-up included); must equal its webhooks.
    sequential_passes: u64,
    /// Launches during the sequential phase (warm-up included); must equal its webhooks.
    sequential_launches: usize,
    /// runscale's GitHub API requests per sequential webhook (304s excluded): its pass's
    /// observation and registration.
    api_requests_per_webhook: f64,
    /// Passes during the bursts.
    burst_passes: u64,
    /// Launches during the bursts; must equal their webhooks.
    burst_launches: usize,
    /// Webhooks the emulator itself delivered; must be 0.
    emulator_deliveries: usize,
    /// What went wrong (empty when every check passed).
    failures: Vec<String>,
}

/// runscale (router, GitHub provider, reconciler, recording backend), the emulator and an HTTP
/// client.
struct Bench {
    emu: EmulatorHandle,
    http: reqwest::Client,
    hook_url: String,
    secret: String,
    /// The bench's own emulator token (its own rate-limit bucket).
    token: String,
    /// runscale's token, to read how many API requests runscale made.
    provider_token: String,
    handle: Handle,
    backend: Arc<RecordingBackend>,
    launches: mpsc::UnboundedReceiver<Launched>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    deliveries: u64,
    _tmp: tempfile::TempDir,
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// runscale's configuration: one GitHub account polled for `REPO`, one pool, a 10 min interval.
/// The local-process backend is only there because a pool needs one: the bench replaces it.
fn config_text(api_url: &str, dir: &Path) -> String {
    let q = |p: &Path| Value::String(p.display().to_string()).to_string();
    format!(
        "listen: \"127.0.0.1:0\"\ninterval: 10m\n\
         providers:\n  - name: github\n    type: github\n    api_url: \"{api_url}\"\n    \
         org: {ORG}\n    repositories: [{REPO}]\n    auth: {{token: {{file: {token}}}}}\n    \
         webhook_secret: {{file: {secret}}}\n\
         backends:\n  - name: replaced\n    type: local-process\n    state_dir: {state}\n\
         pools:\n  - name: {POOL}\n    provider: github\n    backend: replaced\n    \
         selector: {{labels: [linux, x64]}}\n    template: {{command: [\"true\"]}}\n    \
         max: 10000\n    boot_timeout: 30m\n    idle_timeout: 30m\n    ephemeral: true\n",
        token = q(&dir.join("token")),
        secret = q(&dir.join("secret")),
        state = q(&dir.join("state")),
    )
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("runscale-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let (provider_token, bench_token, secret) = (random_hex(), random_hex(), random_hex());
        // The temporary directory is private to this user (0700).
        std::fs::write(tmp.path().join("token"), &provider_token)?;
        std::fs::write(tmp.path().join("secret"), &secret)?;

        let mut emu_config = EmulatorConfig::new(
            vec![OwnerConfig {
                login: ORG.to_owned(),
                kind: OwnerKind::Organization,
                repos: vec![REPO.to_owned()],
                runner_groups: Vec::new(),
            }],
            vec![
                SecretString::from(provider_token.clone()),
                SecretString::from(bench_token.clone()),
            ],
        );
        // No webhook: the emulator queues jobs and delivers nothing. No rate limit in the way.
        emu_config.webhooks.clear();
        emu_config.rate_limit.limit = 10_000_000;
        let emu = Emulator::start(emu_config, "127.0.0.1:0".parse()?)
            .await
            .context("cannot start the GitHub emulator")?;

        let text = config_text(emu.base_url(), tmp.path());
        let validated = config::load_str(&text, Path::new("bench.yaml"), |_| None)?;
        let mut runtime = config::build(&validated)?;
        let (tx, launches) = mpsc::unbounded_channel();
        let backend = Arc::new(RecordingBackend {
            instances: Mutex::new(HashMap::new()),
            launched: tx,
        });
        for binding in &mut runtime.pools {
            binding.backend = backend.clone();
        }
        ensure!(
            runtime.options.interval >= Duration::from_secs(600),
            "the interval must be long, so that only webhooks start passes"
        );

        // As `daemon::serve` wires it: router and reconciler on one runtime.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (registry, metrics) = commands::metrics();
        let reconciler = Reconciler::new(
            runtime.pools,
            Arc::new(SystemClock),
            metrics,
            runtime.options,
        );
        let handle = reconciler.handle();
        let state = AppState {
            handle: handle.clone(),
            registry: Arc::new(registry),
        };
        let stop = CancellationToken::new();
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router(state))
                .with_graceful_shutdown(server_stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                eprintln!("runscale's HTTP server failed: {e}");
            }
        });
        let reconciling = tokio::spawn(reconciler.run(stop.clone()));

        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let bench = Bench {
            emu,
            http,
            hook_url: format!("http://{listen}/webhooks/github"),
            secret,
            token: bench_token,
            provider_token,
            handle,
            backend,
            launches,
            stop,
            tasks: vec![server, reconciling],
            deliveries: 0,
            _tmp: tmp,
        };
        // The first pass runs at start; wait for it, so every later pass is a webhook's.
        bench
            .wait_until("the first pass", || bench.handle.ready())
            .await?;
        Ok(bench)
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.emu.shutdown().await;
    }

    fn passes(&self) -> u64 {
        self.handle.status().iter().map(|p| p.passes).sum()
    }

    /// Polls `done` every millisecond (outside the measured path) until it holds.
    async fn wait_until(&self, what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while !done() {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Waits until no pass has started or ended for `SETTLE`.
    async fn settle(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = self.passes();
        loop {
            tokio::time::sleep(SETTLE).await;
            let now = self.passes();
            if now == last {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "passes did not settle");
            last = now;
        }
    }

    /// Queues one job in the emulator (no webhook) and returns it with its `workflow_job`
    /// delivery body: GitHub's job object, as the jobs API returns it.
    async fn queue(&self) -> anyhow::Result<(JobRef, Vec<u8>)> {
        let job = self.emu.enqueue(JobSpec::new(
            format!("{ORG}/{REPO}"),
            LABELS,
            Duration::from_secs(60),
        ))?;
        let url = format!(
            "{}/repos/{ORG}/{REPO}/actions/jobs/{}",
            self.emu.base_url(),
            job.job_id
        );
        let workflow_job = self.get_json(&url, &self.token).await?;
        let body = json!({
            "action": "queued",
            "workflow_job": workflow_job,
            "repository": {"name": REPO, "full_name": format!("{ORG}/{REPO}"), "owner": {"login": ORG}},
            "organization": {"login": ORG},
            "sender": {"login": "octocat", "type": "User"},
        });
        Ok((job, serde_json::to_vec(&body)?))
    }

    /// The signed delivery of `body`, ready to send.
    fn request(&mut self, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.deliveries += 1;
        self.http
            .post(&self.hook_url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/bench")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", format!("bench-{}", self.deliveries))
            .header(
                "x-hub-signature-256",
                signature(self.secret.as_bytes(), &body),
            )
            .body(body)
    }

    /// Cancels the jobs, deletes their runners and drops their instances: the next pass sees
    /// an empty world again.
    async fn reset(&self, jobs: &[JobRef], launched: &[Launched]) -> anyhow::Result<()> {
        for job in jobs {
            self.emu.cancel_queued_job(job.job_id)?;
        }
        for runner in launched.iter().flat_map(|l| &l.runners) {
            let url = format!(
                "{}/orgs/{ORG}/actions/runners/{}",
                self.emu.base_url(),
                runner.as_str()
            );
            let status = self
                .http
                .delete(url)
                .bearer_auth(&self.token)
                .header("user-agent", "runscale-bench")
                .send()
                .await?
                .status();
            ensure!(
                status == reqwest::StatusCode::NO_CONTENT,
                "deleting runner {} answered {status}",
                runner.as_str()
            );
        }
        self.backend.lock().clear();
        Ok(())
    }

    /// A GET to the emulator's REST API with `token`; the JSON answer.
    async fn get_json(&self, url: &str, token: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .header("user-agent", "runscale-bench")
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// Requests runscale's token has used from its rate limit (every API request except 304s).
    async fn api_used(&self) -> anyhow::Result<u64> {
        let url = format!("{}/rate_limit", self.emu.base_url());
        let limits = self.get_json(&url, &self.provider_token).await?;
        limits["resources"]["core"]["used"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /rate_limit has no resources.core.used"))
    }

    /// Launches that arrived and were not consumed.
    fn drain_launches(&mut self) -> Vec<Launched> {
        let mut extra = Vec::new();
        while let Ok(l) = self.launches.try_recv() {
            extra.push(l);
        }
        extra
    }

    /// One sequential sample: (sent → 202, sent → launch).
    async fn sample(&mut self) -> anyhow::Result<(Duration, Duration)> {
        let passes = self.passes();
        let (job, body) = self.queue().await?;
        let request = self.request(body);
        let launches = &mut self.launches;
        let sent = Instant::now();
        let (acked, launched) = tokio::join!(
            send(request),
            tokio::time::timeout(TIMEOUT, launches.recv())
        );
        let acked = acked?;
        let launched = launched
            .map_err(|_| anyhow!("no launch within {TIMEOUT:?} of the webhook"))?
            .ok_or_else(|| anyhow!("the backend is gone"))?;
        let latency = launched
            .at
            .checked_duration_since(sent)
            .ok_or_else(|| anyhow!("a launch came before its webhook was sent"))?;
        // The pass records itself after its launches; then nothing else may have launched.
        self.wait_until("the webhook's pass", || self.passes() > passes)
            .await?;
        let mut all = vec![launched];
        all.extend(self.drain_launches());
        ensure!(
            all.len() == 1,
            "one webhook caused {} launches (expected 1)",
            all.len()
        );
        self.reset(&[job], &all).await?;
        Ok((acked - sent, latency))
    }

    /// One burst: `n` jobs queued, their `n` webhooks sent at once; (sent → first launch,
    /// sent → n-th launch, passes).
    async fn burst(&mut self, n: usize) -> anyhow::Result<(Duration, Duration, u64)> {
        let passes = self.passes();
        let mut jobs = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            let (job, body) = self.queue().await?;
            jobs.push(job);
            requests.push(self.request(body));
        }
        let launches = &mut self.launches;
        let collect = async {
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                match launches.recv().await {
                    Some(l) => got.push(l),
                    None => break,
                }
            }
            got
        };
        let sent = Instant::now();
        let (acks, got) = tokio::join!(
            futures::future::join_all(requests.into_iter().map(send)),
            tokio::time::timeout(TIMEOUT, collect)
        );
        for ack in acks {
            ack?;
        }
        let mut got = got.map_err(|_| anyhow!("fewer than {n} launches within {TIMEOUT:?}"))?;
        ensure!(got.len() == n, "the backend is gone");
        let first = got.iter().map(|l| l.at).min().unwrap_or(sent);
        let last = got.iter().map(|l| l.at).max().unwrap_or(sent);
        ensure!(first >= sent, "a launch came before the webhooks were sent");
        self.settle().await?;
        got.extend(self.drain_launches());
        ensure!(
            got.len() == n,
            "{n} webhooks for {n} jobs caused {} launches",
            got.len()
        );
        let passes = self.passes() - passes;
        self.reset(&jobs, &got).await?;
        Ok((first - sent, last - sent, passes))
    }
}

/// Sends one delivery; returns when the answer arrived. Anything but 202 waking the pool is an
/// error.
async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Instant> {
    let response = request.send().await?;
    let at = Instant::now();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    ensure!(
        status == reqwest::StatusCode::ACCEPTED,
        "webhook answered {status}"
    );
    ensure!(
        body["woke"] == json!([POOL]),
        "webhook woke {} (expected [{POOL}])",
        body["woke"]
    );
    Ok(at)
}

async fn run(args: &Args, machine: Machine) -> anyhow::Result<Report> {
    let mut bench = Bench::start().await?;
    let result = measure(&mut bench, args, machine).await;
    bench.shutdown().await;
    result
}

async fn measure(bench: &mut Bench, args: &Args, machine: Machine) -> anyhow::Result<Report> {
    let mut failures = Vec::new();
    let passes0 = bench.passes();
    let used0 = bench.api_used().await?;
    let mut acks = Vec::with_capacity(args.samples);
    let mut latencies = Vec::with_capacity(args.samples);
    for i in 0..args.warmup + args.samples {
        let (ack, launch) = bench.sample().await?;
        if i >= args.warmup {
            acks.push(ack);
            latencies.push(launch);
        }
    }
    let sequential = (args.warmup + args.samples) as u64;
    let sequential_passes = bench.passes() - passes0;
    let api_requests_per_webhook = (bench.api_used().await? - used0) as f64 / sequential as f64;
    if sequential_passes != sequential {
        failures.push(format!(
            "{sequential} sequential webhooks caused {sequential_passes} passes (expected one each: \
             a pass not caused by a webhook ran)"
        ));
    }

    let (mut firsts, mut alls, mut burst_passes) = (Vec::new(), Vec::new(), 0);
    if args.burst > 0 {
        for _ in 0..args.burst_rounds {
            let (first, all, passes) = bench.burst(args.burst).await?;
            firsts.push(first);
            alls.push(all);
            burst_passes += passes;
        }
    }

    let snapshot = bench.emu.snapshot();
    let emulator_deliveries = bench.emu.deliveries().len();
    if emulator_deliveries != 0 || snapshot.webhooks.delivered != 0 {
        failures.push(format!(
            "the emulator delivered {emulator_deliveries} webhooks (expected none)"
        ));
    }
    if !snapshot.runners.is_empty() || snapshot.queued().count() != 0 {
        failures.push(format!(
            "left over: {} runners, {} queued jobs",
            snapshot.runners.len(),
            snapshot.queued().count()
        ));
    }
    Ok(Report {
        machine,
        args: args.clone(),
        ack: Stats::of(&acks),
        launch: Stats::of(&latencies),
        burst_first: Stats::of(&firsts),
        burst_all: Stats::of(&alls),
        sequential_passes,
        api_requests_per_webhook,
        // `sample` fails unless each webhook caused exactly one launch.
        sequential_launches: args.warmup + args.samples,
        burst_passes,
        burst_launches: args.burst * args.burst_rounds,
        emulator_deliveries,
        failures,
    })
}

fn render(r: &Report) -> String {
    let a = &r.args;
    let row = |name: &str, s: &Stats| {
        format!(
            "{name:<34} {:>5} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}\n",
            s.n, s.p50, s.p90, s.p99, s.max, s.mean
        )
    };
    let mut out = format!(
        "webhook → backend launch: {} sequential webhooks (after {} warm-up), {} bursts of {}\n\
         machine: {}, {} cores; one tokio runtime ({} workers) runs runscale, the GitHub emulator \
         and the sender\n\n{:<34} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        a.samples,
        a.warmup,
        a.burst_rounds,
        a.burst,
        r.machine.cpu,
        r.machine.cores,
        r.machine.runtime_workers,
        "milliseconds",
        "n",
        "p50",
        "p90",
        "p99",
        "max",
        "mean",
    );
    out += &row("webhook answered 202", &r.ack);
    out += &row("webhook sent → launch called", &r.launch);
    if a.burst > 0 && a.burst_rounds > 0 {
        out += &row(
            &format!("burst of {}: first launch", a.burst),
            &r.burst_first,
        );
        out += &row(&format!("burst of {}: all launched", a.burst), &r.burst_all);
    }
    out += &format!(
        "\nchecks: {} sequential webhooks → {} passes, {} launches (one each, none before its \
         webhook), {:.1} GitHub API requests each (304s not counted); bursts: {} launches in {} \
         passes; emulator deliveries: {}\n",
        a.warmup + a.samples,
        r.sequential_passes,
        r.sequential_launches,
        r.api_requests_per_webhook,
        r.burst_launches,
        r.burst_passes,
        r.emulator_deliveries,
    );
    for f in &r.failures {
        out += &format!("FAILED: {f}\n");
    }
    out
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let machine = Machine::here(rt.metrics().num_workers());
    let report = match rt.block_on(run(&args, machine)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("webhook_latency failed: {e:#}");
            std::process::exit(1);
        }
    };
    let text = render(&report);
    if args.json {
        eprint!("{text}");
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("cannot encode the report: {e}"),
        }
    } else {
        print!("{text}");
    }
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}
