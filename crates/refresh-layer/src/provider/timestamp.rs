//! Expiry timestamps shared by the exec and file providers.
//!
//! RFC 3339 is parsed with its offset applied (`+05:30`, `-08:00`, `Z`), with
//! or without a fraction. Two lenient forms that earlier versions accepted
//! are kept: a space instead of the `T`, and no offset at all (read as UTC).

use std::time::SystemTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The instant `text` names, or `None` when it is not RFC 3339.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let mut normalized = String::with_capacity(text.len() + 1);
    normalized.push_str(text);
    // `2026-01-02 03:04:05`: RFC 3339 allows a space for readability.
    if normalized.get(10..11) == Some(" ") {
        normalized.replace_range(10..11, "T");
    }
    if !has_offset(&normalized) {
        normalized.push('Z');
    }
    OffsetDateTime::parse(&normalized, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Whether the time part (after the date's `YYYY-MM-DD`) ends with `Z` or a
/// `+hh:mm` / `-hh:mm` offset.
fn has_offset(text: &str) -> bool {
    let Some(time) = text.get(10..) else {
        return false;
    };
    time.ends_with(['Z', 'z']) || time.contains(['+', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64, millis: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    // 2026-01-02T03:04:05Z
    const T: u64 = 1_767_323_045;

    #[test]
    fn offsets_are_applied() {
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05Z"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05z"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05.5Z"), at(T, 500));
        assert_eq!(parse_rfc3339("2026-01-02T08:34:05.5+05:30"), at(T, 500));
        assert_eq!(parse_rfc3339("2026-01-02T08:34:05+05:30"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-02T04:04:05+01:00"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-01T19:04:05.250-08:00"), at(T, 250));
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05+00:00"), at(T, 0));
        assert_eq!(parse_rfc3339(" 2026-01-02T03:04:05Z\n"), at(T, 0));
    }

    #[test]
    fn lenient_forms_are_utc() {
        assert_eq!(parse_rfc3339("2026-01-02 03:04:05Z"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05"), at(T, 0));
        assert_eq!(parse_rfc3339("2026-01-02 03:04:05.5"), at(T, 500));
        assert_eq!(parse_rfc3339("2026-01-02 08:34:05+05:30"), at(T, 0));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "tomorrow",
            "2026-01-02",
            "2026-01-02T03:04",
            "2026-01-02T03:04:05+0530",
            "2026-13-02T03:04:05Z",
            "1767323045",
            "2026-01-02T03:04:05Zjunk",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text:?}");
        }
    }
}
