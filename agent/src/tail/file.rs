//! A stream's files (blocking file I/O): one open file ([`HeldFile`]), held by a follower and
//! by backward searches alike, and the chain of a stream's files, oldest first
//! ([`chain_files`]): rotated copies in rotation order, plain or gzip-compressed, then the file
//! at the log path.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::fingerprint::{FileId, Fingerprint};
use crate::format::Format;
use crate::rotate::{self, Sibling};

use super::gz::{GzFile, GzReader};
use super::reader::{DETECT_BYTES, detect_prefix};

/// Bytes read per `pread`.
pub const READ_CHUNK: usize = 64 * 1024;

/// An open log file, shareable between a follower and backward searches.
#[derive(Debug, Clone)]
pub struct HeldFile {
    /// Identity when opened.
    pub id: FileId,
    /// Fingerprint of its first bytes (extended as it grows; of the compressed bytes for a
    /// compressed file).
    pub fp: Fingerprint,
    /// The open file.
    pub file: Arc<File>,
    /// Set for a gzip-compressed rotated file: its content is read through a decoder
    /// ([`super::gz`]), and offsets and sizes are of the uncompressed content.
    pub gz: Option<Arc<GzFile>>,
}

impl HeldFile {
    /// Opens `path` and records its identity.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(Self {
            id: FileId::of(&meta),
            fp: Fingerprint::read(&file)?,
            file: Arc::new(file),
            gz: None,
        })
    }

    /// Opens the gzip-compressed rotated file at `path`. Nothing is inflated yet.
    pub fn open_gz(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            gz: Some(Arc::default()),
            ..Self::open(path)?
        })
    }

    /// Its size now; for a compressed file, of its content (inflated whole the first time,
    /// and 0 if it is damaged: nothing of it is read).
    pub fn size(&self) -> std::io::Result<u64> {
        match &self.gz {
            None => Ok(self.file.metadata()?.len()),
            Some(gz) => Ok(gz.size(&self.file)),
        }
    }

    /// Its format, from its first bytes (`None` while empty).
    pub fn format(&self) -> std::io::Result<Option<Format>> {
        let mut buf = [0u8; DETECT_BYTES];
        let n = match &self.gz {
            None => read_full_at(&self.file, &mut buf, 0)?,
            Some(_) => {
                let mut r = GzReader::new(self.file.clone());
                let mut n = 0;
                while n < buf.len() {
                    match r.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                n
            }
        };
        Ok(detect_prefix(&buf[..n]))
    }
}

/// Reads as much of `buf` as the file has at `offset`.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl PartialEq for HeldFile {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.fp == other.fp
    }
}

impl Eq for HeldFile {}

/// A file of a stream, oldest first in a chain.
#[derive(Debug, Clone)]
pub struct ChainFile {
    /// The open file.
    pub held: HeldFile,
    /// Rotated away: nothing more will be written to it.
    pub complete: bool,
}

/// The files of the stream at `path` (resolved through a symlink), oldest first: rotated copies
/// in rotation order, plain or gzip-compressed, then the file at the path.
pub fn chain_files(path: &Path) -> std::io::Result<Vec<ChainFile>> {
    let real = std::fs::canonicalize(path)?;
    let dir = real.parent().unwrap_or(Path::new("."));
    let base = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("log path has no file name"))?;
    let current = HeldFile::open(&real)?;
    let mut rotated = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let held = match rotate::classify(base, &name) {
            Some(Sibling::Rotated(key)) => HeldFile::open(&e.path()).map(|h| (key, false, h)),
            Some(Sibling::Compressed(key)) => HeldFile::open_gz(&e.path()).map(|h| (key, true, h)),
            None => continue,
        };
        if let Ok(held) = held
            && held.2.id != current.id
        {
            rotated.push(held);
        }
    }
    // A file being compressed is there twice for a moment (`<name>`, `<name>.gz`): the plain
    // one, complete, is read.
    rotated.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    rotated.dedup_by(|later, earlier| later.0 == earlier.0);
    let mut files: Vec<ChainFile> = rotated
        .into_iter()
        .map(|(_, _, held)| ChainFile {
            held,
            complete: true,
        })
        .collect();
    files.push(ChainFile {
        held: current,
        complete: false,
    });
    Ok(files)
}
