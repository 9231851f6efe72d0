//! The CRI container log format, as written by containerd and CRI-O.
//!
//! Each line of the file is one record:
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout P log content 1
//! 2016-10-06T00:17:09.669794203Z stderr F log content 2
//! ```
//!
//! that is `<RFC 3339 time> <stream> <tags> <message>`, fields separated by a
//! single space. `tags` is a `:`-separated list whose first element is `P`
//! for a partial record (a fragment of a longer line, continued by the next
//! record of the same stream) or `F` for a full one; later tags are reserved
//! for future use and ignored.

use std::borrow::Cow;

use memchr::memchr;

use super::{ParseError, Record, parse_rfc3339_nanos};

/// Separator between the fields of a record.
const DELIMITER: u8 = b' ';
/// Separator between the tags of a record.
const TAG_DELIMITER: u8 = b':';
/// First tag of a partial record.
const TAG_PARTIAL: &[u8] = b"P";

/// Parses one line of a CRI log file, including its trailing `\n` if present.
///
/// This mirrors the kubelet's `parseCRILog` in
/// `pkg/kubelet/kuberuntime/logs/logs.go`: the timestamp, stream and tags are
/// each ended by the first space after them; the stream must be `stdout` or
/// `stderr`; the record is partial exactly when the first `:`-separated tag is
/// `P`, and any other tag (`F`, `F:x`, unknown tags) means a full record.
///
/// The message keeps its terminator: for a full record the `\n` that ends the
/// file line is the end of the container's line and stays in the message
/// (so does a `\r` before it, or a lone `\r` ending). For a partial record the
/// trailing `\n` is only the runtime's record separator and is removed, as the
/// kubelet does. A line without a trailing `\n` (the incomplete last line of a
/// file) keeps its message as is.
///
/// The message borrows from `line`. Errors: [`ParseError::MissingField`] when
/// a space is missing, [`ParseError::InvalidTimestamp`] and
/// [`ParseError::InvalidStream`] for bad field values.
pub fn parse(line: &[u8]) -> Result<Record<'_>, ParseError> {
    let (timestamp, rest) = split_field(line, "timestamp")?;
    let timestamp_ns = parse_rfc3339_nanos(timestamp).ok_or(ParseError::InvalidTimestamp)?;

    let (stream, rest) = split_field(rest, "stream")?;
    let stderr = match stream {
        b"stdout" => false,
        b"stderr" => true,
        _ => return Err(ParseError::InvalidStream),
    };

    let (tags, mut message) = split_field(rest, "tags")?;
    let first_tag = memchr(TAG_DELIMITER, tags).map_or(tags, |i| &tags[..i]);
    let partial = first_tag == TAG_PARTIAL;
    if partial && let Some(stripped) = message.strip_suffix(b"\n") {
        message = stripped;
    }

    Ok(Record {
        timestamp_ns,
        stderr,
        partial,
        message: Cow::Borrowed(message),
    })
}

