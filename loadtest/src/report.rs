//! The report: JSON (the contract), a Markdown summary, and what the time series holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::procstat::Machine;
use crate::scenario::Scenario;
use crate::stats::Latency;

/// One interval of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sample {
    /// End of the interval, seconds since load started.
    pub t_secs: f64,
    /// Inside the warm-up (not part of the figures).
    pub warmup: bool,
    /// Lines ingested per second during the interval.
    pub ingest_lines_per_sec: f64,
    /// Lines received by all subscribers per second during the interval.
    pub deliveries_per_sec: f64,
    /// Median latency of the interval, µs.
    pub latency_p50_us: u64,
    /// 99th percentile latency of the interval, µs.
    pub latency_p99_us: u64,
    /// Server (relay or nats-server) resident memory, bytes.
    pub server_rss_bytes: u64,
    /// Server CPU, percent of one core.
    pub server_cpu_percent: f64,
    /// Agent processes' CPU, percent of one core (agent mode).
    pub agent_cpu_percent: Option<f64>,
    /// The harness's own CPU (producers, writers, subscribers), percent of one core.
    pub harness_cpu_percent: f64,
}

/// The figures of one system (logrelay, or the nats-server baseline) under the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Figures {
    /// `logrelay` or `nats-server`.
    pub system: String,
    /// How lines entered: `quic-producer`, `agent`, or `nats-publisher`.
    pub ingest_path: String,
    /// Lines ingested per second (relay metric `lines_received_total`, or publisher count).
    pub ingest_lines_per_sec: f64,
    /// Bytes ingested per second (relay metric `bytes_received_total`: batch bytes).
    pub ingest_bytes_per_sec: f64,
    /// Lines received by all subscribers, per second.
    pub deliveries_per_sec: f64,
    /// Data bytes received by all subscribers, per second.
    pub delivered_bytes_per_sec: f64,
    /// Write (or encode) to receive, over the measured window.
    pub latency_us: Latency,
    /// Lines lost to subscribers (relay `dropped_lines_total` delta; for NATS, the gap in
    /// sequence numbers seen by subscribers).
    pub dropped_lines: u64,
    /// `dropped_lines` by reason.
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Lines reported missing in-band to subscribers (gap events, agent gap batches).
    pub gap_lines_seen: u64,
    /// `gap_lines_seen` by reason.
    pub gaps_by_reason: BTreeMap<String, u64>,
    /// Largest server RSS seen (relay, or nats-server for the baseline), bytes.
    pub relay_rss_bytes_max: u64,
    /// Server CPU over the window, percent of one core.
    pub relay_cpu_percent: f64,
    /// Agent processes' CPU over the window, percent of one core (agent mode).
    pub agent_cpu_percent: Option<f64>,
    /// Harness CPU over the window, percent of one core.
    pub harness_cpu_percent: f64,
    /// Sessions started.
    pub sessions: u32,
    /// Sessions that failed or were closed by the server before the end.
    pub sessions_failed: u32,
    /// The first few failure reasons.
    pub failures: Vec<String>,
    /// Length of the measured window, seconds.
    pub measured_secs: f64,
    /// The time series, warm-up included.
    pub samples: Vec<Sample>,
}

