//! The fault-proxy matrix: the relay and the agent as processes (the binaries, production
//! mode), the agent dialling the relay through the fault proxy (`logrelay_chaos::faultproxy`),
//! a container written at 1 000 lines/s with kubelet-style rotation, and a client written from
//! docs/protocol.md checking the stream line by line. Under each fault, every line written
//! arrives, once and in order, or is reported in an exact gap:
//!
//! * loss (1 %, 5 %, bursts), delay with jitter, reordering, duplication: nothing visible but
//!   the pace (QUIC retransmits);
//! * a blackhole shorter than the idle timeout: nothing visible; longer: `paused`, then
//!   `resumed`, and the lines of the same epoch from where they stopped;
//! * NAT rebinding (the agent's address changes): nothing visible at all, not even a new
//!   connection.
//!
//! And the throughput of the agent → relay hop under 1 % loss each way, against no loss, is
//! printed. Each test prints its figures.

use std::time::{Duration, Instant};

use logrelay_e2e::faultproxy::{Burst, ProxyStats};
use logrelay_e2e::*;
use logrelay_wire::session::Event;

const RATE: u32 = 1_000;
/// Lines written in half a second.
const HALF_SECOND: usize = RATE as usize / 2;

fn selector() -> logrelay_wire::selector::Selector {
    logrelay_e2e::selector("ns", "app", "main")
}

/// A relay, the fault proxy in front of it, an agent dialling the proxy, a writer and a client.
struct Pipeline {
    relay: RelayProcess,
    proxy: FaultProxy,
    agent: AgentProcess,
    writer: Option<KubeletWriter>,
    client: ResumingClient,
    _pods: PodsDir,
    _files: PkiFiles,
}

impl Pipeline {
    async fn start(seed: u64) -> Self {
        let files = TestPki::new().files("dev", "test");
        let relay = RelayProcess::start(&files, &[]).await;
        let proxy = FaultProxy::start(ProxyConfig::new(relay.quic, seed))
            .await
            .expect("start the fault proxy");
        let pods = PodsDir::new();
        let client = ResumingClient::start(relay.subscribe_url(), selector(), 1_000_000);
        let writer = KubeletWriter::start(
            pods.path(),
            "ns",
            "app",
            "main",
            WriterConfig {
                lines_per_sec: RATE,
                gzip: true,
                ..WriterConfig::default()
            },
        );
        let agent = AgentProcess::start(&files, pods.path(), proxy.addr(), &[]).await;
        client
            .until("the first lines", |s| s.ledger.delivered.len() >= 100)
            .await;
        Self {
            relay,
            proxy,
            agent,
            writer: Some(writer),
            client,
            _pods: pods,
            _files: files,
        }
    }

    /// Events other than `stream`, `subscribed`, `welcome` and `live`, after `since` (all
    /// with `None`).
    fn notable_events(&self, since: impl Into<Option<Instant>>) -> Vec<Event> {
        let since = since.into();
        self.client.with(|c| {
            c.events
                .iter()
                .filter(|(at, _)| since.is_none_or(|s| *at >= s))
                .map(|(_, e)| e.clone())
                .filter(|e| {
                    !matches!(
                        e,
                        Event::Stream { .. }
                            | Event::Subscribed { .. }
                            | Event::Welcome { .. }
                            | Event::Live { .. }
                    )
                })
                .collect()
        })
    }

    /// Heals the network, stops writing, and waits until every line written is delivered or
    /// reported missing (at most [`DEADLINE`]: what is still missing then was lost silently).
    async fn finish(&mut self) -> Tally {
        self.proxy.heal();
        let written = self.writer.take().expect("writing").stop();
        let _ = self
            .client
            .until_within(DEADLINE, |s| {
                let t = s.ledger.tally(written);
                t.missing == 0 && t.delivered + t.gapped >= written
            })
            .await;
        self.client.with(|s| s.ledger.tally(written))
    }

    fn explain(&self) -> String {
        format!(
            "proxy: {:?}\nevents: {:?}\nagent log:\n{}\nrelay log:\n{}",
            self.proxy.stats(),
            self.notable_events(None),
            self.agent.output(),
            self.relay.output()
        )
    }
}

