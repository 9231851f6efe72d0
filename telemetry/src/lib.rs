//! OpenTelemetry traces of logrelay's relay and agent: spans for the life of a subscription and
//! of a demand, carried from the relay to the agent as W3C trace context (`traceparent` in the
//! `open` control message), exported over OTLP/HTTP (protobuf) to a collector.
//!
//! # Off unless the standard variables ask for it
//!
//! [`init_from_env`] reads the OpenTelemetry environment once, at start ([`Settings::from_env`]):
//! tracing is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) is set, unless `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none`. The sampler comes from `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`), the service name from
//! `OTEL_SERVICE_NAME` (default: the binary's name), other resource attributes from
//! `OTEL_RESOURCE_ATTRIBUTES`, headers from `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`, and the batch
//! schedule from `OTEL_BSP_SCHEDULE_DELAY` / `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (the SDK reads
//! those). Until then, and when off, [`start`] returns a [`Span`] that records nothing and
//! costs one atomic load.
//!
//! # Never blocking the data path
//!
//! Ended spans go to the SDK's batch processor, which exports from its own thread with
//! reqwest's *blocking* HTTP client (no TLS compiled in: `http://` only). At most
//! `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048) spans are in flight, queued or being sent; a span
//! ended past that is dropped at once and counted ([`dropped`]); spans whose export failed are
//! counted too ([`failed`]). Both are exported as metrics by the relay and the agent.
//!
//! # What a span never holds
//!
//! Attributes and events carry ids (demand, stream, session, subscription), counts, byte sizes
//! and outcome codes. Never a line's content, a line filter, a label value, a selector or a
//! token.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt as _, TraceFlags, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

pub use opentelemetry::trace::{SpanContext, SpanId, TraceId};

/// Span names and attribute keys, as documented in `docs/operations.md`.
pub mod names {
    /// Relay: one subscription of a session, from `subscribe` to `unsubscribe` or the session's
    /// end.
    pub const RELAY_SUBSCRIPTION: &str = "relay.subscription";
    /// Relay: one demand sent to an agent (`open`), until the relay forgets it (cancel, the
    /// agent's end of it, or the agent's connection gone). Child of the subscription whose
    /// `subscribe` caused it.
    pub const RELAY_DEMAND: &str = "relay.demand";
    /// Relay: one data stream an agent opened for a demand, until it ends. Child of the
    /// demand.
    pub const RELAY_DATA_STREAM: &str = "relay.data_stream";
    /// Agent: one demand served, from `open` to its end. Child of the relay's demand (its
    /// `traceparent`).
    pub const AGENT_DEMAND: &str = "agent.demand";
    /// Agent: opening a demand's data stream and writing its preamble. Child of the agent's
    /// demand.
    pub const AGENT_OPEN: &str = "agent.open";

    /// Agent: one sampled batch's path through the agent, from the read of its first line to
    /// QUIC taking it (a new trace, linked to the demand it served).
    pub const AGENT_BATCH: &str = "agent.batch";
    /// Agent: reading and encoding a sampled batch (the read of its first line to its queueing).
    /// Child of `agent.batch`.
    pub const AGENT_READ_ENCODE: &str = "agent.read_encode";
    /// Agent: a sampled batch waiting in its stream's queue for the demand to take it. Child
    /// of `agent.batch`.
    pub const AGENT_QUEUE: &str = "agent.queue";
    /// Agent: writing a sampled batch into its QUIC data stream (flow control waits
    /// included). Child of `agent.batch`.
    pub const AGENT_SEND: &str = "agent.send";
    /// Relay: ingesting a sampled batch (the agent's `agent.batch` is its parent, from the
    /// batch's trace frame).
    pub const RELAY_INGEST: &str = "relay.ingest";
    /// Relay: pushing a sampled batch into its stream's ring (waking the watchers). Child of
    /// `relay.ingest`.
    pub const RELAY_RING_PUSH: &str = "relay.ring_push";
    /// Relay: one session taking a sampled batch from the ring until its socket accepted it.
    /// Child of `relay.ingest`.
    pub const RELAY_SESSION_WRITE: &str = "relay.session_write";

    /// Event: the first batch of a demand was sent (agent) or received (relay).
    pub const EVENT_FIRST_BATCH: &str = "first_batch";
    /// Event: the relay cancelled the demand (agent: `cancel` received; relay: `cancel` sent).
    pub const EVENT_CANCEL: &str = "cancel";

