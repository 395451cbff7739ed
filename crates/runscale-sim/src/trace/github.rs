//! GitHub Actions job history, as returned by the REST API
//! (`GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs`, or `.../actions/jobs/{job_id}`).
//!
//! Accepted shapes: one page `{"total_count": N, "jobs": [job, ...]}`, an array of such pages
//! (what paging through the endpoint yields), or an array of job objects.
//!
//! Fields read from each job: `created_at` (queued time; `started_at` when absent, as in old
//! responses), `started_at`, `completed_at` (duration = completed − started), `labels`
//! (`runs-on`), `run_id`, `status`, `conclusion`. Jobs that never ran are skipped and
//! counted: `status` other than `completed`, no `started_at`/`completed_at`, or `conclusion`
//! `skipped`. Other fields are ignored. Syntax and type errors name the line and column.

use std::sync::Arc;
use std::time::Duration;

use runscale_core::Timestamp;
use serde::Deserialize;

use super::{TraceError, TraceJob};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    #[allow(dead_code)]
    total_count: Option<u64>,
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    run_id: Option<u64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    started_at: Option<Timestamp>,
    #[serde(default)]
    completed_at: Option<Timestamp>,
    #[serde(default)]
    labels: Vec<String>,
}

/// Parses GitHub jobs JSON; returns the jobs and how many records were skipped.
pub fn parse(text: &str, name: &str) -> Result<(Vec<TraceJob>, usize), TraceError> {
    let err = |e: serde_json::Error| TraceError::Parse {
        path: name.to_owned(),
        line: e.line().max(1),
        column: e.column().max(1),
        message: e.to_string(),
    };
    let trimmed = text.trim_start();
    let raw: Vec<Job> = if trimmed.starts_with('{') {
        serde_json::from_str::<Page>(text).map_err(err)?.jobs
    } else {
        match serde_json::from_str::<Vec<Page>>(text) {
            Ok(pages) => pages.into_iter().flat_map(|p| p.jobs).collect(),
            Err(_) => serde_json::from_str::<Vec<Job>>(text).map_err(err)?,
        }
    };
    let mut skipped = 0;
    let mut jobs = Vec::with_capacity(raw.len());
    for j in raw {
        let ran = j.status.as_deref().is_none_or(|s| s == "completed")
            && j.conclusion.as_deref() != Some("skipped");
        let (Some(started), Some(completed), true) = (j.started_at, j.completed_at, ran) else {
            skipped += 1;
            continue;
        };
        let queued_at = j.created_at.unwrap_or(started).min(started);
        let duration = (completed - started).to_std().unwrap_or(Duration::ZERO);
        jobs.push(TraceJob {
            queued_at,
            duration,
            labels: Arc::from(j.labels),
            pool: None,
            run: j.run_id.map(|r| r.to_string()),
        });
    }
    Ok((jobs, skipped))
}
