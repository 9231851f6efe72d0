//! Discovery against a real pods directory: new pods and containers within 250 ms (inotify),
//! restarts as new streams, and a removed pod drained before it is forgotten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logrelay_agent::AgentConfig;
use logrelay_agent::discover::{self, Catalog, Source};
use logrelay_agent::metrics::AgentMetrics;
use logrelay_agent::tail::{Job, TailParams, Tailer, TailerConfig};
use logrelay_wire::batch;
use logrelay_wire::control::Demand;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod support;
use support::{ChanSink, DEADLINE};

struct Agent {
    catalog: Arc<Catalog>,
    tailer: Arc<Tailer>,
    _stop: watch::Sender<bool>,
}

fn start(pods: &Path, rescan_ms: u64, resync_ms: u64) -> Agent {
    let metrics = Arc::new(AgentMetrics::new());
    let catalog = Arc::new(Catalog::new(metrics.clone()));
    let tailer = Tailer::new(
        TailerConfig {
            drain_linger: Duration::from_millis(100),
            ..TailerConfig::default()
        },
        metrics,
    );
    let config = AgentConfig {
        rescan_ms,
        resync_ms,
        ..AgentConfig::new(pods.to_path_buf(), "127.0.0.1:1".parse().unwrap())
    };
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(discover::logs::run(
        config.logs(),
        catalog.clone(),
        tailer.clone(),
        None,
        stop_rx.clone(),
    ));
    tokio::spawn(tailer.clone().run(stop_rx));
    Agent {
        catalog,
        tailer,
        _stop: stop,
    }
}

