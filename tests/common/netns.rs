//! Two sites in network namespaces of a test's own (scripts/testbed.sh with its overrides), so
//! tests that cut, flap and reset the link run beside each other and beside tests/repl_netns.rs
//! (which owns drl-a / drl-b): namespaces `drl-st-TAG-a` / `-b`, veth ends `drl-st-TAG-va` /
//! `-vb`, addresses 198.18.N.1 / .2. Faults: a silent cut (nft drops everything, the link looks
//! up), its removal, and a reset of the replication connections (`ss -K`: both ends see their
//! socket aborted at once, like a middlebox that dropped the flow).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use super::pair::PairOpts;

pub struct TwoSites {
    pub ns: [String; 2],
    pub addr: [IpAddr; 2],
    ifs: [String; 2],
}

impl TwoSites {
    /// Some(sites) once both namespaces are up and reach each other; None (after saying why)
    /// when the machine cannot run them (not root). `tag` is at most 3 characters (interface
    /// names have 15), `net` picks 198.18.`net`.0/24.
    pub fn up(test: &str, tag: &str, net: u8) -> Option<TwoSites> {
        Self::up_with(test, tag, net, &["up"])
    }

    /// [`TwoSites::up`] with the link shaped by tbf at `rate` (e.g. "100mbit") on both ends.
    pub fn up_at(test: &str, tag: &str, net: u8, rate: &str) -> Option<TwoSites> {
        Self::up_with(test, tag, net, &["up", rate])
    }

    fn up_with(test: &str, tag: &str, net: u8, up: &[&str]) -> Option<TwoSites> {
        assert!(tag.len() <= 3, "tag {tag:?}: at most 3 characters");
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED {test}: needs root to create network namespaces");
            return None;
        }
        let s = TwoSites {
            ns: [format!("drl-st-{tag}-a"), format!("drl-st-{tag}-b")],
            ifs: [format!("drl-st-{tag}-va"), format!("drl-st-{tag}-vb")],
            addr: [
                format!("198.18.{net}.1").parse().unwrap(),
                format!("198.18.{net}.2").parse().unwrap(),
            ],
        };
        s.sh(up);
        Some(s)
    }

    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed.sh")
    }

    /// scripts/testbed.sh with this pair's names; panics with its output on failure.
    pub fn sh(&self, args: &[&str]) {
        let out = Command::new(Self::script())
            .env("DRL_NS_A", &self.ns[0])
            .env("DRL_NS_B", &self.ns[1])
            .env("DRL_IF_A", &self.ifs[0])
            .env("DRL_IF_B", &self.ifs[1])
            .env("DRL_ADDR_A", self.addr[0].to_string())
            .env("DRL_ADDR_B", self.addr[1].to_string())
            .args(args)
            .output()
            .expect("run scripts/testbed.sh");
        assert!(
            out.status.success(),
            "testbed.sh {args:?} ({}): {}{}",
            self.ns[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drop every packet between the sites (nft in both namespaces, the table of
    /// `testbed.sh cut --silent`); the link stays up. Straight to nft, without the script's
    /// start-up, so a flap keeps its period on a loaded host.
    pub fn cut(&self) {
        for ns in &self.ns {
            nft(
                ns,
                "table inet drlcut {\n chain in { type filter hook input priority -10; policy drop; iifname \"lo\" accept; }\n chain out { type filter hook output priority -10; policy drop; oifname \"lo\" accept; }\n}\n",
            );
        }
    }

    /// Undo [`Self::cut`].
    pub fn heal(&self) {
        for ns in &self.ns {
            nft(ns, "delete table inet drlcut\n");
        }
    }

    /// Abort the replication connections (port 7789) in both namespaces at once.
    pub fn reset(&self) {
        for ns in &self.ns {
            // ss -K exits 0 also when nothing matched; its "Invalid argument" for a listening
            // socket that matches the filter is harmless.
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "ss",
                    "-K",
                    "-t",
                    "state",
                    "established",
                ])
                .args(["(", "sport", "=", ":7789", "or", "dport", "=", ":7789", ")"])
                .output()
                .expect("run ss -K");
        }
    }

    /// Pair options for daemons in these namespaces.
    pub fn opts(&self, size: u64) -> PairOpts {
        let mut o = PairOpts::new(size);
        o.sites = Some((self.ns.clone(), self.addr));
        o
    }
}

/// Run an nft script inside `ns`; panics with nft's message on failure.
fn nft(ns: &str, script: &str) {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for TwoSites {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.sh(&["down"]));
    }
}
