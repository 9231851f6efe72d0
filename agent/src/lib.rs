//! The logrelay agent: one per node.
//!
//! Pipeline stages, one module each:
//! * [`discover`] finds container logs under the pods directory and keeps the [`catalog`];
//! * [`uplink`] dials the relay over QUIC, announces the catalog and serves `open`/`cancel`;
//! * [`tail`] serves one demand: backlog (read backwards), then follow across rotations
//!   ([`rotate`], [`fingerprint`]) into one byte [`budget`], encoding batches once
//!   ([`logrelay_wire::batch`]) in the format subscribers read;
//! * [`format`] parses CRI, Docker json-file and plain logs and reassembles partial lines
//!   (pure; [`cri`] is its borrow-only CRI face);
//! * [`scrape`] scrapes Prometheus endpoints and [`cgroup`] samples pod resource usage, as
//!   `metrics` streams discovered by [`scrape::sources`], read only while watched;
//! * [`admin`] serves `/metrics` and `/healthz`; [`metrics`] owns every metric name.
//!
//! Nothing is read from a log file unless the relay asked for it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod blocking;
pub mod budget;
pub mod catalog;
pub mod cgroup;
pub mod config;
pub mod cri;
pub mod discover;
pub mod fingerprint;
pub mod format;
pub mod kube;
pub mod metrics;
pub mod rotate;
pub mod scrape;
pub mod tail;
pub mod tls_reload;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::AgentConfig;

/// TLS material of an agent: its client certificate and the CAs it trusts for the relay.
#[derive(Debug)]
pub struct AgentTls {
    /// Client certificate and key presented to the relay.
    pub identity: logrelay_tls::Identity,
    /// Roots the relay's certificate must chain to.
    pub relay_roots: rustls::RootCertStore,
    /// The files this material came from, watched and reloaded when they change.
    pub reload: Option<tls_reload::AgentTlsFiles>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin listener could not bind.
    #[error("cannot bind admin listener on {addr}: {source}")]
    AdminBind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not be created.
    #[error("cannot create QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] logrelay_tls::TlsError),
    /// A scrape CA or bearer token file cannot be used.
    #[error(transparent)]
    Scrape(#[from] scrape::auth::CredentialsError),
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Where `/metrics` and `/healthz` are served.
    pub admin_addr: SocketAddr,
    /// The agent's metrics.
    pub metrics: Arc<metrics::AgentMetrics>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl AgentHandle {
    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts discovery, the uplink and the admin listener.
pub async fn start(config: AgentConfig, tls: AgentTls) -> Result<AgentHandle, StartError> {
    logrelay_tls::install_provider();
    scrape::sources::check_credentials(&config)?;
    let metrics = Arc::new(metrics::AgentMetrics::new());
    metrics
        .queue_budget_bytes
        .set(i64::try_from(config.queue_budget_bytes).unwrap_or(i64::MAX));
    let catalog = Arc::new(catalog::Catalog::new(metrics.clone()));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let admin = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| StartError::AdminBind {
            addr: config.admin_addr,
            source,
        })?;
    let admin_addr = admin.local_addr().map_err(StartError::Endpoint)?;
    tasks.spawn(admin::serve(admin, metrics.clone(), shutdown_rx.clone()));

    let tailer = tail::Tailer::new(tail::TailerConfig::from(&config), metrics.clone());
    tasks.spawn(tailer.clone().run(shutdown_rx.clone()));
    let pods = kube::start(&config, &mut tasks, &shutdown_rx).await;
    tasks.spawn(discover::run_with(
        config.clone(),
        catalog.clone(),
        tailer.clone(),
        pods.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(scrape::sources::run(
        config.clone(),
        catalog.clone(),
        metrics.clone(),
        pods,
        shutdown_rx.clone(),
    ));

    let reload = tls.reload.clone();
    let client = tls_reload::client_config(tls)?;
    let uplink = uplink::Uplink::new(config, client, catalog, metrics.clone())
        .map_err(StartError::Endpoint)?
        .with_tailer(tailer);
    if let Some(files) = reload {
        tasks.spawn(tls_reload::watch_files(
            files,
            uplink.client_config(),
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    tasks.spawn(uplink.run(shutdown_rx));

    Ok(AgentHandle {
        admin_addr,
        metrics,
        shutdown,
        tasks,
    })
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
