//! The agent's catalog: the streams that exist on this node, with stable ids.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use logrelay_wire::control::{StreamGone, StreamInfo};
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::reason::EndReason;
use tokio::sync::watch;

use crate::metrics::AgentMetrics;

/// Where a stream's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A container's log file (`<restart>.log`).
    Log {
        /// The file.
        path: PathBuf,
    },
    /// A Prometheus endpoint, scraped only while watched ([`crate::scrape`]).
    Scrape {
        /// What to fetch, and its state across demands.
        target: Arc<crate::scrape::Target>,
    },
    /// A pod's CPU and memory usage from cgroup v2, sampled only while watched
    /// ([`crate::cgroup`]).
    Resources {
        /// Where to read, and its state across demands.
        pod: Arc<crate::cgroup::PodResources>,
    },
    /// A pod's Kubernetes events, watched in the API only while watched
    /// ([`crate::kube::events`]).
    Events {
        /// Which pod, and its numbering across demands.
        pod: Arc<crate::kube::events::PodEvents>,
    },
}

/// Which discovery loop owns a source: each replaces only its own part of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Container logs, found under the pods directory.
    Logs,
    /// Metrics sources (scrape targets, pod resource usage).
    Metrics,
    /// Pods' Kubernetes events (one stream per pod of the pod watch).
    Events,
}

impl Source {
    /// The discovery loop that owns this source.
    pub fn group(&self) -> Group {
        match self {
            Self::Log { .. } => Group::Logs,
            Self::Scrape { .. } | Self::Resources { .. } => Group::Metrics,
            Self::Events { .. } => Group::Events,
        }
    }
}

/// One stream the agent can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its labels (org and cluster are filled in by the relay).
    pub labels: Labels,
    /// Where its content comes from.
    pub source: Source,
}

/// What changed between two scans.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New streams.
    pub added: Vec<StreamInfo>,
    /// Streams that went away.
    pub removed: Vec<StreamGone>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    by_source: HashMap<Source, u64>,
    streams: BTreeMap<u64, Entry>,
}

/// The catalog, shared by discovery (writer) and the uplink (reader).
#[derive(Debug)]
pub struct Catalog {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
    metrics: Arc<AgentMetrics>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new(metrics: Arc<AgentMetrics>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            version: watch::channel(0).0,
            metrics,
        }
    }

    /// Replaces the streams of `group` with what its scan found; returns what changed.
    ///
    /// A source whose `meta` alone changed (allowlisted pod labels or annotations) keeps its
    /// id and is announced again under it with the new labels: the relay updates the stream
    /// in place (its watchers keep reading). A source whose other labels changed (its pod's
    /// metadata arrived late, or its task labels changed) is announced again under a new id,
    /// and its old id removed with reason `labels_changed`: the relay files streams by those
    /// labels, and authorises sessions by them.
    pub fn replace(&self, group: Group, found: Vec<Entry>) -> Diff {
        let mut inner = self.inner.lock().expect("catalog lock");
        let mut diff = Diff::default();
        let mut seen = HashMap::with_capacity(found.len());
        for entry in found {
            debug_assert_eq!(entry.source.group(), group);
            if let Some(&old) = inner.by_source.get(&entry.source)
                && let Some(held) = inner.streams.get_mut(&old)
                && held.labels != entry.labels
                && same_but_meta(&held.labels, &entry.labels)
            {
                held.labels = entry.labels.clone();
                diff.added.push(StreamInfo {
                    id: old,
                    labels: entry.labels.clone(),
                });
                seen.insert(old, ());
                continue;
            }
            if let Some(&old) = inner.by_source.get(&entry.source)
                && inner
                    .streams
                    .get(&old)
                    .is_some_and(|e| e.labels != entry.labels)
            {
                inner.streams.remove(&old);
                inner.by_source.remove(&entry.source);
                diff.removed.push(StreamGone {
                    id: old,
                    reason: EndReason::LabelsChanged,
                });
            }
            let id = match inner.by_source.get(&entry.source) {
                Some(id) => *id,
                None => {
                    let id = inner.next_id;
                    inner.next_id += 1;
                    inner.by_source.insert(entry.source.clone(), id);
                    diff.added.push(StreamInfo {
                        id,
                        labels: entry.labels.clone(),
                    });
                    inner.streams.insert(id, entry.clone());
                    id
                }
            };
            seen.insert(id, ());
        }
        let gone: Vec<u64> = inner
            .streams
            .iter()
            .filter(|(id, e)| e.source.group() == group && !seen.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(e) = inner.streams.remove(&id) {
                inner.by_source.remove(&e.source);
                diff.removed.push(StreamGone {
                    id,
                    reason: EndReason::ContainerRemoved,
                });
            }
        }
        self.metrics.streams.set(inner.streams.len() as i64);
        if !diff.added.is_empty() || !diff.removed.is_empty() {
            self.version.send_modify(|v| *v += 1);
        }
        diff
    }

    /// Every stream, by id.
    pub fn snapshot(&self) -> BTreeMap<u64, Entry> {
        self.inner.lock().expect("catalog lock").streams.clone()
    }

    /// One stream.
    pub fn get(&self, id: u64) -> Option<Entry> {
        self.inner
            .lock()
            .expect("catalog lock")
            .streams
            .get(&id)
            .cloned()
    }

    /// Notified whenever the catalog changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The part of the catalog `now` a relay can read: all of it, or without the streams of kind
