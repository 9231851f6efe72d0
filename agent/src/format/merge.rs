//! Reassembly of partial records into whole lines.
//!
//! Container runtimes cut long lines into several records (16 KiB each by
//! default). [`Merger`] concatenates the fragments of each stream (stdout and
//! stderr separately, since their records interleave freely in the file) and
//! caps every line at a maximum length, with bounded memory.

use std::borrow::Cow;
use std::mem;

use bytes::Bytes;

use super::Record;

/// One logical log line, reassembled from one or more records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedLine {
    /// Timestamp of the line's first record, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Whether the line came from stderr (else stdout).
    pub stderr: bool,
    /// Whether the line is incomplete: [`Merger::flush`] emitted it before
    /// its final record arrived.
    pub partial: bool,
    /// Whether the line was longer than the maximum and `message` holds only
    /// its first `max_line_bytes` bytes.
    pub truncated: bool,
    /// The message bytes, including the line terminator when the line is
    /// complete and not truncated. Not necessarily UTF-8.
    pub message: Bytes,
}

/// Reassembly state of one stream.
#[derive(Debug, Default)]
struct Pending {
    /// Fragments received so far; never longer than `max_line_bytes`.
    buf: Vec<u8>,
    /// Timestamp of the first fragment.
    timestamp_ns: i64,
    /// A line has started (possibly with empty fragments) and not ended.
    active: bool,
    /// A truncated line was already emitted; drop records up to and
    /// including the next full one.
    discarding: bool,
}

/// Reassembles partial records into complete lines, per stream.
///
/// Each line is capped at `max_line_bytes` message bytes: a longer line is
/// emitted as soon as it overflows, cut to exactly `max_line_bytes` bytes and
/// flagged `truncated`, and the rest of it (up to and including its final,
/// non-partial record) is discarded. So the merger never holds more than
/// `max_line_bytes` bytes per stream.
#[derive(Debug)]
pub struct Merger {
    max_line_bytes: usize,
    /// Index 0 is stdout, 1 is stderr.
    streams: [Pending; 2],
}

impl Merger {
    /// A merger capping lines at `max_line_bytes` message bytes (terminator
    /// included). With 0 every non-empty line is emitted empty and truncated.
    pub fn new(max_line_bytes: usize) -> Self {
        Merger {
            max_line_bytes,
            streams: Default::default(),
        }
    }

    /// The maximum length of an emitted message.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Adds one record and appends to `out` the line it completes, if any:
    /// at most one line per call.
    pub fn push(&mut self, rec: Record<'_>, out: &mut Vec<MergedLine>) {
        let max = self.max_line_bytes;
        let st = &mut self.streams[usize::from(rec.stderr)];

        if st.discarding {
            // The tail of a line that was already emitted truncated.
            st.discarding = rec.partial;
            return;
        }

        if !st.active {
            if !rec.partial {
                // Fast path: a whole line in one record, no copy into `buf`.
                out.push(whole(rec, max));
                return;
            }
            st.active = true;
            st.timestamp_ns = rec.timestamp_ns;
        }

        let room = max - st.buf.len();
        let msg = &*rec.message;
        if msg.len() > room {
            append(&mut st.buf, &msg[..room], max);
            out.push(st.take(rec.stderr, false, true));
            st.discarding = rec.partial;
            return;
        }
        append(&mut st.buf, msg, max);
        if !rec.partial {
            out.push(st.take(rec.stderr, false, false));
        }
    }

    /// Emits the partial line buffered for each stream, if any, flagged
    /// `partial`, oldest first. Call at end of file or when the file has been
    /// idle for a while. Records that continue such a line later are emitted
    /// as a new line. The tail of a line already emitted truncated is still
    /// discarded after a flush.
    pub fn flush(&mut self, out: &mut Vec<MergedLine>) {
        let [stdout, stderr] = &mut self.streams;
        let mut lines = [(stdout, false), (stderr, true)];
        lines.sort_by_key(|(st, is_err)| (st.timestamp_ns, *is_err));
        for (st, is_err) in lines {
            if st.active {
                out.push(st.take(is_err, true, false));
            }
        }
    }

    /// Ends the line open on one stream: emits what is buffered, flagged `partial`, and stops
    /// discarding the tail of a truncated line. Records that continue it later start a new line.
    pub fn flush_stream(&mut self, stderr: bool, out: &mut Vec<MergedLine>) {
        let st = &mut self.streams[usize::from(stderr)];
        st.discarding = false;
        if st.active {
            out.push(st.take(stderr, true, false));
        }
    }

