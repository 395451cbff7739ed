//! The local-process backend against real processes (`/bin/sh` scripts in a temporary
//! directory). Every test kills what it started (see [`Reaper`]) and checks the state
//! directory is cleaned up.

#![cfg(feature = "local")]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runscale_backends::local_process::{Config, CredentialsDelivery, LocalProcess, PoolTemplate};
use runscale_core::{
    Backend, Credentials, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, PoolId,
    Registration, RunnerId,
};
use secrecy::SecretString;
use tempfile::TempDir;
use tokio::sync::mpsc;

const SECRET: &str = "jit-s3cret-7f1b0c";
const WAIT: Duration = Duration::from_secs(30);

/// (state, start time) of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].chars().next()?, f[19].parse().ok()?))
}

/// Whether the process that started at `start` still runs (not a zombie).
fn running(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, s)| s == start && state != 'Z' && state != 'X')
}

/// Kills (SIGKILL to the process group) every recorded process still running when dropped.
#[derive(Default)]
struct Reaper(std::sync::Mutex<Vec<(i32, u64)>>);

impl Reaper {
    fn watch(&self, pid: i32, start: u64) {
        self.0.lock().expect("lock").push((pid, start));
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, start) in self.0.lock().expect("lock").drain(..) {
            if running(pid, start) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

struct Fixture {
    dir: TempDir,
    reaper: Reaper,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            reaper: Reaper::default(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an executable shell script and returns a template running it with the runner
    /// name as its argument (`$1`) and `OUT` naming the temporary directory.
    fn template(&self, name: &str, body: &str) -> PoolTemplate {
        let path = self.path(&format!("{name}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        PoolTemplate {
            command: vec![
                "/bin/sh".into(),
                path.to_string_lossy().into_owned(),
                "{runner_name}".into(),
            ],
            env: BTreeMap::from([(
                "OUT".to_owned(),
                self.dir.path().to_string_lossy().into_owned(),
            )]),
            working_dir: Some(self.dir.path().to_owned()),
            credentials: CredentialsDelivery::File,
        }
    }

    fn backend(&self, grace: Duration, templates: &[(&str, &PoolTemplate)]) -> LocalProcess {
        LocalProcess::new(
            Config {
                state_dir: self.state_dir(),
                stop_grace: grace,
            },
            templates
                .iter()
                .map(|(pool, t)| (PoolId::new(pool), (*t).clone()))
                .collect(),
        )
        .expect("backend")
    }

    fn pool_files(&self, pool: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state_dir().join(pool))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// pid and start time from an instance's state file; the reaper watches it from now on.
    fn process_of(&self, pool: &str, id: &InstanceId) -> (i32, u64) {
        let v = self.state_file(pool, id).expect("state file");
        let pid = i32::try_from(v["pid"].as_i64().expect("pid")).expect("pid fits");
        let start = v["start_time"].as_u64().expect("start time");
        self.reaper.watch(pid, start);
        (pid, start)
    }

    fn state_file(&self, pool: &str, id: &InstanceId) -> Option<serde_json::Value> {
        let raw = std::fs::read(self.state_dir().join(pool).join(format!("{id}.json"))).ok()?;
        Some(serde_json::from_slice(&raw).expect("state file is JSON"))
    }
}

fn registration(name: &str) -> Registration {
    let mut credentials = Credentials::default();
    credentials
        .vars
        .insert("RUNNER_URL".into(), "https://ci.example".into());
    credentials
        .secrets
        .insert("RUNNER_TOKEN".into(), SecretString::from(SECRET.to_owned()));
    Registration {
        runner_name: name.to_owned(),
        runner_id: Some(RunnerId::new("17")),
        credentials,
    }
}

fn request(pool: &str, names: &[&str]) -> LaunchRequest {
    LaunchRequest {
        pool: PoolId::new(pool),
        runners: names.iter().map(|n| registration(n)).collect(),
        template_hash: "hash-1".into(),
    }
}

async fn list(backend: &LocalProcess, pool: &str) -> Vec<Instance> {
    backend
        .instances(&[PoolId::new(pool)])
        .await
        .expect("instances")
        .remove(&PoolId::new(pool))
        .expect("every requested pool is answered")
}

/// Polls `cond` every 100 ms until it holds; panics after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LONG: &str = "echo started \"$1\"\nsleep 300 &\nwait";

#[tokio::test]
async fn launch_is_listed_running_with_its_runner_names_and_template_hash() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let other = fx.template("other", LONG);
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t), ("b", &other)]);
    assert_eq!(backend.kind(), "local-process");

