//! Consistency groups (issue 15) as a property of the sans-I/O core: dependent writes that
//! alternate between the two volumes of a group go through the production epoch tracker, the
//! frame codec and a Secondary's [`Core`], with random delivery, disk completions in random
//! order, barrier acks, epoch ticks, and at the end a link cut or a crash of the Secondary.
//!
//! - A link cut: the Secondary drains what it received, so both volumes together hold
//!   exactly writes 1..=k of the sequence (TCP order makes what was received a prefix).
//! - A crash: each volume keeps what its last flush made durable plus any subset of what it
//!   wrote since; both volumes together still hold every write of the epochs up to some E and
//!   none after E + 1 (protocol A's crash consistency, DRBD's epochs), because an epoch is
//!   acked, and the next one applied, only after every volume is flushed.
//!
//! The same writer on two separate resources (two cores, two links) loses the prefix on a cut
//! as soon as one link is ahead of the other:
//! `two_separate_resources_lose_the_prefix_that_a_group_keeps`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use drbd_compat::Role;
use proptest::prelude::*;

use super::{Action, Core, Ctx, DiskOp, OpId, Write};
use crate::limits::BITMAP_BLOCK_BYTES;
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::Frame;
use crate::repl::state::SyncDecision;
use crate::repl::wire::{resource_id, Decoder, Encoder};
use crate::volume::bitmap::DirtyBitmap;

const BS: u64 = BITMAP_BLOCK_BYTES;
/// Blocks per volume: every write gets a block of its own, so a block names its write.
const BLOCKS: u64 = 40;
const WRITES_MAX: u64 = 2 * BLOCKS;

/// Write i (1-based) goes to volume (i - 1) % 2, block (i - 1) / 2.
fn place(i: u64) -> (u16, u64) {
    (((i - 1) % 2) as u16, (i - 1) / 2)
}

#[derive(Debug, Clone)]
enum Op {
    Write,
    Tick,
    Deliver(usize),
    Complete(prop::sample::Index),
    Acks,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Write),
        1 => Just(Op::Tick),
        3 => (1usize..6).prop_map(Op::Deliver),
        5 => any::<prop::sample::Index>().prop_map(Op::Complete),
        2 => Just(Op::Acks),
    ]
}

/// A Secondary volume: what the disk holds now, and what a crash cannot take.
#[derive(Default, Clone)]
struct Vol {
    volatile: BTreeSet<u64>,
    stable: BTreeSet<u64>,
}

/// One resource: the Primary's tracker and encoder, the link, the Secondary's core and disks.
struct Pair {
    tracker: Mutex<EpochTracker>,
    rx_tracker: Mutex<EpochTracker>,
    bitmap: DirtyBitmap,
    enc: Encoder,
    dec: Decoder,
    to_s: BytesMut,
    acks: Vec<u64>,
    core: Core<Bytes>,
    vols: Vec<Vol>,
    /// Disk operations issued and not completed: (id, volume, write index or None: a flush).
    inflight: Vec<(OpId, u16, Option<u64>)>,
    epochs: Vec<u64>,
}

fn limits() -> EpochLimits {
    EpochLimits {
        buffer_bytes_max: 1 << 30,
        inflight_writes_max: 1 << 20,
        epoch_writes_max: 3,
        epoch_bytes_max: 1 << 30,
    }
}

impl Pair {
    fn new(volumes: usize) -> Pair {
        let id = resource_id("group");
        let mut p = Pair {
            tracker: Mutex::new(EpochTracker::new(limits())),
            rx_tracker: Mutex::new(EpochTracker::new(limits())),
            bitmap: DirtyBitmap::new(BLOCKS * BS, BS),
            enc: Encoder::new(id),
            dec: Decoder::new(id),
            to_s: BytesMut::new(),
            acks: Vec::new(),
            core: Core::with_volumes(vec![BLOCKS * BS; volumes], 1, 0),
            vols: vec![Vol::default(); volumes],
            inflight: Vec::new(),
            epochs: vec![0],
        };
        p.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
        p
    }

    fn step(&mut self, f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>) {
        let ctx = Ctx {
            now_ms: 1,
            role: Role::Secondary,
            bitmap: &self.bitmap,
            group_bitmaps: &[],
            tracker: &self.rx_tracker,
            resync_paused: false,
        };
        for a in f(&mut self.core, &ctx) {
            match a {
                Action::Disk {
                    id,
                    vol,
                    op: DiskOp::Write { write, .. },
                } => {
                    let Write::Data { data, .. } = write else {
                        panic!("only data writes are sent")
                    };
                    let i = u64::from_le_bytes(data[..8].try_into().unwrap());
                    self.inflight.push((id, vol.0, Some(i)));
                }
                Action::Disk {
                    id,
                    vol,
                    op: DiskOp::Flush,
                } => self.inflight.push((id, vol.0, None)),
                Action::Send(Frame::BarrierAck { epoch }) => self.acks.push(epoch),
                Action::Close(why) => panic!("the session ended: {why}"),
                _ => {}
            }
        }
    }

    /// The Primary writes `i` to the volume `vol` (in the one epoch order of this resource).
    fn write(&mut self, i: u64, vol: u16) {
        let (_, block) = place(i);
        let e = self
            .tracker
            .lock()
            .unwrap()
            .try_enqueue(block * BS, BS, BS, false, 0)
            .expect("the buffer is large enough");
        self.epochs.push(e.epoch);
        let mut data = vec![0u8; BS as usize];
        data[..8].copy_from_slice(&i.to_le_bytes());
        let f = Frame::Data {
            vol,
            seq: e.seq,
            epoch: e.epoch,
            offset: block * BS,
            fua: false,
            data: Bytes::from(data),
        };
        self.enc.encode(&f, &mut self.to_s).unwrap();
        if let Some(epoch) = e.close_epoch {
            self.barrier(epoch);
        }
    }

