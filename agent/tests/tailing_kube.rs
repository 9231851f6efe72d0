//! The node-scoped pod watch against recorded Kubernetes API responses served over real HTTP,
//! and task identity on the streams discovery announces. Needs `--features k8s`.
#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::get;
use logrelay_agent::AgentConfig;
use logrelay_agent::discover::{self, Catalog, Source};
use logrelay_agent::kube::{PodIndex, client};
use logrelay_agent::metrics::AgentMetrics;
use logrelay_agent::tail::{Tailer, TailerConfig};
use tokio::sync::watch;

mod support;
use support::DEADLINE;

/// A pod as the API server returns it (trimmed of fields the agent does not read).
fn pod(name: &str, uid: &str, rv: u32, labels: &str) -> String {
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"flytesnacks-development","uid":"{uid}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T12:00:00Z","labels":{labels},"annotations":{{"attempt":"1","kubectl.kubernetes.io/default-container":"main"}},"ownerReferences":[{{"apiVersion":"flyte.lyft.com/v1alpha1","kind":"flyteworkflow","name":"f3a","uid":"11111111-2222-3333-4444-555555555555","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"nodeName":"node-1","restartPolicy":"Never","containers":[{{"name":"main","image":"ghcr.io/flyteorg/flytekit:py3.11","resources":{{}}}}]}},"status":{{"phase":"Running","podIP":"10.0.0.7"}}}}"#
    )
}

fn flyte_labels(run: &str, node: &str) -> String {
    format!(
        r#"{{"project":"flytesnacks","domain":"development","execution-id":"{run}","node-id":"{node}","interruptible":"false"}}"#
    )
}

/// `GET /api/v1/pods?fieldSelector=spec.nodeName=node-1` (a `PodList`), then the watch.
fn list_body() -> String {
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"100"}},"items":[{},{}]}}"#,
        pod("f3a-n0-0", "uid-a", 90, &flyte_labels("f3a", "n0")),
        pod("f3a-n1-0", "uid-b", 95, &flyte_labels("f3a", "n1")),
    )
}

/// The watch from resourceVersion 100: one pod added, one relabelled, one deleted.
fn watch_body() -> String {
    [
        format!(
            r#"{{"type":"ADDED","object":{}}}"#,
            pod("f3a-n2-0", "uid-c", 101, &flyte_labels("f3a", "n2"))
        ),
        format!(
            r#"{{"type":"MODIFIED","object":{}}}"#,
            pod("f3a-n0-0", "uid-a", 102, &flyte_labels("f3a", "n0-retry"))
        ),
        format!(
            r#"{{"type":"DELETED","object":{}}}"#,
            pod("f3a-n1-0", "uid-b", 103, &flyte_labels("f3a", "n1"))
        ),
    ]
    .map(|l| l + "\n")
    .concat()
}

type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Pod name, then project, domain, run and action.
type Identity = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn pods(State(seen): State<Seen>, Query(q): Query<HashMap<String, String>>) -> Body {
    seen.lock().unwrap().push(q.clone());
    if q.get("watch").map(String::as_str) != Some("true") {
        return Body::from(list_body());
    }
    if q.get("resourceVersion").map(String::as_str) == Some("100") {
        return Body::from(watch_body());
    }
    // Later watches stay open with nothing to say.
    Body::from_stream(futures_util::stream::pending::<
        Result<Vec<u8>, std::io::Error>,
    >())
}

/// A fake API server on 127.0.0.1; returns its URL and the queries it received.
async fn api_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool, changed: &tokio::sync::Notify) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let notified = changed.notified();
            if check() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// No allowlist: nothing to leave out.
fn left_out() -> client::LeftOut {
    client::LeftOut {
        mapping: logrelay_agent::kube::TaskLabels::default(),
        metrics: Arc::new(AgentMetrics::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_of_this_node_are_listed_then_watched() {
    logrelay_tls::install_provider();
    let (url, seen) = api_server().await;
    let index = Arc::new(PodIndex::default());
    let (_stop, stop_rx) = watch::channel(false);
    let c = client::connect(Some(&url)).await.unwrap();
    tokio::spawn(client::run(
        c,
        "node-1".into(),
        index.clone(),
        left_out(),
        stop_rx,
    ));
    eventually(
        "the watch events",
        || {
            index.get("uid-c").is_some()
                && index.get("uid-b").is_none()
                && index
                    .get("uid-a")
                    .is_some_and(|m| m.labels["node-id"] == "n0-retry")
        },
        &index.changed,
    )
    .await;
    assert_eq!(index.len(), 2);
    assert_eq!(index.get("uid-a").unwrap().annotations["attempt"], "1");
    let queries = seen.lock().unwrap().clone();
    assert!(
        queries
            .iter()
            .all(|q| q.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=node-1")),
        "only this node's pods are asked for: {queries:?}"
    );
    assert!(queries.iter().any(|q| q.get("watch").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_task_identity_from_pod_labels() {
    logrelay_tls::install_provider();
    let (url, _) = api_server().await;
    let index = Arc::new(PodIndex::default());
    let (_stop, stop_rx) = watch::channel(false);
    let c = client::connect(Some(&url)).await.unwrap();
    tokio::spawn(client::run(
        c,
        "node-1".into(),
        index.clone(),
        left_out(),
        stop_rx.clone(),
    ));

    let pods = tempfile::tempdir().unwrap();
    for (name, uid) in [
        ("f3a-n0-0", "uid-a"),
        ("f3a-n2-0", "uid-c"),
        ("other", "uid-z"),
    ] {
        let dir = pods
            .path()
            .join(format!("flytesnacks-development_{name}_{uid}"))
            .join("main");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), b"").unwrap();
    }
    let metrics = Arc::new(AgentMetrics::new());
    let catalog = Arc::new(Catalog::new(metrics.clone()));
    let tailer = Tailer::new(TailerConfig::default(), metrics);
    let config = AgentConfig {
        rescan_ms: 50,
        resync_ms: 100,
        node_name: "node-1".into(),
        kube_pods: true,
        ..AgentConfig::new(pods.path().to_path_buf(), "127.0.0.1:1".parse().unwrap())
    };
    tokio::spawn(discover::logs::run(
        config.logs(),
        catalog.clone(),
        tailer,
        Some(index.clone()),
        stop_rx,
    ));
    // Every pod is announced: two with their identity, the one the API does not know after
    // waiting for it.
    let mut changes = catalog.watch();
    tokio::time::timeout(DEADLINE, async {
        while catalog.snapshot().len() < 3 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("three streams");
    let mut got: Vec<Identity> = catalog
        .snapshot()
        .into_values()
        .filter(|e| matches!(e.source, Source::Log { .. }))
        .map(|e| {
            let l = e.labels;
            (l.pod, l.project, l.domain, l.run, l.action)
        })
        .collect();
    got.sort();
    let s = |v: &str| Some(v.to_string());
    // Pod a's `node-id` changes during the watch; its stream carries whichever is known at
    // this moment (a change of labels re-announces the stream under a new id).
    assert!(
        matches!(got[0].4.as_deref(), Some("n0" | "n0-retry")),
        "{got:?}"
    );
    got[0].4 = None;
    assert_eq!(
        got,
        [
            (
                "f3a-n0-0".into(),
                s("flytesnacks"),
                s("development"),
                s("f3a"),
                None
            ),
            (
                "f3a-n2-0".into(),
                s("flytesnacks"),
                s("development"),
                s("f3a"),
                s("n2")
            ),
            ("other".into(), None, None, None, None),
        ]
    );
}
