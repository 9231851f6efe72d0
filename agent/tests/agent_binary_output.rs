//! The agent binary writes its diagnostic logs to stderr and nothing to stdout: without colour
//! codes when stderr is not a terminal, and as JSON lines with `--log-format json`.

use std::io::Read;
use std::process::{Command, Stdio};

mod support;

use support::binary::{Started, agent_command, started};

/// Runs the agent (its relay unreachable) until it says it runs, then stops it: (stdout, stderr
/// lines).
fn run(log_format: &str) -> (Vec<u8>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = agent_command(dir.path())
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
    let (mut lines, rx) = match started(&mut child) {
        Started::Running(lines, rx) => (lines, rx),
        Started::Exited(lines) => panic!("the agent did not start: {lines:#?}"),
    };
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
