//! The replication core's own two-daemon checks (the full contract suite is tests/repl_*.rs):
//! two real `drl daemon` processes on loopback, real NBD clients (qemu-io, nbdcopy), the real
//! CLI. Each test names the DRBD behaviour it reproduces.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{need, qemu_io, run, wait_until, Node};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pair {
    dir: tempfile::TempDir,
    a: Node,
    b: Node,
}

fn pair_config(dir: &Path, secret_b: &str, pa: u16, pb: u16, node: &str) -> String {
    let secret = if node == "b" {
        secret_b
    } else {
        "s3cret-shared"
    };
    format!(
        r#"[[node]]
name = "a"
control-socket = "{d}/a.sock"
[[node]]
name = "b"
control-socket = "{d}/b.sock"

[[resource]]
name = "r0"
size = "32MiB"
secret = "{secret}"
on-congestion = "block"

[resource.on.a]
address = "127.0.0.1:{pa}"
disk = "{d}/a.img"
meta = "{d}/a.meta"
nbd = "{d}/a.nbd"

[resource.on.b]
address = "127.0.0.1:{pb}"
disk = "{d}/b.img"
meta = "{d}/b.meta"
nbd = "{d}/b.nbd"
"#,
        d = dir.display()
    )
}

impl Pair {
    fn start(secret_b: &str) -> Pair {
        need("qemu-io");
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (free_port(), free_port());
        let a = Node::start(
            dir.path(),
            &pair_config(dir.path(), secret_b, pa, pb, "a"),
            "a",
            &dir.path().join("a.nbd"),
        );
        let b = Node::start(
            dir.path(),
            &pair_config(dir.path(), secret_b, pa, pb, "b"),
            "b",
            &dir.path().join("b.nbd"),
        );
        Pair { dir, a, b }
    }
    fn uri(&self, n: &str) -> String {
        format!(
            "nbd+unix:///r0?socket={}/{n}.nbd",
            self.dir.path().display()
        )
    }
    fn img(&self, n: &str) -> PathBuf {
        self.dir.path().join(format!("{n}.img"))
    }
    fn node(&self, n: &str) -> &Node {
        if n == "a" {
            &self.a
        } else {
            &self.b
        }
    }
    fn res(&self, n: &str) -> Value {
        self.node(n).status()["resources"][0].clone()
    }
    fn ok(&self, n: &str, args: &[&str]) {
        let out = self.node(n).cli(args);
        assert!(
            out.status.success(),
            "drl {args:?} on {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn wait_state(&self, n: &str, what: &str, f: impl Fn(&Value) -> bool) {
        let t0 = std::time::Instant::now();
        while !f(&self.res(n)) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "timed out waiting on {n} for {what}; status: {}\nlog a:\n{}\nlog b:\n{}",
                self.res(n),
                tail(&self.a.log_text()),
                tail(&self.b.log_text())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn wait_in_sync(&self) {
        for n in ["a", "b"] {
            self.wait_state(n, "Established, nothing out of sync", |r| {
                r["replication"] == "Established"
                    && r["out_of_sync_bytes"] == 0
                    && r["send_queue_bytes"] == 0
            });
        }
    }
    fn assert_identical(&self) {
        // Both daemons flushed what they acked; compare the backing files byte for byte.
        let (x, y) = (
            std::fs::read(self.img("a")).unwrap(),
            std::fs::read(self.img("b")).unwrap(),
        );
        assert_eq!(x.len(), y.len());
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!("disks differ first at byte {i} (block {})", i / 4096);
        }
    }
}

/// qemu-io on a read-only export (a Secondary).
fn qemu_io_ro(uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-r", "-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = run(c.arg(uri));
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io: {out}"
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&p, data).unwrap();
    p
}

/// DRBD user guide, "initial full synchronization", "resynchronization": a new pair is
/// Inconsistent on both sides; `primary --force` makes one the source of the initial sync;
/// after a disconnect only the changed blocks are resynced.
#[test]
fn initial_sync_mirror_and_bitmap_resync_after_disconnect_and_secondary_crash() {
    need("nbdcopy");
    let mut p = Pair::start("s3cret-shared");
    p.wait_state("a", "Connected", |r| r["connection"] == "Connected");
    assert_eq!(p.res("a")["disk"], "Inconsistent");
    assert_eq!(p.res("b")["disk"], "Inconsistent");
    p.ok("a", &["primary", "r0", "--force"]);
    p.wait_in_sync();
    assert_eq!(p.res("b")["disk"], "UpToDate");
    assert_eq!(p.res("a")["peer_disk"], "UpToDate");
    // Zero blocks did not cross the wire in the initial sync: all 32 MiB were zero ranges.
    assert_eq!(
        u(&p.res("a"), "resync_zero_bytes"),
        32 * MIB,
        "{}",
        p.res("a")
    );
    assert!(u(&p.res("a"), "sent_bytes") < MIB, "{}", p.res("a"));

    qemu_io(
        &p.uri("a"),
        &["write -P 0x5a 0 3M", "write -P 0xa5 10M 64k", "flush"],
    );
    p.wait_in_sync();
    p.assert_identical();
    assert!(u(&p.res("a"), "sent_bytes") >= 3 * MIB + 64 * 1024);

    // Disconnect, write N MiB, reconnect: about N MiB resync.
    p.ok("a", &["disconnect", "r0"]);
    p.wait_state("a", "StandAlone", |r| r["connection"] == "StandAlone");
    let f = random_file(p.dir.path(), "w1.bin", 4 * MIB);
    run(Command::new("nbdcopy")
        .args(["--destination-is-zero", "--no-extents"])
        .arg(&f)
        .arg(p.uri("a")));
    let oos = u(&p.res("a"), "out_of_sync_bytes");
    assert_eq!(
        oos,
        4 * MIB,
        "out of sync after writing 4 MiB while disconnected"
    );
    let before = u(&p.res("a"), "resync_bytes_sent");
    p.ok("a", &["connect", "r0"]);
    p.wait_in_sync();
    let moved = u(&p.res("a"), "resync_bytes_sent") - before;
    assert_eq!(
        moved,
        4 * MIB,
        "resync moved {moved} bytes for 4 MiB written while apart"
    );
    p.assert_identical();

    // kill -9 of the Secondary: the Primary keeps serving, then resyncs only what changed.
    p.b.kill9();
    qemu_io(&p.uri("a"), &["write -P 0x77 20M 2M"]);
    p.wait_state("a", "Connecting", |r| {
        r["connection"] == "Connecting" && r["out_of_sync_bytes"] == 2 * MIB
    });
    let before = u(&p.res("a"), "resync_bytes_sent");
    let bnbd = p.dir.path().join("b.nbd");
    p.b.spawn(&bnbd);
    p.wait_in_sync();
    let moved = u(&p.res("a"), "resync_bytes_sent") - before;
    assert!(
        (2 * MIB..=3 * MIB).contains(&moved),
        "resync moved {moved} bytes after 2 MiB written"
    );
    p.assert_identical();
}

