//! The text the load is made of, and the write-time stamp every line carries. Pure.
//!
//! Each line's message starts with `@` and the 19-digit Unix time in nanoseconds at which the
//! harness wrote (or encoded) it, then a space, then LogHub text: a subscriber computes
//! end-to-end latency as its receive time minus that stamp, whatever the path (agent file tail,
//! QUIC producer, or nats-server).

use bytes::Bytes;
use logrelay_wire::batch::{self, BatchBuilder, LineFlags};

/// LogHub samples (see `data/loghub/README.md`).
const LOGHUB: [&str; 3] = [
    include_str!("../../data/loghub/Apache_2k.log"),
    include_str!("../../data/loghub/HDFS_2k.log"),
    include_str!("../../data/loghub/Spark_2k.log"),
];

/// Bytes of the stamp prefix `@` + 19 digits + space.
pub const STAMP_BYTES: usize = 21;

/// Lines to cycle through; each is the text after the stamp, terminator included.
#[derive(Debug, Clone)]
pub struct Corpus {
    bodies: Vec<Vec<u8>>,
    mean_line_bytes: f64,
}

impl Corpus {
    /// LogHub lines; with `line_bytes`, each whole line (stamp and terminator included) is
    /// exactly that long: the text is cut, or repeated, to fit.
    pub fn loghub(line_bytes: Option<u32>) -> Self {
        let texts = LOGHUB
            .iter()
            .flat_map(|t| t.lines())
            .filter(|l| !l.trim().is_empty());
        let bodies: Vec<Vec<u8>> = texts
            .map(|t| {
                let mut b = t.as_bytes().to_vec();
                if let Some(n) = line_bytes {
                    let want = (n as usize).saturating_sub(STAMP_BYTES + 1).max(1);
                    let src = b.clone();
                    while b.len() < want {
                        b.push(b' ');
                        b.extend_from_slice(&src);
                    }
                    b.truncate(want);
                }
                b.push(b'\n');
                b
            })
            .collect();
        let mean_line_bytes = bodies.iter().map(|b| b.len() + STAMP_BYTES).sum::<usize>() as f64
            / bodies.len() as f64;
        Self {
            bodies,
            mean_line_bytes,
        }
    }

    /// Average line size in bytes (stamp and terminator included).
    pub fn mean_line_bytes(&self) -> f64 {
        self.mean_line_bytes
    }

    /// The `i`-th body (cycling).
    pub fn body(&self, i: u64) -> &[u8] {
        &self.bodies[(i % self.bodies.len() as u64) as usize]
    }

    /// Writes line `i` stamped `ns` into `out` (cleared first).
    pub fn line_into(&self, i: u64, ns: i64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&stamp(ns));
        out.extend_from_slice(self.body(i));
    }
}

