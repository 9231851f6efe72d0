//! Aggregation of the audit events an attacker can repeat at will — refusals and limit hits —
//! so that a flood of them cannot flood the audit trail (pure: times are parameters).
//!
//! Events are grouped by a key (who, what, why). The first event of a key is written at once.
//! Further events of that key within `interval` of the window's start are counted, not written;
//! when the window ends, one line carries their `count`, and a new window starts. A key whose
//! window ended with nothing counted is forgotten, so its next event is written at once again.
//! Each key thus costs at most one line per `interval`, plus its first.
//!
//! The table holds at most `max_keys` keys. An event of a new key that finds it full goes to one
//! shared *others* bucket: counted, and reported as one line per `interval` with the count.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Limits of an [`Aggregator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Length of a window: at most one line per key per window, after its first.
    pub interval: Duration,
    /// Keys tracked at once; beyond, events go to the others bucket.
    pub max_keys: usize,
}

/// What to do with an observed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Write it now (its key's first in a while).
    Write,
    /// Counted under its key; a later summary line carries the count.
    Counted,
    /// The table was full: counted in the others bucket.
    Overflowed,
}

/// A summary line due: `count` events of one key (or of the others bucket) since `sample` was
/// taken from the first of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<S> {
    /// What the caller stored for the first event counted (`None`: the others bucket).
    pub sample: Option<S>,
    /// Events counted and not written.
    pub count: u64,
}

#[derive(Debug)]
struct Entry<S> {
    window_start: Duration,
    count: u64,
    sample: Option<S>,
}

#[derive(Debug, Default)]
struct Others {
    window_start: Duration,
    count: u64,
}

/// The aggregation table. Memory: at most `max_keys` keys, each with one sample.
#[derive(Debug)]
pub struct Aggregator<K, S> {
    config: AggregateConfig,
    entries: HashMap<K, Entry<S>>,
    others: Others,
    counted: u64,
    overflowed: u64,
}

