//! The relay and the agent as separate processes: the `logrelay-relay` and `logrelay-agent`
//! binaries, started in production mode with certificate files written by the test (a CA, a
//! relay certificate, an agent certificate naming `spiffe://<org>/cluster/<cluster>`), on fixed
//! loopback ports so that a process killed with SIGKILL can be started again where its peers
//! expect it. The processes themselves are `logrelay_chaos::procs` (shared with the chaos
//! soak); this module finds the binaries and turns their errors into test failures.
//!
//! The binaries are taken from `LOGRELAY_BIN_DIR` when it is set (e.g. `target/release`),
//! otherwise from this test's own target directory (`target/debug` or `target/release`), built
//! there first with `cargo build --locked` when missing or older than the sources.
//!
//! ```ignore
//! let files = TestPki::new().files("dev", "test");
//! let mut relay = RelayProcess::start(&files, &[]).await;
//! let agent = AgentProcess::start(&files, pods.path(), relay.quic, &[]).await;
//! relay.kill();             // SIGKILL
//! relay.start_again().await; // same ports, same files
//! ```

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use logrelay_chaos::procs::{self, Agent, ChildEnv, Relay};
pub use logrelay_chaos::procs::{PkiFiles, Proc};

use crate::{TestPki, metric};

/// Paths of the two binaries.
#[derive(Debug)]
pub struct Binaries {
    /// `logrelay-relay`.
    pub relay: PathBuf,
    /// `logrelay-agent`.
    pub agent: PathBuf,
}

/// The binaries, built first if needed (once per test process).
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LOGRELAY_BIN_DIR").map(PathBuf::from) {
            return Binaries {
                relay: dir.join("logrelay-relay"),
                agent: dir.join("logrelay-agent"),
            };
        }
        // target/<profile>/deps/<this test> → target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable under target/<profile>/deps")
            .to_path_buf();
        let bins = Binaries {
            relay: dir.join("logrelay-relay"),
            agent: dir.join("logrelay-agent"),
        };
        if stale(&bins) {
            let release = dir.file_name().is_some_and(|n| n == "release");
            procs::build_binaries(&workspace_root(), release).expect("build the binaries");
        }
        bins
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the workspace")
        .to_path_buf()
}

/// Missing, or older than any source file of the crates they are built from.
fn stale(bins: &Binaries) -> bool {
    let built = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let (Some(relay), Some(agent)) = (built(&bins.relay), built(&bins.agent)) else {
        return true;
    };
    let oldest = relay.min(agent);
    let root = workspace_root();
    let newest = ["wire", "tls", "agent/src", "relay/src", "ui", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest_in(&root.join(p)))
        .max();
    newest.is_some_and(|n| n > oldest)
}

fn newest_in(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_in(&e.path()))
        .max()
}

impl TestPki {
    /// Mints and writes the relay's and one agent's certificates (`org`/`cluster`), signed by
    /// this CA, into a new temporary directory (process logs go there too).
    pub fn files(&self, org: &str, cluster: &str) -> PkiFiles {
        PkiFiles::write(&self.ca, org, cluster, "e2e-").expect("write the certificate files")
    }
}

/// The environment of the children: `LOGRELAY_LOG` from `LOGRELAY_TEST_CHILD_LOG`, else `info`.
fn child_env() -> ChildEnv {
    ChildEnv::log_from("LOGRELAY_TEST_CHILD_LOG", "info")
}

/// `logrelay-relay` as a child process, accepting anonymous sessions as org `dev`; the
/// process itself ([`Proc`]: `kill`, `terminate`, `sigterm`, `pid`, `output`) through `Deref`.
#[derive(Debug)]
pub struct RelayProcess {
    relay: Relay,
    /// QUIC listener for agents.
    pub quic: SocketAddr,
    /// Session listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

impl RelayProcess {
    /// Starts the relay with `files` and `extra` flags, and waits until it is ready.
    pub async fn start(files: &PkiFiles, extra: &[&str]) -> Self {
        Self::start_with_env(files, extra, &[]).await
    }

