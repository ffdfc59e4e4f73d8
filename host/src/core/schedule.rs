//! When a tenant is polled next: an interval or a cron expression, in the tenant's time
//! zone, optionally only within active hours. Pure: `now` is passed in.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    #[error("cron expression {0:?} does not parse: {1}")]
    Cron(String, String),
    #[error("time_zone {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("active_hours start and end are the same time")]
    EmptyWindow,
    #[error("cron expression {0:?} never fires within the active hours")]
    NeverFires(String),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    window: Option<ActiveHours>,
    tz: Tz,
}

#[derive(Debug, Clone)]
enum Cadence {
    Every(Duration),
    Cron(Box<Cron>, String),
}

impl Schedule {
    pub fn parse(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        let tz = Tz::from_str(&spec.time_zone).map_err(|_| ScheduleError::TimeZone(spec.time_zone.clone()))?;
        let cadence = match (&spec.every_seconds, &spec.cron) {
            (Some(0), None) => return Err(ScheduleError::ZeroInterval),
            (Some(s), None) => Cadence::Every(Duration::seconds(*s as i64)),
            (None, Some(expr)) => {
                let cron = Cron::from_str(expr).map_err(|e| ScheduleError::Cron(expr.clone(), e.to_string()))?;
                Cadence::Cron(Box::new(cron), expr.clone())
            }
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
        })
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// When the next poll is due: the first firing after the last poll started (or after
    /// `now` if none has run), always inside the active hours. A firing missed while the
    /// host was down is due at once (`now`, or the window's next opening).
    pub fn next_poll(&self, last_started: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
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
