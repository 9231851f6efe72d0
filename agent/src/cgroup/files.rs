//! Parsers of the cgroup v2 interface files the agent reads (pure).
//!
//! Formats from the kernel's `Documentation/admin-guide/cgroup-v2.rst`: "flat keyed"
//! (`cpu.stat`, `memory.stat`: `KEY VALUE` per line), single values (`memory.current`,
//! `memory.max`: a number or `max`) and `cpu.max` (`$MAX $PERIOD`).

/// `cpu.stat`, the fields used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStat {
    /// Total CPU time, microseconds.
    pub usage_usec: u64,
    /// User CPU time, microseconds.
    pub user_usec: u64,
    /// System CPU time, microseconds.
    pub system_usec: u64,
    /// Periods in which the group was throttled (only with a CPU limit).
    pub nr_throttled: u64,
    /// Time throttled, microseconds (only with a CPU limit).
    pub throttled_usec: u64,
}

/// The `KEY VALUE` pairs of a flat-keyed file; lines that are not a key and a number are
/// skipped.
pub fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_ascii_whitespace();
        let (k, v) = (it.next()?, it.next()?);
        Some((k, v.parse().ok()?))
    })
}

/// Parses `cpu.stat`; `None` without a `usage_usec` line.
pub fn cpu_stat(text: &str) -> Option<CpuStat> {
    let mut s = CpuStat::default();
    let mut seen = false;
    for (k, v) in flat_keyed(text) {
        match k {
            "usage_usec" => {
                s.usage_usec = v;
                seen = true;
            }
            "user_usec" => s.user_usec = v,
            "system_usec" => s.system_usec = v,
            "nr_throttled" => s.nr_throttled = v,
            "throttled_usec" => s.throttled_usec = v,
            _ => {}
        }
    }
    seen.then_some(s)
}

/// The value of `key` in a flat-keyed file (`memory.stat`).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    flat_keyed(text).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// A single-value file with a `max` meaning "no limit" (`memory.max`): `Some(None)` for `max`,
/// `Some(Some(n))` for a number, `None` if malformed.
pub fn limit(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// A single number (`memory.current`).
pub fn value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `cpu.max`: `$MAX $PERIOD`, `$MAX` being `max` without a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Quota per period, microseconds; `None` = no limit.
    pub quota_usec: Option<u64>,
    /// Period, microseconds.
    pub period_usec: u64,
}

impl CpuMax {
    /// The limit in cores (`quota / period`), if any.
    pub fn cores(&self) -> Option<f64> {
        match (self.quota_usec, self.period_usec) {
            (Some(q), p) if p > 0 => Some(q as f64 / p as f64),
            _ => None,
        }
    }
}

/// Parses `cpu.max`.
pub fn cpu_max(text: &str) -> Option<CpuMax> {
    let mut it = text.split_ascii_whitespace();
    let quota = match it.next()? {
        "max" => None,
        q => Some(q.parse().ok()?),
    };
    let period_usec = match it.next() {
        Some(p) => p.parse().ok()?,
        None => 100_000,
    };
    Some(CpuMax {
        quota_usec: quota,
        period_usec,
    })
}

/// Memory working set as kubelet reports it (via cAdvisor): usage minus inactive file pages,
/// floored at 0 (`memory.current` − `memory.stat` `inactive_file`).
pub fn working_set(current: u64, inactive_file: u64) -> u64 {
    current.saturating_sub(inactive_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_as_the_kernel_writes_it() {
        let text = "usage_usec 2613385805\nuser_usec 2114738713\nsystem_usec 498647092\n\
                    core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 3\nthrottled_usec 4500\n\
                    nr_bursts 0\nburst_usec 0\n";
        assert_eq!(
            cpu_stat(text),
            Some(CpuStat {
                usage_usec: 2_613_385_805,
                user_usec: 2_114_738_713,
                system_usec: 498_647_092,
                nr_throttled: 3,
                throttled_usec: 4500,
            })
        );
        assert_eq!(cpu_stat("user_usec 5\n"), None);
        assert_eq!(cpu_stat(""), None);
    }

    #[test]
    fn memory_files() {
        let stat = "anon 1000\nfile 5000\nactive_file 3000\ninactive_file 2000\nslab 7\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(2000));
        assert_eq!(stat_value(stat, "missing"), None);
        assert_eq!(value("123456\n"), Some(123_456));
        assert_eq!(value("x"), None);
        assert_eq!(limit("max\n"), Some(None));
        assert_eq!(limit("536870912\n"), Some(Some(536_870_912)));
        assert_eq!(limit("lots"), None);
        assert_eq!(working_set(10_000, 2_000), 8_000);
        assert_eq!(working_set(1_000, 2_000), 0);
    }

    #[test]
    fn cpu_max_in_cores() {
        assert_eq!(cpu_max("max 100000\n").unwrap().cores(), None);
        assert_eq!(cpu_max("50000 100000\n").unwrap().cores(), Some(0.5));
        assert_eq!(cpu_max("200000 100000").unwrap().cores(), Some(2.0));
        assert_eq!(cpu_max("150000").unwrap().cores(), Some(1.5));
        assert_eq!(cpu_max("x 1"), None);
        assert_eq!(cpu_max(""), None);
    }
}
