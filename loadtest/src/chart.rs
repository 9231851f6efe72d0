//! A hand-written SVG chart of a report's time series: throughput (top) and latency (bottom,
//! logarithmic), logrelay in blue and the nats-server baseline in orange, warm-up shaded.

use std::fmt::Write as _;

use crate::report::{Report, Sample, si};

const W: f64 = 960.0;
const PANEL_H: f64 = 230.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 66.0;
const GAP: f64 = 60.0;

struct Series<'a> {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
    _src: std::marker::PhantomData<&'a ()>,
}

fn series<'a>(
    samples: &'a [Sample],
    label: String,
    color: &'static str,
    dashed: bool,
    f: impl Fn(&Sample) -> f64,
) -> Series<'a> {
    Series {
        label,
        color,
        dashed,
        points: samples.iter().map(|s| (s.t_secs, f(s))).collect(),
        _src: std::marker::PhantomData,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the chart. Never panics, whatever the samples hold (empty, zero, NaN).
pub fn svg(report: &Report) -> String {
    let mut systems = vec![(&report.relay, "#1f77b4")];
    if let Some(b) = &report.baseline {
        systems.push((b, "#ff7f0e"));
    }
    let mut thr = Vec::new();
    let mut lat = Vec::new();
    for (f, color) in &systems {
        thr.push(series(
            &f.samples,
            format!("{} deliveries/s", f.system),
            color,
            false,
            |s| s.deliveries_per_sec,
        ));
        thr.push(series(
            &f.samples,
            format!("{} ingest lines/s", f.system),
            color,
            true,
            |s| s.ingest_lines_per_sec,
        ));
        lat.push(series(
            &f.samples,
            format!("{} p99 µs", f.system),
            color,
            false,
            |s| s.latency_p99_us as f64,
        ));
        lat.push(series(
            &f.samples,
            format!("{} p50 µs", f.system),
            color,
            true,
            |s| s.latency_p50_us as f64,
        ));
    }
    let t_max = systems
        .iter()
        .flat_map(|(f, _)| f.samples.iter().map(|s| s.t_secs))
        .filter(|t| t.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let warm = report.scenario.warmup_secs.clamp(0.0, t_max);
    let height = TOP + 2.0 * PANEL_H + GAP + 60.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let command: String = report.command.chars().take(140).collect();
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="20" font-size="16" font-weight="bold">loadtest {}</text><text x="{LEFT}" y="36" font-size="11" fill="#555555">{}</text>"##,
        esc(&report.scenario.name),
        esc(&command)
    );
    panel(&mut o, TOP, "lines per second", &thr, t_max, warm, false);
    panel(
        &mut o,
        TOP + PANEL_H + GAP,
        "latency, µs (log scale)",
        &lat,
        t_max,
        warm,
        true,
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since load started (shaded: warm-up, not measured)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        height - 12.0
    );
    o.push_str("</svg>\n");
    o
}

fn panel(
    o: &mut String,
    top: f64,
    title: &str,
    series: &[Series<'_>],
    t_max: f64,
    warm: f64,
    log: bool,
) {
    let pw = W - LEFT - RIGHT;
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let v_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| finite(p.1)))
        .fold(0.0f64, f64::max);
    let (lo, hi) = if log {
        let hi = (v_max.max(10.0)).log10().ceil();
        let v_min = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| finite(p.1)))
            .filter(|v| *v >= 1.0)
            .fold(f64::INFINITY, f64::min);
        let lo = if v_min.is_finite() {
            v_min.log10().floor().min(hi - 1.0)
        } else {
            0.0
        };
        (lo, hi)
    } else {
        (0.0, nice(v_max.max(1.0)))
    };
    let y = |v: f64| {
        let v = finite(v);
        let f = if log {
            (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo).max(1e-9)
        } else {
            (v - lo) / (hi - lo).max(1e-9)
        };
        top + PANEL_H - f.clamp(0.0, 1.0) * PANEL_H
    };
    let x = |t: f64| LEFT + (finite(t) / t_max).clamp(0.0, 1.0) * pw;
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top - 8.0,
        esc(title)
    );
    if warm > 0.0 {
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#eeeeee"/>"##,
            x(warm) - LEFT
        );
    }
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT}" y="{top}" width="{pw}" height="{PANEL_H}" fill="none" stroke="black"/>"#
    );
    // Horizontal grid and labels.
    let ticks: Vec<(f64, String)> = if log {
        (0..=hi as i32)
            .map(|e| (10f64.powi(e), si(10f64.powi(e))))
            .collect()
    } else {
        (0..=4)
            .map(|i| hi * f64::from(i) / 4.0)
            .map(|v| (v, si(v)))
            .collect()
    };
    for (v, label) in ticks {
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#cccccc"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    // Time ticks.
    let step = nice(t_max / 8.0).max(0.5);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            top + PANEL_H + 16.0
        );
        t += step;
    }
    let mut legend = String::new();
    for (i, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{} points="{}"/>"#,
                s.color,
                if s.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                },
                pts.join(" ")
            );
        }
        let lx = LEFT + 10.0 + (i as f64 % 2.0) * 260.0;
        let ly = top + 16.0 + (i / 2) as f64 * 16.0;
        let _ = writeln!(
            legend,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{}/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 24.0,
            ly - 4.0,
            s.color,
            if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            lx + 30.0,
            esc(&s.label)
        );
    }
    let rows = series.len().div_ceil(2) as f64;
    let _ = writeln!(
        o,
        r##"<rect x="{:.1}" y="{:.1}" width="540" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#cccccc"/>"##,
        LEFT + 4.0,
        top + 4.0,
        rows * 16.0 + 4.0
    );
    o.push_str(&legend);
}

/// The smallest "nice" number (1, 2 or 5 × 10^k) at least `v`.
fn nice(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    #[test]
    fn renders_both_systems() {
        let s = svg(&report(true));
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 8);
        assert!(s.contains("nats-server deliveries/s"));
    }

    #[test]
    fn odd_samples_do_not_panic() {
        let mut r = report(false);
        r.relay.samples.clear();
        let _ = svg(&r);
        r.relay.samples = vec![Sample {
            t_secs: f64::NAN,
            deliveries_per_sec: f64::INFINITY,
            ..Sample::default()
        }];
        let s = svg(&r);
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
        r.scenario.name = "<&>".into();
        assert!(svg(&r).contains("&lt;&amp;&gt;"));
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.0), 5.0);
        assert_eq!(nice(1_100_000.0), 2_000_000.0);
        assert_eq!(nice(10.0), 10.0);
    }
}
