//! The hub: the relay's in-memory state of streams, demands and sessions.
//!
//! * A stream exists while an agent announces it (or briefly after its agent went away, while
//!   someone watches it). Its identity is its labels, so an agent that reconnects — or a relay
//!   that restarts — finds the same stream again and the relay re-sends its demands.
//! * The first watcher of a stream makes the relay `open` it at its agent; the last one leaving
//!   makes it `cancel` after a linger. Content flows into one [`Ring`] per stream.
//! * A watcher joining a live stream gets its own backfill (`tail`, `since`) up to the ring's
//!   current end from the agent, then reads the ring from that point: no duplicate, no hole.
//! * A live subscription with a line filter (`contains`, `matches`) watches a *filtered ring*
//!   of the stream: one per (stream, filter), with a demand of its own that pushes the filter
//!   down to the agent, shared by every session asking for the same filter, and otherwise
//!   served exactly like a stream's ring (joiners, linger and cancel, reconnects, budget). It
//!   is filed beside the streams under an id of its own, which its batches and events carry.
//!
//! Lock order: hub state → session state → live stream (ring, watchers). Ingest pushes take
//! only the live stream's locks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, StreamEntry, StreamRemoved};
use tokio::sync::{Notify, mpsc};

use crate::auth::{Claims, authorize};
use crate::metrics::RelayMetrics;
use crate::ring::{self, Ring};

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes each stream's ring holds.
    pub ring_bytes: usize,
    /// How long a stream stays open at its agent after its last watcher left.
    pub linger: Duration,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Batches of backfill buffered per watcher before the agent is slowed down.
    pub backfill_batches: usize,
    /// Bytes of pending events (JSON) a session may have queued before it is closed.
    pub max_session_event_bytes: usize,
    /// Relay-wide budget of buffered content, in bytes.
    pub memory_budget_bytes: usize,
    /// Sessions one org may hold.
    pub max_sessions_per_org: usize,
    /// Demands open at one agent connection at once, beyond which a subscription's new demand
    /// is refused (`end` `demand_limit`).
    pub max_demands_per_agent: usize,
    /// Demands open at the agents of one org at once, likewise.
    pub max_demands_per_org: usize,
    /// Streams one agent connection may announce.
    pub max_streams_per_agent: usize,
    /// Streams the agents of one org may announce together.
    pub max_streams_per_org: usize,
    /// Bytes of label values of one stream.
    pub max_label_bytes_per_stream: usize,
    /// Bytes of label values of all the streams of one agent connection.
    pub max_label_bytes_per_agent: usize,
}

/// What a demand's data stream feeds.
#[derive(Debug, Clone)]
pub enum DemandSink {
    /// The live ring of a stream.
    Live(Arc<LiveStream>),
    /// One watcher's backfill.
    Backfill {
        /// Relay stream id.
        stream: u64,
        /// Where batches go (bounded: a full queue slows the agent, nothing is dropped).
        tx: mpsc::Sender<Bytes>,
        /// The watcher.
        session: Arc<SessionShared>,
    },
}

/// The part of a stream that ingest writes to without the hub lock.
#[derive(Debug)]
pub struct LiveStream {
    /// Relay stream id.
    pub id: u64,
    ring: Mutex<Ring>,
    watchers: Mutex<Vec<Arc<SessionShared>>>,
    metrics: Arc<RelayMetrics>,
    budget_bytes: usize,
    /// Per watching session, the end of what its writer has handed to the socket (`None`:
    /// nothing yet, from the ring's start): what the agent may forget ([`Self::ack_point`]).
    delivered: Mutex<HashMap<u64, Option<SeqPos>>>,
}

impl LiveStream {
    /// Appends a batch and wakes every watcher. Returns lines dropped from the ring: its own
    /// oldest batches, to stay within the ring's size and the relay-wide memory budget.
    pub fn push(&self, batch: Bytes, lines: u32, end: SeqPos) -> u64 {
        let len = batch.len() as i64;
        let dropped_lines = {
            let mut ring = self.ring.lock().expect("ring lock");
            let (mut dropped, dropped_bytes) = ring.push(batch, lines, end);
            self.metrics
                .buffered_bytes
                .inc_by(len - dropped_bytes as i64);
            while self.metrics.buffered_bytes.get() > self.budget_bytes as i64 {
                let Some((l, b)) = ring.evict_oldest() else {
                    break;
                };
                self.metrics.buffered_bytes.dec_by(b as i64);
                dropped += l;
            }
            dropped
        };
        if dropped_lines > 0 {
            self.metrics.ring_evicted_lines.inc_by(dropped_lines);
        }
        for w in self.watchers.lock().expect("watchers lock").iter() {
            w.notify.notify_one();
        }
        dropped_lines
    }

    /// Moves a lagging watcher's cursor to the oldest batch still held; what it missed.
    pub fn skip_lagged(&self, cursor: &mut ring::Cursor) -> Option<ring::Lag> {
        self.ring.lock().expect("ring lock").skip_lagged(cursor)
    }

    /// Reads for one watcher.
    pub fn read(&self, cursor: &mut ring::Cursor, max_bytes: usize) -> ring::Read {
        self.ring.lock().expect("ring lock").read(cursor, max_bytes)
    }

    /// A session starts watching the ring, from `from` (where its cursor starts).
    pub fn track(&self, session: u64, from: Option<SeqPos>) {
        self.delivered
            .lock()
            .expect("delivered lock")
            .insert(session, from);
    }

    /// A session's writer handed everything before `to` to its socket.
    pub fn delivered(&self, session: u64, to: Option<SeqPos>) {
        if let Some(d) = self
            .delivered
            .lock()
            .expect("delivered lock")
            .get_mut(&session)
        {
            *d = to.or(*d);
        }
    }

    fn untrack(&self, session: u64) {
        self.delivered
            .lock()
            .expect("delivered lock")
            .remove(&session);
    }

    /// What every watcher has been handed, in the ring's current epoch: the agent may forget
    /// what it sent before it (see [`ack_point`]).
    pub fn ack_point(&self) -> Option<SeqPos> {
        let ring = self.ring.lock().expect("ring lock");
        let (end, floor) = (ring.last_end(), ring.floor());
        drop(ring);
        let delivered = self.delivered.lock().expect("delivered lock");
        ack_point(end, floor, delivered.values().copied())
    }

    fn reset_ring(&self, capacity: usize) {
        let mut ring = self.ring.lock().expect("ring lock");
        self.metrics.buffered_bytes.dec_by(ring.held_bytes() as i64);
        *ring = Ring::new(capacity);
    }
}

/// Where an agent may forget what it sent for a ring (pure): the least position that every
/// watcher has been handed (`delivered`), within the ring's current epoch (that of `end`, the
/// end of the last batch received). A watcher behind the ring's `floor` (the end of what the
/// ring evicted) counts as at the floor: it is told of that loss as a gap anyway. With no
/// watcher, everything received. `None` while some watcher has nothing of the current epoch.
pub fn ack_point(
    end: Option<SeqPos>,
    floor: Option<SeqPos>,
    delivered: impl IntoIterator<Item = Option<SeqPos>>,
) -> Option<SeqPos> {
    let end = end?;
    let floor = floor.filter(|f| f.epoch == end.epoch).map(|f| f.seq);
    let mut ack = end.seq;
    for d in delivered {
        let at = match d.filter(|d| d.epoch == end.epoch) {
            Some(d) => d.seq.max(floor.unwrap_or(0)),
            None => floor?,
        };
        ack = ack.min(at);
    }
    Some(SeqPos {
        epoch: end.epoch,
        seq: ack,
    })
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        if let Ok(ring) = self.ring.lock() {
            self.metrics.buffered_bytes.dec_by(ring.held_bytes() as i64);
        }
    }
}

/// One session's state shared between the hub, its reader and its writer.
#[derive(Debug)]
pub struct SessionShared {
    /// Session id.
    pub id: u64,
    /// Org the session is authorised for.
    pub org: String,
    /// The verified token's claims (`None`: an anonymous development session, org-wide).
    pub claims: Option<Arc<Claims>>,
    /// Woken whenever the writer has something to do.
    pub notify: Notify,
    /// Watches and pending events.
    pub state: Mutex<SessionState>,
}

/// What a session's writer drains.
#[derive(Debug, Default)]
pub struct SessionState {
    /// JSON events not yet written.
    pub events: std::collections::VecDeque<String>,
    /// Bytes in `events`.
    pub event_bytes: usize,
    /// What the session watches, by the stream id its data carries: the relay stream id for
    /// the stream's shared ring, the filtered ring's id for a stream's ring of one line
    /// filter, an id of its own for each private watch (see [`Watch::private_demand`]), so
    /// that every batch and event names one watch.
    pub watches: HashMap<u64, Watch>,
    /// Set when the session must be closed (code, reason).
    pub close: Option<(u16, String)>,
    /// Losses found while the writer was blocked, per stream, merged until written.
    pub pending_gaps: HashMap<u64, ring::Lag>,
    subs: HashMap<String, SubSpec>,
    /// Watched lists (`list` with `watch`), by id: they share the namespace and the limit of
    /// subscriptions.
    lists: HashMap<String, Selector>,
}

impl SessionState {
    fn id_in_use(&self, id: &str) -> bool {
        self.subs.contains_key(id) || self.lists.contains_key(id)
    }

    fn subscriptions(&self) -> usize {
        self.subs.len() + self.lists.len()
    }
}

