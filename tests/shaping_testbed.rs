//! The WAN shaper on the two-site testbed (scripts/testbed.sh): two daemons in two network
//! namespaces joined by a veth pair shaped with tbf. With replication (an NBD writer on the
//! Primary), resync (of data written while disconnected) and a snapshot stream (bulk class)
//! competing, each backlogged class gets at least its weight's part of what drl sent, and drl
//! stays under its link-rate. (Not a part of the link-rate: beside CPU hogs the senders are
//! starved and the link carries less, which says nothing about shaping; see
//! `classes_get_their_shares_on_a_shaped_link`.)
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
    let w0 = written(&res(&p.a, "r0").unwrap());
    let win = measure(&p, Duration::from_secs(8));
    let status = res(&p.a, "r0").unwrap();
    let w1 = written(&status);
    // Live change under load: the snapshot class's share from 25 to 100 (applied when the
    // command returns; one second for the queues to follow, then the window).
    p.cli_ok("a", &["shaping", "set", "--share", "snapshot=100"]);
    std::thread::sleep(Duration::from_secs(1));
    let win2 = measure(&p, Duration::from_secs(5));
    let _ = writer.0.kill();
    let _ = stream.0.kill();
    let _ = writer.0.wait();
    let _ = stream.0.wait();

    println!("status of a during the run: {status}");
    let demand = (w1 - w0) as f64 / win.secs;
    println!(
        "{}\napplication writes in the window: {demand:.0} B/s, lag {} ms, send queue {} bytes",
        win.show(),
        status["lag_ms"],
        status["send_queue_bytes"]
    );
    println!("after `shaping set --share snapshot=100`: {}", win2.show());
    // The writer must really have written, or the replication share below proves nothing.
    assert!(
        demand >= 0.5 * 3584.0 * 1024.0,
        "the application wrote only {demand:.0} B/s of its 3.5 MiB/s; fio: {}",
        std::fs::read_to_string(d.join("fio.err")).unwrap_or_default()
    );
    // What is shaping's and what is the CPU's (issue 12: the test failed beside two CPU
    // hogs, the debug daemon using ~63-90% of its link-rate). Sampling which classes have a
    // request waiting showed the senders starved: the snapshot stream (hashing in a debug
    // build) and the replication writer (one grant at a time) are not always waiting, so the
    // link carries less than its rate and the absolute rates measured the CPU. So the shares
    // are asserted on what was sent: the WFQ guarantee is that a class with a request
    // waiting all through a window gets at least its weight's part of what the link carried
    // in it, however much that was.
    win.assert_shares(&[50.0, 25.0, 1.0], "shares 50/25/25/1");
    assert!(
        (0..3).any(|i| win.backlogged(i)),
        "no class was backlogged in the window, so it proves nothing: {}",
        win.show()
    );
    assert!(
        win.rate[1] > 0.0,
        "no resync traffic in the window: {status}"
    );
    // The live change: the snapshot class's part follows its new weight (100 of 176) when
    // it is backlogged. Beside CPU hogs the debug build's stream hashes its next 16 MiB
    // objects for seconds once the higher share drained its queue (0 bytes in 5 s, seen
    // twice in three runs): then only the status shows the change.
    win2.assert_shares(
        &[50.0, 100.0, 1.0],
        "after `shaping set --share snapshot=100`",
    );
    if win.backlogged(1) && win2.backlogged(1) {
        assert!(
            win2.share(1) >= win.share(1) * 1.4,
            "snapshot's share quadrupled but its part of what was sent went from {:.1}% to {:.1}%: {}",
            win.share(1) * 100.0,
            win2.share(1) * 100.0,
            win2.show()
        );
    } else {
        println!("the snapshot stream was not backlogged in both windows: its share change is judged by the status alone");
    }
    let v = json(&p, "a", &["shaping", "show", "--json"]);
    let snap = v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "snapshot");
    assert_eq!(snap.unwrap()["share"], 100, "{v}");
}

/// What the shaper granted over a window, per scheduling class: replication (the
/// replication connection: its resync frames are scheduled with it and only counted as
/// resync, see `repl::shaped`), snapshot and image; and at how many samples (every 200 ms,
/// from `shaping show`) each had a request waiting: the WFQ guarantee speaks of backlogged
/// classes.
struct Window {
    secs: f64,
    /// Per counting class (replication, resync, snapshot, image).
    rate: [f64; 4],
    /// Per scheduling class (replication with resync, snapshot, image).
    waiting: [u32; 3],
    samples: u32,
}

const SCHED: [&str; 3] = ["replication+resync", "snapshot", "image"];

/// Measure for `d` from now.
fn measure(p: &Pair, d: Duration) -> Window {
    let names = ["replication", "resync", "snapshot", "image"];
    let waiting = |v: &Value, i: usize| {
        let c = v["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == names[i]);
        c.unwrap()["waiting_requests"].as_u64().unwrap()
    };
    let v = json(p, "a", &["shaping", "show", "--json"]);
    let (t0, g0) = (Instant::now(), granted(&v));
    let mut waiting_at = [0; 3];
    let mut samples = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = json(p, "a", &["shaping", "show", "--json"]);
        samples += 1;
        let w = [
            waiting(&v, 0) + waiting(&v, 1),
            waiting(&v, 2),
            waiting(&v, 3),
        ];
        for (n, w) in waiting_at.iter_mut().zip(w) {
            *n += u32::from(w > 0);
        }
        if t0.elapsed() >= d {
            let secs = t0.elapsed().as_secs_f64();
            let g1 = granted(&v);
            return Window {
                secs,
                rate: std::array::from_fn(|i| (g1[i] - g0[i]) as f64 / secs),
                waiting: waiting_at,
                samples,
            };
        }
    }
}

