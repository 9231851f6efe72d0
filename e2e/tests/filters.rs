//! Line filters pushed down to the agent: a regular expression (`matches`) beside the substring
//! (`contains`), and one ring per (stream, filter) shared by every session asking for it.

use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::control::ErrorCode;
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};

/// Line `i`: an ERROR every 5th, a WARN every 7th, INFO otherwise.
fn leveled(i: usize) -> String {
    let level = if i.is_multiple_of(5) {
        "ERROR"
    } else if i.is_multiple_of(7) {
        "WARN"
    } else {
        "INFO"
    };
    format!("{level} line {i:03}\n")
}

fn subscribe(
    id: &str,
    follow: bool,
    contains: Option<&str>,
    matches: Option<&str>,
) -> serde_json::Value {
    let mut req = serde_json::json!({
        "op": "subscribe",
        "id": id,
        "selector": {"namespace": "ns", "pod": "app", "container": "main"},
        "tail": 1000,
        "follow": follow,
    });
    if let Some(c) = contains {
        req["contains"] = c.into();
    }
    if let Some(m) = matches {
        req["matches"] = m.into();
    }
    req
}

async fn send(s: &mut Subscriber, req: &serde_json::Value) {
    s.client
        .send_text(&req.to_string())
        .await
        .expect("send request");
}

fn error_of(s: &Subscriber) -> Option<(ErrorCode, String, Option<String>)> {
    s.events.iter().find_map(|e| match e {
        Event::Error { code, message, id } => Some((*code, message.clone(), id.clone())),
        _ => None,
    })
}

/// What a session received of subscription `id`'s stream, in order, checking that sequence
/// numbers only go up (no duplicate, nothing out of order).
fn in_order(s: &Subscriber, id: &str) -> Vec<String> {
    let Some(stream) = s.stream_of(id) else {
        return Vec::new();
    };
    let lines = s.lines.get(&stream).map(Vec::as_slice).unwrap_or_default();
    for pair in lines.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "in order, once: {pair:?}");
    }
    s.messages(stream)
}

