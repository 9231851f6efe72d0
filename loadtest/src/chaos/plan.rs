//! The chaos soak's decisions, pure: the schedule of what happens when (from a seed), the slope
//! of a memory series across process restarts, and durations as written on the command line.

use std::time::Duration;

use logrelay_chaos::faultproxy::fate::SplitMix64;
use logrelay_chaos::faultproxy::{Burst, Faults};
use serde::{Deserialize, Serialize};

/// A process of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `logrelay-relay`.
    Relay,
    /// `logrelay-agent`.
    Agent,
}

/// A network fault of the proxy between agent and relay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NetFault {
    /// These faults, both ways, for a while.
    Degrade {
        /// Short name for the report.
        name: &'static str,
        /// What the proxy does.
        faults: Faults,
    },
    /// Nothing passes for this long.
    Blackhole(Duration),
    /// The agent's address changes (NAT rebinding).
    Rebind,
}

/// Something the soak does to the pipeline or its sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// SIGKILL a process, leave it down for `down`, start it again. The soak waits first until
    /// every stream recovered from the previous kill.
    Kill {
        /// Which one.
        target: Target,
        /// How long it stays down.
        down: Duration,
    },
    /// A network fault for `length` (a rebinding or a blackhole is its own length).
    Net {
        /// What.
        fault: NetFault,
        /// How long the proxy keeps it.
        length: Duration,
    },
    /// A session joins one stream late with `tail` lines of backlog and leaves after `stay`.
    LateJoiner {
        /// Which pod (index).
        pod: usize,
        /// Backlog asked for.
        tail: u32,
        /// How long it watches.
        stay: Duration,
    },
    /// The checker of a pod drops its session and reconnects (`since_seq`).
    Reconnect {
        /// Which pod.
        pod: usize,
    },
    /// The checker of a pod unsubscribes and subscribes again on its session (`since_seq`).
    Resubscribe {
        /// Which pod.
        pod: usize,
    },
}

/// How often things happen: every interval is uniform in `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cadence {
    /// Kills in the whole soak. Each falls at a random time in its own equal share of the
    /// time kills may happen (so they are spread out); they alternate between the relay and
    /// the agent, the first chosen at random.
    pub kills: u32,
    /// Downtime of a killed process, seconds.
    pub down_secs: (f64, f64),
    /// Between two network faults, seconds.
    pub net_every_secs: (f64, f64),
    /// Between two session events, seconds.
    pub churn_every_secs: (f64, f64),
    /// The steady phase: no kill in the last this many seconds of the soak (network faults and
    /// session churn go on). Each process's last life spans it, and the memory verdict is
    /// judged on it, once rings and queues have filled.
    pub last_life_secs: f64,
}

/// Longest default steady phase, seconds.
const STEADY_MAX_SECS: f64 = 600.0;
/// Shortest steady phase, seconds.
const STEADY_MIN_SECS: f64 = 60.0;

impl Cadence {
    /// The default cadence for a soak of `length`: its last third (60 s to 10 min), or
    /// `steady` when given (60 s at least), is the steady phase without kills; before it, a
    /// kill per 30 s (at least 4).
    pub fn for_length(length: Duration, steady: Option<Duration>) -> Self {
        let len = length.as_secs_f64();
        let steady = steady
            .map_or((len / 3.0).min(STEADY_MAX_SECS), |s| s.as_secs_f64())
            .max(STEADY_MIN_SECS);
        Self {
            kills: (((len - steady).max(0.0) / 30.0) as u32).max(4),
            last_life_secs: steady,
            ..Self::default()
        }
    }

    /// When the steady phase starts, seconds after the soak's start.
    pub fn steady_from_secs(&self, length: Duration) -> f64 {
        (length.as_secs_f64() - self.last_life_secs).max(0.0)
    }
}

