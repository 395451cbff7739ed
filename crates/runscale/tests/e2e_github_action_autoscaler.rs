//! End to end for users of devjoes/github-runner-autoscaler ("github-action-autoscaler"):
//! their `ScaledActionRunner` resources, as `kubectl get scaledactionrunners -A -o yaml` prints
//! the ones the seed README's `add-runner` tool makes (one namespace and one repository per
//! resource, `runs-on: [self-hosted]` workflows), go through `runscale import
//! github-action-autoscaler` (the binary) unchanged; the imported configuration runs in the
//! daemon against the GitHub emulator and the fake kube-apiserver, whose kubelet runs each
//! runner pod's container as `runscale fake-runner` (standing in for the seed image's
//! `/actions-runner/run.sh`).
//!
//! Shown: jobs queued in three repositories all complete, each on a runner registered at the
//! job's own repository; no busy runner is removed (the emulator's violations); pods of the
//! scale-to-zero resources are gone afterwards and the `minRunners: 1` resource keeps exactly
//! one idle runner after a burst of three.

#![cfg(all(feature = "backend-kubernetes", feature = "provider-github"))]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use runscale::config;
use runscale_emulator::github::{
    Conclusion, Emulator, EmulatorConfig, JobSpec, OwnerConfig, OwnerKind, WebhookConfig, Workload,
};
use runscale_emulator::kube::{ImageConfig, KubeConfig, KubeEmulator};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

mod support;
use support::{BIN, fake_runner_script, free_port, wait_for};

const TOKEN: &str = "gaa-e2e-token";
const WEBHOOK_SECRET: &str = "gaa-e2e-webhook-secret";
/// The seed's default runner image, which the resources leave unset.
const SEED_IMAGE: &str = "myoung34/github-runner:latest";
const REPOS: [&str; 3] = ["example-repo", "other-repo", "third-repo"];

/// The resources as `kubectl get scaledactionrunners -A -o yaml` prints what the README's
/// `add-runner` made (`-n <name> -o devjoes -r <repo> -m <max>`, applied with
/// `kubectl apply -n <name>`), plus one resource using `minRunners` and `scaling`.
const RESOURCES: &str = r#"apiVersion: v1
items:
- apiVersion: runner.devjoes.com/v1alpha1
  kind: ScaledActionRunner
  metadata:
    creationTimestamp: "2021-04-13T10:12:01Z"
    generation: 1
    name: example-repo
    namespace: example-repo
    resourceVersion: "1201"
    uid: 0b6c8d6e-2a53-4d43-9d34-6c3c6f0b0a01
  spec:
    githubTokenSecret: example-repo
    maxRunners: 4
    owner: devjoes
    repo: example-repo
    runnerSecrets:
    - example-repo-0
    - example-repo-1
    - example-repo-2
    - example-repo-3
- apiVersion: runner.devjoes.com/v1alpha1
  kind: ScaledActionRunner
  metadata:
    creationTimestamp: "2021-04-13T11:02:44Z"
    generation: 1
    name: other-repo
    namespace: other-repo
    resourceVersion: "1377"
    uid: 0b6c8d6e-2a53-4d43-9d34-6c3c6f0b0a02
  spec:
    githubTokenSecret: other-repo
    maxRunners: 2
    owner: devjoes
    repo: other-repo
    runnerSecrets:
    - other-repo-0
    - other-repo-1
- apiVersion: runner.devjoes.com/v1alpha1
  kind: ScaledActionRunner
  metadata:
    creationTimestamp: "2021-04-14T08:30:10Z"
    generation: 2
    name: third-repo
    namespace: third-repo
    resourceVersion: "2088"
    uid: 0b6c8d6e-2a53-4d43-9d34-6c3c6f0b0a03
  spec:
    githubTokenSecret: third-repo
    maxRunners: 3
    minRunners: 1
    owner: devjoes
    repo: third-repo
    runnerSecrets:
    - third-repo-0
    - third-repo-1
    - third-repo-2
    scaling:
      cooldownPeriod: 5
  status:
    referencedSecrets:
      third-repo: "1"
