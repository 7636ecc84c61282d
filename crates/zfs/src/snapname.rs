//! fjord's snapshot names: `{prefix}_{YYYY}-{MM}-{DD}T{HH}{MM}{SS}Z`, the
//! creation time in UTC. The time is in the name (not only in the
//! `creation` property) so that an operator reading `zfs list` sees it and
//! retention can tell fjord's snapshots from everyone else's. There is no
//! ':' in it, because `:` is awkward in some shells and tools.
//!
//! Dates use Howard Hinnant's `civil_from_days`/`days_from_civil`
//! algorithms (proleptic Gregorian calendar), so no date crate is needed.

const SECS_PER_DAY: i64 = 86_400;

/// A UTC calendar date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    /// Year, such as 2026.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
    /// Hour, 0 to 23.
    pub hour: u32,
    /// Minute, 0 to 59.
    pub minute: u32,
    /// Second, 0 to 59.
    pub second: u32,
}

/// Splits Unix seconds into a UTC date and time.
pub fn utc_from_unix(secs: i64) -> UtcTime {
    let days = secs.div_euclid(SECS_PER_DAY);
    let of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    UtcTime {
        year,
        month,
        day,
        hour: (of_day / 3600) as u32,
        minute: (of_day % 3600 / 60) as u32,
        second: (of_day % 60) as u32,
    }
}

/// Unix seconds of a UTC date and time (fields are not range-checked).
pub fn unix_from_utc(t: &UtcTime) -> i64 {
    days_from_civil(t.year, t.month, t.day) * SECS_PER_DAY
        + i64::from(t.hour) * 3600
        + i64::from(t.minute) * 60
        + i64::from(t.second)
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day count since 1970-01-01 of a (year, month, day).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// The snapshot name for a snapshot taken at `unix_secs`:
/// `format_snapshot_name("fjord", 1769860800)` is `fjord_2026-01-31T120000Z`.
/// Years outside 0..=9999 are not representable and are clamped to them.
pub fn format_snapshot_name(prefix: &str, unix_secs: i64) -> String {
    // Four-digit years keep names fixed-width and parseable.
    let min = days_from_civil(0, 1, 1) * SECS_PER_DAY;
    let max = days_from_civil(10_000, 1, 1) * SECS_PER_DAY - 1;
    let t = utc_from_unix(unix_secs.clamp(min, max));
    format!(
        "{prefix}_{:04}-{:02}-{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The time in a name made by [`format_snapshot_name`] with this `prefix`,
/// or `None` if `name` is not exactly such a name (another prefix, another
/// format, an impossible date such as February 30th).
pub fn parse_snapshot_time(prefix: &str, name: &str) -> Option<i64> {
    let stamp = name.strip_prefix(prefix)?.strip_prefix('_')?;
    let b = stamp.as_bytes();
    // YYYY-MM-DDTHHMMSSZ
    if b.len() != 18 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[17] != b'Z' {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<u32> {
        let s = stamp.get(from..to)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let t = UtcTime {
        year: i64::from(digits(0, 4)?),
        month: digits(5, 7)?,
        day: digits(8, 10)?,
        hour: digits(11, 13)?,
        minute: digits(13, 15)?,
        second: digits(15, 17)?,
    };
    let valid = (1..=12).contains(&t.month)
        && t.day >= 1
        && t.day <= days_in_month(t.year, t.month)
        && t.hour < 24
        && t.minute < 60
        && t.second < 60;
    valid.then(|| unix_from_utc(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates_format() {
        assert_eq!(format_snapshot_name("fjord", 0), "fjord_1970-01-01T000000Z");
        assert_eq!(
            format_snapshot_name("fjord", 1769860800),
            "fjord_2026-01-31T120000Z"
        );
        // 2000-02-29 (leap year divisible by 400) 23:59:59.
        assert_eq!(format_snapshot_name("x", 951868799), "x_2000-02-29T235959Z");
        // 2024-02-29 12:34:56.
        assert_eq!(
            format_snapshot_name("x", 1709210096),
            "x_2024-02-29T123456Z"
        );
        // The next second after 2023-12-31 23:59:59.
        assert_eq!(
            format_snapshot_name("x", 1704067200),
            "x_2024-01-01T000000Z"
        );
        // Before the epoch: 1969-12-31 23:59:59.
        assert_eq!(format_snapshot_name("x", -1), "x_1969-12-31T235959Z");
        assert_eq!(
            format_snapshot_name("fjord_hourly", 4102444800),
            "fjord_hourly_2100-01-01T000000Z"
        );
    }

    #[test]
    fn known_names_parse() {
        assert_eq!(
            parse_snapshot_time("fjord", "fjord_2026-01-31T120000Z"),
            Some(1769860800)
        );
        assert_eq!(
            parse_snapshot_time("x", "x_2000-02-29T235959Z"),
            Some(951868799)
        );
        assert_eq!(parse_snapshot_time("x", "x_1969-12-31T235959Z"), Some(-1));
    }

    #[test]
    fn impossible_dates_and_foreign_names_do_not_parse() {
        for name in [
            "fjord_1900-02-29T000000Z", // 1900 is not a leap year
            "fjord_2025-02-29T000000Z",
            "fjord_2026-04-31T000000Z",
            "fjord_2026-13-01T000000Z",
            "fjord_2026-00-01T000000Z",
            "fjord_2026-01-00T000000Z",
            "fjord_2026-01-01T240000Z",
            "fjord_2026-01-01T006000Z",
            "fjord_2026-01-01T000060Z",
            "fjord_2026-01-01T000000",
            "fjord_2026-01-01T000000Zx",
            "fjord_2026-01-01 000000Z",
            "fjord_+026-01-01T000000Z",
            "fjord-2026-01-01T000000Z",
            "fjordx_2026-01-01T000000Z",
            "other_2026-01-01T000000Z",
            "manual",
            "",
        ] {
            assert_eq!(parse_snapshot_time("fjord", name), None, "{name}");
        }
        assert_eq!(
            parse_snapshot_time("fjord", "fjord_2000-02-29T000000Z"),
            Some(951782400)
        );
    }

    #[test]
    fn prefix_is_matched_exactly() {
        let name = format_snapshot_name("fjord_hourly", 1769860800);
        assert_eq!(parse_snapshot_time("fjord", &name), None);
        assert_eq!(parse_snapshot_time("fjord_hourly", &name), Some(1769860800));
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        let start = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2300, 1, 1);
        let mut expected = (1900, 1, 1);
        for d in start..end {
            assert_eq!(civil_from_days(d), expected, "day {d}");
            let (y, m, day) = expected;
            expected = if day < days_in_month(y, m) {
                (y, m, day + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    proptest! {
        #[test]
        fn names_round_trip(secs in -62_167_219_200i64..253_402_300_799i64) {
            let name = format_snapshot_name("fjord", secs);
            prop_assert_eq!(parse_snapshot_time("fjord", &name), Some(secs));
            prop_assert!(crate::names::validate_snapshot_short_name(&name).is_ok());
        }
    }
}
