//! The hub's decisions, as a pure state machine: no tokio, no clock, no locks, no I/O.
//!
//! Every input is a method (an agent joined or left, its catalog changed, a session
//! subscribed, a demand's data stream started or ended, timers fired, …) that takes the time
//! `now` when it may arm a timer and a read-only [`RingView`] when it must know where a ring
//! or a session's reading of it stands. Nothing is done here: each input leaves [`Effect`]s,
//! which the shell ([`super::Hub`]) takes with [`Core::take_effects`] and carries out in order
//! (send to an agent, event to a session, place a session's cursor, …). The data path is not
//! an input: ingest pushes batches into the rings and session writers drain them without the
//! hub; the core only decides who reads which ring from where.
//!
//! * A stream exists while an agent announces it (or after its agent went away, while someone
//!   watches it). Its identity is its labels, so an agent that reconnects — or a relay that
//!   restarts — finds the same stream again and the relay re-sends its demands.
//! * The first watcher of a stream's ring makes the relay `open` it at its agent; the last one
//!   leaving makes it `cancel` after the linger ([`Timer::Linger`]).
//! * A watcher joining a live ring gets its own backfill (`tail`, `since`) up to the ring's end
//!   from the agent, then reads the ring from that point: no duplicate, no hole.
//! * A live subscription with a line filter watches a *filtered ring* of the stream: one per
//!   (stream, filter), filed beside the streams under an id of its own, and otherwise served
//!   exactly like a stream's ring.
//! * Every id an agent presents is looked up only among its own connection's.
//!
//! * Another relay leasing a stream (the backplane, issue #14) is a watcher that is not a
//!   session ([`Core::remote_lease`]): it opens the stream's live demand like a first watcher,
//!   and its end lets the demand linger like the last watcher leaving.

pub mod backfill;
mod catalog;
mod demands;
mod remote;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use logrelay_wire::control::{
    Demand, ErrorCode, LineMark, RelayMsg, SeqPos, StreamGone, StreamInfo,
};
use logrelay_wire::labels::Labels;
use logrelay_wire::reason::{EndReason, PauseReason};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, StreamEntry, StreamRemoved};

use crate::auth::{Claims, authorize};
use crate::backplane::subject::{AgentTokens, Token};
use crate::ids::{AgentId, AgentStreamId, DemandId, SessionId, StreamId, SubId};
use crate::ring::{Cursor, Ring};

