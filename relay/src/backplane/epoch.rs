//! Connection epochs (pure): which relay holds an agent when two briefly do.
//!
//! When an agent connects, the relay gives the connection an epoch greater than its clock
//! (Unix nanoseconds) and than any epoch it has seen announced for that agent, and announces
//! the agent with it. A later connection therefore carries a higher epoch even across relays
//! whose clocks disagree, as long as the new relay heard the old announcement; otherwise the
//! later clock wins. Wherever two relays announce one agent, the higher epoch wins: its
//! catalog entries are the ones shown, its batches the ones followed, its demand subject the
//! one the wants reach (the other relay has closed the agent's old connection by then).

/// The epoch for a new connection of an agent: above `now_ns` and above every epoch known
/// for it.
pub fn next(now_ns: u64, known: Option<u64>) -> u64 {
    match known {
        Some(k) if k >= now_ns => k + 1,
        _ => now_ns.max(1),
    }
}

/// Whether an announcement with `candidate` replaces one with `current`.
pub fn wins(candidate: u64, current: Option<u64>) -> bool {
    current.is_none_or(|c| candidate > c)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn each_connection_beats_every_earlier_one(
            clocks in proptest::collection::vec(0u64..1_000_000, 1..30),
            heard in proptest::collection::vec(any::<bool>(), 1..30),
        ) {
            // Connections one after another on relays with arbitrary clocks; each relay heard
            // the previous announcement (or not, then only its clock helps).
            let mut last: Option<u64> = None;
            for (now, h) in clocks.iter().zip(heard.iter().chain(std::iter::repeat(&true))) {
                let e = next(*now, if *h { last } else { None });
                if *h {
                    prop_assert!(wins(e, last));
                }
                prop_assert!(e >= 1);
                last = Some(last.map_or(e, |l| l.max(e)));
            }
        }
    }

    #[test]
    fn ties_do_not_win() {
        assert!(wins(5, None));
        assert!(wins(6, Some(5)));
        assert!(!wins(5, Some(5)));
        assert_eq!(next(10, Some(10)), 11);
        assert_eq!(next(10, Some(3)), 10);
    }
}