    /// As [`Self::start`], with extra environment variables `env` (e.g. `OTEL_*`).
    pub async fn start_with_env(files: &PkiFiles, extra: &[&str], env: &[(&str, &str)]) -> Self {
        // Several relays of one test each keep their own log.
        static RELAYS: AtomicU32 = AtomicU32::new(0);
        let n = RELAYS.fetch_add(1, Ordering::Relaxed);
        let log = files.dir().join(format!("relay-{n}.log"));
        let env = child_env().with_vars(env);
        let relay = Relay::start(&binaries().relay, files, "dev", extra, log, env)
            .await
            .expect("start the relay");
        Self {
            quic: relay.quic,
            http: relay.http,
            admin: relay.admin,
            relay,
        }
    }

    /// Starts it again (same ports, files and flags) after a kill, and waits until it is ready.
    pub async fn start_again(&mut self) {
        self.relay
            .start_again()
            .await
            .expect("start the relay again");
    }

    /// Waits (up to the deadline) for the process to exit (after [`Proc::sigterm`]); its exit
    /// status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        exited(&mut self.relay.proc).await
    }

    /// `ws://…/v1/subscribe`.
    pub fn subscribe_url(&self) -> String {
        self.relay.subscribe_url()
    }

    /// Waits until it is connected to NATS (`logrelay_relay_backplane_connected` 1).
    pub async fn backplane_connected(&self) {
        crate::eventually("the relay is connected to NATS", || async {
            (self.metric("logrelay_relay_backplane_connected").await == 1.0).then_some(())
        })
        .await;
    }

    /// One metric from `/metrics` (summed over label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.admin, name).await
    }
}

impl Deref for RelayProcess {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.relay.proc
    }
}

impl DerefMut for RelayProcess {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.relay.proc
    }
}

/// `logrelay-agent` as a child process over a pods directory; the process itself ([`Proc`]:
/// `kill`, `terminate`, `freeze`, `pid`, `output`) through `Deref`.
#[derive(Debug)]
pub struct AgentProcess {
    agent: Agent,
    /// Admin listener (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
}

impl AgentProcess {
    /// Starts an agent of `files`' agent certificate over `pods`, dialling `relay`, with
    /// `extra` flags (node `node-1`, quick rescans and reconnects unless overridden), and
    /// waits until it serves `/healthz`.
    pub async fn start(files: &PkiFiles, pods: &Path, relay: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with_env(files, pods, relay, extra, &[]).await
    }

    /// As [`Self::start`], with extra environment variables `env` (e.g. `OTEL_*`).
    pub async fn start_with_env(
        files: &PkiFiles,
        pods: &Path,
        relay: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "--node-name",
            "node-1",
            "--rescan-ms",
            "50",
            "--reconnect-min-ms",
            "20",
            "--reconnect-max-ms",
            "500",
        ];
        args.extend_from_slice(extra);
        let log = files.dir().join("agent.log");
        let env = child_env().with_vars(env);
        let agent = Agent::start(&binaries().agent, files, pods, relay, &args, log, env)
            .await
            .expect("start the agent");
        Self {
            admin: agent.admin,
            agent,
        }
    }

    /// Starts it again (same flags and admin port) after a kill.
    pub async fn start_again(&mut self) {
        self.agent
            .start_again()
            .await
            .expect("start the agent again");
    }

    /// One metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.admin, name).await
    }
}

impl Deref for AgentProcess {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.agent.proc
    }
}

impl DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.agent.proc
    }
}

/// Waits (up to the deadline) for `proc` to exit; its exit status.
async fn exited(proc: &mut Proc) -> std::process::ExitStatus {
    assert!(proc.pid().is_some(), "a running process");
    crate::eventually("the process to exit", || {
        let s = proc.exited();
        async move { s }
    })
    .await
}
