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

use rand::{Rng, SeedableRng};

const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"DRLGRP01";
/// Volume 0's and volume 1's sizes.
const SIZES: [u64; 2] = [24 * MIB, 16 * MIB];

/// Where write k goes: (volume, block).
fn place(k: u64) -> (usize, u64) {
    ((k % 2) as usize, k / 2)
}

/// Write k of run `run`: magic, run id, k, the predecessor's volume and sequence (u64::MAX for
/// none), a crc32 of the rest, filler.
fn block(run: u64, k: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&run.to_le_bytes());
    b[16..24].copy_from_slice(&k.to_le_bytes());
    let (pvol, pseq) = match k.checked_sub(1) {
        Some(p) => (place(p).0 as u64, p),
        None => (u64::MAX, u64::MAX),
    };
    b[24..32].copy_from_slice(&pvol.to_le_bytes());
    b[32..40].copy_from_slice(&pseq.to_le_bytes());
    let mut rng = rand::rngs::StdRng::seed_from_u64(run.wrapping_mul(1_000_003) ^ k);
    rng.fill(&mut b[44..]);
    let crc = crc32fast::hash(&b[44..]) ^ crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Whether block `b` holds write k of `run` (Ok(false): never written), or what is wrong.
fn holds(run: u64, k: u64, b: &[u8]) -> Result<bool, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(false);
    }
    if b != block(run, k).as_slice() {
        let seq = u64::from_le_bytes(b[16..24].try_into().unwrap());
        return Err(format!(
            "not write {k} of this run (magic {:?}, seq {seq}): torn, stale or misplaced",
            String::from_utf8_lossy(&b[..8])
        ));
    }
    Ok(true)
}

/// How many of writes 0..`writes` of `run` the two volumes `disks` hold, all of them from the
/// first: Err names a write held without its predecessor, or a block that is no write.
fn prefix_of(run: u64, writes: u64, disks: &[Vec<u8>; 2]) -> Result<u64, String> {
    let mut prefix = 0u64;
    let mut hole: Option<u64> = None;
    for k in 0..writes {
        let (v, b) = place(k);
        let at = b as usize * BLOCK;
        match holds(run, k, &disks[v][at..at + BLOCK]) {
            Ok(false) => {
                hole.get_or_insert(k);
            }
            Ok(true) => {
                if let Some(h) = hole {
                    return Err(format!(
                        "volume {v} holds write {k} but volume {} lacks write {h}: the group is not a prefix",
                        place(h).0
                    ));
                }
                prefix = k + 1;
            }
            Err(why) => return Err(format!("volume {v} block {b}: {why}")),
        }
    }
    Ok(prefix)
}

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

fn start_writer_on(
    nbd: [std::path::PathBuf; 2],
    run: u64,
    writes: u64,
) -> (Arc<AtomicU64>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ack2, stop2) = (acked.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut c = nbd.map(|s| NbdClient::connect(&s).expect("NBD connect to the Primary"));
        for k in 0..writes {
            let (v, b) = place(k);
            if stop2.load(Ordering::SeqCst) || c[v].write(b * BLOCK as u64, &block(run, k)).is_err()
            {
                break;
            }
            ack2.store(k + 1, Ordering::SeqCst);
        }
    });
    (acked, stop, writer)
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

/// Both volumes of node `n` as bytes.
fn volumes(p: &Pair, n: &str) -> [Vec<u8>; 2] {
    [0, 1].map(|v| std::fs::read(p.disk_of(n, v)).unwrap())
}

fn assert_volumes_identical(p: &Pair, context: &str) {
    for (v, size) in SIZES.iter().enumerate() {
        assert_files_identical(
            &p.disk_of("a", v),
            &p.disk_of("b", v),
            *size,
            &format!("volume {v}: {context}\n{}", p.report()),
        );
    }
}

/// `from` demoted, `to` promoted, then both volumes in sync and identical.
fn switch_over(p: &Pair, from: &str, to: &str) {
    p.cli_ok(from, &["secondary", "r0"]);
    p.cli_ok(to, &["primary", "r0"]);
    p.wait_in_sync(to, &format!("the group moved from {from} to {to}"));
    assert_volumes_identical(p, &format!("after the move from {from} to {to}"));
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

        let prefix = prefix_of(run_id, writes, &volumes(&p, "b")).unwrap_or_else(|e| {
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
        assert_volumes_identical(&p, &format!("run {run}: after {cut:?} and reconnect"));
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
    p.cli_ok("a", &["restore", "backups/r0/cut", "--to", "r0"]);
    p.wait_in_sync("a", "after the restore of the group snapshot");
    let k = prefix_of(run, writes, &volumes(&p, "a"))
        .unwrap_or_else(|e| panic!("the restored group snapshot: {e}"));
    assert!(
        (before..=after + 1).contains(&k),
        "the restored group holds writes 0..{k}; acked {before} before `snapshot create` and {after} after it"
    );
    assert_volumes_identical(&p, "after the restore");
    eprintln!("group snapshot: writes 0..{k} (acked {before} before the command, {after} after)");
}

/// The plans' schedule on a group (`[[plan]] snapshot-every`, `snapshot-to`): every tick cuts
/// both volumes at one point in time and streams them as a group (each volume, then the group
/// record); the newest one, restored into files (`drl restore L/S --to DIR/`: one
/// `volume-N.img` per volume), holds a prefix of the dependent writes across both volumes.
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
    let files = [0, 1].map(|v| std::fs::read(out.join(format!("volume-{v}.img"))).unwrap());
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
        !o.status.success() && err.contains("interrupted group stream"),
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
    assert_volumes_identical(&p, "after verify and reconnect");
}
