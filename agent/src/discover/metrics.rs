//! Discovery of metrics sources: static scrape targets, pods annotated for Prometheus, and pod
//! resource usage.
//!
//! Owns [`Group::Metrics`] of the catalog. Rescans every `rescan`; a rescan lists directories
//! only and reads no metric: sources are read only while a demand is open.
//!
//! With the kube metadata watch (`--kube-pods`, [`crate::kube`]) the rescan also runs whenever
//! the pod index changes: pods annotated `prometheus.io/scrape` become scrape targets
//! ([`pod_entries`], through [`crate::scrape::target::pod_targets`]) labelled with the pod and
//! its task identity, and pods' resource streams get that task identity too (held back at most
//! [`super::identity::METADATA_WAIT`] for it, as log streams are). Each pod of the index also
//! gets an `events` stream ([`event_entries`], [`crate::kube::events`]) in [`Group::Events`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logrelay_wire::labels::{Labels, StreamKind};
use tokio::sync::{Notify, watch};

use crate::cgroup;
use crate::kube::{PodIndex, TaskLabels};
use crate::metrics::{AgentMetrics, SkipReason};
use crate::scrape::target::{PodMeta, PodSkip, pod_targets};
use crate::scrape::{ScrapeDefaults, StaticTarget, Target, TargetSpec};

use super::catalog::{Catalog, Entry, Group, Source};
use super::identity::{MetadataWait, with_identity};

/// Default of `--metrics-rescan-ms`.
pub const DEFAULT_RESCAN_MS: u64 = 2_000;

/// The metrics sources loop's configuration.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// This node's name, in every stream's labels.
    pub node: String,
    /// Time between rescans.
    pub rescan: Duration,
    /// Static scrape targets.
    pub targets: Vec<StaticTarget>,
    /// What targets (static and annotated pods) take when they set nothing of their own.
    pub scrape: ScrapeDefaults,
    /// Each pod's resource usage as a stream (`None`: not offered).
    pub resources: Option<cgroup::ResourcesConfig>,
    /// Where kubelet writes pod logs: its `<ns>_<pod>_<uid>` directories name the pods of
    /// resource streams.
    pub pods_dir: PathBuf,
    /// Pod labels (or annotations) mapped onto task identity, with a pod index.
    pub task_labels: TaskLabels,
}

/// The catalog entries of static scrape targets.
pub fn target_entries(targets: impl IntoIterator<Item = (Labels, TargetSpec)>) -> Vec<Entry> {
    targets
        .into_iter()
        .map(|(labels, spec)| Entry {
            labels,
            source: Source::Scrape {
                target: Arc::new(Target::new(spec)),
            },
        })
        .collect()
}

/// The catalog entries of pods' resource usage.
pub fn resource_entries(pods: Vec<(Labels, cgroup::PodResources)>) -> Vec<Entry> {
    pods.into_iter()
        .map(|(labels, pod)| Entry {
            labels,
            source: Source::Resources { pod: Arc::new(pod) },
        })
        .collect()
}

/// The scrape targets of the pods annotated for Prometheus, each labelled like that pod's log
/// streams (node, namespace, pod, pod UID, task identity), and the annotated pods that give no
/// target with the reason. Pods not annotated are neither.
pub fn pod_entries(
    pods: &[(String, PodMeta)],
    node: &str,
    mapping: &TaskLabels,
    defaults: &ScrapeDefaults,
) -> (Vec<Entry>, Vec<(String, PodSkip)>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for (uid, meta) in pods {
        let mut base = Labels {
            node: node.to_owned(),
            namespace: meta.namespace.clone(),
            pod: meta.name.clone(),
            pod_uid: uid.clone(),
            kind: StreamKind::Metrics,
            ..Labels::default()
        };
        mapping.apply(meta, &mut base);
        match pod_targets(meta, &base, defaults) {
            Ok(targets) => found.extend(targets.into_iter().map(|(labels, spec)| Entry {
                labels,
                source: Source::Scrape {
                    target: Arc::new(Target::of_pod(spec, uid.clone())),
                },
            })),
            Err(PodSkip::NotAnnotated) => {}
            Err(why) => skipped.push((uid.clone(), why)),
        }
    }
    (found, skipped)
}

/// The `events` streams of the pods of the index (kind `events`, container `events`), labelled
/// like their log streams.
pub fn event_entries(
    pods: &[(String, PodMeta)],
    node: &str,
    mapping: &TaskLabels,
    api: &Arc<crate::kube::events::EventsApi>,
) -> Vec<Entry> {
    pods.iter()
        .map(|(uid, meta)| {
            let mut labels = Labels {
                node: node.to_owned(),
                namespace: meta.namespace.clone(),
                pod: meta.name.clone(),
                pod_uid: uid.clone(),
                container: crate::kube::events::CONTAINER.to_owned(),
                kind: StreamKind::Events,
                ..Labels::default()
            };
            mapping.apply(meta, &mut labels);
            Entry {
                labels,
                source: Source::Events {
                    pod: Arc::new(crate::kube::events::PodEvents::new(
                        uid.clone(),
                        meta.namespace.clone(),
                        api.clone(),
                    )),
                },
            }
        })
        .collect()
}

