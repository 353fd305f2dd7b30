//! A snapshot taken on the Secondary (the backup site, where drills and streams to Swift take
//! theirs) keeps its point in time while replicated writes and resync writes arrive, and it
//! streams and restores (issue 12). Before the one write pipeline, the replication receiver
//! and the resync target wrote straight to the disk, past the snapshot layer: the restored
//! snapshot held the newer data.

mod common;

use common::nbd_client::{nbd_write, NbdClient};
use common::pair::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn a_secondary_snapshot_keeps_its_point_in_time_and_streams() {
    let size = 32 * MIB;
    let mut opts = PairOpts::new(size);
    // Room to preserve everything rewritten below (8 + 8 + 4 MiB of 32).
    opts.extra_resource_keys = "snapshot-space = \"32MiB\"".into();
    let p = Pair::start(opts);
    p.force_primary_and_sync("a");
    let a_data = random_bytes(1, 8 * MIB);
    nbd_write(&p.nbd("a"), 0, &a_data);
    p.wait_in_sync("a", "pattern A replicated");

    // Replicated writes keep arriving at b (16..24 MiB) while the snapshot is taken there.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, done, sock) = (stop.clone(), done.clone(), p.nbd("a"));
        std::thread::spawn(move || {
            let mut c = NbdClient::connect(&sock).expect("NBD connect to a");
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let off = 16 * MIB + (k % 128) * 64 * 1024;
                c.write(off, &random_bytes(1000 + k, 64 * 1024)).unwrap();
                k += 1;
                done.store(k, Ordering::SeqCst);
            }
        })
    };
    p.wait("b receives the writer's writes", WAIT, |_, b| {
        b.is_some_and(|b| b["received_bytes"].as_u64().unwrap_or(0) > MIB)
    });
    p.cli_ok("b", &["snapshot", "create", "r0", "s1", "--json"]);
    let at_snapshot = done.load(Ordering::SeqCst);
    p.wait("the writer goes on after the snapshot", WAIT, |_, _| {
        done.load(Ordering::SeqCst) > at_snapshot + 20
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Replicated writes over the snapshot's data ...
    let b_data = random_bytes(2, 8 * MIB);
    nbd_write(&p.nbd("a"), 0, &b_data);
    p.wait_in_sync("a", "pattern B replicated over A");
    // ... and resync writes over a region the snapshot saw as zeroes.
    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait("a StandAlone", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] == "StandAlone")
    });
    nbd_write(&p.nbd("a"), 8 * MIB, &random_bytes(3, 4 * MIB));
    p.cli_ok("a", &["connect", "r0"]);
    let (_, b) = p.wait_in_sync("a", "the resync after reconnecting");
    assert!(
        num(&b, "resync_bytes_received") >= 4 * MIB,
        "b was brought in sync by a resync: {b}"
    );
    p.assert_disks_identical("the Secondary's live disk follows the Primary");
    assert_eq!(
        file_bytes(&p.disk("b"), 0, 8 * MIB),
        b_data,
        "b's disk holds the newer writes"
    );

    // The snapshot streams from the Secondary and restores to its point in time.
    let vault = p.d().join("drl-pipeline-vault");
    let to = format!("{}::backups/r0", vault.display());
    p.cli_ok("b", &["stream", "r0", "s1", "--to", &to, "--json"]);
    let img = p.d().join("s1.img");
    p.cli_ok(
        "b",
        &[
            "restore",
            &format!("{to}/s1"),
            "--to",
            img.to_str().unwrap(),
            "--json",
        ],
    );
    let restored = std::fs::read(&img).unwrap();
    assert_eq!(restored.len() as u64, size);
    assert!(
        restored[..(8 * MIB) as usize] == a_data[..],
        "the Secondary's snapshot lost its point in time: replicated writes made after it \
         show through\n{}",
        p.report()
    );
    assert!(
        restored[(8 * MIB) as usize..(12 * MIB) as usize]
            .iter()
            .all(|&x| x == 0),
        "the Secondary's snapshot lost its point in time: resync writes made after it show \
         through\n{}",
        p.report()
    );
    let list = p.cli_ok("b", &["snapshot", "list", "r0", "--json"]);
    assert!(
        list.contains("\"valid\""),
        "the snapshot is still valid: {list}"
    );
}
