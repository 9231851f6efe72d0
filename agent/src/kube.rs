//! Task identity from pod metadata.
//!
//! Labels from the log path are always there (namespace, pod, pod UID, container, restart).
//! With the `k8s` cargo feature and `--kube-pods`, the agent also watches the pods of its own
//! node in the Kubernetes API (`fieldSelector=spec.nodeName=<node>`: list, then watch from the
//! list's `resourceVersion`, list again when the watch expires or fails) and keeps each pod's
//! labels, annotations, IP and declared ports by UID in a [`PodIndex`]. Discovery then maps
//! configured pod labels (or annotations) onto the task identity of every stream of that pod
//! ([`TaskLabels`]): `project`, `domain`, `run`, `action`, `attempt`
//! ([`crate::discover::identity`]). The same index feeds the scrape targets of pods annotated
//! for Prometheus ([`crate::scrape::target::pod_targets`]).
//!
//! The same index names the pods whose Kubernetes events are offered as streams
//! ([`events`]: read only while watched).
//!
//! The mapping and the index are pure; only [`client`] and [`events`]' client (feature `k8s`)
//! do I/O.

pub mod events;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::RwLock;

use logrelay_wire::labels::{
    Labels, MAX_META_BYTES, MAX_META_ENTRIES, META_ANNOTATION_PREFIX, META_LABEL_PREFIX,
};
use logrelay_wire::selector::MAX_VALUE_BYTES;
use tokio::sync::Notify;

/// The default task identity mapping: the labels Flyte puts on task pods.
pub const DEFAULT_TASK_LABELS: &str =
    "project=project,domain=domain,run=execution-id,action=node-id,attempt=attempt";

/// A pod's metadata, as read from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// `status.podIP`; none while the pod is being scheduled.
    pub ip: Option<IpAddr>,
    /// Ports its containers declare (`spec.containers[].ports[]`).
    pub ports: Vec<DeclaredPort>,
}

/// One `containerPort` of a pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredPort {
    /// The container declaring it.
    pub container: String,
    /// The port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`; empty means TCP (the API default).
    pub protocol: String,
}

/// Longest pod label or annotation key an allowlist may name (a 253-byte prefix, `/`, a
/// 63-byte name).
pub const MAX_ALLOWLIST_KEY_BYTES: usize = 317;

/// Pod label (or annotation) keys whose values become stream labels ([`Labels::meta`]), from
/// `--kube-label-allowlist` / `--kube-annotation-allowlist`: comma-separated, at most
/// [`MAX_META_ENTRIES`] keys of at most [`MAX_ALLOWLIST_KEY_BYTES`] each, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(pub Vec<String>);

/// An allowlist that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAllowlist {
    /// More keys than a stream can carry.
    #[error("an allowlist names at most {MAX_META_ENTRIES} keys, not {0}")]
    TooMany(usize),
    /// A key that is too long or contains whitespace.
    #[error("bad allowlist key `{0}`: at most {MAX_ALLOWLIST_KEY_BYTES} bytes, no whitespace")]
    Key(String),
}

impl std::str::FromStr for Allowlist {
    type Err = BadAllowlist;

    /// Parses `<key>,<key>,…`; empty means none. A key named twice counts once.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys: Vec<String> = Vec::new();
        for key in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if key.len() > MAX_ALLOWLIST_KEY_BYTES || key.chars().any(char::is_whitespace) {
                return Err(BadAllowlist::Key(key.into()));
            }
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_owned());
            }
        }
        if keys.len() > MAX_META_ENTRIES {
            return Err(BadAllowlist::TooMany(keys.len()));
        }
        Ok(Self(keys))
    }
}