    /// True when the stream is in the middle of a line (buffering it, or discarding the tail of
    /// a truncated one).
    pub fn is_open(&self, stderr: bool) -> bool {
        let st = &self.streams[usize::from(stderr)];
        st.active || st.discarding
    }

    /// True when neither stream is in the middle of a line: nothing is buffered and no tail of
    /// a truncated line is being discarded. Whatever records follow, the lines they make do not
    /// depend on the records before.
    pub fn is_idle(&self) -> bool {
        self.streams.iter().all(|st| !st.active && !st.discarding)
    }

    /// Message bytes currently held back, over both streams.
    pub fn buffered_bytes(&self) -> usize {
        self.streams.iter().map(|st| st.buf.len()).sum()
    }
}

impl Pending {
    /// Ends the current line and returns it, releasing the buffer.
    fn take(&mut self, stderr: bool, partial: bool, truncated: bool) -> MergedLine {
        self.active = false;
        MergedLine {
            timestamp_ns: self.timestamp_ns,
            stderr,
            partial,
            truncated,
            message: Bytes::from(mem::take(&mut self.buf)),
        }
    }
}

/// A complete single-record line, cut to `max` bytes.
fn whole(rec: Record<'_>, max: usize) -> MergedLine {
    let truncated = rec.message.len() > max;
    let message = match rec.message {
        Cow::Borrowed(msg) => Bytes::copy_from_slice(&msg[..msg.len().min(max)]),
        Cow::Owned(mut msg) => {
            msg.truncate(max);
            Bytes::from(msg)
        }
    };
    MergedLine {
        timestamp_ns: rec.timestamp_ns,
        stderr: rec.stderr,
        partial: false,
        truncated,
        message,
    }
}

