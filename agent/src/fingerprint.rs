//! File identity: device and inode, plus a fingerprint of the file's first bytes.
//!
//! Device and inode alone are not enough: a deleted file's inode is reused by the next file
//! created, and `copytruncate` empties a file in place. A checksum of the first bytes alone is
//! not enough either: a copy made by `copytruncate` starts with exactly the same bytes. So a file
//! is the same file only if both agree ([`FileId`] and [`Fingerprint`]).
//!
//! The fingerprint covers the first [`FINGERPRINT_BYTES`] bytes, or fewer while the file is
//! shorter; it is extended as the file grows, and two fingerprints are compared over the shorter
//! of their two lengths ([`Fingerprint::matches`]).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Bytes at the start of a file covered by its fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Where a file lives: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The identity in `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A checksum of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    /// Bytes covered (at most [`FINGERPRINT_BYTES`]).
    pub len: u16,
    /// CRC-32C of those bytes.
    pub crc: u32,
}

impl Fingerprint {
    /// The fingerprint of `prefix` (at most [`FINGERPRINT_BYTES`] of it).
    pub fn of(prefix: &[u8]) -> Self {
        let prefix = &prefix[..prefix.len().min(FINGERPRINT_BYTES)];
        Self {
            len: prefix.len() as u16,
            crc: CRC32.checksum(prefix),
        }
    }

    /// Reads and fingerprints the first bytes of `file`.
    pub fn read(file: &File) -> std::io::Result<Self> {
        Self::read_len(file, FINGERPRINT_BYTES)
    }

    /// Fingerprints the first `len` bytes of `file` (fewer if it is shorter).
    pub fn read_len(file: &File, len: usize) -> std::io::Result<Self> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let want = len.min(FINGERPRINT_BYTES);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..want], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self::of(&buf[..got]))
    }

    /// True when this fingerprint covers all the bytes a fingerprint can.
    pub fn is_complete(&self) -> bool {
        usize::from(self.len) == FINGERPRINT_BYTES
    }

    /// True when `file` still starts with the bytes this fingerprint was taken of. A file now
    /// shorter than the fingerprint does not match.
    pub fn matches(&self, file: &File) -> std::io::Result<bool> {
        let now = Self::read_len(file, usize::from(self.len))?;
        Ok(now == *self)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn copies_share_a_fingerprint_but_not_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"same start, then more").unwrap();
        std::fs::copy(&a, &b).unwrap();
        let (fa, fb) = (File::open(&a).unwrap(), File::open(&b).unwrap());
        let (pa, pb) = (
            Fingerprint::read(&fa).unwrap(),
            Fingerprint::read(&fb).unwrap(),
        );
        assert_eq!(pa, pb);
        assert_ne!(
            FileId::of(&fa.metadata().unwrap()),
            FileId::of(&fb.metadata().unwrap())
        );
    }

    #[test]
    fn a_growing_file_keeps_matching_and_a_rewritten_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut w = File::create(&p).unwrap();
        w.write_all(b"hello").unwrap();
        let r = File::open(&p).unwrap();
        let fp = Fingerprint::read(&r).unwrap();
        assert_eq!(fp.len, 5);
        w.write_all(&[b'x'; 1000]).unwrap();
        assert!(fp.matches(&r).unwrap());
        let longer = Fingerprint::read(&r).unwrap();
        assert!(longer.is_complete());
        // Truncated and rewritten in place (copytruncate): same inode, new content.
        w.set_len(0).unwrap();
        assert!(!fp.matches(&r).unwrap(), "shorter than the fingerprint");
        std::fs::write(&p, b"jello and more").unwrap();
        assert!(!fp.matches(&r).unwrap());
    }
}
