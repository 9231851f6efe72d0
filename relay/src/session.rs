//! Sessions: browsers and `tail` clients over WebSocket (`/v1/subscribe`).
//!
//! Two tasks per session. The reader parses JSON requests (`subscribe`, `unsubscribe`, `list`)
//! and answers bad ones with an `error` event naming the problem; the session stays usable.
//! The writer sleeps until woken, then drains *everything* ready — queued events, each watched
//! stream's backfill, then its ring — and writes it with one flush. Data messages are the
//! agent's batch bytes, untouched. A writer that fell behind a ring gets a `gap` event and
//! resumes at the oldest batch still held. The WebSocket write buffer is small and capped.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use logrelay_wire::control::{Demand, ErrorCode, SeqPos};
use logrelay_wire::session::{Event, MAX_SUB_ID_BYTES, Request, close};
use tokio::sync::watch;

use std::net::SocketAddr;

use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;

use crate::audit::{Actor, Auditor};
use crate::auth::{self, Claims};
use crate::config::SlowConsumerPolicy;
use crate::hub::{Hub, LiveStream, SessionShared};
use crate::metrics::{DropReason, RelayMetrics};

/// Longest line filter a subscription may push down to the agent.
pub const MAX_FILTER_BYTES: usize = 1024;

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Bytes taken from rings per flush.
    pub flush_bytes: usize,
    /// Ping interval; three missed intervals close the session.
    pub ping: Duration,
    /// Cap on queued events before the session is closed.
    pub max_event_bytes: usize,
    /// What to do when the session falls behind a ring.
    pub slow_consumer: SlowConsumerPolicy,
    /// Requests per second allowed (burst: twice as many).
    pub requests_per_sec: u32,
}

/// Who a session is, as its credentials say.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    /// The org it reads.
    pub org: String,
    /// Its verified token (`None`: anonymous development session).
    pub claims: Option<Arc<Claims>>,
    /// When the token expires (clock skew included), Unix seconds.
    pub expires_at_unix: Option<i64>,
    /// Peer address.
    pub remote: SocketAddr,
}

/// What every session shares.
#[derive(Debug)]
pub struct SessionCtx {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<RelayMetrics>,
    /// The audit trail.
    pub auditor: Arc<Auditor>,
    /// Settings.
    pub config: SessionConfig,
    /// Shutdown signal.
    pub shutdown: watch::Receiver<bool>,
    /// Drain signal: close with [`close::RECONNECT`] so the client reconnects elsewhere.
    pub drain: watch::Receiver<bool>,
}

