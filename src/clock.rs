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

/// Any RFC 3339 time (another offset, other precision) in the stored form,
/// or `None` if `text` is not one.
pub fn normalize(text: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| format(t.to_utc()))
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
    fn normalizes_any_offset_to_utc_milliseconds() {
        assert_eq!(
            normalize("2026-11-25T21:32:47+02:00").as_deref(),
            Some("2026-11-25T19:32:47.000Z")
        );
        assert_eq!(normalize("yesterday"), None);
    }

    #[test]
    fn stored_times_sort_as_text() {
        let a = format(Utc.timestamp_millis_opt(999).single().unwrap());
        let b = format(Utc.timestamp_millis_opt(1_000).single().unwrap());
        assert!(a < b, "{a} should sort before {b}");
    }
}
