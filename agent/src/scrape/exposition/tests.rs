//! Unit tests: the examples of both specifications, then error cases.

use super::cursor::{parse_float, parse_seconds_as_millis};
use super::*;

fn parse_004(body: &str) -> Vec<Family> {
    parse(body.as_bytes(), Flavor::Prometheus004, &Limits::UNLIMITED)
        .unwrap_or_else(|e| panic!("0.0.4 body rejected: {e}\n{body}"))
}

fn parse_om(body: &str) -> Vec<Family> {
    parse(body.as_bytes(), Flavor::OpenMetrics1, &Limits::UNLIMITED)
        .unwrap_or_else(|e| panic!("OpenMetrics body rejected: {e}\n{body}"))
}

fn err_004(body: &str) -> ParseError {
    parse(body.as_bytes(), Flavor::Prometheus004, &Limits::UNLIMITED).expect_err(body)
}

fn err_om(body: &str) -> ParseError {
    parse(body.as_bytes(), Flavor::OpenMetrics1, &Limits::UNLIMITED).expect_err(body)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sample(name: &str, pairs: &[(&str, &str)], value: f64, timestamp_ms: Option<i64>) -> Sample {
    Sample {
        name: name.to_owned(),
        labels: labels(pairs),
        value,
        timestamp_ms,
        exemplar: None,
    }
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

fn names(families: &[Family]) -> Vec<&str> {
    families.iter().map(|f| f.name.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Prometheus "Exposition formats", text format example.

/// The example block of the exposition-formats doc, verbatim (current
/// version, with the `rpc_duration_seconds` summary).
const DOC_EXAMPLE_004: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

#[test]
fn doc_example_004_families_and_order() {
    let fams = parse_004(DOC_EXAMPLE_004);
    assert_eq!(
        names(&fams),
        [
            "http_requests_total",
            "msdos_file_access_time_seconds",
            "metric_without_timestamp_and_labels",
            "something_weird",
            "http_request_duration_seconds",
            "rpc_duration_seconds",
        ]
    );
    let total: usize = fams.iter().map(|f| f.samples.len()).sum();
    assert_eq!(total, 2 + 1 + 1 + 1 + 8 + 7);
}

#[test]
fn doc_example_004_counter() {
    let fams = parse_004(DOC_EXAMPLE_004);
    let f = family(&fams, "http_requests_total");
    assert_eq!(f.kind, MetricType::Counter);
    assert_eq!(
        f.help.as_deref(),
        Some("The total number of HTTP requests.")
    );
    assert_eq!(f.unit, None);
    assert_eq!(
        f.samples,
        [
            sample(
                "http_requests_total",
                &[("method", "post"), ("code", "200")],
                1027.0,
                Some(1395066363000)
            ),
            sample(
                "http_requests_total",
                &[("method", "post"), ("code", "400")],
                3.0,
                Some(1395066363000)
            ),
        ]
    );
}

#[test]
fn doc_example_004_escaping_and_untyped() {
    let fams = parse_004(DOC_EXAMPLE_004);
    let f = family(&fams, "msdos_file_access_time_seconds");
    assert_eq!(f.kind, MetricType::Unknown);
    assert_eq!(f.help, None);
    assert_eq!(
        f.samples,
        [sample(
            "msdos_file_access_time_seconds",
            &[
                ("path", r"C:\DIR\FILE.TXT"),
                ("error", "Cannot find file:\n\"FILE.TXT\"")
            ],
            1.458255915e9,
            None
        )]
    );
    let f = family(&fams, "metric_without_timestamp_and_labels");
    assert_eq!(
        f.samples,
        [sample(
            "metric_without_timestamp_and_labels",
            &[],
            12.47,
            None
        )]
    );
    let f = family(&fams, "something_weird");
    assert_eq!(
        f.samples,
        [sample(
            "something_weird",
            &[("problem", "division by zero")],
            f64::INFINITY,
            Some(-3982045)
        )]
    );
}

#[test]
fn doc_example_004_histogram_and_summary() {
    let fams = parse_004(DOC_EXAMPLE_004);
    let h = family(&fams, "http_request_duration_seconds");
    assert_eq!(h.kind, MetricType::Histogram);
    assert_eq!(
        h.help.as_deref(),
        Some("A histogram of the request duration.")
    );
    let les: Vec<&str> = h
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .map(|s| s.labels[0].1.as_str())
        .collect();
    assert_eq!(les, ["0.05", "0.1", "0.2", "0.5", "1", "+Inf"]);
    assert_eq!(
        h.samples[6],
        sample("http_request_duration_seconds_sum", &[], 53423.0, None)
    );
    assert_eq!(
        h.samples[7],
        sample("http_request_duration_seconds_count", &[], 144320.0, None)
    );

    let s = family(&fams, "rpc_duration_seconds");
    assert_eq!(s.kind, MetricType::Summary);
    assert_eq!(s.samples.len(), 7);
    assert_eq!(
        s.samples[4],
        sample(
            "rpc_duration_seconds",
            &[("quantile", "0.99")],
            76656.0,
            None
        )
    );
    assert_eq!(s.samples[5].value, 1.7560473e7);
    assert_eq!(s.samples[6].name, "rpc_duration_seconds_count");
}

#[test]
fn older_doc_example_summary_groups_by_type() {
    // The same doc's earlier revision used this summary name.
    let body = "# HELP telemetry_requests_metrics_latency_microseconds A summary of the response latency.\n\
# TYPE telemetry_requests_metrics_latency_microseconds summary\n\
telemetry_requests_metrics_latency_microseconds{quantile=\"0.01\"} 3102\n\
telemetry_requests_metrics_latency_microseconds_sum 1.7560473e+07\n\
telemetry_requests_metrics_latency_microseconds_count 2693\n";
    let fams = parse_004(body);
    assert_eq!(fams.len(), 1);
    assert_eq!(fams[0].samples.len(), 3);
}

// ---------------------------------------------------------------------------
// 0.0.4 details.

#[test]
fn blanks_tabs_and_crlf_are_tolerated_in_004() {
    let body =
        "  \t# TYPE  foo\tgauge  \r\n\n\t foo { a = \"1\" ,\tb=\"2\" , }\t 3 \t 42 \r\n   \n";
    let fams = parse_004(body);
    assert_eq!(fams.len(), 1);
    assert_eq!(fams[0].kind, MetricType::Gauge);
    assert_eq!(
        fams[0].samples,
        [sample("foo", &[("a", "1"), ("b", "2")], 3.0, Some(42))]
    );
}

#[test]
fn trailing_comma_and_empty_braces_in_004() {
    let fams = parse_004("a{x=\"1\",} 1\nb{} 2\nc{}3\n");
    assert_eq!(fams[0].samples[0].labels, labels(&[("x", "1")]));
    assert!(fams[1].samples[0].labels.is_empty());
    assert_eq!(fams[2].samples[0].value, 3.0);
}

#[test]
fn special_characters_inside_quotes() {
    let body =
        "m{a=\"}\",b=\",\",c=\"=\",d=\"#\",e=\"{x=\\\"y\\\"}\",f=\" # {t=\\\"1\\\"} 2\"} 7\n";
    for flavor in [Flavor::Prometheus004, Flavor::OpenMetrics1] {
        let body = match flavor {
            Flavor::Prometheus004 => body.to_owned(),
            Flavor::OpenMetrics1 => format!("{body}# EOF\n"),
        };
        let fams = parse(body.as_bytes(), flavor, &Limits::UNLIMITED).unwrap();
        assert_eq!(
            fams[0].samples,
            [sample(
                "m",
                &[
                    ("a", "}"),
                    ("b", ","),
                    ("c", "="),
                    ("d", "#"),
                    ("e", "{x=\"y\"}"),
                    ("f", " # {t=\"1\"} 2")
                ],
                7.0,
                None
            )]
        );
    }
}

#[test]
fn undefined_escapes_are_kept_verbatim() {
    let fams = parse_004("m{a=\"x\\ty\\\\z\\u00e9\"} 1\n");
    assert_eq!(fams[0].samples[0].labels[0].1, "x\\ty\\z\\u00e9");
}

#[test]
fn help_escapes_004() {
    let fams = parse_004("# HELP foo  a\\\\b\\nc \\\"d\\\" \\x  \n# HELP bar\n");
    assert_eq!(fams[0].help.as_deref(), Some("a\\b\nc \\\"d\\\" \\x"));
    assert_eq!(fams[1].help.as_deref(), Some(""));
}

#[test]
fn plain_comments_and_eof_are_ignored_in_004() {
    let fams = parse_004("#HELP not metadata\n# just text\n#\n# EOF\nfoo 1\n# UNIT foo seconds\n");
    assert_eq!(names(&fams), ["foo"]);
    assert_eq!(fams[0].unit, None);
}

#[test]
fn values_004() {
    let fams = parse_004(
        "a NaN\nb -Inf\nc +Inf\nd 1e3\ne -1.5E-3\nf Nan\ng .5\nh 5.\ni +7\nj inf\nk -0\n",
    );
    let v: Vec<f64> = fams.iter().map(|f| f.samples[0].value).collect();
    assert!(v[0].is_nan());
    assert_eq!(v[1..5], [f64::NEG_INFINITY, f64::INFINITY, 1000.0, -0.0015]);
    assert!(v[5].is_nan());
    assert_eq!(v[6..], [0.5, 5.0, 7.0, f64::INFINITY, 0.0]);
    assert!(v[10].is_sign_negative());
}

#[test]
fn untyped_samples_get_one_unknown_family_per_name() {
    let fams = parse_004("x_bucket{le=\"1\"} 1\nx_bucket{le=\"+Inf\"} 2\nx_sum 3\nx_count 2\n");
    assert_eq!(names(&fams), ["x_bucket", "x_sum", "x_count"]);
    assert!(fams.iter().all(|f| f.kind == MetricType::Unknown));
    assert_eq!(fams[0].samples.len(), 2);
}

#[test]
fn help_without_type_does_not_claim_suffixed_samples() {
    let fams = parse_004("# HELP x help\nx_count 1\nx 2\n");
    assert_eq!(names(&fams), ["x", "x_count"]);
    assert_eq!(fams[0].samples.len(), 1);
    assert_eq!(fams[0].help.as_deref(), Some("help"));
}

#[test]
fn untyped_declared_family() {
    let fams = parse_004("# TYPE u untyped\nu 1\nu_sum 2\n");
    assert_eq!(fams[0].kind, MetricType::Unknown);
    assert_eq!(names(&fams), ["u", "u_sum"]);
}

#[test]
fn interleaved_family_is_merged_back() {
    let fams = parse_004("# TYPE a gauge\na{x=\"1\"} 1\nb 2\na{x=\"2\"} 3\n");
    assert_eq!(names(&fams), ["a", "b"]);
    assert_eq!(fams[0].samples.len(), 2);
}

#[test]
fn created_gauge_of_client_python_style() {
    // client_python renders `_created` as its own gauge family in 0.0.4.
    let body = "# TYPE req counter\nreq_total 3\n# TYPE req_created gauge\nreq_created 1.6e9\n";
    let fams = parse_004(body);
    assert_eq!(names(&fams), ["req", "req_created"]);
    assert_eq!(fams[1].kind, MetricType::Gauge);
}

#[test]
fn empty_body_004_is_empty() {
    assert!(parse_004("").is_empty());
    assert!(parse_004("\n\n  \n# comment only\n").is_empty());
}

#[test]
fn last_line_without_newline_is_accepted() {
    assert_eq!(parse_004("a 1\nb 2").len(), 2);
}

// ---------------------------------------------------------------------------
// OpenMetrics 1.0 examples.

#[test]
fn om_complete_exposition_example() {
    let body = r#"# TYPE acme_http_router_request_seconds summary
# UNIT acme_http_router_request_seconds seconds
# HELP acme_http_router_request_seconds Latency though all of ACME's HTTP request router.
acme_http_router_request_seconds_sum{path="/api/v1",method="GET"} 9036.32
acme_http_router_request_seconds_count{path="/api/v1",method="GET"} 807283.0
acme_http_router_request_seconds_created{path="/api/v1",method="GET"} 1605281325.0
acme_http_router_request_seconds_sum{path="/api/v2",method="POST"} 479.3
acme_http_router_request_seconds_count{path="/api/v2",method="POST"} 34.0
acme_http_router_request_seconds_created{path="/api/v2",method="POST"} 1605281325.0
# TYPE go_goroutines gauge
# HELP go_goroutines Number of goroutines that currently exist.
go_goroutines 69
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
# HELP process_cpu_seconds Total user and system CPU time spent in seconds.
process_cpu_seconds_total 4.20072246e+06
# EOF
"#;
    let fams = parse_om(body);
    assert_eq!(
        names(&fams),
        [
            "acme_http_router_request_seconds",
            "go_goroutines",
            "process_cpu_seconds"
        ]
    );
    let acme = &fams[0];
    assert_eq!(acme.kind, MetricType::Summary);
    assert_eq!(acme.unit.as_deref(), Some("seconds"));
    assert_eq!(
        acme.help.as_deref(),
        Some("Latency though all of ACME's HTTP request router.")
    );
    assert_eq!(acme.samples.len(), 6);
    assert_eq!(
        acme.samples[2],
        sample(
            "acme_http_router_request_seconds_created",
            &[("path", "/api/v1"), ("method", "GET")],
            1605281325.0,
            None
        )
    );
    assert_eq!(fams[1].kind, MetricType::Gauge);
    assert_eq!(fams[1].samples, [sample("go_goroutines", &[], 69.0, None)]);
    let cpu = &fams[2];
    assert_eq!(cpu.kind, MetricType::Counter);
    assert_eq!(cpu.unit.as_deref(), Some("seconds"));
    assert_eq!(
        cpu.samples,
        [sample("process_cpu_seconds_total", &[], 4.20072246e6, None)]
    );
}

#[test]
fn om_eof_without_final_newline() {
    let fams = parse_om("# TYPE foo gauge\nfoo 17.0\n# EOF");
    assert_eq!(fams[0].samples, [sample("foo", &[], 17.0, None)]);
    assert!(parse_om("# EOF\n").is_empty());
    assert!(parse_om("# EOF").is_empty());
}

#[test]
fn om_gauge_examples_with_timestamps() {
    let fams = parse_om(
        "# TYPE foo gauge\nfoo{a=\"b\"} 17.0 1520879607.789\n# TYPE bar gauge\nbar 17.0 123\nbar 18.0 456\n# TYPE e gauge\n# EOF\n",
    );
    assert_eq!(
        fams[0].samples,
        [sample("foo", &[("a", "b")], 17.0, Some(1520879607789))]
    );
    assert_eq!(
        fams[1].samples,
        [
            sample("bar", &[], 17.0, Some(123_000)),
            sample("bar", &[], 18.0, Some(456_000))
        ]
    );
    // "An example of a MetricFamily with no Metrics".
    assert_eq!(fams[2].kind, MetricType::Gauge);
    assert!(fams[2].samples.is_empty());
}

#[test]
fn om_counter_examples() {
    let fams = parse_om(
        "# TYPE foo counter\nfoo_total 17.0 1520879607.789\nfoo_created 1520430000.123 1520879607.789\n# EOF\n",
    );
    assert_eq!(fams.len(), 1);
    assert_eq!(
        fams[0].samples,
        [
            sample("foo_total", &[], 17.0, Some(1520879607789)),
            sample("foo_created", &[], 1520430000.123, Some(1520879607789)),
        ]
    );
}

#[test]
fn om_stateset_example() {
    let body = r#"# TYPE foo stateset
foo{entity="controller",foo="a"} 1.0
foo{entity="controller",foo="bb"} 0.0
foo{entity="controller",foo="ccc"} 0.0
foo{entity="replica",foo="a"} 1.0
foo{entity="replica",foo="bb"} 0.0
foo{entity="replica",foo="ccc"} 1.0
# EOF
"#;
    let fams = parse_om(body);
    assert_eq!(fams.len(), 1);
    assert_eq!(fams[0].kind, MetricType::StateSet);
    assert_eq!(fams[0].samples.len(), 6);
    assert_eq!(
        fams[0].samples[5],
        sample("foo", &[("entity", "replica"), ("foo", "ccc")], 1.0, None)
    );
}

#[test]
fn om_info_example() {
    let body = r#"# TYPE foo info
foo_info{entity="controller",name="pretty name",version="8.2.7"} 1.0
foo_info{entity="replica",name="prettier name",version="8.1.9"} 1.0
# EOF
"#;
    let fams = parse_om(body);
    assert_eq!(fams.len(), 1);
    assert_eq!(fams[0].kind, MetricType::Info);
    assert_eq!(
        fams[0].samples[1],
        sample(
            "foo_info",
            &[
                ("entity", "replica"),
                ("name", "prettier name"),
                ("version", "8.1.9")
            ],
            1.0,
            None
        )
    );
}

#[test]
fn om_summary_and_unknown_examples() {
    let fams = parse_om(
        "# TYPE foo summary\nfoo_count 17.0\nfoo_sum 324789.3\nfoo_created 1520430000.123\nfoo{quantile=\"0.95\"} 123.7\nfoo{quantile=\"0.99\"} 150.0\n# TYPE bar unknown\nbar 42.23\n# EOF\n",
    );
    assert_eq!(fams[0].samples.len(), 5);
    assert_eq!(fams[1].kind, MetricType::Unknown);
    assert_eq!(fams[1].samples, [sample("bar", &[], 42.23, None)]);
}

/// The histogram-with-exemplars example of the spec. The spec text has
/// `foo_created  1520430000.123` with two spaces, which its own ABNF (and
/// Prometheus) reject; it is fixed to one space here, and the verbatim line
/// is checked to fail.
const OM_HISTOGRAM_EXEMPLARS: &str = r#"# TYPE foo histogram
foo_bucket{le="0.01"} 0
foo_bucket{le="0.1"} 8 # {} 0.054
foo_bucket{le="1"} 11 # {trace_id="KOO5S4vxi0o"} 0.67
foo_bucket{le="10"} 17 # {trace_id="oHg5SJYRHA0"} 9.8 1520879607.789
foo_bucket{le="+Inf"} 17
foo_count 17
foo_sum 324789.3
foo_created 1520430000.123
# EOF
"#;

#[test]
fn om_histogram_with_exemplars_example() {
    let fams = parse_om(OM_HISTOGRAM_EXEMPLARS);
    assert_eq!(fams.len(), 1);
    let h = &fams[0];
    assert_eq!(h.kind, MetricType::Histogram);
    assert_eq!(h.samples.len(), 8);
    assert_eq!(h.samples[0].exemplar, None);
    assert_eq!(
        h.samples[1].exemplar,
        Some(Exemplar {
            labels: vec![],
            value: 0.054,
            timestamp_ms: None
        })
    );
    assert_eq!(
        h.samples[2].exemplar,
        Some(Exemplar {
            labels: labels(&[("trace_id", "KOO5S4vxi0o")]),
            value: 0.67,
            timestamp_ms: None
        })
    );
    assert_eq!(
        h.samples[3].exemplar,
        Some(Exemplar {
            labels: labels(&[("trace_id", "oHg5SJYRHA0")]),
            value: 9.8,
            timestamp_ms: Some(1520879607789)
        })
    );
    assert_eq!(h.samples[3].value, 17.0);
    assert_eq!(h.samples[3].timestamp_ms, None);
    assert_eq!(
        h.samples[7],
        sample("foo_created", &[], 1520430000.123, None)
    );

    let verbatim = OM_HISTOGRAM_EXEMPLARS.replace("foo_created ", "foo_created  ");
    assert!(matches!(
        err_om(&verbatim),
        ParseError::UnexpectedInput { line: 9, .. }
    ));
}

#[test]
fn om_exemplar_on_counter_with_sample_timestamp() {
    let fams = parse_om(
        "# TYPE foo counter\nfoo_total 17.0 1520879607.789 # {trace_id=\"abc\"} 1.0 1520879607.789\n# EOF\n",
    );
    let s = &fams[0].samples[0];
    assert_eq!(s.timestamp_ms, Some(1520879607789));
    assert_eq!(
        s.exemplar,
        Some(Exemplar {
            labels: labels(&[("trace_id", "abc")]),
            value: 1.0,
            timestamp_ms: Some(1520879607789)
        })
    );
}

#[test]
fn om_gaugehistogram_example() {
    let body = r#"# TYPE foo gaugehistogram
foo_bucket{le="0.01"} 20.0
foo_bucket{le="0.1"} 25.0
foo_bucket{le="1"} 34.0
foo_bucket{le="10"} 34.0
foo_bucket{le="+Inf"} 42.0
foo_gcount 42.0
foo_gsum 3289.3
# EOF
"#;
    let fams = parse_om(body);
    assert_eq!(fams.len(), 1);
    assert_eq!(fams[0].kind, MetricType::GaugeHistogram);
    assert_eq!(fams[0].samples[6], sample("foo_gsum", &[], 3289.3, None));
}

#[test]
fn om_metadata_escaping_and_label_example() {
    let body = "# TYPE foo_seconds counter\n# UNIT foo_seconds seconds\n# HELP foo_seconds Some text and \\n some \\\" escaping\nbar_seconds_count{a=\"x\",b=\"escaping\\\" example \\n \"} 0\nbaz_seconds_count{} 0\n# EOF\n";
    let fams = parse_om(body);
    assert_eq!(
        fams[0].help.as_deref(),
        Some("Some text and \n some \" escaping")
    );
    assert_eq!(fams[0].unit.as_deref(), Some("seconds"));
    assert_eq!(
        fams[1].samples,
        [sample(
            "bar_seconds_count",
            &[("a", "x"), ("b", "escaping\" example \n ")],
            0.0,
            None
        )]
    );
    assert!(fams[2].samples[0].labels.is_empty());
}

#[test]
fn om_empty_help_and_unit_count_as_absent() {
    let fams =
        parse_om("# TYPE foo gauge\n# HELP foo \n# UNIT foo \n# HELP foo real\nfoo 1\n# EOF\n");
    assert_eq!(fams[0].help.as_deref(), Some("real"));
    assert_eq!(fams[0].unit, None);
}

#[test]
fn om_value_spellings() {
    let fams = parse_om("a +inf\nb -Infinity\nc nan\nd 0042\ne 1.89e-7\n# EOF\n");
    let v: Vec<f64> = fams.iter().map(|f| f.samples[0].value).collect();
    assert_eq!(v[..2], [f64::INFINITY, f64::NEG_INFINITY]);
    assert!(v[2].is_nan());
    assert_eq!(v[3..], [42.0, 1.89e-7]);
}

// ---------------------------------------------------------------------------
// Content type, Accept, synthesized series.

#[test]
fn content_type_negotiation() {
    use Flavor::*;
    assert_eq!(
        flavor_from_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        OpenMetrics1
    );
    assert_eq!(
        flavor_from_content_type("application/openmetrics-text"),
        OpenMetrics1
    );
    assert_eq!(
        flavor_from_content_type(" Application/OpenMetrics-Text;version=0.0.1"),
        OpenMetrics1
    );
    assert_eq!(
        flavor_from_content_type("text/plain; version=0.0.4; charset=utf-8"),
        Prometheus004
    );
    assert_eq!(flavor_from_content_type(""), Prometheus004);
    assert_eq!(flavor_from_content_type("application/json"), Prometheus004);
    assert_eq!(
        flavor_from_content_type(OpenMetrics1.content_type()),
        OpenMetrics1
    );
    assert_eq!(
        flavor_from_content_type(Prometheus004.content_type()),
        Prometheus004
    );
    assert_eq!(
        ACCEPT_HEADER,
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    );
}

#[test]
fn synthesized_series() {
    let fams = synthesize_up(true, 0.25, 42);
    assert_eq!(
        names(&fams),
        ["up", "scrape_duration_seconds", "scrape_samples_scraped"]
    );
    assert!(
        fams.iter()
            .all(|f| f.kind == MetricType::Gauge && f.samples.len() == 1)
    );
    let values: Vec<f64> = fams.iter().map(|f| f.samples[0].value).collect();
    assert_eq!(values, [1.0, 0.25, 42.0]);
    assert!(
        fams.iter()
            .all(|f| f.samples[0].labels.is_empty() && f.samples[0].timestamp_ms.is_none())
    );
    assert_eq!(synthesize_up(false, 1.5, 0)[0].samples[0].value, 0.0);
}

#[test]
fn metric_type_tokens() {
    use Flavor::*;
    assert_eq!(
        MetricType::from_type_token("untyped", Prometheus004),
        Some(MetricType::Unknown)
    );
    assert_eq!(MetricType::from_type_token("untyped", OpenMetrics1), None);
    assert_eq!(MetricType::from_type_token("unknown", Prometheus004), None);
    assert_eq!(MetricType::from_type_token("info", Prometheus004), None);
    assert_eq!(MetricType::from_type_token("Counter", OpenMetrics1), None);
    for kind in [
        MetricType::Counter,
        MetricType::Gauge,
        MetricType::Histogram,
        MetricType::GaugeHistogram,
        MetricType::Summary,
        MetricType::Info,
        MetricType::StateSet,
        MetricType::Unknown,
    ] {
        assert_eq!(
            MetricType::from_type_token(kind.as_str(), OpenMetrics1),
            Some(kind)
        );
    }
}

// ---------------------------------------------------------------------------
// Numbers.

#[test]
fn om_timestamps_are_exact_milliseconds() {
    let ms = |s: &str| parse_seconds_as_millis(s.as_bytes());
    assert_eq!(ms("1520879607.789"), Some(1520879607789));
    assert_eq!(ms("1520879607.7899999"), Some(1520879607789));
    assert_eq!(ms("123"), Some(123_000));
    assert_eq!(ms("0042"), Some(42_000));
    assert_eq!(ms("-1.5"), Some(-1500));
    assert_eq!(ms("-0.0005"), Some(0));
    assert_eq!(ms("+2."), Some(2000));
    assert_eq!(ms(".5"), Some(500));
    assert_eq!(ms("1.5e3"), Some(1_500_000));
    assert_eq!(ms("1E-3"), Some(1));
    assert_eq!(ms("1.604676851123456789e9"), Some(1604676851123));
    assert_eq!(ms("0e999999999999"), Some(0));
    assert_eq!(ms("5e-999999999999"), Some(0));
    assert_eq!(ms("9223372036854775.807"), Some(i64::MAX));
    assert_eq!(ms("9223372036854775.808"), None);
    assert_eq!(ms("1e400"), None);
    for bad in [
        "", ".", "+", "e5", "1e", "1e+", "1.2.3", "inf", "NaN", "1_0", "0x10", " 1",
    ] {
        assert_eq!(ms(bad), None, "{bad:?}");
    }
}

#[test]
fn float_syntax() {
    let f = |s: &str| parse_float(s.as_bytes());
    assert_eq!(f("+Inf"), Some(f64::INFINITY));
    assert_eq!(f("-inf"), Some(f64::NEG_INFINITY));
    assert_eq!(f("Infinity"), Some(f64::INFINITY));
    assert!(f("NaN").is_some_and(f64::is_nan));
    assert_eq!(f("1.7976931348623157e308"), Some(f64::MAX));
    for bad in [
        "", "+NaN", "-nan", "1e999", "-1e999", "0x1p3", "1_000", "1,5", "one", " 1",
    ] {
        assert_eq!(f(bad), None, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------
// Errors.

#[test]
fn bad_metric_names() {
    assert_eq!(
        err_004("1foo 1\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    assert_eq!(
        err_004("ok 1\nfoo-bar 1\n"),
        ParseError::InvalidMetricName { line: 2 }
    );
    assert_eq!(
        err_004("fo\u{e9} 1\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    assert_eq!(
        err_004("# TYPE 1x gauge\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    assert_eq!(
        err_004("# HELP\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    assert_eq!(
        err_om("{a=\"b\"} 1\n# EOF\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    assert_eq!(
        err_om("# TYPE x.y gauge\n# EOF\n"),
        ParseError::InvalidMetricName { line: 1 }
    );
    // Colons are fine in metric names, not in label names.
    assert_eq!(parse_004("job:rate:5m 1\n")[0].name, "job:rate:5m");
    assert_eq!(
        err_004("a{b:c=\"1\"} 1\n"),
        ParseError::MalformedLabels {
            line: 1,
            reason: "expected '=' after the label name"
        }
    );
}

#[test]
fn bad_label_names_and_sets() {
    assert_eq!(
        err_004("a{1x=\"1\"} 1\n"),
        ParseError::InvalidLabelName { line: 1 }
    );
    assert_eq!(
        err_004("a{,} 1\n"),
        ParseError::InvalidLabelName { line: 1 }
    );
    assert!(matches!(
        err_004("a{x=1} 1\n"),
        ParseError::MalformedLabels { line: 1, .. }
    ));
    assert!(matches!(
        err_004("a{x=\"1\" y=\"2\"} 1\n"),
        ParseError::MalformedLabels { .. }
    ));
    assert!(matches!(
        err_004("a{x=\"1\"\n"),
        ParseError::MalformedLabels { .. }
    ));
    assert_eq!(
        err_om("a{x=\"1\",} 1\n# EOF\n"),
        ParseError::MalformedLabels {
            line: 1,
            reason: "trailing comma"
        }
    );
    assert_eq!(
        err_om("a{ x=\"1\"} 1\n# EOF\n"),
        ParseError::InvalidLabelName { line: 1 }
    );
}

#[test]
fn unterminated_quotes() {
    assert_eq!(
        err_004("a{x=\"1} 1\n"),
        ParseError::UnterminatedQuote { line: 1 }
    );
    assert_eq!(
        err_004("ok 1\na{x=\"1\\\"} 1\n"),
        ParseError::UnterminatedQuote { line: 2 }
    );
    assert_eq!(
        err_004("a{x=\"1\\"),
        ParseError::UnterminatedQuote { line: 1 }
    );
    // A raw line feed cannot be inside a value: the line ends first.
    assert_eq!(
        err_om("a{x=\"1\n\"} 1\n# EOF\n"),
        ParseError::UnterminatedQuote { line: 1 }
    );
}

#[test]
fn duplicate_label_names() {
    assert_eq!(
        err_004("a{x=\"1\",y=\"2\",x=\"3\"} 1\n"),
        ParseError::DuplicateLabel {
            line: 1,
            name: "x".into()
        }
    );
    assert_eq!(
        err_om("a_total 1 # {t=\"1\",t=\"2\"} 1\n# EOF\n"),
        ParseError::DuplicateLabel {
            line: 1,
            name: "t".into()
        }
    );
    // Many labels take the sorting path.
    let mut many: String = (0..20_000).map(|i| format!("l{i}=\"v\",")).collect();
    let ok = format!("a{{{many}}} 1\n");
    assert_eq!(parse_004(&ok)[0].samples[0].labels.len(), 20_000);
    many.push_str("l123=\"again\"");
    assert_eq!(
        err_004(&format!("a{{{many}}} 1\n")),
        ParseError::DuplicateLabel {
            line: 1,
            name: "l123".into()
        }
    );
}

#[test]
fn openmetrics_requires_eof() {
    assert_eq!(err_om(""), ParseError::MissingEof { line: 1 });
    assert_eq!(
        err_om("# TYPE a gauge\na 1\n"),
        ParseError::MissingEof { line: 3 }
    );
    assert_eq!(err_om("a 1"), ParseError::MissingEof { line: 2 });
    assert_eq!(
        err_om("a 1\n# EOF \n"),
        ParseError::InvalidComment { line: 2 }
    );
}

#[test]
fn nothing_after_eof() {
    assert_eq!(
        err_om("# EOF\na 1\n"),
        ParseError::ContentAfterEof { line: 2 }
    );
    assert_eq!(
        err_om("a 1\n# EOF\n\n"),
        ParseError::ContentAfterEof { line: 3 }
    );
    assert_eq!(
        err_om("# EOF\n# EOF\n"),
        ParseError::ContentAfterEof { line: 2 }
    );
}

#[test]
fn openmetrics_line_rules() {
    assert_eq!(
        err_om("a 1\n\nb 2\n# EOF\n"),
        ParseError::EmptyLine { line: 2 }
    );
    assert_eq!(
        err_om("# a comment\n# EOF\n"),
        ParseError::InvalidComment { line: 1 }
    );
    assert_eq!(
        err_om("#TYPE a gauge\n# EOF\n"),
        ParseError::InvalidComment { line: 1 }
    );
    assert!(matches!(
        err_om("a 1 \n# EOF\n"),
        ParseError::UnexpectedInput { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a  1\n# EOF\n"),
        ParseError::UnexpectedInput { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a \n# EOF\n"),
        ParseError::InvalidValue { line: 1 }
    ));
    assert!(matches!(
        err_om("a\t1\n# EOF\n"),
        ParseError::InvalidMetricName { line: 1 }
    ));
    assert!(matches!(
        err_om(" a 1\n# EOF\n"),
        ParseError::InvalidMetricName { line: 1 }
    ));
    assert!(matches!(
        err_om("a 1\r\n# EOF\n"),
        ParseError::InvalidValue { line: 1 }
    ));
    assert!(matches!(
        err_om("a 1 2 3\n# EOF\n"),
        ParseError::UnexpectedInput { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a{x=\"1\"}1\n# EOF\n"),
        ParseError::UnexpectedInput { line: 1, .. }
    ));
}

#[test]
fn bad_values_and_timestamps() {
    assert_eq!(err_004("a\n"), ParseError::InvalidValue { line: 1 });
    assert_eq!(err_004("a{}\n"), ParseError::InvalidValue { line: 1 });
    assert_eq!(err_004("a one\n"), ParseError::InvalidValue { line: 1 });
    assert_eq!(err_004("a 1e999\n"), ParseError::InvalidValue { line: 1 });
    assert_eq!(
        err_004("a 1 1.5\n"),
        ParseError::InvalidTimestamp { line: 1 }
    );
    assert_eq!(
        err_004("a 1 99999999999999999999\n"),
        ParseError::InvalidTimestamp { line: 1 }
    );
    assert!(matches!(
        err_004("a 1 2 3\n"),
        ParseError::UnexpectedInput { line: 1, .. }
    ));
    assert_eq!(
        err_om("a 1 NaN\n# EOF\n"),
        ParseError::InvalidTimestamp { line: 1 }
    );
    assert_eq!(
        err_om("a 1 1e30\n# EOF\n"),
        ParseError::InvalidTimestamp { line: 1 }
    );
    assert_eq!(err_om("a\n# EOF\n"), ParseError::InvalidValue { line: 1 });
}

#[test]
fn exemplar_errors() {
    assert!(matches!(
        err_004("a_total 1 # {t=\"1\"} 1\n"),
        ParseError::InvalidExemplar { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a 1 # 1\n# EOF\n"),
        ParseError::InvalidExemplar { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a 1 # {}\n# EOF\n"),
        ParseError::InvalidExemplar { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a 1 # {} x\n# EOF\n"),
        ParseError::InvalidExemplar { line: 1, .. }
    ));
    assert!(matches!(
        err_om("a 1 # {} 1 2 3\n# EOF\n"),
        ParseError::UnexpectedInput { .. }
    ));
    assert!(matches!(
        err_om("a 1 2 {} 1\n# EOF\n"),
        ParseError::UnexpectedInput { .. }
    ));
    // "t" plus 127 two-byte characters is 128 code points: allowed; one more is not.
    let ok = format!("a 1 # {{t=\"{}\"}} 1\n# EOF\n", "\u{e9}".repeat(127));
    parse_om(&ok);
    let too_long = format!("a 1 # {{t=\"{}\"}} 1\n# EOF\n", "\u{e9}".repeat(128));
    assert_eq!(
        err_om(&too_long),
        ParseError::InvalidExemplar {
            line: 1,
            reason: "label names and values exceed 128 code points"
        }
    );
}

#[test]
fn metadata_errors() {
    assert_eq!(
        err_004("# TYPE a gauges\n"),
        ParseError::UnknownMetricType {
            line: 1,
            kind: "gauges".into()
        }
    );
    assert_eq!(
        err_004("# TYPE a info\n"),
        ParseError::UnknownMetricType {
            line: 1,
            kind: "info".into()
        }
    );
    assert_eq!(
        err_om("# TYPE a untyped\n# EOF\n"),
        ParseError::UnknownMetricType {
            line: 1,
            kind: "untyped".into()
        }
    );
    assert!(matches!(
        err_004("# TYPE a\n"),
        ParseError::InvalidMetadata { line: 1, .. }
    ));
    assert!(matches!(
        err_004("# TYPE a gauge x\n"),
        ParseError::InvalidMetadata { line: 1, .. }
    ));
    assert_eq!(
        err_004("# TYPE a gauge\n# TYPE a counter\n"),
        ParseError::DuplicateMetadata {
            line: 2,
            name: "a".into(),
            what: "TYPE"
        }
    );
    assert_eq!(
        err_om("# HELP a x\n# HELP a y\n# EOF\n"),
        ParseError::DuplicateMetadata {
            line: 2,
            name: "a".into(),
            what: "HELP"
        }
    );
    assert_eq!(
        err_004("a 1\n# TYPE a gauge\n"),
        ParseError::MetadataAfterSamples {
            line: 2,
            name: "a".into()
        }
    );
    assert_eq!(
        err_om("# TYPE a gauge\na 1\n# HELP a late\n# EOF\n"),
        ParseError::MetadataAfterSamples {
            line: 3,
            name: "a".into()
        }
    );
    assert_eq!(
        err_om("# TYPE foo counter\n# UNIT foo seconds\n# EOF\n"),
        ParseError::UnitMismatch {
            line: 2,
            name: "foo".into(),
            unit: "seconds".into()
        }
    );
    assert!(matches!(
        err_om("# UNIT fooseconds seconds\n# EOF\n"),
        ParseError::UnitMismatch { .. }
    ));
    assert!(matches!(
        err_om("# UNIT foo_s s!\n# EOF\n"),
        ParseError::InvalidMetadata { line: 1, .. }
    ));
    assert!(matches!(
        err_om("# TYPE a\n# EOF\n"),
        ParseError::UnknownMetricType { .. }
    ));
}

#[test]
fn bucket_and_quantile_labels_are_required() {
    assert_eq!(
        err_004("# TYPE h histogram\nh_bucket 1\n"),
        ParseError::InvalidBoundLabel {
            line: 2,
            label: "le"
        }
    );
    assert_eq!(
        err_004("# TYPE h histogram\nh_bucket{le=\"fast\"} 1\n"),
        ParseError::InvalidBoundLabel {
            line: 2,
            label: "le"
        }
    );
    assert_eq!(
        err_om("# TYPE s summary\ns{q=\"0.5\"} 1\n# EOF\n"),
        ParseError::InvalidBoundLabel {
            line: 2,
            label: "quantile"
        }
    );
    // Untyped `_bucket` samples are not checked.
    parse_004("h_bucket 1\n");
}

#[test]
fn invalid_utf8() {
    assert_eq!(
        parse(
            b"a{x=\"\xff\"} 1\n",
            Flavor::Prometheus004,
            &Limits::UNLIMITED
        ),
        Err(ParseError::InvalidUtf8 { line: 1 })
    );
    assert_eq!(
        parse(
            b"# HELP a \xc3\n",
            Flavor::Prometheus004,
            &Limits::UNLIMITED
        ),
        Err(ParseError::InvalidUtf8 { line: 1 })
    );
    // Comments may hold anything in 0.0.4.
    assert!(parse(b"# \xff\xfe\n", Flavor::Prometheus004, &Limits::UNLIMITED).is_ok());
}

#[test]
fn sample_limit() {
    let body = "a 1\nb 2\n# TYPE c gauge\nc 3\nc 4\nd 5\n";
    let limits = Limits {
        max_samples: 3,
        ..Limits::UNLIMITED
    };
    let err = parse(body.as_bytes(), Flavor::Prometheus004, &limits).unwrap_err();
    assert_eq!(
        err,
        ParseError::SampleLimitExceeded {
            line: 5,
            limit: 3,
            scraped: 5
        }
    );
    assert_eq!(err.line(), 5);
    assert_eq!(
        err.to_string(),
        "line 5: sample limit exceeded: 5 samples, limit 3"
    );
    // Exactly at the limit is fine.
    let limits = Limits {
        max_samples: 5,
        ..Limits::UNLIMITED
    };
    assert!(parse(body.as_bytes(), Flavor::Prometheus004, &limits).is_ok());
    // A syntax error after the limit wins.
    let limits = Limits {
        max_samples: 1,
        ..Limits::UNLIMITED
    };
    assert_eq!(
        parse(b"a 1\nb 2\nc{ 3\n", Flavor::Prometheus004, &limits),
        Err(ParseError::InvalidLabelName { line: 3 })
    );
    assert_eq!(
        parse(b"a 1\nb 2\n", Flavor::OpenMetrics1, &limits),
        Err(ParseError::MissingEof { line: 3 })
    );
}

#[test]
fn label_limits() {
    let limits = Limits {
        max_label_value_bytes: 3,
        max_labels_per_sample: 2,
        ..Limits::UNLIMITED
    };
    let p = |body: &str| parse(body.as_bytes(), Flavor::Prometheus004, &limits);
    assert!(p("a{x=\"abc\",y=\"\\\\\\\\\\\\\"} 1\n").is_ok()); // `\\\\\\` unescapes to 3 bytes
    assert_eq!(
        p("a{x=\"abcd\"} 1\n"),
        Err(ParseError::LabelValueTooLong {
            line: 1,
            name: "x".into(),
            len: 4,
            limit: 3
        })
    );
    assert_eq!(
        p("a{x=\"1\",y=\"2\",z=\"3\"} 1\n"),
        Err(ParseError::TooManyLabels { line: 1, limit: 2 })
    );
    // Exemplar labels are bounded by the OpenMetrics 128 code points only.
    let om = "a_total 1 # {trace_id=\"0123456789\",span_id=\"x\",more=\"y\"} 1\n# EOF\n";
    assert!(parse(om.as_bytes(), Flavor::OpenMetrics1, &limits).is_ok());
}

#[test]
fn long_names_are_clipped_in_errors() {
    let name = "n".repeat(1000);
    let err = err_004(&format!("{name} 1\n# TYPE {name} gauge\n"));
    match err {
        ParseError::MetadataAfterSamples { name, .. } => {
            assert!(name.len() <= 128 + '…'.len_utf8())
        }
        other => panic!("{other:?}"),
    }
}
