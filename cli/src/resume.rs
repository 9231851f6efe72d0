//! Never silently lose or repeat a line: per-stream bookkeeping of what was printed, pure (no
//! I/O, no clock), fed every line, gap notice and epoch change of one stream.
//!
//! - A line whose `(epoch, seq)` was already printed is a repeat and is dropped (a backlog that
//!   overlaps the live tail, a resume that re-sends).
//! - Where the next `seq` of the same epoch jumps ahead of the last printed one and no gap notice
//!   accounted for the jump, the hole is reported ([`Fresh::hole`]) so it is printed as a gap.
//!   (Only without an agent-side line filter: `--contains`/`--matches` leave numbers out.)
//! - A new epoch after a notice that the old one is lost is expected; without one it is reported.
//! - After a reconnection the stream is resumed from [`Tracker::resume_from`]: the next `seq`
//!   of the last epoch, and the last line's time, so that if the agent lost that epoch, lines
//!   written meanwhile still come (lines of that very timestamp already printed are recognised
//!   by their text and dropped).

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hasher};

/// Lines of the newest timestamp remembered, to recognise them in a new epoch.
const SAME_TIME_LINES: usize = 256;

/// Where a stream was, for a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Epoch of the last line printed.
    pub epoch: u64,
    /// First sequence number not yet printed.
    pub next_seq: u64,
    /// Timestamp of the last line printed (Unix ns).
    pub since_ns: i64,
}

/// Lines that will never come, as the client works them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hole {
    /// Sequence numbers `from..to` of the same epoch never arrived and nothing said why.
    Skipped {
        /// First missing.
        from: u64,
        /// One past the last missing.
        to: u64,
    },
    /// The numbering changed (a new epoch) with no notice that the old one was lost: an
    /// unknown number of lines may be missing.
    EpochChanged,
}

/// What to do with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Already printed: drop it.
    Repeat,
    /// Print it; report `hole` first if set.
    Fresh {
        /// What went missing before it.
        hole: Option<Hole>,
    },
}

/// One stream's record of what was printed.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Current epoch and the last seq printed in it.
    last: Option<(u64, u64)>,
    /// Timestamp of the last line printed.
    last_ts: i64,
    /// Hashes of the messages printed with `last_ts` (bounded).
    same_time: VecDeque<u64>,
    /// Lines up to this seq of the current epoch are accounted for by gap notices.
    explained_to: Option<u64>,
    /// The current epoch was declared lost: a new epoch is expected.
    epoch_lost: bool,
    /// Epochs left behind and their last printed seq (bounded), to drop late repeats.
    retired: VecDeque<(u64, u64)>,
    /// Check for unexplained jumps in `seq` (off when an agent-side filter leaves lines out).
    check_holes: bool,
}

impl Tracker {
    /// A tracker; `check_holes` is false when the agent filters lines (numbers are skipped).
    pub fn new(check_holes: bool) -> Self {
        Self {
            check_holes,
            ..Self::default()
        }
    }

    /// Where to resume after a reconnection (`None` before the first line).
    pub fn resume_from(&self) -> Option<Resume> {
        self.last.map(|(epoch, seq)| Resume {
            epoch,
            next_seq: self.explained_to.map_or(seq, |e| e.max(seq)) + 1,
            since_ns: self.last_ts,
        })
    }

    /// Judges a line (and records it when fresh).
    pub fn line(&mut self, epoch: u64, seq: u64, timestamp_ns: i64, message: &[u8]) -> Verdict {
        let Some((cur, last)) = self.last else {
            self.record(epoch, seq, timestamp_ns, message);
            return Verdict::Fresh { hole: None };
        };
        if epoch == cur {
            if seq <= last {
                return Verdict::Repeat;
            }
            let expected = self.explained_to.map_or(last, |e| e.max(last)) + 1;
            let hole = (self.check_holes && seq > expected).then_some(Hole::Skipped {
                from: expected,
                to: seq,
            });
            self.record(epoch, seq, timestamp_ns, message);
            return Verdict::Fresh { hole };
        }
        if let Some(&(_, retired_last)) = self.retired.iter().find(|(e, _)| *e == epoch) {
            // A late line of an epoch already left: print it only if it is new.
            return if seq <= retired_last {
                Verdict::Repeat
            } else {
                Verdict::Fresh { hole: None }
            };
        }
        // A new epoch. Lines stamped with the last printed time may be ones already printed
        // (a resume by time after the old numbering was lost).
        if timestamp_ns < self.last_ts
            || (timestamp_ns == self.last_ts && self.same_time.contains(&hash(message)))
        {
            return Verdict::Repeat;
        }
        let hole = (!self.epoch_lost).then_some(Hole::EpochChanged);
        self.retired.push_back((cur, last));
        if self.retired.len() > 4 {
            self.retired.pop_front();
        }
        self.epoch_lost = false;
        self.explained_to = None;
        self.record(epoch, seq, timestamp_ns, message);
        Verdict::Fresh { hole }
    }

    fn record(&mut self, epoch: u64, seq: u64, timestamp_ns: i64, message: &[u8]) {
        self.last = Some((epoch, seq));
        if timestamp_ns != self.last_ts {
            self.same_time.clear();
            self.last_ts = timestamp_ns;
        }
        if self.same_time.len() == SAME_TIME_LINES {
            self.same_time.pop_front();
        }
        self.same_time.push_back(hash(message));
    }

