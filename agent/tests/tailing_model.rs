//! Model-based test of following a log across rotations, against real files.
//!
//! Random sequences of write, partial write, rotate (rename + create, as kubelet does),
//! copytruncate (as logrotate does), gzip-and-delete (as kubelet does to rotated files: a real
//! gzip file) and read are applied to a real directory and to an in-memory model. The model
//! says which lines the follower must deliver: every line written, exactly once and in order,
//! except lines whose file was compressed and deleted before the follower could open it; those
//! are counted, exactly, in bytes (`Follower::lost_bytes`, the source of
//! `logrelay_agent_rotated_unread_bytes_total`).
//!
//! After every read, two backward walks are checked too:
//! * a backfill in the follower's epoch: walking back from the follower's clean point over its
//!   own files (what the tailer keeps for joins and resumes) finds lines numbered exactly as
//!   the follower numbered them;
//! * a new epoch: walking back from the end of the files on disk now (`chain_files`, the
//!   compressed ones included) for the last `k` lines, or to a time, finds exactly the lines
//!   written last, or since that time, wherever they are now, compressed or not.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use logrelay_agent::tail::follow::{Event, Follower, Progress};
use logrelay_agent::tail::reader::TailLine;
use logrelay_agent::tail::{ChainFile, Position, SEQ_BASE, Want, chain_files, seek};
use logrelay_wire::batch::LineFlags;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    /// Whole lines (finishing a partially written one first); each split into `parts` records.
    Write {
        lines: usize,
        parts: u8,
        filler: usize,
    },
    /// Part of the next line's bytes (possibly ending mid-record).
    Partial {
        per_mille: u16,
        parts: u8,
        filler: usize,
    },
    /// kubelet: rename `0.log` to `0.log.<stamp>`, the runtime reopens `0.log`.
    Rotate,
    /// logrotate: copy `0.log` to `0.log.<stamp>`, truncate `0.log` in place.
    CopyTruncate,
    /// kubelet: compress the oldest rotated file to `<name>.gz`, delete it.
    GzipDelete,
    /// The follower polls until it has read everything.
    Read,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1usize..4, 1u8..4, 0usize..200).prop_map(|(lines, parts, filler)| Action::Write { lines, parts, filler }),
        3 => (1u16..1000, 1u8..4, 0usize..200).prop_map(|(per_mille, parts, filler)| Action::Partial { per_mille, parts, filler }),
        2 => Just(Action::Rotate),
        2 => Just(Action::CopyTruncate),
        2 => Just(Action::GzipDelete),
        5 => Just(Action::Read),
    ]
}

/// Where records live: one per inode the writer wrote to (or a copy of one).
#[derive(Debug, Default)]
struct Storage {
    /// Complete records, in order: (line, part, bytes).
    records: Vec<(usize, usize, usize)>,
    /// How many of them the follower has read (it reads on from there).
    read: usize,
    /// The follower opened it (it then reads it to its end, even deleted).
    held: bool,
}

/// One logical line: its message parts (the last one ends with `\n`) and which parts were lost.
#[derive(Debug)]
struct Line {
    parts: Vec<Vec<u8>>,
    lost: Vec<bool>,
}

struct World {
    dir: PathBuf,
    writer: File,
    /// The line being written: its records and how many bytes of them are written.
    partial: Option<(usize, Vec<Vec<u8>>, usize)>,
    lines: Vec<Line>,
    storages: Vec<Storage>,
    /// Name → storage, for `0.log` and plain rotated files.
    names: BTreeMap<String, usize>,
    stamp: u32,
    lost_bytes: u64,
}

