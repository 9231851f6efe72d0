//! Every metric the relay exports. Names are a contract (see `docs/operations.md`). No label
//! carries stream content, and none is high-cardinality.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::audit::Auditor;

/// Label of `dropped_lines_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropReason {
    /// `slow_consumer` (a session fell behind the ring), `backfill_lost` (lines between a
    /// resume's `since_seq` and the first line served that never reached the relay).
    pub reason: &'static str,
}

/// The relay's metrics and their registry.
#[derive(Debug)]
pub struct RelayMetrics {
    /// Registry rendered at `/metrics`.
    pub registry: Registry,
    /// Agents connected.
    pub agents_connected: Gauge,
    /// Sessions connected.
    pub sessions_connected: Gauge,
    /// Session connections in their handshake (first bytes, TLS, request head).
    pub pending_handshakes: Gauge,
    /// Streams known (announced by connected agents, or orphaned but watched).
    pub streams: Gauge,
    /// Filtered rings: one per (stream, line filter) that live subscriptions watch.
    pub filtered_rings: Gauge,
    /// Lines received from agents.
    pub lines_received: Counter,
    /// Batch bytes received from agents.
    pub bytes_received: Counter,
    /// Lines written to sessions (one per line per session).
    pub lines_delivered: Counter,
    /// Bytes written to sessions as data messages.
    pub bytes_delivered: Counter,
    /// Bytes held in stream rings.
    pub buffered_bytes: Gauge,
    /// Lines evicted from rings to make room (some watcher may have missed them).
    pub ring_evicted_lines: Counter,
    /// Lines a session missed, by reason.
    pub dropped_lines: Family<DropReason, Counter>,
    /// Gap events telling a session that the rest of an epoch is lost (`epoch_lost`).
    pub epochs_lost: Counter,
    /// `renumbered` events: a stream went on in a new epoch with nothing lost.
    pub epochs_renumbered: Counter,
    /// Agent connections closed because a newer one of the same agent (org, cluster, node)
    /// arrived.
    pub agents_superseded: Counter,
    /// `ack` messages sent to agents (what every watcher of a live demand was handed).
    pub acks_sent: Counter,
    /// Demands sent to agents.
    pub demands_opened: Counter,
    /// Demands open at agents now (live, backfill, one-off).
    pub demands_open: Gauge,
    /// Bytes the streams announced by connected agents hold, estimated (labels and entries).
    pub catalog_bytes: Gauge,
    /// Ids or streams an agent connection presented that were not its own, by kind.
    pub agent_violations: Family<ViolationKind, Counter>,
    /// Control messages to agents lost because the agent's queue was full.
    pub agent_messages_dropped: Counter,
    /// Requests refused because a limit was hit, by limit.
    pub limit_hits: Family<Limit, Counter>,
    /// Configured limits, by name (so dashboards can show headroom).
    pub limits: Family<Limit, Gauge>,
    /// TLS file reloads, by result (`ok`, `error`).
    pub tls_reloads: Family<ReloadResult, Counter>,
    /// Sessions refused at connect, by reason.
    pub sessions_refused: Family<RefusalReason, Counter>,
    /// Malformed input (frames, batches, session messages), by offender.
    pub protocol_errors: Family<Offender, Counter>,
    /// The NATS backplane's metrics (`logrelay_relay_backplane_*`).
    pub backplane: BackplaneMetrics,
    /// Lag histograms (`logrelay_relay_ingest_lag_seconds`, `…_delivery_lag_seconds`).
    pub lag: LagMetrics,
    /// The audit trail whose losses `audit_failed_total` reports (set once at start-up).
    audit: Arc<OnceLock<Arc<Auditor>>>,
}

/// `audit_failed_total`: read from the [`Auditor`] at each scrape, since some of its losses
/// happen on sink threads (a failed stdout write, an OTLP export that failed).
#[derive(Debug)]
struct AuditFailed(Arc<OnceLock<Arc<Auditor>>>);

