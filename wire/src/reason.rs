//! The words of the protocol: why lines were missed, why a stream paused or ended, why an
//! agent connection ended. Each is an enum with its wire spelling and a doc line; a spelling
//! this build does not know (a newer peer's, or an agent's own removal code) is kept as
//! [`Other`](GapReason::Other) rather than refused, so an older client still reads the event.
//!
//! Every spelling is listed in `docs/protocol.md` (a test checks it), and the browser viewer's
//! tables in `ui/format.js` name exactly the known ones (a test in the relay checks that too).

/// Declares a word enum: unit variants with their spelling and doc line, plus `Other`.
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])+ $variant:ident = $spelling:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[doc = $doc])+ $variant, )+
            /// A spelling this build does not know, kept as it was received.
            Other(String),
        }

        impl $name {
            /// Every word this build knows, in the order of the protocol's documentation.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The word as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $spelling,)+
                    Self::Other(s) => s,
                }
            }

            /// The word as a metric label: its spelling, or `other` for one this build does
            /// not know (label values stay a closed set).
            pub fn label(&self) -> &'static str {
                match self {
                    $(Self::$variant => $spelling,)+
                    Self::Other(_) => "other",
                }
            }

            /// What the word means (its doc comment); empty for [`Self::Other`].
            pub fn doc(&self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc, "\n"),+).trim(),)+
                    Self::Other(_) => "",
                }
            }

            /// The word of a spelling: a known one, or [`Self::Other`].
            pub fn parse(s: &str) -> Self {
                match s {
                    $($spelling => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

words! {
    /// Why a session misses lines (`gap` event, `reason`). Losses at the agent arrive as gap
    /// batches, which carry no reason.
    pub enum GapReason {
        /// The session fell behind the stream's ring and skipped to the oldest batch still
        /// held; `lines` and `bytes` are exact.
        SlowConsumer = "slow_consumer",
        /// The agent no longer holds the epoch (it restarted, or stopped following the file):
        /// nothing more of it comes, and how much was lost is unknown (`exact: false`).
        EpochLost = "epoch_lost",
        /// Lines of a backlog that never reached the relay: the demand meant to bring them (a
        /// joining watcher's backfill, or a resume's) ended with its agent connection before
        /// them. `lines` is exact, `bytes` 0 (the relay never held them).
        BackfillLost = "backfill_lost",
    }
}

words! {
    /// Why a watched stream pauses (`paused` event, `reason`): nothing new arrives until
    /// `resumed` or `end`.
    pub enum PauseReason {
        /// The agent serving the stream went away (its connection closed, timed out, or was
        /// superseded).
        AgentDisconnected = "agent_disconnected",
        /// The stream's agent is held by another relay, and the relays' backplane (NATS) is
        /// unreachable or that relay does not answer: `resumed` follows when it does.
        BackplaneUnavailable = "backplane_unavailable",
    }
}

words! {
    /// Why a stream ended: for a watcher (`end` event), for a watched list (`catalog`
    /// `removed`), and as an agent says it (`catalog_remove`). An agent may send a code of its
    /// own (`[a-z0-9_]`, at most 64 bytes), which the relay passes on.
    pub enum EndReason {
        /// The source is gone: the container's log, or the metrics source (sent by agents).
        ContainerRemoved = "container_removed",
        /// The agent announced the same source again with other labels, under a new id (sent by
        /// agents).
        LabelsChanged = "labels_changed",
        /// The stream's agent went away and nobody watched the stream (`catalog` `removed`
        /// only: watchers get `paused`).
        AgentDisconnected = "agent_disconnected",
        /// A demand served for one subscription alone (a one-off read) finished.
        Complete = "complete",
        /// A one-off read of a stream whose agent is not connected.
        AgentUnavailable = "agent_unavailable",
        /// Serving the subscription needed one more demand at the stream's agent and a cap
        /// refused it; subscribe again later.
        DemandLimit = "demand_limit",
        /// The agent refused a filtered ring's demand as a bad request (a `matches` pattern it
        /// cannot compile); it is not asked again.
        Refused = "refused",
    }
}

/// The longest agent removal code the relay passes on to sessions.
pub const MAX_AGENT_CODE_BYTES: usize = 64;

impl EndReason {
    /// The reason of an agent's `catalog_remove` as sessions are told it: a known word, or an
    /// agent's own code (`[a-z0-9_]`, at most [`MAX_AGENT_CODE_BYTES`]); anything else, which
    /// could carry anything into logs and pages, becomes [`EndReason::ContainerRemoved`].
    pub fn from_agent(reason: &EndReason) -> EndReason {
        match reason {
            Self::Other(code)
                if code.is_empty()
                    || code.len() > MAX_AGENT_CODE_BYTES
                    || !code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Self::ContainerRemoved
            }
            known => known.clone(),
        }
    }
}

words! {
    /// Why an agent connection ended, as the audit trail says (`agent_disconnect`, `reason`).
    pub enum DisconnectReason {
        /// The agent closed its connection, or the relay did at shutdown or for a full control
        /// queue.
        Closed = "closed",
        /// The agent broke the protocol on its control stream.
        ProtocolError = "protocol_error",
        /// The agent presented ids or streams not its own, on the control stream or too often
        /// on data streams.
        Violation = "violation",
        /// A newer connection of the same agent (org, cluster, node) took over.
        Superseded = "superseded",
        /// Nothing was heard from the agent for the QUIC idle timeout.
        Timeout = "timeout",
        /// The connection failed underneath (reset, network error).
        ConnectionLost = "connection_lost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_travel_as_their_spelling_and_unknown_ones_are_kept() {
        assert_eq!(
            serde_json::to_string(&GapReason::SlowConsumer).unwrap(),
            r#""slow_consumer""#
        );
        assert_eq!(
            serde_json::from_str::<EndReason>(r#""demand_limit""#).unwrap(),
            EndReason::DemandLimit
        );
        assert_eq!(
            serde_json::from_str::<PauseReason>(r#""backplane_unavailable""#).unwrap(),
            PauseReason::BackplaneUnavailable
        );
        let later: PauseReason = serde_json::from_str(r#""relay_overloaded""#).unwrap();
        assert_eq!(later, PauseReason::Other("relay_overloaded".into()));
        assert_eq!(
            serde_json::to_string(&later).unwrap(),
            r#""relay_overloaded""#
        );
        assert!(GapReason::EpochLost == "epoch_lost");
        assert_eq!(EndReason::Complete.to_string(), "complete");
        for w in EndReason::ALL {
            assert_eq!(&EndReason::parse(w.as_str()), w);
            assert!(!w.doc().is_empty());
        }
    }

    #[test]
    fn an_agent_removal_reason_is_a_code_or_container_removed() {
        let told = |r: &str| EndReason::from_agent(&EndReason::parse(r));
        assert_eq!(told("labels_changed"), EndReason::LabelsChanged);
        assert_eq!(told("pod_removed"), EndReason::Other("pod_removed".into()));
        for bad in ["", "<script>", "Removed", &"x".repeat(65)] {
            assert_eq!(told(bad), EndReason::ContainerRemoved);
        }
    }

    #[test]
    fn the_protocol_documentation_names_every_word() {
        let doc = include_str!("../../docs/protocol.md");
        let words = GapReason::ALL
            .iter()
            .map(GapReason::as_str)
            .chain(PauseReason::ALL.iter().map(PauseReason::as_str))
            .chain(EndReason::ALL.iter().map(EndReason::as_str))
            .chain(crate::code::CloseCode::ALL.iter().map(|c| c.name()))
            .chain(crate::code::AppCode::ALL.iter().map(|c| c.name()));
        for w in words {
            assert!(
                doc.contains(&format!("`{w}`")),
                "docs/protocol.md never names `{w}`"
            );
        }
    }
}
