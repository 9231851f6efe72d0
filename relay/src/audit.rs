//! The audit trail: who did what to which org's streams, and how it ended. Never content.
//!
//! Each event is one JSON object on one line, for example:
//!
//! ```text
//! {"ts":"2023-11-14T22:13:20.000Z","kind":"audit","actor":{"type":"session","id":7,"sub":"alice"},"org":"acme","op":"subscribe","subscription":"a","selector":{"namespace":"web","domain":"prod"},"outcome":"ok","reason":null}
//! ```
//!
//! | `op`               | when                                           | `outcome`          |
//! | ------------------ | ---------------------------------------------- | ------------------ |
//! | `agent_connect`    | an agent's certificate was accepted            | `ok`               |
//! | `agent_disconnect` | an agent's connection ended (`reason`: why)    | `ok`               |
//! | `session_connect`  | a session's token was accepted                 | `ok`               |
//! | `subscribe`        | a subscription was accepted                    | `ok`               |
//! | `deny`             | anything refused (`attempt`: what was tried)   | `denied`           |
//! | `limit`            | a configured limit was hit (`reason`: which)   | `limit`            |
//!
//! Always present: `ts` (RFC 3339, UTC, milliseconds), `kind` (`"audit"`, which tells these
//! lines apart from the relay's other output), `actor` (`type`, the relay's `id` for the
//! connection, and `sub`: the token's subject or the agent certificate's identity, `null` when
//! unknown), `org` (`null` when unknown), `op`, `outcome`, `reason` (a fixed code, or `null`).
//! Present when they apply: `cluster`, `node`, `remote`, `subscription`, `attempt`, `selector`.
//! Reasons, attempts and limit names are `&'static str` codes, so no free text — and no log
//! line, metric value or token — can reach the trail.
//!
//! Refusals and limit hits (`deny`, `limit`) are what an attacker can repeat at will, so once
//! the relay turns aggregation on ([`Auditor::aggregate`], `--audit-aggregate-secs`) they go
//! through [`aggregate`]: per offender (the connection when the relay knows it, else the source
//! address — IPv4 address or IPv6 /64 —, else the token subject or org) and per `op`, `attempt`
//! and `reason`, the first event is written at once with `"count":1`, and the rest of each
//! interval becomes one line whose `count` says how many events it stands for, `since` when the
//! first of them happened. When `--audit-max-offenders` offenders are tracked, events of new
//! ones are folded into one line per interval: actor type `others`, `op` `limit`, reason
//! `audit_offenders`, with their `count`.
//!
//! [`Auditor`] serialises each event once, into a reused buffer, and hands the line to its
//! [`AuditSink`]s: [`QueuedSink`] (stdout in production: a bounded queue drained by a writer
//! thread, so a stalled stdout never blocks the relay; an event that does not fit is dropped
//! and counted) or [`WriterSink`] (synchronous, for tests). An OpenTelemetry log exporter is
//! one more [`AuditSink`]: it receives the structured [`AuditEvent`] as well as the line.

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logrelay_wire::selector::Selector;
use serde::{Serialize, Serializer};

use self::aggregate::{AggregateConfig, Aggregator, Seen};
use super::admission::SourceKey;
use super::auth::Claims;

pub mod aggregate;
pub mod otlp;

/// Events the stdout queue holds by default before dropping.
pub const DEFAULT_QUEUE_EVENTS: usize = 4096;

/// A serialisation buffer that grew beyond this is released after use.
const MAX_RETAINED_BUFFER_BYTES: usize = 64 * 1024;

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// An agent connection.
    Agent,
    /// A WebSocket session.
    Session,
    /// Many offenders folded into one line: the aggregation table was full.
    Others,
}

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// Agent or session.
    #[serde(rename = "type")]
    pub kind: ActorKind,
    /// The relay's id for the connection (hub agent or session id).
    pub id: u64,
    /// Who: a session token's `sub`, or an agent certificate's identity (its URI SAN); `None`
    /// when not (yet) known, e.g. for a refused token.
    pub sub: Option<String>,
}

impl Actor {
    /// A session, with the claims of its token once verified.
    pub fn session(id: u64, claims: Option<&Claims>) -> Self {
        Self {
            kind: ActorKind::Session,
            id,
            sub: claims.map(|c| c.sub.clone()),
        }
    }

    /// An agent, with its certificate's identity once verified.
    pub fn agent(id: u64, identity: Option<&str>) -> Self {
        Self {
            kind: ActorKind::Agent,
            id,
            sub: identity.map(Into::into),
        }
    }
}

