//! `logrelay-relay`: accepts agents over QUIC and fans their streams out to WebSocket sessions.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use logrelay_relay::{RelayConfig, RelayTls};

/// jemalloc rather than glibc's malloc. glibc keeps memory freed by a thread in that thread's
/// arena, and returns it only from the top of the arena: after a flood of streams (a large
/// catalog, then the agent gone) the relay stayed at several times its RSS (a test measured
/// 14 MiB before, 49 MiB after). jemalloc's background threads return freed pages after a
/// short decay, whatever allocated them (`relay/tests/catalog_flood_rss.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// logrelay relay: accepts agents over QUIC and fans their streams out to WebSocket sessions.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: RelayConfig,
    /// Development mode: mint a throwaway CA and the relay's certificate in memory and accept
    /// anonymous sessions as org `dev`. Agents of another process cannot trust this CA; use
    /// `logrelay demo` to run relay and agent together.
    #[arg(long, conflicts_with_all = ["cert_file", "key_file", "agent_ca_file"])]
    dev: bool,
    /// PEM certificate chain presented to agents (QUIC).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_CERT_FILE",
        required_unless_present = "dev"
    )]
    cert_file: Option<PathBuf>,
    /// PEM private key of `--cert-file`.
    #[arg(long, env = "LOGRELAY_RELAY_KEY_FILE", required_unless_present = "dev")]
    key_file: Option<PathBuf>,
    /// PEM bundle of the CAs that sign agent certificates.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_AGENT_CA_FILE",
        required_unless_present = "dev"
    )]
    agent_ca_file: Option<PathBuf>,
    /// Seconds between checks of the TLS files; changed files are loaded with no restart.
    #[arg(long, env = "LOGRELAY_RELAY_TLS_RELOAD_SECS", default_value_t = 10)]
    tls_reload_secs: u64,
    /// Refuse to start where the kernel cannot deny file writes (Landlock).
    #[arg(long, env = "LOGRELAY_RELAY_REQUIRE_SANDBOX")]
    require_sandbox: bool,
    /// After start-up, try to create a file in this directory and report that the sandbox
    /// refused it (exits non-zero if the write succeeds). For verifying a deployment.
    #[arg(long, env = "LOGRELAY_RELAY_SANDBOX_SELF_CHECK_DIR")]
    sandbox_self_check_dir: Option<PathBuf>,
    /// Format of the diagnostic logs on stderr: `text` (coloured only when stderr is a
    /// terminal and `NO_COLOR` is unset) or `json` (one object per line). The audit trail on
    /// stdout is always JSON lines.
    #[arg(long, env = "LOGRELAY_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How diagnostic logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

/// Diagnostic logs go to stderr, so stdout carries the audit trail alone (JSON lines).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGRELAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Loads everything from disk, forbids the process to write files, then starts the runtime:
/// every runtime thread is created after the restriction and inherits it.
fn main() -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    let mut cli = Cli::parse();
    init_logging(cli.log_format);
    let wss = match (&cli.config.wss_cert_file, &cli.config.wss_key_file) {
        (Some(c), Some(k)) => Some(logrelay_tls::Identity::from_pem_files(c, k)?),
        _ => None,
    };
    if cli.config.dev_token_secret.is_some() && !cli.dev {
        bail!("--dev-token-secret is for development only and needs --dev");
    }
    let tls = if cli.dev {
        let pki = logrelay_tls::DevPki::new()?;
        cli.config.anonymous_org.get_or_insert_with(|| "dev".into());
        tracing::warn!("development mode: in-memory CA, anonymous sessions are org `dev`");
        RelayTls {
            quic_identity: pki.server(&["localhost", "127.0.0.1"])?,
            agent_roots: pki.roots(),
            wss,
            reload: None,
        }
    } else {
        let (Some(cert), Some(key), Some(ca)) = (&cli.cert_file, &cli.key_file, &cli.agent_ca_file)
        else {
            bail!("--cert-file, --key-file and --agent-ca-file are required without --dev");
        };
        let files = logrelay_relay::reload::TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            agent_ca_file: ca.clone(),
            wss: cli
                .config
                .wss_cert_file
                .clone()
                .zip(cli.config.wss_key_file.clone()),
            interval: std::time::Duration::from_secs(cli.tls_reload_secs.max(1)),
        };
        let mut tls = files.load()?;
        tls.reload = Some(files);
        tls
    };
    match logrelay_relay::sandbox::deny_writes() {
        Ok(status @ logrelay_relay::sandbox::Status::Enforced { .. }) => {
            tracing::info!(%status, "sandbox: file writes denied");
        }
        Ok(status) if cli.require_sandbox => bail!("sandbox required but {status}"),
        Ok(status) => tracing::warn!(%status, "sandbox: file writes NOT fully denied"),
        Err(e) => bail!("sandbox: {e}"),
    }
    // Started after the sandbox, so these threads carry its restriction like every other.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "allocator: no background purging; freed memory returns later");
    }
    // Traces, when the OTEL_* variables ask for them (export thread started after the sandbox).
    let telemetry = logrelay_telemetry::init_from_env("logrelay-relay").context("tracing")?;
    if let Some(t) = &telemetry {
        tracing::info!(url = %t.settings().url, service = %t.settings().service_name, "traces exported over OTLP/HTTP");
    }
    let self_check = cli.sandbox_self_check_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let drain_secs = cli.config.drain_secs;
    runtime.block_on(async move {
        let mut signals = Signals::install();
        let relay = logrelay_relay::start(cli.config, tls)
            .await
            .context("starting relay")?;
        tracing::info!(url = %relay.subscribe_url(), "relay running");
        if let Some(dir) = self_check {
            let path = dir.join("logrelay-sandbox-self-check");
            let attempt = tokio::task::spawn_blocking(move || std::fs::File::create(path)).await?;
            match attempt {
                Ok(_) => bail!("sandbox self-check: a file write succeeded after start-up"),
                Err(e) => tracing::info!(error = %e, "sandbox self-check: file write refused"),
            }
        }
        signals.next().await;
        // Drain (a rolling update): agents and sessions are told to move to another relay;
        // a second signal cuts the drain short.
        tokio::select! {
            _ = relay.drain(std::time::Duration::from_secs(drain_secs)) => {}
            () = signals.next() => tracing::warn!("second signal: drain cut short"),
        }
        tracing::info!("shutting down");
        relay.shutdown().await;
        if let Some(t) = telemetry {
            match tokio::task::spawn_blocking(move || t.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "traces: OTLP flush incomplete"),
                Err(e) => tracing::warn!(error = %e, "traces: OTLP flush failed"),
            }
        }
        Ok(())
    })
}

/// The SIGTERM (Kubernetes) and SIGINT (Ctrl-C) handlers, installed at once, so a signal that
/// arrives from then on means a clean shutdown.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        match (&mut self.term, &mut self.int) {
            (Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
