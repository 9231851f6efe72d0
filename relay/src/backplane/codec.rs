//! The backplane's messages (pure): a binary envelope for batches, JSON for the rest.
//!
//! **Data** (`<p>.data.…`): a header of at least [`DATA_HEADER_BYTES`], all integers
//! little-endian, then the batch exactly as the agent encoded it (taken with
//! `Bytes::slice`, never copied):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 3 | magic `LRB` |
//! | 3 | 1 | version ([`VERSION`]) |
//! | 4 | 1 | kind (1: batch) |
//! | 5 | 1 | flags (none defined; ignored) |
//! | 6 | 2 | header length: where the batch starts; a later version appends fields, which this one skips |
//! | 8 | 16 | publishing relay ([`Token`]) |
//! | 24 | 8 | connection epoch of the agent at that relay |
//! | 32 | 8 | `pub_seq`: number of this batch of the stream at this origin, from 1 (every batch is numbered, published or not) |
//! | 40 | 8 | `bytes_before`: bytes of the stream's batches at this origin before this one |
//! | 48 | 8 | epoch of the batch's lines |
//! | 56 | 8 | first sequence number |
//! | 64 | 8 | end sequence number (one past the last line) |
//!
//! `pub_seq` and `bytes_before` let a receiver name a hole exactly (messages, lines, bytes),
//! whatever NATS dropped ([`super::holes`]).
//!
//! **Backfill reply** (the answer to [`Control::Backfill`] on a demand subject): kind 2, a
//! header of at least [`BACKFILL_HEADER_BYTES`], then batches, each behind its length (`u32`),
//! taken from the owner's ring as the agent encoded them (the first and last trimmed to the
//! range asked), with gap notices where the owner cannot supply lines:
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 3 | magic `LRB` |
//! | 3 | 1 | version ([`VERSION`]) |
//! | 4 | 1 | kind (2: backfill reply) |
//! | 5 | 1 | flags: 1 more follows (ask again from `next`), 2 stream unknown at the owner |
//! | 6 | 2 | header length |
//! | 8 | 16 | answering relay ([`Token`]) |
//! | 24 | 8 | its connection epoch of the agent |
//! | 32 | 8 | `next`: epoch (0 with seq 0: nothing) |
//! | 40 | 8 | `next`: sequence number, one past the last line answered |
//!
//! A reply is at most the `max_bytes` the request names (itself at most NATS `max_payload`):
//! a long backlog is fetched in several requests, each from the `next` of the previous reply.
//!
//! **Control** (`<p>.demand.…`, `<p>.catalog.…`, `<p>.relay.…`): one JSON object tagged by
//! `type`, with `v` (the backplane version, [`VERSION`]). Unknown fields are ignored, so a later
//! minor change adds fields; a message of another `v` is refused. Every message is bounded:
//! decoding refuses more than the caller's byte limit, and [`catalog_messages`] splits a
//! catalog into parts that each fit the limit.

use bytes::{BufMut, Bytes, BytesMut};
use logrelay_wire::control::SeqPos;
use logrelay_wire::labels::Labels;
use serde::{Deserialize, Serialize};

use super::subject::Token;

/// Backplane protocol version, in data headers and control messages.
pub const VERSION: u8 = 1;

/// Bytes of the data header this version writes.
pub const DATA_HEADER_BYTES: usize = 72;

/// Bytes of the backfill reply header this version writes.
pub const BACKFILL_HEADER_BYTES: usize = 48;

/// Bytes a batch takes in a backfill reply besides its own (its length).
pub const BACKFILL_FRAME_BYTES: usize = 4;

const MAGIC: &[u8; 3] = b"LRB";
const KIND_BATCH: u8 = 1;
const KIND_BACKFILL: u8 = 2;
const FLAG_MORE: u8 = 1;
const FLAG_UNKNOWN: u8 = 2;

/// A message the backplane cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than its header says, or than the header itself.
    #[error("backplane message of {0} bytes is truncated")]
    Short(usize),
    /// Not a backplane data message.
    #[error("not a backplane data message (magic)")]
    Magic,
    /// Another protocol version.
    #[error("backplane version {0} not supported (this relay speaks {VERSION})")]
    Version(u32),
    /// A data message of a kind this version does not know.
    #[error("unknown data message kind {0}")]
    Kind(u8),
    /// More bytes than allowed.
    #[error("backplane message of {len} bytes; at most {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Malformed JSON, or a field of the wrong type.
    #[error("malformed backplane message: {0}")]
    Json(String),
    /// End before start, or a header that is inconsistent.
    #[error("inconsistent data header: {0}")]
    Inconsistent(&'static str),
}

