//! Hole detection on what NATS delivered (pure). NATS core is at-most-once: a message can be
//! lost to a slow consumer, a reconnection or a full queue. Every data message carries its
//! origin (publishing relay, the agent's connection epoch there), its number on the subject
//! (`pub_seq`) and the bytes published before it, so a receiver names each hole exactly:
//! messages, lines (the agent's sequence numbers) and bytes. A lease reply tells where the
//! stream stands at its owner; a tail lost with nothing after it is found one reply later
//! ([`Tracker::check_top`]), when any message still in flight has had time to arrive.
//!
//! Origins: a message from a lower connection epoch than the one followed is stale (two
//! relays briefly held the agent: the higher epoch wins, [`super::epoch`]). A higher epoch is
//! the agent on a new relay: the numbering of lines continues (the agent keeps its epoch and
//! queue across relays), so continuity is judged on sequence numbers, not on `pub_seq`.

use logrelay_wire::control::SeqPos;

use super::codec::DataHeader;
use super::subject::Token;

/// Lines and bytes a receiver did not get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// Where it starts (one past the last line received).
    pub from: SeqPos,
    /// Messages lost (0 when unknown: the origin changed).
    pub messages: u64,
    /// Lines lost: exact unless `rest_of_epoch` (within one epoch they are known by sequence
    /// number), otherwise at least this many.
    pub lines: u64,
    /// Bytes lost: exact when `exact`, otherwise at least this many.
    pub bytes: u64,
    /// Whether `lines` and `bytes` are both the exact loss (bytes are not known when the
    /// origin changed: another relay published them).
    pub exact: bool,
    /// Everything of `from.epoch` from `from.seq` on is lost (the loss spans an epoch change).
    pub rest_of_epoch: bool,
}

/// What to do with one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one: deliver it.
    InOrder,
    /// Deliver it, after telling watchers of the hole before it.
    AfterHole(Hole),
    /// A new origin whose first batch starts before what was delivered: its lines up to the
    /// end delivered are repeats (an agent resending unacknowledged batches after a move). The
    /// receiver delivers it only if it reaches further, and clients drop the repeats by
    /// sequence number.
    Overlap {
        /// Lines of the batch already delivered.
        repeated: u64,
    },
    /// Already covered, or from a lower connection epoch: drop it.
    Stale,
}

/// The last message followed on one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    relay: Token,
    conn_epoch: u64,
    pub_seq: u64,
    /// `bytes_before` + the batch's bytes: the next message's `bytes_before`.
    bytes_end: u64,
    /// One past the last line.
    end: SeqPos,
}

/// Where the owner stood at a lease reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Top {
    /// The relay holding the agent.
    pub relay: Token,
    /// Its connection epoch of the agent.
    pub conn_epoch: u64,
    /// Last `pub_seq` it published on the subject.
    pub pub_seq: u64,
    /// Bytes it published on the subject in total.
    pub bytes: u64,
    /// One past the last line it published.
    pub end: Option<SeqPos>,
}

/// Follows one stream's subject at one receiving relay.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    last: Option<Last>,
    /// A top seen at the previous reply, checked at the next one.
    pending: Option<Top>,
}

impl Tracker {
    /// Nothing followed yet: the first message is taken as it comes (the join point is the
    /// hub's business: backfill up to it from the owner).
    pub fn new() -> Self {
        Self::default()
    }

    /// One past the last line delivered, if any.
    pub fn end(&self) -> Option<SeqPos> {
        self.last.map(|l| l.end)
    }

