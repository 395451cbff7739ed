//! The one error policy: how long a pool waits after a failed pass, from the error's kind.

use std::time::Duration;

use crate::error::ErrorKind;

/// Delay before the next pass after `failures` consecutive failures (the latest of `kind`).
///
/// Exponential from `base`, doubling per failure, capped at `max`. A rate limit with a
/// server-given `retry_after` waits exactly that (at least `base`); a misconfiguration waits
/// `max`, since retrying sooner cannot help.
pub fn backoff(kind: ErrorKind, failures: u32, base: Duration, max: Duration) -> Duration {
    match kind {
        ErrorKind::RateLimited {
            retry_after: Some(after),
        } => after.max(base),
        ErrorKind::Misconfigured => max,
        _ => {
            let exp = failures.saturating_sub(1).min(20);
            base.saturating_mul(1u32 << exp).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        let seq: Vec<u64> = (1..=8)
            .map(|n| backoff(ErrorKind::Transient, n, b, m).as_secs())
            .collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(ErrorKind::Transient, u32::MAX, b, m), m);
    }

    #[test]
    fn retry_after_is_honoured_and_misconfiguration_waits_longest() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        let k = ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(42)),
        };
        assert_eq!(backoff(k, 1, b, m), Duration::from_secs(42));
        assert_eq!(backoff(ErrorKind::Misconfigured, 1, b, m), m);
    }
}
