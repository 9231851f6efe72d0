//! Agent configuration: one typed struct, filled from flags or environment (`LOGRELAY_AGENT_*`),
//! its flags sectioned per pipeline stage in `--help`. It is the root of the configuration:
//! each stage takes its own config, built here ([`AgentConfig::tailer`], [`AgentConfig::logs`],
//! …), and never sees this struct. Every default is written once, as a constant of the stage it
//! belongs to, and named both by the flags and by [`AgentConfig::new`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::discover::logs::{self, LogsConfig};
use crate::discover::metrics::{self, MetricsConfig};
use crate::kube::{self, Allowlist, KubeConfig, TaskLabels};
use crate::scrape::auth::CLUSTER_CA_FILE;
use crate::scrape::target::{self, ScrapeAuth};
use crate::scrape::{ScrapeDefaults, StaticTarget};
use crate::tail::{self, TailParams, TailerConfig};
use crate::uplink::{self, UplinkConfig};
use crate::{admin, cgroup};

/// Default of `--node-name`.
pub const DEFAULT_NODE_NAME: &str = "local";

/// `--help` section of the relay connection's flags.
const RELAY: &str = "Relay connection";
/// `--help` section of discovery's flags.
const DISCOVERY: &str = "Discovery";
/// `--help` section of the log tail's flags.
const TAIL: &str = "Log tail and queue";
/// `--help` section of scraping's flags.
const SCRAPE: &str = "Scrape targets";
/// `--help` section of pod resource sampling's flags.
const RESOURCES: &str = "Pod resources (cgroup v2)";
/// `--help` section of the Kubernetes pod watch's flags.
const KUBE: &str = "Kubernetes pod metadata";
/// `--help` section of the admin listener's flags.
const ADMIN: &str = "Admin";

