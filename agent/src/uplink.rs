//! The uplink: the agent's only connection, dialled out to the relay over QUIC.
//!
//! Per connection: open the control stream, `hello` → `welcome`, announce the whole catalog,
//! then serve `open` (one task and one unidirectional data stream per demand) and `cancel`
//! (stop reading for it, and reset that stream), announce catalog changes and send heartbeats.
//! A `cancel`, or the relay stopping a data stream (STOP_SENDING), stops the log follower the
//! demand drained; a lost connection only detaches it, so it follows on into the budget. When
//! the connection ends every demand is dropped; the relay re-sends the demands it still has
//! after a reconnect. With a relay that acknowledges (`ack`, named in both `hello` and
//! `welcome`), a log demand's batches stay queued once sent until acknowledged, so a lost
//! connection costs no line: the resumed demand sends again what was in flight.
//! Reconnects back off exponentially with full jitter.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use logrelay_telemetry::{self as telemetry, names};
use logrelay_wire::control::{self, AgentMsg, ErrorCode, RelayMsg, SeqPos, features};
use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};
use logrelay_wire::labels::Labels;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::discover::catalog::{self, Catalog};
use crate::metrics::AgentMetrics;
use crate::sink::{BatchSink, BatchTimes, SinkClosed};
use crate::tail::{self, Ended, TailParams};

pub mod batch_trace;
pub mod relays;

/// Application error code used when the agent resets a data stream on `cancel`.
pub const CANCELLED: u32 = 1;

/// The relay's QUIC close code for "I am draining: reconnect to another relay".
pub const RELAY_MOVE: u32 = logrelay_wire::code::AppCode::Move.code();

/// Default of `--relay-addr`.
pub const DEFAULT_RELAY_ADDR: &str = "127.0.0.1:4433";
/// Default of `--relay-name`.
pub const DEFAULT_RELAY_NAME: &str = "localhost";
/// Default of `--reconnect-min-ms`.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 100;
/// Default of `--reconnect-max-ms`.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 10_000;

/// The uplink's configuration.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Relay QUIC addresses, `host:port` (each resolved at every connection attempt): the
    /// uplink dials one and moves to the next when it dies or drains.
    pub relay_addrs: Vec<String>,
    /// Name the relay's certificate must carry.
    pub relay_name: String,
    /// This node's name, told in `hello`.
    pub node: String,
    /// First reconnect delay (doubles up to `reconnect_max_ms`), milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
    /// QUIC keep-alive PINGs and idle timeout of the relay connection.
    pub timers: logrelay_tls::QuicTimers,
    /// Tuning of every demand served.
    pub params: TailParams,
    /// Batches a second offered to the trace sampler for a per-batch trace (0: none).
    pub trace_batches_per_sec: u32,
}

/// Batches a second offered to the trace sampler, by default.
pub const DEFAULT_TRACE_BATCHES_PER_SEC: u32 = 1;

/// Why a connection to the relay ended.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// Dialling failed (address, TLS handshake, ALPN, certificate).
    #[error("cannot connect to relay: {0}")]
    Connect(String),
    /// The connection was lost or closed by the relay.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The control stream failed.
    #[error("control stream: {0}")]
    Stream(String),
    /// The relay sent something this agent does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The relay reported an error and closed.
    #[error("relay error {code:?}: {message}")]
    Relay {
        /// Code.
        code: ErrorCode,
        /// Reason.
        message: String,
    },
}

/// The QUIC client configuration in force, swapped by certificate reload.
pub type SharedClientConfig = Arc<std::sync::RwLock<quinn::ClientConfig>>;

/// The uplink task's state.
#[derive(Debug)]
pub struct Uplink {
    client: SharedClientConfig,
    /// Keep-alive and idle timeout of the relay connection.
    transport: Arc<quinn::TransportConfig>,
    config: UplinkConfig,
    endpoint: quinn::Endpoint,
    catalog: Arc<Catalog>,
    metrics: Arc<AgentMetrics>,
    /// Offers batches to the trace sampler (`--trace-batches-per-sec`).
    batch_gate: Arc<batch_trace::Gate>,
    tailer: Arc<tail::Tailer>,
}

