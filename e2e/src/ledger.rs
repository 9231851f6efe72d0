//! Accounting for one stream, line by line, as a client written from docs/protocol.md sees it:
//! what was delivered (deduplicated by `(epoch, seq)` as clients do), what was reported missing
//! (agent gap batches, `gap` events) and renumberings, checked against what was written
//! ([`Ledger::tally`]). [`ResumingClient`] is such a client: it follows one stream, and when
//! its session drops (a relay crash) it reconnects and resubscribes with `since_seq`.
//!
//! Lines are identified by the number their message starts with
//! ([`crate::writer::KubeletWriter::index_of`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use logrelay::client::{Client, Incoming};
use logrelay_wire::control::SeqPos;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use tokio::sync::Notify;

use crate::DEADLINE;
use crate::writer::KubeletWriter;

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
    /// Line numbers delivered, in arrival order (lines already had, by `(epoch, seq)`, left
    /// out).
    pub delivered: Vec<u64>,
    /// Lines received again with an `(epoch, seq)` already had, and left out.
    pub duplicates: u64,
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
}

/// What a [`Ledger`] adds up to against what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Lines written.
    pub written: u64,
    /// Distinct lines delivered.
    pub delivered: u64,
    /// Lines reported missing by exact gaps (and not delivered).
    pub gapped: u64,
    /// Gaps whose count is unknown (`epoch_lost`, lines rotated away uncounted).
    pub inexact_gaps: u64,
    /// Lines neither delivered nor reported: silently lost. Must be 0.
    pub missing: u64,
    /// The first ten runs of such lines, `[from, to)`.
    pub missing_runs: Vec<(u64, u64)>,
    /// Lines reported missing that were delivered anyway (a gap that overstated).
    pub overstated: u64,
    /// Lines delivered after a later one (out of order).
    pub out_of_order: u64,
    /// Lines received twice and left out.
    pub duplicates: u64,
    /// Renumberings told.
    pub renumbered: u64,
}

impl Tally {
    /// Every line written was delivered once, in order, or reported in an exact gap.
    pub fn is_exact(&self) -> bool {
        self.missing == 0
            && self.overstated == 0
            && self.out_of_order == 0
            && self.inexact_gaps == 0
            && self.delivered + self.gapped == self.written
    }
}

impl Ledger {
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
                    self.delivered.push(i);
                }
            }
            Incoming::AgentGap {
                epoch,
                first_seq,
                lines,
                exact,
                ..
            } => self.agent_gaps.push(AgentGap {
                epoch: *epoch,
                first_seq: *first_seq,
                lines: u64::from(*lines),
                exact: *exact,
            }),
            Incoming::Event(e @ Event::Gap { .. }) => self.relay_gaps.push(e.clone()),
            Incoming::Event(Event::Renumbered { from, to, .. }) => {
                self.renumbered.push((*from, *to));
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

    /// Adds it up against `written` lines (numbered `0..written`).
    pub fn tally(&self, written: u64) -> Tally {
        let delivered: BTreeSet<u64> = self.delivered.iter().copied().collect();
        let out_of_order = self.delivered.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        // Ranges of line numbers exact gaps report.
        let mut reported: BTreeSet<u64> = BTreeSet::new();
        let mut inexact = 0;
        let mut report = |epoch: u64, first: u64, lines: u64, exact: bool| {
            if !exact {
                inexact += 1;
                return;
            }
            let Some(offset) = self.offsets.get(&epoch) else {
                // No line of that epoch arrived: nothing to place it by.
                inexact += 1;
                return;
            };
            let start = i128::from(first) - offset;
            for i in start..start + i128::from(lines) {
                if let Ok(i) = u64::try_from(i) {
                    reported.insert(i);
                }
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
        let overstated = reported.intersection(&delivered).count() as u64;
        let gapped = reported.iter().filter(|i| **i < written).count() as u64 - overstated;
        let mut missing = 0;
        let mut missing_runs: Vec<(u64, u64)> = Vec::new();
        for i in (0..written).filter(|i| !delivered.contains(i) && !reported.contains(i)) {
            missing += 1;
            let runs = missing_runs.len();
            match missing_runs.last_mut() {
                Some((_, to)) if *to == i => *to += 1,
                _ if runs < 10 => missing_runs.push((i, i + 1)),
                _ => {}
            }
        }
        Tally {
            written,
            delivered: delivered.range(..written).count() as u64,
            gapped,
            inexact_gaps: inexact,
            missing,
            missing_runs,
            overstated,
            out_of_order,
            duplicates: self.duplicates,
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
    /// When each session was found closed.
    pub disconnects: Vec<Instant>,
    /// The WebSocket close code of each session the relay closed.
    pub close_codes: Vec<u16>,
    /// The relay URL of each session opened, in order.
    pub urls: Vec<String>,
    /// When each line count was first reached: arrival time of the last batch.
    pub last_batch_at: Option<Instant>,
}

impl ClientState {
    /// When the first event matching `f` arrived after `since`.
    pub fn event_after(&self, since: Instant, f: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(at, e)| *at >= since && f(e))
            .map(|(at, _)| *at)
    }
}

/// A client following one stream through relay restarts: it reconnects and resubscribes with
/// `since_seq` just after the last line it has (docs/protocol.md, "Relay restart").
#[derive(Debug)]
pub struct ResumingClient {
    state: Arc<Mutex<ClientState>>,
    changed: Arc<Notify>,
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
        let task = tokio::spawn(run(urls, selector, tail, state.clone(), changed.clone()));
        Self {
            state,
            changed,
            task,
        }
    }

    /// Reads the state.
    pub fn with<R>(&self, f: impl FnOnce(&ClientState) -> R) -> R {
        f(&self.state.lock().expect("client state"))
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
) {
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
        let since_seq = {
            let mut st = state.lock().expect("client state");
            st.sessions += 1;
            st.urls.push(url);
            st.ledger.resume_point()
        };
        let subscribe = Request::Subscribe {
            id: "a".into(),
            selector: selector.clone(),
            tail: Some(tail),
            since_ns: None,
            since_seq,
            follow: true,
            contains: None,
            matches: None,
        };
        let mut closed = None;
        if client.send(&subscribe).await.is_ok() {
            loop {
                let item = match client.next().await {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(e) => {
                        if let logrelay::client::ClientError::Closed { code, .. } = e {
                            closed = Some(code);
                        }
                        break;
                    }
                };
                let mut st = state.lock().expect("client state");
                let now = Instant::now();
                match &item {
                    Incoming::Event(e) => st.events.push((now, e.clone())),
                    Incoming::Lines(_) | Incoming::AgentGap { .. } => st.last_batch_at = Some(now),
                }
                st.ledger.record(&item);
                drop(st);
                changed.notify_waiters();
            }
        }
        {
            let mut st = state.lock().expect("client state");
            st.disconnects.push(Instant::now());
            st.close_codes.extend(closed);
        }
        at += 1;
        changed.notify_waiters();
    }
}
