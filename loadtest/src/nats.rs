//! The baseline: the same scenario through `nats-server` (Debian package), started here on
//! 127.0.0.1 with ephemeral ports and a WebSocket listener. Publishers speak the NATS text
//! protocol over TCP, one connection and one subject per stream, publishing the very batch
//! bytes the relay path carries; subscribers speak it over the WebSocket listener. A minimal
//! hand-written client (this file) keeps the dependency tree lean: no second TLS stack.
//!
//! Protocol: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::corpus::{BatchMaker, Corpus, now_ns, observe_batch};
use crate::pace::Pacer;
use crate::stats::{ProducerStats, SubStats, record_ns};
use crate::subscriber::Behaviour;

/// Longest control line accepted.
const MAX_CONTROL_LINE: usize = 4096;

/// The subject of a stream.
pub fn subject(pod: &str) -> String {
    format!("logs.{pod}")
}

/// The server's configuration: loopback, ephemeral ports, plain WebSocket.
pub fn config_text() -> String {
    "listen: \"127.0.0.1:-1\"\n\
     max_payload: 4194304\n\
     websocket {\n  listen: \"127.0.0.1:-1\"\n  no_tls: true\n}\n"
        .to_owned()
}

/// A listener announced in the server's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// `Listening for client connections on 127.0.0.1:4222`.
    Client(SocketAddr),
    /// `Listening for websocket clients on ws://127.0.0.1:8080`.
    WebSocket(SocketAddr),
}

/// Reads a listener address off a log line.
pub fn parse_listening(line: &str) -> Option<Listening> {
    if let Some((_, a)) = line.split_once("Listening for client connections on ") {
        return a.trim().parse().ok().map(Listening::Client);
    }
    if let Some((_, a)) = line.split_once("Listening for websocket clients on ") {
        let a = a.trim();
        let a = a
            .strip_prefix("ws://")
            .or_else(|| a.strip_prefix("wss://"))
            .unwrap_or(a);
        return a.parse().ok().map(Listening::WebSocket);
    }
    None
}

/// A running nats-server.
#[derive(Debug)]
pub struct NatsServer {
    /// Process id.
    pub pid: u32,
    /// TCP client listener.
    pub client: SocketAddr,
    /// WebSocket listener.
    pub ws: SocketAddr,
    /// "Slow Consumer Detected" lines in its log.
    pub slow_consumers: Arc<AtomicU64>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` and waits until it is ready.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("loadtest-nats-")
            .tempdir()?;
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, config_text())?;
        let mut child = tokio::process::Command::new(nats_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting nats-server (Debian package `nats-server`: apt-get install nats-server)",
            )?;
        let pid = child.id().context("nats-server pid")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (mut client, mut ws) = (None, None);
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                match parse_listening(&line) {
                    Some(Listening::Client(a)) => client = Some(a),
                    Some(Listening::WebSocket(a)) => ws = Some(a),
                    None => {}
                }
                if line.contains("[FTL]") {
                    bail!("nats-server failed: {line}");
                }
                if line.contains("Server is ready") {
                    return Ok(());
                }
            }
            bail!("nats-server exited before it was ready")
        })
        .await
        .context("nats-server not ready within 15 s")?;
        ready?;
        let (Some(client), Some(ws)) = (client, ws) else {
            bail!("nats-server did not announce both listeners");
        };
        let slow_consumers = Arc::new(AtomicU64::new(0));
        let slow = slow_consumers.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Slow Consumer") {
                    slow.fetch_add(1, Ordering::Relaxed);
                } else if line.contains("[ERR]") || line.contains("[FTL]") {
                    eprintln!("nats-server: {line}");
                }
            }
        });
        Ok(Self {
            pid,
            client,
            ws,
            slow_consumers,
            child,
            _dir: dir,
        })
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// `nats-server` on PATH, or Debian's `/usr/sbin/nats-server` (not on a user's PATH).
pub fn nats_binary() -> std::path::PathBuf {
    let sbin = Path::new("/usr/sbin/nats-server");
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .find(|c| c.is_file())
    });
    on_path.unwrap_or_else(|| sbin.to_path_buf())
}

/// One server → client protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `INFO {json}`.
    Info(String),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        /// Subscription id.
        sid: u64,
        /// Payload.
        payload: Bytes,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '<message>'`.
    Err(String),
}

/// Why the byte stream is not the NATS protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A control line longer than [`MAX_CONTROL_LINE`].
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    /// An operation this client does not know, or a malformed one.
    #[error("unexpected protocol line `{0}`")]
    Unexpected(String),
}

/// Incremental parser: feed bytes in any split, take whole operations out.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
}

