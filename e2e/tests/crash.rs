//! Crashes of either process, with the relay and the agent as separate processes (the
//! binaries, production mode, certificate files), under 3 000 lines/s with kubelet-style
//! rotation, checked line by line by a client written from docs/protocol.md:
//!
//! * the relay is killed (SIGKILL) and restarted 1 s later: the client resumes with
//!   `since_seq` and gets every line, once, in order;
//! * the same with the agent's queue budget too small to hold what is written meanwhile: the
//!   client is told of the loss exactly (delivered + gap = written);
//! * the agent is killed and restarted, at once or after the relay noticed: watchers get
//!   `paused` then `resumed` within 2 s each, and every line (a renumbering, not a loss);
//! * the relay is killed and restarted, and a watcher asking for a `tail` reaches it before
//!   the client resumes: the client still gets every line, in the epoch it had;
//! * the agent is killed (or frozen), and a client resumes in the middle: a renumbering, not a
//!   loss, whether it resubscribed just before the kill or, the only watcher, left and
//!   resumed while the agent was away (the orphaned stream lingered for it).
//!
//! Each test prints its figures (lines written, delivered, gapped; detection times).

use std::time::{Duration, Instant};

use logrelay_e2e::*;
use logrelay_wire::session::Event;

const RATE: u32 = 3_000;

fn selector() -> logrelay_wire::selector::Selector {
    logrelay_e2e::selector("ns", "app", "main")
}

/// A relay and an agent as processes, a writer at [`RATE`] lines/s, and a client following it.
struct Scenario {
    relay: RelayProcess,
    agent: AgentProcess,
    writer: Option<KubeletWriter>,
    writer_dir: std::path::PathBuf,
    client: ResumingClient,
    _pods: PodsDir,
    _files: PkiFiles,
}

impl Scenario {
    async fn start(agent_flags: &[&str], writer: WriterConfig) -> Self {
        let files = TestPki::new().files("dev", "test");
        let relay = RelayProcess::start(&files, &[]).await;
        let pods = PodsDir::new();
        // Subscribed before the first line: the backlog reaches back to line 0.
        let client = ResumingClient::start(relay.subscribe_url(), selector(), 1_000_000);
        let writer = KubeletWriter::start(pods.path(), "ns", "app", "main", writer);
        let agent = AgentProcess::start(&files, pods.path(), relay.quic, agent_flags).await;
        client
            .until("the first lines", |s| s.ledger.delivered.len() >= 100)
            .await;
        Self {
            relay,
            agent,
            writer_dir: writer.dir().to_path_buf(),
            writer: Some(writer),
            client,
            _pods: pods,
            _files: files,
        }
    }

    /// What a failed check needs: the client's events, the log files (first and last line
    /// numbers), and what both processes logged.
    fn explain(&self) -> String {
        let events = self.client.with(|c| {
            c.events
                .iter()
                .filter(|(_, e)| !matches!(e, Event::Stream { .. }))
                .map(|(_, e)| format!("{e:?}"))
                .collect::<Vec<_>>()
        });
        let mut files = String::new();
        for e in std::fs::read_dir(&self.writer_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let data = std::fs::read(e.path()).unwrap_or_default();
            let text = String::from_utf8_lossy(&data);
            let line = |l: Option<&str>| {
                l.and_then(|l| l.split(' ').nth(3))
                    .map_or_else(String::new, str::to_owned)
            };
            files += &format!(
                "{:?}: {} bytes, lines {}..={}\n",
                e.file_name(),
                data.len(),
                line(text.lines().next()),
                line(text.lines().last())
            );
        }
        format!(
            "events: {events:?}\nfiles:\n{files}agent log:\n{}\nrelay log:\n{}",
            self.agent.output(),
            self.relay.output()
        )
    }

    /// Stops writing and waits until every line written is delivered or reported missing (at
    /// most [`DEADLINE`]: what is still missing then was lost silently, and the tally says so).
    async fn finish(&mut self) -> Tally {
        let written = self.writer.take().expect("writing").stop();
        let complete = self.client.until_within(DEADLINE, |s| {
            let t = s.ledger.tally(written);
            t.missing == 0 && t.delivered + t.gapped >= written
        });
        let _ = complete.await;
        self.client.with(|s| s.ledger.tally(written))
    }
}

