//! A compromised agent floods the relay with streams (issue #11, defect 4): 200 000 streams
//! with long labels, in frames of 2 500. The relay binary, in production mode, takes streams
//! up to its caps and answers the rest with `catalog_refused` (counted and audited), its
//! catalog stays within its reported bound, and once the agent is gone its memory is given
//! back: RSS, read from /proc, returns within 25 % of the figure before the flood.
#![allow(clippy::disallowed_methods, reason = "tests time real processes")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logrelay_tls::{AgentId, DevPki, pem};
use logrelay_wire::control::{self, AgentMsg, RelayMsg, StreamInfo};
use logrelay_wire::frame::{self, FrameDecoder};
use logrelay_wire::labels::Labels;

const STREAMS: u64 = 200_000;
const PER_FRAME: u64 = 2_500;
const DEADLINE: Duration = Duration::from_secs(20);

/// The relay binary on loopback, with certificates in a temporary directory.
struct Relay {
    child: Child,
    quic: SocketAddr,
    admin: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    line.split(key)
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Relay {
    fn start(pki: &DevPki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = pki.server(&["localhost", "127.0.0.1"]).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write(
            "relay.crt",
            id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect(),
        );
        let key = write("relay.key", pem("PRIVATE KEY", id.key.secret_der()));
        let ca = write("agents-ca.pem", pki.ca_pem());
        let mut child = Command::new(env!("CARGO_BIN_EXE_logrelay-relay"))
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--agent-ca-file")
            .arg(&ca)
            .args(["--quic-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .env("LOGRELAY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The audit trail on stdout, logs (with the listening line) on stderr: both kept.
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for out in [stdout, stderr] {
            let (kept, tx) = (output.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains("relay listening") {
                        let _ = tx.try_send(line.clone());
                    }
                    kept.lock().unwrap().push(line);
                }
            });
        }
        let listening = rx.recv_timeout(DEADLINE).expect("the relay starts");
        let quic = addr_after(&listening, "quic_addr=").unwrap();
        let admin = addr_after(&listening, "admin_addr=").unwrap();
        Self {
            child,
            quic,
            admin,
            output,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn metric(&self, name: &str) -> f64 {
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                (series.split('{').next()? == name).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    /// Waits until `check` holds, re-reading every 50 ms.
    fn eventually(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Labels of about 1 KiB, as a node could never have them.
fn long_labels(n: u64) -> Labels {
    let long = |what: &str, len: usize| format!("{what}-{n}-{}", "x".repeat(len));
    Labels {
        node: long("node", 200),
        namespace: long("ns", 50),
        pod: long("pod", 240),
        pod_uid: format!("{n:036}"),
        container: long("c", 50),
        project: Some(long("project", 100)),
        domain: Some(long("domain", 100)),
        run: Some(long("run", 100)),
        action: Some(long("action", 100)),
        ..Labels::default()
    }
}

/// An agent announcing streams: a real QUIC client with a valid certificate of its own; what
/// the relay refused, by limit.
struct Flooder {
    conn: quinn::Connection,
    send: quinn::SendStream,
    refused: Arc<Mutex<HashMap<String, u64>>>,
    reader: tokio::task::JoinHandle<()>,
    _endpoint: quinn::Endpoint,
}

impl Flooder {
    async fn connect(pki: &DevPki, relay: &Relay) -> Self {
        let tls = pki
            .agent(&AgentId {
                org: "acme".into(),
                cluster: "c1".into(),
            })
            .unwrap();
        let client = logrelay_tls::quic_client(tls, pki.roots()).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(relay.quic, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (send, mut recv) = conn.open_bi().await.unwrap();
        let refused: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let counted = refused.clone();
        let reader = tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
            loop {
                while let Ok(Some(body)) = decoder.next_frame() {
                    if let Ok(RelayMsg::CatalogRefused { streams, limit, .. }) =
                        control::decode::<RelayMsg>(&body)
                    {
                        *counted.lock().unwrap().entry(limit).or_default() += streams.len() as u64;
                    }
                }
                match recv.read_chunk(1 << 16, true).await {
                    Ok(Some(c)) => decoder.extend(&c.bytes),
                    _ => return,
                }
            }
        });
        let mut flooder = Self {
            conn,
            send,
            refused,
            reader,
            _endpoint: endpoint,
        };
        flooder
            .send(&AgentMsg::Hello {
                protocol: logrelay_wire::PROTOCOL_VERSION,
                node: "flood".into(),
                agent_version: "test".into(),
                features: Vec::new(),
            })
            .await;
        relay.eventually("the agent is connected", |r| {
            r.metric("logrelay_relay_agents_connected") == 1.0
        });
        flooder
    }

    async fn send(&mut self, msg: &AgentMsg) {
        let mut out = bytes::BytesMut::new();
        frame::encode(&control::encode(msg), &mut out);
        self.send.write_all(&out).await.unwrap();
    }

    /// Announces `streams` streams in frames of [`PER_FRAME`] and waits until the relay has
    /// taken or refused each.
    async fn flood(&mut self, relay: &Relay, streams: u64) {
        for first in (0..streams).step_by(PER_FRAME as usize) {
            let batch = (first..(first + PER_FRAME).min(streams))
                .map(|id| StreamInfo {
                    id,
                    labels: long_labels(id),
                })
                .collect();
            self.send(&AgentMsg::CatalogAdd { streams: batch }).await;
        }
        let start = Instant::now();
        while self.refused() + (relay.metric("logrelay_relay_streams") as u64) < streams {
            assert!(start.elapsed() < DEADLINE * 3, "the flood is not answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn refused(&self) -> u64 {
        self.refused.lock().unwrap().values().sum()
    }

    /// Disconnects, and waits until the relay has dropped its streams.
    fn leave(self, relay: &Relay) {
        self.conn.close(0u32.into(), b"done");
        self.reader.abort();
        relay.eventually("its streams are gone", |r| {
            r.metric("logrelay_relay_streams") == 0.0
                && r.metric("logrelay_relay_catalog_bytes") == 0.0
                && r.metric("logrelay_relay_agents_connected") == 0.0
        });
    }
}

/// The relay's RSS once it stopped falling (the allocator returns freed pages after a decay).
async fn settled_rss(relay: &Relay) -> u64 {
    let start = Instant::now();
    let mut last = relay.rss_kib();
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = relay.rss_kib();
        if now * 100 >= last * 99 || start.elapsed() > DEADLINE {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_flood_is_capped_refused_and_its_memory_given_back() {
    logrelay_tls::install_provider();
    let pki = DevPki::new().unwrap();
    let relay = Relay::start(&pki);

    // Warm-up: an agent with a catalog over the caps comes and goes, so that what the relay
    // keeps for good after any agent (its allocator's caches, metric label sets, the code
    // paths of refusals) is there before the figure the flood is compared with.
    let mut warm = Flooder::connect(&pki, &relay).await;
    let mut huge = long_labels(u64::MAX);
    huge.pod = "p".repeat(5000);
    warm.send(&AgentMsg::CatalogAdd {
        streams: vec![StreamInfo {
            id: u64::MAX,
            labels: huge,
        }],
    })
    .await;
    warm.flood(&relay, PER_FRAME * 2).await;
    assert_eq!(
        warm.refused(),
        1,
        "the stream over --max-label-bytes-per-stream"
    );
    warm.leave(&relay);
    let before = settled_rss(&relay).await;

    let mut flooder = Flooder::connect(&pki, &relay).await;
    flooder.flood(&relay, STREAMS).await;
    let taken = relay.metric("logrelay_relay_streams");
    let catalog_bytes = relay.metric("logrelay_relay_catalog_bytes");
    let peak = relay.rss_kib();
    let by_limit = flooder.refused.lock().unwrap().clone();
    eprintln!(
        "flood of {STREAMS} streams (~1 KiB of labels each): {taken} taken, refused {by_limit:?}; \
         catalog_bytes {catalog_bytes}; RSS {before} KiB before (after a warm-up agent of \
         5 001 streams came and went), {peak} KiB at the peak"
    );
    assert!(
        taken <= 10_000.0,
        "at most --max-streams-per-agent: {taken}"
    );
    assert!(
        by_limit.contains_key("label_bytes_per_agent"),
        "{by_limit:?}"
    );
    // The catalog's reported bound: 8 MiB of labels (twice over) and the entries.
    assert!(catalog_bytes <= (2 * 8 * 1024 * 1024 + 10_000 * 1024) as f64);
    let limits = relay
        .output
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(r#""kind":"audit""#) && l.contains(r#""op":"limit""#))
        .count();
    assert!(
        (2..=32).contains(&limits),
        "refusals audited, at most 16 lines per connection: {limits}"
    );

    // The agent goes: so do its streams, and the memory they held.
    flooder.leave(&relay);
    let start = Instant::now();
    let after = settled_rss(&relay).await;
    eprintln!(
        "RSS after the agent left, once settled: {after} KiB ({:+.1} % of before), after {:?}",
        (after as f64 / before as f64 - 1.0) * 100.0,
        start.elapsed()
    );
    assert!(
        after * 4 <= before * 5,
        "memory not given back: {before} KiB before, {peak} KiB at the peak, {after} KiB after"
    );
}
