//! Agent configuration: one typed struct, filled from flags or environment (`LOGRELAY_AGENT_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Agent configuration. Units are in the field names.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Directory kubelet writes pod logs to (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long, env = "LOGRELAY_AGENT_PODS_DIR", default_value = "/var/log/pods")]
    pub pods_dir: PathBuf,
    /// Relay QUIC address, `host:port`, resolved at every connection attempt. Repeat the flag
    /// (space-separated in the environment), or give a name resolving to several addresses,
    /// for several relays: the agent dials one and moves to the next when it dies or drains.
    #[arg(
        long = "relay-addr",
        env = "LOGRELAY_AGENT_RELAY_ADDR",
        value_delimiter = ' ',
        default_value = "127.0.0.1:4433"
    )]
    pub relay_addrs: Vec<String>,
    /// Name the relay's certificate must carry.
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_NAME", default_value = "localhost")]
    pub relay_name: String,
    /// Node name reported in stream labels.
    #[arg(long, env = "LOGRELAY_AGENT_NODE_NAME", default_value = "local")]
    pub node_name: String,
    /// Address of the admin listener (`/metrics`, `/healthz`).
    #[arg(
        long,
        env = "LOGRELAY_AGENT_ADMIN_ADDR",
        default_value = "127.0.0.1:9601"
    )]
    pub admin_addr: SocketAddr,
    /// How often the pods directory is rescanned when inotify is not available (with it, new
    /// pods and containers are seen at once, and this paces rescans of directories still
    /// settling).
    #[arg(long, env = "LOGRELAY_AGENT_RESCAN_MS", default_value_t = 250)]
    pub rescan_ms: u64,
    /// With inotify: how often every container directory is rescanned anyway (the safety net,
    /// and how container restarts, `1.log`, `2.log`…, are found).
    #[arg(long, env = "LOGRELAY_AGENT_RESYNC_MS", default_value_t = 2_000)]
    pub resync_ms: u64,
    /// How often a followed file is checked for growth once it is idle, when inotify cannot
    /// watch its directory (with inotify a write wakes the follower, which then polls every
    /// max(this, 250 ms) only as a safety net).
    #[arg(long, env = "LOGRELAY_AGENT_FOLLOW_POLL_MS", default_value_t = 10)]
    pub follow_poll_ms: u64,
    /// A batch is sent once it holds this many bytes.
    #[arg(long, env = "LOGRELAY_AGENT_MAX_BATCH_BYTES", default_value_t = 64 * 1024)]
    pub max_batch_bytes: usize,
    /// Longest line kept whole; longer lines are truncated and flagged.
    #[arg(long, env = "LOGRELAY_AGENT_MAX_LINE_BYTES", default_value_t = 1024 * 1024)]
    pub max_line_bytes: usize,
    /// First reconnect delay after the relay goes away (doubles up to `reconnect_max_ms`).
    #[arg(long, env = "LOGRELAY_AGENT_RECONNECT_MIN_MS", default_value_t = 100)]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_RECONNECT_MAX_MS",
        default_value_t = 10_000
    )]
    pub reconnect_max_ms: u64,
    /// Milliseconds between QUIC keep-alive PINGs to the relay (at most half the idle timeout).
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_KEEP_ALIVE_MS", default_value_t = logrelay_tls::QUIC_KEEP_ALIVE_MS)]
    pub relay_keep_alive_ms: u64,
    /// The relay connection is dead once silent this many milliseconds, and the agent
    /// reconnects (the smaller of this and the relay's `--agent-idle-timeout-ms` applies).
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_IDLE_TIMEOUT_MS", default_value_t = logrelay_tls::QUIC_IDLE_TIMEOUT_MS)]
    pub relay_idle_timeout_ms: u64,
    /// A static scrape target, `URL[,key=value…]` (`http://` or `https://`) with keys `name`,
    /// `interval_ms`, `timeout_ms`, `sample_limit`, `max_body_bytes`, `ca_file`, `server_name`,
    /// `insecure_skip_verify`, `bearer_token_file` (repeat the flag; space-separated in the
    /// environment). Scraped only while someone watches its stream.
    #[arg(
        long = "scrape-target",
        env = "LOGRELAY_AGENT_SCRAPE_TARGETS",
        value_delimiter = ' '
    )]
    pub scrape_targets: Vec<crate::scrape::StaticTarget>,
    /// Time between scrapes of a watched target that sets no `interval_ms`.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_SCRAPE_INTERVAL_MS",
        default_value_t = 15_000
    )]
    pub scrape_interval_ms: u64,
    /// Time allowed for one scrape (capped at the target's interval).
    #[arg(
        long,
        env = "LOGRELAY_AGENT_SCRAPE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub scrape_timeout_ms: u64,
    /// A scrape exposing more samples than this fails with `up` 0 (Prometheus `sample_limit`);
    /// 0 = no limit.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_SAMPLE_LIMIT", default_value_t = 0)]
    pub scrape_sample_limit: usize,
    /// Largest scrape response body read; a larger one fails the scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub scrape_max_body_bytes: usize,
    /// PEM bundle of the CAs that `https://` scrape targets' certificates must chain to (static
    /// targets without `ca_file=`, and pods annotated `prometheus.io/scheme: https`). Read at
    /// each scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_CA_FILE")]
    pub scrape_ca_file: Option<PathBuf>,
    /// Also trust the cluster's CA for `https://` scrape targets
    /// (`/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_CA_CLUSTER")]
    pub scrape_ca_cluster: bool,
    /// Do not verify the certificates of `https://` scrape targets (static targets without
    /// `insecure_skip_verify=`, and annotated pods): encrypted, but not authenticated. The agent
    /// warns at start-up.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_INSECURE_SKIP_VERIFY")]
    pub scrape_insecure_skip_verify: bool,
    /// File whose content is sent as `Authorization: Bearer` to static scrape targets without
    /// `bearer_token_file=` (never to annotated pods). Read at each scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_BEARER_TOKEN_FILE")]
    pub scrape_bearer_token_file: Option<PathBuf>,
    /// Offer each pod's CPU and memory usage (cgroup v2) as a metrics stream.
    #[arg(long, env = "LOGRELAY_AGENT_RESOURCES", default_value_t = true, action = clap::ArgAction::Set)]
    pub resources: bool,
    /// Mount point of the cgroup v2 hierarchy.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup_root: PathBuf,
    /// kubelet's container log symlinks (`<pod>_<ns>_<container>-<id>.log`), read for
    /// container names.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_CONTAINERS_DIR",
        default_value = "/var/log/containers"
    )]
    pub containers_dir: PathBuf,
    /// Time between resource samples of a watched pod.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_RESOURCES_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub resources_interval_ms: u64,
    /// How often metrics sources (static targets, pod cgroups) are rediscovered.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_METRICS_RESCAN_MS",
        default_value_t = 2_000
    )]
    pub metrics_rescan_ms: u64,
    /// Bytes of encoded batches queued toward the relay, over all followed streams; when full
    /// the oldest are dropped and reported to subscribers as gaps.
    #[arg(long, env = "LOGRELAY_AGENT_QUEUE_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub queue_budget_bytes: usize,
    /// A followed log file that grew but was not read for this long is re-opened.
    #[arg(long, env = "LOGRELAY_AGENT_STALL_AFTER_MS", default_value_t = 5_000)]
    pub stall_after_ms: u64,
    /// A follower no demand drains (the relay dropped it) stops after this long while the relay
    /// is connected (and not before `--resume-grace-ms` after a reconnection); while it is not,
    /// following goes on into the queue budget. A follower the
    /// relay cancelled stops at once; its files, checkpoints and epoch are kept this long, so a
    /// `since_seq` resume within it continues the same numbering.
    #[arg(
        long,
        env = "LOGRELAY_AGENT_DETACH_LINGER_MS",
        default_value_t = 10_000
    )]
    pub detach_linger_ms: u64,
    /// After each (re)connection to the relay, followers no demand drains are kept at least
    /// this long (their epoch, files and queue), so that sessions of a restarted relay can
    /// resubscribe with `since_seq` and lose nothing.
    #[arg(long, env = "LOGRELAY_AGENT_RESUME_GRACE_MS", default_value_t = 30_000)]
    pub resume_grace_ms: u64,
    /// A followed container whose log is removed stays listed until it is read to its end and
    /// sent, plus this long.
    #[arg(long, env = "LOGRELAY_AGENT_DRAIN_LINGER_MS", default_value_t = 1_000)]
    pub drain_linger_ms: u64,
    /// Watch this node's pods in the Kubernetes API and map pod labels onto task identity
    /// (needs an agent built with the `k8s` feature).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_PODS")]
    pub kube_pods: bool,
    /// Kubernetes API URL (default: the in-cluster service account, else kubeconfig).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// Task identity from pod labels: `project=<label>,domain=<label>,run=<label>,
    /// action=<label>,attempt=<label>` (`annotation:<key>` reads an annotation instead).
    #[arg(
        long,
        env = "LOGRELAY_AGENT_TASK_LABELS",
        default_value = crate::kube::DEFAULT_TASK_LABELS
    )]
    pub task_labels: crate::kube::TaskLabels,
}

