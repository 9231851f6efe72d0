//! The NATS backplane module against real `nats-server` processes: batches published by the
//! relay holding an agent reach a relay that wants them, in order and as the same bytes, or
//! with an exact gap; leases and their release; "no responders" when nobody holds the agent;
//! nothing published on NATS for a stream nobody wants (nats-server's own counters); a server
//! restart, a cluster node killed, TLS with client certificates.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logrelay_e2e::nats::{self, NatsCluster, NatsServer};
use logrelay_e2e::*;
use logrelay_relay::backplane::holes::Hole;
use logrelay_relay::backplane::lease::Change;
use logrelay_relay::backplane::subject::{AgentTokens, Token};
use logrelay_relay::backplane::{
    Answer, Backplane, BackplaneConfig, LeaseFirst, Owner, RemoteSink, ServedAgent,
};
use logrelay_relay::metrics::BackplaneMetrics;
use logrelay_wire::control::SeqPos;
use logrelay_wire::labels::Labels;

/// What a wanting relay received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Batch {
        first: SeqPos,
        end: u64,
        bytes: Bytes,
        repeated: u64,
    },
    Hole(Hole, &'static str),
}

#[derive(Debug, Default)]
struct Recorder {
    got: Mutex<Vec<Got>>,
    answers: Mutex<Vec<Answer>>,
}

impl RemoteSink for Recorder {
    fn batch(
        &self,
        _: Token,
        h: &logrelay_relay::backplane::codec::DataHeader,
        batch: Bytes,
        repeated: u64,
    ) {
        self.got.lock().unwrap().push(Got::Batch {
            first: h.first,
            end: h.end_seq,
            bytes: batch,
            repeated,
        });
    }

    fn hole(&self, _: Token, hole: Hole, reason: &'static str) {
        self.got.lock().unwrap().push(Got::Hole(hole, reason));
    }

    fn answer(&self, _: Token, answer: Answer) {
        self.answers.lock().unwrap().push(answer);
    }
}

