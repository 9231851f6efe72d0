//! Accounting for one stream, line by line, as a client written from docs/protocol.md sees it:
//! what was delivered (deduplicated by `(epoch, seq)` as clients do), what was reported missing
//! (agent gap batches, `gap` events) and renumberings, checked against what was written
//! ([`Ledger::tally`]). [`ResumingClient`] is such a client: it follows one stream, and when
//! its session drops (a relay crash) it reconnects and resubscribes with `since_seq`; it can
//! also be told to reconnect or to unsubscribe and subscribe again, as churning sessions do.
//!
//! Lines are identified by the number their message starts with
//! ([`crate::writer::KubeletWriter::index_of`]). Sets of line numbers are kept as ranges, so a
//! ledger of a soak that delivers tens of millions of lines stays small.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use logrelay::client::{Client, Incoming};
use logrelay_wire::control::SeqPos;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use tokio::sync::{Notify, mpsc};

use crate::DEADLINE;
use crate::writer::KubeletWriter;

/// A set of line numbers as sorted, disjoint, non-adjacent half-open ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LineSet {
    ranges: Vec<(u64, u64)>,
    count: u64,
}

impl LineSet {
    /// Lines in the set.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ranges `[from, to)`, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether `i` is in the set.
    pub fn contains(&self, i: u64) -> bool {
        let k = self.ranges.partition_point(|r| r.1 <= i);
        self.ranges.get(k).is_some_and(|r| r.0 <= i)
    }

    /// Adds `i`; whether it was new.
    pub fn insert(&mut self, i: u64) -> bool {
        if self.contains(i) {
            return false;
        }
        self.insert_range(i, i + 1);
        true
    }

    /// Adds `[from, to)`.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        // Appending at the end (lines in order) costs nothing but a comparison.
        if let Some(last) = self.ranges.last_mut()
            && last.1 <= from
        {
            if last.1 == from {
                last.1 = to;
            } else {
                self.ranges.push((from, to));
            }
            self.count += to - from;
            return;
        }
        // Ranges touching or overlapping [from, to) merge into one.
        let start = self.ranges.partition_point(|r| r.1 < from);
        let end = self.ranges.partition_point(|r| r.0 <= to);
        let (mut lo, mut hi) = (from, to);
        for r in &self.ranges[start..end] {
            lo = lo.min(r.0);
            hi = hi.max(r.1);
            self.count -= r.1 - r.0;
        }
        self.ranges.splice(start..end, [(lo, hi)]);
        self.count += hi - lo;
    }

    /// Lines of the set within `[from, to)`.
    pub fn count_within(&self, from: u64, to: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| b.min(to).saturating_sub(a.max(from)))
            .sum()
    }

    /// Lines in both sets, within `[from, to)`.
    pub fn intersection_within(&self, other: &Self, from: u64, to: u64) -> u64 {
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            let lo = a.0.max(b.0).max(from);
            let hi = a.1.min(b.1).min(to);
            n += hi.saturating_sub(lo);
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// The runs of `[from, to)` in neither this set nor `other`.
    pub fn holes_within(&self, other: &Self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut both = self.clone();
        for &(a, b) in &other.ranges {
            both.insert_range(a, b);
        }
        let mut holes = Vec::new();
        let mut at = from;
        for &(a, b) in &both.ranges {
            if b <= at {
                continue;
            }
            if a >= to {
                break;
            }
            if a > at {
                holes.push((at, a.min(to)));
            }
            at = at.max(b);
        }
        if at < to {
            holes.push((at, to));
        }
        holes
    }
}

/// A gap batch from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentGap {
    /// Epoch of the missing lines.
    pub epoch: u64,
    /// First missing sequence number.
    pub first_seq: u64,
    /// Lines missing (a lower bound unless `exact`).
    pub lines: u64,
    /// Whether `lines` is exact.
    pub exact: bool,
}

