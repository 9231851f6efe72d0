//! The agent binary as an operator starts it: dev certificates on disk, a pods directory, and a
//! relay address where nothing listens, so that the agent logs its failed attempts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;

use logrelay_tls::{AgentId, DevPki, pem};

use super::DEADLINE;

/// `logrelay-agent` with certificates and a pods directory written into `dir`, its relay
/// unreachable and its admin listener on an ephemeral port. The caller adds flags and stdio.
pub fn agent_command(dir: &Path) -> Command {
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
        .args(["--relay-addr", "127.0.0.1:9", "--admin-addr", "127.0.0.1:0"]);
    command
}

/// How a start ended.
#[derive(Debug)]
pub enum Started {
    /// It said `agent running` (and runs on); its stderr lines so far, and the rest to come.
    Running(Vec<String>, mpsc::Receiver<String>),
    /// It exited by itself, unsuccessfully; its stderr lines.
    Exited(Vec<String>),
}

/// Reads `child`'s stderr (piped) until the agent says it runs or exits by itself.
pub fn started(child: &mut Child) -> Started {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(DEADLINE) {
            Ok(line) => {
                let running = line.contains("agent running");
                lines.push(line);
                if running {
                    return Started::Running(lines, rx);
                }
            }
            // stderr closed: the process ended.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                assert!(!status.success(), "an agent that stops by itself fails");
                return Started::Exited(lines);
            }
            Err(e) => panic!("the agent neither started nor stopped ({e}): {lines:#?}"),
        }
    }
}
