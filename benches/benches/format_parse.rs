//! Parse + merge throughput of the agent's log formats (`logrelay_agent::format`) over
//! realistic 1 MiB container log buffers: CRI (1 line in 50 split into partial records) and
//! Docker json-file. Run with `cargo bench -p logrelay-benches --bench format_parse`; divan
//! reports bytes per second per core.

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use logrelay_agent::format::{Format, MergedLine, Parser};
use logrelay_agent::tail::reader::RecordReader;

fn main() {
    divan::main();
}

const TARGET: usize = 1 << 20;
const MAX_LINE: usize = 64 * 1024;

/// Tiny deterministic PRNG (xorshift64*), so the buffers are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// A log-message-like body of `len` bytes: words, some JSON-ish punctuation.
fn body(rng: &mut Rng, len: usize) -> String {
    const WORDS: &[&str] = &[
        "GET",
        "/api/v1/pods",
        "200",
        "took",
        "ms",
        "user=alice",
        "level=info",
        "msg=\"request",
        "done\"",
        "trace_id=4bf92f3577b34da6",
        "error:",
        "connection",
        "reset",
        "by",
        "peer",
        "retrying",
        "in",
        "5s",
        "{\"k\":\"v\"}",
        "\\path\\to",
        "\ttabbed",
    ];
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(WORDS[rng.range(0, WORDS.len())]);
        s.push(' ');
    }
    s.truncate(len);
    s
}

/// ~1 MiB of CRI records: 60–300 byte lines, 1 in 50 split into P+F records.
fn cri_buffer() -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(TARGET + 400);
    let mut ns = 0;
    while out.len() < TARGET {
        let stream = if rng.range(0, 10) == 0 {
            "stderr"
        } else {
            "stdout"
        };
        let prefix_len = "2024-05-01T12:00:00.000000000Z stdout F ".len();
        let len = rng.range(60, 301).saturating_sub(prefix_len + 1).max(1);
        let b = body(&mut rng, len);
        ns = (ns + rng.range(1, 100_000)) % 1_000_000_000;
        if rng.range(0, 50) == 0 {
            let cut = len / 2;
            out.extend_from_slice(
                format!("2024-05-01T12:00:00.{ns:09}Z {stream} P {}\n", &b[..cut]).as_bytes(),
            );
            out.extend_from_slice(
                format!("2024-05-01T12:00:00.{ns:09}Z {stream} F {}\n", &b[cut..]).as_bytes(),
            );
        } else {
            out.extend_from_slice(
                format!("2024-05-01T12:00:00.{ns:09}Z {stream} F {b}\n").as_bytes(),
            );
        }
    }
    out
}

/// ~1 MiB of Docker json-file records with the same kind of messages.
fn docker_buffer() -> Vec<u8> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(TARGET + 600);
    let mut ns = 0;
    while out.len() < TARGET {
        let stream = if rng.range(0, 10) == 0 {
            "stderr"
        } else {
            "stdout"
        };
        let len = rng.range(60, 301).saturating_sub(80).max(1);
        let b = body(&mut rng, len);
        let mut json = String::with_capacity(b.len() + 8);
        for c in b.chars() {
            match c {
                '"' => json.push_str("\\\""),
                '\\' => json.push_str("\\\\"),
                '\t' => json.push_str("\\t"),
                c => json.push(c),
            }
        }
        ns = (ns + rng.range(1, 100_000)) % 1_000_000_000;
        out.extend_from_slice(
            format!(
                r#"{{"log":"{json}\n","stream":"{stream}","time":"2024-05-01T12:00:00.{ns:09}Z"}}"#
            )
            .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

/// Feeds every line of `buf` to a fresh parser, draining output as a relay
/// would.
fn run(buf: &[u8], format: Format) -> usize {
    let mut parser = Parser::with_format(format, MAX_LINE);
    let mut out: Vec<MergedLine> = Vec::with_capacity(256);
    let mut emitted = 0;
    for line in buf.split_inclusive(|&b| b == b'\n') {
        parser.push_line(line, &mut out).expect("valid line");
        if out.len() >= 256 {
            emitted += out.len();
            out.clear();
        }
    }
    parser.flush(&mut out);
    emitted + out.len()
}

#[divan::bench]
fn cri(bencher: Bencher) {
    let buf = cri_buffer();
    bencher
        .counter(BytesCount::of_slice(&buf))
        .bench(|| run(black_box(&buf), Format::Cri));
}

#[divan::bench]
fn docker_json(bencher: Bencher) {
    let buf = docker_buffer();
    bencher
        .counter(BytesCount::of_slice(&buf))
        .bench(|| run(black_box(&buf), Format::DockerJson));
}

/// What the tail really runs per 64 KiB read: cut records, parse, merge, number lines.
#[divan::bench]
fn cri_record_reader(bencher: Bencher) {
    let buf = cri_buffer();
    bencher.counter(BytesCount::of_slice(&buf)).bench(|| {
        let mut reader = RecordReader::new(MAX_LINE, Some(Format::Cri), 0, 0);
        let mut out = Vec::with_capacity(1024);
        let mut emitted = 0;
        for chunk in black_box(&buf).chunks(64 * 1024) {
            reader.feed(chunk, &mut out);
            emitted += out.len();
            out.clear();
        }
        emitted
    });
}
