//! The relay's ids, one type per thing they name, so that a demand id can never be taken for a
//! stream id. Those a peer sees travel on the wire as plain `u64`: [`StreamId::get`] and the
//! `From<u64>` conversions are the only crossings, at the edges (ingest, the hub's messages).

macro_rules! id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// The id as a number (as the wire and logs carry it).
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                Self(id)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id! {
    /// What batches and events name: a stream as the relay files it, one of its filtered
    /// rings, or a one-off read's own view of it. Random, in [1, 2^53) (exact in JavaScript).
    StreamId
}

id! {
    /// A demand: what the relay asked an agent connection to send. Its high half is the
    /// connection's random nonce, its low half counts the connection's demands.
    DemandId
}

id! {
    /// One agent connection (sequential; never presented back by a peer).
    AgentId
}

id! {
    /// The agent's own id of a stream it announced (`StreamInfo::id`).
    AgentStreamId
}

id! {
    /// One session (sequential, from the same counter as [`AgentId`]; never presented back by a
    /// peer).
    SessionId
}

/// A subscription or watched list of a session, as the client named it (`id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(String);

impl SubId {
    /// The id as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SubId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<String> for SubId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl std::borrow::Borrow<str> for SubId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
