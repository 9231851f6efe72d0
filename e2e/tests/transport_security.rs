//! The agent hop refuses what it must (wrong ALPN, untrusted certificates) without disturbing
//! other traffic, and sessions can use WSS.

use logrelay_e2e::*;
use logrelay_tls::AgentId;

async fn dial(
    relay: std::net::SocketAddr,
    client: quinn::ClientConfig,
) -> Result<quinn::Connection, String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let conn = ep
        .connect(relay, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // The handshake may complete on the client before the server's verdict arrives: use the
    // connection and see whether it survives.
    let used = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(b"\x02\x00\x00\x00{}").await.ok()?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await.ok()
    };
    match used.await {
        Some(()) => Ok(conn),
        None => Err(conn.closed().await.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_and_untrusted_certificates_are_refused_while_others_flow() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("ns", "app", "main");
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let mut sub = relay.subscriber().await;
    sub.subscribe("a", &selector("ns", "app", "main"), Some(10))
        .await;
    w.write_lines([b"one\n".as_slice()]).unwrap();
    sub.until("first line", |s| s.total_lines() >= 1).await;

    let id = AgentId {
        org: "dev".into(),
        cluster: "test".into(),
    };
    // Wrong ALPN, otherwise valid credentials.
    let wrong_alpn = logrelay_tls::quic_client_with_alpn(
        pki.ca.agent(&id).unwrap(),
        pki.ca.roots(),
        vec![b"h3".to_vec()],
    )
    .unwrap();
    let err = within("wrong ALPN refused", dial(relay.quic_addr(), wrong_alpn))
        .await
        .expect_err("wrong ALPN must be refused");
    assert!(
        err.contains("no_application_protocol") || err.contains("120"),
        "{err}"
    );

    // A client certificate from a CA the relay does not trust.
    let rogue = logrelay_tls::DevPki::new().unwrap();
    let untrusted = logrelay_tls::quic_client(rogue.agent(&id).unwrap(), pki.ca.roots()).unwrap();
    let err = within(
        "untrusted client refused",
        dial(relay.quic_addr(), untrusted),
    )
    .await
    .expect_err("untrusted client certificate must be refused");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("48"),
        "{err}"
    );

    // A relay certificate the agent does not trust.
    let wrong_roots = logrelay_tls::quic_client(pki.ca.agent(&id).unwrap(), rogue.roots()).unwrap();
    let err = within(
        "untrusted relay refused",
        dial(relay.quic_addr(), wrong_roots),
    )
    .await
    .expect_err("the agent must not trust an unknown relay");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    // The real agent and its subscriber never noticed.
    w.write_lines([b"two\n".as_slice()]).unwrap();
    sub.until("second line", |s| s.total_lines() >= 2).await;
    assert_eq!(relay.metric("logrelay_relay_agents_connected").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_speaking_out_of_order_is_closed_with_a_reason() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let id = AgentId {
        org: "dev".into(),
        cluster: "test".into(),
    };
    let client = logrelay_tls::quic_client(pki.ca.agent(&id).unwrap(), pki.ca.roots()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let conn = ep
        .connect(relay.quic_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // A heartbeat before hello.
    let body = br#"{"type":"heartbeat"}"#;
    send.write_all(&(body.len() as u32).to_le_bytes())
        .await
        .unwrap();
    send.write_all(body).await.unwrap();
    let reason = within("connection closed", conn.closed()).await;
    let text = reason.to_string();
    assert!(text.contains("expected hello"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_can_use_wss() {
    let pki = TestPki::new();
    let mut tls = pki.relay_tls();
    tls.wss = Some(pki.ca.server(&["localhost", "127.0.0.1"]).unwrap());
    let mut config = logrelay_relay::RelayConfig::loopback();
    config.anonymous_org = Some("dev".into());
    let relay = logrelay_relay::start(config, tls).await.unwrap();
    let url = relay.subscribe_url();
    assert!(url.starts_with("wss://"), "{url}");

    // Trusting the CA: works.
    let mut client = logrelay::client::Client::connect(&url, Some(pki.ca.roots()), None)
        .await
        .expect("wss with the right CA");
    let first = within("welcome", client.next()).await.unwrap();
    assert!(matches!(
        first,
        Some(logrelay::client::Incoming::Event(
            logrelay_wire::session::Event::Welcome { .. }
        ))
    ));
    // Not trusting it: refused with a TLS error.
    let err = logrelay::client::Client::connect(&url, Some(rustls::RootCertStore::empty()), None)
        .await
        .expect_err("unknown CA");
    assert!(err.to_string().contains("TLS"), "{err}");
    // Plain WebSocket against the TLS port: refused.
    let plain = url.replacen("wss://", "ws://", 1);
    assert!(
        logrelay::client::Client::connect(&plain, None, None)
            .await
            .is_err()
    );
    relay.shutdown().await;
}
