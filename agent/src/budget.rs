//! One byte budget for everything queued toward the relay.
//!
//! Each followed stream reads into its own [`Queue`] of encoded batches; a demand's data stream
//! drains it. Every queue draws on one [`Budget`]: a push that would take the total over it
//! first drops the *oldest* queued batches of the whole agent until it fits (full policy: drop
//! oldest), so the budget is never exceeded, even for a moment. The queue a batch was dropped
//! from remembers the loss as one contiguous [`Gap`] (lines, bytes, sequence range) that its
//! reader gets, in band, before the next batch. Following never waits for the relay: while it
//! is slow or unreachable, reading goes on into the budget.
//!
//! A batch sent is not forgotten at once when the relay acknowledges deliveries (`ack`): a
//! reader that *retains* ([`Queue::next_retained`]) leaves it in the queue, behind a mark,
//! until [`Queue::ack`] says every session was handed it. A lost connection thus costs
//! nothing: the next reader resumes ([`Queue::skip_to`]) from where the relay's sessions are,
//! re-sending what was in flight. Retained batches draw on the same budget and, being the
//! oldest, are the first dropped when it is full; that costs a line only if a resume then
//! reaches back into them, and the resumed reader is told exactly, as a gap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::sink::BatchTimes;

/// The agent-wide byte budget.
#[derive(Debug)]
pub struct Budget {
    capacity: usize,
    used: AtomicUsize,
    tick: AtomicU64,
    /// Every live queue; also serialises evictions.
    queues: Mutex<Vec<Weak<Queue>>>,
    /// Lines and bytes dropped so far.
    dropped: Mutex<(u64, u64)>,
}

/// One encoded batch waiting to be sent.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The encoded batch.
    pub batch: Bytes,
    /// Sequence number of its first line.
    pub first_seq: u64,
    /// One past its last line.
    pub end_seq: u64,
    /// Lines in it.
    pub lines: u32,
    /// When it was read and queued, for its trace ([`Queue::push_timed`]).
    pub times: BatchTimes,
    tick: u64,
}

/// Batches dropped from the front of a queue: the range `[first_seq, end_seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First sequence number missing.
    pub first_seq: u64,
    /// One past the last one missing.
    pub end_seq: u64,
    /// Lines dropped.
    pub lines: u64,
    /// Batch bytes dropped.
    pub bytes: u64,
    /// Whether `lines` is the exact count (false: some of the loss was never counted, such as
    /// bytes rotated away before they were read).
    pub counted: bool,
}

/// What a reader takes from a queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// Lines are missing here (dropped for the budget, or rotated away unread).
    Gap(Gap),
    /// The next batch.
    Batch(Queued),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// The first `sent` items were sent and are kept until acknowledged (retaining readers).
    sent: usize,
}

/// One stream's queue; see the module doc.
#[derive(Debug)]
pub struct Queue {
    budget: Arc<Budget>,
    inner: Mutex<Inner>,
    /// Woken on every push.
    pub ready: Notify,
}