impl Uplink {
    /// Creates the client endpoint; log demands are served through `tailer` (shared with
    /// discovery and its watchdog).
    pub fn new(
        config: UplinkConfig,
        client: quinn::ClientConfig,
        catalog: Arc<Catalog>,
        tailer: Arc<tail::Tailer>,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<Self> {
        // Dual-stack where the host has IPv6, IPv4 only where it does not.
        let v6: SocketAddr = "[::]:0".parse().expect("literal");
        let v4: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let endpoint = quinn::Endpoint::client(v6).or_else(|_| quinn::Endpoint::client(v4))?;
        let transport = Arc::new(logrelay_tls::quic_client_transport_with(config.timers));
        Ok(Self {
            client: Arc::new(std::sync::RwLock::new(client)),
            transport,
            batch_gate: Arc::new(batch_trace::Gate::new(config.trace_batches_per_sec)),
            config,
            endpoint,
            catalog,
            metrics,
            tailer,
        })
    }

    /// The client configuration used for the next connection (certificate reload swaps it).
    pub fn client_config(&self) -> SharedClientConfig {
        self.client.clone()
    }

    /// Connects, serves, reconnects, until shutdown. With several relays, each new attempt
    /// goes to the next one after the relay it was on ([`relays::pick`]); a relay that drains
    /// (QUIC close code 10) is left at once, without backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut attempt = 0u32;
        let seed = fastrand::usize(..);
        let mut last: Option<SocketAddr> = None;
        loop {
            let started = tokio::time::Instant::now();
            let candidates = self.resolve().await;
            let addr = relays::pick(&candidates, last, seed);
            let result = match addr {
                Some(addr) => {
                    last = Some(addr);
                    tokio::select! {
                        r = self.connect_and_serve(addr) => r,
                        () = crate::shutdown::stopped(&mut shutdown) => break,
                    }
                }
                None => Err(UplinkError::Connect(format!(
                    "{} resolve to nothing",
                    self.config.relay_addrs.join(" ")
                ))),
            };
            self.metrics.relay_connected.set(0);
            self.tailer.set_connected(false);
            self.metrics.reconnects.inc();
            let ended = match &result {
                Err(UplinkError::Connection(quinn::ConnectionError::ApplicationClosed(c)))
                    if c.error_code == quinn::VarInt::from_u32(RELAY_MOVE) =>
                {
                    relays::Ended::Moved
                }
                _ => relays::Ended::Lost,
            };
            match &result {
                Err(e) if ended == relays::Ended::Moved => {
                    tracing::info!(error = %e, relay = ?addr, "relay drains: moving to another relay");
                }
                Err(e) => tracing::warn!(error = %e, relay = ?addr, "relay connection ended"),
                Ok(()) => {}
            }
            if started.elapsed() > Duration::from_secs(10) {
                attempt = 0;
            }
            let delay = if relays::backs_off(ended) {
                attempt = attempt.saturating_add(1);
                backoff(
                    attempt - 1,
                    self.config.reconnect_min_ms,
                    self.config.reconnect_max_ms,
                    fastrand::f64(),
                )
            } else {
                // A new local port: a UDP load balancer in front of the relays hashes the new
                // flow afresh instead of sending it to the draining relay. A little jitter
                // spreads the agents of a draining relay over time.
                self.rebind();
                Duration::from_millis(fastrand::u64(0..=self.config.reconnect_min_ms))
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                () = crate::shutdown::stopped(&mut shutdown) => break,
            }
        }
        self.endpoint.close(0u32.into(), b"agent shutting down");
    }

    /// Every address the `--relay-addr` values resolve to now ([`relays::candidates`]).
    async fn resolve(&self) -> Vec<SocketAddr> {
        let mut all = Vec::new();
        for name in &self.config.relay_addrs {
            match tokio::net::lookup_host(name).await {
                Ok(addrs) => all.extend(addrs),
                Err(e) => tracing::warn!(relay = %name, error = %e, "cannot resolve relay address"),
            }
        }
        relays::candidates(all)
    }

