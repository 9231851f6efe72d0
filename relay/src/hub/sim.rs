//! A deterministic simulation of the hub: its core and shell with the real rings and session
//! outboxes, driven with virtual time through random interleavings of what agents (connect,
//! supersede, disconnect, announce and remove streams, serve and end demands, present ids that
//! are not theirs) and sessions (subscribe in every way, unsubscribe, watch lists, read at
//! their own pace, leave) do. After every step it checks what the product promises:
//!
//! * a live demand is open at a ring's agent iff some session watches the ring (after the
//!   linger; and at most [`REOPEN_AFTER`] after a demand ended), never two;
//! * every line the agent sends a ring reaches every watcher, or the watcher is told of it in an
//!   exact gap; a ring's content continues where it ended across reconnects and re-opens; a
//!   joiner's backfill ends exactly where its reading of the ring starts;
//! * no session hears of a stream it may not read (another org's), nor of an id it was never
//!   told;
//! * an id an agent presents resolves only within its own connection: anything else is a
//!   violation that changes nothing.
//!
//! Proptest shrinks a failing schedule to a short one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use logrelay_wire::batch::{BatchBuilder, BatchHeader, FLAG_BACKFILL, LineFlags};
use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::labels::Labels;
use logrelay_wire::reason::{EndReason, GapReason};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::Event;
use proptest::prelude::*;
use tokio::sync::{Notify, mpsc};

use super::core::{Core, CoreConfig, Effect, Time, Unresolved};
use super::shell::{DemandSink, Shell};
use super::{HubConfig, REOPEN_AFTER};
use crate::config::SlowConsumerPolicy;
use crate::ids::{AgentId, DemandId, SessionId, StreamId};
use crate::metrics::RelayMetrics;
use crate::session::outbox::Outbox;

const LINGER: Duration = Duration::from_secs(5);
/// Agent identities: org and node; each announces `STREAMS` streams.
const IDENTITIES: [(&str, &str); 3] = [("acme", "n1"), ("acme", "n2"), ("globex", "n3")];
const STREAMS: u64 = 2;
const ORGS: [&str; 2] = ["acme", "globex"];

/// One thing that happens. Indices are taken modulo what exists.
#[derive(Debug, Clone)]
enum Action {
    /// Identity `k` connects (superseding its connection, if it has one) and announces its
    /// catalog.
    Connect(usize),
    /// Identity `k`'s connection ends.
    Disconnect(usize),
    /// Identity `k` removes stream `s` from its catalog.
    Remove(usize, u64),
    /// Identity `k` announces stream `s` again.
    Restore(usize, u64),
    /// `n` lines are written to stream `s` of identity `k`.
    Write(usize, u64, u64),
    /// Identity `k` serves its demands: starts data streams, sends what it has.
    Serve(usize),
    /// Identity `k` ends its `i`th demand's data stream (a follower stopped).
    Finish(usize, usize),
    /// Identity `k` refuses its `i`th demand (`bad_request` if `bad`).
    Refuse(usize, usize, bool),
    /// Identity `k` presents ids that are not its own.
    Hostile(usize, u64),
    /// A session of org `o` connects.
    Join(usize),
    /// Session `s` leaves.
    Leave(usize),
    /// Session `s` subscribes, in way `how`, to pod `p` (or everything).
    Subscribe(usize, u8, Option<usize>),
    /// Session `s` ends its `i`th subscription.
    Unsubscribe(usize, usize),
    /// Session `s` watches the list.
    WatchList(usize),
    /// Session `s` reads, at most `bytes` of rings.
    Read(usize, usize),
    /// Time passes.
    Wait(u64),
}

