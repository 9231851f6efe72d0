//! OpenTelemetry export of the audit trail: one OTLP log record per audit event, sent over
//! HTTP (protobuf) to a collector, e.g. `http://127.0.0.1:4318` (records go to
//! `<endpoint>/v1/logs`).
//!
//! Each record has:
//!
//! | field                        | value                                                  |
//! | ---------------------------- | ------------------------------------------------------ |
//! | body                         | the event's JSON line (a string, without its newline)  |
//! | event name                   | `logrelay.audit`                                       |
//! | severity                     | `INFO` when `outcome` is `ok`, `WARN` otherwise        |
//! | `logrelay.audit.op`          | the event's `op`                                       |
//! | `logrelay.audit.outcome`     | the event's `outcome`                                  |
//! | `logrelay.org`               | the event's `org`; absent when the org is not known    |
//! | resource `service.name`      | the `service_name` given to [`OtlpAuditExporter::new`] |
//!
//! # Never blocking the caller
//!
//! Records go through the SDK's thread-based batch processor (its own thread,
//! `OpenTelemetry.Logs.BatchProcessor`, sending every second or every full batch). At most
//! `queue_events` records are *in flight* — taken and not yet through an export attempt, whether
//! still queued or in the request being sent. A record past that is refused at once: [`try_emit`]
//! returns [`io::ErrorKind::WouldBlock`], and [`dropped`] counts it. A record whose export failed
//! (collector down, after the exporter's retries; or an error status) is counted in [`failures`].
//! The SDK's own diagnostics are compiled out (no `internal-logs` feature): these two counters are
//! the only signal, so export them as metrics.
//!
//! # Transport
//!
//! Plain `http://` only. The HTTP client is reqwest's *blocking* client with default features
//! off: no TLS stack is compiled in (no rustls, no aws-lc-rs), and an `https://` endpoint is
//! refused by [`OtlpAuditExporter::new`]. Point it at a collector on the same host or network
//! segment (an OpenTelemetry Collector sidecar) and let that forward over TLS. reqwest's async
//! client must not be enabled in the same build (opentelemetry-otlp's `reqwest-client` or
//! `hyper-client` features take priority over the blocking client and need a Tokio runtime the
//! batch thread does not have).
//!
//! Environment variables the OpenTelemetry crates read still apply where the code does not set
//! the value: `OTEL_EXPORTER_OTLP_LOGS_HEADERS` / `OTEL_EXPORTER_OTLP_HEADERS` (e.g. an auth
//! header), `OTEL_RESOURCE_ATTRIBUTES`, and `OTEL_EXPORTER_OTLP[_LOGS]_COMPRESSION` (`gzip` or
//! `zstd` is not compiled in: [`OtlpAuditExporter::new`] then fails). The endpoint, protocol,
//! timeout, queue size, batch size and export interval are set here and override their
//! variables.
//!
//! # Use from the relay
//!
//! This module depends on nothing from the relay; the relay's `AuditSink` impl maps the event
//! onto [`OtlpAuditExporter::try_emit`], which mirrors `AuditSink::record` (refuse with an error,
//! never wait) and `AuditSink::failures`:
//!
//! ```text
//! // relay/src/audit.rs: `pub mod otlp;`, and `Op::as_str` / `Outcome::as_str` returning the
//! // serde names (`"agent_connect"`, …, `"ok"`, `"denied"`, `"limit"`).
//! impl AuditSink for otlp::OtlpAuditExporter {
//!     fn record(&self, event: &AuditEvent<'_>, line: &[u8]) -> io::Result<()> {
//!         self.try_emit(event.op.as_str(), event.outcome.as_str(), event.org, line)
//!     }
//!
//!     fn failures(&self) -> u64 {
//!         otlp::OtlpAuditExporter::failures(self)
//!     }
//! }
//!
//! // main: the exporter is an extra sink; keep a handle to flush it on the way out.
//! let otlp = Arc::new(OtlpAuditExporter::new(endpoint, "logrelay-relay", DEFAULT_QUEUE_EVENTS)?);
//! let auditor = Auditor::stdout()?.with_sink(Arc::clone(&otlp) as Arc<dyn AuditSink>);
//! // … serve …
//! if let Err(e) = otlp.shutdown() {
//!     tracing::warn!(error = %e, "audit: OTLP flush incomplete");
//! }
//! ```
//!
//! A refused record is then counted once, by the auditor (`try_emit`'s error); [`failures`]
//! holds only records lost after they were taken, as `AuditSink::failures` expects.
//!
//! [`try_emit`]: OtlpAuditExporter::try_emit
//! [`dropped`]: OtlpAuditExporter::dropped
//! [`failures`]: OtlpAuditExporter::failures

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider,
};

