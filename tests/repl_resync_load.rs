//! Resync under continuous application writes (issue 12): the link is cut and restored, and the
//! Secondary killed with -9 and restarted, again and again while fio keeps 32 random writes in
//! flight on the Primary. Every resync must finish (the Secondary's session must keep reading,
//! pinging and timing out whatever its disk writes wait for) and the disks must end identical.
//!
//! The bug this guards: the Secondary awaited each received resync write inside its session
//! loop while the replicated writes the receiver had released waited to be polled by that same
//! loop; once they held every slot of the io_uring engine, the resync write waited for a slot
//! forever, the session stopped reading its socket and never timed out (Connected/SyncTarget,
//! every reconnect refused).

mod common;

use common::pair::*;
use common::{need, KillOnDrop};
use std::process::{Command, Stdio};

/// fio against the Primary's NBD export: 4 KiB random writes, 32 in flight, until killed.
fn fio_writer(p: &Pair) -> KillOnDrop {
    need("fio");
    let child = Command::new("fio")
        .args([
            "--name=drl-pipeline-load",
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={}", p.uri("a")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=48m",
            "--time_based",
            "--runtime=3600",
            "--refill_buffers",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.d().join("fio.err")).unwrap())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(child)
}

/// Some writes counted on the Primary since `before` (fio is running, not stuck).
fn written(a: &serde_json::Value) -> u64 {
    a["nbd"]["stats"]["bytes_written"].as_u64().unwrap_or(0)
}

/// Wait until the resync finishes; fail when it stops moving: the bytes the SyncSource (a) has
/// answered (data and zero ranges) stand still for `WAIT`, or it is still going after ten of
/// them. A deadline on the whole resync measured the host: beside a CPU hog, with fio's 32
/// writes in flight, a round's resync has taken minutes while moving all the time, and the bug
/// this test guards is a resync that stops.
fn wait_resynced(p: &Pair, round: usize) {
    let moved = |a: Option<&serde_json::Value>| {
        a.map(|a| {
            a["resync_bytes_sent"].as_u64().unwrap_or(0)
                + a["resync_zero_bytes"].as_u64().unwrap_or(0)
        })
    };
    let t0 = std::time::Instant::now();
    let mut mark = None;
    let mut done = false;
    while !done {
        assert!(
            t0.elapsed() < 10 * WAIT,
            "round {round}: the resync under writes still runs after {:?}\n{}",
            10 * WAIT,
            p.report()
        );
        p.wait(
            &format!("round {round}: the resync under writes finishes or moves on"),
            WAIT,
            |a, b| {
                done = resynced(a, b);
                let m = moved(a);
                done || std::mem::replace(&mut mark, m) != m
            },
        );
    }
}

#[test]
fn resync_under_writes_survives_repeated_disconnects_and_secondary_kills() {
    let mut p = Pair::start(PairOpts::new(64 * MIB));
    p.force_primary_and_sync("a");
    let mut fio = fio_writer(&p);
    for round in 0..8 {
        let (a0, _) = p.wait("a answers", WAIT, |a, _| a.is_some());
        let w0 = written(&a0);
        if round % 4 == 3 {
            p.b.kill9();
            p.wait("a notices b is gone", WAIT, |a, _| {
                a.is_some_and(|a| a["connection"] != "Connected")
            });
        } else {
            p.cli_ok("a", &["disconnect", "r0"]);
        }
        // Writes while apart: a resync of a few MiB, raced by the writes that keep coming.
        p.wait("a marks writes made while apart", WAIT, |a, _| {
            a.is_some_and(|a| a["out_of_sync_bytes"].as_u64().unwrap_or(0) >= 2 * MIB)
        });
        if round % 4 == 3 {
            p.restart("b");
        } else {
            p.cli_ok("a", &["connect", "r0"]);
        }
        wait_resynced(&p, round);
        let (a1, _) = p.wait("a answers", WAIT, |a, _| a.is_some());
        assert!(
            written(&a1) > w0,
            "round {round}: fio wrote nothing on a: the load is not running\n{}",
            p.report()
        );
    }
    let _ = fio.0.kill();
    let _ = fio.0.wait();
    p.wait_in_sync("a", "after the writer stopped");
    p.assert_disks_identical("after 8 resyncs under continuous writes");
}
