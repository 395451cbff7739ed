//! The shipped example configurations: `runscale check` accepts them from the repository
//! root, and `examples/local.yaml` really scales: jobs queued in the file-based CI are run by
//! runner processes the daemon starts, and the pool returns to zero.
//!
//! State goes to temporary directories (through the example's `${VAR:-default}`s), the daemon
//! listens on 127.0.0.1 only, and every process is stopped at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
const WAIT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Dirs {
    _tmp: tempfile::TempDir,
    ci: PathBuf,
    state: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    Dirs {
        ci: tmp.path().join("ci"),
        state: tmp.path().join("state"),
        _tmp: tmp,
    }
}

fn runscale(args: &[&str], d: &Dirs) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(repo_root())
        .env("RUNSCALE_CI_DIR", &d.ci)
        .env("RUNSCALE_STATE_DIR", &d.state)
        .env("RUNSCALE_LISTEN", "127.0.0.1:0")
        .env_remove("RUNSCALE_CONFIG")
        .stdin(Stdio::null());
    c
}

#[test]
fn every_example_passes_check() {
    let mut found = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        found += 1;
        let d = dirs();
        let out = runscale(&["check", "-c"], &d)
            .arg(&path)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(found > 0, "no example found");
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn done_jobs(ci: &Path) -> Vec<String> {
    match std::fs::read_dir(ci.join("done")) {
        Ok(entries) => entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `runscale run -c examples/local.yaml` with JSON logs; returns the daemon, its
/// listen address and its log lines.
fn start_daemon(d: &Dirs) -> (Daemon, SocketAddr, mpsc::Receiver<String>) {
    let mut child = runscale(
        &["--log-format", "json", "run", "-c", "examples/local.yaml"],
        d,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let daemon = Daemon(child);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = loop {
        let line = lines.recv_timeout(WAIT).expect("daemon started");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "runscale started"
        {
            break v["listen"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("addr");
        }
    };
    (daemon, addr, lines)
}

fn enqueue(d: &Dirs, count: u32, secs: u32) {
    let out = Command::new("sh")
        .args([
            "examples/local/enqueue.sh",
            "linux",
            &count.to_string(),
            &secs.to_string(),
        ])
        .current_dir(repo_root())
        .env("RUNSCALE_CI_DIR", &d.ci)
        .output()
        .expect("enqueue");
    assert!(out.status.success(), "{out:?}");
}

/// State files of live instances (one per runner process) in the backend's state directory.
fn instance_files(d: &Dirs) -> usize {
    std::fs::read_dir(d.state.join("linux"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

fn pool_is_empty(addr: SocketAddr) -> bool {
    let body = http_get(addr, "/api/v1/pools");
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let o = &pools[0]["last_observation"];
    o["waiting"] == 0
        && o["instances_booting"] == 0
        && o["instances_running"] == 0
        && o["runners_idle"] == 0
        && o["runners_offline"] == 0
}

fn launches_logged(lines: &mpsc::Receiver<String>) -> usize {
    lines
        .try_iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == "launched")
        })
        .count()
}

#[test]
fn kill_9_mid_run_then_restart_re_adopts_runners_without_duplicates_or_leaks() {
    let d = dirs();
    let (mut first, _, first_lines) = start_daemon(&d);
    enqueue(&d, 4, 8);
    // All four runners up (max 4) and working, then the daemon dies without warning.
    wait_until("four runner processes", || instance_files(&d) == 4);
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    let launched_first = launches_logged(&first_lines);
    assert_eq!(launched_first, 4);
    assert_eq!(instance_files(&d), 4, "runners outlive the daemon");

    let (_second, addr, second_lines) = start_daemon(&d);
    wait_until("four jobs done", || done_jobs(&d.ci).len() == 4);
    wait_until("pool back to zero", || pool_is_empty(addr));
    wait_until("no runner process left", || instance_files(&d) == 0);
    assert_eq!(
        launches_logged(&second_lines),
        0,
        "no duplicate launch after the restart"
    );
    let jobs = done_jobs(&d.ci);
    assert!(jobs.iter().all(|j| j.contains("result=ok")), "{jobs:?}");
    let runners_left = std::fs::read_dir(d.ci.join("runners"))
        .map(|e| e.count())
        .unwrap_or(0);
    assert_eq!(runners_left, 0, "no registration left over");
}

#[test]
fn local_example_runs_queued_jobs_and_scales_back_to_zero() {
    let d = dirs();
    let (mut daemon, addr, _lines) = start_daemon(&d);
    enqueue(&d, 3, 1);
    wait_until("three jobs done", || done_jobs(&d.ci).len() == 3);
    for job in done_jobs(&d.ci) {
        assert!(job.contains("result=ok"), "{job}");
        assert!(job.contains("pool=linux"), "{job}");
    }
    // Ephemeral runners leave after their job: the pool goes back to zero instances.
    wait_until("no instance left", || pool_is_empty(addr));
    let metrics = http_get(addr, "/metrics");
    assert!(
        metrics.contains(
            "runscale_launches_total{pool=\"linux\",action=\"launch\",reason=\"demand\"}"
        ),
        "{metrics}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(s) = daemon.0.try_wait().expect("try_wait") {
            break s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
}
