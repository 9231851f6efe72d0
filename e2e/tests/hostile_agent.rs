//! A hostile agent — a real QUIC client with a valid certificate of its own org, speaking the
//! agent protocol — presents every id the relay handed to other connections, and random ones
//! (issue #11, defect 1). Nothing reaches a stream it does not own, no other demand ends, no
//! foreign epoch reaches a victim, and every attempt is refused, counted and audited.
//!
//! The victim is an agent of org `globex` serving numbered lines; its sessions check every
//! line they get.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::auth::testkit::Signer;
use logrelay_wire::batch::{BatchBuilder, LineFlags, TraceFrame};
use logrelay_wire::control::{self, AgentMsg, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::Event;
use serde_json::json;

/// The victim's epoch, and the attacker's.
const VICTIM_EPOCH: u64 = 0x5EC7_1C71;
const ATTACKER_EPOCH: u64 = 0xBAD_BAD;
/// STOP_SENDING / connection close code for a violation (`logrelay_wire::code::AppCode::Violation`).
const VIOLATION: u32 = 8;
/// STOP_SENDING code for a malformed data stream (`logrelay_wire::code::AppCode::Protocol`).
const PROTOCOL: u32 = 1;
/// `--max-agent-violations` (default): the next one closes the connection.
const MAX_VIOLATIONS: u32 = 16;

fn labels(pod: &str) -> Labels {
    Labels {
        namespace: "ns".into(),
        pod: pod.into(),
        container: "main".into(),
        ..Labels::default()
    }
}

/// One batch of `lines` stamped `stream`, `epoch`, from `first_seq`.
fn batch(stream: u64, epoch: u64, first_seq: u64, lines: &[String]) -> Bytes {
    let mut b = BatchBuilder::new(stream, epoch, first_seq, 0, 0);
    for l in lines {
        b.push(1, LineFlags(0), l.as_bytes());
    }
    b.finish()
}

/// A data stream's bytes: preamble, then one frame per batch.
fn data(demand: u64, batches: &[Bytes]) -> Vec<u8> {
    let mut buf = DataPreamble { demand }.encode().to_vec();
    for b in batches {
        buf.extend_from_slice(&frame::prefix(b.len()));
        buf.extend_from_slice(b);
    }
    buf
}

/// A connection speaking the agent protocol: hello, then its catalog; relay messages arrive on
/// `rx` (bounded; a test reads them as it goes).
struct Peer {
    conn: quinn::Connection,
    send: quinn::SendStream,
    rx: tokio::sync::mpsc::Receiver<RelayMsg>,
    _endpoint: quinn::Endpoint,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.reader.abort();
        self.conn.close(0u32.into(), b"done");
    }
}

impl Peer {
    async fn connect(
        pki: &TestPki,
        relay: SocketAddr,
        org: &str,
        catalog: &[(u64, Labels)],
    ) -> Self {
        let mut peer = Self::dial(pki, relay, org).await;
        peer.send(&AgentMsg::Hello {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            node: "n1".into(),
            agent_version: "test".into(),
            features: Vec::new(),
        })
        .await;
        let welcome = peer.next().await;
        assert!(
            matches!(welcome, Some(RelayMsg::Welcome { .. })),
            "{welcome:?}"
        );
        let streams = catalog
            .iter()
            .map(|(id, labels)| StreamInfo {
                id: *id,
                labels: labels.clone(),
            })
            .collect();
        peer.send(&AgentMsg::CatalogAdd { streams }).await;
        peer
    }

