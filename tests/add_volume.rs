//! A volume added to a running resource (issue 15, DRBD's `adjust` of a new volume) through
//! real daemons: the admin adds `[[resource.volume]] number = 1` and each node's `volume.1` to
//! the config and runs `drl adjust r0` on both nodes.
//!
//! The new volume appears (its NBD export `r0/1`), is announced by the Primary at a barrier and
//! syncs in full from it inside the running session, while volume 0 keeps replicating without a
//! resync: b's resynced bytes grow by exactly the new volume's size. From the barrier on, the
//! group's write order covers both volumes: a dependent writer alternating between them, then
//! a cut, leaves the Secondary a prefix of its writes; after healing both volumes are identical.
//!
//! Adjusted on the Primary only, the Secondary refuses the announced volume and both nodes
//! show the fix (`drl adjust` on the node that lacks it); once it ran there, the pair
//! converges with the volume synced, writes made meanwhile included.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::group_writer::{prefix_of, start_writer_on};
use common::nbd_client::NbdClient;
use common::pair::*;
use common::writer::block_data;
use serde_json::Value;

/// Volume 0's size, and the size of volume 1, added at run time.
const SIZES: [u64; 2] = [24 * MIB, 16 * MIB];

/// A one-volume pair `r0`, a Primary, in sync.
fn pair() -> Pair {
    let p = Pair::start(PairOpts::new(SIZES[0]));
    p.force_primary_and_sync("a");
    p
}

/// Write both nodes' config with volume 1 added (volume 0 keeps its paths: `volume_file`).
fn write_config_with_volume_1(p: &Pair) {
    let mut opts = p.opts.clone();
    opts.group = vec![SIZES[1]];
    let text = pair_config(p.d(), &opts, p.addr_a, p.addr_b, &opts.secret);
    for n in ["a", "b"] {
        std::fs::write(&p.node(n).config, &text).unwrap();
    }
}

/// `drl adjust r0` on `n`; its report must say the volume was added.
fn adjust(p: &Pair, n: &str) {
    let out = p.cli_ok(n, &["adjust", "r0"]);
    assert!(
        out.contains("volume 1 added"),
        "drl adjust r0 on {n} did not add volume 1: {out}"
    );
}

/// Both nodes connected and in sync, each volume with nothing out of sync.
fn wait_group_in_sync(p: &Pair, what: &str) -> (Value, Value) {
    p.wait(what, WAIT, |a, b| {
        let (Some(a), Some(b)) = (a, b) else {
            return false;
        };
        let clean = |r: &Value| {
            r["volumes"].as_array().is_some_and(|v| {
                v.len() == 2 && v.iter().all(|v| v["out_of_sync_bytes"].as_u64() == Some(0))
            })
        };
        in_sync(a) && in_sync(b) && clean(a) && clean(b)
    })
}

/// Writes random blocks of volume 0's upper third (past the dependent writer's blocks) through
/// a's export until stopped.
fn background_writer(p: &Pair) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, nbd) = (stop.clone(), p.nbd_of("a", 0));
    let t = std::thread::spawn(move || {
        let mut c = NbdClient::connect(&nbd).expect("NBD connect to volume 0");
        let first = SIZES[1] / 4096;
        let blocks = SIZES[0] / 4096 - first;
        let mut n = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            let b = first + (n * 7919) % blocks;
            c.write(b * 4096, &block_data(b, n))
                .expect("a write to volume 0");
            n += 1;
        }
        n
    });
    (stop, t)
}