    let launched = backend
        .launch(request("a", &["rs-a-1", "rs-a-2"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);
    assert!(launched.id.as_str().starts_with("lp-") && launched.id.as_str().len() == 15);
    assert_eq!(launched.runner_names, ["rs-a-1", "rs-a-2"]);
    assert!(running(pid, start));

    let all = backend
        .instances(&[PoolId::new("a"), PoolId::new("b")])
        .await
        .expect("instances");
    assert_eq!(all[&PoolId::new("b")], []);
    let listed = &all[&PoolId::new("a")];
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, launched.id);
    assert_eq!(listed[0].state, InstanceState::Running);
    assert_eq!(listed[0].template_hash, "hash-1");
    assert_eq!(listed[0].runner_names, ["rs-a-1", "rs-a-2"]);
    assert_eq!(listed[0].launched_at, launched.launched_at);

    // The process got its environment and its argv placeholder.
    let log = fx
        .state_dir()
        .join("a")
        .join(format!("{}.log", launched.id));
    eventually("the log line", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|s| s.contains("started rs-a-1")) }
    })
    .await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    for expected in [
        "RUNSCALE_POOL=a",
        &format!("RUNSCALE_INSTANCE_ID={}", launched.id),
        "RUNSCALE_RUNNER_NAME=rs-a-1",
        "RUNSCALE_RUNNER_NAMES=rs-a-1,rs-a-2",
        "RUNSCALE_TEMPLATE_HASH=hash-1",
        "RUNSCALE_CREDENTIALS_FILE=",
        "RUNSCALE_STATE_DIR=",
    ] {
        assert!(environ.contains(expected), "{expected} missing");
    }
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        assert!(
            !environ.contains("CARGO_MANIFEST_DIR="),
            "the daemon's environment leaked"
        );
    }

    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("terminate");
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
    assert!(!running(pid, start));
    assert_eq!(fx.pool_files("a"), [format!("{}.log", launched.id)]);
}

#[tokio::test]
async fn credentials_file_is_private_and_secrets_stay_out_of_argv_state_and_debug() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let req = request("a", &["rs-a-1", "rs-a-2"]);
    assert!(!format!("{req:?}").contains(SECRET));
    let launched = backend.launch(req).await.expect("launch");
    let (pid, _) = fx.process_of("a", &launched.id);

    let creds_path = fx
        .state_dir()
        .join("a")
        .join(format!("{}.credentials.json", launched.id));
    let meta = std::fs::metadata(&creds_path).expect("credentials file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds_path).expect("read")).expect("json");
    assert_eq!(creds["runners"].as_array().map(Vec::len), Some(2));
    assert_eq!(creds["runners"][0]["name"], "rs-a-1");
    assert_eq!(creds["runners"][1]["runner_id"], "17");
    assert_eq!(creds["runners"][0]["secrets"]["RUNNER_TOKEN"], SECRET);
    assert_eq!(
        creds["runners"][0]["vars"]["RUNNER_URL"],
        "https://ci.example"
    );

    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).expect("environ"))
            .into_owned();
    assert!(environ.contains(&format!(
        "RUNSCALE_CREDENTIALS_FILE={}",
        creds_path.canonicalize().expect("canonical").display()
    )));
    assert!(
        !environ.contains(SECRET),
        "file delivery must not export secrets"
    );

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains("rs-a-1"),
        "placeholder expanded: {cmdline}"
    );
    assert!(!cmdline.contains(SECRET));

    let state_path = fx
        .state_dir()
        .join("a")
        .join(format!("{}.json", launched.id));
    let state = std::fs::read_to_string(&state_path).expect("state");
    assert!(!state.contains(SECRET));
    assert_eq!(
        std::fs::metadata(&state_path)
            .expect("state")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(fx.state_dir())
            .expect("dir")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(!format!("{backend:?}").contains(SECRET));

    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("terminate");
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
    assert!(
        !creds_path.exists(),
        "credentials removed with the instance"
    );
    let log = std::fs::read_to_string(
        fx.state_dir()
            .join("a")
            .join(format!("{}.log", launched.id)),
    )
    .expect("log kept");
    assert!(!log.contains(SECRET));
}