    /// A connection with its control stream open, nothing said yet.
    async fn dial(pki: &TestPki, relay: SocketAddr, org: &str) -> Self {
        let tls = pki.agent_tls(org, "c1");
        let client = logrelay_tls::quic_client(tls.identity, tls.relay_roots).expect("client");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let conn = within("agent handshake", async {
            endpoint.connect(relay, "localhost").unwrap().await.unwrap()
        })
        .await;
        let (send, mut recv) = conn.open_bi().await.expect("control stream");
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let reader = tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
            loop {
                while let Ok(Some(body)) = decoder.next_frame() {
                    if let Ok(msg) = control::decode::<RelayMsg>(&body)
                        && tx.send(msg).await.is_err()
                    {
                        return;
                    }
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => decoder.extend(&c.bytes),
                    _ => return,
                }
            }
        });
        Self {
            conn,
            send,
            rx,
            _endpoint: endpoint,
            reader,
        }
    }

    async fn send(&mut self, msg: &AgentMsg) {
        let mut out = bytes::BytesMut::new();
        frame::encode(&control::encode(msg), &mut out);
        let _ = self.send.write_all(&out).await;
    }

    /// The next relay message other than a heartbeat; `None` once the connection is gone.
    async fn next(&mut self) -> Option<RelayMsg> {
        within("a relay message", async {
            loop {
                match self.rx.recv().await {
                    Some(RelayMsg::Heartbeat) => {}
                    other => return other,
                }
            }
        })
        .await
    }

    /// The next `open`: (demand, stream_ref, follow, until).
    async fn next_open(&mut self) -> (u64, u64, bool, Option<SeqPos>) {
        loop {
            match self.next().await {
                Some(RelayMsg::Open {
                    demand,
                    stream_ref,
                    demand_spec,
                    ..
                }) => return (demand, stream_ref, demand_spec.follow, demand_spec.until),
                Some(_) => {}
                None => panic!("connection closed while waiting for an open"),
            }
        }
    }

    /// Opens a data stream with these bytes; how the relay answered: the STOP_SENDING code,
    /// or the connection's close code.
    async fn present(&self, bytes: Vec<u8>) -> Answer {
        let Ok(mut s) = self.conn.open_uni().await else {
            return Answer::Closed(self.close_code());
        };
        if s.write_all(&bytes).await.is_err() {
            return match s.stopped().await {
                Ok(Some(code)) => Answer::Stopped(code.into_inner() as u32),
                _ => Answer::Closed(self.close_code()),
            };
        }
        match within("the relay's answer to a data stream", s.stopped()).await {
            Ok(Some(code)) => Answer::Stopped(code.into_inner() as u32),
            Ok(None) => Answer::Accepted,
            Err(_) => Answer::Closed(self.close_code()),
        }
    }

    fn close_code(&self) -> Option<u32> {
        match self.conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                Some(c.error_code.into_inner() as u32)
            }
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Stopped(u32),
    Closed(Option<u32>),
    Accepted,
}

/// What the victim agent saw of its demands.
#[derive(Debug, Default)]
struct VictimLog {
    /// Every demand it was sent: id → (stream_ref, follow).
    demands: HashMap<u64, (u64, bool)>,
    /// Demands cancelled, and live data streams the relay stopped.
    cancelled: Vec<u64>,
    stopped: Vec<u64>,
}

/// The victim agent: serves each live demand with one numbered line every 10 ms, each backfill
/// with the lines up to its `until`, and records everything.
async fn victim_agent(pki: &TestPki, relay: SocketAddr) -> (Peer, Arc<Mutex<VictimLog>>) {
    let mut peer = Peer::connect(pki, relay, "globex", &[(1, labels("victim"))]).await;
    let log = Arc::new(Mutex::new(VictimLog::default()));
    let conn = peer.conn.clone();
    let mut rx = std::mem::replace(&mut peer.rx, tokio::sync::mpsc::channel(1).1);
    let record = log.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                RelayMsg::Open {
                    demand,
                    stream_ref,
                    demand_spec,
                    ..
                } => {
                    record
                        .lock()
                        .unwrap()
                        .demands
                        .insert(demand, (stream_ref, demand_spec.follow));
                    let conn = conn.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let Ok(mut s) = conn.open_uni().await else {
                            return;
                        };
                        if s.write_all(&data(demand, &[])).await.is_err() {
                            return;
                        }
                        if let Some(until) = demand_spec.until {
                            let from = until.seq.saturating_sub(5);
                            let lines: Vec<String> =
                                (from..until.seq).map(|n| format!("victim {n}\n")).collect();
                            let b = batch(stream_ref, VICTIM_EPOCH, from, &lines);
                            let _ = s.write_all(&data_frames(&[b])).await;
                            let _ = s.finish();
                            return;
                        }
                        let mut seq = 0u64;
                        loop {
                            let b =
                                batch(stream_ref, VICTIM_EPOCH, seq, &[format!("victim {seq}\n")]);
                            if s.write_all(&data_frames(&[b])).await.is_err() {
                                record.lock().unwrap().stopped.push(demand);
                                return;
                            }
                            seq += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    });
                }
                RelayMsg::Cancel { demand } => record.lock().unwrap().cancelled.push(demand),
                _ => {}
            }
        }
    });
    (peer, log)
}

