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
    /// is ignored.
    pub fn remote_lease(
        &mut self,
        now: Time,
        rings: &dyn RingView,
        agent: AgentId,
        local: AgentStreamId,
        leased: bool,
    ) {
        let Some(&(sid, _)) = self.agents.get(&agent).and_then(|a| a.streams.get(&local)) else {
            return;
        };
        let Some(s) = self.rings.get_mut(&sid) else {
            return;
        };
        if s.agent != Some((agent, local)) || s.remote == leased {
            return;
        }
        s.remote = leased;
        if leased {
            if let Some(at) = s.linger.take() {
                // Leased again before the linger ended: the demand stays.
                self.timers.remove(&(at, Timer::Linger(sid)));
            }
            if s.live_demand.is_none() {
                let resume = s.resume_demand(rings.resume(sid));
                self.open_live(sid, resume);
            }
        } else if !s.held() {
            let at = now.plus(self.config.linger);
            if let Some(old) = s.linger.replace(at) {
                self.timers.remove(&(old, Timer::Linger(sid)));
            }
            self.arm(at, Timer::Linger(sid));
        }
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