impl Budget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
            queues: Mutex::new(Vec::new()),
            dropped: Mutex::new((0, 0)),
        })
    }

    /// Bytes queued now, over all queues.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Lines and bytes dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        *self.dropped.lock().expect("budget lock")
    }

    /// A new, empty queue drawing on this budget.
    pub fn queue(self: &Arc<Self>) -> Arc<Queue> {
        let q = Arc::new(Queue {
            budget: self.clone(),
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
        });
        let mut queues = self.queues.lock().expect("budget lock");
        queues.retain(|w| w.strong_count() > 0);
        queues.push(Arc::downgrade(&q));
        q
    }

    /// Makes room for `len` more bytes and takes them, under the list lock that every taking
    /// holds: the oldest batches of the whole agent are dropped until they fit (full policy:
    /// drop oldest). Returns false when they cannot fit even with nothing else queued (a batch
    /// larger than the budget): nothing is taken then. Queue locks are taken one at a time
    /// under the list lock (the caller holds none), so evictions never deadlock; and since
    /// bytes are only ever taken here, `used` never exceeds the capacity, whoever looks.
    fn admit(&self, len: usize, insert: impl FnOnce()) -> bool {
        let queues = self.queues.lock().expect("budget lock");
        while self.used().saturating_add(len) > self.capacity {
            let oldest = queues
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|q| q.head_tick().map(|t| (t, q)))
                .min_by_key(|(t, _)| *t);
            let Some((_, q)) = oldest else {
                return false;
            };
            // A kept batch (sent, not yet acknowledged) is lost only if a resume reaches back
            // into it: counted then ([`Queue::skip_to`]).
            if let Some((lines, bytes, false)) = q.drop_oldest() {
                self.count_dropped(lines, bytes);
            }
        }
        // Taken before the batch is queued: a reader that takes it at once gives back bytes
        // that were taken.
        self.used.fetch_add(len, Ordering::Relaxed);
        insert();
        drop(queues);
        true
    }

    fn count_dropped(&self, lines: u64, bytes: u64) {
        let mut d = self.dropped.lock().expect("budget lock");
        d.0 += lines;
        d.1 += bytes;
    }
}

impl Queue {
    /// Queues a batch of lines `[first_seq, end_seq)`; may drop the oldest batches of any queue
    /// to make room first. A batch larger than the whole budget is dropped at once, after
    /// everything older (told as a gap, like any drop).
    pub fn push(&self, batch: Bytes, first_seq: u64, end_seq: u64, lines: u32) {
        self.push_timed(batch, first_seq, end_seq, lines, BatchTimes::default());
    }

    /// [`Self::push`] of a batch whose read began `times.read` (its queueing time is taken
    /// here when that is known).
    pub fn push_timed(
        &self,
        batch: Bytes,
        first_seq: u64,
        end_seq: u64,
        lines: u32,
        mut times: BatchTimes,
    ) {
        if times.read.is_some() {
            times.queued = Some(std::time::Instant::now());
        }
        let len = batch.len();
        let mut batch = Some(batch);
        let admitted = self.budget.admit(len, || {
            let mut inner = self.inner.lock().expect("queue lock");
            inner.bytes += len;
            inner.items.push_back(Item::Batch(Queued {
                batch: batch.take().expect("inserted once"),
                first_seq,
                end_seq,
                lines,
                times,
                tick: self.budget.tick.fetch_add(1, Ordering::Relaxed),
            }));
        });
        if !admitted {
            self.budget.count_dropped(u64::from(lines), len as u64);
            self.push_gap(Gap {
                first_seq,
                end_seq,
                lines: u64::from(lines),
                bytes: len as u64,
                counted: true,
            });
            return;
        }
        self.ready.notify_one();
    }

    /// Records, in order, lines lost before they could be queued (rotated away unread).
    pub fn push_gap(&self, gap: Gap) {
        let mut inner = self.inner.lock().expect("queue lock");
        let unsent_back = inner.items.len() > inner.sent;
        match inner.items.back_mut() {
            Some(Item::Gap(g)) if unsent_back => *g = merge(*g, gap),
            _ => inner.items.push_back(Item::Gap(gap)),
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Takes the next item, if any, and forgets it (and anything kept before it).
    pub fn pop(&self) -> Option<Item> {
        let mut inner = self.inner.lock().expect("queue lock");
        let mut freed = 0;
        while inner.sent > 0 {
            inner.sent -= 1;
            if let Some(Item::Batch(q)) = inner.items.pop_front() {
                freed += q.batch.len();
            }
        }
        let item = inner.items.pop_front();
        if let Some(Item::Batch(q)) = &item {
            freed += q.batch.len();
        }
        inner.bytes -= freed;
        drop(inner);
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
        item
    }

    /// Takes the next item not yet sent, if any, and keeps it until [`Self::ack`] covers it.
    pub fn pop_retained(&self) -> Option<Item> {
        let mut inner = self.inner.lock().expect("queue lock");
        let next = inner.sent;
        let item = inner.items.get(next)?.clone();
        inner.sent += 1;
        Some(item)
    }

    /// Waits for the next item and forgets it.
    pub async fn next(&self) -> Item {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.pop() {
                return item;
            }
            notified.await;
        }
    }

    /// Waits for the next item not yet sent, and keeps it until acknowledged.
    pub async fn next_retained(&self) -> Item {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.pop_retained() {
                return item;
            }
            notified.await;
        }
    }

