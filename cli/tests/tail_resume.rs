//! `logrelay tail` never silently loses or repeats a line across a relay restart: the relay
//! binary runs as a separate process (real certificate files, production mode), is killed
//! with SIGKILL under 5 000 lines/s and restarted on the same ports, and the output is checked
//! line by line.
//!
//! Needs the `logrelay-relay` binary beside `logrelay` (built by `cargo test --workspace`, or
//! `cargo build -p logrelay-relay` before `cargo test -p logrelay`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use logrelay_e2e::*;
use logrelay_tls::pem;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Lines written per second.
const RATE: usize = 5_000;

fn relay_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_logrelay")).with_file_name("logrelay-relay");
    assert!(
        p.exists(),
        "{} is missing: build it (`cargo build -p logrelay-relay`) or run `cargo test --workspace`",
        p.display()
    );
    p
}

/// Two free loopback ports: TCP (sessions) and UDP (QUIC).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    (tcp.local_addr().unwrap(), udp.local_addr().unwrap())
}

/// The relay binary with certificate files from the test CA, on fixed ports.
struct RelayProcess {
    dir: tempfile::TempDir,
    http: SocketAddr,
    quic: SocketAddr,
    child: Option<std::process::Child>,
}

impl RelayProcess {
    fn new(pki: &TestPki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let chain: String = id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        std::fs::write(dir.path().join("relay.pem"), chain).unwrap();
        std::fs::write(
            dir.path().join("relay.key"),
            pem("PRIVATE KEY", id.key.secret_der()),
        )
        .unwrap();
        std::fs::write(dir.path().join("agents-ca.pem"), pki.ca.ca_pem()).unwrap();
        let (http, quic) = free_ports();
        Self {
            dir,
            http,
            quic,
            child: None,
        }
    }

    /// Starts the relay and waits until its session listener accepts connections.
    async fn start(&mut self) {
        let d = self.dir.path();
        let mut child = std::process::Command::new(relay_binary())
            .arg("--cert-file")
            .arg(d.join("relay.pem"))
            .arg("--key-file")
            .arg(d.join("relay.key"))
            .arg("--agent-ca-file")
            .arg(d.join("agents-ca.pem"))
            .args(["--anonymous-org", "dev", "--admin-addr", "127.0.0.1:0"])
            .arg("--quic-addr")
            .arg(self.quic.to_string())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .env("LOGRELAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let http = self.http;
        eventually("the relay accepts sessions", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the relay exited at start: {status}");
            }
            async move { tokio::net::TcpStream::connect(http).await.ok().map(|_| ()) }
        })
        .await;
        self.child = Some(child);
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/subscribe", self.http)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Appends `line {i}` records at `RATE` lines/s on a thread, in small timed batches.
struct Writer {
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut w: logrelay::demo::CriWriter) -> Self {
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (written.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * RATE as f64) as usize;
                if due > i {
                    let lines: Vec<String> = (i..due).map(|k| format!("line {k}\n")).collect();
                    w.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
                    i = due;
                    n.store(i, Ordering::Release);
                }
                // Pacing the producer, not synchronising the test.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            written,
            stop,
            thread: Some(thread),
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Acquire)
    }

    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.written()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_under_load_loses_and_repeats_nothing_silently() {
    let pki = TestPki::new();
    let mut relay = RelayProcess::new(&pki);
    relay.start().await;
    let pods = PodsDir::new();
    let w = pods.container("load", "gen", "main");
    let _agent = TestAgent::start(&pki, &pods, relay.quic).await;
    let mut writer = Writer::start(w);

    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_logrelay"))
        .args([
            "tail",
            "--url",
            &relay.url(),
            "-n",
            "load",
            "-p",
            "gen",
            "-c",
            "main",
        ])
        .args(["-o", "raw", "--tail", "1000000", "--retries", "100"])
        .env("LOGRELAY_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(tail.stderr.take().unwrap()).lines();
    let mut got: Vec<String> = Vec::new();
    let mut notices: Vec<String> = Vec::new();

    // Reads output until `n` lines have come.
    async fn read_to(
        out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        got: &mut Vec<String>,
        n: usize,
    ) {
        while got.len() < n {
            match out.next_line().await.unwrap() {
                Some(l) => got.push(l),
                None => panic!("tail ended after {} lines", got.len()),
            }
        }
    }

    within(
        "the first second of lines",
        read_to(&mut out, &mut got, RATE),
    )
    .await;
    relay.kill();
    let at_kill = writer.written();
    // The relay stays down until tail has tried to reconnect and failed at least once, while
    // the writer goes on; reading on meanwhile drains what was already sent.
    let stderr_until =
        async |notices: &mut Vec<String>,
               err: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
               what: &str| {
            loop {
                let l = err.next_line().await.unwrap().expect("tail is running");
                let hit = l.contains(what);
                notices.push(l);
                if hit {
                    return;
                }
            }
        };
    within("tail fails to reconnect while the relay is down", async {
        tokio::join!(
            stderr_until(&mut notices, &mut err, "reconnection attempt"),
            async {
                while let Ok(Some(l)) =
                    tokio::time::timeout(Duration::from_millis(200), out.next_line())
                        .await
                        .map(|r| r.unwrap())
                {
                    got.push(l);
                }
            }
        )
    })
    .await;
    relay.start().await;
    // Lines written while the relay was down, and after, arrive.
    let target = writer.written() + RATE;
    within(
        "lines after the restart",
        read_to(&mut out, &mut got, target),
    )
    .await;
    let total = writer.stop();
    let outcome = tokio::time::timeout(DEADLINE, read_to(&mut out, &mut got, total)).await;
    tail.kill().await.unwrap();
    while let Ok(Some(l)) = err.next_line().await {
        notices.push(l);
    }

    // Line by line: in order, never twice, and anything missing was announced as a gap.
    let numbers: Vec<usize> = got
        .iter()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected output line {l:?}"))
        })
        .collect();
    let mut seen = vec![false; total];
    for (i, &n) in numbers.iter().enumerate() {
        assert!(n < total, "line {n} was never written");
        assert!(!seen[n], "line {n} printed twice (output line {i})");
        seen[n] = true;
        if i > 0 {
            assert!(n > numbers[i - 1], "line {n} after line {}", numbers[i - 1]);
        }
    }
    let missing: Vec<usize> = (0..total).filter(|&n| !seen[n]).collect();
    let gaps: Vec<&String> = notices.iter().filter(|l| l.contains(" gap: ")).collect();
    eprintln!(
        "written {total} (relay killed at {at_kill}), printed {}, missing {}, gap notices {gaps:?}; notices: {notices:#?}",
        numbers.len(),
        missing.len()
    );
    assert!(
        missing.is_empty() || !gaps.is_empty(),
        "{} lines lost without a gap notice, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    if gaps.is_empty() {
        outcome.expect("every line written arrives");
    }
    assert!(
        notices
            .iter()
            .any(|l| l.contains("connection to the relay lost")),
        "{notices:#?}"
    );
    assert!(
        notices.iter().any(|l| l.contains("reconnected")),
        "{notices:#?}"
    );
}
