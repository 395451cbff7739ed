//! `--recommend`: on generated traces the recommended setting satisfies its rule, is on the
//! Pareto front of the settings simulated, stays within the simulation budget, and each pool
//! gets its own.

use std::time::Duration;

use runscale_sim::recommend::{self, PoolRecommendation, RecommendArgs, Row, Rule, SearchKind};
use runscale_sim::{
    GenOptions, GeneratorKind, PolicySelection, SimPool, SimulateArgs, TraceSource,
};

fn args(kind: GeneratorKind, policies: &str) -> SimulateArgs {
    SimulateArgs {
        trace: TraceSource::Generate { kind, seed: 3 },
        policies: policies.parse::<PolicySelection>().expect("policies"),
        generator: GenOptions {
            days: 1,
            intensity: 0.5,
        },
        ..SimulateArgs::default()
    }
}

fn recommend(args: &SimulateArgs, rule: Rule, budget: usize) -> Vec<PoolRecommendation> {
    recommend::run(args, &RecommendArgs { rule, budget })
        .expect("recommends")
        .pools
}

/// `a` is at least as good as `b` on mean wait and cost, and more than 1 % better on one.
fn beats(a: &Row, b: &Row) -> bool {
    let better = |x: f64, y: f64| x < y * 0.99;
    a.wait.mean_s <= b.wait.mean_s
        && a.paid_runner_s <= b.paid_runner_s
        && (better(a.wait.mean_s, b.wait.mean_s) || better(a.paid_runner_s, b.paid_runner_s))
}

fn assert_on_front(p: &PoolRecommendation, r: &Row) {
    let clean = p.candidates.iter().filter(|c| c.ran_clean());
    for c in clean {
        assert!(
            !beats(c, r),
            "{:?} beats the recommendation {:?}",
            c.setting,
            r.setting
        );
    }
}

#[test]
fn the_default_rule_picks_the_shortest_wait_within_the_cost_cap_on_the_front() {
    let pools = recommend(
        &args(GeneratorKind::Workday, "runscale,vela,clairvoyant"),
        Rule::default(),
        RecommendArgs::DEFAULT_BUDGET,
    );
    let [p] = pools.as_slice() else {
        panic!("one pool: {pools:?}")
    };
    assert_eq!(p.search, SearchKind::FullGrid);
    assert_eq!(p.simulations, p.grid_size);
    assert!(p.simulations <= p.budget);
    let r = p.recommended.as_ref().expect("a recommendation");
    assert!(r.ran_clean());
    assert!(
        r.cost_ratio <= Rule::DEFAULT_COST_RATIO + 1e-9,
        "{}",
        r.cost_ratio
    );
    assert_on_front(p, r);
    // Nothing within the cost cap waits more than 1 % less.
    let cap = Rule::DEFAULT_COST_RATIO * p.reference.paid_runner_s;
    for c in p
        .candidates
        .iter()
        .filter(|c| c.ran_clean() && c.paid_runner_s <= cap)
    {
        assert!(c.wait.mean_s >= r.wait.mean_s / 1.01, "{c:?} waits less");
    }
    // Warm capacity pays off here: the recommendation waits less than the reactive policy.
    assert!(r.wait.mean_s < p.reference.wait.mean_s);
    let names: Vec<&str> = p.baselines.iter().map(|b| b.policy.as_str()).collect();
    assert_eq!(names, ["vela", "clairvoyant"]);
    assert!(
        p.baselines
            .iter()
            .all(|b| b.setting.get("max") == r.setting.get("max"))
    );
}

#[test]
fn a_mean_wait_target_picks_the_cheapest_setting_that_meets_it() {
    let a = args(GeneratorKind::Workday, "runscale");
    let limit = Duration::from_secs(30);
    let pools = recommend(&a, Rule::MaxMeanWait(limit), RecommendArgs::DEFAULT_BUDGET);
    let p = &pools[0];
    let r = p.recommended.as_ref().expect("a recommendation");
    assert!(r.wait.mean_s <= 30.0);
    for c in p
        .candidates
        .iter()
        .filter(|c| c.ran_clean() && c.wait.mean_s <= 30.0)
    {
        assert!(
            c.paid_runner_s >= r.paid_runner_s / 1.01,
            "{c:?} is cheaper"
        );
    }
    assert_on_front(p, r);
    // An unreachable target recommends nothing rather than something that misses it.
    let none = recommend(
        &a,
        Rule::MaxMeanWait(Duration::ZERO),
        RecommendArgs::DEFAULT_BUDGET,
    );
    assert!(none[0].recommended.is_none());
}

#[test]
fn a_budget_smaller_than_the_grid_searches_one_dimension_at_a_time() {
    let pools = recommend(&args(GeneratorKind::Burst, "runscale"), Rule::default(), 20);
    let p = &pools[0];
    assert!(p.grid_size > 20);
    assert_eq!(p.search, SearchKind::Coordinate);
    assert!(p.simulations <= 20 && p.simulations == p.candidates.len());
    let r = p.recommended.as_ref().expect("a recommendation");
    assert!(r.cost_ratio <= Rule::DEFAULT_COST_RATIO + 1e-9);
    assert_on_front(p, r);
}

#[test]
fn each_pool_gets_its_own_recommendation() {
    let pool = |name: &str, labels: &[&str]| {
        let mut p = SimPool::default_pool();
        p.spec.name = runscale_core::PoolId::new(name);
        p.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        p
    };
    let a = SimulateArgs {
        pools: vec![pool("arm", &["linux", "arm64"]), pool("x64", &[])],
        ..args(GeneratorKind::Workday, "runscale")
    };
    let rec = recommend::run(&a, &RecommendArgs::default()).expect("recommends");
    let names: Vec<&str> = rec.pools.iter().map(|p| p.pool.as_str()).collect();
    assert_eq!(names, ["arm", "x64"]);
    assert_eq!(
        rec.pools.iter().map(|p| p.jobs).sum::<usize>(),
        rec.trace.jobs
    );
    assert!(
        rec.pools[0].jobs < rec.pools[1].jobs,
        "15 % of the jobs are arm64"
    );
    let yaml = rec.yaml();
    assert!(
        yaml.contains("- name: \"arm\"") && yaml.contains("- name: \"x64\""),
        "{yaml}"
    );
}

#[test]
fn bad_recommend_arguments_name_the_field() {
    let a = args(GeneratorKind::Burst, "runscale");
    let err = |rule, budget| {
        recommend::run(&a, &RecommendArgs { rule, budget })
            .expect_err("rejected")
            .to_string()
    };
    assert!(err(Rule::MaxCostRatio(0.9), 10).contains("max_cost_ratio"));
    assert!(err(Rule::MaxCostRatio(f64::NAN), 10).contains("max_cost_ratio"));
    assert!(err(Rule::MaxMeanWait(Duration::from_secs(7200)), 10).contains("max_mean_wait"));
    assert!(err(Rule::default(), 1).contains("recommend_budget"));
    assert!(err(Rule::default(), 100_000).contains("recommend_budget"));
}
