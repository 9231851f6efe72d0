//! The tailer's watchdog and janitor: re-opens stalled followers ([`policy::stall`]), stops
//! unclaimed ones ([`policy::unclaimed`]) and releases what stopped followers held.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::fingerprint::FileId;

use super::plan::Plan;
use super::policy::{self, Seen, Verdict};
use super::stream::{self, Encoding, State, Stream};
use super::tailer::Tailer;
use super::task;

impl Tailer {
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
            let now = Instant::now();
            if !slot.attached
                && connected_since.is_some_and(|since| {
                    policy::unclaimed(
                        slot.detached_at.into_std(),
                        since.into_std(),
                        now.into_std(),
                        self.config.detach_linger,
                        self.config.resume_grace,
                    )
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
            let seen = Seen {
                finished: slot.task.is_finished(),
                // Is the file ahead of what was read?
                lagging: head.is_some_and(|(id, offset)| {
                    std::fs::metadata(&stream.path)
                        .ok()
                        .filter(|m| FileId::of(m) == id)
                        .is_some_and(|m| m.len() > offset)
                }),
                progress_at: progress_at.into_std(),
            };
            let slot = st.follower.as_mut().expect("checked");
            let lag_seen = slot.lag_seen.map(Instant::into_std);
            match policy::stall(seen, lag_seen, now.into_std(), self.config.stall_after) {
                Verdict::Fine => {
                    slot.lag_seen = None;
                    continue;
                }
                Verdict::Lagging(since) => {
                    slot.lag_seen = Some(Instant::from_std(since));
                    continue;
                }
                Verdict::Stalled => slot.lag_seen = None,
            }
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
        let start = st
            .held()
            .checkpoint_before(from_seq)
            .ok_or_else(|| std::io::Error::other("no checkpoint to re-open from"))?;
        let plan = Plan {
            epoch: st.epoch,
            start,
            from_seq,
            until_seq: None,
            after: None,
        };
        let slot = st.follower.as_ref().expect("checked");
        let encoding = Encoding {
            stream_ref: slot.stream_ref,
            flags: 0,
            filter: slot.filter.clone(),
        };
        let (follower, enc) = stream::open(
            &stream.real_path(),
            &st.files,
            &plan,
            encoding,
            &slot.params,
        )?;
        let slot = st.follower.as_mut().expect("checked");
        #[cfg(feature = "test-hooks")]
        slot.shared.frozen.store(false, Ordering::Relaxed);
        *slot.shared.progress.lock().expect("shared lock") = (follower.head(), Instant::now());
        slot.task = tokio::spawn(task::follow_task(
            self.task_context(),
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
