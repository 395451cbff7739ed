//! The simulator plans on the observation the reconciler builds: runners that registered and
//! have since left the CI system's listing are `departed`, so an instance whose every runner
//! left is retired at once rather than kept as booting until `boot_timeout`.

mod common;

use std::time::Duration;

use common::trace;
use runscale_sim::{
    BootDist, PolicyName, PolicySelection, SimPool, SimulateArgs, TraceSource, WorldParams,
};

/// Paid runner-seconds for one 60 s job on a pool whose instances outlive their runners (they do not shut down when
/// the runners leave), with a 20 min `boot_timeout`.
fn paid_seconds() -> f64 {
    let mut pool = SimPool::default_pool();
    pool.spec.boot_timeout = Duration::from_secs(20 * 60);
    pool.spec.warm = None;
    let args = SimulateArgs {
        trace: TraceSource::File("test".into()),
        pools: vec![pool],
        policies: PolicySelection(vec![PolicyName::Runscale]),
        boot: BootDist::Fixed(Duration::from_secs(45)),
        world: WorldParams {
            instance_exits_when_runners_leave: false,
            ..WorldParams::default()
        },
        ..SimulateArgs::default()
    };
    let report = runscale_sim::run_trace(&args, &trace(&[(0.0, 60.0, "a")])).expect("simulates");
    let r = &report.results[0];
    assert_eq!(r.jobs_run, 1);
    assert_eq!(r.violations.total(), 0);
    assert_eq!(r.launches, 1);
    r.paid_runner_s
}

#[test]
fn an_instance_whose_ephemeral_runner_departed_is_retired_within_a_few_passes() {
    // Ready at ~50 s, the job ends at ~110 s and the runner leaves; two observations without
    // it (the completion's pass and the next, at most 30 s later) make it departed.
    let paid = paid_seconds();
    assert!(
        paid < 180.0,
        "paid {paid} s: kept until boot_timeout (1200 s)?"
    );
}
