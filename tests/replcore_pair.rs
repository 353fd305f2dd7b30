//! The replication core's own two-daemon checks (the full contract suite is tests/repl_*.rs):
//! two real `drl daemon` processes on loopback, real NBD clients (qemu-io, nbdcopy), the real
//! CLI, on the shared harness of tests/common (its full `wait_in_sync`: Connected,
//! Established, both UpToDate, nothing out of sync or queued, the right Primary). Each test
//! names the DRBD behaviour it reproduces. (The wrong-secret case lives in tests/repl_faults.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pair::*;
use common::{need, qemu_io, run};
use serde_json::Value;

fn start() -> Pair {
    need("qemu-io");
    Pair::start(PairOpts::new(32 * MIB))
}

fn connected(p: &Pair) {
    p.wait("both Connected", WAIT, |a, b| {
        a.is_some_and(|a| a["connection"] == "Connected")
            && b.is_some_and(|b| b["connection"] == "Connected")
    });
}

fn st(p: &Pair, n: &str) -> Value {
    res(p.node(n), "r0").unwrap_or_else(|| panic!("{n} does not answer\n{}", p.report()))
}

/// qemu-io on a read-only export (a Secondary).
fn qemu_io_ro(uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-r", "-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = run(c.arg(uri));
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io: {out}"
    );
}

fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(bytes, bytes)).unwrap();
    p
}

/// `drl primary r0 --force` on a connected pair returns on the state it causes (issue 12):
/// a new session (the peer has seen the new generation) whose sync decision is made, never
/// the previous session's `Established` (a caller that checked `replication` and out-of-sync
/// alone saw "in sync" before the initial sync had even started).
fn force_primary_returns_on_the_decided_state(p: &Pair, n: &str) {
    let before = num(&st(p, n), "session");
    p.cli_ok(n, &["primary", "r0", "--force"]);
    let r = st(p, n);
    let session = num(&r, "session");
    assert!(
        session > before && session % 2 == 1,
        "`primary --force` returned before a new session was up: session {before} -> {session}: {r}\n{}",
        p.report()
    );
    assert!(
        matches!(
            r["replication"].as_str(),
            Some("WFBitMapS") | Some("SyncSource")
        ) || in_sync(&r),
        "`primary --force` returned on a state that is neither the initial sync nor its end: {r}\n{}",
        p.report()
    );
}

/// DRBD user guide, "initial full synchronization", "resynchronization": a new pair is
/// Inconsistent on both sides; `primary --force` makes one the source of the initial sync;
/// after a disconnect only the changed blocks are resynced.
#[test]
fn initial_sync_mirror_and_bitmap_resync_after_disconnect_and_secondary_crash() {
    need("nbdcopy");
    let mut p = start();
    connected(&p);
    assert_eq!(st(&p, "a")["disk"], "Inconsistent");
    assert_eq!(st(&p, "b")["disk"], "Inconsistent");
    force_primary_returns_on_the_decided_state(&p, "a");
    p.wait_in_sync("a", "the initial sync");
    // Zero blocks did not cross the wire in the initial sync: all 32 MiB were zero ranges.
    assert_eq!(
        num(&st(&p, "a"), "resync_zero_bytes"),
        32 * MIB,
        "{}",
        st(&p, "a")
    );
    assert!(num(&st(&p, "a"), "sent_bytes") < MIB, "{}", st(&p, "a"));

    qemu_io(
        &p.uri("a"),
        &["write -P 0x5a 0 3M", "write -P 0xa5 10M 64k", "flush"],
    );
    p.wait_in_sync("a", "after the writes");
    p.assert_disks_identical("replcore");
    assert!(num(&st(&p, "a"), "sent_bytes") >= 3 * MIB + 64 * 1024);

    // Disconnect, write N MiB, reconnect: about N MiB resync.
    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait("a StandAlone", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
    });
    let f = random_file(p.d(), "w1.bin", 4 * MIB);
    run(Command::new("nbdcopy")
        .args(["--destination-is-zero", "--no-extents"])
        .arg(&f)
        .arg(p.uri("a")));
    let oos = num(&st(&p, "a"), "out_of_sync_bytes");
    assert_eq!(
        oos,
        4 * MIB,
        "out of sync after writing 4 MiB while disconnected"
    );
    let before = num(&st(&p, "a"), "resync_bytes_sent");
    p.cli_ok("a", &["connect", "r0"]);
    p.wait_in_sync("a", "after the writes");
    let moved = num(&st(&p, "a"), "resync_bytes_sent") - before;
    assert_eq!(
        moved,
        4 * MIB,
        "resync moved {moved} bytes for 4 MiB written while apart"
    );
    p.assert_disks_identical("replcore");

    // kill -9 of the Secondary: the Primary keeps serving, then resyncs only what changed.
    p.b.kill9();
    qemu_io(&p.uri("a"), &["write -P 0x77 20M 2M"]);
    p.wait("a Connecting with 2 MiB out of sync", WAIT, |a, _| {
        a.is_some_and(|r| r["connection"] == "Connecting" && r["out_of_sync_bytes"] == 2 * MIB)
    });
    let before = num(&st(&p, "a"), "resync_bytes_sent");
    p.restart("b");
    p.wait_in_sync("a", "after the writes");
    let moved = num(&st(&p, "a"), "resync_bytes_sent") - before;
    assert!(
        (2 * MIB..=3 * MIB).contains(&moved),
        "resync moved {moved} bytes after 2 MiB written"
    );
    p.assert_disks_identical("replcore");
}