impl Window {
    fn total(&self) -> f64 {
        self.rate.iter().sum()
    }

    /// Scheduling class `i`'s part of what was sent.
    fn share(&self, i: usize) -> f64 {
        let r = match i {
            0 => self.rate[0] + self.rate[1],
            i => self.rate[i + 1],
        };
        r / self.total().max(1.0)
    }

    /// Scheduling class `i` had a request waiting at 85% of the samples or more (a sender
    /// that sends at once after each grant is caught between two at some samples).
    fn backlogged(&self, i: usize) -> bool {
        self.waiting[i] * 100 >= self.samples * 85
    }

    fn show(&self) -> String {
        let mut s = format!(
            "over {:.1} s at link-rate {LINK} B/s: replication {:.0} B/s, resync {:.0}, snapshot {:.0}, image {:.0}, total {:.0} ({:.1}% of the link);",
            self.secs,
            self.rate[0],
            self.rate[1],
            self.rate[2],
            self.rate[3],
            self.total(),
            self.total() / LINK as f64 * 100.0
        );
        for (i, n) in SCHED.iter().enumerate() {
            s += &format!(
                " {n} {:.1}% of sent (waiting at {} of {} samples)",
                self.share(i) * 100.0,
                self.waiting[i],
                self.samples
            );
        }
        s
    }

    /// drl stays under its link-rate (plus one burst over the window, and 5% for timers),
    /// and every backlogged scheduling class got its weight's part (`weights`: replication,
    /// snapshot, image; the sum is over every class's share, resync's 25 too) of what was
    /// sent: 95% of it if it was waiting at every sample, else 90% of it for the part of the
    /// window it was waiting (the guarantee holds while a request waits).
    fn assert_shares(&self, weights: &[f64; 3], what: &str) {
        assert!(
            self.total() <= LINK as f64 * 1.05 + 65536.0 / self.secs,
            "{what}: drl sent over its link-rate: {}",
            self.show()
        );
        let sum: f64 = weights.iter().sum::<f64>() + 25.0;
        for i in (0..3).filter(|&i| self.backlogged(i)) {
            let part = weights[i] / sum;
            let f = f64::from(self.waiting[i]) / f64::from(self.samples);
            let owed = if self.waiting[i] == self.samples {
                part * 0.95
            } else {
                part * 0.90 * f
            };
            assert!(
                self.share(i) >= owed,
                "{what}: {} was backlogged but got {:.1}% of what was sent, owed {:.1}% (its weight {:.1}%): {}",
                SCHED[i],
                self.share(i) * 100.0,
                owed * 100.0,
                part * 100.0,
                self.show()
            );
        }
    }
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
    let secs = (t1 - t0).as_secs_f64();
    let rate = (g1 - g0) as f64 / secs;
    println!(
        "resync at {rate:.0} B/s with ceil {CEIL} B/s ({:.2}x)",
        rate / CEIL
    );
    // The ceiling holds within 10% (the guard); below it the resync may fall short when the
    // host is loaded (0.86x seen once in the suite on a busy 2-core machine, 0.96x quiet), but
    // it must still run near the ceiling, not be starved by the strict pacer.
    assert!(
        near_ceiling(g1 - g0, secs, CEIL),
        "resync ran at {rate:.0} B/s, ceiling {CEIL:.0} (at most 1.10x, at least 0.75x, give or \
         take one answer): {}",
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
    let secs2 = (t3 - t2).as_secs_f64();
    let rate2 = (g3 - g2) as f64 / secs2;
    println!(
        "after shaping set: {rate2:.0} B/s with ceil {} B/s",
        CEIL / 2.0
    );
    assert!(
        near_ceiling(g3 - g2, secs2, CEIL / 2.0),
        "after `shaping set --ceil resync=10Mbit` resync ran at {rate2:.0} B/s"
    );
}

/// `bytes` of resync in `secs` ran at 0.75x to 1.10x of `ceil`, give or take one resync
/// answer: the pacer admits whole answers (up to `REPL_RESYNC_REQUEST_BYTES`, 1 MiB), one per
/// 0.84 s at 10 Mbit, so a 6 s window holds 7 or 8 of them by its phase alone, and 8 is
/// 1.12x. (The suite beside two CPU hogs caught exactly that: 1,388,086 B/s at 1,250,000.)
fn near_ceiling(bytes: u64, secs: f64, ceil: f64) -> bool {
    let answer = f64::from(drl::limits::REPL_RESYNC_REQUEST_BYTES);
    let bytes = bytes as f64;
    bytes >= ceil * 0.75 * secs - answer && bytes <= ceil * 1.10 * secs + answer
}
