//! A minimal HTTP/1.1 client for scrapes: one `GET` per connection, bounded in bytes and time.
//!
//! Only what a scrape needs (RFC 9112): `http://` and `https://` URLs, a `Connection: close`
//! request with an optional `Authorization` header, a response framed by `Content-Length`,
//! `Transfer-Encoding: chunked` or the end of the connection, identity content coding. The head
//! is capped at [`MAX_HEAD_BYTES`], the body at the caller's limit; the whole exchange (TCP
//! connect and TLS handshake included) at the caller's timeout. TLS is rustls with the *ring*
//! provider, configured by [`super::auth`]. [`parse_head`] and [`ChunkedDecoder`] are pure and
//! tested without sockets.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// How a target is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    #[default]
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port of a URL that names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// An `http://` or `https://` URL: scheme, host, port and the request target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 or 443 when the URL has none).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `http://` nor `https://`.
    #[error("only http:// and https:// URLs can be scraped: {0}")]
    Scheme(String),
    /// No host, a bad port, or characters that cannot go in a request line.
    #[error("malformed URL: {0}")]
    Malformed(String),
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let bad = || UrlError::Malformed(s.to_owned());
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some(_) => return Err(UrlError::Scheme(s.to_owned())),
            None => return Err(bad()),
        };
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad());
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.split('#').next().unwrap_or("/").to_owned()
        };
        if authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => scheme.default_port(),
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl Url {
    /// `host:port` as it goes into a `Host` header (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path
        )
    }
}

/// What a request carries besides its URL: the TLS client of an `https://` target and the
/// `Authorization` header value. Its `Debug` form never shows the header's value.
#[derive(Clone, Default)]
pub struct Credentials {
    /// TLS configuration and the name the certificate must carry (`https://` only).
    pub tls: Option<TlsClient>,
    /// `Authorization` header value (`Bearer <token>`), if any.
    pub authorization: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A TLS client for one target.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// rustls configuration (roots, or no verification when asked).
    pub config: Arc<rustls::ClientConfig>,
    /// Name checked against the certificate and sent as SNI (when a DNS name).
    pub server_name: ServerName<'static>,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// `Content-Encoding`, if sent and not `identity`.
    pub content_encoding: Option<String>,
    /// Body framing.
    pub framing: Framing,
}

/// Why a scrape request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, no common version…).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// Reading or writing the connection failed.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// The exchange did not complete within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The response head is not HTTP/1.x or is malformed.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head is larger than [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The status is not 200 (Prometheus accepts nothing else).
    #[error("server returned HTTP status {0}")]
    Status(u16),
    /// The body is larger than the target's limit.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The body is compressed although `identity` was asked for.
    #[error("unsupported content encoding {0:?}")]
    Encoding(String),
    /// The connection closed before the body was complete.
    #[error("connection closed before the end of the body")]
    Truncated,
}

/// Parses a response head from the start of `buf`: `Ok(None)` while incomplete, else the head
/// and its length (through the empty line).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut head = Head {
        status,
        content_type: None,
        content_encoding: None,
        framing: Framing::UntilClose,
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without ':'"))?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 §6.1: chunked must be the final coding; anything else is unusable here.
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(HttpError::Malformed("unsupported Transfer-Encoding"));
            }
            if value.contains(',') {
                return Err(HttpError::Encoding(value.to_owned()));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            head.content_encoding = Some(value.to_owned());
        }
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    head.framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    Ok(Some((head, end + 4)))
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CRLF.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailer,
    /// Done.
    Done,
}

