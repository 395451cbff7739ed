//! The webhook handlers of the four CI systems' providers.

use std::collections::HashSet;
use std::sync::LazyLock;

use hmac::{Hmac, KeyInit, Mac};
use runscale_core::secret::{SecretRef, preload};
use runscale_core::{PoolId, Provider, Result, WebhookRequest};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::Sha256;

use super::Message;
use crate::buildkite::BuildkiteProvider;
use crate::circleci::CircleciProvider;
use crate::github::GithubProvider;
use crate::gitlab::GitlabProvider;

/// Every secret of the fuzzed providers (webhook secrets and tokens alike).
pub(super) const SECRET: &str = "fuzz-secret-3b7e";

/// A reference to a secret whose value is [`SECRET`], preloaded so that resolving it reads
/// nothing.
pub(super) fn secret(name: &str) -> Value {
    let reference =
        json!({"aws_secrets_manager": {"name": format!("fuzz/{name}"), "region": "us-east-1"}});
    let parsed: SecretRef =
        serde_json::from_value(reference.clone()).expect("a secret reference of the harness");
    preload(&parsed, Ok(SecretString::from(SECRET.to_owned())));
    reference
}

/// A value of the harness's own JSON (configurations, selectors).
pub(super) fn from_json<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a configuration of the harness")
}

/// HMAC-SHA256 under [`SECRET`] of the concatenated `parts`, in hex.
fn mac_hex(parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Replaces (or adds) a header.
fn set(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    headers.retain(|(k, _)| k != name);
    headers.push((name.to_owned(), value));
}

/// What every answer of a webhook handler must be: pools of the provider, each at most once;
/// or an error that does not quote the secret.
fn check(result: &Result<Vec<PoolId>>, pools: &[&str]) {
    match result {
        Ok(woken) => {
            let mut seen = HashSet::new();
            for p in woken {
                assert!(pools.contains(&p.as_str()), "woke an unknown pool {p}");
                assert!(seen.insert(p.as_str()), "woke {p} twice");
            }
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET), "an error quotes the secret: {text}");
        }
    }
}

fn pool_ids(names: &[&str]) -> Vec<PoolId> {
    names.iter().map(|n| PoolId::new(*n)).collect()
}

const GITHUB_POOLS: [&str; 3] = ["linux", "gpu", "any"];

static GITHUB: LazyLock<GithubProvider> = LazyLock::new(|| {
    let config = from_json(json!({
        "org": "acme",
        "auth": {"token": secret("github-token")},
        "webhook_secret": secret("github-webhook"),
        "api_url": "http://127.0.0.1:9",
    }));
    let selectors = [
        json!({"labels": ["linux"]}),
        json!({"labels": ["linux", "gpu"]}),
        json!({"labels": ["self-hosted"]}),
    ];
    let pools = pool_ids(&GITHUB_POOLS)
        .into_iter()
        .zip(selectors.into_iter().map(from_json))
        .collect();
    GithubProvider::new(config, pools).expect("the harness's GitHub provider")
});

/// `POST /webhooks/github`: `X-Hub-Signature-256` verification, then the event.
pub fn github_webhook(data: &[u8]) {
    let msg = Message::parse(data);
    let mut headers = msg.headers.clone();
    let expected = format!("sha256={}", mac_hex(&[msg.body]));
    let signed = msg.word(0) == Some("signed");
    if signed {
        set(&mut headers, "x-hub-signature-256", expected.clone());
    }
    let request = WebhookRequest {
        headers,
        body: msg.body.to_vec(),
    };
    let result = GITHUB.webhook(&request);
    check(&result, &GITHUB_POOLS);
    if result.is_ok() {
        let presented = request.header("x-hub-signature-256").unwrap_or_default();
        assert!(
            presented.trim().eq_ignore_ascii_case(&expected),
            "accepted a delivery without the body's signature"
        );
    }
}

const GITLAB_POOLS: [&str; 2] = ["docker", "untagged"];

static GITLAB: LazyLock<GitlabProvider> = LazyLock::new(|| {
    let config = from_json(json!({
        "url": "http://127.0.0.1:9",
        "token": secret("gitlab-token"),
        "webhook_token": secret("gitlab-webhook"),
        "projects": ["acme/app"],
    }));
    let selectors = [json!({"tags": ["docker"]}), json!({"run_untagged": true})];
    let pools = pool_ids(&GITLAB_POOLS)
        .into_iter()
        .zip(selectors.into_iter().map(from_json))
        .collect();
    GitlabProvider::new(config, pools).expect("the harness's GitLab provider")
});