/// Rescans periodically (and whenever the pod index changes) and updates the catalog's
/// metrics group, until shutdown.
pub async fn run(
    config: MetricsConfig,
    catalog: Arc<Catalog>,
    metrics: Arc<AgentMetrics>,
    pods: Option<Arc<PodIndex>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Every skip reason is exported (at 0) from the start, with or without the pod watch.
    record_skips(&metrics, &mut HashMap::new(), Vec::new());
    let statics: Vec<(Labels, TargetSpec)> = config
        .targets
        .iter()
        .map(|t| (t.labels(&config.node), t.spec(&config.scrape)))
        .collect();
    let mut tick = tokio::time::interval(config.rescan.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pods whose resources wait for their metadata.
    let mut waiting = MetadataWait::default();
    // Annotated pods that give no target, as last logged.
    let mut skips_logged: HashMap<String, PodSkip> = HashMap::new();
    let no_pods = Notify::new();
    loop {
        let pods_changed = pods.as_ref().map_or(&no_pods, |p| &p.changed).notified();
        tokio::select! {
            _ = tick.tick() => {}
            () = pods_changed => {}
            () = crate::shutdown::stopped(&mut shutdown) => return,
        }
        let resources = match config.resources.clone() {
            Some(res) => {
                let (pods_dir, node) = (config.pods_dir.clone(), config.node.clone());
                tokio::task::spawn_blocking(move || cgroup::scan(&res, &pods_dir, &node))
                    .await
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let mut found = target_entries(statics.clone());
        let resources = resource_entries(resources);
        if let Some(index) = &pods {
            found.extend(with_identity(
                &resources,
                index,
                &config.task_labels,
                &mut waiting,
            ));
            let (targets, skipped) = pod_entries(
                &index.snapshot(),
                &config.node,
                &config.task_labels,
                &config.scrape,
            );
            metrics.scrape_pod_targets.set(targets.len() as i64);
            record_skips(&metrics, &mut skips_logged, skipped);
            found.extend(targets);
            if let Some(api) = index.events.get() {
                let events =
                    event_entries(&index.snapshot(), &config.node, &config.task_labels, api);
                let diff = catalog.replace(Group::Events, events);
                for s in &diff.added {
                    tracing::debug!(stream = s.id, pod = %s.labels.pod, "events stream discovered");
                }
            }
        } else {
            found.extend(resources);
        }
        let diff = catalog.replace(Group::Metrics, found);
        for s in &diff.added {
            tracing::info!(stream = s.id, namespace = %s.labels.namespace, pod = %s.labels.pod,
                source = %s.labels.container, "metrics stream discovered");
        }
        for s in &diff.removed {
            tracing::info!(stream = s.id, reason = %s.reason, "metrics stream removed");
        }
    }
}

/// Sets the skip gauges, and logs each pod once per new reason.
fn record_skips(
    metrics: &AgentMetrics,
    logged: &mut HashMap<String, PodSkip>,
    skipped: Vec<(String, PodSkip)>,
) {
    let mut counts: HashMap<&'static str, i64> = ALL_SKIPS.iter().map(|r| (*r, 0)).collect();
    let mut now = HashMap::with_capacity(skipped.len());
    for (uid, why) in skipped {
        *counts.entry(why.reason()).or_default() += 1;
        if logged.get(&uid) != Some(&why) {
            tracing::warn!(pod_uid = %uid, reason = %why,
                "pod annotated prometheus.io/scrape gives no scrape target");
        }
        now.insert(uid, why);
    }
    for (reason, n) in counts {
        metrics
            .scrape_pods_skipped
            .get_or_create(&SkipReason { reason })
            .set(n);
    }
    *logged = now;
}

/// Every [`PodSkip::reason`] but `not_annotated`, so each gauge is exported from the start.
const ALL_SKIPS: [&str; 5] = ["no_ip", "bad_port", "scheme", "bad_path", "no_port"];

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ann: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: "flytesnacks-development".into(),
            name: name.into(),
            labels: [("project", "flytesnacks"), ("execution-id", "f3a")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            annotations: ann
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ip: Some("10.0.0.7".parse().unwrap()),
            ports: Vec::new(),
        }
    }

    #[test]
    fn annotated_pods_become_targets_labelled_like_their_logs() {
        let scraped = pod(
            "f3a-n0-0",
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9102"),
            ],
        );
        let pods = vec![
            ("uid-a".to_owned(), scraped.clone()),
            (
                "uid-b".to_owned(),
                pod(
                    "f3a-n1-0",
                    &[
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/port", "metrics"),
                    ],
                ),
            ),
            ("uid-c".to_owned(), pod("f3a-n2-0", &[])),
        ];
        let mapping: TaskLabels = "project=project,run=execution-id".parse().unwrap();
        let (found, skipped) = pod_entries(&pods, "node-1", &mapping, &ScrapeDefaults::default());

        assert_eq!(found.len(), 1);
        let l = &found[0].labels;
        assert_eq!(
            (
                l.node.as_str(),
                l.namespace.as_str(),
                l.pod.as_str(),
                l.pod_uid.as_str(),
                l.container.as_str(),
                l.kind,
            ),
            (
                "node-1",
                "flytesnacks-development",
                "f3a-n0-0",
                "uid-a",
                "scrape:9102/metrics",
                StreamKind::Metrics
            )
        );
        assert_eq!(l.project.as_deref(), Some("flytesnacks"));
        assert_eq!(l.run.as_deref(), Some("f3a"));
        let Source::Scrape { target } = &found[0].source else {
            panic!("a scrape source");
        };
        assert_eq!(target.spec.url.to_string(), "http://10.0.0.7:9102/metrics");
        assert_eq!(
            skipped,
            [("uid-b".to_owned(), PodSkip::BadPort("metrics".into()))],
            "annotated but unusable pods are reported, unannotated ones are not"
        );

        // A new pod that reuses the IP of a deleted one is a new stream.
        let (reused, _) = pod_entries(
            &[("uid-z".to_owned(), scraped)],
            "node-1",
            &mapping,
            &ScrapeDefaults::default(),
        );
        assert_ne!(reused[0].source, found[0].source);
    }
}
