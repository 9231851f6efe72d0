//! Traces: with the `OTEL_*` variables set, one subscription's trace crosses the relay and the
//! agent (real processes) with one trace id and the right parent links, exported as OTLP/HTTP
//! protobuf to a collector started by the test, and no attribute holds a line's content.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use logrelay_e2e::otlp::collector;
use logrelay_e2e::procs::{AgentProcess, RelayProcess};
use logrelay_e2e::*;
use logrelay_wire::session::Request;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One exported span, as the test reads it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
    events: Vec<String>,
    /// The span ids it links to.
    links: Vec<Vec<u8>>,
    /// Start and end, Unix nanoseconds.
    start_ns: u64,
    end_ns: u64,
}

/// The spans of a sampled batch's own trace (not of a subscription's).
const BATCH_SPANS: [&str; 7] = [
    "agent.batch",
    "agent.read_encode",
    "agent.queue",
    "agent.send",
    "relay.ingest",
    "relay.ring_push",
    "relay.session_write",
];

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// Every span of one request, and every string any attribute of it holds.
fn decode(body: &[u8], spans: &mut HashMap<String, Vec<Got>>, values: &mut Vec<String>) {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
    for rs in req.resource_spans {
        let resource = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        values.extend(resource.values().cloned());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = attrs(&s.attributes);
                values.extend(attributes.values().cloned());
                for e in &s.events {
                    values.extend(attrs(&e.attributes).into_values());
                }
                spans.entry(s.name.clone()).or_default().push(Got {
                    service: service.clone(),
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent: s.parent_span_id,
                    attributes,
                    events: s.events.iter().map(|e| e.name.clone()).collect(),
                    links: s.links.iter().map(|l| l.span_id.clone()).collect(),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                });
            }
        }
    }
}

/// Spans by name, as decoded so far.
type Spans = HashMap<String, Vec<Got>>;

/// Whether a span `name` (of `service`, when given) that ended `cancelled` is in.
fn ended_cancelled(spans: &Spans, name: &str, service: Option<&str>) -> bool {
    spans.get(name).is_some_and(|v| {
        v.iter().any(|s| {
            service.is_none_or(|svc| s.service == svc)
                && s.attributes
                    .get("logrelay.end")
                    .is_some_and(|e| e == "cancelled")
        })
    })
}

