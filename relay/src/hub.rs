//! The hub: the relay's in-memory state of streams, demands and sessions.
//!
//! Three layers, arrows down only:
//! * [`core::Core`] decides, as a pure state machine: inputs (an agent joined, a session
//!   subscribed, a demand ended, timers fired, …) with the time `now` leave effects (send to an
//!   agent, event to a session, place a session's cursor in a ring, arm a timer, …).
//! * [`Shell`] carries the effects out, in order, on the live rings ([`LiveStream`]), the data
//!   streams' sinks, the agents' control queues and the sessions' outboxes, and answers the
//!   core's questions about rings and cursors.
//! * [`Hub`] puts the shell under one lock, gives it the time, and runs the core's timers on
//!   one task.
//!
//! Ingest never takes the hub lock for a push: it resolves a demand to its sink once, when the
//! data stream starts, then pushes into the ring (or the watcher's queue) directly; session
//! writers drain their outboxes likewise. The core decides, the rings move bytes.
//!
//! Lock order: hub → session outbox → ring (then its watchers list). Ingest pushes take only
//! the ring's locks.
//!
//! [`LiveStream`]: crate::fanout::LiveStream

pub mod core;
mod remote;
mod shell;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos, StreamGone, StreamInfo};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::StreamEntry;
use tokio::sync::{Notify, mpsc};

pub use self::core::{AgentViolation, CapHit, CatalogRefusal, CoreConfig, Refusal, Unresolved};
use self::core::{Core, RemoteState, Time};
use self::remote::{CatalogFeed, RemoteCtx};
pub use self::shell::{DemandSink, Shell};
use crate::auth::Claims;
use crate::backplane::Backplane;
use crate::backplane::subject::Token;
use crate::ids::{AgentId, AgentStreamId, DemandId, StreamId};
use crate::metrics::RelayMetrics;
use crate::session::outbox::Outbox;

/// Batches of a backfill (or of a one-off read) queued per watch before the agent is slowed
/// down.
pub const BACKFILL_BATCHES: usize = 16;

/// Bytes of events (JSON) a session may leave unread before it is closed (4009).
pub const MAX_SESSION_EVENT_BYTES: usize = 1024 * 1024;

/// How long after a live demand ended, its ring still watched, it is opened again.
pub const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The decisions' settings.
    pub core: CoreConfig,
    /// Bytes each ring holds.
    pub ring_bytes: usize,
    /// Relay-wide budget of buffered content, in bytes.
    pub memory_budget_bytes: usize,
    /// Batches of backfill buffered per watch before the agent is slowed down.
    pub backfill_batches: usize,
    /// Bytes of pending events (JSON) a session may have queued before it is closed.
    pub max_session_event_bytes: usize,
}

/// The hub.
#[derive(Debug)]
pub struct Hub {
    shell: Mutex<Shell>,
    /// The core's time zero.
    start: tokio::time::Instant,
    /// Wakes the timer task: a timer was armed, or the hub is gone.
    timer: Arc<Notify>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.timer.notify_one();
    }
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

