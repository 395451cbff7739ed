//! Many repositories under one rate budget: which repositories a pass polls for jobs, what
//! each one's last poll found, and (for repository-level runners in many repositories) whose
//! runners must be listed and what each listing last found.
//!
//! Pure bookkeeping: no I/O; every operation is given the time.
//!
//! **Polling.** A pass polls at most `cap` repositories, by priority: those a webhook named
//! since their last poll, then those whose last poll found queued or running jobs, then the
//! least recently polled (never polled first). The demand of the pass is every repository's
//! last poll, so a repository not polled this pass still counts what it had. A repository
//! with nothing going on and no webhook is thus re-polled every `ceil(N / cap)` passes.
//!
//! **Runner listings** (repository-level runners): every pass lists the repositories that held
//! runscale's runners at their last listing or got a registration since, plus up to `cap`
//! pool repositories never listed since start (so runners registered before a restart are
//! found). A pool whose repository was never listed, or whose listing failed this pass, keeps
//! the runners of its last listing and is marked stale: the policy then removes nothing.

use std::collections::HashMap;
use std::time::Instant;

use super::convert::{GhJob, GhRunner, JobPhase, job_phase};

/// What is known of one repository.
#[derive(Debug, Default)]
struct Entry {
    /// When its jobs were last polled successfully.
    polled: Option<Instant>,
    /// Queued and running jobs at that poll.
    jobs: Vec<GhJob>,
    /// When its runners were last listed successfully.
    listed: Option<Instant>,
    /// runscale's runners at that listing.
    runners: Vec<GhRunner>,
    /// When a runner was last registered there.
    registered: Option<Instant>,
}

/// Per-repository state, keyed by `owner/name` in lower case.
#[derive(Debug, Default)]
pub(crate) struct RepoBook {
    entries: HashMap<String, Entry>,
}

/// A repository key: `owner/name` in lower case.
pub(crate) fn key(repo: &str) -> String {
    repo.to_lowercase()
}

impl RepoBook {
    /// The repositories to poll this pass among `universe` (`owner/name` with when a webhook
    /// last named it): at most `cap`, by priority (see the module docs).
    pub(crate) fn select_polls(
        &self,
        universe: &[(String, Option<Instant>)],
        cap: usize,
    ) -> Vec<String> {
        let mut ranked: Vec<(u8, Option<Instant>, &String)> = universe
            .iter()
            .map(|(repo, hooked)| {
                let e = self.entries.get(&key(repo));
                let polled = e.and_then(|e| e.polled);
                let class = match (hooked, polled) {
                    (Some(h), Some(p)) if *h >= p => 0,
                    (Some(_), None) => 0,
                    _ if e.is_some_and(|e| !e.jobs.is_empty()) => 1,
                    _ => 2,
                };
                (class, polled, repo)
            })
            .collect();
        // `None` (never polled) sorts before any time: the oldest first.
        ranked.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        ranked
            .into_iter()
            .take(cap)
            .map(|(_, _, r)| r.clone())
            .collect()
    }

    /// Records a successful poll of `repo`: its queued and running jobs.
    pub(crate) fn record_poll(&mut self, repo: &str, jobs: Vec<GhJob>, now: Instant) {
        let e = self.entries.entry(key(repo)).or_default();
        e.polled = Some(now);
        e.jobs = jobs
            .into_iter()
            .filter(|j| job_phase(&j.status) != JobPhase::Other)
            .collect();
    }

