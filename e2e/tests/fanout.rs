//! Fan-out through the shared ring: many subscribers get every line in order; a stalled one
//! gets a gap (or is disconnected) without slowing anyone; memory stays within the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::SinkExt;
use logrelay::client::{Client, Incoming};
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::config::SlowConsumerPolicy;
use logrelay_wire::session::{Event, Request};
use tokio_tungstenite::tungstenite::Message;

const LINE_BYTES: usize = 200;

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let head = format!("line {i:06} ");
            format!("{head}{}\n", "y".repeat(LINE_BYTES - head.len() - 1))
        })
        .collect()
}

/// A session that subscribes and then never reads, with a tiny receive buffer.
async fn stalled_session(
    url: &str,
    stream: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let req = Request::Subscribe {
        id: "stalled".into(),
        selector: selector("ns", stream, "main"),
        tail: Some(0),
        since_ns: None,
        since_seq: None,
        follow: true,
        contains: None,
        matches: None,
    };
    ws.send(Message::text(serde_json::to_string(&req).unwrap()))
        .await
        .unwrap();
    ws
}

/// Reads until `want` lines arrived and checks each one, in order; publishes its progress.
/// Returns the gap events seen.
async fn receive_exactly(
    mut client: Client,
    want: Arc<Vec<String>>,
    progress: Arc<AtomicUsize>,
) -> usize {
    let mut next = 0;
    let mut gaps = 0;
    while next < want.len() {
        match client.next().await.expect("receive").expect("open") {
            Incoming::Lines(ls) => {
                for l in ls {
                    assert_eq!(l.message, want[next].as_bytes(), "line {next} in order");
                    assert_eq!(l.seq, next as u64);
                    next += 1;
                }
                progress.store(next, Ordering::Relaxed);
            }
            Incoming::Event(Event::Gap { .. }) => gaps += 1,
            Incoming::Event(Event::Error { message, .. }) => panic!("error event: {message}"),
            _ => {}
        }
    }
    gaps
}

async fn fan_out(policy: SlowConsumerPolicy, subscribers: usize, line_count: usize) {
    let pki = TestPki::new();
    let budget = 8 * 1024 * 1024;
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            ring_bytes: 256 * 1024,
            memory_budget_bytes: budget,
            slow_consumer: policy,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "busy", "main");
    let want = Arc::new(lines(line_count));
    w.write_lines([want[0].as_bytes()]).unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let url = relay.handle.subscribe_url();

    // Everyone subscribes with a backlog covering the first line, so each must see all lines.
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..subscribers {
        let mut c = within("connect", Client::connect(&url, None, None))
            .await
            .unwrap();
        c.send(&Request::Subscribe {
            id: format!("s{i}"),
            selector: selector("ns", "busy", "main"),
            tail: Some(10),
            since_ns: None,
            since_seq: None,
            follow: true,
            contains: None,
            matches: None,
        })
        .await
        .unwrap();
        let p = Arc::new(AtomicUsize::new(0));
        progress.push(p.clone());
        readers.push(tokio::spawn(receive_exactly(c, want.clone(), p)));
    }
    let mut stalled = stalled_session(&url, "busy").await;
    eventually("every session is connected", || async {
        (relay.metric("logrelay_relay_sessions_connected").await == (subscribers + 1) as f64)
            .then_some(())
    })
    .await;

    eventually("every subscriber has the first line", || async {
        progress
            .iter()
            .all(|p| p.load(Ordering::Relaxed) >= 1)
            .then_some(())
    })
    .await;
    // The writer keeps at most ~100 KiB ahead of the slowest *active* subscriber (the stalled
    // one is not waited for): active sessions never lag, whatever the stalled one does.
    let mut written = 1;
    for chunk in want[1..].chunks(100) {
        w.write_lines(chunk.iter().map(|l| l.as_bytes())).unwrap();
        written += chunk.len();
        let behind = written.saturating_sub(500);
        eventually("active subscribers keep up", || async {
            progress
                .iter()
                .all(|p| p.load(Ordering::Relaxed) >= behind)
                .then_some(())
        })
        .await;
    }
    for r in readers {
        let gaps = within("a subscriber receives every line", r).await.unwrap();
        assert_eq!(gaps, 0, "active subscribers never miss a line");
    }
    // The active sessions are gone; keep writing until the stalled one has overflowed its
    // socket buffers and fallen behind the ring (bounded: at most 64 MiB more).
    let extra = lines(1000);
    let fell_behind = async || match policy {
        SlowConsumerPolicy::DropOldest => {
            relay.metric("logrelay_relay_dropped_lines_total").await > 0.0
        }
        SlowConsumerPolicy::Disconnect => {
            relay.metric("logrelay_relay_sessions_connected").await == 0.0
        }
    };
    let mut outcome = false;
    let mut total = want.len();
    for _ in 0..320 {
        w.write_lines(extra.iter().map(|l| l.as_bytes())).unwrap();
        total += extra.len();
        eventually("the relay received the chunk", || async {
            (relay.metric("logrelay_relay_lines_received_total").await >= total as f64)
                .then_some(())
        })
        .await;
        let buffered = relay.metric("logrelay_relay_buffered_bytes").await;
        assert!(
            buffered <= budget as f64,
            "buffered {buffered} > budget {budget}"
        );
        outcome = fell_behind().await;
        if outcome {
            break;
        }
    }
    assert!(outcome, "the stalled session must fall behind ({policy:?})");
    assert_eq!(
        relay.metric("logrelay_relay_agents_connected").await,
        1.0,
        "the agent was never slowed down or cut off"
    );
    if policy == SlowConsumerPolicy::DropOldest {
        // Once it reads again, the stalled session is told exactly what it missed.
        let gap_lines = within("a gap event reaches the stalled session", async {
            use futures_util::StreamExt;
            loop {
                match stalled.next().await.expect("open").expect("message") {
                    Message::Text(t) => {
                        if let Ok(Event::Gap {
                            lines,
                            bytes,
                            reason,
                            ..
                        }) = serde_json::from_str::<Event>(t.as_str())
                        {
                            assert_eq!(reason, "slow_consumer");
                            // Batch bytes: every missed line's record, plus batch headers.
                            assert!(
                                bytes >= lines * (LINE_BYTES as u64 + 13),
                                "{bytes} for {lines}"
                            );
                            break lines;
                        }
                    }
                    _ => continue,
                }
            }
        })
        .await;
        assert!(gap_lines > 0);
        assert!(gap_lines as f64 <= relay.metric("logrelay_relay_dropped_lines_total").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscribers_get_every_line_while_a_stalled_one_gets_gaps() {
    fan_out(SlowConsumerPolicy::DropOldest, 99, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disconnect_policy_a_stalled_subscriber_is_closed() {
    fan_out(SlowConsumerPolicy::Disconnect, 9, 10_000).await;
}
