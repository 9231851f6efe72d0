//! Reading the relay's `/metrics` (OpenMetrics text) over plain HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `/metrics` from an admin listener.
pub async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Every series of metric `name`: label set (`{…}` text, empty without labels) → value.
pub fn series(body: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric == name
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(labels.to_owned()).or_default() += v;
        }
    }
    out
}

/// The sum of every series of `name`.
pub fn total(body: &str, name: &str) -> f64 {
    series(body, name).values().sum()
}

/// `reason="slow_consumer"` → `slow_consumer`; other label sets are returned as they are.
pub fn reason(labels: &str) -> String {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix("reason="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| labels.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP logrelay_relay_lines_received Lines received from agents.\n\
# TYPE logrelay_relay_lines_received counter\n\
logrelay_relay_lines_received_total 12345\n\
logrelay_relay_dropped_lines_total{reason=\"slow_consumer\"} 40\n\
logrelay_relay_dropped_lines_total{reason=\"memory_budget\"} 2\n\
logrelay_relay_streams 4\n\
# EOF\n";

    #[test]
    fn series_and_totals() {
        assert_eq!(total(BODY, "logrelay_relay_lines_received_total"), 12345.0);
        assert_eq!(total(BODY, "logrelay_relay_dropped_lines_total"), 42.0);
        assert_eq!(total(BODY, "logrelay_relay_missing"), 0.0);
        let s = series(BODY, "logrelay_relay_dropped_lines_total");
        let by_reason: Vec<(String, f64)> = s.iter().map(|(l, v)| (reason(l), *v)).collect();
        assert_eq!(
            by_reason,
            vec![
                ("memory_budget".into(), 2.0),
                ("slow_consumer".into(), 40.0)
            ]
        );
    }
}
