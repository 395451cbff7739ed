//! The fake kube-apiserver's scheduler and kubelet: pods' first containers run as local
//! processes (env, envFrom, secretKeyRef, fieldRef, `$(VAR)`, secret volumes and mount-path
//! translation), end `Succeeded` or `Failed`, restart by policy, stop with SIGTERM then
//! SIGKILL on delete; unschedulable pods, image and config errors; the fake runner agent run
//! as a pod against the GitHub emulator.

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod common;
mod kube_support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube_support::{eventually, gone, scheduled_pod, start};
use runscale_emulator::github::{Conclusion, JobSpec};
use runscale_emulator::kube::{ImageConfig, KubeConfig, NodeConfig};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const SH: &str = "busybox:1.36";

fn host_shell() -> KubeConfig {
    KubeConfig {
        restart_backoff: Duration::from_millis(100),
        ..KubeConfig::default()
    }
    .image(SH, ImageConfig::host())
}

fn pod_json(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

async fn secret(api: &Api<Secret>, name: &str, data: Value) {
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap(),
    )
    .await
    .unwrap();
}

/// Waits until the pod reaches `phase`; returns it.
async fn phase(pods: &Api<Pod>, name: &str, phase: &str) -> Pod {
    eventually(WAIT, &format!("{name} to be {phase}"), || async {
        let p = pods.get(name).await.unwrap();
        (p.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(p)
    })
    .await
}

/// The first container's status.
fn container(pod: &Pod) -> Value {
    serde_json::to_value(
        &pod.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0],
    )
    .unwrap()
}

fn condition(pod: &Pod, kind: &str) -> Value {
    let conditions = pod.status.as_ref().unwrap().conditions.clone().unwrap();
    serde_json::to_value(conditions.iter().find(|c| c.type_ == kind).unwrap()).unwrap()
}

