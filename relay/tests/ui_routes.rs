//! The browser viewer's routes on a real relay's session listener: the three embedded files with
//! their headers, revalidation, the `--ui false` switch, and the accept loop's limits.
#![allow(clippy::disallowed_methods, reason = "tests time real processes")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use logrelay_relay::audit::{Auditor, WriterSink};
use logrelay_relay::{RelayConfig, RelayHandle, RelayTls, ui};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn relay(config: RelayConfig) -> RelayHandle {
    logrelay_tls::install_provider();
    let pki = logrelay_tls::DevPki::new().expect("mint CA");
    let tls = RelayTls {
        quic_identity: pki.server(&["localhost"]).expect("mint"),
        agent_roots: pki.roots(),
        wss: None,
        reload: None,
    };
    let auditor = Arc::new(Auditor::new(Arc::new(WriterSink::new(Vec::new()))));
    logrelay_relay::start_with_auditor(config, tls, auditor)
        .await
        .expect("start relay")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends one HTTP/1.1 request (keep-alive unless the server closes) and reads the reply to EOF.
async fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    try_request(addr, method, path, extra)
        .await
        .expect("a reply")
}

/// [`request`], or `None` when the connection was dropped without a reply.
async fn try_request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Option<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s
        .write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").as_bytes())
        .await;
    let mut raw = Vec::new();
    // The server closes after the reply (`Connection: close`); a hang here is a failure.
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the relay closes the connection after the reply");
    if raw.is_empty() {
        read.ok();
        return None;
    }
    let text = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete reply");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, "").await
}

/// A GET whose client asks to close (other replies keep the connection open for keep-alive).
async fn get_once(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, "Connection: close\r\n").await
}

#[tokio::test]
async fn the_viewer_is_served_with_a_strict_policy() {
    let relay = relay(RelayConfig::loopback()).await;
    for (path, content_type, body) in [
        ("/", "text/html; charset=utf-8", ui::INDEX_HTML),
        ("/ui/app.js", "text/javascript; charset=utf-8", ui::APP_JS),
        ("/ui/style.css", "text/css; charset=utf-8", ui::STYLE_CSS),
    ] {
        let r = get(relay.http_addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, body, "{path} is the embedded file");
        let h = &r.headers;
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["connection"], "close", "{path}");
        assert!(h["etag"].starts_with('"'), "{path}: {:?}", h.get("etag"));
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn every_file_of_the_page_is_served_embedded_with_the_same_policy() {
    let relay = relay(RelayConfig::loopback()).await;
    for asset in ui::ASSETS {
        let path = format!("/ui/{}", asset.name);
        let r = get(relay.http_addr, &path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, asset.body, "{path} is the embedded file");
        assert_eq!(r.headers["content-type"], asset.content_type, "{path}");
        assert_eq!(
            r.headers["content-security-policy"],
            ui::CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_file_is_revalidated_without_its_body() {
    let relay = relay(RelayConfig::loopback()).await;
    let first = get(relay.http_addr, "/ui/app.js").await;
    let etag = first.headers["etag"].clone();
    let again = request(
        relay.http_addr,
        "GET",
        "/ui/app.js",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(again.status, 304);
    assert_eq!(again.body, "");
    assert_eq!(again.headers["etag"], etag);
    assert!(again.headers.contains_key("content-security-policy"));
    let stale = request(
        relay.http_addr,
        "GET",
        "/ui/app.js",
        "If-None-Match: \"0000000000000000\"\r\n",
    )
    .await;
    assert_eq!(stale.status, 200);
    let head = request(relay.http_addr, "HEAD", "/", "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    relay.shutdown().await;
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let relay = relay(RelayConfig::loopback()).await;
    for path in [
        "/index.html",
        "/ui/",
        "/ui/../Cargo.toml",
        "/ui/app.js.map",
        "/favicon.ico",
    ] {
        assert_eq!(get_once(relay.http_addr, path).await.status, 404, "{path}");
    }
    let post = request(
        relay.http_addr,
        "POST",
        "/",
        "Content-Length: 0\r\nConnection: close\r\n",
    )
    .await;
    assert_eq!(post.status, 405);
    relay.shutdown().await;
}

#[tokio::test]
async fn with_the_ui_off_every_viewer_path_is_404() {
    let relay = relay(RelayConfig {
        ui: false,
        ..RelayConfig::loopback()
    })
    .await;
    for path in ["/", "/ui/app.js", "/ui/style.css"] {
        let r = get_once(relay.http_addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.body.contains("logrelay"), "{path}: {}", r.body);
    }
    // The session endpoint itself is still there (a plain GET is not an upgrade).
    assert_ne!(get_once(relay.http_addr, "/v1/subscribe").await.status, 404);
    relay.shutdown().await;
}

#[tokio::test]
async fn page_loads_release_the_handshake_cap_at_once() {
    // One connection at a time may be reading its request head, for up to 30 s. Each viewer
    // reply closes its connection, so page loads in a row never wait for an idle keep-alive
    // connection to reach that deadline. (The accept loop drops a connection that arrives
    // while the slot is still held, in the instant between a reply and its release: retry.)
    let relay = relay(RelayConfig {
        max_pending_handshakes: 1,
        handshake_timeout_secs: 30,
        ..RelayConfig::loopback()
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        for path in ["/", "/ui/app.js", "/ui/style.css"] {
            let status = loop {
                if let Some(r) = try_request(relay.http_addr, "GET", path, "").await {
                    break r.status;
                }
                tokio::task::yield_now().await;
            };
            assert_eq!(status, 200, "{path}");
        }
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "15 loads took {:?}",
        started.elapsed()
    );
    relay.shutdown().await;
}