/// What one client got of one stream.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Line numbers delivered (lines already had, by `(epoch, seq)`, left out).
    pub delivered: LineSet,
    /// Lines received again with an `(epoch, seq)` already had, and left out (the protocol
    /// allows a few after a resume: clients drop them).
    pub duplicates: u64,
    /// Lines delivered again under another `(epoch, seq)`: a client cannot tell them apart, so
    /// each is a duplicate the user sees.
    pub redelivered: u64,
    /// Lines that arrived after a later one.
    pub out_of_order: u64,
    /// Gap batches from the agent.
    pub agent_gaps: Vec<AgentGap>,
    /// `gap` events from the relay.
    pub relay_gaps: Vec<Event>,
    /// `renumbered` events: (end of the old numbering, start of the new).
    pub renumbered: Vec<(SeqPos, SeqPos)>,
    /// Per epoch, `seq - line number` (one numbering is one offset).
    offsets: HashMap<u64, i128>,
    /// The last line delivered: `(epoch, seq)`.
    last: Option<(u64, u64)>,
    /// The highest line number delivered.
    highest: Option<u64>,
    /// The first line number delivered.
    first: Option<u64>,
    /// What happened, in order, for locating a fault: the first [`NOTES`] notes (sessions,
    /// subscriptions with their `since_seq`, events, gap batches, where redeliveries began).
    pub notes: Vec<String>,
    /// Whether the last line recorded was a redelivery (a run of them is noted once).
    redelivering: bool,
}

/// Notes a [`Ledger`] keeps (each stamped with the seconds since the first note of this
/// process).
pub const NOTES: usize = 200;

/// What a [`Ledger`] adds up to against what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Lines written (in the range tallied).
    pub written: u64,
    /// Distinct lines delivered.
    pub delivered: u64,
    /// Lines reported missing by exact gaps (and not delivered).
    pub gapped: u64,
    /// Gaps whose count is unknown (`epoch_lost`, lines rotated away uncounted), or that name
    /// an epoch no delivered line places.
    pub inexact_gaps: u64,
    /// Lines neither delivered nor reported: silently lost. Must be 0.
    pub missing: u64,
    /// The first ten runs of such lines, `[from, to)`.
    pub missing_runs: Vec<(u64, u64)>,
    /// Lines reported missing that were delivered anyway (a gap that overstated).
    pub overstated: u64,
    /// Lines delivered after a later one (out of order).
    pub out_of_order: u64,
    /// Lines received twice with one `(epoch, seq)` and left out (allowed: clients drop them).
    pub duplicates: u64,
    /// Lines delivered twice under different numbers (duplicates a user sees). Must be 0.
    pub redelivered: u64,
    /// Renumberings told.
    pub renumbered: u64,
}

impl Tally {
    /// Every line written was delivered once, in order, or reported in an exact gap.
    pub fn is_exact(&self) -> bool {
        self.missing == 0
            && self.overstated == 0
            && self.out_of_order == 0
            && self.redelivered == 0
            && self.inexact_gaps == 0
            && self.delivered + self.gapped == self.written
    }

    /// Adds another stream's tally to this one.
    pub fn add(&mut self, o: &Tally) {
        self.written += o.written;
        self.delivered += o.delivered;
        self.gapped += o.gapped;
        self.inexact_gaps += o.inexact_gaps;
        self.missing += o.missing;
        self.missing_runs.extend(
            o.missing_runs
                .iter()
                .take(10 - self.missing_runs.len().min(10)),
        );
        self.overstated += o.overstated;
        self.out_of_order += o.out_of_order;
        self.duplicates += o.duplicates;
        self.redelivered += o.redelivered;
        self.renumbered += o.renumbered;
    }

    /// Nothing written, nothing seen.
    pub fn empty() -> Self {
        Self {
            written: 0,
            delivered: 0,
            gapped: 0,
            inexact_gaps: 0,
            missing: 0,
            missing_runs: Vec::new(),
            overstated: 0,
            out_of_order: 0,
            duplicates: 0,
            redelivered: 0,
            renumbered: 0,
        }
    }
}

