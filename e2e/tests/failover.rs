//! Several relays, as processes (the binaries, production mode): the agent takes every relay's
//! address and moves when its relay drains (SIGTERM: QUIC close code 10) or dies (SIGKILL);
//! a session on a draining relay is closed with 4012 and resumes on another relay with
//! `since_seq`. Checked line by line under load: nothing lost, nothing repeated. With NATS,
//! each relay's streams reach the others' shared catalog and leave it when the relay dies.

use logrelay_e2e::nats::NatsServer;
use logrelay_e2e::*;
use logrelay_wire::session::close;

fn selector() -> logrelay_wire::selector::Selector {
    logrelay_e2e::selector("ns", "app", "main")
}

/// Several relays, an agent given every address writing at 2 000 lines/s, and a client that
/// moves on when its session ends, in the order the agent moves in (until the hub is wired to
/// the backplane, a session sees only the agents of its own relay).
struct Relays {
    relays: Vec<RelayProcess>,
    agent: AgentProcess,
    writer: Option<KubeletWriter>,
    client: ResumingClient,
    /// The relay the agent is on at the start.
    on: usize,
    /// The relays in the order the agent moves through them from `on` (its candidates are
    /// sorted by address; it dials the one after the relay it left).
    order: Vec<usize>,
    _pods: PodsDir,
    _files: PkiFiles,
}

impl Relays {
    async fn start(n: usize, relay_flags: &[&str]) -> Self {
        let files = TestPki::new().files("dev", "test");
        let mut relays = Vec::new();
        for _ in 0..n {
            relays.push(RelayProcess::start(&files, relay_flags).await);
        }
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
        let others: Vec<String> = relays[1..].iter().map(|r| r.quic.to_string()).collect();
        let flags: Vec<&str> = others
            .iter()
            .flat_map(|a| ["--relay-addr", a.as_str()])
            .collect();
        let agent = AgentProcess::start(&files, pods.path(), relays[0].quic, &flags).await;
        // The agent starts at a random one of its relays (agents spread over them).
        let on = eventually("the agent connected to one relay", || async {
            for (i, r) in relays.iter().enumerate() {
                if r.metric("logrelay_relay_agents_connected").await == 1.0 {
                    return Some(i);
                }
            }
            None
        })
        .await;
        let mut sorted: Vec<usize> = (0..n).collect();
        sorted.sort_by_key(|&i| relays[i].quic);
        let at = sorted
            .iter()
            .position(|&i| i == on)
            .expect("the agent's relay");
        let order: Vec<usize> = (0..n).map(|k| sorted[(at + k) % n]).collect();
        let urls = order.iter().map(|&i| relays[i].subscribe_url()).collect();
        let client = ResumingClient::start_any(urls, selector(), 1_000_000);
        client
            .until("the first lines", |s| s.ledger.delivered.len() >= 500)
            .await;
        Self {
            relays,
            agent,
            writer: Some(writer),
            client,
            on,
            order,
            _pods: pods,
            _files: files,
        }
    }

    /// Waits until the agent is connected to relay `i`.
    async fn agent_on(&self, i: usize, what: &str) {
        eventually(what, || async {
            (self.relays[i]
                .metric("logrelay_relay_agents_connected")
                .await
                == 1.0)
                .then_some(())
        })
        .await;
    }

    async fn flowing(&self, n: usize, what: &str) {
        self.client.flowing(n, what).await;
    }

