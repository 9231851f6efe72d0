//! The decisions of the backward walk (pure: no I/O).
//!
//! [`super::seek`] reads a file's records backwards from a clean point (or the end of a
//! complete file) and hands each one, newest first, to a [`Walk`], which says what it needs
//! next ([`Step`]): one more record, a count of the lines between two clean points (which only
//! the forward reader can make: lines are counted in one place, [`super::reader`]), or nothing
//! more, with the clean point found.
//!
//! The walk goes back until the want is met (`tail: N`: `N` records that end a line; `since`:
//! a record that ends a line stamped before the time), then on to the newest *clean* boundary
//! at or before that point: a record boundary where, for stdout and stderr alike, the stream's
//! previous record is not a partial one, or ended more than [`PARTIAL_WINDOW`] bytes before
//! (the reader then ended the line), or there is none (the start of the file, or nothing of
//! that stream within the window). If the reader then counts fewer lines than records (the
//! tails of over-long lines are dropped), the walk goes further back for the rest.
//!
//! Every question is answered from where the previous one stopped: the records scanned for the
//! want, the boundaries proved unclean and the lines counted are never looked at again, so a
//! walk is linear in the records it is handed ([`Walk::visits`] counts the work).

use super::reader::PARTIAL_WINDOW;

/// How far back to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// At least this many lines.
    Lines(u64),
    /// Back past a line older than this Unix time (ns), so every later one is included.
    Since(i64),
}

/// One record met walking back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    /// Offset of its first byte.
    pub start: u64,
    /// 0 = stdout, 1 = stderr; `None` for a record that did not parse (it belongs to no
    /// stream).
    pub stream: Option<usize>,
    /// The line goes on in the stream's next record.
    pub partial: bool,
    /// Unix nanoseconds (`i64::MIN` for a record that did not parse: older than any time).
    pub ts: i64,
}

impl Rec {
    /// Whether a line ends with this record.
    fn ends_line(&self) -> bool {
        self.stream.is_none() || !self.partial
    }
}

/// What a [`Walk`] needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The record that ends at [`Walk::low`] (asked only while it is above 0): [`Walk::push`].
    Record,
    /// The lines the forward reader emits between the clean points `from` and `to` (flushed at
    /// `to` if `to` is the end of a complete file): [`Walk::counted`].
    Count {
        /// Where reading starts.
        from: u64,
        /// Where it stops.
        to: u64,
    },
    /// The walk is over.
    Done {
        /// The clean point found.
        start: u64,
        /// Lines between it and the end.
        lines: u64,
        /// Whether the want was met (else the start of the file came first).
        met: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting records until the want can be met.
    Want,
    /// Looking for a clean boundary at or before where the want is met.
    Clean,
    /// Waiting for the count of the lines from this clean point on.
    Counting(u64),
    /// One more record, then [`Phase::Want`] again (the count fell short).
    Further,
}

/// One walk back over one file's records; see the module doc.
#[derive(Debug)]
pub struct Walk {
    want: Want,
    end: u64,
    /// The records met, newest first: boundary `k` is `end` for `k = 0`, else where record
    /// `k - 1` starts.
    recs: Vec<Rec>,
    /// Where the oldest record met starts.
    low: u64,
    /// `tail: N`: records that end a line wanted after the clean point (raised when the reader
    /// counts fewer lines than records).
    goal: u64,
    /// Records examined for the want, and how many of them end a line.
    scanned: usize,
    ended: u64,
    /// `since`: the boundary after the first record older than the time, once met.
    since_at: Option<usize>,
    /// Where the want is met (`None`: the start of the file came first).
    reach: Option<usize>,
    /// Boundaries below this one are known not to be clean, whatever comes.
    cursor: usize,
    /// Per stream, the newest record at or after `cursor` of that stream, or `recs.len()` when
    /// none was met yet (scanning resumes there).
    newest: [usize; 2],
    /// Lines counted from `counted_from` to the end.
    lines: u64,
    counted_from: u64,
    phase: Phase,
    visits: u64,
}

impl Walk {
    /// A walk back from `end`, a clean point (or the end of a complete file).
    pub fn new(end: u64, want: Want) -> Self {
        Self {
            want,
            end,
            recs: Vec::new(),
            low: end,
            goal: match want {
                Want::Lines(n) => n,
                Want::Since(_) => 0,
            },
            scanned: 0,
            ended: 0,
            since_at: None,
            reach: None,
            cursor: 0,
            newest: [0; 2],
            lines: 0,
            counted_from: end,
            phase: Phase::Want,
            visits: 0,
        }
    }

