//! Backlogs that reach into rotated files, compressed ones included, against real files:
//! kubelet's `0.log.<stamp>` compressed later to `0.log.<stamp>.gz` (by this crate's encoder,
//! kubelet's way, and by the system `gzip`), Docker json-file's `.N` / `.N.gz`, multi-member
//! files, and damaged ones (truncated, corrupt), which must become exact gaps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use logrelay_agent::tail::{SEQ_BASE, Tailer, TailerConfig};
use logrelay_wire::control::{Demand, SeqPos};
use tokio::sync::mpsc;

mod support;
use support::{ChanSink, DEADLINE, Got, decode, job, line_text, lines, tailer};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000_000_000;

/// The timestamp of line `i`: one millisecond apart from [`T0`].
fn stamp(i: usize) -> i64 {
    T0 + i as i64 * 1_000_000
}

fn rfc3339(i: usize) -> String {
    let ms = i % 1000;
    let s = i / 1000;
    format!(
        "2024-01-01T00:{:02}:{:02}.{ms:03}000000Z",
        s / 60 % 60,
        s % 60
    )
}

/// A container's log directory as kubelet keeps it, written by a CRI runtime.
struct Pod {
    dir: tempfile::TempDir,
    file: std::fs::File,
    n: usize,
    rotations: usize,
    /// Bytes written to `0.log` since it was created.
    written: usize,
}

impl Pod {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("0.log")).unwrap();
        Self {
            dir,
            file,
            n: 0,
            rotations: 0,
            written: 0,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("0.log")
    }

    fn at(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Appends `lines` CRI records, the last line being split into two partial records.
    fn write(&mut self, lines: usize) {
        let mut buf = String::new();
        for k in 0..lines {
            let i = self.n;
            if k + 1 == lines && lines > 1 {
                let text = format!("line {i}");
                let (a, b) = text.split_at(3);
                buf.push_str(&format!("{} stdout P {a}\n", rfc3339(i)));
                buf.push_str(&format!("{} stdout F {b}\n", rfc3339(i)));
            } else {
                buf.push_str(&format!("{} stdout F line {i}\n", rfc3339(i)));
            }
            self.n += 1;
        }
        self.file.write_all(buf.as_bytes()).unwrap();
        self.written += buf.len();
    }

    /// kubelet: renames `0.log` to `0.log.<stamp>`; the runtime reopens `0.log`. Returns the
    /// rotated name and its size.
    fn rotate(&mut self) -> (String, usize) {
        self.rotations += 1;
        let name = format!("0.log.20240101-0000{:02}", self.rotations);
        std::fs::rename(self.path(), self.at(&name)).unwrap();
        self.file = std::fs::File::create(self.path()).unwrap();
        (name, std::mem::take(&mut self.written))
    }
}

/// kubelet's `compressLog`: `<name>.tmp` written with gzip, renamed to `<name>.gz`, `<name>`
/// deleted. `members` > 1 writes that many gzip members, one after the other.
fn compress(dir: &Path, name: &str, members: usize) {
    let plain = std::fs::read(dir.join(name)).unwrap();
    let tmp = dir.join(format!("{name}.tmp"));
    let mut out = std::fs::File::create(&tmp).unwrap();
    let per = plain.len().div_ceil(members.max(1)).max(1);
    for part in plain.chunks(per) {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(part).unwrap();
        out.write_all(&e.finish().unwrap()).unwrap();
    }
    out.sync_all().unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.gz"))).unwrap();
    std::fs::remove_file(dir.join(name)).unwrap();
}

/// The system `gzip`: replaces `<name>` with `<name>.gz`.
fn gzip_command(dir: &Path, name: &str) {
    let status = std::process::Command::new("gzip")
        .arg(dir.join(name))
        .status()
        .expect("the gzip command runs");
    assert!(status.success());
}