impl ChunkedDecoder {
    /// Decodes `input`, appending data to `out`. Returns how many bytes of `input` were used
    /// (fewer than all only once the body is complete); refuses a body beyond `max_bytes`.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    if out.len() + n > max_bytes {
                        return Err(HttpError::BodyTooLarge(max_bytes));
                    }
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(nl) = memchr::memchr(b'\n', &input[i..]) else {
                        self.take_line(&input[i..])?;
                        return Ok(input.len());
                    };
                    self.take_line(&input[i..i + nl])?;
                    i += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::Size => {
                            let size = line.split(|&b| b == b';').next().unwrap_or_default();
                            let size = std::str::from_utf8(size)
                                .ok()
                                .map(|s| s.trim_matches([' ', '\t']))
                                .filter(|s| !s.is_empty())
                                .and_then(|s| u64::from_str_radix(s, 16).ok())
                                .ok_or(HttpError::Malformed("bad chunk size"))?;
                            if size == 0 {
                                ChunkState::Trailer
                            } else if out.len() as u64 + size > max_bytes as u64 {
                                return Err(HttpError::BodyTooLarge(max_bytes));
                            } else {
                                ChunkState::Data(size)
                            }
                        }
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err(HttpError::Malformed("chunk data longer than its size"));
                        }
                        _ if line.is_empty() => ChunkState::Done,
                        _ => ChunkState::Trailer,
                    };
                }
            }
        }
        Ok(i)
    }

    fn take_line(&mut self, part: &[u8]) -> Result<(), HttpError> {
        if self.line.len() + part.len() > MAX_CHUNK_LINE_BYTES {
            return Err(HttpError::Malformed("chunk-size or trailer line too long"));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    /// True once the last chunk and the trailer were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A scrape response.
#[derive(Debug)]
pub struct Response {
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// The body (at most the limit asked for).
    pub body: Vec<u8>,
}

/// `GET url` with `Accept: accept` and `credentials`; the whole exchange within `timeout`, the
/// body within `max_body_bytes`. Only status 200 is a success.
pub async fn get(
    url: &Url,
    credentials: &Credentials,
    accept: &str,
    timeout: Duration,
    max_body_bytes: usize,
) -> Result<Response, HttpError> {
    tokio::time::timeout(
        timeout,
        connect_and_exchange(url, credentials, accept, timeout, max_body_bytes),
    )
    .await
    .map_err(|_| HttpError::Timeout(timeout))?
}

async fn connect_and_exchange(
    url: &Url,
    credentials: &Credentials,
    accept: &str,
    timeout: Duration,
    max_body_bytes: usize,
) -> Result<Response, HttpError> {
    let conn = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(HttpError::Connect)?;
    let _ = conn.set_nodelay(true);
    let request = request_head(url, credentials, accept, timeout);
    match url.scheme {
        Scheme::Http => exchange(conn, &request, max_body_bytes).await,
        Scheme::Https => {
            let tls = credentials.tls.as_ref().ok_or_else(|| {
                HttpError::Tls(std::io::Error::other(
                    "no TLS configuration for this target",
                ))
            })?;
            let conn = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), conn)
                .await
                .map_err(HttpError::Tls)?;
            exchange(conn, &request, max_body_bytes).await
        }
    }
}

