//! Consistency groups through real daemons (issue 15): a resource `r0` of two volumes, each with
//! its own disk, metadata and NBD export, replicated in one write order.
//!
//! The order test: a writer issues dependent writes alternating between the two volumes (write
//! k goes to volume k % 2, block k / 2, and is sent only after write k-1's reply; each block
//! names its own sequence number and its predecessor's volume and sequence); the link is cut at
//! a random moment (kill -9 of the Primary, `drl disconnect`, or both TCP directions dropped);
//! then the Secondary's two volumes together must hold exactly writes 0..k, never a write whose
//! predecessor (on the other volume) is missing. Repeated with a printed seed
//! (`DRL_GROUP_SEED=N` replays, `DRL_GROUP_RUNS=N` runs more).
//!
//! Why groups exist: the same writer on two separate one-volume resources fails this check,
//! because each resource has its own link and epochs: one link can drop while the other goes
//! on (`two_separate_resources_lose_the_order_when_one_link_drops`; the core's property test
//! `src/repl/core/group_prop_tests.rs` shows the same with one link merely ahead of the other).
//!
//! After a `drl disconnect` run the pair reconnects and resyncs: both volumes must end
//! identical on both nodes (the group's per-volume bitmaps crossed in one session).

mod common;

use common::nbd_client::NbdClient;
use common::pair::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::group_writer::*;
use rand::{Rng, SeedableRng};

/// Volume 0's and volume 1's sizes.
const SIZES: [u64; 2] = [24 * MIB, 16 * MIB];

/// The dependent writer through a's two exports (`nbd`, the group's two volumes unless given):
/// write k waits for write k-1's reply. Returns the count of acknowledged writes, the stop flag
/// and the thread.
fn start_writer(
    p: &Pair,
    run: u64,
    writes: u64,
) -> (Arc<AtomicU64>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    start_writer_on([p.nbd_of("a", 0), p.nbd_of("a", 1)], run, writes)
}

/// A proxied pair whose `r0` is a group of two volumes; streams go to a vault in its directory.
fn group_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PairOpts::new(SIZES[0]);
    opts.group = vec![SIZES[1]];
    opts.proxied = true;
    opts.extra_tables = format!(
        "[stream]\nvault-dir = \"{}\"\n",
        dir.path().join("vault").display()
    );
    Pair::start_in(dir, opts)
}

/// `from` demoted, `to` promoted, then both volumes in sync and identical.
fn switch_over(p: &Pair, from: &str, to: &str) {
    p.cli_ok(from, &["secondary", "r0"]);
    p.cli_ok(to, &["primary", "r0"]);
    p.wait_in_sync(to, &format!("the group moved from {from} to {to}"));
    p.assert_volumes_identical(&SIZES, &format!("after the move from {from} to {to}"));
}

