//! Stress (ignored by default; run by name, in release):
//!
//! ```sh
//! cargo test --release -p logrelay-e2e --test stalled_rss -- --ignored --nocapture
//! ```
//!
//! 1000 sessions subscribe and never read while a stream pushes far more than the memory
//! budget through the relay: resident memory stays flat, within the budget plus overhead.
//! Relay, agent and clients share this process, so the figure over-counts the relay alone.

use futures_util::SinkExt;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::session::Request;
use tokio_tungstenite::tungstenite::Message;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress test: run by name in release"]
async fn a_thousand_stalled_subscribers_keep_memory_flat() {
    let subscribers: usize = std::env::var("STALLED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let megabytes: usize = std::env::var("MEGABYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let budget = 64 * 1024 * 1024;
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            memory_budget_bytes: budget,
            max_sessions_per_org: 100_000,
            max_sessions_per_source: 100_000,
            session_send_buffer_bytes: 64 * 1024,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "flood", "main");
    w.write_lines([b"first\n".as_slice()]).unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let url = relay.handle.subscribe_url();
    let req = serde_json::to_string(&Request::Subscribe {
        id: "s".into(),
        selector: selector("ns", "flood", "main"),
        tail: Some(0),
        since_ns: None,
        since_seq: None,
        follow: true,
        contains: None,
        matches: None,
    })
    .unwrap();
    let mut stalled = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        ws.send(Message::text(req.clone())).await.unwrap();
        stalled.push(ws);
    }
    eventually("every session is connected", || async {
        (relay.metric("logrelay_relay_sessions_connected").await == subscribers as f64)
            .then_some(())
    })
    .await;
    let before = rss_bytes();

    let line = format!("{}\n", "z".repeat(199));
    let per_write = 1000;
    let chunk: Vec<&[u8]> = (0..per_write).map(|_| line.as_bytes()).collect();
    let writes = megabytes * 1024 * 1024 / (per_write * line.len());
    let mut peak = before;
    for i in 0..writes {
        w.write_lines(chunk.iter().copied()).unwrap();
        if i % 50 == 49 {
            let sent = ((i + 1) * per_write) as f64;
            eventually("the relay keeps up", || async {
                (relay.metric("logrelay_relay_lines_received_total").await >= sent).then_some(())
            })
            .await;
            peak = peak.max(rss_bytes());
        }
    }
    let total = (writes * per_write) as f64;
    eventually("everything was ingested", || async {
        (relay.metric("logrelay_relay_lines_received_total").await >= total).then_some(())
    })
    .await;
    let after = rss_bytes();
    let buffered = relay.metric("logrelay_relay_buffered_bytes").await;
    let dropped = relay.metric("logrelay_relay_dropped_lines_total").await;
    println!(
        "stalled={subscribers} pushed={megabytes} MiB rss_before={:.1} MiB rss_peak={:.1} MiB rss_after={:.1} MiB buffered={:.1} MiB budget={} MiB dropped_lines={dropped}",
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        after as f64 / 1048576.0,
        buffered / 1048576.0,
        budget / 1048576,
    );
    assert!(buffered <= budget as f64);
    assert!(
        peak <= before + budget as u64 + 64 * 1024 * 1024,
        "RSS grew from {before} to {peak}"
    );
    drop(stalled);
}
