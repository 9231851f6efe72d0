//! From file bytes to numbered lines (pure: no I/O).
//!
//! [`RecordReader`] cuts the bytes of one file at `\n` into records, hands them to the format's
//! [`Parser`] (which reassembles partial records) and numbers the lines that come out. It is the
//! only place where lines are counted, so every reader of a stream (a follower, a backfill, the
//! backward search for `tail: N`) numbers the same line alike as long as it starts at a *clean
//! point*: a record boundary where no stream is in the middle of a line
//! ([`RecordReader::clean_point`]).
//!
//! Bounded: a record longer than `max_line_bytes` plus [`RECORD_SLACK`] is cut there (the line
//! it makes is truncated and flagged) and the rest of it, up to its `\n`, skipped. A record that
//! does not parse as the file's format is delivered as a raw line, never dropped.

use bytes::Bytes;
use logrelay_wire::batch::LineFlags;

use crate::format::{Format, MergedLine, Parser, detect};

/// Room for a record's own header (timestamp, stream, tags, JSON syntax) beyond the message.
pub const RECORD_SLACK: usize = 64 * 1024;

/// A line left open on one stream (its last record partial) is ended, flagged partial, once this
/// many bytes of the file have passed since that record. Runtimes write the records of one line
/// back to back, so this only ends lines whose writer died mid-line; it is what keeps the search
/// for a clean point short (see [`super::seek`]): a stream silent for this long is closed.
pub const PARTIAL_WINDOW: u64 = 1 << 20;

/// One numbered log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailLine {
    /// Sequence number within the stream's epoch.
    pub seq: u64,
    /// Unix nanoseconds (the runtime's record; the read time for plain text).
    pub timestamp_ns: i64,
    /// [`LineFlags`] bits.
    pub flags: u8,
    /// Message bytes with their terminator.
    pub message: Bytes,
}

/// Cuts records, parses and numbers lines; see the module doc.
#[derive(Debug)]
pub struct RecordReader {
    max_line_bytes: usize,
    max_record_bytes: usize,
    parser: Parser,
    /// Bytes of the record being read, before its `\n` arrives.
    pending: Vec<u8>,
    /// Skipping the rest of an over-long record, up to its `\n`.
    skipping: bool,
    /// File offset of the next byte fed.
    pos: u64,
    /// Sequence number of the next line.
    seq: u64,
    /// Latest clean point seen: `(offset, seq)`.
    clean: Option<(u64, u64)>,
    merged: Vec<MergedLine>,
    /// Stream of the last record pushed, until its end is reached.
    last_stream: Option<usize>,
    /// Offset where each stream's last record ended.
    last_end: [u64; 2],
    /// Records that did not parse as the file's format.
    pub parse_errors: u64,
    clock: fn() -> i64,
}

