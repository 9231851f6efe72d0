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
pub mod epoch;
pub mod holes;
pub mod lease;
pub mod queue;
pub mod subject;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
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
use codec::{CatalogAgent, CatalogOp, CatalogStream, Control, DataHeader, StreamTop};
use holes::{Hole, Seen, Top, Tracker};
use lease::{Change, Leases, Wants};
use queue::{OutQueue, Outgoing};
use subject::{AgentTokens, Subjects, Token};

/// Backplane configuration (flags `--nats-*`, `--relay-id`; environment `LOGRELAY_RELAY_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct BackplaneConfig {
    /// NATS server URL (`nats://host:4222`, or `tls://host:4222` to require TLS); repeat the
    /// flag for the servers of a NATS cluster (space-separated in the environment). Without
    /// it the relay runs alone, with no backplane.
    #[arg(
        long = "nats-url",
        env = "LOGRELAY_RELAY_NATS_URLS",
        value_delimiter = ' '
    )]
    pub nats_urls: Vec<String>,
    /// This relay's id on the backplane, unique among the relays of a deployment (default:
    /// the host name, which is the pod name in Kubernetes).
    #[arg(long, env = "LOGRELAY_RELAY_ID")]
    pub relay_id: Option<String>,
    /// First token(s) of every backplane subject: one per deployment sharing a NATS account
    /// (`A-Z a-z 0-9 _ -` tokens separated by dots, at most 64 bytes).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_SUBJECT_PREFIX",
        default_value = "logrelay"
    )]
    pub nats_subject_prefix: String,
    /// PEM bundle of the CAs the NATS servers' certificates must chain to (TLS is then
    /// required).
    #[arg(long, env = "LOGRELAY_RELAY_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with `--nats-key-file`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_CERT_FILE",
        requires = "nats_key_file"
    )]
    pub nats_cert_file: Option<PathBuf>,
    /// PEM private key of `--nats-cert-file`.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_KEY_FILE",
        requires = "nats_cert_file"
    )]
    pub nats_key_file: Option<PathBuf>,
    /// NATS user name (with `--nats-password`).
    #[arg(long, env = "LOGRELAY_RELAY_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password of `--nats-user`.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_PASSWORD",
        requires = "nats_user",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "LOGRELAY_RELAY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (`.creds`: a user JWT and its NKey seed, for NATS accounts).
    #[arg(long, env = "LOGRELAY_RELAY_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU…`) to authenticate with.
    #[arg(long, env = "LOGRELAY_RELAY_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// Bytes of messages queued toward NATS; when full, the oldest batches are dropped
    /// (counted, and seen by the receiving relays as exact gaps).
    #[arg(long, env = "LOGRELAY_RELAY_NATS_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub nats_queue_bytes: usize,
    /// Messages the NATS client buffers per subscription before it drops (a slow-consumer
    /// event, turned into gaps).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_SUBSCRIPTION_CAPACITY",
        default_value_t = 4096
    )]
    pub nats_subscription_capacity: usize,
    /// Largest backplane message, in bytes (also capped at the server's `max_payload`, read at
    /// connect); a larger batch is not published and its receivers see a gap.
    #[arg(long, env = "LOGRELAY_RELAY_NATS_MAX_MESSAGE_BYTES", default_value_t = 512 * 1024)]
    pub nats_max_message_bytes: usize,
    /// Deadline of a lease request, in milliseconds.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_REQUEST_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub nats_request_timeout_ms: u64,
    /// Milliseconds between lease refreshes (one message per wanting relay and agent).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_LEASE_REFRESH_MS",
        default_value_t = 3_000
    )]
    pub nats_lease_refresh_ms: u64,
    /// A lease not refreshed for this many milliseconds expires (about three refreshes).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_LEASE_TTL_MS",
        default_value_t = 10_000
    )]
    pub nats_lease_ttl_ms: u64,
    /// Milliseconds between this relay's heartbeats; its catalog snapshot goes out every
    /// fifth heartbeat.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_HEARTBEAT_MS",
        default_value_t = 3_000
    )]
    pub nats_heartbeat_ms: u64,
    /// Another relay not heard for this many milliseconds has its streams dropped from the
    /// shared catalog.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_RELAY_EXPIRY_MS",
        default_value_t = 10_000
    )]
    pub nats_relay_expiry_ms: u64,
    /// Streams of other relays kept in the shared catalog; announcements beyond are refused.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_NATS_MAX_REMOTE_STREAMS",
        default_value_t = 200_000
    )]
    pub nats_max_remote_streams: usize,
}

