//! The session listener: `/v1/subscribe` over WS, or WSS when a certificate is configured, and
//! the browser viewer's static files ([`crate::ui`]) on the same origin unless turned off.
//!
//! Every connection goes through one accept loop: optional TLS handshake and HTTP request head,
//! both under a deadline and a cap on connections still in that phase (floods of idle or
//! slow connections cannot pile up), then the upgrade. The bearer token is checked before the
//! upgrade: a session without valid credentials is refused with HTTP 401 and a one-line reason
//! (default deny), unless the relay has an anonymous org (development).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::audit::{Actor, Auditor};
use crate::auth::{self, Verifier};
use crate::hub::Hub;
use crate::metrics::RelayMetrics;
use crate::session::{self, SessionConfig, SessionIdentity};

/// Shared state of the session listener.
#[derive(Debug, Clone)]
pub struct SessionApp {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<RelayMetrics>,
    /// The audit trail.
    pub auditor: Arc<Auditor>,
    /// Token verifier (`None`: no token is accepted).
    pub verifier: Option<Arc<Verifier>>,
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
    /// Serve the browser viewer (`/`, `/ui/*`).
    pub ui: bool,
    /// Origins besides the relay's own whose pages may open sessions ([`crate::origin`]).
    pub allowed_origins: Vec<String>,
}

/// Read buffer of a session's WebSocket.
const SESSION_READ_BUFFER_BYTES: usize = 4 * 1024;

/// The session router: `/v1/subscribe`, and the viewer's routes when `app.ui` is set (every
/// other path is 404). All of it is served by [`serve`]'s one accept loop, under the same
/// handshake deadline and cap.
pub fn router(app: SessionApp) -> Router {
    let ui = app.ui;
    let router = Router::new()
        .route("/v1/subscribe", get(subscribe))
        .with_state(app);
    if ui {
        router.merge(crate::ui::router())
    } else {
        router
    }
}

fn now_unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

async fn subscribe(
    State(app): State<SessionApp>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let protocols = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let bearer = auth::token_from_headers(authorization, protocols);
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(origin, host, &app.allowed_origins) {
        app.metrics.session_refused("origin");
        app.auditor.deny(
            &Actor::session(0, None),
            None,
            "session_connect",
            None,
            Some(remote),
            "origin",
        );
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: this page's origin may not open sessions (see --allowed-origin)",
        );
    }
    let anonymous = Actor::session(0, None);
    // Credentials that are present but unusable are refused, never taken as "no token".
    let offered = authorization.is_some()
        || protocols.is_some_and(|p| p.contains(auth::BEARER_PROTOCOL_PREFIX));
    if offered && bearer.is_none() {
        app.metrics.session_refused("malformed");
        app.auditor.deny(
            &anonymous,
            None,
            "session_connect",
            None,
            Some(remote),
            "malformed",
        );
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated: malformed credentials (expected `Authorization: Bearer <jwt>` or \
             `Sec-WebSocket-Protocol: logrelay.v1, bearer.<jwt>`)",
        );
    }
    let identity = match (&bearer, &app.verifier, &app.anonymous_org) {
        (Some(b), Some(verifier), _) => match verifier.verify(b.token, now_unix_secs()) {
            Ok(claims) => SessionIdentity {
                org: claims.org.clone(),
                expires_at_unix: Some(verifier.expires_at(&claims)),
                claims: Some(Arc::new(claims)),
                remote,
            },
            Err(e) => {
                app.metrics.session_refused(e.reason());
                app.auditor.deny(
                    &anonymous,
                    None,
                    "session_connect",
                    None,
                    Some(remote),
                    e.reason(),
                );
                let status =
                    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
                return refuse(status, &format!("unauthenticated: {e}"));
            }
        },
        (Some(_), None, _) => {
            app.metrics.session_refused("tokens_not_accepted");
            app.auditor.deny(
                &anonymous,
                None,
                "session_connect",
                None,
                Some(remote),
                "tokens_not_accepted",
            );
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated: this relay has no token key set configured",
            );
        }
        (None, _, Some(org)) => SessionIdentity {
            org: org.clone(),
            claims: None,
            expires_at_unix: None,
            remote,
        },
        (None, _, None) => {
            app.metrics.session_refused("token_missing");
            app.auditor.deny(
                &anonymous,
                None,
                "session_connect",
                None,
                Some(remote),
                "token_missing",
            );
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated: a bearer token is required (Authorization header or \
                 Sec-WebSocket-Protocol `logrelay.v1, bearer.<token>`)",
            );
        }
    };
    // Echo `logrelay.v1` whenever it is offered, with or without a token: a browser that offers
    // a subprotocol fails the connection unless the server picks one.
    let ws = if auth::select_subprotocol(protocols).is_some() {
        ws.protocols([auth::SUBPROTOCOL])
    } else {
        ws
    };
    // Sessions send only small JSON requests: a small read buffer (tungstenite's default is
    // 128 KiB per connection, which 1000 idle sessions would pay for nothing).
    ws.read_buffer_size(SESSION_READ_BUFFER_BYTES)
        .max_message_size(app.max_message_bytes)
        .max_frame_size(app.max_message_bytes)
        // Written out once this full; a stalled socket holds at most this plus one message.
        .write_buffer_size(app.write_buffer_bytes)
        .max_write_buffer_size(app.write_buffer_bytes + 2 * 1024 * 1024)
        .on_upgrade(move |socket| {
            session::serve(
                socket,
                identity,
                session::SessionCtx {
                    hub: app.hub,
                    metrics: app.metrics,
                    auditor: app.auditor,
                    config: app.session,
                    shutdown: app.shutdown,
                },
            )
        })
}

/// Options of accepted session connections.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// `SO_SNDBUF` (0: leave the OS default).
    pub send_buffer_bytes: usize,
    /// Connections allowed in their TLS handshake or request head at once.
    pub max_pending_handshakes: usize,
    /// Deadline for the TLS handshake and the request head.
    pub handshake_timeout: Duration,
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
    tls: Option<crate::reload::SharedServerConfig>,
    options: SocketOptions,
    metrics: Arc<RelayMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(options.max_pending_handshakes.max(1)));
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
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics.limit_hit("pending_handshakes");
            drop(tcp);
            continue;
        };
        options.apply(&tcp);
        // The configuration in force now: a reload applies to the next handshakes.
        let acceptor = tls.as_ref().map(|shared| {
            tokio_rustls::TlsAcceptor::from(shared.read().expect("wss config lock").clone())
        });
        let service = hyper_util::service::TowerToHyperService::new(
            router.clone().layer(axum::Extension(ConnectInfo(remote))),
        );
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(options.handshake_timeout)
                .timer(hyper_util::rt::TokioTimer::new())
                .to_owned();
            let result = match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp))
                            .await
                        {
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
                    http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .with_upgrades()
                        .await
                }
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await
                }
            };
            // The connection future ends at the upgrade: the permit covered the handshake and
            // the request head only.
            drop(permit);
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "session connection ended");
            }
        });
    }
}
