//! Audit events are also exported as OpenTelemetry log records when OTLP is configured.

use std::net::TcpListener;
use std::time::Duration;

use logrelay_e2e::otlp::collector;
use logrelay_e2e::*;

/// A relay (production audit trail: stdout) also exporting its audit events to `url`.
async fn exporting_to(url: String) -> logrelay_relay::RelayHandle {
    let pki = TestPki::new();
    logrelay_relay::start(
        logrelay_relay::RelayConfig {
            anonymous_org: Some("dev".into()),
            audit_otlp_endpoint: Some(url),
            ..logrelay_relay::RelayConfig::loopback()
        },
        pki.relay_tls(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_an_otlp_collector() {
    let (url, received) = collector();
    let relay = exporting_to(url).await;
    let mut s = Subscriber::connect(&relay.subscribe_url()).await;
    s.subscribe("a", &selector("ns", "p", "c"), Some(0)).await;
    s.until("subscribed", |s| !s.events.is_empty()).await;
    let (request_line, content_type, body) = tokio::task::spawn_blocking(move || {
        received
            .recv_timeout(Duration::from_secs(20))
            .expect("an OTLP export")
    })
    .await
    .unwrap();
    assert!(request_line.starts_with("POST /v1/logs "), "{request_line}");
    assert_eq!(content_type, "application/x-protobuf");
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"logrelay.audit.op"), "attributes are present");
    assert!(
        has(b"session_connect"),
        "the session's connect was exported"
    );
    assert!(
        has(br#""kind":"audit""#),
        "the record's body is the JSON event"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_the_collector_never_got_are_counted_on_metrics() {
    // A collector address nobody listens on: every export fails.
    let url = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let relay = exporting_to(url).await;
    let admin = relay.admin_addr;
    assert_eq!(
        metric(admin, "logrelay_relay_audit_failed_total").await,
        0.0
    );
    let mut s = Subscriber::connect(&relay.subscribe_url()).await;
    s.subscribe("a", &selector("ns", "p", "c"), Some(0)).await;
    s.until("subscribed", |s| !s.events.is_empty()).await;
    // `session_connect` and `subscribe` were audited; their export fails.
    eventually("the lost audit events on /metrics", || async {
        (metric(admin, "logrelay_relay_audit_failed_total").await >= 2.0).then_some(())
    })
    .await;
    relay.shutdown().await;
}
