//! What happens to each datagram: the pure part of the fault proxy. No sockets, no clock, no
//! tokio: time is a [`Duration`] since the proxy started, handed in by the caller, and every
//! random choice comes from a [`SplitMix64`] seeded by the caller, so one seed and one sequence
//! of arrivals always give the same fates.
//!
//! * [`Faults`]: what one direction does to its datagrams (loss, bursts, delay and jitter,
//!   reordering, duplication).
//! * [`Decider`]: applies them, plus blackholes, one datagram at a time ([`Decider::decide`]).
//! * [`DelayQueue`]: datagrams waiting for their due time, bounded in bytes (full: the newest
//!   is dropped, as a router's queue does).
//! * [`DirectionStats`]: every datagram counted by what became of it.

use std::collections::BinaryHeap;
use std::time::Duration;

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64): its output for a
/// seed never changes, so a seed in a report reproduces the same decisions.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (`p <= 0`: never; `p >= 1`: always).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `[0, max]`.
    pub fn up_to(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }

    /// Uniform in `[lo, hi]` (`hi < lo`: `lo`).
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + self.up_to(hi.saturating_sub(lo))
    }
}

/// Bursts of loss, as a two-state (Gilbert–Elliott) channel: in the good state a datagram is
/// lost with [`Faults::loss`]; each datagram, the channel enters the bad state with
/// `enter_ratio`, and leaves it with `leave_ratio`; in the bad state a datagram is lost with
/// `loss_in_burst_ratio`. The mean burst is `1 / leave_ratio` datagrams long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Chance per datagram of entering a burst (good → bad).
    pub enter_ratio: f64,
    /// Chance per datagram of leaving a burst (bad → good).
    pub leave_ratio: f64,
    /// Chance that a datagram is lost during a burst.
    pub loss_in_burst_ratio: f64,
}

/// What one direction of the proxy does to its datagrams. [`Faults::default`] does nothing:
/// every datagram is forwarded at once, in order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Chance that a datagram is dropped (0.01: 1 %).
    pub loss_ratio: f64,
    /// Bursts of loss on top of `loss_ratio`.
    pub burst: Option<Burst>,
    /// Every datagram waits this long.
    pub delay: Duration,
    /// Plus a uniform extra wait in `[0, jitter]`. Jitter keeps the order (a datagram never
    /// leaves before the one ahead of it, as behind a queue); `reorder_ratio` reorders.
    pub jitter: Duration,
    /// Chance that a datagram is held back by `reorder_by` more, so that those behind it
    /// overtake it.
    pub reorder_ratio: f64,
    /// How long a reordered datagram is held back.
    pub reorder_by: Duration,
    /// Chance that a datagram is sent twice (the copy after a further uniform wait in
    /// `[0, jitter + 1 ms]`).
    pub duplicate_ratio: f64,
}

impl Faults {
    /// Loss only, independent per datagram.
    pub fn loss(ratio: f64) -> Self {
        Self {
            loss_ratio: ratio,
            ..Self::default()
        }
    }

    /// Whether this does anything at all.
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Independent loss ([`Faults::loss_ratio`]).
    Loss,
    /// Lost in a burst ([`Burst`]).
    Burst,
    /// A blackhole was on ([`Decider::blackhole`]).
    Blackhole,
    /// The delay queue held its byte capacity ([`DelayQueue`]).
    QueueFull,
}

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Dropped(DropCause),
    /// Sent when `due` comes (a time since the proxy started), and once more at `copy_due`.
    Forward {
        /// When to send it.
        due: Duration,
        /// When to send a duplicate, if one is sent.
        copy_due: Option<Duration>,
        /// Whether it was held back to be overtaken.
        reordered: bool,
    },
}

/// Applies [`Faults`] and blackholes to one direction's datagrams, in arrival order.
#[derive(Debug, Clone)]
pub struct Decider {
    faults: Faults,
    rng: SplitMix64,
    in_burst: bool,
    /// `[from, until)` of the blackhole, if one is set.
    blackhole: Option<(Duration, Duration)>,
    /// Due time of the last datagram forwarded in order (jitter never overtakes it).
    last_due: Duration,
}

