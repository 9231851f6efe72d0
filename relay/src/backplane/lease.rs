//! Wants as leases (pure; time is milliseconds given by the caller).
//!
//! A relay one of whose sessions watches a stream of an agent held elsewhere *wants* it: it
//! sends [`super::codec::Control::Lease`] to the agent's demand subject with the whole set of
//! that agent's streams it wants, at once when the set changes and again every refresh
//! interval ([`Wants`]): one message per (relay, agent), however many streams. The relay
//! holding the agent keeps a lease per (stream, wanting relay) that expires after a few missed
//! refreshes ([`Leases`]), and publishes a stream's batches only while it has a lease. A
//! stream left out of a set, or an empty set, is released at once; the debounce (the linger
//! after the last local watcher left) is the hub's, before it calls [`Wants::release`].

use std::collections::{BTreeMap, BTreeSet};

use super::subject::Token;

/// A change of what the owner publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A first lease on the stream: start publishing it.
    Publish(Token),
    /// The last lease went (released or expired): stop.
    Stop(Token),
}

/// The owner's side: leases on the streams of the agents this relay holds.
#[derive(Debug, Clone)]
pub struct Leases {
    ttl_ms: u64,
    /// Per stream: wanting relay → expiry (ms).
    by_stream: BTreeMap<Token, BTreeMap<Token, u64>>,
    /// Per (wanting relay, agent): the streams of its last lease message.
    sets: BTreeMap<(Token, Token), BTreeSet<Token>>,
}

impl Leases {
    /// Leases that last `ttl_ms` after each refresh.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            by_stream: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// Whether some relay holds a live lease on `stream`.
    pub fn wanted(&self, stream: &Token) -> bool {
        self.by_stream.contains_key(stream)
    }

    /// Relays holding leases on `stream`.
    pub fn holders(&self, stream: &Token) -> usize {
        self.by_stream.get(stream).map_or(0, BTreeMap::len)
    }

    /// Leases held in all (stream × relay).
    pub fn len(&self) -> usize {
        self.by_stream.values().map(BTreeMap::len).sum()
    }

    /// True when nobody wants anything.
    pub fn is_empty(&self) -> bool {
        self.by_stream.is_empty()
    }

    /// `relay` wants exactly `streams` of `agent` now: new ones leased, listed ones refreshed,
    /// the rest of its previous set released.
    pub fn lease(
        &mut self,
        now_ms: u64,
        relay: Token,
        agent: Token,
        streams: &[Token],
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let new: BTreeSet<Token> = streams.iter().copied().collect();
        let old = self.sets.remove(&(relay, agent)).unwrap_or_default();
        for gone in old.difference(&new) {
            self.drop_one(*gone, relay, &mut changes);
        }
        let until = now_ms.saturating_add(self.ttl_ms);
        for s in &new {
            let holders = self.by_stream.entry(*s).or_default();
            if holders.is_empty() {
                changes.push(Change::Publish(*s));
            }
            holders.insert(relay, until);
        }
        if !new.is_empty() {
            self.sets.insert((relay, agent), new);
        }
        changes
    }