fn action() -> impl Strategy<Value = Action> {
    let k = 0..IDENTITIES.len();
    let s = 0..STREAMS;
    prop_oneof![
        2 => k.clone().prop_map(Action::Connect),
        1 => k.clone().prop_map(Action::Disconnect),
        1 => (k.clone(), s.clone()).prop_map(|(k, s)| Action::Remove(k, s)),
        1 => (k.clone(), s.clone()).prop_map(|(k, s)| Action::Restore(k, s)),
        8 => (k.clone(), s, 1..40u64).prop_map(|(k, s, n)| Action::Write(k, s, n)),
        10 => k.clone().prop_map(Action::Serve),
        1 => (k.clone(), 0..4usize).prop_map(|(k, i)| Action::Finish(k, i)),
        1 => (k.clone(), 0..4usize, any::<bool>()).prop_map(|(k, i, b)| Action::Refuse(k, i, b)),
        1 => (k, any::<u64>()).prop_map(|(k, g)| Action::Hostile(k, g)),
        2 => (0..ORGS.len()).prop_map(Action::Join),
        1 => (0..8usize).prop_map(Action::Leave),
        8 => (0..8usize, 0..6u8, proptest::option::of(0..6usize))
            .prop_map(|(s, how, p)| Action::Subscribe(s, how, p)),
        2 => (0..8usize, 0..4usize).prop_map(|(s, i)| Action::Unsubscribe(s, i)),
        1 => (0..8usize).prop_map(Action::WatchList),
        10 => (0..8usize, prop_oneof![Just(1usize), Just(300), Just(usize::MAX)])
            .prop_map(|(s, b)| Action::Read(s, b)),
        3 => prop_oneof![1..200u64, 900..1100u64, 4000..7000u64].prop_map(Action::Wait),
    ]
}

/// A demand as its agent serves it.
struct Served {
    local: u64,
    stream_ref: u64,
    spec: Demand,
    /// Its data stream's sink and stop flag, once started.
    sink: Option<(DemandSink, Arc<AtomicBool>)>,
    /// The next line to send.
    next: u64,
    /// Nothing sent yet.
    fresh: bool,
}

/// An agent connection.
struct Conn {
    id: AgentId,
    rx: mpsc::Receiver<RelayMsg>,
    served: BTreeMap<DemandId, Served>,
}

/// An agent identity, its files and its connection.
struct Agent {
    org: &'static str,
    node: &'static str,
    epoch: u64,
    /// Lines written per stream.
    written: BTreeMap<u64, u64>,
    /// Streams announced (not removed).
    present: BTreeSet<u64>,
    conn: Option<Conn>,
}

impl Agent {
    fn labels(&self, local: u64) -> Labels {
        Labels {
            node: self.node.into(),
            namespace: "ns".into(),
            pod: format!("{}-p{local}", self.node),
            container: "c".into(),
            ..Labels::default()
        }
    }
}

/// A session and what it has been told and has read.
struct Session {
    org: &'static str,
    outbox: Arc<Outbox>,
    subs: Vec<String>,
    next_sub: u32,
    /// Stream ids a `stream` event named, with their labels.
    told: BTreeMap<u64, Labels>,
    /// Stream ids a list answer named.
    listed: BTreeSet<u64>,
    /// Per ring watched: lines pushed into it since the watch began, and lines read from it
    /// or reported missing by a gap.
    rings: BTreeMap<StreamId, (u64, u64)>,
}

struct World {
    shell: Shell,
    now: Time,
    metrics: Arc<RelayMetrics>,
    agents: Vec<Agent>,
    sessions: BTreeMap<SessionId, Session>,
    /// Sessions watching each ring (from the shell's effects).
    watchers: BTreeMap<StreamId, BTreeSet<SessionId>>,
    /// Since when each known ring has had no watcher.
    unwatched_since: BTreeMap<StreamId, Time>,
    /// Where each ring's content ends, as pushed (reset when the ring is emptied or made).
    ring_end: BTreeMap<StreamId, Option<SeqPos>>,
    /// Which identity and stream each ring reads.
    source: BTreeMap<StreamId, (usize, u64)>,
    /// When a live demand of each ring last ended on its agent's initiative.
    live_ended: BTreeMap<StreamId, Time>,
    /// Demands the relay closed.
    closed: BTreeSet<DemandId>,
    trace: Vec<String>,
    /// How often each situation worth checking came up.
    stats: BTreeMap<&'static str, u64>,
}

fn config() -> HubConfig {
    HubConfig {
        core: CoreConfig {
            linger: LINGER,
            reopen_after: REOPEN_AFTER,
            max_subscriptions_per_session: 6,
            max_sessions_per_org: 5,
            max_demands_per_agent: 6,
            max_demands_per_org: 10,
            max_streams_per_agent: 100,
            max_streams_per_org: 1000,
            max_label_bytes_per_stream: 1000,
            max_label_bytes_per_agent: 100_000,
        },
        ring_bytes: 600,
        memory_budget_bytes: 1 << 30,
        backfill_batches: 4,
        max_session_event_bytes: 1 << 20,
    }
}

