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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use logrelay_tls::AgentId;
use logrelay_wire::batch::{BatchHeader, Kind};
use logrelay_wire::control::{self, AgentMsg, ErrorCode, RelayMsg, SeqPos};
use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};
use tokio::sync::{mpsc, watch};

use crate::audit::{Actor, Auditor};
use crate::hub::{DemandSink, Hub};
use crate::metrics::RelayMetrics;

/// QUIC application error codes the relay closes connections and stops streams with.
pub mod codes {
    /// Normal close (shutdown).
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 1;
    /// The certificate names no org.
    pub const FORBIDDEN: u32 = 3;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// A data stream for a demand that no longer exists.
    pub const UNKNOWN_DEMAND: u32 = 5;
    /// The relay cancelled the demand this data stream serves.
    pub const CANCELLED: u32 = 6;
    /// The agent's control queue overflowed; reconnect and resynchronise.
    pub const OVERLOADED: u32 = 7;
}

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
}

/// Accepts agent connections until shutdown.
pub async fn run(
    endpoint: quinn::Endpoint,
    hub: Arc<Hub>,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
    config: IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = crate::stopped(&mut shutdown) => break,
        };
        let Some(incoming) = incoming else { break };
        let hub = hub.clone();
        let metrics = metrics.clone();
        let auditor = auditor.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = serve_agent(conn, hub, metrics, auditor, config, shutdown).await
                    {
                        tracing::info!(%remote, error = %e, "agent connection closed");
                    }
                }
                Err(e) => auditor.agent_handshake_refused(remote, &e),
            }
        });
    }
    endpoint.close(codes::SHUTDOWN.into(), b"relay shutting down");
}

