//! Discovery of metrics sources: static scrape targets and pod resource usage.
//!
//! Owns [`Group::Metrics`] of the catalog. Rescans every `metrics_rescan_ms`; a rescan lists
//! directories only and reads no metric: sources are read only while a demand is open.
//!
//! With the kube metadata watch (`--kube-pods`, [`crate::kube`]) the rescan also runs whenever
//! the pod index changes: pods annotated `prometheus.io/scrape` become scrape targets
//! ([`pod_entries`], through [`super::target::pod_targets`]) labelled with the pod and its task
//! identity, and pods' resource streams get that task identity too (held back at most
//! [`crate::kube::METADATA_WAIT`] for it, as log streams are).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logrelay_wire::labels::{Labels, StreamKind};
use tokio::sync::{Notify, watch};

use super::target::{PodMeta, PodSkip, ScrapeAuth, pod_targets};
use super::{ScrapeDefaults, Target, TargetSpec, auth};
use crate::catalog::{Catalog, Entry, Group, Source};
use crate::cgroup;
use crate::config::AgentConfig;
use crate::kube::{MetadataWait, PodIndex, TaskLabels, with_identity};
use crate::metrics::{AgentMetrics, SkipReason};

/// Scrape defaults from the configuration.
pub fn defaults(config: &AgentConfig) -> ScrapeDefaults {
    let mut ca_files: Vec<PathBuf> = config.scrape_ca_file.iter().cloned().collect();
    if config.scrape_ca_cluster {
        ca_files.push(PathBuf::from(auth::CLUSTER_CA_FILE));
    }
    ScrapeDefaults {
        interval: Duration::from_millis(config.scrape_interval_ms.max(1)),
        timeout: Duration::from_millis(config.scrape_timeout_ms.max(1)),
        sample_limit: config.scrape_sample_limit,
        max_body_bytes: config.scrape_max_body_bytes.max(1),
        auth: ScrapeAuth {
            ca_files,
            server_name: None,
            insecure_skip_verify: config.scrape_insecure_skip_verify,
            bearer_token_file: config.scrape_bearer_token_file.clone(),
        },
    }
}

/// Checks the scrape credentials once, at start-up, and warns about unsafe ones: every static
/// target's CA and token files, and the agent-wide CA files annotated pods would use. The first
/// file that cannot be used is the error.
pub fn check_credentials(config: &AgentConfig) -> Result<(), auth::CredentialsError> {
    let d = defaults(config);
    auth::check_ca_files(&d.auth)?;
    if d.auth.insecure_skip_verify {
        tracing::warn!(
            "--scrape-insecure-skip-verify: TLS certificates of https scrape targets \
             (annotated pods, and static targets without insecure_skip_verify=false) are NOT \
             verified"
        );
    }
    for target in &config.scrape_targets {
        let spec = target.spec(&d);
        auth::check(&spec.url, &spec.auth)?;
        for warning in auth::warnings(&spec.url, &spec.auth) {
            tracing::warn!(target_url = %spec.url, "{warning}");
        }
    }
    Ok(())
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

/// Rescans periodically (and whenever the pod index changes) and updates the catalog's
/// metrics group, until shutdown.
pub async fn run(
    config: AgentConfig,
    catalog: Arc<Catalog>,
    metrics: Arc<AgentMetrics>,
    pods: Option<Arc<PodIndex>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let d = defaults(&config);
    // Every skip reason is exported (at 0) from the start, with or without the pod watch.
    record_skips(&metrics, &mut HashMap::new(), Vec::new());
    let statics: Vec<(Labels, TargetSpec)> = config
        .scrape_targets
        .iter()
        .map(|t| (t.labels(&config.node_name), t.spec(&d)))
        .collect();
    let interval = Duration::from_millis(config.resources_interval_ms.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(config.metrics_rescan_ms.max(10)));
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
            () = crate::stopped(&mut shutdown) => return,
        }
        let resources = if config.resources {
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
                &config.node_name,
                &config.task_labels,
                &d,
            );
            metrics.scrape_pod_targets.set(targets.len() as i64);
            record_skips(&metrics, &mut skips_logged, skipped);
            found.extend(targets);
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
    fn scrape_tls_flags_become_every_targets_defaults() {
        let mut c = AgentConfig::new("/pods".into(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(defaults(&c).auth, ScrapeAuth::default());
        c.scrape_ca_file = Some("/etc/scrape-ca.pem".into());
        c.scrape_ca_cluster = true;
        c.scrape_insecure_skip_verify = true;
        c.scrape_bearer_token_file = Some("/run/token".into());
        assert_eq!(
            defaults(&c).auth,
            ScrapeAuth {
                ca_files: vec![
                    "/etc/scrape-ca.pem".into(),
                    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()
                ],
                server_name: None,
                insecure_skip_verify: true,
                bearer_token_file: Some("/run/token".into()),
            }
        );
    }

    #[test]
    fn a_static_target_whose_files_cannot_be_used_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = AgentConfig::new("/pods".into(), "127.0.0.1:1".parse().unwrap());
        let missing = dir.path().join("token");
        c.scrape_targets = vec![
            format!(
                "http://127.0.0.1:9/metrics,bearer_token_file={}",
                missing.display()
            )
            .parse()
            .unwrap(),
        ];
        let err = check_credentials(&c).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot use bearer token file {}: ",
                missing.display()
            )),
            "{err}"
        );
        std::fs::write(&missing, "t0k\n").unwrap();
        check_credentials(&c).unwrap();
        c.scrape_targets = vec!["https://127.0.0.1:9/metrics".parse().unwrap()];
        assert!(matches!(
            check_credentials(&c),
            Err(auth::CredentialsError::NoCa { .. })
        ));
        c.scrape_ca_file = Some(dir.path().join("no-ca.pem"));
        assert!(matches!(
            check_credentials(&c),
            Err(auth::CredentialsError::CaFile { .. })
        ));
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
