//! The world's verify and snapshot admin actions, bit rot, and their invariants (a child of
//! `world.rs`, which runs them).

use drbd_compat::{ReplState, Role};
use rand::Rng;

use super::World;

impl World {
    /// `drl verify` on node `i`: refused unless connected and Established (no resync, no
    /// run of its own).
    pub fn admin_verify(&mut self, i: usize) -> bool {
        let n = &self.n[i];
        let ok = n.up
            && self.net.is_some()
            && n.repl == ReplState::Established
            && n.sess.as_ref().is_some_and(|s| {
                s.end.is_none() && s.core.sync_role().is_none() && s.core.verify_running().is_none()
            });
        if !ok {
            return false;
        }
        let id = self.rng.random::<u64>() | 1;
        let peer_primary = n.peer_role == Some(Role::Primary);
        let now = self.now;
        self.note(format!("admin: verify on {i} (run {id:#x})"));
        self.n[i].step(now, |c, ctx| {
            c.verify_start(ctx, id, drl::limits::REPL_VERIFY_RATE_DEFAULT, peer_primary)
        });
        self.pump();
        true
    }

    /// `drl snapshot create` on node `i` (mostly the Secondary's, the backup site's).
    pub fn admin_snapshot(&mut self, i: usize) {
        if !self.n[i].up {
            return;
        }
        if self.n[i].role() == Role::Secondary {
            self.cov.snapshots_secondary += 1;
        }
        self.n[i].take_snapshot();
        self.note(format!("admin: snapshot on {i}"));
    }

    /// A snapshot keeps its point in time: its contents equal the disk when it was taken,
    /// whatever arrived since (replicated writes, resync writes, the node's own).
    pub(super) fn check_snapshots(&mut self) {
        for i in 0..2 {
            let Some(now) = self.n[i].read_snapshot() else {
                continue;
            };
            let Some((name, then, peer_writes)) = self.n[i].snap.as_ref() else {
                continue;
            };
            if self.n[i].peer_writes > *peer_writes {
                self.cov.snapshot_checks_after_peer_writes += 1;
            }
            let moved: Vec<usize> = (0..then.len()).filter(|&b| now[b] != then[b]).collect();
            assert!(
                moved.is_empty(),
                "snapshot {name} of node {i} changed after it was taken in blocks {moved:?} ({} replicated/resync writes since)",
                self.n[i].peer_writes - peer_writes
            );
        }
    }

    /// Bit rot: block `b` of node `i` changes on its disk with no write and no bit (only
    /// online verify finds it), in any volume of a group.
    pub fn corrupt(&mut self, i: usize, b: usize) {
        let b = b % self.knobs.blocks as usize;
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut d = self.n[i].disk();
        d.view[b] = tag;
        d.stable[b] = tag;
        drop(d);
        self.rot.insert(b);
        self.cov.corruptions += 1;
        // Bit rot under a chunk the snapshot did not preserve changes the snapshot too.
        self.n[i].snap = None;
        // The prefix check compares the Secondary's disk with the Primary's writes: bit rot
        // is not a replication fault.
        self.hist = None;
        self.note(format!("bit rot: block {b} of node {i}"));
    }

    /// Online verify finds differences only where bit rot made them: never a false alarm
    /// from writes in flight (both reads see the same point of the write stream).
    pub(super) fn check_verify_ends(&mut self) {
        for i in 0..2 {
            for end in std::mem::take(&mut self.n[i].verify_ends) {
                self.cov.verify_runs += 1;
                if end.out_of_sync_blocks > 0 {
                    self.cov.verify_found += 1;
                }
                assert!(
                    end.out_of_sync_blocks <= self.cov.corruptions,
                    "node {i}'s verify found {} differing blocks, but only {} were ever corrupted: {end:?}",
                    end.out_of_sync_blocks,
                    self.cov.corruptions
                );
                self.note(format!("verify on {i} ended: {end:?}"));
                self.verify_done.push((i, end));
            }
        }
    }

    /// On a settled pair: online verify from either node (seeded) finds exactly the blocks
    /// that differ (bit rot) and marks exactly those on the Primary; a disconnect / connect
    /// resyncs them (DRBD: verify marks, resync repairs).
    pub(super) fn verify_and_repair(&mut self) {
        if self.primary().is_none() {
            assert!(self.admin_primary(0), "heal: no node can be promoted");
            self.settle();
        }
        let p = self.primary().expect("a Primary");
        let blocks = self.knobs.blocks as usize;
        let (v0, v1) = (self.n[0].view(), self.n[1].view());
        let expected: Vec<usize> = (0..blocks).filter(|&b| v0[b] != v1[b]).collect();
        let from = self.rng.random_range(0..2);
        self.verify_done.clear();
        assert!(
            self.admin_verify(from),
            "heal: verify refused: {}",
            self.dump()
        );
        let mut n = 0;
        // Until the run ended and its last VerifyResult reached the Primary (which marks).
        while self.verify_done.is_empty() || !self.idle_net() {
            n += 1;
            assert!(n < 100_000, "heal: verify never ended: {}", self.dump());
            self.step(false);
        }
        let (_, end) = self.verify_done.remove(0);
        assert_eq!(end.stopped, None, "heal: verify on {from} stopped: {end:?}");
        assert_eq!(
            end.out_of_sync_blocks,
            expected.len() as u64,
            "verify on {from} reports {} differing blocks, the disks differ in {expected:?}",
            end.out_of_sync_blocks
        );
        // Each block in its own volume's bitmap (a group's run walks every volume).
        let marked: Vec<usize> = (0..blocks).filter(|&b| self.n[p].is_marked(b)).collect();
        assert_eq!(
            marked, expected,
            "verify on {from} marked other blocks on the Primary {p}"
        );
        if expected.is_empty() {
            return;
        }
        let split = self.knobs.group_split.map(|b| b as usize);
        if split.is_some_and(|s| expected.iter().any(|&b| b >= s)) {
            self.cov.group_verify_found += 1;
        }
        self.note(format!(
            "heal: verify found {expected:?}; disconnect / connect"
        ));
        self.admin_disconnect(p);
        self.admin_connect(p, false);
        self.connect();
        self.settle();
    }
}
