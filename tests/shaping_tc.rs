//! `drl shaping tc DEV --apply` on a veth pair inside a network namespace: the htb classes
//! exist, and packets marked with a class's DSCP land in that class. Needs root (network
//! namespaces); without it the test prints why and passes without checking.

mod common;

use std::process::Command;

use common::run;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Sent packets of tc class `id` in `tc -s class show` output.
fn sent_packets(show: &str, id: &str) -> u64 {
    let mut lines = show.lines();
    while let Some(l) = lines.next() {
        if l.starts_with(&format!("class htb {id} ")) {
            for l in lines.by_ref() {
                if let Some(rest) = l.trim().strip_prefix("Sent ") {
                    // "Sent 1234 bytes 5 pkt (dropped 0, ...)"
                    let w: Vec<&str> = rest.split_whitespace().collect();
                    return w.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
                }
            }
        }
    }
    panic!("class {id} not in:\n{show}");
}

#[test]
fn tc_apply_installs_htb_classes_and_dscp_filters() {
    if !is_root() {
        println!("SKIPPED: tc_apply_installs_htb_classes_and_dscp_filters needs root (network namespaces)");
        return;
    }
    let ns = Netns(format!("drl-tc-{}", std::process::id()));
    run(Command::new("ip").args(["netns", "add", &ns.0]));
    let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &ns.0]).args(args));
    ip(&["link", "add", "tca", "type", "veth", "peer", "name", "tcb"]);
    ip(&["addr", "add", "198.19.7.1/24", "dev", "tca"]);
    ip(&["addr", "add", "198.19.7.2/24", "dev", "tcb"]);
    ip(&["link", "set", "tca", "up"]);
    ip(&["link", "set", "tcb", "up"]);
    ip(&["link", "set", "lo", "up"]);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("drl.toml");
    std::fs::write(
        &cfg,
        format!("[[node]]\nname = \"n1\"\ncontrol-socket = \"{}/none.sock\"\n\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.class.image]\nceil = \"20Mbit\"\n", dir.path().display()),
    )
    .unwrap();
    let drl = |extra: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, common::drl_bin(), "--config"])
            .arg(&cfg)
            .args([
                "--node",
                "n1",
                "shaping",
                "tc",
                "tca",
                "--link-rate",
                "1Gbit",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // Printing first: the script, and nothing installed.
    let out = drl(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("tc class replace dev tca parent 1:10 classid 1:11"),
        "{script}"
    );
    // Then install.
    let out = drl(&["--apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let show = run(Command::new("tc").args(["-n", &ns.0, "-s", "class", "show", "dev", "tca"]));
    for id in ["1:1", "1:10", "1:11", "1:12", "1:13", "1:14", "1:20"] {
        assert!(
            show.contains(&format!("class htb {id} ")),
            "class {id} missing:\n{show}"
        );
    }
    assert!(
        show.contains("class htb 1:14 parent 1:10 prio 3 rate 10Mbit ceil 20Mbit"),
        "{show}"
    );
    let filters = run(Command::new("tc").args(["-n", &ns.0, "filter", "show", "dev", "tca"]));
    assert!(filters.contains("flowid 1:11"), "{filters}");

    // Marked packets out of tca to a neighbour with a static entry (no ARP, which is unmarked).
    ip(&[
        "neigh",
        "replace",
        "198.19.7.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "tca",
        "nud",
        "permanent",
    ]);
    let ping = |tos: &str| {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                "tca",
                "-Q",
                tos,
                "198.19.7.9",
            ])
            .output();
    };
    ping("0x88");
    ping("0x20");
    let show = run(Command::new("tc").args(["-n", &ns.0, "-s", "class", "show", "dev", "tca"]));
    let (repl, image) = (sent_packets(&show, "1:11"), sent_packets(&show, "1:14"));
    assert!(
        repl >= 3,
        "DSCP AF41 (TOS 0x88) packets did not land in 1:11 (replication): {repl}\n{show}"
    );
    assert!(
        image >= 3,
        "DSCP CS1 (TOS 0x20) packets did not land in 1:14 (image): {image}\n{show}"
    );
    println!(
        "tc classes: replication {repl} pkts, image {image} pkts, default {} pkts",
        sent_packets(&show, "1:20")
    );
}
