//! Selector flags shared by `list`, `tail` and `top`, and the exact selector of one stream.

use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::pattern::LabelPattern;
use logrelay_wire::selector::Selector;

/// Which streams: every flag given must match (exact values; the `*-regex` flags must match
/// the whole name).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectorArgs {
    /// Namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Pod name.
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Container name.
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Regular expression the whole pod name must match (e.g. `train-.*`).
    #[arg(long, value_name = "REGEX")]
    pub pod_regex: Option<LabelPattern>,
    /// Regular expression the whole container name must match.
    #[arg(long, value_name = "REGEX")]
    pub container_regex: Option<LabelPattern>,
    /// Node name.
    #[arg(long)]
    pub node: Option<String>,
    /// Cluster (from the agent's certificate).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Task identity: project.
    #[arg(long)]
    pub project: Option<String>,
    /// Task identity: domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Task identity: run (execution).
    #[arg(long)]
    pub run: Option<String>,
    /// Task identity: action (node of the run).
    #[arg(long)]
    pub action: Option<String>,
    /// Task identity: attempt.
    #[arg(long)]
    pub attempt: Option<String>,
}

impl SelectorArgs {
    /// The selector, for streams of `kind`.
    pub fn selector(&self, kind: StreamKind) -> Selector {
        Selector {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            pod_regex: self.pod_regex.clone(),
            container_regex: self.container_regex.clone(),
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            project: self.project.clone(),
            domain: self.domain.clone(),
            run: self.run.clone(),
            action: self.action.clone(),
            attempt: self.attempt.clone(),
            kind: (kind != StreamKind::Log).then_some(kind),
            ..Selector::default()
        }
    }

    /// True when the flags name one container exactly (`--pod` and `--container`), as
    /// `kubectl logs POD -c CONTAINER` does: lines then need no prefix to be told apart.
    pub fn names_one_container(&self) -> bool {
        self.pod.is_some() && self.container.is_some()
    }
}

/// A selector matching exactly the stream with these labels (and, barring a relabel, no
/// other): used to resume one stream with `since_seq`, whose epochs are per stream.
pub fn exact(labels: &Labels) -> Selector {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Selector {
        cluster: some(&labels.cluster),
        node: some(&labels.node),
        namespace: some(&labels.namespace),
        pod: some(&labels.pod),
        pod_uid: some(&labels.pod_uid),
        container: some(&labels.container),
        restart: Some(labels.restart),
        kind: Some(labels.kind),
        ..Selector::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_selector_matches_its_stream_only() {
        let a = Labels {
            org: "acme".into(),
            cluster: "c1".into(),
            node: "n1".into(),
            namespace: "shop".into(),
            pod: "cart".into(),
            pod_uid: "u1".into(),
            container: "main".into(),
            restart: 0,
            ..Labels::default()
        };
        let s = exact(&a);
        assert!(s.matches(&a));
        for other in [
            Labels {
                restart: 1,
                ..a.clone()
            },
            Labels {
                container: "sidecar".into(),
                ..a.clone()
            },
            Labels {
                pod_uid: "u2".into(),
                ..a.clone()
            },
            Labels {
                kind: StreamKind::Metrics,
                ..a.clone()
            },
        ] {
            assert!(!s.matches(&other), "{other:?}");
        }
        s.validate().unwrap();
    }
}