impl Collector for AuditFailed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let failed = self.0.get().map_or(0, |a| a.failed());
        let counter = ConstCounter::new(failed);
        let metric = encoder.encode_descriptor(
            "audit_failed",
            "Audit events that could not be written or exported",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// `audit_suppressed_total`, `audit_overflowed_total` and `audit_offenders`: the audit
/// aggregation's counts, read from the [`Auditor`] at each scrape.
#[derive(Debug)]
struct AuditAggregation(Arc<OnceLock<Arc<Auditor>>>);

impl Collector for AuditAggregation {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let auditor = self.0.get();
        for (name, help, value) in [
            (
                "audit_suppressed",
                "Refusals and limit hits counted into a later audit line instead of one of their own",
                auditor.map_or(0, |a| a.suppressed()),
            ),
            (
                "audit_overflowed",
                "Refusals and limit hits folded into the audit's others bucket (offender table full)",
                auditor.map_or(0, |a| a.overflowed()),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let offenders = prometheus_client::metrics::gauge::ConstGauge::new(
            auditor.map_or(0, |a| i64::try_from(a.offenders()).unwrap_or(i64::MAX)),
        );
        let metric = encoder.encode_descriptor(
            "audit_offenders",
            "Offenders (by reason) the audit aggregation tracks now",
            None,
            offenders.metric_type(),
        )?;
        offenders.encode(metric)
    }
}

/// Label naming a limit.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limit {
    /// `subscriptions_per_session`, `sessions_per_org`, `frame_bytes`, `session_message_bytes`,
    /// `session_requests_per_sec`, `memory_budget_bytes`, `ring_bytes`.
    pub limit: &'static str,
}

/// Label of `agent_violations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationKind {
    /// `foreign_demand`, `unknown_demand`, `duplicate_data_stream`, `wrong_stream`.
    pub kind: &'static str,
}

/// Outcome of a TLS reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadResult {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Why a session was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalReason {
    /// `token_missing`, `malformed`, `expired`, `bad_signature`, … (a fixed set).
    pub reason: &'static str,
}

/// Who sent malformed input.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Offender {
    /// `agent` or `session`.
    pub peer: &'static str,
}

