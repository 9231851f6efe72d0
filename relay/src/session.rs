//! Sessions: browsers and `tail` clients over WebSocket (`/v1/subscribe`).
//!
//! Two tasks per session. The reader parses JSON requests (`subscribe`, `unsubscribe`, `list`:
//! [`request`]) and answers bad ones with an `error` event naming the problem; the session
//! stays usable. The writer sleeps until woken, then drains *everything* ready in its
//! [`outbox::Outbox`] — queued events, each watched stream's backfill, then its ring — and
//! writes it with one flush. Data messages are the agent's batch bytes, untouched. A writer that
//! fell behind a ring gets a `gap` event and resumes at the oldest batch still held. The
//! WebSocket write buffer is small and capped.

pub mod outbox;
pub mod request;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use logrelay_wire::code::CloseCode;
use logrelay_wire::control::ErrorCode;
use logrelay_wire::session::Event;
use tokio::sync::watch;

use self::outbox::Outbox;
use self::request::{Requests, TokenBucket, error};
use crate::audit::{Actor, Auditor};
use crate::auth::Claims;
use crate::config::SlowConsumerPolicy;
use crate::hub::Hub;
use crate::metrics::RelayMetrics;

pub use self::request::MAX_FILTER_BYTES;

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Bytes taken from rings per flush.
    pub flush_bytes: usize,
    /// Ping interval; three missed intervals close the session.
    pub ping: Duration,
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
    /// Drain signal: close with [`CloseCode::Reconnect`] so the client reconnects elsewhere.
    pub drain: watch::Receiver<bool>,
}

/// A close frame for `code`, sent within a second (a stalled client may never take it).
async fn send_close<S>(sink: &mut S, code: u16, reason: String)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
}

/// Seconds from now until `at_unix`, as a deadline.
#[allow(
    clippy::disallowed_methods,
    reason = "a token's expiry is wall-clock time; this shell turns it into a deadline once"
)]
fn deadline(at_unix: i64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_secs(at_unix.saturating_sub(now).max(0) as u64)
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
            send_close(&mut sink, CloseCode::Limit.code(), refusal.message).await;
            return;
        }
    };
    let id = session.id();
    let actor = Actor::session(id.get(), identity.claims.as_deref());
    auditor.session_connect(&actor, &org, identity.remote);
    tracing::info!(session = %id, %org, "session connected");
    session.queue_event(&Event::Welcome {
        protocol: logrelay_wire::PROTOCOL_VERSION,
        org: org.clone(),
    });
    let expiry = identity.expires_at_unix.map(deadline);
    let (mut sink, mut stream) = socket.split();
    #[allow(clippy::disallowed_methods, reason = "the session shell times pongs")]
    let last_seen = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let remote = identity.remote;

    let reader = {
        let session = session.clone();
        let hub = hub.clone();
        let metrics = metrics.clone();
        let auditor = auditor.clone();
        let actor = actor.clone();
        let last_seen = last_seen.clone();
        let identity = identity.clone();
        async move {
            let requests = Requests {
                hub: &hub,
                session: &session,
                identity: &identity,
                metrics: &metrics,
                auditor: &auditor,
                actor: &actor,
            };
            let mut bucket = TokenBucket::new(config.requests_per_sec);
            while let Some(msg) = stream.next().await {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) if message_too_big(&e) => {
                        metrics.limit_hit("session_message_bytes");
                        auditor.limit_at(
                            &actor,
                            Some(&identity.org),
                            "session_message_bytes",
                            Some(remote),
                        );
                        return Some((
                            CloseCode::Limit.code(),
                            "message too big (see --max-session-message-bytes)".to_owned(),
                        ));
                    }
                    Err(_) => return None,
                };
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the session shell times pongs and paces requests"
                )]
                let now = tokio::time::Instant::now();
                *last_seen.lock().expect("last_seen lock") = now;
                match msg {
                    Message::Text(_) if !bucket.take(now) => {
                        metrics.limit_hit("session_requests_per_sec");
                        auditor.limit(
                            &actor,
                            Some(&identity.org),
                            "session_requests_per_sec",
                            None,
                        );
                        session.queue_event(&error(
                            ErrorCode::LimitExceeded,
                            format!(
                                "more than {} requests per second; request dropped",
                                config.requests_per_sec
                            ),
                            None,
                        ));
                    }
                    Message::Text(text) => requests.handle(text.as_str()),
                    Message::Binary(_) => {
                        metrics.protocol_error("session");
                        session.queue_event(&error(
                            ErrorCode::BadRequest,
                            "binary messages are not requests; send JSON text",
                            None,
                        ));
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
        } => Some((CloseCode::TokenExpired.code(), "token expired".to_owned())),
        () = crate::stopped(&mut shutdown) => Some((CloseCode::Shutdown.code(), "relay shutting down".to_owned())),
        () = crate::stopped(&mut drain) => Some((CloseCode::Reconnect.code(), "relay draining: reconnect to another relay".to_owned())),
    };
    if let Some((code, reason)) = close_reason {
        tracing::info!(session = %id, code, %reason, "closing session");
        send_close(&mut sink, code, reason).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    hub.remove_session(&session);
    tracing::info!(session = %id, "session disconnected");
}

