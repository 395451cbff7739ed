//! Starting and driving the emulator: [`Emulator::start`] binds the listener and spawns the
//! HTTP server, the liveness ticker and the webhook sender; the returned [`EmulatorHandle`]
//! queues jobs, runs workloads, reads snapshots and violations, changes faults and shuts
//! everything down (dropping it stops the background tasks too).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{EmulatorConfig, Faults};
use super::error::EmulatorError;
use super::model::{DeliveryRecord, JobRef, JobSpec, Snapshot, Violation, Workload};
use super::state::{Now, Outgoing, State};
use super::{api, runner_api, webhook};
use crate::serve;

/// How often runner liveness is checked.
const TICK: Duration = Duration::from_millis(200);

/// What the HTTP handlers and background tasks share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped when a job is queued or a runner removed: wakes job long-polls.
    pub changed: watch::Sender<u64>,
    hooks: mpsc::UnboundedSender<Outgoing>,
    /// Cancelled on shutdown.
    pub cancel: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for a test double.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state at the current time, then hands produced webhooks to the
    /// sender.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State, Now) -> R) -> R {
        let (result, outbox) = {
            let mut state = self.lock();
            let result = f(&mut state, Now::current());
            (result, state.take_outbox())
        };
        for out in outbox {
            // The receiver only goes away at shutdown.
            let _ = self.hooks.send(out);
        }
        result
    }

    /// Wakes job long-polls.
    pub fn notify(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }
}

/// The GitHub emulator.
pub struct Emulator;

impl Emulator {
    /// Validates `config`, binds `listen` (use `127.0.0.1:0` in tests) and starts serving.
    pub async fn start(
        config: EmulatorConfig,
        listen: SocketAddr,
    ) -> Result<EmulatorHandle, EmulatorError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: listen,
                source,
            })?;
        let base_url = config
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let (hooks_tx, hooks_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&config, base_url.clone(), Now::current())),
            changed: watch::channel(0).0,
            hooks: hooks_tx,
            cancel: cancel.clone(),
        });
        let app = router(shared.clone());
        let server = serve::spawn_server(listener, app, cancel.clone(), "emulator server stopped");
        let ticker = {
            let shared = shared.clone();
            serve::spawn_every(cancel.clone(), TICK, move || {
                shared.with_state(|s, now| s.tick(now))
            })
        };
        let sender = tokio::spawn(webhook::delivery_loop(
            hooks_rx,
            shared.clone(),
            cancel.clone(),
        ));
        tracing::info!(%base_url, "GitHub emulator listening");
        Ok(EmulatorHandle {
            shared,
            base_url,
            local_addr,
            tasks: vec![server, ticker, sender],
        })
    }
}

/// The whole HTTP surface: the GitHub REST subset and the emulator's own `/_emulator` API.
fn router(shared: Arc<Shared>) -> Router {
    api::routes(shared.clone())
        .merge(runner_api::routes())
        .fallback(api::not_found)
        .with_state(shared)
}

/// A running emulator.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    base_url: String,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl EmulatorHandle {
    /// The API base URL, e.g. `http://127.0.0.1:41234` (no trailing slash): what a GitHub
    /// client uses instead of `https://api.github.com`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a workflow run with one job (sends `queued` webhooks).
    pub fn enqueue(&self, job: JobSpec) -> Result<JobRef, EmulatorError> {
        let refs = self.enqueue_run(vec![job])?;
        refs.into_iter()
            .next()
            .ok_or_else(|| EmulatorError::InvalidJob("no job queued".into()))
    }

    /// Queues one workflow run with several jobs (one repository).
    pub fn enqueue_run(&self, jobs: Vec<JobSpec>) -> Result<Vec<JobRef>, EmulatorError> {
        let refs = self.shared.with_state(|s, now| s.enqueue_run(jobs, now))?;
        self.shared.notify();
        Ok(refs)
    }

    /// Records a finished workflow run created at `created` (one repository): each job started
    /// `waited` after it, or was cancelled before any runner took it (`None`). For a job
    /// history that predates the test; no webhook is sent.
    pub fn record_past_run(
        &self,
        jobs: Vec<JobSpec>,
        created: chrono::DateTime<chrono::Utc>,
        waited: Option<Duration>,
    ) -> Result<Vec<JobRef>, EmulatorError> {
        self.shared
            .with_state(|s, now| s.record_past_run(jobs, created, waited, now))
    }

    /// Cancels a job that no runner took yet: it completes as `cancelled` with no runner.
    pub fn cancel_queued_job(&self, job_id: u64) -> Result<(), EmulatorError> {
        self.shared
            .with_state(|s, now| s.cancel_queued_job(job_id, now))
    }

    /// Plays `workload` in the background: each run is queued at its offset divided by the
    /// speed. Every run is checked first; an invalid one fails the call and queues nothing.
    /// The task ends after the last arrival (or at shutdown).
    pub fn run_workload(&self, workload: Workload) -> Result<JoinHandle<()>, EmulatorError> {
        self.shared.with_state(|s, _| {
            workload
                .arrivals
                .iter()
                .try_for_each(|a| s.check_run(&a.jobs).map(|_| ()))
        })?;
        let speed = self.shared.with_state(|s, _| s.speed);
        let mut arrivals = workload.arrivals;
        arrivals.sort_by_key(|a| a.at);
        let shared = self.shared.clone();
        Ok(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for arrival in arrivals {
                let at = start + arrival.at.div_f64(speed);
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
                if let Err(error) = shared.with_state(|s, now| s.enqueue_run(arrival.jobs, now)) {
                    tracing::warn!(%error, "workload arrival not queued");
                }
                shared.notify();
            }
        }))
    }

    /// Authenticated REST requests received so far (304s and rate-limited answers included):
    /// a test-side counter of API calls.
    pub fn rest_requests(&self) -> u64 {
        self.shared.with_state(|s, _| s.rest_requests)
    }

    /// Jobs, runners, webhook counters and violations, now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.with_state(|s, now| s.snapshot(now))
    }

    /// Violations recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.shared.with_state(|s, _| s.violations())
    }

    /// Records a violation for every job not completed (never started, or still running)
    /// and returns those.
    pub fn check_all_done(&self) -> Vec<Violation> {
        self.shared.with_state(|s, now| s.check_all_done(now))
    }

    /// Waits until every queued job has completed, up to `timeout`; returns whether they
    /// all did.
    pub async fn wait_all_done(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.snapshot().all_done() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every webhook delivery decided so far (dropped ones included), with outcomes.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.with_state(|s, _| s.deliveries.clone())
    }

    /// Replaces the fault settings (a 429 burst starts again).
    pub fn set_faults(&self, faults: Faults) -> Result<(), EmulatorError> {
        faults.validate()?;
        self.shared.with_state(|s, _| s.set_faults(faults));
        Ok(())
    }

    /// Stops serving and waits for the background tasks to end.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
