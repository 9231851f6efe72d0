//! A pod's Kubernetes events as a stream (`kind: events`): the agent's pod watch (a recorded
//! Kubernetes API served over real HTTP) names the pod, its events are asked of the API only
//! once someone watches them, and each reaches the subscriber as a JSON line with the pod's
//! task identity, live events from the watch included; a malformed watch line is counted and
//! skipped, and a session of another org sees nothing. Needs `--features k8s`.
#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::auth::testkit::{Signer, jwks};
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use serde_json::json;
use tokio::sync::mpsc;

const UID: &str = "5d1c7e2a-9b8f-4c3d-a1e2-f3a4b5c6d7e8";
const NS: &str = "flytesnacks-development";

fn pod() -> String {
    format!(
        r#"{{"metadata":{{"name":"f3a-n0-0","namespace":"{NS}","uid":"{UID}","resourceVersion":"90","labels":{{"project":"flytesnacks","domain":"development","execution-id":"f3a","node-id":"n0"}}}},"spec":{{"nodeName":"node-1","containers":[{{"name":"main","image":"ghcr.io/flyteorg/flytekit:py3.11"}}]}},"status":{{"phase":"Pending"}}}}"#
    )
}

/// An event about the pod, as the API server returns it.
fn event(uid: &str, rv: u32, reason: &str, kind: &str, message: &str, last: &str) -> String {
    json!({
        "metadata": {"name": format!("f3a-n0-0.{uid}"), "namespace": NS, "uid": uid, "resourceVersion": rv.to_string()},
        "involvedObject": {"kind": "Pod", "namespace": NS, "name": "f3a-n0-0", "uid": UID, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": kind, "count": 3,
        "firstTimestamp": "2026-01-02T03:04:00Z", "lastTimestamp": last,
        "source": {"component": "default-scheduler"}
    })
    .to_string()
}

#[derive(Clone)]
struct Api {
    pods: String,
    events: String,
    event_requests: Arc<AtomicUsize>,
    watch: Arc<Mutex<Option<mpsc::Receiver<String>>>>,
}

fn lines(rx: Option<mpsc::Receiver<String>>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |rx| async move {
        // Later watches stay open with nothing to say.
        let Some(mut rx) = rx else {
            return std::future::pending().await;
        };
        let line = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(line + "\n"), Some(rx)))
    }))
}

