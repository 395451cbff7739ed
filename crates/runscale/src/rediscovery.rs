//! Re-discovery in the environment modes whose pools are discovered
//! ([`Mode::rediscovers`](crate::config::environment::Mode::rediscovers), e.g. the
//! circleci-runner-autoscaler mode): every `RUNSCALE_DISCOVERY_INTERVAL` (default 5 s, as the
//! seed) the mode's loader runs again; when the set of pools it gives differs from the one
//! running, the new pools are built and handed to [`crate::daemon`], which lets in-flight
//! passes finish and carries on with the new set (same HTTP server, same metrics).
//!
//! - A discovery that fails, finds nothing, or whose configuration does not build keeps the
//!   running pools: a failed read never drops a pool.
//! - What changed is logged: pools added, removed, and changed (a class moved to another
//!   group or CronJob).
//! - A pool that disappears is no longer reconciled: runscale launches nothing more for it
//!   and terminates none of its instances. Its runners finish on their own (single-task, or
//!   their idle timeout), as with the seed; their Jobs are then left to the template's
//!   `ttlSecondsAfterFinished` and their group's instances to the group. Should the class come
//!   back, its pool picks them up again.
//!
//! What does not live here: how a mode discovers (in [`crate::config::environment`]) and how
//! the daemon swaps reconcilers (in [`crate::daemon`]).

use std::collections::BTreeMap;
use std::time::Duration;

use runscale_core::reconciler::PoolBinding;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::environment::Loader;
use crate::config::{self, Validated};

/// Longest wait for one discovery (the clients have their own, shorter, timeouts).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Re-discovery of an environment mode: its loader and how often it runs.
pub struct Rediscovery {
    loader: Loader,
    every: Duration,
}

/// A new set of pools for the daemon.
pub struct Swap {
    /// Every pool of the new set, with its adapters.
    pub pools: Vec<PoolBinding>,
}

/// What identifies a set of pools: each pool's name and settings (compared, never logged).
type Signature = BTreeMap<String, String>;

fn signature(config: &Validated) -> Signature {
    config
        .pools
        .iter()
        .map(|p| {
            (
                p.spec.name.to_string(),
                format!("{:?}|{:?}|{:?}", p.spec, p.selector, p.template),
            )
        })
        .collect()
}

/// Pools added, removed and changed from `old` to `new`.
fn diff(old: &Signature, new: &Signature) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .cloned()
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

impl Rediscovery {
    /// Re-runs `loader` every `every`.
    pub fn new(loader: Loader, every: Duration) -> Self {
        Self { loader, every }
    }

    /// How often discovery runs.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Starts discovering again every `every`, from `current` (the running configuration),
    /// until `stop` is cancelled or the receiver is dropped. Each new set of pools arrives on
    /// the receiver.
    pub fn spawn(
        mut self,
        current: &Validated,
        stop: CancellationToken,
    ) -> (mpsc::Receiver<Swap>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1);
        let mut running = signature(current);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(config) = self.next().await else {
                    continue;
                };
                let found = signature(&config);
                let (added, removed, changed) = diff(&running, &found);
                if added.is_empty() && removed.is_empty() && changed.is_empty() {
                    continue;
                }
                config::fetch_secrets(&config).await;
                let runtime = match config::build(&config) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %crate::commands::chain(&e), "the pools discovered do not build: keeping the current pools");
                        continue;
                    }
                };
                info!(
                    added = ?added,
                    removed = ?removed,
                    changed = ?changed,
                    pools = found.len(),
                    "discovery: the set of pools changed; switching once in-flight passes finish"
                );
                if tx
                    .send(Swap {
                        pools: runtime.pools,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                running = found;
            }
        });
        (rx, task)
    }

    /// The configuration discovered now, or `None` (logged) when discovery failed.
    async fn next(&mut self) -> Option<Validated> {
        match tokio::time::timeout(DISCOVERY_TIMEOUT, self.loader.load()).await {
            Ok(Ok(config)) => {
                debug!(pools = config.pools.len(), "discovery done");
                Some(config)
            }
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "discovery failed: keeping the current pools");
                None
            }
            Err(_) => {
                warn!(
                    timeout = ?DISCOVERY_TIMEOUT,
                    "discovery did not finish in time: keeping the current pools"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(pools: &[(&str, &str)]) -> Signature {
        pools
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_difference_names_pools_added_removed_and_changed() {
        let old = sig(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let new = sig(&[("b", "1"), ("c", "2"), ("d", "1")]);
        let (added, removed, changed) = diff(&old, &new);
        assert_eq!(added, ["d"]);
        assert_eq!(removed, ["a"]);
        assert_eq!(changed, ["c"]);
        assert_eq!(
            diff(&new, &new),
            (Vec::new(), Vec::new(), Vec::new()),
            "no change"
        );
    }
}
