//! The shared catalog (pure): every other relay's agents and streams, as they announce them.
//!
//! Each relay announces its agents' streams ([`super::codec::Control::Catalog`]: add, remove,
//! and a snapshot in parts every few seconds) and heartbeats. Here they are kept per relay, with
//! the time that relay was last heard; a relay silent for the expiry (a few heartbeats) has its
//! entries removed. Where two relays announce one agent, the higher connection epoch wins
//! ([`super::epoch`]): only its streams are visible. Org and labels are the announcing relay's,
//! which took them from the agent's certificate; a relay authorises its own sessions against
//! them. Bounded: at most `max_streams` remote streams; announcements beyond are refused and
//! counted.

use std::collections::{BTreeMap, BTreeSet};

use logrelay_wire::labels::Labels;

use super::codec::{CatalogAgent, CatalogOp};
use super::epoch;
use super::subject::Token;

/// A visible change of the remote catalog.
#[allow(
    clippy::large_enum_variant,
    reason = "changes are handed on at once, never stored in bulk"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream of another relay's agent can be listed and watched.
    Added {
        /// The agent.
        agent: Token,
        /// The stream.
        stream: Token,
        /// Its labels.
        labels: Labels,
        /// The relay holding the agent.
        relay: Token,
    },
    /// It went (removed, its agent moved to a higher epoch elsewhere, or its relay expired).
    Removed {
        /// The agent.
        agent: Token,
        /// The stream.
        stream: Token,
    },
}

/// An agent as one relay announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// Org (from its certificate, at the announcing relay).
    pub org: String,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// Connection epoch there.
    pub conn_epoch: u64,
    /// Its streams.
    pub streams: BTreeMap<Token, Labels>,
}

#[derive(Debug, Clone, Default)]
struct RelayEntry {
    last_heard_ms: u64,
    agents: BTreeMap<Token, AgentEntry>,
    /// The snapshot generation being received and the streams it named so far.
    snapshot: Option<(u64, BTreeSet<(Token, Token)>)>,
}

/// Every other relay's catalog.
#[derive(Debug, Clone)]
pub struct RemoteCatalog {
    own: Token,
    expiry_ms: u64,
    max_streams: usize,
    relays: BTreeMap<Token, RelayEntry>,
    streams: usize,
    refused: u64,
}

impl RemoteCatalog {
    /// The catalog seen by relay `own` (whose own announcements are ignored), expiring relays
    /// silent for `expiry_ms`, holding at most `max_streams` streams.
    pub fn new(own: Token, expiry_ms: u64, max_streams: usize) -> Self {
        Self {
            own,
            expiry_ms,
            max_streams,
            relays: BTreeMap::new(),
            streams: 0,
            refused: 0,
        }
    }

    /// Streams held (all relays, winners or not).
    pub fn len(&self) -> usize {
        self.streams
    }

    /// True when no remote stream is held.
    pub fn is_empty(&self) -> bool {
        self.streams == 0
    }

    /// Streams refused so far because the catalog was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Relays heard and not expired.
    pub fn relays(&self) -> usize {
        self.relays.len()
    }

    /// `relay` is alive (a heartbeat).
    pub fn heard(&mut self, now_ms: u64, relay: Token) {
        if relay != self.own {
            self.relays.entry(relay).or_default().last_heard_ms = now_ms;
        }
    }

    /// The relay holding `agent` and its epoch, by the highest epoch announced.
    pub fn owner(&self, agent: &Token) -> Option<(Token, u64)> {
        self.relays
            .iter()
            .filter_map(|(r, e)| e.agents.get(agent).map(|a| (*r, a.conn_epoch)))
            .max_by_key(|(_, e)| *e)
    }

    /// The highest epoch any relay announced for `agent` (for [`epoch::next`]).
    pub fn known_epoch(&self, agent: &Token) -> Option<u64> {
        self.owner(agent).map(|(_, e)| e)
    }

