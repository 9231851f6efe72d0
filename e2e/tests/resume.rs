//! Joining and resuming: backfill then live with no duplicate and no hole, `since_seq` resume
//! after a reconnect, and the end of a stream reaching its watchers.

use logrelay_e2e::*;
use logrelay_wire::control::SeqPos;
use logrelay_wire::session::{Event, Request};

fn line(i: usize) -> String {
    format!("line {i:05}\n")
}

/// `ERROR` on every fifth line, `INFO` on the others.
fn leveled(i: usize) -> String {
    let level = if i.is_multiple_of(5) { "ERROR" } else { "INFO" };
    format!("{level} line {i:03}\n")
}

/// A relay, and an agent over a pods directory whose container `ns/app/main` holds `lines`.
struct App {
    pki: TestPki,
    relay: TestRelay,
    pods: PodsDir,
    w: logrelay::demo::CriWriter,
    agent: TestAgent,
}

impl App {
    async fn start(lines: &[String]) -> Self {
        let pki = TestPki::new();
        let relay = TestRelay::start(&pki).await;
        let pods = PodsDir::new();
        let mut w = pods.container("ns", "app", "main");
        w.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
        let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
        Self {
            pki,
            relay,
            pods,
            w,
            agent,
        }
    }
}

/// A subscription to the `ns/app/main` container with the given options.
fn subscribe_req(
    id: &str,
    tail: Option<u32>,
    since_seq: Option<SeqPos>,
    follow: bool,
    contains: Option<&str>,
) -> Request {
    Request::Subscribe {
        id: id.into(),
        selector: selector("ns", "app", "main"),
        tail,
        since_ns: None,
        since_seq,
        follow,
        contains: contains.map(Into::into),
        matches: None,
    }
}

fn ended(s: &Subscriber, stream: Option<u64>, why: &str) -> bool {
    stream.is_some_and(|stream| {
        s.events.iter().any(
            |e| matches!(e, Event::End { stream: id, reason } if *id == stream && reason == why),
        )
    })
}

