//! Encoding of metrics results into subscriber-facing batches (pure).
//!
//! A metrics result (one scrape, or one resource sample) becomes ordinary log batches
//! ([`logrelay_wire::batch`], kind `Log`), one record per line of Prometheus text exposition:
//!
//! ```text
//! up 1                                           flags: system
//! scrape_duration_seconds 0.0042                 flags: system
//! scrape_samples_scraped 507                     flags: system
//! # TYPE node_cpu_seconds_total counter
//! node_cpu_seconds_total{cpu="0",mode="idle"} 5.83e5
//! ```
//!
//! * Every record of a result carries the same timestamp (the scrape's start, as Prometheus
//!   stamps samples), unless the target gave a sample its own timestamp.
//! * Results are told apart by their timestamps; a scrape starts with its system-flagged
//!   `up` record.
//! * A record longer than the batch limit is cut there and flagged truncated, so that no
//!   batch exceeds a frame whatever the target sends.
//! * Label values are escaped as the text format requires (`\\`, `\"`, `\n`); values are
//!   written as Go's `strconv.FormatFloat(v, 'g', -1)` would read them (`+Inf`, `-Inf`, `NaN`).
//! * Exemplars, `# HELP` and `# UNIT` are not forwarded.
//!
//! A large result is split into several batches of at most `max_batch_bytes` each.

use bytes::Bytes;
use logrelay_wire::batch::{BatchBuilder, HEADER_LEN, LINE_HEADER_LEN, LineFlags};

use super::exposition::{Family, MetricType};

/// Which metric names a subscriber asked for.
///
/// Parsed from a demand's `contains` field on metrics streams: names separated by commas or
/// blanks; a trailing `*` matches a prefix (`node_cpu_*`). A sample is kept when its family
/// name or its own name matches. Absent or empty: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl NameFilter {
    /// Parses a filter; `None` or only separators keeps everything.
    pub fn parse(spec: Option<&str>) -> Self {
        let mut f = Self::default();
        for name in spec
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            match name.strip_suffix('*') {
                Some(p) => f.prefixes.push(p.to_owned()),
                None => f.exact.push(name.to_owned()),
            }
        }
        f
    }

    /// True when no name was given.
    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// True when a series called `name` is wanted.
    pub fn keeps(&self, name: &str) -> bool {
        self.is_all()
            || self.exact.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// True when any sample of `family` may be wanted.
    fn keeps_family(&self, family: &Family) -> bool {
        self.keeps(&family.name) || family.samples.iter().any(|s| self.keeps(&s.name))
    }
}

/// Builds the batches of one result, splitting at `max_batch_bytes`.
#[derive(Debug)]
pub struct ResultEncoder {
    stream_ref: u64,
    epoch: u64,
    flags: u8,
    max_batch_bytes: usize,
    next_seq: u64,
    builder: Option<BatchBuilder>,
    batches: Vec<Bytes>,
    line: Vec<u8>,
    records: u64,
}

impl ResultEncoder {
    /// Starts a result whose first record gets sequence number `first_seq`.
    pub fn new(
        stream_ref: u64,
        epoch: u64,
        first_seq: u64,
        flags: u8,
        max_batch_bytes: usize,
    ) -> Self {
        Self {
            stream_ref,
            epoch,
            flags,
            max_batch_bytes: max_batch_bytes.max(1024),
            next_seq: first_seq,
            builder: None,
            batches: Vec::new(),
            line: Vec::with_capacity(256),
            records: 0,
        }
    }

    /// Appends `# TYPE <family> <type>` (nothing for untyped families).
    pub fn type_line(&mut self, timestamp_ns: i64, family: &str, kind: MetricType) {
        if kind == MetricType::Unknown {
            return;
        }
        self.line.clear();
        self.line.extend_from_slice(b"# TYPE ");
        self.line.extend_from_slice(family.as_bytes());
        self.line.push(b' ');
        self.line.extend_from_slice(kind.as_str().as_bytes());
        self.line.push(b'\n');
        self.flush_line(timestamp_ns, LineFlags(0));
    }

    /// Appends a comment record `# <text>` (line breaks in `text` become spaces).
    pub fn comment(&mut self, timestamp_ns: i64, flags: LineFlags, text: &str) {
        self.line.clear();
        self.line.extend_from_slice(b"# ");
        self.line
            .extend(text.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
        self.line.push(b'\n');
        self.flush_line(timestamp_ns, flags);
    }

    /// Appends one sample `name{labels} value`.
    pub fn sample<'l>(
        &mut self,
        timestamp_ns: i64,
        flags: LineFlags,
        name: &str,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        value: f64,
    ) {
        self.line.clear();
        write_sample(&mut self.line, name, labels, value);
        self.flush_line(timestamp_ns, flags);
    }

