//! TLS on the replication link between two real daemons (issue 14). Certificates are made at
//! run time (rcgen). The link goes through a recording proxy: what it forwards is what a
//! capture on the interface would see. Refusals are read back from `status` (`peer_refused`).

mod common;

use common::certs::Ca;
use common::nbd_client::nbd_write;
use common::pair::*;
use std::path::Path;

/// A CA and both nodes' certificates in `dir`; the opts that turn TLS on for r0.
fn tls_opts(dir: &Path, ca: &Ca) -> PairOpts {
    let ca_path = ca.write(&dir.join("ca.crt"));
    let mut opts = PairOpts::new(16 * MIB);
    opts.proxied = true;
    for (i, n) in ["a", "b"].into_iter().enumerate() {
        let f = ca.issue(dir, n, n, false);
        opts.extra_node_keys[i] = format!(
            "tls-cert = \"{}\"\ntls-key = \"{}\"\n",
            f.cert.display(),
            f.key.display()
        );
    }
    opts.extra_resource_keys = "tls = true\n".into();
    opts.extra_tables = format!("[tls]\nca = \"{}\"\n", ca_path.display());
    opts
}

/// Random (incompressible) data written on a, replicated; whether a 64-byte piece of it
/// crossed the proxy in the clear.
fn replicate_and_look(p: &Pair, seed: u64) -> bool {
    for x in &p.proxies {
        x.start_recording();
    }
    let data = random_bytes(seed, MIB);
    nbd_write(&p.nbd("a"), 4 * MIB, &data);
    p.wait_in_sync("a", "after 1 MiB of random data");
    p.assert_disks_identical("after the write");
    let wire: Vec<u8> = p.proxies.iter().flat_map(|x| x.take_recording()).collect();
    assert!(
        wire.len() as u64 > MIB,
        "only {} bytes crossed the proxy",
        wire.len()
    );
    let needle = &data[300_000..300_064];
    wire.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_tls_pair_replicates_and_the_data_never_crosses_in_the_clear() {
    // Control: without TLS the same data is on the wire as written (so the search works).
    let mut plain = PairOpts::new(16 * MIB);
    plain.proxied = true;
    let p = Pair::start(plain);
    p.force_primary_and_sync("a");
    assert!(
        replicate_and_look(&p, 7),
        "cleartext pair: the data should be visible on the wire"
    );
    drop(p);

    let certs = tempfile::Builder::new()
        .prefix("drl-ops-tls-certs")
        .tempdir()
        .unwrap();
    let p = Pair::start(tls_opts(certs.path(), &Ca::new("drl test CA")));
    p.force_primary_and_sync("a");
    assert!(
        !replicate_and_look(&p, 8),
        "TLS pair: written data found on the wire in the clear"
    );
    for n in ["a", "b"] {
        let r = res(p.node(n), "r0").unwrap();
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["peer_refused"], serde_json::json!({}), "{r}");
    }
    assert!(p.node("a").log_text().contains("connected: sync decision"));
}

