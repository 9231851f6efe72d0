//! The [`Tailer`]: every followed stream of the agent, and serving one demand on a log —
//! a backfill read to its end, or a live demand attached to (or starting) the stream's
//! follower and draining its queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use logrelay_wire::batch::{FLAG_BACKFILL, FLAG_COUNT_UNKNOWN, encode_gap_flagged};
use logrelay_wire::control::{Demand, SeqPos};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::budget::{Budget, Item, Queue};
use crate::fingerprint::FileId;
use crate::metrics::AgentMetrics;
use crate::sink::BatchSink;

use super::encode::restamp;
use super::filter::{Filter, FilterKey};
use super::follow::Progress;
use super::stream::{self, Encoding, Shared, Slot, Stream};
use super::task::{self, Context, POLL_BYTES, gaps_of, next_item};
use super::wake::Wakes;
use super::{Ended, Job, TailError, TailParams, TailerConfig};

/// Every followed stream of the agent; see the module doc of [`super`].
#[derive(Debug)]
pub struct Tailer {
    pub(super) config: TailerConfig,
    pub(super) budget: Arc<Budget>,
    pub(super) metrics: Arc<AgentMetrics>,
    /// Followed streams by log path and line filter: a demand with a pushed-down filter is a
    /// numbering of its own (the relay keeps one ring per stream and filter).
    pub(super) streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    /// Generations of the data streams draining queues, unique across followers.
    consumers: AtomicU64,
    /// inotify wake-ups of followers at the end of their file.
    wakes: Arc<Wakes>,
    /// Since when the agent is connected to the relay (`None`: it is not).
    pub(super) connected_since: Mutex<Option<Instant>>,
}

