//! Test harness: real relay, real agent, real files, real sockets on 127.0.0.1.
//!
//! ```ignore
//! let pki = TestPki::new();
//! let relay = TestRelay::start(&pki).await;
//! let pods = PodsDir::new();
//! let mut app = pods.container("ns", "app", "main");
//! let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
//! let mut sub = relay.subscriber().await;
//! sub.subscribe("s", &selector("ns", "app", "main"), Some(0)).await;
//! ```
//! Every wait has a deadline; nothing sleeps to synchronise. [`Chromium`] drives a real headless
//! browser for the live viewer's tests. [`procs`] runs the relay and the agent as separate
//! processes with certificate files (to kill and restart them), [`writer`] writes a container
//! log at a steady rate with kubelet's rotation, [`ledger`] accounts for a stream line by
//! line through a client that resumes after a relay restart, and [`faultproxy`] puts loss,
//! delay, reordering, duplication, blackholes and NAT rebinding between agent and relay (the
//! last three live in the `logrelay-chaos` crate, which `loadtest` shares).
#![forbid(unsafe_code)]

pub mod browser;
mod exporter;
pub mod nats;
pub mod otlp;
pub mod procs;
pub mod viewer;
pub use browser::{Chromium, Page};
pub use exporter::{NodeExporter, free_port};
pub use faultproxy::{Direction, FaultProxy, Faults, ProxyConfig};
pub use ledger::{Ledger, ResumingClient, Tally};
pub use logrelay_chaos::{faultproxy, ledger, writer};
pub use procs::{AgentProcess, PkiFiles, RelayProcess};
pub use writer::{KubeletWriter, WriterConfig};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logrelay::client::{Client, Incoming, ReceivedLine};
use logrelay::demo::CriWriter;
use logrelay_agent::{AgentConfig, AgentHandle, AgentTls};
use logrelay_relay::audit::{Auditor, WriterSink};
use logrelay_relay::{RelayConfig, RelayHandle, RelayTls};
use logrelay_tls::{AgentId, DevPki};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use std::sync::Arc;

/// Default deadline of every wait.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Waits for `fut` or panics naming `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns `Some`, yielding between attempts, up to [`DEADLINE`].
/// For state with no event to wait on (a metric over HTTP).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    })
    .await
}

/// An in-memory PKI for one test.
#[derive(Debug)]
pub struct TestPki {
    /// The CA.
    pub ca: DevPki,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Mints a CA.
    pub fn new() -> Self {
        logrelay_tls::install_provider();
        if let Ok(filter) = std::env::var("LOGRELAY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        Self {
            ca: DevPki::new().expect("mint CA"),
        }
    }

    /// TLS material of a relay signed by this CA (no WSS).
    pub fn relay_tls(&self) -> RelayTls {
        RelayTls {
            quic_identity: self.ca.server(&["localhost", "127.0.0.1"]).expect("mint"),
            agent_roots: self.ca.roots(),
            wss: None,
            reload: None,
        }
    }

    /// TLS material of an agent of `org`/`cluster`.
    pub fn agent_tls(&self, org: &str, cluster: &str) -> AgentTls {
        AgentTls {
            identity: self
                .ca
                .agent(&AgentId {
                    org: org.into(),
                    cluster: cluster.into(),
                })
                .expect("mint"),
            relay_roots: self.ca.roots(),
            reload: None,
        }
    }
}

/// A temporary `/var/log/pods`.
#[derive(Debug)]
pub struct PodsDir {
    dir: tempfile::TempDir,
}

impl Default for PodsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PodsDir {
    /// An empty pods directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a container's `0.log` and returns a writer appending CRI records to it.
    pub fn container(&self, ns: &str, pod: &str, container: &str) -> CriWriter {
        CriWriter::create(self.path(), ns, pod, container).expect("create container log")
    }

    /// Path of the first log file under `ns_pod_*/container/`.
    pub fn log_path(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        let prefix = format!("{ns}_{pod}_");
        std::fs::read_dir(self.path())
            .expect("read pods dir")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .expect("pod dir exists")
            .path()
            .join(container)
            .join("0.log")
    }
}

