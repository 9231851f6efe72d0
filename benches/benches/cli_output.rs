//! How fast `logrelay tail -o raw > /dev/null` prints what the relay sends: the real binary
//! against a real relay and agent on loopback, reading 300 000 LogHub lines (about 130 bytes
//! each) once (`--no-follow`), the whole pipeline in the measurement.
//!
//! ```text
//! cargo build --release -p logrelay          # the binary measured
//! cargo bench -p logrelay-benches --bench cli_output
//! ```
//!
//! divan's items/s is lines per second end to end (agent read, relay, WebSocket, tail's
//! decoding, de-duplication and writing), so the printing side keeps up with at least that.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::ItemsCount;

fn main() {
    let before = children_cpu_secs();
    divan::main();
    let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
    if runs > 0 {
        // The CPU time of `logrelay tail` alone (all waited-for children of this process),
        // the printing side's own cost apart from the relay and agent in this process.
        let cpu = children_cpu_secs() - before;
        let lines = (runs * LINES) as f64;
        println!(
            "logrelay tail CPU (user + system): {cpu:.2} s for {runs} runs of {LINES} lines = {:.0} lines per CPU-second",
            lines / cpu.max(0.01)
        );
    }
}

/// Runs of the measured command (warm-up included).
static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `cutime + cstime` of this process (its waited-for children), in seconds.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // cutime is field 16, cstime 17 (1-based); `fields[0]` is field 3. Clock ticks: 100 Hz.
    (ticks(13) + ticks(14)) / 100.0
}

/// Lines in the file read.
const LINES: usize = 300_000;

struct Env {
    url: String,
    _rt: tokio::runtime::Runtime,
    _relay: logrelay_relay::RelayHandle,
    _agent: logrelay_agent::AgentHandle,
    _pods: tempfile::TempDir,
}

fn logrelay_binary() -> PathBuf {
    // target/release/deps/cli_output-… → target/release/logrelay
    let exe = std::env::current_exe().expect("bench path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("logrelay");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p logrelay` first",
        bin.display()
    );
    bin
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    logrelay_tls::install_provider();
    let pods = tempfile::tempdir().expect("tempdir");
    // One container log of LINES CRI records, cycling through the LogHub samples.
    let dir = pods
        .path()
        .join("bench_gen_00000000-0000-0000-0000-000000000001")
        .join("main");
    std::fs::create_dir_all(&dir).expect("pod dir");
    let samples: Vec<&str> = [
        include_str!("../../data/loghub/Apache_2k.log"),
        include_str!("../../data/loghub/HDFS_2k.log"),
        include_str!("../../data/loghub/Spark_2k.log"),
    ]
    .iter()
    .flat_map(|s| s.lines())
    .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("0.log")).expect("log"));
    for i in 0..LINES {
        writeln!(
            f,
            "2024-01-02T03:04:05.{:09}Z stdout F {}",
            i % 1_000_000_000,
            samples[i % samples.len()]
        )
        .expect("write");
    }
    f.flush().expect("flush");
    drop(f);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = logrelay_tls::DevPki::new().expect("CA");
    let (relay, agent) = rt.block_on(async {
        let relay = logrelay_relay::start(
            logrelay_relay::RelayConfig {
                anonymous_org: Some("dev".into()),
                ..logrelay_relay::RelayConfig::loopback()
            },
            logrelay_relay::RelayTls {
                quic_identity: pki.server(&["localhost", "127.0.0.1"]).expect("mint"),
                agent_roots: pki.roots(),
                wss: None,
                reload: None,
            },
        )
        .await
        .expect("relay");
        let agent = logrelay_agent::start(
            logrelay_agent::AgentConfig::new(pods.path().to_path_buf(), relay.quic_addr),
            logrelay_agent::AgentTls {
                identity: pki
                    .agent(&logrelay_tls::AgentId {
                        org: "dev".into(),
                        cluster: "bench".into(),
                    })
                    .expect("mint"),
                relay_roots: pki.roots(),
                reload: None,
            },
        )
        .await
        .expect("agent");
        (relay, agent)
    });
    let url = relay.subscribe_url();
    // Wait until the stream is announced: one line read once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = tail(&url, 1, Stdio::piped());
        if out.status.success() && !out.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never showed up"
        );
    }
    Env {
        url,
        _rt: rt,
        _relay: relay,
        _agent: agent,
        _pods: pods,
    }
});

fn tail(url: &str, lines: usize, stdout: Stdio) -> std::process::Output {
    Command::new(logrelay_binary())
        .args([
            "tail",
            "--url",
            url,
            "-n",
            "bench",
            "--no-follow",
            "-o",
            "raw",
        ])
        .args(["--tail", &lines.to_string()])
        .env("LOGRELAY_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .output()
        .expect("run logrelay")
}

/// `logrelay tail -n bench --no-follow -o raw --tail 300000 > /dev/null`.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn tail_raw_to_dev_null(b: Bencher) {
    let url = ENV.url.clone();
    b.counter(ItemsCount::new(LINES)).bench(|| {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let out = tail(&url, LINES, Stdio::from(null));
        assert!(out.status.success(), "{out:?}");
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}
