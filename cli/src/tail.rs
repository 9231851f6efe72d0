//! `logrelay tail`: the lines of every stream a selector matches, like `kubectl logs -f` for
//! one container and stern for many, resumed across reconnections without losing or repeating
//! a line silently.
//!
//! How a session runs: a watched `list` of the selector names the streams; each gets a
//! subscription of its own (an exact selector of its labels), so that after a reconnection each
//! is resumed with `since_seq` in its own epoch ([`crate::resume`]). Streams that appear later
//! are picked up from the watch's `catalog` events. Requests are paced (a burst of
//! [`PACE_BURST`], then [`PACE_PER_SEC`] a second) to stay under the relay's request limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use logrelay_wire::batch::{self, BatchHeader, Kind};
use logrelay_wire::control::{ErrorCode, SeqPos};
use logrelay_wire::labels::{Labels, StreamKind};
use logrelay_wire::pattern::LinePattern;
use logrelay_wire::reason::{EndReason, GapReason, PauseReason};
use logrelay_wire::session::{Event, Request};
use regex::bytes::Regex;

use crate::client::{Client, Raw};
use crate::config::ConnectArgs;
use crate::exit::CliError;
use crate::format::{ColorMode, Formatter, LineFilter, OutputFormat, StreamView, TimestampZone};
use crate::output::{self, Out, notice};
use crate::resume::{Hole, Tracker, Verdict};
use crate::select::{SelectorArgs, exact};
use crate::session::{self, SessionEnd};
use crate::since::Since;

/// Requests sent at once before pacing starts.
pub const PACE_BURST: u32 = 20;
/// Requests per second once the burst is spent (the relay allows 20 by default).
pub const PACE_PER_SEC: u32 = 10;
/// Id of the watched list of a `tail` session.
const LIST_ID: &str = "streams";
/// Id of the watched list of the events streams (`--events`).
const EVENTS_LIST_ID: &str = "events";

const EXAMPLES: &str = "\
Examples:
  # One container, like kubectl logs -f (no prefix when --pod and --container are given)
  logrelay tail -n shop -p cart -c main

  # Every pod of a training run, stern-style, the last 10 lines of each first
  logrelay tail --pod-regex 'train-.*' --tail 10

  # Errors of the last hour, filtered in the agent, with timestamps in local time
  logrelay tail -n shop --since 1h --matches 'ERROR|WARN' --timestamps=local

  # Lines as JSON for jq
  logrelay tail -n shop -o json | jq -r 'select(.stream == \"stderr\") .message'

  # What is there now, then exit
  logrelay tail -n shop --no-follow

  # A task's logs and its pods' Kubernetes events (why is it not starting?), interleaved
  logrelay tail --project flytesnacks --run f3a --events";