fn data_frames(batches: &[Bytes]) -> Vec<u8> {
    let mut buf = Vec::new();
    for b in batches {
        buf.extend_from_slice(&frame::prefix(b.len()));
        buf.extend_from_slice(b);
    }
    buf
}

/// A session's received lines of `stream`, each checked: the victim's own text for its
/// sequence number, in the victim's epoch, in order without a hole.
fn check_victim_lines(sub: &Subscriber, stream: u64, what: &str) -> u64 {
    let lines = sub
        .lines
        .get(&stream)
        .map(Vec::as_slice)
        .unwrap_or_default();
    assert!(!lines.is_empty(), "{what}: no line at all");
    let mut last: Option<u64> = None;
    for l in lines {
        assert_eq!(
            l.epoch, VICTIM_EPOCH,
            "{what}: a foreign epoch reached the victim: {l:?}"
        );
        let text = String::from_utf8_lossy(&l.message);
        assert_eq!(
            text,
            format!("victim {}\n", l.seq),
            "{what}: a line it does not own"
        );
        if let Some(prev) = last {
            assert_eq!(
                l.seq,
                prev + 1,
                "{what}: not the next line after {prev}: {l:?}"
            );
        }
        last = Some(l.seq);
    }
    last.unwrap()
}

/// The events a victim session may see: none that says its stream ended, paused or lost data.
fn check_victim_events(sub: &Subscriber, what: &str) {
    for e in &sub.events {
        assert!(
            matches!(
                e,
                Event::Welcome { .. }
                    | Event::Subscribed { .. }
                    | Event::Stream { .. }
                    | Event::Live { .. }
            ),
            "{what}: unexpected event {e:?}"
        );
    }
}

/// A small deterministic generator (splitmix64), so a failing run names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

