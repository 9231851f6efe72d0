//! A pod's Kubernetes events as a stream (`kind: events`, container `events`).
//!
//! With `--kube-pods`, every pod of the pod index gets an `events` stream in the catalog,
//! labelled like the pod's log streams (node, namespace, pod, pod UID, task identity). Nothing
//! is read while nobody watches it. A demand for it asks the API for that pod's events alone:
//!
//! ```text
//! GET /api/v1/namespaces/<ns>/events?fieldSelector=involvedObject.uid%3D<pod uid>
//! GET /api/v1/namespaces/<ns>/events?fieldSelector=…&watch=true&resourceVersion=<rv>&allowWatchBookmarks=true
//! ```
//!
//! (list, then watch from the list's `resourceVersion`; list again when the watch expires or
//! fails), so the agent holds one namespaced watch per watched pod, and none otherwise.
//!
//! Each event becomes one line, a JSON object ([`EventRecord::line`]): `reason`, `type`,
//! `message`, `count`, `first_timestamp`, `last_timestamp`, `source`, `involved_object`
//! (`kind`, `namespace`, `name`, `uid`, `field_path`), stamped with the event's last time and
//! flagged as a system line. Bounds, in bytes: a message is cut to [`MAX_MESSAGE_BYTES`]; a
//! watch line over [`MAX_WATCH_LINE_BYTES`] or a list over [`MAX_LIST_BYTES`] is not read; a
//! line or event that does not parse, or names another object, is counted
//! (`logrelay_agent_kube_events_malformed_total`) and skipped.
//!
//! Numbering ([`EventLog`]): one epoch per stream, drawn when it is discovered; each event
//! version (event UID and resourceVersion) gets the next sequence number once, whichever demand
//! reads it first. While a live demand runs, the numbered lines are kept (at most
//! [`KEPT_BYTES`], oldest dropped first), so a second demand for the same pod (another filter,
//! a backfill, a resume with `since_seq`) reads the same numbers; a demand that falls behind
//! what is kept gets a gap. The kept lines are dropped when the last live demand ends.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use logrelay_wire::batch::{BatchBuilder, FLAG_BACKFILL, LineFlags, encode_gap};
use logrelay_wire::control::Demand;
use logrelay_wire::pattern::{LinePattern, PatternError};
use serde_json::Value;

/// An event message longer than this is cut (the line says `"truncated":true`).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// A watch line longer than this is skipped and counted as malformed.
pub const MAX_WATCH_LINE_BYTES: usize = 256 * 1024;
/// A list response longer than this is not read (the demand fails and is retried by the relay).
pub const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of numbered event lines kept per pod while some live demand runs.
pub const KEPT_BYTES: usize = 256 * 1024;
/// The container label of every events stream.
pub const CONTAINER: &str = "events";

/// How the agent reaches the API for events (the pod watch's client).
#[derive(Clone, Default)]
pub struct EventsApi {
    /// The client; none in builds without the `k8s` feature.
    #[cfg(feature = "k8s")]
    pub client: Option<kube::Client>,
}

impl std::fmt::Debug for EventsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventsApi")
    }
}

/// One pod's events stream: where to ask, and its numbering across demands.
#[derive(Debug)]
pub struct PodEvents {
    /// The pod's UID: the only object whose events are read.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The API.
    pub api: Arc<EventsApi>,
    /// Numbering and kept lines.
    pub log: EventLog,
}

impl PodEvents {
    /// The events stream of the pod `uid` in `namespace`.
    pub fn new(uid: String, namespace: String, api: Arc<EventsApi>) -> Self {
        Self {
            uid,
            namespace,
            api,
            log: EventLog::new(),
        }
    }
}

impl PartialEq for PodEvents {
    fn eq(&self, other: &Self) -> bool {
        self.uid == other.uid && self.namespace == other.namespace
    }
}

impl Eq for PodEvents {}

impl Hash for PodEvents {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.uid.hash(state);
        self.namespace.hash(state);
    }
}

/// Why an event (or a watch line) is not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not JSON, or not the shape of an event.
    #[error("not a Kubernetes event: {0}")]
    Shape(String),
    /// The event is about another object than the pod watched.
    #[error("event about another object")]
    OtherObject,
    /// A watch line over [`MAX_WATCH_LINE_BYTES`], or a list over [`MAX_LIST_BYTES`].
    #[error("response over its size bound")]
    TooLarge,
}