impl Default for BackplaneConfig {
    /// No backplane; the other settings at their defaults.
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            relay_id: None,
            nats_subject_prefix: "logrelay".into(),
            nats_ca_file: None,
            nats_cert_file: None,
            nats_key_file: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds_file: None,
            nats_nkey_file: None,
            nats_queue_bytes: 16 * 1024 * 1024,
            nats_subscription_capacity: 4096,
            nats_max_message_bytes: 512 * 1024,
            nats_request_timeout_ms: 2_000,
            nats_lease_refresh_ms: 3_000,
            nats_lease_ttl_ms: 10_000,
            nats_heartbeat_ms: 3_000,
            nats_relay_expiry_ms: 10_000,
            nats_max_remote_streams: 200_000,
        }
    }
}

impl BackplaneConfig {
    /// True when a backplane is configured.
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    /// `--relay-id`, or the host name.
    pub fn relay_id(&self) -> String {
        self.relay_id.clone().unwrap_or_else(host_name)
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `relay`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "relay".into())
}

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
    /// linger, unless local sessions watch it).
    fn changed(&self, change: Change);
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
}

#[derive(Debug)]
struct Wanted {
    task: AbortHandle,
    tracker: Arc<Mutex<Tracker>>,
    sink: Arc<dyn RemoteSink>,
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds the NATS client options: credentials, TLS, capacities.
fn options(config: &BackplaneConfig) -> Result<async_nats::ConnectOptions, BackplaneError> {
    let methods = [
        config.nats_user.is_some(),
        config.nats_token.is_some(),
        config.nats_creds_file.is_some(),
        config.nats_nkey_file.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(BackplaneError::Config(
            "give one of --nats-user/--nats-password, --nats-token, --nats-creds-file, \
             --nats-nkey-file"
                .into(),
        ));
    }
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| BackplaneError::Credentials {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut opts = async_nats::ConnectOptions::new();
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.nats_token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &config.nats_creds_file {
        let creds = read(path)?;
        opts = opts
            .credentials(&creds)
            .map_err(|e| BackplaneError::Credentials {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    if let Some(path) = &config.nats_nkey_file {
        let seed = read(path)?.trim().to_owned();
        if !seed.starts_with('S') {
            return Err(BackplaneError::Credentials {
                path: path.display().to_string(),
                reason: "not an NKey seed (it starts with S)".into(),
            });
        }
        opts = opts.nkey(seed);
    }
    let tls_url = config.nats_urls.iter().any(|u| u.starts_with("tls://"));
    if config.nats_ca_file.is_some() || config.nats_cert_file.is_some() || tls_url {
        let roots = match &config.nats_ca_file {
            Some(ca) => logrelay_tls::roots_from_pem_file(ca)?,
            None => {
                return Err(BackplaneError::Config(
                    "TLS to NATS needs --nats-ca-file (the CAs the servers' certificates \
                     chain to)"
                        .into(),
                ));
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(logrelay_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(logrelay_tls::TlsError::from)?
            .with_root_certificates(roots);
        let tls = match (&config.nats_cert_file, &config.nats_key_file) {
            (Some(cert), Some(key)) => {
                let id = logrelay_tls::Identity::from_pem_files(cert, key)?;
                builder
                    .with_client_auth_cert(id.chain, id.key)
                    .map_err(logrelay_tls::TlsError::from)?
            }
            _ => builder.with_no_client_auth(),
        };
        opts = opts.require_tls(true).tls_client_config(tls);
    }
    for url in &config.nats_urls {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| BackplaneError::Config(format!("--nats-url {url}: {e}")))?;
    }
    Ok(opts
        .subscription_capacity(config.nats_subscription_capacity.max(1))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_millis(
            config.nats_request_timeout_ms.max(1),
        )))
        // Never give up: the relay serves its own agents and sessions meanwhile.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100u64 << attempt.min(5)).min(2_000))
        })
        // A relay does not receive its own catalog and heartbeats.
        .no_echo())
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
        let server = self.inner.client.max_payload();
        if server > 0 {
            self.inner.max_payload.store(server, Ordering::Relaxed);
        }
        match self.inner.max_payload.load(Ordering::Relaxed) {
            0 => self.inner.config.nats_max_message_bytes,
            m => m.min(self.inner.config.nats_max_message_bytes),
        }
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

    /// Wants a stream of another relay's agent: subscribes its data subject first (so the
    /// first batch cannot be missed), then leases it at once, and refreshes the lease until
    /// [`Backplane::release`]. Batches, holes and answers go to `sink`.
    pub async fn want(
        &self,
        agent: AgentTokens,
        stream: Token,
        sink: Arc<dyn RemoteSink>,
    ) -> Result<(), BackplaneError> {
        if self
            .inner
            .wanting
            .lock()
            .expect("wanting lock")
            .streams
            .contains_key(&(agent.agent, stream))
        {
            return Ok(());
        }
        let subscriber = self
            .inner
            .client
            .subscribe(self.inner.subjects.data(&agent, stream))
            .await
            .map_err(|e| BackplaneError::Subscribe(e.to_string()))?;
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
            w.wants.release(*agent, *stream);
            w.streams.remove(&(*agent, *stream))
        };
        if removed.is_some() {
            self.inner.metrics.subscriptions.dec();
        }
        self.inner.wants_wake.notify_one();
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

/// One agent served by this relay on the backplane.
#[derive(Debug)]
pub struct ServedAgent {
    backplane: Backplane,
    tokens: AgentTokens,
    conn_epoch: u64,
    state: Arc<Mutex<Served>>,
    task: AbortHandle,
}

#[derive(Debug)]
struct Served {
    leases: Leases,
    streams: HashMap<Token, Published>,
}

/// What was published of one stream.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    pub_seq: u64,
    bytes: u64,
    top: Option<SeqPos>,
}

impl ServedAgent {
    /// The agent's tokens.
    pub fn tokens(&self) -> AgentTokens {
        self.tokens
    }

    /// Its connection epoch.
    pub fn conn_epoch(&self) -> u64 {
        self.conn_epoch
    }

    /// Whether some other relay leases `stream`.
    pub fn wanted(&self, stream: &Token) -> bool {
        self.state
            .lock()
            .expect("served lock")
            .leases
            .wanted(stream)
    }

    /// Called with every batch the agent sends for `stream` (lines `first..end_seq`): numbers
    /// it, records the stream's top, and publishes it if some other relay leases it. True if it
    /// was queued for NATS.
    pub fn publish(&self, stream: Token, first: SeqPos, end_seq: u64, batch: &[u8]) -> bool {
        let inner = &self.backplane.inner;
        let header = {
            let mut st = self.state.lock().expect("served lock");
            let wanted = st.leases.wanted(&stream);
            let p = st.streams.entry(stream).or_default();
            p.top = Some(SeqPos {
                epoch: first.epoch,
                seq: end_seq,
            });
            // Every batch is numbered, published or not: a relay whose lease lapsed (NATS was
            // away) and came back sees what it was not sent as an exact gap.
            p.pub_seq += 1;
            let header = DataHeader {
                relay: inner.relay,
                conn_epoch: self.conn_epoch,
                pub_seq: p.pub_seq,
                bytes_before: p.bytes,
                first,
                end_seq,
            };
            p.bytes += batch.len() as u64;
            if !wanted {
                return false;
            }
            header
        };
        if codec::DATA_HEADER_BYTES + batch.len() > self.backplane.max_message_bytes() {
            // Too large for NATS: its pub_seq is skipped, so receivers see an exact gap.
            inner.metrics.dropped_messages.inc();
            inner.metrics.dropped_bytes.inc_by(batch.len() as u64);
            return false;
        }
        let msg = codec::encode_data(&header, batch);
        self.backplane
            .send(inner.subjects.data(&self.tokens, stream), msg, true)
    }
}

impl Drop for ServedAgent {
    fn drop(&mut self) {
        self.task.abort();
        let n = self.state.lock().map(|s| s.leases.len()).unwrap_or(0);
        self.backplane
            .inner
            .metrics
            .remote_wants
            .dec_by(i64::try_from(n).unwrap_or(0));
        let entry = {
            let mut local = self.backplane.inner.local.lock().expect("local lock");
            match local.get(&self.tokens.agent) {
                Some(a) if a.conn_epoch == self.conn_epoch => local.remove(&self.tokens.agent),
                _ => None,
            }
        };
        if let Some(a) = entry {
            self.backplane.withdraw_agent_msg(&a);
        }
    }
}

/// Sends what is queued toward NATS, in order.
async fn pump(inner: Arc<Inner>) {
    loop {
        let next = inner.out.lock().expect("out lock").pop();
        let Some(m) = next else {
            inner.metrics.queue_bytes.set(0);
            inner.wake.notified().await;
            continue;
        };
        inner
            .metrics
            .queue_bytes
            .set(i64::try_from(inner.out.lock().expect("out lock").bytes()).unwrap_or(i64::MAX));
        let len = m.payload.len();
        let kind = if m.data { "data" } else { "control" };
        match inner.client.publish(m.subject, m.payload).await {
            Ok(()) => inner.metrics.message_out(kind, len),
            Err(e) => {
                inner.metrics.dropped_messages.inc();
                inner.metrics.dropped_bytes.inc_by(len as u64);
                tracing::warn!(error = %e, "backplane: publish failed");
            }
        }
    }
}

/// Answers leases on one served agent's demand subject, and expires them.
async fn serve_demand(
    inner: Arc<Inner>,
    tokens: AgentTokens,
    conn_epoch: u64,
    state: Arc<Mutex<Served>>,
    owner: Arc<dyn Owner>,
    mut subscriber: async_nats::Subscriber,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        (inner.config.nats_lease_refresh_ms / 2).max(10),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max = inner.config.nats_max_message_bytes.max(64 * 1024);
    loop {
        let (changes, delta) = tokio::select! {
            msg = subscriber.next() => {
                let Some(msg) = msg else { return };
                inner.metrics.message_in("control", msg.payload.len());
                let lease = match codec::decode_control(&msg.payload, max) {
                    Ok(Control::Lease { relay, agent, streams, .. }) if agent == tokens.agent => (relay, streams),
                    Ok(other) => {
                        tracing::debug!(?other, "backplane: unexpected message on a demand subject");
                        continue;
                    }
                    Err(e) => {
                        inner.metrics.decode_errors.inc();
                        tracing::warn!(error = %e, "backplane: unreadable lease");
                        continue;
                    }
                };
                let (relay, streams) = lease;
                // Stream ids are looked up only among this agent's announced streams: a lease
                // on anything else is answered `known: false` and holds nothing here.
                let known: Vec<bool> = {
                    let local = inner.local.lock().expect("local lock");
                    let announced: HashSet<Token> = local
                        .get(&tokens.agent)
                        .map(|a| a.streams.iter().map(|x| x.stream).collect())
                        .unwrap_or_default();
                    streams.iter().map(|s| announced.contains(s)).collect()
                };
                let leased: Vec<Token> = streams
                    .iter()
                    .zip(&known)
                    .filter_map(|(s, k)| k.then_some(*s))
                    .collect();
                let mut st = state.lock().expect("served lock");
                let before = st.leases.len();
                let changes = st.leases.lease(inner.clock.now_ms(), relay, tokens.agent, &leased);
                let delta = st.leases.len() as i64 - before as i64;
                let tops = streams
                    .iter()
                    .zip(known)
                    .map(|(s, known)| {
                        let p = st.streams.get(s).copied().unwrap_or_default();
                        StreamTop { stream: *s, known, top: p.top, pub_seq: p.pub_seq, bytes: p.bytes }
                    })
                    .collect();
                drop(st);
                if let Some(reply) = msg.reply {
                    let answer = Control::LeaseReply {
                        v: u32::from(codec::VERSION),
                        relay: inner.relay,
                        conn_epoch,
                        streams: tops,
                    };
                    // Through the same queue as the data: a reply follows what was published
                    // before it.
                    send(&inner, reply.to_string(), codec::encode_control(&answer), false);
                }
                (changes, delta)
            }
            _ = tick.tick() => {
                let mut st = state.lock().expect("served lock");
                let before = st.leases.len();
                let changes = st.leases.expire(inner.clock.now_ms());
                (changes, st.leases.len() as i64 - before as i64)
            }
        };
        inner.metrics.remote_wants.inc_by(delta);
        for c in changes {
            owner.changed(c);
        }
    }
}

/// Receives one wanted stream's batches, finds holes, hands them on.
async fn receive_data(
    inner: Arc<Inner>,
    stream: Token,
    mut subscriber: async_nats::Subscriber,
    tracker: Arc<Mutex<Tracker>>,
    sink: Arc<dyn RemoteSink>,
) {
    let mut slow_seen = inner.slow_events.load(Ordering::Relaxed);
    while let Some(msg) = subscriber.next().await {
        inner.metrics.message_in("data", msg.payload.len());
        let (header, batch) = match codec::decode_data(&msg.payload) {
            Ok(x) => x,
            Err(e) => {
                inner.metrics.decode_errors.inc();
                tracing::warn!(error = %e, "backplane: unreadable data message");
                continue;
            }
        };
        let seen = tracker
            .lock()
            .expect("tracker lock")
            .observe(&header, batch.len() as u64);
        match seen {
            Seen::InOrder => sink.batch(stream, &header, batch, 0),
            Seen::Overlap { repeated } => sink.batch(stream, &header, batch, repeated),
            Seen::AfterHole(hole) => {
                let slow = inner.slow_events.load(Ordering::Relaxed);
                let reason = if slow != slow_seen {
                    "backplane_slow_consumer"
                } else {
                    "backplane_lost"
                };
                slow_seen = slow;
                inner.metrics.gap(reason, hole.lines);
                sink.hole(stream, hole, reason);
                sink.batch(stream, &header, batch, 0);
            }
            Seen::Stale => {}
        }
    }
}

/// Sends the lease messages that are due, and hands the answers on.
async fn leases(inner: Arc<Inner>) {
    let refresh = Duration::from_millis(inner.config.nats_lease_refresh_ms.max(10));
    loop {
        let due = {
            let mut w = inner.wanting.lock().expect("wanting lock");
            let due = w.wants.due(inner.clock.now_ms());
            due.into_iter()
                .filter_map(|(agent, streams)| w.agents.get(&agent).map(|t| (*t, streams)))
                .collect::<Vec<_>>()
        };
        for (agent, streams) in due {
            let inner = inner.clone();
            // Each agent's request on its own: a slow owner delays nobody else.
            tokio::spawn(async move { lease_once(&inner, agent, streams).await });
        }
        tokio::select! {
            () = inner.wants_wake.notified() => {}
            () = tokio::time::sleep(refresh / 4) => {}
        }
    }
}

async fn lease_once(inner: &Inner, agent: AgentTokens, streams: Vec<Token>) {
    let msg = codec::encode_control(&Control::Lease {
        v: u32::from(codec::VERSION),
        relay: inner.relay,
        agent: agent.agent,
        streams: streams.clone(),
    });
    #[allow(clippy::disallowed_methods, reason = "the shell times a NATS request")]
    let started = tokio::time::Instant::now();
    inner.metrics.message_out("control", msg.len());
    let answer = inner
        .client
        .send_request(
            inner.subjects.demand(&agent),
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
    let sinks = |w: &Wanting| {
        streams
            .iter()
            .filter_map(|s| {
                w.streams
                    .get(&(agent.agent, *s))
                    .map(|x| (*s, x.sink.clone(), x.tracker.clone()))
            })
            .collect::<Vec<_>>()
    };
    let targets = sinks(&inner.wanting.lock().expect("wanting lock"));
    match answer {
        Ok(reply) => {
            inner.metrics.message_in("control", reply.payload.len());
            let max = inner.config.nats_max_message_bytes.max(64 * 1024);
            match codec::decode_control(&reply.payload, max) {
                Ok(Control::LeaseReply {
                    relay,
                    conn_epoch,
                    streams: tops,
                    ..
                }) => {
                    for (stream, sink, tracker) in targets {
                        let Some(top) = tops.iter().find(|t| t.stream == stream) else {
                            continue;
                        };
                        let hole = tracker.lock().expect("tracker lock").check_top(Top {
                            relay,
                            conn_epoch,
                            pub_seq: top.pub_seq,
                            bytes: top.bytes,
                            end: top.top,
                        });
                        if let Some(hole) = hole {
                            inner.metrics.gap("backplane_lost", hole.lines);
                            sink.hole(stream, hole, "backplane_lost");
                        }
                        sink.answer(
                            stream,
                            Answer::Top {
                                relay,
                                conn_epoch,
                                top: top.clone(),
                            },
                        );
                    }
                }
                Ok(_) | Err(_) => {
                    inner.metrics.decode_errors.inc();
                }
            }
        }
        Err(e) => {
            let answer = match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Answer::Away,
                _ => Answer::Unavailable,
            };
            if answer == Answer::Unavailable {
                tracing::debug!(error = %e, "backplane: lease request failed");
            }
            for (stream, sink, _) in targets {
                sink.answer(stream, answer.clone());
            }
        }
    }
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
        let changes = inner
            .remote
            .lock()
            .expect("remote lock")
            .expire(inner.clock.now_ms());
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
