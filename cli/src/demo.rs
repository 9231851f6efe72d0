//! `logrelay demo`: relay + agent + a sample workload on loopback, in one process.
//!
//! A throwaway CA and every certificate are minted in memory: the agent trusts the relay
//! because it is handed the CA certificate in memory, never through a file. The workload
//! ([`Workload`]) lives in one temporary directory: it appends real LogHub lines as CRI records
//! to three pods, JSON and ANSI-coloured lines (stdout and stderr) to the two containers of a
//! fourth, and keeps a cgroup v2 tree of those pods moving (CPU and memory), which the agent
//! samples as each pod's `resources` metrics stream. The agent also scrapes the relay's own
//! `/metrics`, so the viewer has scraped series to chart.

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

/// The pod whose containers write JSON (`api`) and ANSI-coloured (`worker`) lines.
pub const APP_POD: (&str, &str) = ("shop", "checkout");

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
    /// Lines per second each sample container writes.
    #[arg(long, default_value_t = 20)]
    pub lines_per_sec: u32,
}

/// Which stream of a container a record is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
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
        self.write_records(messages.into_iter().map(|m| (Output::Stdout, m)))
    }

    /// Appends one full record per message, on the output given (each must end with `\n`).
    pub fn write_records<'a>(
        &mut self,
        records: impl IntoIterator<Item = (Output, &'a [u8])>,
    ) -> std::io::Result<()> {
        let ts = now_rfc3339();
        let mut buf = Vec::new();
        for (output, m) in records {
            buf.extend_from_slice(ts.as_bytes());
            buf.extend_from_slice(match output {
                Output::Stdout => b" stdout F ",
                Output::Stderr => b" stderr F ",
            });
            buf.extend_from_slice(m);
        }
        self.file.write_all(&buf)
    }
}

/// The pod UID the demo gives `ns/pod` (stable, so links stay valid across runs).
pub fn uid(ns: &str, pod: &str) -> String {
    let h = fnv(ns.bytes().chain(pod.bytes()));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xffff,
        (h >> 48) & 0xffff,
        h & 0xffff_ffff_ffff
    )
}

fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The current time as RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    logrelay_wire::time::rfc3339_nanos(ns)
}

/// One simulated pod of the cgroup tree: its usage moves a little every tick.
#[derive(Debug)]
struct PodUsage {
    dir: PathBuf,
    containers: Vec<PathBuf>,
    /// Average CPU in cores, and how much it swings.
    cpu_cores: f64,
    /// Memory working set around which it moves, bytes.
    memory_bytes: f64,
    usage_usec: f64,
    phase: f64,
}