/// A stream a session watches.
#[derive(Debug)]
pub struct Watch {
    /// The stream's live part.
    pub stream: Arc<LiveStream>,
    /// Position in the ring (unused by a private watch).
    pub cursor: ring::Cursor,
    /// Demands served for this watch alone, still arriving, drained in order before the ring:
    /// the backfill of each subscription that joined with a backlog, or a private watch's
    /// own demand.
    pub backfills: VecDeque<Backfill>,
    /// A watch served by its own demand rather than a shared ring — a one-off read
    /// (`follow: false`), one per subscription and stream — and that demand's id. The watch
    /// ends when that demand does; removing the watch cancels it.
    pub private_demand: Option<u64>,
    /// A `since_seq` the next batch of this watch answers: whether the agent still held its
    /// epoch shows in that batch's epoch.
    pub resume: Option<SeqPos>,
    subs: BTreeSet<String>,
}

/// Batches of one demand served for one watch.
#[derive(Debug)]
pub struct Backfill {
    /// The demand (cancelled at its agent when the watch goes before it is complete).
    pub demand: u64,
    /// Where its data stream puts them (bounded: a full queue slows that data stream only).
    pub rx: mpsc::Receiver<Bytes>,
    /// The `since_seq` it asked for, until its first batch shows whether that epoch was held.
    pub resume: Option<SeqPos>,
}

#[derive(Debug, Clone)]
struct SubSpec {
    selector: Selector,
    demand: Demand,
}

impl SessionShared {
    /// Default deny: same org, and (with a token) a role binding covering the stream.
    pub fn may_read(&self, labels: &Labels) -> bool {
        labels.org == self.org && self.claims.as_deref().is_none_or(|c| authorize(c, labels))
    }

    /// Queues an event for the writer.
    pub fn push_event(&self, event: &Event, max_bytes: usize) {
        let mut st = self.state.lock().expect("session lock");
        push_event_locked(&mut st, event, max_bytes);
        drop(st);
        self.notify.notify_one();
    }
}

fn push_event_locked(st: &mut SessionState, event: &Event, max_bytes: usize) {
    let json = serde_json::to_string(event).expect("events always serialize");
    if st.event_bytes + json.len() > max_bytes {
        st.close.get_or_insert((
            logrelay_wire::session::close::SLOW_CONSUMER,
            "session is not reading its events".into(),
        ));
        return;
    }
    st.event_bytes += json.len();
    st.events.push_back(json);
}

#[derive(Debug)]
struct StreamState {
    labels: Labels,
    agent: Option<(u64, u64)>,
    live: Arc<LiveStream>,
    live_demand: Option<u64>,
    watchers: HashMap<u64, Weak<SessionShared>>,
    generation: u64,
    /// For a filtered ring: the stream it filters, and the filter its demands push down to the
    /// agent. `None` for a stream as its agent announced it.
    filtered: Option<(u64, LineFilter)>,
    /// For a stream: its filtered rings, by filter.
    rings: HashMap<LineFilter, u64>,
}

impl StreamState {
    /// The live demand that resumes this ring where it ended (after a reconnect, or when the
    /// agent finished the previous one), with its line filter. Besides the position, it names
    /// the time after the newest line held: an agent that lost the epoch (it restarted) starts
    /// the new one with the lines written since, rather than at the end of the file.
    fn resume_demand(&self) -> Demand {
        let ring = self.live.ring.lock().expect("ring lock");
        let resume = Demand {
            since_seq: ring.last_end(),
            since_ns: ring.last_line_ns().map(|t| t.saturating_add(1)),
            after_line: ring.last_line_mark(),
            follow: true,
            ..Demand::default()
        };
        drop(ring);
        match &self.filtered {
            Some((_, filter)) => filter.onto(resume),
            None => resume,
        }
    }
}

/// A line filter pushed down to the agent: sessions asking a stream for the same one share
/// its filtered ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LineFilter {
    contains: Option<String>,
    matches: Option<String>,
}

impl LineFilter {
    /// The filter a demand asks for, if any.
    fn of(demand: &Demand) -> Option<Self> {
        let filter = Self {
            contains: demand.contains.clone(),
            matches: demand.matches.clone(),
        };
        (filter.contains.is_some() || filter.matches.is_some()).then_some(filter)
    }

    /// `demand` with this filter.
    fn onto(&self, demand: Demand) -> Demand {
        Demand {
            contains: self.contains.clone(),
            matches: self.matches.clone(),
            ..demand
        }
    }
}

/// The reason of a `catalog_remove`, as sessions see it in `end`: a code of the agent's
/// (`[a-z0-9_]`, at most 64 bytes), or `container_removed` for anything else.
fn removal_reason(reason: &str) -> &str {
    let code = !reason.is_empty()
        && reason.len() <= 64
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if code { reason } else { "container_removed" }
}

#[derive(Debug)]
struct AgentLink {
    org: Arc<str>,
    cluster: String,
    tx: mpsc::Sender<RelayMsg>,
    /// Closes the agent's connection (it reconnects and the relay re-sends its demands).
    reset: Arc<Notify>,
    /// The streams this connection announced (and the relay took): its own id → the relay's
    /// stream id, and the stream's label bytes.
    streams: HashMap<u64, (u64, usize)>,
    /// The random high half of every demand id issued to this connection (unique among the
    /// connected agents): ids of other connections cannot be derived from this one's.
    nonce: u64,
    /// Demand ids issued to this connection so far (the low half of the next one).
    issued: u64,
    /// Demands of this connection open now.
    demands_open: usize,
    /// Bytes of label values of the streams in `streams`.
    label_bytes: usize,
}

impl AgentLink {
    /// Whether `demand` is an id this connection was given (open or not any more).
    fn issued(&self, demand: u64) -> bool {
        demand >> 32 == self.nonce && demand & 0xffff_ffff < self.issued
    }
}

#[derive(Debug)]
struct DemandEntry {
    agent: u64,
    /// The agent's org (demands are counted per org).
    org: Arc<str>,
    /// Set when the relay no longer wants this demand: its data stream stops reading.
    cancelled: Arc<AtomicBool>,
    /// A data stream was accepted for it (an agent serves a demand on one data stream).
    claimed: bool,
    target: DemandTarget,
}

#[derive(Debug)]
enum DemandTarget {
    Live(u64),
    Backfill {
        stream: u64,
        session: Weak<SessionShared>,
        tx: mpsc::Sender<Bytes>,
    },
}

/// A change to what `list` shows, for the sessions watching lists.
#[derive(Debug)]
struct ListChange {
    labels: Labels,
    change: Result<StreamEntry, StreamRemoved>,
}

#[derive(Debug, Default)]
struct State {
    /// Sessions holding at least one watched list.
    listing: HashMap<u64, Weak<SessionShared>>,
    /// List changes made under the current lock, sent when it is released ([`Locked`]).
    list_changes: Vec<ListChange>,
    next_id: u64,
    streams: HashMap<u64, StreamState>,
    by_labels: HashMap<Labels, u64>,
    agents: HashMap<u64, AgentLink>,
    sessions: HashMap<u64, Weak<SessionShared>>,
    sessions_per_org: HashMap<String, usize>,
    demands: HashMap<u64, DemandEntry>,
    demands_per_org: HashMap<Arc<str>, usize>,
    /// `logrelay_relay_demands_open`: the size of `demands`.
    demands_open: prometheus_client::metrics::gauge::Gauge,
    /// Streams announced by the connected agents of each org.
    streams_per_org: HashMap<Arc<str>, usize>,
    /// `logrelay_relay_catalog_bytes`: what the announced streams hold, estimated.
    catalog_bytes: prometheus_client::metrics::gauge::Gauge,
}

/// Bytes the relay holds per announced stream besides its label values (two copies of them:
/// the stream's entry and the index by labels), estimated: its entry, ring and indexes.
const STREAM_OVERHEAD_BYTES: usize = 1024;

/// What `logrelay_relay_catalog_bytes` counts for a stream of `label_bytes`.
fn catalog_cost(label_bytes: usize) -> i64 {
    i64::try_from(STREAM_OVERHEAD_BYTES + 2 * label_bytes).unwrap_or(i64::MAX)
}

/// Bytes of label values an agent sets (`org` and `cluster` come from its certificate).
fn label_bytes(l: &Labels) -> usize {
    [&l.node, &l.namespace, &l.pod, &l.pod_uid, &l.container]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
        + [&l.project, &l.domain, &l.run, &l.action, &l.attempt]
            .iter()
            .filter_map(|v| v.as_ref().map(String::len))
            .sum::<usize>()
}

/// Streams of a `catalog_add` the relay did not take, by the limit that refused them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRefusal {
    /// `label_bytes_per_stream`, `streams_per_agent`, `label_bytes_per_agent` or
    /// `streams_per_org`.
    pub limit: &'static str,
    /// The agent's ids of the streams refused.
    pub streams: Vec<u64>,
}

/// Random bits from the operating system (ids a peer cannot predict from the ones it sees).
fn random_u64() -> u64 {
    use ::ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ::ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    u64::from_le_bytes(bytes)
}

impl State {
    /// Notes that stream `sid` appeared or changed liveness, for watched lists.
    fn listed(&mut self, sid: u64) {
        if self.listing.is_empty() {
            return;
        }
        if let Some(s) = self.streams.get(&sid).filter(|s| s.filtered.is_none()) {
            let change = ListChange {
                labels: s.labels.clone(),
                change: Ok(entry(sid, s)),
            };
            self.list_changes.push(change);
        }
    }

    /// A sequential id: agent connections and sessions (never presented back by a peer).
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A random id in [1, 2^53) (exact in JavaScript) not in use: streams, filtered rings and
    /// private watches, which sessions see and batch headers carry.
    fn stream_id(&self) -> u64 {
        loop {
            let id = random_u64() & ((1 << 53) - 1);
            if id != 0 && !self.streams.contains_key(&id) {
                return id;
            }
        }
    }

