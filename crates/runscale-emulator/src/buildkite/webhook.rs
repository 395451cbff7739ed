//! Outbound webhooks: `job.scheduled`, `job.started`, `job.finished` and `agent.*` events,
//! authenticated with `X-Buildkite-Token` or `X-Buildkite-Signature`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{WebhookAuth, WebhookConfig};
use super::model::{AgentSnapshot, JobSnapshot};
use super::server::Shared;
use super::state::Event;

/// How long a receiver has to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `X-Buildkite-Signature` value of `body` sent at `timestamp` (Unix seconds):
/// `timestamp=<t>,signature=<hex HMAC-SHA256(token, "<t>.<body>")>`.
pub fn signature(token: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("timestamp={timestamp},signature={hex}")
}

/// A job as webhooks and the REST API show it.
pub(crate) fn job_json(job: &JobSnapshot) -> serde_json::Value {
    json!({
        "id": job.id,
        "type": "script",
        "name": "build",
        "state": job.status.as_str(),
        "agent_query_rules": job.agent_query_rules,
        "scheduled_at": job.scheduled_at,
        "runnable_at": job.scheduled_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "agent": job.agent.as_ref().map(|name| json!({ "name": name })),
    })
}

fn agent_json(agent: &AgentSnapshot) -> serde_json::Value {
    json!({
        "id": agent.id,
        "name": agent.name,
        "connection_state": agent.connection_state.as_str(),
        "meta_data": agent.meta_data,
    })
}

fn body(event: &Event, org: &str) -> serde_json::Value {
    let mut v = json!({
        "event": event.name,
        "pipeline": { "slug": "app", "organization": { "slug": org } },
        "sender": { "id": "emulator", "name": "runscale emulator" },
    });
    if let Some(job) = &event.job {
        v["job"] = job_json(job);
    }
    if let Some(agent) = &event.agent {
        v["agent"] = agent_json(agent);
    }
    v
}

/// Sends events to every hook until cancelled. Failed deliveries are not retried.
pub(crate) async fn delivery_loop(
    mut rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    hooks: Vec<WebhookConfig>,
    cancel: CancellationToken,
) {
    let Ok(client) = reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() else {
        tracing::error!("cannot build the webhook client");
        return;
    };
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let org = shared.lock().org.clone();
        let Ok(bytes) = serde_json::to_vec(&body(&event, &org)) else {
            continue;
        };
        for hook in &hooks {
            let copies = {
                let mut s = shared.lock();
                let copies = if s.faults.duplicate_webhooks { 2 } else { 1 };
                s.webhooks_sent += copies;
                copies
            };
            let token = hook.token.expose_secret();
            let auth = match hook.auth {
                WebhookAuth::Token => ("x-buildkite-token", token.to_owned()),
                WebhookAuth::Signature => (
                    "x-buildkite-signature",
                    signature(token.as_bytes(), Utc::now().timestamp(), &bytes),
                ),
            };
            for _ in 0..copies {
                let req = client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .header("user-agent", "Buildkite-Request")
                    .header("x-buildkite-event", event.name)
                    .header(auth.0, &auth.1)
                    .body(bytes.clone());
                if let Err(e) = req.send().await {
                    tracing::debug!(error = %e, "webhook delivery failed");
                }
            }
        }
    }
}
