//! `runscale demo` and `runscale emulator github`: runscale end to end on one machine, with no
//! account and nothing else installed.
//!
//! The demo starts, in a temporary directory, the GitHub emulator (`runscale-emulator`), the
//! real runscale daemon (configuration text through [`config::load_str`] and
//! [`config::build`], the reconciler and the HTTP server with webhooks and the status page)
//! with two pools on the local-process backend whose runners are `runscale fake-runner`
//! processes, and a synthetic workload (a burst, a lull, a second burst). It shows live
//! progress, waits until every job is done and the pools are back to `min_idle`, stops
//! everything (no process, registration or file is left), and prints a summary.
//!
//! What does not live here: the daemon's signal handling and the `run` command (see
//! [`crate::daemon`]), and the emulator and the agent themselves (`runscale-emulator`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rand::{Rng as _, SeedableRng as _};
use runscale_core::reconciler::{PoolStatus, Reconciler};
use runscale_core::{Backend, PoolId, Provider, SystemClock};
use runscale_emulator::github::{
    Emulator, EmulatorConfig, EmulatorHandle, EmulatorOptions, Faults, JobSpec, JobStatus,
    Snapshot, Workload,
};
use secrecy::SecretString;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::commands;
use crate::config;
use crate::http::{AppState, router};

/// The organisation the demo's emulator serves.
const ORG: &str = "demo";
/// Its repository.
const REPO: &str = "app";
/// How often instances are sampled (for runner-seconds paid and launches).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long the demo waits, once the workload has played, with no job completing before it
/// gives up (longer than `idle_timeout` plus a boot, so scale-in always fits).
const STALL_AFTER: Duration = Duration::from_secs(120);
/// How often progress is redrawn on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(500);
/// How often progress is printed when the output is not a terminal.
const PRINT_EVERY: Duration = Duration::from_secs(5);
/// How long runner processes may take to exit once terminated.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of jobs in the workload.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub jobs: u32,
    /// Time compression: workload offsets and job durations are divided by it.
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
    /// Probability of each injected fault: API 5xx, dropped and duplicated webhooks.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Probability that a webhook delivery is dropped (overrides `--fault-rate` for it).
    #[arg(long, hide = true)]
    pub webhook_drop_rate: Option<f64>,
    /// Probability that a webhook delivery is sent twice (overrides `--fault-rate` for it).
    #[arg(long, hide = true)]
    pub webhook_duplicate_rate: Option<f64>,
    /// Probability that an API request fails with a 5xx (overrides `--fault-rate` for it).
    #[arg(long, hide = true)]
    pub api_error_rate: Option<f64>,
    /// Seed of the workload and of the emulator's faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `emulator` subcommands.
#[derive(Debug, Args)]
pub struct EmulatorCli {
    /// Which CI system to emulate.
    #[command(subcommand)]
    pub command: EmulatorCommand,
}

/// The emulators.
#[derive(Debug, Subcommand)]
pub enum EmulatorCommand {
    /// The GitHub REST API subset runscale uses, with webhooks, faults and the runner protocol.
    Github(GithubEmulatorArgs),
    /// A fake kube-apiserver (pods, secrets, jobs, cronjobs, leases; watch) whose simulated
    /// kubelet runs each pod's container as a local process.
    Kubernetes(KubernetesEmulatorArgs),
}

/// Arguments of `emulator kubernetes`.
#[derive(Debug, Args)]
pub struct KubernetesEmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for the server here (context `runscale-fake`).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The server's settings as YAML: token, namespaces, node, images (image → local
    /// program), faults. Defaults serve four namespaces, one node and no image.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Arguments of `emulator github`.
#[derive(Debug, Args)]
pub struct GithubEmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// The organisation served.
    #[arg(long, default_value = "octo-org")]
    pub org: String,
    /// Its repositories (repeat the flag for several).
    #[arg(long = "repo", default_values_t = vec!["app".to_owned()])]
    pub repos: Vec<String>,
    /// The accepted personal access token.
    #[arg(
        long,
        env = "RUNSCALE_EMULATOR_TOKEN",
        default_value = "emulator-token",
        hide_env_values = true
    )]
    pub token: String,
    /// Where to send `workflow_job` webhooks (an organisation hook).
    #[arg(long, requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The webhook secret.
    #[arg(long, env = "RUNSCALE_EMULATOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Time compression of workloads.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Probability of API 5xx errors, dropped and duplicated webhooks.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Seed of the fault generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the emulator until SIGINT or SIGTERM; prints its base URL on `out` first.
