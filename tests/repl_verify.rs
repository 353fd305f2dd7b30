//! Online verify (`drl verify`, DRBD's `verify`) between two real daemons: it finds exactly the
//! blocks that differ, marks them on the Primary whichever node runs it, changes no data by
//! itself, and the next disconnect / connect resyncs what it marked.

mod common;

use common::nbd_client::nbd_write;
use common::pair::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 4096;

/// Flip bytes of `n`'s disk file behind its daemon's back (silent corruption on one side).
fn corrupt(p: &Pair, n: &str, offsets: &[u64]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p.disk(n))
        .unwrap();
    for &off in offsets {
        f.write_all_at(b"bit rot", off).unwrap();
    }
    f.sync_all().unwrap();
}

/// `drl verify r0 --json` on `n`: the report.
fn verify(p: &Pair, n: &str) -> Value {
    let out = p.cli_ok(n, &["verify", "r0", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify report {out:?}: {e}"))
}

fn oos(p: &Pair, n: &str) -> u64 {
    num(&res(p.node(n), "r0").unwrap(), "out_of_sync_bytes")
}

/// DRBD's repair after a verify: `disconnect` + `connect` on `n` resyncs the marked blocks
/// from the Primary (a); then both disks must be identical. Returns a's status.
fn reconnect_and_converge(p: &Pair, n: &str, what: &str) -> Value {
    p.cli_ok(n, &["disconnect", "r0"]);
    p.cli_ok(n, &["connect", "r0"]);
    let (a, _) = p.wait_in_sync("a", &format!("{what}: after disconnect/connect"));
    p.assert_disks_identical(what);
    a
}

#[test]
fn online_verify_finds_exactly_the_differing_blocks_and_reconnect_repairs_them() {
    let size = 32 * MIB;
    let p = Pair::start(PairOpts::new(size));
    p.force_primary_and_sync("a");
    nbd_write(&p.nbd("a"), 0, &random_bytes(1, 4 * MIB));
    nbd_write(&p.nbd("a"), 24 * MIB, &random_bytes(2, MIB));
    p.wait_in_sync("a", "after writes on a");

    // In sync: nothing found, nothing marked, the whole volume checked.
    let r = verify(&p, "a");
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["checked_bytes"], size, "{r}");
    assert_eq!(r["out_of_sync_bytes"], 0, "{r}");
    assert_eq!(oos(&p, "a"), 0);

    // Three blocks rot on the Secondary (two neighbours, one far away, one in a zero area).
    corrupt(&p, "b", &[MIB + 100, MIB + BLOCK, 20 * MIB + 5]);
    let r = verify(&p, "a");
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["out_of_sync_bytes"], 3 * BLOCK, "{r}\n{}", p.report());
    assert_eq!(r["marked"], "local", "{r}");
    assert_eq!(
        oos(&p, "a"),
        3 * BLOCK,
        "the Primary's bitmap: {}",
        p.report()
    );
    // Verify changes no data by itself.
    assert_ne!(
        file_bytes(&p.disk("a"), MIB, BLOCK),
        file_bytes(&p.disk("b"), MIB, BLOCK)
    );
    let sa = res(p.node("a"), "r0").unwrap();
    assert_eq!(sa["replication"], "Established", "{sa}");
    assert_eq!(sa["verify"], Value::Null, "{sa}");
    assert_eq!(sa["verify_last"]["out_of_sync_bytes"], 3 * BLOCK, "{sa}");

    // DRBD's way to repair: disconnect, connect; the marked blocks resync from the Primary.
    let a = reconnect_and_converge(&p, "a", "verify from the Primary");
    assert!(
        num(&a, "resync_bytes_sent") >= 3 * BLOCK,
        "the marked blocks were resynced: {a}"
    );

    // Run from the Secondary, it marks on its Primary peer (never on itself: that would make
    // the Secondary the resync source).
    corrupt(&p, "b", &[30 * MIB]);
    let text = p.cli_ok("b", &["verify", "r0"]);
    assert!(text.contains("out of sync"), "{text}");
    assert!(text.contains("drl disconnect r0; drl connect r0"), "{text}");
    let last = &res(p.node("b"), "r0").unwrap()["verify_last"];
    assert_eq!(last["marked"], "peer", "{last}");
    assert_eq!(last["out_of_sync_bytes"], BLOCK, "{last}");
    p.wait("a has the block marked", WAIT, |a, _| {
        a.is_some_and(|a| num(a, "out_of_sync_bytes") == BLOCK)
    });
    assert_eq!(oos(&p, "b"), 0, "{}", p.report());
    reconnect_and_converge(&p, "b", "verify from the Secondary");
}

