//! `warm` in the simulator: the setting overrides every pool, and `--sweep` adds one row of
//! runscale's policy per setting, which trade paid cost for waits.

use runscale_sim::{GeneratorKind, PolicySelection, SimulateArgs, SweepArg, TraceSource, WarmArg};

fn args(warm: &str, sweep: Option<&str>) -> SimulateArgs {
    let warm: WarmArg = warm.parse().expect("warm");
    SimulateArgs {
        trace: TraceSource::Generate {
            kind: GeneratorKind::Workday,
            seed: 2,
        },
        policies: "runscale".parse::<PolicySelection>().expect("policies"),
        warm: Some(warm),
        sweep: sweep.map(|s| SweepArg::parse(s, warm.0).expect("sweep")),
        ..SimulateArgs::default()
    }
}

#[test]
fn warm_capacity_cuts_waits_for_a_bounded_cost_and_the_sweep_draws_the_trade() {
    let off = runscale_sim::run(&args("off", None)).expect("simulates");
    let auto = runscale_sim::run(&args("auto", Some("coverage=0.6,0.9"))).expect("simulates");
    let off = &off.results[0];
    let rows: Vec<&str> = auto.results.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(
        rows,
        ["runscale", "runscale warm=10s@0.6", "runscale warm=10s@0.9"]
    );
    let [auto, low, high] = [&auto.results[0], &auto.results[1], &auto.results[2]];
    for r in [auto, low, high] {
        assert_eq!(r.violations.total(), 0, "{}", r.policy);
        assert_eq!(r.jobs_run, off.jobs_run);
    }
    // The default more than halves the mean wait of the reactive policy (seed 2: 52 s → 14 s)
    // for at most 15 % more cost (11 %).
    assert!(
        auto.wait.mean_s < off.wait.mean_s / 2.0,
        "{} {}",
        auto.wait.mean_s,
        off.wait.mean_s
    );
    assert!(auto.paid_runner_s < off.paid_runner_s * 1.15);
    // More coverage: shorter waits, more cost.
    assert!(high.wait.mean_s < auto.wait.mean_s && auto.wait.mean_s < low.wait.mean_s);
    assert!(high.paid_runner_s > auto.paid_runner_s && auto.paid_runner_s > low.paid_runner_s);
}

#[test]
fn sweep_and_warm_arguments_are_checked() {
    let parse = |s: &str| SweepArg::parse(s, None);
    assert_eq!(
        parse("target_wait=0s,30s").expect("valid").0,
        [
            "0s@0.8".parse::<WarmArg>().expect("warm"),
            "30s@0.8".parse().expect("warm")
        ]
    );
    assert_eq!(parse("warm=off").expect("valid").0, [WarmArg(None)]);
    for bad in [
        "target_wait",
        "speed=1,2",
        "coverage=1.5",
        "target_wait=soon",
        "warm=",
    ] {
        let e = parse(bad).expect_err(bad).to_string();
        assert!(
            e.starts_with("invalid sweep") || e.starts_with("invalid warm"),
            "{bad}: {e}"
        );
    }
    assert!("5s@0".parse::<WarmArg>().is_err());
    assert!("2h".parse::<WarmArg>().is_err());
}
