//! A backend whose construction needs the async runtime (an AWS SDK configuration loads its
//! credential chain and region asynchronously), built on first use.
//!
//! Building a backend (`BackendType::build`) is synchronous and makes no network call; a
//! [`Deferred`] keeps that promise for such backends: the real backend is built by the first call that
//! needs it (a listing, a launch, `probe`), and a failed build is an error of that call, tried
//! again by the next one. Subscribers registered before the build are handed over to it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use runscale_core::{Backend, BackendEvent, Instance, InstanceId, LaunchRequest, PoolId, Result};
use tokio::sync::{OnceCell, mpsc};

type Build =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>>> + Send>> + Send + Sync>;

/// A backend built on first use.
pub(crate) struct Deferred {
    kind: &'static str,
    build: Build,
    built: OnceCell<Arc<dyn Backend>>,
    /// Subscribers waiting for the build.
    waiting: Mutex<Vec<mpsc::UnboundedSender<PoolId>>>,
}

impl Deferred {
    /// A backend of `kind` that `build` makes when first needed.
    pub(crate) fn new<F, Fut>(kind: &'static str, build: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Backend>>> + Send + 'static,
    {
        Self {
            kind,
            build: Box::new(move || Box::pin(build())),
            built: OnceCell::new(),
            waiting: Mutex::new(Vec::new()),
        }
    }

    async fn get(&self) -> Result<&Arc<dyn Backend>> {
        let backend = self.built.get_or_try_init(|| (self.build)()).await?;
        let waiting: Vec<_> = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for events in waiting {
            backend.subscribe(events);
        }
        Ok(backend)
    }
}

#[async_trait]
impl Backend for Deferred {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        self.get().await?.instances(pools).await
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        self.get().await?.launch(request).await
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        self.get().await?.terminate(pool, instance).await
    }

    async fn probe(&self) -> Result<String> {
        self.get().await?.probe().await
    }

    async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        self.get().await?.mark_busy(pool, busy).await
    }

    async fn lower_target(&self, pool: &PoolId, wanted: u32) -> Result<()> {
        self.get().await?.lower_target(pool, wanted).await
    }

    fn take_events(&self) -> Vec<BackendEvent> {
        self.built
            .get()
            .map(|backend| backend.take_events())
            .unwrap_or_default()
    }

    fn subscribe(&self, events: mpsc::UnboundedSender<PoolId>) {
        // Under the lock, so a build finishing meanwhile either sees this subscriber in the
        // list or has already been seen here.
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        match self.built.get() {
            Some(backend) => backend.subscribe(events),
            None => waiting.push(events),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use runscale_core::testing::{World, WorldConfig};
    use runscale_core::{ErrorKind, SystemClock};

    use super::*;

    #[tokio::test]
    async fn builds_on_first_use_retries_a_failed_build_and_hands_over_subscribers() {
        let attempts = Arc::new(AtomicU32::new(0));
        let memory = World::new(Arc::new(SystemClock), WorldConfig::default()).backend();
        let deferred = Deferred::new("memory", {
            let attempts = attempts.clone();
            let memory = memory.clone();
            move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                let memory = memory.clone();
                async move {
                    if n == 0 {
                        Err(runscale_core::Error::new(
                            "test.build",
                            ErrorKind::Transient,
                            "credentials not ready",
                        ))
                    } else {
                        Ok(memory as Arc<dyn Backend>)
                    }
                }
            }
        });
        let (tx, _rx) = mpsc::unbounded_channel();
        deferred.subscribe(tx);
        assert_eq!(attempts.load(Ordering::SeqCst), 0, "nothing built up front");
        let pools = [PoolId::new("p")];
        let e = deferred
            .instances(&pools)
            .await
            .expect_err("first build fails");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(deferred.instances(&pools).await.is_ok(), "built on retry");
        assert!(deferred.probe().await.is_ok());
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            2,
            "built once it succeeded"
        );
        assert!(deferred.waiting.lock().expect("lock").is_empty());
    }
}
