//! `runscale chaos`: the chaos soak. runscale runs as real `runscale run` processes against
//! the GitHub emulator (in this process) while faults are injected, and the safety properties
//! are checked from the outside.
//!
//! The soak starts, in a temporary directory, the GitHub emulator with a fault mix (API 5xx,
//! 429 bursts with `Retry-After`, dropped and duplicated webhooks), then runscale itself as
//! child processes (`current_exe() run -c <generated file>`): one daemon on the
//! local-process backend, or two replicas electing a leader over a Lease against the fake
//! kube-apiserver (whose kubelet runs the pods as local processes). A seeded workload of N
//! jobs plays while the soak
//!
//! - `kill -9`s runscale at random points (on Kubernetes: whichever replica leads) and starts
//!   it again,
//! - `kill -9`s one runner process while it runs a job (that job is reported as lost by the
//!   injected kill, not counted against runscale),
//! - answers every API request with a 5xx (and delivers no webhook) for the outage window,
//! - samples the backend's instances continuously (booting + running per pool, against `max`).
//!
//! When every job has completed (or `--time-limit` is reached) it lets runscale run for two
//! `boot_timeout`s more, then counts orphans (instances older than `boot_timeout` whose
//! runners are not registered, registered runners with no instance), stops everything it
//! started (by PID) and reports. The exit status is non-zero when a safety number is not 0.
//!
//! Observation is read-only: instances are read from `/proc` (runner processes carry
//! `RUNSCALE_STATE_DIR`, `RUNSCALE_POOL`, `RUNSCALE_INSTANCE_ID` and `RUNSCALE_RUNNER_NAMES`)
//! and the state file's `stopping_since`, or from the fake API server's pods; jobs, runners
//! and lost jobs from the emulator's records. Nothing of runscale's own state is touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use rand::{Rng as _, SeedableRng as _};
use runscale_emulator::github::{
    Conclusion, Emulator, EmulatorHandle, EmulatorOptions, Faults, JobSpec, JobStatus, Snapshot,
    ViolationKind, WebhookConfig, Workload,
};
use secrecy::SecretString;
use serde::Serialize;

use crate::demo::{
    Progress, WaitStats, github_provider_yaml, random_secret, wait_for_signal, write_private,
    yaml_path,
};

/// The organisation the soak's emulator serves.
const ORG: &str = "chaos";
/// Its repository.
const REPO: &str = "app";
/// The namespace of the pods and of the Lease on Kubernetes.
#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
const NAMESPACE: &str = "ci";
/// The image the fake kubelet maps to `runscale fake-runner`.
#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
const IMAGE: &str = "ghcr.io/example/runscale-fake-runner:chaos";
/// How often instances are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often the emulator's records are read and progress is shown.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How long a 429 window lasts, and its `Retry-After` (GitHub asks for "a few minutes"; the
/// soak is compressed).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// What each ephemeral job costs on top of its run time (launch, registration, exit), used to
/// space arrivals; the real figure shows up in the waits.
const JOB_OVERHEAD: Duration = Duration::from_millis(1500);
/// How long a killed daemon stays down before it is started again.
const RESTART_AFTER: Duration = Duration::from_millis(500);
/// Lease timings of the Kubernetes replicas.
#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
const LEASE_DURATION: Duration = Duration::from_secs(4);
/// The pools: name, selector labels, share of the jobs (out of 4).
const POOLS: [(&str, &[&str]); 2] = [("linux", &["linux", "x64"]), ("gpu", &["gpu"])];

/// Which backend runscale drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChaosBackend {
    /// One daemon, runners as local processes.
    Local,
    /// Two replicas with leader election against the fake kube-apiserver, runners as pods.
    Kubernetes,
}

/// Arguments of `chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Number of jobs.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub jobs: u32,
    /// The backend.
    #[arg(long, value_enum, default_value_t = ChaosBackend::Local)]
    pub backend: ChaosBackend,
    /// Seed of the workload, of the fault draws and of the kill times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shortest job run time.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub job_min: Duration,
    /// Longest job run time.
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = humantime::parse_duration)]
    pub job_max: Duration,
    /// `max` of each pool (instances booting + running).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub max: u32,
    /// Share of the pools' capacity the arrivals ask for on average (spacing of arrivals).
    #[arg(long, default_value_t = 0.7)]
    pub load: f64,
    /// `boot_timeout` of each pool; orphans are counted two of them after the end.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub boot_timeout: Duration,
    /// runscale's pass interval.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Length of the API outage (every request 5xx, no webhook); 0s for none.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// How many times runscale (on Kubernetes: the leader) is killed with SIGKILL.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub daemon_kills: u32,
    /// How many busy runner processes are killed with SIGKILL mid-job.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub runner_kills: u32,
    /// Probability that an API request fails with a 502 or 503.
    #[arg(long, default_value_t = 0.10)]
    pub api_error_rate: f64,
    /// Share of the time the API answers every request 429 with `Retry-After` (windows of
    /// 2 s opening at random, like GitHub's secondary rate limit).
    #[arg(long, default_value_t = 0.05)]
    pub rate_limit_share: f64,
    /// Probability that a webhook delivery is dropped.
    #[arg(long, default_value_t = 0.20)]
    pub webhook_drop_rate: f64,
    /// Probability that a webhook delivery is sent twice.
    #[arg(long, default_value_t = 0.10)]
    pub webhook_duplicate_rate: f64,
    /// The emulator's primary rate limit, requests per hour (GitHub: 5,000 for a token,
    /// up to 15,000 for an App installation on Enterprise Cloud).
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit: u32,
    /// Stop and report after this long, whatever is left.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub time_limit: Duration,
    /// Keep the working directory (configurations, daemon logs, runner logs) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// Print the report as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl ChaosArgs {
    fn check(&self) -> anyhow::Result<()> {
        let probability = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{name} must be between 0 and 1"))
            }
        };
        probability("--api-error-rate", self.api_error_rate)?;
        probability("--webhook-drop-rate", self.webhook_drop_rate)?;
        probability("--webhook-duplicate-rate", self.webhook_duplicate_rate)?;
        if !(0.0..0.5).contains(&self.rate_limit_share) {
            bail!("--rate-limit-share must be at least 0 and below 0.5");
        }
        if !(self.load.is_finite() && self.load > 0.0 && self.load <= 2.0) {
            bail!("--load must be above 0 and at most 2");
        }
        if self.job_min.is_zero() || self.job_min > self.job_max {
            bail!("--job-min must be above 0 and at most --job-max");
        }
        if self.job_max > Duration::from_secs(3600) {
            bail!("--job-max must be at most 1h");
        }
        let bounded = |name: &str, d: Duration, lo: u64, hi: u64| {
            if (Duration::from_secs(lo)..=Duration::from_secs(hi)).contains(&d) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{name} must be between {lo}s and {hi}s"))
            }
        };
        bounded("--boot-timeout", self.boot_timeout, 5, 3600)?;
        bounded("--interval", self.interval, 1, 300)?;
        bounded("--outage", self.outage, 0, 3600)?;
        bounded("--time-limit", self.time_limit, 10, 48 * 3600)?;
        Ok(())
    }

    fn base_faults(&self) -> Faults {
        Faults {
            error_rate_5xx: self.api_error_rate,
            webhook_drop_rate: self.webhook_drop_rate,
            webhook_duplicate_rate: self.webhook_duplicate_rate,
            ..Faults::none()
        }
    }
}