/// Relay figure divided by baseline figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Ratio {
    /// Ingest lines/s, relay / nats.
    pub ingest_lines_per_sec: f64,
    /// Deliveries/s, relay / nats.
    pub deliveries_per_sec: f64,
    /// p99 latency, relay / nats (lower is better).
    pub latency_p99: f64,
    /// Peak RSS, relay / nats.
    pub rss_max: f64,
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Ratio {
    /// Relay over baseline.
    pub fn of(relay: &Figures, nats: &Figures) -> Self {
        Self {
            ingest_lines_per_sec: div(relay.ingest_lines_per_sec, nats.ingest_lines_per_sec),
            deliveries_per_sec: div(relay.deliveries_per_sec, nats.deliveries_per_sec),
            latency_p99: div(relay.latency_us.p99 as f64, nats.latency_us.p99 as f64),
            rss_max: div(
                relay.relay_rss_bytes_max as f64,
                nats.relay_rss_bytes_max as f64,
            ),
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The preset run, if any.
    pub preset: Option<String>,
    /// The command line that produced this report.
    pub command: String,
    /// The scenario.
    pub scenario: Scenario,
    /// The machine.
    pub machine: Machine,
    /// Unix time the run started.
    pub started_unix_secs: u64,
    /// Wall time of the whole run (both systems), seconds.
    pub wall_secs: f64,
    /// Mean line size, stamp and terminator included, bytes.
    pub mean_line_bytes: f64,
    /// logrelay's figures (top-level fields are the contract).
    #[serde(flatten)]
    pub relay: Figures,
    /// nats-server's figures, when `--baseline nats` ran.
    pub baseline: Option<Figures>,
    /// logrelay / nats-server.
    pub ratio: Option<Ratio>,
}

/// Top-level fields every report has (the contract of `--json`).
pub const REQUIRED_FIELDS: [&str; 7] = [
    "ingest_lines_per_sec",
    "ingest_bytes_per_sec",
    "deliveries_per_sec",
    "latency_us",
    "dropped_lines",
    "relay_rss_bytes_max",
    "baseline",
];

/// Checks that `json` has the contract's fields, with `latency_us` complete.
pub fn check_fields(json: &serde_json::Value) -> Result<(), String> {
    for f in REQUIRED_FIELDS {
        if json.get(f).is_none() {
            return Err(format!("report lacks `{f}`"));
        }
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        if json["latency_us"].get(p).is_none() {
            return Err(format!("report lacks `latency_us.{p}`"));
        }
    }
    Ok(())
}

/// `1234567.0` → `1.23 M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let s = &self.scenario;
        let _ = writeln!(o, "# loadtest: {}\n", s.name);
        let _ = writeln!(o, "`{}`\n", self.command);
        let _ = writeln!(
            o,
            "Machine: {} CPUs ({}), kernel {}, {}. Mode: {} ({} agents × {} streams, {} lines, {}). \
             Subscribers: {} sessions, {} per stream, {:.0} % stalled, {:.0} % slow. \
             Measured {:.1} s after {:.1} s warm-up.\n",
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel,
            mib(self.machine.mem_total_bytes as f64),
            s.mode.as_str(),
            s.agents,
            s.streams_per_agent,
            s.line_bytes
                .map_or("LogHub-sized".to_owned(), |b| format!("{b}-byte")),
            s.rate_lines_per_sec
                .map_or("unpaced".to_owned(), |r| format!(
                    "{} lines/s offered",
                    si(r as f64)
                )),
            s.subscribers.sessions,
            s.subscribers.per_stream,
            s.subscribers.stalled_fraction * 100.0,
            s.subscribers.slow_fraction * 100.0,
            self.relay.measured_secs,
            s.warmup_secs,
        );
        if s.relays > 1 {
            let _ = writeln!(
                o,
                "{} relays over a NATS backplane (a nats-server of the harness), {}; the \
                 server's CPU and RSS are theirs and the nats-server's, summed.\n",
                s.relays,
                match s.placement {
                    crate::scenario::Placement::Spread =>
                        "agents and sessions spread over them round-robin",
                    crate::scenario::Placement::AwayFromAgents =>
                        "the agents on the first, the sessions on the others",
                }
            );
        }
        let b = self.baseline.as_ref();
        let _ = writeln!(
            o,
            "| measure | logrelay{} |",
            if b.is_some() {
                " | nats-server | logrelay / nats"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "| --- | ---{} |",
            if b.is_some() { " | --- | ---" } else { "" }
        );
        let row = |o: &mut String,
                   name: &str,
                   f: &dyn Fn(&Figures) -> f64,
                   fmt: &dyn Fn(f64) -> String| {
            let r = f(&self.relay);
            match b {
                Some(n) => {
                    let v = f(n);
                    let ratio = if v > 0.0 {
                        format!("{:.2}", r / v)
                    } else {
                        "–".into()
                    };
                    let _ = writeln!(o, "| {name} | {} | {} | {ratio} |", fmt(r), fmt(v));
                }
                None => {
                    let _ = writeln!(o, "| {name} | {} |", fmt(r));
                }
            }
        };
        let rate = |v: f64| si(v);
        let us = |v: f64| format!("{v:.0}");
        row(&mut o, "ingest lines/s", &|f| f.ingest_lines_per_sec, &rate);
        row(
            &mut o,
            "ingest MB/s",
            &|f| f.ingest_bytes_per_sec / 1e6,
            &|v| format!("{v:.1}"),
        );
        row(&mut o, "deliveries/s", &|f| f.deliveries_per_sec, &rate);
        row(
            &mut o,
            "delivered MB/s",
            &|f| f.delivered_bytes_per_sec / 1e6,
            &|v| format!("{v:.1}"),
        );
        row(&mut o, "latency p50 µs", &|f| f.latency_us.p50 as f64, &us);
        row(&mut o, "latency p90 µs", &|f| f.latency_us.p90 as f64, &us);
        row(&mut o, "latency p99 µs", &|f| f.latency_us.p99 as f64, &us);
        row(
            &mut o,
            "latency p99.9 µs",
            &|f| f.latency_us.p999 as f64,
            &us,
        );
        row(&mut o, "latency max µs", &|f| f.latency_us.max as f64, &us);
        row(&mut o, "dropped lines", &|f| f.dropped_lines as f64, &us);
        row(&mut o, "gap lines seen", &|f| f.gap_lines_seen as f64, &us);
        row(
            &mut o,
            "server RSS max",
            &|f| f.relay_rss_bytes_max as f64,
            &mib,
        );
        row(&mut o, "server CPU %", &|f| f.relay_cpu_percent, &|v| {
            format!("{v:.0}")
        });
        row(&mut o, "harness CPU %", &|f| f.harness_cpu_percent, &|v| {
            format!("{v:.0}")
        });
        if self.relay.agent_cpu_percent.is_some() {
            let _ = writeln!(
                o,
                "| agent CPU % | {:.1} |{}",
                self.relay.agent_cpu_percent.unwrap_or(0.0),
                if b.is_some() { " – | – |" } else { "" }
            );
        }
        row(
            &mut o,
            "sessions failed",
            &|f| f64::from(f.sessions_failed),
            &us,
        );
        for f in std::iter::once(&self.relay).chain(b) {
            if !f.drops_by_reason.is_empty() || !f.gaps_by_reason.is_empty() {
                let _ = writeln!(
                    o,
                    "\n{}: drops by reason {:?}; gaps seen by reason {:?}",
                    f.system, f.drops_by_reason, f.gaps_by_reason
                );
            }
            for why in &f.failures {
                let _ = writeln!(o, "\n{}: session failure: {why}", f.system);
            }
        }
        let whose = if s.relays > 1 {
            "the relays'"
        } else {
            "the relay's"
        };
        let _ = writeln!(
            o,
            "\nIngest is read from {whose} `lines_received_total`{}; deliveries are lines \
             received by all WebSocket subscribers; latency is receive time minus the write \
             time stamped in each line.",
            if self.relay.ingest_path == "agent" {
                " (lines the agents sent)"
            } else {
                ""
            }
        );
        o
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn figures(system: &str, deliveries: f64) -> Figures {
        Figures {
            system: system.into(),
            ingest_path: "quic-producer".into(),
            ingest_lines_per_sec: 1e6,
            ingest_bytes_per_sec: 2e8,
            deliveries_per_sec: deliveries,
            latency_us: Latency {
                p50: 100,
                p90: 200,
                p99: 400,
                p999: 800,
                max: 1600,
                count: 10,
            },
            relay_rss_bytes_max: 50 << 20,
            measured_secs: 3.0,
            samples: (1..=6)
                .map(|i| Sample {
                    t_secs: f64::from(i) * 0.5,
                    warmup: i <= 2,
                    ingest_lines_per_sec: 1e6,
                    deliveries_per_sec: deliveries * f64::from(i) / 6.0,
                    latency_p50_us: 100 * i as u64,
                    latency_p99_us: 400 * i as u64,
                    ..Sample::default()
                })
                .collect(),
            ..Figures::default()
        }
    }

    pub(crate) fn report(baseline: bool) -> Report {
        let relay = figures("logrelay", 5e6);
        let nats = figures("nats-server", 2e6);
        Report {
            preset: Some("fanout-10".into()),
            command: "loadtest run --preset fanout-10 --baseline nats".into(),
            scenario: Scenario::preset("fanout-10").unwrap(),
            machine: Machine {
                nproc: 2,
                cpu_model: "test".into(),
                kernel: "6".into(),
                mem_total_bytes: 1 << 30,
            },
            started_unix_secs: 0,
            wall_secs: 9.0,
            mean_line_bytes: 200.0,
            ratio: baseline.then(|| Ratio::of(&relay, &nats)),
            baseline: baseline.then_some(nats),
            relay,
        }
    }

    #[test]
    fn json_has_the_contract_fields_at_top_level() {
        for with_baseline in [false, true] {
            let r = report(with_baseline);
            let v = serde_json::to_value(&r).unwrap();
            check_fields(&v).unwrap();
            assert_eq!(v["latency_us"]["p99"], 400);
            assert_eq!(v["baseline"].is_null(), !with_baseline);
            let back: Report = serde_json::from_value(v).unwrap();
            assert_eq!(back, r);
        }
        let r = report(true);
        assert_eq!(r.ratio.unwrap().deliveries_per_sec, 2.5);
        assert!(check_fields(&serde_json::json!({"ingest_lines_per_sec": 1})).is_err());
    }

    #[test]
    fn markdown_has_one_row_per_measure_and_the_ratio() {
        let md = report(true).markdown();
        assert!(
            md.contains("| deliveries/s | 5.00 M | 2.00 M | 2.50 |"),
            "{md}"
        );
        assert!(md.contains("latency p99.9"));
        let md = report(false).markdown();
        assert!(md.contains("| deliveries/s | 5.00 M |"), "{md}");
        assert!(!md.contains("nats-server |"));
    }

    #[test]
    fn si_units() {
        assert_eq!(si(1_234_567.0), "1.23 M");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_500.0), "12.5 k");
        assert_eq!(div(1.0, 0.0), 0.0);
    }
}
