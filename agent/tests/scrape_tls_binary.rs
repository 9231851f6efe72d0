//! The agent binary's scrape TLS flags, as an operator uses them: skipping verification is
//! warned about on stderr at start-up (`--scrape-insecure-skip-verify`, or a target's
//! `insecure_skip_verify=true`), and an `https://` target without a CA, or a CA or token file
//! that cannot be used, stops the agent at start-up with the reason.

use std::path::Path;
use std::process::Stdio;

mod support;

use support::binary::{Started, agent_command, started};

/// How a run ended.
enum Outcome {
    /// It said `agent running` (and was then stopped); its stderr lines.
    Running(Vec<String>),
    /// It exited by itself; its stderr lines.
    Exited(Vec<String>),
}

/// Runs the agent (its relay unreachable) with `args` and `env` until it says it runs or exits.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = agent_command(dir);
    command
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
    match started(&mut child) {
        Started::Running(lines, _) => {
            child.kill().unwrap();
            child.wait().unwrap();
            Outcome::Running(lines)
        }
        Started::Exited(lines) => Outcome::Exited(lines),
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
