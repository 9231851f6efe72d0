//! The hub's decisions through its shell: real rings and outboxes, virtual time, no runtime
//! (but for the timer task's own test).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::labels::Labels;
use logrelay_wire::reason::EndReason;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, StreamEntry};
use tokio::sync::{Notify, mpsc};

use super::core::{
    AgentViolation, CatalogRefusal, Core, Refusal, STREAM_OVERHEAD_BYTES, Time, Unresolved,
};
use super::{DemandSink, HubConfig, Shell};
use crate::auth::Claims;
use crate::config::RelayConfig;
use crate::fanout::LiveStream;
use crate::ids::{AgentId, DemandId};
use crate::metrics::RelayMetrics;
use crate::session::outbox::Outbox;

/// A hub's shell on virtual time, with the hub's calls (ids as the wire carries them).
struct TestHub {
    shell: RefCell<Shell>,
    now: Cell<Time>,
    metrics: Arc<RelayMetrics>,
}

impl TestHub {
    fn now(&self) -> Time {
        self.now.get()
    }

    /// Lets `secs` pass, running the timers due on the way.
    fn advance(&self, secs: u64) {
        let until = self.now().plus(Duration::from_secs(secs));
        let mut shell = self.shell.borrow_mut();
        while let Some(at) = shell.next_timer().filter(|at| *at <= until) {
            shell.timers_fired(at);
        }
        self.now.set(until);
    }

    fn add_agent(
        &self,
        org: &str,
        cluster: &str,
        tx: mpsc::Sender<RelayMsg>,
        reset: Arc<Notify>,
    ) -> AgentId {
        let now = self.now();
        self.shell
            .borrow_mut()
            .add_agent(now, org, cluster, tx, reset)
    }

    fn remove_agent(&self, agent: AgentId) {
        let now = self.now();
        self.shell.borrow_mut().remove_agent(now, agent);
    }

    fn catalog_add(&self, agent: AgentId, streams: Vec<StreamInfo>) -> Vec<CatalogRefusal> {
        let now = self.now();
        self.shell.borrow_mut().catalog_add(now, agent, streams)
    }

    fn catalog_remove(&self, agent: AgentId, gone: Vec<StreamGone>) {
        let now = self.now();
        self.shell.borrow_mut().catalog_remove(now, agent, gone);
    }

    fn open_failed(
        &self,
        agent: AgentId,
        demand: u64,
        code: ErrorCode,
        _message: &str,
    ) -> Result<(), AgentViolation> {
        let now = self.now();
        self.shell
            .borrow_mut()
            .open_failed(now, agent, DemandId::from(demand), code)
    }

    fn resolve(
        &self,
        agent: AgentId,
        demand: u64,
    ) -> Result<(DemandSink, Arc<AtomicBool>), Unresolved> {
        let now = self.now();
        self.shell
            .borrow_mut()
            .resolve(now, agent, DemandId::from(demand))
    }

    /// Resolves a demand for the connection it was issued to.
    fn resolve_any(&self, demand: u64) -> Option<(DemandSink, Arc<AtomicBool>)> {
        let agent = self
            .shell
            .borrow()
            .core()
            .demand_agent(DemandId::from(demand))?;
        self.resolve(agent, demand).ok()
    }

    fn acks(&self, agent: AgentId) -> Vec<(u64, SeqPos)> {
        self.shell
            .borrow()
            .acks(agent)
            .into_iter()
            .map(|(d, at)| (d.get(), at))
            .collect()
    }

    fn demand_finished(&self, agent: AgentId, demand: u64) {
        let now = self.now();
        self.shell
            .borrow_mut()
            .demand_finished(now, agent, DemandId::from(demand));
    }

    fn add_session(&self, org: &str, claims: Option<Arc<Claims>>) -> Result<Arc<Outbox>, Refusal> {
        let now = self.now();
        self.shell.borrow_mut().add_session(now, org, claims)
    }

    fn remove_session(&self, s: &Outbox) {
        let now = self.now();
        self.shell.borrow_mut().remove_session(now, s.id());
    }

    fn list(&self, s: &Outbox, selector: &Selector) -> Vec<StreamEntry> {
        self.shell.borrow().list(s.id(), selector)
    }

    fn watch_list(&self, s: &Outbox, id: &str, selector: Selector) -> Result<(), Refusal> {
        let now = self.now();
        self.shell
            .borrow_mut()
            .watch_list(now, s.id(), id, selector)
    }

    fn subscribe(
        &self,
        s: &Outbox,
        id: &str,
        selector: Selector,
        demand: Demand,
    ) -> Result<Option<&'static str>, Refusal> {
        let now = self.now();
        self.shell
            .borrow_mut()
            .subscribe(now, s.id(), id, selector, demand)
    }

    fn unsubscribe(&self, s: &Outbox, id: &str) -> bool {
        let now = self.now();
        self.shell.borrow_mut().unsubscribe(now, s.id(), id)
    }
}

/// The hub's settings in tests: the relay's defaults, but small limits.
fn test_config() -> HubConfig {
    let mut config = RelayConfig::loopback().hub();
    config.ring_bytes = 1 << 20;
    config.backfill_batches = 4;
    config.memory_budget_bytes = 1 << 30;
    let c = &mut config.core;
    c.linger = Duration::from_secs(5);
    c.max_subscriptions_per_session = 4;
    c.max_sessions_per_org = 3;
    c.max_demands_per_agent = 100;
    c.max_demands_per_org = 100;
    c.max_streams_per_agent = 100;
    c.max_streams_per_org = 100;
    c.max_label_bytes_per_stream = 256;
    c.max_label_bytes_per_agent = 4096;
    config
}

fn hub() -> TestHub {
    hub_with(|_| {})
}

fn hub_with(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
    let mut config = test_config();
    tweak(&mut config);
    let metrics = Arc::new(RelayMetrics::new());
    let core = Core::new(config.core.clone(), Box::new(fastrand_u64));
    TestHub {
        shell: RefCell::new(Shell::new(
            core,
            config,
            metrics.clone(),
            Arc::new(Notify::new()),
        )),
        now: Cell::new(Time::ZERO),
        metrics,
    }
}

