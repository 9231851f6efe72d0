//! One byte budget for everything queued toward the relay.
//!
//! Each followed stream reads into its own [`Queue`] of encoded batches; a demand's data stream
//! drains it. Every queue draws on one [`Budget`]: when a push takes the total over it, the
//! *oldest* queued batch of the whole agent is dropped (full policy: drop oldest), and the queue
//! it came from remembers the loss as one contiguous [`Gap`] (lines, bytes, sequence range) that
//! its reader gets, in band, before the next batch. Following never waits for the relay: while
//! it is slow or unreachable, reading goes on into the budget.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

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

    /// Drops oldest batches until the budget holds. The caller holds no queue lock; queue locks
    /// are taken one at a time under the list lock, so evictions never deadlock.
    fn enforce(&self) {
        if self.used() <= self.capacity {
            return;
        }
        let queues = self.queues.lock().expect("budget lock");
        while self.used() > self.capacity {
            let oldest = queues
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|q| q.head_tick().map(|t| (t, q)))
                .min_by_key(|(t, _)| *t);
            let Some((_, q)) = oldest else { break };
            if let Some((lines, bytes)) = q.drop_oldest() {
                let mut d = self.dropped.lock().expect("budget lock");
                d.0 += lines;
                d.1 += bytes;
            }
        }
    }
}

impl Queue {
    /// Queues a batch of lines `[first_seq, end_seq)`; may drop the oldest batches of any queue.
    pub fn push(&self, batch: Bytes, first_seq: u64, end_seq: u64, lines: u32) {
        let len = batch.len();
        {
            let mut inner = self.inner.lock().expect("queue lock");
            inner.bytes += len;
            inner.items.push_back(Item::Batch(Queued {
                batch,
                first_seq,
                end_seq,
                lines,
                tick: self.budget.tick.fetch_add(1, Ordering::Relaxed),
            }));
        }
        self.budget.used.fetch_add(len, Ordering::Relaxed);
        self.budget.enforce();
        self.ready.notify_one();
    }

    /// Records, in order, lines lost before they could be queued (rotated away unread).
    pub fn push_gap(&self, gap: Gap) {
        let mut inner = self.inner.lock().expect("queue lock");
        match inner.items.back_mut() {
            Some(Item::Gap(g)) => *g = merge(*g, gap),
            _ => inner.items.push_back(Item::Gap(gap)),
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Takes the next item, if any.
    pub fn pop(&self) -> Option<Item> {
        let mut inner = self.inner.lock().expect("queue lock");
        let item = inner.items.pop_front()?;
        if let Item::Batch(q) = &item {
            inner.bytes -= q.batch.len();
            drop(inner);
            self.budget.used.fetch_sub(q.batch.len(), Ordering::Relaxed);
        }
        Some(item)
    }

    /// Waits for the next item.
    pub async fn next(&self) -> Item {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.pop() {
                return item;
            }
            notified.await;
        }
    }

    /// Drops every queued item ending at or before `seq` (the reader has them already) and
    /// narrows a gap that straddles it to start at `seq`.
    pub fn skip_to(&self, seq: u64) {
        let mut inner = self.inner.lock().expect("queue lock");
        let mut freed = 0;
        while let Some(front) = inner.items.front_mut() {
            match front {
                Item::Batch(q) if q.end_seq <= seq => freed += q.batch.len(),
                Item::Gap(g) if g.end_seq <= seq => {}
                Item::Gap(g) => {
                    g.first_seq = g.first_seq.max(seq);
                    break;
                }
                Item::Batch(_) => break,
            }
            inner.items.pop_front();
        }
        inner.bytes -= freed;
        drop(inner);
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
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

    /// Drops the oldest batch; it and any gap before it become one gap at the front.
    fn drop_oldest(&self) -> Option<(u64, u64)> {
        let mut inner = self.inner.lock().expect("queue lock");
        let mut gap: Option<Gap> = None;
        let dropped = loop {
            match inner.items.pop_front() {
                None => break None,
                Some(Item::Gap(g)) => gap = Some(gap.map_or(g, |a| merge(a, g))),
                Some(Item::Batch(q)) => {
                    let len = q.batch.len();
                    inner.bytes -= len;
                    let g = Gap {
                        first_seq: q.first_seq,
                        end_seq: q.end_seq,
                        lines: u64::from(q.lines),
                        bytes: len as u64,
                    };
                    gap = Some(gap.map_or(g, |a| merge(a, g)));
                    break Some((u64::from(q.lines), len as u64));
                }
            }
        };
        // A gap right after merges too, so the reader sees one range.
        if let Some(mut g) = gap {
            if let Some(Item::Gap(next)) = inner.items.front() {
                g = merge(g, *next);
                inner.items.pop_front();
            }
            inner.items.push_front(Item::Gap(g));
        }
        drop(inner);
        if let Some((_, len)) = dropped {
            self.budget.used.fetch_sub(len as usize, Ordering::Relaxed);
        }
        dropped
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
                    bytes: 40
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
                prop_assert!(budget.used() <= cap.max(len));
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
