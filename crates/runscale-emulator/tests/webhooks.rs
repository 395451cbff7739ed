//! `workflow_job` webhooks delivered to a local axum receiver: headers, HMAC signatures,
//! payload shapes, one delivery per hook, fault rates, and delivery never blocking the API.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use runscale_emulator::github::{Faults, JobSpec, WebhookConfig, signature, verify_signature};
use secrecy::SecretString;
use serde_json::Value;

#[test]
fn signature_matches_the_test_vector_from_githubs_docs() {
    assert_eq!(
        signature(b"It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// The keys used by the `workflow_job` examples of `@octokit/webhooks-examples` with this
/// action, if installed.
fn example_keys(action: &str) -> Option<(Vec<String>, Vec<String>)> {
    let dir = std::env::var("RUNSCALE_NPM_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/runscale/npm",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let text = std::fs::read_to_string(format!(
        "{dir}/node_modules/@octokit/webhooks-examples/api.github.com/index.json"
    ))
    .ok()?;
    let all: Value = serde_json::from_str(&text).ok()?;
    let examples: Vec<Value> = all
        .as_array()?
        .iter()
        .find(|e| e["name"] == "workflow_job")?["examples"]
        .as_array()?
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect();
    let keys = |field: &str| {
        let mut keys: Vec<String> = examples
            .iter()
            .filter_map(|e| e[field].as_object())
            .flat_map(|o| o.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    Some((keys("workflow_job"), keys("repository")))
}

#[tokio::test]
async fn deliveries_are_signed_and_shaped_like_githubs() {
    let receiver = Receiver::start().await;
    let mut c = config();
    c.webhooks.push(receiver.hook(Some(SECRET)));
    let emu = start(c).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let job = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted", "gpu"],
            Duration::from_secs(60),
        ))
        .expect("queued");
    let got = receiver.wait_for(|g| !g.is_empty()).await;
    let queued = &got[0];
    assert_eq!(queued.header("x-github-event"), "workflow_job");
    assert_eq!(queued.header("x-github-hook-id"), "11");
    assert_eq!(
        queued.header("x-github-hook-installation-target-type"),
        "organization"
    );
    assert_eq!(queued.header("content-type"), "application/json");
    assert!(is_uuid(queued.header("x-github-delivery")));
    let sig = queued.header("x-hub-signature-256");
    assert!(
        verify_signature(SECRET.as_bytes(), &queued.body, sig),
        "{sig}"
    );
    assert!(!verify_signature(b"another secret", &queued.body, sig));

    let body = queued.json();
    assert_eq!(body["action"], "queued");
    let wj = &body["workflow_job"];
    assert_eq!(wj["id"], job.job_id);
    assert_eq!(wj["run_id"], job.run_id);
    assert_eq!(wj["status"], "queued");
    assert_eq!(wj["labels"], serde_json::json!(["self-hosted", "gpu"]));
    assert_eq!(wj["runner_id"], Value::Null);
    assert_eq!(wj["run_attempt"], 1);
    assert_eq!(body["repository"]["full_name"], "octo-org/app");
    assert_eq!(body["repository"]["name"], "app");
    assert!(body["repository"]["id"].is_u64());
    assert_eq!(body["repository"]["owner"]["login"], "octo-org");
    assert_eq!(body["repository"]["owner"]["type"], "Organization");
    assert_eq!(body["organization"]["login"], "octo-org");
    assert!(body["sender"]["login"].is_string());
    assert_eq!(body["installation"]["id"], INSTALLATION);
    if let Some((job_keys, repo_keys)) = example_keys("queued") {
        for key in job_keys {
            assert!(wj.get(&key).is_some(), "workflow_job.{key} missing");
        }
        for key in repo_keys {
            assert!(
                body["repository"].get(&key).is_some(),
                "repository.{key} missing"
            );
        }
    }

    // A runner takes and finishes it: in_progress names the runner, completed concludes.
    let (runner_id, encoded) = api.jit("/orgs/octo-org", "gpu-1", &["gpu"]).await;
    let runner = RawRunner::from_jit(&encoded);
    runner.connect().await;
    runner.take_job().await;
    runner.complete(job.job_id).await;
    let got = receiver.wait_for(|g| g.len() >= 3).await;
    let by_action: BTreeMap<String, Value> = got
        .iter()
        .map(|r| {
            let v = r.json();
            (v["action"].as_str().expect("action").to_owned(), v)
        })
        .collect();
    let running = &by_action["in_progress"]["workflow_job"];
    assert_eq!(running["status"], "in_progress");
    assert_eq!(running["runner_id"], runner_id);
    assert_eq!(running["runner_name"], "gpu-1");
    let done = &by_action["completed"]["workflow_job"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["conclusion"], "success");
    assert_eq!(done["runner_name"], "gpu-1");
    let ids: std::collections::BTreeSet<&str> =
        got.iter().map(|r| r.header("x-github-delivery")).collect();
    assert_eq!(ids.len(), 3, "each event has its own delivery id");
    emu.shutdown().await;
}

#[tokio::test]
async fn org_and_repo_hooks_each_get_their_own_delivery_and_others_none() {
    let receiver = Receiver::start().await;
    let mut c = config();
    c.webhooks.push(receiver.hook(None));
    c.webhooks.push(WebhookConfig {
        url: receiver.url.clone(),
        secret: Some(SecretString::from("repo-secret")),
        id: 22,
        repo: Some("octo-org/app".into()),
        owner: None,
    });
    c.webhooks.push(WebhookConfig {
        url: receiver.url.clone(),
        secret: None,
        id: 33,
        repo: Some("octo-org/web".into()),
        owner: None,
    });
    let emu = start(c).await;
    emu.enqueue(JobSpec::new(
        "octo-org/app",
        &["self-hosted"],
        Duration::from_secs(1),
    ))
    .expect("queued");
    let got = receiver.wait_for(|g| g.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if receiver.received().len() > got.len() {
        receiver.received()
    } else {
        got
    };
    let mut hooks: Vec<&str> = got.iter().map(|r| r.header("x-github-hook-id")).collect();
    hooks.sort();
    assert_eq!(hooks, vec!["11", "22"]);
    assert_ne!(
        got[0].header("x-github-delivery"),
        got[1].header("x-github-delivery")
    );
    let repo_hook = got
        .iter()
        .find(|r| r.header("x-github-hook-id") == "22")
        .expect("repo hook");
    assert_eq!(
        repo_hook.header("x-github-hook-installation-target-type"),
        "repository"
    );
    assert!(verify_signature(
        b"repo-secret",
        &repo_hook.body,
        repo_hook.header("x-hub-signature-256")
    ));
    let org_hook = got
        .iter()
        .find(|r| r.header("x-github-hook-id") == "11")
        .expect("org hook");
    assert_eq!(
        org_hook.header("x-hub-signature-256"),
        "",
        "no secret, no signature"
    );
    emu.shutdown().await;
}

async fn run_with_faults(seed: u64, jobs: usize) -> (Vec<(bool, bool)>, Receiver, usize, u64, u64) {
    let receiver = Receiver::start().await;
    let mut c = config();
    c.seed = seed;
    c.webhooks.push(receiver.hook(Some(SECRET)));
    c.faults = Faults {
        webhook_drop_rate: 0.2,
        webhook_duplicate_rate: 0.2,
        ..Faults::none()
    };
    let emu = start(c).await;
    for _ in 0..jobs {
        emu.enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted"],
            Duration::from_secs(1),
        ))
        .expect("queued");
    }
    let stats = emu.snapshot().webhooks;
    let expected = (stats.events - stats.dropped + stats.duplicated) as usize;
    let got = receiver.wait_for(|g| g.len() >= expected).await;
    assert_eq!(got.len(), expected);
    assert!(
        eventually(&emu, 20, |s| s.webhooks.delivered as usize == expected).await,
        "delivered counter"
    );
    let decisions = emu
        .deliveries()
        .iter()
        .map(|d| (d.dropped, d.duplicate))
        .collect();
    emu.shutdown().await;
    (
        decisions,
        receiver,
        expected,
        stats.dropped,
        stats.duplicated,
    )
}

#[tokio::test]
async fn drop_and_duplicate_rates_are_honoured_and_repeatable_with_a_seed() {
    let jobs = 300;
    let (decisions, receiver, received, dropped, duplicated) = run_with_faults(7, jobs).await;
    // 20% of 300 = 60 expected each; generous bounds.
    assert!((30..=95).contains(&dropped), "dropped {dropped}");
    assert!((25..=90).contains(&duplicated), "duplicated {duplicated}");
    assert_eq!(received, jobs - dropped as usize + duplicated as usize);
    // Duplicates reuse their original's delivery id, with identical bodies.
    let mut copies: BTreeMap<String, Vec<axum::body::Bytes>> = BTreeMap::new();
    for r in receiver.received() {
        assert!(verify_signature(
            SECRET.as_bytes(),
            &r.body,
            r.header("x-hub-signature-256")
        ));
        copies
            .entry(r.header("x-github-delivery").to_owned())
            .or_default()
            .push(r.body.clone());
    }
    let twice = copies.values().filter(|v| v.len() == 2).count();
    assert_eq!(twice as u64, duplicated);
    assert!(
        copies
            .values()
            .all(|v| v.len() <= 2 && v.iter().all(|b| *b == v[0]))
    );
    // The same seed makes the same decisions.
    let (again, ..) = run_with_faults(7, jobs).await;
    assert_eq!(decisions, again);
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_the_api() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind(listen()).await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let hang = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut c = config();
    c.webhooks.push(WebhookConfig {
        url,
        secret: None,
        id: 1,
        repo: None,
        owner: None,
    });
    let emu = start(c).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let t = Instant::now();
    for _ in 0..50 {
        emu.enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted"],
            Duration::from_secs(1),
        ))
        .expect("queued");
    }
    assert_eq!(
        api.get("/repos/octo-org/app/actions/runs").await.status(),
        200
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    emu.shutdown().await;
    hang.abort();
}