impl Parser {
    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, if buffered.
    pub fn next_op(&mut self) -> Result<Option<Op>, ProtoError> {
        let Some(nl) = memchr::memchr(b'\n', &self.buf[..self.buf.len().min(MAX_CONTROL_LINE)])
        else {
            if self.buf.len() >= MAX_CONTROL_LINE {
                return Err(ProtoError::LineTooLong);
            }
            return Ok(None);
        };
        let line = &self.buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        let (verb, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let op = match verb.to_ascii_uppercase().as_str() {
            "MSG" => {
                let args: Vec<&str> = rest.split_whitespace().collect();
                let (sid, len) = match args.as_slice() {
                    [_, sid, len] | [_, sid, _, len] => (sid.parse().ok(), len.parse().ok()),
                    _ => (None, None),
                };
                let (Some(sid), Some(len)) = (sid, len) else {
                    return Err(ProtoError::Unexpected(text));
                };
                let len: usize = len;
                if self.buf.len() < nl + 1 + len + 2 {
                    self.buf.reserve(nl + 1 + len + 2 - self.buf.len());
                    return Ok(None);
                }
                self.buf.advance(nl + 1);
                let payload = self.buf.split_to(len).freeze();
                if &self.buf[..2] != b"\r\n" {
                    return Err(ProtoError::Unexpected(
                        "payload not followed by CRLF".into(),
                    ));
                }
                self.buf.advance(2);
                return Ok(Some(Op::Msg { sid, payload }));
            }
            "PING" => Op::Ping,
            "PONG" => Op::Pong,
            "+OK" => Op::Ok,
            "-ERR" => Op::Err(rest.trim().trim_matches('\'').to_owned()),
            "INFO" => Op::Info(rest.to_owned()),
            _ => return Err(ProtoError::Unexpected(text)),
        };
        self.buf.advance(nl + 1);
        Ok(Some(op))
    }
}

/// The client's `CONNECT` line.
pub fn connect_line(name: &str) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":false}}\r\n"
    )
}

/// Publishes one stream's batches to `subject` until `stop`.
#[derive(Debug)]
pub struct Publisher {
    /// Server TCP address.
    pub addr: SocketAddr,
    /// Subject.
    pub subject: String,
    /// Text of the lines.
    pub corpus: Arc<Corpus>,
    /// Lines per second; `None`: unpaced.
    pub rate: Option<f64>,
    /// Batch size.
    pub batch_bytes: usize,
    /// Stream index (stamped in batch headers).
    pub stream: u64,
    /// Counters.
    pub stats: Arc<ProducerStats>,
}

impl Publisher {
    /// Connects, then publishes until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (mut rd, wr) = tcp.into_split();
        let mut wr = BufWriter::with_capacity(256 * 1024, wr);
        let mut parser = Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        wr.write_all(connect_line("loadtest-pub").as_bytes())
            .await?;
        wr.write_all(b"PING\r\n").await?;
        wr.flush().await?;
        // Wait for PONG: the connection is accepted.
        'hello: loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                bail!("nats-server closed the publisher connection");
            }
            parser.extend(&buf[..n]);
            while let Some(op) = parser.next_op()? {
                match op {
                    Op::Pong => break 'hello,
                    Op::Err(e) => bail!("nats-server refused the publisher: {e}"),
                    _ => {}
                }
            }
        }
        let (pong_tx, mut pong_rx) = mpsc::channel::<()>(4);
        let reader = tokio::spawn(async move {
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                parser.extend(&buf[..n]);
                while let Ok(Some(op)) = parser.next_op() {
                    match op {
                        Op::Ping => {
                            let _ = pong_tx.try_send(());
                        }
                        Op::Err(e) => eprintln!("nats-server to publisher: -ERR {e}"),
                        _ => {}
                    }
                }
            }
        });
        let mut maker = BatchMaker::new(self.stream, self.stream + 1, self.batch_bytes);
        let mut pacer = Pacer::new(self.rate);
        let mut header = Vec::with_capacity(64);
        loop {
            let stopped = *stop.borrow();
            if stopped {
                break;
            }
            if pong_rx.try_recv().is_ok() {
                wr.write_all(b"PONG\r\n").await?;
            }
            let Some(due) = pacer.due(&mut stop).await else {
                break;
            };
            while pacer.owed(due) > 0 {
                let Some((batch, n)) = maker.make(&self.corpus, pacer.owed(due), now_ns()) else {
                    break;
                };
                header.clear();
                header.extend_from_slice(
                    format!("PUB {} {}\r\n", self.subject, batch.len()).as_bytes(),
                );
                wr.write_all(&header).await?;
                wr.write_all(&batch).await?;
                wr.write_all(b"\r\n").await?;
                pacer.sent(u64::from(n));
                self.stats.lines.fetch_add(u64::from(n), Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if pacer.unpaced() {
                    break;
                }
            }
            wr.flush().await?;
        }
        let _ = wr.shutdown().await;
        reader.abort();
        Ok(())
    }
}

