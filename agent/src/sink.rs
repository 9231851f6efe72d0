//! Where a demand's batches go: the port between the stages that produce batches (tail, scrape,
//! cgroup sampling) and the uplink's data streams, which send them to the relay.

use bytes::Bytes;

/// Where batches go.
pub trait BatchSink {
    /// Sends one encoded batch; an error means the receiver is gone.
    fn send(&mut self, batch: Bytes) -> impl Future<Output = Result<(), SinkClosed>> + Send;
}

/// The receiver of a demand went away.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("receiver closed")]
pub struct SinkClosed;
