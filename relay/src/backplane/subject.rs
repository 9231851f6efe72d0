//! The subject scheme (pure): opaque, subject-safe tokens instead of names.
//!
//! Every subject starts with the deployment's prefix (`--nats-subject-prefix`, one per
//! deployment) and carries only tokens: 32 lowercase hex digits, the first 128 bits of a
//! SHA-256 over the prefix and the names it stands for. A pod name (which may hold `.`, a
//! subject separator) or an org never appears in a subject; labels travel in message bodies.
//! Tokens are stable: every relay computes the same token for the same stream, and a stream
//! keeps its token when its agent moves to another relay. They are not secrets (a party on the
//! NATS account could confirm a guessed name); NATS credentials and the account, or at least
//! the prefix, are the boundary (docs/security.md).
//!
//! | subject | published by | subscribed by |
//! | --- | --- | --- |
//! | `<p>.data.<org>.<cluster>.<agent>.<stream>` | the relay holding the agent, only while some other relay holds a lease | each relay one of whose sessions watches the stream |
//! | `<p>.demand.<org>.<cluster>.<agent>` | relays wanting streams of the agent (request/reply: lease) | the relay holding the agent, only while it holds it |
//! | `<p>.catalog.<relay>` | each relay: its agents' streams (add, remove, periodic snapshot) | every relay (`<p>.catalog.*`) |
//! | `<p>.relay.<relay>` | each relay: heartbeats | every relay (`<p>.relay.*`) |

use logrelay_wire::labels::Labels;
use ring::digest;

/// Longest subject prefix accepted.
pub const MAX_PREFIX_BYTES: usize = 64;

/// An opaque, subject-safe token standing for a name (org, cluster, agent, stream, relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// Its 32 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Reads 32 hex digits (either case).
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("a token is 32 hex digits"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A prefix that cannot be a subject prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty, or longer than [`MAX_PREFIX_BYTES`].
    #[error("the subject prefix must be 1 to {MAX_PREFIX_BYTES} bytes, got {0}")]
    Length(usize),
    /// A character outside `A-Z a-z 0-9 _ -`, or an empty token (`..`, a leading or trailing
    /// `.`). Wildcards (`*`, `>`) and white space are refused.
    #[error(
        "the subject prefix {0:?} may hold only tokens of A-Z a-z 0-9 _ - separated by single dots"
    )]
    Character(String),
}

/// The agent a stream belongs to: org and cluster (from its certificate) and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentTokens {
    /// The org's token.
    pub org: Token,
    /// The cluster's token (of org and cluster).
    pub cluster: Token,
    /// The agent's token (of org, cluster and node).
    pub agent: Token,
}

