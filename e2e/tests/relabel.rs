//! A pod's allowlisted label changing (issue 17): the agent's pod watch (a recorded Kubernetes
//! API served over real HTTP) sees the pod `MODIFIED` with another `team` label, and the stream
//! is updated in place: the same stream id, its watcher whose subscription still matches reads
//! every line on without a break, the watcher whose selector named the old label is told `end`
//! `labels_changed`, a standing subscription naming the new label attaches to the same stream,
//! and a watched list gets the entry again with its new labels. Needs `--features k8s`.
#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::get;
use logrelay_e2e::*;
use logrelay_wire::reason::EndReason;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use tokio::sync::mpsc;

const NS: &str = "ns";
const POD: &str = "trainer";

fn pod(rv: u32, team: &str) -> String {
    let uid = logrelay::demo::uid(NS, POD);
    format!(
        r#"{{"metadata":{{"name":"{POD}","namespace":"{NS}","uid":"{uid}","resourceVersion":"{rv}","labels":{{"team":"{team}"}}}},"spec":{{"nodeName":"node-1","containers":[{{"name":"main","image":"busybox"}}]}},"status":{{"phase":"Running"}}}}"#
    )
}

#[derive(Clone)]
struct Api {
    list: String,
    watch: Arc<Mutex<Option<mpsc::Receiver<String>>>>,
}

async fn pods(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Body {
    if q.get("watch").map(String::as_str) != Some("true") {
        return Body::from(api.list.clone());
    }
    // The first watch says what the test sends; later ones stay open with nothing to say.
    let rx = api.watch.lock().unwrap().take();
    Body::from_stream(futures_util::stream::unfold(rx, |rx| async move {
        let Some(mut rx) = rx else {
            return std::future::pending().await;
        };
        let line = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(line + "\n"), Some(rx)))
    }))
}

fn team(t: &str) -> Selector {
    Selector {
        meta: [("label:team".to_owned(), t.to_owned())].into(),
        ..Selector::default()
    }
}

/// The stream's messages a session received, as numbers (`line-N`).
fn numbers(s: &Subscriber, stream: u64) -> Vec<u64> {
    s.messages(stream)
        .iter()
        .filter_map(|m| m.trim().strip_prefix("line-")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_allowlisted_label_changing_updates_its_stream_in_place() {
    let (tx, rx) = mpsc::channel(8);
    let api = Api {
        list: format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"100"}},"items":[{}]}}"#,
            pod(90, "web")
        ),
        watch: Arc::new(Mutex::new(Some(rx))),
    };
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut log = pods.container(NS, POD, "main");
    let _agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.node_name = "node-1".into();
        c.kube_pods = true;
        c.kube_api_url = Some(api_url);
        c.kube_label_allowlist = "team".parse().unwrap();
    })
    .await;
    let url = relay.handle.subscribe_url();
    let by_pod = selector(NS, POD, "main");

    // Watchers before the change: one by pod name, one by the old label; a standing
    // subscription by the new label; a watched list of the pod.
    let mut stays = Subscriber::connect(&url).await;
    let mut web = Subscriber::connect(&url).await;
    let mut ml = Subscriber::connect(&url).await;
    let mut lists = Subscriber::connect(&url).await;
    web.subscribe("w", &team("web"), Some(0)).await;
    web.until("the stream with team=web", |s| s.stream_of("w").is_some())
        .await;
    let id = web.stream_of("w").unwrap();
    stays.subscribe("p", &by_pod, Some(0)).await;
    stays
        .until("the same stream by pod name", |s| {
            s.stream_of("p") == Some(id)
        })
        .await;
    ml.subscribe("m", &team("ml"), Some(0)).await;
    ml.until("subscribed", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::Subscribed { .. }))
    })
    .await;
    lists
        .client
        .send(&Request::List {
            selector: by_pod.clone(),
            id: Some("l".into()),
            watch: true,
        })
        .await
        .unwrap();
    lists
        .until("the list", |s| {
            s.events.iter().any(|e| matches!(e, Event::Streams { .. }))
        })
        .await;

    // Lines flow to both watchers (the agent follows from its open on).
    let mut next = 0u64;
    let mut write = |n: u64, log: &mut logrelay::demo::CriWriter| {
        let lines: Vec<Vec<u8>> = (next..next + n)
            .map(|i| format!("line-{i}\n").into_bytes())
            .collect();
        log.write_lines(lines.iter().map(Vec::as_slice)).unwrap();
        next += n;
        next
    };
    let first = loop {
        let upto = write(10, &mut log);
        let got = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            while numbers(&stays, id).last().is_none_or(|&l| l + 1 < upto) {
                stays.recv().await.expect("session open");
            }
        })
        .await;
        if got.is_ok() {
            break numbers(&stays, id)[0];
        }
    };

    // The pod's `team` label changes.
    tx.send(format!(
        r#"{{"type":"MODIFIED","object":{}}}"#,
        pod(101, "ml")
    ))
    .await
    .unwrap();
    web.until("end labels_changed", |s| {
        s.events.iter().any(|e| {
            matches!(e, Event::End { stream, reason } if *stream == id && *reason == EndReason::LabelsChanged)
        })
    })
    .await;
    ml.until("the same stream, relabelled", |s| {
        s.stream_of("m").is_some()
    })
    .await;
    assert_eq!(ml.stream_of("m"), Some(id), "the same stream id");
    let relabelled = ml
        .events
        .iter()
        .find_map(|e| match e {
            Event::Stream { labels, .. } => Some(labels.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(relabelled.meta["label:team"], "ml");
    lists
        .until("the entry again, with its new labels", |s| {
            s.events.iter().any(|e| {
                matches!(e, Event::Catalog { added, .. }
                    if added.iter().any(|a| a.stream == id && a.labels.meta["label:team"] == "ml"))
            })
        })
        .await;

    // Lines written after the change reach the watcher that stayed and the new one.
    let upto = write(200, &mut log);
    for s in [&mut stays, &mut ml] {
        s.until("the lines after the change", |s| {
            numbers(s, id).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;
    }
    assert_eq!(
        numbers(&stays, id),
        (first..upto).collect::<Vec<_>>(),
        "every line once, in order, across the change"
    );
    for e in &stays.events {
        assert!(
            !matches!(e, Event::End { .. } | Event::Gap { .. }),
            "nothing but lines for the watcher that stayed: {:?}",
            stays.events
        );
    }
}
