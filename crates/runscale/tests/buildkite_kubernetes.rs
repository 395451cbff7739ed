//! Buildkite on Kubernetes end to end, through the real `runscale run`: agents are pods made
//! from the Buildscaler README's Job template (a `parallelism: 0` Job labelled with its queue,
//! used unchanged) on the fake kube-apiserver, whose kubelet runs the image `buildkite/agent:3`
//! as `runscale fake-runner` (a fake Buildkite agent) against the Buildkite emulator.
//!
//! Halfway through, the Job is recreated with a changed pod template (a new UID): pods from the
//! old template are stopped gracefully (`stop {"force": false}`) and removed only once their
//! agent has left, never while it runs a job. Every job runs exactly once (the emulator records
//! a job started twice, a forced stop and an agent lost while busy as violations), later pods
//! come from the new template, and the pool returns to zero.

#![cfg(all(feature = "provider-buildkite", feature = "backend-kubernetes"))]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use runscale_emulator::buildkite::{Emulator, EmulatorConfig, JobSpec, JobStatus};
use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator};

mod support;

use support::{BIN, fake_runner_script, kube_api as api, kube_fixture};

const AGENT_TOKEN: &str = "bk-agent-token-3c9d";
const API_TOKEN: &str = "bk-api-token-58e2";
const JOBS: usize = 16;

/// The seed Job, with its `BASH_JOB` variable set to `value`.
fn seed_job(value: &str) -> serde_json::Value {
    let mut job = kube_fixture("buildscaler-job.yaml");
    job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = value.into();
    job
}

/// The value of `BASH_JOB` in a pod's first container.
fn bash_job(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find_map(|e| (e.name == "BASH_JOB").then(|| e.value.clone()).flatten())
}

fn config(dir: &Path, emu_url: &str, agent_endpoint: &str, kubeconfig: &Path) -> String {
    for (name, value) in [("api-token", API_TOKEN), ("agent-token", AGENT_TOKEN)] {
        std::fs::write(dir.join(name), value).expect("secret file");
    }
    format!(
        r#"listen: 127.0.0.1:0
interval: 1s
providers:
  - name: buildkite
    type: buildkite
    org: acme
    api_url: {emu_url}
    agent_endpoint: {agent_endpoint}
    api_token: {{file: {dir}/api-token}}
    agent_token: {{file: {dir}/agent-token}}
    stop_wait: 0s
backends:
  - name: cluster
    type: kubernetes
    kubeconfig: {kubeconfig}
    namespace: default
    template_refresh: 1s
    grace_period: 1s
pools:
  - name: bash
    provider: buildkite
    backend: cluster
    selector: {{queue: bash}}
    template: {{job: {{queue: bash}}}}
    ephemeral: false
    max: 3
    idle_timeout: 2s
    boot_timeout: 60s
"#,
        dir = dir.display(),
        kubeconfig = kubeconfig.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildscaler_job_pods_run_every_job_once_and_a_template_change_drains_only_idle_pods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = fake_runner_script(dir.path(), "buildkite-agent");
    let kube = KubeEmulator::start(
        KubeConfig {
            namespaces: vec!["default".to_owned()],
            ..KubeConfig::default()
        }
        .image("buildkite/agent:3", ImageConfig::program(&agent)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("fake kube-apiserver");
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    // What the seed's pod template reads its agent token from.
    api(
        &kube,
        reqwest::Method::POST,
        "/api/v1/namespaces/default/secrets",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "buildkite-agent-token"},
            "stringData": {"BUILDKITE_AGENT_TOKEN": AGENT_TOKEN},
        }),
    )
    .await;
    api(
        &kube,
        reqwest::Method::POST,
        "/apis/batch/v1/namespaces/default/jobs",
        seed_job("my_bash_job"),
    )
    .await;

    // A pod deleted under a busy agent gets 1 s of grace, less than any job takes, and an
    // agent silent for 3 s while it holds a job is recorded as lost: a premature deletion
    // cannot pass unnoticed.
    let emu = Emulator::start(EmulatorConfig {
        agent_lost_after: Duration::from_secs(3),
        ..EmulatorConfig::new("acme", AGENT_TOKEN, API_TOKEN)
    })
    .await
    .expect("Buildkite emulator");
    let path = dir.path().join("runscale.yaml");
    std::fs::write(
        &path,
        config(dir.path(), &emu.url(), &emu.agent_endpoint(), &kubeconfig),
    )
    .expect("config");
    emu.submit(
        (0..JOBS)
            .map(|i| JobSpec::new("bash", Duration::from_millis(1500 + 50 * i as u64)))
            .collect(),
    );
    let started = Instant::now();
    let log = dir.path().join("runscale.log");
    let mut daemon = tokio::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("RUNSCALE_LOG_FORMAT")
        .env_remove("RUNSCALE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("runscale run");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(150);

    // Wait until agents run jobs, then replace the template.
    loop {
        let snap = emu.snapshot();
        if snap.count(JobStatus::Running) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no job running: {snap:?}\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_pods: Vec<String> = kube
        .pods("default")
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    api(
        &kube,
        reqwest::Method::DELETE,
        "/apis/batch/v1/namespaces/default/jobs/bash-job",
        serde_json::json!({"propagationPolicy": "Orphan"}),
    )
    .await;
    api(
        &kube,
        reqwest::Method::POST,
        "/apis/batch/v1/namespaces/default/jobs",
        seed_job("changed"),
    )
    .await;
    let changed_at = Instant::now();

    let mut most_pods = 0;
    let mut new_template_pods = std::collections::BTreeSet::new();
    loop {
        let pods = kube.pods("default");
        most_pods = most_pods.max(pods.len());
        for p in &pods {
            if bash_job(p).as_deref() == Some("changed")
                && let Some(name) = &p.metadata.name
            {
                new_template_pods.insert(name.clone());
            }
        }
        let snap = emu.snapshot();
        if snap.all_finished() && snap.jobs.len() == JOBS && pods.is_empty() {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("runscale exited with {status}: {}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "not done in 150 s: {} of {JOBS} finished, {} pods\n{}",
            snap.jobs.iter().filter(|j| j.status.is_finished()).count(),
            pods.len(),
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let snap = emu.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert_eq!(snap.count(JobStatus::Passed), JOBS, "{snap:?}");
    assert!(most_pods <= 3, "{most_pods} pods at once, above max 3");
    // Pods made after the change carry the new template (none of the old pods does).
    assert!(
        !new_template_pods.is_empty(),
        "no pod from the new template"
    );
    assert!(
        old_pods.iter().all(|p| !new_template_pods.contains(p)),
        "{old_pods:?} {new_template_pods:?}"
    );
    let jobs_on_old: usize = snap
        .agents
        .iter()
        .filter(|a| old_pods.contains(&a.name))
        .map(|a| a.jobs_finished as usize)
        .sum();
    eprintln!(
        "{JOBS} jobs, all passed once; {} pods, {} from the old template ({jobs_on_old} jobs on \
         them), {} from the new; template replaced {:?} after the start; zero after {took:?}; \
         {} API requests",
        kube.pods_created_total(),
        old_pods.len(),
        new_template_pods.len(),
        changed_at - started,
        kube.requests().len()
    );
    let text = log_text();
    assert!(
        !text.contains(AGENT_TOKEN) && !text.contains(API_TOKEN),
        "{text}"
    );
    daemon.kill().await.expect("stop runscale");
    kube.shutdown().await;
}
