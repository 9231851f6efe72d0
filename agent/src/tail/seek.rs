//! Finding where to start reading, backwards from a known point (blocking file I/O).
//!
//! `tail: N` and `since` are served by walking back from the end (or from a known clean point)
//! over record boundaries, never reading a whole file forward: only the last lines asked for,
//! and, when the newest file holds fewer, the end of the file before it.
//!
//! Sequence numbers are fixed by the forward reader ([`RecordReader`]); this module only finds a
//! *clean point* early enough and counts, with that same reader, how many lines lie between it and
//! where it started. A clean point is a record boundary where, for stdout and stderr alike, the
//! previous record of that stream is not a partial one (so no line is open across it). Walking
//! back, each record is read once and classified by the file's own parser, and the decisions —
//! how far back, which boundary is clean — are the pure [`super::walk`]'s, linear in the
//! records read; the start of a file is clean, and so is the end of a complete (rotated) file,
//! where open lines are emitted flagged partial.
//!
//! A compressed rotated file cannot be read backwards: it is scanned forward instead
//! (`back_in_gz`), with the forward reader itself, whose clean points are then exact, keeping
//! nothing but counters (two passes for `tail: N`: count the lines, then find the point `N`
//! before the end). A damaged one holds no lines: the walk goes on past it, and the forward
//! read reports it as a gap.

use std::os::unix::fs::FileExt;

use crate::format::Parser;

use super::file::{ChainFile, HeldFile, READ_CHUNK, read_full_at};
use super::gz::GzReader;
pub use super::plan::Position;
use super::reader::{RECORD_SLACK, RecordReader, TailLine};
pub use super::walk::Want;
use super::walk::{Rec, Step, Walk};

/// Reads a file's records backwards, one at a time, for a [`Walk`].
struct Records<'a> {
    held: &'a HeldFile,
    parser: Parser,
    max_record: usize,
    /// Cached chunk `[chunk_start, chunk_start + chunk.len())`.
    chunk: Vec<u8>,
    chunk_start: u64,
    scratch: Vec<u8>,
}

impl<'a> Records<'a> {
    fn new(held: &'a HeldFile, end: u64, max_line_bytes: usize) -> std::io::Result<Self> {
        let format = held.format()?;
        Ok(Self {
            held,
            parser: match format {
                Some(f) => Parser::with_format(f, max_line_bytes),
                None => Parser::new(max_line_bytes),
            },
            max_record: max_line_bytes.saturating_add(RECORD_SLACK),
            chunk: Vec::new(),
            chunk_start: end,
            scratch: Vec::new(),
        })
    }

