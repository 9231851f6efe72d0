//! The hub's wanting side on the backplane: other relays' streams in the catalog, and the
//! batches of a wanted one fed into its ring here, in order, with the agent's sequence numbers
//! and epoch, and every hole in what NATS delivered turned into an exact gap notice.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use logrelay_wire::batch::{self, BatchHeader, FLAG_COUNT_UNKNOWN, Kind};
use logrelay_wire::control::SeqPos;

use super::Hub;
use super::core::RemoteState;
use super::core::backfill::{missing, restamp};
use crate::backplane::codec::DataHeader;
use crate::backplane::holes::Hole;
use crate::backplane::subject::{AgentTokens, Token};
use crate::backplane::{Answer, Backplane, CatalogSink, RemoteSink, catalog};
use crate::backplane::{BackfillAsk, LeaseFirst};
use crate::fanout::LiveStream;
use crate::session::outbox::Outbox;
use tokio::sync::mpsc;

/// What the shell needs to want and release other relays' streams.
#[derive(Debug, Clone)]
pub(super) struct RemoteCtx {
    pub(super) backplane: Backplane,
    pub(super) hub: Weak<Hub>,
}

impl RemoteCtx {
    /// Wants `stream` of `agent`, its batches fed into `live` (in the background: the
    /// subscription is a NATS round trip).
    /// `first`: what its first watcher brings (the owner's live demand, if the lease opens
    /// it, reads its backlog first and is traced under its subscription).
    pub(super) fn want(
        &self,
        agent: AgentTokens,
        stream: Token,
        live: Arc<LiveStream>,
        first: LeaseFirst,
    ) {
        let sink = Arc::new(RemoteFeed {
            hub: self.hub.clone(),
            live,
            agent: agent.agent,
            state: AtomicU8::new(UNKNOWN),
        });
        let bp = self.backplane.clone();
        let hub = self.hub.clone();
        // Taken now, in the hub's order: a release decided after this want ends it.
        let ticket = bp.want_ticket(&agent.agent, &stream);
        tokio::spawn(async move {
            let mut wait = WANT_RETRY_MIN;
            while let Err(e) = bp
                .want(agent, stream, ticket, sink.clone(), first.clone())
                .await
            {
                tracing::warn!(error = %e, "backplane: a remote stream could not be wanted; retrying");
                let Some(h) = hub.upgrade() else {
                    return;
                };
                h.remote_state(agent.agent, stream, RemoteState::Unavailable);
                drop(h);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(WANT_RETRY_MAX);
                if !bp.ticket_stands(&agent.agent, &stream, ticket) {
                    return;
                }
            }
        });
    }

    /// Fetches the backlog `ask` of `stream` of `agent` from the owner's ring, one reply after
    /// the other, into a watch's queue `tx` (batches stamped with `live`'s id), up to
    /// `ask.until` or, unset, where `live` starts (once known); then closes the queue (the
    /// watch goes `live`). What cannot be fetched (the owner or NATS went away) is told as a
    /// gap, exact when the range is known.
    pub(super) fn backfill(
        &self,
        agent: AgentTokens,
        stream: Token,
        ask: BackfillAsk,
        live: Arc<LiveStream>,
        tx: mpsc::Sender<Bytes>,
        session: Weak<Outbox>,
    ) {
        let bp = self.backplane.clone();
        tokio::spawn(async move {
            let wake = session.clone();
            // `tx` goes with the fetch, whichever way it ends; the session is woken after,
            // so it sees the queue closed (and goes live) now, not at its next ping.
            fetch_backlog(bp, agent, stream, ask, live, tx, session).await;
            if let Some(o) = wake.upgrade() {
                o.wake();
            }
        });
    }

    /// Releases `stream` of `agent`.
    pub(super) fn release(&self, agent: &Token, stream: &Token) {
        self.backplane.release(agent, stream);
    }
}