/// `POST /webhooks/gitlab`: the `X-Gitlab-Token` check, then the job event.
pub fn gitlab_webhook(data: &[u8]) {
    let msg = Message::parse(data);
    let mut headers = msg.headers.clone();
    if msg.word(0) == Some("signed") {
        set(&mut headers, "x-gitlab-token", SECRET.to_owned());
    }
    let request = WebhookRequest {
        headers,
        body: msg.body.to_vec(),
    };
    let result = GITLAB.webhook(&request);
    check(&result, &GITLAB_POOLS);
    if result.is_ok() {
        assert_eq!(
            request.header("x-gitlab-token"),
            Some(SECRET),
            "accepted a delivery without the token"
        );
    }
}

const BUILDKITE_POOLS: [&str; 2] = ["default", "linux"];

static BUILDKITE: LazyLock<BuildkiteProvider> = LazyLock::new(|| {
    let config = from_json(json!({
        "org": "acme",
        "api_url": "http://127.0.0.1:9",
        "agent_endpoint": "http://127.0.0.1:9/v3",
        "api_token": secret("buildkite-api"),
        "agent_token": secret("buildkite-agent"),
        "webhook_token": secret("buildkite-webhook"),
    }));
    let selectors = [
        json!({"queue": "default"}),
        json!({"queue": "linux", "tags": {"os": "linux"}}),
    ];
    let pools = pool_ids(&BUILDKITE_POOLS)
        .into_iter()
        .zip(selectors.into_iter().map(from_json))
        .collect();
    BuildkiteProvider::new(config, pools).expect("the harness's Buildkite provider")
});

/// `POST /webhooks/buildkite`: the token or signature check, then the event. `signed [UNIX]`
/// signs the body at `UNIX` (default: now); `token` presents the token.
pub fn buildkite_webhook(data: &[u8]) {
    let msg = Message::parse(data);
    let mut headers = msg.headers.clone();
    match msg.word(0) {
        Some("signed") => {
            let ts = msg
                .word(1)
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or_else(|| chrono::Utc::now().timestamp());
            let sig = mac_hex(&[ts.to_string().as_bytes(), b".", msg.body]);
            set(
                &mut headers,
                "x-buildkite-signature",
                format!("timestamp={ts},signature={sig}"),
            );
        }
        Some("token") => set(&mut headers, "x-buildkite-token", SECRET.to_owned()),
        _ => {}
    }
    let request = WebhookRequest {
        headers,
        body: msg.body.to_vec(),
    };
    let result = BUILDKITE.webhook(&request);
    check(&result, &BUILDKITE_POOLS);
    if result.is_ok() {
        let proven = match request.header("x-buildkite-signature") {
            Some(sig) => {
                // As the provider reads it: the last value of each field counts.
                let field = |name: &str| {
                    sig.split(',')
                        .filter_map(|p| p.trim().split_once('='))
                        .rfind(|(k, _)| *k == name)
                        .map(|(_, v)| v.trim().to_owned())
                };
                match (
                    field("timestamp").and_then(|t| t.parse::<i64>().ok()),
                    field("signature"),
                ) {
                    (Some(ts), Some(s)) => s.eq_ignore_ascii_case(&mac_hex(&[
                        ts.to_string().as_bytes(),
                        b".",
                        msg.body,
                    ])),
                    _ => false,
                }
            }
            None => request.header("x-buildkite-token").map(str::trim) == Some(SECRET),
        };
        assert!(
            proven,
            "accepted a delivery without the token or its signature"
        );
    }
}

const CIRCLECI_POOLS: [&str; 2] = ["app", "any"];

static CIRCLECI: LazyLock<CircleciProvider> = LazyLock::new(|| {
    let config = from_json(json!({
        "api_url": "http://127.0.0.1:9",
        "token": secret("circleci-api"),
        "webhook_secret": secret("circleci-webhook"),
    }));
    let selectors = [
        json!({"resource_class": "acme/linux", "token": secret("circleci-linux"), "projects": ["gh/org/app"]}),
        json!({"resource_class": "acme/arm", "token": secret("circleci-arm")}),
    ];
    let pools = pool_ids(&CIRCLECI_POOLS)
        .into_iter()
        .zip(selectors.into_iter().map(from_json))
        .collect();
    CircleciProvider::new(config, pools).expect("the harness's CircleCI provider")
});

/// `POST /webhooks/circleci`: `circleci-signature` verification, then the event.
pub fn circleci_webhook(data: &[u8]) {
    let msg = Message::parse(data);
    let mut headers = msg.headers.clone();
    let expected = mac_hex(&[msg.body]);
    if msg.word(0) == Some("signed") {
        set(&mut headers, "circleci-signature", format!("v1={expected}"));
    }
    let request = WebhookRequest {
        headers,
        body: msg.body.to_vec(),
    };
    let result = CIRCLECI.webhook(&request);
    check(&result, &CIRCLECI_POOLS);
    if result.is_ok() {
        let presented = request.header("circleci-signature").unwrap_or_default();
        assert!(
            presented
                .split(',')
                .filter_map(|p| p.trim().strip_prefix("v1="))
                .any(|v| v.trim().eq_ignore_ascii_case(&expected)),
            "accepted a delivery without the body's signature"
        );
    }
}
