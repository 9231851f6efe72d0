//! The soak's report: JSON (every figure, the RSS series) and a Markdown summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use logrelay_chaos::faultproxy::DirectionStats;
use logrelay_chaos::ledger::Tally;
use serde::{Deserialize, Serialize};

use super::plan::{Cadence, RssSample, Slope, Target};
use crate::procstat::Machine;
use crate::report::mib;

/// How the soak was set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// Containers written and watched.
    pub pods: usize,
    /// Lines per second written, over all pods.
    pub rate_lines_per_sec: u32,
    /// `0.log` is rotated at this size.
    pub rotate_bytes: u64,
    /// Rotated files kept (all but the newest gzip-compressed).
    pub keep_rotated: usize,
    /// Flags the agent ran with, beyond certificates, addresses and the pods directory.
    pub agent_flags: Vec<String>,
    /// How often things happened.
    pub cadence: Cadence,
    /// RSS samples of each life left out at its start, seconds.
    pub rss_warmup_secs: f64,
    /// The largest RSS slope that passes, bytes per minute.
    pub max_rss_slope_bytes_per_min: f64,
}

/// What one stream's checker saw, added up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamFigures {
    /// Pod name.
    pub pod: String,
    /// Lines written.
    pub written: u64,
    /// Distinct lines delivered.
    pub delivered: u64,
    /// Lines reported missing by exact gaps.
    pub gapped: u64,
    /// Gaps that could not say their count (must be 0).
    pub inexact_gaps: u64,
    /// Lines neither delivered nor reported (must be 0).
    pub silent_losses: u64,
    /// The first runs of such lines, `[from, to)`.
    pub silent_loss_runs: Vec<(u64, u64)>,
    /// Lines an exact gap reported but that were delivered anyway (must be 0).
    pub overstated: u64,
    /// Lines delivered after a later one (must be 0).
    pub out_of_order: u64,
    /// Lines delivered twice under different numbers (must be 0).
    pub duplicates: u64,
    /// Lines received again with an `(epoch, seq)` already had, dropped as the protocol says.
    pub repeats_dropped: u64,
    /// `renumbered` events (agent restarts).
    pub renumbered: u64,
    /// `paused` events.
    pub paused: u64,
    /// `resumed` events.
    pub resumed: u64,
    /// Sessions the checker opened (relay restarts and forced reconnects).
    pub sessions: u32,
    /// Subscriptions it made (sessions and unsubscribe/subscribe cycles).
    pub subscriptions: u32,
    /// Lines reported missing, by reason (`agent` for the agent's gap batches).
    pub gapped_by_reason: BTreeMap<String, u64>,
    /// A stream that failed: what its checker saw happen, in order (sessions, subscriptions
    /// with their `since_seq`, events, gaps, where redeliveries began), to locate the fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl StreamFigures {
    /// From a checker's tally.
    pub fn of(pod: &str, t: &Tally) -> Self {
        Self {
            pod: pod.into(),
            written: t.written,
            delivered: t.delivered,
            gapped: t.gapped,
            inexact_gaps: t.inexact_gaps,
            silent_losses: t.missing,
            silent_loss_runs: t.missing_runs.clone(),
            overstated: t.overstated,
            out_of_order: t.out_of_order,
            duplicates: t.redelivered,
            repeats_dropped: t.duplicates,
            renumbered: t.renumbered,
            ..Self::default()
        }
    }
}

/// Late joiners: sessions that came and went with a `tail` backlog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LateJoiners {
    /// Sessions started.
    pub sessions: u64,
    /// Of those, whose window (first to last line they got) was exact.
    pub exact: u64,
    /// Lines their windows held, in total.
    pub lines_checked: u64,
    /// Sessions that got no line at all (a joiner that stayed while its stream was away).
    pub empty: u64,
    /// What the first of those saw (events, errors).
    pub empty_notes: Vec<String>,
    /// What was wrong with the others (the first 20).
    pub failures: Vec<String>,
}

