//! The recent job history of an account's pools ([`Provider::job_history`]), read at start-up
//! to seed the forecast: per repository, the workflow runs created since a time
//! (`GET /repos/{o}/{r}/actions/runs?created=>=…`, newest first) and every attempt's jobs
//! (`GET …/runs/{id}/jobs?filter=all`), each job counted for the pool its demand would count
//! for ([`PoolMatcher::first`]).
//!
//! Bounded: at most [`MAX_REQUESTS`] requests per read, shared fairly among the repositories,
//! and at most 1,000 runs per repository (GitHub answers no more for a filtered listing).
//! When a bound cuts a repository's read, its runs are complete only from the oldest one whose
//! jobs were read, and the history says so ([`JobHistory::complete_from`]).
//!
//! [`Provider::job_history`]: runscale_core::Provider::job_history

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use runscale_core::{ErrorKind, JobHistory, PastJob, PoolId, Result, Timestamp};

use super::client::{Client, Listing};
use super::convert::{GhJob, GhRun, JobList, PoolMatcher, RunList};

/// Requests one history read sends at most (of a primary budget of 5,000 an hour or more).
pub(crate) const MAX_REQUESTS: usize = 400;
/// Pages of runs read per repository (100 each: GitHub answers at most 1,000 runs to a
/// listing filtered by `created`).
const RUN_PAGES: usize = 10;
/// Pages of jobs read per run (a matrix has at most 256 jobs per attempt).
const JOB_PAGES: usize = 3;
/// Repositories read at once.
const CONCURRENCY: usize = 4;

/// What one repository's read found: jobs by pool, and from when they are complete.
struct RepoHistory {
    jobs: Vec<(PoolId, PastJob)>,
    complete_from: Option<Timestamp>,
}

/// Reads the history of `pools` from `repos` since `since`.
pub(super) async fn read(
    client: &Client,
    matcher: &PoolMatcher,
    repos: &[String],
    pools: &[PoolId],
    since: Timestamp,
) -> Result<HashMap<PoolId, JobHistory>> {
    let share = MAX_REQUESTS / repos.len().max(1);
    if share < 2 {
        // Too many repositories to read any of them usefully: nothing is complete.
        return Ok(JobHistory::for_pools(pools, Some(Utc::now())));
    }
    let read: Vec<RepoHistory> = stream::iter(repos.iter().cloned())
        .map(|repo| async move { read_repo(client, matcher, &repo, since, share).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let complete_from = read.iter().filter_map(|r| r.complete_from).max();
    let mut out = JobHistory::for_pools(pools, complete_from);
    for (pool, job) in read.into_iter().flat_map(|r| r.jobs) {
        if let Some(h) = out.get_mut(&pool) {
            h.jobs.push(job);
        }
    }
    Ok(out)
}

/// One repository's runs since `since` (newest first) and their jobs, in `budget` requests.
async fn read_repo(
    client: &Client,
    matcher: &PoolMatcher,
    repo: &str,
    since: Timestamp,
    budget: usize,
) -> Result<RepoHistory> {
    let created = since.to_rfc3339_opts(SecondsFormat::Secs, true);
    let path = format!("repos/{repo}/actions/runs?created=%3E%3D{created}");
    let listing = Listing {
        op: "github.job_history",
        path: &path,
        what: "workflow run list",
        max_pages: RUN_PAGES.min(budget - 1),
        cached: false,
    };
    let (mut runs, paged) = match client
        .get_pages(&listing, |p: RunList| (p.total_count, p.workflow_runs))
        .await
    {
        Ok(read) => read,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::warn!(repo, error = %e, "no job history for a repository that is gone");
            return Ok(RepoHistory {
                jobs: Vec::new(),
                complete_from: None,
            });
        }
        Err(e) => return Err(e),
    };
    runs.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    let mut left = budget - paged.requests;
    let mut cut = paged.more;
    let mut jobs = Vec::new();
    let mut oldest_read: Option<DateTime<Utc>> = None;
    for run in &runs {
        if left == 0 {
            cut = true;
            break;
        }
        let (run_jobs, requests) = read_run(client, repo, run, left).await?;
        left -= requests;
        oldest_read = run.created_at.or(oldest_read);
        jobs.extend(
            run_jobs
                .iter()
                .filter_map(|j| past_job(matcher, repo, j, since)),
        );
    }
    Ok(RepoHistory {
        jobs,
        complete_from: cut.then(|| oldest_read.unwrap_or_else(Utc::now)),
    })
}

/// Every attempt's jobs of one run, in at most `budget` requests; a run that vanished has
/// none.
async fn read_run(
    client: &Client,
    repo: &str,
    run: &GhRun,
    budget: usize,
) -> Result<(Vec<GhJob>, usize)> {
    let path = format!("repos/{repo}/actions/runs/{}/jobs?filter=all", run.id);
    let listing = Listing {
        op: "github.job_history",
        path: &path,
        what: "job list",
        max_pages: JOB_PAGES.min(budget),
        cached: false,
    };
    match client
        .get_pages(&listing, |p: JobList| (p.total_count, p.jobs))
        .await
    {
        Ok((jobs, paged)) => Ok((jobs, paged.requests)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok((Vec::new(), 1)),
        Err(e) => Err(e),
    }
}

/// A job of `repo` as a past arrival of the pool its demand would count for, if any. Its start
/// is known once a runner took it (GitHub reports the creation time as `started_at` before).
fn past_job(
    matcher: &PoolMatcher,
    repo: &str,
    job: &GhJob,
    since: Timestamp,
) -> Option<(PoolId, PastJob)> {
    let queued_at = job.created_at.filter(|t| *t >= since)?;
    let pool = matcher.first(Some(repo), &job.labels)?;
    let taken = job.runner_name.as_deref().is_some_and(|n| !n.is_empty());
    let started_at = job.started_at.filter(|t| taken && *t >= queued_at);
    Some((
        pool.clone(),
        PastJob {
            queued_at,
            started_at,
        },
    ))
}
