//! Delivery across lost connections and restarts, against real files: what was sent but not
//! acknowledged is sent again on resume (from the queue, nothing read twice), a follower keeps
//! its epoch while the relay is away, and a restarted agent starts its new epoch right after
//! the last line the relay holds, saying so in the first batch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use logrelay_agent::tail::{Job, TailParams, Tailer, TailerConfig};
use logrelay_wire::batch::{self, BatchHeader, FLAG_CONTINUES, Kind};
use logrelay_wire::control::{Demand, LineMark, SeqPos};
use tokio::sync::{mpsc, watch};

mod support;
use support::{ChanSink, DEADLINE, line_text, tailer};

/// A container log written as a runtime does: every line of one write carries one timestamp.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    file: std::fs::File,
    n: usize,
}

impl Log {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let file = std::fs::File::create(&path).unwrap();
        Self {
            _dir: dir,
            path,
            file,
            n: 0,
        }
    }

    /// Writes `lines` lines stamped `second` (seconds into 2024-01-01).
    fn write_at(&mut self, second: u32, lines: usize) {
        let mut buf = String::new();
        for _ in 0..lines {
            buf.push_str(&format!(
                "2024-01-01T00:00:{second:02}.000000000Z stdout F line {}\n",
                self.n
            ));
            self.n += 1;
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Unix nanoseconds of `second` seconds into 2024-01-01.
fn stamp(second: u32) -> i64 {
    (1_704_067_200 + i64::from(second)) * 1_000_000_000
}

/// One received batch: epoch, flags, and its lines as (seq, text).
#[derive(Debug)]
struct Got {
    epoch: u64,
    flags: u8,
    lines: Vec<(u64, String)>,
}

/// A demand being served into a channel.
struct Served {
    rx: mpsc::Receiver<Bytes>,
    got: Vec<Got>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    fn start(
        tailer: &Arc<Tailer>,
        path: &Path,
        spec: Demand,
        acks: Option<watch::Receiver<Option<SeqPos>>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let tailer = tailer.clone();
        let path = path.to_path_buf();
        let task = tokio::spawn(async move {
            let mut sink = ChanSink(tx);
            let _ = tailer
                .serve_acked(
                    Job {
                        path: &path,
                        spec: &spec,
                        stream_ref: 1,
                        params: params(),
                    },
                    &mut sink,
                    std::future::pending(),
                    acks,
                )
                .await;
        });
        Self {
            rx,
            got: Vec::new(),
            task,
        }
    }

    /// Receives until `n` lines arrived in all.
    async fn until_lines(&mut self, n: usize) {
        tokio::time::timeout(DEADLINE, async {
            while self.lines().len() < n {
                let b = self.rx.recv().await.expect("serving ended");
                let h = BatchHeader::parse(&b).unwrap();
                assert_eq!(h.kind, Kind::Log, "no gap expected");
                let (_, lines) = batch::lines(&b).unwrap();
                self.got.push(Got {
                    epoch: h.epoch,
                    flags: h.flags,
                    lines: lines
                        .iter()
                        .map(|l| (l.seq, String::from_utf8_lossy(l.message).into_owned()))
                        .collect(),
                });
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {n} lines; got {:?}", self.got));
    }

    /// Receives until the line numbered `seq` arrived.
    async fn until_seq(&mut self, seq: u64) {
        while self.lines().last().is_none_or(|(s, _)| *s < seq) {
            let n = self.lines().len() + 1;
            self.until_lines(n).await;
        }
    }

    fn lines(&self) -> Vec<(u64, String)> {
        self.got.iter().flat_map(|g| g.lines.clone()).collect()
    }

    fn epoch(&self) -> u64 {
        self.got[0].epoch
    }
}

/// Batches of 1 KiB.
fn params() -> TailParams {
    TailParams {
        max_batch_bytes: 1024,
        ..support::params()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_sent_but_not_acknowledged_is_sent_again_from_the_queue_on_resume() {
    let mut log = Log::new();
    log.write_at(1, 100);
    let (tailer, metrics) = tailer(TailerConfig::default());
    let (acks, acks_rx) = watch::channel(None);
    let mut first = Served::start(
        &tailer,
        log.path(),
        Demand {
            tail: Some(100),
            follow: true,
            ..Demand::default()
        },
        Some(acks_rx),
    );
    first.until_lines(100).await;
    let epoch = first.epoch();
    let base = first.lines()[0].0;
    // The relay's sessions were handed the first 40 lines; then the connection dies with the
    // other 60 sent into it and 50 more written meanwhile.
    acks.send_replace(Some(SeqPos {
        epoch,
        seq: base + 40,
    }));
    log.write_at(2, 50);
    first.until_lines(150).await;
    first.task.abort();
    let _ = first.task.await;
    let read = metrics.lines_read.get();
    assert_eq!(read, 150);

    // A new connection resumes where the sessions are.
    let (_acks, acks_rx) = watch::channel(None);
    let mut resumed = Served::start(
        &tailer,
        log.path(),
        Demand {
            since_seq: Some(SeqPos {
                epoch,
                seq: base + 40,
            }),
            follow: true,
            ..Demand::default()
        },
        Some(acks_rx),
    );
    resumed.until_seq(base + 149).await;
    assert_eq!(resumed.epoch(), epoch, "the same numbering");
    // A batch holding the resume point comes whole: drop what the sessions had, by seq.
    let got: Vec<(u64, String)> = resumed
        .lines()
        .into_iter()
        .filter(|(s, _)| *s >= base + 40)
        .collect();
    let want: Vec<(u64, String)> = (40..150).map(|i| (base + i as u64, line_text(i))).collect();
    assert_eq!(
        got, want,
        "every line from the resume point, once, in order"
    );
    assert_eq!(
        metrics.lines_read.get(),
        read,
        "served from what the agent kept: nothing read twice"
    );
    // And it follows on.
    log.write_at(3, 5);
    resumed.until_seq(base + 154).await;
    assert_eq!(resumed.lines().last().unwrap().1, line_text(154));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_starts_its_new_epoch_right_after_the_relays_last_line() {
    let mut log = Log::new();
    // Written in three writes, each stamped alike: 3 lines at 1 s, 4 at 2 s, 2 at 3 s.
    log.write_at(1, 3);
    log.write_at(2, 4);
    log.write_at(3, 2);
    // A fresh agent (it restarted: no epoch held). The relay holds up to the second line
    // stamped 2 s (line 4), in an epoch this agent never had.
    let (tailer, _) = tailer(TailerConfig::default());
    let resume = Demand {
        since_seq: Some(SeqPos { epoch: 77, seq: 5 }),
        since_ns: Some(stamp(2) + 1),
        after_line: Some(LineMark {
            ns: stamp(2),
            nth: 2,
        }),
        follow: true,
        ..Demand::default()
    };
    let mut served = Served::start(&tailer, log.path(), resume.clone(), None);
    served.until_lines(4).await;
    let texts: Vec<String> = served.lines().into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        texts,
        (5..9).map(line_text).collect::<Vec<_>>(),
        "right after line 4"
    );
    assert_ne!(served.epoch(), 77, "a new numbering");
    assert_eq!(
        served.got[0].flags & FLAG_CONTINUES,
        FLAG_CONTINUES,
        "the first batch says it continues"
    );
    assert!(
        served.got[1..]
            .iter()
            .all(|g| g.flags & FLAG_CONTINUES == 0)
    );
    log.write_at(4, 1);
    served.until_lines(5).await;
    assert_eq!(served.lines().last().unwrap().1, line_text(9));

    // When the files no longer reach back before that stamp, it cannot tell what was lost:
    // the lines come, unflagged.
    let mut short = Log::new();
    short.write_at(2, 4);
    short.write_at(3, 2);
    let (restarted, _) = self::tailer(TailerConfig::default());
    let mut served = Served::start(&restarted, short.path(), resume, None);
    served.until_lines(4).await;
    let texts: Vec<String> = served.lines().into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, (2..6).map(line_text).collect::<Vec<_>>());
    assert_eq!(served.got[0].flags & FLAG_CONTINUES, 0);
}
