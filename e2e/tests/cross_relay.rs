//! Any relay serves any session (issue 14): relays as processes (the binaries, production
//! mode) sharing one `nats-server` started by the test. An agent on relay A; a session on relay
//! B sees its stream in `list` and every line in order; nothing crosses NATS while nobody on
//! another relay watches; a session of another org sees nothing of it; and when relay A is
//! killed the watcher on B is told `paused`, then `resumed` once the agent moved, with every
//! line or an exact gap.

use logrelay_e2e::nats::NatsServer;
use logrelay_e2e::*;
use logrelay_relay::config::RelayConfig;
use logrelay_wire::reason::PauseReason;
use logrelay_wire::session::Event;

fn selector() -> logrelay_wire::selector::Selector {
    logrelay_e2e::selector("ns", "app", "main")
}

/// `logrelay_relay_backplane_messages_out_total{kind="data"}` of a relay.
async fn data_out(r: &RelayProcess) -> f64 {
    let (_, body) = http_get(r.admin, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix("logrelay_relay_backplane_messages_out_total{kind=\"data\"} ")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The data subjects nats-server has subscriptions on.
async fn data_subscriptions(nats: &NatsServer) -> Vec<String> {
    nats.subscribed_subjects()
        .await
        .into_iter()
        .filter(|s| s.contains(".data."))
        .collect()
}

/// The stream's messages a session received, as numbers (`line-N`).
fn numbers(s: &Subscriber, stream: u64) -> Vec<u64> {
    s.messages(stream)
        .iter()
        .filter_map(|m| m.trim().strip_prefix("line-")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_relay_b_sees_every_line_of_an_agent_on_relay_a_and_only_while_it_watches() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let a = nats.start_relay(&files, "relay-a", &[]).await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;

    // A session of another org on a third relay (in the test process, same NATS) knows the
    // stream is there but never sees it: each relay checks its own sessions' org.
    let mut other = RelayConfig {
        anonymous_org: Some("evil".into()),
        ..RelayConfig::loopback()
    };
    other.backplane = nats.backplane("relay-c");
    other.backplane.nats_subject_prefix = "logrelay".into();
    let c = TestRelay::start_exactly(&TestPki::new(), other).await;
    eventually("relay C holds relay A's stream", || async {
        (c.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;
    let mut evil = c.subscriber().await;
    assert!(
        evil.list(&selector()).await.is_empty(),
        "another org lists nothing"
    );
    let everything = logrelay_wire::selector::Selector::default();
    evil.subscribe("all", &everything, Some(100)).await;

    // A watcher on relay A only: batches flow into A, none onto NATS.
    let mut local = Subscriber::connect(&a.subscribe_url()).await;
    local.subscribe("a", &selector(), Some(0)).await;
    local
        .until("A's stream", |s| s.stream_of("a").is_some())
        .await;
    let on_a = local.stream_of("a").unwrap();
    let mut next = 0u64;
    let mut write = |n: u64, log: &mut logrelay::demo::CriWriter| {
        let lines: Vec<Vec<u8>> = (next..next + n)
            .map(|i| format!("line-{i}\n").into_bytes())
            .collect();
        log.write_lines(lines.iter().map(Vec::as_slice)).unwrap();
        next += n;
        next
    };
    // The agent follows from its open on: write until the watcher on A has lines.
    loop {
        let upto = write(20, &mut log);
        let got = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            while numbers(&local, on_a).last().is_none_or(|&l| l + 1 < upto) {
                local.recv().await.expect("session open");
            }
        })
        .await;
        if got.is_ok() {
            break;
        }
    }
    assert!(data_subscriptions(&nats).await.is_empty());
    assert_eq!(
        data_out(&a).await,
        0.0,
        "nothing published while nobody on B watches"
    );

    // A session on relay B lists the stream (org `dev`, from the agent's certificate) and
    // watches it: every line from its first on, in order, no gap.
    let mut remote = Subscriber::connect(&b.subscribe_url()).await;
    let listed = remote.list(&selector()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].labels.org, "dev");
    assert_eq!(listed[0].labels.pod, "app");
    assert!(listed[0].live);
    remote.subscribe("b", &selector(), Some(0)).await;
    remote
        .until("B's stream", |s| s.stream_of("b").is_some())
        .await;
    let on_b = remote.stream_of("b").unwrap();
    eventually("relay A publishes for relay B", || async {
        (a.metric("logrelay_relay_backplane_remote_wants").await >= 1.0).then_some(())
    })
    .await;
    let start = write(0, &mut log);
    let mut upto = start;
    for _ in 0..10 {
        upto = write(100, &mut log);
    }
    remote
        .until("every line on B", |s| {
            numbers(s, on_b).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;
    let got = numbers(&remote, on_b);
    let first = got[0];
    assert!(
        first <= start,
        "B has the lines from when it watched: {first} > {start}"
    );
    let expected: Vec<u64> = (first..upto).collect();
    assert_eq!(got, expected, "every line, in order, once");
    assert!(
        !remote.events.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{:?}",
        remote.events
    );
    assert!(data_out(&a).await > 0.0);
    assert_eq!(
        data_subscriptions(&nats).await.len(),
        1,
        "one data subject, B's"
    );

    // The session of another org saw nothing of it.
    let before = local.total_lines();
    local
        .until("A's watcher is past", |s| s.total_lines() > before.min(1))
        .await;
    while let Ok(Some(_)) =
        tokio::time::timeout(std::time::Duration::from_millis(1), evil.recv()).await
    {}
    assert_eq!(evil.total_lines(), 0);
    assert!(
        evil.events
            .iter()
            .all(|e| !matches!(e, Event::Stream { .. })),
        "{:?}",
        evil.events
    );

    // B's watcher leaves: after the linger B releases, A stops publishing (A's own watcher
    // still reads every line).
    drop(remote);
    eventually("B no longer subscribes the data subject", || async {
        data_subscriptions(&nats).await.is_empty().then_some(())
    })
    .await;
    eventually("A no longer publishes", || async {
        (a.metric("logrelay_relay_backplane_remote_wants").await == 0.0).then_some(())
    })
    .await;
    let published = data_out(&a).await;
    let upto = write(200, &mut log);
    local
        .until("A's watcher has every line", |s| {
            numbers(s, on_a).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;
    assert_eq!(data_out(&a).await, published, "nothing more crossed NATS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_a_killed_its_watcher_on_b_is_paused_then_resumed_with_every_line_or_an_exact_gap() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let mut relays = [
        nats.start_relay(&files, "relay-a", &[]).await,
        nats.start_relay(&files, "relay-b", &[]).await,
    ];
    let pods = PodsDir::new();
    let writer = KubeletWriter::start(
        pods.path(),
        "ns",
        "app",
        "main",
        WriterConfig {
            lines_per_sec: 2_000,
            ..WriterConfig::default()
        },
    );
    // The agent knows both relays and starts at a random one: that one is "A", the other
    // holds the watcher.
    let other = relays[1].quic.to_string();
    let agent = AgentProcess::start(
        &files,
        pods.path(),
        relays[0].quic,
        &["--relay-addr", &other],
    )
    .await;
    let on = eventually("the agent connected to one relay", || async {
        for (i, r) in relays.iter().enumerate() {
            if r.metric("logrelay_relay_agents_connected").await == 1.0 {
                return Some(i);
            }
        }
        None
    })
    .await;
    let watcher = &relays[1 - on];
    eventually("the watcher's relay holds the stream", || async {
        (watcher
            .metric("logrelay_relay_backplane_remote_streams")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let client = ResumingClient::start(watcher.subscribe_url(), selector(), 0);
    client
        .until("lines across relays", |s| s.ledger.delivered.len() >= 1_000)
        .await;

    relays[on].kill();
    let killed = std::time::Instant::now();
    client
        .until("paused", |s| {
            s.event_after(killed, |e| matches!(e, Event::Paused { .. }))
                .is_some()
        })
        .await;
    client
        .until("resumed", |s| {
            s.event_after(killed, |e| matches!(e, Event::Resumed { .. }))
                .is_some()
        })
        .await;
    let paused = client.with(|s| {
        s.events.iter().find_map(|(_, e)| match e {
            Event::Paused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    });
    assert_eq!(paused, Some(PauseReason::AgentDisconnected));
    let target = client.with(|s| s.ledger.delivered.len()) + 1_000;
    client
        .until("lines after the move", |s| {
            s.ledger.delivered.len() >= target
        })
        .await;
    let written = writer.stop();
    let first = client.with(|s| s.ledger.first_line()).expect("lines");
    let done = client
        .until_within(DEADLINE, |s| {
            s.ledger.tally_range(first, written).delivered
                + s.ledger.tally_range(first, written).gapped
                >= written - first
        })
        .await;
    let tally = client.with(|s| s.ledger.tally_range(first, written));
    println!("written {written} from {first}, tally {tally:?}");
    assert!(
        done && tally.missing == 0 && tally.inexact_gaps == 0 && tally.duplicates == 0,
        "{tally:?}\nagent log:\n{}",
        agent.output()
    );
}

/// Writes lines `line-N` for N from `*next` on, `n` of them; returns the next N.
fn write_lines(log: &mut logrelay::demo::CriWriter, next: &mut u64, n: u64) -> u64 {
    let lines: Vec<Vec<u8>> = (*next..*next + n)
        .map(|i| format!("line-{i}\n").into_bytes())
        .collect();
    log.write_lines(lines.iter().map(Vec::as_slice)).unwrap();
    *next += n;
    *next
}

/// A session on relay `a` watching the stream from the end of its file (`tail: 0`), once it
/// reads what is written: lines are written 20 at a time until it has them. It and its id of
/// the stream.
async fn watch_from_the_end(
    a: &RelayProcess,
    log: &mut logrelay::demo::CriWriter,
    next: &mut u64,
) -> (Subscriber, u64) {
    let mut local = Subscriber::connect(&a.subscribe_url()).await;
    local.subscribe("a", &selector(), Some(0)).await;
    local
        .until("A's stream", |s| s.stream_of("a").is_some())
        .await;
    let on_a = local.stream_of("a").unwrap();
    loop {
        let upto = write_lines(log, next, 20);
        let got = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            while numbers(&local, on_a).last().is_none_or(|&l| l + 1 < upto) {
                local.recv().await.expect("session open");
            }
        })
        .await;
        if got.is_ok() {
            return (local, on_a);
        }
    }
}

/// A session on relay B subscribing as `sub` with `tail: tail`: reads its backlog, then `live`
/// more lines written, and checks it got exactly the lines from `from` to the last written,
/// each once, in order, and no gap. Returns the stream's id.
async fn tail_then_live(
    b: &RelayProcess,
    sub: &str,
    tail: u32,
    log: &mut logrelay::demo::CriWriter,
    next: &mut u64,
    live: u64,
    from: u64,
) -> Subscriber {
    let mut s = Subscriber::connect(&b.subscribe_url()).await;
    s.subscribe(sub, &selector(), Some(tail)).await;
    s.until("the backlog", |s| {
        s.stream_of(sub)
            .is_some_and(|id| numbers(s, id).len() >= tail as usize)
    })
    .await;
    let id = s.stream_of(sub).unwrap();
    let upto = write_lines(log, next, live);
    s.until("the live lines", |s| {
        numbers(s, id).last().is_some_and(|&l| l + 1 >= upto)
    })
    .await;
    assert_eq!(
        numbers(&s, id),
        (from..upto).collect::<Vec<_>>(),
        "the backlog, then live, once each"
    );
    assert!(
        !s.events.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{:?}",
        s.events
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_watcher_anywhere_on_relay_b_gets_its_tail_from_the_agents_file() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let a = nats.start_relay(&files, "relay-a", &[]).await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    let mut next = 0u64;
    let written = write_lines(&mut log, &mut next, 1_000);
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        a.metric("logrelay_relay_demands_opened_total").await,
        0.0,
        "nobody watched the stream before"
    );

    // Nobody watches it on any relay: A's ring is empty. The `tail: 300` of the first
    // watcher on B goes with B's lease, and A's live demand reads it from the file: the last
    // 300 lines of the file, then live.
    tail_then_live(&b, "f", 300, &mut log, &mut next, 200, written - 300).await;
}

/// Relay A's live demand is open already (a watcher of its own from the end of the file), so
/// its ring holds only the lines after that; a session on B asks for more than that. A reads
/// the part before its ring from the agent's file (a one-off demand) and answers it with its
/// ring's: B's session gets exactly the last lines asked, then live, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_reaching_before_relay_as_ring_is_read_from_the_agents_file() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let a = nats.start_relay(&files, "relay-a", &[]).await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    let mut next = 0u64;
    write_lines(&mut log, &mut next, 1_000);
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;
    let (mut local, on_a) = watch_from_the_end(&a, &mut log, &mut next).await;
    let upto = write_lines(&mut log, &mut next, 100);
    local
        .until("A's watcher has every line", |s| {
            numbers(s, on_a).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;
    let ring_starts = numbers(&local, on_a)[0];
    assert!(ring_starts >= 1_000, "A's ring starts at {ring_starts}");
    let opened = a.metric("logrelay_relay_demands_opened_total").await;

    // `tail: 600` reaches hundreds of lines before A's ring.
    let from = upto - 600;
    assert!(from < ring_starts);
    tail_then_live(&b, "f", 600, &mut log, &mut next, 200, from).await;
    assert!(
        a.metric("logrelay_relay_demands_opened_total").await > opened,
        "A opened a demand at the agent for the part before its ring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_on_relay_b_gets_exactly_the_last_lines_from_relay_as_ring_then_live() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let a = nats.start_relay(&files, "relay-a", &[]).await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;

    // A watcher on relay A: A's ring takes in the stream.
    let mut next = 0u64;
    let (mut local, on_a) = watch_from_the_end(&a, &mut log, &mut next).await;
    let upto = write_lines(&mut log, &mut next, 1_000);
    local
        .until("A's watcher has every line", |s| {
            numbers(s, on_a).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;

    // The first session on relay B, with `tail: 500`: B's ring is empty, the backlog comes
    // from A's ring, then live, each line once.
    let mut first = Subscriber::connect(&b.subscribe_url()).await;
    first.subscribe("f", &selector(), Some(500)).await;
    first
        .until("the backlog from A", |s| {
            s.stream_of("f")
                .is_some_and(|id| numbers(s, id).len() >= 500)
        })
        .await;
    let on_b = first.stream_of("f").unwrap();
    eventually("relay A publishes for relay B", || async {
        (a.metric("logrelay_relay_backplane_remote_wants").await >= 1.0).then_some(())
    })
    .await;
    let upto2 = write_lines(&mut log, &mut next, 300);
    first
        .until("the live lines", |s| {
            numbers(s, on_b).last().is_some_and(|&l| l + 1 >= upto2)
        })
        .await;
    assert_eq!(
        numbers(&first, on_b),
        (upto - 500..upto2).collect::<Vec<_>>(),
        "the last 500 lines, then live, once each"
    );

    // A late joiner on B while B's ring flows: its backlog ends exactly where it starts
    // reading B's ring.
    let late = tail_then_live(&b, "l", 500, &mut log, &mut next, 300, upto2 - 500).await;
    for s in [&first, &late] {
        assert!(
            !s.events.iter().any(|e| matches!(e, Event::Gap { .. })),
            "{:?}",
            s.events
        );
        assert!(
            s.events.iter().any(|e| matches!(e, Event::Live { .. })),
            "{:?}",
            s.events
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_relay_is_killed_resumes_on_another_relay_from_the_owners_ring_every_line_once()
 {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let a = nats.start_relay(&files, "relay-a", &[]).await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let mut c = nats.start_relay(&files, "relay-c", &[]).await;
    let pods = PodsDir::new();
    let writer = KubeletWriter::start(
        pods.path(),
        "ns",
        "app",
        "main",
        WriterConfig {
            lines_per_sec: 2_000,
            ..WriterConfig::default()
        },
    );
    let agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    for r in [&b, &c] {
        eventually("the relay holds relay A's stream", || async {
            (r.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
        })
        .await;
    }
    // The session starts on relay C and, when C dies, reconnects to relay B with
    // `since_seq`: B has never watched the stream, the lines C's session missed come from
    // relay A's ring.
    let client =
        ResumingClient::start_any(vec![c.subscribe_url(), b.subscribe_url()], selector(), 0);
    client
        .until("lines across relays", |s| s.ledger.delivered.len() >= 1_000)
        .await;
    c.kill();
    client
        .until("the session is on relay B", |s| s.urls.len() >= 2)
        .await;
    let target = client.with(|s| s.ledger.delivered.len()) + 2_000;
    client
        .until("lines on relay B", |s| s.ledger.delivered.len() >= target)
        .await;
    let written = writer.stop();
    let first = client.with(|s| s.ledger.first_line()).expect("lines");
    let done = client
        .until_within(DEADLINE, |s| {
            let t = s.ledger.tally_range(first, written);
            t.delivered + t.gapped >= written - first
        })
        .await;
    let tally = client.with(|s| s.ledger.tally_range(first, written));
    println!("written {written} from {first}, tally {tally:?}");
    assert!(
        done && tally.missing == 0 && tally.gapped == 0 && tally.duplicates == 0,
        "{tally:?}\nagent log:\n{}",
        agent.output()
    );
    assert!(
        b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0,
        "B still holds the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_beyond_the_owners_demand_cap_ends_the_remote_subscription_with_demand_limit() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    // Relay A allows one demand per agent.
    let a = nats
        .start_relay(&files, "relay-a", &["--max-demands-per-agent", "1"])
        .await;
    let b = nats.start_relay(&files, "relay-b", &[]).await;
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    let mut other_log = pods.container("ns", "other", "main");
    let (mut next, mut other_next) = (0u64, 0u64);
    write_lines(&mut log, &mut next, 1);
    write_lines(&mut other_log, &mut other_next, 1);
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds both of relay A's streams", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 2.0).then_some(())
    })
    .await;
    // Summed over its `limit` label: only the demand cap is hit here.
    let cap_hits = "logrelay_relay_limit_hits_total";

    // A watcher on relay A takes the agent's one demand.
    let mut local = Subscriber::connect(&a.subscribe_url()).await;
    local.subscribe("a", &selector(), Some(0)).await;
    local
        .until("A's stream", |s| s.stream_of("a").is_some())
        .await;
    assert_eq!(a.metric(cap_hits).await, 0.0);

    // A session on relay B watches the other container: serving it would need a second
    // demand at the agent, so relay A refuses B's lease, and B's watcher is told so.
    let mut remote = Subscriber::connect(&b.subscribe_url()).await;
    remote
        .subscribe("b", &logrelay_e2e::selector("ns", "other", "main"), Some(0))
        .await;
    remote
        .until("B's watcher ended with demand_limit", |s| {
            s.events.iter().any(|e| {
                matches!(e, Event::End { reason, .. }
                    if *reason == logrelay_wire::reason::EndReason::DemandLimit)
            })
        })
        .await;
    assert_eq!(a.metric(cap_hits).await, 1.0, "counted at the owner");
    assert!(
        data_subscriptions(&nats).await.is_empty(),
        "B wants nothing after the refusal"
    );
    assert_eq!(a.metric("logrelay_relay_backplane_remote_wants").await, 0.0);

    // The container relay A already serves needs no new demand: B's lease on it passes, and
    // B's session gets its lines.
    remote.subscribe("c", &selector(), Some(0)).await;
    remote
        .until("B's stream", |s| s.stream_of("c").is_some())
        .await;
    let on_b = remote.stream_of("c").unwrap();
    eventually("relay A publishes for relay B", || async {
        (a.metric("logrelay_relay_backplane_remote_wants").await >= 1.0).then_some(())
    })
    .await;
    let upto = write_lines(&mut log, &mut next, 100);
    remote
        .until("the lines on B", |s| {
            numbers(s, on_b).last().is_some_and(|&l| l + 1 >= upto)
        })
        .await;
    assert_eq!(a.metric(cap_hits).await, 1.0, "no further refusal");
}