    /// The largest `p < before` holding `\n`.
    fn prev_newline(&mut self, before: u64) -> std::io::Result<Option<u64>> {
        let mut hi = before;
        loop {
            if hi > self.chunk_start && hi <= self.chunk_start + self.chunk.len() as u64 {
                let upto = (hi - self.chunk_start) as usize;
                if let Some(i) = memchr::memrchr(b'\n', &self.chunk[..upto]) {
                    return Ok(Some(self.chunk_start + i as u64));
                }
                hi = self.chunk_start;
            }
            if hi == 0 {
                return Ok(None);
            }
            let start = hi.saturating_sub(READ_CHUNK as u64);
            self.chunk.resize((hi - start) as usize, 0);
            let n = read_full_at(&self.held.file, &mut self.chunk, start)?;
            self.chunk.truncate(n);
            self.chunk_start = start;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// The record that ends at `end` (> 0), classified by the file's parser.
    fn before(&mut self, end: u64) -> std::io::Result<Rec> {
        let start = match self.prev_newline(end - 1)? {
            Some(p) => p + 1,
            None => 0,
        };
        let len = ((end - start) as usize).min(self.max_record);
        let cached = start >= self.chunk_start
            && start + len as u64 <= self.chunk_start + self.chunk.len() as u64;
        let raw = if cached {
            let at = (start - self.chunk_start) as usize;
            &self.chunk[at..at + len]
        } else {
            self.scratch.resize(len, 0);
            let n = self.held.file.read_at(&mut self.scratch, start)?;
            self.scratch.truncate(n);
            &self.scratch[..]
        };
        Ok(match self.parser.classify(raw) {
            Ok((ts, stderr, partial)) => Rec {
                start,
                stream: Some(usize::from(stderr)),
                partial,
                ts,
            },
            Err(_) => Rec {
                start,
                stream: None,
                partial: false,
                ts: i64::MIN,
            },
        })
    }
}

/// Lines the reader emits between two points of one file (`flush`: `end` is the end of a
/// complete file).
fn count_lines(
    held: &HeldFile,
    start: u64,
    end: u64,
    flush: bool,
    max_line_bytes: usize,
) -> std::io::Result<u64> {
    let mut reader = RecordReader::new(max_line_bytes, held.format()?, start, 0);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut pos = start;
    let mut n = 0;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let got = read_full_at(&held.file, &mut buf[..want], pos)?;
        if got == 0 {
            break;
        }
        reader.feed(&buf[..got], &mut out);
        n += out.len() as u64;
        out.clear();
        pos += got as u64;
    }
    if flush {
        reader.end_of_file(&mut out, None);
        n += out.len() as u64;
    }
    Ok(n)
}

/// Walks back in one file from `end` (a clean point, or the end of a complete file when
/// `flush`). Returns the clean point found, the lines between it and `end`, and whether the
/// want was met (else the start of the file was reached first). Reads each record once, and
/// counts the lines of each byte once ([`Walk`]).
fn back_in_file(
    held: &HeldFile,
    end: u64,
    flush: bool,
    want: Want,
    max_line_bytes: usize,
) -> std::io::Result<(u64, u64, bool)> {
    if held.gz.is_some() {
        return back_in_gz(held, end, flush, want, max_line_bytes);
    }
    let mut records = Records::new(held, end, max_line_bytes)?;
    let mut walk = Walk::new(end, want);
    loop {
        match walk.step() {
            Step::Record => {
                let rec = records.before(walk.low())?;
                walk.push(rec);
            }
            Step::Count { from, to } => {
                let lines = count_lines(held, from, to, flush && to == end, max_line_bytes)?;
                walk.counted(lines);
            }
            Step::Done { start, lines, met } => return Ok((start, lines, met)),
        }
    }
}

/// [`back_in_file`] for a compressed file: scans `[0, end)` forward with the forward reader.
///
/// `Since(t)`: the start is the clean point just before the last line stamped before `t`
/// (every line after it is included). `Lines(n)`: a first pass counts the lines, a second
/// finds the last clean point with at least `n` lines after it. A damaged file holds no lines.
fn back_in_gz(
    held: &HeldFile,
    end: u64,
    flush: bool,
    want: Want,
    max_line_bytes: usize,
) -> std::io::Result<(u64, u64, bool)> {
    let end = end.min(held.size()?);
    if end == 0 {
        return Ok((0, 0, false));
    }
    let format = held.format()?;
    match want {
        Want::Since(t) => {
            let mut start = None;
            let total = scan_gz(held, end, flush, format, max_line_bytes, |before, line| {
                if line.timestamp_ns < t {
                    start = Some(before);
                }
                true
            })?;
            let (offset, seq) = start.unwrap_or((0, 0));
            Ok((offset, total - seq, start.is_some()))
        }
        Want::Lines(n) => {
            let total = scan_gz(held, end, flush, format, max_line_bytes, |_, _| true)?;
            if total < n {
                return Ok((0, total, false));
            }
            if n == 0 {
                return Ok((end, 0, true));
            }
            // The last clean point with `total - n` lines or fewer before it.
            let target = total - n;
            let mut start = (0, 0);
            scan_gz(held, end, flush, format, max_line_bytes, |before, _| {
                if before.1 <= target {
                    start = before;
                }
                before.1 <= target
            })?;
            Ok((start.0, total - start.1, true))
        }
    }
}

/// Reads a compressed file from its start to `end` with a [`RecordReader`] fed record by
/// record, and calls `each(clean, line)` for every line it emits, `clean` being the reader's
/// latest clean point `(offset, lines before it)` before the record that completed the line,
/// until `each` returns false. Returns the lines in `[0, end)` (flushed at `end` if `flush`),
/// or as far as it went. Plain-text lines (and unparsed records) count as stamped before any
/// time, as the backward walk takes them.
fn scan_gz(
    held: &HeldFile,
    end: u64,
    flush: bool,
    format: Option<crate::format::Format>,
    max_line_bytes: usize,
    mut each: impl FnMut((u64, u64), &TailLine) -> bool,
) -> std::io::Result<u64> {
    let mut reader = RecordReader::new(max_line_bytes, format, 0, 0).with_clock(|| i64::MIN);
    let mut inflate = GzReader::new(held.file.clone());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = inflate
            .read(&mut buf[..want])
            .map_err(std::io::Error::other)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let before = reader.clean_point().unwrap_or((0, 0));
            reader.feed(&rest[..cut], &mut out);
            rest = &rest[cut..];
            for line in out.drain(..) {
                if !each(before, &line) {
                    return Ok(reader.next_seq());
                }
            }
        }
    }
    if flush {
        let before = reader.clean_point().unwrap_or((0, 0));
        reader.end_of_file(&mut out, None);
        for line in out.drain(..) {
            if !each(before, &line) {
                break;
            }
        }
    }
    Ok(reader.next_seq())
}

