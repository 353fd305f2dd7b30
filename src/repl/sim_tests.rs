//! A deterministic end-to-end simulation of protocol A, driven by proptest: the sender's
//! epoch tracker, the real frame codec (with zstd), the receiver's epoch rules, a secondary
//! whose disk only keeps what was flushed when the connection dies, and random interleavings
//! of writes, flushes, network delivery, disk completions and disconnects.
//!
//! The property is the promise of protocol A plus the dirty bitmap: after any such history,
//! copying the blocks still dirty on the primary makes the secondary identical to the
//! primary. (Nothing acked is lost; nothing unacked is forgotten.)

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::limits::BITMAP_BLOCK_BYTES;
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::Frame;
use crate::repl::receiver::{EpochReceiver, RxAction, RxEvent};
use crate::repl::wire::{resource_id, Decoder, Encoder};

const BLOCKS: usize = 16;
const BS: usize = BITMAP_BLOCK_BYTES as usize;
const DISK: usize = BLOCKS * BS;

#[derive(Debug, Clone)]
enum Op {
    Write {
        sector: usize,
        sectors: usize,
        byte: u8,
        fua: bool,
    },
    Flush,
    Deliver(usize),
    Complete(prop::sample::Index),
    Acks,
    Disconnect,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..DISK / 512, 1usize..20, any::<u8>(), any::<bool>())
            .prop_map(|(sector, sectors, byte, fua)| Op::Write { sector, sectors, byte, fua }),
        1 => Just(Op::Flush),
        3 => (1usize..6).prop_map(Op::Deliver),
        4 => any::<prop::sample::Index>().prop_map(Op::Complete),
        2 => Just(Op::Acks),
        1 => Just(Op::Disconnect),
    ]
}

struct Primary {
    disk: Vec<u8>,
    dirty: Vec<bool>,
    tracker: EpochTracker,
    enc: Encoder,
    dec: Decoder,
}

struct Secondary {
    /// What the disk holds now (completed writes).
    volatile: Vec<u8>,
    /// What survives a crash: the state at the last completed flush.
    stable: Vec<u8>,
    rx: EpochReceiver<(u64, Bytes)>,
    inflight: Vec<(u64, u64, Bytes)>,
    enc: Encoder,
    dec: Decoder,
}

struct Sim {
    p: Primary,
    s: Secondary,
    to_s: BytesMut,
    to_p: BytesMut,
}

impl Sim {
    fn new() -> Sim {
        let id = resource_id("sim");
        let codec = || {
            let (mut e, mut d) = (Encoder::new(id), Decoder::new(id));
            e.set_zstd(true);
            d.set_zstd(true);
            (e, d)
        };
        let ((pe, pd), (se, sd)) = (codec(), codec());
        let limits = EpochLimits {
            buffer_bytes_max: 32 * 1024,
            inflight_writes_max: 8,
            epoch_writes_max: 3,
            epoch_bytes_max: 1 << 20,
        };
        Sim {
            p: Primary {
                disk: vec![0; DISK],
                dirty: vec![false; BLOCKS],
                tracker: EpochTracker::new(limits),
                enc: pe,
                dec: pd,
            },
            s: Secondary {
                volatile: vec![0; DISK],
                stable: vec![0; DISK],
                rx: EpochReceiver::new(),
                inflight: Vec::new(),
                enc: se,
                dec: sd,
            },
            to_s: BytesMut::new(),
            to_p: BytesMut::new(),
        }
    }

    fn write(&mut self, offset: usize, len: usize, byte: u8, fua: bool) {
        let len = len.min(DISK - offset);
        self.p.disk[offset..offset + len].fill(byte);
        for b in offset / BS..(offset + len).div_ceil(BS) {
            self.p.dirty[b] = true;
        }
        // Full buffer: the write stays only in the dirty bitmap (pull-ahead).
        if let Ok(e) = self
            .p
            .tracker
            .try_enqueue(offset as u64, len as u64, len as u64, fua, 0)
        {
            let data = Bytes::from(vec![byte; len]);
            let f = Frame::Data {
                vol: 0,
                seq: e.seq,
                epoch: e.epoch,
                offset: offset as u64,
                fua,
                data,
            };
            self.p.enc.encode(&f, &mut self.to_s).unwrap();
            if let Some(epoch) = e.close_epoch {
                self.p
                    .enc
                    .encode(&Frame::Barrier { epoch }, &mut self.to_s)
                    .unwrap();
            }
        }
    }

