//! How fast `logrelay tail -o raw` prints what the relay sends: the real release binary against
//! a real relay on loopback, fed by a QUIC producer speaking the agent protocol (the e2e
//! harness's `FakeAgent`: 20 streams, each answering its `open` with one batch of 12 000
//! LogHub lines, 240 000 lines in all, about 31 MB; a session accepts messages up to about 2 MiB).
//!
//! ```text
//! cargo build --release -p logrelay          # the binary measured
//! cargo bench -p logrelay-benches --bench cli_output
//! ```
//!
//! The output goes into a pipe read by a thread that only counts newlines (no cheaper than
//! `> /dev/null` for `tail`). The rate is lines printed between the first byte and the last
//! line, per second; five runs, each on a fresh session, median printed with the spread.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logrelay_e2e::{FakeAgent, TestPki, TestRelay};
use logrelay_wire::labels::Labels;

const STREAMS: usize = 20;
const LINES_PER_STREAM: usize = 12_000;
const RUNS: usize = 5;

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

/// `cutime + cstime` of this process (its waited-for children), in seconds (100 Hz ticks).
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let samples: Vec<String> = [
        include_str!("../../data/loghub/Apache_2k.log"),
        include_str!("../../data/loghub/HDFS_2k.log"),
        include_str!("../../data/loghub/Spark_2k.log"),
    ]
    .iter()
    .flat_map(|s| s.lines())
    .map(|l| format!("{l}\n"))
    .collect();
    let pki = TestPki::new();
    let (relay, _agent) = rt.block_on(async {
        let relay = TestRelay::start_with(
            &pki,
            logrelay_relay::RelayConfig {
                ring_bytes: 64 * 1024 * 1024,
                ..logrelay_relay::RelayConfig::loopback()
            },
        )
        .await;
        let streams = (0..STREAMS)
            .map(|s| {
                let labels = Labels {
                    namespace: "bench".into(),
                    pod: format!("gen-{s}"),
                    container: "main".into(),
                    ..Labels::default()
                };
                let lines = (0..LINES_PER_STREAM)
                    .map(|i| samples[(i + s) % samples.len()].clone())
                    .collect();
                (labels, lines)
            })
            .collect();
        let agent = FakeAgent::start(&pki, relay.quic_addr(), "dev", "bench", streams).await;
        (relay, agent)
    });
    let url = relay.handle.subscribe_url();
    let total = STREAMS * LINES_PER_STREAM;
    let cpu_before = children_cpu_secs();
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let mut child = Command::new(logrelay_binary())
            .args([
                "tail", "--url", &url, "-n", "bench", "-o", "raw", "--tail", "100000",
            ])
            .env("LOGRELAY_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run logrelay");
        let mut out = child.stdout.take().expect("stdout");
        let mut buf = vec![0u8; 1 << 20];
        let (mut lines, mut first) = (0usize, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while lines < total {
            let n = out.read(&mut buf).expect("read");
            assert!(n > 0, "tail ended after {lines} lines");
            first.get_or_insert_with(Instant::now);
            lines += buf[..n].iter().filter(|b| **b == b'\n').count();
            assert!(Instant::now() < deadline, "only {lines} lines in 120 s");
        }
        let secs = first.expect("read").elapsed().as_secs_f64();
        child.kill().expect("kill");
        child.wait().expect("wait");
        let rate = total as f64 / secs;
        println!("run {run}: {total} lines in {secs:.3} s = {rate:.0} lines/s");
        rates.push(rate);
    }
    let cpu = children_cpu_secs() - cpu_before;
    rates.sort_by(f64::total_cmp);
    println!(
        "logrelay tail -o raw: median {:.0} lines/s (min {:.0}, max {:.0}) over {RUNS} runs; \
         its own CPU (user + system) {cpu:.2} s for {} lines = {:.0} lines per CPU-second",
        rates[RUNS / 2],
        rates[0],
        rates[RUNS - 1],
        RUNS * total,
        (RUNS * total) as f64 / cpu.max(0.01)
    );
}
