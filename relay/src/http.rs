//! The session listener: `/v1/subscribe` over WS, or WSS when a certificate is configured.

use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::metrics::RelayMetrics;
use crate::session::{self, SessionConfig};

/// Shared state of the session listener.
#[derive(Debug, Clone)]
pub struct SessionApp {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<RelayMetrics>,
    /// Org of sessions without credentials (`None`: refuse them).
    pub anonymous_org: Option<String>,
    /// Session settings.
    pub session: SessionConfig,
    /// Largest message accepted from a session.
    pub max_message_bytes: usize,
    /// WebSocket write buffer of a session.
    pub write_buffer_bytes: usize,
    /// Shutdown signal.
    pub shutdown: watch::Receiver<bool>,
}

/// The session router.
pub fn router(app: SessionApp) -> Router {
    Router::new()
        .route("/v1/subscribe", get(subscribe))
        .with_state(app)
}

async fn subscribe(State(app): State<SessionApp>, ws: WebSocketUpgrade) -> Response {
    let Some(org) = app.anonymous_org.clone() else {
        return (
            StatusCode::UNAUTHORIZED,
            "unauthenticated: this relay accepts no anonymous sessions\n",
        )
            .into_response();
    };
    ws.max_message_size(app.max_message_bytes)
        .max_frame_size(app.max_message_bytes)
        // Written out once this full; a stalled socket holds at most this plus one message.
        .write_buffer_size(app.write_buffer_bytes)
        .max_write_buffer_size(app.write_buffer_bytes + 2 * 1024 * 1024)
        .on_upgrade(move |socket| {
            session::serve(socket, org, app.hub, app.metrics, app.session, app.shutdown)
        })
}

/// Socket options of accepted session connections.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// `SO_SNDBUF` (0: leave the OS default).
    pub send_buffer_bytes: usize,
}

impl SocketOptions {
    fn apply(self, tcp: &tokio::net::TcpStream) {
        let _ = tcp.set_nodelay(true);
        if self.send_buffer_bytes > 0
            && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(self.send_buffer_bytes)
        {
            tracing::warn!(error = %e, "cannot set session send buffer size");
        }
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is set, until shutdown.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: SocketOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(move |tcp| options.apply(tcp));
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "session listener failed");
        }
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => return,
        };
        options.apply(&tcp);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "session connection ended");
            }
        });
    }
}