/// Agent configuration. Units are in the field names.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    // ----- Relay connection (uplink)
    /// Relay QUIC address, `host:port`, resolved at every connection attempt. Repeat the flag
    /// (space-separated in the environment), or give a name resolving to several addresses,
    /// for several relays: the agent dials one and moves to the next when it dies or drains.
    #[arg(
        long = "relay-addr",
        env = "LOGRELAY_AGENT_RELAY_ADDR",
        value_delimiter = ' ',
        default_value = uplink::DEFAULT_RELAY_ADDR,
        help_heading = RELAY
    )]
    pub relay_addrs: Vec<String>,
    /// Name the relay's certificate must carry.
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_NAME", default_value = uplink::DEFAULT_RELAY_NAME, help_heading = RELAY)]
    pub relay_name: String,
    /// First reconnect delay after the relay goes away (doubles up to `reconnect_max_ms`).
    #[arg(long, env = "LOGRELAY_AGENT_RECONNECT_MIN_MS", default_value_t = uplink::DEFAULT_RECONNECT_MIN_MS, help_heading = RELAY)]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[arg(long, env = "LOGRELAY_AGENT_RECONNECT_MAX_MS", default_value_t = uplink::DEFAULT_RECONNECT_MAX_MS, help_heading = RELAY)]
    pub reconnect_max_ms: u64,
    /// Milliseconds between QUIC keep-alive PINGs to the relay (at most half the idle timeout).
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_KEEP_ALIVE_MS", default_value_t = logrelay_tls::QUIC_KEEP_ALIVE_MS, help_heading = RELAY)]
    pub relay_keep_alive_ms: u64,
    /// The relay connection is dead once silent this many milliseconds, and the agent
    /// reconnects (the smaller of this and the relay's `--agent-idle-timeout-ms` applies).
    #[arg(long, env = "LOGRELAY_AGENT_RELAY_IDLE_TIMEOUT_MS", default_value_t = logrelay_tls::QUIC_IDLE_TIMEOUT_MS, help_heading = RELAY)]
    pub relay_idle_timeout_ms: u64,

    // ----- Discovery (logs and metrics sources)
    /// Node name reported in stream labels.
    #[arg(long, env = "LOGRELAY_AGENT_NODE_NAME", default_value = DEFAULT_NODE_NAME, help_heading = DISCOVERY)]
    pub node_name: String,
    /// Directory kubelet writes pod logs to (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long, env = "LOGRELAY_AGENT_PODS_DIR", default_value = logs::DEFAULT_PODS_DIR, help_heading = DISCOVERY)]
    pub pods_dir: PathBuf,
    /// How often the pods directory is rescanned when inotify is not available (with it, new
    /// pods and containers are seen at once, and this paces rescans of directories still
    /// settling).
    #[arg(long, env = "LOGRELAY_AGENT_RESCAN_MS", default_value_t = logs::DEFAULT_RESCAN_MS, help_heading = DISCOVERY)]
    pub rescan_ms: u64,
    /// With inotify: how often every container directory is rescanned anyway (the safety net,
    /// and how container restarts, `1.log`, `2.log`…, are found).
    #[arg(long, env = "LOGRELAY_AGENT_RESYNC_MS", default_value_t = logs::DEFAULT_RESYNC_MS, help_heading = DISCOVERY)]
    pub resync_ms: u64,
    /// How often metrics sources (static targets, pod cgroups) are rediscovered.
    #[arg(long, env = "LOGRELAY_AGENT_METRICS_RESCAN_MS", default_value_t = metrics::DEFAULT_RESCAN_MS, help_heading = DISCOVERY)]
    pub metrics_rescan_ms: u64,

    // ----- Log tail and queue
    /// How often a followed file is checked for growth once it is idle, when inotify cannot
    /// watch its directory (with inotify a write wakes the follower, which then polls every
    /// max(this, 250 ms) only as a safety net).
    #[arg(long, env = "LOGRELAY_AGENT_FOLLOW_POLL_MS", default_value_t = tail::DEFAULT_FOLLOW_POLL_MS, help_heading = TAIL)]
    pub follow_poll_ms: u64,
    /// A batch is sent once it holds this many bytes.
    #[arg(long, env = "LOGRELAY_AGENT_MAX_BATCH_BYTES", default_value_t = tail::DEFAULT_MAX_BATCH_BYTES, help_heading = TAIL)]
    pub max_batch_bytes: usize,
    /// Longest line kept whole; longer lines are truncated and flagged.
    #[arg(long, env = "LOGRELAY_AGENT_MAX_LINE_BYTES", default_value_t = tail::DEFAULT_MAX_LINE_BYTES, help_heading = TAIL)]
    pub max_line_bytes: usize,
    /// Bytes of encoded batches queued toward the relay, over all followed streams; when full
    /// the oldest are dropped and reported to subscribers as gaps.
    #[arg(long, env = "LOGRELAY_AGENT_QUEUE_BUDGET_BYTES", default_value_t = tail::DEFAULT_QUEUE_BUDGET_BYTES, help_heading = TAIL)]
    pub queue_budget_bytes: usize,
    /// A followed log file that grew but was not read for this long is re-opened.
    #[arg(long, env = "LOGRELAY_AGENT_STALL_AFTER_MS", default_value_t = tail::DEFAULT_STALL_AFTER_MS, help_heading = TAIL)]
    pub stall_after_ms: u64,
    /// A follower no demand drains (the relay dropped it) stops after this long while the relay
    /// is connected (and not before `--resume-grace-ms` after a reconnection); while it is not,
    /// following goes on into the queue budget. A follower the
    /// relay cancelled stops at once; its files, checkpoints and epoch are kept this long, so a
    /// `since_seq` resume within it continues the same numbering.
    #[arg(long, env = "LOGRELAY_AGENT_DETACH_LINGER_MS", default_value_t = tail::DEFAULT_DETACH_LINGER_MS, help_heading = TAIL)]
    pub detach_linger_ms: u64,
    /// After each (re)connection to the relay, followers no demand drains are kept at least
    /// this long (their epoch, files and queue), so that sessions of a restarted relay can
    /// resubscribe with `since_seq` and lose nothing.
    #[arg(long, env = "LOGRELAY_AGENT_RESUME_GRACE_MS", default_value_t = tail::DEFAULT_RESUME_GRACE_MS, help_heading = TAIL)]
    pub resume_grace_ms: u64,
    /// A followed container whose log is removed stays listed until it is read to its end and
    /// sent, plus this long.
    #[arg(long, env = "LOGRELAY_AGENT_DRAIN_LINGER_MS", default_value_t = tail::DEFAULT_DRAIN_LINGER_MS, help_heading = TAIL)]
    pub drain_linger_ms: u64,

    // ----- Scrape targets
    /// A static scrape target, `URL[,key=value…]` (`http://` or `https://`) with keys `name`,
    /// `interval_ms`, `timeout_ms`, `sample_limit`, `max_body_bytes`, `ca_file`, `server_name`,
    /// `insecure_skip_verify`, `bearer_token_file` (repeat the flag; space-separated in the
    /// environment). Scraped only while someone watches its stream.
    #[arg(
        long = "scrape-target",
        env = "LOGRELAY_AGENT_SCRAPE_TARGETS",
        value_delimiter = ' ',
        help_heading = SCRAPE
    )]
    pub scrape_targets: Vec<StaticTarget>,
    /// Time between scrapes of a watched target that sets no `interval_ms`.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_INTERVAL_MS", default_value_t = target::DEFAULT_INTERVAL_MS, help_heading = SCRAPE)]
    pub scrape_interval_ms: u64,
    /// Time allowed for one scrape (capped at the target's interval).
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_TIMEOUT_MS", default_value_t = target::DEFAULT_TIMEOUT_MS, help_heading = SCRAPE)]
    pub scrape_timeout_ms: u64,
    /// A scrape exposing more samples than this fails with `up` 0 (Prometheus `sample_limit`);
    /// 0 = no limit.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_SAMPLE_LIMIT", default_value_t = target::DEFAULT_SAMPLE_LIMIT, help_heading = SCRAPE)]
    pub scrape_sample_limit: usize,
    /// Largest scrape response body read; a larger one fails the scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_MAX_BODY_BYTES", default_value_t = target::DEFAULT_MAX_BODY_BYTES, help_heading = SCRAPE)]
    pub scrape_max_body_bytes: usize,
    /// PEM bundle of the CAs that `https://` scrape targets' certificates must chain to (static
    /// targets without `ca_file=`, and pods annotated `prometheus.io/scheme: https`). Read at
    /// each scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_CA_FILE", help_heading = SCRAPE)]
    pub scrape_ca_file: Option<PathBuf>,
    /// Also trust the cluster's CA for `https://` scrape targets
    /// (`/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_CA_CLUSTER", help_heading = SCRAPE)]
    pub scrape_ca_cluster: bool,
    /// Do not verify the certificates of `https://` scrape targets (static targets without
    /// `insecure_skip_verify=`, and annotated pods): encrypted, but not authenticated. The agent
    /// warns at start-up.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_INSECURE_SKIP_VERIFY", help_heading = SCRAPE)]
    pub scrape_insecure_skip_verify: bool,
    /// File whose content is sent as `Authorization: Bearer` to static scrape targets without
    /// `bearer_token_file=` (never to annotated pods). Read at each scrape.
    #[arg(long, env = "LOGRELAY_AGENT_SCRAPE_BEARER_TOKEN_FILE", help_heading = SCRAPE)]
    pub scrape_bearer_token_file: Option<PathBuf>,

    // ----- Pod resources (cgroup v2)
    /// Offer each pod's CPU and memory usage (cgroup v2) as a metrics stream.
    #[arg(long, env = "LOGRELAY_AGENT_RESOURCES", default_value_t = true, action = clap::ArgAction::Set, help_heading = RESOURCES)]
    pub resources: bool,
    /// Mount point of the cgroup v2 hierarchy.
    #[arg(long, env = "LOGRELAY_AGENT_CGROUP_ROOT", default_value = cgroup::DEFAULT_ROOT, help_heading = RESOURCES)]
    pub cgroup_root: PathBuf,
    /// kubelet's container log symlinks (`<pod>_<ns>_<container>-<id>.log`), read for
    /// container names.
    #[arg(long, env = "LOGRELAY_AGENT_CONTAINERS_DIR", default_value = cgroup::DEFAULT_CONTAINERS_DIR, help_heading = RESOURCES)]
    pub containers_dir: PathBuf,
    /// Time between resource samples of a watched pod.
    #[arg(long, env = "LOGRELAY_AGENT_RESOURCES_INTERVAL_MS", default_value_t = cgroup::DEFAULT_INTERVAL_MS, help_heading = RESOURCES)]
    pub resources_interval_ms: u64,

    // ----- Kubernetes pod metadata
    /// Watch this node's pods in the Kubernetes API and map pod labels onto task identity
    /// (needs an agent built with the `k8s` feature).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_PODS", help_heading = KUBE)]
    pub kube_pods: bool,
    /// Kubernetes API URL (default: the in-cluster service account, else kubeconfig).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_API_URL", help_heading = KUBE)]
    pub kube_api_url: Option<String>,
    /// Task identity from pod labels: `project=<label>,domain=<label>,run=<label>,
    /// action=<label>,attempt=<label>` (`annotation:<key>` reads an annotation instead).
    #[arg(long, env = "LOGRELAY_AGENT_TASK_LABELS", default_value = kube::DEFAULT_TASK_LABELS, help_heading = KUBE)]
    pub task_labels: TaskLabels,
    /// Pod label keys whose values become stream labels `label:<key>`, usable in selectors'
    /// `meta` (comma-separated, at most 16).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_LABEL_ALLOWLIST", default_value = "", help_heading = KUBE)]
    pub kube_label_allowlist: Allowlist,
    /// Pod annotation keys whose values become stream labels `annotation:<key>`, usable in
    /// selectors' `meta` (comma-separated, at most 16).
    #[arg(long, env = "LOGRELAY_AGENT_KUBE_ANNOTATION_ALLOWLIST", default_value = "", help_heading = KUBE)]
    pub kube_annotation_allowlist: Allowlist,

    // ----- Admin
    /// With traces on (`OTEL_*`, see docs/operations.md), at most this many batches a second
    /// are offered to the trace sampler for a per-batch trace (`agent.batch` and the relay's
    /// spans of it); 0 traces no batch.
    #[arg(long, env = "LOGRELAY_AGENT_TRACE_BATCHES_PER_SEC", default_value_t = uplink::DEFAULT_TRACE_BATCHES_PER_SEC, help_heading = ADMIN)]
    pub trace_batches_per_sec: u32,
    /// Address of the admin listener (`/metrics`, `/healthz`).
    #[arg(long, env = "LOGRELAY_AGENT_ADMIN_ADDR", default_value = admin::DEFAULT_ADDR, help_heading = ADMIN)]
    pub admin_addr: SocketAddr,
}

