//! The report: JSON with one result per policy and the documented fields, the text table, and
//! charts written as SVG and PNG.

use runscale_sim::{GeneratorKind, OutputFormat, PolicyName, SimulateArgs, TraceSource};

#[test]
fn json_has_one_result_per_policy_with_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = SimulateArgs {
        trace: TraceSource::Generate {
            kind: GeneratorKind::Workday,
            seed: 1,
        },
        format: OutputFormat::Json,
        charts_dir: Some(dir.path().join("charts")),
        ..SimulateArgs::default()
    };
    let out = runscale_sim::execute(&args).expect("runs");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), PolicyName::ALL.len());
    for r in results {
        for k in ["p50_s", "p95_s", "p99_s", "max_s"] {
            assert!(r["wait"][k].is_number(), "{k} in {r}");
        }
        for k in [
            "paid_runner_s",
            "idle_runner_s",
            "overhead_ratio",
            "launches",
            "peak_fleet",
        ] {
            assert!(r[k].is_number(), "{k} in {r}");
        }
        for k in ["over_max", "busy_killed", "never_run"] {
            assert!(r["violations"][k].is_number(), "{k} in {r}");
        }
        assert!(r["pareto"].is_boolean());
    }
    for f in [
        "fleet.svg",
        "fleet.png",
        "queue.svg",
        "queue.png",
        "wait-vs-cost.svg",
        "wait-vs-cost.png",
    ] {
        let p = dir.path().join("charts").join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{f} written ({len} bytes)");
    }
    let svg = std::fs::read_to_string(dir.path().join("charts/wait-vs-cost.svg")).expect("svg");
    assert!(svg.contains("runscale"), "policy names are labelled");
}

#[test]
fn table_lists_every_policy_and_marks_the_bound() {
    let args = SimulateArgs {
        trace: TraceSource::Generate {
            kind: GeneratorKind::Burst,
            seed: 2,
        },
        ..SimulateArgs::default()
    };
    let table = runscale_sim::execute(&args).expect("runs");
    for p in PolicyName::ALL {
        assert!(table.contains(p.as_str()), "{p} in\n{table}");
    }
    assert!(table.contains("bound"));
    assert!(table.contains("wait p50"));
}

#[test]
fn the_sweep_is_drawn_as_a_frontier_line_on_the_cost_chart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = SimulateArgs {
        trace: TraceSource::Generate {
            kind: GeneratorKind::Burst,
            seed: 2,
        },
        policies: "runscale,arc".parse().expect("policies"),
        sweep: Some(
            runscale_sim::SweepArg::parse("warm=off,0s@0.95,10s@0.6", None).expect("sweep"),
        ),
        charts_dir: Some(dir.path().to_path_buf()),
        ..SimulateArgs::default()
    };
    let report = runscale_sim::run(&args).expect("runs");
    assert_eq!(report.sweep_rows, [2, 3, 4]);
    runscale_sim::charts::write(&report, dir.path()).expect("charts");
    let svg = std::fs::read_to_string(dir.path().join("wait-vs-cost.svg")).expect("svg");
    assert!(
        svg.contains("runscale --sweep frontier"),
        "the line is in the legend"
    );
    assert!(svg.contains("<polyline"), "and drawn");
    for r in &report.results {
        assert!(svg.contains(&r.policy), "{} labelled", r.policy);
    }
}
