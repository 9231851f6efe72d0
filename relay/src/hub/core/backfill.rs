//! Backfill across relays (pure): what the relay holding an agent answers from its ring when
//! another relay asks for a stream's backlog ([`select`]), and how the asking relay stamps
//! what it gets for its own session ([`restamp`]) and names what it could not get
//! ([`missing`]).
//!
//! The owner answers from the batches its ring holds, the first and last trimmed to the range
//! asked, so that the asking relay's session sees each line once: its backfill ends exactly
//! where the asking relay's ring takes over (`until`). What the ring no longer holds is
//! answered with a gap notice, exact where the ring knows how many lines it let go.

use bytes::{Bytes, BytesMut};
use logrelay_wire::batch::{
    self, BatchBuilder, BatchHeader, FLAG_BACKFILL, FLAG_CONTINUES, FLAG_COUNT_UNKNOWN, Kind,
};
use logrelay_wire::control::SeqPos;

use crate::backplane::codec::{BACKFILL_FRAME_BYTES, BackfillAsk};

/// One reply's worth of a backfill, as [`select`] chooses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Batches and gap notices, oldest first (stamped as the ring holds them).
    pub batches: Vec<Bytes>,
    /// One past the last line answered (where a further request starts), if anything was.
    pub next: Option<SeqPos>,
    /// The budget ran out before the range did: ask again from `next`.
    pub more: bool,
}

/// A batch of the ring with its header.
#[derive(Debug, Clone)]
struct Item {
    h: BatchHeader,
    bytes: Bytes,
}

impl Item {
    fn end(&self) -> SeqPos {
        SeqPos {
            epoch: self.h.epoch,
            seq: self.h.end_seq(),
        }
    }

    /// The same batch cut to the lines `from..to` (sequence numbers of its epoch).
    fn cut(&self, from: u64, to: u64) -> Item {
        let (from, to) = (from.max(self.h.first_seq), to.min(self.h.end_seq()));
        if from == self.h.first_seq && to == self.h.end_seq() {
            return self.clone();
        }
        let bytes = match self.h.kind {
            Kind::Log => {
                // Flags of the batch, except that a cut start no longer continues an epoch.
                let flags = if from > self.h.first_seq {
                    self.h.flags & !FLAG_CONTINUES
                } else {
                    self.h.flags
                };
                let mut b = BatchBuilder::new(self.h.stream, self.h.epoch, from, flags, 0);
                if let Ok((_, lines)) = batch::lines(&self.bytes) {
                    for l in lines.iter().filter(|l| l.seq >= from && l.seq < to) {
                        b.push(l.timestamp_ns, l.flags, l.message);
                    }
                }
                b.finish()
            }
            Kind::Gap => batch::encode_gap_flagged(
                self.h.stream,
                self.h.epoch,
                from,
                u32::try_from(to - from).unwrap_or(u32::MAX),
                0,
                self.h.flags,
            ),
        };
        let h = BatchHeader::parse(&bytes).expect("just encoded");
        Item { h, bytes }
    }
}