impl Hub {
    /// An empty hub, and its timer task (it ends with the hub). Needs a tokio runtime.
    #[allow(
        clippy::disallowed_methods,
        reason = "the hub's time zero; the core is given the time"
    )]
    pub fn new(config: HubConfig, metrics: Arc<RelayMetrics>) -> Arc<Self> {
        let timer = Arc::new(Notify::new());
        let core = Core::new(config.core.clone(), Box::new(random_u64));
        let hub = Arc::new(Self {
            shell: Mutex::new(Shell::new(core, config, metrics, timer.clone())),
            start: tokio::time::Instant::now(),
            timer,
        });
        tokio::spawn(run_timers(Arc::downgrade(&hub), hub.timer.clone()));
        hub
    }

    /// The shell, locked, and the time now.
    fn lock(&self) -> (MutexGuard<'_, Shell>, Time) {
        let now = Time::after_start(self.start.elapsed());
        (self.shell.lock().expect("hub lock"), now)
    }

    // ---- agents ----------------------------------------------------------------------------

    /// Registers a connected agent; returns its id. `tx` is its control queue; `reset` is
    /// notified when its connection must be closed (the queue overflowed).
    pub fn add_agent(
        &self,
        org: &str,
        cluster: &str,
        tx: mpsc::Sender<RelayMsg>,
        reset: Arc<Notify>,
    ) -> AgentId {
        let (mut shell, now) = self.lock();
        shell.add_agent(now, org, cluster, tx, reset)
    }

    /// Forgets a disconnected agent. Its watched streams stay (orphaned) so that watchers
    /// resume when it comes back; unwatched ones go.
    pub fn remove_agent(&self, agent: AgentId) {
        let (mut shell, now) = self.lock();
        shell.remove_agent(now, agent);
    }

    /// Streams an agent announced; those a cap refused, by limit, for the agent to be told.
    pub fn catalog_add(&self, agent: AgentId, streams: Vec<StreamInfo>) -> Vec<CatalogRefusal> {
        let (mut shell, now) = self.lock();
        shell.catalog_add(now, agent, streams)
    }

    /// Streams an agent no longer has: their watchers get an `end` event.
    pub fn catalog_remove(&self, agent: AgentId, gone: Vec<StreamGone>) {
        let (mut shell, now) = self.lock();
        shell.catalog_remove(now, agent, gone);
    }

    /// The agent could not serve a demand; a violation if the demand was never its own.
    pub fn open_failed(
        &self,
        agent: AgentId,
        demand: DemandId,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), AgentViolation> {
        tracing::debug!(%agent, %demand, ?code, message, "agent refused demand");
        let (mut shell, now) = self.lock();
        shell.open_failed(now, agent, demand, code)
    }

    /// Where the data of `demand`, presented by `agent`'s connection on a new data stream,
    /// goes, and the flag that says when to stop.
    pub fn resolve(
        &self,
        agent: AgentId,
        demand: DemandId,
    ) -> Result<(DemandSink, Arc<AtomicBool>), Unresolved> {
        let (mut shell, now) = self.lock();
        shell.resolve(now, agent, demand)
    }

    /// The context of `demand`'s trace span, while tracing is on.
    pub fn demand_trace(&self, demand: DemandId) -> Option<logrelay_telemetry::SpanContext> {
        self.lock().0.demand_trace(demand)
    }

    /// The live demands `agent` serves, each with what every watcher of its ring has been
    /// handed: what the relay acknowledges (`ack`).
    pub fn acks(&self, agent: AgentId) -> Vec<(DemandId, SeqPos)> {
        self.lock().0.acks(agent)
    }

    /// A demand's data stream ended (finished, reset or failed).
    pub fn demand_finished(&self, agent: AgentId, demand: DemandId) {
        let (mut shell, now) = self.lock();
        shell.demand_finished(now, agent, demand);
    }

    /// Another relay now leases (`leased`) a stream of `agent`'s connection (its own id
    /// `local`), or no longer does: the lease holds the stream's live demand open like a
    /// watcher, and its end lets it linger.
    pub fn remote_lease(
        &self,
        agent: AgentId,
        local: AgentStreamId,
        leased: bool,
        first: Option<&crate::backplane::LeaseFirst>,
    ) -> Result<(), CapHit> {
        let (mut shell, now) = self.lock();
        shell.remote_lease(now, agent, local, leased, first)
    }

    /// The relay holding `agent` refused this relay's lease on `stream` (a demand cap there,
    /// `limit`): the watchers of its ring here get `end` `demand_limit`
    /// ([`core::Core::remote_refused`]).
    pub fn remote_refused(&self, agent: Token, stream: Token, limit: &str) {
        let (mut shell, now) = self.lock();
        shell.remote_refused(now, agent, stream, limit);
    }

    /// The agent's own id of ring `ring`, if `agent`'s connection serves it as a stream (not a
    /// filtered ring): what the backplane publishes its batches under.
    pub fn agent_stream(&self, agent: AgentId, ring: StreamId) -> Option<AgentStreamId> {
        self.lock().0.agent_stream(agent, ring)
    }

    /// Another relay's backfill request for stream `local` of `agent`'s connection, when the
    /// ring here does not reach back to what it asks ([`core::backfill::before_ring`]): the
    /// agent's files are read for the part before the ring (a one-off demand, within
    /// `deadline`), and the ring answers from where it starts, all within `budget` bytes of
    /// batches. `None` when the ring covers the ask (answer it from the ring alone) or this
    /// connection has no such ring.
    pub fn backfill_from_agent(
        self: &Arc<Self>,
        agent: AgentId,
        local: AgentStreamId,
        ask: &crate::backplane::BackfillAsk,
        budget: usize,
        deadline: Duration,
    ) -> Option<impl Future<Output = core::backfill::Selection> + Send + 'static> {
        let live = self.lock().0.ring_of(agent, local)?;
        let (ring, floor) = live.held();
        let (agent_ask, from) = core::backfill::before_ring(&ring, ask)?;
        let hub = self.clone();
        let ask = *ask;
        Some(async move {
            let fetched = hub
                .fetch_from_agent(agent, local, &agent_ask, budget, deadline)
                .await;
            core::backfill::with_agent_part(&ring, floor, &ask, from, fetched, budget)
        })
    }

    /// A one-off read of stream `local` at `agent` for another relay (`ask`): its batches,
    /// oldest first, until it ends, `budget` bytes are taken or `deadline` passes (then it is
    /// cancelled), and whether it ended by itself. `None` when refused (a demand cap, the
    /// stream gone).
    async fn fetch_from_agent(
        &self,
        agent: AgentId,
        local: AgentStreamId,
        ask: &crate::backplane::BackfillAsk,
        budget: usize,
        deadline: Duration,
    ) -> Option<core::backfill::Fetched> {
        let spec = Demand {
            tail: ask.tail,
            since_ns: ask.since_ns,
            since_seq: ask.since_seq,
            until: ask.until,
            follow: false,
            ..Demand::default()
        };
        let (demand, mut rx) = {
            let (mut shell, now) = self.lock();
            shell.open_fetch(now, agent, local, spec)?
        };
        let mut fetched = core::backfill::Fetched::default();
        let mut used = 0usize;
        let timeout = tokio::time::sleep(deadline);
        tokio::pin!(timeout);
        loop {
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => {
                        let size = crate::backplane::codec::BACKFILL_FRAME_BYTES + b.len();
                        if used + size > budget {
                            break;
                        }
                        used += size;
                        fetched.batches.push(b);
                    }
                    None => {
                        fetched.ended = true;
                        break;
                    }
                },
                () = &mut timeout => break,
            }
        }
        if !fetched.ended {
            let (mut shell, now) = self.lock();
            shell.cancel_fetch(now, demand);
        }
        Some(fetched)
    }

    /// Another relay's backfill request for stream `local` of `agent`'s connection: what its
    /// ring answers ([`core::backfill::select`]) within `budget` bytes of batches; `None` if
    /// that connection has no such ring.
    pub fn backfill_from_ring(
        &self,
        agent: AgentId,
        local: AgentStreamId,
        ask: &crate::backplane::BackfillAsk,
        budget: usize,
    ) -> Option<core::backfill::Selection> {
        let live = self.lock().0.ring_of(agent, local)?;
        let (batches, floor) = live.held();
        Some(core::backfill::select(&batches, floor, ask, budget))
    }

    // ---- other relays (the backplane) -------------------------------------------------------

    /// Serves other relays' streams through `backplane` from now on: the shared catalog is
    /// followed (`list`, subscriptions), and a stream one of this relay's sessions watches is
    /// wanted over NATS and fed into its ring here.
    pub fn attach_backplane(self: &Arc<Self>, backplane: &Backplane) {
        self.lock().0.set_remote(RemoteCtx {
            backplane: backplane.clone(),
            hub: Arc::downgrade(self),
        });
        backplane.watch_catalog(Arc::new(CatalogFeed {
            hub: Arc::downgrade(self),
            backplane: backplane.clone(),
        }));
        self.remote_catalog(backplane);
    }

    /// Takes in the shared catalog as it is now.
    fn remote_catalog(&self, backplane: &Backplane) {
        let streams = backplane
            .remote_streams()
            .into_iter()
            .map(|r| (r.agent, r.stream, r.labels))
            .collect();
        let (mut shell, now) = self.lock();
        shell.remote_catalog(now, streams);
    }

    /// Where a wanted stream of another relay's agent stands: its watchers are told `paused`
    /// and `resumed` as it changes.
    fn remote_state(&self, agent: Token, stream: Token, state: RemoteState) {
        let (mut shell, now) = self.lock();
        shell.remote_state(now, agent, stream, state);
    }

    // ---- sessions --------------------------------------------------------------------------

    /// Registers a session, unless its org already holds the most sessions allowed; its
    /// outbox.
    pub fn add_session(
        &self,
        org: &str,
        claims: Option<Arc<Claims>>,
    ) -> Result<Arc<Outbox>, Refusal> {
        let (mut shell, now) = self.lock();
        shell.add_session(now, org, claims)
    }

    /// Forgets a session and everything it watched.
    pub fn remove_session(&self, session: &Outbox) {
        let (mut shell, now) = self.lock();
        shell.remove_session(now, session.id());
    }

    /// Lists the streams of the session's org matching `selector`.
    pub fn list(&self, session: &Outbox, selector: &Selector) -> Vec<StreamEntry> {
        self.lock().0.list(session.id(), selector)
    }

    /// Answers a `list` (the `streams` event, queued so that no change can overtake it) and
    /// keeps the list open under `id`: changes come as `catalog` events.
    pub fn watch_list(
        &self,
        session: &Outbox,
        id: &str,
        selector: Selector,
    ) -> Result<(), Refusal> {
        let (mut shell, now) = self.lock();
        shell.watch_list(now, session.id(), id, selector)
    }

    /// Adds a standing subscription and attaches every matching stream; the first demand cap
    /// that refused a watch, if any.
    pub fn subscribe(
        &self,
        session: &Outbox,
        id: &str,
        selector: Selector,
        demand: Demand,
    ) -> Result<Option<&'static str>, Refusal> {
        let (mut shell, now) = self.lock();
        shell.subscribe(now, session.id(), id, selector, demand)
    }

    /// Removes a subscription or watched list; rings no longer watched linger, then are
    /// cancelled. False when the session has nothing of that id.
    pub fn unsubscribe(&self, session: &Outbox, id: &str) -> bool {
        let (mut shell, now) = self.lock();
        shell.unsubscribe(now, session.id(), id)
    }
}

/// The hub's one timer task: sleeps until the core's next timer (or until one is armed), then
/// runs what is due. Ends when the hub is gone.
async fn run_timers(hub: Weak<Hub>, woken: Arc<Notify>) {
    loop {
        let next = match hub.upgrade() {
            Some(h) => {
                let (shell, _) = h.lock();
                shell.next_timer().map(|t| h.start + t.since_start())
            }
            None => return,
        };
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = woken.notified() => continue,
            () = due => {}
        }
        let Some(h) = hub.upgrade() else { return };
        let (mut shell, now) = h.lock();
        shell.timers_fired(now);
    }
}