impl RelayMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("logrelay_relay");
        let m = Self {
            registry: Registry::default(),
            agents_connected: Gauge::default(),
            sessions_connected: Gauge::default(),
            pending_handshakes: Gauge::default(),
            streams: Gauge::default(),
            filtered_rings: Gauge::default(),
            lines_received: Counter::default(),
            bytes_received: Counter::default(),
            lines_delivered: Counter::default(),
            bytes_delivered: Counter::default(),
            buffered_bytes: Gauge::default(),
            ring_evicted_lines: Counter::default(),
            dropped_lines: Family::default(),
            epochs_lost: Counter::default(),
            epochs_renumbered: Counter::default(),
            agents_superseded: Counter::default(),
            acks_sent: Counter::default(),
            demands_opened: Counter::default(),
            demands_open: Gauge::default(),
            catalog_bytes: Gauge::default(),
            agent_violations: Family::default(),
            agent_messages_dropped: Counter::default(),
            limit_hits: Family::default(),
            limits: Family::default(),
            protocol_errors: Family::default(),
            sessions_refused: Family::default(),
            tls_reloads: Family::default(),
            backplane: BackplaneMetrics::default(),
            lag: LagMetrics::default(),
            audit: Arc::new(OnceLock::new()),
        };
        m.lag.register(&mut r);
        m.backplane
            .register(r.sub_registry_with_prefix("backplane"));
        r.register(
            "agents_connected",
            "Agents connected",
            m.agents_connected.clone(),
        );
        r.register(
            "sessions_connected",
            "Sessions connected",
            m.sessions_connected.clone(),
        );
        r.register(
            "pending_handshakes",
            "Session connections in their handshake",
            m.pending_handshakes.clone(),
        );
        r.register("streams", "Streams known to the relay", m.streams.clone());
        r.register(
            "filtered_rings",
            "Rings of one stream and line filter, shared by the live subscriptions asking for it",
            m.filtered_rings.clone(),
        );
        r.register(
            "lines_received",
            "Lines received from agents",
            m.lines_received.clone(),
        );
        r.register(
            "bytes_received",
            "Batch bytes received from agents",
            m.bytes_received.clone(),
        );
        r.register(
            "lines_delivered",
            "Lines written to sessions",
            m.lines_delivered.clone(),
        );
        r.register(
            "bytes_delivered",
            "Data bytes written to sessions",
            m.bytes_delivered.clone(),
        );
        r.register(
            "buffered_bytes",
            "Bytes held in stream rings",
            m.buffered_bytes.clone(),
        );
        r.register(
            "ring_evicted_lines",
            "Lines evicted from full rings",
            m.ring_evicted_lines.clone(),
        );
        r.register(
            "dropped_lines",
            "Lines a session missed",
            m.dropped_lines.clone(),
        );
        r.register(
            "epochs_lost",
            "Sessions told that the rest of an epoch is lost",
            m.epochs_lost.clone(),
        );
        r.register(
            "epochs_renumbered",
            "Sessions told that a stream went on in a new epoch with nothing lost",
            m.epochs_renumbered.clone(),
        );
        r.register(
            "agents_superseded",
            "Agent connections replaced by a newer connection of the same agent",
            m.agents_superseded.clone(),
        );
        r.register(
            "acks_sent",
            "Acknowledgements of delivered lines sent to agents",
            m.acks_sent.clone(),
        );
        r.register(
            "demands_opened",
            "Demands sent to agents",
            m.demands_opened.clone(),
        );
        r.register(
            "demands_open",
            "Demands open at agents (live, backfill, one-off)",
            m.demands_open.clone(),
        );
        r.register(
            "catalog_bytes",
            "Bytes the streams announced by connected agents hold, estimated",
            m.catalog_bytes.clone(),
        );
        r.register(
            "agent_violations",
            "Ids or streams an agent connection presented that were not its own, by kind",
            m.agent_violations.clone(),
        );
        r.register(
            "agent_messages_dropped",
            "Control messages lost to a full agent queue",
            m.agent_messages_dropped.clone(),
        );
        r.register(
            "limit_hits",
            "Requests refused by a limit",
            m.limit_hits.clone(),
        );
        r.register(
            "protocol_errors",
            "Malformed input by peer kind",
            m.protocol_errors.clone(),
        );
        r.register("limit", "Configured limits", m.limits.clone());
        r.register(
            "tls_reloads",
            "TLS file reloads by result",
            m.tls_reloads.clone(),
        );
        r.register(
            "sessions_refused",
            "Sessions refused at connect, by reason",
            m.sessions_refused.clone(),
        );
        r.register_collector(Box::new(AuditFailed(m.audit.clone())));
        r.register_collector(Box::new(AuditAggregation(m.audit.clone())));
        r.register_collector(Box::new(logrelay_telemetry::SpanLossCollector));
        // Label values known up front are exported at 0 from the start: a series that first
        // appears at 1 shows no `increase()`, so an alert on its first event would never fire.
        for reason in ["slow_consumer", "backfill_lost"] {
            let _ = m.dropped_lines.get_or_create(&DropReason { reason });
        }
        for result in ["ok", "error"] {
            let _ = m.tls_reloads.get_or_create(&ReloadResult { result });
        }
        for peer in ["agent", "session"] {
            let _ = m.protocol_errors.get_or_create(&Offender { peer });
        }
        Self { registry: r, ..m }
    }

    /// Reports `auditor`'s losses as `audit_failed_total` (the first auditor given wins).
    pub fn report_audit(&self, auditor: Arc<Auditor>) {
        let _ = self.audit.set(auditor);
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one TLS reload.
    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ReloadResult { result })
            .inc();
    }

    /// Counts one refused session.
    pub fn session_refused(&self, reason: &'static str) {
        self.sessions_refused
            .get_or_create(&RefusalReason { reason })
            .inc();
    }

    /// Counts one refusal by `limit`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&Limit { limit }).inc();
    }

    /// Publishes the configured value of `limit`.
    pub fn set_limit(&self, limit: &'static str, value: usize) {
        self.limits
            .get_or_create(&Limit { limit })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// Counts one agent violation of `kind`.
    pub fn agent_violation(&self, kind: &'static str) {
        self.agent_violations
            .get_or_create(&ViolationKind { kind })
            .inc();
    }

    /// Counts one malformed input.
    pub fn protocol_error(&self, peer: &'static str) {
        self.protocol_errors.get_or_create(&Offender { peer }).inc();
    }
}

/// Label of the backplane's message and byte counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageKind {
    /// `data` (batches) or `control` (leases, replies, catalog, heartbeats).
    pub kind: &'static str,
}

/// Label of `backplane_gaps_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GapReason {
    /// `backplane_lost` (a hole in what NATS delivered), `backplane_slow_consumer` (the NATS
    /// client dropped messages of a subscription that fell behind).
    pub reason: &'static str,
}

