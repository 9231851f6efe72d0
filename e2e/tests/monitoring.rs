//! The monitoring kit in `deploy/monitoring/` is checked, not trusted: the alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the scrape configuration
//! passes `promtool check config`, every dashboard query is valid PromQL, every metric the
//! rules and the dashboard name is exported by a running relay or agent, and every alert has
//! its runbook in `docs/operations.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use logrelay::client::Client;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn monitoring(file: &str) -> PathBuf {
    repo().join("deploy/monitoring").join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `promtool args…`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool must be installed (apt-get install prometheus; scripts/test does it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// The `expr` of every rule in a rules file (single-line or `|` block values).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let value = value.trim();
        if value == "|" || value == ">" {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" ").trim().to_owned());
        } else {
            out.push(value.to_owned());
        }
    }
    out
}

/// The alert names of a rules file.
fn alert_names(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// The dashboard's queries, Grafana variables replaced by values Prometheus accepts: panel
/// targets, and the series selectors of `label_values(…)` variables.
fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read(&monitoring("logrelay-dashboard.json"))).unwrap();
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_owned(),
            );
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str()
            && let Some(args) = q.strip_prefix("label_values(")
        {
            let (selector, _label) = args
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            out.push(selector.trim().to_owned());
        }
    }
    out.iter()
        .map(|e| {
            e.replace("$__rate_interval", "5m")
                .replace("$relay", ".*")
                .replace("$agent", ".*")
        })
        .collect()
}

/// The metric names a PromQL expression selects. A small lexer: names inside strings, label
/// matchers, ranges and grouping label lists are skipped, as are function calls, aggregation
/// operators and keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let skip_to = |mut i: usize, close: u8| {
        while i < b.len() && b[i] != close {
            if matches!(b[i], b'"' | b'\'' | b'`') {
                let quote = b[i];
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_to(i + 1, c);
        } else if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < b.len() && b[next].is_ascii_whitespace() {
                next += 1;
            }
            let call = b.get(next) == Some(&b'(');
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if call {
                    i = skip_to(next + 1, b')');
                }
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                out.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every series name an exposition offers: its samples, and for each `# TYPE` the names
/// Prometheus stores (a counter family `x` as `x_total`, a histogram's `_bucket`, …), so a
/// labelled family with no child yet still counts as exported.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn the_lexer_finds_metric_names_and_nothing_else() {
    let names = metric_names(
        r#"sum by (job, reason) (rate(a_total{reason="x{y}", job=~"$j"}[5m])) > 0
           or label_replace(b / ignoring (limit) c{limit="m"}, "dst", "$1", "src", "(.*)")
           and on (instance) max_over_time(sum by (job) (d)[30m:1m]) < 0.8 * 1e-3
           unless absent(up{job="r"}) or count(e == 0) or vector(0) offset 5m"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_total", "b", "c", "d", "e", "up"]
    );
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "deploy/monitoring/alerts.yaml"]);
    let alerts = alert_names(&read(&monitoring("alerts.yaml")));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "deploy/monitoring/alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert is unit-tested firing.
    let tests = read(&monitoring("alerts_test.yaml"));
    for alert in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "alerts_test.yaml has no case where {alert} fires"
        );
    }
}

#[test]
fn the_scrape_configuration_passes_promtool_check_config() {
    // Debian's Prometheus has no Kubernetes discovery: the same jobs with a static target.
    let config = read(&monitoring("prometheus.yml"));
    let sd = "kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n          names: [logrelay]\n";
    assert_eq!(config.matches(sd).count(), 2, "both jobs discover pods");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        config.replace(
            sd,
            "static_configs:\n      - targets: [\"127.0.0.1:9600\"]\n",
        ),
    )
    .unwrap();
    std::fs::copy(monitoring("alerts.yaml"), dir.path().join("alerts.yaml")).unwrap();
    let checked = promtool(&[
        "check",
        "config",
        &dir.path().join("prometheus.yml").display().to_string(),
    ]);
    assert!(checked.contains("SUCCESS: 1 rule files found"), "{checked}");
    for job in ["logrelay-relay", "logrelay-agent"] {
        assert!(config.contains(&format!("- job_name: {job}\n")), "{job}");
        assert!(
            read(&monitoring("alerts.yaml")).contains(&format!("job=\"{job}\"")),
            "the rules use job {job}"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 40, "{} queries", exprs.len());
    // promtool parses them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", &file.display().to_string()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
}

