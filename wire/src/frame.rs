//! Length-prefixed framing used on every QUIC stream.
//!
//! A frame is a little-endian `u32` body length followed by the body. QUIC delivers a stream as
//! arbitrary chunks, so [`FrameDecoder`] accepts bytes in any split and yields whole bodies; a
//! length above the negotiated limit is an error *before* any of the body is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the length prefix.
pub const LEN_BYTES: usize = 4;

/// Default upper bound of one frame body (4 MiB): a batch is flushed at 64 KiB, and a single line
/// is truncated well below this.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;

/// Why a byte sequence is not a valid frame stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the negotiated limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// A data stream did not start with the data preamble.
    #[error("data stream does not start with the logrelay data preamble")]
    BadPreamble,
}

/// Appends one frame (`len` + `body`) to `out`.
pub fn encode(body: &[u8], out: &mut BytesMut) {
    out.reserve(LEN_BYTES + body.len());
    out.put_u32_le(u32::try_from(body.len()).expect("frame bodies are far below 4 GiB"));
    out.put_slice(body);
}

/// The length prefix of a frame whose body is `body_len` bytes, for vectored writes.
pub fn prefix(body_len: usize) -> [u8; LEN_BYTES] {
    u32::try_from(body_len)
        .expect("frame bodies are far below 4 GiB")
        .to_le_bytes()
}

/// Incremental frame decoder: feed it chunks, take whole frame bodies out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames above `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next whole frame body, if one is buffered.
    ///
    /// The body is split off the receive buffer without copying.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..LEN_BYTES].try_into().expect("4 bytes"));
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = LEN_BYTES + len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LEN_BYTES);
        Ok(Some(self.buf.split_to(len as usize).freeze()))
    }

    /// Call at end of stream: errors if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// First bytes of every agent → relay data stream: which `open` request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPreamble {
    /// The `demand` id of the [`crate::control::RelayMsg::Open`] this stream serves.
    pub demand: u64,
}

impl DataPreamble {
    /// Magic bytes opening a data stream.
    pub const MAGIC: [u8; 4] = *b"LRD1";
    /// Encoded size.
    pub const LEN: usize = 12;

    /// Encodes the preamble.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&Self::MAGIC);
        out[4..].copy_from_slice(&self.demand.to_le_bytes());
        out
    }

    /// Decodes the preamble from exactly [`Self::LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() != Self::LEN || bytes[..4] != Self::MAGIC {
            return Err(FrameError::BadPreamble);
        }
        Ok(Self {
            demand: u64::from_le_bytes(bytes[4..].try_into().expect("8 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_frame_is_refused_before_buffering_its_body() {
        let mut d = FrameDecoder::new(16);
        d.extend(&100u32.to_le_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 100, max: 16 })
        );
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = FrameDecoder::new(16);
        d.extend(&8u32.to_le_bytes());
        d.extend(b"abc");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 7 }));
    }

    #[test]
    fn preamble_round_trips_and_rejects_garbage() {
        let p = DataPreamble { demand: 42 };
        assert_eq!(DataPreamble::decode(&p.encode()), Ok(p));
        assert_eq!(
            DataPreamble::decode(b"GET / HTTP/1"),
            Err(FrameError::BadPreamble)
        );
    }

    proptest! {
        /// Frames come out whole and in order however the byte stream is chunked.
        #[test]
        fn any_chunking_yields_the_same_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = BytesMut::new();
            for b in &bodies { encode(b, &mut wire); }
            let mut d = FrameDecoder::new(1024);
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                d.extend(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(f) = d.next_frame().unwrap() { out.push(f.to_vec()); }
            }
            prop_assert!(d.finish().is_ok());
            prop_assert_eq!(out, bodies);
        }
    }
}
