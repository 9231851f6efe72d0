//! The relay and the agents run as child processes of the harness (this same binary, hidden
//! subcommands `serve-relay` and `serve-agent`), so that their CPU and memory are read from
//! `/proc/<pid>` apart from the harness's own load.
//!
//! The parent mints the PKI in memory and hands each child its certificate and key on stdin
//! (one JSON line): no key material touches the disk. The child answers with one JSON line on
//! stdout (its addresses) and runs until its stdin closes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use logrelay_tls::Identity;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

/// A certificate chain and its PKCS#8 key, as DER, for the trip over stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityDer {
    /// Leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 private key.
    pub key: Vec<u8>,
}

impl IdentityDer {
    /// From an identity minted by `DevPki`.
    pub fn of(id: &Identity) -> Self {
        Self {
            chain: id.chain.iter().map(|c| c.to_vec()).collect(),
            key: id.key.secret_der().to_vec(),
        }
    }

    /// Back to an identity.
    pub fn identity(&self) -> Identity {
        Identity {
            chain: self
                .chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
        }
    }
}

fn roots(ca: &[u8]) -> anyhow::Result<rustls::RootCertStore> {
    Ok(logrelay_tls::roots_from_der(&[CertificateDer::from(
        ca.to_vec(),
    )])?)
}

/// What `serve-relay` is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelaySpec {
    /// The relay's QUIC certificate.
    pub identity: IdentityDer,
    /// CA of the agent certificates.
    pub ca: Vec<u8>,
    /// Org of anonymous sessions (the agents' org).
    pub org: String,
    /// Ring bytes per stream.
    pub ring_bytes: usize,
    /// NATS backplane (`--nats-url`) and this relay's id on it, when the run has several.
    pub backplane: Option<(String, String)>,
}

/// What `serve-relay` answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RelayAddrs {
    /// QUIC listener.
    pub quic: SocketAddr,
    /// WebSocket listener.
    pub http: SocketAddr,
    /// Admin listener (`/metrics`).
    pub admin: SocketAddr,
}

/// What `serve-agent` is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The agent's client certificate.
    pub identity: IdentityDer,
    /// CA of the relay certificate.
    pub ca: Vec<u8>,
    /// Pods directory to discover.
    pub pods_dir: PathBuf,
    /// Relay QUIC address.
    pub relay: SocketAddr,
    /// Node name.
    pub node: String,
    /// Batch flush size.
    pub max_batch_bytes: usize,
}

/// What `serve-agent` answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AgentAddrs {
    /// Admin listener (`/metrics`).
    pub admin: SocketAddr,
}

