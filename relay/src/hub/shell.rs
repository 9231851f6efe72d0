//! The shell around the hub's core: it feeds the core one input at a time, carries its effects
//! out in order, and answers its questions about rings and cursors ([`RingView`]). It owns the
//! live rings ([`LiveStream`]), the data streams' sinks, the agents' control queues and the
//! sessions' outboxes. It takes the time from its caller and blocks on nothing: [`super::Hub`]
//! puts it under a lock and runs its timers; the simulation drives it with virtual time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use logrelay_telemetry::{self as telemetry, names};
use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::StreamEntry;
use tokio::sync::{Notify, mpsc};

use super::HubConfig;
use super::core::{
    AgentViolation, CapHit, CatalogRefusal, Core, Count, Effect, Refusal, RemoteState, Resume,
    RingView, Target, Time, Unresolved,
};
use super::remote::RemoteCtx;
use crate::auth::Claims;
use crate::backplane::subject::{AgentTokens, Token};
use crate::fanout::LiveStream;
use crate::ids::{AgentId, AgentStreamId, DemandId, SessionId, StreamId};
use crate::metrics::RelayMetrics;
use crate::ring::Cursor;
use crate::session::outbox::{Backfill, Outbox};

/// What a demand's data stream feeds.
#[derive(Debug, Clone)]
pub enum DemandSink {
    /// The live ring of a stream (or of a filtered ring).
    Live(Arc<LiveStream>),
    /// One watch's own demand: a backfill, or a one-off read; or another relay's fetch.
    Backfill {
        /// The id its batches carry.
        stream: StreamId,
        /// Where batches go (bounded: a full queue slows the agent, nothing is dropped).
        tx: mpsc::Sender<Bytes>,
        /// The watcher, woken at each batch (none for another relay's fetch).
        session: Option<Arc<Outbox>>,
    },
}

impl DemandSink {
    /// The id the demand's batches must carry.
    pub fn stream(&self) -> StreamId {
        match self {
            Self::Live(l) => l.id(),
            Self::Backfill { stream, .. } => *stream,
        }
    }
}

/// Where an open demand's data goes, and its stop flag.
#[derive(Debug)]
struct Sink {
    cancelled: Arc<AtomicBool>,
    to: SinkTo,
}

#[derive(Debug)]
enum SinkTo {
    /// A ring, looked up when the data stream starts.
    Ring,
    /// A watch's queue.
    Watch {
        stream: StreamId,
        tx: mpsc::Sender<Bytes>,
        session: Weak<Outbox>,
    },
    /// Another relay's fetch's queue ([`Shell::open_fetch`]).
    Fetch {
        stream: StreamId,
        tx: mpsc::Sender<Bytes>,
    },
}

/// An agent connection's control queue.
#[derive(Debug)]
struct AgentLink {
    tx: mpsc::Sender<RelayMsg>,
    /// Closes the agent's connection (it reconnects and the relay re-sends its demands).
    reset: Arc<Notify>,
}

/// The core's questions, answered from the live rings and the sessions' cursors.
struct View<'a> {
    rings: &'a HashMap<StreamId, Arc<LiveStream>>,
    sessions: &'a HashMap<SessionId, Weak<Outbox>>,
}

impl RingView for View<'_> {
    fn ends(&self, ring: StreamId) -> Option<(Cursor, Cursor)> {
        self.rings.get(&ring).map(|l| l.ends())
    }

    fn resume(&self, ring: StreamId) -> Resume {
        self.rings
            .get(&ring)
            .map(|l| l.resume())
            .unwrap_or_default()
    }

    fn ack_point(&self, ring: StreamId) -> Option<SeqPos> {
        self.rings.get(&ring)?.ack_point()
    }

    fn read_to(&self, session: SessionId, key: StreamId) -> Option<Option<SeqPos>> {
        self.sessions.get(&session)?.upgrade()?.read_to(key)
    }
}