#[tokio::test]
async fn a_pod_runs_as_a_local_process_with_its_env_and_secret_files() {
    let f = start(host_shell()).await;
    let ns = "runners";
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), ns);
    secret(
        &secrets,
        "creds",
        json!({"token": "t0k3n", "EXTRA": "from-envfrom"}),
    )
    .await;
    let pods = f.pods(ns);
    let out = f.dir.path().join("out.txt");
    let script = r#"echo "$FOO|$BAR|$S_EXTRA|$HOSTNAME|$POD_IP" > "$OUT"; cat "$CREDS_FILE" >> "$OUT"; echo >> "$OUT"; pwd >> "$OUT""#;
    pods.create(
        &PostParams::default(),
        &pod_json(json!({
            "metadata": {"name": "job-1", "labels": {"runscale/pool": "small"}},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "creds", "secret": {"secretName": "creds",
                    "items": [{"key": "token", "path": "token", "mode": 0o400}]}}],
                "containers": [{
                    "name": "runner",
                    "image": SH,
                    "command": ["sh", "-c", script],
                    "workingDir": "/work",
                    "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "S_"}],
                    "env": [
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "FOO", "value": "foo-$(POD)"},
                        {"name": "BAR", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "CREDS_FILE", "value": "/etc/creds/token"},
                        {"name": "OUT", "value": out.to_str().unwrap()},
                    ],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": true}],
                }],
            },
        })),
    )
    .await
    .unwrap();
    let done = phase(&pods, "job-1", "Succeeded").await;
    let status = done.status.clone().unwrap();
    let ip = status.pod_ip.clone().unwrap();
    assert!(ip.starts_with("10.244."), "{ip}");
    assert!(status.start_time.is_some());
    assert_eq!(
        done.spec.as_ref().unwrap().node_name.as_deref(),
        Some("runscale-node-1")
    );
    let c = container(&done);
    assert_eq!(c["state"]["terminated"]["exitCode"], 0);
    assert_eq!(c["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&done, "PodScheduled")["status"], "True");
    assert_eq!(condition(&done, "Ready")["reason"], "PodCompleted");

    let root = f.emu.pod_root(ns, "job-1").unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(
        lines[0],
        format!("foo-job-1|t0k3n|from-envfrom|job-1|{ip}"),
        "env, envFrom, secretKeyRef, fieldRef and $(VAR) expansion"
    );
    assert_eq!(
        lines[1], "t0k3n",
        "the secret file, found through the translated mount path"
    );
    assert_eq!(
        lines[2],
        root.join("work").to_str().unwrap(),
        "workingDir under the pod root"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("etc/creds/token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    // The container's output is served as its log.
    let log = pods.logs("job-1", &Default::default()).await.unwrap();
    assert_eq!(log, "");
    assert_eq!(f.emu.stats().processes_running, 0);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn exit_codes_decide_the_phase_and_restart_policies_restart() {
    let f = start(host_shell()).await;
    let pods = f.pods("default");
    pods.create(
        &PostParams::default(),
        &scheduled_pod(
            "fails",
            json!({}),
            SH,
            &["sh", "-c", "echo failing; exit 3"],
        ),
    )
    .await
    .unwrap();
    let failed = phase(&pods, "fails", "Failed").await;
    let c = container(&failed);
    assert_eq!(c["state"]["terminated"]["exitCode"], 3);
    assert_eq!(c["state"]["terminated"]["reason"], "Error");
    assert_eq!(
        pods.logs("fails", &Default::default()).await.unwrap(),
        "failing\n"
    );

    // OnFailure: fails once (counted in a file under the pod root), then succeeds.
    let mut retry = scheduled_pod(
        "retry",
        json!({}),
        SH,
        &[
            "sh",
            "-c",
            r#"f="$RUNSCALE_POD_ROOT/runs"; echo x >> "$f"; [ "$(wc -l < "$f")" -ge 2 ]"#,
        ],
    );
    retry.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    pods.create(&PostParams::default(), &retry).await.unwrap();
    let done = phase(&pods, "retry", "Succeeded").await;
    let c = container(&done);
    assert_eq!(c["restartCount"], 1);
    assert_eq!(c["state"]["terminated"]["exitCode"], 0);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period() {
    let f = start(host_shell()).await;
    let pods = f.pods("default");
    let marker = f.dir.path().join("terminated");
    let polite = format!(
        "trap 'echo term > {}; exit 0' TERM; while true; do sleep 0.05; done",
        marker.display()
    );
    pods.create(
        &PostParams::default(),
        &scheduled_pod("polite", json!({}), SH, &["sh", "-c", &polite]),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &scheduled_pod(
            "stubborn",
            json!({}),
            SH,
            &["sh", "-c", "trap '' TERM; sleep 60"],
        ),
    )
    .await
    .unwrap();
    phase(&pods, "polite", "Running").await;
    phase(&pods, "stubborn", "Running").await;
    assert_eq!(f.emu.process_ids().len(), 2);

    let answer = pods
        .delete("polite", &DeleteParams::default().grace_period(30))
        .await
        .unwrap();
    let terminating = answer.left().expect("the pod, terminating");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    let started = Instant::now();
    gone(&pods, "polite").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM ended it early"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");

    let started = Instant::now();
    pods.delete("stubborn", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    assert!(
        pods.get_opt("stubborn").await.unwrap().is_some(),
        "still terminating"
    );
    gone(&pods, "stubborn").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "SIGKILL after the 1 s grace period, took {took:?}"
    );
    eventually(WAIT, "no process left", || async {
        f.emu.process_ids().is_empty().then_some(())
    })
    .await;
    f.emu.shutdown().await;
}

#[tokio::test]
async fn unschedulable_pods_stay_pending_with_the_scheduler_reason() {
    let f = start(KubeConfig {
        node: NodeConfig {
            labels: [("pool".to_owned(), "ci".to_owned())].into(),
            max_pods: 1,
            ..NodeConfig::default()
        },
        ..host_shell()
    })
    .await;
    let pods = f.pods("default");
    let scheduled = |name: &str| {
        let pods = pods.clone();
        let name = name.to_owned();
        async move {
            let p = pods.get(&name).await.unwrap();
            let conditions = p.status?.conditions?;
            let c = conditions.into_iter().find(|c| c.type_ == "PodScheduled")?;
            Some((
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            ))
        }
    };
    let mut gpu = scheduled_pod("gpu", json!({}), SH, &["true"]);
    gpu.spec.as_mut().unwrap().node_selector = Some([("pool".to_owned(), "gpu".to_owned())].into());
    pods.create(&PostParams::default(), &gpu).await.unwrap();
    let (status, reason, message) =
        eventually(WAIT, "gpu to be unschedulable", || scheduled("gpu")).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert!(
        message.starts_with(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"
        ),
        "{message}"
    );

    // One slot: a long pod takes it, the next waits for "Too many pods".
    pods.create(
        &PostParams::default(),
        &scheduled_pod("long", json!({}), SH, &["sleep", "60"]),
    )
    .await
    .unwrap();
    phase(&pods, "long", "Running").await;
    pods.create(
        &PostParams::default(),
        &scheduled_pod("next", json!({}), SH, &["true"]),
    )
    .await
    .unwrap();
    let (_, _, message) = eventually(WAIT, "next to wait for a slot", || scheduled("next")).await;
    assert!(message.contains("Too many pods"), "{message}");
    pods.delete("long", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    phase(&pods, "next", "Succeeded").await;

    // A cordoned node takes nothing new.
    f.emu.set_unschedulable(true);
    pods.create(
        &PostParams::default(),
        &scheduled_pod("cordoned", json!({}), SH, &["true"]),
    )
    .await
    .unwrap();
    let (_, _, message) =
        eventually(WAIT, "cordoned to be refused", || scheduled("cordoned")).await;
    assert!(message.contains("were unschedulable"), "{message}");
    let p = pods.get("cordoned").await.unwrap();
    assert!(p.spec.unwrap().node_name.is_none());
    f.emu.set_unschedulable(false);
    phase(&pods, "cordoned", "Succeeded").await;
    f.emu.shutdown().await;
}

#[tokio::test]
async fn scheduling_and_start_delays_hold_pods_pending() {
    let f = start(KubeConfig {
        scheduling_delay: Duration::from_millis(400),
        start_delay: Duration::from_millis(300),
        ..host_shell()
    })
    .await;
    let pods = f.pods("default");
    let started = Instant::now();
    pods.create(
        &PostParams::default(),
        &scheduled_pod("slow", json!({}), SH, &["sleep", "30"]),
    )
    .await
    .unwrap();
    let bound = eventually(WAIT, "slow to be bound", || async {
        let p = pods.get("slow").await.unwrap();
        p.spec.as_ref()?.node_name.as_ref()?;
        Some(started.elapsed())
    })
    .await;
    assert!(bound >= Duration::from_millis(350), "bound after {bound:?}");
    phase(&pods, "slow", "Running").await;
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
    f.emu.shutdown().await;
}

#[tokio::test]
async fn image_and_configuration_errors_keep_pods_waiting() {
    let f = start(host_shell()).await;
    let pods = f.pods("default");
    let waiting = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.unwrap();
            let c = container(&p);
            let reason = c["state"]["waiting"]["reason"].as_str()?.to_owned();
            Some((
                reason,
                c["state"]["waiting"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ))
        }
    };
    pods.create(
        &PostParams::default(),
        &scheduled_pod("unknown", json!({}), "nope:1", &["x"]),
    )
    .await
    .unwrap();
    let (reason, _) = eventually(WAIT, "ErrImagePull", || waiting("unknown")).await;
    assert_eq!(reason, "ErrImagePull");
    assert_eq!(
        pods.get("unknown")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );

    let mut needs_secret = scheduled_pod(
        "needs-secret",
        json!({}),
        SH,
        &["sh", "-c", "test \"$T\" = late"],
    );
    needs_secret.spec.as_mut().unwrap().containers[0].env = Some(vec![
        serde_json::from_value(
            json!({"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}),
        )
        .unwrap(),
    ]);
    pods.create(&PostParams::default(), &needs_secret)
        .await
        .unwrap();
    let (reason, message) = eventually(WAIT, "CreateContainerConfigError", || {
        waiting("needs-secret")
    })
    .await;
    assert_eq!(
        (reason.as_str(), message.as_str()),
        ("CreateContainerConfigError", "secret \"later\" not found")
    );
    // Once the secret exists, the kubelet starts the container.
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), "default");
    secret(&secrets, "later", json!({"t": "late"})).await;
    phase(&pods, "needs-secret", "Succeeded").await;

    // kubectl-style STATUS comes from the waiting reason; a start failure fails the pod.
    pods.create(
        &PostParams::default(),
        &scheduled_pod("no-such", json!({}), SH, &["/no/such/program"]),
    )
    .await
    .unwrap();
    let failed = phase(&pods, "no-such", "Failed").await;
    let c = container(&failed);
    assert_eq!(c["state"]["terminated"]["reason"], "StartError");
    assert_eq!(c["state"]["terminated"]["exitCode"], 128);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn a_hundred_pods_run_to_completion_and_are_cleaned_up() {
    let f = start(host_shell()).await;
    let pods = f.pods("load");
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), "load");
    let started = Instant::now();
    for i in 0..100 {
        let p = pods
            .create(
                &PostParams::default(),
                &scheduled_pod(
                    &format!("p{i}"),
                    json!({"batch": "x"}),
                    SH,
                    &["sh", "-c", "exit 0"],
                ),
            )
            .await
            .unwrap();
        // Each pod owns a secret, as a runner's credentials would be.
        let owned: Secret = serde_json::from_value(json!({"metadata": {"name": format!("p{i}"),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": format!("p{i}"),
                "uid": p.metadata.uid.unwrap()}]}}))
        .unwrap();
        secrets
            .create(&PostParams::default(), &owned)
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(60), "every pod to succeed", || async {
        let all = f.emu.pods("load");
        all.iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .then_some(())
    })
    .await;
    let ran = started.elapsed();
    pods.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    eventually(WAIT, "pods and their secrets to be gone", || async {
        (f.emu.pods("load").is_empty() && f.emu.secrets("load").is_empty()).then_some(())
    })
    .await;
    eprintln!(
        "100 pods created, run and collected in {ran:?} (+ cleanup {:?})",
        started.elapsed() - ran
    );
    let stats = f.emu.stats();
    assert_eq!((stats.pods_created, stats.pods_deleted), (100, 100));
    assert_eq!((stats.secrets_created, stats.secrets_deleted), (100, 100));
    assert_eq!(stats.processes_running, 0);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_kills_every_process_it_started() {
    let f = start(host_shell()).await;
    let pods = f.pods("default");
    for name in ["a", "b", "c"] {
        pods.create(
            &PostParams::default(),
            &scheduled_pod(name, json!({}), SH, &["sh", "-c", "trap '' TERM; sleep 60"]),
        )
        .await
        .unwrap();
        phase(&pods, name, "Running").await;
    }
    let pids = f.emu.process_ids();
    assert_eq!(pids.len(), 3);
    let work_dir = f.emu.work_dir().to_path_buf();
    f.emu.shutdown().await;
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "process {pid} survived the shutdown");
    }
    assert!(!work_dir.exists(), "the work directory is removed");
}

