//! The session listener: `/v1/subscribe` over WS, or WSS when a certificate is configured, and
//! the browser viewer's static files ([`crate::ui`]) on the same origin unless turned off.
//!
//! Every connection goes through one accept loop and [`Gate`], which keeps the connections
//! still in their handshake ([`crate::admission`]): capped per source and in all, the cap making
//! room by shedding the greediest source's connection rather than refusing newcomers; each must
//! send its first bytes within `--first-byte-timeout-ms` and finish its TLS handshake and
//! request head within `--handshake-timeout-secs` of its accept. Every connection serves one
//! request: a page, a refusal, or the upgrade to a session, then closes (no keep-alive, so a
//! refused client holds nothing). The bearer token is checked before the upgrade: a session
//! without valid credentials is refused with HTTP 401 and a one-line reason (default deny),
//! unless the relay has an anonymous org (development); a source holding
//! `--max-sessions-per-source` sessions gets 429.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{Admission, AdmissionConfig, Admitted, ConnId, Refused, SourceKey};
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
    /// Drain signal: sessions are told to reconnect to another relay (close code 4012).
    pub drain: watch::Receiver<bool>,
    /// Serve the browser viewer (`/`, `/ui/*`).
    pub ui: bool,
    /// Origins besides the relay's own whose pages may open sessions ([`crate::origin`]).
    pub allowed_origins: Vec<String>,
    /// Admission of connections and sessions per source (shared with [`serve`]).
    pub gate: Arc<Gate>,
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
    let router = if ui {
        router.merge(crate::ui::router())
    } else {
        router
    };
    router.layer(axum::middleware::map_response(close_after_reply))
}

/// Every reply but a session's upgrade closes its connection (`Connection: close`): a refused
/// or finished client holds nothing while it idles.
async fn close_after_reply(mut response: Response) -> Response {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

#[allow(
    clippy::disallowed_methods,
    reason = "token expiry is checked against wall-clock time"
)]
fn now_unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SessionApp {
    /// Counts a session refused before its upgrade (`logrelay_relay_sessions_refused_total`)
    /// and audits it as a denied `session_connect` from `remote`.
    fn refused(&self, remote: SocketAddr, reason: &'static str) {
        self.metrics.session_refused(reason);
        self.auditor.deny(
            &Actor::session(0, None),
            None,
            "session_connect",
            None,
            Some(remote),
            reason,
        );
    }
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
        app.refused(remote, "origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: this page's origin may not open sessions (see --allowed-origin)",
        );
    }
    // Credentials that are present but unusable are refused, never taken as "no token".
    let offered = authorization.is_some()
        || protocols.is_some_and(|p| p.contains(auth::BEARER_PROTOCOL_PREFIX));
    if offered && bearer.is_none() {
        app.refused(remote, "malformed");
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
                app.refused(remote, e.reason());
                let status =
                    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
                return refuse(status, &format!("unauthenticated: {e}"));
            }
        },
        (Some(_), None, _) => {
            app.refused(remote, "tokens_not_accepted");
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
            app.refused(remote, "token_missing");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated: a bearer token is required (Authorization header or \
                 Sec-WebSocket-Protocol `logrelay.v1, bearer.<token>`)",
            );
        }
    };
    let slot = match app.gate.open_session(remote) {
        Ok(slot) => slot,
        Err(refused) => {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "limit: {refused} (at most {} at once, see --max-sessions-per-source)",
                    app.gate.config().max_sessions_per_source
                ),
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
        .on_upgrade(move |socket| async move {
            // Counted against its source until the session ends.
            let _slot = slot;
            session::serve(
                socket,
                identity,
                session::SessionCtx {
                    hub: app.hub,
                    metrics: app.metrics,
                    auditor: app.auditor,
                    config: app.session,
                    shutdown: app.shutdown,
                    drain: app.drain,
                },
            )
            .await;
        })
}

/// Admission of session connections ([`Admission`]) with the means to close the pending
/// connections it sheds, its metrics and audit.
#[derive(Debug)]
pub struct Gate {
    inner: Mutex<GateInner>,
    metrics: Arc<RelayMetrics>,
    auditor: Arc<Auditor>,
}

#[derive(Debug)]
struct GateInner {
    admission: Admission,
    /// Each pending connection's task, to abort when it is shed, and its peer.
    tasks: HashMap<ConnId, (tokio::task::AbortHandle, SocketAddr)>,
}

