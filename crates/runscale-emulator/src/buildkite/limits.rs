//! The REST API's two rate limits (`rest_api/rate_limits.md`): one budget per organisation and
//! one per user (the owner of the API token), each counted over a fixed one-minute window that
//! starts with its first request. Every request counts towards both, refused ones included
//! (the 429 body reports a `current` above the `limit`); a request is refused when either is
//! over. Pure bookkeeping: the time is passed in.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The length of a window.
const WINDOW: Duration = Duration::from_secs(60);

/// One budget's window.
#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    count: u32,
}

impl Window {
    /// Counts one request at `now` (opening a new window if the last one is over).
    fn count(&mut self, now: Instant) {
        if self.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            self.started = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
    }

    /// Whole seconds until the window resets (at least 1).
    fn reset(&self, now: Instant) -> u64 {
        let elapsed = self.started.map_or(WINDOW, |s| now.duration_since(s));
        let left = WINDOW.saturating_sub(elapsed);
        (left.as_secs_f64().ceil() as u64).max(1)
    }
}

/// What one budget says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// `RateLimit[-User]-Scope`: `rest` or `rest_user`.
    pub(crate) scope: &'static str,
    /// The limit per window.
    pub(crate) limit: u32,
    /// Requests counted in the current window (the request itself included).
    pub(crate) current: u32,
    /// Requests left in the window.
    pub(crate) remaining: u32,
    /// Seconds until the window resets.
    pub(crate) reset: u64,
}

impl Quota {
    /// Whether this budget refuses the request.
    pub(crate) fn exceeded(&self) -> bool {
        self.current > self.limit
    }
}

/// The organisation's and the users' windows.
#[derive(Debug)]
pub(crate) struct RestLimits {
    org_limit: u32,
    user_limit: u32,
    org: Window,
    users: HashMap<usize, Window>,
}

impl RestLimits {
    pub(crate) fn new(org_limit: u32, user_limit: u32) -> Self {
        RestLimits {
            org_limit,
            user_limit,
            org: Window::default(),
            users: HashMap::new(),
        }
    }

    /// Counts one request of `user` (the index of its API token) at `now`: the organisation's
    /// quota, then the user's. The request is refused if either is exceeded.
    pub(crate) fn take(&mut self, user: usize, now: Instant) -> (Quota, Quota) {
        self.org.count(now);
        let window = self.users.entry(user).or_default();
        window.count(now);
        let quota = |scope, limit: u32, w: &Window| Quota {
            scope,
            limit,
            current: w.count,
            remaining: limit.saturating_sub(w.count),
            reset: w.reset(now),
        };
        (
            quota("rest", self.org_limit, &self.org),
            quota("rest_user", self.user_limit, window),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn each_user_has_a_budget_inside_the_organisations() {
        let mut l = RestLimits::new(3, 2);
        let t = Instant::now();
        let (org, user) = l.take(0, t);
        assert_eq!((org.remaining, user.remaining), (2, 1));
        assert_eq!((org.scope, user.scope), ("rest", "rest_user"));
        assert_eq!(user.reset, 60);
        let (_, user) = l.take(0, t + Duration::from_millis(500));
        assert!(!user.exceeded() && user.remaining == 0);
        let (org, user) = l.take(0, t + Duration::from_secs(1));
        assert!(user.exceeded() && !org.exceeded(), "user 0 is over its 2");
        assert_eq!(user.reset, 59);
        let (org, user) = l.take(1, t + Duration::from_secs(2));
        assert!(
            org.exceeded() && !user.exceeded(),
            "the organisation is over its 3"
        );
        let (org, user) = l.take(0, t + Duration::from_secs(60));
        assert!(!org.exceeded() && !user.exceeded(), "a new window");
        assert_eq!((org.current, user.current), (1, 1));
    }
}