/// One event, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `metadata.uid` and `metadata.resourceVersion`: one version of one event.
    pub key: (String, String),
    /// Its time: `lastTimestamp`, else `eventTime`, `firstTimestamp`, `creationTimestamp`
    /// (Unix ns; 0 when none parses).
    pub timestamp_ns: i64,
    /// The line subscribers read (JSON object, LF-terminated).
    pub line: Vec<u8>,
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Reads one event object about the pod `pod_uid`.
pub fn record(event: &Value, pod_uid: &str) -> Result<EventRecord, Malformed> {
    let shape = |what: &str| Malformed::Shape(what.to_owned());
    if !event.is_object() {
        return Err(shape("not an object"));
    }
    let uid = text(event, &["metadata", "uid"]).ok_or_else(|| shape("no metadata.uid"))?;
    let rv = text(event, &["metadata", "resourceVersion"]).unwrap_or_default();
    let involved = event
        .get("involvedObject")
        .filter(|o| o.is_object())
        .ok_or_else(|| shape("no involvedObject"))?;
    if text(involved, &["uid"]) != Some(pod_uid) {
        return Err(Malformed::OtherObject);
    }
    let timestamp_ns = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .filter_map(|k| text(event, &[k]))
        .chain(text(event, &["metadata", "creationTimestamp"]))
        .find_map(parse_time)
        .unwrap_or(0);
    let mut message = text(event, &["message"]).unwrap_or_default();
    let truncated = message.len() > MAX_MESSAGE_BYTES;
    if truncated {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message = &message[..end];
    }
    let field = |k: &str| text(event, &[k]).map_or(Value::Null, Value::from);
    let of = |k: &str| text(involved, &[k]).map_or(Value::Null, Value::from);
    let mut out = serde_json::Map::new();
    out.insert("reason".into(), field("reason"));
    out.insert("type".into(), field("type"));
    out.insert("message".into(), Value::from(message));
    if truncated {
        out.insert("truncated".into(), Value::Bool(true));
    }
    out.insert(
        "count".into(),
        event
            .get("count")
            .and_then(Value::as_u64)
            .or_else(|| event.pointer("/series/count").and_then(Value::as_u64))
            .map_or(Value::from(1), Value::from),
    );
    out.insert("first_timestamp".into(), field("firstTimestamp"));
    out.insert("last_timestamp".into(), field("lastTimestamp"));
    out.insert(
        "source".into(),
        text(event, &["source", "component"])
            .or_else(|| text(event, &["reportingComponent"]))
            .map_or(Value::Null, Value::from),
    );
    let mut obj = serde_json::Map::new();
    for (k, name) in [
        ("kind", "kind"),
        ("namespace", "namespace"),
        ("name", "name"),
        ("uid", "uid"),
        ("fieldPath", "field_path"),
    ] {
        obj.insert(name.into(), of(k));
    }
    out.insert("involved_object".into(), Value::Object(obj));
    let mut line =
        serde_json::to_vec(&Value::Object(out)).map_err(|e| Malformed::Shape(e.to_string()))?;
    line.push(b'\n');
    Ok(EventRecord {
        key: (uid.to_owned(), rv.to_owned()),
        timestamp_ns,
        line,
    })
}

/// One line of a watch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchLine {
    /// `ADDED` or `MODIFIED`: an event (version) to read.
    Event(Result<EventRecord, Malformed>, Option<String>),
    /// `DELETED` (events expire; nothing to show), with the resourceVersion.
    Deleted(Option<String>),
    /// `BOOKMARK`: where to resume.
    Bookmark(String),
    /// `ERROR` (e.g. 410 Gone: the resourceVersion expired): list again.
    Error(String),
}

/// Reads one line of a watch response about the pod `pod_uid`.
pub fn watch_line(line: &[u8], pod_uid: &str) -> Result<WatchLine, Malformed> {
    let v: Value = serde_json::from_slice(line).map_err(|e| Malformed::Shape(e.to_string()))?;
    let object = v
        .get("object")
        .ok_or_else(|| Malformed::Shape("no object".into()))?;
    let rv = text(object, &["metadata", "resourceVersion"]).map(str::to_owned);
    match v.get("type").and_then(Value::as_str) {
        Some("ADDED" | "MODIFIED") => Ok(WatchLine::Event(record(object, pod_uid), rv)),
        Some("DELETED") => Ok(WatchLine::Deleted(rv)),
        Some("BOOKMARK") => Ok(WatchLine::Bookmark(rv.unwrap_or_default())),
        Some("ERROR") => Ok(WatchLine::Error(
            text(object, &["message"])
                .unwrap_or("watch error")
                .to_owned(),
        )),
        _ => Err(Malformed::Shape("unknown watch event type".into())),
    }
}

