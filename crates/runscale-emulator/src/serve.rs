//! Scaffolding the CircleCI, GitLab and Buildkite emulators share: the loopback server, its
//! start-up and shutdown, the state behind a mutex with its event channel, request counting,
//! the fault decisions and answers, periodic and scheduled background work, token comparison
//! and ids, and webhook delivery.
//!
//! The GitHub emulator and the fake kube-apiserver keep their own state and start-up, but
//! serve and tick through [`spawn_server`] and [`spawn_every`] too, and GitHub compares
//! tokens and signs webhooks with [`constant_time_eq`] and [`hmac_sha256_hex`].
//!
//! Only what is the same lives here; each emulator's API, routes, messages and fault
//! specifics stay in its module.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a webhook receiver has to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback address every emulator binds by default (any free port).
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A bound server: its address and the token that stops it (and everything spawned with
/// it). Dropping it stops them.
pub(crate) struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Server {
    /// Binds `addr`; serve the returned listener with [`Server::run`].
    pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(Server, TcpListener)> {
        let listener = TcpListener::bind(addr).await?;
        let server = Server {
            addr: listener.local_addr()?,
            cancel: CancellationToken::new(),
        };
        Ok((server, listener))
    }

    /// Serves `app` on `listener`, sweeps `shared` every `sweep_every` and runs webhook
    /// delivery (`delivery`, handed the stop token), all in the background until stopped.
    pub(crate) fn run<T: Sweep, D>(
        &self,
        listener: TcpListener,
        app: Router,
        sweep_every: Duration,
        shared: Arc<T>,
        delivery: impl FnOnce(CancellationToken) -> D,
    ) where
        D: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
        });
        spawn_sweeper(self.cancel.clone(), sweep_every, shared);
        tokio::spawn(delivery(self.cancel.clone()));
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token cancelled when the server stops.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Stops the server and its background work.
    pub(crate) fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An emulator's state behind a mutex, and the channel its events leave by (to webhook
/// delivery).
pub(crate) struct Hub<S, E> {
    state: Mutex<S>,
    events: mpsc::UnboundedSender<E>,
}

impl<S, E> Hub<S, E> {
    /// A hub over `state`, and the receiving end of its events.
    pub(crate) fn new(state: S) -> (Self, mpsc::UnboundedReceiver<E>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            state: Mutex::new(state),
            events: tx,
        };
        (hub, rx)
    }

    /// The state (a poisoned lock is taken over: the state stays consistent per call).
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands events to webhook delivery.
    pub(crate) fn emit(&self, events: impl IntoIterator<Item = E>) {
        for e in events {
            // The receiver lives as long as the server; after shutdown events are dropped.
            let _ = self.events.send(e);
        }
    }
}

/// What [`count`] records answered requests in.
pub(crate) trait RequestLog {
    /// Counts one request to `route`.
    fn record_request(&self, route: String);
}

/// `METHOD /matched/{route}`, or `METHOD (unmatched)`.
pub(crate) fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| format!("{} {}", req.method(), p.as_str()))
        .unwrap_or_else(|| format!("{} (unmatched)", req.method()))
}

/// Middleware counting every answered request by route.
pub(crate) async fn count<T: RequestLog>(
    AxState(log): AxState<Arc<T>>,
    req: Request,
    next: Next,
) -> Response {
    log.record_request(route_of(&req));
    next.run(req).await
}

/// `routes` with [`count`] around every route and `shared` as their state.
pub(crate) fn counted<T: RequestLog + Send + Sync + 'static>(
    routes: Router<Arc<T>>,
    shared: Arc<T>,
) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count::<T>,
        ))
        .with_state(shared)
}

/// `{"message": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// A 429 saying `message`, with `retry-after: <secs>`.
pub(crate) fn throttled(message: &str, retry_after_secs: u64) -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// The fault counters every emulator's `Faults` has.
pub(crate) struct FaultKnobs<'a> {
    /// Requests left to fail with 503.
    pub(crate) fail_next: &'a mut u32,
    /// Requests left to answer 429.
    pub(crate) throttle_next: &'a mut u32,
    /// Probability of a random 5xx.
    pub(crate) error_rate_5xx: f64,
}

/// Decides a request's injected fault: the next failure (503), else the next throttle
/// (429), else a random 5xx chosen by `pick_5xx` at the configured rate.
pub(crate) fn decide_fault(
    knobs: FaultKnobs<'_>,
    rng: &mut StdRng,
    pick_5xx: impl FnOnce(&mut StdRng) -> StatusCode,
) -> Option<StatusCode> {
    if *knobs.fail_next > 0 {
        *knobs.fail_next -= 1;
        Some(StatusCode::SERVICE_UNAVAILABLE)
    } else if *knobs.throttle_next > 0 {
        *knobs.throttle_next -= 1;
        Some(StatusCode::TOO_MANY_REQUESTS)
    } else if knobs.error_rate_5xx > 0.0 {
        let rate = knobs.error_rate_5xx.clamp(0.0, 1.0);
        rng.random_bool(rate).then(|| pick_5xx(rng))
    } else {
        None
    }
}