/// The header of a batch on the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// The relay that published it.
    pub relay: Token,
    /// The agent's connection epoch at that relay.
    pub conn_epoch: u64,
    /// Number of this message on its subject from `(relay, conn_epoch)`, from 1.
    pub pub_seq: u64,
    /// Batch bytes published on the subject by that origin before this one.
    pub bytes_before: u64,
    /// First line: epoch and sequence number.
    pub first: SeqPos,
    /// One past the last line (same epoch).
    pub end_seq: u64,
}

impl DataHeader {
    /// Lines of the batch.
    pub fn lines(&self) -> u64 {
        self.end_seq - self.first.seq
    }
}

/// Writes `header` and `batch` into one message (the only copy on the publishing side: NATS
/// takes a contiguous payload).
pub fn encode_data(header: &DataHeader, batch: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(DATA_HEADER_BYTES + batch.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(KIND_BATCH);
    out.put_u8(0);
    out.put_u16_le(DATA_HEADER_BYTES as u16);
    out.put_slice(&header.relay.0);
    for v in [
        header.conn_epoch,
        header.pub_seq,
        header.bytes_before,
        header.first.epoch,
        header.first.seq,
        header.end_seq,
    ] {
        out.put_u64_le(v);
    }
    out.put_slice(batch);
    out.freeze()
}

/// Checks a binary message's magic, version and kind; returns its header length (at least
/// `min_header`, and within the message).
fn binary_prelude(msg: &[u8], kind: u8, min_header: usize) -> Result<usize, CodecError> {
    if msg.len() < 8 {
        return Err(CodecError::Short(msg.len()));
    }
    if &msg[..3] != MAGIC {
        return Err(CodecError::Magic);
    }
    if msg[3] != VERSION {
        return Err(CodecError::Version(u32::from(msg[3])));
    }
    if msg[4] != kind {
        return Err(CodecError::Kind(msg[4]));
    }
    let header_len = usize::from(u16::from_le_bytes([msg[6], msg[7]]));
    if header_len < min_header {
        return Err(CodecError::Inconsistent(
            "header length below this version's",
        ));
    }
    if msg.len() < header_len {
        return Err(CodecError::Short(msg.len()));
    }
    Ok(header_len)
}

/// Reads a data message: its header and the batch, a slice of `msg` (no copy).
pub fn decode_data(msg: &Bytes) -> Result<(DataHeader, Bytes), CodecError> {
    let header_len = binary_prelude(msg, KIND_BATCH, DATA_HEADER_BYTES)?;
    let u64_at = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
    let mut relay = [0u8; 16];
    relay.copy_from_slice(&msg[8..24]);
    let header = DataHeader {
        relay: Token(relay),
        conn_epoch: u64_at(24),
        pub_seq: u64_at(32),
        bytes_before: u64_at(40),
        first: SeqPos {
            epoch: u64_at(48),
            seq: u64_at(56),
        },
        end_seq: u64_at(64),
    };
    if header.end_seq < header.first.seq {
        return Err(CodecError::Inconsistent("end before start"));
    }
    if header.pub_seq == 0 {
        return Err(CodecError::Inconsistent("pub_seq starts at 1"));
    }
    Ok((header, msg.slice(header_len..)))
}

/// What a backfill request asks of one stream: the lines a session's `tail`, `since_ns` or
/// `since_seq` names (as the agent would read them), before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackfillAsk {
    /// The last `tail` lines before `until` (or before the owner's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Lines written at or after this time (ns since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<i64>,
    /// Lines from this position on (the `next` of a previous reply, or a session's resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seq: Option<SeqPos>,
    /// Stop before this position (where the asking relay's ring takes over); unset: at the
    /// owner's end when it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<SeqPos>,
}