    /// Moves the endpoint to a new local UDP port (same address family).
    fn rebind(&self) {
        let Ok(local) = self.endpoint.local_addr() else {
            return;
        };
        let any = SocketAddr::new(
            if local.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            0,
        );
        match std::net::UdpSocket::bind(any).and_then(|s| self.endpoint.rebind(s)) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "cannot move to a new local port"),
        }
    }

    async fn connect_and_serve(&self, addr: SocketAddr) -> Result<(), UplinkError> {
        let addr = match (addr, self.endpoint.local_addr()) {
            (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            (a, _) => a,
        };
        let mut client = self.client.read().expect("client config lock").clone();
        client.transport_config(self.transport.clone());
        let conn = self
            .endpoint
            .connect_with(client, addr, &self.config.relay_name)
            .map_err(|e| UplinkError::Connect(e.to_string()))?
            .await
            .map_err(|e| UplinkError::Connect(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut control = Control {
            send: &mut send,
            out: BytesMut::new(),
        };
        control
            .send(&AgentMsg::Hello {
                protocol: logrelay_wire::PROTOCOL_VERSION,
                node: self.config.node.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                features: hello_features(self.config.trace_batches_per_sec),
            })
            .await?;
        let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
        let welcome =
            tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv, &mut decoder))
                .await
                .map_err(|_| UplinkError::Protocol("no welcome within 10 s".into()))??;
        let (heartbeat_secs, acks, events, batch_trace) = match welcome {
            Some(RelayMsg::Welcome {
                protocol,
                org,
                cluster,
                heartbeat_secs,
                features,
                ..
            }) => {
                if protocol != logrelay_wire::PROTOCOL_VERSION {
                    return Err(UplinkError::Protocol(format!(
                        "relay speaks protocol {protocol}"
                    )));
                }
                let acks = features.iter().any(|f| f == features::ACK);
                // A relay that does not name `events` cannot read such streams: they are not
                // announced to it (it would refuse the whole `catalog_add`).
                let events = features.iter().any(|f| f == features::EVENTS);
                // Trace frames only to a relay that reads them (it answers while it traces).
                let batch_trace = features.iter().any(|f| f == features::BATCH_TRACE);
                tracing::info!(relay = %addr, %org, %cluster, acks, events, batch_trace, "connected to relay");
                (heartbeat_secs.max(1), acks, events, batch_trace)
            }
            Some(RelayMsg::Error { code, message }) => {
                return Err(UplinkError::Relay { code, message });
            }
            other => {
                return Err(UplinkError::Protocol(format!(
                    "expected welcome, got {other:?}"
                )));
            }
        };
        self.metrics.relay_connected.set(1);
        self.tailer.set_connected(true);

        let mut sent: BTreeMap<u64, Labels> = BTreeMap::new();
        let mut catalog_rx = self.catalog.watch();
        catalog_rx.mark_changed();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(heartbeat_secs)));
        // Per demand: its task, the switch that makes it reset its stream on `cancel`, and where
        // the relay's acknowledgements for it go.
        let mut demands: HashMap<u64, DemandHandle> = HashMap::new();
        let result = loop {
            tokio::select! {
                msg = next_msg(&mut recv, &mut decoder) => {
                    match msg {
                        Ok(Some(RelayMsg::Open { demand, stream, stream_ref, demand_spec, traceparent })) => {
                            demands.retain(|_, d| !d.task.is_finished());
                            let Some(entry) = self.catalog.get(stream) else {
                                control.send(&AgentMsg::OpenFailed {
                                    demand,
                                    code: ErrorCode::UnknownStream,
                                    message: format!("no stream {stream} on this agent"),
                                }).await?;
                                continue;
                            };
                            if let Some(message) = refusal(&entry.source, &demand_spec) {
                                control.send(&AgentMsg::OpenFailed {
                                    demand,
                                    code: ErrorCode::BadRequest,
                                    message,
                                }).await?;
                                continue;
                            }
                            let span = demand_span(demand, stream, &demand_spec, traceparent.as_deref());
                            let (cancel_tx, cancel) = oneshot::channel();
                            let (acks_tx, acks_rx) = watch::channel(None);
                            let task = DemandTask {
                                cancel,
                                acks: acks.then_some(acks_rx),
                                conn: conn.clone(),
                                demand,
                                stream_ref,
                                spec: demand_spec,
                                source: entry.source,
                                params: self.config.params,
                                metrics: self.metrics.clone(),
                                tailer: self.tailer.clone(),
                                span,
                                stream,
                                batch_trace: batch_trace.then(|| self.batch_gate.clone()),
                            };
                            let handle = DemandHandle {
                                task: tokio::spawn(task.run()).abort_handle(),
                                cancel: cancel_tx,
                                acks: acks_tx,
                            };
                            if let Some(old) = demands.insert(demand, handle) {
                                old.task.abort();
                            }
                        }
                        Ok(Some(RelayMsg::Cancel { demand })) => {
                            if let Some(d) = demands.remove(&demand) {
                                let _ = d.cancel.send(());
                            }
                        }
                        Ok(Some(RelayMsg::Ack { demand, through })) => {
                            if let Some(d) = demands.get(&demand) {
                                d.acks.send_replace(Some(through));
                            }
                        }
                        Ok(Some(RelayMsg::CatalogRefused { streams, limit, message, .. })) => {
                            // Not announced: offered again with the next change of the catalog
                            // (by then other streams may have gone).
                            self.metrics.catalog_refused.inc_by(streams.len() as u64);
                            tracing::warn!(refused = streams.len(), %limit, %message, "relay refused streams");
                            for id in streams {
                                sent.remove(&id);
                            }
                        }
                        Ok(Some(RelayMsg::Heartbeat | RelayMsg::Welcome { .. })) => {}
                        Ok(Some(RelayMsg::Error { code, message })) => break Err(UplinkError::Relay { code, message }),
                        Ok(None) => break Err(UplinkError::Stream("relay closed the control stream".into())),
                        Err(e) => break Err(e),
                    }
                }
                changed = catalog_rx.changed() => {
                    if changed.is_err() { break Ok(()); }
                    let now = catalog::readable(self.catalog.snapshot(), events);
                    let diff = catalog::reconcile(&sent, &now);
                    for s in &diff.removed { sent.remove(&s.id); }
                    for s in &diff.added { sent.insert(s.id, s.labels.clone()); }
                    if !diff.added.is_empty() {
                        control.send(&AgentMsg::CatalogAdd { streams: diff.added }).await?;
                    }
                    if !diff.removed.is_empty() {
                        control.send(&AgentMsg::CatalogRemove { streams: diff.removed }).await?;
                    }
                }
                _ = heartbeat.tick() => control.send(&AgentMsg::Heartbeat).await?,
                e = conn.closed() => break Err(e.into()),
            }
        };
        for (_, d) in demands {
            d.task.abort();
        }
        // A relay that drains closes the connection with code 10; the control stream may be the
        // first to notice (as "connection lost"): the connection's own reason decides.
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if result.is_err() && c.error_code == quinn::VarInt::from_u32(RELAY_MOVE) =>
            {
                Err(UplinkError::Connection(
                    quinn::ConnectionError::ApplicationClosed(c),
                ))
            }
            _ => result,
        }
    }
}

