//! Rotation decisions (pure): how rotated siblings of a log file are named, and what a follower
//! must do about the siblings that appeared since it last looked.
//!
//! kubelet rotates a container log (`pkg/kubelet/logs/container_log_manager.go`,
//! `rotateLatestLog`) by renaming `0.log` to `0.log.<YYYYMMDD-hhmmss>` and asking the runtime to
//! reopen `0.log`; at the next rotation it compresses every rotated file but the newest
//! (`compressLog`: write `<name>.tmp`, rename it to `<name>.gz`, delete `<name>`) and deletes the
//! oldest beyond `containerLogMaxFiles`. Docker's json-file driver renames `<id>-json.log` to
//! `.1`, `.1` to `.2`, and so on. `logrotate` with `copytruncate` copies the file to a rotated
//! name and truncates it in place.
//!
//! A follower holds every file it has opened, so a file renamed or deleted after it was opened is
//! still read to its end. What it can miss is a file it never opened: one created and rotated
//! away between two looks. [`reconcile`] works out, from the names that are new since the last
//! look, which files are such strangers (to open and read) and which are gone for good (to count
//! as lost: a compressed file's gzip trailer says how many bytes it held).

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::fingerprint::FileId;

/// Suffix kubelet gives compressed rotated logs.
pub const GZ_SUFFIX: &str = ".gz";
/// Suffix kubelet gives a compressed log while it is being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// Where a rotated sibling sits in the rotation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationKey {
    /// kubelet's timestamp suffix (`20240101-120000`): later sorts after.
    Stamp(String),
    /// Docker's numeric suffix (`.1` is the newest): higher sorts before.
    Number(u64),
}

impl Ord for RotationKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Stamp(a), Self::Stamp(b)) => a.cmp(b),
            (Self::Number(a), Self::Number(b)) => b.cmp(a),
            (Self::Number(_), Self::Stamp(_)) => Ordering::Less,
            (Self::Stamp(_), Self::Number(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for RotationKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a file next to the log file `base` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sibling {
    /// A rotated copy, still plain text.
    Rotated(RotationKey),
    /// A rotated copy, compressed.
    Compressed(RotationKey),
}

/// Classifies `name` relative to the log file `base` (`0.log`); `None` for anything that is not
/// a rotated copy of it (including kubelet's `.tmp` files).
pub fn classify(base: &str, name: &str) -> Option<Sibling> {
    let suffix = name.strip_prefix(base)?.strip_prefix('.')?;
    if suffix.is_empty() || suffix.ends_with(TMP_SUFFIX) {
        return None;
    }
    let (stem, compressed) = match suffix.strip_suffix(GZ_SUFFIX) {
        Some(s) => (s, true),
        None => (suffix, false),
    };
    if stem.is_empty() {
        return None;
    }
    let key = if stem.bytes().all(|b| b.is_ascii_digit()) && stem.len() < 10 {
        RotationKey::Number(stem.parse().ok()?)
    } else {
        RotationKey::Stamp(stem.to_owned())
    };
    Some(if compressed {
        Sibling::Compressed(key)
    } else {
        Sibling::Rotated(key)
    })
}

/// One rotated sibling as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// File name.
    pub name: String,
    /// Rotation order.
    pub key: RotationKey,
    /// Plain (with its identity) or compressed (with the uncompressed size from its trailer).
    pub kind: ListedKind,
}

/// What a listed sibling holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    /// Plain text.
    Plain {
        /// Its identity.
        id: FileId,
        /// Its size.
        size: u64,
    },
    /// Compressed; the uncompressed size and CRC-32 from its gzip trailer, if readable.
    Gz {
        /// Uncompressed bytes (`ISIZE`, modulo 2^32).
        isize: Option<u64>,
        /// CRC-32 of the uncompressed bytes.
        crc: Option<u32>,
    },
}

/// What the follower knew at its last look.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every sibling name listed so far.
    pub names: HashSet<String>,
    /// Every plain file identity listed or opened so far.
    pub ids: HashSet<FileId>,
    /// The identity the log path had at the last look (a file the follower holds).
    pub current: Option<FileId>,
}

/// What to do about the siblings that are new since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The file that was current at the last look was renamed to `name` and compressed since:
    /// the follower holds it, nothing is lost; `name` places it in rotation order.
    RenamedAway {
        /// Sibling name.
        name: String,
    },
    /// A file never opened: open it and read it whole, before the current file.
    Open {
        /// Sibling name.
        name: String,
    },
    /// The copy `copytruncate` made of the file being read: read it from `from` (where reading
    /// of the truncated original stopped) to its end.
    ReadCopy {
        /// Sibling name.
        name: String,
        /// Offset to continue at.
        from: u64,
    },
    /// The `copytruncate` copy of the file being read was compressed or deleted before the
    /// rest of it could be read: `bytes` past where reading stopped are lost.
    LostCopy {
        /// Sibling name.
        name: String,
        /// How many (0 when unknown).
        bytes: u64,
    },
    /// Bytes that were rotated away and compressed or deleted before being read.
    Lost {
        /// Sibling name.
        name: String,
        /// How many (0 when unknown).
        bytes: u64,
    },
}