impl Ledger {
    /// Adds a note (see [`Ledger::notes`]); notes beyond [`NOTES`] are left out.
    pub fn note(&mut self, note: String) {
        static FIRST: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        if self.notes.len() < NOTES {
            let t = FIRST.get_or_init(Instant::now).elapsed().as_secs_f64();
            self.notes.push(format!("{t:.2} s: {note}"));
        }
    }

    /// Records one message from the relay.
    pub fn record(&mut self, item: &Incoming) {
        match item {
            Incoming::Lines(lines) => {
                for l in lines {
                    if let Some((epoch, seq)) = self.last
                        && epoch == l.epoch
                        && l.seq <= seq
                    {
                        self.duplicates += 1;
                        continue;
                    }
                    self.last = Some((l.epoch, l.seq));
                    let Some(i) = KubeletWriter::index_of(&l.message) else {
                        continue;
                    };
                    self.offsets
                        .entry(l.epoch)
                        .or_insert(i128::from(l.seq) - i128::from(i));
                    if !self.delivered.insert(i) {
                        self.redelivered += 1;
                        if !self.redelivering {
                            self.redelivering = true;
                            let note = format!(
                                "line {i} again as ({}, {}) (highest had {:?})",
                                l.epoch, l.seq, self.highest
                            );
                            self.note(note);
                        }
                        continue;
                    }
                    if std::mem::take(&mut self.redelivering) {
                        let note = format!("new line {i} as ({}, {})", l.epoch, l.seq);
                        self.note(note);
                    }
                    if self.highest.is_some_and(|h| i < h) {
                        self.out_of_order += 1;
                    }
                    self.highest = Some(self.highest.map_or(i, |h| h.max(i)));
                    self.first.get_or_insert(i);
                }
            }
            Incoming::AgentGap {
                epoch,
                first_seq,
                lines,
                exact,
                ..
            } => {
                self.agent_gaps.push(AgentGap {
                    epoch: *epoch,
                    first_seq: *first_seq,
                    lines: u64::from(*lines),
                    exact: *exact,
                });
                let note = format!(
                    "agent gap ({epoch}, {first_seq}) lines {lines} exact {exact} \
                     (highest had {:?})",
                    self.highest
                );
                self.note(note);
            }
            Incoming::Event(e @ Event::Gap { .. }) => {
                self.relay_gaps.push(e.clone());
                let note = format!("{e:?} (highest had {:?})", self.highest);
                self.note(note);
            }
            Incoming::Event(Event::Renumbered { from, to, .. }) => {
                self.renumbered.push((*from, *to));
                let note = format!(
                    "renumbered {from:?} -> {to:?} (highest had {:?})",
                    self.highest
                );
                self.note(note);
            }
            Incoming::Event(
                e @ (Event::Paused { .. } | Event::Resumed { .. } | Event::End { .. }),
            ) => {
                let note = format!("{e:?} (highest had {:?})", self.highest);
                self.note(note);
            }
            Incoming::Event(_) => {}
        }
    }

    /// Where to resume: just after the last line delivered.
    pub fn resume_point(&self) -> Option<SeqPos> {
        self.last.map(|(epoch, seq)| SeqPos {
            epoch,
            seq: seq + 1,
        })
    }

    /// The first line number delivered (a late joiner starts there).
    pub fn first_line(&self) -> Option<u64> {
        self.first
    }

    /// The highest line number delivered.
    pub fn highest_line(&self) -> Option<u64> {
        self.highest
    }

    /// `seq - line number` of each epoch: from its lines, or else from a `renumbered` event
    /// that starts it right after a line of a placed epoch.
    fn placed_offsets(&self) -> HashMap<u64, i128> {
        let mut offsets = self.offsets.clone();
        loop {
            let mut grew = false;
            for (from, to) in &self.renumbered {
                if offsets.contains_key(&to.epoch) {
                    continue;
                }
                if let Some(off) = offsets.get(&from.epoch) {
                    // `from.seq` is one past the old numbering's last line; `to.seq` numbers
                    // the line after that one.
                    let line = i128::from(from.seq) - off;
                    offsets.insert(to.epoch, i128::from(to.seq) - line);
                    grew = true;
                }
            }
            if !grew {
                return offsets;
            }
        }
    }