/// DRBD user guide, "split brain notification and automatic recovery" / "manual split brain
/// recovery", and fail back after a forced failover.
#[test]
fn failover_failback_split_brain_and_discard_my_data() {
    let mut p = start();
    p.force_primary_and_sync("a");
    qemu_io(&p.uri("a"), &["write -P 0x11 0 1M"]);
    p.wait_in_sync("a", "after the writes");

    // The Primary dies; the Secondary is promoted (needs --force: its peer is gone).
    p.a.kill9();
    p.wait("b Connecting", WAIT, |_, b| {
        b.is_some_and(|b| b["connection"] == "Connecting")
    });
    let out = p.b.cli(&["primary", "r0"]);
    assert!(
        !out.status.success(),
        "promotion without the peer must need --force"
    );
    p.cli_ok("b", &["primary", "r0", "--force"]);
    qemu_io(&p.uri("b"), &["write -P 0x22 8M 1M"]);
    // Fail back: the old Primary comes back as Secondary and becomes SyncTarget of only the
    // changed blocks (b's 1 MiB plus a's activity-log extents).
    p.restart("a");
    p.wait_in_sync("b", "fail back: a resynced from b");
    assert_eq!(st(&p, "a")["role"], "Secondary");
    let got = num(&st(&p, "a"), "resync_bytes_received");
    assert!(
        (MIB..=9 * MIB).contains(&got),
        "fail back resynced {got} bytes"
    );
    p.assert_disks_identical("replcore");

    // Both Primary while apart: split brain, nothing overwritten.
    p.cli_ok("a", &["disconnect", "r0"]);
    p.cli_ok("b", &["disconnect", "r0"]);
    p.cli_ok("a", &["primary", "r0", "--force"]);
    qemu_io(&p.uri("a"), &["write -P 0x33 16M 1M"]);
    qemu_io(&p.uri("b"), &["write -P 0x44 17M 1M"]);
    p.cli_ok("a", &["connect", "r0"]);
    p.cli_ok("b", &["connect", "r0"]);
    p.wait("split brain reported on both", WAIT, |a, b| {
        let sb = |r: Option<&Value>| {
            r.is_some_and(|r| r["split_brain"].is_string() && r["connection"] == "StandAlone")
        };
        sb(a) && sb(b)
    });
    qemu_io(&p.uri("a"), &["read -P 0x33 16M 1M", "read -P 0 17M 1M"]);
    qemu_io(&p.uri("b"), &["read -P 0x44 17M 1M"]);
    // The admin decides: b's changes are discarded.
    p.cli_ok("b", &["secondary", "r0"]);
    p.cli_ok("b", &["connect", "r0", "--discard-my-data"]);
    p.cli_ok("a", &["connect", "r0"]);
    p.wait_in_sync("a", "after the writes");
    p.assert_disks_identical("replcore");
    qemu_io_ro(&p.uri("b"), &["read -P 0x33 16M 1M", "read -P 0 17M 1M"]);
}
