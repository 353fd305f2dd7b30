//! The deterministic simulator of replication (issue 12): two nodes of the production session
//! core ([`drl::repl::core`]) with the production limits and metadata (bitmap, activity log,
//! superblock), a simulated data disk (unflushed writes lost, torn or reordered by a crash;
//! EIO), a simulated network (per-connection FIFO with delay, reset and silent cuts,
//! reconnects) and bit rot, a seeded clock, admin actions (connect, disconnect, primary,
//! secondary, verify, snapshot) and the invariants checked after every step (see `world.rs`); healing
//! ends with an online verify that must find exactly the blocks that differ.
//!
//! A failure prints its seed; `DRL_SIM_SEED=N cargo test --test sim replay` runs that seed
//! alone with its trace. `DRL_SIM_SEEDS=N` sets how many seeds the suite runs
//! (`scripts/sim.sh` runs many more).

mod dev;
mod node;
mod world;

use world::{Knobs, World};

const SEEDS_DEFAULT: u64 = 2_000;
const STEPS: u64 = 400;

fn run_seed(seed: u64, knobs: Knobs) -> World {
    let mut w = World::new(seed, knobs);
    for _ in 0..STEPS {
        w.step(true);
    }
    w.heal();
    w
}

/// Run `seed`; on a panic, print the seed and how to replay it.
fn run_reporting(seed: u64, knobs: Knobs) -> world::Coverage {
    let r = std::panic::catch_unwind(|| run_seed(seed, knobs).cov);
    if let Err(e) = r {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "simulation failed with seed {seed}: {msg}\n  replay: DRL_SIM_SEED={seed} cargo test --test sim replay -- --nocapture"
        );
    }
    r.unwrap_or_default()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Thousands of seeds of random histories: every invariant after every step, and after
