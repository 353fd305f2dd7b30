//! The WAN shaper on the two-site testbed (scripts/testbed.sh): two daemons in two network
//! namespaces joined by a veth pair shaped with tbf. With replication (an NBD writer on the
//! Primary), resync (of data written while disconnected) and a snapshot stream (bulk class)
//! competing, each backlogged class gets at least its guaranteed share of drl's link-rate, and
//! drl stays under its link-rate.
//!
//! The snapshot stream goes to the local vault (a Swift in the root namespace is not reachable
//! from the sites), so its bytes do not cross the veth; they do go through the node's shaper,
//! which is what is measured. Needs root; without it the test prints why and passes unchecked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pair::{pair_config, PairOpts};
use common::{drl_bin, need, run, KillOnDrop};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const NS_A: &str = "drl-sha-a";
const NS_B: &str = "drl-sha-b";
/// drl's link-rate (64 Mbit) below the tbf rate of the veth (100 Mbit): drl's shaper decides.
const LINK: u64 = 8_000_000;

fn testbed(args: &[&str]) -> String {
    testbed_run([NS_A, NS_B, "drl-va", "drl-vb"], args)
}

/// scripts/testbed.sh ARGS with these namespaces and veth ends.
fn testbed_run(names: [&str; 4], args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed.sh");
    run(Command::new("bash")
        .arg(script)
        .args(args)
        .env("DRL_NS_A", names[0])
        .env("DRL_NS_B", names[1])
        .env("DRL_IF_A", names[2])
        .env("DRL_IF_B", names[3]))
}

/// A testbed's namespaces and veth ends (each test its own); deleted on drop.
struct Testbed(&'static str, &'static str, &'static str, &'static str);

impl Testbed {
    fn run(&self, args: &[&str]) -> String {
        testbed_run([self.0, self.1, self.2, self.3], args)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
        let _ = Command::new("ip").args(["netns", "del", self.1]).status();
    }
}