impl World {
    fn new(dir: &Path) -> Self {
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("0.log"))
            .unwrap();
        let mut names = BTreeMap::new();
        names.insert("0.log".to_string(), 0);
        Self {
            dir: dir.to_path_buf(),
            writer,
            partial: None,
            lines: Vec::new(),
            storages: vec![Storage {
                held: true,
                ..Storage::default()
            }],
            names,
            stamp: 0,
            lost_bytes: 0,
        }
    }

    fn current(&self) -> usize {
        self.names["0.log"]
    }

    /// A new logical line as CRI records: `parts - 1` partial records then a full one.
    fn encode(&mut self, parts: u8, filler: usize) -> (usize, Vec<Vec<u8>>) {
        let id = self.lines.len();
        let mut body = format!("line-{id:06} ").into_bytes();
        body.extend(std::iter::repeat_n(b'a' + (id % 26) as u8, filler));
        let parts = usize::from(parts).min(body.len()).max(1);
        let chunk = body.len().div_ceil(parts);
        let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
        let mut records = Vec::new();
        let mut messages = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            // Unique timestamps keep every file's first bytes distinct.
            let mut rec = format!(
                "2024-01-01T00:00:00.{:09}Z stdout {} ",
                id * 8 + i,
                if last { "F" } else { "P" }
            )
            .into_bytes();
            rec.extend_from_slice(piece);
            rec.push(b'\n');
            records.push(rec);
            let mut m = piece.to_vec();
            if last {
                m.push(b'\n');
            }
            messages.push(m);
        }
        let n = messages.len();
        self.lines.push(Line {
            parts: messages,
            lost: vec![false; n],
        });
        (id, records)
    }

    /// Writes `n` more bytes of the line in progress; complete records land in the current file.
    fn write_partial(&mut self, n: usize) {
        let (id, records, done) = self.partial.take().expect("a line in progress");
        let all: Vec<u8> = records.concat();
        let end = (done + n).min(all.len());
        self.writer.write_all(&all[done..end]).unwrap();
        let cur = self.current();
        let mut at = 0;
        for (part, r) in records.iter().enumerate() {
            at += r.len();
            if at > done && at <= end {
                self.storages[cur].records.push((id, part, r.len()));
            }
        }
        if end < all.len() {
            self.partial = Some((id, records, end));
        }
    }

    fn finish_partial(&mut self) {
        if self.partial.is_some() {
            self.write_partial(usize::MAX / 2);
        }
    }

    fn apply(&mut self, a: &Action, follower: &mut Follower, got: &mut Vec<TailLine>) {
        match *a {
            Action::Write {
                lines,
                parts,
                filler,
            } => {
                self.finish_partial();
                for _ in 0..lines {
                    let (id, records) = self.encode(parts, filler);
                    self.partial = Some((id, records, 0));
                    self.finish_partial();
                }
            }
            Action::Partial {
                per_mille,
                parts,
                filler,
            } => {
                if self.partial.is_none() {
                    let (id, records) = self.encode(parts, filler);
                    self.partial = Some((id, records, 0));
                }
                let (_, records, done) = self.partial.as_ref().unwrap();
                let rest = records.iter().map(Vec::len).sum::<usize>() - done;
                let n = (rest * usize::from(per_mille) / 1000).clamp(1, rest);
                self.write_partial(n);
            }
            Action::Rotate => {
                // kubelet rotates between records; a runtime never splits one across files.
                self.finish_partial();
                let name = self.next_name();
                std::fs::rename(self.dir.join("0.log"), self.dir.join(&name)).unwrap();
                let cur = self.names.remove("0.log").unwrap();
                self.names.insert(name, cur);
                self.writer = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("0.log"))
                    .unwrap();
                self.storages.push(Storage::default());
                self.names
                    .insert("0.log".to_string(), self.storages.len() - 1);
            }
            Action::CopyTruncate => {
                self.finish_partial();
                let name = self.next_name();
                std::fs::copy(self.dir.join("0.log"), self.dir.join(&name)).unwrap();
                self.writer.set_len(0).unwrap();
                let cur = self.current();
                let records = std::mem::take(&mut self.storages[cur].records);
                let read = std::mem::take(&mut self.storages[cur].read);
                self.storages.push(Storage {
                    records,
                    read,
                    held: false,
                });
                self.names.insert(name, self.storages.len() - 1);
            }
            Action::GzipDelete => {
                let Some(name) = self.names.keys().find(|n| *n != "0.log").cloned() else {
                    return;
                };
                let path = self.dir.join(&name);
                let data = std::fs::read(&path).unwrap();
                std::fs::write(self.dir.join(format!("{name}.gz")), gzip(&data)).unwrap();
                std::fs::remove_file(&path).unwrap();
                let s = self.names.remove(&name).unwrap();
                let st = &self.storages[s];
                if !st.held {
                    for &(id, part, len) in &st.records[st.read..] {
                        self.lines[id].lost[part] = true;
                        self.lost_bytes += len as u64;
                    }
                }
            }
            Action::Read => {
                read_all(follower, got);
                for &s in self.names.values() {
                    self.storages[s].held = true;
                }
                for s in &mut self.storages {
                    if s.held {
                        s.read = s.records.len();
                    }
                }
            }
        }
    }

    /// What the follower must have delivered: whole lines, and the read part of a line whose
    /// end was lost (flagged partial), in order.
    fn expected(&self) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        for l in &self.lines {
            let read: Vec<u8> = l
                .parts
                .iter()
                .zip(&l.lost)
                .take_while(|(_, lost)| !**lost)
                .flat_map(|(p, _)| p.clone())
                .collect();
            let whole = l.lost.iter().all(|x| !x);
            if whole {
                out.push((read, false));
            } else if !read.is_empty() {
                out.push((read, true));
            }
        }
        out
    }

    fn next_name(&mut self) -> String {
        self.stamp += 1;
        // kubelet's format, one "second" per rotation so names sort in rotation order.
        format!(
            "0.log.20240101-{:02}{:02}{:02}",
            self.stamp / 3600,
            self.stamp / 60 % 60,
            self.stamp % 60
        )
    }
}

