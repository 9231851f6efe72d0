//! Serving a metrics demand: read now, then on a schedule, for as long as the demand is open.
//!
//! Shared by scrape targets and pod resources. Per source, a [`SourceState`] outlives demands:
//! the sequence numbers (one per record) continue across demands within an epoch that is
//! drawn when the source is discovered, and while a live demand runs the batches of its latest
//! results are kept (at most [`KEPT_RESULTS`] of at most [`KEPT_RESULT_BYTES`] each), so that a
//! watcher joining later gets numbers at once (its backfill) instead of waiting for the next
//! interval.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use logrelay_wire::batch::{BatchHeader, FLAG_BACKFILL};
use logrelay_wire::control::Demand;

use super::encode::{NameFilter, ResultEncoder};
use crate::metrics::AgentMetrics;
use crate::sink::{BatchSink, SinkClosed};

/// Results kept per source for backfill while it is watched.
pub const KEPT_RESULTS: usize = 2;
/// A larger result is not kept: a watcher joining later waits for the next one.
pub const KEPT_RESULT_BYTES: usize = 4 * 1024 * 1024;

/// When results are taken while a demand is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Delay between the first (immediate) result and the second one.
    pub first_interval: Duration,
    /// Delay between later results.
    pub interval: Duration,
}

impl Schedule {
    /// Every `interval`, starting at once.
    pub fn every(interval: Duration) -> Self {
        Self {
            first_interval: interval,
            interval,
        }
    }
}

/// Takes readings of one source and encodes them.
pub trait Collector: Send {
    /// One reading.
    type Reading: Send;

    /// Takes a reading; returns its Unix time in nanoseconds and the reading.
    fn read(&mut self) -> impl Future<Output = (i64, Self::Reading)> + Send;

    /// Encodes a reading taken at `timestamp_ns`.
    fn encode(
        &mut self,
        timestamp_ns: i64,
        reading: &Self::Reading,
        out: &mut ResultEncoder,
        filter: &NameFilter,
    );
}

/// Per-source state that outlives demands.
#[derive(Debug)]
pub struct SourceState {
    epoch: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    live: usize,
    /// The latest [`KEPT_RESULTS`] complete results while a live demand runs, oldest first:
    /// (timestamp, batches). Two, so that a watcher whose join point falls just before the
    /// newest one still gets the one before.
    last: VecDeque<(i64, Vec<Bytes>)>,
}

impl Default for SourceState {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceState {
    /// A fresh state with a random epoch below 2^53 (exact in JavaScript).
    pub fn new() -> Self {
        Self {
            epoch: fastrand::u64(1..(1 << 53)),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The sequence epoch of this source.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("source state lock")
    }

    /// The newest kept result that ends at or before `until` (same epoch), after `since_ns`,
    /// as backfill batches. Empty when the demand asks for no backlog (`tail: 0`).
    pub fn backfill(&self, spec: &Demand) -> Vec<Bytes> {
        if spec.tail == Some(0) && spec.since_ns.is_none() && spec.since_seq.is_none() {
            return Vec::new();
        }
        let inner = self.lock();
        let ends_before_until = |batches: &[Bytes]| {
            batches.iter().all(|b| {
                BatchHeader::parse(b).is_ok_and(|h| {
                    spec.until
                        .is_none_or(|u| u.epoch == h.epoch && h.end_seq() <= u.seq)
                })
            })
        };
        let Some((_, batches)) = inner
            .last
            .iter()
            .rev()
            .filter(|(ts, _)| spec.since_ns.is_none_or(|s| *ts >= s))
            .find(|(_, batches)| ends_before_until(batches))
        else {
            return Vec::new();
        };
        batches
            .iter()
            .filter(|b| {
                BatchHeader::parse(b).is_ok_and(|h| {
                    spec.since_seq
                        .is_none_or(|s| s.epoch != h.epoch || h.first_seq >= s.seq)
                })
            })
            .map(|b| {
                let mut copy = BytesMut::from(&b[..]);
                // Byte 3 of the batch header holds its flags.
                copy[3] |= FLAG_BACKFILL;
                copy.freeze()
            })
            .collect()
    }
}

/// Counts a live demand; forgets the kept result when the last one ends.
struct LiveGuard<'a>(&'a SourceState);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.live -= 1;
        if inner.live == 0 {
            inner.last.clear();
        }
    }
}

