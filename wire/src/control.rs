//! Control messages of the agent ↔ relay hop: JSON objects tagged by `type`, one per frame on
//! the bidirectional control stream. Unknown fields are ignored, so either side may add fields
//! without a version bump; an unknown `type` is an error naming it.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// Sequence position in a stream: an epoch and a line number within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeqPos {
    /// Epoch: sequence numbers restart when it changes.
    pub epoch: u64,
    /// Line sequence number within the epoch.
    pub seq: u64,
}

/// A stream as the agent announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Agent-local stream id, stable for the life of the agent process.
    pub id: u64,
    /// Labels read by the agent; `org` and `cluster` are overwritten by the relay.
    pub labels: Labels,
}

/// A stream the agent no longer has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGone {
    /// Agent-local stream id.
    pub id: u64,
    /// Why it ended (`container_removed`, `pod_removed`, …).
    pub reason: String,
}

/// What an `open` asks the agent to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Demand {
    /// Start with the last `tail` lines (before `until` when set, else before the end).
    pub tail: Option<u32>,
    /// Only lines at or after this Unix time (nanoseconds).
    pub since_ns: Option<i64>,
    /// Resume: start at this position if the agent still has it.
    pub since_seq: Option<SeqPos>,
    /// Backfill only: stop before this position (where the subscriber joins the live tail).
    pub until: Option<SeqPos>,
    /// Keep following the stream as it grows.
    pub follow: bool,
    /// Only lines whose message contains this substring (metrics streams: the metric names
    /// wanted).
    pub contains: Option<String>,
    /// Only lines whose message this regular expression matches somewhere: the source of a
    /// [`crate::pattern::LinePattern`], which the agent compiles when it serves the demand
    /// (a bad one is answered with `open_failed` `bad_request`). Log streams only. Omitted
    /// when unset; an agent that predates it ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
}

/// Agent → relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// First message on a connection.
    Hello {
        /// Protocol version the agent speaks ([`crate::PROTOCOL_VERSION`]).
        protocol: u32,
        /// Node the agent runs on.
        node: String,
        /// Agent software version.
        agent_version: String,
    },
    /// Streams that appeared (also the full catalog right after `welcome`).
    CatalogAdd {
        /// New streams.
        streams: Vec<StreamInfo>,
    },
    /// Streams that ended.
    CatalogRemove {
        /// Ended streams.
        streams: Vec<StreamGone>,
    },
    /// The agent could not serve an `open`.
    OpenFailed {
        /// The demand id of the `open`.
        demand: u64,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// Liveness.
    Heartbeat,
    /// A protocol error; the sender closes the connection after it.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
}

/// Relay → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMsg {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version the relay speaks.
        protocol: u32,
        /// Org the relay filed this agent under (from its certificate).
        org: String,
        /// Cluster the relay filed this agent under (from its certificate).
        cluster: String,
        /// Largest frame the relay accepts.
        max_frame_bytes: u32,
        /// How often the agent should send heartbeats.
        heartbeat_secs: u32,
    },
    /// Send a stream's lines on a new data stream.
    Open {
        /// Relay-chosen id, echoed in the data stream preamble and `cancel`.
        demand: u64,
        /// Agent-local stream id from the catalog.
        stream: u64,
        /// Relay stream id to stamp into every batch header.
        stream_ref: u64,
        /// What to send.
        #[serde(flatten)]
        demand_spec: Demand,
    },
    /// Stop serving a demand (its data stream is also reset).
    Cancel {
        /// The demand id of the `open`.
        demand: u64,
    },
    /// Streams of a `catalog_add` the relay did not take, because a limit was reached. The
    /// connection goes on; the agent may announce them again later.
    CatalogRefused {
        /// The agent's ids of the refused streams.
        streams: Vec<u64>,
        /// Always `limit_exceeded` today.
        code: ErrorCode,
        /// The limit: `label_bytes_per_stream`, `streams_per_agent`, `label_bytes_per_agent`
        /// or `streams_per_org`.
        limit: String,
        /// Human-readable reason.
        message: String,
    },
    /// Liveness.
    Heartbeat,
    /// A protocol error; the sender closes the connection after it.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
}

/// Error codes shared by both hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be parsed.
    BadRequest,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// The named stream does not exist (or no longer).
    UnknownStream,
    /// The caller may not do this.
    Forbidden,
    /// The caller is not authenticated.
    Unauthenticated,
    /// A configured limit was crossed.
    LimitExceeded,
    /// A message arrived out of order (e.g. anything before `hello`).
    OutOfOrder,
    /// A frame was larger than allowed.
    FrameTooLarge,
    /// The peer is shutting down.
    ShuttingDown,
    /// Something failed on this side.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownStream => "unknown_stream",
            Self::Forbidden => "forbidden",
            Self::Unauthenticated => "unauthenticated",
            Self::LimitExceeded => "limit_exceeded",
            Self::OutOfOrder => "out_of_order",
            Self::FrameTooLarge => "frame_too_large",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
        }
    }
}

/// Why a control frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed control message: {0}")]
pub struct ControlError(#[from] serde_json::Error);

/// Encodes a control message as a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("control messages always serialize")
}

/// Decodes a control frame body.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ControlError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trips_with_flattened_demand() {
        let m = RelayMsg::Open {
            demand: 1,
            stream: 2,
            stream_ref: 3,
            demand_spec: Demand {
                tail: Some(100),
                follow: true,
                until: Some(SeqPos { epoch: 9, seq: 50 }),
                ..Demand::default()
            },
        };
        let bytes = encode(&m);
        assert_eq!(decode::<RelayMsg>(&bytes).unwrap(), m);
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_named() {
        let m: AgentMsg = decode(br#"{"type":"heartbeat","future":"field"}"#).unwrap();
        assert_eq!(m, AgentMsg::Heartbeat);
        let err = decode::<AgentMsg>(br#"{"type":"teleport"}"#).unwrap_err();
        assert!(err.to_string().contains("teleport"), "{err}");
    }

    #[test]
    fn a_line_regex_is_sent_only_when_set() {
        let open = |matches: Option<&str>| RelayMsg::Open {
            demand: 1,
            stream: 2,
            stream_ref: 3,
            demand_spec: Demand {
                follow: true,
                matches: matches.map(Into::into),
                ..Demand::default()
            },
        };
        let plain = String::from_utf8(encode(&open(None))).unwrap();
        assert!(!plain.contains("matches"), "{plain}");
        let bytes = encode(&open(Some("ERR(OR)?")));
        assert!(String::from_utf8_lossy(&bytes).contains(r#""matches":"ERR(OR)?""#));
        assert_eq!(decode::<RelayMsg>(&bytes).unwrap(), open(Some("ERR(OR)?")));
        // As an older agent reads it: the unknown field is ignored.
        #[derive(Deserialize)]
        struct OldDemand {
            contains: Option<String>,
        }
        let old: OldDemand = decode(&bytes).unwrap();
        assert_eq!(old.contains, None);
    }
}
