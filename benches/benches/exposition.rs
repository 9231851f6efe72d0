//! Scrape processing on a ~200 KiB node-exporter-like body: parsing (both grammars), and
//! encoding the parsed families into the agent's metrics batches (what each watched scrape
//! costs the agent besides the HTTP exchange).
//!
//! `cargo bench -p logrelay-benches --bench exposition`; divan reports bytes/s of scrape body.

use std::fmt::Write;
use std::sync::LazyLock;

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use logrelay_agent::scrape::encode::{NameFilter, ResultEncoder};
use logrelay_agent::scrape::exposition::{Flavor, Limits, parse};

fn main() {
    divan::main();
}

/// Which grammar to render.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    Text004,
    OpenMetrics,
}

/// A deterministic pseudo-random source (xorshift), so the body is the same
/// on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn float(&mut self, scale: f64) -> f64 {
        (self.next() % 1_000_000_000) as f64 / 1e9 * scale
    }
}

struct Writer {
    out: String,
    style: Style,
}

impl Writer {
    /// HELP and TYPE lines; counters are named `x_total` in 0.0.4 and `x`
    /// in OpenMetrics, as client_golang does.
    fn family(&mut self, name: &str, kind: &str, help: &str) -> String {
        let family = match (self.style, kind) {
            (Style::OpenMetrics, "counter") => name.trim_end_matches("_total").to_owned(),
            _ => name.to_owned(),
        };
        let kind = match (self.style, kind) {
            (Style::Text004, "unknown") => "untyped",
            _ => kind,
        };
        writeln!(self.out, "# HELP {family} {help}").unwrap();
        writeln!(self.out, "# TYPE {family} {kind}").unwrap();
        name.to_owned()
    }
}