/// A client reads the first `backlog` lines of the container's backlog, then goes away; where
/// it would resume, just after its line `seen` (0-based).
async fn read_and_leave(relay: &TestRelay, backlog: usize, seen: usize) -> SeqPos {
    let mut first = relay.subscriber().await;
    first
        .subscribe("a", &selector("ns", "app", "main"), Some(1000))
        .await;
    first
        .until("the backlog", |s| s.total_lines() >= backlog)
        .await;
    let stream = first.stream_of("a").unwrap();
    let seen = &first.lines[&stream][seen];
    SeqPos {
        epoch: seen.epoch,
        seq: seen.seq + 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_from_since_seq_without_duplicates() {
    let written: Vec<String> = (0..200).map(line).collect();
    let mut app = App::start(&written[..100]).await;

    // A first client reads the first 60 lines of the backlog, then goes away.
    let resume = read_and_leave(&app.relay, 100, 59).await;

    // More lines are written while it is away; it comes back with `since_seq`.
    app.w
        .write_lines(written[100..150].iter().map(|l| l.as_bytes()))
        .unwrap();
    let mut back = app.relay.subscriber().await;
    back.client
        .send(&subscribe_req("a", None, Some(resume), true, None))
        .await
        .unwrap();
    back.until("lines 60..150", |s| s.total_lines() >= 90).await;
    app.w
        .write_lines(written[150..].iter().map(|l| l.as_bytes()))
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
    assert!(!reason.as_str().is_empty());
    eventually("the relay forgets the stream", || async {
        (relay.metric("logrelay_relay_streams").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_read_delivers_the_backlog_then_ends() {
    let written: Vec<String> = (0..20).map(line).collect();
    let app = App::start(&written).await;
    let mut s = app.relay.subscriber().await;
    s.client
        .send(&subscribe_req("once", Some(5), None, false, None))
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
        (app.agent.metric("logrelay_agent_demands_active").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_read_gets_only_matching_lines_while_others_get_all() {
    let written: Vec<String> = (0..50).map(leveled).collect();
    let mut app = App::start(&written).await;

    let mut all = app.relay.subscriber().await;
    all.subscribe("all", &selector("ns", "app", "main"), Some(1000))
        .await;
    all.until("everything", |s| s.total_lines() >= 50).await;
    let sent_before = app.agent.metric("logrelay_agent_lines_sent_total").await;

    let filtered = |follow: bool| subscribe_req("errors", Some(1000), None, follow, Some("ERROR"));
    let mut errors = app.relay.subscriber().await;
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
    let sent = app.agent.metric("logrelay_agent_lines_sent_total").await - sent_before;
    assert_eq!(sent, 10.0);

    // A filtered live tail: the matching backlog, then matching new lines only, while the
    // unfiltered watcher keeps getting everything.
    let mut live = app.relay.subscriber().await;
    live.client.send(&filtered(true)).await.unwrap();
    live.until("the backlog's errors", |s| s.total_lines() >= 10)
        .await;
    let more: Vec<String> = (50..60).map(leveled).collect();
    app.w
        .write_lines(more.iter().map(|l| l.as_bytes()))
        .unwrap();
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
        (app.agent.metric("logrelay_agent_demands_active").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscription_to_a_watched_stream_gets_what_it_asked_for() {
    let written: Vec<String> = (0..30).map(leveled).collect();
    let mut app = App::start(&written).await;

    // One session, first watching everything live.
    let mut s = app.relay.subscriber().await;
    s.client
        .send(&subscribe_req("all", Some(1000), None, true, None))
        .await
        .unwrap();
    s.until("the backlog", |s| s.total_lines() >= 30).await;
    let all = s.stream_of("all").unwrap();
    assert!(s.lines[&all].iter().all(|l| !l.backfill));

    // The same session asks the same stream for a filtered live tail, a one-off read and a
    // backlog of its own.
    s.client
        .send(&subscribe_req(
            "errors",
            Some(1000),
            None,
            true,
            Some("ERROR"),
        ))
        .await
        .unwrap();
    s.client
        .send(&subscribe_req("once", Some(4), None, false, None))
        .await
        .unwrap();
    s.client
        .send(&subscribe_req("last3", Some(3), None, true, None))
        .await
        .unwrap();
    let errors_of = |s: &Subscriber| s.stream_of("errors").filter(|&e| e != all);
    let want_errors: Vec<String> = written
        .iter()
        .filter(|l| l.starts_with("ERROR"))
        .cloned()
        .collect();
    s.until(
        "the filtered backlog, the one-off's end and the backfill",
        |s| {
            errors_of(s).is_some_and(|e| s.messages(e).len() >= want_errors.len())
                && ended(s, s.stream_of("once"), "complete")
                && s.lines[&all].iter().filter(|l| l.backfill).count() >= 3
                && s.events
                    .iter()
                    .any(|e| matches!(e, Event::Live { stream } if *stream == all))
        },
    )
    .await;

    // Each got exactly its own: the filter's lines (under an id of its own, so they are told
    // apart from the unfiltered ones), the last 4 lines then `end`, the last 3 lines as backfill.
    let errors = errors_of(&s).unwrap();
    assert_eq!(s.messages(errors), want_errors);
    let once = s.stream_of("once").unwrap();
    assert_ne!(once, all);
    assert_eq!(s.messages(once), written[26..]);
    assert!(s.lines[&once].iter().all(|l| l.backfill));
    let backfill: Vec<String> = s.lines[&all]
        .iter()
        .filter(|l| l.backfill)
        .map(|l| String::from_utf8_lossy(&l.message).into_owned())
        .collect();
    assert_eq!(backfill, written[27..]);
    assert!(!ended(&s, Some(all), "complete"), "the live tail goes on");

    // New lines: the unfiltered watch gets them all, once; the filtered one only its matches.
    let more: Vec<String> = (30..40).map(leveled).collect();
    app.w
        .write_lines(more.iter().map(|l| l.as_bytes()))
        .unwrap();
    s.until("the new lines", |s| {
        s.lines[&all].iter().filter(|l| !l.backfill).count() >= 40
            && s.messages(errors).len() >= want_errors.len() + 2
    })
    .await;
    let live: Vec<String> = s.lines[&all]
        .iter()
        .filter(|l| !l.backfill)
        .map(|l| String::from_utf8_lossy(&l.message).into_owned())
        .collect();
    assert_eq!(live, [written.clone(), more.clone()].concat());
    let mut want = want_errors.clone();
    want.extend(more.iter().filter(|l| l.starts_with("ERROR")).cloned());
    assert_eq!(s.messages(errors), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_into_an_epoch_the_agent_lost_is_reported_before_the_new_epoch() {
    let written: Vec<String> = (0..20).map(line).collect();
    let app = App::start(&written).await;

    let resume = read_and_leave(&app.relay, 20, 9).await;

    // The agent restarts: the numbering it held (the epoch) is gone. The relay forgets the
    // stream first (nobody watches it), so the client below is its first watcher again.
    app.agent.handle.shutdown().await;
    eventually("the relay forgets the stream", || async {
        (app.relay.metric("logrelay_relay_streams").await == 0.0).then_some(())
    })
    .await;
    let _agent = TestAgent::start(&app.pki, &app.pods, app.relay.quic_addr()).await;

    // The gap comes before any line of the new epoch, and says what is known.
    let told_first = |s: &Subscriber| {
        let gap = s.events.iter().any(|e| {
            matches!(e, Event::Gap { from, reason, rest_of_epoch: true, .. }
                if *from == resume && reason == "epoch_lost")
        });
        let new_epoch = s.lines.values().flatten().any(|l| l.epoch != resume.epoch);
        assert!(
            gap || !new_epoch,
            "new-epoch lines before the gap: {:?}",
            s.events
        );
        gap && s.total_lines() >= 20
    };
    // The stream's first watcher resumes…
    let mut back = app.relay.subscriber().await;
    back.client
        .send(&subscribe_req("a", None, Some(resume), true, None))
        .await
        .unwrap();
    back.until("the gap, then the new epoch", told_first).await;
    // …and so does a watcher joining it (its own backfill), and a one-off read.
    let mut joining = app.relay.subscriber().await;
    joining
        .client
        .send(&subscribe_req("a", None, Some(resume), true, None))
        .await
        .unwrap();
    joining
        .until("the gap, then the new epoch", told_first)
        .await;
    let mut once = app.relay.subscriber().await;
    once.client
        .send(&subscribe_req("a", None, Some(resume), false, None))
        .await
        .unwrap();
    once.until("the gap, then the new epoch", told_first).await;
    for s in [&back, &joining, &once] {
        let stream = s.stream_of("a").unwrap();
        assert_eq!(s.messages(stream), written, "the backlog, in the new epoch");
        assert!(s.lines[&stream].iter().all(|l| l.epoch != resume.epoch));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_told_when_the_agent_goes_away_and_comes_back() {
    let mut app = App::start(&[line(0)]).await;
    let mut sub = app.relay.subscriber().await;
    sub.client
        .send(&subscribe_req("a", Some(10), None, true, None))
        .await
        .unwrap();
    sub.until("line 0", |s| s.total_lines() == 1).await;
    let stream = sub.stream_of("a").unwrap();

    // The node's agent goes away: the watcher is told, not left guessing.
    app.agent.handle.shutdown().await;
    sub.until("paused", |s| {
        s.events.iter().any(|e| {
            matches!(e, Event::Paused { stream: id, reason }
                if *id == stream && reason == "agent_disconnected")
        })
    })
    .await;

    // It comes back: resumed on the same stream id, and what was written meanwhile arrives.
    app.w.write_lines([line(1).as_bytes()]).unwrap();
    let _agent = TestAgent::start(&app.pki, &app.pods, app.relay.quic_addr()).await;
    sub.until("resumed, then line 1", |s| {
        s.events
            .iter()
            .any(|e| matches!(e, Event::Resumed { stream: id } if *id == stream))
            && s.messages(stream).contains(&line(1))
    })
    .await;
    assert!(
        !sub.events.iter().any(|e| matches!(e, Event::End { .. })),
        "the stream did not end: {:?}",
        sub.events
    );
}
