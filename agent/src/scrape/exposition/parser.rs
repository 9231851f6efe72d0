//! Line-level grammar of both flavors.

use memchr::memchr;

use super::cursor::{
    Cursor, Labels, is_blank, is_metric_name, is_metric_name_chars, parse_float, parse_millis,
    parse_seconds_as_millis, split_blank, trim_blanks, trim_start_blanks, unescape_help,
};
use super::error::{ParseError, clip};
use super::families::{Families, Meta};
use super::{Exemplar, Family, Flavor, Limits, MetricType, Sample};

/// OpenMetrics "Exemplars": "The combined length of the label names and values of
/// an Exemplar's LabelSet MUST NOT exceed 128 UTF-8 character code points."
const EXEMPLAR_MAX_CODE_POINTS: usize = 128;

/// What a line asks of the driver loop.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Eof,
}

#[derive(Debug)]
struct Parser<'l> {
    flavor: Flavor,
    limits: &'l Limits,
    families: Families,
    /// Samples seen so far, kept or not.
    samples: usize,
    /// Line of the first sample beyond `limits.max_samples`.
    over_limit_line: Option<usize>,
}

/// See [`super::parse`].
pub(super) fn parse(
    body: &[u8],
    flavor: Flavor,
    limits: &Limits,
) -> Result<Vec<Family>, ParseError> {
    let mut parser = Parser {
        flavor,
        limits,
        families: Families::default(),
        samples: 0,
        over_limit_line: None,
    };
    let mut pos = 0;
    let mut line_no = 0;
    let mut eof = false;
    while pos < body.len() {
        line_no += 1;
        let end = memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i);
        let line = &body[pos..end];
        pos = end + 1;
        let step = match flavor {
            Flavor::Prometheus004 => parser.line_004(line, line_no)?,
            Flavor::OpenMetrics1 => parser.line_om(line, line_no)?,
        };
        if step == Step::Eof {
            // OpenMetrics ABNF: `exposition = metricset HASH SP eof [ LF ]`.
            if pos < body.len() {
                return Err(ParseError::ContentAfterEof { line: line_no + 1 });
            }
            eof = true;
            break;
        }
    }
    if flavor == Flavor::OpenMetrics1 && !eof {
        return Err(ParseError::MissingEof { line: line_no + 1 });
    }
    if let Some(line) = parser.over_limit_line {
        return Err(ParseError::SampleLimitExceeded {
            line,
            limit: limits.max_samples,
            scraped: parser.samples,
        });
    }
    Ok(parser.families.finish())
}