impl Decider {
    /// A decider with `faults`, its random choices seeded by `seed`.
    pub fn new(faults: Faults, seed: u64) -> Self {
        Self {
            faults,
            rng: SplitMix64::new(seed),
            in_burst: false,
            blackhole: None,
            last_due: Duration::ZERO,
        }
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Replaces the faults (the random sequence goes on; a burst in progress ends).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.in_burst = false;
    }

    /// Drops everything from `now` for `length` (a blackhole still on is extended, never cut
    /// short).
    pub fn blackhole(&mut self, now: Duration, length: Duration) {
        let until = now + length;
        self.blackhole = Some(match self.blackhole {
            Some((from, u)) if now < u => (from, u.max(until)),
            _ => (now, until),
        });
    }

    /// Ends a blackhole at once.
    pub fn clear_blackhole(&mut self) {
        self.blackhole = None;
    }

    /// Whether a blackhole is on at `now`.
    pub fn blackholed(&self, now: Duration) -> bool {
        self.blackhole
            .is_some_and(|(from, until)| from <= now && now < until)
    }

    /// The fate of a datagram arriving at `now`.
    pub fn decide(&mut self, now: Duration) -> Fate {
        if self.blackholed(now) {
            return Fate::Dropped(DropCause::Blackhole);
        }
        let f = self.faults;
        if let Some(b) = f.burst {
            // The channel moves first, then the datagram meets it.
            self.in_burst = if self.in_burst {
                !self.rng.chance(b.leave_ratio)
            } else {
                self.rng.chance(b.enter_ratio)
            };
            if self.in_burst && self.rng.chance(b.loss_in_burst_ratio) {
                return Fate::Dropped(DropCause::Burst);
            }
        }
        if self.rng.chance(f.loss_ratio) {
            return Fate::Dropped(DropCause::Loss);
        }
        let mut due = (now + f.delay + self.rng.up_to(f.jitter)).max(self.last_due);
        let reordered = self.rng.chance(f.reorder_ratio);
        if reordered {
            // Held back: those behind it overtake it, and they do not wait for it.
            due += f.reorder_by;
        } else {
            self.last_due = due;
        }
        let copy_due = self
            .rng
            .chance(f.duplicate_ratio)
            .then(|| due + self.rng.up_to(f.jitter + Duration::from_millis(1)));
        Fate::Forward {
            due,
            copy_due,
            reordered,
        }
    }
}

/// Datagrams waiting for their due time, at most `capacity_bytes` of them (payload bytes).
/// Full: the datagram that does not fit is refused (drop newest, a router's tail drop), and
/// the caller counts it as [`DropCause::QueueFull`]. Datagrams due at the same time leave in
/// the order they came.
#[derive(Debug)]
pub struct DelayQueue<T> {
    heap: BinaryHeap<Waiting<T>>,
    bytes: usize,
    capacity_bytes: usize,
    next_order: u64,
}

#[derive(Debug)]
struct Waiting<T> {
    due: Duration,
    order: u64,
    bytes: usize,
    item: T,
}

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl<T> Eq for Waiting<T> {}
impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Waiting<T> {
    // Reversed: the heap's top is the earliest due, then the first come.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

impl<T> DelayQueue<T> {
    /// An empty queue holding at most `capacity_bytes`.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            bytes: 0,
            capacity_bytes,
            next_order: 0,
        }
    }

    /// Queues `item` of `bytes` until `due`; gives it back when it does not fit.
    pub fn push(&mut self, due: Duration, bytes: usize, item: T) -> Result<(), T> {
        if self.bytes + bytes > self.capacity_bytes {
            return Err(item);
        }
        self.bytes += bytes;
        self.heap.push(Waiting {
            due,
            order: self.next_order,
            bytes,
            item,
        });
        self.next_order += 1;
        Ok(())
    }

    /// The earliest item due at or before `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<T> {
        if self.heap.peek()?.due > now {
            return None;
        }
        let w = self.heap.pop()?;
        self.bytes -= w.bytes;
        Some(w.item)
    }

    /// When the earliest item is due.
    pub fn next_due(&self) -> Option<Duration> {
        self.heap.peek().map(|w| w.due)
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// What became of one direction's datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that arrived.
    pub received: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Datagrams sent on (duplicates included).
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Dropped by independent loss.
    pub dropped_loss: u64,
    /// Dropped in a burst.
    pub dropped_burst: u64,
    /// Dropped by a blackhole (on arrival, or when due).
    pub dropped_blackhole: u64,
    /// Dropped because the delay queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because the socket refused them (the peer's port closed, a full buffer).
    pub dropped_send_error: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
}