/// Random ids (not seeded: these tests must hold for any).
fn fastrand_u64() -> u64 {
    use ::ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ::ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// An agent of `org` announcing `streams`; its control queue.
fn agent_of(
    hub: &TestHub,
    org: &str,
    streams: Vec<StreamInfo>,
) -> (AgentId, mpsc::Receiver<RelayMsg>) {
    let (tx, rx) = mpsc::channel(64);
    let agent = hub.add_agent(org, "c1", tx, Arc::new(Notify::new()));
    assert!(hub.catalog_add(agent, streams).is_empty());
    (agent, rx)
}

#[test]
fn an_agent_finds_only_the_demands_of_its_own_connection() {
    let hub = hub();
    let (victim, mut rx) = agent_of(&hub, "acme", vec![info(1, "p", "")]);
    let (attacker, _arx) = agent_of(&hub, "evil", vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let (demand, stream_ref, _) = opened(&mut rx);
    assert_eq!(stream_ref >> 53, 0, "stream ids are exact in JavaScript");

    // Another connection presenting it, or anything near it, finds nothing.
    let foreign = Err(Unresolved::Violation(AgentViolation::ForeignDemand));
    assert_eq!(hub.resolve(attacker, demand).map(drop), foreign);
    for guess in [demand + 1, demand ^ (1 << 40), 1, 2, 3] {
        assert_eq!(
            hub.resolve(attacker, guess).map(drop),
            Err(Unresolved::Violation(AgentViolation::UnknownDemand)),
            "{guess:#x}"
        );
    }
    assert_eq!(
        hub.open_failed(attacker, demand, ErrorCode::UnknownStream, "no"),
        Err(AgentViolation::ForeignDemand)
    );
    hub.demand_finished(attacker, demand);
    hub.catalog_remove(
        attacker,
        vec![StreamGone {
            id: 1,
            reason: EndReason::ContainerRemoved,
        }],
    );
    // The victim's demand is untouched: its data stream is taken, once.
    assert!(rx.try_recv().is_err(), "no cancel, no re-open");
    let Ok((DemandSink::Live(live), _)) = hub.resolve(victim, demand) else {
        panic!("the victim's own demand resolves")
    };
    assert_eq!(live.id().get(), stream_ref);
    assert_eq!(
        hub.resolve(victim, demand).map(drop),
        Err(Unresolved::Violation(AgentViolation::DuplicateDataStream))
    );
    assert!(
        s.queued().iter().all(|e| !e.contains(r#""event":"end""#)),
        "the victim's session saw nothing"
    );
    // Its own demand that ended is no violation, just gone.
    hub.demand_finished(victim, demand);
    assert_eq!(hub.resolve(victim, demand).map(drop), Err(Unresolved::Gone));
    assert_eq!(
        hub.open_failed(victim, demand, ErrorCode::UnknownStream, "late"),
        Ok(())
    );
}

#[test]
fn demands_beyond_a_cap_are_refused_with_a_named_end() {
    let hub = hub_with(|c| c.core.max_demands_per_agent = 2);
    let (_, mut rx) = agent_of(
        &hub,
        "acme",
        vec![info(1, "p1", ""), info(2, "p2", ""), info(3, "p3", "")],
    );
    let s = hub.add_session("acme", None).unwrap();
    let capped = hub
        .subscribe(&s, "a", Selector::default(), follow(0))
        .unwrap();
    assert_eq!(capped, Some("demands_per_agent"));
    assert!(opened(&mut rx).0 != opened(&mut rx).0);
    assert!(rx.try_recv().is_err(), "two demands, not three");
    assert_eq!(hub.metrics.demands_open.get(), 2);
    let ended = s
        .queued()
        .iter()
        .filter(|e| e.contains(r#""reason":"demand_limit""#))
        .count();
    assert_eq!(ended, 1);
    // A one-off read beyond the cap ends at once too.
    let once = Demand {
        follow: false,
        ..follow(5)
    };
    assert_eq!(
        hub.subscribe(&s, "o", sel("p1"), once).unwrap(),
        Some("demands_per_agent")
    );
    // The org's cap counts across its agents.
    let hub = hub_with(|c| c.core.max_demands_per_org = 1);
    let (_, mut rx1) = agent_of(&hub, "acme", vec![info(1, "p1", "")]);
    let (_, mut rx2) = agent_of(&hub, "acme", vec![info(1, "p2", "")]);
    let s = hub.add_session("acme", None).unwrap();
    assert_eq!(
        hub.subscribe(&s, "a", Selector::default(), follow(0))
            .unwrap(),
        Some("demands_per_org")
    );
    assert!(rx1.try_recv().is_ok() != rx2.try_recv().is_ok(), "one open");
}

#[test]
fn streams_beyond_a_cap_are_refused_by_limit_and_memory_follows() {
    let hub = hub_with(|c| {
        c.core.max_streams_per_agent = 3;
        c.core.max_label_bytes_per_stream = 64;
        c.core.max_label_bytes_per_agent = 1000;
        c.core.max_streams_per_org = 4;
    });
    let (tx, _rx) = mpsc::channel(16);
    let a = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    let long = "x".repeat(100);
    let refused = hub.catalog_add(
        a,
        vec![
            info(1, "p1", ""),
            info(2, &long, ""),
            info(3, "p3", ""),
            info(4, "p4", ""),
            info(5, "p5", ""),
        ],
    );
    assert_eq!(
        refused,
        vec![
            CatalogRefusal {
                limit: "label_bytes_per_stream",
                streams: vec![2],
            },
            CatalogRefusal {
                limit: "streams_per_agent",
                streams: vec![5],
            },
        ]
    );
    assert_eq!(hub.metrics.streams.get(), 3);
    assert!(hub.metrics.catalog_bytes.get() >= 3 * STREAM_OVERHEAD_BYTES as i64);
    // The org's cap, across its agents.
    let (tx, _rx2) = mpsc::channel(16);
    let b = hub.add_agent("acme", "c2", tx, Arc::new(Notify::new()));
    let refused = hub.catalog_add(b, vec![info(1, "q1", ""), info(2, "q2", "")]);
    assert_eq!(
        refused,
        vec![CatalogRefusal {
            limit: "streams_per_org",
            streams: vec![2],
        }]
    );
    // Gone with their agents, and their bytes with them.
    hub.remove_agent(a);
    hub.remove_agent(b);
    assert_eq!(hub.metrics.streams.get(), 0);
    assert_eq!(hub.metrics.catalog_bytes.get(), 0);
}

/// An agent of org `acme` announcing `streams`; its control queue.
fn agent(hub: &TestHub, streams: Vec<StreamInfo>) -> (AgentId, mpsc::Receiver<RelayMsg>) {
    let (tx, rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    hub.catalog_add(agent, streams);
    (agent, rx)
}

#[test]
fn allowlisted_pod_metadata_out_of_bounds_refuses_only_that_stream() {
    let hub = hub_with(|_| {});
    let (tx, _rx) = mpsc::channel(16);
    let a = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    let with_meta = |id, pod: &str, meta: &[(&str, &str)]| {
        let mut i = info(id, pod, "");
        i.labels.meta = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        i
    };
    let refused = hub.catalog_add(
        a,
        vec![
            with_meta(1, "p1", &[("label:team", "ml")]),
            with_meta(2, "p2", &[("namespace", "other")]),
            with_meta(3, "p3", &[("annotation:big", &"v".repeat(3000))]),
        ],
    );
    assert_eq!(
        refused,
        vec![CatalogRefusal {
            limit: "meta_per_stream",
            streams: vec![2, 3],
        }]
    );
    assert_eq!(hub.metrics.streams.get(), 1);
}

fn info(id: u64, pod: &str, org: &str) -> StreamInfo {
    StreamInfo {
        id,
        labels: Labels {
            org: org.into(),
            namespace: "ns".into(),
            pod: pod.into(),
            container: "c".into(),
            ..Labels::default()
        },
    }
}

fn sel(pod: &str) -> Selector {
    Selector {
        pod: Some(pod.into()),
        ..Selector::default()
    }
}

/// A live subscription asking for the last `tail` lines.
fn follow(tail: u32) -> Demand {
    Demand {
        tail: Some(tail),
        follow: true,
        ..Demand::default()
    }
}

/// The next message to the agent, which must be an `open`: (demand, stream_ref, spec).
fn opened(rx: &mut mpsc::Receiver<RelayMsg>) -> (u64, u64, Demand) {
    match rx.try_recv() {
        Ok(RelayMsg::Open {
            demand,
            stream_ref,
            demand_spec,
            ..
        }) => (demand, stream_ref, demand_spec),
        other => panic!("expected open, got {other:?}"),
    }
}

/// A session watching pod `p` (stream 1 of a fresh agent) from its first subscription
/// `a`, and the stream's ring holding lines up to `(3, 40)`.
fn watched() -> (
    TestHub,
    mpsc::Receiver<RelayMsg>,
    Arc<Outbox>,
    Arc<LiveStream>,
) {
    let hub = hub();
    let (_, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let (demand, _, _) = opened(&mut rx);
    let Some((DemandSink::Live(live), _)) = hub.resolve_any(demand) else {
        panic!("live demand")
    };
    live.push(
        Bytes::from_static(b"batch"),
        40,
        SeqPos { epoch: 3, seq: 40 },
    );
    (hub, rx, s, live)
}

#[test]
fn first_watcher_opens_and_last_one_cancels_after_the_linger() {
    let hub = hub();
    let (_, mut rx) = agent(&hub, vec![info(5, "p", "spoofed-org")]);
    assert!(
        rx.try_recv().is_err(),
        "nothing is opened while nobody watches"
    );

    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(10)).unwrap();
    let (demand, _, spec) = opened(&mut rx);
    assert_eq!(spec.tail, Some(10));
    assert!(spec.follow);
    assert!(matches!(
        hub.resolve_any(demand),
        Some((DemandSink::Live(_), _))
    ));

    assert!(hub.unsubscribe(&s, "a"));
    hub.advance(4);
    assert!(rx.try_recv().is_err(), "still lingering");
    hub.advance(2);
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });
}

#[test]
fn org_comes_from_the_agent_and_sessions_see_only_their_org() {
    let hub = hub();
    let _agent = agent(&hub, vec![info(1, "p", "other")]);
    let mine = hub.add_session("acme", None).unwrap();
    let theirs = hub.add_session("other", None).unwrap();
    assert_eq!(hub.list(&mine, &Selector::default())[0].labels.org, "acme");
    assert!(hub.list(&theirs, &Selector::default()).is_empty());
}

/// The session's queued events, parsed, emptying the queue.
fn take_events(s: &Outbox) -> Vec<Event> {
    s.take_events()
}

/// `(stream, live)` added and `(stream, reason)` removed by a watch's catalog events.
type Changes = (Vec<(u64, bool)>, Vec<(u64, EndReason)>);

/// The changes the catalog events of watch `want` told.
fn catalog_changes(events: &[Event], want: &str) -> Changes {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for e in events {
        if let Event::Catalog {
            id,
            added: a,
            removed: r,
        } = e
        {
            assert_eq!(id, want);
            added.extend(a.iter().map(|e| (e.stream, e.live)));
            removed.extend(r.iter().map(|r| (r.stream, r.reason.clone())));
        }
    }
    (added, removed)
}

#[test]
fn a_watched_list_tells_of_streams_that_come_go_and_change_liveness() {
    let hub = hub();
    let (a1, _rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.watch_list(&s, "w", Selector::default()).unwrap();
    let events = take_events(&s);
    let [Event::Streams { id, streams }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(id.as_deref(), Some("w"));
    assert_eq!(streams.len(), 1);
    assert!(streams[0].live);
    let p = streams[0].stream;

    // A new stream; another org's stream is never told; a selector narrows.
    hub.watch_list(&s, "only-q", sel("q")).unwrap();
    take_events(&s);
    hub.catalog_add(a1, vec![info(2, "q", "")]);
    let (tx, _other_rx) = mpsc::channel(16);
    let globex = hub.add_agent("globex", "c9", tx, Arc::new(Notify::new()));
    hub.catalog_add(globex, vec![info(1, "q", "")]);
    let events = take_events(&s);
    assert_eq!(events.len(), 2, "{events:?}");
    let q = hub.list(&s, &sel("q"))[0].stream;
    let mut ids: Vec<&str> = Vec::new();
    for e in &events {
        let Event::Catalog { id, .. } = e else {
            panic!("{e:?}")
        };
        ids.push(id);
        assert_eq!(
            catalog_changes(std::slice::from_ref(e), id),
            (vec![(q, true)], vec![])
        );
    }
    ids.sort_unstable();
    assert_eq!(ids, ["only-q", "w"]);
    assert!(hub.unsubscribe(&s, "only-q"));
    assert!(matches!(&take_events(&s)[..], [Event::Unsubscribed { id }] if id == "only-q"));

    // Its agent goes: the watched stream stays, not live; the unwatched one goes.
    let w = hub.add_session("acme", None).unwrap();
    hub.subscribe(&w, "a", sel("p"), follow(0)).unwrap();
    hub.remove_agent(a1);
    let events = take_events(&s);
    assert_eq!(
        events.len(),
        1,
        "one event per change of the catalog: {events:?}"
    );
    assert_eq!(
        catalog_changes(&events, "w"),
        (vec![(p, false)], vec![(q, EndReason::AgentDisconnected)])
    );

    // Back: live again. Then removed by its agent: gone, with the agent's reason.
    let (a2, _rx2) = agent(&hub, vec![info(7, "p", "")]);
    assert_eq!(
        catalog_changes(&take_events(&s), "w"),
        (vec![(p, true)], vec![])
    );
    hub.catalog_remove(
        a2,
        vec![StreamGone {
            id: 7,
            reason: EndReason::ContainerRemoved,
        }],
    );
    assert_eq!(
        catalog_changes(&take_events(&s), "w"),
        (vec![], vec![(p, EndReason::ContainerRemoved)])
    );

    // A watched list counts as a subscription, and shares their ids.
    assert_eq!(
        hub.subscribe(&s, "w", sel("p"), follow(0))
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
    for i in 0..3 {
        hub.subscribe(&s, &format!("s{i}"), sel("p"), follow(0))
            .unwrap();
    }
    assert_eq!(
        hub.watch_list(&s, "x", Selector::default())
            .unwrap_err()
            .code,
        ErrorCode::LimitExceeded
    );
    // Once unwatched, nothing more is told.
    assert!(hub.unsubscribe(&s, "w"));
    take_events(&s);
    hub.catalog_add(a2, vec![info(8, "r", "")]);
    assert!(take_events(&s).is_empty());
}

#[test]
fn a_joining_watcher_gets_a_backfill_up_to_the_ring_end() {
    let (hub, mut rx, _first, live) = watched();
    let second = hub.add_session("acme", None).unwrap();
    hub.subscribe(&second, "b", sel("p"), follow(100)).unwrap();
    let (d2, r2, spec) = opened(&mut rx);
    assert_eq!(r2, live.id().get());
    assert_eq!(spec.until, Some(SeqPos { epoch: 3, seq: 40 }));
    assert!(!spec.follow);
    assert!(matches!(
        hub.resolve_any(d2),
        Some((DemandSink::Backfill { .. }, _))
    ));
    assert_eq!(second.backfills(live.id()), 1);
}

#[test]
fn a_second_subscription_of_a_session_gets_its_own_backlog_filter_and_end() {
    let (hub, mut rx, s, live) = watched();
    // Read the ring, as the session's writer would.
    assert_eq!(s.read_ring(live.id()).batches.len(), 1);

    // A backlog of its own, up to what the session has had from the ring.
    hub.subscribe(&s, "tail", sel("p"), follow(100)).unwrap();
    let (_, stream_ref, spec) = opened(&mut rx);
    assert_eq!(stream_ref, live.id().get());
    assert_eq!(
        (spec.tail, spec.until, spec.follow),
        (Some(100), Some(SeqPos { epoch: 3, seq: 40 }), false)
    );

    // A filter, and a one-off read: demands of their own, under ids of their own.
    hub.subscribe(
        &s,
        "errors",
        sel("p"),
        Demand {
            contains: Some("ERROR".into()),
            ..follow(10)
        },
    )
    .unwrap();
    let (filtered, errors, spec) = opened(&mut rx);
    assert_eq!(spec.contains.as_deref(), Some("ERROR"));
    assert!(spec.follow);
    hub.subscribe(
        &s,
        "once",
        sel("p"),
        Demand {
            follow: false,
            ..follow(5)
        },
    )
    .unwrap();
    let (_, once, spec) = opened(&mut rx);
    assert!(!spec.follow && spec.until.is_none());
    assert!(errors != live.id().get() && once != live.id().get() && errors != once);
    {
        assert_eq!(s.backfills(live.id()), 1);
        // The filter is a ring of its own (fed by its live demand), the one-off a demand.
        assert!(!s.is_once(errors.into()));
        assert_eq!(s.ring_of(errors.into()), Some(errors));
        assert!(s.is_once(once.into()));
        let queued = s.queued();
        for (sub, id) in [("errors", errors), ("once", once)] {
            let event = format!(r#""event":"stream","id":"{sub}","stream":{id},"#);
            assert!(queued.iter().any(|e| e.contains(&event)), "{event}");
        }
    }
    assert!(matches!(
        hub.resolve_any(filtered),
        Some((DemandSink::Live(l), _)) if l.id().get() == errors
    ));

    // Leaving the filtered one cancels only its demand, after the linger; the stream's
    // ring stays watched.
    assert!(hub.unsubscribe(&s, "errors"));
    assert!(rx.try_recv().is_err(), "lingering");
    hub.advance(6);
    assert_eq!(
        rx.try_recv().unwrap(),
        RelayMsg::Cancel { demand: filtered }
    );
    assert!(rx.try_recv().is_err());
    assert!(s.has_watch(live.id()));
    assert_eq!(
        hub.metrics.filtered_rings.get(),
        0,
        "the filtered ring is gone"
    );
}

fn filter(contains: Option<&str>, matches: Option<&str>, tail: u32) -> Demand {
    Demand {
        contains: contains.map(Into::into),
        matches: matches.map(Into::into),
        ..follow(tail)
    }
}

#[test]
fn sessions_asking_for_the_same_filter_share_one_ring_and_one_demand() {
    let hub = hub();
    let (_, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let sessions: Vec<Arc<Outbox>> = (0..3)
        .map(|_| hub.add_session("acme", None).unwrap())
        .collect();
    let errors = || filter(Some("db"), Some("ERR(OR)?"), 10);

    // The first asks the agent for the filtered ring, with the filter and its backlog.
    hub.subscribe(&sessions[0], "e", sel("p"), errors())
        .unwrap();
    let (demand, ring, spec) = opened(&mut rx);
    assert_eq!(
        (spec.contains.as_deref(), spec.matches.as_deref()),
        (Some("db"), Some("ERR(OR)?"))
    );
    assert_eq!((spec.tail, spec.follow, spec.until), (Some(10), true, None));
    let Some((DemandSink::Live(live), _)) = hub.resolve_any(demand) else {
        panic!("a live demand feeding a ring")
    };
    assert_eq!(live.id().get(), ring);
    // The ring is not a stream of the catalog.
    let listed = hub.list(&sessions[0], &Selector::default());
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0].stream, ring);

    // The second joins before anything arrived: it shares the backlog, no new demand.
    hub.subscribe(&sessions[1], "e", sel("p"), errors())
        .unwrap();
    assert!(rx.try_recv().is_err(), "one demand for one filter");
    let batch = Bytes::from_static(b"matching lines");
    live.push(batch.clone(), 4, SeqPos { epoch: 9, seq: 12 });

    // The third joins a ring with data: a backfill of the same filter up to its end.
    hub.subscribe(&sessions[2], "e", sel("p"), errors())
        .unwrap();
    let (backfill, stream_ref, spec) = opened(&mut rx);
    assert_eq!(stream_ref, ring);
    assert_eq!(
        (
            spec.until,
            spec.follow,
            spec.contains.as_deref(),
            spec.matches.as_deref()
        ),
        (
            Some(SeqPos { epoch: 9, seq: 12 }),
            false,
            Some("db"),
            Some("ERR(OR)?")
        )
    );
    assert!(matches!(
        hub.resolve_any(backfill),
        Some((DemandSink::Backfill { stream, .. }, _)) if stream.get() == ring
    ));

    // One push, every watcher reads the very same bytes from its own cursor.
    for (i, s) in sessions.iter().enumerate() {
        let event = format!(r#""event":"stream","id":"e","stream":{ring},"#);
        assert!(s.queued().iter().any(|e| e.contains(&event)), "{event}");
        let read = s.read_ring(ring.into());
        if i < 2 {
            assert_eq!(read.batches.len(), 1);
            assert_eq!(read.batches[0].0.as_ptr(), batch.as_ptr(), "zero-copy");
        } else {
            assert!(
                read.batches.is_empty(),
                "the third starts at the join point"
            );
        }
    }

    // Another filter is another ring and another demand.
    hub.subscribe(&sessions[0], "w", sel("p"), filter(None, Some("WARN"), 0))
        .unwrap();
    let (other, other_ring, spec) = opened(&mut rx);
    assert_ne!(other_ring, ring);
    assert_eq!(
        (spec.contains, spec.matches.as_deref()),
        (None, Some("WARN"))
    );
    assert_eq!(hub.metrics.filtered_rings.get(), 2);

    // The demand lives until the last watcher of the filter leaves, then lingers.
    hub.remove_session(&sessions[0]);
    assert!(hub.unsubscribe(&sessions[1], "e"));
    hub.advance(6);
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand: other });
    assert!(rx.try_recv().is_err(), "still watched by the third session");
    assert!(hub.unsubscribe(&sessions[2], "e"));
    assert_eq!(
        rx.try_recv().unwrap(),
        RelayMsg::Cancel { demand: backfill },
        "its backfill, still arriving, is cancelled at once"
    );
    hub.advance(4);
    assert!(rx.try_recv().is_err(), "lingering");
    hub.advance(2);
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });
    assert_eq!(hub.metrics.filtered_rings.get(), 0);
    assert_eq!(
        hub.metrics.buffered_bytes.get(),
        0,
        "its bytes are released"
    );
}

#[test]
fn a_filtered_ring_resumes_after_a_reconnect_and_ends_if_its_filter_is_refused() {
    let hub = hub();
    let (agent1, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "e", sel("p"), filter(None, Some("ERROR"), 10))
        .unwrap();
    let (demand, ring, _) = opened(&mut rx);
    let Some((DemandSink::Live(live), _)) = hub.resolve_any(demand) else {
        panic!()
    };
    live.push(Bytes::from_static(b"x"), 3, SeqPos { epoch: 4, seq: 30 });

    // The agent goes and comes back: the ring resumes where it ended, with its filter.
    hub.remove_agent(agent1);
    assert!(hub.resolve_any(demand).is_none());
    let (agent2, mut rx) = agent(&hub, vec![info(7, "p", "")]);
    let Ok(RelayMsg::Open {
        demand,
        stream: 7,
        stream_ref,
        demand_spec,
        ..
    }) = rx.try_recv()
    else {
        panic!("the filtered ring is re-opened")
    };
    assert_eq!(stream_ref, ring);
    assert_eq!(demand_spec.since_seq, Some(SeqPos { epoch: 4, seq: 30 }));
    assert_eq!(demand_spec.matches.as_deref(), Some("ERROR"));
    assert!(rx.try_recv().is_err(), "nothing else was watched");

    // An agent that cannot serve the filter refuses it: the watch ends, no retry.
    hub.open_failed(
        agent2,
        demand,
        ErrorCode::BadRequest,
        "line filter `matches`: …",
    )
    .unwrap();
    assert!(!s.has_watch(ring.into()));
    let end = format!(r#"{{"event":"end","stream":{ring},"reason":"refused"}}"#);
    let queued = s.queued();
    assert!(queued.contains(&end), "{queued:?}");
    assert_eq!(hub.metrics.filtered_rings.get(), 0);
    assert!(rx.try_recv().is_err());
    hub.remove_agent(agent2);
}

#[test]
fn a_watched_filtered_ring_keeps_its_stream_while_the_agent_is_away() {
    let hub = hub();
    let (agent1, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "e", sel("p"), filter(Some("ERROR"), None, 0))
        .unwrap();
    opened(&mut rx);
    hub.remove_agent(agent1);
    assert_eq!(
        hub.list(&s, &Selector::default()).len(),
        1,
        "kept, orphaned"
    );
    assert_eq!(hub.metrics.filtered_rings.get(), 1);
    // Its last watcher leaving, the orphan lingers out its time (a resume within it finds
    // where the ring ended), then both go.
    assert!(hub.unsubscribe(&s, "e"));
    hub.advance(4);
    assert_eq!(hub.list(&s, &Selector::default()).len(), 1, "lingering");
    assert_eq!(hub.metrics.filtered_rings.get(), 1);
    hub.advance(2);
    assert!(hub.list(&s, &Selector::default()).is_empty());
    assert_eq!(
        (hub.metrics.filtered_rings.get(), hub.metrics.streams.get()),
        (0, 0)
    );
}

#[test]
fn a_resume_while_the_agent_is_away_continues_the_ring_where_it_ended() {
    let (hub, _rx, s, _live) = watched();
    let ring = hub.list(&s, &sel("p"))[0].stream;
    // The agent goes (a crash), then the watcher (its socket broke too).
    hub.remove_agent(AgentId::from(1));
    assert!(hub.unsubscribe(&s, "a"));
    hub.advance(4);
    // It resumes within the linger, before the agent is back: the same stream, orphaned.
    let since = SeqPos { epoch: 3, seq: 40 };
    let resume = Demand {
        since_seq: Some(since),
        follow: true,
        ..Demand::default()
    };
    hub.subscribe(&s, "b", sel("p"), resume).unwrap();
    hub.advance(10);
    assert_eq!(
        hub.list(&s, &sel("p"))[0].stream,
        ring,
        "kept while watched"
    );
    // The agent back: the ring is continued from where it ended, under its id.
    let (_, mut rx2) = agent(&hub, vec![info(1, "p", "")]);
    let (_, stream_ref, spec) = opened(&mut rx2);
    assert_eq!(stream_ref, ring);
    assert_eq!(spec.since_seq, Some(since));
    assert!(
        s.queued()
            .iter()
            .any(|e| e.contains(r#""event":"resumed""#))
    );
}

#[test]
fn an_unwatched_orphan_goes_when_its_linger_ends_not_before() {
    let hub = hub();
    let (agent1, mut rx) = agent(&hub, vec![info(1, "p", ""), info(2, "q", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let (demand, _, _) = opened(&mut rx);
    assert!(hub.unsubscribe(&s, "a"));
    hub.advance(2);
    // The agent's connection ends while `p` lingers: `p` stays out its linger, the never
    // watched `q` goes at once.
    hub.remove_agent(agent1);
    assert!(hub.resolve_any(demand).is_none(), "its demand went with it");
    let listed: Vec<_> = hub.list(&s, &Selector::default());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].labels.pod, "p");
    hub.advance(2);
    assert_eq!(hub.list(&s, &Selector::default()).len(), 1);
    hub.advance(2);
    assert!(hub.list(&s, &Selector::default()).is_empty());
    assert_eq!(hub.metrics.streams.get(), 0);
    assert!(
        rx.try_recv().is_err(),
        "nothing sent to a connection that ended"
    );
}

#[test]
fn an_agent_back_within_the_linger_takes_its_lingering_stream_over() {
    let hub = hub();
    let (agent1, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    opened(&mut rx);
    let ring = hub.list(&s, &sel("p"))[0].stream;
    assert!(hub.unsubscribe(&s, "a"));
    hub.remove_agent(agent1);
    let (_, mut rx2) = agent(&hub, vec![info(4, "p", "")]);
    assert!(rx2.try_recv().is_err(), "unwatched: nothing opened");
    hub.advance(10);
    // Served again, it stays past the linger, under the same id.
    assert_eq!(hub.list(&s, &sel("p"))[0].stream, ring);
    hub.subscribe(&s, "b", sel("p"), follow(0)).unwrap();
    let (_, stream_ref, _) = opened(&mut rx2);
    assert_eq!(stream_ref, ring);
}

#[test]
fn subscription_limit_is_enforced() {
    let hub = hub();
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let refused = hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest);
    for id in ["b", "c", "d"] {
        hub.subscribe(&s, id, sel("p"), follow(0)).unwrap();
    }
    let refused = hub.subscribe(&s, "e", sel("p"), follow(0)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::LimitExceeded);
}

#[test]
fn removed_streams_end_for_their_watchers_and_reconnects_resume() {
    let hub = hub();
    let (agent, mut rx) = agent(&hub, vec![info(1, "p", ""), info(2, "q", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", Selector::default(), follow(0))
        .unwrap();
    let q_id = hub.list(&s, &sel("q"))[0].stream;
    let live: Vec<(u64, u64)> = (0..2)
        .map(|_| opened(&mut rx))
        .map(|(d, r, _)| (d, r))
        .collect();
    let q_demand = live.iter().find(|(_, r)| *r == q_id).unwrap().0;
    let Some((DemandSink::Live(q), _)) = hub.resolve_any(q_demand) else {
        panic!()
    };
    q.push(Bytes::from_static(b"x"), 7, SeqPos { epoch: 1, seq: 7 });
    hub.catalog_remove(
        agent,
        vec![StreamGone {
            id: 1,
            reason: EndReason::parse("pod_removed"),
        }],
    );
    assert!(
        s.queued()
            .iter()
            .any(|e| e.contains(r#""event":"end""#) && e.contains("pod_removed"))
    );

    hub.remove_agent(agent);
    let (_, mut rx) = self::agent(&hub, vec![info(9, "q", "")]);
    let Ok(RelayMsg::Open {
        stream: 9,
        demand_spec,
        ..
    }) = rx.try_recv()
    else {
        panic!("watched stream is re-opened after a reconnect")
    };
    assert_eq!(demand_spec.since_seq, Some(SeqPos { epoch: 1, seq: 7 }));
}

#[test]
fn live_demands_are_acknowledged_once_their_watchers_were_handed_the_lines() {
    let hub = hub();
    let (agent, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let (demand, _, _) = opened(&mut rx);
    assert!(hub.acks(agent).is_empty(), "nothing received yet");
    let Ok((DemandSink::Live(live), _)) = hub.resolve(agent, demand) else {
        panic!("live demand")
    };
    live.push(Bytes::from_static(b"x"), 10, SeqPos { epoch: 3, seq: 10 });
    assert!(hub.acks(agent).is_empty(), "the watcher has not had it");
    live.delivered(s.id(), Some(SeqPos { epoch: 3, seq: 10 }));
    assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 10 })]);
    // A second watcher joining at the end does not hold back what it never needed.
    let t = hub.add_session("acme", None).unwrap();
    hub.subscribe(&t, "a", sel("p"), follow(0)).unwrap();
    live.push(Bytes::from_static(b"y"), 5, SeqPos { epoch: 3, seq: 15 });
    assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 10 })]);
    live.delivered(s.id(), Some(SeqPos { epoch: 3, seq: 15 }));
    live.delivered(t.id(), Some(SeqPos { epoch: 3, seq: 15 }));
    assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 15 })]);
    // Another agent's demands are not its to hear of.
    let (other, _rx) = self::agent(&hub, vec![info(1, "q", "")]);
    assert!(hub.acks(other).is_empty());
}

#[test]
fn a_resume_names_the_last_line_held_by_its_stamp_and_rank() {
    let (hub, mut rx, _s, live) = watched();
    let mut b = logrelay_wire::batch::BatchBuilder::new(live.id().get(), 3, 40, 0, 0);
    for t in [5, 6, 6] {
        b.push(t, logrelay_wire::batch::LineFlags(0), b"x\n");
    }
    live.push(b.finish(), 3, SeqPos { epoch: 3, seq: 43 });
    hub.remove_agent(AgentId::from(1));
    let (_, mut rx2) = agent(&hub, vec![info(1, "p", "")]);
    let (_, _, spec) = opened(&mut rx2);
    assert_eq!(spec.since_seq, Some(SeqPos { epoch: 3, seq: 43 }));
    assert_eq!(spec.since_ns, Some(7));
    assert_eq!(
        spec.after_line,
        Some(logrelay_wire::control::LineMark { ns: 6, nth: 2 })
    );
    assert!(rx.try_recv().is_err());
}

/// The hub itself: its one timer task cancels after the linger, in paused time.
#[tokio::test(start_paused = true)]
async fn the_hub_cancels_after_the_linger_on_its_timer_task() {
    let hub = super::Hub::new(test_config(), Arc::new(RelayMetrics::new()));
    let (tx, mut rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    assert!(hub.catalog_add(agent, vec![info(5, "p", "")]).is_empty());
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(10)).unwrap();
    let (demand, _, _) = opened(&mut rx);
    assert!(hub.unsubscribe(&s, "a"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(rx.try_recv().is_err(), "still lingering");
    // A watcher back within the linger keeps the demand.
    hub.subscribe(&s, "b", sel("p"), follow(0)).unwrap();
    assert!(hub.unsubscribe(&s, "b"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(rx.try_recv().is_err(), "the linger started again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });
    hub.remove_session(&s);
    hub.remove_agent(agent);
}

impl TestHub {
    /// A lease change that no cap refuses.
    fn remote_lease(&self, agent: AgentId, local: u64, leased: bool) {
        self.try_remote_lease(agent, local, leased)
            .expect("no cap refuses it");
    }

    fn try_remote_lease(
        &self,
        agent: AgentId,
        local: u64,
        leased: bool,
    ) -> Result<(), super::core::CapHit> {
        let now = self.now();
        self.shell.borrow_mut().remote_lease(
            now,
            agent,
            crate::ids::AgentStreamId::from(local),
            leased,
            None,
        )
    }
}

#[test]
fn a_remote_lease_that_needs_a_demand_beyond_a_cap_is_refused_and_holds_nothing() {
    let hub = hub_with(|c| c.core.max_demands_per_agent = 1);
    let (agent, mut rx) = agent(&hub, vec![info(1, "p1", ""), info(2, "p2", "")]);
    // A local watcher takes the agent's one demand.
    let s = hub.add_session("acme", None).unwrap();
    assert_eq!(hub.subscribe(&s, "a", sel("p1"), follow(0)).unwrap(), None);
    let (first, _, _) = opened(&mut rx);
    // Another relay's lease on the other stream would need a second one: refused, counted,
    // nothing opened, and nothing held (the lease ending changes nothing).
    let limit_hits = || {
        hub.metrics
            .limit_hits
            .get_or_create(&crate::metrics::Limit {
                limit: "demands_per_agent",
            })
            .get()
    };
    let before = limit_hits();
    let refused = hub.try_remote_lease(agent, 2, true);
    assert_eq!(refused.map_err(|h| h.limit()), Err("demands_per_agent"));
    assert_eq!(limit_hits(), before + 1);
    assert!(rx.try_recv().is_err(), "no second open");
    hub.remote_lease(agent, 2, false);
    hub.advance(60);
    assert!(rx.try_recv().is_err(), "nothing to cancel");
    // A lease on the stream whose demand is open needs none: not refused.
    hub.remote_lease(agent, 1, true);
    assert!(rx.try_recv().is_err());
    // Once the local watcher and the lease let the first demand go, the other stream's lease
    // passes.
    hub.remote_lease(agent, 1, false);
    assert!(hub.unsubscribe(&s, "a"));
    hub.advance(60);
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand: first });
    hub.remote_lease(agent, 2, true);
    opened(&mut rx);
}

/// Another relay's stream (pod `p` of org `acme`, cluster `c1`): its agent's tokens, its own
/// and its labels.
fn remote_stream() -> (
    crate::backplane::subject::AgentTokens,
    crate::backplane::subject::Token,
    Labels,
) {
    use crate::backplane::subject::{AgentTokens, Token};
    let agent = AgentTokens {
        org: Token([1; 16]),
        cluster: Token([2; 16]),
        agent: Token([3; 16]),
    };
    let mut labels = info(1, "p", "acme").labels;
    labels.cluster = "c1".into();
    (agent, Token([4; 16]), labels)
}

/// [`remote_stream`] in the shared catalog: its agent's tokens and its own.
fn remote_stream_in_catalog(
    hub: &TestHub,
) -> (
    crate::backplane::subject::AgentTokens,
    crate::backplane::subject::Token,
) {
    let (agent, stream, labels) = remote_stream();
    let now = hub.now();
    hub.shell
        .borrow_mut()
        .remote_catalog(now, vec![(agent, stream, labels)]);
    (agent, stream)
}

#[test]
fn a_refused_lease_ends_the_watchers_of_the_remote_stream_with_demand_limit() {
    use super::core::Effect;
    let hub = hub();
    let (agent, stream) = remote_stream_in_catalog(&hub);
    let s = hub.add_session("acme", None).unwrap();
    let s2 = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    hub.subscribe(&s2, "b", Selector::default(), follow(0))
        .unwrap();
    hub.shell.borrow_mut().take_log();
    take_events(&s);
    take_events(&s2);

    let refuse = |hub: &TestHub| {
        let now = hub.now();
        hub.shell
            .borrow_mut()
            .remote_refused(now, agent.agent, stream, "demands_per_org");
    };
    refuse(&hub);
    for session in [&s, &s2] {
        let ends: Vec<Event> = take_events(session)
            .into_iter()
            .filter(|e| matches!(e, Event::End { .. }))
            .collect();
        assert!(
            matches!(&ends[..], [Event::End { reason, .. }] if *reason == EndReason::DemandLimit),
            "{ends:?}"
        );
    }
    let log = hub.shell.borrow_mut().take_log();
    assert!(
        log.iter()
            .any(|e| matches!(e, Effect::Release { stream: t, .. } if *t == stream)),
        "the want is released at once: {log:?}"
    );
    // Still listed; told again, nothing more happens; a new subscription wants it again.
    assert_eq!(hub.list(&s, &sel("p")).len(), 1);
    refuse(&hub);
    assert!(take_events(&s).is_empty());
    hub.subscribe(&s, "c", sel("p"), follow(0)).unwrap();
    assert!(
        hub.shell
            .borrow_mut()
            .take_log()
            .iter()
            .any(|e| matches!(e, Effect::Want { stream: t, .. } if *t == stream))
    );
}

#[test]
fn a_first_remote_watcher_sends_its_backlog_with_the_want_and_the_owners_live_demand_reads_it() {
    use super::core::Effect;
    // The wanting relay: the first watcher's `tail` goes with the want; a watcher of a
    // stream wanted already, or one without a backlog, adds none.
    let hub = hub();
    let (_, stream) = remote_stream_in_catalog(&hub);
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(500)).unwrap();
    let wants: Vec<Option<crate::backplane::BackfillAsk>> = hub
        .shell
        .borrow_mut()
        .take_log()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Want {
                stream: t, backlog, ..
            } if t == stream => Some(backlog),
            _ => None,
        })
        .collect();
    assert_eq!(
        wants,
        [Some(crate::backplane::BackfillAsk {
            tail: Some(500),
            ..crate::backplane::BackfillAsk::default()
        })]
    );
    let other = hub.add_session("acme", None).unwrap();
    hub.subscribe(&other, "b", sel("p"), follow(20)).unwrap();
    assert!(
        !hub.shell
            .borrow_mut()
            .take_log()
            .iter()
            .any(|e| matches!(e, Effect::Want { .. })),
        "wanted already"
    );

    // The owner: a lease that opens the live demand opens it with that backlog, as a first
    // local watcher's subscription would; one that finds the demand open changes nothing.
    let owner = self::hub();
    let (agent, mut rx) = self::agent(&owner, vec![info(5, "p", "")]);
    let first = crate::backplane::LeaseFirst {
        backlog: Some(crate::backplane::BackfillAsk {
            tail: Some(500),
            ..crate::backplane::BackfillAsk::default()
        }),
        traceparent: None,
    };
    let now = owner.now();
    owner
        .shell
        .borrow_mut()
        .remote_lease(
            now,
            agent,
            crate::ids::AgentStreamId::from(5),
            true,
            Some(&first),
        )
        .unwrap();
    let (_, _, spec) = opened(&mut rx);
    assert!(spec.follow, "{spec:?}");
    assert_eq!(spec.tail, Some(500));
    assert_eq!(spec.since_seq, None);
    owner.remote_lease(agent, 5, true);
    assert!(rx.try_recv().is_err(), "nothing opened again");
}

#[test]
fn a_remote_lease_holds_the_live_demand_like_a_watcher_and_lingers_when_it_ends() {
    let hub = hub();
    let (agent, mut rx) = agent(&hub, vec![info(5, "p", "")]);
    // Another connection's stream id, or one never announced: nothing.
    let (other, mut other_rx) = self::agent(&hub, vec![info(6, "q", "")]);
    hub.remote_lease(agent, 6, true);
    hub.remote_lease(other, 5, true);
    hub.remote_lease(agent, 99, true);
    assert!(rx.try_recv().is_err() && other_rx.try_recv().is_err());

    // The first lease opens the live demand, from now on; the ring is the stream's own.
    hub.remote_lease(agent, 5, true);
    let (demand, stream_ref, spec) = opened(&mut rx);
    assert!(spec.follow && spec.tail.is_none() && spec.since_seq.is_none());
    let Some((DemandSink::Live(live), _)) = hub.resolve_any(demand) else {
        panic!("live demand")
    };
    assert_eq!(live.id().get(), stream_ref);
    let shell = hub.shell.borrow();
    assert_eq!(
        shell.agent_stream(agent, live.id()).map(|l| l.get()),
        Some(5)
    );
    assert_eq!(shell.agent_stream(other, live.id()), None);
    drop(shell);

    // A local watcher comes and goes: the lease still holds the demand, nothing is re-opened.
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    assert!(hub.unsubscribe(&s, "a"));
    hub.advance(60);
    assert!(rx.try_recv().is_err(), "the lease holds the demand");

    // The lease ends: the demand lingers, a new lease keeps it, the next end cancels it.
    hub.remote_lease(agent, 5, false);
    hub.advance(4);
    hub.remote_lease(agent, 5, true);
    hub.advance(10);
    assert!(rx.try_recv().is_err(), "leased again within the linger");
    hub.remote_lease(agent, 5, false);
    hub.advance(4);
    assert!(rx.try_recv().is_err(), "still lingering");
    hub.advance(2);
    assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });

    // A lease on a stream whose demand ended is re-opened after reopen_after; the agent's
    // disconnection forgets the lease (the next connection is leased anew).
    hub.remote_lease(agent, 5, true);
    let (demand, _, _) = opened(&mut rx);
    hub.resolve_any(demand).expect("live");
    hub.demand_finished(agent, demand);
    hub.advance(2);
    let (again, _, _) = opened(&mut rx);
    hub.remove_agent(agent);
    assert!(hub.resolve_any(again).is_none());
    let (tx, mut rx2) = mpsc::channel(16);
    let back = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    hub.catalog_add(back, vec![info(5, "p", "")]);
    assert!(
        rx2.try_recv().is_err(),
        "no lease on the new connection yet"
    );
}

#[test]
fn another_relays_stream_is_listed_by_org_wanted_while_watched_and_taken_over_locally() {
    use super::core::{Effect, RemoteState};
    let hub = hub();
    let (agent, stream, labels) = remote_stream();
    let catalog = |hub: &TestHub, present: bool| {
        let now = hub.now();
        let streams = if present {
            vec![(agent, stream, labels.clone())]
        } else {
            Vec::new()
        };
        hub.shell.borrow_mut().remote_catalog(now, streams);
    };
    let effects = |hub: &TestHub| hub.shell.borrow_mut().take_log();
    catalog(&hub, true);

    // Listed for its org only (the org the owner took from the agent's certificate).
    let s = hub.add_session("acme", None).unwrap();
    let evil = hub.add_session("evil", None).unwrap();
    assert_eq!(hub.list(&s, &sel("p")).len(), 1);
    assert!(hub.list(&s, &sel("p"))[0].live);
    assert!(hub.list(&evil, &sel("p")).is_empty());
    hub.subscribe(&evil, "e", Selector::default(), follow(0))
        .unwrap();
    assert!(
        !effects(&hub)
            .iter()
            .any(|e| matches!(e, Effect::Want { .. })),
        "another org's subscription wants nothing"
    );

    // The first watcher wants it, once; the owner's answers pause and resume it.
    hub.subscribe(&s, "a", sel("p"), follow(0)).unwrap();
    let s2 = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s2, "b", sel("p"), follow(0)).unwrap();
    let wants = effects(&hub)
        .into_iter()
        .filter(|e| matches!(e, Effect::Want { stream: t, .. } if *t == stream))
        .count();
    assert_eq!(wants, 1);
    take_events(&s);
    let state = |st| {
        let now = hub.now();
        hub.shell
            .borrow_mut()
            .remote_state(now, agent.agent, stream, st);
    };
    state(RemoteState::Unavailable);
    state(RemoteState::Unavailable);
    state(RemoteState::Flowing);
    let told: Vec<Event> = take_events(&s)
        .into_iter()
        .filter(|e| matches!(e, Event::Paused { .. } | Event::Resumed { .. }))
        .collect();
    assert!(
        matches!(&told[..], [Event::Paused { reason, .. }, Event::Resumed { .. }]
            if *reason == logrelay_wire::reason::PauseReason::BackplaneUnavailable),
        "{told:?}"
    );

    // Released only after the last watcher left and the linger passed.
    hub.unsubscribe(&s, "a");
    hub.unsubscribe(&s2, "b");
    hub.advance(4);
    assert!(
        !effects(&hub)
            .iter()
            .any(|e| matches!(e, Effect::Release { .. }))
    );
    hub.advance(2);
    assert!(
        effects(&hub)
            .iter()
            .any(|e| matches!(e, Effect::Release { stream: t, .. } if *t == stream))
    );

    // Watched again, then its agent comes to this relay: served here (an `open` at the
    // agent), the remote want released.
    hub.subscribe(&s, "c", sel("p"), follow(0)).unwrap();
    effects(&hub);
    let (tx, mut rx) = mpsc::channel(16);
    let local = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
    hub.catalog_add(local, vec![info(1, "p", "")]);
    let log = effects(&hub);
    assert!(
        log.iter()
            .any(|e| matches!(e, Effect::Release { stream: t, .. } if *t == stream)),
        "{log:?}"
    );
    opened(&mut rx);
    assert_eq!(hub.list(&s, &sel("p")).len(), 1);

    // It leaves the shared catalog: a stream served here stays.
    catalog(&hub, false);
    assert_eq!(hub.list(&s, &sel("p")).len(), 1);

    // Its agent leaves this relay (watchers paused) for another one: wanted from there, and
    // the owner's first answer resumes the watchers.
    hub.remove_agent(local);
    take_events(&s);
    catalog(&hub, true);
    assert!(
        effects(&hub)
            .iter()
            .any(|e| matches!(e, Effect::Want { stream: t, .. } if *t == stream))
    );
    state(RemoteState::Flowing);
    assert!(
        take_events(&s)
            .iter()
            .any(|e| matches!(e, Event::Resumed { .. })),
    );
}

