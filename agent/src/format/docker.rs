//! Docker's `json-file` log format.
//!
//! Each line of the file is one JSON object:
//!
//! ```text
//! {"log":"hello\n","stream":"stdout","time":"2019-01-01T00:00:00.000000000Z"}
//! ```
//!
//! Members may come in any order; unknown members (such as `attrs`) are
//! skipped. Docker splits lines longer than 16 KiB into several records, all
//! but the last of which have a `log` value that does not end in `\n`.
//!
//! This mirrors the kubelet's `parseDockerJSONLog` in
//! `pkg/kubelet/kuberuntime/logs/logs.go` (a record decoded into
//! `jsonlog.JSONLog{Log, Stream, Created}`, `time` being the RFC 3339 `Created`),
//! and Docker's writer, `daemon/logger/jsonfilelog` in moby (`jsonlog.JSONLogs`,
//! with partial messages written without their trailing `\n`).
//!
//! The JSON is read by a small hand-written scanner over bytes: it validates
//! the whole object, decodes the `log`, `stream` and `time` strings and never
//! panics. Bytes that are not UTF-8 pass through untouched.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use super::{ParseError, Record, parse_rfc3339_nanos};

/// How deeply unknown members may nest arrays and objects.
const MAX_DEPTH: u32 = 32;

/// Parses one line of a Docker json-file log (trailing `\n` allowed).
///
/// The record is partial when its `log` value does not end in `\n`. The
/// message is always owned because the `log` value has to be unescaped; see
/// [`parse_into`] to reuse a buffer instead.
///
/// Like Go's `encoding/json` (which the kubelet and Docker use), a `\u`
/// escape of an unpaired UTF-16 surrogate decodes to U+FFFD, and a member
/// given twice takes its last value.
pub fn parse(line: &[u8]) -> Result<Record<'static>, ParseError> {
    let mut buf = Vec::new();
    let rec = parse_into(line, &mut buf)?;
    let (timestamp_ns, stderr, partial) = (rec.timestamp_ns, rec.stderr, rec.partial);
    Ok(Record {
        timestamp_ns,
        stderr,
        partial,
        message: Cow::Owned(buf),
    })
}

/// Like [`parse`], but unescapes the message into `scratch` (cleared first)
/// and borrows it, so a caller parsing many lines can reuse one allocation.
pub fn parse_into<'b>(line: &[u8], scratch: &'b mut Vec<u8>) -> Result<Record<'b>, ParseError> {
    scratch.clear();
    let mut s = Scanner { buf: line, pos: 0 };
    let mut key_buf = Vec::new();
    let mut have_log = false;
    let mut stderr = None;
    let mut time = None;

    s.skip_ws();
    s.expect(b'{')?;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            let key = s.string()?;
            let key = key.decode(line, &mut key_buf)?;
            let field = match key {
                b"log" => Some(Field::Log),
                b"stream" => Some(Field::Stream),
                b"time" => Some(Field::Time),
                _ => None,
            };
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            match field {
                None => s.skip_value(0, &mut key_buf)?,
                Some(field) => {
                    if s.peek() != Some(b'"') {
                        return Err(ParseError::InvalidFieldType(field.name()));
                    }
                    let value = s.string()?;
                    match field {
                        Field::Log => {
                            scratch.clear();
                            value.unescape_into(line, scratch)?;
                            have_log = true;
                        }
                        Field::Stream => {
                            stderr = match value.decode(line, &mut key_buf)? {
                                b"stdout" => Some(false),
                                b"stderr" => Some(true),
                                _ => return Err(ParseError::InvalidStream),
                            };
                        }
                        Field::Time => {
                            let raw = value.decode(line, &mut key_buf)?;
                            time =
                                Some(parse_rfc3339_nanos(raw).ok_or(ParseError::InvalidTimestamp)?);
                        }
                    }
                }
            }
            s.skip_ws();
            match s.bump() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(s.error()),
            }
        }
    }
    s.skip_ws();
    if s.pos != line.len() {
        return Err(s.error());
    }

    if !have_log {
        return Err(ParseError::MissingField("log"));
    }
    let stderr = stderr.ok_or(ParseError::MissingField("stream"))?;
    let timestamp_ns = time.ok_or(ParseError::MissingField("time"))?;
    let partial = !scratch.ends_with(b"\n");
    Ok(Record {
        timestamp_ns,
        stderr,
        partial,
        message: Cow::Borrowed(scratch),
    })
}

