//! The organisation's recent build history ([`Provider::job_history`]), read at start-up to
//! seed the forecast: `GET /v2/organizations/{org}/builds?created_from=…&include_retried_jobs=true`
//! (newest first, every job execution, `Link` paging). A command job (`script`) is an arrival
//! at its `runnable_at` (when its dependencies were done and it waited for an agent), started
//! at its `started_at`; waiters, block and trigger steps run on no agent and are left out, as
//! are jobs that never became runnable.
//!
//! Bounded: at most [`MAX_PAGES`] pages (1,000 builds) per read, each within the REST budget
//! the passes share (Buildkite: 200 requests a minute per organisation, 50 per user). When a
//! bound (or that budget) stops the read, the history is complete only from the oldest build
//! read ([`JobHistory::complete_from`]).
//!
//! [`Provider::job_history`]: runscale_core::Provider::job_history
//! [`JobHistory::complete_from`]: runscale_core::JobHistory::complete_from

use runscale_core::{ErrorKind, PastJob, Result, Timestamp};

use super::client::{ApiBuild, ApiBuildJob, Client};

/// Pages of builds (100 each) one history read asks for at most.
pub(crate) const MAX_PAGES: usize = 10;

/// The builds read, and from when they are complete if the read was cut.
pub(super) struct Read {
    pub(super) builds: Vec<ApiBuild>,
    pub(super) complete_from: Option<Timestamp>,
}

/// Reads the builds created since `since`, newest first. A rate limit after the first page
/// ends the read early (the passes need the budget more); any other error fails it.
pub(super) async fn read(
    client: &Client,
    op: &'static str,
    org: &str,
    since: Timestamp,
) -> Result<Read> {
    let mut builds: Vec<ApiBuild> = Vec::new();
    let mut next = None;
    for page in 0..MAX_PAGES {
        match client.builds_page(op, org, since, next.take()).await {
            Ok((batch, link)) => {
                builds.extend(batch);
                match link {
                    Some(l) => next = Some(l),
                    None => {
                        return Ok(Read {
                            builds,
                            complete_from: None,
                        });
                    }
                }
            }
            Err(e) if page > 0 && matches!(e.kind(), ErrorKind::RateLimited { .. }) => {
                tracing::warn!(error = %e, "the build history read stopped at the REST budget");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let complete_from = builds
        .iter()
        .filter_map(|b| b.created_at)
        .min()
        .or(Some(since));
    Ok(Read {
        builds,
        complete_from,
    })
}

/// A build's job as a past arrival, if it waited for an agent (see the module docs).
pub(crate) fn past_job(job: &ApiBuildJob) -> Option<PastJob> {
    if job.kind != "script" {
        return None;
    }
    let queued_at = job.runnable_at?;
    Some(PastJob {
        queued_at,
        started_at: job.started_at.filter(|t| *t >= queued_at),
    })
}
