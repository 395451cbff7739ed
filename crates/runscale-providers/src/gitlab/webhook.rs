//! `/webhooks/gitlab`: the `X-Gitlab-Token` check (constant time, before anything is
//! parsed), de-duplication by `Idempotency-Key` (or `X-Gitlab-Event-UUID`), and the parts of
//! a Job Hook runscale reads. The payload has no job tags.

use std::collections::{HashSet, VecDeque};

use serde::Deserialize;

/// Largest body accepted: 1 MiB.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Delivery keys remembered.
const SEEN_CAPACITY: usize = 10_000;

/// Equality in time independent of where the two differ (the length is not secret).
pub(crate) fn token_matches(expected: &[u8], presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let p = presented.as_bytes();
    p.len() == expected.len()
        && p.iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Delivery keys seen recently; the oldest is forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    order: VecDeque<String>,
    keys: HashSet<String>,
}

impl Seen {
    /// Remembers `key`; false if it was seen already.
    pub(crate) fn first_time(&mut self, key: &str) -> bool {
        if !self.keys.insert(key.to_owned()) {
            return false;
        }
        self.order.push_back(key.to_owned());
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        true
    }
}

/// The parts of a Job Hook runscale reads.
#[derive(Deserialize)]
pub(crate) struct JobEvent {
    pub(crate) object_kind: String,
    #[serde(default)]
    pub(crate) build_id: Option<u64>,
    #[serde(default)]
    pub(crate) build_status: Option<String>,
    #[serde(default)]
    pub(crate) project_id: Option<u64>,
    #[serde(default)]
    pub(crate) runner: Option<EventRunner>,
}

/// The runner of an assigned job.
#[derive(Deserialize)]
pub(crate) struct EventRunner {
    pub(crate) id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_needs_the_exact_token() {
        assert!(token_matches(b"s3cret", Some("s3cret")));
        assert!(!token_matches(b"s3cret", Some("s3cre")));
        assert!(!token_matches(b"s3cret", Some("s3creT")));
        assert!(!token_matches(b"s3cret", None));
    }

    #[test]
    fn seen_keys_are_bounded() {
        let mut seen = Seen::default();
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        for i in 0..SEEN_CAPACITY {
            seen.first_time(&i.to_string());
        }
        assert!(seen.keys.len() <= SEEN_CAPACITY);
        assert!(seen.first_time("a"), "the oldest key is forgotten first");
    }
}
