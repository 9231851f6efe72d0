//! Grouping of samples into metric families.

use std::collections::HashMap;

use super::error::{ParseError, clip};
use super::{Family, MetricType, Sample};

/// Every suffix any type gives its samples (OpenMetrics "Suffixes").
const ALL_SUFFIXES: [&str; 8] = [
    "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info",
];

/// A metadata line's content.
#[derive(Debug)]
pub(super) enum Meta {
    Type(MetricType),
    Help(String),
    Unit(String),
}

#[derive(Debug)]
struct State {
    family: Family,
    type_seen: bool,
    help_seen: bool,
    unit_seen: bool,
    /// Samples were seen (even if the sample limit kept them out).
    has_samples: bool,
}

/// Families in order of first appearance, with a name index.
#[derive(Debug, Default)]
pub(super) struct Families {
    states: Vec<State>,
    by_name: HashMap<String, usize>,
    /// The family of the last metadata or sample line: almost every sample
    /// belongs to it, so it is tried before any hashing.
    current: Option<usize>,
}

/// Whether a sample called `name` belongs to `family`.
fn accepts(family: &Family, name: &str) -> bool {
    match name.strip_prefix(family.name.as_str()) {
        Some("") => true,
        Some(suffix) => family.kind.sample_suffixes().contains(&suffix),
        None => false,
    }
}

impl Families {
    fn create(&mut self, name: &str) -> usize {
        let idx = self.states.len();
        self.states.push(State {
            family: Family {
                name: name.to_owned(),
                kind: MetricType::Unknown,
                help: None,
                unit: None,
                samples: Vec::new(),
            },
            type_seen: false,
            help_seen: false,
            unit_seen: false,
            has_samples: false,
        });
        self.by_name.insert(name.to_owned(), idx);
        idx
    }

    /// Records a `# TYPE`, `# HELP` or `# UNIT` line for family `name`.
    pub(super) fn metadata(
        &mut self,
        line: usize,
        name: &str,
        meta: Meta,
    ) -> Result<(), ParseError> {
        let idx = match self.by_name.get(name) {
            Some(&idx) => idx,
            None => self.create(name),
        };
        let state = &mut self.states[idx];
        if state.has_samples {
            return Err(ParseError::MetadataAfterSamples {
                line,
                name: clip(name),
            });
        }
        let duplicate = |what| ParseError::DuplicateMetadata {
            line,
            name: clip(name),
            what,
        };
        match meta {
            Meta::Type(kind) => {
                if std::mem::replace(&mut state.type_seen, true) {
                    return Err(duplicate("TYPE"));
                }
                state.family.kind = kind;
            }
            Meta::Help(text) => {
                if std::mem::replace(&mut state.help_seen, true) {
                    return Err(duplicate("HELP"));
                }
                state.family.help = Some(text);
            }
            Meta::Unit(unit) => {
                if std::mem::replace(&mut state.unit_seen, true) {
                    return Err(duplicate("UNIT"));
                }
                // OpenMetrics "an underscore and the unit MUST be the suffix of the
                // MetricFamily name".
                let ok = name
                    .strip_suffix(unit.as_str())
                    .is_some_and(|base| base.ends_with('_'));
                if !ok {
                    return Err(ParseError::UnitMismatch {
                        line,
                        name: clip(name),
                        unit: clip(&unit),
                    });
                }
                state.family.unit = Some(unit);
            }
        }
        self.current = Some(idx);
        Ok(())
    }

    /// The family a sample called `name` goes into: the current family if
    /// it accepts the name, else a family of exactly that name, else a
    /// declared family `base` with `name` = `base` + a suffix of its type,
    /// else a new [`MetricType::Unknown`] family named `name`.
    pub(super) fn resolve(&mut self, name: &str) -> usize {
        if let Some(idx) = self.current
            && accepts(&self.states[idx].family, name)
        {
            return idx;
        }
        let idx = self.lookup(name).unwrap_or_else(|| self.create(name));
        self.current = Some(idx);
        idx
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        if let Some(&idx) = self.by_name.get(name) {
            return Some(idx);
        }
        ALL_SUFFIXES.iter().find_map(|&suffix| {
            let base = name.strip_suffix(suffix)?;
            let &idx = self.by_name.get(base)?;
            self.states[idx]
                .family
                .kind
                .sample_suffixes()
                .contains(&suffix)
                .then_some(idx)
        })
    }

    /// Type of family `idx` and the suffix `name` has in it.
    pub(super) fn kind_and_suffix<'n>(&self, idx: usize, name: &'n str) -> (MetricType, &'n str) {
        let family = &self.states[idx].family;
        (
            family.kind,
            name.get(family.name.len()..).unwrap_or_default(),
        )
    }

    /// Marks family `idx` as having samples and keeps `sample` if given.
    pub(super) fn push(&mut self, idx: usize, sample: Option<Sample>) {
        let state = &mut self.states[idx];
        state.has_samples = true;
        if let Some(sample) = sample {
            state.family.samples.push(sample);
        }
    }

    pub(super) fn finish(self) -> Vec<Family> {
        self.states.into_iter().map(|state| state.family).collect()
    }
}
