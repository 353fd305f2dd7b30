//! Issue 5 end to end, through the real daemon, the real CLI, real NBD clients and a real Swift
//! (scripts/swift-aio.sh; scripts/test.sh starts it): snapshots under a running writer, full and
//! incremental streams, resume after an interruption, corruption detection, SLO images.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const AUTH_URL: &str = "http://127.0.0.1:8080/auth/v1.0";

fn swift_up() -> bool {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            "X-Auth-User: test:tester",
            "-H",
            "X-Auth-Key: testing",
            AUTH_URL,
        ])
        .status();
    if out.map(|s| s.success()).unwrap_or(false) {
        return true;
    }
    if std::env::var("DRL_SKIP_SWIFT").as_deref() == Ok("1") {
        eprintln!("SKIP: Swift does not answer on {AUTH_URL} and DRL_SKIP_SWIFT=1");
        return false;
    }
    panic!("Swift does not answer on {AUTH_URL}: run `scripts/swift-aio.sh start` first (scripts/test.sh does)");
}

fn config(dir: &Path, size: &str) -> String {
    format!(
        "{}\n[swift]\nauth = \"tempauth\"\nurl = \"{AUTH_URL}\"\nuser = \"test:tester\"\nkey = \"testing\"\n\n[stream]\nvault-dir = \"{}/vault\"\n",
        solo_config(dir, size),
        dir.display()
    )
}

/// A unique container per test run, so reruns against the same Swift never see old objects.
fn container(tag: &str) -> String {
    format!(
        "drltest-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

fn json_out(node: &Node, args: &[&str]) -> serde_json::Value {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "drl {args:?} failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log_text()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drl {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// python-swiftclient's `swift`, logged in as the test account.
fn swift_cli() -> Command {
    let mut c = Command::new("swift");
    c.args(["-A", AUTH_URL, "-U", "test:tester", "-K", "testing"]);
    c
}

/// `drl ARGS --to DEST --json` (restore, image pull): the JSON report.
fn copy_to(node: &Node, args: &[&str], dest: &Path) -> serde_json::Value {
    let dest = dest.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--to", dest, "--json"]);
    json_out(node, &all)
}

/// A minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies): enough to issue
/// dependent writes one at a time and know exactly when each was acknowledged.
struct Nbd(UnixStream);

impl Nbd {
    fn connect(sock: &Path) -> Nbd {
        let mut s = UnixStream::connect(sock).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        s.write_all(&3u32.to_be_bytes()).unwrap();
        s.write_all(b"IHAVEOPT").unwrap();
        s.write_all(&1u32.to_be_bytes()).unwrap();
        s.write_all(&0u32.to_be_bytes()).unwrap();
        let mut export = [0u8; 10];
        s.read_exact(&mut export).unwrap();
        Nbd(s)
    }

    fn write(&mut self, offset: u64, data: &[u8], cookie: u64) {
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&1u16.to_be_bytes());
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&(data.len() as u32).to_be_bytes());
        req.extend_from_slice(data);
        self.0.write_all(&req).unwrap();
        let mut reply = [0u8; 16];
        self.0.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "write error"
        );
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), cookie);
    }
}

const BLOCK: usize = 4096;
const BLOCKS: u64 = 2048; // the writer cycles over the first 8 MiB

/// Block content for write number `seq`: the sequence number, repeated.
fn stamp(seq: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|_| (seq + 1).to_le_bytes())
        .collect()
}

