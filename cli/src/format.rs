//! How `tail` prints a line: pure functions of the line, its stream and the flags (no I/O, no
//! clock), so every format is tested byte for byte.
//!
//! - `default`: `[pod/container] ` (when prefixed; coloured per pod and container when colours
//!   are on), `[event] ` on the lines of a pod's Kubernetes events (kind `events`, prefixed or
//!   not), the timestamp when asked, the message with its terminator.
//! - `raw`: the message bytes exactly as written, nothing added but a missing `\n`.
//! - `json`: one object per line: `timestamp`, `labels`, `stream` (`stdout`/`stderr`), `epoch`,
//!   `seq`, `message` (terminator removed), and `partial` / `truncated` when set.

use logrelay_wire::batch::{Line, LineFlags};
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::time::rfc3339_nanos;
use regex::bytes::Regex;

/// `-o`: how lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Prefix, optional timestamp, message.
    #[default]
    Default,
    /// The message bytes only, as written.
    Raw,
    /// One JSON object per line.
    Json,
}

/// `--color`: when to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorMode {
    /// Only when standard output is a terminal and `NO_COLOR` is unset or empty.
    #[default]
    Auto,
    /// Always (even into a pipe).
    Always,
    /// Never.
    Never,
}

impl ColorMode {
    /// Whether to colour, given where the output goes and the `NO_COLOR` variable.
    pub fn enabled(self, terminal: bool, no_color: Option<&str>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => terminal && no_color.is_none_or(str::is_empty),
        }
    }
}

/// `--timestamps[=utc|local]`: which clock timestamps are shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimestampZone {
    /// RFC 3339 in UTC: `2024-01-02T03:04:05.123456789Z`.
    #[default]
    Utc,
    /// RFC 3339 with this machine's offset: `2024-01-02T04:04:05.123456789+01:00`.
    Local,
}

/// The ANSI colours prefixes cycle through (red and its bright twin are kept for highlights).
const PALETTE: [&str; 10] = ["32", "33", "34", "35", "36", "92", "93", "94", "95", "96"];
/// Highlighted matches: bold on red.
const HIGHLIGHT_ON: &[u8] = b"\x1b[1;41;97m";
/// Back to normal.
const RESET: &[u8] = b"\x1b[0m";

/// FNV-1a: a colour per pod and container that is the same on every run and machine.
fn colour_of(namespace: &str, pod: &str, container: &str) -> &'static str {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace
        .bytes()
        .chain([0])
        .chain(pod.bytes())
        .chain([0])
        .chain(container.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    PALETTE[(h % PALETTE.len() as u64) as usize]
}

/// What marks the lines of an events stream in the default format (after the prefix).
pub const EVENT_MARK: &str = "[event] ";
/// [`EVENT_MARK`] with colours on (bold yellow).
const EVENT_MARK_COLOR: &str = "\x1b[1;33m[event]\x1b[0m ";

/// What a stream's lines are printed with, computed once per stream.
#[derive(Debug, Clone)]
pub struct StreamView {
    /// `[pod/container]` as shown on stderr notices.
    pub name: String,
    /// The prefix written before each line (empty when not prefixed).
    prefix: Vec<u8>,
    /// The labels as a JSON object (for `-o json`).
    labels_json: String,
}

/// The name of a stream in notices: `[pod/container]`, or for a stream without a pod (a
/// static scrape target) `[node/container]`.
pub fn stream_name(labels: &Labels) -> String {
    let first = if labels.pod.is_empty() {
        &labels.node
    } else {
        &labels.pod
    };
    format!("[{first}/{}]", labels.container)
}

/// Which lines are printed (`--include`, `--exclude`), matched in this client against the
/// message without its terminator.
#[derive(Debug, Clone, Default)]
pub struct LineFilter {
    /// A line must match one of these, if any are given.
    pub include: Vec<Regex>,
    /// A line matching any of these is left out.
    pub exclude: Vec<Regex>,
}

