//! `logrelay list`: the streams the token may read, with their labels, kind and whether their
//! agent is connected; `--watch` goes on printing changes as they happen.

use std::collections::HashMap;
use std::fmt::Write as _;

use logrelay_wire::control::ErrorCode;
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::session::{Event, Request, StreamEntry};

use crate::client::{Client, Raw};
use crate::config::ConnectArgs;
use crate::exit::CliError;
use crate::output::{self, Out};
use crate::select::SelectorArgs;
use crate::session::{self, SessionEnd};

const EXAMPLES: &str = "\
Examples:
  # Everything this token may read
  logrelay list

  # One namespace, every label
  logrelay list -n shop -o wide

  # As JSON lines, for jq
  logrelay list -o json | jq -r '.labels.pod'

  # Keep watching: streams that appear (ADDED), go (REMOVED) or change liveness (MODIFIED)
  logrelay list --watch";

/// `list -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ListFormat {
    /// A table: namespace, pod, container, restart, kind, live.
    #[default]
    Default,
    /// A table with every label and the relay's stream id.
    Wide,
    /// One JSON object per stream: `stream`, `labels`, `live` (with `--watch`, also `event`).
    Json,
}

/// `list --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KindArg {
    /// Log, metrics and events streams.
    #[default]
    All,
    /// Container logs only.
    Log,
    /// Metrics streams only (scrape targets, pod resources).
    Metrics,
    /// Pods' Kubernetes events streams only.
    Events,
}

/// Arguments of `logrelay list`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ListArgs {
    /// Which streams.
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Where and as whom.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Which kinds of stream.
    #[arg(long, value_enum, default_value_t)]
    pub kind: KindArg,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: ListFormat,
    /// After the list, print each change as it happens (until interrupted).
    #[arg(long, short = 'w')]
    pub watch: bool,
}

/// A change to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Listed or appeared.
    Added,
    /// Liveness changed.
    Modified,
    /// Went.
    Removed,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Removed => "REMOVED",
        }
    }
}

/// Columns of the default table.
const COLUMNS: [&str; 6] = ["NAMESPACE", "POD", "CONTAINER", "RESTART", "KIND", "LIVE"];
/// Extra columns of the wide table.
const WIDE: [&str; 9] = [
    "NODE", "CLUSTER", "POD_UID", "PROJECT", "DOMAIN", "RUN", "ACTION", "ATTEMPT", "STREAM",
];

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// The cells of a row.
pub fn cells(e: &StreamEntry, wide: bool) -> Vec<String> {
    let l = &e.labels;
    let mut row = vec![
        dash(&l.namespace),
        dash(&l.pod),
        dash(&l.container),
        l.restart.to_string(),
        match l.kind {
            StreamKind::Log => "log".into(),
            StreamKind::Metrics => "metrics".into(),
            StreamKind::Events => "events".into(),
        },
        if e.live { "yes" } else { "no" }.into(),
    ];
    if wide {
        let opt = |o: &Option<String>| dash(o.as_deref().unwrap_or(""));
        row.extend([
            dash(&l.node),
            dash(&l.cluster),
            dash(&l.pod_uid),
            opt(&l.project),
            opt(&l.domain),
            opt(&l.run),
            opt(&l.action),
            opt(&l.attempt),
            e.stream.to_string(),
        ]);
    }
    row
}

