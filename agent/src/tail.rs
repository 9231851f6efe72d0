//! Serving demands on container logs: backlog, follow, resume, across rotations, in a budget.
//!
//! # Epochs and sequence numbers
//!
//! Every line of a stream carries `(epoch, seq)`. Sequence numbers count *logical* lines (a CRI
//! `P…P F` run is one line), in the order the forward reader ([`reader::RecordReader`]) emits
//! them, and go up by one per line **across rotations**: while a stream is followed, reading
//! moves from `0.log` to the file that replaced it and numbering simply continues. An epoch is
//! one such unbroken numbering:
//!
//! * A demand that cannot continue a known numbering (the first `follow` of a stream, or one
//!   whose `since_seq` names an epoch this agent no longer has) starts a **new epoch**, a random
//!   53-bit number (exact in JavaScript). Its *anchor* is the newest clean point of the newest
//!   file, numbered [`SEQ_BASE`]; the backlog is found by walking *back* from there
//!   ([`seek::back`]) so `tail: N` never reads a whole file, and lines before the anchor get
//!   `SEQ_BASE - 1`, `SEQ_BASE - 2`, … (into the rotated files when the newest holds too few,
//!   gzip-compressed ones included: [`gz`]; one that cannot be read counts no lines and is
//!   told as a gap where it was).
//!   When the walk reaches the start of the oldest file it has counted every line, and the
//!   numbering is shifted so that the first line there is 0 (small logs read naturally).
//! * While the epoch lives, the agent keeps the stream's files open (including rotated and
//!   deleted ones it has read) and a list of checkpoints (clean points with their sequence
//!   numbers, one per batch). A backfill ending at `until` or a resume at `since_seq` in that
//!   epoch starts from the nearest checkpoint and reads the same bytes with the same reader, so
//!   it numbers every line exactly as the follower did: backfill and live tail join without a
//!   hole or a duplicate.
//! * Continuity is lost, and the next demand starts a new epoch, when the agent restarts, when
//!   the stream has not been followed for a while (the follower and its files are released), or
//!   when a relay asks afresh. Bytes rotated away before they could be read do not end the
//!   epoch: they are counted (`logrelay_agent_rotated_unread_bytes_total`) and reported in band as
//!   a gap with the bytes lost at the sequence number where they were.
//!
//! # Following
//!
//! A `follow` demand is served by a follower task per stream that reads ([`follow::Follower`]),
//! numbers, filters and encodes batches into the stream's [`Queue`], drawing on the agent-wide
//! [`Budget`]; the demand's data stream drains the queue. The follower outlives its data stream:
//! when the relay goes away it keeps following into the budget (dropping the oldest batches,
//! reported as gaps, if it fills) and the relay's re-sent demand (`since_seq`) picks up where the
//! relay's ring ended. A follower nobody re-attaches within `detach_linger` while the relay is
//! connected is stopped. A *cancelled* demand ([`Tailer::serve_until`]) stops its follower at
//! once, so nothing is read that nobody wants; the stream's files, checkpoints and epoch stay for
//! `detach_linger`, and a resume in that time re-reads from a checkpoint. A watchdog
//! ([`Tailer::run`]) re-opens a follower whose file grew but which read nothing for
//! `stall_after` (`logrelay_agent_stalls_total`), and releases what stopped followers held.

pub mod file;
pub mod follow;
pub mod gz;
pub mod reader;
pub mod seek;
pub mod wake;
pub mod walk;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logrelay_wire::batch::{
    BatchBuilder, FLAG_BACKFILL, FLAG_CONTINUES, FLAG_COUNT_UNKNOWN, HEADER_LEN, LineFlags,
    encode_gap_flagged,
};
use logrelay_wire::control::{Demand, SeqPos};
use logrelay_wire::pattern::{LinePattern, PatternError};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::budget::{Budget, Gap, Item, Queue};
use crate::fingerprint::FileId;
use crate::metrics::AgentMetrics;
use crate::sink::{BatchSink, SinkClosed};

pub use file::{ChainFile, HeldFile, chain_files};
pub use follow::{Follower, Progress};
pub use reader::{RecordReader, TailLine};
pub use seek::{Position, Want};

/// Sequence number of the first line after a new epoch's anchor; the backlog counts down from it.
pub const SEQ_BASE: u64 = 1 << 32;
/// Checkpoints kept per followed stream (one per batch).
const MAX_CHECKPOINTS: usize = 4096;
/// Finished files kept open per followed stream, for backfills reaching back into them.
const MAX_HISTORY_FILES: usize = 4;
/// Bytes a follower reads before yielding.
const POLL_BYTES: u64 = 256 * 1024;

/// Tuning of one demand.
#[derive(Debug, Clone, Copy)]
pub struct TailParams {
    /// Send a batch once it reaches this size.
    pub max_batch_bytes: usize,
    /// Longest line kept whole.
    pub max_line_bytes: usize,
    /// Poll interval while following an idle file.
    pub follow_poll: Duration,
}

/// How serving a demand ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything asked for was sent (`until` reached, the end of a one-off read, a followed
    /// file deleted and drained, or a newer demand took the follower over).
    Complete,
    /// The relay cancelled the demand; a follower it drained was stopped.
    Cancelled,
}

/// Why a demand could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The log file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The relay stopped reading this demand.
    #[error(transparent)]
    Closed(#[from] SinkClosed),
    /// The demand's line filter (`matches`) does not compile.
    #[error("line filter: {0}")]
    Filter(PatternError),
}

/// Tuning of the [`Tailer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailerConfig {
    /// Bytes of encoded batches queued toward the relay, over all followed streams.
    pub queue_budget_bytes: usize,
    /// A followed file that grew but was not read for this long is re-opened.
    pub stall_after: Duration,
    /// A follower no demand drains is stopped after this long while the relay is connected.
    pub detach_linger: Duration,
    /// After a (re)connection to the relay, a follower no demand drains is kept at least this
    /// long, with its epoch and queue, for the relay's sessions to resubscribe (a restarted
    /// relay learns what to resume only from them).
    pub resume_grace: Duration,
    /// A drained stream whose file is gone stays in the catalog this long after its last batch.
    pub drain_linger: Duration,
}

/// Default of `--follow-poll-ms`.
pub const DEFAULT_FOLLOW_POLL_MS: u64 = 10;
/// Default of `--max-batch-bytes`.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024;
/// Default of `--max-line-bytes`.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Default of `--queue-budget-bytes`.
pub const DEFAULT_QUEUE_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Default of `--stall-after-ms`.
pub const DEFAULT_STALL_AFTER_MS: u64 = 5_000;
/// Default of `--detach-linger-ms`.
pub const DEFAULT_DETACH_LINGER_MS: u64 = 10_000;
/// Default of `--resume-grace-ms`.
pub const DEFAULT_RESUME_GRACE_MS: u64 = 30_000;
/// Default of `--drain-linger-ms`.
pub const DEFAULT_DRAIN_LINGER_MS: u64 = 1_000;