impl Op {
    /// The name used in the JSON event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentConnect => "agent_connect",
            Self::AgentDisconnect => "agent_disconnect",
            Self::SessionConnect => "session_connect",
            Self::Subscribe => "subscribe",
            Self::Deny => "deny",
            Self::Limit => "limit",
        }
    }
}

impl Outcome {
    /// The name used in the JSON event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Limit => "limit",
        }
    }
}

impl AuditSink for otlp::OtlpAuditExporter {
    fn record(&self, event: &AuditEvent<'_>, line: &[u8]) -> io::Result<()> {
        self.try_emit(event.op.as_str(), event.outcome.as_str(), event.org, line)
    }

    fn failures(&self) -> u64 {
        otlp::OtlpAuditExporter::failures(self)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// An agent connected.
    AgentConnect,
    /// An agent disconnected.
    AgentDisconnect,
    /// A session connected.
    SessionConnect,
    /// A subscription was accepted.
    Subscribe,
    /// Something was refused.
    Deny,
    /// A limit was hit.
    Limit,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: not authenticated or not authorised.
    Denied,
    /// Refused or cut short by a configured limit.
    Limit,
}

/// One audit event, as sinks receive it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// When (serialised as RFC 3339 UTC with milliseconds).
    #[serde(rename = "ts", serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `"audit"`.
    pub kind: &'static str,
    /// Who.
    pub actor: &'a Actor,
    /// Which org (`None`: not known, e.g. a refused token).
    pub org: Option<&'a str>,
    /// What.
    pub op: Op,
    /// The agent's cluster (from its certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    /// The node an agent says it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<&'a str>,
    /// The peer's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// The session's subscription id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<&'a str>,
    /// For `deny`: what was attempted (`session_connect`, `agent_connect`, `subscribe`, `list`,
    /// …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<&'static str>,
    /// The selector concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<&'a Selector>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, as a fixed code (`token_expired`, `scope_not_covered`, `max_subscriptions`, …).
    pub reason: Option<&'static str>,
    /// For refusals and limit hits (aggregated): how many events this line stands for (1 for
    /// the first one, written at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For a line standing for several events: when the first of them happened.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_opt"
    )]
    pub since: Option<SystemTime>,
}

impl<'a> AuditEvent<'a> {
    fn new(actor: &'a Actor, org: Option<&'a str>, op: Op, outcome: Outcome) -> Self {
        Self {
            time: UNIX_EPOCH,
            kind: "audit",
            actor,
            org,
            op,
            cluster: None,
            node: None,
            remote: None,
            subscription: None,
            attempt: None,
            selector: None,
            outcome,
            reason: None,
            count: None,
            since: None,
        }
    }
}

/// Whom an aggregated event is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Offender {
    /// A connection the relay knows (its hub id).
    Connection(ActorKind, u64),
    /// A peer not (yet) identified: its source address.
    Source(SourceKey),
    /// Identified by its token subject or certificate identity only.
    Subject(ActorKind, String),
    /// Known only by its org.
    Org(String),
    /// Nothing known.
    Unknown(ActorKind),
}

/// What aggregation groups by: who, and which refusal or limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AggregateKey {
    offender: Offender,
    op: Op,
    attempt: Option<&'static str>,
    reason: Option<&'static str>,
}

impl AggregateKey {
    fn of(e: &AuditEvent<'_>) -> Self {
        let a = e.actor;
        let offender = if a.id != 0 {
            Offender::Connection(a.kind, a.id)
        } else if let Some(remote) = e.remote {
            Offender::Source(SourceKey::of(remote.ip()))
        } else if let Some(sub) = &a.sub {
            Offender::Subject(a.kind, sub.clone())
        } else if let Some(org) = e.org {
            Offender::Org(org.to_owned())
        } else {
            Offender::Unknown(a.kind)
        };
        Self {
            offender,
            op: e.op,
            attempt: e.attempt,
            reason: e.reason,
        }
    }
}

/// The first counted event of a window, from which its summary line is written.
#[derive(Debug)]
struct Sample {
    time: SystemTime,
    actor: Actor,
    org: Option<String>,
    op: Op,
    outcome: Outcome,
    cluster: Option<String>,
    remote: Option<SocketAddr>,
    attempt: Option<&'static str>,
    reason: Option<&'static str>,
}

impl Sample {
    fn of(e: &AuditEvent<'_>) -> Self {
        Self {
            time: e.time,
            actor: e.actor.clone(),
            org: e.org.map(Into::into),
            op: e.op,
            outcome: e.outcome,
            cluster: e.cluster.map(Into::into),
            remote: e.remote,
            attempt: e.attempt,
            reason: e.reason,
        }
    }
}

