//! The logrelay relay: stateless, in memory only.
//!
//! Pipeline stages, one module each:
//! * [`ingest`] accepts agents over QUIC (mTLS; org and cluster from the certificate);
//! * [`hub`] decides who reads which stream from where (a pure core and a thin shell);
//! * [`fanout`] is the bounded [`ring`] of each stream that ingest pushes to and session
//!   writers drain, without the hub;
//! * [`session`] serves WebSocket sessions, one writer per session draining its outbox;
//! * [`http`] is the session listener (WS/WSS), which also serves the browser viewer [`ui`];
//!   [`admin`] serves `/metrics`, `/healthz`, `/readyz`, and [`metrics`] owns every metric name.
//!
//! The relay writes no file: log content lives only in rings and socket buffers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod backplane;
pub mod config;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod ids;
pub mod ingest;
pub mod metrics;
pub mod origin;
pub mod reload;
pub mod ring;
pub mod sandbox;
pub mod session;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::RelayConfig;

/// Listen backlog of the session listener (the kernel caps it at `net.core.somaxconn`).
pub const SESSION_ACCEPT_BACKLOG: u32 = 4096;

/// TLS material of a relay.
#[derive(Debug)]
pub struct RelayTls {
    /// The relay's certificate for agents (QUIC).
    pub quic_identity: logrelay_tls::Identity,
    /// CAs that sign agent certificates.
    pub agent_roots: rustls::RootCertStore,
    /// The certificate for WSS, if sessions use TLS.
    pub wss: Option<logrelay_tls::Identity>,
    /// The files this material came from, watched and reloaded when they change.
    pub reload: Option<reload::TlsFiles>,
}

/// The QUIC server configuration for agents: mTLS against `agent_roots`, transport limits
/// ([`logrelay_tls::quic_server_transport`]).
pub fn quic_server_config(
    identity: logrelay_tls::Identity,
    agent_roots: rustls::RootCertStore,
) -> Result<quinn::ServerConfig, logrelay_tls::TlsError> {
    let mut server = logrelay_tls::quic_server(identity, agent_roots)?;
    server.transport_config(Arc::new(logrelay_tls::quic_server_transport()));
    Ok(server)
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] logrelay_tls::TlsError),
    /// The session token key set could not be loaded.
    #[error("cannot load session token keys from {path}: {reason}")]
    TokenKeys {
        /// The JWKS file (or `dev secret`).
        path: String,
        /// Why.
        reason: String,
    },
    /// The audit trail could not be started.
    #[error("cannot start the audit trail: {0}")]
    Audit(std::io::Error),
    /// The NATS backplane's configuration is unusable.
    #[error(transparent)]
    Backplane(#[from] backplane::BackplaneError),
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    /// QUIC address agents dial.
    pub quic_addr: SocketAddr,
    /// Session listener address.
    pub http_addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// The relay's metrics.
    pub metrics: Arc<metrics::RelayMetrics>,
    /// True when sessions use WSS.
    pub wss: bool,
    /// The NATS backplane, when `--nats-url` is set.
    pub backplane: Option<backplane::Backplane>,
    ui: bool,
    shutdown: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
    auditor: Arc<audit::Auditor>,
    otlp: Option<Arc<audit::otlp::OtlpAuditExporter>>,
}

