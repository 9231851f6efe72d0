//! A watched list (`list` with `watch`) through a real agent and relay: the streams there are,
//! then every change of the catalog as it happens, only of the session's org.

use logrelay_e2e::*;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};

/// `(stream, pod, live)` added and `(stream, reason)` removed.
type Changes = (Vec<(u64, String, bool)>, Vec<(u64, String)>);

/// Every change the catalog events told since the watch's last `streams` answer (an earlier
/// watch of the same id, ended by the test, may have told some before it).
fn changes(s: &Subscriber) -> Changes {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let answered = s
        .events
        .iter()
        .rposition(|e| matches!(e, Event::Streams { .. }))
        .expect("the list was answered");
    for e in &s.events[answered..] {
        if let Event::Catalog {
            id,
            added: a,
            removed: r,
        } = e
        {
            assert_eq!(id, "w");
            added.extend(a.iter().map(|e| (e.stream, e.labels.pod.clone(), e.live)));
            removed.extend(r.iter().map(|r| (r.stream, r.reason.to_string())));
        }
    }
    (added, removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_list_shows_streams_as_they_come_and_go() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    pods.container("ns", "first", "main")
        .write_lines([b"one\n".as_slice()])
        .unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let other = PodsDir::new();
    other
        .container("ns", "foreign", "main")
        .write_lines([b"theirs\n".as_slice()])
        .unwrap();

    let mut s = relay.subscriber().await;
    let watch = Request::List {
        selector: Selector {
            namespace: Some("ns".into()),
            ..Selector::default()
        },
        id: Some("w".into()),
        watch: true,
    };
    // The first pod may not be announced yet: ask until it is listed.
    let first = within("the first pod listed", async {
        loop {
            let before = s.events.len();
            s.client.send(&watch).await.unwrap();
            let answered = |s: &Subscriber| {
                s.events[before..]
                    .iter()
                    .any(|e| matches!(e, Event::Streams { .. }))
            };
            s.until("the list's answer", answered).await;
            match s.events.last().unwrap() {
                Event::Streams { id, streams } if !streams.is_empty() => {
                    assert_eq!(id.as_deref(), Some("w"));
                    assert_eq!(streams.len(), 1);
                    assert_eq!(streams[0].labels.pod, "first");
                    assert!(streams[0].live);
                    return streams[0].stream;
                }
                Event::Streams { .. } => {
                    s.client
                        .send(&Request::Unsubscribe { id: "w".into() })
                        .await
                        .unwrap();
                    s.until("unsubscribed", |s| {
                        matches!(s.events.last(), Some(Event::Unsubscribed { .. }))
                    })
                    .await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;

    // Another org's agent announces a stream: nothing is told. A new pod of ours appears.
    let _foreign = TestAgent::start_as(&pki, &other, relay.quic_addr(), "globex", "c2").await;
    pods.container("ns", "second", "main")
        .write_lines([b"two\n".as_slice()])
        .unwrap();
    s.until("the second pod added", |s| !changes(s).0.is_empty())
        .await;
    let (added, _) = changes(&s);
    assert_eq!(added.len(), 1, "{added:?}");
    let (second, ref pod, live) = added[0];
    assert_eq!((pod.as_str(), live), ("second", true));

    // The first pod is deleted: removed, with the agent's reason.
    let dir = pods.log_path("ns", "first", "main");
    std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    s.until("the first pod removed", |s| !changes(s).1.is_empty())
        .await;
    assert_eq!(changes(&s).1, vec![(first, "container_removed".into())]);

    // The agent goes away (nobody watches its stream): removed as disconnected.
    drop(agent);
    s.until("the second pod removed", |s| changes(s).1.len() == 2)
        .await;
    assert_eq!(changes(&s).1[1], (second, "agent_disconnected".into()));
    assert_eq!(
        changes(&s).0.len(),
        1,
        "nothing of the other org: {:?}",
        s.events
    );
}
