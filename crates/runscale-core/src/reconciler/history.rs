//! Seeding the demand history of warm pools at start-up from the CI system's recent job
//! history ([`Provider::job_history`](crate::Provider::job_history)), so a restarted runscale
//! forecasts from the past two weeks instead of from nothing.
//!
//! It runs once, beside the passes (never before them): a pass may plan on an empty history
//! until the read is done. A read that fails leaves the history as the passes built it, and is
//! logged once with the reason: the forecast only ever adds warm capacity, so a missing history
//! costs waiting time, never capacity. Not here: the forecast itself ([`crate::forecast`]).

use std::sync::Arc;

use tracing::{info, warn};

use super::pass::PoolRuntime;
use crate::adapter::{HISTORY_MAX_JOBS, HISTORY_WINDOW, JobHistory, PastJob, Provider as _};
use crate::clock::Clock;
use crate::forecast::DemandHistory;
use crate::metrics::{Metrics, PoolLabels};
use crate::model::Timestamp;

/// Seeds every warm pool's history: one read per provider account, for all its warm pools.
pub(crate) async fn seed_all(pools: &[Arc<PoolRuntime>], clock: &dyn Clock, metrics: &Metrics) {
    let warm: Vec<&Arc<PoolRuntime>> = pools.iter().filter(|p| p.spec.warm.is_some()).collect();
    let mut groups: Vec<Vec<&Arc<PoolRuntime>>> = Vec::new();
    for p in warm {
        match groups
            .iter_mut()
            .find(|g| Arc::ptr_eq(&g[0].provider, &p.provider))
        {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    let reads = groups.iter().map(|g| seed_group(g, clock, metrics));
    futures::future::join_all(reads).await;
}

/// Reads the history of the warm pools of one provider account and seeds them.
async fn seed_group(group: &[&Arc<PoolRuntime>], clock: &dyn Clock, metrics: &Metrics) {
    let names: Vec<_> = group.iter().map(|p| p.spec.name.clone()).collect();
    let window = chrono::Duration::from_std(HISTORY_WINDOW).unwrap_or(chrono::Duration::zero());
    let since = clock.now() - window;
    let read = group[0].provider.job_history(&names, since).await;
    let now = clock.now();
    let mut found = match read {
        Ok(Some(found)) => found,
        Ok(None) => {
            info!(pools = ?names, kind = group[0].provider.kind(), "the CI system keeps no job history runscale can read: the demand history is learnt from new arrivals only");
            return;
        }
        Err(e) => {
            warn!(pools = ?names, error = %e, "reading the CI system's job history failed: the demand history is learnt from new arrivals only");
            return;
        }
    };
    for pool in group {
        let history = found.remove(&pool.spec.name).unwrap_or_default();
        seed_pool(pool, &history, since, now, metrics);
    }
}

/// Seeds one pool from its past jobs and reports how many arrivals it loaded.
fn seed_pool(
    pool: &PoolRuntime,
    history: &JobHistory,
    since: Timestamp,
    now: Timestamp,
    metrics: &Metrics,
) {
    // A read cut short covers a shorter span: seeding from its start keeps the rates right.
    let since = history.complete_from.map_or(since, |from| from.max(since));
    let (jobs, since) = newest(&history.jobs, since, now);
    let seeded = DemandHistory::seeded(since, &jobs, pool.spec.boot_timeout, now);
    let lead_s = seeded.estimated_lead().map(|d| d.as_secs());
    let arrivals = jobs.len();
    pool.memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pool
        .adopt_history(seeded);
    metrics
        .history_arrivals
        .get_or_create(&PoolLabels {
            pool: pool.spec.name.to_string(),
        })
        .set(i64::try_from(arrivals).unwrap_or(i64::MAX));
    if history.complete_from.is_some() || jobs.len() < history.jobs.len() {
        warn!(pool = %pool.spec.name, arrivals, ?lead_s, from = %since, "seeded the demand history from a partial job history (a read bound was reached; older jobs left out)");
    } else {
        info!(pool = %pool.spec.name, arrivals, ?lead_s, "seeded the demand history from the CI system's job history");
    }
}

/// The jobs queued between `since` and `now`, at most [`HISTORY_MAX_JOBS`] of them (the
/// newest), and from when they are complete.
fn newest(jobs: &[PastJob], since: Timestamp, now: Timestamp) -> (Vec<PastJob>, Timestamp) {
    let mut kept: Vec<PastJob> = jobs
        .iter()
        .filter(|j| j.queued_at >= since && j.queued_at <= now)
        .copied()
        .collect();
    if kept.len() <= HISTORY_MAX_JOBS {
        return (kept, since);
    }
    kept.sort_unstable_by_key(|j| std::cmp::Reverse(j.queued_at));
    kept.truncate(HISTORY_MAX_JOBS);
    let from = kept.last().map_or(since, |j| j.queued_at);
    (kept, from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn at_most_the_newest_jobs_seed_a_history_and_it_starts_at_the_oldest_kept() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 12, 7, 12, 0, 0)
            .single()
            .expect("a time");
        let since = now - chrono::Duration::days(14);
        let job = |s: i64| PastJob {
            queued_at: now - chrono::Duration::seconds(s),
            started_at: None,
        };
        let few: Vec<PastJob> = (1..=10).map(job).chain([job(20 * 86_400)]).collect();
        let (kept, from) = newest(&few, since, now);
        assert_eq!(
            (kept.len(), from),
            (10, since),
            "the one before the window left out"
        );
        let many: Vec<PastJob> = (1..=HISTORY_MAX_JOBS as i64 + 5).map(job).collect();
        let (kept, from) = newest(&many, since, now);
        assert_eq!(kept.len(), HISTORY_MAX_JOBS);
        assert_eq!(from, job(HISTORY_MAX_JOBS as i64).queued_at);
    }
}
