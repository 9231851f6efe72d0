//! Metrics streams: Prometheus endpoints scraped, and pod resource usage sampled
//! ([`crate::cgroup`]), only while someone watches.
//!
//! # Streams
//!
//! Each scrape target and each pod's resource usage is one stream of kind `metrics` in the
//! catalog, owned by the metrics discovery loop ([`crate::discover::metrics`]). For a
//! metrics stream the `container` label names the source inside its pod:
//!
//! | source | labels |
//! | --- | --- |
//! | pod annotated `prometheus.io/scrape` | the pod's labels, `container: "scrape:<port><path>"` |
//! | static target from configuration | `node`, `container: "scrape:<name>"` |
//! | pod resource usage (cgroup v2) | the pod's labels, `container: "resources"` |
//!
//! Kubernetes container names are DNS labels, so `scrape:…` never collides with one; and these
//! labels are only ever on `metrics` streams, never on a container's log stream.
//!
//! # Demand-driven
//!
//! Nothing is fetched or read while nobody watches. The relay's `open` (follow) starts a
//! [`periodic`] task that takes a reading at once, then every interval (scrapes: the target's,
//! default 15 s; resources: `resources_interval_ms`, with a second reading after one second so
//! that CPU rates show quickly), and stops at `cancel`.
//!
//! # Encoding
//!
//! Each result is encoded once, by the agent, as ordinary log batches (kind `Log`, so every
//! existing client reads them): one record per line of Prometheus text exposition, all records
//! of a result stamped with its time. See [`encode`] for the exact form. A scrape's records
//! start with the series Prometheus synthesizes (`up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped`, flagged `system`), then a `# scrape_error …` record if it failed,
//! then each family's `# TYPE` record and samples. Sequence numbers count records.
//!
//! # Subsets
//!
//! A demand's `contains` field, on a metrics stream, lists the metric names wanted (comma or
//! blank separated, `prefix_*` allowed); the synthesized series are always sent. Results of a
//! filtered demand are not kept for backfill.

pub mod auth;
pub mod encode;
pub mod exposition;
pub mod http;
pub mod periodic;
pub mod target;

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logrelay_wire::batch::LineFlags;
use logrelay_wire::control::Demand;

use self::encode::{NameFilter, ResultEncoder};
use self::exposition::{Family, Limits};
use self::periodic::{Collector, Schedule, SourceState};
pub use self::target::{ScrapeDefaults, StaticTarget, TargetSpec};
use crate::metrics::AgentMetrics;
use crate::sink::{BatchSink, SinkClosed};

/// Bodies larger than this are parsed on the blocking pool rather than on the runtime.
const PARSE_INLINE_BYTES: usize = 256 * 1024;

/// A scrape target in the catalog: what to fetch, and its state across demands.
///
/// Two targets are the same stream when their [`TargetSpec`]s and owning pods are equal: a
/// new pod that reuses a deleted pod's IP is a new stream, with its own labels.
#[derive(Debug)]
pub struct Target {
    /// What to fetch and how.
    pub spec: TargetSpec,
    /// UID of the annotated pod it belongs to; empty for a static target.
    pub pod_uid: String,
    state: SourceState,
}

impl Target {
    /// A static target.
    pub fn new(spec: TargetSpec) -> Self {
        Self::of_pod(spec, String::new())
    }

    /// A target of the annotated pod `pod_uid`.
    pub fn of_pod(spec: TargetSpec, pod_uid: String) -> Self {
        Self {
            spec,
            pod_uid,
            state: SourceState::new(),
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.pod_uid == other.pod_uid
    }
}

impl Eq for Target {}

impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spec.hash(state);
        self.pod_uid.hash(state);
    }
}