/// The subjects of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Checks `prefix` (tokens of `A-Z a-z 0-9 _ -` separated by single dots).
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_BYTES {
            return Err(SubjectError::Length(prefix.len()));
        }
        let ok = prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            return Err(SubjectError::Character(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The token of `parts` in the domain `kind`: each part length-prefixed, so no two lists
    /// of names hash alike by concatenation.
    fn token(&self, kind: &str, parts: &[&[u8]]) -> Token {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"logrelay-backplane/1\0");
        for part in [self.prefix.as_bytes(), kind.as_bytes()]
            .iter()
            .chain(parts)
        {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        let d = ctx.finish();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        Token(out)
    }

    /// The tokens of the agent `(org, cluster, node)`.
    pub fn agent(&self, org: &str, cluster: &str, node: &str) -> AgentTokens {
        AgentTokens {
            org: self.token("org", &[org.as_bytes()]),
            cluster: self.token("cluster", &[org.as_bytes(), cluster.as_bytes()]),
            agent: self.token(
                "agent",
                &[org.as_bytes(), cluster.as_bytes(), node.as_bytes()],
            ),
        }
    }

    /// The token of a stream: of its whole label set (org and cluster included), so the same
    /// stream has the same token on every relay and after its agent moved.
    pub fn stream(&self, labels: &Labels) -> Token {
        let json = serde_json::to_vec(labels).expect("labels serialize");
        self.token("stream", &[&json])
    }

    /// The token of a relay id.
    pub fn relay(&self, relay_id: &str) -> Token {
        self.token("relay", &[relay_id.as_bytes()])
    }

    /// Where a stream's batches are published: `<p>.data.<org>.<cluster>.<agent>.<stream>`.
    pub fn data(&self, agent: &AgentTokens, stream: Token) -> String {
        format!(
            "{}.data.{}.{}.{}.{stream}",
            self.prefix, agent.org, agent.cluster, agent.agent
        )
    }

    /// Where leases on an agent's streams are requested; only the relay holding the agent
    /// subscribes: `<p>.demand.<org>.<cluster>.<agent>`.
    pub fn demand(&self, agent: &AgentTokens) -> String {
        format!(
            "{}.demand.{}.{}.{}",
            self.prefix, agent.org, agent.cluster, agent.agent
        )
    }

    /// A relay's catalog announcements: `<p>.catalog.<relay>`.
    pub fn catalog(&self, relay: Token) -> String {
        format!("{}.catalog.{relay}", self.prefix)
    }

    /// Every relay's catalog announcements: `<p>.catalog.*`.
    pub fn catalog_all(&self) -> String {
        format!("{}.catalog.*", self.prefix)
    }

    /// A relay's heartbeats: `<p>.relay.<relay>`.
    pub fn heartbeat(&self, relay: Token) -> String {
        format!("{}.relay.{relay}", self.prefix)
    }

    /// Every relay's heartbeats: `<p>.relay.*`.
    pub fn heartbeat_all(&self) -> String {
        format!("{}.relay.*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pod: &str) -> Labels {
        Labels {
            org: "acme".into(),
            cluster: "prod".into(),
            node: "n1".into(),
            namespace: "web".into(),
            pod: pod.into(),
            container: "main".into(),
            ..Labels::default()
        }
    }

    /// A NATS subject token: printable, no white space, no separator, no wildcard.
    fn subject_safe(token: &str) -> bool {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'))
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(Subjects::new("logrelay").is_ok());
        assert!(Subjects::new("acme-prod.logrelay_2").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "ä"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Subjects::new(&"a".repeat(65)).unwrap_err(),
            SubjectError::Length(65)
        );
    }

    #[test]
    fn a_pod_name_with_dots_never_reaches_a_subject() {
        let s = Subjects::new("lr").unwrap();
        let agent = s.agent("acme", "prod", "node.with.dots");
        let subject = s.data(&agent, s.stream(&labels("web.v2.pod")));
        assert_eq!(subject.split('.').count(), 6, "{subject}");
        assert!(
            !subject.contains("web") && !subject.contains("acme"),
            "{subject}"
        );
        assert!(subject.starts_with("lr.data."));
        assert_eq!(s.demand(&agent).split('.').count(), 5);
    }

    #[test]
    fn tokens_depend_on_the_prefix_and_round_trip() {
        let a = Subjects::new("a").unwrap();
        let b = Subjects::new("b").unwrap();
        assert_ne!(a.stream(&labels("p")), b.stream(&labels("p")));
        assert_ne!(a.stream(&labels("p")), a.stream(&labels("q")));
        let t = a.relay("relay-0");
        assert_eq!(Token::parse(&t.hex()), Some(t));
        assert_eq!(Token::parse(&t.hex().to_uppercase()), Some(t));
        assert_eq!(Token::parse("xyz"), None);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Token>(&json).unwrap(), t);
    }

    proptest! {
        #[test]
        fn every_subject_is_made_of_safe_tokens(
            org in ".{0,20}", cluster in ".{0,20}", node in ".{0,40}", pod in ".{0,60}",
        ) {
            let s = Subjects::new("deploy.logrelay").unwrap();
            let agent = s.agent(&org, &cluster, &node);
            let mut l = labels(&pod);
            l.org = org.clone();
            let stream = s.stream(&l);
            for subject in [s.data(&agent, stream), s.demand(&agent), s.catalog(s.relay(&node)), s.heartbeat(s.relay(&pod))] {
                prop_assert!(subject.split('.').all(subject_safe), "{}", subject);
                prop_assert!(subject.len() <= MAX_PREFIX_BYTES + 6 + 4 * 33);
            }
            // Different agents of one org differ in the agent token only.
            let other = s.agent(&org, &cluster, &format!("{node}x"));
            prop_assert_eq!(other.org, agent.org);
            prop_assert_ne!(other.agent, agent.agent);
        }
    }
}