/// Arguments of `logrelay tail`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct TailArgs {
    /// Which streams.
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Where and as whom.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Watch metrics streams (scrape targets, pod resources) instead of logs.
    #[arg(long)]
    pub metrics: bool,
    /// Also follow the Kubernetes events of the selected pods (streams of kind `events`,
    /// container `events`; agents with `--kube-pods`), interleaved with their logs, each line
    /// marked `[event]`. `--container`/`--container-regex` select log streams only.
    #[arg(long, conflicts_with = "metrics")]
    pub events: bool,
    /// Lines of backlog per stream to print first [default: 1000, or 0 with --since: every
    /// line since then].
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only lines since then: a duration back from now (`10m`, `1h30m`, `45s`, `2d`) or an
    /// RFC 3339 time (`2024-01-02T03:04:05Z`).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<Since>,
    /// Print each line's timestamp (RFC 3339, nanoseconds) before it, in UTC (`--timestamps`,
    /// `--timestamps=utc`) or local time (`--timestamps=local`).
    #[arg(long, value_name = "ZONE", num_args = 0..=1, require_equals = true, default_missing_value = "utc", value_enum)]
    pub timestamps: Option<TimestampZone>,
    /// Only lines containing this text (filtered in the agent: other lines never leave the
    /// node). For metrics streams: a comma-separated list of metric names, `prefix_*` allowed.
    #[arg(long, value_name = "TEXT")]
    pub contains: Option<String>,
    /// Only lines a regular expression matches somewhere (e.g. `'ERROR|WARN'`; Rust `regex`
    /// syntax, unanchored, the line terminator left out), filtered in the agent like
    /// `--contains`; both may be given. Log streams only.
    #[arg(long, value_name = "REGEX", conflicts_with = "metrics")]
    pub matches: Option<LinePattern>,
    /// Print only lines this regular expression matches (in this client, after the agent's
    /// filters). Repeat for any of several.
    #[arg(long, value_name = "REGEX")]
    pub include: Vec<Regex>,
    /// Leave out lines this regular expression matches (in this client). Repeatable.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Vec<Regex>,
    /// Highlight what this regular expression matches (when colours are on).
    #[arg(long, value_name = "REGEX")]
    pub highlight: Option<Regex>,
    /// Output format: `default` (prefix, timestamp, message), `raw` (the message bytes only)
    /// or `json` (one object per line: timestamp, labels, stream, epoch, seq, message).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Colour the prefix per pod and container, and highlights: `auto` (only on a terminal,
    /// and not with NO_COLOR set), `always`, `never`.
    #[arg(long, value_enum, default_value_t, value_name = "WHEN")]
    pub color: ColorMode,
    /// Prefix each line with `[pod/container]` [default: unless --pod and --container name
    /// one container].
    #[arg(long, overrides_with = "no_prefix")]
    pub prefix: bool,
    /// Never prefix lines.
    #[arg(long, overrides_with = "prefix")]
    pub no_prefix: bool,
    /// Print the backlog and exit instead of following (exit code 4 when nothing matches).
    #[arg(long)]
    pub no_follow: bool,
    /// Follow at most this many streams; a selector matching more fails at start (exit code
    /// 6), and streams appearing beyond it later are reported and skipped.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_streams: usize,
}

impl TailArgs {
    /// The selector these arguments describe.
    pub fn selector(&self) -> logrelay_wire::selector::Selector {
        self.select.selector(self.kind())
    }

    /// The selector of the events streams of the selected pods (`--events`).
    pub fn events_selector(&self) -> logrelay_wire::selector::Selector {
        logrelay_wire::selector::Selector {
            container: None,
            container_regex: None,
            ..self.select.selector(StreamKind::Events)
        }
    }

    fn kind(&self) -> StreamKind {
        if self.metrics {
            StreamKind::Metrics
        } else {
            StreamKind::Log
        }
    }
}

/// One stream followed.
#[derive(Debug)]
struct Followed {
    view: StreamView,
    tracker: Tracker,
    /// Ended (a one-off read complete, or the stream went).
    done: bool,
}

/// What lasts across sessions.
#[derive(Debug)]
struct Tail {
    args: TailArgs,
    fmt: Formatter,
    filter: LineFilter,
    since_ns: Option<i64>,
    streams: HashMap<Labels, Followed>,
    refused: HashSet<Labels>,
    listed_once: bool,
    buf: Vec<u8>,
}

/// Paces requests: a burst, then a steady rate.
#[derive(Debug)]
struct Pacer {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Pacer {
    fn new() -> Self {
        Self {
            tokens: f64::from(PACE_BURST),
            last: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * f64::from(PACE_PER_SEC))
        .min(f64::from(PACE_BURST));
        self.last = now;
    }

    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn ready(&mut self) {
        self.refill();
        let short = (1.0 - self.tokens).max(0.0) / f64::from(PACE_PER_SEC);
        tokio::time::sleep(Duration::from_secs_f64(short)).await;
    }
}

/// What lasts one session.
#[derive(Debug)]
struct Conn {
    /// Subscription id → stream.
    subs: HashMap<String, Labels>,
    /// Relay stream id (of `stream` events) → stream.
    relay: HashMap<u64, Labels>,
    /// Streams with a subscription in this session.
    attached: HashSet<Labels>,
    /// Requests not sent yet.
    queue: VecDeque<Request>,
    /// Requests sent and not answered, in order (the relay answers in order).
    awaiting: VecDeque<Request>,
    pacer: Pacer,
    next_id: u64,
    listed: bool,
}

impl Conn {
    fn new() -> Self {
        Self {
            subs: HashMap::new(),
            relay: HashMap::new(),
            attached: HashSet::new(),
            queue: VecDeque::new(),
            awaiting: VecDeque::new(),
            pacer: Pacer::new(),
            next_id: 0,
            listed: false,
        }
    }