    /// Adds it up against `written` lines (numbered `0..written`).
    pub fn tally(&self, written: u64) -> Tally {
        self.tally_range(0, written)
    }

    /// Adds it up over the lines numbered `from..to` (a late joiner's window).
    pub fn tally_range(&self, from: u64, to: u64) -> Tally {
        let offsets = self.placed_offsets();
        // Line numbers exact gaps report.
        let mut reported = LineSet::default();
        let mut inexact = 0;
        let mut report = |epoch: u64, first: u64, lines: u64, exact: bool| {
            if !exact {
                inexact += 1;
                return;
            }
            let Some(offset) = offsets.get(&epoch) else {
                // Nothing places that epoch.
                inexact += 1;
                return;
            };
            let start = (i128::from(first) - offset).max(0);
            let end = (i128::from(first) - offset + i128::from(lines)).max(0);
            if let (Ok(a), Ok(b)) = (u64::try_from(start), u64::try_from(end)) {
                reported.insert_range(a, b);
            }
        };
        for g in &self.agent_gaps {
            // A gap batch of zero lines carries only bytes rotated away (exact would be 0).
            if g.lines > 0 || !g.exact {
                report(g.epoch, g.first_seq, g.lines, g.exact);
            }
        }
        for e in &self.relay_gaps {
            if let Event::Gap {
                from, lines, exact, ..
            } = e
            {
                report(from.epoch, from.seq, *lines, *exact);
            }
        }
        let overstated = reported.intersection_within(&self.delivered, from, to);
        let gapped = reported.count_within(from, to) - overstated;
        let holes = self.delivered.holes_within(&reported, from, to);
        Tally {
            written: to.saturating_sub(from),
            delivered: self.delivered.count_within(from, to),
            gapped,
            inexact_gaps: inexact,
            missing: holes.iter().map(|(a, b)| b - a).sum(),
            missing_runs: holes.into_iter().take(10).collect(),
            overstated,
            out_of_order: self.out_of_order,
            duplicates: self.duplicates,
            redelivered: self.redelivered,
            renumbered: self.renumbered.len() as u64,
        }
    }
}

/// What a [`ResumingClient`] has seen.
#[derive(Debug, Default)]
pub struct ClientState {
    /// The stream's accounting.
    pub ledger: Ledger,
    /// Events, with when they arrived.
    pub events: Vec<(Instant, Event)>,
    /// Sessions opened (1 + reconnections).
    pub sessions: u32,
    /// Subscriptions made (over all sessions; an unsubscribe and subscribe again counts).
    pub subscriptions: u32,
    /// When each session was found closed.
    pub disconnects: Vec<Instant>,
    /// The WebSocket close code of each session the relay closed.
    pub close_codes: Vec<u16>,
    /// The relay URL of each session opened, in order.
    pub urls: Vec<String>,
    /// When each line count was first reached: arrival time of the last batch.
    pub last_batch_at: Option<Instant>,
    /// Why sessions ended or requests failed (the first 16).
    pub errors: Vec<String>,
}

impl ClientState {
    /// When the first event matching `f` arrived after `since`.
    pub fn event_after(&self, since: Instant, f: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(at, e)| *at >= since && f(e))
            .map(|(at, _)| *at)
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < 16 {
            self.errors.push(e);
        }
    }
}

/// What a [`ResumingClient`] can be told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Drop the session, connect again, resubscribe with `since_seq`.
    Reconnect,
    /// On the same session: unsubscribe, wait for `unsubscribed`, subscribe with `since_seq`.
    Resubscribe,
}

