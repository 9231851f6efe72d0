//! The relay and the agent as separate processes: the `logrelay-relay` and `logrelay-agent`
//! binaries, started in production mode with certificate files written by the test (a CA, a
//! relay certificate, an agent certificate naming `spiffe://<org>/cluster/<cluster>`), on fixed
//! loopback ports so that a process killed with SIGKILL can be started again where its peers
//! expect it.
//!
//! The binaries are taken from `LOGRELAY_BIN_DIR` when it is set (e.g. `target/release`),
//! otherwise from this test's own target directory (`target/debug` or `target/release`), built
//! there first with `cargo build --locked` when missing or older than the sources.
//!
//! ```ignore
//! let files = PkiFiles::write(&TestPki::new(), "dev", "test");
//! let mut relay = RelayProcess::start(&files, &[]).await;
//! let agent = AgentProcess::start(&files, pods.path(), relay.quic, &[]).await;
//! relay.kill();             // SIGKILL
//! relay.start_again().await; // same ports, same files
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use logrelay_tls::{AgentId, pem};

use crate::{TestPki, eventually, metric};

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
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let mut build = Command::new(cargo);
            build.current_dir(workspace_root()).args([
                "build",
                "--locked",
                "-p",
                "logrelay-relay",
                "-p",
                "logrelay-agent",
                "--bins",
            ]);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cargo build of the binaries failed");
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

/// Certificate files of one test: a CA, the relay's certificate, an agent's certificate.
#[derive(Debug)]
pub struct PkiFiles {
    dir: tempfile::TempDir,
    /// The CA (trusted by both sides).
    pub ca: PathBuf,
    /// Relay certificate (`localhost`, `127.0.0.1`).
    pub relay_cert: PathBuf,
    /// Its key.
    pub relay_key: PathBuf,
    /// Agent certificate (`spiffe://<org>/cluster/<cluster>`).
    pub agent_cert: PathBuf,
    /// Its key.
    pub agent_key: PathBuf,
}

impl PkiFiles {
    /// Mints and writes the relay's and one agent's certificates, signed by `pki`'s CA.
    pub fn write(pki: &TestPki, org: &str, cluster: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: String| {
            std::fs::write(path(name), text).expect("write PEM");
            path(name)
        };
        let relay = pki.ca.server(&["localhost", "127.0.0.1"]).expect("mint");
        let agent = pki
            .ca
            .agent(&AgentId {
                org: org.into(),
                cluster: cluster.into(),
            })
            .expect("mint");
        let chain = |id: &logrelay_tls::Identity| -> String {
            id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
        };
        Self {
            ca: write("ca.pem", pki.ca.ca_pem()),
            relay_cert: write("relay.crt", chain(&relay)),
            relay_key: write("relay.key", pem("PRIVATE KEY", relay.key.secret_der())),
            agent_cert: write("agent.crt", chain(&agent)),
            agent_key: write("agent.key", pem("PRIVATE KEY", agent.key.secret_der())),
            dir,
        }
    }

    /// The directory holding them (process logs go there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A loopback port free right now (UDP and TCP alike are asked for separately).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free UDP port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free TCP port")
            .port()
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process that is killed (SIGKILL) when dropped.
#[derive(Debug)]
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// Extra environment variables (e.g. `OTEL_*`).
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("process log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "LOGRELAY_LOG",
                std::env::var("LOGRELAY_TEST_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for it to exit.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, without waiting.
    fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }

    /// Waits (up to the deadline) for the process to exit; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("a running process");
        let status = eventually("the process to exit", || {
            let s = child.try_wait().ok().flatten();
            async move { s }
        })
        .await;
        self.child = None;
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `logrelay-relay` as a child process, accepting anonymous sessions as org `dev`.
#[derive(Debug)]
pub struct RelayProcess {
    proc: Proc,
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
        let (quic, http, admin) = (
            loopback(free_port(true)),
            loopback(free_port(false)),
            loopback(free_port(false)),
        );
        let mut args: Vec<String> = vec![
            "--cert-file".into(),
            files.relay_cert.display().to_string(),
            "--key-file".into(),
            files.relay_key.display().to_string(),
            "--agent-ca-file".into(),
            files.ca.display().to_string(),
            "--quic-addr".into(),
            quic.to_string(),
            "--http-addr".into(),
            http.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
            "--anonymous-org".into(),
            "dev".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut relay = Self {
            proc: Proc {
                program: binaries().relay.clone(),
                args,
                // Several relays of one test each keep their own log.
                log: files.dir().join(format!("relay-{}.log", quic.port())),
                env: owned(env),
                child: None,
                starts: 0,
            },
            quic,
            http,
            admin,
        };
        relay.start_again().await;
        relay
    }

    /// Starts it again (same ports, files and flags) after [`Self::kill`], and waits until it
    /// is ready.
    pub async fn start_again(&mut self) {
        self.proc.spawn();
        let admin = self.admin;
        eventually("the relay is ready", || async move {
            ready(admin, "/readyz").await.then_some(())
        })
        .await;
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// SIGTERM without waiting: the relay drains (see [`Self::exited`]).
    pub fn sigterm(&self) {
        self.proc.sigterm();
    }

    /// Waits for the process to exit (after [`Self::sigterm`]); its exit status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        self.proc.exited().await
    }

    /// `ws://…/v1/subscribe`.
    pub fn subscribe_url(&self) -> String {
        format!("ws://{}/v1/subscribe", self.http)
    }

    /// One metric from `/metrics` (summed over label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.admin, name).await
    }

    /// What the process wrote to stdout and stderr so far (logs and audit lines).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// `logrelay-agent` as a child process over a pods directory.
#[derive(Debug)]
pub struct AgentProcess {
    proc: Proc,
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
        let admin = loopback(free_port(false));
        let mut args: Vec<String> = vec![
            "--relay-addr".into(),
            relay.to_string(),
            "--relay-name".into(),
            "localhost".into(),
            "--ca-file".into(),
            files.ca.display().to_string(),
            "--cert-file".into(),
            files.agent_cert.display().to_string(),
            "--key-file".into(),
            files.agent_key.display().to_string(),
            "--pods-dir".into(),
            pods.display().to_string(),
            "--node-name".into(),
            "node-1".into(),
            "--admin-addr".into(),
            admin.to_string(),
            "--rescan-ms".into(),
            "50".into(),
            "--reconnect-min-ms".into(),
            "20".into(),
            "--reconnect-max-ms".into(),
            "500".into(),
            "--resources".into(),
            "false".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut agent = Self {
            proc: Proc {
                program: binaries().agent.clone(),
                args,
                log: files.dir().join("agent.log"),
                env: owned(env),
                child: None,
                starts: 0,
            },
            admin,
        };
        agent.start_again().await;
        agent
    }

    /// Starts it again (same flags and admin port) after [`Self::kill`].
    pub async fn start_again(&mut self) {
        self.proc.spawn();
        let admin = self.admin;
        eventually("the agent is up", || async move {
            ready(admin, "/healthz").await.then_some(())
        })
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// SIGSTOP: it stays connected as far as the kernel is concerned, and answers nothing
    /// (until [`Self::kill`]).
    pub fn freeze(&self) {
        if let Some(pid) = self.proc.pid() {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    /// One metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.admin, name).await
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// Whether `GET path` answers 200 (a refused or broken connection is "not yet").
async fn ready(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), get).await,
        Ok(Ok(true))
    )
}
