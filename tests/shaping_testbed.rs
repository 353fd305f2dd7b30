//! The WAN shaper on the two-site testbed (scripts/testbed.sh): two daemons in two network
//! namespaces joined by a veth pair shaped with tbf. With replication (an NBD writer on the
//! Primary), resync (of data written while disconnected) and a snapshot stream (bulk class)
//! competing, each backlogged class gets at least its guaranteed share of drl's link-rate, and
//! drl stays under its link-rate.
//!
//! The snapshot stream goes to the local vault (a Swift in the root namespace is not reachable
//! from the sites), so its bytes do not cross the veth; they do go through the node's shaper,
//! which is what is measured. The sites and the pair are the shared harness's
//! (`common::netns::TwoSites`, `common::pair::Pair`), each test in namespaces of its own
//! (`drl-st-sha-*`, `drl-st-rce-*`); waits are status predicates, the only sleeps are the
//! measurement windows. Needs root (like every netns test, it says so and does nothing else
//! without it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::TwoSites;
use common::pair::{res, Pair};
use common::{drl_bin, need, run, KillOnDrop};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
/// drl's link-rate (64 Mbit) below the tbf rate of the veth (100 Mbit): drl's shaper decides.
const LINK: u64 = 8_000_000;
const WAIT: Duration = Duration::from_secs(60);

/// `drl ARGS --json` on node `n` of the pair, as JSON (the command must succeed).
fn json(p: &Pair, n: &str, args: &[&str]) -> Value {
    let out = p.cli_ok(n, args);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn shaping(p: &Pair) -> [u64; 4] {
    granted(&json(p, "a", &["shaping", "show", "--json"]))
}

/// The shared pair (tests/common/pair.rs) in `sites`, shaped by tbf at 100 Mbit, with the
/// local vault and drl's shaper at 64 Mbit (shares 50/25/25/1); `resync_class` adds lines to
/// `[shaping.class.resync]`.
fn start_pair(sites: &TwoSites, resync_class: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = sites.opts(256 * MIB);
    opts.secret = "testbed".into();
    opts.extra_resource_keys = "on-congestion = \"block\"".into();
    opts.extra_tables = format!(
        r#"[stream]
vault-dir = "{d}/vault"

[shaping]
link-rate = "64Mbit"
[shaping.class.replication]
share = 50
[shaping.class.resync]
share = 25
{resync_class}
[shaping.class.snapshot]
share = 25
[shaping.class.image]
share = 1
"#,
        d = dir.path().display()
    );
    Pair::start_in(dir, opts)
}

/// In sync with a Primary, then `bytes` of random data written on a while it is
/// disconnected (StandAlone: the resync to come).
fn in_sync_then_write_disconnected(p: &Pair, bytes: u64) -> String {
    p.force_primary_and_sync("a");
    // `disconnect` returns once the connection is gone (StandAlone).
    p.cli_ok("a", &["disconnect", "r0"]);
    let a = res(&p.a, "r0").unwrap();
    assert_eq!(a["connection"], "StandAlone", "after `drl disconnect`: {a}");
    let uri = format!("nbd+unix:///r0?socket={}", p.nbd("a").display());
    let f = random_file(p.d(), "resync.bin", bytes);
    run(Command::new("nbdcopy")
        .args(["--no-extents"])
        .arg(&f)
        .arg(&uri));
    uri
}

fn granted(v: &Value) -> [u64; 4] {
    let mut out = [0; 4];
    for (i, name) in ["replication", "resync", "snapshot", "image"]
        .iter()
        .enumerate()
    {
        let c = v["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == *name)
            .unwrap();
        out[i] = c["granted_bytes"].as_u64().unwrap();
    }
    out
}

fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", p.display()))
        .args(["bs=1M", &format!("count={}", bytes / MIB), "status=none"]));
    p
}