    fn barrier(&mut self, epoch: u64) {
        self.enc
            .encode(&Frame::Barrier { epoch }, &mut self.to_s)
            .unwrap();
    }

    fn tick(&mut self) {
        let closed = self.tracker.lock().unwrap().close_epoch();
        if let Some(epoch) = closed {
            self.barrier(epoch);
        }
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(f) = self.dec.decode(&mut self.to_s).unwrap() else {
                return;
            };
            self.step(|c, ctx| c.on_frame(ctx, f));
        }
    }

    fn complete(&mut self, pick: usize) {
        if self.inflight.is_empty() {
            return;
        }
        let (id, vol, what) = self.inflight.swap_remove(pick % self.inflight.len());
        let v = &mut self.vols[usize::from(vol)];
        match what {
            Some(i) => {
                v.volatile.insert(i);
            }
            None => v.stable = v.volatile.clone(),
        }
        self.step(|c, ctx| c.on_disk_done(ctx, id, Ok(())));
    }

    fn acks(&mut self) {
        for epoch in std::mem::take(&mut self.acks) {
            self.tracker.lock().unwrap().on_barrier_ack(epoch).unwrap();
        }
    }

    /// The link is cut: the Secondary applies everything it received, in epoch order.
    fn cut(&mut self) {
        self.core.end();
        while !self.inflight.is_empty() {
            self.complete(0);
        }
    }

    /// Every write on the Secondary's volumes.
    fn present(&self, pick: impl FnMut(&Vol) -> BTreeSet<u64>) -> BTreeSet<u64> {
        self.vols.iter().flat_map(pick).collect()
    }
}

/// Writes 1..=k, exactly.
fn assert_exact_prefix(present: &BTreeSet<u64>) -> Result<(), TestCaseError> {
    let k = present.len() as u64;
    prop_assert!(
        present.iter().copied().eq(1..=k),
        "not a prefix of the sequence: {present:?}"
    );
    Ok(())
}

fn run_group(ops: &[Op], crash: Option<u64>) -> Result<(), TestCaseError> {
    let mut p = Pair::new(2);
    let mut next = 1;
    for op in ops {
        match op {
            Op::Write if next <= WRITES_MAX => {
                p.write(next, place(next).0);
                next += 1;
            }
            Op::Write => {}
            Op::Tick => p.tick(),
            Op::Deliver(n) => p.deliver(*n),
            Op::Complete(i) => p.complete(i.index(usize::MAX)),
            Op::Acks => p.acks(),
        }
    }
    let Some(seed) = crash else {
        p.cut();
        return assert_exact_prefix(&p.present(|v| v.volatile.clone()));
    };
    // A crash: each volume keeps its stable writes and any subset of the newer ones.
    let mut rng = seed | 1;
    let present = p.present(|v| {
        let mut kept = v.stable.clone();
        for i in v.volatile.difference(&v.stable) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng & 1 == 1 {
                kept.insert(*i);
            }
        }
        kept
    });
    let epoch = |i: u64| p.epochs[i as usize];
    // E: every write of the epochs up to E is present.
    let missing = (1..next).filter(|i| !present.contains(i)).map(epoch).min();
    if let Some(first_missing_epoch) = missing {
        for i in &present {
            prop_assert!(
                epoch(*i) <= first_missing_epoch,
                "write {i} (epoch {}) survived although epoch {first_missing_epoch} is \
                 incomplete: the volumes are not one point in time: {present:?}",
                epoch(*i)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn a_groups_volumes_together_hold_a_prefix_after_a_cut(
        ops in proptest::collection::vec(arb_op(), 1..200)
    ) {
        run_group(&ops, None)?;
    }

    #[test]
    fn a_groups_volumes_together_are_one_point_in_time_after_a_crash(
        ops in proptest::collection::vec(arb_op(), 1..200),
        seed in any::<u64>(),
    ) {
        run_group(&ops, Some(seed))?;
    }
}

/// Why groups exist (issue 15): the same dependent writer on two separate one-volume
/// resources. Write 2 (volume 1) was issued after write 1 (volume 0) completed, but the two
/// links are independent: the second resource's link delivered, the first's had not yet when
/// both were cut. The Secondary holds write 2 without write 1, which the group above never
/// does.
#[test]
fn two_separate_resources_lose_the_prefix_that_a_group_keeps() {
    let (mut a, mut b) = (Pair::new(1), Pair::new(1));
    a.write(1, 0);
    b.write(2, 0);
    b.deliver(10);
    a.cut();
    b.cut();
    let present: BTreeSet<u64> = a
        .present(|v| v.volatile.clone())
        .union(&b.present(|v| v.volatile.clone()))
        .copied()
        .collect();
    assert_eq!(present, BTreeSet::from([2]), "write 2 without write 1");

    // The same two writes in one group: whatever was delivered is a prefix.
    for delivered in 0..4 {
        let mut g = Pair::new(2);
        g.write(1, 0);
        g.write(2, 1);
        g.tick();
        g.deliver(delivered);
        g.cut();
        let present = g.present(|v| v.volatile.clone());
        assert!(
            present.iter().copied().eq(1..=present.len() as u64),
            "{delivered} frames delivered: {present:?}"
        );
    }
}
