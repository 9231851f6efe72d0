//! File writers for agent mode: append CRI records to container logs at a steady rate, like a
//! container runtime. Each record's CRI timestamp and the stamp at the start of its message are
//! the write time, in nanoseconds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use logrelay_wire::time::rfc3339_nanos;

use crate::corpus::{Corpus, now_ns, stamp};
use crate::stats::ProducerStats;

/// `<pods>/<ns>_<pod>_<uid>/<container>/0.log`.
pub fn log_path(pods: &Path, ns: &str, pod: &str, container: &str) -> PathBuf {
    pods.join(format!("{ns}_{pod}_{}", pod_uid(pod)))
        .join(container)
        .join("0.log")
}

/// A stable UUID-shaped id per pod name.
pub fn pod_uid(pod: &str) -> String {
    let h = pod.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
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

/// Appends one CRI record per line to `out`, all stamped `ns`.
pub fn cri_records(corpus: &Corpus, first: u64, count: u64, ns: i64, out: &mut Vec<u8>) {
    let ts = rfc3339_nanos(ns);
    let st = stamp(ns);
    for i in first..first + count {
        out.extend_from_slice(ts.as_bytes());
        out.extend_from_slice(b" stdout F ");
        out.extend_from_slice(&st);
        out.extend_from_slice(corpus.body(i));
    }
}

/// Writes to a set of files on one OS thread until `stop`.
#[derive(Debug)]
pub struct FileWriter {
    files: Vec<(std::fs::File, u64)>,
    corpus: Arc<Corpus>,
    rate_per_file: f64,
    stats: Arc<ProducerStats>,
}

impl FileWriter {
    /// Creates (empty) the files at `paths`.
    pub fn create(
        paths: &[PathBuf],
        corpus: Arc<Corpus>,
        rate_per_file: f64,
        stats: Arc<ProducerStats>,
    ) -> std::io::Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            files.push((f, 0));
        }
        Ok(Self {
            files,
            corpus,
            rate_per_file,
            stats,
        })
    }

    /// Appends what is due every millisecond until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let started = Instant::now();
        let mut buf = Vec::with_capacity(256 * 1024);
        while !stop.load(Ordering::Relaxed) {
            // Pacing, not synchronisation: a runtime appends as the application writes.
            std::thread::sleep(Duration::from_millis(1));
            let due = (self.rate_per_file * started.elapsed().as_secs_f64()) as u64;
            let ns = now_ns();
            for (file, written) in &mut self.files {
                if *written >= due {
                    continue;
                }
                buf.clear();
                let n = (due - *written).min(10_000);
                cri_records(&self.corpus, *written, n, ns, &mut buf);
                file.write_all(&buf)?;
                *written += n;
                self.stats.lines.fetch_add(n, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_cri_with_the_write_time() {
        let c = Corpus::loghub(None);
        let mut out = Vec::new();
        cri_records(&c, 5, 3, 1_700_000_000_123_456_789, &mut out);
        let recs: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
        assert_eq!(recs.len(), 3);
        for (i, r) in recs.into_iter().enumerate() {
            let head = b"2023-11-14T22:13:20.123456789Z stdout F ";
            assert_eq!(&r[..head.len()], head);
            let message = &r[head.len()..];
            assert_eq!(
                crate::corpus::parse_stamp(message),
                Some(1_700_000_000_123_456_789)
            );
            assert_eq!(&message[crate::corpus::STAMP_BYTES..], c.body(5 + i as u64));
        }
    }

    #[test]
    fn paths_follow_the_kubelet_layout() {
        let p = log_path(Path::new("/pods"), "load", "a0-s1", "main");
        let dir = p.parent().unwrap().parent().unwrap().file_name().unwrap();
        let parsed = logrelay_wire::labels::PodDir::parse(dir.to_str().unwrap()).unwrap();
        assert_eq!(
            (parsed.namespace.as_str(), parsed.pod.as_str()),
            ("load", "a0-s1")
        );
        assert!(p.ends_with("main/0.log"));
    }
}