/// The answer to `ask` from a ring holding `ring` (oldest first) whose content starts after
/// `floor` (the end of what it let go, if it let anything go), within `budget` bytes of
/// batches (each counted with its [`BACKFILL_FRAME_BYTES`]; a reply takes at least one).
///
/// * `until` cuts the range (lines before it); unset, the range ends where the ring ends.
/// * `since_seq` starts at that line. Lines of its epoch the ring no longer holds come as an
///   exact gap; if the ring holds nothing of its epoch, the answer starts at the ring's start
///   (the session is told the rest of that epoch is lost, as from an agent).
/// * Else `tail` starts that many lines before the end of the range, with a gap for the
///   lines the ring let go if it holds fewer; else `since_ns` at the first line written at or
///   after it (a gap of unknown count first if the ring let older lines go). Nothing asked:
///   nothing answered.
/// * A batch larger than the budget alone is answered as an exact gap of its lines and bytes.
pub fn select(
    ring: &[Bytes],
    floor: Option<SeqPos>,
    ask: &BackfillAsk,
    budget: usize,
) -> Selection {
    let mut held: Vec<Item> = Vec::with_capacity(ring.len());
    for bytes in ring {
        let Ok(h) = BatchHeader::parse(bytes) else {
            continue;
        };
        let item = Item {
            h,
            bytes: bytes.clone(),
        };
        match ask.until {
            Some(u) if u.epoch == h.epoch && h.first_seq >= u.seq => break,
            Some(u) if u.epoch == h.epoch && h.end_seq() > u.seq => {
                held.push(item.cut(h.first_seq, u.seq));
                break;
            }
            _ => held.push(item),
        }
    }
    let first_epoch = held.first().map(|i| i.h.epoch);
    // The ring's first batch, and what it let go just before it (same epoch).
    let let_go = floor.filter(|f| Some(f.epoch) == first_epoch);
    let gap_before = |from: u64, to: u64, exact: bool| -> Item {
        let first = &held[0];
        let bytes = batch::encode_gap_flagged(
            first.h.stream,
            first.h.epoch,
            from,
            u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX),
            0,
            if exact { 0 } else { FLAG_COUNT_UNKNOWN },
        );
        let h = BatchHeader::parse(&bytes).expect("just encoded");
        Item { h, bytes }
    };
    let mut out: Vec<Item> = Vec::new();
    if let Some(s) = ask.since_seq {
        if held.iter().any(|i| i.h.epoch == s.epoch) {
            let mut first_of_epoch = true;
            for item in &held {
                if item.h.epoch != s.epoch {
                    if !first_of_epoch {
                        out.push(item.clone());
                    }
                    continue;
                }
                if item.h.end_seq() <= s.seq {
                    first_of_epoch = false;
                    continue;
                }
                if first_of_epoch && item.h.first_seq > s.seq {
                    // Lines of the epoch the ring no longer holds.
                    out.push(gap_before(s.seq, item.h.first_seq, true));
                }
                first_of_epoch = false;
                out.push(item.cut(s.seq, u64::MAX));
            }
        } else {
            out = held.clone();
        }
    } else if let Some(n) = ask.tail.filter(|n| *n > 0) {
        let mut left = u64::from(n);
        let mut start = held.len();
        let mut cut_at = None;
        for (i, item) in held.iter().enumerate().rev() {
            if left == 0 {
                break;
            }
            start = i;
            if item.h.kind == Kind::Log {
                let count = u64::from(item.h.count);
                if count > left {
                    cut_at = Some(item.h.end_seq() - left);
                    left = 0;
                } else {
                    left -= count;
                }
            }
        }
        if left > 0
            && let Some(f) = let_go
        {
            // The ring let older lines go: those the tail still wants are lost here.
            let lines = left.min(f.seq);
            out.push(gap_before(f.seq - lines, f.seq, true));
        }
        for (i, item) in held.iter().enumerate().skip(start) {
            match cut_at {
                Some(at) if i == start => out.push(item.cut(at, u64::MAX)),
                _ => out.push(item.clone()),
            }
        }
    } else if let Some(t) = ask.since_ns {
        let mut found = None;
        'find: for (i, item) in held.iter().enumerate() {
            if item.h.kind != Kind::Log {
                continue;
            }
            if let Ok((_, lines)) = batch::lines(&item.bytes) {
                for l in lines {
                    if l.timestamp_ns >= t {
                        found = Some((i, l.seq));
                        break 'find;
                    }
                }
            }
        }
        if let Some((i, seq)) = found {
            if i == 0
                && seq == held[0].h.first_seq
                && let Some(f) = let_go
            {
                // Older lines may have been written after `since_ns`: the ring let them go.
                out.push(gap_before(f.seq, f.seq, false));
            }
            out.push(held[i].cut(seq, u64::MAX));
            out.extend(held[i + 1..].iter().cloned());
        }
    }
    let mut sel = Selection::default();
    let mut used = 0usize;
    for item in out {
        let size = BACKFILL_FRAME_BYTES + item.bytes.len();
        let item = if size > budget {
            // Too large for any reply: an exact gap of it instead.
            let bytes = batch::encode_gap(
                item.h.stream,
                item.h.epoch,
                item.h.first_seq,
                item.h.count,
                item.bytes.len() as u64,
            );
            let h = BatchHeader::parse(&bytes).expect("just encoded");
            Item { h, bytes }
        } else {
            item
        };
        let size = BACKFILL_FRAME_BYTES + item.bytes.len();
        if used + size > budget && !sel.batches.is_empty() {
            sel.more = true;
            break;
        }
        used += size;
        sel.next = Some(item.end());
        sel.batches.push(item.bytes);
    }
    sel
}

