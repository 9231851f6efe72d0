//! Fan-out: the part of a ring that ingest writes to and session writers read from, without the
//! hub. One push per batch wakes every watcher; each watcher reads the very same `Bytes` from
//! its own cursor ([`crate::ring`]). The bytes held count against the relay-wide memory budget.
//!
//! Lock order: the ring, then the watchers list (never both at once on the push path).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logrelay_wire::control::SeqPos;
use tokio::sync::Notify;

use crate::hub::core::Resume;
use crate::ids::{SessionId, StreamId};
use crate::metrics::RelayMetrics;
use crate::ring::{self, Cursor, Ring};

/// A ring, its watchers' wakers, and what each watcher has been handed.
#[derive(Debug)]
pub struct LiveStream {
    id: StreamId,
    /// The lag histograms' label: what the stream carries.
    kind: crate::metrics::LagKind,
    ring: Mutex<Ring>,
    capacity_bytes: usize,
    watchers: Mutex<Vec<(SessionId, Arc<Notify>)>>,
    metrics: Arc<RelayMetrics>,
    budget_bytes: usize,
    /// Per watching session, the end of what its writer has handed to the socket (`None`:
    /// nothing yet, from the ring's start): what the agent may forget ([`Self::ack_point`]).
    delivered: Mutex<HashMap<SessionId, Option<SeqPos>>>,
    /// Where the ring's content starts, once known: the first batch pushed since it was made
    /// or emptied, or (for another relay's stream) the owner's position when this relay
    /// wanted it (`Some(None)`: the owner held nothing). A backlog fetched from the owner ends
    /// there.
    base: tokio::sync::watch::Sender<Option<Option<SeqPos>>>,
    /// The address of the last sampled batch pushed (0: none), which session writers check
    /// with one load per batch they take; [`Self::traced`] holds its trace.
    traced_at: AtomicUsize,
    traced: Mutex<Option<TracedBatch>>,
}

/// The last sampled batch pushed: its ingest span, which the sessions writing it trace under.
#[derive(Debug)]
struct TracedBatch {
    at: usize,
    /// Its first 28 header bytes (magic to `first_seq`): a later batch that reuses the address
    /// of a freed one is not taken for it.
    header: [u8; 28],
    ingest: logrelay_telemetry::SpanContext,
    /// `relay.session_write` spans it may still get.
    writes_left: u32,
}

/// The most `relay.session_write` spans one sampled batch gets (its first writers).
pub const MAX_TRACED_WRITES: u32 = 16;

impl LiveStream {
    /// An empty ring `id` of `capacity_bytes`, whose pushes stay within the relay-wide
    /// `budget_bytes` (`logrelay_relay_buffered_bytes`).
    pub fn new(
        id: StreamId,
        kind: logrelay_wire::labels::StreamKind,
        capacity_bytes: usize,
        budget_bytes: usize,
        metrics: Arc<RelayMetrics>,
    ) -> Self {
        Self {
            id,
            kind: crate::metrics::LagKind::of(kind),
            ring: Mutex::new(Ring::new(capacity_bytes)),
            capacity_bytes,
            watchers: Mutex::new(Vec::new()),
            metrics,
            budget_bytes,
            delivered: Mutex::new(HashMap::new()),
            base: tokio::sync::watch::Sender::new(None),
            traced_at: AtomicUsize::new(0),
            traced: Mutex::new(None),
        }
    }

    /// Marks `batch`, about to be pushed, as sampled: the sessions that take it trace their
    /// write of it under `ingest` (the first [`MAX_TRACED_WRITES`] of them).
    pub fn mark_traced(&self, batch: &Bytes, ingest: logrelay_telemetry::SpanContext) {
        let at = batch.as_ptr() as usize;
        let mut header = [0u8; 28];
        let n = batch.len().min(header.len());
        header[..n].copy_from_slice(&batch[..n]);
        *self.traced.lock().expect("traced lock") = Some(TracedBatch {
            at,
            header,
            ingest,
            writes_left: MAX_TRACED_WRITES,
        });
        self.traced_at.store(at, Ordering::Release);
    }

    /// The ingest span of `batch` (the very `Bytes` pushed), if it is the sampled one and its
    /// writes may still be traced; counts this write.
    pub fn traced(&self, batch: &Bytes) -> Option<logrelay_telemetry::SpanContext> {
        let at = batch.as_ptr() as usize;
        if self.traced_at.load(Ordering::Acquire) != at {
            return None;
        }
        let mut t = self.traced.lock().expect("traced lock");
        let traced = t.as_mut().filter(|t| {
            t.at == at && t.writes_left > 0 && batch.get(..t.header.len()) == Some(&t.header[..])
        })?;
        traced.writes_left -= 1;
        Some(traced.ingest.clone())
    }

