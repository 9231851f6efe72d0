//! Batch decoding: `BatchHeader::parse`, `batch::lines` and `gap_bytes` on any bytes must not
//! panic; a batch that decodes re-encodes (with `BatchBuilder`) to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_wire::batch::{self, BatchBuilder, BatchHeader, HEADER_LEN, Kind};

fuzz_target!(|data: &[u8]| {
    let header = BatchHeader::parse(data);
    if let Ok(h) = &header {
        // The relay computes this for every batch an agent sends.
        let _ = h.end_seq();
    }
    if let Ok(lost) = batch::gap_bytes(data) {
        let h = header.clone().expect("a gap has a valid header");
        assert_eq!(h.kind, Kind::Gap);
        let again = batch::encode_gap(h.stream, h.epoch, h.first_seq, h.count, lost);
        assert_eq!(&again[HEADER_LEN..], &data[HEADER_LEN..]);
    }
    if let Ok((h, lines)) = batch::lines(data) {
        assert_eq!(Ok(h), header);
        assert_eq!(lines.len(), h.count as usize);
        let mut b = BatchBuilder::new(h.stream, h.epoch, h.first_seq, h.flags, 0);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.seq, h.first_seq + i as u64);
            b.push(l.timestamp_ns, l.flags, l.message);
        }
        let again = b.finish();
        // Bytes 36..40 are reserved: written as zero, not checked on read.
        assert_eq!(&again[..36], &data[..36]);
        assert_eq!(&again[HEADER_LEN..], &data[HEADER_LEN..]);
    }
});
