//! `--since`: a duration back from now (`10m`, `1h30m`, `45s`, `2d`) or an RFC 3339 time
//! (`2024-01-02T03:04:05Z`, `2024-01-02T04:04:05+01:00`). Pure: the clock is a parameter.

use std::str::FromStr;

/// A `--since` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This many nanoseconds before the command started.
    Ago(i64),
    /// This Unix time (nanoseconds).
    At(i64),
}

impl Since {
    /// The Unix time (ns) it names, given the time the command started.
    pub fn unix_ns(self, now_ns: i64) -> i64 {
        match self {
            Self::Ago(d) => now_ns.saturating_sub(d),
            Self::At(t) => t,
        }
    }
}

impl FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('T') || s.contains(':') {
            let t = jiff::Timestamp::from_str(s).map_err(|e| {
                format!("`{s}` is not an RFC 3339 time (e.g. 2024-01-02T03:04:05Z): {e}")
            })?;
            return i64::try_from(t.as_nanosecond())
                .map(Self::At)
                .map_err(|_| format!("`{s}` is out of range"));
        }
        parse_duration_ns(s).map(Self::Ago)
    }
}

/// `1h30m`, `10m`, `45s`, `500ms`, `2d`: units `d`, `h`, `m`, `s`, `ms`, summed.
pub fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let bad =
        || format!("`{s}` is not a duration like 10m, 1h30m, 45s or 2d, nor an RFC 3339 time");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ns: i64 = match &rest[..unit_len] {
            "d" => 86_400_000_000_000,
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ns)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        const S: i64 = 1_000_000_000;
        assert_eq!("10m".parse::<Since>(), Ok(Since::Ago(600 * S)));
        assert_eq!("1h30m".parse::<Since>(), Ok(Since::Ago(5400 * S)));
        assert_eq!("2d".parse::<Since>(), Ok(Since::Ago(2 * 86_400 * S)));
        assert_eq!("1500ms".parse::<Since>(), Ok(Since::Ago(1_500_000_000)));
        assert_eq!(
            "2024-01-02T03:04:05.5Z".parse::<Since>(),
            Ok(Since::At(1_704_164_645_500_000_000))
        );
        assert_eq!(
            "2024-01-02T04:04:05+01:00".parse::<Since>(),
            Ok(Since::At(1_704_164_645 * S))
        );
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "-5m",
            "yesterday",
            "2024-13-01T00:00:00Z",
        ] {
            assert!(bad.parse::<Since>().is_err(), "{bad}");
        }
        assert_eq!(Since::Ago(5).unix_ns(100), 95);
        assert_eq!(Since::At(7).unix_ns(100), 7);
    }
}