    /// The subscription's id, as the session named it.
    pub const SUBSCRIPTION_ID: &str = "logrelay.subscription.id";
    /// The relay's session id.
    pub const SESSION_ID: &str = "logrelay.session.id";
    /// The demand id of the `open`.
    pub const DEMAND_ID: &str = "logrelay.demand.id";
    /// The stream id: the relay's (`relay.*`) or the agent's own (`agent.*`).
    pub const STREAM_ID: &str = "logrelay.stream.id";
    /// Whether the demand follows the stream (`true`) or is a one-off read or backfill.
    pub const DEMAND_FOLLOW: &str = "logrelay.demand.follow";
    /// The demand's `tail` line count, when it has one.
    pub const DEMAND_TAIL: &str = "logrelay.demand.tail";
    /// How the span ended: `unsubscribed`, `session_closed`, `cancelled`, `complete`,
    /// `closed`, `error`, `connection_lost`.
    pub const END: &str = "logrelay.end";
    /// Batches sent or received.
    pub const BATCHES: &str = "logrelay.batches";
    /// Bytes sent or received (framed batches, as on the wire).
    pub const BYTES: &str = "logrelay.bytes";
    /// An event's batch size in bytes.
    pub const BATCH_BYTES: &str = "logrelay.batch.bytes";
    /// A sampled batch's first sequence number.
    pub const BATCH_FIRST_SEQ: &str = "logrelay.batch.first_seq";
    /// A sampled batch's line count.
    pub const BATCH_LINES: &str = "logrelay.batch.lines";
}

/// The in-flight bound when `OTEL_BSP_MAX_QUEUE_SIZE` is not set.
pub const DEFAULT_QUEUE_SPANS: usize = 2048;
/// The OTLP/HTTP path of traces, appended to `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const TRACES_PATH: &str = "/v1/traces";
/// How long [`Telemetry::shutdown`] waits for the last spans to be sent.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Why tracing could not be set up from the environment.
#[derive(Debug, thiserror::Error)]
pub enum TraceInitError {
    /// The endpoint is not an `http://host[:port][/path]` URL.
    #[error("{var}={value:?} is not an http:// URL such as http://127.0.0.1:4318")]
    InvalidEndpoint {
        /// The variable that held it.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The endpoint is `https://`, and this build has no TLS for OTLP.
    #[error(
        "{var}={value:?}: https is not supported (built without TLS); use http:// to a local collector"
    )]
    TlsUnsupported {
        /// The variable that held it.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A protocol other than `http/protobuf` was asked for.
    #[error("{var}={value:?}: only http/protobuf is supported")]
    UnsupportedProtocol {
        /// The variable that held it.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An exporter other than `otlp` (or `none`) was asked for.
    #[error("OTEL_TRACES_EXPORTER={0:?}: only otlp (or none) is supported")]
    UnsupportedExporter(String),
    /// `OTEL_BSP_MAX_QUEUE_SIZE` is not a positive integer.
    #[error("OTEL_BSP_MAX_QUEUE_SIZE={0:?} is not a positive integer")]
    InvalidQueueSize(String),
    /// Tracing was already set up in this process.
    #[error("tracing is already set up in this process")]
    AlreadyInstalled,
    /// opentelemetry-otlp refused to build the exporter.
    #[error("building the OTLP span exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// What the environment asks for, when tracing is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where spans are POSTed (`…/v1/traces`).
    pub url: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Spans in flight at most (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue_spans: usize,
}

impl Settings {
    /// Reads the OpenTelemetry variables through `var` (`std::env::var` in production):
    /// `None` when tracing is off (no endpoint set, `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`). Pure: tests pass their own map.
    pub fn from_env(
        default_service: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceInitError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = get("OTEL_TRACES_EXPORTER") {
            match exporter.to_ascii_lowercase().as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => return Err(TraceInitError::UnsupportedExporter(exporter)),
            }
        }
        let (var_name, url) = if let Some(u) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", u)
        } else if let Some(u) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}{TRACES_PATH}", u.trim_end_matches('/')),
            )
        } else {
            return Ok(None);
        };
        check_url(var_name, &url)?;
        for p in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = get(p) {
                if v != "http/protobuf" {
                    return Err(TraceInitError::UnsupportedProtocol { var: p, value: v });
                }
                break;
            }
        }
        let queue_spans = match get("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => DEFAULT_QUEUE_SPANS,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(TraceInitError::InvalidQueueSize(v))?,
        };
        Ok(Some(Self {
            url,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
            queue_spans,
        }))
    }
}