    /// Every known job of the repositories in `universe`, with its repository.
    pub(crate) fn jobs<'a>(
        &'a self,
        universe: &'a [(String, Option<Instant>)],
    ) -> impl Iterator<Item = (&'a str, &'a GhJob)> + 'a {
        universe.iter().flat_map(move |(repo, _)| {
            self.entries
                .get(&key(repo))
                .into_iter()
                .flat_map(move |e| e.jobs.iter().map(move |j| (repo.as_str(), j)))
        })
    }

    /// Forgets repositories no longer in `universe` that hold no runners.
    pub(crate) fn retain(&mut self, universe: &[(String, Option<Instant>)]) {
        let keep: std::collections::HashSet<String> =
            universe.iter().map(|(r, _)| key(r)).collect();
        self.entries
            .retain(|k, e| keep.contains(k) || !e.runners.is_empty() || e.registered.is_some());
    }

    /// The pool repositories whose runners are listed this pass: those holding runscale's
    /// runners or registered at since their last listing, plus up to `cap` never listed.
    pub(crate) fn select_listings(&self, pool_repos: &[String], cap: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut unlisted = 0;
        for repo in pool_repos {
            let e = self.entries.get(&key(repo));
            let listed = e.and_then(|e| e.listed);
            let holds = e.is_some_and(|e| {
                !e.runners.is_empty() || e.registered.is_some_and(|r| listed.is_none_or(|l| r >= l))
            });
            if holds {
                out.push(repo.clone());
            } else if listed.is_none() && unlisted < cap {
                unlisted += 1;
                out.push(repo.clone());
            }
        }
        out
    }

    /// Records a successful listing of `repo`'s runscale runners, taken at `started`.
    pub(crate) fn record_listing(&mut self, repo: &str, runners: Vec<GhRunner>, started: Instant) {
        let e = self.entries.entry(key(repo)).or_default();
        e.listed = Some(started);
        e.runners = runners;
        if e.registered.is_some_and(|r| r < started) && e.runners.is_empty() {
            e.registered = None;
        }
    }

    /// Records a registration at `repo`.
    pub(crate) fn record_registration(&mut self, repo: &str, now: Instant) {
        self.entries.entry(key(repo)).or_default().registered = Some(now);
    }

    /// The runners of `repo`'s last listing, and whether it was ever listed.
    pub(crate) fn runners(&self, repo: &str) -> (&[GhRunner], bool) {
        match self.entries.get(&key(repo)) {
            Some(e) => (&e.runners, e.listed.is_some()),
            None => (&[], false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn job(id: u64, status: &str) -> GhJob {
        GhJob {
            started_at: None,
            id,
            status: status.into(),
            labels: vec!["linux".into()],
            created_at: None,
            run_attempt: 1,
            runner_name: None,
        }
    }

    fn runner(id: u64) -> GhRunner {
        GhRunner {
            id,
            name: format!("rs-p-{id:010}"),
            status: "online".into(),
            busy: false,
        }
    }

    fn universe(n: usize) -> Vec<(String, Option<Instant>)> {
        (0..n).map(|i| (format!("o/r{i:04}"), None)).collect()
    }

    #[test]
    fn polls_go_round_robin_within_the_cap() {
        let mut book = RepoBook::default();
        let u = universe(10);
        let t0 = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for pass in 0..4u64 {
            let picked = book.select_polls(&u, 3);
            assert_eq!(picked.len(), 3);
            for r in picked {
                book.record_poll(&r, Vec::new(), t0 + Duration::from_secs(pass));
                seen.insert(r);
            }
        }
        assert_eq!(
            seen.len(),
            10,
            "every repository polled within ceil(10/3) passes"
        );
    }

    #[test]
    fn webhooks_and_active_jobs_come_first() {
        let mut book = RepoBook::default();
        let t0 = Instant::now();
        let mut u = universe(5);
        for (r, _) in &u {
            book.record_poll(r, Vec::new(), t0);
        }
        book.record_poll("o/r0003", vec![job(1, "queued")], t0);
        u[4].1 = Some(t0 + Duration::from_secs(1));
        assert_eq!(book.select_polls(&u, 2), ["o/r0004", "o/r0003"]);
        // Completed jobs are not kept: the repository goes back to the round-robin.
        book.record_poll("o/r0003", vec![job(1, "completed")], t0);
        assert_eq!(book.jobs(&u).count(), 0);
    }

    #[test]
    fn a_pool_repository_is_listed_until_its_runners_are_gone() {
        let mut book = RepoBook::default();
        let repos: Vec<String> = (0..5).map(|i| format!("o/r{i}")).collect();
        let t0 = Instant::now();
        assert_eq!(
            book.select_listings(&repos, 2),
            ["o/r0", "o/r1"],
            "never listed first"
        );
        for r in &repos {
            book.record_listing(r, Vec::new(), t0);
        }
        assert!(
            book.select_listings(&repos, 2).is_empty(),
            "nothing held: no listing"
        );
        book.record_registration("o/r3", t0 + Duration::from_secs(1));
        assert_eq!(book.select_listings(&repos, 2), ["o/r3"]);
        book.record_listing("o/r3", vec![runner(7)], t0 + Duration::from_secs(2));
        assert_eq!(book.select_listings(&repos, 2), ["o/r3"]);
        assert_eq!(book.runners("o/r3").0.len(), 1);
        book.record_listing("o/r3", Vec::new(), t0 + Duration::from_secs(3));
        assert!(book.select_listings(&repos, 2).is_empty());
    }

    proptest! {
        /// However passes, webhooks and jobs interleave, a pass never polls more than the
        /// cap, and no repository waits longer than the round-robin allows while quiet.
        #[test]
        fn polls_are_bounded_and_fair(n in 1usize..60, cap in 1usize..10,
                                      hooks in proptest::collection::vec(0usize..60, 0..20)) {
            let mut book = RepoBook::default();
            let mut u = universe(n);
            let t0 = Instant::now();
            let mut last: HashMap<String, u64> = HashMap::new();
            let passes = (n.div_ceil(cap) as u64) * 3;
            for pass in 0..passes {
                let now = t0 + Duration::from_secs(pass * 10);
                if let Some(h) = hooks.get(pass as usize) && *h < n {
                    u[*h].1 = Some(now);
                }
                let picked = book.select_polls(&u, cap);
                prop_assert!(picked.len() <= cap);
                for r in picked {
                    book.record_poll(&r, Vec::new(), now + Duration::from_secs(1));
                    last.insert(r, pass);
                }
            }
            // Quiet repositories (no webhook) all got polled.
            let hooked = hooks.iter().filter(|h| **h < n).count();
            if hooked == 0 {
                prop_assert_eq!(last.len(), n);
            }
        }
    }
}
