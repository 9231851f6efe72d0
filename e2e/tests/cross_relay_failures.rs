//! Failures at the session level across relays (issue 14): three relays (the binaries,
//! production mode) on one `nats-server` started by the test, an agent writing 2 000 lines/s
//! (20 000 lines/s when its relay is SIGKILLed), and a session on each relay watching its
//! stream, each checked line by line:
//!
//! * a rolling restart of the three relays (SIGTERM, drained, started again, one after the
//!   other): every session resumes with `since_seq` on another relay;
//! * nats-server killed and started again: the sessions on the relays not holding the agent see
//!   `paused` (`backplane_unavailable`) then `resumed`, those on its relay keep flowing;
//! * the agent's relay SIGKILLed: the agent moves to another relay, the sessions elsewhere see
//!   `paused` then `resumed`.
//!
//! In each, every line reaches every session once, or is inside an exact `gap`.

use logrelay_e2e::nats::NatsServer;
use logrelay_e2e::*;
use logrelay_wire::reason::PauseReason;
use logrelay_wire::session::Event;

fn selector() -> logrelay_wire::selector::Selector {
    logrelay_e2e::selector("ns", "app", "main")
}

/// Three relays on `nats`, each with a short drain.
async fn three_relays(files: &PkiFiles, nats: &NatsServer) -> Vec<RelayProcess> {
    let mut relays = Vec::new();
    for id in ["relay-a", "relay-b", "relay-c"] {
        relays.push(nats.start_relay(files, id, &["--drain-secs", "10"]).await);
    }
    relays
}

