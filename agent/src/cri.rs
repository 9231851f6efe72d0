//! CRI log records, as kubelet reads them (`pkg/kubelet/kuberuntime/logs/logs.go`, `parseCRILog`):
//!
//! ```text
//! <RFC3339Nano timestamp> <stdout|stderr> <tags> <message>\n
//! ```
//!
//! The first tag is `P` (partial: the runtime split a long line, the file's `\n` is only a record
//! separator) or `F` (full: the `\n` ends the message and is kept with it).
//!
//! This module is the stable, borrow-only face of the CRI parser for callers outside the tail
//! (benchmarks, the load generator). The parser itself, Docker json-file, plain text and partial
//! reassembly live in [`crate::format`].

use crate::format;

pub use crate::format::parse_rfc3339_nanos;

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
pub type CriError = format::ParseError;

/// Parses one record (`line` may end with its `\n`). See [`format::cri::parse`].
pub fn parse(line: &[u8]) -> Result<Record<'_>, CriError> {
    let r = format::cri::parse(line)?;
    let message = match r.message {
        std::borrow::Cow::Borrowed(m) => m,
        // The CRI parser never unescapes: its message always borrows from `line`.
        std::borrow::Cow::Owned(_) => unreachable!("CRI messages borrow from the line"),
    };
    Ok(Record {
        timestamp_ns: r.timestamp_ns,
        stderr: r.stderr,
        partial: r.partial,
        message,
    })
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
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(parse(b"x").is_err());
        assert!(parse(b"yesterday stdout F m").is_err());
        assert!(parse(b"2024-01-02T03:04:05Z stdin F m").is_err());
        assert_eq!(parse_rfc3339_nanos(b"2024-13-02T03:04:05Z"), None);
    }
}
