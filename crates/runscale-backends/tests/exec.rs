//! The exec backend against real executables: the local example of `deploy/exec/` (runners as
//! background processes) for create/list/delete and the core conformance suite, and small
//! `sh` scripts for exit codes, timeouts, bad answers, listing lag and secret handling.

#![cfg(feature = "exec")]

#[path = "fixtures/exec/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use runscale_backends::exec::{Config, ExecBackend, PoolTemplate};
use runscale_core::{
    Backend, Credentials, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest, PoolId,
    Registration, RunnerId,
};
use secrecy::SecretString;
use support::{
    Reaper, assert_killed, eventually, example_backend, example_template, idle_runner,
    tools_present, write_script,
};

const SECRET: &str = "jit-s3cret-52ab9e";
const WAIT: Duration = Duration::from_secs(20);

/// A launch of `names` for `pool`: each runner gets a URL and the [`SECRET`] token.
fn request(pool: &str, names: &[&str]) -> LaunchRequest {
    let runners = names
        .iter()
        .map(|name| Registration {
            runner_name: (*name).to_owned(),
            runner_id: Some(RunnerId::new("17")),
            credentials: Credentials {
                vars: BTreeMap::from([("RUNNER_URL".into(), "https://ci.example".into())]),
                secrets: BTreeMap::from([(
                    "RUNNER_TOKEN".into(),
                    SecretString::from(SECRET.to_owned()),
                )]),
            },
        })
        .collect();
    LaunchRequest {
        pool: PoolId::new(pool),
        runners,
        template_hash: "hash-1".into(),
    }
}

/// The instances `backend` lists for `pool` (the answer must name the pool).
async fn list(backend: &ExecBackend, pool: &str) -> Vec<Instance> {
    let pool = PoolId::new(pool);
    let mut all = backend
        .instances(std::slice::from_ref(&pool))
        .await
        .expect("instances");
    all.remove(&pool).expect("every requested pool is answered")
}

/// A runner for the local example: copies its credentials file, argv and environment to
/// `$OUT`, then runs until SIGTERM.
fn recording_runner(dir: &Path) -> Vec<String> {
    let path = dir.join("runner.sh");
    write_script(
        &path,
        "cp \"$RUNSCALE_CREDENTIALS_FILE\" \"$OUT/$RUNSCALE_INSTANCE_ID.credentials\"\n\
         stat -c %a \"$RUNSCALE_CREDENTIALS_FILE\" > \"$OUT/$RUNSCALE_INSTANCE_ID.mode\"\n\
         tr '\\0' '\\n' < /proc/$$/cmdline > \"$OUT/$RUNSCALE_INSTANCE_ID.argv\"\n\
         env > \"$OUT/$RUNSCALE_INSTANCE_ID.env\"\n\
         trap 'exit 0' TERM\n\
         while :; do sleep 0.1; done",
    );
    vec!["/bin/sh".into(), path.to_string_lossy().into_owned()]
}

/// A backend whose executable is the `sh` script `body` (stdin is the request).
fn script_backend(dir: &Path, body: &str, tune: impl FnOnce(&mut Config)) -> ExecBackend {
    let path = dir.join(format!("exec-{}.sh", rand::random::<u32>()));
    write_script(&path, body);
    let mut config = Config::new(vec![path.to_string_lossy().into_owned()]);
    config
        .env
        .insert("OUT".into(), dir.to_string_lossy().into_owned());
    tune(&mut config);
    ExecBackend::new(
        config,
        HashMap::from([
            (PoolId::new("a"), PoolTemplate::default()),
            (PoolId::new("b"), PoolTemplate::default()),
        ]),
    )
    .expect("backend")
}

