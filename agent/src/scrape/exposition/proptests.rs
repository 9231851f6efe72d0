//! Property tests: round trips through the `prometheus-client` encoders
//! (OpenMetrics and 0.0.4), and arbitrary input never panicking.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family as PcFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use proptest::prelude::*;

use super::*;

type LabelSet = Vec<(String, String)>;

/// Label values full of characters that need escaping or look like syntax.
const LABEL_VALUE: &str = r#"[a-zA-Z0-9 "\\\n}{,=#\t\r\x00é日]{0,12}"#;

/// Distinct label names; `le` and `quantile` are left out because the
/// encoders add them to buckets and quantiles.
fn label_set(max: usize) -> impl Strategy<Value = LabelSet> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,6}", LABEL_VALUE, 0..max).prop_map(|m| {
        m.into_iter()
            .filter(|(name, _)| name != "le" && name != "quantile")
            .collect()
    })
}

/// Distinct label sets, one per series of a family.
fn series<V: Strategy>(value: V) -> impl Strategy<Value = Vec<(LabelSet, V::Value)>>
where
    V::Value: Clone,
{
    prop::collection::btree_map(label_set(4), value, 0..4).prop_map(|m| m.into_iter().collect())
}

#[derive(Debug, Clone)]
struct CounterPoint {
    value: f64,
    /// Exemplar labels, value and timestamp in milliseconds.
    exemplar: Option<(LabelSet, f64, Option<u64>)>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Series, and whether they carry exemplars (integer values then).
    Counter(Vec<(LabelSet, CounterPoint)>, bool),
    Gauge(Vec<(LabelSet, f64)>),
    Histogram {
        bounds: Vec<f64>,
        series: Vec<(LabelSet, Vec<f64>)>,
    },
    Info(LabelSet),
}

#[derive(Debug, Clone)]
struct Spec {
    /// Unique per spec thanks to an `m<i>_` prefix added later.
    name: String,
    help: String,
    seconds: bool,
    kind: Kind,
}

fn gauge_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        2 => (-1000i32..1000).prop_map(f64::from),
    ]
}

/// A float counter point (`Counter<f64>`, which has no exemplars).
fn float_counter_point() -> impl Strategy<Value = CounterPoint> {
    prop_oneof![0.0f64..1e15, (0u32..100_000).prop_map(f64::from)].prop_map(|value| CounterPoint {
        value,
        exemplar: None,
    })
}

/// An integer counter point with an optional exemplar
/// (`CounterWithExemplar<_, u64>`, the only exemplar counter that is a
/// `TypedMetric`).
fn exemplar_counter_point() -> impl Strategy<Value = CounterPoint> {
    let exemplar_labels =
        prop::collection::btree_map("[a-z_]{1,6}", r#"[a-z0-9"\\}{ é]{0,10}"#, 0..3)
            .prop_map(|m| m.into_iter().collect::<LabelSet>());
    (
        0u32..1_000_000,
        prop::option::of((exemplar_labels, prop::option::of(0u64..4_000_000_000_000))),
    )
        .prop_map(|(value, exemplar)| CounterPoint {
            value: f64::from(value),
            exemplar: exemplar.map(|(labels, ts)| (labels, f64::from(value), ts)),
        })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        series(float_counter_point()).prop_map(|s| Kind::Counter(s, false)),
        series(exemplar_counter_point()).prop_map(|s| Kind::Counter(s, true)),
        series(gauge_value()).prop_map(Kind::Gauge),
        (
            prop::collection::vec(-1e3f64..1e3, 0..5),
            series(prop::collection::vec(-2e3f64..2e3, 0..6)),
        )
            .prop_map(|(mut bounds, series)| {
                bounds.sort_by(f64::total_cmp);
                bounds.dedup();
                Kind::Histogram { bounds, series }
            }),
        label_set(4).prop_map(Kind::Info),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        "[a-z][a-z0-9_]{0,8}",
        "[a-zA-Z0-9 ]{0,16}",
        any::<bool>(),
        kind(),
    )
        .prop_map(|(name, help, seconds, kind)| Spec {
            name,
            help,
            // Info families must not have a unit (OpenMetrics "Info").
            seconds: seconds && !matches!(kind, Kind::Info(_)),
            kind,
        })
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(spec(), 0..6).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.name = format!("m{i}_{}", s.name);
                s
            })
            .collect()
    })
}

