//! What the agent's tests against real files share: a sink into a channel, demand tuning, the
//! tailer, and decoding what was sent.
#![allow(dead_code, reason = "each test file uses some of these")]

pub mod binary;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use logrelay_agent::metrics::AgentMetrics;
use logrelay_agent::sink::{BatchSink, SinkClosed};
use logrelay_agent::tail::{Job, TailParams, Tailer, TailerConfig};
use logrelay_wire::batch::{self, BatchHeader, Kind};
use logrelay_wire::control::Demand;
use tokio::sync::mpsc;

/// How long any wait of a test may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A demand's batches into a channel; closed when the receiver is gone.
pub struct ChanSink(pub mpsc::Sender<Bytes>);

impl BatchSink for ChanSink {
    async fn send(&mut self, batch: Bytes) -> Result<(), SinkClosed> {
        self.0.send(batch).await.map_err(|_| SinkClosed)
    }
}

/// Batches of 4 KiB, lines up to 1 MiB, a follower polling every 5 ms.
pub fn params() -> TailParams {
    TailParams {
        max_batch_bytes: 4096,
        max_line_bytes: 1 << 20,
        follow_poll: Duration::from_millis(5),
    }
}

/// `spec` on the log at `path`, stamped with reference 7, with [`params`].
pub fn job<'a>(path: &'a std::path::Path, spec: &'a Demand) -> Job<'a> {
    Job {
        path,
        spec,
        stream_ref: 7,
        params: params(),
    }
}

/// A tailer with `config`, and the metrics it counts in.
pub fn tailer(config: TailerConfig) -> (Arc<Tailer>, Arc<AgentMetrics>) {
    let metrics = Arc::new(AgentMetrics::new());
    (Tailer::new(config, metrics.clone()), metrics)
}

/// The message of line `i` as the tests' writers write it.
pub fn line_text(i: usize) -> String {
    format!("line {i}\n")
}

/// One thing a demand sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// Epoch, sequence number, message.
    Line(u64, u64, String),
    /// Epoch, first missing sequence number, lines, bytes.
    Gap(u64, u64, u32, u64),
}

/// The lines or the gap of a batch.
pub fn decode(b: &[u8]) -> Vec<Got> {
    let h = BatchHeader::parse(b).unwrap();
    match h.kind {
        Kind::Gap => vec![Got::Gap(
            h.epoch,
            h.first_seq,
            h.count,
            batch::gap_bytes(b).unwrap(),
        )],
        Kind::Log => batch::lines(b)
            .unwrap()
            .1
            .into_iter()
            .map(|l| {
                Got::Line(
                    h.epoch,
                    l.seq,
                    String::from_utf8_lossy(l.message).into_owned(),
                )
            })
            .collect(),
    }
}

/// `(seq, message)` of the lines, in order.
pub fn lines(got: &[Got]) -> Vec<(u64, String)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Line(_, s, m) => Some((*s, m.clone())),
            Got::Gap(..) => None,
        })
        .collect()
}