    /// Takes one received message of `batch_bytes` batch bytes.
    pub fn observe(&mut self, h: &DataHeader, batch_bytes: u64) -> Seen {
        let next = Last {
            relay: h.relay,
            conn_epoch: h.conn_epoch,
            pub_seq: h.pub_seq,
            bytes_end: h.bytes_before + batch_bytes,
            end: SeqPos {
                epoch: h.first.epoch,
                seq: h.end_seq,
            },
        };
        let Some(last) = self.last else {
            self.last = Some(next);
            return Seen::InOrder;
        };
        if h.conn_epoch < last.conn_epoch {
            return Seen::Stale;
        }
        let same_origin = h.conn_epoch == last.conn_epoch && h.relay == last.relay;
        if same_origin {
            if h.pub_seq <= last.pub_seq {
                return Seen::Stale;
            }
            self.last = Some(next);
            if h.pub_seq == last.pub_seq + 1 {
                return Seen::InOrder;
            }
            return Seen::AfterHole(hole(
                last,
                h.pub_seq - last.pub_seq - 1,
                h.first,
                h.bytes_before.saturating_sub(last.bytes_end),
                true,
            ));
        }
        // A new origin (the agent moved, or two relays held it and the higher epoch won).
        if h.first.epoch != last.end.epoch {
            // A new numbering: the hub's epoch handling (renumbered / epoch_lost) applies.
            self.last = Some(next);
            return Seen::InOrder;
        }
        if h.end_seq <= last.end.seq {
            // Everything in it was delivered already; follow the new origin from here.
            self.last = Some(Last {
                end: last.end,
                ..next
            });
            return Seen::Stale;
        }
        self.last = Some(next);
        match h.first.seq.cmp(&last.end.seq) {
            std::cmp::Ordering::Equal => Seen::InOrder,
            std::cmp::Ordering::Less => Seen::Overlap {
                repeated: last.end.seq - h.first.seq,
            },
            // Lines are known by number; their bytes were published by nobody we followed.
            std::cmp::Ordering::Greater => Seen::AfterHole(hole(last, 0, h.first, 0, false)),
        }
    }

    /// Takes the owner's position from a lease reply. Returns the hole of a tail lost with
    /// nothing after it: what the *previous* reply said was published and still has not
    /// arrived (anything in flight then has arrived by now). The lost messages then count as
    /// seen, so a late copy is stale.
    pub fn check_top(&mut self, top: Top) -> Option<Hole> {
        let pending = self.pending.replace(top)?;
        let last = self.last?;
        let same_origin = pending.relay == last.relay && pending.conn_epoch == last.conn_epoch;
        if !same_origin || pending.pub_seq <= last.pub_seq {
            return None;
        }
        let end = pending.end?;
        self.last = Some(Last {
            pub_seq: pending.pub_seq,
            bytes_end: pending.bytes,
            end,
            ..last
        });
        Some(hole(
            last,
            pending.pub_seq - last.pub_seq,
            end,
            pending.bytes.saturating_sub(last.bytes_end),
            true,
        ))
    }
}

