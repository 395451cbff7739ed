//! `runscale run`: the HTTP server and the reconciler, until a signal.
//!
//! The listener is bound before anything else starts, so a taken port fails at once. The first
//! SIGTERM or SIGINT cancels the shutdown token: the HTTP server stops accepting, the
//! reconciler starts no new pass or launch and lets in-flight passes finish within
//! `shutdown_timeout`, and the process exits 0. A second signal exits at once with status 1.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use runscale_core::SystemClock;
use runscale_core::reconciler::Reconciler;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::commands;
use crate::config::{self, Validated};
use crate::http::{AppState, router};

/// How long open HTTP connections may take to finish once the reconciler has stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Runs the daemon until the first SIGTERM/SIGINT, then stops gracefully. A second signal
/// exits the process immediately.
pub async fn run(config: &Validated, dry_run: bool) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let result = serve(config, dry_run, shutdown).await;
    signals.abort();
    result
}

/// The daemon proper: serves HTTP and reconciles until `shutdown` is cancelled, then lets
/// in-flight passes finish (within `shutdown_timeout`) and returns. If the HTTP server fails,
/// `shutdown` is cancelled and the error returned once the reconciler has stopped.
pub async fn serve(
    config: &Validated,
    dry_run: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = config::build(config)?;
    let listener = TcpListener::bind(runtime.listen)
        .await
        .with_context(|| format!("cannot listen on {}", runtime.listen))?;
    let local = listener.local_addr().unwrap_or(runtime.listen);
    let (registry, metrics) = commands::metrics();
    let mut options = runtime.options;
    options.dry_run = dry_run;
    let reconciler = Reconciler::new(runtime.pools, Arc::new(SystemClock), metrics, options);
    let state = AppState {
        handle: reconciler.handle(),
        registry: Arc::new(registry),
    };

    let server_stop = shutdown.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });
    info!(listen = %local, dry_run, "runscale started");
    let mut reconciling = tokio::spawn(reconciler.run(shutdown.clone()));

    // Until shutdown, or until the server or the reconciler ends on its own (a failure).
    let mut reconciler_done = false;
    let early = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut server => Some(r),
        r = &mut reconciling => {
            reconciler_done = true;
            if let Err(e) = r {
                error!(error = %e, "reconciler task failed");
            }
            None
        }
    };
    shutdown.cancel();
    if !reconciler_done && let Err(e) = reconciling.await {
        error!(error = %e, "reconciler task failed");
    }
    let server_result = match early {
        Some(r) => r,
        None => match tokio::time::timeout(HTTP_DRAIN, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                warn!("open HTTP connections did not close in time; dropping them");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    match server_result {
        Ok(Ok(())) => {
            info!("runscale stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("HTTP server failed")),
        Err(e) => Err(anyhow::Error::new(e).context("HTTP server task failed")),
    }
}

/// Cancels `shutdown` on the first SIGTERM/SIGINT; exits the process on the second.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    let mut signal = async || {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => "SIGINT",
                Err(_) => std::future::pending().await,
            },
        }
    };
    let first = signal().await;
    info!(
        signal = first,
        "stopping: finishing in-flight passes (signal again to exit now)"
    );
    shutdown.cancel();
    let second = signal().await;
    warn!(signal = second, "second signal: exiting now");
    std::process::exit(1);
}
