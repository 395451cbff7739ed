//! The deployment files next to the exec backend: the Hetzner example `deploy/exec/hcloud.sh`
//! driven by the exec backend against stand-ins for `hcloud` and `ssh`
//! (`tests/fixtures/exec/fakebin/`), and the systemd units of `deploy/systemd/` checked with
//! `systemd-analyze`.

#![cfg(feature = "exec")]

#[path = "fixtures/exec/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use runscale_backends::exec::{Config, ExecBackend, PoolTemplate};
use runscale_core::{
    Backend, Credentials, ErrorKind, InstanceId, InstanceState, LaunchRequest, PoolId, Registration,
};
use secrecy::SecretString;

const SECRET: &str = "glrt-s3cret-0b7d1e";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The exec backend running `deploy/exec/hcloud.sh` with the fake `hcloud` and `ssh` first in
/// `PATH`, their state and call logs in `fake`.
fn hcloud_backend(fake: &Path) -> ExecBackend {
    let fakebin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exec/fakebin");
    let mut config = Config::new(vec![
        "bash".to_owned(),
        repo()
            .join("deploy/exec/hcloud.sh")
            .to_string_lossy()
            .into_owned(),
    ]);
    config.env = BTreeMap::from([
        (
            "PATH".to_owned(),
            format!(
                "{}:{}",
                fakebin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("FAKE_DIR".to_owned(), fake.to_string_lossy().into_owned()),
        ("HOME".to_owned(), fake.to_string_lossy().into_owned()),
        ("HCLOUD_TOKEN".to_owned(), "not-used-by-the-fake".to_owned()),
    ]);
    let key = fake.join("id_ed25519");
    std::fs::write(&key, "fake key").expect("key");
    let template: PoolTemplate = serde_json::from_value(serde_json::json!({
        "params": {
            "server_type": "cx22",
            "image": "ubuntu-24.04",
            "location": "fsn1",
            "ssh_key": "runscale",
            "ssh_private_key": key,
            "boot_wait": 10,
        }
    }))
    .expect("template");
    ExecBackend::new(config, HashMap::from([(PoolId::new("linux"), template)])).expect("backend")
}

fn launch_request() -> LaunchRequest {
    let runners = ["rs-linux-abcdefghij-1", "rs-linux-abcdefghij-2"]
        .into_iter()
        .map(|name| Registration {
            runner_name: name.to_owned(),
            runner_id: None,
            credentials: Credentials {
                vars: BTreeMap::from([("CI_SERVER_URL".into(), "https://gitlab.example".into())]),
                secrets: BTreeMap::from([(
                    "CI_RUNNER_TOKEN".into(),
                    SecretString::from(SECRET.to_owned()),
                )]),
            },
        })
        .collect();
    LaunchRequest {
        pool: PoolId::new("linux"),
        runners,
        template_hash: "h1".into(),
    }
}

#[tokio::test]
async fn the_hcloud_example_creates_lists_and_deletes_labelled_servers() {
    if !support::tools_present() {
        return;
    }
    let fake = tempfile::tempdir().expect("tempdir");
    let backend = hcloud_backend(fake.path());
    let pool = PoolId::new("linux");
    let read = |name: &str| std::fs::read_to_string(fake.path().join(name)).unwrap_or_default();

    let created = backend.launch(launch_request()).await.expect("create");
    assert_eq!(created.id, InstanceId::new("4242"));
    assert_eq!(created.state, InstanceState::Booting);
    let calls = read("hcloud.calls");
    assert!(
        calls.contains("server create -o json --name rs-linux-abcdefghij --type cx22")
            && calls.contains("--label runscale/pool=linux")
            && calls.contains("--label runscale/template-hash=h1")
            && calls.contains("--label runscale/slots=2"),
        "{calls}"
    );
    // The credentials went over SSH's stdin, not into argv or user data.
    let delivered: serde_json::Value =
        serde_json::from_str(&read("ssh.stdin")).expect("credentials json");
    assert_eq!(delivered["runners"][1]["name"], "rs-linux-abcdefghij-2");
    assert_eq!(
        delivered["runners"][1]["secrets"]["CI_RUNNER_TOKEN"],
        SECRET
    );
    assert!(read("ssh.calls").contains("root@192.0.2.10"));
    for log in ["hcloud.calls", "ssh.calls"] {
        assert!(!read(log).contains(SECRET), "secret in the argv of {log}");
    }

    // A stray server of the pool without runscale's slot label is listed under its name.
    std::fs::write(
        fake.path().join("server-7.json"),
        r#"{"id":7,"name":"stray","status":"starting","created":"2026-11-30T07:00:00+00:00",
            "labels":{"runscale/pool":"linux"},"public_net":{"ipv4":{"ip":"192.0.2.7"}}}"#,
    )
    .expect("stray");
    let listed = backend
        .instances(std::slice::from_ref(&pool))
        .await
        .expect("list")
        .remove(&pool)
        .expect("pool");
    let summary: Vec<(String, Vec<String>, InstanceState, String)> = listed
        .iter()
        .map(|i| {
            (
                i.id.as_str().to_owned(),
                i.runner_names.clone(),
                i.state,
                i.template_hash.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "7".to_owned(),
                vec!["stray".to_owned()],
                InstanceState::Booting,
                String::new()
            ),
            (
                "4242".to_owned(),
                vec![
                    "rs-linux-abcdefghij-1".to_owned(),
                    "rs-linux-abcdefghij-2".to_owned()
                ],
                InstanceState::Booting,
                "h1".to_owned()
            ),
        ]
    );

    // A retried create finds the server instead of making a second one.
    let again = backend
        .launch(launch_request())
        .await
        .expect("retried create");
    assert_eq!(again.id, created.id);
    assert_eq!(read("hcloud.calls").matches("server create").count(), 1);

    backend
        .terminate(&pool, &InstanceId::new("4242"))
        .await
        .expect("delete");
    assert!(!fake.path().join("server-4242.json").exists());
    backend
        .terminate(&pool, &InstanceId::new("4242"))
        .await
        .expect("deleting a gone server is ok");

    // Another pool's server is refused; no capacity is exit 4.
    std::fs::write(
        fake.path().join("server-8.json"),
        r#"{"id":8,"name":"theirs","status":"running","created":"2026-11-30T07:00:00+00:00",
            "labels":{"runscale/pool":"other"}}"#,
    )
    .expect("other");
    let err = backend
        .terminate(&pool, &InstanceId::new("8"))
        .await
        .expect_err("not ours");
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(fake.path().join("server-8.json").exists());
    std::fs::write(fake.path().join("no-capacity"), "").expect("flag");
    let mut request = launch_request();
    request.runners.truncate(1);
    request.runners[0].runner_name = "rs-linux-zzzzzzzzzz".into();
    let err = backend.launch(request).await.expect_err("no capacity");
    assert_eq!(err.kind(), ErrorKind::InsufficientCapacity, "{err}");
    assert!(err.to_string().contains("resource_unavailable"), "{err}");
}

