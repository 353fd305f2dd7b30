//! `drl resize` (DRBD's `resize`) on real daemons with real NBD clients: a volume grows
//! online while fio writes through NBD, and a shrink is refused unless `--allow-shrink` and
//! the tail is unused (issue 13, "Online grow").

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{need, qemu_io, run, solo_config, wait_until, KillOnDrop, Node};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn uri(d: &Path) -> String {
    format!("nbd+unix:///?socket={}", d.join("r0.nbd").display())
}

/// The size a new NBD connection is told (nbdinfo, libnbd).
fn nbd_size(d: &Path) -> u64 {
    need("nbdinfo");
    run(Command::new("nbdinfo").args(["--size", &uri(d)]))
        .trim()
        .parse()
        .expect("nbdinfo --size prints a number")
}

fn status_size(n: &Node) -> u64 {
    n.status()["resources"][0]["size_bytes"].as_u64().unwrap()
}

fn written(n: &Node) -> u64 {
    n.status()["resources"][0]["nbd"]["stats"]["bytes_written"]
        .as_u64()
        .unwrap_or(0)
}

fn set_size(n: &Node, size: &str) {
    std::fs::write(&n.config, solo_config(&n.dir, size)).unwrap();
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// `drl ARGS`: (success, stdout + stderr).
fn drl(n: &Node, args: &[&str]) -> (bool, String) {
    let out = n.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// fio writing at random over the first `size` bytes of the export until it is killed; it
/// exits (non-zero) on its first I/O error.
fn fio_writer(d: &Path, size: &str) -> KillOnDrop {
    need("fio");
    let child = Command::new("fio")
        .args([
            "--name=drl-resize-load",
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={}", uri(d)),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            &format!("--size={size}"),
            "--time_based",
            "--runtime=3600",
            "--refill_buffers",
        ])
        .stdout(std::fs::File::create(d.join("fio.out")).unwrap())
        .stderr(std::fs::File::create(d.join("fio.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(child)
}

fn fio_alive(fio: &mut KillOnDrop, d: &Path) {
    assert!(
        fio.0.try_wait().unwrap().is_none(),
        "fio stopped (an I/O error?): {}{}",
        std::fs::read_to_string(d.join("fio.out")).unwrap_or_default(),
        std::fs::read_to_string(d.join("fio.err")).unwrap_or_default()
    );
}

/// While fio writes through NBD: raise `size` and `drl resize`; the running client keeps
/// writing without an error, a new connection sees the new size, the new area reads zero and
/// takes writes, status shows the size, and a restart with the new config finds the grown
/// metadata and the data written into the new area.
#[test]
fn a_volume_grows_online_while_fio_writes() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let mut n = Node::start(d, &solo_config(d, "16MiB"), "n1", &d.join("r0.nbd"));
    assert_eq!(nbd_size(d), 16 * MIB);
    let mut fio = fio_writer(d, "16m");
    wait_until("fio writing", WAIT, || written(&n) > 0);

    set_size(&n, "32MiB");
    let (ok, text) = drl(&n, &["resize", "r0"]);
    assert!(ok, "{text}");
    assert!(text.contains("grown online from 16MiB to 32MiB"), "{text}");
    let at_resize = written(&n);
    assert_eq!(nbd_size(d), 32 * MIB, "a new connection sees the new size");
    assert_eq!(status_size(&n), 32 * MIB);
    assert_eq!(file_len(&d.join("r0.img")), 32 * MIB);
    // The new area is zero (a sparse extension) and takes writes from a new connection.
    qemu_io(&uri(d), &["read -P 0 16M 16M"]);
    qemu_io(&uri(d), &["write -P 0x5a 24M 1M", "read -P 0x5a 24M 1M"]);
    // The connection that was open during the resize keeps writing, without an error.
    wait_until("fio writing after the resize", WAIT, || {
        written(&n) > at_resize + 4 * MIB
    });
    fio_alive(&mut fio, d);
    // Again: the same size is nothing to do.
    let (ok, text) = drl(&n, &["resize", "r0"]);
    assert!(ok && text.contains("size unchanged"), "{text}");
    drop(fio);

    // The metadata grew with the volume: a restart with the new size comes up, data intact.
    restart_finds(&mut n, 32 * MIB, "read -P 0x5a 24M 1M");
}

/// Stop and start `n` again with its config: it comes up with `size` (the metadata has it)
/// and `check` (a qemu-io read) passes.
fn restart_finds(n: &mut Node, size: u64, check: &str) {
    assert_eq!(n.stop(), 0);
    n.spawn(&n.dir.join("r0.nbd"));
    assert_eq!(status_size(n), size);
    qemu_io(&uri(&n.dir), &[check]);
    assert_eq!(n.stop(), 0);
}

/// A smaller `size` is refused by `drl resize` without `--allow-shrink`, refused with it
/// while the tail holds data (SEEK_DATA), never applied by `drl adjust`; with the flag and an
/// unused tail the volume shrinks, and data below the new end is intact. Every refusal
/// changes nothing: size, file length and data stay.
#[test]
fn a_shrink_is_refused_unless_allowed_and_the_tail_is_unused() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let mut n = Node::start(d, &solo_config(d, "32MiB"), "n1", &d.join("r0.nbd"));
    qemu_io(&uri(d), &["write -P 0xab 20M 1M"]);
    let unchanged = |n: &Node| {
        assert_eq!(status_size(n), 32 * MIB);
        assert_eq!(nbd_size(d), 32 * MIB);
        assert_eq!(file_len(&d.join("r0.img")), 32 * MIB);
        qemu_io(&uri(d), &["read -P 0xab 20M 1M"]);
    };

    set_size(&n, "16MiB");
    let (ok, text) = drl(&n, &["resize", "r0"]);
    assert!(
        !ok,
        "a shrink without --allow-shrink must be refused: {text}"
    );
    assert!(text.contains("--allow-shrink"), "{text}");
    unchanged(&n);

    let (ok, text) = drl(&n, &["resize", "r0", "--allow-shrink"]);
    assert!(!ok, "a shrink over data must be refused: {text}");
    assert!(text.contains("holds data past byte 16777216"), "{text}");
    unchanged(&n);

    let (ok, text) = drl(&n, &["adjust", "r0"]);
    assert!(!ok, "adjust never shrinks: {text}");
    assert!(
        text.contains("refused: resource r0: size changed, not applied"),
        "{text}"
    );
    unchanged(&n);

    // The tail past 24 MiB holds nothing: allowed with the flag.
    set_size(&n, "24MiB");
    let (ok, text) = drl(&n, &["resize", "r0", "--allow-shrink"]);
    assert!(ok, "{text}");
    assert!(text.contains("shrunk online from 32MiB to 24MiB"), "{text}");
    assert_eq!(status_size(&n), 24 * MIB);
    assert_eq!(nbd_size(d), 24 * MIB);
    assert_eq!(file_len(&d.join("r0.img")), 24 * MIB);
    qemu_io(&uri(d), &["read -P 0xab 20M 1M"]);
    restart_finds(&mut n, 24 * MIB, "read -P 0xab 20M 1M");
}

/// A replicated volume is not resized yet (both nodes must agree on the size; see
/// ARCHITECTURE.md, Online resize): `drl resize` says so and changes nothing, and `drl
/// adjust` lists it as refused.
#[test]
fn a_replicated_volume_is_not_resized_yet_and_says_why() {
    use common::pair::{pair_config, res, Pair, PairOpts};
    let p = Pair::start(PairOpts::new(8 * MIB));
    let mut grown = p.opts.clone();
    grown.size = 16 * MIB;
    let cfg = pair_config(p.d(), &grown, p.addr_a, p.addr_b, &p.opts.secret);
    std::fs::write(&p.a.config, cfg).unwrap();
    let (ok, text) = drl(&p.a, &["resize", "r0"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("online resize of a replicated resource is not built yet"),
        "{text}"
    );
    let (ok, text) = drl(&p.a, &["adjust", "r0"]);
    assert!(
        !ok && text.contains("refused: resource r0: size changed"),
        "{text}"
    );
    assert_eq!(res(&p.a, "r0").unwrap()["size_bytes"], 8 * MIB);
    assert_eq!(file_len(&p.disk("a")), 8 * MIB);
}