impl DirectionStats {
    /// Counts a drop.
    pub fn drop_by(&mut self, cause: DropCause) {
        match cause {
            DropCause::Loss => self.dropped_loss += 1,
            DropCause::Burst => self.dropped_burst += 1,
            DropCause::Blackhole => self.dropped_blackhole += 1,
            DropCause::QueueFull => self.dropped_queue_full += 1,
        }
    }

    /// Every datagram dropped, whatever the cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_burst
            + self.dropped_blackhole
            + self.dropped_queue_full
            + self.dropped_send_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fates(faults: Faults, seed: u64, n: usize) -> Vec<Fate> {
        let mut d = Decider::new(faults, seed);
        (0..n).map(|i| d.decide(MS * i as u32)).collect()
    }

    #[test]
    fn no_faults_forwards_everything_at_once_in_order() {
        for (i, f) in fates(Faults::default(), 7, 1000).into_iter().enumerate() {
            assert_eq!(
                f,
                Fate::Forward {
                    due: MS * i as u32,
                    copy_due: None,
                    reordered: false
                }
            );
        }
    }

    #[test]
    fn one_seed_gives_one_sequence_of_fates() {
        let f = Faults {
            loss_ratio: 0.05,
            jitter: 10 * MS,
            reorder_ratio: 0.1,
            reorder_by: 5 * MS,
            duplicate_ratio: 0.05,
            ..Faults::default()
        };
        assert_eq!(fates(f, 42, 5000), fates(f, 42, 5000));
        assert_ne!(fates(f, 42, 5000), fates(f, 43, 5000));
        // The generator's output is fixed for a seed (reports quote seeds).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn loss_drops_about_the_ratio_asked() {
        for ratio in [0.01, 0.05] {
            let n = 100_000;
            let lost = fates(Faults::loss(ratio), 1, n)
                .iter()
                .filter(|f| **f == Fate::Dropped(DropCause::Loss))
                .count() as f64;
            let expected = ratio * n as f64;
            // Five standard deviations of a binomial count.
            let sd = (n as f64 * ratio * (1.0 - ratio)).sqrt();
            assert!(
                (lost - expected).abs() < 5.0 * sd,
                "{lost} lost of {n} at {ratio}"
            );
        }
    }

    #[test]
    fn bursts_lose_runs_of_datagrams() {
        let f = Faults {
            burst: Some(Burst {
                enter_ratio: 0.002,
                leave_ratio: 0.1,
                loss_in_burst_ratio: 1.0,
            }),
            ..Faults::default()
        };
        let lost: Vec<bool> = fates(f, 3, 200_000)
            .iter()
            .map(|f| matches!(f, Fate::Dropped(DropCause::Burst)))
            .collect();
        let total = lost.iter().filter(|l| **l).count();
        let runs = lost.windows(2).filter(|w| !w[0] && w[1]).count();
        assert!(runs > 100, "{runs} bursts");
        let mean_run = total as f64 / runs as f64;
        // Mean burst 1 / leave_ratio = 10 datagrams.
        assert!((7.0..14.0).contains(&mean_run), "mean burst {mean_run}");
    }

