//! The core's remote watchers: another relay leasing a stream of an agent this relay holds
//! (the backplane's owner side). A lease is a watcher that is not a session: the first opens
//! the stream's live demand at the agent (as a first watcher would), and when the last one
//! goes the demand lingers and is cancelled unless a watcher, local or remote, came back.
//! Publishing the batches is not decided here: the backplane publishes what flows while a
//! lease is held.

use super::*;

impl Core {
    /// Another relay now leases (`leased`), or no longer leases, the stream `local` of
    /// `agent`'s connection. Only that connection's own streams are looked at; anything else
    /// is ignored. A lease that needs a new live demand at the agent counts toward the
    /// `--max-demands-per-*` caps like a local watcher's first subscription: beyond one, it
    /// is refused (`Err`, counted in `limit_hits_total`) and holds nothing. A live demand it
    /// opens reads `backlog` first (what the wanting relay's first watcher asked for), unless
    /// the ring here has an end to resume from.
    pub fn remote_lease(
        &mut self,
        now: Time,
        rings: &dyn RingView,
        agent: AgentId,
        local: AgentStreamId,
        leased: bool,
        backlog: Option<&crate::backplane::BackfillAsk>,
    ) -> Result<(), CapHit> {
        let Some(&(sid, _)) = self.agents.get(&agent).and_then(|a| a.streams.get(&local)) else {
            return Ok(());
        };
        let Some(s) = self.rings.get(&sid) else {
            return Ok(());
        };
        if s.agent != Some((agent, local)) || s.leased == leased {
            return Ok(());
        }
        if leased
            && s.live_demand.is_none()
            && let Some(hit) = self.cap_hit(sid)
        {
            return Err(hit);
        }
        let s = self.rings.get_mut(&sid).expect("present");
        s.leased = leased;
        if leased {
            if let Some(at) = s.linger.take() {
                // Leased again before the linger ended: the demand stays.
                self.timers.remove(&(at, Timer::Linger(sid)));
            }
            if s.live_demand.is_none() {
                let at = rings.resume(sid);
                let fresh = at.since_seq.is_none() && at.since_ns.is_none();
                let mut demand = s.resume_demand(at);
                if let Some(ask) = backlog.filter(|_| fresh) {
                    demand.tail = ask.tail;
                    demand.since_ns = ask.since_ns;
                    demand.since_seq = ask.since_seq;
                }
                self.open_live(sid, demand);
            }
        } else if !s.held() {
            let at = now.plus(self.config.linger);
            if let Some(old) = s.linger.replace(at) {
                self.timers.remove(&(old, Timer::Linger(sid)));
            }
            self.arm(at, Timer::Linger(sid));
        }
        Ok(())
    }

    /// The ring of stream `local` of `agent`'s connection (its own streams only), unless it
    /// has none: what another relay's backfill request is answered from.
    pub fn ring_of(&self, agent: AgentId, local: AgentStreamId) -> Option<StreamId> {
        let &(sid, _) = self.agents.get(&agent)?.streams.get(&local)?;
        let s = self.rings.get(&sid)?;
        (s.agent == Some((agent, local)) && s.filtered.is_none()).then_some(sid)
    }

    /// The agent's own id of ring `ring`, if it is a stream (not a filtered ring) that
    /// `agent`'s connection serves now: what the backplane publishes it under.
    pub fn agent_stream(&self, agent: AgentId, ring: StreamId) -> Option<AgentStreamId> {
        let s = self.rings.get(&ring)?;
        match s.agent {
            Some((a, local)) if a == agent && s.filtered.is_none() => Some(local),
            _ => None,
        }
    }
}