impl Default for AgentConfig {
    /// What the flags default to.
    fn default() -> Self {
        Self {
            relay_addrs: vec![uplink::DEFAULT_RELAY_ADDR.into()],
            relay_name: uplink::DEFAULT_RELAY_NAME.into(),
            reconnect_min_ms: uplink::DEFAULT_RECONNECT_MIN_MS,
            reconnect_max_ms: uplink::DEFAULT_RECONNECT_MAX_MS,
            relay_keep_alive_ms: logrelay_tls::QUIC_KEEP_ALIVE_MS,
            relay_idle_timeout_ms: logrelay_tls::QUIC_IDLE_TIMEOUT_MS,
            node_name: DEFAULT_NODE_NAME.into(),
            pods_dir: logs::DEFAULT_PODS_DIR.into(),
            rescan_ms: logs::DEFAULT_RESCAN_MS,
            resync_ms: logs::DEFAULT_RESYNC_MS,
            metrics_rescan_ms: metrics::DEFAULT_RESCAN_MS,
            follow_poll_ms: tail::DEFAULT_FOLLOW_POLL_MS,
            max_batch_bytes: tail::DEFAULT_MAX_BATCH_BYTES,
            max_line_bytes: tail::DEFAULT_MAX_LINE_BYTES,
            queue_budget_bytes: tail::DEFAULT_QUEUE_BUDGET_BYTES,
            stall_after_ms: tail::DEFAULT_STALL_AFTER_MS,
            detach_linger_ms: tail::DEFAULT_DETACH_LINGER_MS,
            resume_grace_ms: tail::DEFAULT_RESUME_GRACE_MS,
            drain_linger_ms: tail::DEFAULT_DRAIN_LINGER_MS,
            scrape_targets: Vec::new(),
            scrape_interval_ms: target::DEFAULT_INTERVAL_MS,
            scrape_timeout_ms: target::DEFAULT_TIMEOUT_MS,
            scrape_sample_limit: target::DEFAULT_SAMPLE_LIMIT,
            scrape_max_body_bytes: target::DEFAULT_MAX_BODY_BYTES,
            scrape_ca_file: None,
            scrape_ca_cluster: false,
            scrape_insecure_skip_verify: false,
            scrape_bearer_token_file: None,
            resources: true,
            cgroup_root: cgroup::DEFAULT_ROOT.into(),
            containers_dir: cgroup::DEFAULT_CONTAINERS_DIR.into(),
            resources_interval_ms: cgroup::DEFAULT_INTERVAL_MS,
            kube_pods: false,
            kube_api_url: None,
            task_labels: kube::DEFAULT_TASK_LABELS
                .parse()
                .expect("the default mapping parses"),
            kube_label_allowlist: Allowlist::default(),
            kube_annotation_allowlist: Allowlist::default(),
            trace_batches_per_sec: uplink::DEFAULT_TRACE_BATCHES_PER_SEC,
            admin_addr: admin::DEFAULT_ADDR
                .parse()
                .expect("the default address parses"),
        }
    }
}