/// The members of a record that matter.
#[derive(Clone, Copy)]
enum Field {
    Log,
    Stream,
    Time,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Log => "log",
            Field::Stream => "stream",
            Field::Time => "time",
        }
    }
}

/// The body of a JSON string literal: `line[start..end]`, between the quotes.
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Str {
    /// The decoded string: borrowed from `line` when it has no escapes, else
    /// unescaped into `buf`.
    fn decode<'a>(&self, line: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], ParseError> {
        if self.escaped {
            buf.clear();
            self.unescape_into(line, buf)?;
            Ok(buf)
        } else {
            let raw = &line[self.start..self.end];
            check_no_control(raw, self.start)?;
            Ok(raw)
        }
    }

    /// Appends the decoded string to `out`.
    fn unescape_into(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
        unescape_into(&line[self.start..self.end], self.start, out)
    }
}

/// Rejects raw control characters, which JSON strings must escape.
fn check_no_control(raw: &[u8], base: usize) -> Result<(), ParseError> {
    // Branch-free scan first (vectorizes); locate the byte only on failure.
    if !raw.iter().fold(false, |found, &b| found | (b < 0x20)) {
        return Ok(());
    }
    let i = raw.iter().position(|&b| b < 0x20).unwrap_or(0);
    Err(ParseError::InvalidJson { offset: base + i })
}

/// Decodes the body of a JSON string literal (without its quotes) and
/// appends it to `out`. `base` is the offset of `raw` in the line, for errors.
///
/// Handles `\" \\ \/ \b \f \n \r \t` and `\uXXXX`, combining surrogate pairs;
/// an unpaired surrogate becomes U+FFFD. Other bytes are copied unchanged,
/// so invalid UTF-8 passes through.
fn unescape_into(raw: &[u8], base: usize, out: &mut Vec<u8>) -> Result<(), ParseError> {
    out.reserve(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let j = memchr(b'\\', &raw[i..]).map_or(raw.len(), |k| i + k);
        let chunk = &raw[i..j];
        check_no_control(chunk, base + i)?;
        out.extend_from_slice(chunk);
        if j == raw.len() {
            break;
        }
        let bad = ParseError::InvalidEscape { offset: base + j };
        let escape = *raw.get(j + 1).ok_or_else(|| bad.clone())?;
        i = j + 2;
        let byte = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(raw, i).ok_or(bad)?;
                i += 4;
                let c = match unit {
                    0xD800..=0xDBFF => match low_surrogate(raw, i) {
                        Some(low) => {
                            i += 6;
                            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                        }
                        None => None,
                    },
                    _ => char::from_u32(unit),
                };
                let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return Err(bad),
        };
        out.push(byte);
    }
    Ok(())
}

/// The value of the `\uXXXX` escape at `raw[at..]` if it is a low surrogate.
fn low_surrogate(raw: &[u8], at: usize) -> Option<u32> {
    if raw.get(at..at + 2)? != b"\\u" {
        return None;
    }
    hex4(raw, at + 2).filter(|u| (0xDC00..=0xDFFF).contains(u))
}

/// Four hex digits at `raw[at..]`.
fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    raw.get(at..at + 4)?.iter().try_fold(0_u32, |acc, &b| {
        Some(acc << 4 | char::from(b).to_digit(16)?)
    })
}