// ---------------------------------------------------------------------------------------
// The report.

/// What the soak measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosReport {
    /// The backend.
    pub backend: String,
    /// Jobs in the workload.
    pub jobs_total: u32,
    /// Jobs queued by the emulator before the end.
    pub jobs_queued: u32,
    /// Jobs completed successfully.
    pub jobs_done: u32,
    /// Jobs lost because the soak killed their runner (failed; reported, not runscale's fault).
    pub jobs_lost_injected: u32,
    /// Jobs that failed otherwise (must be 0).
    pub jobs_failed: u32,
    /// Jobs still waiting for a runner at the end (must be 0).
    pub jobs_not_run: u32,
    /// Jobs still running at the end (must be 0).
    pub jobs_running_at_end: u32,
    /// Jobs of the workload never queued before the end (must be 0).
    pub jobs_never_queued: u32,
    /// `jobs_failed + jobs_not_run + jobs_running_at_end + jobs_never_queued`.
    pub jobs_lost: u32,
    /// Busy runners that lost their job other than by the injected kill (must be 0).
    pub busy_runners_killed: u32,
    /// What the emulator recorded about them.
    pub busy_killed_details: Vec<String>,
    /// Samples in which a pool's booting + running instances exceeded its `max` (must be 0).
    pub max_exceeded: u32,
    /// The configured `max` of each pool.
    pub max: u32,
    /// The most booting + running instances seen per pool.
    pub max_seen: BTreeMap<String, u32>,
    /// Instance samples taken.
    pub samples: u64,
    /// Instances older than `boot_timeout` with no registered runner, two `boot_timeout`s after
    /// the end (must be 0).
    pub orphan_instances: u32,
    /// Registered runners with no instance, two `boot_timeout`s after the end (must be 0).
    pub orphan_runners: u32,
    /// The orphans, named.
    pub orphan_details: Vec<String>,
    /// Queued → started, seconds, over the jobs that started.
    pub wait_secs: WaitStats,
    /// The outage.
    pub outage: OutageReport,
    /// The daemon kills.
    pub daemon_kills: Vec<KillReport>,
    /// The runner kills.
    pub runner_kills: Vec<RunnerKill>,
    /// On Kubernetes: seconds from each leader kill to the other replica holding the Lease.
    pub takeover_secs: Vec<f64>,
    /// Authenticated REST requests the emulator served (including injected failures).
    pub api_requests: u64,
    /// API requests per job queued.
    pub api_requests_per_job: f64,
    /// 429 windows opened (each `Retry-After` long).
    pub bursts_429: u32,
    /// API requests received during those windows (answered 429).
    pub requests_429: u64,
    /// Webhook deliveries: produced, dropped, duplicated, delivered, failed.
    pub webhooks: serde_json::Value,
    /// The fault mix.
    pub faults: FaultMix,
    /// Whether `--time-limit` stopped the soak before every job completed.
    pub timed_out: bool,
    /// Whether a signal stopped the soak.
    pub interrupted: bool,
    /// Wall-clock seconds of the whole soak.
    pub wall_secs: f64,
}

/// The injected fault probabilities.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultMix {
    /// API requests answered 502/503.
    pub api_error_rate: f64,
    /// Share of the time the API answers 429 with `Retry-After` (in windows).
    pub rate_limit_share: f64,
    /// Webhook deliveries dropped.
    pub webhook_drop_rate: f64,
    /// Webhook deliveries sent twice.
    pub webhook_duplicate_rate: f64,
}

/// The API outage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutageReport {
    /// Its length, seconds (0: none).
    pub secs: f64,
    /// When it started, seconds after the workload started.
    pub started_at_secs: Option<f64>,
    /// Seconds from its end to the first job started after it.
    pub recovery_secs: Option<f64>,
    /// Jobs waiting when it ended.
    pub waiting_at_end: u32,
}

/// One `kill -9` of runscale.
#[derive(Clone, Debug, Serialize)]
pub struct KillReport {
    /// Seconds after the workload started.
    pub at_secs: f64,
    /// Which process (`runscale`, or the replica's identity).
    pub daemon: String,
    /// Its PID.
    pub pid: u32,
}

/// One `kill -9` of a busy runner.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerKill {
    /// Seconds after the workload started.
    pub at_secs: f64,
    /// The runner.
    pub runner: String,
    /// The job it was running.
    pub job_id: u64,
    /// Its PID.
    pub pid: u32,
}