/// True when a read failed because the message (or a frame) exceeds the size limit.
fn message_too_big(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
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

/// Data a writer took from the rings and has not yet handed to the socket.
struct InFlightData<'a> {
    guard: InFlight<'a>,
    lines: u64,
    bytes: u64,
    delivered: Vec<(
        Arc<crate::fanout::LiveStream>,
        Option<logrelay_wire::control::SeqPos>,
    )>,
    /// Stream kind and first line time of its live batches (the delivery lag).
    lag: Vec<(crate::metrics::LagKind, i64)>,
    /// Spans of the sampled batches in it (`relay.session_write`).
    traced: Vec<logrelay_telemetry::Span>,
}

/// Writes until the socket fails or the session must close; returns the close to send.
///
/// Messages are handed to the socket as it accepts them; while it does not (a slow or stalled
/// client), the writer still wakes on new data to account for what it misses, sends pings and
/// closes a session that answers none.
async fn write_loop<S>(
    sink: &mut S,
    session: &Outbox,
    metrics: &RelayMetrics,
    config: SessionConfig,
    last_seen: &std::sync::Mutex<tokio::time::Instant>,
) -> Option<(u16, String)>
where
    S: futures_util::Sink<Message> + Unpin,
{
    use futures_util::future::poll_fn;
    use std::task::Poll;

    let mut ping = tokio::time::interval(config.ping);
    ping.tick().await;
    let mut pending: VecDeque<Message> = VecDeque::new();
    let mut in_flight: Option<InFlightData<'_>> = None;
    loop {
        if pending.is_empty() {
            let d = session.drain(metrics, config.flush_bytes, config.slow_consumer);
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
                    lag: d.lag,
                    traced: d.traced,
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
                    let now = crate::metrics::wall_clock_ns();
                    for (kind, first) in &done.lag {
                        crate::metrics::LagMetrics::observe_at(&metrics.lag.delivery, kind, *first, now);
                    }
                    for (live, to) in done.delivered {
                        live.delivered(session.id(), to);
                    }
                    for span in done.traced {
                        span.end("complete");
                    }
                }
            }
            () = session.woken() => {
                // Idle: the next turn drains what is new. Blocked: account for what the rings
                // dropped meanwhile (the next drain reports it).
                if !idle {
                    let caught = session.catch_up(metrics, config.slow_consumer, &mut pending);
                    if let Some(f) = in_flight.as_mut() {
                        f.guard.release(caught.bytes);
                        f.lines = f.lines.saturating_sub(caught.lines);
                        f.bytes = f.bytes.saturating_sub(caught.bytes);
                        if caught.bytes > 0 {
                            // Which batches were taken out is not known: none is observed.
                            f.lag.clear();
                            for span in f.traced.drain(..) {
                                span.end("dropped");
                            }
                        }
                    }
                    if caught.close.is_some() {
                        return caught.close;
                    }
                }
            }
            _ = ping.tick() => {
                let quiet = last_seen.lock().expect("last_seen lock").elapsed();
                if quiet > config.ping * 3 {
                    return Some((CloseCode::PingTimeout.code(), format!("no message or pong for {} s", quiet.as_secs())));
                }
                pending.push_back(Message::Ping(bytes::Bytes::new()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