    /// The visible streams: of each agent, those of its winning announcement.
    pub fn visible(&self) -> impl Iterator<Item = (Token, &AgentEntry, Token)> + '_ {
        let mut winners: BTreeMap<Token, (Token, &AgentEntry)> = BTreeMap::new();
        for (relay, entry) in &self.relays {
            for (agent, a) in &entry.agents {
                let current = winners.get(agent).map(|(_, w)| w.conn_epoch);
                if epoch::wins(a.conn_epoch, current) {
                    winners.insert(*agent, (*relay, a));
                }
            }
        }
        winners
            .into_iter()
            .map(|(agent, (relay, a))| (agent, a, relay))
    }

    fn visible_of(&self, agents: &BTreeSet<Token>) -> BTreeMap<(Token, Token), (Labels, Token)> {
        self.visible()
            .filter(|(agent, _, _)| agents.contains(agent))
            .flat_map(|(agent, a, relay)| {
                a.streams
                    .iter()
                    .map(move |(s, l)| ((agent, *s), (l.clone(), relay)))
            })
            .collect()
    }

    /// Applies one catalog message of `relay`. Returns the visible changes.
    pub fn apply(
        &mut self,
        now_ms: u64,
        relay: Token,
        op: CatalogOp,
        generation: u64,
        last_part: bool,
        agents: Vec<CatalogAgent>,
    ) -> Vec<Change> {
        if relay == self.own {
            return Vec::new();
        }
        let mut touched: BTreeSet<Token> = agents.iter().map(|a| a.agent).collect();
        if op == CatalogOp::Snapshot
            && last_part
            && let Some(entry) = self.relays.get(&relay)
        {
            touched.extend(entry.agents.keys().copied());
        }
        let before = self.visible_of(&touched);
        let mut streams = self.streams;
        let mut refused = 0;
        let max = self.max_streams;
        let entry = self.relays.entry(relay).or_default();
        entry.last_heard_ms = now_ms;
        if op == CatalogOp::Snapshot {
            let fresh = entry
                .snapshot
                .as_ref()
                .is_none_or(|(g, _)| *g != generation);
            if fresh {
                entry.snapshot = Some((generation, BTreeSet::new()));
            }
        }
        for a in agents {
            match op {
                CatalogOp::Add | CatalogOp::Snapshot => {
                    let e = entry.agents.entry(a.agent).or_insert_with(|| AgentEntry {
                        org: a.org.clone(),
                        cluster: a.cluster.clone(),
                        node: a.node.clone(),
                        conn_epoch: a.conn_epoch,
                        streams: BTreeMap::new(),
                    });
                    if a.conn_epoch > e.conn_epoch {
                        // A new connection of the agent at this relay: its old streams go.
                        streams -= e.streams.len();
                        e.streams.clear();
                        e.conn_epoch = a.conn_epoch;
                    } else if a.conn_epoch < e.conn_epoch {
                        continue;
                    }
                    for s in a.streams {
                        if let Some((_, seen)) = entry
                            .snapshot
                            .as_mut()
                            .filter(|_| op == CatalogOp::Snapshot)
                        {
                            seen.insert((a.agent, s.stream));
                        }
                        match e.streams.entry(s.stream) {
                            std::collections::btree_map::Entry::Occupied(mut o) => {
                                o.insert(s.labels);
                            }
                            std::collections::btree_map::Entry::Vacant(v) if streams < max => {
                                v.insert(s.labels);
                                streams += 1;
                            }
                            std::collections::btree_map::Entry::Vacant(_) => refused += 1,
                        }
                    }
                    if op == CatalogOp::Snapshot
                        && let Some((_, seen)) = entry.snapshot.as_mut()
                    {
                        // An agent named with no stream is still held.
                        seen.insert((a.agent, a.agent));
                    }
                }
                CatalogOp::Remove => {
                    if a.gone {
                        if let Some(e) = entry.agents.get(&a.agent)
                            && e.conn_epoch <= a.conn_epoch
                        {
                            streams -= e.streams.len();
                            entry.agents.remove(&a.agent);
                        }
                    } else if let Some(e) = entry.agents.get_mut(&a.agent) {
                        for s in a.removed {
                            if e.streams.remove(&s).is_some() {
                                streams -= 1;
                            }
                        }
                    }
                }
            }
        }
        if op == CatalogOp::Snapshot
            && last_part
            && let Some((_, seen)) = entry.snapshot.take()
        {
            {
                entry.agents.retain(|agent, e| {
                    if !seen.contains(&(*agent, *agent)) {
                        streams -= e.streams.len();
                        return false;
                    }
                    let n = e.streams.len();
                    e.streams.retain(|s, _| seen.contains(&(*agent, *s)));
                    streams -= n - e.streams.len();
                    true
                });
            }
        }
        self.streams = streams;
        self.refused += refused;
        let after = self.visible_of(&touched);
        diff(before, after)
    }

    /// This relay cannot hear anyone now (its NATS connection is down): no relay's silence
    /// counts against it, each is taken as heard now, so that none expires while this relay
    /// is deaf, and each has a whole expiry to be heard again once it hears.
    pub fn deaf(&mut self, now_ms: u64) {
        for e in self.relays.values_mut() {
            e.last_heard_ms = e.last_heard_ms.max(now_ms);
        }
    }

    /// Relays silent for the expiry go, with their entries.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Change> {
        let silent: Vec<Token> = self
            .relays
            .iter()
            .filter(|(_, e)| e.last_heard_ms.saturating_add(self.expiry_ms) <= now_ms)
            .map(|(r, _)| *r)
            .collect();
        if silent.is_empty() {
            return Vec::new();
        }
        let touched: BTreeSet<Token> = silent
            .iter()
            .flat_map(|r| self.relays[r].agents.keys().copied())
            .collect();
        let before = self.visible_of(&touched);
        for r in silent {
            if let Some(e) = self.relays.remove(&r) {
                self.streams -= e.agents.values().map(|a| a.streams.len()).sum::<usize>();
            }
        }
        let after = self.visible_of(&touched);
        diff(before, after)
    }
}

