//! A consistency group's resync in the sans-I/O core (issue 15): two cores exchange every
//! volume's bitmap in one transfer and resync each volume's dirty blocks into that volume,
//! then flush and persist every volume before the SyncTarget adopts the generation. Before
//! groups resynced per volume, only volume 0's bitmap crossed and volume 1 stayed stale.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use drbd_compat::Role;

use super::{Action, Core, Ctx, DiskOp, MetaChange, OpId, VolumeId, Write};
use crate::limits::BITMAP_BLOCK_BYTES as B;
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::Frame;
use crate::repl::state::SyncDecision;
use crate::volume::bitmap::DirtyBitmap;

/// Volume 0 has a block count that is not a multiple of 8, so volume 1's bits in the
/// transfer start after padding.
pub(super) const SIZES: [u64; 2] = [259 * B, 64 * B];

/// One node of a pair of cores, with its volumes as memory and its shell's actions carried
/// out as the daemon's shell does (also used by `add_volume_tests`).
pub(super) struct Node {
    pub(super) core: Core<Bytes>,
    pub(super) bitmaps: Vec<DirtyBitmap>,
    pub(super) tracker: Mutex<EpochTracker>,
    pub(super) role: Role,
    pub(super) disks: Vec<Vec<u8>>,
    pub(super) outbox: VecDeque<Frame>,
    ops: Vec<(OpId, VolumeId, DiskOp<Bytes>)>,
    /// What happened, in order: "flush N", "persist N", "sent ResyncDone", "meta ...".
    pub(super) log: Vec<String>,
    /// Volumes whose writes are shipped (the shell's `Link::ships_volume`).
    pub(super) shipped: usize,
}

impl Node {
    fn new(role: Role, fill: u8) -> Node {
        Node::with(role, fill, &SIZES, SIZES.len())
    }

    /// A node holding volumes of `sizes`, whose session replicates the first `session` of
    /// them (the others were added since the handshake).
    pub(super) fn with(role: Role, fill: u8, sizes: &[u64], session: usize) -> Node {
        Node {
            core: Core::with_volumes(sizes[..session].to_vec(), 1, 0),
            bitmaps: sizes.iter().map(|&s| DirtyBitmap::new(s, B)).collect(),
            tracker: Mutex::new(EpochTracker::new(EpochLimits::default())),
            role,
            disks: sizes.iter().map(|&s| vec![fill; s as usize]).collect(),
            outbox: VecDeque::new(),
            ops: Vec::new(),
            log: Vec::new(),
            shipped: session,
        }
    }

    /// `f` with the core and this node's facts.
    pub(super) fn with_ctx<R>(&mut self, f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> R) -> R {
        let group: Vec<&DirtyBitmap> = self.bitmaps[1..].iter().collect();
        let ctx = Ctx {
            now_ms: 1,
            role: self.role,
            bitmap: &self.bitmaps[0],
            group_bitmaps: &group,
            tracker: &self.tracker,
            resync_paused: false,
        };
        f(&mut self.core, &ctx)
    }

    pub(super) fn step(&mut self, f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>) {
        let actions = self.with_ctx(f);
        for a in actions {
            match a {
                Action::Send(f) => {
                    if matches!(f, Frame::ResyncDone) {
                        self.log.push("sent ResyncDone".into());
                    }
                    self.outbox.push_back(f);
                }
                Action::Disk { id, vol, op } => self.ops.push((id, vol, op)),
                Action::Serve { offset, len } => {
                    // The answering task: read the named volume, clear its bits, answer
                    // with the same (group) offset.
                    let (vol, local) = VolumeId::of_group_offset(offset);
                    let (v, at) = (usize::from(vol.0), local as usize);
                    self.log.push(format!("serve {v}"));
                    let data = self.disks[v][at..at + len as usize].to_vec();
                    self.bitmaps[v].clear_range(local, u64::from(len));
                    self.outbox.push_back(Frame::ResyncData {
                        offset,
                        data: Bytes::from(data),
                    });
                }
                Action::Meta(m) => self.log.push(format!("meta {m:?}")),
                // The shell's Link::close_epoch and Link::announce_volume: under the
                // tracker's lock, as the writers queue theirs.
                Action::CloseEpoch => {
                    if let Some(epoch) = self.tracker.lock().unwrap().close_epoch() {
                        self.outbox.push_back(Frame::Barrier { epoch });
                    }
                }
                Action::AnnounceVolume { vol, size_bytes } => {
                    let mut t = self.tracker.lock().unwrap();
                    if let Some(epoch) = t.close_epoch() {
                        self.outbox.push_back(Frame::Barrier { epoch });
                    }
                    self.outbox.push_back(Frame::VolumeAdd {
                        vol: vol.0,
                        size_bytes,
                    });
                    self.shipped = usize::from(vol.0) + 1;
                }
                Action::Close(e) => panic!("session closed: {e}"),
                _ => {}
            }
        }
    }

