//! Where a demand starts reading and which lines it sends (pure: no I/O, no clock).
//!
//! A plan is decided from what the stream holds of its current numbering ([`Held`]: its epoch,
//! the files it keeps open, its checkpoints) and the demand. Whatever needs the files — listing
//! them, finding a new epoch's anchor, walking back — is asked for, not done: the I/O shell
//! ([`super::stream`]) gathers it and finishes the plan with [`place`].
//!
//! * A **backfill** (`follow: false`, [`plan_once`]) ending at `until` in the epoch held starts
//!   at the checkpoint before its `since_seq`, or walks back from the checkpoint before
//!   `until` for its `tail` or `since`; one with `until` in an epoch this agent does not have
//!   sends nothing. Without `until`, a `since_seq` in the epoch held resumes from a checkpoint;
//!   anything else is a one-off read in an epoch of its own.
//! * A **live** demand that could not take a running follower over ([`plan_follow`]) resumes
//!   from a checkpoint when its `since_seq` names the epoch held; without such a position (and
//!   without `after_line`) it stays in the epoch held, reaching back for its `tail` or `since`
//!   from the newest checkpoint, so that a resume in that epoch still finds it; else it starts
//!   a new epoch: reaching back for its `tail` or `since`, or, continuing what the relay holds
//!   (`after_line`), back past the last line stamped before the relay's last line.

use std::collections::VecDeque;

use logrelay_wire::control::{Demand, SeqPos};

use crate::fingerprint::FileId;

use super::walk::Want;

/// Sequence number of the first line after a new epoch's anchor; the backlog counts down from it.
pub const SEQ_BASE: u64 = 1 << 32;

/// A clean point: file (index in the chain), offset, and the sequence number of the line there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index in the chain.
    pub index: usize,
    /// Byte offset in that file.
    pub offset: u64,
    /// Sequence number of the next line.
    pub seq: u64,
}

/// A clean point of a followed stream, kept to read again from it: the sequence number of the
/// line there, its file, the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number of the next line.
    pub seq: u64,
    /// The file.
    pub file: FileId,
    /// Byte offset in it.
    pub offset: u64,
}

/// Where a new epoch picks up after the last line the relay holds (`after_line`): lines stamped
/// before `ns` are skipped, then `remaining` lines stamped `ns`; the next line continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The relay's last line's timestamp.
    pub ns: i64,
    /// Lines stamped `ns` still to skip.
    pub remaining: u32,
    /// A line stamped before `ns` was read first: the files held reach back past the relay's
    /// last line, so the continuation is exact if the count of lines stamped `ns` matches.
    pub older_seen: bool,
}

/// Where to read from, and what to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The numbering the lines are sent in.
    pub epoch: u64,
    /// Where reading starts, in the files the plan was made with.
    pub start: Position,
    /// Lines before this one are not sent (already sent, or before the backlog).
    pub from_seq: u64,
    /// Lines from this one on are not sent (`until`).
    pub until_seq: Option<u64>,
    /// A new epoch continuing what the relay holds (`after_line`).
    pub after: Option<After>,
}

/// What a stream holds of its numbering, as planning sees it (a snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The epoch; 0 while there is none.
    pub epoch: u64,
    /// The identities of the files it keeps open, oldest first.
    pub files: Vec<FileId>,
    /// Its checkpoints, by increasing sequence number.
    pub checkpoints: VecDeque<Checkpoint>,
}

impl Held {
    /// The newest checkpoint at or before `seq` whose file is still held.
    pub fn checkpoint_before(&self, seq: u64) -> Option<Position> {
        self.checkpoints
            .iter()
            .rev()
            .filter(|c| c.seq <= seq)
            .find_map(|c| {
                self.files
                    .iter()
                    .position(|id| *id == c.file)
                    .map(|index| Position {
                        index,
                        offset: c.offset,
                        seq: c.seq,
                    })
            })
    }

