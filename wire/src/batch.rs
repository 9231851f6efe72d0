//! The batch: a run of consecutive lines of one stream, in the format subscribers read.
//!
//! The agent encodes a batch once; the relay parses only the fixed [`HEADER_LEN`]-byte header to
//! route it and forwards the very same bytes as a WebSocket binary message. All integers are
//! little-endian.
//!
//! ```text
//! header (40 bytes)
//!   0  u8   magic 'L' (0x4C)
//!   1  u8   format version (1)
//!   2  u8   kind: 1 = log lines, 3 = gap
//!   3  u8   flags: bit 0 = backfill (not live), bit 1 = continues (log: the first lines of a
//!               new epoch, right after the last line of the previous one), bit 2 = count
//!               unknown (gap: `count` is a lower bound)
//!   4  u64  stream   relay-assigned stream id (see the session `stream` event)
//!  12  u64  epoch    changes whenever sequence numbers restart
//!  20  u64  first_seq sequence number of the first line (gap: first missing)
//!  28  u32  count    lines in the batch (gap: lines missing)
//!  32  u32  body_len bytes after the header
//!  36  u32  reserved, zero
//! log line record, `count` times
//!   0  i64  timestamp, Unix nanoseconds (from the CRI record)
//!   8  u8   flags: bit 0 stderr, bit 1 partial, bit 2 truncated, bit 3 system originator
//!   9  u32  message length
//!  13  ..   message bytes, terminator (LF, CRLF or CR) kept
//! gap body
//!   0  u64  bytes missing (0 if unknown)
//! ```
//!
//! Line `i` of a batch has sequence number `first_seq + i`.

use bytes::{BufMut, Bytes, BytesMut};

/// Magic byte opening every batch.
pub const MAGIC: u8 = b'L';
/// Format version written by this build.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Size of a line record before its message.
pub const LINE_HEADER_LEN: usize = 13;

/// What a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Log lines.
    Log = 1,
    /// A gap notice: `count` lines from `first_seq` were lost upstream.
    Gap = 3,
}

/// Header flag: this batch is backfill for one subscriber, not part of the live tail.
pub const FLAG_BACKFILL: u8 = 1;
/// Header flag of a log batch: it opens a new epoch (the agent could not keep the previous
/// numbering, e.g. it restarted) and its first line comes right after the last line the relay
/// held of the previous epoch: a renumbering, nothing lost.
pub const FLAG_CONTINUES: u8 = 2;
/// Header flag of a gap batch: the lines were lost without being counted (rotated away before
/// they were read); `count` is a lower bound and the body's byte count is what is known.
pub const FLAG_COUNT_UNKNOWN: u8 = 4;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a header.
    #[error("batch of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    /// Not a logrelay batch.
    #[error("bad batch magic {0:#04x}")]
    Magic(u8),
    /// A format version this build does not read.
    #[error("unsupported batch version {0}")]
    Version(u8),
    /// A kind this build does not know.
    #[error("unknown batch kind {0}")]
    Kind(u8),
    /// The header's body length disagrees with the bytes present.
    #[error("batch body is {actual} bytes but the header says {declared}")]
    BodyLen {
        /// From the header.
        declared: u32,
        /// Present.
        actual: usize,
    },
    /// `first_seq + count` does not fit in 64 bits.
    #[error("sequence numbers of the batch overflow")]
    SeqOverflow,
    /// A line record runs past the end of the body, or the count is wrong.
    #[error("line record {index} is malformed")]
    Line {
        /// Index of the offending record.
        index: u32,
    },
}

/// The routing header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Log lines or gap.
    pub kind: Kind,
    /// Header flags ([`FLAG_BACKFILL`]).
    pub flags: u8,
    /// Relay-assigned stream id.
    pub stream: u64,
    /// Sequence epoch.
    pub epoch: u64,
    /// Sequence number of the first line.
    pub first_seq: u64,
    /// Number of lines.
    pub count: u32,
    /// Bytes after the header.
    pub body_len: u32,
}

