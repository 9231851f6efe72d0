//! A session's outbox: what its writer drains — queued events, and the watches it reads
//! (a ring from a cursor, after the demands served for the watch alone) — and the drain
//! itself. The hub fills it ([`crate::hub`]); the writer empties it. Never blocks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use logrelay_wire::batch::{BatchHeader, FLAG_BACKFILL, FLAG_CONTINUES, Kind};
use logrelay_wire::code::CloseCode;
use logrelay_wire::control::SeqPos;
use logrelay_wire::reason::{EndReason, GapReason};
use logrelay_wire::session::Event;
use tokio::sync::{Notify, mpsc};

use crate::fanout::LiveStream;
use crate::ids::{SessionId, StreamId};
use crate::metrics::{DropReason, RelayMetrics};
use crate::ring::{Cursor, Lag};

/// What happens to a session that falls behind a stream's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Skip to the oldest batch still held and send a `gap` event (lines, bytes, range).
    DropOldest,
    /// Close the session with code 4009 and a reason.
    Disconnect,
}

/// Batches of one demand served for one watch alone (a backfill, or a one-off read).
#[derive(Debug)]
pub struct Backfill {
    /// Where its data stream puts them (bounded: a full queue slows that data stream only).
    rx: mpsc::Receiver<Bytes>,
    /// The `since_seq` it asked for, until its first batch shows whether that epoch was held.
    resume: Option<SeqPos>,
    /// Whether its batches number every line (no line filter): a resume's position is checked.
    dense: bool,
    /// The end of the last batch it brought.
    reached: Option<SeqPos>,
}

impl Backfill {
    /// A queue of `batches` for a demand asking for `resume` (`dense`: without a line filter);
    /// its sending end for ingest.
    pub fn channel(
        batches: usize,
        resume: Option<SeqPos>,
        dense: bool,
    ) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(batches.max(1));
        let reached = None;
        (
            tx,
            Self {
                rx,
                resume,
                dense,
                reached,
            },
        )
    }
}

/// What a watch reads besides its own demands.
#[derive(Debug)]
enum Source {
    /// A ring, from a cursor.
    Ring {
        stream: Arc<LiveStream>,
        cursor: Cursor,
    },
    /// Nothing: a one-off read is served by its own demand alone, and ends with it.
    Once,
}

/// A stream a session watches.
#[derive(Debug)]
struct Watch {
    source: Source,
    /// Demands served for this watch alone, still arriving, drained in order before the ring.
    backfills: VecDeque<Backfill>,
    /// A `since_seq` the next batch of the ring answers: whether the agent still held its
    /// epoch shows in that batch's epoch.
    resume: Option<SeqPos>,
    /// Whether the ring's batches number every line (no line filter): a resume's position is
    /// checked, not only its epoch.
    dense: bool,
}

#[derive(Debug, Default)]
struct State {
    /// JSON events not yet written.
    events: VecDeque<String>,
    /// Bytes in `events`.
    event_bytes: usize,
    /// What the session watches, by the stream id its data carries.
    watches: HashMap<StreamId, Watch>,
    /// Set when the session must be closed (code, reason).
    close: Option<(u16, String)>,
    /// Losses found while the writer was blocked, per stream, merged until written.
    pending_gaps: HashMap<StreamId, Lag>,
}

/// One session's outbox, shared by the hub (which fills it) and the session's writer.
#[derive(Debug)]
pub struct Outbox {
    id: SessionId,
    waker: Arc<Notify>,
    max_event_bytes: usize,
    state: Mutex<State>,
}