impl Recorder {
    fn batches(&self) -> Vec<(SeqPos, u64, Bytes)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|g| match g {
                Got::Batch {
                    first, end, bytes, ..
                } => Some((*first, *end, bytes.clone())),
                Got::Hole(..) => None,
            })
            .collect()
    }

    fn holes(&self) -> Vec<(Hole, &'static str)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|g| match g {
                Got::Hole(h, r) => Some((*h, *r)),
                Got::Batch { .. } => None,
            })
            .collect()
    }

    fn last_end(&self) -> u64 {
        self.batches().last().map_or(0, |(_, end, _)| *end)
    }

    fn answered(&self, f: impl Fn(&Answer) -> bool) -> bool {
        self.answers.lock().unwrap().iter().any(f)
    }

    /// Every line from the first received to the last is delivered once, or inside a hole.
    fn assert_every_line_or_an_exact_gap(&self) {
        let got = self.got.lock().unwrap().clone();
        let mut next: Option<u64> = None;
        for g in &got {
            match g {
                Got::Hole(h, _) => {
                    if let Some(n) = next {
                        assert_eq!(
                            h.from.seq, n,
                            "a hole starts where delivery stopped: {got:?}"
                        );
                    }
                    next = Some(h.from.seq + h.lines);
                }
                Got::Batch {
                    first,
                    end,
                    repeated,
                    ..
                } => {
                    if let Some(n) = next {
                        assert_eq!(
                            first.seq + repeated,
                            n,
                            "no line twice, none missing silently"
                        );
                    }
                    next = Some(*end);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct OwnerLog(Mutex<Vec<Change>>);

impl Owner for OwnerLog {
    fn changed(&self, change: Change, _first: Option<&LeaseFirst>) -> Result<(), &'static str> {
        self.0.lock().unwrap().push(change);
        Ok(())
    }
}

impl OwnerLog {
    fn publishing(&self, stream: Token) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| matches!(c, Change::Publish(s) | Change::Stop(s) if *s == stream))
            .is_some_and(|c| matches!(c, Change::Publish(_)))
    }
}

/// A relay's backplane, with its metrics, connected.
async fn relay(config: BackplaneConfig) -> (Backplane, BackplaneMetrics) {
    logrelay_tls::install_provider();
    let metrics = BackplaneMetrics::default();
    let bp = Backplane::connect(&config, metrics.clone()).await.unwrap();
    let mut connected = bp.connected();
    within("connected to NATS", connected.wait_for(|c| *c))
        .await
        .unwrap();
    (bp, metrics)
}

fn labels() -> Labels {
    Labels {
        org: "acme".into(),
        cluster: "prod".into(),
        node: "node-1".into(),
        namespace: "web".into(),
        pod: "api.v2-7f9".into(),
        container: "main".into(),
        ..Labels::default()
    }
}

/// The owner side: an agent served by `a` with one announced stream.
async fn serve(a: &Backplane) -> (ServedAgent, Arc<OwnerLog>, Token) {
    let owner = Arc::new(OwnerLog::default());
    let tokens = a.subjects().agent("acme", "prod", "node-1");
    let served = a
        .serve_agent(
            "acme",
            "prod",
            "node-1",
            a.next_conn_epoch(&tokens),
            owner.clone(),
        )
        .await
        .unwrap();
    let stream = a.subjects().stream(&labels());
    a.announce(&served, vec![(stream, labels())]);
    (served, owner, stream)
}

fn batch(i: u64, len: usize) -> Bytes {
    Bytes::from(vec![u8::try_from(i % 251).unwrap(); len])
}

/// Batch `i` of 10 lines.
fn publish(served: &ServedAgent, stream: Token, i: u64, len: usize) -> bool {
    served.publish(
        stream,
        SeqPos {
            epoch: 7,
            seq: i * 10,
        },
        i * 10 + 10,
        &batch(i, len),
    )
}

async fn wants(b: &Backplane, agent: AgentTokens, stream: Token) -> Arc<Recorder> {
    let rec = Arc::new(Recorder::default());
    let ticket = b.want_ticket(&agent.agent, &stream);
    b.want(agent, stream, ticket, rec.clone(), LeaseFirst::default())
        .await
        .unwrap();
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cross_nats_in_order_as_the_same_bytes_and_a_lost_one_is_an_exact_gap() {
    let server = NatsServer::start().await;
    let (a, _) = relay(BackplaneConfig {
        // A batch larger than this is not published: its receivers must see an exact gap.
        nats_max_message_bytes: 8 * 1024,
        ..server.backplane("relay-a")
    })
    .await;
    let (b, b_metrics) = relay(server.backplane("relay-b")).await;
    let (served, owner, stream) = serve(&a).await;

    // B sees A's stream in the shared catalog, labels as A announced them.
    eventually("relay B lists relay A's stream", || async {
        b.remote_streams()
            .iter()
            .any(|r| r.stream == stream && r.labels == labels() && r.relay == a.relay())
            .then_some(())
    })
    .await;

    let rec = wants(&b, served.tokens(), stream).await;
    eventually("the lease reaches relay A", || async {
        owner.publishing(stream).then_some(())
    })
    .await;
    eventually("relay A answers where the stream stands", || async {
        rec.answered(|a| matches!(a, Answer::Top { top, .. } if top.known))
            .then_some(())
    })
    .await;

    for i in 0..50 {
        let len = if i == 25 {
            9_000
        } else {
            100 + usize::try_from(i).unwrap()
        };
        let queued = publish(&served, stream, i, len);
        assert_eq!(queued, i != 25, "batch {i}");
    }
    eventually("49 batches at relay B", || async {
        (rec.batches().len() == 49).then_some(())
    })
    .await;
    for (i, (first, end, bytes)) in (0..50).filter(|i| *i != 25).zip(rec.batches()) {
        assert_eq!(
            first,
            SeqPos {
                epoch: 7,
                seq: i * 10
            }
        );
        assert_eq!(end, i * 10 + 10);
        assert_eq!(
            bytes,
            batch(i, 100 + usize::try_from(i).unwrap()),
            "batch {i}"
        );
    }
    assert_eq!(
        rec.holes(),
        [(
            Hole {
                from: SeqPos { epoch: 7, seq: 250 },
                messages: 1,
                lines: 10,
                bytes: 9_000,
                exact: true,
                rest_of_epoch: false,
            },
            "backplane_lost"
        )]
    );
    rec.assert_every_line_or_an_exact_gap();
    assert_eq!(b_metrics.gap_lines.get(), 10);
    assert_eq!(b_metrics.subscriptions.get(), 1);
    a.close(DEADLINE).await;
    b.close(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_on_nats_for_a_stream_nobody_wants() {
    let server = NatsServer::start().await;
    let (a, a_metrics) = relay(server.backplane("relay-a")).await;
    let (b, _) = relay(server.backplane("relay-b")).await;
    let (served, owner, stream) = serve(&a).await;
    let data = |subjects: &[String]| subjects.iter().filter(|s| s.contains(".data.")).count();

    // Nobody wants it: 200 batches from the agent, none on NATS.
    let before = server.counters().await;
    for i in 0..200 {
        assert!(!publish(&served, stream, i, 200));
    }
    assert!(a.flush(DEADLINE).await);
    let after = server.counters().await;
    assert_eq!(data(&server.subscribed_subjects().await), 0);
    assert!(
        after.in_msgs - before.in_msgs < 100,
        "only heartbeats and catalog while nobody watches: {before:?} → {after:?}"
    );
    assert_eq!(
        a_metrics
            .messages_out
            .get_or_create(&logrelay_relay::metrics::MessageKind { kind: "data" })
            .get(),
        0
    );

    // Wanted: one subscription on its subject, and its batches flow.
    let rec = wants(&b, served.tokens(), stream).await;
    eventually("the lease reaches relay A", || async {
        owner.publishing(stream).then_some(())
    })
    .await;
    assert_eq!(data(&server.subscribed_subjects().await), 1);
    assert_eq!(a_metrics.remote_wants.get(), 1);
    let before = server.counters().await;
    for i in 200..400 {
        assert!(publish(&served, stream, i, 200));
    }
    eventually("200 batches at relay B", || async {
        (rec.batches().len() == 200).then_some(())
    })
    .await;
    let after = server.counters().await;
    assert!(
        after.in_msgs - before.in_msgs >= 200,
        "{before:?} → {after:?}"
    );

    // Released: A stops at once, the subscription goes, nothing flows again.
    b.release(&served.tokens().agent, &stream);
    eventually("the release reaches relay A", || async {
        (!owner.publishing(stream)).then_some(())
    })
    .await;
    eventually("no data subscription left", || async {
        (data(&server.subscribed_subjects().await) == 0).then_some(())
    })
    .await;
    assert_eq!(a_metrics.remote_wants.get(), 0);
    let before = server.counters().await;
    for i in 400..600 {
        assert!(!publish(&served, stream, i, 200));
    }
    assert!(a.flush(DEADLINE).await);
    let after = server.counters().await;
    assert!(
        after.in_msgs - before.in_msgs < 100,
        "{before:?} → {after:?}"
    );
    a.close(DEADLINE).await;
    b.close(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_for_an_agent_nobody_holds_is_answered_away() {
    let server = NatsServer::start().await;
    let (b, _) = relay(server.backplane("relay-b")).await;
    let agent = b.subjects().agent("acme", "prod", "nobody");
    let rec = wants(&b, agent, b.subjects().stream(&labels())).await;
    eventually("no responders: the agent is away", || async {
        rec.answered(|a| *a == Answer::Away).then_some(())
    })
    .await;
    b.close(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_that_completes_after_its_release_wants_nothing() {
    let server = NatsServer::start().await;
    let (b, b_metrics) = relay(server.backplane("relay-b")).await;
    let agent = b.subjects().agent("acme", "prod", "nobody");
    let stream = b.subjects().stream(&labels());
    // Decided in this order: want, release; the want's subscription completes after both.
    let ticket = b.want_ticket(&agent.agent, &stream);
    b.release(&agent.agent, &stream);
    let rec = Arc::new(Recorder::default());
    b.want(agent, stream, ticket, rec, LeaseFirst::default())
        .await
        .unwrap();
    assert_eq!(b.wanted(), 0, "released: nothing wanted");
    assert_eq!(b_metrics.subscriptions.get(), 0);
    assert!(!b.ticket_stands(&agent.agent, &stream, ticket));
    // A newer want replaces an older one still subscribing: only the newer takes effect.
    let old = b.want_ticket(&agent.agent, &stream);
    let new = b.want_ticket(&agent.agent, &stream);
    let rec = Arc::new(Recorder::default());
    b.want(agent, stream, old, rec.clone(), LeaseFirst::default())
        .await
        .unwrap();
    assert_eq!(b.wanted(), 0);
    b.want(agent, stream, new, rec, LeaseFirst::default())
        .await
        .unwrap();
    assert_eq!(b.wanted(), 1);
    assert_eq!(b_metrics.subscriptions.get(), 1);
    b.close(DEADLINE).await;
}

/// Publishes batch after batch until relay B has one published after `from`.
async fn flow_until(served: &ServedAgent, stream: Token, rec: &Recorder, from: u64) -> u64 {
    let mut i = from;
    within("batches flow again", async {
        loop {
            publish(served, stream, i, 300);
            i += 1;
            if rec.last_end() > from * 10 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_is_recovered_with_every_line_or_an_exact_gap() {
    let mut server = NatsServer::start().await;
    let (a, a_metrics) = relay(server.backplane("relay-a")).await;
    let (b, b_metrics) = relay(server.backplane("relay-b")).await;
    let (served, owner, stream) = serve(&a).await;
    let rec = wants(&b, served.tokens(), stream).await;
    eventually("the lease reaches relay A", || async {
        owner.publishing(stream).then_some(())
    })
    .await;
    let i = flow_until(&served, stream, &rec, 0).await;

    server.kill();
    let mut connected = a.connected();
    within("relay A sees NATS gone", connected.wait_for(|c| !*c))
        .await
        .unwrap();
    assert_eq!(a_metrics.connected.get(), 0);
    // The agent keeps sending meanwhile; the queue toward NATS holds what it can.
    for j in i..i + 20 {
        publish(&served, stream, j, 300);
    }
    server.start_again().await;
    within("relay A reconnects", connected.wait_for(|c| *c))
        .await
        .unwrap();
    let mut b_connected = b.connected();
    within("relay B reconnects", b_connected.wait_for(|c| *c))
        .await
        .unwrap();
    assert!(a_metrics.reconnects.get() >= 1 && b_metrics.reconnects.get() >= 1);
    flow_until(&served, stream, &rec, i + 20).await;
    rec.assert_every_line_or_an_exact_gap();
    a.close(DEADLINE).await;
    b.close(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_node_is_left_for_another() {
    let mut cluster = NatsCluster::start().await;
    let (a, _) = relay(nats::backplane(cluster.urls(), "relay-a")).await;
    let (b, _) = relay(nats::backplane(cluster.urls(), "relay-b")).await;
    let (served, owner, stream) = serve(&a).await;
    let rec = wants(&b, served.tokens(), stream).await;
    eventually("the lease reaches relay A", || async {
        owner.publishing(stream).then_some(())
    })
    .await;
    let i = flow_until(&served, stream, &rec, 0).await;

    let node = eventually("relay A's node", || cluster.node_of("relay-a")).await;
    cluster.nodes[node].kill();
    eventually("relay A on another node", || async {
        cluster
            .node_of("relay-a")
            .await
            .filter(|n| *n != node)
            .map(|_| ())
    })
    .await;
    flow_until(&served, stream, &rec, i).await;
    rec.assert_every_line_or_an_exact_gap();
    a.close(DEADLINE).await;
    b.close(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nats_with_a_client_certificate() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let chain = |id: &logrelay_tls::Identity| -> String {
        id.chain
            .iter()
            .map(|c| logrelay_tls::pem("CERTIFICATE", c))
            .collect()
    };
    let server_id = pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let client_id = pki
        .ca
        .agent(&logrelay_tls::AgentId {
            org: "relays".into(),
            cluster: "control-plane".into(),
        })
        .unwrap();
    let ca = write("ca.pem", pki.ca.ca_pem());
    let server_cert = write("server.crt", chain(&server_id));
    let server_key = write(
        "server.key",
        logrelay_tls::pem("PRIVATE KEY", server_id.key.secret_der()),
    );
    let client_cert = write("client.crt", chain(&client_id));
    let client_key = write(
        "client.key",
        logrelay_tls::pem("PRIVATE KEY", client_id.key.secret_der()),
    );
    let server = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca.display()
    ))
    .await;
    let tls = |id: &str| BackplaneConfig {
        nats_ca_file: Some(ca.clone()),
        nats_cert_file: Some(client_cert.clone()),
        nats_key_file: Some(client_key.clone()),
        ..server.backplane(id)
    };
    let (a, a_metrics) = relay(tls("relay-a")).await;
    let (b, _) = relay(tls("relay-b")).await;
    assert_eq!(a_metrics.connected.get(), 1);
    let (served, owner, stream) = serve(&a).await;
    let rec = wants(&b, served.tokens(), stream).await;
    eventually("the lease reaches relay A over TLS", || async {
        owner.publishing(stream).then_some(())
    })
    .await;
    flow_until(&served, stream, &rec, 0).await;
    let connz = server.monitoring("/connz").await;
    assert!(
        connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tls_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("1."))),
        "{connz}"
    );

    // Without a client certificate the server refuses the relay: it never connects.
    logrelay_tls::install_provider();
    let metrics = BackplaneMetrics::default();
    let refused = Backplane::connect(
        &BackplaneConfig {
            nats_cert_file: None,
            nats_key_file: None,
            ..tls("relay-c")
        },
        metrics.clone(),
    )
    .await
    .unwrap();
    eventually(
        "the server refused a relay without a client certificate",
        || async { server.log().contains("TLS handshake error").then_some(()) },
    )
    .await;
    assert!(!*refused.connected().borrow());
    assert_eq!(metrics.connected.get(), 0);
    refused.close(std::time::Duration::from_millis(100)).await;
    a.close(DEADLINE).await;
    b.close(DEADLINE).await;
}
