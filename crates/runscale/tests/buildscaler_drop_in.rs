//! Buildscaler's users switch by changing the controller's image and command only: `runscale
//! buildscaler` with Buildscaler's own options (`--buildkite-org`, `-n ""` for all namespaces,
//! `--sync-interval`, `--disconnect-after-idle-timeout`, `--agent-startup-timeout`,
//! `--kubeconfig`) and environment (`BUILDKITE_ACCESS_TOKEN`, `BUILDKITE_AGENT_TOKEN` from the
//! seed's `buildkite-secrets`), against the Buildkite emulator and the fake kube-apiserver
//! holding the seed README's artefacts unchanged: the "Full example buildscaler job" (queue
//! `bash`, annotated `max-active-builds: '2'` and the README's three `pvc-*` annotations) and
//! its agent-token Secret in namespace `ci`, a second labelled Job in namespace `deploy`, and a
//! third Job added to `deploy` while runscale runs.
//!
//! Shown: every job of the three queues runs exactly once (the emulator records a job started
//! twice, a forced stop and an agent lost while busy as violations), `bash` never has more
//! than 2 pods, each `bash` pod has its own claim (deleted with it), the later Job is
//! discovered, a second Job on queue `bash` is refused with an error naming both, deleting the
//! `deploy` Job while its agents run jobs retires its pods only once idle, the seed's
//! uninstall selector `app.elotl.co=buildscaler` selects runscale's pods, and once the work is
//! done the idle agents leave (`--disconnect-after-idle-timeout`) and every pod is gone.

#![cfg(all(feature = "provider-buildkite", feature = "backend-kubernetes"))]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use runscale_emulator::buildkite::{Emulator, EmulatorConfig, JobSpec, JobStatus};

mod support;

use support::{kube_api as api, kube_fixture, kube_with_fake_runner, runscale_logged};

const AGENT_TOKEN: &str = "bk-agent-token-7f1a";
const API_TOKEN: &str = "bk-api-token-d04c";
const QUEUE_LABEL: &str = "buildscaler.elotl.co/queue";

/// A seed Job: the README's full example, in `namespace`, named `name`, on `queue`, with
/// `annotations`.
fn job(name: &str, queue: &str, annotations: serde_json::Value) -> serde_json::Value {
    let mut job = kube_fixture("buildscaler-job.yaml");
    job["metadata"]["name"] = name.into();
    job["metadata"]["labels"][QUEUE_LABEL] = queue.into();
    job["metadata"]["annotations"] = annotations;
    job
}

async fn create_job(kube: &runscale_emulator::kube::KubeHandle, ns: &str, job: serde_json::Value) {
    api(
        kube,
        reqwest::Method::POST,
        &format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        job,
    )
    .await;
}

