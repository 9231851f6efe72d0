//! Pure parser for scraped metric expositions: the Prometheus text format
//! 0.0.4 and the OpenMetrics 1.0 text format.
//!
//! No I/O and no clock: [`parse`] turns a response body (`&[u8]`) into
//! [`Family`] values, [`flavor_from_content_type`] picks the grammar from the
//! response's `Content-Type`, and [`synthesize_up`] builds the per-scrape
//! series that Prometheus adds itself.
//!
//! # Specifications
//!
//! * Prometheus "Exposition formats", section "Text-based format" / "Text
//!   format details" (<https://prometheus.io/docs/instrumenting/exposition_formats/>),
//!   called "0.0.4" in the docs of this module.
//! * OpenMetrics 1.0, section "Text format" and its ABNF
//!   (<https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md>),
//!   called "OpenMetrics" in the docs of this module; quotes in docs are
//!   taken verbatim from these two texts.
//!
//! # Strictness
//!
//! OpenMetrics says "Partial or invalid expositions MUST be considered
//! erroneous in their entirety", so every error rejects the whole body, in
//! both flavors. The written specs are followed, including where Prometheus'
//! own parsers are laxer: a second HELP/TYPE/UNIT for a family, metadata
//! after the family's samples, a histogram bucket without a numeric `le`, a
//! summary quantile without a numeric `quantile`, a trailing comma in an
//! OpenMetrics label set and an over-long exemplar are all errors here.
//! Deliberate leniencies: undefined escapes such as `\t` are kept verbatim
//! (the OpenMetrics ABNF's `BS normal-char`, and what Prometheus does), `{}`
//! is an empty label set, a sample named exactly like its declared family is
//! accepted for every type, a `\r` before the `\n` is tolerated in 0.0.4,
//! and samples of a family that re-appear after another family are merged
//! back into it instead of being rejected.
//!
//! # Cost
//!
//! Linear in the body: one pass over the lines, `memchr` for line ends and
//! quoted values, hash look-ups for families, `O(n log n)` duplicate-label
//! checks. [`Limits`] bound what is kept in memory.

#![warn(missing_docs)]

mod cursor;
mod error;
mod families;
mod parser;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use error::ParseError;

/// The two text grammars a scrape target may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), 0.0.4.
    Prometheus004,
    /// OpenMetrics 1.0 text format (`application/openmetrics-text; version=1.0.0`), OpenMetrics.
    OpenMetrics1,
}

impl Flavor {
    /// The canonical `Content-Type` of this flavor, as an exposer should send it.
    pub const fn content_type(self) -> &'static str {
        match self {
            Flavor::Prometheus004 => "text/plain; version=0.0.4; charset=utf-8",
            Flavor::OpenMetrics1 => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Picks the grammar for a scrape response from its `Content-Type` header.
///
/// Media type `application/openmetrics-text` (any case, any parameters, any
/// `version`) selects [`Flavor::OpenMetrics1`], as Prometheus does; anything
/// else, including a missing or unparsable header, falls back to
/// [`Flavor::Prometheus004`] (0.0.4: "A missing `version` value will lead
/// to a fall-back to the most recent text format version").
pub fn flavor_from_content_type(ct: &str) -> Flavor {
    let media_type = ct.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
        Flavor::OpenMetrics1
    } else {
        Flavor::Prometheus004
    }
}

/// The `Accept` header Prometheus sends on a scrape: OpenMetrics 1.0.0
/// preferred, then OpenMetrics 0.0.1, then text 0.0.4, then anything.
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Type of a metric family, from its `# TYPE` line.
///
/// 0.0.4 knows `counter`, `gauge`, `histogram`, `summary` and `untyped`
/// (mapped to [`MetricType::Unknown`]); OpenMetrics knows `counter`, `gauge`,
/// `histogram`, `gaugehistogram`, `stateset`, `info`, `summary` and
/// `unknown`. A family without a `# TYPE` line is [`MetricType::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `counter`: samples `<name>_total` and `<name>_created` in OpenMetrics, `<name>` in 0.0.4.
    Counter,
    /// `gauge`: samples named exactly `<name>`.
    Gauge,
    /// `histogram`: `<name>_bucket` (with `le`), `<name>_sum`, `<name>_count`, `<name>_created`.
    Histogram,
    /// `gaugehistogram` (OpenMetrics only): `<name>_bucket` (with `le`), `<name>_gsum`, `<name>_gcount`.
    GaugeHistogram,
    /// `summary`: `<name>` (with `quantile`), `<name>_sum`, `<name>_count`, `<name>_created`.
    Summary,
    /// `info` (OpenMetrics only): `<name>_info`, value 1.
    Info,
    /// `stateset` (OpenMetrics only): `<name>{<name>="state"}`, value 0 or 1.
    StateSet,
    /// `unknown` (OpenMetrics), `untyped` (0.0.4), or no `# TYPE` line at all.
    Unknown,
}

