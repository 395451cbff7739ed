//! GitHub's JSON shapes (only the fields runscale reads) and their conversion to core types:
//! runner state, label matching, and which pool a job counts for.
//!
//! Pure: no I/O, no clock.

use chrono::{DateTime, Utc};
use runscale_core::{PoolId, Runner, RunnerId, RunnerState, naming};
use serde::Deserialize;

/// A page of `GET .../actions/runners`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunnerList {
    /// All runners of the scope (across pages).
    pub total_count: u64,
    /// This page.
    pub runners: Vec<GhRunner>,
}

/// A self-hosted runner.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GhRunner {
    /// GitHub's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// Running a job.
    pub busy: bool,
}

/// A page of `GET /repos/{o}/{r}/actions/runs`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunList {
    /// Matching runs (across pages).
    pub total_count: u64,
    /// This page.
    pub workflow_runs: Vec<GhRun>,
}

/// A workflow run.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GhRun {
    /// GitHub's id.
    pub id: u64,
    /// When the run was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// A page of `GET /repos/{o}/{r}/actions/runs/{id}/jobs`.
#[derive(Debug, Deserialize)]
pub(crate) struct JobList {
    /// The run's jobs (across pages).
    pub total_count: u64,
    /// This page.
    pub jobs: Vec<GhJob>,
}

/// A workflow job (REST and the `workflow_job` webhook share this shape).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GhJob {
    /// GitHub's id.
    pub id: u64,
    /// `queued`, `waiting`, `in_progress`, `completed`, `requested`, `pending`.
    pub status: String,
    /// The `runs-on` labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// When the job was created (queued).
    pub created_at: Option<DateTime<Utc>>,
    /// When a runner started it (GitHub gives the creation time until then).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// The run attempt the job belongs to (absent in some old payloads: 1).
    #[serde(default = "first_attempt")]
    pub run_attempt: u64,
    /// The runner running it, once assigned.
    #[serde(default)]
    pub runner_name: Option<String>,
}

/// The attempt of payloads that do not say.
fn first_attempt() -> u64 {
    1
}

/// A page of `GET /installation/repositories`.
#[derive(Debug, Deserialize)]
pub(crate) struct InstallationRepos {
    /// Repositories the installation can access (across pages).
    pub total_count: u64,
    /// This page.
    pub repositories: Vec<GhRepo>,
}

/// A repository (only its full name).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GhRepo {
    /// `owner/name`.
    pub full_name: String,
}

/// `POST .../actions/runners/generate-jitconfig` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct JitConfig {
    /// The runner created.
    pub runner: JitRunner,
    /// The configuration `run.sh --jitconfig` takes.
    pub encoded_jit_config: String,
}

/// The runner record of a JIT configuration.
#[derive(Debug, Deserialize)]
pub(crate) struct JitRunner {
    /// GitHub's id.
    pub id: u64,
}

/// A registration token or installation access token answer.
#[derive(Debug, Deserialize)]
pub(crate) struct ExpiringToken {
    /// The token.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// `GET /orgs/{org}/installation` (and the repository variant).
#[derive(Debug, Deserialize)]
pub(crate) struct Installation {
    /// The installation id.
    pub id: u64,
}

/// What a job is doing, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobPhase {
    /// Waiting for a runner.
    Waiting,
    /// On a runner.
    Running,
    /// Finished, or in a state that wants no runner.
    Other,
}

/// The phase of a job status. `queued` waits for a runner; `in_progress` runs. `waiting` (an
/// environment's protection rules) and `pending`/`requested` (a concurrency group) want no
/// runner until GitHub releases them as `queued`: counting them would keep runners idle for as
/// long as an approval takes.
pub(crate) fn job_phase(status: &str) -> JobPhase {
    match status {
        "queued" => JobPhase::Waiting,
        "in_progress" => JobPhase::Running,
        _ => JobPhase::Other,
    }
}

/// The runner state GitHub's `status` and `busy` mean: busy is busy even when offline.
pub(crate) fn runner_state(r: &GhRunner) -> RunnerState {
    if r.busy {
        RunnerState::Busy
    } else if r.status.eq_ignore_ascii_case("online") {
        RunnerState::Idle
    } else {
        RunnerState::Offline
    }
}

/// The core view of a GitHub runner.
pub(crate) fn to_runner(r: &GhRunner) -> Runner {
    Runner {
        id: RunnerId::new(r.id.to_string()),
        name: r.name.clone(),
        state: runner_state(r),
        draining: false,
        last_busy: None,
    }
}

