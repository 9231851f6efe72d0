//! Per-batch sampled traces: a few batches a second get a trace of their own path (`agent.batch`
//! with its stages `agent.read_encode`, `agent.queue` and `agent.send`), and a trace frame ahead
//! of them on the data stream, so that the relay's spans of the same batch (`relay.ingest`,
//! `relay.ring_push`, `relay.session_write`) join that trace.
//!
//! Which batches: [`Gate`] offers at most `--trace-batches-per-sec` batches a second, across
//! the whole agent, to the trace sampler (`OTEL_TRACES_SAMPLER`), which keeps them or not as it
//! keeps any new trace. The rest cost one atomic load each. A batch's trace is a new trace,
//! linked to the span of the demand that carried it, so that a subscription's trace does not
//! grow with every batch it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use logrelay_telemetry::{self as telemetry, SpanContext, names};
use logrelay_wire::batch::{BatchHeader, Kind, TraceFrame};

use crate::sink::BatchTimes;

/// Offers at most a number of batches a second to the sampler, agent-wide.
#[derive(Debug)]
pub struct Gate {
    start: Instant,
    /// Nanoseconds between two offers; `u64::MAX` offers none.
    interval_ns: u64,
    /// The next offer may be made at this many nanoseconds after `start`.
    next_ns: AtomicU64,
}

impl Gate {
    /// A gate of `per_sec` offers a second (0: none).
    pub fn new(per_sec: u32) -> Self {
        let interval_ns = match per_sec {
            0 => u64::MAX,
            n => 1_000_000_000 / u64::from(n),
        };
        Self {
            start: Instant::now(),
            interval_ns,
            next_ns: AtomicU64::new(0),
        }
    }

    /// Whether a batch may be offered now (at most one per interval).
    pub fn admit(&self) -> bool {
        self.admit_at(self.start.elapsed())
    }

    /// [`Self::admit`] at `elapsed` since the gate's start.
    fn admit_at(&self, elapsed: Duration) -> bool {
        if self.interval_ns == u64::MAX {
            return false;
        }
        let now = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let next = self.next_ns.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ns),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// One sampled batch, while it is sent.
#[derive(Debug)]
pub struct Traced {
    span: telemetry::Span,
    context: SpanContext,
    /// When its first line's read began and when it was queued, if known (wall-clock).
    read: Option<SystemTime>,
    queued: Option<SystemTime>,
    /// When it was handed to QUIC.
    sending: SystemTime,
}

impl Traced {
    /// The trace of `batch` of demand `demand` (stream `stream`, the agent's id), when the
    /// sampler keeps it: a new trace starting when its first line was read (else now), linked
    /// to the demand's span `link`. `None` for a gap notice or an empty batch, and when the
    /// sampler drops it.
    pub fn start(
        batch: &Bytes,
        demand: u64,
        stream: u64,
        link: Option<&SpanContext>,
        times: BatchTimes,
    ) -> Option<Self> {
        let h = BatchHeader::parse(batch).ok()?;
        if h.kind == Kind::Gap || h.count == 0 {
            return None;
        }
        let sending = SystemTime::now();
        let read = times.read.map(telemetry::wall_time);
        let queued = times.queued.map(telemetry::wall_time);
        let at = read.unwrap_or(sending);
        let links = link.cloned();
        let span = telemetry::start_at(
            names::AGENT_BATCH,
            telemetry::Kind::Producer,
            telemetry::Parent::Root,
            vec![
                telemetry::int(names::DEMAND_ID, demand),
                telemetry::int(names::STREAM_ID, stream),
                telemetry::int(names::BATCH_FIRST_SEQ, h.first_seq),
                telemetry::int(names::BATCH_LINES, u64::from(h.count)),
                telemetry::int(names::BATCH_BYTES, batch.len() as u64),
            ],
            at,
            links.as_slice(),
        );
        if !span.is_recording() {
            return None;
        }
        let context = span.context()?;
        Some(Self {
            span,
            context,
            read,
            queued,
            sending,
        })
    }

    /// The trace frame to send right before the batch.
    pub fn frame(&self) -> TraceFrame {
        let (trace_id, span_id, flags) = telemetry::context_bytes(&self.context);
        TraceFrame {
            trace_id,
            span_id,
            flags,
        }
    }

    /// Ends the batch's trace once QUIC took it (`sent`) or the stream failed: its stages
    /// as children, with the times they had.
    pub fn finish(self, sent: bool) {
        let done = SystemTime::now();
        let sending = self.sending;
        let parent = telemetry::Parent::Of(&self.context);
        let stage = |name, from: SystemTime, to: SystemTime| {
            telemetry::start_at(name, telemetry::Kind::Internal, parent, vec![], from, &[])
                .end_at("complete", to);
        };
        if let Some(read) = self.read {
            let queued = self.queued.unwrap_or(sending).clamp(read, sending);
            stage(names::AGENT_READ_ENCODE, read, queued);
            stage(names::AGENT_QUEUE, queued, sending);
        }
        telemetry::start_at(
            names::AGENT_SEND,
            telemetry::Kind::Internal,
            parent,
            vec![],
            sending,
            &[],
        )
        .end_at(if sent { "complete" } else { "error" }, done);
        self.span
            .end_at(if sent { "complete" } else { "error" }, done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_offers_at_most_one_batch_per_interval_and_none_at_zero() {
        let g = Gate::new(10);
        assert!(g.admit_at(Duration::from_millis(0)));
        assert!(!g.admit_at(Duration::from_millis(50)));
        assert!(!g.admit_at(Duration::from_millis(99)));
        assert!(g.admit_at(Duration::from_millis(100)));
        assert!(!g.admit_at(Duration::from_millis(150)));
        // A long quiet spell earns no burst.
        assert!(g.admit_at(Duration::from_secs(60)));
        assert!(!g.admit_at(Duration::from_secs(60) + Duration::from_millis(1)));
        let off = Gate::new(0);
        assert!(!off.admit_at(Duration::from_secs(0)));
        assert!(!off.admit_at(Duration::from_secs(1000)));
    }

    #[test]
    fn tracing_off_or_a_gap_notice_starts_no_batch_trace() {
        let gap = logrelay_wire::batch::encode_gap_flagged(1, 1, 5, 3, 30, 0);
        assert!(Traced::start(&gap, 1, 1, None, BatchTimes::default()).is_none());
        let mut b = logrelay_wire::batch::BatchBuilder::new(1, 1, 0, 0, 0);
        b.push(1, logrelay_wire::batch::LineFlags(0), b"x\n");
        // No tracer is installed in unit tests: nothing is recorded, nothing is framed.
        assert!(Traced::start(&b.finish(), 1, 1, None, BatchTimes::default()).is_none());
    }
}