impl Core {
    /// The shared catalog now: every stream of another relay's agent, with its labels (org
    /// and cluster from the agent's certificate at its relay). A stream not held yet becomes
    /// a ring (listed, and attached to the standing subscriptions that match it, each
    /// session's rights checked here); one of the same labels orphaned here (its agent moved
    /// to another relay) is fed from there; one served by an agent here stays local. A stream
    /// that left the catalog goes, unless watched: its watchers are told `paused`, and it is
    /// still wanted, so the lease finds the agent wherever it comes back.
    pub fn remote_catalog(
        &mut self,
        rings: &dyn RingView,
        streams: Vec<(AgentTokens, Token, Labels)>,
    ) {
        let mut seen = std::collections::HashSet::new();
        for (agent, stream, labels) in streams {
            let key = (agent.agent, stream);
            seen.insert(key);
            if let Some(&sid) = self.by_remote.get(&key) {
                if let Some(r) = self.rings.get_mut(&sid).and_then(|s| s.remote.as_mut())
                    && !r.in_catalog
                {
                    r.in_catalog = true;
                    self.listed(sid);
                }
                continue;
            }
            let remote = Remote {
                agent,
                stream,
                in_catalog: true,
                wanted: false,
                state: RemoteState::Flowing,
            };
            match self.by_labels.get(&labels) {
                Some(&sid) => {
                    let s = self.rings.get_mut(&sid).expect("present");
                    if s.agent.is_some() || s.remote.is_some() {
                        // Served here (or by the first relay that announced it).
                        continue;
                    }
                    let watched = !s.watchers.is_empty();
                    s.remote = Some(Remote {
                        // Its watchers were told `paused` when its agent left this relay:
                        // the owner's first answer tells them `resumed`.
                        state: if watched {
                            RemoteState::Away
                        } else {
                            RemoteState::Flowing
                        },
                        ..remote
                    });
                    self.by_remote.insert(key, sid);
                    self.listed(sid);
                    if watched {
                        self.want(sid, None);
                    }
                }
                None => {
                    let sid = self.stream_id();
                    let mut s = RingState::new(labels.clone(), None);
                    s.remote = Some(remote);
                    self.rings.insert(sid, s);
                    self.by_labels.insert(labels.clone(), sid);
                    self.by_remote.insert(key, sid);
                    self.streams += 1;
                    self.out.push(Effect::RingOpened {
                        ring: sid,
                        kind: labels.kind,
                    });
                    self.listed(sid);
                    self.attach_standing(rings, sid, &labels);
                }
            }
        }
        let gone: Vec<StreamId> = self
            .by_remote
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(_, sid)| *sid)
            .collect();
        for sid in gone {
            let Some(s) = self.rings.get_mut(&sid) else {
                continue;
            };
            let Some(r) = s.remote.as_mut().filter(|r| r.in_catalog) else {
                continue;
            };
            r.in_catalog = false;
            if !self.in_use(sid) {
                self.drop_ring(sid, EndReason::AgentDisconnected);
                continue;
            }
            self.listed(sid);
            self.remote_paused(sid, RemoteState::Away);
        }
        self.shrink();
    }

    /// The owner's answer about wanted stream `stream` of agent `agent` (or the lack of one):
    /// watchers are told `paused` (`agent_disconnected`, `backplane_unavailable`) and
    /// `resumed` as it changes.
    pub fn remote_state(&mut self, agent: Token, stream: Token, state: RemoteState) {
        let Some(&sid) = self.by_remote.get(&(agent, stream)) else {
            return;
        };
        if self
            .rings
            .get(&sid)
            .and_then(|s| s.remote)
            .is_some_and(|r| r.wanted)
        {
            self.remote_paused(sid, state);
        }
    }

    /// The relay holding `agent` refused this relay's lease on `stream`: serving it needed one
    /// more demand at the agent beyond its cap `limit`. Every watcher of the ring here gets
    /// `end` `demand_limit` (as a local subscription refused by a cap does; their standing
    /// subscriptions stay), and the stream is no longer wanted; the ring stays listed.
    pub fn remote_refused(&mut self, now: Time, agent: Token, stream: Token, limit: &str) {
        let Some(&sid) = self.by_remote.get(&(agent, stream)) else {
            return;
        };
        let Some(s) = self.rings.get_mut(&sid) else {
            return;
        };
        if !s.remote.is_some_and(|r| r.wanted) {
            return;
        }
        tracing::info!(ring = %sid, limit, "backplane: the owner refused a lease (demand cap)");
        let watchers: Vec<SessionId> = std::mem::take(&mut s.watchers).into_iter().collect();
        for w in watchers {
            if let Some(watch) = self
                .sessions
                .get_mut(&w)
                .and_then(|ss| ss.watches.remove(&sid))
            {
                self.unwatch(w, sid, &watch);
                for &demand in &watch.own {
                    self.cancel_demand(demand);
                }
            }
            self.send_session(
                w,
                Event::End {
                    stream: sid.get(),
                    reason: EndReason::DemandLimit,
                },
            );
        }
        // Now as when the linger of its last watcher ends: released, emptied, and gone if its
        // agent is gone from the catalog too.
        let at = now.plus(self.config.linger);
        if let Some(old) = self.rings.get_mut(&sid).and_then(|s| s.linger.replace(at)) {
            self.timers.remove(&(old, Timer::Linger(sid)));
        }
        self.linger_expired(sid, at);
    }

    /// Ring `sid`'s remote stream is now in `state`: its watchers are told of a change.
    fn remote_paused(&mut self, sid: StreamId, state: RemoteState) {
        let Some(r) = self.rings.get_mut(&sid).and_then(|s| s.remote.as_mut()) else {
            return;
        };
        if r.state == state {
            return;
        }
        r.state = state;
        let event = match state {
            RemoteState::Flowing => Event::Resumed { stream: sid.get() },
            RemoteState::Away => Event::Paused {
                stream: sid.get(),
                reason: PauseReason::AgentDisconnected,
            },
            RemoteState::Unavailable => Event::Paused {
                stream: sid.get(),
                reason: PauseReason::BackplaneUnavailable,
            },
        };
        self.tell_watchers(sid, &event);
    }

    /// Wants ring `sid`'s remote stream, unless it is wanted already (a watcher came);
    /// `backlog`: what the watcher that wants it asked to read back.
    pub(super) fn want(&mut self, sid: StreamId, backlog: Option<crate::backplane::BackfillAsk>) {
        let Some(r) = self.rings.get_mut(&sid).and_then(|s| s.remote.as_mut()) else {
            return;
        };
        if r.wanted {
            return;
        }
        r.wanted = true;
        let (agent, stream) = (r.agent, r.stream);
        self.out.push(Effect::Want {
            ring: sid,
            agent,
            stream,
            backlog,
        });
    }

    /// Ring `sid` is no longer another relay's stream (gone, or its agent is here now).
    pub(super) fn forget_remote(&mut self, sid: StreamId, r: Remote) {
        if self.by_remote.get(&(r.agent.agent, r.stream)) == Some(&sid) {
            self.by_remote.remove(&(r.agent.agent, r.stream));
        }
        if r.wanted {
            self.out.push(Effect::Release {
                agent: r.agent.agent,
                stream: r.stream,
            });
        }
    }
}