/// A point in the relay's time, in milliseconds since its hub started. The core never reads a
/// clock: inputs that may arm a timer are given `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The hub's start.
    pub const ZERO: Time = Time(0);

    /// `elapsed` after the hub's start.
    pub fn after_start(elapsed: Duration) -> Time {
        Time(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// Time since the hub's start.
    pub fn since_start(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// `d` later.
    pub fn plus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// The decisions' settings (the hub's data path has its own, [`super::HubConfig`]).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long a ring stays open at its agent after its last watcher left.
    pub linger: Duration,
    /// How long after a live demand ended (its stream still watched) it is opened again.
    pub reopen_after: Duration,
    /// Subscriptions (and watched lists) one session may hold.
    pub max_subscriptions_per_session: usize,
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

/// What the core reads of the rings, and of the sessions' reading of them: a narrow,
/// read-only port. The shell answers from the live rings and the sessions' cursors; the
/// simulation from its model.
pub trait RingView {
    /// Cursors at the oldest batch ring `ring` holds and at its end, taken together. `None`
    /// for a ring the shell has not made yet (this input made it: it is empty).
    fn ends(&self, ring: StreamId) -> Option<(Cursor, Cursor)>;
    /// Where a live demand that resumes ring `ring` starts (see [`Resume`]).
    fn resume(&self, ring: StreamId) -> Resume;
    /// What every watcher of ring `ring` has been handed, in its current epoch (`ack`).
    fn ack_point(&self, ring: StreamId) -> Option<SeqPos>;
    /// The end of what `session` has read of its watch `key`'s ring; `None` when the session
    /// holds no such watch (yet: this input made it).
    fn read_to(&self, session: SessionId, key: StreamId) -> Option<Option<SeqPos>>;
}

/// Where a ring ended, for the live demand that resumes it (after a reconnect, or when the
/// agent finished the previous one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// The end of the last batch received.
    pub since_seq: Option<SeqPos>,
    /// Just after the newest line held: an agent that lost the epoch starts the new one with
    /// the lines written since, rather than at the end of the file.
    pub since_ns: Option<i64>,
    /// The newest line held (`after_line`).
    pub after_line: Option<LineMark>,
}

impl Resume {
    /// Where `ring` ended. Parses its newest batches, so it is for the rare resume, not the
    /// data path.
    pub fn of(ring: &Ring) -> Self {
        Self {
            since_seq: ring.last_end(),
            since_ns: ring.last_line_ns().map(|t| t.saturating_add(1)),
            after_line: ring.last_line_mark(),
        }
    }
}

/// What the shell does, in this order, after an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The effects that follow, up to the next `Cause`, attach a stream to subscription `sub`
    /// of `session`: the shell makes the demands they open children of that subscription's
    /// trace span.
    Cause {
        /// The session.
        session: SessionId,
        /// Its subscription.
        sub: SubId,
    },
    /// A message to an agent connection (`open`, `cancel`). Policy when its queue is full:
    /// the connection is reset; the agent reconnects and the relay re-sends its demands.
    ToAgent {
        /// The connection.
        agent: AgentId,
        /// The message.
        msg: RelayMsg,
    },
    /// Close an agent connection (its demand ids are used up): it reconnects, and the relay
    /// re-sends its demands.
    ResetAgent {
        /// The connection.
        agent: AgentId,
    },
    /// An event for a session, queued in order with its data; wakes its writer.
    ToSession {
        /// The session.
        session: SessionId,
        /// The event.
        event: Event,
    },
    /// Wake a session's writer: a demand serving one of its watches ended, so its queue closes
    /// once drained.
    Wake {
        /// The session.
        session: SessionId,
    },
    /// A ring appears: a stream's, or a filtered ring.
    RingOpened {
        /// Its id.
        ring: StreamId,
        /// What its stream carries (the lag histograms' label).
        kind: logrelay_wire::labels::StreamKind,
    },
    /// A ring lets its content go (its demand was cancelled after the linger).
    RingEmptied {
        /// Its id.
        ring: StreamId,
    },
    /// A ring is gone.
    RingClosed {
        /// Its id.
        ring: StreamId,
    },
    /// A session starts reading ring `ring` (its watch of that id) at `from`, after the
    /// batches of `backfill`, a demand served for it alone, if any.
    WatchRing {
        /// The session.
        session: SessionId,
        /// The ring, and the watch's id.
        ring: StreamId,
        /// Where its cursor starts.
        from: Cursor,
        /// A demand served for this watch alone, read before the ring.
        backfill: Option<DemandId>,
        /// The `since_seq` the backfill answers: whether the agent still held its epoch shows
        /// in its first batch.
        backfill_resume: Option<SeqPos>,
        /// The `since_seq` the next batch of the ring answers (no backfill: the live demand
        /// carries the subscription's).
        resume: Option<SeqPos>,
        /// Whether its batches number every line of the epoch (no line filter), so that a
        /// resume's position can be checked, not only its epoch.
        dense: bool,
    },
    /// A further demand served for a session's existing watch of `key` alone (another
    /// subscription's backlog), read after what the watch has queued and before the ring.
    Backfill {
        /// The session.
        session: SessionId,
        /// The watch.
        key: StreamId,
        /// The demand.
        demand: DemandId,
        /// The `since_seq` it answers.
        resume: Option<SeqPos>,
        /// Whether its batches number every line of the epoch (no line filter).
        dense: bool,
    },
    /// A one-off read: the session's watch `view` of stream `ring`, served by `demand` alone.
    WatchOnce {
        /// The session.
        session: SessionId,
        /// The watch's own id.
        view: StreamId,
        /// The demand.
        demand: DemandId,
        /// The `since_seq` it answers.
        resume: Option<SeqPos>,
        /// Whether its batches number every line of the epoch (no line filter).
        dense: bool,
    },
    /// A session stops watching `key`.
    Unwatch {
        /// The session.
        session: SessionId,
        /// The watch.
        key: StreamId,
        /// The ring it read, which stops waiting for it (`None`: a one-off read).
        ring: Option<StreamId>,
    },
    /// A live demand: its data stream feeds ring `ring`.
    LiveDemand {
        /// The demand.
        demand: DemandId,
        /// The ring.
        ring: StreamId,
    },
    /// A demand is over: its data stream stops at its next frame, and a watcher's queue it fed
    /// closes.
    DemandClosed {
        /// The demand.
        demand: DemandId,
    },
    /// A timer is armed: the shell's timer wakes at `at` at the latest ([`Core::timers_fired`]).
    ArmTimer {
        /// When.
        at: Time,
    },
    /// Want a stream of another relay's agent over the backplane: its batches feed ring
    /// `ring`, its owner's answers come back as [`Core::remote_state`].
    Want {
        /// The ring.
        ring: StreamId,
        /// The agent's tokens.
        agent: AgentTokens,
        /// The stream's token.
        stream: Token,
        /// What the watcher that made it wanted asked to read back: sent with the lease, so
        /// a live demand it opens at the agent reads it first.
        backlog: Option<crate::backplane::BackfillAsk>,
    },
    /// A watch of another relay's stream wants its backlog: fetched over the backplane from
    /// the ring of the relay holding the agent ([`backfill::select`]) and read by the watch
    /// before its ring, up to `ask.until` (unset: where this relay's ring starts, once the
    /// first batch or the owner's first answer tells).
    RemoteBackfill {
        /// The session.
        session: SessionId,
        /// The watch (and ring).
        key: StreamId,
        /// The agent's tokens.
        agent: AgentTokens,
        /// The stream's token.
        stream: Token,
        /// What is asked.
        ask: crate::backplane::BackfillAsk,
        /// The `since_seq` it answers.
        resume: Option<SeqPos>,
        /// Its batches number every line (no line filter): the resume's position is checked.
        dense: bool,
        /// The watch exists already (another subscription's backlog): read after what it has
        /// queued. Otherwise the [`Effect::WatchRing`] that follows reads it first.
        joined: bool,
        /// The ring is not wanted yet: where it starts is still to be learnt from this want.
        fresh: bool,
    },
    /// Release a wanted stream of another relay's agent.
    Release {
        /// The agent's token.
        agent: Token,
        /// The stream's token.
        stream: Token,
    },
    /// Something to count.
    Count(Count),
}

/// Where a wanted stream of another relay's agent stands, as its owner's answers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// The relay holding the agent answers: batches flow.
    Flowing,
    /// No relay holds the agent now (watchers: `paused` `agent_disconnected`).
    Away,
    /// The backplane is unreachable or the owner does not answer (watchers: `paused`
    /// `backplane_unavailable`).
    Unavailable,
}