fn register(
    registry: &mut Registry,
    spec: &Spec,
    metric: impl prometheus_client::registry::Metric,
) {
    if spec.seconds {
        registry.register_with_unit(&spec.name, &spec.help, Unit::Seconds, metric);
    } else {
        registry.register(&spec.name, &spec.help, metric);
    }
}

fn build_registry(specs: &[Spec]) -> Registry {
    let mut registry = Registry::default();
    for spec in specs {
        match &spec.kind {
            Kind::Counter(series, false) => {
                let family = PcFamily::<LabelSet, Counter<f64, AtomicU64>>::default();
                for (labels, point) in series {
                    family.get_or_create(labels).inc_by(point.value);
                }
                register(&mut registry, spec, family);
            }
            Kind::Counter(series, true) => {
                let family = PcFamily::<LabelSet, CounterWithExemplar<LabelSet>>::default();
                for (labels, point) in series {
                    let (exemplar_labels, exemplar_time) = match &point.exemplar {
                        Some((labels, _, ts)) => (
                            Some(labels.clone()),
                            ts.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
                        ),
                        None => (None, None),
                    };
                    // Integral by construction (see `exemplar_counter_point`).
                    let value = point.value as u64;
                    family
                        .get_or_create(labels)
                        .inc_by(value, exemplar_labels, exemplar_time);
                }
                register(&mut registry, spec, family);
            }
            Kind::Gauge(series) => {
                let family = PcFamily::<LabelSet, Gauge<f64, AtomicU64>>::default();
                for (labels, value) in series {
                    family.get_or_create(labels).set(*value);
                }
                register(&mut registry, spec, family);
            }
            Kind::Histogram { bounds, series } => {
                let b = bounds.clone();
                let family = PcFamily::<LabelSet, Histogram, _>::new_with_constructor(move || {
                    Histogram::new(b.iter().copied())
                });
                for (labels, observations) in series {
                    let h = family.get_or_create(labels);
                    for &o in observations {
                        h.observe(o);
                    }
                }
                register(&mut registry, spec, family);
            }
            Kind::Info(labels) => register(&mut registry, spec, Info::new(labels.clone())),
        }
    }
    registry
}

/// What a family should parse back into.
#[derive(Debug)]
struct Expected {
    name: String,
    kind: MetricType,
    help: String,
    unit: Option<&'static str>,
    samples: Vec<Sample>,
}

fn plain(name: String, labels: LabelSet, value: f64) -> Sample {
    Sample {
        name,
        labels,
        value,
        timestamp_ms: None,
        exemplar: None,
    }
}

fn with_label(labels: &LabelSet, name: &str, value: String) -> LabelSet {
    let mut l = labels.clone();
    l.push((name.to_owned(), value));
    l
}

