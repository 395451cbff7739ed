//! runscale's policy never violates an invariant on any generated workload: never above
//! `max`, never kills a busy runner, runs every job — across pool shapes.

use std::time::Duration;

use runscale_sim::trace::generate::generate;
use runscale_sim::{
    BootDist, GeneratorKind, PolicyName, PolicySelection, SimPool, SimulateArgs, TraceSource,
};

fn pools() -> Vec<(&'static str, SimPool)> {
    let default = SimPool::default_pool();
    let mut persistent = SimPool::default_pool();
    persistent.spec.ephemeral = false;
    let mut slots = SimPool::default_pool();
    slots.spec.runners_per_instance = 3;
    slots.spec.max = 20;
    slots.spec.max_booting = 20;
    let mut warm = SimPool::default_pool();
    warm.spec.min_idle = 3;
    warm.spec.max = 10;
    warm.spec.max_booting = 4;
    warm.spec.launches_per_minute = 6;
    warm.spec.scale_down_delay = Duration::from_secs(60);
    vec![
        ("default", default),
        ("persistent", persistent),
        ("3 slots, max 20", slots),
        ("warm, max 10, rate-limited", warm),
    ]
}

#[test]
fn runscale_has_no_violation_on_any_generator() {
    for kind in GeneratorKind::ALL {
        for seed in 1..=2 {
            let trace = generate(kind, seed);
            for (shape, pool) in pools() {
                let args = SimulateArgs {
                    trace: TraceSource::Generate { kind, seed },
                    pools: vec![pool],
                    policies: PolicySelection(vec![PolicyName::Runscale]),
                    boot: "lognormal:mean=45s,sd=20s"
                        .parse::<BootDist>()
                        .expect("boot"),
                    seed,
                    ..SimulateArgs::default()
                };
                let report = runscale_sim::run_trace(&args, &trace).expect("simulates");
                let r = &report.results[0];
                assert_eq!(
                    r.violations.total(),
                    0,
                    "{kind} seed {seed} {shape}: {:?}",
                    r.violations
                );
                assert_eq!(r.jobs_run, trace.jobs.len(), "{kind} seed {seed} {shape}");
                assert!(
                    r.overhead_ratio >= 0.5,
                    "{kind} {shape}: {}",
                    r.overhead_ratio
                );
            }
        }
    }
}

#[test]
fn every_policy_runs_every_job_of_every_generator() {
    for kind in GeneratorKind::ALL {
        let args = SimulateArgs {
            trace: TraceSource::Generate { kind, seed: 3 },
            ..SimulateArgs::default()
        };
        let report = runscale_sim::run(&args).expect("simulates");
        assert_eq!(report.results.len(), PolicyName::ALL.len());
        for r in &report.results {
            assert_eq!(r.violations.never_run, 0, "{kind} {}", r.policy);
            assert_eq!(r.violations.over_max, 0, "{kind} {}", r.policy);
            assert!(r.peak_fleet <= 50, "{kind} {}", r.policy);
        }
        assert!(
            report.results.iter().any(|r| r.pareto),
            "{kind}: some policy is on the Pareto front"
        );
    }
}
