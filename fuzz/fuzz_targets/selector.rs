//! Selector matching: the input is selector JSON, a 0xFF byte (never in UTF-8), then labels
//! JSON. Parsing (regular expressions included), `validate` and `matches` must not panic; a
//! selector naming every label of a stream matches it; the empty selector matches exactly the
//! log streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let (selector, labels) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(selector) = serde_json::from_slice::<Selector>(selector) else {
        return;
    };
    let Ok(labels) = serde_json::from_slice::<Labels>(labels) else {
        return;
    };
    let _ = selector.validate();
    let _ = selector.matches(&labels);
    let exact = Selector {
        org: Some(labels.org.clone()),
        cluster: Some(labels.cluster.clone()),
        node: Some(labels.node.clone()),
        namespace: Some(labels.namespace.clone()),
        pod: Some(labels.pod.clone()),
        pod_uid: Some(labels.pod_uid.clone()),
        container: Some(labels.container.clone()),
        restart: Some(labels.restart),
        kind: Some(labels.kind),
        project: labels.project.clone(),
        domain: labels.domain.clone(),
        run: labels.run.clone(),
        action: labels.action.clone(),
        attempt: labels.attempt.clone(),
        pod_regex: None,
        container_regex: None,
        meta: labels.meta.clone(),
    };
    assert!(exact.matches(&labels));
    assert_eq!(
        Selector::default().matches(&labels),
        labels.kind == StreamKind::Log
    );
});
