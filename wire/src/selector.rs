//! Selectors: which streams a subscription wants.

use serde::{Deserialize, Serialize};

use crate::labels::{Labels, StreamKind};

/// Longest label value a selector may name.
pub const MAX_VALUE_BYTES: usize = 253;

/// Exact-match selector over stream labels. An absent field matches anything. The org a
/// session reads is never taken from a selector but from its credentials: a selector naming
/// another org is refused by the relay, not widened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Selector {
    /// Org (must be the session's own, if given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Restart count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<u32>,
    /// Log or metrics; absent means logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<StreamKind>,
    /// Task identity: project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Task identity: domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Task identity: run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// Why a selector is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label value is longer than [`MAX_VALUE_BYTES`].
    #[error("selector value for `{0}` is longer than {MAX_VALUE_BYTES} bytes")]
    TooLong(&'static str),
}

impl Selector {
    /// Checks the selector's size limits.
    pub fn validate(&self) -> Result<(), SelectorError> {
        let fields = [
            ("org", &self.org),
            ("cluster", &self.cluster),
            ("node", &self.node),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("pod_uid", &self.pod_uid),
            ("container", &self.container),
            ("project", &self.project),
            ("domain", &self.domain),
            ("run", &self.run),
        ];
        for (name, v) in fields {
            if v.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
                return Err(SelectorError::TooLong(name));
            }
        }
        Ok(())
    }

    /// True when `labels` satisfies every field the selector sets.
    pub fn matches(&self, labels: &Labels) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        fn eq_opt(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        }
        eq(&self.org, &labels.org)
            && eq(&self.cluster, &labels.cluster)
            && eq(&self.node, &labels.node)
            && eq(&self.namespace, &labels.namespace)
            && eq(&self.pod, &labels.pod)
            && eq(&self.pod_uid, &labels.pod_uid)
            && eq(&self.container, &labels.container)
            && self.restart.is_none_or(|r| r == labels.restart)
            && self.kind.unwrap_or(StreamKind::Log) == labels.kind
            && eq_opt(&self.project, &labels.project)
            && eq_opt(&self.domain, &labels.domain)
            && eq_opt(&self.run, &labels.run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, pod: &str, c: &str) -> Labels {
        Labels {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
            ..Labels::default()
        }
    }

    #[test]
    fn exact_match_on_set_fields_only() {
        let s = Selector {
            namespace: Some("ns".into()),
            pod: Some("p".into()),
            ..Selector::default()
        };
        assert!(s.matches(&labels("ns", "p", "a")));
        assert!(s.matches(&labels("ns", "p", "b")));
        assert!(!s.matches(&labels("ns", "q", "a")));
        assert!(!s.matches(&labels("other", "p", "a")));
        assert!(Selector::default().matches(&labels("x", "y", "z")));
    }

    #[test]
    fn metrics_streams_need_asking_for() {
        let mut l = labels("ns", "p", "c");
        l.kind = StreamKind::Metrics;
        assert!(!Selector::default().matches(&l));
        let s = Selector {
            kind: Some(StreamKind::Metrics),
            ..Selector::default()
        };
        assert!(s.matches(&l));
    }

    #[test]
    fn oversized_values_are_refused() {
        let s = Selector {
            pod: Some("x".repeat(MAX_VALUE_BYTES + 1)),
            ..Selector::default()
        };
        assert_eq!(s.validate(), Err(SelectorError::TooLong("pod")));
    }
}