impl<K: Hash + Eq + Clone, S> Aggregator<K, S> {
    /// An empty table.
    pub fn new(config: AggregateConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            others: Others::default(),
            counted: 0,
            overflowed: 0,
        }
    }

    /// Its limits.
    pub fn config(&self) -> AggregateConfig {
        self.config
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    /// Events counted rather than written so far (others included).
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Of those, events that went to the others bucket.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// One event of `key` at time `now` (monotonic). `sample` is called for the first event
    /// counted in a window; the summary line is made from it.
    pub fn observe(&mut self, key: &K, now: Duration, sample: impl FnOnce() -> S) -> Seen {
        if let Some(e) = self.entries.get_mut(key) {
            if e.count == 0 && now >= e.window_start + self.config.interval {
                // A quiet window ended and was not swept yet: as good as forgotten.
                e.window_start = now;
                return Seen::Write;
            }
            if e.count == 0 {
                e.sample = Some(sample());
            }
            e.count += 1;
            self.counted += 1;
            return Seen::Counted;
        }
        if self.entries.len() >= self.config.max_keys {
            if self.others.count == 0 {
                self.others.window_start = now;
            }
            self.others.count += 1;
            self.counted += 1;
            self.overflowed += 1;
            return Seen::Overflowed;
        }
        self.entries.insert(
            key.clone(),
            Entry {
                window_start: now,
                count: 0,
                sample: None,
            },
        );
        Seen::Write
    }

    /// The summary lines due at `now`: one per key whose window ended with events counted (its
    /// next window starts now), and one for the others bucket. Keys whose window ended with
    /// nothing counted are forgotten.
    pub fn due(&mut self, now: Duration) -> Vec<Summary<S>> {
        let interval = self.config.interval;
        let mut out = Vec::new();
        self.entries.retain(|_, e| {
            if now < e.window_start + interval {
                return true;
            }
            if e.count == 0 {
                return false;
            }
            out.push(Summary {
                sample: e.sample.take(),
                count: std::mem::take(&mut e.count),
            });
            e.window_start = now;
            true
        });
        if self.others.count > 0 && now >= self.others.window_start + interval {
            out.push(Summary {
                sample: None,
                count: std::mem::take(&mut self.others.count),
            });
        }
        out
    }

    /// Every summary still held, whatever the windows (at shutdown).
    pub fn drain(&mut self) -> Vec<Summary<S>> {
        let mut out: Vec<_> = self
            .entries
            .drain()
            .filter(|(_, e)| e.count > 0)
            .map(|(_, e)| Summary {
                sample: e.sample,
                count: e.count,
            })
            .collect();
        if self.others.count > 0 {
            out.push(Summary {
                sample: None,
                count: std::mem::take(&mut self.others.count),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn agg(max_keys: usize) -> Aggregator<&'static str, u32> {
        Aggregator::new(AggregateConfig {
            interval: 10 * SEC,
            max_keys,
        })
    }

    #[test]
    fn the_first_is_written_then_one_count_per_window() {
        let mut a = agg(8);
        assert_eq!(a.observe(&"x", Duration::ZERO, || 1), Seen::Write);
        assert_eq!(a.observe(&"x", SEC, || 2), Seen::Counted);
        assert_eq!(a.observe(&"x", 2 * SEC, || 3), Seen::Counted);
        assert_eq!(a.observe(&"y", 2 * SEC, || 9), Seen::Write, "another key");
        assert!(a.due(9 * SEC).is_empty(), "the window is not over");
        assert_eq!(
            a.due(10 * SEC),
            vec![Summary {
                sample: Some(2),
                count: 2
            }],
            "the sample of the first event counted"
        );
        // A new window: counted again, summarised at its end.
        assert_eq!(a.observe(&"x", 11 * SEC, || 4), Seen::Counted);
        assert_eq!(a.due(11 * SEC), vec![], "y's window is quiet but not over");
        assert_eq!(a.keys(), 2);
        assert_eq!(
            a.due(20 * SEC),
            vec![Summary {
                sample: Some(4),
                count: 1
            }]
        );
        assert_eq!(a.keys(), 1, "y's quiet window ended: forgotten");
        // x's window from 20 s ends quiet at 30 s: forgotten, then written at once again.
        assert!(a.due(30 * SEC).is_empty());
        assert_eq!(a.keys(), 0);
        assert_eq!(a.observe(&"x", 31 * SEC, || 5), Seen::Write);
        assert_eq!(a.counted(), 3);
    }

    #[test]
    fn a_quiet_window_that_was_not_swept_yet_writes_at_once() {
        let mut a = agg(8);
        assert_eq!(a.observe(&"x", Duration::ZERO, || 1), Seen::Write);
        assert_eq!(a.observe(&"x", 15 * SEC, || 2), Seen::Write);
        assert_eq!(a.observe(&"x", 16 * SEC, || 3), Seen::Counted);
        assert!(a.due(24 * SEC).is_empty(), "the window began at 15 s");
        assert_eq!(a.due(25 * SEC).len(), 1);
    }

    #[test]
    fn a_full_table_sends_new_keys_to_the_others_bucket() {
        let mut a = agg(2);
        assert_eq!(a.observe(&"a", Duration::ZERO, || 0), Seen::Write);
        assert_eq!(a.observe(&"b", Duration::ZERO, || 0), Seen::Write);
        for _ in 0..5 {
            assert_eq!(a.observe(&"c", SEC, || 0), Seen::Overflowed);
        }
        assert_eq!(a.observe(&"d", 2 * SEC, || 0), Seen::Overflowed);
        assert_eq!((a.counted(), a.overflowed(), a.keys()), (6, 6, 2));
        assert!(a.due(10 * SEC).is_empty(), "others' window began at 1 s");
        assert_eq!(
            a.due(11 * SEC),
            vec![Summary {
                sample: None,
                count: 6
            }]
        );
        // a and b were forgotten at 10 s: room again.
        assert_eq!(a.observe(&"c", 12 * SEC, || 0), Seen::Write);
    }

    #[test]
    fn drain_returns_everything_counted() {
        let mut a = agg(1);
        a.observe(&"a", Duration::ZERO, || 0);
        a.observe(&"a", SEC, || 7);
        a.observe(&"b", SEC, || 0);
        let mut d = a.drain();
        d.sort_by_key(|s| s.sample);
        assert_eq!(
            d,
            vec![
                Summary {
                    sample: None,
                    count: 1
                },
                Summary {
                    sample: Some(7),
                    count: 1
                }
            ]
        );
        assert_eq!(a.keys(), 0);
    }

    proptest! {
        /// Every event is written or counted exactly once; per key, lines (written + summaries)
        /// are at most one per started window plus the first.
        #[test]
        fn nothing_is_lost_and_lines_are_bounded(
            events in proptest::collection::vec((0usize..6, 0u64..3_000), 1..400),
        ) {
            const KEYS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
            let mut a: Aggregator<&str, &str> = Aggregator::new(AggregateConfig {
                interval: 10 * SEC,
                max_keys: 4,
            });
            let mut now = Duration::ZERO;
            let mut written = 0u64;
            let mut summarised = 0u64;
            let mut lines: HashMap<&str, u64> = HashMap::new();
            for (k, step_ms) in &events {
                now += Duration::from_millis(*step_ms);
                for s in a.due(now) {
                    summarised += s.count;
                    *lines.entry(s.sample.unwrap_or("others")).or_default() += 1;
                }
                let key = KEYS[*k];
                if a.observe(&key, now, || key) == Seen::Write {
                    written += 1;
                    *lines.entry(key).or_default() += 1;
                }
            }
            for s in a.drain() {
                summarised += s.count;
                *lines.entry(s.sample.unwrap_or("others")).or_default() += 1;
            }
            prop_assert_eq!(written + summarised, events.len() as u64);
            prop_assert_eq!(summarised, a.counted());
            let windows = now.as_secs() / 10 + 2;
            for (key, n) in lines {
                prop_assert!(n <= 2 * windows, "{}: {} lines in {} windows", key, n, windows);
            }
        }
    }
}