fn read_all(f: &mut Follower, got: &mut Vec<TailLine>) {
    while let Progress::More(_) = f.poll(got, 1 << 20).unwrap() {}
}

/// A gzip file of `data`, as kubelet writes it (Go's `gzip.Writer`: one member).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const MAX_LINE: usize = 1 << 20;

/// Reads `files` from `start` to their end with a new follower: `(seq, message, flags)`.
fn read_from(
    path: &Path,
    files: &[ChainFile],
    start: Position,
) -> Result<Vec<(u64, String, u8)>, TestCaseError> {
    let chain = files[start.index..]
        .iter()
        .map(|f| f.held.clone())
        .collect();
    let mut f = Follower::new(path, chain, start.offset, start.seq, MAX_LINE).unwrap();
    let mut got = Vec::new();
    read_all(&mut f, &mut got);
    prop_assert!(
        f.take_events()
            .iter()
            .all(|e| !matches!(e, Event::Lost { .. } | Event::Unreadable { .. })),
        "nothing is lost reading files held or on disk"
    );
    Ok(got.iter().map(described).collect())
}

fn described(l: &TailLine) -> (u64, String, u8) {
    (
        l.seq,
        String::from_utf8_lossy(&l.message).into_owned(),
        l.flags,
    )
}

/// A backfill in the follower's epoch: from its clean point back `k` lines over its own files,
/// read forward, gives the lines it numbered there, as it numbered them.
fn check_backfill(
    path: &Path,
    follower: &Follower,
    got: &[TailLine],
    floor: usize,
) -> Result<(), TestCaseError> {
    let Some((id, offset, seq)) = follower.clean_point() else {
        return Ok(());
    };
    let files = follower.files();
    let index = files.iter().position(|f| f.held.id == id).unwrap();
    let from = Position { index, offset, seq };
    let read = got.len().min(seq as usize) - floor.min(seq as usize);
    for k in [1, read].into_iter().filter(|k| (1..=read).contains(k)) {
        let start = seek::back(&files, from, Want::Lines(k as u64), MAX_LINE).unwrap();
        let again: Vec<_> = read_from(path, &files, start)?
            .into_iter()
            .filter(|l| l.0 < seq && l.0 >= floor as u64)
            .collect();
        // Fewer only when the files it keeps (the last few) do not reach back that far.
        prop_assert!(
            again.len() >= k.min(read) || (start.index, start.offset) == (0, 0),
            "{} lines for {k}",
            again.len()
        );
        let first = again.first().map_or(seq, |l| l.0) as usize;
        let want: Vec<_> = got[first..seq as usize].iter().map(described).collect();
        prop_assert_eq!(again, want, "walking back {} lines from {:?}", k, from);
    }
    Ok(())
}

/// A new epoch's backlog from the files on disk now: the last `k` lines written, and the lines
/// stamped at or after a time, wherever they are now (compressed or not).
fn check_fresh_backlog(path: &Path, world: &World) -> Result<(), TestCaseError> {
    let files = chain_files(path).unwrap();
    let (index, offset) = seek::end_point(&files, MAX_LINE).unwrap();
    let anchor = Position {
        index,
        offset,
        seq: SEQ_BASE,
    };
    let complete = world.lines.len() - usize::from(world.partial.is_some());
    let message = |l: &Line| String::from_utf8_lossy(&l.parts.concat()).into_owned();
    for k in [1, complete / 3, complete, complete + 5] {
        let start = seek::back(&files, anchor, Want::Lines(k as u64), MAX_LINE).unwrap();
        let got: Vec<String> = read_from(path, &files, start)?
            .into_iter()
            .filter(|l| l.0 >= SEQ_BASE - k as u64 && l.0 < SEQ_BASE)
            .map(|l| l.1)
            .collect();
        let want: Vec<String> = world.lines[complete.saturating_sub(k)..complete]
            .iter()
            .map(message)
            .collect();
        prop_assert_eq!(got, want, "the last {} lines", k);
    }
    // Since the first record of a line a third of the way in (lines are stamped 8 ns apart).
    let from = complete / 3;
    let t = T0 + from as i64 * 8;
    let start = seek::back(&files, anchor, Want::Since(t), MAX_LINE).unwrap();
    let mut got = Vec::new();
    let chain = files[start.index..]
        .iter()
        .map(|f| f.held.clone())
        .collect();
    let mut f = Follower::new(path, chain, start.offset, start.seq, MAX_LINE).unwrap();
    read_all(&mut f, &mut got);
    let got: Vec<String> = got
        .iter()
        .filter(|l| l.timestamp_ns >= t && l.seq < SEQ_BASE)
        .map(|l| String::from_utf8_lossy(&l.message).into_owned())
        .collect();
    let want: Vec<String> = world.lines[from..complete].iter().map(message).collect();
    prop_assert_eq!(got, want, "since line {}", from);
    Ok(())
}

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000_000_000;