/// The NATS backplane's metrics, `logrelay_relay_backplane_*` (docs/operations.md). Exported
/// by every relay; all stay 0 without `--nats-url`.
#[derive(Debug, Clone)]
pub struct BackplaneMetrics {
    /// 1 when the relay is configured with a backplane (`--nats-url`).
    pub enabled: Gauge,
    /// 1 while connected to a NATS server.
    pub connected: Gauge,
    /// Connections (re)established after a loss.
    pub reconnects: Counter,
    /// Messages received, by kind.
    pub messages_in: Family<MessageKind, Counter>,
    /// Payload bytes received, by kind.
    pub bytes_in: Family<MessageKind, Counter>,
    /// Messages handed to NATS, by kind.
    pub messages_out: Family<MessageKind, Counter>,
    /// Payload bytes handed to NATS, by kind.
    pub bytes_out: Family<MessageKind, Counter>,
    /// Messages dropped from the queue toward NATS (full), and their bytes.
    pub dropped_messages: Counter,
    /// Bytes of those messages.
    pub dropped_bytes: Counter,
    /// Bytes waiting in the queue toward NATS.
    pub queue_bytes: Gauge,
    /// Stream subscriptions held (one per remote stream a local session watches).
    pub subscriptions: Gauge,
    /// Leases other relays hold on streams of this relay's agents.
    pub remote_wants: Gauge,
    /// Holes found in what NATS delivered, by reason.
    pub gaps: Family<GapReason, Counter>,
    /// Lines inside those holes (a lower bound where a hole is not exact).
    pub gap_lines: Counter,
    /// Slow-consumer events of the NATS client (a subscription's buffer was full).
    pub slow_consumer_events: Counter,
    /// Messages that could not be decoded.
    pub decode_errors: Counter,
    /// Streams of other relays in the shared catalog.
    pub remote_streams: Gauge,
    /// Other relays heard within the expiry.
    pub remote_relays: Gauge,
    /// Time from a lease request to its reply (or no-responders), seconds.
    pub request_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for BackplaneMetrics {
    fn default() -> Self {
        Self {
            enabled: Gauge::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            dropped_messages: Counter::default(),
            dropped_bytes: Counter::default(),
            queue_bytes: Gauge::default(),
            subscriptions: Gauge::default(),
            remote_wants: Gauge::default(),
            gaps: Family::default(),
            gap_lines: Counter::default(),
            slow_consumer_events: Counter::default(),
            decode_errors: Counter::default(),
            remote_streams: Gauge::default(),
            remote_relays: Gauge::default(),
            request_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 14),
            ),
        }
    }
}