impl AgentConfig {
    /// Defaults for a given pods directory and relay (tests, the demo).
    pub fn new(pods_dir: PathBuf, relay_addr: SocketAddr) -> Self {
        Self {
            pods_dir,
            relay_addrs: vec![relay_addr.to_string()],
            relay_name: "localhost".into(),
            node_name: "local".into(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rescan_ms: 250,
            resync_ms: 2_000,
            follow_poll_ms: 10,
            max_batch_bytes: 64 * 1024,
            max_line_bytes: 1024 * 1024,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            relay_keep_alive_ms: logrelay_tls::QUIC_KEEP_ALIVE_MS,
            relay_idle_timeout_ms: logrelay_tls::QUIC_IDLE_TIMEOUT_MS,
            scrape_targets: Vec::new(),
            scrape_interval_ms: 15_000,
            scrape_timeout_ms: 10_000,
            scrape_sample_limit: 0,
            scrape_max_body_bytes: 16 * 1024 * 1024,
            scrape_ca_file: None,
            scrape_ca_cluster: false,
            scrape_insecure_skip_verify: false,
            scrape_bearer_token_file: None,
            resources: true,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            containers_dir: PathBuf::from("/var/log/containers"),
            resources_interval_ms: 5_000,
            metrics_rescan_ms: 2_000,
            queue_budget_bytes: 64 * 1024 * 1024,
            stall_after_ms: 5_000,
            detach_linger_ms: 10_000,
            resume_grace_ms: 30_000,
            drain_linger_ms: 1_000,
            kube_pods: false,
            kube_api_url: None,
            task_labels: crate::kube::DEFAULT_TASK_LABELS
                .parse()
                .expect("the default mapping parses"),
        }
    }
}
