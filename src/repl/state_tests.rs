//! Resync decision tests. Each scenario replays a DRBD behaviour from the DRBD user guide
//! ("Generation Identifiers", "Split brain notification and automatic recovery") by running
//! the generation transitions of both nodes, not by writing the ids by hand.

use proptest::prelude::*;

use super::*;
use crate::repl::gen::GenIds;
use SyncDecision::*;

fn node(role: Role, disk: DiskState, gen: GenIds, dirty_bits: u64) -> NodeState {
    NodeState {
        role,
        disk,
        gen,
        dirty_bits,
    }
}

/// Decide on both sides and check they agree (mirror images).
fn both(a: &NodeState, b: &NodeState, policy: &SplitBrainPolicy) -> (Decision, Decision) {
    let da = decide(a, b, policy);
    let db = decide(b, a, policy);
    assert_eq!(
        da.decision.mirror(),
        db.decision,
        "sides disagree: {da:?} vs {db:?}"
    );
    (da, db)
}

const DEFAULT: SplitBrainPolicy = SplitBrainPolicy {
    after_sb_0pri: AfterSb0Pri::Disconnect,
    after_sb_1pri: AfterSb1Pri::DiscardSecondary,
};

/// A connected, in-sync pair at generation X.
fn in_sync_pair() -> (GenIds, GenIds) {
    let g = GenIds {
        current: 0x100,
        bitmap: 0,
        history: [0x50, 0x20],
    };
    (g, g)
}

#[test]
fn fresh_pair_waits_until_forced_primary_then_full_sync() {
    // DRBD: both current UUIDs empty => no sync until one node is made primary with --force;
    // then "current UUID of the peer is empty" => full sync from the forced primary.
    let a = node(Role::Secondary, DiskState::Inconsistent, GenIds::fresh(), 0);
    let b = node(Role::Secondary, DiskState::Inconsistent, GenIds::fresh(), 0);
    let (da, _) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (NoSync, 10));

    let mut ga = GenIds::fresh();
    ga.new_current_on_promote_without_peer();
    let a = node(Role::Primary, DiskState::UpToDate, ga, 0);
    let (da, db) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, db.decision), (FullSyncSource, FullSyncTarget));
    assert_eq!(da.decision.repl_state(), Some(ReplState::StartingSyncS));

    // After the full sync both are at the same generation: nothing more to do.
    let mut gb = GenIds::fresh();
    gb.on_resync_finished_as_target(ga.current);
    let b = node(Role::Secondary, DiskState::UpToDate, gb, 0);
    assert_eq!(both(&a, &b, &DEFAULT).0.decision, NoSync);
}

#[test]
fn reconnect_after_writes_on_primary_is_a_bitmap_sync_from_primary() {
    // DRBD: a Primary that loses its peer starts a new generation (current -> bitmap); on
    // reconnect "bitmap UUID matches the peer's current UUID" => it is SyncSource (rule 70),
    // and only the blocks in its bitmap are sent.
    let (mut ga, gb) = in_sync_pair();
    ga.new_current_on_peer_lost_as_primary();
    let a = node(Role::Primary, DiskState::UpToDate, ga, 42);
    let b = node(Role::Secondary, DiskState::UpToDate, gb, 0);
    let (da, db) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (BitmapSyncSource, 70));
    assert_eq!((db.decision, db.rule), (BitmapSyncTarget, 50));
    assert_eq!(db.decision.repl_state(), Some(ReplState::WFBitMapT));

    // After the resync both sides hold a's generation; the bitmap id goes to history.
    let (mut ga2, mut gb2) = (ga, gb);
    ga2.on_resync_finished_as_source();
    gb2.on_resync_finished_as_target(ga2.current);
    assert_eq!(ga2, gb2);
}

#[test]
fn fail_over_then_fail_back_makes_the_old_primary_a_bitmap_sync_target() {
    // Site A (Primary) crashes; site B is promoted with --force while A is gone: B starts a
    // new generation. A comes back (as Secondary, still at the old generation, with dirty
    // bits of writes B never acked). DRBD: A's current == B's bitmap => A is SyncTarget,
    // bitmap based; A's own dirty blocks are part of the resync (bitmap union).
    let (ga, mut gb) = in_sync_pair();
    gb.new_current_on_promote_without_peer();
    let a = node(Role::Secondary, DiskState::UpToDate, ga, 7);
    let b = node(Role::Primary, DiskState::UpToDate, gb, 1000);
    let (da, db) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (BitmapSyncTarget, 50));
    assert_eq!(db.decision, BitmapSyncSource);
    assert!(!da.split_brain_resolved);
}

