//! Relay configuration: one typed struct, filled from flags or environment (`LOGRELAY_RELAY_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::session::outbox::SlowConsumerPolicy;

use crate::hub::{BACKFILL_BATCHES, CoreConfig, HubConfig, MAX_SESSION_EVENT_BYTES, REOPEN_AFTER};

/// Relay configuration. Units are in the field names. Each default is written once, on its
/// flag: [`Default`] and [`RelayConfig::loopback`] take them from there.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayConfig {
    /// UDP address of the QUIC listener for agents.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_QUIC_ADDR",
        default_value = "127.0.0.1:4433"
    )]
    pub quic_addr: SocketAddr,
    /// TCP address of the WebSocket listener for sessions (`/v1/subscribe`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// Serve the browser live viewer (`/` and its files under `/ui/`) on the session
    /// listener, beside `/v1/subscribe`. `--ui false`: those paths answer 404.
    #[arg(long, env = "LOGRELAY_RELAY_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub ui: bool,
    /// Web origins (`scheme://host[:port]`, or `*`) whose pages may open sessions besides the
    /// relay's own (its viewer). A handshake with any other `Origin` header is refused (403);
    /// one without `Origin` (not a browser page) is not affected. Repeat the flag;
    /// space-separated in the environment.
    #[arg(
        long = "allowed-origin",
        env = "LOGRELAY_RELAY_ALLOWED_ORIGINS",
        value_delimiter = ' '
    )]
    pub allowed_origins: Vec<String>,
    /// TCP address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_ADMIN_ADDR",
        default_value = "127.0.0.1:9600"
    )]
    pub admin_addr: SocketAddr,
    /// PEM certificate chain for WSS; without it the session listener is plain WS.
    #[arg(long, env = "LOGRELAY_RELAY_WSS_CERT_FILE", requires = "wss_key_file")]
    pub wss_cert_file: Option<PathBuf>,
    /// PEM private key for WSS.
    #[arg(long, env = "LOGRELAY_RELAY_WSS_KEY_FILE", requires = "wss_cert_file")]
    pub wss_key_file: Option<PathBuf>,
    /// Org given to sessions that present no credentials. Unset (the default): such sessions
    /// are refused. `--dev` sets it to `dev`.
    #[arg(long, env = "LOGRELAY_RELAY_ANONYMOUS_ORG")]
    pub anonymous_org: Option<String>,
    /// Bytes each stream's ring holds; a session further behind skips ahead with a gap event.
    #[arg(long, env = "LOGRELAY_RELAY_RING_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub ring_bytes: usize,
    /// Seconds a stream stays open at its agent after its last watcher left (and one whose agent
    /// went away stays listed, for a resume).
    #[arg(long, env = "LOGRELAY_RELAY_LINGER_SECS", default_value_t = 5)]
    pub linger_secs: u64,
    /// Subscriptions one session may hold.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_SUBSCRIPTIONS_PER_SESSION",
        default_value_t = 64
    )]
    pub max_subscriptions_per_session: usize,
    /// Largest frame accepted from an agent.
    #[arg(long, env = "LOGRELAY_RELAY_MAX_FRAME_BYTES", default_value_t = logrelay_wire::frame::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: u32,
    /// Largest message accepted from a session.
    #[arg(long, env = "LOGRELAY_RELAY_MAX_SESSION_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_session_message_bytes: usize,
    /// Bytes a session writer takes from the rings per flush.
    #[arg(long, env = "LOGRELAY_RELAY_SESSION_FLUSH_BYTES", default_value_t = 256 * 1024)]
    pub session_flush_bytes: usize,
    /// Seconds between WebSocket pings; a session silent for three intervals is closed.
    #[arg(long, env = "LOGRELAY_RELAY_PING_SECS", default_value_t = 15)]
    pub ping_secs: u64,
    /// Seconds between heartbeats the agents are asked to send.
    #[arg(long, env = "LOGRELAY_RELAY_AGENT_HEARTBEAT_SECS", default_value_t = 5)]
    pub agent_heartbeat_secs: u32,
    /// Milliseconds between QUIC keep-alive PINGs to each agent (at most half the idle
    /// timeout).
    #[arg(long, env = "LOGRELAY_RELAY_AGENT_KEEP_ALIVE_MS", default_value_t = logrelay_tls::QUIC_KEEP_ALIVE_MS)]
    pub agent_keep_alive_ms: u64,
    /// An agent connection silent for this many milliseconds is dead: its watchers get `paused`
    /// at once (the smaller of this and the agent's `--relay-idle-timeout-ms` applies).
    #[arg(long, env = "LOGRELAY_RELAY_AGENT_IDLE_TIMEOUT_MS", default_value_t = logrelay_tls::QUIC_IDLE_TIMEOUT_MS)]
    pub agent_idle_timeout_ms: u64,
    /// Relay-wide budget for buffered content (all rings plus data taken by session writers).
    /// When a push would exceed it, the pushing stream's oldest batches are dropped.
    #[arg(long, env = "LOGRELAY_RELAY_MEMORY_BUDGET_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub memory_budget_bytes: usize,
    /// What happens to a session that falls behind a stream's ring.
    #[arg(long, env = "LOGRELAY_RELAY_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumerPolicy::DropOldest)]
    pub slow_consumer: SlowConsumerPolicy,
    /// Sessions one org may hold at once.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_SESSIONS_PER_ORG",
        default_value_t = 1000
    )]
    pub max_sessions_per_org: usize,
    /// Demands (live, backfill, one-off reads) open at one agent connection at once. A
    /// subscription that needs one more there is refused for that stream (`end` with reason
    /// `demand_limit`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_DEMANDS_PER_AGENT",
        default_value_t = 2048
    )]
    pub max_demands_per_agent: usize,
    /// Demands open at the agents of one org at once; beyond it, as per agent.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_DEMANDS_PER_ORG",
        default_value_t = 16384
    )]
    pub max_demands_per_org: usize,
    /// Streams one agent connection may announce; further ones are refused
    /// (`catalog_refused`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_STREAMS_PER_AGENT",
        default_value_t = 10_000
    )]
    pub max_streams_per_agent: usize,
    /// Streams the agents of one org may announce together; further ones are refused.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_STREAMS_PER_ORG",
        default_value_t = 100_000
    )]
    pub max_streams_per_org: usize,
    /// Bytes of label values one stream may carry; a stream with more is refused.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_LABEL_BYTES_PER_STREAM",
        default_value_t = 4096
    )]
    pub max_label_bytes_per_stream: usize,
    /// Bytes of label values of all the streams one agent connection announces; further
    /// streams are refused.
    #[arg(long, env = "LOGRELAY_RELAY_MAX_LABEL_BYTES_PER_AGENT", default_value_t = 8 * 1024 * 1024)]
    pub max_label_bytes_per_agent: usize,
    /// Violations (ids or streams that are not its own) one agent connection may commit; the
    /// next one closes the connection (QUIC code 8).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_AGENT_VIOLATIONS",
        default_value_t = 16
    )]
    pub max_agent_violations: u32,
    /// Control messages per second a session may send (burst: twice as many).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_SESSION_REQUESTS_PER_SEC",
        default_value_t = 20
    )]
    pub session_requests_per_sec: u32,
    /// Kernel send buffer of each session socket (0: the OS default, autotuned).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_SESSION_SEND_BUFFER_BYTES",
        default_value_t = 0
    )]
    pub session_send_buffer_bytes: usize,
    /// WebSocket write buffer of a session: written to the socket once this full.
    #[arg(long, env = "LOGRELAY_RELAY_SESSION_WRITE_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub session_write_buffer_bytes: usize,
    /// JWKS file holding the public keys that sign session tokens (EdDSA, ES256).
    #[arg(long, env = "LOGRELAY_RELAY_TOKEN_JWKS_FILE")]
    pub token_jwks_file: Option<PathBuf>,
    /// Issuer session tokens must name (`iss`); unset: not checked.
    #[arg(long, env = "LOGRELAY_RELAY_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// Audience session tokens must name (`aud`); unset: not checked.
    #[arg(long, env = "LOGRELAY_RELAY_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Clock difference tolerated on token times, in seconds.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_TOKEN_CLOCK_SKEW_SECS",
        default_value_t = crate::auth::DEFAULT_CLOCK_SKEW_SECS
    )]
    pub token_clock_skew_secs: u32,
    /// Longest lifetime accepted for a session token, in seconds: a token whose `exp` lies
    /// further than this from now (plus the clock skew), or from its `iat`, is refused (401).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_TOKEN_LIFETIME_SECS",
        default_value_t = crate::auth::DEFAULT_MAX_LIFETIME_SECS
    )]
    pub max_token_lifetime_secs: u64,
    /// Development only: HS256 shared secret for session tokens (at least 32 bytes). Refused
    /// without `--dev`.
    #[arg(long, env = "LOGRELAY_RELAY_DEV_TOKEN_SECRET", hide_env_values = true)]
    pub dev_token_secret: Option<String>,
    /// Session connections allowed in their TLS handshake or request head at once. A new
    /// connection beyond it sheds a pending one: from the source holding the most, a silent
    /// one first, the oldest first.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_PENDING_HANDSHAKES",
        default_value_t = 1024
    )]
    pub max_pending_handshakes: usize,
    /// Session connections one source (IPv4 address, IPv6 /64) may have in their handshake at
    /// once; more from it are closed on accept.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_PENDING_HANDSHAKES_PER_SOURCE",
        default_value_t = 64
    )]
    pub max_pending_handshakes_per_source: usize,
    /// Sessions one source (IPv4 address, IPv6 /64) may hold at once; beyond, the upgrade is
    /// refused with 429.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_MAX_SESSIONS_PER_SOURCE",
        default_value_t = 256
    )]
    pub max_sessions_per_source: usize,
    /// Deadline for the first bytes of a session connection (TLS hello or request), in
    /// milliseconds from its accept; a connection silent that long is closed.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_FIRST_BYTE_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub first_byte_timeout_ms: u64,
    /// Deadline for a session's TLS handshake and request head, in seconds from its accept.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub handshake_timeout_secs: u64,
    /// Also export every audit event as an OpenTelemetry log record to this OTLP/HTTP
    /// collector (`http://host:4318`; plain HTTP: run a collector beside the relay).
    #[arg(long, env = "LOGRELAY_RELAY_AUDIT_OTLP_ENDPOINT")]
    pub audit_otlp_endpoint: Option<String>,
    /// Refusals and limit hits are audited per offender and reason: the first at once, then at
    /// most one line per this many seconds, with the `count` of events it stands for.
    #[arg(
        long,
        env = "LOGRELAY_RELAY_AUDIT_AGGREGATE_SECS",
        default_value_t = 60
    )]
    pub audit_aggregate_secs: u64,
    /// Offenders (× reason) the audit aggregation tracks; events of others are folded into
    /// one line per interval (actor type `others`, reason `audit_offenders`).
    #[arg(
        long,
        env = "LOGRELAY_RELAY_AUDIT_MAX_OFFENDERS",
        default_value_t = 1024
    )]
    pub audit_max_offenders: usize,
    /// On SIGTERM the relay drains: it stops accepting, tells its agents to reconnect to
    /// another relay (QUIC close code 10) and its sessions likewise (WebSocket close code
    /// 4012), then exits once they have gone or after this many seconds.
    #[arg(long, env = "LOGRELAY_RELAY_DRAIN_SECS", default_value_t = 20)]
    pub drain_secs: u64,
    /// The NATS backplane between relays (off without `--nats-url`).
    #[command(flatten)]
    pub backplane: crate::backplane::BackplaneConfig,
}