/// The allowlisted metadata of a pod as stream labels ([`Labels::meta`]): each allowlisted
/// pod label the pod has as `label:<key>`, then each allowlisted annotation as
/// `annotation:<key>`, in allowlist order. A value longer than [`MAX_VALUE_BYTES`] (a selector
/// could not name it), and every entry once [`MAX_META_ENTRIES`] or [`MAX_META_BYTES`] would be
/// passed, is left out; the second value counts them.
pub fn stream_meta(
    meta: &PodMeta,
    labels: &Allowlist,
    annotations: &Allowlist,
) -> (BTreeMap<String, String>, usize) {
    let mut out = BTreeMap::new();
    let (mut bytes, mut left_out) = (0, 0);
    let wanted = labels
        .0
        .iter()
        .map(|k| (META_LABEL_PREFIX, k, meta.labels.get(k)))
        .chain(
            annotations
                .0
                .iter()
                .map(|k| (META_ANNOTATION_PREFIX, k, meta.annotations.get(k))),
        );
    for (prefix, key, value) in wanted {
        let Some(value) = value else { continue };
        let key = format!("{prefix}{key}");
        let size = key.len() + value.len();
        if value.len() > MAX_VALUE_BYTES
            || out.len() >= MAX_META_ENTRIES
            || bytes + size > MAX_META_BYTES
        {
            left_out += 1;
            continue;
        }
        bytes += size;
        out.insert(key, value.clone());
    }
    (out, left_out)
}

/// How pod metadata becomes stream labels: where each task identity label comes from (a pod
/// label key, or `annotation:<key>`), and the allowlisted labels and annotations copied as
/// they are ([`stream_meta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskLabels {
    /// Source of `project`.
    pub project: Option<String>,
    /// Source of `domain`.
    pub domain: Option<String>,
    /// Source of `run`.
    pub run: Option<String>,
    /// Source of `action`.
    pub action: Option<String>,
    /// Source of `attempt`.
    pub attempt: Option<String>,
    /// Pod labels copied as `label:<key>` (`--kube-label-allowlist`).
    pub label_allowlist: Allowlist,
    /// Pod annotations copied as `annotation:<key>` (`--kube-annotation-allowlist`).
    pub annotation_allowlist: Allowlist,
}

/// A task label mapping that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad task label mapping `{0}`: expected `<project|domain|run|action|attempt>=<pod label key>` (or `=annotation:<key>`), comma-separated"
)]
pub struct BadMapping(pub String);

impl std::str::FromStr for TaskLabels {
    type Err = BadMapping;

    /// Parses `project=<key>,domain=<key>,…`; empty means no mapping.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, key) = part
                .split_once('=')
                .filter(|(_, k)| !k.is_empty())
                .ok_or_else(|| BadMapping(part.into()))?;
            let slot = match name.trim() {
                "project" => &mut m.project,
                "domain" => &mut m.domain,
                "run" => &mut m.run,
                "action" => &mut m.action,
                "attempt" => &mut m.attempt,
                _ => return Err(BadMapping(part.into())),
            };
            *slot = Some(key.trim().to_owned());
        }
        Ok(m)
    }
}

impl TaskLabels {
    /// Fills the task identity of `labels` from `meta`; sources the pod lacks stay unset.
    pub fn apply(&self, meta: &PodMeta, labels: &mut Labels) {
        let read = |source: &Option<String>| {
            let source = source.as_deref()?;
            match source.strip_prefix("annotation:") {
                Some(key) => meta.annotations.get(key).cloned(),
                None => meta.labels.get(source).cloned(),
            }
        };
        labels.project = read(&self.project);
        labels.domain = read(&self.domain);
        labels.run = read(&self.run);
        labels.action = read(&self.action);
        labels.attempt = read(&self.attempt);
        labels.meta = stream_meta(meta, &self.label_allowlist, &self.annotation_allowlist).0;
    }
}

/// The pods of this node, by UID.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: RwLock<HashMap<String, PodMeta>>,
    /// Counts changes: a reader that compares it misses none (a [`Notify`] wake-up is lost
    /// when nobody waits at that moment).
    version: std::sync::atomic::AtomicU64,
    /// Woken whenever the index changes (a hint; see [`PodIndex::version`]).
    pub changed: Notify,
    /// The API for the pods' events streams; set when the pod watch runs.
    pub events: std::sync::OnceLock<std::sync::Arc<events::EventsApi>>,
}