/// Decides what to do about a new listing.
///
/// * `current_now`: the identity the log path has now (if it exists);
/// * `truncated_at`: set when the file being read was found truncated in place, with the offset
///   reading had reached;
/// * `held`: whether the follower holds (has open) a file;
/// * `is_previous`: whether a gzip trailer (size, CRC-32) matches the content of the file that
///   was current at the last look.
///
/// The file that was current at the last look may have been renamed (found by identity: the
/// follower holds it) and compressed since (found by its trailer: still held, nothing lost). The
/// first new sibling in rotation order may be the `copytruncate` copy of the file being read:
/// read on in it from `truncated_at`, or count it lost from there if already compressed. Every
/// other new sibling is a file the follower never saw: plain ones are opened, compressed ones
/// counted lost whole. `seen` is updated.
pub fn reconcile(
    seen: &mut Seen,
    listing: &[Listed],
    current_now: Option<FileId>,
    truncated_at: Option<u64>,
    held: impl Fn(FileId) -> bool,
    is_previous: impl Fn(u64, u32) -> bool,
) -> Vec<Action> {
    // New names, but not the compressed form of a file already seen (read, or held open).
    let mut fresh: Vec<&Listed> = listing
        .iter()
        .filter(|l| !seen.names.contains(&l.name))
        .filter(|l| {
            !(matches!(l.kind, ListedKind::Gz { .. })
                && l.name
                    .strip_suffix(GZ_SUFFIX)
                    .is_some_and(|stem| seen.names.contains(stem)))
        })
        .collect();
    fresh.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.name.cmp(&b.name)));
    let renamed_away = seen.current.is_some()
        && current_now != seen.current
        && !listing
            .iter()
            .any(|l| matches!(l.kind, ListedKind::Plain { id, .. } if Some(id) == seen.current));
    // Renamed and compressed: the compressed sibling whose trailer matches, else (no trailer to
    // compare) the first new one, as it was rotated first.
    let renamed_gz = if renamed_away {
        fresh
            .iter()
            .find(|l| {
                matches!(l.kind, ListedKind::Gz { isize: Some(n), crc: Some(c) } if is_previous(n, c))
            })
            .or_else(|| {
                fresh
                    .first()
                    .filter(|l| matches!(l.kind, ListedKind::Gz { crc: None, .. }))
            })
            .map(|l| l.name.clone())
    } else {
        None
    };
    let mut claim_copy = truncated_at;
    let mut actions = Vec::new();
    for (i, l) in fresh.iter().enumerate() {
        let first = i == 0;
        if renamed_gz.as_deref() == Some(&l.name) {
            // The file that was current, renamed then compressed: the follower holds it.
            actions.push(Action::RenamedAway {
                name: l.name.clone(),
            });
            claim_copy = None;
            continue;
        }
        match l.kind {
            // A held file renamed. (Docker's numbered names move at every rotation, so there a
            // known identity is an old file under a new name; kubelet's stamped names never
            // move, and an identity seen before may be a reused inode.)
            ListedKind::Plain { id, .. }
                if held(id) || (is_numbered(&l.key) && seen.ids.contains(&id)) => {}
            ListedKind::Plain { id, .. } => {
                seen.ids.insert(id);
                match claim_copy.take().filter(|_| first) {
                    Some(from) => actions.push(Action::ReadCopy {
                        name: l.name.clone(),
                        from,
                    }),
                    None => actions.push(Action::Open {
                        name: l.name.clone(),
                    }),
                }
            }
            ListedKind::Gz { isize, .. } => {
                if let Some(from) = claim_copy.take().filter(|_| first) {
                    actions.push(Action::LostCopy {
                        name: l.name.clone(),
                        bytes: isize.unwrap_or(0).saturating_sub(from),
                    });
                } else if !is_numbered(&l.key) {
                    // Docker's numbered names shift at every rotation, so a new `.N.gz` name is
                    // not a new file; kubelet's stamped names never move.
                    actions.push(Action::Lost {
                        name: l.name.clone(),
                        bytes: isize.unwrap_or(0),
                    });
                }
            }
        }
        claim_copy = None;
    }
    for l in listing {
        seen.names.insert(l.name.clone());
        if let ListedKind::Plain { id, .. } = l.kind {
            seen.ids.insert(id);
        }
    }
    seen.current = current_now;
    actions
}

fn is_numbered(key: &RotationKey) -> bool {
    matches!(key, RotationKey::Number(_))
}