/// The request head of a scrape.
fn request_head(url: &Url, credentials: &Credentials, accept: &str, timeout: Duration) -> String {
    let authorization = credentials
        .authorization
        .as_ref()
        .map(|v| format!("Authorization: {v}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: logrelay-agent/{}\r\nAccept: {accept}\r\n\
         Accept-Encoding: identity\r\nX-Prometheus-Scrape-Timeout-Seconds: {}\r\n\
         {authorization}Connection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        timeout.as_secs_f64(),
    )
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    request: &str,
    max_body_bytes: usize,
) -> Result<Response, HttpError> {
    conn.write_all(request.as_bytes())
        .await
        .map_err(HttpError::Io)?;
    conn.flush().await.map_err(HttpError::Io)?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut head_buf = Vec::with_capacity(4096);
    let (head, rest) = loop {
        let n = conn.read(&mut buf).await.map_err(HttpError::Io)?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the response head",
            ));
        }
        head_buf.extend_from_slice(&buf[..n]);
        if let Some((head, len)) = parse_head(&head_buf)? {
            break (head, head_buf.split_off(len));
        }
    };
    if head.status != 200 {
        return Err(HttpError::Status(head.status));
    }
    if let Some(enc) = head.content_encoding {
        return Err(HttpError::Encoding(enc));
    }
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max_body_bytes {
                return Err(HttpError::BodyTooLarge(max_body_bytes));
            }
            body.reserve_exact(n);
            body.extend_from_slice(&rest[..rest.len().min(n)]);
            while body.len() < n {
                let want = (n - body.len()).min(buf.len());
                let got = conn.read(&mut buf[..want]).await.map_err(HttpError::Io)?;
                if got == 0 {
                    return Err(HttpError::Truncated);
                }
                body.extend_from_slice(&buf[..got]);
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            decoder.decode(&rest, &mut body, max_body_bytes)?;
            while !decoder.is_done() {
                let got = conn.read(&mut buf).await.map_err(HttpError::Io)?;
                if got == 0 {
                    return Err(HttpError::Truncated);
                }
                decoder.decode(&buf[..got], &mut body, max_body_bytes)?;
            }
        }
        Framing::UntilClose => {
            if rest.len() > max_body_bytes {
                return Err(HttpError::BodyTooLarge(max_body_bytes));
            }
            body.extend_from_slice(&rest);
            loop {
                let got = conn.read(&mut buf).await.map_err(HttpError::Io)?;
                if got == 0 {
                    break;
                }
                if body.len() + got > max_body_bytes {
                    return Err(HttpError::BodyTooLarge(max_body_bytes));
                }
                body.extend_from_slice(&buf[..got]);
            }
        }
    }
    Ok(Response {
        content_type: head.content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls() {
        let u: Url = "http://127.0.0.1:9100/metrics".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9100, "/metrics")
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:9100/metrics");
        let u: Url = "HTTP://[::1]:8080/a/b?x=1#frag".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/a/b?x=1")
        );
        assert_eq!(u.authority(), "[::1]:8080");
        let u: Url = "http://pod.example?x".parse().unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/?x"));
        let u: Url = "https://x/metrics".parse().unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Https, 443));
        assert_eq!(u.to_string(), "https://x:443/metrics");
        let u: Url = "HTTPS://[fd00::1]:8443".parse().unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Https, "fd00::1", 8443, "/")
        );
        assert_eq!("http://x/".parse::<Url>().unwrap().scheme, Scheme::Http);
        for other in ["ftp://x/metrics", "unix:///run/x.sock"] {
            assert!(
                matches!(other.parse::<Url>(), Err(UrlError::Scheme(_))),
                "{other}"
            );
        }
        for bad in [
            "x/metrics",
            "http://:80/",
            "http://h:99999/",
            "http://u@h/",
            "http://h/a b",
            "http://[::1/",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_carries_the_authorization_and_debug_hides_it() {
        let url: Url = "https://10.0.0.7:8443/metrics".parse().unwrap();
        let credentials = Credentials {
            tls: None,
            authorization: Some("Bearer s3cr3t".into()),
        };
        let head = request_head(&url, &credentials, "text/plain", Duration::from_secs(2));
        assert!(head.starts_with("GET /metrics HTTP/1.1\r\nHost: 10.0.0.7:8443\r\n"));
        assert!(
            head.contains("\r\nAuthorization: Bearer s3cr3t\r\n"),
            "{head}"
        );
        assert!(head.ends_with("Connection: close\r\n\r\n"));
        assert!(!format!("{credentials:?}").contains("s3cr3t"));
        let plain = request_head(
            &url,
            &Credentials::default(),
            "text/plain",
            Duration::from_secs(2),
        );
        assert!(!plain.contains("Authorization"));
    }

    #[test]
    fn heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
            Content-Length: 12\r\n\r\nbody";
        let (h, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_type.as_deref(), Some("text/plain; version=0.0.4"));
        assert_eq!(h.framing, Framing::Length(12));
        assert_eq!(&raw[len..], b"body");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-")
                .unwrap()
                .is_none()
        );
        let (h, _) = parse_head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = parse_head(b"HTTP/1.0 503 Busy\r\nContent-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.content_encoding.as_deref()),
            (503, Framing::UntilClose, Some("gzip"))
        );
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(matches!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1]),
            Err(HttpError::HeadTooLarge)
        ));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = d.decode(raw, &mut out, 1 << 20).unwrap();
        assert!(d.is_done());
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&raw[used..], b"NEXT");
        let mut d = ChunkedDecoder::default();
        assert!(matches!(
            d.decode(b"10\r\n", &mut Vec::new(), 8),
            Err(HttpError::BodyTooLarge(8))
        ));
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"zz\r\n", &mut Vec::new(), 8).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"1\r\nab\r\n", &mut Vec::new(), 8).is_err());
    }

    proptest! {
        /// Any body, chunked any way, fed in any pieces, decodes to itself.
        #[test]
        fn chunked_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(1usize..300, 0..20),
            feeds in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut enc = Vec::new();
            let mut rest = &body[..];
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                if rest.is_empty() { break; }
                let (chunk, r) = rest.split_at((*c).min(rest.len()));
                enc.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                enc.extend_from_slice(chunk);
                enc.extend_from_slice(b"\r\n");
                rest = r;
            }
            enc.extend_from_slice(b"0\r\n\r\n");
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut input = &enc[..];
            let mut f = feeds.iter().cycle();
            while !input.is_empty() {
                let n = (*f.next().unwrap()).min(input.len());
                let used = d.decode(&input[..n], &mut out, body.len()).unwrap();
                prop_assert_eq!(used, n);
                input = &input[n..];
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(out, body);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_head(&bytes);
            let _ = ChunkedDecoder::default().decode(&bytes, &mut Vec::new(), 100);
        }
    }
}
