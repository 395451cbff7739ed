//! The real `runscale` executable: exit codes, messages, the schema, `check`, `once`, and the
//! daemon's HTTP server and signal handling. Every server listens on 127.0.0.1 only; every
//! process is killed when its test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runscale");

/// Generous: the machine is shared with other test binaries.
const WAIT: Duration = Duration::from_secs(60);

fn runscale(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("RUNSCALE_LOG_FORMAT")
        .env_remove("RUNSCALE_LOG_LEVEL")
        .stdin(Stdio::null());
    c
}

fn output(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("run runscale");
    (
        status.code().expect("exited normally"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A configuration in `dir`: one GitHub provider whose API is at `api` (a loopback address),
/// one local-process backend, one pool; `pool_extra` is appended to the pool.
fn config_file(dir: &Path, api: &str, top: &str, pool_extra: &str) -> PathBuf {
    let text = format!(
        r#"{top}providers:
  - name: gh
    type: github
    api_url: {api}
    org: acme
    repositories: [app]
    request_timeout: 120s
    auth: {{token: {{env: RUNSCALE_CLI_TEST_TOKEN}}}}
backends:
  - name: local
    type: local-process
    state_dir: {state}
pools:
  - name: linux
    provider: gh
    backend: local
    selector: {{labels: [linux]}}
    template: {{command: ["/bin/true"]}}
    max: 2
{pool_extra}"#,
        state = dir.join("state").display()
    );
    let path = dir.join("runscale.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// An address where nothing listens (connections are refused).
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

#[test]
fn negative_max_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &closed_port(), "", "");
    let text = std::fs::read_to_string(&path)
        .expect("read")
        .replace("max: 2", "max: -1");
    std::fs::write(&path, text).expect("write");
    for cmd in ["check", "once", "run"] {
        let (code, stdout, stderr) = output(
            runscale(&[cmd, "-c"])
                .arg(&path)
                .env("RUNSCALE_CLI_TEST_TOKEN", "t"),
        );
        assert_eq!(code, 2, "{cmd}: {stderr}");
        assert!(stderr.contains("pools[0].max (line 19)"), "{cmd}: {stderr}");
        assert!(stdout.is_empty(), "{cmd}: {stdout}");
    }
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &closed_port(), "", "    warmth: 3\n");
    let (code, _, stderr) = output(runscale(&["check", "-c"]).arg(&path));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("pools[0].warmth"), "{stderr}");
    assert!(stderr.contains("unknown field `warmth`"), "{stderr}");
}

#[test]
fn every_semantic_error_is_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(
        dir.path(),
        &closed_port(),
        "max_concurrent_passes: 0\n",
        "    max_booting: 3\n    schedules:\n      - cron: \"bad\"\n        timezone: Nowhere/Land\n        max: 1\n",
    );
    let (code, _, stderr) = output(runscale(&["check", "-c"]).arg(&path));
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "max_concurrent_passes (line 1)",
        "pools[0].max_booting (line 21)",
        "pools[0].schedules[0].cron (line 23)",
        "pools[0].schedules[0].timezone (line 24)",
        "Nowhere/Land",
    ] {
        assert!(stderr.contains(needle), "{needle} missing:\n{stderr}");
    }
}

#[test]
fn unreadable_file_syntax_and_unset_variables_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = output(runscale(&["check", "-c"]).arg(dir.path().join("missing.yaml")));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read configuration file"),
        "{stderr}"
    );

    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "pools:\n  - name: [a\n").expect("write");
    let (code, _, stderr) = output(runscale(&["once", "-c"]).arg(&path));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not valid YAML"), "{stderr}");
    assert!(stderr.contains("line "), "{stderr}");

    let path = config_file(dir.path(), "${RUNSCALE_CLI_TEST_UNSET_API}", "", "");
    let (code, _, stderr) = output(runscale(&["check", "-c"]).arg(&path));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("RUNSCALE_CLI_TEST_UNSET_API"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");

    // With the variable set, the same file is valid (and check then fails on the probe only).
    let api = closed_port();
    let (code, stdout, stderr) = output(
        runscale(&["check", "-c"])
            .arg(&path)
            .env("RUNSCALE_CLI_TEST_UNSET_API", &api)
            .env("RUNSCALE_CLI_TEST_TOKEN", "t"),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
}

#[test]
fn missing_secret_exits_2_for_run_and_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &closed_port(), "listen: 127.0.0.1:0\n", "");
    for cmd in ["once", "run"] {
        let (code, _, stderr) = output(
            runscale(&[cmd, "-c"])
                .arg(&path)
                .env_remove("RUNSCALE_CLI_TEST_TOKEN"),
        );
        assert_eq!(code, 2, "{cmd}: {stderr}");
        assert!(
            stderr.contains("RUNSCALE_CLI_TEST_TOKEN"),
            "{cmd}: {stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = output(&mut runscale(&["once"]));
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = output(&mut runscale(&["frobnicate"]));
    assert_eq!(code, 2);
    let (code, _, stderr) = output(&mut runscale(&["--log-level", "x=nonsense", "version"]));
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn config_schema_is_json_with_the_pool_fields() {
    let (code, stdout, stderr) = output(&mut runscale(&["config", "schema"]));
    assert_eq!(code, 0, "{stderr}");
    let schema: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(schema["type"], "object");
    for top in ["listen", "interval", "providers", "backends", "pools"] {
        assert!(schema["properties"][top].is_object(), "{top}");
    }
    let pool = &schema["$defs"]["PoolConfig"]["properties"];
    for field in [
        "name",
        "max",
        "min_idle",
        "schedules",
        "template",
        "selector",
    ] {
        assert!(pool[field]["description"].is_string(), "{field}");
    }
    assert_eq!(
        schema["$defs"]["PoolConfig"]["required"],
        serde_json::json!(["name", "provider", "backend", "template", "max"])
    );
}

#[test]
fn version_names_the_compiled_types() {
    let (code, stdout, _) = output(&mut runscale(&["version"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with(&format!("runscale {}", env!("CARGO_PKG_VERSION"))));
    assert!(stdout.contains("local-process"), "{stdout}");
}

#[test]
fn check_probes_every_adapter_and_fails_if_one_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &closed_port(), "", "");
    let (code, stdout, stderr) = output(
        runscale(&["check", "-c"])
            .arg(&path)
            .env("RUNSCALE_CLI_TEST_TOKEN", "t"),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("configuration is valid"), "{stdout}");
    assert!(
        lines[1]
            .split_whitespace()
            .eq(["NAME", "ROLE", "TYPE", "STATUS", "DETAIL"])
    );
    let gh: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&gh[..4], ["gh", "provider", "github", "FAIL"], "{stdout}");
    let local: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        &local[..4],
        ["local", "backend", "local-process", "OK"],
        "{stdout}"
    );
    assert!(stderr.contains("1 of 2"), "{stderr}");
}

