//! `logrelay-agent`: tails pod logs on a node and pushes them to the relay on demand.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use logrelay_agent::AgentConfig;
use logrelay_agent::tls_reload::AgentTlsFiles;

/// jemalloc rather than glibc's malloc, as in the relay. glibc keeps memory freed by a thread in
/// that thread's arena: in the chaos soak (docs/benchmarks.md) the agent's RSS rose to 40–50 MiB
/// within each life while its queue held under 6 MiB, the difference being freed memory kept in
/// glibc's per-thread arenas (several grown to 55–64 MiB of address space) after the bursts of a
/// reconnection or a backfill. jemalloc's background threads return freed pages after a short
/// decay, whatever thread allocated them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// logrelay agent: tails pod logs on this node and pushes them to the relay on demand.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: AgentConfig,
    /// PEM bundle of the CA(s) that sign the relay's certificate.
    #[arg(long, env = "LOGRELAY_AGENT_CA_FILE")]
    ca_file: PathBuf,
    /// PEM client certificate (its URI SAN `spiffe://<org>/cluster/<cluster>` names the tenant).
    #[arg(long, env = "LOGRELAY_AGENT_CERT_FILE")]
    cert_file: PathBuf,
    /// PEM private key of the client certificate.
    #[arg(long, env = "LOGRELAY_AGENT_KEY_FILE")]
    key_file: PathBuf,
    /// Seconds between checks of the TLS files; changed files are used from the next
    /// connection on, with no restart.
    #[arg(long, env = "LOGRELAY_AGENT_TLS_RELOAD_SECS", default_value_t = 10)]
    tls_reload_secs: u64,
    /// Format of the diagnostic logs on stderr: `text` (coloured only when stderr is a
    /// terminal and `NO_COLOR` is unset) or `json` (one object per line).
    #[arg(long, env = "LOGRELAY_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
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

/// Diagnostic logs go to stderr; the agent writes nothing to stdout.
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "allocator: no background purging; freed memory returns later");
    }
    let stop = terminated();
    // Traces, when the OTEL_* variables ask for them.
    let telemetry = logrelay_telemetry::init_from_env("logrelay-agent").context("tracing")?;
    if let Some(t) = &telemetry {
        tracing::info!(url = %t.settings().url, service = %t.settings().service_name, "traces exported over OTLP/HTTP");
    }
    let files = AgentTlsFiles {
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        interval: std::time::Duration::from_secs(cli.tls_reload_secs.max(1)),
    };
    let mut tls = files.load()?;
    tls.reload = Some(files);
    let agent = logrelay_agent::start(cli.config, tls)
        .await
        .context("starting agent")?;
    tracing::info!(admin = %agent.admin_addr, "agent running");
    stop.await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    if let Some(t) = telemetry {
        match tokio::task::spawn_blocking(move || t.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "traces: OTLP flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "traces: OTLP flush failed"),
        }
    }
    Ok(())
}

/// Installs the SIGTERM (Kubernetes) and SIGINT (Ctrl-C) handlers at once, so a signal that
/// arrives from here on means a clean shutdown; the future resolves on either.
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
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
