//! `runscale run`: the HTTP server and the reconciler, until a signal.
//!
//! The listener is bound before anything else starts, so a taken port fails at once. The first
//! SIGTERM or SIGINT cancels the shutdown token: the HTTP server stops accepting, the
//! reconciler starts no new pass or launch and lets in-flight passes finish within
//! `shutdown_timeout`, and the process exits 0. A second signal exits at once with status 1.
//!
//! **Leader election** ([`crate::leader`], `run --leader-elect`): every replica serves HTTP,
//! but only the one holding the Lease reconciles. Each time this replica becomes the leader it
//! starts a fresh reconciler over the same adapters (a *term*). The instant it stops being the
//! leader (its renew deadline passed, or another replica holds the Lease) the term's
//! reconciler is aborted, mid-pass if need be: everything is re-observed from the world, so
//! this is as safe as a crash. The replica then stands by again. On SIGTERM the leader lets
//! in-flight passes finish while it keeps renewing, then releases the Lease, so a standby takes
//! over within one retry period.
//!
//! A standby replica answers `/readyz` with 200 (it is ready to take over) and serves `/`,
//! `/api/v1/pools` and `/metrics` with what it saw during its last term (nothing before its
//! first), `runscale_leader` being 0. It verifies webhook deliveries and acknowledges them as
//! the leader does (202), but they wake nothing: the leader's next timer pass, at most
//! `interval` later, picks the change up. Deliveries are not forwarded to the leader.
//!
//! **Re-discovery** ([`crate::rediscovery`]; environment modes that discover their pools):
//! when the discovered set of pools changes, the running term's reconciler is stopped as on
//! shutdown (in-flight passes finish) and a new one takes over with the new pools; the HTTP
//! server, the metrics and leadership are untouched. A standby replica keeps the new set for
//! its next term.
//!
//! `GET /api/v1/leader` answers, on every replica,
//! `{"leader_election": bool, "leading": bool, "identity", "lease", "holder"}` (the last three
//! `null` without election).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use runscale_core::SystemClock;
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{error, info, warn};

use crate::commands;
use crate::config::{self, Validated};
use crate::http::{AppState, router};
use crate::leader;
use crate::rediscovery::{Rediscovery, Swap};
use crate::server::{self, ServerLimits, ServerMetrics};

/// How long open HTTP connections may take to finish once the reconciler has stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

type ServerResult = Result<std::io::Result<()>, tokio::task::JoinError>;

/// Runs the daemon until the first SIGTERM/SIGINT, then stops gracefully. A second signal
/// exits the process immediately. With `rediscovery`, the pools follow what it discovers.
pub async fn run(
    config: &Validated,
    dry_run: bool,
    rediscovery: Option<Rediscovery>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let result = serve(config, dry_run, shutdown, rediscovery).await;
    signals.abort();
    result
}

