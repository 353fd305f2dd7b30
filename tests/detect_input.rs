//! Bad input to detection (issue 11): probes from unknown senders, forged, replayed and
//! malformed probes are refused and counted, the daemon keeps answering real ones; an etcd that
//! does not answer at start gives a clear error and no promotion. One daemon on loopback; its
//! peer and etcd are deliberately absent.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::detect::{detect_status, unix_ms};
use common::pair::{free_port, WAIT};
use common::{wait_until, Node};
use drl::detect::probe::{Codec, Datagram, Kind, PROBE_BYTES};

const KEY: &str = "probe key of the test";

fn config(d: &std::path::Path, probe_port: u16, etcd_port: u16) -> String {
    let d2 = d.display();
    format!(
        r#"[[node]]
name = "site-a"
control-socket = "{d2}/site-a.sock"

[[node]]
name = "site-b"
control-socket = "{d2}/site-b.sock"

[[resource]]
name = "r0"
size = "4MiB"
secret = "resource secret"

[resource.on.site-a]
address = "127.0.0.1:{pa}"
disk = "{d2}/a/r0.img"
meta = "{d2}/a/r0.meta"
nbd = "{d2}/a/r0.nbd"

[resource.on.site-b]
address = "127.0.0.1:{pb}"
disk = "{d2}/b/r0.img"
meta = "{d2}/b/r0.meta"

[detect]
cluster = "input"
etcd = ["http://127.0.0.1:{etcd_port}"]
probe-key = "{KEY}"
lease-ttl = "2s"

[detect.on.site-a]
listen = "127.0.0.1:{probe_port}"

[detect.on.site-b]
listen = "127.0.0.1:{pp}"
"#,
        pa = free_port(),
        pb = free_port(),
        pp = free_port(),
    )
}

fn probe(codec: &Codec, name: &str, seq: u64) -> [u8; PROBE_BYTES] {
    codec.encode(&Datagram {
        kind: Kind::Probe,
        seq,
        unix_ms: unix_ms(),
        name: name.into(),
    })
}

#[test]
fn bad_probes_are_refused_and_counted_and_an_unreachable_etcd_blocks_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    let probe_port = free_port();
    // Nothing listens on this port: etcd is unreachable.
    let etcd_port = free_port();
    let a = Node::start(
        d,
        &config(d, probe_port, etcd_port),
        "site-a",
        &d.join("site-a.sock"),
    );
    wait_until("detect status answers", WAIT, || {
        detect_status(&a).is_some()
    });

    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = format!("127.0.0.1:{probe_port}");
    let good = Codec::new(KEY.as_bytes(), "input");
    let seq = unix_ms() * 1000;
    // An authentic probe from a known node is answered.
    s.send_to(&probe(&good, "site-b", seq), &to).unwrap();
    let mut buf = [0u8; 200];
    let (n, _) = s
        .recv_from(&mut buf)
        .expect("an answer to an authentic probe");
    let ans = good.decode(&buf[..n]).expect("the answer is authentic");
    assert_eq!(
        (ans.kind, ans.seq, ans.name.as_str()),
        (Kind::Answer, seq, "site-a")
    );
    // The same probe again (a replay), one from an unknown node, one forged with another key,
    // one with a flipped bit, and garbage.
    s.send_to(&probe(&good, "site-b", seq), &to).unwrap();
    s.send_to(&probe(&good, "mallory", seq + 1), &to).unwrap();
    let forged = Codec::new(b"not the key", "input");
    s.send_to(&probe(&forged, "site-b", seq + 2), &to).unwrap();
    let mut flipped = probe(&good, "site-b", seq + 3);
    flipped[20] ^= 0x40;
    s.send_to(&flipped, &to).unwrap();
    s.send_to(b"GET / HTTP/1.0\r\n\r\n", &to).unwrap();
    let counted = |v: &serde_json::Value| {
        let r = &v["probes_refused"];
        r["replayed"] == 1 && r["unknown_sender"] == 1 && r["forged"] == 2 && r["malformed"] == 1
    };
    let t0 = std::time::Instant::now();
    loop {
        let v = detect_status(&a).unwrap();
        if counted(&v) {
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "bad probes not counted as expected: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // None of them was answered; a fresh authentic probe still is.
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    // They were all counted above, so any answer to them would be queued by now.
    assert!(s.recv_from(&mut buf).is_err(), "a bad probe was answered");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&probe(&good, "site-b", seq + 10), &to).unwrap();
    let (n, _) = s.recv_from(&mut buf).expect("still answering");
    assert_eq!(good.decode(&buf[..n]).unwrap().seq, seq + 10);
    let v = detect_status(&a).unwrap();
    assert_eq!(v["probes_answered"], 2, "{v}");

    // etcd is unreachable: promotion is refused with a clear error, the daemon runs on.
    let out = a.cli(&["primary", "r0", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "promoted without a lease");
    assert!(
        err.contains("lease") && err.contains("etcd"),
        "the refusal names the lease and etcd: {err}"
    );
    let r = common::pair::res(&a, "r0").unwrap();
    assert_eq!(r["role"], "Secondary");
    let v = detect_status(&a).unwrap();
    assert_eq!(v["etcd"][0]["reachable"], false, "{v}");
    assert!(
        a.log_text().contains("etcd"),
        "the log says etcd is unreachable:\n{}",
        a.log_text()
    );
    let text = a.cli(&["detect", "status"]);
    assert!(text.status.success());
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("site-b") && t.contains("ETCD ENDPOINT"), "{t}");
}