/// Waits until the catalog satisfies `done`; returns how long it took.
async fn until(catalog: &Catalog, what: &str, done: impl Fn(&Catalog) -> bool) -> Duration {
    let started = Instant::now();
    let mut changes = catalog.watch();
    tokio::time::timeout(DEADLINE, async {
        while !done(catalog) {
            changes.changed().await.expect("catalog alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    started.elapsed()
}

fn logs(catalog: &Catalog) -> Vec<(String, String, u32)> {
    let mut v: Vec<_> = catalog
        .snapshot()
        .into_values()
        .filter(|e| matches!(e.source, Source::Log { .. }))
        .map(|e| (e.labels.pod, e.labels.container, e.labels.restart))
        .collect();
    v.sort();
    v
}

fn container(pods: &Path, pod: &str, name: &str) -> PathBuf {
    let dir = pods.join(format!("ns_{pod}_uid-{pod}")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_and_containers_are_found_within_250_ms() {
    let pods = tempfile::tempdir().unwrap();
    // Rescans are far apart: only inotify can be this quick.
    let agent = start(pods.path(), 30_000, 60_000);
    until(&agent.catalog, "the first scan", |_| true).await;
    for (i, pod) in ["a", "b", "c"].iter().enumerate() {
        let dir = container(pods.path(), pod, "main");
        std::fs::write(dir.join("0.log"), b"").unwrap();
        let took = until(&agent.catalog, "a new pod", |c| logs(c).len() == 2 * i + 1).await;
        assert!(
            took < Duration::from_millis(250),
            "new pod found in {took:?}"
        );
        // A second container of a pod already known.
        let dir = container(pods.path(), pod, "sidecar");
        std::fs::write(dir.join("0.log"), b"").unwrap();
        let took = until(&agent.catalog, "a new container", |c| {
            logs(c).len() == 2 * i + 2
        })
        .await;
        assert!(
            took < Duration::from_millis(250),
            "new container found in {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_a_new_stream_with_its_restart_label() {
    let pods = tempfile::tempdir().unwrap();
    let dir = container(pods.path(), "p", "main");
    std::fs::write(dir.join("0.log"), b"").unwrap();
    let agent = start(pods.path(), 50, 100);
    until(&agent.catalog, "the container", |c| logs(c).len() == 1).await;
    std::fs::write(dir.join("1.log"), b"").unwrap();
    std::fs::write(dir.join("0.log.20240101-000000"), b"").unwrap();
    until(&agent.catalog, "the restart", |c| logs(c).len() == 2).await;
    assert_eq!(
        logs(&agent.catalog),
        [
            ("p".to_string(), "main".to_string(), 0),
            ("p".to_string(), "main".to_string(), 1)
        ],
        "a restart is a stream of its own; a rotated file is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pod_is_drained_then_forgotten() {
    let pods = tempfile::tempdir().unwrap();
    let dir = container(pods.path(), "short", "main");
    let path = dir.join("0.log");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "2024-01-01T00:00:00Z stdout F first").unwrap();
    let agent = start(pods.path(), 50, 100);
    until(&agent.catalog, "the container", |c| logs(c).len() == 1).await;

    // Someone follows it.
    let (tx, mut rx) = mpsc::channel(1024);
    let served = {
        let tailer = agent.tailer.clone();
        let path = path.clone();
        tokio::spawn(async move {
            tailer
                .serve(
                    Job {
                        path: &path,
                        spec: &Demand {
                            tail: Some(10),
                            follow: true,
                            ..Demand::default()
                        },
                        stream_ref: 1,
                        params: TailParams {
                            max_batch_bytes: 64 * 1024,
                            max_line_bytes: 1 << 20,
                            follow_poll: Duration::from_millis(5),
                        },
                    },
                    &mut ChanSink(tx),
                )
                .await
        })
    };
    let mut got: Vec<String> = Vec::new();
    let mut recv = async |got: &mut Vec<String>, n: usize| {
        tokio::time::timeout(DEADLINE, async {
            while got.len() < n {
                let b = rx.recv().await.expect("data stream open");
                for l in batch::lines(&b).unwrap().1 {
                    got.push(String::from_utf8_lossy(l.message).into_owned());
                }
            }
        })
        .await
        .expect("lines arrive");
    };
    recv(&mut got, 1).await;

    // Its last lines are written, and the pod is deleted at once (kubelet removing it).
    for i in 0..1000 {
        writeln!(f, "2024-01-01T00:00:01Z stdout F last {i}").unwrap();
    }
    drop(f);
    std::fs::remove_dir_all(pods.path().join("ns_short_uid-short")).unwrap();

    // Every line still arrives; then the stream leaves the catalog and the demand ends.
    recv(&mut got, 1001).await;
    assert_eq!(got.last().unwrap(), "last 999\n");
    until(&agent.catalog, "the stream to go", |c| logs(c).is_empty()).await;
    let ended = tokio::time::timeout(DEADLINE, served)
        .await
        .expect("the demand ends")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(!agent.tailer.is_draining(&path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_announced_before_its_pods_metadata_is_announced_again_with_it() {
    use logrelay_agent::kube::{PodIndex, PodMeta};
    let pods = tempfile::tempdir().unwrap();
    let dir = container(pods.path(), "task", "main");
    std::fs::write(dir.join("0.log"), b"").unwrap();
    let metrics = Arc::new(AgentMetrics::new());
    let catalog = Arc::new(Catalog::new(metrics.clone()));
    let tailer = Tailer::new(TailerConfig::default(), metrics);
    let index = Arc::new(PodIndex::default());
    let config = AgentConfig {
        rescan_ms: 50,
        resync_ms: 100,
        ..AgentConfig::new(pods.path().to_path_buf(), "127.0.0.1:1".parse().unwrap())
    };
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(discover::logs::run(
        config.logs(),
        catalog.clone(),
        tailer,
        Some(index.clone()),
        stop_rx,
    ));
    // The API is slow: after the wait, the stream is announced without task identity…
    until(&catalog, "the stream, without identity", |c| {
        logs(c).len() == 1
    })
    .await;
    let first: Vec<_> = catalog.snapshot().into_iter().collect();
    assert_eq!(first[0].1.labels.project, None);

    // …and once the pod's metadata arrives, announced again with it (a new id), so sessions
    // scoped to the project can see it.
    index.upsert(
        "uid-task".into(),
        PodMeta {
            labels: [("project".to_owned(), "flytesnacks".to_owned())].into(),
            ..PodMeta::default()
        },
    );
    until(&catalog, "the stream, with identity", |c| {
        c.snapshot()
            .values()
            .any(|e| e.labels.project.as_deref() == Some("flytesnacks"))
    })
    .await;
    let now: Vec<_> = catalog.snapshot().into_iter().collect();
    assert_eq!(now.len(), 1, "replaced, not doubled");
    assert_ne!(now[0].0, first[0].0);
}
