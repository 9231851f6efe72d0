//! The relay and the agent as separate processes: the production binaries (`logrelay-relay`,
//! `logrelay-agent`), started as an operator starts them, with certificate files (a CA, the
//! relay's certificate, an agent certificate naming `spiffe://<org>/cluster/<cluster>`) in a
//! private temporary directory, on fixed loopback ports so that a process killed with SIGKILL
//! comes back where its peers expect it. Their output goes to a log file each.
//!
//! Shared by the e2e tests (`e2e/src/procs.rs` wraps it for tests that panic on failure) and
//! the `loadtest chaos` soak.
//!
//! ```ignore
//! let files = PkiFiles::write(&DevPki::new()?, "dev", "test", "e2e-")?;
//! let mut relay = Relay::start(&bins.relay, &files, "dev", &[], log).await?;
//! let agent = Agent::start(&bins.agent, &files, pods, relay.quic, &["--node-name".into(), "n".into()], log).await?;
//! relay.proc.kill();              // SIGKILL
//! relay.start_again().await?;     // same ports, same files
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use logrelay_tls::{AgentId, DevPki, pem};

/// How long a started process has to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long [`Proc::terminate`] waits for a clean exit before SIGKILL.
const TERMINATE_WITHIN: Duration = Duration::from_secs(10);

/// What goes wrong when starting or minting for a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A certificate could not be minted.
    #[error("minting certificates: {0}")]
    Mint(String),
    /// `cargo build` of the binaries failed.
    #[error("cargo build of logrelay-relay and logrelay-agent failed ({0})")]
    Build(ExitStatus),
    /// The process exited before it was ready.
    #[error("{what} exited ({status}) before it was ready; see {log}")]
    Exited {
        /// Which process.
        what: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: String,
    },
    /// The process was not ready in time.
    #[error("{what} not ready within {within:?}; see {log}")]
    NotReady {
        /// Which process.
        what: &'static str,
        /// How long it had.
        within: Duration,
        /// Its log file.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcError {
    let what = what.into();
    move |source| ProcError::Io { what, source }
}

/// Builds both binaries with `cargo build --locked` (of the release profile if `release`) in the
/// workspace at `root`; cargo rebuilds them only if their sources changed.
pub fn build_binaries(root: &Path, release: bool) -> Result<(), ProcError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "--locked",
        "-p",
        "logrelay-relay",
        "-p",
        "logrelay-agent",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(io("running cargo build"))?;
    if status.success() {
        Ok(())
    } else {
        Err(ProcError::Build(status))
    }
}

/// Certificate files: a CA, the relay's certificate, an agent's certificate.
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
    /// Mints the relay's certificate (`localhost`, `127.0.0.1`) and an agent's
    /// (`org`/`cluster`), signed by `ca`, and writes them with the CA into a new temporary
    /// directory named `prefix…` (readable by this user only).
    pub fn write(ca: &DevPki, org: &str, cluster: &str, prefix: &str) -> Result<Self, ProcError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let mint = |e: logrelay_tls::TlsError| ProcError::Mint(e.to_string());
        let relay = ca.server(&["localhost", "127.0.0.1"]).map_err(mint)?;
        let agent = ca
            .agent(&AgentId {
                org: org.into(),
                cluster: cluster.into(),
            })
            .map_err(mint)?;
        let chain = |id: &logrelay_tls::Identity| -> String {
            id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
        };
        let write = |name: &str, text: String| -> Result<PathBuf, ProcError> {
            let p = dir.path().join(name);
            std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))?;
            Ok(p)
        };
        Ok(Self {
            ca: write("ca.pem", ca.ca_pem())?,
            relay_cert: write("relay.crt", chain(&relay))?,
            relay_key: write("relay.key", pem("PRIVATE KEY", relay.key.secret_der()))?,
            agent_cert: write("agent.crt", chain(&agent))?,
            agent_key: write("agent.key", pem("PRIVATE KEY", agent.key.secret_der()))?,
            dir,
        })
    }

    /// The temporary directory holding them (logs and pods may live there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A loopback port free right now (UDP and TCP are asked for separately).
pub fn free_port(udp: bool) -> std::io::Result<u16> {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free loopback address.
fn free_addr(udp: bool) -> Result<SocketAddr, ProcError> {
    free_port(udp)
        .map(loopback)
        .map_err(io("finding a free port"))
}

/// A child process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: ChildEnv,
    log: PathBuf,
    child: Option<Child>,
    /// Starts so far.
    pub starts: u32,
}

impl Proc {
    /// `program` with `args`, named `what` in errors, its output appended to `log`, run with
    /// `env`; not started yet.
    pub fn new(
        what: &'static str,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
        env: ChildEnv,
    ) -> Self {
        Self {
            what,
            program,
            args,
            env,
            log,
            child: None,
            starts: 0,
        }
    }