#[test]
fn every_alert_has_a_runbook_in_the_operations_guide() {
    let rules = read(&monitoring("alerts.yaml"));
    let guide = read(&repo().join("docs/operations.md"));
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        assert!(
            guide.contains(&format!("\n#### {alert}\n")),
            "docs/operations.md has no runbook heading for {alert}"
        );
        assert!(
            rules.contains(&format!(
                "runbook_url: \"docs/operations.md#{}\"",
                alert.to_ascii_lowercase()
            )),
            "{alert} links its runbook"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    // A relay, an agent with a log stream and a scrape target, a subscriber watching both.
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            max_subscriptions_per_session: 2,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut log = pods.container("web", "api", "main");
    log.write_lines([b"hello\n".as_slice()]).unwrap();
    let target = format!("http://{}/metrics,name=relay", relay.handle.admin_addr);
    let agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.resources = false;
        c.metrics_rescan_ms = 50;
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;
    let mut sub = relay.subscriber().await;
    sub.subscribe("logs", &selector("web", "api", "main"), None)
        .await;
    sub.subscribe(
        "metrics",
        &Selector {
            container: Some("scrape:relay".into()),
            kind: Some(StreamKind::Metrics),
            ..Selector::default()
        },
        None,
    )
    .await;
    sub.until("a log line and a scrape", |s| {
        s.stream_of("logs")
            .is_some_and(|st| !s.messages(st).is_empty())
            && s.stream_of("metrics")
                .is_some_and(|st| s.messages(st).iter().any(|m| m.starts_with("up ")))
    })
    .await;

    // Labelled counters of open label sets appear with their first event: a limit hit (a
    // third subscription) and a refused session (a token, and no key to check it).
    sub.subscribe("third", &selector("web", "api", "main"), None)
        .await;
    eventually("a limit hit", || async {
        (relay.metric("logrelay_relay_limit_hits_total").await >= 1.0).then_some(())
    })
    .await;
    let refused = Client::connect(&relay.handle.subscribe_url(), None, Some("not-a-token")).await;
    assert!(
        refused.is_err(),
        "a token the relay cannot check is refused"
    );
    eventually("a refused session", || async {
        (relay.metric("logrelay_relay_sessions_refused_total").await >= 1.0).then_some(())
    })
    .await;

    let (status, relay_text) = http_get(relay.handle.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let (status, agent_text) = http_get(agent.handle.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let mut exported = exported_names(&relay_text);
    exported.extend(exported_names(&agent_text));
    // Synthesized by Prometheus for every target.
    exported.insert("up".to_owned());

    let mut named = BTreeSet::new();
    let rules = read(&monitoring("alerts.yaml"));
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), alert_names(&rules).len(), "{exprs:#?}");
    for e in exprs.iter().chain(&dashboard_exprs()) {
        named.extend(metric_names(e));
    }
    let missing: Vec<_> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/monitoring but exported by neither the relay nor the agent: {missing:?}"
    );
    assert!(
        named.len() > 40,
        "the rules and the dashboard cover the metrics: {named:?}"
    );

    // Once the relay exports the backplane's state (the NATS backplane), an alert must use it.
    if exported.contains("logrelay_relay_backplane_connected") {
        assert!(
            rules.contains("logrelay_relay_backplane_connected"),
            "the relay exports logrelay_relay_backplane_connected: add a backplane-down alert \
             to deploy/monitoring/alerts.yaml (and its runbook)"
        );
    }
}