/// Decodes the collector's requests (each an OTLP/HTTP protobuf trace export) until `done`
/// holds, within the deadline: the spans, every attribute value, and the bodies.
async fn collect(
    received: std::sync::mpsc::Receiver<(String, String, Vec<u8>)>,
    done: impl Fn(&Spans) -> bool + Send + 'static,
) -> (Spans, Vec<String>, Vec<Vec<u8>>) {
    tokio::task::spawn_blocking(move || {
        let (mut spans, mut values, mut bodies) = (HashMap::new(), Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&spans) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((line, content_type, body)) = received.recv_timeout(left) else {
                panic!("timed out; spans so far: {spans:#?}");
            };
            assert!(line.starts_with("POST /v1/traces "), "{line}");
            assert_eq!(content_type, "application/x-protobuf");
            decode(&body, &mut spans, &mut values);
            bodies.push(body);
        }
        (spans, values, bodies)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_one_trace_across_relay_and_agent() {
    one_trace(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_subscription_traces_the_stream_that_appears_later() {
    one_trace(false).await;
}

/// One subscription, its stream already announced (`stream_first`) or appearing after the
/// `subscribe`, read and then unsubscribed: its whole trace.
async fn one_trace(stream_first: bool) {
    let (url, received) = collector();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let files = TestPki::new().files("dev", "test");
    let relay = RelayProcess::start_with_env(&files, &["--linger-secs", "1"], &otel).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "tracedpod", "main");
    const CONTENT: &str = "line-content-must-never-be-in-a-span";
    let lines: Vec<String> = (0..20).map(|i| format!("{CONTENT} {i}\n")).collect();
    log.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
    let start_agent = || AgentProcess::start_with_env(&files, pods.path(), relay.quic, &[], &otel);
    let r = &relay;
    let announced = || {
        eventually("the stream in the relay's catalog", || async {
            (r.metric("logrelay_relay_streams").await >= 1.0).then_some(())
        })
    };
    let mut s = Subscriber::connect(&relay.subscribe_url()).await;
    let agent = if stream_first {
        // The subscription's `subscribe` opens the demand.
        let agent = start_agent().await;
        announced().await;
        s.subscribe("t1", &selector("ns", "tracedpod", "main"), Some(20))
            .await;
        agent
    } else {
        // The stream's announcement opens the demand, for the standing subscription.
        s.subscribe("t1", &selector("ns", "tracedpod", "main"), Some(20))
            .await;
        s.until("subscribed", |s| !s.events.is_empty()).await;
        assert_eq!(r.metric("logrelay_relay_streams").await, 0.0);
        start_agent().await
    };
    s.until("the 20 lines", |s| s.total_lines() >= 20).await;
    s.client
        .send(&Request::Unsubscribe { id: "t1".into() })
        .await
        .unwrap();

    // The demand is cancelled a second after its last watcher left; every span then ends.
    // Done when the subscription and the cancelled demand's spans on both sides are in.
    let done = |spans: &Spans| {
        ["relay.subscription", "relay.data_stream", "agent.open"]
            .iter()
            .all(|n| spans.contains_key(*n))
            && ended_cancelled(spans, "relay.demand", None)
            && ended_cancelled(spans, "agent.demand", None)
    };
    let (spans, values, bodies) = collect(received, done).await;
    let all = |name: &str| spans[name].clone();
    let cancelled = |name: &str| {
        spans[name]
            .iter()
            .find(|s| s.attributes["logrelay.end"] == "cancelled")
            .cloned()
            .unwrap()
    };
    let subs = all("relay.subscription");
    assert_eq!(subs.len(), 1, "one subscription: {subs:?}");
    let sub = &subs[0];
    let (demand, agent_demand) = (cancelled("relay.demand"), cancelled("agent.demand"));
    let ids = |v: &[Got]| v.iter().map(|s| s.span_id.clone()).collect::<Vec<_>>();
    let (relay_demands, agent_demands) = (all("relay.demand"), all("agent.demand"));
    // One trace, across both processes.
    assert_eq!(sub.trace_id.len(), 16);
    for (name, v) in &spans {
        if BATCH_SPANS.contains(&name.as_str()) {
            // A sampled batch is a trace of its own (`a_sampled_batch_is_one_trace…`).
            continue;
        }
        for s in v {
            assert_eq!(s.trace_id, sub.trace_id, "same trace id: {s:?}");
        }
    }
    assert_eq!(sub.service, "logrelay-relay");
    for s in relay_demands.iter().chain(&spans["relay.data_stream"]) {
        assert_eq!(s.service, "logrelay-relay");
    }
    for s in agent_demands.iter().chain(&spans["agent.open"]) {
        assert_eq!(s.service, "logrelay-agent");
    }
    // Parent links: subscription → relay demand → (relay data stream, agent demand → agent
    // open).
    assert!(sub.parent.is_empty(), "the subscription starts the trace");
    for d in &relay_demands {
        assert_eq!(d.parent, sub.span_id, "{d:?}");
    }
    for d in &spans["relay.data_stream"] {
        assert!(ids(&relay_demands).contains(&d.parent), "{d:?}");
    }
    for d in &agent_demands {
        assert!(
            ids(&relay_demands).contains(&d.parent),
            "traceparent crossed: {d:?}"
        );
    }
    for o in &spans["agent.open"] {
        assert!(ids(&agent_demands).contains(&o.parent), "{o:?}");
    }
    // The cancelled demand is one demand on both sides.
    assert_eq!(agent_demand.parent, demand.span_id);
    assert_eq!(
        demand.attributes["logrelay.demand.id"],
        agent_demand.attributes["logrelay.demand.id"]
    );
    // What the spans say.
    assert_eq!(sub.attributes["logrelay.subscription.id"], "t1");
    assert_eq!(sub.attributes["logrelay.end"], "unsubscribed");
    assert!(demand.events.contains(&"cancel".to_owned()));
    assert!(agent_demand.events.contains(&"cancel".to_owned()));
    assert!(
        agent_demands
            .iter()
            .any(|d| d.events.contains(&"first_batch".to_owned()))
    );
    assert!(
        spans["relay.data_stream"]
            .iter()
            .any(|d| d.events.contains(&"first_batch".to_owned()))
    );
    // Never a line's content, a label value or a selector: not in any attribute, and not
    // anywhere in what was exported.
    for v in &values {
        for secret in [CONTENT, "tracedpod"] {
            assert!(
                !v.contains(secret),
                "attribute value {v:?} holds {secret:?}"
            );
        }
    }
    for body in &bodies {
        for secret in [CONTENT.as_bytes(), b"tracedpod"] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret),
                "an export holds {:?}",
                String::from_utf8_lossy(secret)
            );
        }
    }
    // Nothing lost on the way, and the counters are on /metrics.
    for (addr, prefix) in [
        (relay.admin, "logrelay_relay"),
        (agent.admin, "logrelay_agent"),
    ] {
        let (_, body) = http_get(addr, "/metrics").await;
        for m in ["trace_spans_dropped_total", "trace_spans_failed_total"] {
            assert!(
                body.lines().any(|l| l == format!("{prefix}_{m} 0")),
                "{prefix}_{m} 0 on /metrics:\n{body}"
            );
        }
    }
    assert_eq!(
        relay
            .metric("logrelay_relay_trace_spans_dropped_total")
            .await,
        0.0
    );
    assert_eq!(
        agent
            .metric("logrelay_agent_trace_spans_dropped_total")
            .await,
        0.0
    );
    assert_eq!(
        relay
            .metric("logrelay_relay_trace_spans_failed_total")
            .await,
        0.0
    );
    drop(agent);
    drop(relay);
}