fn summary(p: &ProxyStats) -> String {
    format!(
        "datagrams up {} (dropped {}: loss {}, burst {}, blackhole {}, queue {}; duplicated {}, \
         held back {}), down {} (dropped {}; duplicated {}, held back {})",
        p.up.received,
        p.up.dropped(),
        p.up.dropped_loss,
        p.up.dropped_burst,
        p.up.dropped_blackhole,
        p.up.dropped_queue_full,
        p.up.duplicated,
        p.up.reordered,
        p.down.received,
        p.down.dropped(),
        p.down.duplicated,
        p.down.reordered,
    )
}

/// Runs the pipeline under `faults` (both ways) for two seconds of lines, then healed for half
/// a second more; checks every line and that the session saw nothing but the pace.
async fn under(name: &str, seed: u64, faults: Faults) {
    let mut p = Pipeline::start(seed).await;
    p.client
        .flowing(HALF_SECOND, "half a second of lines")
        .await;
    let since = Instant::now();
    p.proxy.set_faults(Direction::Both, faults);
    p.client
        .flowing(4 * HALF_SECOND, "two seconds of lines under the fault")
        .await;
    let stats = p.proxy.stats();
    p.proxy.heal();
    p.client
        .flowing(HALF_SECOND, "half a second more, healed")
        .await;
    let tally = p.finish().await;
    let events = p.notable_events(since);
    eprintln!(
        "{name}: written {}, delivered {}, gapped {}, duplicates dropped {}; {}; events {events:?}",
        tally.written,
        tally.delivered,
        tally.gapped,
        tally.duplicates,
        summary(&stats),
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", p.explain());
    assert_eq!(tally.gapped, 0, "QUIC retransmits: nothing lost");
    assert!(
        events.is_empty(),
        "nothing but the pace is visible: {events:?}"
    );
    assert_eq!(p.client.with(|c| c.sessions), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_loss_each_way_loses_no_line() {
    under("1 % loss", 1, Faults::loss(0.01)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_each_way_loses_no_line() {
    under("5 % loss", 2, Faults::loss(0.05)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_loss_lose_no_line() {
    // 1 % of datagrams start a burst of 4 on average, in which 90 % are lost. (Bursts are
    // counted in datagrams: a long one on the quiet acknowledgement path would outlast the
    // idle timeout and be a blackhole, which is its own case.)
    let bursts = Faults {
        burst: Some(Burst {
            enter_ratio: 0.01,
            leave_ratio: 0.25,
            loss_in_burst_ratio: 0.9,
        }),
        ..Faults::default()
    };
    under("bursts of loss", 3, bursts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_with_jitter_loses_no_line_and_keeps_the_order() {
    // 20–40 ms each way (the order kept: reordering is its own case).
    let delay = Faults {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(20),
        ..Faults::default()
    };
    under("delay 20 ms + jitter 20 ms", 4, delay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_loses_no_line_and_keeps_the_order() {
    let reorder = Faults {
        reorder_ratio: 0.1,
        reorder_by: Duration::from_millis(15),
        ..Faults::default()
    };
    under("10 % reordered by 15 ms", 5, reorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_datagrams_deliver_no_line_twice() {
    let dup = Faults {
        duplicate_ratio: 0.05,
        jitter: Duration::from_millis(2),
        ..Faults::default()
    };
    under("5 % duplicated", 6, dup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_shorter_than_the_idle_timeout_is_not_seen() {
    let mut p = Pipeline::start(7).await;
    p.client
        .flowing(HALF_SECOND, "half a second of lines")
        .await;
    let since = Instant::now();
    // Half the idle timeout (1.2 s): QUIC's probes get through once it ends.
    p.proxy.blackhole(Duration::from_millis(600));
    p.client
        .flowing(4 * HALF_SECOND, "two seconds of lines")
        .await;
    let stats = p.proxy.stats();
    let tally = p.finish().await;
    let events = p.notable_events(since);
    eprintln!(
        "blackhole 600 ms: written {}, delivered {}, gapped {}; {}; events {events:?}",
        tally.written,
        tally.delivered,
        tally.gapped,
        summary(&stats)
    );
    assert!(
        stats.up.dropped_blackhole > 0,
        "the blackhole dropped datagrams"
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", p.explain());
    assert_eq!(tally.gapped, 0);
    assert!(events.is_empty(), "nothing is seen: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_longer_than_the_idle_timeout_is_paused_then_resumed_and_loses_nothing() {
    let mut p = Pipeline::start(8).await;
    p.client
        .flowing(HALF_SECOND, "half a second of lines")
        .await;
    let is_paused =
        |e: &Event| matches!(e, Event::Paused { reason, .. } if reason == "agent_disconnected");
    let is_resumed = |e: &Event| matches!(e, Event::Resumed { .. });
    let since = Instant::now();
    p.proxy.blackhole(Duration::from_secs(3));
    p.client
        .until("paused", |c| c.event_after(since, is_paused).is_some())
        .await;
    let paused = p.client.with(|c| c.event_after(since, is_paused)).unwrap();
    p.client
        .until("resumed", |c| c.event_after(paused, is_resumed).is_some())
        .await;
    let resumed = p
        .client
        .with(|c| c.event_after(paused, is_resumed))
        .unwrap();
    p.client.flowing(2 * HALF_SECOND, "a second more").await;
    let stats = p.proxy.stats();
    let tally = p.finish().await;
    let events = p.notable_events(since);
    eprintln!(
        "blackhole 3 s: paused {:?} after it began, resumed {:?} after it began; written {}, \
         delivered {}, gapped {}, renumbered {}; {}; agent reconnects {}; events {events:?}",
        paused - since,
        resumed - since,
        tally.written,
        tally.delivered,
        tally.gapped,
        tally.renumbered,
        summary(&stats),
        p.agent.metric("logrelay_agent_reconnects_total").await,
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", p.explain());
    assert_eq!(tally.gapped, 0, "the agent's queue held every line");
    assert_eq!(
        tally.renumbered, 0,
        "same epoch: the agent kept its numbering"
    );
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Event::Paused { .. } | Event::Resumed { .. })),
        "only paused and resumed: {events:?}"
    );
    assert_eq!(p.client.with(|c| c.sessions), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_rebinding_is_not_seen_at_all() {
    let mut p = Pipeline::start(9).await;
    p.client
        .flowing(HALF_SECOND, "half a second of lines")
        .await;
    let before = p.proxy.source_addrs();
    let since = Instant::now();
    let mut moves = Vec::new();
    for _ in 0..3 {
        moves.extend(p.proxy.rebind().expect("rebind"));
        p.client
            .flowing(HALF_SECOND, "half a second of lines from the new address")
            .await;
    }
    let relay = &p.relay;
    let connected = relay.metric("logrelay_relay_agents_connected").await;
    let superseded = relay.metric("logrelay_relay_agents_superseded_total").await;
    let reconnects = p.agent.metric("logrelay_agent_reconnects_total").await;
    let stats = p.proxy.stats();
    let tally = p.finish().await;
    let events = p.notable_events(since);
    eprintln!(
        "NAT rebinding, {before:?} then {moves:?}: written {}, delivered {}, gapped {}; agent \
         reconnects {reconnects}, relay superseded {superseded}; {}; events {events:?}",
        tally.written,
        tally.delivered,
        tally.gapped,
        summary(&stats),
    );
    assert_eq!(
        moves.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>(),
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    );
    assert!(tally.is_exact(), "{tally:?}\n{}", p.explain());
    assert_eq!(tally.gapped, 0);
    assert!(events.is_empty(), "nothing is seen: {events:?}");
    assert_eq!(connected, 1.0, "one agent connection");
    assert_eq!(superseded, 0.0, "the connection migrated: no new one");
    assert_eq!(reconnects, 0.0, "the agent never reconnected");
}

/// Appends lines `from..to` to a container's `0.log` at once (creating it); their message
/// bytes.
fn append(pods: &std::path::Path, pod: &str, from: u64, to: u64) -> u64 {
    use std::io::Write;
    let dir = pods
        .join(format!("ns_{pod}_0c0ffee0-0000-4000-8000-00000000d312"))
        .join("main");
    std::fs::create_dir_all(&dir).expect("container dir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("0.log"))
        .expect("0.log");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    let ts = logrelay::demo::now_rfc3339();
    let mut bytes = 0;
    for i in from..to {
        let m = KubeletWriter::message(i);
        bytes += m.len() as u64;
        write!(f, "{ts} stdout F {m}").expect("write");
    }
    f.flush().expect("flush");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_under_one_percent_loss_is_reported() {
    const LINES: u64 = 20_000;
    // Moving the burst is what is measured: a debug build on a loaded machine takes its time.
    const LIMIT: Duration = Duration::from_secs(60);
    let files = TestPki::new().files("dev", "test");
    let relay = RelayProcess::start(&files, &[]).await;
    let proxy = FaultProxy::start(ProxyConfig::new(relay.quic, 10))
        .await
        .expect("start the fault proxy");
    let pods = PodsDir::new();
    for pod in ["clean", "lossy"] {
        append(pods.path(), pod, 0, 1);
    }
    let agent = AgentProcess::start(&files, pods.path(), proxy.addr(), &[]).await;
    let mut figures = Vec::new();
    for (pod, faults) in [("clean", Faults::default()), ("lossy", Faults::loss(0.01))] {
        // Followed from line 0 before the burst is written: the live path carries it.
        let client = ResumingClient::start(
            relay.subscribe_url(),
            logrelay_e2e::selector("ns", pod, "main"),
            10,
        );
        client
            .until("line 0", |c| c.ledger.delivered.len() == 1)
            .await;
        proxy.set_faults(Direction::Both, faults);
        let base = relay.metric("logrelay_relay_lines_received_total").await;
        let before = proxy.stats();
        let started = Instant::now();
        let bytes = append(pods.path(), pod, 1, LINES);
        let received = tokio::time::timeout(LIMIT, async {
            loop {
                let n = relay.metric("logrelay_relay_lines_received_total").await - base;
                if n >= (LINES - 1) as f64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            received.is_ok(),
            "{pod}: the burst did not reach the relay in {LIMIT:?}"
        );
        let secs = started.elapsed().as_secs_f64();
        let after = proxy.stats();
        proxy.heal();
        let complete = client
            .until_within(LIMIT, |c| {
                let t = c.ledger.tally(LINES);
                t.missing == 0 && t.delivered + t.gapped == LINES
            })
            .await;
        let tally = client.with(|c| c.ledger.tally(LINES));
        assert!(
            complete && tally.is_exact(),
            "{pod}: {tally:?}\n{}",
            agent.output()
        );
        let lost = (after.up.dropped_loss - before.up.dropped_loss)
            + (after.down.dropped_loss - before.down.dropped_loss);
        figures.push((secs, bytes, lost, tally.gapped));
    }
    let bins = std::env::var("LOGRELAY_BIN_DIR").unwrap_or_else(|_| "this test's profile".into());
    let rate = |(secs, bytes, ..): (f64, u64, u64, u64)| {
        format!(
            "{:.2} s, {:.0} k lines/s, {:.1} MB/s",
            secs,
            LINES as f64 / secs / 1e3,
            bytes as f64 / secs / 1e6
        )
    };
    let (clean, lossy) = (figures[0], figures[1]);
    eprintln!(
        "throughput, file → agent → relay, a burst of {LINES} lines ({:.1} MB of messages) \
         appended at once, binaries of {bins}: no loss {}; 1 % loss each way {} ({} datagrams \
         lost), {:.0} % of the clean rate; lines gapped: {} and {}",
        clean.1 as f64 / 1e6,
        rate(clean),
        rate(lossy),
        lossy.2,
        clean.0 / lossy.0 * 100.0,
        clean.3,
        lossy.3,
    );
    assert!(lossy.2 > 0, "the proxy lost datagrams");
}
