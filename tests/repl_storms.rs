//! Fault storms between two network namespaces (issue 12), each with namespaces of its own
//! (tests/common/netns.rs: `drl-st-TAG-{a,b}`), so they run beside each other:
//!
//! - the link flapping every 200 ms for 60 s while a writer writes: converged and byte-identical
//!   within 10 s of the last flap, every acknowledged write on both disks;
//! - a resync under continuous application writes, cut (and so restarted) again and again:
//!   converged, identical and holding every acknowledged write after every round;
//! - fio with crc32c verify through the Primary's NBD export while the link is cut and the
//!   Secondary killed with -9 and restarted: fio verifies every block, and the pair converges to
//!   identical disks after every run.
//!
//! Round counts: `DRL_STORM_ROUNDS` (default 6 resync rounds and 6 fio runs, about a minute
//! each; the issue's 20 with `DRL_STORM_ROUNDS=20`), `DRL_STORM_FLAP_SECS` (default 60).
//! Every wait is on a status predicate; the only sleeps are the fault's own timing (the flap
//! period). Needs root (network namespaces) and fio; without root each test says it is skipped.

mod common;

use common::netns::TwoSites;
use common::pair::*;
use common::writer::{Model, Writer};
use common::{need, KillOnDrop};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rounds() -> u64 {
    env_u64("DRL_STORM_ROUNDS", 6)
}

fn oos(r: &Value) -> u64 {
    r["out_of_sync_bytes"].as_u64().unwrap_or(0)
}

#[test]
fn the_link_flapping_every_200ms_under_writes_converges_identical_within_10s() {
    let test = "the_link_flapping_every_200ms_under_writes_converges_identical_within_10s";
    let Some(sites) = TwoSites::up(test, "f", 41) else {
        return;
    };
    let size = 64 * MIB;
    let p = Pair::start(sites.opts(size));
    p.force_primary_and_sync("a");
    let tap = EventsTap::start(&p.a);
    let w = Writer::start(&p.nbd("a"), size, Model::default());
    let secs = env_u64("DRL_STORM_FLAP_SECS", 60);
    let period = Duration::from_millis(200);
    let t0 = Instant::now();
    let mut next = t0;
    let mut cut = false;
    let mut flips = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        if cut {
            sites.heal();
        } else {
            sites.cut();
        }
        cut = !cut;
        flips += 1;
        next += period;
        // The flap period is the fault being injected, not a synchronisation.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    if cut {
        sites.heal();
    }
    let last_flap = Instant::now();
    let acked = w.acked();
    let model = w.stop();
    assert!(
        acked > 100,
        "the writer got only {acked} writes acknowledged in {secs} s of flapping: the Primary stalled\n{}",
        p.report()
    );
    // Converged within 10 s of the last flap (the writer stopped with it).
    let left = Duration::from_secs(10).saturating_sub(last_flap.elapsed());
    p.wait(
        "converged within 10 s of the last flap: in sync, a Primary",
        left,
        |a, b| {
            a.is_some_and(|a| in_sync(a) && a["role"] == "Primary")
                && b.is_some_and(|b| in_sync(b) && b["role"] == "Secondary")
        },
    );
    let converged = last_flap.elapsed();
    p.assert_disks_identical("after 60 s of a link flapping every 200 ms under writes");
    model.verify(&p.disk("a"), "the Primary after the flap storm");
    model.verify(&p.disk("b"), "the Secondary after the flap storm");
    let drops = tap
        .text()
        .lines()
        .filter(|l| l.contains("\"connection\"") && l.contains("NetworkFailure"))
        .count();
    println!(
        "{flips} flips over {secs} s, {acked} writes acknowledged ({} blocks), converged {converged:?} after the last flap, session drops seen at a: {drops}",
        model.blocks.len()
    );
}

/// End the replication session: a silent cut (the sessions find out by their timeouts), or a
/// cut plus a reset of both ends (they find out at once). Waits until a's session is gone.
fn cut_session(sites: &TwoSites, p: &Pair, silent: bool, what: &str) {
    sites.cut();
    if !silent {
        sites.reset();
    }
    p.wait(&format!("{what}: a's session ended"), WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] != "Connected")
    });
}

