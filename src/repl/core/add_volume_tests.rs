//! A volume added to a running group in the sans-I/O core (issue 15, `drl adjust`): the
//! Primary announces it at a barrier (no write of it on the wire before the announcement,
//! no write of the next epoch before the Barrier of the last), the Secondary applies the
//! announcement in order and syncs the new volume only; a Secondary without the volume ends
//! the session naming the fix, on both sides.

use bytes::Bytes;
use drbd_compat::Role;

use super::group_sync_tests::{run, Node, SIZES};
use super::{Action, SessionEnd, VolumeId};
use crate::limits::BITMAP_BLOCK_BYTES as B;
use crate::repl::frame::Frame;
use crate::repl::state::SyncDecision;

/// The Primary's application write of one block tagged `tag` at block `block` of `vol`, as
/// `Replicator::write_to` does it: bits set, the disk written, and the frame queued under the
/// tracker's lock if the link ships the volume.
fn write(n: &mut Node, vol: u16, block: u64, tag: u8) {
    let v = usize::from(vol);
    let off = block * B;
    n.bitmaps[v].set_range(off, B);
    n.disks[v][off as usize..(off + B) as usize].fill(tag);
    if v >= n.shipped {
        return;
    }
    let mut t = n.tracker.lock().unwrap();
    let e = t
        .try_enqueue(VolumeId(vol).group_offset(off), B, B, false, 1)
        .expect("room");
    n.outbox.push_back(Frame::Data {
        vol,
        seq: e.seq,
        epoch: e.epoch,
        offset: off,
        fua: false,
        data: Bytes::from(vec![tag; B as usize]),
    });
    if let Some(epoch) = e.close_epoch {
        n.outbox.push_back(Frame::Barrier { epoch });
    }
}

/// A connected, in-sync pair replicating volume 0; both nodes also hold volume 1 (`drl
/// adjust` ran on both), whose data differs.
fn pair() -> (Node, Node) {
    let mut a = Node::with(Role::Primary, 0, &SIZES, 1);
    let mut b = Node::with(Role::Secondary, 0, &SIZES, 1);
    a.disks[1].fill(0x11);
    b.disks[1].fill(0x22);
    a.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
    b.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
    (a, b)
}

#[test]
fn a_volume_is_announced_after_the_barrier_and_only_it_resyncs() {
    let (mut a, mut b) = pair();
    write(&mut a, 0, 3, 0xA1);
    // Before the announcement, a write to the new volume only marks its bitmap.
    write(&mut a, 1, 7, 0xB1);
    a.step(|c, ctx| c.add_volume(ctx, VolumeId(1), SIZES[1]));
    write(&mut a, 1, 8, 0xB2);
    write(&mut a, 0, 4, 0xA2);

    // The wire order: epoch 1's write, its Barrier, the announcement, then epoch 2's writes
    // of both volumes.
    let order: Vec<String> = a
        .outbox
        .iter()
        .map(|f| match f {
            Frame::Data {
                vol, epoch, offset, ..
            } => format!("data v{vol} e{epoch} b{}", offset / B),
            Frame::Barrier { epoch } => format!("barrier {epoch}"),
            Frame::VolumeAdd { vol, .. } => format!("add v{vol}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        [
            "data v0 e1 b3",
            "barrier 1",
            "add v1",
            "data v1 e2 b8",
            "data v0 e2 b4"
        ]
    );
    assert_eq!(a.core.volume_count(), 2);
    run(&mut a, &mut b);
    a.step(|c, ctx| c.on_tick(ctx, None));
    run(&mut a, &mut b);

    assert_eq!(b.core.volume_count(), 2);
    for v in 0..2 {
        assert!(a.disks[v] == b.disks[v], "volume {v} differs");
        assert_eq!(a.bitmaps[v].count_dirty(), 0, "Primary volume {v} bits");
        assert_eq!(b.bitmaps[v].count_dirty(), 0, "Secondary volume {v} bits");
    }
    assert!(
        !a.log.iter().any(|l| l == "serve 0"),
        "volume 0 was resynced: {:?}",
        a.log
    );
    assert!(a.log.iter().any(|l| l == "serve 1"), "{:?}", a.log);
    // The Secondary was Inconsistent until the new volume was synced, then adopted nothing
    // new (the generations were equal all along).
    let inconsistent = b.log.iter().position(|l| l == "meta Inconsistent");
    let done = b
        .log
        .iter()
        .position(|l| l.starts_with("meta ResyncFinishedTarget"));
    assert!(inconsistent.is_some() && inconsistent < done, "{:?}", b.log);
    assert!(
        a.core.can_add_volume(),
        "the Primary's sync of the volume ended"
    );
}

#[test]
fn a_secondary_without_the_volume_ends_the_session_naming_drl_adjust_on_both_sides() {
    let mut a = Node::with(Role::Primary, 0, &SIZES, 1);
    let mut b = Node::with(Role::Secondary, 0, &SIZES[..1], 1);
    a.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
    b.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
    a.step(|c, ctx| c.add_volume(ctx, VolumeId(1), SIZES[1]));
    let mut ended = None;
    while let Some(f) = a.outbox.pop_front() {
        for act in b.with_ctx(|c, ctx| c.on_frame(ctx, f)) {
            match act {
                Action::Send(f) => b.outbox.push_back(f),
                Action::Close(e) => ended = Some(e),
                _ => {}
            }
        }
    }
    let Some(SessionEnd::NeedsAdjust(why)) = ended else {
        panic!("the Secondary did not refuse the volume: {ended:?}");
    };
    assert!(
        why.contains("volume 1") && why.contains("drl adjust"),
        "{why}"
    );
    // The Primary hears why: its session ends with the fix too, not as a plain disconnect.
    let f = b.outbox.pop_front().expect("a Disconnect for the Primary");
    let out = a.with_ctx(|c, ctx| c.on_frame(ctx, f));
    match out.last() {
        Some(Action::Close(SessionEnd::NeedsAdjust(why))) => {
            assert!(
                why.contains("volume 1") && why.contains("drl adjust"),
                "{why}"
            )
        }
        other => panic!("expected the Primary's session to end naming the fix: {other:?}"),
    }
}

#[test]
fn a_volume_of_another_size_is_refused_and_none_is_added_during_a_resync() {
    let mut a = Node::with(Role::Primary, 0, &SIZES, 1);
    let mut b = Node::with(Role::Secondary, 0, &[SIZES[0], 32 * B], 1);
    a.step(|c, ctx| c.start(ctx, SyncDecision::NoSync));
    a.step(|c, ctx| c.add_volume(ctx, VolumeId(1), SIZES[1]));
    let add = a.outbox.pop_back().expect("the announcement");
    let out = b.with_ctx(|c, ctx| c.on_frame(ctx, add));
    match out.last() {
        Some(Action::Close(SessionEnd::NeedsAdjust(why))) => {
            assert!(why.contains("131072 bytes on this node"), "{why}")
        }
        other => panic!("expected a refusal: {other:?}"),
    }

    // A Primary resyncing (after a cut) announces nothing until the resync ends.
    let mut a = Node::with(Role::Primary, 0, &SIZES, 1);
    a.bitmaps[0].set_range(0, B);
    a.step(|c, ctx| c.start(ctx, SyncDecision::BitmapSyncSource));
    assert!(!a.core.can_add_volume());
    let out = a.with_ctx(|c, ctx| c.add_volume(ctx, VolumeId(1), SIZES[1]));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(a.core.volume_count(), 1);
}