/// The daemon proper: serves HTTP and, while this replica leads (always, without leader
/// election), reconciles until `shutdown` is cancelled; then lets in-flight passes finish
/// (within `shutdown_timeout`), releases the Lease and returns. If the HTTP server fails,
/// `shutdown` is cancelled and the error returned once the reconciler has stopped.
pub async fn serve(
    config: &Validated,
    dry_run: bool,
    shutdown: CancellationToken,
    rediscovery: Option<Rediscovery>,
) -> anyhow::Result<()> {
    config::fetch_secrets(config).await;
    let runtime = config::build(config)?;
    let listener = TcpListener::bind(runtime.listen)
        .await
        .with_context(|| format!("cannot listen on {}", runtime.listen))?;
    let local = listener.local_addr().unwrap_or(runtime.listen);
    let (mut registry, metrics) = commands::metrics();
    let server_metrics = ServerMetrics::register(&mut registry);
    let leader_gauge: Gauge = Gauge::default();
    registry.sub_registry_with_prefix("runscale").register(
        "leader",
        "1 while this replica reconciles (it holds the Lease, or leader election is off), else 0",
        leader_gauge.clone(),
    );
    let mut options = runtime.options;
    options.dry_run = dry_run;
    let mut terms = Terms {
        pools: runtime.pools,
        metrics,
        options,
        registry: Arc::new(registry),
    };
    let mut election = Election::start(config.leader_election.as_ref()).await?;

    // The first term's reconciler, built now so a standby serves its (empty) status.
    let first = terms.reconciler();
    let current = Arc::new(RwLock::new(terms.router(&first)));
    let mut next = Some(first);
    let app = app(current.clone(), election.view());
    let server_stop = shutdown.clone();
    let mut server = tokio::spawn(server::serve(
        listener,
        app,
        ServerLimits::default(),
        server_metrics,
        server_stop,
    ));
    info!(
        listen = %local,
        dry_run,
        leader_election = election.view.enabled,
        pools = config.pools.len(),
        rediscovery = ?rediscovery.as_ref().map(Rediscovery::every),
        "runscale started"
    );
    let (mut swaps, discovery) = match rediscovery {
        Some(r) => {
            let (rx, task) = r.spawn(config, shutdown.clone());
            (Some(rx), Some(task))
        }
        None => (None, None),
    };

    // Stand by until leading, reconcile for the term, repeat; until shutdown or the server
    // ends on its own (a failure).
    let mut early = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = &mut server => {
                early = Some(r);
                break;
            }
            swap = next_swap(&mut swaps) => {
                // Standing by: the next term starts with the new pools.
                terms.pools = swap.pools;
                let reconciler = terms.reconciler();
                *current.write().unwrap_or_else(PoisonError::into_inner) = terms.router(&reconciler);
                next = Some(reconciler);
                continue;
            }
            () = election.until(true) => {}
        }
        let reconciler = next.take().unwrap_or_else(|| terms.reconciler());
        *current.write().unwrap_or_else(PoisonError::into_inner) = terms.router(&reconciler);
        leader_gauge.set(1);
        let end = run_term(
            reconciler,
            &mut Swapping {
                terms: &mut terms,
                current: &current,
                swaps: &mut swaps,
            },
            &shutdown,
            &mut election,
            &mut server,
        )
        .await;
        leader_gauge.set(0);
        match end {
            TermEnd::Lost => warn!("no longer the leader: stopped reconciling; standing by"),
            TermEnd::Stopped => break,
            TermEnd::Server(r) => {
                early = Some(r);
                break;
            }
        }
    }
    shutdown.cancel();
    election.stop().await;
    if let Some(task) = discovery {
        task.abort();
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

/// How a term ended.
enum TermEnd {
    /// This replica is no longer the leader; the reconciler was aborted.
    Lost,
    /// Shutdown (or the reconciler ended on its own); in-flight passes were let finish.
    Stopped,
    /// The HTTP server ended first (a failure); the reconciler was stopped as on shutdown.
    Server(ServerResult),
}

/// What a term needs to switch to a new set of pools.
struct Swapping<'a> {
    terms: &'a mut Terms,
    current: &'a RwLock<Router>,
    swaps: &'a mut Option<mpsc::Receiver<Swap>>,
}

/// The next set of pools from re-discovery; never resolves without re-discovery.
async fn next_swap(swaps: &mut Option<mpsc::Receiver<Swap>>) -> Swap {
    if let Some(rx) = swaps {
        if let Some(swap) = rx.recv().await {
            return swap;
        }
        *swaps = None;
    }
    std::future::pending().await
}

/// Runs `reconciler` until this replica stops leading (abort at once) or shutdown (graceful:
/// in-flight passes finish within `shutdown_timeout`, unless the Lease is lost meanwhile).
/// A new set of pools stops the reconciler gracefully and starts one over the new pools.
async fn run_term(
    mut reconciler: Reconciler,
    swapping: &mut Swapping<'_>,
    shutdown: &CancellationToken,
    election: &mut Election,
    server: &mut JoinHandle<std::io::Result<()>>,
) -> TermEnd {
    loop {
        let term = CancellationToken::new();
        let mut task = tokio::spawn(reconciler.run(term.clone()));
        let end = tokio::select! {
            biased;
            () = election.until(false) => {
                task.abort();
                term.cancel();
                let _ = task.await;
                return TermEnd::Lost;
            }
            () = shutdown.cancelled() => TermEnd::Stopped,
            r = &mut *server => TermEnd::Server(r),
            swap = next_swap(swapping.swaps) => {
                if !finish(&mut task, &term, election).await {
                    return TermEnd::Lost;
                }
                swapping.terms.pools = swap.pools;
                reconciler = swapping.terms.reconciler();
                *swapping
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = swapping.terms.router(&reconciler);
                info!(pools = swapping.terms.pools.len(), "reconciling the new set of pools");
                continue;
            }
            r = &mut task => {
                if let Err(e) = r {
                    error!(error = %e, "reconciler task failed");
                }
                shutdown.cancel();
                return TermEnd::Stopped;
            }
        };
        shutdown.cancel();
        if !finish(&mut task, &term, election).await {
            warn!("lost the Lease while stopping: in-flight passes aborted");
        }
        return end;
    }
}

/// Stops a term's reconciler gracefully (in-flight passes finish); `false` when the Lease was
/// lost meanwhile and the passes were aborted.
async fn finish(
    task: &mut JoinHandle<()>,
    term: &CancellationToken,
    election: &mut Election,
) -> bool {
    term.cancel();
    tokio::select! {
        r = &mut *task => {
            if let Err(e) = r {
                error!(error = %e, "reconciler task failed");
            }
            true
        }
        () = election.until(false) => {
            task.abort();
            false
        }
    }
}