/// `min · 2^attempt`, capped at `max`, scaled by `jitter ∈ [0, 1)` ("full jitter"), never 0.
pub fn backoff(attempt: u32, min_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let cap = min_ms
        .saturating_mul(1u64 << attempt.min(32))
        .min(max_ms)
        .max(1);
    Duration::from_millis(((cap as f64 * jitter) as u64).clamp(min_ms.min(cap), cap))
}

struct Control<'a> {
    send: &'a mut quinn::SendStream,
    out: BytesMut,
}

impl Control<'_> {
    async fn send(&mut self, msg: &AgentMsg) -> Result<(), UplinkError> {
        self.out.clear();
        frame::encode(&control::encode(msg), &mut self.out);
        self.send
            .write_all(&self.out)
            .await
            .map_err(|e| UplinkError::Stream(e.to_string()))
    }
}

async fn next_msg(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<RelayMsg>, UplinkError> {
    loop {
        if let Some(body) = decoder
            .next_frame()
            .map_err(|e| UplinkError::Protocol(e.to_string()))?
        {
            return control::decode(&body)
                .map(Some)
                .map_err(|e| UplinkError::Protocol(e.to_string()));
        }
        match recv
            .read_chunk(64 * 1024, true)
            .await
            .map_err(|e| UplinkError::Stream(e.to_string()))?
        {
            Some(chunk) => decoder.extend(&chunk.bytes),
            None => return Ok(None),
        }
    }
}

/// Why an `open` cannot be served as asked, answered with `open_failed` `bad_request` for that
/// demand alone: a line filter (`matches`) that does not compile, or one on a metrics stream,
/// whose `contains` lists metric names instead.
fn refusal(source: &catalog::Source, spec: &control::Demand) -> Option<String> {
    match source {
        catalog::Source::Log { .. } | catalog::Source::Events { .. } => tail::check_filter(spec)
            .err()
            .map(|e| format!("line filter `matches`: {e}")),
        catalog::Source::Scrape { .. } | catalog::Source::Resources { .. } => spec
            .matches
            .as_deref()
            .is_some_and(|m| !m.is_empty())
            .then(|| {
                "`matches` filters log lines; metrics streams take metric names in `contains`"
                    .to_owned()
            }),
    }
}

/// A demand being served, as the control loop holds it.
struct DemandHandle {
    task: AbortHandle,
    /// Makes the demand reset its stream (`cancel`).
    cancel: oneshot::Sender<()>,
    /// The relay's latest acknowledgement of the demand (`ack`).
    acks: watch::Sender<Option<SeqPos>>,
}

struct DemandTask {
    cancel: oneshot::Receiver<()>,
    /// Acknowledgements, when the relay sends them: sent batches are kept until covered.
    acks: Option<watch::Receiver<Option<SeqPos>>>,
    conn: quinn::Connection,
    demand: u64,
    stream_ref: u64,
    spec: control::Demand,
    source: catalog::Source,
    params: TailParams,
    metrics: Arc<AgentMetrics>,
    tailer: Arc<tail::Tailer>,
    /// The demand's span (`agent.demand`); records nothing when tracing is off.
    span: telemetry::Span,
    /// The agent-local stream id.
    stream: u64,
    /// Offers batches to the sampler, when the relay reads trace frames (`batch_trace`).
    batch_trace: Option<Arc<batch_trace::Gate>>,
}

/// The features named in `hello`: acknowledgements and `events` streams always; trace frames
/// while this agent traces and samples batches.
fn hello_features(trace_batches_per_sec: u32) -> Vec<String> {
    let mut f = vec![features::ACK.into(), features::EVENTS.into()];
    if telemetry::enabled() && trace_batches_per_sec > 0 {
        f.push(features::BATCH_TRACE.into());
    }
    f
}

/// The span of demand `demand` of the agent's stream `stream`: a child of the relay's span
/// when the `open` carried a valid `traceparent`, else a new trace. Records nothing when
/// tracing is off.
fn demand_span(
    demand: u64,
    stream: u64,
    spec: &control::Demand,
    traceparent: Option<&str>,
) -> telemetry::Span {
    if !telemetry::enabled() {
        return telemetry::Span::none();
    }
    let parent = traceparent.and_then(telemetry::parse_traceparent);
    let mut attributes = vec![
        telemetry::int(names::DEMAND_ID, demand),
        telemetry::int(names::STREAM_ID, stream),
        telemetry::flag(names::DEMAND_FOLLOW, spec.follow),
    ];
    if let Some(tail) = spec.tail {
        attributes.push(telemetry::int(names::DEMAND_TAIL, u64::from(tail)));
    }
    telemetry::start(
        names::AGENT_DEMAND,
        telemetry::Kind::Server,
        parent
            .as_ref()
            .map_or(telemetry::Parent::Root, telemetry::Parent::Of),
        attributes,
    )
}

impl DemandTask {
    async fn run(mut self) {
        self.metrics.demands_active.inc();
        let _active = ActiveGuard(self.metrics.clone());
        // Cancelled before it started (a watcher that came and went at once), or its
        // connection is gone: no data stream at all.
        if !matches!(
            self.cancel.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ) {
            return;
        }
        let mut span = std::mem::take(&mut self.span);
        let opening = match span.context() {
            Some(sc) => telemetry::start(
                names::AGENT_OPEN,
                telemetry::Kind::Internal,
                telemetry::Parent::Of(&sc),
                vec![telemetry::int(names::DEMAND_ID, self.demand)],
            ),
            None => telemetry::Span::none(),
        };
        let mut send = match self.conn.open_uni().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(demand = self.demand, error = %e, "cannot open data stream");
                opening.end("error");
                span.end("connection_lost");
                return;
            }
        };
        if send
            .write_all(
                &DataPreamble {
                    demand: self.demand,
                }
                .encode(),
            )
            .await
            .is_err()
        {
            opening.end("error");
            span.end("connection_lost");
            return;
        }
        opening.end("complete");
        // The relay is done with this demand when it says `cancel`, or stops the data stream
        // while the connection lives. A dropped switch (the connection ended) or a lost
        // connection is no cancel: a log follower then keeps reading for the resume.
        let stopped = send.stopped();
        let demand = self.demand;
        let cancelled = async move {
            tokio::select! {
                Ok(()) = self.cancel => {}
                Ok(Some(code)) = stopped => {
                    tracing::debug!(demand, %code, "relay stopped the data stream");
                }
                else => std::future::pending().await,
            }
        };
        let tracing_on = span.is_recording();
        let link = span.context();
        let mut sink = QuicSink {
            send: &mut send,
            span: &mut span,
            tracing: tracing_on,
            batches: 0,
            bytes: 0,
            batch_trace: self.batch_trace.take().map(|gate| BatchTrace {
                gate,
                demand: self.demand,
                stream: self.stream,
                link,
            }),
            times: BatchTimes::default(),
        };
        let served = serve_source(
            &self.tailer,
            &self.source,
            &self.spec,
            self.stream_ref,
            self.params,
            &mut sink,
            &self.metrics,
            cancelled,
            self.acks,
        )
        .await;
        let (batches, bytes) = (sink.batches, sink.bytes);
        span.set(telemetry::int(names::BATCHES, batches));
        span.set(telemetry::int(names::BYTES, bytes));
        match served {
            Ok(Ended::Complete) => {
                let _ = send.finish();
                span.end("complete");
            }
            Ok(Ended::Cancelled) => {
                let _ = send.reset(CANCELLED.into());
                span.event(names::EVENT_CANCEL, vec![]);
                span.end("cancelled");
            }
            Err(e) => {
                tracing::debug!(demand = self.demand, error = %e, "demand ended");
                let _ = send.reset(CANCELLED.into());
                span.end("error");
            }
        }
    }
}