impl Outbox {
    /// The outbox of session `id`, which is closed when it holds more than `max_event_bytes`
    /// of events unread.
    pub fn new(id: SessionId, max_event_bytes: usize) -> Self {
        Self {
            id,
            waker: Arc::new(Notify::new()),
            max_event_bytes,
            state: Mutex::new(State::default()),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// What wakes the writer (rings hold it to wake it on a push).
    pub fn waker(&self) -> &Arc<Notify> {
        &self.waker
    }

    /// Wakes the writer.
    pub fn wake(&self) {
        self.waker.notify_one();
    }

    /// Resolves when the writer has something to do.
    pub async fn woken(&self) {
        self.waker.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    /// Queues an event for the writer. Policy when full (more than the outbox's event bytes
    /// unread): the session is closed with 4009.
    pub fn queue_event(&self, event: &Event) {
        let json = serde_json::to_string(event).expect("events always serialize");
        let mut st = self.lock();
        if st.event_bytes + json.len() > self.max_event_bytes {
            st.close.get_or_insert((
                CloseCode::SlowConsumer.code(),
                "session is not reading its events".into(),
            ));
        } else {
            st.event_bytes += json.len();
            st.events.push_back(json);
        }
        drop(st);
        self.wake();
    }

    /// The session starts reading `stream`'s ring (its watch `key`) at `cursor`, after the
    /// batches of `backfill`; `resume` is the `since_seq` the ring's next batch answers
    /// (`dense`: the ring has no line filter).
    pub fn watch_ring(
        &self,
        key: StreamId,
        stream: Arc<LiveStream>,
        cursor: Cursor,
        backfill: Option<Backfill>,
        resume: Option<SeqPos>,
        dense: bool,
    ) {
        let watch = Watch {
            source: Source::Ring { stream, cursor },
            backfills: backfill.into_iter().collect(),
            resume,
            dense,
        };
        self.lock().watches.insert(key, watch);
        self.wake();
    }

    /// Another demand served for watch `key` alone, read after what it has queued.
    pub fn add_backfill(&self, key: StreamId, backfill: Backfill) {
        if let Some(w) = self.lock().watches.get_mut(&key) {
            w.backfills.push_back(backfill);
        }
    }

    /// A one-off read under its own id `key`, served by `backfill` alone; it ends with it.
    pub fn watch_once(&self, key: StreamId, backfill: Backfill) {
        let dense = backfill.dense;
        let watch = Watch {
            source: Source::Once,
            backfills: VecDeque::from([backfill]),
            resume: None,
            dense,
        };
        self.lock().watches.insert(key, watch);
        self.wake();
    }

    /// The session no longer watches `key`; its queues are dropped.
    pub fn unwatch(&self, key: StreamId) {
        self.lock().watches.remove(&key);
    }

    /// The end of what the session has read of watch `key`'s ring; `None` without such a watch.
    pub fn read_to(&self, key: StreamId) -> Option<Option<SeqPos>> {
        match &self.lock().watches.get(&key)?.source {
            Source::Ring { cursor, .. } => Some(cursor.last_end),
            Source::Once => Some(None),
        }
    }

    /// Takes everything ready for the session: queued events, then per watch the batches of
    /// its own demands and then its ring, from at most `flush_bytes` of rings. Never blocks.
    pub fn drain(
        &self,
        metrics: &RelayMetrics,
        flush_bytes: usize,
        policy: SlowConsumerPolicy,
    ) -> Drained {
        use tokio::sync::mpsc::error::TryRecvError;

        let mut out = Drained::default();
        let mut st = self.lock();
        let events = std::mem::take(&mut st.events);
        st.event_bytes = 0;
        let mut budget = flush_bytes;
        let mut live_now = Vec::new();
        let mut complete = Vec::new();
        let mut gaps = Vec::new();
        for (&key, watch) in st.watches.iter_mut() {
            let once = matches!(watch.source, Source::Once);
            if !watch.backfills.is_empty() {
                while let Some(b) = watch.backfills.front_mut() {
                    match b.rx.try_recv() {
                        Ok(batch) => {
                            if let Ok(h) = BatchHeader::parse(&batch) {
                                b.reached = Some(SeqPos {
                                    epoch: h.epoch,
                                    seq: h.end_seq(),
                                });
                            }
                            let resume = b.resume.take().or_else(|| watch.resume.take());
                            if let Some(from) = resume {
                                let dense = b.dense;
                                answer_resume(&mut out, key, from, &batch, None, dense, metrics);
                            }
                            count(&batch, &mut out);
                            out.messages.push(Message::Binary(batch));
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            let done = watch.backfills.pop_front().expect("front exists");
                            // It sent nothing: the next batch shows whether the epoch was held.
                            watch.resume = watch.resume.or(done.resume);
                            // It ended short of where the session reads the ring (the join
                            // point; the ring waits for its backfills): what lay between never
                            // came (its agent connection ended).
                            if let (Some(reached), Source::Ring { cursor, .. }) =
                                (done.reached, &watch.source)
                                && let Some(join) = cursor.last_end
                                && done.dense
                                && reached.epoch == join.epoch
                            {
                                backfill_lost(&mut out, key, reached, join.seq, metrics);
                            }
                            if watch.backfills.is_empty() {
                                if once {
                                    complete.push(key);
                                } else {
                                    live_now.push(key);
                                }
                            }
                        }
                    }
                }
                if !watch.backfills.is_empty() {
                    continue;
                }
            }
            let Source::Ring { stream, cursor } = &mut watch.source else {
                continue;
            };
            let read = stream.read(cursor, budget);
            if read.lag.is_some() || !read.batches.is_empty() {
                out.delivered.push((stream.clone(), cursor.last_end));
            }
            if let Some(lag) = read.lag {
                // The lag report says where this reader's loss starts.
                watch.resume = None;
                gaps.push((key, lag));
            }
            let mut breaks = read.epoch_breaks.into_iter().peekable();
            for (i, (batch, lines)) in read.batches.into_iter().enumerate() {
                let switched = breaks.next_if(|(at, _)| *at == i).map(|(_, from)| from);
                // A resume is judged by its own position (and, where the ring changed epochs
                // right at it, by whether the agent continued); otherwise the ring says where
                // one ended, and the batch after the break whether its agent continued it
                // exactly.
                match watch.resume.take() {
                    Some(r) => {
                        let dense = watch.dense;
                        answer_resume(&mut out, key, r, &batch, switched, dense, metrics);
                    }
                    None => {
                        if let Some(from) = switched {
                            match continues(&batch) {
                                Some(to) => renumbered(&mut out, key, from, to, metrics),
                                None => epoch_lost(&mut out, key, from, metrics),
                            }
                        }
                    }
                }
                budget = budget.saturating_sub(batch.len());
                if let Some(ingest) = stream.traced(&batch) {
                    out.traced
                        .push(write_span(&ingest, self.id, key, batch.len()));
                }
                if let Some(first) = logrelay_wire::batch::first_line_ns(&batch) {
                    out.lag.push((stream.lag_kind().clone(), first));
                }
                out.lines += u64::from(lines);
                out.bytes += batch.len() as u64;
                out.messages.push(Message::Binary(batch));
            }
        }
        for (key, lag) in gaps {
            record_lag(&mut st, key, lag, metrics, policy);
        }
        for key in &complete {
            st.watches.remove(key);
        }
        out.close = st.close.clone();
        let mut pending_gaps: Vec<(StreamId, Lag)> = st.pending_gaps.drain().collect();
        drop(st);
        pending_gaps.sort_by_key(|(key, _)| *key);
        // Events first: a `stream` event must precede its first batch, a `gap` the data after it.
        let mut messages: Vec<Message> = events
            .into_iter()
            .map(|e| Message::Text(Utf8Bytes::from(e)))
            .chain(pending_gaps.into_iter().map(|(key, lag)| {
                event_message(&Event::Gap {
                    stream: key.get(),
                    from: lag.from.unwrap_or(SeqPos { epoch: 0, seq: 0 }),
                    lines: lag.lines,
                    bytes: lag.bytes,
                    reason: GapReason::SlowConsumer,
                    rest_of_epoch: false,
                    exact: true,
                })
            }))
            .collect();
        messages.append(&mut out.messages);
        // `live` (or, for a one-off read, `end`) follows the last backfill batch it closes.
        messages.extend(
            live_now
                .into_iter()
                .map(|key| event_message(&Event::Live { stream: key.get() })),
        );
        messages.extend(complete.into_iter().map(|key| {
            event_message(&Event::End {
                stream: key.get(),
                reason: EndReason::Complete,
            })
        }));
        out.messages = messages;
        out
    }

    /// While the writer is blocked on the socket: accounts for what the rings dropped
    /// meanwhile. When a ring has moved past this session, the data `pending` still holds for
    /// that stream is older than anything the ring keeps: it is taken out and reported with
    /// the rest of the gap, so a stalled session never pins memory the rings gave back.
    /// Returns the lines and bytes taken out of `pending`, and the close to send, if any.
    pub fn catch_up(
        &self,
        metrics: &RelayMetrics,
        policy: SlowConsumerPolicy,
        pending: &mut VecDeque<Message>,
    ) -> CaughtUp {
        let mut st = self.lock();
        let lagged: Vec<(StreamId, Lag)> = st
            .watches
            .iter_mut()
            .filter(|(_, w)| w.backfills.is_empty())
            .filter_map(|(sid, w)| match &mut w.source {
                Source::Ring { stream, cursor } => stream.skip_lagged(cursor).map(|l| (*sid, l)),
                Source::Once => None,
            })
            .collect();
        let mut caught = CaughtUp::default();
        for (sid, mut lag) in lagged {
            let mut released: Option<Lag> = None;
            pending.retain(|m| {
                let Message::Binary(b) = m else { return true };
                match BatchHeader::parse(b) {
                    Ok(h)
                        if h.stream == sid.get()
                            && h.kind == Kind::Log
                            && h.flags & FLAG_BACKFILL == 0 =>
                    {
                        let r = released.get_or_insert(Lag {
                            from: Some(SeqPos {
                                epoch: h.epoch,
                                seq: h.first_seq,
                            }),
                            lines: 0,
                            bytes: 0,
                        });
                        r.lines += u64::from(h.count);
                        r.bytes += b.len() as u64;
                        false
                    }
                    _ => true,
                }
            });
            if let Some(r) = released {
                caught.lines += r.lines;
                caught.bytes += r.bytes;
                lag = Lag {
                    from: r.from,
                    lines: r.lines + lag.lines,
                    bytes: r.bytes + lag.bytes,
                };
            }
            record_lag(&mut st, sid, lag, metrics, policy);
        }
        caught.close = st.close.clone();
        caught
    }
}

/// What one drain produced.
#[derive(Debug, Default)]
pub struct Drained {
    /// Messages to write, in order.
    pub messages: Vec<Message>,
    /// Lines taken from rings and queues.
    pub lines: u64,
    /// Bytes taken from rings and queues.
    pub bytes: u64,
    /// Set when the session must be closed (code, reason).
    pub close: Option<(u16, String)>,
    /// Rings read, with the end of what this drain took from each: once written, the session
    /// has been handed it ([`LiveStream::delivered`]).
    pub delivered: Vec<(Arc<LiveStream>, Option<SeqPos>)>,
    /// The stream kind and first line time of each live batch taken from a ring, observed in
    /// `logrelay_relay_delivery_lag_seconds` once written.
    pub lag: Vec<(crate::metrics::LagKind, i64)>,
    /// The `relay.session_write` spans of the sampled batches taken, ended once written.
    pub traced: Vec<logrelay_telemetry::Span>,
}

/// What [`Outbox::catch_up`] took out of the writer's pending messages.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// Lines taken out.
    pub lines: u64,
    /// Bytes taken out.
    pub bytes: u64,
    /// Set when the session must be closed (code, reason).
    pub close: Option<(u16, String)>,
}

/// One event as a WebSocket text message.
/// The span of this session's write of a sampled batch (under the batch's `relay.ingest`).
fn write_span(
    ingest: &logrelay_telemetry::SpanContext,
    session: SessionId,
    stream: StreamId,
    len: usize,
) -> logrelay_telemetry::Span {
    use logrelay_telemetry::{self as telemetry, names};
    telemetry::start(
        names::RELAY_SESSION_WRITE,
        telemetry::Kind::Internal,
        telemetry::Parent::Of(ingest),
        vec![
            telemetry::int(names::SESSION_ID, session.get()),
            telemetry::int(names::STREAM_ID, stream.get()),
            telemetry::int(names::BATCH_BYTES, len as u64),
        ],
    )
}

fn event_message(event: &Event) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(event).expect("events always serialize"),
    ))
}

