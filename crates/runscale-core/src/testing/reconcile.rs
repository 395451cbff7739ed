//! Running the real reconciler in integration tests: one call that starts it over pool
//! bindings on the system clock with short passes and backoff, and the count of live
//! instances tests poll, and what a pass launched for the forecast.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::adapter::Backend;
use crate::clock::SystemClock;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::model::PoolId;
use crate::reconciler::{Options, PoolBinding, Reconciler};

/// Starts a reconciler over `bindings` in the background on the system clock: a pass every
/// `interval`, failures backed off from 200 ms up to `backoff_max`, metrics in a registry of
/// its own. Cancel the token to stop it; the handle ends when it has stopped.
pub fn spawn_reconciler(
    bindings: Vec<PoolBinding>,
    interval: Duration,
    backoff_max: Duration,
) -> (CancellationToken, JoinHandle<()>) {
    let reconciler = Reconciler::new(
        bindings,
        Arc::new(SystemClock),
        Arc::new(Metrics::register(&mut Registry::default())),
        Options {
            interval,
            backoff_base: Duration::from_millis(200),
            backoff_max,
            ..Options::default()
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(stop.clone()));
    (stop, task)
}

/// How many instances `backend` lists over `pools`.
pub async fn live_instances(backend: &dyn Backend, pools: &[PoolId]) -> Result<usize> {
    Ok(backend.instances(pools).await?.values().map(Vec::len).sum())
}

/// Instances the passes of `reports` launched for the forecast (reason `forecast`).
pub fn forecast_launches(reports: &[crate::reconciler::PassReport]) -> u32 {
    reports
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .flat_map(|p| &p.actions)
        .map(|a| match a {
            crate::plan::Planned {
                action: crate::plan::Action::Launch { count },
                reason: crate::plan::Reason::Forecast,
            } => *count,
            _ => 0,
        })
        .sum()
}