/// The newest clean point of the newest file of `files` (the chain's current end).
pub fn end_point(files: &[ChainFile], max_line_bytes: usize) -> std::io::Result<(usize, u64)> {
    let Some(index) = files.len().checked_sub(1) else {
        return Ok((0, 0));
    };
    let f = &files[index];
    let size = f.held.size()?;
    if f.complete {
        return Ok((index, size));
    }
    // The last record boundary, then back to a clean one.
    let mut records = Records::new(&f.held, size, max_line_bytes)?;
    let end = match records.prev_newline(size)? {
        Some(p) => p + 1,
        None => 0,
    };
    let (start, _, _) = back_in_file(&f.held, end, false, Want::Lines(0), max_line_bytes)?;
    Ok((index, start))
}

/// From the clean point `from`, walks back to a clean point at least `want` lines earlier, into
/// older files of the chain when needed (or to the start of the oldest one).
pub fn back(
    files: &[ChainFile],
    from: Position,
    want: Want,
    max_line_bytes: usize,
) -> std::io::Result<Position> {
    let mut index = from.index;
    let mut end = from.offset;
    let mut flush = false;
    let mut seq = from.seq;
    let mut want = want;
    loop {
        let (start, lines, met) =
            back_in_file(&files[index].held, end, flush, want, max_line_bytes)?;
        seq = seq.saturating_sub(lines);
        if met || index == 0 {
            return Ok(Position {
                index,
                offset: start,
                seq,
            });
        }
        if let Want::Lines(n) = want {
            want = Want::Lines(n - lines);
        }
        index -= 1;
        end = files[index].held.size()?;
        flush = true;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tail::reader::TailLine;

    fn held(path: &Path) -> ChainFile {
        ChainFile {
            held: HeldFile::open(path).unwrap(),
            complete: false,
        }
    }

    fn all_lines(files: &[ChainFile], from: Position) -> Vec<TailLine> {
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate().skip(from.index) {
            let fmt = f.held.format().unwrap();
            let off = if i == from.index { from.offset } else { 0 };
            let seq = out.last().map_or(from.seq, |l: &TailLine| l.seq + 1);
            let mut r = RecordReader::new(1 << 20, fmt, off, seq);
            let mut buf = vec![0; f.held.size().unwrap() as usize];
            read_full_at(&f.held.file, &mut buf, 0).unwrap();
            r.feed(&buf[off as usize..], &mut out);
            if f.complete {
                r.end_of_file(&mut out, None);
            }
        }
        out
    }

    fn cri(lines: &[&str]) -> String {
        lines
            .iter()
            .map(|l| format!("2024-01-01T00:00:0{}Z {l}\n", l.len() % 10))
            .collect()
    }

    #[test]
    fn tail_reads_back_into_the_rotated_file_and_over_open_partials() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("0.log.20240101-000000");
        let cur = dir.path().join("0.log");
        std::fs::write(
            &old,
            cri(&["stdout F o1", "stdout F o2", "stdout P dangling"]),
        )
        .unwrap();
        std::fs::write(
            &cur,
            cri(&[
                "stdout P a1",
                "stderr F e",
                "stdout F a2",
                "stdout F b",
                "stderr P open",
            ]),
        )
        .unwrap();
        let mut files = vec![held(&old), held(&cur)];
        files[0].complete = true;
        let (index, offset) = end_point(&files, 1 << 20).unwrap();
        assert_eq!(index, 1);
        // The open stderr partial at the end is excluded from the end point.
        let whole = std::fs::read(&cur).unwrap();
        assert_eq!(offset as usize, whole.len() - cri(&["stderr P open"]).len());
        let end = Position {
            index,
            offset,
            seq: 1000,
        };
        for n in 0..=7 {
            let p = back(&files, end, Want::Lines(n), 1 << 20).unwrap();
            let got = all_lines(&files, p);
            let before_end: Vec<_> = got.iter().filter(|l| l.seq < 1000).collect();
            assert!(before_end.len() as u64 >= n.min(6), "n={n}: {before_end:?}");
            // Lines counted back land exactly on 1000 at the end point.
            assert_eq!(
                before_end.last().map(|l| l.seq),
                (!before_end.is_empty()).then_some(999)
            );
            assert!(before_end.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        }
        let p = back(&files, end, Want::Lines(100), 1 << 20).unwrap();
        assert_eq!((p.index, p.offset, p.seq), (0, 0, 1000 - 6));
        let msgs: Vec<Vec<u8>> = all_lines(&files, p)
            .into_iter()
            .take(6)
            .map(|l| l.message.to_vec())
            .collect();
        assert_eq!(
            msgs,
            [
                &b"o1\n"[..],
                b"o2\n",
                b"dangling",
                b"e\n",
                b"a1a2\n",
                b"b\n"
            ]
        );
    }
}