    /// Sets where the ring's content starts, unless that is known already.
    pub fn set_base(&self, at: Option<SeqPos>) {
        self.base.send_if_modified(|b| {
            if b.is_some() {
                return false;
            }
            *b = Some(at);
            true
        });
    }

    /// Forgets where the ring's content starts (it is to be learnt again), if it is empty.
    pub fn forget_base(&self) {
        if self.last_end().is_none() {
            self.base.send_replace(None);
        }
    }

    /// Where the ring's content starts, once known (`None`: the owner held nothing when this
    /// relay wanted it). Pends until then; `None` as well if the ring is gone.
    pub async fn base(&self) -> Option<SeqPos> {
        let mut rx = self.base.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(b) => b.flatten(),
            Err(_) => None,
        }
    }

    /// Where the ring's content starts, if known now (`Some(None)`: the owner held nothing
    /// when this relay wanted it); `None` while unknown.
    pub fn known_base(&self) -> Option<Option<SeqPos>> {
        *self.base.borrow()
    }

    /// The ring's id (what its batches carry).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The lag histograms' label of its batches.
    pub fn lag_kind(&self) -> &crate::metrics::LagKind {
        &self.kind
    }

    /// Appends a batch and wakes every watcher. Returns lines dropped from the ring: its own
    /// oldest batches, to stay within the ring's size and the relay-wide memory budget.
    pub fn push(&self, batch: Bytes, lines: u32, end: SeqPos) -> u64 {
        let len = batch.len() as i64;
        if self.base.borrow().is_none()
            && let Ok(h) = logrelay_wire::batch::BatchHeader::parse(&batch)
        {
            self.set_base(Some(SeqPos {
                epoch: h.epoch,
                seq: h.first_seq,
            }));
        }
        let dropped_lines = {
            let mut ring = self.ring.lock().expect("ring lock");
            let (mut dropped, dropped_bytes) = ring.push(batch, lines, end);
            self.metrics
                .buffered_bytes
                .inc_by(len - dropped_bytes as i64);
            while self.metrics.buffered_bytes.get() > self.budget_bytes as i64 {
                let Some((l, b)) = ring.evict_oldest() else {
                    break;
                };
                self.metrics.buffered_bytes.dec_by(b as i64);
                dropped += l;
            }
            dropped
        };
        if dropped_lines > 0 {
            self.metrics.ring_evicted_lines.inc_by(dropped_lines);
        }
        for (_, w) in self.watchers.lock().expect("watchers lock").iter() {
            w.notify_one();
        }
        dropped_lines
    }

    /// Moves a lagging watcher's cursor to the oldest batch still held; what it missed.
    pub fn skip_lagged(&self, cursor: &mut Cursor) -> Option<ring::Lag> {
        self.ring.lock().expect("ring lock").skip_lagged(cursor)
    }

    /// Reads for one watcher.
    pub fn read(&self, cursor: &mut Cursor, max_bytes: usize) -> ring::Read {
        self.ring.lock().expect("ring lock").read(cursor, max_bytes)
    }

    /// The end of the last batch received.
    pub fn last_end(&self) -> Option<SeqPos> {
        self.ring.lock().expect("ring lock").last_end()
    }

    /// The batches held, oldest first (the very `Bytes`), and the end of what the ring let go.
    pub fn held(&self) -> (Vec<Bytes>, Option<SeqPos>) {
        let ring = self.ring.lock().expect("ring lock");
        (ring.batches(), ring.floor())
    }

    /// Cursors at the oldest batch held and at the end, taken together.
    pub fn ends(&self) -> (Cursor, Cursor) {
        let ring = self.ring.lock().expect("ring lock");
        (ring.cursor_at_start(), ring.cursor_at_end())
    }

    /// Where a live demand resuming this ring starts: after the last batch, and after the
    /// newest line held (by its time and by its mark).
    pub fn resume(&self) -> Resume {
        Resume::of(&self.ring.lock().expect("ring lock"))
    }

    /// Session `session` starts watching, woken through `waker`, its cursor at `from`.
    pub fn attach(&self, session: SessionId, waker: Arc<Notify>, from: Option<SeqPos>) {
        self.delivered
            .lock()
            .expect("delivered lock")
            .insert(session, from);
        self.watchers
            .lock()
            .expect("watchers lock")
            .push((session, waker));
    }

    /// Session `session` stops watching: the ring neither wakes it nor waits for it.
    pub fn detach(&self, session: SessionId) {
        self.watchers
            .lock()
            .expect("watchers lock")
            .retain(|(s, _)| *s != session);
        self.delivered
            .lock()
            .expect("delivered lock")
            .remove(&session);
    }

    /// A session's writer handed everything before `to` to its socket.
    pub fn delivered(&self, session: SessionId, to: Option<SeqPos>) {
        if let Some(d) = self
            .delivered
            .lock()
            .expect("delivered lock")
            .get_mut(&session)
        {
            *d = to.or(*d);
        }
    }

    /// What every watcher has been handed, in the ring's current epoch: the agent may forget
    /// what it sent before it (see [`ack_point`]).
    pub fn ack_point(&self) -> Option<SeqPos> {
        let ring = self.ring.lock().expect("ring lock");
        let (end, floor) = (ring.last_end(), ring.floor());
        drop(ring);
        let delivered = self.delivered.lock().expect("delivered lock");
        ack_point(end, floor, delivered.values().copied())
    }

    /// Lets go of everything held (the demand was cancelled after the linger).
    pub fn empty(&self) {
        let mut ring = self.ring.lock().expect("ring lock");
        self.metrics.buffered_bytes.dec_by(ring.held_bytes() as i64);
        *ring = Ring::new(self.capacity_bytes);
        self.base.send_replace(None);
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        if let Ok(ring) = self.ring.lock() {
            self.metrics.buffered_bytes.dec_by(ring.held_bytes() as i64);
        }
    }
}