/// What the first watcher of a stream on the wanting relay brings to the lease that may open
/// the stream's live demand at the agent ([`Control::Lease`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFirst {
    /// What it asked to read back (`tail`, `since_ns`, `since_seq`; `until` is not used): a
    /// live demand the lease opens reads it first, as for a first local watcher, so the
    /// backlog reaches the wanting relay through the live flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BackfillAsk>,
    /// W3C `traceparent` of its subscription's span (traces on): the demand the lease opens
    /// is traced as its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl LeaseFirst {
    /// Whether it brings nothing.
    pub fn is_empty(&self) -> bool {
        self.backlog.is_none() && self.traceparent.is_none()
    }
}

/// [`LeaseFirst`] of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstLease {
    /// The stream.
    pub stream: Token,
    /// What its first watcher brings.
    #[serde(flatten)]
    pub first: LeaseFirst,
}

/// One reply to a backfill request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReply {
    /// The relay that answered.
    pub relay: Token,
    /// Its connection epoch of the agent.
    pub conn_epoch: u64,
    /// False: the owner has no such stream of the agent (nothing follows).
    pub known: bool,
    /// More lines follow: ask again with `since_seq` set to `next`.
    pub more: bool,
    /// One past the last line answered (`None`: nothing answered, nothing held).
    pub next: Option<SeqPos>,
    /// Batches and gap notices, oldest first, stamped with the owner's stream id.
    pub batches: Vec<Bytes>,
}

/// Writes a backfill reply. The caller keeps it within its limit: the header plus
/// [`BACKFILL_FRAME_BYTES`] and the length of each batch.
pub fn encode_backfill_reply(reply: &BackfillReply) -> Bytes {
    let body: usize = reply
        .batches
        .iter()
        .map(|b| BACKFILL_FRAME_BYTES + b.len())
        .sum();
    let mut out = BytesMut::with_capacity(BACKFILL_HEADER_BYTES + body);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(KIND_BACKFILL);
    let mut flags = 0;
    if reply.more {
        flags |= FLAG_MORE;
    }
    if !reply.known {
        flags |= FLAG_UNKNOWN;
    }
    out.put_u8(flags);
    out.put_u16_le(BACKFILL_HEADER_BYTES as u16);
    out.put_slice(&reply.relay.0);
    out.put_u64_le(reply.conn_epoch);
    let next = reply.next.unwrap_or(SeqPos { epoch: 0, seq: 0 });
    out.put_u64_le(next.epoch);
    out.put_u64_le(next.seq);
    for b in &reply.batches {
        out.put_u32_le(u32::try_from(b.len()).expect("batches are far below 4 GiB"));
        out.put_slice(b);
    }
    out.freeze()
}

/// Reads a backfill reply of at most `max_bytes`; its batches are slices of `msg` (no copy).
pub fn decode_backfill_reply(msg: &Bytes, max_bytes: usize) -> Result<BackfillReply, CodecError> {
    if msg.len() > max_bytes {
        return Err(CodecError::TooLarge {
            len: msg.len(),
            max: max_bytes,
        });
    }
    let header_len = binary_prelude(msg, KIND_BACKFILL, BACKFILL_HEADER_BYTES)?;
    let u64_at = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
    let mut relay = [0u8; 16];
    relay.copy_from_slice(&msg[8..24]);
    let next = SeqPos {
        epoch: u64_at(32),
        seq: u64_at(40),
    };
    let mut batches = Vec::new();
    let mut at = header_len;
    while at < msg.len() {
        if msg.len() - at < BACKFILL_FRAME_BYTES {
            return Err(CodecError::Short(msg.len()));
        }
        let len = u32::from_le_bytes(msg[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += BACKFILL_FRAME_BYTES;
        if msg.len() - at < len {
            return Err(CodecError::Short(msg.len()));
        }
        batches.push(msg.slice(at..at + len));
        at += len;
    }
    Ok(BackfillReply {
        relay: Token(relay),
        conn_epoch: u64_at(24),
        known: msg[5] & FLAG_UNKNOWN == 0,
        more: msg[5] & FLAG_MORE != 0,
        next: (next != SeqPos { epoch: 0, seq: 0 }).then_some(next),
        batches,
    })
}

/// Where a stream stands at the relay holding its agent (the answer to a lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTop {
    /// The stream.
    pub stream: Token,
    /// False: the agent has no such stream (not, or no longer, announced).
    pub known: bool,
    /// One past the last line the owner received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<SeqPos>,
    /// Last `pub_seq` published on the stream's subject (0: none yet).
    #[serde(default)]
    pub pub_seq: u64,
    /// Batch bytes published on the subject, in total (the next message's `bytes_before`).
    #[serde(default)]
    pub bytes: u64,
    /// The lease was refused: serving it needed one more demand at the agent, beyond this cap
    /// of the owner (`demands_per_agent`, `demands_per_org`). Nothing is held for it; the
    /// wanting relay ends its watchers' subscriptions of the stream (`end` `demand_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A catalog operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogOp {
    /// Streams announced (an agent's entry added or its epoch raised).
    Add,
    /// Streams removed (`removed`), or an agent gone (`gone`).
    Remove,
    /// One part of the relay's whole catalog; at the last part, entries of that relay not in
    /// any part of the same generation are dropped.
    Snapshot,
}

/// One stream in a catalog message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogStream {
    /// Its token.
    pub stream: Token,
    /// Its labels, org and cluster from the agent's certificate at the owning relay.
    pub labels: Labels,
}

