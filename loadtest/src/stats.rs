//! Counters shared by the load tasks, latency histograms and their summaries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (longer ones are clamped): one minute.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, three significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// Records a latency given in nanoseconds (clamped to [1 µs, one minute]).
pub fn record_ns(h: &mut Histogram<u64>, ns: i64) {
    let us = (ns.max(0) as u64 / 1000).clamp(1, MAX_LATENCY_US);
    h.saturating_record(us);
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Lines measured.
    pub count: u64,
}

impl Latency {
    /// Summarises a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

/// What one subscriber saw; written by its task, read by the sampler.
#[derive(Debug)]
pub struct SubStats {
    /// Log lines received.
    pub lines: AtomicU64,
    /// Data bytes received.
    pub bytes: AtomicU64,
    /// Lines reported missing (relay gap events and agent gap batches).
    pub gap_lines: AtomicU64,
    /// Streams this session was told about (subscription took effect).
    pub streams_ready: AtomicU64,
    /// Latencies since the sampler last took them.
    pub latency: Mutex<Histogram<u64>>,
    /// Gap lines by reason.
    pub gaps_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Set when the session failed or was closed by the server.
    pub failure: Mutex<Option<String>>,
}

impl Default for SubStats {
    fn default() -> Self {
        Self {
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            gap_lines: AtomicU64::new(0),
            streams_ready: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
            gaps_by_reason: Mutex::new(BTreeMap::new()),
            failure: Mutex::new(None),
        }
    }
}

impl SubStats {
    /// Counts a gap of `lines` for `reason`.
    pub fn gap(&self, reason: &str, lines: u64) {
        self.gap_lines.fetch_add(lines, Ordering::Relaxed);
        *self
            .gaps_by_reason
            .lock()
            .expect("gaps lock")
            .entry(reason.to_owned())
            .or_default() += lines;
    }

    /// Records why the session ended early (the first reason wins).
    pub fn fail(&self, why: String) {
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(why);
    }
}

/// Totals of all subscribers at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubTotals {
    /// Lines received by all subscribers.
    pub lines: u64,
    /// Bytes received by all subscribers.
    pub bytes: u64,
    /// Gap lines reported to all subscribers.
    pub gap_lines: u64,
}

/// Sums the counters of `subs` and moves their latencies into `into`.
pub fn collect(subs: &[std::sync::Arc<SubStats>], into: &mut Histogram<u64>) -> SubTotals {
    let mut t = SubTotals::default();
    for s in subs {
        t.lines += s.lines.load(Ordering::Relaxed);
        t.bytes += s.bytes.load(Ordering::Relaxed);
        t.gap_lines += s.gap_lines.load(Ordering::Relaxed);
        let mut h = s.latency.lock().expect("latency lock");
        into.add(&*h).expect("same bounds");
        h.reset();
    }
    t
}

/// Counters of a producer (QUIC producer, file writer, or NATS publisher).
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Lines sent or written.
    pub lines: AtomicU64,
    /// Bytes sent or written (batch bytes for QUIC and NATS, file bytes for writers).
    pub bytes: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for us in 1..=1000i64 {
            record_ns(&mut h, us * 1000);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50), "{l:?}");
        assert!((899..=901).contains(&l.p90), "{l:?}");
        assert!((989..=991).contains(&l.p99), "{l:?}");
        assert!((998..=1000).contains(&l.p999), "{l:?}");
        assert_eq!(l.max, 1000);
        assert_eq!(Latency::of(&latency_histogram()), Latency::default());
    }

    #[test]
    fn out_of_range_latencies_are_clamped() {
        let mut h = latency_histogram();
        record_ns(&mut h, -5);
        record_ns(&mut h, i64::MAX);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn collecting_drains_latencies_and_sums_counters() {
        let subs: Vec<std::sync::Arc<SubStats>> =
            (0..3).map(|_| std::sync::Arc::default()).collect();
        for (i, s) in subs.iter().enumerate() {
            s.lines.store(10 * (i as u64 + 1), Ordering::Relaxed);
            record_ns(&mut s.latency.lock().unwrap(), 5_000);
        }
        subs[1].gap("slow_consumer", 7);
        let mut h = latency_histogram();
        let t = collect(&subs, &mut h);
        assert_eq!((t.lines, t.gap_lines, h.len()), (60, 7, 3));
        let t = collect(&subs, &mut h);
        assert_eq!((t.lines, h.len()), (60, 3));
        assert_eq!(subs[1].gaps_by_reason.lock().unwrap()["slow_consumer"], 7);
    }
}
