//! Helpers shared by the integration tests: an emulator on 127.0.0.1:0 with a known
//! configuration, an authenticated client, App JWTs, a webhook receiver, and a raw runner
//! speaking the `/_emulator` protocol.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use runscale_emulator::github::{
    AppConfig, Emulator, EmulatorConfig, EmulatorHandle, InstallationConfig, OwnerConfig,
    OwnerKind, RunnerGroupConfig, RunnerTimeouts, WebhookConfig,
};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const TOKEN: &str = "pat-one";
pub const OTHER_TOKEN: &str = "pat-two";
pub const APP_ID: u64 = 4242;
pub const INSTALLATION: u64 = 77;
pub const PRIVATE_KEY: &str = include_str!("../fixtures/app-key.pem");
pub const PUBLIC_KEY: &str = include_str!("../fixtures/app-key.pub.pem");
pub const OTHER_PRIVATE_KEY: &str = include_str!("../fixtures/other-key.pem");
pub const SECRET: &str = "It's a Secret to Everybody";

pub fn listen() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback")
}

/// `octo-org` (repos `app`, `web`; group 2 `gpu-group`), user `alice` (repo `dotfiles`),
/// `other-org` (repo `svc`); two PATs; an App installed on `octo-org`; fast runner
/// timeouts.
pub fn config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(
        vec![
            OwnerConfig {
                login: "octo-org".into(),
                kind: OwnerKind::Organization,
                repos: vec!["app".into(), "web".into()],
                runner_groups: vec![RunnerGroupConfig {
                    id: 2,
                    name: "gpu-group".into(),
                }],
            },
            OwnerConfig {
                login: "alice".into(),
                kind: OwnerKind::User,
                repos: vec!["dotfiles".into()],
                runner_groups: vec![],
            },
            OwnerConfig {
                login: "other-org".into(),
                kind: OwnerKind::Organization,
                repos: vec!["svc".into()],
                runner_groups: vec![],
            },
        ],
        vec![SecretString::from(TOKEN), SecretString::from(OTHER_TOKEN)],
    );
    c.app = Some(AppConfig {
        app_id: APP_ID,
        client_id: Some("Iv1.test".into()),
        slug: "runscale-test".into(),
        public_key_pem: PUBLIC_KEY.into(),
        installations: vec![InstallationConfig {
            id: INSTALLATION,
            owner: "octo-org".into(),
        }],
    });
    c.runners = RunnerTimeouts {
        heartbeat_interval: Duration::from_millis(200),
        offline_after: Duration::from_secs(2),
        // Long enough that checks made while a silent runner is busy-offline stay inside
        // the window on a loaded machine.
        lost_job_timeout: Duration::from_secs(6),
        poll_wait: Duration::from_secs(1),
    };
    c
}

pub async fn start(config: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(config, listen())
        .await
        .expect("emulator starts")
}

/// A client calling `base` with a token.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Api {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("request")
    }

    /// Creates a JIT runner; returns (runner id, encoded config).
    pub async fn jit(&self, scope: &str, name: &str, labels: &[&str]) -> (u64, String) {
        let resp = self
            .post(
                &format!("{scope}/actions/runners/generate-jitconfig"),
                json!({"name": name, "runner_group_id": 1, "labels": labels}),
            )
            .await;
        assert_eq!(resp.status(), 201, "generate-jitconfig");
        let body: Value = resp.json().await.expect("json");
        (
            body["runner"]["id"].as_u64().expect("id"),
            body["encoded_jit_config"]
                .as_str()
                .expect("config")
                .to_owned(),
        )
    }
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An App JWT with the given claims offsets.
pub fn app_jwt(key_pem: &str, iss: Value, iat_offset: i64, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iat": now + iat_offset, "exp": now + exp_offset, "iss": iss});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("key"),
    )
    .expect("jwt")
}

pub fn good_jwt() -> String {
    app_jwt(PRIVATE_KEY, json!(APP_ID), -60, 540)
}

/// A webhook delivery as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// A local axum server recording every POST to `/hook`.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    store.lock().expect("lock").push(Received { headers, body });
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen()).await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, got, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until `pred` holds for what was received, up to 20 s.
    pub async fn wait_for(&self, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if pred(&got) || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn hook(&self, secret: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            url: self.url.clone(),
            secret: secret.map(SecretString::from),
            id: 11,
            repo: None,
            owner: Some("octo-org".into()),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A runner speaking the `/_emulator/runner` protocol directly.
pub struct RawRunner {
    pub api: Api,
}

impl RawRunner {
    /// From an encoded JIT config.
    pub fn from_jit(encoded: &str) -> Self {
        let jit = runscale_emulator::github::JitConfig::decode(encoded).expect("jit config");
        use secrecy::ExposeSecret;
        RawRunner {
            api: Api::new(&jit.url, jit.token.expose_secret()),
        }
    }

    pub async fn connect(&self) -> reqwest::Response {
        self.api.post("/_emulator/runner/connect", json!({})).await
    }

    /// Polls until a job arrives (up to 20 s); returns the assignment.
    pub async fn take_job(&self) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let resp = self.api.get("/_emulator/runner/job?wait_ms=1000").await;
            if resp.status() == 200 {
                return resp.json().await.expect("assignment");
            }
            assert_eq!(resp.status(), 204, "poll");
            assert!(tokio::time::Instant::now() < deadline, "no job assigned");
        }
    }

    pub async fn complete(&self, job_id: u64) -> reqwest::Response {
        self.api
            .post(
                &format!("/_emulator/runner/jobs/{job_id}/complete"),
                json!({"conclusion": "success"}),
            )
            .await
    }
}

/// Waits until `pred` holds on the emulator's snapshot, up to `secs`.
pub async fn eventually(
    emu: &EmulatorHandle,
    secs: u64,
    pred: impl Fn(&runscale_emulator::github::Snapshot) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if pred(&emu.snapshot()) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
