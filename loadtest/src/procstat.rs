//! Process CPU and memory from `/proc`, and the machine the run is on.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcReading {
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>` (`pid` may be `"self"`); `None` once the process is gone.
pub fn read(pid: &str) -> Option<ProcReading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcReading {
        cpu_ticks: parse_stat_cpu_ticks(&stat)?,
        rss_bytes: parse_status_rss(&status)?,
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line (fields 14 and 15; the command name in
/// field 2 may hold spaces and parentheses, so fields are counted after its last `)`).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU used between two readings over `wall_secs`, in percent of one core.
pub fn cpu_percent(before: ProcReading, after: ProcReading, wall_secs: f64) -> f64 {
    if wall_secs <= 0.0 {
        return 0.0;
    }
    after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SEC / wall_secs * 100.0
}

/// The machine a run is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, bytes.
    pub mem_total_bytes: u64,
}

impl Machine {
    /// Reads this machine's description.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            mem_total_bytes: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024),
        }
    }
}

/// The first `model name` of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 1500 250 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1750));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_and_cpu() {
        assert_eq!(
            parse_status_rss("Name:\tx\nVmRSS:\t   2048 kB\nThreads: 3\n"),
            Some(2 * 1024 * 1024)
        );
        let a = ProcReading {
            cpu_ticks: 100,
            rss_bytes: 0,
        };
        let b = ProcReading {
            cpu_ticks: 250,
            rss_bytes: 0,
        };
        assert_eq!(cpu_percent(a, b, 2.0), 75.0);
        assert_eq!(cpu_percent(b, a, 2.0), 0.0);
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n").as_deref(),
            Some("AMD EPYC 7B13")
        );
    }

    #[test]
    fn this_process_is_readable() {
        let r = read("self").expect("/proc/self");
        assert!(r.rss_bytes > 0);
        assert!(Machine::this().nproc >= 1);
    }
}