#[tokio::test]
async fn the_local_example_creates_lists_and_deletes_runner_processes() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let reaper = Reaper::new(state.clone());
    let env = BTreeMap::from([("OUT".to_owned(), dir.path().to_string_lossy().into_owned())]);
    let t = example_template(&state, &recording_runner(dir.path()), &env);
    let backend = example_backend(&[("a", t.clone()), ("b", t)]);

    let started = Instant::now();
    let launched = backend
        .launch(request("a", &["rs-a-abcdefghij-1", "rs-a-abcdefghij-2"]))
        .await
        .expect("launch");
    let create_ms = started.elapsed().as_millis();
    reaper.watch_recorded();
    assert_eq!(launched.id, InstanceId::new("rs-a-abcdefghij"));
    let started = Instant::now();
    let listed = list(&backend, "a").await;
    let list_ms = started.elapsed().as_millis();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, launched.id);
    assert_eq!(listed[0].state, InstanceState::Running);
    assert_eq!(listed[0].template_hash, "hash-1");
    assert_eq!(
        listed[0].runner_names,
        ["rs-a-abcdefghij-1", "rs-a-abcdefghij-2"]
    );
    assert!(list(&backend, "b").await.is_empty(), "pools stay apart");

    // The runner got its credentials through the 0600 file, and nowhere else.
    let out = |ext: &str| {
        let path = dir.path().join(format!("{}.{ext}", launched.id));
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        text
    };
    let credentials: serde_json::Value =
        serde_json::from_str(&out("credentials")).expect("credentials json");
    assert_eq!(
        credentials["runners"][1],
        serde_json::json!({"name": "rs-a-abcdefghij-2", "runner_id": "17",
            "vars": {"RUNNER_URL": "https://ci.example"}, "secrets": {"RUNNER_TOKEN": SECRET}})
    );
    assert_eq!(out("mode").trim(), "600");
    assert!(
        !out("argv").contains(SECRET),
        "no secret in the runner's argv"
    );
    let env = out("env");
    assert!(env.contains("RUNSCALE_RUNNER_NAMES=rs-a-abcdefghij-1,rs-a-abcdefghij-2"));
    assert!(
        !env.contains(SECRET),
        "no secret in the runner's environment"
    );
    let log = std::fs::read_to_string(state.join("a").join(format!("{}.log", launched.id)))
        .unwrap_or_default();
    assert!(!log.contains(SECRET), "no secret in the log");

    // A retried create finds the first machine.
    let again = backend
        .launch(request("a", &["rs-a-abcdefghij-1", "rs-a-abcdefghij-2"]))
        .await
        .expect("retried launch");
    assert_eq!(again.id, launched.id);
    assert_eq!(list(&backend, "a").await.len(), 1);

    let started = Instant::now();
    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("delete");
    let delete_ms = started.elapsed().as_millis();
    let after = list(&backend, "a").await;
    assert!(
        after.iter().all(|i| i.state == InstanceState::Stopping),
        "{after:?}"
    );
    eventually("the runner to exit", WAIT, async || {
        list(&backend, "a").await.is_empty()
    })
    .await;
    backend
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("deleting a gone instance is ok (exit 3)");
    backend
        .terminate(&PoolId::new("a"), &InstanceId::new("never-existed"))
        .await
        .expect("unknown id is ok");
    let files: Vec<String> = std::fs::read_dir(state.join("a"))
        .expect("dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect();
    assert!(
        files.iter().all(|f| f.ends_with(".log")),
        "only logs left: {files:?}"
    );
    println!("local example: create {create_ms} ms, list {list_ms} ms, delete {delete_ms} ms");
}

#[tokio::test]
async fn the_local_example_conforms_to_the_backend_contract() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _reaper = Reaper::new(state.clone());
    let runner = idle_runner();
    let t = example_template(&state, &runner, &BTreeMap::new());
    let backend = example_backend(&[("a", t.clone()), ("b", t)]);
    runscale_core::testing::conformance::backend_contract(
        &backend,
        &PoolId::new("a"),
        &PoolId::new("b"),
        |name| {
            request("a", &[name])
                .runners
                .pop()
                .expect("one registration")
        },
    )
    .await
    .expect("backend contract");
    let probe = backend.probe().await.expect("probe");
    assert!(
        probe.contains("pool a:") && probe.contains("writable"),
        "{probe}"
    );
}