    /// A notice that lines `first_seq .. first_seq + lines` of `epoch` will never come.
    pub fn gap(&mut self, epoch: u64, first_seq: u64, lines: u64) {
        if lines == 0 {
            return;
        }
        if self.last.is_none_or(|(e, _)| e == epoch) {
            let end = first_seq + lines - 1;
            self.explained_to = Some(self.explained_to.map_or(end, |x| x.max(end)));
        }
    }

    /// A notice that the rest of `epoch` is lost: the next lines come in a new epoch.
    pub fn epoch_lost(&mut self, epoch: u64) {
        if self.last.is_none_or(|(e, _)| e == epoch) {
            self.epoch_lost = true;
        }
    }
}

fn hash(message: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(message);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Verdict {
        Verdict::Fresh { hole: None }
    }

    #[test]
    fn repeats_are_dropped_and_the_resume_point_follows_the_last_line() {
        let mut t = Tracker::new(true);
        assert_eq!(t.resume_from(), None);
        for seq in 10..13 {
            assert_eq!(t.line(7, seq, 100 + seq as i64, b"x"), fresh());
        }
        assert_eq!(t.line(7, 11, 111, b"x"), Verdict::Repeat);
        assert_eq!(t.line(7, 12, 112, b"x"), Verdict::Repeat);
        assert_eq!(
            t.resume_from(),
            Some(Resume {
                epoch: 7,
                next_seq: 13,
                since_ns: 112
            })
        );
    }

    #[test]
    fn an_unexplained_jump_is_a_hole_and_an_explained_one_is_not() {
        let mut t = Tracker::new(true);
        t.line(1, 0, 0, b"a");
        assert_eq!(
            t.line(1, 5, 1, b"b"),
            Verdict::Fresh {
                hole: Some(Hole::Skipped { from: 1, to: 5 })
            }
        );
        t.gap(1, 6, 10);
        assert_eq!(t.line(1, 16, 2, b"c"), fresh());
        // The resume point skips what a notice declared gone.
        t.gap(1, 17, 3);
        assert_eq!(t.resume_from().unwrap().next_seq, 20);
        // Filtered streams skip numbers by design.
        let mut f = Tracker::new(false);
        f.line(1, 0, 0, b"a");
        assert_eq!(f.line(1, 9, 0, b"b"), fresh());
    }

    #[test]
    fn a_new_epoch_is_expected_only_after_the_old_one_was_declared_lost() {
        let mut t = Tracker::new(true);
        t.line(1, 5, 10, b"a");
        assert_eq!(
            t.line(2, 0, 11, b"b"),
            Verdict::Fresh {
                hole: Some(Hole::EpochChanged)
            }
        );
        t.epoch_lost(2);
        assert_eq!(t.line(3, 0, 12, b"c"), fresh());
        // Late lines of an epoch left behind: repeats dropped, new ones printed.
        assert_eq!(t.line(2, 0, 11, b"b"), Verdict::Repeat);
        assert_eq!(t.line(2, 1, 11, b"b2"), fresh());
    }

    #[test]
    fn lines_of_the_last_timestamp_are_recognised_in_a_new_epoch() {
        let mut t = Tracker::new(true);
        t.line(1, 0, 50, b"one\n");
        t.line(1, 1, 60, b"two\n");
        t.line(1, 2, 60, b"three\n");
        t.epoch_lost(1);
        // Resumed by time (since_ns = 60) in a new epoch: 60's lines come again.
        assert_eq!(t.line(9, 100, 60, b"two\n"), Verdict::Repeat);
        assert_eq!(t.line(9, 101, 60, b"three\n"), Verdict::Repeat);
        assert_eq!(t.line(9, 102, 60, b"four\n"), fresh());
        assert_eq!(t.line(9, 103, 61, b"five\n"), fresh());
        assert_eq!(t.line(9, 103, 61, b"five\n"), Verdict::Repeat);
    }

    proptest::proptest! {
        /// Deliveries of one epoch as runs of lines that overlap (a resume re-sending) or
        /// skip ahead (lines lost): every line is printed at most once, in order, and every
        /// line between the first and the last printed that was not printed is inside exactly
        /// one reported hole.
        #[test]
        fn overlapping_and_skipping_deliveries_print_once_and_report_every_hole(
            runs in proptest::collection::vec((0u64..40, 1u64..30), 1..20)
        ) {
            let mut t = Tracker::new(true);
            let mut printed: Vec<u64> = Vec::new();
            let mut reported = 0u64;
            let mut delivered = std::collections::BTreeSet::new();
            for (start, len) in runs {
                for seq in start..start + len {
                    delivered.insert(seq);
                    match t.line(5, seq, seq as i64, b"x") {
                        Verdict::Repeat => {}
                        Verdict::Fresh { hole } => {
                            if let Some(Hole::Skipped { from, to }) = hole {
                                reported += to - from;
                            }
                            printed.push(seq);
                        }
                    }
                }
            }
            proptest::prop_assert!(printed.windows(2).all(|w| w[0] < w[1]), "{printed:?}");
            let (first, last) = (printed[0], *printed.last().unwrap());
            // Lines between the first and the last printed that were not printed: reported.
            let unprinted = (last - first + 1) - printed.len() as u64;
            proptest::prop_assert_eq!(reported, unprinted);
            // A line that comes after a later one was printed is dropped: it was reported.
            proptest::prop_assert!(delivered.contains(&first) && delivered.contains(&last));
        }
    }
}
