//! Ingest: the QUIC listener agents dial.
//!
//! Per connection: the agent's org and cluster are read from its client certificate (never
//! from what it says), then the control stream (`hello` first, then catalog, heartbeats,
//! `open_failed`) is served while relay → agent messages (`open`, `cancel`) are written from a
//! bounded queue. Each unidirectional stream is one demand's data: a preamble naming the demand,
//! then length-prefixed batches. The relay reads only each batch's header and hands the same
//! `Bytes` to the ring (or the watcher's backfill). A malformed data stream is stopped with an
//! error code; the connection and its other streams carry on. A malformed control stream closes
//! the connection with a reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use logrelay_tls::AgentId as AgentIdentity;
use logrelay_wire::batch::{BatchHeader, Kind, TraceFrame};
use logrelay_wire::code::AppCode;
use logrelay_wire::control::{self, AgentMsg, ErrorCode, RelayMsg, SeqPos, features};
use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};
use logrelay_wire::reason::DisconnectReason;
use tokio::sync::{mpsc, watch};

use crate::audit::{Actor, Auditor};
use crate::backplane::Backplane;
use crate::hub::{AgentViolation, DemandSink, Hub, Unresolved};
use crate::ids::{AgentId, DemandId};
use crate::metrics::RelayMetrics;

mod shared;

use self::shared::{Publisher, SharedAgent};

/// Messages queued toward one agent connection; policy when full: the connection is reset
/// ([`AppCode::Overloaded`]), the agent reconnects and the relay re-sends its demands.
pub const AGENT_QUEUE_MESSAGES: usize = 4096;

/// How often each agent is told what its live demands' watchers have been handed (`ack`).
pub const ACK_INTERVAL: Duration = Duration::from_millis(250);

/// The connection serving each agent, by identity (org, cluster, node): a newer connection of
/// the same agent supersedes the older one at once (an agent restarted faster than the idle
/// timeout would otherwise leave its old connection looking alive).
#[derive(Debug, Default)]
pub struct Connections(std::sync::Mutex<HashMap<AgentKey, (AgentId, quinn::Connection)>>);

/// An agent's identity: org and cluster from its certificate, node from its `hello`.
type AgentKey = (String, String, String);

impl Connections {
    /// Files `conn` (hub agent `agent`) under `key`; returns the connection it supersedes.
    fn claim(
        &self,
        key: AgentKey,
        agent: AgentId,
        conn: &quinn::Connection,
    ) -> Option<(AgentId, quinn::Connection)> {
        self.0
            .lock()
            .expect("connections lock")
            .insert(key, (agent, conn.clone()))
    }

    /// Forgets `key` if agent `agent` still holds it.
    fn release(&self, key: &AgentKey, agent: AgentId) {
        let mut map = self.0.lock().expect("connections lock");
        if map.get(key).is_some_and(|(a, _)| *a == agent) {
            map.remove(key);
        }
    }
}

/// Longest node name a `hello` may carry (a Kubernetes node name is a DNS subdomain).
pub const MAX_NODE_BYTES: usize = 253;

/// Limit hits of one connection written to the audit trail; later ones are only counted.
const AUDITED_LIMITS_PER_CONNECTION: u32 = 16;

/// Why an agent connection or data stream was closed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The handshake failed (untrusted certificate, wrong ALPN, …).
    #[error("handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// The certificate carries no `spiffe://<org>/cluster/<cluster>` URI SAN.
    #[error("agent certificate names no org/cluster")]
    NoIdentity,
    /// The agent broke the protocol.
    #[error("protocol error ({code:?}): {message}")]
    Protocol {
        /// Code sent back.
        code: ErrorCode,
        /// Reason sent back.
        message: String,
    },
    /// A stream failed underneath.
    #[error("stream error: {0}")]
    Stream(String),
    /// The agent presented something that is not its own (on the control stream), or did so
    /// too often on data streams.
    #[error("violation ({kind}): {message}")]
    Violation {
        /// [`AgentViolation::kind`], or `too_many_violations`.
        kind: &'static str,
        /// Reason sent back.
        message: String,
    },
}

