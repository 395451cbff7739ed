//! The Stacks API's bookkeeping (`agent_api/stacks.md`): registered stacks, the scheduled
//! jobs a stack lists (with its queue's `dispatch_paused`), and reservations. Pure
//! bookkeeping: no I/O, the time is passed in.
//!
//! Reservations follow only what the page documents: a reserved job leaves the listing until
//! its reservation expires, then is scheduled again; reserving it again (by the stack that
//! holds it) extends the reservation. Shortening is not documented, so a re-reservation never
//! brings the expiry closer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::model::{JobSnapshot, JobStatus};
use super::state::{Refusal, State};

/// Longest stack key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 80;
/// Most metadata keys, and the longest key and value, in characters.
const MAX_METADATA_KEYS: usize = 100;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 256;
/// The queue key of a cluster's default queue.
pub(crate) const DEFAULT_QUEUE_KEY: &str = "__default__";

/// A stack registered through the Stacks API.
#[derive(Clone, Debug)]
pub(crate) struct Stack {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) kind: String,
    pub(crate) queue_key: String,
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
    pub(crate) registered_at: DateTime<Utc>,
}

/// One page of a stack's scheduled jobs.
pub(crate) struct ScheduledPage {
    pub(crate) jobs: Vec<JobSnapshot>,
    pub(crate) has_next_page: bool,
    pub(crate) end_cursor: Option<String>,
    /// The queue's dispatch is paused.
    pub(crate) dispatch_paused: bool,
    /// The queue's cluster queue id.
    pub(crate) queue_id: String,
}

/// The queue a Stacks API queue key names (`__default__` is the default queue).
pub(crate) fn queue_of_key(key: &str) -> &str {
    if key == DEFAULT_QUEUE_KEY {
        "default"
    } else {
        key
    }
}

/// A usable stack key: alphanumerics, `_` and `-`, 1 to 80 bytes.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks the register payload's metadata: a flat object of strings, at most 100 keys of 64
/// characters, values of 256.
fn metadata_ok(m: &serde_json::Map<String, serde_json::Value>) -> bool {
    m.len() <= MAX_METADATA_KEYS
        && m.iter().all(|(k, v)| {
            k.chars().count() <= MAX_METADATA_KEY_CHARS
                && v.as_str()
                    .is_some_and(|s| s.chars().count() <= MAX_METADATA_VALUE_CHARS)
        })
}