/// Wall clock in Unix nanoseconds (timestamps of plain-text lines).
pub fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl RecordReader {
    /// A reader positioned at offset `pos` of a file in `format` (detected from the first record
    /// fed when `None`), whose next line gets `seq`.
    pub fn new(max_line_bytes: usize, format: Option<Format>, pos: u64, seq: u64) -> Self {
        Self {
            max_line_bytes,
            max_record_bytes: max_line_bytes.saturating_add(RECORD_SLACK),
            parser: parser(format, max_line_bytes),
            pending: Vec::new(),
            skipping: false,
            pos,
            seq,
            clean: Some((pos, seq)),
            merged: Vec::new(),
            last_stream: None,
            last_end: [pos; 2],
            parse_errors: 0,
            clock: wall_clock_ns,
        }
    }

    /// The format being read, once known.
    pub fn format(&self) -> Option<Format> {
        self.parser.format()
    }

    /// Replaces the clock that stamps plain-text lines (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    /// Sequence number the next line gets.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// File offset of the next byte to feed.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The latest clean point passed, `(offset, seq)`: reading may restart there.
    pub fn clean_point(&self) -> Option<(u64, u64)> {
        self.clean
    }

    /// True when the reader stands at a clean point right now.
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty() && !self.skipping && self.parser.is_idle()
    }

    /// Feeds the next bytes of the file; appends the lines they complete.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<TailLine>) {
        while !bytes.is_empty() {
            if self.skipping {
                match memchr::memchr(b'\n', bytes) {
                    None => {
                        self.pos += bytes.len() as u64;
                        return;
                    }
                    Some(i) => {
                        self.pos += i as u64 + 1;
                        bytes = &bytes[i + 1..];
                        self.skipping = false;
                        self.note_boundary(out);
                        continue;
                    }
                }
            }
            match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    let total = self.pending.len() + i + 1;
                    if self.pending.is_empty() {
                        let cut = total.min(self.max_record_bytes);
                        self.push_record(&bytes[..cut], out);
                    } else {
                        let mut rec = std::mem::take(&mut self.pending);
                        rec.extend_from_slice(&bytes[..=i]);
                        rec.truncate(self.max_record_bytes);
                        self.push_record(&rec, out);
                        rec.clear();
                        self.pending = rec;
                        if self.pending.capacity() > self.max_record_bytes.min(1 << 20) {
                            self.pending = Vec::new();
                        }
                    }
                    self.pos += i as u64 + 1;
                    bytes = &bytes[i + 1..];
                    self.note_boundary(out);
                }
                None => {
                    self.pending.extend_from_slice(bytes);
                    self.pos += bytes.len() as u64;
                    if self.pending.len() >= self.max_record_bytes {
                        let mut rec = std::mem::take(&mut self.pending);
                        rec.truncate(self.max_record_bytes);
                        self.push_record(&rec, out);
                        self.skipping = true;
                    }
                    return;
                }
            }
        }
    }

    /// Drops the bytes of an incomplete record (its end will never come); returns how many.
    pub fn discard_pending(&mut self) -> u64 {
        let n = self.pending.len() as u64;
        self.pending.clear();
        self.skipping = false;
        n
    }

    /// The file is complete (rotated away, or read to its end for good): its last record, even
    /// without `\n`, is a record, and lines still waiting for their final record are emitted,
    /// flagged partial. The reader is then clean and ready for the next file at offset 0, in
    /// `next_format` (detected from its first record when `None`).
    pub fn end_of_file(&mut self, out: &mut Vec<TailLine>, next_format: Option<Format>) {
        if !self.skipping && !self.pending.is_empty() {
            let rec = std::mem::take(&mut self.pending);
            self.push_record(&rec, out);
        }
        self.pending.clear();
        self.skipping = false;
        self.parser.flush(&mut self.merged);
        self.emit_merged(out);
        self.parser = parser(next_format, self.max_line_bytes);
        self.pos = 0;
        self.last_stream = None;
        self.last_end = [0; 2];
        self.clean = Some((0, self.seq));
    }

    /// Moves a reader standing at a clean point to offset `pos` of its (new) file, where a
    /// clean point is known to be.
    pub fn set_position(&mut self, pos: u64) {
        debug_assert!(self.is_clean());
        self.pos = pos;
        self.last_end = [pos; 2];
        self.clean = Some((pos, self.seq));
    }

    fn note_boundary(&mut self, out: &mut Vec<TailLine>) {
        if let Some(s) = self.last_stream.take() {
            self.last_end[s] = self.pos;
        }
        for (s, stderr) in [(0, false), (1, true)] {
            if self.parser.is_open(stderr) && self.pos - self.last_end[s] > PARTIAL_WINDOW {
                self.parser.flush_stream(stderr, &mut self.merged);
                self.emit_merged(out);
            }
        }
        if self.parser.is_idle() {
            self.clean = Some((self.pos, self.seq));
        }
    }

    fn push_record(&mut self, raw: &[u8], out: &mut Vec<TailLine>) {
        match self.parser.push_line(raw, &mut self.merged) {
            Ok(pushed) => {
                self.last_stream = Some(usize::from(pushed.stderr));
                self.emit_merged(out);
            }
            Err(_) => {
                self.parse_errors += 1;
                let truncated = raw.len() > self.max_line_bytes;
                let message = &raw[..raw.len().min(self.max_line_bytes)];
                out.push(TailLine {
                    seq: self.seq,
                    timestamp_ns: (self.clock)(),
                    flags: if truncated { LineFlags::TRUNCATED } else { 0 },
                    message: Bytes::copy_from_slice(message),
                });
                self.seq += 1;
            }
        }
    }

    fn emit_merged(&mut self, out: &mut Vec<TailLine>) {
        let plain = self.parser.format() == Some(Format::Plain);
        for m in self.merged.drain(..) {
            let mut flags = 0;
            if m.stderr {
                flags |= LineFlags::STDERR;
            }
            if m.partial {
                flags |= LineFlags::PARTIAL;
            }
            if m.truncated {
                flags |= LineFlags::TRUNCATED;
            }
            out.push(TailLine {
                seq: self.seq,
                timestamp_ns: if plain {
                    (self.clock)()
                } else {
                    m.timestamp_ns
                },
                flags,
                message: m.message,
            });
            self.seq += 1;
        }
    }
}

fn parser(format: Option<Format>, max_line_bytes: usize) -> Parser {
    match format {
        Some(f) => Parser::with_format(f, max_line_bytes),
        None => Parser::new(max_line_bytes),
    }
}

/// Bytes of a file's start enough to tell its format even if its first line is longer.
pub const DETECT_BYTES: usize = 4096;