#[tokio::test]
async fn env_delivery_exports_the_credentials_of_its_single_runner() {
    let fx = Fixture::new();
    let mut t = fx.template(
        "env",
        "printf '%s' \"$RUNNER_TOKEN\" > \"$OUT/token\"\nprintf '%s' \"${RUNSCALE_CREDENTIALS_FILE-unset}\" > \"$OUT/file\"\nsleep 300 &\nwait",
    );
    t.credentials = CredentialsDelivery::Env;
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t)]);

    let err = backend
        .launch(request("a", &["rs-a-1", "rs-a-2"]))
        .await
        .expect_err("env delivery with two runners");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(!err.to_string().contains(SECRET));
    assert!(
        fx.pool_files("a").is_empty(),
        "nothing left by a refused launch"
    );

    let launched = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);
    let token = fx.path("file");
    eventually("the script to write", || {
        let token = token.clone();
        async move { token.exists() }
    })
    .await;
    eventually("the token", || async {
        std::fs::read_to_string(fx.path("token")).is_ok_and(|s| s == SECRET)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(fx.path("file")).expect("file"),
        "unset"
    );
    assert!(
        !fx.pool_files("a").iter().any(|f| f.contains("credentials")),
        "no credentials file with env delivery"
    );

    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("terminate");
    eventually("the process to exit", || async { !running(pid, start) }).await;
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn terminate_sigterms_a_cooperative_process_and_is_idempotent() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let backend = fx.backend(Duration::from_secs(60), &[("a", &t)]);
    let launched = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);

    let pool = PoolId::new("a");
    backend
        .terminate(&pool, &launched.id)
        .await
        .expect("terminate");
    backend.terminate(&pool, &launched.id).await.expect("again");
    backend
        .terminate(&pool, &InstanceId::new("lp-doesnotexist"))
        .await
        .expect("unknown id");
    backend
        .terminate(&pool, &InstanceId::new("../../etc/passwd"))
        .await
        .expect("malformed id");
    // Exits on SIGTERM, long before the 60 s grace.
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
    assert!(!running(pid, start));
    backend.terminate(&pool, &launched.id).await.expect("gone");
    assert_eq!(fx.pool_files("a"), [format!("{}.log", launched.id)]);
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
    let fx = Fixture::new();
    let t = fx.template(
        "stubborn",
        "trap 'echo term >> \"$OUT/marker\"' TERM\ntouch \"$OUT/ready\"\nwhile true; do sleep 0.2; done",
    );
    let backend = fx.backend(Duration::from_secs(1), &[("a", &t)]);
    let launched = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);
    eventually("the trap to be set", || async { fx.path("ready").exists() }).await;

    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("terminate");
    let stopping_since = fx
        .state_file("a", &launched.id)
        .and_then(|v| v["stopping_since"].as_str().map(str::to_owned));
    assert!(stopping_since.is_some(), "stopping_since recorded");
    eventually("the TERM trap", || async { fx.path("marker").exists() }).await;
    eventually("the SIGKILL", || async { !running(pid, start) }).await;
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
    assert!(fx.pool_files("a").iter().all(|f| f.ends_with(".log")));
}

#[tokio::test]
async fn after_a_restart_live_instances_are_listed_once_and_can_be_terminated() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let first = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let one = first
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let two = first
        .launch(request("a", &["rs-a-2"]))
        .await
        .expect("launch");
    let p1 = fx.process_of("a", &one.id);
    let p2 = fx.process_of("a", &two.id);
    // runscale is "killed": its tasks go, its processes stay.
    drop(first);
    assert!(running(p1.0, p1.1) && running(p2.0, p2.1));

    let second = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let listed = list(&second, "a").await;
    let mut ids: Vec<&InstanceId> = listed.iter().map(|i| &i.id).collect();
    ids.sort();
    let mut expected = vec![&one.id, &two.id];
    expected.sort();
    assert_eq!(ids, expected, "each live instance exactly once");
    assert!(listed.iter().all(|i| i.state == InstanceState::Running));
    assert_eq!(
        listed
            .iter()
            .find(|i| i.id == one.id)
            .map(|i| i.runner_names.clone()),
        Some(vec!["rs-a-1".to_owned()])
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    second.subscribe(tx);
    second
        .terminate(&PoolId::new("a"), &one.id)
        .await
        .expect("terminate");
    eventually("the first process to exit", || async {
        !running(p1.0, p1.1)
    })
    .await;
    // Not our child any more: the /proc poller notices and tells the subscriber.
    let pool = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time");
    assert_eq!(pool, Some(PoolId::new("a")));
    let left = list(&second, "a").await;
    assert_eq!(left.iter().map(|i| &i.id).collect::<Vec<_>>(), [&two.id]);

    second
        .terminate(&PoolId::new("a"), &two.id)
        .await
        .expect("terminate");
    eventually("all gone", || async { list(&second, "a").await.is_empty() }).await;
    assert!(!running(p2.0, p2.1));
    assert!(fx.pool_files("a").iter().all(|f| f.ends_with(".log")));
}