/// A pool's labels, lower-cased, with `self-hosted` implied.
#[derive(Clone, Debug)]
pub(crate) struct LabelSet(Vec<String>);

impl LabelSet {
    /// The runner label set of a pool configured with `labels`.
    pub(crate) fn new(labels: &[String]) -> Self {
        let mut v: Vec<String> = labels.iter().map(|l| l.to_lowercase()).collect();
        v.push("self-hosted".to_owned());
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Whether a job with these `runs-on` labels can run here, as GitHub decides: every job
    /// label is a runner label, compared case-insensitively. A job without labels matches
    /// nothing.
    pub(crate) fn matches(&self, job_labels: &[String]) -> bool {
        !job_labels.is_empty()
            && job_labels
                .iter()
                .all(|l| self.0.binary_search(&l.to_lowercase()).is_ok())
    }
}

/// One pool as the matcher sees it: its labels and, optionally, its one repository.
#[derive(Clone, Debug)]
struct MatchedPool {
    id: PoolId,
    labels: LabelSet,
    /// `owner/name`, lower case.
    repository: Option<String>,
}

impl MatchedPool {
    /// Whether a job of `repo` (`owner/name`; unknown: `None`) with these labels is for the
    /// pool. A pool bound to a repository takes only that repository's jobs.
    fn takes(&self, repo: Option<&str>, job_labels: &[String]) -> bool {
        let repo_ok = match (&self.repository, repo) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine.eq_ignore_ascii_case(theirs),
            (Some(_), None) => false,
        };
        repo_ok && self.labels.matches(job_labels)
    }
}

/// The pools of an account, in configuration order, with their label sets and repositories.
#[derive(Clone, Debug)]
pub(crate) struct PoolMatcher {
    pools: Vec<MatchedPool>,
}

impl PoolMatcher {
    /// From the pools' labels, in configuration order; no pool is bound to a repository.
    #[cfg(test)]
    pub(crate) fn new(pools: impl IntoIterator<Item = (PoolId, LabelSet)>) -> Self {
        Self::with_repositories(pools.into_iter().map(|(p, l)| (p, l, None)))
    }

    /// From the pools' labels and repositories (`owner/name`), in configuration order.
    pub(crate) fn with_repositories(
        pools: impl IntoIterator<Item = (PoolId, LabelSet, Option<String>)>,
    ) -> Self {
        Self {
            pools: pools
                .into_iter()
                .map(|(id, labels, repository)| MatchedPool {
                    id,
                    labels,
                    repository: repository.map(|r| r.to_lowercase()),
                })
                .collect(),
        }
    }

    /// The pool a job of `repo` counts for: the first pool, in configuration order, that
    /// can run it.
    pub(crate) fn first(&self, repo: Option<&str>, job_labels: &[String]) -> Option<&PoolId> {
        self.pools
            .iter()
            .find(|p| p.takes(repo, job_labels))
            .map(|p| &p.id)
    }

    /// Every pool that can run a job of `repo`, in configuration order.
    pub(crate) fn all(&self, repo: Option<&str>, job_labels: &[String]) -> Vec<PoolId> {
        self.pools
            .iter()
            .filter(|p| p.takes(repo, job_labels))
            .map(|p| p.id.clone())
            .collect()
    }

    /// The pool that owns a runner name, if runscale named it for one of these pools.
    pub(crate) fn owner_of(&self, runner_name: &str) -> Option<&PoolId> {
        self.pools
            .iter()
            .map(|p| &p.id)
            .find(|p| naming::owned_by(p.as_str(), runner_name))
    }

    /// The pool a job of `repo` counts for: the pool owning the runner it runs on, else the
    /// first pool that can run it.
    pub(crate) fn pool_of(&self, repo: Option<&str>, job: &GhJob) -> Option<&PoolId> {
        job.runner_name
            .as_deref()
            .and_then(|n| self.owner_of(n))
            .or_else(|| self.first(repo, &job.labels))
    }