    /// `pos`, if it names the epoch held.
    fn knows(&self, pos: Option<SeqPos>) -> Option<SeqPos> {
        pos.filter(|p| p.epoch == self.epoch && self.epoch != 0)
    }

    /// A resume at `since_seq` if it names the epoch held and a checkpoint at or before it is
    /// in a held file.
    pub fn resume(&self, since_seq: Option<SeqPos>) -> Option<Plan> {
        let resume = self.knows(since_seq)?;
        let start = self.checkpoint_before(resume.seq)?;
        Some(Plan {
            epoch: self.epoch,
            start,
            from_seq: resume.seq,
            until_seq: None,
            after: None,
        })
    }
}

/// How far back a new epoch's first read reaches from its anchor, the newest clean point of
/// the newest file, numbered [`SEQ_BASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not back at all: from the anchor on.
    Anchor,
    /// `tail: n`: the last `n` lines before it.
    Lines(u64),
    /// `since`: every line stamped at or after this Unix time (ns).
    Since(i64),
}

impl Reach {
    /// A demand's `tail` (0 is none), else its `since_ns`.
    pub fn of(tail: Option<u32>, since_ns: Option<i64>) -> Self {
        match (tail.filter(|t| *t > 0), since_ns) {
            (Some(n), _) => Self::Lines(u64::from(n)),
            (None, Some(t)) => Self::Since(t),
            (None, None) => Self::Anchor,
        }
    }

    /// The walk back from the anchor, if any.
    pub fn want(self) -> Option<Want> {
        match self {
            Self::Anchor => None,
            Self::Lines(n) => Some(Want::Lines(n)),
            Self::Since(t) => Some(Want::Since(t)),
        }
    }

    /// The first line sent, the anchor being [`SEQ_BASE`] (`since` filters by time instead).
    pub fn from_seq(self) -> u64 {
        match self {
            Self::Anchor => SEQ_BASE,
            Self::Lines(n) => SEQ_BASE - n,
            Self::Since(_) => 0,
        }
    }
}

/// A backfill's plan, or what it needs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// Nothing can be sent: `until` names an epoch this agent does not have, or no checkpoint
    /// before it is in a held file.
    Nothing,
    /// Read the held files as planned.
    Ready(Plan),
    /// Walk back `want` from `from` in the held files: the plan starts where the walk ends.
    Back {
        /// Where the walk starts.
        from: Position,
        /// How far back.
        want: Want,
        /// The plan, its start to be replaced.
        plan: Plan,
    },
    /// A one-off read of the files at the log path now, in a new epoch of its own.
    Fresh(Reach),
}

/// Plans a backfill (`follow: false`); see the module doc.
pub fn plan_once(held: &Held, spec: &Demand) -> Once {
    if let Some(until) = spec.until {
        let Some(until) = held.knows(Some(until)) else {
            // A join point in an epoch this agent does not have: nothing can be placed.
            return Once::Nothing;
        };
        let Some(cp) = held.checkpoint_before(until.seq) else {
            return Once::Nothing;
        };
        let plan = |start: Position, from_seq: u64| Plan {
            epoch: held.epoch,
            start,
            from_seq,
            until_seq: Some(until.seq),
            after: None,
        };
        let resume = held
            .knows(spec.since_seq)
            .filter(|r| r.seq <= until.seq)
            .and_then(|r| held.checkpoint_before(r.seq).map(|p| (p, r.seq)));
        return match (resume, Reach::of(spec.tail, spec.since_ns)) {
            (Some((start, from_seq)), _) => Once::Ready(plan(start, from_seq)),
            (None, Reach::Lines(n)) => Once::Back {
                from: cp,
                want: Want::Lines(n.saturating_sub(until.seq - cp.seq)),
                plan: plan(cp, until.seq.saturating_sub(n)),
            },
            (None, Reach::Since(t)) => Once::Back {
                from: cp,
                want: Want::Since(t),
                plan: plan(cp, 0),
            },
            (None, Reach::Anchor) => Once::Ready(plan(cp, until.seq)),
        };
    }
    match held.resume(spec.since_seq) {
        Some(plan) => Once::Ready(plan),
        None => Once::Fresh(Reach::of(spec.tail, spec.since_ns)),
    }
}