#[tokio::test]
async fn a_process_that_died_while_runscale_was_down_is_cleaned_up() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let first = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let launched = first
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);
    drop(first);
    killpg(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    eventually("the process to die", || async { !running(pid, start) }).await;
    assert!(fx.pool_files("a").len() == 3, "state, credentials, log");

    let second = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    assert!(list(&second, "a").await.is_empty());
    assert_eq!(
        fx.pool_files("a"),
        [format!("{}.log", launched.id)],
        "state and credentials removed, log kept"
    );
}

#[tokio::test]
async fn a_state_file_whose_pid_was_reused_is_dead_and_that_process_is_never_signalled() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let backend = fx.backend(Duration::from_secs(1), &[("a", &t)]);
    let me = i32::try_from(std::process::id()).expect("pid");
    let (_, my_start) = stat(me).expect("own stat");
    let id = "lp-reusedpid0001";
    let write = |stopping: Option<&str>| {
        std::fs::create_dir_all(fx.state_dir().join("a")).expect("dir");
        let record = serde_json::json!({
            "version": 1, "pool": "a", "instance_id": id, "pid": me,
            "start_time": my_start + 1, "runner_names": ["rs-a-x"], "template_hash": "h",
            "launched_at": "2020-01-01T00:00:00Z", "stopping_since": stopping,
        });
        std::fs::write(
            fx.state_dir().join("a").join(format!("{id}.json")),
            serde_json::to_vec(&record).expect("json"),
        )
        .expect("write");
    };
    // Were the test process signalled (SIGTERM or SIGKILL), this test binary would die.
    write(None);
    backend
        .terminate(&PoolId::new("a"), &InstanceId::new(id))
        .await
        .expect("terminate");
    assert!(fx.pool_files("a").is_empty(), "dead record forgotten");
    write(Some("2020-01-01T00:00:01Z"));
    assert!(list(&backend, "a").await.is_empty());
    assert!(fx.pool_files("a").is_empty());
    assert!(running(me, my_start));
}

#[tokio::test]
async fn a_process_started_without_a_state_file_is_adopted() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let state_dir = fx.state_dir().canonicalize().expect("canonical");
    let id = "lp-adoptme00001";
    // What a runscale killed right after spawning (before writing the state file) leaves.
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .arg(fx.path("long.sh"))
            .arg("rs-a-orphan")
            .env("RUNSCALE_STATE_DIR", &state_dir)
            .env("RUNSCALE_POOL", "a")
            .env("RUNSCALE_INSTANCE_ID", id)
            .env("RUNSCALE_RUNNER_NAMES", "rs-a-orphan")
            .env("RUNSCALE_TEMPLATE_HASH", "old-hash")
            .env("RUNSCALE_LAUNCHED_AT", "2024-05-01T10:00:00Z")
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn")
    };
    let pid = i32::try_from(child.id()).expect("pid");
    let (_, start) = stat(pid).expect("stat");
    fx.reaper.watch(pid, start);
    // A process with another state directory is left alone.
    let mut stranger = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .arg(fx.path("long.sh"))
            .env("RUNSCALE_STATE_DIR", fx.path("elsewhere"))
            .env("RUNSCALE_POOL", "a")
            .env("RUNSCALE_INSTANCE_ID", "lp-stranger0001")
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn")
    };
    let spid = i32::try_from(stranger.id()).expect("pid");
    fx.reaper.watch(spid, stat(spid).expect("stat").1);

    let listed = list(&backend, "a").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id.as_str(), id);
    assert_eq!(listed[0].runner_names, ["rs-a-orphan"]);
    assert_eq!(listed[0].template_hash, "old-hash");
    assert_eq!(
        listed[0].launched_at.to_rfc3339(),
        "2024-05-01T10:00:00+00:00"
    );
    let state = fx
        .state_file("a", &InstanceId::new(id))
        .expect("state rebuilt");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["adopted"], true);
    assert_eq!(list(&backend, "a").await.len(), 1, "adopted once");

    backend
        .terminate(&PoolId::new("a"), &InstanceId::new(id))
        .await
        .expect("terminate");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(!status.success(), "ended by a signal");
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
    assert!(
        running(spid, stat(spid).expect("stat").1),
        "stranger untouched"
    );
    let _ = killpg(Pid::from_raw(spid), Signal::SIGKILL);
    let _ = tokio::task::spawn_blocking(move || stranger.wait()).await;
}