/// Serves one demand from its source until `cancelled`.
#[allow(clippy::too_many_arguments, reason = "one demand's whole context")]
async fn serve_source<S: BatchSink>(
    tailer: &Arc<tail::Tailer>,
    source: &catalog::Source,
    spec: &control::Demand,
    stream_ref: u64,
    params: TailParams,
    sink: &mut S,
    metrics: &AgentMetrics,
    cancelled: impl Future<Output = ()>,
    acks: Option<watch::Receiver<Option<SeqPos>>>,
) -> Result<Ended, tail::TailError> {
    match source {
        catalog::Source::Log { path } => {
            tailer
                .serve_acked(
                    tail::Job {
                        path,
                        spec,
                        stream_ref,
                        params,
                    },
                    sink,
                    cancelled,
                    acks,
                )
                .await
        }
        catalog::Source::Scrape { target } => {
            let serve = crate::scrape::serve(
                target,
                spec,
                stream_ref,
                params.max_batch_bytes,
                sink,
                metrics,
            );
            until_cancelled(serve, cancelled).await
        }
        catalog::Source::Resources { pod } => {
            let serve =
                crate::cgroup::serve(pod, spec, stream_ref, params.max_batch_bytes, sink, metrics);
            until_cancelled(serve, cancelled).await
        }
        #[cfg(feature = "k8s")]
        catalog::Source::Events { pod } => {
            let serve = crate::kube::events::client::serve(
                pod,
                spec,
                stream_ref,
                params.max_batch_bytes,
                sink,
                metrics,
            );
            tokio::select! {
                r = serve => match r {
                    Ok(()) => Ok(Ended::Complete),
                    Err(e) => {
                        tracing::debug!(error = %e, "events demand ended");
                        Ok(Ended::Cancelled)
                    }
                },
                () = cancelled => Ok(Ended::Cancelled),
            }
        }
        #[cfg(not(feature = "k8s"))]
        catalog::Source::Events { .. } => Ok(Ended::Cancelled),
    }
}

