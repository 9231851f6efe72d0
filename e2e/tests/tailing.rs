//! High-rate tailing through kubelet-style rotation, end to end: a writer appends real LogHub
//! lines as CRI records (some split into partial records, some on stderr) and rotates the way
//! kubelet does every 1 MB (rename `0.log` to `0.log.<stamp>`, reopen `0.log`, compress the
//! previously rotated file to `.gz` and delete it, keep a few), while a subscriber follows through
//! the relay. The subscriber must receive exactly the lines written: each once, in order, with
//! consecutive sequence numbers in one epoch, and no gap.
//!
//! `TAILING_SECS` (default 30) sets how long the writer runs, `TAILING_LINES_PER_SEC` (default
//! 20000) its rate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logrelay::client::Incoming;
use logrelay_e2e::*;
use logrelay_wire::batch::LineFlags;

const ROTATE_BYTES: u64 = 1 << 20;
const KEEP_COMPRESSED: usize = 3;

const SAMPLES: [&str; 3] = [
    include_str!("../../data/loghub/Apache_2k.log"),
    include_str!("../../data/loghub/HDFS_2k.log"),
    include_str!("../../data/loghub/Spark_2k.log"),
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The message of line `i` (terminator included) and whether it goes to stderr.
fn message(corpus: &[&str], i: u64) -> (String, bool) {
    let text = corpus[(i as usize) % corpus.len()];
    (format!("{i:09} {text}\n"), i.is_multiple_of(13))
}

/// Writes CRI records the way a container runtime does and rotates the way kubelet does.
struct KubeletLog {
    dir: PathBuf,
    file: std::fs::File,
    size: u64,
    rotations: u64,
    /// Rotated files, oldest first: (name, compressed).
    rotated: Vec<(String, bool)>,
}

impl KubeletLog {
    fn create(pods: &Path) -> Self {
        let dir = pods
            .join("load_writer_0c0ffee0-0000-4000-8000-000000000001")
            .join("app");
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("0.log")).unwrap();
        Self {
            dir,
            file,
            size: 0,
            rotations: 0,
            rotated: Vec::new(),
        }
    }

    fn write_line(&mut self, i: u64, message: &str, stderr: bool, out: &mut Vec<u8>) {
        let stream = if stderr { "stderr" } else { "stdout" };
        let ts = format!(
            "2024-05-01T12:{:02}:{:02}.{:09}Z",
            i / 60_000_000 % 60,
            i / 1_000_000 % 60,
            i % 1_000_000_000
        );
        // Every 7th line is split into partial records, as runtimes do with long lines.
        if i.is_multiple_of(7) && message.len() > 20 {
            let (a, b) = message.split_at(message.len() / 2);
            out.extend_from_slice(format!("{ts} {stream} P {a}\n").as_bytes());
            out.extend_from_slice(format!("{ts} {stream} F {b}").as_bytes());
        } else {
            out.extend_from_slice(format!("{ts} {stream} F {message}").as_bytes());
        }
    }

    fn flush(&mut self, buf: &mut Vec<u8>) {
        self.file.write_all(buf).unwrap();
        self.size += buf.len() as u64;
        buf.clear();
        if self.size >= ROTATE_BYTES {
            self.rotate();
        }
    }

    /// kubelet's `rotateLatestLog` after `compressUncompressedLogs` and `removeExcessLogs`.
    fn rotate(&mut self) {
        for (name, compressed) in &mut self.rotated {
            if !*compressed {
                let path = self.dir.join(&*name);
                let data = std::fs::read(&path).unwrap();
                let tmp = self.dir.join(format!("{name}.tmp"));
                std::fs::write(&tmp, gzip_stored(&data)).unwrap();
                std::fs::rename(&tmp, self.dir.join(format!("{name}.gz"))).unwrap();
                std::fs::remove_file(&path).unwrap();
                *compressed = true;
            }
        }
        while self.rotated.len() > KEEP_COMPRESSED {
            let (name, _) = self.rotated.remove(0);
            std::fs::remove_file(self.dir.join(format!("{name}.gz"))).unwrap();
        }
        self.rotations += 1;
        // kubelet's stamp format; a counter stands in for the clock (rotations here are faster
        // than kubelet's one a second).
        let name = format!("0.log.20240501-{:06}", self.rotations);
        std::fs::rename(self.dir.join("0.log"), self.dir.join(&name)).unwrap();
        self.rotated.push((name, false));
        self.file = std::fs::File::create(self.dir.join("0.log")).unwrap();
        self.size = 0;
    }
}