    /// Where the oldest record met starts (the end, before any).
    pub fn low(&self) -> u64 {
        self.low
    }

    /// Records examined and boundaries weighed so far, over every question: the walk's work,
    /// linear in the records handed to it.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// The record that ends at [`Self::low`].
    pub fn push(&mut self, rec: Rec) {
        debug_assert!(rec.start < self.low);
        self.low = rec.start;
        self.recs.push(rec);
        if self.phase == Phase::Further {
            self.phase = Phase::Want;
        }
    }

    /// The count asked for by [`Step::Count`].
    pub fn counted(&mut self, lines: u64) {
        if let Phase::Counting(start) = self.phase {
            self.lines += lines;
            self.counted_from = start;
        }
    }

    /// What the walk needs next.
    pub fn step(&mut self) -> Step {
        loop {
            match self.phase {
                Phase::Want => {
                    self.reach = self.reached();
                    if self.reach.is_none() && self.low > 0 {
                        return Step::Record;
                    }
                    self.phase = Phase::Clean;
                }
                Phase::Clean => {
                    let from = self.reach.unwrap_or(self.recs.len());
                    let k = match self.clean_boundary(from) {
                        Some(k) => k,
                        None if self.low > 0 => return Step::Record,
                        None => self.recs.len(),
                    };
                    let start = self.boundary(k);
                    self.phase = Phase::Counting(start);
                    if start < self.counted_from {
                        return Step::Count {
                            from: start,
                            to: self.counted_from,
                        };
                    }
                    self.counted(0);
                }
                Phase::Counting(start) if self.counted_from == start => {
                    let met = match self.want {
                        Want::Lines(n) => self.lines >= n,
                        Want::Since(_) => self.reach.is_some(),
                    };
                    if met || start == 0 || self.low == 0 {
                        return Step::Done {
                            start,
                            lines: self.lines,
                            met,
                        };
                    }
                    // Fewer lines than records suggested (the tails of truncated lines are
                    // dropped): as many records more.
                    if let Want::Lines(n) = self.want {
                        self.goal += n - self.lines;
                    }
                    self.phase = Phase::Further;
                    return Step::Record;
                }
                Phase::Counting(start) => {
                    return Step::Count {
                        from: start,
                        to: self.counted_from,
                    };
                }
                Phase::Further => return Step::Record,
            }
        }
    }

    /// Boundary `k`: the end for 0, else where record `k - 1` starts.
    fn boundary(&self, k: usize) -> u64 {
        if k == 0 {
            self.end
        } else {
            self.recs[k - 1].start
        }
    }

    /// The boundary where the want is met, if the records met so far meet it.
    fn reached(&mut self) -> Option<usize> {
        match self.want {
            Want::Lines(_) => {
                while self.ended < self.goal {
                    let rec = self.recs.get(self.scanned)?;
                    self.visits += 1;
                    self.scanned += 1;
                    if rec.ends_line() {
                        self.ended += 1;
                    }
                }
                Some(self.scanned)
            }
            Want::Since(t) => {
                while self.since_at.is_none() {
                    let rec = self.recs.get(self.scanned)?;
                    self.visits += 1;
                    self.scanned += 1;
                    if rec.ends_line() && rec.ts < t {
                        self.since_at = Some(self.scanned);
                    }
                }
                self.since_at
            }
        }
    }