#[tokio::test]
async fn exit_codes_map_to_error_kinds_and_exit_3_makes_delete_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with_code = |code: i32| {
        script_backend(
            dir.path(),
            &format!("cat >/dev/null\necho 'cloud says: quota exceeded' >&2\nexit {code}"),
            |_| {},
        )
    };
    let pool = PoolId::new("a");
    let err = with_code(75)
        .instances(std::slice::from_ref(&pool))
        .await
        .expect_err("75");
    assert_eq!(err.kind(), ErrorKind::Transient);
    let err = with_code(4)
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect_err("4");
    assert_eq!(err.kind(), ErrorKind::InsufficientCapacity);
    let err = with_code(78).probe().await.expect_err("78");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    let err = with_code(3)
        .instances(std::slice::from_ref(&pool))
        .await
        .expect_err("3");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    with_code(3)
        .terminate(&pool, &InstanceId::new("i-1"))
        .await
        .expect("exit 3 on delete is success");
    let err = with_code(1)
        .terminate(&pool, &InstanceId::new("i-1"))
        .await
        .expect_err("1");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    let message = err.to_string();
    assert!(
        message.contains("status 1") && message.contains("cloud says: quota exceeded"),
        "the error quotes stderr: {message}"
    );
    assert!(message.contains("delete for pool a"), "{message}");

    let missing = ExecBackend::new(
        Config::new(vec![dir.path().join("nope").to_string_lossy().into_owned()]),
        HashMap::from([(pool.clone(), PoolTemplate::default())]),
    )
    .expect("backend");
    let err = missing.probe().await.expect_err("missing program");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    let err = missing
        .launch(request("zzz", &["rs-zzz-1"]))
        .await
        .expect_err("unknown pool");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(
        ExecBackend::new(Config::new(Vec::new()), HashMap::new()).is_err(),
        "an empty command is refused at build time"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = script_backend(
        dir.path(),
        "cat >/dev/null\nsleep 60 &\necho $! > \"$OUT/child\"\nwait",
        |c| c.timeouts.list = Duration::from_millis(1500),
    );
    let started = Instant::now();
    let err = backend
        .instances(&[PoolId::new("a")])
        .await
        .expect_err("timeout");
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("timed out after 1.5s"), "{err}");
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    assert_killed(
        &dir.path().join("child"),
        "the background child of the timed-out run",
    );
    println!(
        "timeout: error after {} ms, group killed",
        elapsed.as_millis()
    );
}

#[tokio::test]
async fn bad_answers_are_protocol_errors_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let answer = |stdout: &str| {
        script_backend(
            dir.path(),
            &format!("cat >/dev/null\ncat <<'EOF'\n{stdout}\nEOF"),
            |c| c.max_output = 4096,
        )
    };
    let pool = PoolId::new("a");
    for (stdout, expect) in [
        ("not json", "not the expected JSON"),
        (r#"{"instances":[{"id":1}]}"#, "instances[0].id"),
        (
            r#"{"instances":[{"id":"1","runner_names":[],"state":"up","created_at":"2026-11-30T00:00:00Z","template_hash":""}]}"#,
            "instances[0].state",
        ),
        (
            r#"{"instances":[{"id":"1","runner_names":[],"state":"running","created_at":"yesterday","template_hash":""}]}"#,
            "instances[0].created_at",
        ),
        (
            r#"{"instances":[{"id":"","runner_names":[],"state":"running","created_at":"2026-11-30T00:00:00Z","template_hash":""}]}"#,
            "instances[0].id` is empty",
        ),
        (
            r#"{"instances":[]} {"instances":[]}"#,
            "more than one JSON value",
        ),
        (r#"{"instance":[]}"#, "instance"),
    ] {
        let err = answer(stdout)
            .instances(std::slice::from_ref(&pool))
            .await
            .expect_err(stdout);
        assert_eq!(err.kind(), ErrorKind::Protocol, "{stdout}: {err}");
        assert!(err.to_string().contains(expect), "{stdout}: {err}");
    }
    let err = answer(r#"{"ok":false}"#)
        .terminate(&pool, &InstanceId::new("x"))
        .await
        .expect_err("ok false");
    assert!(err.to_string().contains("`ok` is false"), "{err}");

    let flood = script_backend(
        dir.path(),
        "cat >/dev/null\nhead -c 100000 /dev/zero | tr '\\0' x",
        |c| c.max_output = 4096,
    );
    let err = flood.instances(&[pool]).await.expect_err("too much output");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("more than 4096 bytes"), "{err}");
}

#[tokio::test]
async fn secrets_travel_on_stdin_only_and_never_reach_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Records its argv, environment and request, then misbehaves: prints the secret on stderr
    // and fails.
    let backend = script_backend(
        dir.path(),
        "cat > \"$OUT/request\"\n\
         tr '\\0' '\\n' < /proc/$$/cmdline > \"$OUT/argv\"\n\
         env > \"$OUT/env\"\n\
         echo \"cannot create: token $(grep -o 'jit-s3cret-[a-z0-9]*' \"$OUT/request\" | head -1) rejected\" >&2\n\
         exit 1",
        |_| {},
    );
    let err = backend
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect_err("fails");
    let message = err.to_string();
    assert!(!message.contains(SECRET), "secret in the error: {message}");
    assert!(message.contains("token [redacted] rejected"), "{message}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
    let sent: serde_json::Value = serde_json::from_str(&read("request")).expect("request");
    assert_eq!(sent["action"], "create");
    assert_eq!(sent["version"], 1);
    assert_eq!(sent["runners"][0]["secrets"]["RUNNER_TOKEN"], SECRET);
    assert!(!read("argv").contains(SECRET));
    let env = read("env");
    assert!(!env.contains(SECRET));
    assert!(env.contains("RUNSCALE_EXEC_ACTION=create") && env.contains("RUNSCALE_POOL=a"));

    // An answer echoing the secret where a value does not fit: the parse error is redacted.
    let echo = script_backend(
        dir.path(),
        "t=$(grep -o 'jit-s3cret-[a-z0-9]*' | head -1)\nprintf '{\"id\":\"m\",\"state\":\"%s\"}' \"$t\"",
        |_| {},
    );
    let err = echo
        .launch(request("a", &["rs-a-1"]))
        .await
        .expect_err("bad state");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("`state`"), "{err}");
    assert!(!err.to_string().contains(SECRET), "{err}");
    assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
}

