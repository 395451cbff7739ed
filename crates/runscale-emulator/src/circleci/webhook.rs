//! Outbound webhooks: `job-completed` and `workflow-completed`, signed with
//! `circleci-signature: v1=<hex HMAC-SHA256(secret, body)>`.

use std::sync::Arc;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::WebhookConfig;
use super::server::Shared;
use super::state::Event;
use crate::serve;

/// The `circleci-signature` value of `body` under `secret`: `v1=<64 hex digits>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    serve::hmac_sha256_hex(secret, &[body]).map_or_else(String::new, |hex| format!("v1={hex}"))
}

fn body(event: &Event, id: &str, hook_index: usize) -> serde_json::Value {
    let mut v = json!({
        "id": id,
        "type": event.kind,
        "happened_at": Utc::now(),
        "webhook": { "id": format!("hook-{hook_index}"), "name": "runscale" },
        "project": {
            "id": format!("project-{}", event.project),
            "name": event.project.rsplit('/').next().unwrap_or_default(),
            "slug": event.project,
        },
        "organization": {
            "id": "org-1",
            "name": event.project.split('/').nth(1).unwrap_or_default(),
        },
        "pipeline": { "id": format!("pipeline-{}", event.workflow_id), "number": 1 },
        "workflow": {
            "id": event.workflow_id,
            "name": event.workflow_name,
            "status": event.workflow_status,
        },
    });
    if let Some((job_id, name, status)) = &event.job {
        v["job"] = json!({ "id": job_id, "name": name, "number": 1, "status": status });
    }
    v
}

/// Sends events to every matching hook until cancelled. Failed deliveries are not retried.
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
        for (i, hook) in hooks.iter().enumerate() {
            if hook.project.as_ref().is_some_and(|p| *p != event.project) {
                continue;
            }
            let (id, copies) = {
                let mut s = shared.lock();
                let copies =
                    serve::webhook_copies(s.faults.duplicate_webhooks, &mut s.webhooks_sent);
                (s.uuid(), copies)
            };
            let Ok(bytes) = serde_json::to_vec(&body(&event, &id, i)) else {
                continue;
            };
            serve::deliver(copies, || {
                let req = client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .header("user-agent", "CircleCI-Webhook/1.0")
                    .header("circleci-event-type", event.kind)
                    .body(bytes.clone());
                match &hook.secret {
                    Some(secret) => req.header(
                        "circleci-signature",
                        signature(secret.expose_secret().as_bytes(), &bytes),
                    ),
                    None => req,
                }
            })
            .await;
        }
    }
}