/// Queues, in line with the data, what a session resuming at `resume` (`since_seq`) must
/// know before `batch`, the first one served after it: `switched` is where the ring it reads
/// left another epoch just before `batch` (the end of what that ring held of it), if it did.
///
/// - `batch` in the resumed epoch: the lines from `resume` up to its first line, if any, never
///   reached the relay (the demand that was to bring them ended with its agent connection), an
///   exact `backfill_lost` gap. Only where batches number every line (`dense`: no line filter,
///   whose batches leave lines out).
/// - `batch` opening an epoch that continues the ring's old one ([`FLAG_CONTINUES`]), which
///   ended at or after `resume` in the resumed epoch: the lines between `resume` and that end
///   are an exact `backfill_lost` gap (none when the session had the whole ring), then
///   `renumbered`.
/// - Otherwise, in another epoch: `epoch_lost` from `resume`.
///
/// A batch whose header does not parse is not judged.
fn answer_resume(
    out: &mut Drained,
    stream: StreamId,
    resume: SeqPos,
    batch: &Bytes,
    switched: Option<SeqPos>,
    dense: bool,
    metrics: &RelayMetrics,
) {
    let Ok(h) = BatchHeader::parse(batch) else {
        return;
    };
    if h.epoch == resume.epoch {
        if dense {
            backfill_lost(out, stream, resume, h.first_seq, metrics);
        }
        return;
    }
    match (switched, continues(batch)) {
        // Without `dense`, lines between `resume` and `end` cannot be counted (nor told absent).
        (Some(end), Some(to))
            if end.epoch == resume.epoch
                && (end.seq == resume.seq || dense && end.seq > resume.seq) =>
        {
            backfill_lost(out, stream, resume, end.seq, metrics);
            renumbered(out, stream, end, to, metrics);
        }
        _ => epoch_lost(out, stream, resume, metrics),
    }
}

