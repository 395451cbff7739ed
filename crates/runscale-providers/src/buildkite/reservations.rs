//! The jobs this process reserved through the Stacks API for the agents it registers: which
//! job went to which runner, so no job is handed to two agents while its reservation lasts,
//! and the jobs given back when a runner's instance died before its agent started. Pure
//! bookkeeping: the time is passed in.
//!
//! The Stacks API has no call to give a reservation up, and shortening one by reserving again
//! is not documented (`agent_api/stacks.md` documents only that reserving again extends it).
//! So a job given back stays reserved by the pool's stack until its reservation expires; it
//! is kept here as *returned*: the pool counts it as waiting, and its next agent gets it,
//! reserved again (extended) first. A restart forgets it; the job then waits for its
//! reservation to expire and is listed again.

use std::collections::HashMap;
use std::time::Instant;

/// A reservation made for one runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The stack that holds it.
    pub(crate) stack: String,
    /// The job.
    pub(crate) job: String,
    /// When the reservation expires.
    pub(crate) until: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// Jobs handed (or being handed) to an agent, until their reservation expires.
    handed: HashMap<String, Instant>,
    /// Runner name → the reservation made for it.
    by_runner: HashMap<String, Held>,
    /// By stack: reservations whose agent never started, oldest first.
    returned: HashMap<String, Vec<Held>>,
}

impl Reservations {
    /// Claims `job` for a new agent until `until`, before asking Buildkite for it, so a
    /// concurrent registration skips it; false if it is already handed.
    pub(crate) fn claim(&mut self, job: &str, until: Instant, now: Instant) -> bool {
        self.handed.retain(|_, u| *u > now);
        if self.handed.contains_key(job) {
            return false;
        }
        self.handed.insert(job.to_owned(), until);
        true
    }

    /// Gives up a claim (the reservation failed).
    pub(crate) fn unclaim(&mut self, job: &str) {
        self.handed.remove(job);
    }

    /// Records the reservation made for `runner` (a returned job taken again leaves the
    /// returned list).
    pub(crate) fn hold(&mut self, runner: &str, held: Held, now: Instant) {
        self.by_runner.retain(|_, h| h.until > now);
        if let Some(list) = self.returned.get_mut(&held.stack) {
            list.retain(|h| h.job != held.job);
        }
        self.by_runner.insert(runner.to_owned(), held);
    }

    /// `runner`'s instance is gone and its agent never started: its job, still reserved, is
    /// returned to its stack's pool. False if nothing was held (or it expired).
    pub(crate) fn release(&mut self, runner: &str, now: Instant) -> bool {
        let Some(held) = self.by_runner.remove(runner) else {
            return false;
        };
        self.handed.remove(&held.job);
        if held.until <= now {
            return false;
        }
        self.returned
            .entry(held.stack.clone())
            .or_default()
            .push(held);
        true
    }

    /// The returned jobs of `stack` whose reservation has not expired, oldest first.
    pub(crate) fn returned(&mut self, stack: &str, now: Instant) -> Vec<String> {
        let Some(list) = self.returned.get_mut(stack) else {
            return Vec::new();
        };
        list.retain(|h| h.until > now);
        list.iter().map(|h| h.job.clone()).collect()
    }

    /// Forgets a returned job (Buildkite would not reserve it again: taken, cancelled).
    pub(crate) fn forget_returned(&mut self, stack: &str, job: &str) {
        if let Some(list) = self.returned.get_mut(stack) {
            list.retain(|h| h.job != job);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_released_job_is_returned_to_its_stack_until_it_expires() {
        let mut r = Reservations::default();
        let t = Instant::now();
        let until = t + Duration::from_secs(10);
        assert!(r.claim("j1", until, t));
        assert!(!r.claim("j1", until, t), "already handed");
        let held = Held {
            stack: "s".into(),
            job: "j1".into(),
            until,
        };
        r.hold("rs-a", held.clone(), t);
        assert!(r.returned("s", t).is_empty());
        assert!(r.release("rs-a", t + Duration::from_secs(1)));
        assert!(!r.release("rs-a", t), "once");
        assert!(!r.release("rs-unknown", t));
        assert_eq!(r.returned("s", t), ["j1"]);
        assert!(r.claim("j1", until, t), "no longer handed");
        r.hold("rs-b", held, t);
        assert!(r.returned("s", t).is_empty(), "taken again");
        assert!(r.release("rs-b", t));
        assert!(
            r.returned("s", t + Duration::from_secs(10)).is_empty(),
            "expired"
        );
        r.forget_returned("s", "j1");
    }
}