async fn serve_agent(
    conn: quinn::Connection,
    hub: Arc<Hub>,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
    config: IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let id = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(AgentId::from_cert));
    let Some(id) = id else {
        auditor.deny(
            &Actor::agent(0, None),
            None,
            "agent_connect",
            None,
            Some(conn.remote_address()),
            "no_identity",
        );
        conn.close(codes::FORBIDDEN.into(), b"certificate names no org/cluster");
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
    let node = match hello {
        Ok(Ok(Some(AgentMsg::Hello {
            protocol: v, node, ..
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
            node
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
    write_msg(
        &mut send,
        &mut out,
        &RelayMsg::Welcome {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            org: id.org.clone(),
            cluster: id.cluster.clone(),
            max_frame_bytes: config.max_frame_bytes,
            heartbeat_secs: config.heartbeat_secs,
        },
    )
    .await?;

    let (tx, mut rx) = mpsc::channel::<RelayMsg>(4096);
    let reset = Arc::new(tokio::sync::Notify::new());
    let agent = hub.add_agent(&id.org, &id.cluster, tx, reset.clone());
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(u64::from(config.heartbeat_secs.max(1))));
    let actor = Actor::agent(agent, Some(&id.uri()));
    auditor.agent_connect(&actor, &id.org, &id.cluster, &node, conn.remote_address());
    tracing::info!(agent, org = %id.org, cluster = %id.cluster, %node, remote = %conn.remote_address(), "agent connected");

    let data = tokio::spawn(accept_data(
        conn.clone(),
        hub.clone(),
        metrics.clone(),
        config,
    ));
    let result = loop {
        tokio::select! {
            msg = next_msg(&mut recv, &mut decoder) => match msg {
                Ok(Some(AgentMsg::CatalogAdd { streams })) => {
                    tracing::debug!(agent, added = streams.len(), "catalog add");
                    hub.catalog_add(agent, streams)
                }
                Ok(Some(AgentMsg::CatalogRemove { streams })) => hub.catalog_remove(agent, streams),
                Ok(Some(AgentMsg::OpenFailed { demand, code, message })) => hub.open_failed(demand, code, &message),
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
            () = reset.notified() => {
                conn.close(codes::OVERLOADED.into(), b"control queue overflow; reconnect");
                break Ok(());
            }
            () = crate::stopped(&mut shutdown) => {
                conn.close(codes::SHUTDOWN.into(), b"relay shutting down");
                break Ok(());
            }
            e = conn.closed() => break Err(e.into()),
        }
    };
    hub.remove_agent(agent);
    data.abort();
    let reason = match &result {
        Ok(()) => "closed",
        Err(IngestError::Protocol { .. }) => "protocol_error",
        Err(IngestError::Handshake(quinn::ConnectionError::TimedOut)) => "timeout",
        Err(_) => "connection_lost",
    };
    auditor.agent_disconnect(&actor, &id.org, &id.cluster, reason);
    tracing::info!(agent, org = %id.org, cluster = %id.cluster, "agent disconnected");
    match result {
        Err(e @ IngestError::Protocol { .. }) => {
            Err(refuse(&conn, &mut send, &mut out, e, &metrics).await)
        }
        other => other,
    }
}

/// Sends an error on the control stream and closes the connection with its reason.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    err: IngestError,
    metrics: &RelayMetrics,
) -> IngestError {
    if let IngestError::Protocol { code, message } = &err {
        metrics.protocol_error("agent");
        let _ = write_msg(
            send,
            out,
            &RelayMsg::Error {
                code: *code,
                message: message.clone(),
            },
        )
        .await;
        let _ = send.finish();
        conn.close(codes::PROTOCOL.into(), message.as_bytes());
    }
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
    metrics: Arc<RelayMetrics>,
    config: IngestConfig,
) {
    while let Ok(recv) = conn.accept_uni().await {
        let hub = hub.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut recv = recv;
            let demand = match serve_data(&mut recv, &hub, &metrics, config).await {
                Ok(d) => d,
                Err((d, e)) => {
                    metrics.protocol_error("agent");
                    tracing::info!(demand = ?d, error = %e, "data stream stopped");
                    let _ = recv.stop(codes::PROTOCOL.into());
                    d
                }
            };
            if let Some(d) = demand {
                hub.demand_finished(d);
            }
        });
    }
}

/// Reads one data stream into its sink. Returns the demand id it served.
async fn serve_data(
    recv: &mut quinn::RecvStream,
    hub: &Arc<Hub>,
    metrics: &RelayMetrics,
    config: IngestConfig,
) -> Result<Option<u64>, (Option<u64>, IngestError)> {
    let mut preamble = [0u8; DataPreamble::LEN];
    if recv.read_exact(&mut preamble).await.is_err() {
        return Ok(None);
    }
    let demand = DataPreamble::decode(&preamble)
        .map_err(|e| (None, protocol(ErrorCode::BadRequest, e.to_string())))?
        .demand;
    let fail = |e: IngestError| (Some(demand), e);
    let Some((sink, cancelled)) = hub.resolve(demand) else {
        let _ = recv.stop(codes::UNKNOWN_DEMAND.into());
        return Ok(None);
    };
    let expected_stream = match &sink {
        DemandSink::Live(l) => l.id,
        DemandSink::Backfill { stream, .. } => *stream,
    };
    let mut decoder = FrameDecoder::new(config.max_frame_bytes);
    loop {
        while let Some(batch) = decoder
            .next_frame()
            .map_err(|e| fail(protocol(ErrorCode::FrameTooLarge, e.to_string())))?
        {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = recv.stop(codes::CANCELLED.into());
                return Ok(None);
            }
            let h = BatchHeader::parse(&batch)
                .map_err(|e| fail(protocol(ErrorCode::BadRequest, e.to_string())))?;
            if h.stream != expected_stream {
                return Err(fail(protocol(
                    ErrorCode::BadRequest,
                    format!(
                        "batch for stream {} on a data stream of stream {expected_stream}",
                        h.stream
                    ),
                )));
            }
            if h.kind == Kind::Log {
                metrics.lines_received.inc_by(u64::from(h.count));
            }
            metrics.bytes_received.inc_by(batch.len() as u64);
            let end = SeqPos {
                epoch: h.epoch,
                seq: h.end_seq(),
            };
            match &sink {
                DemandSink::Live(live) => {
                    // A gap notice's count is of missing lines: it holds none.
                    let lines = if h.kind == Kind::Log { h.count } else { 0 };
                    live.push(batch, lines, end);
                }
                DemandSink::Backfill { tx, session, .. } => {
                    if tx.send(batch).await.is_err() {
                        return Ok(Some(demand));
                    }
                    session.notify.notify_one();
                }
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