fn node_exporter_like(style: Style, target_bytes: usize) -> Vec<u8> {
    let mut w = Writer {
        out: String::with_capacity(target_bytes + 16 * 1024),
        style,
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Go runtime: a summary and gauges.
    let n = w.family(
        "go_gc_duration_seconds",
        "summary",
        "A summary of the pause duration of garbage collection cycles.",
    );
    for q in ["0", "0.25", "0.5", "0.75", "1"] {
        writeln!(w.out, "{n}{{quantile=\"{q}\"}} {:e}", rng.float(1e-3)).unwrap();
    }
    writeln!(w.out, "{n}_sum {}", rng.float(10.0)).unwrap();
    writeln!(w.out, "{n}_count {}", rng.next() % 100_000).unwrap();
    let n = w.family(
        "go_goroutines",
        "gauge",
        "Number of goroutines that currently exist.",
    );
    writeln!(w.out, "{n} 17").unwrap();
    let n = w.family("go_info", "gauge", "Information about the Go environment.");
    writeln!(w.out, "{n}{{version=\"go1.22.5\"}} 1").unwrap();

    // Per-CPU counters.
    let n = w.family(
        "node_cpu_seconds_total",
        "counter",
        "Seconds the CPUs spent in each mode.",
    );
    for cpu in 0..32 {
        for mode in [
            "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
        ] {
            writeln!(
                w.out,
                "{n}{{cpu=\"{cpu}\",mode=\"{mode}\"}} {:.2}",
                rng.float(1e6)
            )
            .unwrap();
        }
    }

    // Disks.
    let disks = [
        "nvme0n1", "nvme1n1", "sda", "sdb", "dm-0", "dm-1", "loop0", "loop1",
    ];
    for (metric, help) in [
        (
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
        ),
        (
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
        ),
        (
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
        ),
        (
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
        ),
        (
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
        ),
        (
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
        ),
    ] {
        let n = w.family(metric, "counter", help);
        for d in disks {
            writeln!(w.out, "{n}{{device=\"{d}\"}} {:e}", rng.float(1e12)).unwrap();
        }
    }

    // Filesystems: long label values.
    let mounts = [
        ("/dev/nvme0n1p2", "ext4", "/"),
        ("/dev/nvme0n1p1", "vfat", "/boot/efi"),
        ("tmpfs", "tmpfs", "/run"),
        ("tmpfs", "tmpfs", "/run/user/1000"),
        (
            "overlay",
            "overlay",
            "/var/lib/containerd/io.containerd.runtime.v2.task/k8s.io/0123456789abcdef/rootfs",
        ),
        (
            "shm",
            "tmpfs",
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/fedcba9876543210/shm",
        ),
    ];
    for (metric, help) in [
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
        ),
        ("node_filesystem_size_bytes", "Filesystem size in bytes."),
        ("node_filesystem_files", "Filesystem total file nodes."),
        ("node_filesystem_readonly", "Filesystem read-only status."),
    ] {
        let n = w.family(metric, "gauge", help);
        for (dev, fstype, mount) in mounts {
            writeln!(
                w.out,
                "{n}{{device=\"{dev}\",device_error=\"\",fstype=\"{fstype}\",mountpoint=\"{mount}\"}} {:e}",
                rng.float(1e12)
            )
            .unwrap();
        }
    }

    // Network interfaces, many counters each.
    let ifaces: Vec<String> = ["eth0", "eth1", "lo", "docker0", "cni0", "flannel.1"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain((0..24).map(|i| format!("veth{:08x}", rng.next() as u32 ^ i)))
        .collect();
    for metric in [
        "receive_bytes",
        "receive_packets",
        "receive_errs",
        "receive_drop",
        "receive_fifo",
        "receive_frame",
        "receive_compressed",
        "receive_multicast",
        "transmit_bytes",
        "transmit_packets",
        "transmit_errs",
        "transmit_drop",
        "transmit_fifo",
        "transmit_colls",
        "transmit_carrier",
        "transmit_compressed",
    ] {
        let n = w.family(
            &format!("node_network_{metric}_total"),
            "counter",
            &format!("Network device statistic {metric}."),
        );
        for i in &ifaces {
            writeln!(
                w.out,
                "{n}{{device=\"{i}\"}} {}",
                rng.next() % 10_000_000_000
            )
            .unwrap();
        }
    }

    // A histogram with escaped label values, then fill up with memory gauges.
    let n = w.family(
        "promhttp_request_duration_seconds",
        "histogram",
        "Histogram of latencies for HTTP requests.",
    );
    for handler in ["/metrics", "/api/v1/query", "/probe?target=\\\"x\\\""] {
        let mut cumulative = 0;
        for le in [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
        ] {
            cumulative += rng.next() % 100;
            writeln!(
                w.out,
                "{n}_bucket{{handler=\"{handler}\",le=\"{le}\"}} {cumulative}"
            )
            .unwrap();
        }
        writeln!(w.out, "{n}_sum{{handler=\"{handler}\"}} {}", rng.float(1e4)).unwrap();
        writeln!(w.out, "{n}_count{{handler=\"{handler}\"}} {cumulative}").unwrap();
    }
    let mut i = 0;
    while w.out.len() < target_bytes {
        let n = w.family(
            &format!("node_memory_field_{i}_bytes"),
            "gauge",
            "Memory information field from /proc/meminfo.",
        );
        writeln!(w.out, "{n} {:e}", rng.float(1e11)).unwrap();
        let n = w.family(
            &format!("node_vmstat_field_{i}"),
            "unknown",
            "/proc/vmstat information field.",
        );
        writeln!(w.out, "{n} {}", rng.next() % 1_000_000).unwrap();
        i += 1;
    }
    if style == Style::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out.into_bytes()
}

const TARGET: usize = 200 * 1024;

static BODY_004: LazyLock<Vec<u8>> = LazyLock::new(|| node_exporter_like(Style::Text004, TARGET));
static BODY_OM: LazyLock<Vec<u8>> =
    LazyLock::new(|| node_exporter_like(Style::OpenMetrics, TARGET));

fn run(bencher: Bencher, body: &'static [u8], flavor: Flavor) {
    // Sanity check outside the timed loop: the body parses.
    let families = parse(body, flavor, &Limits::UNLIMITED).expect("bench body parses");
    assert!(families.len() > 100);
    bencher
        .counter(BytesCount::new(body.len()))
        .bench(|| parse(black_box(body), flavor, &Limits::UNLIMITED));
}

#[divan::bench]
fn prometheus_004_200k(bencher: Bencher) {
    run(bencher, &BODY_004, Flavor::Prometheus004);
}

#[divan::bench]
fn openmetrics_200k(bencher: Bencher) {
    run(bencher, &BODY_OM, Flavor::OpenMetrics1);
}

/// Encoding one scrape's families into 64 KiB batches.
#[divan::bench]
fn encode_200k(bencher: Bencher) {
    let body: &[u8] = &BODY_004;
    let families = parse(body, Flavor::Prometheus004, &Limits::UNLIMITED).expect("parses");
    let filter = NameFilter::default();
    bencher.counter(BytesCount::new(body.len())).bench(|| {
        let mut enc = ResultEncoder::new(1, 1, 0, 0, 64 * 1024);
        enc.families(1, black_box(&families), &filter);
        enc.finish()
    });
}

/// Parse and encode: the agent's whole per-scrape work on the body.
#[divan::bench]
fn parse_and_encode_200k(bencher: Bencher) {
    let body: &[u8] = &BODY_004;
    let filter = NameFilter::default();
    bencher.counter(BytesCount::new(body.len())).bench(|| {
        let families =
            parse(black_box(body), Flavor::Prometheus004, &Limits::UNLIMITED).expect("parses");
        let mut enc = ResultEncoder::new(1, 1, 0, 0, 64 * 1024);
        enc.families(1, &families, &filter);
        enc.finish()
    });
}
