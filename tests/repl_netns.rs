//! The replicated pair across two network namespaces joined by a veth pair (scripts/testbed.sh:
//! drl-a 198.18.0.1, drl-b 198.18.0.2), not only on loopback: initial sync and writes, resync
//! after a disconnect, and a silent cut (nft drops every packet, the link looks up).
//!
//! Needs root and working `ip netns`; otherwise each test prints why it is skipped. The
//! namespace names are fixed, so these tests take an exclusive lock on
//! /tmp/drl-testbed.lock (shared across test binaries and threads) before touching them.

mod common;

use common::nbd_client::{nbd_write, NbdClient};
use common::pair::*;
use common::qemu_io;
use std::process::Command;
use std::time::Duration;

fn testbed(args: &[&str]) -> std::process::Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testbed.sh"))
        .args(args)
        .output()
        .expect("run scripts/testbed.sh")
}

/// Holds the lock and the namespaces; tears both down on drop.
struct Testbed {
    _lock: std::fs::File,
}

impl Testbed {
    /// Some(testbed) when the namespaces are up; None (after printing why) when the machine
    /// cannot run them.
    fn up(test: &str) -> Option<Testbed> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "SKIPPED {test}: needs root to create network namespaces (running as uid {})",
                nix::unistd::Uid::effective()
            );
            return None;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/drl-testbed.lock")
            .unwrap();
        lock.lock().expect("lock /tmp/drl-testbed.lock");
        let out = testbed(&["up"]);
        if !out.status.success() {
            eprintln!(
                "SKIPPED {test}: scripts/testbed.sh up failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = testbed(&["down"]);
            return None;
        }
        Some(Testbed { _lock: lock })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = testbed(&["restore"]);
        let _ = testbed(&["down"]);
    }
}

fn netns_pair(size: u64) -> Pair {
    let mut o = PairOpts::new(size);
    o.netns = true;
    Pair::start(o)
}

#[test]
fn netns_initial_sync_writes_and_resync_after_disconnect() {
    let Some(_tb) = Testbed::up("netns_initial_sync_writes_and_resync_after_disconnect") else {
        return;
    };
    let p = netns_pair(64 * MIB);
    p.force_primary_and_sync("a");
    qemu_io(
        &p.uri("a"),
        &["write -P 0x5c 0 2M", "write -P 0x3e 33M 512k", "flush"],
    );
    nbd_write(&p.nbd("a"), 10 * MIB, &random_bytes(80, 2 * MIB));
    let (a0, b0) = p.wait_in_sync("a", "writes across the veth link");
    p.assert_disks_identical("netns: after initial sync and writes");

    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait("a StandAlone", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
    });
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    for i in 0..4u64 {
        c.write(i * 9 * MIB + 4096, &random_bytes(81 + i, MIB))
            .unwrap();
    }
    c.flush().unwrap();
    c.disconnect();
    p.cli_ok("a", &["connect", "r0"]);
    let (a1, b1) = p.wait_in_sync("a", "netns: resync after reconnect");
    let sent = num(&a1, "resync_bytes_sent") - num(&a0, "resync_bytes_sent");
    let recv = num(&b1, "resync_bytes_received") - num(&b0, "resync_bytes_received");
    for (who, v) in [("a sent", sent), ("b received", recv)] {
        assert!(
            (4 * MIB..=5 * MIB).contains(&v),
            "netns resync: {who} {v} bytes, expected about 4 MiB\n{}",
            p.report()
        );
    }
    p.assert_disks_identical("netns: after disconnect, writes, reconnect");
}

#[test]
fn netns_silent_cut_is_detected_and_resynced() {
    let Some(_tb) = Testbed::up("netns_silent_cut_is_detected_and_resynced") else {
        return;
    };
    let p = netns_pair(32 * MIB);
    p.force_primary_and_sync("a");
    let out = testbed(&["cut", "--silent"]);
    assert!(
        out.status.success(),
        "testbed cut --silent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Protocol A: the Primary keeps completing writes while the link silently eats packets.
    let data = random_bytes(90, 2 * MIB);
    let t0 = std::time::Instant::now();
    nbd_write(&p.nbd("a"), 6 * MIB, &data);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "writes on the Primary stalled for {took:?} behind a silently cut link\n{}",
        p.report()
    );
    p.wait(
        "a detects the silent cut (no reply from the peer)",
        WAIT,
        |a, _| a.is_some_and(|a| a["connection"] != "Connected"),
    );
    let (a, _) = p.wait("a's status", WAIT, |a, _| a.is_some());
    assert!(
        num(&a, "out_of_sync_bytes") >= 2 * MIB || num(&a, "send_queue_bytes") > 0,
        "after a silent cut the unshipped writes must be tracked: {a}"
    );
    let out = testbed(&["restore"]);
    assert!(
        out.status.success(),
        "testbed restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_in_sync("a", "netns: resync after the silent cut is lifted");
    p.assert_disks_identical("netns: after the silent cut");
}