async fn pods(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Body {
    if q.get("watch").map(String::as_str) == Some("true") {
        return lines(None);
    }
    Body::from(api.pods.clone())
}

async fn events(
    State(api): State<Api>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Body {
    assert_eq!(ns, NS);
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some(format!("involvedObject.uid={UID}").as_str()),
        "only the watched pod's events are asked for"
    );
    api.event_requests.fetch_add(1, Ordering::SeqCst);
    if q.get("watch").map(String::as_str) == Some("true") {
        assert_eq!(q.get("resourceVersion").map(String::as_str), Some("500"));
        return lines(api.watch.lock().unwrap().take());
    }
    Body::from(api.events.clone())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_events_reach_its_watchers_with_its_task_identity_and_no_one_else() {
    let (tx, rx) = mpsc::channel(8);
    let api = Api {
        pods: format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"100"}},"items":[{}]}}"#,
            pod()
        ),
        events: format!(
            r#"{{"kind":"EventList","apiVersion":"v1","metadata":{{"resourceVersion":"500"}},"items":[{}]}}"#,
            event(
                "ev-1",
                480,
                "FailedScheduling",
                "Warning",
                "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                "2026-01-02T03:04:05Z"
            )
        ),
        event_requests: Arc::new(AtomicUsize::new(0)),
        watch: Arc::new(Mutex::new(Some(rx))),
    };
    let requests = api.event_requests.clone();
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/namespaces/{ns}/events", get(events))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pki = TestPki::new();
    let signer = Signer::ed25519(Some("k1"));
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&signer])).unwrap();
    let relay = TestRelay::start_exactly(
        &pki,
        RelayConfig {
            token_jwks_file: Some(jwks_path),
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.node_name = "node-1".into();
        c.kube_pods = true;
        c.kube_api_url = Some(api_url);
        c.metrics_rescan_ms = 50;
        c.kube_label_allowlist = "node-id,absent".parse().unwrap();
    })
    .await;
    let url = relay.handle.subscribe_url();
    let token = |org: &str| {
        signer.token(
            &json!({"sub": "alice", "org": org, "exp": now() + 600, "roles": [{"role": "viewer"}]}),
        )
    };
    let selector = Selector {
        project: Some("flytesnacks".into()),
        run: Some("f3a".into()),
        kind: Some(StreamKind::Events),
        // An allowlisted pod label (--kube-label-allowlist).
        meta: [("label:node-id".to_owned(), "n0".to_owned())].into(),
        ..Selector::default()
    };

    // The stream is listed before anyone watches, and the API was not asked for events.
    let mut dev = Subscriber::connect_with_token(&url, Some(&token("dev"))).await;
    let listed = within("the pod's events stream listed", async {
        loop {
            let before = dev.events.len();
            dev.client
                .send(&Request::List {
                    selector: selector.clone(),
                    id: None,
                    watch: false,
                })
                .await
                .unwrap();
            dev.until("a list reply", |s| {
                s.events[before..]
                    .iter()
                    .any(|e| matches!(e, Event::Streams { .. }))
            })
            .await;
            let found = dev.events[before..].iter().find_map(|e| match e {
                Event::Streams { streams, .. } if streams.len() == 1 => {
                    Some(streams[0].labels.clone())
                }
                _ => None,
            });
            if let Some(labels) = found {
                return labels;
            }
            // Poll again (the catalog has no event a session can wait on before it exists).
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        (
            listed.container.as_str(),
            listed.pod.as_str(),
            listed.pod_uid.as_str(),
            listed.kind
        ),
        ("events", "f3a-n0-0", UID, StreamKind::Events)
    );
    assert_eq!(
        listed.meta,
        [("label:node-id".to_owned(), "n0".to_owned())].into(),
        "only the allowlisted label the pod has"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "no events read while nobody watches"
    );

    // Another org watches the same selector first: it is never told of the stream.
    let mut other = Subscriber::connect_with_token(&url, Some(&token("acme"))).await;
    other.subscribe("e", &selector, None).await;
    other
        .until("the other org's subscription answered", |s| {
            s.events
                .iter()
                .any(|e| matches!(e, Event::Subscribed { .. }))
        })
        .await;

    dev.subscribe("e", &selector, None).await;
    dev.until("the FailedScheduling event", |s| {
        s.stream_of("e").is_some_and(|id| {
            s.messages(id)
                .iter()
                .any(|m| m.contains("FailedScheduling"))
        })
    })
    .await;
    let stream = dev.stream_of("e").unwrap();
    let stream_labels = dev
        .events
        .iter()
        .find_map(|e| match e {
            Event::Stream { labels, .. } => Some(labels.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (
            stream_labels.org.as_str(),
            stream_labels.project.as_deref(),
            stream_labels.domain.as_deref(),
            stream_labels.run.as_deref(),
            stream_labels.action.as_deref(),
        ),
        (
            "dev",
            Some("flytesnacks"),
            Some("development"),
            Some("f3a"),
            Some("n0")
        ),
        "the event carries the pod's task identity"
    );
    let first: serde_json::Value = serde_json::from_str(&dev.messages(stream)[0]).unwrap();
    assert_eq!(first["reason"], "FailedScheduling");
    assert_eq!(first["type"], "Warning");
    assert_eq!(first["count"], 3);
    assert_eq!(first["involved_object"]["name"], "f3a-n0-0");
    assert_eq!(first["last_timestamp"], "2026-01-02T03:04:05Z");
    let line = &dev.lines[&stream][0];
    assert_eq!(
        line.timestamp_ns, 1_767_323_045_000_000_000,
        "stamped with the event's time"
    );

    // Live: a malformed watch line is skipped and counted; the next event arrives.
    tx.send("{\"type\":\"ADDED\",\"object\":".into())
        .await
        .unwrap();
    tx.send(format!(
        r#"{{"type":"ADDED","object":{}}}"#,
        event(
            "ev-2",
            510,
            "Scheduled",
            "Normal",
            "Successfully assigned to node-1",
            "2026-01-02T03:06:00Z"
        )
    ))
    .await
    .unwrap();
    dev.until("the Scheduled event from the watch", |s| {
        s.messages(stream)
            .iter()
            .any(|m| m.contains("\"Scheduled\""))
    })
    .await;
    assert_eq!(dev.messages(stream).len(), 2, "each event once");
    assert!(
        agent
            .metric("logrelay_agent_kube_events_malformed_total")
            .await
            >= 1.0
    );
    assert!(agent.metric("logrelay_agent_kube_events_total").await >= 2.0);

    // The other org's session got no stream and no line.
    other.list(&selector).await;
    assert!(
        other
            .events
            .iter()
            .all(|e| !matches!(e, Event::Stream { .. }))
    );
    assert!(
        other
            .events
            .iter()
            .all(|e| !matches!(e, Event::Streams { streams, .. } if !streams.is_empty()))
    );
    assert_eq!(other.total_lines(), 0);
}

/// A relay that answers `hello` with `features` (a relay before `events` answers `ack` only),
/// and hands each stream the agent announces to the test.
async fn fake_relay(
    pki: &TestPki,
    features: &'static [&'static str],
) -> (std::net::SocketAddr, mpsc::Receiver<StreamKind>) {
    use logrelay_wire::control::{self, AgentMsg, RelayMsg, features::EVENTS};
    use logrelay_wire::frame::{self, FrameDecoder};

    let tls = pki.relay_tls();
    let server = logrelay_tls::quic_server(tls.quic_identity, tls.agent_roots).unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
        loop {
            while let Ok(Some(body)) = decoder.next_frame() {
                match control::decode::<AgentMsg>(&body).unwrap() {
                    AgentMsg::Hello { features: f, .. } => {
                        assert!(f.iter().any(|f| f == EVENTS), "the agent names events");
                        let mut out = bytes::BytesMut::new();
                        let welcome = RelayMsg::Welcome {
                            protocol: logrelay_wire::PROTOCOL_VERSION,
                            org: "dev".into(),
                            cluster: "test".into(),
                            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
                            heartbeat_secs: 5,
                            features: features.iter().map(|f| (*f).to_owned()).collect(),
                        };
                        frame::encode(&control::encode(&welcome), &mut out);
                        send.write_all(&out).await.unwrap();
                    }
                    AgentMsg::CatalogAdd { streams } => {
                        for s in streams {
                            let _ = tx.send(s.labels.kind).await;
                        }
                    }
                    _ => {}
                }
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => decoder.extend(&c.bytes),
                _ => return,
            }
        }
    });
    (addr, rx)
}