pub async fn emulator(args: EmulatorCli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let a = match args.command {
        EmulatorCommand::Github(a) => a,
        EmulatorCommand::Kubernetes(k) => return kubernetes_emulator(k, out).await,
    };
    let config = EmulatorOptions {
        org: a.org,
        repos: a.repos,
        token: SecretString::from(a.token),
        webhook_url: a.webhook_url,
        webhook_secret: a.webhook_secret.map(SecretString::from),
        speed: a.speed,
        fault_rate: a.fault_rate,
        seed: a.seed,
        public_url: None,
    }
    .into_config()
    .context("invalid emulator options")?;
    let emu = Emulator::start(config, a.listen)
        .await
        .with_context(|| format!("cannot start the emulator on {}", a.listen))?;
    writeln!(out, "{}", emu.base_url())?;
    out.flush()?;
    wait_for_signal().await;
    emu.shutdown().await;
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl DemoArgs {
    /// The emulator's faults: `--fault-rate` for each kind, unless overridden by its own flag.
    pub fn faults(&self) -> Faults {
        let uniform = Faults::uniform(self.fault_rate);
        Faults {
            error_rate_5xx: self.api_error_rate.unwrap_or(uniform.error_rate_5xx),
            webhook_drop_rate: self.webhook_drop_rate.unwrap_or(uniform.webhook_drop_rate),
            webhook_duplicate_rate: self
                .webhook_duplicate_rate
                .unwrap_or(uniform.webhook_duplicate_rate),
            ..uniform
        }
    }
}

/// Runs the fake kube-apiserver until SIGINT or SIGTERM; prints its URL on `out` first.
async fn kubernetes_emulator(
    args: KubernetesEmulatorArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    use runscale_emulator::kube::{KubeConfig, serve};
    let config = match &args.config {
        None => KubeConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_saphyr::from_str::<KubeConfig>(&text)
                .with_context(|| format!("invalid emulator settings in {}", path.display()))?
        }
    };
    serve(
        config,
        args.listen,
        args.kubeconfig.as_deref(),
        out,
        wait_for_signal(),
    )
    .await
    .with_context(|| format!("cannot run the Kubernetes emulator on {}", args.listen))
}

/// Wait statistics, in seconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WaitStats {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Longest.
    pub max: f64,
}

impl WaitStats {
    /// Nearest-rank percentiles of `values` (all zero when empty).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| runscale_sim::report::nearest_rank(&values, q).unwrap_or_default();
        WaitStats {
            p50: rank(0.50),
            p95: rank(0.95),
            max: values[values.len() - 1],
        }
    }
}

/// What the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Jobs in the workload.
    pub jobs_total: u32,
    /// Jobs completed successfully.
    pub jobs_done: u32,
    /// Jobs that completed otherwise (failed or cancelled).
    pub jobs_failed: u32,
    /// Real seconds the jobs waited for a runner.
    pub wait_secs: WaitStats,
    /// The same waits in workload time (multiplied by the speed).
    pub wait_workload_secs: WaitStats,
    /// Σ lifetime of every runner instance (launch to exit), real seconds.
    pub runner_seconds_paid: f64,
    /// Σ run time of every job, real seconds.
    pub runner_seconds_busy: f64,
    /// busy / paid.
    pub utilisation: f64,
    /// Instances launched (runscale's `runscale_launches_total`).
    pub launches: u32,
    /// Instances launched per pool.
    pub launches_by_pool: BTreeMap<String, u32>,
    /// Instances launched per pool and reason (`demand`, `min_idle`, ...).
    pub launches_by_reason: BTreeMap<String, BTreeMap<String, u32>>,
    /// Jobs run per pool (by the runner that took them).
    pub jobs_by_pool: BTreeMap<String, u32>,
    /// Instances still alive after the demo stopped them (must be 0).
    pub remaining_instances: u32,
    /// Safety violations the emulator recorded (must be 0): a runner removed while busy, a
    /// runner that vanished mid-job.
    pub violations: u32,
    /// The violations, as the emulator describes them.
    pub violation_details: Vec<serde_json::Value>,
    /// Jobs still queued when the demo stopped: never started (not a safety violation, but
    /// the demo fails).
    pub jobs_not_run: u32,
    /// Jobs still running when the demo stopped.
    pub jobs_unfinished: u32,
    /// Webhook deliveries: produced, dropped, duplicated, delivered, failed.
    pub webhooks: serde_json::Value,
    /// Time compression used.
    pub speed: f64,
    /// Fault probability used.
    pub fault_rate: f64,
    /// The faults injected, per kind.
    pub faults: FaultRates,
    /// Whether the pools returned to `min_idle` before the deadline.
    pub converged: bool,
    /// Per pool, when the demo stopped waiting: `min_idle`, idle runners, live instances.
    pub pools_at_end: BTreeMap<String, PoolEnd>,
    /// Runners registered with the emulator when the pools had settled (the warm ones).
    pub runners_registered_settled: u32,
    /// Runners still registered with the emulator after everything was stopped (must be 0).
    pub runners_left_registered: u32,
    /// State and credentials files left in the backend's state directory after everything
    /// was stopped (must be 0; runner logs are not counted).
    pub state_files_left: u32,
    /// Wall-clock seconds of the whole demo.
    pub wall_secs: f64,
}