/// DRBD user guide, "split brain notification and automatic recovery" / "manual split brain
/// recovery", and fail back after a forced failover.
#[test]
fn failover_failback_split_brain_and_discard_my_data() {
    let mut p = Pair::start("s3cret-shared");
    p.wait_state("a", "Connected", |r| r["connection"] == "Connected");
    p.ok("a", &["primary", "r0", "--force"]);
    p.wait_in_sync();
    qemu_io(&p.uri("a"), &["write -P 0x11 0 1M"]);
    p.wait_in_sync();

    // The Primary dies; the Secondary is promoted (needs --force: its peer is gone).
    p.a.kill9();
    p.wait_state("b", "Connecting", |r| r["connection"] == "Connecting");
    let out = p.b.cli(&["primary", "r0"]);
    assert!(
        !out.status.success(),
        "promotion without the peer must need --force"
    );
    p.ok("b", &["primary", "r0", "--force"]);
    qemu_io(&p.uri("b"), &["write -P 0x22 8M 1M"]);
    // Fail back: the old Primary comes back as Secondary and becomes SyncTarget of only the
    // changed blocks (b's 1 MiB plus a's activity-log extents).
    let anbd = p.dir.path().join("a.nbd");
    p.a.spawn(&anbd);
    p.wait_in_sync();
    assert_eq!(p.res("a")["role"], "Secondary");
    let got = u(&p.res("a"), "resync_bytes_received");
    assert!(
        (MIB..=9 * MIB).contains(&got),
        "fail back resynced {got} bytes"
    );
    p.assert_identical();

    // Both Primary while apart: split brain, nothing overwritten.
    p.ok("a", &["disconnect", "r0"]);
    p.ok("b", &["disconnect", "r0"]);
    p.ok("a", &["primary", "r0", "--force"]);
    qemu_io(&p.uri("a"), &["write -P 0x33 16M 1M"]);
    qemu_io(&p.uri("b"), &["write -P 0x44 17M 1M"]);
    p.ok("a", &["connect", "r0"]);
    p.ok("b", &["connect", "r0"]);
    for n in ["a", "b"] {
        p.wait_state(n, "split brain reported", |r| {
            r["split_brain"].is_string() && r["connection"] == "StandAlone"
        });
    }
    qemu_io(&p.uri("a"), &["read -P 0x33 16M 1M", "read -P 0 17M 1M"]);
    qemu_io(&p.uri("b"), &["read -P 0x44 17M 1M"]);
    // The admin decides: b's changes are discarded.
    p.ok("b", &["secondary", "r0"]);
    p.ok("b", &["connect", "r0", "--discard-my-data"]);
    p.ok("a", &["connect", "r0"]);
    p.wait_in_sync();
    p.assert_identical();
    qemu_io_ro(&p.uri("b"), &["read -P 0x33 16M 1M", "read -P 0 17M 1M"]);
}

/// A peer with the wrong secret is refused and never gets or sends data.
#[test]
fn wrong_secret_is_refused_and_nothing_is_applied() {
    let p = Pair::start("a-wrong-secret");
    wait_until("a refusal in the log", Duration::from_secs(20), || {
        let l = p.a.log_text() + &p.b.log_text();
        l.contains("wrong shared secret") || l.contains("failed authentication")
    });
    for n in ["a", "b"] {
        let r = p.res(n);
        assert_ne!(r["connection"], "Connected", "{r}");
        assert_eq!(u(&r, "received_bytes"), 0);
    }
    p.ok("a", &["primary", "r0", "--force"]);
    qemu_io(&p.uri("a"), &["write -P 0x99 0 1M"]);
    std::thread::sleep(Duration::from_millis(500));
    let b = std::fs::read(p.img("b")).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "the wrong-secret peer received data"
    );
    // Both daemons still answer.
    assert!(p.b.cli(&["status"]).status.success());
}