/// The demo's workload in one directory: `pods/` (the agent's pods directory), `cgroup/` (a
/// cgroup v2 tree of the same pods, systemd layout) and `containers/` (kubelet's log names, which
/// name the containers' cgroups).
#[derive(Debug)]
pub struct Workload {
    root: PathBuf,
    writers: Vec<(CriWriter, Vec<&'static [u8]>, usize)>,
    api: CriWriter,
    worker: CriWriter,
    usage: Vec<PodUsage>,
    ticks: u64,
    rng: u64,
}

impl Workload {
    /// Creates the pods, their (empty) logs and the cgroup tree under `root`.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        let pods = root.join("pods");
        let containers_dir = root.join("containers");
        std::fs::create_dir_all(&containers_dir)?;
        let mut writers = Vec::new();
        let mut usage = Vec::new();
        let mut pod_specs: Vec<(&str, &str, Vec<&str>, f64, f64)> = Vec::new();
        for (i, (ns, pod, text)) in SAMPLES.into_iter().enumerate() {
            let lines: Vec<&'static [u8]> = text.split_inclusive('\n').map(str::as_bytes).collect();
            writers.push((CriWriter::create(&pods, ns, pod, "main")?, lines, 0usize));
            pod_specs.push((
                ns,
                pod,
                vec!["main"],
                0.15 + 0.2 * i as f64,
                (96 + 64 * i as u64) as f64 * 1048576.0,
            ));
        }
        let (ns, pod) = APP_POD;
        let api = CriWriter::create(&pods, ns, pod, "api")?;
        let worker = CriWriter::create(&pods, ns, pod, "worker")?;
        pod_specs.push((ns, pod, vec!["api", "worker"], 0.6, 320.0 * 1048576.0));
        for (k, (ns, pod, containers, cpu_cores, memory_bytes)) in pod_specs.into_iter().enumerate()
        {
            let dir = root.join(format!(
                "cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid(ns, pod).replace('-', "_")
            ));
            let mut scopes = Vec::new();
            for c in containers {
                let id = format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    fnv(format!("{ns}/{pod}/{c}/0").bytes()),
                    fnv(format!("{ns}/{pod}/{c}/1").bytes()),
                    fnv(format!("{ns}/{pod}/{c}/2").bytes()),
                    fnv(format!("{ns}/{pod}/{c}/3").bytes()),
                );
                std::fs::write(containers_dir.join(format!("{pod}_{ns}_{c}-{id}.log")), "")?;
                let scope = dir.join(format!("cri-containerd-{id}.scope"));
                std::fs::create_dir_all(&scope)?;
                scopes.push(scope);
            }
            std::fs::create_dir_all(&dir)?;
            write_atomic(
                &dir.join("cpu.max"),
                &format!("{} 100000\n", 100000 * (k + 1)),
            )?;
            write_atomic(
                &dir.join("memory.max"),
                &format!("{}\n", (memory_bytes * 2.0) as u64),
            )?;
            usage.push(PodUsage {
                dir,
                containers: scopes,
                cpu_cores,
                memory_bytes,
                usage_usec: 0.0,
                phase: k as f64,
            });
        }
        let mut w = Self {
            root: root.to_owned(),
            writers,
            api,
            worker,
            usage,
            ticks: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        w.sample(0.0)?;
        Ok(w)
    }

    /// The agent's pods directory.
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The cgroup v2 root the agent reads.
    pub fn cgroup_root(&self) -> PathBuf {
        self.root.join("cgroup")
    }

    /// kubelet's container log names (`<pod>_<ns>_<container>-<id>.log`).
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic, good enough for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Writes `per_container` lines to every container, and moves the cgroup usage on by
    /// `elapsed_secs`.
    pub fn tick(&mut self, per_container: usize, elapsed_secs: f64) -> std::io::Result<()> {
        for (w, lines, next) in &mut self.writers {
            let batch: Vec<&[u8]> = (0..per_container)
                .map(|i| lines[(*next + i) % lines.len()])
                .collect();
            *next += per_container;
            w.write_lines(batch)?;
        }
        let mut api = Vec::new();
        let mut worker = Vec::new();
        for _ in 0..per_container {
            let n = self.ticks;
            self.ticks += 1;
            let r = self.random();
            api.push(api_line(n, r));
            worker.push(worker_line(n, r));
        }
        self.api
            .write_records(api.iter().map(|(o, l)| (*o, l.as_bytes())))?;
        self.worker
            .write_records(worker.iter().map(|(o, l)| (*o, l.as_bytes())))?;
        self.sample(elapsed_secs)
    }

    /// Moves every pod's CPU counter and memory on, as the kernel would.
    fn sample(&mut self, elapsed_secs: f64) -> std::io::Result<()> {
        let t = self.ticks as f64 / 10.0;
        for k in 0..self.usage.len() {
            let jitter = self.random();
            let p = &mut self.usage[k];
            let wave = (t / 7.0 + p.phase).sin();
            let cores = (p.cpu_cores * (1.0 + 0.6 * wave) + 0.05 * jitter).max(0.01);
            p.usage_usec += cores * elapsed_secs * 1e6;
            let memory = p.memory_bytes
                * (1.0 + 0.15 * (t / 11.0 + p.phase).sin() + 0.1 * ((t % 30.0) / 30.0));
            let inactive = memory * 0.05;
            write_atomic(
                &p.dir.join("cpu.stat"),
                &format!("usage_usec {}\n", p.usage_usec as u64),
            )?;
            write_atomic(
                &p.dir.join("memory.current"),
                &format!("{}\n", (memory + inactive) as u64),
            )?;
            write_atomic(
                &p.dir.join("memory.stat"),
                &format!(
                    "anon {}\ninactive_file {}\n",
                    memory as u64, inactive as u64
                ),
            )?;
            let share = 1.0 / p.containers.len() as f64;
            for c in &p.containers {
                write_atomic(
                    &c.join("cpu.stat"),
                    &format!("usage_usec {}\n", (p.usage_usec * share) as u64),
                )?;
                write_atomic(
                    &c.join("memory.current"),
                    &format!("{}\n", ((memory + inactive) * share) as u64),
                )?;
                write_atomic(
                    &c.join("memory.stat"),
                    &format!("inactive_file {}\n", (inactive * share) as u64),
                )?;
            }
        }
        Ok(())
    }

