//! Joining and resuming: backfill then live with no duplicate and no hole, `since_seq` resume
//! after a reconnect, and the end of a stream reaching its watchers.

use logrelay_e2e::*;
use logrelay_wire::control::SeqPos;
use logrelay_wire::session::{Event, Request};

fn line(i: usize) -> String {
    format!("line {i:05}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_from_since_seq_without_duplicates() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let written: Vec<String> = (0..200).map(line).collect();
    w.write_lines(written[..100].iter().map(|l| l.as_bytes()))
        .unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;

    // A first client reads the first 60 lines of the backlog, then goes away.
    let mut first = relay.subscriber().await;
    first
        .subscribe("a", &selector("ns", "app", "main"), Some(1000))
        .await;
    first.until("100 lines", |s| s.total_lines() >= 100).await;
    let stream = first.stream_of("a").unwrap();
    let seen = &first.lines[&stream][59];
    let resume = SeqPos {
        epoch: seen.epoch,
        seq: seen.seq + 1,
    };
    drop(first);

    // More lines are written while it is away; it comes back with `since_seq`.
    w.write_lines(written[100..150].iter().map(|l| l.as_bytes()))
        .unwrap();
    let mut back = relay.subscriber().await;
    back.client
        .send(&Request::Subscribe {
            id: "a".into(),
            selector: selector("ns", "app", "main"),
            tail: None,
            since_ns: None,
            since_seq: Some(resume),
            follow: true,
            contains: None,
        })
        .await
        .unwrap();
    back.until("lines 60..150", |s| s.total_lines() >= 90).await;
    w.write_lines(written[150..].iter().map(|l| l.as_bytes()))
        .unwrap();
    back.until("everything after", |s| s.total_lines() >= 140)
        .await;
    let stream = back.stream_of("a").unwrap();
    assert_eq!(
        back.messages(stream),
        written[60..],
        "exactly from the resume point, in order"
    );
    let seqs: Vec<u64> = back.lines[&stream].iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (60..200).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_told_when_a_container_goes_away() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "short", "main");
    w.write_lines([b"hello\n".as_slice()]).unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let mut s = relay.subscriber().await;
    s.subscribe("a", &selector("ns", "short", "main"), Some(10))
        .await;
    s.until("the line", |s| s.total_lines() == 1).await;
    let stream = s.stream_of("a").unwrap();

    // The pod is deleted (kubelet removes its log directory).
    let dir = pods.log_path("ns", "short", "main");
    std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    s.until("an end event", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::End { stream: id, .. } if *id == stream))
    })
    .await;
    let reason = s
        .events
        .iter()
        .find_map(|e| match e {
            Event::End { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(!reason.is_empty());
    eventually("the relay forgets the stream", || async {
        (relay.metric("logrelay_relay_streams").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_read_delivers_the_backlog_then_ends() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let written: Vec<String> = (0..20).map(line).collect();
    w.write_lines(written.iter().map(|l| l.as_bytes())).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let mut s = relay.subscriber().await;
    s.client
        .send(&Request::Subscribe {
            id: "once".into(),
            selector: selector("ns", "app", "main"),
            tail: Some(5),
            since_ns: None,
            since_seq: None,
            follow: false,
            contains: None,
        })
        .await
        .unwrap();
    s.until("the end of the read", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::End { reason, .. } if reason == "complete"))
    })
    .await;
    let stream = s.stream_of("once").unwrap();
    assert_eq!(s.messages(stream), written[15..]);
    assert!(s.lines[&stream].iter().all(|l| l.backfill));
    // It never opened the live tail: nothing more arrives, and the agent serves nothing.
    eventually("the one-off demand is over", || async {
        (agent.metric("logrelay_agent_demands_active").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_read_gets_only_matching_lines_while_others_get_all() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let written: Vec<String> = (0..50)
        .map(|i| {
            let level = if i % 5 == 0 { "ERROR" } else { "INFO" };
            format!("{level} line {i:03}\n")
        })
        .collect();
    w.write_lines(written.iter().map(|l| l.as_bytes())).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;

    let mut all = relay.subscriber().await;
    all.subscribe("all", &selector("ns", "app", "main"), Some(1000))
        .await;
    all.until("everything", |s| s.total_lines() >= 50).await;
    let sent_before = agent.metric("logrelay_agent_lines_sent_total").await;

    let filtered = |follow: bool| Request::Subscribe {
        id: "errors".into(),
        selector: selector("ns", "app", "main"),
        tail: Some(1000),
        since_ns: None,
        since_seq: None,
        follow,
        contains: Some("ERROR".into()),
    };
    let mut errors = relay.subscriber().await;
    errors.client.send(&filtered(false)).await.unwrap();
    errors
        .until("the end of the read", |s| {
            s.events
                .iter()
                .any(|e| matches!(e, Event::End { reason, .. } if reason == "complete"))
        })
        .await;
    let want: Vec<String> = written
        .iter()
        .filter(|l| l.starts_with("ERROR"))
        .cloned()
        .collect();
    let stream = errors.stream_of("errors").unwrap();
    assert_eq!(errors.messages(stream), want);
    assert_eq!(all.messages(all.stream_of("all").unwrap()), written);
    // Unwanted lines never left the node: the filtered read sent only its ten.
    let sent = agent.metric("logrelay_agent_lines_sent_total").await - sent_before;
    assert_eq!(sent, 10.0);

    // A filtered live tail: the matching backlog, then matching new lines only, while the
    // unfiltered watcher keeps getting everything.
    let mut live = relay.subscriber().await;
    live.client.send(&filtered(true)).await.unwrap();
    live.until("the backlog's errors", |s| s.total_lines() >= 10)
        .await;
    let more: Vec<String> = (50..60)
        .map(|i| {
            format!(
                "{} line {i:03}\n",
                if i % 5 == 0 { "ERROR" } else { "INFO" }
            )
        })
        .collect();
    w.write_lines(more.iter().map(|l| l.as_bytes())).unwrap();
    live.until("the new errors", |s| s.total_lines() >= 12)
        .await;
    all.until("the new lines", |s| s.total_lines() >= 60).await;
    let stream = live.stream_of("errors").unwrap();
    let mut want_live = want.clone();
    want_live.extend(more.iter().filter(|l| l.starts_with("ERROR")).cloned());
    assert_eq!(live.messages(stream), want_live);
    // Unsubscribing cancels the filtered demand at the agent; the shared one stays.
    live.client
        .send(&Request::Unsubscribe {
            id: "errors".into(),
        })
        .await
        .unwrap();
    eventually("the filtered demand is cancelled", || async {
        (agent.metric("logrelay_agent_demands_active").await == 1.0).then_some(())
    })
    .await;
}