/// A table: header and rows, columns padded to their widest cell (at least `widths`, which it
/// updates, so later rows of a watch line up with earlier ones).
pub fn table(header: &[&str], rows: &[Vec<String>], widths: &mut Vec<usize>) -> String {
    widths.resize(header.len(), 0);
    for (i, h) in header.iter().enumerate() {
        widths[i] = widths[i].max(h.len());
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    if !header.is_empty() {
        line(&mut header.iter().copied());
    }
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// One entry as a JSON line (with its `event` in a watch).
pub fn json_line(e: &StreamEntry, change: Option<Change>, reason: Option<&str>) -> String {
    let mut v = serde_json::json!({ "stream": e.stream, "labels": e.labels, "live": e.live });
    if let Some(c) = change {
        v["event"] = c.word().to_lowercase().into();
    }
    if let Some(r) = reason {
        v["reason"] = r.into();
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

struct Lister {
    args: ListArgs,
    /// Streams known, by labels: (relay id, live).
    known: HashMap<Labels, StreamEntry>,
    /// Relay id → labels (this session).
    ids: HashMap<u64, Labels>,
    widths: Vec<usize>,
    printed_header: bool,
}

/// Runs `list`.
pub async fn run(args: ListArgs) -> Result<(), CliError> {
    let conn = crate::config::resolve(&args.connect)?;
    let mut out = Out::stdout();
    let mut lister = Lister {
        args,
        known: HashMap::new(),
        ids: HashMap::new(),
        widths: Vec::new(),
        printed_header: false,
    };
    let r = session::run(&conn, "list", async |client, _| {
        lister.session(client, &mut out).await
    })
    .await;
    output::flushed(r, &mut out)
}

impl Lister {
    fn kinds(&self) -> Vec<StreamKind> {
        match self.args.kind {
            KindArg::All => vec![StreamKind::Log, StreamKind::Metrics, StreamKind::Events],
            KindArg::Log => vec![StreamKind::Log],
            KindArg::Metrics => vec![StreamKind::Metrics],
            KindArg::Events => vec![StreamKind::Events],
        }
    }

    async fn session(&mut self, mut client: Client, out: &mut Out) -> Result<SessionEnd, CliError> {
        let kinds = self.kinds();
        for k in &kinds {
            let req = Request::List {
                selector: self.args.select.selector(*k),
                id: Some(format!("{k:?}").to_lowercase()),
                watch: self.args.watch,
            };
            if let Err(e) = client.send(&req).await {
                return session::read_error(e);
            }
        }
        let mut answers: Vec<StreamEntry> = Vec::new();
        let mut pending = kinds.len();
        self.ids.clear();
        let gone = crate::output::reader_gone();
        tokio::pin!(gone);
        loop {
            let msg = tokio::select! {
                r = session::next(&mut client) => match r? {
                    Ok(m) => m,
                    Err(end) => return Ok(end),
                },
                () = &mut gone => return Ok(SessionEnd::Done),
            };
            let Raw::Event(event) = msg else { continue };
            match event {
                Event::Streams { streams, .. } if pending > 0 => {
                    answers.extend(streams);
                    pending -= 1;
                    if pending == 0 {
                        answers.sort_by(|a, b| sort_key(&a.labels).cmp(&sort_key(&b.labels)));
                        let text = self.listed(std::mem::take(&mut answers));
                        if let Some(end) = session::written(out.write(text.as_bytes()))? {
                            return Ok(end);
                        }
                        if let Some(end) = session::written(out.flush())? {
                            return Ok(end);
                        }
                        if !self.args.watch {
                            return Ok(SessionEnd::Done);
                        }
                    }
                }
                Event::Catalog { added, removed, .. } => {
                    let mut text = String::new();
                    for e in added {
                        let change = match self.known.get(&e.labels) {
                            Some(k) if k.live == e.live && k.stream == e.stream => continue,
                            Some(_) => Change::Modified,
                            None => Change::Added,
                        };
                        self.ids.insert(e.stream, e.labels.clone());
                        self.known.insert(e.labels.clone(), e.clone());
                        text.push_str(&self.row(&e, change, None));
                    }
                    for r in removed {
                        let Some(labels) = self.ids.remove(&r.stream) else {
                            continue;
                        };
                        if let Some(e) = self.known.remove(&labels) {
                            text.push_str(&self.row(&e, Change::Removed, Some(r.reason.as_str())));
                        }
                    }
                    if let Some(end) = session::written(out.write(text.as_bytes()))? {
                        return Ok(end);
                    }
                    if let Some(end) = session::written(out.flush())? {
                        return Ok(end);
                    }
                }
                Event::Error { code, message, .. } => {
                    return Err(match code {
                        ErrorCode::Forbidden | ErrorCode::Unauthenticated => {
                            CliError::Auth(format!("the relay refused: {message}"))
                        }
                        _ => CliError::Relay(format!("the relay refused: {message}")),
                    });
                }
                _ => {}
            }
        }
    }

    /// The text for a complete answer: the whole table the first time; after a reconnection,
    /// only what changed.
    fn listed(&mut self, entries: Vec<StreamEntry>) -> String {
        let first = !self.printed_header;
        let mut text = String::new();
        if first && !self.args.watch {
            if entries.is_empty() && self.args.output != ListFormat::Json {
                crate::output::notice("list", "no stream matches the selector");
            }
            match self.args.output {
                ListFormat::Json => {
                    for e in &entries {
                        text.push_str(&json_line(e, None, None));
                    }
                }
                f => {
                    let wide = f == ListFormat::Wide;
                    let rows: Vec<Vec<String>> = entries.iter().map(|e| cells(e, wide)).collect();
                    if !rows.is_empty() {
                        text = table(&header(wide, false), &rows, &mut self.widths);
                    }
                }
            }
            self.printed_header = true;
            return text;
        }
        let mut rows = Vec::new();
        for e in entries {
            self.ids.insert(e.stream, e.labels.clone());
            let change = match self.known.get(&e.labels) {
                Some(k) if k.live == e.live && k.stream == e.stream => continue,
                Some(_) => Change::Modified,
                None => Change::Added,
            };
            self.known.insert(e.labels.clone(), e.clone());
            rows.push((e, change));
        }
        if self.args.output == ListFormat::Json {
            for (e, c) in &rows {
                text.push_str(&json_line(e, Some(*c), None));
            }
        } else {
            let wide = self.args.output == ListFormat::Wide;
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|(e, c)| {
                    let mut r = vec![c.word().to_owned()];
                    r.extend(cells(e, wide));
                    r
                })
                .collect();
            let h = header(wide, true);
            text = table(if first { &h } else { &[] }, &cells, &mut self.widths);
        }
        self.printed_header = true;
        text
    }

    fn row(&mut self, e: &StreamEntry, change: Change, reason: Option<&str>) -> String {
        if self.args.output == ListFormat::Json {
            return json_line(e, Some(change), reason);
        }
        let wide = self.args.output == ListFormat::Wide;
        let mut r = vec![change.word().to_owned()];
        r.extend(cells(e, wide));
        if let Some(reason) = reason {
            let last = r.len() - 1;
            r[last] = format!("{} ({reason})", r[last]);
        }
        table(&[], &[r], &mut self.widths)
    }
}

fn header(wide: bool, watch: bool) -> Vec<&'static str> {
    let mut h = Vec::new();
    if watch {
        h.push("EVENT");
    }
    h.extend(COLUMNS);
    if wide {
        h.extend(WIDE);
    }
    h
}

fn sort_key(l: &Labels) -> (&str, &str, &str, u32, bool, &str) {
    (
        &l.namespace,
        &l.pod,
        &l.container,
        l.restart,
        l.kind != StreamKind::Log,
        &l.node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pod: &str, container: &str, live: bool) -> StreamEntry {
        StreamEntry {
            stream: 7,
            labels: Labels {
                namespace: "shop".into(),
                pod: pod.into(),
                container: container.into(),
                ..Labels::default()
            },
            live,
        }
    }

    #[test]
    fn tables_line_up_and_show_liveness() {
        let rows = vec![
            cells(&entry("cart", "main", true), false),
            cells(&entry("checkout-7f9", "sidecar", false), false),
        ];
        let t = table(&header(false, false), &rows, &mut Vec::new());
        assert_eq!(
            t,
            "NAMESPACE   POD            CONTAINER   RESTART   KIND   LIVE\n\
             shop        cart           main        0         log    yes\n\
             shop        checkout-7f9   sidecar     0         log    no\n"
        );
        let wide = cells(&entry("cart", "main", true), true);
        assert_eq!(wide.len(), COLUMNS.len() + WIDE.len());
        assert_eq!(wide.last().unwrap(), "7");
    }

    #[test]
    fn json_lines_carry_the_entry_and_the_change() {
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&entry("cart", "main", false), None, None)).unwrap();
        assert_eq!(v["stream"], 7);
        assert_eq!(v["labels"]["pod"], "cart");
        assert_eq!(v["live"], false);
        assert!(v.get("event").is_none());
        let v: serde_json::Value = serde_json::from_str(&json_line(
            &entry("cart", "main", false),
            Some(Change::Removed),
            Some("container_removed"),
        ))
        .unwrap();
        assert_eq!(
            (v["event"].as_str(), v["reason"].as_str()),
            (Some("removed"), Some("container_removed"))
        );
    }
}
