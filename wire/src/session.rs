//! The relay ↔ session hop: JSON text messages over WebSocket. Requests carry an `op`, events
//! an `event`. Data arrives as binary messages holding [`crate::batch`] bytes.

use serde::{Deserialize, Serialize};

use crate::control::{ErrorCode, SeqPos};
use crate::labels::Labels;
use crate::pattern::LinePattern;
use crate::reason::{EndReason, GapReason, PauseReason};
use crate::selector::Selector;

/// Longest subscription id a client may choose.
pub const MAX_SUB_ID_BYTES: usize = 64;

/// Session → relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Watch every stream the selector matches, now and as they appear.
    Subscribe {
        /// Client-chosen subscription id, unique within the session.
        id: String,
        /// Which streams.
        #[serde(default)]
        selector: Selector,
        /// Backlog: the last N lines first (default [`crate::DEFAULT_TAIL_LINES`]; 0 for none).
        #[serde(default)]
        tail: Option<u32>,
        /// Only lines at or after this Unix time (nanoseconds).
        #[serde(default)]
        since_ns: Option<i64>,
        /// Resume after a reconnect from this position.
        #[serde(default)]
        since_seq: Option<SeqPos>,
        /// Keep following (default true).
        #[serde(default = "yes")]
        follow: bool,
        /// Only lines containing this substring (for metrics streams: a comma-separated list of
        /// metric names, `prefix_*` allowed). Filtered in the agent: other lines never leave
        /// the node. Live subscriptions with the same filter on a stream share one ring.
        #[serde(default)]
        contains: Option<String>,
        /// Only lines whose message (without its terminator) this regular expression matches
        /// somewhere (log streams only; see [`LinePattern`]). Filtered in the agent, like
        /// `contains`; when both are given a line must satisfy both. Compiled when the request
        /// is read: a bad pattern fails the request with a reason naming it. Omitted when
        /// unset, so requests without it are what older relays read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matches: Option<LinePattern>,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// The subscription id.
        id: String,
    },
    /// List the streams visible to this session that the selector matches, and with `watch`,
    /// keep telling of changes ([`Event::Catalog`]) until `unsubscribe` names `id`.
    List {
        /// Which streams.
        #[serde(default)]
        selector: Selector,
        /// Echoed in the answer and in every [`Event::Catalog`] of a watch. Required with
        /// `watch`; shares the namespace of subscription ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Keep the list open: streams matching the selector that appear, change liveness or
        /// go are sent as [`Event::Catalog`]. Counts against the session's subscription limit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        watch: bool,
    },
}

fn yes() -> bool {
    true
}

/// One stream as listed to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Relay stream id, as stamped in batch headers.
    pub stream: u64,
    /// Its labels.
    pub labels: Labels,
    /// Whether its agent is connected (false: the agent went away and the stream is kept
    /// only because somebody watches it; nothing new arrives until the agent is back).
    #[serde(default = "yes")]
    pub live: bool,
}

/// A stream that left a watched list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRemoved {
    /// Relay stream id.
    pub stream: u64,
    /// Why: the reason of its `end` (`container_removed`, `labels_changed`, …), or
    /// `agent_disconnected` (its agent went away and nobody watched it).
    pub reason: EndReason,
}

