//! Regular expressions in selectors and line filters, bounded in size and linear in time.
//!
//! A [`LabelPattern`] must match a whole label value (`^(?:…)$`, as Prometheus label matchers
//! do). A [`LinePattern`] is a line filter: it must match somewhere in a log line's message
//! bytes. Both travel as their source string; parsing one compiles it under fixed limits, so a
//! pattern that arrives is either a usable matcher or a clear error. The `regex` crate runs in
//! time linear in the input (no backtracking), so a hostile pattern cannot stall the relay; the
//! limits bound what one pattern may cost in memory.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest label pattern source accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 253;

/// Longest line pattern source accepted, in bytes (as long as a `contains` filter).
pub const MAX_LINE_PATTERN_BYTES: usize = 1024;

/// Largest compiled program of one pattern, in bytes.
pub const MAX_COMPILED_BYTES: usize = 64 * 1024;

/// Largest lazy-DFA cache of one pattern, in bytes.
pub const MAX_DFA_CACHE_BYTES: usize = 256 * 1024;

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The source is longer than its limit ([`MAX_PATTERN_BYTES`] for a label,
    /// [`MAX_LINE_PATTERN_BYTES`] for a line).
    #[error("regular expression is longer than {max} bytes")]
    TooLong {
        /// The limit crossed.
        max: usize,
    },
    /// The source does not parse, or compiles to more than the limits allow.
    #[error("invalid regular expression `{pattern}`: {reason}")]
    Invalid {
        /// The pattern as given.
        pattern: String,
        /// What the regex compiler said.
        reason: String,
    },
}

/// Deepest nesting of groups and repetitions in a pattern.
const NEST_LIMIT: u32 = 32;

/// A pattern the regex compiler refused, with its reason in one line.
fn invalid(source: &str, e: regex::Error) -> PatternError {
    PatternError::Invalid {
        pattern: source.to_owned(),
        reason: match e {
            regex::Error::Syntax(s) => {
                let last = s.lines().last().unwrap_or_default();
                last.strip_prefix("error: ").unwrap_or(last).to_owned()
            }
            regex::Error::CompiledTooBig(n) => format!("compiles to more than {n} bytes"),
            other => other.to_string(),
        },
    }
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
            return Err(PatternError::TooLong {
                max: MAX_PATTERN_BYTES,
            });
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(MAX_COMPILED_BYTES)
            .dfa_size_limit(MAX_DFA_CACHE_BYTES)
            .nest_limit(NEST_LIMIT)
            .build()
            .map_err(|e| invalid(source, e))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }
}

/// A line filter: a regular expression that must match somewhere in a log line's message
/// (unanchored, over bytes, so lines that are not UTF-8 are matched too). The line's
/// terminator (LF, CRLF or CR) is not part of what is matched, so `error$` matches a line
/// ending in `error`. Compiled under the same limits as a [`LabelPattern`], from at most
/// [`MAX_LINE_PATTERN_BYTES`] of source.
#[derive(Clone)]
pub struct LinePattern {
    source: String,
    regex: regex::bytes::Regex,
}

impl LinePattern {
    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern matches somewhere in `message`, its line terminator left out.
    pub fn matches(&self, message: &[u8]) -> bool {
        let body = message
            .strip_suffix(b"\n")
            .map(|m| m.strip_suffix(b"\r").unwrap_or(m))
            .or_else(|| message.strip_suffix(b"\r"))
            .unwrap_or(message);
        self.regex.is_match(body)
    }
}

impl FromStr for LinePattern {
    type Err = PatternError;

    fn from_str(source: &str) -> Result<Self, PatternError> {
        if source.len() > MAX_LINE_PATTERN_BYTES {
            return Err(PatternError::TooLong {
                max: MAX_LINE_PATTERN_BYTES,
            });
        }
        let regex = regex::bytes::RegexBuilder::new(source)
            .size_limit(MAX_COMPILED_BYTES)
            .dfa_size_limit(MAX_DFA_CACHE_BYTES)
            .nest_limit(NEST_LIMIT)
            .build()
            .map_err(|e| invalid(source, e))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }
}

/// Equality, `Debug` and serde for a pattern type: both go by the source string, and
/// deserializing compiles it (so a bad pattern is a decoding error naming it).
macro_rules! pattern_traits {
    ($t:ident) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.source == other.source
            }
        }

        impl Eq for $t {}

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($t)).field(&self.source).finish()
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.source)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let source = std::borrow::Cow::<'de, str>::deserialize(d)?;
                source.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pattern_traits!(LabelPattern);
pattern_traits!(LinePattern);

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
            Err(PatternError::TooLong {
                max: MAX_PATTERN_BYTES
            })
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

    #[test]
    fn a_line_pattern_matches_anywhere_in_the_message() {
        let p: LinePattern = r"ERROR|panic(ked)? at".parse().unwrap();
        assert!(p.matches(b"2024 ERROR disk full\n"));
        assert!(p.matches(b"thread main panicked at src/x.rs\n"));
        assert!(!p.matches(b"INFO all good\n"));
        // Bytes, not text: a line that is not UTF-8 is still matched.
        assert!(p.matches(b"\xff\xfe ERROR\n"));
        assert_eq!(p.as_str(), r"ERROR|panic(ked)? at");
    }

    #[test]
    fn a_line_pattern_sees_the_message_without_its_terminator() {
        let p: LinePattern = "full$".parse().unwrap();
        for line in [
            &b"disk full\n"[..],
            b"disk full\r\n",
            b"disk full\r",
            b"disk full",
        ] {
            assert!(p.matches(line), "{line:?}");
        }
        assert!(!p.matches(b"disk full now\n"));
        let p: LinePattern = "^$".parse().unwrap();
        assert!(p.matches(b"\n") && !p.matches(b" \n"));
    }

    #[test]
    fn a_line_pattern_is_bounded_and_refused_with_a_reason() {
        let long = "a".repeat(MAX_LINE_PATTERN_BYTES + 1);
        assert_eq!(
            long.parse::<LinePattern>(),
            Err(PatternError::TooLong {
                max: MAX_LINE_PATTERN_BYTES
            })
        );
        assert!(
            long[1..].parse::<LinePattern>().is_ok(),
            "1024 bytes are fine"
        );
        let e = "(a+".parse::<LinePattern>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid regular expression `(a+`:"),
            "{e}"
        );
        let e = r"\w{200}\w{200}\w{200}".parse::<LinePattern>().unwrap_err();
        assert!(e.to_string().contains("compiles to more than"), "{e}");
        let p: LinePattern = serde_json::from_str(r#""a.c""#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""a.c""#);
        let e = serde_json::from_str::<LinePattern>(r#""[z-a]""#).unwrap_err();
        assert!(
            e.to_string().contains("invalid regular expression `[z-a]`"),
            "{e}"
        );
    }
}