    /// Appends every wanted sample of `families`, each family after its `# TYPE` record.
    pub fn families(&mut self, timestamp_ns: i64, families: &[Family], filter: &NameFilter) {
        for family in families {
            if !filter.keeps_family(family) {
                continue;
            }
            let keep_all = filter.keeps(&family.name);
            let mut typed = false;
            for s in &family.samples {
                if !keep_all && !filter.keeps(&s.name) {
                    continue;
                }
                if !typed {
                    self.type_line(timestamp_ns, &family.name, family.kind);
                    typed = true;
                }
                let ts = s
                    .timestamp_ms
                    .map_or(timestamp_ns, |ms| ms.saturating_mul(1_000_000));
                self.sample(
                    ts,
                    LineFlags(0),
                    &s.name,
                    s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    s.value,
                );
            }
        }
    }

    fn flush_line(&mut self, timestamp_ns: i64, mut flags: LineFlags) {
        let max_line = self.max_batch_bytes - HEADER_LEN - LINE_HEADER_LEN;
        if self.line.len() > max_line {
            self.line.truncate(max_line);
            flags.0 |= LineFlags::TRUNCATED;
        }
        let full = self.builder.as_ref().is_some_and(|b| {
            !b.is_empty()
                && b.encoded_len() + LINE_HEADER_LEN + self.line.len() > self.max_batch_bytes
        });
        if full {
            self.finish_batch();
        }
        let builder = self.builder.get_or_insert_with(|| {
            BatchBuilder::new(
                self.stream_ref,
                self.epoch,
                self.next_seq,
                self.flags,
                self.max_batch_bytes.min(64 * 1024),
            )
        });
        builder.push(timestamp_ns, flags, &self.line);
        self.records += 1;
    }

    fn finish_batch(&mut self) {
        if let Some(b) = self.builder.take() {
            self.next_seq = b.next_seq();
            self.batches.push(b.finish());
        }
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The batches, and the sequence number of the record after the last one.
    pub fn finish(mut self) -> (Vec<Bytes>, u64) {
        self.finish_batch();
        (self.batches, self.next_seq)
    }
}

/// Writes `name{k="v",…} value\n` in the text exposition format.
pub fn write_sample<'l>(
    out: &mut Vec<u8>,
    name: &str,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    value: f64,
) {
    out.extend_from_slice(name.as_bytes());
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        for b in v.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'"' => out.extend_from_slice(b"\\\""),
                b'\n' => out.extend_from_slice(b"\\n"),
                _ => out.push(b),
            }
        }
        out.push(b'"');
    }
    if !first {
        out.push(b'}');
    }
    out.push(b' ');
    write_value(out, value);
    out.push(b'\n');
}

