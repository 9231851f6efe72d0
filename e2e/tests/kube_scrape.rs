//! Pods annotated `prometheus.io/scrape`, found through the agent's node-scoped pod watch (a
//! recorded Kubernetes API served over real HTTP), scraped only while watched and delivered
//! through the relay to a subscriber who selects them by task identity; the pod's resource
//! usage (a recorded cgroup tree) carries the same identity. Needs `--features k8s`.
#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::get;
use logrelay_e2e::*;
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use tokio::sync::mpsc;

/// The UID of the annotated task pod.
const UID_A: &str = "8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

/// A pod of node-1 as the API server returns it (trimmed of fields the agent does not read).
fn pod(name: &str, uid: &str, rv: u32, annotations: &str) -> String {
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"flytesnacks-development","uid":"{uid}","resourceVersion":"{rv}","labels":{{"project":"flytesnacks","domain":"development","execution-id":"f3a","node-id":"{name}"}},"annotations":{annotations}}},"spec":{{"nodeName":"node-1","containers":[{{"name":"main","image":"ghcr.io/flyteorg/flytekit:py3.11","ports":[{{"containerPort":8080,"protocol":"TCP"}}]}}]}},"status":{{"phase":"Running","podIP":"127.0.0.1"}}}}"#
    )
}

/// The task pod: its metrics endpoint is the node exporter's port.
fn scraped_pod(port: u16) -> String {
    pod(
        "f3a-n0-0",
        UID_A,
        90,
        &format!(r#"{{"prometheus.io/scrape":"true","prometheus.io/port":"{port}"}}"#),
    )
}

/// A pod annotated for a scheme the agent does not scrape.
fn https_pod() -> String {
    pod(
        "f3a-n1-0",
        "uid-b",
        95,
        r#"{"prometheus.io/scrape":"true","prometheus.io/scheme":"https"}"#,
    )
}

/// The recorded API: the pod list, then a watch from its resourceVersion fed by the test.
#[derive(Clone)]
struct Api {
    list: String,
    watch: Arc<Mutex<Option<mpsc::Receiver<String>>>>,
}

async fn pods(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Body {
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-1"),
        "only this node's pods are asked for"
    );
    if q.get("watch").map(String::as_str) != Some("true") {
        return Body::from(api.list.clone());
    }
    let events = api.watch.lock().unwrap().take();
    let events = futures_util::stream::unfold(events, |events| async move {
        // Later watches stay open with nothing to say.
        let Some(mut rx) = events else {
            return std::future::pending().await;
        };
        let event = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(event + "\n"), Some(rx)))
    });
    Body::from_stream(events)
}

/// Serves the recorded API on 127.0.0.1; returns its URL and where watch events are pushed.
async fn api_server(items: &[String]) -> (String, mpsc::Sender<String>) {
    let (tx, rx) = mpsc::channel(8);
    let api = Api {
        list: format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"100"}},"items":[{}]}}"#,
            items.join(",")
        ),
        watch: Arc::new(Mutex::new(Some(rx))),
    };
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), tx)
}

/// The value of `name{labels}` on an admin listener.
async fn series(addr: SocketAddr, wanted: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(wanted)?.strip_prefix(' ')?.parse().ok())
}

/// The pod's cgroup (kubelet's systemd layout) with a pod-level memory reading.
fn cgroup_tree(root: &std::path::Path) {
    let pod = root.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID_A.replace('-', "_")
    ));
    std::fs::create_dir_all(&pod).unwrap();
    for (name, content) in [
        ("cpu.stat", "usage_usec 2500000\n"),
        ("memory.current", "104857600\n"),
        ("memory.stat", "inactive_file 4857600\n"),
    ] {
        std::fs::write(pod.join(name), content).unwrap();
    }
}

const RESOURCES: &str = "resources";