/// What of `ask` lies before everything a ring holding `ring` (oldest first) has, and so can
/// only come from the agent's files: the one-off read to ask of the agent, which ends where
/// the ring's content starts (`from`, returned beside it); the ring answers from `from` on.
/// `None` when the ring covers the ask, is empty, or its first batch starts its epoch (nothing
/// lies before it).
///
/// * `since_seq`: lines of the ring's first epoch before its first batch.
/// * Else `tail`: the lines the ring holds before `until` fall short of it; the agent is asked
///   for the rest, the last ones before `from`.
/// * Else `since_ns`: the ring's first line was written at or after it (older lines may be
///   too).
pub fn before_ring(ring: &[Bytes], ask: &BackfillAsk) -> Option<(BackfillAsk, SeqPos)> {
    let mut first: Option<(BatchHeader, &Bytes)> = None;
    let mut held = 0u64;
    for bytes in ring {
        let Ok(h) = BatchHeader::parse(bytes) else {
            continue;
        };
        let end = match ask.until {
            Some(u) if u.epoch == h.epoch && h.first_seq >= u.seq => break,
            Some(u) if u.epoch == h.epoch => h.end_seq().min(u.seq),
            _ => h.end_seq(),
        };
        if first.is_none() {
            first = Some((h, bytes));
        }
        if h.kind == Kind::Log {
            held += end - h.first_seq;
        }
    }
    let (first, first_bytes) = first?;
    if first.first_seq == 0 {
        return None;
    }
    let from = SeqPos {
        epoch: first.epoch,
        seq: first.first_seq,
    };
    let agent = if let Some(s) = ask.since_seq {
        (s.epoch == from.epoch && s.seq < from.seq).then(|| BackfillAsk {
            since_seq: Some(s),
            until: Some(from),
            ..BackfillAsk::default()
        })?
    } else if let Some(n) = ask.tail.filter(|n| *n > 0) {
        let left = u64::from(n).checked_sub(held).filter(|l| *l > 0)?;
        BackfillAsk {
            tail: Some(u32::try_from(left).unwrap_or(u32::MAX)),
            until: Some(from),
            ..BackfillAsk::default()
        }
    } else if let Some(t) = ask.since_ns {
        let first_ns = batch::lines(first_bytes)
            .ok()
            .and_then(|(_, lines)| lines.first().map(|l| l.timestamp_ns))?;
        (first.kind == Kind::Log && first_ns >= t).then(|| BackfillAsk {
            since_ns: Some(t),
            until: Some(from),
            ..BackfillAsk::default()
        })?
    } else {
        return None;
    };
    Some((agent, from))
}

/// What a one-off read of the agent brought for the part of a backfill before the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Its batches (and the agent's gap notices), oldest first.
    pub batches: Vec<Bytes>,
    /// It ended by itself (else the budget or the deadline stopped it).
    pub ended: bool,
}

