//! Every metric the agent exports. Names are a contract (see `docs/operations.md`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of `logrelay_agent_scrape_pods_skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SkipReason {
    /// Why an annotated pod gives no target (`no_ip`, `bad_port`, `scheme`, `bad_path`, `no_port`).
    pub reason: &'static str,
}

/// The agent's metrics and their registry.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Registry rendered at `/metrics`.
    pub registry: Registry,
    /// Streams in the catalog.
    pub streams: Gauge,
    /// Lines read from log files (only while some demand is served).
    pub lines_read: Counter,
    /// Lines sent to the relay.
    pub lines_sent: Counter,
    /// Batch bytes sent to the relay.
    pub bytes_sent: Counter,
    /// Records that could not be parsed (delivered as raw lines).
    pub parse_errors: Counter,
    /// 1 while connected to the relay.
    pub relay_connected: Gauge,
    /// Connection attempts that failed or connections that ended.
    pub reconnects: Counter,
    /// Demands being served.
    pub demands_active: Gauge,
    /// Streams the relay refused to take (`catalog_refused`: a limit was reached).
    pub catalog_refused: Counter,
    /// Log follower tasks running (one per followed stream and line filter).
    pub followers: Gauge,
    /// Log bytes rotated away (compressed, deleted, truncated) before they were read.
    pub rotated_unread_bytes: Counter,
    /// Compressed rotated log files a read reached that could not be read (truncated, corrupt).
    pub unreadable_rotated_files: Counter,
    /// Followed files that grew but were not read in time, and were re-opened.
    pub stalls: Counter,
    /// Bytes of batches queued toward the relay (the queue budget in use).
    pub queue_bytes: Gauge,
    /// The configured queue budget (`--queue-budget-bytes`), so alerts can compare.
    pub queue_budget_bytes: Gauge,
    /// Lines dropped from full queues (oldest first), reported to subscribers as gaps.
    pub queue_dropped_lines: Counter,
    /// Batch bytes dropped from full queues.
    pub queue_dropped_bytes: Counter,
    /// TLS files reloaded after a change.
    pub tls_reloads: Counter,
    /// TLS files that changed but could not be used.
    pub tls_reload_errors: Counter,
    /// Scrapes made (only while some demand is served).
    pub scrapes: Counter,
    /// Scrapes that failed (`up` 0).
    pub scrape_failures: Counter,
    /// Samples read by successful scrapes.
    pub scrape_samples: Counter,
    /// Response body bytes read by scrapes.
    pub scrape_bytes: Counter,
    /// Pod resource samples taken (only while some demand is served).
    pub resource_samples: Counter,
    /// Scrape targets of pods annotated `prometheus.io/scrape` in the catalog.
    pub scrape_pod_targets: Gauge,
    /// Pods annotated `prometheus.io/scrape: "true"` that give no target, by reason.
    pub scrape_pods_skipped: Family<SkipReason, Gauge>,
    /// Kubernetes events read for watched pods' `events` streams (only while watched).
    pub kube_events: Counter,
    /// Kubernetes events (or watch lines) that could not be read, skipped.
    pub kube_events_malformed: Counter,
    /// Allowlisted pod labels and annotations left out of stream labels (a value over 253
    /// bytes, or past 16 entries or 2048 bytes), counted per pod version read.
    pub kube_meta_left_out: Counter,
    /// Read lag of live log lines: the record's runtime timestamp to the follower's read
    /// (CRI and Docker json-file only; see `tail::lag`).
    pub read_lag: prometheus_client::metrics::histogram::Histogram,
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("logrelay_agent");
        let m = Self {
            streams: Gauge::default(),
            lines_read: Counter::default(),
            lines_sent: Counter::default(),
            bytes_sent: Counter::default(),
            parse_errors: Counter::default(),
            relay_connected: Gauge::default(),
            reconnects: Counter::default(),
            demands_active: Gauge::default(),
            catalog_refused: Counter::default(),
            followers: Gauge::default(),
            rotated_unread_bytes: Counter::default(),
            unreadable_rotated_files: Counter::default(),
            stalls: Counter::default(),
            queue_bytes: Gauge::default(),
            queue_budget_bytes: Gauge::default(),
            queue_dropped_lines: Counter::default(),
            queue_dropped_bytes: Counter::default(),
            tls_reloads: Counter::default(),
            tls_reload_errors: Counter::default(),
            scrapes: Counter::default(),
            scrape_failures: Counter::default(),
            scrape_samples: Counter::default(),
            scrape_bytes: Counter::default(),
            resource_samples: Counter::default(),
            scrape_pod_targets: Gauge::default(),
            scrape_pods_skipped: Family::default(),
            kube_events: Counter::default(),
            kube_events_malformed: Counter::default(),
            kube_meta_left_out: Counter::default(),
            read_lag: prometheus_client::metrics::histogram::Histogram::new(
                // 1 ms, doubling, 17 buckets (to 65.536 s): the relay's lag buckets.
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
            ),
            registry: Registry::default(),
        };
        registry.register("streams", "Streams in the catalog", m.streams.clone());
        registry.register(
            "lines_read",
            "Lines read from log files",
            m.lines_read.clone(),
        );
        registry.register(
            "lines_sent",
            "Lines sent to the relay",
            m.lines_sent.clone(),
        );
        registry.register(
            "bytes_sent",
            "Batch bytes sent to the relay",
            m.bytes_sent.clone(),
        );
        registry.register(
            "parse_errors",
            "Log records that did not parse as their format",
            m.parse_errors.clone(),
        );
        registry.register(
            "relay_connected",
            "1 while connected to the relay",
            m.relay_connected.clone(),
        );
        registry.register(
            "reconnects",
            "Relay connections that failed or ended",
            m.reconnects.clone(),
        );
        registry.register(
            "demands_active",
            "Demands being served",
            m.demands_active.clone(),
        );
        registry.register(
            "catalog_refused",
            "Streams the relay refused to take because a limit was reached",
            m.catalog_refused.clone(),
        );
        registry.register(
            "followers",
            "Log follower tasks running (reading a followed stream)",
            m.followers.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS files reloaded after a change",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_reload_errors",
            "TLS files that changed but could not be used",
            m.tls_reload_errors.clone(),
        );
        registry.register(
            "scrapes",
            "Scrapes of metrics targets (made only while watched)",
            m.scrapes.clone(),
        );
        registry.register(
            "scrape_failures",
            "Scrapes that failed (up 0)",
            m.scrape_failures.clone(),
        );
        registry.register(
            "scrape_samples",
            "Samples read by successful scrapes",
            m.scrape_samples.clone(),
        );
        registry.register(
            "scrape_bytes",
            "Response body bytes read by scrapes",
            m.scrape_bytes.clone(),
        );
        registry.register(
            "resource_samples",
            "Pod resource samples read from cgroups (only while watched)",
            m.resource_samples.clone(),
        );
        registry.register(
            "scrape_pod_targets",
            "Scrape targets of pods annotated prometheus.io/scrape",
            m.scrape_pod_targets.clone(),
        );
        registry.register(
            "scrape_pods_skipped",
            "Pods annotated prometheus.io/scrape=true that give no target, by reason",
            m.scrape_pods_skipped.clone(),
        );
        registry.register(
            "rotated_unread_bytes",
            "Log bytes rotated away (compressed, deleted, truncated) before they were read",
            m.rotated_unread_bytes.clone(),
        );
        registry.register(
            "unreadable_rotated_files",
            "Compressed rotated log files a read reached that could not be read (truncated, corrupt)",
            m.unreadable_rotated_files.clone(),
        );
        registry.register(
            "stalls",
            "Followed log files that grew but were not read in time, and were re-opened",
            m.stalls.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes of batches queued toward the relay (the queue budget in use)",
            m.queue_bytes.clone(),
        );
        registry.register(
            "queue_budget_bytes",
            "The queue budget toward the relay (--queue-budget-bytes)",
            m.queue_budget_bytes.clone(),
        );
        registry.register(
            "queue_dropped_lines",
            "Lines dropped from full queues toward the relay, reported as gaps",
            m.queue_dropped_lines.clone(),
        );
        registry.register(
            "queue_dropped_bytes",
            "Batch bytes dropped from full queues toward the relay",
            m.queue_dropped_bytes.clone(),
        );
        registry.register(
            "kube_events",
            "Kubernetes events read for watched pods' events streams",
            m.kube_events.clone(),
        );
        registry.register(
            "kube_events_malformed",
            "Kubernetes events or watch lines that could not be read, skipped",
            m.kube_events_malformed.clone(),
        );
        registry.register(
            "kube_meta_left_out",
            "Allowlisted pod labels and annotations left out of stream labels (too long, or past the bounds)",
            m.kube_meta_left_out.clone(),
        );
        registry.register(
            "read_lag_seconds",
            "Time from a live log record's runtime timestamp to its read by the agent",
            m.read_lag.clone(),
        );
        registry.register_collector(Box::new(logrelay_telemetry::SpanLossCollector));
        Self { registry, ..m }
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}
