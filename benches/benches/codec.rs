//! Codec benchmarks: batch encode and decode, CRI parsing, selector matching.
//!
//! `cargo bench -p logrelay-benches --bench codec`. The allocation profiler shows what each
//! operation allocates per iteration.

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use logrelay_benches::{batch_of, cri_records, loghub_lines};
use logrelay_wire::batch::{self, BatchBuilder, LineFlags};
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

/// Batch sizes: a small flush (input went idle) and the agent's 64 KiB cap.
const BATCH_BYTES: [usize; 2] = [4 * 1024, 64 * 1024];

/// Encoding LogHub lines into one batch of the given size (what the agent does per flush).
#[divan::bench(args = BATCH_BYTES)]
fn batch_encode(bencher: Bencher, target: usize) {
    let lines = loghub_lines();
    let (_, n) = batch_of(target);
    let used: Vec<&[u8]> = lines.iter().cycle().take(n as usize).copied().collect();
    let bytes: usize = used.iter().map(|m| m.len()).sum();
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(bytes))
        .bench_local(|| {
            let mut b = BatchBuilder::new(1, 7, 0, 0, target);
            for (i, m) in used.iter().enumerate() {
                b.push(i as i64, LineFlags::default(), m);
            }
            b.finish()
        });
}

/// Decoding every line record of a batch (what a subscriber does).
#[divan::bench(args = BATCH_BYTES)]
fn batch_decode(bencher: Bencher, target: usize) {
    let (b, n) = batch_of(target);
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(b.len()))
        .bench_local(|| batch::lines(black_box(&b)).expect("valid batch").1.len());
}

/// Parsing only the 40-byte routing header (all the relay reads of a batch).
#[divan::bench]
fn batch_header_parse(bencher: Bencher) {
    let (b, _) = batch_of(64 * 1024);
    bencher.bench_local(|| batch::BatchHeader::parse(black_box(&b)).expect("valid header"));
}

/// Parsing CRI records made of LogHub lines (`agent::cri::parse`), 1000 per iteration.
#[divan::bench]
fn cri_parse(bencher: Bencher) {
    let records: Vec<Vec<u8>> = cri_records().into_iter().take(1000).collect();
    let bytes: usize = records.iter().map(Vec::len).sum();
    bencher
        .counter(ItemsCount::new(records.len()))
        .counter(BytesCount::new(bytes))
        .bench_local(|| {
            let mut n = 0usize;
            for r in &records {
                n += logrelay_agent::cri::parse(black_box(r))
                    .expect("valid record")
                    .message
                    .len();
            }
            n
        });
}

fn labels(pod: &str) -> Labels {
    Labels {
        org: "acme".into(),
        cluster: "prod-eu-1".into(),
        node: "node-17".into(),
        namespace: "flyte-production".into(),
        pod: pod.into(),
        pod_uid: "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab".into(),
        container: "main".into(),
        restart: 0,
        project: Some("forecasting".into()),
        domain: Some("production".into()),
        run: Some("r8f2k3".into()),
        ..Labels::default()
    }
}

/// A selector naming namespace, pod and container, against a matching and a non-matching
/// stream (the hub runs this for every stream on `subscribe` and every session on a new stream).
#[divan::bench(args = [true, false])]
fn selector_match(bencher: Bencher, matching: bool) {
    let sel = Selector {
        namespace: Some("flyte-production".into()),
        pod: Some("r8f2k3-n0-0".into()),
        container: Some("main".into()),
        run: Some("r8f2k3".into()),
        ..Selector::default()
    };
    let l = labels(if matching {
        "r8f2k3-n0-0"
    } else {
        "r8f2k3-n0-1"
    });
    bencher.bench_local(|| black_box(&sel).matches(black_box(&l)));
}
