//! The numbers of the protocol: WebSocket close codes of the session hop ([`CloseCode`]) and
//! QUIC application error codes of the agent hop ([`AppCode`]), each with its name, a doc line
//! and, where a client must decide whether to try again, its [`Retry`].

/// Whether trying again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reconnecting (or sending again) as it is may succeed: the relay went away, or the
    /// client fell behind.
    Reconnect,
    /// The same request may succeed later, once a limit is no longer reached.
    Later,
    /// Only with new credentials (a client that can get a fresh token reconnects).
    NewCredentials,
    /// Trying the same again fails again.
    Never,
}

/// Declares a numeric code enum: variants with their number, name, retry and doc line.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $int:ty {
            $( $(#[doc = $doc:literal])+ $variant:ident = ($num:literal, $word:literal, $retry:ident), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[doc = $doc])+ $variant, )+
            /// A code this build does not know.
            Other($int),
        }

        impl $name {
            /// Every code this build knows.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The number on the wire.
            pub const fn code(self) -> $int {
                match self {
                    $(Self::$variant => $num,)+
                    Self::Other(n) => n,
                }
            }

            /// The code of a number: a known one, or [`Self::Other`].
            pub const fn from_code(n: $int) -> Self {
                match n {
                    $($num => Self::$variant,)+
                    other => Self::Other(other),
                }
            }

            /// Its name, as `docs/protocol.md` writes it; `OTHER` for [`Self::Other`].
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                    Self::Other(_) => "OTHER",
                }
            }

            /// Whether a client should try again after it.
            pub const fn retry(self) -> Retry {
                match self {
                    $(Self::$variant => Retry::$retry,)+
                    Self::Other(_) => Retry::Never,
                }
            }

            /// What the code means (its doc comment); empty for [`Self::Other`].
            pub fn doc(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc, "\n"),+).trim(),)+
                    Self::Other(_) => "",
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} {}", self.code(), self.name())
            }
        }
    };
}

codes! {
    /// WebSocket close codes the relay closes sessions with (4000–4999 is the application
    /// range; 1001 and 1002 are the standard ones). Retries: `logrelay` and the viewer
    /// reconnect on [`Retry::Reconnect`]; `logrelay` also on [`Retry::NewCredentials`], since
    /// it reads its token again for each connection; the viewer cannot get a new token and
    /// stops, as on [`Retry::Never`].
    pub enum CloseCode: u16 {
        /// The relay is shutting down (standard "going away").
        Shutdown = (1001, "SHUTDOWN", Reconnect),
        /// The session violated the protocol (not sent today).
        Protocol = (1002, "PROTOCOL", Never),
        /// No valid credentials (not sent today: a refused upgrade gets HTTP 401).
        Unauthenticated = (4001, "UNAUTHENTICATED", Never),
        /// Credentials valid but not for this (not sent today).
        Forbidden = (4003, "FORBIDDEN", Never),
        /// The session's token expired.
        TokenExpired = (4004, "TOKEN_EXPIRED", NewCredentials),
        /// A configured limit was crossed (sessions per org, message size).
        Limit = (4008, "LIMIT", Never),
        /// The session could not keep up (policy `disconnect`), or let its events pile up.
        SlowConsumer = (4009, "SLOW_CONSUMER", Reconnect),
        /// Nothing received from the session for three ping intervals.
        PingTimeout = (4010, "PING_TIMEOUT", Reconnect),
        /// The relay is draining (a rolling update): reconnect at once, to any relay, and
        /// resume with `since_seq`; nothing was lost by this close.
        Reconnect = (4012, "RECONNECT", Reconnect),
    }
}

codes! {
    /// QUIC application error codes of the agent hop: the relay closes connections and stops
    /// data streams (STOP_SENDING) with them; the agent resets a data stream with
    /// [`AppCode::Protocol`]'s number, 1, as its "cancelled" (`AGENT_CANCELLED`). The agent
    /// reconnects after any connection close.
    pub enum AppCode: u32 {
        /// Normal close (defined, not used by the relay); the agent closes with it when it
        /// shuts down.
        Ok = (0, "OK", Reconnect),
        /// The peer broke the protocol: connection close after a control-stream error, or
        /// STOP_SENDING on a malformed data stream.
        Protocol = (1, "PROTOCOL", Reconnect),
        /// Connection close: the agent's certificate names no org or cluster.
        Forbidden = (3, "FORBIDDEN", Never),
        /// Connection and endpoint close: the relay is shutting down.
        Shutdown = (4, "SHUTDOWN", Reconnect),
        /// STOP_SENDING: a data stream for a demand of the connection that no longer exists.
        UnknownDemand = (5, "UNKNOWN_DEMAND", Never),
        /// STOP_SENDING: the relay cancelled the demand this data stream serves.
        Cancelled = (6, "CANCELLED", Never),
        /// Connection close: the agent's control queue overflowed; reconnect and the relay
        /// re-sends its demands.
        Overloaded = (7, "OVERLOADED", Reconnect),
        /// STOP_SENDING on a data stream for an id or stream that is not the connection's own,
        /// or connection close (a control-stream violation, or too many of them).
        Violation = (8, "VIOLATION", Reconnect),
        /// Connection close: a newer connection of the same agent (org, cluster, node) took
        /// over.
        Superseded = (9, "SUPERSEDED", Never),
        /// Connection close: the relay is draining (a rolling update); the agent reconnects at
        /// once, with no backoff, to its next relay address.
        Move = (10, "MOVE", Reconnect),
    }
}

/// The code the agent resets a data stream with when its demand was cancelled or its serving
/// failed (RESET_STREAM; 1, like [`AppCode::Protocol`] in the other direction).
pub const AGENT_CANCELLED: u32 = 1;

impl From<AppCode> for u32 {
    fn from(c: AppCode) -> u32 {
        c.code()
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_their_numbers() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), *c);
            assert!(!c.doc().is_empty());
        }
        for c in AppCode::ALL {
            assert_eq!(AppCode::from_code(c.code()), *c);
        }
        assert_eq!(CloseCode::from_code(4999), CloseCode::Other(4999));
        assert_eq!(CloseCode::from_code(4999).retry(), Retry::Never);
        assert_eq!(CloseCode::TokenExpired.to_string(), "4004 TOKEN_EXPIRED");
    }
}
