//! Wire formats of logrelay. Pure: no sockets, no clock, no files.
//!
//! Two hops share these types:
//!
//! * **agent ↔ relay**, over QUIC with ALPN [`ALPN`]. One bidirectional *control* stream carries
//!   [`frame`]-delimited JSON [`control`] messages (hello/welcome, catalog, open/cancel,
//!   heartbeats, errors). Each `open` is answered on its own unidirectional *data* stream that
//!   starts with a [`frame::DataPreamble`] and then carries [`batch`] frames.
//! * **relay ↔ session**, over WebSocket. JSON text messages for control ([`session`]); binary
//!   messages that are *exactly* the [`batch`] bytes the agent encoded, forwarded untouched.
//!
//! A batch is encoded once, by the agent, in the format subscribers read; the relay only parses
//! its fixed-size header ([`batch::BatchHeader`]) to route it.
//!
//! Timestamps are Unix nanoseconds; [`time`] renders them as RFC 3339 for people.
#![forbid(unsafe_code)]

pub mod batch;
pub mod code;
pub mod control;
pub mod frame;
pub mod labels;
pub mod pattern;
pub mod reason;
pub mod selector;
pub mod session;
pub mod time;

/// ALPN protocol name of the agent ↔ relay hop.
pub const ALPN: &[u8] = b"logrelay/1";

/// Version of the agent ↔ relay control protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default backlog a subscription asks for when it gives no `tail` (mirrors the Flyte log API).
pub const DEFAULT_TAIL_LINES: u32 = 1000;