impl ChaosReport {
    /// The safety numbers that are not 0, named.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, n: u64| {
            if n > 0 {
                out.push(format!("{name}: {n}"));
            }
        };
        check("jobs lost", u64::from(self.jobs_lost));
        check("busy runners killed", u64::from(self.busy_runners_killed));
        check("max exceeded", u64::from(self.max_exceeded));
        check("orphan instances", u64::from(self.orphan_instances));
        check("orphan runners", u64::from(self.orphan_runners));
        if self.timed_out {
            out.push("time limit reached".to_owned());
        }
        if self.interrupted {
            out.push("interrupted".to_owned());
        }
        out
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "chaos soak ({})", self.backend);
        let _ = writeln!(
            s,
            "  jobs          {}/{} done, {} lost by the injected runner kill, {} lost (failed {}, not run {}, running {}, never queued {})",
            self.jobs_done,
            self.jobs_total,
            self.jobs_lost_injected,
            self.jobs_lost,
            self.jobs_failed,
            self.jobs_not_run,
            self.jobs_running_at_end,
            self.jobs_never_queued
        );
        let _ = writeln!(s, "  busy killed   {}", self.busy_runners_killed);
        let seen: Vec<String> = self
            .max_seen
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  max exceeded  {} of {} samples (max {}, most seen: {})",
            self.max_exceeded,
            self.samples,
            self.max,
            seen.join(", ")
        );
        let _ = writeln!(
            s,
            "  orphans       {} instances, {} runners (2 x boot_timeout after the end)",
            self.orphan_instances, self.orphan_runners
        );
        let _ = writeln!(
            s,
            "  wait          p50 {:.1}s  p95 {:.1}s  max {:.1}s",
            self.wait_secs.p50, self.wait_secs.p95, self.wait_secs.max
        );
        let recovery = self
            .outage
            .recovery_secs
            .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}s"));
        let _ = writeln!(
            s,
            "  outage        {:.0}s, recovery {recovery} ({} jobs waiting at its end)",
            self.outage.secs, self.outage.waiting_at_end
        );
        let _ = writeln!(
            s,
            "  kills         {} of runscale, {} of busy runners{}",
            self.daemon_kills.len(),
            self.runner_kills.len(),
            if self.takeover_secs.is_empty() {
                String::new()
            } else {
                let t: Vec<String> = self
                    .takeover_secs
                    .iter()
                    .map(|t| format!("{t:.1}s"))
                    .collect();
                format!("; lease taken over after {}", t.join(", "))
            }
        );
        let _ = writeln!(
            s,
            "  API           {} requests ({:.1} per job), {} 429 windows ({} requests answered 429)",
            self.api_requests, self.api_requests_per_job, self.bursts_429, self.requests_429
        );
        let _ = writeln!(s, "  wall time     {:.0}s", self.wall_secs);
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(s, "  result        ok");
        } else {
            let _ = writeln!(s, "  result        FAILED: {}", failures.join(", "));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// The workload.

/// `jobs` jobs with exponential inter-arrival times sized so that, on average, the arrivals
/// ask for `load` of the pools' capacity (3 in 4 jobs for `linux`, 1 in 4 for `gpu`); run
/// times uniform in `[job_min, job_max]`. Returns it and the last arrival's offset.
pub fn workload(args: &ChaosArgs) -> (Workload, Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mean = (args.job_min + args.job_max).as_secs_f64() / 2.0 + JOB_OVERHEAD.as_secs_f64();
    // The busier pool gets 3/4 of the jobs: it sets the pace.
    let rate = args.load * f64::from(args.max) / (0.75 * mean);
    let repo = format!("{ORG}/{REPO}");
    let mut w = Workload::new();
    let mut at = 0.0_f64;
    for i in 0..args.jobs {
        let u: f64 = rng.random();
        at += -(1.0 - u).ln() / rate;
        let run = rng.random_range(args.job_min.as_millis()..=args.job_max.as_millis());
        let labels: Vec<&str> = std::iter::once("self-hosted")
            .chain(POOLS[usize::from(i % 4 == 3)].1.iter().copied())
            .collect();
        w = w.job(
            Duration::from_secs_f64(at),
            JobSpec::new(repo.clone(), &labels, Duration::from_millis(run as u64))
                .named(format!("job-{i}")),
        );
    }
    (w, Duration::from_secs_f64(at))
}

// ---------------------------------------------------------------------------------------
// Processes.

/// One `runscale run` process the soak starts, kills and starts again; killed when dropped.
struct Daemon {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(&mut self, exe: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .env_remove("RUNSCALE_LOG_FORMAT")
            .env("RUNSCALE_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap. Returns the PID killed.
    fn kill(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// Whether it exited on its own (then it is reaped and forgotten).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills, when dropped, every process whose environment has `var` set to a value under
/// `prefix`: the runner processes runscale started (they outlive it by design). Held after
/// the daemons in [`Rig`], so it runs once they are gone, on every exit path (panics too).
struct RunnerSweep {
    var: &'static str,
    prefix: PathBuf,
}

impl RunnerSweep {
    fn sweep(&self) {
        for (pid, env) in processes_with(self.var) {
            if env
                .get(self.var)
                .is_some_and(|v| Path::new(v).starts_with(&self.prefix))
            {
                kill_group(pid);
            }
        }
    }
}

impl Drop for RunnerSweep {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// SIGKILL to `pid`'s process group if it leads one, else to `pid`.
fn kill_group(pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpgid};
    let p = Pid::from_raw(pid);
    if getpgid(Some(p)).is_ok_and(|g| g == p) {
        let _ = killpg(p, Signal::SIGKILL);
    } else {
        let _ = kill(p, Signal::SIGKILL);
    }
}

/// The processes of this user whose environment sets `var`, with their environments. Zombies
/// (empty environment) and processes that vanish while read are left out.
fn processes_with(var: &str) -> Vec<(i32, HashMap<String, String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = format!("{var}=");
    let mut out = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !raw
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(needle.as_bytes()))
        {
            continue;
        }
        let env: HashMap<String, String> = raw
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect();
        out.push((pid, env));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Observing instances.

/// One instance as the soak sees it.
#[derive(Clone, Debug)]
struct Seen {
    pool: String,
    /// Counts against `max` (booting or running, not stopping).
    active: bool,
    runner_names: Vec<String>,
    /// A process to kill for the injected runner kill.
    pid: Option<i32>,
}

/// Where instances are read from.
enum World {
    Local {
        state_dir: PathBuf,
    },
    #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
    Kubernetes {
        kube: runscale_emulator::kube::KubeHandle,
    },
}

impl World {
    /// Instances by id.
    fn instances(&self) -> BTreeMap<String, Seen> {
        match self {
            World::Local { state_dir } => local_instances(state_dir),
            #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
            World::Kubernetes { kube } => kube_instances(kube),
        }
    }
}

/// The local-process backend's instances: live processes started for `state_dir`, stopping
/// once their state file records `stopping_since`.
fn local_instances(state_dir: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    for (pid, env) in processes_with("RUNSCALE_STATE_DIR") {
        if env.get("RUNSCALE_STATE_DIR").map(Path::new) != Some(state_dir) {
            continue;
        }
        let (Some(pool), Some(id)) = (env.get("RUNSCALE_POOL"), env.get("RUNSCALE_INSTANCE_ID"))
        else {
            continue;
        };
        let leader = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .is_ok_and(|g| g.as_raw() == pid);
        let names = env
            .get("RUNSCALE_RUNNER_NAMES")
            .map(|n| n.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let stopping = std::fs::read(state_dir.join(pool).join(format!("{id}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v.get("stopping_since").is_some_and(|s| !s.is_null()));
        let e = out.entry(id.clone()).or_insert_with(|| Seen {
            pool: pool.clone(),
            active: !stopping,
            runner_names: names,
            pid: None,
        });
        if leader {
            e.pid = Some(pid);
        }
    }
    out
}

#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
fn kube_instances(kube: &runscale_emulator::kube::KubeHandle) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    for pod in kube.pods(NAMESPACE) {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let (Some(name), Some(pool)) = (pod.metadata.name.clone(), labels.get("runscale/pool"))
        else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let terminal = matches!(phase.as_deref(), Some("Succeeded" | "Failed"));
        let active = pod.metadata.deletion_timestamp.is_none() && !terminal;
        let runner_names = labels
            .get("runscale/runner-name")
            .map(|n| vec![n.clone()])
            .unwrap_or_default();
        out.insert(
            name,
            Seen {
                pool: pool.clone(),
                active,
                runner_names,
                pid: None,
            },
        );
    }
    out
}

/// The PID of a pod's container process, found through the kubelet's `RUNSCALE_POD_ROOT`.
#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
fn pod_pid(kube: &runscale_emulator::kube::KubeHandle, pod: &str) -> Option<i32> {
    use runscale_emulator::kube::POD_ROOT_VAR;
    let root = kube.pod_root(NAMESPACE, pod)?;
    let pids: BTreeSet<i32> = kube
        .process_ids()
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok())
        .collect();
    processes_with(POD_ROOT_VAR)
        .into_iter()
        .find(|(pid, env)| {
            pids.contains(pid) && env.get(POD_ROOT_VAR).map(Path::new) == Some(root.as_path())
        })
        .map(|(pid, _)| pid)
}

/// Instance samples: the most seen per pool, the samples over `max`, first-seen times.
#[derive(Default)]
struct Sampler {
    max: u32,
    samples: u64,
    exceeded: u32,
    max_seen: BTreeMap<String, u32>,
    first_seen: HashMap<String, Instant>,
    last: BTreeMap<String, Seen>,
}

impl Sampler {
    fn sample(&mut self, world: &World) {
        let now = Instant::now();
        let seen = world.instances();
        let mut active: BTreeMap<String, u32> =
            POOLS.iter().map(|(p, _)| ((*p).to_owned(), 0)).collect();
        for (id, s) in &seen {
            self.first_seen.entry(id.clone()).or_insert(now);
            if s.active {
                *active.entry(s.pool.clone()).or_default() += 1;
            }
        }
        self.first_seen.retain(|id, _| seen.contains_key(id));
        self.samples += 1;
        for (pool, n) in active {
            let m = self.max_seen.entry(pool.clone()).or_default();
            *m = (*m).max(n);
            if n > self.max {
                self.exceeded += 1;
                tracing::error!(pool, instances = n, max = self.max, "max exceeded");
            }
        }
        self.last = seen;
    }
}

// ---------------------------------------------------------------------------------------
// The run.

/// Everything the soak started, for the run and the clean-up.
struct Rig {
    exe: PathBuf,
    emu: EmulatorHandle,
    world: World,
    /// Killed first when dropped (fields drop in declaration order)...
    daemons: Vec<Daemon>,
    /// ...then what they left behind.
    _sweep: RunnerSweep,
}

impl Rig {
    /// The daemon to kill: the only one, or the replica holding the Lease.
    fn victim(&self) -> Option<usize> {
        match &self.world {
            World::Local { .. } => Some(0),
            #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
            World::Kubernetes { kube } => {
                let holder = lease_holder(kube)?;
                self.daemons.iter().position(|d| d.name == holder)
            }
        }
    }

    /// The PID of the process hosting `runner`, from the last sample of instances.
    fn runner_pid(&self, runner: &str, last: &BTreeMap<String, Seen>) -> Option<i32> {
        let (id, seen) = last
            .iter()
            .find(|(_, s)| s.runner_names.iter().any(|n| n == runner))?;
        match &self.world {
            World::Local { .. } => {
                let _ = id;
                seen.pid
            }
            #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
            World::Kubernetes { kube } => pod_pid(kube, id),
        }
    }
}

#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
fn lease_holder(kube: &runscale_emulator::kube::KubeHandle) -> Option<String> {
    kube.leases(NAMESPACE)
        .into_iter()
        .find(|l| l.metadata.name.as_deref() == Some("runscale"))
        .and_then(|l| l.spec?.holder_identity)
}

/// A free port on 127.0.0.1 (bound, read, released: the daemon binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port on 127.0.0.1")?
        .port())
}

/// The pools' section.
fn pools_yaml(args: &ChaosArgs, backend: &str, template: &str) -> String {
    let mut text = String::from("pools:\n");
    for (name, labels) in POOLS {
        let _ = write!(
            text,
            "  - name: {name}\n    provider: github\n    backend: {backend}\n    \
             selector: {{labels: [{labels}]}}\n{template}    \
             min_idle: 0\n    max: {max}\n    boot_timeout: {boot}\n    \
             idle_timeout: 10s\n    ephemeral: true\n",
            labels = labels.join(", "),
            max = args.max,
            boot = humantime::format_duration(args.boot_timeout),
        );
    }
    text
}

fn header_yaml(args: &ChaosArgs, listen: SocketAddr, provider: &str) -> String {
    format!(
        "listen: \"{listen}\"\ninterval: {interval}\nshutdown_timeout: 10s\n{provider}",
        interval = humantime::format_duration(args.interval),
    )
}

/// Runs the soak; writes progress (stdout, or stderr with `--json`) and the report (text, or
/// one JSON object on stdout). Fails when a safety number is not 0.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<()> {
    args.check()?;
    let mut progress = Progress::new(args.json);
    let tmp = tempfile::Builder::new()
        .prefix("runscale-chaos-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir = tmp.path().canonicalize().context("temporary directory")?;
    let report = soak(args, &dir, &mut progress).await;
    if args.keep_dir {
        let kept = tmp.keep();
        progress.line(&format!("  working directory kept: {}", kept.display()));
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        progress.line(&report.render());
    }
    let failures = report.failures();
    if !failures.is_empty() {
        bail!("chaos soak failed: {}", failures.join(", "));
    }
    Ok(())
}

async fn soak(
    args: &ChaosArgs,
    dir: &Path,
    progress: &mut Progress,
) -> anyhow::Result<ChaosReport> {
    let exe = std::env::current_exe().context("cannot find the runscale executable")?;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let token = random_secret(&mut rng);
    let secret = random_secret(&mut rng);
    let token_file = dir.join("github-token");
    let secret_file = dir.join("webhook-secret");
    write_private(&token_file, &token).context("cannot write the token file")?;
    write_private(&secret_file, &secret).context("cannot write the webhook secret file")?;

    let replicas: &[&str] = match args.backend {
        ChaosBackend::Local => &["runscale"],
        ChaosBackend::Kubernetes => &["replica-a", "replica-b"],
    };
    let mut listens = Vec::new();
    for _ in replicas {
        listens.push(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
    }
    let mut emu_config = EmulatorOptions {
        org: ORG.to_owned(),
        repos: vec![REPO.to_owned()],
        token: SecretString::from(token),
        webhook_url: Some(format!("http://{}/webhooks/github", listens[0])),
        webhook_secret: Some(SecretString::from(secret.clone())),
        speed: 1.0,
        fault_rate: 0.0,
        seed: args.seed,
        public_url: None,
    }
    .into_config()
    .context("invalid emulator options")?;
    // Every replica gets the webhooks (a second organisation hook).
    for (i, listen) in listens.iter().enumerate().skip(1) {
        emu_config.webhooks.push(WebhookConfig {
            url: format!("http://{listen}/webhooks/github"),
            secret: Some(SecretString::from(secret.clone())),
            id: i as u64 + 1,
            repo: None,
            owner: Some(ORG.to_owned()),
        });
    }
    emu_config.faults = args.base_faults();
    emu_config.rate_limit.limit = args.rate_limit;
    let emu = Emulator::start(emu_config, "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the GitHub emulator")?;
    let provider = github_provider_yaml(emu.base_url(), ORG, REPO, &token_file, &secret_file);

    let (world, sweep, configs) = match args.backend {
        ChaosBackend::Local => {
            let state_dir = dir.join("state");
            {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&state_dir)
                    .context("cannot create the state directory")?;
            }
            let template = format!(
                "    template: {{command: [{exe}, fake-runner], credentials: file}}\n",
                exe = yaml_path(&exe)
            );
            let text = format!(
                "{}backends:\n  - name: local\n    type: local-process\n    state_dir: {}\n    \
                 stop_grace: 5s\n{}",
                header_yaml(args, listens[0], &provider),
                yaml_path(&state_dir),
                pools_yaml(args, "local", &template),
            );
            let sweep = RunnerSweep {
                var: "RUNSCALE_STATE_DIR",
                prefix: state_dir.clone(),
            };
            (World::Local { state_dir }, sweep, vec![text])
        }
        ChaosBackend::Kubernetes => kubernetes_rig(args, dir, &exe, &listens, &provider).await?,
    };

    let mut daemons = Vec::new();
    for ((name, text), _) in replicas.iter().zip(&configs).zip(&listens) {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).context("cannot write a configuration")?;
        crate::config::load_str(text, &path, |_| None)
            .with_context(|| format!("the generated configuration {}", path.display()))?;
        let mut args = vec![
            "run".to_owned(),
            "-c".to_owned(),
            path.display().to_string(),
        ];
        if replicas.len() > 1 {
            args.extend(["--leader-elect-identity".to_owned(), (*name).to_owned()]);
        }
        daemons.push(Daemon {
            name: (*name).to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        });
    }
    let mut rig = Rig {
        exe,
        emu,
        world,
        daemons,
        _sweep: sweep,
    };
    let result = drive(args, &mut rig, progress).await;
    // Stop everything: the daemons (SIGKILL: nothing of theirs is needed any more), then the
    // runner processes they left (the sweep), then the emulators.
    let Rig {
        emu,
        world,
        _sweep,
        daemons,
        ..
    } = rig;
    drop(daemons);
    drop(_sweep);
    match world {
        World::Local { .. } => {}
        #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
        World::Kubernetes { kube } => kube.shutdown().await,
    }
    emu.shutdown().await;
    result
}

/// The fake kube-apiserver, its kubeconfig and the replicas' configurations.
#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
async fn kubernetes_rig(
    args: &ChaosArgs,
    dir: &Path,
    exe: &Path,
    listens: &[SocketAddr],
    provider: &str,
) -> anyhow::Result<(World, RunnerSweep, Vec<String>)> {
    use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator};
    let kube = KubeEmulator::start(
        KubeConfig {
            namespaces: vec!["default".to_owned(), NAMESPACE.to_owned()],
            ..KubeConfig::default()
        }
        .image(IMAGE, ImageConfig::program(exe.display().to_string())),
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("cannot start the fake kube-apiserver")?;
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig)
        .context("cannot write the kubeconfig")?;
    let template = format!(
        "    template:\n      credentials: env\n      pod:\n        spec:\n          \
         containers: [{{name: runner, image: \"{IMAGE}\", args: [fake-runner]}}]\n"
    );
    let election = format!(
        "leader_election:\n  enabled: true\n  namespace: {NAMESPACE}\n  \
         lease_duration: {}s\n  renew_deadline: 3s\n  retry_period: 1s\n  \
         kubeconfig: {}\n  context: runscale-fake\n",
        LEASE_DURATION.as_secs(),
        yaml_path(&kubeconfig),
    );
    let configs = listens
        .iter()
        .map(|listen| {
            format!(
                "{}backends:\n  - name: k8s\n    type: kubernetes\n    kubeconfig: {}\n    \
                 context: runscale-fake\n    namespace: {NAMESPACE}\n    grace_period: 5s\n    \
                 resync_period: 30s\n{}{election}",
                header_yaml(args, *listen, provider),
                yaml_path(&kubeconfig),
                pools_yaml(args, "k8s", &template),
            )
        })
        .collect();
    let sweep = RunnerSweep {
        var: runscale_emulator::kube::POD_ROOT_VAR,
        prefix: kube.work_dir().to_path_buf(),
    };
    Ok((World::Kubernetes { kube }, sweep, configs))
}

#[cfg(not(all(feature = "backend-kubernetes", feature = "leader-election")))]
async fn kubernetes_rig(
    _: &ChaosArgs,
    _: &Path,
    _: &Path,
    _: &[SocketAddr],
    _: &str,
) -> anyhow::Result<(World, RunnerSweep, Vec<String>)> {
    bail!("this runscale was built without the kubernetes backend or leader election")
}

/// The time from the end of one 429 window to the start of the next: exponential, with the
/// mean that makes windows of [`RETRY_AFTER`] cover `share` of the time (a day when 0).
fn burst_gap(rng: &mut impl rand::Rng, share: f64) -> Duration {
    if share <= 0.0 {
        return Duration::from_secs(86_400);
    }
    let mean = mean_burst_gap(share).as_secs_f64();
    let u: f64 = rng.random();
    Duration::from_secs_f64((-(1.0 - u).ln() * mean).min(86_400.0))
}

/// The mean time between two 429 windows for `share` (a day when 0).
fn mean_burst_gap(share: f64) -> Duration {
    if share <= 0.0 {
        return Duration::from_secs(86_400);
    }
    Duration::from_secs_f64((RETRY_AFTER.as_secs_f64() * (1.0 - share) / share).min(86_400.0))
}

/// What happened during the run, for the report.
#[derive(Default)]
struct Events {
    daemon_kills: Vec<KillReport>,
    runner_kills: Vec<RunnerKill>,
    takeover_secs: Vec<f64>,
    outage_started: Option<Duration>,
    outage_ended: Option<DateTime<Utc>>,
    waiting_at_outage_end: u32,
    bursts_429: u32,
    requests_429: u64,
    timed_out: bool,
    interrupted: bool,
}

/// The name of the replica that is not `name`.
fn other(daemons: &[Daemon], name: &str) -> Option<String> {
    daemons
        .iter()
        .find(|d| d.name != name)
        .map(|d| d.name.clone())
}

/// Starts the daemons (on Kubernetes the first leads before the second starts), plays the
/// workload with the faults and kills, waits for the end and two `boot_timeout`s more, and
/// reports.
async fn drive(
    args: &ChaosArgs,
    rig: &mut Rig,
    progress: &mut Progress,
) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let hard_deadline = started + args.time_limit;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let exe = rig.exe.clone();
    let Some(first) = rig.daemons.first_mut() else {
        bail!("no daemon to run");
    };
    first.start(&exe)?;
    #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
    if let World::Kubernetes { kube } = &rig.world {
        let first = rig.daemons[0].name.clone();
        let until = Instant::now() + Duration::from_secs(60);
        while lease_holder(kube).as_deref() != Some(first.as_str()) {
            if Instant::now() >= until {
                bail!("{first} did not take the Lease within 60s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for d in rig.daemons.iter_mut().skip(1) {
            d.start(&exe)?;
        }
    }

    let (workload, span) = workload(args);
    let total = workload.job_count() as u32;
    progress.line(&format!(
        "runscale chaos: {total} jobs on {:?} over about {:.0}s of arrivals; max {} per pool; \
         faults: 5xx {}, 429 share {}, webhooks dropped {} / duplicated {}; {} kill -9 of \
         runscale, {} of a busy runner, {}s API outage",
        args.backend,
        span.as_secs_f64(),
        args.max,
        args.api_error_rate,
        args.rate_limit_share,
        args.webhook_drop_rate,
        args.webhook_duplicate_rate,
        args.daemon_kills,
        args.runner_kills,
        args.outage.as_secs(),
    ));
    let playing = rig.emu.run_workload(workload)?;
    let t0 = Instant::now();
    let mut at = |lo: f64, hi: f64| span.mul_f64(rng.random_range(lo..hi));
    let mut daemon_kills: Vec<Duration> = (0..args.daemon_kills).map(|_| at(0.1, 0.9)).collect();
    let mut runner_kills: Vec<Duration> = (0..args.runner_kills).map(|_| at(0.1, 0.8)).collect();
    let outage_at = (!args.outage.is_zero()).then(|| at(0.2, 0.6));
    daemon_kills.sort();
    runner_kills.sort();
    let mut pick = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(7));

    let mut ev = Events::default();
    let mut sampler = Sampler {
        max: args.max,
        ..Sampler::default()
    };
    // (daemon index, not before, after the other replica leads).
    let mut restarts: Vec<(usize, Instant)> = Vec::new();
    let mut takeover: Option<(Instant, String)> = None;
    let mut outage_until: Option<Instant> = None;
    let mut burst_until: Option<Instant> = None;
    let mut burst_from = 0;
    // The first window opens within one mean gap, so even a short soak sees one.
    let first_gap = burst_gap(&mut pick, args.rate_limit_share);
    let mut next_burst = Instant::now() + first_gap.min(mean_burst_gap(args.rate_limit_share));
    let mut last_snapshot: Option<Instant> = None;
    let mut settle_until: Option<Instant> = None;
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => {
                ev.interrupted = true;
                break;
            }
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        let now = Instant::now();
        let off = now - t0;
        sampler.sample(&rig.world);

        // A daemon that exits on its own is reported and started again.
        for (i, d) in rig.daemons.iter_mut().enumerate() {
            if let Some(status) = d.exited() {
                progress.line(&format!(
                    "  {} exited on its own ({status}); starting it again",
                    d.name
                ));
                restarts.push((i, now + RESTART_AFTER));
            }
        }
        // kill -9 of runscale (on Kubernetes: of the leader; none while a hand-over is on).
        if daemon_kills.first().is_some_and(|t| *t <= off) && takeover.is_none() {
            match rig.victim() {
                Some(i) if rig.daemons[i].pid().is_some() => {
                    daemon_kills.remove(0);
                    let name = rig.daemons[i].name.clone();
                    if let Some(pid) = rig.daemons[i].kill() {
                        ev.daemon_kills.push(KillReport {
                            at_secs: round(off.as_secs_f64()),
                            daemon: name.clone(),
                            pid,
                        });
                        match other(&rig.daemons, &name) {
                            // Started again once the other replica leads.
                            Some(o) => takeover = Some((now, o)),
                            None => restarts.push((i, now + RESTART_AFTER)),
                        }
                        progress.line(&format!(
                            "  {:.0}s: kill -9 {name} (pid {pid})",
                            off.as_secs_f64()
                        ));
                    }
                }
                // No leader right now: try again at the next sample.
                _ => {}
            }
        }
        #[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
        if let (Some((killed, o)), World::Kubernetes { kube }) = (&takeover, &rig.world) {
            let led = lease_holder(kube).as_deref() == Some(o.as_str());
            if led || killed.elapsed() > Duration::from_secs(60) {
                if led {
                    ev.takeover_secs.push(round(killed.elapsed().as_secs_f64()));
                } else {
                    progress.line(&format!("  {o} did not take the Lease within 60s"));
                }
                if let Some(i) = rig.daemons.iter().position(|d| d.child.is_none()) {
                    restarts.push((i, now));
                }
                takeover = None;
            }
        }
        if takeover.is_some() && matches!(rig.world, World::Local { .. }) {
            takeover = None;
        }
        let due: Vec<usize> = restarts
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(i, _)| *i)
            .collect();
        restarts.retain(|(_, t)| *t > now);
        for i in due {
            rig.daemons[i].start(&exe)?;
        }

        // The API outage: every request 5xx, no webhook delivered.
        if let Some(start) = outage_at
            && ev.outage_started.is_none()
            && off >= start
        {
            rig.emu.set_faults(Faults {
                error_rate_5xx: 1.0,
                webhook_drop_rate: 1.0,
                ..Faults::none()
            })?;
            ev.outage_started = Some(off);
            outage_until = Some(now + args.outage);
            progress.line(&format!(
                "  {:.0}s: API outage for {}s",
                off.as_secs_f64(),
                args.outage.as_secs()
            ));
        }
        if outage_until.is_some_and(|t| now >= t) {
            outage_until = None;
            rig.emu.set_faults(args.base_faults())?;
            ev.outage_ended = Some(Utc::now());
            ev.waiting_at_outage_end = rig.emu.snapshot().queued().count() as u32;
            progress.line(&format!("  {:.0}s: API outage over", off.as_secs_f64()));
        }
        // 429 windows: like GitHub's secondary rate limit, every request is answered 429 with
        // `Retry-After` for that long, then served again; windows open at random (Poisson)
        // so that they cover `--rate-limit-share` of the time.
        if let Some(until) = burst_until
            && now >= until
        {
            burst_until = None;
            if outage_until.is_none() {
                rig.emu.set_faults(args.base_faults())?;
            }
        }
        if outage_until.is_none() && burst_until.is_none() && now >= next_burst {
            let served_before = rig.emu.rest_requests();
            rig.emu.set_faults(Faults {
                burst_429: Some((u32::MAX, RETRY_AFTER.as_secs())),
                ..args.base_faults()
            })?;
            burst_until = Some(now + RETRY_AFTER);
            burst_from = served_before;
            ev.bursts_429 += 1;
            next_burst = now + RETRY_AFTER + burst_gap(&mut pick, args.rate_limit_share);
        }
        if burst_until.is_none() && burst_from > 0 {
            ev.requests_429 += rig.emu.rest_requests().saturating_sub(burst_from);
            burst_from = 0;
        }
        // kill -9 of a runner while it runs a job.
        if runner_kills.first().is_some_and(|t| *t <= off) {
            let snap = rig.emu.snapshot();
            let mut busy: Vec<(u64, String)> = snap
                .in_progress()
                .filter_map(|j| Some((j.id, j.runner_name.clone()?)))
                .filter(|(_, r)| !ev.runner_kills.iter().any(|k| &k.runner == r))
                .collect();
            if !busy.is_empty() {
                let (job_id, runner) = busy.swap_remove(pick.random_range(0..busy.len()));
                if let Some(pid) = rig.runner_pid(&runner, &sampler.last) {
                    kill_group(pid);
                    runner_kills.remove(0);
                    progress.line(&format!(
                        "  {:.0}s: kill -9 runner {runner} (pid {pid}) running job {job_id}",
                        off.as_secs_f64()
                    ));
                    ev.runner_kills.push(RunnerKill {
                        at_secs: round(off.as_secs_f64()),
                        runner,
                        job_id,
                        pid: pid.unsigned_abs(),
                    });
                }
            }
        }

        if last_snapshot.is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY) {
            last_snapshot = Some(now);
            let snap = rig.emu.snapshot();
            progress.frame(
                &frame(&snap, total, &sampler, off, outage_until.is_some()),
                false,
            );
            let quiet = restarts.is_empty()
                && takeover.is_none()
                && outage_until.is_none()
                && (outage_at.is_none() || ev.outage_ended.is_some());
            if settle_until.is_none()
                && quiet
                && playing.is_finished()
                && snap.jobs.len() as u32 == total
                && snap.all_done()
            {
                let settle = args.boot_timeout * 2;
                settle_until = Some(now + settle);
                progress.line(&format!(
                    "  {:.0}s: every job completed; runscale runs {}s more before orphans are counted",
                    off.as_secs_f64(),
                    settle.as_secs()
                ));
            }
        }
        if settle_until.is_some_and(|t| now >= t) {
            break;
        }
        if now >= hard_deadline {
            ev.timed_out = settle_until.is_none();
            progress.line("  time limit reached");
            break;
        }
    }
    playing.abort();
    sampler.sample(&rig.world);
    let snap = rig.emu.snapshot();
    let mut report = summarise(args, &snap, total, &sampler, &ev);
    report.api_requests = rig.emu.rest_requests();
    report.api_requests_per_job = if report.jobs_queued > 0 {
        round(report.api_requests as f64 / f64::from(report.jobs_queued))
    } else {
        0.0
    };
    report.outage.started_at_secs = ev.outage_started.map(|d| round(d.as_secs_f64()));
    report.wall_secs = round(started.elapsed().as_secs_f64());
    Ok(report)
}

