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
/// killed by its PID when dropped); `None` after a note when `RUNSCALE_MOTO_SERVER` is not set
/// (a failure when `CI` is set).
pub async fn moto() -> Option<MotoServer> {
    let Some(bin) = moto_server_from_env() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "RUNSCALE_MOTO_SERVER is not set (scripts/test.sh installs moto[server])"
        );
        eprintln!("note: RUNSCALE_MOTO_SERVER not set; skipping (run scripts/test.sh)");
        return None;
    };
    Some(MotoServer::start(&bin).await.expect("moto_server"))
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
