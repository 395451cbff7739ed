//! Outbound webhooks: `job.scheduled`, `job.started`, `job.finished` and `agent.*` events,
//! authenticated with `X-Buildkite-Token` or `X-Buildkite-Signature`.

use std::sync::Arc;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{WebhookAuth, WebhookConfig};
use super::model::{AgentSnapshot, JobSnapshot};
use super::server::Shared;
use super::state::Event;
use crate::serve;

/// The `X-Buildkite-Signature` value of `body` sent at `timestamp` (Unix seconds):
/// `timestamp=<t>,signature=<hex HMAC-SHA256(token, "<t>.<body>")>`.
pub fn signature(token: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    serve::hmac_sha256_hex(token, &[t.as_bytes(), b".", body]).map_or_else(String::new, |hex| {
        format!("timestamp={timestamp},signature={hex}")
    })
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
    let Some(client) = serve::webhook_client() else {
        return;
    };
    while let Some(event) = serve::next_event(&mut rx, &cancel).await {
        let org = shared.lock().org.clone();
        let Ok(bytes) = serde_json::to_vec(&body(&event, &org)) else {
            continue;
        };
        for hook in &hooks {
            let copies = {
                let mut s = shared.lock();
                serve::webhook_copies(s.faults.duplicate_webhooks, &mut s.webhooks_sent)
            };
            let token = hook.token.expose_secret();
            let auth = match hook.auth {
                WebhookAuth::Token => ("x-buildkite-token", token.to_owned()),
                WebhookAuth::Signature => (
                    "x-buildkite-signature",
                    signature(token.as_bytes(), Utc::now().timestamp(), &bytes),
                ),
            };
            serve::deliver(copies, || {
                client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .header("user-agent", "Buildkite-Request")
                    .header("x-buildkite-event", event.name)
                    .header(auth.0, &auth.1)
                    .body(bytes.clone())
            })
            .await;
        }
    }
}
