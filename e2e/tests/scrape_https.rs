//! `https://` scrape targets through the whole path: a real `prometheus-node-exporter` serving
//! TLS (`--web.config.file`) with a certificate from a CA minted for the test, and a small
//! rustls HTTPS server that checks a bearer token, scraped by the agent only while a WebSocket
//! subscriber watches and delivered through the relay. What a subscriber sees is checked record
//! by record: `up`, the exporter's series, and the `# scrape_error` of a failed scrape.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use logrelay_agent::AgentConfig;
use logrelay_e2e::*;
use logrelay_tls::{DevPki, pem};
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PEM files of a server certificate for 127.0.0.1 signed by a fresh CA, and of another CA
/// (same name, another key), in a temporary directory.
struct Certs {
    dir: tempfile::TempDir,
    /// The CA that signed the server certificate.
    ca: DevPki,
}

impl Certs {
    fn new() -> Self {
        logrelay_tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = DevPki::new().unwrap();
        let server = ca.server(&["127.0.0.1", "localhost"]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.ca_pem()).unwrap();
        std::fs::write(
            dir.path().join("server.crt"),
            pem("CERTIFICATE", &server.chain[0]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            pem("PRIVATE KEY", server.key.secret_der()),
        )
        .unwrap();
        let other = DevPki::new().unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.ca_pem()).unwrap();
        // node-exporter's TLS settings (exporter-toolkit web configuration).
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                dir.path().join("server.crt").display(),
                dir.path().join("server.key").display()
            ),
        )
        .unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A node exporter serving TLS on `addr`.
    async fn exporter(&self, addr: SocketAddr) -> NodeExporter {
        NodeExporter::start_at(addr, Some(&self.path("web.yml"))).await
    }
}

async fn agent(
    pki: &TestPki,
    relay: &TestRelay,
    pods: &PodsDir,
    targets: &[String],
    tweak: impl FnOnce(&mut AgentConfig),
) -> TestAgent {
    let targets = targets.iter().map(|t| t.parse().unwrap()).collect();
    TestAgent::start_with(pki, pods, relay.quic_addr(), |c| {
        c.metrics_rescan_ms = 50;
        c.resources = false;
        c.scrape_targets = targets;
        tweak(c);
    })
    .await
}

fn metrics_selector(container: &str) -> Selector {
    Selector {
        container: Some(container.into()),
        kind: Some(StreamKind::Metrics),
        ..Selector::default()
    }
}

/// Every record of subscription `id`, in order.
fn records(sub: &Subscriber, id: &str) -> Vec<String> {
    sub.stream_of(id)
        .map(|s| sub.messages(s))
        .unwrap_or_default()
}

