//! The core's catalog: streams announced and removed by agents, under caps per agent and per
//! org, their rings, and the list watchers told of changes.

use super::*;

impl Core {
    // ---- catalog ---------------------------------------------------------------------------

    /// Streams an agent announced. Org and cluster come from the agent's certificate. A stream
    /// beyond a cap (label bytes of the stream, streams or label bytes of the connection,
    /// streams of the org) is not taken: the refused ones are returned, by the limit that
    /// refused them, for the agent to be told. A stream coming back re-opens for its watchers;
    /// a new one is attached to every matching standing subscription.
    pub fn catalog_add(
        &mut self,
        now: Time,
        rings: &dyn RingView,
        agent: AgentId,
        streams: Vec<StreamInfo>,
    ) -> Vec<CatalogRefusal> {
        let Some(link) = self.agents.get(&agent) else {
            return Vec::new();
        };
        let (org, cluster) = (link.org.to_string(), link.cluster.clone());
        let org_key = link.org.clone();
        let mut refused: Vec<CatalogRefusal> = Vec::new();
        for info in streams {
            let local = AgentStreamId::from(info.id);
            let bytes = label_bytes(&info.labels);
            // An id announced again: the same stream is a repeat; one whose `meta` alone
            // changed is the same stream relabelled in place; another replaces it.
            if let Some(&(old, _)) = self.agents.get(&agent).and_then(|l| l.streams.get(&local)) {
                let announced = Labels {
                    org: org.clone(),
                    cluster: cluster.clone(),
                    ..info.labels.clone()
                };
                let held = self.rings.get(&old).map(|s| s.labels.clone());
                if held.as_ref() == Some(&announced) {
                    continue;
                }
                self.uncount_stream(agent, local);
                let ours = self.rings.get(&old).and_then(|s| s.agent) == Some((agent, local));
                if ours
                    && held.is_some_and(|h| same_but_meta(&h, &announced))
                    && info.labels.meta_is_valid()
                    && self.catalog_cap(agent, &org_key, bytes).is_none()
                    && self.relabel(now, rings, old, announced)
                {
                    self.count_stream(agent, local, old, bytes);
                    continue;
                }
                if ours {
                    self.end_stream(old, EndReason::LabelsChanged);
                }
            }
            // Allowlisted pod metadata out of its bounds or prefixes (`meta_per_stream`).
            let cap = if info.labels.meta_is_valid() {
                self.catalog_cap(agent, &org_key, bytes)
            } else {
                Some("meta_per_stream")
            };
            if let Some(limit) = cap {
                self.count(Count::LimitHit(limit));
                match refused.iter_mut().find(|r| r.limit == limit) {
                    Some(r) => r.streams.push(info.id),
                    None => refused.push(CatalogRefusal {
                        limit,
                        streams: vec![info.id],
                    }),
                }
                continue;
            }
            let mut labels = info.labels;
            labels.org.clone_from(&org);
            labels.cluster.clone_from(&cluster);
            let (sid, is_new) = match self.by_labels.get(&labels) {
                Some(&sid) => (sid, false),
                None => {
                    let sid = self.stream_id();
                    self.by_labels.insert(labels.clone(), sid);
                    self.rings.insert(sid, RingState::new(labels.clone(), None));
                    self.streams += 1;
                    self.out.push(Effect::RingOpened {
                        ring: sid,
                        kind: labels.kind,
                    });
                    (sid, true)
                }
            };
            self.count_stream(agent, local, sid, bytes);
            self.serve_rings(rings, sid, agent, local, is_new);
            if is_new {
                self.attach_standing(rings, sid, &labels);
            }
        }
        refused
    }

    /// Stream `sid` and its filtered rings are served by `agent` (as `local`) now: an orphaned,
    /// watched ring resumes where it ended; one another connection served is taken over.
    pub(super) fn serve_rings(
        &mut self,
        rings: &dyn RingView,
        sid: StreamId,
        agent: AgentId,
        local: AgentStreamId,
        is_new: bool,
    ) {
        let s = self.rings.get(&sid).expect("present");
        let ids: Vec<StreamId> = std::iter::once(sid)
            .chain(s.rings.values().copied())
            .collect();
        for id in ids {
            let s = self.rings.get_mut(&id).expect("present");
            if let Some(r) = s.remote.take() {
                // The agent of another relay's stream is here now: served locally, resumed
                // where the ring ended.
                self.forget_remote(id, r);
            }
            let s = self.rings.get_mut(&id).expect("present");
            let previous = s.agent.replace((agent, local));
            let watched = !s.watchers.is_empty();
            if previous.is_none() && !is_new && watched {
                // An orphaned, watched stream: its agent is back.
                self.tell_watchers(id, &Event::Resumed { stream: id.get() });
            }
            if previous.is_none() {
                self.listed(id);
            }
            if previous.is_some_and(|(a, _)| a != agent) {
                // A newer connection of the same agent took the stream over.
                let s = self.rings.get_mut(&id).expect("present");
                if let Some(d) = s.live_demand.take() {
                    self.forget_demand(d);
                }
            }
            let s = self.rings.get(&id).expect("present");
            // Reconnect: resume what watchers had, from where the ring ended.
            if s.held() && s.live_demand.is_none() {
                let resume = s.resume_demand(rings.resume(id));
                self.open_live(id, resume);
            }
        }
    }

