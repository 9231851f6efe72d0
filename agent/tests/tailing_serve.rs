//! Serving demands with the tailer against real files: backlog, follow across rotation, joins
//! with `until`, resumes with `since_seq`, cancels, the byte budget and the watchdog.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use logrelay_agent::tail::{Ended, Job, SEQ_BASE, TailError, TailParams, Tailer, TailerConfig};
use logrelay_wire::batch::{self};
use logrelay_wire::control::{Demand, SeqPos};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod support;
use support::{ChanSink, DEADLINE, Got, decode, job, line_text, lines, params, tailer};

/// A container log directory with a CRI writer.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    file: std::fs::File,
    n: usize,
    rotations: usize,
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
            rotations: 0,
        }
    }

    /// A log already holding `lines` lines.
    fn with_lines(lines: usize) -> Self {
        let mut log = Self::new();
        log.write(lines);
        log
    }

    fn write(&mut self, lines: usize) {
        let mut buf = String::new();
        for _ in 0..lines {
            buf.push_str(&format!(
                "2024-01-01T00:00:{:02}.{:09}Z stdout F line {}\n",
                self.n / 1_000_000_000 % 60,
                self.n % 1_000_000_000,
                self.n
            ));
            self.n += 1;
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    /// kubelet: rename, then the runtime reopens `0.log`.
    fn rotate(&mut self) {
        self.rotations += 1;
        let rotated = self
            .path
            .with_file_name(format!("0.log.20240101-0000{:02}", self.rotations));
        std::fs::rename(&self.path, rotated).unwrap();
        self.file = std::fs::File::create(&self.path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// `tail: n`, read once.
fn tail(n: u32) -> Demand {
    Demand {
        tail: Some(n),
        ..Demand::default()
    }
}

/// `tail: n`, then follow.
fn follow_tail(n: u32) -> Demand {
    Demand {
        follow: true,
        ..tail(n)
    }
}

/// A demand served in the background, and what it delivered so far.
struct Served {
    rx: mpsc::Receiver<Bytes>,
    got: Vec<Got>,
}

impl Served {
    /// Receives until `done` holds or the deadline passes (or the demand ends).
    async fn until(&mut self, done: impl Fn(&[Got]) -> bool) {
        let Self { rx, got } = self;
        tokio::time::timeout(DEADLINE, async {
            while !done(got) {
                let Some(b) = rx.recv().await else { return };
                got.extend(decode(&b));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; got {} items: {:?}", got.len(), got.last()));
    }

    /// Receives until at least `n` lines arrived.
    async fn until_lines(&mut self, n: usize) {
        self.until(|g| lines(g).len() >= n).await;
    }

    /// Sequence numbers and messages of the lines received.
    fn lines(&self) -> Vec<(u64, String)> {
        lines(&self.got)
    }

    /// Messages of the lines received.
    fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|(_, m)| m).collect()
    }

    /// The epoch of the first item received.
    fn epoch(&self) -> u64 {
        match self.got.first() {
            Some(Got::Line(epoch, ..) | Got::Gap(epoch, ..)) => *epoch,
            None => panic!("nothing received yet"),
        }
    }

    /// True once the demand finished (its sender is gone), within the deadline.
    async fn ends(&mut self) -> bool {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("the demand ends or sends within the deadline")
            .is_none()
    }
}

/// Starts a demand in the background with `params`; `cap` batches may wait unread.
fn serve_with(
    tailer: &Arc<Tailer>,
    path: &Path,
    spec: Demand,
    params: TailParams,
    cap: usize,
) -> Served {
    let (tx, rx) = mpsc::channel(cap);
    let tailer = tailer.clone();
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let _ = tailer
            .serve(
                Job {
                    path: &path,
                    spec: &spec,
                    stream_ref: 7,
                    params,
                },
                &mut ChanSink(tx),
            )
            .await;
    });
    Served {
        rx,
        got: Vec::new(),
    }
}

/// Starts a demand in the background with the default [`params`].
fn serve(tailer: &Arc<Tailer>, path: &Path, spec: Demand, cap: usize) -> Served {
    serve_with(tailer, path, spec, params(), cap)
}

/// A demand the relay can cancel: what it delivers, the cancel switch, and how serving ended.
type Cancellable = (
    Served,
    oneshot::Sender<()>,
    JoinHandle<Result<Ended, TailError>>,
);

/// Starts a demand in the background that ends when the returned switch is thrown, as the
/// uplink does on `cancel`.
fn serve_cancellable(tailer: &Arc<Tailer>, path: &Path, spec: Demand) -> Cancellable {
    let (tx, rx) = mpsc::channel(1024);
    let (cancel, cancelled) = oneshot::channel::<()>();
    let tailer = tailer.clone();
    let path = path.to_path_buf();
    let ended = tokio::spawn(async move {
        let cancelled = async {
            let _ = cancelled.await;
        };
        tailer
            .serve_until(job(&path, &spec), &mut ChanSink(tx), cancelled)
            .await
    });
    let served = Served {
        rx,
        got: Vec::new(),
    };
    (served, cancel, ended)
}

/// Polls `check` until it holds, up to the deadline: for state with no event to wait on.
async fn wait_for(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_numbers_on_across_rotations_and_a_backfill_joins_exactly() {
    let mut log = Log::with_lines(50);
    let (tailer, _) = tailer(TailerConfig::default());
    let mut live = serve(&tailer, log.path(), follow_tail(10), 1024);
    live.until_lines(10).await;
    assert_eq!(
        live.lines(),
        (40..50)
            .map(|i| (SEQ_BASE - 50 + i as u64, line_text(i)))
            .collect::<Vec<_>>(),
        "the last 10 lines, numbered down from the anchor"
    );
    let epoch = live.epoch();
    // Three rotations while following: numbering goes on.
    for _ in 0..3 {
        log.write(20);
        log.rotate();
    }
    log.write(5);
    live.until_lines(75).await;
    let all = live.lines();
    assert_eq!(
        all,
        (40..115)
            .map(|i| (SEQ_BASE - 50 + i as u64, line_text(i)))
            .collect::<Vec<_>>()
    );
    assert!(
        live.got
            .iter()
            .all(|g| matches!(g, Got::Line(e, ..) if *e == epoch))
    );

    // A subscriber joining now asks for 40 lines before the live end: they reach back through
    // two rotated files, numbered exactly as the live lines were.
    let end = SEQ_BASE - 50 + 115;
    let mut back = serve(
        &tailer,
        log.path(),
        Demand {
            until: Some(SeqPos { epoch, seq: end }),
            ..tail(40)
        },
        1024,
    );
    back.until_lines(40).await;
    assert_eq!(back.lines(), all[all.len() - 40..]);
    assert!(back.ends().await, "the backfill ends at `until`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reaches_into_the_rotated_file_without_a_follower() {
    let mut log = Log::with_lines(30);
    log.rotate();
    log.write(5);
    let (tailer, _) = tailer(TailerConfig::default());
    let mut rx = serve(&tailer, log.path(), tail(12), 1024);
    rx.until_lines(12).await;
    assert_eq!(rx.texts(), (23..35).map(line_text).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_contains_filter_lines_in_the_agent() {
    let log = Log::with_lines(40);
    let (tailer, _) = tailer(TailerConfig::default());
    // Lines are stamped 1 ns apart from 2024-01-01T00:00:00Z.
    let t0 = 1_704_067_200_000_000_000i64;
    let mut rx = serve(
        &tailer,
        log.path(),
        Demand {
            since_ns: Some(t0 + 25),
            contains: Some("line 3".into()),
            ..Demand::default()
        },
        1024,
    );
    rx.until_lines(10).await;
    assert_eq!(rx.texts(), (30..40).map(line_text).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_filters_lines_in_the_agent_together_with_contains() {
    let log = Log::with_lines(40);
    let (tailer, _) = tailer(TailerConfig::default());
    let mut rx = serve(
        &tailer,
        log.path(),
        Demand {
            tail: Some(40),
            contains: Some("line".into()),
            // Terminator left out: `$` is the end of the message.
            matches: Some("(1|2)[05]$".into()),
            ..Demand::default()
        },
        1024,
    );
    rx.until_lines(4).await;
    let want: Vec<String> = [10, 15, 20, 25].into_iter().map(line_text).collect();
    assert_eq!(rx.texts(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_picks_up_exactly_where_the_last_batch_ended() {
    let mut log = Log::with_lines(5);
    let (tailer, _) = tailer(TailerConfig::default());
    let mut first = serve(&tailer, log.path(), follow_tail(5), 1024);
    first.until_lines(5).await;
    let epoch = first.epoch();
    // The data stream goes away (relay unreachable); following goes on into the budget,
    // across a rotation.
    let Served { rx, got } = first;
    drop(rx);
    log.write(100);
    log.rotate();
    log.write(100);
    // The resume comes at once, while the detached follower reads (and its old data stream,
    // which has not noticed that its receiver left, still waits on the queue): see
    // `a_demand_taken_over_by_a_resume_takes_no_batch_from_it`.
    let end = lines(&got).last().unwrap().0 + 1;
    let mut resumed = serve(
        &tailer,
        log.path(),
        Demand {
            since_seq: Some(SeqPos { epoch, seq: end }),
            follow: true,
            ..Demand::default()
        },
        1024,
    );
    resumed.got = got;
    resumed.until_lines(205).await;
    let all = resumed.lines();
    assert_eq!(
        all[0].0, 0,
        "a backlog reaching the start of the file numbers from 0"
    );
    assert_eq!(
        all,
        (0..205)
            .map(|i| (i as u64, line_text(i)))
            .collect::<Vec<_>>(),
        "no hole, no duplicate"
    );
}

/// Polls `fut` once, with this task's waker: the test decides when a demand runs.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// A demand served by a future the test polls itself (not spawned).
type Manual = Pin<Box<dyn Future<Output = Result<(), TailError>> + Send>>;

fn serve_manual(
    tailer: &Arc<Tailer>,
    path: &Path,
    spec: Demand,
) -> (Manual, mpsc::Receiver<Bytes>) {
    let (tx, rx) = mpsc::channel(1024);
    let (tailer, path) = (tailer.clone(), path.to_path_buf());
    let fut = Box::pin(async move { tailer.serve(job(&path, &spec), &mut ChanSink(tx)).await });
    (fut, rx)
}

/// Runs `demand` until `n` lines have arrived on `rx`, within the deadline.
async fn run_until_lines(
    demand: &mut Manual,
    rx: &mut mpsc::Receiver<Bytes>,
    got: &mut Vec<Got>,
    n: usize,
) {
    tokio::time::timeout(DEADLINE, async {
        while lines(got).len() < n {
            tokio::select! {
                biased;
                b = rx.recv() => got.extend(decode(&b.expect("the demand is running"))),
                r = &mut *demand => panic!("the demand ended: {r:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; got {} items: {:?}", got.len(), got.last()));
}

/// The race behind a resume that missed lines (it used to be seen about once in a few hundred
/// runs of the test above): the data stream whose receiver went away has not noticed yet (it
/// notices when a send fails) and still waits on the follower's queue when the resume takes the
/// follower over. The next batch wakes the old one first; it must not take it. Here the test
/// polls both demands itself, so the interleaving is forced, every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_taken_over_by_a_resume_takes_no_batch_from_it() {
    let mut log = Log::with_lines(5);
    let (tailer, _) = tailer(TailerConfig::default());
    let (mut old, mut old_rx) = serve_manual(&tailer, log.path(), follow_tail(5));
    let mut first = Vec::new();
    run_until_lines(&mut old, &mut old_rx, &mut first, 5).await;
    let epoch = match first[0] {
        Got::Line(e, ..) => e,
        Got::Gap(..) => panic!("a line first"),
    };
    // The receiver goes away; the old demand waits on the queue and does not know yet.
    drop(old_rx);
    assert!(poll_once(&mut old).await.is_pending());

    // The resume takes the follower over where the last batch ended.
    let resume = Demand {
        since_seq: Some(SeqPos { epoch, seq: 5 }),
        follow: true,
        ..Demand::default()
    };
    let (mut new, mut new_rx) = serve_manual(&tailer, log.path(), resume);
    assert!(poll_once(&mut new).await.is_pending());

    // The follower queues the next batch while neither demand runs; then the old one runs
    // first, as its wake-up came first.
    log.write(100);
    wait_for("the next batch queued", || tailer.budget().used() > 0).await;
    let ended = poll_once(&mut old).await;
    assert!(
        matches!(ended, Poll::Ready(Ok(()))),
        "the old demand sees it was taken over and ends: {ended:?}"
    );

    let mut got = first;
    run_until_lines(&mut new, &mut new_rx, &mut got, 105).await;
    assert_eq!(
        lines(&got),
        (0..105)
            .map(|i| (i as u64, line_text(i)))
            .collect::<Vec<_>>(),
        "no hole, no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_follower_at_once_and_a_resume_rereads_from_a_checkpoint() {
    let mut log = Log::with_lines(5);
    // A second followed log, to see that reading goes on for what is still watched.
    let mut other = Log::new();
    // Left alone, the watchdog would stop a detached follower only after an hour.
    let (tailer, metrics) = tailer(TailerConfig {
        detach_linger: Duration::from_secs(3600),
        ..TailerConfig::default()
    });
    let (mut first, cancel, ended) = serve_cancellable(&tailer, log.path(), follow_tail(5));
    first.until_lines(5).await;
    let mut watched = serve(&tailer, other.path(), follow_tail(0), 1024);
    wait_for("two followers", || metrics.followers.get() == 2).await;

    // The relay cancels the first demand: its follower stops, without waiting for the linger.
    cancel.send(()).unwrap();
    let ended = tokio::time::timeout(DEADLINE, ended)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.unwrap(), Ended::Cancelled);
    wait_for("the cancelled follower to stop", || {
        metrics.followers.get() == 1
    })
    .await;

    // Nothing more is read from the cancelled log, while the watched one is read on.
    let read = metrics.lines_read.get();
    log.write(100);
    other.write(3);
    watched.until_lines(3).await;
    assert_eq!(metrics.lines_read.get(), read + 3, "only the watched log");

    // A resume within the linger re-reads from a checkpoint, in the same epoch: no hole, no
    // duplicate.
    let end = first.lines().last().unwrap().0 + 1;
    let mut resumed = serve(
        &tailer,
        log.path(),
        Demand {
            since_seq: Some(SeqPos {
                epoch: first.epoch(),
                seq: end,
            }),
            follow: true,
            ..Demand::default()
        },
        1024,
    );
    resumed.until_lines(100).await;
    assert_eq!(resumed.epoch(), first.epoch());
    assert_eq!(
        resumed.lines(),
        (5..105)
            .map(|i| (i as u64, line_text(i)))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_drops_the_oldest_batches_and_says_so_in_band() {
    let mut log = Log::with_lines(1);
    let (tailer, _) = tailer(TailerConfig {
        queue_budget_bytes: 16 * 1024,
        ..TailerConfig::default()
    });
    // A receiver that reads the backlog, then stops reading: one batch in flight, the rest
    // queues.
    let mut rx = serve(&tailer, log.path(), follow_tail(1), 1);
    rx.until(|g| !g.is_empty()).await;
    for _ in 0..50 {
        log.write(100);
    }
    // Wait until the budget had to drop something.
    tokio::time::timeout(DEADLINE, async {
        while tailer.budget().dropped().0 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the budget fills");
    assert!(tailer.budget().used() <= 16 * 1024);
    let (dropped_lines, _) = tailer.budget().dropped();
    rx.until(|g| {
        let n: u64 = g
            .iter()
            .map(|x| match x {
                Got::Line(..) => 1,
                Got::Gap(_, _, c, _) => u64::from(*c),
            })
            .sum();
        n >= 5001
    })
    .await;
    // Lines and gaps cover every sequence number once, in order.
    let mut next = 0;
    let mut gap_lines = 0;
    for g in &rx.got {
        match g {
            Got::Line(_, s, m) => {
                assert_eq!(*s, next);
                assert_eq!(*m, line_text(*s as usize));
                next += 1;
            }
            Got::Gap(_, first, count, bytes) => {
                assert_eq!(*first, next);
                assert!(*bytes > 0);
                next += u64::from(*count);
                gap_lines += u64::from(*count);
            }
        }
    }
    assert_eq!(next, 5001);
    assert!(gap_lines >= dropped_lines && gap_lines > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_is_reopened_and_counted() {
    let mut log = Log::with_lines(3);
    let (tailer, metrics) = tailer(TailerConfig {
        stall_after: Duration::from_millis(200),
        ..TailerConfig::default()
    });
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tailer.clone().run(stop_rx));
    let mut rx = serve(&tailer, log.path(), follow_tail(3), 1024);
    rx.until_lines(3).await;
    tailer.freeze(log.path());
    log.write(7);
    rx.until_lines(10).await;
    assert_eq!(
        rx.lines(),
        (0..10)
            .map(|i| (i as u64, line_text(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(metrics.stalls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_json_behind_a_symlink_and_plain_text_are_read_per_file() {
    let dir = tempfile::tempdir().unwrap();
    // Docker's json-file log, linked where kubelet expects the container log.
    let target = dir.path().join("abc-json.log");
    std::fs::write(
        &target,
        concat!(
            r#"{"log":"hello \u00e9\n","stream":"stdout","time":"2024-01-01T00:00:00.000000001Z"}"#,
            "\n",
            r#"{"log":"a long line, part one / ","stream":"stderr","time":"2024-01-01T00:00:00.000000002Z"}"#,
            "\n",
            r#"{"log":"crlf\r\n","stream":"stdout","time":"2024-01-01T00:00:00.000000003Z"}"#,
            "\n",
            r#"{"log":"part two\n","stream":"stderr","time":"2024-01-01T00:00:00.000000004Z"}"#,
            "\n",
        ),
    )
    .unwrap();
    let link = dir.path().join("0.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (tailer, _) = tailer(TailerConfig::default());
    let mut rx = serve(&tailer, &link, tail(10), 16);
    rx.until_lines(3).await;
    assert_eq!(
        rx.texts(),
        [
            "hello é\n",
            "crlf\r\n",
            "a long line, part one / part two\n"
        ]
    );

    // Plain text (not a container runtime's format): lines as they are, bytes not UTF-8 kept.
    let plain = dir.path().join("1.log");
    std::fs::write(&plain, b"first\nsecond \xff\xfe\nthird\r\n").unwrap();
    let mut rx = serve(&tailer, &plain, tail(2), 16);
    rx.until_lines(2).await;
    assert_eq!(rx.texts(), ["second \u{fffd}\u{fffd}\n", "third\r\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_is_truncated_and_flagged() {
    let mut log = Log::new();
    let long = "x".repeat(5000);
    writeln!(log.file, "2024-01-01T00:00:00Z stdout F {long}").unwrap();
    log.write(1);
    let (tailer, _) = tailer(TailerConfig::default());
    let mut rx = serve_with(
        &tailer,
        log.path(),
        tail(2),
        TailParams {
            max_line_bytes: 1000,
            ..params()
        },
        16,
    );
    let b = tokio::time::timeout(DEADLINE, rx.rx.recv())
        .await
        .unwrap()
        .unwrap();
    let (_, ls) = batch::lines(&b).unwrap();
    assert_eq!(ls[0].message.len(), 1000);
    assert!(ls[0].flags.has(logrelay_wire::batch::LineFlags::TRUNCATED));
    assert_eq!(ls[1].message, b"line 0\n");
    assert!(!ls[1].flags.has(logrelay_wire::batch::LineFlags::TRUNCATED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_wakes_an_idle_follower_without_waiting_for_its_poll() {
    let mut log = Log::with_lines(1);
    let (tailer, _) = tailer(TailerConfig::default());
    // Polling alone would see the next line after an hour: only the inotify wake-up can
    // deliver it within the deadline.
    let hourly = TailParams {
        follow_poll: Duration::from_secs(3600),
        ..params()
    };
    let mut live = serve_with(&tailer, log.path(), follow_tail(1), hourly, 1024);
    live.until_lines(1).await;
    for n in 2..=4 {
        log.write(1);
        live.until_lines(n).await;
    }
    // Through a rotation too: the new file appears in the watched directory.
    log.rotate();
    log.write(1);
    live.until_lines(5).await;
    assert_eq!(live.texts(), (0..5).map(line_text).collect::<Vec<_>>());
}
