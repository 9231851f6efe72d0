//! Admission of session connections (pure: no I/O, no clock): which connections may wait in
//! their handshake, which one makes room when they are too many, and how many sessions one
//! source may hold.
//!
//! A connection is *pending* from its accept until it is upgraded to a session or closed. Pending
//! connections are capped in all (`--max-pending-handshakes`) and per source
//! (`--max-pending-handshakes-per-source`): a source is an IPv4 address, or the /64 prefix of an
//! IPv6 address (the usual allocation of one site, which can use any of its 2⁶⁴ addresses).
//! Sessions are capped per source too (`--max-sessions-per-source`).
//!
//! A new connection over its source's cap is refused: that costs only its source. A new
//! connection that finds the relay-wide cap reached is *not* refused — that would let a flood
//! of connections that never speak lock everyone out. One pending connection is shed instead,
//! chosen so that the flood pays:
//! 1. from the source holding the most pending connections;
//! 2. there, one that has not sent a byte yet before one that has;
//! 3. the oldest.
//!
//! Between sources holding as many, the one with a silent connection goes first, then the one
//! whose candidate is oldest. A legitimate client holds one pending connection for the
//! milliseconds its handshake takes and speaks at once, so while a flood lasts it is shed only
//! once every flooding connection is younger than it and has spoken, or comes from a source
//! holding no more than its own.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

/// Where a connection comes from, as admission counts it: an IPv4 address, or an IPv6 /64
/// prefix. IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl SourceKey {
    /// The source of a peer at `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(prefix)
                }
            },
        }
    }
}

impl fmt::Display for SourceKey {
    /// `192.0.2.7`, or `2001:db8:0:1::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            Self::V6(p) => {
                let mut full = [0; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// Limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Pending connections in all (at least 1).
    pub max_pending: usize,
    /// Pending connections of one source (at least 1).
    pub max_pending_per_source: usize,
    /// Sessions of one source.
    pub max_sessions_per_source: usize,
}

/// A pending connection's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// A connection that was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Its ticket: report [`Admission::spoke`] and [`Admission::release`] with it.
    pub id: ConnId,
    /// A pending connection that was shed to make room: close it.
    pub shed: Option<Shed>,
}

/// A pending connection shed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Its ticket (already released).
    pub id: ConnId,
    /// Its source.
    pub source: SourceKey,
    /// Whether it had sent any byte.
    pub spoke: bool,
}

/// Why a connection or session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The source already holds `--max-pending-handshakes-per-source` pending connections.
    #[error("too many connections from this source in their handshake")]
    PendingPerSource,
    /// The source already holds `--max-sessions-per-source` sessions.
    #[error("too many sessions from this source")]
    SessionsPerSource,
}

impl Refused {
    /// The limit's name, for metrics and the audit trail.
    pub fn limit(self) -> &'static str {
        match self {
            Self::PendingPerSource => "pending_handshakes_per_source",
            Self::SessionsPerSource => "sessions_per_source",
        }
    }
}

/// What one source holds.
#[derive(Debug, Default)]
struct SourceState {
    /// Pending connections by ticket (oldest first), and whether each has spoken.
    pending: BTreeMap<ConnId, bool>,
    sessions: usize,
}

impl SourceState {
    /// The connection to shed first: the oldest silent one, else the oldest.
    fn candidate(&self) -> Option<(ConnId, bool)> {
        self.pending
            .iter()
            .find(|(_, spoke)| !**spoke)
            .or_else(|| self.pending.iter().next())
            .map(|(id, spoke)| (*id, *spoke))
    }

