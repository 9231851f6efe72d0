//! The backplane's configuration (flags `--nats-*`, `--relay-id`) and the NATS client options
//! built from it.

use std::path::PathBuf;
use std::time::Duration;

use super::BackplaneError;

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

/// Builds the NATS client options: credentials, TLS, capacities.
pub(super) fn options(
    config: &BackplaneConfig,
) -> Result<async_nats::ConnectOptions, BackplaneError> {
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