    /// Writes `lines_per_sec` lines per container per second until dropped.
    pub async fn run(mut self, lines_per_sec: u32) -> std::io::Result<()> {
        let per_tick = (lines_per_sec / 10).max(1) as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let elapsed = now.duration_since(last).as_secs_f64();
            last = now;
            self.tick(per_tick, elapsed)?;
        }
    }
}

/// Replaces a file's content at once (the agent never reads half a write).
fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(tmp, path)
}

const PATHS: [&str; 5] = [
    "/api/checkout",
    "/api/cart",
    "/api/orders",
    "/api/payment",
    "/healthz",
];

/// A structured (JSON) log line of the demo's API container: info on stdout, warnings on
/// stdout, errors on stderr.
fn api_line(n: u64, r: f64) -> (Output, String) {
    let order = 1000 + n;
    let latency = (20.0 + 180.0 * r * r) as u64;
    let path = PATHS[(n % PATHS.len() as u64) as usize];
    if n % 17 == 16 {
        (
            Output::Stderr,
            format!(
                "{{\"level\":\"error\",\"msg\":\"payment declined\",\"order_id\":\"o-{order}\",\"code\":\"card_declined\",\"attempt\":{},\"trace_id\":\"{:016x}\"}}\n",
                1 + n % 3,
                fnv(n.to_le_bytes().into_iter())
            ),
        )
    } else if n % 7 == 6 {
        (
            Output::Stdout,
            format!(
                "{{\"level\":\"warn\",\"msg\":\"slow upstream\",\"path\":\"{path}\",\"latency_ms\":{},\"upstream\":\"payments\"}}\n",
                latency * 5
            ),
        )
    } else {
        (
            Output::Stdout,
            format!(
                "{{\"level\":\"info\",\"msg\":\"request served\",\"method\":\"POST\",\"path\":\"{path}\",\"status\":200,\"latency_ms\":{latency},\"order_id\":\"o-{order}\",\"bytes\":{}}}\n",
                200 + (r * 4000.0) as u64
            ),
        )
    }
}