/// `events` when the relay's `welcome` did not name [`features::EVENTS`].
///
/// [`features::EVENTS`]: logrelay_wire::control::features::EVENTS
pub fn readable(mut now: BTreeMap<u64, Entry>, events: bool) -> BTreeMap<u64, Entry> {
    if !events {
        now.retain(|_, e| e.labels.kind != StreamKind::Events);
    }
    now
}

/// What to announce to a peer that has seen `sent`, given the current catalog. A stream gone
/// while another appears in the same place (node, namespace, pod, UID, container, restart,
/// kind) with other (task) labels is reported as `labels_changed`, else as `container_removed`.
pub fn reconcile(sent: &BTreeMap<u64, Labels>, now: &BTreeMap<u64, Entry>) -> Diff {
    // New ids, and ids whose labels changed in place (`meta` only: announced again under
    // the same id, the relay updates the stream).
    let added: Vec<StreamInfo> = now
        .iter()
        .filter(|(id, e)| sent.get(id) != Some(&e.labels))
        .map(|(id, e)| StreamInfo {
            id: *id,
            labels: e.labels.clone(),
        })
        .collect();
    let place = |l: &Labels| {
        (
            l.node.clone(),
            l.namespace.clone(),
            l.pod.clone(),
            l.pod_uid.clone(),
            l.container.clone(),
            l.restart,
            l.kind,
        )
    };
    let relabelled: std::collections::HashSet<_> = added.iter().map(|s| place(&s.labels)).collect();
    Diff {
        removed: sent
            .iter()
            .filter(|(id, _)| !now.contains_key(id))
            .map(|(id, labels)| StreamGone {
                id: *id,
                reason: if relabelled.contains(&place(labels)) {
                    EndReason::LabelsChanged
                } else {
                    EndReason::ContainerRemoved
                },
            })
            .collect(),
        added,
    }
}