/// Queues an exact `backfill_lost` gap for the lines from `resume` up to (not including) `until`
/// of its epoch, if there are any.
fn backfill_lost(
    out: &mut Drained,
    stream: StreamId,
    resume: SeqPos,
    until: u64,
    metrics: &RelayMetrics,
) {
    let Some(lines) = until.checked_sub(resume.seq).filter(|&n| n > 0) else {
        return;
    };
    metrics
        .dropped_lines
        .get_or_create(&DropReason {
            reason: GapReason::BackfillLost.label(),
        })
        .inc_by(lines);
    out.messages.push(event_message(&Event::Gap {
        stream: stream.get(),
        from: resume,
        lines,
        bytes: 0,
        reason: GapReason::BackfillLost,
        rest_of_epoch: false,
        exact: true,
    }));
}

/// Queues, in line with the data, the news that the rest of an epoch is lost: from `from`
/// on, nothing of `from.epoch` will come (the agent no longer holds that numbering), and the
/// batches that follow are in a new epoch. Nobody counted those lines.
fn epoch_lost(out: &mut Drained, stream: StreamId, from: SeqPos, metrics: &RelayMetrics) {
    metrics.epochs_lost.inc();
    out.messages.push(event_message(&Event::Gap {
        stream: stream.get(),
        from,
        lines: 0,
        bytes: 0,
        reason: GapReason::EpochLost,
        rest_of_epoch: true,
        exact: false,
    }));
}