/// One agent in a catalog message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogAgent {
    /// The agent's token.
    pub agent: Token,
    /// Org (from the agent's certificate).
    pub org: String,
    /// Cluster (from the agent's certificate).
    pub cluster: String,
    /// Node (from its hello).
    pub node: String,
    /// Its connection epoch at the announcing relay: the higher epoch wins.
    pub conn_epoch: u64,
    /// Streams added (`add`, `snapshot`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<CatalogStream>,
    /// Streams removed (`remove`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Token>,
    /// The agent left this relay (`remove`): all its streams go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Request on an agent's demand subject: the whole set of its streams `relay` wants now.
    /// It is both a want and the lease's refresh (sent every refresh interval); a stream left
    /// out is released; an empty set releases them all.
    Lease {
        /// Version.
        v: u32,
        /// The wanting relay.
        relay: Token,
        /// The agent.
        agent: Token,
        /// Streams wanted.
        streams: Vec<Token>,
        /// What the first watcher on the wanting relay brings, per stream the owner has not
        /// answered for yet ([`FirstLease`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        first: Vec<FirstLease>,
    },
    /// The owner's reply to [`Control::Lease`].
    LeaseReply {
        /// Version.
        v: u32,
        /// The relay holding the agent.
        relay: Token,
        /// Its connection epoch of the agent.
        conn_epoch: u64,
        /// Where each stream asked for stands.
        streams: Vec<StreamTop>,
    },
    /// Request on an agent's demand subject: lines of one of its streams from the owner's
    /// ring, answered with one backfill reply (binary, see the module's doc) of at most
    /// `max_bytes`.
    Backfill {
        /// Version.
        v: u32,
        /// The asking relay.
        relay: Token,
        /// The agent.
        agent: Token,
        /// The stream.
        stream: Token,
        /// What is asked.
        ask: BackfillAsk,
        /// The largest reply the asking relay takes (the owner answers at most its own
        /// limit).
        max_bytes: u64,
    },
    /// Catalog change or snapshot part of one relay.
    Catalog {
        /// Version.
        v: u32,
        /// The announcing relay.
        relay: Token,
        /// What kind.
        op: CatalogOp,
        /// Snapshot generation (increasing per relay; 0 for add and remove).
        #[serde(default)]
        generation: u64,
        /// Part number within the generation, from 0.
        #[serde(default)]
        part: u32,
        /// Parts in the generation.
        #[serde(default)]
        parts: u32,
        /// The agents concerned.
        agents: Vec<CatalogAgent>,
    },
    /// A relay is alive.
    Heartbeat {
        /// Version.
        v: u32,
        /// The relay.
        relay: Token,
        /// Its `--relay-id`, for operators.
        relay_id: String,
        /// Agents it holds.
        agents: u64,
    },
}

impl Control {
    /// The version a message carries.
    fn version(&self) -> u32 {
        match self {
            Self::Lease { v, .. }
            | Self::LeaseReply { v, .. }
            | Self::Backfill { v, .. }
            | Self::Catalog { v, .. }
            | Self::Heartbeat { v, .. } => *v,
        }
    }
}

/// Encodes a control message.
pub fn encode_control(msg: &Control) -> Bytes {
    Bytes::from(serde_json::to_vec(msg).expect("control messages serialize"))
}