/// Sleeps `d` as a step of the scenario (the time a process stays down), not to synchronise.
async fn stay_down(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_under_load_costs_no_line() {
    let mut s = Scenario::start(
        &[],
        WriterConfig {
            lines_per_sec: RATE,
            gzip: true,
            ..WriterConfig::default()
        },
    )
    .await;
    s.client.flowing(3_000, "a second of lines").await;

    let killed = Instant::now();
    s.relay.kill();
    stay_down(Duration::from_secs(1)).await;
    s.relay.start_again().await;
    let restarted = Instant::now();
    let relay = &s.relay;
    eventually("the agent is back", || async {
        (relay.metric("logrelay_relay_agents_connected").await == 1.0).then_some(())
    })
    .await;
    let agent_back = restarted.elapsed();
    s.client
        .until("the client resumed", |c| c.sessions >= 2)
        .await;
    s.client.flowing(6_000, "two more seconds of lines").await;
    let rotations = s.writer.as_ref().map_or(0, KubeletWriter::rotations);
    let tally = s.finish().await;
    eprintln!(
        "relay SIGKILL + restart after {:?}: written {}, delivered {}, gapped {}, duplicates \
         dropped {}, {rotations} rotations; agent reconnected {:?} after the restart; the \
         agent's reconnects: {}",
        restarted - killed,
        tally.written,
        tally.delivered,
        tally.gapped,
        tally.duplicates,
        agent_back,
        s.agent.metric("logrelay_agent_reconnects_total").await,
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", s.explain());
    assert_eq!(tally.gapped, 0, "no line lost: {tally:?}");
    assert_eq!(tally.renumbered, 0, "the agent kept its numbering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_down_longer_than_the_agents_budget_costs_an_exact_gap() {
    // 256 KiB hold under a second of these lines: two seconds down overflow it.
    let mut s = Scenario::start(
        &["--queue-budget-bytes", "262144"],
        WriterConfig {
            lines_per_sec: RATE,
            ..WriterConfig::default()
        },
    )
    .await;
    s.client.flowing(3_000, "a second of lines").await;
    s.relay.kill();
    stay_down(Duration::from_secs(2)).await;
    s.relay.start_again().await;
    s.client
        .until("the client resumed", |c| c.sessions >= 2)
        .await;
    s.client.flowing(3_000, "a second more").await;
    let tally = s.finish().await;
    // The agent's metrics are refreshed every second.
    let agent = &s.agent;
    let gapped = tally.gapped as f64;
    let dropped = eventually("the agent counted its losses", || async {
        let dropped = agent
            .metric("logrelay_agent_queue_dropped_lines_total")
            .await;
        (dropped >= gapped).then_some(dropped)
    })
    .await;
    eprintln!(
        "relay down 2 s, agent budget 256 KiB: written {}, delivered {}, gapped {} in {} gap \
         batches (agent counted {dropped} dropped), duplicates dropped {}",
        tally.written,
        tally.delivered,
        tally.gapped,
        s.client.with(|c| c.ledger.agent_gaps.len()),
        tally.duplicates,
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", s.explain());
    assert!(tally.gapped > 0, "the budget overflowed: {tally:?}");
    assert_eq!(
        dropped, tally.gapped as f64,
        "the agent counts exactly what the client was told"
    );
}

/// Kills the agent; restarts it after `down` (or once the relay told watchers it is gone);
/// checks `paused` then `resumed`, each within 2 s, and every line.
async fn agent_crash(restart_at_once: bool) {
    let mut s = Scenario::start(
        &[],
        WriterConfig {
            lines_per_sec: RATE,
            // Rotated files stay plain, and kubelet-sized (its default is 10 MiB): a restarted
            // agent walks back into them, however long it took to come back.
            rotate_bytes: 4 << 20,
            ..WriterConfig::default()
        },
    )
    .await;
    s.client.flowing(3_000, "a second of lines").await;
    let is_paused =
        |e: &Event| matches!(e, Event::Paused { reason, .. } if reason == "agent_disconnected");
    let is_resumed = |e: &Event| matches!(e, Event::Resumed { .. });

    let killed = Instant::now();
    s.agent.kill();
    let (paused_after, restarted) = if restart_at_once {
        // Back before the relay could notice: the new connection supersedes the old one.
        s.agent.start_again().await;
        let restarted = Instant::now();
        s.client
            .until("paused", |c| c.event_after(killed, is_paused).is_some())
            .await;
        let paused = s.client.with(|c| c.event_after(killed, is_paused)).unwrap();
        (paused - killed, restarted)
    } else {
        s.client
            .until("paused", |c| c.event_after(killed, is_paused).is_some())
            .await;
        let paused = s.client.with(|c| c.event_after(killed, is_paused)).unwrap();
        s.agent.start_again().await;
        (paused - killed, Instant::now())
    };
    s.client
        .until("resumed", |c| c.event_after(killed, is_resumed).is_some())
        .await;
    let resumed = s
        .client
        .with(|c| c.event_after(killed, is_resumed))
        .unwrap();
    let resumed_after = resumed.saturating_duration_since(restarted);
    s.client.flowing(3_000, "a second more").await;
    let tally = s.finish().await;
    eprintln!(
        "agent SIGKILL, restarted {}: paused {paused_after:?} after the kill, resumed \
         {resumed_after:?} after the restart (started {:?} after the kill); written {}, \
         delivered {}, gapped {}, renumbered {}, duplicates dropped {}; superseded \
         connections {}",
        if restart_at_once {
            "at once"
        } else {
            "after the pause"
        },
        restarted - killed,
        tally.written,
        tally.delivered,
        tally.gapped,
        tally.renumbered,
        tally.duplicates,
        s.relay
            .metric("logrelay_relay_agents_superseded_total")
            .await,
    );
    assert!(
        paused_after < Duration::from_secs(2),
        "paused after {paused_after:?}"
    );
    assert!(
        resumed_after < Duration::from_secs(2),
        "resumed after {resumed_after:?}"
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", s.explain());
    assert_eq!(tally.gapped, 0, "no line lost: {tally:?}");
    assert_eq!(tally.renumbered, 1, "a new numbering, told as such");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_and_restarted_at_once_is_paused_then_resumed_and_loses_nothing() {
    agent_crash(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_is_paused_within_2_s_and_its_restart_loses_nothing() {
    agent_crash(false).await;
}

/// Reads `client` into `ledger` until `done` holds; whether it did within [`DEADLINE`].
async fn pump(
    client: &mut logrelay::client::Client,
    ledger: &mut Ledger,
    done: impl Fn(&Ledger) -> bool,
) -> bool {
    tokio::time::timeout(DEADLINE, async {
        while !done(ledger) {
            match client.next().await {
                Ok(Some(item)) => ledger.record(&item),
                Ok(None) | Err(_) => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// Connects to `url` and subscribes to the stream, resuming after the last line `ledger` has.
async fn resume(url: &str, ledger: &Ledger) -> logrelay::client::Client {
    let mut client = within(
        "websocket connect",
        logrelay::client::Client::connect(url, None, None),
    )
    .await
    .expect("connect");
    client
        .send(&logrelay_wire::session::Request::Subscribe {
            id: "a".into(),
            selector: selector(),
            tail: Some(1_000_000),
            since_ns: None,
            since_seq: ledger.resume_point(),
            follow: true,
            contains: None,
            matches: None,
        })
        .await
        .expect("subscribe");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_watcher_ahead_of_the_resume_after_a_relay_restart_costs_no_line() {
    // The chaos soak's relay kill (seed 1): after the restart, another session's `tail`
    // opened the stream's live demand before the client resumed, the agent started a new
    // epoch for it and forgot the one the client resumes: `epoch_lost`, and lines sent again.
    let Direct {
        mut relay,
        agent,
        writer,
        url,
        mut ledger,
        client,
        t0,
        // Kept to the end: the pods directory and the certificate files.
        _pods,
        _files,
    } = Direct::start(WriterConfig {
        lines_per_sec: RATE,
        gzip: true,
        ..WriterConfig::default()
    })
    .await;
    let step = |what: &str| eprintln!("{:>7.2} s: {what}", t0.elapsed().as_secs_f64());
    relay.kill();
    drop(client);
    stay_down(Duration::from_secs(1)).await;
    relay.start_again().await;
    let r = &relay;
    eventually("the agent is back", || async {
        (r.metric("logrelay_relay_agents_connected").await == 1.0).then_some(())
    })
    .await;
    step("the agent is back");
    // Another session watches the stream first, asking for the last 100 lines.
    let mut late = Subscriber::connect(&url).await;
    late.subscribe("t", &selector(), Some(100)).await;
    late.until("the tail's first lines", |s| s.total_lines() > 0)
        .await;
    // Then the client resumes after the last line it had.
    let had = ledger.delivered.len();
    let mut client = resume(&url, &ledger).await;
    let (tally, why) = account(
        &mut client,
        &mut ledger,
        had,
        writer,
        (&relay, &agent),
        "relay SIGKILL + restart, a tail watcher first",
    )
    .await;
    step("every line accounted for");
    assert!(tally.is_exact(), "{why}");
    assert_eq!(tally.gapped, 0, "no line lost: {why}");
    assert_eq!(tally.renumbered, 0, "the agent kept its numbering: {why}");
    assert!(ledger.relay_gaps.is_empty(), "no gap event: {why}");
}

/// Once the client has resumed (with `had` lines): reads a second more of lines, stops the
/// writer and reads until every line written is delivered or reported missing (at most
/// [`DEADLINE`] each); prints `what`'s figures. The tally, and what a failed check needs.
async fn account(
    client: &mut logrelay::client::Client,
    ledger: &mut Ledger,
    had: usize,
    writer: KubeletWriter,
    (relay, agent): (&RelayProcess, &AgentProcess),
    what: &str,
) -> (Tally, String) {
    let flowing = pump(client, ledger, |l| l.delivered.len() >= had + 3_000).await;
    let written = writer.stop();
    let complete = pump(client, ledger, |l| {
        let t = l.tally(written);
        t.missing == 0 && t.delivered + t.gapped >= written
    })
    .await;
    let tally = ledger.tally(written);
    let why = format!(
        "{tally:?}\nflowing {flowing}, complete {complete}\nnotes: {:#?}\nagent log:\n{}\n\
         relay log:\n{}",
        ledger.notes,
        agent.output(),
        relay.output()
    );
    eprintln!(
        "{what}: written {}, delivered {}, gapped {}, renumbered {}, repeats dropped {}, gap \
         events {:?}",
        tally.written,
        tally.delivered,
        tally.gapped,
        tally.renumbered,
        tally.duplicates,
        ledger.relay_gaps
    );
    (tally, why)
}

/// Reads `client` into `ledger` until it brings a `stream` event (its subscription attached).
async fn attached(client: &mut logrelay::client::Client, ledger: &mut Ledger) {
    within("the subscription's stream event", async {
        loop {
            let item = client.next().await.expect("read").expect("open session");
            ledger.record(&item);
            if matches!(
                item,
                logrelay::client::Incoming::Event(Event::Stream { .. })
            ) {
                return;
            }
        }
    })
    .await;
}

/// A relay and an agent as processes, a writer at [`RATE`] lines/s, and a client reading the
/// relay itself (it resubscribes when the test says) subscribed from line 0, that has had the
/// first second of lines.
struct Direct {
    relay: RelayProcess,
    agent: AgentProcess,
    writer: KubeletWriter,
    url: String,
    ledger: Ledger,
    client: logrelay::client::Client,
    t0: Instant,
    _pods: PodsDir,
    _files: PkiFiles,
}

impl Direct {
    async fn start(writer: WriterConfig) -> Self {
        let t0 = Instant::now();
        let files = TestPki::new().files("dev", "test");
        let relay = RelayProcess::start(&files, &[]).await;
        let url = relay.subscribe_url();
        let pods = PodsDir::new();
        let mut ledger = Ledger::default();
        // Subscribed before the first line: the backlog reaches back to line 0.
        let mut client = resume(&url, &ledger).await;
        let writer = KubeletWriter::start(pods.path(), "ns", "app", "main", writer);
        let agent = AgentProcess::start(&files, pods.path(), relay.quic, &[]).await;
        assert!(
            pump(&mut client, &mut ledger, |l| l.delivered.len() >= 3_000).await,
            "the first second of lines\nagent log:\n{}",
            agent.output()
        );
        let s = Self {
            relay,
            agent,
            writer,
            url,
            ledger,
            client,
            t0,
            _pods: pods,
            _files: files,
        };
        s.step("the first second of lines");
        s
    }

    fn step(&self, what: &str) {
        eprintln!("{:>7.2} s: {what}", self.t0.elapsed().as_secs_f64());
    }

    /// The client leaves and resubscribes after the last line it had, and waits until its
    /// subscription is attached.
    async fn resubscribe(&mut self) {
        self.client = resume(&self.url, &self.ledger).await;
        attached(&mut self.client, &mut self.ledger).await;
        self.step("the client resubscribed");
    }

    /// Plain rotated files, kubelet-sized: a restarted agent walks back into them.
    fn plain() -> WriterConfig {
        WriterConfig {
            lines_per_sec: RATE,
            rotate_bytes: 4 << 20,
            ..WriterConfig::default()
        }
    }

    /// Restarts the agent, then checks that the client gets a second more, and every line
    /// written: none lost, no gap event, one renumbering (the restarted agent's new epoch).
    async fn restart_and_check_renumbered(self, what: &str) {
        let Self {
            relay,
            mut agent,
            writer,
            mut ledger,
            mut client,
            t0,
            ..
        } = self;
        let step = |what: &str| eprintln!("{:>7.2} s: {what}", t0.elapsed().as_secs_f64());
        agent.start_again().await;
        step("the agent restarted");
        let had = ledger.delivered.len();
        let (tally, why) = account(
            &mut client,
            &mut ledger,
            had,
            writer,
            (&relay, &agent),
            what,
        )
        .await;
        step("every line accounted for");
        assert!(tally.is_exact(), "{why}");
        assert_eq!(tally.gapped, 0, "no line lost: {why}");
        assert!(ledger.relay_gaps.is_empty(), "no gap event: {why}");
        assert_eq!(tally.renumbered, 1, "a new numbering, told as such: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_an_agent_kill_is_a_renumbering_not_a_loss() {
    // The chaos soak's seeds 2 and 3: a client resubscribed with `since_seq` just as the agent
    // was killed; its backfill went to the dying connection and sent nothing, and the resume
    // was then judged against the first batch of the restarted agent's new epoch: `epoch_lost`
    // of unknown count, although that epoch continued the old one exactly.
    let mut s = Direct::start(Direct::plain()).await;
    // Another session keeps the stream watched while the client comes and goes.
    let mut keeper = Subscriber::connect(&s.url).await;
    keeper.subscribe("k", &selector(), Some(0)).await;

    // The agent stops answering (it is about to die): the ring ends where it is, and the
    // client reads all of it.
    s.agent.freeze();
    loop {
        let received = s.relay.metric("logrelay_relay_lines_received_total").await as usize;
        assert!(
            pump(&mut s.client, &mut s.ledger, |l| l.delivered.len()
                >= received)
            .await,
            "the client reads what the relay received ({received} lines)"
        );
        if s.relay.metric("logrelay_relay_lines_received_total").await as usize == received {
            break;
        }
    }
    s.step("the client has all the relay received");
    // It resumes after the last line it had (the end of the ring): the relay asks the frozen
    // agent for that backfill, which never comes.
    s.resubscribe().await;
    s.agent.kill();
    s.restart_and_check_renumbered("a resume racing an agent kill")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_the_agent_is_away_is_a_renumbering_not_a_loss() {
    // The 30-minute soak's four gaps of unknown count: the agent was killed, its only watcher
    // left as well (its socket broke), and resumed with `since_seq` before the agent was back.
    // The relay had dropped the orphaned stream with its last watcher, so the resume found
    // nothing to continue, and the restarted agent's stream was a new one: `epoch_lost`.
    let mut s = Direct::start(Direct::plain()).await;
    s.agent.kill();
    let r = &s.relay;
    eventually("the relay noticed the agent is gone", || async {
        (r.metric("logrelay_relay_agents_connected").await == 0.0).then_some(())
    })
    .await;
    s.step("the agent is gone");
    // The only watcher leaves, and resumes after the last line it had, the agent still away.
    s.resubscribe().await;
    s.restart_and_check_renumbered("a resume while the agent is away")
        .await;
}
