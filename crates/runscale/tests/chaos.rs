//! The chaos soak (`runscale chaos`), short versions: 300 jobs on the local-process backend
//! and 100 on Kubernetes (two replicas electing a leader against the fake kube-apiserver),
//! each with API 5xx, 429 bursts, dropped and duplicated webhooks, three `kill -9` of
//! runscale (on Kubernetes: of the leader), one busy runner killed and a short API outage.
//! The report's safety numbers must be 0 and every job but the killed runner's must be done.
//!
//! Bounded: job run times are scaled down (0.3 to 1.5 s), each soak has a time limit and the
//! test kills the `runscale chaos` process (SIGTERM: it stops what it started; SIGKILL after a
//! grace) if it overruns. The two soaks take turns (a lock): they would compete for the cores.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
/// One soak at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The `runscale chaos` process; SIGTERM then SIGKILL when dropped.
struct Soak {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Soak {
    fn start(args: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(BIN)
            .arg("chaos")
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn runscale chaos");
        Soak { child, log }
    }

    fn progress(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits up to `limit` for the report; returns it with whether the exit status was 0.
    fn report(mut self, limit: Duration) -> (Value, bool) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the soak overran {limit:?}:\n{}",
                self.progress()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).expect("stdout");
        }
        let report: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("no JSON report ({e}): {out}\n{}", self.progress()));
        eprintln!("{}\n{report:#}", self.progress());
        (report, status.success())
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn n(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// The safety numbers are 0, every job but the killed runner's is done (its own too, when it
/// finished as the kill landed), the faults happened.
fn assert_safe(report: &Value, ok: bool, jobs: u64, daemon_kills: usize) {
    for key in [
        "jobs_lost",
        "busy_runners_killed",
        "max_exceeded",
        "orphan_instances",
        "orphan_runners",
    ] {
        assert_eq!(n(report, key), 0, "{key}: {report:#}");
    }
    assert!(ok, "the exit status says the soak failed: {report:#}");
    assert_eq!(n(report, "jobs_total"), jobs);
    assert_eq!(report["runner_kills"].as_array().map(Vec::len), Some(1));
    // The killed runner's job is lost and reported as such, unless the job finished in the
    // instant between the soak's read of the runner as busy and the SIGKILL (its completion
    // already sent): then it is done, and nothing is lost at all.
    let injected = n(report, "jobs_lost_injected");
    assert!(injected <= 1, "{report:#}");
    assert_eq!(n(report, "jobs_done") + injected, jobs, "{report:#}");
    assert_eq!(
        report["daemon_kills"].as_array().map(Vec::len),
        Some(daemon_kills)
    );
    assert!(n(report, "samples") > 100);
    assert!(n(report, "bursts_429") > 0);
    let hooks = &report["webhooks"];
    assert!(hooks["dropped"].as_u64() > Some(0), "{hooks}");
    assert!(hooks["duplicated"].as_u64() > Some(0), "{hooks}");
    assert!(
        report["outage"]["recovery_secs"].as_f64().is_some(),
        "a job started after the outage: {report:#}"
    );
}

const SHORT: &[&str] = &[
    "--job-min",
    "300ms",
    "--job-max",
    "1500ms",
    "--boot-timeout",
    "10s",
    "--interval",
    "1s",
    "--outage",
    "10s",
    "--seed",
    "11",
];

#[test]
fn three_hundred_jobs_on_local_processes_survive_the_chaos() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = SHORT.to_vec();
    args.extend(["--jobs", "300", "--max", "10", "--time-limit", "6m"]);
    let (report, ok) = Soak::start(&args).report(Duration::from_secs(7 * 60));
    assert_eq!(report["backend"], "local");
    assert_safe(&report, ok, 300, 3);
}

#[cfg(all(feature = "backend-kubernetes", feature = "leader-election"))]
#[test]
fn a_hundred_jobs_on_kubernetes_survive_the_chaos_and_leader_kills() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = SHORT.to_vec();
    args.extend([
        "--backend",
        "kubernetes",
        "--jobs",
        "100",
        "--max",
        "8",
        "--time-limit",
        "5m",
    ]);
    let (report, ok) = Soak::start(&args).report(Duration::from_secs(6 * 60));
    assert_eq!(report["backend"], "kubernetes");
    assert_safe(&report, ok, 100, 3);
    // Each leader kill was followed by the other replica taking the Lease.
    assert_eq!(report["takeover_secs"].as_array().map(Vec::len), Some(3));
}

#[test]
fn out_of_bounds_options_are_refused() {
    for bad in [
        &["--jobs", "0"][..],
        &["--jobs", "100001"],
        &["--api-error-rate", "2"],
        &["--time-limit", "100h"],
    ] {
        let out = Command::new(BIN)
            .arg("chaos")
            .args(bad)
            .stdin(Stdio::null())
            .output()
            .expect("run runscale chaos");
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}