impl BatchHeader {
    /// Parses and checks the header of `bytes` (the whole batch). Does not walk the lines.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Short(bytes.len()));
        }
        if bytes[0] != MAGIC {
            return Err(BatchError::Magic(bytes[0]));
        }
        if bytes[1] != VERSION {
            return Err(BatchError::Version(bytes[1]));
        }
        let kind = match bytes[2] {
            1 => Kind::Log,
            3 => Kind::Gap,
            k => return Err(BatchError::Kind(k)),
        };
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let h = Self {
            kind,
            flags: bytes[3],
            stream: u64_at(4),
            epoch: u64_at(12),
            first_seq: u64_at(20),
            count: u32_at(28),
            body_len: u32_at(32),
        };
        if h.first_seq.checked_add(u64::from(h.count)).is_none() {
            return Err(BatchError::SeqOverflow);
        }
        if h.body_len as usize != bytes.len() - HEADER_LEN {
            return Err(BatchError::BodyLen {
                declared: h.body_len,
                actual: bytes.len() - HEADER_LEN,
            });
        }
        Ok(h)
    }

    /// Sequence number one past the last line.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    fn write(&self, out: &mut [u8]) {
        out[0] = MAGIC;
        out[1] = VERSION;
        out[2] = self.kind as u8;
        out[3] = self.flags;
        out[4..12].copy_from_slice(&self.stream.to_le_bytes());
        out[12..20].copy_from_slice(&self.epoch.to_le_bytes());
        out[20..28].copy_from_slice(&self.first_seq.to_le_bytes());
        out[28..32].copy_from_slice(&self.count.to_le_bytes());
        out[32..36].copy_from_slice(&self.body_len.to_le_bytes());
        out[36..40].copy_from_slice(&0u32.to_le_bytes());
    }
}

/// Where a line was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

/// Per-line flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineFlags(pub u8);

impl LineFlags {
    /// Written to stderr.
    pub const STDERR: u8 = 1;
    /// A partial line (the writer had not finished it).
    pub const PARTIAL: u8 = 2;
    /// Truncated at the agent's `max_line_bytes`.
    pub const TRUNCATED: u8 = 4;
    /// Emitted by the system (agent or runtime), not by the user's code.
    pub const SYSTEM: u8 = 8;

    /// True when `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// The stream the line was written to.
    pub fn origin(self) -> Origin {
        if self.has(Self::STDERR) {
            Origin::Stderr
        } else {
            Origin::Stdout
        }
    }
}

/// One log line as carried in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// Sequence number within the stream's epoch.
    pub seq: u64,
    /// Unix nanoseconds from the runtime's record.
    pub timestamp_ns: i64,
    /// Stream, partial, truncated, originator.
    pub flags: LineFlags,
    /// Message bytes with their terminator.
    pub message: &'a [u8],
}

/// Builds one log batch; lines are appended in sequence order.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    header: BatchHeader,
}

impl BatchBuilder {
    /// Starts a batch of `stream` whose first line will have `first_seq`.
    pub fn new(stream: u64, epoch: u64, first_seq: u64, flags: u8, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + capacity);
        buf.put_bytes(0, HEADER_LEN);
        Self {
            buf,
            header: BatchHeader {
                kind: Kind::Log,
                flags,
                stream,
                epoch,
                first_seq,
                count: 0,
                body_len: 0,
            },
        }
    }

    /// Appends a line; its sequence number is `first_seq + len()`.
    pub fn push(&mut self, timestamp_ns: i64, flags: LineFlags, message: &[u8]) {
        self.buf.reserve(LINE_HEADER_LEN + message.len());
        self.buf.put_i64_le(timestamp_ns);
        self.buf.put_u8(flags.0);
        self.buf
            .put_u32_le(u32::try_from(message.len()).expect("lines are truncated far below 4 GiB"));
        self.buf.put_slice(message);
        self.header.count += 1;
    }

    /// Lines appended so far.
    pub fn len(&self) -> u32 {
        self.header.count
    }

    /// True when no line was appended.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Encoded size so far, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Sequence number the next pushed line gets.
    pub fn next_seq(&self) -> u64 {
        self.header.end_seq()
    }

    /// Finishes the batch.
    pub fn finish(mut self) -> Bytes {
        self.header.body_len =
            u32::try_from(self.buf.len() - HEADER_LEN).expect("batches are far below 4 GiB");
        self.header.write(&mut self.buf[..HEADER_LEN]);
        self.buf.freeze()
    }
}

/// Encodes a gap notice: `lines` lines (`bytes` bytes, 0 if unknown) from `first_seq` are lost.
pub fn encode_gap(stream: u64, epoch: u64, first_seq: u64, lines: u32, bytes: u64) -> Bytes {
    encode_gap_flagged(stream, epoch, first_seq, lines, bytes, 0)
}