    /// Starts it (again).
    pub fn spawn(&mut self) -> Result<(), ProcError> {
        use std::io::Write;
        let log_name = || self.log.display().to_string();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", log_name())))?;
        writeln!(log, "=== start {} of {}", self.starts + 1, self.what)
            .and_then(|()| log.try_clone())
            .and_then(|out| {
                Command::new(&self.program)
                    .args(&self.args)
                    .env("LOGRELAY_LOG", &self.env.log_filter)
                    .env("NO_COLOR", "1")
                    .envs(self.env.vars.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(log)
                    .spawn()
            })
            .map(|child| {
                self.starts += 1;
                self.child = Some(child);
            })
            .map_err(io(format!("starting {}", self.program.display())))
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for it to exit (SIGKILL after 10 s).
    pub fn terminate(&mut self) {
        self.sigterm();
        if let Some(mut c) = self.child.take() {
            let deadline = std::time::Instant::now() + TERMINATE_WITHIN;
            while std::time::Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGSTOP: it stays connected as far as the kernel is concerned, and answers nothing
    /// (until [`Self::kill`]).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited (it is then no longer running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())?;
        self.child = None;
        Some(status)
    }

    /// What it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET path` on `addr` answers 200, at most [`READY_WITHIN`].
    async fn until_ready(&mut self, addr: SocketAddr, path: &str) -> Result<(), ProcError> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if ready(addr, path).await {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(ProcError::Exited {
                    what: self.what,
                    status,
                    log: self.log.display().to_string(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcError::NotReady {
                    what: self.what,
                    within: READY_WITHIN,
                    log: self.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `GET path` answers 200 (a refused or broken connection is "not yet").
pub async fn ready(addr: SocketAddr, path: &str) -> bool {
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

/// The environment a child runs with, besides this process's own.
#[derive(Debug, Clone, Default)]
pub struct ChildEnv {
    /// Its `LOGRELAY_LOG`.
    pub log_filter: String,
    /// Extra variables (e.g. `OTEL_*`).
    pub vars: Vec<(String, String)>,
}

impl ChildEnv {
    /// `LOGRELAY_LOG` taken from this process's variable `var`, else `default`; no extra variables.
    pub fn log_from(var: &str, default: &str) -> Self {
        Self {
            log_filter: std::env::var(var).unwrap_or_else(|_| default.into()),
            vars: Vec::new(),
        }
    }

    /// With the extra variables `vars` too.
    pub fn with_vars(mut self, vars: &[(&str, &str)]) -> Self {
        self.vars
            .extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }
}

/// `logrelay-relay`, accepting anonymous sessions as one org.
#[derive(Debug)]
pub struct Relay {
    /// The process.
    pub proc: Proc,
    /// QUIC listener for agents.
    pub quic: SocketAddr,
    /// Session listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

impl Relay {
    /// Starts `program` with `files`, anonymous sessions as `org`, and `extra` flags, on free
    /// loopback ports, its output in `log`, run with `env`; waits until it is ready.
    pub async fn start(
        program: &Path,
        files: &PkiFiles,
        org: &str,
        extra: &[&str],
        log: PathBuf,
        env: ChildEnv,
    ) -> Result<Self, ProcError> {
        let (quic, http, admin) = (free_addr(true)?, free_addr(false)?, free_addr(false)?);
        let path = |p: &Path| p.display().to_string();
        let mut args: Vec<String> = vec![
            "--cert-file".into(),
            path(&files.relay_cert),
            "--key-file".into(),
            path(&files.relay_key),
            "--agent-ca-file".into(),
            path(&files.ca),
            "--quic-addr".into(),
            quic.to_string(),
            "--http-addr".into(),
            http.to_string(),
            "--admin-addr".into(),
            admin.to_string(),
            "--anonymous-org".into(),
            org.into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proc = Proc::new("the relay", program.to_path_buf(), args, log, env);
        let mut relay = Self {
            proc,
            quic,
            http,
            admin,
        };
        relay.start_again().await?;
        Ok(relay)
    }

    /// Starts it again (same ports, files and flags), and waits until it is ready.
    pub async fn start_again(&mut self) -> Result<(), ProcError> {
        self.proc.spawn()?;
        self.proc.until_ready(self.admin, "/readyz").await
    }

    /// `ws://…/v1/subscribe`.
    pub fn subscribe_url(&self) -> String {
        format!("ws://{}/v1/subscribe", self.http)
    }
}

/// `logrelay-agent` over a pods directory.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Admin listener (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
}

impl Agent {
    /// Starts `program` with `files`' agent certificate over `pods`, dialling `relay`, with
    /// `extra` flags (`--node-name` among them), its admin listener on a free loopback port,
    /// its output in `log`, run with `env`; waits until it serves `/healthz`.
    pub async fn start(
        program: &Path,
        files: &PkiFiles,
        pods: &Path,
        relay: SocketAddr,
        extra: &[&str],
        log: PathBuf,
        env: ChildEnv,
    ) -> Result<Self, ProcError> {
        let admin = free_addr(false)?;
        let path = |p: &Path| p.display().to_string();
        let mut args: Vec<String> = vec![
            "--relay-addr".into(),
            relay.to_string(),
            "--relay-name".into(),
            "localhost".into(),
            "--ca-file".into(),
            path(&files.ca),
            "--cert-file".into(),
            path(&files.agent_cert),
            "--key-file".into(),
            path(&files.agent_key),
            "--pods-dir".into(),
            path(pods),
            "--admin-addr".into(),
            admin.to_string(),
            "--resources".into(),
            "false".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proc = Proc::new("the agent", program.to_path_buf(), args, log, env);
        let mut agent = Self { proc, admin };
        agent.start_again().await?;
        Ok(agent)
    }

    /// Starts it again (same flags and admin port), and waits until it is up.
    pub async fn start_again(&mut self) -> Result<(), ProcError> {
        self.proc.spawn()?;
        self.proc.until_ready(self.admin, "/healthz").await
    }
}
