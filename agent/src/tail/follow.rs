//! Following one container log across rotations (blocking file I/O, no async, no clock).
//!
//! A [`Follower`] holds a *chain* of open files, oldest first: the one being read (the head) and
//! every newer one it has noticed. Holding them open is what makes rotation lossless: a file
//! renamed, compressed or deleted after it was opened is still read to its end. Each
//! [`Follower::poll`]:
//!
//! 1. looks at the log path; when its identity changed (rename rotation) or the head was
//!    truncated in place (`copytruncate`), lists the rotated siblings and applies
//!    [`rotate::reconcile`]: open files never seen, read on in a `copytruncate` copy, count what
//!    was compressed or deleted before it could be read;
//! 2. opens the file now at the path if it is new;
//! 3. reads the head; at its end, if a newer file exists the head is complete (the runtime
//!    writes only to the newest file once it exists): its last record and any line still open
//!    are emitted ([`RecordReader::end_of_file`]) and reading moves to the next file, with
//!    sequence numbers continuing.
//!
//! A file is the same file only if its device, inode and fingerprint agree
//! ([`crate::fingerprint`]).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fingerprint::{FileId, Fingerprint};
use crate::rotate::{self, Action, Listed, ListedKind, RotationKey, Seen, Sibling};

use super::file::{ChainFile, HeldFile, READ_CHUNK, read_full_at};
use super::gz::{Check, GzFile, GzReader};
use super::reader::{RecordReader, TailLine};

/// Finished files a follower keeps open (for backfills reaching back into them).
const KEEP_FINISHED: usize = 4;
/// Listings tried for one that the look at the log path agrees with ([`Follower::snapshot`]).
const SNAPSHOT_TRIES: usize = 8;

/// The head was found truncated in place.
#[derive(Debug, Clone, Copy)]
struct Truncation {
    /// Offset reading had reached.
    at: u64,
    /// Its size at the look before.
    prev_size: u64,
}

#[derive(Debug)]
struct Link {
    held: HeldFile,
    /// Its place in rotation order, once known from its rotated name.
    key: Option<RotationKey>,
    /// Bytes of it read so far.
    offset: u64,
    /// Size at the last look (growth detection while it is the current file).
    last_size: u64,
    /// The decoder of a compressed file, once reading it started.
    inflate: Option<GzReader>,
    /// A compressed file found unreadable was reported: it reads as empty.
    unreadable: bool,
}

impl Link {
    fn new(held: HeldFile, key: Option<RotationKey>, offset: u64, last_size: u64) -> Self {
        Self {
            held,
            key,
            offset,
            last_size,
            inflate: None,
            unreadable: false,
        }
    }

