//! Agent configuration: one typed struct, filled from flags or environment (`LOGRELAY_AGENT_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Agent configuration. Units are in the field names.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Directory kubelet writes pod logs to (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long, env = "LOGRELAY_AGENT_PODS_DIR", default_value = "/var/log/pods")]
    pub pods_dir: PathBuf,
    /// Relay QUIC address, `host:port` (resolved at every connection attempt).
    #[arg(
        long,
        env = "LOGRELAY_AGENT_RELAY_ADDR",
        default_value = "127.0.0.1:4433"
    )]
    pub relay_addr: String,
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
    /// How often the pods directory is rescanned.
    #[arg(long, env = "LOGRELAY_AGENT_RESCAN_MS", default_value_t = 250)]
    pub rescan_ms: u64,
    /// How often a followed file is checked for growth once it is idle.
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
}

impl AgentConfig {
    /// Defaults for a given pods directory and relay (tests, the demo).
    pub fn new(pods_dir: PathBuf, relay_addr: SocketAddr) -> Self {
        Self {
            pods_dir,
            relay_addr: relay_addr.to_string(),
            relay_name: "localhost".into(),
            node_name: "local".into(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rescan_ms: 250,
            follow_poll_ms: 10,
            max_batch_bytes: 64 * 1024,
            max_line_bytes: 1024 * 1024,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
        }
    }
}
