//! The pod inventory: a kube-runtime watcher feeding a reflector store, restarted (so
//! re-listed from scratch) every `resync_period`, and re-listed by the watcher itself after a
//! dropped watch or a 410 Gone.
//!
//! It also tells subscribers about pods that finished or went away, so their pool is
//! reconciled early.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use runscale_core::{ErrorKind, PoolId};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{convert, errors};

/// Who hears about pods that changed on their own.
pub(crate) type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<PoolId>>>>;

pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How far the inventory is known to be complete.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// When the list in progress started.
    listing_since: Option<Instant>,
    /// When the last completed list started: every pod created before this instant and still
    /// there is in the store.
    pub(crate) synced_from: Option<Instant>,
    /// Completed lists (the first one and every re-list).
    pub(crate) lists: u64,
    /// The last failure of the watch, cleared by the next completed list.
    last_error: Option<(ErrorKind, String)>,
}

/// The running inventory of one backend's runner pods.
pub(crate) struct Inventory {
    /// Pods of this backend's pools.
    pub(crate) store: Store<Pod>,
    /// How complete the store is.
    sync: Arc<Mutex<SyncState>>,
    task: AbortHandle,
}

impl Drop for Inventory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inventory {
    /// Starts watching the pods matching `selector` in `api`'s namespace.
    pub(crate) fn start(
        api: Api<Pod>,
        selector: String,
        resync: Duration,
        subscribers: Subscribers,
    ) -> Self {
        let (store, writer) = reflector::store();
        let sync = Arc::new(Mutex::new(SyncState::default()));
        let task = tokio::spawn(run(
            api,
            selector,
            resync,
            writer,
            sync.clone(),
            subscribers,
        ));
        Self {
            store,
            sync,
            task: task.abort_handle(),
        }
    }

    /// When the last completed list started.
    pub(crate) fn synced_from(&self) -> Option<Instant> {
        locked(&self.sync).synced_from
    }

    /// The kind and description of the last watch failure, if the watch has not recovered.
    pub(crate) fn last_error(&self) -> Option<(ErrorKind, String)> {
        locked(&self.sync).last_error.clone()
    }
}

async fn run(
    api: Api<Pod>,
    selector: String,
    resync: Duration,
    mut writer: reflector::store::Writer<Pod>,
    sync: Arc<Mutex<SyncState>>,
    subscribers: Subscribers,
) {
    loop {
        let config = watcher::Config::default().labels(&selector);
        let stream = watcher::watcher(api.clone(), config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let resync_at = tokio::time::sleep(resync);
        let mut resync_at = std::pin::pin!(resync_at);
        loop {
            tokio::select! {
                _ = &mut resync_at => {
                    debug!("re-listing runner pods (resync)");
                    break;
                }
                event = stream.next() => match event {
                    Some(Ok(event)) => {
                        observe(&event, &sync, &subscribers);
                        writer.apply_watcher_event(&event);
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "runner pod watch failed; retrying with backoff");
                        locked(&sync).last_error = Some(describe(&e));
                    }
                    None => break,
                }
            }
        }
    }
}

/// The kind of a watch failure, and what it says.
fn describe(e: &watcher::Error) -> (ErrorKind, String) {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => (errors::kind(e), e.to_string()),
        other => (ErrorKind::Transient, other.to_string()),
    }
}

/// Updates the sync markers and wakes the pools of pods that finished or went away.
fn observe(event: &Event<Pod>, sync: &Mutex<SyncState>, subscribers: &Subscribers) {
    let pod = match event {
        Event::Init => {
            locked(sync).listing_since = Some(Instant::now());
            return;
        }
        Event::InitDone => {
            let mut s = locked(sync);
            s.synced_from = s.listing_since.take().or(s.synced_from);
            s.lists += 1;
            s.last_error = None;
            return;
        }
        Event::InitApply(_) => return,
        Event::Apply(pod) if convert::is_finished(pod) => pod,
        Event::Apply(_) => return,
        Event::Delete(pod) => pod,
    };
    if let Some(pool) = convert::pool_of(pod) {
        let pool = PoolId::new(pool);
        locked(subscribers).retain(|tx| tx.send(pool.clone()).is_ok());
    }
}