#[tokio::test]
async fn created_instances_are_listed_while_the_listing_lags_and_deleted_ones_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cloud whose listing never shows new machines and always shows "m-old" running.
    let backend = script_backend(
        dir.path(),
        "case $(cat) in\n\
         *'\"action\":\"create\"'*) echo '{\"id\":\"m-new\"}' ;;\n\
         *'\"action\":\"delete\"'*) echo '{\"ok\":true}' ;;\n\
         *) echo '{\"instances\":[{\"id\":\"m-old\",\"runner_names\":[\"rs-a-old\"],\
         \"state\":\"running\",\"created_at\":\"2026-11-30T00:00:00Z\",\"template_hash\":\"h0\"}]}' ;;\n\
         esac",
        |c| c.listing_grace = Duration::from_secs(2),
    );
    let launched = backend
        .launch(request("a", &["rs-a-new"]))
        .await
        .expect("launch");
    assert_eq!(
        launched.state,
        InstanceState::Booting,
        "state defaults to booting"
    );
    let listed = list(&backend, "a").await;
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["m-old", "m-new"],
        "the new one is listed although the cloud lags"
    );
    assert_eq!(listed[1].runner_names, ["rs-a-new"]);
    assert_eq!(listed[1].template_hash, "hash-1");

    backend
        .terminate(&PoolId::new("a"), &InstanceId::new("m-old"))
        .await
        .expect("delete");
    let listed = list(&backend, "a").await;
    assert_eq!(listed[0].id.as_str(), "m-old");
    assert_eq!(
        listed[0].state,
        InstanceState::Stopping,
        "deleted: stopping"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let listed = list(&backend, "a").await;
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["m-old"], "past the grace the listing alone counts");
    assert_eq!(listed[0].state, InstanceState::Running);
}