fn init_child_logging() {
    let filter = std::env::var("LOADTEST_CHILD_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn read_spec<T: for<'de> Deserialize<'de>>() -> anyhow::Result<(T, tokio::io::Stdin)> {
    let mut stdin = tokio::io::stdin();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the newline: the rest of stdin must stay unread (its EOF means stop).
    loop {
        if stdin.read(&mut byte).await? == 0 {
            bail!("stdin closed before the spec line");
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok((serde_json::from_slice(&line).context("spec line")?, stdin))
}

async fn answer<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

async fn until_stdin_closes(mut stdin: tokio::io::Stdin) {
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Environment variables every child gets on top of the harness's own (`--trace-ratio`).
static CHILD_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Sets the environment every child started from now on gets (the first call wins).
pub fn set_child_env(env: Vec<(String, String)>) {
    let _ = CHILD_ENV.set(env);
}

/// Sends a child's last spans (tracing is on when the harness runs with the `OTEL_*`
/// variables set: the children inherit them).
async fn flush_traces(telemetry: Option<logrelay_telemetry::Telemetry>) {
    if let Some(t) = telemetry
        && let Ok(Err(e)) = tokio::task::spawn_blocking(move || t.shutdown()).await
    {
        eprintln!("traces: OTLP flush incomplete: {e}");
    }
}

/// `loadtest serve-relay`: a relay on loopback ephemeral ports.
pub async fn serve_relay() -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    init_child_logging();
    let telemetry = logrelay_telemetry::init_from_env("logrelay-relay")?;
    let (spec, stdin): (RelaySpec, _) = read_spec().await?;
    let mut config = logrelay_relay::RelayConfig {
        anonymous_org: Some(spec.org.clone()),
        ring_bytes: spec.ring_bytes,
        // Every subscriber connects from 127.0.0.1, all at once: no per-source caps.
        max_pending_handshakes_per_source: usize::MAX,
        max_sessions_per_source: usize::MAX,
        ..logrelay_relay::RelayConfig::loopback()
    };
    if let Some((url, id)) = spec.backplane.clone() {
        config.backplane.nats_urls = vec![url];
        config.backplane.relay_id = Some(id);
    }
    let relay = logrelay_relay::start(
        config,
        logrelay_relay::RelayTls {
            quic_identity: spec.identity.identity(),
            agent_roots: roots(&spec.ca)?,
            wss: None,
            reload: None,
        },
    )
    .await?;
    answer(&RelayAddrs {
        quic: relay.quic_addr,
        http: relay.http_addr,
        admin: relay.admin_addr,
    })
    .await?;
    until_stdin_closes(stdin).await;
    relay.shutdown().await;
    flush_traces(telemetry).await;
    Ok(())
}

/// `loadtest serve-agent`: an agent with its default tuning over a pods directory.
pub async fn serve_agent() -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    init_child_logging();
    let telemetry = logrelay_telemetry::init_from_env("logrelay-agent")?;
    let (spec, stdin): (AgentSpec, _) = read_spec().await?;
    let config = logrelay_agent::AgentConfig {
        node_name: spec.node.clone(),
        max_batch_bytes: spec.max_batch_bytes,
        ..logrelay_agent::AgentConfig::new(spec.pods_dir.clone(), spec.relay)
    };
    let agent = logrelay_agent::start(
        config,
        logrelay_agent::AgentTls {
            identity: spec.identity.identity(),
            relay_roots: roots(&spec.ca)?,
            reload: None,
        },
    )
    .await?;
    answer(&AgentAddrs {
        admin: agent.admin_addr,
    })
    .await?;
    until_stdin_closes(stdin).await;
    agent.shutdown().await;
    flush_traces(telemetry).await;
    Ok(())
}

/// A child process of the harness; stopped by closing its stdin.
#[derive(Debug)]
pub struct ChildProc {
    /// Process id (for `/proc`).
    pub pid: u32,
    what: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ChildProc {
    /// Spawns `program args…`, sends `spec` on stdin and reads one JSON line back.
    pub async fn spawn<S: Serialize, A: for<'de> Deserialize<'de>>(
        what: &'static str,
        program: &std::path::Path,
        args: &[&str],
        spec: &S,
    ) -> anyhow::Result<(Self, A)> {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(CHILD_ENV.get().into_iter().flatten().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {what} ({})", program.display()))?;
        let pid = child.id().context("child pid")?;
        let mut stdin = child.stdin.take().context("child stdin")?;
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut answer))
            .await
            .with_context(|| format!("{what} did not start within 20 s"))??;
        let addrs =
            serde_json::from_str(&answer).with_context(|| format!("{what} answered {answer:?}"))?;
        Ok((
            Self {
                pid,
                what,
                child,
                stdin: Some(stdin),
            },
            addrs,
        ))
    }

    /// Closes stdin and waits up to 10 s for a clean exit, then kills.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("loadtest: {} exited with {status}", self.what),
            Ok(Err(e)) => eprintln!("loadtest: waiting for {}: {e}", self.what),
            Err(_) => {
                eprintln!(
                    "loadtest: {} did not stop within 10 s; killing it",
                    self.what
                );
                let _ = self.child.kill().await;
            }
        }
    }
}
