//! The watchdog's decisions about followers (pure: the time is an argument).

use std::time::{Duration, Instant};

/// What the watchdog sees of one follower in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The follower task ended (it read its file to the end and was not drained, or failed).
    pub finished: bool,
    /// The file at the path is the follower's head file and holds more than it read.
    pub lagging: bool,
    /// When reading last made progress.
    pub progress_at: Instant,
}

/// The watchdog's verdict on a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Caught up (or ahead of the file): nothing to watch.
    Fine,
    /// Behind the file, and has made no progress since this time: watched, not yet stalled.
    Lagging(Instant),
    /// Stalled: re-open it.
    Stalled,
}

/// The verdict on a follower the watchdog saw `seen` at `now`, behind its file since
/// `lag_seen` (its previous [`Verdict::Lagging`]): it is stalled once its file was ahead of it
/// for `stall_after` with no progress meanwhile, or when its task ended.
pub fn stall(
    seen: Seen,
    lag_seen: Option<Instant>,
    now: Instant,
    stall_after: Duration,
) -> Verdict {
    if seen.finished {
        return Verdict::Stalled;
    }
    if !seen.lagging {
        return Verdict::Fine;
    }
    match lag_seen {
        Some(t) if seen.progress_at <= t => {
            if now.saturating_duration_since(t) >= stall_after {
                Verdict::Stalled
            } else {
                Verdict::Lagging(t)
            }
        }
        // First seen behind, or it read something since: watch from now.
        _ => Verdict::Lagging(now),
    }
}

/// Whether a follower detached at `detached_at`, while the agent is connected since `since`,
/// has gone unclaimed long enough to be stopped: `detach_linger` of being detached while
/// connected, and `resume_grace` since the connection began, for sessions to resubscribe.
pub fn unclaimed(
    detached_at: Instant,
    since: Instant,
    now: Instant,
    detach_linger: Duration,
    resume_grace: Duration,
) -> bool {
    now.saturating_duration_since(detached_at.max(since)) >= detach_linger
        && now.saturating_duration_since(since) >= resume_grace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_behind_its_file_with_no_progress_for_stall_after_is_stalled() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let after = Duration::from_millis(200);
        let seen = |lagging, progress_at| Seen {
            finished: false,
            lagging,
            progress_at,
        };
        // Caught up: nothing to watch, whatever was seen before.
        assert_eq!(
            stall(seen(false, at(0)), Some(at(0)), at(900), after),
            Verdict::Fine
        );
        // First seen behind: watched from now.
        assert_eq!(
            stall(seen(true, at(0)), None, at(100), after),
            Verdict::Lagging(at(100))
        );
        // Still behind with no progress, not yet for long enough.
        assert_eq!(
            stall(seen(true, at(0)), Some(at(100)), at(299), after),
            Verdict::Lagging(at(100))
        );
        assert_eq!(
            stall(seen(true, at(0)), Some(at(100)), at(300), after),
            Verdict::Stalled
        );
        // It read something since it was first seen behind: watched afresh.
        assert_eq!(
            stall(seen(true, at(150)), Some(at(100)), at(400), after),
            Verdict::Lagging(at(400))
        );
        // A follower task that ended is re-opened at once.
        let ended = Seen {
            finished: true,
            lagging: false,
            progress_at: at(0),
        };
        assert_eq!(stall(ended, None, at(1), after), Verdict::Stalled);
    }

    #[test]
    fn a_detached_follower_waits_out_the_linger_and_the_grace_after_a_reconnect() {
        let (linger, grace) = (Duration::from_secs(10), Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Connected all along: the linger alone decides, once past the grace.
        assert!(!unclaimed(at(100), at(0), at(109), linger, grace));
        assert!(unclaimed(at(100), at(0), at(110), linger, grace));
        // Detached while the relay was away (a restart): the linger runs from the reconnect,
        // and the grace keeps it for sessions to resubscribe.
        assert!(!unclaimed(at(0), at(50), at(75), linger, grace));
        assert!(unclaimed(at(0), at(50), at(80), linger, grace));
        // A short grace: the linger from the reconnect still holds.
        assert!(!unclaimed(at(0), at(50), at(59), linger, Duration::ZERO));
        assert!(unclaimed(at(0), at(50), at(60), linger, Duration::ZERO));
    }
}