/// The core, and everything its effects act on.
#[derive(Debug)]
pub struct Shell {
    core: Core,
    config: HubConfig,
    metrics: Arc<RelayMetrics>,
    /// Notified when a timer is armed.
    timer: Arc<Notify>,
    rings: HashMap<StreamId, Arc<LiveStream>>,
    sinks: HashMap<DemandId, Sink>,
    agents: HashMap<AgentId, AgentLink>,
    sessions: HashMap<SessionId, Weak<Outbox>>,
    /// The backplane, for other relays' streams (`None`: this relay works alone).
    remote: Option<RemoteCtx>,
    /// Backlogs of other relays' streams for watches about to be made
    /// ([`Effect::RemoteBackfill`], then [`Effect::WatchRing`]).
    remote_backfills: HashMap<(SessionId, StreamId), Backfill>,
    /// Traces (only while tracing is on): each subscription's span, by session and id.
    subscription_spans: HashMap<(SessionId, String), telemetry::Span>,
    /// Each open demand's span.
    demand_spans: HashMap<DemandId, telemetry::Span>,
    /// Spans of demands closed by the effects being carried out, ended (as `closed`, or
    /// `cancelled` when a `cancel` followed) once they all are.
    closing: Vec<(DemandId, telemetry::Span, &'static str)>,
    /// The span of the subscription whose `subscribe` is being carried out: the parent of the
    /// demands it opens.
    cause: Option<telemetry::SpanContext>,
    /// Whether a `subscribe` is being carried out (its span is the cause throughout).
    subscribing: bool,
    /// Every effect carried out (tests look).
    #[cfg(test)]
    log: Vec<Effect>,
}

impl Shell {
    /// A shell around `core`; `timer` is notified whenever the core arms a timer.
    pub fn new(
        core: Core,
        config: HubConfig,
        metrics: Arc<RelayMetrics>,
        timer: Arc<Notify>,
    ) -> Self {
        Self {
            core,
            config,
            metrics,
            timer,
            rings: HashMap::new(),
            sinks: HashMap::new(),
            agents: HashMap::new(),
            sessions: HashMap::new(),
            remote: None,
            remote_backfills: HashMap::new(),
            subscription_spans: HashMap::new(),
            demand_spans: HashMap::new(),
            closing: Vec::new(),
            cause: None,
            subscribing: false,
            #[cfg(test)]
            log: Vec::new(),
        }
    }

    /// The core.
    #[cfg(test)]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// The effects carried out since the last call.
    #[cfg(test)]
    pub(crate) fn take_log(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.log)
    }

    /// Feeds the core one input, then carries out its effects.
    fn input<R>(
        &mut self,
        now: Time,
        input: impl FnOnce(&mut Core, &dyn RingView, Time) -> R,
    ) -> R {
        let view = View {
            rings: &self.rings,
            sessions: &self.sessions,
        };
        let out = input(&mut self.core, &view, now);
        self.settle();
        out
    }

    /// Carries out the core's pending effects, in order, and updates the gauges.
    fn settle(&mut self) {
        for effect in self.core.take_effects() {
            #[cfg(test)]
            self.log.push(effect.clone());
            self.apply(effect);
        }
        for (_, span, how) in self.closing.drain(..) {
            span.end(how);
        }
        if !self.subscribing {
            self.cause = None;
        }
        let g = self.core.gauges();
        let m = &self.metrics;
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        m.agents_connected.set(n(g.agents));
        m.sessions_connected.set(n(g.sessions));
        m.streams.set(n(g.streams));
        m.filtered_rings.set(n(g.filtered_rings));
        m.demands_open.set(n(g.demands_open));
        m.catalog_bytes.set(g.catalog_bytes);
    }

    fn outbox(&self, session: SessionId) -> Option<Arc<Outbox>> {
        self.sessions.get(&session).and_then(Weak::upgrade)
    }