    fn answered(&mut self, id: Option<&str>) -> Option<Request> {
        let at = match id {
            Some(id) => self
                .awaiting
                .iter()
                .position(|r| request_id(r) == Some(id))?,
            None => 0,
        };
        self.awaiting.remove(at)
    }
}

fn request_id(r: &Request) -> Option<&str> {
    match r {
        Request::Subscribe { id, .. } | Request::Unsubscribe { id } => Some(id),
        Request::List { id, .. } => id.as_deref(),
    }
}

/// Runs `tail` until it is done (a one-off read finished, the output closed) or fails.
pub async fn run(args: TailArgs) -> Result<(), CliError> {
    let conn = crate::config::resolve(&args.connect)?;
    let mut out = Out::stdout();
    let color = args
        .color
        .enabled(out.is_terminal(), std::env::var("NO_COLOR").ok().as_deref());
    let prefix = if args.prefix {
        true
    } else if args.no_prefix {
        false
    } else {
        !args.select.names_one_container()
    };
    let fmt = Formatter {
        format: args.output,
        prefix,
        color,
        timestamps: args.timestamps,
        highlight: args.highlight.clone(),
        local: if args.timestamps == Some(TimestampZone::Local) {
            jiff::tz::TimeZone::system()
        } else {
            jiff::tz::TimeZone::UTC
        },
    };
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut tail = Tail {
        filter: LineFilter {
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        },
        since_ns: args.since.map(|s| s.unix_ns(now_ns)),
        args,
        fmt,
        streams: HashMap::new(),
        refused: HashSet::new(),
        listed_once: false,
        buf: Vec::with_capacity(128 * 1024),
    };
    let result = session::run(&conn, "tail", async |client, _| {
        tail.session(client, &mut out).await
    })
    .await;
    output::flushed(result, &mut out)
}

impl Tail {
    async fn session(&mut self, mut client: Client, out: &mut Out) -> Result<SessionEnd, CliError> {
        let mut conn = Conn::new();
        conn.queue.push_back(Request::List {
            selector: self.args.selector(),
            id: Some(LIST_ID.into()),
            watch: !self.args.no_follow,
        });
        if self.args.events {
            conn.queue.push_back(Request::List {
                selector: self.args.events_selector(),
                id: Some(EVENTS_LIST_ID.into()),
                watch: !self.args.no_follow,
            });
        }
        let gone = crate::output::reader_gone();
        tokio::pin!(gone);
        loop {
            while !conn.queue.is_empty() && conn.pacer.take() {
                let req = conn.queue.pop_front().expect("not empty");
                if let Err(e) = client.send(&req).await {
                    return session::read_error(e);
                }
                conn.awaiting.push_back(req);
            }
            let ready = futures_util::FutureExt::now_or_never(client.next_raw());
            let msg = match ready {
                Some(Ok(Some(m))) => m,
                Some(Ok(None)) => {
                    return Ok(SessionEnd::Lost("the relay closed the connection".into()));
                }
                Some(Err(e)) => return session::read_error(e),
                None => {
                    if let Some(end) = session::written(out.flush())? {
                        return Ok(end);
                    }
                    let pacing = !conn.queue.is_empty();
                    tokio::select! {
                        r = session::next(&mut client) => match r? {
                            Ok(m) => m,
                            Err(end) => return Ok(end),
                        },
                        () = &mut gone => return Ok(SessionEnd::Done),
                        () = conn.pacer.ready(), if pacing => continue,
                    }
                }
            };
            if let Some(end) = self.handle(msg, &mut conn, out)? {
                return Ok(end);
            }
        }
    }

