//! Outbound Job Hook events: one per job status change (`pending`, `running`, `success`,
//! `failed`), with `X-Gitlab-Event: Job Hook`, `X-Gitlab-Token`, `Idempotency-Key` (the same
//! on a retry) and `X-Gitlab-Event-UUID`. Like GitLab's, the body has no job tags.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::WebhookConfig;
use super::server::Shared;
use super::state::Event;
use crate::serve;

fn body(e: &Event) -> Value {
    let j = &e.job;
    let secs = |a: Option<chrono::DateTime<chrono::Utc>>,
                b: Option<chrono::DateTime<chrono::Utc>>| {
        match (a, b) {
            (Some(a), Some(b)) => Some((b - a).num_milliseconds() as f64 / 1000.0),
            _ => None,
        }
    };
    let name = e.project_path.rsplit('/').next().unwrap_or_default();
    json!({
        "object_kind": "build",
        "ref": "main",
        "tag": false,
        "before_sha": "0000000000000000000000000000000000000000",
        "sha": "0000000000000000000000000000000000000000",
        "retries_count": 0,
        "build_id": j.id,
        "build_name": e.name,
        "build_stage": "test",
        "build_status": j.status.as_str(),
        "build_created_at": j.created_at,
        "build_started_at": j.started_at,
        "build_finished_at": j.finished_at,
        "build_duration": secs(j.started_at, j.finished_at),
        "build_queued_duration": secs(Some(j.created_at), j.started_at),
        "build_allow_failure": false,
        "build_failure_reason": j.failure_reason.as_deref().unwrap_or("unknown_failure"),
        "pipeline_id": j.id / 10,
        "project_id": j.project_id,
        "project_name": name,
        "runner": e.runner.as_ref().map(|(id, desc, rtype, tags)| json!({
            "id": id, "description": desc, "runner_type": rtype, "active": true,
            "is_shared": rtype == "instance_type", "tags": tags,
        })),
        "user": { "id": 1, "name": "Administrator", "username": "root" },
        "commit": { "id": j.id / 10, "name": null, "sha": "0000000", "message": "emulated",
                    "status": j.status.as_str() },
        "repository": { "name": name, "url": "", "homepage": "" },
        "project": { "id": j.project_id, "name": name, "path_with_namespace": e.project_path,
                     "ci_config_path": "" },
        "environment": null,
    })
}

/// Sends every event to every hook until cancelled. Failed deliveries are not retried.
pub(crate) async fn delivery_loop(
    mut rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    hooks: Vec<WebhookConfig>,
    instance: String,
    cancel: CancellationToken,
) {
    let Some(client) = serve::webhook_client() else {
        return;
    };
    let hook_ids: Vec<String> = {
        let mut s = shared.lock();
        hooks.iter().map(|_| s.uuid()).collect()
    };
    while let Some(event) = serve::next_event(&mut rx, &cancel).await {
        let Ok(bytes) = serde_json::to_vec(&body(&event)) else {
            continue;
        };
        for (hook, hook_id) in hooks.iter().zip(&hook_ids) {
            let (key, event_uuid, copies) = {
                let mut s = shared.lock();
                let copies =
                    serve::webhook_copies(s.faults.duplicate_webhooks, &mut s.webhooks_sent);
                (s.uuid(), s.uuid(), copies)
            };
            serve::deliver(copies, || {
                let req = client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .header("user-agent", "GitLab/17.5.0-emulated")
                    .header("x-gitlab-event", "Job Hook")
                    .header("x-gitlab-instance", &instance)
                    .header("x-gitlab-webhook-uuid", hook_id)
                    .header("x-gitlab-event-uuid", &event_uuid)
                    .header("idempotency-key", &key)
                    .body(bytes.clone());
                match &hook.token {
                    Some(token) => req.header("x-gitlab-token", token.expose_secret()),
                    None => req,
                }
            })
            .await;
        }
    }
}