#[test]
fn a_cleartext_peer_and_a_foreign_ca_peer_are_refused_and_counted() {
    let certs = tempfile::Builder::new()
        .prefix("drl-ops-tls-certs")
        .tempdir()
        .unwrap();
    let ca = Ca::new("drl test CA");
    let mut opts = tls_opts(certs.path(), &ca);
    let metrics_b = free_port();
    opts.extra_node_keys[1] += &format!("metrics-listen = \"127.0.0.1:{metrics_b}\"\n");
    let mut p = Pair::start(opts);
    p.force_primary_and_sync("a");

    // a (the initiator) comes back without TLS: b refuses it as cleartext.
    p.node_mut("a").stop();
    let cfg = std::fs::read_to_string(&p.node("a").config).unwrap();
    let clear = cfg.replace("tls = true\n", "");
    p.restart_with_config("a", &clear, "cleartext");
    wait_res(p.node("b"), "b counts a cleartext peer", WAIT, |r| {
        r.is_some_and(|r| refused(r, "cleartext") >= 1)
    });
    assert!(
        p.node("b")
            .log_text()
            .contains("the peer speaks cleartext, but this resource has tls = true"),
        "{}",
        log_tail(p.node("b"), 20)
    );
    let a = res(p.node("a"), "r0").unwrap();
    assert_ne!(a["connection"], "Connected", "{a}");
    // ... and in b's metrics.
    let m = common::run(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{metrics_b}/metrics")),
    );
    let line = m
        .lines()
        .find(|l| {
            l.starts_with(
                "drl_replication_peer_refused_total{resource=\"r0\",reason=\"cleartext\"}",
            )
        })
        .unwrap_or_else(|| panic!("no cleartext refusal in b's metrics:\n{m}"));
    assert!(
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0,
        "{line}"
    );

    // a comes back with TLS but a certificate (and CA) of its own: it refuses b's certificate
    // (unknown CA), and b hears a's alert.
    p.node_mut("a").stop();
    let other = Ca::new("another CA");
    let oca = other.write(&certs.path().join("other-ca.crt"));
    let of = other.issue(certs.path(), "a-other", "a", false);
    let foreign = cfg
        .replace(
            &certs.path().join("ca.crt").display().to_string(),
            &oca.display().to_string(),
        )
        .replace(
            &certs.path().join("a.crt").display().to_string(),
            &of.cert.display().to_string(),
        )
        .replace(
            &certs.path().join("a.key").display().to_string(),
            &of.key.display().to_string(),
        );
    assert_ne!(foreign, cfg);
    p.restart_with_config("a", &foreign, "foreign-ca");
    wait_res(
        p.node("a"),
        "a counts b's certificate as from an unknown CA",
        WAIT,
        |r| r.is_some_and(|r| refused(r, "unknown_ca") >= 1),
    );
    wait_res(p.node("b"), "b counts a's refusal", WAIT, |r| {
        r.is_some_and(|r| refused(r, "refused_by_peer") >= 1)
    });
    assert!(p
        .node("a")
        .log_text()
        .contains("certificate not signed by our [tls] ca"));
    assert_ne!(res(p.node("b"), "r0").unwrap()["connection"], "Connected");

    // The right certificates again: connected and in sync.
    p.node_mut("a").stop();
    p.restart_with_config("a", &cfg, "tls-again");
    p.wait(
        "connected again with the right certificates",
        WAIT,
        |a, b| {
            a.is_some_and(|a| a["connection"] == "Connected")
                && b.is_some_and(|b| b["connection"] == "Connected")
        },
    );
}