/// The kinds an agent with `--kube-pods` announces to a relay answering `features`, once its
/// catalog holds a log stream and the pod's events stream and then a second log stream.
async fn kinds_announced_to(features: &'static [&'static str]) -> Vec<StreamKind> {
    let api = Api {
        pods: format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"100"}},"items":[{}]}}"#,
            pod()
        ),
        events: String::new(),
        event_requests: Arc::new(AtomicUsize::new(0)),
        watch: Arc::new(Mutex::new(None)),
    };
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pki = TestPki::new();
    let (relay, mut announced) = fake_relay(&pki, features).await;
    let pods = PodsDir::new();
    let _first = pods.container(NS, "other-pod", "main");
    let agent = TestAgent::start_with(&pki, &pods, relay, |c| {
        c.node_name = "node-1".into();
        c.kube_pods = true;
        c.kube_api_url = Some(api_url);
        c.metrics_rescan_ms = 50;
    })
    .await;
    eventually(
        "the log stream and the events stream in the agent's catalog",
        || async { (agent.metric("logrelay_agent_streams").await >= 2.0).then_some(()) },
    )
    .await;
    // A change after both: its announcement follows whatever the relay is offered of them.
    let _second = pods.container(NS, "third-pod", "main");
    let mut kinds = Vec::new();
    within("both log streams announced", async {
        while kinds.iter().filter(|k| **k == StreamKind::Log).count() < 2 {
            kinds.push(announced.recv().await.unwrap());
        }
    })
    .await;
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_name_events_is_not_offered_events_streams() {
    let kinds = kinds_announced_to(&["ack"]).await;
    assert_eq!(kinds, [StreamKind::Log, StreamKind::Log], "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_names_events_is_offered_them() {
    let kinds = kinds_announced_to(&["ack", "events"]).await;
    assert!(kinds.contains(&StreamKind::Events), "{kinds:?}");
}
