//! Task identity on discovered streams, from the pod metadata of the kube pod watch
//! ([`crate::kube`]): each entry of a pod gets the task labels the mapping reads off that pod
//! ([`TaskLabels`]), and the entries of a pod whose metadata has not arrived yet are held back,
//! at most [`METADATA_WAIT`], so a stream is not announced twice (first without, then with its
//! task identity) and short-lived pods are not missed either.

use std::collections::HashMap;
use std::time::Duration;

use crate::kube::{PodIndex, TaskLabels};

use super::catalog::Entry;

/// How long discovery holds a new pod's streams back waiting for its metadata.
pub const METADATA_WAIT: Duration = Duration::from_secs(2);

/// Pods seen without metadata, for [`with_identity`].
#[derive(Debug, Default)]
pub struct MetadataWait {
    first_seen: HashMap<String, tokio::time::Instant>,
    holding: bool,
}

impl MetadataWait {
    /// True while some pod's entries are held back (so its scan should run again soon).
    pub fn holding(&self) -> bool {
        self.holding
    }
}

/// Adds task identity from pod metadata to `scanned` entries (any group). The entries of a pod
/// whose metadata has not arrived are held back until it does, for at most [`METADATA_WAIT`]
/// after `wait` first saw that pod; after that they are passed on without task identity, and
/// stay passed on.
pub fn with_identity(
    scanned: &[Entry],
    index: &PodIndex,
    mapping: &TaskLabels,
    wait: &mut MetadataWait,
) -> Vec<Entry> {
    let mut out = Vec::with_capacity(scanned.len());
    let mut first_seen = HashMap::new();
    let mut holding = false;
    for e in scanned {
        let uid = &e.labels.pod_uid;
        match index.get(uid) {
            Some(meta) => {
                let mut e = e.clone();
                mapping.apply(&meta, &mut e.labels);
                out.push(e);
            }
            None => {
                let since = *wait
                    .first_seen
                    .get(uid)
                    .unwrap_or(&tokio::time::Instant::now());
                first_seen.insert(uid.clone(), since);
                if since.elapsed() < METADATA_WAIT {
                    holding = true;
                } else {
                    out.push(e.clone());
                }
            }
        }
    }
    *wait = MetadataWait {
        first_seen,
        holding,
    };
    out
}

#[cfg(test)]
mod tests {
    use logrelay_wire::labels::Labels;

    use super::*;
    use crate::discover::catalog::Source;
    use crate::kube::PodMeta;

    fn log_entry(uid: &str) -> Entry {
        Entry {
            labels: Labels {
                pod_uid: uid.into(),
                ..Labels::default()
            },
            source: Source::Log {
                path: format!("/pods/{uid}/c/0.log").into(),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_wait_for_metadata_at_most_a_while_then_stay() {
        let index = PodIndex::default();
        index.upsert(
            "known".into(),
            PodMeta {
                labels: [("project".to_owned(), "p".to_owned())].into(),
                ..PodMeta::default()
            },
        );
        let mapping: TaskLabels = "project=project".parse().unwrap();
        let scanned = [log_entry("known"), log_entry("unknown")];
        let mut wait = MetadataWait::default();
        let uids = |out: &[Entry]| -> Vec<String> {
            out.iter().map(|e| e.labels.pod_uid.clone()).collect()
        };

        let out = with_identity(&scanned, &index, &mapping, &mut wait);
        assert_eq!(uids(&out), ["known"]);
        assert_eq!(out[0].labels.project.as_deref(), Some("p"));
        assert!(wait.holding());

        tokio::time::advance(METADATA_WAIT).await;
        let out = with_identity(&scanned, &index, &mapping, &mut wait);
        assert_eq!(uids(&out), ["known", "unknown"], "released after the wait");
        assert!(!wait.holding());
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = with_identity(&scanned, &index, &mapping, &mut wait);
        assert_eq!(
            uids(&out),
            ["known", "unknown"],
            "a released pod is not held back again (its stream would flap)"
        );

        index.upsert("unknown".into(), PodMeta::default());
        let out = with_identity(&scanned, &index, &mapping, &mut wait);
        assert_eq!(uids(&out), ["known", "unknown"]);
        let mut next = vec![log_entry("new")];
        next.extend(scanned);
        let out = with_identity(&next, &index, &mapping, &mut wait);
        assert_eq!(uids(&out), ["known", "unknown"], "a new pod waits");
        assert!(wait.holding());
    }
}
