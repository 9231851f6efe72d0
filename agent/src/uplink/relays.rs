//! Which relay to dial (pure): the agent takes several relay addresses (`--relay-addr`
//! repeated, or a name resolving to several) and moves to another one when its relay dies or
//! drains. What it sends is unaffected by the move: its followers keep their epochs and
//! numbering, its queues keep what the relay has not acknowledged, and the new relay's
//! demands resume them with `since_seq`.

use std::net::SocketAddr;

/// How the previous connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The relay asked the agent to move (it drains: QUIC close code 10).
    Moved,
    /// The connection was lost, refused or closed.
    Lost,
}

/// The candidates of one attempt: every address every `--relay-addr` resolved to, without
/// repeats, in a stable order (DNS may shuffle its answers between two resolutions).
pub fn candidates(resolved: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = resolved.into_iter().collect();
    all.sort();
    all.dedup();
    all
}

/// The relay to dial: the first attempt starts at `seed` (random, so that agents spread over
/// the relays); after a connection or attempt on `last`, the next candidate after it, so a
/// dead or draining relay is not dialled again while others remain. `None` without candidates.
pub fn pick(
    candidates: &[SocketAddr],
    last: Option<SocketAddr>,
    seed: usize,
) -> Option<SocketAddr> {
    if candidates.is_empty() {
        return None;
    }
    let at = match last.and_then(|l| candidates.iter().position(|c| *c == l)) {
        Some(i) => i + 1,
        // First attempt, or the last relay is no longer among the candidates.
        None => seed,
    };
    Some(candidates[at % candidates.len()])
}

/// Whether to wait before the next attempt: not after a move (the relay asked; another one is
/// ready), otherwise the usual backoff.
pub fn backs_off(ended: Ended) -> bool {
    ended != Ended::Moved
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_dead_relay_is_left_for_the_next_one() {
        let c = candidates([a(3), a(1), a(2), a(1)]);
        assert_eq!(c, [a(1), a(2), a(3)]);
        assert_eq!(pick(&c, None, 4), Some(a(2)));
        assert_eq!(pick(&c, Some(a(2)), 0), Some(a(3)));
        assert_eq!(pick(&c, Some(a(3)), 0), Some(a(1)));
        // The relay it was on is gone from DNS: start over from the seed.
        assert_eq!(pick(&c, Some(a(9)), 1), Some(a(2)));
        assert_eq!(pick(&[a(1)], Some(a(1)), 7), Some(a(1)));
        assert_eq!(pick(&[], None, 0), None);
        assert!(!backs_off(Ended::Moved) && backs_off(Ended::Lost));
    }

    proptest! {
        /// Moving on from failures, every candidate is tried within one round.
        #[test]
        fn every_relay_is_tried_within_one_round(n in 1u16..8, seed in 0usize..100) {
            let c = candidates((0..n).map(a));
            let mut last = None;
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                let next = pick(&c, last, seed).unwrap();
                seen.insert(next);
                last = Some(next);
            }
            prop_assert_eq!(seen.len(), usize::from(n));
        }
    }
}
