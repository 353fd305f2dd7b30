//! Auto-promote (DRBD 9's default, issue 13): an UpToDate Secondary whose peer is connected
//! and Secondary becomes Primary at an NBD client's first write and Secondary again when the
//! last writer leaves; read-only opens never promote; never while disconnected.

mod common;

use std::process::Command;

use common::nbd_client::NbdClient;
use common::pair::{res, Pair, PairOpts, MIB, WAIT};
use common::{need, run, wait_until};
use serde_json::Value;

fn role(p: &Pair, n: &str) -> String {
    res(p.node(n), "r0")
        .map(|r| r["role"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

fn nbdinfo_read_only(uri: &str) -> bool {
    need("nbdinfo");
    let out = run(Command::new("nbdinfo").args(["--json", uri]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["exports"][0]["is_read_only"] == true
}

/// Both Secondary, connected, in sync (a was Primary for the initial sync).
fn two_secondaries() -> Pair {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.force_primary_and_sync("a");
    p.cli_ok("a", &["secondary", "r0"]);
    p.wait("both Secondary, connected, UpToDate", WAIT, |a, b| {
        let ok = |r: Option<&Value>| {
            r.is_some_and(|r| {
                r["role"] == "Secondary"
                    && r["peer_role"] == "Secondary"
                    && r["connection"] == "Connected"
                    && r["disk"] == "UpToDate"
            })
        };
        ok(a) && ok(b)
    });
    p
}

#[test]
fn first_write_promotes_last_writer_leaving_demotes() {
    let p = two_secondaries();
    // A read-only open never promotes; the export is advertised writable (a write would
    // promote).
    assert!(!nbdinfo_read_only(&p.uri("a")));
    let mut reader = NbdClient::connect(&p.nbd("a")).unwrap();
    assert!(!reader.read_only());
    assert_eq!(reader.read(0, 4096).unwrap(), vec![0u8; 4096]);
    assert_eq!(
        role(&p, "a"),
        "Secondary",
        "a read promoted a\n{}",
        p.report()
    );

    // The first write promotes; it is replicated.
    let mut w1 = NbdClient::connect(&p.nbd("a")).unwrap();
    let data = Pair::random(3, 256 * 1024);
    w1.write_all_at(MIB, &data).unwrap();
    w1.flush().unwrap();
    assert_eq!(role(&p, "a"), "Primary", "{}", p.report());
    p.wait("b sees a Primary", WAIT, |_, b| {
        b.is_some_and(|b| b["peer_role"] == "Primary")
    });
    // b's export is read-only now (its peer is Primary) and a write there fails.
    let mut on_b = NbdClient::connect(&p.nbd("b")).unwrap();
    assert!(on_b.read_only(), "b advertised writable while a is Primary");
    assert!(on_b.write(0, &[1u8; 4096]).is_err());
    on_b.disconnect();
    assert_eq!(role(&p, "b"), "Secondary");

    // Two writers: a stays Primary until the last one leaves; the reader does not count.
    let mut w2 = NbdClient::connect(&p.nbd("a")).unwrap();
    w2.write(0, &[7u8; 4096]).unwrap();
    w1.disconnect();
    reader.disconnect();
    wait_until("w1 and the reader gone", WAIT, || {
        res(&p.a, "r0").is_some_and(|r| r["nbd"]["connections"] == 1)
    });
    assert_eq!(
        role(&p, "a"),
        "Primary",
        "demoted with a writer left\n{}",
        p.report()
    );
    w2.disconnect();
    p.wait("a auto-demoted after the last writer left", WAIT, |a, b| {
        a.is_some_and(|a| a["role"] == "Secondary")
            && b.is_some_and(|b| b["peer_role"] == "Secondary")
    });
    p.wait("in sync", WAIT, |a, b| {
        a.is_some_and(common::pair::in_sync) && b.is_some_and(common::pair::in_sync)
    });
    p.assert_disks_identical("after auto-promote and auto-demote");

    // Now b's clients may write: b promotes the same way.
    let mut wb = NbdClient::connect(&p.nbd("b")).unwrap();
    wb.write(8192, &[9u8; 4096]).unwrap();
    assert_eq!(role(&p, "b"), "Primary");
    wb.disconnect();
    p.wait("b auto-demoted", WAIT, |_, b| {
        b.is_some_and(|b| b["role"] == "Secondary")
    });
}

/// Disconnected (StandAlone, and also with the peer's daemon gone): the export is read-only,
/// a write fails, the node stays Secondary.
#[test]
fn no_auto_promote_while_disconnected() {
    let mut p = two_secondaries();
    // Opened while a promotion was allowed (advertised writable), written after the peer
    // went: refused at the write.
    let mut early = NbdClient::connect(&p.nbd("a")).unwrap();
    assert!(!early.read_only());
    p.cli_ok("a", &["disconnect", "r0"]);
    assert!(
        early.write(0, &[5u8; 4096]).is_err(),
        "written while StandAlone"
    );
    early.disconnect();
    assert_eq!(role(&p, "a"), "Secondary");
    assert!(
        p.a.log_text()
            .contains("auto-promote refused: the peer is not connected"),
        "the refusal is logged with its reason:\n{}",
        p.a.log_text()
    );
    assert!(
        nbdinfo_read_only(&p.uri("a")),
        "advertised writable while StandAlone"
    );
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    assert!(c.read_only());
    assert!(c.write(0, &[5u8; 4096]).is_err());
    c.disconnect();
    assert_eq!(role(&p, "a"), "Secondary");

    // The peer's daemon stopped: the same.
    p.cli_ok("a", &["connect", "r0"]);
    p.wait("connected again", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] == "Connected" && a["peer_role"] == "Secondary")
    });
    assert_eq!(p.b.stop(), 0);
    p.wait("a lost its peer", WAIT, |a, _| {
        a.is_some_and(|a| a["connection"] != "Connected")
    });
    assert!(nbdinfo_read_only(&p.uri("a")));
    let mut c = NbdClient::connect(&p.nbd("a")).unwrap();
    assert!(c.write(0, &[5u8; 4096]).is_err());
    c.disconnect();
    assert_eq!(role(&p, "a"), "Secondary");
}