/// [`encode_gap`] with header flags ([`FLAG_COUNT_UNKNOWN`] when `lines` is only a lower bound).
pub fn encode_gap_flagged(
    stream: u64,
    epoch: u64,
    first_seq: u64,
    lines: u32,
    bytes: u64,
    flags: u8,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 8);
    buf.put_bytes(0, HEADER_LEN);
    buf.put_u64_le(bytes);
    BatchHeader {
        kind: Kind::Gap,
        flags,
        stream,
        epoch,
        first_seq,
        count: lines,
        body_len: 8,
    }
    .write(&mut buf[..HEADER_LEN]);
    buf.freeze()
}

/// Reads a gap notice's lost byte count.
pub fn gap_bytes(batch: &[u8]) -> Result<u64, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.kind != Kind::Gap || h.body_len != 8 {
        return Err(BatchError::Kind(h.kind as u8));
    }
    Ok(u64::from_le_bytes(
        batch[HEADER_LEN..].try_into().expect("8 bytes"),
    ))
}

/// The timestamp of the first line of a live log batch (Unix nanoseconds): what the relay's lag
/// histograms measure from. `None` for a gap, a backfill ([`FLAG_BACKFILL`]), an empty batch, or
/// bytes that are not a batch. Reads the header and the first 8 bytes of the body only.
pub fn first_line_ns(batch: &[u8]) -> Option<i64> {
    let h = BatchHeader::parse(batch).ok()?;
    if h.kind != Kind::Log || h.count == 0 || h.flags & FLAG_BACKFILL != 0 {
        return None;
    }
    let ts = batch.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(i64::from_le_bytes(ts.try_into().expect("8 bytes")))
}

/// Magic byte opening a trace frame: the first byte of a batch's, never `MAGIC`.
pub const TRACE_MAGIC: u8 = b'T';

/// The trace context of the batch that follows it on the same data stream (feature
/// `batch_trace`, [`crate::control::features::BATCH_TRACE`]): the agent's span for that batch,
/// which the relay's spans for it descend from. Only on the agent's data streams, only for the
/// batches the agent samples; never forwarded to sessions.
///
/// ```text
///   0  u8       magic 'T' (0x54)
///   1  u8       version (1)
///   2  [u8; 16] trace id
///  18  [u8; 8]  span id
///  26  u8       trace flags (bit 0: sampled)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceFrame {
    /// W3C trace id.
    pub trace_id: [u8; 16],
    /// W3C span id (the agent's span of the batch).
    pub span_id: [u8; 8],
    /// W3C trace flags.
    pub flags: u8,
}

impl TraceFrame {
    /// Encoded size.
    pub const LEN: usize = 27;

    /// Whether a frame body is a trace frame (rather than a batch).
    pub fn is_trace(body: &[u8]) -> bool {
        body.first() == Some(&TRACE_MAGIC)
    }

    /// Encodes it.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = TRACE_MAGIC;
        out[1] = VERSION;
        out[2..18].copy_from_slice(&self.trace_id);
        out[18..26].copy_from_slice(&self.span_id);
        out[26] = self.flags;
        out
    }

    /// Decodes a trace frame's body.
    pub fn parse(body: &[u8]) -> Result<Self, BatchError> {
        if body.len() != Self::LEN {
            return Err(BatchError::Short(body.len()));
        }
        if body[0] != TRACE_MAGIC {
            return Err(BatchError::Magic(body[0]));
        }
        if body[1] != VERSION {
            return Err(BatchError::Version(body[1]));
        }
        Ok(Self {
            trace_id: body[2..18].try_into().expect("16 bytes"),
            span_id: body[18..26].try_into().expect("8 bytes"),
            flags: body[26],
        })
    }
}