/// An ANSI-coloured line of the demo's worker container, as colourful CLIs and loggers write.
fn worker_line(n: u64, r: f64) -> (Output, String) {
    let job = 5000 + n;
    let ms = (5.0 + 95.0 * r) as u64;
    let worker = n % 4;
    match n % 11 {
        10 => (
            Output::Stderr,
            format!(
                "\x1b[1;31mERROR\x1b[0m \x1b[2m[worker-{worker}]\x1b[0m job \x1b[1m#{job}\x1b[0m failed: \x1b[31mconnection reset by peer\x1b[0m (will retry)\n"
            ),
        ),
        4 | 8 => (
            Output::Stdout,
            format!(
                "\x1b[33mWARN \x1b[0m \x1b[2m[worker-{worker}]\x1b[0m job \x1b[1m#{job}\x1b[0m took \x1b[38;5;208m{} ms\x1b[0m (budget 250 ms)\n",
                ms * 4
            ),
        ),
        _ => {
            let done = ((n % 10) + 1) as usize;
            (
                Output::Stdout,
                format!(
                    "\x1b[32mINFO \x1b[0m \x1b[2m[worker-{worker}]\x1b[0m job \x1b[1m#{job}\x1b[0m done in {ms} ms \x1b[38;2;90;160;255m{}\x1b[0m{} {}0%\n",
                    "█".repeat(done),
                    "░".repeat(10 - done),
                    done
                ),
            )
        }
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    logrelay_tls::install_provider();
    let pki = DevPki::new()?;
    let dir = tempfile::Builder::new()
        .prefix("logrelay-demo-")
        .tempdir()?;
    let workload = Workload::create(dir.path()).context("creating the demo's pods")?;
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
    let relay_metrics = format!("http://{}/metrics,name=relay", relay.admin_addr)
        .parse()
        .context("the relay's metrics as a scrape target")?;
    let agent = logrelay_agent::start(
        AgentConfig {
            admin_addr: args.agent_admin_addr,
            cgroup_root: workload.cgroup_root(),
            containers_dir: workload.containers_dir(),
            resources_interval_ms: 1_000,
            metrics_rescan_ms: 1_000,
            scrape_targets: vec![relay_metrics],
            scrape_interval_ms: 2_000,
            ..AgentConfig::new(workload.pods_dir(), relay.quic_addr)
        },
        AgentTls {
            identity: pki.agent(&agent_id)?,
            relay_roots: pki.roots(),
            reload: None,
        },
    )
    .await
    .context("starting agent")?;

    let pods_dir = workload.pods_dir();
    let writer = tokio::spawn(workload.run(args.lines_per_sec));
    println!("logrelay demo is running (Ctrl-C to stop)");
    println!("  work directory : {}", dir.path().display());
    println!("  pods directory : {}", pods_dir.display());
    println!(
        "  sample pods    : {}, {}/{} (containers api: JSON, worker: ANSI colours)",
        SAMPLES
            .iter()
            .map(|(ns, p, _)| format!("{ns}/{p}"))
            .collect::<Vec<_>>()
            .join(", "),
        APP_POD.0,
        APP_POD.1
    );
    if let Some(url) = relay.ui_url() {
        println!("  browser viewer : {url}");
    }
    println!("  WebSocket URL  : {}", relay.subscribe_url());
    println!("  relay metrics  : http://{}/metrics", relay.admin_addr);
    println!("  agent metrics  : http://{}/metrics", agent.admin_addr);
    println!();
    if let Some(url) = relay.ui_url() {
        println!("Open {url} and pick pods on the left, or go straight to a merged view:");
        println!(
            "  {url}?sel=namespace%3Dweb%26pod%3Dapache&sel=namespace%3Dshop%26pod%3Dcheckout"
        );
        println!("or from another terminal:");
    } else {
        println!("Watch a pod from another terminal:");
    }
    println!(
        "  cargo run --release -p logrelay -- tail --url {} --namespace web --pod apache --container main --timestamps",
        relay.subscribe_url()
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        r = writer => match r {
            Ok(Err(e)) => return Err(e).context("the demo workload stopped"),
            _ => anyhow::bail!("the demo workload stopped"),
        },
    }
    agent.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_writes_every_kind_of_line_and_moves_its_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Workload::create(dir.path()).unwrap();
        let cpu = |w: &Workload| -> u64 {
            std::fs::read_to_string(w.usage[3].dir.join("cpu.stat")).unwrap()["usage_usec ".len()..]
                .trim()
                .parse()
                .unwrap()
        };
        let before = cpu(&w);
        for _ in 0..20 {
            w.tick(2, 0.1).unwrap();
        }
        assert!(cpu(&w) > before, "CPU time goes up");
        let log = |c: &str| {
            std::fs::read_to_string(
                w.pods_dir()
                    .join(format!("shop_checkout_{}", uid("shop", "checkout")))
                    .join(c)
                    .join("0.log"),
            )
            .unwrap()
        };
        let api = log("api");
        assert!(api.contains(" stdout F {\"level\":\"info\""), "{api}");
        assert!(api.contains(" stderr F {\"level\":\"error\""), "{api}");
        for l in api.lines() {
            let json = l.splitn(4, ' ').nth(3).unwrap();
            serde_json::from_str::<serde_json::Value>(json).expect("every api line is JSON");
        }
        let worker = log("worker");
        assert!(worker.contains("\x1b[32mINFO"), "{worker}");
        assert!(worker.contains(" stderr F \x1b[1;31mERROR"), "{worker}");
        assert_eq!(
            std::fs::read_dir(w.containers_dir()).unwrap().count(),
            5,
            "a log name per container"
        );
    }
}