/// The features of protocol 1 this relay reads, answered in `welcome` when the agent names them.
const READS: [&str; 3] = [features::ACK, features::EVENTS, features::BATCH_TRACE];

/// The `welcome` answer to a `hello` naming `asked`: those of them this relay reads ([`READS`]),
/// in its order; trace frames (`batch_trace`) only while it traces (`tracing`). An agent
/// announces `events` streams only when this names `events`.
fn welcome_features(asked: &[String], tracing: bool) -> Vec<String> {
    READS
        .iter()
        .filter(|f| tracing || **f != features::BATCH_TRACE)
        .filter(|f| asked.iter().any(|a| a == *f))
        .map(|f| (*f).to_owned())
        .collect()
}

fn protocol(code: ErrorCode, message: impl Into<String>) -> IngestError {
    IngestError::Protocol {
        code,
        message: message.into(),
    }
}

/// Settings of ingest.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Largest frame accepted.
    pub max_frame_bytes: u32,
    /// Heartbeat interval asked of agents.
    pub heartbeat_secs: u32,
    /// Violations one connection may commit before it is closed.
    pub max_violations: u32,
}

/// What one agent connection did wrong, shared by its control loop and data streams: each
/// violation and limit hit is counted and audited (limit hits up to
/// [`AUDITED_LIMITS_PER_CONNECTION`]); past `max_violations` the connection is closed.
#[derive(Debug)]
struct Offences {
    conn: quinn::Connection,
    actor: Actor,
    org: String,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
    violations: std::sync::atomic::AtomicU32,
    limits: std::sync::atomic::AtomicU32,
    max_violations: u32,
}

impl Offences {
    /// Counts and audits a violation (`attempt`: what the agent did); true when the connection
    /// has now committed more than it may.
    fn violation(&self, v: AgentViolation, attempt: &'static str) -> bool {
        use std::sync::atomic::Ordering;
        self.metrics.agent_violation(v.kind());
        self.auditor.deny(
            &self.actor,
            Some(&self.org),
            attempt,
            None,
            Some(self.conn.remote_address()),
            v.kind(),
        );
        tracing::warn!(agent = self.actor.id, org = %self.org, kind = v.kind(), attempt, "agent violation");
        self.violations.fetch_add(1, Ordering::Relaxed) + 1 > self.max_violations
    }

    /// A data stream's violation: stops that stream and, past the most allowed, closes the
    /// connection.
    fn stop(&self, recv: &mut quinn::RecvStream, v: AgentViolation) {
        let _ = recv.stop(AppCode::Violation.code().into());
        if self.violation(v, "data_stream") {
            self.conn.close(
                AppCode::Violation.code().into(),
                format!(
                    "more than {} violations (ids or streams not this connection's)",
                    self.max_violations
                )
                .as_bytes(),
            );
        }
    }

    /// Counts a limit hit and audits it, up to [`AUDITED_LIMITS_PER_CONNECTION`].
    fn limit(&self, limit: &'static str) {
        use std::sync::atomic::Ordering;
        if self.limits.fetch_add(1, Ordering::Relaxed) < AUDITED_LIMITS_PER_CONNECTION {
            self.auditor
                .limit(&self.actor, Some(&self.org), limit, None);
        }
    }
}

