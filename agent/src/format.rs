//! Parsing of Kubernetes container log files into log records.
//!
//! A container log file under `/var/log/pods` is written by the container
//! runtime in one of two formats:
//!
//! * [`Format::Cri`]: the CRI text format written by containerd and CRI-O,
//!   one record per line: `<RFC 3339 time> <stdout|stderr> <tags> <message>`
//!   (see [`cri`]).
//! * [`Format::DockerJson`]: Docker's `json-file` driver, one JSON object per
//!   line (see [`docker`]).
//!
//! Anything else is treated as [`Format::Plain`] text, one message per line.
//!
//! Both runtimes split long lines into several *partial* records (16 KiB by
//! default); [`Merger`] puts them back together per stream, bounded by a
//! maximum line length. [`Parser`] ties it all together: feed it the raw lines
//! of one file and it yields [`MergedLine`]s.
//!
//! Everything here is pure: no I/O, no clock, no allocation beyond the
//! bounded reassembly buffers and the emitted lines.

use std::borrow::Cow;

pub mod cri;
pub mod docker;
pub mod merge;

pub use self::merge::{MergedLine, Merger};

/// The on-disk format of a container log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// CRI text format (containerd, CRI-O): `<time> <stream> <tags> <message>`.
    Cri,
    /// Docker `json-file` format: `{"log":"...","stream":"stdout","time":"..."}`.
    DockerJson,
    /// Unstructured text: each line is a message with no metadata.
    Plain,
}

/// Guesses the format of a log file from its first line.
///
/// The line is [`Format::Cri`] if [`cri::parse`] accepts it (this is how the
/// kubelet picks its parser too), [`Format::DockerJson`] if it starts with
/// `{"log":` or is otherwise a valid Docker json-file record, and
/// [`Format::Plain`] otherwise.
pub fn detect(first_line: &[u8]) -> Format {
    if cri::parse(first_line).is_ok() {
        Format::Cri
    } else if first_line.starts_with(br#"{"log":"#)
        || (first_line.first() == Some(&b'{') && docker::parse(first_line).is_ok())
    {
        Format::DockerJson
    } else {
        Format::Plain
    }
}

/// One physical record of a log file, as parsed from a single line.
///
/// A record may be only a fragment of a logical line (`partial`); use
/// [`Merger`] to reassemble fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the runtime captured the record, in nanoseconds since the Unix
    /// epoch (0 when the format carries no time, as for plain text).
    pub timestamp_ns: i64,
    /// Whether the record came from the container's stderr (else stdout).
    pub stderr: bool,
    /// Whether the record is a fragment that the next record of the same
    /// stream continues.
    pub partial: bool,
    /// The message bytes, with the line terminator (`\n`, `\r\n`) as written
    /// for a complete record; a partial record has no terminator.
    pub message: Cow<'a, [u8]>,
}

impl<'a> Record<'a> {
    /// A complete stdout record with no timestamp whose message is `line`, as
    /// used for [`Format::Plain`] files.
    pub fn plain(line: &'a [u8]) -> Self {
        Record {
            timestamp_ns: 0,
            stderr: false,
            partial: false,
            message: Cow::Borrowed(line),
        }
    }

    /// Detaches the record from the buffer it was parsed from.
    pub fn into_owned(self) -> Record<'static> {
        Record {
            timestamp_ns: self.timestamp_ns,
            stderr: self.stderr,
            partial: self.partial,
            message: Cow::Owned(self.message.into_owned()),
        }
    }
}

/// What [`Parser::push_line`] parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The record came from stderr (else stdout).
    pub stderr: bool,
    /// The record was a fragment continued by the next record of its stream.
    pub partial: bool,
}

/// Why a line could not be parsed as a record. The line should be counted and
/// skipped; parsing can go on with the next line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required field is absent: a CRI line ends before the space that
    /// closes its `timestamp`, `stream` or `tags` field, or a Docker record
    /// has no `log`, `stream` or `time` member.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// The timestamp is not RFC 3339 (with at most nine fractional digits) or
    /// lies outside the range of `i64` nanoseconds since the Unix epoch.
    #[error("invalid RFC 3339 timestamp")]
    InvalidTimestamp,
    /// The stream is neither `stdout` nor `stderr`.
    #[error("stream is neither `stdout` nor `stderr`")]
    InvalidStream,
    /// A Docker line is not one well-formed JSON object (syntax error, raw
    /// control character in a string, nesting deeper than 32, or trailing
    /// data) at the given byte offset of the line.
    #[error("malformed JSON at byte {offset}")]
    InvalidJson {
        /// Byte offset in the line where the problem was found.
        offset: usize,
    },
    /// A Docker JSON string holds an unknown escape (`\x`) or a `\u` escape
    /// without four hex digits, at the given byte offset of the line.
    #[error("invalid JSON escape at byte {offset}")]
    InvalidEscape {
        /// Byte offset in the line of the offending backslash.
        offset: usize,
    },
    /// A Docker record member (`log`, `stream` or `time`) is not a JSON string.
    #[error("field `{0}` is not a string")]
    InvalidFieldType(&'static str),
}