/// Every value received for `series` on subscription `id`, in order.
fn values(sub: &Subscriber, id: &str, series: &str) -> Vec<f64> {
    records(sub, id)
        .iter()
        .filter_map(|m| {
            let (s, v) = m.trim_end().rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
        .collect()
}

/// The `# scrape_error` records of subscription `id`.
fn scrape_errors(sub: &Subscriber, id: &str) -> Vec<String> {
    records(sub, id)
        .into_iter()
        .filter_map(|m| {
            m.strip_prefix("# scrape_error ")
                .map(|e| e.trim_end().to_owned())
        })
        .collect()
}

/// Whether `values` is not empty and each is `v`.
fn all(values: &[f64], v: f64) -> bool {
    !values.is_empty() && values.iter().all(|&x| x == v)
}

fn has_series(sub: &Subscriber, id: &str, series: &str) -> bool {
    records(sub, id)
        .iter()
        .any(|m| m.split([' ', '{']).next() == Some(series))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_node_exporter_is_scraped_with_a_ca_file_and_survives_a_kill() {
    let certs = Certs::new();
    let addr = free_port();
    let exporter = certs.exporter(addr).await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let target = format!(
        "https://{addr}/metrics,name=node-tls,interval_ms=200,ca_file={}",
        certs.path("ca.pem").display()
    );
    let agent = agent(&pki, &relay, &pods, &[target], |_| {}).await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("m", &metrics_selector("scrape:node-tls"), None)
        .await;
    sub.until("node exporter series over TLS", |s| {
        has_series(s, "m", "node_memory_MemTotal_bytes")
    })
    .await;
    assert!(all(&values(&sub, "m", "up"), 1.0), "the scrapes succeeded");
    assert!(scrape_errors(&sub, "m").is_empty());

    // The exporter is killed (SIGKILL): the next scrapes fail, and say why.
    drop(exporter);
    sub.until("a failed scrape", |s| values(s, "m", "up").contains(&0.0))
        .await;
    let errors = scrape_errors(&sub, "m");
    assert!(
        errors[0].starts_with("cannot connect: "),
        "the subscriber is told the target refuses connections: {errors:?}"
    );
    assert!(agent.metric("logrelay_agent_scrape_failures_total").await >= 1.0);

    // Restarted on the same address, it is scraped again with no action on the agent.
    let _exporter = certs.exporter(addr).await;
    sub.until("scrapes succeed again", |s| {
        values(s, "m", "up").ends_with(&[0.0, 1.0])
    })
    .await;
    let ups = values(&sub, "m", "up");
    assert_eq!(ups[0], 1.0);
    assert!(
        ups.windows(2).filter(|w| w[0] != w[1]).count() == 2,
        "up went 1 → 0 → 1, once each: {ups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_name_fails_the_scrape_with_a_clear_error() {
    let certs = Certs::new();
    let exporter = certs.exporter(free_port()).await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let wrong_ca = format!(
        "https://{}/metrics,name=wrong-ca,ca_file={}",
        exporter.addr,
        certs.path("other-ca.pem").display()
    );
    let wrong_name = format!(
        "https://{}/metrics,name=wrong-name,server_name=exporter.internal,ca_file={}",
        exporter.addr,
        certs.path("ca.pem").display()
    );
    // A "CA" file naming no issuer of the certificate: its own leaf certificate.
    let unknown_ca = format!(
        "https://{}/metrics,name=unknown-ca,ca_file={}",
        exporter.addr,
        certs.path("server.crt").display()
    );
    let agent = agent(
        &pki,
        &relay,
        &pods,
        &[wrong_ca, wrong_name, unknown_ca],
        |_| {},
    )
    .await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("ca", &metrics_selector("scrape:wrong-ca"), None)
        .await;
    sub.subscribe("name", &metrics_selector("scrape:wrong-name"), None)
        .await;
    sub.subscribe("unknown", &metrics_selector("scrape:unknown-ca"), None)
        .await;
    sub.until("the three scrapes failed", |s| {
        ["ca", "name", "unknown"]
            .iter()
            .all(|id| !scrape_errors(s, id).is_empty())
    })
    .await;
    for id in ["ca", "name", "unknown"] {
        assert!(all(&values(&sub, id, "up"), 0.0), "{id}: up 0");
        assert!(all(&values(&sub, id, "scrape_samples_scraped"), 0.0));
        assert!(
            !has_series(&sub, id, "node_memory_MemTotal_bytes"),
            "{id}: nothing of the unverified target is delivered"
        );
    }
    // The other CA has the same name but another key (as a CA re-issued without telling the
    // agent): the certificate's signature does not verify.
    assert_eq!(
        scrape_errors(&sub, "ca")[0],
        "TLS handshake failed: invalid peer certificate: BadSignature"
    );
    assert_eq!(
        scrape_errors(&sub, "unknown")[0],
        "TLS handshake failed: invalid peer certificate: UnknownIssuer"
    );
    let name = &scrape_errors(&sub, "name")[0];
    assert!(
        name.starts_with("TLS handshake failed: invalid peer certificate: certificate not valid for name \"exporter.internal\""),
        "{name}"
    );
    assert!(agent.metric("logrelay_agent_scrape_failures_total").await >= 3.0);
    assert_eq!(
        agent.metric("logrelay_agent_scrape_samples_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_scrapes_a_target_no_ca_vouches_for() {
    let certs = Certs::new();
    let exporter = certs.exporter(free_port()).await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    // The agent-wide flag, and a target that opts out of it.
    let skipped = format!("https://{}/metrics,name=skipped", exporter.addr);
    let verified = format!(
        "https://{}/metrics,name=verified,insecure_skip_verify=false,ca_file={}",
        exporter.addr,
        certs.path("other-ca.pem").display()
    );
    let _agent = agent(&pki, &relay, &pods, &[skipped, verified], |c| {
        c.scrape_insecure_skip_verify = true;
    })
    .await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("s", &metrics_selector("scrape:skipped"), None)
        .await;
    sub.subscribe("v", &metrics_selector("scrape:verified"), None)
        .await;
    sub.until("both scrapes", |s| {
        has_series(s, "s", "node_memory_MemTotal_bytes") && !scrape_errors(s, "v").is_empty()
    })
    .await;
    assert!(all(&values(&sub, "s", "up"), 1.0));
    assert!(all(&values(&sub, "v", "up"), 0.0));
    assert!(
        scrape_errors(&sub, "v")[0].starts_with("TLS handshake failed: invalid peer certificate"),
        "{:?}",
        scrape_errors(&sub, "v")
    );
}

/// An HTTPS server (rustls) that serves one metric to requests bearing `Authorization: Bearer
/// <token>`, the token it expects changed by the test, and 401 to any other.
struct TokenServer {
    addr: SocketAddr,
    expected: Arc<Mutex<String>>,
    /// `Authorization` header of each request, in order (`None` when absent).
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl TokenServer {
    async fn start(ca: &DevPki, token: &str) -> Self {
        let tls = logrelay_tls::https_server(ca.server(&["127.0.0.1"]).unwrap()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = Arc::new(Mutex::new(token.to_owned()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (exp, log) = (expected.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, exp, log) = (acceptor.clone(), exp.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let auth = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Authorization: ").map(str::to_owned));
                    let ok =
                        auth.as_deref() == Some(&format!("Bearer {}", exp.lock().unwrap()) as &str);
                    log.lock().unwrap().push(auth);
                    let response = if ok {
                        let body =
                            "# TYPE secured_requests_total counter\nsecured_requests_total 42\n";
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned()
                    };
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self {
            addr,
            expected,
            seen,
        }
    }
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_file_is_sent_read_at_each_scrape_and_checked_by_the_server() {
    let certs = Certs::new();
    let server = TokenServer::start(&certs.ca, "t0k-1").await;
    let token_file = certs.path("token");
    write(&token_file, "t0k-1\n");
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    // One target with its own token file; one with none (and no agent-wide one).
    let with_token = format!(
        "https://{}/metrics,name=token,interval_ms=200,ca_file={},bearer_token_file={}",
        server.addr,
        certs.path("ca.pem").display(),
        token_file.display()
    );
    let without = format!(
        "https://{}/metrics,name=anonymous,ca_file={}",
        server.addr,
        certs.path("ca.pem").display()
    );
    let _agent = agent(&pki, &relay, &pods, &[with_token, without], |_| {}).await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("t", &metrics_selector("scrape:token"), None)
        .await;
    sub.subscribe("a", &metrics_selector("scrape:anonymous"), None)
        .await;
    sub.until("the secured series, and the anonymous refusal", |s| {
        has_series(s, "t", "secured_requests_total") && !scrape_errors(s, "a").is_empty()
    })
    .await;
    assert!(all(&values(&sub, "t", "secured_requests_total"), 42.0));
    assert!(all(&values(&sub, "t", "up"), 1.0));
    assert!(all(&values(&sub, "a", "up"), 0.0));
    assert!(
        scrape_errors(&sub, "a")
            .iter()
            .all(|e| e == "server returned HTTP status 401"),
        "{:?}",
        scrape_errors(&sub, "a")
    );
    assert!(
        server
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.is_none() || a.as_deref() == Some("Bearer t0k-1")),
        "the token as written in the file, trimmed"
    );

    // The server now wants a new token: scrapes fail until the file holds it, then succeed,
    // with no restart (the file is read at each scrape).
    *server.expected.lock().unwrap() = "t0k-2".into();
    sub.until("a refused scrape", |s| values(s, "t", "up").contains(&0.0))
        .await;
    assert_eq!(
        scrape_errors(&sub, "t").first().map(String::as_str),
        Some("server returned HTTP status 401")
    );
    write(&token_file, "t0k-2");
    sub.until("the rotated token accepted", |s| {
        values(s, "t", "up").ends_with(&[0.0, 1.0])
    })
    .await;
    assert!(
        server
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.as_deref() == Some("Bearer t0k-2"))
    );

    // The file goes away: the scrapes fail and say which file, never the token.
    std::fs::remove_file(&token_file).unwrap();
    let missing = format!(
        "cannot use bearer token file {}: No such file or directory (os error 2)",
        token_file.display()
    );
    sub.until("a scrape without its token file", |s| {
        scrape_errors(s, "t").contains(&missing)
    })
    .await;
    assert_eq!(values(&sub, "t", "up").last(), Some(&0.0));
    assert!(records(&sub, "t").iter().all(|r| !r.contains("t0k")));
}