    /// Where the source stands in the shedding order (greater: shed first).
    fn rank(&self) -> Option<Rank> {
        let (oldest, spoke) = self.candidate()?;
        Some(Rank {
            pending: self.pending.len(),
            silent: !spoke,
            oldest: Reverse(oldest),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    pending: usize,
    silent: bool,
    oldest: Reverse<ConnId>,
}

/// Pending connections and sessions per source. Memory: one entry per source that holds a
/// pending connection or a session, so bounded by the connections the relay holds.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    next: u64,
    /// Source of every pending connection.
    pending: HashMap<ConnId, SourceKey>,
    sources: HashMap<SourceKey, SourceState>,
    /// Sources holding pending connections, in shedding order (last: shed first).
    order: BTreeSet<(Rank, SourceKey)>,
}

impl Admission {
    /// An empty table with these limits.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config: AdmissionConfig {
                max_pending: config.max_pending.max(1),
                max_pending_per_source: config.max_pending_per_source.max(1),
                ..config
            },
            next: 0,
            pending: HashMap::new(),
            sources: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Its limits.
    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    /// Pending connections.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Pending connections of `source`.
    pub fn pending_of(&self, source: SourceKey) -> usize {
        self.sources.get(&source).map_or(0, |s| s.pending.len())
    }

    /// Sessions of `source`.
    pub fn sessions_of(&self, source: SourceKey) -> usize {
        self.sources.get(&source).map_or(0, |s| s.sessions)
    }

    /// Sources holding a pending connection or a session.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// A connection from `source` was accepted: let it wait for its handshake, shedding
    /// another if the relay-wide cap is reached, or refuse it if its source holds its cap.
    pub fn admit(&mut self, source: SourceKey) -> Result<Admitted, Refused> {
        if self.pending_of(source) >= self.config.max_pending_per_source {
            return Err(Refused::PendingPerSource);
        }
        let shed = if self.pending.len() >= self.config.max_pending {
            self.shed_one()
        } else {
            None
        };
        let id = ConnId(self.next);
        self.next += 1;
        self.pending.insert(id, source);
        self.update(source, |s| {
            s.pending.insert(id, false);
        });
        Ok(Admitted { id, shed })
    }

    /// The connection sent its first bytes.
    pub fn spoke(&mut self, id: ConnId) {
        if let Some(&source) = self.pending.get(&id) {
            self.update(source, |s| {
                if let Some(spoke) = s.pending.get_mut(&id) {
                    *spoke = true;
                }
            });
        }
    }

    /// The connection left the handshake (upgraded, answered, closed or shed). False when it
    /// had already been released.
    pub fn release(&mut self, id: ConnId) -> bool {
        let Some(source) = self.pending.remove(&id) else {
            return false;
        };
        self.update(source, |s| {
            s.pending.remove(&id);
        });
        true
    }

    /// A session from `source` is about to start: counted, or refused over the cap.
    pub fn open_session(&mut self, source: SourceKey) -> Result<(), Refused> {
        if self.sessions_of(source) >= self.config.max_sessions_per_source {
            return Err(Refused::SessionsPerSource);
        }
        self.update(source, |s| s.sessions += 1);
        Ok(())
    }

    /// A session counted by [`Admission::open_session`] ended.
    pub fn close_session(&mut self, source: SourceKey) {
        if self.sessions_of(source) > 0 {
            self.update(source, |s| s.sessions -= 1);
        }
    }

    fn shed_one(&mut self) -> Option<Shed> {
        let &(_, source) = self.order.last()?;
        let (id, spoke) = self.sources.get(&source)?.candidate()?;
        self.release(id);
        Some(Shed { id, source, spoke })
    }

    /// Applies `f` to `source`'s state, keeping the shedding order and dropping empty entries.
    fn update(&mut self, source: SourceKey, f: impl FnOnce(&mut SourceState)) {
        let state = self.sources.entry(source).or_default();
        if let Some(rank) = state.rank() {
            self.order.remove(&(rank, source));
        }
        f(state);
        match state.rank() {
            Some(rank) => {
                self.order.insert((rank, source));
            }
            None if state.sessions == 0 => {
                self.sources.remove(&source);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn v4(last: u8) -> SourceKey {
        SourceKey::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    fn table(max_pending: usize, per_source: usize, sessions: usize) -> Admission {
        Admission::new(AdmissionConfig {
            max_pending,
            max_pending_per_source: per_source,
            max_sessions_per_source: sessions,
        })
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64_prefixes() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        assert_eq!(SourceKey::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(
            SourceKey::of(mapped),
            SourceKey::of("192.0.2.7".parse().unwrap())
        );
        assert_eq!(SourceKey::of(mapped).to_string(), "192.0.2.7");
        assert_eq!(
            SourceKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)).to_string(),
            "::/64"
        );
    }

    #[test]
    fn a_source_over_its_cap_is_refused_and_only_it() {
        let mut t = table(100, 2, 10);
        t.admit(v4(2)).unwrap();
        t.admit(v4(2)).unwrap();
        assert_eq!(t.admit(v4(2)), Err(Refused::PendingPerSource));
        let other = t.admit(v4(1)).unwrap();
        assert_eq!(other.shed, None);
        assert_eq!((t.pending(), t.pending_of(v4(2))), (3, 2));
    }

    #[test]
    fn at_the_global_cap_the_greediest_source_pays() {
        let mut t = table(4, 10, 10);
        let legit = t.admit(v4(1)).unwrap().id;
        t.spoke(legit);
        let flood: Vec<_> = (0..3).map(|_| t.admit(v4(2)).unwrap().id).collect();
        // Full: the next connection, from anywhere, sheds the flood's oldest silent one.
        let a = t.admit(v4(3)).unwrap();
        assert_eq!(
            a.shed,
            Some(Shed {
                id: flood[0],
                source: v4(2),
                spoke: false
            })
        );
        let b = t.admit(v4(1)).unwrap();
        assert_eq!(b.shed.map(|s| s.id), Some(flood[1]));
        assert_eq!(t.pending(), 4);
        assert!(
            !t.release(flood[0]),
            "a shed connection is already released"
        );
        assert!(t.release(legit));
    }

    #[test]
    fn silent_connections_go_before_ones_that_spoke_then_the_oldest() {
        let mut t = table(3, 10, 10);
        let a = t.admit(v4(2)).unwrap().id;
        let b = t.admit(v4(2)).unwrap().id;
        t.spoke(a);
        // v4(2) holds two; its silent one goes first although it is younger.
        t.admit(v4(3)).unwrap();
        assert_eq!(t.admit(v4(4)).unwrap().shed.map(|s| s.id), Some(b));
        // Now every source holds one: the oldest silent one goes (v4(3)'s), not the oldest
        // (v4(2)'s, which spoke).
        let c = t.admit(v4(5)).unwrap();
        assert_eq!(c.shed.map(|s| s.source), Some(v4(3)));
        assert!(t.release(a));
    }

    #[test]
    fn sessions_per_source_are_capped_and_released() {
        let mut t = table(10, 10, 2);
        t.open_session(v4(1)).unwrap();
        t.open_session(v4(1)).unwrap();
        assert_eq!(t.open_session(v4(1)), Err(Refused::SessionsPerSource));
        t.open_session(v4(2)).unwrap();
        t.close_session(v4(1));
        t.open_session(v4(1)).unwrap();
        for _ in 0..3 {
            t.close_session(v4(1));
        }
        t.close_session(v4(2));
        assert_eq!(
            t.sources(),
            0,
            "nothing is kept for sources that hold nothing"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8),
        Spoke(usize),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..6).prop_map(Op::Admit),
            2 => any::<usize>().prop_map(Op::Spoke),
            2 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Caps always hold; a shed connection comes from a source holding at least as many as
        /// any other; every entry goes once nothing is pending.
        #[test]
        fn caps_hold_and_the_greediest_source_is_shed(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = table(6, 3, 1);
            let mut live: Vec<(ConnId, SourceKey)> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit(s) => {
                        let before: HashMap<SourceKey, usize> =
                            (1..6).map(|s| (v4(s), t.pending_of(v4(s)))).collect();
                        match t.admit(v4(s)) {
                            Ok(a) => {
                                if let Some(shed) = a.shed {
                                    let most = before.values().max().copied().unwrap_or(0);
                                    prop_assert_eq!(before[&shed.source], most);
                                    live.retain(|(id, _)| *id != shed.id);
                                } else {
                                    prop_assert!(live.len() < 6);
                                }
                                live.push((a.id, v4(s)));
                            }
                            Err(Refused::PendingPerSource) => prop_assert_eq!(before[&v4(s)], 3),
                            Err(e) => prop_assert!(false, "unexpected {:?}", e),
                        }
                    }
                    Op::Spoke(i) if !live.is_empty() => t.spoke(live[i % live.len()].0),
                    Op::Release(i) if !live.is_empty() => {
                        let (id, _) = live.remove(i % live.len());
                        prop_assert!(t.release(id));
                    }
                    _ => {}
                }
                prop_assert_eq!(t.pending(), live.len());
                prop_assert!(t.pending() <= 6);
                for s in 1..6 {
                    let n = live.iter().filter(|(_, src)| *src == v4(s)).count();
                    prop_assert_eq!(t.pending_of(v4(s)), n);
                    prop_assert!(n <= 3);
                }
            }
            for (id, _) in live {
                prop_assert!(t.release(id));
            }
            prop_assert_eq!((t.sources(), t.order.len()), (0, 0));
        }
    }
}
