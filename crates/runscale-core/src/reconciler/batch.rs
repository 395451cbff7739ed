//! Per-account batching: concurrent requests for different pools of one provider (or backend)
//! are served by one call. While a call is in flight, new requests queue and form the next
//! batch, so a burst of wake-ups costs one API round trip, not one per pool.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorKind, Result};
use crate::model::PoolId;

type Reply<V> = oneshot::Sender<Result<V>>;
type BatchFuture<'a, V> = Pin<Box<dyn Future<Output = HashMap<PoolId, Result<V>>> + Send + 'a>>;

/// The call a batcher makes: all requested pools in, one result per pool out.
pub(crate) trait BatchCall<V>: Send + Sync + 'static {
    fn call<'a>(&'a self, pools: &'a [PoolId]) -> BatchFuture<'a, V>;
}

/// Handle to a batching task. Dropping every handle ends the task.
pub(crate) struct Batcher<V> {
    tx: mpsc::UnboundedSender<(PoolId, Reply<V>)>,
    op: &'static str,
}

impl<V> Clone for Batcher<V> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            op: self.op,
        }
    }
}

impl<V: Clone + Send + 'static> Batcher<V> {
    /// Spawns the batching task for `call`.
    pub(crate) fn spawn(op: &'static str, call: Arc<dyn BatchCall<V>>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(PoolId, Reply<V>)>();
        tokio::spawn(async move {
            let mut requests: Vec<(PoolId, Reply<V>)> = Vec::new();
            let mut pools: Vec<PoolId> = Vec::new();
            while let Some(first) = rx.recv().await {
                // Let the other pools woken by the same event queue up behind the first.
                tokio::task::yield_now().await;
                requests.push(first);
                while let Ok(request) = rx.try_recv() {
                    requests.push(request);
                }
                // By pool, so that a pool asked for twice is asked once.
                requests.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                pools.extend(requests.iter().map(|(pool, _)| pool.clone()));
                pools.dedup();
                let mut results = call.call(&pools).await;
                pools.clear();
                let mut batch = requests.drain(..).peekable();
                while let Some((pool, reply)) = batch.next() {
                    let again = batch.peek().is_some_and(|(next, _)| *next == pool);
                    // The last request for a pool takes its result; earlier ones get copies.
                    let result = if again {
                        results.get(&pool).cloned()
                    } else {
                        results.remove(&pool)
                    };
                    let result = result.unwrap_or_else(|| {
                        Err(Error::new(
                            op,
                            ErrorKind::Protocol,
                            format!("adapter returned no result for pool {pool}"),
                        ))
                    });
                    // The requester may have given up (shutdown); nothing to do then.
                    let _ = reply.send(result);
                }
            }
        });
        Self { tx, op }
    }

    /// Requests `pool`'s value; resolves when its batch completes.
    pub(crate) async fn get(&self, pool: &PoolId) -> Result<V> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::new(self.op, ErrorKind::Transient, "batching task stopped");
        self.tx.send((pool.clone(), reply)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}