/// healing both disks identical.
#[test]
fn random_histories_keep_every_invariant() {
    let n = env_u64("DRL_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let base = env_u64("DRL_SIM_BASE").unwrap_or(1);
    let t = std::time::Instant::now();
    let mut cov = world::Coverage::default();
    for seed in base..base + n {
        cov.add(&run_reporting(seed, Knobs::default()));
    }
    eprintln!("{n} seeds in {:.1} s: {cov:?}", t.elapsed().as_secs_f64());
    // The faults the suite claims to test happened (a simulator that never crashes a node
    // proves nothing about crashes).
    assert_exercised(
        n,
        &cov,
        &[
            ("resyncs", cov.resyncs),
            ("split brains", cov.split_brains),
            ("Primary crashes", cov.crashes_primary),
            ("Secondary crashes", cov.crashes_secondary),
            ("reset cuts", cov.cuts_reset),
            ("silent cuts", cov.cuts_silent),
            ("sessions ended by silence", cov.liveness_ends),
            ("sessions ended by EIO", cov.eio_ends),
            ("prefix checks with writes", cov.prefix_checks_with_writes),
            (
                "connects after two Primaries acknowledged",
                cov.two_primary_connects,
            ),
            (
                "prefix checks of a crashed Secondary",
                cov.crash_prefix_checks,
            ),
            ("verify runs", cov.verify_runs),
            ("verify runs that found bit rot", cov.verify_found),
            ("snapshots on a Secondary", cov.snapshots_secondary),
            (
                "snapshot checks after replicated or resync writes",
                cov.snapshot_checks_after_peer_writes,
            ),
        ],
    );
}

/// With enough seeds (500 or more), each of `what` happened at least once.
fn assert_exercised(n: u64, cov: &world::Coverage, what: &[(&str, u64)]) {
    if n < 500 {
        return;
    }
    for (what, v) in what {
        assert!(*v > 0, "{n} seeds never exercised {what}: {cov:?}");
    }
}

/// The knobs of a consistency group (issue 15): two volumes, volume 0 of 37 blocks (not a
/// multiple of 8, so volume 1's part of the bitmap transfer starts after padding).
fn group_knobs() -> Knobs {
    Knobs {
        group_split: Some(37),
        ..Knobs::default()
    }
}

/// The same random histories with a group of two volumes: one epoch order, per-volume
/// bitmaps and activity logs, resync of each volume's bits. The invariants hold for the
/// two volumes together (the Secondary's pair is a prefix, crash-consistent, and identical
/// after healing).
#[test]
fn groups_keep_every_invariant() {
    let n = env_u64("DRL_SIM_GROUP_SEEDS").unwrap_or(SEEDS_DEFAULT / 4);
    let base = env_u64("DRL_SIM_BASE").unwrap_or(1);
    let t = std::time::Instant::now();
    let mut cov = world::Coverage::default();
    for seed in base..base + n {
        cov.add(&run_reporting(seed, group_knobs()));
    }
    eprintln!(
        "{n} group seeds in {:.1} s: {cov:?}",
        t.elapsed().as_secs_f64()
    );
    assert_exercised(
        n,
        &cov,
        &[
            ("resyncs", cov.resyncs),
            ("resyncs of volume 1", cov.group_volume_resyncs),
            (
                "healing verify runs that found bit rot in volume 1",
                cov.group_verify_found,
            ),
            ("Primary crashes", cov.crashes_primary),
            ("Secondary crashes", cov.crashes_secondary),
            ("prefix checks with writes", cov.prefix_checks_with_writes),
            (
                "prefix checks of a crashed Secondary",
                cov.crash_prefix_checks,
            ),
        ],
    );
}

/// `DRL_SIM_SEED=N`: one seed, with the trace of its last steps (`DRL_SIM_GROUP=1`: with
/// the group's knobs).
#[test]
fn replay() {
    let Some(seed) = env_u64("DRL_SIM_SEED") else {
        return;
    };
    let knobs = match env_u64("DRL_SIM_GROUP") {
        Some(1) => group_knobs(),
        _ => Knobs::default(),
    };
    let r = std::panic::catch_unwind(|| {
        let mut w = World::new(seed, knobs);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..STEPS {
                w.step(true);
            }
            w.heal();
        }));
        for l in &w.trace {
            eprintln!("{l}");
        }
        if let Err(e) = res {
            std::panic::resume_unwind(e);
        }
    });
    assert!(r.is_ok(), "seed {seed} failed (trace above)");
}

/// Crash resync bounded by what was unacknowledged (issue 12): a Primary that wrote a region,
/// was acked for all of it and idled past the periodic persist, then crashed, resyncs at
/// most 5 % of the region. With the production AL (4 MiB extents) and defaults.
#[test]
fn crash_resync_after_an_idle_primary_crash_is_bounded() {
    let knobs = Knobs {
        blocks: 64 * 1024 * 1024 / node::BS,
        ..Knobs::default()
    };
    let region = 32 * 1024 * 1024 / node::BS as usize;
    let resynced = crash_resync(knobs, region, true);
    let written = region as u64 * node::BS;
    eprintln!("written {written} bytes, resynced {resynced} bytes after the crash");
    assert!(
        resynced * 20 <= written,
        "crash resync {resynced} bytes of a {written}-byte region: more than 5 %"
    );
    // The guard: without the periodic persist (no retire), the whole region resyncs.
    let without = crash_resync(knobs, region, false);
    assert!(
        without >= written,
        "without the retire the region should resync whole ({without} of {written})"
    );
}

/// Write `region` blocks at the Primary, let everything be acked, idle 6 s (persisting if
/// `persist`), kill the Primary, reconnect; returns the bytes the SyncTarget received.
fn crash_resync(knobs: Knobs, region: usize, persist: bool) -> u64 {
    let mut w = World::new(424_242, knobs);
    w.persist_on = persist;
    w.writes_on = false;
    w.connect();
    assert!(w.admin_primary(0));
    w.settle();
    let mut first = 0;
    while first < region {
        let len = 16.min(region - first);
        while !w.write(0, first, len, false) {
            w.step(false);
        }
        first += len;
        if first % 256 == 0 {
            w.step(false);
        }
    }
    w.n[0].app_flush();
    w.settle();
    w.pause_ms(6_000);
    let before = w.n[1].resync_received;
    w.crash(0);
    w.settle();
    w.n[1].resync_received + w.n[0].resync_received - before
}