impl RelayHandle {
    /// Drains the relay (a rolling update): `/readyz` answers 503, new agents and sessions are
    /// refused, connected agents are told to reconnect to another relay (QUIC close code
    /// [`AppCode::Move`](logrelay_wire::code::AppCode::Move)) and sessions likewise (WebSocket close code
    /// [`logrelay_wire::session::close::RECONNECT`]). Returns once every agent and session has
    /// gone (true) or `deadline` passed (false); [`RelayHandle::shutdown`] then ends the rest.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let _ = self.ready.send(false);
        let _ = self.drain.send(true);
        tracing::info!(
            deadline_secs = deadline.as_secs(),
            "draining: agents and sessions told to move"
        );
        let gone = tokio::time::timeout(deadline, async {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if self.metrics.agents_connected.get() == 0
                    && self.metrics.sessions_connected.get() == 0
                {
                    return;
                }
            }
        })
        .await
        .is_ok();
        if !gone {
            tracing::warn!(
                agents = self.metrics.agents_connected.get(),
                sessions = self.metrics.sessions_connected.get(),
                "drain deadline passed: closing what is left"
            );
        }
        gone
    }

    /// Closes every connection and waits until the listeners are released.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(bp) = self.backplane.take() {
            bp.close(Duration::from_secs(1)).await;
        }
        while self.tasks.join_next().await.is_some() {}
        self.endpoint.close(
            logrelay_wire::code::AppCode::Shutdown.code().into(),
            b"relay shutting down",
        );
        self.endpoint.wait_idle().await;
        // Summary lines still held, and what the stdout queue has not written yet.
        let auditor = self.auditor.clone();
        let written =
            tokio::task::spawn_blocking(move || auditor.flush_all(Duration::from_secs(2))).await;
        if !matches!(written, Ok(true)) {
            tracing::warn!("audit: trail not completely written at shutdown");
        }
        if let Some(otlp) = self.otlp.take() {
            let flushed = tokio::task::spawn_blocking(move || otlp.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "audit: OTLP flush incomplete");
            }
        }
    }

    /// The WebSocket URL of `/v1/subscribe`.
    pub fn subscribe_url(&self) -> String {
        let scheme = if self.wss { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/subscribe", self.http_addr)
    }

    /// The browser viewer's URL (`http(s)://<http-addr>/`), unless it is turned off.
    pub fn ui_url(&self) -> Option<String> {
        let scheme = if self.wss { "https" } else { "http" };
        self.ui.then(|| format!("{scheme}://{}/", self.http_addr))
    }
}

/// Binds every listener and starts serving, with the audit trail on stdout (and exported over
/// OTLP when `audit_otlp_endpoint` is set).
pub async fn start(config: RelayConfig, tls: RelayTls) -> Result<RelayHandle, StartError> {
    let mut auditor = audit::Auditor::stdout().map_err(StartError::Audit)?;
    let mut otlp = None;
    if let Some(endpoint) = &config.audit_otlp_endpoint {
        let exporter = Arc::new(
            audit::otlp::OtlpAuditExporter::new(
                endpoint,
                "logrelay-relay",
                audit::DEFAULT_QUEUE_EVENTS,
            )
            .map_err(|e| StartError::Audit(std::io::Error::other(e.to_string())))?,
        );
        auditor = auditor.with_sink(exporter.clone());
        otlp = Some(exporter);
    }
    let mut handle = start_with_auditor(config, tls, Arc::new(auditor)).await?;
    handle.otlp = otlp;
    Ok(handle)
}

/// The session token verifier the configuration asks for, if any.
pub fn token_verifier(config: &RelayConfig) -> Result<Option<auth::Verifier>, StartError> {
    let auth_config = auth::AuthConfig {
        issuer: config.token_issuer.clone(),
        audience: config.token_audience.clone(),
        clock_skew_secs: config.token_clock_skew_secs,
        max_lifetime_secs: config.max_token_lifetime_secs,
        ..auth::AuthConfig::default()
    };
    let err = |path: &str, reason: String| StartError::TokenKeys {
        path: path.to_owned(),
        reason,
    };
    let keys = match &config.token_jwks_file {
        Some(path) => {
            let shown = path.display().to_string();
            let json = std::fs::read(path).map_err(|e| err(&shown, e.to_string()))?;
            Some(auth::KeySet::from_jwks(&json).map_err(|e| err(&shown, e.to_string()))?)
        }
        None => None,
    };
    let keys = match (&config.dev_token_secret, keys) {
        (Some(secret), Some(keys)) => Some(
            keys.with_dev_hs256_secret(secret.as_bytes())
                .map_err(|e| err("dev secret", e.to_string()))?,
        ),
        (Some(secret), None) => Some(
            auth::KeySet::dev_hs256_only(secret.as_bytes())
                .map_err(|e| err("dev secret", e.to_string()))?,
        ),
        (None, keys) => keys,
    };
    Ok(keys.map(|k| auth::Verifier::new(auth_config, k)))
}