    /// Reads the next bytes of a compressed file into `buf`, after skipping to its offset
    /// (inflating at most `budget` bytes per call while skipping).
    fn read_gz(&mut self, gz: &GzFile, buf: &mut [u8], budget: u64) -> GzStep {
        if self.unreadable {
            return GzStep::Read(0);
        }
        let size = match gz.check(&self.held.file) {
            Check::Sound { size } => *size,
            Check::Damaged { bytes, reason } => {
                self.unreadable = true;
                return GzStep::Unreadable {
                    bytes: *bytes,
                    reason: reason.clone(),
                };
            }
        };
        let file = &self.held.file;
        let inflate = self
            .inflate
            .get_or_insert_with(|| GzReader::new(file.clone()));
        if inflate.pos() > self.offset {
            *inflate = GzReader::new(file.clone());
        }
        let result = if inflate.pos() < self.offset {
            let before = inflate.pos();
            match inflate.skip_to(self.offset, buf, budget) {
                Ok(true) if inflate.pos() < self.offset => Ok(0),
                Ok(true) => inflate.read(buf),
                Ok(false) => return GzStep::Skipped(inflate.pos() - before),
                Err(e) => Err(e),
            }
        } else {
            inflate.read(buf)
        };
        match result {
            Ok(n) => GzStep::Read(n),
            // Checked sound, so changed since: what was not read of it is lost.
            Err(e) => {
                self.unreadable = true;
                self.inflate = None;
                GzStep::Unreadable {
                    bytes: size.saturating_sub(self.offset),
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// One step of reading a compressed file.
enum GzStep {
    /// Read this many bytes (0 at its end).
    Read(usize),
    /// Skipped this many bytes toward the offset to read at; not there yet.
    Skipped(u64),
    /// It cannot be read (any more).
    Unreadable {
        /// Uncompressed bytes not read (0 when unknown).
        bytes: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What one [`Follower::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Read `n` bytes and stopped at the byte budget: poll again right away.
    More(u64),
    /// Read `n` bytes (possibly 0) and reached the end of the newest file.
    Idle(u64),
    /// The file was deleted and read to its end; nothing will follow.
    Drained,
}

/// Something a poll found besides lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file joined the chain (after the files already in it).
    Opened(HeldFile),
    /// Reading moved from the head to the next file of the chain.
    Finished(FileId),
    /// Bytes that disappeared before they were read, just before line `at_seq`.
    Lost {
        /// Sequence number of the next line.
        at_seq: u64,
        /// Bytes lost (0 when unknown).
        bytes: u64,
    },
    /// A compressed file of the chain could not be read (truncated, corrupt): its content
    /// (what was not read of it) is missing just before line `at_seq`.
    Unreadable {
        /// Sequence number of the next line.
        at_seq: u64,
        /// Uncompressed bytes missing (0 when unknown).
        bytes: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Follows one log path; see the module doc.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    base: String,
    chain: VecDeque<Link>,
    seen: Seen,
    reader: RecordReader,
    buf: Vec<u8>,
    events: Vec<Event>,
    /// The last files read to their end, oldest first (kept open for backfills).
    finished: VecDeque<HeldFile>,
    /// A copy of the head seen before the head was found truncated (`copytruncate` copies,
    /// then truncates).
    copy: Option<HeldFile>,
    /// The directory's modification time at the last listing, and when that listing was made.
    dir_stamp: Option<(SystemTime, SystemTime)>,
    /// Bytes lost in total.
    pub lost_bytes: u64,
}

impl Follower {
    /// Follows `path` starting at `offset` of the first file of `chain` (oldest first; the later
    /// ones are read whole), at a clean point whose next line is `seq`.
    pub fn new(
        path: &Path,
        chain: Vec<HeldFile>,
        offset: u64,
        seq: u64,
        max_line_bytes: usize,
    ) -> std::io::Result<Self> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("log path has no file name"))?
            .to_owned();
        let format = match chain.first() {
            Some(h) => h.format()?,
            None => None,
        };
        let mut me = Self {
            dir,
            base,
            chain: VecDeque::new(),
            seen: Seen::default(),
            reader: RecordReader::new(max_line_bytes, format, offset, seq),
            buf: vec![0; READ_CHUNK],
            events: Vec::new(),
            finished: VecDeque::new(),
            copy: None,
            dir_stamp: None,
            lost_bytes: 0,
        };
        for (i, held) in chain.into_iter().enumerate() {
            let size = held.size()?;
            me.seen.ids.insert(held.id);
            let offset = if i == 0 { offset } else { 0 };
            me.chain.push_back(Link::new(held, None, offset, size));
        }
        let (listing, current) = me.snapshot(me.look())?;
        for l in &listing {
            if let ListedKind::Plain { id, .. } = l.kind {
                for link in me.chain.iter_mut().filter(|k| k.held.id == id) {
                    link.key = Some(l.key.clone());
                }
            }
        }
        // What is listed now is history, older than the chain, unless the chain's newest file
        // was rotated away since it was gathered: siblings newer than it appeared after, and
        // are left for the first poll to read (or count lost).
        let newest = me
            .chain
            .back()
            .filter(|l| Some(l.held.id) != current)
            .and_then(|l| l.key.clone());
        for l in listing {
            if newest.as_ref().is_some_and(|k| l.key > *k) {
                me.dir_stamp = None;
                continue;
            }
            me.seen.names.insert(l.name);
            if let ListedKind::Plain { id, .. } = l.kind {
                me.seen.ids.insert(id);
            }
        }
        me.seen.current = current.filter(|c| me.holds(*c));
        Ok(me)
    }

    /// Follows `path` from the start of the file there now.
    pub fn from_start(path: &Path, seq: u64, max_line_bytes: usize) -> std::io::Result<Self> {
        let held = HeldFile::open(path)?;
        Self::new(path, vec![held], 0, seq, max_line_bytes)
    }

    /// The log path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.base)
    }

    /// Sequence number of the next line.
    pub fn next_seq(&self) -> u64 {
        self.reader.next_seq()
    }

    /// The latest clean point: the file, offset and sequence number reading could restart at.
    pub fn clean_point(&self) -> Option<(FileId, u64, u64)> {
        let head = self.chain.front()?;
        let (off, seq) = self.reader.clean_point()?;
        Some((head.held.id, off, seq))
    }

    /// Every file followed, oldest first: the last few finished ones, then the chain.
    pub fn files(&self) -> Vec<ChainFile> {
        let mut out: Vec<ChainFile> = self
            .finished
            .iter()
            .map(|held| ChainFile {
                held: held.clone(),
                complete: true,
            })
            .collect();
        out.extend(self.chain());
        out
    }

    /// The files still to read, oldest first, the head first: all but the newest are complete.
    pub fn chain(&self) -> Vec<ChainFile> {
        let n = self.chain.len();
        self.chain
            .iter()
            .enumerate()
            .map(|(i, l)| ChainFile {
                held: l.held.clone(),
                complete: i + 1 < n,
            })
            .collect()
    }

    /// The file being read and how far.
    pub fn head(&self) -> Option<(FileId, u64)> {
        self.chain.front().map(|l| (l.held.id, l.offset))
    }

    /// The format of the file being read, once known.
    pub fn format(&self) -> Option<crate::format::Format> {
        self.reader.format()
    }

    /// Records that did not parse as their file's format, so far.
    pub fn parse_errors(&self) -> u64 {
        self.reader.parse_errors
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn holds(&self, id: FileId) -> bool {
        self.chain.iter().any(|l| l.held.id == id)
    }

    /// The identity of the file at the log path now.
    fn look(&self) -> Option<FileId> {
        std::fs::metadata(self.path())
            .ok()
            .filter(|m| m.is_file())
            .map(|m| FileId::of(&m))
    }

    /// Looks for rotations, then reads up to about `max_bytes`, appending lines to `out`.
    pub fn poll(&mut self, out: &mut Vec<TailLine>, max_bytes: u64) -> std::io::Result<Progress> {
        let current = self.look();
        self.poll_from(current, out, max_bytes)
    }

    /// [`Self::poll`], the log path having been looked at (`current`) just before.
    fn poll_from(
        &mut self,
        mut current: Option<FileId>,
        out: &mut Vec<TailLine>,
        max_bytes: u64,
    ) -> std::io::Result<Progress> {
        let shrunk = self.check_truncation(current)?;
        if current != self.seen.current || shrunk.is_some() || self.dir_changed() {
            current = self.rotated(out, current, shrunk.flatten())?;
        }
        for link in self
            .chain
            .iter_mut()
            .filter(|l| !l.held.fp.is_complete() && l.held.gz.is_none())
        {
            link.held.fp = Fingerprint::read(&link.held.file)?;
        }
        if let Some(id) = current
            && !self.holds(id)
            && let Ok(held) = HeldFile::open(&self.path())
            && held.id == id
        {
            let size = held.size()?;
            self.seen.ids.insert(id);
            self.seen.current = Some(id);
            self.events.push(Event::Opened(held.clone()));
            self.chain.push_back(Link::new(held, None, 0, size));
        }
        self.read(out, max_bytes, current)
    }

    fn read(
        &mut self,
        out: &mut Vec<TailLine>,
        max_bytes: u64,
        current: Option<FileId>,
    ) -> std::io::Result<Progress> {
        let mut total = 0u64;
        loop {
            let Some(head) = self.chain.front_mut() else {
                return Ok(Progress::Idle(total));
            };
            let n = match head.held.gz.clone() {
                None => head.held.file.read_at(&mut self.buf, head.offset)?,
                Some(gz) => match head.read_gz(&gz, &mut self.buf, max_bytes - total) {
                    GzStep::Read(n) => n,
                    GzStep::Skipped(n) => {
                        total += n;
                        if total >= max_bytes {
                            return Ok(Progress::More(total));
                        }
                        continue;
                    }
                    GzStep::Unreadable { bytes, reason } => {
                        self.events.push(Event::Unreadable {
                            at_seq: self.reader.next_seq(),
                            bytes,
                            reason,
                        });
                        0
                    }
                },
            };
            if n > 0 {
                head.offset += n as u64;
                self.reader.feed(&self.buf[..n], out);
                total += n as u64;
                if total >= max_bytes {
                    return Ok(Progress::More(total));
                }
                continue;
            }
            let head_file = head.held.file.clone();
            let head_id = head.held.id;
            if self.chain.len() > 1 && current == Some(head_id) {
                // The file at the path is never complete. Files queued behind it (older content
                // found late) are read once the reader stands at a clean point; reading comes
                // back to it where it stopped.
                if !self.reader.is_clean() {
                    return Ok(Progress::Idle(total));
                }
                let head = self.chain.pop_front().expect("non-empty");
                self.chain.push_back(head);
                let next = self.chain.front().expect("len > 1");
                let (format, offset) = (next.held.format()?, next.offset);
                self.reader.end_of_file(out, format);
                self.reader.set_position(offset);
                continue;
            }
            if self.chain.len() > 1 {
                // A newer file exists, so this one is complete.
                let done = self.chain.pop_front().expect("non-empty");
                if self.finished.len() == KEEP_FINISHED {
                    self.finished.pop_front();
                }
                self.finished.push_back(done.held.clone());
                let next = self.chain.front().expect("len > 1");
                let (format, offset) = (next.held.format()?, next.offset);
                self.reader.end_of_file(out, format);
                self.reader.set_position(offset);
                self.events.push(Event::Finished(done.held.id));
                continue;
            }
            let meta = head_file.metadata()?;
            if meta.nlink() == 0 && current != Some(head_id) {
                self.reader.end_of_file(out, None);
                return Ok(Progress::Drained);
            }
            return Ok(Progress::Idle(total));
        }
    }

    /// Checks whether the head, or the file at the path, was truncated in place (it is shorter
    /// than before or than what was read of it, or its first bytes changed). `Some(Some(t))`
    /// when the head was, `Some(None)` when the file at the path, not read yet, was.
    fn check_truncation(
        &mut self,
        current: Option<FileId>,
    ) -> std::io::Result<Option<Option<Truncation>>> {
        let mut found = None;
        let at_path = self
            .chain
            .iter()
            .position(|l| Some(l.held.id) == current)
            .filter(|i| *i > 0);
        for index in [Some(0), at_path].into_iter().flatten() {
            let Some(link) = self.chain.get_mut(index).filter(|l| l.held.gz.is_none()) else {
                continue;
            };
            if index > 0 && found.is_some() {
                break;
            }
            let size = link.held.size()?;
            let prev_size = link.last_size;
            link.last_size = size;
            // The first bytes are checked even when the size did not change: a file truncated
            // and written again may be back at the same size.
            let shrunk =
                size < link.offset || size < prev_size || !link.held.fp.matches(&link.held.file)?;
            if !shrunk {
                // Extended after the siblings are looked at, so that a copy is compared with
                // what was known before (see `poll`).
                continue;
            }
            if index == 0 {
                found = Some(Some(Truncation {
                    at: link.offset,
                    prev_size,
                }));
            } else {
                // Not read yet: its new content is read from the start; the old one went to a
                // copy.
                link.held.fp = Fingerprint::read(&link.held.file)?;
                link.offset = 0;
                found = Some(None);
            }
        }
        Ok(found)
    }

    /// True when the directory changed since the last listing (or may have: file times come
    /// from a coarse clock, so a listing made within a second of the last change is not trusted).
    fn dir_changed(&self) -> bool {
        let Ok(mtime) = std::fs::metadata(&self.dir).and_then(|m| m.modified()) else {
            return false;
        };
        match self.dir_stamp {
            Some((seen, listed_at)) => {
                seen != mtime
                    || listed_at
                        .duration_since(seen)
                        .map_or(true, |d| d < Duration::from_secs(1))
            }
            None => true,
        }
    }

    fn list(&mut self) -> std::io::Result<Vec<Listed>> {
        let listed_at = SystemTime::now();
        if let Ok(mtime) = std::fs::metadata(&self.dir).and_then(|m| m.modified()) {
            self.dir_stamp = Some((mtime, listed_at));
        }
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some(sibling) = rotate::classify(&self.base, &name) else {
                continue;
            };
            let path = e.path();
            let (key, kind) = match sibling {
                Sibling::Rotated(key) => {
                    let Ok(meta) = std::fs::metadata(&path) else {
                        continue;
                    };
                    (
                        key,
                        ListedKind::Plain {
                            id: FileId::of(&meta),
                            size: meta.len(),
                        },
                    )
                }
                Sibling::Compressed(key) => {
                    let trailer = gz_trailer(&path);
                    (
                        key,
                        ListedKind::Gz {
                            isize: trailer.map(|t| t.1),
                            crc: trailer.map(|t| t.0),
                        },
                    )
                }
            };
            out.push(Listed { name, key, kind });
        }
        Ok(out)
    }

    /// Lists the siblings, and returns the listing with the identity of the file at the path,
    /// taken so that they agree: the path was the same file before and after the listing.
    ///
    /// A rotation between a look at the path and the listing shows the file renamed in the
    /// listing while the older look calls it the file at the path (it would then be read, as
    /// the current file, after the files rotated after it); one between the listing and a later
    /// look hides the renamed file from the listing while the path already holds a newer one
    /// (which would be read before it). Rotations come seconds apart, so a few tries settle it;
    /// if they do not, the last look is taken.
    fn snapshot(
        &mut self,
        mut current: Option<FileId>,
    ) -> std::io::Result<(Vec<Listed>, Option<FileId>)> {
        for _ in 0..SNAPSHOT_TRIES {
            let listing = self.list()?;
            let after = self.look();
            if after == current {
                return Ok((listing, current));
            }
            current = after;
        }
        Ok((self.list()?, current))
    }

    /// Applies what the listing shows; returns the identity of the file at the path, as of the
    /// listing ([`Self::snapshot`]).
    fn rotated(
        &mut self,
        out: &mut Vec<TailLine>,
        current: Option<FileId>,
        truncation: Option<Truncation>,
    ) -> std::io::Result<Option<FileId>> {
        let truncated_at = truncation.map(|t| t.at);
        let (listing, current) = self.snapshot(current)?;
        let previous = self.seen.current;
        for l in &listing {
            if let ListedKind::Plain { id, .. } = l.kind {
                for link in self.chain.iter_mut().filter(|k| k.held.id == id) {
                    link.key = Some(l.key.clone());
                }
            }
        }
        let key_of = |name: &str| {
            listing
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.key.clone())
        };
        let held: Vec<FileId> = self.chain.iter().map(|l| l.held.id).collect();
        let previous_file = self
            .chain
            .iter()
            .find(|l| Some(l.held.id) == previous)
            .map(|l| l.held.file.clone());
        let summary = std::cell::OnceCell::new();
        let is_previous = |isize: u64, crc: u32| {
            let Some(file) = &previous_file else {
                return false;
            };
            // Only read it whole when the size agrees.
            if file.metadata().map(|m| m.len() % (1 << 32)).ok() != Some(isize) {
                return false;
            }
            summary
                .get_or_init(|| size_and_crc(file).ok())
                .is_some_and(|(n, c)| n % (1 << 32) == isize && c == crc)
        };
        let actions = rotate::reconcile(
            &mut self.seen,
            &listing,
            current,
            truncated_at,
            |id| held.contains(&id),
            is_previous,
        );
        let mut copy_lost = None;
        let mut strangers = Vec::new();
        for action in actions {
            match action {
                Action::RenamedAway { name } => {
                    let key = key_of(&name);
                    for link in self
                        .chain
                        .iter_mut()
                        .filter(|k| Some(k.held.id) == previous)
                    {
                        link.key.clone_from(&key);
                    }
                }
                Action::Open { name } | Action::ReadCopy { name, .. } => {
                    let Ok(file) = HeldFile::open(&self.dir.join(&name)) else {
                        continue;
                    };
                    if self.copy.is_none()
                        && self.is_copy_of_head(&file, key_of(&name).as_ref(), current)?
                    {
                        // What is being read, copied (`copytruncate`): read on in it once the
                        // original is found truncated, else it is a duplicate.
                        self.copy = Some(file);
                    } else {
                        strangers.push((file, key_of(&name)));
                    }
                }
                Action::LostCopy { bytes, .. } => copy_lost = Some(bytes),
                Action::Lost { bytes, .. } => self.lost(bytes),
            }
        }
        // A copy of the head whose content the head no longer has: the head was truncated and
        // written again, even if its first bytes and size did not tell.
        let truncation = match (truncation, &self.copy) {
            (None, Some(copy)) if self.head_differs_from(copy)? => {
                let head = self.chain.front().expect("a copy implies a head");
                Some(Truncation {
                    at: head.offset,
                    prev_size: head.last_size,
                })
            }
            (t, _) => t,
        };
        if let Some(t) = truncation {
            let copy = self.copy.take();
            match copy {
                Some(copy) if copy_lost.is_none() && copy.size()? >= t.at => {
                    self.read_copy(copy, t.at)?;
                }
                other => {
                    // Truncated in place and the rest of what was being read is not to be
                    // found (or was compressed away): it is lost.
                    let lost = copy_lost.unwrap_or(t.prev_size.saturating_sub(t.at));
                    self.truncated_in_place(out, lost);
                    // A file that only looked like a copy is one more file to read.
                    if let Some(file) = other {
                        let key = listing
                            .iter()
                            .find(
                                |l| matches!(l.kind, ListedKind::Plain { id, .. } if id == file.id),
                            )
                            .map(|l| l.key.clone());
                        strangers.push((file, key));
                    }
                }
            }
        }
        // Files never seen join the chain in rotation order (the file at the path last).
        for (held, key) in strangers {
            let size = held.size()?;
            self.events.push(Event::Opened(held.clone()));
            self.chain.push_back(Link::new(held, key, 0, size));
        }
        self.reorder(out, current)?;
        Ok(current)
    }

    /// Sorts the chain in rotation order: rotated files by their names' order, the file at the
    /// path last. A head already partly read stays first.
    fn reorder(&mut self, out: &mut Vec<TailLine>, current: Option<FileId>) -> std::io::Result<()> {
        let Some(front) = self.chain.front() else {
            return Ok(());
        };
        let front_id = front.held.id;
        let pinned = usize::from(front.offset > 0);
        let rank = |l: &Link| {
            let class = if Some(l.held.id) == current {
                2u8
            } else {
                u8::from(l.key.is_some())
            };
            (class, l.key.clone())
        };
        self.chain.make_contiguous()[pinned..].sort_by_key(rank);
        let head = self.chain.front().expect("non-empty");
        if head.held.id != front_id {
            // Nothing of the old head was read: start with the new one, in its format.
            let format = head.held.format()?;
            self.reader.end_of_file(out, format);
        }
        Ok(())
    }

    /// True when the head does not hold the bytes of `copy` (a copy of it): it was truncated.
    fn head_differs_from(&self, copy: &HeldFile) -> std::io::Result<bool> {
        let Some(head) = self.chain.front().filter(|h| h.held.gz.is_none()) else {
            return Ok(false);
        };
        let copy_size = copy.size()?;
        if head.held.size()? < copy_size {
            return Ok(true);
        }
        let (mut a, mut b) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let mut pos = 0;
        while pos < copy_size {
            let n = read_full_at(&copy.file, &mut a, pos)?;
            let m = read_full_at(&head.held.file, &mut b[..n], pos)?;
            if n == 0 || m != n || a[..n] != b[..n] {
                return Ok(n != 0);
            }
            pos += n as u64;
        }
        Ok(false)
    }

    /// True when `file`, a file never seen, is a copy of the head: it starts like it, and was
    /// made while the head was the file at the path (before the head was renamed, if it was).
    fn is_copy_of_head(
        &self,
        file: &HeldFile,
        key: Option<&RotationKey>,
        current: Option<FileId>,
    ) -> std::io::Result<bool> {
        let Some(head) = self.chain.front() else {
            return Ok(false);
        };
        if head.held.fp.len == 0 || head.held.gz.is_some() {
            return Ok(false);
        }
        let renamed_before = match (&head.key, key) {
            (Some(head_key), Some(key)) => key > head_key,
            _ => false,
        };
        if Some(head.held.id) != current && renamed_before {
            return Ok(false);
        }
        Ok(Fingerprint::read_len(&file.file, usize::from(head.held.fp.len))? == head.held.fp)
    }

    /// Continues reading the truncated head in its `copytruncate` copy, from `from`; the
    /// original goes on from offset 0 with new content.
    fn read_copy(&mut self, copy: HeldFile, from: u64) -> std::io::Result<()> {
        let size = copy.size()?;
        let head = self.chain.front_mut().expect("a truncated head exists");
        head.offset = 0;
        head.held.fp = Fingerprint::read(&head.held.file)?;
        head.last_size = head.held.size()?;
        self.events.push(Event::Opened(copy.clone()));
        self.chain.push_front(Link::new(copy, None, from, size));
        Ok(())
    }

    /// The head goes on from offset 0 with new content. The record being read lost its end:
    /// its bytes count as lost with `lost`; lines whose earlier records were read are emitted,
    /// flagged partial.
    fn truncated_in_place(&mut self, out: &mut Vec<TailLine>, lost: u64) {
        let head = self.chain.front_mut().expect("a truncated head exists");
        head.offset = 0;
        head.held.fp = Fingerprint::read(&head.held.file).unwrap_or_default();
        head.last_size = head.held.size().unwrap_or(0);
        let format = head.held.format().ok().flatten();
        let dropped = self.reader.discard_pending();
        self.reader.end_of_file(out, format);
        self.lost(lost + dropped);
    }

    fn lost(&mut self, bytes: u64) {
        self.lost_bytes += bytes;
        self.events.push(Event::Lost {
            at_seq: self.reader.next_seq(),
            bytes,
        });
    }
}

/// The CRC-32 and uncompressed size in a gzip file's trailer.
fn gz_trailer(path: &Path) -> Option<(u32, u64)> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < 18 {
        return None;
    }
    let mut magic = [0u8; 2];
    let mut trailer = [0u8; 8];
    read_full_at(&f, &mut magic, 0).ok()?;
    read_full_at(&f, &mut trailer, len - 8).ok()?;
    rotate::gzip_trailer(magic, trailer)
}

/// Size and CRC-32 (gzip's) of a whole file.
fn size_and_crc(file: &File) -> std::io::Result<(u64, u32)> {
    const GZIP_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut digest = GZIP_CRC.digest();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pos = 0u64;
    loop {
        let n = read_full_at(file, &mut buf, pos)?;
        if n == 0 {
            return Ok((pos, digest.finalize()));
        }
        digest.update(&buf[..n]);
        pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn cri(n: usize) -> String {
        format!("2024-01-01T00:00:00.{n:09}Z stdout F line {n}\n")
    }

    /// Polls until idle; returns the messages read.
    fn drain(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        let mut got = Vec::new();
        loop {
            let p = f.poll(&mut out, 1 << 20).unwrap();
            got.extend(
                out.drain(..)
                    .map(|l| String::from_utf8_lossy(&l.message).trim_end().to_owned()),
            );
            if !matches!(p, Progress::More(_)) {
                return got;
            }
        }
    }

    #[test]
    fn a_poll_between_the_rename_and_the_new_file_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut file = std::fs::File::create(&path).unwrap();
        for n in 0..5 {
            file.write_all(cri(n).as_bytes()).unwrap();
        }
        let held = HeldFile::open(&path).unwrap();
        let mut f = Follower::new(&path, vec![held], 0, 0, 1 << 20).unwrap();
        assert_eq!(drain(&mut f).len(), 5);
        for n in 5..105 {
            file.write_all(cri(n).as_bytes()).unwrap();
        }
        std::fs::rename(&path, dir.path().join("0.log.20240101-000001")).unwrap();
        // Woken by the rename: the path is missing for a moment.
        let mut got = drain(&mut f);
        let mut file = std::fs::File::create(&path).unwrap();
        got.extend(drain(&mut f));
        for n in 105..205 {
            file.write_all(cri(n).as_bytes()).unwrap();
        }
        got.extend(drain(&mut f));
        got.extend(drain(&mut f));
        assert_eq!(got.len(), 200, "{:?}", got.last());
    }

    /// A kubelet-style log: `0.log` written by a CRI writer, renamed away at each rotation.
    struct Kubelet {
        dir: tempfile::TempDir,
        file: File,
        n: usize,
        rotations: usize,
    }

    impl Kubelet {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let file = File::create(dir.path().join("0.log")).unwrap();
            Self {
                dir,
                file,
                n: 0,
                rotations: 0,
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("0.log")
        }

        fn write(&mut self, lines: usize) {
            for _ in 0..lines {
                self.file.write_all(cri(self.n).as_bytes()).unwrap();
                self.n += 1;
            }
        }

        fn rotate(&mut self) {
            self.rotations += 1;
            let name = format!("0.log.20240101-0000{:02}", self.rotations);
            std::fs::rename(self.path(), self.dir.path().join(name)).unwrap();
            self.file = File::create(self.path()).unwrap();
        }

        fn id(&self) -> FileId {
            FileId::of(&std::fs::metadata(self.path()).unwrap())
        }
    }

    fn ino(files: &[super::ChainFile]) -> Vec<u64> {
        files.iter().map(|f| f.held.id.ino).collect()
    }

    /// A poll looks at the path, then lists the directory. Rotations between the two looks
    /// (here: three, forced by handing the poll its first look) must not put the renamed file
    /// after the ones rotated after it: the follower's files are the order backfills walk back
    /// in, so they must be the order lines were numbered in.
    #[test]
    fn rotations_between_the_look_at_the_path_and_the_listing_keep_the_rotation_order() {
        let mut log = Kubelet::new();
        log.write(50);
        let mut f = Follower::from_start(&log.path(), 0, 1 << 20).unwrap();
        assert_eq!(drain(&mut f).len(), 50);
        log.write(20);
        let first = log.id();
        let mut ids = vec![first.ino];
        for _ in 0..3 {
            log.rotate();
            ids.push(log.id().ino);
            log.write(20);
        }
        // The poll's look at the path came before the rotations.
        let mut out = Vec::new();
        f.poll_from(Some(first), &mut out, 1 << 20).unwrap();
        let mut got: Vec<String> = out
            .drain(..)
            .map(|l| String::from_utf8_lossy(&l.message).trim_end().to_owned())
            .collect();
        got.extend(drain(&mut f));
        let want: Vec<String> = (50..130).map(|n| format!("line {n}")).collect();
        assert_eq!(got, want);
        assert_eq!(ino(&f.files()), ids, "files in rotation order");
    }

    /// A follower is built from files gathered a moment before (a plan, a checkpoint): files
    /// rotated in between, newer than the newest of them, are read, not taken for history.
    #[test]
    fn files_rotated_between_gathering_the_chain_and_following_are_read() {
        let mut log = Kubelet::new();
        log.write(10);
        let held = HeldFile::open(&log.path()).unwrap();
        let mut ids = vec![held.id.ino];
        for _ in 0..2 {
            log.rotate();
            ids.push(log.id().ino);
            log.write(10);
        }
        let mut f = Follower::new(&log.path(), vec![held], 0, 0, 1 << 20).unwrap();
        let got = drain(&mut f);
        let want: Vec<String> = (0..30).map(|n| format!("line {n}")).collect();
        assert_eq!(got, want);
        assert_eq!(ino(&f.files()), ids);
    }
}