impl Default for TailerConfig {
    fn default() -> Self {
        Self {
            queue_budget_bytes: DEFAULT_QUEUE_BUDGET_BYTES,
            stall_after: Duration::from_millis(DEFAULT_STALL_AFTER_MS),
            detach_linger: Duration::from_millis(DEFAULT_DETACH_LINGER_MS),
            resume_grace: Duration::from_millis(DEFAULT_RESUME_GRACE_MS),
            drain_linger: Duration::from_millis(DEFAULT_DRAIN_LINGER_MS),
        }
    }
}

/// Every followed stream of the agent; see the module doc.
#[derive(Debug)]
pub struct Tailer {
    config: TailerConfig,
    budget: Arc<Budget>,
    metrics: Arc<AgentMetrics>,
    /// Followed streams by log path and line filter: a demand with a pushed-down filter is a
    /// numbering of its own (the relay keeps one ring per stream and filter).
    streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    /// Generations of the data streams draining queues, unique across followers.
    consumers: AtomicU64,
    /// inotify wake-ups of followers at the end of their file.
    wakes: Arc<wake::Wakes>,
    /// Since when the agent is connected to the relay (`None`: it is not).
    connected_since: Mutex<Option<Instant>>,
}

/// A log path and the line filter of the demands it serves.
type StreamKey = (PathBuf, FilterKey);

/// A line filter as it keys followers: the substring, and the regular expression's source.
type FilterKey = (Option<Vec<u8>>, Option<String>);

#[derive(Debug)]
struct Stream {
    path: PathBuf,
    state: Mutex<State>,
}

impl Stream {
    /// A stream of `path` with no epoch, no files and no follower yet.
    fn new(path: &Path) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                epoch: 0,
                files: Vec::new(),
                checkpoints: VecDeque::new(),
                follower: None,
                stopped_at: None,
            }),
        })
    }
}

#[derive(Debug)]
struct State {
    epoch: u64,
    /// Open files, oldest first: finished ones kept for backfills, then the follower's chain.
    files: Vec<ChainFile>,
    /// Clean points `(seq, file, offset)`, by increasing sequence number.
    checkpoints: VecDeque<(u64, FileId, u64)>,
    follower: Option<Slot>,
    /// When a cancel stopped the follower: its files, checkpoints and epoch are kept for
    /// `detach_linger` (a resume re-reads from a checkpoint), then released.
    stopped_at: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    task: AbortHandle,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    spec: Filter,
    params: TailParams,
    stream_ref: u64,
    /// Generation of the data stream draining the queue (a newer one takes over).
    consumer: u64,
    attached: bool,
    detached_at: Instant,
    /// When the watchdog first saw the file ahead of the follower (cleared by progress).
    lag_seen: Option<Instant>,
}

/// What the follower task and the watchdog share.
#[derive(Debug)]
struct Shared {
    /// Head file and offset read, and when reading last made progress.
    progress: Mutex<(Option<(FileId, u64)>, Instant)>,
    /// One past the last line queued.
    queued_end: AtomicU64,
    /// The file was deleted and read to its end, and everything is queued.
    drained: Mutex<Option<Instant>>,
    /// Test hook: the follower stops reading (simulates a hung read).
    frozen: AtomicBool,
    /// Woken when the consumer generation changes.
    takeover: Notify,
}

/// The line filter of a demand, applied before encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filter {
    contains: Option<Vec<u8>>,
    matches: Option<LinePattern>,
    since_ns: Option<i64>,
}

impl Filter {
    /// The demand's filter, its regular expression compiled (the uplink refuses a demand whose
    /// pattern does not compile before it gets here: [`check_filter`]).
    fn of(spec: &Demand) -> Result<Self, TailError> {
        let (contains, matches) = Self::key(spec);
        Ok(Self {
            contains,
            matches: matches
                .map(|m| m.parse::<LinePattern>())
                .transpose()
                .map_err(TailError::Filter)?,
            since_ns: spec.since_ns,
        })
    }

    /// The demand's line filter as it keys followers: its substring and pattern source.
    fn key(spec: &Demand) -> FilterKey {
        (
            spec.contains
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(|c| c.as_bytes().to_vec()),
            spec.matches.clone().filter(|m| !m.is_empty()),
        )
    }

    fn wants(&self, line: &TailLine) -> bool {
        self.since_ns.is_none_or(|s| line.timestamp_ns >= s)
            && self
                .contains
                .as_deref()
                .is_none_or(|c| memchr::memmem::find(&line.message, c).is_some())
            && self
                .matches
                .as_ref()
                .is_none_or(|m| m.matches(&line.message))
    }
}

/// Whether a log demand's line filter can be served: its regular expression (`matches`)
/// compiles. The uplink answers `open_failed` `bad_request` for that demand otherwise.
pub fn check_filter(spec: &Demand) -> Result<(), PatternError> {
    match spec.matches.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.parse::<LinePattern>().map(drop),
        None => Ok(()),
    }
}

/// A batch ready to queue or send.
#[derive(Debug)]
struct Encoded {
    bytes: Bytes,
    first_seq: u64,
    end_seq: u64,
    lines: u32,
}

/// Packs consecutive wanted lines into batches.
#[derive(Debug)]
struct Encoder {
    stream_ref: u64,
    epoch: u64,
    flags: u8,
    max_batch_bytes: usize,
    filter: Filter,
    /// Lines below this sequence number are not sent (already sent, or before the backlog).
    from_seq: u64,
    /// Lines from this sequence number on are not sent (`until`).
    until_seq: Option<u64>,
    /// A new epoch that continues what the relay holds: lines up to that one are skipped.
    after: Option<After>,
    /// Header flags for the next batch only ([`FLAG_CONTINUES`]).
    pending_flags: u8,
    batch: Option<BatchBuilder>,
}

/// Where a new epoch picks up after the last line the relay holds (`after_line`): lines stamped
/// before `ns` are skipped, then `remaining` lines stamped `ns`; the next line continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct After {
    ns: i64,
    remaining: u32,
    /// A line stamped before `ns` was read first: the files held reach back past the relay's
    /// last line, so the continuation is exact if the count of lines stamped `ns` matches.
    older_seen: bool,
}