/// A gzip member of stored deflate blocks (what kubelet's `.gz` files hold, less compressed).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(u8::from(i + 1 == n));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_receives_exactly_the_lines_written_through_kubelet_rotation() {
    let secs = env_or("TAILING_SECS", 30);
    let rate = env_or("TAILING_LINES_PER_SEC", 20_000).max(1);
    let corpus: Vec<&'static str> = SAMPLES
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| !l.is_empty())
        .collect();

    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        logrelay_relay::RelayConfig {
            ring_bytes: 64 << 20,
            ..logrelay_relay::RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut log = KubeletLog::create(pods.path());
    let mut buf = Vec::new();
    let (m, e) = message(&corpus, 0);
    log.write_line(0, &m, e, &mut buf);
    log.flush(&mut buf);
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;

    let mut sub = relay.subscriber().await;
    sub.subscribe("w", &selector("load", "writer", "app"), Some(1))
        .await;
    // Line 0 arrives before the writer starts: a subscription that attached only after more
    // lines were written would (rightly) get the last of them as its `tail: 1`.
    sub.until("line 0", |s| s.total_lines() == 1).await;
    let first = sub.lines.values().flatten().next().expect("line 0").clone();
    assert_eq!(
        String::from_utf8_lossy(&first.message),
        message(&corpus, 0).0
    );

    // The writer, paced at `rate`, in its own thread; it returns how many lines it wrote.
    let mut writer = Some({
        let corpus = corpus.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 1u64;
            let mut buf = Vec::with_capacity(64 * 1024);
            while start.elapsed() < Duration::from_secs(secs) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
                while i < due {
                    let (m, e) = message(&corpus, i);
                    log.write_line(i, &m, e, &mut buf);
                    i += 1;
                    if buf.len() >= 32 * 1024 {
                        log.flush(&mut buf);
                    }
                }
                log.flush(&mut buf);
                std::thread::sleep(Duration::from_millis(2));
            }
            (i, log.rotations)
        })
    });

    // Check each line as it arrives.
    let mut next = 1u64;
    let mut epoch_seq = Some((first.epoch, first.seq));
    let mut total: Option<(u64, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    while total.is_none_or(|(n, _)| next < n) {
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            total = writer.take().map(|w| w.join().unwrap());
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "timed out at line {next} of {total:?}"
        );
        let incoming = tokio::time::timeout(Duration::from_millis(200), sub.client.next()).await;
        let Ok(incoming) = incoming else { continue };
        match incoming.expect("receive").expect("session open") {
            Incoming::Lines(lines) => {
                for l in lines {
                    let (m, stderr) = message(&corpus, next);
                    assert_eq!(
                        String::from_utf8_lossy(&l.message),
                        m,
                        "line {next}: every line once, in order"
                    );
                    assert_eq!(l.flags.has(LineFlags::STDERR), stderr, "line {next}");
                    assert!(!l.flags.has(LineFlags::PARTIAL | LineFlags::TRUNCATED));
                    if let Some((epoch, seq)) = epoch_seq {
                        assert_eq!((l.epoch, l.seq), (epoch, seq + 1), "line {next}");
                    }
                    epoch_seq = Some((l.epoch, l.seq));
                    next += 1;
                }
            }
            Incoming::AgentGap {
                first_seq, lines, ..
            } => {
                panic!("gap of {lines} lines at {first_seq} after line {next}")
            }
            Incoming::Event(e) => {
                assert!(
                    !matches!(
                        e,
                        logrelay_wire::session::Event::Gap { .. }
                            | logrelay_wire::session::Event::End { .. }
                    ),
                    "{e:?} after line {next}"
                );
            }
        }
    }
    let (written, rotations) = total.unwrap();
    assert_eq!(next, written);
    assert!(
        rotations >= secs.min(3),
        "the writer rotated ({rotations} times)"
    );
    assert_eq!(
        _agent
            .metric("logrelay_agent_rotated_unread_bytes_total")
            .await,
        0.0
    );
    eprintln!("{written} lines through {rotations} rotations in {secs} s");
}