impl Gate {
    /// A gate with these limits.
    pub fn new(config: AdmissionConfig, metrics: Arc<RelayMetrics>, auditor: Arc<Auditor>) -> Self {
        Self {
            inner: Mutex::new(GateInner {
                admission: Admission::new(config),
                tasks: HashMap::new(),
            }),
            metrics,
            auditor,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its limits.
    pub fn config(&self) -> AdmissionConfig {
        self.lock().admission.config()
    }

    /// Connections in their handshake now.
    pub fn pending(&self) -> usize {
        self.lock().admission.pending()
    }

    /// Counts a refusal or shed connection by `limit` (metric and audit, aggregated per source).
    fn limit(&self, limit: &'static str, remote: SocketAddr) {
        self.metrics.limit_hit(limit);
        self.auditor
            .limit_at(&Actor::session(0, None), None, limit, Some(remote));
    }

    /// Admits a connection accepted from `remote`, served by the task `spawn` starts with its
    /// ticket; `false` (and nothing spawned) when its source is over its cap.
    fn admit(
        self: &Arc<Self>,
        remote: SocketAddr,
        spawn: impl FnOnce(Pending) -> tokio::task::JoinHandle<()>,
    ) -> bool {
        let mut inner = self.lock();
        let Admitted { id, shed } = match inner.admission.admit(SourceKey::of(remote.ip())) {
            Ok(a) => a,
            Err(refused) => {
                drop(inner);
                self.limit(refused.limit(), remote);
                return false;
            }
        };
        let shed = shed.and_then(|s| inner.tasks.remove(&s.id));
        let task = spawn(Pending {
            gate: self.clone(),
            id,
        });
        inner.tasks.insert(id, (task.abort_handle(), remote));
        self.metrics
            .pending_handshakes
            .set(i64::try_from(inner.admission.pending()).unwrap_or(i64::MAX));
        drop(inner);
        if let Some((task, shed_remote)) = shed {
            task.abort();
            self.limit("pending_handshakes", shed_remote);
        }
        true
    }

    /// A session from `remote` is about to start: its slot, or the refusal (counted, audited).
    fn open_session(self: &Arc<Self>, remote: SocketAddr) -> Result<SessionSlot, Refused> {
        let source = SourceKey::of(remote.ip());
        let opened = self.lock().admission.open_session(source);
        match opened {
            Ok(()) => Ok(SessionSlot {
                gate: self.clone(),
                source,
            }),
            Err(refused) => {
                self.limit(refused.limit(), remote);
                Err(refused)
            }
        }
    }
}

/// A pending connection's ticket: released when dropped (the connection was upgraded,
/// answered, closed, timed out, or aborted because it was shed).
#[derive(Debug)]
struct Pending {
    gate: Arc<Gate>,
    id: ConnId,
}

impl Pending {
    fn spoke(&self) {
        self.gate.lock().admission.spoke(self.id);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.admission.release(self.id);
        inner.tasks.remove(&self.id);
        self.gate
            .metrics
            .pending_handshakes
            .set(i64::try_from(inner.admission.pending()).unwrap_or(i64::MAX));
    }
}

/// A session counted against its source until dropped.
#[derive(Debug)]
struct SessionSlot {
    gate: Arc<Gate>,
    source: SourceKey,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.gate.lock().admission.close_session(self.source);
    }
}

/// Options of accepted session connections.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// `SO_SNDBUF` (0: leave the OS default).
    pub send_buffer_bytes: usize,
    /// Deadline for the first bytes (TLS hello or request), from the accept.
    pub first_byte_timeout: Duration,
    /// Deadline for the TLS handshake and the request head, from the accept.
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

/// Serves `router` on `listener`, over TLS when `tls` is set, until shutdown or drain (the
/// listener is closed then, so new connections are refused and go to another relay). Every
/// accepted connection goes through `gate` first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<crate::reload::SharedServerConfig>,
    options: SocketOptions,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
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
            () = crate::stopped(&mut drain) => return,
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "the accept loop times handshakes"
        )]
        let accepted_at = tokio::time::Instant::now();
        // The configuration in force now: a reload applies to the next handshakes.
        let acceptor = tls.as_ref().map(|shared| {
            tokio_rustls::TlsAcceptor::from(shared.read().expect("wss config lock").clone())
        });
        let service = hyper_util::service::TowerToHyperService::new(
            router.clone().layer(axum::Extension(ConnectInfo(remote))),
        );
        let admitted = gate.admit(remote, |pending| {
            tokio::spawn(connection(
                tcp,
                remote,
                pending,
                acceptor,
                service,
                options,
                accepted_at,
            ))
        });
        if !admitted {
            tracing::debug!(%remote, "connection refused: its source holds its pending cap");
        }
    }
}

/// Serves one connection: first bytes, TLS handshake and request head under their deadlines,
/// then one request (a page, a refusal or a session's upgrade), then closes.
async fn connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    pending: Pending,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    service: hyper_util::service::TowerToHyperService<Router>,
    options: SocketOptions,
    accepted_at: tokio::time::Instant,
) {
    let gate = pending.gate.clone();
    let mut probe = [0u8; 1];
    match tokio::time::timeout_at(
        accepted_at + options.first_byte_timeout,
        tcp.peek(&mut probe),
    )
    .await
    {
        Ok(Ok(n)) if n > 0 => pending.spoke(),
        Ok(_) => return,
        Err(_) => {
            gate.limit("first_byte_timeout", remote);
            return;
        }
    }
    options.apply(&tcp);
    let http = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(options.handshake_timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .to_owned();
    let served = tokio::time::timeout_at(accepted_at + options.handshake_timeout, async {
        match acceptor {
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(tls) => http
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("TLS handshake failed: {e}")),
            },
            None => http
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades()
                .await
                .map_err(|e| e.to_string()),
        }
    })
    .await;
    // The connection future ends once its one request is answered, or at the upgrade: the
    // ticket covered the handshake and the request only.
    drop(pending);
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "session connection ended"),
        Err(_) => gate.limit("handshake_timeout", remote),
    }
}
