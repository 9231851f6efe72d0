//! The agent binary writes its diagnostic logs to stderr and nothing to stdout: without colour
//! codes when stderr is not a terminal, and as JSON lines with `--log-format json`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use logrelay_tls::{AgentId, DevPki, pem};

/// Runs the agent (its relay unreachable) until it says it runs, then stops it: (stdout, stderr
/// lines).
fn run(log_format: &str) -> (Vec<u8>, Vec<String>) {
    logrelay_tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new().unwrap();
    let agent = pki
        .agent(&AgentId {
            org: "acme".into(),
            cluster: "c1".into(),
        })
        .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(path("agent.crt"), pem("CERTIFICATE", &agent.chain[0])).unwrap();
    std::fs::write(
        path("agent.key"),
        pem("PRIVATE KEY", agent.key.secret_der()),
    )
    .unwrap();
    std::fs::create_dir(path("pods")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_logrelay-agent"))
        .args([
            "--ca-file",
            &path("ca.pem"),
            "--cert-file",
            &path("agent.crt"),
        ])
        .args([
            "--key-file",
            &path("agent.key"),
            "--pods-dir",
            &path("pods"),
        ])
        // Nothing listens there: the agent logs its failed attempts.
        .args(["--relay-addr", "127.0.0.1:9", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", log_format])
        .env("LOGRELAY_LOG", "debug")
        .env_remove("NO_COLOR")
        .env_remove("LOGRELAY_AGENT_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut all = Vec::new();
        stdout.read_to_end(&mut all).unwrap();
        all
    });
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let running = line.contains("agent running");
                lines.push(line);
                if running {
                    break;
                }
            }
            Err(e) => panic!("the agent did not start ({e}): {lines:#?}"),
        }
    }
    let killed = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the agent cleanly: {status}"
    );
    lines.extend(rx.iter());
    (out.join().unwrap(), lines)
}

#[test]
fn text_logs_go_to_stderr_without_colour() {
    let (stdout, logs) = run("text");
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));
    assert!(logs.iter().all(|l| !l.contains('\u{1b}')), "{logs:#?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (stdout, logs) = run("json");
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));
    for line in &logs {
        let log: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            log["level"].is_string() && log["fields"].is_object(),
            "{line}"
        );
    }
    assert!(logs.iter().any(|l| l.contains("agent running")));
}
