//! The three-site detection testbed for tests: `scripts/detect-testbed.sh` with a tag of the
//! test's own (namespaces `drl-det-TAG-{a,b,w,r}`), one real etcd member (Debian's
//! etcd-server) per site, and the two drl daemons of a replicated `r0` in sites a and b with
//! `[detect]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pair::{in_sync, res, WAIT};
use super::{need, wait_until, KillOnDrop, Node};

pub const ADDR_A: &str = "198.19.77.2";
pub const ADDR_B: &str = "198.19.77.18";
pub const ADDR_W: &str = "198.19.77.34";

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/detect-testbed.sh")
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub struct Bed {
    pub tag: String,
    pub dir: tempfile::TempDir,
    etcd: Vec<KillOnDrop>,
}

impl Bed {
    /// Namespaces up, three etcd members running and healthy.
    pub fn up(tag: &str) -> Bed {
        need("etcd");
        need("etcdctl");
        need("nft");
        let bed = Bed {
            tag: tag.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            etcd: Vec::new(),
        };
        bed.sh(&["up"]);
        let mut bed = bed;
        for s in ["a", "b", "w"] {
            let log = std::fs::File::create(bed.dir.path().join(format!("etcd-{s}.log"))).unwrap();
            let child = Command::new(script())
                .env("DRL_DET_TAG", &bed.tag)
                .args(["etcd", s])
                .arg(bed.dir.path().join(format!("etcd-{s}")))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd");
            bed.etcd.push(KillOnDrop(child));
        }
        let eps = format!("http://{ADDR_A}:2379,http://{ADDR_B}:2379,http://{ADDR_W}:2379");
        let t = bed.tag.clone();
        wait_until("the etcd cluster is healthy", WAIT, || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &format!("drl-det-{t}-w"),
                    "etcdctl",
                    "--endpoints",
                    &eps,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        bed
    }

    pub fn d(&self) -> &Path {
        self.dir.path()
    }

    /// Run the testbed script with this bed's tag; panics on failure.
    pub fn sh(&self, args: &[&str]) {
        let out = Command::new(script())
            .env("DRL_DET_TAG", &self.tag)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "detect-testbed.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ns(&self, site: &str) -> String {
        format!("drl-det-{}-{site}", self.tag)
    }

    /// The config of both daemons: r0 replicated site-a <-> site-b, `[detect]` with the three
    /// etcd members, `lease-ttl` of `ttl_s` seconds, `extra` lines for `[detect]`.
    pub fn config(&self, ttl_s: u64, extra: &str) -> String {
        let d = self.d().display();
        let mut s = String::new();
        for n in ["a", "b"] {
            s += &format!(
                "[[node]]\nname = \"site-{n}\"\ncontrol-socket = \"{d}/site-{n}.sock\"\n\n"
            );
        }
        s += "[[resource]]\nname = \"r0\"\nsize = \"16MiB\"\nsecret = \"detect test secret\"\n\n";
        for (n, addr) in [("a", ADDR_A), ("b", ADDR_B)] {
            s += &format!(
                "[resource.on.site-{n}]\naddress = \"{addr}:7789\"\ndisk = \"{d}/{n}/r0.img\"\nmeta = \"{d}/{n}/r0.meta\"\nnbd = \"{d}/{n}/r0.nbd\"\n\n"
            );
        }
        s += &format!(
            "[detect]\ncluster = \"t{tag}\"\netcd = [\"http://{ADDR_A}:2379\", \"http://{ADDR_B}:2379\", \"http://{ADDR_W}:2379\"]\nlease-ttl = \"{ttl_s}s\"\n{extra}\n\n[detect.on.site-a]\nlisten = \"{ADDR_A}:7790\"\n\n[detect.on.site-b]\nlisten = \"{ADDR_B}:7790\"\n",
            tag = self.tag.replace('-', "")
        );
        s
    }

    /// Start site-`n`'s daemon (a or b) inside its namespace.
    pub fn start(&self, n: &str, config: &str) -> Node {
        std::fs::create_dir_all(self.d().join(n)).unwrap();
        let ns = self.ns(n);
        let node = Node::start_with_prefix(
            self.d(),
            config,
            &format!("site-{n}"),
            &self.d().join(format!("site-{n}.sock")),
            &["ip", "netns", "exec", &ns],
        );
        wait_until("the daemon reports r0", WAIT, || res(&node, "r0").is_some());
        node
    }

    /// Both daemons, A promoted (takes the lease) and the initial sync done; B has seen A hold
    /// the lease.
    pub fn start_pair_primary_a(&self, ttl_s: u64, extra: &str) -> (Node, Node) {
        self.start_pair_primary_a_with(&self.config(ttl_s, extra))
    }

    /// [`Self::start_pair_primary_a`] with a config of the caller's (e.g. [`Self::config`]
    /// with plans added).
    pub fn start_pair_primary_a_with(&self, cfg: &str) -> (Node, Node) {
        let cfg = cfg.to_owned();
        let a = self.start("a", &cfg);
        let b = self.start("b", &cfg);
        let out = a.cli(&["primary", "r0", "--force"]);
        assert!(
            out.status.success(),
            "drl primary on site-a: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            a.log_text()
        );
        wait_until("r0 in sync with A Primary", WAIT, || {
            res(&a, "r0").is_some_and(|r| in_sync(&r) && r["role"] == "Primary")
                && res(&b, "r0").is_some_and(|r| in_sync(&r))
        });
        wait_until("B sees A holding the lease", WAIT, || {
            scope(&b, "r0").is_some_and(|s| s["holder"] == "site-a")
        });
        (a, b)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.etcd.clear();
        let _ = Command::new(script())
            .env("DRL_DET_TAG", &self.tag)
            .arg("down")
            .output();
    }
}

/// `drl detect status --json` of a node (None while it does not answer).
pub fn detect_status(node: &Node) -> Option<Value> {
    let out = node.cli(&["detect", "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The lease view of `scope` in a node's detect status.
pub fn scope(node: &Node, name: &str) -> Option<Value> {
    detect_status(node)?["scopes"]
        .as_array()?
        .iter()
        .find(|s| s["scope"] == name)
        .cloned()
}

/// The health a node's pingers give `site`.
pub fn site_health(node: &Node, site: &str) -> Option<String> {
    detect_status(node)?["sites"]
        .as_array()?
        .iter()
        .find(|s| s["site"] == site)
        .and_then(|s| s["health"].as_str().map(str::to_owned))
}

/// Events of an `EventsTap` as JSON values.
pub fn events(lines: &str) -> Vec<Value> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The first event matching `f`, as (time_unix_ms, event).
pub fn first_event(evs: &[Value], f: impl Fn(&Value) -> bool) -> Option<(u64, Value)> {
    evs.iter()
        .find(|e| f(e))
        .map(|e| (e["time_unix_ms"].as_u64().unwrap_or(0), e.clone()))
}

pub fn is_lease(e: &Value, action: &str) -> bool {
    e["object"] == "lease" && e["fields"]["action"] == action
}

pub fn is_site(e: &Value, site: &str, health: &str) -> bool {
    e["object"] == "site" && e["name"] == site && e["fields"]["health"] == health
}

/// Wait until `f` holds, polling; on timeout the panic shows every node's detect status,
/// resource status and log tail.
pub fn wait_for(what: &str, nodes: &[&Node], mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > WAIT {
            let mut dump = String::new();
            for n in nodes {
                dump += &format!(
                    "\n--- {}: detect {}\nr0 {}\nlog:\n{}",
                    n.name,
                    detect_status(n).map(|v| v.to_string()).unwrap_or_default(),
                    res(n, "r0").map(|v| v.to_string()).unwrap_or_default(),
                    super::pair::log_tail(n, 40)
                );
            }
            panic!("timed out after {WAIT:?} waiting for {what}{dump}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}