/// A live demand's plan, or what it needs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// A resume in the epoch held, from a checkpoint.
    Resume(Plan),
    /// On in the epoch held, from its newest checkpoint `from`, walking back `want` first
    /// (none: from `from` on).
    Held {
        /// The newest checkpoint in a held file.
        from: Position,
        /// How far back.
        want: Option<Want>,
        /// The plan, its start to be replaced by where the walk ends.
        plan: Plan,
    },
    /// A new epoch of the files at the log path now, reaching back from its anchor.
    NewEpoch {
        /// How far back.
        reach: Reach,
        /// Continuing what the relay holds, if it said (`after_line`).
        after: Option<After>,
    },
}

/// Plans a live demand that could not take a running follower over; see the module doc.
/// `keep_held`: whether a demand naming no position may go on in the epoch held (not when
/// planning again a new epoch the log rotated under).
///
/// Staying in the epoch held is what keeps a relay restart from costing lines: the first
/// watcher of the restarted relay may well ask for a `tail` before a resuming session asks
/// for its `since_seq` in that epoch; a new epoch would forget the one it resumes.
pub fn plan_follow(held: &Held, spec: &Demand, keep_held: bool) -> Follow {
    if let Some(plan) = held.resume(spec.since_seq) {
        return Follow::Resume(plan);
    }
    if keep_held
        && spec.after_line.is_none()
        && held.epoch != 0
        && let Some(from) = held.checkpoint_before(u64::MAX)
    {
        let reach = Reach::of(spec.tail, spec.since_ns);
        let from_seq = match reach {
            Reach::Anchor => from.seq,
            Reach::Lines(n) => from.seq.saturating_sub(n),
            Reach::Since(_) => 0,
        };
        return Follow::Held {
            from,
            want: reach.want(),
            plan: Plan {
                epoch: held.epoch,
                start: from,
                from_seq,
                until_seq: None,
                after: None,
            },
        };
    }
    // Continuing what the relay holds: from the last line stamped before its last line's.
    match spec.after_line {
        Some(m) => Follow::NewEpoch {
            reach: Reach::Since(m.ns),
            after: Some(After {
                ns: m.ns,
                remaining: m.nth,
                older_seen: false,
            }),
        },
        None => Follow::NewEpoch {
            reach: Reach::of(spec.tail, spec.since_ns),
            after: None,
        },
    }
}

/// A new epoch placed, from its `anchor` and where the walk back from it ended (`start`):
/// `(anchor, start, from_seq)`. A walk that reached the start of the oldest file counted every
/// line there is: the numbering is shifted to begin at 0 there, as a reader starting at the
/// beginning would number.
pub fn place(anchor: Position, start: Position, from_seq: u64) -> (Position, Position, u64) {
    if start.index == 0 && start.offset == 0 {
        let shift = start.seq;
        return (
            Position {
                seq: anchor.seq - shift,
                ..anchor
            },
            Position { seq: 0, ..start },
            from_seq.saturating_sub(shift),
        );
    }
    (anchor, start, from_seq)
}