/// The aggregation table and the origin of its monotonic clock.
#[derive(Debug)]
struct Aggregation {
    table: Mutex<Aggregator<AggregateKey, Sample>>,
    origin: tokio::time::Instant,
}

impl Aggregation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Aggregator<AggregateKey, Sample>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the aggregation's shell gives it the time"
    )]
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

/// Where audit events go. Implement it to add a destination, e.g. an OpenTelemetry log
/// exporter (map the [`AuditEvent`] fields to log record attributes, or use `line` as the
/// body).
///
/// Called under the auditor's lock, in event order: an implementation must return promptly —
/// queue, and drop (returning an error) rather than wait.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Takes one event; `line` is its JSON encoding, newline included. An error means the event
    /// was not taken; the auditor counts it.
    fn record(&self, event: &AuditEvent<'_>, line: &[u8]) -> io::Result<()>;

    /// Events taken but lost afterwards (e.g. a failed write on a writer thread).
    fn failures(&self) -> u64 {
        0
    }

    /// Waits up to `timeout` until every event taken is written; true if it is (shutdown).
    fn flush(&self, _timeout: Duration) -> bool {
        true
    }
}

/// Emits audit events to its sinks. Thread-safe; share it in an `Arc`.
#[derive(Debug)]
pub struct Auditor {
    buf: Mutex<Vec<u8>>,
    sinks: Vec<Arc<dyn AuditSink>>,
    clock: fn() -> SystemTime,
    emitted: AtomicU64,
    rejected: AtomicU64,
    aggregation: std::sync::OnceLock<Aggregation>,
}