/// A client following one stream through relay restarts: it reconnects and resubscribes with
/// `since_seq` just after the last line it has (docs/protocol.md, "Relay restart").
#[derive(Debug)]
pub struct ResumingClient {
    state: Arc<Mutex<ClientState>>,
    changed: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResumingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResumingClient {
    /// Connects to `url` (retrying until the relay answers) and subscribes to `selector` with
    /// `tail` lines of backlog.
    pub fn start(url: String, selector: Selector, tail: u32) -> Self {
        Self::start_any(vec![url], selector, tail)
    }

    /// Like [`Self::start`] with several relays: each reconnection goes to the next URL (a
    /// session whose relay died or drains reconnects to another relay).
    pub fn start_any(urls: Vec<String>, selector: Selector, tail: u32) -> Self {
        let state = Arc::new(Mutex::new(ClientState::default()));
        let changed = Arc::new(Notify::new());
        let (commands, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(
            urls,
            selector,
            tail,
            state.clone(),
            changed.clone(),
            rx,
        ));
        Self {
            state,
            changed,
            commands,
            task,
        }
    }

    /// Drops the session and connects again, resuming with `since_seq` (as after a relay
    /// restart). Ignored when two commands are already waiting.
    pub fn reconnect(&self) {
        let _ = self.commands.try_send(Command::Reconnect);
    }

    /// Unsubscribes and subscribes again on the same session, resuming with `since_seq`.
    /// Ignored when two commands are already waiting.
    pub fn resubscribe(&self) {
        let _ = self.commands.try_send(Command::Resubscribe);
    }

    /// Reads the state.
    pub fn with<R>(&self, f: impl FnOnce(&ClientState) -> R) -> R {
        f(&self.state.lock().expect("client state"))
    }

    /// Lines delivered so far.
    pub fn delivered(&self) -> usize {
        self.with(|s| s.ledger.delivered.len())
    }

    /// Waits (at most [`DEADLINE`]) until `n` more lines than now were delivered.
    pub async fn flowing(&self, n: usize, what: &str) {
        let target = self.delivered() + n;
        self.until(what, |s| s.ledger.delivered.len() >= target)
            .await;
    }

    /// Waits until `done` holds, at most `limit`; whether it did.
    pub async fn until_within(
        &self,
        limit: std::time::Duration,
        done: impl Fn(&ClientState) -> bool,
    ) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let notified = self.changed.notified();
                if self.with(&done) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// Waits until `done` holds, within the deadline.
    pub async fn until(&self, what: &str, done: impl Fn(&ClientState) -> bool) {
        if !self.until_within(DEADLINE, done).await {
            let (lines, events) = self.with(|s| {
                (
                    s.ledger.delivered.len(),
                    s.events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
                )
            });
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}; {lines} lines; events {events:?}"
            );
        }
    }
}