/// Why a scrape failed (`up` is 0).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The CA or bearer token file could not be used.
    #[error(transparent)]
    Credentials(#[from] auth::CredentialsError),
    /// The HTTP exchange failed (connect, TLS handshake, timeout, status, size).
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The body is not a valid exposition, or exceeds the sample limit.
    #[error("invalid exposition: {0}")]
    Parse(#[from] exposition::ParseError),
}

/// One scrape's outcome.
#[derive(Debug)]
pub struct Scrape {
    /// Families parsed, or why there are none.
    pub result: Result<Vec<Family>, ScrapeError>,
    /// Samples the target exposed (also when over the limit).
    pub samples_scraped: usize,
    /// Wall time of the scrape.
    pub duration: Duration,
}

/// Fetches and parses one scrape of `spec`, as Prometheus does: `Accept` negotiation, grammar
/// from the response's `Content-Type`, the whole body refused on any error.
pub async fn scrape_once(spec: &TargetSpec, metrics: &AgentMetrics) -> Scrape {
    let started = tokio::time::Instant::now();
    let limits = Limits {
        max_samples: spec.sample_limit,
        ..Limits::UNLIMITED
    };
    let fetched = match auth::load(&spec.url, &spec.auth).await {
        Ok(credentials) => http::get(
            &spec.url,
            &credentials,
            exposition::ACCEPT_HEADER,
            spec.timeout,
            spec.max_body_bytes,
        )
        .await
        .map_err(ScrapeError::Http),
        Err(e) => Err(ScrapeError::Credentials(e)),
    };
    let result = match fetched {
        Err(e) => Err(e),
        Ok(resp) => {
            metrics.scrape_bytes.inc_by(resp.body.len() as u64);
            let flavor =
                exposition::flavor_from_content_type(resp.content_type.as_deref().unwrap_or(""));
            if resp.body.len() <= PARSE_INLINE_BYTES {
                exposition::parse(&resp.body, flavor, &limits)
            } else {
                crate::blocking::run(move || exposition::parse(&resp.body, flavor, &limits))
                    .await
                    .expect("the parser never panics")
            }
            .map_err(ScrapeError::Parse)
        }
    };
    let samples_scraped = match &result {
        Ok(fams) => fams.iter().map(|f| f.samples.len()).sum(),
        Err(ScrapeError::Parse(exposition::ParseError::SampleLimitExceeded {
            scraped, ..
        })) => *scraped,
        Err(_) => 0,
    };
    metrics.scrapes.inc();
    match &result {
        Ok(_) => {
            metrics.scrape_samples.inc_by(samples_scraped as u64);
        }
        Err(_) => {
            metrics.scrape_failures.inc();
        }
    }
    Scrape {
        result,
        samples_scraped,
        duration: started.elapsed(),
    }
}

/// Encodes a scrape: synthesized series first, then the families.
pub fn encode_scrape(
    timestamp_ns: i64,
    scrape: &Scrape,
    out: &mut ResultEncoder,
    filter: &NameFilter,
) {
    let system = LineFlags(LineFlags::SYSTEM);
    let up = exposition::synthesize_up(
        scrape.result.is_ok(),
        scrape.duration.as_secs_f64(),
        scrape.samples_scraped,
    );
    for family in &up {
        for s in &family.samples {
            out.sample(timestamp_ns, system, &s.name, [], s.value);
        }
    }
    match &scrape.result {
        Ok(families) => out.families(timestamp_ns, families, filter),
        Err(e) => out.comment(timestamp_ns, system, &format!("scrape_error {e}")),
    }
}

struct Scraper<'a> {
    spec: &'a TargetSpec,
    metrics: &'a AgentMetrics,
}

impl Collector for Scraper<'_> {
    type Reading = Scrape;

    async fn read(&mut self) -> (i64, Scrape) {
        let ts = unix_nanos(SystemTime::now());
        (ts, scrape_once(self.spec, self.metrics).await)
    }

    fn encode(&mut self, ts: i64, s: &Scrape, out: &mut ResultEncoder, filter: &NameFilter) {
        if let Err(e) = &s.result {
            tracing::debug!(target_url = %self.spec.url, error = %e, "scrape failed");
        }
        encode_scrape(ts, s, out, filter);
    }
}

/// Serves one demand of a scrape target (see [`periodic::serve`]).
pub async fn serve<S: BatchSink>(
    target: &Target,
    spec: &Demand,
    stream_ref: u64,
    max_batch_bytes: usize,
    sink: &mut S,
    metrics: &AgentMetrics,
) -> Result<(), SinkClosed> {
    let mut scraper = Scraper {
        spec: &target.spec,
        metrics,
    };
    periodic::serve(
        &target.state,
        &mut scraper,
        Schedule::every(target.spec.interval),
        spec,
        stream_ref,
        max_batch_bytes,
        sink,
        metrics,
    )
    .await
}

/// Checks the scrape credentials once, at start-up, and warns about unsafe ones: every static
/// target's CA and token files, and the agent-wide CA files annotated pods would use
/// (`defaults`). The first file that cannot be used is the error.
pub fn check_credentials(
    defaults: &ScrapeDefaults,
    targets: &[StaticTarget],
) -> Result<(), auth::CredentialsError> {
    auth::check_ca_files(&defaults.auth)?;
    if defaults.auth.insecure_skip_verify {
        tracing::warn!(
            "--scrape-insecure-skip-verify: TLS certificates of https scrape targets \
             (annotated pods, and static targets without insecure_skip_verify=false) are NOT \
             verified"
        );
    }
    for target in targets {
        let spec = target.spec(defaults);
        auth::check(&spec.url, &spec.auth)?;
        for warning in auth::warnings(&spec.url, &spec.auth) {
            tracing::warn!(target_url = %spec.url, "{warning}");
        }
    }
    Ok(())
}

/// Unix time in nanoseconds (0 before 1970, saturating after 2262).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