impl Parser<'_> {
    /// One 0.0.4 line: "Empty lines are ignored", "Leading and trailing
    /// whitespace is ignored", `#` lines are comments unless `HELP`/`TYPE`.
    fn line_004(&mut self, line: &[u8], n: usize) -> Result<Step, ParseError> {
        // Leniency: a CRLF body parses as if it had LF line ends.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim_blanks(line);
        match line.first() {
            None => Ok(Step::Continue),
            Some(b'#') => self.comment_004(&line[1..], n),
            Some(_) => self.sample(line, n),
        }
    }

    /// A 0.0.4 comment after its `#`: "ignored unless the first token after
    /// `#` is either `HELP` or `TYPE`".
    fn comment_004(&mut self, rest: &[u8], n: usize) -> Result<Step, ParseError> {
        if !rest.first().is_some_and(|&b| is_blank(b)) {
            return Ok(Step::Continue); // `#` alone, or `#HELP`: one token, a plain comment
        }
        let (keyword, rest) = split_blank(trim_start_blanks(rest));
        let (name, rest) = split_blank(trim_start_blanks(rest));
        let rest = trim_start_blanks(rest);
        let meta = match keyword {
            b"HELP" => {
                // "All remaining tokens are considered the docstring".
                Meta::Help(unescape_help(rest, false, n)?)
            }
            b"TYPE" => {
                // "exactly two more tokens are expected".
                let (kind, extra) = split_blank(rest);
                if kind.is_empty() {
                    return Err(ParseError::InvalidMetadata {
                        line: n,
                        reason: "TYPE line without a type",
                    });
                }
                if !trim_start_blanks(extra).is_empty() {
                    return Err(ParseError::InvalidMetadata {
                        line: n,
                        reason: "extra token after the type",
                    });
                }
                Meta::Type(self.metric_type(kind, n)?)
            }
            _ => return Ok(Step::Continue),
        };
        let name = metric_name_token(name, n)?;
        self.families.metadata(n, name, meta)?;
        Ok(Step::Continue)
    }

    /// One OpenMetrics line: metadata, `# EOF`, or a sample; no empty lines, no
    /// other comments, single spaces.
    fn line_om(&mut self, line: &[u8], n: usize) -> Result<Step, ParseError> {
        match line.first() {
            None => Err(ParseError::EmptyLine { line: n }),
            Some(b'#') => self.metadata_om(line, n),
            Some(_) => self.sample(line, n),
        }
    }

    /// `# EOF`, or `metric-descriptor = HASH SP (type|help|unit) SP metricname SP ...`.
    fn metadata_om(&mut self, line: &[u8], n: usize) -> Result<Step, ParseError> {
        if line == b"# EOF" {
            return Ok(Step::Eof);
        }
        let rest = line
            .strip_prefix(b"# ")
            .ok_or(ParseError::InvalidComment { line: n })?;
        let (what, rest) = [&b"TYPE "[..], b"HELP ", b"UNIT "]
            .into_iter()
            .find_map(|keyword| Some((keyword, rest.strip_prefix(keyword)?)))
            .ok_or(ParseError::InvalidComment { line: n })?;
        let mut cur = Cursor::new(rest, n);
        let name = cur.metric_name()?;
        // The text after the single space that follows the name; a missing
        // text is read as an empty one.
        let text = match cur.peek() {
            None => &[][..],
            Some(b' ') => &cur.rest()[1..],
            Some(_) => return Err(ParseError::InvalidMetricName { line: n }),
        };
        let meta = match what {
            b"TYPE " => Meta::Type(self.metric_type(text, n)?),
            b"HELP " => {
                let help = unescape_help(text, true, n)?;
                if help.is_empty() {
                    // "The value of a UNIT or HELP line MAY be empty. This MUST
                    // be treated as if no metadata line for the MetricFamily existed."
                    return Ok(Step::Continue);
                }
                Meta::Help(help)
            }
            _ => {
                if text.is_empty() {
                    return Ok(Step::Continue);
                }
                // `HASH SP unit SP metricname SP *metricname-char LF`.
                if !is_metric_name_chars(text) {
                    return Err(ParseError::InvalidMetadata {
                        line: n,
                        reason: "a unit consists of metric-name characters only",
                    });
                }
                Meta::Unit(String::from_utf8_lossy(text).into_owned())
            }
        };
        self.families.metadata(n, name, meta)?;
        Ok(Step::Continue)
    }

    fn metric_type(&self, token: &[u8], n: usize) -> Result<MetricType, ParseError> {
        let token = String::from_utf8_lossy(token);
        MetricType::from_type_token(&token, self.flavor).ok_or_else(|| {
            ParseError::UnknownMetricType {
                line: n,
                kind: clip(&token),
            }
        })
    }

    /// A sample line.
    ///
    /// 0.0.4: `metric_name [ "{" labels [ "," ] "}" ] value [ timestamp ]`,
    /// tokens separated by any blanks. OpenMetrics: `metricname [labels] SP number
    /// [SP timestamp] [exemplar]`.
    fn sample(&mut self, line: &[u8], n: usize) -> Result<Step, ParseError> {
        let lenient = self.flavor == Flavor::Prometheus004;
        let mut cur = Cursor::new(line, n);
        let name = cur.metric_name()?;
        match cur.peek() {
            None | Some(b'{' | b' ') => {}
            Some(b'\t') if lenient => {}
            Some(_) => return Err(ParseError::InvalidMetricName { line: n }),
        }
        if lenient {
            cur.skip_blanks();
        }
        let labels = if cur.peek() == Some(b'{') {
            cur.labels(lenient, Some(self.limits))?
        } else {
            Vec::new()
        };
        if lenient {
            cur.skip_blanks();
        } else if !cur.eat(b' ') {
            return Err(if cur.at_end() {
                ParseError::InvalidValue { line: n }
            } else {
                ParseError::UnexpectedInput {
                    line: n,
                    reason: "expected a space before the value",
                }
            });
        } else if cur.peek() == Some(b' ') {
            return Err(ParseError::UnexpectedInput {
                line: n,
                reason: "doubled or trailing space",
            });
        }
        let value = parse_float(cur.token(lenient)).ok_or(ParseError::InvalidValue { line: n })?;
        let (timestamp_ms, exemplar) = if lenient {
            (tail_004(&mut cur, n)?, None)
        } else {
            tail_om(&mut cur, n)?
        };
        self.add_sample(
            n,
            Sample {
                name: name.to_owned(),
                labels,
                value,
                timestamp_ms,
                exemplar,
            },
        )?;
        Ok(Step::Continue)
    }

    fn add_sample(&mut self, n: usize, sample: Sample) -> Result<(), ParseError> {
        let idx = self.families.resolve(&sample.name);
        let (kind, suffix) = self.families.kind_and_suffix(idx, &sample.name);
        // 0.0.4 "Each bucket count of a histogram named x is given as a
        // separate sample line with the name x_bucket and a label {le="y"}";
        // "Each quantile of a summary named x is given as a separate sample
        // line with the same name x and a label {quantile="y"}". OpenMetrics says the
        // same for its Histogram, GaugeHistogram and Summary.
        let bound = match (kind, suffix) {
            (MetricType::Histogram | MetricType::GaugeHistogram, "_bucket") => Some("le"),
            (MetricType::Summary, "") => Some("quantile"),
            _ => None,
        };
        if let Some(label) = bound {
            let ok = sample
                .labels
                .iter()
                .find(|(name, _)| name == label)
                .is_some_and(|(_, value)| parse_float(value.as_bytes()).is_some());
            if !ok {
                return Err(ParseError::InvalidBoundLabel { line: n, label });
            }
        }
        self.samples += 1;
        let limit = self.limits.max_samples;
        let keep = limit == 0 || self.samples <= limit;
        if !keep && self.over_limit_line.is_none() {
            self.over_limit_line = Some(n);
        }
        self.families.push(idx, keep.then_some(sample));
        Ok(())
    }
}