    /// Forgets what was sent before `seq`: the relay's sessions were all handed it.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.inner.lock().expect("queue lock");
        let mut freed = 0;
        while inner.sent > 0 {
            let end = match inner.items.front() {
                Some(Item::Batch(q)) => q.end_seq,
                Some(Item::Gap(g)) => g.end_seq,
                None => break,
            };
            if end > seq {
                break;
            }
            if let Some(Item::Batch(q)) = inner.items.pop_front() {
                freed += q.batch.len();
            }
            inner.sent -= 1;
        }
        inner.bytes -= freed;
        drop(inner);
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Whether every item was sent (some may be kept for an acknowledgement).
    pub fn all_sent(&self) -> bool {
        let inner = self.inner.lock().expect("queue lock");
        inner.items.len() == inner.sent
    }

    /// Drops every queued item ending at or before `seq` (the reader has them already) and
    /// narrows a gap that straddles it to start at `seq`. Whatever was sent and kept is to be
    /// sent again from there (a resume): a kept batch the budget dropped is now a loss, and
    /// counted as one.
    pub fn skip_to(&self, seq: u64) {
        let mut inner = self.inner.lock().expect("queue lock");
        let mut freed = 0;
        let rewound = std::mem::take(&mut inner.sent);
        let mut kept = rewound;
        while let Some(front) = inner.items.front_mut() {
            match front {
                Item::Batch(q) if q.end_seq <= seq => freed += q.batch.len(),
                Item::Gap(g) if g.end_seq <= seq => {}
                Item::Gap(g) => {
                    if g.first_seq < seq {
                        g.first_seq = seq;
                        g.lines = g.lines.min(g.end_seq - seq);
                    }
                    break;
                }
                Item::Batch(_) => break,
            }
            inner.items.pop_front();
            kept = kept.saturating_sub(1);
        }
        let lost = inner
            .items
            .iter()
            .take(kept)
            .fold((0, 0), |(l, b), i| match i {
                Item::Gap(g) => (l + g.lines, b + g.bytes),
                Item::Batch(_) => (l, b),
            });
        inner.bytes -= freed;
        drop(inner);
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
        if lost != (0, 0) {
            self.budget.count_dropped(lost.0, lost.1);
        }
    }

    /// Sequence number where the queue's content starts, if it holds anything.
    pub fn first_seq(&self) -> Option<u64> {
        let inner = self.inner.lock().expect("queue lock");
        inner.items.front().map(|i| match i {
            Item::Gap(g) => g.first_seq,
            Item::Batch(q) => q.first_seq,
        })
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("queue lock").bytes
    }

    fn head_tick(&self) -> Option<u64> {
        let inner = self.inner.lock().expect("queue lock");
        inner.items.iter().find_map(|i| match i {
            Item::Batch(q) => Some(q.tick),
            Item::Gap(_) => None,
        })
    }

