//! Sessions, their subscriptions and watched lists, and the watches that read rings: the
//! core's inputs from the session side, and the linger.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use logrelay_wire::control::{Demand, ErrorCode, RelayMsg, SeqPos};
use logrelay_wire::labels::Labels;
use logrelay_wire::reason::EndReason;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, StreamEntry};

use super::{
    CapHit, Core, Count, Effect, LineFilter, Refusal, RingState, RingView, SubSpec, Subs, Target,
    Time, Timer, may_read,
};
use crate::auth::Claims;
use crate::ids::{DemandId, SessionId, StreamId, SubId};

/// What the core knows of a session.
#[derive(Debug)]
pub(super) struct SessionState {
    org: String,
    claims: Option<Arc<Claims>>,
    subs: Subs<SubSpec>,
    /// Watched lists (`list` with `watch`): they share the namespace and the limit of
    /// subscriptions.
    pub(super) lists: Subs<Selector>,
    /// What the session watches, by the id its data carries: the stream's id for its shared
    /// ring, the filtered ring's id for a stream's ring of one line filter, an id of its own
    /// for each one-off read, so that every batch and event names one watch.
    pub(super) watches: BTreeMap<StreamId, WatchState>,
}

impl SessionState {
    pub(super) fn may_read(&self, labels: &Labels) -> bool {
        may_read(&self.org, self.claims.as_deref(), labels)
    }

    fn id_in_use(&self, id: &str) -> bool {
        self.subs.contains_key(id) || self.lists.contains_key(id)
    }

    fn subscriptions(&self) -> usize {
        self.subs.len() + self.lists.len()
    }
}

/// One watch of a session.
#[derive(Debug)]
pub(super) struct WatchState {
    /// The subscriptions it serves.
    subs: BTreeSet<SubId>,
    /// The demands served for it alone and still open: backfills, or a one-off read's demand
    /// (cancelled when the watch goes).
    pub(super) own: Vec<DemandId>,
    /// A one-off read, served by its own demand and not by a ring.
    private: bool,
    /// Where its cursor was placed in the ring (its position until the session has it).
    started: Option<SeqPos>,
}