/// A stream of another relay's agent, as this relay's core holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remote {
    agent: AgentTokens,
    stream: Token,
    /// The shared catalog lists it now (otherwise it is kept for its watchers only).
    in_catalog: bool,
    /// Wanted over the backplane now.
    wanted: bool,
    state: RemoteState,
}

/// A counter the shell increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `logrelay_relay_demands_opened_total`.
    DemandOpened,
    /// `logrelay_relay_limit_hits_total{limit}`.
    LimitHit(&'static str),
}

/// The core's gauges, read after each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gauges {
    /// Agent connections.
    pub agents: usize,
    /// Sessions.
    pub sessions: usize,
    /// Streams (filtered rings not included).
    pub streams: usize,
    /// Filtered rings.
    pub filtered_rings: usize,
    /// Demands open.
    pub demands_open: usize,
    /// What the announced streams hold, estimated (`logrelay_relay_catalog_bytes`).
    pub catalog_bytes: i64,
}

/// A timer of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A ring's last watcher left: cancel its demand unless one came back.
    Linger(StreamId),
    /// A watched ring's live demand ended: open it again.
    Reopen(StreamId),
}

/// Where the data of a demand goes, as [`Core::resolve`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A ring (a live demand).
    Ring(StreamId),
    /// One watch of one session (a backfill, or a one-off read's demand).
    Watch {
        /// The session.
        session: SessionId,
        /// The watch (the id its batches carry).
        key: StreamId,
    },
    /// Another relay's backfill that the ring here does not reach back to: a one-off read of
    /// the agent's files, whose batches are forwarded in the backplane's reply
    /// ([`Core::open_fetch`]). No session watches it; the shell holds its queue.
    Fetch,
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
pub enum CapHit {
    /// `--max-demands-per-agent`.
    PerAgent,
    /// `--max-demands-per-org`.
    PerOrg,
}