impl BackplaneMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "enabled",
            "1 when a NATS backplane is configured",
            self.enabled.clone(),
        );
        r.register(
            "connected",
            "1 while connected to NATS",
            self.connected.clone(),
        );
        r.register(
            "reconnects",
            "NATS connections re-established after a loss",
            self.reconnects.clone(),
        );
        r.register(
            "messages_in",
            "Backplane messages received, by kind",
            self.messages_in.clone(),
        );
        r.register(
            "bytes_in",
            "Backplane payload bytes received, by kind",
            self.bytes_in.clone(),
        );
        r.register(
            "messages_out",
            "Backplane messages handed to NATS, by kind",
            self.messages_out.clone(),
        );
        r.register(
            "bytes_out",
            "Backplane payload bytes handed to NATS, by kind",
            self.bytes_out.clone(),
        );
        r.register(
            "dropped_messages",
            "Messages dropped from the full queue toward NATS",
            self.dropped_messages.clone(),
        );
        r.register(
            "dropped_bytes",
            "Bytes of messages dropped from the full queue toward NATS",
            self.dropped_bytes.clone(),
        );
        r.register(
            "queue_bytes",
            "Bytes waiting in the queue toward NATS",
            self.queue_bytes.clone(),
        );
        r.register(
            "subscriptions",
            "Stream subscriptions held on NATS",
            self.subscriptions.clone(),
        );
        r.register(
            "remote_wants",
            "Leases other relays hold on this relay's streams",
            self.remote_wants.clone(),
        );
        r.register(
            "gaps",
            "Holes found in what NATS delivered, by reason",
            self.gaps.clone(),
        );
        r.register(
            "gap_lines",
            "Lines inside holes found in what NATS delivered",
            self.gap_lines.clone(),
        );
        r.register(
            "slow_consumer_events",
            "NATS client slow-consumer events",
            self.slow_consumer_events.clone(),
        );
        r.register(
            "decode_errors",
            "Backplane messages that could not be decoded",
            self.decode_errors.clone(),
        );
        r.register(
            "remote_streams",
            "Streams of other relays in the shared catalog",
            self.remote_streams.clone(),
        );
        r.register(
            "remote_relays",
            "Other relays heard within the expiry",
            self.remote_relays.clone(),
        );
        r.register(
            "request_seconds",
            "Backplane lease request latency",
            self.request_seconds.clone(),
        );
        for kind in ["data", "control"] {
            for f in [
                &self.messages_in,
                &self.bytes_in,
                &self.messages_out,
                &self.bytes_out,
            ] {
                let _ = f.get_or_create(&MessageKind { kind });
            }
        }
        for reason in ["backplane_lost", "backplane_slow_consumer"] {
            let _ = self.gaps.get_or_create(&GapReason { reason });
        }
    }

    /// Counts one message in.
    pub fn message_in(&self, kind: &'static str, bytes: usize) {
        self.messages_in.get_or_create(&MessageKind { kind }).inc();
        self.bytes_in
            .get_or_create(&MessageKind { kind })
            .inc_by(bytes as u64);
    }

    /// Counts one message out.
    pub fn message_out(&self, kind: &'static str, bytes: usize) {
        self.messages_out.get_or_create(&MessageKind { kind }).inc();
        self.bytes_out
            .get_or_create(&MessageKind { kind })
            .inc_by(bytes as u64);
    }

    /// Counts one hole.
    pub fn gap(&self, reason: &'static str, lines: u64) {
        self.gaps.get_or_create(&GapReason { reason }).inc();
        self.gap_lines.inc_by(lines);
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Label of the lag histograms: the stream's kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagKind {
    /// `log`, `metrics` or `events`.
    pub kind: &'static str,
}

impl LagKind {
    /// The label of streams of `kind`.
    pub fn of(kind: logrelay_wire::labels::StreamKind) -> Self {
        use logrelay_wire::labels::StreamKind;
        Self {
            kind: match kind {
                StreamKind::Log => "log",
                StreamKind::Metrics => "metrics",
                StreamKind::Events => "events",
            },
        }
    }
}

/// Upper bounds of the lag histograms' buckets, seconds: 1 ms, doubling, 17 buckets (to
/// 65.536 s), then `+Inf`.
pub fn lag_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

/// The wall clock, Unix nanoseconds: the lag histograms' end time.
#[allow(
    clippy::disallowed_methods,
    reason = "the lag histograms compare the relay's wall clock with the agent's line times"
)]
pub fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A lag histogram per stream kind.
pub type LagFamily = Family<
    LagKind,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

fn lag_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(lag_buckets())
}

/// How late lines are, measured from the timestamp of a live log batch's first line (taken on
/// the agent's node: the runtime's record time, or the agent's read time for plain text) on
/// the relay's clock. See `docs/operations.md` (Lag) for what clock skew does to them.
#[derive(Debug)]
pub struct LagMetrics {
    /// First line's timestamp → the batch pushed into its stream's ring (agent batches only).
    pub ingest: LagFamily,
    /// First line's timestamp → the batch handed to a session's socket (once per session).
    pub delivery: LagFamily,
}

impl Default for LagMetrics {
    fn default() -> Self {
        let m = Self {
            ingest: Family::new_with_constructor(lag_histogram),
            delivery: Family::new_with_constructor(lag_histogram),
        };
        // Every kind is exported (empty) from the start.
        for kind in ["log", "metrics", "events"] {
            let _ = m.ingest.get_or_create(&LagKind { kind });
            let _ = m.delivery.get_or_create(&LagKind { kind });
        }
        m
    }
}