#[test]
fn snapshot_under_a_running_writer_restores_exactly_the_cut() {
    need("qemu-io");
    if !swift_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, &config(d, "32MiB"), "n1", &d.join("r0.nbd"));
    // Dependent writes: write k goes to block k % BLOCKS and starts only after write k-1 was
    // acknowledged. `acked` = writes acknowledged so far.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, sock) = (acked.clone(), stop.clone(), d.join("r0.nbd"));
        std::thread::spawn(move || {
            let mut c = Nbd::connect(&sock);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.write((k % BLOCKS) * BLOCK as u64, &stamp(k), k);
                k += 1;
                acked.store(k, Ordering::SeqCst);
            }
        })
    };
    // The cut falls among running writes: some before it, and (the contract checked next)
    // the writer goes on after it, however slowly a loaded machine runs it.
    wait_until(
        "the writer acknowledged 100 writes",
        Duration::from_secs(60),
        || acked.load(Ordering::SeqCst) >= 100,
    );
    let before = acked.load(Ordering::SeqCst);
    json_out(&node, &["snapshot", "create", "r0", "s1", "--json"]);
    let after = acked.load(Ordering::SeqCst);
    wait_until(
        "the writer kept writing after the snapshot",
        Duration::from_secs(60),
        || acked.load(Ordering::SeqCst) > after + 10,
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let c = container("cut");
    let rep = json_out(
        &node,
        &[
            "stream",
            "r0",
            "s1",
            "--to",
            &format!("swift://{c}/r0"),
            "--json",
        ],
    );
    assert!(rep["chunks_uploaded"].as_u64().unwrap() > 0);
    let out = d.join("restored.img");
    copy_to(&node, &["restore", &format!("swift://{c}/r0/s1")], &out);
    let img = std::fs::read(&out).unwrap();
    assert_eq!(img.len(), 32 << 20);
    // The newest write each block holds; the cut K must satisfy: every write < K present
    // (unless overwritten by a later one < K), none >= K present, before <= K <= after + 1.
    let seqs: Vec<u64> = (0..BLOCKS as usize)
        .map(|b| u64::from_le_bytes(img[b * BLOCK..b * BLOCK + 8].try_into().unwrap()))
        .collect();
    let newest = seqs.iter().copied().max().unwrap(); // = K (seq + 1 stored)
    assert!(
        newest >= before && newest <= after + 1,
        "cut {newest} outside the create call's window [{before}, {}]",
        after + 1
    );
    for (b, &s) in seqs.iter().enumerate() {
        // With K writes done, block b holds the last write k < K with k % BLOCKS == b.
        let want = if newest > b as u64 {
            (newest - 1 - b as u64) / BLOCKS * BLOCKS + b as u64 + 1
        } else {
            0
        };
        assert_eq!(
            s, want,
            "block {b}: holds write {s}, the cut at {newest} says {want}"
        );
        let blk = &img[b * BLOCK..(b + 1) * BLOCK];
        if want > 0 {
            assert!(blk == stamp(want - 1).as_slice(), "block {b} torn");
        }
    }
}

#[test]
fn full_then_one_percent_incremental_uploads_about_one_percent_and_restores_equal() {
    need("nbdcopy");
    if !swift_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, &config(d, "64MiB"), "n1", &d.join("r0.nbd"));
    let uri = format!("nbd+unix:///?socket={}", d.join("r0.nbd").display());
    let mut data = vec![0u8; 64 << 20];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    std::fs::write(d.join("v1.bin"), &data).unwrap();
    run(Command::new("nbdcopy").arg(d.join("v1.bin")).arg(&uri));
    json_out(&node, &["snapshot", "create", "r0", "s1", "--json"]);
    let c = container("incr");
    let to = format!("swift://{c}/vols");
    let full = json_out(
        &node,
        &[
            "stream",
            "r0",
            "s1",
            "--to",
            &to,
            "--chunk-size",
            "256KiB",
            "--json",
        ],
    );
    assert_eq!(full["bytes_read"], 64u64 << 20);
    assert!(
        full["bytes_uploaded"].as_u64().unwrap() >= 60 << 20,
        "random data does not compress: {full}"
    );

    // Change 1% of the volume: 655 KiB in three clustered runs.
    qemu_io(
        &uri,
        &[
            "write -P 0x11 1M 300k",
            "write -P 0x22 20M 200k",
            "write -P 0x33 50M 155k",
        ],
    );
    json_out(&node, &["snapshot", "create", "r0", "s2", "--json"]);
    let incr = json_out(
        &node,
        &[
            "stream",
            "r0",
            "s2",
            "--to",
            &to,
            "--chunk-size",
            "256KiB",
            "--json",
        ],
    );
    let vol = 64u64 << 20;
    let read = incr["bytes_read"].as_u64().unwrap();
    let sent = incr["bytes_uploaded"].as_u64().unwrap();
    assert!(
        read <= vol / 50,
        "incremental read {read} bytes: more than 2% of the volume ({incr})"
    );
    assert!(
        sent <= vol / 50 && sent > 0,
        "incremental uploaded {sent} bytes ({incr})"
    );
    assert!(incr["chunks_skipped_unchanged"].as_u64().unwrap() > 200);

    let now = d.join("now.bin");
    run(Command::new("nbdcopy").arg(&uri).arg(&now));
    let out = d.join("restored.img");
    copy_to(&node, &["restore", &format!("{to}/s2")], &out);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&now).unwrap(),
        "restored chain differs from the volume at s2"
    );
    // The full one restores the old contents.
    let out1 = d.join("restored1.img");
    copy_to(&node, &["restore", &format!("{to}/s1")], &out1);
    assert!(std::fs::read(&out1).unwrap() == data);
}

