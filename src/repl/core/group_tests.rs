//! The Secondary's side of a consistency group (issue 15) in the sans-I/O core: the volumes
//! share one epoch order, each write goes to the volume its frame names, and an epoch is
//! acked only once every volume of the group is flushed.

use std::sync::Mutex;

use bytes::Bytes;
use drbd_compat::Role;

use super::{Action, Core, Ctx, DiskOp, OpId, SessionEnd, VolumeId};
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::{Frame, RangeWrite};
use crate::repl::state::SyncDecision;
use crate::volume::bitmap::DirtyBitmap;

const V0: u64 = 1 << 20;
const V1: u64 = 256 << 10;

struct Rig {
    core: Core<Bytes>,
    bitmap: DirtyBitmap,
    tracker: Mutex<EpochTracker>,
}

impl Rig {
    fn new() -> Rig {
        let mut r = Rig {
            core: Core::with_volumes(vec![V0, V1], 1, 0),
            bitmap: DirtyBitmap::new(V0, crate::limits::BITMAP_BLOCK_BYTES),
            tracker: Mutex::new(EpochTracker::new(EpochLimits::default())),
        };
        let a = r.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
        assert!(!a.iter().any(|a| matches!(a, Action::Close(_))), "{a:?}");
        r
    }

    fn step(
        &mut self,
        f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>,
    ) -> Vec<Action<Bytes>> {
        let ctx = Ctx {
            now_ms: 1,
            role: Role::Secondary,
            bitmap: &self.bitmap,
            group_bitmaps: &[],
            tracker: &self.tracker,
            resync_paused: false,
        };
        f(&mut self.core, &ctx)
    }

    fn frame(&mut self, f: Frame) -> Vec<Action<Bytes>> {
        self.step(|c, ctx| c.on_frame(ctx, f))
    }

    fn done(&mut self, id: OpId) -> Vec<Action<Bytes>> {
        self.step(|c, ctx| c.on_disk_done(ctx, id, Ok(())))
    }
}

fn data(vol: u16, seq: u64, epoch: u64, offset: u64) -> Frame {
    Frame::Data {
        vol,
        seq,
        epoch,
        offset,
        fua: false,
        data: Bytes::from(vec![seq as u8; 4096]),
    }
}

/// (id, volume, offset) of each write, (id, volume) of each flush, in order.
fn writes(a: &[Action<Bytes>]) -> Vec<(OpId, u16, u64)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Disk {
                id,
                vol,
                op: DiskOp::Write { offset, .. },
            } => Some((*id, vol.0, *offset)),
            _ => None,
        })
        .collect()
}

fn flushes(a: &[Action<Bytes>]) -> Vec<(OpId, u16)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Disk {
                id,
                vol,
                op: DiskOp::Flush,
            } => Some((*id, vol.0)),
            _ => None,
        })
        .collect()
}

fn acks(a: &[Action<Bytes>]) -> Vec<u64> {
    a.iter()
        .filter_map(|a| match a {
            Action::Send(Frame::BarrierAck { epoch }) => Some(*epoch),
            _ => None,
        })
        .collect()
}

#[test]
fn epochs_apply_in_order_across_volumes_and_ack_after_every_volume_is_flushed() {
    let mut r = Rig::new();
    // Epoch 1: a write to each volume; epoch 2: a write to volume 1 (it depends on both).
    let mut out = r.frame(data(0, 1, 1, 0));
    out.extend(r.frame(data(1, 2, 1, 8192)));
    out.extend(r.frame(Frame::Barrier { epoch: 1 }));
    out.extend(r.frame(data(1, 3, 2, 0)));
    out.extend(r.frame(Frame::Barrier { epoch: 2 }));
    let w = writes(&out);
    assert_eq!(
        w.iter().map(|(_, v, o)| (*v, *o)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 8192)],
        "epoch 1's writes go to the volumes their frames name; epoch 2 waits"
    );
    assert!(flushes(&out).is_empty());

    let mut out = r.done(w[0].0);
    out.extend(r.done(w[1].0));
    let f = flushes(&out);
    assert_eq!(
        f.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![0, 1],
        "the epoch's flush covers every volume of the group"
    );
    assert!(writes(&out).is_empty() && acks(&out).is_empty());

    let out = r.done(f[1].0);
    assert!(
        acks(&out).is_empty() && writes(&out).is_empty(),
        "one volume flushed is not the epoch durable: no ack, epoch 2 still waits: {out:?}"
    );
    let out = r.done(f[0].0);
    assert_eq!(acks(&out), vec![1]);
    let w2 = writes(&out);
    assert_eq!(
        w2.iter().map(|(_, v, o)| (*v, *o)).collect::<Vec<_>>(),
        vec![(1, 0)]
    );

    let out = r.done(w2[0].0);
    let f = flushes(&out);
    assert_eq!(f.len(), 2);
    let mut out = r.done(f[0].0);
    out.extend(r.done(f[1].0));
    assert_eq!(acks(&out), vec![2]);
    assert!(r.core.idle());
}

