//! The metrics runscale exports, in one registry (OpenMetrics via prometheus-client).
//!
//! Every label value is bounded: pool names come from configuration, reasons, states, kinds and
//! operations are static strings. Recording happens in the reconciler and in the instrumenting
//! wrappers ([`crate::instrument`]), never in adapter code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{InstanceState, PoolId, RunnerState};

/// Labels: pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels: pool and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    /// Pool name.
    pub pool: String,
    /// State name.
    pub state: &'static str,
}

/// Labels: pool, action kind and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Pool name.
    pub pool: String,
    /// Action kind (`launch`, `terminate`, ...).
    pub action: &'static str,
    /// Reason (`demand`, `idle_timeout`, ...).
    pub reason: &'static str,
}

/// Labels: pool and error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Pool name.
    pub pool: String,
    /// Error kind.
    pub kind: &'static str,
}

/// Labels of webhook deliveries: the provider they were sent to and what became of them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// A configured provider's name; empty for a path naming no provider (the path is not
    /// used as a label value: anyone can send any path).
    pub provider: String,
    /// `accepted`, `unknown_provider`, `unauthenticated`, `malformed` or `failed`.
    pub outcome: &'static str,
}

/// Labels of one adapter call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Configured provider or backend name (the account).
    pub account: String,
    /// Operation (`observe`, `launch`, ...).
    pub op: &'static str,
    /// `ok` or an error kind.
    pub outcome: &'static str,
}

/// Labels of a backend event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendEventLabels {
    /// Configured backend name (the account).
    pub account: String,
    /// Pool name.
    pub pool: String,
    /// Event name (`spot_fallback_on_demand`, ...).
    pub event: &'static str,
}

/// Labels: account.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    /// Configured provider name.
    pub account: String,
}

/// All of runscale's metrics.
pub struct Metrics {
    /// Jobs waiting / running per pool.
    pub demand: Family<PoolStateLabels, Gauge>,
    /// Runners by state per pool.
    pub runners: Family<PoolStateLabels, Gauge>,
    /// Instances by state per pool.
    pub instances: Family<PoolStateLabels, Gauge>,
    /// Instances wanted per pool.
    pub desired: Family<PoolLabels, Gauge>,
    /// Actions carried out successfully, by kind and reason.
    pub actions: Family<ActionLabels, Counter>,
    /// Instances launched, by reason.
    pub launches: Family<ActionLabels, Counter>,
    /// Instances terminated, by reason.
    pub terminations: Family<ActionLabels, Counter>,
    /// How long jobs waited for a runner (seconds).
    pub job_wait: Family<PoolLabels, Histogram>,
    /// Adapter calls by account, operation and outcome.
    pub api_requests: Family<CallLabels, Counter>,
    /// Adapter call latency (seconds) by account and operation.
    pub api_duration: Family<CallLabels, Histogram>,
    /// Rate-limit budget left per account, as last reported by the provider.
    pub rate_limit_remaining: Family<AccountLabels, Gauge>,
    /// Notable backend events (e.g. spot launches that fell back to on-demand), by account,
    /// pool and event.
    pub backend_events: Family<BackendEventLabels, Counter>,
    /// Duration of a pass (seconds).
    pub pass_duration: Histogram,
    /// Failed passes by pool and error kind.
    pub failures: Family<FailureLabels, Counter>,
    /// Webhook deliveries by provider and outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Pool tasks started again after they died.
    pub pool_restarts: Family<PoolLabels, Counter>,
    /// Past job arrivals a warm pool's demand history was seeded with at start-up.
    pub history_arrivals: Family<PoolLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

impl Metrics {
    /// Creates the metrics and registers them (prefix `runscale_`) in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            demand: Family::default(),
            runners: Family::default(),
            instances: Family::default(),
            desired: Family::default(),
            actions: Family::default(),
            launches: Family::default(),
            terminations: Family::default(),
            job_wait: Family::new_with_constructor(wait_histogram),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(latency_histogram),
            rate_limit_remaining: Family::default(),
            backend_events: Family::default(),
            pass_duration: latency_histogram(),
            failures: Family::default(),
            webhooks: Family::default(),
            pool_restarts: Family::default(),
            history_arrivals: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("runscale");
        r.register(
            "demand_jobs",
            "Jobs waiting or running, per pool",
            m.demand.clone(),
        );
        r.register("runners", "Runners by state, per pool", m.runners.clone());
        r.register(
            "instances",
            "Instances by state, per pool",
            m.instances.clone(),
        );
        r.register(
            "desired_instances",
            "Instances wanted, per pool",
            m.desired.clone(),
        );
        r.register(
            "actions",
            "Actions carried out, by kind and reason",
            m.actions.clone(),
        );
        r.register(
            "launches",
            "Instances launched, by reason",
            m.launches.clone(),
        );
        r.register(
            "terminations",
            "Instances terminated, by reason",
            m.terminations.clone(),
        );
        r.register(
            "job_wait_seconds",
            "Time jobs waited for a runner",
            m.job_wait.clone(),
        );
        r.register(
            "api_requests",
            "Provider and backend calls",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Provider and backend call latency",
            m.api_duration.clone(),
        );
        r.register(
            "rate_limit_remaining",
            "API rate-limit budget left, per account",
            m.rate_limit_remaining.clone(),
        );
        r.register(
            "backend_events",
            "Notable backend events (e.g. spot capacity fallbacks), by account, pool and event",
            m.backend_events.clone(),
        );
        r.register(
            "pass_duration_seconds",
            "Duration of one reconcile pass",
            m.pass_duration.clone(),
        );
        r.register(
            "pass_failures",
            "Failed passes, by pool and error kind",
            m.failures.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries, by provider and outcome (accepted, unknown_provider, \
             unauthenticated, malformed, failed)",
            m.webhooks.clone(),
        );
        r.register(
            "pool_restarts",
            "Pool tasks started again after they died (a panic)",
            m.pool_restarts.clone(),
        );
        r.register(
            "history_arrivals_loaded",
            "Past job arrivals read from the CI system's job history at start-up, per warm pool",
            m.history_arrivals.clone(),
        );
        m
    }
}

