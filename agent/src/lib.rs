//! The logrelay agent: one per node.
//!
//! Pipeline stages, one module each, with arrows pointing down only (`scripts/import-cycles`
//! checks that no module imports its way back):
//!
//! 1. pure parsers and decisions: [`format`](mod@format) (CRI, Docker json-file, plain; partial lines
//!    reassembled; [`cri`] is its borrow-only CRI face), [`rotate`], `tail::reader`,
//!    `tail::walk`, `tail::plan`, `tail::policy`, `tail::filter`, `tail::encode`,
//!    `scrape::exposition`, `scrape::encode`, `cgroup::files`;
//! 2. blocking file I/O: `tail::file`, `tail::follow` (a chain of files across rotations),
//!    `tail::seek` (backwards from a clean point), `tail::gz`, [`fingerprint`], and the
//!    [`blocking`] pool demands take turns on;
//! 3. ports: [`sink`] (where a demand's batches go), [`budget`] (the agent-wide byte budget
//!    every followed stream's queue draws on), [`metrics`] (every metric name), [`shutdown`];
//! 4. stages: [`tail`] serves log demands (backlog, follow across rotations, resume, into the
//!    budget, encoding batches once in the format subscribers read), [`scrape`] and [`cgroup`]
//!    serve metrics demands, [`kube`] watches this node's pods, and [`discover`] finds log
//!    streams and metrics sources into the catalog;
//! 5. [`uplink`]: dials the relay over QUIC ([`tls_reload`]), announces the catalog and serves
//!    `open`/`cancel` from the stages;
//! 6. root: [`config`] builds each stage's own config from the flags (a stage never sees
//!    [`AgentConfig`]), and [`start`] wires the stages; [`admin`] serves `/metrics` and
//!    `/healthz`.
//!
//! Nothing is read from a log file unless the relay asked for it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod blocking;
pub mod budget;
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
pub mod shutdown;
pub mod sink;
pub mod tail;
pub mod tls_reload;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::AgentConfig;
pub use tls_reload::AgentTls;

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
    let sources = config.metrics_sources();
    scrape::check_credentials(&sources.scrape, &sources.targets)?;
    let metrics = Arc::new(metrics::AgentMetrics::new());
    metrics
        .queue_budget_bytes
        .set(i64::try_from(config.queue_budget_bytes).unwrap_or(i64::MAX));
    let catalog = Arc::new(discover::Catalog::new(metrics.clone()));
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

    let tailer = tail::Tailer::new(config.tailer(), metrics.clone());
    tasks.spawn(tailer.clone().run(shutdown_rx.clone()));
    let pods = kube::start(&config.kube(), &metrics, &mut tasks, &shutdown_rx).await;
    tasks.spawn(discover::logs::run(
        config.logs(),
        catalog.clone(),
        tailer.clone(),
        pods.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(discover::metrics::run(
        sources,
        catalog.clone(),
        metrics.clone(),
        pods,
        shutdown_rx.clone(),
    ));

    let reload = tls.reload.clone();
    let client = tls_reload::client_config(tls)?;
    let uplink = uplink::Uplink::new(config.uplink(), client, catalog, tailer, metrics.clone())
        .map_err(StartError::Endpoint)?;
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
