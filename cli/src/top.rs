//! `logrelay top`: live CPU and memory per pod and container, from the pods' resources
//! streams (`container: "resources"`, read from cgroups by the agent while watched), like
//! `kubectl top` but streaming: a table redrawn at each sample on a terminal, rows appended in
//! a pipe, or one JSON object per sample with `-o json`.
//!
//! Each sample of a pod arrives as one batch of text exposition records sharing one timestamp
//! (`pod_cpu_usage_cores 0.25`, `container_memory_working_set_bytes{container="main"} 1.2e8`);
//! [`Sample::parse`] reads them (pure).

use std::collections::BTreeMap;

use logrelay_wire::batch::{self, BatchHeader, Kind};
use logrelay_wire::control::ErrorCode;
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::pattern::LabelPattern;
use logrelay_wire::session::{Event, Request};
use logrelay_wire::time::rfc3339_nanos;
use serde::Serialize;

use crate::client::{Client, Raw};
use crate::config::ConnectArgs;
use crate::exit::CliError;
use crate::list::table;
use crate::output::{self, Out};
use crate::select::SelectorArgs;
use crate::session::{self, SessionEnd};

const EXAMPLES: &str = "\
Examples:
  # Every pod this token may read, refreshed as samples arrive
  logrelay top

  # One namespace's main containers
  logrelay top -n shop -c main

  # One JSON object per sample
  logrelay top -n shop -o json | jq '.usage.cpu_cores'";

/// `top -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TopFormat {
    /// A table (redrawn on a terminal, appended in a pipe).
    #[default]
    Default,
    /// One JSON object per sample.
    Json,
}

/// Arguments of `logrelay top`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct TopArgs {
    /// Which pods (`--container`/`--container-regex` pick the container rows shown).
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Where and as whom.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: TopFormat,
}

/// CPU and memory of a pod or container at one sample. Absent figures were not readable (a
/// controller not enabled, no limit set, no previous sample for a rate yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Cores used since the previous sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// CPU time used in total, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage_seconds_total: Option<f64>,
    /// Memory working set (usage minus inactive file cache), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_working_set_bytes: Option<f64>,
    /// Memory usage, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_usage_bytes: Option<f64>,
    /// CPU limit, cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_cores: Option<f64>,
    /// Memory limit, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<f64>,
}

impl Usage {
    fn set(&mut self, suffix: &str, v: f64) {
        let slot = match suffix {
            "cpu_usage_cores" => &mut self.cpu_cores,
            "cpu_usage_seconds_total" => &mut self.cpu_usage_seconds_total,
            "memory_working_set_bytes" => &mut self.memory_working_set_bytes,
            "memory_usage_bytes" => &mut self.memory_usage_bytes,
            "cpu_limit_cores" => &mut self.cpu_limit_cores,
            "memory_limit_bytes" => &mut self.memory_limit_bytes,
            _ => return,
        };
        *slot = Some(v);
    }
}

/// One container's usage in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerUsage {
    /// Its name (from kubelet's log symlinks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The first 12 hex digits of its id, when no name is known (the pod sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Figures.
    #[serde(flatten)]
    pub usage: Usage,
}

impl ContainerUsage {
    /// The name shown: the container's, or its id.
    pub fn name(&self) -> &str {
        self.container
            .as_deref()
            .or(self.container_id.as_deref())
            .unwrap_or("")
    }
}

/// One sample of a pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When it was taken (Unix ns).
    pub timestamp_ns: i64,
    /// The pod's totals.
    pub pod: Usage,
    /// Its containers, by name.
    pub containers: BTreeMap<String, ContainerUsage>,
}

impl Sample {
    /// Adds one exposition record (comments and unknown series are skipped).
    pub fn record(&mut self, line: &str) {
        let line = line.trim_end();
        if line.starts_with('#') || line.is_empty() {
            return;
        }
        let (series, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return,
        };
        let (labels, value_part) = if let Some(r) = rest.strip_prefix('{') {
            match r.find("} ") {
                Some(i) => (parse_labels(&r[..i]), &r[i + 2..]),
                None => return,
            }
        } else {
            (Vec::new(), rest.trim_start())
        };
        let Some(value) = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            return;
        };
        if let Some(suffix) = series.strip_prefix("pod_") {
            self.pod.set(suffix, value);
        } else if let Some(suffix) = series.strip_prefix("container_") {
            let find = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (container, container_id) = (find("container"), find("container_id"));
            let Some(key) = container.clone().or_else(|| container_id.clone()) else {
                return;
            };
            self.containers
                .entry(key)
                .or_insert(ContainerUsage {
                    container,
                    container_id,
                    usage: Usage::default(),
                })
                .usage
                .set(suffix, value);
        }
    }

    /// The samples in a batch of records, one per timestamp, in order.
    pub fn parse(lines: &[batch::Line<'_>]) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for l in lines {
            if out.last().is_none_or(|s| s.timestamp_ns != l.timestamp_ns) {
                out.push(Self {
                    timestamp_ns: l.timestamp_ns,
                    ..Self::default()
                });
            }
            let s = out.last_mut().expect("pushed");
            s.record(&String::from_utf8_lossy(l.message));
        }
        out
    }
}