/// Decodes a control message of at most `max_bytes`.
pub fn decode_control(msg: &[u8], max_bytes: usize) -> Result<Control, CodecError> {
    if msg.len() > max_bytes {
        return Err(CodecError::TooLarge {
            len: msg.len(),
            max: max_bytes,
        });
    }
    // The version first, so a message of another version says so rather than failing on a
    // field it changed.
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(msg).map_err(|e| CodecError::Json(e.to_string()))?;
    if versioned.v != u32::from(VERSION) {
        return Err(CodecError::Version(versioned.v));
    }
    let c: Control = serde_json::from_slice(msg).map_err(|e| CodecError::Json(e.to_string()))?;
    debug_assert_eq!(c.version(), u32::from(VERSION));
    Ok(c)
}

/// Splits one catalog message's agents into messages of at most `max_bytes` each (an agent
/// with many streams is split over several). A single stream larger than the limit cannot be
/// sent and is left out; the count of such streams is returned beside the messages.
/// `part`/`parts` are numbered over the result. Sizes are counted per item (an upper bound of
/// the JSON written), so the work is linear in the catalog.
pub fn catalog_messages(
    relay: Token,
    op: CatalogOp,
    generation: u64,
    agents: Vec<CatalogAgent>,
    max_bytes: usize,
) -> (Vec<Bytes>, usize) {
    // The message with no agent, with the widest part numbers.
    let base = encode_control(&Control::Catalog {
        v: u32::from(VERSION),
        relay,
        op,
        generation,
        part: u32::MAX,
        parts: u32::MAX,
        agents: Vec::new(),
    })
    .len();
    // An agent entry: its JSON without items, a comma, and both lists' keys and brackets.
    let agent_len = |a: &CatalogAgent| json_len(a) + 1 + 2 * r#","streams":[]"#.len();
    let mut groups: Vec<Vec<CatalogAgent>> = Vec::new();
    let mut current: Vec<CatalogAgent> = Vec::new();
    let mut size = base;
    let mut skipped = 0;
    for agent in agents {
        let bare = CatalogAgent {
            streams: Vec::new(),
            removed: Vec::new(),
            ..agent.clone()
        };
        let bare_len = agent_len(&bare);
        let mut items: Vec<(usize, Result<CatalogStream, Token>)> = agent
            .streams
            .into_iter()
            .map(|s| (json_len(&s) + 1, Ok(s)))
            .collect();
        items.extend(
            agent
                .removed
                .into_iter()
                .map(|t| (json_len(&t) + 1, Err(t))),
        );
        if items.is_empty() {
            if size + bare_len > max_bytes && !current.is_empty() {
                groups.push(std::mem::take(&mut current));
                size = base;
            }
            size += bare_len;
            current.push(bare);
            continue;
        }
        let mut open = false;
        for (len, item) in items {
            if base + bare_len + len > max_bytes {
                skipped += 1;
                continue;
            }
            let extra = len + if open { 0 } else { bare_len };
            if size + extra > max_bytes {
                groups.push(std::mem::take(&mut current));
                size = base;
                open = false;
            }
            if !open {
                current.push(bare.clone());
                size += bare_len;
                open = true;
            }
            size += len;
            let entry = current.last_mut().expect("opened");
            match item {
                Ok(s) => entry.streams.push(s),
                Err(t) => entry.removed.push(t),
            }
        }
    }
    if !current.is_empty() || groups.is_empty() {
        // An empty snapshot still tells that the relay holds nothing.
        groups.push(current);
    }
    let parts = u32::try_from(groups.len()).unwrap_or(u32::MAX);
    let out = groups
        .into_iter()
        .enumerate()
        .map(|(i, agents)| {
            encode_control(&Control::Catalog {
                v: u32::from(VERSION),
                relay,
                op,
                generation,
                part: u32::try_from(i).unwrap_or(u32::MAX),
                parts,
                agents,
            })
        })
        .collect();
    (out, skipped)
}

