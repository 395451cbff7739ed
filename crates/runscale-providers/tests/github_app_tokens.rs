//! GitHub App installation tokens: cached, replaced five minutes before they expire, and
//! replaced at once when GitHub rejects one. The GitHub emulator always issues one-hour
//! tokens, so this test scripts the three App endpoints with a small server on 127.0.0.1
//! whose token lifetime and revocation it controls.
#![cfg(feature = "github")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use runscale_core::{PoolId, Provider};
use runscale_providers::github::{Config, GithubProvider, PoolSelector};
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    /// Lifetime of the next tokens issued.
    lifetime: Option<chrono::Duration>,
    /// Tokens issued so far (the last one is the valid one).
    issued: Vec<String>,
    /// Installation look-ups.
    lookups: u32,
    /// Whether the last token was revoked.
    revoked: bool,
}

type Shared = Arc<Mutex<Script>>;

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

/// An App JWT: three base64url parts.
fn is_jwt(t: &str) -> bool {
    t.split('.').count() == 3 && !t.starts_with("ghs_")
}

async fn installation(State(s): State<Shared>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if !is_jwt(&bearer(&h)) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "JWT needed"})),
        );
    }
    s.lock().expect("lock").lookups += 1;
    (StatusCode::OK, Json(json!({"id": 7})))
}

async fn access_token(State(s): State<Shared>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if !is_jwt(&bearer(&h)) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "JWT needed"})),
        );
    }
    let mut s = s.lock().expect("lock");
    let token = format!("ghs_{}", s.issued.len() + 1);
    s.issued.push(token.clone());
    s.revoked = false;
    let expires_at = chrono::Utc::now() + s.lifetime.unwrap_or(chrono::Duration::hours(1));
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at.to_rfc3339()})),
    )
}

async fn runners(State(s): State<Shared>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    let s = s.lock().expect("lock");
    let ok = !s.revoked && s.issued.last().is_some_and(|t| *t == bearer(&h));
    if ok {
        (
            StatusCode::OK,
            Json(json!({"total_count": 0, "runners": []})),
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
    }
}

#[tokio::test]
async fn installation_tokens_are_cached_refreshed_early_and_replaced_when_rejected() {
    let script: Shared = Arc::default();
    let app = Router::new()
        .route("/orgs/acme/installation", get(installation))
        .route("/app/installations/7/access_tokens", post(access_token))
        .route("/orgs/acme/actions/runners", get(runners))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, private_key_pem()).expect("write");
    let config: Config = serde_json::from_value(json!({
        "api_url": format!("http://{addr}"),
        "org": "acme",
        "repositories": ["app"],
        "auth": {"app": {"client_id": "Iv1.test", "private_key": {"file": key}}},
        "request_timeout": "10s",
    }))
    .expect("config");
    let p = GithubProvider::new(
        config,
        vec![(
            PoolId::new("linux"),
            PoolSelector {
                labels: vec!["linux".into()],
                repository: None,
                runner_group_id: None,
                ephemeral: true,
            },
        )],
    )
    .expect("provider");
    let issued = || script.lock().expect("lock").issued.len();

    // One-hour tokens: fetched once, reused.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), p.probe())
            .await
            .expect("in time")
            .expect("probe");
    }
    assert_eq!(issued(), 1, "a one-hour token is reused");
    assert_eq!(
        script.lock().expect("lock").lookups,
        1,
        "the installation is looked up once"
    );

    // A rejected token (revoked) is replaced at once and the request retried.
    script.lock().expect("lock").revoked = true;
    p.probe().await.expect("probe after revocation");
    assert_eq!(issued(), 2, "a rejected token is replaced");

    // Tokens with less than five minutes left are replaced before use.
    script.lock().expect("lock").lifetime = Some(chrono::Duration::minutes(4));
    script.lock().expect("lock").revoked = true;
    p.probe().await.expect("probe");
    let before = issued();
    p.probe().await.expect("probe");
    p.probe().await.expect("probe");
    assert_eq!(
        issued(),
        before + 2,
        "a token expiring within five minutes is refreshed before every use"
    );
    assert_eq!(script.lock().expect("lock").lookups, 1);
    server.abort();
}

/// A fresh 2048-bit RSA private key, PKCS#8 PEM.
fn private_key_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine;
    let pair =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
    let der = pair.as_der().expect("pkcs8");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut s = "-----BEGIN PRIVATE KEY-----\n".to_owned();
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("ascii"));
        s.push('\n');
    }
    s.push_str("-----END PRIVATE KEY-----\n");
    s
}
