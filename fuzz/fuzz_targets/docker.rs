//! Docker json-file parsing: `format::docker::parse` on any bytes must not panic, unescaping
//! never grows the text, the `Parser` facade agrees with the bare parser, and partial records
//! merge within `2 × max` bytes with nothing left after a flush. The first input byte picks the
//! maximum line length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_agent::format::{Format, Merger, Parser, docker};

fuzz_target!(|data: &[u8]| {
    let Some((&max, data)) = data.split_first() else {
        return;
    };
    let max = usize::from(max);
    let mut merger = Merger::new(max);
    let mut parser = Parser::with_format(Format::DockerJson, max);
    let (mut out, mut via_parser) = (Vec::new(), Vec::new());
    for line in data.split_inclusive(|&b| b == b'\n') {
        let direct = docker::parse(line);
        // The facade must agree with the bare parser.
        assert_eq!(direct.is_ok(), parser.push_line(line, &mut via_parser).is_ok());
        if let Ok(rec) = direct {
            // Unescaping never grows the text.
            assert!(rec.message.len() <= line.len());
            merger.push(rec, &mut out);
        }
        assert!(merger.buffered_bytes() <= 2 * max);
    }
    merger.flush(&mut out);
    parser.flush(&mut via_parser);
    assert_eq!(merger.buffered_bytes(), 0);
    assert_eq!(out, via_parser);
});
