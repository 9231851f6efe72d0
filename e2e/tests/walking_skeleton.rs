//! A line written to a pod's log reaches a WebSocket subscriber over QUIC: the whole path with
//! real files, real QUIC + TLS, real WebSocket, on 127.0.0.1.

use logrelay_e2e::*;
use logrelay_wire::session::Event;

fn line(pod: usize, i: usize) -> String {
    format!("pod{pod} line {i:05} {}\n", "x".repeat(i % 97))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_exactly_its_containers_lines_in_order() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut writers: Vec<_> = (0..3)
        .map(|p| pods.container("ns", &format!("pod{p}"), "main"))
        .collect();
    let mut written: Vec<Vec<String>> = vec![Vec::new(); 3];
    fn write(p: usize, writers: &mut [logrelay::demo::CriWriter], written: &mut [Vec<String>]) {
        let l = line(p, written[p].len());
        writers[p].write_lines([l.as_bytes()]).unwrap();
        written[p].push(l);
    }
    // One line per pod exists before anyone subscribes: the backlog delivers it.
    for p in 0..3 {
        write(p, &mut writers, &mut written);
    }
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;

    let mut first = relay.subscriber().await;
    first
        .subscribe("a", &selector("ns", "pod1", "main"), Some(1000))
        .await;
    first
        .until("pod1 stream", |s| s.stream_of("a").is_some())
        .await;
    let stream = first.stream_of("a").unwrap();
    first.until("backlog line", |s| s.total_lines() >= 1).await;

    // 10,000 lines spread over the three pods, written while the subscriber follows. Half-way,
    // once the first subscriber has everything so far, a second one joins with `tail: 100`.
    let mut second = None;
    let mut joined_at = 0;
    for i in 3..10_000 {
        write(i % 3, &mut writers, &mut written);
        if i == 5_000 {
            let so_far = written[1].len();
            first
                .until("first catches up", |s| s.total_lines() >= so_far)
                .await;
            let mut s = relay.subscriber().await;
            s.subscribe("b", &selector("ns", "pod1", "main"), Some(100))
                .await;
            s.until("backfill done", |s| {
                s.events.iter().any(|e| matches!(e, Event::Live { .. }))
            })
            .await;
            joined_at = so_far;
            second = Some(s);
        }
    }
    let want = written[1].clone();
    first
        .until("every pod1 line", |s| s.total_lines() >= want.len())
        .await;
    assert_eq!(first.lines.len(), 1, "lines from one stream only");
    assert_eq!(
        first.messages(stream),
        want,
        "exactly pod1's lines, in order"
    );
    let seqs: Vec<u64> = first.lines[&stream].iter().map(|l| l.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive sequence numbers"
    );

    // The late subscriber: the last 100 lines before it joined, then live, no duplicate.
    let mut second = second.unwrap();
    second
        .until("late subscriber catches up", |s| {
            s.lines
                .values()
                .flatten()
                .any(|l| l.message == want.last().unwrap().as_bytes())
        })
        .await;
    let got = second.messages(stream);
    assert_eq!(
        got,
        want[joined_at - 100..],
        "the last 100 lines before joining, then everything after: no hole, no duplicate"
    );
    let backfill = second.lines[&stream]
        .iter()
        .take_while(|l| l.backfill)
        .count();
    assert_eq!(
        backfill, 100,
        "exactly the last 100 lines come first as backfill"
    );
    assert!(
        second.lines[&stream][backfill..]
            .iter()
            .all(|l| !l.backfill)
    );
    assert!(
        second
            .events
            .iter()
            .any(|e| matches!(e, Event::Live { stream: s } if *s == stream)),
        "the end of the backfill is announced"
    );

    let delivered = relay.metric("logrelay_relay_lines_delivered_total").await;
    assert!(delivered >= (want.len() + got.len()) as f64, "{delivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_read_or_sent_while_nobody_watches() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "quiet", "main");
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    eventually("the stream is announced", || async {
        (relay.metric("logrelay_relay_streams").await == 1.0).then_some(())
    })
    .await;
    for i in 0..1000 {
        w.write_lines([line(0, i).as_bytes()]).unwrap();
    }
    // The stream is listed (metadata flows) but no content was read or sent.
    let mut s = relay.subscriber().await;
    s.client
        .send(&logrelay_wire::session::Request::List {
            selector: Default::default(),
            id: None,
            watch: false,
        })
        .await
        .unwrap();
    s.until("stream list", |s| {
        s.events.iter().any(|e| matches!(e, Event::Streams { .. }))
    })
    .await;
    assert_eq!(agent.metric("logrelay_agent_lines_sent_total").await, 0.0);
    assert_eq!(agent.metric("logrelay_agent_lines_read_total").await, 0.0);
    assert_eq!(
        relay.metric("logrelay_relay_lines_received_total").await,
        0.0
    );
    assert_eq!(agent.metric("logrelay_agent_streams").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_stops_as_soon_as_the_relay_cancels() {
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        logrelay_relay::RelayConfig {
            linger_secs: 0,
            ..logrelay_relay::RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut left = pods.container("ns", "left", "main");
    let mut kept = pods.container("ns", "kept", "main");
    // A follower nobody drains would be stopped only after ten minutes: only the cancel can
    // stop it within the test's deadline.
    let agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.detach_linger_ms = 600_000;
    })
    .await;
    let followers = || agent.metric("logrelay_agent_followers");
    let mut s = relay.subscriber().await;
    s.subscribe("left", &selector("ns", "left", "main"), Some(0))
        .await;
    s.subscribe("kept", &selector("ns", "kept", "main"), Some(0))
        .await;
    eventually("both streams followed", || async {
        (followers().await == 2.0).then_some(())
    })
    .await;
    left.write_lines([line(0, 0).as_bytes()]).unwrap();
    kept.write_lines([line(1, 0).as_bytes()]).unwrap();
    s.until("a line of each", |s| s.total_lines() == 2).await;

    // The last watcher of `left` leaves; with no linger the relay cancels at once, and the
    // agent stops its follower.
    s.client
        .send(&logrelay_wire::session::Request::Unsubscribe { id: "left".into() })
        .await
        .unwrap();
    eventually("the follower of the left stream stops", || async {
        (followers().await == 1.0).then_some(())
    })
    .await;
    assert_eq!(agent.metric("logrelay_agent_demands_active").await, 1.0);

    // Nothing more is read from `left`, while `kept` is read and sent on.
    let read = agent.metric("logrelay_agent_lines_read_total").await;
    for i in 1..=100 {
        left.write_lines([line(0, i).as_bytes()]).unwrap();
    }
    for i in 1..=3 {
        kept.write_lines([line(1, i).as_bytes()]).unwrap();
    }
    s.until("three more lines of kept", |s| s.total_lines() == 5)
        .await;
    assert_eq!(
        agent.metric("logrelay_agent_lines_read_total").await,
        read + 3.0,
        "only the watched stream's new lines were read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_to_a_restarted_relay() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let quic = relay.quic_addr();
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    w.write_lines([b"before restart\n".as_slice()]).unwrap();
    let agent = TestAgent::start(&pki, &pods, quic).await;
    eventually("agent connected", || async {
        (relay.metric("logrelay_relay_agents_connected").await == 1.0).then_some(())
    })
    .await;

    relay.handle.shutdown().await;
    eventually("agent notices the relay is gone", || async {
        (agent.metric("logrelay_agent_relay_connected").await == 0.0).then_some(())
    })
    .await;

    // The old relay's UDP socket is released by its endpoint driver shortly after shutdown:
    // bind the same port as soon as it is free again.
    let relay = eventually("the relay's port is free again", || async {
        TestRelay::try_start_with(
            &pki,
            logrelay_relay::RelayConfig {
                quic_addr: quic,
                ..logrelay_relay::RelayConfig::loopback()
            },
        )
        .await
    })
    .await;
    eventually("agent reconnected by itself", || async {
        (relay.metric("logrelay_relay_agents_connected").await == 1.0).then_some(())
    })
    .await;
    let mut s = relay.subscriber().await;
    s.subscribe("a", &selector("ns", "app", "main"), Some(10))
        .await;
    s.until("backlog after restart", |s| s.total_lines() >= 1)
        .await;
    w.write_lines([b"after restart\n".as_slice()]).unwrap();
    s.until("live line after restart", |s| s.total_lines() >= 2)
        .await;
    let stream = s.stream_of("a").unwrap();
    assert_eq!(s.messages(stream), ["before restart\n", "after restart\n"]);
    assert!(agent.metric("logrelay_agent_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_input_gets_a_named_error_and_other_sessions_keep_flowing() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;

    let mut good = relay.subscriber().await;
    good.subscribe("g", &selector("ns", "app", "main"), Some(10))
        .await;
    good.until("stream", |s| s.stream_of("g").is_some()).await;

    let mut bad = relay.subscriber().await;
    let expect_error = async |bad: &mut Subscriber, text: &str, needle: &str| {
        bad.client.send_text(text).await.unwrap();
        let before = bad.events.len();
        bad.until("error event", |s| {
            s.events[before..]
                .iter()
                .any(|e| matches!(e, Event::Error { .. }))
        })
        .await;
        let msg = bad.events[before..]
            .iter()
            .find_map(|e| match e {
                Event::Error { message, .. } => Some(message.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            msg.contains(needle),
            "error `{msg}` should mention `{needle}`"
        );
    };
    expect_error(&mut bad, "{not json", "invalid request").await;
    expect_error(&mut bad, r#"{"op":"teleport"}"#, "teleport").await;
    expect_error(&mut bad, r#"{"op":"subscribe","id":""}"#, "subscription id").await;
    expect_error(&mut bad, r#"{"op":"unsubscribe","id":"nope"}"#, "nope").await;
    expect_error(
        &mut bad,
        r#"{"op":"subscribe","id":"r","selector":{"pod_regex":"(a+"}}"#,
        "invalid regular expression `(a+`",
    )
    .await;
    expect_error(
        &mut bad,
        &format!(
            r#"{{"op":"subscribe","id":"r","selector":{{"container_regex":"{}"}}}}"#,
            r"\\w{100}".repeat(3)
        ),
        "compiles to more than",
    )
    .await;
    // Still usable after all that.
    bad.subscribe("b", &selector("ns", "app", "main"), Some(10))
        .await;
    bad.until("stream after errors", |s| s.stream_of("b").is_some())
        .await;

    // An oversized message closes only that session, with a reason.
    let mut huge = relay.subscriber().await;
    huge.client
        .send_text(&"x".repeat(200 * 1024))
        .await
        .unwrap();
    let closed = within("oversized message closes", async {
        loop {
            match huge.client.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(closed.is_err() || closed.unwrap().is_none());

    w.write_lines([b"still flowing\n".as_slice()]).unwrap();
    good.until("good session still flows", |s| s.total_lines() >= 1)
        .await;
    bad.until("repaired session flows", |s| s.total_lines() >= 1)
        .await;
    assert!(relay.metric("logrelay_relay_protocol_errors_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    assert_eq!(http_get(relay.handle.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(relay.handle.admin_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(agent.handle.admin_addr, "/healthz").await.0, 200);
    let (_, body) = http_get(relay.handle.admin_addr, "/metrics").await;
    for name in [
        "logrelay_relay_agents_connected",
        "logrelay_relay_sessions_connected",
        "logrelay_relay_lines_received_total",
        "logrelay_relay_bytes_received_total",
        "logrelay_relay_lines_delivered_total",
    ] {
        assert!(body.contains(name), "relay /metrics lacks {name}");
    }
    let (_, body) = http_get(agent.handle.admin_addr, "/metrics").await;
    for name in [
        "logrelay_agent_streams",
        "logrelay_agent_lines_read_total",
        "logrelay_agent_lines_sent_total",
    ] {
        assert!(body.contains(name), "agent /metrics lacks {name}");
    }
}