#[test]
fn interrupted_stream_resumes_without_resending_and_corruption_is_detected() {
    need("nbdcopy");
    if !swift_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The shaper holds the stream to 12.5 MB/s (at least 10.7 s for the 128 MiB), so it is
    // still running when the test has seen 10 objects: unshaped it can finish before one
    // `swift list` comes back, and at 50 MB/s (2.7 s) it did on a loaded host (the soak beside
    // a CPU hog), where one `swift list` takes seconds.
    let cfg = format!(
        "{}\n[shaping]\nlink-rate = \"100Mbit\"\n",
        config(d, "128MiB")
    );
    let mut node = Node::start(d, &cfg, "n1", &d.join("r0.nbd"));
    let uri = format!("nbd+unix:///?socket={}", d.join("r0.nbd").display());
    let mut data = vec![0u8; 128 << 20];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    std::fs::write(d.join("v.bin"), &data).unwrap();
    run(Command::new("nbdcopy").arg(d.join("v.bin")).arg(&uri));
    json_out(&node, &["snapshot", "create", "r0", "s1", "--json"]);
    let c = container("resume");
    let to = format!("swift://{c}/r0");
    // Start a slow stream (one chunk at a time, 256 KiB chunks packed 4 to an object: 128
    // objects) and kill the daemon mid-way.
    let child = Command::new(drl_bin())
        .arg("--config")
        .arg(&node.config)
        .args([
            "--node",
            "n1",
            "stream",
            "r0",
            "s1",
            "--to",
            &to,
            "--chunk-size",
            "256KiB",
            "--object-size",
            "1MiB",
            "--parallel",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let listed = || {
        let out = swift_cli().args(["list", &c]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("/chunks/"))
            .count()
    };
    wait_until("some objects uploaded", Duration::from_secs(60), || {
        listed() >= 10
    });
    node.kill9();
    let mut child = child;
    let _ = child.wait();
    let done_before = listed();
    assert!(
        done_before < 128,
        "the stream finished before it could be interrupted"
    );
    node.spawn(&d.join("r0.nbd"));
    let rep = json_out(
        &node,
        &[
            "stream",
            "r0",
            "s1",
            "--to",
            &to,
            "--chunk-size",
            "256KiB",
            "--object-size",
            "1MiB",
            "--json",
        ],
    );
    // Random chunks do not compress: 4 to an object.
    let resumed = rep["chunks_resumed"].as_u64().unwrap();
    assert!(
        resumed as usize >= 4 * done_before.saturating_sub(1) && resumed > 0,
        "resumed {resumed} chunks, {done_before} objects were done: {rep}"
    );
    assert_eq!(
        rep["objects_uploaded"].as_u64().unwrap() * 4,
        rep["chunks_uploaded"].as_u64().unwrap(),
        "{rep}"
    );
    assert_eq!(
        rep["chunks_uploaded"].as_u64().unwrap() + resumed,
        512,
        "{rep}"
    );

    // Corrupt one chunk object in Swift: the restore names it.
    let out = swift_cli().args(["list", &c]).output().unwrap();
    let victim = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("/chunks/"))
        .unwrap()
        .to_owned();
    let garbage = d.join("garbage");
    std::fs::write(&garbage, vec![0x42u8; 4096]).unwrap();
    let up = swift_cli()
        .current_dir(d)
        .args(["upload", &c, "garbage", "--object-name", &victim])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let res = node.cli(&[
        "restore",
        &format!("{to}/s1"),
        "--to",
        d.join("r.img").to_str().unwrap(),
    ]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("chunk")
            && (err.contains("sha256") || err.contains("corrupt") || err.contains("md5")),
        "{err}"
    );
}

#[test]
fn image_push_as_slo_reads_back_whole_and_pull_verifies() {
    if !swift_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, &config(d, "16MiB"), "n1", &d.join("r0.nbd"));
    let img = d.join("vm.img");
    let mut data = vec![0u8; (5 << 20) + 12345];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    std::fs::write(&img, &data).unwrap();
    let c = container("img");
    let rep = json_out(
        &node,
        &[
            "image",
            "push",
            img.to_str().unwrap(),
            "--to",
            &format!("swift://{c}/images/vm.img"),
            "--segment-size",
            "1MiB",
            "--json",
        ],
    );
    assert_eq!(rep["bytes_read"], data.len() as u64);
    // One GET of the manifest object returns the whole image (what Glance serves).
    let got = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "X-Auth-User: test:tester",
            "-H",
            "X-Auth-Key: testing",
            "-D",
            "-",
            "-o",
            "/dev/null",
            AUTH_URL,
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&got.stdout);
    let url = headers
        .lines()
        .find_map(|l| l.strip_prefix("X-Storage-Url: "))
        .unwrap()
        .trim()
        .to_owned();
    let token = headers
        .lines()
        .find_map(|l| l.strip_prefix("X-Auth-Token: "))
        .unwrap()
        .trim()
        .to_owned();
    let whole = d.join("whole.img");
    run(Command::new("curl")
        .args(["-sf", "-H", &format!("X-Auth-Token: {token}"), "-o"])
        .arg(&whole)
        .arg(format!("{url}/{c}/images/vm.img")));
    assert!(
        std::fs::read(&whole).unwrap() == data,
        "the SLO does not read back as the image"
    );
    let back = d.join("back.img");
    copy_to(
        &node,
        &["image", "pull", &format!("swift://{c}/images/vm.img")],
        &back,
    );
    assert!(std::fs::read(&back).unwrap() == data);
}