impl LineFilter {
    /// True when the line is to be printed.
    pub fn keeps(&self, message: &[u8]) -> bool {
        let m = strip_terminator(message);
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(m)))
            && !self.exclude.iter().any(|r| r.is_match(m))
    }

    /// True when no line is left out.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// The message without its terminator (LF, CRLF or CR).
pub fn strip_terminator(m: &[u8]) -> &[u8] {
    let m = m.strip_suffix(b"\n").unwrap_or(m);
    m.strip_suffix(b"\r").unwrap_or(m)
}

/// Formats lines as the flags ask.
#[derive(Debug, Clone)]
pub struct Formatter {
    /// Output format.
    pub format: OutputFormat,
    /// Prefix default-format lines with `[pod/container]`.
    pub prefix: bool,
    /// Colour prefixes and highlights.
    pub color: bool,
    /// Show timestamps (default format), in this zone.
    pub timestamps: Option<TimestampZone>,
    /// Highlight matches of this expression (when colours are on).
    pub highlight: Option<Regex>,
    /// The zone `--timestamps=local` uses.
    pub local: jiff::tz::TimeZone,
}

impl Formatter {
    /// The view of a stream with these labels.
    pub fn view(&self, labels: &Labels) -> StreamView {
        let name = stream_name(labels);
        let prefix = match (self.format, self.prefix, self.color) {
            (OutputFormat::Default, true, true) => format!(
                "\x1b[{}m{name}\x1b[0m ",
                colour_of(&labels.namespace, &labels.pod, &labels.container)
            )
            .into_bytes(),
            (OutputFormat::Default, true, false) => format!("{name} ").into_bytes(),
            _ => Vec::new(),
        };
        // A pod's Kubernetes events are marked, prefixed or not, so they stand out among logs.
        let prefix = if self.format == OutputFormat::Default && labels.kind == StreamKind::Events {
            let mut p = prefix;
            p.extend_from_slice(if self.color {
                EVENT_MARK_COLOR.as_bytes()
            } else {
                EVENT_MARK.as_bytes()
            });
            p
        } else {
            prefix
        };
        let labels_json = if self.format == OutputFormat::Json {
            serde_json::to_string(labels).expect("labels serialize")
        } else {
            String::new()
        };
        StreamView {
            name,
            prefix,
            labels_json,
        }
    }

