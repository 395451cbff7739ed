//! The daemon's HTTP server: the [`crate::http`] router on hyper's HTTP/1 connections, with
//! bounds a public webhook endpoint needs.
//!
//! - **Connections**: at most [`ServerLimits::max_connections`] at once; one more is accepted
//!   by the kernel and closed at once (counted in `runscale_http_connections_refused`), so a
//!   flood of idle sockets cannot take every descriptor of the process.
//! - **Headers** must arrive within [`ServerLimits::header_read_timeout`] (slow-loris), also on
//!   an idle keep-alive connection waiting for its next request; the connection is closed
//!   otherwise.
//! - **Requests** (reading the body and answering) must finish within
//!   [`ServerLimits::request_timeout`]; 408 otherwise (counted in
//!   `runscale_http_requests_timed_out`).
//!
//! On shutdown the listener stops accepting and every connection is closed once its request
//! in flight (if any) is answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Bounds of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time from the headers to the answer, reading the body included.
    pub request_timeout: Duration,
}

impl Default for ServerLimits {
    /// 256 connections (the status page, scrapes and webhooks need a handful), 10 s for
    /// headers, 30 s per request.
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The server's own metrics.
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at once because `max_connections` were open.
    pub refused: Counter,
    /// Requests answered 408 after `request_timeout`.
    pub timed_out: Counter,
}

impl ServerMetrics {
    /// Registers the metrics under `runscale_http_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ServerMetrics::default();
        let r = registry.sub_registry_with_prefix("runscale_http");
        r.register("connections_open", "HTTP connections open", m.open.clone());
        r.register(
            "connections_refused",
            "HTTP connections closed at once because the connection cap was reached",
            m.refused.clone(),
        );
        r.register(
            "requests_timed_out",
            "HTTP requests answered 408 because they did not finish in time",
            m.timed_out.clone(),
        );
        m
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` is cancelled, then closes every
/// connection once its request in flight is answered and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    metrics: ServerMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(
        (limits.request_timeout, metrics.timed_out.clone()),
        request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // moment rather than spin, and go on.
                    debug!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        let open = metrics.open.clone();
        open.inc();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "HTTP connection ended with an error");
            }
            open.dec();
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Answers 408 when the request (its body included) is not handled within the limit.
async fn request_timeout(
    State((limit, timed_out)): State<(Duration, Counter)>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            timed_out.inc();
            (StatusCode::REQUEST_TIMEOUT, "request not completed in time").into_response()
        }
    }
}