/// Splits `s` at its first space into the field before it and the rest after.
fn split_field<'a>(s: &'a [u8], name: &'static str) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    let i = memchr(DELIMITER, s).ok_or(ParseError::MissingField(name))?;
    Ok((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::format::{MergedLine, Merger};

    const TS: &str = "2016-10-06T00:17:09.669794202Z";
    const TS_NS: i64 = 1_475_713_029_669_794_202;

    fn rec(line: &[u8]) -> Record<'_> {
        parse(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)))
    }

    #[test]
    fn full_record() {
        let line = format!("{TS} stdout F hello world\n");
        let r = rec(line.as_bytes());
        assert_eq!(r.timestamp_ns, TS_NS);
        assert!(!r.stderr);
        assert!(!r.partial);
        assert_eq!(&*r.message, b"hello world\n");
        assert!(matches!(r.message, Cow::Borrowed(_)));
    }

    #[test]
    fn message_keeps_inner_spaces_and_may_be_empty() {
        let line = format!("{TS} stderr F  two  spaces \n");
        let r = rec(line.as_bytes());
        assert!(r.stderr);
        assert_eq!(&*r.message, b" two  spaces \n");

        let line = format!("{TS} stdout F \n");
        assert_eq!(&*rec(line.as_bytes()).message, b"\n");
        let line = format!("{TS} stdout P \n");
        assert_eq!(&*rec(line.as_bytes()).message, b"");
    }

    #[test]
    fn partial_record_drops_separator_only() {
        let line = format!("{TS} stdout P first half\n");
        let r = rec(line.as_bytes());
        assert!(r.partial);
        assert_eq!(&*r.message, b"first half");

        // A '\r' at the end of a fragment is content, not a terminator.
        let line = format!("{TS} stdout P half\r\n");
        assert_eq!(&*rec(line.as_bytes()).message, b"half\r");
        // Only one '\n' is the separator.
        let line = format!("{TS} stdout P half\n\n");
        assert_eq!(&*rec(line.as_bytes()).message, b"half\n");
    }

    #[test]
    fn line_endings_kept_as_written() {
        for (body, msg) in [
            ("crlf\r\n", &b"crlf\r\n"[..]),
            ("cr\r", b"cr\r"),
            ("none", b"none"),
            ("lf\n", b"lf\n"),
        ] {
            let line = format!("{TS} stdout F {body}");
            assert_eq!(&*rec(line.as_bytes()).message, msg);
        }
    }

    #[test]
    fn tags() {
        for (tags, partial) in [
            ("F", false),
            ("P", true),
            ("F:x", false),
            ("P:x:y", true),
            ("X", false),
            ("", false),
            ("PP", false),
            ("p", false),
        ] {
            let line = format!("{TS} stdout {tags} msg\n");
            let r = rec(line.as_bytes());
            assert_eq!(r.partial, partial, "tags {tags:?}");
            assert_eq!(&*r.message, if partial { &b"msg"[..] } else { b"msg\n" });
        }
    }

    #[test]
    fn timezone_offsets() {
        let line = b"2016-10-06T02:17:09.669794202+02:00 stdout F x\n";
        assert_eq!(rec(line).timestamp_ns, TS_NS);
        let line = b"2016-10-05T19:17:09.669794202-05:00 stdout F x\n";
        assert_eq!(rec(line).timestamp_ns, TS_NS);
        let line = b"2016-10-06T00:17:09Z stdout F x\n";
        assert_eq!(rec(line).timestamp_ns, 1_475_713_029_000_000_000);
    }

    #[test]
    fn malformed_lines() {
        use ParseError::*;
        for (line, err) in [
            (&b""[..], MissingField("timestamp")),
            (b"\n", MissingField("timestamp")),
            (b"2016-10-06T00:17:09Z\n", MissingField("timestamp")),
            (b"2016-10-06T00:17:09Z stdout\n", MissingField("stream")),
            (b"2016-10-06T00:17:09Z stdout F\n", MissingField("tags")),
            (b"2016-10-06T00:17:09Z stdout F", MissingField("tags")),
            (b"2016-10-06 00:17:09Z stdout F x\n", InvalidTimestamp),
            (b"2016-10-06T00:17:09 stdout F x\n", InvalidTimestamp),
            (b"2016-13-06T00:17:09Z stdout F x\n", InvalidTimestamp),
            (b"not-a-time stdout F x\n", InvalidTimestamp),
            (b" stdout F x\n", InvalidTimestamp),
            (b"2016-10-06T00:17:09Z stdin F x\n", InvalidStream),
            (b"2016-10-06T00:17:09Z STDOUT F x\n", InvalidStream),
            (b"2016-10-06T00:17:09Z  stdout F x\n", InvalidStream),
        ] {
            assert_eq!(parse(line), Err(err), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn non_utf8_message_stays_bytes() {
        let mut line = format!("{TS} stdout F ").into_bytes();
        line.extend_from_slice(b"\xff\x00\xc3(\n");
        assert_eq!(&*rec(&line).message, b"\xff\x00\xc3(\n");
    }

    // ---- round trip: write messages as CRI records, parse and merge back ----

    /// One logical line: its stream, body (no '\n') and split points.
    type Message = (bool, Vec<u8>, Vec<usize>);

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<bool>(),
            proptest::collection::vec(
                any::<u8>().prop_map(|b| if b == b'\n' { b'.' } else { b }),
                0..300,
            ),
            proptest::collection::vec(any::<usize>(), 0..6),
        )
    }

    /// Writes `body` as CRI records: P fragments at the split points, then
    /// an F record with the final fragment and the terminating '\n'.
    fn to_cri(ts: usize, stderr: bool, body: &[u8], splits: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let stream = if stderr { "stderr" } else { "stdout" };
        let mut lines = Vec::new();
        let mut start = 0;
        let record = |tag: &str, frag: &[u8]| {
            let mut l = format!("2024-05-01T12:00:00.{ts:09}Z {stream} {tag} ").into_bytes();
            l.extend_from_slice(frag);
            l.push(b'\n');
            l
        };
        for cut in cuts {
            lines.push(record("P", &body[start..cut]));
            start = cut;
        }
        lines.push(record("F", &body[start..]));
        lines
    }

    /// Interleaves two queues of lines, preserving each queue's order.
    fn interleave(a: Vec<Vec<u8>>, b: Vec<Vec<u8>>, picks: &[bool]) -> Vec<Vec<u8>> {
        let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
        let mut picks = picks.iter().cycle();
        let mut out = Vec::new();
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => return out,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                _ => *picks.next().unwrap_or(&true),
            };
            out.extend(if take_a { a.next() } else { b.next() });
        }
    }

    fn run(lines: &[Vec<u8>], max: usize) -> Vec<MergedLine> {
        let mut merger = Merger::new(max);
        let mut out = Vec::new();
        for line in lines {
            merger.push(parse(line).unwrap(), &mut out);
        }
        assert_eq!(merger.buffered_bytes(), 0);
        out
    }

    proptest! {
        #[test]
        fn roundtrip_interleaved(
            messages in proptest::collection::vec(message(), 0..20),
            picks in proptest::collection::vec(any::<bool>(), 1..64),
        ) {
            let (mut out_q, mut err_q) = (Vec::new(), Vec::new());
            let mut expected: [Vec<(i64, Vec<u8>)>; 2] = Default::default();
            for (i, (stderr, body, splits)) in messages.iter().enumerate() {
                let lines = to_cri(i, *stderr, body, splits);
                let ts = parse(&lines[0]).unwrap().timestamp_ns;
                let mut full = body.clone();
                full.push(b'\n');
                expected[usize::from(*stderr)].push((ts, full));
                if *stderr { err_q.extend(lines) } else { out_q.extend(lines) }
            }
            let merged = run(&interleave(out_q, err_q, &picks), 1 << 20);
            for stderr in [false, true] {
                let got: Vec<(i64, Vec<u8>)> = merged
                    .iter()
                    .filter(|m| m.stderr == stderr)
                    .inspect(|m| assert!(!m.partial && !m.truncated))
                    .map(|m| (m.timestamp_ns, m.message.to_vec()))
                    .collect();
                prop_assert_eq!(&got, &expected[usize::from(stderr)]);
            }
        }

        #[test]
        fn roundtrip_truncated(
            messages in proptest::collection::vec(message(), 0..10),
            max in 0usize..64,
        ) {
            let mut lines = Vec::new();
            for (i, (stderr, body, splits)) in messages.iter().enumerate() {
                lines.extend(to_cri(i, *stderr, body, splits));
            }
            let merged = run(&lines, max);
            prop_assert_eq!(merged.len(), messages.len());
            for (m, (stderr, body, _)) in merged.iter().zip(&messages) {
                let mut full = body.clone();
                full.push(b'\n');
                let truncated = full.len() > max;
                full.truncate(max);
                prop_assert_eq!(m.stderr, *stderr);
                prop_assert_eq!(m.truncated, truncated);
                prop_assert_eq!(&m.message[..], &full[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&line);
        }

        #[test]
        fn near_valid_lines_never_panic(
            stream in "(stdout|stderr|std)?",
            tags in "[PF:x]{0,4}",
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut line = format!("{TS} {stream} {tags}").into_bytes();
            line.extend_from_slice(&rest);
            if let Ok(r) = parse(&line) {
                prop_assert!(line.ends_with(&r.message) || r.partial);
            }
        }
    }
}