impl LagMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "ingest_lag_seconds",
            "Time from a live batch's first line timestamp to its ring push, by stream kind",
            self.ingest.clone(),
        );
        r.register(
            "delivery_lag_seconds",
            "Time from a live batch's first line timestamp to its write to a session, by stream kind",
            self.delivery.clone(),
        );
    }

    /// Observes at `now_ns` a line timestamp (`first`) of a batch of `kind` reaching a stage.
    pub fn observe_at(family: &LagFamily, kind: &LagKind, first: i64, now_ns: i64) {
        family
            .get_or_create(kind)
            .observe(logrelay_wire::time::lag_seconds(first, now_ns));
    }

    /// Observes the live batch `batch` of a stream of `kind` reaching a stage at `now_ns`
    /// (nothing for gaps and backfill).
    pub fn observe(family: &LagFamily, kind: LagKind, batch: &[u8], now_ns: i64) {
        if let Some(first) = logrelay_wire::batch::first_line_ns(batch) {
            Self::observe_at(family, &kind, first, now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::audit::{Actor, AuditEvent, AuditSink};

    /// A destination that takes nothing (as a full queue would).
    #[derive(Debug)]
    struct Refusing;

    impl AuditSink for Refusing {
        fn record(&self, _: &AuditEvent<'_>, _: &[u8]) -> io::Result<()> {
            Err(io::Error::other("full"))
        }
    }

    fn audit_failed(m: &RelayMetrics) -> Option<String> {
        m.render()
            .lines()
            .find(|l| l.starts_with("logrelay_relay_audit_failed_total "))
            .map(str::to_owned)
    }

    fn line_batch(ts: i64, flags: u8) -> bytes::Bytes {
        let mut b = logrelay_wire::batch::BatchBuilder::new(1, 1, 0, flags, 0);
        b.push(ts, logrelay_wire::batch::LineFlags::default(), b"x\n");
        b.finish()
    }

    #[test]
    fn lag_histograms_count_live_batches_in_their_kind_and_bucket() {
        let m = RelayMetrics::new();
        let text = m.render();
        for kind in ["log", "metrics", "events"] {
            for stage in ["ingest", "delivery"] {
                let empty =
                    format!("logrelay_relay_{stage}_lag_seconds_count{{kind=\"{kind}\"}} 0");
                assert!(text.contains(&empty), "{empty} missing from\n{text}");
            }
        }
        let s = 1_000_000_000;
        // 2.5 s late: in the 4.096 s bucket, not in the 2.048 s one.
        let log = LagKind::of(logrelay_wire::labels::StreamKind::Log);
        LagMetrics::observe(
            &m.lag.delivery,
            log.clone(),
            &line_batch(10 * s, 0),
            12 * s + s / 2,
        );
        // A relay clock behind the agent's: observed as 0.
        LagMetrics::observe(&m.lag.delivery, log.clone(), &line_batch(20 * s, 0), 19 * s);
        // Backfill and gaps are not observed.
        let backfill = line_batch(0, logrelay_wire::batch::FLAG_BACKFILL);
        LagMetrics::observe(&m.lag.delivery, log.clone(), &backfill, 12 * s);
        let gap = logrelay_wire::batch::encode_gap(1, 1, 0, 4, 0);
        LagMetrics::observe(&m.lag.ingest, log, &gap, 12 * s);
        let text = m.render();
        for want in [
            "logrelay_relay_delivery_lag_seconds_count{kind=\"log\"} 2",
            "logrelay_relay_delivery_lag_seconds_sum{kind=\"log\"} 2.5",
            "logrelay_relay_delivery_lag_seconds_bucket{le=\"0.001\",kind=\"log\"} 1",
            "logrelay_relay_delivery_lag_seconds_bucket{le=\"2.048\",kind=\"log\"} 1",
            "logrelay_relay_delivery_lag_seconds_bucket{le=\"4.096\",kind=\"log\"} 2",
            "logrelay_relay_delivery_lag_seconds_bucket{le=\"65.536\",kind=\"log\"} 2",
            "logrelay_relay_ingest_lag_seconds_count{kind=\"log\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn audit_events_that_could_not_be_written_are_exported() {
        let m = RelayMetrics::new();
        assert_eq!(
            audit_failed(&m).as_deref(),
            Some("logrelay_relay_audit_failed_total 0"),
            "exported before any audit trail is attached"
        );
        let auditor = Arc::new(Auditor::new(Arc::new(Refusing)));
        m.report_audit(auditor.clone());
        let actor = Actor::session(1, None);
        for _ in 0..3 {
            auditor.session_connect(&actor, "acme", "127.0.0.1:1".parse().unwrap());
        }
        assert_eq!(auditor.failed(), 3);
        assert_eq!(
            audit_failed(&m).as_deref(),
            Some("logrelay_relay_audit_failed_total 3")
        );
        assert!(
            m.render()
                .contains("# TYPE logrelay_relay_audit_failed counter"),
            "{}",
            m.render()
        );
    }
}
