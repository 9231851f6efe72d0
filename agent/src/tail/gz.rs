//! Reading gzip-compressed rotated logs (blocking file I/O, bounded memory).
//!
//! kubelet compresses every rotated log but the newest (`0.log.<stamp>.gz`), Docker's
//! json-file driver does with `compress` (`<id>-json.log.<n>.gz`) and so does `logrotate` with
//! `compress`. A backlog that reaches further back than the plain files has to read them. Their
//! content can only be reached by inflating from the start (RFC 1951 has no random access), so
//! [`GzReader`] inflates forward, through buffers of fixed size: it never holds a file's
//! content, only the decoder's 32 KiB window. Reading at an offset ahead of it skips forward;
//! behind it, it starts over. Sequential reading (a follower, a forward scan) is what it is
//! for; the backward walk of [`super::seek`] scans a compressed file forward instead.
//!
//! A compressed file is checked once, whole ([`GzFile::check`]): every member (RFC 1952: a file
//! may be several, concatenated) inflates and matches the CRC-32 and size of its trailer. A file
//! that does not (truncated, corrupt) is *damaged*: nothing of it is read, so that every reader
//! numbers the lines around it alike, and readers report it in band as a gap.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use flate2::bufread::MultiGzDecoder;

/// Compressed bytes read per `pread`.
const INPUT_CHUNK: usize = 64 * 1024;

/// Why a compressed file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GzError {
    /// The file could not be read.
    #[error("reading: {0}")]
    Io(#[source] std::io::Error),
    /// The file ends before its last member does (cut short, or still being written).
    #[error("truncated: ends inside a gzip member")]
    Truncated,
    /// A header, the compressed data or a trailer (CRC-32, size) is wrong.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

impl GzError {
    fn of(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Self::Truncated,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                Self::Corrupt(e.to_string())
            }
            _ => Self::Io(e),
        }
    }
}

/// What a whole-file check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every member inflated and matched its trailer.
    Sound {
        /// Uncompressed bytes.
        size: u64,
    },
    /// It could not be read to its end: nothing of it is delivered.
    Damaged {
        /// Uncompressed bytes it holds, as far as its last trailer tells when that trailer was
        /// reached (a CRC-32 mismatch); 0 when unknown (truncated, undecodable).
        bytes: u64,
        /// What is wrong, for the log.
        reason: String,
    },
}

/// A compressed file as a follower and the backward walk share it: its check, done once.
#[derive(Debug, Default)]
pub struct GzFile {
    check: OnceLock<Check>,
}

impl GzFile {
    /// The result of checking `file` whole; inflated on the first call only.
    pub fn check(&self, file: &Arc<File>) -> &Check {
        self.check.get_or_init(|| check(file))
    }

    /// Its uncompressed size, 0 when damaged (nothing of it is read).
    pub fn size(&self, file: &Arc<File>) -> u64 {
        match self.check(file) {
            Check::Sound { size } => *size,
            Check::Damaged { .. } => 0,
        }
    }
}

/// Inflates `file` to its end, checking every member's trailer.
fn check(file: &Arc<File>) -> Check {
    let mut reader = GzReader::new(file.clone());
    let mut buf = vec![0u8; INPUT_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Check::Sound { size: reader.pos() },
            Ok(_) => {}
            Err(e) => {
                let bytes = match e {
                    GzError::Corrupt(_) if reader.ended_member() => trailer_size(file),
                    _ => 0,
                };
                return Check::Damaged {
                    bytes,
                    reason: e.to_string(),
                };
            }
        }
    }
}

/// The uncompressed size (`ISIZE`, RFC 1952 §2.3.1) the last eight bytes of `file` record.
fn trailer_size(file: &File) -> u64 {
    let mut trailer = [0u8; 4];
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return 0;
    };
    if len < 18 || file.read_exact_at(&mut trailer, len - 4).is_err() {
        return 0;
    }
    u64::from(u32::from_le_bytes(trailer))
}

