//! Two real daemons on loopback replicating `r0` (issue 3): initial sync, replication of NBD
//! writes, resync after a disconnect and after a kill -9 of the Secondary, failover and fail
//! back, split brain. Only the documented contract is used: config, CLI, `status --json`
//! fields with DRBD's state names, the NBD exports; the disk files are compared directly.

mod common;

use common::nbd_client::{nbd_write, NbdClient};
use common::pair::*;
use common::*;
use std::process::Command;

/// The resync counters of a node, read once.
fn resync(r: &serde_json::Value) -> (u64, u64) {
    (num(r, "resync_bytes_sent"), num(r, "resync_bytes_received"))
}

fn assert_about(what: &str, got: u64, want: u64, slack: u64, p: &Pair) {
    assert!(
        got >= want && got <= want + slack,
        "{what}: {got} bytes ({:.2} MiB), expected between {want} and {} ({} MiB + {} KiB slack)\n{}",
        got as f64 / MIB as f64,
        want + slack,
        want / MIB,
        slack / 1024,
        p.report()
    );
}

#[test]
fn initial_sync_then_nbd_writes_give_identical_disks() {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    // Data already on a's disk before the pair is ever synced: the full initial sync must carry
    // it (zero blocks need not cross the wire, these are random).
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(dir.path().join("a/r0.img")).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&random_bytes(1, 4 * MIB), 8 * MIB).unwrap();
        f.write_all_at(&random_bytes(2, MIB), 40 * MIB).unwrap();
    }
    let p = Pair::start_in(dir, PairOpts::new(size));

    let (a, b) = p.wait(
        "fresh pair: both Secondary and Inconsistent, connected",
        WAIT,
        |a, b| {
            let (Some(a), Some(b)) = (a, b) else {
                return false;
            };
            a["connection"] == "Connected" && b["connection"] == "Connected"
        },
    );
    for (n, r) in [("a", &a), ("b", &b)] {
        assert_eq!(
            r["role"], "Secondary",
            "fresh node {n} must start Secondary: {r}"
        );
        assert_eq!(
            r["disk"], "Inconsistent",
            "fresh node {n} must start Inconsistent: {r}"
        );
        for k in [
            "name",
            "role",
            "disk",
            "connection",
            "replication",
            "peer_role",
            "peer_disk",
            "out_of_sync_bytes",
            "send_queue_bytes",
            "sent_bytes",
            "received_bytes",
            "resync_bytes_sent",
            "resync_bytes_received",
            "lag_ms",
        ] {
            assert!(
                r.get(k).is_some(),
                "status of {n} lacks the field {k:?} required by issue 3: {r}"
            );
        }
    }

    // Promoting an Inconsistent disk without --force is refused (DRBD: "Need access to
    // UpToDate data"), and changes nothing.
    let out = p.a.cli(&["primary", "r0"]);
    assert!(!out.status.success(), "`drl primary r0` without --force on a fresh Inconsistent pair must fail, it succeeded:\n{}", p.report());

    let ev_a = EventsTap::start(&p.a);
    let ev_b = EventsTap::start(&p.b);
    p.force_primary_and_sync("a");
    let (a, b) = p.wait("initial sync counters settled", WAIT, |a, b| {
        a.is_some() && b.is_some()
    });
    assert_eq!(a["peer_role"], "Secondary", "{a}");
    assert_eq!(b["peer_role"], "Primary", "{b}");
    assert!(
        ev_a.contains("SyncSource"),
        "a's `drl events --json` never showed SyncSource during the initial sync:\n{}",
        ev_a.text()
    );
    assert!(
        ev_b.contains("SyncTarget"),
        "b's `drl events --json` never showed SyncTarget during the initial sync:\n{}",
        ev_b.text()
    );
    let (sent, _) = resync(&a);
    let (_, recv) = resync(&b);
    assert!(sent >= 5 * MIB && sent <= size + MIB, "initial sync: a's resync_bytes_sent {sent} must cover the 5 MiB of random data and not exceed the volume\n{}", p.report());
    assert!(
        recv >= 5 * MIB && recv <= size + MIB,
        "initial sync: b's resync_bytes_received {recv}\n{}",
        p.report()
    );
    p.assert_disks_identical("after the initial sync");

    // Writes through the Primary's NBD export: qemu-io patterns (some unaligned) and random data.
    qemu_io(
        &p.uri("a"),
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 20M 64k",
            "write -P 0x11 63M 1M",
            "write -z 8M 1M",
            "flush",
        ],
    );
    let sent0 = num(&a, "sent_bytes");
    nbd_write(&p.nbd("a"), 30 * MIB, &random_bytes(3, 3 * MIB));
    let (a, _b) = p.wait_in_sync("a", "after aligned NBD writes on the Primary");
    p.assert_disks_identical("after aligned NBD writes on the Primary");
    // An unaligned write (read-modify-write on the Primary) is replicated and its block
    // cleared from the bitmap like any other.
    qemu_io(&p.uri("a"), &["write -P 0x22 8193 3000", "flush"]);
    p.wait_in_sync("a", "after an unaligned 3000-byte write at offset 8193");
    assert!(
        num(&a, "sent_bytes") >= sent0 + 3 * MIB,
        "a's sent_bytes must grow by at least the 3 MiB of random data: before {sent0}, now {a}"
    );
    p.assert_disks_identical("after NBD writes on the Primary");
    qemu_io(
        &p.uri("a"),
        &[
            "read -P 0xab 0 8193",
            "read -P 0x22 8193 3000",
            "read -P 0xab 11193 1037383",
        ],
    );

    // The Secondary's export must not take writes.
    let before = file_digest(&p.disk("b"));
    let refused_by_qemu = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x99 0 64k",
            "-c",
            "flush",
            &p.uri("b"),
        ])
        .output()
        .map(|o| {
            !o.status.success()
                || String::from_utf8_lossy(&o.stdout).contains("failed")
                || String::from_utf8_lossy(&o.stderr).contains("failed")
        })
        .unwrap_or(true);
    assert!(
        refused_by_qemu,
        "qemu-io wrote to the Secondary's NBD export without an error\n{}",
        p.report()
    );
    match NbdClient::connect(&p.nbd("b")) {
        Err(_) => {}
        Ok(mut c) => {
            let w = c.write(0, &[0x77u8; 4096]);
            assert!(
                c.read_only() || w.is_err(),
                "a write to the Secondary's export succeeded and it did not advertise read-only"
            );
        }
    }
    // The refused write was answered above; in sync (nothing queued, nothing out of sync)
    // again, b's disk is what it was.
    p.wait_in_sync("a", "still in sync after the refused writes on b");
    assert_eq!(
        file_digest(&p.disk("b")),
        before,
        "the Secondary's disk changed after writes were attempted on its export"
    );
    p.assert_disks_identical("after refused writes on the Secondary");
}