impl CapHit {
    /// The limit's name (metric label, audit reason).
    pub fn limit(self) -> &'static str {
        match self {
            Self::PerAgent => "demands_per_agent",
            Self::PerOrg => "demands_per_org",
        }
    }
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

/// A refused session request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Code sent to the session.
    pub code: ErrorCode,
    /// Reason sent to the session.
    pub message: String,
}

/// Bytes the relay holds per announced stream besides its label values (two copies of them:
/// the stream's entry and the index by labels), estimated: its entry, ring and indexes.
pub const STREAM_OVERHEAD_BYTES: usize = 1024;

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
        + l.meta.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A line filter pushed down to the agent: sessions asking a stream for the same one share
/// its filtered ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// A stream as an agent announced it, or one of its filtered rings: a ring, its demand and its
/// watchers.
#[derive(Debug)]
struct RingState {
    labels: Labels,
    /// The connection serving it, and that connection's id of the stream.
    agent: Option<(AgentId, AgentStreamId)>,
    live_demand: Option<DemandId>,
    watchers: BTreeSet<SessionId>,
    /// For a filtered ring: the stream it filters, and the filter its demands push down to the
    /// agent. `None` for a stream as its agent announced it.
    filtered: Option<(StreamId, LineFilter)>,
    /// For a stream: its filtered rings, by filter.
    rings: BTreeMap<LineFilter, StreamId>,
    /// When the linger armed as its last watcher left ends.
    linger: Option<Time>,
    /// Another relay leases the stream (backplane): a watcher that is not a session, holding
    /// its live demand open like one. Only a stream's own ring, never a filtered one.
    leased: bool,
    /// A stream of an agent another relay holds (the shared catalog), fed over the backplane
    /// while wanted.
    remote: Option<Remote>,
}

impl RingState {
    fn new(labels: Labels, agent: Option<(AgentId, AgentStreamId)>) -> Self {
        Self {
            labels,
            agent,
            live_demand: None,
            watchers: BTreeSet::new(),
            filtered: None,
            rings: BTreeMap::new(),
            linger: None,
            leased: false,
            remote: None,
        }
    }

    /// Whether something holds its live demand open: a session watching it, or a remote
    /// lease.
    fn held(&self) -> bool {
        !self.watchers.is_empty() || self.leased
    }

    /// The live demand that resumes this ring where it ended, with its line filter.
    fn resume_demand(&self, at: Resume) -> Demand {
        let resume = Demand {
            since_seq: at.since_seq,
            since_ns: at.since_ns,
            after_line: at.after_line,
            follow: true,
            ..Demand::default()
        };
        match &self.filtered {
            Some((_, filter)) => filter.onto(resume),
            None => resume,
        }
    }

    fn entry(&self, id: StreamId) -> StreamEntry {
        StreamEntry {
            stream: id.get(),
            labels: self.labels.clone(),
            live: self.agent.is_some() || self.remote.is_some_and(|r| r.in_catalog),
        }
    }
}