    /// The newest clean boundary at or before boundary `from`, if the records met so far
    /// decide one.
    ///
    /// A boundary where some stream's previous record is partial and ended within the window is
    /// not clean, whatever comes after: the cursor moves past it for good. A stream with no
    /// record before the boundary yet is undecided until one comes or the window is passed
    /// (or the start of the file reached); then every older boundary is undecided too, since
    /// it has even fewer records before it and is closer to the oldest one met: more records
    /// are needed.
    fn clean_boundary(&mut self, from: usize) -> Option<usize> {
        self.cursor = self.cursor.max(from);
        let len = self.recs.len();
        loop {
            let k = self.cursor;
            self.visits += 1;
            let b = self.boundary(k);
            let mut unclean = false;
            let mut undecided = false;
            for s in 0..2 {
                let mut i = self.newest[s].max(k);
                while i < len && self.recs[i].stream != Some(s) {
                    self.visits += 1;
                    i += 1;
                }
                self.newest[s] = i;
                if i < len {
                    let ended_at = self.boundary(i);
                    unclean |= self.recs[i].partial && b - ended_at <= PARTIAL_WINDOW;
                } else {
                    undecided |= self.low > 0 && b - self.low <= PARTIAL_WINDOW;
                }
            }
            if unclean {
                self.cursor += 1;
                continue;
            }
            return (!undecided).then_some(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A file as the records a walk back meets: `(length, stream, partial, ts)`, oldest first.
    #[derive(Debug, Clone)]
    struct File {
        recs: Vec<Rec>,
        size: u64,
    }

    impl File {
        fn new(spec: &[(u64, Option<usize>, bool, i64)]) -> Self {
            let mut recs = Vec::new();
            let mut at = 0;
            for &(len, stream, partial, ts) in spec {
                recs.push(Rec {
                    start: at,
                    stream,
                    partial,
                    ts,
                });
                at += len;
            }
            Self { recs, size: at }
        }

        /// The record ending at `end`.
        fn before(&self, end: u64) -> Rec {
            self.recs[self.recs.partition_point(|r| r.start < end) - 1]
        }

        /// The lines a reader counts in `[from, to)`: here, one per record that ends one,
        /// less every `drop`-th (standing for the tails of over-long lines).
        fn count(&self, from: u64, to: u64, drop: usize) -> u64 {
            let (a, b) = (
                self.recs.partition_point(|r| r.start < from),
                self.recs.partition_point(|r| r.start < to),
            );
            (a..b)
                .filter(|&i| self.recs[i].ends_line() && (drop == 0 || i % drop != 0))
                .count() as u64
        }
    }

    /// Walks `file` back from its end; the result, and the walk's work.
    fn walk(file: &File, want: Want, drop: usize) -> ((u64, u64, bool), u64) {
        let mut w = Walk::new(file.size, want);
        loop {
            match w.step() {
                Step::Record => {
                    assert!(w.low() > 0, "a record is asked for only above 0");
                    w.push(file.before(w.low()));
                }
                Step::Count { from, to } => w.counted(file.count(from, to, drop)),
                Step::Done { start, lines, met } => return ((start, lines, met), w.visits()),
            }
        }
    }

    /// The walk as it was written first (every question answered from scratch, quadratic):
    /// the model the incremental walk must agree with.
    fn model(file: &File, want: Want, drop: usize) -> (u64, u64, bool) {
        let end = file.size;
        let mut recs: Vec<Rec> = Vec::new();
        let low = |recs: &Vec<Rec>| recs.last().map_or(end, |r| r.start);
        let boundary = |recs: &Vec<Rec>, k: usize| if k == 0 { end } else { recs[k - 1].start };
        let step = |recs: &mut Vec<Rec>| {
            let l = low(recs);
            if l == 0 {
                return false;
            }
            recs.push(file.before(l));
            true
        };
        let clean = |recs: &Vec<Rec>, k_min: usize| {
            let mut last: [Option<(u64, bool)>; 2] = [None; 2];
            let mut best = None;
            for k in (0..=recs.len()).rev() {
                let b = boundary(recs, k);
                let closed = |s: usize| match last[s] {
                    Some((q, partial)) => !partial || b - q > PARTIAL_WINDOW,
                    None => low(recs) == 0 || b - low(recs) > PARTIAL_WINDOW,
                };
                if k >= k_min && closed(0) && closed(1) {
                    best = Some(k);
                }
                if k > 0
                    && let Rec {
                        stream: Some(s),
                        partial,
                        ..
                    } = recs[k - 1]
                {
                    last[s] = Some((boundary(recs, k - 1), partial));
                }
            }
            best
        };
        let mut goal = match want {
            Want::Lines(n) => n,
            Want::Since(_) => 0,
        };
        loop {
            let k_min = loop {
                let k = match want {
                    Want::Lines(_) => {
                        let mut done = 0;
                        let mut k = (goal == 0).then_some(0);
                        for (i, r) in recs.iter().enumerate() {
                            if k.is_some() {
                                break;
                            }
                            if r.ends_line() {
                                done += 1;
                            }
                            if done >= goal {
                                k = Some(i + 1);
                            }
                        }
                        k
                    }
                    Want::Since(t) => recs
                        .iter()
                        .position(|r| r.ends_line() && r.ts < t)
                        .map(|i| i + 1),
                };
                match k {
                    Some(k) => break Some(k),
                    None if low(&recs) == 0 => break None,
                    None => {
                        step(&mut recs);
                    }
                }
            };
            let k = loop {
                if let Some(k) = clean(&recs, k_min.unwrap_or(recs.len())) {
                    break k;
                }
                if !step(&mut recs) {
                    break recs.len();
                }
            };
            let start = boundary(&recs, k);
            let lines = file.count(start, end, drop);
            let met = match want {
                Want::Lines(n) => lines >= n,
                Want::Since(_) => k_min.is_some(),
            };
            if met || start == 0 {
                return (start, lines, met);
            }
            if let Want::Lines(n) = want {
                goal += n - lines;
            }
            if !step(&mut recs) {
                return (start, lines, false);
            }
        }
    }

    /// `n` one-line records of `len` bytes on stdout, stderr silent.
    fn stdout_only(n: usize, len: u64) -> File {
        File::new(&vec![(len, Some(0), false, 0); n])
    }

    #[test]
    fn a_silent_stream_is_closed_once_the_window_is_passed() {
        // 100-byte lines: stderr has no record, so the newest clean point a line back is only
        // known once a window's worth of records was met.
        let file = stdout_only(20_000, 100);
        let ((start, lines, met), _) = walk(&file, Want::Lines(1), 0);
        assert_eq!((start, lines, met), (file.size - 100, 1, true));
        // A small file: its start closes every stream.
        let small = stdout_only(10, 100);
        assert_eq!(walk(&small, Want::Lines(3), 0).0, (700, 3, true));
        assert_eq!(walk(&small, Want::Lines(30), 0).0, (0, 10, false));
    }

    #[test]
    fn an_open_partial_moves_the_clean_point_before_its_line() {
        // stdout: a, b1 (partial), stderr: e, stdout: b2; a tail of 1 starts before b1.
        let file = File::new(&[
            (10, Some(0), false, 1),
            (10, Some(0), true, 2),
            (10, Some(1), false, 3),
            (10, Some(0), false, 4),
        ]);
        assert_eq!(walk(&file, Want::Lines(1), 0).0, (10, 2, true));
        assert_eq!(walk(&file, Want::Lines(0), 0).0, (40, 0, true));
        // since: back past the first line stamped before 3 (b1 is no line end: a).
        assert_eq!(walk(&file, Want::Since(3), 0).0, (0, 3, true));
    }

    /// The regression the walk was rewritten for: a `tail: N` backlog took time that grew
    /// faster than N (every step recounted every record). The work is now linear in the
    /// records met, whatever N, for both wants, over a silent stream's window.
    #[test]
    fn the_work_is_linear_in_the_records_met() {
        for n in [1_000u64, 5_000, 20_000] {
            let file = stdout_only(n as usize + 20_000, 64);
            let met = 20_000 + n as usize;
            let (_, work) = walk(&file, Want::Lines(n), 0);
            assert!(work <= 4 * met as u64, "tail {n}: {work} visits");
            let (_, work) = walk(&file, Want::Since(1), 0);
            assert!(work <= 4 * file.recs.len() as u64, "since: {work} visits");
        }
        // Lines fewer than records (truncated lines): the walk goes further, still linear.
        let file = stdout_only(40_000, 64);
        let ((_, lines, met), work) = walk(&file, Want::Lines(10_000), 2);
        assert!(met && lines >= 10_000);
        assert!(work <= 4 * 40_000, "{work} visits");
    }

    fn rec() -> impl Strategy<Value = (u64, Option<usize>, bool, i64)> {
        (
            prop_oneof![1u64..200, 1u64..(PARTIAL_WINDOW / 2)],
            prop_oneof![Just(None), Just(Some(0)), Just(Some(1))],
            any::<bool>(),
            0i64..50,
        )
    }

    proptest! {
        /// The incremental walk finds what the walk written first finds: the same clean point,
        /// the same lines, whether the want was met.
        #[test]
        fn the_walk_agrees_with_the_first_one(
            spec in proptest::collection::vec(rec(), 1..60),
            lines in 0u64..40,
            since in 0i64..55,
            by_time in any::<bool>(),
            drop in prop_oneof![Just(0usize), 2usize..5],
        ) {
            let file = File::new(&spec);
            let want = if by_time { Want::Since(since) } else { Want::Lines(lines) };
            prop_assert_eq!(walk(&file, want, drop).0, model(&file, want, drop));
        }
    }
}