/// 8 chunks of 1 MiB at distinct, spread offsets.
fn spread_offsets() -> Vec<u64> {
    (0..8).map(|i| i * 7 * MIB + 512 * 1024).collect()
}

#[test]
fn disconnect_write_reconnect_resyncs_about_what_was_written() {
    let p = Pair::start(PairOpts::new(64 * MIB));
    p.force_primary_and_sync("a");
    let (a0, b0) = p.wait_in_sync("a", "before the disconnect");
    let (s0, _) = resync(&a0);
    let (_, r0) = resync(&b0);

    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait(
        "a StandAlone after `drl disconnect`, b not Connected",
        WAIT,
        |a, b| {
            a.is_some_and(|a| a["connection"] == "StandAlone")
                && b.is_some_and(|b| b["connection"] != "Connected")
        },
    );
    let n = 8 * MIB;
    let mut c = NbdClient::connect(&p.nbd("a")).expect("NBD connect to a (Primary, disconnected)");
    for (i, off) in spread_offsets().into_iter().enumerate() {
        c.write(off, &random_bytes(100 + i as u64, MIB))
            .unwrap_or_else(|e| panic!("write at {off} on the disconnected Primary: {e}"));
    }
    c.flush().unwrap();
    c.disconnect();
    let (a, _) = p.wait(
        "a counts the 8 MiB written while disconnected as out of sync",
        WAIT,
        |a, _| a.is_some_and(|a| a["out_of_sync_bytes"].as_u64().unwrap_or(0) >= n),
    );
    assert_about(
        "out_of_sync_bytes on the disconnected Primary",
        num(&a, "out_of_sync_bytes"),
        n,
        MIB,
        &p,
    );
    assert_eq!(
        a["role"], "Primary",
        "a disconnected Primary keeps serving as Primary: {a}"
    );

    p.cli_ok("a", &["connect", "r0"]);
    let (a1, b1) = p.wait_in_sync("a", "after `drl connect r0`");
    assert_about(
        "resync_bytes_sent on a (delta)",
        resync(&a1).0 - s0,
        n,
        MIB,
        &p,
    );
    assert_about(
        "resync_bytes_received on b (delta)",
        resync(&b1).1 - r0,
        n,
        MIB,
        &p,
    );
    p.assert_disks_identical("after disconnect, 8 MiB of writes, reconnect");
}