/// `key="value",…` with the text format's escapes.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches([',', ' ']).to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        match end {
            Some(e) => rest = &rest[e..],
            None => break,
        }
    }
    out
}

/// Cores as kubectl shows them: millicores (`250m`).
pub fn cores(v: Option<f64>) -> String {
    v.map_or_else(
        || "-".into(),
        |c| format!("{}m", (c * 1000.0).round() as i64),
    )
}

/// Bytes as kubectl shows them: mebibytes (`95Mi`).
pub fn mebibytes(v: Option<f64>) -> String {
    v.map_or_else(
        || "-".into(),
        |b| format!("{}Mi", (b / 1_048_576.0).round() as i64),
    )
}

const HEADER: [&str; 7] = [
    "NAMESPACE",
    "POD",
    "CONTAINER",
    "CPU(cores)",
    "CPU LIMIT",
    "MEMORY(bytes)",
    "MEMORY LIMIT",
];

/// Which container rows are shown.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Whole-name regular expression.
    pub regex: Option<LabelPattern>,
}

impl ContainerFilter {
    fn shows(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.regex.as_ref().is_none_or(|r| r.matches(name))
    }

    fn is_empty(&self) -> bool {
        self.name.is_none() && self.regex.is_none()
    }
}

/// The table rows of a pod's sample: the pod's totals (`(pod)`, unless the rows are narrowed
/// to some containers), then each container shown.
pub fn rows(labels: &Labels, s: &Sample, filter: &ContainerFilter) -> Vec<Vec<String>> {
    let row = |name: &str, u: &Usage| {
        vec![
            labels.namespace.clone(),
            labels.pod.clone(),
            name.to_owned(),
            cores(u.cpu_cores),
            cores(u.cpu_limit_cores),
            mebibytes(u.memory_working_set_bytes),
            mebibytes(u.memory_limit_bytes),
        ]
    };
    let mut out = Vec::new();
    if filter.is_empty() {
        out.push(row("(pod)", &s.pod));
    }
    for c in s.containers.values().filter(|c| filter.shows(c.name())) {
        out.push(row(c.name(), &c.usage));
    }
    out
}

/// A sample as one JSON object.
pub fn json(labels: &Labels, s: &Sample, filter: &ContainerFilter) -> String {
    let containers: Vec<&ContainerUsage> = s
        .containers
        .values()
        .filter(|c| filter.shows(c.name()))
        .collect();
    let mut text = serde_json::json!({
        "timestamp": rfc3339_nanos(s.timestamp_ns),
        "labels": labels,
        "usage": s.pod,
        "containers": containers,
    })
    .to_string();
    text.push('\n');
    text
}

struct Top {
    args: TopArgs,
    filter: ContainerFilter,
    /// Latest sample per pod stream, in display order.
    latest: BTreeMap<(String, String, String), (Labels, Sample)>,
    header_printed: bool,
    widths: Vec<usize>,
}

/// Runs `top` until interrupted, the output is closed, or it fails.
pub async fn run(args: TopArgs) -> Result<(), CliError> {
    let conn = crate::config::resolve(&args.connect)?;
    let mut out = Out::stdout();
    let mut top = Top {
        filter: ContainerFilter {
            name: args.select.container.clone(),
            regex: args.select.container_regex.clone(),
        },
        args,
        latest: BTreeMap::new(),
        header_printed: false,
        widths: Vec::new(),
    };
    let r = session::run(&conn, "top", async |client, _| {
        top.session(client, &mut out).await
    })
    .await;
    output::flushed(r, &mut out)
}

