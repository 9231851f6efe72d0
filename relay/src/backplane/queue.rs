//! The queue toward NATS (pure): bounded in bytes, with a named policy when full.
//!
//! Policy **drop oldest data**: when a message does not fit, the oldest *data* messages
//! (batches) are dropped to make room; control messages (leases, replies, catalog,
//! heartbeats) are never dropped for data. If what is queued is all control and the new
//! message still does not fit, the new message is dropped. Every drop is counted (messages and
//! bytes). A dropped batch keeps its `pub_seq`, so its receivers see an exact hole
//! ([`super::holes`]): never a silent loss.

use std::collections::VecDeque;

use bytes::Bytes;

/// One message waiting for NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
    /// A batch (droppable first), or control.
    pub data: bool,
}

impl Outgoing {
    /// Bytes it is counted for: subject and payload.
    pub fn bytes(&self) -> usize {
        self.subject.len() + self.payload.len()
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// The message is queued.
    pub queued: bool,
    /// Messages dropped by this push (older data, or the new message itself).
    pub dropped_messages: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
}

/// Messages for NATS, at most `max_bytes` of them.
#[derive(Debug, Clone)]
pub struct OutQueue {
    max_bytes: usize,
    bytes: usize,
    items: VecDeque<Outgoing>,
}

impl OutQueue {
    /// An empty queue of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            items: VecDeque::new(),
        }
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues `msg`, dropping the oldest data if needed (see the module's policy).
    pub fn push(&mut self, msg: Outgoing) -> Pushed {
        let need = msg.bytes();
        let mut pushed = Pushed::default();
        if need > self.max_bytes {
            pushed.dropped_messages = 1;
            pushed.dropped_bytes = need as u64;
            return pushed;
        }
        while self.bytes + need > self.max_bytes {
            let Some(at) = self.items.iter().position(|m| m.data) else {
                break;
            };
            let old = self.items.remove(at).expect("found");
            self.bytes -= old.bytes();
            pushed.dropped_messages += 1;
            pushed.dropped_bytes += old.bytes() as u64;
        }
        if self.bytes + need > self.max_bytes {
            pushed.dropped_messages += 1;
            pushed.dropped_bytes += need as u64;
            return pushed;
        }
        self.bytes += need;
        self.items.push_back(msg);
        pushed.queued = true;
        pushed
    }

    /// The oldest message.
    pub fn pop(&mut self) -> Option<Outgoing> {
        let m = self.items.pop_front()?;
        self.bytes -= m.bytes();
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn msg(n: usize, data: bool) -> Outgoing {
        Outgoing {
            subject: "s".into(),
            payload: Bytes::from(vec![0u8; n]),
            data,
        }
    }

    #[test]
    fn data_makes_room_for_control_never_the_reverse() {
        let mut q = OutQueue::new(25);
        assert!(q.push(msg(9, true)).queued);
        assert!(q.push(msg(9, false)).queued);
        let p = q.push(msg(9, false));
        assert_eq!(
            (p.queued, p.dropped_messages, p.dropped_bytes),
            (true, 1, 10)
        );
        assert_eq!(q.bytes(), 20);
        // Only control left: the newcomer is dropped.
        let p = q.push(msg(19, true));
        assert_eq!((p.queued, p.dropped_messages), (false, 1));
        assert_eq!(q.pop().map(|m| m.data), Some(false));
        let p = q.push(msg(100, false));
        assert_eq!((p.queued, p.dropped_bytes), (false, 101));
    }

    proptest! {
        #[test]
        fn bounded_and_every_byte_accounted(
            pushes in proptest::collection::vec((1usize..50, any::<bool>(), any::<bool>()), 1..200),
        ) {
            let mut q = OutQueue::new(200);
            let (mut pushed, mut dropped, mut popped) = (0u64, 0u64, 0u64);
            for (n, data, pop) in pushes {
                let m = msg(n, data);
                pushed += m.bytes() as u64;
                let p = q.push(m);
                dropped += p.dropped_bytes;
                prop_assert!(q.bytes() <= 200);
                if pop {
                    popped += q.pop().map_or(0, |m| m.bytes() as u64);
                }
                prop_assert_eq!(pushed, dropped + popped + q.bytes() as u64);
            }
        }
    }
}