#[derive(Debug)]
struct AgentState {
    org: Arc<str>,
    cluster: String,
    /// The streams this connection announced (and the relay took): its own id → the relay's
    /// stream id, and the stream's label bytes.
    streams: HashMap<AgentStreamId, (StreamId, usize)>,
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

impl AgentState {
    /// Whether `demand` is an id this connection was given (open or not any more).
    fn issued(&self, demand: DemandId) -> bool {
        demand.get() >> 32 == self.nonce && demand.get() & 0xffff_ffff < self.issued
    }
}

#[derive(Debug)]
struct DemandState {
    agent: AgentId,
    /// The agent's org (demands are counted per org).
    org: Arc<str>,
    /// A data stream was accepted for it (an agent serves a demand on one data stream).
    claimed: bool,
    target: Target,
}

/// A change to what `list` shows, for the sessions watching lists.
#[derive(Debug)]
struct ListChange {
    labels: Labels,
    /// The labels it had, for an entry whose labels changed in place: a watched list whose
    /// selector matched them and no longer matches is told it went (`labels_changed`).
    was: Option<Labels>,
    change: Result<StreamEntry, StreamRemoved>,
}

/// The hub's state, and the decisions over it.
pub struct Core {
    config: CoreConfig,
    /// Random bits (ids a peer cannot predict from the ones it sees).
    random: Box<dyn FnMut() -> u64 + Send>,
    next_id: u64,
    rings: BTreeMap<StreamId, RingState>,
    /// Streams (not filtered rings) by their labels.
    by_labels: HashMap<Labels, StreamId>,
    /// Streams of other relays' agents, by (agent token, stream token).
    by_remote: HashMap<(Token, Token), StreamId>,
    agents: BTreeMap<AgentId, AgentState>,
    sessions: BTreeMap<SessionId, watch::SessionState>,
    sessions_per_org: HashMap<String, usize>,
    demands: BTreeMap<DemandId, DemandState>,
    demands_per_org: HashMap<Arc<str>, usize>,
    /// Streams announced by the connected agents of each org.
    streams_per_org: HashMap<Arc<str>, usize>,
    catalog_bytes: i64,
    streams: usize,
    filtered_rings: usize,
    /// Sessions holding at least one watched list.
    listing: BTreeSet<SessionId>,
    /// List changes of the current input, told when its effects are taken.
    list_changes: Vec<ListChange>,
    timers: BTreeSet<(Time, Timer)>,
    out: Vec<Effect>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("rings", &self.rings.len())
            .field("agents", &self.agents.len())
            .field("sessions", &self.sessions.len())
            .field("demands", &self.demands.len())
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// An empty hub deciding with `config`, drawing ids from `random`.
    pub fn new(config: CoreConfig, random: Box<dyn FnMut() -> u64 + Send>) -> Self {
        Self {
            config,
            random,
            next_id: 0,
            rings: BTreeMap::new(),
            by_labels: HashMap::new(),
            by_remote: HashMap::new(),
            agents: BTreeMap::new(),
            sessions: BTreeMap::new(),
            sessions_per_org: HashMap::new(),
            demands: BTreeMap::new(),
            demands_per_org: HashMap::new(),
            streams_per_org: HashMap::new(),
            catalog_bytes: 0,
            streams: 0,
            filtered_rings: 0,
            listing: BTreeSet::new(),
            list_changes: Vec::new(),
            timers: BTreeSet::new(),
            out: Vec::new(),
        }
    }

    /// The effects of the inputs so far, in order, ending with the `catalog` events that tell
    /// the sessions watching lists of the catalog changes those inputs made (one per watch),
    /// so that no input that changes the catalog can forget to.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.tell_list_changes();
        std::mem::take(&mut self.out)
    }

    /// The connection a demand was issued to, while it is open.
    #[cfg(test)]
    pub fn demand_agent(&self, demand: DemandId) -> Option<AgentId> {
        self.demands.get(&demand).map(|d| d.agent)
    }