impl Summary {
    /// True when every job completed successfully, nothing was violated and nothing is left.
    pub fn ok(&self) -> bool {
        self.jobs_done == self.jobs_total
            && self.violations == 0
            && self.remaining_instances == 0
            && self.runners_left_registered == 0
            && self.state_files_left == 0
    }

    /// The summary as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "summary");
        let _ = writeln!(
            s,
            "  jobs        {}/{} done{}",
            self.jobs_done,
            self.jobs_total,
            if self.jobs_failed > 0 {
                format!(", {} failed", self.jobs_failed)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  wait        p50 {:.1}s  p95 {:.1}s  max {:.1}s  (workload time: p50 {:.0}s  p95 {:.0}s  max {:.0}s)",
            self.wait_secs.p50,
            self.wait_secs.p95,
            self.wait_secs.max,
            self.wait_workload_secs.p50,
            self.wait_workload_secs.p95,
            self.wait_workload_secs.max
        );
        let _ = writeln!(
            s,
            "  runner time paid {:.0}s, busy {:.0}s ({:.0}% utilisation)",
            self.runner_seconds_paid,
            self.runner_seconds_busy,
            self.utilisation * 100.0
        );
        let by_pool: Vec<String> = self
            .launches_by_pool
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  launches    {} ({})",
            self.launches,
            by_pool.join(", ")
        );
        let _ = writeln!(
            s,
            "  left over   {} instances, {} registered runners, {} state files",
            self.remaining_instances, self.runners_left_registered, self.state_files_left
        );
        if self.jobs_not_run > 0 || self.jobs_unfinished > 0 {
            let _ = writeln!(
                s,
                "  jobs not run {} (never started), {} unfinished",
                self.jobs_not_run, self.jobs_unfinished
            );
        }
        let _ = writeln!(s, "  violations  {}", self.violations);
        let _ = writeln!(s, "  wall time   {:.1}s", self.wall_secs);
        s
    }
}

/// The probabilities of the injected faults.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FaultRates {
    /// API requests answered with a 5xx.
    pub api_error_rate: f64,
    /// Webhook deliveries dropped.
    pub webhook_drop_rate: f64,
    /// Webhook deliveries sent twice.
    pub webhook_duplicate_rate: f64,
}

/// One pool as the demo left it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PoolEnd {
    /// Its configured `min_idle`.
    pub min_idle: u32,
    /// Idle runners in its last observation.
    pub idle: u32,
    /// Its live instances (backend), before the demo stopped them.
    pub instances: u32,
}

/// One pool of the demo.
struct DemoPool {
    name: &'static str,
    labels: &'static [&'static str],
    min_idle: u32,
    max: u32,
}

const POOLS: [DemoPool; 2] = [
    DemoPool {
        name: "linux",
        labels: &["linux", "x64"],
        min_idle: 1,
        max: 10,
    },
    DemoPool {
        name: "gpu",
        labels: &["gpu"],
        min_idle: 0,
        max: 4,
    },
];

/// The synthetic workload: half the jobs in a first burst (spread over a minute), a five
/// minute lull, the rest in a second burst; 3 in 4 jobs for `linux`, 1 in 4 for `gpu`; jobs
/// run 30 s to 2 min (workload time). Returns it and its span in workload time.
pub fn workload(jobs: u32, seed: u64) -> (Workload, Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let repo = format!("{ORG}/{REPO}");
    let first = jobs.div_ceil(2);
    let mut w = Workload::new();
    let mut span = Duration::ZERO;
    for i in 0..jobs {
        let base = if i < first { 0 } else { 60 + 300 };
        let at = Duration::from_millis(base * 1000 + rng.random_range(0..60_000));
        let duration = Duration::from_secs(rng.random_range(30..=120));
        let labels: &[&str] = if i % 4 == 3 {
            &["self-hosted", "gpu"]
        } else {
            &["self-hosted", "linux", "x64"]
        };
        span = span.max(at + duration);
        w = w.job(
            at,
            JobSpec::new(repo.clone(), labels, duration).named(format!("job-{i}")),
        );
    }
    (w, span)
}

