//! Numbered lines into batches (pure): the one encoder of backfills and followers.

use std::time::Instant;

use bytes::Bytes;
use logrelay_wire::batch::{
    BatchBuilder, FLAG_CONTINUES, FLAG_COUNT_UNKNOWN, HEADER_LEN, LineFlags, encode_gap_flagged,
};

use super::filter::Filter;
use super::plan::{After, Plan};
use super::reader::TailLine;

/// A batch ready to queue or send.
#[derive(Debug)]
pub struct Encoded {
    /// The encoded batch.
    pub bytes: Bytes,
    /// Sequence number of its first line (or of the gap).
    pub first_seq: u64,
    /// One past its last line.
    pub end_seq: u64,
    /// Lines in it (0 for a gap).
    pub lines: u32,
    /// When the read of its first line began, if the reader said ([`Encoder::reading`]).
    pub read_at: Option<Instant>,
}

/// Packs consecutive wanted lines into batches.
#[derive(Debug)]
pub struct Encoder {
    stream_ref: u64,
    epoch: u64,
    flags: u8,
    max_batch_bytes: usize,
    filter: Filter,
    /// Lines below this sequence number are not sent (already sent, or before the backlog).
    from_seq: u64,
    /// Lines from this sequence number on are not sent (`until`).
    until_seq: Option<u64>,
    /// A new epoch that continues what the relay holds: lines up to that one are skipped.
    after: Option<After>,
    /// Header flags for the next batch only ([`FLAG_CONTINUES`]).
    pending_flags: u8,
    batch: Option<BatchBuilder>,
    /// When the read now being encoded began ([`Self::reading`]).
    reading: Option<Instant>,
    /// When the read of the current batch's first line began.
    batch_read_at: Option<Instant>,
}

impl Encoder {
    /// An encoder of `plan`'s lines (its epoch, `from_seq`, `until_seq`, `after`) passing
    /// `filter`, into batches stamped `stream_ref` and `flags`, of up to `max_batch_bytes`.
    pub fn new(
        plan: &Plan,
        stream_ref: u64,
        flags: u8,
        max_batch_bytes: usize,
        filter: Filter,
    ) -> Self {
        Self {
            stream_ref,
            epoch: plan.epoch,
            flags,
            max_batch_bytes,
            filter,
            from_seq: plan.from_seq,
            until_seq: plan.until_seq,
            after: plan.after,
            pending_flags: 0,
            batch: None,
            reading: None,
            batch_read_at: None,
        }
    }

    /// The lines pushed from now on were read by a read that began `at` (a batch's trace
    /// starts at its first line's).
    pub fn reading(&mut self, at: Instant) {
        self.reading = Some(at);
    }

    /// Lines below this sequence number are not sent.
    pub fn from_seq(&self) -> u64 {
        self.from_seq
    }

    /// Adds a line: into the current batch if wanted (`out` gets the batch once full), else
    /// it ends the current batch.
    pub fn push(&mut self, line: &TailLine, out: &mut Vec<Encoded>) {
        let mut wanted = line.seq >= self.from_seq
            && self.until_seq.is_none_or(|u| line.seq < u)
            && self.filter.wants(line);
        if let Some(a) = self.after.as_mut()
            && line.timestamp_ns < a.ns
        {
            a.older_seen = true;
        }
        if wanted && let Some(a) = self.after.as_mut() {
            if line.timestamp_ns < a.ns || (line.timestamp_ns == a.ns && a.remaining > 0) {
                // Held by the relay already.
                if line.timestamp_ns == a.ns {
                    a.remaining -= 1;
                }
                wanted = false;
            } else {
                // The first line after the last one the relay holds.
                if a.older_seen && a.remaining == 0 {
                    self.pending_flags |= FLAG_CONTINUES;
                }
                self.after = None;
            }
        }
        if !wanted {
            // Batches hold consecutive lines only.
            self.flush(out);
            return;
        }
        let flags = self.flags | std::mem::take(&mut self.pending_flags);
        if self.batch.is_none() {
            self.batch_read_at = self.reading;
        }
        let batch = self.batch.get_or_insert_with(|| {
            BatchBuilder::new(
                self.stream_ref,
                self.epoch,
                line.seq,
                flags,
                self.max_batch_bytes.min(64 * 1024),
            )
        });
        batch.push(line.timestamp_ns, LineFlags(line.flags), &line.message);
        if batch.encoded_len() >= self.max_batch_bytes {
            self.flush(out);
        }
    }

    /// A gap batch of `bytes` missing before line `at`, after the lines before it.
    pub fn gap(&mut self, at: u64, bytes: u64, out: &mut Vec<Encoded>) {
        self.flush(out);
        out.push(Encoded {
            bytes: encode_gap_flagged(
                self.stream_ref,
                self.epoch,
                at,
                0,
                bytes,
                FLAG_COUNT_UNKNOWN,
            ),
            first_seq: at,
            end_seq: at,
            lines: 0,
            read_at: None,
        });
    }

    /// Ends the current batch, if any, into `out`.
    pub fn flush(&mut self, out: &mut Vec<Encoded>) {
        if let Some(b) = self.batch.take() {
            let first_seq = b.next_seq() - u64::from(b.len());
            let (end_seq, lines) = (b.next_seq(), b.len());
            out.push(Encoded {
                bytes: b.finish(),
                first_seq,
                end_seq,
                lines,
                read_at: self.batch_read_at.take(),
            });
        }
    }
}

