//! Online verify in the sans-I/O core (`verify.rs`), driven directly: the comparer's hold,
//! the order of answers, what a peer's VerifyResult may mark, and a consistency group's run
//! (every volume, in the group's address space, each mark in its volume's bitmap).

use std::sync::Mutex;

use bytes::Bytes;
use drbd_compat::Role;

use super::{Action, Core, Ctx, DiskOp, SessionEnd, VerifyEnd, VolumeId};
use crate::limits::{BITMAP_BLOCK_BYTES, REPL_VERIFY_REQUEST_BYTES};
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::{Frame, VerifyRun};
use crate::repl::state::SyncDecision;
use crate::repl::verify::block_digests;
use crate::volume::bitmap::DirtyBitmap;

const SIZE: u64 = 3 * REPL_VERIFY_REQUEST_BYTES as u64;

struct Rig {
    core: Core<Bytes>,
    bitmap: DirtyBitmap,
    /// Volumes 1.. of a group.
    group: Vec<DirtyBitmap>,
    tracker: Mutex<EpochTracker>,
    role: Role,
    now_ms: u64,
}

impl Rig {
    fn new(role: Role) -> Rig {
        Rig::with_volumes(role, &[SIZE])
    }

    fn with_volumes(role: Role, sizes: &[u64]) -> Rig {
        let mut r = Rig {
            core: Core::with_volumes(sizes.to_vec(), 1, 0),
            bitmap: DirtyBitmap::new(sizes[0], BITMAP_BLOCK_BYTES),
            group: sizes[1..]
                .iter()
                .map(|&s| DirtyBitmap::new(s, BITMAP_BLOCK_BYTES))
                .collect(),
            tracker: Mutex::new(EpochTracker::new(EpochLimits::default())),
            role,
            now_ms: 1,
        };
        r.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
        r
    }

    fn step(
        &mut self,
        f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>,
    ) -> Vec<Action<Bytes>> {
        let group: Vec<&DirtyBitmap> = self.group.iter().collect();
        let ctx = Ctx {
            now_ms: self.now_ms,
            role: self.role,
            bitmap: &self.bitmap,
            group_bitmaps: &group,
            tracker: &self.tracker,
            resync_paused: false,
        };
        f(&mut self.core, &ctx)
    }

    fn frame(&mut self, f: Frame) -> Vec<Action<Bytes>> {
        self.step(|c, ctx| c.on_frame(ctx, f))
    }
}

fn closed(a: &[Action<Bytes>]) -> Option<&SessionEnd> {
    a.iter().find_map(|a| match a {
        Action::Close(e) => Some(e),
        _ => None,
    })
}

/// DRBD's verify reads both sides at the same point of the write stream: the comparer takes
/// nothing after a VerifyDigests and reads only once every write received before it is on
/// its disk (a read before that is a false alarm: 22 blocks in the simulator, seed 26).
#[test]
fn the_comparer_holds_the_digests_until_every_earlier_write_is_on_the_disk() {
    let mut r = Rig::new(Role::Secondary);
    let a = r.frame(Frame::Data {
        vol: 0,
        seq: 1,
        epoch: 1,
        offset: 0,
        fua: false,
        data: Bytes::from(vec![7u8; 4096]),
    });
    let write = a
        .iter()
        .find_map(|a| match a {
            Action::Disk {
                id,
                op: DiskOp::Write { .. },
                ..
            } => Some(*id),
            _ => None,
        })
        .expect("the write is issued");
    let block = vec![7u8; BITMAP_BLOCK_BYTES as usize];
    let a = r.frame(Frame::VerifyDigests {
        run: VerifyRun::Sender,
        id: 9,
        offset: 0,
        len: BITMAP_BLOCK_BYTES as u32,
        digests: Bytes::from(block_digests(&block)),
    });
    assert!(
        !r.core.wants_input(),
        "a frame after the digests may be taken"
    );
    assert!(
        !a.iter().any(|a| matches!(a, Action::VerifyRead { .. })),
        "read before the write landed: {a:?}"
    );
    let a = r.step(|c, ctx| c.on_disk_done(ctx, write, Ok(())));
    let read = a
        .iter()
        .find_map(|a| match a {
            Action::VerifyRead { id, .. } => Some(*id),
            _ => None,
        })
        .expect("the read once the write landed");
    let a = r.step(|c, ctx| c.on_verify_read(ctx, read, Ok(block_digests(&block))));
    let differ = a.iter().find_map(|a| match a {
        Action::Send(Frame::VerifyResult { run, differ, .. }) => Some((*run, differ.clone())),
        _ => None,
    });
    assert_eq!(differ, Some((VerifyRun::Receiver, Bytes::from(vec![0u8]))));
    assert!(r.core.wants_input());
}