/// Decodes every line of a log batch, checking each record.
pub fn lines(batch: &[u8]) -> Result<(BatchHeader, Vec<Line<'_>>), BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.kind != Kind::Log {
        return Err(BatchError::Kind(h.kind as u8));
    }
    let mut body = &batch[HEADER_LEN..];
    let mut out = Vec::with_capacity(h.count.min(65_536) as usize);
    for index in 0..h.count {
        if body.len() < LINE_HEADER_LEN {
            return Err(BatchError::Line { index });
        }
        let timestamp_ns = i64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let flags = LineFlags(body[8]);
        let len = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &body[LINE_HEADER_LEN..];
        if rest.len() < len {
            return Err(BatchError::Line { index });
        }
        out.push(Line {
            seq: h.first_seq + u64::from(index),
            timestamp_ns,
            flags,
            message: &rest[..len],
        });
        body = &rest[len..];
    }
    if !body.is_empty() {
        return Err(BatchError::Line { index: h.count });
    }
    Ok((h, out))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trace_frame_round_trips_and_is_told_from_a_batch() {
        let t = TraceFrame {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: 1,
        };
        let bytes = t.encode();
        assert!(TraceFrame::is_trace(&bytes));
        assert_eq!(TraceFrame::parse(&bytes), Ok(t));
        assert_eq!(TraceFrame::parse(&bytes[..26]), Err(BatchError::Short(26)));
        let mut v2 = bytes;
        v2[1] = 2;
        assert_eq!(TraceFrame::parse(&v2), Err(BatchError::Version(2)));
        let batch = BatchBuilder::new(1, 1, 0, 0, 0).finish();
        assert!(!TraceFrame::is_trace(&batch));
        assert!(TraceFrame::parse(&batch).is_err());
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_line_ns_is_the_first_line_of_a_live_log_batch_only() {
        let mut b = BatchBuilder::new(7, 1, 10, 0, 0);
        b.push(1_000, LineFlags::default(), b"a\n");
        b.push(2_000, LineFlags::default(), b"b\n");
        assert_eq!(first_line_ns(&b.finish()), Some(1_000));
        // Negative (pre-1970) timestamps are read as they are.
        let mut b = BatchBuilder::new(7, 1, 10, 0, 0);
        b.push(-5, LineFlags::default(), b"");
        assert_eq!(first_line_ns(&b.finish()), Some(-5));
        // Backfill, gaps, empty batches and garbage have none.
        let mut b = BatchBuilder::new(7, 1, 10, FLAG_BACKFILL, 0);
        b.push(1_000, LineFlags::default(), b"a\n");
        assert_eq!(first_line_ns(&b.finish()), None);
        assert_eq!(first_line_ns(&encode_gap(7, 1, 10, 3, 0)), None);
        assert_eq!(
            first_line_ns(&BatchBuilder::new(7, 1, 10, 0, 0).finish()),
            None
        );
        assert_eq!(first_line_ns(b"not a batch"), None);
    }

    #[test]
    fn header_is_checked() {
        assert_eq!(BatchHeader::parse(b"L"), Err(BatchError::Short(1)));
        let mut b = BatchBuilder::new(7, 1, 10, 0, 0);
        b.push(5, LineFlags(LineFlags::STDERR), b"boom\n");
        let bytes = b.finish();
        let mut bad = bytes.to_vec();
        bad[1] = 9;
        assert_eq!(BatchHeader::parse(&bad), Err(BatchError::Version(9)));
        let mut bad = bytes.to_vec();
        bad.push(0);
        assert!(matches!(
            BatchHeader::parse(&bad),
            Err(BatchError::BodyLen { .. })
        ));
        let mut bad = bytes.to_vec();
        bad[28] = 2; // claims two lines, holds one
        assert_eq!(lines(&bad), Err(BatchError::Line { index: 1 }));
    }

    #[test]
    fn sequence_overflow_is_refused() {
        let g = encode_gap(1, 1, u64::MAX - 10, 100, 0);
        assert_eq!(BatchHeader::parse(&g), Err(BatchError::SeqOverflow));
    }

    #[test]
    fn gap_round_trips() {
        let g = encode_gap(3, 4, 100, 25, 4096);
        let h = BatchHeader::parse(&g).unwrap();
        assert_eq!(
            (h.kind, h.stream, h.first_seq, h.count),
            (Kind::Gap, 3, 100, 25)
        );
        assert_eq!(gap_bytes(&g), Ok(4096));
    }

    proptest! {
        #[test]
        fn lines_round_trip(
            stream: u64, epoch: u64, first in 0u64..1 << 40,
            input in proptest::collection::vec((any::<i64>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..50)
        ) {
            let mut b = BatchBuilder::new(stream, epoch, first, FLAG_BACKFILL, 0);
            for (ts, f, m) in &input { b.push(*ts, LineFlags(*f), m); }
            let bytes = b.finish();
            let (h, got) = lines(&bytes).unwrap();
            prop_assert_eq!((h.stream, h.epoch, h.first_seq, h.flags), (stream, epoch, first, FLAG_BACKFILL));
            prop_assert_eq!(got.len(), input.len());
            for (i, (l, (ts, f, m))) in got.iter().zip(&input).enumerate() {
                prop_assert_eq!(l.seq, first + i as u64);
                prop_assert_eq!(l.timestamp_ns, *ts);
                prop_assert_eq!(l.flags.0, *f);
                prop_assert_eq!(l.message, &m[..]);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = lines(&bytes);
            let _ = gap_bytes(&bytes);
        }
    }
}
