//! When a tenant is polled next: an interval or a cron expression, in the tenant's time
//! zone, optionally only within active hours. Pure: `now` is passed in.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::limits::{POLL_INTERVAL_MAX_SECONDS, POLL_INTERVAL_MIN_SECONDS};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Seconds between polls; exclusive with `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<u64>,
    /// A 5- or 6-field cron expression evaluated in `time_zone`; exclusive with `every_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Poll only between these local times ("06:00"–"20:00"; may wrap midnight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_hours: Option<ActiveHours>,
    /// IANA zone, e.g. "America/Chicago".
    pub time_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("schedule needs exactly one of every_seconds and cron")]
    Cadence,
    #[error("every_seconds must be at least 1")]
    ZeroInterval,
    #[error("every_seconds {0} is not between {min} and {max} (a week)", min = POLL_INTERVAL_MIN_SECONDS, max = POLL_INTERVAL_MAX_SECONDS)]
    IntervalRange(u64),
    #[error("cron expression {0:?} fires more often than once every {min} s", min = POLL_INTERVAL_MIN_SECONDS)]
    TooOften(String),
    #[error("time_zone is required (an IANA time zone, e.g. America/Chicago)")]
    NoTimeZone,
    #[error("cron expression {0:?} does not parse: {1}")]
    Cron(String, String),
    #[error("time_zone {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("active_hours start and end are the same time")]
    EmptyWindow,
    #[error("cron expression {0:?} never fires within the active hours")]
    NeverFires(String),
}

impl ScheduleError {
    /// The field of the schedule at fault, as the control plane names it.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::Cadence | ScheduleError::ZeroInterval | ScheduleError::IntervalRange(_) => "every_seconds",
            ScheduleError::Cron(..) | ScheduleError::TooOften(_) | ScheduleError::NeverFires(_) => "cron",
            ScheduleError::TimeZone(_) | ScheduleError::NoTimeZone => "time_zone",
            ScheduleError::EmptyWindow => "active_from",
        }
    }
}

/// The shortest time between two scheduled polls (`core::limits::POLL_INTERVAL_MIN_SECONDS`).
pub fn min_interval() -> Duration {
    Duration::seconds(POLL_INTERVAL_MIN_SECONDS as i64)
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    window: Option<ActiveHours>,
    tz: Tz,
    /// The shortest time between two polls: [`min_interval`] but in tests.
    min_gap: Duration,
}

#[derive(Debug, Clone)]
enum Cadence {
    Every(Duration),
    Cron(Box<Cron>, String),
}

impl Schedule {
    pub fn parse(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        let tz = Tz::from_str(&spec.time_zone).map_err(|_| ScheduleError::TimeZone(spec.time_zone.clone()))?;
        // A cron that does not parse is named as such, even beside an interval.
        let cron = match &spec.cron {
            Some(expr) => Some(Cron::from_str(expr).map_err(|e| ScheduleError::Cron(expr.clone(), e.to_string()))?),
            None => None,
        };
        let cadence = match (&spec.every_seconds, &spec.cron) {
            (Some(0), None) => return Err(ScheduleError::ZeroInterval),
            // Larger values once wrapped to a negative interval or overflowed `Duration`.
            (Some(s), None) if *s > POLL_INTERVAL_MAX_SECONDS => return Err(ScheduleError::IntervalRange(*s)),
            (Some(s), None) => Cadence::Every(Duration::seconds(*s as i64)),
            (None, Some(expr)) => Cadence::Cron(Box::new(cron.expect("parsed above")), expr.clone()),
            _ => return Err(ScheduleError::Cadence),
        };
        if let Some(w) = &spec.active_hours
            && w.start == w.end
        {
            return Err(ScheduleError::EmptyWindow);
        }
        Ok(Schedule {
            cadence,
            window: spec.active_hours.clone(),
            tz,
            min_gap: min_interval(),
        })
    }

    /// A schedule as an operator may set it now: [`Schedule::parse`], a time zone given,
    /// and no poll more often than [`min_interval`]. A stored schedule that predates these
    /// checks still parses; [`Schedule::next_poll`] stretches it to the minimum.
    pub fn check(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        if spec.time_zone.is_empty() {
            return Err(ScheduleError::NoTimeZone);
        }
        let schedule = Schedule::parse(spec)?;
        match &schedule.cadence {
            Cadence::Every(step) if *step < min_interval() => Err(ScheduleError::IntervalRange(step.num_seconds() as u64)),
            Cadence::Cron(cron, expr) if fires_too_often(cron) => Err(ScheduleError::TooOften(expr.clone())),
            _ => Ok(schedule),
        }
    }