/// A cursor over one line of JSON.
struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn error(&self) -> ParseError {
        ParseError::InvalidJson {
            offset: self.pos.min(self.buf.len()),
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Scans a string literal starting at the cursor and returns its body.
    /// Escapes are only skipped here; they are checked when decoding.
    fn string(&mut self) -> Result<Str, ParseError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        let mut i = start;
        loop {
            let Some(k) = memchr2(b'"', b'\\', &self.buf[i..]) else {
                self.pos = self.buf.len();
                return Err(self.error());
            };
            let at = i + k;
            if self.buf[at] == b'"' {
                self.pos = at + 1;
                return Ok(Str {
                    start,
                    end: at,
                    escaped,
                });
            }
            escaped = true;
            i = at + 2;
            if i > self.buf.len() {
                self.pos = self.buf.len();
                return Err(self.error());
            }
        }
    }

    /// Skips and validates any JSON value; `scratch` is used to check the
    /// escapes of strings.
    fn skip_value(&mut self, depth: u32, scratch: &mut Vec<u8>) -> Result<(), ParseError> {
        if depth >= MAX_DEPTH {
            return Err(self.error());
        }
        match self.peek() {
            Some(b'"') => {
                self.string()?.decode(self.buf, scratch)?;
            }
            Some(b'{') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.string()?.decode(self.buf, scratch)?;
                    self.skip_ws();
                    self.expect(b':')?;
                    self.skip_ws();
                    self.skip_value(depth + 1, scratch)?;
                    self.skip_ws();
                    match self.bump() {
                        Some(b',') => continue,
                        Some(b'}') => return Ok(()),
                        _ => return Err(self.error()),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.skip_value(depth + 1, scratch)?;
                    self.skip_ws();
                    match self.bump() {
                        Some(b',') => continue,
                        Some(b']') => return Ok(()),
                        _ => return Err(self.error()),
                    }
                }
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.error()),
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ParseError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), ParseError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits1()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.digits1()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn digits1(&mut self) -> Result<(), ParseError> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error());
        }
        self.digits();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::format::Merger;

    const T: &str = "2019-01-01T00:00:00.000000001Z";
    const T_NS: i64 = 1_546_300_800_000_000_001;

    fn line(log_json: &str) -> String {
        format!(r#"{{"log":{log_json},"stream":"stdout","time":"{T}"}}"#)
    }

    fn message(log_json: &str) -> Result<Vec<u8>, ParseError> {
        parse(line(log_json).as_bytes()).map(|r| r.message.into_owned())
    }

    #[test]
    fn full_record() {
        let l = format!("{}\n", line(r#""hello\n""#));
        let r = parse(l.as_bytes()).unwrap();
        assert_eq!(r.timestamp_ns, T_NS);
        assert!(!r.stderr);
        assert!(!r.partial);
        assert_eq!(&*r.message, b"hello\n");
    }

    #[test]
    fn members_in_any_order_unknown_ignored() {
        let l = format!(
            r#" {{ "attrs" : {{"a":[1,-2.5e+3,true,false,null,{{}},[]],"b":"\u00e9"}}, "time":"{T}" ,
                "stream":"stderr","extra":0.5E-1,"log":"x\r\n" }} "#
        )
        .replace('\n', " ");
        let r = parse(l.as_bytes()).unwrap();
        assert!(r.stderr);
        assert_eq!(r.timestamp_ns, T_NS);
        assert_eq!(&*r.message, b"x\r\n");
        assert!(!r.partial);
    }

    #[test]
    fn duplicate_member_last_wins() {
        let l = format!(r#"{{"log":"a\n","log":"bb\n","stream":"stdout","time":"{T}"}}"#);
        assert_eq!(&*parse(l.as_bytes()).unwrap().message, b"bb\n");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            message(r#""q\" b\\ s\/ \b\f\n\r\t""#).unwrap(),
            b"q\" b\\ s/ \x08\x0c\n\r\t"
        );
        assert_eq!(
            message(r#""\u0041\u00e9\u20AC\u0000""#).unwrap(),
            "Aé€\0".as_bytes()
        );
        // Docker escapes these for HTML safety.
        assert_eq!(
            message(r#""\u003chtml\u003e \u0026""#).unwrap(),
            b"<html> &"
        );
        // Surrogate pairs, either case.
        assert_eq!(
            message(r#""\ud83d\ude00 \uD834\uDD1E""#).unwrap(),
            "😀 𝄞".as_bytes()
        );
        // Raw UTF-8 and raw invalid UTF-8 pass through.
        assert_eq!(message("\"h\u{e9}\u{1F600}\"").unwrap(), "hé😀".as_bytes());
        let mut l = br#"{"log":"a"#.to_vec();
        l.extend_from_slice(b"\xff\xc3(");
        l.extend_from_slice(br#"","stream":"stdout","time":"2019-01-01T00:00:00Z"}"#);
        assert_eq!(&*parse(&l).unwrap().message, b"a\xff\xc3(");
    }

    #[test]
    fn unpaired_surrogates_become_replacement() {
        let fffd = "\u{FFFD}";
        assert_eq!(message(r#""\ud83d""#).unwrap(), fffd.as_bytes());
        assert_eq!(
            message(r#""\ud83dx""#).unwrap(),
            format!("{fffd}x").as_bytes()
        );
        assert_eq!(
            message(r#""\ude00\ud83d""#).unwrap(),
            format!("{fffd}{fffd}").as_bytes()
        );
        // High surrogate followed by a non-surrogate escape: both decoded.
        assert_eq!(
            message(r#""\ud83d\u0041""#).unwrap(),
            format!("{fffd}A").as_bytes()
        );
        assert_eq!(
            message(r#""\ud83d\n""#).unwrap(),
            format!("{fffd}\n").as_bytes()
        );
    }

    #[test]
    fn invalid_escapes_rejected() {
        for (log, offset) in [
            (r#""\x""#, 8),
            (r#""ab\a""#, 10),
            (r#""\u12""#, 8),
            (r#""\u12G4""#, 8),
            (r#""\u""#, 8),
            (r#""\U0041""#, 8),
            (r#""\ud83d\uZZZZ""#, 14),
            (r#""\'""#, 8),
        ] {
            assert_eq!(
                message(log),
                Err(ParseError::InvalidEscape { offset }),
                "{log}"
            );
        }
    }

    #[test]
    fn malformed_json_rejected() {
        for l in [
            "",
            "\n",
            "{",
            "[]",
            "null",
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z""#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z"}}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z"} x"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z",}"#,
            r#"{"log":"a\n" "stream":"stdout","time":"2019-01-01T00:00:00Z"}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":01}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":1.}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":-}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":tru}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":[1,]}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":{"a"}}"#,
            r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T00:00:00Z","x":'a'}"#,
            "{\"log\":\"tab\there\",\"stream\":\"stdout\",\"time\":\"2019-01-01T00:00:00Z\"}",
            r#"{"log":"unterminated\"}"#,
            r#"{"log":"a\"#,
        ] {
            assert!(
                matches!(parse(l.as_bytes()), Err(ParseError::InvalidJson { .. })),
                "{l:?} -> {:?}",
                parse(l.as_bytes())
            );
        }
    }

    #[test]
    fn deep_nesting_rejected_without_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let l = format!(r#"{{"x":{deep},"log":"a\n","stream":"stdout","time":"{T}"}}"#);
        assert!(matches!(
            parse(l.as_bytes()),
            Err(ParseError::InvalidJson { .. })
        ));
        let ok = format!("{}{}", "[".repeat(31), "]".repeat(31));
        let l = format!(r#"{{"x":{ok},"log":"a\n","stream":"stdout","time":"{T}"}}"#);
        assert!(parse(l.as_bytes()).is_ok());
    }

    #[test]
    fn missing_and_mistyped_fields() {
        use ParseError::*;
        for (l, err) in [
            (r#"{}"#.to_string(), MissingField("log")),
            (
                format!(r#"{{"stream":"stdout","time":"{T}"}}"#),
                MissingField("log"),
            ),
            (
                format!(r#"{{"log":"a\n","time":"{T}"}}"#),
                MissingField("stream"),
            ),
            (
                r#"{"log":"a\n","stream":"stdout"}"#.to_string(),
                MissingField("time"),
            ),
            (
                format!(r#"{{"log":null,"stream":"stdout","time":"{T}"}}"#),
                InvalidFieldType("log"),
            ),
            (
                format!(r#"{{"log":"a","stream":1,"time":"{T}"}}"#),
                InvalidFieldType("stream"),
            ),
            (
                r#"{"log":"a","stream":"stdout","time":0}"#.to_string(),
                InvalidFieldType("time"),
            ),
            (
                format!(r#"{{"log":"a","stream":"stdin","time":"{T}"}}"#),
                InvalidStream,
            ),
            (
                r#"{"log":"a","stream":"stdout","time":"yesterday"}"#.to_string(),
                InvalidTimestamp,
            ),
        ] {
            assert_eq!(parse(l.as_bytes()), Err(err), "{l}");
        }
    }

    #[test]
    fn escaped_keys_and_values_decoded() {
        let l =
            r#"{"\u006cog":"a\n","str\u0065am":"std\u0065rr","time":"2019-01-01T00:00:00\u005a"}"#;
        let r = parse(l.as_bytes()).unwrap();
        assert!(r.stderr);
        assert_eq!(r.timestamp_ns, 1_546_300_800_000_000_000);
    }

    #[test]
    fn time_with_offset() {
        let l = r#"{"log":"a\n","stream":"stdout","time":"2019-01-01T01:00:00.000000001+01:00"}"#;
        assert_eq!(parse(l.as_bytes()).unwrap().timestamp_ns, T_NS);
    }

    #[test]
    fn sixteen_kib_split_is_merged() {
        // Docker cuts a long line into 16 KiB records; only the last ends in \n.
        let body: String = (0..40_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut full = body.clone();
        full.push('\n');
        let chunks: Vec<&str> = [&full[..16384], &full[16384..32768], &full[32768..]].into();
        let mut merger = Merger::new(1 << 20);
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let json = chunk.replace('\n', "\\n");
            let l = format!(
                r#"{{"log":"{json}","stream":"stdout","time":"2019-01-01T00:00:00.00000000{i}Z"}}"#
            );
            let rec = parse(l.as_bytes()).unwrap();
            assert_eq!(rec.partial, i < 2);
            merger.push(rec, &mut out);
            assert_eq!(out.len(), usize::from(i == 2));
        }
        assert_eq!(out[0].message, full.as_bytes());
        assert_eq!(out[0].timestamp_ns, 1_546_300_800_000_000_000);
        assert!(!out[0].partial && !out[0].truncated);
    }

    #[test]
    fn parse_into_reuses_buffer() {
        let mut scratch = Vec::with_capacity(256);
        let ptr = scratch.as_ptr();
        let l = line(r#""reuse\n""#);
        let r = parse_into(l.as_bytes(), &mut scratch).unwrap();
        assert_eq!(&*r.message, b"reuse\n");
        assert!(matches!(r.message, Cow::Borrowed(_)));
        assert_eq!(scratch.as_ptr(), ptr);
    }

    // ---- round trip: encode messages as Docker records, parse and merge ----

    /// JSON-encodes `bytes` as Docker would, leaving non-ASCII bytes raw.
    fn encode(bytes: &[u8], out: &mut String) {
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                b'<' | b'>' | b'&' | 0..0x20 => out.push_str(&format!("\\u{b:04x}")),
                _ => out.push(char::from(b)),
            }
        }
    }

    /// Like [`encode`] but raw bytes may be invalid UTF-8, so build bytes.
    fn record(ts: usize, stderr: bool, frag: &[u8]) -> Vec<u8> {
        let stream = if stderr { "stderr" } else { "stdout" };
        let mut l = br#"{"log":""#.to_vec();
        for &b in frag {
            if b < 0x80 {
                let mut s = String::new();
                encode(&[b], &mut s);
                l.extend_from_slice(s.as_bytes());
            } else {
                l.push(b);
            }
        }
        l.extend_from_slice(
            format!(r#"","stream":"{stream}","time":"2024-05-01T12:00:00.{ts:09}Z"}}"#).as_bytes(),
        );
        l.push(b'\n');
        l
    }

    proptest! {
        #[test]
        fn roundtrip_interleaved(
            messages in proptest::collection::vec((
                any::<bool>(),
                proptest::collection::vec(any::<u8>().prop_map(|b| if b == b'\n' { b'.' } else { b }), 0..300),
                proptest::collection::vec(any::<usize>(), 0..6),
            ), 0..20),
            picks in proptest::collection::vec(any::<bool>(), 1..64),
        ) {
            let mut queues: [Vec<Vec<u8>>; 2] = Default::default();
            let mut expected: [Vec<(i64, Vec<u8>)>; 2] = Default::default();
            for (i, (stderr, body, splits)) in messages.iter().enumerate() {
                let mut full = body.clone();
                full.push(b'\n');
                // Docker never writes an empty fragment and only the last one ends in \n.
                let mut cuts: Vec<usize> = splits.iter().map(|s| 1 + s % full.len().max(1)).filter(|&c| c < full.len()).collect();
                cuts.sort_unstable();
                cuts.dedup();
                let mut start = 0;
                for cut in cuts.into_iter().chain([full.len()]) {
                    queues[usize::from(*stderr)].push(record(i, *stderr, &full[start..cut]));
                    start = cut;
                }
                expected[usize::from(*stderr)].push((parse(queues[usize::from(*stderr)].last().unwrap()).unwrap().timestamp_ns, full));
            }
            let [mut out_q, mut err_q] = queues.map(|q| q.into_iter());
            let mut picks = picks.iter().cycle();
            let mut merger = Merger::new(1 << 20);
            let mut merged = Vec::new();
            loop {
                let next = if *picks.next().unwrap() { out_q.next().or_else(|| err_q.next()) } else { err_q.next().or_else(|| out_q.next()) };
                let Some(l) = next else { break };
                merger.push(parse(&l).unwrap(), &mut merged);
            }
            prop_assert_eq!(merger.buffered_bytes(), 0);
            for stderr in [false, true] {
                let got: Vec<(i64, Vec<u8>)> = merged.iter().filter(|m| m.stderr == stderr).map(|m| (m.timestamp_ns, m.message.to_vec())).collect();
                prop_assert_eq!(got.len(), expected[usize::from(stderr)].len());
                for ((_, g), (_, e)) in got.iter().zip(&expected[usize::from(stderr)]) {
                    prop_assert_eq!(g, e);
                }
            }
        }

        #[test]
        fn unicode_escapes_roundtrip(s in any::<String>()) {
            let mut json = String::from("\"");
            for c in s.chars() {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    json.push_str(&format!("\\u{u:04X}"));
                }
            }
            json.push('"');
            prop_assert_eq!(message(&json).unwrap(), s.as_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(l in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&l);
        }

        #[test]
        fn near_valid_lines_never_panic(
            tail in proptest::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b'u'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
                Just(b':'), Just(b','), Just(b'd'), Just(b'8'), Just(b'0'), any::<u8>(),
            ], 0..64),
        ) {
            let mut l = br#"{"log":""#.to_vec();
            l.extend_from_slice(&tail);
            let _ = parse(&l);
            let mut l = format!(r#"{{"stream":"stdout","time":"{T}","x":"#).into_bytes();
            l.extend_from_slice(&tail);
            let _ = parse(&l);
        }
    }
}
