//! Instrumenting wrappers: every provider and backend call goes through one of these, which
//! records its latency and outcome. Adapter code never touches metrics.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::adapter::{
    Backend, BackendEvent, LaunchRequest, Provider, ProviderView, Registration, ReuseRequest,
    WebhookRequest,
};
use crate::error::Result;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{AccountLabels, BackendEventLabels, Metrics, SeriesCache};
use crate::model::{Instance, InstanceId, PoolId, RunnerId};

/// Records one call's latency and outcome.
async fn timed<T>(
    calls: &Calls,
    op: &'static str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    let start = Instant::now();
    let out = f.await;
    let outcome = match &out {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    };
    calls.record(op, outcome, start);
    out
}

/// One account's call series, each looked up once (by operation and outcome) and kept.
struct Calls {
    account: String,
    metrics: Arc<Metrics>,
    series: SeriesCache<(Counter, Histogram)>,
}

impl Calls {
    fn new(account: String, metrics: Arc<Metrics>) -> Self {
        Self {
            account,
            metrics,
            series: SeriesCache::default(),
        }
    }

    fn record(&self, op: &'static str, outcome: &'static str, start: Instant) {
        let (requests, duration) = self.series.get(op, outcome, || {
            self.metrics.call_series(&self.account, op, outcome)
        });
        requests.inc();
        duration.observe(start.elapsed().as_secs_f64());
    }
}

/// A provider whose calls are counted and timed under its configured name.
pub struct InstrumentedProvider {
    inner: Arc<dyn Provider>,
    calls: Calls,
    /// The account's `rate_limit_remaining` series, from the first budget reported on.
    budget: OnceLock<Gauge>,
}

impl InstrumentedProvider {
    /// Wraps `inner`, labelling its calls with `account`.
    pub fn new(inner: Arc<dyn Provider>, account: String, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            calls: Calls::new(account, metrics),
            budget: OnceLock::new(),
        }
    }

    fn update_budget(&self) {
        if let Some(left) = self.inner.rate_limit_remaining() {
            self.budget
                .get_or_init(|| {
                    self.calls
                        .metrics
                        .rate_limit_remaining
                        .get_or_create(&AccountLabels {
                            account: self.calls.account.clone(),
                        })
                        .clone()
                })
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
    }
}

/// The calls themselves, as inherent methods: within this crate the reconciler holds the
/// concrete wrapper and awaits these directly, so a call boxes only the wrapped adapter's
/// future, not this one's as well. The trait impl below delegates to them.
impl InstrumentedProvider {
    pub(crate) async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        let start = Instant::now();
        let out = self.inner.observe(pools).await;
        // One call, one sample: an account-wide failure shows as that error's kind.
        let outcome = out
            .values()
            .find_map(|r| r.as_ref().err().map(|e| e.kind().as_str()))
            .unwrap_or("ok");
        self.calls.record("observe", outcome, start);
        self.update_budget();
        out
    }

    pub(crate) async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        let out = timed(
            &self.calls,
            "register",
            self.inner.register(pool, runner_name),
        )
        .await;
        self.update_budget();
        out
    }

    pub(crate) async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        let out = timed(&self.calls, "remove", self.inner.remove(pool, runner)).await;
        self.update_budget();
        out
    }

    pub(crate) async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        timed(&self.calls, "drain", self.inner.drain(pool, runner)).await
    }

    pub(crate) async fn release(&self, pool: &PoolId, runner_name: &str) -> Result<()> {
        let out = timed(
            &self.calls,
            "release",
            self.inner.release(pool, runner_name),
        )
        .await;
        self.update_budget();
        out
    }

    pub(crate) async fn probe(&self) -> Result<String> {
        timed(&self.calls, "probe", self.inner.probe()).await
    }

    pub(crate) async fn confirm_quiet(&self, pool: &PoolId) -> Result<()> {
        let out = timed(&self.calls, "confirm_quiet", self.inner.confirm_quiet(pool)).await;
        self.update_budget();
        out
    }
}

#[async_trait]
impl Provider for InstrumentedProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn observe(&self, pools: &[PoolId]) -> HashMap<PoolId, Result<ProviderView>> {
        InstrumentedProvider::observe(self, pools).await
    }

    async fn register(&self, pool: &PoolId, runner_name: &str) -> Result<Registration> {
        InstrumentedProvider::register(self, pool, runner_name).await
    }

    async fn remove(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        InstrumentedProvider::remove(self, pool, runner).await
    }

    async fn drain(&self, pool: &PoolId, runner: &RunnerId) -> Result<()> {
        InstrumentedProvider::drain(self, pool, runner).await
    }

    async fn release(&self, pool: &PoolId, runner_name: &str) -> Result<()> {
        InstrumentedProvider::release(self, pool, runner_name).await
    }

    fn webhook(&self, request: &WebhookRequest) -> Result<Vec<PoolId>> {
        let start = Instant::now();
        let out = self.inner.webhook(request);
        let outcome = match &out {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        self.calls.record("webhook", outcome, start);
        out
    }

    async fn probe(&self) -> Result<String> {
        InstrumentedProvider::probe(self).await
    }

    async fn confirm_quiet(&self, pool: &PoolId) -> Result<()> {
        InstrumentedProvider::confirm_quiet(self, pool).await
    }

    fn rate_limit_remaining(&self) -> Option<u64> {
        self.inner.rate_limit_remaining()
    }
}