#[test]
fn check_config_and_start_refuse_an_unusable_own_certificate() {
    let certs = tempfile::Builder::new()
        .prefix("drl-ops-tls-cc")
        .tempdir()
        .unwrap();
    let ca = Ca::new("drl test CA");
    let d = certs.path();
    let opts = tls_opts(d, &ca);
    let cfg = pair_config(
        d,
        &opts,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "s",
    );
    let path = d.join("drl.toml");
    std::fs::write(&path, &cfg).unwrap();
    // check-config refuses a disk whose directory is missing (drl creates files, not
    // directories); the pair harness makes them at start, this test starts no pair.
    for n in ["a", "b"] {
        std::fs::create_dir_all(d.join(n)).unwrap();
    }
    let cc = |node: &str| {
        std::process::Command::new(common::drl_bin())
            .args(["check-config", "--node", node, "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = cc("a");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tls: "));
    // a's certificate expires: check-config says so, and the daemon refuses to start.
    ca.issue(d, "a", "a", true);
    let bad = cc("a");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("a.crt") && err.contains("validity period"),
        "{err}"
    );
    let start = std::process::Command::new(common::drl_bin())
        .args(["daemon", "--node", "a", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!start.status.success());
    assert!(String::from_utf8_lossy(&start.stderr).contains("validity period"));
}

/// The sha256 of the certificate a node uses (`tls_cert_sha256`) and of the one its peer
/// presented at the last handshake (`peer_cert_sha256`), from status.
fn certs_in_use(p: &Pair, n: &str) -> (Option<String>, Option<String>, u64) {
    let r = res(p.node(n), "r0").unwrap();
    let s = |k: &str| r[k].as_str().map(str::to_owned);
    (
        s("tls_cert_sha256"),
        s("peer_cert_sha256"),
        r["session"].as_u64().unwrap_or(0),
    )
}

/// Reconnect a's link (`disconnect` + `connect`) and wait until both sides are Connected in
/// a session newer than `after`.
fn reconnect(p: &Pair, after: u64) {
    p.cli_ok("a", &["disconnect", "r0"]);
    p.cli_ok("a", &["connect", "r0"]);
    p.wait("reconnected after the rotation", WAIT, |a, b| {
        let up = |r: Option<&serde_json::Value>| {
            r.is_some_and(|r| {
                r["connection"] == "Connected" && r["session"].as_u64().unwrap_or(0) > after
            })
        };
        up(a) && up(b)
    });
}

#[test]
fn a_certificate_rotated_through_adjust_is_used_by_the_next_connection() {
    let certs = tempfile::Builder::new()
        .prefix("drl-ops-tls-rot")
        .tempdir()
        .unwrap();
    let ca = Ca::new("drl test CA");
    let p = Pair::start(tls_opts(certs.path(), &ca));
    p.force_primary_and_sync("a");
    let (old, _, _) = certs_in_use(&p, "a");
    let old = old.expect("a reports its certificate");
    wait_res(p.node("b"), "b saw a's certificate", WAIT, |r| {
        r.is_some_and(|r| r["peer_cert_sha256"] == old.as_str())
    });

    // Rotation: a new key and certificate (same CA, new serial) replace a's files in place.
    // Nothing changes until adjust.
    ca.issue(certs.path(), "a", "a", false);
    assert_eq!(certs_in_use(&p, "a").0.as_deref(), Some(old.as_str()));
    let out = p.cli_ok("a", &["adjust"]);
    assert!(out.contains("tls: certificates read again"), "{out}");
    let (new, _, session) = certs_in_use(&p, "a");
    let new = new.unwrap();
    assert_ne!(new, old, "adjust did not load the new certificate");
    // The live session keeps its tunnel; the next connection presents the new certificate.
    reconnect(&p, session);
    wait_res(p.node("b"), "b saw a's new certificate", WAIT, |r| {
        r.is_some_and(|r| r["peer_cert_sha256"] == new.as_str())
    });
    nbd_write(&p.nbd("a"), 2 * MIB, &random_bytes(21, MIB));
    p.wait_in_sync("a", "after the rotation");
    p.assert_disks_identical("after the rotation");

    // A broken file: adjust says so, the certificate in use stays, connections still work.
    std::fs::write(certs.path().join("a.crt"), "not a certificate\n").unwrap();
    let out = p.cli_ok("a", &["adjust"]);
    assert!(
        out.contains("tls: not reloaded, the previous certificates stay in use")
            && out.contains("a.crt"),
        "{out}"
    );
    let (kept, _, session) = certs_in_use(&p, "a");
    assert_eq!(kept.as_deref(), Some(new.as_str()));
    reconnect(&p, session);
    assert_eq!(certs_in_use(&p, "b").1.as_deref(), Some(new.as_str()));
    nbd_write(&p.nbd("a"), 6 * MIB, &random_bytes(22, MIB));
    p.wait_in_sync("a", "after the refused reload");
}

/// A refusal counter of a status (absent until the first refusal of that kind: 0, so a wait
/// predicate reads "not yet" instead of panicking on a status taken before the handshake).
fn refused(r: &serde_json::Value, why: &str) -> u64 {
    r["peer_refused"][why].as_u64().unwrap_or(0)
}
