//! One followed stream's state, and the blocking work of placing a plan in its files: what
//! [`super::plan`] decides, gathered and carried out (listing the files, finding an anchor,
//! walking back), and the one place a reader and its encoder are built from a plan.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
#[cfg(feature = "test-hooks")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use logrelay_wire::control::Demand;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::budget::Queue;
use crate::fingerprint::FileId;

use super::TailParams;
use super::encode::Encoder;
use super::file::{ChainFile, HeldFile, chain_files};
use super::filter::Filter;
use super::follow::{self, Follower};
use super::plan::{self, Checkpoint, Follow, Held, Once, Plan, Position, Reach, SEQ_BASE};
use super::seek;

/// Checkpoints kept per followed stream (one per batch).
const MAX_CHECKPOINTS: usize = 4096;
/// Finished files kept open per followed stream, for backfills reaching back into them.
const MAX_HISTORY_FILES: usize = 4;

/// A log path as one numbering: its epoch, files, checkpoints and follower.
#[derive(Debug)]
pub struct Stream {
    /// The log path.
    pub path: PathBuf,
    /// Everything else, under the stream's lock.
    pub state: Mutex<State>,
}

impl Stream {
    /// A stream of `path` with no epoch, no files and no follower yet.
    pub fn new(path: &Path) -> Arc<Self> {
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

    /// The log path resolved through a symlink (the path itself if that fails).
    pub fn real_path(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }
}

/// What a stream holds of its numbering, and its follower.
#[derive(Debug)]
pub struct State {
    /// The epoch; 0 while there is none.
    pub epoch: u64,
    /// Open files, oldest first: finished ones kept for backfills, then the follower's chain.
    pub files: Vec<ChainFile>,
    /// Clean points, by increasing sequence number.
    pub checkpoints: VecDeque<Checkpoint>,
    /// The running follower, if any.
    pub follower: Option<Slot>,
    /// When a cancel stopped the follower: its files, checkpoints and epoch are kept for
    /// `detach_linger` (a resume re-reads from a checkpoint), then released.
    pub stopped_at: Option<Instant>,
}

impl State {
    /// The numbering as planning sees it.
    pub fn held(&self) -> Held {
        Held {
            epoch: self.epoch,
            files: self.files.iter().map(|f| f.held.id).collect(),
            checkpoints: self.checkpoints.clone(),
        }
    }
}

/// A running follower task and what its demands share with it.
#[derive(Debug)]
pub struct Slot {
    /// The task.
    pub task: AbortHandle,
    /// Its batches, drawing on the agent-wide budget.
    pub queue: Arc<Queue>,
    /// What the task and the watchdog share.
    pub shared: Arc<Shared>,
    /// The line filter its encoder applies.
    pub filter: Filter,
    /// The tuning it was started with.
    pub params: TailParams,
    /// The stream id its batches are stamped with.
    pub stream_ref: u64,
    /// Generation of the data stream draining the queue (a newer one takes over).
    pub consumer: u64,
    /// A data stream drains the queue.
    pub attached: bool,
    /// When the last data stream went away.
    pub detached_at: Instant,
    /// When the watchdog first saw the file ahead of the follower (cleared by progress).
    pub lag_seen: Option<Instant>,
}

/// What the follower task and the watchdog share.
#[derive(Debug)]
pub struct Shared {
    /// Head file and offset read, and when reading last made progress.
    pub progress: Mutex<(Option<(FileId, u64)>, Instant)>,
    /// One past the last line queued.
    pub queued_end: AtomicU64,
    /// The file was deleted and read to its end, and everything is queued.
    pub drained: Mutex<Option<Instant>>,
    /// Woken when the consumer generation changes.
    pub takeover: Notify,
    /// Test hook (feature `test-hooks`, never in a release binary): the follower stops
    /// reading, as if its read hung.
    #[cfg(feature = "test-hooks")]
    pub frozen: AtomicBool,
}

impl Shared {
    /// A follower's shared state, at `head`, queueing from `from_seq`.
    pub fn new(head: Option<(FileId, u64)>, from_seq: u64) -> Arc<Self> {
        Arc::new(Self {
            progress: Mutex::new((head, Instant::now())),
            queued_end: AtomicU64::new(from_seq),
            drained: Mutex::new(None),
            takeover: Notify::new(),
            #[cfg(feature = "test-hooks")]
            frozen: AtomicBool::new(false),
        })
    }
}

/// A new epoch's number: random, 53 bits (exact in JavaScript).
fn new_epoch() -> u64 {
    fastrand::u64(1..1 << 53)
}

/// Where a new epoch of `files` starts reading for `reach`: `(anchor, start, from_seq)`.
fn fresh(
    files: &[ChainFile],
    reach: Reach,
    max_line: usize,
) -> std::io::Result<(Position, Position, u64)> {
    let (index, offset) = seek::end_point(files, max_line)?;
    let anchor = Position {
        index,
        offset,
        seq: SEQ_BASE,
    };
    let start = match reach.want() {
        Some(want) => seek::back(files, anchor, want, max_line)?,
        None => anchor,
    };
    Ok(plan::place(anchor, start, reach.from_seq()))
}

/// A backfill's plan and the files it reads ([`plan::plan_once`], carried out); `None` when
/// nothing can be sent. Blocking.
pub fn plan_once(
    stream: &Stream,
    spec: &Demand,
    max_line: usize,
) -> std::io::Result<Option<(Plan, Vec<ChainFile>)>> {
    let (held, files) = {
        let st = stream.state.lock().expect("stream lock");
        (st.held(), st.files.clone())
    };
    Ok(match plan::plan_once(&held, spec) {
        Once::Nothing => None,
        Once::Ready(plan) => Some((plan, files)),
        Once::Back {
            from,
            want,
            mut plan,
        } => {
            plan.start = seek::back(&files, from, want, max_line)?;
            Some((plan, files))
        }
        Once::Fresh(reach) => {
            // A one-off read: its own epoch, not kept.
            let files = chain_files(&stream.path)?;
            let (_, start, from_seq) = fresh(&files, reach, max_line)?;
            let plan = Plan {
                epoch: new_epoch(),
                start,
                from_seq,
                until_seq: None,
                after: None,
            };
            Some((plan, files))
        }
    })
}

/// A live demand's plan and the files it reads ([`plan::plan_follow`], carried out): a new
/// epoch becomes the stream's, with its first checkpoints. `keep_held` as there. Blocking.
pub fn plan_follow(
    stream: &Stream,
    spec: &Demand,
    keep_held: bool,
    max_line: usize,
) -> std::io::Result<(Plan, Vec<ChainFile>)> {
    let (reach, after) = {
        let st = stream.state.lock().expect("stream lock");
        match plan::plan_follow(&st.held(), spec, keep_held) {
            Follow::Resume(plan) => return Ok((plan, st.files.clone())),
            Follow::Held {
                from,
                want,
                mut plan,
            } => {
                let files = st.files.clone();
                drop(st);
                if let Some(want) = want {
                    plan.start = seek::back(&files, from, want, max_line)?;
                }
                return Ok((plan, files));
            }
            Follow::NewEpoch { reach, after } => (reach, after),
        }
    };
    let files = chain_files(&stream.path)?;
    let (anchor, start, from_seq) = fresh(&files, reach, max_line)?;
    let epoch = new_epoch();
    let mut st = stream.state.lock().expect("stream lock");
    st.epoch = epoch;
    st.files = files.clone();
    st.checkpoints.clear();
    let checkpoint = |p: Position| Checkpoint {
        seq: p.seq,
        file: files[p.index].held.id,
        offset: p.offset,
    };
    st.checkpoints.push_back(checkpoint(start));
    if anchor != start {
        st.checkpoints.push_back(checkpoint(anchor));
    }
    let plan = Plan {
        epoch,
        start,
        from_seq,
        until_seq: None,
        after,
    };
    Ok((plan, files))
}

/// How a reader built by [`open`] encodes.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The stream id batches are stamped with.
    pub stream_ref: u64,
    /// Header flags of every batch (`FLAG_BACKFILL`).
    pub flags: u8,
    /// The line filter.
    pub filter: Filter,
}

