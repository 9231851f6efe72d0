//! Calendar arithmetic for timestamps carried as Unix nanoseconds. Pure: no clock.
//!
//! Log records carry their time as `i64` nanoseconds since 1970-01-01T00:00:00Z (the CRI
//! timestamp, parsed by the agent). People read it as RFC 3339 with nine fraction digits, the
//! `RFC3339Nano` layout `kubectl logs --timestamps` and the CRI log format use.

/// Nanoseconds in a second.
const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Seconds in a day (UTC, no leap seconds, as in Unix time).
const SECS_PER_DAY: i64 = 86_400;

/// Formats Unix nanoseconds as RFC 3339 UTC with nine fraction digits:
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
///
/// Every `i64` is accepted: times before 1970 are negative (`-1` is
/// `1969-12-31T23:59:59.999999999Z`), and the range spans 1677-09-21 to 2262-04-11.
pub fn rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let nanos = ns.rem_euclid(NANOS_PER_SEC);
    let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let sod = secs.rem_euclid(SECS_PER_DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Seconds from `from_ns` to `to_ns` (Unix nanoseconds, possibly read on two machines' clocks),
/// as the lag histograms observe them: a negative difference (the later clock is behind the
/// earlier one by more than the true lag) is 0.
pub fn lag_seconds(from_ns: i64, to_ns: i64) -> f64 {
    let ns = i128::from(to_ns) - i128::from(from_ns);
    if ns <= 0 { 0.0 } else { ns as f64 / 1e9 }
}

/// Proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a day count since
/// 1970-01-01, negative before it (H. Hinnant, `civil_from_days`,
/// <https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // 1 <= m <= 12 and 1 <= d <= 31 by construction.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_seconds_is_the_difference_clamped_at_zero() {
        assert_eq!(lag_seconds(1_000_000_000, 3_500_000_000), 2.5);
        assert_eq!(lag_seconds(5, 5), 0.0);
        // A clock behind the other: 0, not a negative observation.
        assert_eq!(lag_seconds(3_000_000_000, 1_000_000_000), 0.0);
        // The extremes do not overflow.
        assert!(lag_seconds(i64::MIN, i64::MAX) > 1e10);
        assert_eq!(lag_seconds(i64::MAX, i64::MIN), 0.0);
    }

    #[test]
    fn formats_like_rfc3339nano() {
        for (ns, text) in [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (1_704_164_645_123_456_789, "2024-01-02T03:04:05.123456789Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000000Z"),
            (951_782_400_000_000_001, "2000-02-29T00:00:00.000000001Z"),
            (4_102_444_799_999_999_999, "2099-12-31T23:59:59.999999999Z"),
        ] {
            assert_eq!(rfc3339_nanos(ns), text, "{ns}");
        }
    }

    #[test]
    fn always_nine_fraction_digits() {
        assert_eq!(rfc3339_nanos(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(rfc3339_nanos(1_000), "1970-01-01T00:00:00.000001000Z");
        assert_eq!(rfc3339_nanos(500_000_000), "1970-01-01T00:00:00.500000000Z");
        assert_eq!(rfc3339_nanos(999_999_999), "1970-01-01T00:00:00.999999999Z");
        assert_eq!(
            rfc3339_nanos(1_000_000_000),
            "1970-01-01T00:00:01.000000000Z"
        );
        for ns in [0, 1, -1, 123_456_789, i64::MIN, i64::MAX] {
            assert_eq!(rfc3339_nanos(ns).len(), 30, "{ns}");
        }
    }

    #[test]
    fn leap_years() {
        // Divisible by 4: leap.
        assert_eq!(
            rfc3339_nanos(1_709_164_800 * NANOS_PER_SEC),
            "2024-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(1_709_251_200 * NANOS_PER_SEC),
            "2024-03-01T00:00:00.000000000Z"
        );
        // Divisible by 100 but not by 400: not leap (1900 and 2100 go from Feb 28 to Mar 1).
        assert_eq!(
            rfc3339_nanos(4_107_456_000 * NANOS_PER_SEC),
            "2100-02-28T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(4_107_542_400 * NANOS_PER_SEC),
            "2100-03-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(-2_203_977_600 * NANOS_PER_SEC),
            "1900-02-28T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(-2_203_891_200 * NANOS_PER_SEC),
            "1900-03-01T00:00:00.000000000Z"
        );
        // Divisible by 400: leap.
        assert_eq!(
            rfc3339_nanos(951_868_800 * NANOS_PER_SEC),
            "2000-03-01T00:00:00.000000000Z"
        );
        // Last day of a leap year is day 366.
        assert_eq!(
            rfc3339_nanos(1_735_603_200 * NANOS_PER_SEC),
            "2024-12-31T00:00:00.000000000Z"
        );
    }

    #[test]
    fn before_1970() {
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            rfc3339_nanos(-NANOS_PER_SEC),
            "1969-12-31T23:59:59.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(-NANOS_PER_SEC - 1),
            "1969-12-31T23:59:58.999999999Z"
        );
        assert_eq!(
            rfc3339_nanos(-SECS_PER_DAY * NANOS_PER_SEC),
            "1969-12-31T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nanos(-86_400 * 365 * NANOS_PER_SEC),
            "1969-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn the_whole_i64_range() {
        assert_eq!(rfc3339_nanos(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(rfc3339_nanos(i64::MIN), "1677-09-21T00:12:43.145224192Z");
    }

    #[test]
    fn days_walk_the_calendar() {
        // Day by day from 1600 to 2400, the date advances by exactly one calendar day.
        let month_len = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let first = -135_140; // 1600-01-01
        assert_eq!(civil_from_days(first), (1600, 1, 1));
        let mut prev = civil_from_days(first);
        for days in first + 1..=157_054 {
            let (y, m, d) = prev;
            let want = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            let got = civil_from_days(days);
            assert_eq!(got, want, "day {days}");
            prev = got;
        }
        assert_eq!(prev, (2400, 1, 1));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
