//! `/webhooks/buildkite`: authentication by `X-Buildkite-Token` (compared in constant time)
//! or `X-Buildkite-Signature` (`timestamp=<unix>,signature=<hex HMAC-SHA256(token,
//! "<timestamp>.<body>")>`, checked in constant time, timestamps more than 5 minutes away
//! refused), before anything is parsed; recently seen deliveries ignored; and the parts of an
//! event runscale reads.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::http;

/// Largest body accepted: 1 MiB.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// How far a signature's timestamp may be from now.
pub(crate) const MAX_SKEW_SECS: i64 = 5 * 60;
/// How long a delivery is remembered (longer than a signature is valid).
const REMEMBER: Duration = Duration::from_secs(10 * 60);
/// Most deliveries remembered.
const REMEMBER_MAX: usize = 10_000;

/// Constant-time equality of two byte strings (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a delivery proved itself; the signature doubles as a replay key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// `X-Buildkite-Token` matched.
    Token,
    /// `X-Buildkite-Signature` matched; its hex value.
    Signature(String),
}

/// Checks a delivery against the webhook token, at `now` (Unix seconds). A signature, when
/// present, is checked (and a token header then ignored). The error says what is wrong
/// without quoting anything.
pub(crate) fn verify(
    token: &[u8],
    body: &[u8],
    token_header: Option<&str>,
    signature_header: Option<&str>,
    now: i64,
) -> Result<Proof, &'static str> {
    if let Some(sig) = signature_header {
        let mut timestamp = None;
        let mut hex = None;
        for part in sig.split(',') {
            match part.trim().split_once('=') {
                Some(("timestamp", v)) => timestamp = Some(v.trim()),
                Some(("signature", v)) => hex = Some(v.trim()),
                _ => {}
            }
        }
        let ts: i64 = timestamp
            .and_then(|t| t.parse().ok())
            .ok_or("X-Buildkite-Signature has no timestamp=<unix seconds>")?;
        let hex = hex.ok_or("X-Buildkite-Signature has no signature=<hex>")?;
        let tag = http::decode_sha256_hex(hex)
            .ok_or("X-Buildkite-Signature signature is not 64 hex digits")?;
        if now.abs_diff(ts) > MAX_SKEW_SECS.unsigned_abs() {
            return Err("X-Buildkite-Signature timestamp is more than 5 minutes away");
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(token).map_err(|_| "unusable webhook token")?;
        mac.update(ts.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&tag)
            .map_err(|_| "X-Buildkite-Signature does not match the body and the webhook token")?;
        return Ok(Proof::Signature(hex.to_ascii_lowercase()));
    }
    match token_header {
        Some(t) if same(t.trim().as_bytes(), token) => Ok(Proof::Token),
        Some(_) => Err("X-Buildkite-Token does not match the webhook token"),
        None => Err("neither X-Buildkite-Token nor X-Buildkite-Signature is present"),
    }
}

/// Delivery keys seen in the last [`REMEMBER`], at most [`REMEMBER_MAX`] of them.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    order: VecDeque<(Instant, String)>,
    keys: HashSet<String>,
}

impl Recent {
    /// Remembers every key at `now`; false if any was seen already.
    pub(crate) fn first_time(&mut self, keys: &[String], now: Instant) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < REMEMBER && self.order.len() < REMEMBER_MAX {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.keys.remove(&k);
            }
        }
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for k in keys {
            self.keys.insert(k.clone());
            self.order.push_back((now, k.clone()));
        }
        true
    }
}

/// The parts of an event runscale reads.
#[derive(Deserialize)]
pub(crate) struct Event {
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) job: Option<Job>,
    #[serde(default)]
    pub(crate) agent: Option<Agent>,
}

/// The event's job.
#[derive(Deserialize)]
pub(crate) struct Job {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) agent_query_rules: Vec<String>,
}

/// The event's agent.
#[derive(Deserialize)]
pub(crate) struct Agent {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) meta_data: Vec<String>,
}

/// The queue agent query rules (or agent tags) name: `queue=<name>`, else `default`.
pub(crate) fn rules_queue(rules: &[String]) -> &str {
    rules
        .iter()
        .find_map(|r| r.strip_prefix("queue="))
        .unwrap_or("default")
}

/// Whether agents tagged `tags` satisfy `rules`: the queue (default `default`) is the same
/// and every other rule `key=value` is a tag (`value` `*` matches any).
pub(crate) fn rules_match(rules: &[String], tags: &[String]) -> bool {
    rules_queue(rules) == rules_queue(tags)
        && rules.iter().filter(|r| !r.starts_with("queue=")).all(|r| {
            let (k, v) = r.split_once('=').unwrap_or((r.as_str(), ""));
            tags.iter().any(|t| {
                t.split_once('=')
                    .is_some_and(|(tk, tv)| tk == k && (v == "*" || tv == v))
            })
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    use runscale_emulator::buildkite::signature as sign;

    fn sig_hex(header: &str) -> &str {
        header.rsplit("signature=").next().unwrap()
    }

    #[test]
    fn signatures_are_checked_over_timestamp_and_body() {
        let body = br#"{"event":"job.scheduled"}"#;
        let now = 1_800_000_000;
        let good = sign(b"tok", now, body);
        assert_eq!(
            verify(b"tok", body, None, Some(&good), now + 10),
            Ok(Proof::Signature(sig_hex(&good).to_owned()))
        );
        assert!(verify(b"other", body, None, Some(&good), now).is_err());
        assert!(verify(b"tok", b"{}", None, Some(&good), now).is_err());
        assert!(
            verify(b"tok", body, None, Some(&good), now + 301).is_err(),
            "too old"
        );
        assert!(
            verify(b"tok", body, None, Some(&good), now - 301).is_err(),
            "future"
        );
        let swapped = good.replace(&now.to_string(), &(now + 1).to_string());
        assert!(verify(b"tok", body, None, Some(&swapped), now).is_err());
        assert!(verify(b"tok", body, Some("tok"), Some("signature=zz"), now).is_err());
    }

    #[test]
    fn tokens_are_compared_whole() {
        assert_eq!(verify(b"tok", b"", Some("tok"), None, 0), Ok(Proof::Token));
        assert!(verify(b"tok", b"", Some("to"), None, 0).is_err());
        assert!(verify(b"tok", b"", Some("tok2"), None, 0).is_err());
        assert!(verify(b"tok", b"", None, None, 0).is_err());
    }

    #[test]
    fn recent_keys_expire() {
        let mut r = Recent::default();
        let t = Instant::now();
        assert!(r.first_time(&["a".into()], t));
        assert!(!r.first_time(&["b".into(), "a".into()], t));
        assert!(r.first_time(&["a".into()], t + REMEMBER + Duration::from_secs(1)));
    }

    #[test]
    fn rules_need_the_queue_and_every_tag() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(rules_match(
            &v(&["queue=a", "os=*"]),
            &v(&["queue=a", "os=l"])
        ));
        assert!(!rules_match(&v(&["queue=a", "gpu=1"]), &v(&["queue=a"])));
        assert!(!rules_match(&v(&[]), &v(&["queue=a"])));
    }
}
