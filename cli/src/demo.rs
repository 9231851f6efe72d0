//! `logrelay demo`: relay + agent + a sample workload on loopback, in one process.
//!
//! A throwaway CA and every certificate are minted in memory: the agent trusts the relay
//! because it is handed the CA certificate in memory, never through a file. The workload
//! appends real LogHub lines as CRI records to a temporary pods directory at a steady rate.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use logrelay_agent::{AgentConfig, AgentTls};
use logrelay_relay::{RelayConfig, RelayTls};
use logrelay_tls::{AgentId, DevPki};

/// Sample log text (LogHub, see data/loghub/README.md).
pub const SAMPLES: [(&str, &str, &str); 3] = [
    (
        "web",
        "apache",
        include_str!("../../data/loghub/Apache_2k.log"),
    ),
    (
        "storage",
        "hdfs",
        include_str!("../../data/loghub/HDFS_2k.log"),
    ),
    (
        "analytics",
        "spark",
        include_str!("../../data/loghub/Spark_2k.log"),
    ),
];

/// Arguments of `logrelay demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Session listener (WebSocket).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// QUIC listener for the agent.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub quic_addr: SocketAddr,
    /// Relay admin listener.
    #[arg(long, default_value = "127.0.0.1:9600")]
    pub admin_addr: SocketAddr,
    /// Agent admin listener.
    #[arg(long, default_value = "127.0.0.1:9601")]
    pub agent_admin_addr: SocketAddr,
    /// Lines per second each sample pod writes.
    #[arg(long, default_value_t = 20)]
    pub lines_per_sec: u32,
}

/// Appends CRI records to a pod's log like a container runtime.
#[derive(Debug)]
pub struct CriWriter {
    file: std::fs::File,
}

impl CriWriter {
    /// Creates `<pods>/<ns>_<pod>_<uid>/<container>/0.log`.
    pub fn create(pods: &Path, ns: &str, pod: &str, container: &str) -> std::io::Result<Self> {
        let dir = pods
            .join(format!("{ns}_{pod}_{}", uid(ns, pod)))
            .join(container);
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("0.log"))?;
        Ok(Self { file })
    }

    /// Appends one full stdout record per message (each must end with `\n`).
    pub fn write_lines<'a>(
        &mut self,
        messages: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        let ts = now_rfc3339();
        let mut buf = Vec::new();
        for m in messages {
            buf.extend_from_slice(ts.as_bytes());
            buf.extend_from_slice(b" stdout F ");
            buf.extend_from_slice(m);
        }
        self.file.write_all(&buf)
    }
}

fn uid(ns: &str, pod: &str) -> String {
    let h = ns
        .bytes()
        .chain(pod.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xffff,
        (h >> 48) & 0xffff,
        h & 0xffff_ffff_ffff
    )
}

/// The current time as RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    logrelay_wire::time::rfc3339_nanos(ns)
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    let pki = DevPki::new()?;
    let pods = tempfile::Builder::new()
        .prefix("logrelay-demo-pods-")
        .tempdir()?;
    let relay = logrelay_relay::start(
        RelayConfig {
            quic_addr: args.quic_addr,
            http_addr: args.http_addr,
            admin_addr: args.admin_addr,
            anonymous_org: Some("dev".into()),
            ..RelayConfig::loopback()
        },
        RelayTls {
            quic_identity: pki.server(&["localhost", "127.0.0.1"])?,
            agent_roots: pki.roots(),
            wss: None,
            reload: None,
        },
    )
    .await
    .context("starting relay")?;
    let agent_id = AgentId {
        org: "dev".into(),
        cluster: "local".into(),
    };
    let agent = logrelay_agent::start(
        AgentConfig {
            admin_addr: args.agent_admin_addr,
            ..AgentConfig::new(pods.path().to_path_buf(), relay.quic_addr)
        },
        AgentTls {
            identity: pki.agent(&agent_id)?,
            relay_roots: pki.roots(),
            reload: None,
        },
    )
    .await
    .context("starting agent")?;

    let workload = tokio::spawn(write_workload(
        pods.path().to_path_buf(),
        args.lines_per_sec,
    ));
    println!("logrelay demo is running (Ctrl-C to stop)");
    println!("  pods directory : {}", pods.path().display());
    println!(
        "  sample pods    : {}",
        SAMPLES
            .iter()
            .map(|(ns, p, _)| format!("{ns}/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let viewer = relay
        .ui_url()
        .map(|u| format!("{u}?namespace=web&pod=apache"));
    if let Some(url) = &viewer {
        println!("  browser viewer : {url}");
    }
    println!("  WebSocket URL  : {}", relay.subscribe_url());
    println!("  relay metrics  : http://{}/metrics", relay.admin_addr);
    println!("  agent metrics  : http://{}/metrics", agent.admin_addr);
    println!();
    if let Some(url) = &viewer {
        println!("Watch a pod in a browser: open {url}");
        println!("or from another terminal:");
    } else {
        println!("Watch a pod from another terminal:");
    }
    println!(
        "  cargo run --release -p logrelay -- tail --url {} --namespace web --pod apache --container main --timestamps",
        relay.subscribe_url()
    );
    tokio::signal::ctrl_c().await?;
    workload.abort();
    agent.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

async fn write_workload(pods: PathBuf, lines_per_sec: u32) -> std::io::Result<()> {
    let mut writers = Vec::new();
    for (ns, pod, text) in SAMPLES {
        let lines: Vec<&[u8]> = text.split_inclusive('\n').map(str::as_bytes).collect();
        writers.push((CriWriter::create(&pods, ns, pod, "main")?, lines, 0usize));
    }
    let per_tick = (lines_per_sec / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for (w, lines, next) in &mut writers {
            let batch: Vec<&[u8]> = (0..per_tick)
                .map(|i| lines[(*next + i) % lines.len()])
                .collect();
            *next += per_tick;
            w.write_lines(batch)?;
        }
    }
}
