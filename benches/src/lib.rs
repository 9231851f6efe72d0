//! Fixtures shared by the divan benchmarks in `benches/`: real log text (LogHub samples, see
//! `data/loghub/README.md`), CRI records made from it, and batches encoded the way the agent
//! encodes them.
//!
//! Run the benchmarks with `cargo bench -p logrelay-benches`; see `docs/benchmarks.md`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use logrelay_wire::batch::{BatchBuilder, LineFlags};

/// The LogHub samples bundled with the repository.
pub const LOGHUB: [&str; 3] = [
    include_str!("../../data/loghub/Apache_2k.log"),
    include_str!("../../data/loghub/HDFS_2k.log"),
    include_str!("../../data/loghub/Spark_2k.log"),
];

/// Every LogHub line, terminator kept, in file order.
pub fn loghub_lines() -> Vec<&'static [u8]> {
    LOGHUB
        .iter()
        .flat_map(|t| t.split_inclusive('\n'))
        .map(str::as_bytes)
        .collect()
}

/// A CRI record (`<RFC 3339 nanos> stdout F <message>`) per LogHub line.
pub fn cri_records() -> Vec<Vec<u8>> {
    loghub_lines()
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = format!(
                "2024-05-06T07:08:09.{:09}Z {} F ",
                i * 7919 % 1_000_000_000,
                if i % 5 == 0 { "stderr" } else { "stdout" }
            )
            .into_bytes();
            r.extend_from_slice(m);
            r
        })
        .collect()
}

/// Encodes LogHub lines into one batch of about `target_bytes`, as the agent flushes them.
/// Returns the batch and its line count.
pub fn batch_of(target_bytes: usize) -> (Bytes, u32) {
    let lines = loghub_lines();
    let mut b = BatchBuilder::new(1, 7, 0, 0, target_bytes);
    let mut ts = 1_700_000_000_000_000_000i64;
    for m in lines.iter().cycle() {
        if b.encoded_len() >= target_bytes {
            break;
        }
        ts += 1_000;
        b.push(ts, LineFlags::default(), m);
    }
    let n = b.len();
    (b.finish(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_well_formed() {
        assert_eq!(loghub_lines().len(), 6000);
        for r in cri_records().iter().take(100) {
            logrelay_agent::cri::parse(r).expect("fixture records parse");
        }
        let (b, n) = batch_of(64 * 1024);
        let (h, lines) = logrelay_wire::batch::lines(&b).unwrap();
        assert_eq!((h.count, lines.len()), (n, n as usize));
        assert!(b.len() >= 64 * 1024);
    }
}
