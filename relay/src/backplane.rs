//! The NATS backplane: any number of relays behave as one, through NATS core (no JetStream,
//! nothing persisted). Without `--nats-url` none of this runs and the relay works alone.
//!
//! The decisions are pure modules, fed with time and messages by this file's thin shell:
//! * [`subject`]: the subject scheme, opaque tokens (org, cluster, agent, stream, relay);
//! * [`codec`]: batches behind a binary header (origin, `pub_seq`, bytes before, epoch and
//!   sequence range), leases and replies, catalog changes and snapshots, heartbeats;
//! * [`lease`]: wants as leases, one message per (relay, agent) every refresh interval;
//! * [`holes`]: exact gaps from what NATS delivered;
//! * [`catalog`]: the other relays' streams, expiring with a silent relay;
//! * [`epoch`]: the higher connection epoch wins;
//! * [`queue`]: the byte-bounded queue toward NATS, dropping the oldest data first.
//!
//! How the relay uses it (the hub core calls and feeds these; see docs/scale-out.md):
//! * **Owner side** (the relay holding an agent's QUIC connection): [`Backplane::serve_agent`]
//!   subscribes the agent's demand subject and answers leases; [`ServedAgent::publish`] is
//!   called with every batch of the agent and publishes only streams some other relay leases;
//!   [`Owner::changed`] tells the hub when a stream gains its first or loses its last remote
//!   lease (open or cancel the demand at the agent, with the hub's linger);
//!   [`Backplane::announce`] / [`Backplane::withdraw`] share the agent's streams.
//! * **Wanting side** (a relay one of whose sessions watches another relay's stream):
//!   [`Backplane::want`] subscribes the stream's data subject first, then leases it from
//!   whichever relay holds the agent now; [`RemoteSink`] receives its batches in order, exact
//!   holes, and the owner's answers (top of the stream, or the agent away);
//!   [`Backplane::release`] after the hub's linger.
//! * **Catalog**: [`Backplane::remote_streams`] and [`CatalogSink`] for `list` and selector
//!   resolution over every relay's streams.

pub mod catalog;
pub mod codec;
mod config;
pub mod epoch;
pub mod holes;
pub mod lease;
mod owner;
pub mod queue;
pub mod subject;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use logrelay_wire::control::SeqPos;
use logrelay_wire::labels::Labels;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::metrics::BackplaneMetrics;
pub use codec::{BackfillAsk, LeaseFirst};
use codec::{
    BackfillReply, CatalogAgent, CatalogOp, CatalogStream, Control, DataHeader, StreamTop,
};
use config::options;
pub use config::{BackplaneConfig, host_name};
use holes::{Hole, Seen, Top, Tracker};
use lease::{Change, Leases, Wants};
pub use owner::ServedAgent;
use owner::*;
use queue::{OutQueue, Outgoing};
use subject::{AgentTokens, Subjects, Token};

