//! A WebSocket client of the relay's `/v1/subscribe` (WS or WSS), used by every command and
//! by tests.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use logrelay_wire::batch::{self, BatchHeader, Kind};
use logrelay_wire::session::{Event, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `ws://` or `wss://` with a host and port.
    #[error("bad relay URL `{0}`: expected ws://host:port/v1/subscribe or wss://…")]
    Url(String),
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS failed (untrusted certificate, wrong name, …).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The relay refused the WebSocket upgrade (e.g. 401 without valid credentials).
    #[error("relay refused the session: HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The relay closed the session.
    #[error("relay closed the session: {code} {reason}")]
    Closed {
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// Nothing at all arrived for this long (the relay pings every 15 s by default).
    #[error("nothing received for {} s", .0.as_secs())]
    Idle(std::time::Duration),
    /// The relay sent something this client cannot read.
    #[error("unreadable message from relay: {0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One line as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedLine {
    /// Relay stream id.
    pub stream: u64,
    /// Epoch.
    pub epoch: u64,
    /// Sequence number.
    pub seq: u64,
    /// Unix nanoseconds.
    pub timestamp_ns: i64,
    /// Line flags.
    pub flags: batch::LineFlags,
    /// Message with terminator.
    pub message: Vec<u8>,
    /// Part of a backfill rather than the live tail.
    pub backfill: bool,
}

/// What the relay sent.
#[allow(
    clippy::large_enum_variant,
    reason = "one value at a time is handled, as it arrives"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A JSON event.
    Event(Event),
    /// The lines of one data message.
    Lines(Vec<ReceivedLine>),
    /// An in-band gap notice from the agent.
    AgentGap {
        /// Relay stream id.
        stream: u64,
        /// Epoch of the missing lines.
        epoch: u64,
        /// First missing sequence number.
        first_seq: u64,
        /// Lines missing (a lower bound unless `exact`).
        lines: u32,
        /// Whether `lines` is the exact count (false: lines rotated away uncounted).
        exact: bool,
        /// Bytes missing (0 when unknown).
        bytes: u64,
    },
}

/// A message as it arrived, batches left encoded (for printing at full speed).
#[allow(
    clippy::large_enum_variant,
    reason = "one value at a time is handled, as it arrives"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// A JSON event.
    Event(Event),
    /// A batch ([`logrelay_wire::batch`]), header not yet checked.
    Batch(bytes::Bytes),
}