    /// Streams an agent no longer has: their watchers get an `end` event. Only the streams this
    /// connection announced and still serves are looked at: an id it never announced, or a
    /// stream another connection (of the same agent) has taken over since, is left alone.
    pub fn catalog_remove(&mut self, agent: AgentId, gone: Vec<StreamGone>) {
        for g in gone {
            let local = AgentStreamId::from(g.id);
            let Some(sid) = self.uncount_stream(agent, local) else {
                continue;
            };
            if self.rings.get(&sid).and_then(|s| s.agent) != Some((agent, local)) {
                continue;
            }
            self.end_stream(sid, EndReason::from_agent(&g.reason));
        }
        self.shrink();
    }

    /// The cap a new stream of `bytes` label bytes from `agent` (of `org`) would pass, if any.
    pub(super) fn catalog_cap(
        &self,
        agent: AgentId,
        org: &Arc<str>,
        bytes: usize,
    ) -> Option<&'static str> {
        let c = &self.config;
        let link = self.agents.get(&agent)?;
        if bytes > c.max_label_bytes_per_stream {
            Some("label_bytes_per_stream")
        } else if link.streams.len() >= c.max_streams_per_agent {
            Some("streams_per_agent")
        } else if link.label_bytes + bytes > c.max_label_bytes_per_agent {
            Some("label_bytes_per_agent")
        } else if self.streams_per_org.get(org).copied().unwrap_or(0) >= c.max_streams_per_org {
            Some("streams_per_org")
        } else {
            None
        }
    }

    /// Files stream `sid` as announced by `agent` under its own id `local`.
    pub(super) fn count_stream(
        &mut self,
        agent: AgentId,
        local: AgentStreamId,
        sid: StreamId,
        bytes: usize,
    ) {
        let Some(link) = self.agents.get_mut(&agent) else {
            return;
        };
        link.streams.insert(local, (sid, bytes));
        link.label_bytes += bytes;
        *self.streams_per_org.entry(link.org.clone()).or_default() += 1;
        self.catalog_bytes += catalog_cost(bytes);
    }

    /// Unfiles the stream `agent` announced as `local`; the relay's id of it.
    pub(super) fn uncount_stream(
        &mut self,
        agent: AgentId,
        local: AgentStreamId,
    ) -> Option<StreamId> {
        let link = self.agents.get_mut(&agent)?;
        let (sid, bytes) = link.streams.remove(&local)?;
        link.label_bytes = link.label_bytes.saturating_sub(bytes);
        let org = link.org.clone();
        self.uncount_streams(&org, 1, bytes);
        Some(sid)
    }

    /// Unfiles `n` streams of `org` holding `bytes` of labels.
    pub(super) fn uncount_streams(&mut self, org: &Arc<str>, n: usize, bytes: usize) {
        if let Some(count) = self.streams_per_org.get_mut(org) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.streams_per_org.remove(org);
            }
        }
        let cost = n.saturating_mul(STREAM_OVERHEAD_BYTES) + 2 * bytes;
        self.catalog_bytes -= i64::try_from(cost).unwrap_or(i64::MAX);
    }

    /// Gives back the memory of an index that held far more than it does (after a large
    /// catalog went), so the process's memory follows what it holds.
    pub(super) fn shrink(&mut self) {
        if self.by_labels.capacity() > 64 && self.by_labels.capacity() > 4 * self.by_labels.len() {
            self.by_labels.shrink_to_fit();
        }
    }

    /// Notes that ring `id` appeared or changed liveness, for watched lists.
    pub(super) fn listed(&mut self, id: StreamId) {
        if self.listing.is_empty() {
            return;
        }
        if let Some(s) = self.rings.get(&id).filter(|s| s.filtered.is_none()) {
            let change = ListChange {
                labels: s.labels.clone(),
                was: None,
                change: Ok(s.entry(id)),
            };
            self.list_changes.push(change);
        }
    }

    /// Notes that ring `id`'s labels changed in place (they were `was`), for watched lists.
    pub(super) fn relisted(&mut self, id: StreamId, was: Labels) {
        if self.listing.is_empty() {
            return;
        }
        if let Some(s) = self.rings.get(&id).filter(|s| s.filtered.is_none()) {
            let change = ListChange {
                labels: s.labels.clone(),
                was: Some(was),
                change: Ok(s.entry(id)),
            };
            self.list_changes.push(change);
        }
    }

    /// Tells each session watching lists, one `catalog` event per watch, of the list changes
    /// made since the last time, as far as its selector and its rights go.
    pub(super) fn tell_list_changes(&mut self) {
        if self.list_changes.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.list_changes);
        let listing: Vec<SessionId> = self.listing.iter().copied().collect();
        for id in listing {
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            let mut events = Vec::new();
            for (list, selector) in &session.lists {
                let (mut added, mut removed) = (Vec::new(), Vec::new());
                for c in &changes {
                    let shown = |l: &Labels| selector.matches(l) && session.may_read(l);
                    if !shown(&c.labels) {
                        // Relabelled out of this list.
                        if let (Some(was), Ok(e)) = (&c.was, &c.change)
                            && shown(was)
                        {
                            removed.push(StreamRemoved {
                                stream: e.stream,
                                reason: EndReason::LabelsChanged,
                            });
                        }
                        continue;
                    }
                    match &c.change {
                        Ok(e) => added.push(e.clone()),
                        Err(r) => removed.push(r.clone()),
                    }
                }
                if !added.is_empty() || !removed.is_empty() {
                    events.push(Event::Catalog {
                        id: list.as_str().to_owned(),
                        added,
                        removed,
                    });
                }
            }
            for event in events {
                self.send_session(id, event);
            }
        }
    }

    /// Ends stream (or filtered ring) `sid` for its watchers with `reason`, and forgets it.
    pub(super) fn end_stream(&mut self, sid: StreamId, reason: EndReason) {
        let Some(s) = self.rings.get(&sid) else {
            return;
        };
        let filtered: Vec<StreamId> = s.rings.values().copied().collect();
        for ring in filtered {
            self.end_stream(ring, reason.clone());
        }
        let Some(s) = self.rings.get(&sid) else {
            return;
        };
        let watchers: Vec<SessionId> = s.watchers.iter().copied().collect();
        for w in watchers {
            let removed = self
                .sessions
                .get_mut(&w)
                .and_then(|ss| ss.watches.remove(&sid));
            if removed.is_some() {
                self.out.push(Effect::Unwatch {
                    session: w,
                    key: sid,
                    ring: None,
                });
            }
            self.send_session(
                w,
                Event::End {
                    stream: sid.get(),
                    reason: reason.clone(),
                },
            );
            for demand in removed.iter().flat_map(|w| &w.own) {
                self.cancel_demand(*demand);
            }
        }
        if let Some(d) = self.rings.get_mut(&sid).and_then(|s| s.live_demand.take()) {
            self.forget_demand(d);
        }
        self.drop_ring(sid, reason);
    }

    /// Forgets a stream, with its filtered rings, or one filtered ring. `reason` is what
    /// watched lists are told of a stream (filtered rings are not listed).
    pub(super) fn drop_ring(&mut self, id: StreamId, reason: EndReason) {
        let Some(s) = self.rings.remove(&id) else {
            return;
        };
        if let Some(at) = s.linger {
            self.timers.remove(&(at, Timer::Linger(id)));
        }
        if s.filtered.is_none() && !self.listing.is_empty() {
            self.list_changes.push(ListChange {
                labels: s.labels.clone(),
                was: None,
                change: Err(StreamRemoved {
                    stream: id.get(),
                    reason: reason.clone(),
                }),
            });
        }
        if let Some(d) = s.live_demand {
            self.forget_demand(d);
        }
        if let Some(r) = s.remote {
            self.forget_remote(id, r);
        }
        self.out.push(Effect::RingClosed { ring: id });
        match s.filtered {
            Some((parent, filter)) => {
                if let Some(p) = self.rings.get_mut(&parent) {
                    p.rings.remove(&filter);
                }
                self.filtered_rings -= 1;
            }
            None => {
                if self.by_labels.get(&s.labels) == Some(&id) {
                    self.by_labels.remove(&s.labels);
                }
                self.streams -= 1;
                for ring in s.rings.into_values() {
                    self.drop_ring(ring, reason.clone());
                }
            }
        }
    }

    /// Whether ring `id` lingers after its last watcher left, itself or (a stream) through one
    /// of its filtered rings.
    pub(super) fn lingers(&self, id: StreamId) -> bool {
        self.itself_or_filtered(id, |r| r.linger.is_some())
    }

    /// Whether ring `id` is watched, itself or (a stream) through one of its filtered rings.
    pub(super) fn in_use(&self, id: StreamId) -> bool {
        self.itself_or_filtered(id, |r| !r.watchers.is_empty())
    }

    /// Whether `holds` holds for ring `id` or (a stream) for one of its filtered rings.
    fn itself_or_filtered(&self, id: StreamId, holds: impl Fn(&RingState) -> bool) -> bool {
        self.rings.get(&id).is_some_and(|s| {
            holds(s)
                || s.rings
                    .values()
                    .any(|r| self.rings.get(r).is_some_and(&holds))
        })
    }
}

/// Whether `a` and `b` differ in `meta` at most (the allowlisted pod metadata): the same
/// stream, with the same identity and rights.
fn same_but_meta(a: &Labels, b: &Labels) -> bool {
    Labels {
        meta: Default::default(),
        ..a.clone()
    } == Labels {
        meta: Default::default(),
        ..b.clone()
    }
}