impl Auditor {
    /// An auditor writing to `sink`.
    #[allow(
        clippy::disallowed_methods,
        reason = "audit lines carry the wall-clock time"
    )]
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        Self {
            buf: Mutex::new(Vec::with_capacity(1024)),
            sinks: vec![sink],
            clock: SystemTime::now,
            emitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            aggregation: std::sync::OnceLock::new(),
        }
    }

    /// The production auditor: stdout, through a [`QueuedSink`] of
    /// [`DEFAULT_QUEUE_EVENTS`] events.
    pub fn stdout() -> io::Result<Self> {
        Ok(Self::new(Arc::new(QueuedSink::spawn(
            io::stdout(),
            DEFAULT_QUEUE_EVENTS,
        )?)))
    }

    /// Also sends every event to `sink` (e.g. an OpenTelemetry log exporter).
    pub fn with_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Takes event times from `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }

    /// Events a sink refused or lost (queue full, write failed): export as a metric.
    pub fn failed(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed) + self.sinks.iter().map(|s| s.failures()).sum::<u64>()
    }

    /// Aggregates refusals and limit hits from now on ([`aggregate`]). The first configuration
    /// given wins; false if aggregation was already on.
    #[allow(clippy::disallowed_methods, reason = "the aggregation's time zero")]
    pub fn aggregate(&self, config: AggregateConfig) -> bool {
        self.aggregation
            .set(Aggregation {
                table: Mutex::new(Aggregator::new(config)),
                origin: tokio::time::Instant::now(),
            })
            .is_ok()
    }

    /// The aggregation settings in force, if on.
    pub fn aggregation(&self) -> Option<AggregateConfig> {
        self.aggregation.get().map(|a| a.lock().config())
    }

    /// Refusals and limit hits counted into a summary line instead of a line of their own
    /// (those of the others bucket included).
    pub fn suppressed(&self) -> u64 {
        self.aggregation.get().map_or(0, |a| a.lock().counted())
    }

    /// Of [`Auditor::suppressed`], those folded into the others bucket (the table was full).
    pub fn overflowed(&self) -> u64 {
        self.aggregation.get().map_or(0, |a| a.lock().overflowed())
    }

    /// Offenders (× refusal or limit) the aggregation table tracks now.
    pub fn offenders(&self) -> usize {
        self.aggregation.get().map_or(0, |a| a.lock().keys())
    }

    /// Writes the summary lines whose interval is over. The relay calls it every second.
    pub fn flush_due(&self) {
        let Some(agg) = self.aggregation.get() else {
            return;
        };
        let due = agg.lock().due(agg.now());
        for summary in due {
            self.summarise(summary);
        }
    }

    /// Writes every summary line still held (at shutdown), then waits up to `timeout` for the
    /// sinks to write what they queued. True if all was written.
    pub fn flush_all(&self, timeout: Duration) -> bool {
        if let Some(agg) = self.aggregation.get() {
            let held = agg.lock().drain();
            for summary in held {
                self.summarise(summary);
            }
        }
        self.sinks.iter().all(|s| s.flush(timeout))
    }

    fn summarise(&self, summary: aggregate::Summary<Sample>) {
        let others = Actor {
            kind: ActorKind::Others,
            id: 0,
            sub: None,
        };
        match &summary.sample {
            Some(s) => {
                let mut e = AuditEvent::new(&s.actor, s.org.as_deref(), s.op, s.outcome);
                e.cluster = s.cluster.as_deref();
                e.remote = s.remote;
                e.attempt = s.attempt;
                e.reason = s.reason;
                e.count = Some(summary.count);
                e.since = Some(s.time);
                self.emit(e);
            }
            None => {
                let mut e = AuditEvent::new(&others, None, Op::Limit, Outcome::Limit);
                e.reason = Some("audit_offenders");
                e.count = Some(summary.count);
                self.emit(e);
            }
        }
    }

    /// An agent's certificate was accepted: it is filed under `org`/`cluster`.
    pub fn agent_connect(
        &self,
        actor: &Actor,
        org: &str,
        cluster: &str,
        node: &str,
        remote: SocketAddr,
    ) {
        let mut e = AuditEvent::new(actor, Some(org), Op::AgentConnect, Outcome::Ok);
        e.cluster = Some(cluster);
        e.node = Some(node);
        e.remote = Some(remote);
        self.emit(e);
    }

    /// An agent's connection ended (`reason`: `closed`, `timeout`, `protocol_error`, …).
    pub fn agent_disconnect(&self, actor: &Actor, org: &str, cluster: &str, reason: &'static str) {
        let mut e = AuditEvent::new(actor, Some(org), Op::AgentDisconnect, Outcome::Ok);
        e.cluster = Some(cluster);
        e.reason = Some(reason);
        self.emit(e);
    }

    /// A session's token was accepted for `org`.
    pub fn session_connect(&self, actor: &Actor, org: &str, remote: SocketAddr) {
        let mut e = AuditEvent::new(actor, Some(org), Op::SessionConnect, Outcome::Ok);
        e.remote = Some(remote);
        self.emit(e);
    }

    /// A subscription was accepted.
    pub fn subscribe(&self, actor: &Actor, org: &str, subscription: &str, selector: &Selector) {
        let mut e = AuditEvent::new(actor, Some(org), Op::Subscribe, Outcome::Ok);
        e.subscription = Some(subscription);
        e.selector = Some(selector);
        self.emit(e);
    }

    /// Something was refused: `attempt` names what (`session_connect`, `agent_connect`,
    /// `subscribe`, `list`, `open`), `reason` why (e.g. [`super::auth::AuthError::reason`]).
    pub fn deny(
        &self,
        actor: &Actor,
        org: Option<&str>,
        attempt: &'static str,
        selector: Option<&Selector>,
        remote: Option<SocketAddr>,
        reason: &'static str,
    ) {
        let mut e = AuditEvent::new(actor, org, Op::Deny, Outcome::Denied);
        e.attempt = Some(attempt);
        e.selector = selector;
        e.remote = remote;
        e.reason = Some(reason);
        self.emit_aggregated(e);
    }

    /// A configured limit was hit: `limit` names it (`max_subscriptions_per_session`,
    /// `slow_consumer`, `max_message_bytes`, …).
    pub fn limit(
        &self,
        actor: &Actor,
        org: Option<&str>,
        limit: &'static str,
        selector: Option<&Selector>,
    ) {
        let mut e = AuditEvent::new(actor, org, Op::Limit, Outcome::Limit);
        e.selector = selector;
        e.reason = Some(limit);
        self.emit_aggregated(e);
    }

    /// A configured limit was hit by a peer at `remote` (`pending_handshakes`,
    /// `first_byte_timeout`, `session_message_bytes`, …).
    pub fn limit_at(
        &self,
        actor: &Actor,
        org: Option<&str>,
        limit: &'static str,
        remote: Option<SocketAddr>,
    ) {
        let mut e = AuditEvent::new(actor, org, Op::Limit, Outcome::Limit);
        e.remote = remote;
        e.reason = Some(limit);
        self.emit_aggregated(e);
    }

    /// An agent's QUIC/TLS handshake failed (no client certificate, a certificate of another
    /// CA, wrong ALPN, …): audited as a `deny` of `agent_connect` with the reason from
    /// [`handshake_refusal_reason`], and logged.
    pub fn agent_handshake_refused(&self, remote: SocketAddr, error: &quinn::ConnectionError) {
        let reason = handshake_refusal_reason(error);
        tracing::info!(%remote, error = %error, reason, "agent handshake refused");
        self.deny(
            &Actor::agent(0, None),
            None,
            "agent_connect",
            None,
            Some(remote),
            reason,
        );
    }

    /// Refusals and limit hits: written, or counted for a later summary line.
    fn emit_aggregated(&self, mut event: AuditEvent<'_>) {
        let Some(agg) = self.aggregation.get() else {
            return self.emit(event);
        };
        event.time = (self.clock)();
        let key = AggregateKey::of(&event);
        let seen = agg.lock().observe(&key, agg.now(), || Sample::of(&event));
        if seen == Seen::Write {
            event.count = Some(1);
            self.emit(event);
        }
    }

    fn emit(&self, mut event: AuditEvent<'_>) {
        event.time = (self.clock)();
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        buf.clear();
        if serde_json::to_writer(&mut *buf, &event).is_err() {
            // Only a custom `Serialize` could fail here; none of ours does.
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.push(b'\n');
        self.emitted.fetch_add(1, Ordering::Relaxed);
        for sink in &self.sinks {
            if sink.record(&event, &buf).is_err() {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        if buf.capacity() > MAX_RETAINED_BUFFER_BYTES {
            *buf = Vec::with_capacity(1024);
        }
    }
}

/// A synchronous sink writing each line to `W` under a lock. For tests, and for writers that
/// never block; production stdout goes through [`QueuedSink`].
#[derive(Debug)]
pub struct WriterSink<W> {
    writer: Mutex<W>,
}

impl<W: Write + Send + fmt::Debug> WriterSink<W> {
    /// Wraps `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer: Mutex::new(writer),
        }
    }

    /// Gives the writer back.
    pub fn into_inner(self) -> W {
        self.writer
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the writer (e.g. to read what a test writer holds).
    pub fn with<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(&mut self.writer.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<W: Write + Send + fmt::Debug> AuditSink for WriterSink<W> {
    fn record(&self, _event: &AuditEvent<'_>, line: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        w.write_all(line)?;
        w.flush()
    }
}

/// A sink that queues lines (at most `capacity`) for a writer thread: `record` never waits; a
/// line that does not fit is refused (and counted by the auditor), a write that fails is
/// counted in [`AuditSink::failures`]. The thread ends, after draining, when the sink is
/// dropped.
#[derive(Debug)]
pub struct QueuedSink {
    tx: mpsc::SyncSender<Vec<u8>>,
    shared: Arc<QueueShared>,
}

#[derive(Debug, Default)]
struct QueueShared {
    /// Lines queued or being written.
    pending: Mutex<usize>,
    idle: Condvar,
    write_failures: AtomicU64,
}

impl QueuedSink {
    /// Starts the writer thread (`audit-writer`) over `writer`.
    pub fn spawn<W: Write + Send + 'static>(mut writer: W, capacity: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let shared = Arc::new(QueueShared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                for line in rx {
                    if writer
                        .write_all(&line)
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        thread_shared.write_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut pending = thread_shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *pending -= 1;
                    if *pending == 0 {
                        thread_shared.idle.notify_all();
                    }
                }
            })?;
        Ok(Self { tx, shared })
    }

    /// Waits until every queued line is written, at most `timeout`; true if it was (shutdown).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (pending, _) = self
            .shared
            .idle
            .wait_timeout_while(pending, timeout, |p| *p > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *pending == 0
    }
}