/// [`decide_fault`] on an emulator state with `faults` (its [`FaultKnobs`] fields) and
/// `rng`: `injected_fault!(state_guard, pick_5xx)`.
macro_rules! injected_fault {
    ($state:expr, $pick_5xx:expr) => {{
        let s = &mut *$state;
        let knobs = $crate::serve::FaultKnobs {
            fail_next: &mut s.faults.fail_next,
            throttle_next: &mut s.faults.throttle_next,
            error_rate_5xx: s.faults.error_rate_5xx,
        };
        $crate::serve::decide_fault(knobs, &mut s.rng, $pick_5xx)
    }};
}
pub(crate) use injected_fault;

/// 502 or 503, evenly.
pub(crate) fn bad_gateway_or_unavailable(rng: &mut StdRng) -> StatusCode {
    if rng.random_bool(0.5) {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Waits the injected latency, if any.
pub(crate) async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Waits the injected `latency`, then answers the injected fault `outcome`: a 429 saying
/// `throttled_message` (`retry-after: 1`), any other status saying `failed_message`; without
/// a fault, passes the request on.
pub(crate) async fn answer_fault(
    latency: Duration,
    outcome: Option<StatusCode>,
    (throttled_message, failed_message): (&str, &str),
    req: Request,
    next: Next,
) -> Response {
    delay(latency).await;
    match outcome {
        Some(StatusCode::TOO_MANY_REQUESTS) => throttled(throttled_message, 1),
        Some(status) => error(status, failed_message),
        None => next.run(req).await,
    }
}

/// State swept periodically for lost work.
pub(crate) trait Sweep: Send + Sync + 'static {
    /// One sweep now (and the events it causes handed on).
    fn sweep_now(&self);
}

/// [`Sweep`] and [`RequestLog`] for an emulator's shared type: one with `lock()` (a state
/// with `sweep(now, instant) -> events` and `requests`) and `emit(events)`.
macro_rules! sweep_and_count {
    ($shared:ty) => {
        impl $crate::serve::Sweep for $shared {
            fn sweep_now(&self) {
                let events = self
                    .lock()
                    .sweep(chrono::Utc::now(), tokio::time::Instant::now());
                self.emit(events);
            }
        }

        impl $crate::serve::RequestLog for $shared {
            fn record_request(&self, route: String) {
                *self.lock().requests.entry(route).or_default() += 1;
            }
        }
    };
}
pub(crate) use sweep_and_count;

/// Sweeps `shared` every `period` until `cancel` fires.
pub(crate) fn spawn_sweeper<T: Sweep>(cancel: CancellationToken, period: Duration, shared: Arc<T>) {
    spawn_every(cancel, period, move || shared.sweep_now());
}

/// Serves `app` on `listener` in the background until `cancel` fires; a server error is
/// logged as `stopped` (the GitHub emulator and the fake kube-apiserver).
pub(crate) fn spawn_server(
    listener: TcpListener,
    app: Router,
    cancel: CancellationToken,
    stopped: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
        {
            tracing::error!(%error, "{stopped}");
        }
    })
}

/// Runs `tick` every `period` (the first at once) until `cancel` fires.
pub(crate) fn spawn_every(
    cancel: CancellationToken,
    period: Duration,
    mut tick: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            tick();
        }
    })
}

/// Hands each batch of `arrivals` to `submit` at its offset from now, until `cancel` fires.
pub(crate) fn spawn_arrivals<T: Send + 'static>(
    cancel: CancellationToken,
    arrivals: Vec<(Duration, T)>,
    mut submit: impl FnMut(T) + Send + 'static,
) {
    tokio::spawn(async move {
        let start = Instant::now();
        for (at, batch) in arrivals {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(start + at) => {}
            }
            submit(batch);
        }
    });
}

/// `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A UUID-shaped string from 32 hex digits.
pub(crate) fn uuid_shape(h: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether two byte strings (a presented token and a stored one) are equal, compared in
/// time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random UUID-shaped string: 16 bytes of `rng`.
pub(crate) fn random_uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    uuid_shape(&hex(&b))
}

/// Hex HMAC-SHA256 under `key` of the concatenated `parts`.
pub(crate) fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> Option<String> {
    // HMAC takes keys of any length; this does not fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    Some(hex(&mac.finalize().into_bytes()))
}

/// The client webhooks are delivered with (`None`, logged, if it cannot be built).
pub(crate) fn webhook_client() -> Option<reqwest::Client> {
    match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
        Ok(c) => Some(c),
        Err(_) => {
            tracing::error!("cannot build the webhook client");
            None
        }
    }
}

/// The next event, or `None` once cancelled or the channel is closed.
pub(crate) async fn next_event<E>(
    rx: &mut mpsc::UnboundedReceiver<E>,
    cancel: &CancellationToken,
) -> Option<E> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        e = rx.recv() => e,
    }
}

/// How many copies of each webhook to send (2 when duplicating), counted in `sent`.
pub(crate) fn webhook_copies(duplicate: bool, sent: &mut u64) -> u64 {
    let copies = if duplicate { 2 } else { 1 };
    *sent += copies;
    copies
}

/// Sends `copies` requests built by `request`; failures are logged, not retried.
pub(crate) async fn deliver(copies: u64, request: impl Fn() -> reqwest::RequestBuilder) {
    for _ in 0..copies {
        if let Err(e) = request().send().await {
            tracing::debug!(error = %e, "webhook delivery failed");
        }
    }
}

/// The credentials of `Authorization: <scheme><credentials>` (`scheme` with its trailing
/// space), trimmed.
pub(crate) fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix(scheme)
        .map(str::trim)
}