/// Checks a metadata line's name token.
fn metric_name_token(token: &[u8], n: usize) -> Result<&str, ParseError> {
    if !is_metric_name(token) {
        return Err(ParseError::InvalidMetricName { line: n });
    }
    std::str::from_utf8(token).map_err(|_| ParseError::InvalidMetricName { line: n })
}

/// The rest of a 0.0.4 sample line after the value: an optional `int64`
/// millisecond timestamp.
fn tail_004(cur: &mut Cursor<'_>, n: usize) -> Result<Option<i64>, ParseError> {
    cur.skip_blanks();
    if cur.at_end() {
        return Ok(None);
    }
    let token = cur.token(true);
    if token.first() == Some(&b'#') {
        return Err(ParseError::InvalidExemplar {
            line: n,
            reason: "exemplars exist only in OpenMetrics",
        });
    }
    let ts = parse_millis(token).ok_or(ParseError::InvalidTimestamp { line: n })?;
    cur.skip_blanks();
    if !cur.at_end() {
        return Err(ParseError::UnexpectedInput {
            line: n,
            reason: "unexpected token after the timestamp",
        });
    }
    Ok(Some(ts))
}

/// The rest of an OpenMetrics sample line after the value:
/// `[SP timestamp] [SP HASH SP labels SP number [SP timestamp]]`.
fn tail_om(cur: &mut Cursor<'_>, n: usize) -> Result<(Option<i64>, Option<Exemplar>), ParseError> {
    let unexpected = |reason| ParseError::UnexpectedInput { line: n, reason };
    if !cur.eat(b' ') {
        // The value token ran to the end of the line.
        return Ok((None, None));
    }
    let token = cur.token(false);
    if token == b"#" {
        return Ok((None, Some(exemplar(cur, n)?)));
    }
    if token.is_empty() {
        return Err(unexpected("doubled or trailing space"));
    }
    let ts = parse_seconds_as_millis(token).ok_or(ParseError::InvalidTimestamp { line: n })?;
    if !cur.eat(b' ') {
        return Ok((Some(ts), None));
    }
    if cur.token(false) != b"#" {
        return Err(unexpected(
            "expected end of line or ' # ' and an exemplar after the timestamp",
        ));
    }
    Ok((Some(ts), Some(exemplar(cur, n)?)))
}

/// An OpenMetrics exemplar after its ` #`: `SP labels SP number [SP timestamp]`.
fn exemplar(cur: &mut Cursor<'_>, n: usize) -> Result<Exemplar, ParseError> {
    let invalid = |reason| ParseError::InvalidExemplar { line: n, reason };
    if !cur.eat(b' ') || cur.peek() != Some(b'{') {
        return Err(invalid("expected ' {' after '#'"));
    }
    let labels: Labels = cur.labels(false, None)?;
    let code_points: usize = labels
        .iter()
        .map(|(name, value)| name.len() + value.chars().count())
        .sum();
    if code_points > EXEMPLAR_MAX_CODE_POINTS {
        return Err(invalid("label names and values exceed 128 code points"));
    }
    if !cur.eat(b' ') {
        return Err(invalid("expected a space and a value after the labels"));
    }
    let value = parse_float(cur.token(false)).ok_or(invalid("invalid value"))?;
    let timestamp_ms = if cur.eat(b' ') {
        let ts = parse_seconds_as_millis(cur.token(false))
            .ok_or(ParseError::InvalidTimestamp { line: n })?;
        Some(ts)
    } else {
        None
    };
    if !cur.at_end() {
        return Err(ParseError::UnexpectedInput {
            line: n,
            reason: "unexpected input after the exemplar",
        });
    }
    Ok(Exemplar {
        labels,
        value,
        timestamp_ms,
    })
}