/// A Primary that loses power after its acknowledged extents were retired from the activity
/// log must not come back with data its peer does not have (or lacks data the peer has)
/// while both sides decide "nothing to sync": the retire is safe only for writes that are on
/// the Primary's own stable storage too.
#[test]
fn power_loss_of_a_primary_after_the_retire_keeps_the_pair_identical() {
    let knobs = Knobs {
        blocks: 8 * 1024 * 1024 / node::BS,
        ..Knobs::default()
    };
    let mut w = World::new(77, knobs);
    w.writes_on = false;
    w.connect();
    assert!(w.admin_primary(0));
    w.settle();
    for first in (0..256).step_by(8) {
        while !w.write(0, first, 8, false) {
            w.step(false);
        }
    }
    // Acked by the peer; no application flush on the Primary.
    w.settle();
    w.pause_ms(6_000);
    w.crash(0);
    // The connect asserts that a NoSync decision with clean bitmaps means equal disks.
    w.settle();
    assert_eq!(w.n[0].view(), w.n[1].view());
}

/// The two-Primary window (issue 12): the old Primary demotes while its last writes are still
/// being applied on the Secondary, which the admin promotes at once and which writes the same
/// blocks. The old writes must not land over the new ones (the promotion waits until every
/// write received from the old Primary is on the disk), and the new Primary acknowledges
/// nothing before its peer confirmed the promotion.
#[test]
fn a_promotion_right_after_the_demotion_keeps_the_new_primarys_writes() {
    let mut w = World::new(4242, Knobs::default());
    w.writes_on = false;
    w.connect();
    assert!(w.admin_primary(0));
    w.settle();
    assert!(w.write(0, 0, 8, false), "a writes blocks 0..8");
    assert!(w.admin_secondary(0));
    // b received the writes and the demotion; none of its disk writes completed yet.
    w.deliver_all(1);
    assert_eq!(w.n[1].peer_role, Some(drbd_compat::Role::Secondary));
    assert!(w.ops_pending(1) > 0, "b applies a's writes");
    // The admin runs `drl primary` on b until it is accepted; meanwhile b's disk works.
    let mut tries = 0;
    while !w.admin_primary(1) {
        tries += 1;
        assert!(tries < 1000, "the promotion of b is never accepted");
        assert!(
            w.complete_one(1),
            "b refuses the promotion with nothing left to apply"
        );
    }
    // Nothing is acknowledged on b before a confirmed the promotion.
    assert!(
        !w.writable(1),
        "b acknowledges before a confirmed its promotion"
    );
    w.deliver_all(0);
    w.deliver_all(1);
    assert!(w.writable(1), "b's promotion was confirmed");
    assert!(w.write(1, 0, 8, false), "b writes blocks 0..8");
    let new = w.n[1].view()[..8].to_vec();
    while w.complete_one(1) {}
    w.settle();
    assert_eq!(
        w.n[1].view()[..8],
        new[..],
        "an old write of a landed over b's newer write"
    );
    assert_eq!(w.n[0].view(), w.n[1].view(), "the disks differ");
}

/// The two-Primary window over a live link (issue 12): both nodes promoted at the same
/// instant (neither has heard of the other's promotion). Neither acknowledges a write before
/// its peer confirmed the promotion; their StateChanges cross and the link drops; writes on
/// both afterwards are the admin's split brain, which the next connect finds (both StandAlone).
#[test]
fn two_promotions_at_the_same_instant_never_both_acknowledge_while_connected() {
    let mut w = World::new(99, Knobs::default());
    w.writes_on = false;
    w.connect();
    w.settle();
    assert!(w.admin_primary(0));
    assert!(w.admin_primary(1), "b has not heard of a's promotion yet");
    assert!(
        !w.writable(0) && !w.writable(1),
        "a promotion acknowledges writes before the peer confirmed it"
    );
    w.deliver_all(0);
    w.deliver_all(1);
    assert!(
        !w.connected(),
        "the crossing promotions did not drop the link"
    );
    assert!(w.write(0, 0, 4, false) && w.write(1, 0, 4, false));
    w.connect();
    assert!(
        w.n[0].standalone && w.n[1].standalone,
        "the next connect did not find the split brain: {}",
        w.dump()
    );
}