/// The event name of every audit record.
pub const EVENT_NAME: &str = "logrelay.audit";
/// Attribute: the event's `op`.
pub const ATTR_OP: &str = "logrelay.audit.op";
/// Attribute: the event's `outcome`.
pub const ATTR_OUTCOME: &str = "logrelay.audit.outcome";
/// Attribute: the event's `org` (absent when not known).
pub const ATTR_ORG: &str = "logrelay.org";
/// The OTLP/HTTP path for logs, appended to the endpoint.
pub const LOGS_PATH: &str = "/v1/logs";
/// Time budget of one export, retries included (the OTLP default is 10 s).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`OtlpAuditExporter::shutdown`] waits for the last records to be sent.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest batch sent in one request.
const MAX_EXPORT_BATCH: usize = 512;
/// How often a partial batch is sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The instrumentation scope of the records.
const SCOPE: &str = "logrelay.audit";

/// Why the OTLP audit exporter could not be built or shut down.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://host[:port][/prefix]` base URL.
    #[error("OTLP endpoint {0:?} is not an http:// base URL such as http://127.0.0.1:4318")]
    InvalidEndpoint(String),
    /// The endpoint is `https://`, and this build has no TLS.
    #[error(
        "OTLP endpoint {0:?}: https is not supported (built without TLS); use http:// to a local collector"
    )]
    TlsUnsupported(String),
    /// The queue size is zero; it must hold at least one event.
    #[error("OTLP audit queue size must be at least 1")]
    ZeroQueue,
    /// opentelemetry-otlp refused to build the exporter (bad URL, HTTP client failed to start).
    #[error("building the OTLP log exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Shutdown did not complete: the flush missed its deadline, the last export failed, or the
    /// exporter was already shut down.
    #[error("shutting down the OTLP log exporter: {0}")]
    Shutdown(#[source] OTelSdkError),
}

/// Counters shared by the caller's side and the export thread.
#[derive(Debug, Default)]
struct Counters {
    /// Records taken and not yet through an export attempt.
    in_flight: AtomicUsize,
    /// Records refused: queue full, or after shutdown.
    dropped: AtomicU64,
    /// Records whose export failed.
    export_failed: AtomicU64,
    /// Set by shutdown: later records are refused.
    shut_down: AtomicBool,
}

/// Sends audit events as OpenTelemetry log records to an OTLP/HTTP collector. Thread-safe;
/// share it in an `Arc`. See the [module docs](self).
///
/// Dropping it without [`shutdown`](Self::shutdown) shuts it down with the SDK's deadline
/// (5 s), blocking the dropping thread meanwhile.
pub struct OtlpAuditExporter {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    counters: Arc<Counters>,
    capacity: usize,
    url: String,
}