#[test]
fn a_resume_waiting_for_its_stream_opens_the_live_demand_before_a_tail_does() {
    // A restarted relay: two sessions subscribe before the agent is back, the first with a
    // `tail`, the second resuming with `since_seq`. The live demand must carry the resume, or
    // the agent would start a new epoch and the resumed one would be lost (the chaos soak's
    // `epoch_lost` after a relay kill).
    let hub = hub();
    let tail = hub.add_session("acme", None).unwrap();
    hub.subscribe(&tail, "t", sel("p"), follow(500)).unwrap();
    let resuming = hub.add_session("acme", None).unwrap();
    let since = SeqPos {
        epoch: 7,
        seq: 9_032,
    };
    let resume = Demand {
        since_seq: Some(since),
        ..follow(1_000_000)
    };
    hub.subscribe(&resuming, "r", sel("p"), resume).unwrap();
    let (_, mut rx) = agent(&hub, vec![info(1, "p", "")]);
    let (_, _, spec) = opened(&mut rx);
    assert_eq!(spec.since_seq, Some(since), "{spec:?}");
    assert!(rx.try_recv().is_err(), "one demand for both watchers");
}

#[test]
fn a_watch_of_another_relays_stream_asks_its_backlog_of_the_owners_ring_then_reads_the_ring() {
    use super::core::Effect;
    let hub = hub();
    let (_, stream) = remote_stream_in_catalog(&hub);
    let effects = |hub: &TestHub| hub.shell.borrow_mut().take_log();
    effects(&hub);

    // The first watcher, with a tail: its backlog up to where this relay's ring will start
    // (not known yet: `until` unset, the ring's start to be learnt from the want), read
    // before the ring; then the stream is wanted.
    let s = hub.add_session("acme", None).unwrap();
    hub.subscribe(&s, "a", sel("p"), follow(500)).unwrap();
    let log = effects(&hub);
    let order: Vec<&str> = log
        .iter()
        .filter_map(|e| match e {
            Effect::RemoteBackfill { .. } => Some("backfill"),
            Effect::WatchRing { .. } => Some("watch"),
            Effect::Want { .. } => Some("want"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["backfill", "watch", "want"], "{log:?}");
    let Some(Effect::RemoteBackfill {
        ask,
        joined,
        fresh,
        resume,
        stream: t,
        ..
    }) = log
        .iter()
        .find(|e| matches!(e, Effect::RemoteBackfill { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        (ask.tail, ask.until, *joined, *fresh, *resume, *t),
        (Some(500), None, false, true, None, stream)
    );
    // The ring's first batch is not the answer to a resume: the backlog's is.
    assert!(log.iter().any(|e| matches!(
        e,
        Effect::WatchRing {
            resume: None,
            backfill: None,
            ..
        }
    )));

    // A session resuming with `since_seq` once the stream is wanted: the ring is wanted
    // already, its start is what the backlog ends at; the backlog answers the resume.
    let since = SeqPos { epoch: 9, seq: 40 };
    let r = hub.add_session("acme", None).unwrap();
    hub.subscribe(
        &r,
        "r",
        sel("p"),
        Demand {
            since_seq: Some(since),
            ..follow(0)
        },
    )
    .unwrap();
    let log = effects(&hub);
    assert!(
        log.iter().any(|e| matches!(e,
            Effect::RemoteBackfill { ask, fresh: false, joined: false, resume: Some(r), .. }
                if ask.since_seq == Some(since) && *r == since && ask.tail.is_none())),
        "{log:?}"
    );
    assert!(!log.iter().any(|e| matches!(e, Effect::Want { .. })));

    // A watcher that wants no backlog asks for none, and reads the ring from its end.
    let live = hub.add_session("acme", None).unwrap();
    hub.subscribe(&live, "l", sel("p"), follow(0)).unwrap();
    let log = effects(&hub);
    assert!(
        !log.iter()
            .any(|e| matches!(e, Effect::RemoteBackfill { .. }))
    );
    assert!(log.iter().any(|e| matches!(e, Effect::WatchRing { .. })));
}

#[test]
fn a_stream_whose_meta_alone_changed_is_relabelled_in_place() {
    let hub = hub_with(|c| c.core.max_sessions_per_org = 8);
    let with_team = |team: &str| {
        let mut i = info(1, "p", "");
        i.labels.meta.insert("label:team".into(), team.into());
        i
    };
    let team = |t: &str| Selector {
        meta: [("label:team".to_owned(), t.to_owned())].into(),
        ..Selector::default()
    };
    let (agent, mut rx) = self::agent(&hub, vec![with_team("web")]);
    let by_pod = hub.add_session("acme", None).unwrap();
    let web = hub.add_session("acme", None).unwrap();
    let ml = hub.add_session("acme", None).unwrap();
    let lists = hub.add_session("acme", None).unwrap();
    hub.subscribe(&by_pod, "a", sel("p"), follow(0)).unwrap();
    hub.subscribe(&web, "w", team("web"), follow(0)).unwrap();
    hub.subscribe(&ml, "m", team("ml"), follow(0)).unwrap();
    hub.watch_list(&lists, "all", sel("p")).unwrap();
    hub.watch_list(&lists, "web", team("web")).unwrap();
    let (demand, stream_ref, _) = opened(&mut rx);
    assert!(rx.try_recv().is_err(), "one demand");
    for s in [&by_pod, &web, &ml, &lists] {
        take_events(s);
    }

    // The agent announces the same id with other `meta`: the same stream, its ring and demand.
    assert!(hub.catalog_add(agent, vec![with_team("ml")]).is_empty());
    assert!(rx.try_recv().is_err(), "nothing cancelled or opened");
    assert!(
        take_events(&by_pod).is_empty(),
        "a watcher whose subscription still matches reads on"
    );
    assert!(
        matches!(&take_events(&web)[..], [Event::End { stream, reason }] if *stream == stream_ref && *reason == EndReason::LabelsChanged),
        "a watcher whose subscription no longer matches is told"
    );
    let attached = take_events(&ml);
    assert!(
        attached
            .iter()
            .any(|e| matches!(e, Event::Stream { stream, labels, .. } if *stream == stream_ref && labels.meta["label:team"] == "ml")),
        "a standing subscription that matches now attaches to the same stream: {attached:?}"
    );
    let told = take_events(&lists);
    let of = |list: &str| -> Vec<Event> {
        told.iter()
            .filter(|e| matches!(e, Event::Catalog { id, .. } if id == list))
            .cloned()
            .collect()
    };
    assert_eq!(
        catalog_changes(&of("all"), "all"),
        (vec![(stream_ref, true)], vec![])
    );
    assert_eq!(
        catalog_changes(&of("web"), "web"),
        (vec![], vec![(stream_ref, EndReason::LabelsChanged)])
    );
    let listed = hub.list(&lists, &team("ml"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].stream, stream_ref);
    assert!(hub.list(&lists, &team("web")).is_empty());

    // An identity label changing is a new stream: the old one ends for its watchers.
    let mut moved = with_team("ml");
    moved.labels.project = Some("p2".into());
    assert!(hub.catalog_add(agent, vec![moved]).is_empty());
    assert!(
        take_events(&by_pod)
            .iter()
            .any(|e| matches!(e, Event::End { stream, reason } if *stream == stream_ref && *reason == EndReason::LabelsChanged))
    );
    let _ = demand;
}