#[test]
fn stream_and_restore_work_with_the_local_vault_and_bad_input_gets_clear_errors() {
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, &config(d, "16MiB"), "n1", &d.join("r0.nbd"));
    let uri = format!("nbd+unix:///?socket={}", d.join("r0.nbd").display());
    qemu_io(&uri, &["write -P 0x5c 1M 3M"]);
    json_out(&node, &["snapshot", "create", "r0", "a", "--json"]);
    qemu_io(&uri, &["write -P 0x00 1M 3M"]);
    let rep = json_out(
        &node,
        &["stream", "r0", "a", "--to", "backups/r0", "--json"],
    );
    assert!(
        rep["chunks_skipped_zero"].as_u64().unwrap() >= 2,
        "zero chunks are skipped: {rep}"
    );
    assert!(
        d.join("vault/backups").is_dir(),
        "plain CONTAINER/PREFIX goes to the configured vault"
    );
    let out = d.join("a.img");
    json_out(
        &node,
        &[
            "restore",
            "backups/r0/a",
            "--to",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    let img = std::fs::read(&out).unwrap();
    assert!(
        img[1 << 20..4 << 20].iter().all(|&b| b == 0x5c) && img[..1 << 20].iter().all(|&b| b == 0)
    );

    for (args, needle) in [
        (
            vec!["stream", "r0", "nope", "--to", "backups/r0"],
            "no snapshot",
        ),
        (vec!["stream", "r9", "a", "--to", "backups/r0"], "r9"),
        (vec!["stream", "r0", "a", "--to", "swift://"], "store URL"),
        (vec!["stream", "r0", "a", "--to", "backups/r0"], "already"),
        (
            vec!["restore", "backups/r0/missing", "--to", "./x.img"],
            "missing",
        ),
    ] {
        let out = node.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
    assert!(
        node.status()["resources"][0]["name"] == "r0",
        "daemon still up"
    );
}