fn diff(
    before: BTreeMap<(Token, Token), (Labels, Token)>,
    after: BTreeMap<(Token, Token), (Labels, Token)>,
) -> Vec<Change> {
    let mut out = Vec::new();
    for (agent, stream) in before.keys() {
        if !after.contains_key(&(*agent, *stream)) {
            out.push(Change::Removed {
                agent: *agent,
                stream: *stream,
            });
        }
    }
    for ((agent, stream), (labels, relay)) in after {
        if before
            .get(&(agent, stream))
            .is_none_or(|(l, r)| *l != labels || *r != relay)
        {
            out.push(Change::Added {
                agent,
                stream,
                labels,
                relay,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::codec::CatalogStream;
    use super::*;

    fn t(n: u8) -> Token {
        Token([n; 16])
    }

    fn agent(n: u8, epoch: u64, streams: &[u8]) -> CatalogAgent {
        CatalogAgent {
            agent: t(n),
            org: "acme".into(),
            cluster: "prod".into(),
            node: format!("n{n}"),
            conn_epoch: epoch,
            streams: streams
                .iter()
                .map(|s| CatalogStream {
                    stream: t(*s),
                    labels: Labels {
                        pod: format!("p{s}"),
                        ..Labels::default()
                    },
                })
                .collect(),
            removed: Vec::new(),
            gone: false,
        }
    }

    fn visible(c: &RemoteCatalog) -> Vec<(Token, Token)> {
        c.visible()
            .flat_map(|(a, e, _)| e.streams.keys().map(move |s| (a, *s)).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn no_relay_expires_while_this_relay_is_deaf_and_each_has_a_whole_expiry_after() {
        let mut c = RemoteCatalog::new(t(0), 10_000, 100);
        c.apply(0, t(1), CatalogOp::Add, 0, false, vec![agent(5, 1, &[50])]);
        c.heard(1_000, t(1));
        // NATS is down from 2 s to 30 s: nobody is heard, nobody expires.
        for now in (2_000..=30_000).step_by(1_000) {
            c.deaf(now);
            assert_eq!(c.expire(now), [], "at {now}");
        }
        assert_eq!(c.len(), 1);
        // Back: relay 1 has until 40 s to be heard again.
        assert_eq!(c.expire(39_999), []);
        assert_eq!(c.expire(40_000).len(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn a_silent_relay_expires_with_its_streams() {
        let mut c = RemoteCatalog::new(t(0), 10_000, 100);
        let added = c.apply(
            0,
            t(1),
            CatalogOp::Add,
            0,
            false,
            vec![agent(5, 1, &[50, 51])],
        );
        assert_eq!(added.len(), 2);
        c.heard(5_000, t(1));
        assert_eq!(c.expire(14_999), []);
        let removed = c.expire(15_000);
        assert_eq!(
            removed,
            [
                Change::Removed {
                    agent: t(5),
                    stream: t(50)
                },
                Change::Removed {
                    agent: t(5),
                    stream: t(51)
                }
            ]
        );
        assert!(c.is_empty() && c.relays() == 0);
        // Its own announcements are not remote.
        assert_eq!(
            c.apply(0, t(0), CatalogOp::Add, 0, false, vec![agent(5, 1, &[50])]),
            []
        );
    }

    #[test]
    fn the_higher_epoch_wins_when_two_relays_announce_one_agent() {
        let mut c = RemoteCatalog::new(t(0), 10_000, 100);
        c.apply(0, t(1), CatalogOp::Add, 0, false, vec![agent(5, 10, &[50])]);
        // The agent moved to relay 2 (epoch 11) before relay 1 said it left.
        let changes = c.apply(
            1,
            t(2),
            CatalogOp::Add,
            0,
            false,
            vec![agent(5, 11, &[50, 52])],
        );
        assert_eq!(c.owner(&t(5)), Some((t(2), 11)));
        assert!(changes.iter().any(|ch| matches!(ch, Change::Added { stream, relay, .. } if *stream == t(50) && *relay == t(2))));
        assert_eq!(visible(&c), [(t(5), t(50)), (t(5), t(52))]);
        // Relay 1's goodbye changes nothing visible.
        let mut gone = agent(5, 10, &[]);
        gone.gone = true;
        assert_eq!(
            c.apply(2, t(1), CatalogOp::Remove, 0, false, vec![gone]),
            []
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_snapshot_drops_what_it_no_longer_names() {
        let mut c = RemoteCatalog::new(t(0), 10_000, 100);
        c.apply(
            0,
            t(1),
            CatalogOp::Add,
            0,
            false,
            vec![agent(5, 1, &[50, 51]), agent(6, 1, &[60])],
        );
        c.apply(
            1,
            t(1),
            CatalogOp::Snapshot,
            7,
            false,
            vec![agent(5, 1, &[50])],
        );
        let changes = c.apply(2, t(1), CatalogOp::Snapshot, 7, true, vec![]);
        assert_eq!(
            changes,
            [
                Change::Removed {
                    agent: t(5),
                    stream: t(51)
                },
                Change::Removed {
                    agent: t(6),
                    stream: t(60)
                }
            ]
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_catalog_is_bounded_and_counts_what_it_refused() {
        let mut c = RemoteCatalog::new(t(0), 10_000, 3);
        c.apply(
            0,
            t(1),
            CatalogOp::Add,
            0,
            false,
            vec![agent(5, 1, &[1, 2, 3, 4, 5])],
        );
        assert_eq!((c.len(), c.refused()), (3, 2));
    }

    proptest! {
        /// Relays announce, heartbeat or fall silent at random: at every step the streams held
        /// are exactly those of relays heard within the expiry, and the count is right.
        #[test]
        fn only_relays_heard_within_the_expiry_are_held(
            steps in proptest::collection::vec((0u8..3, 0u8..3, 0u64..4_000), 1..100)
        ) {
            let expiry = 7_000;
            let mut c = RemoteCatalog::new(t(0), expiry, 1000);
            let mut heard = [None::<u64>; 3];
            let mut now = 0;
            for (relay, action, dt) in steps {
                now += dt;
                let r = t(relay + 1);
                match action {
                    0 => { c.apply(now, r, CatalogOp::Add, 0, false, vec![agent(relay + 10, 1, &[relay * 10, relay * 10 + 1])]); heard[usize::from(relay)] = Some(now); }
                    1 => { c.heard(now, r); if heard[usize::from(relay)].is_some() { heard[usize::from(relay)] = Some(now); } }
                    _ => {}
                }
                c.expire(now);
                for (i, h) in heard.iter_mut().enumerate() {
                    if h.is_some_and(|h| h + expiry <= now) { *h = None; }
                    let held = visible(&c).iter().any(|(a, _)| *a == t(u8::try_from(i).unwrap() + 10));
                    prop_assert_eq!(held, h.is_some(), "relay {}", i);
                }
                let expected: usize = heard.iter().filter(|h| h.is_some()).count() * 2;
                prop_assert_eq!(c.len(), expected);
            }
        }
    }
}