#[tokio::test]
async fn the_fake_runner_agent_runs_as_a_pod_and_takes_a_github_job() {
    let gh = common::start(common::config()).await;
    let api = common::Api::new(gh.base_url(), common::TOKEN);
    let (_, env_jit) = api.jit("/orgs/octo-org", "pod-env", &["k8s"]).await;
    let (_, file_jit) = api.jit("/orgs/octo-org", "pod-file", &["k8s"]).await;
    let runner_image = "ghcr.io/example/runner:2";
    let f = start(KubeConfig::default().image(
        runner_image,
        ImageConfig::program(env!("CARGO_BIN_EXE_runscale-fake-runner")),
    ))
    .await;
    let ns = "ci";
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), ns);
    secret(&secrets, "pod-env", json!({"GITHUB_JIT_CONFIG": env_jit})).await;
    let file = json!({"runners": [{"name": "pod-file", "runner_id": "2", "vars": {},
        "secrets": {"GITHUB_JIT_CONFIG": file_jit}}]});
    secret(
        &secrets,
        "pod-file",
        json!({"credentials.json": file.to_string()}),
    )
    .await;
    let pods = f.pods(ns);
    pods.create(
        &PostParams::default(),
        &pod_json(json!({
            "metadata": {"name": "pod-env"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "runner",
                "image": runner_image, "envFrom": [{"secretRef": {"name": "pod-env"}}]}]},
        })),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod_json(json!({
            "metadata": {"name": "pod-file"},
            "spec": {"restartPolicy": "Never",
                "volumes": [{"name": "creds", "secret": {"secretName": "pod-file"}}],
                "containers": [{"name": "runner", "image": runner_image,
                    "env": [{"name": "RUNSCALE_CREDENTIALS_FILE",
                        "value": "/etc/runscale/credentials.json"}],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/runscale"}]}]},
        })),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        gh.enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted", "k8s"],
            Duration::from_millis(200),
        ))
        .unwrap();
    }
    assert!(
        gh.wait_all_done(Duration::from_secs(60)).await,
        "{:?}",
        gh.snapshot()
    );
    assert!(
        gh.snapshot()
            .jobs
            .iter()
            .all(|j| j.conclusion == Some(Conclusion::Success))
    );
    // Ephemeral runners exit after their job: the pods succeed.
    phase(&pods, "pod-env", "Succeeded").await;
    phase(&pods, "pod-file", "Succeeded").await;
    f.emu.shutdown().await;
    gh.shutdown().await;
}