impl Default for Cadence {
    fn default() -> Self {
        Self {
            kills: 4,
            down_secs: (0.0, 2.0),
            net_every_secs: (4.0, 12.0),
            churn_every_secs: (1.0, 4.0),
            last_life_secs: STEADY_MIN_SECS,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn between(rng: &mut SplitMix64, (lo, hi): (f64, f64)) -> Duration {
    rng.between(secs(lo), secs(hi))
}

/// The network faults drawn from, with their lengths.
fn net_fault(rng: &mut SplitMix64) -> (NetFault, Duration) {
    let ms = Duration::from_millis;
    let degrade = |name, faults| NetFault::Degrade { name, faults };
    match rng.next_u64() % 9 {
        0 => (degrade("loss 1 %", Faults::loss(0.01)), ms(8_000)),
        1 => (degrade("loss 5 %", Faults::loss(0.05)), ms(5_000)),
        2 => (
            degrade(
                "bursts of loss",
                Faults {
                    burst: Some(Burst {
                        enter_ratio: 0.005,
                        leave_ratio: 0.05,
                        loss_in_burst_ratio: 0.9,
                    }),
                    ..Faults::default()
                },
            ),
            ms(6_000),
        ),
        3 => (
            degrade(
                "delay 10 ms + jitter 20 ms",
                Faults {
                    delay: ms(10),
                    jitter: ms(20),
                    ..Faults::default()
                },
            ),
            ms(6_000),
        ),
        4 => (
            degrade(
                "reordering 5 % by 10 ms",
                Faults {
                    reorder_ratio: 0.05,
                    reorder_by: ms(10),
                    ..Faults::default()
                },
            ),
            ms(6_000),
        ),
        5 => (
            degrade(
                "duplication 5 %",
                Faults {
                    duplicate_ratio: 0.05,
                    jitter: ms(2),
                    ..Faults::default()
                },
            ),
            ms(6_000),
        ),
        6 => {
            // Shorter than the idle timeout (1.2 s): QUIC rides it out.
            let l = rng.between(ms(200), ms(700));
            (NetFault::Blackhole(l), l)
        }
        7 => {
            // Longer: the relay pauses the streams, the agent reconnects.
            let l = rng.between(ms(2_000), ms(4_000));
            (NetFault::Blackhole(l), l)
        }
        _ => (NetFault::Rebind, Duration::ZERO),
    }
}

/// Every action of a soak of `length` over `pods` pods, in time order, from `seed`. Three
/// independent sequences (kills, network faults, session churn) merged; none starts in the
/// first `settle` (the pipeline comes up) or the last `settle` (it drains), and no kill in the
/// last [`Cadence::last_life_secs`].
pub fn schedule(
    seed: u64,
    length: Duration,
    pods: usize,
    cadence: &Cadence,
    settle: Duration,
) -> Vec<(Duration, Action)> {
    let end = length.saturating_sub(settle);
    let last_kill = length.saturating_sub(secs(cadence.last_life_secs).max(settle));
    let mut out = Vec::new();
    let mut kills = SplitMix64::new(seed ^ 0x6b69_6c6c);
    if last_kill > settle && cadence.kills > 0 {
        let share = (last_kill - settle) / cadence.kills;
        let relay_first = kills.chance(0.5);
        for k in 0..cadence.kills {
            // Somewhere in the middle 80 % of its share: never two kills back to back.
            let at = settle + share * k + kills.between(share / 10, share * 9 / 10);
            let target = if (k % 2 == 0) == relay_first {
                Target::Relay
            } else {
                Target::Agent
            };
            let down = between(&mut kills, cadence.down_secs);
            out.push((at, Action::Kill { target, down }));
        }
    }
    let mut net = SplitMix64::new(seed ^ 0x006e_6574);
    let mut at = settle;
    loop {
        at += between(&mut net, cadence.net_every_secs);
        let (fault, length) = net_fault(&mut net);
        if at + length >= end {
            break;
        }
        out.push((at, Action::Net { fault, length }));
        at += length;
    }
    let mut churn = SplitMix64::new(seed ^ 0x6368_7572);
    let mut at = settle;
    let pods = pods.max(1);
    loop {
        at += between(&mut churn, cadence.churn_every_secs);
        if at >= end {
            break;
        }
        let pod = (churn.next_u64() % pods as u64) as usize;
        let action = match churn.next_u64() % 4 {
            0 | 1 => Action::LateJoiner {
                pod,
                tail: (churn.next_u64() % 5_001) as u32,
                stay: churn.between(secs(2.0), secs(12.0)),
            },
            2 => Action::Reconnect { pod },
            _ => Action::Resubscribe { pod },
        };
        out.push((at, action));
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// One memory reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the soak started.
    pub t_secs: f64,
    /// Which start of the process (0 for the first; each restart after a kill adds one).
    pub life: u32,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// A least-squares slope of memory over time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slope {
    /// Growth, bytes per minute (negative: shrinking).
    pub bytes_per_min: f64,
    /// Its standard error, bytes per minute.
    pub stderr_bytes_per_min: f64,
    /// Samples used.
    pub samples: usize,
    /// Process lives they came from.
    pub lives: usize,
    /// Seconds covered by those samples (summed over lives).
    pub covered_secs: f64,
}

/// The slope of `samples` over time, pooled across the lives of a process: each life (a start,
/// then a kill) keeps its own level, and one slope fits them all (least squares with one
/// intercept per life), so restarts, which start low, do not pass for shrinkage, nor their
/// regrowth for a leak. The first `warmup_secs` of each life are left out (rings and queues
/// filling, the allocator settling), as are lives with fewer than `min_samples` after it.
/// `None` when no life qualifies.
pub fn pooled_slope(samples: &[RssSample], warmup_secs: f64, min_samples: usize) -> Option<Slope> {
    let mut lives: Vec<u32> = samples.iter().map(|s| s.life).collect();
    lives.sort_unstable();
    lives.dedup();
    let (mut sxy, mut sxx, mut n, mut used, mut covered) = (0.0, 0.0, 0usize, 0usize, 0.0);
    let mut residual_parts = Vec::new();
    for life in lives {
        let of_life: Vec<&RssSample> = samples.iter().filter(|s| s.life == life).collect();
        let Some(start) = of_life.iter().map(|s| s.t_secs).reduce(f64::min) else {
            continue;
        };
        let kept: Vec<(f64, f64)> = of_life
            .iter()
            .filter(|s| s.t_secs >= start + warmup_secs)
            .map(|s| (s.t_secs / 60.0, s.rss_bytes as f64))
            .collect();
        if kept.len() < min_samples.max(2) {
            continue;
        }
        let k = kept.len() as f64;
        let mx = kept.iter().map(|p| p.0).sum::<f64>() / k;
        let my = kept.iter().map(|p| p.1).sum::<f64>() / k;
        for (x, y) in &kept {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
        }
        covered += (kept[kept.len() - 1].0 - kept[0].0) * 60.0;
        n += kept.len();
        used += 1;
        residual_parts.push((kept, mx, my));
    }
    if used == 0 || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let rss: f64 = residual_parts
        .iter()
        .flat_map(|(kept, mx, my)| {
            kept.iter()
                .map(move |(x, y)| (y - (my + slope * (x - mx))).powi(2))
        })
        .sum();
    // Degrees of freedom: one slope and one intercept per life.
    let dof = n.saturating_sub(used + 1).max(1) as f64;
    Some(Slope {
        bytes_per_min: slope,
        stderr_bytes_per_min: (rss / dof / sxx).sqrt(),
        samples: n,
        lives: used,
        covered_secs: covered,
    })
}

/// The trend of a process's level across its lives: each life with `min_samples` after its
/// first `warmup_secs` gives one point (the median of those samples, at their middle time),
/// and a least-squares line through the points gives the slope. Memory that a restart does
/// not give back, or that each life starts with more of (state that grows with what is on
/// disk, say), shows here; rings filling inside a life do not. `None` with fewer than three
/// such lives.
pub fn level_trend(samples: &[RssSample], warmup_secs: f64, min_samples: usize) -> Option<Slope> {
    let mut lives: Vec<u32> = samples.iter().map(|s| s.life).collect();
    lives.sort_unstable();
    lives.dedup();
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut samples_used = 0;
    for life in lives {
        let of_life: Vec<&RssSample> = samples.iter().filter(|s| s.life == life).collect();
        let Some(start) = of_life.iter().map(|s| s.t_secs).reduce(f64::min) else {
            continue;
        };
        let kept: Vec<&&RssSample> = of_life
            .iter()
            .filter(|s| s.t_secs >= start + warmup_secs)
            .collect();
        if kept.len() < min_samples.max(1) {
            continue;
        }
        let mut rss: Vec<u64> = kept.iter().map(|s| s.rss_bytes).collect();
        rss.sort_unstable();
        let first = kept
            .iter()
            .map(|s| s.t_secs)
            .reduce(f64::min)
            .unwrap_or(start);
        let last = kept
            .iter()
            .map(|s| s.t_secs)
            .reduce(f64::max)
            .unwrap_or(start);
        points.push(((first + last) / 2.0 / 60.0, rss[rss.len() / 2] as f64));
        samples_used += kept.len();
    }
    if points.len() < 3 {
        return None;
    }
    let k = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / k;
    let my = points.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let residual: f64 = points
        .iter()
        .map(|p| (p.1 - (my + slope * (p.0 - mx))).powi(2))
        .sum();
    Some(Slope {
        bytes_per_min: slope,
        stderr_bytes_per_min: (residual / (k - 2.0) / sxx).sqrt(),
        samples: samples_used,
        lives: points.len(),
        covered_secs: (points[points.len() - 1].0 - points[0].0) * 60.0,
    })
}

/// The samples of the steady phase (from `from_secs` on), for the memory verdict: a process
/// (re)started inside it has its own warm-up left out by [`pooled_slope`] as usual.
pub fn steady_samples(samples: &[RssSample], from_secs: f64) -> Vec<RssSample> {
    samples
        .iter()
        .filter(|s| s.t_secs >= from_secs)
        .copied()
        .collect()
}

/// Why a duration does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a duration: write a number with s, m or h (90s, 2m, 30m, 1h)")]
pub struct BadDuration(pub String);

/// `90s`, `2m`, `30m`, `1h`, `1.5h` or plain seconds (`120`).
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let factor = match unit {
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        _ => return Err(BadDuration(text.into())),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * factor)),
        _ => Err(BadDuration(text.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_written() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "m", "-3m", "3 weeks", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_seed_one_schedule_within_the_run() {
        let len = Duration::from_secs(1800);
        let c = Cadence::for_length(len, None);
        let settle = Duration::from_secs(10);
        let a = schedule(7, len, 4, &c, settle);
        assert_eq!(a, schedule(7, len, 4, &c, settle));
        assert_ne!(a, schedule(8, len, 4, &c, settle));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        assert!(a.iter().all(|(at, _)| *at >= settle && *at < len - settle));
        assert!(a.iter().all(
            |(at, x)| !matches!(x, Action::Kill { .. }) || *at < len - Duration::from_secs(600)
        ));
        let kills = |t| {
            a.iter()
                .filter(|(_, x)| matches!(x, Action::Kill { target, .. } if *target == t))
                .count()
        };
        // 30 min: the last 10 min steady, 40 kills in the 20 before, half of them the relay's,
        // spread out.
        assert_eq!(c.steady_from_secs(len), 1200.0);
        let (relay, agent) = (kills(Target::Relay), kills(Target::Agent));
        assert_eq!((relay, agent), (20, 20));
        let at: Vec<Duration> = a
            .iter()
            .filter(|(_, x)| matches!(x, Action::Kill { .. }))
            .map(|(at, _)| *at)
            .collect();
        assert!(at.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs(5)));
        for (_, x) in &a {
            match x {
                Action::Kill { down, .. } => assert!(*down <= Duration::from_secs(2)),
                Action::LateJoiner { pod, tail, stay } => {
                    assert!(*pod < 4 && *tail <= 5_000);
                    assert!(*stay >= Duration::from_secs(2) && *stay <= Duration::from_secs(12));
                }
                Action::Reconnect { pod } | Action::Resubscribe { pod } => assert!(*pod < 4),
                Action::Net { .. } => {}
            }
        }
        let nets: Vec<_> = a
            .iter()
            .filter_map(|(at, x)| match x {
                Action::Net { fault, length } => Some((*at, *fault, *length)),
                _ => None,
            })
            .collect();
        // Network faults never overlap, and every kind comes up.
        assert!(nets.windows(2).all(|w| w[0].0 + w[0].2 <= w[1].0));
        let long =
            |f: &NetFault| matches!(f, NetFault::Blackhole(l) if *l >= Duration::from_secs(2));
        assert!(nets.iter().any(|n| long(&n.1)));
        assert!(nets.iter().any(|n| n.1 == NetFault::Rebind));
        assert!(nets.iter().any(|n| matches!(
            n.1,
            NetFault::Degrade {
                name: "loss 1 %",
                ..
            }
        )));
    }

    #[test]
    fn a_short_run_still_kills_and_churns() {
        let len = Duration::from_secs(120);
        let a = schedule(
            1,
            len,
            4,
            &Cadence::for_length(len, None),
            Duration::from_secs(10),
        );
        let kills: Vec<(Duration, Target)> = a
            .iter()
            .filter_map(|(at, x)| match x {
                Action::Kill { target, .. } => Some((*at, *target)),
                _ => None,
            })
            .collect();
        assert_eq!(kills.len(), 4);
        assert!(kills.iter().all(|(at, _)| *at < Duration::from_secs(60)));
        assert_eq!(kills.iter().filter(|k| k.1 == Target::Relay).count(), 2);
        assert!(
            a.iter()
                .filter(|(_, x)| matches!(x, Action::LateJoiner { .. }))
                .count()
                >= 5
        );
    }

    fn series(lives: &[(f64, f64, f64, u64)], per_min: f64) -> Vec<RssSample> {
        // (start, end, step, base): a life's samples, growing `per_min` bytes per minute.
        let mut out = Vec::new();
        for (life, &(start, end, step, base)) in lives.iter().enumerate() {
            let mut t = start;
            while t < end {
                out.push(RssSample {
                    t_secs: t,
                    life: life as u32,
                    rss_bytes: base + ((t - start) / 60.0 * per_min) as u64,
                });
                t += step;
            }
        }
        out
    }

    #[test]
    fn a_flat_process_restarted_often_has_no_slope() {
        // Every life starts at 10 MiB and stays there: a plain fit across lives would see the
        // drops at each restart; the pooled fit sees nothing.
        let lives: Vec<_> = (0..10)
            .map(|i| (i as f64 * 60.0, i as f64 * 60.0 + 55.0, 1.0, 10 << 20))
            .collect();
        let s = pooled_slope(&series(&lives, 0.0), 10.0, 5).unwrap();
        assert!(s.bytes_per_min.abs() < 1.0, "{s:?}");
        assert_eq!(s.lives, 10);
        assert_eq!(s.samples, 10 * 45);
    }

    #[test]
    fn a_leak_shows_whatever_the_restarts() {
        let lives = [
            (0.0, 300.0, 1.0, 20 << 20),
            (300.0, 400.0, 1.0, 12 << 20),
            (400.0, 900.0, 1.0, 30 << 20),
        ];
        let s = pooled_slope(&series(&lives, 1_048_576.0), 20.0, 5).unwrap();
        assert!((s.bytes_per_min - 1_048_576.0).abs() < 20_000.0, "{s:?}");
        assert!(s.stderr_bytes_per_min < 10_000.0);
    }

    #[test]
    fn warmup_growth_is_left_out() {
        // Grows for 15 s after each start, then flat.
        let mut samples = Vec::new();
        for life in 0..3u32 {
            for i in 0..100 {
                let t = f64::from(life) * 100.0 + f64::from(i);
                let rss = 8_000_000 + (i.min(15) as u64) * 1_000_000;
                samples.push(RssSample {
                    t_secs: t,
                    life,
                    rss_bytes: rss,
                });
            }
        }
        assert!(pooled_slope(&samples, 20.0, 5).unwrap().bytes_per_min.abs() < 1.0);
        assert!(pooled_slope(&samples, 0.0, 5).unwrap().bytes_per_min > 1_000_000.0);
        assert_eq!(pooled_slope(&samples[..10], 20.0, 5), None);
    }

    #[test]
    fn the_steady_phase_is_a_third_within_bounds() {
        let m = Duration::from_secs(60);
        let c = |len, steady| Cadence::for_length(len, steady);
        assert_eq!(c(2 * m, None).last_life_secs, 60.0);
        assert_eq!(c(2 * m, None).kills, 4);
        assert_eq!(c(15 * m, None).last_life_secs, 300.0);
        assert_eq!(c(15 * m, None).kills, 20);
        assert_eq!(c(60 * m, None).last_life_secs, 600.0);
        assert_eq!(c(60 * m, None).kills, 100);
        assert_eq!(c(30 * m, Some(20 * m)).last_life_secs, 1200.0);
        assert_eq!(c(30 * m, Some(20 * m)).kills, 20);
        assert_eq!(c(30 * m, Some(Duration::from_secs(5))).last_life_secs, 60.0);
    }

    #[test]
    fn a_level_that_climbs_from_life_to_life_shows_in_the_trend_not_in_the_lives() {
        // Flat inside each life, but every life 2 MiB above the one before (one a minute).
        let mut samples = Vec::new();
        for life in 0..6u32 {
            for i in 0..60u32 {
                samples.push(RssSample {
                    t_secs: f64::from(life) * 60.0 + f64::from(i),
                    life,
                    rss_bytes: (40 << 20) + u64::from(life) * (2 << 20) + u64::from(i % 3) * 4096,
                });
            }
        }
        let within = pooled_slope(&samples, 10.0, 5).unwrap();
        assert!(within.bytes_per_min.abs() < 10_000.0, "{within:?}");
        let trend = level_trend(&samples, 10.0, 5).unwrap();
        assert!(
            (trend.bytes_per_min - f64::from(2 << 20)).abs() < 10_000.0,
            "{trend:?}"
        );
        assert_eq!(trend.lives, 6);
        // Restarts at the same level: no trend, whatever the filling inside each life.
        let flat: Vec<RssSample> = samples
            .iter()
            .map(|s| RssSample {
                rss_bytes: (40 << 20) + ((s.t_secs as u64 % 60).min(20) << 20),
                ..*s
            })
            .collect();
        assert!(level_trend(&flat, 30.0, 5).unwrap().bytes_per_min.abs() < 1.0);
        assert_eq!(level_trend(&samples[..120], 10.0, 5), None, "two lives");
    }

    #[test]
    fn the_steady_phase_leaves_out_what_came_before_and_its_own_warmup() {
        // Killed every 40 s until 200 s, then one life to 500 s: filling for 20 s after each
        // start, then flat; a leak of 1 MiB/min would show only in the last life.
        let mut samples = Vec::new();
        let starts = [0.0, 40.0, 80.0, 120.0, 160.0, 200.0];
        for (life, &start) in starts.iter().enumerate() {
            let end = starts.get(life + 1).copied().unwrap_or(500.0);
            let mut t = start;
            while t < end {
                let age = t - start;
                samples.push(RssSample {
                    t_secs: t,
                    life: life as u32,
                    rss_bytes: (30 << 20) + (age.min(20.0) * 1_048_576.0) as u64,
                });
                t += 1.0;
            }
        }
        let steady = steady_samples(&samples, 200.0);
        assert!(steady.iter().all(|s| s.life == 5));
        let s = pooled_slope(&steady, 30.0, 10).unwrap();
        assert!(s.bytes_per_min.abs() < 1.0, "{s:?}");
        assert_eq!(s.samples, 270);
    }
}