/// An `http://host[:port][/path]` URL, or why not.
fn check_url(var: &'static str, url: &str) -> Result<(), TraceInitError> {
    match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http")
                && !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(['#', ' ']) =>
        {
            Ok(())
        }
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            Err(TraceInitError::TlsUnsupported {
                var,
                value: url.to_owned(),
            })
        }
        _ => Err(TraceInitError::InvalidEndpoint {
            var,
            value: url.to_owned(),
        }),
    }
}

/// Counters shared by the callers' side and the export thread.
#[derive(Debug, Default)]
struct Counters {
    /// Spans taken and not yet through an export attempt.
    in_flight: AtomicUsize,
    /// Spans dropped: the queue was full.
    dropped: AtomicU64,
    /// Spans whose export failed.
    failed: AtomicU64,
}

/// The tracer every [`start`] uses, once set up.
#[derive(Debug)]
struct Installed {
    tracer: SdkTracer,
    counters: Arc<Counters>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The process's tracing, as [`init_from_env`] set it up: flush it with
/// [`shutdown`](Self::shutdown) on the way out.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    settings: Settings,
}

impl Telemetry {
    /// Where spans go, the service name and the queue bound.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sends what is queued and stops, waiting at most [`SHUTDOWN_DEADLINE`]. Blocks: call it
    /// from a blocking thread.
    pub fn shutdown(&self) -> OTelSdkResult {
        self.provider.shutdown_with_timeout(SHUTDOWN_DEADLINE)
    }
}

/// Sets tracing up from the process environment (see the [crate docs](crate)) for
/// `default_service` (the binary's name, unless `OTEL_SERVICE_NAME` says otherwise). `None`
/// when the environment leaves it off. Starts the export thread; does not connect.
pub fn init_from_env(default_service: &str) -> Result<Option<Telemetry>, TraceInitError> {
    match Settings::from_env(default_service, |k| std::env::var(k).ok())? {
        None => Ok(None),
        Some(settings) => install(settings).map(Some),
    }
}

/// Sets tracing up as `settings` say (see [`init_from_env`]).
pub fn install(settings: Settings) -> Result<Telemetry, TraceInitError> {
    if INSTALLED.get().is_some() {
        return Err(TraceInitError::AlreadyInstalled);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.url.clone())
        .build()?;
    let counters = Arc::new(Counters::default());
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        counters: Arc::clone(&counters),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue_spans)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .with_span_processor(Bounded {
            inner: batch,
            counters: Arc::clone(&counters),
            capacity: settings.queue_spans,
        })
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("logrelay")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    INSTALLED
        .set(Installed { tracer, counters })
        .map_err(|_| TraceInitError::AlreadyInstalled)?;
    Ok(Telemetry { provider, settings })
}

/// Whether tracing is on in this process.
pub fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// Spans dropped so far because `OTEL_BSP_MAX_QUEUE_SIZE` spans were already in flight.
pub fn dropped() -> u64 {
    INSTALLED
        .get()
        .map_or(0, |i| i.counters.dropped.load(Ordering::Relaxed))
}

/// Spans whose export failed so far (collector down or refusing, after the exporter's
/// attempt).
pub fn failed() -> u64 {
    INSTALLED
        .get()
        .map_or(0, |i| i.counters.failed.load(Ordering::Relaxed))
}

/// What a new span descends from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// Nothing: a new trace (sampled as the sampler decides).
    Root,
    /// A span of this process, or of another one (`traceparent`): the new span joins its
    /// trace and follows its sampling decision under the default parent-based samplers.
    Of(&'a SpanContext),
}

/// Starts span `name` (one of [`names`]) under `parent`, with `attributes`; records nothing
/// when tracing is off.
pub fn start(
    name: &'static str,
    kind: Kind,
    parent: Parent<'_>,
    attributes: Vec<KeyValue>,
) -> Span {
    let Some(installed) = INSTALLED.get() else {
        return Span(None);
    };
    let cx = match parent {
        Parent::Root => Context::new(),
        Parent::Of(sc) if sc.is_valid() => Context::new().with_remote_span_context(sc.clone()),
        Parent::Of(_) => Context::new(),
    };
    let span = installed
        .tracer
        .span_builder(name)
        .with_kind(kind.into())
        .with_attributes(attributes)
        .start_with_context(&installed.tracer, &cx);
    Span(Some(span))
}