#[test]
fn kill9_secondary_write_restart_resyncs_about_what_was_written() {
    let mut p = Pair::start(PairOpts::new(64 * MIB));
    p.force_primary_and_sync("a");
    // A replicated write first, inside the region written later (so that a Secondary's
    // activity log, if it is resynced after its crash, adds nothing beyond that region).
    nbd_write(&p.nbd("a"), 0, &random_bytes(7, 2 * MIB));
    let (a0, _) = p.wait_in_sync("a", "after a replicated write");
    let (s0, _) = resync(&a0);

    p.b.kill9();
    p.wait("a notices that b is gone", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] != "Connected")
    });
    let n = 8 * MIB;
    // Two whole 4 MiB activity-log extents.
    nbd_write(&p.nbd("a"), 0, &random_bytes(8, n));
    p.restart("b");
    // b reconnects by itself: no `drl connect`.
    let (a1, b1) = p.wait_in_sync(
        "a",
        "b restarted after kill -9 reconnects and resyncs by itself",
    );
    assert_about(
        "resync_bytes_sent on a (delta)",
        resync(&a1).0 - s0,
        n,
        MIB,
        &p,
    );
    assert_about(
        "resync_bytes_received on the restarted b",
        resync(&b1).1,
        n,
        MIB,
        &p,
    );
    p.assert_disks_identical("after kill -9 of the Secondary, 8 MiB of writes, restart");
}

#[test]
fn failover_then_fail_back_resyncs_only_changed_blocks() {
    let mut p = Pair::start(PairOpts::new(64 * MIB));
    p.force_primary_and_sync("a");
    // Everything a ever writes is in activity-log extent 1 (4..8 MiB), everything b writes in
    // extent 3 (12..16 MiB): whatever the granularity of a crash resync, the union is 8 MiB.
    let replicated = random_bytes(20, 4 * MIB);
    nbd_write(&p.nbd("a"), 4 * MIB, &replicated);
    p.wait_in_sync("a", "after a replicated write on a");

    // a loses its peer, keeps writing (these writes never reach b), then dies.
    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait("a StandAlone", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
    });
    nbd_write(&p.nbd("a"), 4 * MIB, &random_bytes(21, 4 * MIB));
    p.a.kill9();

    // Failover: b is promoted with --force and serves writes.
    p.wait("b sees the peer gone", WAIT, |_, b| {
        b.is_some_and(|b| b["connection"] != "Connected")
    });
    p.cli_ok("b", &["primary", "r0", "--force"]);
    let (_, b) = p.wait("b Primary", WAIT, |_, b| {
        b.is_some_and(|b| b["role"] == "Primary")
    });
    assert_eq!(
        b["disk"], "UpToDate",
        "the promoted survivor must be UpToDate: {b}"
    );
    let b_writes = random_bytes(22, 4 * MIB);
    nbd_write(&p.nbd("b"), 12 * MIB, &b_writes);
    let (_, b0) = p.wait("b counted its writes", WAIT, |_, b| b.is_some());
    let (bs0, _) = resync(&b0);

    // Fail back: a returns as Secondary and becomes SyncTarget of b.
    let ev_b = EventsTap::start(&p.b);
    // The old Primary comes back Secondary and connecting (its `drl disconnect` is not
    // persisted), and becomes SyncTarget of b without an admin's help.
    p.restart("a");
    p.assert_came_back_secondary("a");
    let (b1, a1) = {
        let (a, b) = p.wait_in_sync(
            "b",
            "fail back: old Primary a resynced from the new Primary b",
        );
        (b, a)
    };
    assert!(
        ev_b.contains("SyncSource"),
        "b's `drl events --json` never showed SyncSource during the fail back:\n{}",
        ev_b.text()
    );
    // a's 4 MiB nobody else saw and b's 4 MiB: both regions, and nothing else.
    assert_about(
        "resync_bytes_received on a (fail back)",
        num(&a1, "resync_bytes_received"),
        8 * MIB,
        MIB,
        &p,
    );
    assert_about(
        "resync_bytes_sent on b (fail back, delta)",
        resync(&b1).0 - bs0,
        8 * MIB,
        MIB,
        &p,
    );
    assert_eq!(
        num(&a1, "resync_bytes_sent"),
        0,
        "a must not have been a sync source: {a1}"
    );
    p.assert_disks_identical("after fail back");
    assert!(
        file_bytes(&p.disk("a"), 4 * MIB, 4 * MIB) == replicated,
        "a's unreplicated writes must be discarded in favour of b's data (the replicated version)"
    );
    assert!(
        file_bytes(&p.disk("a"), 12 * MIB, 4 * MIB) == b_writes,
        "b's writes after failover must be on a after fail back"
    );

    // And back to the original roles: b steps down, a is promoted (no --force needed: both
    // UpToDate and connected), writes replicate from a again.
    p.cli_ok("b", &["secondary", "r0"]);
    // The role change is cluster-wide (`role_changes_wait_for_the_peer`): a promotes at once.
    p.cli_ok("a", &["primary", "r0"]);
    nbd_write(&p.nbd("a"), 20 * MIB, &random_bytes(23, MIB));
    p.wait_in_sync("a", "roles restored, a Primary again");
    p.assert_disks_identical("after the roles were switched back");
}