/// The runscale configuration of the demo, as YAML text.
fn config_text(
    listen: SocketAddr,
    api_url: &str,
    token_file: &Path,
    secret_file: &Path,
    state_dir: &Path,
    exe: &Path,
) -> String {
    let q = yaml_path;
    let mut text = format!(
        "listen: \"{listen}\"\ninterval: 5s\nshutdown_timeout: 15s\n{provider}\
         backends:\n  - name: local\n    type: local-process\n    state_dir: {state}\n    \
         stop_grace: {grace}s\n\
         pools:\n",
        provider = github_provider_yaml(api_url, ORG, REPO, token_file, secret_file),
        state = q(state_dir),
        grace = STOP_GRACE.as_secs(),
    );
    for p in &POOLS {
        let _ = write!(
            text,
            "  - name: {name}\n    provider: github\n    backend: local\n    \
             selector: {{labels: [{labels}]}}\n    \
             template: {{command: [{exe}, fake-runner], credentials: file}}\n    \
             min_idle: {min_idle}\n    max: {max}\n    boot_timeout: 1m\n    \
             idle_timeout: 15s\n    ephemeral: true\n",
            name = p.name,
            labels = p.labels.join(", "),
            exe = q(exe),
            min_idle = p.min_idle,
            max = p.max,
        );
    }
    text
}

/// A path as a YAML scalar: JSON strings are valid YAML double-quoted scalars, so paths with
/// any character survive.
pub(crate) fn yaml_path(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

/// The `providers:` section of a configuration naming one GitHub organisation (`org`, one
/// repository) served at `api_url`, with its token and webhook secret read from files.
pub(crate) fn github_provider_yaml(
    api_url: &str,
    org: &str,
    repo: &str,
    token_file: &Path,
    secret_file: &Path,
) -> String {
    format!(
        "providers:\n  - name: github\n    type: github\n    api_url: \"{api_url}\"\n    \
         org: {org}\n    repositories: [{repo}]\n    auth: {{token: {{file: {token}}}}}\n    \
         webhook_secret: {{file: {secret}}}\n",
        token = yaml_path(token_file),
        secret = yaml_path(secret_file),
    )
}

pub(crate) fn random_secret(rng: &mut impl rand::Rng) -> String {
    let bytes: [u8; 32] = rng.random();
    hex::encode(bytes)
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Instance lifetimes as sampled from the backend.
#[derive(Default)]
struct Lifetimes {
    /// Instance id → (pool, launched at, end of life as far as known): the last sample that
    /// saw it alive, or, once gone, midway between that and the first sample without it.
    seen: BTreeMap<String, (String, DateTime<Utc>, DateTime<Utc>)>,
    /// Instances alive at the last sample (ids).
    live: std::collections::BTreeSet<String>,
    /// Instances alive at the last sample, per pool.
    alive: BTreeMap<String, u32>,
}

impl Lifetimes {
    async fn sample(&mut self, backend: &Arc<dyn Backend>, pools: &[PoolId]) -> bool {
        let Ok(by_pool) = backend.instances(pools).await else {
            return false;
        };
        let now = Utc::now();
        self.alive.clear();
        let mut live = std::collections::BTreeSet::new();
        for (pool, instances) in by_pool {
            *self.alive.entry(pool.to_string()).or_default() += instances.len() as u32;
            for i in instances {
                let e = self
                    .seen
                    .entry(i.id.to_string())
                    .or_insert_with(|| (pool.to_string(), i.launched_at, now));
                e.2 = now;
                live.insert(i.id.to_string());
            }
        }
        for gone in self.live.difference(&live) {
            if let Some(e) = self.seen.get_mut(gone) {
                e.2 = e.2 + (now - e.2) / 2;
            }
        }
        self.live = live;
        true
    }

    fn alive_total(&self) -> u32 {
        self.alive.values().sum()
    }

    fn paid_secs(&self) -> f64 {
        self.seen
            .values()
            .map(|(_, from, to)| (*to - *from).num_milliseconds().max(0) as f64 / 1000.0)
            .sum()
    }
}

/// Where progress goes.
pub(crate) struct Progress {
    out: Box<dyn Write + Send>,
    tty: bool,
    lines_drawn: usize,
    last: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(json: bool) -> Self {
        let (out, tty): (Box<dyn Write + Send>, bool) = if json {
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        } else {
            (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
        };
        Progress {
            out,
            tty,
            lines_drawn: 0,
            last: None,
        }
    }

    pub(crate) fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
        self.lines_drawn = 0;
    }

    pub(crate) fn frame(&mut self, text: &str, force: bool) {
        let every = if self.tty { DRAW_EVERY } else { PRINT_EVERY };
        if !force && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        if self.tty && self.lines_drawn > 0 {
            // Back to the top of the previous frame, then overwrite it.
            let _ = write!(self.out, "\x1b[{}A", self.lines_drawn);
        }
        for l in text.lines() {
            if self.tty {
                let _ = write!(self.out, "\x1b[2K");
            }
            let _ = writeln!(self.out, "{l}");
        }
        let _ = self.out.flush();
        self.lines_drawn = if self.tty { text.lines().count() } else { 0 };
    }
}

fn render_frame(status: &[PoolStatus], snap: &Snapshot, total: u32, started: Instant) -> String {
    let mut s = String::new();
    for p in status {
        let o = p.last_observation.clone().unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<6} waiting {:>3}  booting {:>2}  idle {:>2}  busy {:>2}  (min_idle {}, max {})",
            p.pool.to_string(),
            o.waiting,
            o.instances_booting,
            o.runners_idle,
            o.runners_busy,
            p.limits.min_idle,
            p.limits.max
        );
    }
    let done = snap.completed().count() as u32;
    let width = 40usize;
    let filled = if total == 0 {
        width
    } else {
        (done as usize * width) / total as usize
    };
    let _ = writeln!(
        s,
        "  [{}{}] {done}/{total} jobs  {:.0}s",
        "#".repeat(filled),
        ".".repeat(width - filled),
        started.elapsed().as_secs_f64()
    );
    s
}