/// One kill and how long the pipeline took to recover from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kill {
    /// Which process.
    pub target: Target,
    /// When (seconds since the start).
    pub at_secs: f64,
    /// How long it stayed down.
    pub down_secs: f64,
    /// From its restart until every stream had lines written after it (`null`: not within the
    /// recovery deadline).
    pub recovered_after_secs: Option<f64>,
}

/// A direction of the fault proxy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProxyDirection {
    /// Datagrams that arrived.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub sent: u64,
    /// Dropped by independent loss.
    pub dropped_loss: u64,
    /// Dropped in bursts.
    pub dropped_burst: u64,
    /// Dropped by blackholes.
    pub dropped_blackhole: u64,
    /// Dropped because the delay queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because a socket refused them.
    pub dropped_send_error: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
}

impl From<DirectionStats> for ProxyDirection {
    fn from(s: DirectionStats) -> Self {
        Self {
            received: s.received,
            sent: s.sent,
            dropped_loss: s.dropped_loss,
            dropped_burst: s.dropped_burst,
            dropped_blackhole: s.dropped_blackhole,
            dropped_queue_full: s.dropped_queue_full,
            dropped_send_error: s.dropped_send_error,
            duplicated: s.duplicated,
            reordered: s.reordered,
        }
    }
}

/// What the network did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Network {
    /// Fault episodes, by kind.
    pub episodes: BTreeMap<String, u64>,
    /// Agent → relay datagrams.
    pub up: ProxyDirection,
    /// Relay → agent datagrams.
    pub down: ProxyDirection,
    /// NAT rebindings.
    pub rebinds: u64,
}

/// Memory of one process over the soak.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// The verdict: the slope in the steady phase (no kills), after its warm-up (`null`: too
    /// few samples).
    pub steady: Option<Slope>,
    /// The verdict too: the trend of each life's median level across the soak (`null`: fewer
    /// than three lives long enough).
    pub across_lives: Option<Slope>,
    /// For information: the slope inside every life, pooled over the whole soak (lives of
    /// about a minute between kills mostly show rings and queues filling, not leaks).
    pub within_lives: Option<Slope>,
    /// Largest RSS seen, bytes.
    pub max_rss_bytes: u64,
    /// Every sample, one a second.
    pub samples: Vec<RssSample>,
}

/// The soak's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChaosReport {
    /// Always `chaos`.
    pub kind: String,
    /// The command line.
    pub command: String,
    /// Seed of the schedule and of the fault proxy.
    pub seed: u64,
    /// Length of the chaos, seconds.
    pub duration_secs: f64,
    /// Start, Unix seconds.
    pub started_unix_secs: u64,
    /// Everything, drain included, seconds.
    pub wall_secs: f64,
    /// The machine.
    pub machine: Machine,
    /// How it was set up.
    pub setup: Setup,
    /// Whether every invariant held.
    pub passed: bool,
    /// Which did not.
    pub failures: Vec<String>,
    /// Every stream together.
    pub totals: StreamFigures,
    /// Per stream.
    pub streams: Vec<StreamFigures>,
    /// Lines delivered per second to the checkers, over the soak.
    pub delivered_lines_per_sec: f64,
    /// Late joiners.
    pub late_joiners: LateJoiners,
    /// Forced reconnections of the checkers.
    pub reconnects: u64,
    /// Forced unsubscribe + subscribe cycles of the checkers.
    pub resubscribes: u64,
    /// Every kill.
    pub kills: Vec<Kill>,
    /// Kills of the relay.
    pub relay_kills: u64,
    /// Kills of the agent.
    pub agent_kills: u64,
    /// The network.
    pub network: Network,
    /// The relay's memory.
    pub relay_memory: Memory,
    /// The agent's memory.
    pub agent_memory: Memory,
}

