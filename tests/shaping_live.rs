//! The WAN shaper in a real daemon: `[shaping]` from the config caps a snapshot stream (class
//! `snapshot`) at the link rate, `drl shaping show|set` read and change it live, and
//! `drl status --json` carries the per-class counters.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{need, run, solo_config, Node};
use serde_json::Value;

fn json_out(node: &Node, args: &[&str]) -> Value {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "drl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drl {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn class<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == name)
        .unwrap_or_else(|| panic!("no class {name} in {v}"))
}

fn random_file(dir: &Path, bytes: u64) -> std::path::PathBuf {
    let p = dir.join("random.bin");
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", p.display()))
        .args(["bs=1M", &format!("count={}", bytes >> 20), "status=none"]));
    p
}

#[test]
fn a_snapshot_stream_is_capped_and_shaping_changes_live() {
    need("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 32 Mbit = 4 MB/s for all of drl's WAN traffic.
    let cfg = format!(
        "{}\n[stream]\nvault-dir = \"{}/vault\"\n\n[shaping]\nlink-rate = \"32Mbit\"\n",
        solo_config(d, "64MiB"),
        d.display()
    );
    let node = Node::start(d, &cfg, "n1", &d.join("r0.nbd"));

    let v = json_out(&node, &["shaping", "show", "--json"]);
    assert_eq!(v["link_bytes_per_s"], 4_000_000);
    assert_eq!(class(&v, "replication")["share"], 50);
    assert_eq!(class(&v, "replication")["guarantee_bytes_per_s"], 2_000_000);
    assert_eq!(v["resync"]["tuning"]["fill_target_bytes"], 2 << 20, "{v}");
    assert_eq!(
        v["resync"]["rate_bytes_per_s"]
            .as_u64()
            .map(|r| r <= 4_000_000),
        Some(true),
        "{v}"
    );

    // 12 MiB of incompressible data, streamed to the local vault through the snapshot class.
    let data = 12u64 << 20;
    let f = random_file(d, data);
    run(Command::new("nbdcopy")
        .args(["--no-extents"])
        .arg(&f)
        .arg(format!(
            "nbd+unix:///?socket={}",
            d.join("r0.nbd").display()
        )));
    json_out(&node, &["snapshot", "create", "r0", "s1", "--json"]);
    let t0 = Instant::now();
    let rep = json_out(
        &node,
        &["stream", "r0", "s1", "--to", "backups/r0", "--json"],
    );
    let took = t0.elapsed();
    let st = node.status();
    let snap = class(&st["shaping"], "snapshot");
    let granted = snap["granted_bytes"].as_u64().unwrap();
    assert!(
        granted >= data,
        "snapshot class granted {granted} bytes, the stream stored {data}: {rep}"
    );
    // 12 MiB at 4 MB/s, minus one 64 KiB burst: at least 3.1 s; allow 10% for timer slack.
    let min = Duration::from_secs_f64((granted - 65536) as f64 / 4_000_000.0 * 0.9);
    assert!(
        took >= min,
        "stream of {granted} bytes took {took:?}, the 4 MB/s cap allows no less than {min:?}"
    );
    println!(
        "snapshot stream: {granted} bytes in {took:?} at link-rate 4 MB/s ({:.2} MB/s)",
        granted as f64 / took.as_secs_f64() / 1e6
    );

    // Live changes, checked by show.
    let v = json_out(
        &node,
        &[
            "shaping",
            "set",
            "--share",
            "image=5",
            "--ceil",
            "image=8Mbit",
            "--link-rate",
            "100Mbit",
            "--json",
        ],
    );
    assert_eq!(v["link_bytes_per_s"], 12_500_000);
    assert_eq!(class(&v, "image")["share"], 5);
    assert_eq!(class(&v, "image")["ceil_bytes_per_s"], 1_000_000);
    let out = node.cli(&["shaping", "show"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("link-rate 100.0Mbit"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("image") && l.contains("8.0Mbit")),
        "{table}"
    );
    // Bad requests are refused with the key and reason, and change nothing.
    let out = node.cli(&["shaping", "set", "--ceil", "image=200Mbit"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shaping.class.image.ceil") && err.contains("above the link rate"),
        "{err}"
    );
    let out = node.cli(&["shaping", "set", "--share", "bulk=3"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        class(&json_out(&node, &["shaping", "show", "--json"]), "image")["ceil_bytes_per_s"],
        1_000_000
    );
    // Back to counting only.
    let v = json_out(
        &node,
        &[
            "shaping",
            "set",
            "--ceil",
            "image=off",
            "--link-rate",
            "off",
            "--json",
        ],
    );
    assert!(v["link_bytes_per_s"].is_null(), "{v}");
}
