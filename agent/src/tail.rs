//! Serving one demand: find where to start, send the backlog, then follow the file.
//!
//! Sequence numbers count *logical* lines from the start of the file (a CRI `P…P F` run is one
//! line); the epoch identifies the file (device and inode), so the same line keeps the same
//! `(epoch, seq)` across agent and relay restarts. [`locate`] is the pure part: it scans the file
//! once, holding only the offsets of the last `tail` lines.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use logrelay_wire::batch::{BatchBuilder, LineFlags};
use logrelay_wire::control::{Demand, SeqPos};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::cri;
use crate::metrics::AgentMetrics;

/// Bytes of a record's beginning kept to tell whether it completes a line.
const RECORD_HEAD_BYTES: usize = 80;
/// Read size.
const READ_BYTES: usize = 64 * 1024;

/// Where a read starts or stopped: a byte offset and the sequence number of the line there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Byte offset in the file (start of a logical line).
    pub offset: u64,
    /// Sequence number of the line starting at `offset`.
    pub seq: u64,
}

/// Incremental scanner over a file's bytes that counts logical lines.
#[derive(Debug)]
pub struct LineScanner {
    tail: usize,
    stop_seq: Option<u64>,
    starts: VecDeque<u64>,
    count: u64,
    line_start: u64,
    record_head: Vec<u8>,
    pos: u64,
    done: bool,
}

impl LineScanner {
    /// Keeps the starts of the last `tail` lines; stops after line `stop_seq - 1` when set.
    pub fn new(tail: u32, stop_seq: Option<u64>) -> Self {
        Self {
            tail: tail as usize,
            stop_seq,
            starts: VecDeque::with_capacity((tail as usize).min(65_536)),
            count: 0,
            line_start: 0,
            record_head: Vec::with_capacity(RECORD_HEAD_BYTES),
            pos: 0,
            done: stop_seq == Some(0),
        }
    }

    /// Feeds the next bytes of the file. Returns false once the stop sequence is reached.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        while !self.done && !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                None => {
                    self.take_head(chunk);
                    self.pos += chunk.len() as u64;
                    return true;
                }
                Some(i) => {
                    self.take_head(&chunk[..=i]);
                    self.pos += i as u64 + 1;
                    chunk = &chunk[i + 1..];
                    if cri::completes_line(&self.record_head) {
                        if self.tail > 0 {
                            if self.starts.len() == self.tail {
                                self.starts.pop_front();
                            }
                            self.starts.push_back(self.line_start);
                        }
                        self.count += 1;
                        self.line_start = self.pos;
                        self.done = self.stop_seq == Some(self.count);
                    }
                    self.record_head.clear();
                }
            }
        }
        !self.done
    }

    fn take_head(&mut self, bytes: &[u8]) {
        let room = RECORD_HEAD_BYTES - self.record_head.len();
        self.record_head
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// `(first line to send, end of the scanned complete lines)`.
    pub fn finish(&self) -> (Cursor, Cursor) {
        let end = Cursor {
            offset: self.line_start,
            seq: self.count,
        };
        let begin = match self.starts.front() {
            Some(&offset) => Cursor {
                offset,
                seq: self.count - self.starts.len() as u64,
            },
            None => end,
        };
        (begin, end)
    }
}

/// Tuning of a tail task.
#[derive(Debug, Clone, Copy)]
pub struct TailParams {
    /// Send a batch once it reaches this size.
    pub max_batch_bytes: usize,
    /// Longest line kept whole.
    pub max_line_bytes: usize,
    /// Poll interval while following an idle file.
    pub follow_poll: Duration,
}

/// Where batches go.
pub trait BatchSink {
    /// Sends one encoded batch; an error means the receiver is gone.
    fn send(&mut self, batch: Bytes) -> impl Future<Output = Result<(), SinkClosed>> + Send;
}

/// The receiver of a demand went away.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("receiver closed")]
pub struct SinkClosed;

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
}

/// The epoch of a file: its identity on this node, kept below 2^53 so that JavaScript clients
/// read it exactly from JSON.
pub fn epoch_of(meta: &std::fs::Metadata) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in [meta.dev(), meta.ino()] {
        for b in v.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h & ((1 << 53) - 1)
}