impl Core {
    /// A session of `org` connected, unless its org already holds the most sessions allowed.
    pub fn add_session(
        &mut self,
        org: &str,
        claims: Option<Arc<Claims>>,
    ) -> Result<SessionId, Refusal> {
        let max = self.config.max_sessions_per_org;
        let count = self.sessions_per_org.entry(org.to_owned()).or_default();
        if *count >= max {
            self.count(Count::LimitHit("sessions_per_org"));
            return Err(Refusal {
                code: ErrorCode::LimitExceeded,
                message: format!("org `{org}` already holds {max} sessions, the most allowed"),
            });
        }
        *count += 1;
        let id = SessionId::from(self.sequential());
        self.sessions.insert(
            id,
            SessionState {
                org: org.into(),
                claims,
                subs: Subs::new(),
                lists: Subs::new(),
                watches: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// A session ended: everything it watched is let go.
    pub fn remove_session(&mut self, now: Time, session: SessionId) {
        let Some(ss) = self.sessions.remove(&session) else {
            return;
        };
        self.listing.remove(&session);
        if let Some(n) = self.sessions_per_org.get_mut(&ss.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sessions_per_org.remove(&ss.org);
            }
        }
        for (key, watch) in ss.watches {
            self.unwatch(session, key, &watch);
            self.remove_watcher(now, session, key, watch);
        }
    }

    /// The streams of the session's org matching `selector`, as `list` answers.
    pub fn list(&self, session: SessionId, selector: &Selector) -> Vec<StreamEntry> {
        self.matching(session, selector)
            .into_iter()
            .map(|id| self.rings[&id].entry(id))
            .collect()
    }

    /// Streams (not filtered rings) the session may read that `selector` matches, by id.
    fn matching(&self, session: SessionId, selector: &Selector) -> Vec<StreamId> {
        let Some(ss) = self.sessions.get(&session) else {
            return Vec::new();
        };
        self.rings
            .iter()
            .filter(|(_, s)| {
                s.filtered.is_none() && ss.may_read(&s.labels) && selector.matches(&s.labels)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Answers a `list` (the `streams` event, queued before any later change) and keeps it
    /// open under `id`: changes come as `catalog` events until `unsubscribe` names `id` (or
    /// the session ends).
    pub fn watch_list(
        &mut self,
        session: SessionId,
        id: &str,
        selector: Selector,
    ) -> Result<(), Refusal> {
        self.admit_subscription(session, id)?;
        let streams = self.list(session, &selector);
        if let Some(ss) = self.sessions.get_mut(&session) {
            ss.lists.insert(id.into(), selector);
        }
        self.send_session(
            session,
            Event::Streams {
                id: Some(id.to_owned()),
                streams,
            },
        );
        self.listing.insert(session);
        Ok(())
    }

    /// Whether a session may add a subscription (or watched list) under `id`.
    fn admit_subscription(&mut self, session: SessionId, id: &str) -> Result<(), Refusal> {
        let max = self.config.max_subscriptions_per_session;
        let Some(ss) = self.sessions.get(&session) else {
            return Err(Refusal {
                code: ErrorCode::Internal,
                message: "the session is closing".into(),
            });
        };
        if ss.id_in_use(id) {
            return Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!("subscription id `{id}` is already in use"),
            });
        }
        if ss.subscriptions() >= max {
            self.count(Count::LimitHit("subscriptions_per_session"));
            return Err(Refusal {
                code: ErrorCode::LimitExceeded,
                message: format!("at most {max} subscriptions per session"),
            });
        }
        Ok(())
    }

    /// Adds a standing subscription and attaches every matching stream; the first cap a watch
    /// was refused by, if any.
    pub fn subscribe(
        &mut self,
        rings: &dyn RingView,
        session: SessionId,
        id: &str,
        selector: Selector,
        demand: Demand,
    ) -> Result<Option<&'static str>, Refusal> {
        self.admit_subscription(session, id)?;
        let sub = SubId::from(id);
        let matching = self.matching(session, &selector);
        if let Some(ss) = self.sessions.get_mut(&session) {
            ss.subs.insert(
                sub.clone(),
                SubSpec {
                    selector,
                    demand: demand.clone(),
                },
            );
        }
        self.send_session(session, Event::Subscribed { id: id.to_owned() });
        let mut capped = None;
        for sid in matching {
            if let Some(hit) = self.add_watch(rings, session, sid, &sub, &demand) {
                capped.get_or_insert(hit.limit());
            }
        }
        Ok(capped)
    }

    /// A new stream `sid` (labelled `labels`): every matching standing subscription attaches.
    /// Those resuming (`since_seq`) attach first, the earliest position first: the first watch
    /// opens the live demand, and a resume must reach the agent in it (a watch attaching after
    /// shares what that demand sends). Were a `tail` first, the agent would start a new epoch
    /// and forget the resumed one (its follower and queue: what a relay restart must not lose).
    pub(super) fn attach_standing(&mut self, rings: &dyn RingView, sid: StreamId, labels: &Labels) {
        let mut watches: Vec<(SessionId, SubId, Demand)> = Vec::new();
        for (&session, ss) in &self.sessions {
            if !ss.may_read(labels) {
                continue;
            }
            watches.extend(
                ss.subs
                    .iter()
                    .filter(|(_, spec)| spec.selector.matches(labels))
                    .map(|(id, spec)| (session, id.clone(), spec.demand.clone())),
            );
        }
        // Stable: otherwise in session order, as before.
        watches.sort_by_key(|(_, _, d)| d.since_seq.map_or((1, 0), |p| (0, p.seq)));
        for (session, id, demand) in watches {
            tracing::debug!(%session, sub = %id, stream = %sid, "new stream matches subscription");
            self.add_watch(rings, session, sid, &id, &demand);
        }
    }

    /// Attaches stream `sid` to subscription `sub` of `session`. A watch that needs a new
    /// demand at the stream's agent beyond a cap is not added: the session gets `end`
    /// `demand_limit` for it (or, for a further subscription of a ring it already reads, an
    /// `error` saying its backlog was refused), and the cap is returned.
    fn add_watch(
        &mut self,
        rings: &dyn RingView,
        session: SessionId,
        sid: StreamId,
        sub: &SubId,
        demand: &Demand,
    ) -> Option<CapHit> {
        let s = self.rings.get(&sid)?;
        self.out.push(Effect::Cause {
            session,
            sub: sub.clone(),
        });
        if s.remote.is_some() && (!demand.follow || LineFilter::of(demand).is_some()) {
            // Another relay's stream is fed as its live ring only.
            self.send_session(
                session,
                Event::Error {
                    code: ErrorCode::BadRequest,
                    message: format!(
                        "stream {sid} is held by another relay: line filters and one-off reads \
                         of it are not served across relays yet"
                    ),
                    id: Some(sub.as_str().to_owned()),
                },
            );
            return None;
        }
        if !demand.follow {
            let labels = s.labels.clone();
            return self.add_private_watch(session, sid, labels, sub, demand);
        }
        // Without a line filter, batches number every line: a resume's position is checked.
        let dense = LineFilter::of(demand).is_none();
        // A line filter: the stream's ring for that filter, shared by whoever asks for it,
        // and from here on served like the stream's own ring under its id.
        let sid = match LineFilter::of(demand) {
            Some(filter) => self.filtered_ring(sid, filter)?,
            None => sid,
        };
        let s = self.rings.get(&sid).expect("present");
        let labels = s.labels.clone();
        let has_agent = s.agent.is_some();
        let live_demand = s.live_demand;
        self.send_session(
            session,
            Event::Stream {
                id: sub.as_str().to_owned(),
                stream: sid.get(),
                labels,
            },
        );
        let wants_backlog =
            demand.tail.unwrap_or(0) > 0 || demand.since_ns.is_some() || demand.since_seq.is_some();
        if let Some(w) = self
            .sessions
            .get_mut(&session)
            .and_then(|ss| ss.watches.get_mut(&sid))
        {
            // Already watched through another subscription: this one reads the same ring, and
            // gets its own backlog up to where the session's reading of the ring stands.
            w.subs.insert(sub.clone());
            let read = rings.read_to(session, sid).unwrap_or(w.started);
            let until = read.filter(|_| wants_backlog)?;
            if let Some(r) = self.rings.get(&sid).and_then(|s| s.remote) {
                // Another relay's stream: its backlog comes from that relay's ring.
                self.out.push(Effect::RemoteBackfill {
                    session,
                    key: sid,
                    agent: r.agent,
                    stream: r.stream,
                    ask: backfill_ask(demand, Some(until)),
                    resume: demand.since_seq,
                    dense,
                    joined: true,
                    fresh: false,
                });
                return None;
            }
            if let Some(hit) = self.cap_hit(sid) {
                let message = format!(
                    "the backlog of stream {sid} was refused: {}; the subscription reads the \
                     stream from here on",
                    self.cap_message(hit)
                );
                self.send_session(
                    session,
                    Event::Error {
                        code: ErrorCode::LimitExceeded,
                        message,
                        id: Some(sub.as_str().to_owned()),
                    },
                );
                return Some(hit);
            }
            let spec = Demand {
                until: Some(until),
                follow: false,
                ..demand.clone()
            };
            if let Some((demand, resume)) = self.open_for_watcher(session, sid, sid, spec) {
                self.own(session, sid, demand);
                self.out.push(Effect::Backfill {
                    session,
                    key: sid,
                    demand,
                    resume,
                    dense,
                });
            }
            return None;
        }
        // A ring the shell has not made yet is empty.
        let (start, end) = rings.ends(sid).unwrap_or_default();
        if let Some(r) = self.rings.get(&sid).and_then(|s| s.remote) {
            self.add_remote_watch(session, sid, sub, demand, r, end, wants_backlog);
            return None;
        }
        let (from, join) = match live_demand {
            // First watcher: the live demand itself carries the backlog.
            None => (end, None),
            Some(_) if !wants_backlog => (end, None),
            // Nothing received yet: share what the live demand is about to send.
            Some(_) if end.last_end.is_none() => (start, None),
            Some(_) => (end, end.last_end),
        };
        let needs_demand = join.is_some() || (live_demand.is_none() && has_agent);
        if needs_demand && let Some(hit) = self.cap_hit(sid) {
            self.send_session(
                session,
                Event::End {
                    stream: sid.get(),
                    reason: EndReason::DemandLimit,
                },
            );
            // A filtered ring made for this watch alone goes again.
            if self.rings.get(&sid).is_some_and(|s| s.filtered.is_some()) && !self.in_use(sid) {
                self.drop_ring(sid, EndReason::DemandLimit);
            }
            return Some(hit);
        }
        let backfill = join.and_then(|join| {
            let spec = Demand {
                until: Some(join),
                follow: false,
                ..demand.clone()
            };
            self.open_for_watcher(session, sid, sid, spec)
        });
        let resume = if backfill.is_some() {
            None
        } else {
            demand.since_seq
        };
        if let Some(ss) = self.sessions.get_mut(&session) {
            ss.watches.insert(
                sid,
                WatchState {
                    subs: BTreeSet::from([sub.clone()]),
                    own: backfill.map(|(d, _)| d).into_iter().collect(),
                    private: false,
                    started: from.last_end,
                },
            );
        }
        self.out.push(Effect::WatchRing {
            session,
            ring: sid,
            from,
            backfill: backfill.map(|(d, _)| d),
            backfill_resume: backfill.and_then(|(_, r)| r),
            resume,
            dense,
        });
        let s = self.rings.get_mut(&sid).expect("present");
        s.watchers.insert(session);
        if let Some(at) = s.linger.take() {
            // A watcher is back before the linger ended: the demand stays.
            self.timers.remove(&(at, Timer::Linger(sid)));
        }
        if live_demand.is_none() && !has_agent {
            self.want(sid, None);
        }
        if live_demand.is_none() && has_agent {
            self.open_live(
                sid,
                Demand {
                    follow: true,
                    ..demand.clone()
                },
            );
        }
        None
    }

    /// Attaches another relay's stream `sid` to subscription `sub` of `session`: the watch
    /// reads this relay's ring from its end (`end`), after its backlog (if it wants one)
    /// fetched from the owner's ring up to exactly there; the stream is wanted.
    #[allow(clippy::too_many_arguments, reason = "add_watch's parts")]
    fn add_remote_watch(
        &mut self,
        session: SessionId,
        sid: StreamId,
        sub: &SubId,
        demand: &Demand,
        r: super::Remote,
        end: crate::ring::Cursor,
        wants_backlog: bool,
    ) {
        // Without a line filter, batches number every line: a resume's position is checked.
        let dense = LineFilter::of(demand).is_none();
        if wants_backlog {
            self.out.push(Effect::RemoteBackfill {
                session,
                key: sid,
                agent: r.agent,
                stream: r.stream,
                ask: backfill_ask(demand, end.last_end),
                resume: demand.since_seq,
                dense,
                joined: false,
                fresh: !r.wanted,
            });
        }
        if let Some(ss) = self.sessions.get_mut(&session) {
            ss.watches.insert(
                sid,
                WatchState {
                    subs: BTreeSet::from([sub.clone()]),
                    own: Vec::new(),
                    private: false,
                    started: end.last_end,
                },
            );
        }
        self.out.push(Effect::WatchRing {
            session,
            ring: sid,
            from: end,
            backfill: None,
            backfill_resume: None,
            // With a backlog, its first batch answers the `since_seq`.
            resume: if wants_backlog {
                None
            } else {
                demand.since_seq
            },
            dense,
        });
        let s = self.rings.get_mut(&sid).expect("present");
        s.watchers.insert(session);
        if let Some(at) = s.linger.take() {
            self.timers.remove(&(at, Timer::Linger(sid)));
        }
        self.want(sid, wants_backlog.then(|| backfill_ask(demand, None)));
    }

    /// Notes `demand` as served for `session`'s watch `key` alone.
    fn own(&mut self, session: SessionId, key: StreamId, demand: DemandId) {
        if let Some(w) = self
            .sessions
            .get_mut(&session)
            .and_then(|ss| ss.watches.get_mut(&key))
        {
            w.own.push(demand);
        }
    }

    /// The filtered ring of stream `sid` for `filter`, made on first use; its id.
    fn filtered_ring(&mut self, sid: StreamId, filter: LineFilter) -> Option<StreamId> {
        let s = self.rings.get(&sid)?;
        if let Some(&id) = s.rings.get(&filter) {
            return Some(id);
        }
        let kind = s.labels.kind;
        let mut ring = RingState::new(s.labels.clone(), s.agent);
        ring.filtered = Some((sid, filter.clone()));
        let id = self.stream_id();
        self.rings.insert(id, ring);
        self.rings
            .get_mut(&sid)
            .expect("present")
            .rings
            .insert(filter, id);
        self.filtered_rings += 1;
        self.out.push(Effect::RingOpened { ring: id, kind });
        Some(id)
    }

    /// A one-off read (the backlog as the agent has it now, then `end`): a demand of the
    /// subscription's own, delivered through a bounded per-watch queue that slows the agent
    /// rather than drop, under an id of its own so the session tells its data and events from
    /// any other watch of the stream. It does not keep the shared stream open.
    fn add_private_watch(
        &mut self,
        session: SessionId,
        sid: StreamId,
        labels: Labels,
        sub: &SubId,
        demand: &Demand,
    ) -> Option<CapHit> {
        let view = self.stream_id();
        let dense = LineFilter::of(demand).is_none();
        let capped = self.cap_hit(sid);
        let opened = match capped {
            Some(_) => None,
            None => {
                let spec = Demand {
                    until: None,
                    ..demand.clone()
                };
                self.open_for_watcher(session, sid, view, spec)
            }
        };
        self.send_session(
            session,
            Event::Stream {
                id: sub.as_str().to_owned(),
                stream: view.get(),
                labels,
            },
        );
        match opened {
            None => {
                let reason = if capped.is_some() {
                    EndReason::DemandLimit
                } else {
                    EndReason::AgentUnavailable
                };
                self.send_session(
                    session,
                    Event::End {
                        stream: view.get(),
                        reason,
                    },
                );
            }
            Some((demand, resume)) => {
                if let Some(ss) = self.sessions.get_mut(&session) {
                    ss.watches.insert(
                        view,
                        WatchState {
                            subs: BTreeSet::from([sub.clone()]),
                            own: vec![demand],
                            private: true,
                            started: None,
                        },
                    );
                }
                self.out.push(Effect::WatchOnce {
                    session,
                    view,
                    demand,
                    resume,
                    dense,
                });
            }
        }
        capped
    }

    /// Opens, at the agent of ring `ring`, a demand served for one watch alone, its batches
    /// stamped `stream_ref` (the watch's id); `None` when the agent is away. The demand, and
    /// the `since_seq` it answers.
    fn open_for_watcher(
        &mut self,
        session: SessionId,
        ring: StreamId,
        stream_ref: StreamId,
        spec: Demand,
    ) -> Option<(DemandId, Option<SeqPos>)> {
        let at = self.rings.get(&ring).and_then(|s| s.agent)?;
        let resume = spec.since_seq;
        let target = Target::Watch {
            session,
            key: stream_ref,
        };
        let demand = self.open(at, stream_ref, target, spec)?;
        Some((demand, resume))
    }

    /// Removes a subscription or watched list; false when the session has none of that id.
    /// Rings no longer watched linger, then are cancelled.
    pub fn unsubscribe(&mut self, now: Time, session: SessionId, id: &str) -> bool {
        let Some(ss) = self.sessions.get_mut(&session) else {
            return false;
        };
        if ss.lists.remove(id).is_some() {
            if ss.lists.is_empty() {
                self.listing.remove(&session);
            }
            self.send_session(session, Event::Unsubscribed { id: id.to_owned() });
            return true;
        }
        if ss.subs.remove(id).is_none() {
            return false;
        }
        let emptied: Vec<StreamId> = ss
            .watches
            .iter_mut()
            .filter(|(_, w)| w.subs.contains(id))
            .filter_map(|(key, w)| {
                w.subs.remove(id);
                w.subs.is_empty().then_some(*key)
            })
            .collect();
        let emptied: Vec<(StreamId, WatchState)> = emptied
            .into_iter()
            .filter_map(|key| ss.watches.remove(&key).map(|w| (key, w)))
            .collect();
        for (key, watch) in &emptied {
            self.unwatch(session, *key, watch);
        }
        self.send_session(session, Event::Unsubscribed { id: id.to_owned() });
        for (key, watch) in emptied {
            self.remove_watcher(now, session, key, watch);
        }
        true
    }

    /// Stream `sid` (and its filtered rings) now has `labels`, which differ from its own in
    /// `meta` only (allowlisted pod metadata changed at the agent): it keeps its id, ring,
    /// demand and watchers. A watch none of whose subscriptions matches the new labels ends
    /// (`end` `labels_changed`); standing subscriptions that match them now and did not
    /// before attach, as to a new stream; watched lists get the entry again, or its removal
    /// where it no longer matches. Rights do not change with `meta`. False, and nothing
    /// changed, when another ring has those labels already.
    pub(super) fn relabel(
        &mut self,
        now: Time,
        rings: &dyn RingView,
        sid: StreamId,
        labels: Labels,
    ) -> bool {
        if self
            .by_labels
            .get(&labels)
            .is_some_and(|&other| other != sid)
        {
            return false;
        }
        let Some(s) = self.rings.get_mut(&sid) else {
            return false;
        };
        let was = std::mem::replace(&mut s.labels, labels.clone());
        let keys: Vec<StreamId> = std::iter::once(sid)
            .chain(s.rings.values().copied())
            .collect();
        if self.by_labels.get(&was) == Some(&sid) {
            self.by_labels.remove(&was);
        }
        self.by_labels.insert(labels.clone(), sid);
        for key in &keys[1..] {
            if let Some(f) = self.rings.get_mut(key) {
                f.labels = labels.clone();
            }
        }
        for &key in &keys {
            let watchers: Vec<SessionId> = self
                .rings
                .get(&key)
                .map(|s| s.watchers.iter().copied().collect())
                .unwrap_or_default();
            for session in watchers {
                let Some(ss) = self.sessions.get_mut(&session) else {
                    continue;
                };
                let specs = &ss.subs;
                let Some(w) = ss.watches.get_mut(&key) else {
                    continue;
                };
                w.subs.retain(|sub| {
                    specs
                        .get(sub)
                        .is_some_and(|spec| spec.selector.matches(&labels))
                });
                if !w.subs.is_empty() {
                    continue;
                }
                let watch = ss.watches.remove(&key).expect("present");
                self.unwatch(session, key, &watch);
                self.send_session(
                    session,
                    Event::End {
                        stream: key.get(),
                        reason: EndReason::LabelsChanged,
                    },
                );
                self.remove_watcher(now, session, key, watch);
            }
        }
        self.relisted(sid, was);
        // Standing subscriptions that match now and were not attached yet.
        let mut attach: Vec<(SessionId, SubId, Demand)> = Vec::new();
        for (&session, ss) in &self.sessions {
            if !ss.may_read(&labels) {
                continue;
            }
            let attached = |sub: &SubId| {
                keys.iter()
                    .any(|k| ss.watches.get(k).is_some_and(|w| w.subs.contains(sub)))
            };
            attach.extend(
                ss.subs
                    .iter()
                    .filter(|(id, spec)| spec.selector.matches(&labels) && !attached(id))
                    .map(|(id, spec)| (session, id.clone(), spec.demand.clone())),
            );
        }
        for (session, id, demand) in attach {
            tracing::debug!(%session, sub = %id, stream = %sid, "relabelled stream matches subscription");
            self.add_watch(rings, session, sid, &id, &demand);
        }
        true
    }

    /// Tells the shell that `session` no longer watches `key`.
    pub(super) fn unwatch(&mut self, session: SessionId, key: StreamId, watch: &WatchState) {
        self.out.push(Effect::Unwatch {
            session,
            key,
            ring: (!watch.private).then_some(key),
        });
    }

    /// Ends a session's watch `key`: the demands served for it alone (its backfills still
    /// arriving, a one-off read's own demand) are cancelled at once; the shared ring (`key` is
    /// then its id) lingers once its last watcher left.
    fn remove_watcher(&mut self, now: Time, session: SessionId, key: StreamId, watch: WatchState) {
        for &demand in &watch.own {
            self.cancel_demand(demand);
        }
        if watch.private {
            // It never held the stream open.
            return;
        }
        let sid = key;
        let Some(s) = self.rings.get_mut(&sid) else {
            return;
        };
        if !s.watchers.remove(&session) || s.held() {
            return;
        }
        // An orphaned ring (its agent away) lingers too, with nothing open to cancel: a
        // watcher that resumes (`since_seq`) within the linger finds the stream and where its
        // ring ended, so the agent back continues it exactly (or renumbers it), rather than a
        // new stream whose gap has no size.
        let at = now.plus(self.config.linger);
        if let Some(old) = s.linger.replace(at) {
            self.timers.remove(&(old, Timer::Linger(sid)));
        }
        self.arm(at, Timer::Linger(sid));
    }

    /// The linger of ring `id` armed for `at` ended: unless a watcher came back, its demand is
    /// cancelled and its content let go (a filtered ring is forgotten: the next subscription
    /// with its filter makes it again).
    pub(super) fn linger_expired(&mut self, id: StreamId, at: Time) {
        let Some(s) = self.rings.get_mut(&id) else {
            return;
        };
        if s.linger != Some(at) || s.held() {
            return;
        }
        s.linger = None;
        let demand = s.live_demand.take();
        let agent = s.agent;
        let filtered = s.filtered.is_some();
        let remote = s.remote.filter(|r| r.wanted);
        if let Some(r) = s.remote.as_mut() {
            r.wanted = false;
        }
        if let Some(r) = remote {
            self.out.push(Effect::Release {
                agent: r.agent.agent,
                stream: r.stream,
            });
        }
        self.out.push(Effect::RingEmptied { ring: id });
        if let Some(d) = demand {
            self.forget_demand(d);
            if let Some((agent, _)) = agent {
                self.send_agent(agent, RelayMsg::Cancel { demand: d.get() });
            }
        }
        if self.orphaned(id) {
            self.drop_orphan(id);
        } else if filtered {
            self.drop_ring(id, EndReason::Complete);
        }
    }

    /// Whether ring `id` has no agent serving it: its agent's connection ended, and no other
    /// relay's catalog holds it.
    fn orphaned(&self, id: StreamId) -> bool {
        self.rings
            .get(&id)
            .is_some_and(|s| s.agent.is_none() && s.remote.is_none_or(|r| !r.in_catalog))
    }

    /// An orphaned ring's linger ended: unless watched (itself, or a stream through one of its
    /// filtered rings), it goes, and an orphaned stream goes with its last filtered ring.
    fn drop_orphan(&mut self, id: StreamId) {
        let Some(s) = self.rings.get(&id) else {
            return;
        };
        let parent = s.filtered.as_ref().map(|(p, _)| *p);
        if !self.in_use(id) && !self.lingers(id) {
            self.drop_ring(id, EndReason::AgentDisconnected);
        }
        if let Some(p) = parent
            && self.orphaned(p)
            && !self.in_use(p)
            && !self.lingers(p)
            && self.rings.get(&p).is_some_and(|p| !p.held())
        {
            self.drop_ring(p, EndReason::AgentDisconnected);
        }
    }
}

/// What a subscription's backlog asks of another relay's ring, before `until`.
fn backfill_ask(demand: &Demand, until: Option<SeqPos>) -> crate::backplane::BackfillAsk {
    crate::backplane::BackfillAsk {
        tail: demand.tail.filter(|n| *n > 0),
        since_ns: demand.since_ns,
        since_seq: demand.since_seq,
        until,
    }
}
