//! Certificate reload: the relay re-reads its TLS files when they change, with no restart.
//!
//! A task polls the files' identity (size, modification time, inode) every interval
//! ([`logrelay_tls::reload`]); on a change it loads the whole set again and, only if all of it
//! is valid, swaps it in: the QUIC endpoint's server configuration (agent certificate, agent CA
//! bundle) and the WSS configuration used by the next session handshakes. Connections already established keep
//! the configuration they were made with. A broken file set is reported and ignored: the relay
//! keeps serving with the last good one.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use logrelay_tls::reload::WatchedFiles;
use tokio::sync::watch;

use crate::metrics::RelayMetrics;

/// The files behind a relay's TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain presented to agents.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// CAs that sign agent certificates.
    pub agent_ca_file: PathBuf,
    /// WSS certificate and key, if sessions use TLS.
    pub wss: Option<(PathBuf, PathBuf)>,
    /// How often the files are checked.
    pub interval: Duration,
}

impl TlsFiles {
    /// Loads the files into TLS material.
    pub fn load(&self) -> Result<crate::RelayTls, logrelay_tls::TlsError> {
        Ok(crate::RelayTls {
            quic_identity: logrelay_tls::Identity::from_pem_files(&self.cert_file, &self.key_file)?,
            agent_roots: logrelay_tls::roots_from_pem_file(&self.agent_ca_file)?,
            wss: match &self.wss {
                Some((c, k)) => Some(logrelay_tls::Identity::from_pem_files(c, k)?),
                None => None,
            },
            reload: None,
        })
    }

    /// The files watched for changes.
    fn watched(&self) -> WatchedFiles {
        let mut paths = vec![
            self.cert_file.clone(),
            self.key_file.clone(),
            self.agent_ca_file.clone(),
        ];
        if let Some((c, k)) = &self.wss {
            paths.push(c.clone());
            paths.push(k.clone());
        }
        WatchedFiles::new(paths)
    }
}

/// The WSS configuration in force, swapped on reload.
pub type SharedServerConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Watches `files` until shutdown, swapping new configurations into `endpoint` (with the QUIC
/// transport settings `transport`) and `wss`.
pub async fn watch_files(
    files: TlsFiles,
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    wss: Option<SharedServerConfig>,
    metrics: Arc<RelayMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let reload = || match apply(&files, &endpoint, &transport, wss.as_ref()) {
        Ok(()) => {
            metrics.tls_reload("ok");
            tracing::info!("TLS files changed: new certificates in use");
        }
        Err(e) => {
            metrics.tls_reload("error");
            tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones");
        }
    };
    logrelay_tls::reload::watch_files(
        files.watched(),
        files.interval,
        crate::stopped(&mut shutdown),
        reload,
    )
    .await;
}

fn apply(
    files: &TlsFiles,
    endpoint: &quinn::Endpoint,
    transport: &Arc<quinn::TransportConfig>,
    wss: Option<&SharedServerConfig>,
) -> Result<(), logrelay_tls::TlsError> {
    let tls = files.load()?;
    let mut server = crate::quic_server_config(tls.quic_identity, tls.agent_roots)?;
    server.transport_config(transport.clone());
    let wss_config = match tls.wss {
        Some(id) => Some(logrelay_tls::https_server(id)?),
        None => None,
    };
    endpoint.set_server_config(Some(server));
    if let (Some(shared), Some(config)) = (wss, wss_config) {
        *shared.write().expect("wss config lock") = config;
    }
    Ok(())
}