/// Bytes of a value's JSON.
fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn token(n: u8) -> Token {
        Token([n; 16])
    }

    fn header() -> DataHeader {
        DataHeader {
            relay: token(7),
            conn_epoch: 1_700_000_000_000_000_000,
            pub_seq: 3,
            bytes_before: 1234,
            first: SeqPos { epoch: 9, seq: 100 },
            end_seq: 110,
        }
    }

    #[test]
    fn a_batch_travels_unchanged_behind_its_header() {
        let batch = Bytes::from_static(b"the batch bytes");
        let msg = encode_data(&header(), &batch);
        assert_eq!(msg.len(), DATA_HEADER_BYTES + batch.len());
        let (h, b) = decode_data(&msg).unwrap();
        assert_eq!(h, header());
        assert_eq!(h.lines(), 10);
        assert_eq!(b, batch);
        // A slice of the message, not a copy.
        assert_eq!(b.as_ptr(), msg[DATA_HEADER_BYTES..].as_ptr());
    }

    #[test]
    fn a_longer_header_of_a_later_minor_version_is_skipped() {
        let mut msg = BytesMut::from(&encode_data(&header(), b"")[..]);
        msg[6..8].copy_from_slice(&80u16.to_le_bytes());
        msg.extend_from_slice(b"newfieldBATCH");
        let (h, b) = decode_data(&msg.freeze()).unwrap();
        assert_eq!(h, header());
        assert_eq!(&b[..], b"BATCH");
    }

    #[test]
    fn bad_data_messages_are_refused_with_a_reason() {
        let good = encode_data(&header(), b"x");
        let with = |at: usize, byte: u8| {
            let mut m = BytesMut::from(&good[..]);
            m[at] = byte;
            decode_data(&m.freeze())
        };
        assert_eq!(with(0, b'X'), Err(CodecError::Magic));
        assert_eq!(with(3, 2), Err(CodecError::Version(2)));
        assert_eq!(with(4, 9), Err(CodecError::Kind(9)));
        assert!(matches!(with(6, 10), Err(CodecError::Inconsistent(_))));
        assert_eq!(decode_data(&good.slice(..40)), Err(CodecError::Short(40)));
        let mut backwards = header();
        backwards.end_seq = 1;
        assert!(matches!(
            decode_data(&encode_data(&backwards, b"")),
            Err(CodecError::Inconsistent(_))
        ));
    }

    #[test]
    fn control_messages_keep_their_shape_and_ignore_unknown_fields() {
        let lease = Control::Lease {
            v: 1,
            relay: token(1),
            agent: token(2),
            streams: vec![token(3)],
            first: Vec::new(),
        };
        let json = String::from_utf8(encode_control(&lease).to_vec()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"type":"lease","v":1,"relay":"{}","agent":"{}","streams":["{}"]}}"#,
                token(1),
                token(2),
                token(3)
            )
        );
        let extra = json.replace(r#""v":1,"#, r#""v":1,"later":{"x":[1]},"#);
        assert_eq!(decode_control(extra.as_bytes(), 1024).unwrap(), lease);
        // A first lease with the backlog its watcher asked for (absent above: a relay that
        // asks none sends what older relays read).
        let first = Control::Lease {
            v: 1,
            relay: token(1),
            agent: token(2),
            streams: vec![token(3)],
            first: vec![FirstLease {
                stream: token(3),
                first: LeaseFirst {
                    backlog: Some(BackfillAsk {
                        tail: Some(500),
                        ..BackfillAsk::default()
                    }),
                    traceparent: Some(
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    ),
                },
            }],
        };
        let first_json = encode_control(&first);
        assert!(
            String::from_utf8_lossy(&first_json).ends_with(&format!(
                r#""first":[{{"stream":"{}","backlog":{{"tail":500}},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}]}}"#,
                token(3)
            )),
            "{}",
            String::from_utf8_lossy(&first_json)
        );
        assert_eq!(decode_control(&first_json, 1024).unwrap(), first);
        let v2 = json.replace(r#""v":1"#, r#""v":2"#);
        assert_eq!(
            decode_control(v2.as_bytes(), 1024),
            Err(CodecError::Version(2))
        );
        assert!(matches!(
            decode_control(json.as_bytes(), 10),
            Err(CodecError::TooLarge { max: 10, .. })
        ));
        assert!(matches!(
            decode_control(b"{\"v\":1,\"type\":\"nope\"}", 1024),
            Err(CodecError::Json(_))
        ));
        let reply = Control::LeaseReply {
            v: 1,
            relay: token(4),
            conn_epoch: 5,
            streams: vec![StreamTop {
                stream: token(3),
                known: true,
                top: Some(SeqPos { epoch: 1, seq: 2 }),
                pub_seq: 7,
                bytes: 700,
                refused: None,
            }],
        };
        assert_eq!(
            decode_control(&encode_control(&reply), 1024).unwrap(),
            reply
        );
    }

    #[test]
    fn a_backfill_request_and_its_reply_travel_unchanged() {
        let ask = Control::Backfill {
            v: 1,
            relay: token(1),
            agent: token(2),
            stream: token(3),
            ask: BackfillAsk {
                tail: Some(500),
                since_seq: Some(SeqPos { epoch: 4, seq: 9 }),
                ..BackfillAsk::default()
            },
            max_bytes: 1 << 20,
        };
        assert_eq!(decode_control(&encode_control(&ask), 1024).unwrap(), ask);
        let reply = BackfillReply {
            relay: token(5),
            conn_epoch: 6,
            known: true,
            more: true,
            next: Some(SeqPos { epoch: 4, seq: 30 }),
            batches: vec![
                Bytes::from_static(b"one"),
                Bytes::new(),
                Bytes::from_static(b"three"),
            ],
        };
        let msg = encode_backfill_reply(&reply);
        assert_eq!(
            msg.len(),
            BACKFILL_HEADER_BYTES + 3 * BACKFILL_FRAME_BYTES + 8
        );
        let back = decode_backfill_reply(&msg, msg.len()).unwrap();
        assert_eq!(back, reply);
        // Slices of the message, not copies.
        assert_eq!(back.batches[2].as_ptr(), msg[msg.len() - 5..].as_ptr());
        let unknown = BackfillReply {
            known: false,
            more: false,
            next: None,
            batches: Vec::new(),
            ..reply.clone()
        };
        assert_eq!(
            decode_backfill_reply(&encode_backfill_reply(&unknown), 1024).unwrap(),
            unknown
        );
        // Refused: too large, cut short, another kind.
        assert!(matches!(
            decode_backfill_reply(&msg, msg.len() - 1),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(
            decode_backfill_reply(&msg.slice(..msg.len() - 1), 1024),
            Err(CodecError::Short(msg.len() - 1))
        );
        assert_eq!(
            decode_backfill_reply(&encode_data(&header(), b"x"), 1024),
            Err(CodecError::Kind(KIND_BATCH))
        );
        assert_eq!(decode_data(&msg), Err(CodecError::Kind(KIND_BACKFILL)));
    }

    fn agent(n: u8, streams: usize, pod_bytes: usize) -> CatalogAgent {
        CatalogAgent {
            agent: token(n),
            org: "acme".into(),
            cluster: "prod".into(),
            node: format!("node-{n}"),
            conn_epoch: 1,
            streams: (0..streams)
                .map(|i| CatalogStream {
                    stream: Token([u8::try_from(i % 256).unwrap(); 16]),
                    labels: Labels {
                        pod: format!("{i}-{}", "p".repeat(pod_bytes)),
                        ..Labels::default()
                    },
                })
                .collect(),
            removed: Vec::new(),
            gone: false,
        }
    }

    proptest! {
        #[test]
        fn catalog_parts_fit_the_limit_and_carry_every_stream(
            sizes in proptest::collection::vec((0usize..40, 0usize..300), 0..6),
            max in 700usize..8000,
        ) {
            let agents: Vec<_> = sizes.iter().enumerate()
                .map(|(i, (n, b))| agent(u8::try_from(i).unwrap(), *n, *b))
                .collect();
            let (msgs, skipped) = catalog_messages(token(9), CatalogOp::Snapshot, 4, agents.clone(), max);
            let mut seen = 0usize;
            let parts = msgs.len();
            for (i, m) in msgs.iter().enumerate() {
                prop_assert!(m.len() <= max, "part of {} bytes > {}", m.len(), max);
                match decode_control(m, max).unwrap() {
                    Control::Catalog { op, generation, part, parts: p, agents: got, .. } => {
                        prop_assert_eq!(op, CatalogOp::Snapshot);
                        prop_assert_eq!(generation, 4);
                        prop_assert_eq!(part as usize, i);
                        prop_assert_eq!(p as usize, parts);
                        seen += got.iter().map(|a| a.streams.len()).sum::<usize>();
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            let total: usize = agents.iter().map(|a| a.streams.len()).sum();
            prop_assert_eq!(seen + skipped, total);
            prop_assert!(!msgs.is_empty());
        }
    }
}
