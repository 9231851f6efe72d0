//! Log content never appears in the relay's or the agent's own logs, at any level: a run at
//! trace level (every crate, quinn and rustls included) streams a marker that is then absent
//! from everything they printed. Its own test binary: the tracing subscriber is process-wide.

use std::io::Write;
use std::sync::{Arc, Mutex};

use logrelay_e2e::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_streamed_at_trace_level_never_reaches_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let marker = format!(
        "MARKER-{:016x}",
        (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "secret", "main");
    w.write_lines([format!("before {marker}\n").as_bytes()])
        .unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let mut s = relay.subscriber().await;
    s.subscribe("a", &selector("ns", "secret", "main"), Some(10))
        .await;
    s.until("backlog", |s| s.total_lines() >= 1).await;
    for i in 0..100 {
        w.write_lines([format!("line {i} {marker}\n").as_bytes()])
            .unwrap();
    }
    s.until("all lines", |s| s.total_lines() >= 101).await;
    let stream = s.stream_of("a").unwrap();
    assert!(
        s.messages(stream).iter().all(|m| m.contains(&marker)),
        "the marker was streamed"
    );

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("TRACE"), "trace level was on");
    assert!(logs.contains("session connected") && logs.contains("agent connected"));
    assert!(!logs.contains(&marker), "log content leaked into the logs");
    assert!(!logs.contains("MARKER-"), "not even part of it");
    assert!(
        !relay.audit_text().contains(&marker),
        "nor into the audit trail"
    );
}
