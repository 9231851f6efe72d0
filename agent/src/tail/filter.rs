//! A demand's line filter (pure): which lines it wants, and how it keys followers.

use logrelay_wire::control::Demand;
use logrelay_wire::pattern::{LinePattern, PatternError};

use super::reader::TailLine;

/// A line filter as it keys followers: the substring, and the regular expression's source.
pub type FilterKey = (Option<Vec<u8>>, Option<String>);

/// The line filter of a demand, applied before encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Lines holding this substring only.
    pub contains: Option<Vec<u8>>,
    /// Lines matching this pattern only.
    pub matches: Option<LinePattern>,
    /// Lines stamped at or after this Unix time (ns) only.
    pub since_ns: Option<i64>,
}

impl Filter {
    /// The demand's filter, its regular expression compiled (the uplink refuses a demand whose
    /// pattern does not compile before it gets here: [`check_filter`]).
    pub fn of(spec: &Demand) -> Result<Self, PatternError> {
        let (contains, matches) = Self::key(spec);
        Ok(Self {
            contains,
            matches: matches.map(|m| m.parse::<LinePattern>()).transpose()?,
            since_ns: spec.since_ns,
        })
    }

    /// The demand's line filter as it keys followers: its substring and pattern source.
    pub fn key(spec: &Demand) -> FilterKey {
        (
            spec.contains
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(|c| c.as_bytes().to_vec()),
            spec.matches.clone().filter(|m| !m.is_empty()),
        )
    }

    /// Whether `line` passes.
    pub fn wants(&self, line: &TailLine) -> bool {
        self.since_ns.is_none_or(|s| line.timestamp_ns >= s)
            && self
                .contains
                .as_deref()
                .is_none_or(|c| memchr::memmem::find(&line.message, c).is_some())
            && self
                .matches
                .as_ref()
                .is_none_or(|m| m.matches(&line.message))
    }
}

/// Whether a log demand's line filter can be served: its regular expression (`matches`)
/// compiles. The uplink answers `open_failed` `bad_request` for that demand otherwise.
pub fn check_filter(spec: &Demand) -> Result<(), PatternError> {
    match spec.matches.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.parse::<LinePattern>().map(drop),
        None => Ok(()),
    }
}
