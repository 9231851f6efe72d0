//! The viewer survives the relay: a relay in a process of its own is killed (SIGKILL) under an
//! open page and started again on the same ports; the page reconnects with backoff, resumes its
//! stream with `since_seq` from the agent (which kept following meanwhile), and holds every line
//! once, in order, the lines written while the relay was away included.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logrelay_e2e::viewer::Viewer;
use logrelay_e2e::*;
use serde_json::json;

/// Set for the child: this test binary then runs `relay_child` as a relay.
const CHILD: &str = "LOGRELAY_E2E_RELAY_CHILD";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A relay process: this test binary re-run as `relay_child`, handed its certificate, key and
/// agent CA on stdin (never on disk). Killed with SIGKILL on drop.
struct RelayProcess {
    child: Child,
    /// Held open: the child runs until killed, or until this end closes.
    _stdin: std::process::ChildStdin,
    http: SocketAddr,
    quic: SocketAddr,
}

impl RelayProcess {
    /// Starts a relay on `http` and `quic` (port 0: any); `None` if it could not bind.
    fn spawn(pki: &TestPki, http: SocketAddr, quic: SocketAddr) -> Option<Self> {
        let id = pki.ca.server(&["localhost", "127.0.0.1"]).expect("mint");
        let spec = json!({
            "chain": id.chain.iter().map(|c| hex(c)).collect::<Vec<_>>(),
            "key": hex(id.key.secret_der()),
            "ca": hex(&pki.ca.ca()),
            "http": http.to_string(),
            "quic": quic.to_string(),
        });
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["relay_child", "--exact", "--ignored", "--nocapture"])
            .env(CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the relay process");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{spec}").expect("hand over the spec");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("RELAY_READY ") {
                    let _ = tx.send(Some(rest.to_owned()));
                } else if line.starts_with("RELAY_FAILED") {
                    let _ = tx.send(None);
                }
            }
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(Some(addrs)) => {
                let mut it = addrs.split(' ').map(|a| a.parse().expect("address"));
                Some(Self {
                    _stdin: stdin,
                    http: it.next().expect("http"),
                    quic: it.next().expect("quic"),
                    child,
                })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// SIGKILL: no goodbye to agents or sessions.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The relay process of this file's test; does nothing unless started by it.
#[test]
#[ignore = "the relay process of the test below; runs only when it starts it"]
fn relay_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    logrelay_tls::install_provider();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("spec");
    let spec: serde_json::Value = serde_json::from_str(&line).expect("spec JSON");
    let chain = spec["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(unhex(c.as_str().expect("hex"))))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::try_from(unhex(spec["key"].as_str().expect("key")))
        .expect("key");
    let ca = rustls_pki_types::CertificateDer::from(unhex(spec["ca"].as_str().expect("ca")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = logrelay_relay::RelayConfig {
            http_addr: spec["http"].as_str().unwrap().parse().unwrap(),
            quic_addr: spec["quic"].as_str().unwrap().parse().unwrap(),
            anonymous_org: Some("dev".into()),
            ..logrelay_relay::RelayConfig::loopback()
        };
        let tls = logrelay_relay::RelayTls {
            quic_identity: logrelay_tls::Identity { chain, key },
            agent_roots: logrelay_tls::roots_from_der(&[ca]).expect("roots"),
            wss: None,
            reload: None,
        };
        match logrelay_relay::start(config, tls).await {
            Ok(relay) => {
                println!("RELAY_READY {} {}", relay.http_addr, relay.quic_addr);
                // Until the parent goes (its end of stdin closes) or kills this process.
                let _ = tokio::task::spawn_blocking(|| {
                    let mut sink = String::new();
                    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
                })
                .await;
                relay.shutdown().await;
            }
            Err(e) => println!("RELAY_FAILED {e}"),
        }
    });
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i:03}")).collect()
}

