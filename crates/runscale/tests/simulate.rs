//! `runscale simulate` through the real binary: the JSON report has one result per policy with
//! the fields, runscale's own policy has no invariant violation, and bad input exits 2.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runscale");

fn simulate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("simulate")
        .args(args)
        .output()
        .expect("run runscale simulate")
}

#[test]
fn json_report_has_one_result_per_policy_with_every_field() {
    let out = simulate(&[
        "--generate",
        "workday",
        "--seed",
        "1",
        "--policies",
        "all",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let results = report["results"].as_array().expect("results");
    let names: Vec<&str> = results
        .iter()
        .filter_map(|r| r["policy"].as_str())
        .collect();
    for expected in [
        "runscale",
        "arc",
        "terraform-aws",
        "taskscaler",
        "agent-scaler",
        "vela",
        "circleci-lambda",
        "gitlab-fleet",
        "github-action-autoscaler",
        "buildscaler",
        "clairvoyant",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for r in results {
        for field in ["p50_s", "p95_s", "p99_s", "max_s"] {
            assert!(r["wait"][field].is_number(), "{field} in {r}");
        }
        for field in [
            "paid_runner_s",
            "idle_runner_s",
            "overhead_ratio",
            "launches",
            "peak_fleet",
        ] {
            assert!(r[field].is_number(), "{field} in {}", r["policy"]);
        }
        assert!(r["pareto"].is_boolean());
        assert!(r["violations"]["over_max"].is_number());
    }
    let runscale = results
        .iter()
        .find(|r| r["policy"] == "runscale")
        .expect("runscale result");
    assert_eq!(runscale["violations"]["over_max"], 0);
    assert_eq!(runscale["violations"]["busy_killed"], 0);
    assert_eq!(runscale["violations"]["never_run"], 0);
    assert_eq!(runscale["jobs_run"], runscale["jobs"]);
}

#[test]
fn bad_generator_policy_or_trace_exits_2_naming_it() {
    for (args, needle) in [
        (vec!["--generate", "weekly"], "weekly"),
        (vec!["--policies", "runscale,magic"], "magic"),
        (vec!["--trace", "/nonexistent/trace.csv"], "trace.csv"),
        (vec!["--boot", "soon"], "soon"),
    ] {
        let out = simulate(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn world_and_generator_flags_are_checked_and_shown_in_the_header() {
    let out = simulate(&[
        "--generate",
        "burst",
        "--days",
        "2",
        "--intensity",
        "0.5",
        "--detection",
        "poll:1m",
        "--registration-delay",
        "20s",
        "--policies",
        "runscale",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("generate:burst seed=1 days=2 intensity=0.5"),
        "{table}"
    );
    assert!(
        table.contains(
            "world: detection poll, pass interval 1m, pass latency 500ms, registration 20s"
        ),
        "{table}"
    );
    for (args, needle) in [
        (vec!["--detection", "carrier:1s"], "invalid detection"),
        (
            vec!["--detection", "poll:20s", "--pass-interval", "10s"],
            "give it once",
        ),
        (vec!["--pass-interval", "0s"], "world.pass_interval"),
        (vec!["--registration-delay", "2h"], "registration_delay"),
        (vec!["--days", "0"], "invalid days"),
        (vec!["--intensity", "0"], "invalid intensity"),
        (vec!["--trace", "t.csv", "--days", "2"], "--days"),
        (vec!["--max-cost-ratio", "1.2"], "--recommend"),
        (
            vec!["--recommend", "--max-cost-ratio", "0.5"],
            "max_cost_ratio",
        ),
        (
            vec!["--recommend", "--recommend-budget", "1"],
            "recommend_budget",
        ),
        (
            vec!["--recommend", "--max-mean-wait", "soon"],
            "max_mean_wait",
        ),
        (vec!["--recommend", "--sweep", "coverage=0.9"], "--sweep"),
    ] {
        let out = simulate(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A configuration with one pool matching every generated job, `pool_extra` appended to it.
fn config_yaml(pool_extra: &str) -> String {
    format!(
        "{}{pool_extra}",
        include_str!("fixtures/simulate-pool.yaml")
    )
}

#[test]
fn recommend_prints_json_per_pool_and_a_yaml_snippet_the_configuration_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("runscale.yaml");
    std::fs::write(&path, config_yaml("    max: 20\n")).expect("write config");
    let config = path.to_str().expect("utf-8 path");
    let common = [
        "--generate",
        "burst",
        "--intensity",
        "0.5",
        "--recommend",
        "-c",
        config,
    ];
    let out = simulate(
        &[
            &common[..],
            &["--policies", "runscale,vela", "--format", "json"],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(rec["world"]["pass_interval"].is_number());
    let pool = &rec["pools"][0];
    assert_eq!(pool["pool"], "linux");
    let sims = pool["simulations"].as_u64().expect("simulations");
    assert!(sims >= 2 && sims <= pool["budget"].as_u64().expect("budget"));
    assert_eq!(
        pool["candidates"].as_array().map(Vec::len),
        Some(sims as usize)
    );
    assert_eq!(pool["grid"][0]["name"], "warm");
    assert_eq!(pool["grid"][1]["name"], "max");
    assert_eq!(pool["current"]["setting"]["max"], "20");
    assert_eq!(pool["baselines"][0]["policy"], "vela");
    let recommended = &pool["recommended"];
    for field in ["mean_s", "p50_s", "p95_s"] {
        assert!(recommended["wait"][field].is_number(), "{field}");
    }
    assert!(recommended["cost_ratio"].as_f64().expect("ratio") <= 1.10 + 1e-9);

    let out = simulate(&[&common[..], &["--policies", "runscale"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("rule: the shortest mean wait"), "{table}");
    let snippet = table
        .split("  - name: \"linux\"\n")
        .nth(1)
        .expect("snippet");
    let pool = runscale::config::load_str(
        &config_yaml(snippet),
        std::path::Path::new("snippet.yaml"),
        |_| None,
    )
    .expect("the snippet is a valid pool configuration");
    let spec = &pool.pools[0].spec;
    assert_eq!(
        spec.max.to_string(),
        recommended["setting"]["max"].as_str().expect("max")
    );
    let warm = runscale_sim::WarmArg(spec.warm).to_string();
    assert_eq!(warm, recommended["setting"]["warm"].as_str().expect("warm"));
}