/// A log path and the line filter of the demands it serves.
type StreamKey = (PathBuf, FilterKey);

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TailError + '_ {
    move |source| TailError::Io {
        path: path.display().to_string(),
        source,
    }
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
            wakes: Wakes::new(),
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

    /// Test hook (feature `test-hooks`, never in a release binary): the follower of `path`
    /// stops reading, as if its read hung.
    #[cfg(feature = "test-hooks")]
    pub fn freeze(&self, path: &Path) {
        for s in self.of_path(path) {
            if let Some(slot) = &s.state.lock().expect("stream lock").follower {
                slot.shared.frozen.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Serves one demand on the log at `path`, stamping `stream_ref` into every batch.
    ///
    /// When the demand's receiver goes away ([`SinkClosed`](crate::sink::SinkClosed), or this future is dropped), a
    /// follower it drained only detaches: it keeps reading into the budget for a resume, and
    /// is stopped after `detach_linger`. Use [`Self::serve_until`] to tell a cancel apart.
    pub async fn serve<S: BatchSink>(
        self: &Arc<Self>,
        job: Job<'_>,
        sink: &mut S,
    ) -> Result<(), TailError> {
        self.serve_until(job, sink, std::future::pending())
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
        job: Job<'_>,
        sink: &mut S,
        cancelled: impl Future<Output = ()>,
    ) -> Result<Ended, TailError> {
        self.serve_acked(job, sink, cancelled, None).await
    }

    /// Like [`Self::serve_until`]; with `acks` (the relay acknowledges what its sessions were
    /// handed: `ack`), a followed stream's batches are kept in its queue once sent, until an
    /// acknowledgement covers them, so that a resume after a lost connection sends again what
    /// was in flight ([`Queue::skip_to`]).
    pub async fn serve_acked<S: BatchSink>(
        self: &Arc<Self>,
        job: Job<'_>,
        sink: &mut S,
        cancelled: impl Future<Output = ()>,
        acks: Option<watch::Receiver<Option<SeqPos>>>,
    ) -> Result<Ended, TailError> {
        let mut cancelled = std::pin::pin!(cancelled);
        if job.spec.follow {
            self.serve_follow(job, sink, cancelled, acks).await
        } else {
            tokio::select! {
                r = self.serve_once(job, sink) => r.map(|()| Ended::Complete),
                () = &mut cancelled => Ok(Ended::Cancelled),
            }
        }
    }

    /// A backfill: read from the planned start to `until` (or to the current end) and finish.
    async fn serve_once<S: BatchSink>(
        self: &Arc<Self>,
        job: Job<'_>,
        sink: &mut S,
    ) -> Result<(), TailError> {
        let Job {
            path,
            spec,
            stream_ref,
            params,
        } = job;
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
            crate::blocking::run(move || stream::plan_once(&stream, &spec, max_line))
                .await
                .map_err(|e| io_err(path)(std::io::Error::other(e)))?
                .map_err(io_err(path))?
        };
        let Some((plan, files)) = plan else {
            return Ok(());
        };
        let encoding = Encoding {
            stream_ref,
            flags: FLAG_BACKFILL,
            filter: Filter::of(spec).map_err(TailError::Filter)?,
        };
        let (mut follower, mut enc) =
            stream::open(&stream.real_path(), &files, &plan, encoding, &params)
                .map_err(io_err(path))?;
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
            gaps.retain(|&(at, _)| at >= enc.from_seq() && plan.until_seq.is_none_or(|u| at < u));
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
    async fn serve_follow<S: BatchSink>(
        self: &Arc<Self>,
        job: Job<'_>,
        sink: &mut S,
        mut cancelled: std::pin::Pin<&mut impl Future<Output = ()>>,
        mut acks: Option<watch::Receiver<Option<SeqPos>>>,
    ) -> Result<Ended, TailError> {
        let Job {
            path,
            spec,
            stream_ref,
            params,
        } = job;
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
                    sink.times(q.times);
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
        let demanded = Filter::of(spec).map_err(TailError::Filter)?;
        let path = stream.path.clone();
        let real = stream.real_path();
        let mut attempt = 0;
        let (plan, filter, follower, enc) = loop {
            attempt += 1;
            let held_epoch = stream.state.lock().expect("stream lock").epoch;
            let (plan, files) = {
                let stream = stream.clone();
                let spec = spec.clone();
                // Planning again (below) is for a new epoch: it stays new.
                let keep_held = attempt == 1;
                tokio::task::spawn_blocking(move || {
                    stream::plan_follow(&stream, &spec, keep_held, params.max_line_bytes)
                })
                .await
                .map_err(|e| io_err(&path)(std::io::Error::other(e)))?
                .map_err(io_err(&path))?
            };
            // A resume in the epoch held, or a new epoch continuing what the relay holds, is
            // placed by position: `since_ns` (the relay's fallback for an older agent) filters
            // nothing, lest a line stamped like the last one held be skipped.
            let mut filter = demanded.clone();
            if plan.after.is_some() || spec.since_seq.is_some_and(|p| p.epoch == plan.epoch) {
                filter.since_ns = None;
            }
            let encoding = Encoding {
                stream_ref,
                flags: 0,
                filter: filter.clone(),
            };
            let (follower, enc) =
                stream::open(&real, &files, &plan, encoding, &params).map_err(io_err(&path))?;
            // A follower takes every rotated file it finds at its start for history. If the log
            // rotated while a new epoch was planned (the walk back can take a while), the files
            // rotated meanwhile are newer than the plan's chain: plan again, or they would be
            // skipped. The file at the path still being the plan's newest proves no rotation
            // came between the plan's listing and the follower's.
            let fresh = plan.epoch != held_epoch;
            let newest = files.last().map(|f| f.held.id);
            let at_path = std::fs::metadata(&real).ok().map(|m| FileId::of(&m));
            if !fresh || newest == at_path || attempt == 5 {
                break (plan, filter, follower, enc);
            }
            tracing::debug!(path = %path.display(), "the log rotated while planning; planning again");
        };
        let queue = self.budget.queue();
        let shared = Shared::new(follower.head(), plan.from_seq);
        let mut st = stream.state.lock().expect("stream lock");
        if let Some(old) = st.follower.take() {
            old.task.abort();
            old.shared.takeover.notify_waiters();
        }
        st.stopped_at = None;
        let generation = self.consumers.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(task::follow_task(
            self.task_context(),
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
            filter,
            params,
            stream_ref,
            consumer: generation,
            attached: true,
            detached_at: Instant::now(),
            lag_seen: None,
        });
        Ok((queue, shared, generation, plan.epoch))
    }

    /// What a follower task needs of this tailer.
    pub(super) fn task_context(&self) -> Context {
        Context {
            metrics: self.metrics.clone(),
            wakes: Arc::downgrade(&self.wakes),
        }
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
