//! Refusals and limit hits at the relay's edge are audited, aggregated per offender so that a
//! flood of them cannot flood the audit trail: request-rate limit hits, the close for an
//! oversized message, agent TLS refusals (no client certificate, foreign CA, wrong ALPN). And
//! a token that would never expire is refused with a clear reason.

use std::sync::Arc;

use logrelay::client::{Client, ClientError};
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_tls::AgentId;
use logrelay_wire::session::{Event, Request, close};
use serde_json::{Value, json};

fn limit_lines<'a>(events: &'a [Value], reason: &'a str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["op"] == "limit" && e["reason"] == reason)
        .collect()
}

fn counted(lines: &[&Value]) -> u64 {
    lines.iter().map(|e| e["count"].as_u64().unwrap()).sum()
}

/// One series (name with labels, exactly as exported) from `/metrics`; 0 when absent.
async fn series(relay: &TestRelay, series: &str) -> f64 {
    let (_, body) = http_get(relay.handle.admin_addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_limit_hits_are_audited_per_session_with_a_count() {
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            session_requests_per_sec: 1,
            audit_aggregate_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let mut s = relay.subscriber().await;
    let list = Request::List {
        selector: Default::default(),
        id: None,
        watch: false,
    };
    for _ in 0..200 {
        s.client.send(&list).await.unwrap();
    }
    // The burst (2) is answered, the rest refused with an error event each.
    s.until("the refusals", |s| {
        s.events
            .iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .count()
            >= 190
    })
    .await;
    let hits = series(
        &relay,
        r#"logrelay_relay_limit_hits_total{limit="session_requests_per_sec"}"#,
    )
    .await;
    assert!(hits >= 190.0, "{hits}");
    // Every hit is accounted for in the audit trail, in a handful of lines.
    let events = eventually("the summary line", || async {
        let events = relay.audit_events();
        (counted(&limit_lines(&events, "session_requests_per_sec")) == hits as u64)
            .then_some(events)
    })
    .await;
    let lines = limit_lines(&events, "session_requests_per_sec");
    println!(
        "{hits} rate-limit hits audited in {} lines: {:?}",
        lines.len(),
        lines.iter().map(|l| &l["count"]).collect::<Vec<_>>()
    );
    assert_eq!(lines[0]["count"], 1, "the first hit is audited at once");
    assert!(lines.len() <= 4, "{lines:#?}");
    for l in &lines {
        assert_eq!(l["actor"]["type"], "session");
        assert_eq!(l["actor"]["id"], lines[0]["actor"]["id"]);
        assert_eq!(l["org"], "dev");
    }
    assert!(relay.metric("logrelay_relay_audit_suppressed_total").await >= hits - 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_its_session_with_a_reason_and_is_audited() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let mut good = relay.subscriber().await;
    let mut huge = relay.subscriber().await;
    huge.client
        .send_text(&"x".repeat(200 * 1024))
        .await
        .unwrap();
    let closed = within("the oversized message closes its session", async {
        loop {
            match huge.client.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match closed {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, close::LIMIT);
            assert!(reason.contains("--max-session-message-bytes"), "{reason}");
        }
        other => panic!("expected a close with a reason, got {other:?}"),
    }
    let events = relay.audit_events();
    let lines = limit_lines(&events, "session_message_bytes");
    assert_eq!(lines.len(), 1, "{events:#?}");
    assert_eq!(lines[0]["actor"]["type"], "session");
    assert!(
        lines[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        series(
            &relay,
            r#"logrelay_relay_limit_hits_total{limit="session_message_bytes"}"#
        )
        .await,
        1.0
    );
    // The other session never noticed.
    good.list(&Default::default()).await;
}

/// Dials the relay's QUIC listener with `client` and uses the connection until it fails.
async fn dial(relay: std::net::SocketAddr, client: quinn::ClientConfig) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let Ok(connecting) = ep.connect(relay, "localhost") else {
        return;
    };
    let Ok(conn) = connecting.await else {
        return;
    };
    // The handshake may complete on the client before the server's verdict arrives.
    let used = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"\x02\x00\x00\x00{}").await.ok()?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await.ok()
    };
    let _ = used.await;
}

/// A client configuration presenting no certificate at all.
fn without_certificate(pki: &TestPki) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(logrelay_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(pki.ca.roots())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"logrelay/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tls_refusals_are_audited_per_source_and_reason() {
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            audit_aggregate_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let id = AgentId {
        org: "acme".into(),
        cluster: "c1".into(),
    };
    let rogue = logrelay_tls::DevPki::new().unwrap();
    let foreign_ca = logrelay_tls::quic_client(rogue.agent(&id).unwrap(), pki.ca.roots()).unwrap();
    let wrong_alpn = logrelay_tls::quic_client_with_alpn(
        pki.ca.agent(&id).unwrap(),
        pki.ca.roots(),
        vec![b"h3".to_vec()],
    )
    .unwrap();
    for _ in 0..3 {
        within(
            "no certificate",
            dial(relay.quic_addr(), without_certificate(&pki)),
        )
        .await;
    }
    within("foreign CA", dial(relay.quic_addr(), foreign_ca)).await;
    within("wrong ALPN", dial(relay.quic_addr(), wrong_alpn)).await;

    let refusals = |events: &[Value], reason: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| {
                e["op"] == "deny" && e["attempt"] == "agent_connect" && e["reason"] == reason
            })
            .cloned()
            .collect()
    };
    let events = eventually("every refusal audited", || async {
        let events = relay.audit_events();
        let n = |reason| {
            refusals(&events, reason)
                .iter()
                .map(|e| e["count"].as_u64().unwrap())
                .sum::<u64>()
        };
        (n("no_client_certificate") == 3
            && n("untrusted_certificate") == 1
            && n("alpn_mismatch") == 1)
            .then_some(events)
    })
    .await;
    let no_cert = refusals(&events, "no_client_certificate");
    assert_eq!(
        no_cert.len(),
        2,
        "first at once, then one line for the rest: {no_cert:#?}"
    );
    assert_eq!(
        (no_cert[0]["count"].as_u64(), no_cert[1]["count"].as_u64()),
        (Some(1), Some(2))
    );
    for e in events.iter().filter(|e| e["attempt"] == "agent_connect") {
        assert_eq!(e["actor"]["type"], "agent");
        assert_eq!(e["outcome"], "denied");
        assert!(
            e["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_would_never_expire_is_refused_with_a_reason() {
    let pki = TestPki::new();
    let (relay, signer, _keys) = TestRelay::with_tokens(
        &pki,
        RelayConfig {
            max_token_lifetime_secs: 3600,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let url = relay.handle.subscribe_url();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |exp: Value| {
        signer.token(&json!({"sub": "mallory", "org": "acme", "exp": exp,
                             "roles": [{"role": "viewer"}]}))
    };
    for exp in [json!(1e300), json!(now + 7200)] {
        match Client::connect(&url, None, Some(&token(exp.clone()))).await {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, 401, "{body}");
                assert!(body.contains("token lifetime too long"), "{exp}: {body}");
                assert!(body.contains("3600 s"), "{body}");
            }
            other => panic!("{exp}: expected 401, got {other:?}"),
        }
    }
    // Within the limit: accepted.
    let mut ok = Client::connect(&url, None, Some(&token(json!(now + 3000))))
        .await
        .expect("a token within the limit");
    assert!(matches!(
        within("welcome", ok.next()).await,
        Ok(Some(logrelay::client::Incoming::Event(
            Event::Welcome { .. }
        )))
    ));
    let events = relay.audit_events();
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["op"] == "deny" && e["reason"] == "token_lifetime_too_long")
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "the second refusal is counted, not written yet: {events:#?}"
    );
    assert_eq!(
        series(
            &relay,
            r#"logrelay_relay_sessions_refused_total{reason="token_lifetime_too_long"}"#
        )
        .await,
        2.0
    );
}