    /// Registers a demand of `agent`'s connection; its id is the connection's nonce and its
    /// count of issued ids. `None` when the agent is gone or has used up its ids (2^32: its
    /// connection is then reset, and the relay re-sends its demands on the next one).
    fn add_demand(&mut self, agent: u64, target: DemandTarget) -> Option<u64> {
        let link = self.agents.get_mut(&agent)?;
        if link.issued > 0xffff_ffff {
            link.reset.notify_one();
            return None;
        }
        let id = link.nonce << 32 | link.issued;
        link.issued += 1;
        link.demands_open += 1;
        let org = link.org.clone();
        *self.demands_per_org.entry(org.clone()).or_default() += 1;
        self.demands.insert(
            id,
            DemandEntry {
                agent,
                org,
                cancelled: Arc::new(AtomicBool::new(false)),
                claimed: false,
                target,
            },
        );
        self.demands_open.set(self.demands.len() as i64);
        Some(id)
    }

    /// Files stream `sid` as announced by `agent` under its own id `local`.
    fn count_stream(&mut self, agent: u64, local: u64, sid: u64, bytes: usize) {
        let Some(link) = self.agents.get_mut(&agent) else {
            return;
        };
        link.streams.insert(local, (sid, bytes));
        link.label_bytes += bytes;
        *self.streams_per_org.entry(link.org.clone()).or_default() += 1;
        self.catalog_bytes.inc_by(catalog_cost(bytes));
    }

    /// Unfiles the stream `agent` announced as `local`; the relay's id of it.
    fn uncount_stream(&mut self, agent: u64, local: u64) -> Option<u64> {
        let link = self.agents.get_mut(&agent)?;
        let (sid, bytes) = link.streams.remove(&local)?;
        link.label_bytes = link.label_bytes.saturating_sub(bytes);
        let org = link.org.clone();
        self.uncount_streams(&org, 1, bytes);
        Some(sid)
    }

    /// Unfiles `n` streams of `org` holding `bytes` of labels.
    fn uncount_streams(&mut self, org: &Arc<str>, n: usize, bytes: usize) {
        if let Some(count) = self.streams_per_org.get_mut(org) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.streams_per_org.remove(org);
            }
        }
        let cost = n.saturating_mul(STREAM_OVERHEAD_BYTES) + 2 * bytes;
        self.catalog_bytes
            .dec_by(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    /// Gives back the memory of indexes that held far more than they do (after a large
    /// catalog went), so the process's memory follows what it holds.
    fn shrink(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 64 && m.capacity() > 4 * m.len() {
                m.shrink_to_fit();
            }
        }
        shrink(&mut self.streams);
        shrink(&mut self.by_labels);
        shrink(&mut self.demands);
    }

    /// Why a demand id an agent presented resolves to nothing of its connection.
    fn unresolved(&self, agent: u64, demand: u64) -> Unresolved {
        match self.agents.get(&agent) {
            // Gone (the connection is ending), or one of its own that ended meanwhile.
            None => Unresolved::Gone,
            Some(link) if link.issued(demand) => Unresolved::Gone,
            Some(_) if self.demands.contains_key(&demand) => {
                Unresolved::Violation(AgentViolation::ForeignDemand)
            }
            Some(_) => Unresolved::Violation(AgentViolation::UnknownDemand),
        }
    }

    /// Whether stream `sid` is watched, itself or through one of its filtered rings.
    fn in_use(&self, sid: u64) -> bool {
        self.streams.get(&sid).is_some_and(|s| {
            !s.watchers.is_empty()
                || s.rings
                    .values()
                    .any(|r| self.streams.get(r).is_some_and(|r| !r.watchers.is_empty()))
        })
    }

    /// Removes a demand and tells its data stream to stop.
    fn forget_demand(&mut self, demand: u64) -> Option<DemandTarget> {
        let entry = self.demands.remove(&demand)?;
        self.demands_open.set(self.demands.len() as i64);
        entry.cancelled.store(true, Ordering::Relaxed);
        if let Some(link) = self.agents.get_mut(&entry.agent) {
            link.demands_open = link.demands_open.saturating_sub(1);
        }
        if let Some(n) = self.demands_per_org.get_mut(&entry.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.demands_per_org.remove(&entry.org);
            }
        }
        Some(entry.target)
    }
}

fn entry(sid: u64, s: &StreamState) -> StreamEntry {
    StreamEntry {
        stream: sid,
        labels: s.labels.clone(),
        live: s.agent.is_some(),
    }
}

/// The hub lock. Releasing it sends the list changes made under it to the sessions watching
/// lists (one `catalog` event per watch), so that no path that changes the catalog can forget
/// to.
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, State>,
    max_event_bytes: usize,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.guard.list_changes.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.guard.list_changes);
        let sessions: Vec<Arc<SessionShared>> = self
            .guard
            .listing
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for session in sessions {
            let mut ss = session.state.lock().expect("session lock");
            let mut events = Vec::new();
            for (id, selector) in &ss.lists {
                let (mut added, mut removed) = (Vec::new(), Vec::new());
                for c in &changes {
                    if !selector.matches(&c.labels) || !session.may_read(&c.labels) {
                        continue;
                    }
                    match &c.change {
                        Ok(e) => added.push(e.clone()),
                        Err(r) => removed.push(r.clone()),
                    }
                }
                if !added.is_empty() || !removed.is_empty() {
                    events.push(Event::Catalog {
                        id: id.clone(),
                        added,
                        removed,
                    });
                }
            }
            if events.is_empty() {
                continue;
            }
            for e in &events {
                push_event_locked(&mut ss, e, self.max_event_bytes);
            }
            drop(ss);
            session.notify.notify_one();
        }
    }
}

/// Something an agent connection presented that is not its own: it is refused (the data
/// stream stopped, or the connection closed), counted in
/// `logrelay_relay_agent_violations_total{kind}` and audited, and nothing else notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentViolation {
    /// A demand id that is open, but was issued to another connection.
    #[error("demand was not issued to this connection")]
    ForeignDemand,
    /// A demand id never issued to this connection (a guess).
    #[error("demand was never issued to this connection")]
    UnknownDemand,
    /// A second data stream for a demand that already has one.
    #[error("demand already has a data stream")]
    DuplicateDataStream,
    /// A batch stamped with another stream than the one its demand serves.
    #[error("batch for another stream than the demand's")]
    WrongStream,
}

impl AgentViolation {
    /// The `kind` label and audit reason.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ForeignDemand => "foreign_demand",
            Self::UnknownDemand => "unknown_demand",
            Self::DuplicateDataStream => "duplicate_data_stream",
            Self::WrongStream => "wrong_stream",
        }
    }
}

/// Why a demand id did not resolve to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// One of the connection's own demands that ended meanwhile (or the connection is going):
    /// the data stream is stopped with `UNKNOWN_DEMAND`, no harm meant.
    Gone,
    /// Not the connection's own.
    Violation(AgentViolation),
}

/// A demand refused by a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapHit {
    PerAgent,
    PerOrg,
}

impl CapHit {
    fn limit(self) -> &'static str {
        match self {
            Self::PerAgent => "demands_per_agent",
            Self::PerOrg => "demands_per_org",
        }
    }
}

/// A refused session request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Code sent to the session.
    pub code: ErrorCode,
    /// Reason sent to the session.
    pub message: String,
}