    /// The repository (`owner/name`, lower case) a pool is bound to.
    pub(crate) fn repository_of(&self, pool: &PoolId) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| &p.id == pool)
            .and_then(|p| p.repository.as_deref())
    }

    /// The pools, in configuration order.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &PoolId> {
        self.pools.iter().map(|p| &p.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn matching_is_case_insensitive_subset_with_self_hosted_implied() {
        let pool = LabelSet::new(&labels(&["Linux", "x64", "gpu"]));
        assert!(pool.matches(&labels(&["self-hosted", "linux"])));
        assert!(pool.matches(&labels(&["SELF-HOSTED", "LINUX", "X64", "GPU"])));
        assert!(pool.matches(&labels(&["linux"])));
        assert!(pool.matches(&labels(&["self-hosted"])));
        assert!(!pool.matches(&labels(&["self-hosted", "linux", "arm64"])));
        assert!(!pool.matches(&labels(&["ubuntu-latest"])));
        assert!(!pool.matches(&[]), "a job without labels matches nothing");
    }

    #[test]
    fn a_job_counts_for_the_first_matching_pool_only() {
        let m = PoolMatcher::new([
            (PoolId::new("small"), LabelSet::new(&labels(&["linux"]))),
            (
                PoolId::new("big"),
                LabelSet::new(&labels(&["linux", "large"])),
            ),
        ]);
        let job = labels(&["self-hosted", "linux"]);
        assert_eq!(m.first(None, &job), Some(&PoolId::new("small")));
        assert_eq!(
            m.all(None, &job),
            [PoolId::new("small"), PoolId::new("big")]
        );
        assert_eq!(
            m.first(None, &labels(&["linux", "large"])),
            Some(&PoolId::new("big"))
        );
        assert_eq!(m.first(None, &labels(&["windows"])), None);
    }

    #[test]
    fn a_pool_bound_to_a_repository_takes_only_its_jobs() {
        let m = PoolMatcher::with_repositories([
            (
                PoolId::new("a"),
                LabelSet::new(&labels(&["linux"])),
                Some("Acme/A".to_owned()),
            ),
            (PoolId::new("any"), LabelSet::new(&labels(&["linux"])), None),
        ]);
        let job = labels(&["linux"]);
        assert_eq!(m.first(Some("acme/a"), &job), Some(&PoolId::new("a")));
        assert_eq!(m.first(Some("acme/b"), &job), Some(&PoolId::new("any")));
        assert_eq!(m.first(None, &job), Some(&PoolId::new("any")));
        assert_eq!(m.all(Some("ACME/A"), &job).len(), 2);
        assert_eq!(m.repository_of(&PoolId::new("a")), Some("acme/a"));
        assert_eq!(m.repository_of(&PoolId::new("any")), None);
    }

    #[test]
    fn a_running_job_counts_for_the_pool_of_its_runner() {
        let m = PoolMatcher::new([
            (PoolId::new("small"), LabelSet::new(&labels(&["linux"]))),
            (
                PoolId::new("big"),
                LabelSet::new(&labels(&["linux", "large"])),
            ),
        ]);
        let mut job = GhJob {
            started_at: None,
            id: 1,
            status: "in_progress".into(),
            labels: labels(&["linux"]),
            created_at: None,
            run_attempt: 1,
            runner_name: Some("rs-big-abcdefghij".into()),
        };
        assert_eq!(m.pool_of(None, &job), Some(&PoolId::new("big")));
        job.runner_name = Some("someone-elses".into());
        assert_eq!(m.pool_of(None, &job), Some(&PoolId::new("small")));
    }

    #[test]
    fn runner_states() {
        let r = |status: &str, busy| GhRunner {
            id: 1,
            name: "n".into(),
            status: status.into(),
            busy,
        };
        assert_eq!(runner_state(&r("online", true)), RunnerState::Busy);
        assert_eq!(runner_state(&r("offline", true)), RunnerState::Busy);
        assert_eq!(runner_state(&r("online", false)), RunnerState::Idle);
        assert_eq!(runner_state(&r("offline", false)), RunnerState::Offline);
        let core = to_runner(&r("online", false));
        assert_eq!(core.id.as_str(), "1");
    }

    #[test]
    fn job_phases() {
        assert_eq!(job_phase("queued"), JobPhase::Waiting);
        assert_eq!(job_phase("waiting"), JobPhase::Other);
        assert_eq!(job_phase("pending"), JobPhase::Other);
        assert_eq!(job_phase("in_progress"), JobPhase::Running);
        assert_eq!(job_phase("completed"), JobPhase::Other);
        assert_eq!(job_phase("pending"), JobPhase::Other);
    }

    #[test]
    fn documented_runner_list_parses() {
        let list: RunnerList = serde_json::from_value(serde_json::json!({
            "total_count": 2,
            "runners": [{ "id": 23, "name": "MBP", "os": "macos", "status": "online", "busy": true,
                "labels": [{"id": 5, "name": "self-hosted", "type": "read-only"}] }]
        }))
        .expect("parses");
        assert_eq!(list.total_count, 2);
        assert_eq!(runner_state(&list.runners[0]), RunnerState::Busy);
    }
}