/// [`start`] with a given audit trail (tests capture it).
pub async fn start_with_auditor(
    config: RelayConfig,
    tls: RelayTls,
    auditor: Arc<audit::Auditor>,
) -> Result<RelayHandle, StartError> {
    logrelay_tls::install_provider();
    let verifier = token_verifier(&config)?.map(Arc::new);
    let metrics = Arc::new(metrics::RelayMetrics::new());
    auditor.aggregate(audit::aggregate::AggregateConfig {
        interval: Duration::from_secs(config.audit_aggregate_secs.max(1)),
        max_keys: config.audit_max_offenders.max(1),
    });
    metrics.report_audit(auditor.clone());
    let backplane = if config.backplane.enabled() {
        Some(backplane::Backplane::connect(&config.backplane, metrics.backplane.clone()).await?)
    } else {
        None
    };
    let hub = hub::Hub::new(config.hub(), metrics.clone());
    if let Some(bp) = &backplane {
        // Sessions here see and watch the streams of agents on every relay.
        hub.attach_backplane(bp);
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    // A stateless-reset key derived from the relay's key: restarted with the same key, the
    // relay resets the connections of its previous life at their next packet.
    let endpoint_config = logrelay_tls::quic_endpoint_config(tls.quic_identity.key.secret_der());
    let transport = Arc::new(logrelay_tls::quic_server_transport_with(
        config.quic_timers(),
    ));
    let mut server = quic_server_config(tls.quic_identity, tls.agent_roots)?;
    server.transport_config(transport.clone());
    let bind_quic = |source| StartError::Bind {
        what: "QUIC listener",
        addr: config.quic_addr,
        source,
    };
    let socket = std::net::UdpSocket::bind(config.quic_addr).map_err(bind_quic)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_quic(std::io::Error::other("no async runtime")))?;
    let endpoint =
        quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_quic)?;
    let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        what: "QUIC listener",
        addr: config.quic_addr,
        source,
    })?;

    let bind = |what: &'static str, addr: SocketAddr, backlog: u32| {
        let err = |source| StartError::Bind { what, addr, source };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.bind(addr).map_err(err)?;
        let l = socket.listen(backlog).map_err(err)?;
        let local = l.local_addr().map_err(err)?;
        Ok::<_, StartError>((l, local))
    };
    // A deep accept queue for sessions: a flood of connections waits there instead of having
    // the kernel drop other clients' SYNs (the accept loop sheds floods, see `admission`).
    let (http, http_addr) = bind("session listener", config.http_addr, SESSION_ACCEPT_BACKLOG)?;
    let (admin, admin_addr) = bind("admin listener", config.admin_addr, 1024)?;

    let wss: Option<reload::SharedServerConfig> = match tls.wss {
        Some(id) => Some(Arc::new(std::sync::RwLock::new(
            logrelay_tls::https_server(id)?,
        ))),
        None => None,
    };
    if let Some(files) = tls.reload {
        tasks.spawn(reload::watch_files(
            files,
            endpoint.clone(),
            transport.clone(),
            wss.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    let is_wss = wss.is_some();
    let session_cfg = session::SessionConfig {
        flush_bytes: config.session_flush_bytes,
        ping: Duration::from_secs(config.ping_secs.max(1)),
        slow_consumer: config.slow_consumer,
        requests_per_sec: config.session_requests_per_sec,
    };
    for (name, value) in [
        (
            "subscriptions_per_session",
            config.max_subscriptions_per_session,
        ),
        ("sessions_per_org", config.max_sessions_per_org),
        ("frame_bytes", config.max_frame_bytes as usize),
        ("session_message_bytes", config.max_session_message_bytes),
        (
            "session_requests_per_sec",
            config.session_requests_per_sec as usize,
        ),
        ("memory_budget_bytes", config.memory_budget_bytes),
        ("ring_bytes", config.ring_bytes),
        ("pending_handshakes", config.max_pending_handshakes),
        (
            "pending_handshakes_per_source",
            config.max_pending_handshakes_per_source,
        ),
        ("sessions_per_source", config.max_sessions_per_source),
        ("demands_per_agent", config.max_demands_per_agent),
        ("demands_per_org", config.max_demands_per_org),
        ("streams_per_agent", config.max_streams_per_agent),
        ("streams_per_org", config.max_streams_per_org),
        ("label_bytes_per_stream", config.max_label_bytes_per_stream),
        ("label_bytes_per_agent", config.max_label_bytes_per_agent),
        ("agent_violations", config.max_agent_violations as usize),
    ] {
        metrics.set_limit(name, value);
    }
    let gate = Arc::new(http::Gate::new(
        admission::AdmissionConfig {
            max_pending: config.max_pending_handshakes,
            max_pending_per_source: config.max_pending_handshakes_per_source,
            max_sessions_per_source: config.max_sessions_per_source,
        },
        metrics.clone(),
        auditor.clone(),
    ));
    let app = http::SessionApp {
        hub: hub.clone(),
        metrics: metrics.clone(),
        auditor: auditor.clone(),
        verifier,
        anonymous_org: config.anonymous_org.clone(),
        session: session_cfg,
        max_message_bytes: config.max_session_message_bytes,
        write_buffer_bytes: config.session_write_buffer_bytes,
        shutdown: shutdown_rx.clone(),
        drain: drain_rx.clone(),
        ui: config.ui,
        allowed_origins: config.allowed_origins.clone(),
        gate: gate.clone(),
    };
    let socket_options = http::SocketOptions {
        send_buffer_bytes: config.session_send_buffer_bytes,
        first_byte_timeout: Duration::from_millis(config.first_byte_timeout_ms.max(1)),
        handshake_timeout: Duration::from_secs(config.handshake_timeout_secs.max(1)),
    };
    tasks.spawn(http::serve(
        http,
        http::router(app),
        wss,
        socket_options,
        gate,
        shutdown_rx.clone(),
        drain_rx.clone(),
    ));
    // Summary lines of the audit aggregation, once their interval is over.
    let mut audit_shutdown = shutdown_rx.clone();
    let audit_flush = auditor.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => audit_flush.flush_due(),
                () = stopped(&mut audit_shutdown) => return,
            }
        }
    });
    let admin_router = admin::router(metrics.clone(), ready_rx);
    let mut admin_shutdown = shutdown_rx.clone();
    tasks.spawn(async move {
        let r = axum::serve(admin, admin_router)
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tasks.spawn(ingest::run(
        endpoint.clone(),
        hub,
        metrics.clone(),
        auditor.clone(),
        ingest::IngestConfig {
            max_frame_bytes: config.max_frame_bytes,
            heartbeat_secs: config.agent_heartbeat_secs,
            max_violations: config.max_agent_violations,
        },
        backplane.clone(),
        shutdown_rx,
        drain_rx,
    ));
    let _ = ready_tx.send(true);
    tracing::info!(%quic_addr, %http_addr, %admin_addr, wss = is_wss, "relay listening");
    Ok(RelayHandle {
        quic_addr,
        http_addr,
        admin_addr,
        metrics,
        wss: is_wss,
        backplane,
        ui: config.ui,
        shutdown,
        drain,
        ready: ready_tx,
        tasks,
        endpoint,
        auditor,
        otlp: None,
    })
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