    fn secondary_do(&mut self, actions: Vec<RxAction<(u64, Bytes)>>) {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for a in queue {
                match a {
                    RxAction::Write {
                        seq,
                        write: (off, data),
                    } => self.s.inflight.push((seq, off, data)),
                    RxAction::FlushThenAck(epoch) => {
                        self.s.stable = self.s.volatile.clone();
                        self.s
                            .enc
                            .encode(&Frame::BarrierAck { epoch }, &mut self.to_p)
                            .unwrap();
                        next.extend(self.s.rx.handle(RxEvent::FlushDone { epoch }).unwrap());
                    }
                }
            }
            queue = next;
        }
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(f) = self.s.dec.decode(&mut self.to_s).unwrap() else {
                return;
            };
            let ev = match f {
                Frame::Data {
                    seq,
                    epoch,
                    offset,
                    data,
                    ..
                } => RxEvent::Write {
                    seq,
                    epoch,
                    offset,
                    len: data.len() as u64,
                    write: (offset, data),
                },
                Frame::Barrier { epoch } => RxEvent::Barrier { epoch },
                other => panic!("unexpected {other:?}"),
            };
            let actions = self.s.rx.handle(ev).unwrap();
            self.secondary_do(actions);
        }
    }

    fn complete(&mut self, pick: prop::sample::Index) {
        if self.s.inflight.is_empty() {
            return;
        }
        let (seq, off, data) = self
            .s
            .inflight
            .swap_remove(pick.index(self.s.inflight.len()));
        let off = off as usize;
        self.s.volatile[off..off + data.len()].copy_from_slice(&data);
        let actions = self.s.rx.handle(RxEvent::WriteDone { seq }).unwrap();
        self.secondary_do(actions);
    }

    fn acks(&mut self) {
        while let Some(f) = self.p.dec.decode(&mut self.to_p).unwrap() {
            let Frame::BarrierAck { epoch } = f else {
                panic!("unexpected {f:?}")
            };
            let released = self.p.tracker.on_barrier_ack(epoch).unwrap();
            for r in released.clearable {
                for b in r.start..r.end {
                    self.p.dirty[b as usize] = false;
                }
            }
        }
    }

    /// The link dies and the secondary crashes: it keeps only what it flushed.
    fn disconnect(&mut self) {
        self.p.tracker.on_disconnect();
        self.s.rx = EpochReceiver::new();
        self.s.inflight.clear();
        self.s.volatile = self.s.stable.clone();
        self.to_s.clear();
        self.to_p.clear();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn resyncing_dirty_blocks_always_restores_an_identical_secondary(ops in proptest::collection::vec(arb_op(), 1..120)) {
        let mut sim = Sim::new();
        for op in ops {
            match op {
                Op::Write { sector, sectors, byte, fua } => sim.write(sector * 512, sectors * 512, byte, fua),
                Op::Flush => {
                    if let Some(epoch) = sim.p.tracker.close_epoch() {
                        sim.p.enc.encode(&Frame::Barrier { epoch }, &mut sim.to_s).unwrap();
                    }
                }
                Op::Deliver(n) => sim.deliver(n),
                Op::Complete(i) => sim.complete(i),
                Op::Acks => sim.acks(),
                Op::Disconnect => sim.disconnect(),
            }
        }
        sim.disconnect();
        // Bitmap resync: copy every dirty block.
        for b in 0..BLOCKS {
            if sim.p.dirty[b] {
                let r = b * BS..(b + 1) * BS;
                sim.s.stable[r.clone()].copy_from_slice(&sim.p.disk[r]);
            }
        }
        for b in 0..BLOCKS {
            let r = b * BS..(b + 1) * BS;
            prop_assert!(sim.s.stable[r.clone()] == sim.p.disk[r], "block {} differs after resync", b);
        }
    }
}