/// A backend whose calls are counted and timed under its configured name.
pub struct InstrumentedBackend {
    inner: Arc<dyn Backend>,
    calls: Calls,
}

impl InstrumentedBackend {
    /// Wraps `inner`, labelling its calls with `account`.
    pub fn new(inner: Arc<dyn Backend>, account: String, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            calls: Calls::new(account, metrics),
        }
    }
}

impl InstrumentedBackend {
    /// Counts the events the backend recorded during the call that just ended.
    fn count_events(&self) {
        for e in self.inner.take_events() {
            self.calls
                .metrics
                .backend_events
                .get_or_create(&BackendEventLabels {
                    account: self.calls.account.clone(),
                    pool: e.pool.to_string(),
                    event: e.event,
                })
                .inc();
        }
    }

    async fn counted<T>(&self, op: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let out = timed(&self.calls, op, f).await;
        self.count_events();
        out
    }
}

/// The calls themselves, as inherent methods: within this crate the reconciler holds the
/// concrete wrapper and awaits these directly, so a call boxes only the wrapped adapter's
/// future, not this one's as well. The trait impl below delegates to them.
impl InstrumentedBackend {
    pub(crate) async fn instances(
        &self,
        pools: &[PoolId],
    ) -> Result<HashMap<PoolId, Vec<Instance>>> {
        self.counted("instances", self.inner.instances(pools)).await
    }

    pub(crate) async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        self.counted("launch", self.inner.launch(request)).await
    }

    pub(crate) async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        self.counted("terminate", self.inner.terminate(pool, instance))
            .await
    }

    pub(crate) async fn probe(&self) -> Result<String> {
        self.counted("probe", self.inner.probe()).await
    }

    pub(crate) async fn reuse(&self, request: ReuseRequest) -> Result<()> {
        self.counted("reuse", self.inner.reuse(request)).await
    }

    pub(crate) async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        self.counted("mark_busy", self.inner.mark_busy(pool, busy))
            .await
    }

    pub(crate) async fn lower_target(&self, pool: &PoolId, wanted: u32) -> Result<()> {
        self.counted("lower_target", self.inner.lower_target(pool, wanted))
            .await
    }
}

#[async_trait]
impl Backend for InstrumentedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        InstrumentedBackend::instances(self, pools).await
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        InstrumentedBackend::launch(self, request).await
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        InstrumentedBackend::terminate(self, pool, instance).await
    }

    async fn probe(&self) -> Result<String> {
        InstrumentedBackend::probe(self).await
    }

    async fn reuse(&self, request: ReuseRequest) -> Result<()> {
        InstrumentedBackend::reuse(self, request).await
    }

    async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        InstrumentedBackend::mark_busy(self, pool, busy).await
    }

    async fn lower_target(&self, pool: &PoolId, wanted: u32) -> Result<()> {
        InstrumentedBackend::lower_target(self, pool, wanted).await
    }

    fn take_events(&self) -> Vec<BackendEvent> {
        // Already counted after each call.
        Vec::new()
    }

    fn subscribe(&self, events: mpsc::UnboundedSender<PoolId>) {
        self.inner.subscribe(events);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::InstanceState;

    /// Records one event per launch, as a backend falling back to another capacity type would.
    #[derive(Default)]
    struct Eventful {
        events: Mutex<Vec<BackendEvent>>,
    }

    #[async_trait]
    impl Backend for Eventful {
        fn kind(&self) -> &'static str {
            "eventful"
        }
        async fn instances(&self, _pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
            Ok(HashMap::new())
        }
        async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(BackendEvent {
                    pool: request.pool.clone(),
                    event: "spot_fallback_on_demand",
                });
            Ok(Instance {
                id: InstanceId::new("i-1"),
                state: InstanceState::Booting,
                launched_at: chrono::Utc::now(),
                template_hash: request.template_hash,
                runner_names: Vec::new(),
                reused: None,
            })
        }
        async fn terminate(&self, _pool: &PoolId, _instance: &InstanceId) -> Result<()> {
            Ok(())
        }
        async fn probe(&self) -> Result<String> {
            Ok(String::new())
        }
        fn take_events(&self) -> Vec<BackendEvent> {
            std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }

    #[tokio::test]
    async fn backend_events_are_counted_once_per_event() {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let b = InstrumentedBackend::new(
            Arc::new(Eventful::default()),
            "ec2".to_owned(),
            metrics.clone(),
        );
        for _ in 0..2 {
            b.launch(LaunchRequest {
                pool: PoolId::new("p"),
                runners: Vec::new(),
                template_hash: "h".to_owned(),
            })
            .await
            .expect("launch");
        }
        b.instances(&[PoolId::new("p")]).await.expect("instances");
        let labels = BackendEventLabels {
            account: "ec2".to_owned(),
            pool: "p".to_owned(),
            event: "spot_fallback_on_demand",
        };
        assert_eq!(metrics.backend_events.get_or_create(&labels).get(), 2);
        assert!(b.take_events().is_empty(), "the wrapper consumed them");
    }
}
