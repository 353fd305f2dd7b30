//! The Secondary's per-write bookkeeping: what `EpochReceiver` (apply epochs in order, hold a
//! write that overlaps an earlier one) costs per replicated write, with no disk and no socket.
//!
//! Each case feeds whole epochs of `EPOCH` writes (the Primary's `REPL_EPOCH_WRITES_MAX`) and
//! a barrier, completing the oldest disk write whenever `DEPTH` are in flight, as a ring of
//! that depth would; the barrier's flush completes at once.
//! - `random`: 4 KiB writes at random offsets of a 256 MiB volume (fio's randwrite);
//! - `hot`: every write to the same 4 KiB block (a journal's commit block), so each waits for
//!   the one before it;
//! - `pipelined`: as `random`, but the next epoch arrives while the previous one is still on
//!   the disk, so its writes queue behind the flush and are released together.
//!
//! Run: `cargo bench --bench receiver`. Time is per write.

use std::collections::VecDeque;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use drl::repl::receiver::{EpochReceiver, RxAction, RxEvent};
use rand::{Rng, SeedableRng};

const EPOCH: u64 = 2048;
const DEPTH: usize = 256;
const EPOCHS: u64 = 4;
const BLOCK: u64 = 4096;
const VOLUME_BLOCKS: u64 = (256 << 20) / BLOCK;

#[derive(Clone, Copy)]
enum Case {
    Random,
    Hot,
    Pipelined,
}

/// Carries out actions: writes go to the disk queue, a flush completes at once.
fn apply(
    r: &mut EpochReceiver<()>,
    mut actions: Vec<RxAction<()>>,
    disk: &mut VecDeque<u64>,
    flushes: &mut VecDeque<u64>,
) {
    while !actions.is_empty() {
        let mut next = Vec::new();
        for a in actions {
            match a {
                RxAction::Write { seq, .. } => disk.push_back(seq),
                RxAction::FlushThenAck(epoch) => flushes.push_back(epoch),
            }
        }
        // A flush is answered when nothing else is pending: the disk finished the epoch.
        if disk.is_empty() {
            if let Some(epoch) = flushes.pop_front() {
                next = r.handle(RxEvent::FlushDone { epoch }).unwrap();
            }
        }
        actions = next;
    }
}

fn complete_one(r: &mut EpochReceiver<()>, disk: &mut VecDeque<u64>, flushes: &mut VecDeque<u64>) {
    let seq = disk.pop_front().expect("a write in flight");
    let out = r.handle(RxEvent::WriteDone { seq }).unwrap();
    apply(r, out, disk, flushes);
}

/// Complete every write and flush still pending.
fn drain(r: &mut EpochReceiver<()>, disk: &mut VecDeque<u64>, flushes: &mut VecDeque<u64>) {
    while !disk.is_empty() || !flushes.is_empty() {
        if disk.is_empty() {
            apply(r, Vec::new(), disk, flushes);
        } else {
            complete_one(r, disk, flushes);
        }
    }
}

fn run(case: Case, offsets: &[u64]) {
    let mut r: EpochReceiver<()> = EpochReceiver::new();
    let mut disk = VecDeque::new();
    let mut flushes = VecDeque::new();
    let mut seq = 0;
    for epoch in 1..=EPOCHS {
        for i in 0..EPOCH {
            seq += 1;
            let offset = match case {
                Case::Hot => 0,
                _ => offsets[((epoch - 1) * EPOCH + i) as usize],
            };
            let out = r
                .handle(RxEvent::Write {
                    seq,
                    epoch,
                    offset,
                    len: BLOCK,
                    write: (),
                })
                .unwrap();
            apply(&mut r, out, &mut disk, &mut flushes);
            while disk.len() > DEPTH {
                complete_one(&mut r, &mut disk, &mut flushes);
            }
            // Pipelined: the disk keeps pace with the network, one completion per frame.
            if matches!(case, Case::Pipelined) && !disk.is_empty() {
                complete_one(&mut r, &mut disk, &mut flushes);
            }
        }
        let out = r.handle(RxEvent::Barrier { epoch }).unwrap();
        apply(&mut r, out, &mut disk, &mut flushes);
        if !matches!(case, Case::Pipelined) {
            drain(&mut r, &mut disk, &mut flushes);
        }
    }
    drain(&mut r, &mut disk, &mut flushes);
    assert!(r.idle());
}

fn receiver(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let offsets: Vec<u64> = (0..EPOCH * EPOCHS)
        .map(|_| rng.random_range(0..VOLUME_BLOCKS) * BLOCK)
        .collect();
    let mut g = c.benchmark_group("receiver");
    g.throughput(Throughput::Elements(EPOCH * EPOCHS));
    for (name, case) in [
        ("random", Case::Random),
        ("hot", Case::Hot),
        ("pipelined", Case::Pipelined),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &case, |b, &case| {
            b.iter(|| run(case, &offsets))
        });
    }
    g.finish();
}

criterion_group!(benches, receiver);
criterion_main!(benches);