    /// Handles one message; `Some` ends the session.
    fn handle(
        &mut self,
        msg: Raw,
        conn: &mut Conn,
        out: &mut Out,
    ) -> Result<Option<SessionEnd>, CliError> {
        let event = match msg {
            Raw::Batch(b) => return self.batch(&b, conn, out),
            Raw::Event(e) => e,
        };
        match event {
            Event::Streams {
                id: Some(id),
                streams,
            } if id == LIST_ID => {
                conn.answered(Some(LIST_ID));
                conn.listed = true;
                if !self.listed_once {
                    self.listed_once = true;
                    if streams.len() > self.args.max_streams {
                        return Err(CliError::TooManyStreams {
                            matched: streams.len(),
                            max: self.args.max_streams,
                        });
                    }
                    if streams.is_empty() {
                        if self.args.no_follow {
                            return Err(CliError::NotFound(
                                "no stream matches the selector".into(),
                            ));
                        }
                        notice(
                            "tail",
                            "no stream matches the selector yet; waiting for one",
                        );
                    }
                }
                for entry in streams {
                    self.attach(conn, entry.labels);
                }
            }
            Event::Streams {
                id: Some(id),
                streams,
            } if id == EVENTS_LIST_ID => {
                conn.answered(Some(EVENTS_LIST_ID));
                for entry in streams {
                    self.attach(conn, entry.labels);
                }
            }
            Event::Catalog { id, added, .. } if id == LIST_ID || id == EVENTS_LIST_ID => {
                for entry in added {
                    self.attach(conn, entry.labels);
                }
            }
            Event::Subscribed { id } => {
                conn.answered(Some(&id));
            }
            Event::Stream { id, stream, .. } => {
                if let Some(key) = conn.subs.get(&id) {
                    conn.relay.insert(stream, key.clone());
                }
            }
            Event::Gap {
                stream,
                from,
                lines,
                bytes,
                reason,
                rest_of_epoch,
                exact,
            } => {
                if let Some(st) = conn
                    .relay
                    .get(&stream)
                    .and_then(|k| self.streams.get_mut(k))
                {
                    if rest_of_epoch {
                        st.tracker.epoch_lost(from.epoch);
                    } else {
                        st.tracker.gap(from.epoch, from.seq, lines);
                    }
                    let text = relay_gap(&reason, lines, bytes, exact, rest_of_epoch, from.seq);
                    notice("tail", &format!("{} gap: {text}", st.view.name));
                }
            }
            Event::Renumbered { stream, from, to } => {
                if let Some(st) = conn
                    .relay
                    .get(&stream)
                    .and_then(|k| self.streams.get_mut(k))
                {
                    // A new numbering that continues the old one: expected, nothing missed.
                    st.tracker.epoch_lost(from.epoch);
                    notice(
                        "tail",
                        &format!(
                            "{} renumbered by its agent (epoch {} from sequence {}): nothing missed",
                            st.view.name, to.epoch, to.seq
                        ),
                    );
                }
            }
            Event::Paused { stream, reason } => {
                if let Some(st) = conn.relay.get(&stream).and_then(|k| self.streams.get(k)) {
                    notice(
                        "tail",
                        &format!(
                            "{} paused: {}; waiting for it to come back",
                            st.view.name,
                            pause_words(&reason)
                        ),
                    );
                }
            }
            Event::Resumed { stream } => {
                if let Some(st) = conn.relay.get(&stream).and_then(|k| self.streams.get(k)) {
                    notice("tail", &format!("{} resumed", st.view.name));
                }
            }
            Event::End { stream, reason } => {
                if let Some(key) = conn.relay.remove(&stream) {
                    conn.attached.remove(&key);
                    if let Some(st) = self.streams.get_mut(&key) {
                        st.done = true;
                        if reason != EndReason::Complete {
                            notice(
                                "tail",
                                &format!("{} ended: {}", st.view.name, end_words(&reason)),
                            );
                        }
                    }
                }
                return self.finished(conn);
            }
            Event::Error { code, message, id } => {
                let req = conn.answered(id.as_deref());
                match code {
                    ErrorCode::Forbidden | ErrorCode::Unauthenticated => {
                        return Err(CliError::Auth(format!("the relay refused: {message}")));
                    }
                    ErrorCode::LimitExceeded if id.is_none() => {
                        // A request dropped by the relay's rate limit: send it again.
                        if let Some(r) = req {
                            conn.queue.push_front(r);
                        }
                    }
                    ErrorCode::LimitExceeded => {
                        if let Some(key) = id.as_deref().and_then(|i| conn.subs.get(i)).cloned() {
                            conn.attached.remove(&key);
                            if let Some(st) = self.streams.get_mut(&key) {
                                st.done = true;
                                notice(
                                    "tail",
                                    &format!("not following {}: {message}", st.view.name),
                                );
                            }
                        }
                        return self.finished(conn);
                    }
                    _ => return Err(CliError::Relay(format!("the relay refused: {message}"))),
                }
            }
            _ => {}
        }
        self.finished(conn)
    }