/// The samples `prometheus-client` writes for `spec`, in either flavor.
fn expected(spec: &Spec, flavor: Flavor) -> Expected {
    let om = flavor == Flavor::OpenMetrics1;
    let base = if spec.seconds {
        format!("{}_seconds", spec.name)
    } else {
        spec.name.clone()
    };
    let unit = (om && spec.seconds).then_some("seconds");
    let mut help = format!("{}.", spec.help);
    if !om {
        // 0.0.4 docstrings are tokens: leading blanks are not part of them.
        help = help.trim_start_matches([' ', '\t']).to_owned();
    }
    let (name, kind, samples) = match &spec.kind {
        Kind::Counter(series, _) => {
            let sample_name = format!("{base}_total");
            let samples =
                series
                    .iter()
                    .map(|(labels, point)| Sample {
                        exemplar: point.exemplar.as_ref().filter(|_| om).map(|(l, v, ts)| {
                            Exemplar {
                                labels: l.clone(),
                                value: *v,
                                timestamp_ms: ts.map(|ms| ms as i64),
                            }
                        }),
                        ..plain(sample_name.clone(), labels.clone(), point.value)
                    })
                    .collect();
            // 0.0.4 names the family after its sample.
            let family = if om { base } else { sample_name };
            (family, MetricType::Counter, samples)
        }
        Kind::Gauge(series) => {
            let samples = series
                .iter()
                .map(|(labels, v)| plain(base.clone(), labels.clone(), *v))
                .collect();
            (base, MetricType::Gauge, samples)
        }
        Kind::Histogram { bounds, series } => {
            let mut samples = Vec::new();
            let all_bounds: Vec<f64> = bounds.iter().copied().chain([f64::INFINITY]).collect();
            for (labels, observations) in series {
                let mut counts = vec![0u64; all_bounds.len()];
                let mut sum = 0.0;
                for &o in observations {
                    sum += o;
                    if let Some(i) = all_bounds.iter().position(|&b| b >= o) {
                        counts[i] += 1;
                    }
                }
                let mut cumulative = 0;
                for (bound, count) in all_bounds.iter().zip(counts) {
                    cumulative += count;
                    // `le` is compared numerically, see `normalize`.
                    let le = with_label(labels, "le", bound.to_string());
                    samples.push(plain(format!("{base}_bucket"), le, cumulative as f64));
                }
                samples.push(plain(format!("{base}_sum"), labels.clone(), sum));
                let count = observations.len() as f64;
                samples.push(plain(format!("{base}_count"), labels.clone(), count));
            }
            (base, MetricType::Histogram, samples)
        }
        Kind::Info(labels) => {
            let name = format!("{base}_info");
            let samples = vec![plain(name.clone(), labels.clone(), 1.0)];
            if om {
                (base, MetricType::Info, samples)
            } else {
                (name, MetricType::Gauge, samples)
            }
        }
    };
    Expected {
        name,
        kind,
        help,
        unit,
        samples,
    }
}

