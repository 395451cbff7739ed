//! `runscale demo --json` end to end: the real binary starts the GitHub emulator, the daemon
//! and runner processes (`runscale fake-runner`), plays a small workload, and reports. Every
//! job must complete, the emulator must see no violation, and nothing may be left behind.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
/// Generous: the machine is shared with other test binaries.
const TIMEOUT: Duration = Duration::from_secs(300);

/// `runscale-demo-*` directories in `dir`.
fn demo_dirs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("runscale-demo-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn demo_json_completes_every_job_without_violations_or_leftovers() {
    // A private TMPDIR: the demo's temporary directory (state, credentials, secrets) lands
    // here, so its removal can be checked without racing other tests.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["demo", "--jobs", "30", "--speed", "40", "--json"])
        .env("TMPDIR", tmp.path())
        .env_remove("RUNSCALE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runscale demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| panic!("demo timed out\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    let line = out.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{out}\nstderr:\n{err}"));
    assert_eq!(
        out.trim().lines().count(),
        1,
        "only the summary on stdout:\n{out}"
    );
    assert_eq!(summary["jobs_total"], 30, "{summary}");
    assert_eq!(summary["jobs_done"], 30, "{summary}");
    assert_eq!(summary["jobs_failed"], 0, "{summary}");
    assert_eq!(summary["violations"], 0, "{summary}");
    assert_eq!(summary["remaining_instances"], 0, "{summary}");
    assert_eq!(summary["converged"], true, "{summary}");
    let launches = summary["launches"].as_u64().expect("launches");
    // Ephemeral runners: at least one launch per job, plus the warm idle one.
    assert!(launches >= 30, "{summary}");
    let paid = summary["runner_seconds_paid"].as_f64().expect("paid");
    let busy = summary["runner_seconds_busy"].as_f64().expect("busy");
    assert!(busy > 0.0 && paid >= busy, "{summary}");
    let wait = &summary["wait_secs"];
    assert!(
        wait["p50"].as_f64() <= wait["p95"].as_f64()
            && wait["p95"].as_f64() <= wait["max"].as_f64(),
        "{summary}"
    );
    // The status page URL was announced (progress goes to stderr with --json).
    assert!(err.contains("status page: http://127.0.0.1:"), "{err}");
    // Its temporary directory (state files, credentials, secrets) is gone.
    assert!(
        demo_dirs(tmp.path()).is_empty(),
        "{:?}",
        demo_dirs(tmp.path())
    );
}