/// Subscribes over the WebSocket listener to each subject in `subjects` and consumes until
/// `stop`. Lines missing from a subject's sequence are counted as gaps (`nats_missing`).
pub async fn run_subscriber(
    url: String,
    subjects: Vec<String>,
    behaviour: Behaviour,
    every: u32,
    stats: Arc<SubStats>,
    ready: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let result: anyhow::Result<()> = async {
        // nats-server coalesces everything pending for a client into one WebSocket frame,
        // tens of MiB under load: accept frames as large as it may send.
        let config = WebSocketConfig::default()
            .max_message_size(Some(1 << 30))
            .max_frame_size(Some(1 << 30));
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                .await
                .context("connect")?;
        let mut hello = connect_line("loadtest-sub");
        for (i, s) in subjects.iter().enumerate() {
            hello.push_str(&format!("SUB {s} {}\r\n", i + 1));
        }
        hello.push_str("PING\r\n");
        ws.send(Message::binary(Bytes::from(hello))).await?;
        let mut parser = Parser::default();
        let mut next_seq: Vec<Option<u64>> = vec![None; subjects.len()];
        let mut announced = false;
        loop {
            if announced && behaviour == Behaviour::Stalled {
                let _ = stop.wait_for(|s| *s).await;
                break;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stop.wait_for(|s| *s) => break,
            };
            let data = match msg {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                Some(Ok(Message::Close(f))) => bail!("nats-server closed the session: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket: {e}"),
                None => bail!("nats-server closed the connection"),
            };
            parser.extend(&data);
            let now = now_ns();
            while let Some(op) = parser.next_op()? {
                match op {
                    Op::Msg { sid, payload } => {
                        let seen = {
                            let mut h = stats.latency.lock().expect("latency lock");
                            observe_batch(&payload, every, now, |ns| record_ns(&mut h, ns))
                        };
                        let Some(seen) = seen else {
                            bail!("malformed batch payload");
                        };
                        stats
                            .lines
                            .fetch_add(u64::from(seen.lines), Ordering::Relaxed);
                        stats
                            .bytes
                            .fetch_add(payload.len() as u64, Ordering::Relaxed);
                        if let Ok(h) = logrelay_wire::batch::BatchHeader::parse(&payload)
                            && let Some(slot) = next_seq.get_mut(sid.saturating_sub(1) as usize)
                        {
                            if let Some(want) = *slot
                                && h.first_seq > want
                            {
                                stats.gap("nats_missing", h.first_seq - want);
                            }
                            *slot = Some(h.end_seq());
                        }
                    }
                    Op::Ping => {
                        ws.send(Message::binary(Bytes::from_static(b"PONG\r\n")))
                            .await?
                    }
                    Op::Pong if !announced => {
                        announced = true;
                        stats
                            .streams_ready
                            .fetch_add(subjects.len() as u64, Ordering::Relaxed);
                        let _ = ready.send(()).await;
                    }
                    Op::Err(e) => bail!("-ERR {e}"),
                    _ => {}
                }
            }
            if let Behaviour::Slow(d) = behaviour {
                tokio::time::sleep(d).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        stats.fail(format!("{e:#}"));
    }
    // Never leave the orchestrator waiting (a second send is harmless: it counts distinct
    // subscribers by the ready counter, not messages).
    let _ = ready.try_send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_from_the_server_log() {
        assert_eq!(
            parse_listening(
                "[8216] 2026/11/27 10:39:37.536760 [INF] Listening for client connections on 127.0.0.1:44303"
            ),
            Some(Listening::Client("127.0.0.1:44303".parse().unwrap()))
        );
        assert_eq!(
            parse_listening(
                "[8216] 2026/11/27 10:39:37.536705 [INF] Listening for websocket clients on ws://127.0.0.1:33297"
            ),
            Some(Listening::WebSocket("127.0.0.1:33297".parse().unwrap()))
        );
        assert_eq!(parse_listening("[INF] Server is ready"), None);
        assert!(config_text().contains("no_tls: true"));
    }

    #[test]
    fn operations_parse_in_any_split() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nMSG logs.a 1 5\r\nhello\r\nPING\r\nMSG logs.b 2 reply.x 3\r\n\r\n!\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        let want = vec![
            Op::Info("{\"server_id\":\"x\"}".into()),
            Op::Ok,
            Op::Msg {
                sid: 1,
                payload: Bytes::from_static(b"hello"),
            },
            Op::Ping,
            Op::Msg {
                sid: 2,
                payload: Bytes::from_static(b"\r\n!"),
            },
            Op::Pong,
            Op::Err("Slow Consumer".into()),
        ];
        for chunk in 1..wire.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                p.extend(c);
                while let Some(op) = p.next_op().unwrap() {
                    got.push(op);
                }
            }
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut p = Parser::default();
        p.extend(b"BOGUS x\r\n");
        assert!(matches!(p.next_op(), Err(ProtoError::Unexpected(_))));
        let mut p = Parser::default();
        p.extend(b"MSG a b c\r\n");
        assert!(p.next_op().is_err());
        let mut p = Parser::default();
        p.extend(&vec![b'x'; MAX_CONTROL_LINE]);
        assert_eq!(p.next_op(), Err(ProtoError::LineTooLong));
        let mut p = Parser::default();
        p.extend(b"MSG s 1 2\r\nabXY");
        assert!(p.next_op().is_err());
    }
}