/// Why the backplane could not start, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// `--nats-subject-prefix` is not a subject prefix.
    #[error("--nats-subject-prefix: {0}")]
    Subject(#[from] subject::SubjectError),
    /// Two authentication methods at once, or an unusable URL.
    #[error("backplane configuration: {0}")]
    Config(String),
    /// A TLS file could not be used.
    #[error("NATS TLS: {0}")]
    Tls(#[from] logrelay_tls::TlsError),
    /// A credentials or NKey file could not be read.
    #[error("NATS credentials from {path}: {reason}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The NATS client refused the options.
    #[error("NATS connection: {0}")]
    Connect(String),
    /// A subscription could not be made.
    #[error("NATS subscribe: {0}")]
    Subscribe(String),
}

/// Millisecond clock of the shell (the pure modules take its readings).
#[derive(Debug, Clone, Copy)]
struct Clock(tokio::time::Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the backplane shell stamps its messages; the pure modules are given times"
)]
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the owner side tells the hub.
pub trait Owner: Send + Sync + 'static {
    /// A stream gained its first remote lease ([`Change::Publish`]: make sure a live demand is
    /// open at the agent) or lost its last ([`Change::Stop`]: the hub may cancel it after its
    /// linger, unless local sessions watch it). `Err` names the demand cap that refused a
    /// `Publish` (`demands_per_agent`, `demands_per_org`): no demand was opened for it.
    /// `first`: what the wanting relay's first watcher brings, for a `Publish` that opens the
    /// live demand (it reads the backlog first, as for a first local watcher, and is traced
    /// as a child of that watcher's subscription).
    fn changed(&self, change: Change, first: Option<&LeaseFirst>) -> Result<(), &'static str>;
    /// Another relay asks for lines of `stream` (a token this agent announced): what the
    /// stream's ring answers, within `budget` bytes of batches; `None` when the ring is not
    /// held here (the stream is not this connection's).
    fn backfill(&self, stream: Token, ask: &BackfillAsk, budget: usize) -> Option<BackfillPart> {
        let _ = (stream, ask, budget);
        None
    }
    /// Like [`Self::backfill`], when the stream's ring does not reach back to what is asked:
    /// the agent's files are read for the part before the ring (within `deadline`), then the
    /// ring answers the rest. `None` when the ring alone answers ([`Self::backfill`]).
    fn backfill_from_agent(
        &self,
        stream: Token,
        ask: &BackfillAsk,
        budget: usize,
        deadline: Duration,
    ) -> Option<LaterPart> {
        let _ = (stream, ask, budget, deadline);
        None
    }
}

/// A backfill reply that waits on the agent ([`Owner::backfill_from_agent`]).
pub type LaterPart = std::pin::Pin<Box<dyn Future<Output = BackfillPart> + Send>>;

/// One reply's worth of a backfill, as the owner's ring answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillPart {
    /// Batches and gap notices, oldest first.
    pub batches: Vec<Bytes>,
    /// One past the last line answered, if any.
    pub next: Option<SeqPos>,
    /// More follows: ask again from `next`.
    pub more: bool,
}

/// Why a backfill request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackfillError {
    /// No relay holds the agent now.
    #[error("no relay holds the agent")]
    Away,
    /// NATS is unreachable or the owner did not answer in time.
    #[error("backfill request failed: {0}")]
    Unavailable(String),
    /// The answer could not be read.
    #[error("unreadable backfill reply: {0}")]
    Codec(#[from] codec::CodecError),
}

/// What the owner answered about a wanted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Where the stream stands at the relay holding its agent.
    Top {
        /// The relay.
        relay: Token,
        /// Its connection epoch of the agent.
        conn_epoch: u64,
        /// The stream's position there.
        top: StreamTop,
    },
    /// No relay holds the agent now ("no responders"): it is away (watchers: `paused`).
    Away,
    /// NATS is unreachable or the owner did not answer in time (watchers: `paused`, reason
    /// `backplane_unavailable`); the lease is retried at the next refresh.
    Unavailable,
    /// The owner refused the lease: serving it needed one more demand at the agent, beyond
    /// the named cap of the owner (watchers: `end` `demand_limit`; the want is released).
    Refused(String),
}

/// What the wanting side tells the hub about one wanted stream.
pub trait RemoteSink: Send + Sync + 'static {
    /// A batch, in order. `repeated`: lines at its start already delivered (the agent resent
    /// them after moving); clients drop them by sequence number.
    fn batch(&self, stream: Token, header: &DataHeader, batch: Bytes, repeated: u64);
    /// Lines NATS did not deliver: tell the watchers with a gap event.
    fn hole(&self, stream: Token, hole: Hole, reason: &'static str);
    /// The owner's answer to a lease or refresh.
    fn answer(&self, stream: Token, answer: Answer);
}

/// What the catalog side tells the hub.
pub trait CatalogSink: Send + Sync + 'static {
    /// Other relays' streams appeared or went.
    fn changed(&self, changes: Vec<catalog::Change>);
}

