//! Discovery: finds container logs under the pods directory.
//!
//! Layout (kubelet): `<pods_dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`. Each
//! `<restart>.log` is one stream. Rotated files (`0.log.<timestamp>`) are not streams.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use logrelay_wire::labels::{Labels, PodDir, StreamKind, parse_restart};
use tokio::sync::watch;

use crate::catalog::{Catalog, Entry, Group, Source};
use crate::config::AgentConfig;

/// Lists every container log under `pods_dir`. Unreadable entries are skipped.
pub fn scan(pods_dir: &Path, node: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return out;
    };
    for pod in pods.flatten() {
        let Some(pod_dir) = pod.file_name().to_str().and_then(PodDir::parse) else {
            continue;
        };
        let Ok(containers) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for container in containers.flatten() {
            let Ok(name) = container.file_name().into_string() else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                let Some(restart) = file.file_name().to_str().and_then(parse_restart) else {
                    continue;
                };
                if !file.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                out.push(Entry {
                    labels: Labels {
                        node: node.to_owned(),
                        namespace: pod_dir.namespace.clone(),
                        pod: pod_dir.pod.clone(),
                        pod_uid: pod_dir.pod_uid.clone(),
                        container: name.clone(),
                        restart,
                        kind: StreamKind::Log,
                        ..Labels::default()
                    },
                    source: Source::Log { path: file.path() },
                });
            }
        }
    }
    out
}

/// Rescans periodically and updates the catalog, until shutdown.
pub async fn run(config: AgentConfig, catalog: Arc<Catalog>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.rescan_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        let dir = config.pods_dir.clone();
        let node = config.node_name.clone();
        let Ok(found) = tokio::task::spawn_blocking(move || scan(&dir, &node)).await else {
            continue;
        };
        let diff = catalog.replace(Group::Logs, found);
        for s in &diff.added {
            tracing::info!(stream = s.id, namespace = %s.labels.namespace, pod = %s.labels.pod,
                container = %s.labels.container, restart = s.labels.restart, "stream discovered");
        }
        for s in &diff.removed {
            tracing::info!(stream = s.id, reason = %s.reason, "stream removed");
        }
    }
}