/// A file read from `pos` on with `pread` (the file's own offset is shared and left alone).
#[derive(Debug)]
struct At {
    file: Arc<File>,
    pos: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Inflates a gzip file forward; see the module doc.
#[derive(Debug)]
pub struct GzReader {
    file: Arc<File>,
    decoder: MultiGzDecoder<BufReader<At>>,
    /// Uncompressed offset of the next byte.
    pos: u64,
    /// The last error was a trailer that did not match a member inflated to its end (not bad
    /// data, nor a cut).
    ended: bool,
}

impl GzReader {
    /// A reader at the start of `file`.
    pub fn new(file: Arc<File>) -> Self {
        let input = BufReader::with_capacity(
            INPUT_CHUNK,
            At {
                file: file.clone(),
                pos: 0,
            },
        );
        Self {
            file,
            decoder: MultiGzDecoder::new(input),
            pos: 0,
            ended: false,
        }
    }

    /// Uncompressed offset of the next byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// True when the last error came after a member's data was inflated to its end (its
    /// trailer did not match).
    fn ended_member(&self) -> bool {
        self.ended
    }

    /// Reads the next uncompressed bytes into `buf`; 0 at the end of the file.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, GzError> {
        loop {
            match self.decoder.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // flate2 reports a trailer mismatch as "does not have a matching checksum".
                    self.ended = e.to_string().contains("checksum");
                    return Err(GzError::of(e));
                }
            }
        }
    }

    /// Skips forward to `offset`, inflating at most `max` bytes into `scratch`; true once there
    /// (false: call again; the end of the file stops it short and counts as there).
    pub fn skip_to(&mut self, offset: u64, scratch: &mut [u8], max: u64) -> Result<bool, GzError> {
        let mut budget = max;
        while self.pos < offset {
            if budget == 0 {
                return Ok(false);
            }
            let want = (offset - self.pos).min(budget).min(scratch.len() as u64) as usize;
            let n = self.read(&mut scratch[..want])?;
            if n == 0 {
                return Ok(true);
            }
            budget -= n as u64;
        }
        Ok(true)
    }

    /// Reads at `offset`, starting over from the start of the file if it lies behind.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<usize, GzError> {
        if offset < self.pos {
            *self = Self::new(self.file.clone());
        }
        self.skip_to(offset, buf, u64::MAX)?;
        if self.pos < offset {
            return Ok(0);
        }
        self.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn file(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let open = Arc::new(File::open(f.path()).unwrap());
        (f, open)
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("2024-01-01T00:00:00.{i:09}Z stdout F line {i}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn members_are_read_forward_and_at_any_offset() {
        let (a, b) = (text(3000), text(10));
        let mut both = gz(&a);
        both.extend(gz(&b));
        let (_t, f) = file(&both);
        let whole: Vec<u8> = [a.clone(), b.clone()].concat();
        assert_eq!(
            GzFile::default().check(&f),
            &Check::Sound {
                size: whole.len() as u64
            }
        );
        let mut r = GzReader::new(f);
        let mut buf = vec![0u8; 1000];
        for offset in [5000u64, 100, 100_000, whole.len() as u64 - 7] {
            let n = r.read_at(&mut buf, offset).unwrap();
            assert!(n > 0);
            assert_eq!(&buf[..n], &whole[offset as usize..offset as usize + n]);
        }
        assert_eq!(r.read_at(&mut buf, whole.len() as u64).unwrap(), 0);
    }

    #[test]
    fn truncated_and_corrupt_files_are_damaged() {
        let data = text(2000);
        let good = gz(&data);
        let (_t, cut) = file(&good[..good.len() / 2]);
        assert!(matches!(
            GzFile::default().check(&cut),
            Check::Damaged { bytes: 0, .. }
        ));
        // A flipped bit in the trailer's CRC: inflated whole, the size is known.
        let mut bad_crc = good.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        let (_t, f) = file(&bad_crc);
        assert_eq!(
            GzFile::default().check(&f),
            &Check::Damaged {
                bytes: data.len() as u64,
                reason: "corrupt: corrupt gzip stream does not have a matching checksum".into()
            }
        );
        // Not gzip at all.
        let (_t, f) = file(b"plain text, not gzip\n");
        assert!(matches!(
            GzFile::default().check(&f),
            Check::Damaged { bytes: 0, .. }
        ));
    }
}
