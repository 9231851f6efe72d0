//! The per-stream ring: a bounded (in bytes) queue of batches shared by every watcher.
//!
//! One push per batch, whatever the number of watchers. Each watcher keeps its own [`Cursor`]
//! and drains everything ready in one go. When the ring is full the *oldest* batches are
//! dropped; a watcher whose cursor points before the oldest retained batch learns exactly how
//! many lines and bytes it missed ([`Lag`]) and resumes at the oldest retained batch. Pure: no
//! I/O, no clock, no locks (the hub wraps it in a mutex).

use std::collections::VecDeque;

use bytes::Bytes;
use logrelay_wire::control::{LineMark, SeqPos};

/// One batch in the ring, with running totals used to size gaps exactly.
#[derive(Debug, Clone)]
struct Slot {
    batch: Bytes,
    lines: u32,
    end: SeqPos,
    lines_before: u64,
    bytes_before: u64,
}

/// A watcher's position: the index of the next batch it will read, and what it has consumed.
/// The default is the start of a ring that has held nothing (what [`Ring::cursor_at_end`] of
/// a new ring gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    index: u64,
    lines: u64,
    bytes: u64,
    /// End of the last batch delivered (where a gap starts), if any.
    pub last_end: Option<SeqPos>,
}

/// What a lagging watcher missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Where the missing range starts (end of what it last got), if known.
    pub from: Option<SeqPos>,
    /// Lines missed.
    pub lines: u64,
    /// Bytes missed.
    pub bytes: u64,
}

/// What one [`Ring::read`] produced.
#[derive(Debug, Default)]
pub struct Read {
    /// Batches, oldest first; each is the very `Bytes` that was pushed.
    pub batches: Vec<(Bytes, u32)>,
    /// Set when the cursor had fallen behind the oldest retained batch.
    pub lag: Option<Lag>,
    /// Where the batches read switch to another epoch: the index in `batches` of the first
    /// batch of the new one, and the end of what this reader had of the old one. Whatever that
    /// epoch held after it will never come (the agent lost it). Not checked across a lag:
    /// `lag` already says where the reader's loss starts.
    pub epoch_breaks: Vec<(usize, SeqPos)>,
}

/// A bounded ring of batches.
#[derive(Debug)]
pub struct Ring {
    slots: VecDeque<Slot>,
    first_index: u64,
    capacity_bytes: usize,
    held_bytes: usize,
    lines_total: u64,
    bytes_total: u64,
    last_end: Option<SeqPos>,
    dropped_lines: u64,
    /// End of the newest batch evicted: nothing before it is held any more.
    floor: Option<SeqPos>,
}

