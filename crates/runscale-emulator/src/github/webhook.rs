//! Webhook signing (`X-Hub-Signature-256`) and asynchronous delivery. Deliveries are sent
//! by a background task, never inside an API request; each is one HTTP POST with a 10 s
//! timeout and, as on GitHub, is not retried when it fails.
//!
//! The legacy SHA-1 `X-Hub-Signature` header is not sent.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::server::Shared;
use super::state::Outgoing;
use crate::serve::{self, constant_time_eq};

/// The `X-Hub-Signature-256` value of `body` under `secret`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    serve::hmac_sha256_hex(secret, &[body]).map_or_else(String::new, |hex| format!("sha256={hex}"))
}

/// Whether `header` is the valid `X-Hub-Signature-256` of `body` under `secret`, compared
/// in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    constant_time_eq(signature(secret, body).as_bytes(), header.trim().as_bytes())
}

/// Most deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 32;
/// How long a receiver has to answer (github.com: 10 s).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends deliveries until cancelled.
pub(crate) async fn delivery_loop(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .user_agent("GitHub-Hookshot/runscale-emulator")
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook HTTP client; webhooks disabled");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let out = tokio::select! {
            _ = cancel.cancelled() => return,
            out = rx.recv() => match out { Some(out) => out, None => return },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let status = tokio::select! {
                _ = cancel.cancelled() => return,
                status = send(&client, &out) => status,
            };
            shared.with_state(|s, _| s.record_delivery(out.record, status));
        });
    }
}

async fn send(client: &reqwest::Client, out: &Outgoing) -> Option<u16> {
    let mut req = client
        .post(&out.url)
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", &out.delivery_id)
        .header("x-github-hook-id", out.hook_id.to_string())
        .header("x-github-hook-installation-target-type", out.target_type)
        .header(
            "x-github-hook-installation-target-id",
            out.target_id.to_string(),
        );
    if let Some(secret) = &out.secret {
        req = req.header(
            "x-hub-signature-256",
            signature(secret.expose_secret().as_bytes(), &out.body),
        );
    }
    match req.body(out.body.as_ref().clone()).send().await {
        Ok(resp) => Some(resp.status().as_u16()),
        Err(error) => {
            tracing::debug!(hook_id = out.hook_id, error = %error, "webhook delivery failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_test_vector() {
        let sig = signature(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            sig,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &sig
        ));
        assert!(!verify_signature(b"wrong", b"Hello, World!", &sig));
        assert!(!verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            &sig
        ));
    }
}