impl AgentConfig {
    /// The defaults, for a given pods directory and relay, with the admin listener on an
    /// ephemeral port (tests, the demo).
    pub fn new(pods_dir: PathBuf, relay_addr: SocketAddr) -> Self {
        Self {
            pods_dir,
            relay_addrs: vec![relay_addr.to_string()],
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// The tailer's: queue budget, stall watchdog, lingers.
    pub fn tailer(&self) -> TailerConfig {
        TailerConfig {
            queue_budget_bytes: self.queue_budget_bytes,
            stall_after: Duration::from_millis(self.stall_after_ms.max(1)),
            detach_linger: Duration::from_millis(self.detach_linger_ms),
            resume_grace: Duration::from_millis(self.resume_grace_ms),
            drain_linger: Duration::from_millis(self.drain_linger_ms),
        }
    }

    /// Every demand's: batch and line sizes, the follower's poll.
    pub fn tail_params(&self) -> TailParams {
        TailParams {
            max_batch_bytes: self.max_batch_bytes,
            max_line_bytes: self.max_line_bytes,
            follow_poll: Duration::from_millis(self.follow_poll_ms.max(1)),
        }
    }

    /// The log discovery loop's.
    pub fn logs(&self) -> LogsConfig {
        LogsConfig {
            pods_dir: self.pods_dir.clone(),
            node: self.node_name.clone(),
            rescan: Duration::from_millis(self.rescan_ms),
            resync: Duration::from_millis(self.resync_ms),
            task_labels: self.mapping(),
        }
    }

    /// What scrape targets take when they set nothing of their own.
    pub fn scrape_defaults(&self) -> ScrapeDefaults {
        let mut ca_files: Vec<PathBuf> = self.scrape_ca_file.iter().cloned().collect();
        if self.scrape_ca_cluster {
            ca_files.push(PathBuf::from(CLUSTER_CA_FILE));
        }
        ScrapeDefaults {
            interval: Duration::from_millis(self.scrape_interval_ms.max(1)),
            timeout: Duration::from_millis(self.scrape_timeout_ms.max(1)),
            sample_limit: self.scrape_sample_limit,
            max_body_bytes: self.scrape_max_body_bytes.max(1),
            auth: ScrapeAuth {
                ca_files,
                server_name: None,
                insecure_skip_verify: self.scrape_insecure_skip_verify,
                bearer_token_file: self.scrape_bearer_token_file.clone(),
            },
        }
    }

    /// The metrics sources loop's.
    pub fn metrics_sources(&self) -> MetricsConfig {
        MetricsConfig {
            node: self.node_name.clone(),
            rescan: Duration::from_millis(self.metrics_rescan_ms),
            targets: self.scrape_targets.clone(),
            scrape: self.scrape_defaults(),
            resources: self.resources.then(|| cgroup::ResourcesConfig {
                cgroup_root: self.cgroup_root.clone(),
                containers_dir: self.containers_dir.clone(),
                interval: Duration::from_millis(self.resources_interval_ms.max(1)),
            }),
            pods_dir: self.pods_dir.clone(),
            task_labels: self.mapping(),
        }
    }

    /// How pod metadata becomes stream labels: task identity and the allowlists.
    pub fn mapping(&self) -> TaskLabels {
        TaskLabels {
            label_allowlist: self.kube_label_allowlist.clone(),
            annotation_allowlist: self.kube_annotation_allowlist.clone(),
            ..self.task_labels.clone()
        }
    }

    /// The pod watch's.
    pub fn kube(&self) -> KubeConfig {
        KubeConfig {
            enabled: self.kube_pods,
            api_url: self.kube_api_url.clone(),
            node: self.node_name.clone(),
            mapping: self.mapping(),
        }
    }

    /// The uplink's.
    pub fn uplink(&self) -> UplinkConfig {
        UplinkConfig {
            relay_addrs: self.relay_addrs.clone(),
            relay_name: self.relay_name.clone(),
            node: self.node_name.clone(),
            reconnect_min_ms: self.reconnect_min_ms,
            reconnect_max_ms: self.reconnect_max_ms,
            timers: logrelay_tls::QuicTimers::from_millis(
                self.relay_keep_alive_ms,
                self.relay_idle_timeout_ms,
            ),
            params: self.tail_params(),
            trace_batches_per_sec: self.trace_batches_per_sec,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::scrape::{self, auth};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: AgentConfig,
    }

    /// The defaults the flags show are the ones [`AgentConfig::new`] and the stages' own
    /// configs use (each written once).
    #[test]
    fn the_flags_default_to_the_stages_defaults() {
        let command = Cli::command();
        let defaults: Vec<(String, String)> = command
            .get_arguments()
            .filter_map(|a| {
                let d = a.get_default_values().first()?;
                Some((a.get_id().to_string(), d.to_string_lossy().into_owned()))
            })
            .collect();
        let shown = |id: &str| {
            defaults
                .iter()
                .find(|(a, _)| a == id)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| panic!("--{id} has a default"))
        };
        let c = AgentConfig::default();
        assert_eq!(
            shown("queue_budget_bytes"),
            c.queue_budget_bytes.to_string()
        );
        assert_eq!(shown("stall_after_ms"), c.stall_after_ms.to_string());
        assert_eq!(shown("pods_dir"), c.pods_dir.display().to_string());
        assert_eq!(shown("admin_addr"), c.admin_addr.to_string());
        assert_eq!(shown("task_labels"), kube::DEFAULT_TASK_LABELS);
        assert_eq!(
            shown("scrape_interval_ms"),
            c.scrape_interval_ms.to_string()
        );
        assert_eq!(c.tailer(), TailerConfig::default());
        assert_eq!(c.scrape_defaults(), ScrapeDefaults::default());
        // Every flag has one but the switches (off unless given), the scrape targets, CA and
        // token files, and the API URL.
        let without: Vec<String> = command
            .get_arguments()
            .filter(|a| a.get_default_values().is_empty() && a.get_id() != "help")
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(
            without,
            [
                "scrape_targets",
                "scrape_ca_file",
                "scrape_ca_cluster",
                "scrape_insecure_skip_verify",
                "scrape_bearer_token_file",
                "kube_pods",
                "kube_api_url"
            ]
        );
    }

    /// `--help` groups the flags by the stage they tune.
    #[test]
    fn the_flags_are_sectioned_per_stage() {
        let command = Cli::command();
        let heading = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help_heading())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(heading("relay_addrs"), RELAY);
        assert_eq!(heading("pods_dir"), DISCOVERY);
        assert_eq!(heading("queue_budget_bytes"), TAIL);
        assert_eq!(heading("scrape_targets"), SCRAPE);
        assert_eq!(heading("cgroup_root"), RESOURCES);
        assert_eq!(heading("kube_pods"), KUBE);
        assert_eq!(heading("admin_addr"), ADMIN);
        assert!(
            command
                .get_arguments()
                .all(|a| a.get_help_heading().is_some())
        );
    }

    #[test]
    fn scrape_tls_flags_become_every_targets_defaults() {
        let mut c = AgentConfig::new("/pods".into(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.scrape_defaults().auth, ScrapeAuth::default());
        c.scrape_ca_file = Some("/etc/scrape-ca.pem".into());
        c.scrape_ca_cluster = true;
        c.scrape_insecure_skip_verify = true;
        c.scrape_bearer_token_file = Some("/run/token".into());
        assert_eq!(
            c.scrape_defaults().auth,
            ScrapeAuth {
                ca_files: vec![
                    "/etc/scrape-ca.pem".into(),
                    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()
                ],
                server_name: None,
                insecure_skip_verify: true,
                bearer_token_file: Some("/run/token".into()),
            }
        );
    }

    #[test]
    fn a_static_target_whose_files_cannot_be_used_stops_the_start() {
        let check_credentials =
            |c: &AgentConfig| scrape::check_credentials(&c.scrape_defaults(), &c.scrape_targets);
        let dir = tempfile::tempdir().unwrap();
        let mut c = AgentConfig::new("/pods".into(), "127.0.0.1:1".parse().unwrap());
        let missing = dir.path().join("token");
        c.scrape_targets = vec![
            format!(
                "http://127.0.0.1:9/metrics,bearer_token_file={}",
                missing.display()
            )
            .parse()
            .unwrap(),
        ];
        let err = check_credentials(&c).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot use bearer token file {}: ",
                missing.display()
            )),
            "{err}"
        );
        std::fs::write(&missing, "t0k\n").unwrap();
        check_credentials(&c).unwrap();
        c.scrape_targets = vec!["https://127.0.0.1:9/metrics".parse().unwrap()];
        assert!(matches!(
            check_credentials(&c),
            Err(auth::CredentialsError::NoCa { .. })
        ));
        c.scrape_ca_file = Some(dir.path().join("no-ca.pem"));
        assert!(matches!(
            check_credentials(&c),
            Err(auth::CredentialsError::CaFile { .. })
        ));
    }
}
