//! The error type of [`parse`](super::parse).

/// Why [`parse`](super::parse) rejected a scrape body. Every variant carries
/// the 1-based number of the offending line (`line`); names copied into an
/// error are cut to 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A metric name, at the start of a sample line or after
    /// `# HELP`/`# TYPE`/`# UNIT`, is missing or does not match
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, or is directly followed by a character that
    /// can neither end nor continue it.
    #[error("line {line}: missing or invalid metric name")]
    InvalidMetricName {
        /// 1-based line number.
        line: usize,
    },
    /// A label name is missing or does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("line {line}: missing or invalid label name")]
    InvalidLabelName {
        /// 1-based line number.
        line: usize,
    },
    /// A label set is malformed: `=` or the opening `"` missing, no `,` or
    /// `}` after a value, a comma with no label before it, or (OpenMetrics
    /// only) a trailing comma or blanks inside the braces.
    #[error("line {line}: malformed label set: {reason}")]
    MalformedLabels {
        /// 1-based line number.
        line: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// A quoted label value reaches the end of the line without a closing `"`.
    #[error("line {line}: unterminated quoted label value")]
    UnterminatedQuote {
        /// 1-based line number.
        line: usize,
    },
    /// The same label name appears twice in one label set (of a sample or an
    /// exemplar); both specs require unique label names.
    #[error("line {line}: duplicate label name {name:?}")]
    DuplicateLabel {
        /// 1-based line number.
        line: usize,
        /// The repeated label name.
        name: String,
    },
    /// A label value or a HELP text is not valid UTF-8.
    #[error("line {line}: label value or help text is not valid UTF-8")]
    InvalidUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// The value of a sample or exemplar is missing or is not a float
    /// (decimal or exponent notation, `+Inf`, `-Inf`, `NaN`, any case).
    #[error("line {line}: missing or invalid value")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
    },
    /// The timestamp is not an `int64` of milliseconds (0.0.4), or not a
    /// finite decimal number of seconds whose milliseconds fit an `i64`
    /// (OpenMetrics, for samples and exemplars).
    #[error("line {line}: invalid timestamp")]
    InvalidTimestamp {
        /// 1-based line number.
        line: usize,
    },
    /// An exemplar is malformed, appears in a 0.0.4 body (exemplars exist
    /// only in OpenMetrics), or its label names and values together exceed
    /// 128 code points (OpenMetrics "Exemplars").
    #[error("line {line}: invalid exemplar: {reason}")]
    InvalidExemplar {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A sample line has something unexpected where a separator or the end
    /// of the line should be: no space before the value, a token after the
    /// timestamp, or (OpenMetrics) a doubled or trailing space.
    #[error("line {line}: unexpected input: {reason}")]
    UnexpectedInput {
        /// 1-based line number.
        line: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// A `# HELP`, `# TYPE` or `# UNIT` line is malformed: no type after the
    /// name, extra tokens after the type (0.0.4), or a unit that is not made
    /// of metric-name characters.
    #[error("line {line}: malformed metadata line: {reason}")]
    InvalidMetadata {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `# TYPE` line names a type the flavor does not know (0.0.4:
    /// counter, gauge, histogram, summary, untyped; OpenMetrics: counter,
    /// gauge, histogram, gaugehistogram, stateset, info, summary, unknown).
    #[error("line {line}: unknown metric type {kind:?}")]
    UnknownMetricType {
        /// 1-based line number.
        line: usize,
        /// The type token as written.
        kind: String,
    },
    /// A second `# HELP`, `# TYPE` or `# UNIT` line for the same family
    /// (0.0.4: "Only one HELP/TYPE line may exist for the same metric name";
    /// OpenMetrics: "There MUST NOT be more than one of each type of metadata
    /// line for a MetricFamily").
    #[error("line {line}: second {what} line for {name:?}")]
    DuplicateMetadata {
        /// 1-based line number.
        line: usize,
        /// Family name.
        name: String,
        /// `HELP`, `TYPE` or `UNIT`.
        what: &'static str,
    },
    /// A metadata line comes after samples of its family (0.0.4: "The TYPE
    /// line for a metric name has to appear before the first sample";
    /// OpenMetrics: descriptors precede the metrics of a family).
    #[error("line {line}: metadata for {name:?} after its samples")]
    MetadataAfterSamples {
        /// 1-based line number.
        line: usize,
        /// Family name.
        name: String,
    },
    /// A non-empty `# UNIT` is not an `_`-separated suffix of the family name
    /// (OpenMetrics "Unit").
    #[error("line {line}: unit {unit:?} is not a suffix of {name:?}")]
    UnitMismatch {
        /// 1-based line number.
        line: usize,
        /// Family name.
        name: String,
        /// Declared unit.
        unit: String,
    },
    /// A histogram `_bucket` sample has no `le` label, or a summary quantile
    /// sample no `quantile` label, or that label's value is not a float.
    #[error("line {line}: missing or non-numeric {label:?} label")]
    InvalidBoundLabel {
        /// 1-based line number.
        line: usize,
        /// `le` or `quantile`.
        label: &'static str,
    },
    /// OpenMetrics only: a line starting with `#` that is not `# HELP`,
    /// `# TYPE`, `# UNIT` or `# EOF` ("Aside from this metadata and the EOF
    /// line at the end of the message, you MUST NOT expose lines beginning
    /// with a #").
    #[error("line {line}: comment lines are not allowed in OpenMetrics")]
    InvalidComment {
        /// 1-based line number.
        line: usize,
    },
    /// OpenMetrics only: an empty line (the ABNF has none).
    #[error("line {line}: empty line in OpenMetrics exposition")]
    EmptyLine {
        /// 1-based line number.
        line: usize,
    },
    /// OpenMetrics only: the body does not end with `# EOF` ("Expositions
    /// MUST end with EOF"); `line` is the line after the last one.
    #[error("line {line}: OpenMetrics exposition does not end with # EOF")]
    MissingEof {
        /// 1-based line number.
        line: usize,
    },
    /// OpenMetrics only: anything but a single `\n` follows `# EOF`.
    #[error("line {line}: content after # EOF")]
    ContentAfterEof {
        /// 1-based line number.
        line: usize,
    },
    /// More samples than [`Limits::max_samples`](super::Limits) (Prometheus
    /// `sample_limit`); `line` is the first sample over the limit.
    #[error("line {line}: sample limit exceeded: {scraped} samples, limit {limit}")]
    SampleLimitExceeded {
        /// 1-based line number.
        line: usize,
        /// The configured limit.
        limit: usize,
        /// How many samples the body holds in total.
        scraped: usize,
    },
    /// A label value is longer than
    /// [`Limits::max_label_value_bytes`](super::Limits) (after unescaping).
    #[error("line {line}: value of label {name:?} is {len} bytes, limit {limit}")]
    LabelValueTooLong {
        /// 1-based line number.
        line: usize,
        /// Label name.
        name: String,
        /// Value length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A sample has more labels than
    /// [`Limits::max_labels_per_sample`](super::Limits).
    #[error("line {line}: more than {limit} labels on one sample")]
    TooManyLabels {
        /// 1-based line number.
        line: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl ParseError {
    /// The 1-based line number the error refers to.
    pub fn line(&self) -> usize {
        match self {
            ParseError::InvalidMetricName { line }
            | ParseError::InvalidLabelName { line }
            | ParseError::MalformedLabels { line, .. }
            | ParseError::UnterminatedQuote { line }
            | ParseError::DuplicateLabel { line, .. }
            | ParseError::InvalidUtf8 { line }
            | ParseError::InvalidValue { line }
            | ParseError::InvalidTimestamp { line }
            | ParseError::InvalidExemplar { line, .. }
            | ParseError::UnexpectedInput { line, .. }
            | ParseError::InvalidMetadata { line, .. }
            | ParseError::UnknownMetricType { line, .. }
            | ParseError::DuplicateMetadata { line, .. }
            | ParseError::MetadataAfterSamples { line, .. }
            | ParseError::UnitMismatch { line, .. }
            | ParseError::InvalidBoundLabel { line, .. }
            | ParseError::InvalidComment { line }
            | ParseError::EmptyLine { line }
            | ParseError::MissingEof { line }
            | ParseError::ContentAfterEof { line }
            | ParseError::SampleLimitExceeded { line, .. }
            | ParseError::LabelValueTooLong { line, .. }
            | ParseError::TooManyLabels { line, .. } => *line,
        }
    }
}

/// Copies at most 128 bytes of `s` (cut on a char boundary) into an error.
pub(super) fn clip(s: &str) -> String {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