/// The answer to `ask` from the agent's part (`fetched`: what it read up to `from`, where the
/// ring's content starts; `None` when the read was refused) followed by the ring's from
/// `from` on, within `budget` bytes of batches.
///
/// The agent's part is used when it ends in the ring's first epoch, at or before `from`:
/// short of it, either it stopped for the budget or the deadline (`more`: the next request
/// goes on from its end) or the agent's files had no more (the lines between are an exact
/// gap). Otherwise, or when it brought nothing, the ring answers alone, as [`select`] does.
pub fn with_agent_part(
    ring: &[Bytes],
    floor: Option<SeqPos>,
    ask: &BackfillAsk,
    from: SeqPos,
    fetched: Option<Fetched>,
    budget: usize,
) -> Selection {
    let alone = || select(ring, floor, ask, budget);
    let Some(fetched) = fetched else {
        return alone();
    };
    let end = fetched.batches.iter().rev().find_map(|b| {
        BatchHeader::parse(b).ok().map(|h| SeqPos {
            epoch: h.epoch,
            seq: h.end_seq(),
        })
    });
    let Some(end) = end.filter(|e| e.epoch == from.epoch && e.seq <= from.seq) else {
        return alone();
    };
    let mut used: usize = fetched
        .batches
        .iter()
        .map(|b| BACKFILL_FRAME_BYTES + b.len())
        .sum();
    let mut sel = Selection {
        batches: fetched.batches,
        next: Some(end),
        more: false,
    };
    if end.seq < from.seq {
        if !fetched.ended {
            sel.more = true;
            return sel;
        }
        // The agent's files hold no more before the ring: told exactly.
        let gap = batch::encode_gap(
            first_stream(ring).unwrap_or(0),
            from.epoch,
            end.seq,
            u32::try_from(from.seq - end.seq).unwrap_or(u32::MAX),
            0,
        );
        used += BACKFILL_FRAME_BYTES + gap.len();
        sel.batches.push(gap);
        sel.next = Some(from);
    }
    let ring_ask = BackfillAsk {
        since_seq: Some(from),
        until: ask.until,
        ..BackfillAsk::default()
    };
    let rest = budget.saturating_sub(used);
    let from_ring = select(ring, floor, &ring_ask, rest);
    let fits = from_ring
        .batches
        .first()
        .is_none_or(|b| BACKFILL_FRAME_BYTES + b.len() <= rest);
    if !fits {
        sel.more = true;
        return sel;
    }
    sel.batches.extend(from_ring.batches);
    sel.next = from_ring.next.or(sel.next);
    sel.more = from_ring.more;
    sel
}

/// The stream id the ring's batches carry.
fn first_stream(ring: &[Bytes]) -> Option<u64> {
    ring.iter()
        .find_map(|b| BatchHeader::parse(b).ok().map(|h| h.stream))
}

/// A batch of another relay's ring, stamped with this relay's `stream` id, and marked as
/// backfill when it is (it precedes the session's `live`).
pub fn restamp(batch: &Bytes, stream: u64, backfill: bool) -> Bytes {
    let mut out = BytesMut::from(&batch[..]);
    if out.len() >= batch::HEADER_LEN {
        out[4..12].copy_from_slice(&stream.to_le_bytes());
        if backfill {
            out[3] |= FLAG_BACKFILL;
        }
    }
    out.freeze()
}