/// Relay → session.
#[allow(
    clippy::large_enum_variant,
    reason = "events are serialized as soon as they are built, never stored in bulk"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// First message of every session.
    Welcome {
        /// Session protocol version.
        protocol: u32,
        /// Org the session was authenticated for.
        org: String,
    },
    /// A subscription was accepted.
    Subscribed {
        /// Its id.
        id: String,
    },
    /// A stream now matches a subscription; binary batches with this `stream` id follow.
    Stream {
        /// Subscription id.
        id: String,
        /// Relay stream id.
        stream: u64,
        /// The stream's labels.
        labels: Labels,
    },
    /// Lines of a stream that this session will not receive.
    Gap {
        /// Relay stream id.
        stream: u64,
        /// Where the gap starts.
        from: SeqPos,
        /// Lines missing: exact when `exact` is true, otherwise the least it can be.
        lines: u64,
        /// Bytes missing: exact when `exact` is true, otherwise the least it can be.
        bytes: u64,
        /// Why.
        reason: GapReason,
        /// Set when everything of `from.epoch` from `from.seq` on is lost for good (the
        /// numbering the agent held is gone; what follows is in a new epoch). Absent (false)
        /// otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rest_of_epoch: bool,
        /// Whether `lines` and `bytes` are the exact loss. `false`: nobody could count the
        /// lines (`epoch_lost`), and `lines`/`bytes` are lower bounds (0: possibly nothing).
        /// Absent in events of relays that predate it (take it as unknown for `epoch_lost`).
        #[serde(default = "yes")]
        exact: bool,
    },
    /// The stream goes on in a new epoch and nothing was lost: its agent could not keep the
    /// numbering (it restarted), and started the new one right after the last line this
    /// session had of the old one. Lines from here on carry `to.epoch`; dedupe by
    /// `(epoch, seq)` starts afresh.
    Renumbered {
        /// Relay stream id.
        stream: u64,
        /// End of the old numbering (one past the last line of `from.epoch`).
        from: SeqPos,
        /// Where the new numbering starts: the first line of `to.epoch`.
        to: SeqPos,
    },
    /// The backfill of a stream is complete; what follows is live.
    Live {
        /// Relay stream id.
        stream: u64,
    },
    /// The agent serving a watched stream went away: nothing new arrives until it is back
    /// ([`Event::Resumed`]) or the stream ends. What the relay already held is still delivered.
    Paused {
        /// Relay stream id.
        stream: u64,
        /// Why.
        reason: PauseReason,
    },
    /// The agent of a paused stream is back; the stream continues where it was (a `gap`
    /// event says what, if anything, could not be recovered).
    Resumed {
        /// Relay stream id.
        stream: u64,
    },
    /// A stream ended.
    End {
        /// Relay stream id.
        stream: u64,
        /// Why.
        reason: EndReason,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Its id.
        id: String,
    },
    /// Answer to `list`.
    Streams {
        /// The `id` of the `list` request, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Matching streams.
        streams: Vec<StreamEntry>,
    },
    /// Changes to a watched list (`list` with `watch`): streams that now match (or whose
    /// liveness changed: the entry again with its new `live`), and streams that went.
    Catalog {
        /// The list watch's id.
        id: String,
        /// Streams that appeared, or whose `live` changed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added: Vec<StreamEntry>,
        /// Streams that went.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<StreamRemoved>,
    },
    /// A request failed; the session stays open unless a close follows.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// What was wrong.
        message: String,
        /// The subscription concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

/// WebSocket close codes the relay uses, as numbers ([`crate::code::CloseCode`] has their
/// meaning and whether to reconnect).
pub mod close {
    use crate::code::CloseCode;