impl Ring {
    /// An empty ring holding at most `capacity_bytes` of batches (at least one batch).
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            first_index: 0,
            capacity_bytes,
            held_bytes: 0,
            lines_total: 0,
            bytes_total: 0,
            last_end: None,
            dropped_lines: 0,
            floor: None,
        }
    }

    /// Appends a batch of `lines` lines ending at `end`; drops the oldest batches to fit.
    /// Returns `(lines, bytes)` dropped.
    pub fn push(&mut self, batch: Bytes, lines: u32, end: SeqPos) -> (u64, u64) {
        let len = batch.len();
        self.slots.push_back(Slot {
            batch,
            lines,
            end,
            lines_before: self.lines_total,
            bytes_before: self.bytes_total,
        });
        self.held_bytes += len;
        self.lines_total += u64::from(lines);
        self.bytes_total += len as u64;
        self.last_end = Some(end);
        let (mut dl, mut db) = (0, 0);
        while self.held_bytes > self.capacity_bytes && self.slots.len() > 1 {
            let old = self.slots.pop_front().expect("len > 1");
            self.floor = Some(old.end);
            self.held_bytes -= old.batch.len();
            self.first_index += 1;
            dl += u64::from(old.lines);
            db += old.batch.len() as u64;
        }
        self.dropped_lines += dl;
        (dl, db)
    }

    /// Drops the oldest batch if more than one is held; returns its `(lines, bytes)`.
    pub fn evict_oldest(&mut self) -> Option<(u64, u64)> {
        if self.slots.len() < 2 {
            return None;
        }
        let old = self.slots.pop_front().expect("len >= 2");
        self.floor = Some(old.end);
        self.held_bytes -= old.batch.len();
        self.first_index += 1;
        self.dropped_lines += u64::from(old.lines);
        Some((u64::from(old.lines), old.batch.len() as u64))
    }

    /// A cursor that will read only batches pushed from now on.
    pub fn cursor_at_end(&self) -> Cursor {
        Cursor {
            index: self.first_index + self.slots.len() as u64,
            lines: self.lines_total,
            bytes: self.bytes_total,
            last_end: self.last_end,
        }
    }

    /// A cursor at the oldest retained batch.
    pub fn cursor_at_start(&self) -> Cursor {
        match self.slots.front() {
            Some(s) => Cursor {
                index: self.first_index,
                lines: s.lines_before,
                bytes: s.bytes_before,
                last_end: None,
            },
            None => self.cursor_at_end(),
        }
    }

    /// Where the last pushed batch ended.
    pub fn last_end(&self) -> Option<SeqPos> {
        self.last_end
    }

    /// The timestamp of the newest line held (gap batches skipped); parses that batch, so it
    /// is for the rare resume, not the data path.
    pub fn last_line_ns(&self) -> Option<i64> {
        self.slots.iter().rev().find_map(|s| {
            let (_, lines) = logrelay_wire::batch::lines(&s.batch).ok()?;
            lines.last().map(|l| l.timestamp_ns)
        })
    }

    /// The newest line held, as a [`LineMark`]: its timestamp, and how many lines stamped alike
    /// end the ring after the newest line stamped earlier. `None` when that cannot be told
    /// exactly: no line held, a line stamped later before it (out of order), or the run of
    /// equal stamps reaching back to the oldest batch held (evicted lines may belong to it).
    /// Parses batches, so it is for the rare resume, not the data path.
    pub fn last_line_mark(&self) -> Option<LineMark> {
        let mut mark: Option<LineMark> = None;
        for s in self.slots.iter().rev() {
            let Ok((_, lines)) = logrelay_wire::batch::lines(&s.batch) else {
                continue;
            };
            for l in lines.iter().rev() {
                match mark.as_mut() {
                    None => {
                        mark = Some(LineMark {
                            ns: l.timestamp_ns,
                            nth: 1,
                        });
                    }
                    Some(m) if l.timestamp_ns == m.ns => m.nth += 1,
                    Some(m) if l.timestamp_ns < m.ns => return mark,
                    Some(_) => return None,
                }
            }
        }
        None
    }

    /// Where the ring's content starts: the end of the newest batch it evicted (`None` if it
    /// never evicted one). A reader behind it has lost what lies between.
    pub fn floor(&self) -> Option<SeqPos> {
        self.floor
    }

    /// The batches held, oldest first (the very `Bytes` pushed).
    pub fn batches(&self) -> Vec<Bytes> {
        self.slots.iter().map(|s| s.batch.clone()).collect()
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// True when `cursor` has something to read (or a lag to report).
    pub fn ready(&self, cursor: &Cursor) -> bool {
        cursor.index < self.first_index + self.slots.len() as u64
    }

    /// Moves a cursor that fell behind the oldest retained batch up to it, returning what it
    /// missed; `None` if it had not fallen behind.
    pub fn skip_lagged(&self, cursor: &mut Cursor) -> Option<Lag> {
        if cursor.index >= self.first_index {
            return None;
        }
        let (lines, bytes) = match self.slots.front() {
            Some(s) => (s.lines_before, s.bytes_before),
            None => (self.lines_total, self.bytes_total),
        };
        let lag = Lag {
            from: cursor.last_end,
            lines: lines - cursor.lines,
            bytes: bytes - cursor.bytes,
        };
        cursor.index = self.first_index;
        cursor.lines = lines;
        cursor.bytes = bytes;
        Some(lag)
    }

    /// Reads from `cursor` up to about `max_bytes` (at least one batch) and advances it.
    pub fn read(&self, cursor: &mut Cursor, max_bytes: usize) -> Read {
        let mut out = Read {
            lag: self.skip_lagged(cursor),
            ..Read::default()
        };
        let mut taken = 0usize;
        let mut prev = if out.lag.is_some() {
            None
        } else {
            cursor.last_end
        };
        let start = (cursor.index - self.first_index) as usize;
        for slot in self.slots.iter().skip(start) {
            if taken >= max_bytes && !out.batches.is_empty() {
                break;
            }
            if let Some(p) = prev
                && p.epoch != slot.end.epoch
            {
                out.epoch_breaks.push((out.batches.len(), p));
            }
            prev = Some(slot.end);
            taken += slot.batch.len();
            out.batches.push((slot.batch.clone(), slot.lines));
            cursor.index += 1;
            cursor.lines = slot.lines_before + u64::from(slot.lines);
            cursor.bytes = slot.bytes_before + slot.batch.len() as u64;
            cursor.last_end = Some(slot.end);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(seq: u64) -> SeqPos {
        SeqPos { epoch: 1, seq }
    }

    #[test]
    fn every_reader_gets_the_same_bytes() {
        let mut r = Ring::new(1000);
        let mut a = r.cursor_at_end();
        let mut b = r.cursor_at_end();
        let batch = Bytes::from(vec![7u8; 100]);
        r.push(batch.clone(), 3, pos(3));
        let ra = r.read(&mut a, usize::MAX);
        let rb = r.read(&mut b, usize::MAX);
        assert_eq!(ra.batches[0].0.as_ptr(), batch.as_ptr());
        assert_eq!(rb.batches[0].0.as_ptr(), batch.as_ptr());
        assert!(!r.ready(&a));
    }

    #[test]
    fn a_slow_reader_skips_to_the_oldest_batch_and_learns_what_it_missed() {
        let mut r = Ring::new(250);
        let mut slow = r.cursor_at_end();
        r.push(Bytes::from(vec![0u8; 100]), 10, pos(10));
        let mut fast = r.cursor_at_end();
        let got = r.read(&mut slow, 1);
        assert_eq!(got.batches.len(), 1);
        for i in 2..=5 {
            let dropped = r.push(Bytes::from(vec![0u8; 100]), 10, pos(10 * i));
            assert!(dropped.0 <= 10);
        }
        // Ring holds batches 4 and 5 (200 bytes); slow has read batch 1 only.
        let got = r.read(&mut slow, usize::MAX);
        assert_eq!(
            got.lag,
            Some(Lag {
                from: Some(pos(10)),
                lines: 20,
                bytes: 200
            })
        );
        assert_eq!(got.batches.len(), 2);
        let got = r.read(&mut fast, usize::MAX);
        assert_eq!(got.lag.unwrap().lines, 20);
    }

    proptest! {
        /// Model: lines delivered + lines reported missing = lines pushed after the cursor was
        /// taken, in order, however reads and pushes interleave.
        #[test]
        fn delivered_plus_missed_is_everything(
            ops in proptest::collection::vec((any::<bool>(), 1usize..300, 1u32..20, 1usize..600), 1..200),
            cap in 100usize..2000,
        ) {
            let mut r = Ring::new(cap);
            let mut c = r.cursor_at_end();
            let (mut pushed, mut got, mut missed, mut seq) = (0u64, 0u64, 0u64, 0u64);
            let mut last_seen_end = 0u64;
            for (is_push, len, lines, max) in ops {
                if is_push {
                    seq += u64::from(lines);
                    r.push(Bytes::from(vec![0u8; len]), lines, pos(seq));
                    pushed += u64::from(lines);
                } else {
                    let read = r.read(&mut c, max);
                    if let Some(l) = read.lag { missed += l.lines; }
                    for (_, n) in &read.batches { got += u64::from(*n); }
                    if let Some(e) = c.last_end { prop_assert!(e.seq >= last_seen_end); last_seen_end = e.seq; }
                }
                prop_assert!(r.held_bytes() <= cap || r.slots.len() == 1);
            }
            let read = r.read(&mut c, usize::MAX);
            if let Some(l) = read.lag { missed += l.lines; }
            for (_, n) in &read.batches { got += u64::from(*n); }
            prop_assert_eq!(got + missed, pushed);
        }
    }

    #[test]
    fn a_reader_learns_where_the_epoch_it_was_reading_ended() {
        let mut r = Ring::new(10_000);
        let mut c = r.cursor_at_end();
        r.push(Bytes::from_static(b"a"), 5, pos(5));
        assert!(r.read(&mut c, usize::MAX).epoch_breaks.is_empty());
        r.push(Bytes::from_static(b"b"), 5, pos(10));
        r.push(Bytes::from_static(b"c"), 3, SeqPos { epoch: 2, seq: 3 });
        r.push(Bytes::from_static(b"d"), 3, SeqPos { epoch: 2, seq: 6 });
        let read = r.read(&mut c, usize::MAX);
        assert_eq!(read.batches.len(), 3);
        assert_eq!(read.epoch_breaks, vec![(1, pos(10))]);
        // A reader joining at the end of the old epoch learns it too.
        let mut late = Ring::new(10_000);
        late.push(Bytes::from_static(b"a"), 5, pos(5));
        let mut c = late.cursor_at_end();
        late.push(Bytes::from_static(b"c"), 3, SeqPos { epoch: 2, seq: 3 });
        assert_eq!(
            late.read(&mut c, usize::MAX).epoch_breaks,
            vec![(0, pos(5))]
        );
    }

    /// A log batch of lines stamped `stamps`, in order.
    fn stamped(stamps: &[i64]) -> Bytes {
        let mut b = logrelay_wire::batch::BatchBuilder::new(1, 1, 0, 0, 0);
        for &t in stamps {
            b.push(t, logrelay_wire::batch::LineFlags(0), b"x\n");
        }
        b.finish()
    }

    #[test]
    fn the_last_line_is_marked_by_its_stamp_and_rank_or_not_at_all() {
        let mut r = Ring::new(10_000);
        assert_eq!(r.last_line_mark(), None, "nothing held");
        r.push(stamped(&[5, 5, 7]), 3, pos(3));
        r.push(stamped(&[7, 7]), 2, pos(5));
        // A run of equal stamps across batches, after an earlier stamp.
        assert_eq!(r.last_line_mark(), Some(LineMark { ns: 7, nth: 3 }));
        // A gap batch holds no line.
        r.push(logrelay_wire::batch::encode_gap(1, 1, 5, 2, 0), 0, pos(7));
        assert_eq!(r.last_line_mark(), Some(LineMark { ns: 7, nth: 3 }));
        // Out of order: a later stamp before the last line.
        r.push(stamped(&[9, 8]), 2, pos(9));
        assert_eq!(r.last_line_mark(), None);
        // A run reaching back to the oldest batch held may have lost lines to eviction.
        let mut small = Ring::new(10_000);
        small.push(stamped(&[4, 4]), 2, pos(2));
        assert_eq!(small.last_line_mark(), None);
        assert_eq!(small.floor(), None);
        let mut tiny = Ring::new(1);
        tiny.push(stamped(&[1]), 1, pos(1));
        tiny.push(stamped(&[2]), 1, pos(2));
        assert_eq!(tiny.floor(), Some(pos(1)), "the end of what was evicted");
    }
}