/// DRBD changes roles cluster-wide: when `drbdadm secondary` returns, the peer knows, so
/// `primary` on the peer right after just works. Here the link holds every piece for 400 ms,
/// so a role change that returned as soon as it was local would leave the peer behind.
#[test]
fn role_changes_wait_for_the_peer() {
    let mut opts = PairOpts::new(8 * MIB);
    opts.proxied = true;
    let p = Pair::start(opts);
    p.force_primary_and_sync("a");
    for proxy in &p.proxies {
        proxy.set_delay(std::time::Duration::from_millis(400));
    }
    let t = std::time::Instant::now();
    p.cli_ok("a", &["secondary", "r0"]);
    let took = t.elapsed();
    let b = res(p.node("b"), "r0").unwrap();
    assert_eq!(
        b["peer_role"], "Secondary",
        "b right after a's secondary: {b}"
    );
    // The wait ended on the peer's confirmation, not on the bound (REPL_STATE_ACK_TIMEOUT_MS):
    // a timed-out wait logs that the peer did not confirm. (Not a duration: every piece
    // crossing the 400 ms link costs 400 ms, and a loaded host splits frames into more
    // pieces, so the confirmation's time is the host's, not the contract's.)
    let log = p.node("a").log_text();
    assert!(
        !log.contains("did not confirm the role change"),
        "secondary took {took:?} and timed out waiting for the peer:\n{log}"
    );
    p.cli_ok("b", &["primary", "r0"]);
    let a = res(p.node("a"), "r0").unwrap();
    assert_eq!(a["peer_role"], "Primary", "a right after b's primary: {a}");
    assert_eq!(a["connection"], "Connected", "{a}");
}

