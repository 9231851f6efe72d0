//! Certificate reload: the agent re-reads its client certificate, key and relay CA bundle when
//! the files change (e.g. a rotated Kubernetes Secret), with no restart. The next connection
//! attempt uses them; the current connection keeps the ones it was made with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logrelay_tls::reload::WatchedFiles;
use tokio::sync::watch;

use crate::metrics::AgentMetrics;

/// TLS material of an agent: its client certificate and the CAs it trusts for the relay.
#[derive(Debug)]
pub struct AgentTls {
    /// Client certificate and key presented to the relay.
    pub identity: logrelay_tls::Identity,
    /// Roots the relay's certificate must chain to.
    pub relay_roots: rustls::RootCertStore,
    /// The files this material came from, watched and reloaded when they change.
    pub reload: Option<AgentTlsFiles>,
}

/// The files behind an agent's TLS material.
#[derive(Debug, Clone)]
pub struct AgentTlsFiles {
    /// CAs that sign the relay's certificate.
    pub ca_file: PathBuf,
    /// The agent's client certificate chain.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// How often the files are checked.
    pub interval: Duration,
}

impl AgentTlsFiles {
    /// Loads the files.
    pub fn load(&self) -> Result<AgentTls, logrelay_tls::TlsError> {
        Ok(AgentTls {
            identity: logrelay_tls::Identity::from_pem_files(&self.cert_file, &self.key_file)?,
            relay_roots: logrelay_tls::roots_from_pem_file(&self.ca_file)?,
            reload: None,
        })
    }

    /// The files watched for changes.
    fn watched(&self) -> WatchedFiles {
        WatchedFiles::new(vec![
            self.ca_file.clone(),
            self.cert_file.clone(),
            self.key_file.clone(),
        ])
    }
}

/// The QUIC client configuration: mTLS with `identity`, trusting `relay_roots`, transport
/// keep-alives ([`logrelay_tls::quic_client_transport`]).
pub fn client_config(tls: AgentTls) -> Result<quinn::ClientConfig, logrelay_tls::TlsError> {
    let mut client = logrelay_tls::quic_client(tls.identity, tls.relay_roots)?;
    client.transport_config(Arc::new(logrelay_tls::quic_client_transport()));
    Ok(client)
}

/// Watches `files` until shutdown and swaps new client configurations into `client`.
pub async fn watch_files(
    files: AgentTlsFiles,
    client: crate::uplink::SharedClientConfig,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let reload = || match files.load().and_then(client_config) {
        Ok(config) => {
            *client.write().expect("client config lock") = config;
            metrics.tls_reloads.inc();
            tracing::info!("TLS files changed: the next connection uses them");
        }
        Err(e) => {
            metrics.tls_reload_errors.inc();
            tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones");
        }
    };
    logrelay_tls::reload::watch_files(
        files.watched(),
        files.interval,
        crate::shutdown::stopped(&mut shutdown),
        reload,
    )
    .await;
}
