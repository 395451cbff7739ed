//! Trace files: formats chosen by extension, errors that name the line and column, and the
//! GitHub Actions jobs importer on a fixture shaped like the REST API's answer.

mod common;

use std::path::PathBuf;

use runscale_sim::trace::{self, TraceSource};
use runscale_sim::{PolicyName, PolicySelection, SimPool, SimulateArgs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn github_jobs_json_is_imported() {
    let t = trace::load(&TraceSource::File(fixture("github-jobs.json"))).expect("loads");
    // The skipped job, the one cancelled before it started and the one still running are
    // not jobs to replay.
    assert_eq!(t.jobs.len(), 2);
    assert_eq!(t.skipped, 3);
    let build = &t.jobs[0];
    assert_eq!(build.queued_at, common::t0());
    assert_eq!(build.duration.as_secs(), 300);
    assert_eq!(&*build.labels, &["self-hosted", "linux", "x64"]);
    assert_eq!(build.run.as_deref(), Some("29679449"));
    let gpu = &t.jobs[1];
    assert_eq!(gpu.duration.as_secs(), 150);
    assert_eq!((gpu.queued_at - common::t0()).num_seconds(), 600);

    // Replayed on two pools routed by labels.
    let mut linux = SimPool::default_pool();
    linux.spec.name = "linux".into();
    linux.labels = vec!["linux".into(), "x64".into()];
    let mut gpu_pool = SimPool::default_pool();
    gpu_pool.spec.name = "gpu".into();
    gpu_pool.labels = vec!["linux".into(), "gpu".into()];
    let args = SimulateArgs {
        trace: TraceSource::File(fixture("github-jobs.json")),
        pools: vec![linux, gpu_pool],
        policies: PolicySelection(vec![PolicyName::Runscale]),
        ..SimulateArgs::default()
    };
    let report = runscale_sim::run(&args).expect("simulates");
    assert_eq!(report.trace.jobs, 2);
    assert_eq!(report.trace.pools[0].jobs, 1);
    assert_eq!(report.trace.pools[1].jobs, 1);
    assert_eq!(report.results[0].jobs_run, 2);
}

#[test]
fn github_json_syntax_errors_name_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("jobs.json");
    std::fs::write(
        &p,
        "{\n  \"total_count\": 1,\n  \"jobs\": [ {\"created_at\": \"yesterday\"} ]\n}\n",
    )
    .expect("write");
    let e = trace::load(&TraceSource::File(p)).expect_err("bad time");
    let msg = e.to_string();
    assert!(msg.contains("jobs.json: line 3, column "), "{msg}");
}

#[test]
fn csv_and_jsonl_errors_name_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "queued_at,duration_s,labels\n2025-03-03T09:00:00Z,60,linux\n2025-03-03T09:00:05Z,-3,linux\n")
        .expect("write");
    let e = trace::load(&TraceSource::File(csv)).expect_err("negative duration");
    assert!(
        e.to_string()
            .ends_with("t.csv: line 3, column 2: duration_s: `-3` is not a duration in seconds"),
        "{e}"
    );

    let jsonl = dir.path().join("t.jsonl");
    std::fs::write(&jsonl, "{\"queued_at\": \"2025-03-03T09:00:00Z\", \"duration_s\": 60}\n{\"queued_at\": \"noon\", \"duration_s\": 60}\n")
        .expect("write");
    let e = trace::load(&TraceSource::File(jsonl)).expect_err("bad time");
    assert!(
        e.to_string()
            .contains("t.jsonl: line 2, column 2: queued_at"),
        "{e}"
    );

    let other = dir.path().join("t.txt");
    std::fs::write(&other, "x").expect("write");
    assert!(trace::load(&TraceSource::File(other)).is_err());
}

#[test]
fn csv_trace_round_trip_through_a_simulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("t.csv");
    std::fs::write(
        &csv,
        "queued_at,duration_s,labels,pool,run\n2025-03-03T09:00:00Z,120,linux,,r1\n2025-03-03T09:00:00Z,60,\"linux,x64\",,r1\n",
    )
    .expect("write");
    let args = SimulateArgs {
        trace: TraceSource::File(csv),
        policies: "runscale,arc".parse().expect("policies"),
        ..SimulateArgs::default()
    };
    let r = runscale_sim::run(&args).expect("simulates");
    assert_eq!(r.results.len(), 2);
    assert!(
        r.results
            .iter()
            .all(|p| p.jobs_run == 2 && p.violations.total() == 0)
    );
}
