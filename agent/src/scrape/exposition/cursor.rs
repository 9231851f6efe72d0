//! Byte-level lexing shared by both flavors: names, label sets, quoted
//! values, numbers and timestamps.

use memchr::{memchr, memchr2};

use super::Limits;
use super::error::{ParseError, clip};

/// Labels as they come out of a label set.
pub(super) type Labels = Vec<(String, String)>;

/// A position in one line (without its `\n`).
#[derive(Debug)]
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    line: usize,
}

/// Space or tab: the 0.0.4 token separators.
pub(super) fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading blanks.
pub(super) fn trim_start_blanks(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_blank(b)).count();
    &s[n..]
}

/// `s` without leading and trailing blanks.
pub(super) fn trim_blanks(s: &[u8]) -> &[u8] {
    let s = trim_start_blanks(s);
    let n = s.iter().rev().take_while(|&&b| is_blank(b)).count();
    &s[..s.len() - n]
}

/// Splits `s` at its first blank: (token, rest starting at the blank).
pub(super) fn split_blank(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|&&b| !is_blank(b)).count();
    s.split_at(n)
}

fn is_metric_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `true` if all of `s` is a metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(super) fn is_metric_name(s: &[u8]) -> bool {
    matches!(s.first(), Some(b) if !b.is_ascii_digit()) && s.iter().all(|&b| is_metric_name_char(b))
}