/// The CRC-32 and uncompressed size (`ISIZE`) recorded in a gzip member's trailer (RFC 1952
/// §2.3.1), given the file's first two and last eight bytes; `None` if it is not gzip.
pub fn gzip_trailer(magic: [u8; 2], trailer: [u8; 8]) -> Option<(u32, u64)> {
    (magic == [0x1f, 0x8b]).then(|| {
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        (crc, u64::from(isize))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    fn plain(name: &str, ino: u64) -> Listed {
        Listed {
            name: name.into(),
            key: match classify("0.log", name).unwrap() {
                Sibling::Rotated(k) | Sibling::Compressed(k) => k,
            },
            kind: ListedKind::Plain {
                id: id(ino),
                size: 0,
            },
        }
    }

    fn gz(name: &str, isize: u64) -> Listed {
        Listed {
            kind: ListedKind::Gz {
                isize: Some(isize),
                crc: Some(isize as u32),
            },
            ..plain(name, 0)
        }
    }

    #[test]
    fn kubelet_and_docker_names() {
        let k = |s: &str| RotationKey::Stamp(s.into());
        assert_eq!(
            classify("0.log", "0.log.20240101-120000"),
            Some(Sibling::Rotated(k("20240101-120000")))
        );
        assert_eq!(
            classify("0.log", "0.log.20240101-120000.gz"),
            Some(Sibling::Compressed(k("20240101-120000")))
        );
        assert_eq!(classify("0.log", "0.log.20240101-120000.tmp"), None);
        assert_eq!(classify("0.log", "0.log"), None);
        assert_eq!(classify("0.log", "1.log"), None);
        assert_eq!(classify("0.log", "0.logx"), None);
        assert_eq!(
            classify("c-json.log", "c-json.log.2"),
            Some(Sibling::Rotated(RotationKey::Number(2)))
        );
        // Oldest first: earlier stamps, higher numbers.
        assert!(k("20240101-120000") < k("20240101-120001"));
        assert!(RotationKey::Number(2) < RotationKey::Number(1));
    }

    #[test]
    fn a_renamed_file_we_hold_needs_nothing() {
        let mut seen = Seen {
            current: Some(id(1)),
            ..Seen::default()
        };
        let held = |f: FileId| f == id(1);
        let a = reconcile(
            &mut seen,
            &[plain("0.log.20240101-001000", 1)],
            Some(id(2)),
            None,
            held,
            |_, _| false,
        );
        assert_eq!(a, []);
        // Later compressed: still nothing lost.
        let a = reconcile(
            &mut seen,
            &[gz("0.log.20240101-001000.gz", 10)],
            Some(id(2)),
            None,
            held,
            |_, _| false,
        );
        assert_eq!(a, []);
    }

    #[test]
    fn renamed_then_compressed_between_looks_is_still_ours() {
        let mut seen = Seen {
            current: Some(id(1)),
            ..Seen::default()
        };
        let listing = [
            gz("0.log.20240101-001000.gz", 10),
            plain("0.log.20240101-002000", 2),
            gz("0.log.20240101-001500.gz", 7),
        ];
        // The compressed file whose trailer matches the held one (10 bytes) is it.
        let a = reconcile(
            &mut seen,
            &listing,
            Some(id(3)),
            None,
            |f| f == id(1),
            |n, _| n == 10,
        );
        assert_eq!(
            a,
            [
                Action::RenamedAway {
                    name: "0.log.20240101-001000.gz".into()
                },
                Action::Lost {
                    name: "0.log.20240101-001500.gz".into(),
                    bytes: 7
                },
                Action::Open {
                    name: "0.log.20240101-002000".into()
                },
            ]
        );
        assert_eq!(seen.current, Some(id(3)));
    }

    #[test]
    fn copytruncate_copy_is_read_on_or_counted_from_where_reading_stopped() {
        let mut seen = Seen {
            current: Some(id(1)),
            ..Seen::default()
        };
        let a = reconcile(
            &mut seen,
            &[plain("0.log.20240101-001000", 5)],
            Some(id(1)),
            Some(40),
            |f| f == id(1),
            |_, _| false,
        );
        assert_eq!(
            a,
            [Action::ReadCopy {
                name: "0.log.20240101-001000".into(),
                from: 40
            }]
        );
        let a = reconcile(
            &mut seen,
            &[
                gz("0.log.20240101-002000.gz", 100),
                plain("0.log.20240101-003000", 6),
            ],
            Some(id(1)),
            Some(30),
            |f| f == id(1),
            |_, _| false,
        );
        assert_eq!(
            a,
            [
                Action::LostCopy {
                    name: "0.log.20240101-002000.gz".into(),
                    bytes: 70
                },
                Action::Open {
                    name: "0.log.20240101-003000".into()
                }
            ]
        );
    }

    #[test]
    fn gzip_trailers() {
        assert_eq!(
            gzip_trailer([0x1f, 0x8b], [9, 0, 0, 0, 1, 1, 0, 0]),
            Some((9, 257))
        );
        assert_eq!(gzip_trailer([0, 0], [0; 8]), None);
    }
}