fn matching(lines: &[String], level: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(level))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_lines_a_regex_matches_leave_the_agent_and_a_bad_one_is_refused_by_name() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let written: Vec<String> = (0..50).map(leveled).collect();
    w.write_lines(written.iter().map(|l| l.as_bytes())).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let mut s = relay.subscriber().await;

    // A pattern that does not compile: refused by name, and the session stays usable.
    send(&mut s, &subscribe("bad", true, None, Some("(ERROR|WARN"))).await;
    s.until("the refusal", |s| error_of(s).is_some()).await;
    let (code, message, _) = error_of(&s).unwrap();
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        message.contains("invalid regular expression `(ERROR|WARN`"),
        "{message}"
    );
    // On metrics streams `contains` lists names; a regex is refused, naming the subscription.
    s.events.clear();
    let mut metrics = subscribe("m", true, None, Some("cpu"));
    metrics["selector"] = serde_json::to_value(Selector {
        kind: Some(StreamKind::Metrics),
        ..Selector::default()
    })
    .unwrap();
    send(&mut s, &metrics).await;
    s.until("the refusal", |s| error_of(s).is_some()).await;
    let (code, message, id) = error_of(&s).unwrap();
    assert_eq!((code, id.as_deref()), (ErrorCode::BadRequest, Some("m")));
    assert!(message.contains("`matches` filters log lines"), "{message}");
    assert_eq!(agent.metric("logrelay_agent_demands_active").await, 0.0);

    // A one-off read through the regex: exactly the matching lines, and only they were sent.
    let sent_before = agent.metric("logrelay_agent_lines_sent_total").await;
    let received_before = relay.metric("logrelay_relay_lines_received_total").await;
    send(
        &mut s,
        &subscribe("once", false, None, Some("^(ERROR|WARN) ")),
    )
    .await;
    s.until("the end of the read", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::End { reason, .. } if reason == "complete"))
    })
    .await;
    let want: Vec<String> = written
        .iter()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
        .cloned()
        .collect();
    assert_eq!(in_order(&s, "once"), want);
    let sent = agent.metric("logrelay_agent_lines_sent_total").await - sent_before;
    let received = relay.metric("logrelay_relay_lines_received_total").await - received_before;
    assert_eq!((sent, received), (want.len() as f64, want.len() as f64));

    // A live tail through both filters: a line must satisfy the substring and the regex.
    send(
        &mut s,
        &subscribe("both", true, Some("line 0"), Some(r"ERROR line \d+[05]$")),
    )
    .await;
    let both = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("ERROR") && l.contains("line 0"))
            .cloned()
            .collect()
    };
    let backlog = both(&written);
    s.until("the backlog through both filters", |s| {
        in_order(s, "both").len() >= backlog.len()
    })
    .await;
    let sent_before = agent.metric("logrelay_agent_lines_sent_total").await;
    let more: Vec<String> = (50..120).map(leveled).collect();
    w.write_lines(more.iter().map(|l| l.as_bytes())).unwrap();
    let want = [backlog, both(&more)].concat();
    s.until("the new lines through both filters", |s| {
        in_order(s, "both").len() >= want.len()
    })
    .await;
    assert_eq!(in_order(&s, "both"), want);
    let sent = agent.metric("logrelay_agent_lines_sent_total").await - sent_before;
    assert_eq!(sent, both(&more).len() as f64, "nothing else left the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_asking_for_the_same_filter_share_one_demand_and_one_ring() {
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            linger_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let written: Vec<String> = (0..40).map(leveled).collect();
    w.write_lines(written.iter().map(|l| l.as_bytes())).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let errors = matching(&written, "ERROR");

    // Four sessions ask for the same regex, one after another: the first opens the filtered
    // ring, the others join it (each with a backfill of its own up to the ring's end).
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut s = relay.subscriber().await;
        send(&mut s, &subscribe("e", true, None, Some("^ERROR"))).await;
        s.until("the matching backlog", |s| {
            in_order(s, "e").len() >= errors.len()
        })
        .await;
        sessions.push(s);
    }
    let ring = sessions[0].stream_of("e").unwrap();
    for s in &sessions {
        assert_eq!(s.stream_of("e"), Some(ring), "one ring, one id");
        assert_eq!(in_order(s, "e"), errors);
    }
    eventually("one live demand and one follower at the agent", || async {
        let demands = agent.metric("logrelay_agent_demands_active").await;
        let followers = agent.metric("logrelay_agent_followers").await;
        (demands == 1.0 && followers == 1.0).then_some(())
    })
    .await;
    assert_eq!(relay.metric("logrelay_relay_filtered_rings").await, 1.0);

    // New lines: the agent sends each matching line once, and every session gets each of
    // them, in order.
    let sent_before = agent.metric("logrelay_agent_lines_sent_total").await;
    let delivered_before = relay.metric("logrelay_relay_lines_delivered_total").await;
    let more: Vec<String> = (40..100).map(leveled).collect();
    w.write_lines(more.iter().map(|l| l.as_bytes())).unwrap();
    let want = [errors.clone(), matching(&more, "ERROR")].concat();
    for s in &mut sessions {
        s.until("every new error", |s| in_order(s, "e").len() >= want.len())
            .await;
        assert_eq!(in_order(s, "e"), want);
    }
    let new_errors = matching(&more, "ERROR").len() as f64;
    let sent = agent.metric("logrelay_agent_lines_sent_total").await - sent_before;
    assert_eq!(sent, new_errors, "one push per line, whatever the watchers");
    eventually("each line delivered to each session", || async {
        let delivered = relay.metric("logrelay_relay_lines_delivered_total").await;
        (delivered - delivered_before == 4.0 * new_errors).then_some(())
    })
    .await;

    // Another filter is another ring, with a demand (and a follower) of its own.
    let mut warn = relay.subscriber().await;
    send(&mut warn, &subscribe("w", true, None, Some("^WARN"))).await;
    let warnings = matching(&[written.clone(), more.clone()].concat(), "WARN");
    warn.until("the warnings", |s| in_order(s, "w").len() >= warnings.len())
        .await;
    assert_eq!(in_order(&warn, "w"), warnings);
    assert_ne!(warn.stream_of("w"), Some(ring));
    eventually("two filtered demands at the agent", || async {
        let demands = agent.metric("logrelay_agent_demands_active").await;
        let followers = agent.metric("logrelay_agent_followers").await;
        (demands == 2.0 && followers == 2.0).then_some(())
    })
    .await;
    assert_eq!(relay.metric("logrelay_relay_filtered_rings").await, 2.0);

    // The ring stays while anyone watches it; the last watcher leaving cancels its demand
    // (after the linger), and only its.
    let mut last = sessions.pop().unwrap();
    drop(sessions);
    eventually("three sessions gone", || async {
        (relay.metric("logrelay_relay_sessions_connected").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(relay.metric("logrelay_relay_filtered_rings").await, 2.0);
    let more2: Vec<String> = (100..110).map(leveled).collect();
    w.write_lines(more2.iter().map(|l| l.as_bytes())).unwrap();
    let want = [want, matching(&more2, "ERROR")].concat();
    last.until("the newest error", |s| in_order(s, "e").len() >= want.len())
        .await;
    assert_eq!(in_order(&last, "e"), want);
    last.client
        .send(&Request::Unsubscribe { id: "e".into() })
        .await
        .unwrap();
    eventually("the shared filter's demand is cancelled", || async {
        let demands = agent.metric("logrelay_agent_demands_active").await;
        let followers = agent.metric("logrelay_agent_followers").await;
        (demands == 1.0 && followers == 1.0).then_some(())
    })
    .await;
    assert_eq!(relay.metric("logrelay_relay_filtered_rings").await, 1.0);
    // The other filter goes on.
    let more3: Vec<String> = (110..120).map(leveled).collect();
    w.write_lines(more3.iter().map(|l| l.as_bytes())).unwrap();
    let warnings = [warnings, matching(&more3, "WARN")].concat();
    warn.until("the newest warning", |s| {
        in_order(s, "w").len() >= warnings.len()
    })
    .await;
    assert_eq!(in_order(&warn, "w"), warnings);
}
