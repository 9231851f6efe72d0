//! Discovery of metrics sources: static scrape targets and pod resource usage.
//!
//! Owns [`Group::Metrics`] of the catalog. Rescans every `metrics_rescan_ms`; a rescan lists
//! directories only and reads no metric: sources are read only while a demand is open.
//!
//! Annotated pods (`prometheus.io/scrape`) need the pod IPs and annotations from the
//! Kubernetes API; when the kube metadata watch exists it feeds
//! [`super::target::pod_targets`] into [`entries`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{ScrapeDefaults, Target, TargetSpec};
use crate::catalog::{Catalog, Entry, Group, Source};
use crate::cgroup;
use crate::config::AgentConfig;
use logrelay_wire::labels::Labels;

/// Scrape defaults from the configuration.
pub fn defaults(config: &AgentConfig) -> ScrapeDefaults {
    ScrapeDefaults {
        interval: Duration::from_millis(config.scrape_interval_ms.max(1)),
        timeout: Duration::from_millis(config.scrape_timeout_ms.max(1)),
        sample_limit: config.scrape_sample_limit,
        max_body_bytes: config.scrape_max_body_bytes.max(1),
    }
}

/// The catalog entries for scrape targets and pods' resources.
pub fn entries(
    targets: impl IntoIterator<Item = (Labels, TargetSpec)>,
    pods: Vec<(Labels, cgroup::PodResources)>,
) -> Vec<Entry> {
    let mut out: Vec<Entry> = targets
        .into_iter()
        .map(|(labels, spec)| Entry {
            labels,
            source: Source::Scrape {
                target: Arc::new(Target::new(spec)),
            },
        })
        .collect();
    out.extend(pods.into_iter().map(|(labels, pod)| Entry {
        labels,
        source: Source::Resources { pod: Arc::new(pod) },
    }));
    out
}

/// Rescans periodically and updates the catalog's metrics group, until shutdown.
pub async fn run(config: AgentConfig, catalog: Arc<Catalog>, mut shutdown: watch::Receiver<bool>) {
    let d = defaults(&config);
    let statics: Vec<(Labels, TargetSpec)> = config
        .scrape_targets
        .iter()
        .map(|t| (t.labels(&config.node_name), t.spec(&d)))
        .collect();
    let interval = Duration::from_millis(config.resources_interval_ms.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(config.metrics_rescan_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        let pods = if config.resources {
            let (root, pods_dir, containers) = (
                config.cgroup_root.clone(),
                config.pods_dir.clone(),
                config.containers_dir.clone(),
            );
            let node = config.node_name.clone();
            tokio::task::spawn_blocking(move || {
                cgroup::scan(&root, &pods_dir, &containers, &node, interval)
            })
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        let diff = catalog.replace(Group::Metrics, entries(statics.clone(), pods));
        for s in &diff.added {
            tracing::info!(stream = s.id, namespace = %s.labels.namespace, pod = %s.labels.pod,
                source = %s.labels.container, "metrics stream discovered");
        }
        for s in &diff.removed {
            tracing::info!(stream = s.id, reason = %s.reason, "metrics stream removed");
        }
    }
}
