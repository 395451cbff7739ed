//! Time-of-day overrides of a pool's `min_idle` and `max`.
//!
//! A schedule entry is active during every minute its cron expression matches, evaluated in the
//! entry's IANA time zone: `* 8-17 * * MON-FRI` in `Europe/Berlin` is "working hours in
//! Berlin", daylight-saving changes included. When several entries match, the last one in the
//! list wins. Evaluation is pure: the caller passes the instant.

use std::fmt;
use std::str::FromStr;

use chrono::Timelike;
use chrono_tz::Tz;
use croner::Cron;

use crate::model::Timestamp;

/// One parsed schedule entry.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    source: String,
    timezone: Tz,
    /// `min_idle` while active.
    pub min_idle: Option<u32>,
    /// `max` while active.
    pub max: Option<u32>,
}

/// Why a schedule entry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression as written.
        expr: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    TimeZone(String),
}

impl Schedule {
    /// Parses a five- or six-field cron expression and an IANA time zone name.
    pub fn new(
        cron: &str,
        timezone: &str,
        min_idle: Option<u32>,
        max: Option<u32>,
    ) -> Result<Self, ScheduleError> {
        let parsed = Cron::from_str(cron).map_err(|e| ScheduleError::Cron {
            expr: cron.to_owned(),
            reason: e.to_string(),
        })?;
        let timezone =
            Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        Ok(Self {
            cron: parsed,
            source: cron.to_owned(),
            timezone,
            min_idle,
            max,
        })
    }

    /// Whether the entry is active at `now` (minute resolution).
    pub fn matches(&self, now: Timestamp) -> bool {
        let local = now.with_timezone(&self.timezone);
        // Seconds are ignored: an entry is active for the whole matching minute.
        let minute = local.with_second(0).and_then(|t| t.with_nanosecond(0));
        match minute {
            Some(t) => self.cron.is_time_matching(&t).unwrap_or(false),
            None => false,
        }
    }

    /// The cron expression as written.
    pub fn expression(&self) -> &str {
        &self.source
    }

    /// The time zone name.
    pub fn timezone(&self) -> &str {
        self.timezone.name()
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("cron", &self.source)
            .field("timezone", &self.timezone.name())
            .field("min_idle", &self.min_idle)
            .field("max", &self.max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, 30)
            .single()
            .expect("valid date")
    }

    #[test]
    fn working_hours_in_berlin_follow_local_time() {
        let s = Schedule::new("* 8-17 * * MON-FRI", "Europe/Berlin", Some(5), None).expect("ok");
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        assert!(s.matches(at(2026, 11, 23, 7, 0))); // 08:00 local
        assert!(!s.matches(at(2026, 11, 23, 6, 59))); // 07:59 local
        assert!(s.matches(at(2026, 11, 23, 16, 59))); // 17:59 local
        assert!(!s.matches(at(2026, 11, 23, 17, 0))); // 18:00 local
        assert!(!s.matches(at(2026, 11, 22, 10, 0))); // Sunday
        // In July Berlin is UTC+2.
        assert!(s.matches(at(2026, 7, 6, 6, 0))); // 08:00 local
        assert!(!s.matches(at(2026, 7, 6, 5, 59)));
    }

    #[test]
    fn bad_cron_and_zone_are_named() {
        let e = Schedule::new("not a cron", "UTC", None, None).expect_err("bad cron");
        assert!(e.to_string().contains("not a cron"), "{e}");
        let e = Schedule::new("* * * * *", "Mars/Olympus", None, None).expect_err("bad tz");
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    }
}