/// Across relays (issue 14): a subscription on relay B to a stream of an agent on relay A. B's
/// lease carries the subscription's `traceparent`, so the demand A opens at the agent, and the
/// agent's, are in the subscription's trace, with their parent links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_another_relay_is_one_trace_across_both_relays_and_the_agent() {
    let (url, received) = collector();
    let otel = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", "1".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
        ]
    };
    let env = |v: &[(&'static str, String); 5]| {
        v.iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect::<Vec<(&str, String)>>()
    };
    let nats = logrelay_e2e::nats::NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let mut relays = Vec::new();
    for (id, service) in [("relay-a", "relay-a"), ("relay-b", "relay-b")] {
        let flags = nats.relay_flags(id);
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let vars = env(&otel(service));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let relay = RelayProcess::start_with_env(&files, &args, &vars).await;
        relay.backplane_connected().await;
        relays.push(relay);
    }
    let (a, b) = (&relays[0], &relays[1]);
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "tracedpod", "main");
    let lines: Vec<String> = (0..20).map(|i| format!("line {i}\n")).collect();
    log.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
    let agent_vars = env(&otel("logrelay-agent"));
    let agent_vars: Vec<(&str, &str)> = agent_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _agent = AgentProcess::start_with_env(&files, pods.path(), a.quic, &[], &agent_vars).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;
    let mut s = Subscriber::connect(&b.subscribe_url()).await;
    s.subscribe("t1", &selector("ns", "tracedpod", "main"), Some(20))
        .await;
    s.until("the 20 lines", |s| s.total_lines() >= 20).await;
    s.client
        .send(&Request::Unsubscribe { id: "t1".into() })
        .await
        .unwrap();

    // B releases after its linger, A cancels after its own: the demands' spans end.
    let done = |spans: &Spans| {
        spans
            .get("relay.subscription")
            .is_some_and(|v| v.iter().any(|s| s.service == "relay-b"))
            && ended_cancelled(spans, "relay.demand", Some("relay-a"))
            && ended_cancelled(spans, "agent.demand", Some("logrelay-agent"))
    };
    let (spans, _, _) = collect(received, done).await;
    let sub = spans["relay.subscription"]
        .iter()
        .find(|s| s.service == "relay-b")
        .unwrap();
    assert!(sub.parent.is_empty(), "the subscription starts the trace");
    let demand = spans["relay.demand"]
        .iter()
        .find(|s| s.service == "relay-a")
        .unwrap();
    assert_eq!(demand.trace_id, sub.trace_id, "one trace across relays");
    assert_eq!(
        demand.parent, sub.span_id,
        "relay A's demand is a child of relay B's subscription"
    );
    let agent_demand = spans["agent.demand"]
        .iter()
        .find(|s| s.parent == demand.span_id)
        .unwrap_or_else(|| panic!("the agent's demand under relay A's: {spans:#?}"));
    assert_eq!(agent_demand.trace_id, sub.trace_id);
    assert_eq!(
        demand.attributes["logrelay.demand.id"],
        agent_demand.attributes["logrelay.demand.id"]
    );
}