/// Whether every pool is back to its `min_idle`, idle and with nothing waiting.
fn settled(status: &[PoolStatus], lifetimes: &Lifetimes) -> bool {
    status.iter().all(|p| {
        let min_idle = p.limits.min_idle;
        let alive = lifetimes
            .alive
            .get(&p.pool.to_string())
            .copied()
            .unwrap_or(0);
        p.last_observation.as_ref().is_some_and(|o| {
            o.waiting == 0
                && o.running == 0
                && o.runners_busy == 0
                && o.runners_offline == 0
                && o.runners_idle == min_idle
                && o.instances_booting == 0
                && o.instances_stopping == 0
                && o.instances_running == min_idle
        }) && alive == min_idle
    })
}

/// Runs the demo; writes progress (to stdout, or stderr with `--json`) and the summary (text, or
/// one JSON object on stdout). Fails unless every job completed and no violation was seen.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    if !(0.0..=1.0).contains(&args.fault_rate) {
        bail!("--fault-rate must be between 0 and 1");
    }
    let faults = args.faults();
    if faults.validate().is_err() {
        bail!(
            "--webhook-drop-rate, --webhook-duplicate-rate and --api-error-rate must be between 0 and 1"
        );
    }
    let started = Instant::now();
    let mut progress = Progress::new(args.json);
    let tmp = tempfile::Builder::new()
        .prefix("runscale-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let exe = std::env::current_exe().context("cannot find the runscale executable")?;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let token = random_secret(&mut rng);
    let secret = random_secret(&mut rng);
    let token_file = tmp.path().join("github-token");
    let secret_file = tmp.path().join("webhook-secret");
    write_private(&token_file, &token).context("cannot write the token file")?;
    write_private(&secret_file, &secret).context("cannot write the webhook secret file")?;
    let state_dir = tmp.path().join("state");

    // runscale's listener first: the emulator needs the webhook URL.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let listen = listener.local_addr()?;
    let emu_config = EmulatorOptions {
        org: ORG.to_owned(),
        repos: vec![REPO.to_owned()],
        token: SecretString::from(token),
        webhook_url: Some(format!("http://{listen}/webhooks/github")),
        webhook_secret: Some(SecretString::from(secret)),
        speed: args.speed,
        fault_rate: args.fault_rate,
        seed: args.seed,
        public_url: None,
    }
    .into_config()
    .context("invalid emulator options")?;
    let emu_config = EmulatorConfig {
        faults,
        ..emu_config
    };
    let emu = Emulator::start(emu_config, "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the GitHub emulator")?;

    let text = config_text(
        listen,
        emu.base_url(),
        &token_file,
        &secret_file,
        &state_dir,
        &exe,
    );
    let validated = config::load_str(&text, Path::new("demo.yaml"), |_| None)?;
    let result = drive(
        args,
        &mut progress,
        started,
        listener,
        &emu,
        &validated,
        &state_dir,
    )
    .await;
    emu.shutdown().await;
    drop(tmp);
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        progress.line(&summary.render());
    }
    if !summary.ok() {
        bail!(
            "demo failed: {}/{} jobs done ({} not run), {} violations, {} instances, {} registered runners and {} state files left",
            summary.jobs_done,
            summary.jobs_total,
            summary.jobs_not_run,
            summary.violations,
            summary.remaining_instances,
            summary.runners_left_registered,
            summary.state_files_left
        );
    }
    Ok(())
}