fn task_selector() -> Selector {
    Selector {
        project: Some("flytesnacks".into()),
        run: Some("f3a".into()),
        kind: Some(StreamKind::Metrics),
        ..Selector::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pods_are_scraped_while_watched_and_selected_by_task() {
    let exporter = NodeExporter::start().await;
    let (api_url, watch) = api_server(&[scraped_pod(exporter.addr.port()), https_pod()]).await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    std::fs::create_dir(
        pods.path()
            .join(format!("flytesnacks-development_f3a-n0-0_{UID_A}")),
    )
    .unwrap();
    let cgroups = tempfile::tempdir().unwrap();
    cgroup_tree(cgroups.path());
    let agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.node_name = "node-1".into();
        c.kube_pods = true;
        c.kube_api_url = Some(api_url);
        c.metrics_rescan_ms = 50;
        c.resources = true;
        c.cgroup_root = cgroups.path().to_owned();
    })
    .await;
    let admin = agent.handle.admin_addr;

    // The target is in the relay's catalog before anyone watches, and nothing was scraped.
    let mut sub = relay.subscriber().await;
    let listed: Vec<Labels> = within("the pod's two metrics streams listed by the relay", async {
        loop {
            let before = sub.events.len();
            let list = Request::List {
                selector: task_selector(),
                id: None,
                watch: false,
            };
            sub.client.send(&list).await.expect("send list");
            sub.until("a list reply", |s| {
                s.events[before..]
                    .iter()
                    .any(|e| matches!(e, Event::Streams { .. }))
            })
            .await;
            let found = sub.events[before..].iter().find_map(|e| match e {
                Event::Streams { streams, .. } if streams.len() == 2 => {
                    Some(streams.iter().map(|s| s.labels.clone()).collect())
                }
                _ => None,
            });
            if let Some(labels) = found {
                return labels;
            }
            // Poll again (the catalog has no event a session can wait on before it exists).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let scrape_container = format!("scrape:{}/metrics", exporter.addr.port());
    let [resources, listed] = [RESOURCES, &scrape_container].map(|c| {
        listed
            .iter()
            .find(|l| l.container == c)
            .unwrap_or_else(|| panic!("a {c} stream in {listed:?}"))
            .clone()
    });
    assert_eq!(
        (
            resources.namespace.as_str(),
            resources.pod.as_str(),
            resources.project.as_deref(),
            resources.run.as_deref(),
            resources.action.as_deref(),
        ),
        (
            "flytesnacks-development",
            "f3a-n0-0",
            Some("flytesnacks"),
            Some("f3a"),
            Some("f3a-n0-0")
        ),
        "the pod's resource usage carries its task identity"
    );
    assert_eq!(
        (
            listed.namespace.as_str(),
            listed.pod.as_str(),
            listed.pod_uid.as_str(),
            listed.container.as_str(),
            listed.node.as_str(),
        ),
        (
            "flytesnacks-development",
            "f3a-n0-0",
            UID_A,
            scrape_container.as_str(),
            "node-1",
        )
    );
    assert_eq!(
        (listed.domain.as_deref(), listed.action.as_deref()),
        (Some("development"), Some("f3a-n0-0"))
    );
    assert_eq!(
        agent.metric("logrelay_agent_scrapes_total").await,
        0.0,
        "nothing is scraped while nobody watches"
    );
    assert_eq!(
        series(admin, "logrelay_agent_scrape_pod_targets").await,
        Some(1.0)
    );
    assert_eq!(
        series(
            admin,
            r#"logrelay_agent_scrape_pods_skipped{reason="scheme"}"#
        )
        .await,
        Some(1.0),
        "the https pod is reported, not scraped"
    );

    // Watching by task identity: the exporter's series arrive, under the pod's labels.
    let scrape = Selector {
        container: Some(scrape_container.clone()),
        ..task_selector()
    };
    sub.subscribe("m", &scrape, None).await;
    sub.until("node exporter series from the annotated pod", |s| {
        s.stream_of("m").is_some_and(|id| {
            s.messages(id)
                .iter()
                .any(|m| m.starts_with("node_memory_MemTotal_bytes "))
        })
    })
    .await;
    let stream = sub.stream_of("m").unwrap();
    assert!(
        sub.messages(stream).iter().any(|m| m.trim_end() == "up 1"),
        "the scrape succeeded"
    );
    assert!(agent.metric("logrelay_agent_scrapes_total").await >= 1.0);

    // The pod is deleted: its stream ends for the subscriber.
    watch
        .send(format!(
            r#"{{"type":"DELETED","object":{}}}"#,
            scraped_pod(exporter.addr.port())
        ))
        .await
        .unwrap();
    sub.until("the deleted pod's stream ends", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::End { stream: id, .. } if *id == stream))
    })
    .await;
    assert_eq!(
        series(admin, "logrelay_agent_scrape_pod_targets").await,
        Some(0.0)
    );
}