#[test]
fn the_secondarys_volumes_together_always_hold_a_prefix_of_dependent_writes() {
    let seed: u64 = common::env_or("DRL_GROUP_SEED", || rand::rng().random());
    let runs: u64 = common::env_or("DRL_GROUP_RUNS", || 6);
    eprintln!("group write order: seed {seed} ({runs} runs; replay with DRL_GROUP_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Both volumes fill at the same pace; the smaller one bounds the sequence.
    let writes = 2 * (SIZES[1] / BLOCK as u64);
    let mut nonempty = 0;
    let mut summary = Vec::new();
    for run in 0..runs {
        let cut = [Cut::Disconnect, Cut::KillPrimary, Cut::DropTcp][(run % 3) as usize];
        let delay_ms = rng.random_range(20..900u64);
        let run_id = seed ^ (run + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let p = group_pair();
        let mut p = p;
        p.force_primary_and_sync("a");

        let (acked, stop, writer) = start_writer(&p, run_id, writes);
        // Writes to both volumes before the cut, then a random moment.
        common::wait_until("the writer wrote both volumes", WAIT, || {
            acked.load(Ordering::SeqCst) >= 2
        });
        // b reports the link gone only after its session applied everything it received
        // (`session::run` drains before `finish` publishes the state); no new link can form
        // (the Primary is dead, StandAlone, or its proxies refuse).
        let (acked_at_cut, acked_total) =
            p.cut_under_writer(cut, Duration::from_millis(delay_ms), &acked, &stop, writer);

        let prefix = prefix_of(run_id, writes, &p.volumes("b")).unwrap_or_else(|e| {
            panic!(
                "run {run} (seed {seed}, cut {cut:?} after {delay_ms} ms): b: {e}\n{}",
                p.report()
            )
        });
        assert!(
            prefix <= acked_total + 1,
            "run {run}: b holds {prefix} writes but the writer only sent {acked_total} (+1 in flight)"
        );
        if prefix >= 2 {
            nonempty += 1;
        }
        let line = format!("run {run}: cut {cut:?} after {delay_ms} ms; acked {acked_at_cut} at the cut, {acked_total} in all; b holds writes 0..{prefix} across both volumes");
        eprintln!("{line}");
        summary.push(line);

        // The short resync check: the pair heals, both volumes converge (after a kill, from
        // both volumes' activity logs replayed into their bitmaps).
        match cut {
            Cut::Disconnect => p.cli_ok("a", &["connect", "r0"]),
            Cut::KillPrimary => {
                p.restart("a");
                p.promote_again("a");
                String::new()
            }
            Cut::DropTcp => continue,
        };
        p.wait_in_sync("a", "reconnect after the cut");
        p.assert_volumes_identical(&SIZES, &format!("run {run}: after {cut:?} and reconnect"));
    }
    assert!(
        nonempty * 2 >= runs,
        "in most runs b held writes of neither volume: the check saw little:\n{}",
        summary.join("\n")
    );
}

#[test]
fn a_group_fails_over_and_back_as_one() {
    let mut p = group_pair();
    p.force_primary_and_sync("a");
    let (a, _) = p.wait("status shows both volumes", WAIT, |a, _| {
        a.is_some_and(|a| a["volumes"].as_array().is_some_and(|v| v.len() == 2))
    });
    assert_eq!(a["volumes"][1]["out_of_sync_bytes"], 0, "{a}");
    let text = p.cli_ok("a", &["status"]);
    assert!(
        text.contains("volume:0") && text.contains("volume:1"),
        "{text}"
    );

    // Writes to both volumes on a, then the roles move: b's two volumes become writable
    // together and a's both refuse writes.
    common::nbd_client::nbd_write(&p.nbd_of("a", 0), 0, &random_bytes(1, 64 * 1024));
    common::nbd_client::nbd_write(&p.nbd_of("a", 1), 4096, &random_bytes(2, 64 * 1024));
    switch_over(&p, "a", "b");
    for v in 0..2 {
        let mut c = NbdClient::connect(&p.nbd_of("a", v)).expect("NBD connect to a");
        assert!(
            c.write(0, &[7u8; 4096]).is_err(),
            "a's volume {v} accepted a write as Secondary"
        );
    }
    common::nbd_client::nbd_write(&p.nbd_of("b", 1), 8192, &random_bytes(3, 32 * 1024));
    common::nbd_client::nbd_write(&p.nbd_of("b", 0), 8192, &random_bytes(4, 32 * 1024));
    // And back.
    switch_over(&p, "b", "a");
    assert_eq!(
        common::pair::file_bytes(&p.disk_of("a", 1), 8192, 32 * 1024),
        random_bytes(3, 32 * 1024),
        "b's write to volume 1 as Primary did not reach a"
    );

    // A one-volume stream is no group stream: its restore into the group is refused before
    // anything is written (no group record).
    let res = p.cli_ok("a", &["snapshot", "create", "r0", "s1"]);
    assert!(res.contains("s1"), "{res}");
    let out = p.a.cli(&["restore", "backups/none/s1", "--to", "r0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no group record"),
        "{err}"
    );
    let dir = format!("{}/files/", p.d().display());
    let out = p.a.cli(&["restore", "backups/none/s1", "--to", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no group record"),
        "{err}"
    );

    // Resizing one volume of the group (DRBD's `res/vol`) is refused with the reason, and a
    // volume the group lacks is named as such.
    let out = p.a.cli(&["resize", "r0/1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("resizing volume 1 of a consistency group"),
        "{err}"
    );
    let out = p.a.cli(&["resize", "r0/2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no volume \"2\""),
        "{err}"
    );

    // `drl down` closes every volume (and gives back every file), `drl up` opens them again.
    p.cli_ok("a", &["down", "r0"]);
    p.cli_ok("a", &["up", "r0"]);
    p.wait("a's group up again and connected", WAIT, |a, _| {
        a.is_some_and(|a| {
            a["replication"] == "Established"
                && a["volumes"].as_array().is_some_and(|v| v.len() == 2)
        })
    });

    // A group's volume whose metadata went missing is refused, not recreated clean.
    assert_eq!(p.a.stop(), 0);
    std::fs::remove_file(volume_file(p.d(), "a", 1, "meta")).unwrap();
    let out = p.a.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing while volume 0's exists"),
        "{err}"
    );
}

#[test]
fn a_group_snapshot_under_dependent_writes_restores_a_prefix_of_both_volumes() {
    let p = group_pair();
    p.force_primary_and_sync("a");
    let run = 0x5eed_0001;
    let writes = 2 * (SIZES[1] / BLOCK as u64);
    let (acked, stop, writer) = start_writer(&p, run, writes);
    common::wait_until("writes to both volumes before the snapshot", WAIT, || {
        acked.load(Ordering::SeqCst) >= 100
    });
    let before = acked.load(Ordering::SeqCst);
    p.cli_ok("a", &["snapshot", "create", "r0", "cut"]);
    let after = acked.load(Ordering::SeqCst);
    // The writer goes on past the cut, so the snapshot must hold older data than the disks.
    common::wait_until("writes after the snapshot", WAIT, || {
        acked.load(Ordering::SeqCst) >= after + 100
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let list = p.cli_ok("a", &["snapshot", "list", "r0"]);
    assert!(list.contains("cut"), "{list}");
    // Streamed (every volume, then the group record) and restored over the live group: both
    // volumes go back to the cut, on a and, replicated, on b.
    p.cli_ok("a", &["stream", "r0", "cut", "--to", "backups/r0"]);
    // Into files first (no daemon: the CLI reads the vault itself): one file per volume,
    // DIR/r0-N.img, after the group record was found. A file target is refused with where a
    // group's stream goes instead.
    let dir = p.d().join("restored");
    let to_dir = format!("{}/", dir.display());
    let out = p.a.cli(&[
        "restore",
        "backups/r0/cut",
        "--to",
        &format!("{to_dir}one.img"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("restore it into a directory"),
        "{err}"
    );
    p.cli_ok("a", &["restore", "backups/r0/cut", "--to", &to_dir]);
    let files = [0, 1].map(|v| std::fs::read(dir.join(format!("r0-{v}.img"))).unwrap());
    for (v, f) in files.iter().enumerate() {
        assert_eq!(f.len() as u64, SIZES[v], "volume {v}'s restored file");
    }
    let k_files = prefix_of(run, writes, &files)
        .unwrap_or_else(|e| panic!("the group snapshot restored into files: {e}"));
    p.cli_ok("a", &["restore", "backups/r0/cut", "--to", "r0"]);
    p.wait_in_sync("a", "after the restore of the group snapshot");
    let k = prefix_of(run, writes, &p.volumes("a"))
        .unwrap_or_else(|e| panic!("the restored group snapshot: {e}"));
    assert!(
        (before..=after + 1).contains(&k),
        "the restored group holds writes 0..{k}; acked {before} before `snapshot create` and {after} after it"
    );
    assert_eq!(
        k_files, k,
        "the files and the live group restored different points"
    );
    p.assert_volumes_identical(&SIZES, "after the restore");
    eprintln!("group snapshot: writes 0..{k} (acked {before} before the command, {after} after)");
}

/// The events of a group name the volume (DRBD's `volume:N`): device and peer-device events
/// come one per volume, a peer-device one with that volume's `out_of_sync_bytes`, resync
/// progress with each volume's own `done`; `drl events` prints `volume:N` after the name.
#[test]
fn a_groups_events_name_the_volume() {
    let p = group_pair();
    p.force_primary_and_sync("a");
    let json = EventsTap::spawn(&p.b, &["events", "--json"]);
    let text = EventsTap::spawn(&p.b, &["events"]);
    // Both subscriptions are live once a change made after them shows in both (pause-sync
    // and resume-sync publish the peer-device state of every volume).
    common::wait_until("b's event taps are live", WAIT, || {
        p.cli_ok("b", &["pause-sync", "r0"]);
        p.cli_ok("b", &["resume-sync", "r0"]);
        json.contains("\"volume\":1") && text.contains("peer-device name:r0 volume:1")
    });
    // A cut, writes to both volumes (4 KiB and 1 MiB), and a resync that a (the SyncSource)
    // holds paused until each volume's progress was seen on b.
    p.cli_ok("a", &["disconnect", "r0"]);
    p.wait("b sees the link gone", WAIT, |_, b| {
        b.is_some_and(|b| b["connection"] != "Connected")
    });
    common::nbd_client::nbd_write(&p.nbd_of("a", 0), 0, &random_bytes(7, 4096));
    common::nbd_client::nbd_write(&p.nbd_of("a", 1), 0, &random_bytes(8, MIB));
    p.cli_ok("a", &["pause-sync", "r0"]);
    p.cli_ok("a", &["connect", "r0"]);
    let events = |want: &dyn Fn(&serde_json::Value) -> bool| {
        json.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| want(&e))
    };
    let is = |e: &serde_json::Value, kind: &str, object: &str, vol: u64| {
        e["kind"] == kind && e["object"] == object && e["volume"] == vol
    };
    let t0 = std::time::Instant::now();
    while !(0..2)
        .all(|v| events(&|e| is(e, "progress", "peer-device", v) && e["fields"]["done"].is_f64()))
    {
        assert!(
            t0.elapsed() < WAIT,
            "no progress of each volume:\n{}",
            json.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (v, oos) in [(0, 4096), (1, MIB)] {
        assert!(
            events(&|e| is(e, "change", "peer-device", v)
                && e["fields"]["replication"] == "SyncTarget"
                && e["fields"]["out_of_sync_bytes"] == oos),
            "no SyncTarget event of volume {v} with {oos} bytes out of sync:\n{}",
            json.text()
        );
        assert!(
            events(&|e| is(e, "change", "device", v) && e["fields"]["disk"] == "Inconsistent"),
            "{}",
            json.text()
        );
    }
    p.cli_ok("a", &["resume-sync", "r0"]);
    p.wait_in_sync("a", "after the resync of both volumes");
    common::wait_until("each volume back in sync in b's events", WAIT, || {
        (0..2).all(|v| {
            events(&|e| {
                is(e, "change", "peer-device", v)
                    && e["fields"]["replication"] == "Established"
                    && e["fields"]["out_of_sync_bytes"] == 0
            }) && events(&|e| is(e, "change", "device", v) && e["fields"]["disk"] == "UpToDate")
        })
    });
    assert!(
        text.contains("change device name:r0 volume:1 disk:UpToDate"),
        "{}",
        text.text()
    );
    // No event of a group's device or peer device without its volume.
    assert!(
        !events(
            &|e| (e["object"] == "device" || e["object"] == "peer-device")
                && e.get("volume").is_none()
        ),
        "{}",
        json.text()
    );
}

/// The plans' schedule on a group (`[[plan]] snapshot-every`, `snapshot-to`): every tick cuts
/// both volumes at one point in time and streams them as a group (each volume, then the group
/// record); the newest one, restored into files (`drl restore L/S --to DIR/`: one
/// `RES-N.img` per volume), holds a prefix of the dependent writes across both volumes.
/// Without its group record the same location is refused, not restored as half a group.
#[test]
fn a_groups_scheduled_snapshots_stream_as_a_group_and_restore_a_prefix_into_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut opts = PairOpts::new(SIZES[0]);
    opts.group = vec![SIZES[1]];
    opts.extra_tables = format!(
        "[stream]\nvault-dir = \"{d}/vault\"\n[dr]\nstate-dir = \"{d}/dr\"\ncheckpoints = \"plans/cp\"\n\n[[plan]]\nname = \"p\"\nresources = [\"r0\"]\ntemplate = \"{d}/p.yaml\"\ncinder-host = \"aio@nfs#nfs\"\nsnapshot-every = \"1s\"\nkeep = 3\nsnapshot-to = \"backups/sched\"\n[plan.volume.\"r0/0\"]\nparameter = \"boot\"\n"
    );
    let p = Pair::start_in(dir, opts);
    p.force_primary_and_sync("a");
    let run = 0x5eed_0002;
    let writes = 2 * (SIZES[1] / BLOCK as u64);
    let (acked, stop, writer) = start_writer(&p, run, writes);
    common::wait_until("writes to both volumes", WAIT, || {
        acked.load(Ordering::SeqCst) >= 100
    });
    let t_writing = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The actions the schedule recorded (in the vault's checkpoint store), as JSON.
    let actions_dir = std::path::Path::new(&d).join("vault/plans/cp/p/actions/r0");
    let actions = || -> Vec<serde_json::Value> {
        let mut names: Vec<_> = std::fs::read_dir(&actions_dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|f| serde_json::from_slice(&std::fs::read(f).ok()?).ok())
            .collect()
    };
    let taken_ms =
        |a: &serde_json::Value| -> u64 { a["snapshot"].as_str().unwrap()[2..].parse().unwrap() };
    common::wait_until(
        "a scheduled group snapshot taken under the writer, streamed and recorded",
        WAIT,
        || actions().iter().any(|a| taken_ms(a) > t_writing),
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let all = actions();
    let newest = all.last().unwrap();
    assert_eq!(newest["volumes"], 2, "{newest}");
    assert_eq!(newest["stored_at"], "backups/sched/r0", "{newest}");
    let snap = newest["snapshot"].as_str().unwrap();
    let list = p.cli_ok("a", &["snapshot", "list", "r0"]);
    assert!(list.contains(snap), "{list}");
    let out = std::path::Path::new(&d).join("restored");
    std::fs::create_dir(&out).unwrap();
    let from = format!("backups/sched/r0/{snap}");
    p.cli_ok(
        "a",
        &["restore", &from, "--to", &format!("{}/", out.display())],
    );
    let files = [0, 1].map(|v| std::fs::read(out.join(format!("r0-{v}.img"))).unwrap());
    assert_eq!(files[1].len() as u64, SIZES[1]);
    let k = prefix_of(run, writes, &files)
        .unwrap_or_else(|e| panic!("the restored scheduled group snapshot {snap}: {e}"));
    assert!(k > 0, "the snapshot was taken under the writer: {newest}");
    eprintln!(
        "scheduled group snapshot {snap}: writes 0..{k} of {} acked",
        acked.load(Ordering::SeqCst)
    );
    // Without the group record (an interrupted group stream) nothing is restored.
    std::fs::remove_file(
        std::path::Path::new(&d).join(format!("vault/backups/sched/r0/{snap}/group.json")),
    )
    .unwrap();
    let o =
        p.a.cli(&["restore", &from, "--to", &format!("{}/", out.display())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no group record"),
        "{err}"
    );
}

/// Why groups exist: the same dependent writer on two separate resources `r0` and `r1` (each
/// its own connection and epochs), and one of the two links lost (`drl disconnect r1`, as a
/// dropped TCP connection of one resource would): `r0` keeps replicating, so b's `r0` holds
/// writes whose predecessors on `r1` it never got. The group above has one connection and
/// one order, so it cannot lose one volume's link alone.
#[test]
fn two_separate_resources_lose_the_order_when_one_link_drops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let mut opts = PairOpts::new(SIZES[0]);
    let (pa, pb) = (free_port(), free_port());
    opts.extra_tables = format!(
        "[[resource]]\nname = \"r1\"\nsize = \"{}\"\nsecret = \"{}\"\n",
        SIZES[1], opts.secret
    );
    for (n, port) in [("a", pa), ("b", pb)] {
        opts.extra_tables += &format!(
            "[resource.on.{n}]\naddress = \"127.0.0.1:{port}\"\ndisk = \"{d}/{n}/r1.img\"\nmeta = \"{d}/{n}/r1.meta\"\nnbd = \"{d}/{n}/r1.nbd\"\n",
            d = d.display()
        );
    }
    let p = Pair::start_in(dir, opts);
    p.force_primary_and_sync("a");
    p.cli_ok("a", &["primary", "r1", "--force"]);
    wait_res(&p.a, "r1 in sync", WAIT, |r| r.is_some_and(in_sync));
    let run = 0x5eed_0002;
    let writes = 2 * (SIZES[1] / BLOCK as u64);
    let nbd = [d.join("a/r0.nbd"), d.join("a/r1.nbd")];
    let (acked, stop, writer) = start_writer_on(nbd, run, writes);
    common::wait_until("writes to both resources", WAIT, || {
        acked.load(Ordering::SeqCst) >= 100
    });
    p.cli_ok("a", &["disconnect", "r1"]);
    let at_cut = acked.load(Ordering::SeqCst);
    common::wait_until("writes after r1's link dropped", WAIT, || {
        acked.load(Ordering::SeqCst) >= at_cut + 100
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // Everything written to r0 reached b (acknowledged by barrier acks, nothing out of sync).
    wait_res(&p.a, "r0 in sync", WAIT, |r| r.is_some_and(in_sync));
    let disks = [d.join("b/r0.img"), d.join("b/r1.img")].map(|f| std::fs::read(f).unwrap());
    let e = prefix_of(run, writes, &disks)
        .expect_err("two resources kept one order across a lost link: this test shows nothing");
    assert!(e.contains("not a prefix"), "{e}");
    eprintln!("two separate resources: {e}");
}

/// Online verify of a group walks every volume in the one session: blocks rotted behind b's
/// daemon in both volumes are found, marked in each volume's own bitmap on the Primary, and
/// the next reconnect resyncs exactly them.
#[test]
fn verify_of_a_group_finds_the_differing_blocks_of_each_volume() {
    use std::os::unix::fs::FileExt;
    const B: u64 = BLOCK as u64;
    let p = group_pair();
    p.force_primary_and_sync("a");
    common::nbd_client::nbd_write(&p.nbd_of("a", 0), 0, &random_bytes(5, MIB));
    common::nbd_client::nbd_write(&p.nbd_of("a", 1), 0, &random_bytes(6, MIB));
    p.wait_in_sync("a", "after writes to both volumes");
    let verify = || -> serde_json::Value {
        let out = p.cli_ok("a", &["verify", "r0", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify report {out:?}: {e}"))
    };
    let r = verify();
    assert_eq!(r["checked_bytes"], SIZES[0] + SIZES[1], "every volume: {r}");
    assert_eq!(r["out_of_sync_bytes"], 0, "{r}");

    // One block rots in b's volume 0, two in its volume 1 (one where volume 0 is clean).
    for (v, offsets) in [(0, vec![3 * MIB]), (1, vec![100, 2 * MIB + B])] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.disk_of("b", v))
            .unwrap();
        for off in offsets {
            f.write_all_at(b"bit rot", off).unwrap();
        }
        f.sync_all().unwrap();
    }
    let r = verify();
    assert_eq!(r["out_of_sync_bytes"], 3 * B, "{r}\n{}", p.report());
    let a = res(&p.a, "r0").unwrap();
    assert_eq!(a["volumes"][0]["out_of_sync_bytes"], B, "{a}");
    assert_eq!(a["volumes"][1]["out_of_sync_bytes"], 2 * B, "{a}");

    p.cli_ok("a", &["disconnect", "r0"]);
    p.cli_ok("a", &["connect", "r0"]);
    let (a, _) = p.wait_in_sync("a", "the marked blocks resynced");
    assert!(num(&a, "resync_bytes_sent") >= 3 * B, "{a}");
    p.assert_volumes_identical(&SIZES, "after verify and reconnect");
}