/// Runs runscale and the workload, then stops runscale and its runners; returns the summary.
async fn drive(
    args: &DemoArgs,
    progress: &mut Progress,
    started: Instant,
    listener: TcpListener,
    emu: &EmulatorHandle,
    validated: &config::Validated,
    state_dir: &Path,
) -> anyhow::Result<Summary> {
    let runtime = config::build(validated)?;
    let listen = listener.local_addr()?;
    let backends: Vec<(Arc<dyn Backend>, PoolId)> = runtime
        .pools
        .iter()
        .map(|b| (b.backend.clone(), b.spec.name.clone()))
        .collect();
    let pool_ids: Vec<PoolId> = backends.iter().map(|(_, p)| p.clone()).collect();
    let providers: Vec<(Arc<dyn Provider>, PoolId)> = runtime
        .pools
        .iter()
        .map(|b| (b.provider.clone(), b.spec.name.clone()))
        .collect();
    let Some(backend) = backends.first().map(|(b, _)| b.clone()) else {
        bail!("the demo configuration has no pool");
    };
    let (registry, metrics) = commands::metrics();
    let reconciler = Reconciler::new(
        runtime.pools,
        Arc::new(SystemClock),
        metrics,
        runtime.options,
    );
    let handle = reconciler.handle();
    let registry = Arc::new(registry);
    let state = AppState {
        handle: handle.clone(),
        registry: registry.clone(),
    };
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });
    let reconciling = tokio::spawn(reconciler.run(stop.clone()));

    progress.line(&format!(
        "runscale demo: {} jobs, speed {}x, fault rate {}\n  status page: http://{listen}/\n  GitHub emulator: {}",
        args.jobs,
        args.speed,
        args.fault_rate,
        emu.base_url()
    ));

    let (workload, span) = workload(args.jobs, args.seed);
    let total = workload.job_count() as u32;
    let playing = emu.run_workload(workload)?;
    // The workload's real span, plus room to drain, boot and scale back in; past it, the demo
    // goes on while jobs keep completing (a slow or loaded machine), and gives up once no job
    // has completed for STALL_AFTER.
    let mut deadline = Instant::now() + span.div_f64(args.speed) + STALL_AFTER;
    let mut lifetimes = Lifetimes::default();
    let mut converged = false;
    let mut settled_since: Option<Instant> = None;
    let mut completed_seen = 0;
    loop {
        lifetimes.sample(&backend, &pool_ids).await;
        let status = handle.status();
        let snap = emu.snapshot();
        progress.frame(&render_frame(&status, &snap, total, started), false);
        let completed = snap.completed().count();
        if completed > completed_seen {
            completed_seen = completed;
            deadline = deadline.max(Instant::now() + STALL_AFTER);
        }
        let all_done = playing.is_finished() && snap.jobs.len() as u32 == total && snap.all_done();
        if all_done && settled(&status, &lifetimes) {
            // Stable for a moment: not a gap between two launches.
            let since = *settled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                converged = true;
                progress.frame(&render_frame(&status, &snap, total, started), true);
                break;
            }
        } else {
            settled_since = None;
        }
        if Instant::now() >= deadline {
            progress.frame(&render_frame(&status, &snap, total, started), true);
            progress.line(&format!(
                "  no job completed for {}s and the pools have not settled; stopping",
                STALL_AFTER.as_secs()
            ));
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }

    let pools_at_end: BTreeMap<String, PoolEnd> = handle
        .status()
        .iter()
        .map(|p| {
            let name = p.pool.to_string();
            let end = PoolEnd {
                min_idle: p.limits.min_idle,
                idle: p.last_observation.as_ref().map_or(0, |o| o.runners_idle),
                instances: lifetimes.alive.get(&name).copied().unwrap_or(0),
            };
            (name, end)
        })
        .collect();
    let runners_registered_settled = emu.snapshot().runners.len() as u32;

    // Stop runscale: no new pass, in-flight passes finish.
    stop.cancel();
    let _ = reconciling.await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server failed"),
        Ok(_) => {}
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
    }
    playing.abort();

    // Deregister the runners left (the warm idle ones), then stop their processes: SIGTERM,
    // SIGKILL after the grace.
    deregister_runners(&providers).await;
    let remaining = stop_instances(&backends, &pool_ids, &mut lifetimes).await;

    emu.check_all_done();
    let snap = emu.snapshot();
    let mut summary = summarise(
        args, &snap, total, &lifetimes, remaining, converged, started,
    );
    summary.pools_at_end = pools_at_end;
    summary.runners_registered_settled = runners_registered_settled;
    summary.runners_left_registered = emu.snapshot().runners.len() as u32;
    summary.state_files_left = count_state_files(state_dir);
    let launched = launches_from_metrics(&registry);
    summary.launches = launched.values().flat_map(|r| r.values()).sum();
    summary.launches_by_pool = launched
        .iter()
        .map(|(pool, reasons)| (pool.clone(), reasons.values().sum()))
        .collect();
    summary.launches_by_reason = launched;
    Ok(summary)
}