    /// Carries out one effect.
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Cause { session, sub } => {
                // While `subscribe` runs, its span (not in the table yet) is the cause already.
                if let Some(span) = self.subscription_spans.get(&(session, sub.to_string())) {
                    self.cause = span.context();
                }
            }
            Effect::ToAgent { agent, mut msg } => {
                if telemetry::enabled() {
                    self.trace_to_agent(&mut msg);
                }
                if let Some(link) = self.agents.get(&agent)
                    && link.tx.try_send(msg).is_err()
                {
                    // Policy when full: reset the connection; the agent reconnects and the
                    // relay re-sends every demand it still has.
                    self.metrics.agent_messages_dropped.inc();
                    tracing::warn!(%agent, "agent control queue full; resetting the connection");
                    link.reset.notify_one();
                }
            }
            Effect::ResetAgent { agent } => {
                if let Some(link) = self.agents.get(&agent) {
                    link.reset.notify_one();
                }
            }
            Effect::ToSession { session, event } => {
                if let Some(o) = self.outbox(session) {
                    o.queue_event(&event);
                }
            }
            Effect::Wake { session } => {
                if let Some(o) = self.outbox(session) {
                    o.wake();
                }
            }
            Effect::RingOpened { ring, kind } => {
                let live = LiveStream::new(
                    ring,
                    kind,
                    self.config.ring_bytes,
                    self.config.memory_budget_bytes,
                    self.metrics.clone(),
                );
                self.rings.insert(ring, Arc::new(live));
            }
            Effect::RingEmptied { ring } => {
                if let Some(live) = self.rings.get(&ring) {
                    live.empty();
                }
            }
            Effect::RingClosed { ring } => {
                self.rings.remove(&ring);
            }
            Effect::WatchRing {
                session,
                ring,
                from,
                backfill,
                backfill_resume,
                resume,
                dense,
            } => {
                let (Some(o), Some(live)) = (self.outbox(session), self.rings.get(&ring).cloned())
                else {
                    return;
                };
                let backfill = backfill
                    .map(|d| self.watch_sink(d, ring, &o, backfill_resume, dense))
                    .or_else(|| self.remote_backfills.remove(&(session, ring)));
                live.attach(session, o.waker().clone(), from.last_end);
                o.watch_ring(ring, live, from, backfill, resume, dense);
            }
            Effect::Backfill {
                session,
                key,
                demand,
                resume,
                dense,
            } => {
                if let Some(o) = self.outbox(session) {
                    let backfill = self.watch_sink(demand, key, &o, resume, dense);
                    o.add_backfill(key, backfill);
                }
            }
            Effect::WatchOnce {
                session,
                view,
                demand,
                resume,
                dense,
            } => {
                if let Some(o) = self.outbox(session) {
                    let backfill = self.watch_sink(demand, view, &o, resume, dense);
                    o.watch_once(view, backfill);
                }
            }
            Effect::Unwatch { session, key, ring } => {
                if let Some(o) = self.outbox(session) {
                    o.unwatch(key);
                }
                if let Some(live) = ring.and_then(|r| self.rings.get(&r)) {
                    live.detach(session);
                }
            }
            Effect::LiveDemand { demand, .. } => {
                let sink = Sink {
                    cancelled: Arc::new(AtomicBool::new(false)),
                    to: SinkTo::Ring,
                };
                self.sinks.insert(demand, sink);
            }
            Effect::DemandClosed { demand } => {
                // Its data stream stops at its next frame; a watch's queue closes once the
                // data stream's sender is gone too.
                if let Some(sink) = self.sinks.remove(&demand) {
                    sink.cancelled.store(true, Ordering::Relaxed);
                }
                if let Some(span) = self.demand_spans.remove(&demand) {
                    self.closing.push((demand, span, "closed"));
                }
            }
            Effect::Want {
                ring,
                agent,
                stream,
                backlog,
            } => {
                if let (Some(ctx), Some(live)) = (&self.remote, self.rings.get(&ring)) {
                    let first = crate::backplane::LeaseFirst {
                        backlog,
                        // The subscription being carried out, if it made the want.
                        traceparent: self.cause.as_ref().map(telemetry::format_traceparent),
                    };
                    ctx.want(agent, stream, live.clone(), first);
                }
            }
            Effect::RemoteBackfill {
                session,
                key,
                agent,
                stream,
                ask,
                resume,
                dense,
                joined,
                fresh,
            } => {
                let (Some(ctx), Some(o), Some(live)) = (
                    self.remote.clone(),
                    self.outbox(session),
                    self.rings.get(&key).cloned(),
                ) else {
                    return;
                };
                let (tx, backfill) = Backfill::channel(self.config.backfill_batches, resume, dense);
                if fresh {
                    // Where the ring starts is to be learnt from the want that follows.
                    live.forget_base();
                }
                ctx.backfill(agent, stream, ask, live, tx, Arc::downgrade(&o));
                if joined {
                    o.add_backfill(key, backfill);
                } else {
                    self.remote_backfills.insert((session, key), backfill);
                }
            }
            Effect::Release { agent, stream } => {
                if let Some(ctx) = &self.remote {
                    ctx.release(&agent, &stream);
                }
            }
            Effect::ArmTimer { .. } => self.timer.notify_one(),
            Effect::Count(Count::DemandOpened) => {
                self.metrics.demands_opened.inc();
            }
            Effect::Count(Count::LimitHit(limit)) => self.metrics.limit_hit(limit),
        }
    }

    /// Traces a message to an agent: an `open` starts the demand's span (a child of the
    /// subscription being carried out, if any) and carries its `traceparent`; a `cancel` marks
    /// the demand's span.
    fn trace_to_agent(&mut self, msg: &mut RelayMsg) {
        match msg {
            RelayMsg::Open {
                demand,
                stream_ref,
                demand_spec,
                traceparent,
                ..
            } => {
                let parent = match &self.cause {
                    Some(sc) => telemetry::Parent::Of(sc),
                    None => telemetry::Parent::Root,
                };
                let mut attributes = vec![
                    telemetry::int(names::DEMAND_ID, *demand),
                    telemetry::int(names::STREAM_ID, *stream_ref),
                    telemetry::flag(names::DEMAND_FOLLOW, demand_spec.follow),
                ];
                if let Some(tail) = demand_spec.tail {
                    attributes.push(telemetry::int(names::DEMAND_TAIL, u64::from(tail)));
                }
                let span = telemetry::start(
                    names::RELAY_DEMAND,
                    telemetry::Kind::Client,
                    parent,
                    attributes,
                );
                *traceparent = span.traceparent();
                self.demand_spans.insert(DemandId::from(*demand), span);
            }
            RelayMsg::Cancel { demand } => {
                let id = DemandId::from(*demand);
                if let Some((_, span, how)) = self.closing.iter_mut().find(|(d, ..)| *d == id) {
                    span.event(names::EVENT_CANCEL, vec![]);
                    *how = "cancelled";
                }
            }
            _ => {}
        }
    }

    /// The context of demand `demand`'s span, while tracing is on: the parent of its data
    /// stream's span.
    pub fn demand_trace(&self, demand: DemandId) -> Option<telemetry::SpanContext> {
        self.demand_spans.get(&demand)?.context()
    }

    /// Opens a one-off read of stream `local` of `agent`'s connection for another relay's
    /// backfill ([`core::Core::open_fetch`]): its demand and the queue its batches arrive on
    /// (closed when the read ends, is cancelled, or its agent goes). `None` when refused.
    pub fn open_fetch(
        &mut self,
        now: Time,
        agent: AgentId,
        local: AgentStreamId,
        spec: Demand,
    ) -> Option<(DemandId, mpsc::Receiver<Bytes>)> {
        let demand = self.input(now, |core, _, _| core.open_fetch(agent, local, spec))?;
        let stream = self.core.ring_of(agent, local)?;
        let (tx, rx) = mpsc::channel(self.config.backfill_batches.max(1));
        self.sinks.insert(
            demand,
            Sink {
                cancelled: Arc::new(AtomicBool::new(false)),
                to: SinkTo::Fetch { stream, tx },
            },
        );
        Some((demand, rx))
    }

    /// Stops a fetch that is still open ([`Self::open_fetch`]).
    pub fn cancel_fetch(&mut self, now: Time, demand: DemandId) {
        self.input(now, |core, _, _| core.cancel_fetch(demand));
    }

    /// The queue of a demand served for one watch of `session` (batches stamped `stream`).
    fn watch_sink(
        &mut self,
        demand: DemandId,
        stream: StreamId,
        session: &Arc<Outbox>,
        resume: Option<SeqPos>,
        dense: bool,
    ) -> Backfill {
        let (tx, backfill) = Backfill::channel(self.config.backfill_batches, resume, dense);
        let sink = Sink {
            cancelled: Arc::new(AtomicBool::new(false)),
            to: SinkTo::Watch {
                stream,
                tx,
                session: Arc::downgrade(session),
            },
        };
        self.sinks.insert(demand, sink);
        backfill
    }

    /// When the next timer is due, if one is armed.
    pub fn next_timer(&self) -> Option<Time> {
        self.core.next_timer()
    }

    /// Runs the timers due at `now`.
    pub fn timers_fired(&mut self, now: Time) {
        self.input(now, |core, rings, now| core.timers_fired(now, rings));
    }

    // ---- agents ----------------------------------------------------------------------------

    /// Registers a connected agent; returns its id. `tx` is its control queue; `reset` is
    /// notified when its connection must be closed (the queue overflowed).
    pub fn add_agent(
        &mut self,
        now: Time,
        org: &str,
        cluster: &str,
        tx: mpsc::Sender<RelayMsg>,
        reset: Arc<Notify>,
    ) -> AgentId {
        let id = self.input(now, |core, _, _| core.add_agent(org, cluster));
        self.agents.insert(id, AgentLink { tx, reset });
        id
    }

    /// Forgets a disconnected agent ([`Core::remove_agent`]).
    pub fn remove_agent(&mut self, now: Time, agent: AgentId) {
        self.input(now, |core, _, _| core.remove_agent(agent));
        self.agents.remove(&agent);
    }

    /// Streams an agent announced; those refused by a cap ([`Core::catalog_add`]).
    pub fn catalog_add(
        &mut self,
        now: Time,
        agent: AgentId,
        streams: Vec<StreamInfo>,
    ) -> Vec<CatalogRefusal> {
        self.input(now, |core, rings, now| {
            core.catalog_add(now, rings, agent, streams)
        })
    }

    /// Streams an agent no longer has ([`Core::catalog_remove`]).
    pub fn catalog_remove(&mut self, now: Time, agent: AgentId, gone: Vec<StreamGone>) {
        self.input(now, |core, _, _| core.catalog_remove(agent, gone));
    }

    /// The agent could not serve a demand ([`Core::open_failed`]).
    pub fn open_failed(
        &mut self,
        now: Time,
        agent: AgentId,
        demand: DemandId,
        code: ErrorCode,
    ) -> Result<(), AgentViolation> {
        self.input(now, |core, _, now| {
            core.open_failed(now, agent, demand, code)
        })
    }

    /// Where the data of demand `demand`, presented by `agent`'s connection on a new data
    /// stream, goes, and the flag that says when to stop. Only that connection's demands are
    /// looked at, and each accepts one data stream.
    pub fn resolve(
        &mut self,
        now: Time,
        agent: AgentId,
        demand: DemandId,
    ) -> Result<(DemandSink, Arc<AtomicBool>), Unresolved> {
        let target = self.input(now, |core, _, _| core.resolve(agent, demand))?;
        let found = self.sinks.get(&demand).and_then(|sink| {
            let to = match (&sink.to, target) {
                (SinkTo::Ring, Target::Ring(ring)) => {
                    DemandSink::Live(self.rings.get(&ring)?.clone())
                }
                (
                    SinkTo::Watch {
                        stream,
                        tx,
                        session,
                    },
                    Target::Watch { .. },
                ) => DemandSink::Backfill {
                    stream: *stream,
                    tx: tx.clone(),
                    session: Some(session.upgrade()?),
                },
                (SinkTo::Fetch { stream, tx }, Target::Fetch) if !tx.is_closed() => {
                    DemandSink::Backfill {
                        stream: *stream,
                        tx: tx.clone(),
                        session: None,
                    }
                }
                _ => return None,
            };
            Some((to, sink.cancelled.clone()))
        });
        found.ok_or_else(|| {
            // Its watcher went meanwhile.
            self.input(now, |core, _, _| core.abandon(demand));
            Unresolved::Gone
        })
    }

    /// The live demands `agent` serves, each with what every watcher of its ring has been
    /// handed: what the relay acknowledges (`ack`).
    pub fn acks(&self, agent: AgentId) -> Vec<(DemandId, SeqPos)> {
        let view = View {
            rings: &self.rings,
            sessions: &self.sessions,
        };
        self.core.acks(&view, agent)
    }

    /// A demand's data stream ended (finished, reset or failed) ([`Core::demand_finished`]).
    pub fn demand_finished(&mut self, now: Time, agent: AgentId, demand: DemandId) {
        self.input(now, |core, _, now| core.demand_finished(now, agent, demand));
    }

    /// Another relay leases a stream of `agent`'s connection, or stopped ([`Core::remote_lease`]).
    pub fn remote_lease(
        &mut self,
        now: Time,
        agent: AgentId,
        local: AgentStreamId,
        leased: bool,
        first: Option<&crate::backplane::LeaseFirst>,
    ) -> Result<(), CapHit> {
        // A demand the lease opens is traced as a child of the wanting relay's subscription.
        if telemetry::enabled() {
            self.cause = first
                .and_then(|f| f.traceparent.as_deref())
                .and_then(telemetry::parse_traceparent);
        }
        let backlog = first.and_then(|f| f.backlog.as_ref());
        self.input(now, |core, rings, now| {
            core.remote_lease(now, rings, agent, local, leased, backlog)
        })
    }

    /// The owner refused this relay's lease on a remote stream ([`Core::remote_refused`]).
    pub fn remote_refused(&mut self, now: Time, agent: Token, stream: Token, limit: &str) {
        self.input(now, |core, _, now| {
            core.remote_refused(now, agent, stream, limit);
        });
    }

    /// Other relays' streams are wanted and released through `ctx` from now on.
    pub(super) fn set_remote(&mut self, ctx: RemoteCtx) {
        self.remote = Some(ctx);
    }

    /// The shared catalog now ([`Core::remote_catalog`]).
    pub fn remote_catalog(&mut self, now: Time, streams: Vec<(AgentTokens, Token, Labels)>) {
        self.input(now, |core, rings, _| core.remote_catalog(rings, streams));
    }

    /// Where a wanted stream of another relay stands ([`Core::remote_state`]).
    pub fn remote_state(&mut self, now: Time, agent: Token, stream: Token, state: RemoteState) {
        self.input(now, |core, _, _| core.remote_state(agent, stream, state));
    }

    /// The agent's own id of ring `ring` if `agent` serves it as a stream ([`Core::agent_stream`]).
    pub fn agent_stream(&self, agent: AgentId, ring: StreamId) -> Option<AgentStreamId> {
        self.core.agent_stream(agent, ring)
    }

    /// The ring of stream `local` of `agent`'s connection ([`Core::ring_of`]).
    pub fn ring_of(&self, agent: AgentId, local: AgentStreamId) -> Option<Arc<LiveStream>> {
        let sid = self.core.ring_of(agent, local)?;
        self.rings.get(&sid).cloned()
    }

    // ---- sessions --------------------------------------------------------------------------

    /// Registers a session, unless its org already holds the most sessions allowed; its
    /// outbox.
    pub fn add_session(
        &mut self,
        now: Time,
        org: &str,
        claims: Option<Arc<Claims>>,
    ) -> Result<Arc<Outbox>, Refusal> {
        let id = self.input(now, |core, _, _| core.add_session(org, claims))?;
        let outbox = Arc::new(Outbox::new(id, self.config.max_session_event_bytes));
        self.sessions.insert(id, Arc::downgrade(&outbox));
        Ok(outbox)
    }

    /// Forgets a session and everything it watched.
    pub fn remove_session(&mut self, now: Time, session: SessionId) {
        self.input(now, |core, _, now| core.remove_session(now, session));
        self.sessions.remove(&session);
        if !self.subscription_spans.is_empty() {
            let ended: Vec<_> = self
                .subscription_spans
                .keys()
                .filter(|(s, _)| *s == session)
                .cloned()
                .collect();
            for key in ended {
                if let Some(span) = self.subscription_spans.remove(&key) {
                    span.end("session_closed");
                }
            }
        }
    }

    /// Lists the streams of the session's org matching `selector`.
    pub fn list(&self, session: SessionId, selector: &Selector) -> Vec<StreamEntry> {
        self.core.list(session, selector)
    }

    /// Answers a `list` and keeps it open under `id` ([`Core::watch_list`]).
    pub fn watch_list(
        &mut self,
        now: Time,
        session: SessionId,
        id: &str,
        selector: Selector,
    ) -> Result<(), Refusal> {
        self.input(now, |core, _, _| core.watch_list(session, id, selector))
    }

    /// Adds a standing subscription and attaches every matching stream ([`Core::subscribe`]).
    pub fn subscribe(
        &mut self,
        now: Time,
        session: SessionId,
        id: &str,
        selector: Selector,
        demand: Demand,
    ) -> Result<Option<&'static str>, Refusal> {
        if !telemetry::enabled() {
            return self.input(now, |core, rings, _| {
                core.subscribe(rings, session, id, selector, demand)
            });
        }
        let mut attributes = vec![
            telemetry::int(names::SESSION_ID, session.get()),
            telemetry::string(names::SUBSCRIPTION_ID, id),
            telemetry::flag(names::DEMAND_FOLLOW, demand.follow),
        ];
        if let Some(tail) = demand.tail {
            attributes.push(telemetry::int(names::DEMAND_TAIL, u64::from(tail)));
        }
        let span = telemetry::start(
            names::RELAY_SUBSCRIPTION,
            telemetry::Kind::Server,
            telemetry::Parent::Root,
            attributes,
        );
        self.cause = span.context();
        self.subscribing = true;
        let result = self.input(now, |core, rings, _| {
            core.subscribe(rings, session, id, selector, demand)
        });
        self.subscribing = false;
        self.cause = None;
        match result {
            Ok(_) => {
                if let Some(old) = self
                    .subscription_spans
                    .insert((session, id.to_owned()), span)
                {
                    old.end("replaced");
                }
            }
            Err(_) => span.end("refused"),
        }
        result
    }

    /// Removes a subscription or watched list ([`Core::unsubscribe`]).
    pub fn unsubscribe(&mut self, now: Time, session: SessionId, id: &str) -> bool {
        let removed = self.input(now, |core, _, now| core.unsubscribe(now, session, id));
        if let Some(span) = self.subscription_spans.remove(&(session, id.to_owned())) {
            span.end("unsubscribed");
        }
        removed
    }
}