/// Sorts labels by name and puts `le` values in one numeric spelling, then
/// sorts samples, so that encoder ordering choices do not matter.
fn normalize(samples: &[Sample]) -> Vec<Sample> {
    let mut out: Vec<Sample> = samples
        .iter()
        .map(|s| {
            let mut s = s.clone();
            for (name, value) in &mut s.labels {
                if name == "le" {
                    let v = parse_float(value.as_bytes()).unwrap_or(f64::NAN);
                    *value = v.to_string();
                }
            }
            s.labels.sort();
            s
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    out
}

use super::cursor::parse_float;

fn same_value(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn check_round_trip(specs: &[Spec], flavor: Flavor) -> Result<(), TestCaseError> {
    let registry = build_registry(specs);
    let mut body = String::new();
    match flavor {
        Flavor::OpenMetrics1 => text::encode(&mut body, &registry),
        Flavor::Prometheus004 => prometheus_text::encode(&mut body, &registry),
    }
    .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    let families = parse(body.as_bytes(), flavor, &Limits::UNLIMITED)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
    // `prometheus-client` writes nothing, not even metadata, for a family
    // without series.
    let emitted: Vec<&Spec> = specs
        .iter()
        .filter(|spec| match &spec.kind {
            Kind::Counter(series, _) => !series.is_empty(),
            Kind::Gauge(series) => !series.is_empty(),
            Kind::Histogram { series, .. } => !series.is_empty(),
            Kind::Info(_) => true,
        })
        .collect();
    prop_assert_eq!(families.len(), emitted.len(), "{}", body);
    for (spec, got) in emitted.into_iter().zip(&families) {
        let want = expected(spec, flavor);
        prop_assert_eq!(&got.name, &want.name, "{}", body);
        prop_assert_eq!(got.kind, want.kind);
        prop_assert_eq!(got.help.as_deref(), Some(want.help.as_str()));
        prop_assert_eq!(got.unit.as_deref(), want.unit);
        let (got_samples, want_samples) = (normalize(&got.samples), normalize(&want.samples));
        prop_assert_eq!(got_samples.len(), want_samples.len(), "{}", body);
        for (g, w) in got_samples.iter().zip(&want_samples) {
            prop_assert_eq!(&g.name, &w.name, "{}", body);
            prop_assert_eq!(&g.labels, &w.labels, "{}", body);
            prop_assert!(
                same_value(g.value, w.value),
                "{} != {}\n{}",
                g.value,
                w.value,
                body
            );
            prop_assert_eq!(g.timestamp_ms, None);
            match (&g.exemplar, &w.exemplar) {
                (None, None) => {}
                (Some(ge), Some(we)) => {
                    prop_assert_eq!(&ge.labels, &we.labels);
                    prop_assert!(same_value(ge.value, we.value));
                    match (ge.timestamp_ms, we.timestamp_ms) {
                        (None, None) => {}
                        // Exemplar times go through `as_secs_f64`, which may
                        // land one ulp below the millisecond.
                        (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1, "{} vs {}", a, b),
                        other => prop_assert!(false, "exemplar timestamps {:?}", other),
                    }
                }
                other => prop_assert!(false, "exemplars {:?}\n{}", other, body),
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn prometheus_client_openmetrics_round_trip(specs in specs()) {
        check_round_trip(&specs, Flavor::OpenMetrics1)?;
    }

    #[test]
    fn prometheus_client_text_004_round_trip(specs in specs()) {
        check_round_trip(&specs, Flavor::Prometheus004)?;
    }
}

// ---------------------------------------------------------------------------
// Robustness.

/// Pieces of exposition syntax, so that random bodies reach deep states.
const FRAGMENTS: &[&str] = &[
    "# TYPE ",
    "# HELP ",
    "# UNIT ",
    "# EOF",
    "#",
    "\n",
    "\r",
    " ",
    "\t",
    "{",
    "}",
    "=",
    "\"",
    "\\",
    "\\n",
    "\\\"",
    ",",
    "foo",
    "foo_bucket",
    "foo_total",
    "foo_sum",
    "foo_count",
    "foo_created",
    "foo_info",
    "_seconds",
    "le",
    "quantile",
    "1",
    "-1.5e3",
    "+Inf",
    "NaN",
    "0.5",
    "1520879607.789",
    "counter",
    "gauge",
    "histogram",
    "summary",
    "gaugehistogram",
    "info",
    "stateset",
    "unknown",
    "untyped",
    "seconds",
    "é",
    "\u{0}",
    "\u{ff}",
];

fn fragment_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(FRAGMENTS).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 1..4),
        ],
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

fn limits() -> impl Strategy<Value = Limits> {
    (0usize..5, 0usize..8, 0usize..4).prop_map(
        |(max_samples, max_label_value_bytes, max_labels_per_sample)| Limits {
            max_samples,
            max_label_value_bytes,
            max_labels_per_sample,
        },
    )
}

fn check_invariants(body: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    for flavor in [Flavor::Prometheus004, Flavor::OpenMetrics1] {
        let families = match parse(body, flavor, limits) {
            Ok(families) => families,
            Err(e) => {
                prop_assert!(e.line() >= 1);
                prop_assert!(!e.to_string().is_empty());
                continue;
            }
        };
        if flavor == Flavor::OpenMetrics1 {
            prop_assert!(body.ends_with(b"# EOF") || body.ends_with(b"# EOF\n"));
        }
        let total: usize = families.iter().map(|f| f.samples.len()).sum();
        prop_assert!(limits.max_samples == 0 || total <= limits.max_samples);
        let mut seen = BTreeMap::new();
        for f in &families {
            prop_assert!(
                seen.insert(f.name.clone(), ()).is_none(),
                "family {} twice",
                f.name
            );
            for s in &f.samples {
                prop_assert!(s.name.starts_with(&f.name));
                prop_assert!(
                    limits.max_labels_per_sample == 0
                        || s.labels.len() <= limits.max_labels_per_sample
                );
                prop_assert!(
                    limits.max_label_value_bytes == 0
                        || s.labels
                            .iter()
                            .all(|(_, v)| v.len() <= limits.max_label_value_bytes)
                );
                prop_assert!(flavor == Flavor::OpenMetrics1 || s.exemplar.is_none());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), limits in limits()) {
        check_invariants(&body, &limits)?;
    }

    #[test]
    fn syntax_fragments_never_panic(body in fragment_body(), limits in limits()) {
        check_invariants(&body, &limits)?;
    }
}