/// Accepts agent connections until shutdown; refuses new ones while draining.
#[allow(
    clippy::too_many_arguments,
    reason = "the serve functions' shared signature is being restructured (issue 13)"
)]
pub async fn run(
    endpoint: quinn::Endpoint,
    hub: Arc<Hub>,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
    config: IngestConfig,
    backplane: Option<Backplane>,
    mut shutdown: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) {
    let connections = Arc::new(Connections::default());
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = crate::stopped(&mut shutdown) => break,
        };
        let Some(incoming) = incoming else { break };
        if *drain.borrow() {
            // Draining: new agents go to another relay.
            incoming.refuse();
            continue;
        }
        let hub = hub.clone();
        let metrics = metrics.clone();
        let auditor = auditor.clone();
        let shutdown = shutdown.clone();
        let drain = drain.clone();
        let connections = connections.clone();
        let backplane = backplane.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let ctx = AgentCtx {
                        hub,
                        metrics,
                        auditor,
                        config,
                        connections,
                        backplane,
                    };
                    if let Err(e) = serve_agent(conn, ctx, shutdown, drain).await {
                        tracing::info!(%remote, error = %e, "agent connection closed");
                    }
                }
                Err(e) => auditor.agent_handshake_refused(remote, &e),
            }
        });
    }
    endpoint.close(AppCode::Shutdown.code().into(), b"relay shutting down");
}

/// What serving one agent connection needs.
struct AgentCtx {
    hub: Arc<Hub>,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
    config: IngestConfig,
    connections: Arc<Connections>,
    backplane: Option<Backplane>,
}