#[cfg(test)]
mod tests {
    use logrelay_wire::control::LineMark;

    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    fn cp(seq: u64, ino: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            seq,
            file: id(ino),
            offset,
        }
    }

    fn pos(index: usize, offset: u64, seq: u64) -> Position {
        Position { index, offset, seq }
    }

    /// Epoch 7 in files 10 (rotated) and 11, checkpoints at lines 100 (file 10), 150 and 180
    /// (file 11), and one at 90 in a file no longer held.
    fn held() -> Held {
        Held {
            epoch: 7,
            files: vec![id(10), id(11)],
            checkpoints: [
                cp(90, 9, 0),
                cp(100, 10, 0),
                cp(150, 11, 400),
                cp(180, 11, 900),
            ]
            .into(),
        }
    }

    fn at(epoch: u64, seq: u64) -> Option<SeqPos> {
        Some(SeqPos { epoch, seq })
    }

    #[test]
    fn the_checkpoint_before_a_line_is_the_newest_in_a_held_file() {
        let h = held();
        assert_eq!(h.checkpoint_before(179), Some(pos(1, 400, 150)));
        assert_eq!(h.checkpoint_before(180), Some(pos(1, 900, 180)));
        assert_eq!(h.checkpoint_before(120), Some(pos(0, 0, 100)));
        assert_eq!(h.checkpoint_before(95), None, "file 9 is no longer held");
    }

    #[test]
    fn a_backfill_to_a_join_point_reads_the_held_files() {
        let h = held();
        let until = |seq, spec: Demand| Demand {
            until: at(7, seq),
            ..spec
        };
        let plan = |start, from_seq| Plan {
            epoch: 7,
            start,
            from_seq,
            until_seq: Some(170),
            after: None,
        };
        // Up to the join point only.
        assert_eq!(
            plan_once(&h, &until(170, Demand::default())),
            Once::Ready(plan(pos(1, 400, 150), 170))
        );
        // From where the session is, in the same epoch.
        let resume = Demand {
            since_seq: at(7, 120),
            ..Demand::default()
        };
        assert_eq!(
            plan_once(&h, &until(170, resume)),
            Once::Ready(plan(pos(0, 0, 100), 120))
        );
        // The last 50 lines before it: 20 from the checkpoint, 30 more walking back.
        let tail = Demand {
            tail: Some(50),
            ..Demand::default()
        };
        assert_eq!(
            plan_once(&h, &until(170, tail.clone())),
            Once::Back {
                from: pos(1, 400, 150),
                want: Want::Lines(30),
                plan: plan(pos(1, 400, 150), 120),
            }
        );
        // Fewer than between the checkpoint and the join point: no walk needed.
        let few = Demand {
            tail: Some(5),
            ..Demand::default()
        };
        assert!(matches!(
            plan_once(&h, &until(170, few)),
            Once::Back {
                want: Want::Lines(0),
                plan: Plan { from_seq: 165, .. },
                ..
            }
        ));
        let since = Demand {
            since_ns: Some(1_000),
            ..Demand::default()
        };
        assert_eq!(
            plan_once(&h, &until(170, since)),
            Once::Back {
                from: pos(1, 400, 150),
                want: Want::Since(1_000),
                plan: plan(pos(1, 400, 150), 0),
            }
        );
    }

    #[test]
    fn a_join_point_in_an_epoch_not_held_sends_nothing() {
        let h = held();
        let spec = |until| Demand {
            until,
            tail: Some(10),
            ..Demand::default()
        };
        assert_eq!(plan_once(&h, &spec(at(8, 170))), Once::Nothing);
        assert_eq!(
            plan_once(&h, &spec(at(7, 95))),
            Once::Nothing,
            "no checkpoint"
        );
        assert_eq!(
            plan_once(&Held::default(), &spec(at(0, 5))),
            Once::Nothing,
            "epoch 0 is no epoch"
        );
    }

    #[test]
    fn a_backfill_without_a_join_point_resumes_or_reads_afresh() {
        let h = held();
        let resume = Demand {
            since_seq: at(7, 185),
            tail: Some(3),
            ..Demand::default()
        };
        assert_eq!(
            plan_once(&h, &resume),
            Once::Ready(Plan {
                epoch: 7,
                start: pos(1, 900, 180),
                from_seq: 185,
                until_seq: None,
                after: None,
            })
        );
        let other = Demand {
            since_seq: at(6, 185),
            tail: Some(3),
            ..Demand::default()
        };
        assert_eq!(plan_once(&h, &other), Once::Fresh(Reach::Lines(3)));
        let since = Demand {
            tail: Some(0),
            since_ns: Some(42),
            ..Demand::default()
        };
        assert_eq!(plan_once(&h, &since), Once::Fresh(Reach::Since(42)));
        assert_eq!(
            plan_once(&h, &Demand::default()),
            Once::Fresh(Reach::Anchor)
        );
    }

    #[test]
    fn a_live_demand_resumes_or_goes_on_in_the_epoch_held_or_starts_a_new_one() {
        let h = held();
        let resume = Demand {
            follow: true,
            since_seq: at(7, 160),
            ..Demand::default()
        };
        assert_eq!(
            plan_follow(&h, &resume, true),
            Follow::Resume(Plan {
                epoch: 7,
                start: pos(1, 400, 150),
                from_seq: 160,
                until_seq: None,
                after: None,
            })
        );
        let tail = Demand {
            follow: true,
            tail: Some(100),
            since_seq: at(3, 160),
            ..Demand::default()
        };
        // No position in the epoch held: on in it, 100 lines back from its newest checkpoint.
        assert_eq!(
            plan_follow(&h, &tail, true),
            Follow::Held {
                from: pos(1, 900, 180),
                want: Some(Want::Lines(100)),
                plan: Plan {
                    epoch: 7,
                    start: pos(1, 900, 180),
                    from_seq: 80,
                    until_seq: None,
                    after: None,
                },
            }
        );
        let now = Demand {
            follow: true,
            ..Demand::default()
        };
        assert_eq!(
            plan_follow(&h, &now, true),
            Follow::Held {
                from: pos(1, 900, 180),
                want: None,
                plan: Plan {
                    epoch: 7,
                    start: pos(1, 900, 180),
                    from_seq: 180,
                    until_seq: None,
                    after: None,
                },
            }
        );
        // Planning a new epoch again, or nothing held: a new epoch.
        assert_eq!(
            plan_follow(&h, &tail, false),
            Follow::NewEpoch {
                reach: Reach::Lines(100),
                after: None
            }
        );
        assert_eq!(
            plan_follow(&Held::default(), &tail, true),
            Follow::NewEpoch {
                reach: Reach::Lines(100),
                after: None
            }
        );
        // After a restart: on from the relay's last line, found by its time.
        let after = Demand {
            follow: true,
            tail: Some(100),
            after_line: Some(LineMark { ns: 5_000, nth: 2 }),
            ..Demand::default()
        };
        assert_eq!(
            plan_follow(&h, &after, true),
            Follow::NewEpoch {
                reach: Reach::Since(5_000),
                after: Some(After {
                    ns: 5_000,
                    remaining: 2,
                    older_seen: false
                })
            }
        );
    }

    #[test]
    fn a_reach_says_how_far_back_and_the_first_line_sent() {
        assert_eq!(Reach::of(Some(0), None), Reach::Anchor);
        assert_eq!(Reach::of(Some(5), Some(9)), Reach::Lines(5));
        assert_eq!(Reach::Lines(5).from_seq(), SEQ_BASE - 5);
        assert_eq!(Reach::Lines(5).want(), Some(Want::Lines(5)));
        assert_eq!(Reach::Since(9).from_seq(), 0);
        assert_eq!(Reach::Anchor.from_seq(), SEQ_BASE);
        assert_eq!(Reach::Anchor.want(), None);
    }

    #[test]
    fn a_walk_to_the_start_of_the_oldest_file_numbers_from_zero() {
        let anchor = pos(2, 700, SEQ_BASE);
        // Ten lines back, inside the newest file: numbered down from the anchor.
        let start = pos(2, 300, SEQ_BASE - 10);
        assert_eq!(
            place(anchor, start, SEQ_BASE - 10),
            (anchor, start, SEQ_BASE - 10)
        );
        // Back to the start of the oldest file, 40 lines: they are lines 0 to 39.
        let start = pos(0, 0, SEQ_BASE - 40);
        assert_eq!(
            place(anchor, start, SEQ_BASE - 100),
            (pos(2, 700, 40), pos(0, 0, 0), 0)
        );
        assert_eq!(
            place(anchor, start, SEQ_BASE - 30),
            (pos(2, 700, 40), pos(0, 0, 0), 10)
        );
    }
}
