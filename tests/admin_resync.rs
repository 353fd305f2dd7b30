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

/// `pause-sync` holds a resync on either side (PausedSyncS / PausedSyncT, nothing moves),
/// `resume-sync` lets it finish; the disks end identical.
#[test]
fn pause_sync_holds_the_resync_and_resume_sync_finishes_it() {
    let p = Pair::start(PairOpts::new(32 * MIB));
    p.force_primary_and_sync("a");
    for (paused, state) in [("a", "PausedSyncS"), ("b", "PausedSyncT")] {
        p.cli_ok("a", &["disconnect", "r0"]);
        let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
        c.write_all_at(0, &Pair::random(u64::from(state.len() as u32), 16 * MIB))
            .unwrap();
        c.flush().unwrap();
        c.disconnect();
        let out = p.cli_ok(paused, &["pause-sync", "r0"]);
        assert!(out.starts_with("r0: "), "{out}");
        p.cli_ok("a", &["connect", "r0"]);
        p.wait(&format!("{paused} shows {state}"), WAIT, |a, b| {
            let r = if paused == "a" { a } else { b };
            r.is_some_and(|r| r["replication"] == state)
        });
        // Held: over a second, b receives no resync data (an observation window, not a wait).
        let before = num(&res(p.node("b"), "r0").unwrap(), "resync_bytes_received");
        std::thread::sleep(std::time::Duration::from_secs(1));
        let b = res(p.node("b"), "r0").unwrap();
        assert!(
            num(&b, "resync_bytes_received") <= before + 8 * MIB,
            "the paused resync moved: {b}"
        );
        assert_ne!(b["disk"], "UpToDate", "{b}");
        p.cli_ok(paused, &["resume-sync", "r0"]);
        p.cli_ok("b", &["wait-sync", "r0", "--timeout", "60"]);
        p.wait_in_sync("a", "resync finished after resume-sync");
        p.assert_disks_identical(&format!("after pause/resume on {paused}"));
    }
    // Resuming what is not paused is refused, in the daemon's words.
    let out = p.node("a").cli(&["resume-sync", "r0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not paused"));
}

/// A resource's `resync-rate` (DRBD's) caps its resync without any link-rate: measured on the
/// SyncSource's counters over a window of the resync, within 10%.
#[test]
fn resync_rate_caps_the_resync_of_one_resource() {
    const RATE: f64 = 2_000_000.0; // 16 Mbit
    let mut opts = PairOpts::new(32 * MIB);
    opts.extra_resource_keys = "resync-rate = \"16Mbit\"".into();
    let p = Pair::start(opts);
    p.force_primary_and_sync("a");
    p.cli_ok("a", &["disconnect", "r0"]);
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    c.write_all_at(0, &Pair::random(3, 16 * MIB)).unwrap();
    c.flush().unwrap();
    c.disconnect();
    p.cli_ok("a", &["connect", "r0"]);
    p.wait("a SyncSource", WAIT, |a, _| {
        a.is_some_and(|a| a["replication"] == "SyncSource")
    });
    // A counter and the instants just before and after the status call that read it: the
    // reading happened somewhere in between, so the window is known only within them.
    let data = || {
        let before = std::time::Instant::now();
        let a = res(p.node("a"), "r0").unwrap();
        (
            before,
            std::time::Instant::now(),
            num(&a, "resync_bytes_sent") - num(&a, "resync_zero_bytes"),
        )
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (t0_before, t0_after, b0) = data();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (t1_before, t1_after, b1) = data();
    let bytes = (b1 - b0) as f64;
    // The rate over the longest window the readings allow (at most the true rate) and over
    // the shortest (at least the true rate).
    let low = bytes / (t1_after - t0_before).as_secs_f64();
    let high = bytes / (t1_before - t0_after).as_secs_f64();
    println!("resync at {low:.0}..{high:.0} B/s with resync-rate {RATE}");
    // The cap holds within 10% (the guard), judged on the rate that is surely no higher than
    // the true one. A loaded host may run the resync below the rate (0.86x seen in a suite
    // run), but not far below: the floor is judged on the rate surely no lower.
    assert!(
        low <= RATE * 1.10,
        "resync ran at {low:.0} B/s or more, resync-rate {RATE} (at most 1.10x)"
    );
    assert!(
        high >= RATE * 0.5,
        "resync ran at {high:.0} B/s or less, resync-rate {RATE} (at least 0.5x)"
    );
    p.wait_in_sync("a", "the capped resync finished");
    p.assert_disks_identical("after a resync capped by resync-rate");
}