/// Writes `stream_ref` into a batch's header if it differs (a follower's batches outlive the
/// data stream, and a restarted relay may number the stream differently).
pub fn restamp(batch: Bytes, stream_ref: u64) -> Bytes {
    if batch.len() < HEADER_LEN || batch[4..12] == stream_ref.to_le_bytes() {
        return batch;
    }
    let mut m = batch
        .try_into_mut()
        .unwrap_or_else(|b| bytes::BytesMut::from(&b[..]));
    m[4..12].copy_from_slice(&stream_ref.to_le_bytes());
    m.freeze()
}

#[cfg(test)]
mod tests {
    use logrelay_wire::batch::{BatchHeader, Kind, lines};

    use super::super::plan::Position;
    use super::*;

    fn plan(from_seq: u64, until_seq: Option<u64>, after: Option<After>) -> Plan {
        Plan {
            epoch: 9,
            start: Position {
                index: 0,
                offset: 0,
                seq: 0,
            },
            from_seq,
            until_seq,
            after,
        }
    }

    fn line(seq: u64, ns: i64, text: &str) -> TailLine {
        TailLine {
            seq,
            timestamp_ns: ns,
            flags: 0,
            message: Bytes::from(format!("{text}\n")),
        }
    }

    /// A batch as `(first_seq, flags, [(seq, message)])`.
    type Decoded = (u64, u8, Vec<(u64, String)>);

    fn decoded(out: &[Encoded]) -> Vec<Decoded> {
        out.iter()
            .map(|e| {
                let (h, ls) = lines(&e.bytes).unwrap();
                assert_eq!((h.stream, h.epoch), (5, 9));
                let ls = ls
                    .iter()
                    .map(|l| (l.seq, String::from_utf8_lossy(l.message).into_owned()))
                    .collect();
                (h.first_seq, h.flags, ls)
            })
            .collect()
    }

    #[test]
    fn only_the_planned_and_wanted_lines_are_sent_in_runs_of_consecutive_lines() {
        let filter = Filter {
            contains: Some(b"keep".to_vec()),
            ..Filter::default()
        };
        let mut enc = Encoder::new(&plan(2, Some(7), None), 5, 0, 1 << 20, filter);
        let mut out = Vec::new();
        for (seq, text) in [
            "keep", "keep", "keep", "keep", "drop", "keep", "keep", "keep",
        ]
        .iter()
        .enumerate()
        {
            enc.push(&line(seq as u64, 1, text), &mut out);
        }
        enc.flush(&mut out);
        assert_eq!(
            decoded(&out),
            [
                (2, 0, vec![(2, "keep\n".into()), (3, "keep\n".into())]),
                (5, 0, vec![(5, "keep\n".into()), (6, "keep\n".into())]),
            ]
        );
        assert_eq!((out[0].first_seq, out[0].end_seq, out[0].lines), (2, 4, 2));
    }

    #[test]
    fn a_continuation_skips_what_the_relay_holds_and_flags_the_first_line_after() {
        // The relay holds up to the second line stamped 20.
        let after = After {
            ns: 20,
            remaining: 2,
            older_seen: false,
        };
        let mut enc = Encoder::new(
            &plan(0, None, Some(after)),
            5,
            0,
            1 << 20,
            Filter::default(),
        );
        let mut out = Vec::new();
        for (seq, ns) in [10, 20, 20, 20, 30].iter().enumerate() {
            enc.push(&line(seq as u64, *ns, "x"), &mut out);
        }
        enc.flush(&mut out);
        assert_eq!(
            decoded(&out),
            [(
                3,
                FLAG_CONTINUES,
                vec![(3, "x\n".into()), (4, "x\n".into())]
            )]
        );
        // Without an older line read first, the continuation is not proved exact.
        let mut enc = Encoder::new(
            &plan(0, None, Some(after)),
            5,
            0,
            1 << 20,
            Filter::default(),
        );
        let mut out = Vec::new();
        for (seq, ns) in [20, 20, 20].iter().enumerate() {
            enc.push(&line(seq as u64, *ns, "x"), &mut out);
        }
        enc.flush(&mut out);
        assert_eq!(decoded(&out), [(2, 0, vec![(2, "x\n".into())])]);
    }

    #[test]
    fn a_full_batch_is_sent_and_a_gap_ends_the_batch_before_it() {
        let mut enc = Encoder::new(&plan(0, None, None), 5, 0, 64, Filter::default());
        let mut out = Vec::new();
        let long = "y".repeat(60);
        enc.push(&line(0, 1, &long), &mut out);
        assert_eq!(out.len(), 1, "a batch reaching the size is sent at once");
        enc.push(&line(1, 1, "z"), &mut out);
        enc.gap(2, 300, &mut out);
        assert_eq!(out.len(), 3);
        let gap = BatchHeader::parse(&out[2].bytes).unwrap();
        assert_eq!((gap.kind, gap.first_seq, gap.count), (Kind::Gap, 2, 0));
        assert_eq!(gap.flags & FLAG_COUNT_UNKNOWN, FLAG_COUNT_UNKNOWN);
    }

    #[test]
    fn restamping_rewrites_the_stream_ref_only() {
        let mut enc = Encoder::new(&plan(0, None, None), 5, 0, 1 << 20, Filter::default());
        let mut out = Vec::new();
        enc.push(&line(0, 1, "a"), &mut out);
        enc.flush(&mut out);
        let batch = out.pop().unwrap().bytes;
        let again = restamp(batch.clone(), 77);
        let (h, ls) = lines(&again).unwrap();
        assert_eq!((h.stream, h.epoch, ls.len()), (77, 9, 1));
        assert_eq!(restamp(batch.clone(), 5), batch);
    }
}
