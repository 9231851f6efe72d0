//! A discarding OTLP/HTTP receiver for `loadtest run --trace-ratio`: the relay and agent
//! children export their traces here, so a run with traces on pays for the export as in
//! production (HTTP requests over loopback) without a collector to install. Every request is
//! answered `200 OK` and counted; its body is dropped unread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the sink received.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// OTLP export requests.
    pub requests: AtomicU64,
    /// Their body bytes.
    pub bytes: AtomicU64,
}

/// Starts the sink on 127.0.0.1 (an ephemeral port): its base URL (for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) and its counters. Runs until the process ends.
pub fn start() -> std::io::Result<(String, Arc<SinkStats>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let stats = Arc::new(SinkStats::default());
    let shared = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("otlp-sink".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let stats = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("otlp-sink-conn".into())
                    .spawn(move || serve(conn, &stats));
            }
        })?;
    Ok((url, stats))
}

/// Answers the requests of one keep-alive connection.
fn serve(mut conn: std::net::TcpStream, stats: &SinkStats) {
    let Ok(read) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0u64;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        // Bodies are at most a few MiB (one export batch); read and drop.
        if std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink()).is_err() {
            return;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(length, Ordering::Relaxed);
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