/// Instances launched per pool and reason, read from runscale's own
/// `runscale_launches_total{pool, action, reason}` counters (exact, unlike sampling).
fn launches_from_metrics(
    registry: &prometheus_client::registry::Registry,
) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return BTreeMap::new();
    }
    let label = |labels: &str, name: &str| -> Option<String> {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        let len = labels[start..].find('"')?;
        Some(labels[start..start + len].to_owned())
    };
    let mut out: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("runscale_launches_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let (Some(pool), Some(reason), Ok(n)) = (
            label(labels, "pool"),
            label(labels, "reason"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        *out.entry(pool).or_default().entry(reason).or_default() += n as u32;
    }
    out
}

/// Removes every runner the provider still lists for the demo's pools (idle ones: the pools
/// have settled or runscale has stopped), retrying through injected API errors.
async fn deregister_runners(providers: &[(Arc<dyn Provider>, PoolId)]) {
    for (provider, pool) in providers {
        for _ in 0..5 {
            let mut views = provider.observe(std::slice::from_ref(pool)).await;
            let Some(Ok(view)) = views.remove(pool) else {
                continue;
            };
            let mut failed = false;
            for r in &view.runners {
                if let Err(e) = provider.remove(pool, &r.id).await {
                    tracing::warn!(pool = %pool, runner = %r.name, error = %e, "cannot deregister a runner");
                    failed = true;
                }
            }
            if !failed {
                break;
            }
        }
    }
}

/// State and credentials files under `dir`, recursively (0 when it does not exist). Runner
/// logs (`*.log`) are not counted: the backend keeps the newest ones of gone instances on
/// purpose, and the demo's temporary directory goes with them.
fn count_state_files(dir: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_state_files(&path)
            } else {
                u32::from(path.extension().is_none_or(|ext| ext != "log"))
            }
        })
        .sum()
}

