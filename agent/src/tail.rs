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
//! numbers, filters and encodes batches into the stream's [`Queue`](crate::budget::Queue), drawing on the agent-wide
//! [`Budget`](crate::budget::Budget); the demand's data stream drains the queue. The follower outlives its data stream:
//! when the relay goes away it keeps following into the budget (dropping the oldest batches,
//! reported as gaps, if it fills) and the relay's re-sent demand (`since_seq`) picks up where the
//! relay's ring ended. A follower nobody re-attaches within `detach_linger` while the relay is
//! connected is stopped. A *cancelled* demand ([`Tailer::serve_until`]) stops its follower at
//! once, so nothing is read that nobody wants; the stream's files, checkpoints and epoch stay for
//! `detach_linger`, and a resume in that time re-reads from a checkpoint. A watchdog
//! ([`Tailer::run`]) re-opens a follower whose file grew but which read nothing for
//! `stall_after` (`logrelay_agent_stalls_total`), and releases what stopped followers held.

//!
//! # Modules
//!
//! Pure decisions: [`plan`] (where a demand starts and which lines it sends), [`walk`] (walking
//! back over records), [`reader`] (records into numbered lines), [`filter`], [`encode`] (lines
//! into batches), [`policy`] (the watchdog's verdicts). Blocking file I/O: [`file`](mod@file), [`follow`],
//! [`seek`], [`gz`]. The shell: [`stream`] (a stream's state; plans carried out in its files),
//! [`task`] (the follower task), [`tailer`] (serving demands), `watchdog`, [`wake`].

pub mod encode;
pub mod file;
pub mod filter;
pub mod follow;
pub mod gz;
pub mod lag;
pub mod plan;
pub mod policy;
pub mod reader;
pub mod seek;
pub mod stream;
pub mod tailer;
pub mod task;
pub mod wake;
pub mod walk;
mod watchdog;

use std::time::Duration;

use logrelay_wire::pattern::PatternError;

use crate::sink::SinkClosed;

pub use file::{ChainFile, HeldFile, chain_files};
pub use filter::check_filter;
pub use follow::{Follower, Progress};
pub use plan::{Position, SEQ_BASE};
pub use reader::{RecordReader, TailLine};
pub use tailer::Tailer;
pub use walk::Want;

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

/// One demand on one log, as [`Tailer::serve`] and its variants take it: where to read, what
/// the relay asked for, the reference stamped into every batch, and the tuning.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The log file (the path discovery found; rotated files are found beside it).
    pub path: &'a std::path::Path,
    /// The demand as the relay sent it.
    pub spec: &'a logrelay_wire::control::Demand,
    /// Stamped into every batch: the relay's reference for this demand.
    pub stream_ref: u64,
    /// Batch size, line size and poll interval.
    pub params: TailParams,
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