    /// Leases not refreshed in time go.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let expired: Vec<(Token, Token)> = self
            .by_stream
            .iter()
            .flat_map(|(s, holders)| {
                holders
                    .iter()
                    .filter(|(_, until)| **until <= now_ms)
                    .map(|(r, _)| (*s, *r))
            })
            .collect();
        for (stream, relay) in expired {
            self.drop_one(stream, relay, &mut changes);
            for set in self
                .sets
                .iter_mut()
                .filter(|((r, _), _)| *r == relay)
                .map(|(_, set)| set)
            {
                set.remove(&stream);
            }
        }
        self.sets.retain(|_, set| !set.is_empty());
        changes
    }

    /// The agent left this relay: its streams' leases go with it (the wanting relays re-send
    /// their sets to whichever relay holds it next).
    pub fn forget_agent(&mut self, agent: Token, streams: &[Token]) -> Vec<Change> {
        self.sets.retain(|(_, a), _| *a != agent);
        self.forget_streams(streams)
    }

    /// Streams that went (withdrawn from the catalog): their leases go.
    pub fn forget_streams(&mut self, streams: &[Token]) -> Vec<Change> {
        let mut changes = Vec::new();
        for s in streams {
            if self.by_stream.remove(s).is_some() {
                changes.push(Change::Stop(*s));
            }
            for set in self.sets.values_mut() {
                set.remove(s);
            }
        }
        self.sets.retain(|_, set| !set.is_empty());
        changes
    }

    /// `relay`'s lease on `stream` of `agent`, just made, was refused by the owner's hub (a
    /// demand cap): it holds nothing, as if never asked. No change is returned: a refused
    /// stream was never published for it.
    pub fn refuse(&mut self, relay: Token, agent: Token, stream: Token) {
        if let Some(holders) = self.by_stream.get_mut(&stream) {
            holders.remove(&relay);
            if holders.is_empty() {
                self.by_stream.remove(&stream);
            }
        }
        if let Some(set) = self.sets.get_mut(&(relay, agent)) {
            set.remove(&stream);
            if set.is_empty() {
                self.sets.remove(&(relay, agent));
            }
        }
    }

    /// The earliest expiry, for the caller's timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_stream
            .values()
            .flat_map(BTreeMap::values)
            .min()
            .copied()
    }

    fn drop_one(&mut self, stream: Token, relay: Token, changes: &mut Vec<Change>) {
        if let Some(holders) = self.by_stream.get_mut(&stream) {
            holders.remove(&relay);
            if holders.is_empty() {
                self.by_stream.remove(&stream);
                changes.push(Change::Stop(stream));
            }
        }
    }
}

/// The wanting side: which streams of which agents this relay wants, and when to tell.
#[derive(Debug, Clone)]
pub struct Wants {
    refresh_ms: u64,
    agents: BTreeMap<Token, AgentWants>,
}

#[derive(Debug, Clone, Default)]
struct AgentWants {
    streams: BTreeSet<Token>,
    /// When the next lease message is due (ms); 0: at once.
    due_ms: u64,
    /// A lease message to the agent's relay is unanswered: the next waits for its answer
    /// ([`Wants::answered`]). Two sets in flight at once could reach the owner in either order
    /// (each request is a task of its own), and an older set arriving last would release what
    /// the newer one leased.
    in_flight: bool,
}

impl Wants {
    /// Lease messages sent at least every `refresh_ms`.
    pub fn new(refresh_ms: u64) -> Self {
        Self {
            refresh_ms: refresh_ms.max(1),
            agents: BTreeMap::new(),
        }
    }

    /// Want `stream` of `agent`. True if it is new (a lease message is due at once).
    pub fn want(&mut self, agent: Token, stream: Token) -> bool {
        let a = self.agents.entry(agent).or_default();
        let new = a.streams.insert(stream);
        if new {
            a.due_ms = 0;
        }
        new
    }

    /// Release `stream` of `agent` (after the hub's debounce). True if it was wanted.
    pub fn release(&mut self, agent: Token, stream: Token) -> bool {
        let Some(a) = self.agents.get_mut(&agent) else {
            return false;
        };
        let was = a.streams.remove(&stream);
        if was {
            a.due_ms = 0;
        }
        was
    }

    /// The agent moved (a higher connection epoch appeared): its set is due at once, to
    /// whichever relay holds it now.
    pub fn resend(&mut self, agent: Token) {
        if let Some(a) = self.agents.get_mut(&agent) {
            a.due_ms = 0;
        }
    }