fn slope_text(slope: Option<&Slope>) -> String {
    match slope {
        Some(s) => format!(
            "{:+.1} KiB/min ± {:.1} ({} samples over {} lives, {:.0} s)",
            s.bytes_per_min / 1024.0,
            s.stderr_bytes_per_min / 1024.0,
            s.samples,
            s.lives,
            s.covered_secs
        ),
        None => "too few samples".into(),
    }
}

fn memory_text(m: &Memory) -> String {
    format!(
        "steady phase {}; across lives {}; within lives (information) {}; max RSS {}",
        slope_text(m.steady.as_ref()),
        slope_text(m.across_lives.as_ref()),
        slope_text(m.within_lives.as_ref()),
        mib(m.max_rss_bytes as f64)
    )
}

impl ChaosReport {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let t = &self.totals;
        let _ = writeln!(
            md,
            "### chaos soak, {:.0} s, seed {}: {}\n",
            self.duration_secs,
            self.seed,
            if self.passed { "passed" } else { "FAILED" }
        );
        let _ = writeln!(md, "`{}`\n", self.command);
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let rows: Vec<(&str, String)> = vec![
            (
                "load",
                format!(
                    "{} pods, {} lines/s, rotation every {} KiB (gzip, {} kept)",
                    self.setup.pods,
                    self.setup.rate_lines_per_sec,
                    self.setup.rotate_bytes / 1024,
                    self.setup.keep_rotated
                ),
            ),
            ("lines written", t.written.to_string()),
            ("lines delivered", t.delivered.to_string()),
            ("lines gapped (exact)", t.gapped.to_string()),
            ("silent losses", t.silent_losses.to_string()),
            ("duplicates", t.duplicates.to_string()),
            ("out of order", t.out_of_order.to_string()),
            ("inexact gaps", t.inexact_gaps.to_string()),
            (
                "repeats dropped by (epoch, seq)",
                t.repeats_dropped.to_string(),
            ),
            (
                "kills",
                format!("relay {}, agent {}", self.relay_kills, self.agent_kills),
            ),
            (
                "slowest recovery after a restart",
                self.kills
                    .iter()
                    .filter_map(|k| k.recovered_after_secs)
                    .reduce(f64::max)
                    .map_or("–".into(), |s| format!("{s:.1} s")),
            ),
            (
                "checker events",
                format!(
                    "paused {}, resumed {}, renumbered {}, sessions {}, subscriptions {}",
                    t.paused, t.resumed, t.renumbered, t.sessions, t.subscriptions
                ),
            ),
            (
                "session churn",
                format!(
                    "{} late joiners ({} exact, {} lines checked), {} reconnects, {} \
                     resubscribes",
                    self.late_joiners.sessions,
                    self.late_joiners.exact,
                    self.late_joiners.lines_checked,
                    self.reconnects,
                    self.resubscribes
                ),
            ),
            (
                "network faults",
                self.network
                    .episodes
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "datagrams dropped by the proxy",
                format!(
                    "up {} of {}, down {} of {}",
                    dropped(&self.network.up),
                    self.network.up.received,
                    dropped(&self.network.down),
                    self.network.down.received
                ),
            ),
            (
                "delivered lines/s",
                format!("{:.0}", self.delivered_lines_per_sec),
            ),
            ("relay RSS", memory_text(&self.relay_memory)),
            ("agent RSS", memory_text(&self.agent_memory)),
            (
                "RSS tolerance",
                format!(
                    "±{:.0} KiB/min in the steady phase (the last {:.0} s, no kills) and across \
                     lives; first {:.0} s of each life left out",
                    self.setup.max_rss_slope_bytes_per_min / 1024.0,
                    self.setup.cadence.last_life_secs,
                    self.setup.rss_warmup_secs
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(md, "\nFailures:\n");
            for f in &self.failures {
                let _ = writeln!(md, "- {f}");
            }
        }
        md
    }
}

fn dropped(d: &ProxyDirection) -> u64 {
    d.dropped_loss
        + d.dropped_burst
        + d.dropped_blackhole
        + d.dropped_queue_full
        + d.dropped_send_error
}