impl Encoder {
    fn push(&mut self, line: &TailLine, out: &mut Vec<Encoded>) {
        let mut wanted = line.seq >= self.from_seq
            && self.until_seq.is_none_or(|u| line.seq < u)
            && self.filter.wants(line);
        if let Some(a) = self.after.as_mut()
            && line.timestamp_ns < a.ns
        {
            a.older_seen = true;
        }
        if wanted && let Some(a) = self.after.as_mut() {
            if line.timestamp_ns < a.ns || (line.timestamp_ns == a.ns && a.remaining > 0) {
                // Held by the relay already.
                if line.timestamp_ns == a.ns {
                    a.remaining -= 1;
                }
                wanted = false;
            } else {
                // The first line after the last one the relay holds.
                if a.older_seen && a.remaining == 0 {
                    self.pending_flags |= FLAG_CONTINUES;
                }
                self.after = None;
            }
        }
        if !wanted {
            // Batches hold consecutive lines only.
            self.flush(out);
            return;
        }
        let flags = self.flags | std::mem::take(&mut self.pending_flags);
        let batch = self.batch.get_or_insert_with(|| {
            BatchBuilder::new(
                self.stream_ref,
                self.epoch,
                line.seq,
                flags,
                self.max_batch_bytes.min(64 * 1024),
            )
        });
        batch.push(line.timestamp_ns, LineFlags(line.flags), &line.message);
        if batch.encoded_len() >= self.max_batch_bytes {
            self.flush(out);
        }
    }

    /// A gap batch of `bytes` missing before line `at`, after the lines before it.
    fn gap(&mut self, at: u64, bytes: u64, out: &mut Vec<Encoded>) {
        self.flush(out);
        out.push(Encoded {
            bytes: encode_gap_flagged(
                self.stream_ref,
                self.epoch,
                at,
                0,
                bytes,
                FLAG_COUNT_UNKNOWN,
            ),
            first_seq: at,
            end_seq: at,
            lines: 0,
        });
    }

    fn flush(&mut self, out: &mut Vec<Encoded>) {
        if let Some(b) = self.batch.take() {
            let first_seq = b.next_seq() - u64::from(b.len());
            let (end_seq, lines) = (b.next_seq(), b.len());
            out.push(Encoded {
                bytes: b.finish(),
                first_seq,
                end_seq,
                lines,
            });
        }
    }
}

/// Where to read from, and what to send.
#[derive(Debug)]
struct Plan {
    epoch: u64,
    files: Vec<ChainFile>,
    start: Position,
    from_seq: u64,
    until_seq: Option<u64>,
    /// A new epoch continuing what the relay holds (`after_line`).
    after: Option<After>,
    /// Nothing to send (an `until` in an epoch this agent does not have).
    empty: bool,
}

impl Plan {
    /// A resume at `since_seq` if it names `epoch` (the numbering the stream holds) and a
    /// checkpoint at or before it is in a held file.
    fn resume(
        epoch: u64,
        files: &[ChainFile],
        checkpoints: &VecDeque<(u64, FileId, u64)>,
        since_seq: Option<SeqPos>,
    ) -> Option<Self> {
        let resume = since_seq.filter(|p| p.epoch == epoch && epoch != 0)?;
        let (index, offset, seq) = checkpoint_before(checkpoints, files, resume.seq)?;
        Some(Self {
            epoch,
            files: files.to_vec(),
            start: Position { index, offset, seq },
            from_seq: resume.seq,
            until_seq: None,
            after: None,
            empty: false,
        })
    }