/// Like [`start`], for work that began before it was decided to trace it: the span starts at
/// `at`, and is linked to `links` (spans it relates to without descending from them).
pub fn start_at(
    name: &'static str,
    kind: Kind,
    parent: Parent<'_>,
    attributes: Vec<KeyValue>,
    at: SystemTime,
    links: &[SpanContext],
) -> Span {
    let Some(installed) = INSTALLED.get() else {
        return Span(None);
    };
    let cx = match parent {
        Parent::Of(sc) if sc.is_valid() => Context::new().with_remote_span_context(sc.clone()),
        _ => Context::new(),
    };
    let span = installed
        .tracer
        .span_builder(name)
        .with_kind(kind.into())
        .with_attributes(attributes)
        .with_start_time(at)
        .with_links(
            links
                .iter()
                .filter(|sc| sc.is_valid())
                .map(|sc| opentelemetry::trace::Link::with_context(sc.clone()))
                .collect(),
        )
        .start_with_context(&installed.tracer, &cx);
    Span(Some(span))
}

/// The wall-clock time of monotonic instant `at` (span times are wall-clock).
pub fn wall_time(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A span context's binary form (trace id, span id, trace flags), as a batch's trace frame
/// carries it (`logrelay_wire::batch::TraceFrame`).
pub fn context_bytes(sc: &SpanContext) -> ([u8; 16], [u8; 8], u8) {
    (
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    )
}

/// The remote span context of a binary trace context (see [`context_bytes`]); `None` for the
/// invalid (all-zero) ids.
pub fn context_of(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<SpanContext> {
    let sc = SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    );
    sc.is_valid().then_some(sc)
}

/// The span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work on behalf of a remote caller (a session's subscription, an agent serving an `open`).
    Server,
    /// A request to a remote side (the relay's demand to an agent).
    Client,
    /// Work inside the process.
    Internal,
    /// Handing work to a later consumer (a batch sent on).
    Producer,
    /// Taking work a producer handed on (a batch received).
    Consumer,
}

impl From<Kind> for SpanKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
            Kind::Producer => SpanKind::Producer,
            Kind::Consumer => SpanKind::Consumer,
        }
    }
}

/// A span: recorded when tracing is on and it is sampled; carrying its context (for children
/// and `traceparent`, sampled or not) whenever tracing is on. Ends when dropped.
#[derive(Debug, Default)]
pub struct Span(Option<opentelemetry_sdk::trace::Span>);

impl Span {
    /// A span that records nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether this span records (tracing on and sampled).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Its context, to start children with (sampled or not), when tracing is on.
    pub fn context(&self) -> Option<SpanContext> {
        self.0
            .as_ref()
            .map(|s| s.span_context().clone())
            .filter(SpanContext::is_valid)
    }

    /// Its W3C `traceparent` (sampled or not), when tracing is on.
    pub fn traceparent(&self) -> Option<String> {
        self.context().map(|sc| format_traceparent(&sc))
    }

    /// Sets an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(attribute);
        }
    }

    /// Adds an event (one of [`names`]) with `attributes`.
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(s) = &mut self.0 {
            s.add_event(name, attributes);
        }
    }

    /// Ends it now, with [`names::END`] set to `how`.
    pub fn end(mut self, how: &'static str) {
        if let Some(mut s) = self.0.take() {
            s.set_attribute(KeyValue::new(names::END, how));
            s.end();
        }
    }

    /// Ends it at `at` (work that ended before it was recorded), with [`names::END`] set to
    /// `how`.
    pub fn end_at(mut self, how: &'static str, at: SystemTime) {
        if let Some(mut s) = self.0.take() {
            s.set_attribute(KeyValue::new(names::END, how));
            s.end_with_timestamp(at);
        }
    }
}

pub use opentelemetry::KeyValue as Attribute;

/// An attribute with an integer value (ids and counts are `u64`; OTLP integers are `i64`).
pub fn int(key: &'static str, value: u64) -> KeyValue {
    KeyValue::new(key, i64::try_from(value).unwrap_or(i64::MAX))
}

/// An attribute with a string value.
pub fn string(key: &'static str, value: impl Into<String>) -> KeyValue {
    KeyValue::new(key, value.into())
}

/// An attribute with a boolean value.
pub fn flag(key: &'static str, value: bool) -> KeyValue {
    KeyValue::new(key, value)
}

/// `00-<trace id>-<span id>-<flags>`, the W3C Trace Context `traceparent` of `sc`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Reads a W3C Trace Context `traceparent` (version `00`, or a later one read as `00`): a
/// remote span context, or `None` when it is malformed or names the invalid (all-zero) ids.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let b = s.as_bytes();
    if b.len() < 55 {
        return None;
    }
    let version = &s[..2];
    if version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && b.len() != 55 {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&s[3..35], &s[36..52], &s[53..55]);
    if !(is_lower_hex(trace) && is_lower_hex(span) && is_lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from(u128::from_str_radix(trace, 16).ok()?);
    let span_id = SpanId::from(u64::from_str_radix(span, 16).ok()?);
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    );
    sc.is_valid().then_some(sc)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The batch processor behind an in-flight bound: a span past it is dropped and counted, so
