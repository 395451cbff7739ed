//! Helpers shared by the fake kube-apiserver tests: an emulator on 127.0.0.1:0, a kube-rs
//! client built from the kubeconfig the emulator writes (the path a real backend takes),
//! object builders and a bounded wait.

#![allow(clippy::unwrap_used)] // Tests may unwrap.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use runscale_emulator::kube::{KubeConfig, KubeEmulator, KubeHandle};
use serde_json::{Value, json};

/// An emulator, a client for it, and the directory holding its kubeconfig.
pub struct Fixture {
    pub emu: KubeHandle,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn kubeconfig_path(&self) -> std::path::PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn pods(&self, ns: &str) -> kube::Api<Pod> {
        kube::Api::namespaced(self.client.clone(), ns)
    }
}

/// Starts an emulator with `config` and connects a client through a kubeconfig file.
pub async fn start(config: KubeConfig) -> Fixture {
    // Both ring and aws-lc-rs are compiled in: choose one for kube's (unused) TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = KubeEmulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).expect("kubeconfig parses");
    assert_eq!(kubeconfig.current_context.as_deref(), Some("runscale-fake"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    let client = kube::Client::try_from(config).expect("client");
    Fixture { emu, client, dir }
}

/// A pod with one container running `command` in `image`, which no scheduler picks up
/// (`schedulerName: none`), so nothing but the test changes it.
pub fn pod(name: &str, labels: Value, image: &str, command: &[&str]) -> Pod {
    let mut p = scheduled_pod(name, labels, image, command);
    p.spec.as_mut().unwrap().scheduler_name = Some("none".into());
    p
}

/// A pod with one container running `command` in `image`, for the scheduler and kubelet.
pub fn scheduled_pod(name: &str, labels: Value, image: &str, command: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "command": command}],
        },
    }))
    .unwrap()
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The code of a kube API error.
pub fn api_code(err: &kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other:?}"),
    }
}

/// The reason of a kube API error.
pub fn api_reason(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.reason.clone(),
        other => panic!("not an API error: {other:?}"),
    }
}

/// Waits until `api` has no object `name`.
pub async fn gone<K>(api: &kube::Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(
        Duration::from_secs(15),
        &format!("{name} to be gone"),
        || async { api.get_opt(name).await.unwrap().is_none().then_some(()) },
    )
    .await;
}

/// Asserts an API error's code and reason.
pub fn assert_status(err: &kube::Error, code: u16, reason: &str) {
    assert_eq!(
        (api_code(err), api_reason(err).as_str()),
        (code, reason),
        "{err:?}"
    );
}

/// Merge-patches the labels of a pod.
pub async fn relabel(pods: &kube::Api<Pod>, name: &str, labels: Value) -> Pod {
    pods.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": labels}})),
    )
    .await
    .unwrap()
}