fn write(app: &mut logrelay::demo::CriWriter, lines: &[String]) {
    let lines: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
    app.write_lines(lines.iter().map(String::as_bytes))
        .expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_the_relay_resumes_the_view_without_a_duplicate_or_a_gap() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut relay = RelayProcess::spawn(&pki, any, any).expect("relay starts");
    let (http, quic) = (relay.http, relay.quic);
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "app", "main");
    let mut want = lines("before", 0..50);
    write(&mut app, &want);
    let _agent = TestAgent::start_with(&pki, &pods, quic, |c| c.resources = false).await;

    let mut v = Viewer::open(&browser, &format!("http://{http}/?namespace=ns&pod=app")).await;
    v.wait_held("the backlog", |h| h.lines().count() >= 50)
        .await;
    let live = lines("live", 0..10);
    write(&mut app, &live);
    want.extend(live);
    v.wait_held("the live lines", |h| h.lines().count() >= 60)
        .await;

    // The relay dies without a word; the page says so and retries.
    relay.kill();
    v.wait(
        "the banner saying the connection is lost",
        "document.getElementById('banner').classList.contains('retrying') && \
         document.getElementById('banner').textContent.includes('Connection lost (1006')",
    )
    .await;
    // Written while no relay runs: the agent keeps following into its queue.
    let away = lines("while away", 0..20);
    write(&mut app, &away);
    want.extend(away);
    // The relay comes back on the same ports (retried while the old sockets are released).
    let mut relay = eventually("the relay back on its ports", || async {
        RelayProcess::spawn(&pki, http, quic)
    })
    .await;
    // The agent notices the old connection is dead within QUIC's idle timeout (15 s), then
    // reconnects; the page resumes as soon as the stream is announced again.
    let held = v
        .wait_held_within(
            Duration::from_secs(90),
            "every line once, the ones written while away included",
            |h| h.lines().count() >= 80,
        )
        .await;
    assert_eq!(
        held.texts(),
        want,
        "in order, nothing twice, nothing missing"
    );
    let markers = held.markers();
    assert!(
        markers
            .iter()
            .any(|m| m.starts_with("Connection to the relay lost (1006")),
        "{markers:?}"
    );
    assert!(
        markers
            .iter()
            .any(|m| m.starts_with("Reconnected to the relay after")
                && m.contains("resuming 1 stream")),
        "{markers:?}"
    );
    assert!(
        !markers
            .iter()
            .any(|m| m.contains("missed") || m.contains("will not come") || m.contains("lost at")),
        "no gap: {markers:?}"
    );
    v.wait(
        "the banner back to connected",
        "document.getElementById('banner').classList.contains('open')",
    )
    .await;
    // And it goes on live.
    let after = lines("after", 0..5);
    write(&mut app, &after);
    want.extend(after);
    let held = v
        .wait_held("the lines after", |h| h.lines().count() >= 85)
        .await;
    assert_eq!(held.texts(), want);
    assert!(
        v.page.problems.iter().all(|p| p.contains("WebSocket")),
        "only the refused reconnects: {:?}",
        v.page.problems
    );
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_is_shown_in_place_with_what_could_not_be_recovered() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "app", "main");
    let mut want = lines("first", 0..30);
    write(&mut app, &want);
    let agent =
        TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| c.resources = false).await;
    let url = relay.handle.ui_url().unwrap();
    let mut v = Viewer::open(&browser, &format!("{url}?namespace=ns&pod=app")).await;
    v.wait_held("the backlog", |h| h.lines().count() >= 30)
        .await;

    // The agent goes away: its numbering goes with it.
    agent.handle.shutdown().await;
    v.wait_held("the pause in place", |h| {
        h.markers().iter().any(|m| m.contains("paused"))
    })
    .await;
    let away = lines("while the agent was away", 0..10);
    write(&mut app, &away);
    want.extend(away);
    let _agent =
        TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| c.resources = false).await;
    let held = v
        .wait_held("the lines written meanwhile", |h| h.lines().count() >= 40)
        .await;
    assert_eq!(held.texts(), want, "each line once, in order");
    // In place, after the last line before the restart: paused, back, and what the agent's
    // old numbering will never deliver, in plain words.
    let after_first: Vec<String> = held
        .0
        .iter()
        .skip_while(
            |h| !matches!(h, logrelay_e2e::viewer::Held::Line { text, .. } if text == "first 029"),
        )
        .skip(1)
        .take_while(|h| matches!(h, logrelay_e2e::viewer::Held::Marker(_)))
        .map(|h| match h {
            logrelay_e2e::viewer::Held::Marker(m) => m.clone(),
            logrelay_e2e::viewer::Held::Line { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(after_first.len(), 3, "{after_first:#?}");
    assert_eq!(
        after_first[0],
        "app/main: paused, its node agent disconnected; waiting for it to come back."
    );
    assert_eq!(after_first[1], "app/main: its agent is back; resumed.");
    assert!(
        after_first[2].starts_with("app/main: lines from #")
            && after_first[2].ends_with(
                "(of the numbering before) will not come: the agent no longer holds them \
                 (it restarted, or stopped following the file); how many is unknown."
            ),
        "{}",
        after_first[2]
    );
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}