#[test]
fn a_write_outside_its_volume_or_to_a_missing_volume_ends_the_session() {
    let close = |a: Vec<Action<Bytes>>| -> String {
        match a.last() {
            Some(Action::Close(SessionEnd::Protocol(t))) => t.clone(),
            other => panic!("expected a protocol close, got {other:?}"),
        }
    };
    let mut r = Rig::new();
    // Volume 1 is 256 KiB: an offset that is fine on volume 0 is outside it.
    let t = close(r.frame(data(1, 1, 1, V1)));
    assert!(t.starts_with("volume 1: "), "{t}");
    let mut r = Rig::new();
    let t = close(r.frame(Frame::Trim(RangeWrite {
        vol: 2,
        seq: 1,
        epoch: 1,
        offset: 0,
        len: 4096,
        fua: false,
    })));
    assert_eq!(t, "a write to volume 2, but the resource has 2 volume(s)");
    // A one-volume core refuses volume 1 the same way.
    let mut one = Rig::new();
    one.core = Core::new(V0, 1, 0);
    let t = close(one.frame(data(1, 1, 1, 0)));
    assert!(t.contains("has 1 volume(s)"), "{t}");
    // Volume 0 at the same offset is fine.
    let mut r = Rig::new();
    let out = r.frame(data(0, 1, 1, V1));
    assert_eq!(writes(&out).len(), 1);
    assert_eq!(
        match &out[1] {
            Action::Disk { vol, .. } => *vol,
            other => panic!("{other:?}"),
        },
        VolumeId(0)
    );
}

/// The Primary's side: one tracker and one epoch for the group; a barrier ack clears each
/// acked write's bits in its own volume's bitmap, never the same block of another volume.
#[test]
fn a_barrier_ack_clears_each_write_in_its_own_volumes_bitmap() {
    const B: u64 = crate::limits::BITMAP_BLOCK_BYTES;
    let (b0, b1) = (DirtyBitmap::new(V0, B), DirtyBitmap::new(V1, B));
    let tracker = Mutex::new(EpochTracker::new(EpochLimits::default()));
    let writes = [(VolumeId(0), 2 * B), (VolumeId(1), 0), (VolumeId(1), 2 * B)];
    for (vol, offset) in writes {
        match vol.0 {
            0 => b0.set_range(offset, B),
            _ => b1.set_range(offset, B),
        }
        tracker
            .lock()
            .unwrap()
            .try_enqueue(vol.group_offset(offset), B, B, false, 0)
            .unwrap();
    }
    // Volume 0's block 0 is dirty from before the session (not written in it).
    b0.set_range(0, B);
    let epoch = tracker.lock().unwrap().close_epoch().unwrap();
    let mut core: Core<Bytes> = Core::with_volumes(vec![V0, V1], 1, 0);
    let ctx = Ctx {
        now_ms: 1,
        role: Role::Primary,
        bitmap: &b0,
        group_bitmaps: &[&b1],
        tracker: &tracker,
        resync_paused: false,
    };
    let out = core.on_frame(&ctx, Frame::BarrierAck { epoch });
    assert!(matches!(out.as_slice(), [Action::RoomFreed]), "{out:?}");
    assert!(!b0.is_dirty(2) && !b1.is_dirty(0) && !b1.is_dirty(2));
    assert!(
        b0.is_dirty(0),
        "volume 1's ack of block 0 must not clear volume 0's block 0"
    );
    assert_eq!(
        VolumeId::of_group_block(VolumeId(1).group_offset(2 * B) / B),
        (VolumeId(1), 2)
    );
}