    /// The gauges now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            agents: self.agents.len(),
            sessions: self.sessions.len(),
            streams: self.streams,
            filtered_rings: self.filtered_rings,
            demands_open: self.demands.len(),
            catalog_bytes: self.catalog_bytes,
        }
    }

    /// When the next timer is due, if one is armed.
    pub fn next_timer(&self) -> Option<Time> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Runs every timer due at `now`.
    pub fn timers_fired(&mut self, now: Time, rings: &dyn RingView) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Linger(id) => self.linger_expired(id, at),
                Timer::Reopen(id) => self.reopen(id, rings),
            }
        }
    }

    fn arm(&mut self, at: Time, timer: Timer) {
        if self.timers.insert((at, timer)) {
            self.out.push(Effect::ArmTimer { at });
        }
    }

    fn count(&mut self, c: Count) {
        self.out.push(Effect::Count(c));
    }

    fn send_agent(&mut self, agent: AgentId, msg: RelayMsg) {
        self.out.push(Effect::ToAgent { agent, msg });
    }

    fn send_session(&mut self, session: SessionId, event: Event) {
        self.out.push(Effect::ToSession { session, event });
    }

    /// Sends `event` to every session watching ring `id`.
    fn tell_watchers(&mut self, id: StreamId, event: &Event) {
        let Some(s) = self.rings.get(&id) else {
            return;
        };
        let watchers: Vec<SessionId> = s.watchers.iter().copied().collect();
        for w in watchers {
            self.send_session(w, event.clone());
        }
    }

    /// A sequential id: agent connections and sessions (never presented back by a peer).
    fn sequential(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A random id in [1, 2^53) (exact in JavaScript) not in use: streams, filtered rings and
    /// private watches, which sessions see and batch headers carry.
    fn stream_id(&mut self) -> StreamId {
        loop {
            let id = StreamId::from((self.random)() & ((1 << 53) - 1));
            if id.get() != 0 && !self.rings.contains_key(&id) {
                return id;
            }
        }
    }

    // ---- agents ----------------------------------------------------------------------------

    /// An agent connected (its org and cluster from its certificate); its id.
    pub fn add_agent(&mut self, org: &str, cluster: &str) -> AgentId {
        let id = AgentId::from(self.sequential());
        let nonce = loop {
            let nonce = (self.random)() >> 33;
            if nonce != 0 && self.agents.values().all(|a| a.nonce != nonce) {
                break nonce;
            }
        };
        self.agents.insert(
            id,
            AgentState {
                org: org.into(),
                cluster: cluster.into(),
                streams: HashMap::new(),
                nonce,
                issued: 0,
                demands_open: 0,
                label_bytes: 0,
            },
        );
        id
    }

    /// An agent connection ended. Its watched streams stay (orphaned) so that watchers resume
    /// when it comes back, and are told `paused`; unwatched ones go. Streams another connection
    /// of the same agent has announced meanwhile are left alone. The demands it served for one
    /// watcher end (`live`, or `end` `complete`).
    pub fn remove_agent(&mut self, agent: AgentId) {
        let Some(link) = self.agents.remove(&agent) else {
            return;
        };
        self.uncount_streams(&link.org, link.streams.len(), link.label_bytes);
        let mut served: Vec<StreamId> = link.streams.values().map(|(sid, _)| *sid).collect();
        served.sort_unstable();
        for sid in served {
            let Some(s) = self.rings.get(&sid) else {
                continue;
            };
            if s.agent.map(|(a, _)| a) != Some(agent) {
                continue;
            }
            let ids: Vec<StreamId> = std::iter::once(sid)
                .chain(s.rings.values().copied())
                .collect();
            for &id in &ids {
                let Some(s) = self.rings.get_mut(&id) else {
                    continue;
                };
                s.agent = None;
                // Leases were the connection's (the next one is leased anew).
                s.leased = false;
                if let Some(d) = s.live_demand.take() {
                    self.forget_demand(d);
                }
            }
            // Unwatched rings go now, unless lingering: an orphan lingers out its time (a
            // watcher resuming within it finds where the ring ended). Watched ones stay
            // orphaned, and their watchers learn that nothing arrives until the agent is back.
            for id in ids.into_iter().rev() {
                if !self.in_use(id) && !self.lingers(id) {
                    self.drop_ring(id, EndReason::AgentDisconnected);
                } else {
                    self.listed(id);
                    self.tell_watchers(
                        id,
                        &Event::Paused {
                            stream: id.get(),
                            reason: PauseReason::AgentDisconnected,
                        },
                    );
                }
            }
        }
        // Demands it was serving for one watcher end now (their watchers go live), not never.
        let orphaned: Vec<DemandId> = self
            .demands
            .iter()
            .filter(|(_, d)| d.agent == agent)
            .map(|(id, _)| *id)
            .collect();
        for d in orphaned {
            if let Some(Target::Watch { session, .. }) = self.forget_demand(d) {
                self.out.push(Effect::Wake { session });
            }
        }
        self.shrink();
    }
}

/// What a session may read: default deny — the same org, and (with a token) a role binding
/// covering the stream.
pub fn may_read(org: &str, claims: Option<&Claims>, labels: &Labels) -> bool {
    labels.org == org && claims.is_none_or(|c| authorize(c, labels))
}

/// The subscription a session made (for streams that appear later).
#[derive(Debug, Clone)]
struct SubSpec {
    selector: Selector,
    demand: Demand,
}

/// The type a session's subscriptions and lists are keyed by.
type Subs<V> = BTreeMap<SubId, V>;