#[test]
fn split_brain_is_detected_nothing_overwritten_then_discard_my_data_resolves() {
    let p = Pair::start(PairOpts::new(64 * MIB));
    p.force_primary_and_sync("a");
    // Common, replicated, non-zero data under both regions that will diverge: the resync
    // after resolution must then carry real data for both (zero blocks may cross as "zeroes"
    // that a byte counter does not see).
    let common = random_bytes(29, 10 * MIB);
    nbd_write(&p.nbd("a"), 0, &common);
    p.wait_in_sync("a", "common data replicated");
    p.cli_ok("a", &["disconnect", "r0"]);
    p.cli_ok("b", &["disconnect", "r0"]);
    p.wait("both StandAlone", WAIT, |a, b| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
            && b.is_some_and(|b| b["connection"] == "StandAlone")
    });
    p.cli_ok("b", &["primary", "r0", "--force"]);
    let wa = random_bytes(30, 2 * MIB);
    let wb = random_bytes(31, 2 * MIB);
    nbd_write(&p.nbd("a"), 0, &wa);
    nbd_write(&p.nbd("b"), 8 * MIB, &wb);

    p.cli_ok("a", &["connect", "r0"]);
    p.cli_ok("b", &["connect", "r0"]);
    // Give them time to meet, compare generations and refuse.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(8) {
        let (a, b) = (res(&p.a, "r0"), res(&p.b, "r0"));
        for r in [&a, &b].into_iter().flatten() {
            if r["replication"] == "SyncSource" || r["replication"] == "SyncTarget" {
                panic!(
                    "two Primaries started a resync (one would overwrite the other): {r}\n{}",
                    p.report()
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Both sides decide from the same pair of Hellos (the decision is symmetric), so both
    // see the split brain and both stay StandAlone until the admin decides (DRBD's
    // after-sb-2pri disconnect: both are Primary here).
    let (a, b) = p.wait("split brain: StandAlone on both sides", WAIT, |a, b| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
            && b.is_some_and(|b| b["connection"] == "StandAlone")
    });
    let logs = format!(
        "{}\n{}\n{a}\n{b}",
        strip_ansi(&p.a.log_text()),
        strip_ansi(&p.b.log_text())
    )
    .to_lowercase();
    assert!(
        logs.contains("split") && logs.contains("brain")
            || logs.contains("split-brain")
            || logs.contains("splitbrain"),
        "no clear split-brain reason in status or logs\n{}",
        p.report()
    );
    assert_eq!(a["role"], "Primary", "{a}");
    assert_eq!(b["role"], "Primary", "{b}");
    // Nothing overwritten: each disk still holds its own writes and not the other's.
    assert!(
        file_bytes(&p.disk("a"), 0, 2 * MIB) == wa,
        "a's own writes were overwritten during the split brain"
    );
    assert!(
        file_bytes(&p.disk("b"), 8 * MIB, 2 * MIB) == wb,
        "b's own writes were overwritten during the split brain"
    );
    assert!(
        file_bytes(&p.disk("a"), 8 * MIB, 2 * MIB) == common[(8 * MIB) as usize..],
        "b's writes reached a during the split brain"
    );
    assert!(
        file_bytes(&p.disk("b"), 0, 2 * MIB) == common[..(2 * MIB) as usize],
        "a's writes reached b during the split brain"
    );

    // The admin resolves it: b is the victim.
    let (_, b0) = p.wait("b status", WAIT, |_, b| b.is_some());
    let (_, r0) = resync(&b0);
    p.cli_ok("b", &["secondary", "r0"]);
    p.cli_ok("b", &["connect", "r0", "--discard-my-data"]);
    // The survivor is StandAlone (above): DRBD's procedure connects it again by hand.
    p.cli_ok("a", &["connect", "r0"]);
    let (_, b1) = p.wait_in_sync("a", "split brain resolved with --discard-my-data on b");
    // The union of both sides' changes: a's 2 MiB and b's 2 MiB.
    assert_about(
        "resync_bytes_received on the victim b",
        resync(&b1).1 - r0,
        4 * MIB,
        MIB,
        &p,
    );
    p.assert_disks_identical("after split-brain resolution");
    assert!(
        file_bytes(&p.disk("b"), 0, 2 * MIB) == wa,
        "the survivor's writes must be on the victim after resolution"
    );
}

/// `drl primary r0 --force` issued while the two daemons are still shaking hands (right after
/// start; the pair goes through proxies, which widens the window): both sides must still agree
/// on the initial sync and end in sync. Repeated, since it is a race.
#[test]
fn forced_promotion_during_the_handshake_still_converges() {
    for i in 0..12 {
        let mut opts = PairOpts::new(16 * MIB);
        opts.proxied = true;
        let p = Pair::start(opts);
        p.cli_ok("a", &["primary", "r0", "--force"]);
        let (a, b) = p.wait(
            &format!("iteration {i}: in sync after a promotion during the handshake"),
            std::time::Duration::from_secs(20),
            |a, b| {
                let (Some(a), Some(b)) = (a, b) else {
                    return false;
                };
                in_sync(a) && in_sync(b) && a["role"] == "Primary" && b["role"] == "Secondary"
            },
        );
        assert_eq!(a["generation"]["current"], b["generation"]["current"], "iteration {i}: generations differ after the initial sync (status field `generation`, if reported)");
    }
}