async fn run(
    urls: Vec<String>,
    selector: Selector,
    tail: u32,
    state: Arc<Mutex<ClientState>>,
    changed: Arc<Notify>,
    mut commands: mpsc::Receiver<Command>,
) {
    let subscribe = |state: &Mutex<ClientState>| {
        let mut st = state.lock().expect("client state");
        st.subscriptions += 1;
        let since_seq = st.ledger.resume_point();
        let note = format!(
            "session {} subscribes since_seq {since_seq:?} (highest had {:?})",
            st.sessions,
            st.ledger.highest_line()
        );
        st.ledger.note(note);
        Request::Subscribe {
            id: format!("a{}", st.subscriptions),
            selector: selector.clone(),
            tail: Some(tail),
            since_ns: None,
            since_seq,
            follow: true,
            contains: None,
            matches: None,
        }
    };
    let record = |item: &Incoming| {
        let mut st = state.lock().expect("client state");
        let now = Instant::now();
        match item {
            Incoming::Event(e) => st.events.push((now, e.clone())),
            Incoming::Lines(_) | Incoming::AgentGap { .. } => st.last_batch_at = Some(now),
        }
        st.ledger.record(item);
        drop(st);
        changed.notify_waiters();
    };
    let mut at = 0usize;
    loop {
        let (mut client, url) = loop {
            let url = &urls[at % urls.len()];
            match Client::connect(url, None, None).await {
                Ok(c) => break (c, url.clone()),
                // The relay is not (yet) back, or gone: try the next one shortly.
                Err(_) => {
                    at += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        {
            let mut st = state.lock().expect("client state");
            st.sessions += 1;
            st.urls.push(url);
        }
        let mut closed = None;
        let mut request = subscribe(&state);
        let mut ended = client.send(&request).await.err().map(|e| e.to_string());
        while ended.is_none() {
            tokio::select! {
                item = client.next() => match item {
                    Ok(Some(item)) => record(&item),
                    Ok(None) => ended = Some("closed by the relay".into()),
                    Err(e) => {
                        if let logrelay::client::ClientError::Closed { code, .. } = &e {
                            closed = Some(*code);
                        }
                        ended = Some(e.to_string());
                    }
                },
                Some(command) = commands.recv() => match command {
                    Command::Reconnect => ended = Some("reconnect asked".into()),
                    Command::Resubscribe => {
                        let Request::Subscribe { id, .. } = &request else {
                            unreachable!("only subscriptions are made");
                        };
                        let unsubscribe = Request::Unsubscribe { id: id.clone() };
                        if let Err(e) = client.send(&unsubscribe).await {
                            ended = Some(e.to_string());
                            continue;
                        }
                        // What arrives until `unsubscribed` still counts.
                        loop {
                            match client.next().await {
                                Ok(Some(item)) => {
                                    record(&item);
                                    if matches!(&item, Incoming::Event(Event::Unsubscribed { id: u }) if u == id) {
                                        break;
                                    }
                                }
                                Ok(None) => { ended = Some("closed by the relay".into()); break; }
                                Err(e) => { ended = Some(e.to_string()); break; }
                            }
                        }
                        if ended.is_none() {
                            request = subscribe(&state);
                            ended = client.send(&request).await.err().map(|e| e.to_string());
                        }
                    }
                },
            }
        }
        let mut st = state.lock().expect("client state");
        st.disconnects.push(Instant::now());
        st.close_codes.extend(closed);
        if let Some(why) = ended {
            let note = format!("session {} ended: {why}", st.sessions);
            st.ledger.note(note);
            st.error(why);
        }
        drop(st);
        at += 1;
        changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logrelay::client::ReceivedLine;
    use logrelay_wire::batch::LineFlags;
    use proptest::prelude::*;

    fn line(epoch: u64, seq: u64, i: u64) -> ReceivedLine {
        ReceivedLine {
            stream: 1,
            epoch,
            seq,
            timestamp_ns: 0,
            flags: LineFlags(0),
            message: KubeletWriter::message(i).into_bytes(),
            backfill: false,
        }
    }

    fn lines(epoch: u64, seq0: u64, range: std::ops::Range<u64>) -> Incoming {
        Incoming::Lines(
            range
                .clone()
                .map(|i| line(epoch, seq0 + i - range.start, i))
                .collect(),
        )
    }

    proptest! {
        #[test]
        fn a_line_set_holds_what_a_btreeset_holds(ops in proptest::collection::vec((0u64..200, 1u64..20), 0..60)) {
            let mut set = LineSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (a, n) in ops {
                set.insert_range(a, a + n);
                model.extend(a..a + n);
            }
            prop_assert_eq!(set.len(), model.len());
            for i in 0..230 {
                prop_assert_eq!(set.contains(i), model.contains(&i));
            }
            prop_assert_eq!(set.count_within(50, 150), model.range(50..150).count() as u64);
            let mut other = LineSet::default();
            other.insert_range(30, 90);
            other.insert_range(120, 170);
            let both = model.iter().filter(|i| (40..160).contains(*i) && ((30..90).contains(*i) || (120..170).contains(*i))).count();
            prop_assert_eq!(set.intersection_within(&other, 40, 160), both as u64);
            let holes: u64 = set.holes_within(&other, 10, 210).iter().map(|(a, b)| b - a).sum();
            let neither = (10..210).filter(|i| !model.contains(i) && !(30..90).contains(i) && !(120..170).contains(i)).count();
            prop_assert_eq!(holes, neither as u64);
            for w in set.ranges().windows(2) {
                prop_assert!(w[0].1 < w[1].0, "disjoint and not adjacent: {:?}", set.ranges());
            }
        }
    }

    #[test]
    fn every_line_in_order_is_exact() {
        let mut l = Ledger::default();
        l.record(&lines(1, 10, 0..500));
        l.record(&lines(1, 510, 500..1000));
        let t = l.tally(1000);
        assert!(t.is_exact(), "{t:?}");
        assert_eq!((t.delivered, t.gapped, t.missing), (1000, 0, 0));
        assert_eq!(l.delivered.ranges(), &[(0, 1000)]);
    }

    #[test]
    fn repeats_are_dropped_and_redeliveries_counted() {
        let mut l = Ledger::default();
        l.record(&lines(1, 0, 0..100));
        // A resume repeats the batch holding `since_seq`: same (epoch, seq), dropped.
        l.record(&lines(1, 90, 90..150));
        // The same lines under another numbering: a duplicate the user would see.
        l.record(&lines(2, 0, 140..160));
        let t = l.tally(160);
        assert_eq!((t.duplicates, t.redelivered), (10, 10));
        assert!(!t.is_exact());
    }

    #[test]
    fn exact_gaps_account_for_lines_and_silent_losses_are_found() {
        let mut l = Ledger::default();
        l.record(&lines(1, 0, 0..100));
        l.record(&Incoming::AgentGap {
            stream: 1,
            epoch: 1,
            first_seq: 100,
            lines: 50,
            exact: true,
            bytes: 0,
        });
        l.record(&lines(1, 150, 150..200));
        // 200..210 never arrive, and nobody says so.
        l.record(&lines(1, 210, 210..300));
        let t = l.tally(300);
        assert_eq!((t.delivered, t.gapped, t.missing), (240, 50, 10));
        assert_eq!(t.missing_runs, vec![(200, 210)]);
        assert!(!t.is_exact());
        assert!(l.tally_range(0, 200).is_exact());
    }

    #[test]
    fn lines_out_of_order_are_counted() {
        let mut l = Ledger::default();
        l.record(&lines(1, 0, 0..10));
        l.record(&lines(1, 20, 20..30));
        l.record(&lines(2, 0, 10..20));
        let t = l.tally(30);
        assert_eq!(t.out_of_order, 10);
        assert!(!t.is_exact());
    }

    #[test]
    fn a_gap_in_an_epoch_placed_only_by_a_renumbering_counts() {
        let mut l = Ledger::default();
        l.record(&lines(1, 0, 0..100));
        // The agent restarted: epoch 2 starts right after line 99, and its first batch is a gap
        // of 20 lines; its next lines start at 120.
        l.record(&Incoming::Event(Event::Renumbered {
            stream: 1,
            from: SeqPos { epoch: 1, seq: 100 },
            to: SeqPos { epoch: 2, seq: 0 },
        }));
        l.record(&Incoming::AgentGap {
            stream: 1,
            epoch: 2,
            first_seq: 0,
            lines: 20,
            exact: true,
            bytes: 0,
        });
        let t = l.tally(120);
        assert!(t.is_exact(), "{t:?}");
        assert_eq!(t.gapped, 20);
    }

    #[test]
    fn an_inexact_gap_is_not_exact() {
        let mut l = Ledger::default();
        l.record(&lines(1, 0, 0..10));
        l.record(&Incoming::Event(Event::Gap {
            stream: 1,
            from: SeqPos { epoch: 1, seq: 10 },
            lines: 0,
            bytes: 0,
            reason: logrelay_wire::reason::GapReason::EpochLost,
            rest_of_epoch: true,
            exact: false,
        }));
        let t = l.tally(10);
        assert_eq!(t.inexact_gaps, 1);
        assert!(!t.is_exact());
    }

    #[test]
    fn a_late_joiner_is_tallied_over_its_window() {
        let mut l = Ledger::default();
        l.record(&lines(1, 500, 500..800));
        assert_eq!((l.first_line(), l.highest_line()), (Some(500), Some(799)));
        assert!(l.tally_range(500, 800).is_exact());
        assert_eq!(l.tally_range(400, 800).missing, 100);
    }
}
