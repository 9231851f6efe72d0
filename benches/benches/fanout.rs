//! The relay's ring and fan-out: one push per batch, one read per watcher.
//!
//! `cargo bench -p logrelay-benches --bench fanout`. Each iteration of `fanout_read` pushes one
//! 64 KiB batch and lets N readers (cursors) read it, exactly as session writers do. The counter
//! is deliveries (N per iteration), so divan's throughput column is deliveries per second and
//! `time / N` is the cost of one delivery. The allocation profiler shows N allocations per
//! iteration: the `Vec` of each `Ring::read` result, one per delivery; `fanout_clone` isolates
//! the hand-off itself (`Bytes::clone` of the pushed batch) and shows zero allocations: the
//! relay never copies a batch per subscriber.

use bytes::Bytes;
use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use logrelay_benches::batch_of;
use logrelay_relay::ring::{Cursor, Ring};
use logrelay_wire::control::SeqPos;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

const READERS: [usize; 4] = [1, 10, 100, 1000];
const RING_BYTES: usize = 4 * 1024 * 1024;

/// A ring in steady state (full, evicting), the batch to push, and where the next one ends.
fn warm_ring() -> (Ring, Bytes, u32, u64) {
    let (batch, lines) = batch_of(64 * 1024);
    let mut ring = Ring::new(RING_BYTES);
    let mut seq = 0u64;
    for _ in 0..2 * RING_BYTES / batch.len() {
        seq += u64::from(lines);
        ring.push(batch.clone(), lines, SeqPos { epoch: 7, seq });
    }
    (ring, batch, lines, seq)
}

/// One push and one read of it per watcher (the relay's ingest + session writers).
#[divan::bench(args = READERS)]
fn fanout_read(bencher: Bencher, readers: usize) {
    let (mut ring, batch, lines, mut seq) = warm_ring();
    let mut cursors: Vec<Cursor> = (0..readers).map(|_| ring.cursor_at_end()).collect();
    bencher
        .counter(ItemsCount::new(readers))
        .bench_local(move || {
            seq += u64::from(lines);
            ring.push(batch.clone(), lines, SeqPos { epoch: 7, seq });
            let mut delivered = 0usize;
            for c in &mut cursors {
                let read = ring.read(c, 256 * 1024);
                for (b, _) in read.batches {
                    delivered += b.len();
                }
            }
            delivered
        });
}

/// The hand-off alone: the pushed `Bytes` cloned for N watchers into a reused buffer.
/// Zero allocations: every subscriber gets the same bytes, no copy.
#[divan::bench(args = READERS)]
fn fanout_clone(bencher: Bencher, readers: usize) {
    let (batch, _) = batch_of(64 * 1024);
    // Promote the (vec-backed) bytes to shared once, as the relay's frame decoder does.
    drop(batch.clone());
    let mut out: Vec<Bytes> = Vec::with_capacity(readers);
    bencher
        .counter(ItemsCount::new(readers))
        .bench_local(move || {
            for _ in 0..readers {
                out.push(batch.clone());
            }
            let n = black_box(&out).len();
            out.clear();
            n
        });
}

/// Ring push + one read, with a single watcher that keeps up (the ring's own overhead).
#[divan::bench]
fn ring_push_read(bencher: Bencher) {
    let (mut ring, batch, lines, mut seq) = warm_ring();
    let mut cursor = ring.cursor_at_end();
    bencher.bench_local(move || {
        seq += u64::from(lines);
        ring.push(batch.clone(), lines, SeqPos { epoch: 7, seq });
        ring.read(&mut cursor, usize::MAX).batches.len()
    });
}