/// Where `batch` starts its epoch, if its agent flagged it as continuing the previous one with
/// nothing lost ([`FLAG_CONTINUES`]).
fn continues(batch: &Bytes) -> Option<SeqPos> {
    BatchHeader::parse(batch)
        .ok()
        .filter(|h| h.flags & FLAG_CONTINUES != 0)
        .map(|h| SeqPos {
            epoch: h.epoch,
            seq: h.first_seq,
        })
}

/// Queues, in line with the data, the news that the stream goes on in another epoch with
/// nothing lost: from `to` on, lines are numbered anew.
fn renumbered(
    out: &mut Drained,
    stream: StreamId,
    from: SeqPos,
    to: SeqPos,
    metrics: &RelayMetrics,
) {
    metrics.epochs_renumbered.inc();
    out.messages.push(event_message(&Event::Renumbered {
        stream: stream.get(),
        from,
        to,
    }));
}

fn count(batch: &Bytes, out: &mut Drained) {
    if let Ok(h) = BatchHeader::parse(batch)
        && h.kind == Kind::Log
    {
        out.lines += u64::from(h.count);
    }
    out.bytes += batch.len() as u64;
}

/// Records a loss: counted now, reported in-band by the next drain (or a close, per policy).
fn record_lag(
    st: &mut State,
    stream: StreamId,
    lag: Lag,
    metrics: &RelayMetrics,
    policy: SlowConsumerPolicy,
) {
    metrics
        .dropped_lines
        .get_or_create(&DropReason {
            reason: GapReason::SlowConsumer.label(),
        })
        .inc_by(lag.lines);
    if policy == SlowConsumerPolicy::Disconnect {
        st.close.get_or_insert((
            CloseCode::SlowConsumer.code(),
            format!("fell behind stream {stream} by {} lines", lag.lines),
        ));
    }
    st.pending_gaps
        .entry(stream)
        .and_modify(|g| {
            g.lines += lag.lines;
            g.bytes += lag.bytes;
        })
        .or_insert(lag);
}

