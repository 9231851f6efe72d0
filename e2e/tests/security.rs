//! Tenant isolation and session credentials, end to end: real tokens (EdDSA), real agents'
//! certificates, real sockets. A session sees exactly the streams its token covers.

use std::collections::BTreeSet;

use logrelay::client::ClientError;
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::auth::testkit::Signer;
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request, close};
use proptest::prelude::*;
use serde_json::json;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A relay that verifies EdDSA tokens signed by the returned key and has no anonymous org.
async fn token_relay(pki: &TestPki, skew_secs: u32) -> (TestRelay, Signer, tempfile::TempDir) {
    TestRelay::with_tokens(
        pki,
        RelayConfig {
            token_clock_skew_secs: skew_secs,
            ..RelayConfig::loopback()
        },
    )
    .await
}

fn labels(org: &str, pod: &str, domain: Option<&str>, project: Option<&str>) -> Labels {
    Labels {
        org: org.into(),
        namespace: "ns".into(),
        pod: pod.into(),
        container: "main".into(),
        domain: domain.map(Into::into),
        project: project.map(Into::into),
        ..Labels::default()
    }
}

fn token(signer: &Signer, org: &str, roles: serde_json::Value, exp: i64) -> String {
    signer.token(&json!({ "sub": "alice", "org": org, "exp": exp, "roles": roles }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_filed_under_its_certificates_org_whatever_it_claims() {
    let pki = TestPki::new();
    let (relay, signer, _dir) = token_relay(&pki, 60).await;
    let _liar = FakeAgent::start(
        &pki,
        relay.quic_addr(),
        "acme",
        "c1",
        vec![(
            labels("evil", "p", None, None),
            vec!["acme's line\n".into()],
        )],
    )
    .await;
    // The fake agent does not wait for the relay to file its catalog: wait for it here, so an
    // empty list below means "not yours" and not "not yet".
    eventually("the liar's stream announced", || async {
        (relay.metric("logrelay_relay_streams").await == 1.0).then_some(())
    })
    .await;
    let url = relay.handle.subscribe_url();
    let everything = json!([{ "role": "viewer" }]);

    let mut evil = Subscriber::connect_with_token(
        &url,
        Some(&token(&signer, "evil", everything.clone(), now() + 600)),
    )
    .await;
    let mut acme = Subscriber::connect_with_token(
        &url,
        Some(&token(&signer, "acme", everything, now() + 600)),
    )
    .await;
    let mut listed = Vec::new();
    for s in [&mut evil, &mut acme] {
        let streams = s.list(&Selector::default()).await;
        listed.push(
            streams
                .into_iter()
                .map(|e| e.labels)
                .collect::<Vec<Labels>>(),
        );
    }
    assert!(
        listed[0].is_empty(),
        "the org an agent claims gives nobody access"
    );
    let mine = listed[1].clone();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].org.as_str(), mine[0].cluster.as_str()),
        ("acme", "c1")
    );
    acme.subscribe("a", &Selector::default(), Some(10)).await;
    acme.until("the line", |s| s.total_lines() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let pki = TestPki::new();
    let (relay, signer, _dir) = token_relay(&pki, 0).await;
    let url = relay.handle.subscribe_url();
    let roles = json!([{ "role": "viewer" }]);
    let refused = async |token: Option<String>| -> String {
        match logrelay::client::Client::connect(&url, None, token.as_deref()).await {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, 401, "{body}");
                body
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    assert!(refused(None).await.contains("bearer token is required"));
    assert!(
        refused(Some(token(&signer, "acme", roles.clone(), now() - 10)))
            .await
            .contains("expired")
    );
    let rogue = Signer::ed25519(Some("k1"));
    assert!(
        refused(Some(token(&rogue, "acme", roles.clone(), now() + 600)))
            .await
            .contains("signature")
    );
    let hs = Signer::hs256(&[7u8; 32], None);
    refused(Some(token(&hs, "acme", roles, now() + 600))).await;
    let events = relay.audit_events();
    let denials = events
        .iter()
        .filter(|e| e["op"] == "deny" && e["attempt"] == "session_connect")
        .count();
    assert_eq!(denials, 4, "every refusal is audited: {events:#?}");
    assert!(
        !relay.audit_text().contains("eyJ"),
        "tokens never reach the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_stream_closes_the_session_with_a_reason() {
    let pki = TestPki::new();
    let (relay, signer, _dir) = token_relay(&pki, 0).await;
    let url = relay.handle.subscribe_url();
    let t = token(&signer, "acme", json!([{ "role": "viewer" }]), now() + 2);
    let mut s = Subscriber::connect_with_token(&url, Some(&t)).await;
    let closed = within("the session closes at expiry", async {
        loop {
            match s.client.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match closed {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, close::TOKEN_EXPIRED);
            assert_eq!(reason, "token expired");
        }
        other => panic!("expected a close with a reason, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_org_selector_is_denied_and_audited() {
    let pki = TestPki::new();
    let (relay, signer, _dir) = token_relay(&pki, 60).await;
    let url = relay.handle.subscribe_url();
    let t = token(&signer, "acme", json!([{ "role": "viewer" }]), now() + 600);
    let mut s = Subscriber::connect_with_token(&url, Some(&t)).await;
    let theirs = Selector {
        org: Some("globex".into()),
        ..Selector::default()
    };
    s.subscribe("x", &theirs, Some(0)).await;
    s.until("a denial", |s| {
        s.events.iter().any(|e| matches!(e, Event::Error { .. }))
    })
    .await;
    let Some(Event::Error { code, message, id }) = s
        .events
        .iter()
        .find(|e| matches!(e, Event::Error { .. }))
        .cloned()
    else {
        unreachable!()
    };
    assert_eq!(code, logrelay_wire::control::ErrorCode::Forbidden);
    assert_eq!(id.as_deref(), Some("x"));
    assert!(message.contains("globex"), "{message}");
    let events = relay.audit_events();
    let deny = events
        .iter()
        .find(|e| e["op"] == "deny" && e["attempt"] == "subscribe")
        .unwrap_or_else(|| panic!("audited: {events:#?}"));
    assert_eq!(deny["org"], "acme");
    assert_eq!(deny["actor"]["sub"], "alice");
    assert_eq!(deny["reason"], "cross_org_selector");
    assert_eq!(deny["selector"]["org"], "globex");
    assert!(events.iter().any(|e| e["op"] == "session_connect"));
}

/// The model: may a token of `org` with `bindings` read a stream? Written independently of
/// the relay's code, from the RBAC rules: an org-wide binding covers everything in the org; a
/// domain binding the streams of that domain; a project binding that project in that domain.
fn model_reads(org: &str, bindings: &[(Option<&str>, Option<&str>)], l: &Labels) -> bool {
    l.org == org
        && bindings.iter().any(|(d, p)| match (d, p) {
            (None, _) => true,
            (Some(d), None) => l.domain.as_deref() == Some(*d),
            (Some(d), Some(p)) => {
                l.domain.as_deref() == Some(*d) && l.project.as_deref() == Some(*p)
            }
        })
}

const ORGS: [&str; 2] = ["acme", "globex"];
const DOMAINS: [Option<&str>; 3] = [None, Some("dev"), Some("prod")];
const PROJECTS: [Option<&str>; 3] = [None, Some("p1"), Some("p2")];

/// Random agents: per agent, the index of its org and its streams (domain, project, whether it
/// lies about its org).
type Agents = Vec<(usize, Vec<(usize, usize, bool)>)>;
/// Random sessions: the index of the org of its token, its bindings (domain, project), and the
/// domain its selector names.
type Sessions = Vec<(usize, Vec<(usize, usize)>, usize)>;

fn agents() -> impl Strategy<Value = Agents> {
    proptest::collection::vec(
        (
            0..2usize,
            proptest::collection::vec((0..3usize, 0..3usize, any::<bool>()), 1..4),
        ),
        1..4,
    )
}

fn sessions() -> impl Strategy<Value = Sessions> {
    proptest::collection::vec(
        (
            0..2usize,
            proptest::collection::vec((0..3usize, 0..3usize), 1..3),
            0..3usize,
        ),
        1..4,
    )
}

/// Where the relays of a case run.
enum Relays {
    /// One relay holds the agents and serves the sessions.
    One,
    /// Relays A and B (on one nats-server) hold the agents, alternately; the sessions are on
    /// relay C, which holds no agent.
    Three,
}

/// One case: `agents` connect, `sessions` subscribe with a random selector and `tail: 10` to
/// streams whose one line the agent sends when a demand opens; each session receives exactly
/// the lines of the streams its token covers and its selector matches, and lists exactly the
/// streams its token covers, filed under the org of each agent's certificate.
async fn tenant_case(relays: Relays, agents: &Agents, sessions: &Sessions) {
    let pki = TestPki::new();
    let nats = match relays {
        Relays::One => None,
        Relays::Three => Some(logrelay_e2e::nats::NatsServer::start().await),
    };
    let with_backplane = |id: &str| RelayConfig {
        token_clock_skew_secs: 60,
        backplane: nats.as_ref().map(|n| n.backplane(id)).unwrap_or_default(),
        // No ping within the test: a session writer that missed a wake-up would otherwise
        // be woken by its next ping (15 s) and deliver late instead of never.
        ping_secs: 3_600,
        ..RelayConfig::loopback()
    };
    // The relay of the sessions, and those of the agents.
    let (relay, signer, _dir) = TestRelay::with_tokens(&pki, with_backplane("relay-c")).await;
    let mut holders = Vec::new();
    if nats.is_some() {
        for id in ["relay-a", "relay-b"] {
            holders.push(TestRelay::start_exactly(&pki, with_backplane(id)).await);
        }
    }
    let mut all_streams = Vec::new();
    let mut fakes = Vec::new();
    for (a, (org_i, streams)) in agents.iter().enumerate() {
        let org = ORGS[*org_i];
        let mut announced = Vec::new();
        for (s, (d, p, lie)) in streams.iter().enumerate() {
            let claimed_org = if *lie { ORGS[1 - org_i] } else { org };
            let pod = format!("a{a}s{s}");
            let l = labels(claimed_org, &pod, DOMAINS[*d], PROJECTS[*p]);
            announced.push((l.clone(), vec![format!("{org}/{pod}\n")]));
            // What the relay must file it as: the certificate's org and cluster.
            all_streams.push(Labels {
                org: org.into(),
                cluster: format!("c{a}"),
                ..l
            });
        }
        let holder = holders.get(a % holders.len().max(1)).unwrap_or(&relay);
        fakes.push(
            FakeAgent::start(&pki, holder.quic_addr(), org, &format!("c{a}"), announced).await,
        );
    }
    let (gauge, n) = match relays {
        Relays::One => ("logrelay_relay_streams", all_streams.len()),
        Relays::Three => ("logrelay_relay_backplane_remote_streams", all_streams.len()),
    };
    eventually("every stream announced", || async {
        (relay.metric(gauge).await == n as f64).then_some(())
    })
    .await;

    let url = relay.handle.subscribe_url();
    for (org_i, scopes, sel_domain) in sessions {
        let org = ORGS[*org_i];
        let bindings: Vec<(Option<&str>, Option<&str>)> = scopes
            .iter()
            .map(|(d, p)| (DOMAINS[*d], DOMAINS[*d].and(PROJECTS[*p])))
            .collect();
        let roles: Vec<serde_json::Value> = bindings
            .iter()
            .map(|(d, p)| match (d, p) {
                (None, _) => json!({ "role": "viewer" }),
                (Some(d), None) => json!({ "role": "contributor", "scope": { "domain": d } }),
                (Some(d), Some(p)) => {
                    json!({ "role": "admin", "scope": { "domain": d, "project": p } })
                }
            })
            .collect();
        let selector = Selector {
            domain: DOMAINS[*sel_domain].map(Into::into),
            ..Selector::default()
        };
        let want: BTreeSet<String> = all_streams
            .iter()
            .filter(|l| model_reads(org, &bindings, l) && selector.matches(l))
            .map(|l| format!("{}/{}\n", l.org, l.pod))
            .collect();
        let t = token(&signer, org, json!(roles), now() + 600);
        let mut s = Subscriber::connect_with_token(&url, Some(&t)).await;
        s.subscribe("s", &selector, Some(10)).await;
        // A denied selector (no binding reaches its domain) must mean nothing is wanted.
        s.until("everything covered, or a denial", |s| {
            s.total_lines() >= want.len()
                && (!want.is_empty()
                    || s.events
                        .iter()
                        .any(|e| matches!(e, Event::Subscribed { .. } | Event::Error { .. })))
        })
        .await;
        // A round trip: anything else queued for this session would have arrived by now.
        s.client
            .send(&Request::List {
                selector: Selector::default(),
                id: None,
                watch: false,
            })
            .await
            .unwrap();
        s.until("list answer", |s| {
            s.events.iter().any(|e| matches!(e, Event::Streams { .. }))
        })
        .await;
        // Each line once: a multiset, so a line delivered twice shows.
        let mut got: Vec<String> = s
            .lines
            .values()
            .flatten()
            .map(|l| String::from_utf8_lossy(&l.message).into_owned())
            .collect();
        got.sort();
        let want: Vec<String> = want.into_iter().collect();
        assert_eq!(
            got, want,
            "session of {org} with {bindings:?} selecting {selector:?}; events {:?}",
            s.events
        );
        let listed: BTreeSet<String> = s
            .events
            .iter()
            .find_map(|e| match e {
                Event::Streams { streams, .. } => Some(
                    streams
                        .iter()
                        .map(|e| format!("{}/{}\n", e.labels.org, e.labels.pod))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap();
        let visible: BTreeSet<String> = all_streams
            .iter()
            .filter(|l| model_reads(org, &bindings, l))
            .map(|l| format!("{}/{}\n", l.org, l.pod))
            .collect();
        if bindings.iter().any(|(d, _)| d.is_none()) || !visible.is_empty() {
            assert_eq!(listed, visible, "listing of {org} with {bindings:?}");
        }
    }
    drop(fakes);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random agents (org from their certificate, streams with random domain/project labels,
    /// sometimes lying about their org) and random sessions (random token scopes, random
    /// selectors): every session receives exactly the lines of the streams its token covers
    /// and its selector matches, and no other.
    #[test]
    fn sessions_receive_exactly_what_their_tokens_cover(agents in agents(), sessions in sessions()) {
        runtime().block_on(tenant_case(Relays::One, &agents, &sessions));
    }

    /// The same across relays (issue 14): the agents on relays A and B, the sessions on relay
    /// C, which holds no agent. C lists and serves exactly what each token covers, under the
    /// org each agent's own relay took from its certificate, however the agents label
    /// themselves.
    #[test]
    fn sessions_on_another_relay_receive_exactly_what_their_tokens_cover(agents in agents(), sessions in sessions()) {
        runtime().block_on(tenant_case(Relays::Three, &agents, &sessions));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_can_carry_the_token_in_the_websocket_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let pki = TestPki::new();
    let (relay, signer, _dir) = token_relay(&pki, 60).await;
    let t = token(&signer, "acme", json!([{ "role": "viewer" }]), now() + 600);
    let mut request = relay.handle.subscribe_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("logrelay.v1, bearer.{t}").parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(relay.handle.http_addr)
        .await
        .unwrap();
    let (_ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "logrelay.v1",
        "the relay answers with the protocol, never the token"
    );
    // The session is registered (and audited) right after the upgrade the client just saw.
    eventually("the session's connect is audited", || async {
        relay
            .audit_events()
            .iter()
            .any(|e| e["op"] == "session_connect" && e["org"] == "acme")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_flooding_connections_are_cut_off_and_others_still_get_in() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            max_pending_handshakes: 4,
            handshake_timeout_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let addr = relay.handle.http_addr;
    // Slowloris: a request head that never completes is closed at the deadline.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/subscribe HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = within("the slow connection is closed", slow.read(&mut buf)).await;
    assert!(n.is_ok(), "{n:?}");
    // A flood of idle connections: beyond the cap the oldest silent ones are shed, and counted.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    eventually("excess connections are refused and counted", || async {
        (metric(relay.handle.admin_addr, "logrelay_relay_limit_hits_total").await >= 8.0)
            .then_some(())
    })
    .await;
    // Once the idle ones hit their deadline, a real session gets in.
    eventually("a real session connects after the flood", || async {
        logrelay::client::Client::connect(&relay.handle.subscribe_url(), None, None)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_web_page_cannot_open_a_session_on_an_anonymous_relay() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let pki = TestPki::new();
    // A dev-style relay: sessions without a token are accepted (as org `dev`), which is what a
    // page on another site could abuse through a user's browser.
    let relay = TestRelay::start_with(
        &pki,
        logrelay_relay::RelayConfig {
            allowed_origins: vec!["https://console.example.com".into()],
            ..logrelay_relay::RelayConfig::loopback()
        },
    )
    .await;
    let addr = relay.handle.http_addr;
    let handshake = async |origin: Option<&str>| {
        let mut request = relay.handle.subscribe_url().into_client_request().unwrap();
        if let Some(o) = origin {
            request.headers_mut().insert("origin", o.parse().unwrap());
        }
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(request, tcp).await
    };
    match handshake(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
            assert!(body.contains("origin"), "{body}");
        }
        other => panic!("a foreign origin must be refused, got {other:?}"),
    }
    // The relay's own pages (its viewer), a listed console, and programs (no Origin) get in.
    let own = format!("http://{addr}");
    for origin in [
        Some(own.as_str()),
        Some("https://console.example.com"),
        None,
    ] {
        handshake(origin)
            .await
            .unwrap_or_else(|e| panic!("{origin:?} refused: {e}"));
    }
    assert_eq!(
        relay.metric("logrelay_relay_sessions_refused_total").await,
        1.0
    );
    eventually("the refusal is audited", || async {
        relay
            .audit_events()
            .iter()
            .any(|e| e["op"] == "deny" && e["reason"] == "origin")
            .then_some(())
    })
    .await;
}