/// The backlog `ask` of `stream` of `agent`, fetched from the owner's ring into `tx` (see
/// [`RemoteCtx::backfill`]); returns when it is all there, or told as a gap, or the session
/// went.
async fn fetch_backlog(
    bp: Backplane,
    agent: AgentTokens,
    stream: Token,
    ask: BackfillAsk,
    live: Arc<LiveStream>,
    tx: mpsc::Sender<Bytes>,
    session: Weak<Outbox>,
) {
    let key = live.id().get();
    let mut ask = ask;
    if ask.until.is_none() {
        let base = tokio::select! {
            b = live.base() => b,
            () = tx.closed() => return,
        };
        match base {
            Some(b) => ask.until = Some(b),
            // The owner held nothing when this relay wanted the stream.
            None => return,
        }
    }
    drop(live);
    let until = ask.until;
    let mut reached = ask.since_seq;
    let mut short = 0u32;
    loop {
        let reply = match bp.backfill(&agent, stream, ask).await {
            Ok(r) if r.known => r,
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "backplane: a backfill stopped");
                if let Some(gap) = unfetched(key, reached, until) {
                    let _ = tx.send(gap).await;
                }
                break;
            }
        };
        for b in &reply.batches {
            if tx.send(restamp(b, key, true)).await.is_err() {
                return;
            }
            if let Some(o) = session.upgrade() {
                o.wake();
            }
        }
        reached = reply.next.or(reached);
        // Short of `until` without more to come: the owner's ring had not taken in
        // its last batch yet when it answered; asked again a few times.
        let behind =
            matches!((reached, until), (Some(r), Some(u)) if r.epoch == u.epoch && r.seq < u.seq);
        if reply.more || (behind && short < BACKFILL_RETRIES) {
            if !reply.more {
                short += 1;
                tokio::time::sleep(BACKFILL_RETRY).await;
            }
            ask = BackfillAsk {
                tail: None,
                since_ns: None,
                since_seq: reached,
                until,
            };
            if reached.is_none() {
                break;
            }
            continue;
        }
        if behind && let Some(gap) = unfetched(key, reached, until) {
            let _ = tx.send(gap).await;
        }
        break;
    }
}

/// The gap notice (in ring `key`) for what of the backlog from `reached` to `until` could
/// not be fetched, if anything: exact when both ends are known.
fn unfetched(key: u64, reached: Option<SeqPos>, until: Option<SeqPos>) -> Option<Bytes> {
    let (from, lines, exact) = missing(reached, until)?;
    let flags = if exact { 0 } else { FLAG_COUNT_UNKNOWN };
    Some(batch::encode_gap_flagged(
        key,
        from.epoch,
        from.seq,
        u32::try_from(lines).unwrap_or(u32::MAX),
        0,
        flags,
    ))
}

/// First wait before a failed want (its NATS subscription) is tried again; it doubles up to
/// [`WANT_RETRY_MAX`] while the want stands.
const WANT_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between two tries of a failed want.
const WANT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Times a backfill that came back short of where the ring starts is asked again.
const BACKFILL_RETRIES: u32 = 20;
/// Wait before asking again.
const BACKFILL_RETRY: std::time::Duration = std::time::Duration::from_millis(25);

const FLOWING: u8 = 0;
const AWAY: u8 = 1;
const UNAVAILABLE: u8 = 2;
/// Nothing told yet: the first answer or batch is told to the hub.
const UNKNOWN: u8 = u8::MAX;

/// Feeds one wanted stream's ring.
struct RemoteFeed {
    hub: Weak<Hub>,
    live: Arc<LiveStream>,
    agent: Token,
    /// The last state told to the hub (the hub is told only of changes).
    state: AtomicU8,
}

impl RemoteFeed {
    /// Tells the hub where the stream stands, if that changed.
    fn tell(&self, stream: Token, state: RemoteState) {
        let code = match state {
            RemoteState::Flowing => FLOWING,
            RemoteState::Away => AWAY,
            RemoteState::Unavailable => UNAVAILABLE,
        };
        if self.state.swap(code, Ordering::Relaxed) != code
            && let Some(hub) = self.hub.upgrade()
        {
            hub.remote_state(self.agent, stream, state);
        }
    }