#[tokio::test]
async fn a_restarted_runscale_finds_the_machines_through_list_alone() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let reaper = Reaper::new(state.clone());
    let runner = idle_runner();
    let t = example_template(&state, &runner, &BTreeMap::new());
    let first = example_backend(&[("a", t.clone())]);
    let launched = first
        .launch(request("a", &["rs-a-0123456789"]))
        .await
        .expect("launch");
    reaper.watch_recorded();
    drop(first);

    // A new backend object: nothing in memory, everything from the script's listing.
    let second = example_backend(&[("a", t)]);
    let listed = list(&second, "a").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, launched.id);
    assert_eq!(listed[0].runner_names, ["rs-a-0123456789"]);
    assert_eq!(listed[0].template_hash, "hash-1");
    second
        .terminate(&PoolId::new("a"), &launched.id)
        .await
        .expect("delete");
    eventually("the machine to go", WAIT, async || {
        list(&second, "a").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_call_kills_the_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = script_backend(
        dir.path(),
        "cat >/dev/null\nsleep 60 &\necho $! > \"$OUT/child\"\nwait",
        |_| {},
    );
    // The reconciler dropping a launch (its pass cancelled) must not leave the run behind.
    let backend = std::sync::Arc::new(backend);
    let call = {
        let backend = std::sync::Arc::clone(&backend);
        tokio::spawn(async move { backend.launch(request("a", &["rs-a-1"])).await })
    };
    let pid_file = dir.path().join("child");
    eventually("the script to start its child", WAIT, async || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    call.abort();
    assert!(call.await.is_err_and(|e| e.is_cancelled()), "still running");
    assert_killed(&pid_file, "the cancelled run's child");
}

#[tokio::test]
async fn a_chatty_stderr_is_drained_and_its_end_quoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = script_backend(
        dir.path(),
        "cat >/dev/null\nhead -c 2000000 /dev/zero | tr '\\0' 'x' >&2\necho >&2\necho 'API said: quota exceeded' >&2\nexit 1",
        |_| {},
    );
    let err = backend
        .instances(&[PoolId::new("a")])
        .await
        .expect_err("fails");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    let message = err.to_string();
    assert!(message.ends_with("API said: quota exceeded"), "{message}");
    assert!(
        message.len() < 1000,
        "only an excerpt: {} bytes",
        message.len()
    );
}

#[tokio::test]
async fn reuse_hands_fresh_runners_on_stdin_and_lists_them_while_the_listing_lags() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cloud whose listing shows "m-1" with its old runner until told otherwise, then with
    // what the last reuse recorded; an unknown machine is exit 3.
    let backend = script_backend(
        dir.path(),
        "req=$(cat)\n\
         case $req in\n\
         *'\"action\":\"reuse\"'*)\n\
           case $req in *'\"instance_id\":\"m-1\"'*) ;; *) exit 3 ;; esac\n\
           printf '%s' \"$req\" > \"$OUT/reuse\"; echo '{\"ok\":true}' ;;\n\
         *) if [ -e \"$OUT/caught-up\" ]; then\n\
              echo '{\"instances\":[{\"id\":\"m-1\",\"runner_names\":[\"rs-a-again\"],\"state\":\"running\",\
         \"created_at\":\"2026-11-30T00:00:00Z\",\"template_hash\":\"h0\",\"uses\":2,\"reused_at\":\"2026-11-30T01:00:00Z\"}]}'\n\
            else\n\
              echo '{\"instances\":[{\"id\":\"m-1\",\"runner_names\":[\"rs-a-old\"],\"state\":\"running\",\
         \"created_at\":\"2026-11-30T00:00:00Z\",\"template_hash\":\"h0\"}]}'\n\
            fi ;;\n\
         esac",
        |c| c.listing_grace = Duration::from_secs(30),
    );
    let pool = PoolId::new("a");
    let fresh = request("a", &["rs-a-again"]).runners;
    backend
        .reuse(runscale_core::ReuseRequest {
            pool: pool.clone(),
            instance: InstanceId::new("m-1"),
            runners: fresh.clone(),
            uses: 2,
        })
        .await
        .expect("reuse");
    let sent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reuse")).expect("request"))
            .expect("json");
    assert_eq!(sent["action"], "reuse");
    assert_eq!(sent["uses"], 2);
    assert_eq!(sent["runner_names"][0], "rs-a-again");
    assert_eq!(sent["runners"][0]["secrets"]["RUNNER_TOKEN"], SECRET);

    // The lagging listing still names the old runner: the new one is listed instead.
    let listed = list(&backend, "a").await;
    assert_eq!(listed[0].runner_names, ["rs-a-again"]);
    assert_eq!(listed[0].uses(), 2);
    assert_eq!(listed[0].template_hash, "h0", "the rest is the listing's");
    // Caught up: the listing's own record, also what a restarted runscale sees.
    std::fs::write(dir.path().join("caught-up"), "").expect("write");
    let listed = list(&backend, "a").await;
    assert_eq!(listed[0].runner_names, ["rs-a-again"]);
    let reused = listed[0].reused.expect("reused");
    assert_eq!(
        (reused.uses, reused.at.to_rfc3339()),
        (2, "2026-11-30T01:00:00+00:00".to_owned())
    );

    // A machine that is gone: NotFound, and nothing recorded.
    let err = backend
        .reuse(runscale_core::ReuseRequest {
            pool,
            instance: InstanceId::new("m-gone"),
            runners: fresh,
            uses: 2,
        })
        .await
        .expect_err("gone");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_listed_reuse_needs_both_uses_and_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = script_backend(
        dir.path(),
        "cat >/dev/null\necho '{\"instances\":[{\"id\":\"m-1\",\"runner_names\":[],\"state\":\"running\",\
         \"created_at\":\"2026-11-30T00:00:00Z\",\"template_hash\":\"h0\",\"uses\":3}]}'",
        |_| {},
    );
    let err = backend
        .instances(&[PoolId::new("a")])
        .await
        .expect_err("uses without reused_at");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("instances[0].reused_at"), "{err}");
}
