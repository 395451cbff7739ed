//! The fake kube-apiserver checked with the real `kubectl` (v1.32 on the machine image):
//! discovery, `get` with label selectors and server-side Tables, `apply -f` of the circleci
//! seed CronJob (created, unchanged, configured, server-side applied), `get pods -w` seeing a pod appear, and
//! `delete pod` of a pod whose container runs as a local process. Without kubectl the tests
//! print a note and pass, unless `CI` is set.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod kube_support;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use kube::Api;
use kube::api::PostParams;
use kube_support::{Fixture, eventually, pod, scheduled_pod, start};
use runscale_emulator::kube::{ImageConfig, KubeConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const SEED_CRONJOB: &str = "tests/fixtures/kube/circleci-cronjob.yaml";
const WAIT: Duration = Duration::from_secs(20);

/// The kubectl binary on `PATH`. Without it the test fails, or skips under
/// `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
fn kubectl_binary() -> Option<PathBuf> {
    runscale_core::testing::require_program(
        "kubectl",
        "kubectl 1.32 to 1.34 (within kubectl's version skew of the fake API server's 1.33)",
    )
}

/// kubectl with the emulator's kubeconfig and a private cache and home.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn new(bin: PathBuf, f: &Fixture) -> Self {
        let home = f.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Kubectl {
            bin,
            kubeconfig: f.kubeconfig_path(),
            home,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion (at most 30 s).
    async fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).spawn().expect("kubectl starts");
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 30 s"))
            .unwrap()
    }

    /// Runs kubectl, expects success, returns stdout (stderr must be free of errors).
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("rror") && !stderr.contains("Warning"),
            "kubectl {args:?} complained: {stderr}"
        );
        stdout
    }
}

#[tokio::test]
async fn kubectl_gets_pods_by_label_with_server_side_columns() {
    let Some(bin) = kubectl_binary() else { return };
    let f = start(KubeConfig::default()).await;
    let k = Kubectl::new(bin, &f);
    for (name, labels) in [
        ("runner-1", json!({"runscale/pool": "small"})),
        ("runner-2", json!({"runscale/pool": "small"})),
        ("web", json!({"app": "web"})),
    ] {
        f.pods("default")
            .create(&PostParams::default(), &pod(name, labels, "x:1", &["x"]))
            .await
            .unwrap();
    }
    let names = k
        .ok(&["get", "pods", "-l", "runscale/pool=small", "-o", "name"])
        .await;
    assert_eq!(names, "pod/runner-1\npod/runner-2\n");
    let table = k.ok(&["get", "pods", "-l", "app in (web)"]).await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(&lines[1][..4], ["web", "0/1", "Pending", "0"]);
    assert_eq!(lines.len(), 2);
    let none = k
        .ok(&["get", "pods", "-l", "!runscale/pool,app notin (web)"])
        .await;
    assert_eq!(none, "", "no pod matches");
    let json: Value =
        serde_json::from_str(&k.ok(&["get", "pods", "-A", "-o", "json"]).await).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 3);
    assert_eq!(json["items"][0]["kind"], "Pod");
    let version = k.ok(&["version", "-o", "json"]).await;
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "33");
    f.emu.shutdown().await;
}

/// The seed CronJob's pod template, and the CronJob.
async fn pod_template(cronjobs: &Api<CronJob>) -> (k8s_openapi::api::core::v1::PodSpec, CronJob) {
    let cj = cronjobs.get("small-runner").await.unwrap();
    let spec = cj.spec.clone().unwrap().job_template.spec.unwrap();
    (spec.template.spec.unwrap(), cj)
}