/// Both reads of a range see the same point of the write stream (the Primary reads under the
/// resync lock, the Secondary once every earlier write is on its disk): writes running
/// through the whole verify cause no false alarm, whichever node runs it.
#[test]
fn verify_under_writes_finds_nothing_on_an_in_sync_pair() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let size = 64 * MIB;
    let p = Pair::start(PairOpts::new(size));
    p.force_primary_and_sync("a");
    for n in ["a", "b"] {
        let nbd = p.nbd("a");
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (stop2, writes2) = (stop.clone(), writes.clone());
        let writer = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                // 64 KiB writes cycling over the volume: verify meets them everywhere, and
                // the same blocks again and again.
                nbd_write(
                    &nbd,
                    (i * 64 * 1024 * 7) % (64 * MIB),
                    &random_bytes(i, 64 * 1024),
                );
                i += 1;
                writes2.store(i, Ordering::Relaxed);
            }
        });
        while writes.load(Ordering::Relaxed) < 5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Runs until at least 300 writes happened during them (at most 30 runs).
        let first = writes.load(Ordering::Relaxed);
        let mut reports = Vec::new();
        while writes.load(Ordering::Relaxed) < first + 300 && reports.len() < 30 {
            reports.push(verify(&p, n));
        }
        let during = writes.load(Ordering::Relaxed) - first;
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        eprintln!(
            "{} verify runs on {n} during {during} writes of 64 KiB",
            reports.len()
        );
        assert!(during >= 50, "the writer barely ran: {during} writes");
        for r in &reports {
            assert_eq!(r["outcome"], "completed", "{r}");
            assert_eq!(r["checked_bytes"], size, "{r}");
            assert_eq!(
                r["out_of_sync_bytes"],
                0,
                "verify on {n}: {r}\n{}",
                p.report()
            );
        }
        p.wait_in_sync("a", "writer stopped");
        p.assert_disks_identical("after verify under writes");
    }
}

#[test]
fn verify_is_refused_without_a_connected_peer() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.force_primary_and_sync("a");
    p.cli_ok("a", &["disconnect", "r0"]);
    let out = p.node("a").cli(&["verify", "r0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not connected"), "{err}");
    // And the daemon is fine.
    let a = res(p.node("a"), "r0").unwrap();
    assert_eq!(a["connection"], "StandAlone", "{a}");
}

fn wait_verify_done(p: &Pair, n: &str) -> Value {
    let (a, b) = p.wait(&format!("{n}'s verify run ended"), WAIT, |a, b| {
        let r = if n == "a" { a } else { b };
        r.is_some_and(|r| r["verify"].is_null() && !r["verify_last"].is_null())
    });
    if n == "a" {
        a
    } else {
        b
    }
}

