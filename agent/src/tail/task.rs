//! The follower task: reads, numbers, filters and queues one followed stream; and how a
//! demand takes the next item of its queue.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Gap, Item, Queue};
use crate::metrics::AgentMetrics;
use crate::sink::BatchTimes;

use super::TailParams;
use super::encode::{Encoded, Encoder};
use super::follow::{self, Follower, Progress};
use super::stream::{self, Shared, Stream};
use super::wake::Wakes;

/// Bytes a follower reads before yielding.
pub const POLL_BYTES: u64 = 256 * 1024;

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

/// What a follower task needs of its tailer: the metrics, and the wake-ups, which live as
/// long as the tailer (the task ends once they are gone).
#[derive(Debug, Clone)]
pub struct Context {
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
    /// The tailer's inotify wake-ups.
    pub wakes: Weak<Wakes>,
}

/// Reads, numbers, filters and queues one followed stream until aborted.
pub async fn follow_task(
    cx: Context,
    stream: Arc<Stream>,
    mut follower: Follower,
    mut enc: Encoder,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    params: TailParams,
) {
    let metrics = cx.metrics;
    let _running = Running::new(&metrics);
    let mut lines = Vec::new();
    let mut out = Vec::new();
    let mut parse_errors = follower.parse_errors();
    let mut read_lag = super::lag::ReadLag::default();
    // Registered before the first read, so no write after it goes unnoticed.
    let Some(wake) = cx.wakes.upgrade().map(|w| w.register(&stream.path)) else {
        return;
    };
    loop {
        if cx.wakes.strong_count() == 0 {
            // The tailer is gone.
            return;
        }
        #[cfg(feature = "test-hooks")]
        if shared.frozen.load(Ordering::Relaxed) {
            tokio::time::sleep(params.follow_poll).await;
            continue;
        }
        enc.reading(std::time::Instant::now());
        let progress = match follower.poll(&mut lines, POLL_BYTES) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(path = %stream.path.display(), error = %e, "follower read failed");
                tokio::time::sleep(params.follow_poll.max(Duration::from_millis(100))).await;
                continue;
            }
        };
        metrics.lines_read.inc_by(lines.len() as u64);
        read_lag.poll(
            follower.format(),
            &lines,
            super::reader::wall_clock_ns(),
            !matches!(progress, Progress::More(_)),
            |s| metrics.read_lag.observe(s),
        );
        let errors = follower.parse_errors();
        metrics.parse_errors.inc_by(errors - parse_errors);
        parse_errors = errors;
        let events = follower.take_events();
        // Gaps go in order with the lines around them.
        let mut lost = gaps_of(&metrics, &stream.path, &events);
        lost.retain(|&(at, _)| at >= enc.from_seq());
        for l in lines.drain(..) {
            while let Some(&(at, bytes)) = lost.first()
                && at <= l.seq
            {
                enc.flush(&mut out);
                push_all(&queue, &shared, &mut out);
                queue.push_gap(lost_gap(at, bytes));
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
            queue.push_gap(lost_gap(at, bytes));
        }
        stream::record(&stream, &follower, &events);
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

/// A gap of `bytes` lost before line `at`, its line count unknown.
fn lost_gap(at: u64, bytes: u64) -> Gap {
    Gap {
        first_seq: at,
        end_seq: at,
        lines: 0,
        bytes,
        counted: false,
    }
}

/// The next item of a follower's queue, taken only while `generation` is the demand draining
/// it; `None` once a newer demand took the follower over (`Tailer::attach`).
///
/// The check and the take are one step under the stream's lock, which `attach` also holds: a
/// demand that was taken over but has not run since (its receiver went away, which it learns
/// only when a send fails) would otherwise be woken first by the next batch, take it and lose
/// it, while the newer demand had attached at a point the queue no longer starts at (a hole,
/// with no gap). With `retain`, the item stays queued until acknowledged
/// ([`Queue::pop_retained`]).
pub async fn next_item(
    stream: &Stream,
    queue: &Queue,
    generation: u64,
    retain: bool,
) -> Option<Item> {
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
pub fn gaps_of(metrics: &AgentMetrics, path: &Path, events: &[follow::Event]) -> Vec<(u64, u64)> {
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
        let times = BatchTimes {
            read: e.read_at,
            queued: None,
        };
        queue.push_timed(e.bytes, e.first_seq, e.end_seq, e.lines, times);
    }
}
