//! `reuse` in the simulator: instances of ephemeral runners handed fresh runners when the pool
//! wants capacity cut both the waits and the runner-hours paid for boots, with no safety
//! violation; the argument is checked.

use runscale_sim::{GeneratorKind, PolicySelection, ReuseArg, SimulateArgs, TraceSource, WarmArg};

fn args(kind: GeneratorKind, reuse: &str) -> SimulateArgs {
    SimulateArgs {
        trace: TraceSource::Generate { kind, seed: 3 },
        policies: "runscale".parse::<PolicySelection>().expect("policies"),
        boot: "180s".parse().expect("boot"),
        warm: Some("auto".parse::<WarmArg>().expect("warm")),
        reuse: Some(reuse.parse::<ReuseArg>().expect("reuse")),
        ..SimulateArgs::default()
    }
}

#[test]
fn reuse_serves_jobs_without_a_boot_and_stays_safe() {
    for kind in [GeneratorKind::Workday, GeneratorKind::Matrix] {
        let off = runscale_sim::run(&args(kind, "off")).expect("simulates");
        let on = runscale_sim::run(&args(kind, "10@12h")).expect("simulates");
        let (off, on) = (&off.results[0], &on.results[0]);
        assert_eq!(on.violations.total(), 0, "{kind:?}: {:?}", on.violations);
        assert_eq!(on.jobs_run, off.jobs_run);
        // Fewer launches (a reused instance serves several jobs), waits cut by a third or
        // more, less paid (seed 3: workday 65 s → 26 s, matrix 524 s → 293 s).
        assert!(on.launches < off.launches, "{kind:?}");
        assert!(
            on.wait.mean_s < off.wait.mean_s * 0.67,
            "{kind:?}: {} against {}",
            on.wait.mean_s,
            off.wait.mean_s
        );
        assert!(on.paid_runner_s < off.paid_runner_s, "{kind:?}");
    }
}

#[test]
fn reuse_arguments_are_checked() {
    let reuse = |s: &str| s.parse::<ReuseArg>().map(|r| r.0);
    assert_eq!(reuse("off").expect("off"), None);
    let r = reuse("5@2h").expect("valid").expect("on");
    assert_eq!((r.max_uses, r.max_age.as_secs()), (5, 7200));
    assert_eq!(
        reuse("10").expect("valid").map(|r| r.max_age.as_secs()),
        Some(12 * 3600)
    );
    for bad in ["1", "1001", "many", "5@soon", "5@0s", "5@8days"] {
        let e = reuse(bad).expect_err(bad).to_string();
        assert!(e.starts_with("invalid reuse"), "{bad}: {e}");
    }
}