async fn relay_with_tokens(pki: &TestPki) -> (TestRelay, Signer, tempfile::TempDir) {
    TestRelay::with_tokens(
        pki,
        RelayConfig {
            // Aggregated audit summaries every second, so the test sees them soon.
            audit_aggregate_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await
}

async fn session(relay: &TestRelay, signer: &Signer, org: &str) -> Subscriber {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = signer.token(&json!({
        "sub": format!("{org}-viewer"), "org": org, "exp": exp, "roles": [{"role": "viewer"}]
    }));
    Subscriber::connect_with_token(&relay.handle.subscribe_url(), Some(&token)).await
}

/// Reads a session's messages for a while without waiting on any in particular.
async fn pump(sub: &mut Subscriber, until_lines_of: u64, stream: u64) {
    sub.until("more victim lines", |s| {
        s.lines
            .get(&stream)
            .and_then(|ls| ls.last())
            .is_some_and(|l| l.seq >= until_lines_of)
    })
    .await;
}

fn violations(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with("logrelay_relay_agent_violations_total{"))
        .filter_map(|l| {
            let kind = l.split("kind=\"").nth(1)?.split('"').next()?.to_owned();
            Some((kind, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_presenting_other_connections_ids_reaches_nothing_and_is_counted() {
    let seed: u64 = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x11_0001);
    eprintln!("seed {seed} (HOSTILE_SEED to replay)");
    let mut rng = Rng(seed);
    let pki = TestPki::new();
    let (relay, signer, _dir) = relay_with_tokens(&pki).await;

    // The victim: its agent and two sessions, one live from the start, one joining later
    // with a backlog (so the victim's agent is handed a backfill demand too).
    let (_victim, victim_log) = victim_agent(&pki, relay.quic_addr()).await;
    let mut watcher = session(&relay, &signer, "globex").await;
    watcher.subscribe("v", &Selector::default(), Some(0)).await;
    watcher
        .until("the victim's stream", |s| s.stream_of("v").is_some())
        .await;
    let victim_stream = watcher.stream_of("v").unwrap();
    pump(&mut watcher, 20, victim_stream).await;
    let mut joiner = session(&relay, &signer, "globex").await;
    joiner.subscribe("j", &Selector::default(), Some(5)).await;
    joiner
        .until("the joiner goes live", |s| {
            s.events.iter().any(|e| matches!(e, Event::Live { .. }))
        })
        .await;

    // The attacker: an agent of org `acme` with one stream of its own, watched by an `acme`
    // session, so it holds demands of its own too.
    let mut attacker =
        Peer::connect(&pki, relay.quic_addr(), "acme", &[(7, labels("attacker"))]).await;
    let mut own = session(&relay, &signer, "acme").await;
    own.subscribe("a", &Selector::default(), Some(0)).await;
    let (own_demand, own_stream, _, _) = attacker.next_open().await;
    // Its own demand, served with a batch stamped with the victim's stream: refused.
    let mut expected: HashMap<&str, u64> = HashMap::new();
    let bad = batch(victim_stream, ATTACKER_EPOCH, 0, &["INJECTED\n".into()]);
    assert_eq!(
        attacker.present(data(own_demand, &[bad])).await,
        Answer::Stopped(VIOLATION)
    );
    *expected.entry("wrong_stream").or_default() += 1;
    // The relay opens it again (a live demand that ended while watched), under a new id.
    let (mut own_demand, _, _, _) = attacker.next_open().await;
    let own_ok = batch(
        own_stream,
        ATTACKER_EPOCH,
        0,
        &["attacker's own line\n".into()],
    );
    let mut own_data = vec![attacker.conn.open_uni().await.unwrap()];
    own_data[0]
        .write_all(&data(own_demand, &[own_ok]))
        .await
        .unwrap();
    own.until("the attacker's own line", |s| s.total_lines() == 1)
        .await;

    let (victim_ids, victim_refs): (Vec<u64>, Vec<u64>) = {
        let log = victim_log.lock().unwrap();
        assert_eq!(
            log.demands.len(),
            2,
            "a live demand and a backfill: {log:?}"
        );
        log.demands.iter().map(|(d, (r, _))| (*d, *r)).unzip()
    };
    let live_victim_demand = {
        let log = victim_log.lock().unwrap();
        *log.demands
            .iter()
            .find(|(_, (_, follow))| *follow)
            .unwrap()
            .0
    };

    // The property: many rounds of every kind of attempt, with the victim's ids, ids near
    // them, the attacker's own id space and random ones.
    let rounds = 400;
    let mut reconnects = 0;
    // The first connection's wrong stream counted once already.
    let mut conn_violations = 1;
    for round in 0..rounds {
        let pick = rng.next();
        let victim_id = victim_ids[(pick % victim_ids.len() as u64) as usize];
        let target_stream = [victim_stream, victim_refs[0], own_stream][(rng.next() % 3) as usize];
        let injected = batch(
            target_stream,
            ATTACKER_EPOCH,
            rng.next() % 1000,
            &[format!("INJECTED {round}\n")],
        );
        let foreign = |victim_id: u64| {
            if victim_id == live_victim_demand {
                "foreign_demand"
            } else {
                "unknown_demand"
            }
        };
        let (id, kind) = match rng.next() % 6 {
            0 | 1 => (victim_id, foreign(victim_id)),
            // Near a victim's id, beyond anything issued.
            2 => (
                victim_id ^ (0x1_0000 | (rng.next() % 0xffff)),
                "unknown_demand",
            ),
            3 => (rng.next() >> 1, "unknown_demand"),
            // Its own nonce, a count it was never given.
            4 => (
                (own_demand & !0xffff_ffff) | (0x8000_0000 + rng.next() % 1000),
                "unknown_demand",
            ),
            // A second data stream for its own demand.
            _ => (own_demand, "duplicate_data_stream"),
        };
        if rng.next().is_multiple_of(8) {
            // The control stream: the victim's stream ids removed (the attacker's own is 7),
            // another's demand refused. The first changes nothing; the second closes the
            // connection.
            let (id, kind) = if rng.next().is_multiple_of(2) {
                (victim_id, foreign(victim_id))
            } else {
                (rng.next() >> 1, "unknown_demand")
            };
            attacker
                .send(&AgentMsg::CatalogRemove {
                    streams: vec![StreamGone {
                        id: 1 + rng.next() % 3,
                        reason: logrelay_wire::reason::EndReason::ContainerRemoved,
                    }],
                })
                .await;
            attacker
                .send(&AgentMsg::OpenFailed {
                    demand: id,
                    code: ErrorCode::UnknownStream,
                    message: "no".into(),
                })
                .await;
            let closed = within(
                "the connection closed for a foreign open_failed",
                attacker.conn.closed(),
            )
            .await;
            match closed {
                quinn::ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code.into_inner() as u32, VIOLATION, "{c:?}")
                }
                other => panic!("closed otherwise: {other:?}"),
            }
            *expected.entry(kind).or_default() += 1;
        } else {
            conn_violations += 1;
            match attacker.present(data(id, &[injected])).await {
                Answer::Stopped(code) => assert_eq!(code, VIOLATION, "round {round}: {id:#x}"),
                // The one past the most allowed closes the connection (its stop may not
                // arrive first).
                Answer::Closed(code) => {
                    assert_eq!(code, Some(VIOLATION), "round {round}");
                    assert_eq!(conn_violations, MAX_VIOLATIONS + 1, "round {round}");
                }
                Answer::Accepted => panic!("round {round}: a data stream for {id:#x} was accepted"),
            }
            *expected.entry(kind).or_default() += 1;
            if conn_violations > MAX_VIOLATIONS {
                let closed = within(
                    "the connection closed for too many violations",
                    attacker.conn.closed(),
                )
                .await;
                assert!(
                    matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == u64::from(VIOLATION)),
                    "{closed:?}"
                );
            }
        }
        if attacker.conn.close_reason().is_some() {
            conn_violations = 0;
            // Closed for its violations: it comes back, as an attacker would, and serves its
            // own stream again.
            reconnects += 1;
            own_data.clear();
            drop(attacker);
            attacker =
                Peer::connect(&pki, relay.quic_addr(), "acme", &[(7, labels("attacker"))]).await;
            let (d, stream_ref, _, _) = attacker.next_open().await;
            assert_eq!(stream_ref, own_stream, "same labels, same relay stream");
            own_demand = d;
            let ok = batch(
                own_stream,
                ATTACKER_EPOCH,
                1,
                &["attacker's own line\n".into()],
            );
            let mut s = attacker.conn.open_uni().await.unwrap();
            s.write_all(&data(d, &[ok])).await.unwrap();
            own_data.push(s);
            // Taken: its line arrived (a duplicate presented later is the second).
            let had = own.total_lines();
            own.until("the attacker's own line again", |s| s.total_lines() > had)
                .await;
        }
    }
    eprintln!("{rounds} rounds, {reconnects} reconnects, expected violations {expected:?}");

    // The victims go on as if nothing happened, line by line.
    let upto = {
        let last = watcher.lines[&victim_stream].last().unwrap().seq;
        last + 20
    };
    pump(&mut watcher, upto, victim_stream).await;
    let joined = joiner.stream_of("j").unwrap();
    pump(&mut joiner, upto, joined).await;
    check_victim_lines(&watcher, victim_stream, "the first victim session");
    check_victim_lines(&joiner, joined, "the joining victim session");
    check_victim_events(&watcher, "the first victim session");
    check_victim_events(&joiner, "the joining victim session");
    {
        let log = victim_log.lock().unwrap();
        assert!(
            log.cancelled.is_empty(),
            "a victim demand was cancelled: {log:?}"
        );
        assert!(
            log.stopped.is_empty(),
            "a victim data stream was stopped: {log:?}"
        );
        assert_eq!(
            log.demands.len(),
            2,
            "the victim was never asked again: {log:?}"
        );
    }

    // Every attempt counted by kind, and audited.
    let (_, body) = http_get(relay.handle.admin_addr, "/metrics").await;
    let counted = violations(&body);
    for (kind, n) in &expected {
        assert_eq!(
            counted.get(*kind).copied().unwrap_or(0.0),
            *n as f64,
            "{kind}: {counted:?}"
        );
    }
    // Audited: aggregated per offender and reason (security.md §9), so the lines' counts add
    // up to every violation once the relay has written its summaries (every second here).
    let total: u64 = expected.values().sum();
    let audited = || {
        relay
            .audit_events()
            .iter()
            .filter(|e| {
                e["op"] == "deny"
                    && e["actor"]["type"] == "agent"
                    && ["data_stream", "open_failed"].contains(&e["attempt"].as_str().unwrap_or(""))
            })
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum::<u64>()
    };
    eventually("every violation audited", || async {
        let n = audited();
        assert!(n <= total, "audited {n} of {total} violations");
        (n == total).then_some(())
    })
    .await;
    // Nothing injected reached the attacker's own session either, beyond its own lines.
    own.list(&Selector::default()).await;
    for l in own.lines.values().flatten() {
        assert_eq!(String::from_utf8_lossy(&l.message), "attacker's own line\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_an_oversized_node_is_refused() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let mut peer = Peer::dial(&pki, relay.quic_addr(), "acme").await;
    peer.send(&AgentMsg::Hello {
        protocol: logrelay_wire::PROTOCOL_VERSION,
        node: "n".repeat(254),
        agent_version: "test".into(),
        features: Vec::new(),
    })
    .await;
    // The error is sent, then the connection closed with the same reason (which may
    // overtake it).
    if let Some(msg) = peer.next().await {
        assert!(
            matches!(&msg, RelayMsg::Error { code: ErrorCode::BadRequest, message } if message.contains("at most 253")),
            "{msg:?}"
        );
    }
    let closed = within("the connection closes", peer.conn.closed()).await;
    match &closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), 1, "PROTOCOL");
            assert!(
                String::from_utf8_lossy(&c.reason).contains("at most 253"),
                "{c:?}"
            );
        }
        other => panic!("closed otherwise: {other:?}"),
    }
    assert!(
        !relay.audit_text().contains(&"n".repeat(254)),
        "the name never reaches the audit trail"
    );
}

