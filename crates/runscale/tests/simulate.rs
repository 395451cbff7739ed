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
