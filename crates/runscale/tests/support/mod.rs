//! Helpers shared by the binary's end-to-end tests (`mod support;` in each): a moto_server of
//! a test's own, REST calls to the fake kube-apiserver, and the wrapper script that lets the
//! fake kubelet run an image's entrypoint as `runscale fake-runner`. Each test binary uses
//! some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use runscale_emulator::aws::{MotoServer, moto_server_from_env};
use runscale_emulator::kube::KubeHandle;

/// The runscale executable under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_runscale");

/// A moto_server of its own for one test (the emulator's harness: a free loopback port,
/// killed by its PID when dropped). Without `RUNSCALE_MOTO_SERVER` the test fails, or skips
/// under `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
pub async fn moto() -> Option<MotoServer> {
    let bin = moto_bin()?;
    Some(MotoServer::start(&bin).await.expect("moto_server"))
}

/// The `moto_server` to start (see [`moto`]).
pub fn moto_bin() -> Option<PathBuf> {
    runscale_core::testing::require(
        moto_server_from_env(),
        "moto_server (RUNSCALE_MOTO_SERVER)",
        "scripts/test.sh installs moto[server] into a virtualenv and sets RUNSCALE_MOTO_SERVER",
    )
}

/// The bearer token of the kubeconfig the fake API server writes.
pub fn bearer(kube: &KubeHandle) -> String {
    kube.kubeconfig()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|t| t.trim().trim_matches('"').to_owned())
        .expect("token in kubeconfig")
}

/// `method path` with a JSON body against the fake API server; the status must be a success.
pub async fn kube_api(
    kube: &KubeHandle,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) {
    let resp = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", kube.url()))
        .bearer_auth(bearer(kube))
        .json(&body)
        .send()
        .await
        .expect("API request");
    let status = resp.status();
    assert!(
        status.is_success(),
        "{method} {path}: {status} {:?}",
        resp.text().await
    );
}

/// A seed fixture of the backends' tests (`fixtures/kube/{name}`) as a JSON object.
pub fn kube_fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/../runscale-backends/tests/fixtures/kube/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An executable `dir/name` that runs `runscale fake-runner`: what the fake kubelet runs in
/// place of a runner image's entrypoint.
pub fn fake_runner_script(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nexec '{BIN}' fake-runner\n")).expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path
}

/// Waits until `done` holds, polling every 200 ms; panics naming `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The environment of a runscale process talking to `moto` as access key `(id, secret)` in
/// us-east-1, with no profile, instance metadata or shared config files (in `dir`, absent) to
/// fall back on.
pub fn aws_env(moto: &MotoServer, dir: &Path, key: (&str, &str)) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", moto.url().to_owned()),
        ("AWS_ACCESS_KEY_ID", key.0.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", key.1.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        (
            "AWS_CONFIG_FILE",
            dir.join("no-aws-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `runscale <args>` with the AWS environment of [`aws_env`], none of runscale's own
/// variables, and `env` on top; waits at most `limit`. Exit code, stdout, stderr.
pub async fn run_with_aws(
    moto: &MotoServer,
    dir: &Path,
    key: (&str, &str),
    args: &[&str],
    env: &[(&str, &str)],
    limit: std::time::Duration,
) -> (i32, String, String) {
    let mut c = std::process::Command::new(BIN);
    c.args(args);
    for name in [
        "RUNSCALE_CONFIG",
        "RUNSCALE_LOG_FORMAT",
        "RUNSCALE_LOG_LEVEL",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "KUBECONFIG",
        "SECRET_NAME",
        "APP_CIRCLE_TOKEN",
    ] {
        c.env_remove(name);
    }
    c.envs(aws_env(moto, dir, key))
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || c.output()))
        .await
        .unwrap_or_else(|_| panic!("runscale finished within {limit:?}"))
        .expect("join")
        .expect("run runscale");
    (
        out.status.code().expect("exited normally"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `runscale` with its log (stderr) in `log`, stdin and stdout closed, none of the
/// `RUNSCALE_CONFIG`/`_LOG_FORMAT`/`_LOG_LEVEL` of the test's own environment, killed when
/// dropped.
pub fn runscale_logged(log: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("RUNSCALE_LOG_FORMAT")
        .env_remove("RUNSCALE_LOG_LEVEL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .kill_on_drop(true);
    command
}

/// The fake kube-apiserver with these namespaces, whose kubelet runs `image` as a fake
/// Buildkite/GitHub/... agent (`runscale fake-runner`), and its kubeconfig written in `dir`.
pub async fn kube_with_fake_runner(
    dir: &Path,
    namespaces: &[&str],
    image: &str,
) -> (KubeHandle, PathBuf) {
    let agent = fake_runner_script(dir, "fake-agent");
    let kube = runscale_emulator::kube::KubeEmulator::start(
        runscale_emulator::kube::KubeConfig {
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            ..runscale_emulator::kube::KubeConfig::default()
        }
        .image(image, runscale_emulator::kube::ImageConfig::program(&agent)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("fake kube-apiserver");
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    (kube, kubeconfig)
}