impl PodIndex {
    /// The metadata of the pod with `uid`, if known.
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        self.pods.read().expect("pod index lock").get(uid).cloned()
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.pods.read().expect("pod index lock").len()
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many changes the index has seen.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Every pod known, by UID, in UID order.
    pub fn snapshot(&self) -> Vec<(String, PodMeta)> {
        let mut pods: Vec<(String, PodMeta)> = self
            .pods
            .read()
            .expect("pod index lock")
            .iter()
            .map(|(uid, meta)| (uid.clone(), meta.clone()))
            .collect();
        pods.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pods
    }

    /// Replaces everything (after a list).
    pub fn replace(&self, pods: HashMap<String, PodMeta>) {
        *self.pods.write().expect("pod index lock") = pods;
        self.bump();
    }

    /// A pod was added or changed.
    pub fn upsert(&self, uid: String, meta: PodMeta) {
        self.pods.write().expect("pod index lock").insert(uid, meta);
        self.bump();
    }

    /// A pod was deleted. (Its streams live on until their logs are gone and drained.)
    pub fn remove(&self, uid: &str) {
        self.pods.write().expect("pod index lock").remove(uid);
        self.bump();
    }
}

/// The Kubernetes API client side (feature `k8s`).
#[cfg(feature = "k8s")]
pub mod client {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};
    use tokio::sync::watch;

    use super::{DeclaredPort, PodIndex, PodMeta, TaskLabels, stream_meta};

    /// Counts, for each pod version the watch reads, the allowlisted entries its streams' labels
    /// leave out ([`stream_meta`]).
    #[derive(Debug)]
    pub struct LeftOut {
        /// The allowlists.
        pub mapping: TaskLabels,
        /// Where `kube_meta_left_out` is counted.
        pub metrics: Arc<crate::metrics::AgentMetrics>,
    }

    impl LeftOut {
        fn count(&self, meta: &PodMeta) {
            let (_, n) = stream_meta(
                meta,
                &self.mapping.label_allowlist,
                &self.mapping.annotation_allowlist,
            );
            if n > 0 {
                self.metrics.kube_meta_left_out.inc_by(n as u64);
                tracing::warn!(pod = %meta.name, namespace = %meta.namespace, left_out = n, "allowlisted pod labels left out of its streams' labels (too long, or past the bounds)");
            }
        }
    }

    /// Why the API could not be reached.
    #[derive(Debug, thiserror::Error)]
    pub enum KubeError {
        /// The API server URL does not parse.
        #[error("bad Kubernetes API URL `{0}`")]
        Url(String),
        /// No configuration (in-cluster service account or kubeconfig) was found, or the
        /// client could not be built.
        #[error("Kubernetes client: {0}")]
        Client(#[from] kube::Error),
    }

    /// A client for `url` (plain or TLS), or from the environment (in-cluster service account,
    /// else kubeconfig) when `None`.
    pub async fn connect(url: Option<&str>) -> Result<kube::Client, KubeError> {
        match url {
            Some(u) => {
                let uri: axum::http::Uri = u.parse().map_err(|_| KubeError::Url(u.into()))?;
                Ok(kube::Client::try_from(kube::Config::new(uri))?)
            }
            None => Ok(kube::Client::try_default().await?),
        }
    }

    fn meta(pod: &Pod) -> Option<(String, PodMeta)> {
        let m = &pod.metadata;
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| {
                c.ports.iter().flatten().filter_map(|p| {
                    Some(DeclaredPort {
                        container: c.name.clone(),
                        port: u16::try_from(p.container_port).ok()?,
                        protocol: p.protocol.clone().unwrap_or_default(),
                    })
                })
            })
            .collect();
        Some((
            m.uid.clone()?,
            PodMeta {
                namespace: m.namespace.clone().unwrap_or_default(),
                name: m.name.clone().unwrap_or_default(),
                labels: m.labels.clone().unwrap_or_default(),
                annotations: m.annotations.clone().unwrap_or_default(),
                ip: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse().ok()),
                ports,
            },
        ))
    }

    /// Lists then watches the pods of `node` into `index`, until shutdown. Failures back off
    /// and list again; the index keeps what it had meanwhile.
    pub async fn run(
        client: kube::Client,
        node: String,
        index: Arc<PodIndex>,
        left_out: LeftOut,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let api: Api<Pod> = Api::all(client);
        let selector = format!("spec.nodeName={node}");
        let mut delay = Duration::from_millis(200);
        loop {
            let round = async {
                let list = api.list(&ListParams::default().fields(&selector)).await?;
                let rv = list.metadata.resource_version.clone().unwrap_or_default();
                let pods = list
                    .items
                    .iter()
                    .filter_map(meta)
                    .collect::<HashMap<_, _>>();
                pods.values().for_each(|m| left_out.count(m));
                index.replace(pods);
                let mut rv = rv;
                loop {
                    let params = WatchParams::default().fields(&selector).timeout(290);
                    let mut events = api.watch(&params, &rv).await?.boxed();
                    while let Some(event) = events.next().await {
                        match event? {
                            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                                if let Some(v) = p.metadata.resource_version.clone() {
                                    rv = v;
                                }
                                if let Some((uid, m)) = meta(&p) {
                                    left_out.count(&m);
                                    index.upsert(uid, m);
                                }
                            }
                            WatchEvent::Deleted(p) => {
                                if let Some(v) = p.metadata.resource_version.clone() {
                                    rv = v;
                                }
                                if let Some(uid) = p.metadata.uid.as_deref() {
                                    index.remove(uid);
                                }
                            }
                            WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                            // Expired (410) and other errors: list again.
                            WatchEvent::Error(e) => {
                                return Err::<(), kube::Error>(kube::Error::Api(e));
                            }
                        }
                    }
                }
            };
            let result = tokio::select! {
                r = round => r,
                () = crate::shutdown::stopped(&mut shutdown) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, %node, "pod watch failed; listing again");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = crate::shutdown::stopped(&mut shutdown) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// The pod watch's configuration.
#[derive(Debug, Clone, Default)]
pub struct KubeConfig {
    /// Watch this node's pods (`--kube-pods`); nothing happens otherwise.
    pub enabled: bool,
    /// Kubernetes API URL; the in-cluster service account, else kubeconfig, when `None`.
    pub api_url: Option<String>,
    /// This node's name: only its pods are watched.
    pub node: String,
    /// The allowlists, to count what a pod's labels lose to the bounds
    /// (`logrelay_agent_kube_meta_left_out_total`).
    pub mapping: TaskLabels,
}

/// Starts the pod watch when it is enabled; the index discovery reads, if any.
pub async fn start(
    config: &KubeConfig,
    metrics: &std::sync::Arc<crate::metrics::AgentMetrics>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Option<std::sync::Arc<PodIndex>> {
    if !config.enabled {
        return None;
    }
    #[cfg(feature = "k8s")]
    {
        match client::connect(config.api_url.as_deref()).await {
            Ok(c) => {
                let index = std::sync::Arc::new(PodIndex::default());
                let _ = index.events.set(std::sync::Arc::new(events::EventsApi {
                    client: Some(c.clone()),
                }));
                tasks.spawn(client::run(
                    c,
                    config.node.clone(),
                    index.clone(),
                    client::LeftOut {
                        mapping: config.mapping.clone(),
                        metrics: metrics.clone(),
                    },
                    shutdown.clone(),
                ));
                Some(index)
            }
            Err(e) => {
                tracing::error!(error = %e, "no pod metadata: cannot reach the Kubernetes API");
                None
            }
        }
    }
    #[cfg(not(feature = "k8s"))]
    {
        let _ = (tasks, shutdown, metrics);
        tracing::error!("--kube-pods needs an agent built with the `k8s` feature; ignored");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlisted_labels_and_annotations_become_prefixed_stream_labels_within_bounds() {
        let meta = PodMeta {
            labels: [
                ("team".to_owned(), "ml".to_owned()),
                ("namespace".to_owned(), "spoof".to_owned()),
                ("not-listed".to_owned(), "x".to_owned()),
            ]
            .into(),
            annotations: [
                ("owner".to_owned(), "alice".to_owned()),
                ("huge".to_owned(), "v".repeat(MAX_VALUE_BYTES + 1)),
            ]
            .into(),
            ..PodMeta::default()
        };
        let mut map: TaskLabels = "project=team".parse().unwrap();
        map.label_allowlist = "team, namespace,absent".parse().unwrap();
        map.annotation_allowlist = "owner,huge".parse().unwrap();
        let mut labels = Labels {
            namespace: "ns".into(),
            ..Labels::default()
        };
        map.apply(&meta, &mut labels);
        assert_eq!(
            labels.meta,
            BTreeMap::from([
                ("annotation:owner".to_owned(), "alice".to_owned()),
                ("label:namespace".to_owned(), "spoof".to_owned()),
                ("label:team".to_owned(), "ml".to_owned()),
            ])
        );
        assert_eq!(labels.namespace, "ns", "identity labels are not overridden");
        assert_eq!(labels.project.as_deref(), Some("ml"));
        assert!(labels.meta_is_valid());
        let (_, left_out) = stream_meta(&meta, &map.label_allowlist, &map.annotation_allowlist);
        assert_eq!(left_out, 1, "the value no selector could name");

        // Bytes: entries past MAX_META_BYTES are left out, in allowlist order.
        let big = PodMeta {
            labels: (0..MAX_META_ENTRIES)
                .map(|i| (format!("k{i:02}"), "v".repeat(200)))
                .collect(),
            ..PodMeta::default()
        };
        let all: Allowlist = (0..MAX_META_ENTRIES)
            .map(|i| format!("k{i:02}"))
            .collect::<Vec<_>>()
            .join(",")
            .parse()
            .unwrap();
        let (kept, left_out) = stream_meta(&big, &all, &Allowlist::default());
        assert_eq!(
            kept.len(),
            9,
            "9 entries of 212 bytes fit in {MAX_META_BYTES}"
        );
        assert_eq!(left_out, MAX_META_ENTRIES - 9);
        assert!(kept.contains_key("label:k00") && !kept.contains_key("label:k15"));

        // The flags' bounds.
        let too_many = (0..=MAX_META_ENTRIES)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>();
        assert_eq!(
            too_many.join(",").parse::<Allowlist>(),
            Err(BadAllowlist::TooMany(MAX_META_ENTRIES + 1))
        );
        assert!("a b".parse::<Allowlist>().is_err());
        assert_eq!("".parse::<Allowlist>(), Ok(Allowlist::default()));
        assert_eq!("a,a".parse::<Allowlist>().unwrap().0, ["a"]);
    }

    #[test]
    fn mapping_reads_labels_and_annotations() {
        let map: TaskLabels = "project=flyte.org/project, domain=domain,run=execution-id,action=node-id,attempt=annotation:attempt"
            .parse()
            .unwrap();
        let meta = PodMeta {
            labels: [
                ("flyte.org/project", "flytesnacks"),
                ("domain", "development"),
                ("execution-id", "f3a"),
                ("node-id", "n0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            annotations: [("attempt".to_owned(), "2".to_owned())].into(),
            ..PodMeta::default()
        };
        let mut labels = Labels::default();
        map.apply(&meta, &mut labels);
        assert_eq!(labels.project.as_deref(), Some("flytesnacks"));
        assert_eq!(labels.domain.as_deref(), Some("development"));
        assert_eq!(labels.run.as_deref(), Some("f3a"));
        assert_eq!(labels.action.as_deref(), Some("n0"));
        assert_eq!(labels.attempt.as_deref(), Some("2"));
        assert_eq!("".parse::<TaskLabels>(), Ok(TaskLabels::default()));
        assert!("owner=x".parse::<TaskLabels>().is_err());
        assert!("project".parse::<TaskLabels>().is_err());
    }
}