    /// Stops writing; every line written is delivered, once, in order, and none reported lost.
    async fn every_line_once(&mut self) {
        let written = self.writer.take().expect("writing").stop();
        let done = self
            .client
            .until_within(DEADLINE, |s| s.ledger.tally(written).delivered >= written)
            .await;
        let tally = self.client.with(|s| s.ledger.tally(written));
        println!("written {written}, tally {tally:?}");
        assert!(
            done && tally.missing == 0 && tally.gapped == 0 && tally.inexact_gaps == 0,
            "{tally:?}\nagent log:\n{}",
            self.agent.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_relay_moves_its_agent_and_sessions_and_no_line_is_lost() {
    let mut s = Relays::start(2, &["--drain-secs", "15"]).await;
    let (on, other) = (s.on, 1 - s.on);
    let started = std::time::Instant::now();
    s.relays[on].sigterm();

    eventually("the agent moved to the other relay", || async {
        (s.relays[other]
            .metric("logrelay_relay_agents_connected")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    s.client
        .until("the session closed with 4012 (reconnect elsewhere)", |c| {
            c.close_codes.contains(&close::RECONNECT)
        })
        .await;
    let status = s.relays[on].exited().await;
    let drained_in = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", s.relays[on].output());
    assert!(
        !s.relays[on].output().contains("drain deadline passed"),
        "the relay exited once agent and session had moved, not at the deadline:\n{}",
        s.relays[on].output()
    );
    assert!(
        s.agent
            .output()
            .contains("relay drains: moving to another relay"),
        "{}",
        s.agent.output()
    );
    println!("drained in {drained_in:?}");
    s.flowing(2_000, "lines through the other relay").await;
    s.client.with(|c| {
        assert_eq!(c.urls.last(), Some(&s.relays[other].subscribe_url()));
    });
    s.every_line_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_its_sessions_move_on_when_their_relay_is_killed() {
    let mut s = Relays::start(2, &[]).await;
    let (on, other) = (s.on, 1 - s.on);
    s.relays[on].kill();
    s.agent_on(other, "the agent moved to the other relay")
        .await;
    s.flowing(2_000, "lines through the other relay").await;
    s.client.with(|c| {
        assert_eq!(c.urls.last(), Some(&s.relays[other].subscribe_url()));
        assert!(
            c.close_codes.is_empty(),
            "a killed relay sends no close frame: {:?}",
            c.close_codes
        );
    });
    s.every_line_once().await;
}

/// Three relays: the agent's relay drains (SIGTERM), then the relay it moved to is killed
/// (SIGKILL); the agent and the session follow to the third, and every line written arrives
/// once, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_its_session_move_twice_drained_then_killed_and_no_line_is_lost() {
    let mut s = Relays::start(3, &["--drain-secs", "15"]).await;
    let [first, second, third] = [s.order[0], s.order[1], s.order[2]];
    assert_eq!(first, s.on);

    s.relays[first].sigterm();
    s.agent_on(second, "the agent moved to the next relay")
        .await;
    let status = s.relays[first].exited().await;
    assert!(status.success(), "{status:?}\n{}", s.relays[first].output());
    s.flowing(2_000, "lines through the second relay").await;
    s.client.with(|c| {
        assert_eq!(c.close_codes, vec![close::RECONNECT]);
        assert_eq!(c.urls.last(), Some(&s.relays[second].subscribe_url()));
    });

    s.relays[second].kill();
    s.agent_on(third, "the agent moved to the third relay")
        .await;
    s.flowing(2_000, "lines through the third relay").await;
    s.client.with(|c| {
        assert_eq!(
            c.close_codes,
            vec![close::RECONNECT],
            "no close frame from a kill"
        );
        let urls: Vec<String> = s
            .order
            .iter()
            .map(|&i| s.relays[i].subscribe_url())
            .collect();
        assert_eq!(c.urls, urls, "one session per relay, in the agent's order");
    });
    s.every_line_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relays_streams_reach_the_others_catalog_and_leave_it_when_the_relay_dies() {
    let nats = NatsServer::start().await;
    let files = TestPki::new().files("dev", "test");
    let flags = |id: &'static str| {
        vec![
            "--nats-url".to_owned(),
            nats.url(),
            "--relay-id".to_owned(),
            id.to_owned(),
            "--nats-heartbeat-ms".to_owned(),
            "200".to_owned(),
            "--nats-relay-expiry-ms".to_owned(),
            "1000".to_owned(),
        ]
    };
    let fa = flags("relay-a");
    let fb = flags("relay-b");
    let mut a =
        RelayProcess::start(&files, &fa.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let b = RelayProcess::start(&files, &fb.iter().map(String::as_str).collect::<Vec<_>>()).await;
    for r in [&a, &b] {
        eventually("connected to NATS", || async {
            (r.metric("logrelay_relay_backplane_connected").await == 1.0).then_some(())
        })
        .await;
        assert_eq!(r.metric("logrelay_relay_backplane_enabled").await, 1.0);
    }
    let pods = PodsDir::new();
    let mut log = pods.container("ns", "app", "main");
    log.write_lines([b"hello\n".as_slice()]).unwrap();
    let _agent = AgentProcess::start(&files, pods.path(), a.quic, &[]).await;
    eventually("relay B holds relay A's stream", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        b.metric("logrelay_relay_backplane_remote_relays").await,
        1.0
    );
    // Pod names never reach a subject.
    let subjects = nats.subscribed_subjects().await;
    assert!(
        subjects.iter().any(|s| s.starts_with("logrelay.demand.")),
        "relay A serves its agent's demand subject: {subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .all(|s| !s.contains("app") && !s.contains("dev")),
        "{subjects:?}"
    );

    a.kill();
    eventually("relay A's streams expired at relay B", || async {
        (b.metric("logrelay_relay_backplane_remote_streams").await == 0.0
            && b.metric("logrelay_relay_backplane_remote_relays").await == 0.0)
            .then_some(())
    })
    .await;
}