    /// A gap notice of `lines` lines from `from`, in this ring's stream.
    fn gap(&self, from: SeqPos, lines: u64, bytes: u64, exact: bool) {
        let count = u32::try_from(lines).unwrap_or(u32::MAX);
        let flags = if exact && u64::from(count) == lines {
            0
        } else {
            FLAG_COUNT_UNKNOWN
        };
        let notice = batch::encode_gap_flagged(
            self.live.id().get(),
            from.epoch,
            from.seq,
            count,
            bytes,
            flags,
        );
        self.live.push(
            notice,
            0,
            SeqPos {
                epoch: from.epoch,
                seq: from.seq + u64::from(count),
            },
        );
    }
}

impl RemoteSink for RemoteFeed {
    fn batch(&self, stream: Token, _header: &DataHeader, batch: Bytes, _repeated: u64) {
        let Ok(h) = BatchHeader::parse(&batch) else {
            tracing::warn!("backplane: a batch that does not parse is dropped");
            return;
        };
        self.tell(stream, RemoteState::Flowing);
        // Continuity with what the ring holds, by sequence number in the agent's epoch: lines
        // already held (the agent resent them after moving) are not pushed again, lines
        // skipped (published before this relay wanted them again, or lost) are an exact gap.
        // An empty ring holds, in effect, everything up to where it starts (the owner's
        // position when this relay wanted the stream): what the owner published before that
        // (its answer overtook them here) is read from its ring by the backfills, not again
        // from here.
        let held = self
            .live
            .last_end()
            .or_else(|| self.live.known_base().flatten());
        if let Some(last) = held
            && last.epoch == h.epoch
        {
            if h.end_seq() <= last.seq && h.count > 0 {
                return;
            }
            if h.first_seq > last.seq {
                self.gap(last, h.first_seq - last.seq, 0, true);
            }
        }
        // Stamped with this relay's id of the stream.
        let mut out = BytesMut::from(&batch[..]);
        out[4..12].copy_from_slice(&self.live.id().get().to_le_bytes());
        let lines = if h.kind == Kind::Log { h.count } else { 0 };
        self.live.push(
            out.freeze(),
            lines,
            SeqPos {
                epoch: h.epoch,
                seq: h.end_seq(),
            },
        );
    }

    fn hole(&self, _stream: Token, hole: Hole, reason: &'static str) {
        tracing::debug!(?hole, reason, "backplane: hole in a remote stream");
        // Where the ring already holds past the hole's start (a batch after it told of it by
        // sequence number), nothing more is told.
        if self
            .live
            .last_end()
            .is_some_and(|l| l.epoch == hole.from.epoch && l.seq > hole.from.seq)
        {
            return;
        }
        // Within one epoch the lines lost are known by sequence number (a remote stream is
        // never line-filtered), even when their bytes are not (the agent moved to another
        // relay, which published them before this relay followed it): the gap is exact. Only
        // a loss spanning an epoch change has an unknown count.
        let lines_exact = !hole.rest_of_epoch;
        if hole.lines > 0 || !lines_exact {
            self.gap(hole.from, hole.lines, hole.bytes, lines_exact);
        }
    }

    fn answer(&self, stream: Token, answer: Answer) {
        let state = match answer {
            Answer::Top { top, .. } => {
                if self.live.last_end().is_none() {
                    // Nothing received yet: the batches to come start where the owner stands.
                    self.live.set_base(top.top);
                }
                RemoteState::Flowing
            }
            Answer::Away => RemoteState::Away,
            Answer::Unavailable => RemoteState::Unavailable,
            Answer::Refused(limit) => {
                if let Some(hub) = self.hub.upgrade() {
                    hub.remote_refused(self.agent, stream, &limit);
                }
                return;
            }
        };
        self.tell(stream, state);
    }
}

/// Keeps the hub's copy of the shared catalog in step.
pub(super) struct CatalogFeed {
    pub(super) hub: Weak<Hub>,
    pub(super) backplane: Backplane,
}

impl CatalogSink for CatalogFeed {
    fn changed(&self, _changes: Vec<catalog::Change>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remote_catalog(&self.backplane);
        }
    }
}