/// Where an agent may forget what it sent for a ring (pure): the least position that every
/// watcher has been handed (`delivered`), within the ring's current epoch (that of `end`, the
/// end of the last batch received). A watcher behind the ring's `floor` (the end of what the
/// ring evicted) counts as at the floor: it is told of that loss as a gap anyway. With no
/// watcher, everything received. `None` while some watcher has nothing of the current epoch.
pub fn ack_point(
    end: Option<SeqPos>,
    floor: Option<SeqPos>,
    delivered: impl IntoIterator<Item = Option<SeqPos>>,
) -> Option<SeqPos> {
    let end = end?;
    let floor = floor.filter(|f| f.epoch == end.epoch).map(|f| f.seq);
    let mut ack = end.seq;
    for d in delivered {
        let at = match d.filter(|d| d.epoch == end.epoch) {
            Some(d) => d.seq.max(floor.unwrap_or(0)),
            None => floor?,
        };
        ack = ack.min(at);
    }
    Some(SeqPos {
        epoch: end.epoch,
        seq: ack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_may_forget_what_every_watcher_was_handed() {
        let at = |epoch, seq| Some(SeqPos { epoch, seq });
        // Nothing received: nothing to acknowledge.
        assert_eq!(ack_point(None, None, [at(1, 5)]), None);
        // No watcher (lingering): everything received.
        assert_eq!(ack_point(at(1, 50), None, []), at(1, 50));
        // The slowest watcher decides.
        assert_eq!(
            ack_point(at(1, 50), None, [at(1, 40), at(1, 20)]),
            at(1, 20)
        );
        // A watcher that has had nothing yet holds everything back…
        assert_eq!(ack_point(at(1, 50), None, [at(1, 40), None]), None);
        // …unless the ring already evicted past it: it gets a gap for that part anyway.
        assert_eq!(
            ack_point(at(1, 50), at(1, 30), [at(1, 40), None]),
            at(1, 30)
        );
        assert_eq!(ack_point(at(1, 50), at(1, 30), [at(1, 10)]), at(1, 30));
        // A watcher still in the previous epoch has had none of the current one.
        assert_eq!(ack_point(at(2, 9), None, [at(1, 40)]), None);
        assert_eq!(ack_point(at(2, 9), at(2, 3), [at(1, 40)]), at(2, 3));
    }

    #[test]
    fn only_the_sampled_batch_itself_gets_session_write_spans_and_at_most_sixteen() {
        use logrelay_wire::batch::{BatchBuilder, LineFlags};
        let metrics = Arc::new(RelayMetrics::new());
        let live = LiveStream::new(
            StreamId::from(1),
            logrelay_wire::labels::StreamKind::Log,
            1 << 20,
            1 << 20,
            metrics,
        );
        let batch = |first| {
            let mut b = BatchBuilder::new(1, 1, first, 0, 0);
            b.push(1, LineFlags(0), b"x\n");
            b.finish()
        };
        let (sampled, other) = (batch(0), batch(1));
        let ingest = logrelay_telemetry::context_of([1; 16], [2; 8], 1).unwrap();
        assert_eq!(live.traced(&sampled), None, "nothing marked yet");
        live.mark_traced(&sampled, ingest.clone());
        assert_eq!(live.traced(&other), None);
        // The same bytes elsewhere are another batch.
        assert_eq!(live.traced(&Bytes::copy_from_slice(&sampled)), None);
        for _ in 0..MAX_TRACED_WRITES {
            assert_eq!(live.traced(&sampled), Some(ingest.clone()));
        }
        assert_eq!(live.traced(&sampled), None, "sixteen writes at most");
    }
}