#[test]
fn a_volume_added_at_run_time_syncs_in_full_alone_and_joins_the_groups_write_order() {
    let mut p = pair();
    let (stop_bg, bg) = background_writer(&p);
    let before = num(&res(&p.b, "r0").unwrap(), "resync_bytes_received");

    // The Secondary first: it holds the volume and waits for the Primary's announcement.
    write_config_with_volume_1(&p);
    adjust(&p, "b");
    // a holds its part of the resync (it answers nothing), so the sync of the new volume can
    // be seen running. (Resuming a paused SyncTarget renegotiates the link, which would
    // resync volume 0's writes in flight too.)
    p.cli_ok("a", &["pause-sync", "r0"]);
    adjust(&p, "a");
    p.wait(
        "volume 1 syncing alone, seen on both nodes",
        WAIT,
        |a, b| {
            let (Some(a), Some(b)) = (a, b) else {
                return false;
            };
            let vol = |r: &Value, v: usize| r["volumes"][v]["replication"].clone();
            vol(a, 1).as_str().is_some_and(|s| s.ends_with("SyncS"))
                && vol(a, 0) == "Established"
                && vol(b, 1) == "SyncTarget"
                && vol(b, 0) == "Established"
                && b["disk"] == "Inconsistent"
                && b["volumes"][1]["out_of_sync_bytes"].as_u64() > Some(0)
                && b["resync_volume"] == 1
        },
    );
    p.cli_ok("a", &["resume-sync", "r0"]);
    // While volume 0's writer runs: the resync over, b UpToDate, volume 1 clean on both.
    p.wait(
        "volume 1 synced after drl adjust on both nodes",
        WAIT,
        |a, b| {
            let v1_clean = |r: Option<&Value>| {
                r.is_some_and(|r| r["volumes"][1]["out_of_sync_bytes"].as_u64() == Some(0))
            };
            resynced(a, b) && v1_clean(a) && v1_clean(b)
        },
    );
    stop_bg.store(true, Ordering::SeqCst);
    let bg_writes = bg.join().unwrap();
    assert!(bg_writes > 0, "the writer on volume 0 wrote nothing");
    let (a, b) = wait_group_in_sync(&p, "the writer on volume 0 stopped");
    assert_eq!(
        a["volumes"][1]["size_bytes"].as_u64(),
        Some(SIZES[1]),
        "{a}"
    );
    assert!(
        a["volumes"][1]["nbd"]["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with("r0-1.nbd")),
        "{a}"
    );
    let resynced = num(&b, "resync_bytes_received") - before;
    assert_eq!(
        resynced,
        SIZES[1],
        "b resynced {resynced} bytes: the new volume's size, and nothing of volume 0 (its \
         writer ran throughout)\n{}",
        p.report()
    );
    p.assert_volumes_identical(&SIZES, "after the new volume's sync");

    // From the barrier on, one write order for both volumes.
    let run = 0x5eed_add0_u64;
    let writes = 2 * (SIZES[1] / 4096);
    let (acked, stop, writer) = start_writer_on([p.nbd_of("a", 0), p.nbd_of("a", 1)], run, writes);
    common::wait_until("the dependent writer wrote both volumes", WAIT, || {
        acked.load(Ordering::SeqCst) >= 64
    });
    let (at_cut, total) = p.cut_under_writer(
        Cut::Disconnect,
        Duration::from_millis(150),
        &acked,
        &stop,
        writer,
    );
    let disks = p.volumes("b");
    let k = prefix_of(run, total, &disks).unwrap_or_else(|e| panic!("{e}\n{}", p.report()));
    eprintln!("b holds writes 0..{k} of {total} ({at_cut} acked at the cut)");

    p.cli_ok("a", &["connect", "r0"]);
    wait_group_in_sync(&p, "healed after the cut");
    p.assert_volumes_identical(&SIZES, "after healing");
}

#[test]
fn a_volume_added_on_the_primary_only_names_the_fix_then_converges_after_adjust_there() {
    let p = pair();
    write_config_with_volume_1(&p);
    adjust(&p, "a");
    // The Secondary refuses the announced volume; both nodes show why and the fix.
    p.wait("both nodes name drl adjust as the fix", WAIT, |a, b| {
        let says = |r: Option<&Value>| {
            r.and_then(|r| r["last_error"].as_str())
                .is_some_and(|e| e.contains("volume") && e.contains("drl adjust"))
        };
        says(a) && says(b)
    });
    // a is Primary with the new volume: writes to it are taken (and synced later).
    let data = common::pair::random_bytes(7, 256 * 1024);
    common::nbd_client::nbd_write(&p.nbd_of("a", 1), 5 * MIB, &data);
    let a = res(&p.a, "r0").unwrap();
    assert_ne!(a["connection"], "Connected", "{a}");

    adjust(&p, "b");
    wait_group_in_sync(&p, "volume 1 synced once b added it too");
    p.assert_volumes_identical(&SIZES, "after drl adjust on the Secondary");
    assert_eq!(
        file_bytes(&p.disk_of("b", 1), 5 * MIB, data.len() as u64),
        data
    );
}