/// Online verify (DRBD's `verify`) in the simulator: on converged disks it finds nothing;
/// with one block silently corrupted on the Secondary, a run from either node reports exactly
/// that block and marks it on the Primary; a disconnect / connect resyncs it (verify marks,
/// resync repairs).
#[test]
fn verify_finds_exactly_a_corrupted_block_and_a_reconnect_repairs_it() {
    for from in 0..2 {
        let mut w = written_pair(5150 + from as u64);
        let end = run_verify(&mut w, from);
        assert_eq!((end.stopped.as_deref(), end.out_of_sync_blocks), (None, 0));
        w.corrupt(1, 13);
        let end = run_verify(&mut w, from);
        assert_eq!(end.stopped, None);
        assert_eq!(end.out_of_sync_blocks, 1, "verify from node {from}");
        assert_eq!(end.marked, if from == 0 { "local" } else { "peer" });
        let bm = &w.n[0].vols[0].bitmap;
        assert!(
            bm.is_dirty(13) && bm.count_dirty() == 1,
            "block 13 alone is marked"
        );
        assert_ne!(w.n[0].view(), w.n[1].view(), "verify changed data");
        w.admin_disconnect(0);
        w.admin_connect(0, false);
        w.connect();
        w.settle();
        assert_eq!(
            w.n[0].view(),
            w.n[1].view(),
            "the resync did not repair block 13"
        );
    }
}

/// A connected pair, node 0 Primary, every block written and replicated, nothing in flight.
fn written_pair(seed: u64) -> World {
    let mut w = World::new(seed, Knobs::default());
    w.writes_on = false;
    w.connect();
    assert!(w.admin_primary(0));
    w.settle();
    for first in (0..64).step_by(8) {
        assert!(w.write(0, first, 8, false));
    }
    w.settle();
    w
}

/// Start verify on node `from` and run until it reported and its frames were delivered.
fn run_verify(w: &mut World, from: usize) -> drl::repl::core::VerifyEnd {
    w.verify_done.clear();
    assert!(w.admin_verify(from), "verify refused: {}", w.dump());
    for _ in 0..100_000 {
        if !w.verify_done.is_empty() && w.idle_net() {
            return w.verify_done.remove(0).1;
        }
        w.step(false);
    }
    panic!("verify never ended: {}", w.dump());
}

/// A snapshot on the Secondary keeps its point in time (issue 12): replicated writes and then
/// resync writes reach its node through the production write pipeline, which preserves the
/// snapshot's chunks first; the snapshot still reads as the disk did when it was taken.
#[test]
fn a_secondary_snapshot_keeps_its_point_in_time_through_replicated_and_resync_writes() {
    let mut w = written_pair(6060);
    w.admin_snapshot(1);
    let then = w.n[1].view();
    // Replicated writes.
    for first in (0..32).step_by(4) {
        assert!(w.write(0, first, 4, false));
    }
    w.settle();
    let replicated = w.n[1].peer_writes;
    // Writes while disconnected, then the resync brings them.
    w.admin_disconnect(0);
    for first in (32..64).step_by(4) {
        assert!(w.write(0, first, 4, false));
    }
    w.admin_connect(0, false);
    w.connect();
    w.settle();
    assert!(w.n[1].resync_received > 0, "no resync happened");
    assert!(w.n[1].peer_writes > replicated, "no resync write reached b");
    assert_ne!(w.n[1].view(), then, "nothing was written over the snapshot");
    assert_eq!(
        w.n[1].read_snapshot().expect("the snapshot"),
        then,
        "the Secondary's snapshot moved"
    );
}