/// A label set's series, looked up in a [`Family`] once and kept: a handle shares the series'
/// value, so setting it later costs no label hashing, no lookup and no allocation. (Nothing
/// removes series from the families, so a kept handle never goes stale.)
fn series<S, M, C>(family: &Family<S, M, C>, labels: &S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

/// The per-pool series a pass sets from each observation: demand, runners and instances by
/// state, and the job wait histogram.
pub(crate) struct ObservedSeries {
    /// `waiting`, `running`.
    pub(crate) demand: [Gauge; 2],
    /// Indexed by [`RUNNER_STATES`].
    pub(crate) runners: [Gauge; 3],
    /// Indexed by [`INSTANCE_STATES`].
    pub(crate) instances: [Gauge; 3],
    /// Seconds jobs waited.
    pub(crate) job_wait: Histogram,
}

/// Runner states in the order of [`ObservedSeries::runners`].
pub(crate) const RUNNER_STATES: [RunnerState; 3] =
    [RunnerState::Idle, RunnerState::Busy, RunnerState::Offline];
/// Instance states in the order of [`ObservedSeries::instances`].
pub(crate) const INSTANCE_STATES: [InstanceState; 3] = [
    InstanceState::Booting,
    InstanceState::Running,
    InstanceState::Stopping,
];

impl ObservedSeries {
    /// Creates (or finds) `pool`'s series.
    pub(crate) fn new(metrics: &Metrics, pool: &PoolId) -> Self {
        let state = |family: &Family<PoolStateLabels, Gauge>, state: &'static str| {
            series(
                family,
                &PoolStateLabels {
                    pool: pool.to_string(),
                    state,
                },
            )
        };
        Self {
            demand: [
                state(&metrics.demand, "waiting"),
                state(&metrics.demand, "running"),
            ],
            runners: RUNNER_STATES.map(|s| state(&metrics.runners, s.as_str())),
            instances: INSTANCE_STATES.map(|s| state(&metrics.instances, s.as_str())),
            job_wait: series(
                &metrics.job_wait,
                &PoolLabels {
                    pool: pool.to_string(),
                },
            ),
        }
    }
}

/// The counters of one (action, reason) of one pool: `actions`, and `launches` or
/// `terminations` for those kinds.
#[derive(Clone)]
pub(crate) struct ActionSeries {
    /// `runscale_actions`.
    pub(crate) actions: Counter,
    /// `runscale_launches` or `runscale_terminations`, for those kinds.
    pub(crate) kind: Option<Counter>,
}

/// A small cache of series keyed by two static strings (an action and a reason, an operation
/// and an outcome), filled on first use so series appear exactly when they did before caching.
/// Linear: it holds a dozen entries or so.
pub(crate) struct SeriesCache<T> {
    entries: std::sync::Mutex<Vec<(&'static str, &'static str, T)>>,
}

impl<T> Default for SeriesCache<T> {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<T: Clone> SeriesCache<T> {
    /// The entry for `(a, b)`, made by `make` the first time.
    pub(crate) fn get(&self, a: &'static str, b: &'static str, make: impl FnOnce() -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, t)) = entries.iter().find(|(x, y, _)| *x == a && *y == b) {
            return t.clone();
        }
        let t = make();
        entries.push((a, b, t.clone()));
        t
    }
}

impl Metrics {
    /// `pool`'s counters for a successful `action` planned for `reason`.
    pub(crate) fn action_series(
        &self,
        pool: &PoolId,
        action: &'static str,
        reason: &'static str,
    ) -> ActionSeries {
        let labels = ActionLabels {
            pool: pool.to_string(),
            action,
            reason,
        };
        let kind = match action {
            "launch" => Some(series(&self.launches, &labels)),
            "terminate" => Some(series(&self.terminations, &labels)),
            _ => None,
        };
        ActionSeries {
            actions: series(&self.actions, &labels),
            kind,
        }
    }

    /// `pool`'s `desired_instances` gauge.
    pub(crate) fn desired_series(&self, pool: &PoolId) -> Gauge {
        series(
            &self.desired,
            &PoolLabels {
                pool: pool.to_string(),
            },
        )
    }

    /// An account's series for calls of `op` that ended in `outcome`: the request counter and
    /// the latency histogram.
    pub(crate) fn call_series(
        &self,
        account: &str,
        op: &'static str,
        outcome: &'static str,
    ) -> (Counter, Histogram) {
        let labels = CallLabels {
            account: account.to_owned(),
            op,
            outcome,
        };
        (
            series(&self.api_requests, &labels),
            series(&self.api_duration, &labels),
        )
    }
}