/// A connected session.
pub struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url`; `roots` are trusted for `wss://`, `token` is sent as a bearer token.
    pub async fn connect(
        url: &str,
        roots: Option<rustls::RootCertStore>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(ClientError::Url(url.into()));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ClientError::Url(url.into()))?;
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: authority.into(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            logrelay_tls::install_provider();
            let roots = roots.unwrap_or_else(rustls::RootCertStore::empty);
            let config = logrelay_tls::https_client(roots)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|_| ClientError::Url(url.into()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                .connect(name, tcp)
                .await
                .map_err(|source| ClientError::Tls {
                    addr: authority.into(),
                    source,
                })?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let mut request = url
            .into_client_request()
            .map_err(|_| ClientError::Url(url.into()))?;
        if let Some(t) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Protocol("token is not a valid header".into()))?,
            );
        }
        match tokio_tungstenite::client_async(request, io).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tungstenite::Error::Http(resp)) => Err(ClientError::Refused {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request.
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let text = serde_json::to_string(req).expect("requests serialize");
        self.send_text(&text).await
    }

    /// Sends raw text (tests use it to send malformed requests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next event or data message; `None` when the relay closed normally.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ClientError> {
        match self.next_raw().await? {
            None => Ok(None),
            Some(Raw::Event(e)) => Ok(Some(Incoming::Event(e))),
            Some(Raw::Batch(b)) => decode(&b).map(Some),
        }
    }

    /// The next event or batch, the batch undecoded; `None` when the relay closed normally.
    /// Cancel-safe: dropping the future before it resolves loses no message.
    pub async fn next_raw(&mut self) -> Result<Option<Raw>, ClientError> {
        self.next_raw_idle(None).await
    }

    /// Like [`Self::next_raw`], failing with [`ClientError::Idle`] when nothing at all (not
    /// even a ping) arrives for `idle`.
    pub async fn next_raw_idle(
        &mut self,
        idle: Option<std::time::Duration>,
    ) -> Result<Option<Raw>, ClientError> {
        loop {
            let next = match idle {
                Some(d) => tokio::time::timeout(d, self.ws.next())
                    .await
                    .map_err(|_| ClientError::Idle(d))?,
                None => self.ws.next().await,
            };
            let Some(msg) = next else {
                return Ok(None);
            };
            match msg? {
                Message::Text(t) => match serde_json::from_str::<Event>(t.as_str()) {
                    Ok(e) => return Ok(Some(Raw::Event(e))),
                    // An event of a later protocol version: skipped, as unknown fields are.
                    Err(_) if is_unknown_event(t.as_str()) => continue,
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                },
                Message::Binary(b) => return Ok(Some(Raw::Batch(b))),
                Message::Close(Some(f)) => {
                    return Err(ClientError::Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    });
                }
                Message::Close(None) => return Ok(None),
                _ => {}
            }
        }
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// True when `text` is a JSON object whose `event` names no event this client knows.
fn is_unknown_event(text: &str) -> bool {
    const KNOWN: &[&str] = &[
        "welcome",
        "subscribed",
        "stream",
        "gap",
        "live",
        "paused",
        "resumed",
        "renumbered",
        "end",
        "unsubscribed",
        "streams",
        "catalog",
        "error",
    ];
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| {
        v.get("event")
            .and_then(|e| e.as_str())
            .is_some_and(|e| !KNOWN.contains(&e))
    })
}

/// Decodes a batch into its lines, or an agent's gap notice.
pub fn decode(b: &[u8]) -> Result<Incoming, ClientError> {
    let h = BatchHeader::parse(b).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if h.kind == Kind::Gap {
        return Ok(Incoming::AgentGap {
            stream: h.stream,
            epoch: h.epoch,
            first_seq: h.first_seq,
            lines: h.count,
            exact: h.flags & batch::FLAG_COUNT_UNKNOWN == 0,
            bytes: batch::gap_bytes(b).map_err(|e| ClientError::Protocol(e.to_string()))?,
        });
    }
    let (h, lines) = batch::lines(b).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Incoming::Lines(
        lines
            .into_iter()
            .map(|l| ReceivedLine {
                stream: h.stream,
                epoch: h.epoch,
                seq: l.seq,
                timestamp_ns: l.timestamp_ns,
                flags: l.flags,
                message: l.message.to_vec(),
                backfill: h.flags & batch::FLAG_BACKFILL != 0,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use logrelay_wire::session::Event;

    use super::is_unknown_event;

    #[test]
    fn events_of_later_versions_are_told_apart_from_broken_ones() {
        // Every event this version knows is "known".
        for e in [
            Event::Live { stream: 1 },
            Event::Paused {
                stream: 1,
                reason: logrelay_wire::reason::PauseReason::AgentDisconnected,
            },
            Event::Resumed { stream: 1 },
            Event::End {
                stream: 1,
                reason: logrelay_wire::reason::EndReason::Complete,
            },
            Event::Unsubscribed { id: "a".into() },
            Event::Streams {
                id: None,
                streams: Vec::new(),
            },
        ] {
            assert!(!is_unknown_event(&serde_json::to_string(&e).unwrap()));
        }
        assert!(is_unknown_event(r#"{"event":"teleported","stream":1}"#));
        assert!(
            !is_unknown_event(r#"{"event":"gap","stream":"x"}"#),
            "known but broken"
        );
        assert!(!is_unknown_event("not json"));
    }
}