async fn serve_agent(
    conn: quinn::Connection,
    ctx: AgentCtx,
    mut shutdown: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let AgentCtx {
        hub,
        metrics,
        auditor,
        config,
        connections,
        backplane,
    } = ctx;
    let id = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(AgentIdentity::from_cert));
    let Some(id) = id else {
        auditor.deny(
            &Actor::agent(0, None),
            None,
            "agent_connect",
            None,
            Some(conn.remote_address()),
            "no_identity",
        );
        conn.close(
            AppCode::Forbidden.code().into(),
            b"certificate names no org/cluster",
        );
        return Err(IngestError::NoIdentity);
    };
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .map_err(|_| protocol(ErrorCode::OutOfOrder, "no control stream within 10 s"))??;
    let mut decoder = FrameDecoder::new(config.max_frame_bytes);
    let mut out = BytesMut::new();

    // Hello first.
    let hello = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv, &mut decoder))
        .await
        .map_err(|_| protocol(ErrorCode::OutOfOrder, "no hello within 10 s"));
    let (node, agent_features) = match hello {
        Ok(Ok(Some(AgentMsg::Hello {
            protocol: v,
            node,
            features,
            ..
        }))) => {
            if v != logrelay_wire::PROTOCOL_VERSION {
                let e = protocol(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "relay speaks protocol {}, agent {v}",
                        logrelay_wire::PROTOCOL_VERSION
                    ),
                );
                return Err(refuse(&conn, &mut send, &mut out, e, &metrics).await);
            }
            if node.len() > MAX_NODE_BYTES {
                let e = protocol(
                    ErrorCode::BadRequest,
                    format!(
                        "node name of {} bytes; at most {MAX_NODE_BYTES}",
                        node.len()
                    ),
                );
                return Err(refuse(&conn, &mut send, &mut out, e, &metrics).await);
            }
            (node, features)
        }
        Ok(Ok(Some(other))) => {
            let e = protocol(
                ErrorCode::OutOfOrder,
                format!("expected hello, got {other:?}"),
            );
            return Err(refuse(&conn, &mut send, &mut out, e, &metrics).await);
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) | Err(e) => return Err(refuse(&conn, &mut send, &mut out, e, &metrics).await),
    };
    // Acknowledgements for an agent that keeps what it sent until told (and only for it: an
    // older agent would not know the message).
    let answered = welcome_features(&agent_features, logrelay_telemetry::enabled());
    let acks = answered.iter().any(|f| f == features::ACK);
    let trace_frames = answered.iter().any(|f| f == features::BATCH_TRACE);
    write_msg(
        &mut send,
        &mut out,
        &RelayMsg::Welcome {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            org: id.org.clone(),
            cluster: id.cluster.clone(),
            max_frame_bytes: config.max_frame_bytes,
            heartbeat_secs: config.heartbeat_secs,
            features: answered,
        },
    )
    .await?;

    let (tx, mut rx) = mpsc::channel::<RelayMsg>(AGENT_QUEUE_MESSAGES);
    let reset = Arc::new(tokio::sync::Notify::new());
    let agent = hub.add_agent(&id.org, &id.cluster, tx, reset.clone());
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(u64::from(config.heartbeat_secs.max(1))));
    let actor = Actor::agent(agent.get(), Some(&id.uri()));
    auditor.agent_connect(&actor, &id.org, &id.cluster, &node, conn.remote_address());
    tracing::info!(%agent, org = %id.org, cluster = %id.cluster, %node, remote = %conn.remote_address(), "agent connected");
    // The same agent back before its old connection timed out (it restarted): the old one is
    // closed now, and its watchers are told `paused` before this one announces anything.
    let key = (id.org.clone(), id.cluster.clone(), node.clone());
    if let Some((old, old_conn)) = connections.claim(key.clone(), agent, &conn) {
        metrics.agents_superseded.inc();
        tracing::info!(%agent, superseded = %old, org = %id.org, cluster = %id.cluster, %node, "a newer connection of the agent supersedes the old one");
        old_conn.close(
            AppCode::Superseded.code().into(),
            b"superseded by a newer connection of the same agent",
        );
        hub.remove_agent(old);
    }
    // On the backplane: the agent's demand subject (leases from other relays reach this relay
    // while it holds the agent) and its streams in the shared catalog.
    let mut shared = match &backplane {
        Some(bp) => SharedAgent::start(bp, &hub, agent, &id.org, &id.cluster, &node).await,
        None => None,
    };
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acked: HashMap<DemandId, SeqPos> = HashMap::new();

    let offences = Arc::new(Offences {
        conn: conn.clone(),
        actor: actor.clone(),
        org: id.org.clone(),
        metrics: metrics.clone(),
        auditor: auditor.clone(),
        violations: 0.into(),
        limits: 0.into(),
        max_violations: config.max_violations,
    });
    let data = tokio::spawn(accept_data(
        conn.clone(),
        hub.clone(),
        agent,
        metrics.clone(),
        offences.clone(),
        DataConfig {
            ingest: config,
            trace_frames,
        },
        shared.as_ref().map(SharedAgent::publisher),
    ));
    let result = loop {
        tokio::select! {
            msg = next_msg(&mut recv, &mut decoder) => match msg {
                Ok(Some(AgentMsg::CatalogAdd { streams })) => {
                    tracing::debug!(%agent, added = streams.len(), "catalog add");
                    let announced = shared.as_ref().map(|_| streams.clone());
                    let refused = hub.catalog_add(agent, streams);
                    if let (Some(s), Some(announced)) = (shared.as_mut(), announced) {
                        s.announce(&id.org, &id.cluster, announced, &refused);
                    }
                    let mut failed = None;
                    for r in refused {
                        offences.limit(r.limit);
                        tracing::info!(%agent, limit = r.limit, refused = r.streams.len(), "catalog streams refused");
                        let msg = RelayMsg::CatalogRefused {
                            message: format!(
                                "{} streams refused: the limit {} is reached",
                                r.streams.len(),
                                r.limit
                            ),
                            streams: r.streams,
                            code: ErrorCode::LimitExceeded,
                            limit: r.limit.into(),
                        };
                        if let Err(e) = write_msg(&mut send, &mut out, &msg).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                Ok(Some(AgentMsg::CatalogRemove { streams })) => {
                    if let Some(s) = shared.as_mut() {
                        s.withdraw(&streams);
                    }
                    hub.catalog_remove(agent, streams);
                }
                Ok(Some(AgentMsg::OpenFailed { demand, code, message })) => {
                    if let Err(v) = hub.open_failed(agent, DemandId::from(demand), code, &message) {
                        offences.violation(v, "open_failed");
                        break Err(IngestError::Violation {
                            kind: v.kind(),
                            message: format!("open_failed for demand {demand}: {v}"),
                        });
                    }
                }
                Ok(Some(AgentMsg::Heartbeat)) => {}
                Ok(Some(AgentMsg::Hello { .. })) => break Err(protocol(ErrorCode::OutOfOrder, "second hello")),
                Ok(Some(AgentMsg::Error { code, message })) => break Err(protocol(code, message)),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            Some(msg) = rx.recv() => {
                if let Err(e) = write_msg(&mut send, &mut out, &msg).await {
                    break Err(e);
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = write_msg(&mut send, &mut out, &RelayMsg::Heartbeat).await {
                    break Err(e);
                }
            }
            _ = ack_tick.tick(), if acks => {
                if let Err(e) = send_acks(&hub, agent, &mut acked, &mut send, &mut out, &metrics).await {
                    break Err(e);
                }
            }
            () = reset.notified() => {
                conn.close(AppCode::Overloaded.code().into(), b"control queue overflow; reconnect");
                break Ok(());
            }
            () = crate::stopped(&mut shutdown) => {
                conn.close(AppCode::Shutdown.code().into(), b"relay shutting down");
                break Ok(());
            }
            () = crate::stopped(&mut drain) => {
                conn.close(AppCode::Move.code().into(), b"relay draining: reconnect to another relay");
                break Ok(());
            }
            e = conn.closed() => break Err(e.into()),
        }
    };
    // Withdrawn from the shared catalog, demand subject unsubscribed.
    drop(shared);
    hub.remove_agent(agent);
    connections.release(&key, agent);
    data.abort();
    let reason = match &result {
        Ok(()) => DisconnectReason::Closed,
        Err(IngestError::Protocol { .. }) => DisconnectReason::ProtocolError,
        Err(IngestError::Violation { .. }) => DisconnectReason::Violation,
        // Closed from elsewhere: by its data streams' violations, or else by a newer
        // connection of the same agent.
        Err(IngestError::Handshake(quinn::ConnectionError::LocallyClosed)) => {
            if offences
                .violations
                .load(std::sync::atomic::Ordering::Relaxed)
                > config.max_violations
            {
                DisconnectReason::Violation
            } else {
                DisconnectReason::Superseded
            }
        }
        Err(IngestError::Handshake(quinn::ConnectionError::TimedOut)) => DisconnectReason::Timeout,
        Err(_) => DisconnectReason::ConnectionLost,
    };
    auditor.agent_disconnect(&actor, &id.org, &id.cluster, reason.label());
    tracing::info!(%agent, org = %id.org, cluster = %id.cluster, "agent disconnected");
    match result {
        Err(e @ (IngestError::Protocol { .. } | IngestError::Violation { .. })) => {
            Err(refuse(&conn, &mut send, &mut out, e, &metrics).await)
        }
        other => other,
    }
}

/// Tells the agent, for each of its live demands whose position moved, what every watcher has
/// been handed since the last `ack` ([`Hub::acks`]).
async fn send_acks(
    hub: &Hub,
    agent: AgentId,
    acked: &mut HashMap<DemandId, SeqPos>,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    metrics: &RelayMetrics,
) -> Result<(), IngestError> {
    let now = hub.acks(agent);
    acked.retain(|d, _| now.iter().any(|(n, _)| n == d));
    for (demand, through) in now {
        if acked.insert(demand, through) != Some(through) {
            let demand = demand.get();
            write_msg(send, out, &RelayMsg::Ack { demand, through }).await?;
            metrics.acks_sent.inc();
        }
    }
    Ok(())
}

/// Sends an error on the control stream and closes the connection with its reason.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    err: IngestError,
    metrics: &RelayMetrics,
) -> IngestError {
    let (code, quic_code, message) = match &err {
        IngestError::Protocol { code, message } => {
            metrics.protocol_error("agent");
            (*code, AppCode::Protocol, message)
        }
        // Counted and audited where it was found.
        IngestError::Violation { message, .. } => {
            (ErrorCode::Forbidden, AppCode::Violation, message)
        }
        _ => return err,
    };
    let _ = write_msg(
        send,
        out,
        &RelayMsg::Error {
            code,
            message: message.clone(),
        },
    )
    .await;
    let _ = send.finish();
    conn.close(quic_code.code().into(), message.as_bytes());
    err
}

async fn write_msg(
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    msg: &RelayMsg,
) -> Result<(), IngestError> {
    out.clear();
    frame::encode(&control::encode(msg), out);
    send.write_all(out)
        .await
        .map_err(|e| IngestError::Stream(e.to_string()))
}

async fn next_msg(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<AgentMsg>, IngestError> {
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                return control::decode(&body)
                    .map(Some)
                    .map_err(|e| protocol(ErrorCode::BadRequest, e.to_string()));
            }
            Ok(None) => {}
            Err(e) => return Err(protocol(ErrorCode::FrameTooLarge, e.to_string())),
        }
        match recv
            .read_chunk(64 * 1024, true)
            .await
            .map_err(|e| IngestError::Stream(e.to_string()))?
        {
            Some(chunk) => decoder.extend(&chunk.bytes),
            None => {
                return decoder
                    .finish()
                    .map(|()| None)
                    .map_err(|e| protocol(ErrorCode::BadRequest, e.to_string()));
            }
        }
    }
}