#[test]
fn the_example_scripts_are_valid_bash() {
    for script in ["deploy/exec/hcloud.sh", "deploy/exec/local-runners.sh"] {
        let status = std::process::Command::new("bash")
            .arg("-n")
            .arg(repo().join(script))
            .status()
            .expect("bash");
        assert!(status.success(), "bash -n {script}");
    }
}

/// `systemd-analyze verify` accepts the units (with `ExecStart` pointed at an existing
/// program, since it checks that) without warnings, and `systemd-analyze security` rates the
/// services at most 2.0. Needs systemd-analyze with `security --offline` (systemd 250+).
#[test]
fn the_systemd_units_verify_and_are_hardened() {
    if runscale_core::testing::require_program(
        "systemd-analyze",
        "Debian's systemd (scripts/test.sh installs it)",
    )
    .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let units = [
        "runscale.service",
        "runscale-once.service",
        "runscale-once.timer",
    ];
    for unit in units {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit))
            .expect("unit")
            .replace("/usr/local/bin/runscale", "/bin/true");
        std::fs::write(dir.path().join(unit), text).expect("copy");
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("runscale")).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    for unit in ["runscale.service", "runscale-once.service"] {
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(dir.path().join(unit))
            .output()
            .expect("systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // systemd before 250 has no `--offline`: the tool is too old, not the unit wrong.
        let offline = (!stderr.contains("--offline")).then_some(());
        if runscale_core::testing::require(
            offline,
            "systemd-analyze security --offline (systemd 250 or later)",
            "install Debian 12's systemd or later",
        )
        .is_none()
        {
            return;
        }
        let score = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level rated: {text}{stderr}"));
        println!("{unit}: systemd-analyze security exposure {score}");
        assert!(score <= 2.0, "{unit} exposure {score}: {text}");
    }
}
