//! Resources brought up and down while the daemon runs (issue 13): `drl up` / `drl down`
//! (DRBD's names), and `drl adjust` / SIGHUP applying resource changes from the config file
//! without a restart: a new resource comes up, a removed one goes down (refused while in use,
//! naming the user), a changed peer address reconnects there while a Primary keeps serving
//! fio's writes.

mod common;

use std::path::Path;
use std::process::Command;

use common::nbd_client::{nbd_write, NbdClient};
use common::pair::{assert_files_identical, free_port, in_sync, res, Pair, PairOpts, MIB, WAIT};
use common::{need, solo_config, wait_until, KillOnDrop, Node};
use serde_json::Value;

fn hup(n: &Node) {
    let pid = n.child.as_ref().expect("running").id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s += text;
    std::fs::write(path, s).unwrap();
}

fn names(n: &Node) -> Vec<String> {
    n.status()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn solo_r1(d: &Path) -> String {
    format!(
        "\n[[resource]]\nname = \"r1\"\nsize = \"8MiB\"\n\n[resource.on.n1]\ndisk = \"{d}/r1.img\"\nmeta = \"{d}/r1.meta\"\nnbd = \"{d}/r1.nbd\"\n",
        d = d.display()
    )
}

/// SIGHUP brings up a resource added to the file; `down` is refused while an NBD client
/// holds it open (naming it), works once it left, and releases the files (`up` takes them
/// again, data intact); `adjust` takes down a resource removed from the file, and refuses
/// (exit 1, naming the client) while it is in use.
#[test]
fn sighup_up_down_and_adjust_on_one_node() {
    let d = tempfile::tempdir().unwrap();
    let n = Node::start(
        d.path(),
        &solo_config(d.path(), "16MiB"),
        "n1",
        &d.path().join("r0.nbd"),
    );
    append(&n.config, &solo_r1(d.path()));
    hup(&n);
    let r1_nbd = d.path().join("r1.nbd");
    wait_until("r1 up after SIGHUP", WAIT, || {
        names(&n).contains(&"r1".to_owned()) && r1_nbd.exists()
    });
    assert!(
        n.log_text().contains("adjust: resource r1: up"),
        "{}",
        n.log_text()
    );
    let data = Pair::random(7, 64 * 1024);
    nbd_write(&r1_nbd, 4096, &data);

    // In use: refused, naming the client; nothing changes.
    let mut c = NbdClient::connect(&r1_nbd).unwrap();
    c.write(0, &[0x5a; 4096]).unwrap();
    let out = n.cli(&["down", "r1"]);
    assert!(
        !out.status.success(),
        "down under a client: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("held open by 1 NBD client"),
        "the refusal names the client: {}",
        stderr(&out)
    );
    assert!(names(&n).contains(&"r1".to_owned()));
    // adjust with r1 gone from the file: refused too, exit 1, r1 stays up.
    let with_r1 = std::fs::read_to_string(&n.config).unwrap();
    std::fs::write(&n.config, solo_config(d.path(), "16MiB")).unwrap();
    let out = n.cli(&["adjust"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("refused: resource r1: removed from the config, but it stays up")
            && stdout(&out).contains("held open by 1 NBD client"),
        "{}",
        stdout(&out)
    );
    assert!(names(&n).contains(&"r1".to_owned()));
    c.disconnect();
    wait_until("r1's client gone", WAIT, || {
        res(&n, "r1").is_some_and(|r| r["nbd"]["connections"] == 0)
    });

    // Free: adjust takes it down (the file still lacks r1).
    let out = n.cli(&["adjust"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("applied: resource r1: removed from the config: down"),
        "{}",
        stdout(&out)
    );
    assert_eq!(names(&n), vec!["r0".to_owned()]);
    assert!(!r1_nbd.exists(), "the export's socket is gone");
    let out = n.cli(&["up", "r1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no resource \"r1\""),
        "{}",
        stderr(&out)
    );

    // Back in the file: `up`; then `down` and `up` again: the claim was released each time
    // and the data is where it was.
    std::fs::write(&n.config, &with_r1).unwrap();
    let out = n.cli(&["up", "r1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "r1: up\n");
    assert_eq!(stdout(&n.cli(&["up", "r1"])), "r1: already up\n");
    let out = n.cli(&["down", "r1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = n.cli(&["down", "r1"]);
    assert!(!out.status.success() && stderr(&out).contains("r1 is not up"));
    let out = n.cli(&["up", "r1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("r1's export back", WAIT, || r1_nbd.exists());
    let mut c = NbdClient::connect(&r1_nbd).unwrap();
    assert_eq!(c.read(4096, data.len() as u32).unwrap(), data);
    c.disconnect();
    assert!(names(&n).contains(&"r0".to_owned()), "r0 untouched");
}

/// The r1 sections of a pair's config (both nodes), on ports of its own.
fn pair_r1(d: &Path, secret: &str, pa: u16, pb: u16) -> String {
    let mut s =
        format!("\n[[resource]]\nname = \"r1\"\nsize = \"8MiB\"\nsecret = \"{secret}\"\n\n");
    for (n, port) in [("a", pa), ("b", pb)] {
        s += &format!(
            "[resource.on.{n}]\naddress = \"127.0.0.1:{port}\"\ndisk = \"{d}/{n}/r1.img\"\nmeta = \"{d}/{n}/r1.meta\"\nnbd = \"{d}/{n}/r1.nbd\"\n\n",
            d = d.display()
        );
    }
    s
}

fn fio_writer(p: &Pair) -> KillOnDrop {
    need("fio");
    let child = Command::new("fio")
        .args([
            "--name=drl-life-load",
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={}", p.uri("a")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=24m",
            "--time_based",
            "--runtime=3600",
            "--refill_buffers",
        ])
        .stdout(std::fs::File::create(p.d().join("fio.out")).unwrap())
        .stderr(std::fs::File::create(p.d().join("fio.err")).unwrap())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(child)
}

fn written(n: &Node) -> u64 {
    res(n, "r0").map_or(0, |r| {
        r["nbd"]["stats"]["bytes_written"].as_u64().unwrap_or(0)
    })
}

/// Wait until more than `before` bytes were written through a's export (fio is running).
fn fio_progresses(p: &Pair, before: u64, when: &str) -> u64 {
    let mut now = 0;
    wait_until(&format!("fio writing {when}"), WAIT, || {
        now = written(&p.a);
        now > before
    });
    now
}

fn session(r: &Value) -> u64 {
    r["session"].as_u64().unwrap_or(0)
}

/// While fio writes to r0 on the Primary a: SIGHUP on both nodes brings up a new replicated
/// r1 (it connects, syncs, replicates); `adjust` on a with b's address changed from a proxy to
/// b's own address reconnects there (cutting the proxy afterwards disturbs nothing) and a
/// stays Primary throughout; a Primary with no user goes `down` (demoted, the peer told) and
/// comes back `up` as a Secondary that resyncs. Disks identical at the end.
#[test]
fn adjust_adds_a_resource_and_moves_the_peer_while_fio_writes() {
    let mut opts = PairOpts::new(24 * MIB);
    opts.proxied = true;
    let p = Pair::start(opts);
    p.force_primary_and_sync("a");
    let mut fio = fio_writer(&p);
    let w0 = fio_progresses(&p, 0, "before the adjust");

    // A new replicated resource on both nodes, by SIGHUP.
    let r1 = pair_r1(p.d(), &p.opts.secret, free_port(), free_port());
    for n in [&p.a, &p.b] {
        append(&n.config, &r1);
        hup(n);
    }
    let both_r1 = |pred: &dyn Fn(&Value, &Value) -> bool| {
        wait_until("r1 on both nodes", WAIT, || {
            match (res(&p.a, "r1"), res(&p.b, "r1")) {
                (Some(a), Some(b)) => pred(&a, &b),
                _ => false,
            }
        })
    };
    both_r1(&|a, b| a["connection"] == "Connected" && b["connection"] == "Connected");
    p.cli_ok("a", &["primary", "r1", "--force"]);
    let data = Pair::random(11, 256 * 1024);
    nbd_write(&p.d().join("a/r1.nbd"), MIB, &data);
    both_r1(&|a, b| in_sync(a) && in_sync(b));
    assert_files_identical(
        &p.d().join("a/r1.img"),
        &p.d().join("b/r1.img"),
        8 * MIB,
        "r1 after its initial sync and a write",
    );

    // a reaches b through proxies[0]; point a's config at b itself.
    let before = res(&p.a, "r0").unwrap();
    assert_eq!(before["role"], "Primary");
    let via_proxy = p.proxies[0].addr.to_string();
    let text = std::fs::read_to_string(&p.a.config).unwrap();
    assert!(text.contains(&via_proxy));
    std::fs::write(&p.a.config, text.replace(&via_proxy, &p.addr_b.to_string())).unwrap();
    let out = p.cli_ok("a", &["adjust", "r0"]);
    assert!(
        out.contains(&format!(
            "applied: resource r0: the peer's address is now {}",
            p.addr_b
        )),
        "{out}"
    );
    let mut moved = 0;
    p.wait(
        "r0 connected again after the address change",
        WAIT,
        |a, _| {
            a.is_some_and(|a| {
                moved = session(a);
                a["connection"] == "Connected" && session(a) > session(&before)
            })
        },
    );
    let w1 = fio_progresses(&p, w0, "after the address change");
    // The proxy no longer carries the link: cutting it changes nothing.
    p.proxies[0].cut();
    fio_progresses(&p, w1, "after the old address was cut");
    assert!(
        fio.0.try_wait().unwrap().is_none(),
        "fio stopped early: {}",
        std::fs::read_to_string(p.d().join("fio.err")).unwrap_or_default()
    );
    common::fio_stop_without_errors(fio, &p.d().join("fio.out"));
    let (a, _) = p.wait_in_sync("a", "after fio");
    assert_eq!(
        session(&a),
        moved,
        "the link through b's own address stayed up"
    );
    p.assert_disks_identical("r0 after the adjusts under fio");

    // A Primary with no user goes down: demoted, the peer sees it leave; up again: Secondary,
    // back in sync.
    let out = p.cli_ok("a", &["down", "r1"]);
    assert_eq!(out, "r1: down\n");
    assert!(res(&p.a, "r1").is_none());
    wait_until("b's r1 loses its peer", WAIT, || {
        res(&p.b, "r1").is_some_and(|b| b["connection"] != "Connected")
    });
    p.cli_ok("a", &["up", "r1"]);
    both_r1(&|a, b| {
        a["role"] == "Secondary"
            && b["role"] == "Secondary"
            && a["connection"] == "Connected"
            && a["disk"] == "UpToDate"
            && b["disk"] == "UpToDate"
    });
}
