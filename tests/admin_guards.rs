//! The guards that keep an admin from losing data (issue 13): one owner per disk, no demotion
//! under an NBD client that holds the export open (DRBD's "held open"), no silent creation of
//! a mistyped path, `create-md`, and a refused start that changes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nbd_client::NbdClient;
use common::pair::{Pair, PairOpts};
use common::{drl_bin, solo_config, Node};

const MIB: u64 = 1 << 20;

/// Run `drl daemon` with `config` to its end (it must refuse to start); returns its stderr.
fn refused_start(dir: &Path, config: &str, node: &str, tag: &str) -> String {
    let cfg = dir.join(format!("{tag}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new(drl_bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .args(["--node", node])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that is not refused runs until killed: bound the wait, then fail clearly.
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success(), "the daemon must refuse to start");
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon started instead of refusing; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn drl(cfg: &Path, node: &str, args: &[&str]) -> std::process::Output {
    Command::new(drl_bin())
        .arg("--config")
        .arg(cfg)
        .args(["--node", node])
        .args(args)
        .output()
        .unwrap()
}

/// Two daemons on one disk and metadata (different sockets): the second is refused and names
/// the first one's pid; the first is untouched.
#[test]
fn a_second_daemon_on_the_same_disk_is_refused_with_the_owners_pid() {
    let d = tempfile::tempdir().unwrap();
    let mut first = Node::start(
        d.path(),
        &solo_config(d.path(), "8MiB"),
        "n1",
        &d.path().join("r0.nbd"),
    );
    let pid = first.child.as_ref().unwrap().id();
    let second = solo_config(d.path(), "8MiB")
        .replace("n1.sock", "second.sock")
        .replace("r0.nbd", "second.nbd");
    let err = refused_start(d.path(), &second, "n1", "second");
    assert!(
        err.contains("in use by another process") && err.contains(&format!("pid {pid}")),
        "expected a refusal naming pid {pid}: {err}"
    );
    assert!(!d.path().join("second.nbd").exists());
    // create-md is refused too while the daemon holds the resource.
    let out = drl(&first.config, "n1", &["create-md", "r0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    assert_eq!(first.stop(), 0);
    // Once the owner is gone, the files are free again.
    let mut again = Node::start(d.path(), &second, "n1", &d.path().join("second.nbd"));
    assert_eq!(again.stop(), 0);
}

/// A disk whose directory does not exist (a typo) is an error for check-config and for the
/// daemon, and nothing is created; check-config lists what a good start would create.
#[test]
fn a_mistyped_directory_is_refused_and_nothing_is_created() {
    let d = tempfile::tempdir().unwrap();
    let good = solo_config(d.path(), "8MiB");
    let typo = good.replace(
        &format!("{}/r0.img", d.path().display()),
        &format!("{}/typo/r0.img", d.path().display()),
    );
    let cfg = d.path().join("typo.toml");
    std::fs::write(&cfg, &typo).unwrap();
    let out = drl(&cfg, "n1", &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config must refuse: {err}");
    assert!(
        err.contains("typo") && err.contains("does not exist"),
        "{err}"
    );
    let err = refused_start(d.path(), &typo, "n1", "typo2");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!d.path().join("typo").exists());
    assert!(
        !d.path().join("r0.meta").exists(),
        "a refused start created the metadata"
    );

    let cfg = d.path().join("good.toml");
    std::fs::write(&cfg, &good).unwrap();
    let out = drl(&cfg, "n1", &["check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("would create") && text.contains("r0.img") && text.contains("r0.meta"),
        "{text}"
    );
}

/// `drl create-md` creates the metadata explicitly, once; the start then finds it (no loud
/// "no metadata found" line), and a second create-md is refused.
#[test]
fn create_md_creates_metadata_once() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("n1.toml");
    std::fs::write(&cfg, solo_config(d.path(), "8MiB")).unwrap();
    let out = drl(&cfg, "n1", &["create-md", "r0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.path().join("r0.meta").exists());
    let out = drl(&cfg, "n1", &["create-md", "r0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds metadata"));
    let mut n = Node::start(
        d.path(),
        &solo_config(d.path(), "8MiB"),
        "n1",
        &d.path().join("r0.nbd"),
    );
    assert!(
        !n.log_text().contains("NO METADATA FOUND"),
        "{}",
        n.log_text()
    );
    assert_eq!(n.stop(), 0);
    // Without create-md, the first start says loudly that it creates metadata.
    let d2 = tempfile::tempdir().unwrap();
    let mut m = Node::start(
        d2.path(),
        &solo_config(d2.path(), "8MiB"),
        "n1",
        &d2.path().join("r0.nbd"),
    );
    assert!(
        m.log_text().contains("NO METADATA FOUND"),
        "{}",
        m.log_text()
    );
    assert_eq!(m.stop(), 0);
}

/// A start refused because the size changed leaves the disk and metadata exactly as they were
/// (it grew the disk from 128 to 256 MiB before refusing).
#[test]
fn a_refused_start_leaves_every_file_untouched() {
    let d = tempfile::tempdir().unwrap();
    let mut n = Node::start(
        d.path(),
        &solo_config(d.path(), "16MiB"),
        "n1",
        &d.path().join("r0.nbd"),
    );
    assert_eq!(n.stop(), 0);
    let disk = d.path().join("r0.img");
    let meta = d.path().join("r0.meta");
    let (disk_len, meta_bytes) = (
        std::fs::metadata(&disk).unwrap().len(),
        std::fs::read(&meta).unwrap(),
    );
    let err = refused_start(d.path(), &solo_config(d.path(), "32MiB"), "n1", "bigger");
    assert!(err.contains("bytes"), "{err}");
    assert_eq!(
        std::fs::metadata(&disk).unwrap().len(),
        disk_len,
        "the disk changed size"
    );
    assert_eq!(
        std::fs::read(&meta).unwrap(),
        meta_bytes,
        "the metadata changed"
    );
    assert_eq!(disk_len, 16 * MIB);
}

/// `drl secondary` while an NBD client holds the Primary's export open is refused, naming the
/// client (DRBD: "held open"); after the client leaves it succeeds.
#[test]
fn demotion_under_a_held_nbd_connection_is_refused() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.force_primary_and_sync("a");
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    c.write(0, &[0xab; 4096]).unwrap();
    let out = p.node("a").cli(&["secondary", "r0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "secondary must be refused: {err}");
    assert!(
        err.contains("held open by 1 NBD client")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // The client's next write still works: nothing was demoted.
    c.write(4096, &[0xcd; 4096]).unwrap();
    c.flush().unwrap();
    c.disconnect();
    common::wait_until(
        "the client's connection to end",
        Duration::from_secs(10),
        || p.node("a").cli(&["secondary", "r0"]).status.success(),
    );
    assert_eq!(
        common::pair::res(p.node("a"), "r0").unwrap()["role"],
        "Secondary"
    );
}