/// Parses an RFC 3339 timestamp into nanoseconds since the Unix epoch.
///
/// Accepts `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)` with 1 to 9
/// fractional digits (`t` and `z` may be lower case), which covers Go's
/// `RFC3339Nano` output used by every container runtime. Returns `None` for
/// anything else, for out-of-range fields (month 13, February 30, second 60,
/// ...), and for instants that do not fit in an `i64` of nanoseconds
/// (roughly before 1677 or after 2262).
pub fn parse_rfc3339_nanos(s: &[u8]) -> Option<i64> {
    // Fixed-width prefix: "YYYY-MM-DDTHH:MM:SS" is 19 bytes.
    if s.len() < 20 {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(frac, 0, n)? * 10_i64.pow(9 - n as u32);
        rest = &frac[n..];
    }

    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = digits(rest, 1, 2)?;
            let om = digits(rest, 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    i64::try_from(total).ok()
}

/// Reads `len` ASCII digits of `s` starting at `at` as a decimal number.
fn digits(s: &[u8], at: usize, len: usize) -> Option<i64> {
    s.get(at..at + len)?.iter().try_fold(0_i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Turns the raw lines of one container log file into merged log lines.
///
/// The format is detected from the first line pushed (see [`detect`]) and
/// kept for the rest of the file, unless fixed up front with
/// [`Parser::with_format`]. Plain-text lines become complete stdout records
/// with `timestamp_ns == 0`, for the caller to fill in.
#[derive(Debug)]
pub struct Parser {
    format: Option<Format>,
    merger: Merger,
    /// Reused buffer for unescaping Docker `log` values.
    scratch: Vec<u8>,
}

/// Above this capacity the Docker unescape buffer is released after use, so
/// one huge line does not pin its memory for the life of the parser.
const SCRATCH_KEEP: usize = 64 * 1024;

impl Parser {
    /// A parser that detects the format from the first line and caps merged
    /// lines at `max_line_bytes` message bytes.
    pub fn new(max_line_bytes: usize) -> Self {
        Parser {
            format: None,
            merger: Merger::new(max_line_bytes),
            scratch: Vec::new(),
        }
    }

    /// A parser for a file whose format is already known.
    pub fn with_format(format: Format, max_line_bytes: usize) -> Self {
        Parser {
            format: Some(format),
            ..Parser::new(max_line_bytes)
        }
    }

    /// The format in use, once known.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// Parses one raw line (including its trailing `\n`, if any) and appends
    /// the line it completes, if any, to `out`.
    ///
    /// On error nothing is emitted and no partial line is affected, so the
    /// caller can count the error and go on with the next line. (The format
    /// is still fixed by the first line, even if that line fails to parse.)
    ///
    /// Returns which stream the record belongs to and whether it was partial.
    pub fn push_line(
        &mut self,
        raw: &[u8],
        out: &mut Vec<MergedLine>,
    ) -> Result<Pushed, ParseError> {
        let format = *self.format.get_or_insert_with(|| detect(raw));
        let parsed = match format {
            Format::Cri => cri::parse(raw),
            Format::DockerJson => docker::parse_into(raw, &mut self.scratch),
            Format::Plain => Ok(Record::plain(raw)),
        }
        .map(|record| {
            let pushed = Pushed {
                stderr: record.stderr,
                partial: record.partial,
            };
            self.merger.push(record, out);
            pushed
        });
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        parsed
    }

    /// Emits every buffered partial line, flagged `partial` (see
    /// [`Merger::flush`]). Call at end of file or when the file goes idle.
    pub fn flush(&mut self, out: &mut Vec<MergedLine>) {
        self.merger.flush(out);
    }

    /// Message bytes currently held back waiting for the rest of their line.
    pub fn buffered_bytes(&self) -> usize {
        self.merger.buffered_bytes()
    }

    /// Ends the line open on one stream, if any (see [`Merger::flush_stream`]).
    pub fn flush_stream(&mut self, stderr: bool, out: &mut Vec<MergedLine>) {
        self.merger.flush_stream(stderr, out);
    }

    /// True when the stream is in the middle of a line (see [`Merger::is_open`]).
    pub fn is_open(&self, stderr: bool) -> bool {
        self.merger.is_open(stderr)
    }

    /// True when no stream is in the middle of a line (see [`Merger::is_idle`]): the next
    /// record starts a line whatever came before, so reading may start here.
    pub fn is_idle(&self) -> bool {
        self.merger.is_idle()
    }

    /// Parses one raw line like [`Parser::push_line`] but only reports its kind, leaving the
    /// merger untouched: `(timestamp_ns, stderr, partial)`.
    pub fn classify(&mut self, raw: &[u8]) -> Result<(i64, bool, bool), ParseError> {
        let format = *self.format.get_or_insert_with(|| detect(raw));
        let r = match format {
            Format::Cri => cri::parse(raw).map(|r| (r.timestamp_ns, r.stderr, r.partial)),
            Format::DockerJson => docker::parse_into(raw, &mut self.scratch)
                .map(|r| (r.timestamp_ns, r.stderr, r.partial)),
            Format::Plain => Ok((0, false, false)),
        };
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc() {
        assert_eq!(parse_rfc3339_nanos(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos(b"2016-10-06T00:17:09.669794202Z"),
            Some(1_475_713_029_669_794_202)
        );
        assert_eq!(
            parse_rfc3339_nanos(b"2024-02-29T23:59:59.5Z"),
            Some(1_709_251_199_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos(b"1969-12-31T23:59:59.000000001Z"),
            Some(-999_999_999)
        );
        assert_eq!(
            parse_rfc3339_nanos(b"2000-01-01t00:00:00z"),
            Some(946_684_800_000_000_000)
        );
    }

    #[test]
    fn rfc3339_offsets() {
        let utc = parse_rfc3339_nanos(b"2024-01-01T10:00:00.123456789Z").unwrap();
        assert_eq!(
            parse_rfc3339_nanos(b"2024-01-01T12:00:00.123456789+02:00"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_nanos(b"2024-01-01T04:30:00.123456789-05:30"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_nanos(b"2024-01-01T10:00:00.123456789-00:00"),
            Some(utc)
        );
        // Offsets can cross a day and a year boundary.
        assert_eq!(
            parse_rfc3339_nanos(b"2023-12-31T23:00:00-11:00"),
            parse_rfc3339_nanos(b"2024-01-01T10:00:00Z")
        );
    }

    #[test]
    fn rfc3339_i64_range() {
        assert_eq!(
            parse_rfc3339_nanos(b"2262-04-11T23:47:16.854775807Z"),
            Some(i64::MAX)
        );
        assert_eq!(parse_rfc3339_nanos(b"2262-04-11T23:47:16.854775808Z"), None);
        assert_eq!(
            parse_rfc3339_nanos(b"1677-09-21T00:12:43.145224192Z"),
            Some(i64::MIN)
        );
        assert_eq!(parse_rfc3339_nanos(b"1677-09-21T00:12:43.145224191Z"), None);
        assert_eq!(parse_rfc3339_nanos(b"0000-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_nanos(b"9999-12-31T23:59:59Z"), None);
    }

    #[test]
    fn rfc3339_rejects() {
        for bad in [
            &b""[..],
            b"2024-01-01",
            b"2024-01-01T00:00:00",
            b"2024-01-01 00:00:00Z",
            b"2024-13-01T00:00:00Z",
            b"2024-00-01T00:00:00Z",
            b"2023-02-29T00:00:00Z",
            b"2024-04-31T00:00:00Z",
            b"2024-01-00T00:00:00Z",
            b"2024-01-01T24:00:00Z",
            b"2024-01-01T00:60:00Z",
            b"2024-01-01T00:00:60Z",
            b"2024-01-01T00:00:00.Z",
            b"2024-01-01T00:00:00.1234567890Z",
            b"2024-01-01T00:00:00+0200",
            b"2024-01-01T00:00:00+24:00",
            b"2024-01-01T00:00:00+02:60",
            b"2024-01-01T00:00:00Zjunk",
            b"2024-01-01T00:00:00ZZ",
            b"2024/01/01T00:00:00Z",
            b"+024-01-01T00:00:00Z",
            b"2024-01-01T00:00:0xZ",
            b"2024-01-01T00:00:00.12a4Z",
        ] {
            assert_eq!(
                parse_rfc3339_nanos(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rfc3339_matches_day_count() {
        // Walk 800 years of month starts and check consecutive differences
        // against the month lengths.
        let mut prev = parse_rfc3339_nanos(b"1700-01-01T00:00:00Z").unwrap();
        for year in 1700..2200 {
            for month in 1..=12 {
                let (ny, nm) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                let s = format!("{ny:04}-{nm:02}-01T00:00:00Z");
                let next = parse_rfc3339_nanos(s.as_bytes()).unwrap();
                assert_eq!(
                    next - prev,
                    days_in_month(year, month) * 86_400_000_000_000,
                    "{s}"
                );
                prev = next;
            }
        }
    }

    #[test]
    fn detect_formats() {
        assert_eq!(
            detect(b"2016-10-06T00:17:09.669794202Z stdout F hello\n"),
            Format::Cri
        );
        assert_eq!(
            detect(b"2016-10-06T00:17:09.669794202Z stderr P:x hello"),
            Format::Cri
        );
        assert_eq!(
            detect(
                b"{\"log\":\"hi\\n\",\"stream\":\"stdout\",\"time\":\"2019-01-01T00:00:00Z\"}\n"
            ),
            Format::DockerJson
        );
        // Truncated first line: still the Docker file format.
        assert_eq!(detect(b"{\"log\":\"hi"), Format::DockerJson);
        assert_eq!(
            detect(b"{\"stream\":\"stdout\",\"log\":\"hi\\n\",\"time\":\"2019-01-01T00:00:00Z\"}"),
            Format::DockerJson
        );
        assert_eq!(
            detect(b"{\"level\":\"info\",\"msg\":\"hi\"}\n"),
            Format::Plain
        );
        assert_eq!(detect(b"hello world\n"), Format::Plain);
        assert_eq!(detect(b"2016-10-06 stdout F hello\n"), Format::Plain);
        assert_eq!(detect(b""), Format::Plain);
    }

    #[test]
    fn parser_cri() {
        let mut p = Parser::new(1024);
        let mut out = Vec::new();
        p.push_line(b"2016-10-06T00:17:09.000000001Z stdout P hel\n", &mut out)
            .unwrap();
        p.push_line(b"2016-10-06T00:17:09.000000002Z stderr F oops\n", &mut out)
            .unwrap();
        assert_eq!(
            p.push_line(b"garbage\n", &mut out).map(|_| ()),
            Err(ParseError::MissingField("timestamp"))
        );
        p.push_line(b"2016-10-06T00:17:09.000000003Z stdout F lo\n", &mut out)
            .unwrap();
        assert_eq!(p.format(), Some(Format::Cri));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].stderr, &out[0].message[..]), (true, &b"oops\n"[..]));
        assert_eq!(
            (out[1].stderr, &out[1].message[..]),
            (false, &b"hello\n"[..])
        );
        assert_eq!(out[1].timestamp_ns, 1_475_713_029_000_000_001);
    }

    #[test]
    fn parser_docker() {
        let mut p = Parser::new(1024);
        let mut out = Vec::new();
        for line in [
            &br#"{"log":"part one, ","stream":"stdout","time":"2019-01-01T00:00:00.000000001Z"}"#[..],
            br#"{"log":"err\n","stream":"stderr","time":"2019-01-01T00:00:00.000000002Z"}"#,
            br#"{"log":"part two\n","stream":"stdout","time":"2019-01-01T00:00:00.000000003Z"}"#,
        ] {
            p.push_line(line, &mut out).unwrap();
        }
        assert_eq!(p.format(), Some(Format::DockerJson));
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].message[..], b"err\n");
        assert_eq!(&out[1].message[..], b"part one, part two\n");
        assert_eq!(out[1].timestamp_ns, 1_546_300_800_000_000_001);
    }

    #[test]
    fn parser_plain() {
        let mut p = Parser::new(8);
        let mut out = Vec::new();
        p.push_line(b"hello\n", &mut out).unwrap();
        p.push_line(b"a rather long line\n", &mut out).unwrap();
        p.push_line(b"\xff\xfe\n", &mut out).unwrap();
        assert_eq!(p.format(), Some(Format::Plain));
        let expected: [(&[u8], bool); 3] = [
            (b"hello\n", false),
            (b"a rather", true),
            (b"\xff\xfe\n", false),
        ];
        assert_eq!(out.len(), 3);
        for (line, (msg, truncated)) in out.iter().zip(expected) {
            assert_eq!((&line.message[..], line.truncated), (msg, truncated));
            assert_eq!(
                (line.timestamp_ns, line.stderr, line.partial),
                (0, false, false)
            );
        }
    }

    #[test]
    fn parser_with_format_and_flush() {
        let mut p = Parser::with_format(Format::Cri, 1024);
        let mut out = Vec::new();
        p.push_line(b"2016-10-06T00:17:09Z stdout P abc\n", &mut out)
            .unwrap();
        assert_eq!(p.buffered_bytes(), 3);
        p.flush(&mut out);
        assert_eq!(p.buffered_bytes(), 0);
        assert_eq!(out.len(), 1);
        assert!(out[0].partial);
        assert_eq!(&out[0].message[..], b"abc");
    }

    #[test]
    fn parser_releases_big_scratch() {
        let mut p = Parser::with_format(Format::DockerJson, 1 << 20);
        let mut out = Vec::new();
        let big = "x".repeat(200_000);
        let line =
            format!(r#"{{"log":"{big}\n","stream":"stdout","time":"2019-01-01T00:00:00Z"}}"#);
        p.push_line(line.as_bytes(), &mut out).unwrap();
        assert_eq!(out[0].message.len(), 200_001);
        assert_eq!(p.scratch.capacity(), 0);
        // Also when the big line turns out to be malformed.
        let bad = format!(r#"{{"log":"{big}\n","stream":"stdout"}}"#);
        assert!(p.push_line(bad.as_bytes(), &mut out).is_err());
        assert_eq!(p.scratch.capacity(), 0);
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        fn lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
            let line = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..128),
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                    |(p, tail)| {
                        let mut l =
                            format!("2024-01-01T00:00:00Z stdout {} ", if p { "P" } else { "F" })
                                .into_bytes();
                        l.extend_from_slice(&tail);
                        l
                    }
                ),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
                    let mut l = br#"{"log":""#.to_vec();
                    l.extend_from_slice(&tail);
                    l.extend_from_slice(br#"","stream":"stderr","time":"2024-01-01T00:00:00Z"}"#);
                    l
                }),
            ];
            proptest::collection::vec(line, 0..24)
        }

        proptest! {
            #[test]
            fn every_parser_survives_arbitrary_lines(lines in lines(), max in 0usize..48) {
                let parsers = [
                    Parser::new(max),
                    Parser::with_format(Format::Cri, max),
                    Parser::with_format(Format::DockerJson, max),
                    Parser::with_format(Format::Plain, max),
                ];
                for mut parser in parsers {
                    let mut out = Vec::new();
                    for line in &lines {
                        let _ = parser.push_line(line, &mut out);
                        prop_assert!(parser.buffered_bytes() <= 2 * max);
                    }
                    parser.flush(&mut out);
                    prop_assert_eq!(parser.buffered_bytes(), 0);
                    for l in &out {
                        prop_assert!(l.message.len() <= max);
                    }
                }
                for line in &lines {
                    let _ = detect(line);
                    let _ = parse_rfc3339_nanos(line);
                }
            }

            #[test]
            fn rfc3339_matches_naive_reference(
                year in 1678i64..2262,
                month in 1i64..=12,
                day in 1i64..=31,
                (hour, minute, second) in (0i64..24, 0i64..60, 0i64..60),
                frac_digits in 0usize..=9,
                frac in 0i64..1_000_000_000,
                offset_min in -1439i64..=1439, // ±23:59
                zulu in any::<bool>(),
            ) {
                let frac = frac % 10_i64.pow(frac_digits as u32);
                let frac_str = if frac_digits == 0 {
                    String::new()
                } else {
                    format!(".{frac:0frac_digits$}")
                };
                let offset = if zulu { 0 } else { offset_min };
                let zone = if zulu {
                    "Z".to_string()
                } else {
                    let sign = if offset < 0 { '-' } else { '+' };
                    format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
                };
                let s = format!(
                    "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{frac_str}{zone}"
                );
                let got = parse_rfc3339_nanos(s.as_bytes());
                if day > days_in_month(year, month) {
                    prop_assert_eq!(got, None);
                    return Ok(());
                }
                // Naive reference: count whole days year by year, month by month.
                let mut days = 0_i64;
                for y in year.min(1970)..year.max(1970) {
                    let len = if is_leap(y) { 366 } else { 365 };
                    days += if year < 1970 { -len } else { len };
                }
                days += (1..month).map(|m| days_in_month(year, m)).sum::<i64>() + day - 1;
                let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
                let nanos = frac * 10_i64.pow(9 - frac_digits as u32);
                let expected = i64::try_from(i128::from(secs) * 1_000_000_000 + i128::from(nanos)).ok();
                prop_assert_eq!(got, expected, "{}", s);
            }
        }
    }
}
