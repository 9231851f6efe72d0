//! Labels of a stream, and how they are read off a kubelet log path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of a [`Labels::meta`] key copied from a pod label (`label:<key>`).
pub const META_LABEL_PREFIX: &str = "label:";
/// Prefix of a [`Labels::meta`] key copied from a pod annotation (`annotation:<key>`).
pub const META_ANNOTATION_PREFIX: &str = "annotation:";
/// Most entries a stream's [`Labels::meta`] holds (the agent leaves out the rest).
pub const MAX_META_ENTRIES: usize = 16;
/// Most bytes (keys and values) of a stream's [`Labels::meta`] (the agent leaves out the
/// entries past it).
pub const MAX_META_BYTES: usize = 2048;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// A container's log.
    #[default]
    Log,
    /// A metrics source.
    Metrics,
    /// A pod's Kubernetes events, one JSON line per event (agents with `--kube-pods`).
    Events,
}

/// The labels of one stream.
///
/// `org` and `cluster` are set by the relay from the agent's certificate; whatever an agent
/// puts there is overwritten. The rest comes from the log path (and, later, pod metadata).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Labels {
    /// Tenant: from the agent's certificate.
    pub org: String,
    /// Cluster: from the agent's certificate.
    pub cluster: String,
    /// Node the agent runs on.
    pub node: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// Container restart count (the `<restart>.log` file name).
    pub restart: u32,
    /// Log, metrics or events.
    pub kind: StreamKind,
    /// Task identity: project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Task identity: domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Task identity: run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Task identity: action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Task identity: attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Pod labels and annotations the agent's operator allowlisted, under the key
    /// `label:<key>` or `annotation:<key>` (so none can stand for an identity label above);
    /// at most [`MAX_META_ENTRIES`] entries and [`MAX_META_BYTES`]. Omitted when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl Labels {
    /// True when `meta` keeps to its bounds and prefixes (what a relay accepts of an agent).
    pub fn meta_is_valid(&self) -> bool {
        self.meta.len() <= MAX_META_ENTRIES
            && self
                .meta
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
                <= MAX_META_BYTES
            && self.meta.keys().all(|k| {
                k.strip_prefix(META_LABEL_PREFIX)
                    .or_else(|| k.strip_prefix(META_ANNOTATION_PREFIX))
                    .is_some_and(|rest| !rest.is_empty())
            })
    }
}

/// The identity of a pod log directory `<namespace>_<pod>_<uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodDir {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
}

impl PodDir {
    /// Parses a pod directory name as kubelet writes it (`<namespace>_<pod>_<uid>`).
    ///
    /// Namespaces and pod names are DNS labels/subdomains and UIDs are UUIDs, so none of them
    /// contains `_`; anything else is not a pod directory.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('_');
        let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
            return None;
        }
        Some(Self {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            pod_uid: uid.to_owned(),
        })
    }
}

/// Parses a container log file name `<restart>.log`.
pub fn parse_restart(file_name: &str) -> Option<u32> {
    let n = file_name.strip_suffix(".log")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dirs_parse_as_kubelet_names_them() {
        assert_eq!(
            PodDir::parse(
                "kube-system_coredns-5d78c9869d-abcde_0b1c2d3e-aaaa-bbbb-cccc-1234567890ab"
            ),
            Some(PodDir {
                namespace: "kube-system".into(),
                pod: "coredns-5d78c9869d-abcde".into(),
                pod_uid: "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab".into(),
            })
        );
        assert_eq!(PodDir::parse("a_b"), None);
        assert_eq!(PodDir::parse("a_b_c_d"), None);
        assert_eq!(PodDir::parse("_b_c"), None);
    }

    #[test]
    fn restart_files() {
        assert_eq!(parse_restart("0.log"), Some(0));
        assert_eq!(parse_restart("12.log"), Some(12));
        assert_eq!(parse_restart("0.log.20240101-000000"), None);
        assert_eq!(parse_restart(".log"), None);
        assert_eq!(parse_restart("x.log"), None);
    }
}