/// Serves one upgraded WebSocket until it closes.
pub async fn serve(socket: WebSocket, identity: SessionIdentity, ctx: SessionCtx) {
    let SessionCtx {
        hub,
        metrics,
        auditor,
        config,
        mut shutdown,
        mut drain,
    } = ctx;
    let org = identity.org.clone();
    let session = match hub.add_session(&org, identity.claims.clone()) {
        Ok(s) => s,
        Err(refusal) => {
            auditor.limit_at(
                &Actor::session(0, identity.claims.as_deref()),
                Some(&org),
                "sessions_per_org",
                Some(identity.remote),
            );
            let (mut sink, _) = socket.split();
            let frame = Message::Close(Some(CloseFrame {
                code: close::LIMIT,
                reason: Utf8Bytes::from(refusal.message),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
            return;
        }
    };
    let actor = Actor::session(session.id, identity.claims.as_deref());
    auditor.session_connect(&actor, &org, identity.remote);
    tracing::info!(session = session.id, %org, "session connected");
    session.push_event(
        &Event::Welcome {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            org: org.clone(),
        },
        config.max_event_bytes,
    );
    let expiry = identity.expires_at_unix.map(|at| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tokio::time::Instant::now() + Duration::from_secs(at.saturating_sub(now).max(0) as u64)
    });
    let (mut sink, mut stream) = socket.split();
    let last_seen = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let remote = identity.remote;

    let reader = {
        let session = session.clone();
        let hub = hub.clone();
        let metrics = metrics.clone();
        let auditor = auditor.clone();
        let actor = actor.clone();
        let last_seen = last_seen.clone();
        async move {
            let mut bucket = TokenBucket::new(config.requests_per_sec);
            while let Some(msg) = stream.next().await {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) if message_too_big(&e) => {
                        metrics.limit_hit("session_message_bytes");
                        auditor.limit_at(
                            &actor,
                            Some(&session.org),
                            "session_message_bytes",
                            Some(remote),
                        );
                        return Some((
                            close::LIMIT,
                            "message too big (see --max-session-message-bytes)".to_owned(),
                        ));
                    }
                    Err(_) => return None,
                };
                let now = tokio::time::Instant::now();
                *last_seen.lock().expect("last_seen lock") = now;
                match msg {
                    Message::Text(_) if !bucket.take(now) => {
                        metrics.limit_hit("session_requests_per_sec");
                        auditor.limit(&actor, Some(&session.org), "session_requests_per_sec", None);
                        session.push_event(
                            &error(
                                ErrorCode::LimitExceeded,
                                format!(
                                    "more than {} requests per second; request dropped",
                                    config.requests_per_sec
                                ),
                                None,
                            ),
                            config.max_event_bytes,
                        );
                    }
                    Message::Text(text) => handle_request(
                        &hub,
                        &session,
                        &metrics,
                        &auditor,
                        &actor,
                        text.as_str(),
                        config,
                    ),
                    Message::Binary(_) => {
                        metrics.protocol_error("session");
                        session.push_event(
                            &error(
                                ErrorCode::BadRequest,
                                "binary messages are not requests; send JSON text",
                                None,
                            ),
                            config.max_event_bytes,
                        );
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            None
        }
    };

    let writer = write_loop(&mut sink, &session, &metrics, config, &last_seen);
    let close_reason = tokio::select! {
        c = reader => c,
        c = writer => c,
        () = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => Some((close::TOKEN_EXPIRED, "token expired".to_owned())),
        () = crate::stopped(&mut shutdown) => Some((close::SHUTDOWN, "relay shutting down".to_owned())),
        () = crate::stopped(&mut drain) => Some((close::RECONNECT, "relay draining: reconnect to another relay".to_owned())),
    };
    if let Some((code, reason)) = close_reason {
        tracing::info!(session = session.id, code, %reason, "closing session");
        // A stalled client may never take the close frame: give it a second.
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    hub.remove_session(&session);
    tracing::info!(session = session.id, "session disconnected");
}

/// True when a read failed because the message (or a frame) exceeds the size limit.
fn message_too_big(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// Token bucket: `rate` tokens per second, holding at most `2 × rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Option<tokio::time::Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: 2.0 * rate,
            at: None,
        }
    }

    /// Takes a token at `now`; false when none is left.
    pub fn take(&mut self, now: tokio::time::Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>, id: Option<String>) -> Event {
    Event::Error {
        code,
        message: message.into(),
        id,
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn handle_request(
    hub: &Arc<Hub>,
    session: &Arc<SessionShared>,
    metrics: &RelayMetrics,
    auditor: &Auditor,
    actor: &Actor,
    text: &str,
    config: SessionConfig,
) {
    let req: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            metrics.protocol_error("session");
            session.push_event(
                &error(ErrorCode::BadRequest, format!("invalid request: {e}"), None),
                config.max_event_bytes,
            );
            return;
        }
    };
    match req {
        Request::Subscribe {
            id,
            selector,
            tail,
            since_ns,
            since_seq,
            follow,
            contains,
            matches,
        } => {
            if matches.is_some() && selector.kind == Some(StreamKind::Metrics) {
                session.push_event(
                    &error(
                        ErrorCode::BadRequest,
                        "`matches` filters log lines; metrics streams take metric names in \
                         `contains`",
                        Some(id),
                    ),
                    config.max_event_bytes,
                );
                return;
            }
            if contains
                .as_ref()
                .is_some_and(|c| c.len() > MAX_FILTER_BYTES)
            {
                session.push_event(
                    &error(
                        ErrorCode::BadRequest,
                        format!("`contains` is longer than {MAX_FILTER_BYTES} bytes"),
                        Some(id),
                    ),
                    config.max_event_bytes,
                );
                return;
            }
            if id.is_empty() || id.len() > MAX_SUB_ID_BYTES {
                session.push_event(
                    &error(
                        ErrorCode::BadRequest,
                        format!("subscription id must be 1 to {MAX_SUB_ID_BYTES} bytes"),
                        None,
                    ),
                    config.max_event_bytes,
                );
                return;
            }
            if let Err(e) = selector.validate() {
                session.push_event(
                    &error(ErrorCode::BadRequest, e.to_string(), Some(id)),
                    config.max_event_bytes,
                );
                return;
            }
            if let Err((reason, message)) = selector_permitted(session, &selector) {
                auditor.deny(
                    actor,
                    Some(&session.org),
                    "subscribe",
                    Some(&selector),
                    None,
                    reason,
                );
                session.push_event(
                    &error(ErrorCode::Forbidden, message, Some(id)),
                    config.max_event_bytes,
                );
                return;
            }
            let demand = Demand {
                tail: Some(tail.unwrap_or(logrelay_wire::DEFAULT_TAIL_LINES)),
                since_ns,
                since_seq,
                until: None,
                follow,
                contains: contains.filter(|c| !c.is_empty()),
                matches: matches
                    .map(|m| m.as_str().to_owned())
                    .filter(|m| !m.is_empty()),
                after_line: None,
            };
            match hub.subscribe(session, &id, selector.clone(), demand) {
                Ok(capped) => {
                    auditor.subscribe(actor, &session.org, &id, &selector);
                    if let Some(limit) = capped {
                        auditor.limit(actor, Some(&session.org), limit, Some(&selector));
                    }
                }
                Err(r) => {
                    if r.code == ErrorCode::LimitExceeded {
                        auditor.limit(
                            actor,
                            Some(&session.org),
                            "subscriptions_per_session",
                            Some(&selector),
                        );
                    }
                    session.push_event(&error(r.code, r.message, Some(id)), config.max_event_bytes);
                }
            }
        }
        Request::Unsubscribe { id } => {
            if !hub.unsubscribe(session, &id) {
                session.push_event(
                    &error(
                        ErrorCode::BadRequest,
                        format!("no subscription `{id}`"),
                        Some(id),
                    ),
                    config.max_event_bytes,
                );
            }
        }
        Request::List {
            selector,
            id,
            watch,
        } => {
            if let Err((reason, message)) = selector_permitted(session, &selector) {
                auditor.deny(
                    actor,
                    Some(&session.org),
                    "list",
                    Some(&selector),
                    None,
                    reason,
                );
                session.push_event(
                    &error(ErrorCode::Forbidden, message, None),
                    config.max_event_bytes,
                );
                return;
            }
            if !watch {
                let streams = hub.list(session, &selector);
                session.push_event(&Event::Streams { id, streams }, config.max_event_bytes);
                return;
            }
            let Some(id) = id.filter(|id| !id.is_empty() && id.len() <= MAX_SUB_ID_BYTES) else {
                session.push_event(
                    &error(
                        ErrorCode::BadRequest,
                        format!("a watched list needs an `id` of 1 to {MAX_SUB_ID_BYTES} bytes"),
                        None,
                    ),
                    config.max_event_bytes,
                );
                return;
            };
            match hub.watch_list(session, &id, selector.clone()) {
                Ok(()) => auditor.subscribe(actor, &session.org, &id, &selector),
                Err(r) => {
                    if r.code == ErrorCode::LimitExceeded {
                        auditor.limit(
                            actor,
                            Some(&session.org),
                            "subscriptions_per_session",
                            Some(&selector),
                        );
                    }
                    session.push_event(&error(r.code, r.message, Some(id)), config.max_event_bytes);
                }
            }
        }
    }
}

/// Up-front check of a selector against the session's credentials: never another org, and
/// (with a token) only domains and projects some role binding covers. Streams are filtered
/// again one by one.
fn selector_permitted(
    session: &SessionShared,
    selector: &Selector,
) -> Result<(), (&'static str, String)> {
    if let Some(org) = &selector.org
        && *org != session.org
    {
        return Err((
            "cross_org_selector",
            format!(
                "selector names org `{org}`; this session may read org `{}` only",
                session.org
            ),
        ));
    }
    if let Some(claims) = &session.claims {
        auth::selector_allowed(claims, selector).map_err(|d| (d.reason(), d.to_string()))?;
    }
    Ok(())
}

/// What one drain produced.
struct Drained {
    messages: Vec<Message>,
    lines: u64,
    bytes: u64,
    close: Option<(u16, String)>,
    /// Rings read, with the end of what this drain took from each: once written, the session
    /// has been handed it ([`LiveStream::delivered`]).
    delivered: Vec<(Arc<LiveStream>, Option<SeqPos>)>,
}

/// Takes everything ready for the session. Never blocks.
fn drain(session: &SessionShared, metrics: &RelayMetrics, config: SessionConfig) -> Drained {
    use tokio::sync::mpsc::error::TryRecvError;

    let mut out = Drained {
        messages: Vec::new(),
        lines: 0,
        bytes: 0,
        close: None,
        delivered: Vec::new(),
    };
    let mut st = session.state.lock().expect("session lock");
    let events = std::mem::take(&mut st.events);
    st.event_bytes = 0;
    let mut budget = config.flush_bytes;
    let mut live_now = Vec::new();
    let mut complete = Vec::new();
    let mut gaps = Vec::new();
    for (&key, watch) in st.watches.iter_mut() {
        let private = watch.private_demand.is_some();
        if !watch.backfills.is_empty() {
            while let Some(b) = watch.backfills.front_mut() {
                match b.rx.try_recv() {
                    Ok(batch) => {
                        let resume = b.resume.take().or_else(|| watch.resume.take());
                        if let Some(from) = resume.filter(|r| !in_epoch(&batch, r.epoch)) {
                            epoch_lost(&mut out, key, from, metrics);
                        }
                        count(&batch, &mut out);
                        out.messages.push(Message::Binary(batch));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let done = watch.backfills.pop_front().expect("front exists");
                        // It sent nothing: the next batch shows whether the epoch was held.
                        watch.resume = watch.resume.or(done.resume);
                        if watch.backfills.is_empty() {
                            if private {
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
        if private {
            continue;
        }
        let read = watch.stream.read(&mut watch.cursor, budget);
        if read.lag.is_some() || !read.batches.is_empty() {
            out.delivered
                .push((watch.stream.clone(), watch.cursor.last_end));
        }
        if let Some(lag) = read.lag {
            // The lag report says where this reader's loss starts.
            watch.resume = None;
            gaps.push((key, lag));
        }
        let mut breaks = read.epoch_breaks.into_iter().peekable();
        for (i, (batch, lines)) in read.batches.into_iter().enumerate() {
            let switched = breaks.next_if(|(at, _)| *at == i).map(|(_, from)| from);
            // A resume is judged by its own epoch; otherwise the ring says where one ended,
            // and the batch after the break whether its agent continued it exactly.
            match watch.resume.take() {
                Some(r) if !in_epoch(&batch, r.epoch) => epoch_lost(&mut out, key, r, metrics),
                Some(_) => {}
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
            out.lines += u64::from(lines);
            out.bytes += batch.len() as u64;
            out.messages.push(Message::Binary(batch));
        }
    }
    for (key, lag) in gaps {
        record_lag(&mut st, key, lag, metrics, config);
    }
    for key in &complete {
        st.watches.remove(key);
    }
    out.close = st.close.clone();
    let mut pending_gaps: Vec<(u64, crate::ring::Lag)> = st.pending_gaps.drain().collect();
    drop(st);
    pending_gaps.sort_by_key(|(key, _)| *key);
    // Events first: a `stream` event must precede its first batch, a `gap` the data after it.
    let mut messages: Vec<Message> = events
        .into_iter()
        .map(|e| Message::Text(Utf8Bytes::from(e)))
        .chain(pending_gaps.into_iter().map(|(key, lag)| {
            event_message(&Event::Gap {
                stream: key,
                from: lag.from.unwrap_or(SeqPos { epoch: 0, seq: 0 }),
                lines: lag.lines,
                bytes: lag.bytes,
                reason: "slow_consumer".into(),
                rest_of_epoch: false,
                exact: true,
            })
        }))
        .collect();
    messages.append(&mut out.messages);
    // `live` (or, for a private watch, `end`) follows the last backfill batch it closes.
    messages.extend(
        live_now
            .into_iter()
            .map(|key| event_message(&Event::Live { stream: key })),
    );
    messages.extend(complete.into_iter().map(|key| {
        event_message(&Event::End {
            stream: key,
            reason: "complete".into(),
        })
    }));
    out.messages = messages;
    out
}

/// One event as a WebSocket text message.
fn event_message(event: &Event) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(event).expect("events always serialize"),
    ))
}

/// Whether `batch` belongs to `epoch` (a batch whose header does not parse is not judged).
fn in_epoch(batch: &bytes::Bytes, epoch: u64) -> bool {
    logrelay_wire::batch::BatchHeader::parse(batch)
        .ok()
        .is_none_or(|h| h.epoch == epoch)
}

/// Queues, in line with the data, the news that the rest of an epoch is lost: from `from`
/// on, nothing of `from.epoch` will come (the agent no longer holds that numbering), and the
/// batches that follow are in a new epoch. Nobody counted those lines.
fn epoch_lost(out: &mut Drained, stream: u64, from: SeqPos, metrics: &RelayMetrics) {
    metrics.epochs_lost.inc();
    out.messages.push(event_message(&Event::Gap {
        stream,
        from,
        lines: 0,
        bytes: 0,
        reason: "epoch_lost".into(),
        rest_of_epoch: true,
        exact: false,
    }));
}

/// Where `batch` starts its epoch, if its agent flagged it as continuing the previous one with
/// nothing lost ([`logrelay_wire::batch::FLAG_CONTINUES`]).
fn continues(batch: &bytes::Bytes) -> Option<SeqPos> {
    logrelay_wire::batch::BatchHeader::parse(batch)
        .ok()
        .filter(|h| h.flags & logrelay_wire::batch::FLAG_CONTINUES != 0)
        .map(|h| SeqPos {
            epoch: h.epoch,
            seq: h.first_seq,
        })
}

/// Queues, in line with the data, the news that the stream goes on in another epoch with
/// nothing lost: from `to` on, lines are numbered anew.
fn renumbered(out: &mut Drained, stream: u64, from: SeqPos, to: SeqPos, metrics: &RelayMetrics) {
    metrics.epochs_renumbered.inc();
    out.messages
        .push(event_message(&Event::Renumbered { stream, from, to }));
}

/// Bytes a writer holds between taking them from rings and handing them to the socket.
struct InFlight<'a> {
    metrics: &'a RelayMetrics,
    bytes: i64,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a RelayMetrics, bytes: u64) -> Self {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        metrics.buffered_bytes.inc_by(bytes);
        Self { metrics, bytes }
    }

    /// Some of the data was released before being written.
    fn release(&mut self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX).min(self.bytes);
        self.metrics.buffered_bytes.dec_by(bytes);
        self.bytes -= bytes;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.buffered_bytes.dec_by(self.bytes);
    }
}

fn count(batch: &bytes::Bytes, out: &mut Drained) {
    if let Ok(h) = logrelay_wire::batch::BatchHeader::parse(batch)
        && h.kind == logrelay_wire::batch::Kind::Log
    {
        out.lines += u64::from(h.count);
    }
    out.bytes += batch.len() as u64;
}

/// Records a loss: counted now, reported in-band by the next drain (or a close, per policy).
fn record_lag(
    st: &mut crate::hub::SessionState,
    stream: u64,
    lag: crate::ring::Lag,
    metrics: &RelayMetrics,
    config: SessionConfig,
) {
    metrics
        .dropped_lines
        .get_or_create(&DropReason {
            reason: "slow_consumer",
        })
        .inc_by(lag.lines);
    if config.slow_consumer == SlowConsumerPolicy::Disconnect {
        st.close.get_or_insert((
            close::SLOW_CONSUMER,
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

/// Data a writer took from the rings and has not yet handed to the socket.
struct InFlightData<'a> {
    guard: InFlight<'a>,
    lines: u64,
    bytes: u64,
    delivered: Vec<(Arc<LiveStream>, Option<SeqPos>)>,
}

/// While the writer is blocked on the socket: account for what the rings dropped meanwhile.
///
/// When a ring has moved past this session, the data it still holds for that stream is older
/// than anything the ring keeps: it is released and reported with the rest of the gap, so a
/// stalled session never pins memory the rings gave back.
fn catch_up(
    session: &SessionShared,
    metrics: &RelayMetrics,
    config: SessionConfig,
    pending: &mut std::collections::VecDeque<Message>,
    in_flight: &mut Option<InFlightData<'_>>,
) -> Option<(u16, String)> {
    use logrelay_wire::batch::{BatchHeader, FLAG_BACKFILL, Kind};

    let mut st = session.state.lock().expect("session lock");
    let lagged: Vec<(u64, crate::ring::Lag)> = st
        .watches
        .iter_mut()
        .filter(|(_, w)| w.backfills.is_empty() && w.private_demand.is_none())
        .filter_map(|(sid, w)| w.stream.skip_lagged(&mut w.cursor).map(|l| (*sid, l)))
        .collect();
    for (sid, mut lag) in lagged {
        let mut released: Option<crate::ring::Lag> = None;
        pending.retain(|m| {
            let Message::Binary(b) = m else { return true };
            match BatchHeader::parse(b) {
                Ok(h) if h.stream == sid && h.kind == Kind::Log && h.flags & FLAG_BACKFILL == 0 => {
                    let r = released.get_or_insert(crate::ring::Lag {
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
            if let Some(f) = in_flight.as_mut() {
                f.guard.release(r.bytes);
                f.lines = f.lines.saturating_sub(r.lines);
                f.bytes = f.bytes.saturating_sub(r.bytes);
            }
            lag = crate::ring::Lag {
                from: r.from,
                lines: r.lines + lag.lines,
                bytes: r.bytes + lag.bytes,
            };
        }
        record_lag(&mut st, sid, lag, metrics, config);
    }
    st.close.clone()
}

/// Writes until the socket fails or the session must close; returns the close to send.
///
/// Messages are handed to the socket as it accepts them; while it does not (a slow or stalled
/// client), the writer still wakes on new data to account for what it misses, sends pings and
/// closes a session that answers none.
async fn write_loop<S>(
    sink: &mut S,
    session: &Arc<SessionShared>,
    metrics: &RelayMetrics,
    config: SessionConfig,
    last_seen: &std::sync::Mutex<tokio::time::Instant>,
) -> Option<(u16, String)>
where
    S: futures_util::Sink<Message> + Unpin,
{
    use futures_util::future::poll_fn;
    use std::collections::VecDeque;
    use std::task::Poll;

    let mut ping = tokio::time::interval(config.ping);
    ping.tick().await;
    let mut pending: VecDeque<Message> = VecDeque::new();
    let mut in_flight: Option<InFlightData<'_>> = None;
    loop {
        if pending.is_empty() {
            let d = drain(session, metrics, config);
            if d.close.is_some() {
                return d.close;
            }
            if !d.messages.is_empty() {
                // Batches taken from rings count against the relay-wide budget until written.
                in_flight = Some(InFlightData {
                    guard: InFlight::new(metrics, d.bytes),
                    lines: d.lines,
                    bytes: d.bytes,
                    delivered: d.delivered,
                });
                pending.extend(d.messages);
            }
        }
        let idle = pending.is_empty();
        tokio::select! {
            written = poll_fn(|cx| {
                if idle {
                    return Poll::Pending;
                }
                while !pending.is_empty() {
                    match sink.poll_ready_unpin(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(false),
                        Poll::Pending => return Poll::Pending,
                    }
                    let m = pending.pop_front().expect("not empty");
                    if sink.start_send_unpin(m).is_err() {
                        return Poll::Ready(false);
                    }
                }
                sink.poll_flush_unpin(cx).map(|r| r.is_ok())
            }) => {
                if !written {
                    return None;
                }
                if let Some(done) = in_flight.take() {
                    metrics.lines_delivered.inc_by(done.lines);
                    metrics.bytes_delivered.inc_by(done.bytes);
                    for (live, to) in done.delivered {
                        live.delivered(session.id, to);
                    }
                }
            }
            () = session.notify.notified() => {
                // Idle: the next turn drains what is new. Blocked: account for what the rings
                // dropped meanwhile (the next drain reports it).
                if !idle && let Some(c) = catch_up(session, metrics, config, &mut pending, &mut in_flight) {
                    return Some(c);
                }
            }
            _ = ping.tick() => {
                let quiet = last_seen.lock().expect("last_seen lock").elapsed();
                if quiet > config.ping * 3 {
                    return Some((close::PING_TIMEOUT, format!("no message or pong for {} s", quiet.as_secs())));
                }
                pending.push_back(Message::Ping(bytes::Bytes::new()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use logrelay_wire::control::{Demand, RelayMsg, StreamInfo};
    use logrelay_wire::labels::Labels;
    use logrelay_wire::selector::Selector;
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::hub::{DemandSink, HubConfig};

    fn config(policy: SlowConsumerPolicy) -> SessionConfig {
        SessionConfig {
            flush_bytes: 1 << 20,
            ping: Duration::from_secs(15),
            max_event_bytes: 1 << 20,
            slow_consumer: policy,
            requests_per_sec: 20,
        }
    }

    /// A hub with one announced stream, `n` sessions watching it, and its live ring.
    fn watched(
        n: usize,
        ring_bytes: usize,
    ) -> (
        Vec<Arc<SessionShared>>,
        Arc<crate::hub::LiveStream>,
        Arc<RelayMetrics>,
    ) {
        let demand = Demand {
            follow: true,
            ..Demand::default()
        };
        watched_with(n, ring_bytes, &demand)
    }

    /// [`watched`], every session subscribing with `demand`.
    fn watched_with(
        n: usize,
        ring_bytes: usize,
        demand: &Demand,
    ) -> (
        Vec<Arc<SessionShared>>,
        Arc<crate::hub::LiveStream>,
        Arc<RelayMetrics>,
    ) {
        let metrics = Arc::new(RelayMetrics::new());
        let hub = Hub::new(
            HubConfig {
                ring_bytes,
                linger: Duration::from_secs(5),
                max_subscriptions_per_session: 4,
                backfill_batches: 4,
                max_session_event_bytes: 1 << 20,
                memory_budget_bytes: 1 << 30,
                max_sessions_per_org: 10_000,
                max_demands_per_agent: 1000,
                max_demands_per_org: 1000,
                max_streams_per_agent: 1000,
                max_streams_per_org: 1000,
                max_label_bytes_per_stream: 4096,
                max_label_bytes_per_agent: 1 << 20,
            },
            metrics.clone(),
        );
        let (tx, mut rx) = mpsc::channel(16);
        let agent = hub.add_agent("acme", "c", tx, Arc::new(Notify::new()));
        hub.catalog_add(
            agent,
            vec![StreamInfo {
                id: 1,
                labels: Labels {
                    pod: "p".into(),
                    ..Labels::default()
                },
            }],
        );
        let sessions: Vec<_> = (0..n)
            .map(|i| {
                let s = hub.add_session("acme", None).unwrap();
                hub.subscribe(&s, &format!("s{i}"), Selector::default(), demand.clone())
                    .unwrap();
                s
            })
            .collect();
        let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
            panic!("the first watcher opens the stream")
        };
        let Ok((DemandSink::Live(live), _)) = hub.resolve(agent, demand) else {
            panic!("live demand")
        };
        (sessions, live, metrics)
    }

    fn binaries(d: &Drained) -> Vec<&Bytes> {
        d.messages
            .iter()
            .filter_map(|m| match m {
                Message::Binary(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn every_session_gets_the_very_bytes_the_agent_sent() {
        let (sessions, live, metrics) = watched(3, 1 << 20);
        let batch = Bytes::from(vec![b'x'; 4096]);
        live.push(
            batch.clone(),
            10,
            logrelay_wire::control::SeqPos { epoch: 1, seq: 10 },
        );
        for s in &sessions {
            let d = drain(s, &metrics, config(SlowConsumerPolicy::DropOldest));
            let got = binaries(&d);
            assert_eq!(got.len(), 1);
            // Pointer identity: no copy, no re-encode, whatever the number of sessions.
            assert_eq!(got[0].as_ptr(), batch.as_ptr());
            assert_eq!(got[0].len(), batch.len());
        }
    }

    #[tokio::test]
    async fn a_lagging_session_gets_a_gap_or_is_closed_per_policy() {
        let (sessions, live, metrics) = watched(2, 1000);
        for i in 1..=10u64 {
            live.push(
                Bytes::from(vec![0u8; 400]),
                5,
                logrelay_wire::control::SeqPos {
                    epoch: 1,
                    seq: 5 * i,
                },
            );
        }
        let d = drain(
            &sessions[0],
            &metrics,
            config(SlowConsumerPolicy::DropOldest),
        );
        assert!(d.close.is_none());
        let gap = d
            .messages
            .iter()
            .find_map(|m| match m {
                Message::Text(t) if t.as_str().contains(r#""event":"gap""#) => Some(t.to_string()),
                _ => None,
            })
            .expect("a gap event");
        // 10 batches pushed, 2 still held (1000 bytes): 8 × 5 lines and 8 × 400 bytes missed.
        assert!(
            gap.contains(r#""lines":40"#) && gap.contains(r#""bytes":3200"#),
            "{gap}"
        );
        assert_eq!(binaries(&d).len(), 2);

        let d = drain(
            &sessions[1],
            &metrics,
            config(SlowConsumerPolicy::Disconnect),
        );
        let (code, reason) = d.close.expect("closed");
        assert_eq!(code, close::SLOW_CONSUMER);
        assert!(reason.contains("40 lines"), "{reason}");
    }

    #[test]
    fn the_token_bucket_allows_a_burst_then_the_rate() {
        let start = tokio::time::Instant::now();
        let mut b = TokenBucket::new(10);
        assert!((0..20).all(|_| b.take(start)));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(150)));
        assert!(!b.take(start + Duration::from_millis(150)));
    }

    /// The text messages of a drain, and the position of each among all its messages.
    fn texts(d: &Drained) -> Vec<(usize, String)> {
        d.messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m {
                Message::Text(t) => Some((i, t.to_string())),
                _ => None,
            })
            .collect()
    }

    fn log_batch(stream: u64, epoch: u64, first_seq: u64) -> Bytes {
        flagged_batch(stream, epoch, first_seq, 0)
    }

    fn flagged_batch(stream: u64, epoch: u64, first_seq: u64, flags: u8) -> Bytes {
        let mut b = logrelay_wire::batch::BatchBuilder::new(stream, epoch, first_seq, flags, 64);
        b.push(0, logrelay_wire::batch::LineFlags(0), b"line\n");
        b.finish()
    }

    const EPOCH_LOST: &str = r#""reason":"epoch_lost","rest_of_epoch":true,"exact":false}"#;

    #[tokio::test]
    async fn a_watcher_learns_that_the_rest_of_its_epoch_is_lost_before_the_new_one() {
        let (sessions, live, metrics) = watched(1, 1 << 20);
        let cfg = config(SlowConsumerPolicy::DropOldest);
        live.push(log_batch(live.id, 1, 9), 1, SeqPos { epoch: 1, seq: 10 });
        let d = drain(&sessions[0], &metrics, cfg);
        assert!(texts(&d).iter().all(|(_, t)| !t.contains("epoch_lost")));

        // The agent came back without that numbering: the ring goes on in epoch 2.
        live.push(log_batch(live.id, 2, 100), 1, SeqPos { epoch: 2, seq: 101 });
        let d = drain(&sessions[0], &metrics, cfg);
        let want = format!(
            r#"{{"event":"gap","stream":{},"from":{{"epoch":1,"seq":10}},"lines":0,"bytes":0,{EPOCH_LOST}"#,
            live.id
        );
        assert_eq!(texts(&d), vec![(0, want)]);
        assert_eq!(binaries(&d).len(), 1, "then the new epoch's batch");
        assert_eq!(metrics.epochs_lost.get(), 1);
    }

    #[tokio::test]
    async fn a_new_epoch_that_continues_the_old_one_is_a_renumbering_not_a_loss() {
        let (sessions, live, metrics) = watched(1, 1 << 20);
        let cfg = config(SlowConsumerPolicy::DropOldest);
        live.push(log_batch(live.id, 1, 9), 1, SeqPos { epoch: 1, seq: 10 });
        drain(&sessions[0], &metrics, cfg);
        // The agent restarted and picked up right after the last line the relay held.
        let first = flagged_batch(live.id, 2, 100, logrelay_wire::batch::FLAG_CONTINUES);
        live.push(first, 1, SeqPos { epoch: 2, seq: 101 });
        let d = drain(&sessions[0], &metrics, cfg);
        let want = format!(
            r#"{{"event":"renumbered","stream":{},"from":{{"epoch":1,"seq":10}},"to":{{"epoch":2,"seq":100}}}}"#,
            live.id
        );
        assert_eq!(texts(&d), vec![(0, want)]);
        assert_eq!(binaries(&d).len(), 1);
        assert_eq!(
            (metrics.epochs_renumbered.get(), metrics.epochs_lost.get()),
            (1, 0)
        );
    }

    #[tokio::test]
    async fn a_resume_into_an_epoch_the_agent_no_longer_holds_is_reported() {
        let since = SeqPos { epoch: 7, seq: 5 };
        let demand = Demand {
            since_seq: Some(since),
            follow: true,
            ..Demand::default()
        };
        let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
        let cfg = config(SlowConsumerPolicy::DropOldest);
        // The agent answered in an epoch of its own.
        live.push(log_batch(live.id, 8, 0), 1, SeqPos { epoch: 8, seq: 1 });
        live.push(log_batch(live.id, 8, 1), 1, SeqPos { epoch: 8, seq: 2 });
        let d = drain(&sessions[0], &metrics, cfg);
        let gaps: Vec<(usize, String)> = texts(&d)
            .into_iter()
            .filter(|(_, t)| t.contains(r#""event":"gap""#))
            .collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        let (at, gap) = &gaps[0];
        assert!(gap.contains(r#""from":{"epoch":7,"seq":5}"#) && gap.ends_with(EPOCH_LOST));
        assert!(
            d.messages[at + 1..]
                .iter()
                .all(|m| matches!(m, Message::Binary(_))),
            "before the new epoch's batches"
        );
        assert_eq!(binaries(&d).len(), 2);

        // A resume the agent could serve is not reported.
        let demand = Demand {
            since_seq: Some(SeqPos { epoch: 8, seq: 1 }),
            ..demand
        };
        let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
        live.push(log_batch(live.id, 8, 1), 1, SeqPos { epoch: 8, seq: 2 });
        let d = drain(&sessions[0], &metrics, cfg);
        assert!(texts(&d).iter().all(|(_, t)| !t.contains("gap")));
        assert_eq!(binaries(&d).len(), 1);
    }
}