impl AuditSink for QueuedSink {
    fn record(&self, _event: &AuditEvent<'_>, line: &[u8]) -> io::Result<()> {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.tx.try_send(line.to_vec()) {
            Ok(()) => {
                *pending += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(_)) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "audit queue full",
            )),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "audit writer thread is gone",
            )),
        }
    }

    fn failures(&self) -> u64 {
        self.shared.write_failures.load(Ordering::Relaxed)
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.wait_idle(timeout)
    }
}

fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*time))
}

fn rfc3339_opt<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.collect_str(&Rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// The audit reason for a failed agent handshake: what the relay's TLS stack refused, or how
/// the handshake ended otherwise.
///
/// | reason                  | when                                                          |
/// | ----------------------- | ------------------------------------------------------------- |
/// | `no_client_certificate` | the agent presented no certificate (TLS alert 116)            |
/// | `untrusted_certificate` | its certificate does not verify against `--agent-ca-file`: another CA, a bad signature, expired, malformed (alerts 42–46, 48, 51) |
/// | `alpn_mismatch`         | it did not offer ALPN `logrelay/1` (alert 120)                |
/// | `tls_error`             | another TLS failure                                           |
/// | `peer_aborted`          | the agent closed the handshake (e.g. it does not trust the relay) |
/// | `handshake_timeout`     | the handshake did not finish within the idle timeout          |
/// | `protocol_error`        | another QUIC failure                                          |
pub fn handshake_refusal_reason(error: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match error {
        E::TransportError(t) => {
            let code = u64::from(t.code);
            match code.checked_sub(0x100).filter(|alert| *alert < 0x100) {
                Some(116) => "no_client_certificate",
                Some(42..=46 | 48 | 51) => "untrusted_certificate",
                Some(120) => "alpn_mismatch",
                Some(_) => "tls_error",
                None => "protocol_error",
            }
        }
        E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset => "peer_aborted",
        E::TimedOut => "handshake_timeout",
        _ => "protocol_error",
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.000Z`); times
/// before 1970 print as the epoch.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Seconds since 1970 in a u64 cannot overflow an i64 day count.
        let (y, m, d) = logrelay_wire::time::civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use serde_json::{Value, json};

    use super::super::auth::{Role, RoleBinding, Scope};
    use super::aggregate::AggregateConfig;
    use super::*;

    fn fixed_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    }

    fn auditor() -> (Auditor, Arc<WriterSink<Vec<u8>>>) {
        let sink = Arc::new(WriterSink::new(Vec::new()));
        let auditor = Auditor::new(sink.clone()).with_clock(fixed_clock);
        (auditor, sink)
    }

    fn lines(sink: &WriterSink<Vec<u8>>) -> Vec<Value> {
        sink.with(|buf| {
            let text = std::str::from_utf8(buf).unwrap();
            assert!(text.ends_with('\n'));
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
    }

    fn session() -> Actor {
        let claims = Claims {
            sub: "alice@example.com".into(),
            org: "acme".into(),
            roles: vec![RoleBinding {
                role: Role::Viewer,
                scope: Scope::Org,
            }],
            exp: 0,
        };
        Actor::session(7, Some(&claims))
    }

    fn selector() -> Selector {
        Selector {
            namespace: Some("web".into()),
            domain: Some("prod".into()),
            ..Selector::default()
        }
    }

    const TS: &str = "2023-11-14T22:13:20.123Z";

    #[test]
    fn subscribe_event_is_exactly_this_line() {
        let (a, sink) = auditor();
        a.subscribe(&session(), "acme", "a", &selector());
        let text = sink.with(|b| String::from_utf8(b.clone()).unwrap());
        assert_eq!(
            text,
            concat!(
                r#"{"ts":"2023-11-14T22:13:20.123Z","kind":"audit","#,
                r#""actor":{"type":"session","id":7,"sub":"alice@example.com"},"#,
                r#""org":"acme","op":"subscribe","subscription":"a","#,
                r#""selector":{"namespace":"web","domain":"prod"},"outcome":"ok","reason":null}"#,
                "\n"
            )
        );
        assert_eq!((a.emitted(), a.failed()), (1, 0));
    }

    #[test]
    fn every_event_has_exactly_its_fields() {
        let (a, sink) = auditor();
        let agent = Actor::agent(3, Some("spiffe://acme/cluster/east"));
        let remote: SocketAddr = "10.0.0.9:51234".parse().unwrap();
        a.agent_connect(&agent, "acme", "east", "node-1", remote);
        a.agent_disconnect(&agent, "acme", "east", "timeout");
        a.session_connect(&session(), "acme", remote);
        a.deny(
            &Actor::session(8, None),
            None,
            "session_connect",
            None,
            Some(remote),
            "token_expired",
        );
        a.deny(
            &session(),
            Some("acme"),
            "subscribe",
            Some(&selector()),
            None,
            "scope_not_covered",
        );
        a.limit(
            &session(),
            Some("acme"),
            "max_subscriptions_per_session",
            None,
        );
        let agent_json = json!({"type": "agent", "id": 3, "sub": "spiffe://acme/cluster/east"});
        let session_json = json!({"type": "session", "id": 7, "sub": "alice@example.com"});
        assert_eq!(
            lines(&sink),
            vec![
                json!({"ts": TS, "kind": "audit", "actor": agent_json, "org": "acme",
                       "op": "agent_connect", "cluster": "east", "node": "node-1",
                       "remote": "10.0.0.9:51234", "outcome": "ok", "reason": null}),
                json!({"ts": TS, "kind": "audit", "actor": agent_json, "org": "acme",
                       "op": "agent_disconnect", "cluster": "east", "outcome": "ok",
                       "reason": "timeout"}),
                json!({"ts": TS, "kind": "audit", "actor": session_json, "org": "acme",
                       "op": "session_connect", "remote": "10.0.0.9:51234", "outcome": "ok",
                       "reason": null}),
                json!({"ts": TS, "kind": "audit",
                       "actor": {"type": "session", "id": 8, "sub": null}, "org": null,
                       "op": "deny", "remote": "10.0.0.9:51234", "attempt": "session_connect",
                       "outcome": "denied", "reason": "token_expired"}),
                json!({"ts": TS, "kind": "audit", "actor": session_json, "org": "acme",
                       "op": "deny", "attempt": "subscribe",
                       "selector": {"namespace": "web", "domain": "prod"},
                       "outcome": "denied", "reason": "scope_not_covered"}),
                json!({"ts": TS, "kind": "audit", "actor": session_json, "org": "acme",
                       "op": "limit", "outcome": "limit",
                       "reason": "max_subscriptions_per_session"}),
            ]
        );
        assert_eq!(a.emitted(), 6);
    }

    #[test]
    fn hostile_strings_stay_on_one_line() {
        let (a, sink) = auditor();
        let actor = Actor::agent(1, Some("x\n{\"kind\":\"audit\",\"op\":\"forged\"}\u{2028}"));
        a.agent_disconnect(&actor, "o\r\n", "c", "closed");
        let text = sink.with(|b| String::from_utf8(b.clone()).unwrap());
        assert_eq!(text.matches('\n').count(), 1);
        assert_eq!(lines(&sink).len(), 1);
    }

    #[test]
    fn concurrent_emitters_each_get_whole_lines() {
        let (a, sink) = auditor();
        let a = Arc::new(a);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let a = Arc::clone(&a);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        a.subscribe(
                            &Actor::session(t, None),
                            "acme",
                            &i.to_string(),
                            &selector(),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lines(&sink).len(), 400);
        assert_eq!((a.emitted(), a.failed()), (400, 0));
    }

    #[test]
    fn extra_sinks_receive_the_structured_event() {
        type Recorded = (Op, Option<String>, Outcome, usize);
        #[derive(Debug, Default)]
        struct Otel(Mutex<Vec<Recorded>>);
        impl AuditSink for Otel {
            fn record(&self, e: &AuditEvent<'_>, line: &[u8]) -> io::Result<()> {
                self.0
                    .lock()
                    .unwrap()
                    .push((e.op, e.org.map(Into::into), e.outcome, line.len()));
                Ok(())
            }
        }
        let (a, sink) = auditor();
        let otel = Arc::new(Otel::default());
        let a = a.with_sink(otel.clone());
        a.limit(&session(), Some("acme"), "slow_consumer", None);
        let len = sink.with(|b| b.len());
        assert_eq!(
            *otel.0.lock().unwrap(),
            vec![(Op::Limit, Some("acme".into()), Outcome::Limit, len)]
        );
    }

    type Release = Arc<(Mutex<bool>, Condvar)>;

    /// A writer that blocks in `write` until released, announcing when it is stuck.
    #[derive(Debug)]
    struct Gate {
        entered: mpsc::Sender<()>,
        release: Release,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let (open, cv) = &*self.release;
            let _open = cv.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gate() -> (Gate, Receiver<()>, Release, Arc<Mutex<Vec<u8>>>) {
        let (entered, rx) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let g = Gate {
            entered,
            release: release.clone(),
            out: out.clone(),
        };
        (g, rx, release, out)
    }

    #[test]
    fn a_stalled_writer_never_blocks_emitters_and_overflow_is_counted() {
        let (g, entered, release, out) = gate();
        let queue = Arc::new(QueuedSink::spawn(g, 8).unwrap());
        let a = Auditor::new(queue.clone()).with_clock(fixed_clock);
        a.session_connect(&session(), "acme", "127.0.0.1:1".parse().unwrap());
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("writer thread took the first line");
        // The writer is stuck: 8 more fit in the queue, 5 are dropped, nobody waits.
        for i in 0..13 {
            a.subscribe(&session(), "acme", &i.to_string(), &selector());
        }
        assert_eq!((a.emitted(), a.failed()), (14, 5));
        assert!(!queue.wait_idle(Duration::from_millis(1)));
        {
            let (open, cv) = &*release;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        assert!(queue.wait_idle(Duration::from_secs(10)));
        let out = out.lock().unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.lines().count(), 9);
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok())
        );
    }

    #[test]
    fn failed_writes_are_counted() {
        #[derive(Debug)]
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let queue = Arc::new(QueuedSink::spawn(Broken, 8).unwrap());
        let a = Auditor::new(queue.clone()).with_sink(Arc::new(WriterSink::new(Broken)));
        a.session_connect(&session(), "acme", "127.0.0.1:1".parse().unwrap());
        a.session_connect(&session(), "acme", "127.0.0.1:1".parse().unwrap());
        assert!(queue.wait_idle(Duration::from_secs(10)));
        // Two lost by the queue's writer, two refused by the synchronous sink.
        assert_eq!((a.emitted(), a.failed()), (2, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_and_limits_are_aggregated_per_offender_with_a_count() {
        let (a, sink) = auditor();
        assert!(a.aggregate(AggregateConfig {
            interval: Duration::from_secs(10),
            max_keys: 3,
        }));
        let anonymous = Actor::session(0, None);
        let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        // One source (any port), one reason: the first at once, the rest counted.
        for port in 1..=5 {
            a.limit_at(
                &anonymous,
                None,
                "pending_handshakes",
                at(&format!("10.0.0.1:{port}")),
            );
        }
        // Another reason of the same source, and a known session: keys of their own.
        a.limit_at(&anonymous, None, "first_byte_timeout", at("10.0.0.1:9"));
        a.limit(&session(), Some("acme"), "session_requests_per_sec", None);
        a.limit(&session(), Some("acme"), "session_requests_per_sec", None);
        // The table (3 keys) is full: a new offender goes to the others bucket.
        a.deny(
            &anonymous,
            None,
            "session_connect",
            None,
            at("[2001:db8::1]:443"),
            "bad_signature",
        );
        assert_eq!(lines(&sink).len(), 3);
        assert_eq!((a.suppressed(), a.overflowed(), a.offenders()), (6, 1, 3));
        a.flush_due();
        assert_eq!(lines(&sink).len(), 3, "no interval is over yet");
        tokio::time::advance(Duration::from_secs(10)).await;
        a.flush_due();
        let mut all = lines(&sink);
        let summaries = all.split_off(3);
        let first = json!({"type": "session", "id": 0, "sub": null});
        assert_eq!(
            all,
            vec![
                json!({"ts": TS, "kind": "audit", "actor": first, "org": null, "op": "limit",
                       "remote": "10.0.0.1:1", "outcome": "limit",
                       "reason": "pending_handshakes", "count": 1}),
                json!({"ts": TS, "kind": "audit", "actor": first, "org": null, "op": "limit",
                       "remote": "10.0.0.1:9", "outcome": "limit",
                       "reason": "first_byte_timeout", "count": 1}),
                json!({"ts": TS, "kind": "audit",
                       "actor": {"type": "session", "id": 7, "sub": "alice@example.com"},
                       "org": "acme", "op": "limit", "outcome": "limit",
                       "reason": "session_requests_per_sec", "count": 1}),
            ]
        );
        let mut summaries: Vec<String> = summaries.iter().map(|v| v.to_string()).collect();
        summaries.sort();
        let mut want: Vec<String> = [
            json!({"ts": TS, "kind": "audit", "actor": first, "org": null, "op": "limit",
                   "remote": "10.0.0.1:2", "outcome": "limit", "reason": "pending_handshakes",
                   "count": 4, "since": TS}),
            json!({"ts": TS, "kind": "audit",
                   "actor": {"type": "session", "id": 7, "sub": "alice@example.com"},
                   "org": "acme", "op": "limit", "outcome": "limit",
                   "reason": "session_requests_per_sec", "count": 1, "since": TS}),
            json!({"ts": TS, "kind": "audit",
                   "actor": {"type": "others", "id": 0, "sub": null}, "org": null,
                   "op": "limit", "outcome": "limit", "reason": "audit_offenders",
                   "count": 1}),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        want.sort();
        assert_eq!(summaries, want);
        assert_eq!(
            a.offenders(),
            2,
            "keys with a summary start a new window; the quiet one is forgotten"
        );
        // Quiet for an interval: forgotten, so the next one is written at once again.
        tokio::time::advance(Duration::from_secs(10)).await;
        a.flush_due();
        assert_eq!(a.offenders(), 0);
        a.limit_at(&anonymous, None, "pending_handshakes", at("10.0.0.1:7"));
        assert_eq!(lines(&sink).len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_writes_what_is_still_counted() {
        let (a, sink) = auditor();
        a.aggregate(AggregateConfig {
            interval: Duration::from_secs(60),
            max_keys: 8,
        });
        for _ in 0..3 {
            a.limit(&session(), Some("acme"), "session_message_bytes", None);
        }
        assert!(a.flush_all(Duration::from_secs(1)));
        let all = lines(&sink);
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0]["count"].as_u64(), all[1]["count"].as_u64()),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |ms: u64| Rfc3339(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