/// Serves `spec` for the file at `path`, stamping `stream_ref` into every batch.
pub async fn serve<S: BatchSink>(
    path: &Path,
    spec: &Demand,
    stream_ref: u64,
    params: TailParams,
    sink: &mut S,
    metrics: &AgentMetrics,
) -> Result<(), TailError> {
    let io_err = |source| TailError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let epoch = epoch_of(&file.metadata().await.map_err(io_err)?);
    let same_epoch = |p: &Option<SeqPos>| p.filter(|p| p.epoch == epoch);
    let until = same_epoch(&spec.until).map(|p| p.seq);
    let resume = same_epoch(&spec.since_seq).map(|p| p.seq);

    // Locate the first line to send with one forward scan.
    let tail = spec.tail.unwrap_or(0);
    let stop = match (resume, until) {
        (Some(r), _) => Some(r),
        (None, u) => u,
    };
    let mut scanner = LineScanner::new(if resume.is_some() { 0 } else { tail }, stop);
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(io_err)?;
        if n == 0 || !scanner.feed(&buf[..n]) {
            break;
        }
    }
    let (begin, end) = scanner.finish();
    let start = if resume.is_some() { end } else { begin };
    file.seek(SeekFrom::Start(start.offset))
        .await
        .map_err(io_err)?;

    let flags = if spec.follow {
        0
    } else {
        logrelay_wire::batch::FLAG_BACKFILL
    };
    let mut reader = Reader {
        epoch,
        stream_ref,
        flags,
        params,
        seq: start.seq,
        until,
        since_ns: spec.since_ns,
        contains: spec.contains.as_deref().map(str::as_bytes),
        pending: Vec::new(),
        partial: Vec::new(),
        partial_ts: 0,
        partial_stderr: false,
        batch: None,
    };
    loop {
        let n = file.read(&mut buf).await.map_err(io_err)?;
        if n == 0 {
            reader.flush(sink, metrics).await?;
            if !spec.follow || reader.finished() {
                return Ok(());
            }
            tokio::time::sleep(params.follow_poll).await;
            continue;
        }
        reader.feed(&buf[..n], sink, metrics).await?;
        if reader.finished() {
            reader.flush(sink, metrics).await?;
            return Ok(());
        }
    }
}

/// Turns file bytes into batches.
struct Reader<'a> {
    epoch: u64,
    stream_ref: u64,
    flags: u8,
    params: TailParams,
    seq: u64,
    until: Option<u64>,
    since_ns: Option<i64>,
    contains: Option<&'a [u8]>,
    /// Bytes of an incomplete record.
    pending: Vec<u8>,
    /// Message of a logical line whose `P` records have been read.
    partial: Vec<u8>,
    partial_ts: i64,
    partial_stderr: bool,
    batch: Option<BatchBuilder>,
}