fn run(actions: &[Action]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("0.log");
    let mut world = World::new(tmp.path());
    let mut follower = Follower::from_start(&path, 0, 1 << 20).unwrap();
    let mut got = Vec::new();
    // Backfills are checked back to the read after the last `copytruncate`: a file truncated in
    // place no longer holds what was read of it.
    let mut floor = 0;
    let mut truncated = false;
    for a in actions {
        world.apply(a, &mut follower, &mut got);
        match a {
            Action::CopyTruncate => truncated = true,
            Action::Read => {
                if std::mem::take(&mut truncated) {
                    floor = got.len();
                }
                check_backfill(&path, &follower, &got, floor)?;
            }
            _ => {}
        }
    }
    world.apply(
        &Action::Write {
            lines: 0,
            parts: 1,
            filler: 0,
        },
        &mut follower,
        &mut got,
    );
    world.apply(&Action::Read, &mut follower, &mut got);
    check_fresh_backlog(&path, &world)?;

    let want = world.expected();
    let got_lines: Vec<(String, bool)> = got
        .iter()
        .map(|l| {
            (
                String::from_utf8_lossy(&l.message).into_owned(),
                l.flags & LineFlags::PARTIAL != 0,
            )
        })
        .collect();
    let want_lines: Vec<(String, bool)> = want
        .iter()
        .map(|(m, p)| (String::from_utf8_lossy(m).into_owned(), *p))
        .collect();
    prop_assert_eq!(
        got_lines,
        want_lines,
        "every line once, in order, but the lost ones"
    );
    for (i, l) in got.iter().enumerate() {
        prop_assert_eq!(l.seq, i as u64, "consecutive sequence numbers");
        prop_assert_eq!(l.flags & LineFlags::TRUNCATED, 0);
    }
    prop_assert_eq!(
        follower.lost_bytes,
        world.lost_bytes,
        "lost bytes counted exactly"
    );
    let reported: u64 = follower
        .take_events()
        .iter()
        .map(|e| match e {
            Event::Lost { bytes, .. } => *bytes,
            _ => 0,
        })
        .sum();
    prop_assert_eq!(reported, world.lost_bytes, "and reported in events");
    Ok(())
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_line_once_in_order_except_lost_ones_counted_exactly(
        actions in proptest::collection::vec(action(), 0..60)
    ) {
        run(&actions)?;
    }
}

#[test]
fn a_file_rotated_and_compressed_unseen_is_counted() {
    run(&[
        Action::Write {
            lines: 2,
            parts: 1,
            filler: 10,
        },
        Action::Read,
        Action::Rotate,
        Action::Write {
            lines: 3,
            parts: 2,
            filler: 10,
        },
        Action::Rotate,
        Action::GzipDelete,
        Action::GzipDelete,
        Action::Write {
            lines: 1,
            parts: 1,
            filler: 0,
        },
    ])
    .unwrap();
}

#[test]
fn copytruncate_is_read_on_in_the_copy() {
    run(&[
        Action::Write {
            lines: 2,
            parts: 1,
            filler: 300,
        },
        Action::Read,
        Action::Write {
            lines: 2,
            parts: 3,
            filler: 10,
        },
        Action::CopyTruncate,
        Action::Write {
            lines: 4,
            parts: 1,
            filler: 300,
        },
        Action::Read,
        Action::CopyTruncate,
        Action::GzipDelete,
        Action::GzipDelete,
    ])
    .unwrap();
}