    /// A one-off read ends once every stream listed is done.
    fn finished(&self, conn: &Conn) -> Result<Option<SessionEnd>, CliError> {
        let done = self.args.no_follow
            && conn.listed
            && conn.queue.is_empty()
            && !conn
                .awaiting
                .iter()
                .any(|r| request_id(r) == Some(EVENTS_LIST_ID))
            && self.streams.values().all(|s| s.done);
        Ok(done.then_some(SessionEnd::Done))
    }

    /// Subscribes to one stream, resuming it where it was if it was followed before.
    fn attach(&mut self, conn: &mut Conn, labels: Labels) {
        if conn.attached.contains(&labels) {
            return;
        }
        if !self.streams.contains_key(&labels) {
            if self.streams.len() >= self.args.max_streams {
                if self.refused.insert(labels.clone()) {
                    notice(
                        "tail",
                        &format!(
                            "not following {}: already following {} streams (--max-streams)",
                            crate::format::stream_name(&labels),
                            self.args.max_streams
                        ),
                    );
                }
                return;
            }
            let check_holes = self.args.contains.is_none() && self.args.matches.is_none();
            self.streams.insert(
                labels.clone(),
                Followed {
                    view: self.fmt.view(&labels),
                    tracker: Tracker::new(check_holes),
                    done: false,
                },
            );
        }
        let st = &self.streams[&labels];
        if st.done && self.args.no_follow {
            return;
        }
        let id = format!("s{}", conn.next_id);
        conn.next_id += 1;
        let (tail, since_ns, since_seq) = match st.tracker.resume_from() {
            Some(r) => (
                Some(0),
                Some(r.since_ns),
                Some(SeqPos {
                    epoch: r.epoch,
                    seq: r.next_seq,
                }),
            ),
            None => (
                Some(self.args.tail.unwrap_or(if self.since_ns.is_some() {
                    0
                } else {
                    logrelay_wire::DEFAULT_TAIL_LINES
                })),
                self.since_ns,
                None,
            ),
        };
        conn.queue.push_back(Request::Subscribe {
            id: id.clone(),
            selector: exact(&labels),
            tail,
            since_ns,
            since_seq,
            follow: !self.args.no_follow,
            contains: self.args.contains.clone(),
            matches: self.args.matches.clone(),
        });
        conn.subs.insert(id, labels.clone());
        conn.attached.insert(labels);
    }