/// Serves a metrics demand, which reads nothing once its future is dropped, until `cancelled`.
async fn until_cancelled<E>(
    serve: impl Future<Output = Result<(), E>>,
    cancelled: impl Future<Output = ()>,
) -> Result<Ended, tail::TailError>
where
    tail::TailError: From<E>,
{
    tokio::select! {
        r = serve => r.map(|()| Ended::Complete).map_err(Into::into),
        () = cancelled => Ok(Ended::Cancelled),
    }
}

struct ActiveGuard(Arc<AgentMetrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.demands_active.dec();
    }
}

struct QuicSink<'a> {
    send: &'a mut quinn::SendStream,
    /// The demand's span: the first batch sent is an event on it.
    span: &'a mut telemetry::Span,
    /// Whether the span records (else nothing is counted).
    tracing: bool,
    /// Batches sent, while tracing.
    batches: u64,
    /// Framed bytes sent, while tracing.
    bytes: u64,
    /// Per-batch traces, when the relay reads trace frames.
    batch_trace: Option<BatchTrace>,
    /// When the next batch was read and queued.
    times: BatchTimes,
}

/// What a data stream needs to trace a sampled batch.
struct BatchTrace {
    gate: Arc<batch_trace::Gate>,
    demand: u64,
    stream: u64,
    /// The demand's span, which a batch's trace links to.
    link: Option<telemetry::SpanContext>,
}