async fn accept_data(
    conn: quinn::Connection,
    hub: Arc<Hub>,
    agent: AgentId,
    metrics: Arc<RelayMetrics>,
    offences: Arc<Offences>,
    config: DataConfig,
    publisher: Option<Publisher>,
) {
    while let Ok(recv) = conn.accept_uni().await {
        let hub = hub.clone();
        let metrics = metrics.clone();
        let offences = offences.clone();
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut recv = recv;
            let data = serve_data(&mut recv, &hub, agent, &metrics, config, publisher.as_ref());
            let demand = match data.await {
                Ok(d) => d,
                Err(DataError::Violation(d, v)) => {
                    offences.stop(&mut recv, v);
                    d
                }
                Err(DataError::Protocol(d, e)) => {
                    metrics.protocol_error("agent");
                    tracing::info!(%agent, demand = ?d, error = %e, "data stream stopped");
                    let _ = recv.stop(AppCode::Protocol.code().into());
                    d
                }
            };
            if let Some(d) = demand {
                hub.demand_finished(agent, d);
            }
        });
    }
}

/// What the data streams of one connection may carry.
#[derive(Debug, Clone, Copy)]
struct DataConfig {
    ingest: IngestConfig,
    /// Trace frames ahead of sampled batches (the `welcome` named `batch_trace`).
    trace_frames: bool,
}

