//! `logrelay tail`: print a stream's lines like `kubectl logs -f`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use logrelay_wire::labels::StreamKind;
use logrelay_wire::pattern::{LabelPattern, LinePattern};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use logrelay_wire::time::rfc3339_nanos;

use crate::client::{Client, ClientError, Incoming};

/// Arguments of `logrelay tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Relay WebSocket URL.
    #[arg(
        long,
        env = "LOGRELAY_URL",
        default_value = "ws://127.0.0.1:8080/v1/subscribe"
    )]
    pub url: String,
    /// Namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Pod name.
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Container name.
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Regular expression the whole pod name must match (e.g. `train-.*`).
    #[arg(long)]
    pub pod_regex: Option<LabelPattern>,
    /// Regular expression the whole container name must match.
    #[arg(long)]
    pub container_regex: Option<LabelPattern>,
    /// Task identity: project.
    #[arg(long)]
    pub project: Option<String>,
    /// Task identity: domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Task identity: run (execution).
    #[arg(long)]
    pub run: Option<String>,
    /// Task identity: action (node of the run).
    #[arg(long)]
    pub action: Option<String>,
    /// Task identity: attempt.
    #[arg(long)]
    pub attempt: Option<String>,
    /// Watch metrics streams (scrape targets, pod resources) instead of logs.
    #[arg(long)]
    pub metrics: bool,
    /// Lines of backlog to print first.
    #[arg(long, default_value_t = logrelay_wire::DEFAULT_TAIL_LINES)]
    pub tail: u32,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// Only lines containing this text (filtered in the agent: other lines never leave the
    /// node). For metrics streams: a comma-separated list of metric names, `prefix_*` allowed.
    #[arg(long)]
    pub contains: Option<String>,
    /// Only lines a regular expression matches somewhere (e.g. `'ERROR|WARN'`; Rust `regex`
    /// syntax, unanchored, the line terminator left out), filtered in the agent like
    /// `--contains`; both may be given. Log streams only.
    #[arg(long, value_name = "REGEX", conflicts_with = "metrics")]
    pub matches: Option<LinePattern>,
    /// Print the backlog and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// Prefix each line with `[pod/container]`.
    #[arg(long)]
    pub prefix: bool,
    /// PEM CA bundle to trust for `wss://`.
    #[arg(long, env = "LOGRELAY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Bearer token.
    #[arg(long, env = "LOGRELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl TailArgs {
    /// The selector these arguments describe.
    pub fn selector(&self) -> Selector {
        Selector {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            pod_regex: self.pod_regex.clone(),
            container_regex: self.container_regex.clone(),
            project: self.project.clone(),
            domain: self.domain.clone(),
            run: self.run.clone(),
            action: self.action.clone(),
            attempt: self.attempt.clone(),
            kind: self.metrics.then_some(StreamKind::Metrics),
            ..Selector::default()
        }
    }
}

/// Runs `tail` until the relay closes the session or the output is closed.
pub async fn run(args: TailArgs) -> Result<(), ClientError> {
    let roots = match &args.ca_file {
        Some(p) => Some(
            logrelay_tls::roots_from_pem_file(p)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        ),
        None => None,
    };
    let mut client = Client::connect(&args.url, roots, args.token.as_deref()).await?;
    client
        .send(&Request::Subscribe {
            id: "tail".into(),
            selector: args.selector(),
            tail: Some(args.tail),
            since_ns: None,
            since_seq: None,
            follow: !args.no_follow,
            contains: args.contains.clone(),
            matches: args.matches.clone(),
        })
        .await?;
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    let stdout = std::io::stdout();
    while let Some(item) = client.next().await? {
        match item {
            Incoming::Event(Event::Stream { stream, labels, .. }) => {
                names.insert(stream, format!("[{}/{}]", labels.pod, labels.container));
            }
            Incoming::Event(Event::Error { code, message, .. }) => {
                return Err(ClientError::Protocol(format!(
                    "{}: {message}",
                    code.as_str()
                )));
            }
            Incoming::Event(Event::Paused { stream, reason }) => {
                let name = names.get(&stream).map_or("", String::as_str);
                eprintln!("logrelay tail: {name} paused ({reason}); waiting for it to come back");
            }
            Incoming::Event(Event::Resumed { stream }) => {
                let name = names.get(&stream).map_or("", String::as_str);
                eprintln!("logrelay tail: {name} resumed");
            }
            Incoming::Event(Event::Gap {
                lines,
                bytes,
                reason,
                exact,
                ..
            }) => {
                if exact {
                    eprintln!("logrelay tail: {lines} lines ({bytes} bytes) missed: {reason}");
                } else {
                    eprintln!("logrelay tail: lines missed, how many is unknown: {reason}");
                }
            }
            Incoming::Event(Event::Renumbered { stream, .. }) => {
                let name = names.get(&stream).map_or("", String::as_str);
                eprintln!("logrelay tail: {name} renumbered by its agent; nothing missed");
            }
            Incoming::Event(Event::End { stream, reason }) if reason == "complete" => {
                // A one-off read of this stream is done; exit once all of them are.
                names.remove(&stream);
                if names.is_empty() {
                    return Ok(());
                }
            }
            Incoming::Event(Event::End { stream, reason }) => {
                eprintln!(
                    "logrelay tail: stream {} ended: {reason}",
                    names.get(&stream).map_or("", String::as_str)
                );
            }
            Incoming::Event(_) => {}
            Incoming::AgentGap { lines, exact, .. } => {
                if exact {
                    eprintln!("logrelay tail: {lines} lines missed at the agent");
                } else {
                    eprintln!("logrelay tail: lines rotated away at the agent, uncounted");
                }
            }
            Incoming::Lines(lines) => {
                let mut out = stdout.lock();
                for l in lines {
                    // Never print a line twice (backfill and live overlap after a reconnect).
                    if let Some(&(epoch, seq)) = last.get(&l.stream)
                        && epoch == l.epoch
                        && l.seq <= seq
                    {
                        continue;
                    }
                    last.insert(l.stream, (l.epoch, l.seq));
                    let mut line = Vec::with_capacity(l.message.len() + 48);
                    if args.prefix {
                        line.extend_from_slice(
                            names.get(&l.stream).map_or("", String::as_str).as_bytes(),
                        );
                        line.push(b' ');
                    }
                    if args.timestamps {
                        line.extend_from_slice(rfc3339_nanos(l.timestamp_ns).as_bytes());
                        line.push(b' ');
                    }
                    line.extend_from_slice(&l.message);
                    if !l.message.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    if out.write_all(&line).is_err() {
                        return Ok(());
                    }
                }
                if out.flush().is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
