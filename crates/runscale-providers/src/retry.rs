//! Retries of idempotent reads within one call: a `GET` that failed in transit or was answered
//! with a 5xx is sent again after a short pause, so one failed page out of many does not fail
//! a whole observation. Pauses grow exponentially from 100 ms with jitter (so many pools
//! retrying one API do not do so in lock step); four retries wait about 1.5 s in total, at most
//! 3 s. Throttling (429, 403 with a rate-limit header) is not retried here: the reconciler's
//! back-off and the providers' pause handle it.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use runscale_core::{ErrorKind, Result};

/// The first pause.
const FIRST: Duration = Duration::from_millis(100);
/// The longest single pause before jitter.
const LONGEST: Duration = Duration::from_millis(800);
/// Retries after the first attempt.
const RETRIES: usize = 4;

/// The pauses between attempts of a read.
pub(crate) fn delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(FIRST)
        .with_max_delay(LONGEST)
        .with_max_times(RETRIES)
        .with_jitter()
        .build()
}

/// Runs `attempt` until it succeeds with an answer `server_error` does not flag, fails with an
/// error that is not transient, or the retries are spent; returns the last outcome.
pub(crate) async fn read<T, F, Fut>(mut attempt: F, server_error: impl Fn(&T) -> bool) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut pauses = delays();
    loop {
        let outcome = attempt().await;
        let again = match &outcome {
            Ok(answer) => server_error(answer),
            Err(e) => e.kind() == ErrorKind::Transient,
        };
        match pauses.next() {
            Some(pause) if again => tokio::time::sleep(pause).await,
            _ => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use runscale_core::Error;

    use super::*;

    #[test]
    fn pauses_grow_with_jitter_and_stop_after_four() {
        let all: Vec<Duration> = delays().collect();
        assert_eq!(all.len(), RETRIES);
        for (i, d) in all.iter().enumerate() {
            let base = FIRST.saturating_mul(1 << i).min(LONGEST);
            assert!(*d >= base && *d <= base * 2, "pause {i}: {d:?} vs {base:?}");
        }
        let total: Duration = all.iter().sum();
        assert!(total <= Duration::from_secs(3), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_on_5xx_and_transient_errors_but_not_on_others() {
        let calls = AtomicU32::new(0);
        // Two 5xx answers, then a good one.
        let got = read(
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Ok(if n < 2 { 503 } else { 200 })
            },
            |status: &u16| *status >= 500,
        )
        .await;
        assert_eq!((got.ok(), calls.load(Ordering::SeqCst)), (Some(200), 3));

        // Always failing in transit: five attempts, the last error returned.
        calls.store(0, Ordering::SeqCst);
        let got: Result<u16> = read(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::new("t", ErrorKind::Transient, "reset"))
            },
            |_| false,
        )
        .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);

        // A misconfiguration is not retried.
        calls.store(0, Ordering::SeqCst);
        let _: Result<u16> = read(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::new("t", ErrorKind::Misconfigured, "bad token"))
            },
            |_| false,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