impl State {
    /// `POST /stacks/register`: registers (true) or updates (false) a stack.
    pub(crate) fn register_stack(
        &mut self,
        key: &str,
        kind: &str,
        queue_key: &str,
        metadata: serde_json::Map<String, serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<(Stack, bool), Refusal> {
        if !valid_key(key) {
            return Err(Refusal::Conflict(
                "key must be 1 to 80 bytes of alphanumerics, underscores and dashes",
            ));
        }
        if !matches!(kind, "kubernetes" | "elastic" | "custom") {
            return Err(Refusal::Conflict(
                "type must be kubernetes, elastic or custom",
            ));
        }
        if queue_key.is_empty() {
            return Err(Refusal::Conflict("queue_key is required"));
        }
        if !metadata_ok(&metadata) {
            return Err(Refusal::Conflict(
                "metadata must be a flat object of strings (100 keys of 64 characters, values of 256)",
            ));
        }
        let (id, created) = match self.stacks.get(key) {
            Some(s) => (s.id.clone(), false),
            None => (self.uuid(), true),
        };
        let stack = Stack {
            id,
            key: key.to_owned(),
            kind: kind.to_owned(),
            queue_key: queue_key.to_owned(),
            metadata,
            registered_at: now,
        };
        self.stacks.insert(key.to_owned(), stack.clone());
        Ok((stack, created))
    }

    /// `POST /stacks/{key}/deregister`.
    pub(crate) fn deregister_stack(&mut self, key: &str) -> Result<(), Refusal> {
        self.stacks.remove(key).map(|_| ()).ok_or(Refusal::Unknown)
    }

    /// `GET /stacks/{key}/scheduled-jobs`: free scheduled jobs of the queue, oldest first,
    /// after the job `after`, and whether the queue's dispatch is paused (paused queues still
    /// list their jobs: the stack must not start them).
    pub(crate) fn scheduled_jobs(
        &self,
        key: &str,
        queue_key: &str,
        limit: usize,
        after: Option<&str>,
        instant: Instant,
    ) -> Result<ScheduledPage, Refusal> {
        if !self.stacks.contains_key(key) {
            return Err(Refusal::Unknown);
        }
        let queue = queue_of_key(queue_key);
        let start = match after {
            Some(id) => self.job_index.get(id).map_or(0, |i| i + 1),
            None => 0,
        };
        let mut free = self.jobs[start.min(self.jobs.len())..]
            .iter()
            .filter(|j| j.snap.queue == queue && j.free(instant));
        let jobs: Vec<JobSnapshot> = free.by_ref().take(limit).map(|j| j.snap.clone()).collect();
        let has_next_page = free.next().is_some();
        Ok(ScheduledPage {
            end_cursor: jobs.last().map(|j| j.id.clone()),
            jobs,
            has_next_page,
            dispatch_paused: self.dispatch_paused.contains(queue),
            queue_id: super::state::cluster_queue_id(queue),
        })
    }

    /// `PUT /stacks/{key}/scheduled-jobs/batch-reserve`: reserves each free job, or extends
    /// the reservation of one this stack holds (never shortening it), for `expiry`; returns
    /// (reserved, not reserved).
    pub(crate) fn batch_reserve(
        &mut self,
        key: &str,
        ids: &[String],
        expiry: Duration,
        instant: Instant,
    ) -> Result<(Vec<String>, Vec<String>), Refusal> {
        if !self.stacks.contains_key(key) {
            return Err(Refusal::Unknown);
        }
        let (mut reserved, mut not_reserved) = (Vec::new(), Vec::new());
        for id in ids {
            let job = self.job_index.get(id).map(|&i| &mut self.jobs[i]);
            let ok = job.is_some_and(|j| {
                let held = match &j.reservation {
                    Some((k, until)) if k == key && j.snap.status == JobStatus::Scheduled => {
                        Some(*until)
                    }
                    _ => None,
                };
                if !(j.free(instant) || held.is_some()) {
                    return false;
                }
                let until = (instant + expiry).max(held.unwrap_or(instant));
                j.reservation = Some((key.to_owned(), until));
                j.snap.reserved_by = Some(key.to_owned());
                j.snap.reservations += 1;
                true
            });
            if ok {
                reserved.push(id.clone());
            } else {
                not_reserved.push(id.clone());
            }
        }
        Ok((reserved, not_reserved))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::super::config::EmulatorConfig;
    use super::super::model::JobSpec;
    use super::*;

    #[test]
    fn keys_and_reservations_follow_the_documented_rules() {
        let mut s = State::new(&EmulatorConfig::new("acme", "agent", "api"));
        let (now, t) = (Utc::now(), Instant::now());
        for bad in ["", "a.b", "a/b", &"k".repeat(81)] {
            assert!(
                s.register_stack(bad, "custom", "q", Default::default(), now)
                    .is_err(),
                "{bad:?}"
            );
        }
        let (_, created) = s
            .register_stack(&"k".repeat(80), "custom", "q", Default::default(), now)
            .unwrap();
        assert!(created);
        let (_, created) = s
            .register_stack(&"k".repeat(80), "custom", "q", Default::default(), now)
            .unwrap();
        assert!(!created, "idempotent");
        s.register_stack("a", "custom", "q", Default::default(), now)
            .unwrap();
        let (ids, _) = s.submit(vec![JobSpec::new("q", Duration::from_secs(1))], now);
        let key = "k".repeat(80);
        let hold = |s: &mut State, key: &str, secs: u64, at: Instant| {
            s.batch_reserve(key, &ids, Duration::from_secs(secs), at)
                .unwrap()
                .0
                .len()
                == 1
        };
        assert!(hold(&mut s, &key, 10, t));
        assert!(!hold(&mut s, "a", 10, t), "held by another stack");
        assert!(hold(&mut s, &key, 1, t), "the holder may ask again");
        let listed = |s: &State, at| s.scheduled_jobs("a", "q", 10, None, at).unwrap().jobs.len();
        assert_eq!(
            listed(&s, t + Duration::from_secs(5)),
            0,
            "a shorter re-reservation does not shorten the first"
        );
        assert_eq!(listed(&s, t + Duration::from_secs(10)), 1, "expired");
        assert!(
            hold(&mut s, &key, 10, t + Duration::from_secs(8)),
            "extended"
        );
        assert_eq!(listed(&s, t + Duration::from_secs(12)), 0);
        assert_eq!(queue_of_key(DEFAULT_QUEUE_KEY), "default");
    }
}