/// The spans of one sampled batch, from its trace frame: `relay.ingest` under the agent's
/// `agent.batch`, and `relay.ring_push` under it.
struct IngestTrace {
    span: logrelay_telemetry::Span,
    context: logrelay_telemetry::SpanContext,
}

impl IngestTrace {
    /// `None` when the trace frame's context is not recorded here (tracing off, unsampled).
    fn start(
        parent: &logrelay_telemetry::SpanContext,
        demand: DemandId,
        h: &BatchHeader,
        len: usize,
    ) -> Option<Self> {
        use logrelay_telemetry::{self as telemetry, names};
        let span = telemetry::start(
            names::RELAY_INGEST,
            telemetry::Kind::Consumer,
            telemetry::Parent::Of(parent),
            vec![
                telemetry::int(names::DEMAND_ID, demand.get()),
                telemetry::int(names::STREAM_ID, h.stream),
                telemetry::int(names::BATCH_FIRST_SEQ, h.first_seq),
                telemetry::int(names::BATCH_LINES, u64::from(h.count)),
                telemetry::int(names::BATCH_BYTES, len as u64),
            ],
        );
        let context = span.context().filter(|_| span.is_recording())?;
        Some(Self { span, context })
    }

    /// The ring push's span.
    fn ring_push(&self) -> logrelay_telemetry::Span {
        use logrelay_telemetry::{self as telemetry, names};
        telemetry::start(
            names::RELAY_RING_PUSH,
            telemetry::Kind::Internal,
            telemetry::Parent::Of(&self.context),
            vec![],
        )
    }
}