    /// The same schedule with another shortest time between polls (the scheduler's, which
    /// only a debug build lets a test shorten).
    pub fn with_min_gap(mut self, gap: Duration) -> Self {
        self.min_gap = gap;
        self
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// When the next poll is due: the first firing after the last poll started (or after
    /// `now` if none has run), always inside the active hours. A firing missed while the
    /// host was down is due at once (`now`, or the window's next opening).
    /// Never sooner than [`min_interval`] after the last poll started, whatever was stored.
    pub fn next_poll(&self, last_started: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let due = self.next_firing(last_started, now)?;
        Ok(match last_started {
            Some(last) if due < last + self.min_gap => self.clamp_to_window(last + self.min_gap),
            _ => due,
        })
    }

    fn next_firing(&self, last_started: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        match &self.cadence {
            Cadence::Every(step) => {
                let candidate = last_started.map(|l| l + *step).unwrap_or(now).max(now);
                Ok(self.clamp_to_window(candidate))
            }
            Cadence::Cron(cron, expr) => {
                let mut from = last_started.unwrap_or(now).with_timezone(&self.tz);
                // A cron that fires only outside the window would loop for ever: bound it.
                for _ in 0..10_000 {
                    let next = cron
                        .find_next_occurrence(&from, false)
                        .map_err(|e| ScheduleError::Cron(expr.clone(), e.to_string()))?;
                    let utc = next.with_timezone(&Utc);
                    if self.in_window(utc) {
                        return Ok(if utc < now { self.clamp_to_window(now) } else { utc });
                    }
                    // Jump to the window's next opening, then look for the first firing from there.
                    from = (self.clamp_to_window(utc) - Duration::seconds(1)).with_timezone(&self.tz);
                }
                Err(ScheduleError::NeverFires(expr.clone()))
            }
        }
    }

    /// When the next scheduled poll is due after `failures` failed polls in a row, the last
    /// started at `last_started`: [`Schedule::next_poll`], and no sooner than the back-off,
    /// [`min_interval`] doubled per failure up to `POLL_BACKOFF_MAX_SECONDS`.
    pub fn next_poll_after(
        &self,
        last_started: Option<DateTime<Utc>>,
        failures: u32,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ScheduleError> {
        let due = self.next_poll(last_started, now)?;
        match last_started {
            Some(last) if failures > 0 => Ok(due.max(self.clamp_to_window(last + backoff(failures)))),
            _ => Ok(due),
        }
    }

    pub fn in_window(&self, t: DateTime<Utc>) -> bool {
        let Some(w) = &self.window else { return true };
        let local = t.with_timezone(&self.tz).time();
        if w.start < w.end {
            local >= w.start && local < w.end
        } else {
            local >= w.start || local < w.end
        }
    }

    /// `t` if inside the active hours, else the window's next opening.
    fn clamp_to_window(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let Some(w) = &self.window else { return t };
        if self.in_window(t) {
            return t;
        }
        let local = t.with_timezone(&self.tz);
        let mut day = local.date_naive();
        if local.time() >= w.start {
            day = day.succ_opt().expect("date in range");
        }
        self.local_to_utc(day.and_time(w.start))
    }

    /// A local time that does not exist (a spring-forward gap) moves to the first that does.
    fn local_to_utc(&self, mut naive: NaiveDateTime) -> DateTime<Utc> {
        loop {
            if let Some(t) = self.tz.from_local_datetime(&naive).earliest() {
                return t.with_timezone(&Utc);
            }
            naive += Duration::minutes(15);
        }
    }
}

/// How long after a failed poll's start the next scheduled one waits, after `failures` in a
/// row: 2 min, 4 min, 8 min, … up to `POLL_BACKOFF_MAX_SECONDS`.
pub fn backoff(failures: u32) -> Duration {
    let max = crate::core::limits::POLL_BACKOFF_MAX_SECONDS;
    let secs = POLL_INTERVAL_MIN_SECONDS.saturating_mul(1u64 << failures.min(16)).min(max);
    Duration::seconds(secs as i64)
}

/// Whether a cron expression fires twice within [`min_interval`]: only a seconds field with
/// more than one value can, and then two firings of one minute follow each other. Read from a
/// minute's start, so the first two firings are that pair if there is one.
fn fires_too_often(cron: &Cron) -> bool {
    let from = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("a valid time");
    let Ok(first) = cron.find_next_occurrence(&from, true) else {
        return false;
    };
    let Ok(second) = cron.find_next_occurrence(&first, false) else {
        return false;
    };
    second - first < min_interval()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(every: Option<u64>, cron: Option<&str>, window: Option<(&str, &str)>) -> ScheduleSpec {
        ScheduleSpec {
            every_seconds: every,
            cron: cron.map(String::from),
            active_hours: window.map(|(s, e)| ActiveHours {
                start: s.parse().unwrap(),
                end: e.parse().unwrap(),
            }),
            time_zone: "America/Chicago".into(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_poll_table() {
        // Chicago: CDT is UTC-5 until 2026-11-01 02:00 local, then CST UTC-6.
        // 2026-03-08 02:00 local does not exist (spring forward).
        let cases: &[(ScheduleSpec, Option<&str>, &str, &str)] = &[
            // interval, first poll: now
            (spec(Some(300), None, None), None, "2026-11-27T10:00:00Z", "2026-11-27T10:00:00Z"),
            // interval from the last start
            (
                spec(Some(300), None, None),
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T10:01:00Z",
                "2026-11-27T10:05:00Z",
            ),
            // overdue interval: now, not in the past
            (
                spec(Some(300), None, None),
                Some("2026-11-27T09:00:00Z"),
                "2026-11-27T10:01:00Z",
                "2026-11-27T10:01:00Z",
            ),
            // interval outside active hours 06:00-20:00 local: next 06:00 CST = 12:00Z
            (
                spec(Some(300), None, Some(("06:00", "20:00"))),
                Some("2026-11-27T02:00:00Z"),
                "2026-11-27T02:10:00Z",
                "2026-11-27T12:00:00Z",
            ),
            // cron every 15 minutes
            (
                spec(None, Some("*/15 * * * *"), None),
                None,
                "2026-11-27T10:07:00Z",
                "2026-11-27T10:15:00Z",
            ),
            // cron after a poll: the next firing after it
            (
                spec(None, Some("*/15 * * * *"), None),
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T10:07:00Z",
                "2026-11-27T10:15:00Z",
            ),
            // a firing missed while the host was down is due now
            (
                spec(None, Some("*/15 * * * *"), None),
                Some("2026-11-27T10:00:00Z"),
                "2026-11-27T10:40:00Z",
                "2026-11-27T10:40:00Z",
            ),
            // cron at 07:30 local on weekdays, Friday evening → Monday 07:30 CST = 13:30Z
            (
                spec(None, Some("30 7 * * 1-5"), None),
                None,
                "2026-11-27T23:00:00Z",
                "2026-11-30T13:30:00Z",
            ),
            // across the autumn DST change: 07:30 CDT on Oct 31 is 12:30Z, 07:30 CST on Nov 1 is 13:30Z
            (
                spec(None, Some("30 7 * * *"), None),
                None,
                "2026-10-31T12:00:00Z",
                "2026-10-31T12:30:00Z",
            ),
            (
                spec(None, Some("30 7 * * *"), None),
                None,
                "2026-11-01T13:00:00Z",
                "2026-11-01T13:30:00Z",
            ),
            // hourly cron within 06:00-20:00 across the spring change: 20:00 CST Mar 7 → 06:00 CDT Mar 8 = 11:00Z
            (
                spec(None, Some("0 * * * *"), Some(("06:00", "20:00"))),
                None,
                "2026-03-08T01:30:00Z",
                "2026-03-08T11:00:00Z",
            ),
            // a window that wraps midnight (22:00-04:00): at 12:00 local wait for 22:00 CST = 04:00Z next day
            (
                spec(Some(60), None, Some(("22:00", "04:00"))),
                None,
                "2026-11-27T18:00:00Z",
                "2026-11-28T04:00:00Z",
            ),
            // window opening at a time that does not exist on spring-forward day: first time after the gap
            (
                spec(Some(60), None, Some(("02:30", "05:00"))),
                None,
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z",
            ),
        ];
        for (s, last, now, want) in cases {
            let sched = Schedule::parse(s).unwrap();
            let got = sched.next_poll(last.map(utc), utc(now)).unwrap();
            assert_eq!(got, utc(want), "{s:?} last={last:?} now={now}");
        }
    }

    /// Issue 22: `every_seconds` u64::MAX wrapped to -1 s and hot-looped, i64::MAX panicked,
    /// and nothing kept a schedule (or a stored one) from polling every second.
    #[test]
    fn no_schedule_polls_more_often_than_the_minimum() {
        let last = utc("2026-11-27T10:00:00Z");
        let now = utc("2026-11-27T10:00:01Z");
        for every in [u64::MAX, i64::MAX as u64, POLL_INTERVAL_MAX_SECONDS + 1] {
            let err = Schedule::parse(&spec(Some(every), None, None)).unwrap_err();
            assert_eq!(err, ScheduleError::IntervalRange(every));
            assert_eq!(err.field(), "every_seconds");
        }
        // Stored before the checks: parsed, but never due sooner than the minimum.
        for stored in [spec(Some(1), None, None), spec(None, Some("* * * * * *"), None)] {
            let s = Schedule::parse(&stored).unwrap();
            assert_eq!(s.next_poll(Some(last), now).unwrap(), last + min_interval(), "{stored:?}");
            assert!(Schedule::check(&stored).is_err(), "{stored:?} is refused as input");
        }
        let refused: Vec<(ScheduleSpec, &str)> = vec![
            (spec(Some(59), None, None), "every_seconds"),
            (spec(None, Some("0,30 * * * * *"), None), "cron"),
            (spec(None, Some("* 0 0 1 6 *"), None), "cron"),
            (spec(None, Some("0,59 * * * * *"), None), "cron"),
            (
                ScheduleSpec {
                    time_zone: String::new(),
                    ..spec(Some(60), None, None)
                },
                "time_zone",
            ),
        ];
        for (s, field) in refused {
            assert_eq!(Schedule::check(&s).unwrap_err().field(), field, "{s:?}");
        }
        for ok in [
            spec(Some(60), None, None),
            spec(Some(POLL_INTERVAL_MAX_SECONDS), None, None),
            spec(None, Some("* * * * *"), None),
            spec(None, Some("30 * * * * *"), None),
        ] {
            assert!(Schedule::check(&ok).is_ok(), "{ok:?}");
        }
    }

    /// A failing poll backs off: 2, 4, 8 … minutes, at most an hour; a success ends it.
    #[test]
    fn failed_polls_back_off_exponentially_up_to_a_cap() {
        let s = Schedule::parse(&spec(Some(60), None, None)).unwrap();
        let last = utc("2026-11-27T10:00:00Z");
        let now = utc("2026-11-27T10:00:30Z");
        let waits: Vec<i64> = (0..10)
            .map(|n| (s.next_poll_after(Some(last), n, now).unwrap() - last).num_seconds())
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX), Duration::seconds(3600));
    }

    #[test]
    fn invalid_schedules_say_what_is_wrong() {
        let bad_tz = ScheduleSpec {
            time_zone: "Mars/Olympus".into(),
            ..spec(Some(60), None, None)
        };
        let cases: Vec<(ScheduleSpec, &str)> = vec![
            (spec(None, None, None), "schedule needs exactly one of every_seconds and cron"),
            (
                spec(Some(60), Some("* * * * *"), None),
                "schedule needs exactly one of every_seconds and cron",
            ),
            (spec(Some(0), None, None), "every_seconds must be at least 1"),
            (
                spec(None, Some("61 * * * *"), None),
                "cron expression \"61 * * * *\" does not parse",
            ),
            (bad_tz, "time_zone \"Mars/Olympus\" is not an IANA time zone"),
            (
                spec(Some(60), None, Some(("06:00", "06:00"))),
                "active_hours start and end are the same time",
            ),
        ];
        for (s, want) in cases {
            let err = Schedule::parse(&s).unwrap_err().to_string();
            assert!(err.starts_with(want), "{s:?}: {err}");
        }
    }
}