/// Reads a list response: its resourceVersion and each event (each may be malformed alone).
pub fn list(
    body: &[u8],
    pod_uid: &str,
) -> Result<(String, Vec<Result<EventRecord, Malformed>>), Malformed> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Malformed::Shape(e.to_string()))?;
    let rv = text(&v, &["metadata", "resourceVersion"])
        .unwrap_or_default()
        .to_owned();
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| Malformed::Shape("no items".into()))?;
    let mut records: Vec<_> = items.iter().map(|e| record(e, pod_uid)).collect();
    records.sort_by_key(|r| r.as_ref().map_or(i64::MIN, |r| r.timestamp_ns));
    Ok((rv, records))
}

/// Parses a Kubernetes timestamp (RFC 3339 UTC, `Z`, optional fraction) to Unix nanoseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(f) => {
            let digits = f.bytes().take_while(u8::is_ascii_digit).count();
            (&f[..digits], &f[digits..])
        }
        None => ("", rest),
    };
    if zone != "Z" || frac.len() > 9 {
        return None;
    }
    let mut nanos: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..9 {
        nanos *= 10;
    }
    // Days from civil (H. Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000_000 + nanos)
}

/// A demand's filter on event lines (`contains`, `matches`, `since_ns`), on the JSON line.
#[derive(Debug, Default)]
pub struct EventFilter {
    contains: Option<Vec<u8>>,
    matches: Option<LinePattern>,
    since_ns: Option<i64>,
}

impl EventFilter {
    /// The demand's filter; its regular expression must compile.
    pub fn of(spec: &Demand) -> Result<Self, PatternError> {
        Ok(Self {
            contains: spec
                .contains
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(|c| c.as_bytes().to_vec()),
            matches: spec
                .matches
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(str::parse)
                .transpose()?,
            since_ns: spec.since_ns,
        })
    }

    /// Whether a line stamped `ts` passes.
    pub fn wants(&self, ts: i64, line: &[u8]) -> bool {
        self.since_ns.is_none_or(|s| ts >= s)
            && self
                .contains
                .as_deref()
                .is_none_or(|c| memchr::memmem::find(line, c).is_some())
            && self.matches.as_ref().is_none_or(|m| m.matches(line))
    }
}

/// A numbered event line kept for demands.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    timestamp_ns: i64,
    line: Bytes,
}

#[derive(Debug, Default)]
struct LogInner {
    next_seq: u64,
    live: usize,
    kept: VecDeque<Kept>,
    kept_bytes: usize,
    /// Versions numbered while kept (dropped with the kept lines).
    seen: HashSet<(String, String)>,
}

/// The numbering of one events stream, shared by its demands.
#[derive(Debug)]
pub struct EventLog {
    epoch: u64,
    inner: Mutex<LogInner>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

/// What a demand reads from the log: lines, or a gap when it fell behind what is kept.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// `count` lines from `from` were dropped before this demand read them.
    Gap {
        /// First missing sequence number.
        from: u64,
        /// Lines missing.
        count: u64,
    },
    /// A line.
    Line {
        /// Its sequence number.
        seq: u64,
        /// Its time.
        timestamp_ns: i64,
        /// The JSON line.
        line: Bytes,
    },
}

impl EventLog {
    /// A fresh numbering with a random epoch below 2^53 (exact in JavaScript).
    pub fn new() -> Self {
        Self {
            epoch: fastrand::u64(1..(1 << 53)),
            inner: Mutex::new(LogInner::default()),
        }
    }