    /// Appends `line` to `out`.
    pub fn line(&self, out: &mut Vec<u8>, view: &StreamView, epoch: u64, line: &Line<'_>) {
        match self.format {
            OutputFormat::Raw => {
                out.extend_from_slice(line.message);
                if !line.message.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            OutputFormat::Default => {
                out.extend_from_slice(&view.prefix);
                if let Some(zone) = self.timestamps {
                    out.extend_from_slice(self.timestamp(line.timestamp_ns, zone).as_bytes());
                    out.push(b' ');
                }
                match &self.highlight {
                    Some(re) if self.color => highlight(out, line.message, re),
                    _ => out.extend_from_slice(line.message),
                }
                if !line.message.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            OutputFormat::Json => self.json(out, view, epoch, line),
        }
    }

    fn json(&self, out: &mut Vec<u8>, view: &StreamView, epoch: u64, line: &Line<'_>) {
        use std::io::Write;
        let message = String::from_utf8_lossy(strip_terminator(line.message));
        let _ = write!(
            out,
            r#"{{"timestamp":"{}","labels":{},"stream":"{}","epoch":{epoch},"seq":{},"message":{}"#,
            rfc3339_nanos(line.timestamp_ns),
            view.labels_json,
            if line.flags.has(LineFlags::STDERR) {
                "stderr"
            } else {
                "stdout"
            },
            line.seq,
            serde_json::to_string(&message).expect("strings serialize"),
        );
        if line.flags.has(LineFlags::PARTIAL) {
            out.extend_from_slice(br#","partial":true"#);
        }
        if line.flags.has(LineFlags::TRUNCATED) {
            out.extend_from_slice(br#","truncated":true"#);
        }
        out.extend_from_slice(b"}\n");
    }

    /// A timestamp as RFC 3339 with nine fraction digits, in `zone`.
    pub fn timestamp(&self, ns: i64, zone: TimestampZone) -> String {
        match zone {
            TimestampZone::Utc => rfc3339_nanos(ns),
            TimestampZone::Local => {
                let offset = jiff::Timestamp::from_nanosecond(i128::from(ns))
                    .map(|t| self.local.to_offset(t).seconds())
                    .unwrap_or(0);
                with_offset(ns, offset)
            }
        }
    }
}

/// `ns` shown at a UTC offset of `offset_secs`: `…+01:00`, or `…Z` at offset 0.
pub fn with_offset(ns: i64, offset_secs: i32) -> String {
    let shifted = rfc3339_nanos(ns.saturating_add(i64::from(offset_secs) * 1_000_000_000));
    if offset_secs == 0 {
        return shifted;
    }
    let base = shifted.strip_suffix('Z').unwrap_or(&shifted);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.unsigned_abs();
    format!("{base}{sign}{:02}:{:02}", abs / 3600, abs / 60 % 60)
}

fn highlight(out: &mut Vec<u8>, message: &[u8], re: &Regex) {
    let body = strip_terminator(message);
    let mut at = 0;
    for m in re.find_iter(body).filter(|m| !m.is_empty()) {
        out.extend_from_slice(&body[at..m.start()]);
        out.extend_from_slice(HIGHLIGHT_ON);
        out.extend_from_slice(m.as_bytes());
        out.extend_from_slice(RESET);
        at = m.end();
    }
    out.extend_from_slice(&message[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            org: "acme".into(),
            namespace: "shop".into(),
            pod: "cart".into(),
            container: "main".into(),
            ..Labels::default()
        }
    }

    fn formatter(format: OutputFormat) -> Formatter {
        Formatter {
            format,
            prefix: true,
            color: false,
            timestamps: None,
            highlight: None,
            local: jiff::tz::TimeZone::UTC,
        }
    }

    fn line(message: &[u8], flags: u8) -> Line<'_> {
        Line {
            seq: 7,
            timestamp_ns: 1_704_164_645_123_456_789,
            flags: LineFlags(flags),
            message,
        }
    }

    fn render(f: &Formatter, l: &Line<'_>) -> String {
        let mut out = Vec::new();
        f.line(&mut out, &f.view(&labels()), 42, l);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn event_lines_are_marked_prefixed_or_not() {
        let events = Labels {
            container: "events".into(),
            kind: StreamKind::Events,
            ..labels()
        };
        let l = line(b"{\"reason\":\"FailedScheduling\"}\n", LineFlags::SYSTEM);
        let mut out = Vec::new();
        let f = formatter(OutputFormat::Default);
        f.line(&mut out, &f.view(&events), 1, &l);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[cart/events] [event] {\"reason\":\"FailedScheduling\"}\n"
        );
        let mut f = formatter(OutputFormat::Default);
        f.prefix = false;
        let mut out = Vec::new();
        f.line(&mut out, &f.view(&events), 1, &l);
        assert!(out.starts_with(b"[event] {"));
        let f = formatter(OutputFormat::Raw);
        let mut out = Vec::new();
        f.line(&mut out, &f.view(&events), 1, &l);
        assert!(out.starts_with(b"{"), "raw stays raw");
    }

    #[test]
    fn default_raw_and_json() {
        let l = line(b"hello \"world\"\n", 0);
        assert_eq!(
            render(&formatter(OutputFormat::Default), &l),
            "[cart/main] hello \"world\"\n"
        );
        let mut f = formatter(OutputFormat::Default);
        f.prefix = false;
        f.timestamps = Some(TimestampZone::Utc);
        assert_eq!(
            render(&f, &line(b"no terminator", 0)),
            "2024-01-02T03:04:05.123456789Z no terminator\n"
        );
        assert_eq!(
            render(&formatter(OutputFormat::Raw), &line(b"a\r\n", 0)),
            "a\r\n"
        );
        let json = render(&formatter(OutputFormat::Json), &line(b"oops\n", 1 | 4));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["timestamp"], "2024-01-02T03:04:05.123456789Z");
        assert_eq!(v["labels"]["pod"], "cart");
        assert_eq!(v["labels"]["org"], "acme");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(
            (v["epoch"].as_u64(), v["seq"].as_u64()),
            (Some(42), Some(7))
        );
        assert_eq!(v["message"], "oops");
        assert_eq!(v["truncated"], true);
        assert!(v.get("partial").is_none());
        assert!(json.ends_with("}\n") && json.lines().count() == 1);
    }

    #[test]
    fn colours_are_stable_per_pod_and_container_and_only_when_enabled() {
        let mut f = formatter(OutputFormat::Default);
        f.color = true;
        let out = render(&f, &line(b"x\n", 0));
        assert!(
            out.starts_with("\x1b[") && out.contains("[cart/main]\x1b[0m x"),
            "{out:?}"
        );
        assert_eq!(out, render(&f, &line(b"x\n", 0)));
        assert!(!render(&formatter(OutputFormat::Default), &line(b"x\n", 0)).contains('\x1b'));
        assert!(ColorMode::Auto.enabled(true, None));
        assert!(ColorMode::Auto.enabled(true, Some("")));
        assert!(!ColorMode::Auto.enabled(true, Some("1")));
        assert!(!ColorMode::Auto.enabled(false, None));
        assert!(ColorMode::Always.enabled(false, Some("1")));
        assert!(!ColorMode::Never.enabled(true, None));
    }

    #[test]
    fn highlights_wrap_every_match_when_colours_are_on() {
        let mut f = formatter(OutputFormat::Default);
        f.prefix = false;
        f.highlight = Some(Regex::new("err(or)?").unwrap());
        assert_eq!(render(&f, &line(b"error: err\n", 0)), "error: err\n");
        f.color = true;
        assert_eq!(
            render(&f, &line(b"an error: err\n", 0)),
            "an \x1b[1;41;97merror\x1b[0m: \x1b[1;41;97merr\x1b[0m\n"
        );
    }

    #[test]
    fn include_and_exclude_are_matched_without_the_terminator() {
        let f = LineFilter {
            include: vec![Regex::new("GET|POST").unwrap()],
            exclude: vec![Regex::new("/healthz$").unwrap()],
        };
        assert!(f.keeps(b"GET /cart\n"));
        assert!(!f.keeps(b"GET /healthz\r\n"));
        assert!(!f.keeps(b"DELETE /cart\n"));
        assert!(LineFilter::default().keeps(b"anything"));
    }

    #[test]
    fn local_timestamps_carry_their_offset() {
        let ns = 1_704_164_645_123_456_789;
        assert_eq!(with_offset(ns, 3600), "2024-01-02T04:04:05.123456789+01:00");
        assert_eq!(
            with_offset(ns, -(5 * 3600 + 1800)),
            "2024-01-01T21:34:05.123456789-05:30"
        );
        assert_eq!(with_offset(ns, 0), "2024-01-02T03:04:05.123456789Z");
        let mut f = formatter(OutputFormat::Default);
        f.local = jiff::tz::TimeZone::fixed(jiff::tz::offset(2));
        assert_eq!(
            f.timestamp(ns, TimestampZone::Local),
            "2024-01-02T05:04:05.123456789+02:00"
        );
    }

    #[test]
    fn streams_without_a_pod_are_named_by_node() {
        let l = Labels {
            node: "n1".into(),
            container: "scrape:exporter".into(),
            ..Labels::default()
        };
        assert_eq!(stream_name(&l), "[n1/scrape:exporter]");
    }
}