    #[test]
    fn delay_and_jitter_stay_within_their_bounds_and_keep_the_order() {
        let f = Faults {
            delay: 20 * MS,
            jitter: 10 * MS,
            ..Faults::default()
        };
        let mut d = Decider::new(f, 9);
        let mut last_due = Duration::ZERO;
        let mut waits = std::collections::BTreeSet::new();
        // Datagrams 100 µs apart (they queue up behind each other), then 20 ms apart.
        for i in 0..10_000u32 {
            let spacing = if i < 5_000 { 100 } else { 20_000 };
            let now = Duration::from_micros(u64::from(i) * spacing);
            let Fate::Forward { due, .. } = d.decide(now) else {
                panic!("nothing is lost");
            };
            assert!(due >= now + 20 * MS && due <= now + 30 * MS, "{due:?}");
            assert!(due >= last_due, "jitter never reorders");
            if i >= 5_000 {
                waits.insert((due - now).as_millis());
            }
            last_due = due;
        }
        assert!(waits.len() >= 8, "the wait varies: {waits:?}");
    }

    #[test]
    fn reordering_holds_datagrams_back_and_duplication_sends_copies() {
        let f = Faults {
            reorder_ratio: 0.1,
            reorder_by: 5 * MS,
            duplicate_ratio: 0.1,
            ..Faults::default()
        };
        let all = fates(f, 11, 10_000);
        let reordered = all
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Fate::Forward {
                        reordered: true,
                        ..
                    }
                )
            })
            .count();
        let copies = all
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Fate::Forward {
                        copy_due: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert!((800..1200).contains(&reordered), "{reordered}");
        assert!((800..1200).contains(&copies), "{copies}");
        for (i, f) in all.iter().enumerate() {
            let now = MS * i as u32;
            if let Fate::Forward {
                due,
                copy_due,
                reordered,
            } = *f
            {
                assert_eq!(due, if reordered { now + 5 * MS } else { now });
                if let Some(c) = copy_due {
                    assert!(c >= due && c <= due + MS);
                }
            }
        }
    }

    #[test]
    fn a_blackhole_drops_everything_for_its_length() {
        let mut d = Decider::new(Faults::default(), 1);
        d.blackhole(100 * MS, 50 * MS);
        assert!(matches!(d.decide(99 * MS), Fate::Forward { .. }));
        assert_eq!(d.decide(100 * MS), Fate::Dropped(DropCause::Blackhole));
        assert_eq!(d.decide(149 * MS), Fate::Dropped(DropCause::Blackhole));
        assert!(matches!(d.decide(150 * MS), Fate::Forward { .. }));
        // A shorter one does not cut a longer one short; clearing ends it.
        d.blackhole(200 * MS, 100 * MS);
        d.blackhole(210 * MS, 10 * MS);
        assert!(d.blackholed(250 * MS));
        d.clear_blackhole();
        assert!(!d.blackholed(250 * MS));
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_releases_in_due_order() {
        let mut q = DelayQueue::new(3000);
        assert!(q.push(30 * MS, 1000, "c").is_ok());
        assert!(q.push(10 * MS, 1000, "a").is_ok());
        assert!(q.push(10 * MS, 500, "b").is_ok());
        assert_eq!(q.push(5 * MS, 501, "full"), Err("full"));
        assert_eq!((q.bytes(), q.len()), (2500, 3));
        assert_eq!(q.next_due(), Some(10 * MS));
        assert_eq!(q.pop_due(9 * MS), None);
        assert_eq!(q.pop_due(10 * MS), Some("a"));
        assert_eq!(q.pop_due(10 * MS), Some("b"));
        assert_eq!(q.pop_due(29 * MS), None);
        assert!(q.push(20 * MS, 2000, "d").is_ok());
        assert_eq!(q.pop_due(40 * MS), Some("d"));
        assert_eq!(q.pop_due(40 * MS), Some("c"));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn stats_count_every_drop_cause() {
        let mut s = DirectionStats::default();
        for c in [
            DropCause::Loss,
            DropCause::Burst,
            DropCause::Blackhole,
            DropCause::QueueFull,
        ] {
            s.drop_by(c);
        }
        s.dropped_send_error += 1;
        assert_eq!(s.dropped(), 5);
    }
}
