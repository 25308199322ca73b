//! Timestamps as the database stores them: UTC RFC 3339 text with
//! milliseconds (`2026-11-25T19:32:47.123Z`), which sorts as text and reads
//! well in the `sqlite3` shell.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a point in time the way every timestamp column stores it.
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, formatted for storage.
pub fn now() -> String {
    format(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_utc_with_milliseconds_and_z() {
        let at = Utc
            .timestamp_millis_opt(1_764_099_167_123)
            .single()
            .unwrap();
        assert_eq!(format(at), "2025-11-25T19:32:47.123Z");
    }

    #[test]
    fn stored_times_sort_as_text() {
        let a = format(Utc.timestamp_millis_opt(999).single().unwrap());
        let b = format(Utc.timestamp_millis_opt(1_000).single().unwrap());
        assert!(a < b, "{a} should sort before {b}");
    }
}