/// A stream of another relay, as the shared catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStream {
    /// The agent's tokens.
    pub agent: AgentTokens,
    /// The stream's token.
    pub stream: Token,
    /// Its labels (org and cluster from the agent's certificate at its relay).
    pub labels: Labels,
    /// The relay holding the agent.
    pub relay: Token,
}

/// A connected backplane. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Backplane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    subjects: Subjects,
    relay: Token,
    relay_id: String,
    config: BackplaneConfig,
    metrics: BackplaneMetrics,
    clock: Clock,
    out: Mutex<OutQueue>,
    wake: Notify,
    connected: Arc<watch::Sender<bool>>,
    /// Slow-consumer events so far: a hole found after one is reported as its reason.
    slow_events: Arc<AtomicU64>,
    /// The server's `max_payload` (0 before the first connection).
    max_payload: AtomicUsize,
    /// Agents this relay holds, as announced (for snapshots).
    local: Mutex<BTreeMap<Token, CatalogAgent>>,
    remote: Mutex<catalog::RemoteCatalog>,
    catalog_sinks: Mutex<Vec<Arc<dyn CatalogSink>>>,
    wanting: Mutex<Wanting>,
    wants_wake: Notify,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for dyn CatalogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogSink")
    }
}

impl std::fmt::Debug for dyn RemoteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteSink")
    }
}

impl std::fmt::Debug for dyn Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner")
    }
}

/// The wanting side's state.
#[derive(Debug)]
struct Wanting {
    wants: Wants,
    /// Per (agent, stream): its subscription task, tracker and sink.
    streams: HashMap<(Token, Token), Wanted>,
    /// The tokens of each wanted agent.
    agents: HashMap<Token, AgentTokens>,
    /// Wants asked for and not yet subscribed (or whose subscription failed and is retried),
    /// by ticket ([`Backplane::want_ticket`]): a release, or a newer want, ends a ticket, so
    /// a want that completes after its release is dropped rather than kept for ever.
    pending: HashMap<(Token, Token), u64>,
    /// The last ticket given.
    tickets: u64,
}