    /// Drops the oldest batch: it becomes a gap, merged with the gaps next to it on the same
    /// side of the sent mark. Returns its lines and bytes, and whether it had been sent.
    fn drop_oldest(&self) -> Option<(u64, u64, bool)> {
        let mut inner = self.inner.lock().expect("queue lock");
        let i = inner
            .items
            .iter()
            .position(|i| matches!(i, Item::Batch(_)))?;
        let sent = i < inner.sent;
        // The gaps before it on its side of the mark, and one right after it.
        let lo = if sent { 0 } else { inner.sent };
        let hi = if sent { inner.sent } else { inner.items.len() };
        let mut hi_merge = i + 1;
        if hi_merge < hi && matches!(inner.items[hi_merge], Item::Gap(_)) {
            hi_merge += 1;
        }
        let mut gap: Option<Gap> = None;
        let mut dropped = (0, 0);
        for item in inner.items.drain(lo..hi_merge) {
            let g = match item {
                Item::Gap(g) => g,
                Item::Batch(q) => {
                    dropped = (u64::from(q.lines), q.batch.len() as u64);
                    Gap {
                        first_seq: q.first_seq,
                        end_seq: q.end_seq,
                        lines: u64::from(q.lines),
                        bytes: q.batch.len() as u64,
                        counted: true,
                    }
                }
            };
            gap = Some(gap.map_or(g, |a| merge(a, g)));
        }
        let gap = gap.expect("the batch at least");
        inner.items.insert(lo, Item::Gap(gap));
        if sent {
            inner.sent -= hi_merge - lo - 1;
        }
        inner.bytes -= dropped.1 as usize;
        drop(inner);
        self.budget
            .used
            .fetch_sub(dropped.1 as usize, Ordering::Relaxed);
        Some((dropped.0, dropped.1, sent))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.get_mut() {
            self.budget.used.fetch_sub(inner.bytes, Ordering::Relaxed);
            inner.bytes = 0;
        }
    }
}