/// Serves a demand that ends by itself (`follow: false`) and returns everything it sent.
async fn read_once(tailer: &Arc<Tailer>, path: &Path, spec: Demand) -> Vec<Got> {
    let (tx, mut rx) = mpsc::channel(1 << 16);
    tokio::time::timeout(DEADLINE, tailer.serve(job(path, &spec), &mut ChanSink(tx)))
        .await
        .expect("the read ends within the deadline")
        .expect("the read succeeds");
    let mut got = Vec::new();
    while let Ok(b) = rx.try_recv() {
        got.extend(decode(&b));
    }
    got
}

/// A followed demand running in the background.
struct Live {
    rx: mpsc::Receiver<Bytes>,
    got: Vec<Got>,
}

impl Live {
    fn start(tailer: &Arc<Tailer>, path: &Path, spec: Demand) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (tailer, path) = (tailer.clone(), path.to_path_buf());
        tokio::spawn(async move {
            let _ = tailer.serve(job(&path, &spec), &mut ChanSink(tx)).await;
        });
        Self {
            rx,
            got: Vec::new(),
        }
    }

    async fn until_lines(&mut self, n: usize) {
        let Self { rx, got } = self;
        tokio::time::timeout(DEADLINE, async {
            while lines(got).len() < n {
                let b = rx.recv().await.expect("the demand runs");
                got.extend(decode(&b));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; got {} items: {:?}", got.len(), got.last()));
    }

    fn epoch(&self) -> u64 {
        match self.got.first() {
            Some(Got::Line(e, ..) | Got::Gap(e, ..)) => *e,
            None => panic!("nothing yet"),
        }
    }
}

fn tail(n: u32) -> Demand {
    Demand {
        tail: Some(n),
        ..Demand::default()
    }
}

/// `(seq, text)` of lines `range`, the first numbered `first_seq`.
fn numbered(range: std::ops::Range<usize>, first_seq: u64) -> Vec<(u64, String)> {
    range
        .enumerate()
        .map(|(k, i)| (first_seq + k as u64, line_text(i)))
        .collect()
}

/// Lines 0..100 in `r1` (compressed by this crate, in three members), 100..200 in `r2`
/// (compressed by the system `gzip`), 200..300 in `r3` (plain, the newest rotated file, as
/// kubelet leaves it), 300..350 in `0.log`. Returns the rotated files' names and sizes.
fn kubelet_pod() -> (Pod, [(String, usize); 3]) {
    let mut pod = Pod::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        pod.write(100);
        names.push(pod.rotate());
    }
    pod.write(50);
    compress(pod.dir.path(), &names[0].0, 3);
    gzip_command(pod.dir.path(), &names[1].0);
    (pod, names.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reaches_back_across_plain_and_compressed_rotated_files() {
    let (pod, names) = kubelet_pod();
    assert!(pod.at(&format!("{}.gz", names[0].0)).exists());
    assert!(pod.at(&format!("{}.gz", names[1].0)).exists());
    assert!(!pod.at(&names[1].0).exists());
    let (tailer, metrics) = tailer(TailerConfig::default());

    // 320 lines: all of 0.log and the plain rotated file, 70 from the file `gzip` compressed.
    let got = read_once(&tailer, &pod.path(), tail(320)).await;
    assert_eq!(lines(&got), numbered(30..350, SEQ_BASE - 320));
    // Further back than the start of the oldest (multi-member) file: every line there is,
    // numbered from 0 as a reader from the start would.
    let got = read_once(&tailer, &pod.path(), tail(1000)).await;
    assert_eq!(lines(&got), numbered(0..350, 0));
    assert!(got.iter().all(|g| matches!(g, Got::Line(..))), "no gap");
    assert_eq!(metrics.unreadable_rotated_files.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_finds_its_start_inside_a_compressed_file() {
    let (pod, _) = kubelet_pod();
    let (tailer, _) = tailer(TailerConfig::default());
    // Line 150 is in the middle of the file the system `gzip` compressed.
    let got = read_once(
        &tailer,
        &pod.path(),
        Demand {
            since_ns: Some(stamp(150)),
            ..Demand::default()
        },
    )
    .await;
    let texts: Vec<String> = lines(&got).into_iter().map(|(_, m)| m).collect();
    assert_eq!(texts, (150..350).map(line_text).collect::<Vec<_>>());
    // And inside the oldest one, made of three gzip members.
    let got = read_once(
        &tailer,
        &pod.path(),
        Demand {
            since_ns: Some(stamp(42)),
            ..Demand::default()
        },
    )
    .await;
    let texts: Vec<String> = lines(&got).into_iter().map(|(_, m)| m).collect();
    assert_eq!(texts, (42..350).map(line_text).collect::<Vec<_>>());
}

/// Damages the compressed `<name>.gz` of `pod`: `cut` keeps its first half, else a bit of its
/// CRC-32 is flipped (the content inflates, and its size is known).
fn damage(pod: &Pod, name: &str, cut: bool) {
    let path = pod.at(&format!("{name}.gz"));
    let mut bytes = std::fs::read(&path).unwrap();
    if cut {
        bytes.truncate(bytes.len() / 2);
    } else {
        let at = bytes.len() - 8;
        bytes[at] ^= 0x10;
    }
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_compressed_file_is_an_exact_gap_and_the_rest_is_read() {
    for cut in [true, false] {
        let (pod, names) = kubelet_pod();
        // What the damaged file held, before it was compressed.
        let r2_bytes = names[1].1;
        damage(&pod, &names[1].0, cut);
        let (tailer, metrics) = tailer(TailerConfig::default());

        // Everything there is: the lines of the good files, and where the damaged one was, a gap
        // (no line count: its lines were never counted; its bytes when its trailer was reached).
        let got = read_once(&tailer, &pod.path(), tail(1000)).await;
        let gap_bytes = if cut { 0 } else { r2_bytes as u64 };
        let epoch = match got[0] {
            Got::Line(e, ..) | Got::Gap(e, ..) => e,
        };
        let mut want: Vec<Got> = numbered(0..100, 0)
            .into_iter()
            .map(|(s, m)| Got::Line(epoch, s, m))
            .collect();
        want.push(Got::Gap(epoch, 100, 0, gap_bytes));
        want.extend(
            numbered(200..350, 100)
                .into_iter()
                .map(|(s, m)| Got::Line(epoch, s, m)),
        );
        assert_eq!(got, want, "cut: {cut}");
        assert_eq!(metrics.unreadable_rotated_files.get(), 1);

        // A backlog the good files hold does not touch it.
        let got = read_once(&tailer, &pod.path(), tail(150)).await;
        assert_eq!(lines(&got), numbered(200..350, SEQ_BASE - 150));
        assert!(got.iter().all(|g| matches!(g, Got::Line(..))));

        // Following from before it: the same gap in band, and following goes on.
        let mut live = Live::start(
            &tailer,
            &pod.path(),
            Demand {
                since_ns: Some(stamp(90)),
                follow: true,
                ..Demand::default()
            },
        );
        live.until_lines(10 + 150).await;
        let gaps: Vec<&Got> = live
            .got
            .iter()
            .filter(|g| matches!(g, Got::Gap(..)))
            .collect();
        assert_eq!(gaps.len(), 1);
        assert!(matches!(gaps[0], Got::Gap(_, _, 0, b) if *b == gap_bytes));
        let mut pod = pod;
        pod.write(5);
        live.until_lines(165).await;
        let texts: Vec<String> = lines(&live.got).into_iter().map(|(_, m)| m).collect();
        let want: Vec<String> = (90..100).chain(200..355).map(line_text).collect();
        assert_eq!(texts, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_in_a_new_epoch_by_time_reaches_into_a_compressed_file() {
    // The relay re-opens a stream after the agent restarted: `since_seq` names an epoch this
    // agent never had, `since_ns` is just after the newest line the relay held.
    let (mut pod, _) = kubelet_pod();
    let (tailer, _) = tailer(TailerConfig::default());
    let lost_epoch = 12_345;
    let mut live = Live::start(
        &tailer,
        &pod.path(),
        Demand {
            since_seq: Some(SeqPos {
                epoch: lost_epoch,
                seq: 77,
            }),
            since_ns: Some(stamp(61) + 1),
            follow: true,
            ..Demand::default()
        },
    );
    live.until_lines(350 - 62).await;
    assert_ne!(live.epoch(), lost_epoch, "a new epoch");
    let got = lines(&live.got);
    let texts: Vec<String> = got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(texts, (62..350).map(line_text).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1), "consecutive");

    // It follows on across the next rotation, and kubelet compressing the rotated file.
    pod.write(10);
    let (name, _) = pod.rotate();
    pod.write(10);
    compress(pod.dir.path(), &name, 1);
    live.until_lines(350 - 62 + 20).await;
    let texts: Vec<String> = lines(&live.got).into_iter().map(|(_, m)| m).collect();
    assert_eq!(texts, (62..370).map(line_text).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_up_to_a_join_point_reads_a_compressed_file_as_the_follower_did() {
    let (pod, _) = kubelet_pod();
    let (tailer, _) = tailer(TailerConfig::default());
    // The live demand's backlog starts inside the oldest, compressed, file.
    let mut live = Live::start(
        &tailer,
        &pod.path(),
        Demand {
            since_ns: Some(stamp(20)),
            follow: true,
            ..Demand::default()
        },
    );
    live.until_lines(330).await;
    let epoch = live.epoch();
    let all = lines(&live.got);
    let end = all.last().unwrap().0 + 1;
    // A joining watcher asks for 300 lines before the join point: through the plain files
    // into the compressed ones, numbered exactly as the follower numbered them.
    let got = read_once(
        &tailer,
        &pod.path(),
        Demand {
            until: Some(SeqPos { epoch, seq: end }),
            ..tail(300)
        },
    )
    .await;
    assert_eq!(lines(&got), all[all.len() - 300..]);
}

/// Docker's json-file driver with `compress`: `<id>-json.log` renamed to `.1`, `.1` to `.2`
/// and compressed to `.2.gz`; kubelet links `0.log` to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reaches_into_docker_json_rotations_compressed_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("abc-json.log");
    let write = |from: usize, to: usize| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for i in from..to {
            writeln!(
                f,
                r#"{{"log":"line {i}\n","stream":"stdout","time":"{}"}}"#,
                rfc3339(i)
            )
            .unwrap();
        }
    };
    let name = |n: usize| format!("abc-json.log.{n}");
    // Three rotations: `.2.gz` (oldest), `.1.gz`, then `.1` as the newest rotated file.
    write(0, 40);
    std::fs::rename(&log, dir.path().join(name(1))).unwrap();
    write(40, 80);
    std::fs::rename(dir.path().join(name(1)), dir.path().join(name(2))).unwrap();
    gzip_command(dir.path(), &name(2));
    std::fs::rename(&log, dir.path().join(name(1))).unwrap();
    write(80, 120);
    std::fs::rename(
        dir.path().join(format!("{}.gz", name(2))),
        dir.path().join(format!("{}.gz", name(3))),
    )
    .unwrap();
    std::fs::rename(dir.path().join(name(1)), dir.path().join(name(2))).unwrap();
    compress(dir.path(), &name(2), 1);
    std::fs::rename(&log, dir.path().join(name(1))).unwrap();
    write(120, 130);
    let link = dir.path().join("0.log");
    std::os::unix::fs::symlink(&log, &link).unwrap();

    let (tailer, _) = tailer(TailerConfig::default());
    let got = read_once(&tailer, &link, tail(100)).await;
    let texts: Vec<String> = lines(&got).into_iter().map(|(_, m)| m).collect();
    assert_eq!(texts, (30..130).map(line_text).collect::<Vec<_>>());
}
