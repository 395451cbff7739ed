//! The exec provider against real commands: the file-based CI of `examples/local` (ci.sh,
//! runner.sh and enqueue.sh, run by `/bin/sh` in a temporary directory) and small `sh -c`
//! commands that misbehave on purpose.
//!
//! Every process a test starts is in its own process group and killed when the test ends;
//! waits are bounded by generous deadlines.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runscale_core::adapter_type::Validate as _;
use runscale_core::{
    ErrorKind, PoolId, Provider, ProviderView, Registration, RunnerId, RunnerState, naming,
};
use runscale_providers::exec::{Config, ExecProvider, PoolSelector};
use secrecy::ExposeSecret;

/// Deadline of every wait for the fake CI (generous: 2 cores shared with other builds).
const DEADLINE: Duration = Duration::from_secs(60);

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/local")
}

fn script(name: &str) -> String {
    scripts().join(name).display().to_string()
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn sh(command: &str) -> Vec<String> {
    argv(&["sh", "-c", command])
}

/// A config with the given commands and defaults otherwise.
fn config(observe: Vec<String>, register: Vec<String>, remove: Vec<String>) -> Config {
    Config {
        observe,
        register,
        remove,
        drain: None,
        timeout: Duration::from_secs(30),
        env: BTreeMap::new(),
        working_dir: None,
    }
}

fn selector(labels: &[&str]) -> PoolSelector {
    PoolSelector {
        labels: argv(labels),
    }
}

fn pools(list: &[(&str, &[&str])]) -> HashMap<PoolId, PoolSelector> {
    list.iter()
        .map(|(name, labels)| (PoolId::new(name), selector(labels)))
        .collect()
}

/// The file-based CI in `dir`, spoken to through ci.sh.
struct Ci {
    dir: tempfile::TempDir,
    provider: ExecProvider,
}

impl Ci {
    fn new(pool_list: &[(&str, &[&str])]) -> Ci {
        let dir = tempfile::tempdir().expect("temp dir");
        let ci = script("ci.sh");
        let mut config = config(
            argv(&["sh", &ci, "observe"]),
            argv(&["sh", &ci, "register"]),
            argv(&["sh", &ci, "remove"]),
        );
        config.drain = Some(argv(&["sh", &ci, "drain"]));
        config.env.insert(
            "RUNSCALE_CI_DIR".to_owned(),
            dir.path().display().to_string(),
        );
        assert_eq!(config.validate(), Ok(()));
        let provider = ExecProvider::new(config, pools(pool_list));
        Ci { dir, provider }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn view(&self, pool: &str) -> ProviderView {
        let pool = PoolId::new(pool);
        let mut out = self.provider.observe(std::slice::from_ref(&pool)).await;
        out.remove(&pool)
            .expect("an entry for the pool")
            .expect("observe succeeds")
    }

    async fn runner_state(&self, pool: &str, name: &str) -> Option<(RunnerState, bool)> {
        self.view(pool)
            .await
            .runners
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| (r.state, r.draining))
    }

    /// Polls until the runner is in `state` (or gone, with `None`).
    async fn wait_for_runner(&self, pool: &str, name: &str, state: Option<RunnerState>) {
        let start = Instant::now();
        loop {
            let now = self.runner_state(pool, name).await.map(|(s, _)| s);
            if now == state {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "runner {name} is {now:?}, expected {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn enqueue(&self, pool: &str, count: u32, secs: u32) -> Vec<String> {
        let out = Command::new("sh")
            .arg(script("enqueue.sh"))
            .args([pool, &count.to_string(), &secs.to_string()])
            .env("RUNSCALE_CI_DIR", self.path())
            .output()
            .expect("enqueue.sh runs");
        assert!(out.status.success(), "enqueue.sh: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn done(&self, job: &str) -> Option<String> {
        std::fs::read_to_string(self.path().join("done").join(job)).ok()
    }

    fn done_count(&self) -> usize {
        std::fs::read_dir(self.path().join("done")).map_or(0, |d| d.count())
    }

    /// Starts runner.sh the way the local-process backend does with `credentials: env`.
    fn start_runner(&self, pool: &str, registration: &Registration) -> RunnerProcess {
        let mut command = Command::new("sh");
        command
            .arg(script("runner.sh"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(registration.credentials.expose_all())
            .env("RUNSCALE_POOL", pool)
            .env("RUNSCALE_RUNNER_NAME", &registration.runner_name)
            .env("CI_POLL_INTERVAL", "0.2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = command.spawn().expect("runner.sh starts");
        RunnerProcess { child }
    }
}

/// A runner.sh process; its process group is killed when dropped.
struct RunnerProcess {
    child: Child,
}

impl RunnerProcess {
    fn pgid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    fn signal(&self, signal: Signal) {
        killpg(self.pgid(), signal).expect("signal the runner");
    }

    /// Waits (bounded) for the runner to exit by itself.
    async fn exited(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "runner.sh did not exit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn runner_name(pool: &str) -> String {
    naming::generate(pool, 1, &mut rand::rng()).1.remove(0)
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process is gone (or a zombie nobody has reaped yet).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn assert_all_dead(pid_file: &Path) {
    let pids: Vec<i32> = std::fs::read_to_string(pid_file)
        .expect("the command wrote its pids")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "shell and sleep: {pids:?}");
    until("the command's processes are gone", async || {
        pids.iter().all(|p| dead(*p))
    })
    .await;
}

#[tokio::test]
async fn runner_goes_idle_busy_and_is_removed_only_after_its_job() {
    let ci = Ci::new(&[("build", &["linux"])]);
    let name = runner_name("build");
    let pool = PoolId::new("build");

    let registration = ci.provider.register(&pool, &name).await.expect("register");
    assert_eq!(registration.runner_name, name);
    assert_eq!(registration.runner_id, Some(RunnerId::new(&name)));
    assert_eq!(
        registration.credentials.vars["CI_DIR"],
        ci.path().display().to_string()
    );
    assert_eq!(registration.credentials.vars["CI_EPHEMERAL"], "0");
    let token = registration.credentials.secrets["CI_RUNNER_TOKEN"]
        .expose_secret()
        .to_owned();
    assert_eq!(token.len(), 32, "a 128-bit token in hex");
    assert!(!format!("{registration:?}").contains(&token));

    // Registered, not connected yet.
    assert_eq!(
        ci.runner_state("build", &name).await,
        Some((RunnerState::Offline, false))
    );

    let mut runner = ci.start_runner("build", &registration);
    ci.wait_for_runner("build", &name, Some(RunnerState::Idle))
        .await;

    let jobs = ci.enqueue("build", 1, 3);
    assert_eq!(jobs.len(), 1);
    until("the runner runs the job", async || {
        let view = ci.view("build").await;
        view.demand.waiting.is_empty()
            && view.demand.running == 1
            && view
                .runners
                .iter()
                .any(|r| r.name == name && r.state == RunnerState::Busy && r.last_busy.is_some())
    })
    .await;

    let runner_id = RunnerId::new(&name);
    let busy = ci
        .provider
        .remove(&pool, &runner_id)
        .await
        .expect_err("busy runner stays");
    assert_eq!(busy.kind(), ErrorKind::Busy, "{busy}");
    assert!(runner.running(), "removing a busy runner must not stop it");

    until("the job is done", async || ci.done(&jobs[0]).is_some()).await;
    let record = ci.done(&jobs[0]).expect("done record");
    assert!(record.contains(&format!("runner={name}")), "{record}");
    assert!(record.contains("result=ok"), "{record}");
    assert!(record.contains("pool=build"), "{record}");

    // The runner returns to idle right after recording the job; until then it is busy.
    until("the idle runner is removed", async || {
        match ci.provider.remove(&pool, &runner_id).await {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::Busy => false,
            Err(e) => panic!("remove failed: {e}"),
        }
    })
    .await;
    assert!(runner.exited().await.success());
    let view = ci.view("build").await;
    assert!(view.runners.is_empty(), "{view:?}");
    assert_eq!(view.demand.running, 0);
    // Removing again: already gone is fine.
    ci.provider
        .remove(&pool, &runner_id)
        .await
        .expect("removing a gone runner is Ok");
}

#[tokio::test]
async fn ephemeral_runner_runs_one_job_then_unregisters_and_exits() {
    let ci = Ci::new(&[("once", &["ephemeral"])]);
    let name = runner_name("once");
    let registration = ci
        .provider
        .register(&PoolId::new("once"), &name)
        .await
        .expect("register");
    assert_eq!(registration.credentials.vars["CI_EPHEMERAL"], "1");
    let jobs = ci.enqueue("once", 2, 1);
    let mut runner = ci.start_runner("once", &registration);
    assert!(runner.exited().await.success());
    assert_eq!(ci.done_count(), 1, "one job per ephemeral runner");
    let view = ci.view("once").await;
    assert!(view.runners.is_empty(), "{view:?}");
    assert_eq!(view.demand.waiting.len(), 1);
    assert!(jobs.contains(&view.demand.waiting[0].id));
    assert_eq!(view.demand.running, 0);
}

#[tokio::test]
async fn sigterm_unregisters_an_idle_runner_and_lets_a_busy_one_finish_its_job() {
    let ci = Ci::new(&[("build", &[])]);
    let pool = PoolId::new("build");

    let idle_name = runner_name("build");
    let registration = ci
        .provider
        .register(&pool, &idle_name)
        .await
        .expect("register");
    let mut idle = ci.start_runner("build", &registration);
    ci.wait_for_runner("build", &idle_name, Some(RunnerState::Idle))
        .await;
    idle.signal(Signal::SIGTERM);
    assert!(idle.exited().await.success());
    ci.wait_for_runner("build", &idle_name, None).await;

    let busy_name = runner_name("build");
    let registration = ci
        .provider
        .register(&pool, &busy_name)
        .await
        .expect("register");
    let mut busy = ci.start_runner("build", &registration);
    let jobs = ci.enqueue("build", 1, 3);
    ci.wait_for_runner("build", &busy_name, Some(RunnerState::Busy))
        .await;
    // Like the local-process backend: SIGTERM to the whole process group.
    busy.signal(Signal::SIGTERM);
    assert!(busy.exited().await.success());
    assert!(
        ci.done(&jobs[0]).is_some(),
        "the job must be finished before the runner exits"
    );
    let view = ci.view("build").await;
    assert!(view.runners.is_empty(), "{view:?}");
    assert_eq!(view.demand.running, 0);
}

#[tokio::test]
async fn a_runner_killed_mid_job_is_removable_and_its_job_is_lost() {
    let ci = Ci::new(&[("build", &[])]);
    let pool = PoolId::new("build");
    let name = runner_name("build");
    let registration = ci.provider.register(&pool, &name).await.expect("register");
    let mut runner = ci.start_runner("build", &registration);
    let jobs = ci.enqueue("build", 1, 600);
    ci.wait_for_runner("build", &name, Some(RunnerState::Busy))
        .await;
    let id = RunnerId::new(&name);
    let busy = ci.provider.remove(&pool, &id).await.expect_err("busy");
    assert_eq!(busy.kind(), ErrorKind::Busy);

    runner.signal(Signal::SIGKILL);
    assert!(!runner.exited().await.success());
    ci.provider
        .remove(&pool, &id)
        .await
        .expect("a dead runner is removed");
    let record = ci.done(&jobs[0]).expect("the job is recorded");
    assert!(record.contains("result=lost"), "{record}");
    let view = ci.view("build").await;
    assert!(view.runners.is_empty(), "{view:?}");
    assert_eq!(view.demand.running, 0);
}

#[tokio::test]
async fn a_drained_runner_takes_no_job_and_is_removable() {
    let ci = Ci::new(&[("build", &[])]);
    let pool = PoolId::new("build");
    let name = runner_name("build");
    let registration = ci.provider.register(&pool, &name).await.expect("register");
    let mut runner = ci.start_runner("build", &registration);
    ci.wait_for_runner("build", &name, Some(RunnerState::Idle))
        .await;

    let id = RunnerId::new(&name);
    ci.provider.drain(&pool, &id).await.expect("drain");
    assert_eq!(
        ci.runner_state("build", &name).await,
        Some((RunnerState::Idle, true))
    );
    ci.enqueue("build", 1, 1);
    // Several poll intervals of the runner (0.2 s): a draining runner leaves the job waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = ci.view("build").await;
    assert_eq!(view.demand.waiting.len(), 1, "{view:?}");
    assert_eq!(view.runners[0].state, RunnerState::Idle);

    ci.provider.remove(&pool, &id).await.expect("remove");
    assert!(runner.exited().await.success());
    assert_eq!(ci.done_count(), 0);
    // Draining a gone runner is nothing to do.
    ci.provider.drain(&pool, &id).await.expect("drain gone");
}

#[tokio::test]
async fn runners_runscale_did_not_make_are_not_observed() {
    let ci = Ci::new(&[("build", &[])]);
    let name = runner_name("build");
    ci.provider
        .register(&PoolId::new("build"), &name)
        .await
        .expect("register");
    let runners = ci.path().join("runners");
    for foreign in ["hand-made", "rs-other-0123456789", "rs-build-short"] {
        std::fs::write(runners.join(format!("{foreign}.pool")), "build\n").expect("write");
        std::fs::write(runners.join(format!("{foreign}.token")), "t\n").expect("write");
        std::fs::write(runners.join(format!("{foreign}.idle")), "").expect("write");
    }
    // ci.sh reports them ...
    let raw = Command::new("sh")
        .args([&script("ci.sh"), "observe"])
        .env("RUNSCALE_CI_DIR", ci.path())
        .env("RUNSCALE_POOLS", "build")
        .output()
        .expect("ci.sh observe");
    let raw = String::from_utf8(raw.stdout).expect("utf-8");
    assert!(raw.contains("hand-made"), "{raw}");
    // ... and the provider drops them.
    let view = ci.view("build").await;
    let names: Vec<&str> = view.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [name.as_str()]);
}

#[tokio::test]
async fn probe_observes_every_pool() {
    let ci = Ci::new(&[("a", &[]), ("b", &["x"])]);
    let probe = ci.provider.probe().await.expect("probe");
    assert!(probe.contains("observed 2 pools"), "{probe}");
    assert_eq!(ci.provider.kind(), "exec");

    let failing = ExecProvider::new(
        config(sh("echo down >&2; exit 1"), sh("exit 1"), sh("exit 1")),
        pools(&[("a", &[])]),
    );
    let err = failing.probe().await.expect_err("probe fails");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.message().contains("down"), "{err}");
}

#[tokio::test]
async fn commands_get_the_protocol_input_env_and_working_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let observe = sh(r#"cat > stdin.json
        printf '%s' "$RUNSCALE_POOLS" > pools
        printf '%s' "$EXTRA" > extra
        printf '%s' "${RUNSCALE_RUNNER_ID-unset}" > leaked
        echo '{"pools":{"a":{"waiting":[],"running":0,"runners":[]},"b":{"waiting":[],"running":3,"runners":[]}}}'"#);
    let register = sh(
        r#"[ "$RUNSCALE_POOL" = b ] && [ "$RUNSCALE_RUNNER_NAME" = rs-b-0123456789 ] \
        && [ "$RUNSCALE_LABELS" = "x,y" ] && [ "$EXTRA" = extra-value ] || exit 9
        echo '{"vars":{"PWD_SEEN":"'"$(pwd)"'"}}'"#,
    );
    let remove =
        sh(r#"[ "$RUNSCALE_POOL" = b ] && [ "$RUNSCALE_RUNNER_ID" = r1 ] && [ ! -t 0 ] || exit 9"#);
    let mut config = config(observe, register, remove);
    config.drain = Some(sh(
        r#"[ "$RUNSCALE_RUNNER_ID" = r1 ] && touch drained || exit 9"#,
    ));
    config
        .env
        .insert("EXTRA".to_owned(), "extra-value".to_owned());
    config.working_dir = Some(dir.path().to_owned());
    let provider = ExecProvider::new(config, pools(&[("a", &[]), ("b", &["x", "y"])]));

    let asked = [PoolId::new("a"), PoolId::new("b"), PoolId::new("a")];
    let out = provider.observe(&asked).await;
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[&PoolId::new("b")].as_ref().expect("b").demand.running,
        3
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
    assert_eq!(
        read("stdin.json"),
        r#"{"pools":[{"name":"a","labels":[]},{"name":"b","labels":["x","y"]}]}"#
    );
    assert_eq!(read("pools"), "a,b");
    assert_eq!(read("extra"), "extra-value");
    assert_eq!(read("leaked"), "unset");

    let b = PoolId::new("b");
    let reg = provider
        .register(&b, "rs-b-0123456789")
        .await
        .expect("register");
    let pwd_seen = PathBuf::from(&reg.credentials.vars["PWD_SEEN"]);
    assert_eq!(
        pwd_seen.canonicalize().expect("pwd"),
        dir.path().canonicalize().expect("dir")
    );
    assert_eq!(reg.runner_id, None);
    provider
        .remove(&b, &RunnerId::new("r1"))
        .await
        .expect("remove");
    provider
        .drain(&b, &RunnerId::new("r1"))
        .await
        .expect("drain");
    assert!(dir.path().join("drained").exists());
}

#[tokio::test]
async fn a_pool_missing_from_the_answer_fails_alone() {
    let provider = ExecProvider::new(
        config(
            sh(r#"echo '{"pools":{"a":{"waiting":[],"running":0,"runners":[]}}}'"#),
            sh("exit 1"),
            sh("exit 1"),
        ),
        pools(&[("a", &[]), ("b", &[])]),
    );
    let out = provider
        .observe(&[PoolId::new("a"), PoolId::new("b"), PoolId::new("zzz")])
        .await;
    assert!(out[&PoolId::new("a")].is_ok());
    let b = out[&PoolId::new("b")].as_ref().expect_err("b missing");
    assert_eq!(b.kind(), ErrorKind::Protocol);
    assert!(b.message().contains("\"b\""), "{b}");
    let zzz = out[&PoolId::new("zzz")].as_ref().expect_err("not bound");
    assert_eq!(zzz.kind(), ErrorKind::Misconfigured);
    assert!(zzz.message().contains("zzz"), "{zzz}");
}

#[tokio::test]
async fn unparsable_output_is_a_protocol_error_saying_where() {
    let cases = [
        (r#"printf '{"pools": {\n  "a": [}'"#, "line 2"),
        (
            r#"echo '{"pools":{"a":{"waiting":[],"running":0,"runners":[{"id":"1","name":"x","state":"sleepy"}]}}}'"#,
            "pools.a.runners[0].state",
        ),
        (
            r#"echo '{"pools":{"a":{"waiting":[{"id":"j","queued_at":"yesterday"}],"running":0,"runners":[]}}}'"#,
            "pools.a.waiting[0].queued_at",
        ),
        ("echo", "nothing on stdout"),
    ];
    for (command, expected) in cases {
        let provider = ExecProvider::new(
            config(sh(command), sh("exit 1"), sh("exit 1")),
            pools(&[("a", &[])]),
        );
        let mut out = provider.observe(&[PoolId::new("a")]).await;
        let err = out
            .remove(&PoolId::new("a"))
            .expect("entry")
            .expect_err("unparsable");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains(expected), "{expected:?} in {err}");
    }
}

#[tokio::test]
async fn a_failing_command_is_transient_and_quotes_the_start_of_stderr() {
    let provider = ExecProvider::new(
        config(
            sh(
                "echo 'cannot reach ci.example' >&2; head -c 5000 /dev/zero | tr '\\0' x >&2; exit 2",
            ),
            sh("echo 'register refused' >&2; exit 1"),
            sh("exit 1"),
        ),
        pools(&[("a", &[]), ("b", &[])]),
    );
    let out = provider
        .observe(&[PoolId::new("a"), PoolId::new("b")])
        .await;
    for pool in ["a", "b"] {
        let err = out[&PoolId::new(pool)].as_ref().expect_err("fails");
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(
            err.message()
                .contains("exit status 2: cannot reach ci.example"),
            "{err}"
        );
        assert!(
            err.message().len() < 500,
            "bounded: {}",
            err.message().len()
        );
    }
    let err = provider
        .register(&PoolId::new("a"), "rs-a-0123456789")
        .await
        .expect_err("fails");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.message().contains("register refused"), "{err}");
}

#[tokio::test]
async fn remove_and_drain_exit_codes() {
    let provider = |remove: &str, drain: Option<&str>| {
        let mut config = config(sh("exit 1"), sh("exit 1"), sh(remove));
        config.drain = drain.map(sh);
        ExecProvider::new(config, pools(&[("p", &[])]))
    };
    let pool = PoolId::new("p");
    let id = RunnerId::new("r1");

    provider("exit 0", None)
        .remove(&pool, &id)
        .await
        .expect("exit 0 is removed");
    let busy = provider("echo busy >&2; exit 3", None)
        .remove(&pool, &id)
        .await
        .expect_err("exit 3");
    assert_eq!(busy.kind(), ErrorKind::Busy);
    assert!(busy.message().contains("r1"), "{busy}");
    let failed = provider("echo nope >&2; exit 1", None)
        .remove(&pool, &id)
        .await
        .expect_err("exit 1");
    assert_eq!(failed.kind(), ErrorKind::Transient);
    assert!(failed.message().contains("nope"), "{failed}");
    let killed = provider("kill -9 $$", None)
        .remove(&pool, &id)
        .await
        .expect_err("signal");
    assert_eq!(killed.kind(), ErrorKind::Transient);
    assert!(killed.message().contains("signal 9"), "{killed}");

    // Without a drain command, draining does nothing (the remove command is not run).
    provider("exit 1", None)
        .drain(&pool, &id)
        .await
        .expect("no drain command");
    let drain_failed = provider("exit 0", Some("exit 3"))
        .drain(&pool, &id)
        .await
        .expect_err("drain fails");
    assert_eq!(drain_failed.kind(), ErrorKind::Transient);

    let unbound = provider("exit 0", None)
        .remove(&PoolId::new("other"), &id)
        .await
        .expect_err("unbound pool");
    assert_eq!(unbound.kind(), ErrorKind::Misconfigured);
}

#[tokio::test]
async fn a_missing_program_is_misconfigured() {
    let provider = ExecProvider::new(
        config(
            argv(&["/nonexistent/runscale-ci"]),
            sh("exit 1"),
            sh("exit 1"),
        ),
        pools(&[("a", &[])]),
    );
    let err = provider.probe().await.expect_err("cannot start");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.message().contains("could not be started"), "{err}");
}

#[tokio::test]
async fn a_command_that_runs_too_long_is_killed_with_its_children() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pids");
    let mut config = config(
        sh(&format!(
            "echo $$ > {0}; sleep 60 & echo $! >> {0}; wait",
            pid_file.display()
        )),
        sh("exit 1"),
        sh("exit 1"),
    );
    config.timeout = Duration::from_secs(1);
    let provider = ExecProvider::new(config, pools(&[("a", &[])]));
    let start = Instant::now();
    let mut out = provider.observe(&[PoolId::new("a")]).await;
    let elapsed = start.elapsed();
    let err = out
        .remove(&PoolId::new("a"))
        .expect("entry")
        .expect_err("timeout");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.message().contains("timed out after 1s"), "{err}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert_all_dead(&pid_file).await;
}

#[tokio::test]
async fn a_cancelled_call_leaves_no_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pids");
    let provider = ExecProvider::new(
        config(
            sh(&format!(
                "echo $$ > {0}; sleep 60 & echo $! >> {0}; wait",
                pid_file.display()
            )),
            sh("exit 1"),
            sh("exit 1"),
        ),
        pools(&[("a", &[])]),
    );
    let pools = [PoolId::new("a")];
    let mut call = Box::pin(provider.observe(&pools));
    // Let the command start and write its pids, then drop the call.
    let started = async {
        until("the command started", async || {
            std::fs::read_to_string(&pid_file).is_ok_and(|s| s.lines().count() == 2)
        })
        .await;
    };
    tokio::select! {
        _ = &mut call => panic!("the command cannot finish"),
        () = started => {}
    }
    drop(call);
    assert_all_dead(&pid_file).await;
}

#[tokio::test]
async fn endless_output_is_cut_off() {
    let provider = ExecProvider::new(
        config(argv(&["yes"]), sh("exit 1"), sh("exit 1")),
        pools(&[("a", &[])]),
    );
    let mut out = provider.observe(&[PoolId::new("a")]).await;
    let err = out
        .remove(&PoolId::new("a"))
        .expect("entry")
        .expect_err("too much");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("more than"), "{err}");
}

#[tokio::test]
async fn register_secrets_stay_out_of_debug_and_errors() {
    const SECRET: &str = "s3cret-value-9f8e";
    let good = ExecProvider::new(
        config(
            sh("exit 1"),
            sh(&format!(
                r#"echo '{{"runner_id":42,"vars":{{"URL":"http://ci"}},"secrets":{{"TOKEN":"{SECRET}"}}}}'"#
            )),
            sh("exit 1"),
        ),
        pools(&[("a", &[])]),
    );
    let reg = good
        .register(&PoolId::new("a"), "rs-a-0123456789")
        .await
        .expect("register");
    assert_eq!(reg.runner_id, Some(RunnerId::new("42")));
    assert_eq!(reg.credentials.secrets["TOKEN"].expose_secret(), SECRET);
    assert!(!format!("{reg:?}").contains(SECRET));

    for output in [
        format!(r#"{{"secrets":{{"TOKEN":"{SECRET}"}},"extra":true}}"#),
        format!(r#"{{"secrets":{{"TOKEN":"{SECRET}""#),
        format!(r#"{{"secrets":["{SECRET}"]}}"#),
        format!(r#"{{"secrets":{{"TOKEN":"{SECRET}"}},"vars":{{"TOKEN":"{SECRET}"}}}}"#),
    ] {
        let bad = ExecProvider::new(
            config(
                sh("exit 1"),
                sh(&format!("printf '%s' '{output}'")),
                sh("exit 1"),
            ),
            pools(&[("a", &[])]),
        );
        let err = bad
            .register(&PoolId::new("a"), "rs-a-0123456789")
            .await
            .expect_err("bad output");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
    }
}