/// What could not be fetched when a backfill stopped at `from` short of `until` (the owner
/// went away, or NATS did): `(from, lines, exact)` for a gap notice, if anything is missing.
/// Exact when both are in one epoch; otherwise of unknown count from `from`.
pub fn missing(from: Option<SeqPos>, until: Option<SeqPos>) -> Option<(SeqPos, u64, bool)> {
    match (from, until) {
        (Some(f), Some(u)) if f.epoch == u.epoch => {
            (u.seq > f.seq).then(|| (f, u.seq - f.seq, true))
        }
        (Some(f), _) => Some((f, 0, false)),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use logrelay_wire::batch::LineFlags;
    use proptest::prelude::*;

    use super::*;

    const EPOCH: u64 = 7;

    /// A log batch of lines `first..first + n`, line `s` written at `s * 10` ns and reading
    /// `line s`.
    fn log(first: u64, n: u64) -> Bytes {
        let mut b = BatchBuilder::new(3, EPOCH, first, 0, 0);
        for s in first..first + n {
            b.push(
                i64::try_from(s * 10).unwrap(),
                LineFlags(0),
                format!("line {s}\n").as_bytes(),
            );
        }
        b.finish()
    }

    fn at(seq: u64) -> SeqPos {
        SeqPos { epoch: EPOCH, seq }
    }

    /// Every line and gap of a selection, in order: `Ok(seq)` per line, `Err((from, lines))`
    /// per gap notice.
    fn seen(sel: &Selection) -> Vec<Result<u64, (u64, u32)>> {
        let mut out = Vec::new();
        for b in &sel.batches {
            let h = BatchHeader::parse(b).unwrap();
            match h.kind {
                Kind::Log => {
                    let (_, lines) = batch::lines(b).unwrap();
                    for l in lines {
                        assert_eq!(l.message, format!("line {}\n", l.seq).as_bytes());
                        out.push(Ok(l.seq));
                    }
                }
                Kind::Gap => out.push(Err((h.first_seq, h.count))),
            }
        }
        out
    }

    fn lines(range: std::ops::Range<u64>) -> Vec<Result<u64, (u64, u32)>> {
        range.map(Ok).collect()
    }

    /// A ring of batches of 10 lines from line 100 to 200, whose older lines were let go.
    fn ring() -> (Vec<Bytes>, Option<SeqPos>) {
        (
            (0..10).map(|i| log(100 + 10 * i, 10)).collect(),
            Some(at(100)),
        )
    }

    #[test]
    fn what_lies_before_the_ring_is_asked_of_the_agent_up_to_where_the_ring_starts() {
        let (ring, _) = ring();
        let ask = |tail, since_ns, since_seq, until| BackfillAsk {
            tail,
            since_ns,
            since_seq,
            until,
        };
        let agent = |tail, since_ns, since_seq| {
            Some((ask(tail, since_ns, since_seq, Some(at(100))), at(100)))
        };
        // A tail the ring covers; one it does not: the rest, the last lines before its start.
        assert_eq!(before_ring(&ring, &ask(Some(30), None, None, None)), None);
        assert_eq!(before_ring(&ring, &ask(Some(100), None, None, None)), None);
        assert_eq!(
            before_ring(&ring, &ask(Some(150), None, None, None)),
            agent(Some(50), None, None)
        );
        // Counted before `until` only.
        assert_eq!(
            before_ring(&ring, &ask(Some(150), None, None, Some(at(150)))),
            agent(Some(100), None, None)
        );
        // A position before the ring's start, in its epoch; one inside it; another epoch.
        assert_eq!(
            before_ring(&ring, &ask(None, None, Some(at(40)), Some(at(160)))),
            agent(None, None, Some(at(40)))
        );
        assert_eq!(
            before_ring(&ring, &ask(None, None, Some(at(120)), None)),
            None
        );
        let other = SeqPos { epoch: 9, seq: 40 };
        assert_eq!(
            before_ring(&ring, &ask(None, None, Some(other), None)),
            None
        );
        // A time at or before the ring's first line (line s written at s * 10 ns) may have
        // older lines too; a later one does not.
        assert_eq!(
            before_ring(&ring, &ask(None, Some(500), None, None)),
            agent(None, Some(500), None)
        );
        assert_eq!(
            before_ring(&ring, &ask(None, Some(1000), None, None)),
            agent(None, Some(1000), None)
        );
        assert_eq!(before_ring(&ring, &ask(None, Some(1500), None, None)), None);
        // Nothing before a ring that starts its epoch, nor in an empty ring; nothing asked.
        let whole: Vec<Bytes> = (0..3).map(|i| log(10 * i, 10)).collect();
        assert_eq!(before_ring(&whole, &ask(Some(500), None, None, None)), None);
        assert_eq!(before_ring(&[], &ask(Some(500), None, None, None)), None);
        assert_eq!(before_ring(&ring, &ask(None, None, None, None)), None);
    }

    #[test]
    fn the_agents_part_comes_first_then_the_ring_from_where_it_starts() {
        let (ring, floor) = ring();
        let ask = BackfillAsk {
            tail: Some(130),
            until: Some(at(190)),
            ..BackfillAsk::default()
        };
        let (_, from) = before_ring(&ring, &ask).unwrap();
        assert_eq!(from, at(100));
        let fetched = |batches: Vec<Bytes>, ended| Some(Fetched { batches, ended });
        // The agent read lines 60..100: then the ring's 100..190, no gap.
        let sel = with_agent_part(
            &ring,
            floor,
            &ask,
            from,
            fetched(vec![log(60, 20), log(80, 20)], true),
            usize::MAX,
        );
        assert_eq!(seen(&sel), lines(60..190));
        assert_eq!((sel.next, sel.more), (Some(at(190)), false));
        // Stopped short by the budget or the deadline: the rest on the next request.
        let sel = with_agent_part(
            &ring,
            floor,
            &ask,
            from,
            fetched(vec![log(60, 20)], false),
            usize::MAX,
        );
        assert_eq!(seen(&sel), lines(60..80));
        assert_eq!((sel.next, sel.more), (Some(at(80)), true));
        // Ended short (the files hold no more): the lines between are an exact gap.
        let sel = with_agent_part(
            &ring,
            floor,
            &ask,
            from,
            fetched(vec![log(60, 20)], true),
            usize::MAX,
        );
        let mut want = lines(60..80);
        want.push(Err((80, 20)));
        want.extend(lines(100..190));
        assert_eq!(seen(&sel), want);
        // Refused, nothing read, or another epoch: the ring answers alone (a gap for what it
        // let go).
        let alone = select(&ring, floor, &ask, usize::MAX);
        assert_eq!(
            with_agent_part(&ring, floor, &ask, from, None, usize::MAX),
            alone
        );
        assert_eq!(
            with_agent_part(&ring, floor, &ask, from, fetched(vec![], true), usize::MAX),
            alone
        );
        let mut other = BatchBuilder::new(3, EPOCH + 1, 60, 0, 0);
        other.push(1, LineFlags(0), b"line 60\n");
        assert_eq!(
            with_agent_part(
                &ring,
                floor,
                &ask,
                from,
                fetched(vec![other.finish()], true),
                usize::MAX
            ),
            alone
        );
        // The budget holds the agent's part but not the ring's first batch: asked again from
        // where the ring starts.
        let part = vec![log(60, 20), log(80, 20)];
        let used: usize = part.iter().map(|b| BACKFILL_FRAME_BYTES + b.len()).sum();
        let sel = with_agent_part(&ring, floor, &ask, from, fetched(part, true), used + 10);
        assert_eq!(seen(&sel), lines(60..100));
        assert_eq!((sel.next, sel.more), (Some(at(100)), true));
    }

    #[test]
    fn tail_gives_exactly_the_last_lines_before_until() {
        let (ring, floor) = ring();
        let ask = BackfillAsk {
            tail: Some(25),
            until: Some(at(187)),
            ..BackfillAsk::default()
        };
        let sel = select(&ring, floor, &ask, usize::MAX);
        assert_eq!(seen(&sel), lines(162..187));
        assert_eq!((sel.next, sel.more), (Some(at(187)), false));
        // No until: the last lines the ring holds.
        let sel = select(
            &ring,
            floor,
            &BackfillAsk {
                tail: Some(3),
                ..BackfillAsk::default()
            },
            usize::MAX,
        );
        assert_eq!(seen(&sel), lines(197..200));
    }

    #[test]
    fn what_the_ring_let_go_is_an_exact_gap() {
        let (ring, floor) = ring();
        let tail = BackfillAsk {
            tail: Some(120),
            ..BackfillAsk::default()
        };
        let mut want = vec![Err((80, 20))];
        want.extend(lines(100..200));
        assert_eq!(seen(&select(&ring, floor, &tail, usize::MAX)), want);
        // A ring that never let anything go holds the whole stream: no gap.
        assert_eq!(
            seen(&select(&ring, None, &tail, usize::MAX)),
            lines(100..200)
        );
        let resume = BackfillAsk {
            since_seq: Some(at(40)),
            ..BackfillAsk::default()
        };
        let mut want = vec![Err((40, 60))];
        want.extend(lines(100..200));
        assert_eq!(seen(&select(&ring, floor, &resume, usize::MAX)), want);
    }

    #[test]
    fn since_seq_resumes_at_that_line_and_another_epoch_from_the_start() {
        let (ring, floor) = ring();
        let ask = BackfillAsk {
            since_seq: Some(at(155)),
            until: Some(at(160)),
            ..BackfillAsk::default()
        };
        assert_eq!(
            seen(&select(&ring, floor, &ask, usize::MAX)),
            lines(155..160)
        );
        // At or past the end: nothing.
        let ask = BackfillAsk {
            since_seq: Some(at(200)),
            ..BackfillAsk::default()
        };
        let sel = select(&ring, floor, &ask, usize::MAX);
        assert!(sel.batches.is_empty());
        // An epoch the ring does not hold: everything it holds (the session is told the rest
        // of its epoch is lost when the first batch is of another).
        let ask = BackfillAsk {
            since_seq: Some(SeqPos { epoch: 1, seq: 5 }),
            ..BackfillAsk::default()
        };
        assert_eq!(
            seen(&select(&ring, floor, &ask, usize::MAX)),
            lines(100..200)
        );
    }

    #[test]
    fn since_ns_starts_at_the_first_line_written_then() {
        let (ring, _) = ring();
        let ask = BackfillAsk {
            since_ns: Some(1_234),
            ..BackfillAsk::default()
        };
        assert_eq!(
            seen(&select(&ring, None, &ask, usize::MAX)),
            lines(124..200)
        );
        // Older than anything held, after the ring let lines go: a gap of unknown count.
        let ask = BackfillAsk {
            since_ns: Some(0),
            ..BackfillAsk::default()
        };
        let sel = select(&ring, Some(at(100)), &ask, usize::MAX);
        let gap = BatchHeader::parse(&sel.batches[0]).unwrap();
        assert_eq!(
            (gap.kind, gap.first_seq, gap.flags & FLAG_COUNT_UNKNOWN),
            (Kind::Gap, 100, FLAG_COUNT_UNKNOWN)
        );
        assert_eq!(seen(&sel)[1..], lines(100..200)[..]);
        // Nothing asked: nothing answered.
        assert!(
            select(&ring, None, &BackfillAsk::default(), usize::MAX)
                .batches
                .is_empty()
        );
    }

    #[test]
    fn a_batch_too_large_for_a_reply_is_an_exact_gap_of_it() {
        let ring = vec![log(0, 10), log(10, 1000), log(1010, 10)];
        let big = ring[1].len();
        let ask = BackfillAsk {
            since_seq: Some(at(0)),
            ..BackfillAsk::default()
        };
        let mut all = Vec::new();
        let mut from = at(0);
        loop {
            let sel = select(
                &ring,
                None,
                &BackfillAsk {
                    since_seq: Some(from),
                    ..ask
                },
                big / 2,
            );
            all.extend(seen(&sel));
            from = sel.next.unwrap();
            if !sel.more {
                break;
            }
        }
        let mut want = lines(0..10);
        want.push(Err((10, 1000)));
        want.extend(lines(1010..1020));
        assert_eq!(all, want);
    }

    #[test]
    fn restamped_batches_are_this_relays_and_missing_names_what_did_not_come() {
        let b = restamp(&log(0, 2), 99, true);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!((h.stream, h.flags & FLAG_BACKFILL), (99, FLAG_BACKFILL));
        assert_eq!(batch::lines(&b).unwrap().1.len(), 2);
        assert_eq!(missing(Some(at(5)), Some(at(9))), Some((at(5), 4, true)));
        assert_eq!(missing(Some(at(9)), Some(at(9))), None);
        assert_eq!(missing(Some(at(5)), None), Some((at(5), 0, false)));
        assert_eq!(missing(None, Some(at(9))), None);
    }

    proptest! {
        /// Fetched in replies of any budget, one after the other from each reply's `next`,
        /// a backfill gives every line from `since` to `until` once, in order.
        #[test]
        fn chunked_replies_give_every_line_once(
            sizes in proptest::collection::vec(1u64..40, 1..20),
            since in 0u64..400,
            until_off in 0u64..400,
            budget in 200usize..3000,
        ) {
            let mut ring = Vec::new();
            let mut seq = 0;
            for n in &sizes {
                ring.push(log(seq, *n));
                seq += n;
            }
            let end = seq;
            let since = since.min(end);
            let until = (since + until_off).min(end);
            let mut all = Vec::new();
            let mut from = at(since);
            for _ in 0..1000 {
                let sel = select(&ring, None, &BackfillAsk {
                    since_seq: Some(from),
                    until: Some(at(until)),
                    ..BackfillAsk::default()
                }, budget);
                let used: usize = sel.batches.iter().map(|b| BACKFILL_FRAME_BYTES + b.len()).sum();
                prop_assert!(used <= budget || sel.batches.len() == 1);
                all.extend(seen(&sel));
                match sel.next {
                    Some(n) if sel.more => from = n,
                    _ => break,
                }
            }
            // A batch too large for the budget comes as a gap of its lines: count them as seen.
            let mut got = Vec::new();
            for s in all {
                match s {
                    Ok(l) => got.push(l),
                    Err((f, n)) => got.extend(f..f + u64::from(n)),
                }
            }
            prop_assert_eq!(got, (since..until).collect::<Vec<_>>());
        }
    }
}