/// Which relay holds the agent.
async fn owner(relays: &[RelayProcess]) -> usize {
    eventually("the agent connected to one relay", || async {
        for (i, r) in relays.iter().enumerate() {
            if r.pid().is_some() && r.metric("logrelay_relay_agents_connected").await == 1.0 {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Every relay but `owner` has the owner's stream in its shared catalog.
async fn catalogs_hold_the_stream(relays: &[RelayProcess], owner: usize) {
    for (i, r) in relays.iter().enumerate() {
        if i != owner {
            eventually("the relay holds the owner's stream", || async {
                (r.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
            })
            .await;
        }
    }
}

/// Waits until every client has `more` lines beyond what it has now.
async fn each_gets(clients: &[ResumingClient], more: usize, what: &str) {
    for c in clients {
        let target = c.with(|s| s.ledger.delivered.len()) + more;
        c.until(what, |s| s.ledger.delivered.len() >= target).await;
    }
}

/// Stops the writer and checks every client saw each line it watched once, or in an exact gap.
async fn every_line_once_or_in_an_exact_gap(
    writer: KubeletWriter,
    clients: &[ResumingClient],
    logs: impl Fn() -> String,
) {
    let written = writer.stop();
    for (i, client) in clients.iter().enumerate() {
        let first = client.with(|s| s.ledger.first_line()).expect("lines");
        let done = client
            .until_within(DEADLINE, |s| {
                let t = s.ledger.tally_range(first, written);
                t.delivered + t.gapped >= written - first
            })
            .await;
        let (tally, urls, notes) = client.with(|s| {
            (
                s.ledger.tally_range(first, written),
                s.urls.clone(),
                s.ledger.notes.clone(),
            )
        });
        println!("session {i}: written {written} from {first}, tally {tally:?}, urls {urls:?}");
        assert!(
            done && tally.missing == 0
                && tally.inexact_gaps == 0
                && tally.duplicates == 0
                && tally.overstated == 0,
            "session {i}: {tally:?}\n{notes:#?}\n{}",
            logs()
        );
    }
}

/// The streams a `list` on `relay` answers.
async fn list(relay: &RelayProcess) -> Vec<logrelay_wire::session::StreamEntry> {
    let mut s = Subscriber::connect(&relay.subscribe_url()).await;
    s.list(&selector()).await
}

/// The reason of the first `paused` a client saw after `since`.
fn paused_after(c: &ResumingClient, since: std::time::Instant) -> Option<PauseReason> {
    c.with(|s| {
        s.events.iter().find_map(|(at, e)| match e {
            Event::Paused { reason, .. } if *at >= since => Some(reason.clone()),
            _ => None,
        })
    })
}

fn writer(pods: &PodsDir, lines_per_sec: u32) -> KubeletWriter {
    KubeletWriter::start(
        pods.path(),
        "ns",
        "app",
        "main",
        WriterConfig {
            lines_per_sec,
            ..WriterConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_relays_every_session_resumes_elsewhere_with_every_line_or_an_exact_gap()
 {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let mut relays = three_relays(&files, &nats).await;
    let pods = PodsDir::new();
    let writer = writer(&pods, 2_000);
    let others: Vec<String> = relays[1..].iter().map(|r| r.quic.to_string()).collect();
    let agent = AgentProcess::start(
        &files,
        pods.path(),
        relays[0].quic,
        &["--relay-addr", &others[0], "--relay-addr", &others[1]],
    )
    .await;
    let on = owner(&relays).await;
    catalogs_hold_the_stream(&relays, on).await;
    // A session on each relay; each reconnects to the next relay when its own goes.
    let urls: Vec<String> = relays.iter().map(RelayProcess::subscribe_url).collect();
    let clients: Vec<ResumingClient> = (0..3)
        .map(|i| {
            let mut mine = urls.clone();
            mine.rotate_left(i);
            ResumingClient::start_any(mine, selector(), 0)
        })
        .collect();
    each_gets(&clients, 1_000, "lines on every relay").await;

    for i in 0..3 {
        relays[i].sigterm();
        let status = relays[i].exited().await;
        assert!(status.success(), "relay {i} drained and exited: {status}");
        relays[i].start_again().await;
        relays[i].backplane_connected().await;
        let on = owner(&relays).await;
        catalogs_hold_the_stream(&relays, on).await;
        each_gets(&clients, 1_000, "lines after the restart").await;
    }
    for c in &clients {
        assert!(
            c.with(|s| s.sessions) >= 2,
            "every session was moved at least once"
        );
    }
    // After the three restarts, `list` on every relay shows the one stream, once, live, with
    // the org of the agent's certificate: nothing stale is left of the agent's earlier relays.
    for r in &relays {
        let listed = list(r).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].labels.org, "dev");
        assert!(listed[0].live, "{listed:?}");
    }
    every_line_once_or_in_an_exact_gap(writer, &clients, || agent.output()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_remote_watchers_are_paused_backplane_unavailable_then_resumed_the_owners_flow()
 {
    let mut nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let relays = three_relays(&files, &nats).await;
    let pods = PodsDir::new();
    let writer = writer(&pods, 2_000);
    let agent = AgentProcess::start(&files, pods.path(), relays[0].quic, &[]).await;
    assert_eq!(owner(&relays).await, 0);
    catalogs_hold_the_stream(&relays, 0).await;
    let clients: Vec<ResumingClient> = relays
        .iter()
        .map(|r| ResumingClient::start(r.subscribe_url(), selector(), 0))
        .collect();
    each_gets(&clients, 1_000, "lines on every relay").await;

    nats.kill();
    let killed = std::time::Instant::now();
    for c in &clients[1..] {
        c.until("paused", |s| {
            s.event_after(killed, |e| matches!(e, Event::Paused { .. }))
                .is_some()
        })
        .await;
        assert_eq!(
            paused_after(c, killed),
            Some(PauseReason::BackplaneUnavailable)
        );
    }
    // NATS is down: the session on the agent's own relay keeps reading every line.
    each_gets(
        &clients[..1],
        2_000,
        "lines on the owner's relay without NATS",
    )
    .await;
    for r in &relays {
        assert_eq!(r.metric("logrelay_relay_backplane_connected").await, 0.0);
    }

    nats.start_again().await;
    for r in &relays {
        r.backplane_connected().await;
    }
    for c in &clients[1..] {
        c.until("resumed", |s| {
            s.event_after(killed, |e| matches!(e, Event::Resumed { .. }))
                .is_some()
        })
        .await;
    }
    each_gets(&clients, 1_000, "lines after NATS came back").await;
    assert_eq!(
        paused_after(&clients[0], killed),
        None,
        "the owner's session is never paused"
    );
    for c in &clients {
        assert_eq!(c.with(|s| s.sessions), 1, "no session was closed");
    }
    every_line_once_or_in_an_exact_gap(writer, &clients, || agent.output()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_relay_killed_of_three_the_agent_moves_and_the_sessions_elsewhere_are_paused_then_resumed()
 {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let mut relays = three_relays(&files, &nats).await;
    let pods = PodsDir::new();
    // 20 000 lines/s: about 20 000 lines in flight or queued at the agent across the kill.
    let writer = writer(&pods, 20_000);
    let others: Vec<String> = relays[1..].iter().map(|r| r.quic.to_string()).collect();
    let agent = AgentProcess::start(
        &files,
        pods.path(),
        relays[0].quic,
        &["--relay-addr", &others[0], "--relay-addr", &others[1]],
    )
    .await;
    let on = owner(&relays).await;
    catalogs_hold_the_stream(&relays, on).await;
    // A session on each of the two other relays (a session on the killed relay is
    // `failover.rs`'s).
    let clients: Vec<ResumingClient> = (0..3)
        .filter(|i| *i != on)
        .map(|i| ResumingClient::start(relays[i].subscribe_url(), selector(), 0))
        .collect();
    each_gets(&clients, 20_000, "lines across relays").await;

    relays[on].kill();
    let killed = std::time::Instant::now();
    for c in &clients {
        c.until("paused", |s| {
            s.event_after(killed, |e| matches!(e, Event::Paused { .. }))
                .is_some()
        })
        .await;
        c.until("resumed", |s| {
            s.event_after(killed, |e| matches!(e, Event::Resumed { .. }))
                .is_some()
        })
        .await;
        assert_eq!(
            paused_after(c, killed),
            Some(PauseReason::AgentDisconnected)
        );
    }
    let moved = owner(&relays).await;
    assert_ne!(moved, on, "the agent moved");
    each_gets(&clients, 20_000, "lines after the move").await;
    for c in &clients {
        assert_eq!(c.with(|s| s.sessions), 1, "no session was closed");
    }
    every_line_once_or_in_an_exact_gap(writer, &clients, || agent.output()).await;
}
