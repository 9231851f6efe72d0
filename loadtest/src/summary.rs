//! Medians over several reports of the same scenarios (`loadtest median FILE…`): the table
//! `docs/benchmarks.md` quotes, since one run on a noisy machine proves little.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{Figures, Report, mib, si};

/// The median of `v` (mean of the two middle values for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Col {
    name: &'static str,
    get: fn(&Figures) -> f64,
    fmt: fn(f64) -> String,
}

fn cols() -> Vec<Col> {
    vec![
        Col {
            name: "ingest lines/s",
            get: |f| f.ingest_lines_per_sec,
            fmt: si,
        },
        Col {
            name: "ingest MB/s",
            get: |f| f.ingest_bytes_per_sec / 1e6,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "deliveries/s",
            get: |f| f.deliveries_per_sec,
            fmt: si,
        },
        Col {
            name: "p50 µs",
            get: |f| f.latency_us.p50 as f64,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "p99 µs",
            get: |f| f.latency_us.p99 as f64,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "p99.9 µs",
            get: |f| f.latency_us.p999 as f64,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "max µs",
            get: |f| f.latency_us.max as f64,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "dropped lines",
            get: |f| f.dropped_lines as f64,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "server RSS max",
            get: |f| f.relay_rss_bytes_max as f64,
            fmt: mib,
        },
        Col {
            name: "server CPU %",
            get: |f| f.relay_cpu_percent,
            fmt: |v| format!("{v:.0}"),
        },
        Col {
            name: "agent CPU %",
            get: |f| f.agent_cpu_percent.unwrap_or(f64::NAN),
            fmt: |v| format!("{v:.1}"),
        },
    ]
}

/// One Markdown table per scenario name: the median of each figure for logrelay, for the
/// baseline, and their ratio; with the number of runs.
pub fn markdown(reports: &[Report]) -> String {
    let mut by_name: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        by_name.entry(r.scenario.name.as_str()).or_default().push(r);
    }
    let mut o = String::new();
    for (name, runs) in by_name {
        let baselines: Vec<&Figures> = runs.iter().filter_map(|r| r.baseline.as_ref()).collect();
        let _ = writeln!(
            o,
            "### {name} — median of {} runs{}\n",
            runs.len(),
            if baselines.is_empty() {
                String::new()
            } else {
                format!(" ({} with the nats-server baseline)", baselines.len())
            }
        );
        if baselines.is_empty() {
            let _ = writeln!(o, "| measure | logrelay |\n| --- | --- |");
        } else {
            let _ = writeln!(
                o,
                "| measure | logrelay | nats-server | logrelay / nats (median of per-run ratios) |\n| --- | --- | --- | --- |"
            );
        }
        for c in cols() {
            let relay = median(runs.iter().map(|r| (c.get)(&r.relay)).collect());
            if !relay.is_finite()
                || (c.name == "agent CPU %" && runs[0].relay.agent_cpu_percent.is_none())
            {
                continue;
            }
            if baselines.is_empty() {
                let _ = writeln!(o, "| {} | {} |", c.name, (c.fmt)(relay));
            } else {
                let nats = median(baselines.iter().map(|f| (c.get)(f)).collect());
                // The ratio is taken within each run (same load, same minute), then the median.
                let ratios: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| {
                        let b = (c.get)(r.baseline.as_ref()?);
                        (b > 0.0).then(|| (c.get)(&r.relay) / b)
                    })
                    .collect();
                let ratio = if ratios.is_empty() || c.name == "agent CPU %" {
                    "–".into()
                } else {
                    format!("{:.2}", median(ratios))
                };
                let nats_text = if c.name == "agent CPU %" {
                    "–".into()
                } else {
                    (c.fmt)(nats)
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {ratio} |",
                    c.name,
                    (c.fmt)(relay),
                    nats_text
                );
            }
        }
        let _ = writeln!(o);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn one_table_per_scenario_with_ratios() {
        let mut a = report(true);
        let mut b = report(true);
        let c = report(true);
        a.relay.deliveries_per_sec = 1e6;
        b.relay.deliveries_per_sec = 9e6;
        if let Some(n) = b.baseline.as_mut() {
            n.deliveries_per_sec = 1e6;
        }
        let md = markdown(&[a, b, c]);
        assert!(
            md.contains("### fanout-10 — median of 3 runs (3 with the nats-server baseline)"),
            "{md}"
        );
        assert!(
            md.contains("| deliveries/s | 5.00 M | 2.00 M | 2.50 |"),
            "{md}"
        );
        assert!(!md.contains("agent CPU"));
    }
}