    /// Prints a batch's new lines, or reports an agent's gap notice.
    fn batch(
        &mut self,
        b: &[u8],
        conn: &mut Conn,
        out: &mut Out,
    ) -> Result<Option<SessionEnd>, CliError> {
        let h = BatchHeader::parse(b).map_err(|e| CliError::Relay(format!("bad batch: {e}")))?;
        let Some(st) = conn
            .relay
            .get(&h.stream)
            .and_then(|k| self.streams.get_mut(k))
        else {
            return Ok(None);
        };
        if h.kind == Kind::Gap {
            let bytes = batch::gap_bytes(b).unwrap_or(0);
            let exact = h.flags & batch::FLAG_COUNT_UNKNOWN == 0;
            st.tracker.gap(h.epoch, h.first_seq, u64::from(h.count));
            notice(
                "tail",
                &format!("{} gap: {}", st.view.name, agent_gap(h.count, bytes, exact)),
            );
            return Ok(None);
        }
        let (_, lines) = batch::lines(b).map_err(|e| CliError::Relay(format!("bad batch: {e}")))?;
        self.buf.clear();
        for l in &lines {
            match st.tracker.line(h.epoch, l.seq, l.timestamp_ns, l.message) {
                Verdict::Repeat => continue,
                Verdict::Fresh { hole } => {
                    if let Some(hole) = hole {
                        // What came before goes out first, so the notice sits where the
                        // hole is.
                        if let Some(end) = session::written(out.write(&self.buf))? {
                            return Ok(Some(end));
                        }
                        self.buf.clear();
                        if let Some(end) = session::written(out.flush())? {
                            return Ok(Some(end));
                        }
                        notice(
                            "tail",
                            &format!("{} gap: {}", st.view.name, hole_words(&hole)),
                        );
                    }
                }
            }
            if self.filter.is_empty() || self.filter.keeps(l.message) {
                self.fmt.line(&mut self.buf, &st.view, h.epoch, l);
            }
        }
        session::written(out.write(&self.buf))
    }
}

/// A relay `gap` event in words; an unknown count is said to be unknown, never "0 lines".
pub fn relay_gap(
    reason: &GapReason,
    lines: u64,
    bytes: u64,
    exact: bool,
    rest_of_epoch: bool,
    from_seq: u64,
) -> String {
    if rest_of_epoch {
        return format!(
            "an unknown number of lines lost from sequence {from_seq} on: the agent no longer holds them ({reason})"
        );
    }
    let what = match (exact, lines, bytes) {
        (false, 0, _) | (true, 0, 0) => "an unknown number of lines".to_owned(),
        (false, l, _) => format!("at least {l} lines (the exact number is unknown)"),
        (true, l, 0) => format!("{l} lines"),
        (true, l, b) => format!("{l} lines ({b} bytes)"),
    };
    match reason {
        GapReason::SlowConsumer => {
            format!("{what} skipped: this client fell behind the relay ({reason})")
        }
        GapReason::EpochLost | GapReason::BackfillLost | GapReason::Other(_) => {
            format!("{what} missed ({reason})")
        }
    }
}

/// An agent's gap batch in words.
pub fn agent_gap(lines: u32, bytes: u64, exact: bool) -> String {
    if !exact && lines > 0 {
        format!(
            "at least {lines} lines (the exact number is unknown, {bytes} bytes) the agent could not read"
        )
    } else if lines == 0 {
        format!(
            "an unknown number of lines ({bytes} bytes) rotated away before the agent read them"
        )
    } else {
        format!("{lines} lines ({bytes} bytes) dropped at the agent: its buffer was full")
    }
}

/// A hole this client found in words.
pub fn hole_words(h: &Hole) -> String {
    match h {
        Hole::Skipped { from, to } => format!(
            "{} lines missing (sequence {from} to {}), no reason given",
            to - from,
            to - 1
        ),
        Hole::EpochChanged => {
            "the stream's numbering restarted without notice: an unknown number of lines may be missing".into()
        }
    }
}

/// A pause reason in words.
pub fn pause_words(reason: &PauseReason) -> String {
    match reason {
        PauseReason::AgentDisconnected => "its agent disconnected".into(),
        PauseReason::BackplaneUnavailable => {
            "its agent is on another relay, which cannot be reached now".into()
        }
        PauseReason::Other(other) => other.replace('_', " "),
    }
}

/// An end reason in words.
pub fn end_words(reason: &EndReason) -> String {
    match reason {
        EndReason::AgentDisconnected => "its agent disconnected".into(),
        EndReason::ContainerRemoved => "the container is gone".into(),
        EndReason::LabelsChanged => "its labels changed (it goes on under its new labels)".into(),
        EndReason::AgentUnavailable => "its agent is not connected".into(),
        EndReason::Refused => "the agent refused the filter".into(),
        EndReason::DemandLimit => {
            "its agent serves the most demands the relay allows (demand_limit); try again later"
                .into()
        }
        EndReason::Complete => "its backlog was read".into(),
        EndReason::Other(other) => other.replace('_', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_say_exact_counts_and_unknown_ones_plainly() {
        assert_eq!(
            relay_gap(&GapReason::SlowConsumer, 1200, 98304, true, false, 5),
            "1200 lines (98304 bytes) skipped: this client fell behind the relay (slow_consumer)"
        );
        let lost = relay_gap(&GapReason::EpochLost, 0, 0, false, true, 42);
        assert!(!lost.contains("0 lines"), "{lost}");
        assert_eq!(
            lost,
            "an unknown number of lines lost from sequence 42 on: the agent no longer holds them (epoch_lost)"
        );
        assert_eq!(
            agent_gap(500, 40_000, true),
            "500 lines (40000 bytes) dropped at the agent: its buffer was full"
        );
        assert!(agent_gap(0, 10, false).starts_with("an unknown number of lines (10 bytes)"));
        // A count that is only a lower bound says so.
        let bound = relay_gap(&GapReason::SlowConsumer, 7, 0, false, false, 5);
        assert!(bound.starts_with("at least 7 lines"), "{bound}");
        assert!(agent_gap(3, 0, false).starts_with("at least 3 lines"));
        assert_eq!(
            hole_words(&Hole::Skipped { from: 10, to: 15 }),
            "5 lines missing (sequence 10 to 14), no reason given"
        );
    }
}
