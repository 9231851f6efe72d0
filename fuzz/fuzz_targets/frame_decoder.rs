//! `FrameDecoder` fed the input in chunks of pseudo-random sizes (seeded by the first byte),
//! with a frame limit also taken from the first byte: it must never panic, never buffer a body
//! above the limit, and yield the same frames and error as when fed everything at once.
//! The data-stream preamble decoder gets the first bytes too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_wire::frame::{DataPreamble, FrameDecoder, FrameError, LEN_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    if let Ok(p) = DataPreamble::decode(&stream[..stream.len().min(DataPreamble::LEN)]) {
        assert_eq!(DataPreamble::decode(&p.encode()), Ok(p));
    }
    let max = 1 + u32::from(seed & 0x0f) * 97;
    let whole = decode(stream, max, std::iter::repeat(stream.len().max(1)));
    let mut x = u32::from(seed) | 1;
    let sizes = std::iter::from_fn(move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        Some(1 + (x >> 16) as usize % 23)
    });
    let chunked = decode(stream, max, sizes);
    assert_eq!(whole, chunked);
});

fn decode(
    stream: &[u8],
    max: u32,
    mut sizes: impl Iterator<Item = usize>,
) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).min(rest.len());
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max as usize);
                    frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        // Whatever is left is less than one whole frame.
        assert!(decoder.buffered() < LEN_BYTES + max as usize);
    }
    (frames, decoder.finish())
}