struct Daemon {
    name: String,
    config: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, ns: &str, name: &str, config: &str) -> Daemon {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, drl_bin(), "daemon", "--config"])
            .arg(&cfg)
            .args(["--node", name])
            .env("DRL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            name: name.into(),
            config: cfg,
            child,
            log,
        };
        let sock = dir.join(name).join("r0.nbd");
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "daemon {name} did not start; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(drl_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "drl {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
    fn res(&self) -> Value {
        self.cli(&["status", "--json"])["resources"][0].clone()
    }
    fn wait(&self, what: &str, secs: u64, f: impl Fn(&Value) -> bool) {
        let t0 = Instant::now();
        while !f(&self.res()) {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{}: timed out waiting for {what}: {}\nlog:\n{}",
                self.name,
                self.res(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared two-node config (tests/common/pair.rs) with the testbed's addresses, the local
/// vault and drl's shaper at 64 Mbit (shares 50/25/25/1).
fn config(d: &Path) -> String {
    config_with(d, "")
}

/// [`config`] with more lines for `[shaping.class.resync]`.
fn config_with(d: &Path, resync_class: &str) -> String {
    let mut opts = PairOpts::new(256 * MIB);
    opts.secret = "testbed".into();
    opts.extra_resource_keys = "on-congestion = \"block\"".into();
    let (a, b) = (
        "198.18.0.1:7789".parse().unwrap(),
        "198.18.0.2:7789".parse().unwrap(),
    );
    pair_config(d, &opts, a, b, &opts.secret)
        + &format!(
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
            d = d.display()
        )
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
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED: classes_get_their_shares_on_a_shaped_link needs root (network namespaces, tc)");
        return;
    }
    need("nbdcopy");
    need("fio");
    let _tb = Testbed(NS_A, NS_B, "drl-va", "drl-vb");
    testbed(&["up", "100mbit"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d);
    for n in ["a", "b"] {
        std::fs::create_dir_all(d.join(n)).unwrap();
    }
    let a = Daemon::start(d, NS_A, "a", &cfg);
    let b = Daemon::start(d, NS_B, "b", &cfg);
    a.wait("Connected", 30, |r| r["connection"] == "Connected");
    a.cli(&["primary", "r0", "--force"]);
    for n in [&a, &b] {
        n.wait("in sync", 60, |r| {
            r["replication"] == "Established" && r["out_of_sync_bytes"] == 0
        });
    }

    // Resync load: 112 MiB written while disconnected.
    a.cli(&["disconnect", "r0"]);
    a.wait("StandAlone", 10, |r| r["connection"] == "StandAlone");
    let uri = format!("nbd+unix:///r0?socket={}/a/r0.nbd", d.display());
    let f1 = random_file(d, "resync.bin", 112 * MIB);
    run(Command::new("nbdcopy")
        .args(["--no-extents"])
        .arg(&f1)
        .arg(&uri));
    // Bulk load: a snapshot of those 112 MiB streamed to the vault (class snapshot).
    a.cli(&["snapshot", "create", "r0", "s1", "--json"]);
    let stream = Command::new(drl_bin())
        .arg("--config")
        .arg(&a.config)
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
    a.cli(&["connect", "r0"]);
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
    std::thread::sleep(Duration::from_secs(3));
    let written = |r: &Value| r["nbd"]["stats"]["bytes_written"].as_u64().unwrap();
    let (t0, g0, w0) = (
        Instant::now(),
        granted(&a.cli(&["shaping", "show", "--json"])),
        written(&a.res()),
    );
    std::thread::sleep(Duration::from_secs(8));
    let (t1, g1) = (
        Instant::now(),
        granted(&a.cli(&["shaping", "show", "--json"])),
    );
    let status = a.res();
    let w1 = written(&status);
    // Live change under load: the snapshot class's share from 25 to 100.
    a.cli(&["shaping", "set", "--share", "snapshot=100"]);
    std::thread::sleep(Duration::from_secs(1));
    let (t2, g2) = (
        Instant::now(),
        granted(&a.cli(&["shaping", "show", "--json"])),
    );
    std::thread::sleep(Duration::from_secs(5));
    let (t3, g3) = (
        Instant::now(),
        granted(&a.cli(&["shaping", "show", "--json"])),
    );
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
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED: the_resync_ceiling_holds_within_ten_percent needs root (network namespaces, tc)");
        return;
    }
    need("nbdcopy");
    let (ns_a, ns_b) = ("drl-adm-a", "drl-adm-b");
    let tb = Testbed(ns_a, ns_b, "drl-adm-va", "drl-adm-vb");
    tb.run(&["up", "100mbit"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const CEIL: f64 = 2_500_000.0; // 20 Mbit
    let cfg = config_with(d, "ceil = \"20Mbit\"");
    for n in ["a", "b"] {
        std::fs::create_dir_all(d.join(n)).unwrap();
    }
    let a = Daemon::start(d, ns_a, "a", &cfg);
    let _b = Daemon::start(d, ns_b, "b", &cfg);
    a.wait("Connected", 30, |r| r["connection"] == "Connected");
    a.cli(&["primary", "r0", "--force"]);
    a.wait("in sync", 60, |r| {
        r["replication"] == "Established" && r["out_of_sync_bytes"] == 0
    });
    a.cli(&["disconnect", "r0"]);
    a.wait("StandAlone", 10, |r| r["connection"] == "StandAlone");
    let uri = format!("nbd+unix:///r0?socket={}/a/r0.nbd", d.display());
    let f = random_file(d, "resync.bin", 64 * MIB);
    run(Command::new("nbdcopy")
        .args(["--no-extents"])
        .arg(&f)
        .arg(&uri));
    a.cli(&["connect", "r0"]);
    a.wait("SyncSource", 30, |r| r["replication"] == "SyncSource");
    let resync = || granted(&a.cli(&["shaping", "show", "--json"]))[1];
    // One second to settle, then a 6 s window.
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
        rate <= CEIL * 1.10 && rate >= CEIL * 0.75,
        "resync ran at {rate:.0} B/s, ceiling {CEIL:.0} (at most 1.10x, at least 0.75x): {}",
        a.res()
    );
    // Lowered live: `drl shaping set --ceil resync=10Mbit`.
    a.cli(&["shaping", "set", "--ceil", "resync=10Mbit", "--json"]);
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
        rate2 <= CEIL / 2.0 * 1.10 && rate2 >= CEIL / 2.0 * 0.75,
        "after `shaping set --ceil resync=10Mbit` resync ran at {rate2:.0} B/s"
    );
}