fn log_batch(stream: u64, epoch: u64, first: u64, n: u64, flags: u8) -> Bytes {
    let mut b = BatchBuilder::new(stream, epoch, first, flags, 64);
    for _ in 0..n {
        b.push(0, LineFlags(0), b"line of the simulation\n");
    }
    b.finish()
}

impl World {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        let random = move || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let metrics = Arc::new(RelayMetrics::new());
        let config = config();
        let core = Core::new(config.core.clone(), Box::new(random));
        let shell = Shell::new(core, config, metrics.clone(), Arc::new(Notify::new()));
        let agents = IDENTITIES
            .iter()
            .enumerate()
            .map(|(i, (org, node))| Agent {
                org,
                node,
                epoch: 100 + i as u64,
                written: (0..STREAMS).map(|s| (s, 0)).collect(),
                present: (0..STREAMS).collect(),
                conn: None,
            })
            .collect();
        Self {
            shell,
            now: Time::ZERO,
            metrics,
            agents,
            sessions: BTreeMap::new(),
            watchers: BTreeMap::new(),
            unwatched_since: BTreeMap::new(),
            ring_end: BTreeMap::new(),
            source: BTreeMap::new(),
            live_ended: BTreeMap::new(),
            closed: BTreeSet::new(),
            trace: Vec::new(),
            stats: BTreeMap::new(),
        }
    }

    fn saw(&mut self, what: &'static str, n: u64) {
        *self.stats.entry(what).or_default() += n;
    }

    /// The `i`th session (modulo how many there are).
    fn session_at(&self, i: usize) -> Option<SessionId> {
        let n = self.sessions.len();
        (n > 0).then(|| *self.sessions.keys().nth(i % n).expect("in range"))
    }

    fn fail(&self, what: String) -> TestCaseError {
        TestCaseError::fail(format!(
            "{what}\nat {:?}; last steps:\n{}",
            self.now,
            self.trace[self.trace.len().saturating_sub(12)..].join("\n")
        ))
    }

    /// Follows the shell's effects: watches, rings, closed demands; checks the join points.
    fn observe(&mut self) -> Result<(), TestCaseError> {
        for e in self.shell.take_log() {
            match e {
                Effect::RingOpened { ring, .. } | Effect::RingEmptied { ring } => {
                    self.ring_end.insert(ring, None);
                    self.unwatched_since.entry(ring).or_insert(self.now);
                }
                Effect::RingClosed { ring } => {
                    self.ring_end.remove(&ring);
                }
                Effect::WatchRing {
                    session,
                    ring,
                    from,
                    backfill,
                    ..
                } => {
                    self.watchers.entry(ring).or_default().insert(session);
                    self.unwatched_since.remove(&ring);
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.rings.insert(ring, (0, 0));
                    }
                    if let Some(b) = backfill {
                        self.saw("a joiner's backfill", 1);
                        // A joiner's backfill ends exactly where its reading of the ring starts.
                        if let Some(spec) = self.open_spec(b)
                            && spec.until != from.last_end
                        {
                            return Err(self.fail(format!(
                                "backfill {b} until {:?}, ring read from {:?}",
                                spec.until, from.last_end
                            )));
                        }
                    }
                }
                Effect::Unwatch { session, key, .. } => {
                    if let Some(w) = self.watchers.get_mut(&key)
                        && w.remove(&session)
                        && w.is_empty()
                    {
                        self.unwatched_since.insert(key, self.now);
                    }
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.rings.remove(&key);
                    }
                }
                Effect::DemandClosed { demand } => {
                    self.closed.insert(demand);
                }
                Effect::Backfill { .. } => self.saw("a further subscription's backfill", 1),
                Effect::WatchOnce { .. } => self.saw("a one-off read", 1),
                _ => {}
            }
        }
        Ok(())
    }

    /// The spec of an `open` an agent received (looked up among what the agents serve).
    fn open_spec(&mut self, demand: DemandId) -> Option<Demand> {
        self.deliver_messages();
        self.agents
            .iter()
            .filter_map(|a| a.conn.as_ref())
            .find_map(|c| c.served.get(&demand).map(|s| s.spec.clone()))
    }

    /// Agents take the messages the relay queued for them.
    fn deliver_messages(&mut self) {
        let stats = &mut self.stats;
        for (k, a) in self.agents.iter_mut().enumerate() {
            let Some(conn) = a.conn.as_mut() else {
                continue;
            };
            while let Ok(msg) = conn.rx.try_recv() {
                match msg {
                    RelayMsg::Open {
                        demand,
                        stream,
                        stream_ref,
                        demand_spec,
                        ..
                    } => {
                        if demand_spec.follow && demand_spec.until.is_none() {
                            self.source.insert(StreamId::from(stream_ref), (k, stream));
                            if demand_spec.since_seq.is_some() {
                                *stats.entry("a live demand resuming a ring").or_default() += 1;
                            }
                            if demand_spec.contains.is_some() {
                                *stats.entry("a filtered ring's demand").or_default() += 1;
                            }
                        }
                        conn.served.insert(
                            DemandId::from(demand),
                            Served {
                                local: stream,
                                stream_ref,
                                spec: demand_spec,
                                sink: None,
                                next: 0,
                                fresh: true,
                            },
                        );
                    }
                    RelayMsg::Cancel { demand } => {
                        *stats.entry("a cancel").or_default() += 1;
                        conn.served.remove(&DemandId::from(demand));
                    }
                    _ => {}
                }
            }
        }
    }

    fn step(&mut self, action: &Action) -> Result<(), TestCaseError> {
        self.trace.push(format!("{action:?}"));
        let now = self.now;
        match *action {
            Action::Connect(k) => {
                let (tx, rx) = mpsc::channel(4096);
                let a = &self.agents[k];
                let id = self
                    .shell
                    .add_agent(now, a.org, "c1", tx, Arc::new(Notify::new()));
                // A newer connection of the same agent supersedes the old one at once.
                if let Some(old) = self.agents[k].conn.take() {
                    self.saw("a superseded connection", 1);
                    self.shell.remove_agent(now, old.id);
                }
                let a = &mut self.agents[k];
                a.conn = Some(Conn {
                    id,
                    rx,
                    served: BTreeMap::new(),
                });
                let streams = a
                    .present
                    .iter()
                    .map(|&s| StreamInfo {
                        id: s,
                        labels: a.labels(s),
                    })
                    .collect();
                let refused = self.shell.catalog_add(now, id, streams);
                if !refused.is_empty() {
                    return Err(self.fail(format!("refused {refused:?}")));
                }
            }
            Action::Disconnect(k) => {
                if let Some(old) = self.agents[k].conn.take() {
                    self.shell.remove_agent(now, old.id);
                }
            }
            Action::Remove(k, s) => {
                let a = &mut self.agents[k];
                if a.present.remove(&s)
                    && let Some(conn) = a.conn.as_mut()
                {
                    // Its follower ends with the file.
                    conn.served.retain(|_, d| d.local != s);
                    let id = conn.id;
                    let gone = vec![StreamGone {
                        id: s,
                        reason: EndReason::ContainerRemoved,
                    }];
                    self.shell.catalog_remove(now, id, gone);
                }
            }
            Action::Restore(k, s) => {
                let a = &mut self.agents[k];
                if a.present.insert(s)
                    && let Some(conn) = a.conn.as_ref()
                {
                    let info = StreamInfo {
                        id: s,
                        labels: a.labels(s),
                    };
                    let id = conn.id;
                    self.shell.catalog_add(now, id, vec![info]);
                }
            }
            Action::Write(k, s, n) => {
                *self.agents[k].written.get_mut(&s).expect("stream") += n;
            }
            Action::Serve(k) => self.serve(k)?,
            Action::Finish(k, i) => {
                let Some(conn) = self.agents[k].conn.as_mut() else {
                    return Ok(());
                };
                let n = conn.served.len();
                let Some(&d) = conn.served.keys().nth(i % n.max(1)) else {
                    return Ok(());
                };
                let served = conn.served.remove(&d).expect("present");
                let id = conn.id;
                if served.spec.follow && served.spec.until.is_none() {
                    self.live_ended
                        .insert(StreamId::from(served.stream_ref), now);
                }
                drop(served);
                self.shell.demand_finished(now, id, d);
            }
            Action::Refuse(k, i, bad) => {
                let Some(conn) = self.agents[k].conn.as_mut() else {
                    return Ok(());
                };
                let Some((&d, _)) = conn.served.iter().filter(|(_, s)| s.sink.is_none()).nth(i)
                else {
                    return Ok(());
                };
                let served = conn.served.remove(&d).expect("present");
                let id = conn.id;
                if served.spec.follow && served.spec.until.is_none() {
                    self.live_ended
                        .insert(StreamId::from(served.stream_ref), now);
                }
                let code = if bad {
                    ErrorCode::BadRequest
                } else {
                    ErrorCode::UnknownStream
                };
                if let Err(v) = self.shell.open_failed(now, id, d, code) {
                    return Err(self.fail(format!("its own demand {d} refused: {v:?}")));
                }
            }
            Action::Hostile(k, guess) => self.hostile(k, guess)?,
            Action::Join(o) => {
                if let Ok(outbox) = self.shell.add_session(now, ORGS[o], None) {
                    let id = outbox.id();
                    self.sessions.insert(
                        id,
                        Session {
                            org: ORGS[o],
                            outbox,
                            subs: Vec::new(),
                            next_sub: 0,
                            told: BTreeMap::new(),
                            listed: BTreeSet::new(),
                            rings: BTreeMap::new(),
                        },
                    );
                }
            }
            Action::Leave(s) => {
                if let Some(id) = self.session_at(s) {
                    self.shell.remove_session(now, id);
                    self.sessions.remove(&id);
                }
            }
            Action::Subscribe(s, how, pod) => {
                let Some(id) = self.session_at(s) else {
                    return Ok(());
                };
                let session = self.sessions.get_mut(&id).expect("present");
                let selector = Selector {
                    pod: pod.map(|p| {
                        let (_, node) = IDENTITIES[p % IDENTITIES.len()];
                        format!("{node}-p{}", p as u64 % STREAMS)
                    }),
                    ..Selector::default()
                };
                let follow = |tail| Demand {
                    tail: Some(tail),
                    follow: true,
                    ..Demand::default()
                };
                let demand = match how {
                    0 => follow(0),
                    1 => follow(5),
                    2 => Demand {
                        contains: Some("x".into()),
                        ..follow(0)
                    },
                    3 => Demand {
                        contains: Some("x".into()),
                        ..follow(3)
                    },
                    4 => Demand {
                        follow: false,
                        ..follow(4)
                    },
                    _ => follow(20),
                };
                session.next_sub += 1;
                let sub = format!("s{}", session.next_sub);
                if self
                    .shell
                    .subscribe(now, id, &sub, selector, demand)
                    .is_ok()
                {
                    session.subs.push(sub);
                }
            }
            Action::Unsubscribe(s, i) => {
                let Some(id) = self.session_at(s) else {
                    return Ok(());
                };
                let session = self.sessions.get_mut(&id).expect("present");
                if !session.subs.is_empty() {
                    let sub = session.subs.remove(i % session.subs.len());
                    if !self.shell.unsubscribe(now, id, &sub) {
                        return Err(self.fail(format!("{sub} of {id} not found")));
                    }
                }
            }
            Action::WatchList(s) => {
                let Some(id) = self.session_at(s) else {
                    return Ok(());
                };
                let session = self.sessions.get_mut(&id).expect("present");
                session.next_sub += 1;
                let sub = format!("l{}", session.next_sub);
                if self
                    .shell
                    .watch_list(now, id, &sub, Selector::default())
                    .is_ok()
                {
                    session.subs.push(sub);
                }
            }
            Action::Read(s, bytes) => {
                if let Some(id) = self.session_at(s) {
                    self.observe()?;
                    self.read(id, bytes)?;
                }
            }
            Action::Wait(ms) => {
                let until = now.plus(Duration::from_millis(ms));
                while let Some(at) = self.shell.next_timer().filter(|at| *at <= until) {
                    self.now = at;
                    self.shell.timers_fired(at);
                    self.observe()?;
                }
                self.now = until;
            }
        }
        self.deliver_messages();
        self.observe()?;
        self.check_demands()
    }

    /// Identity `k` serves its demands: each starts its data stream once, then a live one
    /// sends what was written since; any other sends its range and ends.
    fn serve(&mut self, k: usize) -> Result<(), TestCaseError> {
        let now = self.now;
        let a = &mut self.agents[k];
        let (epoch, written) = (a.epoch, a.written.clone());
        let Some(conn) = a.conn.as_mut() else {
            return Ok(());
        };
        let id = conn.id;
        let demands: Vec<DemandId> = conn.served.keys().copied().collect();
        let mut finished = Vec::new();
        let mut pushes = Vec::new();
        for d in demands {
            let served = conn.served.get_mut(&d).expect("present");
            if served.sink.is_none() {
                match self.shell.resolve(now, id, d) {
                    Ok(sink) => {
                        if sink.0.stream().get() != served.stream_ref {
                            return Err(TestCaseError::fail(format!(
                                "demand {d} resolves to {}, its open said {}",
                                sink.0.stream(),
                                served.stream_ref
                            )));
                        }
                        served.sink = Some(sink);
                    }
                    Err(Unresolved::Gone) => {
                        conn.served.remove(&d);
                        continue;
                    }
                    Err(Unresolved::Violation(v)) => {
                        return Err(TestCaseError::fail(format!("own demand {d}: {v:?}")));
                    }
                }
                let end = written[&served.local];
                let spec = &served.spec;
                let end = match spec.until {
                    Some(u) if u.epoch == epoch => u.seq.min(end),
                    Some(_) => 0,
                    None => end,
                };
                served.next = match spec.since_seq {
                    Some(p) if p.epoch == epoch => p.seq.min(end),
                    _ => end.saturating_sub(u64::from(spec.tail.unwrap_or(0))),
                };
                if spec.until.is_some_and(|u| u.epoch != epoch) {
                    served.next = 0;
                }
                if !spec.follow {
                    // A backfill or one-off read: its range, then the end of its data stream.
                    let (sink, _) = served.sink.as_ref().expect("resolved");
                    if let DemandSink::Backfill { tx, session, .. } = sink
                        && served.next < end
                    {
                        let b = log_batch(
                            served.stream_ref,
                            epoch,
                            served.next,
                            end - served.next,
                            FLAG_BACKFILL,
                        );
                        if tx.try_send(b).is_ok()
                            && let Some(s) = session
                        {
                            s.wake();
                        }
                    }
                    finished.push(d);
                    continue;
                }
            }
            let served = conn.served.get_mut(&d).expect("present");
            let (sink, cancelled) = served.sink.as_ref().expect("resolved");
            if cancelled.load(Ordering::Relaxed) {
                // The relay stopped the data stream.
                conn.served.remove(&d);
                continue;
            }
            let end = written[&served.local];
            if let DemandSink::Live(live) = sink
                && served.next < end
            {
                let n = end - served.next;
                let batch = log_batch(served.stream_ref, epoch, served.next, n, 0);
                // A live demand that resumes a ring (after a reconnect, or the previous one
                // ended) must continue exactly where the ring ended.
                let resumes = served
                    .spec
                    .since_seq
                    .filter(|p| served.fresh && p.epoch == epoch);
                pushes.push((live.clone(), batch, n, served.next, end, resumes));
                served.next = end;
                served.fresh = false;
            }
        }
        for (live, batch, n, first, end, resumes) in pushes {
            let ring = live.id();
            if let Some(from) = resumes {
                self.saw("a resumed ring continued", 1);
                let ended = self.ring_end.get(&ring).copied().flatten();
                if ended != Some(from) || first != from.seq {
                    return Err(self.fail(format!(
                        "ring {ring} ended at {ended:?}, resumed from {from:?}, receives \
                         lines from {first}"
                    )));
                }
            }
            self.ring_end.insert(ring, Some(SeqPos { epoch, seq: end }));
            for s in self.sessions.values_mut() {
                if let Some((pushed, _)) = s.rings.get_mut(&ring) {
                    *pushed += n;
                }
            }
            live.push(
                batch,
                u32::try_from(n).expect("small"),
                SeqPos { epoch, seq: end },
            );
        }
        for d in finished {
            let conn = self.agents[k].conn.as_mut().expect("connected");
            conn.served.remove(&d);
            self.shell.demand_finished(now, id, d);
        }
        Ok(())
    }

    /// Identity `k` presents ids that are not its own: violations that change nothing.
    fn hostile(&mut self, k: usize, guess: u64) -> Result<(), TestCaseError> {
        let now = self.now;
        let Some(me) = self.agents[k].conn.as_ref().map(|c| c.id) else {
            return Ok(());
        };
        let foreign: Vec<DemandId> = self
            .agents
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .filter_map(|(_, a)| a.conn.as_ref())
            .flat_map(|c| c.served.keys().copied())
            .chain([DemandId::from(guess)])
            .collect();
        for d in foreign {
            let mine = self.agents[k]
                .conn
                .as_ref()
                .is_some_and(|c| c.served.contains_key(&d));
            if mine {
                continue;
            }
            match self.shell.resolve(now, me, d) {
                Err(Unresolved::Violation(_)) => self.saw("a violation", 1),
                Err(Unresolved::Gone) => {}
                Ok(_) => return Err(self.fail(format!("{me} resolved {d}, not its own"))),
            }
            if self
                .shell
                .open_failed(now, me, d, ErrorCode::UnknownStream)
                .is_ok()
                && !self.closed.contains(&d)
                && self.relay_has(d)
            {
                return Err(self.fail(format!("{me} refused {d}, not its own, unnoticed")));
            }
            self.shell.demand_finished(now, me, d);
            let log = self.shell.take_log();
            if !log.is_empty() {
                return Err(self.fail(format!("{me} presenting {d} changed things: {log:?}")));
            }
        }
        Ok(())
    }

    /// Whether some connection still serves `d`.
    fn relay_has(&self, d: DemandId) -> bool {
        self.agents
            .iter()
            .filter_map(|a| a.conn.as_ref())
            .any(|c| c.served.contains_key(&d))
    }

    /// Session `id` reads what is ready, checking every event against what it may know.
    fn read(&mut self, id: SessionId, bytes: usize) -> Result<(), TestCaseError> {
        let session = self.sessions.get_mut(&id).expect("present");
        let drained = session
            .outbox
            .drain(&self.metrics, bytes, SlowConsumerPolicy::DropOldest);
        let org = session.org;
        let mut problems = Vec::new();
        let mut seen: Vec<(&'static str, u64)> = Vec::new();
        for m in drained.messages {
            match m {
                axum::extract::ws::Message::Text(t) => {
                    let e: Event = serde_json::from_str(t.as_str()).expect("an event");
                    match &e {
                        Event::Paused { .. } => seen.push(("a paused stream", 1)),
                        Event::Resumed { .. } => seen.push(("a resumed stream", 1)),
                        Event::Live { .. } => seen.push(("a backfill handed over to live", 1)),
                        Event::End { reason, .. } => seen.push((
                            match reason {
                                EndReason::Complete => "a one-off read complete",
                                EndReason::DemandLimit => "a demand refused by a cap",
                                EndReason::Refused => "a filter refused",
                                _ => "a stream ended",
                            },
                            1,
                        )),
                        Event::Catalog { .. } => seen.push(("a catalog change told", 1)),
                        _ => {}
                    }
                    match &e {
                        Event::Stream { stream, labels, .. } => {
                            if labels.org != org {
                                problems.push(format!("{id} of {org} told of {labels:?}"));
                            }
                            session.told.insert(*stream, labels.clone());
                        }
                        Event::Streams { streams, .. } => {
                            for s in streams {
                                if s.labels.org != org {
                                    problems.push(format!("{id} of {org} listed {s:?}"));
                                }
                                session.listed.insert(s.stream);
                            }
                        }
                        Event::Catalog { added, removed, .. } => {
                            for s in added {
                                if s.labels.org != org {
                                    problems.push(format!("{id} of {org} listed {s:?}"));
                                }
                                session.listed.insert(s.stream);
                            }
                            for r in removed {
                                if !session.listed.contains(&r.stream) {
                                    problems.push(format!("{id} told {r:?}, never listed"));
                                }
                            }
                        }
                        Event::Gap {
                            stream,
                            lines,
                            reason,
                            ..
                        } => {
                            if !session.told.contains_key(stream) {
                                problems.push(format!("{id} told of gap on unknown {stream}"));
                            }
                            if *reason == GapReason::SlowConsumer
                                && let Some((_, got)) =
                                    session.rings.get_mut(&StreamId::from(*stream))
                            {
                                *got += lines;
                                seen.push(("lines a slow reader missed", *lines));
                            }
                        }
                        Event::Live { stream }
                        | Event::End { stream, .. }
                        | Event::Paused { stream, .. }
                        | Event::Resumed { stream }
                        | Event::Renumbered { stream, .. }
                            if !session.told.contains_key(stream) =>
                        {
                            problems.push(format!("{id} told {e:?} of an unknown stream"));
                        }
                        _ => {}
                    }
                }
                axum::extract::ws::Message::Binary(b) => {
                    let h = BatchHeader::parse(&b).expect("a batch");
                    if !session.told.contains_key(&h.stream) {
                        problems.push(format!("{id} got a batch of unknown {}", h.stream));
                    }
                    if h.flags & FLAG_BACKFILL == 0
                        && let Some((_, got)) = session.rings.get_mut(&StreamId::from(h.stream))
                    {
                        *got += u64::from(h.count);
                        seen.push(("lines read from a ring", u64::from(h.count)));
                    } else if h.flags & FLAG_BACKFILL != 0 {
                        seen.push(("lines read from a backfill", u64::from(h.count)));
                    }
                }
                _ => {}
            }
        }
        for (ring, (pushed, got)) in &session.rings {
            if got > pushed {
                problems.push(format!(
                    "{id} read {got} lines of {ring}, {pushed} were sent"
                ));
            }
        }
        for (what, n) in seen {
            self.saw(what, n);
        }
        match problems.first() {
            Some(p) => Err(self.fail(p.clone())),
            None => Ok(()),
        }
    }

    /// A live demand is open at a ring's agent iff some session watches the ring (after the
    /// linger, and a little after a demand ended), never two.
    fn check_demands(&self) -> Result<(), TestCaseError> {
        let mut live: BTreeMap<StreamId, Vec<DemandId>> = BTreeMap::new();
        for a in &self.agents {
            for (d, s) in a.conn.iter().flat_map(|c| &c.served) {
                if s.spec.follow && s.spec.until.is_none() && !self.closed.contains(d) {
                    live.entry(StreamId::from(s.stream_ref))
                        .or_default()
                        .push(*d);
                }
            }
        }
        for (ring, demands) in &live {
            if demands.len() > 1 {
                return Err(self.fail(format!("ring {ring} has demands {demands:?}")));
            }
            if let Some(since) = self.unwatched_since.get(ring)
                && self.now >= since.plus(LINGER)
            {
                return Err(self.fail(format!(
                    "ring {ring} unwatched since {since:?} still has {demands:?}"
                )));
            }
        }
        for (ring, watchers) in &self.watchers {
            if watchers.is_empty() || live.contains_key(ring) {
                continue;
            }
            let Some(&(k, local)) = self.source.get(ring) else {
                continue;
            };
            let a = &self.agents[k];
            let served = a.conn.is_some() && a.present.contains(&local);
            let reopening = self
                .live_ended
                .get(ring)
                .is_some_and(|t| self.now < t.plus(REOPEN_AFTER));
            if served && !reopening {
                return Err(self.fail(format!(
                    "ring {ring} watched by {watchers:?} has no demand at its agent"
                )));
            }
        }
        Ok(())
    }

    /// Everything sent is read: then every line pushed into a ring while a session watched
    /// it reached the session or was reported missing.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for k in 0..self.agents.len() {
            self.serve(k)?;
        }
        self.deliver_messages();
        self.observe()?;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.read(id, usize::MAX)?;
            let s = &self.sessions[&id];
            for (ring, (pushed, got)) in &s.rings {
                if pushed != got {
                    return Err(self.fail(format!(
                        "{id} watching {ring}: {pushed} lines sent, {got} read or reported"
                    )));
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random schedules of agents and sessions keep every promise.
    #[test]
    fn random_schedules_keep_every_promise(
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..200),
    ) {
        let mut world = World::new(seed);
        for a in &actions {
            world.step(a)?;
        }
        world.settle()?;
    }
}