/// A trace frame (issue 17) on a connection whose `welcome` did not name `batch_trace` (this
/// agent did not ask; nor does a relay that does not trace answer it) is malformed input: that
/// data stream is stopped with PROTOCOL and counted; the demand is opened again, and served
/// plainly its line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_frame_the_relay_did_not_agree_to_stops_only_that_data_stream() {
    let pki = TestPki::new();
    let (relay, signer, _dir) = relay_with_tokens(&pki).await;
    let mut agent = Peer::connect(&pki, relay.quic_addr(), "acme", &[(7, labels("traced"))]).await;
    let mut s = session(&relay, &signer, "acme").await;
    s.subscribe("a", &Selector::default(), Some(0)).await;
    let (demand, stream, _, _) = agent.next_open().await;
    let trace = TraceFrame {
        trace_id: [1; 16],
        span_id: [2; 8],
        flags: 1,
    }
    .encode();
    let mut bytes = DataPreamble { demand }.encode().to_vec();
    bytes.extend_from_slice(&frame::prefix(trace.len()));
    bytes.extend_from_slice(&trace);
    let line = batch(stream, ATTACKER_EPOCH, 0, &["after a trace frame\n".into()]);
    bytes.extend_from_slice(&frame::prefix(line.len()));
    bytes.extend_from_slice(&line);
    assert_eq!(agent.present(bytes).await, Answer::Stopped(PROTOCOL));
    assert_eq!(
        relay.metric("logrelay_relay_protocol_errors_total").await,
        1.0
    );
    let (demand, _, _, _) = agent.next_open().await;
    let ok = batch(stream, ATTACKER_EPOCH, 0, &["plain\n".into()]);
    let mut d = agent.conn.open_uni().await.unwrap();
    d.write_all(&data(demand, &[ok])).await.unwrap();
    s.until("the plain line", |s| s.total_lines() == 1).await;
    let got = s.messages(s.stream_of("a").unwrap());
    assert_eq!(got, ["plain\n"], "nothing of the refused stream");
}
