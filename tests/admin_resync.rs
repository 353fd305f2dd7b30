//! DRBD's data-placement commands (issue 13): `invalidate` and `invalidate-remote` repair a
//! replica that changed behind drl's back with a full resync; `outdate` fences a Secondary.

mod common;

use std::os::unix::fs::FileExt;

use common::nbd_client::NbdClient;
use common::pair::{in_sync, num, res, Pair, PairOpts, MIB, WAIT};

/// Rot `n` spots of node `n`'s backing file behind drl's back.
fn rot(p: &Pair, n: &str, seed: u8) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p.disk(n))
        .unwrap();
    for i in 0..4u64 {
        f.write_all_at(&[seed, seed ^ 0x5a, seed ^ 0xa5], i * 3 * MIB + 4097)
            .unwrap();
    }
    f.sync_all().unwrap();
}

/// After `cmd` on `on`, wait for a new session (the renegotiation) that ends in sync.
fn wait_resynced(p: &Pair, connects_before: u64, what: &str) {
    p.wait(what, WAIT, |a, b| {
        let (Some(a), Some(b)) = (a, b) else {
            return false;
        };
        num(a, "connects") > connects_before && in_sync(a) && in_sync(b)
    });
}

#[test]
fn invalidate_and_invalidate_remote_repair_a_rotten_replica() {
    let p = Pair::start(PairOpts::new(16 * MIB));
    p.force_primary_and_sync("a");
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    c.write_all_at(0, &Pair::random(7, 12 * MIB)).unwrap();
    c.flush().unwrap();
    p.wait_in_sync("a", "12 MiB written and shipped");
    p.assert_disks_identical("before the rot");

    // b rots; invalidate on b throws its data away and takes a's.
    rot(&p, "b", 0x11);
    let connects = num(&res(p.node("a"), "r0").unwrap(), "connects");
    let out = p.cli_ok("b", &["invalidate", "r0"]);
    assert!(out.contains("r0: Inconsistent"), "{out}");
    wait_resynced(&p, connects, "resynced after invalidate on b");
    p.assert_disks_identical("after invalidate on b");

    // b rots again; invalidate-remote on a overwrites b with a's data.
    rot(&p, "b", 0x22);
    let connects = num(&res(p.node("a"), "r0").unwrap(), "connects");
    p.cli_ok("a", &["invalidate-remote", "r0"]);
    wait_resynced(&p, connects, "resynced after invalidate-remote on a");
    p.assert_disks_identical("after invalidate-remote on a");

    // Refusals, in the daemon's words: invalidate on the Primary.
    let out = p.node("a").cli(&["invalidate", "r0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Primary"));
    c.disconnect();
}

#[test]
fn outdate_fences_a_disconnected_secondary() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.force_primary_and_sync("a");
    let out = p.node("b").cli(&["outdate", "r0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("while Connected"));
    p.cli_ok("b", &["disconnect", "r0"]);
    let out = p.cli_ok("b", &["outdate", "r0"]);
    assert!(out.contains("r0: Outdated"), "{out}");
    assert_eq!(res(p.node("b"), "r0").unwrap()["disk"], "Outdated");
    let out = p.node("b").cli(&["primary", "r0"]);
    assert!(
        !out.status.success(),
        "an Outdated node must not be promoted without --force"
    );
}