kind: List
metadata:
  resourceVersion: ""
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_action_runners_import_and_run_jobs_at_their_repositories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    let listen = format!("127.0.0.1:{}", free_port());

    // GitHub: the user account of the README (`cr_owner: devjoes`) with three repositories,
    // a webhook to runscale.
    let mut gh = EmulatorConfig::new(
        vec![OwnerConfig {
            login: "devjoes".into(),
            kind: OwnerKind::User,
            repos: REPOS.iter().map(|r| (*r).to_owned()).collect(),
            runner_groups: Vec::new(),
        }],
        vec![SecretString::from(TOKEN)],
    );
    gh.webhooks.push(WebhookConfig {
        url: format!("http://{listen}/webhooks/github"),
        secret: Some(SecretString::from(WEBHOOK_SECRET)),
        id: 1,
        repo: None,
        owner: None,
    });
    let github = Emulator::start(gh, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("GitHub emulator");

    // Kubernetes: one namespace per resource. The seed image's `/bin/bash -c 'exec
    // /actions-runner/run.sh --jitconfig …'` runs the fake runner, which reads the JIT
    // configuration from the pod's Secret (envFrom) as run.sh would from its argument.
    let wrapper = fake_runner_script(dir.path(), "runner.sh");
    let mut namespaces = vec!["default".to_owned()];
    namespaces.extend(REPOS.iter().map(|r| (*r).to_owned()));
    let kube = KubeEmulator::start(
        KubeConfig {
            namespaces,
            ..KubeConfig::default()
        }
        .image(
            SEED_IMAGE,
            ImageConfig::host().with_program("/bin/bash", &wrapper),
        ),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("fake kube-apiserver");
    kube.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    write("token", TOKEN);
    write("webhook-secret", WEBHOOK_SECRET);
    write("resources.yaml", RESOURCES);

    // The import, through the binary.
    let out = std::process::Command::new(BIN)
        .args(["import", "github-action-autoscaler", "-f"])
        .arg(dir.path().join("resources.yaml"))
        .arg("-o")
        .arg(dir.path().join("runscale.yaml"))
        .args(["--api-url", github.base_url(), "--token-file"])
        .arg(dir.path().join("token"))
        .arg("--webhook-secret-file")
        .arg(dir.path().join("webhook-secret"))
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .args(["--context", "runscale-fake"])
        .output()
        .expect("runscale import runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(
        !stderr.contains("no equivalent"),
        "the README's resources map completely: {stderr}"
    );
    let imported = std::fs::read_to_string(dir.path().join("runscale.yaml")).expect("output");
    // Deployment settings of this test (not of the artefacts): where to listen, a faster
    // pass.
    let text = format!(
        "listen: \"{listen}\"\nshutdown_timeout: 10s\n{}",
        imported.replace("interval: 30s", "interval: 2s")
    );
    let validated = config::load_str(&text, Path::new("runscale.yaml"), |_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));

    let stop = CancellationToken::new();
    let daemon = tokio::spawn({
        let stop = stop.clone();
        async move { runscale::daemon::serve(&validated, false, stop, None).await }
    });

    // Jobs in the three repositories, `runs-on: [self-hosted]` as in the README's workflow.
    let started = Instant::now();
    let mut w = Workload::new();
    let plan = [("example-repo", 6u32), ("other-repo", 4), ("third-repo", 3)];
    let total: u32 = plan.iter().map(|(_, n)| n).sum();
    for (repo, n) in plan {
        for i in 0..n {
            w = w.job(
                Duration::from_millis(300) * i,
                JobSpec::new(
                    format!("devjoes/{repo}"),
                    &["self-hosted"],
                    Duration::from_millis(1500 + 250 * u64::from(i % 3)),
                )
                .named(format!("main-{i}")),
            );
        }
    }
    let playing = github.run_workload(w).expect("workload");

    // Watch where runners are registered and how many pods each namespace has.
    let mut scope_of: HashMap<String, String> = HashMap::new();
    let mut max_pods: BTreeMap<&str, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let snap = github.snapshot();
        for r in &snap.runners {
            scope_of.insert(r.name.clone(), r.scope.clone());
        }
        for ns in REPOS {
            let n = kube.pods(ns).len();
            let m = max_pods.entry(ns).or_default();
            *m = (*m).max(n);
        }
        if playing.is_finished() && snap.jobs.len() == total as usize && snap.all_done() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not complete: {:?}",
            snap.jobs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();

    let snap = github.snapshot();
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    let mut waits = Vec::new();
    for j in &snap.jobs {
        assert_eq!(j.conclusion, Some(Conclusion::Success), "{j:?}");
        let runner = j.runner_name.as_deref().expect("ran on a runner");
        assert_eq!(
            scope_of.get(runner).map(String::as_str),
            Some(j.repo.as_str()),
            "job {} of {} ran on {runner}, registered at {:?}",
            j.id,
            j.repo,
            scope_of.get(runner)
        );
        let pool = j.repo.trim_start_matches("devjoes/");
        assert!(
            runner.starts_with(&format!("rs-{pool}-")),
            "{runner} is the pool of {}",
            j.repo
        );
        waits.push(j.wait);
    }

    // Scale-in: the scale-to-zero resources end with no pod; third-repo (minRunners 1) with
    // one idle runner.
    wait_for("scale-in", Duration::from_secs(90), || {
        kube.pods("example-repo").is_empty()
            && kube.pods("other-repo").is_empty()
            && kube.pods("third-repo").len() == 1
    })
    .await;
    let idle = github
        .snapshot()
        .runners
        .into_iter()
        .filter(|r| r.scope == "devjoes/third-repo" && !r.busy)
        .count();
    assert!(idle >= 1, "the minRunners runner is registered and idle");
    let max_wait = waits.iter().max().copied().unwrap_or_default();
    eprintln!(
        "github-action-autoscaler e2e: {total} jobs in 3 repositories completed in {:.1} s; \
         longest wait {:.1} s; pods created {}; most pods at once per namespace {max_pods:?}; \
         {} runners registered",
        elapsed.as_secs_f64(),
        max_wait.as_secs_f64(),
        kube.pods_created_total(),
        scope_of.len()
    );

    stop.cancel();
    daemon
        .await
        .expect("daemon task")
        .expect("daemon stopped cleanly");
    github.shutdown().await;
    kube.shutdown().await;
}

/// The command line: fields without an equivalent are warned about on stderr (and commented in
/// the output), and invalid input fails with exit code 2 naming the resource and the field.
#[test]
fn the_import_command_warns_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.yaml");
    let run = |text: &str| {
        std::fs::write(&input, text).expect("write");
        std::process::Command::new(BIN)
            .args(["import", "github-action-autoscaler", "-n", "ci", "-f"])
            .arg(&input)
            .output()
            .expect("runs")
    };
    let out = run(
        "apiVersion: runner.devjoes.com/v1alpha1\nkind: ScaledActionRunner\n\
                   metadata: {name: app}\nspec: {owner: acme, repo: app, maxRunners: 2, \
                   scaleFactor: \"0.8\"}\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ScaledActionRunner ci/app spec.scaleFactor: no equivalent"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("# spec.scaleFactor: no equivalent"),
        "{stdout}"
    );
    assert!(stdout.contains("repository: acme/app"), "{stdout}");

    let out = run(
        "apiVersion: runner.devjoes.com/v1alpha1\nkind: ScaledActionRunner\n\
                   metadata: {name: app, namespace: team}\nspec: {owner: acme, repo: app}\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ScaledActionRunner team/app spec.maxRunners: missing"),
        "{stderr}"
    );
}