/// The Job controller (Kubernetes docs, concepts/workloads/controllers/job): a Job gets its
/// pod from `spec.template`, with the Job's labels and a controller owner reference; the pod
/// runs, the Job completes with its counts; deleting the Job with background propagation
/// deletes its pods; a Job whose pods keep failing stops at `backoffLimit`.
#[tokio::test]
async fn a_job_gets_its_pods_from_its_template_and_takes_them_along_when_deleted() {
    use k8s_openapi::api::batch::v1::Job;
    let f = start(host_shell()).await;
    let jobs: Api<Job> = Api::namespaced(f.client.clone(), "default");
    let pods = f.pods("default");
    let job = |name: &str, script: &str, backoff: i32| -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"backoffLimit": backoff, "template": {
                "metadata": {"labels": {"app": "runner"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": SH,
                    "command": ["sh", "-c", script]}]}}},
        }))
        .unwrap()
    };
    let created = jobs
        .create(&PostParams::default(), &job("once", "exit 0", 6))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let done = eventually(WAIT, "the Job to complete", || async {
        let j = jobs.get("once").await.unwrap();
        let s = j.status.clone()?;
        let complete = s
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        complete.then_some(s)
    })
    .await;
    assert_eq!((done.succeeded, done.active), (Some(1), None));
    assert!(done.completion_time.is_some() && done.start_time.is_some());
    let list = pods.list(&Default::default()).await.unwrap().items;
    let [pod] = list.as_slice() else {
        panic!("one pod: {list:?}")
    };
    let name = pod.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("once-") && name.len() == "once-".len() + 5,
        "{name}"
    );
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["app"], "runner");
    assert_eq!(labels["job-name"], "once");
    assert_eq!(labels["batch.kubernetes.io/job-name"], "once");
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
    let owner = &pod.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Job", uid.as_str(), Some(true))
    );
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );

    // A long-running Job: one active pod, deleted with the Job (background propagation).
    jobs.create(&PostParams::default(), &job("long", "exec sleep 300", 6))
        .await
        .unwrap();
    let running = eventually(WAIT, "the long Job's pod to run", || async {
        let list = pods.list(&Default::default()).await.unwrap().items;
        list.into_iter().find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("long-"))
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
    })
    .await;
    eventually(WAIT, "status.active 1", || async {
        (jobs.get("long").await.unwrap().status?.active == Some(1)).then_some(())
    })
    .await;
    jobs.delete("long", &DeleteParams::background())
        .await
        .unwrap();
    gone(&pods, running.metadata.name.as_deref().unwrap()).await;
    gone(&jobs, "long").await;

    // Failing pods are replaced until more than backoffLimit failed.
    jobs.create(&PostParams::default(), &job("fails", "exit 1", 1))
        .await
        .unwrap();
    let failed = eventually(WAIT, "the Job to fail", || async {
        let s = jobs.get("fails").await.unwrap().status?;
        let failed =
            s.conditions.iter().flatten().any(|c| {
                c.type_ == "Failed" && c.reason.as_deref() == Some("BackoffLimitExceeded")
            });
        failed.then_some(s)
    })
    .await;
    assert_eq!(failed.failed, Some(2));
    f.emu.shutdown().await;
}