impl Reader<'_> {
    fn finished(&self) -> bool {
        self.until.is_some_and(|u| self.seq >= u)
    }

    async fn feed<S: BatchSink>(
        &mut self,
        mut chunk: &[u8],
        sink: &mut S,
        metrics: &AgentMetrics,
    ) -> Result<(), SinkClosed> {
        while let Some(i) = memchr::memchr(b'\n', chunk) {
            if self.finished() {
                return Ok(());
            }
            let record = if self.pending.is_empty() {
                &chunk[..=i]
            } else {
                self.pending.extend_from_slice(&chunk[..=i]);
                &self.pending[..]
            };
            let line = match cri::parse(record) {
                Ok(r) if r.partial => {
                    if self.partial.is_empty() {
                        self.partial_ts = r.timestamp_ns;
                        self.partial_stderr = r.stderr;
                    }
                    let room = self
                        .params
                        .max_line_bytes
                        .saturating_sub(self.partial.len());
                    self.partial
                        .extend_from_slice(&r.message[..r.message.len().min(room)]);
                    None
                }
                Ok(r) => Some((r.timestamp_ns, r.stderr, r.message.to_vec())),
                Err(_) => {
                    metrics.parse_errors.inc();
                    Some((0, false, record.to_vec()))
                }
            };
            chunk = &chunk[i + 1..];
            self.pending.clear();
            if let Some((ts, stderr, message)) = line {
                let (ts, stderr, message) = if self.partial.is_empty() {
                    (ts, stderr, message)
                } else {
                    let mut whole = std::mem::take(&mut self.partial);
                    whole.extend_from_slice(&message);
                    (self.partial_ts, self.partial_stderr, whole)
                };
                self.push(ts, stderr, &message, sink, metrics).await?;
            }
        }
        if self.pending.len() + chunk.len() <= self.params.max_line_bytes + RECORD_HEAD_BYTES {
            self.pending.extend_from_slice(chunk);
        }
        Ok(())
    }

    async fn push<S: BatchSink>(
        &mut self,
        ts: i64,
        stderr: bool,
        message: &[u8],
        sink: &mut S,
        metrics: &AgentMetrics,
    ) -> Result<(), SinkClosed> {
        metrics.lines_read.inc();
        let seq = self.seq;
        self.seq += 1;
        let wanted = self.since_ns.is_none_or(|s| ts >= s)
            && self
                .contains
                .is_none_or(|c| memchr::memmem::find(message, c).is_some());
        if !wanted {
            // Batches hold consecutive lines only: a skipped line ends the batch.
            return self.flush(sink, metrics).await;
        }
        let mut flags = if stderr { LineFlags::STDERR } else { 0 };
        let message = if message.len() > self.params.max_line_bytes {
            flags |= LineFlags::TRUNCATED;
            &message[..self.params.max_line_bytes]
        } else {
            message
        };
        let batch = self.batch.get_or_insert_with(|| {
            BatchBuilder::new(self.stream_ref, self.epoch, seq, self.flags, READ_BYTES)
        });
        batch.push(ts, LineFlags(flags), message);
        if batch.encoded_len() >= self.params.max_batch_bytes {
            self.flush(sink, metrics).await?;
        }
        Ok(())
    }

    async fn flush<S: BatchSink>(
        &mut self,
        sink: &mut S,
        metrics: &AgentMetrics,
    ) -> Result<(), SinkClosed> {
        if let Some(batch) = self.batch.take() {
            let lines = batch.len();
            let bytes = batch.finish();
            let len = bytes.len();
            sink.send(bytes).await?;
            metrics.lines_sent.inc_by(u64::from(lines));
            metrics.bytes_sent.inc_by(len as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("2024-01-01T00:00:00Z stdout {l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn scanner_finds_the_last_lines_across_any_chunking() {
        let data = cri(&["F a", "P b1", "F b2", "F c", "F d"]);
        for chunk in 1..data.len() {
            let mut s = LineScanner::new(2, None);
            for c in data.chunks(chunk) {
                s.feed(c);
            }
            let (begin, end) = s.finish();
            assert_eq!(begin.seq, 2, "chunk {chunk}");
            assert_eq!(&data[begin.offset as usize..][..30], &cri(&["F c"])[..30]);
            assert_eq!(
                end,
                Cursor {
                    offset: data.len() as u64,
                    seq: 4
                }
            );
        }
    }

    #[test]
    fn scanner_stops_at_the_join_point() {
        let data = cri(&["F a", "F b", "F c", "F d"]);
        let mut s = LineScanner::new(10, Some(2));
        assert!(!s.feed(&data));
        let (begin, end) = s.finish();
        assert_eq!((begin.seq, begin.offset), (0, 0));
        assert_eq!(end.seq, 2);
    }

    #[test]
    fn an_unfinished_record_is_not_a_line() {
        let mut s = LineScanner::new(5, None);
        s.feed(b"2024-01-01T00:00:00Z stdout F whole\n2024-01-01T00:00:00Z stdout F half");
        assert_eq!(s.finish().1.seq, 1);
    }

    struct VecSink(Vec<Bytes>);
    impl BatchSink for VecSink {
        async fn send(&mut self, batch: Bytes) -> Result<(), SinkClosed> {
            self.0.push(batch);
            Ok(())
        }
    }

    #[tokio::test]
    async fn backfill_of_a_real_file_respects_tail_until_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let lines: Vec<String> = (0..100).map(|i| format!("F line {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        std::fs::write(&path, cri(&refs)).unwrap();
        let epoch = epoch_of(&std::fs::metadata(&path).unwrap());
        let params = TailParams {
            max_batch_bytes: 200,
            max_line_bytes: 1024,
            follow_poll: Duration::from_millis(10),
        };
        let metrics = AgentMetrics::new();
        let spec = Demand {
            tail: Some(10),
            until: Some(SeqPos { epoch, seq: 95 }),
            ..Demand::default()
        };
        let mut sink = VecSink(Vec::new());
        serve(&path, &spec, 7, params, &mut sink, &metrics)
            .await
            .unwrap();
        let got: Vec<(u64, Vec<u8>)> = sink
            .0
            .iter()
            .flat_map(|b| {
                let (_, lines) = logrelay_wire::batch::lines(b).unwrap();
                lines
                    .into_iter()
                    .map(|l| (l.seq, l.message.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<(u64, Vec<u8>)> = (85..95)
            .map(|i| (i, format!("line {i}\n").into_bytes()))
            .collect();
        assert_eq!(got, want);

        let spec = Demand {
            tail: Some(100),
            contains: Some("line 5".into()),
            ..Demand::default()
        };
        let mut sink = VecSink(Vec::new());
        serve(&path, &spec, 7, params, &mut sink, &metrics)
            .await
            .unwrap();
        let seqs: Vec<u64> = sink
            .0
            .iter()
            .flat_map(|b| {
                logrelay_wire::batch::lines(b)
                    .unwrap()
                    .1
                    .into_iter()
                    .map(|l| l.seq)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(seqs, vec![5, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59]);
    }
}