fn frame(snap: &Snapshot, total: u32, sampler: &Sampler, off: Duration, outage: bool) -> String {
    let instances: Vec<String> = sampler
        .last
        .values()
        .fold(BTreeMap::<&str, u32>::new(), |mut m, s| {
            *m.entry(s.pool.as_str()).or_default() += u32::from(s.active);
            m
        })
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    format!(
        "  {:>5.0}s  {}/{total} done, {} waiting, {} running; instances {}{}",
        off.as_secs_f64(),
        snap.completed().count(),
        snap.queued().count(),
        snap.in_progress().count(),
        if instances.is_empty() {
            "0".to_owned()
        } else {
            instances.join(", ")
        },
        if outage { "  [API outage]" } else { "" }
    )
}

/// The report from the emulator's records, the samples and the events.
fn summarise(
    args: &ChaosArgs,
    snap: &Snapshot,
    total: u32,
    sampler: &Sampler,
    ev: &Events,
) -> ChaosReport {
    let injected_jobs: BTreeSet<u64> = ev.runner_kills.iter().map(|k| k.job_id).collect();
    let injected_runners: BTreeSet<&str> =
        ev.runner_kills.iter().map(|k| k.runner.as_str()).collect();
    let mut r = ChaosReport {
        backend: format!("{:?}", args.backend).to_lowercase(),
        jobs_total: total,
        jobs_queued: snap.jobs.len() as u32,
        max: args.max,
        max_seen: sampler.max_seen.clone(),
        max_exceeded: sampler.exceeded,
        samples: sampler.samples,
        daemon_kills: ev.daemon_kills.clone(),
        runner_kills: ev.runner_kills.clone(),
        takeover_secs: ev.takeover_secs.clone(),
        bursts_429: ev.bursts_429,
        requests_429: ev.requests_429,
        webhooks: serde_json::to_value(&snap.webhooks).unwrap_or_default(),
        faults: FaultMix {
            api_error_rate: args.api_error_rate,
            rate_limit_share: args.rate_limit_share,
            webhook_drop_rate: args.webhook_drop_rate,
            webhook_duplicate_rate: args.webhook_duplicate_rate,
        },
        timed_out: ev.timed_out,
        interrupted: ev.interrupted,
        ..ChaosReport::default()
    };
    for j in &snap.jobs {
        let injected = injected_jobs.contains(&j.id);
        match (j.status, j.conclusion) {
            (JobStatus::Completed, Some(Conclusion::Success)) => r.jobs_done += 1,
            (JobStatus::Completed | JobStatus::InProgress, _) if injected => {
                r.jobs_lost_injected += 1;
            }
            (JobStatus::Completed, _) => r.jobs_failed += 1,
            (JobStatus::Queued, _) => r.jobs_not_run += 1,
            (JobStatus::InProgress, _) => r.jobs_running_at_end += 1,
        }
    }
    r.jobs_never_queued = total.saturating_sub(r.jobs_queued);
    r.jobs_lost = r.jobs_failed + r.jobs_not_run + r.jobs_running_at_end + r.jobs_never_queued;
    for v in &snap.violations {
        let counted = match &v.kind {
            ViolationKind::RunnerLostMidJob { runner_name, .. } => {
                !injected_runners.contains(runner_name.as_str())
            }
            ViolationKind::BusyRunnerDeleted { .. } => true,
            ViolationKind::JobNeverStarted { .. } | ViolationKind::JobNotFinished { .. } => false,
        };
        if counted {
            r.busy_runners_killed += 1;
            r.busy_killed_details.push(v.to_string());
        }
    }
    r.wait_secs = WaitStats::of(
        snap.jobs
            .iter()
            .filter_map(|j| {
                let ms = (*j.started_at.as_ref()? - j.queued_at).num_milliseconds();
                Some(round(ms.max(0) as f64 / 1000.0))
            })
            .collect(),
    );
    r.outage = OutageReport {
        secs: args.outage.as_secs_f64(),
        started_at_secs: None,
        recovery_secs: ev.outage_ended.and_then(|end| {
            let first = snap
                .jobs
                .iter()
                .filter_map(|j| j.started_at)
                .filter(|s| *s >= end)
                .min()?;
            Some(round((first - end).num_milliseconds() as f64 / 1000.0))
        }),
        waiting_at_end: ev.waiting_at_outage_end,
    };
    // Orphans: instances older than boot_timeout whose runners are not registered, and
    // registered runners with no instance.
    let registered: BTreeSet<&str> = snap.runners.iter().map(|r| r.name.as_str()).collect();
    let hosted: BTreeSet<&str> = sampler
        .last
        .values()
        .flat_map(|s| s.runner_names.iter().map(String::as_str))
        .collect();
    for (id, s) in &sampler.last {
        let old = sampler
            .first_seen
            .get(id)
            .is_some_and(|t| t.elapsed() > args.boot_timeout);
        if old
            && !s
                .runner_names
                .iter()
                .any(|n| registered.contains(n.as_str()))
        {
            r.orphan_instances += 1;
            r.orphan_details.push(format!(
                "instance {id} of pool {} has no registered runner",
                s.pool
            ));
        }
    }
    for runner in &snap.runners {
        if !hosted.contains(runner.name.as_str()) {
            r.orphan_runners += 1;
            r.orphan_details.push(format!(
                "runner {} ({:?}, busy: {}) has no instance",
                runner.name, runner.status, runner.busy
            ));
        }
    }
    r
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ChaosArgs,
    }

    fn args(extra: &[&str]) -> ChaosArgs {
        Cli::try_parse_from(std::iter::once("chaos").chain(extra.iter().copied()))
            .expect("arguments")
            .args
    }

    #[test]
    fn workload_is_seeded_with_a_quarter_gpu_jobs_and_bounded_run_times() {
        let a = args(&["--jobs", "400", "--seed", "3"]);
        let (w, span) = workload(&a);
        let (w2, span2) = workload(&a);
        assert_eq!(span, span2);
        assert_eq!(w.job_count(), 400);
        assert_eq!(w2.job_count(), 400);
        let jobs: Vec<&JobSpec> = w.arrivals.iter().flat_map(|a| &a.jobs).collect();
        let gpu = jobs
            .iter()
            .filter(|j| j.labels.iter().any(|l| l == "gpu"))
            .count();
        assert_eq!(gpu, 100);
        assert!(
            jobs.iter()
                .all(|j| (a.job_min..=a.job_max).contains(&j.duration))
        );
        // 8 linux slots at 70 % for jobs of 2.5 s + 1.5 s overhead: about 1.87 jobs/s.
        let rate = 400.0 / span.as_secs_f64();
        assert!((1.4..2.4).contains(&rate), "{rate} jobs/s");
    }

    #[test]
    fn windows_of_429_cover_the_share_of_the_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let n = 20_000;
        let gaps: f64 = (0..n)
            .map(|_| burst_gap(&mut rng, 0.05).as_secs_f64())
            .sum();
        let windows = RETRY_AFTER.as_secs_f64() * f64::from(n);
        let share = windows / (windows + gaps);
        assert!((0.045..0.055).contains(&share), "{share}");
        assert_eq!(mean_burst_gap(0.05), Duration::from_secs(38));
        assert!(burst_gap(&mut rng, 0.0) >= Duration::from_secs(86_400));
    }

    #[test]
    fn bounds_are_checked() {
        assert!(args(&[]).check().is_ok());
        for bad in [
            &["--api-error-rate", "1.5"][..],
            &["--rate-limit-share", "0.6"],
            &["--load", "0"],
            &["--job-min", "5s", "--job-max", "1s"],
            &["--time-limit", "1s"],
            &["--outage", "2h"],
            &["--boot-timeout", "1s"],
        ] {
            assert!(args(bad).check().is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["chaos", "--jobs", "0"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "--jobs", "100001"]).is_err());
    }

    fn report() -> ChaosReport {
        ChaosReport {
            jobs_total: 10,
            jobs_done: 9,
            jobs_lost_injected: 1,
            ..ChaosReport::default()
        }
    }

    #[test]
    fn the_injected_loss_is_reported_but_not_a_failure() {
        let r = report();
        assert!(r.failures().is_empty());
        assert!(r.render().contains("1 lost by the injected runner kill"));
        assert!(r.render().contains("result        ok"));
        let mut r = report();
        r.max_exceeded = 2;
        r.orphan_runners = 1;
        assert_eq!(r.failures(), ["max exceeded: 2", "orphan runners: 1"]);
        assert!(r.render().contains("FAILED"));
    }

    #[test]
    fn configurations_are_valid() {
        let a = args(&[]);
        let dir = Path::new("/tmp/chaos \"quoted\"");
        let provider = github_provider_yaml(
            "http://127.0.0.1:1",
            ORG,
            REPO,
            &dir.join("t"),
            &dir.join("s"),
        );
        let template = format!(
            "    template: {{command: [{}, fake-runner], credentials: file}}\n",
            yaml_path(Path::new("/usr/bin/runscale"))
        );
        let text = format!(
            "{}backends:\n  - name: local\n    type: local-process\n    state_dir: {}\n    \
             stop_grace: 5s\n{}",
            header_yaml(&a, "127.0.0.1:2".parse().expect("addr"), &provider),
            yaml_path(&dir.join("state")),
            pools_yaml(&a, "local", &template),
        );
        let v = crate::config::load_str(&text, Path::new("chaos.yaml"), |_| None);
        assert!(v.is_ok(), "{text}\n{v:?}");
    }
}
