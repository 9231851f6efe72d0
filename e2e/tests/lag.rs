//! The lag histograms count what flows: a real agent tails a CRI log, a real relay delivers it
//! to a WebSocket subscriber, and `logrelay_relay_ingest_lag_seconds`,
//! `logrelay_relay_delivery_lag_seconds` and `logrelay_agent_read_lag_seconds` show it.

use std::net::SocketAddr;

use logrelay_e2e::*;

/// The value of the series `series` (name and labels, exactly as exported) at `addr`.
async fn series(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_histograms_count_the_lines_that_flow() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "pod", "main");
    log.write_lines([b"backlog\n".as_slice()]).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let (relay_admin, agent_admin) = (relay.handle.admin_addr, agent.handle.admin_addr);

    // Exported, empty, before anything flows.
    for (addr, s) in [
        (
            relay_admin,
            r#"logrelay_relay_ingest_lag_seconds_count{kind="log"}"#,
        ),
        (
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_count{kind="metrics"}"#,
        ),
        (
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_count{kind="events"}"#,
        ),
        (agent_admin, "logrelay_agent_read_lag_seconds_count"),
    ] {
        assert_eq!(series(addr, s).await, Some(0.0), "{s}");
    }

    let mut sub = relay.subscriber().await;
    sub.subscribe("a", &selector("ns", "pod", "main"), Some(10))
        .await;
    sub.until("the backlog line", |s| s.total_lines() >= 1)
        .await;
    // The follower has read its backlog and reached the end of the file: what follows is live.
    for i in 0..20 {
        log.write_lines([format!("line {i}\n").as_bytes()]).unwrap();
    }
    sub.until("every line", |s| s.total_lines() >= 21).await;

    // The agent observes each live line once, and not the backlog.
    eventually("the agent's read lag counts the 20 live lines", || async {
        (series(agent_admin, "logrelay_agent_read_lag_seconds_count").await == Some(20.0))
            .then_some(())
    })
    .await;
    // Every batch pushed into the ring is written to the one session, and both are counted.
    let (ingest, delivery) = eventually("ingest and delivery lag count the batches", || async {
        let ingest = series(
            relay_admin,
            r#"logrelay_relay_ingest_lag_seconds_count{kind="log"}"#,
        )
        .await
        .unwrap_or(0.0);
        let delivery = series(
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_count{kind="log"}"#,
        )
        .await
        .unwrap_or(0.0);
        (ingest >= 1.0 && delivery == ingest).then_some((ingest, delivery))
    })
    .await;
    assert!(ingest <= 21.0, "at most one batch per line: {ingest}");
    // Same clock, same machine: every observation is well inside the last finite bucket.
    for (addr, s, count) in [
        (
            relay_admin,
            r#"logrelay_relay_ingest_lag_seconds_bucket{le="65.536",kind="log"}"#,
            ingest,
        ),
        (
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_bucket{le="65.536",kind="log"}"#,
            delivery,
        ),
        (
            agent_admin,
            r#"logrelay_agent_read_lag_seconds_bucket{le="65.536"}"#,
            20.0,
        ),
    ] {
        assert_eq!(series(addr, s).await, Some(count), "{s}");
    }
    // Nothing of the metrics or events kinds flowed.
    assert_eq!(
        series(
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_count{kind="metrics"}"#
        )
        .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_streams_batches_count_under_its_kind() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let target = format!("http://{}/metrics,name=relay", relay.handle.admin_addr);
    let _agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.metrics_rescan_ms = 50;
        c.resources = false;
        c.scrape_targets = vec![target.parse().unwrap()];
    })
    .await;
    let relay_admin = relay.handle.admin_addr;

    let mut sub = relay.subscriber().await;
    let selector = logrelay_wire::selector::Selector {
        container: Some("scrape:relay".into()),
        kind: Some(logrelay_wire::labels::StreamKind::Metrics),
        ..Default::default()
    };
    sub.subscribe("m", &selector, None).await;
    sub.until("a scrape", |s| s.total_lines() >= 1).await;
    eventually("the scrape's batches count as kind metrics", || async {
        let m = series(
            relay_admin,
            r#"logrelay_relay_delivery_lag_seconds_count{kind="metrics"}"#,
        )
        .await
        .unwrap_or(0.0);
        let i = series(
            relay_admin,
            r#"logrelay_relay_ingest_lag_seconds_count{kind="metrics"}"#,
        )
        .await
        .unwrap_or(0.0);
        (m >= 1.0 && i >= 1.0).then_some(())
    })
    .await;
    for s in [
        r#"logrelay_relay_delivery_lag_seconds_count{kind="log"}"#,
        r#"logrelay_relay_ingest_lag_seconds_count{kind="log"}"#,
    ] {
        assert_eq!(series(relay_admin, s).await, Some(0.0), "{s}");
    }
}