/// The span of one data stream (`relay.data_stream`, a child of its demand's span) while
/// tracing is on: the first batch is an event; batches and bytes are counted and set when the
/// stream ends (the span ends when this is dropped).
#[derive(Debug)]
struct DataTrace {
    span: logrelay_telemetry::Span,
    batches: u64,
    bytes: u64,
}

impl DataTrace {
    /// `None` when tracing is off or the demand's trace is not sampled.
    fn start(hub: &Hub, demand: DemandId) -> Option<Self> {
        use logrelay_telemetry::{self as telemetry, names};
        if !telemetry::enabled() {
            return None;
        }
        let parent = hub.demand_trace(demand);
        let span = telemetry::start(
            names::RELAY_DATA_STREAM,
            telemetry::Kind::Server,
            parent
                .as_ref()
                .map_or(telemetry::Parent::Root, telemetry::Parent::Of),
            vec![telemetry::int(names::DEMAND_ID, demand.get())],
        );
        span.is_recording().then_some(Self {
            span,
            batches: 0,
            bytes: 0,
        })
    }

    fn batch(&mut self, len: usize) {
        use logrelay_telemetry::{self as telemetry, names};
        if self.batches == 0 {
            self.span.event(
                names::EVENT_FIRST_BATCH,
                vec![telemetry::int(names::BATCH_BYTES, len as u64)],
            );
        }
        self.batches += 1;
        self.bytes += len as u64;
    }
}

impl Drop for DataTrace {
    fn drop(&mut self) {
        use logrelay_telemetry::{self as telemetry, names};
        let mut span = std::mem::take(&mut self.span);
        span.set(telemetry::int(names::BATCHES, self.batches));
        span.set(telemetry::int(names::BYTES, self.bytes));
        span.end("closed");
    }
}

/// Why a data stream was stopped, and the demand it served if it was the connection's own.
#[derive(Debug)]
enum DataError {
    /// Malformed: stopped with `PROTOCOL`.
    Protocol(Option<DemandId>, IngestError),
    /// Not the connection's own: stopped with `VIOLATION`, counted and audited.
    Violation(Option<DemandId>, AgentViolation),
}