/// A run stopped midway (here: the Primary steps down under a Secondary's run) ends on both
/// nodes: no node stays VerifyS / VerifyT, and the next run works.
#[test]
fn a_run_stopped_by_a_role_change_ends_cleanly_on_both_nodes() {
    let p = Pair::start(PairOpts::new(32 * MIB));
    p.force_primary_and_sync("a");
    // Slow, so it is still running when a steps down.
    p.cli_ok("b", &["verify", "r0", "--no-wait", "--rate", "2MiB/s"]);
    p.wait("b VerifyS, a VerifyT", WAIT, |a, b| {
        a.is_some_and(|a| a["replication"] == "VerifyT" && a["verify_peer"]["side"] == "VerifyT")
            && b.is_some_and(|b| b["replication"] == "VerifyS" && b["verify"]["side"] == "VerifyS")
    });
    // a drives no run of its own: `verify` is only this node's run.
    assert!(res(p.node("a"), "r0").unwrap()["verify"].is_null());
    p.cli_ok("a", &["secondary", "r0"]);
    let b = wait_verify_done(&p, "b");
    let last = &b["verify_last"];
    assert!(
        last["outcome"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: a node changed its role"),
        "{last}"
    );
    assert!(num(last, "checked_bytes") < 32 * MIB, "{last}");
    p.wait(
        "both Established, no run on either",
        std::time::Duration::from_secs(10),
        |a, b| {
            [a, b].iter().all(|r| {
                r.is_some_and(|r| {
                    r["replication"] == "Established"
                        && r["verify"].is_null()
                        && r["verify_peer"].is_null()
                })
            })
        },
    );
    // The connection stayed up (no late frame was taken for a protocol error).
    let connects = num(&res(p.node("a"), "r0").unwrap(), "connects");
    p.cli_ok("a", &["primary", "r0"]);
    let r = verify(&p, "b");
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["out_of_sync_bytes"], 0, "{r}");
    assert_eq!(num(&res(p.node("a"), "r0").unwrap(), "connects"), connects);
}

/// Both nodes run verify at once: every frame says whose run it belongs to, so the two runs
/// do not mix, both complete, and the link stays up.
#[test]
fn both_nodes_can_verify_at_the_same_time() {
    let p = Pair::start(PairOpts::new(32 * MIB));
    p.force_primary_and_sync("a");
    nbd_write(&p.nbd("a"), 0, &random_bytes(3, 4 * MIB));
    p.wait_in_sync("a", "after a write");
    corrupt(&p, "b", &[2 * MIB]);
    let connects = num(&res(p.node("a"), "r0").unwrap(), "connects");
    p.cli_ok("a", &["verify", "r0", "--no-wait", "--rate", "16MiB/s"]);
    p.cli_ok("b", &["verify", "r0", "--no-wait", "--rate", "16MiB/s"]);
    for n in ["a", "b"] {
        let r = wait_verify_done(&p, n);
        let last = &r["verify_last"];
        assert_eq!(last["outcome"], "completed", "{n}: {last}");
        assert_eq!(num(last, "checked_bytes"), 32 * MIB, "{n}: {last}");
        assert_eq!(num(last, "out_of_sync_bytes"), BLOCK, "{n}: {last}");
    }
    assert_eq!(oos(&p, "a"), BLOCK, "marked once, on the Primary");
    assert_eq!(num(&res(p.node("a"), "r0").unwrap(), "connects"), connects);
    p.wait("both Established", WAIT, |a, b| {
        [a, b]
            .iter()
            .all(|r| r.is_some_and(|r| r["replication"] == "Established"))
    });
}

/// A block marked by verify stays marked when a later write covers it only partly (the ack
/// of that write must not clear its bit), so the next reconnect still repairs it.
#[test]
fn a_partial_write_does_not_unmark_a_verified_block() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.force_primary_and_sync("a");
    corrupt(&p, "b", &[MIB + 2000]);
    let r = verify(&p, "a");
    assert_eq!(r["out_of_sync_bytes"], BLOCK, "{r}");
    // 512 bytes at the start of that block: bytes 2000.. still differ afterwards.
    nbd_write(&p.nbd("a"), MIB, &random_bytes(9, 512));
    p.wait("the write is acked", WAIT, |a, _| {
        a.is_some_and(|a| num(a, "send_queue_bytes") == 0 && num(a, "inflight_writes") == 0)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(oos(&p, "a"), BLOCK, "{}", p.report());
    reconnect_and_converge(&p, "a", "a partial write over a verified block");
}

/// `--rate` bounds how fast a run reads: 16 MiB at 4 MiB/s takes at least 3.5 s (the last
/// range may start at 3.75 s).
#[test]
fn the_rate_bounds_a_run() {
    let p = Pair::start(PairOpts::new(16 * MIB));
    p.force_primary_and_sync("a");
    let out = p.cli_ok("a", &["verify", "r0", "--json", "--rate", "4MiB/s"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["outcome"], "completed", "{r}");
    assert!(r["seconds"].as_f64().unwrap() >= 3.5, "{r}");
    let bad = p.node("a").cli(&["verify", "r0", "--rate", "fast"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a rate"));
}
