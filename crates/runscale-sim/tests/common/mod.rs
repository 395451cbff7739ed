//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use runscale_sim::{
    BootDist, PolicyName, PolicyReport, PolicySelection, SimPool, SimulateArgs, Trace, TraceJob,
    TraceSource,
};

/// Monday 2025-03-03 09:00:00 UTC: on the minute and on a 5-minute boundary.
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc
        .with_ymd_and_hms(2025, 3, 3, 9, 0, 0)
        .single()
        .expect("valid time")
}

/// A trace of `(queued after t0 s, duration s, run)` jobs.
pub fn trace(jobs: &[(f64, f64, &str)]) -> Trace {
    Trace {
        source: "test".to_owned(),
        jobs: jobs
            .iter()
            .map(|&(at, dur, run)| TraceJob {
                queued_at: t0() + chrono::Duration::milliseconds((at * 1000.0) as i64),
                duration: Duration::from_secs_f64(dur),
                labels: Arc::from(vec!["linux".to_owned()]),
                pool: None,
                run: Some(run.to_owned()),
            })
            .collect(),
        skipped: 0,
    }
}

/// Simulates one policy with a fixed 45 s boot, 5 s registration, 1 s webhooks.
pub fn sim(trace: &Trace, pool: SimPool, policy: PolicyName, seed: u64) -> PolicyReport {
    let args = SimulateArgs {
        trace: TraceSource::File("test".into()),
        pools: vec![pool],
        policies: PolicySelection(vec![policy]),
        boot: BootDist::Fixed(Duration::from_secs(45)),
        seed,
        ..SimulateArgs::default()
    };
    let mut r = runscale_sim::run_trace(&args, trace).expect("simulates");
    r.results.remove(0)
}

/// Equal within 10 ms.
pub fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01
}
