//! Times as people type them for `--since` and `--until`: relative
//! (`2h`, `7d`, `yesterday`, `3 days ago`), dates and times in the local
//! time zone (the zone `history` displays, so what you see is what you
//! type), or RFC 3339 with its own zone.

use chrono::{DateTime, Duration, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::clock;

/// What a bad time gets told: forms that work.
const EXAMPLES: &str = "try 2h, 30m, 7d, 2w, today, yesterday, \"3 days ago\", \
     2026-11-25, \"2026-11-25 14:30\" (local time) or 2026-11-25T14:30:00Z";

/// A time bound typed by the user: a day (`2026-11-25`, `yesterday`: the
/// whole day in the local zone) or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBound {
    start: DateTime<Utc>,
    /// Where the bound ends: a day covers all of it, an instant 1 ms.
    end: DateTime<Utc>,
}

impl TimeBound {
    /// Parses `text` against the current time in the local time zone (the
    /// `TZ` environment variable, else the system's).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        Self::parse_at(text, Utc::now(), &Local)
    }

    /// Parses `text` as if it were `now` in the time zone `tz`.
    pub fn parse_at<Tz: TimeZone>(
        text: &str,
        now: DateTime<Utc>,
        tz: &Tz,
    ) -> std::result::Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| format!("'{text}' {why}; {EXAMPLES}");
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Ok(Self::instant(at.with_timezone(&Utc)));
        }
        let lower = text.to_lowercase();
        let today = now.with_timezone(tz).date_naive();
        match lower.as_str() {
            "now" => return Ok(Self::instant(now)),
            "today" => return day(today, tz).ok_or_else(|| bad("has no start here")),
            "yesterday" => {
                let day_before = today.pred_opt().ok_or_else(|| bad("is out of range"))?;
                return day(day_before, tz).ok_or_else(|| bad("has no start here"));
            }
            _ => {}
        }
        if let Some(ago) = relative(&lower) {
            let ago = ago.ok_or_else(|| bad("is too far back"))?;
            let at = now
                .checked_sub_signed(ago)
                .ok_or_else(|| bad("is too far back"))?;
            return Ok(Self::instant(at));
        }
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return day(date, tz).ok_or_else(|| bad("has no start in the local time zone"));
        }
        for format in [
            "%Y-%m-%d %H:%M",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
        ] {
            if let Ok(local) = NaiveDateTime::parse_from_str(text, format) {
                let at = tz.from_local_datetime(&local).earliest().ok_or_else(|| {
                    bad("does not exist in the local time zone (the clocks skipped it)")
                })?;
                return Ok(Self::instant(at.with_timezone(&Utc)));
            }
        }
        Err(bad("is not a time I can read"))
    }

    fn instant(at: DateTime<Utc>) -> Self {
        Self {
            start: at,
            end: at + Duration::milliseconds(1),
        }
    }

    /// The bound as a `since`: its first instant.
    pub fn as_since(&self) -> String {
        clock::format(self.start)
    }

    /// The bound as an exclusive `until`: just past its last instant.
    pub fn as_until(&self) -> String {
        clock::format(self.end)
    }
}

/// The whole local day `date`: from its first instant to the next day's.
fn day<Tz: TimeZone>(date: NaiveDate, tz: &Tz) -> Option<TimeBound> {
    let start = day_start(date, tz)?;
    let end = day_start(date.succ_opt()?, tz)?;
    Some(TimeBound { start, end })
}

/// The first instant of a local day; where midnight is skipped by a clock
/// change, the first hour that exists.
fn day_start<Tz: TimeZone>(date: NaiveDate, tz: &Tz) -> Option<DateTime<Utc>> {
    (0..3).find_map(|hour| {
        let local = date.and_hms_opt(hour, 0, 0)?;
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// `2h`, `30m`, `7d`, `2w`, `45s`, `3 days ago`, `1 week ago`: `None` if
/// `text` is not of that form, `Some(None)` if the amount is too large.
fn relative(text: &str) -> Option<Option<Duration>> {
    let text = text.strip_suffix("ago").unwrap_or(text).trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let amount: i64 = match text[..digits].parse() {
        Ok(n) => n,
        Err(_) => return Some(None),
    };
    let per: i64 = match text[digits..].trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return None,
    };
    Some(amount.checked_mul(per).and_then(Duration::try_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    /// 2026-11-25 10:30 UTC, which is 19:30 in Tokyo (+09:00).
    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:30:00Z")
            .unwrap()
            .to_utc()
    }

    fn tokyo() -> FixedOffset {
        FixedOffset::east_opt(9 * 3600).unwrap()
    }

    fn at(text: &str) -> (String, String) {
        let t = TimeBound::parse_at(text, now(), &tokyo()).unwrap();
        (t.as_since(), t.as_until())
    }

    #[test]
    fn relative_forms_count_back_from_now() {
        assert_eq!(at("2h").0, "2026-11-25T08:30:00.000Z");
        assert_eq!(at("30m").0, "2026-11-25T10:00:00.000Z");
        assert_eq!(at("7d").0, "2026-11-18T10:30:00.000Z");
        assert_eq!(at("2w").0, "2026-11-11T10:30:00.000Z");
        assert_eq!(at("3 days ago").0, "2026-11-22T10:30:00.000Z");
        assert_eq!(at("1 hour ago").0, "2026-11-25T09:30:00.000Z");
        assert_eq!(at("10min ago").0, "2026-11-25T10:20:00.000Z");
        assert_eq!(at("now").0, "2026-11-25T10:30:00.000Z");
        assert_eq!(at("2h").1, "2026-11-25T08:30:00.001Z");
    }

    #[test]
    fn days_are_whole_local_days() {
        // In Tokyo, 25 November runs from 24 Nov 15:00 UTC to 25 Nov 15:00 UTC.
        assert_eq!(
            at("today"),
            (
                "2026-11-24T15:00:00.000Z".into(),
                "2026-11-25T15:00:00.000Z".into()
            )
        );
        assert_eq!(
            at("Yesterday"),
            (
                "2026-11-23T15:00:00.000Z".into(),
                "2026-11-24T15:00:00.000Z".into()
            )
        );
        assert_eq!(at("2026-11-20").0, "2026-11-19T15:00:00.000Z");
        assert_eq!(at("2026-11-20").1, "2026-11-20T15:00:00.000Z");
    }

    #[test]
    fn times_without_a_zone_are_local_and_with_one_are_theirs() {
        assert_eq!(at("2026-11-25 14:30").0, "2026-11-25T05:30:00.000Z");
        assert_eq!(at("2026-11-25T14:30:15").0, "2026-11-25T05:30:15.000Z");
        assert_eq!(at("2026-11-25T14:30:00Z").0, "2026-11-25T14:30:00.000Z");
        assert_eq!(
            at("2026-11-25T10:00:00+01:00").0,
            "2026-11-25T09:00:00.000Z"
        );
        // In UTC the same local time is read as UTC.
        let utc = TimeBound::parse_at("2026-11-25 14:30", now(), &Utc).unwrap();
        assert_eq!(utc.as_since(), "2026-11-25T14:30:00.000Z");
    }

    #[test]
    fn bad_times_say_what_works() {
        for bad in [
            "",
            "soon",
            "2x",
            "3 fortnights ago",
            "2026-13-01",
            "99999999999999999999d",
        ] {
            let err = TimeBound::parse_at(bad, now(), &tokyo()).unwrap_err();
            assert!(
                err.contains("yesterday") && err.contains("2026-11-25"),
                "{bad}: {err}"
            );
        }
    }
}
