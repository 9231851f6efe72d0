//! Pacing of a producer: how many lines are due, at a steady rate or as fast as it can go.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a paced producer wakes to catch up with its rate.
const STEP: Duration = Duration::from_millis(1);

/// Counts the lines a producer owes: `rate` lines per second since it started, or, unpaced,
/// always more than a batch holds.
#[derive(Debug)]
pub struct Pacer {
    rate: Option<f64>,
    started: Instant,
    tick: Interval,
    sent: u64,
}

impl Pacer {
    /// Starts now, at `rate` lines per second (`None`: unpaced).
    pub fn new(rate: Option<f64>) -> Self {
        let started = Instant::now();
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            rate,
            started,
            tick,
            sent: 0,
        }
    }

    /// Whether the producer runs flat out (it then sends one batch per turn).
    pub fn unpaced(&self) -> bool {
        self.rate.is_none()
    }

    /// Waits for the next step (paced only) and returns the total number of lines due since
    /// the start, or `None` when `stop` changed meanwhile.
    pub async fn due(&mut self, stop: &mut watch::Receiver<bool>) -> Option<u64> {
        match self.rate {
            None => Some(u64::MAX),
            Some(r) => {
                tokio::select! {
                    _ = self.tick.tick() => {}
                    _ = stop.changed() => return None,
                }
                Some((r * self.started.elapsed().as_secs_f64()) as u64)
            }
        }
    }

    /// Lines owed towards `due`.
    pub fn owed(&self, due: u64) -> u64 {
        due.saturating_sub(self.sent)
    }

    /// Records `lines` sent.
    pub fn sent(&mut self, lines: u64) {
        self.sent += lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paced_lines_follow_the_clock() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut p = Pacer::new(Some(1000.0));
        assert!(!p.unpaced());
        assert_eq!(
            p.due(&mut stop).await,
            Some(0),
            "the first step is immediate"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        let due = p.due(&mut stop).await.unwrap();
        assert_eq!(due, 10);
        p.sent(4);
        assert_eq!(p.owed(due), 6);
        p.sent(6);
        assert_eq!(p.owed(due), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait() {
        let (stop_tx, mut stop) = watch::channel(false);
        let mut p = Pacer::new(Some(1.0));
        p.due(&mut stop).await.unwrap();
        stop_tx.send(true).unwrap();
        assert_eq!(p.due(&mut stop).await, None);
    }

    #[tokio::test]
    async fn unpaced_is_always_owed() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut p = Pacer::new(None);
        assert!(p.unpaced());
        p.sent(1_000_000);
        let due = p.due(&mut stop).await.unwrap();
        assert!(p.owed(due) > 1 << 60);
    }
}
