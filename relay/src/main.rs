//! `logrelay-relay`: accepts agents over QUIC and fans their streams out to WebSocket sessions.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use logrelay_relay::{RelayConfig, RelayTls};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGRELAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut cli = Cli::parse();
    let wss = match (&cli.config.wss_cert_file, &cli.config.wss_key_file) {
        (Some(c), Some(k)) => Some(logrelay_tls::Identity::from_pem_files(c, k)?),
        _ => None,
    };
    let tls = if cli.dev {
        let pki = logrelay_tls::DevPki::new()?;
        cli.config.anonymous_org.get_or_insert_with(|| "dev".into());
        tracing::warn!("development mode: in-memory CA, anonymous sessions are org `dev`");
        RelayTls {
            quic_identity: pki.server(&["localhost", "127.0.0.1"])?,
            agent_roots: pki.roots(),
            wss,
        }
    } else {
        let (Some(cert), Some(key), Some(ca)) = (&cli.cert_file, &cli.key_file, &cli.agent_ca_file)
        else {
            bail!("--cert-file, --key-file and --agent-ca-file are required without --dev");
        };
        RelayTls {
            quic_identity: logrelay_tls::Identity::from_pem_files(cert, key)?,
            agent_roots: logrelay_tls::roots_from_pem_file(ca)?,
            wss,
        }
    };
    let relay = logrelay_relay::start(cli.config, tls)
        .await
        .context("starting relay")?;
    tracing::info!(url = %relay.subscribe_url(), "relay running");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    relay.shutdown().await;
    Ok(())
}