#[tokio::test]
async fn kubectl_applies_the_seed_cronjob_unchanged() {
    let Some(bin) = kubectl_binary() else { return };
    let f = start(KubeConfig::default()).await;
    let k = Kubectl::new(bin, &f);
    assert_eq!(
        k.ok(&["apply", "-f", SEED_CRONJOB]).await,
        "cronjob.batch/small-runner created\n"
    );
    let cronjobs: Api<CronJob> = Api::namespaced(f.client.clone(), "circleci-runners");
    let cj = cronjobs.get("small-runner").await.unwrap();
    let labels = cj.metadata.labels.clone().unwrap();
    assert_eq!(labels["resource-class-org"], "vela-games");
    assert_eq!(labels["resource-class-name"], "k8s-small");
    let spec = cj.spec.clone().unwrap();
    assert_eq!(spec.suspend, Some(true));
    let pod_spec = spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("OnFailure"));
    let env = pod_spec.containers[0].env.clone().unwrap();
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );
    assert!(
        cj.metadata
            .annotations
            .unwrap()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );

    assert_eq!(
        k.ok(&["apply", "-f", SEED_CRONJOB]).await,
        "cronjob.batch/small-runner unchanged\n"
    );
    let changed = std::fs::read_to_string(SEED_CRONJOB)
        .unwrap()
        .replace("circleci-image:latest", "circleci-image:v2");
    let changed_path = f.dir.path().join("changed.yaml");
    std::fs::write(&changed_path, changed).unwrap();
    assert_eq!(
        k.ok(&["apply", "-f", changed_path.to_str().unwrap()]).await,
        "cronjob.batch/small-runner configured\n"
    );
    let (template, cj) = pod_template(&cronjobs).await;
    assert_eq!(template.containers.len(), 1, "containers merged by name");
    assert_eq!(
        template.containers[0].image.as_deref(),
        Some("circleci-image:v2")
    );
    assert_eq!(cj.metadata.generation, Some(2));
    // Server-side apply of the original puts the image back.
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", SEED_CRONJOB]).await,
        "cronjob.batch/small-runner serverside-applied\n"
    );
    let (template, _) = pod_template(&cronjobs).await;
    assert_eq!(
        template.containers[0].image.as_deref(),
        Some("circleci-image:latest")
    );
    let listed = k
        .ok(&[
            "get",
            "cronjobs",
            "-n",
            "circleci-runners",
            "-l",
            "resource-class-org=vela-games,resource-class-name",
            "-o",
            "jsonpath={.items[*].metadata.name} {.items[*].spec.suspend}",
        ])
        .await;
    assert_eq!(listed, "small-runner true");
    f.emu.shutdown().await;
}

#[tokio::test]
async fn kubectl_get_pods_watch_sees_a_new_pod() {
    let Some(bin) = kubectl_binary() else { return };
    let f = start(KubeConfig {
        bookmark_interval: Duration::from_millis(200),
        ..KubeConfig::default()
    })
    .await;
    let k = Kubectl::new(bin, &f);
    f.pods("default")
        .create(
            &PostParams::default(),
            &pod("existing", json!({}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    let mut child = k
        .command(&["get", "pods", "-w", "--output-watch-events"])
        .spawn()
        .unwrap();
    let pid = child.id().expect("kubectl is running");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        let mut created = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("existing") && !created {
                created = true;
                f.pods("default")
                    .create(
                        &PostParams::default(),
                        &pod("appeared", json!({}), "x:1", &["x"]),
                    )
                    .await
                    .unwrap();
            }
            if line.contains("appeared") {
                return seen;
            }
        }
        panic!("kubectl get -w ended early: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("kubectl get pods -w did not show the new pod within {WAIT:?}"));
    // Stop the watcher by its PID, and reap it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    let last: Vec<&str> = seen.last().unwrap().split_whitespace().collect();
    assert_eq!(&last[..2], ["ADDED", "appeared"], "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("existing")), "{seen:?}");
    f.emu.shutdown().await;
}

#[tokio::test]
async fn kubectl_deletes_a_running_pod_and_its_process() {
    let Some(bin) = kubectl_binary() else { return };
    let f = start(KubeConfig::default().image("busybox:1.36", ImageConfig::host())).await;
    let k = Kubectl::new(bin, &f);
    let pods = f.pods("default");
    pods.create(
        &PostParams::default(),
        &scheduled_pod("sleeper", json!({}), "busybox:1.36", &["sleep", "60"]),
    )
    .await
    .unwrap();
    eventually(WAIT, "the pod to run", || async {
        let p = pods.get("sleeper").await.unwrap();
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    assert_eq!(f.emu.process_ids().len(), 1);
    let table = k.ok(&["get", "pod", "sleeper", "-o", "wide"]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["sleeper", "1/1", "Running"]);
    assert!(row[5].starts_with("10.244."), "{row:?}");
    assert_eq!(row[6], "runscale-node-1");
    // kubectl waits (by watching) until the pod is gone: SIGTERM ends `sleep`.
    assert_eq!(
        k.ok(&["delete", "pod", "sleeper", "--timeout=20s"]).await,
        "pod \"sleeper\" deleted\n"
    );
    assert!(pods.get_opt("sleeper").await.unwrap().is_none());
    eventually(WAIT, "no process left", || async {
        f.emu.process_ids().is_empty().then_some(())
    })
    .await;
    let out = k.run(&["delete", "pod", "sleeper"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pods \"sleeper\" not found"),
        "{out:?}"
    );
    f.emu.shutdown().await;
}
