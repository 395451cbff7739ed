//! The recent job history of the instance's projects ([`Provider::job_history`]), read at
//! start-up to seed the forecast: `GET /projects/:id/jobs` (every status; GitLab lists them
//! newest first by id and has no date filter), page by page until a page ends before the time
//! asked for.
//!
//! A job is a past arrival when it was pending for a runner: it is pending now, or it started
//! (its arrival is its `created_at`, as the demand counts a pending job; its start is
//! `created_at` + `queued_duration`, the time it spent pending, so a later stage's wait for
//! earlier stages is not taken for a wait for a runner). Jobs that never started (`created`,
//! `manual`, `skipped`, cancelled or failed before a runner took them) are left out: whether
//! they were ever pending is not recorded.
//!
//! Bounded: at most [`MAX_REQUESTS`] requests per read, shared among the projects, and
//! [`PROJECT_PAGES`] pages (2,000 jobs) per project, or `max_pages` if lower. A project cut short is complete only
//! from its oldest job read ([`JobHistory::complete_from`]).
//!
//! [`Provider::job_history`]: runscale_core::Provider::job_history
//! [`JobHistory::complete_from`]: runscale_core::JobHistory::complete_from

use chrono::Utc;
use runscale_core::{PastJob, Result, Timestamp};

use super::client::{ApiJob, Client, segment};

/// Requests one history read sends at most.
pub(crate) const MAX_REQUESTS: usize = 400;
/// Pages (of 100 jobs) read per project at most.
const PROJECT_PAGES: u32 = 20;

/// The jobs read, and from when they are complete if a bound cut the read.
pub(super) struct Read {
    pub(super) jobs: Vec<ApiJob>,
    pub(super) complete_from: Option<Timestamp>,
}

/// Reads the jobs created since `since` in every project of `keys`.
pub(super) async fn read(
    client: &Client,
    op: &'static str,
    keys: &[String],
    since: Timestamp,
) -> Result<Read> {
    let share = MAX_REQUESTS / keys.len().max(1);
    if share == 0 {
        // Too many projects to read each even once: nothing is complete.
        return Ok(Read {
            jobs: Vec::new(),
            complete_from: Some(Utc::now()),
        });
    }
    let pages = u32::try_from(share)
        .unwrap_or(u32::MAX)
        .min(PROJECT_PAGES)
        .min(client.max_pages());
    let reads = keys
        .iter()
        .map(|k| read_project(client, op, k, since, pages));
    let mut out = Read {
        jobs: Vec::new(),
        complete_from: None,
    };
    for read in futures::future::join_all(reads).await {
        let read = read?;
        out.jobs.extend(read.jobs);
        out.complete_from = out.complete_from.max(read.complete_from);
    }
    // A project named twice (by path and by id, through a group) is read twice.
    out.jobs.sort_by_key(|j| j.id);
    out.jobs.dedup_by_key(|j| j.id);
    Ok(out)
}

/// One project's jobs since `since`, in at most `pages` pages.
async fn read_project(
    client: &Client,
    op: &'static str,
    key: &str,
    since: Timestamp,
    pages: u32,
) -> Result<Read> {
    let path = format!("/projects/{}/jobs?order_by=id&sort=desc", segment(key));
    let what = format!("job history of project {key}");
    let mut jobs: Vec<ApiJob> = Vec::new();
    let mut page = 1;
    loop {
        let (batch, next) = client.get_page::<ApiJob>(op, &path, page, &what).await?;
        let oldest = batch.last().and_then(|j| j.created_at);
        jobs.extend(batch);
        let done = next.is_none() || oldest.is_some_and(|t| t < since);
        match next {
            Some(n) if !done && page < pages => page = n,
            _ => {
                let cut = !done;
                jobs.retain(|j| j.created_at.is_some_and(|t| t >= since));
                return Ok(Read {
                    complete_from: cut.then(|| oldest.unwrap_or_else(Utc::now)),
                    jobs,
                });
            }
        }
    }
}

/// A job as a past arrival, if it was pending for a runner (see the module docs).
pub(crate) fn past_job(job: &ApiJob) -> Option<PastJob> {
    let queued_at = job.created_at?;
    if job.status == "pending" {
        return Some(PastJob {
            queued_at,
            started_at: None,
        });
    }
    job.started_at?;
    let pending = job
        .queued_duration
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(|s| chrono::Duration::milliseconds((s * 1000.0) as i64));
    let started_at = pending.map(|p| queued_at + p).or(job.started_at);
    Some(PastJob {
        queued_at,
        started_at: started_at.filter(|t| *t >= queued_at),
    })
}