/// Appends `data` to `buf`, growing geometrically but never past `max` bytes
/// of capacity. The caller guarantees `buf.len() + data.len() <= max`.
fn append(buf: &mut Vec<u8>, data: &[u8], max: usize) {
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2).min(max));
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64, stderr: bool, partial: bool, msg: &[u8]) -> Record<'_> {
        Record {
            timestamp_ns: ts,
            stderr,
            partial,
            message: Cow::Borrowed(msg),
        }
    }

    fn push_all(m: &mut Merger, records: &[Record<'_>]) -> Vec<MergedLine> {
        let mut out = Vec::new();
        for r in records {
            let before = out.len();
            m.push(r.clone(), &mut out);
            assert!(out.len() - before <= 1);
            assert!(m.buffered_bytes() <= 2 * m.max_line_bytes());
        }
        out
    }

    fn line(ts: i64, stderr: bool, partial: bool, truncated: bool, msg: &[u8]) -> MergedLine {
        MergedLine {
            timestamp_ns: ts,
            stderr,
            partial,
            truncated,
            message: Bytes::copy_from_slice(msg),
        }
    }

    #[test]
    fn full_records_pass_through() {
        let mut m = Merger::new(100);
        let out = push_all(
            &mut m,
            &[rec(1, false, false, b"a\n"), rec(2, true, false, b"b\n")],
        );
        assert_eq!(
            out,
            [
                line(1, false, false, false, b"a\n"),
                line(2, true, false, false, b"b\n")
            ]
        );
    }

    #[test]
    fn partials_reassembled_with_first_timestamp() {
        let mut m = Merger::new(100);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, true, b"ab"),
                rec(2, false, true, b""),
                rec(3, false, false, b"cd\n"),
            ],
        );
        assert_eq!(out, [line(1, false, false, false, b"abcd\n")]);
        assert_eq!(m.buffered_bytes(), 0);
    }

    #[test]
    fn interleaved_streams_do_not_mix() {
        let mut m = Merger::new(100);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, true, b"out1 "),
                rec(2, true, true, b"err1 "),
                rec(3, false, true, b"out2 "),
                rec(4, true, false, b"err2\n"),
                rec(5, true, false, b"err3\n"),
                rec(6, false, false, b"out3\n"),
            ],
        );
        assert_eq!(
            out,
            [
                line(2, true, false, false, b"err1 err2\n"),
                line(5, true, false, false, b"err3\n"),
                line(1, false, false, false, b"out1 out2 out3\n"),
            ]
        );
    }

    #[test]
    fn single_long_record_truncated() {
        let mut m = Merger::new(4);
        let owned = Record {
            message: Cow::Owned(b"abcdef\n".to_vec()),
            ..rec(1, false, false, b"")
        };
        let out = push_all(
            &mut m,
            &[
                rec(1, false, false, b"abcdef\n"),
                owned,
                rec(2, false, false, b"ab\n"),
            ],
        );
        assert_eq!(
            out,
            [
                line(1, false, false, true, b"abcd"),
                line(1, false, false, true, b"abcd"),
                line(2, false, false, false, b"ab\n"),
            ]
        );
    }

    #[test]
    fn exact_fit_is_not_truncated() {
        let mut m = Merger::new(4);
        let out = push_all(
            &mut m,
            &[rec(1, false, true, b"ab"), rec(2, false, false, b"c\n")],
        );
        assert_eq!(out, [line(1, false, false, false, b"abc\n")]);
        let out = push_all(
            &mut m,
            &[rec(1, false, true, b"abcd"), rec(2, false, false, b"")],
        );
        assert_eq!(out, [line(1, false, false, false, b"abcd")]);
    }

    #[test]
    fn long_partial_line_truncated_and_rest_discarded() {
        let mut m = Merger::new(5);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, true, b"abc"),
                rec(2, true, true, b"x"),
                rec(3, false, true, b"def"), // overflows: emitted now
                rec(4, false, true, b"ghi"), // discarded
                rec(5, true, false, b"y\n"),
                rec(6, false, false, b"jkl\n"), // end of the long line: discarded
                rec(7, false, false, b"next\n"),
            ],
        );
        assert_eq!(
            out,
            [
                line(1, false, false, true, b"abcde"),
                line(2, true, false, false, b"xy\n"),
                line(7, false, false, false, b"next\n"),
            ]
        );
        assert_eq!(m.buffered_bytes(), 0);
    }

    #[test]
    fn overflow_on_final_record_needs_no_discarding() {
        let mut m = Merger::new(5);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, true, b"abc"),
                rec(2, false, false, b"def\n"),
                rec(3, false, false, b"g\n"),
            ],
        );
        assert_eq!(
            out,
            [
                line(1, false, false, true, b"abcde"),
                line(3, false, false, false, b"g\n")
            ]
        );
    }

    #[test]
    fn zero_max() {
        let mut m = Merger::new(0);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, false, b"a\n"),
                rec(2, false, true, b""),
                rec(3, false, false, b""),
            ],
        );
        assert_eq!(
            out,
            [
                line(1, false, false, true, b""),
                line(2, false, false, false, b"")
            ]
        );
    }

    #[test]
    fn flush_emits_partials_oldest_first() {
        let mut m = Merger::new(100);
        let mut out = push_all(
            &mut m,
            &[rec(5, false, true, b"out"), rec(3, true, true, b"err")],
        );
        assert_eq!(m.buffered_bytes(), 6);
        m.flush(&mut out);
        assert_eq!(
            out,
            [
                line(3, true, true, false, b"err"),
                line(5, false, true, false, b"out")
            ]
        );
        assert_eq!(m.buffered_bytes(), 0);
        // Nothing left: a second flush emits nothing, and a later record
        // starts a new line.
        m.flush(&mut out);
        assert_eq!(out.len(), 2);
        m.push(rec(6, false, false, b"more\n"), &mut out);
        assert_eq!(out[2], line(6, false, false, false, b"more\n"));
    }

    #[test]
    fn flush_keeps_discarding_truncated_tail() {
        let mut m = Merger::new(2);
        let mut out = push_all(&mut m, &[rec(1, false, true, b"abc")]);
        m.flush(&mut out);
        m.push(rec(2, false, false, b"tail\n"), &mut out);
        m.push(rec(3, false, false, b"ok\n"), &mut out);
        assert_eq!(
            out,
            [
                line(1, false, false, true, b"ab"),
                line(3, false, false, true, b"ok")
            ]
        );
    }

    #[test]
    fn buffer_capacity_bounded() {
        let max = 1000;
        let mut m = Merger::new(max);
        let mut out = Vec::new();
        for _ in 0..50 {
            m.push(rec(1, false, true, &[b'x'; 37]), &mut out);
            assert!(m.streams[0].buf.capacity() <= max);
        }
        assert_eq!(out.len(), 1);
        assert!(out[0].truncated);
        assert_eq!(out[0].message.len(), max);
    }

    #[test]
    fn non_utf8_bytes_kept() {
        let mut m = Merger::new(100);
        let out = push_all(
            &mut m,
            &[
                rec(1, false, true, b"\xff\xc3"),
                rec(2, false, false, b"(\n"),
            ],
        );
        assert_eq!(out, [line(1, false, false, false, b"\xff\xc3(\n")]);
    }
}