#[tokio::test]
async fn subscribers_hear_of_a_child_exit_and_leftovers_in_its_group_are_killed() {
    let fx = Fixture::new();
    let t = fx.template(
        "short",
        "sleep 300 &\necho $! > \"$OUT/leftover\"\nwhile [ ! -e \"$OUT/go\" ]; do sleep 0.1; done\nexit 3",
    );
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t)]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    backend.subscribe(tx);
    let launched = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect("launch");
    let (pid, start) = fx.process_of("a", &launched.id);
    let leftover = fx.path("leftover");
    eventually("the leftover pid", || {
        let leftover = leftover.clone();
        async move { std::fs::read_to_string(&leftover).is_ok_and(|s| s.ends_with('\n')) }
    })
    .await;
    let lpid: i32 = std::fs::read_to_string(&leftover)
        .expect("read")
        .trim()
        .parse()
        .expect("pid");
    let (_, lstart) = stat(lpid).expect("leftover stat");
    fx.reaper.watch(lpid, lstart);
    std::fs::write(fx.path("go"), b"").expect("go");

    let pool = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time");
    assert_eq!(pool, Some(PoolId::new("a")));
    assert!(!running(pid, start));
    assert!(list(&backend, "a").await.is_empty());
    eventually("the leftover to be killed", || async {
        !running(lpid, lstart)
    })
    .await;
    assert_eq!(fx.pool_files("a"), [format!("{}.log", launched.id)]);
}

#[tokio::test]
async fn configuration_errors_are_reported_before_anything_runs() {
    let fx = Fixture::new();
    let config = || Config {
        state_dir: fx.state_dir(),
        stop_grace: Duration::from_secs(1),
    };
    let mut empty = fx.template("x", "true");
    empty.command.clear();
    let err = LocalProcess::new(config(), HashMap::from([(PoolId::new("a"), empty)]))
        .expect_err("empty command");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.message().contains("command"), "{err}");

    let mut unknown = fx.template("x", "true");
    unknown.command.push("--token={token}".into());
    let err = LocalProcess::new(config(), HashMap::from([(PoolId::new("a"), unknown)]))
        .expect_err("unknown placeholder");
    assert!(err.message().contains("command[3]"), "{err}");

    let err = LocalProcess::new(
        config(),
        HashMap::from([(PoolId::new("../up"), fx.template("x", "true"))]),
    )
    .expect_err("unsafe pool name");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);

    // A missing program: probe says so, and launch fails as Misconfigured, leaving nothing.
    let mut missing = fx.template("x", "true");
    missing.command = vec!["/nonexistent/runner-agent".into()];
    let mut in_path = fx.template("x", "true");
    in_path.command = vec!["no-such-program-in-path-xyz".into()];
    let backend = fx.backend(Duration::from_secs(1), &[("a", &missing)]);
    let err = backend.probe().await.expect_err("probe");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.message().contains("/nonexistent/runner-agent"), "{err}");
    let err = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect_err("launch");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(!err.to_string().contains(SECRET));
    assert!(fx.pool_files("a").iter().all(|f| f.ends_with(".log")));
    assert!(list(&backend, "a").await.is_empty());
    let err = backend
        .launch(request("b", &["rs-b-1"]))
        .await
        .expect_err("no template");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);

    let backend = fx.backend(Duration::from_secs(1), &[("a", &in_path)]);
    assert!(backend.probe().await.is_err());
    let ok = fx.backend(Duration::from_secs(1), &[("a", &fx.template("x", "true"))]);
    let description = ok.probe().await.expect("probe");
    assert!(description.contains("writable"), "{description}");
}

#[tokio::test]
async fn conforms_to_the_backend_contract() {
    let fx = Fixture::new();
    let t = fx.template("long", LONG);
    let backend = fx.backend(Duration::from_secs(30), &[("a", &t), ("b", &t)]);
    let result = runscale_core::testing::conformance::backend_contract(
        &backend,
        &PoolId::new("a"),
        &PoolId::new("b"),
        registration,
    )
    .await;
    for id in std::fs::read_dir(fx.state_dir().join("a"))
        .expect("dir")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")
                .map(str::to_owned)
        })
    {
        if let Some(v) = fx.state_file("a", &InstanceId::new(&id)) {
            fx.reaper.watch(
                i32::try_from(v["pid"].as_i64().expect("pid")).expect("pid"),
                v["start_time"].as_u64().expect("start"),
            );
        }
    }
    result.expect("backend contract");
    eventually("the instance to go", || async {
        list(&backend, "a").await.is_empty()
    })
    .await;
}