#[test]
fn both_promoted_apart_is_split_brain() {
    // DRBD: both nodes moved on from the same generation (equal bitmap UUIDs) => split brain.
    let (mut ga, mut gb) = in_sync_pair();
    ga.new_current_on_peer_lost_as_primary();
    gb.new_current_on_promote_without_peer();
    let a = node(Role::Primary, DiskState::UpToDate, ga, 10);
    let b = node(Role::Primary, DiskState::UpToDate, gb, 20);
    let (da, _) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (SplitBrain, 90));
    assert_eq!(
        da.decision.repl_state(),
        None,
        "split brain stays StandAlone"
    );

    // Two Secondaries with after-sb-0pri disconnect: still split brain.
    let a0 = NodeState {
        role: Role::Secondary,
        ..a
    };
    let b0 = NodeState {
        role: Role::Secondary,
        ..b
    };
    assert_eq!(both(&a0, &b0, &DEFAULT).0.decision, SplitBrain);
}

#[test]
fn after_sb_1pri_discard_secondary_resolves_towards_the_primary() {
    // DRBD after-sb-1pri discard-secondary: the Secondary's changes are discarded, it becomes
    // SyncTarget of the current Primary (here: the old primary a was demoted after the split).
    let (mut ga, mut gb) = in_sync_pair();
    ga.new_current_on_peer_lost_as_primary();
    gb.new_current_on_promote_without_peer();
    let a = node(Role::Secondary, DiskState::UpToDate, ga, 10);
    let b = node(Role::Primary, DiskState::UpToDate, gb, 20);
    let (da, db) = both(&a, &b, &DEFAULT);
    assert_eq!(
        (da.decision, db.decision),
        (BitmapSyncTarget, BitmapSyncSource)
    );
    assert!(da.split_brain_resolved && db.split_brain_resolved);

    let disconnect = SplitBrainPolicy {
        after_sb_1pri: AfterSb1Pri::Disconnect,
        ..DEFAULT
    };
    let (da, _) = both(&a, &b, &disconnect);
    assert_eq!(da.decision, SplitBrain);
    assert!(!da.split_brain_resolved);
}

#[test]
fn after_sb_0pri_discard_zero_changes_keeps_the_side_that_wrote() {
    let (mut ga, mut gb) = in_sync_pair();
    ga.new_current_on_peer_lost_as_primary();
    gb.new_current_on_promote_without_peer();
    let a = node(Role::Secondary, DiskState::UpToDate, ga, 0);
    let b = node(Role::Secondary, DiskState::UpToDate, gb, 5);
    let policy = SplitBrainPolicy {
        after_sb_0pri: AfterSb0Pri::DiscardZeroChanges,
        ..DEFAULT
    };
    let (da, _) = both(&a, &b, &policy);
    assert_eq!(da.decision, BitmapSyncTarget);
}

#[test]
fn history_match_needs_a_full_sync() {
    // DRBD: "current UUID matches a historical UUID of the peer" => full sync (the bitmap
    // does not cover more than one generation).
    let a = node(
        Role::Secondary,
        DiskState::UpToDate,
        GenIds {
            current: 0x50,
            bitmap: 0,
            history: [0x20, 0],
        },
        0,
    );
    let b = node(
        Role::Primary,
        DiskState::UpToDate,
        GenIds {
            current: 0x300,
            bitmap: 0,
            history: [0x100, 0x50],
        },
        0,
    );
    let (da, db) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (FullSyncTarget, 60));
    assert_eq!((db.decision, db.rule), (FullSyncSource, 80));
}

#[test]
fn unrelated_data_is_never_synced() {
    let a = node(
        Role::Primary,
        DiskState::UpToDate,
        GenIds {
            current: 1,
            bitmap: 2,
            history: [3, 4],
        },
        0,
    );
    let b = node(
        Role::Secondary,
        DiskState::UpToDate,
        GenIds {
            current: 5,
            bitmap: 6,
            history: [7, 8],
        },
        0,
    );
    let (da, _) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (Unrelated, 1000));
}