/// The hub.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    config: HubConfig,
    metrics: Arc<RelayMetrics>,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig, metrics: Arc<RelayMetrics>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                demands_open: metrics.demands_open.clone(),
                catalog_bytes: metrics.catalog_bytes.clone(),
                ..State::default()
            }),
            config,
            metrics,
        })
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.state.lock().expect("hub lock"),
            max_event_bytes: self.config.max_session_event_bytes,
        }
    }

    // ---- agents ----------------------------------------------------------------------------

    /// Registers a connected agent; returns its id.
    /// `reset` is notified when the agent's control queue overflowed and its connection must
    /// be closed.
    pub fn add_agent(
        &self,
        org: &str,
        cluster: &str,
        tx: mpsc::Sender<RelayMsg>,
        reset: Arc<Notify>,
    ) -> u64 {
        let mut st = self.lock();
        let id = st.id();
        let nonce = loop {
            let nonce = random_u64() >> 33;
            if nonce != 0 && st.agents.values().all(|a| a.nonce != nonce) {
                break nonce;
            }
        };
        st.agents.insert(
            id,
            AgentLink {
                org: org.into(),
                cluster: cluster.into(),
                tx,
                reset,
                streams: HashMap::new(),
                nonce,
                issued: 0,
                demands_open: 0,
                label_bytes: 0,
            },
        );
        self.metrics.agents_connected.inc();
        id
    }

    /// Forgets a disconnected agent. Its watched streams stay (orphaned) so that watchers
    /// resume when it comes back; unwatched ones go. Streams another connection of the same
    /// agent has announced meanwhile are left alone.
    pub fn remove_agent(&self, agent: u64) {
        let mut st = self.lock();
        let Some(link) = st.agents.remove(&agent) else {
            return;
        };
        self.metrics.agents_connected.dec();
        st.uncount_streams(&link.org, link.streams.len(), link.label_bytes);
        for (_, (sid, _)) in link.streams {
            let Some(s) = st.streams.get_mut(&sid) else {
                continue;
            };
            if s.agent.map(|(a, _)| a) != Some(agent) {
                continue;
            }
            let ids: Vec<u64> = std::iter::once(sid)
                .chain(s.rings.values().copied())
                .collect();
            for &id in &ids {
                let Some(s) = st.streams.get_mut(&id) else {
                    continue;
                };
                s.agent = None;
                if let Some(d) = s.live_demand.take() {
                    st.forget_demand(d);
                }
            }
            // Unwatched rings go now (a lingering one included); watched ones stay orphaned,
            // and their watchers learn that nothing arrives until the agent is back.
            for id in ids.into_iter().rev() {
                if !st.in_use(id) {
                    self.drop_stream(&mut st, id, "agent_disconnected");
                } else {
                    st.listed(id);
                    self.tell_watchers(
                        &st,
                        id,
                        &Event::Paused {
                            stream: id,
                            reason: "agent_disconnected".into(),
                        },
                    );
                }
            }
        }
        // Backfills it was serving end now (their watchers go live), not never.
        let orphaned: Vec<u64> = st
            .demands
            .iter()
            .filter(|(_, d)| d.agent == agent)
            .map(|(id, _)| *id)
            .collect();
        for d in orphaned {
            if let Some(DemandTarget::Backfill { session, .. }) = st.forget_demand(d)
                && let Some(s) = session.upgrade()
            {
                s.notify.notify_one();
            }
        }
        st.shrink();
    }

    /// Streams an agent announced. Org and cluster come from the agent's certificate. A stream
    /// beyond a cap (label bytes of the stream, streams or label bytes of the connection,
    /// streams of the org) is not taken: the refused ones are returned, by the limit that
    /// refused them, for the agent to be told.
    pub fn catalog_add(&self, agent: u64, streams: Vec<StreamInfo>) -> Vec<CatalogRefusal> {
        let mut st = self.lock();
        let Some(link) = st.agents.get(&agent) else {
            return Vec::new();
        };
        let (org, cluster) = (link.org.to_string(), link.cluster.clone());
        let org_key = link.org.clone();
        let mut refused: Vec<CatalogRefusal> = Vec::new();
        for info in streams {
            let bytes = label_bytes(&info.labels);
            // An id announced again: the same stream is a repeat, another replaces it.
            if let Some(&(old, _)) = st.agents.get(&agent).and_then(|l| l.streams.get(&info.id)) {
                let announced = Labels {
                    org: org.clone(),
                    cluster: cluster.clone(),
                    ..info.labels.clone()
                };
                let same = st.streams.get(&old).is_some_and(|s| s.labels == announced);
                if same {
                    continue;
                }
                st.uncount_stream(agent, info.id);
                if st.streams.get(&old).and_then(|s| s.agent) == Some((agent, info.id)) {
                    self.end_stream(&mut st, old, "labels_changed");
                }
            }
            if let Some(limit) = self.catalog_cap(&st, agent, &org_key, bytes) {
                self.metrics.limit_hit(limit);
                match refused.iter_mut().find(|r| r.limit == limit) {
                    Some(r) => r.streams.push(info.id),
                    None => refused.push(CatalogRefusal {
                        limit,
                        streams: vec![info.id],
                    }),
                }
                continue;
            }
            let mut labels = info.labels;
            labels.org.clone_from(&org);
            labels.cluster.clone_from(&cluster);
            let (sid, is_new) = match st.by_labels.get(&labels) {
                Some(&sid) => (sid, false),
                None => {
                    let sid = st.stream_id();
                    st.by_labels.insert(labels.clone(), sid);
                    let state = self.stream_state(sid, labels.clone(), None, None);
                    st.streams.insert(sid, state);
                    self.metrics.streams.inc();
                    (sid, true)
                }
            };
            st.count_stream(agent, info.id, sid, bytes);
            // The stream and its filtered rings are served by this agent now.
            let s = st.streams.get(&sid).expect("inserted");
            let ids: Vec<u64> = std::iter::once(sid)
                .chain(s.rings.values().copied())
                .collect();
            for id in ids {
                let s = st.streams.get_mut(&id).expect("present");
                let previous = s.agent.replace((agent, info.id));
                if previous.is_none() && !is_new && !s.watchers.is_empty() {
                    // An orphaned, watched stream: its agent is back.
                    self.tell_watchers(&st, id, &Event::Resumed { stream: id });
                }
                if previous.is_none() {
                    st.listed(id);
                }
                let s = st.streams.get_mut(&id).expect("present");
                if previous.is_some_and(|(a, _)| a != agent) {
                    // A newer connection of the same agent took the stream over.
                    if let Some(d) = s.live_demand.take() {
                        st.forget_demand(d);
                    }
                }
                let s = st.streams.get(&id).expect("present");
                // Reconnect: resume what watchers had, from where the ring ended.
                if !s.watchers.is_empty() && s.live_demand.is_none() {
                    let resume = s.resume_demand();
                    self.open_live(&mut st, id, resume);
                }
            }
            if !is_new {
                continue;
            }
            // New stream: attach every matching standing subscription.
            let sessions: Vec<Arc<SessionShared>> =
                st.sessions.values().filter_map(Weak::upgrade).collect();
            for session in sessions {
                if !session.may_read(&labels) {
                    continue;
                }
                let subs: Vec<(String, SubSpec)> = {
                    let ss = session.state.lock().expect("session lock");
                    ss.subs
                        .iter()
                        .filter(|(_, spec)| spec.selector.matches(&labels))
                        .map(|(id, spec)| (id.clone(), spec.clone()))
                        .collect()
                };
                for (id, spec) in subs {
                    tracing::debug!(session = session.id, sub = %id, stream = sid, "new stream matches subscription");
                    self.add_watch(&mut st, &session, sid, &id, &spec.demand);
                }
            }
        }
        refused
    }

    /// Streams an agent no longer has: their watchers get an `end` event. Only the streams this
    /// connection announced and still serves are looked at: an id it never announced, or a
    /// stream another connection (of the same agent) has taken over since, is left alone.
    pub fn catalog_remove(&self, agent: u64, gone: Vec<StreamGone>) {
        let mut st = self.lock();
        for g in gone {
            let Some(sid) = st.uncount_stream(agent, g.id) else {
                continue;
            };
            if st.streams.get(&sid).and_then(|s| s.agent) != Some((agent, g.id)) {
                continue;
            }
            self.end_stream(&mut st, sid, removal_reason(&g.reason));
        }
        st.shrink();
    }

    /// The cap a new stream of `bytes` label bytes from `agent` (of `org`) would pass, if any.
    fn catalog_cap(
        &self,
        st: &State,
        agent: u64,
        org: &Arc<str>,
        bytes: usize,
    ) -> Option<&'static str> {
        let c = &self.config;
        let link = st.agents.get(&agent)?;
        if bytes > c.max_label_bytes_per_stream {
            Some("label_bytes_per_stream")
        } else if link.streams.len() >= c.max_streams_per_agent {
            Some("streams_per_agent")
        } else if link.label_bytes + bytes > c.max_label_bytes_per_agent {
            Some("label_bytes_per_agent")
        } else if st.streams_per_org.get(org).copied().unwrap_or(0) >= c.max_streams_per_org {
            Some("streams_per_org")
        } else {
            None
        }
    }

    /// Queues `event` for every session watching `sid`.
    fn tell_watchers(&self, st: &State, sid: u64, event: &Event) {
        let Some(s) = st.streams.get(&sid) else {
            return;
        };
        for w in s.watchers.values().filter_map(Weak::upgrade) {
            let mut ws = w.state.lock().expect("session lock");
            push_event_locked(&mut ws, event, self.config.max_session_event_bytes);
            drop(ws);
            w.notify.notify_one();
        }
    }

    fn end_stream(&self, st: &mut State, sid: u64, reason: &str) {
        let Some(s) = st.streams.get(&sid) else {
            return;
        };
        let rings: Vec<u64> = s.rings.values().copied().collect();
        for ring in rings {
            self.end_stream(st, ring, reason);
        }
        let Some(s) = st.streams.get(&sid) else {
            return;
        };
        let watchers: Vec<Arc<SessionShared>> =
            s.watchers.values().filter_map(Weak::upgrade).collect();
        for w in watchers {
            let mut ws = w.state.lock().expect("session lock");
            let removed = ws.watches.remove(&sid);
            push_event_locked(
                &mut ws,
                &Event::End {
                    stream: sid,
                    reason: reason.into(),
                },
                self.config.max_session_event_bytes,
            );
            drop(ws);
            w.notify.notify_one();
            for backfill in removed.iter().flat_map(|w| &w.backfills) {
                self.cancel_demand(st, backfill.demand);
            }
        }
        if let Some(d) = st.streams.get_mut(&sid).and_then(|s| s.live_demand.take()) {
            st.forget_demand(d);
        }
        self.drop_stream(st, sid, reason);
    }

    /// Forgets a stream, with its filtered rings, or one filtered ring. `reason` is what
    /// watched lists are told.
    fn drop_stream(&self, st: &mut State, sid: u64, reason: &str) {
        let Some(s) = st.streams.remove(&sid) else {
            return;
        };
        if s.filtered.is_none() && !st.listing.is_empty() {
            st.list_changes.push(ListChange {
                labels: s.labels.clone(),
                change: Err(StreamRemoved {
                    stream: sid,
                    reason: reason.into(),
                }),
            });
        }
        if let Some(d) = s.live_demand {
            st.forget_demand(d);
        }
        match s.filtered {
            Some((parent, filter)) => {
                if let Some(p) = st.streams.get_mut(&parent) {
                    p.rings.remove(&filter);
                }
                self.metrics.filtered_rings.dec();
            }
            None => {
                if st.by_labels.get(&s.labels) == Some(&sid) {
                    st.by_labels.remove(&s.labels);
                }
                self.metrics.streams.dec();
                for ring in s.rings.into_values() {
                    self.drop_stream(st, ring, reason);
                }
            }
        }
    }

    /// A fresh entry for stream (or filtered ring) `id`.
    fn stream_state(
        &self,
        id: u64,
        labels: Labels,
        agent: Option<(u64, u64)>,
        filtered: Option<(u64, LineFilter)>,
    ) -> StreamState {
        StreamState {
            labels,
            agent,
            live: Arc::new(LiveStream {
                id,
                ring: Mutex::new(Ring::new(self.config.ring_bytes)),
                watchers: Mutex::new(Vec::new()),
                metrics: self.metrics.clone(),
                budget_bytes: self.config.memory_budget_bytes,
                delivered: Mutex::new(HashMap::new()),
            }),
            live_demand: None,
            watchers: HashMap::new(),
            generation: 0,
            filtered,
            rings: HashMap::new(),
        }
    }

    /// The filtered ring of stream `sid` for `filter`, made on first use; its id.
    fn filtered_ring(&self, st: &mut State, sid: u64, filter: LineFilter) -> Option<u64> {
        let s = st.streams.get(&sid)?;
        if let Some(&id) = s.rings.get(&filter) {
            return Some(id);
        }
        let (labels, agent) = (s.labels.clone(), s.agent);
        let id = st.stream_id();
        let ring = self.stream_state(id, labels, agent, Some((sid, filter.clone())));
        st.streams.insert(id, ring);
        st.streams
            .get_mut(&sid)
            .expect("present")
            .rings
            .insert(filter, id);
        self.metrics.filtered_rings.inc();
        Some(id)
    }

    /// The agent could not serve a demand.
    ///
    /// A filtered ring whose demand the agent refuses as a bad request (a line filter it cannot
    /// serve) ends for its watchers with `end` `refused`, rather than being asked again. Only
    /// the connection's own demands are looked at: a demand it was never given is a violation
    /// (one that ended meanwhile is ignored).
    pub fn open_failed(
        self: &Arc<Self>,
        agent: u64,
        demand: u64,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), AgentViolation> {
        tracing::debug!(agent, demand, ?code, message, "agent refused demand");
        {
            let mut st = self.lock();
            if st.demands.get(&demand).is_none_or(|d| d.agent != agent) {
                return match st.unresolved(agent, demand) {
                    Unresolved::Gone => Ok(()),
                    Unresolved::Violation(v) => Err(v),
                };
            }
            if code == ErrorCode::BadRequest
                && let Some(DemandEntry {
                    target: DemandTarget::Live(id),
                    ..
                }) = st.demands.get(&demand)
                && let Some(s) = st.streams.get(id)
                && s.filtered.is_some()
                && s.live_demand == Some(demand)
            {
                let id = *id;
                st.forget_demand(demand);
                if let Some(s) = st.streams.get_mut(&id) {
                    s.live_demand = None;
                }
                self.end_stream(&mut st, id, "refused");
                return Ok(());
            }
        }
        self.demand_finished(agent, demand);
        Ok(())
    }

    /// Where the data of demand `demand`, presented by `agent`'s connection on a new data
    /// stream, goes, and the flag that says when to stop. Only that connection's demands are
    /// looked at, and each accepts one data stream.
    pub fn resolve(
        &self,
        agent: u64,
        demand: u64,
    ) -> Result<(DemandSink, Arc<AtomicBool>), Unresolved> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(entry) = st.demands.get_mut(&demand).filter(|e| e.agent == agent) else {
            return Err(st.unresolved(agent, demand));
        };
        if entry.claimed {
            return Err(Unresolved::Violation(AgentViolation::DuplicateDataStream));
        }
        entry.claimed = true;
        let cancelled = entry.cancelled.clone();
        let sink = match &entry.target {
            DemandTarget::Live(sid) => {
                let sid = *sid;
                st.streams
                    .get(&sid)
                    .map(|s| DemandSink::Live(s.live.clone()))
            }
            DemandTarget::Backfill {
                stream,
                session,
                tx,
            } => session.upgrade().map(|session| DemandSink::Backfill {
                stream: *stream,
                tx: tx.clone(),
                session,
            }),
        };
        match sink {
            Some(sink) => Ok((sink, cancelled)),
            None => {
                // Its stream or watcher went meanwhile.
                st.forget_demand(demand);
                Err(Unresolved::Gone)
            }
        }
    }

    /// The live demands agent `agent` serves, each with what every watcher of its ring has been
    /// handed ([`LiveStream::ack_point`]): what the relay acknowledges (`ack`).
    pub fn acks(&self, agent: u64) -> Vec<(u64, SeqPos)> {
        let st = self.lock();
        let Some(link) = st.agents.get(&agent) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &(sid, _) in link.streams.values() {
            let Some(s) = st.streams.get(&sid) else {
                continue;
            };
            for id in std::iter::once(sid).chain(s.rings.values().copied()) {
                if let Some(r) = st.streams.get(&id)
                    && r.agent.is_some_and(|(a, _)| a == agent)
                    && let Some(demand) = r.live_demand
                    && let Some(at) = r.live.ack_point()
                {
                    out.push((demand, at));
                }
            }
        }
        out
    }

    /// A demand's data stream ended (finished, reset or failed). A live demand that ends while
    /// its stream is still watched is opened again after a second, resuming where the ring
    /// ended. Only `agent`'s own demands are looked at.
    pub fn demand_finished(self: &Arc<Self>, agent: u64, demand: u64) {
        let mut st = self.lock();
        if st.demands.get(&demand).is_none_or(|d| d.agent != agent) {
            return;
        }
        match st.forget_demand(demand) {
            Some(DemandTarget::Live(sid)) => {
                let Some(s) = st.streams.get_mut(&sid) else {
                    return;
                };
                if s.live_demand != Some(demand) {
                    return;
                }
                s.live_demand = None;
                if s.watchers.is_empty() || s.agent.is_none() {
                    return;
                }
                let hub = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Some(hub) = hub.upgrade() {
                        hub.reopen(sid);
                    }
                });
            }
            Some(DemandTarget::Backfill { session, .. }) => {
                // Dropping the sender ends the watcher's backfill once it is drained.
                if let Some(s) = session.upgrade() {
                    s.notify.notify_one();
                }
            }
            None => {}
        }
    }

    fn reopen(&self, sid: u64) {
        let mut st = self.lock();
        let Some(s) = st.streams.get(&sid) else {
            return;
        };
        if s.live_demand.is_some() || s.watchers.is_empty() || s.agent.is_none() {
            return;
        }
        let resume = s.resume_demand();
        self.open_live(&mut st, sid, resume);
    }

    fn send_agent(&self, st: &State, agent: u64, msg: RelayMsg) {
        if let Some(link) = st.agents.get(&agent)
            && link.tx.try_send(msg).is_err()
        {
            // Policy when full: reset the connection; the agent reconnects and the relay
            // re-sends every demand it still has.
            self.metrics.agent_messages_dropped.inc();
            tracing::warn!(agent, "agent control queue full; resetting the connection");
            link.reset.notify_one();
        }
    }

    fn open_live(&self, st: &mut State, sid: u64, demand_spec: Demand) {
        let Some(at) = st.streams.get(&sid).and_then(|s| s.agent) else {
            return;
        };
        let demand = self.open(st, at, sid, DemandTarget::Live(sid), demand_spec);
        st.streams.get_mut(&sid).expect("present").live_demand = demand;
    }

    /// Whether one more demand at the agent serving stream `sid` would pass a cap (counted
    /// when it would). Only demands a subscription asks for are capped: a watched ring that
    /// is re-opened (its agent came back, its demand ended) replaces a demand it had.
    fn cap_hit(&self, st: &State, sid: u64) -> Option<CapHit> {
        let (agent, _) = st.streams.get(&sid)?.agent?;
        let link = st.agents.get(&agent)?;
        let hit = if link.demands_open >= self.config.max_demands_per_agent {
            CapHit::PerAgent
        } else if st.demands_per_org.get(&link.org).copied().unwrap_or(0)
            >= self.config.max_demands_per_org
        {
            CapHit::PerOrg
        } else {
            return None;
        };
        self.metrics.limit_hit(hit.limit());
        tracing::debug!(agent, limit = hit.limit(), "demand refused by a cap");
        Some(hit)
    }

    /// Registers a demand feeding `target` and sends its `open` to the agent that has the
    /// stream (`at`: agent, and the agent's own id of the stream); batches will carry
    /// `stream_ref`. `None` if the agent is gone.
    fn open(
        &self,
        st: &mut State,
        (agent, local): (u64, u64),
        stream_ref: u64,
        target: DemandTarget,
        demand_spec: Demand,
    ) -> Option<u64> {
        let demand = st.add_demand(agent, target)?;
        self.metrics.demands_opened.inc();
        self.send_agent(
            st,
            agent,
            RelayMsg::Open {
                demand,
                stream: local,
                stream_ref,
                demand_spec,
            },
        );
        Some(demand)
    }

    // ---- sessions --------------------------------------------------------------------------

    /// Registers a session, unless its org already holds the most sessions allowed.
    pub fn add_session(
        &self,
        org: &str,
        claims: Option<Arc<Claims>>,
    ) -> Result<Arc<SessionShared>, Refusal> {
        let mut st = self.lock();
        let count = st.sessions_per_org.entry(org.to_owned()).or_default();
        if *count >= self.config.max_sessions_per_org {
            self.metrics.limit_hit("sessions_per_org");
            return Err(Refusal {
                code: ErrorCode::LimitExceeded,
                message: format!(
                    "org `{org}` already holds {} sessions, the most allowed",
                    self.config.max_sessions_per_org
                ),
            });
        }
        *count += 1;
        let id = st.id();
        let s = Arc::new(SessionShared {
            id,
            org: org.into(),
            claims,
            notify: Notify::new(),
            state: Mutex::new(SessionState::default()),
        });
        st.sessions.insert(id, Arc::downgrade(&s));
        self.metrics.sessions_connected.inc();
        Ok(s)
    }

    /// Forgets a session and everything it watched.
    pub fn remove_session(self: &Arc<Self>, session: &Arc<SessionShared>) {
        let mut st = self.lock();
        if st.sessions.remove(&session.id).is_none() {
            return;
        }
        st.listing.remove(&session.id);
        if let Some(n) = st.sessions_per_org.get_mut(&session.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.sessions_per_org.remove(&session.org);
            }
        }
        self.metrics.sessions_connected.dec();
        let watched: Vec<(u64, Watch)> = {
            let mut ss = session.state.lock().expect("session lock");
            ss.subs.clear();
            ss.lists.clear();
            ss.watches.drain().collect()
        };
        for (key, watch) in watched {
            self.remove_watcher(&mut st, key, session.id, watch);
        }
    }

    /// Lists the streams of the session's org matching `selector`.
    pub fn list(&self, session: &SessionShared, selector: &Selector) -> Vec<StreamEntry> {
        let st = self.lock();
        Self::matching(&st, session, selector)
    }

    fn matching(st: &State, session: &SessionShared, selector: &Selector) -> Vec<StreamEntry> {
        let mut out: Vec<StreamEntry> = st
            .streams
            .iter()
            .filter(|(_, s)| {
                s.filtered.is_none() && session.may_read(&s.labels) && selector.matches(&s.labels)
            })
            .map(|(id, s)| entry(*id, s))
            .collect();
        out.sort_by_key(|e| e.stream);
        out
    }

    /// Answers a `list` like [`Hub::list`] (the `streams` event, queued here so that no
    /// change can overtake it) and keeps the list open under `id`: changes come as `catalog`
    /// events until `unsubscribe` names `id` (or the session ends).
    pub fn watch_list(
        &self,
        session: &Arc<SessionShared>,
        id: &str,
        selector: Selector,
    ) -> Result<(), Refusal> {
        let mut st = self.lock();
        let mut ss = session.state.lock().expect("session lock");
        self.admit_subscription(&ss, id)?;
        let streams = Self::matching(&st, session, &selector);
        ss.lists.insert(id.to_owned(), selector);
        push_event_locked(
            &mut ss,
            &Event::Streams {
                id: Some(id.to_owned()),
                streams,
            },
            self.config.max_session_event_bytes,
        );
        drop(ss);
        session.notify.notify_one();
        st.listing.insert(session.id, Arc::downgrade(session));
        Ok(())
    }

    /// Whether a session may add a subscription (or watched list) under `id`.
    fn admit_subscription(&self, ss: &SessionState, id: &str) -> Result<(), Refusal> {
        if ss.id_in_use(id) {
            return Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!("subscription id `{id}` is already in use"),
            });
        }
        if ss.subscriptions() >= self.config.max_subscriptions_per_session {
            self.metrics.limit_hit("subscriptions_per_session");
            return Err(Refusal {
                code: ErrorCode::LimitExceeded,
                message: format!(
                    "at most {} subscriptions per session",
                    self.config.max_subscriptions_per_session
                ),
            });
        }
        Ok(())
    }

    /// Adds a standing subscription and attaches every matching stream.
    pub fn subscribe(
        self: &Arc<Self>,
        session: &Arc<SessionShared>,
        id: &str,
        selector: Selector,
        demand: Demand,
    ) -> Result<Option<&'static str>, Refusal> {
        let mut st = self.lock();
        {
            let mut ss = session.state.lock().expect("session lock");
            self.admit_subscription(&ss, id)?;
            ss.subs.insert(
                id.to_owned(),
                SubSpec {
                    selector: selector.clone(),
                    demand: demand.clone(),
                },
            );
            push_event_locked(
                &mut ss,
                &Event::Subscribed { id: id.to_owned() },
                self.config.max_session_event_bytes,
            );
        }
        let mut matching: Vec<u64> = st
            .streams
            .iter()
            .filter(|(_, s)| {
                s.filtered.is_none() && session.may_read(&s.labels) && selector.matches(&s.labels)
            })
            .map(|(sid, _)| *sid)
            .collect();
        matching.sort_unstable();
        let mut capped = None;
        for sid in matching {
            if let Some(hit) = self.add_watch(&mut st, session, sid, id, &demand) {
                capped.get_or_insert(hit.limit());
            }
        }
        session.notify.notify_one();
        Ok(capped)
    }

    /// Attaches stream `sid` to subscription `sub` of `session`. A watch that needs a new
    /// demand at the stream's agent beyond a cap is not added: the session gets `end`
    /// `demand_limit` for it (or, for a further subscription of a ring it already reads, an
    /// `error` saying its backlog was refused), and the cap is returned.
    fn add_watch(
        &self,
        st: &mut State,
        session: &Arc<SessionShared>,
        sid: u64,
        sub: &str,
        demand: &Demand,
    ) -> Option<CapHit> {
        let s = st.streams.get(&sid)?;
        if !demand.follow {
            let (live, labels) = (s.live.clone(), s.labels.clone());
            return self.add_private_watch(st, session, sid, live, labels, sub, demand);
        }
        // A line filter: the stream's ring for that filter, shared by whoever asks for it,
        // and from here on served like the stream's own ring under its id.
        let sid = match LineFilter::of(demand) {
            Some(filter) => self.filtered_ring(st, sid, filter)?,
            None => sid,
        };
        let s = st.streams.get(&sid).expect("present");
        let labels = s.labels.clone();
        let live = s.live.clone();
        let has_agent = s.agent.is_some();
        let live_demand = s.live_demand;
        let mut ss = session.state.lock().expect("session lock");
        push_event_locked(
            &mut ss,
            &Event::Stream {
                id: sub.to_owned(),
                stream: sid,
                labels,
            },
            self.config.max_session_event_bytes,
        );
        session.notify.notify_one();
        let wants_backlog =
            demand.tail.unwrap_or(0) > 0 || demand.since_ns.is_some() || demand.since_seq.is_some();
        if let Some(w) = ss.watches.get_mut(&sid) {
            // Already watched through another subscription: this one reads the same ring, and
            // gets its own backlog up to where the session's reading of the ring stands.
            w.subs.insert(sub.to_owned());
            let until = w.cursor.last_end.filter(|_| wants_backlog)?;
            if let Some(hit) = self.cap_hit(st, sid) {
                push_event_locked(
                    &mut ss,
                    &Event::Error {
                        code: ErrorCode::LimitExceeded,
                        message: format!(
                            "the backlog of stream {sid} was refused: {}; the subscription \
                             reads the stream from here on",
                            self.cap_message(hit)
                        ),
                        id: Some(sub.to_owned()),
                    },
                    self.config.max_session_event_bytes,
                );
                return Some(hit);
            }
            let w = ss.watches.get_mut(&sid).expect("present");
            if let Some((_, backfill)) = self.open_for_watcher(
                st,
                session,
                sid,
                sid,
                Demand {
                    until: Some(until),
                    follow: false,
                    ..demand.clone()
                },
            ) {
                w.backfills.push_back(backfill);
            }
            return None;
        }
        let (cursor, join) = match live_demand {
            None => {
                // First watcher: the live demand itself carries the backlog.
                let cursor = live.ring.lock().expect("ring lock").cursor_at_end();
                (cursor, None)
            }
            Some(_) if !wants_backlog => {
                (live.ring.lock().expect("ring lock").cursor_at_end(), None)
            }
            Some(_) => {
                let ring = live.ring.lock().expect("ring lock");
                match ring.last_end() {
                    // Nothing received yet: share what the live demand is about to send.
                    None => (ring.cursor_at_start(), None),
                    Some(join) => (ring.cursor_at_end(), Some(join)),
                }
            }
        };
        let needs_demand = join.is_some() || (live_demand.is_none() && has_agent);
        if needs_demand && let Some(hit) = self.cap_hit(st, sid) {
            push_event_locked(
                &mut ss,
                &Event::End {
                    stream: sid,
                    reason: "demand_limit".into(),
                },
                self.config.max_session_event_bytes,
            );
            drop(ss);
            // A filtered ring made for this watch alone goes again.
            if st.streams.get(&sid).is_some_and(|s| s.filtered.is_some()) && !st.in_use(sid) {
                self.drop_stream(st, sid, "unwatched");
            }
            return Some(hit);
        }
        let backfill = join.and_then(|join| {
            self.open_for_watcher(
                st,
                session,
                sid,
                sid,
                Demand {
                    until: Some(join),
                    follow: false,
                    ..demand.clone()
                },
            )
        });
        let resume = if backfill.is_some() {
            None
        } else {
            demand.since_seq
        };
        live.track(session.id, cursor.last_end);
        ss.watches.insert(
            sid,
            Watch {
                stream: live.clone(),
                cursor,
                backfills: backfill.map(|(_, b)| b).into_iter().collect(),
                private_demand: None,
                resume,
                subs: BTreeSet::from([sub.to_owned()]),
            },
        );
        drop(ss);
        live.watchers
            .lock()
            .expect("watchers lock")
            .push(session.clone());
        let s = st.streams.get_mut(&sid).expect("present");
        s.watchers.insert(session.id, Arc::downgrade(session));
        s.generation += 1;
        if live_demand.is_none() && has_agent {
            self.open_live(
                st,
                sid,
                Demand {
                    follow: true,
                    ..demand.clone()
                },
            );
        }
        None
    }

    /// What a session is told about a cap.
    fn cap_message(&self, hit: CapHit) -> String {
        match hit {
            CapHit::PerAgent => format!(
                "the stream's agent already serves {} demands, the most allowed",
                self.config.max_demands_per_agent
            ),
            CapHit::PerOrg => format!(
                "the org's agents already serve {} demands, the most allowed",
                self.config.max_demands_per_org
            ),
        }
    }

    /// A one-off read (the backlog as the agent has it now, then `end`): a demand of the
    /// subscription's own, delivered through a bounded per-watch queue that slows the agent
    /// rather than drop, under an id of its own so the session tells its data and events from
    /// any other watch of the stream. It does not keep the shared stream open.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, which has every piece at hand"
    )]
    fn add_private_watch(
        &self,
        st: &mut State,
        session: &Arc<SessionShared>,
        sid: u64,
        live: Arc<LiveStream>,
        labels: Labels,
        sub: &str,
        demand: &Demand,
    ) -> Option<CapHit> {
        let view = st.stream_id();
        let capped = self.cap_hit(st, sid);
        let opened = match capped {
            Some(_) => None,
            None => self.open_for_watcher(
                st,
                session,
                sid,
                view,
                Demand {
                    until: None,
                    ..demand.clone()
                },
            ),
        };
        let mut ss = session.state.lock().expect("session lock");
        push_event_locked(
            &mut ss,
            &Event::Stream {
                id: sub.to_owned(),
                stream: view,
                labels,
            },
            self.config.max_session_event_bytes,
        );
        match opened {
            None => push_event_locked(
                &mut ss,
                &Event::End {
                    stream: view,
                    reason: if capped.is_some() {
                        "demand_limit"
                    } else {
                        "agent_unavailable"
                    }
                    .into(),
                },
                self.config.max_session_event_bytes,
            ),
            Some((demand, backfill)) => {
                let cursor = live.ring.lock().expect("ring lock").cursor_at_end();
                ss.watches.insert(
                    view,
                    Watch {
                        stream: live,
                        cursor,
                        backfills: VecDeque::from([backfill]),
                        private_demand: Some(demand),
                        resume: None,
                        subs: BTreeSet::from([sub.to_owned()]),
                    },
                );
            }
        }
        drop(ss);
        session.notify.notify_one();
        capped
    }

    /// Opens, at the stream's agent, a demand served for one watch alone, its batches stamped
    /// `stream_ref`; `None` when the agent is away. Returns the demand's id and its queue.
    fn open_for_watcher(
        &self,
        st: &mut State,
        session: &Arc<SessionShared>,
        sid: u64,
        stream_ref: u64,
        demand_spec: Demand,
    ) -> Option<(u64, Backfill)> {
        let at = st.streams.get(&sid).and_then(|s| s.agent)?;
        let (tx, rx) = mpsc::channel(self.config.backfill_batches.max(1));
        let resume = demand_spec.since_seq;
        let target = DemandTarget::Backfill {
            stream: stream_ref,
            session: Arc::downgrade(session),
            tx,
        };
        let demand = self.open(st, at, stream_ref, target, demand_spec)?;
        Some((demand, Backfill { demand, rx, resume }))
    }

    /// Removes a subscription; streams no longer watched linger, then are cancelled.
    pub fn unsubscribe(self: &Arc<Self>, session: &Arc<SessionShared>, id: &str) -> bool {
        let mut st = self.lock();
        let emptied: Vec<(u64, Watch)> = {
            let mut ss = session.state.lock().expect("session lock");
            if ss.lists.remove(id).is_some() {
                if ss.lists.is_empty() {
                    st.listing.remove(&session.id);
                }
                push_event_locked(
                    &mut ss,
                    &Event::Unsubscribed { id: id.to_owned() },
                    self.config.max_session_event_bytes,
                );
                drop(ss);
                session.notify.notify_one();
                return true;
            }
            if ss.subs.remove(id).is_none() {
                return false;
            }
            let mut emptied = Vec::new();
            for (key, w) in ss.watches.iter_mut() {
                if w.subs.remove(id) && w.subs.is_empty() {
                    emptied.push(*key);
                }
            }
            let emptied = emptied
                .into_iter()
                .filter_map(|key| ss.watches.remove(&key).map(|w| (key, w)))
                .collect();
            push_event_locked(
                &mut ss,
                &Event::Unsubscribed { id: id.to_owned() },
                self.config.max_session_event_bytes,
            );
            emptied
        };
        for (key, watch) in emptied {
            self.remove_watcher(&mut st, key, session.id, watch);
        }
        session.notify.notify_one();
        true
    }

    /// Forgets a demand the relay no longer wants and tells its agent (a finished one is
    /// already forgotten).
    fn cancel_demand(&self, st: &mut State, demand: u64) {
        if let Some(agent) = st.demands.get(&demand).map(|d| d.agent) {
            st.forget_demand(demand);
            self.send_agent(st, agent, RelayMsg::Cancel { demand });
        }
    }

    /// Ends a session's watch `key`: the demands served for it alone (its backfills still
    /// arriving, a private watch's own demand) are cancelled at once; the shared ring (`key` is
    /// then the stream id) lingers once its last watcher left.
    fn remove_watcher(self: &Arc<Self>, st: &mut State, key: u64, session: u64, watch: Watch) {
        for backfill in &watch.backfills {
            self.cancel_demand(st, backfill.demand);
        }
        if watch.private_demand.is_some() {
            // It never held the stream open.
            return;
        }
        let sid = key;
        let Some(s) = st.streams.get_mut(&sid) else {
            return;
        };
        if s.watchers.remove(&session).is_none() {
            return;
        }
        s.live
            .watchers
            .lock()
            .expect("watchers lock")
            .retain(|w| w.id != session);
        s.live.untrack(session);
        s.generation += 1;
        if !s.watchers.is_empty() {
            return;
        }
        if s.agent.is_none() {
            // Its agent is gone: nothing to linger for. A stream stays while one of its
            // filtered rings is watched; a filtered ring's stream goes with it if unwatched.
            let parent = s.filtered.as_ref().map(|(p, _)| *p);
            if !st.in_use(sid) {
                self.drop_stream(st, sid, "agent_disconnected");
            }
            if let Some(p) = parent
                && !st.in_use(p)
                && st.streams.get(&p).is_some_and(|p| p.agent.is_none())
            {
                self.drop_stream(st, p, "agent_disconnected");
            }
            return;
        }
        let generation = s.generation;
        let hub = Arc::downgrade(self);
        let linger = self.config.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            if let Some(hub) = hub.upgrade() {
                hub.linger_expired(sid, generation);
            }
        });
    }

    fn linger_expired(&self, sid: u64, generation: u64) {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&sid) else {
            return;
        };
        if s.generation != generation || !s.watchers.is_empty() {
            return;
        }
        let demand = s.live_demand.take();
        let agent = s.agent;
        let filtered = s.filtered.is_some();
        s.live.reset_ring(self.config.ring_bytes);
        if let Some(d) = demand {
            st.forget_demand(d);
            if let Some((agent, _)) = agent {
                self.send_agent(&st, agent, RelayMsg::Cancel { demand: d });
            }
        }
        if filtered {
            // Made for its watchers; the next one to ask makes it again.
            self.drop_stream(&mut st, sid, "unwatched");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logrelay_wire::control::StreamInfo;

    impl Hub {
        /// Resolves a demand for the connection it was issued to.
        fn resolve_any(&self, demand: u64) -> Option<(DemandSink, Arc<AtomicBool>)> {
            let agent = self.lock().demands.get(&demand)?.agent;
            self.resolve(agent, demand).ok()
        }
    }

    fn hub() -> Arc<Hub> {
        hub_with(|_| {})
    }

    fn hub_with(tweak: impl FnOnce(&mut HubConfig)) -> Arc<Hub> {
        let mut config = HubConfig {
            ring_bytes: 1 << 20,
            linger: Duration::from_secs(5),
            max_subscriptions_per_session: 4,
            backfill_batches: 4,
            max_session_event_bytes: 1 << 20,
            memory_budget_bytes: 1 << 30,
            max_sessions_per_org: 3,
            max_demands_per_agent: 100,
            max_demands_per_org: 100,
            max_streams_per_agent: 100,
            max_streams_per_org: 100,
            max_label_bytes_per_stream: 256,
            max_label_bytes_per_agent: 4096,
        };
        tweak(&mut config);
        Hub::new(config, Arc::new(RelayMetrics::new()))
    }

    /// An agent of `org` announcing `streams`; its control queue.
    fn agent_of(hub: &Hub, org: &str, streams: Vec<StreamInfo>) -> (u64, mpsc::Receiver<RelayMsg>) {
        let (tx, rx) = mpsc::channel(64);
        let agent = hub.add_agent(org, "c1", tx, Arc::new(Notify::new()));
        assert!(hub.catalog_add(agent, streams).is_empty());
        (agent, rx)
    }

    #[tokio::test]
    async fn an_agent_finds_only_the_demands_of_its_own_connection() {
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
                reason: "container_removed".into(),
            }],
        );
        // The victim's demand is untouched: its data stream is taken, once.
        assert!(rx.try_recv().is_err(), "no cancel, no re-open");
        let Ok((DemandSink::Live(live), _)) = hub.resolve(victim, demand) else {
            panic!("the victim's own demand resolves")
        };
        assert_eq!(live.id, stream_ref);
        assert_eq!(
            hub.resolve(victim, demand).map(drop),
            Err(Unresolved::Violation(AgentViolation::DuplicateDataStream))
        );
        assert!(
            s.state
                .lock()
                .unwrap()
                .events
                .iter()
                .all(|e| !e.contains(r#""event":"end""#)),
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

    #[tokio::test]
    async fn demands_beyond_a_cap_are_refused_with_a_named_end() {
        let hub = hub_with(|c| c.max_demands_per_agent = 2);
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
            .state
            .lock()
            .unwrap()
            .events
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
        let hub = hub_with(|c| c.max_demands_per_org = 1);
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

    #[tokio::test]
    async fn streams_beyond_a_cap_are_refused_by_limit_and_memory_follows() {
        let hub = hub_with(|c| {
            c.max_streams_per_agent = 3;
            c.max_label_bytes_per_stream = 64;
            c.max_label_bytes_per_agent = 1000;
            c.max_streams_per_org = 4;
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

    #[test]
    fn removal_reasons_are_codes() {
        assert_eq!(removal_reason("labels_changed"), "labels_changed");
        assert_eq!(removal_reason("pod_removed"), "pod_removed");
        for bad in ["", "<script>", "Removed", &"x".repeat(65)] {
            assert_eq!(removal_reason(bad), "container_removed");
        }
    }

    /// An agent of org `acme` announcing `streams`; its control queue.
    fn agent(hub: &Hub, streams: Vec<StreamInfo>) -> (u64, mpsc::Receiver<RelayMsg>) {
        let (tx, rx) = mpsc::channel(16);
        let agent = hub.add_agent("acme", "c1", tx, Arc::new(Notify::new()));
        hub.catalog_add(agent, streams);
        (agent, rx)
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
        Arc<Hub>,
        mpsc::Receiver<RelayMsg>,
        Arc<SessionShared>,
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

    #[tokio::test(start_paused = true)]
    async fn first_watcher_opens_and_last_one_cancels_after_the_linger() {
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
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(rx.try_recv().is_err(), "still lingering");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });
    }

    #[tokio::test]
    async fn org_comes_from_the_agent_and_sessions_see_only_their_org() {
        let hub = hub();
        let _agent = agent(&hub, vec![info(1, "p", "other")]);
        let mine = hub.add_session("acme", None).unwrap();
        let theirs = hub.add_session("other", None).unwrap();
        assert_eq!(hub.list(&mine, &Selector::default())[0].labels.org, "acme");
        assert!(hub.list(&theirs, &Selector::default()).is_empty());
    }

    /// The session's queued events, parsed, emptying the queue.
    fn take_events(s: &SessionShared) -> Vec<Event> {
        let mut st = s.state.lock().unwrap();
        st.event_bytes = 0;
        st.events
            .drain(..)
            .map(|e| serde_json::from_str(&e).unwrap())
            .collect()
    }

    /// `(stream, live)` added and `(stream, reason)` removed by a watch's catalog events.
    type Changes = (Vec<(u64, bool)>, Vec<(u64, String)>);

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

    #[tokio::test]
    async fn a_watched_list_tells_of_streams_that_come_go_and_change_liveness() {
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
            (vec![(p, false)], vec![(q, "agent_disconnected".into())])
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
                reason: "container_removed".into(),
            }],
        );
        assert_eq!(
            catalog_changes(&take_events(&s), "w"),
            (vec![], vec![(p, "container_removed".into())])
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

    #[tokio::test]
    async fn a_joining_watcher_gets_a_backfill_up_to_the_ring_end() {
        let (hub, mut rx, _first, live) = watched();
        let second = hub.add_session("acme", None).unwrap();
        hub.subscribe(&second, "b", sel("p"), follow(100)).unwrap();
        let (d2, r2, spec) = opened(&mut rx);
        assert_eq!(r2, live.id);
        assert_eq!(spec.until, Some(SeqPos { epoch: 3, seq: 40 }));
        assert!(!spec.follow);
        assert!(matches!(
            hub.resolve_any(d2),
            Some((DemandSink::Backfill { .. }, _))
        ));
        let st = second.state.lock().unwrap();
        assert_eq!(st.watches[&live.id].backfills.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_subscription_of_a_session_gets_its_own_backlog_filter_and_end() {
        let (hub, mut rx, s, live) = watched();
        // Read the ring, as the session's writer would.
        {
            let mut st = s.state.lock().unwrap();
            let w = st.watches.get_mut(&live.id).unwrap();
            assert_eq!(live.read(&mut w.cursor, usize::MAX).batches.len(), 1);
        }

        // A backlog of its own, up to what the session has had from the ring.
        hub.subscribe(&s, "tail", sel("p"), follow(100)).unwrap();
        let (_, stream_ref, spec) = opened(&mut rx);
        assert_eq!(stream_ref, live.id);
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
        assert!(errors != live.id && once != live.id && errors != once);
        {
            let st = s.state.lock().unwrap();
            assert_eq!(st.watches[&live.id].backfills.len(), 1);
            // The filter is a ring of its own (fed by its live demand), the one-off a demand.
            assert_eq!(st.watches[&errors].private_demand, None);
            assert_eq!(st.watches[&errors].stream.id, errors);
            assert!(st.watches[&once].private_demand.is_some());
            for (sub, id) in [("errors", errors), ("once", once)] {
                let event = format!(r#""event":"stream","id":"{sub}","stream":{id},"#);
                assert!(st.events.iter().any(|e| e.contains(&event)), "{event}");
            }
        }
        assert!(matches!(
            hub.resolve_any(filtered),
            Some((DemandSink::Live(l), _)) if l.id == errors
        ));

        // Leaving the filtered one cancels only its demand, after the linger; the stream's
        // ring stays watched.
        assert!(hub.unsubscribe(&s, "errors"));
        assert!(rx.try_recv().is_err(), "lingering");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            rx.try_recv().unwrap(),
            RelayMsg::Cancel { demand: filtered }
        );
        assert!(rx.try_recv().is_err());
        assert!(s.state.lock().unwrap().watches.contains_key(&live.id));
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

    #[tokio::test(start_paused = true)]
    async fn sessions_asking_for_the_same_filter_share_one_ring_and_one_demand() {
        let hub = hub();
        let (_, mut rx) = agent(&hub, vec![info(1, "p", "")]);
        let sessions: Vec<Arc<SessionShared>> = (0..3)
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
        assert_eq!(live.id, ring);
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
            Some((DemandSink::Backfill { stream, .. }, _)) if stream == ring
        ));

        // One push, every watcher reads the very same bytes from its own cursor.
        for (i, s) in sessions.iter().enumerate() {
            let mut st = s.state.lock().unwrap();
            let event = format!(r#""event":"stream","id":"e","stream":{ring},"#);
            assert!(st.events.iter().any(|e| e.contains(&event)), "{event}");
            let w = st.watches.get_mut(&ring).unwrap();
            let read = w.stream.read(&mut w.cursor, usize::MAX);
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
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand: other });
        assert!(rx.try_recv().is_err(), "still watched by the third session");
        assert!(hub.unsubscribe(&sessions[2], "e"));
        assert_eq!(
            rx.try_recv().unwrap(),
            RelayMsg::Cancel { demand: backfill },
            "its backfill, still arriving, is cancelled at once"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(rx.try_recv().is_err(), "lingering");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rx.try_recv().unwrap(), RelayMsg::Cancel { demand });
        assert_eq!(hub.metrics.filtered_rings.get(), 0);
        assert_eq!(
            hub.metrics.buffered_bytes.get(),
            0,
            "its bytes are released"
        );
    }

    #[tokio::test]
    async fn a_filtered_ring_resumes_after_a_reconnect_and_ends_if_its_filter_is_refused() {
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
        let st = s.state.lock().unwrap();
        assert!(!st.watches.contains_key(&ring));
        let end = format!(r#"{{"event":"end","stream":{ring},"reason":"refused"}}"#);
        assert!(st.events.iter().any(|e| *e == end), "{:?}", st.events);
        drop(st);
        assert_eq!(hub.metrics.filtered_rings.get(), 0);
        assert!(rx.try_recv().is_err());
        hub.remove_agent(agent2);
    }

    #[tokio::test]
    async fn a_watched_filtered_ring_keeps_its_stream_while_the_agent_is_away() {
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
        // Its last watcher leaving, with no agent to linger for, drops both at once.
        assert!(hub.unsubscribe(&s, "e"));
        assert!(hub.list(&s, &Selector::default()).is_empty());
        assert_eq!(
            (hub.metrics.filtered_rings.get(), hub.metrics.streams.get()),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn subscription_limit_is_enforced() {
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

    #[tokio::test]
    async fn removed_streams_end_for_their_watchers_and_reconnects_resume() {
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
                reason: "pod_removed".into(),
            }],
        );
        assert!(
            s.state
                .lock()
                .unwrap()
                .events
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
    fn the_agent_may_forget_what_every_watcher_was_handed() {
        let at = |epoch, seq| Some(SeqPos { epoch, seq });
        // Nothing received: nothing to acknowledge.
        assert_eq!(ack_point(None, None, [at(1, 5)]), None);
        // No watcher (lingering): everything received.
        assert_eq!(ack_point(at(1, 50), None, []), at(1, 50));
        // The slowest watcher decides.
        assert_eq!(
            ack_point(at(1, 50), None, [at(1, 40), at(1, 20)]),
            at(1, 20)
        );
        // A watcher that has had nothing yet holds everything back…
        assert_eq!(ack_point(at(1, 50), None, [at(1, 40), None]), None);
        // …unless the ring already evicted past it: it gets a gap for that part anyway.
        assert_eq!(
            ack_point(at(1, 50), at(1, 30), [at(1, 40), None]),
            at(1, 30)
        );
        assert_eq!(ack_point(at(1, 50), at(1, 30), [at(1, 10)]), at(1, 30));
        // A watcher still in the previous epoch has had none of the current one.
        assert_eq!(ack_point(at(2, 9), None, [at(1, 40)]), None);
        assert_eq!(ack_point(at(2, 9), at(2, 3), [at(1, 40)]), at(2, 3));
    }

    #[tokio::test]
    async fn live_demands_are_acknowledged_once_their_watchers_were_handed_the_lines() {
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
        live.delivered(s.id, Some(SeqPos { epoch: 3, seq: 10 }));
        assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 10 })]);
        // A second watcher joining at the end does not hold back what it never needed.
        let t = hub.add_session("acme", None).unwrap();
        hub.subscribe(&t, "a", sel("p"), follow(0)).unwrap();
        live.push(Bytes::from_static(b"y"), 5, SeqPos { epoch: 3, seq: 15 });
        assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 10 })]);
        live.delivered(s.id, Some(SeqPos { epoch: 3, seq: 15 }));
        live.delivered(t.id, Some(SeqPos { epoch: 3, seq: 15 }));
        assert_eq!(hub.acks(agent), [(demand, SeqPos { epoch: 3, seq: 15 })]);
        // Another agent's demands are not its to hear of.
        let (other, _rx) = self::agent(&hub, vec![info(1, "q", "")]);
        assert!(hub.acks(other).is_empty());
    }

    #[tokio::test]
    async fn a_resume_names_the_last_line_held_by_its_stamp_and_rank() {
        let (hub, mut rx, _s, live) = watched();
        let mut b = logrelay_wire::batch::BatchBuilder::new(live.id, 3, 40, 0, 0);
        for t in [5, 6, 6] {
            b.push(t, logrelay_wire::batch::LineFlags(0), b"x\n");
        }
        live.push(b.finish(), 3, SeqPos { epoch: 3, seq: 43 });
        hub.remove_agent(1);
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
}