    /// Complete the oldest disk operation still issued (the last issued first when `rev`,
    /// so a group step's volumes complete out of order).
    fn complete_one(&mut self, rev: bool) -> bool {
        if self.ops.is_empty() {
            return false;
        }
        let (id, vol, op) = if rev {
            self.ops.pop().unwrap()
        } else {
            self.ops.remove(0)
        };
        let v = usize::from(vol.0);
        match op {
            DiskOp::Write { offset, write } => {
                let at = offset as usize;
                match write {
                    Write::Data { data, .. } => {
                        self.disks[v][at..at + data.len()].copy_from_slice(&data)
                    }
                    Write::Zeroes { len, .. } | Write::Trim { len, .. } => {
                        self.disks[v][at..at + len as usize].fill(0)
                    }
                }
            }
            DiskOp::Flush => self.log.push(format!("flush {v}")),
            DiskOp::PersistBitmap => self.log.push(format!("persist {v}")),
        }
        self.step(|c, ctx| c.on_disk_done(ctx, id, Ok(())));
        true
    }
}

/// Deliver frames both ways and complete disk operations until nothing moves.
pub(super) fn run(src: &mut Node, dst: &mut Node) {
    for round in 0.. {
        assert!(round < 100_000, "the resync does not finish");
        let mut moved = false;
        while let Some(f) = src.outbox.pop_front() {
            dst.step(|c, ctx| c.on_frame(ctx, f));
            moved = true;
        }
        while let Some(f) = dst.outbox.pop_front() {
            src.step(|c, ctx| c.on_frame(ctx, f));
            moved = true;
        }
        moved |= src.complete_one(round % 2 == 0);
        moved |= dst.complete_one(round % 2 == 1);
        if !moved {
            return;
        }
    }
}

#[test]
fn a_groups_resync_covers_each_volumes_dirty_bits_in_that_volume() {
    // After a cut, the Primary wrote to both volumes; the Secondary missed those writes.
    let mut src = Node::new(Role::Primary, 0);
    let mut dst = Node::new(Role::Secondary, 0);
    let writes = [
        (0usize, 258 * B, 0xA0u8),
        (1, 5 * B, 0xB1),
        (1, 63 * B, 0xB2),
    ];
    for (v, off, tag) in writes {
        src.disks[v][off as usize..(off + B) as usize].fill(tag);
        src.bitmaps[v].set_range(off, B);
    }
    // A block only the Secondary has (received, never acked): the union resyncs it back.
    dst.disks[1][2 * B as usize..3 * B as usize].fill(0xEE);
    dst.bitmaps[1].set_range(2 * B, B);

    src.step(|c, ctx| c.start(ctx, SyncDecision::BitmapSyncSource));
    dst.step(|c, ctx| c.start(ctx, SyncDecision::BitmapSyncTarget));
    run(&mut src, &mut dst);

    for v in 0..SIZES.len() {
        assert!(
            src.disks[v] == dst.disks[v],
            "volume {v} differs after the group's resync"
        );
        assert_eq!(src.bitmaps[v].count_dirty(), 0, "source volume {v} bits");
        assert_eq!(dst.bitmaps[v].count_dirty(), 0, "target volume {v} bits");
    }
    assert_eq!(dst.disks[1][2 * B as usize], 0, "the Secondary's own block");
    // The generation is adopted only after every volume is flushed and its bitmap persisted.
    let done = dst.log.iter().position(|l| l == "sent ResyncDone").unwrap();
    let adopted = dst
        .log
        .iter()
        .position(|l| l.starts_with("meta ResyncFinishedTarget"))
        .unwrap();
    for step in ["flush 0", "flush 1", "persist 0", "persist 1"] {
        let at = dst.log.iter().rposition(|l| l == step);
        assert!(
            at.is_some_and(|i| i < adopted && i < done),
            "{step} before the end of the resync: {:?}",
            dst.log
        );
    }
    assert!(
        src.log
            .iter()
            .any(|l| l == &format!("meta {:?}", MetaChange::ResyncFinishedSource)),
        "{:?}",
        src.log
    );
}

#[test]
fn a_one_volume_transfer_and_offsets_are_unchanged_by_groups() {
    let bm = DirtyBitmap::new(259 * B, B);
    bm.set_range(258 * B, B);
    assert_eq!(super::sync::group_bitmap_bits(&[&bm]), 259);
    let bm1 = DirtyBitmap::new(64 * B, B);
    assert_eq!(
        super::sync::group_bitmap_bits(&[&bm, &bm1]),
        264 + 64,
        "volume 1's bits start on the byte after volume 0's"
    );
    assert_eq!(VolumeId::of_group_offset(258 * B), (VolumeId(0), 258 * B));
    assert_eq!(
        VolumeId::of_group_offset(VolumeId(1).group_offset(5 * B)),
        (VolumeId(1), 5 * B)
    );
}

#[test]
fn a_resync_request_outside_its_volume_or_for_a_missing_volume_ends_the_session() {
    let mut src = Node::new(Role::Primary, 0);
    src.step(|c, ctx| c.start(ctx, SyncDecision::BitmapSyncSource));
    let close = |n: &mut Node, offset: u64| -> String {
        let out = n.with_ctx(|c, ctx| {
            c.on_frame(
                ctx,
                Frame::ResyncRequest {
                    offset,
                    len: B as u32,
                },
            )
        });
        match out.last() {
            Some(Action::Close(e)) => e.to_string(),
            other => panic!("expected a close, got {other:?}"),
        }
    };
    // Fine on volume 0 (259 blocks), outside volume 1 (64 blocks).
    let t = close(&mut src, VolumeId(1).group_offset(100 * B));
    assert!(t.starts_with("volume 1: "), "{t}");
    let t = close(&mut src, VolumeId(2).group_offset(0));
    assert!(t.contains("volume 2, but the resource has 2"), "{t}");
}