impl Default for RelayConfig {
    /// The flags' defaults, as `--help` shows them (the environment is not read).
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command = Self::augment_args(clap::Command::new("logrelay-relay"))
            .mut_args(|a| a.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from(["logrelay-relay"])
            .expect("every flag has a default or is optional");
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }
}

impl RelayConfig {
    /// The defaults on loopback, every listener on an ephemeral port (tests, the demo).
    pub fn loopback() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            quic_addr: any,
            http_addr: any,
            admin_addr: any,
            ..Self::default()
        }
    }

    /// Keep-alive and idle timeout of agent connections.
    pub fn quic_timers(&self) -> logrelay_tls::QuicTimers {
        logrelay_tls::QuicTimers::from_millis(self.agent_keep_alive_ms, self.agent_idle_timeout_ms)
    }

    /// The hub's share of the configuration.
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            core: CoreConfig {
                linger: Duration::from_secs(self.linger_secs),
                reopen_after: REOPEN_AFTER,
                max_subscriptions_per_session: self.max_subscriptions_per_session,
                max_sessions_per_org: self.max_sessions_per_org,
                max_demands_per_agent: self.max_demands_per_agent,
                max_demands_per_org: self.max_demands_per_org,
                max_streams_per_agent: self.max_streams_per_agent,
                max_streams_per_org: self.max_streams_per_org,
                max_label_bytes_per_stream: self.max_label_bytes_per_stream,
                max_label_bytes_per_agent: self.max_label_bytes_per_agent,
            },
            ring_bytes: self.ring_bytes,
            memory_budget_bytes: self.memory_budget_bytes,
            backfill_batches: BACKFILL_BATCHES,
            max_session_event_bytes: MAX_SESSION_EVENT_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_flags_defaults_and_ignore_the_environment() {
        let d = RelayConfig::default();
        assert_eq!(d.quic_addr, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(d.ring_bytes, 4 * 1024 * 1024);
        assert_eq!(d.linger_secs, 5);
        assert_eq!(d.token_clock_skew_secs, 60);
        assert_eq!(d.max_token_lifetime_secs, 86_400);
        assert_eq!(d.slow_consumer, SlowConsumerPolicy::DropOldest);
        assert!(d.ui && d.allowed_origins.is_empty() && d.anonymous_org.is_none());
        let l = RelayConfig::loopback();
        assert_eq!(l.quic_addr.port(), 0);
        assert_eq!(l.max_demands_per_org, d.max_demands_per_org);
    }
}
