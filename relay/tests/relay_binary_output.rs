//! The relay binary in production mode keeps its two outputs apart, as the docs say: stdout is
//! the audit trail alone, JSON lines that `jq -c 'select(.kind == "audit")'` reads to the end;
//! diagnostic logs go to stderr, without colour codes when stderr is not a terminal, and as
//! JSON lines with `--log-format json`.
#![allow(clippy::disallowed_methods, reason = "tests time real processes")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use logrelay_relay::auth::testkit::{Signer, jwks};
use logrelay_tls::{DevPki, pem};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(20);

/// Certificates, keys and a JWKS in a temporary directory, as an operator would have them.
struct Files {
    dir: tempfile::TempDir,
    signer: Signer,
}

impl Files {
    fn new() -> Self {
        logrelay_tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new().unwrap();
        let relay = pki.server(&["localhost", "127.0.0.1"]).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("relay.crt", pem("CERTIFICATE", &relay.chain[0]));
        write("relay.key", pem("PRIVATE KEY", relay.key.secret_der()));
        write("agents-ca.pem", pki.ca_pem());
        let signer = Signer::ed25519(Some("k1"));
        write("keys.jwks", jwks(&[&signer]));
        Self { dir, signer }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.signer.token(&json!({
            "sub": "alice", "org": "acme", "exp": now + 600, "roles": [{"role": "viewer"}]
        }))
    }
}

/// A running relay binary, its stderr lines arriving on a channel.
struct Relay {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    http_addr: SocketAddr,
}

impl Relay {
    fn start(files: &Files, log_format: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logrelay-relay"))
            .args(["--cert-file", &files.path("relay.crt")])
            .args(["--key-file", &files.path("relay.key")])
            .args(["--agent-ca-file", &files.path("agents-ca.pem")])
            .args(["--token-jwks-file", &files.path("keys.jwks")])
            .args(["--quic-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", log_format])
            .env("LOGRELAY_LOG", "info,logrelay_relay=debug")
            .env_remove("NO_COLOR")
            .env_remove("LOGRELAY_RELAY_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = Self {
            child,
            stderr,
            seen: Vec::new(),
            http_addr: "0.0.0.0:0".parse().unwrap(),
        };
        let listening = relay.wait_for("relay listening");
        let at = listening.find("http_addr").expect("the address is logged");
        let addr: String = listening[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        relay.http_addr = addr.parse().unwrap_or_else(|_| panic!("{listening}"));
        relay
    }

    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.stderr.recv_timeout(DEADLINE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no `{needle}` on stderr ({e}): {:#?}", self.seen),
            }
        }
    }

    /// SIGTERM, then every stderr line.
    fn stop(mut self) -> Vec<String> {
        let killed = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
        self.seen.extend(self.stderr.iter());
        self.seen
    }
}

/// Sends a WebSocket upgrade to `/v1/subscribe` and returns the status line; with 101, reads
/// the first message (the `welcome` event) too.
fn upgrade(addr: SocketAddr, token: &str) -> (String, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /v1/subscribe HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    if !status.contains(" 101 ") {
        return (status, None);
    }
    // One unmasked text frame from the server, with a 7-bit or 16-bit length.
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).unwrap();
    let len = match hdr[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (status, Some(String::from_utf8(payload).unwrap()))
}

/// A refused token and an accepted session: one `deny` and one `session_connect` audited.
fn audited_traffic(relay: &mut Relay, files: &Files) {
    let (status, _) = upgrade(relay.http_addr, "not.a.token");
    assert!(status.contains(" 401 "), "{status}");
    let (status, welcome) = upgrade(relay.http_addr, &files.token());
    assert!(status.contains(" 101 "), "{status}");
    assert!(welcome.unwrap().contains(r#""event":"welcome""#));
    relay.wait_for("session disconnected");
}

fn read_all(mut out: ChildStdout) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        out.read_to_end(&mut all).unwrap();
        all
    })
}

fn have_jq() -> bool {
    Command::new("jq").arg("--version").output().is_ok()
}

/// Runs `jq <args>` over `input`; its stdout lines.
fn jq(args: &[&str], input: &[u8]) -> Vec<Value> {
    let mut child = Command::new("jq")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jq {args:?} failed: {}", out.status);
    parse_lines(&String::from_utf8(out.stdout).unwrap())
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn ops(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

#[test]
fn stdout_is_the_audit_trail_alone_and_text_logs_on_stderr_have_no_colour() {
    let files = Files::new();
    let mut relay = Relay::start(&files, "text");
    let stdout = read_all(relay.child.stdout.take().unwrap());
    audited_traffic(&mut relay, &files);
    let logs = relay.stop();
    let stdout = stdout.join().unwrap();

    let text = String::from_utf8(stdout.clone()).unwrap();
    let events = parse_lines(&text);
    assert!(
        events.iter().all(|e| e["kind"] == "audit"),
        "only audit events on stdout: {text}"
    );
    assert_eq!(
        ops(&events),
        vec![
            ("deny".into(), "token_malformed".into()),
            ("session_connect".into(), "-".into())
        ],
        "{text}"
    );
    assert!(
        logs.iter().any(|l| l.contains("session connected")),
        "the logs are on stderr: {logs:#?}"
    );
    assert!(
        logs.iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains(r#""kind":"audit""#)),
        "no colour codes, no audit events on stderr: {logs:#?}"
    );

    // The documented pipelines, over exactly what the relay wrote.
    if have_jq() {
        assert_eq!(jq(&["-c", r#"select(.kind == "audit")"#], &stdout), events);
        assert_eq!(
            ops(&jq(
                &["-c", r#"select(.kind == "audit" and .outcome != "ok")"#],
                &stdout
            )),
            vec![("deny".into(), "token_malformed".into())]
        );
    } else {
        eprintln!("NOTE: jq is not installed; stdout was parsed line by line only");
    }
}

#[test]
fn with_json_logs_the_documented_jq_pipeline_reads_stdout_to_the_end() {
    let files = Files::new();
    let mut relay = Relay::start(&files, "json");
    let stdout = relay.child.stdout.take().unwrap();
    // `logrelay-relay … | jq -c 'select(.kind == "audit")'`: the relay's stdout is jq's stdin.
    let piped = have_jq().then(|| {
        Command::new("jq")
            .args(["-c", r#"select(.kind == "audit")"#])
            .stdin(Stdio::from(stdout))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    });
    audited_traffic(&mut relay, &files);
    let logs = relay.stop();

    for line in &logs {
        let log: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log not JSON ({e}): {line}"));
        assert!(
            log["level"].is_string() && log["fields"].is_object(),
            "{line}"
        );
        assert_ne!(log["kind"], "audit", "{line}");
    }
    assert!(
        logs.iter().any(|l| l.contains("session connected")),
        "{logs:#?}"
    );
    match piped {
        Some(jq) => {
            let out = jq.wait_with_output().unwrap();
            assert!(out.status.success(), "jq stopped: {}", out.status);
            let events = parse_lines(&String::from_utf8(out.stdout).unwrap());
            assert_eq!(
                ops(&events),
                vec![
                    ("deny".into(), "token_malformed".into()),
                    ("session_connect".into(), "-".into())
                ]
            );
        }
        None => eprintln!("NOTE: jq is not installed; the pipeline was not run"),
    }
}