    /// The sequence epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("event log lock")
    }

    /// A live demand starts (kept lines are kept while one runs).
    pub fn live_started(&self) {
        self.lock().live += 1;
    }

    /// A live demand ended; the last one drops the kept lines.
    pub fn live_ended(&self) {
        let mut inner = self.lock();
        inner.live = inner.live.saturating_sub(1);
        if inner.live == 0 {
            inner.kept.clear();
            inner.kept_bytes = 0;
            inner.seen.clear();
        }
    }

    /// Numbers the versions not numbered yet, in order; returns how many were new.
    pub fn absorb(&self, records: impl IntoIterator<Item = EventRecord>) -> usize {
        let mut inner = self.lock();
        let mut new = 0;
        for r in records {
            if !inner.seen.insert(r.key) {
                continue;
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.kept_bytes += r.line.len();
            inner.kept.push_back(Kept {
                seq,
                timestamp_ns: r.timestamp_ns,
                line: Bytes::from(r.line),
            });
            new += 1;
            while inner.kept_bytes > KEPT_BYTES {
                let Some(old) = inner.kept.pop_front() else {
                    break;
                };
                inner.kept_bytes -= old.line.len();
            }
        }
        if inner.kept.is_empty() {
            inner.seen.clear();
        }
        new
    }

    /// The sequence number the next new version gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Where a demand starts reading: `since_seq` in this epoch, else the last `tail` kept
    /// lines (all kept lines when unset) before `until`.
    pub fn start(&self, spec: &Demand) -> u64 {
        let inner = self.lock();
        if let Some(s) = spec.since_seq.filter(|s| s.epoch == self.epoch) {
            return s.seq.min(inner.next_seq);
        }
        let end = spec
            .until
            .filter(|u| u.epoch == self.epoch)
            .map_or(inner.next_seq, |u| u.seq.min(inner.next_seq));
        let first = inner.kept.front().map_or(inner.next_seq, |k| k.seq);
        match spec.tail {
            Some(n) => end.saturating_sub(u64::from(n)).max(first),
            None => first,
        }
    }

    /// What a demand at `cursor` reads up to `end` (exclusive); advances `cursor`.
    pub fn read(&self, cursor: &mut u64, end: Option<u64>) -> Vec<Read> {
        let inner = self.lock();
        let end = end.unwrap_or(inner.next_seq).min(inner.next_seq);
        let mut out = Vec::new();
        let first = inner.kept.front().map_or(inner.next_seq, |k| k.seq);
        if *cursor < first.min(end) {
            out.push(Read::Gap {
                from: *cursor,
                count: first.min(end) - *cursor,
            });
            *cursor = first.min(end);
        }
        for k in inner
            .kept
            .iter()
            .filter(|k| k.seq >= *cursor && k.seq < end)
        {
            out.push(Read::Line {
                seq: k.seq,
                timestamp_ns: k.timestamp_ns,
                line: k.line.clone(),
            });
        }
        *cursor = (*cursor).max(end);
        out
    }
}

/// Encodes what a demand read into batches of up to `max_batch_bytes` (a gap is its own
/// batch; lines the filter drops end a batch, so a batch holds consecutive numbers).
pub fn encode(
    reads: Vec<Read>,
    stream_ref: u64,
    epoch: u64,
    backfill: bool,
    filter: &EventFilter,
    max_batch_bytes: usize,
) -> (Vec<Bytes>, u64) {
    let flags = if backfill { FLAG_BACKFILL } else { 0 };
    let mut out = Vec::new();
    let mut lines = 0;
    let mut batch: Option<BatchBuilder> = None;
    for r in reads {
        match r {
            Read::Gap { from, count } => {
                out.extend(batch.take().map(BatchBuilder::finish));
                out.push(encode_gap(
                    stream_ref,
                    epoch,
                    from,
                    u32::try_from(count).unwrap_or(u32::MAX),
                    0,
                ));
            }
            Read::Line {
                seq,
                timestamp_ns,
                line,
            } => {
                if !filter.wants(timestamp_ns, &line) {
                    out.extend(batch.take().map(BatchBuilder::finish));
                    continue;
                }
                if batch.as_ref().is_some_and(|b| {
                    b.next_seq() != seq || b.encoded_len() + line.len() > max_batch_bytes
                }) {
                    out.extend(batch.take().map(BatchBuilder::finish));
                }
                let b = batch.get_or_insert_with(|| {
                    BatchBuilder::new(
                        stream_ref,
                        epoch,
                        seq,
                        flags,
                        max_batch_bytes.min(64 * 1024),
                    )
                });
                b.push(timestamp_ns, LineFlags(LineFlags::SYSTEM), &line);
                lines += 1;
            }
        }
    }
    out.extend(batch.take().map(BatchBuilder::finish));
    (out, lines)
}

#[cfg(feature = "k8s")]
pub mod client;

#[cfg(test)]
mod tests;