/// Serves one demand of a metrics source.
///
/// * `follow: false` (a later watcher's backfill): the kept latest result, then done (nothing
///   when `spec.contains` filters names: the kept results are unfiltered).
/// * `follow: true`: a result at once, then on `schedule`, until the sink closes (the demand
///   was cancelled or the connection lost). Each result is encoded once into batches of at most
///   `max_batch_bytes`, keeping the names `spec.contains` lists (see [`NameFilter`]).
#[allow(clippy::too_many_arguments, reason = "one demand's whole context")]
pub async fn serve<C: Collector, S: BatchSink>(
    state: &SourceState,
    collector: &mut C,
    schedule: Schedule,
    spec: &Demand,
    stream_ref: u64,
    max_batch_bytes: usize,
    sink: &mut S,
    metrics: &AgentMetrics,
) -> Result<(), SinkClosed> {
    if !spec.follow {
        // Kept results are unfiltered: a filtered backfill gets none rather than all names.
        let kept = if NameFilter::parse(spec.contains.as_deref()).is_all() {
            state.backfill(spec)
        } else {
            Vec::new()
        };
        for b in kept {
            send(sink, b, metrics).await?;
        }
        return Ok(());
    }
    let filter = NameFilter::parse(spec.contains.as_deref());
    state.lock().live += 1;
    let _live = LiveGuard(state);
    let mut next = tokio::time::Instant::now();
    let mut delay = schedule.first_interval;
    loop {
        let (ts, reading) = collector.read().await;
        let batches = {
            let mut inner = state.lock();
            let mut enc =
                ResultEncoder::new(stream_ref, state.epoch, inner.next_seq, 0, max_batch_bytes);
            collector.encode(ts, &reading, &mut enc, &filter);
            let (batches, next_seq) = enc.finish();
            inner.next_seq = next_seq;
            let bytes: usize = batches.iter().map(Bytes::len).sum();
            if filter.is_all() {
                if bytes > KEPT_RESULT_BYTES {
                    inner.last.clear();
                } else {
                    if inner.last.len() == KEPT_RESULTS {
                        inner.last.pop_front();
                    }
                    inner.last.push_back((ts, batches.clone()));
                }
            }
            batches
        };
        drop(reading);
        for b in batches {
            send(sink, b, metrics).await?;
        }
        next += delay;
        delay = schedule.interval;
        let now = tokio::time::Instant::now();
        if next < now {
            // Fell behind (a slow scrape or a slow relay): skip the missed readings.
            next = now + delay;
        }
        tokio::time::sleep_until(next).await;
    }
}