impl MetricType {
    /// The OpenMetrics spelling of the type (`untyped` is spelled `unknown`).
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "unknown",
        }
    }

    /// Parses the type token of a `# TYPE` line in the given flavor
    /// (case-sensitive, as both specs spell the types in lowercase).
    pub fn from_type_token(token: &str, flavor: Flavor) -> Option<MetricType> {
        let kind = match (token, flavor) {
            ("counter", _) => MetricType::Counter,
            ("gauge", _) => MetricType::Gauge,
            ("histogram", _) => MetricType::Histogram,
            ("summary", _) => MetricType::Summary,
            ("untyped", Flavor::Prometheus004) => MetricType::Unknown,
            ("unknown", Flavor::OpenMetrics1) => MetricType::Unknown,
            ("gaugehistogram", Flavor::OpenMetrics1) => MetricType::GaugeHistogram,
            ("info", Flavor::OpenMetrics1) => MetricType::Info,
            ("stateset", Flavor::OpenMetrics1) => MetricType::StateSet,
            _ => return None,
        };
        Some(kind)
    }

    /// Sample-name suffixes that put a sample into a family of this type
    /// (OpenMetrics "Suffixes"), besides the family name itself, which is always
    /// accepted.
    pub const fn sample_suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Counter => &["_total", "_created"],
            MetricType::Histogram => &["_bucket", "_sum", "_count", "_created"],
            MetricType::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            MetricType::Summary => &["_sum", "_count", "_created"],
            MetricType::Info => &["_info"],
            MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => &[],
        }
    }
}

/// One sample line: a series identity (name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Full sample name, suffix included (`http_request_duration_seconds_bucket`).
    pub name: String,
    /// Labels in exposition order, values unescaped (`\\`, `\"`, `\n`).
    pub labels: Vec<(String, String)>,
    /// The value; `+Inf`, `-Inf` and `NaN` included.
    pub value: f64,
    /// Explicit timestamp in milliseconds since the epoch: as written in
    /// 0.0.4, converted from float seconds (truncated toward zero) in OpenMetrics.
    pub timestamp_ms: Option<i64>,
    /// The OpenMetrics exemplar after ` # `, if any (never set in 0.0.4).
    pub exemplar: Option<Exemplar>,
}

/// An OpenMetrics exemplar: `# {trace_id="abc"} 1.0 1520879607.789` after a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Exemplar labels (at most 128 code points of names and values together).
    pub labels: Vec<(String, String)>,
    /// Exemplar value.
    pub value: f64,
    /// Exemplar timestamp, converted from float seconds to milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// A metric family: its metadata and every sample that belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Family name: the name of its `# TYPE`/`# HELP`/`# UNIT` lines, or the
    /// sample name for a family that has no metadata.
    pub name: String,
    /// Declared type, [`MetricType::Unknown`] without a `# TYPE` line.
    pub kind: MetricType,
    /// Unescaped `# HELP` text. OpenMetrics: an empty HELP counts as absent.
    pub help: Option<String>,
    /// OpenMetrics `# UNIT` (always a `_`-separated suffix of `name`); an empty UNIT counts as absent.
    pub unit: Option<String>,
    /// Samples in exposition order.
    pub samples: Vec<Sample>,
}