/// `true` if all of `s` is made of metric-name characters (an OpenMetrics unit).
pub(super) fn is_metric_name_chars(s: &[u8]) -> bool {
    s.iter().all(|&b| is_metric_name_char(b))
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`, which is line number `line`.
    pub(super) fn new(buf: &'a [u8], line: usize) -> Self {
        Cursor { buf, pos: 0, line }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Consumes `b` if it is next.
    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    /// Everything not consumed yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    /// Consumes a token: everything up to the next space (and tab, with
    /// `tabs_too`) or the end of the line. Possibly empty.
    pub(super) fn token(&mut self, tabs_too: bool) -> &'a [u8] {
        if tabs_too {
            self.take_while(|b| !is_blank(b))
        } else {
            self.take_while(|b| b != b' ')
        }
    }

    /// Consumes a metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    pub(super) fn metric_name(&mut self) -> Result<&'a str, ParseError> {
        let line = self.line;
        let s = self.take_while(is_metric_name_char);
        if !is_metric_name(s) {
            return Err(ParseError::InvalidMetricName { line });
        }
        // ASCII by construction, so this never fails.
        std::str::from_utf8(s).map_err(|_| ParseError::InvalidMetricName { line })
    }

    /// Consumes a label name, `[a-zA-Z_][a-zA-Z0-9_]*`.
    fn label_name(&mut self) -> Result<&'a str, ParseError> {
        let line = self.line;
        let s = self.take_while(is_label_name_char);
        match s.first() {
            Some(b) if !b.is_ascii_digit() => {
                std::str::from_utf8(s).map_err(|_| ParseError::InvalidLabelName { line })
            }
            _ => Err(ParseError::InvalidLabelName { line }),
        }
    }

    /// Consumes a label set starting at `{`.
    ///
    /// `lenient` (0.0.4) allows blanks around every token and one trailing
    /// comma, per the 0.0.4 EBNF `[ "," ] "}"`; without it (the OpenMetrics ABNF
    /// `"{" [label *(COMMA label)] "}"`) neither is allowed. `{}` is accepted
    /// in both. `limits` (sample labels only) bounds the label count and the
    /// value lengths.
    pub(super) fn labels(
        &mut self,
        lenient: bool,
        limits: Option<&Limits>,
    ) -> Result<Labels, ParseError> {
        let line = self.line;
        let malformed = |reason| ParseError::MalformedLabels { line, reason };
        if !self.eat(b'{') {
            return Err(malformed("expected '{'"));
        }
        let mut labels: Labels = Vec::new();
        let mut after_comma = false;
        loop {
            if lenient {
                self.skip_blanks();
            }
            match self.peek() {
                Some(b'}') => {
                    if after_comma && !lenient {
                        return Err(malformed("trailing comma"));
                    }
                    self.pos += 1;
                    break;
                }
                None => return Err(malformed("missing '}'")),
                _ => {}
            }
            let name = self.label_name()?;
            if lenient {
                self.skip_blanks();
            }
            if !self.eat(b'=') {
                return Err(malformed("expected '=' after the label name"));
            }
            if lenient {
                self.skip_blanks();
            }
            if !self.eat(b'"') {
                return Err(malformed("expected '\"' to open the label value"));
            }
            let value = self.quoted_value()?;
            if let Some(limits) = limits {
                let max = limits.max_labels_per_sample;
                if max != 0 && labels.len() >= max {
                    return Err(ParseError::TooManyLabels { line, limit: max });
                }
                let max = limits.max_label_value_bytes;
                if max != 0 && value.len() > max {
                    return Err(ParseError::LabelValueTooLong {
                        line,
                        name: clip(name),
                        len: value.len(),
                        limit: max,
                    });
                }
            }
            labels.push((name.to_owned(), value));
            if lenient {
                self.skip_blanks();
            }
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    after_comma = true;
                }
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                None => return Err(malformed("missing '}'")),
                Some(_) => return Err(malformed("expected ',' or '}' after a label value")),
            }
        }
        if let Some(name) = find_duplicate(&labels) {
            return Err(ParseError::DuplicateLabel {
                line,
                name: clip(name),
            });
        }
        Ok(labels)
    }

    /// Consumes a label value after its opening `"`, through the closing
    /// one, and unescapes it: `\\` → `\`, `\"` → `"`, `\n` → line feed. Any
    /// other backslash is kept as is (OpenMetrics ABNF `BS normal-char`; Prometheus
    /// does the same for 0.0.4).
    fn quoted_value(&mut self) -> Result<String, ParseError> {
        let line = self.line;
        let rest = self.rest();
        let mut out: Vec<u8> = Vec::new();
        let mut i = 0;
        loop {
            let Some(off) = memchr2(b'"', b'\\', &rest[i..]) else {
                return Err(ParseError::UnterminatedQuote { line });
            };
            let j = i + off;
            out.extend_from_slice(&rest[i..j]);
            if rest[j] == b'"' {
                self.pos += j + 1;
                return String::from_utf8(out).map_err(|_| ParseError::InvalidUtf8 { line });
            }
            match rest.get(j + 1) {
                Some(b'\\') => out.push(b'\\'),
                Some(b'"') => out.push(b'"'),
                Some(b'n') => out.push(b'\n'),
                Some(_) => {
                    out.push(b'\\');
                    i = j + 1;
                    continue;
                }
                None => return Err(ParseError::UnterminatedQuote { line }),
            }
            i = j + 2;
        }
    }
}

/// The first label name that occurs twice, in `O(n log n)` at worst.
fn find_duplicate(labels: &[(String, String)]) -> Option<&str> {
    if labels.len() <= 16 {
        for (i, (name, _)) in labels.iter().enumerate() {
            if labels[..i].iter().any(|(other, _)| other == name) {
                return Some(name);
            }
        }
        return None;
    }
    let mut names: Vec<&str> = labels.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Unescapes a HELP text: `\\` and `\n` in both flavors (0.0.4 "the
/// backslash and the line-feed characters have to be escaped as `\\` and
/// `\n`"), plus `\"` in OpenMetrics (`escaped-string`). Other backslashes are kept.
pub(super) fn unescape_help(
    text: &[u8],
    openmetrics: bool,
    line: usize,
) -> Result<String, ParseError> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(off) = memchr(b'\\', &text[i..]) {
        let j = i + off;
        out.extend_from_slice(&text[i..j]);
        match text.get(j + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'"') if openmetrics => out.push(b'"'),
            _ => {
                out.push(b'\\');
                i = j + 1;
                continue;
            }
        }
        i = j + 2;
    }
    out.extend_from_slice(&text[i..]);
    String::from_utf8(out).map_err(|_| ParseError::InvalidUtf8 { line })
}

/// Parses a sample or exemplar value.
///
/// 0.0.4: "represented as required by Go's `ParseFloat`"; OpenMetrics: `number`
/// (`realnumber`, `[SIGN] ("inf" / "infinity")`, `"nan"`, case-insensitive).
/// Rust's `f64::from_str` accepts exactly that decimal syntax and those
/// words; a signed NaN (which neither spec accepts) and out-of-range
/// literals such as `1e999` (Go: range error; OpenMetrics: "MUST fit within the
/// range of a 64-bit floating point value") are rejected. Go's hexadecimal
/// floats are not accepted.
pub(super) fn parse_float(token: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(token).ok()?;
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.len() != s.len() && unsigned.eq_ignore_ascii_case("nan") {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    if v.is_infinite() && !unsigned.starts_with(['i', 'I']) {
        return None;
    }
    Some(v)
}

/// Parses a 0.0.4 timestamp: an `int64` of milliseconds, Go `ParseInt`
/// syntax (optional sign, decimal digits).
pub(super) fn parse_millis(token: &[u8]) -> Option<i64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Parses an OpenMetrics timestamp (`realnumber` seconds, "Timestamps MUST be Unix
/// Epoch in seconds") into milliseconds, exactly in decimal (no float
/// rounding), truncated toward zero like Prometheus' `int64(ts * 1000)`.
/// `None` if the syntax is wrong or the result does not fit an `i64`.
pub(super) fn parse_seconds_as_millis(token: &[u8]) -> Option<i64> {
    let (negative, rest) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, token),
    };
    let (mantissa, exponent) = match rest.iter().position(|&b| b == b'e' || b == b'E') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.iter().position(|&b| b == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.iter().all(u8::is_ascii_digit)
        || !frac_part.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // Exponents beyond ±10^6 give 0 or overflow anyway; clamp to stay cheap.
    const EXP_CLAMP: i64 = 1_000_000;
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let (neg, digits) = match e.split_first() {
                Some((b'-', d)) => (true, d),
                Some((b'+', d)) => (false, d),
                _ => (false, e),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = digits
                .iter()
                .fold(0i64, |v, &d| (v * 10 + i64::from(d - b'0')).min(EXP_CLAMP));
            if neg { -v } else { v }
        }
    };
    // value = DIGITS × 10^(exponent − frac_len) seconds, so in milliseconds
    // the digits are scaled by 10^(exponent − frac_len + 3).
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let scale = exponent.saturating_sub(frac_len).saturating_add(3);
    let total = int_part.len() + frac_part.len();
    let keep = if scale >= 0 {
        total
    } else {
        total.saturating_sub(usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX))
    };
    let mut ms: i64 = 0;
    for &d in int_part.iter().chain(frac_part).take(keep) {
        ms = ms.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    if ms != 0 {
        // Overflows (and returns) within 19 rounds, whatever `scale` is.
        for _ in 0..scale.max(0) {
            ms = ms.checked_mul(10)?;
        }
    }
    Some(if negative { -ms } else { ms })
}