async fn send<S: BatchSink>(
    sink: &mut S,
    batch: Bytes,
    metrics: &AgentMetrics,
) -> Result<(), SinkClosed> {
    let lines = BatchHeader::parse(&batch).map_or(0, |h| h.count);
    let len = batch.len();
    sink.send(batch).await?;
    metrics.lines_sent.inc_by(u64::from(lines));
    metrics.bytes_sent.inc_by(len as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use logrelay_wire::batch::{self, LineFlags};
    use logrelay_wire::control::SeqPos;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::mpsc;

    /// Counts readings; each is one gauge `n <count>`.
    struct Counting(Arc<AtomicU64>);

    impl Collector for Counting {
        type Reading = u64;

        async fn read(&mut self) -> (i64, u64) {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            (n as i64, n)
        }

        fn encode(&mut self, ts: i64, r: &u64, out: &mut ResultEncoder, filter: &NameFilter) {
            out.sample(ts, LineFlags(LineFlags::SYSTEM), "up", [], 1.0);
            if filter.keeps("n") {
                out.sample(ts, LineFlags(0), "n", [], *r as f64);
            }
        }
    }

    struct ChanSink(mpsc::Sender<Bytes>);

    impl BatchSink for ChanSink {
        async fn send(&mut self, batch: Bytes) -> Result<(), SinkClosed> {
            self.0.send(batch).await.map_err(|_| SinkClosed)
        }
    }

    fn messages(b: &Bytes) -> Vec<String> {
        batch::lines(b)
            .unwrap()
            .1
            .iter()
            .map(|l| String::from_utf8_lossy(l.message).into_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reads_at_once_then_on_schedule_and_only_while_open() {
        let state = Arc::new(SourceState::new());
        let count = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(AgentMetrics::new());
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn({
            let (state, count, metrics) = (state.clone(), count.clone(), metrics.clone());
            async move {
                let spec = Demand {
                    follow: true,
                    ..Demand::default()
                };
                let schedule = Schedule {
                    first_interval: Duration::from_secs(1),
                    interval: Duration::from_secs(5),
                };
                serve(
                    &state,
                    &mut Counting(count),
                    schedule,
                    &spec,
                    7,
                    64 * 1024,
                    &mut ChanSink(tx),
                    &metrics,
                )
                .await
            }
        });
        let start = tokio::time::Instant::now();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first reading is immediate"
        );
        assert_eq!(messages(&first), ["up 1\n", "n 1\n"]);
        let h = BatchHeader::parse(&first).unwrap();
        assert_eq!(
            (h.stream, h.epoch, h.first_seq, h.count),
            (7, state.epoch(), 0, 2)
        );
        let second = rx.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(BatchHeader::parse(&second).unwrap().first_seq, 2);
        rx.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(6));

        // A later watcher's backfill: the latest result, flagged, before its join point.
        let until = SeqPos {
            epoch: state.epoch(),
            seq: 6,
        };
        let back = state.backfill(&Demand {
            tail: Some(1000),
            until: Some(until),
            ..Demand::default()
        });
        assert_eq!(back.len(), 1);
        let h = BatchHeader::parse(&back[0]).unwrap();
        assert_eq!((h.first_seq, h.flags & FLAG_BACKFILL), (4, FLAG_BACKFILL));
        // Joined before the newest result: the one before it.
        let back = state.backfill(&Demand {
            until: Some(SeqPos { seq: 5, ..until }),
            ..Demand::default()
        });
        assert_eq!(BatchHeader::parse(&back[0]).unwrap().first_seq, 2);
        assert!(
            state
                .backfill(&Demand {
                    tail: Some(0),
                    ..Demand::default()
                })
                .is_empty()
        );

        // Closing the demand stops the readings and drops the kept result.
        drop(rx);
        assert!(task.await.unwrap().is_err());
        let taken = count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), taken);
        assert!(state.backfill(&Demand::default()).is_empty());
        assert_eq!(metrics.lines_sent.get(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_filter_selects_series_and_keeps_nothing_for_backfill() {
        let state = SourceState::new();
        let (tx, mut rx) = mpsc::channel(4);
        let spec = Demand {
            follow: true,
            contains: Some("up".into()),
            ..Demand::default()
        };
        let metrics = AgentMetrics::new();
        let mut sink = ChanSink(tx);
        let mut collector = Counting(Arc::new(AtomicU64::new(0)));
        let serving = serve(
            &state,
            &mut collector,
            Schedule::every(Duration::from_secs(1)),
            &spec,
            1,
            1024,
            &mut sink,
            &metrics,
        );
        tokio::select! {
            _ = serving => unreachable!("serves until the sink closes"),
            b = rx.recv() => {
                assert_eq!(messages(&b.unwrap()), ["up 1\n"]);
                assert!(state.backfill(&Demand::default()).is_empty());
            }
        }
    }
}