/// The stamp prefix for `ns`.
pub fn stamp(ns: i64) -> [u8; STAMP_BYTES] {
    let mut out = [b'0'; STAMP_BYTES];
    out[0] = b'@';
    out[STAMP_BYTES - 1] = b' ';
    let mut v = ns.max(0) as u64;
    for i in (1..=19).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

/// Reads the stamp at the start of a message.
pub fn parse_stamp(message: &[u8]) -> Option<i64> {
    let s = message.get(..STAMP_BYTES)?;
    if s[0] != b'@' || s[STAMP_BYTES - 1] != b' ' {
        return None;
    }
    let mut v = 0i64;
    for &d in &s[1..=19] {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(v)
}

/// Unix time now, in nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Encodes consecutive lines of one stream into batches, as an agent would.
#[derive(Debug)]
pub struct BatchMaker {
    /// Relay stream id stamped in headers.
    pub stream_ref: u64,
    /// Sequence epoch.
    pub epoch: u64,
    /// Sequence number of the next line.
    pub next_seq: u64,
    batch_bytes: usize,
    scratch: Vec<u8>,
}

impl BatchMaker {
    /// A maker for `stream_ref` flushing at `batch_bytes`.
    pub fn new(stream_ref: u64, epoch: u64, batch_bytes: usize) -> Self {
        Self {
            stream_ref,
            epoch,
            next_seq: 0,
            batch_bytes,
            scratch: Vec::with_capacity(4096),
        }
    }

    /// Encodes up to `max_lines` lines stamped `ns` (stops at the batch size). Returns the
    /// batch and its line count, or `None` when `max_lines` is 0.
    pub fn make(&mut self, corpus: &Corpus, max_lines: u64, ns: i64) -> Option<(Bytes, u32)> {
        if max_lines == 0 {
            return None;
        }
        let mut b = BatchBuilder::new(
            self.stream_ref,
            self.epoch,
            self.next_seq,
            0,
            self.batch_bytes.min(1 << 20),
        );
        while u64::from(b.len()) < max_lines && b.encoded_len() < self.batch_bytes {
            corpus.line_into(self.next_seq, ns, &mut self.scratch);
            b.push(ns, LineFlags::default(), &self.scratch);
            self.next_seq += 1;
        }
        let n = b.len();
        Some((b.finish(), n))
    }
}

/// What a subscriber learns from one data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSeen {
    /// Log lines in it.
    pub lines: u32,
    /// Lines an agent reported lost (gap batch).
    pub agent_gap_lines: u32,
}

/// Reads a batch's header, and the stamps of every `every`-th line (by sequence number)
/// into `latency`, given the receive time `now_ns`. Stamp-less lines fall back to the record's
/// timestamp.
pub fn observe_batch(
    bytes: &[u8],
    every: u32,
    now_ns: i64,
    mut latency: impl FnMut(i64),
) -> Option<BatchSeen> {
    let h = batch::BatchHeader::parse(bytes).ok()?;
    if h.kind == batch::Kind::Gap {
        return Some(BatchSeen {
            lines: 0,
            agent_gap_lines: h.count,
        });
    }
    let every = u64::from(every.max(1));
    let mut body = &bytes[batch::HEADER_LEN..];
    for i in 0..u64::from(h.count) {
        if body.len() < batch::LINE_HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &body[batch::LINE_HEADER_LEN..];
        if rest.len() < len {
            return None;
        }
        if (h.first_seq + i).is_multiple_of(every) {
            let ts = parse_stamp(&rest[..len])
                .unwrap_or_else(|| i64::from_le_bytes(body[..8].try_into().expect("8 bytes")));
            latency(now_ns - ts);
        }
        body = &rest[len..];
    }
    Some(BatchSeen {
        lines: h.count,
        agent_gap_lines: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for ns in [0, 1, 1_700_000_000_123_456_789, i64::MAX] {
            let s = stamp(ns);
            assert_eq!(parse_stamp(&s), Some(ns));
        }
        assert_eq!(parse_stamp(b"@12 not a stamp"), None);
        assert_eq!(parse_stamp(b"plain log line that is long enough"), None);
    }

    #[test]
    fn fixed_size_lines_are_exact() {
        let c = Corpus::loghub(Some(200));
        let mut out = Vec::new();
        for i in 0..50 {
            c.line_into(i, 5, &mut out);
            assert_eq!(out.len(), 200);
            assert_eq!(out.last(), Some(&b'\n'));
        }
        assert_eq!(c.mean_line_bytes(), 200.0);
        let natural = Corpus::loghub(None);
        assert!(natural.mean_line_bytes() > 60.0);
    }

    #[test]
    fn batches_carry_stamps_that_subscribers_read() {
        let c = Corpus::loghub(None);
        let mut m = BatchMaker::new(9, 3, 4096);
        let (b, n) = m.make(&c, 1000, 1_000).unwrap();
        assert!(n > 1 && b.len() >= 4096 && b.len() < 4096 + 2048);
        let (b2, n2) = m.make(&c, 3, 2_000).unwrap();
        assert_eq!(n2, 3);
        assert_eq!(
            batch::BatchHeader::parse(&b2).unwrap().first_seq,
            u64::from(n)
        );
        let mut seen = Vec::new();
        let got = observe_batch(&b, 1, 11_000, |l| seen.push(l)).unwrap();
        assert_eq!(got.lines, n);
        assert_eq!(seen.len(), n as usize);
        assert!(seen.iter().all(|&l| l == 10_000));
        let mut sampled = 0;
        observe_batch(&b, 4, 0, |_| sampled += 1).unwrap();
        assert_eq!(sampled, n.div_ceil(4));
        let gap = batch::encode_gap(9, 3, 0, 17, 0);
        assert_eq!(
            observe_batch(&gap, 1, 0, |_| ()).unwrap().agent_gap_lines,
            17
        );
        assert!(observe_batch(b"junk", 1, 0, |_| ()).is_none());
        assert!(m.make(&c, 0, 0).is_none());
    }
}
