//! Metrics streams through the whole path: a real `prometheus-node-exporter`, the relay's own
//! `/metrics` and a recorded kubepods cgroup tree, scraped or sampled by the agent only while a
//! WebSocket subscriber watches, delivered through the relay.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use logrelay_agent::AgentConfig;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};

/// An agent with the given configuration tweaks (no log pods, no cgroup tree by default).
async fn agent(
    pki: &TestPki,
    relay: &TestRelay,
    pods: &PodsDir,
    tweak: impl FnOnce(&mut AgentConfig),
) -> TestAgent {
    TestAgent::start_with(pki, pods, relay.quic_addr(), |c| {
        c.metrics_rescan_ms = 50;
        c.resources = false;
        tweak(c);
    })
    .await
}

fn metrics_selector(container: &str) -> Selector {
    Selector {
        container: Some(container.into()),
        kind: Some(StreamKind::Metrics),
        ..Selector::default()
    }
}

/// Series → value from received records (`name{labels} value`); the latest value wins.
fn samples(sub: &Subscriber, stream: u64) -> HashMap<String, f64> {
    sub.messages(stream)
        .iter()
        .filter(|m| !m.starts_with('#'))
        .filter_map(|m| {
            let (series, value) = m.trim_end().rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Every value received for `series`, in order.
fn values(sub: &Subscriber, id: &str, series: &str) -> Vec<f64> {
    let Some(stream) = sub.stream_of(id) else {
        return Vec::new();
    };
    sub.messages(stream)
        .iter()
        .filter_map(|m| {
            let (s, v) = m.trim_end().rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
        .collect()
}

fn has_series(sub: &Subscriber, id: &str, series: &str) -> bool {
    sub.stream_of(id)
        .is_some_and(|s| samples(sub, s).contains_key(series))
}

/// `MemTotal` of this machine, bytes.
fn mem_total_bytes() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    kib * 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_series_arrive_through_the_relay() {
    let exporter = NodeExporter::start().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let target = format!("http://{}/metrics,name=node", exporter.addr);
    let agent = agent(&pki, &relay, &pods, |c| {
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("m", &metrics_selector("scrape:node"), None)
        .await;
    sub.until("node exporter series", |s| {
        has_series(s, "m", "node_memory_MemTotal_bytes")
            && has_series(s, "m", r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#)
    })
    .await;
    let stream = sub.stream_of("m").unwrap();
    let labels = sub
        .events
        .iter()
        .find_map(|e| match e {
            Event::Stream { labels, .. } => Some(labels.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(labels.kind, StreamKind::Metrics);
    assert_eq!(labels.container, "scrape:node");

    let got = samples(&sub, stream);
    assert_eq!(got["up"], 1.0, "the scrape succeeded");
    assert!(got["scrape_duration_seconds"] > 0.0 && got["scrape_duration_seconds"] < 10.0);
    assert!(got["scrape_samples_scraped"] > 100.0);
    assert_eq!(
        got["node_memory_MemTotal_bytes"],
        mem_total_bytes(),
        "the exporter's MemTotal is this machine's"
    );
    let idle = got[r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#];
    assert!(idle > 0.0 && idle.is_finite(), "idle seconds {idle}");
    let messages = sub.messages(stream);
    assert!(messages.contains(&"# TYPE node_cpu_seconds_total counter\n".to_owned()));
    assert!(agent.metric("logrelay_agent_scrapes_total").await >= 1.0);
    assert_eq!(
        agent.metric("logrelay_agent_scrape_failures_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_metrics_are_scraped_like_any_target() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let target = format!("http://{}/metrics,name=relay", relay.handle.admin_addr);
    let _agent = agent(&pki, &relay, &pods, |c| {
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("r", &metrics_selector("scrape:relay"), None)
        .await;
    sub.until("relay series", |s| {
        has_series(s, "r", "logrelay_relay_agents_connected")
    })
    .await;
    let got = samples(&sub, sub.stream_of("r").unwrap());
    assert_eq!(got["up"], 1.0);
    assert_eq!(
        got["logrelay_relay_agents_connected"], 1.0,
        "this test's agent"
    );
    assert_eq!(
        got["logrelay_relay_sessions_connected"], 1.0,
        "this subscriber"
    );
    assert!(
        got["logrelay_relay_demands_opened_total"] >= 1.0,
        "the demand of this very scrape"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_scraped_while_nobody_watches() {
    let exporter = NodeExporter::start().await;
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            linger_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let interval = Duration::from_millis(50);
    let target = format!(
        "http://{}/metrics,name=node,interval_ms={}",
        exporter.addr,
        interval.as_millis()
    );
    let agent = agent(&pki, &relay, &pods, |c| {
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;
    let scrapes = || agent.metric("logrelay_agent_scrapes_total");

    // The stream is announced, and nobody watches it.
    let mut sub = relay.subscriber().await;
    eventually("stream in the relay's catalog", || async {
        (relay.metric("logrelay_relay_streams").await >= 1.0).then_some(())
    })
    .await;
    // An observation window of 20 scrape intervals (not a synchronisation): no scrape.
    tokio::time::sleep(interval * 20).await;
    assert_eq!(scrapes().await, 0.0, "no scrape without a watcher");

    // The first watcher gets a scrape at once.
    sub.subscribe("m", &metrics_selector("scrape:node"), Some(0))
        .await;
    sub.until("first scrape", |s| has_series(s, "m", "up"))
        .await;
    assert!(scrapes().await >= 1.0);

    // Once it leaves (and the relay's linger is over) the agent stops scraping.
    sub.client
        .send(&Request::Unsubscribe { id: "m".into() })
        .await
        .unwrap();
    eventually("demand cancelled at the agent", || async {
        (agent.metric("logrelay_agent_demands_active").await == 0.0).then_some(())
    })
    .await;
    let after_cancel = scrapes().await;
    tokio::time::sleep(interval * 20).await;
    assert_eq!(
        scrapes().await,
        after_cancel,
        "no scrape after the last watcher left"
    );
}

/// Writes `files` (name → content) into `dir`.
fn write_cgroup(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_resource_usage_arrives_and_a_late_watcher_gets_it_at_once() {
    const UID: &str = "8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    std::fs::create_dir(pods.path().join(format!("team_task-7_{UID}"))).unwrap();
    let cgroups = tempfile::tempdir().unwrap();
    let containers = tempfile::tempdir().unwrap();
    std::fs::write(
        containers.path().join(format!("task-7_team_main-{ID}.log")),
        "",
    )
    .unwrap();
    let pod_dir = cgroups.path().join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID.replace('-', "_")
    ));
    write_cgroup(
        &pod_dir,
        &[
            (
                "cpu.stat",
                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            ),
            ("memory.current", "104857600\n"),
            ("memory.stat", "anon 50000000\ninactive_file 4857600\n"),
            ("memory.max", "268435456\n"),
            ("cpu.max", "50000 100000\n"),
        ],
    );
    write_cgroup(
        &pod_dir.join(format!("cri-containerd-{ID}.scope")),
        &[
            ("cpu.stat", "usage_usec 2000000\n"),
            ("memory.current", "94857600\n"),
            ("memory.stat", "inactive_file 4857600\n"),
            ("memory.max", "max\n"),
            ("cpu.max", "max 100000\n"),
        ],
    );
    let (root, names) = (cgroups.path().to_owned(), containers.path().to_owned());
    let _agent = agent(&pki, &relay, &pods, |c| {
        c.resources = true;
        c.cgroup_root = root;
        c.containers_dir = names;
        c.resources_interval_ms = 1_000;
    })
    .await;

    let selector = Selector {
        namespace: Some("team".into()),
        pod: Some("task-7".into()),
        container: Some("resources".into()),
        kind: Some(StreamKind::Metrics),
        ..Selector::default()
    };
    let mut first = relay.subscriber().await;
    first.subscribe("a", &selector, None).await;
    first
        .until("pod resources", |s| {
            has_series(s, "a", "pod_memory_working_set_bytes")
        })
        .await;
    let got = samples(&first, first.stream_of("a").unwrap());
    assert_eq!(got["pod_memory_working_set_bytes"], 100_000_000.0);
    assert_eq!(got["pod_memory_usage_bytes"], 104_857_600.0);
    assert_eq!(got["pod_memory_limit_bytes"], 268_435_456.0);
    assert_eq!(got["pod_cpu_limit_cores"], 0.5);
    assert_eq!(got["pod_cpu_usage_seconds_total"], 2.5);
    assert_eq!(
        got[r#"container_memory_working_set_bytes{container="main"}"#],
        90_000_000.0
    );
    assert!(!got.contains_key(r#"container_memory_limit_bytes{container="main"}"#));

    // The pod burns a second of CPU; the next sample (a second after the first) has a rate.
    write_cgroup(&pod_dir, &[("cpu.stat", "usage_usec 3500000\n")]);
    first
        .until("a CPU rate", |s| {
            values(s, "a", "pod_cpu_usage_cores")
                .iter()
                .any(|&v| v > 0.0)
        })
        .await;
    let cores = values(&first, "a", "pod_cpu_usage_cores")
        .into_iter()
        .fold(0.0, f64::max);
    assert!(
        cores > 0.5 && cores < 2.0,
        "1 s of CPU in about 1 s: {cores}"
    );

    // A second watcher gets the latest sample at once, as backfill kept by the agent, before
    // the next live one.
    let mut second = relay.subscriber().await;
    second.subscribe("b", &selector, None).await;
    second
        .until("the latest sample", |s| {
            has_series(s, "b", "pod_cpu_usage_seconds_total")
        })
        .await;
    let stream = second.stream_of("b").unwrap();
    assert!(
        second.lines[&stream][0].backfill,
        "the first lines are backfill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_may_ask_for_a_subset_of_metric_names() {
    let exporter = NodeExporter::start().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let target = format!("http://{}/metrics,name=node", exporter.addr);
    let _agent = agent(&pki, &relay, &pods, |c| {
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;

    // One subscriber wants everything, another only memory totals and the cpu family.
    let mut all = relay.subscriber().await;
    all.subscribe("all", &metrics_selector("scrape:node"), None)
        .await;
    let mut some = relay.subscriber().await;
    some.client
        .send(&logrelay_wire::session::Request::Subscribe {
            id: "some".into(),
            selector: metrics_selector("scrape:node"),
            tail: None,
            since_ns: None,
            since_seq: None,
            follow: true,
            contains: Some("node_memory_MemTotal_bytes,node_cpu_*".into()),
            matches: None,
        })
        .await
        .unwrap();
    some.until("the chosen series", |s| {
        has_series(s, "some", "node_memory_MemTotal_bytes")
            && has_series(s, "some", r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#)
    })
    .await;
    all.until("everything", |s| {
        has_series(s, "all", "node_memory_MemFree_bytes")
    })
    .await;
    let stream = some.stream_of("some").unwrap();
    let got = samples(&some, stream);
    assert!(
        got.keys()
            .all(|k| k.starts_with("node_memory_MemTotal_bytes")
                || k.starts_with("node_cpu_")
                || ["up", "scrape_duration_seconds", "scrape_samples_scraped"]
                    .contains(&k.as_str())),
        "only the chosen series (and the scrape's own): {:?}",
        got.keys()
            .filter(|k| !k.starts_with("node_cpu_"))
            .collect::<Vec<_>>()
    );
    assert!(!got.contains_key("node_memory_MemFree_bytes"));
}