#[derive(Debug)]
struct Wanted {
    task: AbortHandle,
    tracker: Arc<Mutex<Tracker>>,
    sink: Arc<dyn RemoteSink>,
    /// What the first watcher brings, sent with the leases until the owner first answers
    /// where the stream stands ([`codec::FirstLease`]).
    first: Option<LeaseFirst>,
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backplane {
    /// Connects (in the background: the relay starts while NATS is unreachable) and starts the
    /// backplane's tasks: the publishing pump, the catalog, heartbeats and leases.
    pub async fn connect(
        config: &BackplaneConfig,
        metrics: BackplaneMetrics,
    ) -> Result<Self, BackplaneError> {
        logrelay_tls::install_provider();
        let subjects = Subjects::new(&config.nats_subject_prefix)?;
        let relay_id = config.relay_id();
        let relay = subjects.relay(&relay_id);
        let (connected, _) = watch::channel(false);
        let connected = Arc::new(connected);
        let slow_events = Arc::new(AtomicU64::new(0));
        let ever = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events = {
            let metrics = metrics.clone();
            let connected = connected.clone();
            let slow = slow_events.clone();
            let relay_id = relay_id.clone();
            move |event: async_nats::Event| {
                let metrics = metrics.clone();
                let connected = connected.clone();
                let slow = slow.clone();
                let ever = ever.clone();
                let relay_id = relay_id.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            if ever.swap(true, Ordering::Relaxed) {
                                metrics.reconnects.inc();
                            }
                            metrics.connected.set(1);
                            connected.send_replace(true);
                            tracing::info!(relay_id, "backplane: connected to NATS");
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            metrics.connected.set(0);
                            connected.send_replace(false);
                            tracing::warn!(relay_id, %event, "backplane: NATS connection lost");
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            metrics.slow_consumer_events.inc();
                            slow.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(sid, "backplane: slow consumer, messages dropped");
                        }
                        other => tracing::warn!(event = %other, "backplane: NATS event"),
                    }
                }
            }
        };
        let opts = options(config)?
            .name(format!("logrelay-relay {relay_id}"))
            .event_callback(events);
        let client = opts
            .connect(config.nats_urls.clone())
            .await
            .map_err(|e| BackplaneError::Connect(e.to_string()))?;
        metrics.enabled.set(1);
        #[allow(clippy::disallowed_methods, reason = "the backplane shell's time zero")]
        let clock = Clock(tokio::time::Instant::now());
        let inner = Arc::new(Inner {
            client,
            relay,
            relay_id,
            out: Mutex::new(OutQueue::new(config.nats_queue_bytes)),
            wake: Notify::new(),
            connected,
            slow_events,
            max_payload: AtomicUsize::new(0),
            local: Mutex::new(BTreeMap::new()),
            remote: Mutex::new(catalog::RemoteCatalog::new(
                relay,
                config.nats_relay_expiry_ms,
                config.nats_max_remote_streams,
            )),
            catalog_sinks: Mutex::new(Vec::new()),
            wanting: Mutex::new(Wanting {
                wants: Wants::new(config.nats_lease_refresh_ms),
                streams: HashMap::new(),
                agents: HashMap::new(),
                pending: HashMap::new(),
                tickets: 0,
            }),
            wants_wake: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            subjects,
            config: config.clone(),
            metrics,
            clock,
        });
        let bp = Self { inner };
        bp.spawn(pump(bp.inner.clone()));
        bp.spawn(leases(bp.inner.clone()));
        bp.spawn(heartbeats(bp.inner.clone()));
        let catalog = bp
            .inner
            .client
            .subscribe(bp.inner.subjects.catalog_all())
            .await
            .map_err(|e| BackplaneError::Subscribe(e.to_string()))?;
        let beats = bp
            .inner
            .client
            .subscribe(bp.inner.subjects.heartbeat_all())
            .await
            .map_err(|e| BackplaneError::Subscribe(e.to_string()))?;
        bp.spawn(catalog_in(
            bp.inner.clone(),
            futures_util::stream::select(catalog, beats),
        ));
        Ok(bp)
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        let h = tokio::spawn(f).abort_handle();
        self.inner.tasks.lock().expect("tasks lock").push(h);
    }

    /// This relay's token.
    pub fn relay(&self) -> Token {
        self.inner.relay
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.inner.relay_id
    }

    /// The deployment's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// Whether NATS is connected now; the receiver follows changes.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// Largest message published: `--nats-max-message-bytes`, capped at the server's
    /// `max_payload` once connected.
    pub fn max_message_bytes(&self) -> usize {
        max_message_bytes(&self.inner)
    }

    /// Hands a message to the queue toward NATS.
    fn send(&self, subject: String, payload: Bytes, data: bool) -> bool {
        send(&self.inner, subject, payload, data)
    }

    /// Waits until the queue toward NATS is empty and NATS has what was handed to it, or the
    /// deadline passes. True if everything went out.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let inner = self.inner.clone();
        tokio::time::timeout(deadline, async move {
            loop {
                if inner.out.lock().expect("out lock").is_empty() {
                    return inner.client.flush().await.is_ok();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Tells the other relays this relay's agents are gone (drain, shutdown), flushes, and
    /// stops the backplane's tasks.
    pub async fn close(&self, deadline: Duration) {
        let agents: Vec<CatalogAgent> =
            std::mem::take(&mut *self.inner.local.lock().expect("local lock"))
                .into_values()
                .collect();
        for a in agents {
            self.withdraw_agent_msg(&a);
        }
        let _ = self.flush(deadline).await;
        for t in self.inner.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        self.inner
            .wanting
            .lock()
            .expect("wanting lock")
            .streams
            .clear();
    }

    // ---- owner side ----------------------------------------------------------------------

    /// The connection epoch for a new connection of the agent `(org, cluster, node)`: above
    /// the clock and any epoch announced for it by another relay ([`epoch::next`]).
    pub fn next_conn_epoch(&self, agent: &AgentTokens) -> u64 {
        let known = self
            .inner
            .remote
            .lock()
            .expect("remote lock")
            .known_epoch(&agent.agent);
        epoch::next(unix_ns(), known)
    }

    /// Starts serving the agent `(org, cluster, node)` held under `conn_epoch`: subscribes its
    /// demand subject (leases reach this relay from now on) and announces it. Dropping the
    /// returned value unsubscribes and withdraws it.
    pub async fn serve_agent(
        &self,
        org: &str,
        cluster: &str,
        node: &str,
        conn_epoch: u64,
        owner: Arc<dyn Owner>,
    ) -> Result<ServedAgent, BackplaneError> {
        let tokens = self.inner.subjects.agent(org, cluster, node);
        let subscriber = self
            .inner
            .client
            .subscribe(self.inner.subjects.demand(&tokens))
            .await
            .map_err(|e| BackplaneError::Subscribe(e.to_string()))?;
        let state = Arc::new(Mutex::new(Served {
            leases: Leases::new(self.inner.config.nats_lease_ttl_ms),
            streams: HashMap::new(),
        }));
        let task = tokio::spawn(serve_demand(
            self.inner.clone(),
            tokens,
            conn_epoch,
            state.clone(),
            owner,
            subscriber,
        ))
        .abort_handle();
        let entry = CatalogAgent {
            agent: tokens.agent,
            org: org.to_owned(),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            conn_epoch,
            streams: Vec::new(),
            removed: Vec::new(),
            gone: false,
        };
        self.inner
            .local
            .lock()
            .expect("local lock")
            .insert(tokens.agent, entry.clone());
        self.catalog_send(CatalogOp::Add, vec![entry]);
        Ok(ServedAgent {
            backplane: self.clone(),
            tokens,
            conn_epoch,
            state,
            task,
        })
    }

    fn catalog_send(&self, op: CatalogOp, agents: Vec<CatalogAgent>) {
        let max = self.max_message_bytes();
        let (msgs, skipped) = codec::catalog_messages(self.inner.relay, op, 0, agents, max);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "backplane: catalog entries larger than a message not shared"
            );
        }
        let subject = self.inner.subjects.catalog(self.inner.relay);
        for m in msgs {
            self.send(subject.clone(), m, false);
        }
    }

    fn withdraw_agent_msg(&self, a: &CatalogAgent) {
        self.catalog_send(
            CatalogOp::Remove,
            vec![CatalogAgent {
                streams: Vec::new(),
                removed: Vec::new(),
                gone: true,
                ..a.clone()
            }],
        );
    }

    /// Shares streams of a served agent (labels with org and cluster from its certificate).
    pub fn announce(&self, agent: &ServedAgent, streams: Vec<(Token, Labels)>) {
        let entry = {
            let mut local = self.inner.local.lock().expect("local lock");
            let Some(a) = local.get_mut(&agent.tokens.agent) else {
                return;
            };
            let added: Vec<CatalogStream> = streams
                .into_iter()
                .map(|(stream, labels)| CatalogStream { stream, labels })
                .collect();
            for s in &added {
                a.streams.retain(|x| x.stream != s.stream);
                a.streams.push(s.clone());
            }
            CatalogAgent {
                streams: added,
                ..a.clone()
            }
        };
        self.catalog_send(CatalogOp::Add, vec![entry]);
    }

    /// Withdraws streams of a served agent.
    pub fn withdraw(&self, agent: &ServedAgent, streams: Vec<Token>) {
        let entry = {
            let mut local = self.inner.local.lock().expect("local lock");
            let Some(a) = local.get_mut(&agent.tokens.agent) else {
                return;
            };
            a.streams.retain(|s| !streams.contains(&s.stream));
            CatalogAgent {
                streams: Vec::new(),
                removed: streams.clone(),
                ..a.clone()
            }
        };
        self.catalog_send(CatalogOp::Remove, vec![entry]);
        let mut st = agent.state.lock().expect("served lock");
        let before = st.leases.len();
        let _ = st.leases.forget_streams(&streams);
        let gone = before - st.leases.len();
        self.inner
            .metrics
            .remote_wants
            .dec_by(i64::try_from(gone).unwrap_or(0));
    }

    // ---- wanting side --------------------------------------------------------------------

    /// A ticket for wanting `stream` of `agent`, taken when the want is decided (before any
    /// await): [`Backplane::want`] with it does nothing once [`Backplane::release`] (or a newer
    /// ticket) came in between, so a want and a release always end in the order they were
    /// decided.
    pub fn want_ticket(&self, agent: &Token, stream: &Token) -> u64 {
        let mut w = self.inner.wanting.lock().expect("wanting lock");
        w.tickets += 1;
        let t = w.tickets;
        w.pending.insert((*agent, *stream), t);
        t
    }

    /// Whether `ticket` still stands (neither released nor replaced, nor done).
    pub fn ticket_stands(&self, agent: &Token, stream: &Token, ticket: u64) -> bool {
        let w = self.inner.wanting.lock().expect("wanting lock");
        w.pending.get(&(*agent, *stream)) == Some(&ticket)
    }

    /// Wants a stream of another relay's agent under `ticket` ([`Backplane::want_ticket`]):
    /// subscribes its data subject first (so the first batch cannot be missed), then leases
    /// it at once, and refreshes the lease until [`Backplane::release`]. Batches, holes and
    /// answers go to `sink`. A ticket that no longer stands (released meanwhile) wants nothing.
    /// `first`: what the first watcher brings, for the owner to open the live demand with if
    /// the lease opens it.
    pub async fn want(
        &self,
        agent: AgentTokens,
        stream: Token,
        ticket: u64,
        sink: Arc<dyn RemoteSink>,
        first: LeaseFirst,
    ) -> Result<(), BackplaneError> {
        {
            let mut w = self.inner.wanting.lock().expect("wanting lock");
            if w.pending.get(&(agent.agent, stream)) != Some(&ticket) {
                return Ok(());
            }
            if w.streams.contains_key(&(agent.agent, stream)) {
                w.pending.remove(&(agent.agent, stream));
                return Ok(());
            }
        }
        let subscriber = self
            .inner
            .client
            .subscribe(self.inner.subjects.data(&agent, stream))
            .await
            .map_err(|e| BackplaneError::Subscribe(e.to_string()))?;
        {
            let mut w = self.inner.wanting.lock().expect("wanting lock");
            if w.pending.get(&(agent.agent, stream)) != Some(&ticket) {
                // Released while subscribing: the subscription goes with `subscriber`.
                return Ok(());
            }
            w.pending.remove(&(agent.agent, stream));
        }
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        let task = tokio::spawn(receive_data(
            self.inner.clone(),
            stream,
            subscriber,
            tracker.clone(),
            sink.clone(),
        ))
        .abort_handle();
        self.inner.metrics.subscriptions.inc();
        {
            let mut w = self.inner.wanting.lock().expect("wanting lock");
            w.agents.insert(agent.agent, agent);
            w.wants.want(agent.agent, stream);
            w.streams.insert(
                (agent.agent, stream),
                Wanted {
                    task,
                    tracker,
                    sink,
                    first: (!first.is_empty()).then_some(first),
                },
            );
        }
        self.inner.wants_wake.notify_one();
        Ok(())
    }

    /// Releases a wanted stream (the hub calls it after its linger): unsubscribes, and tells
    /// the owner at once.
    pub fn release(&self, agent: &Token, stream: &Token) {
        let removed = {
            let mut w = self.inner.wanting.lock().expect("wanting lock");
            w.pending.remove(&(*agent, *stream));
            w.wants.release(*agent, *stream);
            w.streams.remove(&(*agent, *stream))
        };
        if removed.is_some() {
            self.inner.metrics.subscriptions.dec();
        }
        self.inner.wants_wake.notify_one();
    }

    /// Asks the relay holding `agent` for lines of `stream` from its ring (one request, one
    /// reply of at most [`Backplane::max_message_bytes`]; a long backlog takes several, each
    /// from the previous reply's `next`).
    pub async fn backfill(
        &self,
        agent: &AgentTokens,
        stream: Token,
        ask: BackfillAsk,
    ) -> Result<BackfillReply, BackfillError> {
        let inner = &self.inner;
        let max = self.max_message_bytes();
        let msg = codec::encode_control(&Control::Backfill {
            v: u32::from(codec::VERSION),
            relay: inner.relay,
            agent: agent.agent,
            stream,
            ask,
            max_bytes: max as u64,
        });
        #[allow(clippy::disallowed_methods, reason = "the shell times a NATS request")]
        let started = tokio::time::Instant::now();
        inner.metrics.message_out("control", msg.len());
        let answer = inner
            .client
            .send_request(
                inner.subjects.demand(agent),
                async_nats::Request::new()
                    .payload(msg)
                    .timeout(Some(Duration::from_millis(
                        inner.config.nats_request_timeout_ms.max(1),
                    ))),
            )
            .await;
        inner
            .metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        let reply = answer.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => BackfillError::Away,
            _ => BackfillError::Unavailable(e.to_string()),
        })?;
        inner.metrics.message_in("control", reply.payload.len());
        codec::decode_backfill_reply(&reply.payload, max.max(64 * 1024))
            .inspect_err(|_| {
                inner.metrics.decode_errors.inc();
            })
            .map_err(BackfillError::from)
    }

    /// Streams wanted now.
    pub fn wanted(&self) -> usize {
        self.inner
            .wanting
            .lock()
            .expect("wanting lock")
            .streams
            .len()
    }

    // ---- catalog -------------------------------------------------------------------------

    /// Other relays' streams now (the winning announcement of each agent).
    pub fn remote_streams(&self) -> Vec<RemoteStream> {
        let remote = self.inner.remote.lock().expect("remote lock");
        let subjects = &self.inner.subjects;
        remote
            .visible()
            .flat_map(|(_, a, relay)| {
                let agent = subjects.agent(&a.org, &a.cluster, &a.node);
                a.streams
                    .iter()
                    .map(move |(stream, labels)| RemoteStream {
                        agent,
                        stream: *stream,
                        labels: labels.clone(),
                        relay,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Calls `sink` with every change of the shared catalog from now on.
    pub fn watch_catalog(&self, sink: Arc<dyn CatalogSink>) {
        self.inner
            .catalog_sinks
            .lock()
            .expect("sinks lock")
            .push(sink);
    }
}

/// [`Backplane::max_message_bytes`].
fn max_message_bytes(inner: &Inner) -> usize {
    let server = inner.client.max_payload();
    if server > 0 {
        inner.max_payload.store(server, Ordering::Relaxed);
    }
    match inner.max_payload.load(Ordering::Relaxed) {
        0 => inner.config.nats_max_message_bytes,
        m => m.min(inner.config.nats_max_message_bytes),
    }
}

fn send(inner: &Inner, subject: String, payload: Bytes, data: bool) -> bool {
    let pushed = inner.out.lock().expect("out lock").push(Outgoing {
        subject,
        payload,
        data,
    });
    if pushed.dropped_messages > 0 {
        inner
            .metrics
            .dropped_messages
            .inc_by(pushed.dropped_messages);
        inner.metrics.dropped_bytes.inc_by(pushed.dropped_bytes);
    }
    if pushed.queued {
        inner.wake.notify_one();
    }
    pushed.queued
}

/// Heartbeats, and this relay's catalog snapshot every fifth one.
async fn heartbeats(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        inner.config.nats_heartbeat_ms.max(10),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let mut generation = 0u64;
    loop {
        tick.tick().await;
        let agents: Vec<CatalogAgent> = inner
            .local
            .lock()
            .expect("local lock")
            .values()
            .cloned()
            .collect();
        let beat = Control::Heartbeat {
            v: u32::from(codec::VERSION),
            relay: inner.relay,
            relay_id: inner.relay_id.clone(),
            agents: agents.len() as u64,
        };
        send(
            &inner,
            inner.subjects.heartbeat(inner.relay),
            codec::encode_control(&beat),
            false,
        );
        if n.is_multiple_of(5) {
            generation += 1;
            let max = inner
                .config
                .nats_max_message_bytes
                .min(match inner.client.max_payload() {
                    0 => usize::MAX,
                    m => m,
                });
            let (msgs, _) =
                codec::catalog_messages(inner.relay, CatalogOp::Snapshot, generation, agents, max);
            for m in msgs {
                send(&inner, inner.subjects.catalog(inner.relay), m, false);
            }
        }
        n += 1;
        let changes = {
            let mut remote = inner.remote.lock().expect("remote lock");
            let now = inner.clock.now_ms();
            if !*inner.connected.borrow() {
                // The silence is this relay's, not the others': they do not expire.
                remote.deaf(now);
            }
            remote.expire(now)
        };
        publish_catalog(&inner, changes);
    }
}

fn publish_catalog(inner: &Inner, changes: Vec<catalog::Change>) {
    {
        let remote = inner.remote.lock().expect("remote lock");
        inner
            .metrics
            .remote_streams
            .set(i64::try_from(remote.len()).unwrap_or(i64::MAX));
        inner
            .metrics
            .remote_relays
            .set(i64::try_from(remote.relays()).unwrap_or(i64::MAX));
    }
    if changes.is_empty() {
        return;
    }
    // An agent that appeared with a higher epoch elsewhere: wants are re-sent to it at once.
    {
        let mut w = inner.wanting.lock().expect("wanting lock");
        for c in &changes {
            if let catalog::Change::Added { agent, .. } = c {
                w.wants.resend(*agent);
            }
        }
    }
    inner.wants_wake.notify_one();
    let sinks: Vec<_> = inner.catalog_sinks.lock().expect("sinks lock").clone();
    for s in sinks {
        s.changed(changes.clone());
    }
}

/// Other relays' catalogs and heartbeats.
async fn catalog_in<S>(inner: Arc<Inner>, mut messages: S)
where
    S: futures_util::Stream<Item = async_nats::Message> + Unpin,
{
    // A snapshot part can be as large as the largest message a relay sends.
    let max = inner.config.nats_max_message_bytes.max(1024 * 1024);
    while let Some(msg) = messages.next().await {
        inner.metrics.message_in("control", msg.payload.len());
        let now = inner.clock.now_ms();
        let changes = match codec::decode_control(&msg.payload, max) {
            Ok(Control::Heartbeat { relay, .. }) => {
                inner.remote.lock().expect("remote lock").heard(now, relay);
                Vec::new()
            }
            Ok(Control::Catalog {
                relay,
                op,
                generation,
                part,
                parts,
                agents,
                ..
            }) => inner.remote.lock().expect("remote lock").apply(
                now,
                relay,
                op,
                generation,
                part.saturating_add(1) >= parts,
                agents,
            ),
            Ok(_) => Vec::new(),
            Err(e) => {
                inner.metrics.decode_errors.inc();
                tracing::warn!(error = %e, "backplane: unreadable catalog message");
                Vec::new()
            }
        };
        publish_catalog(&inner, changes);
    }
}