impl Top {
    async fn session(&mut self, mut client: Client, out: &mut Out) -> Result<SessionEnd, CliError> {
        let mut selector = self.args.select.selector(StreamKind::Metrics);
        selector.container = Some(logrelay_agent::cgroup::RESOURCES_CONTAINER.into());
        selector.container_regex = None;
        let req = Request::Subscribe {
            id: "top".into(),
            selector,
            tail: Some(0),
            since_ns: None,
            since_seq: None,
            follow: true,
            contains: None,
            matches: None,
        };
        if let Err(e) = client.send(&req).await {
            return session::read_error(e);
        }
        let mut streams: BTreeMap<u64, Labels> = BTreeMap::new();
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
            match msg {
                Raw::Event(Event::Stream { stream, labels, .. }) => {
                    streams.insert(stream, labels);
                }
                Raw::Event(Event::End { stream, .. }) => {
                    if let Some(l) = streams.remove(&stream) {
                        self.latest.remove(&key(&l));
                        if let Some(end) = self.redraw(out)? {
                            return Ok(end);
                        }
                    }
                }
                Raw::Event(Event::Error { code, message, .. }) => {
                    return Err(match code {
                        ErrorCode::Forbidden | ErrorCode::Unauthenticated => {
                            CliError::Auth(format!("the relay refused: {message}"))
                        }
                        _ => CliError::Relay(format!("the relay refused: {message}")),
                    });
                }
                Raw::Event(_) => {}
                Raw::Batch(b) => {
                    let h = BatchHeader::parse(&b)
                        .map_err(|e| CliError::Relay(format!("bad batch: {e}")))?;
                    let Some(labels) = streams.get(&h.stream) else {
                        continue;
                    };
                    if h.kind == Kind::Gap {
                        continue;
                    }
                    let (_, lines) =
                        batch::lines(&b).map_err(|e| CliError::Relay(format!("bad batch: {e}")))?;
                    for s in Sample::parse(&lines) {
                        if let Some(end) = self.sample(labels.clone(), s, out)? {
                            return Ok(end);
                        }
                    }
                }
            }
        }
    }

    fn sample(
        &mut self,
        labels: Labels,
        s: Sample,
        out: &mut Out,
    ) -> Result<Option<SessionEnd>, CliError> {
        if self.args.output == TopFormat::Json {
            let text = json(&labels, &s, &self.filter);
            if let Some(end) = session::written(out.write(text.as_bytes()))? {
                return Ok(Some(end));
            }
            return session::written(out.flush());
        }
        if out.is_terminal() {
            self.latest.insert(key(&labels), (labels, s));
            return self.redraw(out);
        }
        let rows = rows(&labels, &s, &self.filter);
        let header: &[&str] = if self.header_printed { &[] } else { &HEADER };
        self.header_printed = true;
        let text = table(header, &rows, &mut self.widths);
        if let Some(end) = session::written(out.write(text.as_bytes()))? {
            return Ok(Some(end));
        }
        session::written(out.flush())
    }

    /// Redraws the whole table (terminal only).
    fn redraw(&mut self, out: &mut Out) -> Result<Option<SessionEnd>, CliError> {
        if !out.is_terminal() || self.args.output == TopFormat::Json {
            return Ok(None);
        }
        let rows: Vec<Vec<String>> = self
            .latest
            .values()
            .flat_map(|(l, s)| rows(l, s, &self.filter))
            .collect();
        let mut widths = Vec::new();
        let text = format!("\x1b[H\x1b[2J{}", table(&HEADER, &rows, &mut widths));
        if let Some(end) = session::written(out.write(text.as_bytes()))? {
            return Ok(Some(end));
        }
        session::written(out.flush())
    }
}

fn key(l: &Labels) -> (String, String, String) {
    (l.namespace.clone(), l.pod.clone(), l.pod_uid.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total 5
# TYPE pod_cpu_usage_cores gauge
pod_cpu_usage_cores 0.25
pod_memory_working_set_bytes 100000000
pod_memory_usage_bytes 120000000
container_cpu_usage_cores{container=\"main\"} 0.2
container_memory_working_set_bytes{container=\"main\"} 85000000
container_cpu_limit_cores{container=\"main\"} 0.5
container_memory_limit_bytes{container=\"main\"} 268435456
container_memory_working_set_bytes{container_id=\"cccccccccccc\"} 500000
container_memory_working_set_bytes{container=\"we\\\"ird\"} 1
";

    fn sample() -> Sample {
        let mut s = Sample::default();
        for l in SAMPLE.lines() {
            s.record(l);
        }
        s
    }

    #[test]
    fn records_become_pod_and_container_figures() {
        let s = sample();
        assert_eq!(s.pod.cpu_cores, Some(0.25));
        assert_eq!(s.pod.cpu_usage_seconds_total, Some(5.0));
        assert_eq!(s.pod.memory_working_set_bytes, Some(1e8));
        assert_eq!(s.pod.cpu_limit_cores, None);
        let main = &s.containers["main"].usage;
        assert_eq!(
            (
                main.cpu_cores,
                main.cpu_limit_cores,
                main.memory_limit_bytes
            ),
            (Some(0.2), Some(0.5), Some(268_435_456.0))
        );
        assert_eq!(
            s.containers["cccccccccccc"].container_id.as_deref(),
            Some("cccccccccccc")
        );
        assert!(s.containers.contains_key("we\"ird"));
    }

    #[test]
    fn rows_read_like_kubectl_top() {
        let labels = Labels {
            namespace: "team".into(),
            pod: "task-a".into(),
            ..Labels::default()
        };
        let r = rows(&labels, &sample(), &ContainerFilter::default());
        assert_eq!(r[0], ["team", "task-a", "(pod)", "250m", "-", "95Mi", "-"]);
        assert_eq!(
            r[1],
            ["team", "task-a", "cccccccccccc", "-", "-", "0Mi", "-"]
        );
        assert_eq!(
            r[2],
            ["team", "task-a", "main", "200m", "500m", "81Mi", "256Mi"]
        );
        let only_main = ContainerFilter {
            name: Some("main".into()),
            regex: None,
        };
        assert_eq!(rows(&labels, &sample(), &only_main).len(), 1);
        let v: serde_json::Value =
            serde_json::from_str(&json(&labels, &sample(), &only_main)).unwrap();
        assert_eq!(v["usage"]["cpu_cores"], 0.25);
        assert_eq!(v["containers"][0]["container"], "main");
        assert_eq!(v["containers"][0]["memory_limit_bytes"], 268_435_456.0);
        assert_eq!(v["labels"]["pod"], "task-a");
    }
}