impl fmt::Debug for OtlpAuditExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpAuditExporter")
            .field("url", &self.url)
            .field("capacity", &self.capacity)
            .field("in_flight", &self.in_flight())
            .field("dropped", &self.dropped())
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl OtlpAuditExporter {
    /// An exporter sending to `endpoint` (a base URL such as `http://127.0.0.1:4318`; records go
    /// to `<endpoint>/v1/logs`) as service `service_name`, with at most `queue_events` records
    /// in flight. Starts the batch thread; does not connect.
    pub fn new(endpoint: &str, service_name: &str, queue_events: usize) -> Result<Self, OtlpError> {
        if queue_events == 0 {
            return Err(OtlpError::ZeroQueue);
        }
        let url = logs_url(endpoint)?;
        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let counters = Arc::new(Counters::default());
        let processor = BatchLogProcessor::builder(CountingExporter {
            inner: exporter,
            counters: Arc::clone(&counters),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue_events)
                .with_max_export_batch_size(MAX_EXPORT_BATCH)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build(),
        )
        .build();
        let provider = SdkLoggerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .with_log_processor(processor)
            .build();
        let logger = provider.logger_with_scope(
            InstrumentationScope::builder(SCOPE)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Self {
            provider,
            logger,
            counters,
            capacity: queue_events,
            url,
        })
    }

    /// Sends one audit event: `op` and `outcome` as the audit line has them, `org` when known,
    /// `json_line` the event's JSON line. Never waits; a refused record is counted in
    /// [`dropped`](Self::dropped).
    pub fn emit(&self, op: &str, outcome: &str, org: Option<&str>, json_line: &[u8]) {
        // Refusals are counted inside; nothing more to do with the error here.
        let _ = self.try_emit(op, outcome, org, json_line);
    }

    /// As [`emit`](Self::emit), telling whether the record was taken: the function behind the
    /// relay's `AuditSink::record`. Errors: [`io::ErrorKind::WouldBlock`] when `queue_events`
    /// records are already in flight, [`io::ErrorKind::BrokenPipe`] after shutdown. Either way
    /// the record is also counted in [`dropped`](Self::dropped).
    pub fn try_emit(
        &self,
        op: &str,
        outcome: &str,
        org: Option<&str>,
        json_line: &[u8],
    ) -> io::Result<()> {
        if self.counters.shut_down.load(Ordering::Acquire) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "OTLP audit exporter is shut down",
            ));
        }
        // The SDK silently discards records emitted while its own telemetry is suppressed (on
        // its export thread); the slot reserved below would then never be released.
        if Context::is_current_telemetry_suppressed() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other(
                "OpenTelemetry telemetry is suppressed on this thread",
            ));
        }
        let capacity = self.capacity;
        if self
            .counters
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_err()
        {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "OTLP audit queue full",
            ));
        }

        let mut record = self.logger.create_log_record();
        #[allow(
            clippy::disallowed_methods,
            reason = "a record's timestamp is the wall-clock time of its export"
        )]
        let now = SystemTime::now();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        record.set_event_name(EVENT_NAME);
        if outcome == "ok" {
            record.set_severity_number(Severity::Info);
            record.set_severity_text("INFO");
        } else {
            record.set_severity_number(Severity::Warn);
            record.set_severity_text("WARN");
        }
        let line = json_line.strip_suffix(b"\n").unwrap_or(json_line);
        record.set_body(AnyValue::from(String::from_utf8_lossy(line).into_owned()));
        record.add_attribute(ATTR_OP, op.to_owned());
        record.add_attribute(ATTR_OUTCOME, outcome.to_owned());
        if let Some(org) = org {
            record.add_attribute(ATTR_ORG, org.to_owned());
        }
        // The in-flight bound equals the batch queue's size and every queued record holds a
        // slot, so the queue always has room: this hands the record over without waiting.
        self.logger.emit(record);
        Ok(())
    }

    /// Sends what is queued and stops, waiting at most [`SHUTDOWN_DEADLINE`]. Records emitted
    /// afterwards are refused.
    pub fn shutdown(&self) -> Result<(), OtlpError> {
        self.shutdown_within(SHUTDOWN_DEADLINE)
    }

    /// As [`shutdown`](Self::shutdown), waiting at most `deadline`. On a timeout the export
    /// thread is left to finish (within [`EXPORT_TIMEOUT`]) on its own.
    pub fn shutdown_within(&self, deadline: Duration) -> Result<(), OtlpError> {
        self.counters.shut_down.store(true, Ordering::Release);
        self.provider
            .shutdown_with_timeout(deadline)
            .map_err(OtlpError::Shutdown)
    }

    /// Records refused so far: queue full, or emitted after shutdown.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records taken but lost: their export failed (after retries) or was refused.
    pub fn failures(&self) -> u64 {
        self.counters.export_failed.load(Ordering::Relaxed)
    }

    /// Records taken and not yet through an export attempt.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Where records are sent (`<endpoint>/v1/logs`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `<endpoint>/v1/logs`, for an `http://` base URL.
fn logs_url(endpoint: &str) -> Result<String, OtlpError> {
    let base = endpoint.trim().trim_end_matches('/');
    match base.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http")
                && !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(['?', '#', ' ']) =>
        {
            Ok(format!("{base}{LOGS_PATH}"))
        }
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            Err(OtlpError::TlsUnsupported(endpoint.to_owned()))
        }
        _ => Err(OtlpError::InvalidEndpoint(endpoint.to_owned())),
    }
}

/// The OTLP exporter, releasing in-flight slots and counting failed records as batches finish.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::LogExporter,
    counters: Arc<Counters>,
}

impl LogExporter for CountingExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let records = batch.iter().count();
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.counters.export_failed.fetch_add(
                u64::try_from(records).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        self.counters.in_flight.fetch_sub(records, Ordering::AcqRel);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_becomes_logs_url() {
        for (endpoint, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/logs"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/logs"),
            ("HTTP://collector:4318", "HTTP://collector:4318/v1/logs"),
            ("http://gw/otlp/", "http://gw/otlp/v1/logs"),
        ] {
            assert_eq!(logs_url(endpoint).unwrap(), url);
        }
    }

    #[test]
    fn bad_endpoints_are_refused() {
        assert!(matches!(
            logs_url("https://collector:4318"),
            Err(OtlpError::TlsUnsupported(_))
        ));
        for endpoint in [
            "",
            "collector:4318",
            "http://",
            "http:///x",
            "ftp://h",
            "http://h?q",
        ] {
            assert!(
                matches!(logs_url(endpoint), Err(OtlpError::InvalidEndpoint(_))),
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn zero_queue_is_refused() {
        assert!(matches!(
            OtlpAuditExporter::new("http://127.0.0.1:4318", "t", 0),
            Err(OtlpError::ZeroQueue)
        ));
    }
}
