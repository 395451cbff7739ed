//! The one error policy: how long a pool waits after a failed pass, from the error's kind.

use std::time::Duration;

use crate::error::ErrorKind;

/// The longest wait after transient failures (timeouts, 5xx answers, lost connections): they
/// usually clear within seconds, and minutes of back-off left pools without runners long after
/// an API had recovered.
pub const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The longest delay before the next pass after `failures` consecutive failures (the latest of
/// `kind`).
///
/// Exponential from `base`, doubling per failure, capped at `max` ([`TRANSIENT_BACKOFF_MAX`]
/// for transient errors). A rate limit with a server-given `retry_after` waits exactly that
/// (at least `base`); a misconfiguration waits `max`, since retrying sooner cannot help.
pub fn backoff(kind: ErrorKind, failures: u32, base: Duration, max: Duration) -> Duration {
    match kind {
        ErrorKind::RateLimited {
            retry_after: Some(after),
        } => after.max(base),
        ErrorKind::Misconfigured => max,
        ErrorKind::Transient => exponential(failures, base, max.min(TRANSIENT_BACKOFF_MAX)),
        _ => exponential(failures, base, max),
    }
}

/// The delay actually waited: [`backoff`] with full jitter (uniform between `base` and the
/// ceiling), so pools failing on one API together do not retry in lock step. A server-given
/// `retry_after` and a misconfiguration's wait are kept exact.
pub fn jittered(
    kind: ErrorKind,
    failures: u32,
    base: Duration,
    max: Duration,
    rng: &mut impl rand::Rng,
) -> Duration {
    let ceiling = backoff(kind, failures, base, max);
    match kind {
        ErrorKind::RateLimited {
            retry_after: Some(_),
        }
        | ErrorKind::Misconfigured => ceiling,
        _ if ceiling <= base => ceiling,
        _ => rng.random_range(base..=ceiling),
    }
}

/// Whether a wake-up (a webhook, a backend event) may end the back-off after a failure of
/// `kind`: not while the server asked to wait (`retry_after`) or while the configuration is
/// wrong; otherwise yes — the back-off only delays the timer.
pub fn wake_ends_backoff(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        ErrorKind::RateLimited {
            retry_after: Some(_)
        } | ErrorKind::Misconfigured
    )
}

fn exponential(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        let seq: Vec<u64> = (1..=8)
            .map(|n| backoff(ErrorKind::Protocol, n, b, m).as_secs())
            .collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(ErrorKind::Protocol, u32::MAX, b, m), m);
        assert_eq!(
            backoff(ErrorKind::Transient, u32::MAX, b, m),
            TRANSIENT_BACKOFF_MAX
        );
    }

    #[test]
    fn transient_errors_back_off_for_seconds_not_minutes() {
        let b = Duration::from_secs(2);
        let m = Duration::from_secs(300);
        assert_eq!(
            backoff(ErrorKind::Transient, 10, b, m),
            TRANSIENT_BACKOFF_MAX
        );
        assert_eq!(backoff(ErrorKind::Protocol, 10, b, m), m);
    }

    #[test]
    fn jitter_stays_between_base_and_the_ceiling_and_spreads() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let b = Duration::from_secs(2);
        let m = Duration::from_secs(300);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = jittered(ErrorKind::Transient, 5, b, m, &mut rng);
            assert!(
                d >= b && d <= backoff(ErrorKind::Transient, 5, b, m),
                "{d:?}"
            );
            seen.insert(d.as_secs());
        }
        assert!(seen.len() > 10, "{seen:?}");
        let k = ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(42)),
        };
        assert_eq!(jittered(k, 3, b, m, &mut rng), Duration::from_secs(42));
        assert_eq!(jittered(ErrorKind::Misconfigured, 3, b, m, &mut rng), m);
        assert_eq!(jittered(ErrorKind::Transient, 1, b, m, &mut rng), b);
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