/// Builds one reconciler per term over the same adapters.
struct Terms {
    pools: Vec<PoolBinding>,
    metrics: Arc<Metrics>,
    options: Options,
    registry: Arc<Registry>,
}

impl Terms {
    fn reconciler(&self) -> Reconciler {
        let pools = self
            .pools
            .iter()
            .map(|b| PoolBinding {
                spec: b.spec.clone(),
                provider_name: b.provider_name.clone(),
                provider: b.provider.clone(),
                backend_name: b.backend_name.clone(),
                backend: b.backend.clone(),
            })
            .collect();
        Reconciler::new(
            pools,
            Arc::new(SystemClock),
            self.metrics.clone(),
            self.options.clone(),
        )
    }

    /// The routes of [`crate::http`] over `reconciler`.
    fn router(&self, reconciler: &Reconciler) -> Router {
        router(AppState {
            handle: reconciler.handle(),
            registry: self.registry.clone(),
        })
    }
}

/// Leadership as the daemon sees it: an elector's, or always leading.
struct Election {
    view: ElectionView,
    /// Keeps the channel open when there is no elector.
    _always: Option<watch::Sender<leader::Status>>,
    /// The elector's stop token and task.
    elector: Option<(CancellationToken, JoinHandle<()>)>,
}

/// What the HTTP routes know about the election.
#[derive(Clone)]
struct ElectionView {
    enabled: bool,
    identity: Option<String>,
    lease: Option<String>,
    status: watch::Receiver<leader::Status>,
}

impl Election {
    async fn start(settings: Option<&leader::Settings>) -> anyhow::Result<Self> {
        let Some(settings) = settings else {
            let (tx, status) = watch::channel(leader::Status {
                leading: true,
                holder: None,
            });
            return Ok(Self {
                view: ElectionView {
                    enabled: false,
                    identity: None,
                    lease: None,
                    status,
                },
                _always: Some(tx),
                elector: None,
            });
        };
        Self::elect(settings).await
    }

    #[cfg(feature = "leader-election")]
    async fn elect(settings: &leader::Settings) -> anyhow::Result<Self> {
        let elector = leader::Elector::connect(settings)
            .await
            .context("leader election")?;
        let view = ElectionView {
            enabled: true,
            identity: Some(elector.identity().to_owned()),
            lease: Some(elector.lease()),
            status: elector.status(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        Ok(Self {
            view,
            _always: None,
            elector: Some((stop, task)),
        })
    }

    #[cfg(not(feature = "leader-election"))]
    async fn elect(_: &leader::Settings) -> anyhow::Result<Self> {
        anyhow::bail!("leader election is not compiled into this runscale")
    }

    fn view(&self) -> ElectionView {
        self.view.clone()
    }

    /// Resolves once this replica leads (`true`) or no longer leads (`false`). Should the
    /// elector end unexpectedly, this replica counts as not leading from then on.
    async fn until(&mut self, leading: bool) {
        let ended = self
            .view
            .status
            .wait_for(|s| s.leading == leading)
            .await
            .is_err();
        if ended && leading {
            error!("the leader elector ended; this replica stands by until restarted");
            std::future::pending::<()>().await;
        }
    }

    /// Stops the elector, which releases the Lease if it holds it.
    async fn stop(self) {
        if let Some((stop, task)) = self.elector {
            stop.cancel();
            if let Err(e) = task.await {
                error!(error = %e, "leader elector task failed");
            }
        }
    }
}

/// What the served router's own handlers share.
#[derive(Clone)]
struct HttpState {
    current: Arc<RwLock<Router>>,
    election: ElectionView,
}

/// The served routes: `/readyz` and `/api/v1/leader` know about leadership; every other
/// request goes to the current term's [`router`].
fn app(current: Arc<RwLock<Router>>, election: ElectionView) -> Router {
    let inner = current.clone();
    let dispatch = tower::service_fn(move |request: Request| read(&inner).oneshot(request));
    Router::new()
        .route("/readyz", get(readyz))
        .route("/api/v1/leader", get(leader_status))
        .fallback_service(dispatch)
        .with_state(HttpState { current, election })
}

fn read(current: &RwLock<Router>) -> Router {
    current
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

async fn readyz(State(state): State<HttpState>, request: Request) -> Response {
    if state.election.enabled && !state.election.status.borrow().leading {
        return (StatusCode::OK, "ready: standing by (another replica leads)").into_response();
    }
    match read(&state.current).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn leader_status(State(state): State<HttpState>) -> Response {
    let status = state.election.status.borrow().clone();
    axum::Json(json!({
        "leader_election": state.election.enabled,
        "leading": status.leading,
        "identity": state.election.identity,
        "lease": state.election.lease,
        "holder": status.holder,
    }))
    .into_response()
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