/// The hole between `last` and a message starting at `next`.
fn hole(last: Last, messages: u64, next: SeqPos, bytes: u64, bytes_known: bool) -> Hole {
    if next.epoch == last.end.epoch {
        Hole {
            from: last.end,
            messages,
            lines: next.seq.saturating_sub(last.end.seq),
            bytes,
            exact: bytes_known,
            rest_of_epoch: false,
        }
    } else {
        // The loss spans an epoch change: the rest of the old epoch, and the new one's start.
        Hole {
            from: last.end,
            messages,
            lines: next.seq,
            bytes,
            exact: false,
            rest_of_epoch: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const R: Token = Token([1; 16]);

    fn msg(pub_seq: u64, bytes_before: u64, first: u64, end: u64) -> DataHeader {
        DataHeader {
            relay: R,
            conn_epoch: 10,
            pub_seq,
            bytes_before,
            first: SeqPos {
                epoch: 1,
                seq: first,
            },
            end_seq: end,
        }
    }

    #[test]
    fn a_lost_message_is_an_exact_hole() {
        let mut t = Tracker::new();
        assert_eq!(t.observe(&msg(1, 0, 0, 10), 100), Seen::InOrder);
        assert_eq!(t.observe(&msg(2, 100, 10, 15), 50), Seen::InOrder);
        // 3 and 4 lost: lines 15..30, bytes 150..400.
        assert_eq!(
            t.observe(&msg(5, 400, 30, 31), 10),
            Seen::AfterHole(Hole {
                from: SeqPos { epoch: 1, seq: 15 },
                messages: 2,
                lines: 15,
                bytes: 250,
                exact: true,
                rest_of_epoch: false,
            })
        );
        assert_eq!(t.observe(&msg(5, 400, 30, 31), 10), Seen::Stale);
        assert_eq!(t.end(), Some(SeqPos { epoch: 1, seq: 31 }));
    }

    #[test]
    fn a_lost_tail_is_found_one_reply_later() {
        let mut t = Tracker::new();
        t.observe(&msg(1, 0, 0, 10), 100);
        let top = |pub_seq, bytes, seq| Top {
            relay: R,
            conn_epoch: 10,
            pub_seq,
            bytes,
            end: Some(SeqPos { epoch: 1, seq }),
        };
        // Message 2 may still be in flight at the first reply.
        assert_eq!(t.check_top(top(2, 180, 18)), None);
        // Still missing one reply later: lost.
        assert_eq!(
            t.check_top(top(2, 180, 18)),
            Some(Hole {
                from: SeqPos { epoch: 1, seq: 10 },
                messages: 1,
                lines: 8,
                bytes: 80,
                exact: true,
                rest_of_epoch: false,
            })
        );
        assert_eq!(t.observe(&msg(2, 100, 10, 18), 80), Seen::Stale);
        assert_eq!(t.check_top(top(2, 180, 18)), None);
        // Arrived in time: no hole.
        assert_eq!(t.check_top(top(3, 200, 20)), None);
        assert_eq!(t.observe(&msg(3, 180, 18, 20), 20), Seen::InOrder);
        assert_eq!(t.check_top(top(3, 200, 20)), None);
    }

    #[test]
    fn the_higher_connection_epoch_wins_and_line_numbers_bridge_a_move() {
        let mut t = Tracker::new();
        t.observe(&msg(1, 0, 0, 10), 100);
        let moved = |pub_seq, first, end| DataHeader {
            relay: Token([2; 16]),
            conn_epoch: 11,
            ..msg(pub_seq, 0, first, end)
        };
        // The new relay's first batch resends lines 5..12: 5 repeats.
        assert_eq!(
            t.observe(&moved(1, 5, 12), 70),
            Seen::Overlap { repeated: 5 }
        );
        // The old relay, still publishing for a moment: stale.
        assert_eq!(t.observe(&msg(2, 100, 10, 20), 100), Seen::Stale);
        assert_eq!(t.observe(&moved(2, 12, 14), 20), Seen::InOrder);
        // A move that lost lines: counted by number, bytes unknown.
        let again = DataHeader {
            relay: Token([3; 16]),
            conn_epoch: 12,
            ..msg(1, 0, 20, 25)
        };
        assert_eq!(
            t.observe(&again, 50),
            Seen::AfterHole(Hole {
                from: SeqPos { epoch: 1, seq: 14 },
                messages: 0,
                lines: 6,
                bytes: 0,
                exact: false,
                rest_of_epoch: false,
            })
        );
    }

    proptest! {
        /// A publisher's batches through a channel that loses any of them: every line is
        /// delivered or inside exactly one hole, holes are exact, nothing is delivered twice.
        #[test]
        fn every_line_is_delivered_or_in_exactly_one_hole(
            batches in proptest::collection::vec((1u64..20, 1u64..500, any::<bool>()), 1..80),
        ) {
            let mut t = Tracker::new();
            let (mut seq, mut bytes) = (0u64, 0u64);
            let mut sent = Vec::new();
            for (i, (lines, size, _)) in batches.iter().enumerate() {
                sent.push((msg(i as u64 + 1, bytes, seq, seq + lines), *size));
                seq += lines;
                bytes += size;
            }
            let mut covered = 0u64; // lines accounted for, from 0
            let mut covered_bytes = 0u64;
            for ((h, size), (_, _, lost)) in sent.iter().zip(&batches) {
                if *lost { continue; }
                if t.end().is_none() {
                    // The first message received is the join point: the hub backfills before it.
                    covered = h.first.seq;
                    covered_bytes = h.bytes_before;
                }
                match t.observe(h, *size) {
                    Seen::InOrder => {}
                    Seen::AfterHole(hole) => {
                        prop_assert!(hole.exact);
                        prop_assert_eq!(hole.from.seq, covered);
                        covered += hole.lines;
                        covered_bytes += hole.bytes;
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert_eq!(h.first.seq, covered, "no line twice, none silently missing");
                prop_assert_eq!(h.bytes_before, covered_bytes);
                covered = h.end_seq;
                covered_bytes += size;
            }
            // The tail: two replies naming the top.
            let top = Top { relay: R, conn_epoch: 10, pub_seq: sent.len() as u64, bytes, end: Some(SeqPos { epoch: 1, seq }) };
            prop_assert_eq!(t.check_top(top), None);
            if let Some(hole) = t.check_top(top) {
                prop_assert_eq!(hole.from.seq, covered);
                covered += hole.lines;
                covered_bytes += hole.bytes;
            } else if t.end().is_none() {
                // Everything lost and never a message: nothing to follow, nothing claimed.
                covered = seq;
                covered_bytes = bytes;
            }
            prop_assert_eq!(covered, seq);
            prop_assert_eq!(covered_bytes, bytes);
        }
    }
}
