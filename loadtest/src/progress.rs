//! A plain-text progress bar on stderr, redrawn in place on a terminal and printed every few
//! seconds otherwise (CI logs).

use std::io::{IsTerminal, Write};

/// Draws progress lines.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    enabled: bool,
    last_plain: f64,
}

impl Progress {
    /// A bar on stderr; `enabled: false` draws nothing.
    pub fn new(enabled: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            enabled,
            last_plain: f64::NEG_INFINITY,
        }
    }

    /// Redraws with `elapsed` of `total` seconds done and a status text.
    pub fn update(&mut self, label: &str, elapsed: f64, total: f64, status: &str) {
        if !self.enabled {
            return;
        }
        let line = render(label, elapsed, total, status);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else if elapsed - self.last_plain >= 5.0 || elapsed >= total {
            self.last_plain = elapsed;
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the bar's line.
    pub fn finish(&mut self) {
        if self.enabled && self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `label [#####.....] 12.0/30.0 s status`.
pub fn render(label: &str, elapsed: f64, total: f64, status: &str) -> String {
    const WIDTH: usize = 24;
    let frac = if total > 0.0 {
        (elapsed / total).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let done = (frac * WIDTH as f64).round() as usize;
    format!(
        "{label} [{}{}] {elapsed:5.1}/{total:.1} s  {status}",
        "#".repeat(done),
        ".".repeat(WIDTH - done)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_time() {
        assert_eq!(
            render("relay", 6.0, 12.0, "x"),
            format!(
                "relay [{}{}]   6.0/12.0 s  x",
                "#".repeat(12),
                ".".repeat(12)
            )
        );
        assert!(render("r", 50.0, 12.0, "").contains(&"#".repeat(24)));
        assert!(render("r", 1.0, 0.0, "").contains(&"#".repeat(24)));
    }
}
