//! The core's demands: issued per agent connection, resolved only within it, finished,
//! failed, re-opened, acknowledged.

use super::*;

impl Core {
    // ---- demands ---------------------------------------------------------------------------

    /// Registers a demand of `agent`'s connection; its id is the connection's nonce and its
    /// count of issued ids. `None` when the agent is gone or has used up its ids (2^32: its
    /// connection is then reset, and the relay re-sends its demands on the next one).
    pub(super) fn add_demand(&mut self, agent: AgentId, target: Target) -> Option<DemandId> {
        let link = self.agents.get_mut(&agent)?;
        if link.issued > 0xffff_ffff {
            self.out.push(Effect::ResetAgent { agent });
            return None;
        }
        let id = DemandId::from(link.nonce << 32 | link.issued);
        link.issued += 1;
        link.demands_open += 1;
        let org = link.org.clone();
        *self.demands_per_org.entry(org.clone()).or_default() += 1;
        self.demands.insert(
            id,
            DemandState {
                agent,
                org,
                claimed: false,
                target,
            },
        );
        Some(id)
    }

    /// Removes a demand; its data stream stops. Its target, if it was open.
    pub(super) fn forget_demand(&mut self, demand: DemandId) -> Option<Target> {
        let entry = self.demands.remove(&demand)?;
        self.out.push(Effect::DemandClosed { demand });
        if let Target::Watch { session, key } = entry.target
            && let Some(w) = self
                .sessions
                .get_mut(&session)
                .and_then(|ss| ss.watches.get_mut(&key))
        {
            w.own.retain(|d| *d != demand);
        }
        if let Some(link) = self.agents.get_mut(&entry.agent) {
            link.demands_open = link.demands_open.saturating_sub(1);
        }
        if let Some(n) = self.demands_per_org.get_mut(&entry.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.demands_per_org.remove(&entry.org);
            }
        }
        Some(entry.target)
    }

    /// Forgets a demand the relay no longer wants and tells its agent (a finished one is
    /// already forgotten).
    pub(super) fn cancel_demand(&mut self, demand: DemandId) {
        if let Some(agent) = self.demands.get(&demand).map(|d| d.agent) {
            self.forget_demand(demand);
            self.send_agent(
                agent,
                RelayMsg::Cancel {
                    demand: demand.get(),
                },
            );
        }
    }

    /// Why a demand id an agent presented resolves to nothing of its connection.
    pub(super) fn unresolved(&self, agent: AgentId, demand: DemandId) -> Unresolved {
        match self.agents.get(&agent) {
            // Gone (the connection is ending), or one of its own that ended meanwhile.
            None => Unresolved::Gone,
            Some(link) if link.issued(demand) => Unresolved::Gone,
            Some(_) if self.demands.contains_key(&demand) => {
                Unresolved::Violation(AgentViolation::ForeignDemand)
            }
            Some(_) => Unresolved::Violation(AgentViolation::UnknownDemand),
        }
    }

    /// A data stream of `agent`'s connection names `demand`: where its data goes. Only that
    /// connection's demands are looked at, and each accepts one data stream.
    pub fn resolve(&mut self, agent: AgentId, demand: DemandId) -> Result<Target, Unresolved> {
        let Some(entry) = self.demands.get_mut(&demand).filter(|e| e.agent == agent) else {
            return Err(self.unresolved(agent, demand));
        };
        if entry.claimed {
            return Err(Unresolved::Violation(AgentViolation::DuplicateDataStream));
        }
        entry.claimed = true;
        let target = entry.target;
        let live = match target {
            Target::Ring(id) => self.rings.contains_key(&id),
            Target::Watch { session, .. } => self.sessions.contains_key(&session),
            // Its queue's reader is the shell's to check.
            Target::Fetch => true,
        };
        if live {
            Ok(target)
        } else {
            // Its stream or watcher went meanwhile.
            self.forget_demand(demand);
            Err(Unresolved::Gone)
        }
    }

    /// A demand whose data has nowhere to go any more (the shell found its watcher gone): it
    /// is forgotten, and its data stream stops.
    pub fn abandon(&mut self, demand: DemandId) {
        self.forget_demand(demand);
    }

    /// The agent could not serve a demand.
    ///
    /// A filtered ring whose demand the agent refuses as a bad request (a line filter it cannot
    /// serve) ends for its watchers with `end` `refused`, rather than being asked again. Only
    /// the connection's own demands are looked at: a demand it was never given is a violation
    /// (one that ended meanwhile is ignored).
    pub fn open_failed(
        &mut self,
        now: Time,
        agent: AgentId,
        demand: DemandId,
        code: ErrorCode,
    ) -> Result<(), AgentViolation> {
        if self.demands.get(&demand).is_none_or(|d| d.agent != agent) {
            return match self.unresolved(agent, demand) {
                Unresolved::Gone => Ok(()),
                Unresolved::Violation(v) => Err(v),
            };
        }
        if code == ErrorCode::BadRequest
            && let Some(DemandState {
                target: Target::Ring(id),
                ..
            }) = self.demands.get(&demand)
            && let Some(s) = self.rings.get(id)
            && s.filtered.is_some()
            && s.live_demand == Some(demand)
        {
            let id = *id;
            self.forget_demand(demand);
            if let Some(s) = self.rings.get_mut(&id) {
                s.live_demand = None;
            }
            self.end_stream(id, EndReason::Refused);
            return Ok(());
        }
        self.demand_finished(now, agent, demand);
        Ok(())
    }

    /// A demand's data stream ended (finished, reset or failed). A live demand that ends while
    /// its ring is still watched is opened again after [`CoreConfig::reopen_after`], resuming
    /// where the ring ended. Only `agent`'s own demands are looked at.
    pub fn demand_finished(&mut self, now: Time, agent: AgentId, demand: DemandId) {
        if self.demands.get(&demand).is_none_or(|d| d.agent != agent) {
            return;
        }
        match self.forget_demand(demand) {
            Some(Target::Ring(id)) => {
                let Some(s) = self.rings.get_mut(&id) else {
                    return;
                };
                if s.live_demand != Some(demand) {
                    return;
                }
                s.live_demand = None;
                if !s.held() || s.agent.is_none() {
                    return;
                }
                self.arm(now.plus(self.config.reopen_after), Timer::Reopen(id));
            }
            Some(Target::Watch { session, .. }) => {
                // Its queue closes once drained: the watcher's writer must look.
                self.out.push(Effect::Wake { session });
            }
            // Its queue closes with the sink: the fetch sees the end.
            Some(Target::Fetch) | None => {}
        }
    }

    /// Opens a one-off read of stream `local` of `agent`'s connection (`spec`, made a
    /// one-off read) for another relay's backfill: its batches carry the stream's ring id.
    /// `None` when the connection has no such stream, or a demand cap refuses it (counted as
    /// any cap hit).
    pub fn open_fetch(
        &mut self,
        agent: AgentId,
        local: AgentStreamId,
        spec: Demand,
    ) -> Option<DemandId> {
        let sid = self.ring_of(agent, local)?;
        if self.cap_hit(sid).is_some() {
            return None;
        }
        let at = self.rings.get(&sid)?.agent?;
        let spec = Demand {
            follow: false,
            ..spec
        };
        self.open(at, sid, Target::Fetch, spec)
    }

    /// Stops a fetch ([`Self::open_fetch`]) that is still open: the agent is told `cancel`.
    pub fn cancel_fetch(&mut self, demand: DemandId) {
        if self
            .demands
            .get(&demand)
            .is_some_and(|d| d.target == Target::Fetch)
        {
            self.cancel_demand(demand);
        }
    }

    pub(super) fn reopen(&mut self, id: StreamId, rings: &dyn RingView) {
        let Some(s) = self.rings.get(&id) else {
            return;
        };
        if s.live_demand.is_some() || !s.held() || s.agent.is_none() {
            return;
        }
        let resume = s.resume_demand(rings.resume(id));
        self.open_live(id, resume);
    }

    /// The live demands `agent` serves, each with what every watcher of its ring has been
    /// handed: what the relay acknowledges (`ack`).
    pub fn acks(&self, rings: &dyn RingView, agent: AgentId) -> Vec<(DemandId, SeqPos)> {
        let Some(link) = self.agents.get(&agent) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &(sid, _) in link.streams.values() {
            let Some(s) = self.rings.get(&sid) else {
                continue;
            };
            for id in std::iter::once(sid).chain(s.rings.values().copied()) {
                if let Some(r) = self.rings.get(&id)
                    && r.agent.is_some_and(|(a, _)| a == agent)
                    && let Some(demand) = r.live_demand
                    && let Some(at) = rings.ack_point(id)
                {
                    out.push((demand, at));
                }
            }
        }
        out
    }

    /// Opens the live demand of ring `id` at its agent.
    pub(super) fn open_live(&mut self, id: StreamId, spec: Demand) {
        let Some(at) = self.rings.get(&id).and_then(|s| s.agent) else {
            return;
        };
        let demand = self.open(at, id, Target::Ring(id), spec);
        if let Some(d) = demand {
            self.out.push(Effect::LiveDemand {
                demand: d,
                ring: id,
            });
        }
        self.rings.get_mut(&id).expect("present").live_demand = demand;
    }

    /// Whether one more demand at the agent serving ring `id` would pass a cap (counted when
    /// it would). Only demands a subscription asks for are capped: a watched ring that is
    /// re-opened (its agent came back, its demand ended) replaces a demand it had.
    pub(super) fn cap_hit(&mut self, id: StreamId) -> Option<CapHit> {
        let (agent, _) = self.rings.get(&id)?.agent?;
        let link = self.agents.get(&agent)?;
        let hit = if link.demands_open >= self.config.max_demands_per_agent {
            CapHit::PerAgent
        } else if self.demands_per_org.get(&link.org).copied().unwrap_or(0)
            >= self.config.max_demands_per_org
        {
            CapHit::PerOrg
        } else {
            return None;
        };
        self.count(Count::LimitHit(hit.limit()));
        tracing::debug!(%agent, limit = hit.limit(), "demand refused by a cap");
        Some(hit)
    }

    /// What a session is told about a cap.
    pub(super) fn cap_message(&self, hit: CapHit) -> String {
        match hit {
            CapHit::PerAgent => format!(
                "the stream's agent already serves {} demands, the most allowed",
                self.config.max_demands_per_agent
            ),
            CapHit::PerOrg => format!(
                "the org's agents already serve {} demands, the most allowed",
                self.config.max_demands_per_org
            ),
        }
    }

    /// Registers a demand feeding `target` and sends its `open` to the agent that has the
    /// stream (`at`: agent, and the agent's own id of the stream); batches will carry
    /// `stream_ref`. `None` if the agent is gone.
    pub(super) fn open(
        &mut self,
        (agent, local): (AgentId, AgentStreamId),
        stream_ref: StreamId,
        target: Target,
        spec: Demand,
    ) -> Option<DemandId> {
        let demand = self.add_demand(agent, target)?;
        self.count(Count::DemandOpened);
        self.send_agent(
            agent,
            RelayMsg::Open {
                demand: demand.get(),
                stream: local.get(),
                stream_ref: stream_ref.get(),
                demand_spec: spec,
                // The shell stamps it when it traces the demand.
                traceparent: None,
            },
        );
        Some(demand)
    }
}