/// This node's run takes answers in request order; anything else is the peer breaking the
/// protocol.
#[test]
fn answers_out_of_order_end_the_session() {
    let mut r = Rig::new(Role::Primary);
    let a = r.step(|c, ctx| c.verify_start(ctx, 5, u64::MAX, false));
    let provides = a
        .iter()
        .filter(|a| matches!(a, Action::VerifyProvide { .. }))
        .count();
    assert_eq!(
        provides, 1,
        "the rate lets one range go at the start: {a:?}"
    );
    let a = r.frame(Frame::VerifyResult {
        run: VerifyRun::Receiver,
        id: 5,
        offset: u64::from(REPL_VERIFY_REQUEST_BYTES),
        len: REPL_VERIFY_REQUEST_BYTES,
        differ: Bytes::from(vec![0u8; 32]),
    });
    assert!(
        matches!(closed(&a), Some(SessionEnd::Protocol(e)) if e.contains("expected 0+")),
        "{a:?}"
    );
}

/// A Primary marks the blocks a VerifyResult names, and only those of its range: a bit past
/// the range is not the peer's to set.
#[test]
fn a_result_marks_only_blocks_of_its_range_on_the_primary() {
    let mut r = Rig::new(Role::Primary);
    let len = 4 * BITMAP_BLOCK_BYTES as u32;
    // Blocks 1 and 3 differ; bits 4..8 lie past the range.
    let a = r.frame(Frame::VerifyResult {
        run: VerifyRun::Sender,
        id: 3,
        offset: 8 * BITMAP_BLOCK_BYTES,
        len,
        differ: Bytes::from(vec![0b1111_1010u8]),
    });
    assert!(closed(&a).is_none(), "{a:?}");
    assert_eq!(r.bitmap.count_dirty(), 2);
    assert!(r.bitmap.is_dirty(9) && r.bitmap.is_dirty(11));
}

/// The ranges a run of this node provides, in order.
fn provided(a: &[Action<Bytes>]) -> Vec<(u64, u32)> {
    a.iter()
        .filter_map(|a| match a {
            Action::VerifyProvide { offset, len, .. } => Some((*offset, *len)),
            _ => None,
        })
        .collect()
}

/// A consistency group's run (issue 15) walks volume after volume in the group's address
/// space, a range never spanning two volumes (volume 1's partial last block ends its own
/// range), and counts every volume's bytes.
#[test]
fn a_group_run_walks_every_volume_in_the_group_address_space() {
    let req = u64::from(REPL_VERIFY_REQUEST_BYTES);
    let v1 = req + 3 * BITMAP_BLOCK_BYTES + 512;
    let mut r = Rig::with_volumes(Role::Primary, &[2 * req, v1]);
    let mut asked = provided(&r.step(|c, ctx| c.verify_start(ctx, 4, u64::MAX, false)));
    let mut end: Option<VerifyEnd> = None;
    let mut answered = 0;
    while end.is_none() {
        assert!(answered < asked.len(), "the run stalled after {asked:?}");
        let (offset, len) = asked[answered];
        answered += 1;
        r.now_ms += 1_000;
        let a = r.frame(Frame::VerifyResult {
            run: VerifyRun::Receiver,
            id: 4,
            offset,
            len,
            differ: Bytes::from(vec![0u8; 32]),
        });
        assert!(closed(&a).is_none(), "{a:?}");
        asked.extend(provided(&a));
        end = a.iter().find_map(|a| match a {
            Action::Verify(super::VerifyEvent::Finished(e)) => Some(e.clone()),
            _ => None,
        });
    }
    let g1 = |o| VolumeId(1).group_offset(o);
    assert_eq!(
        asked,
        vec![
            (0, REPL_VERIFY_REQUEST_BYTES),
            (req, REPL_VERIFY_REQUEST_BYTES),
            (g1(0), REPL_VERIFY_REQUEST_BYTES),
            (g1(req), (v1 - req) as u32),
        ]
    );
    let end = end.expect("the run ended");
    assert_eq!((end.stopped, end.checked_bytes), (None, 2 * req + v1));
}

/// A difference in a group's volume 1 is marked in volume 1's bitmap at its own block
/// index, not in volume 0's; a range inside volume 0's size but past volume 1's is a
/// protocol error.
#[test]
fn a_group_result_marks_the_bitmap_of_the_volume_it_names() {
    let size1 = 16 * BITMAP_BLOCK_BYTES;
    let mut r = Rig::with_volumes(Role::Primary, &[SIZE, size1]);
    let a = r.frame(Frame::VerifyResult {
        run: VerifyRun::Sender,
        id: 3,
        offset: VolumeId(1).group_offset(8 * BITMAP_BLOCK_BYTES),
        len: 4 * BITMAP_BLOCK_BYTES as u32,
        differ: Bytes::from(vec![0b0000_1010u8]),
    });
    assert!(closed(&a).is_none(), "{a:?}");
    assert_eq!(r.bitmap.count_dirty(), 0, "volume 0 marked");
    assert_eq!(r.group[0].count_dirty(), 2);
    assert!(r.group[0].is_dirty(9) && r.group[0].is_dirty(11));
    let a = r.frame(Frame::VerifyRequest {
        run: VerifyRun::Sender,
        id: 3,
        offset: VolumeId(1).group_offset(size1),
        len: BITMAP_BLOCK_BYTES as u32,
    });
    assert!(
        matches!(closed(&a), Some(SessionEnd::Protocol(_))),
        "past volume 1's end: {a:?}"
    );
}