/// Writes a float as the text formats spell it: shortest round-trip digits, exponent notation
/// outside `[1e-4, 1e15)`, `+Inf`, `-Inf`, `NaN`.
pub fn write_value(out: &mut Vec<u8>, v: f64) {
    use std::io::Write;
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v == 0.0 || (1e-4..1e15).contains(&v.abs()) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::{Flavor, Limits, parse};
    use super::*;
    use logrelay_wire::batch;
    use proptest::prelude::*;

    fn text(batches: &[Bytes]) -> String {
        let mut s = String::new();
        for b in batches {
            for l in batch::lines(b).unwrap().1 {
                s.push_str(std::str::from_utf8(l.message).unwrap());
            }
        }
        s
    }

    #[test]
    fn samples_are_escaped_and_values_spelled_as_text_format() {
        let mut out = Vec::new();
        write_sample(&mut out, "a:b", [("p", "C:\\x \"y\"\nz")], 1027.0);
        write_sample(&mut out, "inf", [], f64::INFINITY);
        write_sample(&mut out, "small", [], 1.5e-9);
        write_sample(&mut out, "big", [], 1.7560473e20);
        write_sample(&mut out, "nan", [("a", ""), ("b", "}")], f64::NAN);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a:b{p=\"C:\\\\x \\\"y\\\"\\nz\"} 1027\ninf +Inf\nsmall 1.5e-9\nbig 1.7560473e20\n\
             nan{a=\"\",b=\"}\"} NaN\n"
        );
    }

    #[test]
    fn name_filter_exact_and_prefix() {
        let f = NameFilter::parse(Some("up, node_cpu_*  go_goroutines"));
        assert!(f.keeps("up"));
        assert!(f.keeps("node_cpu_seconds_total"));
        assert!(f.keeps("go_goroutines"));
        assert!(!f.keeps("node_memory_MemTotal_bytes"));
        assert!(NameFilter::parse(Some(" , ")).is_all());
        assert!(NameFilter::parse(None).keeps("anything"));
    }

    const BODY: &str = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
        h_sum 3\nh_count 2\n# TYPE g gauge\ng{x=\"a\\\"}\"} 4 1700000000123\nplain 5\n";

    #[test]
    fn families_keep_type_lines_and_explicit_timestamps() {
        let fams = parse(BODY.as_bytes(), Flavor::Prometheus004, &Limits::UNLIMITED).unwrap();
        let mut e = ResultEncoder::new(9, 7, 100, 0, 64 * 1024);
        e.families(42, &fams, &NameFilter::default());
        assert_eq!(e.records(), 8);
        let (batches, next) = e.finish();
        assert_eq!((batches.len(), next), (1, 108));
        let (h, lines) = batch::lines(&batches[0]).unwrap();
        assert_eq!((h.stream, h.epoch, h.first_seq), (9, 7, 100));
        assert_eq!(lines[6].timestamp_ns, 1_700_000_000_123_000_000);
        assert_eq!(lines[0].timestamp_ns, 42);
        let t = text(&batches);
        assert!(
            t.starts_with("# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"),
            "{t}"
        );
        assert!(
            t.ends_with("# TYPE g gauge\ng{x=\"a\\\"}\"} 4\nplain 5\n"),
            "{t}"
        );
    }

    #[test]
    fn filter_drops_families_and_their_type_lines() {
        let fams = parse(BODY.as_bytes(), Flavor::Prometheus004, &Limits::UNLIMITED).unwrap();
        let mut e = ResultEncoder::new(1, 1, 0, 0, 64 * 1024);
        e.families(0, &fams, &NameFilter::parse(Some("h_count,plain")));
        let (b, _) = e.finish();
        assert_eq!(text(&b), "# TYPE h histogram\nh_count 2\nplain 5\n");
    }

    #[test]
    fn large_results_split_into_consecutive_batches() {
        let mut e = ResultEncoder::new(1, 1, 10, 0, 1024);
        for i in 0..500 {
            e.sample(
                0,
                LineFlags(0),
                "metric_with_a_long_name",
                [("i", "x")],
                f64::from(i),
            );
        }
        e.sample(0, LineFlags(0), "huge", [("v", &*"x".repeat(5000))], 1.0);
        let (batches, next) = e.finish();
        assert!(batches.len() > 10);
        let mut seq = 10;
        for b in &batches {
            assert!(b.len() <= 1024);
            let (h, _) = batch::lines(b).unwrap();
            assert_eq!(h.first_seq, seq);
            seq = h.end_seq();
        }
        assert_eq!((seq, next), (511, 511));
        let (_, last) = batch::lines(batches.last().unwrap()).unwrap();
        assert!(last[0].flags.has(LineFlags::TRUNCATED));
        assert_eq!(last[0].message.len(), 1024 - HEADER_LEN - LINE_HEADER_LEN);
    }

    proptest! {
        /// Whatever is encoded reads back through the parser as the same samples.
        #[test]
        fn encoded_records_parse_back(
            samples in proptest::collection::vec((
                "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}",
                proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,5}", "[ -~\n\u{e9}]{0,8}", 0..3),
                any::<f64>(),
            ), 1..20)
        ) {
            let mut e = ResultEncoder::new(1, 1, 0, 0, 2048);
            for (n, l, v) in &samples {
                e.sample(0, LineFlags(0), n, l.iter().map(|(k, v)| (k.as_str(), v.as_str())), *v);
            }
            let (batches, _) = e.finish();
            let body = text(&batches);
            let fams = parse(body.as_bytes(), Flavor::Prometheus004, &Limits::UNLIMITED).unwrap();
            let got: Vec<_> = fams.iter().flat_map(|f| &f.samples).collect();
            // Families regroup samples by name; compare as multisets of (name, labels, value bits).
            let mut want: Vec<String> = samples.iter().map(|(n, l, v)| format!("{n}{l:?}{}", v.to_bits())).collect();
            let mut have: Vec<String> = got.iter().map(|s| {
                let l: std::collections::BTreeMap<_, _> = s.labels.iter().cloned().collect();
                let bits = if s.value.is_nan() { f64::NAN.to_bits() } else { s.value.to_bits() };
                format!("{}{l:?}{bits}", s.name)
            }).collect();
            for w in want.iter_mut() {
                // NaNs of any payload are written as `NaN`.
                if let Some(i) = w.rfind('}') {
                    let bits: u64 = w[i + 1..].parse().unwrap();
                    if f64::from_bits(bits).is_nan() {
                        *w = format!("{}{}", &w[..=i], f64::NAN.to_bits());
                    }
                }
            }
            want.sort();
            have.sort();
            prop_assert_eq!(want, have);
        }
    }
}
