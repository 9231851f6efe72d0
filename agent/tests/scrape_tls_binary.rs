//! The agent binary's scrape TLS flags, as an operator uses them: skipping verification is
//! warned about on stderr at start-up (`--scrape-insecure-skip-verify`, or a target's
//! `insecure_skip_verify=true`), and an `https://` target without a CA, or a CA or token file
//! that cannot be used, stops the agent at start-up with the reason.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use logrelay_tls::{AgentId, DevPki, pem};

/// How a run ended.
enum Outcome {
    /// It said `agent running` (and was then stopped); its stderr lines.
    Running(Vec<String>),
    /// It exited by itself; its stderr lines.
    Exited(Vec<String>),
}

/// Runs the agent (its relay unreachable) with `args` and `env` until it says it runs or exits.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    logrelay_tls::install_provider();
    let pki = DevPki::new().unwrap();
    let agent = pki
        .agent(&AgentId {
            org: "acme".into(),
            cluster: "c1".into(),
        })
        .unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(path("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(path("agent.crt"), pem("CERTIFICATE", &agent.chain[0])).unwrap();
    std::fs::write(
        path("agent.key"),
        pem("PRIVATE KEY", agent.key.secret_der()),
    )
    .unwrap();
    let _ = std::fs::create_dir(path("pods"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_logrelay-agent"));
    command
        .args(["--ca-file", &path("ca.pem")])
        .args(["--cert-file", &path("agent.crt")])
        .args(["--key-file", &path("agent.key")])
        .args(["--pods-dir", &path("pods")])
        .args(["--relay-addr", "127.0.0.1:9", "--admin-addr", "127.0.0.1:0"])
        .args(["--resources", "false"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("LOGRELAY_LOG", "info");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return Outcome::Running(lines);
                }
            }
            // stderr closed: the process ended.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                assert!(!status.success(), "an agent that stops by itself fails");
                return Outcome::Exited(lines);
            }
            Err(e) => panic!("the agent neither started nor stopped ({e}): {lines:#?}"),
        }
    }
}

fn running(outcome: Outcome) -> Vec<String> {
    match outcome {
        Outcome::Running(lines) => lines,
        Outcome::Exited(lines) => panic!("the agent did not start: {lines:#?}"),
    }
}

fn exited(outcome: Outcome) -> String {
    match outcome {
        Outcome::Exited(lines) => lines.join("\n"),
        Outcome::Running(lines) => panic!("the agent started: {lines:#?}"),
    }
}

#[test]
fn skipping_verification_is_warned_about_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let lines = running(run(
        dir.path(),
        &[
            "--scrape-insecure-skip-verify",
            "--scrape-target",
            "https://127.0.0.1:9/metrics,name=unverified",
        ],
        &[],
    ));
    let warn = |text: &str| lines.iter().any(|l| l.contains("WARN") && l.contains(text));
    assert!(
        warn("--scrape-insecure-skip-verify: TLS certificates of https scrape targets"),
        "{lines:#?}"
    );
    assert!(
        warn("TLS certificate of the scrape target is NOT verified (insecure_skip_verify)")
            && lines
                .iter()
                .any(|l| l.contains("target_url=https://127.0.0.1:9/metrics")),
        "{lines:#?}"
    );

    // The same through the environment, and for one target only.
    let lines = running(run(
        dir.path(),
        &[],
        &[(
            "LOGRELAY_AGENT_SCRAPE_TARGETS",
            "https://127.0.0.1:9/metrics,insecure_skip_verify=true http://127.0.0.1:9/plain",
        )],
    ));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("is NOT verified (insecure_skip_verify)")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("--scrape-insecure-skip-verify")),
        "no agent-wide warning without the flag: {lines:#?}"
    );
    let lines = running(run(
        dir.path(),
        &[],
        &[("LOGRELAY_AGENT_SCRAPE_INSECURE_SKIP_VERIFY", "true")],
    ));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("--scrape-insecure-skip-verify")),
        "{lines:#?}"
    );
}

#[test]
fn unusable_scrape_credentials_stop_the_agent_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = exited(run(
        dir.path(),
        &["--scrape-target", "https://127.0.0.1:9/metrics"],
        &[],
    ));
    assert!(
        err.contains(
            "https target https://127.0.0.1:9/metrics has no CA to verify it: set ca_file=, \
             --scrape-ca-file or --scrape-ca-cluster (or insecure_skip_verify=true)"
        ),
        "{err}"
    );

    let missing = dir.path().join("missing-ca.pem");
    let err = exited(run(
        dir.path(),
        &["--scrape-ca-file", &missing.display().to_string()],
        &[],
    ));
    assert!(
        err.contains(&format!(
            "cannot load scrape CA file {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );

    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let err = exited(run(
        dir.path(),
        &[
            "--scrape-bearer-token-file",
            &token.display().to_string(),
            "--scrape-target",
            "http://127.0.0.1:9/metrics",
        ],
        &[],
    ));
    assert!(
        err.contains(&format!(
            "cannot use bearer token file {}: the file is empty",
            token.display()
        )),
        "{err}"
    );

    // A good CA file and token: it starts, and warns that the token would travel unencrypted.
    std::fs::write(&token, "t0k\n").unwrap();
    let lines = running(run(
        dir.path(),
        &[
            "--scrape-bearer-token-file",
            &token.display().to_string(),
            "--scrape-ca-file",
            &dir.path().join("ca.pem").display().to_string(),
            "--scrape-target",
            "http://127.0.0.1:9/metrics",
            "--scrape-target",
            "https://127.0.0.1:9/metrics",
        ],
        &[],
    ));
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains("the bearer token is sent to the scrape target over plain http")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("t0k")),
        "the token is never logged: {lines:#?}"
    );
}