/// The reader of `plan` in `files` (the log at `real`) and the encoder of what it reads: the
/// one place both are built, for a backfill, a follower, and a follower re-opened. Blocking
/// (opens the files).
pub fn open(
    real: &Path,
    files: &[ChainFile],
    plan: &Plan,
    encoding: Encoding,
    params: &TailParams,
) -> std::io::Result<(Follower, Encoder)> {
    let chain: Vec<HeldFile> = files[plan.start.index..]
        .iter()
        .map(|f| f.held.clone())
        .collect();
    let follower = Follower::new(
        real,
        chain,
        plan.start.offset,
        plan.start.seq,
        params.max_line_bytes,
    )?;
    let encoder = Encoder::new(
        plan,
        encoding.stream_ref,
        encoding.flags,
        params.max_batch_bytes,
        encoding.filter,
    );
    Ok((follower, encoder))
}

/// Keeps the stream's files and checkpoints in step with the follower.
pub fn record(stream: &Stream, follower: &Follower, events: &[follow::Event]) {
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
        checkpoints.retain(|c| files.iter().any(|f| f.held.id == c.file));
    }
    if let Some((file, offset, seq)) = follower.clean_point() {
        let point = Checkpoint { seq, file, offset };
        if st
            .checkpoints
            .back()
            .is_none_or(|c| *c != point && c.seq <= seq)
        {
            st.checkpoints.push_back(point);
            if st.checkpoints.len() > MAX_CHECKPOINTS {
                st.checkpoints.pop_front();
            }
        }
    }
}