/// Reads one data stream of connection `agent` into its sink. Returns the demand id it served.
async fn serve_data(
    recv: &mut quinn::RecvStream,
    hub: &Arc<Hub>,
    agent: AgentId,
    metrics: &RelayMetrics,
    config: DataConfig,
    publisher: Option<&Publisher>,
) -> Result<Option<DemandId>, DataError> {
    let mut preamble = [0u8; DataPreamble::LEN];
    if recv.read_exact(&mut preamble).await.is_err() {
        return Ok(None);
    }
    let demand = DataPreamble::decode(&preamble)
        .map_err(|e| DataError::Protocol(None, protocol(ErrorCode::BadRequest, e.to_string())))?
        .demand;
    let demand = DemandId::from(demand);
    let fail = |e: IngestError| DataError::Protocol(Some(demand), e);
    let (sink, cancelled) = match hub.resolve(agent, demand) {
        Ok(resolved) => resolved,
        Err(Unresolved::Gone) => {
            let _ = recv.stop(AppCode::UnknownDemand.code().into());
            return Ok(None);
        }
        // Not its own: nothing of the demand is touched.
        Err(Unresolved::Violation(v)) => return Err(DataError::Violation(None, v)),
    };
    let expected_stream = sink.stream().get();
    let mut trace = DataTrace::start(hub, demand);
    // A stream's live ring (not a filtered ring, not a backfill): every batch is handed to the
    // backplane, which numbers it and publishes it while another relay leases the stream.
    let publish = match (&sink, publisher) {
        (DemandSink::Live(live), Some(p)) => hub
            .agent_stream(agent, live.id())
            .and_then(|local| p.stream(local)),
        _ => None,
    };
    let mut decoder = FrameDecoder::new(config.ingest.max_frame_bytes);
    // The trace context of the next batch, from the trace frame before it.
    let mut sampled: Option<logrelay_telemetry::SpanContext> = None;
    loop {
        while let Some(batch) = decoder
            .next_frame()
            .map_err(|e| fail(protocol(ErrorCode::FrameTooLarge, e.to_string())))?
        {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = recv.stop(AppCode::Cancelled.code().into());
                return Ok(None);
            }
            if TraceFrame::is_trace(&batch) {
                if !config.trace_frames {
                    return Err(fail(protocol(
                        ErrorCode::BadRequest,
                        "a trace frame on a connection that did not negotiate batch_trace",
                    )));
                }
                let t = TraceFrame::parse(&batch).map_err(|e| {
                    fail(protocol(ErrorCode::BadRequest, format!("trace frame: {e}")))
                })?;
                sampled = logrelay_telemetry::context_of(t.trace_id, t.span_id, t.flags);
                continue;
            }
            let h = BatchHeader::parse(&batch)
                .map_err(|e| fail(protocol(ErrorCode::BadRequest, e.to_string())))?;
            let ingest = sampled
                .take()
                .and_then(|sc| IngestTrace::start(&sc, demand, &h, batch.len()));
            if h.stream != expected_stream {
                // Its own demand, someone else's stream: the batch goes nowhere.
                return Err(DataError::Violation(
                    Some(demand),
                    AgentViolation::WrongStream,
                ));
            }
            if h.kind == Kind::Log {
                metrics.lines_received.inc_by(u64::from(h.count));
            }
            metrics.bytes_received.inc_by(batch.len() as u64);
            if let Some(t) = &mut trace {
                t.batch(batch.len());
            }
            let end = SeqPos {
                epoch: h.epoch,
                seq: h.end_seq(),
            };
            match &sink {
                DemandSink::Live(live) => {
                    // A gap notice's count is of missing lines: it holds none.
                    let lines = if h.kind == Kind::Log { h.count } else { 0 };
                    if let Some((p, token)) = publisher.zip(publish) {
                        let first = SeqPos {
                            epoch: h.epoch,
                            seq: h.first_seq,
                        };
                        p.publish(token, first, end.seq, &batch);
                    }
                    let first = logrelay_wire::batch::first_line_ns(&batch);
                    match &ingest {
                        None => {
                            live.push(batch, lines, end);
                        }
                        Some(t) => {
                            let push = t.ring_push();
                            live.mark_traced(&batch, t.context.clone());
                            live.push(batch, lines, end);
                            push.end("complete");
                        }
                    }
                    if let Some(first) = first {
                        crate::metrics::LagMetrics::observe_at(
                            &metrics.lag.ingest,
                            live.lag_kind(),
                            first,
                            crate::metrics::wall_clock_ns(),
                        );
                    }
                }
                DemandSink::Backfill { tx, session, .. } => {
                    if tx.send(batch).await.is_err() {
                        return Ok(Some(demand));
                    }
                    if let Some(s) = session {
                        s.wake();
                    }
                }
            }
            if let Some(t) = ingest {
                t.span.end("complete");
            }
        }
        match recv.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => {
                decoder
                    .finish()
                    .map_err(|e| fail(protocol(ErrorCode::BadRequest, e.to_string())))?;
                return Ok(Some(demand));
            }
            Err(_) => return Ok(Some(demand)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_answers_the_features_it_reads_that_the_agent_named() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            welcome_features(&names(&["events", "teleport", "ack"]), false),
            names(&["ack", "events"])
        );
        // An agent that predates the word: not named back (it still may announce the kind).
        assert_eq!(welcome_features(&names(&["ack"]), true), names(&["ack"]));
        assert!(welcome_features(&[], true).is_empty());
        // Trace frames only while this relay traces.
        let asked = names(&["batch_trace", "ack"]);
        assert_eq!(welcome_features(&asked, false), names(&["ack"]));
        assert_eq!(
            welcome_features(&asked, true),
            names(&["ack", "batch_trace"])
        );
    }
}