/// A relay on ephemeral loopback ports accepting anonymous sessions as org `dev`.
#[derive(Debug)]
pub struct TestRelay {
    /// The running relay.
    pub handle: RelayHandle,
    /// Everything the relay wrote to its audit trail.
    pub audit: Arc<WriterSink<Vec<u8>>>,
}

impl TestRelay {
    /// Starts a relay with default configuration.
    pub async fn start(pki: &TestPki) -> Self {
        Self::start_with(pki, RelayConfig::loopback()).await
    }

    /// Starts a relay with `config` (anonymous org `dev` unless set).
    pub async fn start_with(pki: &TestPki, mut config: RelayConfig) -> Self {
        config.anonymous_org.get_or_insert_with(|| "dev".into());
        Self::start_exactly(pki, config).await
    }

    /// Like [`Self::start_with`], but `None` when the relay cannot start (e.g. its port is
    /// still taken).
    pub async fn try_start_with(pki: &TestPki, mut config: RelayConfig) -> Option<Self> {
        config.anonymous_org.get_or_insert_with(|| "dev".into());
        let audit = Arc::new(WriterSink::new(Vec::new()));
        let auditor = Arc::new(Auditor::new(audit.clone()));
        let handle = logrelay_relay::start_with_auditor(config, pki.relay_tls(), auditor)
            .await
            .ok()?;
        Some(Self { handle, audit })
    }

    /// Starts a relay with exactly `config` (no anonymous org unless it sets one).
    pub async fn start_exactly(pki: &TestPki, config: RelayConfig) -> Self {
        let audit = Arc::new(WriterSink::new(Vec::new()));
        let auditor = Arc::new(Auditor::new(audit.clone()));
        let handle = logrelay_relay::start_with_auditor(config, pki.relay_tls(), auditor)
            .await
            .expect("start relay");
        Self { handle, audit }
    }

    /// A relay that verifies EdDSA tokens signed by a new key (kid `k1`, returned) and has no
    /// anonymous org; `config` sets the rest (its `token_jwks_file` is set here, to a key set in
    /// the returned directory, which must live as long as the relay).
    pub async fn with_tokens(
        pki: &TestPki,
        config: RelayConfig,
    ) -> (
        Self,
        logrelay_relay::auth::testkit::Signer,
        tempfile::TempDir,
    ) {
        use logrelay_relay::auth::testkit::{Signer, jwks};
        let signer = Signer::ed25519(Some("k1"));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&signer])).expect("write the key set");
        let relay = Self::start_exactly(
            pki,
            RelayConfig {
                token_jwks_file: Some(path),
                ..config
            },
        )
        .await;
        (relay, signer, dir)
    }

    /// The audit events so far, parsed.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit.with(|buf| {
            buf.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).expect("audit lines are JSON"))
                .collect()
        })
    }

    /// Everything the audit trail holds, as text.
    pub fn audit_text(&self) -> String {
        self.audit
            .with(|buf| String::from_utf8_lossy(buf).into_owned())
    }

    /// QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.handle.quic_addr
    }

    /// Connects a WebSocket subscriber.
    pub async fn subscriber(&self) -> Subscriber {
        Subscriber::connect(&self.handle.subscribe_url()).await
    }

    /// Reads one metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.handle.admin_addr, name).await
    }
}

/// An agent over a pods directory, dialling a relay.
#[derive(Debug)]
pub struct TestAgent {
    /// The running agent.
    pub handle: AgentHandle,
}

impl TestAgent {
    /// Starts an agent of org `dev`, cluster `test`.
    pub async fn start(pki: &TestPki, pods: &PodsDir, relay: SocketAddr) -> Self {
        Self::start_as(pki, pods, relay, "dev", "test").await
    }

    /// Starts an agent whose certificate names `org`/`cluster`.
    pub async fn start_as(
        pki: &TestPki,
        pods: &PodsDir,
        relay: SocketAddr,
        org: &str,
        cluster: &str,
    ) -> Self {
        Self::start_configured(pki, pods, relay, org, cluster, |_| {}).await
    }