    /// A plan that sends nothing.
    fn nothing(epoch: u64, files: Vec<ChainFile>) -> Self {
        Self {
            epoch,
            files,
            start: Position {
                index: 0,
                offset: 0,
                seq: 0,
            },
            from_seq: 0,
            until_seq: None,
            after: None,
            empty: true,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TailError + '_ {
    move |source| TailError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn new_epoch() -> u64 {
    fastrand::u64(1..1 << 53)
}

impl Tailer {
    /// A tailer with nothing followed yet.
    pub fn new(config: TailerConfig, metrics: Arc<AgentMetrics>) -> Arc<Self> {
        Arc::new(Self {
            budget: Budget::new(config.queue_budget_bytes),
            config,
            metrics,
            streams: Mutex::new(HashMap::new()),
            consumers: AtomicU64::new(1),
            wakes: wake::Wakes::new(),
            connected_since: Mutex::new(None),
        })
    }

    /// The uplink's news: connected to the relay (now), or not. Followers no demand drains are
    /// kept while it is not, and for `resume_grace` after it is again.
    pub fn set_connected(&self, connected: bool) {
        *self.connected_since.lock().expect("tailer lock") = connected.then(Instant::now);
    }

    /// The shared budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn stream(&self, path: &Path, spec: &Demand) -> Arc<Stream> {
        self.streams
            .lock()
            .expect("tailer lock")
            .entry((path.to_path_buf(), Filter::key(spec)))
            .or_insert_with(|| Stream::new(path))
            .clone()
    }

    /// True while `path` is followed and not yet drained to its end (plus `drain_linger`):
    /// discovery keeps a vanished stream in the catalog until then.
    pub fn is_draining(&self, path: &Path) -> bool {
        self.of_path(path).iter().any(|s| {
            let st = s.state.lock().expect("stream lock");
            let Some(slot) = &st.follower else {
                return false;
            };
            let drained = *slot.shared.drained.lock().expect("shared lock");
            match drained {
                None => !slot.task.is_finished(),
                Some(at) => slot.queue.bytes() > 0 || at.elapsed() < self.config.drain_linger,
            }
        })
    }

    /// Every followed stream of `path` (one per line filter).
    fn of_path(&self, path: &Path) -> Vec<Arc<Stream>> {
        self.streams
            .lock()
            .expect("tailer lock")
            .iter()
            .filter(|((p, _), _)| p == path)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Discovery no longer lists `path`: stop following it and release its files.
    pub fn forget(&self, path: &Path) {
        let gone = self.of_path(path);
        self.streams
            .lock()
            .expect("tailer lock")
            .retain(|(p, _), _| p != path);
        for s in gone {
            let mut st = s.state.lock().expect("stream lock");
            if let Some(slot) = st.follower.take() {
                slot.task.abort();
                slot.shared.takeover.notify_waiters();
            }
            st.files.clear();
        }
    }

    /// Test hook: the follower of `path` stops reading, as if its read hung.
    #[doc(hidden)]
    pub fn freeze(&self, path: &Path) {
        for s in self.of_path(path) {
            if let Some(slot) = &s.state.lock().expect("stream lock").follower {
                slot.shared.frozen.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Serves one demand on the log at `path`, stamping `stream_ref` into every batch.
    ///
    /// When the demand's receiver goes away ([`SinkClosed`], or this future is dropped), a
    /// follower it drained only detaches: it keeps reading into the budget for a resume, and
    /// is stopped after `detach_linger`. Use [`Self::serve_until`] to tell a cancel apart.
    pub async fn serve<S: BatchSink>(
        self: &Arc<Self>,
        path: &Path,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
        sink: &mut S,
    ) -> Result<(), TailError> {
        self.serve_until(path, spec, stream_ref, params, sink, std::future::pending())
            .await
            .map(|_| ())
    }

    /// Like [`Self::serve`], until `cancelled` resolves: the relay cancelled the demand, so
    /// nobody will drain what its follower reads. The follower is then stopped at once, unless a
    /// newer demand took it over, and reads nothing more; its files, checkpoints and epoch are
    /// kept for `detach_linger`, so a resume (`since_seq`) in that time re-reads from a
    /// checkpoint with the same numbering.
    pub async fn serve_until<S: BatchSink>(
        self: &Arc<Self>,
        path: &Path,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
        sink: &mut S,
        cancelled: impl Future<Output = ()>,
    ) -> Result<Ended, TailError> {
        self.serve_acked(path, spec, stream_ref, params, sink, cancelled, None)
            .await
    }

    /// Like [`Self::serve_until`]; with `acks` (the relay acknowledges what its sessions were
    /// handed: `ack`), a followed stream's batches are kept in its queue once sent, until an
    /// acknowledgement covers them, so that a resume after a lost connection sends again what
    /// was in flight ([`Queue::skip_to`]).
    #[allow(clippy::too_many_arguments, reason = "one demand's whole context")]
    pub async fn serve_acked<S: BatchSink>(
        self: &Arc<Self>,
        path: &Path,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
        sink: &mut S,
        cancelled: impl Future<Output = ()>,
        acks: Option<watch::Receiver<Option<SeqPos>>>,
    ) -> Result<Ended, TailError> {
        let mut cancelled = std::pin::pin!(cancelled);
        if spec.follow {
            self.serve_follow(path, spec, stream_ref, params, sink, cancelled, acks)
                .await
        } else {
            tokio::select! {
                r = self.serve_once(path, spec, stream_ref, params, sink) => r.map(|()| Ended::Complete),
                () = &mut cancelled => Ok(Ended::Cancelled),
            }
        }
    }

    /// A backfill: read from the planned start to `until` (or to the current end) and finish.
    async fn serve_once<S: BatchSink>(
        self: &Arc<Self>,
        path: &Path,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
        sink: &mut S,
    ) -> Result<(), TailError> {
        // The numbering a join or resume names, if this agent has it; else a one-off read.
        let epoch = spec.until.or(spec.since_seq).map(|p| p.epoch);
        let stream = epoch
            .and_then(|e| {
                self.of_path(path)
                    .into_iter()
                    .find(|s| s.state.lock().expect("stream lock").epoch == e)
            })
            .unwrap_or_else(|| Stream::new(path));
        let plan = {
            let stream = stream.clone();
            let spec = spec.clone();
            let max_line = params.max_line_bytes;
            crate::blocking::run(move || plan_once(&stream, &spec, max_line))
                .await
                .map_err(|e| io_err(path)(std::io::Error::other(e)))?
                .map_err(io_err(path))?
        };
        if plan.empty {
            return Ok(());
        }
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let chain: Vec<HeldFile> = plan.files[plan.start.index..]
            .iter()
            .map(|f| f.held.clone())
            .collect();
        let mut follower = Follower::new(
            &real,
            chain,
            plan.start.offset,
            plan.start.seq,
            params.max_line_bytes,
        )
        .map_err(io_err(path))?;
        let mut enc = Encoder {
            stream_ref,
            epoch: plan.epoch,
            flags: FLAG_BACKFILL,
            max_batch_bytes: params.max_batch_bytes,
            filter: Filter::of(spec)?,
            from_seq: plan.from_seq,
            until_seq: plan.until_seq,
            after: None,
            pending_flags: 0,
            batch: None,
        };
        let mut lines = Vec::new();
        let mut out = Vec::new();
        loop {
            // A read of the file, in turn with the other demands' blocking work.
            let turn = crate::blocking::permit().await;
            let progress = follower
                .poll(&mut lines, POLL_BYTES)
                .map_err(io_err(path))?;
            drop(turn);
            self.metrics.lines_read.inc_by(lines.len() as u64);
            let mut gaps = gaps_of(&self.metrics, path, &follower.take_events());
            gaps.retain(|&(at, _)| at >= enc.from_seq && plan.until_seq.is_none_or(|u| at < u));
            let done_at_until = plan
                .until_seq
                .is_some_and(|u| lines.last().is_some_and(|l| l.seq + 1 >= u));
            let mut gaps = gaps.into_iter().peekable();
            for l in lines.drain(..) {
                while let Some((at, bytes)) = gaps.next_if(|&(at, _)| at <= l.seq) {
                    enc.gap(at, bytes, &mut out);
                }
                enc.push(&l, &mut out);
            }
            for (at, bytes) in gaps {
                enc.gap(at, bytes, &mut out);
            }
            let finished = done_at_until
                || plan.until_seq.is_some_and(|u| follower.next_seq() >= u)
                || !matches!(progress, Progress::More(_));
            if finished {
                enc.flush(&mut out);
            }
            for e in out.drain(..) {
                if e.lines > 0 {
                    // Gap batches are not counted.
                    self.metrics.lines_sent.inc_by(u64::from(e.lines));
                    self.metrics.bytes_sent.inc_by(e.bytes.len() as u64);
                }
                sink.send(e.bytes).await?;
            }
            if finished {
                return Ok(());
            }
        }
    }

    /// A live demand: attach to (or start) the stream's follower and drain its queue, until
    /// `cancelled` (which stops the follower). With `acks`, what is sent stays queued until
    /// acknowledged.
    #[allow(clippy::too_many_arguments, reason = "one demand's whole context")]
    async fn serve_follow<S: BatchSink>(
        self: &Arc<Self>,
        path: &Path,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
        sink: &mut S,
        mut cancelled: std::pin::Pin<&mut impl Future<Output = ()>>,
        mut acks: Option<watch::Receiver<Option<SeqPos>>>,
    ) -> Result<Ended, TailError> {
        let stream = self.stream(path, spec);
        let (queue, shared, generation, epoch) = match self.attach(&stream, spec, stream_ref) {
            Some(a) => a,
            None => {
                self.start_follower(&stream, spec, stream_ref, params)
                    .await?
            }
        };
        let _guard = Detach {
            stream: stream.clone(),
            generation,
        };
        let retain = acks.is_some();
        loop {
            let item = {
                let superseded = shared.takeover.notified();
                if !self.is_consumer(&stream, generation) {
                    return Ok(Ended::Complete);
                }
                if let Some(at) = *shared.drained.lock().expect("shared lock")
                    && queue.all_sent()
                    && (retain || queue.first_seq().is_none())
                    && at.elapsed() >= self.config.drain_linger
                    && self.of_path(path).is_empty()
                {
                    return Ok(Ended::Complete);
                }
                tokio::select! {
                    biased;
                    () = &mut cancelled => {
                        self.stop(&stream, generation);
                        return Ok(Ended::Cancelled);
                    }
                    Some(through) = acked(&mut acks) => {
                        if through.epoch == epoch {
                            queue.ack(through.seq);
                        }
                        continue;
                    }
                    item = next_item(&stream, &queue, generation, retain) => match item {
                        Some(item) => item,
                        None => return Ok(Ended::Complete),
                    },
                    () = superseded => continue,
                    () = tokio::time::sleep(self.config.drain_linger) => continue,
                }
            };
            let batch = match item {
                Item::Gap(g) => {
                    let lines = u32::try_from(g.end_seq - g.first_seq).unwrap_or(u32::MAX);
                    let flags = if g.counted { 0 } else { FLAG_COUNT_UNKNOWN };
                    encode_gap_flagged(stream_ref, epoch, g.first_seq, lines, g.bytes, flags)
                }
                Item::Batch(q) => {
                    let batch = restamp(q.batch, stream_ref);
                    self.metrics.lines_sent.inc_by(u64::from(q.lines));
                    self.metrics.bytes_sent.inc_by(batch.len() as u64);
                    batch
                }
            };
            // A cancel wins over a send that fails because the relay stopped the stream.
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    self.stop(&stream, generation);
                    return Ok(Ended::Cancelled);
                }
                sent = sink.send(batch) => sent?,
            }
        }
    }

    /// A cancelled demand: stops the follower it drains, unless a newer demand took it over.
    /// The stream keeps its files, checkpoints and epoch until the watchdog releases them.
    fn stop(&self, stream: &Stream, generation: u64) {
        let mut st = stream.state.lock().expect("stream lock");
        if let Some(slot) = st.follower.take_if(|s| s.consumer == generation) {
            slot.task.abort();
            slot.shared.takeover.notify_waiters();
            st.stopped_at = Some(Instant::now());
        }
    }

    fn is_consumer(&self, stream: &Stream, generation: u64) -> bool {
        stream
            .state
            .lock()
            .expect("stream lock")
            .follower
            .as_ref()
            .is_some_and(|s| s.consumer == generation)
    }

    /// Takes over a running follower when the demand continues its numbering (`since_seq` in
    /// its epoch, still queued or just sent) with the same filter.
    fn attach(
        &self,
        stream: &Stream,
        spec: &Demand,
        stream_ref: u64,
    ) -> Option<(Arc<Queue>, Arc<Shared>, u64, u64)> {
        let resume = spec.since_seq?;
        let mut st = stream.state.lock().expect("stream lock");
        let epoch = st.epoch;
        let slot = st.follower.as_mut()?;
        if resume.epoch != epoch || slot.task.is_finished() {
            return None;
        }
        let queued_end = slot.shared.queued_end.load(Ordering::Relaxed);
        let first = slot.queue.first_seq().unwrap_or(queued_end);
        if resume.seq < first || resume.seq > queued_end {
            return None;
        }
        slot.queue.skip_to(resume.seq);
        slot.consumer = self.consumers.fetch_add(1, Ordering::Relaxed);
        slot.attached = true;
        slot.stream_ref = stream_ref;
        slot.shared.takeover.notify_waiters();
        Some((
            slot.queue.clone(),
            slot.shared.clone(),
            slot.consumer,
            epoch,
        ))
    }

    /// Starts (or restarts) the follower of a stream for `spec`.
    async fn start_follower(
        self: &Arc<Self>,
        stream: &Arc<Stream>,
        spec: &Demand,
        stream_ref: u64,
        params: TailParams,
    ) -> Result<(Arc<Queue>, Arc<Shared>, u64, u64), TailError> {
        let mut filter = Filter::of(spec)?;
        let path = stream.path.clone();
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let mut attempt = 0;
        let (plan, follower) = loop {
            attempt += 1;
            let plan = {
                let stream = stream.clone();
                let spec = spec.clone();
                tokio::task::spawn_blocking(move || {
                    plan_follow(&stream, &spec, params.max_line_bytes)
                })
                .await
                .map_err(|e| io_err(&path)(std::io::Error::other(e)))?
                .map_err(io_err(&path))?
            };
            let follower = Follower::new(
                &real,
                plan.files[plan.start.index..]
                    .iter()
                    .map(|f| f.held.clone())
                    .collect(),
                plan.start.offset,
                plan.start.seq,
                params.max_line_bytes,
            )
            .map_err(io_err(&path))?;
            // A follower takes every rotated file it finds at its start for history. If the log
            // rotated while a new epoch was planned (the walk back can take a while), the files
            // rotated meanwhile are newer than the plan's chain: plan again, or they would be
            // skipped. The file at the path still being the plan's newest proves no rotation
            // came between the plan's listing and the follower's.
            let fresh = spec.since_seq.is_none_or(|p| p.epoch != plan.epoch);
            let newest = plan.files.last().map(|f| f.held.id);
            let at_path = std::fs::metadata(&real).ok().map(|m| FileId::of(&m));
            if !fresh || newest == at_path || attempt == 5 {
                break (plan, follower);
            }
            tracing::debug!(path = %path.display(), "the log rotated while planning; planning again");
        };
        // A resume in the epoch held, or a new epoch continuing what the relay holds, is placed
        // by position: `since_ns` (the relay's fallback for an older agent) filters nothing,
        // lest a line stamped like the last one held be skipped.
        if plan.after.is_some() || spec.since_seq.is_some_and(|p| p.epoch == plan.epoch) {
            filter.since_ns = None;
        }
        let enc = Encoder {
            stream_ref,
            epoch: plan.epoch,
            flags: 0,
            max_batch_bytes: params.max_batch_bytes,
            filter: filter.clone(),
            from_seq: plan.from_seq,
            until_seq: None,
            after: plan.after,
            pending_flags: 0,
            batch: None,
        };
        let queue = self.budget.queue();
        let shared = Arc::new(Shared {
            progress: Mutex::new((follower.head(), Instant::now())),
            queued_end: AtomicU64::new(plan.from_seq),
            drained: Mutex::new(None),
            frozen: AtomicBool::new(false),
            takeover: Notify::new(),
        });
        let mut st = stream.state.lock().expect("stream lock");
        if let Some(old) = st.follower.take() {
            old.task.abort();
            old.shared.takeover.notify_waiters();
        }
        st.stopped_at = None;
        let generation = self.consumers.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(follow_task(
            Arc::downgrade(self),
            stream.clone(),
            follower,
            enc,
            queue.clone(),
            shared.clone(),
            params,
        ))
        .abort_handle();
        st.follower = Some(Slot {
            task,
            queue: queue.clone(),
            shared: shared.clone(),
            spec: filter,
            params,
            stream_ref,
            consumer: generation,
            attached: true,
            detached_at: Instant::now(),
            lag_seen: None,
        });
        Ok((queue, shared, generation, plan.epoch))
    }

    /// The watchdog and janitor: re-opens stalled followers, stops unclaimed ones, until
    /// shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let period =
            (self.config.stall_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = crate::shutdown::stopped(&mut shutdown) => break,
            }
            self.sweep();
        }
        let streams: Vec<Arc<Stream>> = self
            .streams
            .lock()
            .expect("tailer lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in streams {
            if let Some(slot) = s.state.lock().expect("stream lock").follower.take() {
                slot.task.abort();
                slot.shared.takeover.notify_waiters();
            }
        }
    }

    /// One round of the watchdog.
    pub fn sweep(self: &Arc<Self>) {
        self.metrics.queue_bytes.set(self.budget.used() as i64);
        let (lines, bytes) = self.budget.dropped();
        let m = &self.metrics;
        m.queue_dropped_lines
            .inc_by(lines.saturating_sub(m.queue_dropped_lines.get()));
        m.queue_dropped_bytes
            .inc_by(bytes.saturating_sub(m.queue_dropped_bytes.get()));
        let streams: Vec<Arc<Stream>> = self
            .streams
            .lock()
            .expect("tailer lock")
            .values()
            .cloned()
            .collect();
        let connected_since = *self.connected_since.lock().expect("tailer lock");
        for stream in streams {
            let mut st = stream.state.lock().expect("stream lock");
            let Some(slot) = &st.follower else {
                // Stopped by a cancel: release its files and epoch after the linger.
                if st
                    .stopped_at
                    .is_some_and(|at| at.elapsed() >= self.config.detach_linger)
                {
                    self.release(&stream, st);
                }
                continue;
            };
            if !slot.attached
                && connected_since.is_some_and(|since| {
                    unclaimed(slot.detached_at, since, Instant::now(), &self.config)
                })
            {
                let slot = st.follower.take().expect("checked");
                slot.task.abort();
                slot.shared.takeover.notify_waiters();
                self.release(&stream, st);
                continue;
            }
            if slot.shared.drained.lock().expect("shared lock").is_some() {
                continue;
            }
            let (head, progress_at) = *slot.shared.progress.lock().expect("shared lock");
            let finished = slot.task.is_finished();
            // Is the file ahead of what was read?
            let lagging = head.is_some_and(|(id, offset)| {
                std::fs::metadata(&stream.path)
                    .ok()
                    .filter(|m| FileId::of(m) == id)
                    .is_some_and(|m| m.len() > offset)
            });
            let slot = st.follower.as_mut().expect("checked");
            if !finished {
                if !lagging {
                    slot.lag_seen = None;
                    continue;
                }
                match slot.lag_seen {
                    Some(t) if progress_at <= t && t.elapsed() >= self.config.stall_after => {}
                    Some(t) if progress_at <= t => continue,
                    _ => {
                        slot.lag_seen = Some(Instant::now());
                        continue;
                    }
                }
            }
            slot.lag_seen = None;
            self.metrics.stalls.inc();
            tracing::warn!(path = %stream.path.display(), "follower stalled; re-opening");
            if let Err(e) = self.respawn(&stream, &mut st) {
                tracing::warn!(path = %stream.path.display(), error = %e, "cannot re-open");
            }
        }
    }

    /// Forgets a stream with no follower: its files, checkpoints and epoch.
    fn release(&self, stream: &Arc<Stream>, mut st: std::sync::MutexGuard<'_, State>) {
        st.files.clear();
        st.checkpoints.clear();
        st.stopped_at = None;
        drop(st);
        self.streams
            .lock()
            .expect("tailer lock")
            .retain(|_, s| !Arc::ptr_eq(s, stream));
    }

    /// Replaces a follower task by a new one reading from its last checkpoint, keeping its
    /// queue, epoch and numbering.
    fn respawn(self: &Arc<Self>, stream: &Arc<Stream>, st: &mut State) -> std::io::Result<()> {
        let Some(slot) = st.follower.as_mut() else {
            return Ok(());
        };
        slot.task.abort();
        let from_seq = slot.shared.queued_end.load(Ordering::Relaxed);
        let (index, offset, seq) = checkpoint_before(&st.checkpoints, &st.files, from_seq)
            .ok_or_else(|| std::io::Error::other("no checkpoint to re-open from"))?;
        let real = std::fs::canonicalize(&stream.path).unwrap_or_else(|_| stream.path.clone());
        let slot = st.follower.as_mut().expect("checked");
        let follower = Follower::new(
            &real,
            st.files[index..].iter().map(|f| f.held.clone()).collect(),
            offset,
            seq,
            slot.params.max_line_bytes,
        )?;
        let enc = Encoder {
            stream_ref: slot.stream_ref,
            epoch: st.epoch,
            flags: 0,
            max_batch_bytes: slot.params.max_batch_bytes,
            filter: slot.spec.clone(),
            from_seq,
            until_seq: None,
            after: None,
            pending_flags: 0,
            batch: None,
        };
        slot.shared.frozen.store(false, Ordering::Relaxed);
        *slot.shared.progress.lock().expect("shared lock") = (follower.head(), Instant::now());
        slot.task = tokio::spawn(follow_task(
            Arc::downgrade(self),
            stream.clone(),
            follower,
            enc,
            slot.queue.clone(),
            slot.shared.clone(),
            slot.params,
        ))
        .abort_handle();
        Ok(())
    }
}

/// The next acknowledgement, if acknowledgements come; pending otherwise (also once the
/// connection that sends them is gone).
async fn acked(acks: &mut Option<watch::Receiver<Option<SeqPos>>>) -> Option<SeqPos> {
    let Some(rx) = acks.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    *rx.borrow_and_update()
}

/// Whether a follower detached at `detached_at`, while the agent is connected since `since`,
/// has gone unclaimed long enough to be stopped (pure): `detach_linger` of being detached while
/// connected, and `resume_grace` since the connection began, for sessions to resubscribe.
fn unclaimed(detached_at: Instant, since: Instant, now: Instant, config: &TailerConfig) -> bool {
    now.saturating_duration_since(detached_at.max(since)) >= config.detach_linger
        && now.saturating_duration_since(since) >= config.resume_grace
}

/// Marks the follower detached when its data stream goes away.
struct Detach {
    stream: Arc<Stream>,
    generation: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        if let Ok(mut st) = self.stream.state.lock()
            && let Some(slot) = st.follower.as_mut()
            && slot.consumer == self.generation
        {
            slot.attached = false;
            slot.detached_at = Instant::now();
        }
    }
}

/// Writes `stream_ref` into a batch's header if it differs (a follower's batches outlive the
/// data stream, and a restarted relay may number the stream differently).
fn restamp(batch: Bytes, stream_ref: u64) -> Bytes {
    if batch.len() < HEADER_LEN || batch[4..12] == stream_ref.to_le_bytes() {
        return batch;
    }
    let mut m = batch
        .try_into_mut()
        .unwrap_or_else(|b| bytes::BytesMut::from(&b[..]));
    m[4..12].copy_from_slice(&stream_ref.to_le_bytes());
    m.freeze()
}

/// The newest checkpoint at or before `seq` whose file is still held: `(index, offset, seq)`.
fn checkpoint_before(
    checkpoints: &VecDeque<(u64, FileId, u64)>,
    files: &[ChainFile],
    seq: u64,
) -> Option<(usize, u64, u64)> {
    checkpoints
        .iter()
        .rev()
        .filter(|(s, _, _)| *s <= seq)
        .find_map(|&(s, id, off)| {
            files
                .iter()
                .position(|f| f.held.id == id)
                .map(|i| (i, off, s))
        })
}

/// The position of the newest file's anchor, and how far back the demand reaches from it.
fn fresh(
    files: &[ChainFile],
    spec: &Demand,
    max_line: usize,
) -> std::io::Result<(Position, Position, u64)> {
    let (index, offset) = seek::end_point(files, max_line)?;
    let anchor = Position {
        index,
        offset,
        seq: SEQ_BASE,
    };
    let (start, from_seq) = match (spec.tail.filter(|t| *t > 0), spec.since_ns) {
        (Some(n), _) => (
            seek::back(files, anchor, Want::Lines(u64::from(n)), max_line)?,
            SEQ_BASE - u64::from(n),
        ),
        (None, Some(t)) => (seek::back(files, anchor, Want::Since(t), max_line)?, 0),
        (None, None) => (anchor, SEQ_BASE),
    };
    // Reaching back to the start of the oldest file counted every line there is: number from
    // 0 there, as a reader starting at the beginning would.
    if start.index == 0 && start.offset == 0 {
        let shift = start.seq;
        return Ok((
            Position {
                seq: anchor.seq - shift,
                ..anchor
            },
            Position { seq: 0, ..start },
            from_seq.saturating_sub(shift),
        ));
    }
    Ok((anchor, start, from_seq))
}

/// Plans a backfill (`follow: false`).
fn plan_once(stream: &Stream, spec: &Demand, max_line: usize) -> std::io::Result<Plan> {
    let (epoch, files, checkpoints) = {
        let st = stream.state.lock().expect("stream lock");
        (st.epoch, st.files.clone(), st.checkpoints.clone())
    };
    let known = |p: &Option<SeqPos>| p.filter(|p| p.epoch == epoch && epoch != 0);
    if let Some(until) = spec.until {
        let Some(until) = known(&Some(until)) else {
            // A join point in an epoch this agent does not have: nothing can be placed.
            return Ok(Plan::nothing(epoch, Vec::new()));
        };
        let Some((index, offset, seq)) = checkpoint_before(&checkpoints, &files, until.seq) else {
            return Ok(Plan::nothing(epoch, files));
        };
        let cp = Position { index, offset, seq };
        let resume = known(&spec.since_seq)
            .filter(|r| r.seq <= until.seq)
            .and_then(|r| {
                checkpoint_before(&checkpoints, &files, r.seq)
                    .map(|(index, offset, seq)| (Position { index, offset, seq }, r.seq))
            });
        let (start, from_seq) = match (resume, spec.tail.filter(|t| *t > 0), spec.since_ns) {
            (Some(r), _, _) => r,
            (None, Some(n), _) => {
                let n = u64::from(n);
                let more = n.saturating_sub(until.seq - seq);
                (
                    seek::back(&files, cp, Want::Lines(more), max_line)?,
                    until.seq.saturating_sub(n),
                )
            }
            (None, None, Some(t)) => (seek::back(&files, cp, Want::Since(t), max_line)?, 0),
            (None, None, None) => (cp, until.seq),
        };
        return Ok(Plan {
            epoch,
            files,
            start,
            from_seq,
            until_seq: Some(until.seq),
            after: None,
            empty: false,
        });
    }
    if let Some(plan) = Plan::resume(epoch, &files, &checkpoints, spec.since_seq) {
        return Ok(plan);
    }
    // A one-off read: its own epoch, not kept.
    let files = chain_files(&stream.path)?;
    let (_, start, from_seq) = fresh(&files, spec, max_line)?;
    Ok(Plan {
        epoch: new_epoch(),
        files,
        start,
        from_seq,
        until_seq: None,
        after: None,
        empty: false,
    })
}

/// Plans a live demand that could not attach: a resume in the stream's epoch from its files
/// and checkpoints, else a new epoch.
fn plan_follow(stream: &Stream, spec: &Demand, max_line: usize) -> std::io::Result<Plan> {
    {
        let st = stream.state.lock().expect("stream lock");
        if let Some(plan) = Plan::resume(st.epoch, &st.files, &st.checkpoints, spec.since_seq) {
            return Ok(plan);
        }
    }
    let files = chain_files(&stream.path)?;
    // Continuing what the relay holds: from the last line stamped before its last line's.
    let after = spec.after_line.map(|m| After {
        ns: m.ns,
        remaining: m.nth,
        older_seen: false,
    });
    let walk = match after {
        Some(a) => &Demand {
            tail: None,
            since_ns: Some(a.ns),
            ..spec.clone()
        },
        None => spec,
    };
    let (anchor, start, from_seq) = fresh(&files, walk, max_line)?;
    let epoch = new_epoch();
    let mut st = stream.state.lock().expect("stream lock");
    st.epoch = epoch;
    st.files = files.clone();
    st.checkpoints.clear();
    st.checkpoints
        .push_back((start.seq, files[start.index].held.id, start.offset));
    if anchor != start {
        st.checkpoints
            .push_back((anchor.seq, files[anchor.index].held.id, anchor.offset));
    }
    Ok(Plan {
        epoch,
        files,
        start,
        from_seq,
        until_seq: None,
        after,
        empty: false,
    })
}

/// Counts a follower task in `logrelay_agent_followers` while it runs (until it returns or is
/// aborted).
struct Running(Arc<AgentMetrics>);

impl Running {
    fn new(metrics: &Arc<AgentMetrics>) -> Self {
        metrics.followers.inc();
        Self(metrics.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.followers.dec();
    }
}

/// Reads, numbers, filters and queues one followed stream until aborted.
async fn follow_task(
    tailer: std::sync::Weak<Tailer>,
    stream: Arc<Stream>,
    mut follower: Follower,
    mut enc: Encoder,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    params: TailParams,
) {
    let Some(running) = tailer.upgrade().map(|t| Running::new(&t.metrics)) else {
        return;
    };
    let _running = running;
    let mut lines = Vec::new();
    let mut out = Vec::new();
    let mut parse_errors = follower.parse_errors();
    // Registered before the first read, so no write after it goes unnoticed.
    let Some(wake) = tailer.upgrade().map(|t| t.wakes.register(&stream.path)) else {
        return;
    };
    loop {
        let Some(tailer) = tailer.upgrade() else {
            return;
        };
        let metrics = tailer.metrics.clone();
        drop(tailer);
        if shared.frozen.load(Ordering::Relaxed) {
            tokio::time::sleep(params.follow_poll).await;
            continue;
        }
        let progress = match follower.poll(&mut lines, POLL_BYTES) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(path = %stream.path.display(), error = %e, "follower read failed");
                tokio::time::sleep(params.follow_poll.max(Duration::from_millis(100))).await;
                continue;
            }
        };
        metrics.lines_read.inc_by(lines.len() as u64);
        let errors = follower.parse_errors();
        metrics.parse_errors.inc_by(errors - parse_errors);
        parse_errors = errors;
        let events = follower.take_events();
        // Gaps go in order with the lines around them.
        let mut lost = gaps_of(&metrics, &stream.path, &events);
        lost.retain(|&(at, _)| at >= enc.from_seq);
        for l in lines.drain(..) {
            while let Some(&(at, bytes)) = lost.first()
                && at <= l.seq
            {
                enc.flush(&mut out);
                push_all(&queue, &shared, &mut out);
                queue.push_gap(Gap {
                    first_seq: at,
                    end_seq: at,
                    lines: 0,
                    bytes,
                    counted: false,
                });
                lost.remove(0);
            }
            enc.push(&l, &mut out);
        }
        let idle = !matches!(progress, Progress::More(_));
        if idle || !lost.is_empty() {
            enc.flush(&mut out);
        }
        push_all(&queue, &shared, &mut out);
        for (at, bytes) in lost {
            queue.push_gap(Gap {
                first_seq: at,
                end_seq: at,
                lines: 0,
                bytes,
                counted: false,
            });
        }
        record(&stream, &follower, &events);
        let bytes_read = match progress {
            Progress::More(n) | Progress::Idle(n) => n,
            Progress::Drained => 0,
        };
        {
            let mut p = shared.progress.lock().expect("shared lock");
            if bytes_read > 0 || p.0 != follower.head() {
                *p = (follower.head(), Instant::now());
            }
        }
        match progress {
            Progress::More(_) => tokio::task::yield_now().await,
            Progress::Idle(_) => wake.wait(params.follow_poll).await,
            Progress::Drained => {
                enc.flush(&mut out);
                push_all(&queue, &shared, &mut out);
                *shared.drained.lock().expect("shared lock") = Some(Instant::now());
                queue.ready.notify_one();
                return;
            }
        }
    }
}