/// The format of a file from its first bytes: its first line, or [`DETECT_BYTES`] of it; `None`
/// while that much is not written yet.
pub fn detect_prefix(prefix: &[u8]) -> Option<Format> {
    match memchr::memchr(b'\n', prefix) {
        Some(i) => Some(detect(&prefix[..=i])),
        None if prefix.len() >= DETECT_BYTES => Some(detect(prefix)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn zero() -> i64 {
        0
    }

    fn read_all(data: &[u8], chunk: usize, max_line: usize) -> (Vec<TailLine>, RecordReader) {
        let mut r = RecordReader::new(max_line, None, 0, 0).with_clock(zero);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            r.feed(c, &mut out);
        }
        (out, r)
    }

    fn cri(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("2024-01-01T00:00:00Z {l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn partials_merge_and_clean_points_skip_open_lines() {
        let data = cri(&[
            "stdout F a",
            "stdout P b1",
            "stderr F e",
            "stdout F b2",
            "stdout F c",
        ]);
        let (out, r) = read_all(&data, 7, 1024);
        let msgs: Vec<&[u8]> = out.iter().map(|l| &l.message[..]).collect();
        assert_eq!(msgs, [&b"a\n"[..], b"e\n", b"b1b2\n", b"c\n"]);
        assert_eq!(out.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(out[1].flags, LineFlags::STDERR);
        assert_eq!(r.clean_point(), Some((data.len() as u64, 4)));
        assert!(r.is_clean());
    }

    #[test]
    fn an_incomplete_record_waits_and_end_of_file_flushes_partials() {
        let data = cri(&["stdout F a", "stdout P b"]);
        let (mut out, mut r) = read_all(&data, 5, 1024);
        r.feed(
            b"2024-01-01T00:00:00Z stdout F tail-without-newline",
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(!r.is_clean());
        r.end_of_file(&mut out, None);
        assert_eq!(&out[1].message[..], b"btail-without-newline");
        assert_eq!(out[1].flags, 0);
        let (mut out, mut r) = read_all(&data, 5, 1024);
        r.end_of_file(&mut out, None);
        assert_eq!(&out[1].message[..], b"b");
        assert_eq!(out[1].flags, LineFlags::PARTIAL);
    }

    #[test]
    fn overlong_records_are_cut_and_flagged_whatever_the_chunking() {
        let mut data = b"short\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', RECORD_SLACK + 300));
        data.extend_from_slice(b"\r\nnext\r\n");
        for chunk in [1, 100, 4096, data.len()] {
            let (out, _) = read_all(&data, chunk, 10);
            assert_eq!(out.len(), 3, "chunk {chunk}");
            assert_eq!(&out[0].message[..], b"short\n");
            assert_eq!(&out[1].message[..], b"xxxxxxxxxx");
            assert_eq!(out[1].flags, LineFlags::TRUNCATED);
            assert_eq!(&out[2].message[..], b"next\r\n", "CRLF kept");
        }
    }

    #[test]
    fn malformed_records_become_raw_lines() {
        let mut data = cri(&["stdout F ok"]);
        data.extend_from_slice(b"not a record \xff\n");
        let (out, r) = read_all(&data, 3, 1024);
        assert_eq!(out.len(), 2);
        assert_eq!(&out[1].message[..], b"not a record \xff\n");
        assert_eq!(r.parse_errors, 1);
    }

    proptest! {
        #[test]
        fn lines_do_not_depend_on_chunking_or_on_a_restart_at_a_clean_point(
            recs in proptest::collection::vec((any::<bool>(), any::<bool>(), "[a-z]{0,12}"), 0..40),
            chunk in 1usize..64,
            cut in any::<prop::sample::Index>(),
        ) {
            let lines: Vec<String> = recs
                .iter()
                .map(|(err, p, m)| format!(
                    "{} {} {m}",
                    if *err { "stderr" } else { "stdout" },
                    if *p { "P" } else { "F" }
                ))
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let data = cri(&refs);
            let (whole, _) = read_all(&data, data.len().max(1), 8);
            let (chunked, _) = read_all(&data, chunk, 8);
            prop_assert_eq!(&whole, &chunked);
            // Restart at any clean point seen: the same lines from there on.
            let mut r = RecordReader::new(8, None, 0, 0).with_clock(zero);
            let mut sink = Vec::new();
            let mut points = vec![(0u64, 0u64)];
            for b in data.chunks(1) {
                r.feed(b, &mut sink);
                points.extend(r.clean_point());
            }
            let (off, seq) = points[cut.index(points.len())];
            let mut r = RecordReader::new(8, Some(Format::Cri), off, seq).with_clock(zero);
            let mut rest = Vec::new();
            r.feed(&data[off as usize..], &mut rest);
            prop_assert_eq!(&whole[seq as usize..], &rest[..]);
        }
    }
}