/// The schedules reach every situation the checks are about (else passing proves little).
#[test]
fn the_schedules_reach_every_situation() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut stats: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..200 {
        let actions = proptest::collection::vec(action(), 1..200)
            .new_tree(&mut runner)
            .expect("a schedule")
            .current();
        let mut world = World::new(seed);
        for a in &actions {
            world.step(a).expect("the promises hold");
        }
        world.settle().expect("the promises hold");
        for (what, n) in world.stats {
            *stats.entry(what).or_default() += n;
        }
    }
    for what in [
        "a joiner's backfill",
        "a further subscription's backfill",
        "a one-off read",
        "a one-off read complete",
        "a live demand resuming a ring",
        "a resumed ring continued",
        "a filtered ring's demand",
        "a cancel",
        "a superseded connection",
        "a violation",
        "a paused stream",
        "a resumed stream",
        "a backfill handed over to live",
        "a demand refused by a cap",
        "a stream ended",
        "a catalog change told",
        "lines a slow reader missed",
        "lines read from a ring",
        "lines read from a backfill",
    ] {
        assert!(
            stats.get(what).copied().unwrap_or(0) > 0,
            "never: {what}; {stats:#?}"
        );
    }
    if std::env::var_os("SIM_STATS").is_some() {
        eprintln!("{stats:#?}");
    }
}