impl BatchSink for QuicSink<'_> {
    fn times(&mut self, times: BatchTimes) {
        self.times = times;
    }

    async fn send(&mut self, batch: Bytes) -> Result<(), SinkClosed> {
        let times = std::mem::take(&mut self.times);
        let traced = self.batch_trace.as_ref().and_then(|t| {
            t.gate.admit().then(|| {
                batch_trace::Traced::start(&batch, t.demand, t.stream, t.link.as_ref(), times)
            })?
        });
        let prefix = Bytes::copy_from_slice(&frame::prefix(batch.len()));
        let len = (prefix.len() + batch.len()) as u64;
        let written = match &traced {
            None => self.send.write_all_chunks(&mut [prefix, batch]).await,
            Some(t) => {
                let mut head = bytes::BytesMut::new();
                frame::encode(&t.frame().encode(), &mut head);
                self.send
                    .write_all_chunks(&mut [head.freeze(), prefix, batch])
                    .await
            }
        };
        if let Some(t) = traced {
            t.finish(written.is_ok());
        }
        written.map_err(|_| SinkClosed)?;
        if self.tracing {
            if self.batches == 0 {
                self.span.event(
                    names::EVENT_FIRST_BATCH,
                    vec![telemetry::int(names::BATCH_BYTES, len)],
                );
            }
            self.batches += 1;
            self.bytes += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(0, 100, 10_000, 0.999), Duration::from_millis(100));
        assert_eq!(backoff(3, 100, 10_000, 0.999), Duration::from_millis(799));
        assert_eq!(backoff(30, 100, 10_000, 0.999), Duration::from_millis(9990));
        assert_eq!(backoff(30, 100, 10_000, 0.0), Duration::from_millis(100));
        assert!(backoff(5, 100, 10_000, 0.5) <= Duration::from_millis(3200));
    }

    #[test]
    fn a_line_regex_that_does_not_compile_or_targets_metrics_is_refused_for_its_demand() {
        let log = catalog::Source::Log {
            path: "/var/log/pods/a/c/0.log".into(),
        };
        let resources = catalog::Source::Resources {
            pod: Arc::new(crate::cgroup::PodResources::new(
                "uid".into(),
                "/sys/fs/cgroup/x".into(),
                "/var/log/containers".into(),
                Duration::from_secs(1),
            )),
        };
        let spec = |contains: Option<&str>, matches: Option<&str>| control::Demand {
            follow: true,
            contains: contains.map(Into::into),
            matches: matches.map(Into::into),
            ..control::Demand::default()
        };
        assert_eq!(refusal(&log, &spec(Some("x"), Some("ERR(OR)?"))), None);
        assert_eq!(
            refusal(&log, &spec(None, Some(""))),
            None,
            "empty is no filter"
        );
        let why = refusal(&log, &spec(None, Some("(a+"))).unwrap();
        assert!(
            why.starts_with("line filter `matches`: invalid regular expression `(a+`"),
            "{why}"
        );
        assert_eq!(refusal(&resources, &spec(Some("pod_cpu_*"), None)), None);
        let why = refusal(&resources, &spec(None, Some("cpu"))).unwrap();
        assert!(why.contains("metrics streams take metric names"), "{why}");
    }
}