    /// Starts an agent of org `dev`, cluster `test`, with `tweak` applied to its configuration.
    pub async fn start_with(
        pki: &TestPki,
        pods: &PodsDir,
        relay: SocketAddr,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        Self::start_configured(pki, pods, relay, "dev", "test", tweak).await
    }

    async fn start_configured(
        pki: &TestPki,
        pods: &PodsDir,
        relay: SocketAddr,
        org: &str,
        cluster: &str,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = AgentConfig {
            rescan_ms: 50,
            reconnect_min_ms: 20,
            reconnect_max_ms: 500,
            ..AgentConfig::new(pods.path().to_path_buf(), relay)
        };
        tweak(&mut config);
        let handle = logrelay_agent::start(config, pki.agent_tls(org, cluster))
            .await
            .expect("start agent");
        Self { handle }
    }

    /// Reads one metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.handle.admin_addr, name).await
    }
}

/// GETs `http://addr/path` over a real socket; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads the value of an unlabelled metric (summing label sets) from an admin listener.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric_name = series.split('{').next()?;
            (metric_name == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A selector of one container.
pub fn selector(ns: &str, pod: &str, container: &str) -> Selector {
    Selector {
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        container: Some(container.into()),
        ..Selector::default()
    }
}

/// A WebSocket session with bookkeeping of what arrived.
#[derive(Debug)]
pub struct Subscriber {
    /// The client.
    pub client: Client,
    /// Lines received, per relay stream id, in arrival order.
    pub lines: HashMap<u64, Vec<ReceivedLine>>,
    /// Events received, in order.
    pub events: Vec<Event>,
}

impl Subscriber {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        Self::connect_with_token(url, None).await
    }

    /// Connects to `url` presenting a bearer token.
    pub async fn connect_with_token(url: &str, token: Option<&str>) -> Self {
        let client = within("websocket connect", Client::connect(url, None, token))
            .await
            .expect("connect subscriber");
        Self {
            client,
            lines: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Subscribes (`tail: None` asks for the default backlog).
    pub async fn subscribe(&mut self, id: &str, selector: &Selector, tail: Option<u32>) {
        self.client
            .send(&Request::Subscribe {
                id: id.into(),
                selector: selector.clone(),
                tail,
                since_ns: None,
                since_seq: None,
                follow: true,
                contains: None,
                matches: None,
            })
            .await
            .expect("send subscribe");
    }

    /// Receives one message and records it.
    pub async fn recv(&mut self) -> Option<Incoming> {
        let item = self.client.next().await.expect("receive");
        match &item {
            Some(Incoming::Event(e)) => self.events.push(e.clone()),
            Some(Incoming::Lines(ls)) => {
                for l in ls {
                    self.lines.entry(l.stream).or_default().push(l.clone());
                }
            }
            _ => {}
        }
        item
    }

    /// Receives until `done` holds, within the deadline.
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let waited = tokio::time::timeout(DEADLINE, async {
            while !done(self) {
                if self.recv().await.is_none() {
                    panic!("session closed while waiting for {what}");
                }
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}; events so far: {:?}; lines: {}",
                self.events,
                self.total_lines()
            );
        }
    }

    /// Sends `list` for `selector` and waits for its answer: the streams it names.
    pub async fn list(&mut self, selector: &Selector) -> Vec<logrelay_wire::session::StreamEntry> {
        let at = self.events.len();
        self.client
            .send(&Request::List {
                selector: selector.clone(),
                id: None,
                watch: false,
            })
            .await
            .expect("send list");
        let answer = |s: &Self| {
            s.events[at..].iter().find_map(|e| match e {
                Event::Streams { streams, .. } => Some(streams.clone()),
                _ => None,
            })
        };
        self.until("the list", |s| answer(s).is_some()).await;
        answer(self).expect("streams")
    }

    /// The relay stream id announced for subscription `id`.
    pub fn stream_of(&self, id: &str) -> Option<u64> {
        self.events.iter().find_map(|e| match e {
            Event::Stream {
                id: sub, stream, ..
            } if sub == id => Some(*stream),
            _ => None,
        })
    }

    /// Lines received across all streams.
    pub fn total_lines(&self) -> usize {
        self.lines.values().map(Vec::len).sum()
    }

    /// Messages of a stream as strings.
    pub fn messages(&self, stream: u64) -> Vec<String> {
        self.lines
            .get(&stream)
            .map(|ls| {
                ls.iter()
                    .map(|l| String::from_utf8_lossy(&l.message).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A number no other [`FakeAgent`] of this process has.
fn fake_node() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An agent speaking the protocol directly over real QUIC + mTLS, announcing streams with
/// whatever labels a test chooses (including lies about its org) and answering every `open`
/// with the stream's fixed lines. For security and isolation tests.
#[derive(Debug)]
pub struct FakeAgent {
    /// The connection (dropping it disconnects the agent).
    pub conn: quinn::Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
        self.conn.close(0u32.into(), b"test over");
    }
}

impl FakeAgent {
    /// Connects with a certificate for `org`/`cluster` and announces `streams`: labels, and the
    /// lines each serves on `open`.
    pub async fn start(
        pki: &TestPki,
        relay: SocketAddr,
        org: &str,
        cluster: &str,
        streams: Vec<(logrelay_wire::labels::Labels, Vec<String>)>,
    ) -> Self {
        use logrelay_wire::control::{self, AgentMsg, RelayMsg, StreamInfo};
        use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};

        let tls = pki.agent_tls(org, cluster);
        let client = logrelay_tls::quic_client(tls.identity, tls.relay_roots).expect("client");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(client);
        let conn = within("fake agent connects", async {
            endpoint
                .connect(relay, "localhost")
                .expect("connect")
                .await
                .expect("handshake")
        })
        .await;
        let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
        let mut out = bytes::BytesMut::new();
        let hello = AgentMsg::Hello {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            // A node of its own: a second connection from one (org, cluster, node) supersedes
            // the first.
            node: format!("fake-{}", fake_node()),
            agent_version: "test".into(),
            features: Vec::new(),
        };
        let infos: Vec<StreamInfo> = streams
            .iter()
            .enumerate()
            .map(|(i, (labels, _))| StreamInfo {
                id: i as u64 + 1,
                labels: labels.clone(),
            })
            .collect();
        for msg in [hello, AgentMsg::CatalogAdd { streams: infos }] {
            frame::encode(&control::encode(&msg), &mut out);
        }
        send.write_all(&out).await.expect("send hello");
        let conn2 = conn.clone();
        let task = tokio::spawn(async move {
            let _endpoint = endpoint;
            let _send = send;
            let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
            loop {
                while let Ok(Some(body)) = decoder.next_frame() {
                    let Ok(RelayMsg::Open {
                        demand,
                        stream,
                        stream_ref,
                        ..
                    }) = control::decode::<RelayMsg>(&body)
                    else {
                        continue;
                    };
                    let Some((_, lines)) = streams.get(stream as usize - 1) else {
                        continue;
                    };
                    let mut b = logrelay_wire::batch::BatchBuilder::new(stream_ref, 1, 0, 0, 0);
                    for l in lines {
                        b.push(0, logrelay_wire::batch::LineFlags(0), l.as_bytes());
                    }
                    let batch = b.finish();
                    let Ok(mut data) = conn2.open_uni().await else {
                        return;
                    };
                    let mut buf = DataPreamble { demand }.encode().to_vec();
                    buf.extend_from_slice(&frame::prefix(batch.len()));
                    buf.extend_from_slice(&batch);
                    if data.write_all(&buf).await.is_err() {
                        return;
                    }
                    // Keep the stream open (a live demand follows).
                    tokio::spawn(async move {
                        let _ = data.stopped().await;
                    });
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => decoder.extend(&c.bytes),
                    _ => return,
                }
            }
        });
        Self { conn, task }
    }
}