    /// The relay is shutting down (standard "going away").
    pub const SHUTDOWN: u16 = CloseCode::Shutdown.code();
    /// The session violated the protocol.
    pub const PROTOCOL: u16 = CloseCode::Protocol.code();
    /// No valid credentials.
    pub const UNAUTHENTICATED: u16 = CloseCode::Unauthenticated.code();
    /// Credentials valid but not for this.
    pub const FORBIDDEN: u16 = CloseCode::Forbidden.code();
    /// The session's token expired.
    pub const TOKEN_EXPIRED: u16 = CloseCode::TokenExpired.code();
    /// A configured limit was crossed.
    pub const LIMIT: u16 = CloseCode::Limit.code();
    /// The session could not keep up and the policy is `disconnect`.
    pub const SLOW_CONSUMER: u16 = CloseCode::SlowConsumer.code();
    /// No pong within the timeout.
    pub const PING_TIMEOUT: u16 = CloseCode::PingTimeout.code();
    /// The relay is draining (a rolling update): reconnect at once, to any relay, and resume
    /// with `since_seq`. Nothing was lost by this close.
    pub const RECONNECT: u16 = CloseCode::Reconnect.code();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_defaults() {
        let r: Request =
            serde_json::from_str(r#"{"op":"subscribe","id":"a","selector":{"pod":"p"},"x":1}"#)
                .unwrap();
        match r {
            Request::Subscribe {
                id,
                selector,
                tail,
                follow,
                ..
            } => {
                assert_eq!(id, "a");
                assert_eq!(selector.pod.as_deref(), Some("p"));
                assert_eq!(tail, None);
                assert!(follow);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_tagged() {
        let e = Event::End {
            stream: 4,
            reason: EndReason::parse("pod_removed"),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"end","stream":4,"reason":"pod_removed"}"#
        );
    }

    #[test]
    fn a_lost_epoch_is_one_optional_field_on_the_gap_event() {
        let gap = |rest_of_epoch: bool| Event::Gap {
            stream: 3,
            from: SeqPos { epoch: 7, seq: 42 },
            lines: 0,
            bytes: 0,
            reason: if rest_of_epoch {
                GapReason::EpochLost
            } else {
                GapReason::SlowConsumer
            },
            rest_of_epoch,
            exact: !rest_of_epoch,
        };
        let json = serde_json::to_string(&gap(false)).unwrap();
        assert!(!json.contains("rest_of_epoch"), "{json}");
        assert!(json.ends_with(r#","exact":true}"#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), gap(false));
        let json = serde_json::to_string(&gap(true)).unwrap();
        assert_eq!(
            json,
            r#"{"event":"gap","stream":3,"from":{"epoch":7,"seq":42},"lines":0,"bytes":0,"reason":"epoch_lost","rest_of_epoch":true,"exact":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), gap(true));
        // A gap event of a relay that predates `exact` reads as exact.
        let old = r#"{"event":"gap","stream":3,"from":{"epoch":7,"seq":42},"lines":5,"bytes":9,"reason":"slow_consumer"}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(old).unwrap(),
            Event::Gap {
                exact: true,
                lines: 5,
                ..
            }
        ));
    }

    #[test]
    fn a_renumbering_names_both_ends() {
        let e = Event::Renumbered {
            stream: 3,
            from: SeqPos { epoch: 7, seq: 42 },
            to: SeqPos { epoch: 9, seq: 100 },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"renumbered","stream":3,"from":{"epoch":7,"seq":42},"to":{"epoch":9,"seq":100}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }

    #[test]
    fn a_list_watch_is_two_optional_fields_and_its_changes_one_event() {
        let plain: Request = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
        assert_eq!(
            plain,
            Request::List {
                selector: Selector::default(),
                id: None,
                watch: false
            }
        );
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"op":"list","selector":{}}"#
        );
        let watch: Request =
            serde_json::from_str(r#"{"op":"list","id":"w","watch":true,"selector":{"pod":"p"}}"#)
                .unwrap();
        assert!(matches!(watch, Request::List { id: Some(ref id), watch: true, .. } if id == "w"));

        let entry = StreamEntry {
            stream: 3,
            labels: Labels::default(),
            live: false,
        };
        let e = Event::Catalog {
            id: "w".into(),
            added: vec![entry.clone()],
            removed: Vec::new(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.starts_with(r#"{"event":"catalog","id":"w","added":[{"stream":3,"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""live":false}]}"#) && !json.contains("removed"),
            "{json}"
        );
        let gone = Event::Catalog {
            id: "w".into(),
            added: Vec::new(),
            removed: vec![StreamRemoved {
                stream: 3,
                reason: EndReason::ContainerRemoved,
            }],
        };
        assert_eq!(
            serde_json::to_string(&gone).unwrap(),
            r#"{"event":"catalog","id":"w","removed":[{"stream":3,"reason":"container_removed"}]}"#
        );
        // An entry from an older relay, without `live`, reads as live.
        let old: StreamEntry = serde_json::from_str(r#"{"stream":3,"labels":{}}"#).unwrap();
        assert!(old.live);
        assert_eq!(
            serde_json::to_string(&Event::Streams {
                id: None,
                streams: vec![]
            })
            .unwrap(),
            r#"{"event":"streams","streams":[]}"#
        );
    }

    #[test]
    fn a_line_regex_is_compiled_when_the_request_is_read() {
        let r: Request = serde_json::from_str(
            r#"{"op":"subscribe","id":"a","contains":"db","matches":"time(d )?out"}"#,
        )
        .unwrap();
        let Request::Subscribe {
            contains, matches, ..
        } = &r
        else {
            panic!("{r:?}")
        };
        assert_eq!(contains.as_deref(), Some("db"));
        let m = matches.as_ref().unwrap();
        assert!(m.matches(b"db timed out\n") && !m.matches(b"db slow\n"));
        // It travels as its source, and only when set.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""matches":"time(d )?out""#), "{json}");
        let plain: Request = serde_json::from_str(r#"{"op":"subscribe","id":"a"}"#).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("matches"));

        let e = serde_json::from_str::<Request>(r#"{"op":"subscribe","id":"a","matches":"(a+"}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("invalid regular expression `(a+`"),
            "{e}"
        );
    }
}
