//! The relay and the agent of the soak: the production binaries (`logrelay-relay`,
//! `logrelay-agent`), started as an operator starts them, with certificate files (a CA, the
//! relay's certificate, an agent certificate naming `spiffe://<org>/cluster/<cluster>`) in a
//! private temporary directory, on fixed loopback ports so that a process killed with SIGKILL
//! comes back where its peers expect it. Their output goes to log files beside the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use logrelay_tls::{AgentId, DevPki, pem};

/// Where the two binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `logrelay-relay`.
    pub relay: PathBuf,
    /// `logrelay-agent`.
    pub agent: PathBuf,
}

impl Binaries {
    /// In `dir` when given (taken as they are); otherwise beside this executable, built first
    /// with `cargo build --locked` of the same profile when this run came through `cargo run`
    /// (cargo rebuilds them only if their sources changed).
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let (dir, build) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let exe = std::env::current_exe().context("path of loadtest")?;
                let dir = exe.parent().context("loadtest's directory")?.to_path_buf();
                (dir, std::env::var_os("CARGO").is_some())
            }
        };
        if build {
            let release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("workspace root")?;
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
            eprintln!("loadtest: building the relay and agent binaries (cargo build)");
            let status = cmd.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build of logrelay-relay and logrelay-agent failed");
            }
        }
        let bins = Self {
            relay: dir.join("logrelay-relay"),
            agent: dir.join("logrelay-agent"),
        };
        for b in [&bins.relay, &bins.agent] {
            if !b.is_file() {
                bail!(
                    "{} is missing: build it (cargo build --release -p logrelay-relay -p \
                     logrelay-agent) or name its directory with --bin-dir",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// Certificate files of the soak.
#[derive(Debug)]
pub struct PkiFiles {
    dir: tempfile::TempDir,
    ca: PathBuf,
    relay_cert: PathBuf,
    relay_key: PathBuf,
    agent_cert: PathBuf,
    agent_key: PathBuf,
}

impl PkiFiles {
    /// Mints a CA, the relay's certificate (`localhost`, `127.0.0.1`) and an agent's
    /// (`org`/`cluster`), and writes them (keys readable by this user only).
    pub fn write(org: &str, cluster: &str) -> anyhow::Result<Self> {
        let pki = DevPki::new()?;
        let dir = tempfile::Builder::new()
            .prefix("loadtest-chaos-")
            .tempdir()?;
        let relay = pki.server(&["localhost", "127.0.0.1"])?;
        let agent = pki.agent(&AgentId {
            org: org.into(),
            cluster: cluster.into(),
        })?;
        let chain = |id: &logrelay_tls::Identity| -> String {
            id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
        };
        let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
            let p = dir.path().join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        Ok(Self {
            ca: write("ca.pem", pki.ca_pem())?,
            relay_cert: write("relay.crt", chain(&relay))?,
            relay_key: write("relay.key", pem("PRIVATE KEY", relay.key.secret_der()))?,
            agent_cert: write("agent.crt", chain(&agent))?,
            agent_key: write("agent.key", pem("PRIVATE KEY", agent.key.secret_der()))?,
            dir,
        })
    }

    /// The temporary directory (pods live there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A loopback port free right now.
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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Starts so far.
    pub starts: u32,
}

impl Proc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            log,
            "=== loadtest chaos: start {} of {}",
            self.starts + 1,
            self.what
        )?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "LOGRELAY_LOG",
                std::env::var("LOADTEST_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.starts += 1;
        self.child = Some(child);
        Ok(())
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
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it exited on its own (not killed by us): its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `GET path` answers 200.
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

/// Waits until `GET path` answers 200, at most `limit`.
async fn until_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if ready(addr, path).await {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}) before it was ready; see {}",
                proc.what,
                proc.log.display()
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} not ready within {limit:?}; see {}",
                proc.what,
                proc.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a process has to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// `logrelay-relay`, accepting anonymous sessions as the agents' org.
#[derive(Debug)]
pub struct Relay {
    /// The process.
    pub proc: Proc,
    /// QUIC listener.
    pub quic: SocketAddr,
    /// Session listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

impl Relay {
    /// Starts it and waits until it is ready.
    pub async fn start(
        bins: &Binaries,
        files: &PkiFiles,
        org: &str,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let (quic, http, admin) = (
            loopback(free_port(true)?),
            loopback(free_port(false)?),
            loopback(free_port(false)?),
        );
        let path = |p: &Path| p.display().to_string();
        let args = vec![
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
        let mut relay = Self {
            proc: Proc {
                what: "the relay",
                program: bins.relay.clone(),
                args,
                log,
                child: None,
                starts: 0,
            },
            quic,
            http,
            admin,
        };
        relay.start_again().await?;
        Ok(relay)
    }

    /// Starts it again on the same ports with the same files, and waits until it is ready.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()?;
        until_ready(&mut self.proc, self.admin, "/readyz", READY_WITHIN).await
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
    base_args: Vec<String>,
    /// Admin listener of the current start.
    pub admin: SocketAddr,
}

impl Agent {
    /// Starts it, dialling `relay` (the fault proxy), and waits until it serves `/healthz`.
    pub async fn start(
        bins: &Binaries,
        files: &PkiFiles,
        pods: &Path,
        relay: SocketAddr,
        extra: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let path = |p: &Path| p.display().to_string();
        let mut base_args: Vec<String> = vec![
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
            "--node-name".into(),
            "chaos-node".into(),
            "--resources".into(),
            "false".into(),
        ];
        base_args.extend(extra.iter().cloned());
        let mut agent = Self {
            proc: Proc {
                what: "the agent",
                program: bins.agent.clone(),
                args: Vec::new(),
                log,
                child: None,
                starts: 0,
            },
            base_args,
            admin: loopback(0),
        };
        agent.start_again().await?;
        Ok(agent)
    }

    /// Starts it again (same flags, a new admin port), and waits until it is up.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.admin = loopback(free_port(false)?);
        let mut args = self.base_args.clone();
        args.extend(["--admin-addr".into(), self.admin.to_string()]);
        self.proc.args = args;
        self.proc.spawn()?;
        until_ready(&mut self.proc, self.admin, "/healthz", READY_WITHIN).await
    }
}