#[test]
fn once_prints_a_table_and_fails_when_a_pool_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &closed_port(), "", "");
    let (code, stdout, stderr) = output(
        runscale(&["once", "--dry-run", "-c"])
            .arg(&path)
            .env("RUNSCALE_CLI_TEST_TOKEN", "t"),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("POOL"), "{stdout}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..2], ["linux", "FAIL"], "{stdout}");
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(stderr.contains("1 of 1 pools failed"), "{stderr}");
}

/// A child process killed when dropped, with its stderr lines on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let child = runscale(&["--log-format", "json", "run", "-c"])
            .arg(config)
            .env("RUNSCALE_CLI_TEST_TOKEN", "t")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self::watch(child)
    }

    /// Takes over a child spawned with a piped stderr.
    fn watch(mut child: Child) -> Self {
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a JSON log line whose message is `message`.
    fn wait_for(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line {message:?} in time"));
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == message
            {
                return v;
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "runscale did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn run_serves_http_and_stops_on_sigterm_with_exit_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(
        dir.path(),
        &closed_port(),
        "listen: 127.0.0.1:0\ninterval: 1s\n",
        "",
    );
    let mut d = Daemon::start(&path);
    let started = d.wait_for("runscale started");
    let addr: SocketAddr = started["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("listen address");
    assert!(addr.ip().is_loopback());
    assert_eq!(http_get(addr, "/healthz"), (200, "ok".to_owned()));
    // The first pass fails (nothing listens at the API address) but completes.
    d.wait_for("pass failed");
    let (status, _) = http_get(addr, "/readyz");
    assert_eq!(status, 200);
    let (status, body) = http_get(addr, "/api/v1/pools");
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(pools[0]["pool"], "linux");
    assert!(pools[0]["last_error"]["message"].is_string(), "{body}");
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "{body}");

    d.signal("TERM");
    assert_eq!(d.wait_exit(WAIT), 0);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

/// A GitHub API that accepts connections and never answers, so passes hang in flight.
fn silent_api() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    (l, url)
}

#[test]
fn a_hung_pass_is_abandoned_after_shutdown_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_api, url) = silent_api();
    let path = config_file(
        dir.path(),
        &url,
        "listen: 127.0.0.1:0\nshutdown_timeout: 1s\n",
        "",
    );
    let mut d = Daemon::start(&path);
    d.wait_for("runscale started");
    // Let the first pass get stuck on the silent API.
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    d.signal("TERM");
    assert_eq!(d.wait_exit(WAIT), 0);
    // It waited for the pass (about shutdown_timeout), not for the 120 s request timeout.
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_api, url) = silent_api();
    let path = config_file(
        dir.path(),
        &url,
        "listen: 127.0.0.1:0\nshutdown_timeout: 10m\n",
        "",
    );
    let mut d = Daemon::start(&path);
    d.wait_for("runscale started");
    std::thread::sleep(Duration::from_millis(500));
    d.signal("INT");
    d.wait_for("stopping: finishing in-flight passes (signal again to exit now)");
    // The hung pass keeps it from exiting on its own.
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.child.try_wait().expect("try_wait").is_none());
    d.signal("TERM");
    assert_eq!(d.wait_exit(WAIT), 1);
}

#[test]
fn a_taken_port_fails_with_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let path = config_file(
        dir.path(),
        &closed_port(),
        &format!("listen: 127.0.0.1:{port}\n"),
        "",
    );
    let (code, _, stderr) = output(
        runscale(&["run", "-c"])
            .arg(&path)
            .env("RUNSCALE_CLI_TEST_TOKEN", "t"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn kubernetes_emulator_serves_until_sigterm_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = runscale(&["emulator", "kubernetes", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut emulator = Daemon::watch(child);
    let mut url = String::new();
    BufReader::new(stdout)
        .read_line(&mut url)
        .expect("URL line");
    let addr: SocketAddr = url
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("a URL on stdout, got {url:?}"))
        .parse()
        .expect("host:port");
    let (status, body) = http_get(addr, "/version");
    assert_eq!(status, 200, "{body}");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(text.contains(url.trim()), "{text}");
    assert!(text.contains("runscale-fake"), "{text}");
    emulator.signal("TERM");
    assert_eq!(emulator.wait_exit(WAIT), 0);
}
