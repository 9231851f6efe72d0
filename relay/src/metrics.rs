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
    /// `slow_consumer` (a session fell behind the ring).
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
    /// Demands sent to agents.
    pub demands_opened: Counter,
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
            demands_opened: Counter::default(),
            agent_messages_dropped: Counter::default(),
            limit_hits: Family::default(),
            limits: Family::default(),
            protocol_errors: Family::default(),
            sessions_refused: Family::default(),
            tls_reloads: Family::default(),
            audit: Arc::new(OnceLock::new()),
        };
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
            "demands_opened",
            "Demands sent to agents",
            m.demands_opened.clone(),
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

    /// Counts one malformed input.
    pub fn protocol_error(&self, peer: &'static str) {
        self.protocol_errors.get_or_create(&Offender { peer }).inc();
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
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