#[test]
fn a_resync_under_writes_cut_again_and_again_converges_identical_every_time() {
    let test = "a_resync_under_writes_cut_again_and_again_converges_identical_every_time";
    let Some(sites) = TwoSites::up(test, "r", 42) else {
        return;
    };
    let size = 64 * MIB;
    let mut o = sites.opts(size);
    // Slow enough that a resync of a few MiB lasts long enough to be cut in the middle.
    o.extra_resource_keys = "resync-rate = \"4MiB/s\"\n".into();
    let p = Pair::start(o);
    p.force_primary_and_sync("a");
    let mut model = Model::default();
    let n = rounds();
    for round in 0..n {
        // Every third round the cuts are silent: the sessions end by their own timeouts.
        let silent = round % 3 == 2;
        let w = Writer::start(&p.nbd("a"), size, model);
        cut_session(
            &sites,
            &p,
            silent,
            &format!("round {round}, before the resync"),
        );
        p.wait(
            &format!("round {round}: a tracks writes made while apart"),
            WAIT,
            |a, _| a.is_some_and(|a| oos(a) >= 4 * MIB),
        );
        sites.heal();
        p.wait(
            &format!("round {round}: the resync runs under writes"),
            WAIT,
            |a, b| {
                a.is_some_and(|a| a["replication"] == "SyncSource")
                    && b.is_some_and(|b| b["replication"] == "SyncTarget")
            },
        );
        cut_session(
            &sites,
            &p,
            silent,
            &format!("round {round}, during the resync"),
        );
        sites.heal();
        p.wait(
            &format!("round {round}: the resync restarts under writes and finishes"),
            WAIT,
            resynced,
        );
        assert!(
            w.acked() > 0,
            "round {round}: no write acknowledged\n{}",
            p.report()
        );
        model = w.stop();
        p.wait_in_sync("a", &format!("round {round}: after the writer stopped"));
        let ctx = format!("round {round} of {n} (silent cuts: {silent})");
        p.assert_disks_identical(&ctx);
        model.verify(&p.disk("b"), &ctx);
    }
    println!(
        "{n} resyncs cut in the middle under writes: {} writes, {} blocks",
        model.next_seq,
        model.blocks.len()
    );
}

/// fio through the Primary's NBD export: random 4 KiB writes, 16 in flight, every block written
/// once and then read back and checked against its crc32c.
fn fio_verify(p: &Pair, run: u64, bytes: u64) -> KillOnDrop {
    let out = p.d().join(format!("fio-{run}.json"));
    let child = Command::new("fio")
        .args([
            "--name=drl-storm",
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={}", p.uri("a")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            &format!("--size={bytes}"),
            &format!("--randseed={}", 1000 + run),
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // No local-*-verify.state file left in the working directory.
            "--verify_state_save=0",
            "--output-format=json",
            &format!("--output={}", out.display()),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.d().join(format!("fio-{run}.err"))).unwrap())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(child)
}

fn nbd_written(a: &Value) -> u64 {
    a["nbd"]["stats"]["bytes_written"].as_u64().unwrap_or(0)
}

#[test]
fn fio_crc32c_verify_while_the_link_is_cut_and_the_secondary_killed_converges_every_run() {
    let test =
        "fio_crc32c_verify_while_the_link_is_cut_and_the_secondary_killed_converges_every_run";
    need("fio");
    let Some(sites) = TwoSites::up(test, "v", 43) else {
        return;
    };
    let size = 32 * MIB;
    let mut p = Pair::start(sites.opts(size));
    p.force_primary_and_sync("a");
    let n = rounds();
    for run in 0..n {
        let (a0, _) = p.wait("a answers", WAIT, |a, _| a.is_some());
        let w0 = nbd_written(&a0);
        let mut fio = fio_verify(&p, run, 24 * MIB);
        p.wait(&format!("run {run}: fio is writing"), WAIT, |a, _| {
            a.is_some_and(|a| nbd_written(a) >= w0 + 2 * MIB)
        });
        // Both faults in the middle of fio's writes, in both orders: a cut first leaves a's
        // session to its timeout; a kill first may reach a as a reset before the cut.
        if run % 2 == 0 {
            sites.cut();
            p.b.kill9();
        } else {
            p.b.kill9();
            sites.cut();
        }
        p.restart("b");
        sites.heal();
        let st = fio.0.wait().unwrap();
        let out =
            std::fs::read_to_string(p.d().join(format!("fio-{run}.json"))).unwrap_or_default();
        let err = std::fs::read_to_string(p.d().join(format!("fio-{run}.err"))).unwrap_or_default();
        assert!(
            st.success(),
            "run {run}: fio failed ({st}): a write failed or a block did not verify:\n{err}\n{}\n{}",
            &out[out.len().saturating_sub(3000)..],
            p.report()
        );
        // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
        let json = &out[out.find('{').unwrap_or(0)..];
        let v: Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("fio output: {e}: {out}"));
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "run {run}: fio job error: {job}");
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap_or(0) >= 24 * MIB,
            "run {run}: fio must read back and verify all it wrote: {}",
            job["read"]
        );
        p.wait_in_sync(
            "a",
            &format!("run {run}: after the cut and the Secondary's kill -9"),
        );
        p.assert_disks_identical(&format!(
            "run {run} of {n}: fio verify, cut, Secondary killed"
        ));
    }
}