#[test]
fn same_generation_decides_by_disk_state_then_dirty_bits() {
    let (g, _) = in_sync_pair();
    let up = |bits| node(Role::Secondary, DiskState::UpToDate, g, bits);
    assert_eq!(both(&up(0), &up(0), &DEFAULT).0.decision, NoSync);
    // A crashed primary (bits of unacked writes) is the source.
    assert_eq!(
        both(&up(3), &up(0), &DEFAULT).0,
        Decision {
            decision: BitmapSyncSource,
            rule: 42,
            split_brain_resolved: false
        }
    );
    // An interrupted SyncTarget (Inconsistent) continues as target.
    let inc = node(Role::Secondary, DiskState::Inconsistent, g, 99);
    assert_eq!(both(&inc, &up(0), &DEFAULT).0.decision, BitmapSyncTarget);
    // Bits on both: the Primary wins.
    let p = node(Role::Primary, DiskState::UpToDate, g, 1);
    assert_eq!(both(&p, &up(5), &DEFAULT).0.decision, BitmapSyncSource);
}

#[test]
fn an_inconsistent_node_is_never_a_source() {
    let (mut ga, gb) = in_sync_pair();
    ga.new_current_on_peer_lost_as_primary();
    let a = node(Role::Secondary, DiskState::Inconsistent, ga, 3);
    let b = node(Role::Secondary, DiskState::UpToDate, gb, 0);
    let (da, _) = both(&a, &b, &DEFAULT);
    assert_eq!((da.decision, da.rule), (NoSync, 4));
    // And a diskless side has nothing to compare.
    let d = node(Role::Secondary, DiskState::Diskless, gb, 0);
    assert_eq!(both(&a, &d, &DEFAULT).0.rule, 5);
}

fn arb_gen() -> impl Strategy<Value = GenIds> {
    let id = 0u64..4;
    (id.clone(), id.clone(), id.clone(), id).prop_map(|(c, b, h0, h1)| GenIds {
        current: c,
        bitmap: b,
        history: [h0, h1],
    })
}

fn arb_node() -> impl Strategy<Value = NodeState> {
    let role = prop_oneof![Just(Role::Primary), Just(Role::Secondary)];
    let disk = prop::sample::select(DiskState::ALL.to_vec());
    (role, disk, arb_gen(), 0u64..3).prop_map(|(role, disk, gen, dirty_bits)| NodeState {
        role,
        disk,
        gen,
        dirty_bits,
    })
}

fn arb_policy() -> impl Strategy<Value = SplitBrainPolicy> {
    (any::<bool>(), any::<bool>()).prop_map(|(z, d)| SplitBrainPolicy {
        after_sb_0pri: if z {
            AfterSb0Pri::DiscardZeroChanges
        } else {
            AfterSb0Pri::Disconnect
        },
        after_sb_1pri: if d {
            AfterSb1Pri::DiscardSecondary
        } else {
            AfterSb1Pri::Disconnect
        },
    })
}

proptest! {
    /// Both nodes always reach mirrored decisions, so they never both claim to be source.
    #[test]
    fn decisions_are_mirrored(a in arb_node(), b in arb_node(), policy in arb_policy()) {
        let da = decide(&a, &b, &policy);
        let db = decide(&b, &a, &policy);
        prop_assert_eq!(da.decision.mirror(), db.decision);
        prop_assert_eq!(da.rule, db.rule_mirror());
    }

    /// A source always has good data.
    #[test]
    fn sources_have_good_data(a in arb_node(), b in arb_node(), policy in arb_policy()) {
        let d = decide(&a, &b, &policy).decision;
        if matches!(d, BitmapSyncSource | FullSyncSource) {
            prop_assert!(a.disk.has_good_data());
        }
    }
}

trait RuleMirror {
    fn rule_mirror(&self) -> u32;
}

impl RuleMirror for Decision {
    /// Mirrored rules carry different numbers (50 <-> 70, 60 <-> 80, 20 <-> 30).
    fn rule_mirror(&self) -> u32 {
        match self.rule {
            50 => 70,
            70 => 50,
            60 => 80,
            80 => 60,
            20 => 30,
            30 => 20,
            r => r,
        }
    }
}

#[test]
fn the_peer_of_an_ahead_primary_is_behind_until_it_leaves_ahead() {
    use drbd_compat::ReplState::*;
    assert_eq!(with_peer_ahead(Established, true), Behind);
    assert_eq!(with_peer_ahead(Behind, true), Behind);
    assert_eq!(with_peer_ahead(Behind, false), Established);
    assert_eq!(with_peer_ahead(Established, false), Established);
    // A resync (the way back from Ahead) or an unconnected state is never overridden.
    for s in [SyncTarget, SyncSource, WFBitMapT, Off] {
        assert_eq!(with_peer_ahead(s, true), s);
        assert_eq!(with_peer_ahead(s, false), s);
    }
}
