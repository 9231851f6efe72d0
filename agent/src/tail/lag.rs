//! Which lines `logrelay_agent_read_lag_seconds` observes, and what it observes. Pure: the
//! follower gives the read time.
//!
//! A line's read lag is the time from its record's own timestamp (the CRI time, Docker
//! json-file `time`: written by the container runtime as it appends the record) to the time
//! the follower read it, both on the node's clock. It is only known for those formats: a
//! plain-text line is stamped with its read time, so it is not observed. A follower's backlog
//! (the lines it reads before it first reaches the end of the file: a `tail`, a `since_ns`, a
//! resume) is old by design and is not observed either; lines read after that are.

use logrelay_wire::time::lag_seconds;

use super::reader::TailLine;
use crate::format::Format;

/// One follower's read lag observations.
#[derive(Debug, Default)]
pub struct ReadLag {
    /// The follower has reached the end of its file once: what it reads now is live.
    live: bool,
}

impl ReadLag {
    /// A poll read `lines` at `now_ns` from a file in `format` (`None`: not yet known), and
    /// reached the end of the file (`reached_end`) or not: hands `observe` the read lag of
    /// each line that tells it, in seconds (0 when the record's time is after `now_ns`).
    pub fn poll(
        &mut self,
        format: Option<Format>,
        lines: &[TailLine],
        now_ns: i64,
        reached_end: bool,
        mut observe: impl FnMut(f64),
    ) {
        if self.live && matches!(format, Some(Format::Cri | Format::DockerJson)) {
            for l in lines {
                observe(lag_seconds(l.timestamp_ns, now_ns));
            }
        }
        self.live |= reached_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(timestamp_ns: i64) -> TailLine {
        TailLine {
            seq: 0,
            timestamp_ns,
            flags: 0,
            message: bytes::Bytes::from_static(b"x\n"),
        }
    }

    fn poll(lag: &mut ReadLag, format: Format, ts: &[i64], now: i64, end: bool) -> Vec<f64> {
        let lines: Vec<_> = ts.iter().map(|&t| line(t)).collect();
        let mut got = Vec::new();
        lag.poll(Some(format), &lines, now, end, |s| got.push(s));
        got
    }

    #[test]
    fn the_backlog_is_not_observed_the_lines_after_it_are() {
        let s = 1_000_000_000;
        let mut lag = ReadLag::default();
        // A backlog read in two polls: hours old, not observed.
        assert!(poll(&mut lag, Format::Cri, &[0, s], 3600 * s, false).is_empty());
        assert!(poll(&mut lag, Format::Cri, &[2 * s], 3600 * s, true).is_empty());
        // Then live lines: each one's record time to the read.
        let got = poll(
            &mut lag,
            Format::Cri,
            &[10 * s, 11 * s],
            12 * s + s / 2,
            false,
        );
        assert_eq!(got, vec![2.5, 1.5]);
        assert_eq!(
            poll(&mut lag, Format::DockerJson, &[10 * s], 10 * s, true),
            vec![0.0]
        );
        // A record stamped after the read (a runtime clock ahead): 0.
        assert_eq!(
            poll(&mut lag, Format::Cri, &[9 * s], 8 * s, true),
            vec![0.0]
        );
    }

    #[test]
    fn plain_text_and_unknown_formats_are_not_observed() {
        let mut lag = ReadLag::default();
        lag.poll(None, &[], 0, true, |_| panic!("nothing read"));
        lag.poll(None, &[line(1)], 5, true, |_| panic!("format unknown"));
        assert!(poll(&mut lag, Format::Plain, &[1, 2], 5, true).is_empty());
    }
}