    /// Whether `stream` of `agent` is wanted.
    pub fn wants(&self, agent: &Token, stream: &Token) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|a| a.streams.contains(stream))
    }

    /// The lease messages due at `now_ms`: one per agent, with its whole set, unless the
    /// previous one to that agent is still unanswered (then it is sent once answered, with
    /// the set as it is then). An agent whose set became empty gets one last (empty,
    /// releasing) message and is forgotten.
    pub fn due(&mut self, now_ms: u64) -> Vec<(Token, Vec<Token>)> {
        let mut out = Vec::new();
        for (agent, a) in &mut self.agents {
            if a.due_ms <= now_ms && !a.in_flight {
                out.push((*agent, a.streams.iter().copied().collect()));
                a.due_ms = now_ms.saturating_add(self.refresh_ms);
                a.in_flight = true;
            }
        }
        self.forget_released();
        out
    }

    /// The lease message to `agent`'s relay was answered (or failed): the next may go.
    pub fn answered(&mut self, agent: &Token) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.in_flight = false;
        }
        self.forget_released();
    }

    /// Agents whose last, empty set went and was answered are forgotten. An emptied set is
    /// due at once ([`Wants::release`] sets it so): one still due has not gone yet.
    fn forget_released(&mut self) {
        self.agents
            .retain(|_, a| !a.streams.is_empty() || a.in_flight || a.due_ms == 0);
    }

    /// When [`Wants::due`] has something next (agents awaiting an answer aside).
    pub fn next_due(&self) -> Option<u64> {
        self.agents
            .values()
            .filter(|a| !a.in_flight)
            .map(|a| a.due_ms)
            .min()
    }

    /// Agents with wanted streams.
    pub fn agents(&self) -> usize {
        self.agents
            .values()
            .filter(|a| !a.streams.is_empty())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(n: u8) -> Token {
        Token([n; 16])
    }

    #[test]
    fn a_lease_starts_publishing_and_its_expiry_stops_it() {
        let mut l = Leases::new(9_000);
        assert_eq!(l.lease(0, t(1), t(9), &[t(5)]), [Change::Publish(t(5))]);
        assert_eq!(l.lease(10, t(2), t(9), &[t(5)]), []);
        assert_eq!(l.holders(&t(5)), 2);
        assert_eq!(l.expire(8_999), []);
        // Relay 1 refreshed, relay 2 went silent.
        assert_eq!(l.lease(3_000, t(1), t(9), &[t(5)]), []);
        assert_eq!(l.expire(9_010), []);
        assert_eq!(l.holders(&t(5)), 1);
        assert_eq!(l.expire(12_000), [Change::Stop(t(5))]);
        assert!(!l.wanted(&t(5)) && l.is_empty());
    }

    #[test]
    fn a_set_without_a_stream_releases_it_at_once() {
        let mut l = Leases::new(9_000);
        l.lease(0, t(1), t(9), &[t(5), t(6)]);
        assert_eq!(l.lease(1, t(1), t(9), &[t(6)]), [Change::Stop(t(5))]);
        assert_eq!(l.lease(2, t(1), t(9), &[]), [Change::Stop(t(6))]);
        assert!(l.is_empty());
        l.lease(3, t(1), t(9), &[t(5)]);
        assert_eq!(l.forget_agent(t(9), &[t(5)]), [Change::Stop(t(5))]);
    }

    #[test]
    fn a_refused_lease_holds_nothing_and_the_next_ask_is_a_first_lease_again() {
        let mut l = Leases::new(9_000);
        assert_eq!(
            l.lease(0, t(1), t(9), &[t(5), t(6)]),
            [Change::Publish(t(5)), Change::Publish(t(6))]
        );
        l.refuse(t(1), t(9), t(6));
        assert!(l.wanted(&t(5)) && !l.wanted(&t(6)));
        assert_eq!(l.len(), 1);
        // Nothing of it expires or stops later; asked again, it is a first lease again.
        assert_eq!(l.lease(1, t(1), t(9), &[t(5)]), []);
        assert_eq!(
            l.lease(2, t(1), t(9), &[t(5), t(6)]),
            [Change::Publish(t(6))]
        );
        l.refuse(t(1), t(9), t(6));
        l.refuse(t(1), t(9), t(5));
        assert!(l.is_empty());
        assert_eq!(l.expire(60_000), []);
    }

    #[test]
    fn one_message_per_agent_with_its_whole_set() {
        let mut w = Wants::new(3_000);
        assert!(w.want(t(9), t(1)));
        assert!(w.want(t(9), t(2)));
        assert!(!w.want(t(9), t(2)));
        w.want(t(8), t(3));
        assert_eq!(w.due(0), [(t(8), vec![t(3)]), (t(9), vec![t(1), t(2)])]);
        w.answered(&t(8));
        w.answered(&t(9));
        assert_eq!(w.due(2_999), []);
        assert_eq!(w.next_due(), Some(3_000));
        assert!(w.release(t(9), t(1)));
        assert_eq!(w.due(3_000), [(t(8), vec![t(3)]), (t(9), vec![t(2)])]);
        w.answered(&t(8));
        w.answered(&t(9));
        w.release(t(9), t(2));
        // The last, empty set releases, and the agent is forgotten once it is answered.
        assert_eq!(w.due(3_001), [(t(9), vec![])]);
        w.answered(&t(9));
        assert_eq!(w.agents(), 1);
        assert_eq!(w.due(10_000), [(t(8), vec![t(3)])]);
    }

    #[test]
    fn one_set_in_flight_per_agent_and_the_newest_goes_next() {
        let mut w = Wants::new(3_000);
        w.want(t(9), t(1));
        assert_eq!(w.due(0), [(t(9), vec![t(1)])]);
        // A second stream while the first set is unanswered: nothing goes yet, in either
        // order it could overtake the first.
        assert!(w.want(t(9), t(2)));
        assert_eq!(w.due(1), []);
        assert_eq!(w.next_due(), None);
        w.answered(&t(9));
        assert_eq!(w.next_due(), Some(0));
        assert_eq!(w.due(2), [(t(9), vec![t(1), t(2)])]);
        // Emptied while in flight: the empty set still goes after the answer, then the agent
        // is forgotten.
        w.release(t(9), t(1));
        w.release(t(9), t(2));
        assert_eq!(w.due(3), []);
        assert_eq!(w.agents(), 0);
        w.answered(&t(9));
        assert_eq!(w.due(4), [(t(9), vec![])]);
        w.answered(&t(9));
        assert_eq!(w.due(10_000), []);
        assert_eq!(w.next_due(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Want(u8),
        Release(u8),
        /// Time passes; `true`: the wanting relay ticks (sends what is due).
        Pass(u64, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Want),
            (0u8..4).prop_map(Op::Release),
            (1u64..2_000, proptest::bool::weighted(0.9)).prop_map(|(d, tick)| Op::Pass(d, tick)),
        ]
    }

    proptest! {
        /// With refreshes every R and leases of 3·R: a wanted stream is published as long as
        /// the wanting relay ticks at least every R; released or silent for 3·R, it stops.
        #[test]
        fn published_iff_wanted_while_refreshes_arrive(ops in proptest::collection::vec(op(), 1..200)) {
            const R: u64 = 3_000;
            let relay = t(100);
            let agent = t(200);
            let mut wants = Wants::new(R);
            let mut leases = Leases::new(3 * R);
            let mut publishing = BTreeSet::new();
            let mut now = 0u64;
            let mut last_tick = 0u64;
            let apply = |changes: Vec<Change>, publishing: &mut BTreeSet<Token>| {
                for c in changes {
                    match c {
                        Change::Publish(s) => assert!(publishing.insert(s), "published twice"),
                        Change::Stop(s) => assert!(publishing.remove(&s), "stopped twice"),
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Want(s) => { wants.want(agent, t(s)); }
                    Op::Release(s) => { wants.release(agent, t(s)); }
                    Op::Pass(d, tick) => {
                        // The wanting relay ticks at least every R (a timer) unless silent.
                        let mut step = d;
                        while step > 0 {
                            let dt = step.min(R - (now - last_tick).min(R)).max(1);
                            now += dt;
                            step -= dt;
                            if tick && now - last_tick >= R {
                                for (a, set) in wants.due(now) {
                                    apply(leases.lease(now, relay, a, &set), &mut publishing);
                                    wants.answered(&a);
                                }
                                last_tick = now;
                            }
                            apply(leases.expire(now), &mut publishing);
                        }
                        if !tick {
                            // Silent for good from here on: everything expires within 3·R.
                            now += 3 * R;
                            apply(leases.expire(now), &mut publishing);
                            prop_assert!(publishing.is_empty());
                            prop_assert!(leases.is_empty());
                            wants = Wants::new(R);
                            last_tick = now;
                            continue;
                        }
                    }
                }
                // What is due now goes out at once (a want or a release is sent right away).
                for (a, set) in wants.due(now) {
                    apply(leases.lease(now, relay, a, &set), &mut publishing);
                    wants.answered(&a);
                }
                apply(leases.expire(now), &mut publishing);
                let wanted: BTreeSet<Token> = (0u8..4).map(t).filter(|s| wants.wants(&agent, s)).collect();
                prop_assert_eq!(&publishing, &wanted);
            }
        }
    }
}
