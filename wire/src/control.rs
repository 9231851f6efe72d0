//! Control messages of the agent ↔ relay hop: JSON objects tagged by `type`, one per frame on
//! the bidirectional control stream. Unknown fields are ignored, so either side may add fields
//! without a version bump; an unknown `type` is an error naming it.

use serde::{Deserialize, Serialize};

use crate::code::Retry;
use crate::labels::Labels;
use crate::reason::EndReason;

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
    /// Why it ended: `container_removed`, `labels_changed`, or a code of the agent's own.
    pub reason: EndReason,
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
    /// A live demand that continues what the relay holds: when the agent no longer holds the
    /// numbering `since_seq` names (it restarted), it starts the new epoch right after this
    /// line, the last one the relay holds, and flags the first batch that continues it with
    /// [`crate::batch::FLAG_CONTINUES`] when it is sure no line lies between. Omitted when
    /// unset; an agent that predates it ignores it and goes by `since_ns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_line: Option<LineMark>,
}

/// One line of a stream, named by its timestamp and its rank among the consecutive lines
/// carrying that timestamp (lines written in the same nanosecond are common: a runtime stamps
/// every line of one write alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineMark {
    /// The line's timestamp, Unix nanoseconds.
    pub ns: i64,
    /// How many lines stamped `ns` end what the relay holds, this one the last: after the
    /// newest line stamped earlier, the line is the `nth` one stamped `ns` (counting only the
    /// lines the demand's filter keeps).
    pub nth: u32,
}

/// What a side of the agent hop supports beyond protocol 1, named in `hello` and `welcome`.
pub mod features {
    /// The relay acknowledges live demands (`ack`), and the agent keeps what it sent until
    /// acknowledged. Both sides must name it.
    pub const ACK: &str = "ack";
    /// Streams of kind `events` (protocol 2.7). The agent names it when it may announce them;
    /// the relay answers it when it reads them, and only then does the agent announce them (a
    /// relay that predates the kind would refuse the whole `catalog_add`).
    pub const EVENTS: &str = "events";
    /// Trace frames on data streams ([`crate::batch::TraceFrame`]): the agent names it while it
    /// traces; the relay answers it while it traces; only then may the agent put a trace frame
    /// before a batch it samples (a relay that did not answer it refuses one as malformed).
    pub const BATCH_TRACE: &str = "batch_trace";
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
        /// Features beyond protocol 1 the agent supports ([`features`]). Omitted when empty;
        /// a relay that predates it ignores it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
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
        /// Features of the agent's `hello` that the relay uses on this connection
        /// ([`features`]). Omitted when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
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
        /// W3C Trace Context of the relay's span for this demand
        /// (`00-<trace id>-<span id>-<flags>`), when the relay traces it: the agent's span for
        /// the demand becomes its child. Omitted when unset; an agent that predates it, or does
        /// not trace, ignores it, and a malformed one is ignored too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
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
        /// The limit: `meta_per_stream`, `label_bytes_per_stream`, `streams_per_agent`,
        /// `label_bytes_per_agent` or `streams_per_org`.
        limit: String,
        /// Human-readable reason.
        message: String,
    },
    /// Every session watching the live demand's ring has been handed the lines before
    /// `through` (or skipped them with a gap): the agent may forget what it sent before it.
    /// Sent only on connections whose `welcome` names [`features::ACK`].
    Ack {
        /// The demand id of the `open`.
        demand: u64,
        /// One past the last line acknowledged, in the demand's epoch.
        through: SeqPos,
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
    /// Every code.
    pub const ALL: &'static [Self] = &[
        Self::BadRequest,
        Self::UnsupportedVersion,
        Self::UnknownStream,
        Self::Forbidden,
        Self::Unauthenticated,
        Self::LimitExceeded,
        Self::OutOfOrder,
        Self::FrameTooLarge,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// Whether sending the same request again can succeed.
    pub fn retry(self) -> Retry {
        match self {
            Self::LimitExceeded | Self::Internal => Retry::Later,
            Self::ShuttingDown => Retry::Reconnect,
            Self::Unauthenticated => Retry::NewCredentials,
            Self::BadRequest
            | Self::UnsupportedVersion
            | Self::UnknownStream
            | Self::Forbidden
            | Self::OutOfOrder
            | Self::FrameTooLarge => Retry::Never,
        }
    }

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
            traceparent: None,
        };
        let bytes = encode(&m);
        assert_eq!(decode::<RelayMsg>(&bytes).unwrap(), m);
    }

    #[test]
    fn features_acks_and_line_marks_are_additive() {
        // A hello without features (an older agent) reads as one with none.
        let old: AgentMsg =
            decode(br#"{"type":"hello","protocol":1,"node":"n","agent_version":"0"}"#).unwrap();
        assert!(matches!(old, AgentMsg::Hello { features, .. } if features.is_empty()));
        let hello = AgentMsg::Hello {
            protocol: 1,
            node: "n".into(),
            agent_version: "0".into(),
            features: vec![features::ACK.into()],
        };
        let json = String::from_utf8(encode(&hello)).unwrap();
        assert!(json.ends_with(r#","features":["ack"]}"#), "{json}");
        let ack = RelayMsg::Ack {
            demand: 4,
            through: SeqPos { epoch: 2, seq: 9 },
        };
        assert_eq!(
            String::from_utf8(encode(&ack)).unwrap(),
            r#"{"type":"ack","demand":4,"through":{"epoch":2,"seq":9}}"#
        );
        let open = RelayMsg::Open {
            demand: 1,
            stream: 2,
            stream_ref: 3,
            demand_spec: Demand {
                follow: true,
                since_ns: Some(11),
                after_line: Some(LineMark { ns: 10, nth: 2 }),
                ..Demand::default()
            },
            traceparent: None,
        };
        let json = String::from_utf8(encode(&open)).unwrap();
        assert!(
            json.ends_with(r#""after_line":{"ns":10,"nth":2}}"#),
            "{json}"
        );
        assert_eq!(decode::<RelayMsg>(json.as_bytes()).unwrap(), open);
    }

    #[test]
    fn a_traceparent_is_sent_only_when_set_and_older_peers_ignore_it() {
        let open = |traceparent: Option<&str>| RelayMsg::Open {
            demand: 1,
            stream: 2,
            stream_ref: 3,
            demand_spec: Demand {
                follow: true,
                ..Demand::default()
            },
            traceparent: traceparent.map(Into::into),
        };
        let plain = String::from_utf8(encode(&open(None))).unwrap();
        assert!(!plain.contains("traceparent"), "{plain}");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let bytes = encode(&open(Some(tp)));
        assert!(String::from_utf8_lossy(&bytes).contains(&format!(r#""traceparent":"{tp}""#)));
        assert_eq!(decode::<RelayMsg>(&bytes).unwrap(), open(Some(tp)));
        // An open from a relay that predates it reads as one without.
        let old: RelayMsg =
            decode(br#"{"type":"open","demand":1,"stream":2,"stream_ref":3,"follow":true}"#)
                .unwrap();
        assert_eq!(old, open(None));
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
            traceparent: None,
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