/// The next item of a follower's queue, taken only while `generation` is the demand draining
/// it; `None` once a newer demand took the follower over ([`Tailer::attach`]).
///
/// The check and the take are one step under the stream's lock, which `attach` also holds: a
/// demand that was taken over but has not run since (its receiver went away, which it learns
/// only when a send fails) would otherwise be woken first by the next batch, take it and lose
/// it, while the newer demand had attached at a point the queue no longer starts at (a hole,
/// with no gap). With `retain`, the item stays queued until acknowledged
/// ([`Queue::pop_retained`]).
async fn next_item(stream: &Stream, queue: &Queue, generation: u64, retain: bool) -> Option<Item> {
    loop {
        let ready = queue.ready.notified();
        {
            let st = stream.state.lock().expect("stream lock");
            if st
                .follower
                .as_ref()
                .is_none_or(|s| s.consumer != generation)
            {
                drop(st);
                // The wake-up this demand took may have been meant for the newer one.
                queue.ready.notify_one();
                return None;
            }
            let item = if retain {
                queue.pop_retained()
            } else {
                queue.pop()
            };
            if item.is_some() {
                return item;
            }
        }
        ready.await;
    }
}

/// The gaps a follower's events tell, `(at_seq, bytes)` in order: bytes rotated away unread,
/// and compressed files that could not be read (logged). Counted in the metrics.
fn gaps_of(metrics: &AgentMetrics, path: &Path, events: &[follow::Event]) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    for e in events {
        match e {
            follow::Event::Lost { at_seq, bytes } => {
                metrics.rotated_unread_bytes.inc_by(*bytes);
                gaps.push((*at_seq, *bytes));
            }
            follow::Event::Unreadable {
                at_seq,
                bytes,
                reason,
            } => {
                metrics.unreadable_rotated_files.inc();
                tracing::warn!(
                    path = %path.display(),
                    at_seq,
                    bytes,
                    %reason,
                    "a compressed rotated file of the log cannot be read; told as a gap"
                );
                gaps.push((*at_seq, *bytes));
            }
            follow::Event::Opened(_) | follow::Event::Finished(_) => {}
        }
    }
    gaps
}

