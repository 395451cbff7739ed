//! The GitHub provider's webhook handling on every `workflow_job` example GitHub's own
//! `@octokit/webhooks-examples` npm package ships (github.com and every GHES version).
//!
//! The package is found through `RUNSCALE_WEBHOOK_EXAMPLES` (the package directory), then
//! `RUNSCALE_NPM_DIR/node_modules/@octokit/webhooks-examples` (where `scripts/test.sh`
//! installs it), then `~/.cache/runscale/npm/...` and `target/npm/...`. Without it the test
//! prints a note and passes without checking anything, except under CI (`CI` set), where it
//! fails.
#![cfg(feature = "github")]

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use runscale_core::secret::SecretRef;
use runscale_core::{PoolId, Provider, WebhookRequest};
use runscale_providers::github::{Auth, Config, GithubProvider, PoolSelector};
use sha2::Sha256;

const SECRET: &str = "It's a Secret to Everybody";

fn examples_dir() -> Option<PathBuf> {
    let pkg = "node_modules/@octokit/webhooks-examples";
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("RUNSCALE_WEBHOOK_EXAMPLES") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("RUNSCALE_NPM_DIR") {
        candidates.push(PathBuf::from(p).join(pkg));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/runscale/npm").join(pkg));
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/npm")
            .join(pkg),
    );
    candidates
        .into_iter()
        .find(|p| p.join("api.github.com/index.json").is_file())
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Every `workflow_job` example, by (source file, index).
fn workflow_job_examples(dir: &PathBuf) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("index.json"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read examples");
        let index: Vec<serde_json::Value> = serde_json::from_str(&text).expect("examples json");
        for event in index {
            if event["name"] != "workflow_job" {
                continue;
            }
            for (i, ex) in event["examples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                out.push((format!("{}#{i}", file.display()), ex));
            }
        }
    }
    out
}

fn labels_of(ex: &serde_json::Value) -> Vec<String> {
    ex["workflow_job"]["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_workflow_job_example_is_verified_parsed_and_routed() {
    let Some(dir) = runscale_core::testing::require(
        examples_dir(),
        "the npm package @octokit/webhooks-examples",
        "scripts/test.sh installs it into RUNSCALE_NPM_DIR (or set RUNSCALE_WEBHOOK_EXAMPLES)",
    ) else {
        return;
    };
    let examples = workflow_job_examples(&dir);
    assert!(
        examples.len() >= 8,
        "expected the package's workflow_job examples, found {}",
        examples.len()
    );

    // One pool able to run every labelled example (all labels seen, without `self-hosted`,
    // which is implied), and one that runs none.
    let mut all_labels: Vec<String> = Vec::new();
    for (_, ex) in &examples {
        for l in labels_of(ex) {
            if !l.eq_ignore_ascii_case("self-hosted")
                && !all_labels.iter().any(|a| a.eq_ignore_ascii_case(&l))
            {
                all_labels.push(l);
            }
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    let secret = tmp.path().join("secret");
    std::fs::write(&token, "ghp_example\n").expect("write");
    std::fs::write(&secret, SECRET).expect("write");
    let config: Config = serde_json::from_value(serde_json::json!({
        "org": "octo-org",
        "auth": {"token": {"file": token}},
        "webhook_secret": {"file": secret},
        "api_url": "http://127.0.0.1:9"
    }))
    .expect("config");
    assert!(matches!(config.auth, Auth::Token(SecretRef::File(_))));
    let sel = |labels: Vec<String>| PoolSelector {
        labels,
        repository: None,
        runner_group_id: None,
        ephemeral: true,
    };
    let provider = GithubProvider::new(
        config,
        vec![
            (PoolId::new("everything"), sel(all_labels)),
            (PoolId::new("nothing"), sel(vec!["no-such-label".into()])),
        ],
    )
    .expect("provider");

    let mut checked = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, (source, ex)) in examples.iter().enumerate() {
        let body = serde_json::to_vec(ex).expect("json");
        let request = |delivery: String, signature: String| WebhookRequest {
            headers: vec![
                ("x-github-event".into(), "workflow_job".into()),
                ("x-github-delivery".into(), delivery),
                ("x-hub-signature-256".into(), signature),
                ("content-type".into(), "application/json".into()),
            ],
            body: body.clone(),
        };
        // A wrong signature is refused before anything is parsed.
        let bad = provider.webhook(&request(
            format!("bad-{i}"),
            format!("sha256={}", "0".repeat(64)),
        ));
        assert!(bad.is_err(), "{source}: a wrong signature must be refused");

        let woken = provider
            .webhook(&request(format!("delivery-{i}"), sign(&body)))
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        // Examples share job ids across files (github.com and each GHES version): a repeat
        // of an already-seen job, attempt and action is a duplicate and wakes nothing.
        let job = &ex["workflow_job"];
        let key = format!(
            "{}/{}/{}",
            job["id"],
            job["run_attempt"].as_u64().unwrap_or(1),
            ex["action"]
        );
        let expected: Vec<PoolId> = if !seen.insert(key) || labels_of(ex).is_empty() {
            vec![]
        } else {
            checked += 1;
            vec![PoolId::new("everything")]
        };
        assert_eq!(woken, expected, "{source}");
        // The same event from another hook (org and repo hooks both deliver it).
        let again = provider
            .webhook(&request(format!("other-hook-{i}"), sign(&body)))
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        assert!(again.is_empty(), "{source}: duplicate must wake nothing");
    }
    assert!(checked >= 4, "only {checked} examples were routed");
    println!(
        "checked {} workflow_job examples from {}",
        examples.len(),
        dir.display()
    );
}
