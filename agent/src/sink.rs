//! Where a demand's batches go: the port between the stages that produce batches (tail, scrape,
//! cgroup sampling) and the uplink's data streams, which send them to the relay.

use std::time::Instant;

use bytes::Bytes;

/// Where batches go.
pub trait BatchSink {
    /// Sends one encoded batch; an error means the receiver is gone.
    fn send(&mut self, batch: Bytes) -> impl Future<Output = Result<(), SinkClosed>> + Send;

    /// When the batch sent next was read and queued, where its producer knows it: the stages
    /// of its trace, if it is sampled for one. Ignored by default.
    fn times(&mut self, _times: BatchTimes) {}
}

/// When a batch was read and queued (a followed log's batches; unknown elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTimes {
    /// The read of its first line began.
    pub read: Option<Instant>,
    /// It was queued for the demand to take.
    pub queued: Option<Instant>,
}

/// The receiver of a demand went away.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("receiver closed")]
pub struct SinkClosed;