/// Queue label → pods now, over both namespaces.
fn pods_by_queue(kube: &runscale_emulator::kube::KubeHandle) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ns in ["ci", "deploy"] {
        for p in kube.pods(ns) {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let queue = labels.get(QUEUE_LABEL).cloned().unwrap_or_default();
            out.entry(queue)
                .or_default()
                .push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_deployment_runs_jobs_of_every_labelled_job_in_every_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (kube, kubeconfig) =
        kube_with_fake_runner(dir.path(), &["ci", "deploy"], "buildkite/agent:3").await;
    // The README's agent-token Secret (`data`, base64), where each Job's pods read it.
    for ns in ["ci", "deploy"] {
        api(
            &kube,
            reqwest::Method::POST,
            &format!("/api/v1/namespaces/{ns}/secrets"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "buildkite-agent-token"},
                "data": {"BUILDKITE_AGENT_TOKEN": "YmstYWdlbnQtdG9rZW4tN2YxYQ=="},
            }),
        )
        .await;
    }
    create_job(
        &kube,
        "ci",
        job(
            "bash-job",
            "bash",
            serde_json::json!({
                "buildscaler.elotl.co/max-active-builds": "2",
                "buildscaler.elotl.co/pvc-size": "10Gi",
                "buildscaler.elotl.co/pvc-mount-path": "/var/lib/buildkite-agent",
                "buildscaler.elotl.co/pvc-storage-class-name": "standard",
            }),
        ),
    )
    .await;
    create_job(
        &kube,
        "deploy",
        job("deploy-job", "deploy", serde_json::json!({})),
    )
    .await;

    // An agent silent for 3 s while it holds a job is recorded as lost.
    let emu = Emulator::start(EmulatorConfig {
        agent_lost_after: Duration::from_secs(3),
        ..EmulatorConfig::new("acme", AGENT_TOKEN, API_TOKEN)
    })
    .await
    .expect("Buildkite emulator");
    let (bash_jobs, deploy_jobs, late_jobs) = (8, 4, 3);
    emu.submit(
        (0..bash_jobs)
            .map(|i| JobSpec::new("bash", Duration::from_millis(1500 + 50 * i)))
            .chain((0..deploy_jobs).map(|_| JobSpec::new("deploy", Duration::from_millis(1200))))
            .collect(),
    );

    let started = Instant::now();
    let log = dir.path().join("runscale.log");
    // The seed's Deployment command, image swapped: `--buildkite-org=... --namespace=...
    // --sync-interval=... -v`, the access token from the environment.
    let mut daemon = runscale_logged(&log)
        .args([
            "buildscaler",
            "--buildkite-org=acme",
            "--namespace=",
            "--sync-interval=1",
            "--disconnect-after-idle-timeout=3",
            "--agent-startup-timeout=60",
            "--healthz-address=127.0.0.1",
            "--healthz-port=0",
            "-v",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("BUILDKITE_ACCESS_TOKEN", API_TOKEN)
        .env("BUILDKITE_AGENT_TOKEN", AGENT_TOKEN)
        .env("RUNSCALE_BUILDKITE_API_URL", emu.url())
        .env("RUNSCALE_BUILDKITE_AGENT_ENDPOINT", emu.agent_endpoint())
        .env_remove("RUNSCALE_POOL_MAX")
        .env_remove("KUBECONFIG")
        .spawn()
        .expect("runscale buildscaler");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(150);

    let mut most: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut claims_seen = BTreeSet::new();
    let mut selected_by_seed_label = 0;
    let mut late_added_at = None;
    let mut deploy_job_deleted_busy = None;
    loop {
        let by_queue = pods_by_queue(&kube);
        for (queue, pods) in &by_queue {
            let m = most.entry(queue.clone()).or_default();
            *m = (*m).max(pods.len());
            seen.entry(queue.clone())
                .or_default()
                .extend(pods.iter().cloned());
        }
        for claim in kube.persistent_volume_claims("ci") {
            claims_seen.insert(claim.metadata.name.unwrap_or_default());
        }
        // The seed's uninstall selector finds runscale's pods (each also runscale's).
        if selected_by_seed_label == 0 && by_queue.values().map(Vec::len).sum::<usize>() >= 2 {
            let pods = kube
                .pods("ci")
                .into_iter()
                .chain(kube.pods("deploy"))
                .filter(|p| {
                    let l = p.metadata.labels.clone().unwrap_or_default();
                    l.get("app.elotl.co").map(String::as_str) == Some("buildscaler")
                        && l.contains_key("runscale/pool")
                })
                .count();
            selected_by_seed_label = pods;
        }
        let snap = emu.snapshot();
        // Once the first jobs are done, a Job is added (and a duplicate of queue bash).
        if late_added_at.is_none() && snap.count(JobStatus::Passed) >= 4 {
            create_job(
                &kube,
                "deploy",
                job("late-job", "late", serde_json::json!({})),
            )
            .await;
            create_job(
                &kube,
                "deploy",
                job("bash-again", "bash", serde_json::json!({})),
            )
            .await;
            emu.submit(
                (0..late_jobs)
                    .map(|_| JobSpec::new("late", Duration::from_millis(1000)))
                    .collect(),
            );
            late_added_at = Some(started.elapsed());
        }
        // Once every deploy job has started, its Job is deleted while agents still run jobs:
        // those pods are retired once idle, never while busy.
        let deploy: Vec<_> = snap.jobs.iter().filter(|j| j.queue == "deploy").collect();
        if deploy_job_deleted_busy.is_none()
            && deploy.len() == deploy_jobs as usize
            && deploy.iter().all(|j| j.started_at.is_some())
        {
            let busy = deploy
                .iter()
                .filter(|j| j.status == JobStatus::Running)
                .count();
            api(
                &kube,
                reqwest::Method::DELETE,
                "/apis/batch/v1/namespaces/deploy/jobs/deploy-job",
                serde_json::json!({"propagationPolicy": "Orphan"}),
            )
            .await;
            deploy_job_deleted_busy = Some(busy);
        }
        let total = (bash_jobs + deploy_jobs + late_jobs) as usize;
        let pods_left: usize = pods_by_queue(&kube).values().map(Vec::len).sum();
        if snap.jobs.len() == total && snap.all_finished() && pods_left == 0 {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("runscale exited with {status}: {}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "not done in 150 s: {} of {} jobs finished, {pods_left} pods\n{}",
            snap.jobs.iter().filter(|j| j.status.is_finished()).count(),
            snap.jobs.len(),
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let snap = emu.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert_eq!(
        snap.count(JobStatus::Passed),
        (bash_jobs + deploy_jobs + late_jobs) as usize,
        "{snap:?}"
    );
    assert!(snap.jobs.iter().all(|j| j.starts == 1), "{snap:?}");
    assert!(most["bash"] <= 2, "max-active-builds 2, saw {most:?}");
    for queue in ["bash", "deploy", "late"] {
        assert!(
            seen.get(queue).is_some_and(|p| !p.is_empty()),
            "no pod for {queue}: {seen:?}"
        );
    }
    // Each bash pod had its own claim; all went with their pods.
    for pod in &seen["bash"] {
        assert!(
            claims_seen.contains(&format!("{pod}-runscale-pvc")),
            "{pod}: {claims_seen:?}"
        );
    }
    assert!(kube.persistent_volume_claims("ci").is_empty());
    assert!(selected_by_seed_label >= 2, "{selected_by_seed_label}");
    let text = log_text();
    if deploy_job_deleted_busy.is_some_and(|busy| busy > 0) {
        assert!(
            text.contains("retiring them once idle"),
            "the pods of the deleted Job are retired:\n{text}"
        );
    }
    assert!(
        text.contains("Job deploy/bash-again") && text.contains("Job ci/bash-job"),
        "the duplicate queue is reported naming both Jobs:\n{text}"
    );
    assert!(
        !text.contains(AGENT_TOKEN) && !text.contains(API_TOKEN),
        "{text}"
    );
    eprintln!(
        "{} jobs (bash {bash_jobs}, deploy {deploy_jobs}, late {late_jobs}) all passed once; \
         pods per queue {:?}, most at once {most:?}; {} claims; Job `late` added at {:?}; \
         Job `deploy` deleted with {:?} of its jobs running; all pods gone after {took:?}; \
         {} API requests",
        snap.jobs.len(),
        seen.iter()
            .map(|(q, p)| (q.clone(), p.len()))
            .collect::<BTreeMap<_, _>>(),
        claims_seen.len(),
        late_added_at.unwrap_or_default(),
        deploy_job_deleted_busy,
        kube.requests().len(),
    );
    daemon.kill().await.expect("stop runscale");
    kube.shutdown().await;
}