/// A sampled batch (issue 17): its own trace, from the agent's read of its first line to each
/// session's write of it: `agent.batch` (linked to the agent's demand) with its stages
/// `agent.read_encode`, `agent.queue` and `agent.send`; the relay's `relay.ingest` under it
/// (its context crossed in the trace frame ahead of the batch), `relay.ring_push` and one
/// `relay.session_write` per watching session under that. Every line still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_batch_is_one_trace_from_the_agents_read_to_each_sessions_write() {
    let (url, received) = collector();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let files = TestPki::new().files("dev", "test");
    let relay = RelayProcess::start_with_env(&files, &[], &otel).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "batchpod", "main");
    const CONTENT: &str = "batch-content-must-never-be-in-a-span";
    log.write_lines([format!("{CONTENT} 0\n").as_bytes()])
        .unwrap();
    let agent = AgentProcess::start_with_env(
        &files,
        pods.path(),
        relay.quic,
        &["--trace-batches-per-sec", "20"],
        &otel,
    )
    .await;
    let r = &relay;
    eventually("the stream in the relay's catalog", || async {
        (r.metric("logrelay_relay_streams").await >= 1.0).then_some(())
    })
    .await;
    let sel = selector("ns", "batchpod", "main");
    let mut s1 = Subscriber::connect(&relay.subscribe_url()).await;
    let mut s2 = Subscriber::connect(&relay.subscribe_url()).await;
    s1.subscribe("b1", &sel, Some(10)).await;
    s2.subscribe("b2", &sel, Some(10)).await;
    s1.until("the first line", |s| s.total_lines() >= 1).await;
    s2.until("the first line", |s| s.total_lines() >= 1).await;
    // Lines keep coming, one batch each, while the spans are collected.
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let count = written.clone();
    let writer = tokio::spawn(async move {
        for i in 1..800u32 {
            log.write_lines([format!("{CONTENT} {i}\n").as_bytes()])
                .unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    // Done when one batch's trace is whole: its agent span, stages, ingest, push and both
    // sessions' writes.
    let whole = |spans: &Spans| -> Option<Vec<u8>> {
        spans.get("agent.open")?;
        let by = |name: &str| spans.get(name).cloned().unwrap_or_default();
        by("agent.batch").into_iter().find_map(|b| {
            let child_of = |name: &str, parent: &[u8]| {
                by(name)
                    .into_iter()
                    .filter(|s| s.parent == parent && s.trace_id == b.trace_id)
                    .collect::<Vec<_>>()
            };
            let ingest = child_of("relay.ingest", &b.span_id);
            let ingest = ingest.first()?;
            let whole = ["agent.read_encode", "agent.queue", "agent.send"]
                .iter()
                .all(|n| child_of(n, &b.span_id).len() == 1)
                && child_of("relay.ring_push", &ingest.span_id).len() == 1
                && child_of("relay.session_write", &ingest.span_id).len() == 2;
            whole.then(|| b.span_id.clone())
        })
    };
    let (spans, values, bodies) = collect(received, move |s| whole(s).is_some()).await;
    writer.abort();
    let _ = writer.await;
    let written = written.load(std::sync::atomic::Ordering::SeqCst);
    let batch_id = whole(&spans).unwrap();
    let batch = spans["agent.batch"]
        .iter()
        .find(|b| b.span_id == batch_id)
        .unwrap()
        .clone();
    let child_of = |name: &str, parent: &[u8]| {
        spans[name]
            .iter()
            .filter(|s| s.parent == parent)
            .cloned()
            .collect::<Vec<_>>()
    };
    // A trace of its own, started by the agent and linked to the demand that carried it.
    assert!(batch.parent.is_empty(), "a new trace: {batch:?}");
    assert_eq!(batch.service, "logrelay-agent");
    // (`agent.demand` lasts as long as the demand: its id is `agent.open`'s parent.)
    let demands: Vec<Vec<u8>> = spans["agent.open"]
        .iter()
        .map(|o| o.parent.clone())
        .collect();
    assert!(
        batch.links.iter().any(|l| demands.contains(l)),
        "linked to its agent.demand: {batch:?}"
    );
    assert_eq!(batch.attributes["logrelay.batch.lines"], "1");
    // Its stages, in order, inside it.
    let stage = |n: &str| child_of(n, &batch.span_id).remove(0);
    let (read, queue, send) = (
        stage("agent.read_encode"),
        stage("agent.queue"),
        stage("agent.send"),
    );
    assert_eq!(read.start_ns, batch.start_ns);
    assert!(read.end_ns <= queue.start_ns + 1 && queue.end_ns <= send.start_ns + 1);
    assert!(send.end_ns <= batch.end_ns);
    // The relay's part, in the same trace.
    let ingest = child_of("relay.ingest", &batch.span_id).remove(0);
    assert_eq!(ingest.service, "logrelay-relay");
    assert_eq!(ingest.trace_id, batch.trace_id);
    for key in ["logrelay.batch.first_seq", "logrelay.batch.lines"] {
        assert_eq!(ingest.attributes[key], batch.attributes[key], "{key}");
    }
    let push = child_of("relay.ring_push", &ingest.span_id).remove(0);
    assert_eq!(push.service, "logrelay-relay");
    let writes = child_of("relay.session_write", &ingest.span_id);
    let sessions: std::collections::HashSet<&String> = writes
        .iter()
        .map(|w| &w.attributes["logrelay.session.id"])
        .collect();
    assert_eq!(sessions.len(), 2, "one write per session: {writes:?}");
    for w in &writes {
        assert_eq!(w.trace_id, batch.trace_id);
        assert_eq!(w.attributes["logrelay.end"], "complete");
        assert!(w.start_ns >= push.start_ns, "{w:?} after {push:?}");
    }
    // Never a line's content.
    for v in &values {
        assert!(!v.contains(CONTENT), "attribute value {v:?}");
    }
    for body in &bodies {
        assert!(!body.windows(CONTENT.len()).any(|w| w == CONTENT.as_bytes()));
    }
    // The trace frames are not forwarded: both sessions read every line written, in order,
    // once.
    for (s, id) in [(&mut s1, "b1"), (&mut s2, "b2")] {
        s.until("every line written", |s| s.total_lines() >= written)
            .await;
        let got = s.messages(s.stream_of(id).unwrap());
        assert_eq!(got.len(), written);
        for (i, l) in got.iter().enumerate() {
            assert_eq!(l, &format!("{CONTENT} {i}\n"), "line {i}");
        }
    }
    assert_eq!(
        relay.metric("logrelay_relay_protocol_errors_total").await,
        0.0
    );
    drop(agent);
}

/// An agent that traces, on a relay that does not: the relay does not answer `batch_trace`,
/// so no trace frame is sent, and every line arrives with no protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_traces_sends_no_trace_frame_to_a_relay_that_does_not() {
    let (url, received) = collector();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let files = TestPki::new().files("dev", "test");
    let relay = RelayProcess::start(&files, &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "plainpod", "main");
    let agent = AgentProcess::start_with_env(
        &files,
        pods.path(),
        relay.quic,
        &["--trace-batches-per-sec", "1000"],
        &otel,
    )
    .await;
    let r = &relay;
    eventually("the stream in the relay's catalog", || async {
        (r.metric("logrelay_relay_streams").await >= 1.0).then_some(())
    })
    .await;
    let mut s = Subscriber::connect(&relay.subscribe_url()).await;
    s.subscribe("p", &selector("ns", "plainpod", "main"), Some(1000))
        .await;
    for i in 0..50 {
        log.write_lines([format!("plain {i}\n").as_bytes()])
            .unwrap();
    }
    s.until("50 lines", |s| s.total_lines() >= 50).await;
    let got = s.messages(s.stream_of("p").unwrap());
    assert_eq!(got.len(), 50);
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l, &format!("plain {i}\n"));
    }
    assert_eq!(
        relay.metric("logrelay_relay_protocol_errors_total").await,
        0.0
    );
    // The agent's demand is traced; no batch is (the relay would not read the frame).
    let (spans, _, _) = collect(received, |s| s.contains_key("agent.open")).await;
    assert!(!spans.contains_key("agent.batch"), "{spans:#?}");
    drop(agent);
}