/// Bounds on one scrape, so a hostile or broken target cannot make the
/// agent keep unbounded data. `0` means unlimited for every field, as in
/// Prometheus' scrape config (its defaults are all 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Prometheus `sample_limit`: more samples than this fails the whole
    /// scrape with [`ParseError::SampleLimitExceeded`]; 0 = unlimited.
    pub max_samples: usize,
    /// Prometheus `label_value_length_limit`: longest unescaped label value,
    /// in bytes; 0 = unlimited.
    pub max_label_value_bytes: usize,
    /// Prometheus `label_limit`: most labels on one sample (name excluded);
    /// 0 = unlimited.
    pub max_labels_per_sample: usize,
}

impl Limits {
    /// No limit at all (the same as `Limits::default()`).
    pub const UNLIMITED: Limits = Limits {
        max_samples: 0,
        max_label_value_bytes: 0,
        max_labels_per_sample: 0,
    };
}

/// Parses one scrape body in the given flavor.
///
/// Samples are grouped into the [`Family`] of their base name when a
/// `# TYPE` line declared that family and the sample's suffix belongs to the
/// type (see [`MetricType::sample_suffixes`]); a sample of no declared family
/// goes into a [`MetricType::Unknown`] family named after the sample.
/// Families come out in order of first appearance.
///
/// In [`Flavor::OpenMetrics1`] the body must end with `# EOF` (optionally
/// followed by one `\n`), may contain no empty line and no `#` line other
/// than `HELP`, `TYPE`, `UNIT` and `EOF`, and is single-space separated. In
/// [`Flavor::Prometheus004`] blanks and tabs may separate tokens, empty lines
/// and other comments are ignored, and `# EOF` is an ordinary comment.
///
/// When `limits.max_samples` is exceeded, parsing goes on without keeping
/// samples, so the error reports the total the target exposed (what
/// Prometheus puts in `scrape_samples_scraped`), unless a syntax error comes
/// later, which then wins.
///
/// Never panics, whatever the input.
pub fn parse(body: &[u8], flavor: Flavor, limits: &Limits) -> Result<Vec<Family>, ParseError> {
    parser::parse(body, flavor, limits)
}

/// The series Prometheus writes for every scrape itself (Prometheus docs,
/// "Jobs and instances", "Automatically generated labels and time series"):
/// `up` (1 if the scrape succeeded, else 0), `scrape_duration_seconds` and
/// `scrape_samples_scraped` (the number of samples the target exposed), each
/// as an unlabelled gauge without timestamp. The caller adds the target
/// labels (`job`, `instance`) and the scrape timestamp.
pub fn synthesize_up(
    up: bool,
    scrape_duration_seconds: f64,
    samples_scraped: usize,
) -> Vec<Family> {
    fn gauge(name: &str, help: &str, value: f64) -> Family {
        Family {
            name: name.to_owned(),
            kind: MetricType::Gauge,
            help: Some(help.to_owned()),
            unit: None,
            samples: vec![Sample {
                name: name.to_owned(),
                labels: Vec::new(),
                value,
                timestamp_ms: None,
                exemplar: None,
            }],
        }
    }
    vec![
        gauge(
            "up",
            "Health of the scrape target: 1 if the scrape succeeded, 0 otherwise.",
            if up { 1.0 } else { 0.0 },
        ),
        gauge(
            "scrape_duration_seconds",
            "Duration of the scrape in seconds.",
            scrape_duration_seconds,
        ),
        gauge(
            "scrape_samples_scraped",
            "Number of samples the target exposed.",
            // Exact up to 2^53 samples, far beyond any body that fits in memory.
            samples_scraped as f64,
        ),
    ]
}