#[cfg(test)]
impl Outbox {
    /// Events queued and not drained yet, as JSON.
    pub(crate) fn queued(&self) -> Vec<String> {
        self.lock().events.iter().cloned().collect()
    }

    /// Takes the events queued, parsed.
    pub(crate) fn take_events(&self) -> Vec<Event> {
        let mut st = self.lock();
        st.event_bytes = 0;
        st.events
            .drain(..)
            .map(|e| serde_json::from_str(&e).expect("an event"))
            .collect()
    }

    /// Whether the session watches `key`.
    pub(crate) fn has_watch(&self, key: StreamId) -> bool {
        self.lock().watches.contains_key(&key)
    }

    /// Demands served for watch `key` alone, still queued.
    pub(crate) fn backfills(&self, key: StreamId) -> usize {
        self.lock()
            .watches
            .get(&key)
            .map_or(0, |w| w.backfills.len())
    }

    /// Whether watch `key` is a one-off read.
    pub(crate) fn is_once(&self, key: StreamId) -> bool {
        self.lock()
            .watches
            .get(&key)
            .is_some_and(|w| matches!(w.source, Source::Once))
    }

    /// The ring watch `key` reads.
    pub(crate) fn ring_of(&self, key: StreamId) -> Option<u64> {
        match &self.lock().watches.get(&key)?.source {
            Source::Ring { stream, .. } => Some(stream.id().get()),
            Source::Once => None,
        }
    }

    /// Reads watch `key`'s ring from its cursor, as the writer would.
    pub(crate) fn read_ring(&self, key: StreamId) -> crate::ring::Read {
        let mut st = self.lock();
        match &mut st.watches.get_mut(&key).expect("watched").source {
            Source::Ring { stream, cursor } => stream.read(cursor, usize::MAX),
            Source::Once => panic!("a one-off read has no ring"),
        }
    }
}