fn push_all(queue: &Queue, shared: &Shared, out: &mut Vec<Encoded>) {
    for e in out.drain(..) {
        shared.queued_end.store(e.end_seq, Ordering::Relaxed);
        queue.push(e.bytes, e.first_seq, e.end_seq, e.lines);
    }
}

/// Keeps the stream's files and checkpoints in step with the follower.
fn record(stream: &Stream, follower: &Follower, events: &[follow::Event]) {
    let mut st = stream.state.lock().expect("stream lock");
    if events
        .iter()
        .any(|e| matches!(e, follow::Event::Opened(_) | follow::Event::Finished(_)))
    {
        // Files older than where the follower started, then the follower's own, in order.
        let own = follower.files();
        let mut files: Vec<ChainFile> = st
            .files
            .iter()
            .take_while(|f| !own.iter().any(|o| o.held.id == f.held.id))
            .cloned()
            .collect();
        files.extend(own);
        let excess = files.len().saturating_sub(MAX_HISTORY_FILES + 2);
        files.drain(..excess);
        st.files = files;
        let State {
            files, checkpoints, ..
        } = &mut *st;
        checkpoints.retain(|(_, id, _)| files.iter().any(|f| f.held.id == *id));
    }
    if let Some((id, offset, seq)) = follower.clean_point()
        && st
            .checkpoints
            .back()
            .is_none_or(|(s, i, o)| (*s, *i, *o) != (seq, id, offset))
        && st.checkpoints.back().is_none_or(|(s, _, _)| *s <= seq)
    {
        st.checkpoints.push_back((seq, id, offset));
        if st.checkpoints.len() > MAX_CHECKPOINTS {
            st.checkpoints.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_follower_waits_out_the_linger_and_the_grace_after_a_reconnect() {
        let config = TailerConfig {
            detach_linger: Duration::from_secs(10),
            resume_grace: Duration::from_secs(30),
            ..TailerConfig::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Connected all along: the linger alone decides, once past the grace.
        assert!(!unclaimed(at(100), at(0), at(109), &config));
        assert!(unclaimed(at(100), at(0), at(110), &config));
        // Detached while the relay was away (a restart): the linger runs from the reconnect,
        // and the grace keeps it for sessions to resubscribe.
        assert!(!unclaimed(at(0), at(50), at(75), &config));
        assert!(unclaimed(at(0), at(50), at(80), &config));
        // A short grace: the linger from the reconnect still holds.
        let quick = TailerConfig {
            resume_grace: Duration::ZERO,
            ..config
        };
        assert!(!unclaimed(at(0), at(50), at(59), &quick));
        assert!(unclaimed(at(0), at(50), at(60), &quick));
    }
}
