//! Selectors: which streams a subscription wants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{Labels, StreamKind};
use crate::pattern::LabelPattern;

/// Longest label value a selector may name.
pub const MAX_VALUE_BYTES: usize = 253;

/// Selector over stream labels: exact values, and regular expressions over the whole pod or
/// container name ([`LabelPattern`]). An absent field matches anything; a stream must match
/// every field given. The org a session reads is never taken from a selector but from its
/// credentials: a selector naming another org is refused by the relay, not widened.
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
    /// Regular expression the whole pod name must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_regex: Option<LabelPattern>,
    /// Pod UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Regular expression the whole container name must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_regex: Option<LabelPattern>,
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
    /// Task identity: action (a node of the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Task identity: attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Allowlisted pod labels and annotations ([`Labels::meta`]): the stream must have each
    /// key with exactly this value. At most [`crate::labels::MAX_META_ENTRIES`] entries.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// Why a selector is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label value is longer than [`MAX_VALUE_BYTES`].
    #[error("selector value for `{0}` is longer than {MAX_VALUE_BYTES} bytes")]
    TooLong(&'static str),
    /// `meta` names more keys than a stream can have.
    #[error(
        "selector `meta` names more than {} keys",
        crate::labels::MAX_META_ENTRIES
    )]
    TooManyMeta,
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
            ("action", &self.action),
            ("attempt", &self.attempt),
        ];
        for (name, v) in fields {
            if v.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
                return Err(SelectorError::TooLong(name));
            }
        }
        if self.meta.len() > crate::labels::MAX_META_ENTRIES {
            return Err(SelectorError::TooManyMeta);
        }
        if self
            .meta
            .iter()
            .any(|(k, v)| k.len() > crate::labels::MAX_META_BYTES || v.len() > MAX_VALUE_BYTES)
        {
            return Err(SelectorError::TooLong("meta"));
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
            && eq_opt(&self.action, &labels.action)
            && eq_opt(&self.attempt, &labels.attempt)
            && self.meta.iter().all(|(k, v)| labels.meta.get(k) == Some(v))
            && self
                .pod_regex
                .as_ref()
                .is_none_or(|p| p.matches(&labels.pod))
            && self
                .container_regex
                .as_ref()
                .is_none_or(|p| p.matches(&labels.container))
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
    fn allowlisted_pod_labels_select_and_stay_apart_from_identity() {
        let s: Selector =
            serde_json::from_str(r#"{"namespace":"ns","meta":{"label:team":"ml"}}"#).unwrap();
        let mut l = labels("ns", "p", "c");
        assert!(!s.matches(&l), "a stream without the label");
        l.meta.insert("label:team".into(), "ml".into());
        assert!(s.matches(&l));
        l.meta.insert("label:team".into(), "web".into());
        assert!(!s.matches(&l));
        // A pod label named like an identity label is only ever `label:<key>`.
        l.meta.insert("label:namespace".into(), "other".into());
        assert_eq!(l.namespace, "ns");
        assert!(l.meta_is_valid());
        l.meta.insert("namespace".into(), "other".into());
        assert!(!l.meta_is_valid(), "no key outside the prefixes");
        let many = Selector {
            meta: (0..=crate::labels::MAX_META_ENTRIES)
                .map(|i| (format!("label:k{i}"), "v".into()))
                .collect(),
            ..Selector::default()
        };
        assert_eq!(many.validate(), Err(SelectorError::TooManyMeta));
    }

    #[test]
    fn oversized_values_are_refused() {
        let s = Selector {
            pod: Some("x".repeat(MAX_VALUE_BYTES + 1)),
            ..Selector::default()
        };
        assert_eq!(s.validate(), Err(SelectorError::TooLong("pod")));
    }

    #[test]
    fn regexes_on_pod_and_container_and_task_identity() {
        let s: Selector = serde_json::from_str(
            r#"{"namespace":"ns","pod_regex":"train-[0-9]+","container_regex":"main|sidecar","action":"n0","attempt":"1"}"#,
        )
        .unwrap();
        let task = |pod: &str, c: &str, action: &str| Labels {
            action: Some(action.into()),
            attempt: Some("1".into()),
            ..labels("ns", pod, c)
        };
        assert!(s.matches(&task("train-0", "main", "n0")));
        assert!(s.matches(&task("train-12", "sidecar", "n0")));
        assert!(!s.matches(&task("train-x", "main", "n0")));
        assert!(!s.matches(&task("pretrain-0", "main", "n0")), "whole name");
        assert!(!s.matches(&task("train-0", "init", "n0")));
        assert!(!s.matches(&task("train-0", "main", "n1")));
        assert!(
            !s.matches(&labels("ns", "train-0", "main")),
            "no task identity"
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"namespace":"ns","pod_regex":"train-[0-9]+","container_regex":"main|sidecar","action":"n0","attempt":"1"}"#
        );
        let bad = serde_json::from_str::<Selector>(r#"{"pod_regex":"train-("}"#).unwrap_err();
        assert!(
            bad.to_string().contains("invalid regular expression"),
            "{bad}"
        );
    }
}
