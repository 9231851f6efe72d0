//! CRI log records, as kubelet writes them (`pkg/kubelet/kuberuntime/logs/logs.go`, `parseCRILog`):
//!
//! ```text
//! <RFC3339Nano timestamp> <stdout|stderr> <tags> <message>\n
//! ```
//!
//! The first tag is `P` (partial: the runtime split a long line, the file's `\n` is only a record
//! separator) or `F` (full: the `\n` ends the message and is kept with it).

/// One physical record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Unix nanoseconds.
    pub timestamp_ns: i64,
    /// Written to stderr.
    pub stderr: bool,
    /// A `P` record: more of the same line follows.
    pub partial: bool,
    /// Message bytes; for full records the terminator is kept.
    pub message: &'a [u8],
}

/// Why a record did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    /// Fewer than four space-separated fields.
    #[error("record has fewer than four fields")]
    MissingField,
    /// The timestamp is not RFC 3339.
    #[error("bad timestamp")]
    Timestamp,
    /// The stream is neither `stdout` nor `stderr`.
    #[error("bad stream name")]
    Stream,
}

/// Parses one record (`line` may end with its `\n`).
pub fn parse(line: &[u8]) -> Result<Record<'_>, CriError> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let ts = fields.next().ok_or(CriError::MissingField)?;
    let stream = fields.next().ok_or(CriError::MissingField)?;
    let tags = fields.next().ok_or(CriError::MissingField)?;
    let rest = fields.next().ok_or(CriError::MissingField)?;
    let timestamp_ns = parse_rfc3339_nanos(ts).ok_or(CriError::Timestamp)?;
    let stderr = match stream {
        b"stdout" => false,
        b"stderr" => true,
        _ => return Err(CriError::Stream),
    };
    let partial = tags.split(|b| *b == b':').next() == Some(b"P");
    let message = if partial {
        rest.strip_suffix(b"\n").unwrap_or(rest)
    } else {
        rest
    };
    Ok(Record {
        timestamp_ns,
        stderr,
        partial,
        message,
    })
}

/// True when a raw record completes a logical line: anything but a well-formed `P` record
/// (a malformed record is delivered as a line of its own, so it counts as one).
pub fn completes_line(line: &[u8]) -> bool {
    !matches!(parse(line), Ok(r) if r.partial)
}

/// Parses an RFC 3339 timestamp (fraction up to 9 digits, `Z` or `±hh:mm`) to Unix nanoseconds.
pub fn parse_rfc3339_nanos(s: &[u8]) -> Option<i64> {
    fn num(s: &[u8]) -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    }
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&s[..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (h, mi, sec) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&rest[1..=digits])? * 10i64.pow(9 - digits as u32);
        rest = &rest[1 + digits..];
    }
    let offset_s = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh @ .., b':', m1, m2] if oh.len() == 2 => {
            let o = num(oh)? * 3600 + num(&[*m1, *m2])? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_partial_records() {
        let r = parse(b"2024-01-02T03:04:05.123456789Z stdout F hello world\n").unwrap();
        assert_eq!(r.message, b"hello world\n");
        assert!(!r.partial && !r.stderr);
        assert_eq!(r.timestamp_ns, 1_704_164_645_123_456_789);
        let r = parse(b"2024-01-02T03:04:05Z stderr P:x part\n").unwrap();
        assert_eq!(r.message, b"part");
        assert!(r.partial && r.stderr);
        assert!(!completes_line(b"2024-01-02T03:04:05Z stderr P part\n"));
        assert!(completes_line(b"2024-01-02T03:04:05Z stderr F part\n"));
        assert!(completes_line(b"garbage\n"));
    }

    #[test]
    fn crlf_is_kept_and_offsets_apply() {
        let r = parse(b"2024-01-02T03:04:05+01:00 stdout F dos\r\n").unwrap();
        assert_eq!(r.message, b"dos\r\n");
        assert_eq!(r.timestamp_ns, 1_704_161_045_000_000_000);
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(parse(b"x"), Err(CriError::MissingField));
        assert_eq!(parse(b"yesterday stdout F m"), Err(CriError::Timestamp));
        assert_eq!(
            parse(b"2024-01-02T03:04:05Z stdin F m"),
            Err(CriError::Stream)
        );
        assert_eq!(parse_rfc3339_nanos(b"2024-13-02T03:04:05Z"), None);
    }
}
