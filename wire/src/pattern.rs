//! Regular expressions in selectors, bounded in size and linear in time.
//!
//! A [`LabelPattern`] must match a whole label value (`^(?:…)$`, as Prometheus label matchers
//! do). It travels as its source string; parsing it compiles it under fixed limits, so a
//! selector that arrives is either a usable matcher or a clear error. The `regex` crate runs in
//! time linear in the input (no backtracking), so a hostile pattern cannot stall the relay; the
//! limits bound what one pattern may cost in memory.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest pattern source accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 253;

/// Largest compiled program of one pattern, in bytes.
pub const MAX_COMPILED_BYTES: usize = 64 * 1024;

/// Largest lazy-DFA cache of one pattern, in bytes.
pub const MAX_DFA_CACHE_BYTES: usize = 256 * 1024;

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The source is longer than [`MAX_PATTERN_BYTES`].
    #[error("regular expression is longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong,
    /// The source does not parse, or compiles to more than the limits allow.
    #[error("invalid regular expression `{pattern}`: {reason}")]
    Invalid {
        /// The pattern as given.
        pattern: String,
        /// What the regex compiler said.
        reason: String,
    },
}

/// A regular expression that must match a whole label value.
#[derive(Clone)]
pub struct LabelPattern {
    source: String,
    regex: regex::Regex,
}

impl LabelPattern {
    /// The pattern as given (without the anchors added to it).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the whole of `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl FromStr for LabelPattern {
    type Err = PatternError;

    fn from_str(source: &str) -> Result<Self, PatternError> {
        if source.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong);
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(MAX_COMPILED_BYTES)
            .dfa_size_limit(MAX_DFA_CACHE_BYTES)
            .nest_limit(32)
            .build()
            .map_err(|e| PatternError::Invalid {
                pattern: source.to_owned(),
                reason: match e {
                    regex::Error::Syntax(s) => {
                        let last = s.lines().last().unwrap_or_default();
                        last.strip_prefix("error: ").unwrap_or(last).to_owned()
                    }
                    regex::Error::CompiledTooBig(n) => {
                        format!("compiles to more than {n} bytes")
                    }
                    other => other.to_string(),
                },
            })?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }
}

impl PartialEq for LabelPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for LabelPattern {}

impl fmt::Debug for LabelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LabelPattern").field(&self.source).finish()
    }
}

impl Serialize for LabelPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for LabelPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = std::borrow::Cow::<'de, str>::deserialize(d)?;
        source.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_values_only() {
        let p: LabelPattern = "train-.*|eval".parse().unwrap();
        assert!(p.matches("train-0"));
        assert!(p.matches("eval"));
        assert!(!p.matches("evaluate"), "anchored at both ends");
        assert!(!p.matches("pre-train-0"));
        assert_eq!(p.as_str(), "train-.*|eval");
    }

    #[test]
    fn refused_with_a_reason() {
        assert_eq!(
            "x".repeat(MAX_PATTERN_BYTES + 1).parse::<LabelPattern>(),
            Err(PatternError::TooLong)
        );
        let e = "train-(".parse::<LabelPattern>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid regular expression `train-(`"),
            "{e}"
        );
        // Small to write, huge to compile: refused, not built.
        let e = r"\w{200}\w{200}\w{200}"
            .parse::<LabelPattern>()
            .unwrap_err();
        assert!(e.to_string().contains("compiles to more than"), "{e}");
    }

    #[test]
    fn travels_as_its_source() {
        let p: LabelPattern = serde_json::from_str(r#""a|b""#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""a|b""#);
        let e = serde_json::from_str::<LabelPattern>(r#""(""#).unwrap_err();
        assert!(e.to_string().contains("invalid regular expression"), "{e}");
    }
}
