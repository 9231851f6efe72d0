//! CRI log parsing: `format::cri::parse` and the partial-record `Merger` on any bytes must not
//! panic, keep every message a sub-slice of its line, stay within `2 × max` bytes buffered, and
//! leave nothing behind after a flush. The tail's `RecordReader` must emit the same lines however
//! the bytes are cut into reads. The first input byte picks the maximum line length, so the
//! truncation paths are exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_agent::format::{Merger, cri};
use logrelay_agent::tail::reader::RecordReader;

fn zero() -> i64 {
    0
}

fuzz_target!(|data: &[u8]| {
    let Some((&max, data)) = data.split_first() else {
        return;
    };
    let max = usize::from(max);
    let mut merger = Merger::new(max);
    let mut out = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        if let Ok(rec) = cri::parse(line) {
            // A parsed message is always a sub-slice of the line.
            assert!(rec.message.len() < line.len());
            merger.push(rec, &mut out);
        }
        assert!(merger.buffered_bytes() <= 2 * max);
    }
    merger.flush(&mut out);
    assert_eq!(merger.buffered_bytes(), 0);
    assert!(out.iter().all(|l| l.message.len() <= max));

    // Whole, then cut in two at a point the data picks: the same numbered lines.
    let cut = data.len() / 2;
    let mut whole = Vec::new();
    let mut r = RecordReader::new(max, None, 0, 0).with_clock(zero);
    r.feed(data, &mut whole);
    r.end_of_file(&mut whole, None);
    let mut parts = Vec::new();
    let mut r = RecordReader::new(max, None, 0, 0).with_clock(zero);
    r.feed(&data[..cut], &mut parts);
    r.feed(&data[cut..], &mut parts);
    r.end_of_file(&mut parts, None);
    assert_eq!(whole, parts);
    assert!(whole.iter().enumerate().all(|(i, l)| l.seq == i as u64));
});