/// Terminates every instance of the demo's pools and waits for them to be gone; returns how
/// many are still there.
async fn stop_instances(
    backends: &[(Arc<dyn Backend>, PoolId)],
    pool_ids: &[PoolId],
    lifetimes: &mut Lifetimes,
) -> u32 {
    for (backend, pool) in backends {
        if let Ok(by_pool) = backend.instances(std::slice::from_ref(pool)).await {
            for i in by_pool.get(pool).into_iter().flatten() {
                if let Err(e) = backend.terminate(pool, &i.id).await {
                    tracing::warn!(pool = %pool, instance = %i.id, error = %e, "cannot stop a runner");
                }
            }
        }
    }
    let Some((backend, _)) = backends.first() else {
        return 0;
    };
    let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(5);
    loop {
        let ok = lifetimes.sample(backend, pool_ids).await;
        if ok && lifetimes.alive_total() == 0 {
            return 0;
        }
        if Instant::now() >= deadline {
            return lifetimes.alive_total().max(u32::from(!ok));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn summarise(
    args: &DemoArgs,
    snap: &Snapshot,
    total: u32,
    lifetimes: &Lifetimes,
    remaining: u32,
    converged: bool,
    started: Instant,
) -> Summary {
    use runscale_emulator::github::Conclusion;
    let completed = snap
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Completed);
    let jobs_done = completed
        .clone()
        .filter(|j| j.conclusion == Some(Conclusion::Success))
        .count() as u32;
    let jobs_failed = completed.count() as u32 - jobs_done;
    let started_jobs: Vec<_> = snap
        .jobs
        .iter()
        .filter(|j| j.started_at.is_some())
        .collect();
    let busy: f64 = snap
        .jobs
        .iter()
        .filter_map(|j| {
            Some((*j.completed_at.as_ref()? - *j.started_at.as_ref()?).num_milliseconds())
        })
        .map(|ms| ms.max(0) as f64 / 1000.0)
        .sum();
    let paid = lifetimes.paid_secs();
    let mut jobs_by_pool: BTreeMap<String, u32> =
        POOLS.iter().map(|p| (p.name.to_owned(), 0)).collect();
    for j in &snap.jobs {
        let pool = j.runner_name.as_deref().and_then(|n| {
            POOLS
                .iter()
                .find(|p| n.starts_with(&format!("rs-{}-", p.name)))
        });
        if let Some(p) = pool {
            *jobs_by_pool.entry(p.name.to_owned()).or_default() += 1;
        }
    }
    use runscale_emulator::github::ViolationKind;
    let count = |f: fn(&ViolationKind) -> bool| {
        snap.violations.iter().filter(|v| f(&v.kind)).count() as u32
    };
    let jobs_not_run = count(|k| matches!(k, ViolationKind::JobNeverStarted { .. }));
    let jobs_unfinished = count(|k| matches!(k, ViolationKind::JobNotFinished { .. }));
    let safety = |k: &ViolationKind| {
        !matches!(
            k,
            ViolationKind::JobNeverStarted { .. } | ViolationKind::JobNotFinished { .. }
        )
    };
    let violations = count(safety);
    Summary {
        jobs_total: total,
        jobs_done,
        jobs_failed,
        wait_secs: WaitStats::of(started_jobs.iter().map(|j| j.wait.as_secs_f64()).collect()),
        wait_workload_secs: WaitStats::of(
            started_jobs
                .iter()
                .map(|j| j.wait_workload.as_secs_f64())
                .collect(),
        ),
        runner_seconds_paid: round(paid),
        runner_seconds_busy: round(busy),
        utilisation: if paid > 0.0 { round(busy / paid) } else { 0.0 },
        launches: 0,
        launches_by_pool: BTreeMap::new(),
        launches_by_reason: BTreeMap::new(),
        jobs_by_pool,
        remaining_instances: remaining,
        violations,
        jobs_not_run,
        jobs_unfinished,
        violation_details: snap
            .violations
            .iter()
            .filter(|v| safety(&v.kind))
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect(),
        webhooks: serde_json::to_value(&snap.webhooks).unwrap_or_default(),
        speed: args.speed,
        fault_rate: args.fault_rate,
        faults: {
            let f = args.faults();
            FaultRates {
                api_error_rate: f.error_rate_5xx,
                webhook_drop_rate: f.webhook_drop_rate,
                webhook_duplicate_rate: f.webhook_duplicate_rate,
            }
        },
        converged,
        pools_at_end: BTreeMap::new(),
        runners_registered_settled: 0,
        runners_left_registered: 0,
        state_files_left: 0,
        wall_secs: round(started.elapsed().as_secs_f64()),
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let w = WaitStats::of((1..=100).map(f64::from).collect());
        assert_eq!((w.p50, w.p95, w.max), (50.0, 95.0, 100.0));
        assert_eq!(WaitStats::of(Vec::new()), WaitStats::default());
        assert_eq!(WaitStats::of(vec![3.0]).p50, 3.0);
    }

    #[test]
    fn workload_has_two_bursts_and_a_quarter_gpu_jobs() {
        let (w, span) = workload(120, 7);
        assert_eq!(w.job_count(), 120);
        let gpu = w
            .arrivals
            .iter()
            .filter(|a| a.jobs[0].labels.iter().any(|l| l == "gpu"))
            .count();
        assert_eq!(gpu, 30);
        let early = w
            .arrivals
            .iter()
            .filter(|a| a.at < Duration::from_secs(60))
            .count();
        let late = w
            .arrivals
            .iter()
            .filter(|a| a.at >= Duration::from_secs(360))
            .count();
        assert_eq!((early, late), (60, 60));
        assert!(span <= Duration::from_secs(420 + 120));
    }

    #[test]
    fn demo_config_is_valid() {
        let dir = Path::new("/tmp/runscale demo \"quoted\"");
        let text = config_text(
            "127.0.0.1:1234".parse().expect("addr"),
            "http://127.0.0.1:5678",
            &dir.join("token"),
            &dir.join("secret"),
            &dir.join("state"),
            Path::new("/usr/bin/runscale"),
        );
        let v = config::load_str(&text, Path::new("demo.yaml"), |_| None);
        assert!(v.is_ok(), "{text}\n{v:?}");
    }
}