#[test]
fn classes_get_their_shares_on_a_shaped_link() {
    let test = "classes_get_their_shares_on_a_shaped_link";
    need("nbdcopy");
    need("fio");
    let Some(sites) = TwoSites::up_at(test, "sha", 44, "100mbit") else {
        return;
    };
    let p = start_pair(&sites, "");
    let d = p.d();
    // Resync load: 112 MiB written while disconnected.
    let uri = in_sync_then_write_disconnected(&p, 112 * MIB);
    // Bulk load: a snapshot of those 112 MiB streamed to the vault (class snapshot).
    p.cli_ok("a", &["snapshot", "create", "r0", "s1", "--json"]);
    let stream = Command::new(drl_bin())
        .arg("--config")
        .arg(&p.a.config)
        .args([
            "--node",
            "a",
            "stream",
            "r0",
            "s1",
            "--to",
            "backups/r0",
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = KillOnDrop(stream);
    p.cli_ok("a", &["connect", "r0"]);
    // Replication load: incompressible application writes at 3.5 MiB/s (46% of the link, below
    // replication's 50% guarantee), behind the resync region.
    let writer = Command::new("fio")
        .args([
            "--name=repl",
            // One process: killing fio's main process leaves no job process behind spinning
            // on a dead socket.
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=write",
            "--bs=256k",
            "--iodepth=4",
        ])
        .args([
            "--offset=128m",
            "--size=128m",
            "--rate=3584k",
            "--time_based",
            "--runtime=30",
            "--refill_buffers",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("fio.err")).unwrap())
        .spawn()
        .unwrap();
    let mut writer = KillOnDrop(writer);
    let written = |r: &Value| r["nbd"]["stats"]["bytes_written"].as_u64().unwrap();
    // The measurement starts once all three classes are backlogged: a is SyncSource, the
    // application has written past the resync region and the stream has been granted.
    let (w_start, g_start) = (written(&res(&p.a, "r0").unwrap()), shaping(&p));
    common::wait_until(
        "resync, replication and snapshot all under way",
        WAIT,
        || {
            let r = res(&p.a, "r0").unwrap();
            let g = shaping(&p);
            r["replication"] == "SyncSource"
                && written(&r) > w_start
                && (0..3).all(|c| g[c] > g_start[c])
        },
    );
    // Fixed windows from here: rates are bytes over a measured time. The first one lets the
    // resync controller settle (its ramp takes `plan-ahead`, 2 s by default) and the queues
    // reach their steady state; it is not a wait for an event.
    std::thread::sleep(Duration::from_millis(
        drl::limits::RESYNC_PLAN_AHEAD_MS_DEFAULT + 1000,
    ));
    let (t0, g0, w0) = (
        Instant::now(),
        shaping(&p),
        written(&res(&p.a, "r0").unwrap()),
    );
    std::thread::sleep(Duration::from_secs(8));
    let (t1, g1) = (Instant::now(), shaping(&p));
    let status = res(&p.a, "r0").unwrap();
    let w1 = written(&status);
    // Live change under load: the snapshot class's share from 25 to 100 (applied when the
    // command returns; one second for the queues to follow, then the window).
    p.cli_ok("a", &["shaping", "set", "--share", "snapshot=100"]);
    std::thread::sleep(Duration::from_secs(1));
    let (t2, g2) = (Instant::now(), shaping(&p));
    std::thread::sleep(Duration::from_secs(5));
    let (t3, g3) = (Instant::now(), shaping(&p));
    let _ = writer.0.kill();
    let _ = stream.0.kill();
    let _ = writer.0.wait();
    let _ = stream.0.wait();

    let secs = (t1 - t0).as_secs_f64();
    let rate: Vec<f64> = (0..4).map(|i| (g1[i] - g0[i]) as f64 / secs).collect();
    let total: f64 = rate.iter().sum();
    println!(
        "over {secs:.1} s at link-rate {LINK} B/s: replication {:.0} B/s ({:.1}%), resync {:.0} ({:.1}%), snapshot {:.0} ({:.1}%), total {:.0} ({:.1}%)",
        rate[0],
        rate[0] / LINK as f64 * 100.0,
        rate[1],
        rate[1] / LINK as f64 * 100.0,
        rate[2],
        rate[2] / LINK as f64 * 100.0,
        total,
        total / LINK as f64 * 100.0
    );
    println!("status of a during the run: {status}");
    // Replication is served up to its demand (it is below its guarantee), resync and the bulk
    // class share the rest; nobody starves.
    let demand = (w1 - w0) as f64 / secs;
    println!(
        "application writes in the window: {demand:.0} B/s, lag {} ms, send queue {} bytes",
        status["lag_ms"], status["send_queue_bytes"]
    );
    // The writer must really have written, or the replication share below proves nothing.
    assert!(
        demand >= 0.5 * 3584.0 * 1024.0,
        "the application wrote only {demand:.0} B/s of its 3.5 MiB/s; fio: {}",
        std::fs::read_to_string(d.join("fio.err")).unwrap_or_default()
    );
    // 10% slack: the grants and the NBD byte count are read by separate CLI calls, whose
    // timing drifts apart by a few hundred ms of the 8 s window on a loaded host.
    assert!(
        rate[0] >= demand * 0.90,
        "replication got {:.0} B/s of its {demand:.0} B/s demand (guarantee {:.0})",
        rate[0],
        50.0 / 101.0 * LINK as f64
    );
    assert!(rate[1] > 0.0, "no resync traffic in the window: {status}");
    let guarantee = 25.0 / 101.0 * LINK as f64;
    assert!(
        rate[2] >= guarantee * 0.90,
        "snapshot got {:.0} B/s, guarantee {guarantee:.0}",
        rate[2]
    );
    // drl stays under its link-rate (plus one burst over the window, and 5% for timers).
    assert!(
        total <= LINK as f64 * 1.05 + 65536.0 / secs,
        "drl sent {total:.0} B/s over its link-rate {LINK}"
    );
    assert!(
        total >= LINK as f64 * 0.85,
        "drl used only {total:.0} B/s of {LINK} with three backlogged classes"
    );

    let secs2 = (t3 - t2).as_secs_f64();
    let rate2: Vec<f64> = (0..4).map(|i| (g3[i] - g2[i]) as f64 / secs2).collect();
    let total2: f64 = rate2.iter().sum();
    println!(
        "after `shaping set --share snapshot=100`, over {secs2:.1} s: replication {:.0}, resync {:.0}, snapshot {:.0} B/s, total {:.0}",
        rate2[0], rate2[1], rate2[2], total2
    );
    assert!(
        rate2[2] >= rate[2] * 1.4,
        "snapshot's share quadrupled but its rate went from {:.0} to only {:.0} B/s",
        rate[2],
        rate2[2]
    );
    assert!(
        total2 <= LINK as f64 * 1.05 + 65536.0 / secs2,
        "drl sent {total2:.0} B/s over its link-rate {LINK}"
    );
}

/// `[shaping.class.resync] ceil` holds on the testbed (issue 13: a resync ran at 5x its
/// ceiling): resync rides inside the replication connection, so the resync controller paces
/// it to the ceiling. Measured over the shaper's resync counter while a resync of random data
/// runs alone on a link with room for three times the ceiling; then `shaping set --ceil`
/// lowers it live.
#[test]
fn the_resync_ceiling_holds_within_ten_percent() {
    let test = "the_resync_ceiling_holds_within_ten_percent";
    need("nbdcopy");
    let Some(sites) = TwoSites::up_at(test, "rce", 45, "100mbit") else {
        return;
    };
    const CEIL: f64 = 2_500_000.0; // 20 Mbit
    let p = start_pair(&sites, "ceil = \"20Mbit\"");
    in_sync_then_write_disconnected(&p, 64 * MIB);
    p.cli_ok("a", &["connect", "r0"]);
    common::pair::wait_res(&p.a, "a SyncSource", WAIT, |r| {
        r.is_some_and(|r| r["replication"] == "SyncSource")
    });
    let resync = || shaping(&p)[1];
    // One second for the pacer to reach its rate, then a 6 s window.
    std::thread::sleep(Duration::from_secs(1));
    let (t0, g0) = (Instant::now(), resync());
    std::thread::sleep(Duration::from_secs(6));
    let (t1, g1) = (Instant::now(), resync());
    let rate = (g1 - g0) as f64 / (t1 - t0).as_secs_f64();
    println!(
        "resync at {rate:.0} B/s with ceil {CEIL} B/s ({:.2}x)",
        rate / CEIL
    );
    // The ceiling holds within 10% (the guard); below it the resync may fall short when the
    // host is loaded (0.86x seen once in the suite on a busy 2-core machine, 0.96x quiet), but
    // it must still run near the ceiling, not be starved by the strict pacer.
    assert!(
        (CEIL * 0.75..=CEIL * 1.10).contains(&rate),
        "resync ran at {rate:.0} B/s, ceiling {CEIL:.0} (at most 1.10x, at least 0.75x): {}",
        res(&p.a, "r0").unwrap()
    );
    // Lowered live: `drl shaping set --ceil resync=10Mbit`.
    p.cli_ok(
        "a",
        &["shaping", "set", "--ceil", "resync=10Mbit", "--json"],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (t2, g2) = (Instant::now(), resync());
    std::thread::sleep(Duration::from_secs(6));
    let (t3, g3) = (Instant::now(), resync());
    let rate2 = (g3 - g2) as f64 / (t3 - t2).as_secs_f64();
    println!(
        "after shaping set: {rate2:.0} B/s with ceil {} B/s",
        CEIL / 2.0
    );
    assert!(
        (CEIL / 2.0 * 0.75..=CEIL / 2.0 * 1.10).contains(&rate2),
        "after `shaping set --ceil resync=10Mbit` resync ran at {rate2:.0} B/s"
    );
}