/// Whether `a` and `b` differ in `meta` at most: the same stream, relabelled in place.
fn same_but_meta(a: &Labels, b: &Labels) -> bool {
    Labels {
        meta: BTreeMap::new(),
        ..a.clone()
    } == Labels {
        meta: BTreeMap::new(),
        ..b.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> Entry {
        Entry {
            labels: Labels {
                pod: p.into(),
                ..Labels::default()
            },
            source: Source::Log {
                path: PathBuf::from(p),
            },
        }
    }

    #[test]
    fn ids_are_stable_and_removals_reported() {
        let c = Catalog::new(Arc::new(AgentMetrics::new()));
        let d = c.replace(Group::Logs, vec![entry("a"), entry("b")]);
        assert_eq!(d.added.len(), 2);
        let d = c.replace(Group::Logs, vec![entry("b"), entry("c")]);
        assert_eq!(d.added.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(d.removed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            c.replace(Group::Logs, vec![entry("b"), entry("c")]),
            Diff::default()
        );
    }

    #[test]
    fn a_source_whose_labels_changed_is_announced_again() {
        let c = Catalog::new(Arc::new(AgentMetrics::new()));
        c.replace(Group::Logs, vec![entry("a"), entry("b")]);
        let mut relabelled = entry("a");
        relabelled.labels.project = Some("p".into());
        let d = c.replace(Group::Logs, vec![relabelled.clone(), entry("b")]);
        assert_eq!(
            d.removed,
            [StreamGone {
                id: 1,
                reason: EndReason::LabelsChanged
            }]
        );
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].id, 3, "a new id");
        assert_eq!(d.added[0].labels.project.as_deref(), Some("p"));
        assert_eq!(c.snapshot().len(), 2);
        assert_eq!(
            c.replace(Group::Logs, vec![relabelled, entry("b")]),
            Diff::default(),
            "and stays put"
        );
    }

    #[test]
    fn a_source_whose_meta_alone_changed_keeps_its_id_and_is_announced_again_under_it() {
        let c = Catalog::new(Arc::new(AgentMetrics::new()));
        c.replace(Group::Logs, vec![entry("a"), entry("b")]);
        let sent: BTreeMap<u64, Labels> = c
            .snapshot()
            .into_iter()
            .map(|(id, e)| (id, e.labels))
            .collect();
        let mut relabelled = entry("a");
        relabelled
            .labels
            .meta
            .insert("label:team".into(), "ml".into());
        let d = c.replace(Group::Logs, vec![relabelled.clone(), entry("b")]);
        assert!(d.removed.is_empty(), "{d:?}");
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].id, 1, "the same id");
        assert_eq!(d.added[0].labels, relabelled.labels);
        // What a connected relay is sent: the same id with its new labels, nothing removed.
        let to_relay = reconcile(&sent, &c.snapshot());
        assert!(to_relay.removed.is_empty(), "{to_relay:?}");
        assert_eq!(
            to_relay.added,
            [StreamInfo {
                id: 1,
                labels: relabelled.labels.clone()
            }]
        );
        assert_eq!(
            c.replace(Group::Logs, vec![relabelled, entry("b")]),
            Diff::default(),
            "and stays put"
        );
    }

    #[test]
    fn a_relay_that_does_not_read_events_is_not_offered_them() {
        let c = Catalog::new(Arc::new(AgentMetrics::new()));
        // (Its source does not matter here: only its kind.)
        let mut ev = entry("e");
        ev.labels.kind = StreamKind::Events;
        c.replace(Group::Logs, vec![entry("a"), ev]);
        let kinds = |events| {
            readable(c.snapshot(), events)
                .into_values()
                .map(|e| e.labels.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(true), [StreamKind::Log, StreamKind::Events]);
        assert_eq!(kinds(false), [StreamKind::Log]);
        // Nothing was sent: only the log stream is announced to such a relay.
        let d = reconcile(&BTreeMap::new(), &readable(c.snapshot(), false));
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].labels.kind, StreamKind::Log);
    }

    #[test]
    fn reconcile_sends_only_the_difference() {
        let c = Catalog::new(Arc::new(AgentMetrics::new()));
        c.replace(Group::Logs, vec![entry("a"), entry("b")]);
        let mut sent = BTreeMap::new();
        sent.insert(1, c.get(1).unwrap().labels);
        sent.insert(9, Labels::default());
        let d = reconcile(&sent, &c.snapshot());
        assert_eq!(d.added.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(d.removed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![9]);
        assert_eq!(d.removed[0].reason, "container_removed");

        // The same place under other labels: a relabel, not a removal.
        let sent: BTreeMap<u64, Labels> = c
            .snapshot()
            .into_iter()
            .map(|(id, e)| (id, e.labels))
            .collect();
        let mut a = entry("a");
        a.labels.project = Some("p".into());
        c.replace(Group::Logs, vec![a, entry("b")]);
        let d = reconcile(&sent, &c.snapshot());
        assert_eq!(
            d.removed,
            [StreamGone {
                id: 1,
                reason: EndReason::LabelsChanged
            }]
        );
        assert_eq!(d.added.len(), 1);
    }
}