/// Two adjacent gaps as one: the earlier start, the later end, counts added.
fn merge(a: Gap, b: Gap) -> Gap {
    Gap {
        first_seq: a.first_seq.min(b.first_seq),
        end_seq: a.end_seq.max(b.end_seq),
        lines: a.lines + b.lines,
        bytes: a.bytes + b.bytes,
        counted: a.counted && b.counted,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn batch(len: usize) -> Bytes {
        Bytes::from(vec![0u8; len])
    }

    #[test]
    fn the_oldest_batch_of_any_queue_goes_first_and_becomes_a_gap() {
        let budget = Budget::new(100);
        let a = budget.queue();
        let b = budget.queue();
        a.push(batch(40), 0, 4, 4);
        b.push(batch(40), 100, 110, 10);
        a.push(batch(40), 4, 8, 4); // over by 20: a's first batch (the oldest) goes
        assert_eq!(budget.used(), 80);
        assert_eq!(budget.dropped(), (4, 40));
        match a.pop() {
            Some(Item::Gap(g)) => assert_eq!(
                g,
                Gap {
                    first_seq: 0,
                    end_seq: 4,
                    lines: 4,
                    bytes: 40,
                    counted: true,
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.pop(), Some(Item::Batch(q)) if q.first_seq == 4));
        b.push(batch(70), 110, 120, 10); // b's oldest goes, then a has nothing left
        assert!(matches!(b.pop(), Some(Item::Gap(g)) if g.first_seq == 100 && g.end_seq == 110));
        assert!(matches!(b.pop(), Some(Item::Batch(q)) if q.first_seq == 110));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn skip_to_drops_what_the_reader_has_and_narrows_a_gap() {
        let budget = Budget::new(1000);
        let q = budget.queue();
        q.push_gap(Gap {
            first_seq: 0,
            end_seq: 10,
            lines: 10,
            bytes: 0,
            counted: true,
        });
        q.push(batch(10), 10, 20, 10);
        q.push(batch(10), 20, 30, 10);
        q.skip_to(5);
        assert_eq!(q.first_seq(), Some(5));
        q.skip_to(20);
        assert_eq!(q.first_seq(), Some(20));
        assert_eq!(budget.used(), 10);
        drop(q);
        assert_eq!(budget.used(), 0);
    }

    /// Followers push from their own tasks while the watchdog reads `used` for the gauge: no
    /// observer ever sees more than the capacity, however pushes, pops and evictions interleave.
    #[test]
    fn the_budget_is_never_exceeded_as_seen_from_another_thread() {
        const CAP: usize = 1000;
        let budget = Budget::new(CAP);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (budget, done) = (budget.clone(), done.clone());
            std::thread::spawn(move || {
                let mut most = 0;
                while !done.load(Ordering::Relaxed) {
                    most = most.max(budget.used());
                }
                most
            })
        };
        let pushers: Vec<_> = (0..3)
            .map(|t| {
                let q = budget.queue();
                std::thread::spawn(move || {
                    let mut seq = 0;
                    for i in 0..20_000u64 {
                        q.push(batch(100 + (i as usize * 7 + t) % 300), seq, seq + 3, 3);
                        seq += 3;
                        if i % 5 == 0 {
                            q.pop();
                        }
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let most = watcher.join().unwrap();
        assert!(most <= CAP, "used {most} bytes of a {CAP}-byte budget");
        assert!(budget.dropped().0 > 0, "the budget was full");
    }

    /// The `(first_seq, end_seq, is_gap)` of every item a reader takes from now on.
    fn drain(q: &Queue) -> Vec<(u64, u64, bool)> {
        std::iter::from_fn(|| q.pop())
            .map(|i| match i {
                Item::Gap(g) => (g.first_seq, g.end_seq, true),
                Item::Batch(b) => (b.first_seq, b.end_seq, false),
            })
            .collect()
    }

    #[test]
    fn what_was_sent_is_kept_until_acknowledged_and_sent_again_after_a_resume() {
        let budget = Budget::new(1000);
        let q = budget.queue();
        for i in 0..4 {
            q.push(batch(10), i * 10, i * 10 + 10, 10);
        }
        // Three go out on a connection; the relay acknowledges the first.
        for want in [0, 10, 20] {
            assert!(matches!(q.pop_retained(), Some(Item::Batch(b)) if b.first_seq == want));
        }
        assert!(!q.all_sent());
        q.ack(10);
        assert_eq!(budget.used(), 30, "the unacknowledged stay in the budget");
        assert_eq!(q.first_seq(), Some(10));
        // The connection is lost; the sessions had line 15: the resume sends from there.
        q.skip_to(15);
        assert_eq!(budget.used(), 30);
        assert!(matches!(q.pop_retained(), Some(Item::Batch(b)) if b.first_seq == 10));
        q.skip_to(20);
        assert_eq!(
            drain(&q),
            [(20, 30, false), (30, 40, false)],
            "from the batch holding the resume point on"
        );
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.dropped(), (0, 0));
    }

    #[test]
    fn a_kept_batch_the_budget_drops_is_a_loss_only_when_a_resume_reaches_it() {
        let budget = Budget::new(30);
        let q = budget.queue();
        q.push(batch(10), 0, 10, 10);
        q.push(batch(10), 10, 20, 10);
        assert!(q.pop_retained().is_some());
        assert!(q.pop_retained().is_some());
        // Two more while nothing is acknowledged: the oldest kept batch goes, not counted.
        q.push(batch(10), 20, 30, 10);
        q.push(batch(10), 30, 40, 10);
        assert_eq!(budget.used(), 30);
        assert_eq!(budget.dropped(), (0, 0), "the relay has it: no loss yet");
        assert!(matches!(q.pop_retained(), Some(Item::Batch(b)) if b.first_seq == 20));
        // A resume at line 5 reaches into it: the reader gets the exact gap, and it is counted.
        q.skip_to(5);
        assert_eq!(
            drain(&q),
            [
                (5, 10, true),
                (10, 20, false),
                (20, 30, false),
                (30, 40, false)
            ]
        );
        assert_eq!(budget.dropped(), (5, 10));
        // A resume past it costs nothing.
        let q = budget.queue();
        q.push(batch(20), 0, 10, 10);
        assert!(q.pop_retained().is_some());
        q.push(batch(20), 10, 20, 10);
        q.skip_to(10);
        assert_eq!(drain(&q), [(10, 20, false)]);
        assert_eq!(budget.dropped(), (5, 10));
    }

    proptest! {
        /// A reader that sends with retention, gets acknowledgements and loses its connection at
        /// random points always resumes without a hole: from the resume point on, it is handed
        /// batches and gaps that tile the range to the last line pushed.
        #[test]
        fn resumes_never_lose_or_repeat_a_line(
            ops in proptest::collection::vec((0u8..5, 1usize..40, 1u32..5), 1..150),
            cap in 40usize..300,
        ) {
            let budget = Budget::new(cap);
            let q = budget.queue();
            let mut next_seq = 0u64;
            // What the "relay" has been handed by the current connection, contiguous.
            let mut relay_end = 0u64;
            // What its sessions have been handed (acknowledged), at most `relay_end`.
            let mut sessions = 0u64;
            for (op, len, lines) in ops {
                match op {
                    0 | 1 => {
                        q.push(batch(len), next_seq, next_seq + u64::from(lines), lines);
                        next_seq += u64::from(lines);
                    }
                    2 => {
                        if let Some(item) = q.pop_retained() {
                            let (a, b) = match item {
                                Item::Gap(g) => (g.first_seq, g.end_seq),
                                Item::Batch(b) => (b.first_seq, b.end_seq),
                            };
                            // Contiguous, but for a batch straddling a resume point.
                            prop_assert!(a <= relay_end && (b > relay_end || a == b));
                            relay_end = relay_end.max(b);
                        }
                    }
                    3 => {
                        sessions = relay_end.min(sessions + u64::from(lines));
                        q.ack(sessions);
                    }
                    _ => {
                        // The connection is lost; the sessions resume where they are.
                        prop_assert!(q.first_seq().is_none_or(|f| f <= sessions));
                        q.skip_to(sessions);
                        relay_end = sessions;
                    }
                }
                prop_assert!(budget.used() <= cap.max(len) + 40);
            }
            q.skip_to(sessions);
            let mut at = sessions;
            for (i, (a, b, _)) in drain(&q).into_iter().enumerate() {
                // A batch holding the resume point is sent whole (the reader drops the lines
                // it has by sequence number).
                if i == 0 {
                    prop_assert!(a <= at && b > at);
                } else {
                    prop_assert_eq!(a, at);
                }
                at = b;
            }
            prop_assert_eq!(at, next_seq.max(sessions));
            prop_assert_eq!(budget.used(), 0);
        }
    }

    proptest! {
        /// Whatever the pushes, the budget holds after each one (beyond a single batch larger
        /// than it), and every line pushed is either popped or reported in a gap, in order.
        #[test]
        fn nothing_vanishes_and_the_budget_holds(
            ops in proptest::collection::vec((0usize..3, 1usize..60, 1u32..5), 1..200),
            cap in 50usize..300,
        ) {
            let budget = Budget::new(cap);
            let queues = [budget.queue(), budget.queue(), budget.queue()];
            let mut next_seq = [0u64; 3];
            let mut seen = [0u64; 3];
            for (q, len, lines) in ops {
                let first = next_seq[q];
                next_seq[q] += u64::from(lines);
                queues[q].push(batch(len), first, next_seq[q], lines);
                prop_assert!(budget.used() <= cap);
                // Pop a little from queue 0 now and then.
                if len % 3 == 0 {
                    while let Some(item) = queues[0].pop() {
                        let (a, b) = match item {
                            Item::Gap(g) => (g.first_seq, g.end_seq),
                            Item::Batch(b) => (b.first_seq, b.end_seq),
                        };
                        prop_assert_eq!(a, seen[0]);
                        seen[0] = b;
                    }
                }
            }
            for (i, q) in queues.iter().enumerate() {
                while let Some(item) = q.pop() {
                    let (a, b) = match item {
                        Item::Gap(g) => (g.first_seq, g.end_seq),
                        Item::Batch(b) => (b.first_seq, b.end_seq),
                    };
                    prop_assert_eq!(a, seen[i]);
                    seen[i] = b;
                }
                prop_assert_eq!(seen[i], next_seq[i]);
            }
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