/// ending a span never waits.
#[derive(Debug)]
struct Bounded<P = BatchSpanProcessor> {
    inner: P,
    counters: Arc<Counters>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
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
            return;
        }
        // The in-flight bound equals the batch queue's size and every queued span holds a
        // slot, so the queue has room: this hands the span over without waiting.
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing in-flight slots and counting failed spans as batches finish.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    counters: Arc<Counters>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.counters
                .failed
                .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self.counters.in_flight.fetch_sub(spans, Ordering::AcqRel);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Prometheus collector of `trace_spans_dropped_total` and `trace_spans_failed_total` (under
/// the registry's prefix): [`dropped`] and [`failed`] at each scrape, 0 while tracing is off.
#[derive(Debug, Default)]
pub struct SpanLossCollector;

impl prometheus_client::collector::Collector for SpanLossCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        for (name, help, value) in [
            (
                "trace_spans_dropped",
                "Trace spans dropped because OTEL_BSP_MAX_QUEUE_SIZE spans were already in flight",
                dropped(),
            ),
            (
                "trace_spans_failed",
                "Trace spans whose OTLP export failed",
                failed(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, TraceInitError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_env("logrelay-relay", |k| map.get(k).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")];
        assert_eq!(
            settings(&on).unwrap(),
            Some(Settings {
                url: "http://c:4318/v1/traces".into(),
                service_name: "logrelay-relay".into(),
                queue_spans: DEFAULT_QUEUE_SPANS,
            })
        );
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(settings(&[on[0], off]).unwrap(), None, "{off:?}");
        }
    }

    #[test]
    fn the_traces_endpoint_is_used_as_is_and_wins() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x/spans"),
            ("OTEL_SERVICE_NAME", "relay-eu"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.url, "http://t:9/x/spans");
        assert_eq!(s.service_name, "relay-eu");
        assert_eq!(s.queue_spans, 64);
    }

    #[test]
    fn what_cannot_be_served_is_a_clear_error() {
        let e = |vars: &[(&str, &str)]| settings(vars).unwrap_err().to_string();
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])
                .contains("https is not supported")
        );
        assert!(e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).contains("not an http:// URL"));
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ])
            .contains("only http/protobuf")
        );
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin")
            ])
            .contains("only otlp")
        );
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "0")
            ])
            .contains("positive integer")
        );
    }

    #[test]
    fn traceparent_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            format!("{}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format_traceparent(&sc), tp);
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may append fields.
        assert!(parse_traceparent(&format!("01{}-extra", &tp[2..])).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    /// A processor that keeps every span it is handed (an export that never finishes).
    #[derive(Debug, Default)]
    struct Stuck(std::sync::Mutex<Vec<String>>);

    impl SpanProcessor for Stuck {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span.name.into_owned());
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn spans_past_the_in_flight_bound_are_dropped_and_counted() {
        let counters = Arc::new(Counters::default());
        let stuck = Arc::new(Stuck::default());
        #[derive(Debug)]
        struct Shared(Arc<Stuck>);
        impl SpanProcessor for Shared {
            fn on_start(&self, s: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
                self.0.on_start(s, cx);
            }
            fn on_end(&self, span: SpanData) {
                self.0.on_end(span);
            }
            fn force_flush(&self) -> OTelSdkResult {
                Ok(())
            }
            fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
                Ok(())
            }
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: Shared(Arc::clone(&stuck)),
                counters: Arc::clone(&counters),
                capacity: 2,
            })
            .build();
        let tracer = provider.tracer("t");
        for name in ["a", "b", "c", "d"] {
            tracer.start(name).end();
        }
        assert_eq!(*stuck.0.lock().unwrap(), ["a", "b"]);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn spans_record_nothing_when_off() {
        // No test in this binary installs tracing.
        let mut s = start(
            names::RELAY_SUBSCRIPTION,
            Kind::Server,
            Parent::Root,
            vec![],
        );
        assert!(!s.is_recording());
        assert_eq!(s.traceparent(), None);
        s.event(names::EVENT_CANCEL, vec![]);
        s.end("closed");
        assert_eq!((dropped(), failed()), (0, 0));
    }
}
