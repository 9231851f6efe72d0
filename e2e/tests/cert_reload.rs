//! Rotated certificates and CA bundles are picked up from their files without a restart.

use std::path::Path;
use std::time::Duration;

use logrelay_agent::tls_reload::AgentTlsFiles;
use logrelay_e2e::*;
use logrelay_relay::reload::TlsFiles;
use logrelay_tls::{AgentId, DevPki, Identity, pem};

fn write_identity(
    dir: &Path,
    name: &str,
    id: &Identity,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let chain: String = id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    // Replace atomically, as a Kubernetes Secret update does.
    for (path, text) in [
        (&cert, chain),
        (&key, pem("PRIVATE KEY", id.key.secret_der())),
    ] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

fn write_cas(path: &Path, cas: &[&DevPki]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, cas.iter().map(|c| c.ca_pem()).collect::<String>()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_and_ca_bundles_are_picked_up_without_a_restart() {
    let pki = TestPki::new(); // the relay's CA, and the first agent CA
    let other = DevPki::new().unwrap(); // a second agent CA, trusted only after rotation
    let dir = tempfile::tempdir().unwrap();
    let id = AgentId {
        org: "dev".into(),
        cluster: "c".into(),
    };

    // Relay: certificate, key and agent CA bundle from files (only `pki` trusted at first).
    let (cert, key) = write_identity(dir.path(), "relay", &pki.ca.server(&["localhost"]).unwrap());
    let agent_ca = dir.path().join("agent-ca.pem");
    write_cas(&agent_ca, &[&pki.ca]);
    let files = TlsFiles {
        cert_file: cert.clone(),
        key_file: key.clone(),
        agent_ca_file: agent_ca.clone(),
        wss: None,
        interval: Duration::from_millis(50),
    };
    let mut tls = files.load().unwrap();
    tls.reload = Some(files);
    let mut config = logrelay_relay::RelayConfig::loopback();
    config.anonymous_org = Some("dev".into());
    let relay = logrelay_relay::start(config, tls).await.unwrap();
    let connected = async || metric(relay.admin_addr, "logrelay_relay_agents_connected").await;

    // Agent: its certificate comes from the CA the relay does not trust yet.
    let (acert, akey) = write_identity(dir.path(), "agent", &other.agent(&id).unwrap());
    let relay_ca = dir.path().join("relay-ca.pem");
    write_cas(&relay_ca, &[&pki.ca]);
    let agent_files = AgentTlsFiles {
        ca_file: relay_ca,
        cert_file: acert,
        key_file: akey,
        interval: Duration::from_millis(50),
    };
    let mut agent_tls = agent_files.load().unwrap();
    agent_tls.reload = Some(agent_files.clone());
    let pods = PodsDir::new();
    let mut cfg = logrelay_agent::AgentConfig::new(pods.path().to_path_buf(), relay.quic_addr);
    cfg.reconnect_min_ms = 20;
    cfg.reconnect_max_ms = 200;
    let agent = logrelay_agent::start(cfg, agent_tls).await.unwrap();
    eventually("the agent is refused and retries", || async {
        (metric(agent.admin_addr, "logrelay_agent_reconnects_total").await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(connected().await, 0.0);

    // 1. The agent's certificate is rotated to one the relay trusts: it gets in by itself.
    write_identity(dir.path(), "agent", &pki.ca.agent(&id).unwrap());
    eventually("the agent uses its rotated certificate", || async {
        (connected().await == 1.0).then_some(())
    })
    .await;
    assert!(metric(agent.admin_addr, "logrelay_agent_tls_reloads_total").await >= 1.0);

    // 2. The relay's agent CA bundle gains the second CA: its agents get in.
    let probe = logrelay_tls::quic_client(other.agent(&id).unwrap(), pki.ca.roots()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(probe);
    assert!(!accepted(&ep, relay.quic_addr).await, "not trusted yet");
    write_cas(&agent_ca, &[&pki.ca, &other]);
    eventually("the relay trusts the rotated CA bundle", || async {
        accepted(&ep, relay.quic_addr).await.then_some(())
    })
    .await;

    // 3. The relay's own certificate is rotated: new connections are served with it.
    let new_id = pki.ca.server(&["localhost"]).unwrap();
    let new_leaf = new_id.chain[0].clone();
    write_identity(dir.path(), "relay", &new_id);
    eventually(
        "new connections see the rotated relay certificate",
        || async {
            let conn = ep.connect(relay.quic_addr, "localhost").ok()?.await.ok()?;
            let chain = conn
                .peer_identity()?
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()?;
            conn.close(0u32.into(), b"probe");
            (chain[0] == new_leaf).then_some(())
        },
    )
    .await;
    assert!(metric(relay.admin_addr, "logrelay_relay_tls_reloads_total").await >= 2.0);
    assert_eq!(
        connected().await,
        1.0,
        "the established agent was never disturbed"
    );
    agent.shutdown().await;
    relay.shutdown().await;
}

/// True when the relay accepts this endpoint's client certificate: a `hello` gets an answer.
async fn accepted(ep: &quinn::Endpoint, relay: std::net::SocketAddr) -> bool {
    let Ok(connecting) = ep.connect(relay, "localhost") else {
        return false;
    };
    let Ok(conn) = connecting.await else {
        return false;
    };
    let talk = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let hello = logrelay_wire::control::encode(&logrelay_wire::control::AgentMsg::Hello {
            protocol: logrelay_wire::PROTOCOL_VERSION,
            node: "probe".into(),
            agent_version: "test".into(),
            features: Vec::new(),
        });
        let mut out = bytes::BytesMut::new();
        logrelay_wire::frame::encode(&hello, &mut out);
        send.write_all(&out).await.ok()?;
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.ok()
    };
    let ok = talk.await.is_some();
    conn.close(0u32.into(), b"probe");
    ok
}
