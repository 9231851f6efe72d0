//! A container log written the way a runtime and kubelet write it, at a steady rate, from a
//! thread of its own: CRI records (every line of one write stamped alike, as a runtime does),
//! and rotation by size the way kubelet rotates (rename `0.log` to `0.log.<stamp>`, reopen
//! `0.log`; optionally compress the older rotated files to `.gz`; keep a few).
//!
//! Line `i` carries [`KubeletWriter::message`]`(i)`, which starts with `i` in nine digits, so
//! a reader can tell exactly which lines it got ([`crate::ledger::Ledger`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SAMPLES: [&str; 3] = [
    include_str!("../../data/loghub/Apache_2k.log"),
    include_str!("../../data/loghub/HDFS_2k.log"),
    include_str!("../../data/loghub/Spark_2k.log"),
];

/// How the writer writes.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Lines per second.
    pub lines_per_sec: u32,
    /// `0.log` is rotated once it holds this many bytes.
    pub rotate_bytes: u64,
    /// Rotated files kept (older ones are deleted).
    pub keep_rotated: usize,
    /// Compress every rotated file but the newest, as kubelet does.
    pub gzip: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            lines_per_sec: 3_000,
            rotate_bytes: 256 * 1024,
            keep_rotated: 4,
            gzip: false,
        }
    }
}

/// A log being written; see the module doc.
#[derive(Debug)]
pub struct KubeletWriter {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    rotations: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl KubeletWriter {
    /// Starts writing `<pods>/<ns>_<pod>_<uid>/<container>/0.log`.
    pub fn start(pods: &Path, ns: &str, pod: &str, container: &str, config: WriterConfig) -> Self {
        let dir = pods
            .join(format!("{ns}_{pod}_0c0ffee0-0000-4000-8000-00000000d311"))
            .join(container);
        std::fs::create_dir_all(&dir).expect("container log directory");
        let log = RotatingLog::create(&dir, config);
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let rotations = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, written, rotations) = (stop.clone(), written.clone(), rotations.clone());
            std::thread::spawn(move || write_loop(log, config, &stop, &written, &rotations))
        };
        Self {
            stop,
            written,
            rotations,
            thread: Some(thread),
            dir,
        }
    }

    /// The message of line `i`, terminator included.
    pub fn message(i: u64) -> String {
        let text = SAMPLES[(i as usize) % SAMPLES.len()]
            .lines()
            .nth((i as usize / SAMPLES.len()) % 2000)
            .unwrap_or("");
        format!("{i:09} {text}\n")
    }

    /// The line number a message carries ([`Self::message`]).
    pub fn index_of(message: &[u8]) -> Option<u64> {
        std::str::from_utf8(message.get(..9)?).ok()?.parse().ok()
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Rotations so far.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// The container's log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops writing; the number of lines written.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.written()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
    }
}

impl Drop for KubeletWriter {
    fn drop(&mut self) {
        self.halt();
    }
}

fn write_loop(
    mut log: RotatingLog,
    config: WriterConfig,
    stop: &AtomicBool,
    written: &AtomicU64,
    rotations: &AtomicU64,
) {
    let start = Instant::now();
    let mut next = 0u64;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Pacing a load generator, not synchronising: catch up with the rate, then nap.
        let due = (start.elapsed().as_secs_f64() * f64::from(config.lines_per_sec)) as u64;
        let n = due.saturating_sub(next).min(1_000);
        if n > 0 {
            let ts = logrelay::demo::now_rfc3339();
            for i in next..next + n {
                buf.extend_from_slice(ts.as_bytes());
                buf.extend_from_slice(b" stdout F ");
                buf.extend_from_slice(KubeletWriter::message(i).as_bytes());
            }
            log.write(&buf);
            buf.clear();
            next += n;
            written.store(next, Ordering::Relaxed);
            if log.size >= config.rotate_bytes {
                log.rotate();
                rotations.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `0.log` and its rotated siblings.
struct RotatingLog {
    dir: PathBuf,
    file: std::fs::File,
    size: u64,
    config: WriterConfig,
    rotations: u64,
    /// Rotated files, oldest first: (name, compressed).
    rotated: Vec<(String, bool)>,
}

impl RotatingLog {
    fn create(dir: &Path, config: WriterConfig) -> Self {
        let file = std::fs::File::create(dir.join("0.log")).expect("create 0.log");
        Self {
            dir: dir.to_path_buf(),
            file,
            size: 0,
            config,
            rotations: 0,
            rotated: Vec::new(),
        }
    }

    fn write(&mut self, buf: &[u8]) {
        self.file.write_all(buf).expect("write 0.log");
        self.size += buf.len() as u64;
    }

    /// kubelet's `compressUncompressedLogs`, `removeExcessLogs`, then `rotateLatestLog`.
    fn rotate(&mut self) {
        if self.config.gzip {
            for (name, compressed) in &mut self.rotated {
                if !*compressed {
                    let path = self.dir.join(&*name);
                    let data = std::fs::read(&path).expect("read rotated");
                    let tmp = self.dir.join(format!("{name}.tmp"));
                    std::fs::write(&tmp, gzip_stored(&data)).expect("write .tmp");
                    std::fs::rename(&tmp, self.dir.join(format!("{name}.gz"))).expect("to .gz");
                    std::fs::remove_file(&path).expect("remove rotated");
                    *compressed = true;
                }
            }
        }
        while self.rotated.len() >= self.config.keep_rotated.max(1) {
            let (name, compressed) = self.rotated.remove(0);
            let name = if compressed {
                format!("{name}.gz")
            } else {
                name
            };
            std::fs::remove_file(self.dir.join(name)).expect("remove oldest");
        }
        self.rotations += 1;
        // kubelet's stamp format; a counter stands in for the clock (rotations here are faster
        // than one a second).
        let name = format!("0.log.20240501-{:06}", self.rotations);
        std::fs::rename(self.dir.join("0.log"), self.dir.join(&name)).expect("rotate");
        self.rotated.push((name, false));
        self.file = std::fs::File::create(self.dir.join("0.log")).expect("reopen 0.log");
        self.size = 0;
    }
}

/// A gzip member of stored deflate blocks (what kubelet's `.gz` files hold, less compressed).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
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
    let crc = data.iter().fold(!0u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
        crc
    });
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
