//! Two real daemons replicating one resource `r0` between nodes `a` and `b`, the way an admin
//! would run them: one config (README's format), `drl daemon --config F --node N`, and the
//! documented CLI (`primary`, `secondary`, `connect`, `disconnect`, `status --json`, `events`).
//!
//! Everything here uses the documented contract only: the status JSON fields of issue 3 with
//! DRBD's state names, the config keys of README.md, the NBD export for data.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::proxy::Proxy;
use super::Node;

pub const MIB: u64 = 1 << 20;
/// How long any single state transition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A TCP port on 127.0.0.1 that was free when asked and that no earlier call in this process
/// returned.
///
/// Not from the kernel's ephemeral range (`bind` to port 0 hands out ports from it): there a
/// port released by one call can be handed out again by the next, or be taken meanwhile as the
/// source port of some outgoing connection. Both happened: a test got the same port for node
/// b and for the proxy in front of node a, and a's connection came back to a ("peer claims our
/// own node name"). Ports come from a counter below the ephemeral range instead, started at a
/// per-process offset so that test binaries running side by side rarely meet, and each is
/// checked with a bind (TCP and UDP: some tests listen on UDP) before it is handed out.
pub fn free_port() -> u16 {
    use std::net::UdpSocket;
    use std::sync::atomic::AtomicU32;
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000, below Linux's default 32768..60999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}..{}", FIRST + SPAN);
}

#[derive(Clone)]
pub struct PairOpts {
    pub size: u64,
    pub secret: String,
    /// Route both directions of the link through a [`Proxy`] each (`Pair::proxies`).
    pub proxied: bool,
    /// Run the daemons in the testbed namespaces drl-a / drl-b (198.18.0.1 / 198.18.0.2).
    pub netns: bool,
    /// Run the daemons in these namespaces with these addresses instead ([`super::netns`]).
    pub sites: Option<([String; 2], [std::net::IpAddr; 2])>,
    /// Extra lines for the `[[resource]]` table (e.g. policies).
    pub extra_resource_keys: String,
    /// Extra lines for the `[[node]]` tables of a and b (e.g. `metrics-listen`, `tls-cert`).
    pub extra_node_keys: [String; 2],
    /// Extra top-level tables at the end of the file (e.g. `[tls]`).
    pub extra_tables: String,
    /// Sizes of volumes 1, 2, .. : non-empty makes `r0` a consistency group (issue 15) whose
    /// volume 0 (`size`) keeps the one-volume paths and volume V lives in `r0-V.*`.
    pub group: Vec<u64>,
}

impl PairOpts {
    pub fn new(size: u64) -> PairOpts {
        PairOpts {
            size,
            secret: "correct horse battery staple".into(),
            proxied: false,
            netns: false,
            sites: None,
            extra_resource_keys: String::new(),
            extra_node_keys: Default::default(),
            extra_tables: String::new(),
            group: Vec::new(),
        }
    }
}

/// The config text. `addr_a` / `addr_b` are what this file says the nodes' replication
/// addresses are (for a proxied pair, each node's file names the proxy as its peer's address).
pub fn pair_config(
    d: &Path,
    opts: &PairOpts,
    addr_a: SocketAddr,
    addr_b: SocketAddr,
    secret: &str,
) -> String {
    let mut s = String::new();
    for (i, n) in ["a", "b"].into_iter().enumerate() {
        s += &format!(
            "[[node]]\nname = \"{n}\"\ncontrol-socket = \"{d}/{n}.sock\"\n{extra}\n",
            d = d.display(),
            extra = opts.extra_node_keys[i]
        );
    }
    if opts.group.is_empty() {
        s += &format!(
            "[[resource]]\nname = \"r0\"\nsize = \"{size}\"\nsecret = \"{secret}\"\n{extra}\n",
            size = opts.size,
            extra = opts.extra_resource_keys
        );
    } else {
        s += &format!(
            "[[resource]]\nname = \"r0\"\nsecret = \"{secret}\"\n{extra}\n",
            extra = opts.extra_resource_keys
        );
        for (v, size) in std::iter::once(opts.size)
            .chain(opts.group.iter().copied())
            .enumerate()
        {
            s += &format!("[[resource.volume]]\nnumber = {v}\nsize = \"{size}\"\n");
        }
    }
    for (n, addr) in [("a", addr_a), ("b", addr_b)] {
        s += &format!("[resource.on.{n}]\naddress = \"{addr}\"\n");
        if opts.group.is_empty() {
            s += &format!(
                "disk = \"{d}/{n}/r0.img\"\nmeta = \"{d}/{n}/r0.meta\"\nnbd = \"{d}/{n}/r0.nbd\"\n\n",
                d = d.display()
            );
            continue;
        }
        for v in 0..=opts.group.len() {
            let f = |ext: &str| volume_file(d, n, v, ext).display().to_string();
            s += &format!(
                "volume.{v} = {{ disk = \"{}\", meta = \"{}\", nbd = \"{}\" }}\n",
                f("img"),
                f("meta"),
                f("nbd")
            );
        }
        s += "\n";
    }
    s += &opts.extra_tables;
    s
}

/// Volume `v`'s file of node `n` with extension `ext`: `r0.EXT` for volume 0, `r0-V.EXT` for
/// the other volumes of a group.
pub fn volume_file(d: &Path, n: &str, v: usize, ext: &str) -> PathBuf {
    match v {
        0 => d.join(n).join(format!("r0.{ext}")),
        v => d.join(n).join(format!("r0-{v}.{ext}")),
    }
}

/// How a test cuts the replication link of a proxied pair whose Primary is `a`.
#[derive(Clone, Copy, Debug)]
pub enum Cut {
    /// kill -9 of a.
    KillPrimary,
    /// `drl disconnect r0` on a (it stays StandAlone).
    Disconnect,
    /// Both proxies close their connections and refuse new ones.
    DropTcp,
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub opts: PairOpts,
    /// Where each daemon listens.
    pub addr_a: SocketAddr,
    pub addr_b: SocketAddr,
    /// For a proxied pair: `[to_b, to_a]`: a connects to b through `proxies[0]`, b to a
    /// through `proxies[1]`.
    pub proxies: Vec<Proxy>,
}

impl Pair {
    /// Start both daemons of a fresh pair and wait until both report `r0`.
    pub fn start(opts: PairOpts) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, opts)
    }

    pub fn start_in(dir: tempfile::TempDir, opts: PairOpts) -> Pair {
        let d = dir.path().to_owned();
        for n in ["a", "b"] {
            std::fs::create_dir_all(d.join(n)).unwrap();
        }
        let sites = opts.sites.clone().or_else(|| {
            opts.netns.then(|| {
                (
                    ["drl-a".to_owned(), "drl-b".to_owned()],
                    ["198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()],
                )
            })
        });
        let (addr_a, addr_b) = if let Some((_, ip)) = &sites {
            (SocketAddr::new(ip[0], 7789), SocketAddr::new(ip[1], 7789))
        } else {
            (
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            )
        };
        let mut proxies = Vec::new();
        let (cfg_a, cfg_b) = if opts.proxied {
            let to_b = Proxy::start(addr_b);
            let to_a = Proxy::start(addr_a);
            let ca = pair_config(&d, &opts, addr_a, to_b.addr, &opts.secret);
            let cb = pair_config(&d, &opts, to_a.addr, addr_b, &opts.secret);
            proxies.push(to_b);
            proxies.push(to_a);
            (ca, cb)
        } else {
            let c = pair_config(&d, &opts, addr_a, addr_b, &opts.secret);
            (c.clone(), c)
        };
        let (pa, pb): (Vec<&str>, Vec<&str>) = if let Some((ns, _)) = &sites {
            (
                vec!["ip", "netns", "exec", &ns[0]],
                vec!["ip", "netns", "exec", &ns[1]],
            )
        } else {
            (vec![], vec![])
        };
        let a = Node::start_with_prefix(&d, &cfg_a, "a", &d.join("a.sock"), &pa);
        let b = Node::start_with_prefix(&d, &cfg_b, "b", &d.join("b.sock"), &pb);
        let p = Pair {
            dir,
            a,
            b,
            opts,
            addr_a,
            addr_b,
            proxies,
        };
        p.wait("both daemons report r0", WAIT, |a, b| {
            a.is_some() && b.is_some()
        });
        p
    }

    pub fn d(&self) -> &Path {
        self.dir.path()
    }
    pub fn disk(&self, n: &str) -> PathBuf {
        self.d().join(n).join("r0.img")
    }
    pub fn nbd(&self, n: &str) -> PathBuf {
        self.d().join(n).join("r0.nbd")
    }
    /// Cut the link as `cut` says; no new link forms afterwards by itself.
    /// Cut the link `after` from now while a writer runs, stop the writer (`stop`, then
    /// join), and wait until b reports the link gone. Returns the writes `acked` at the cut
    /// and in all. The delay is the random moment of the fault, not a synchronisation.
    pub fn cut_under_writer(
        &mut self,
        cut: Cut,
        after: Duration,
        acked: &AtomicU64,
        stop: &AtomicBool,
        writer: std::thread::JoinHandle<()>,
    ) -> (u64, u64) {
        std::thread::sleep(after);
        let at_cut = acked.load(Ordering::SeqCst);
        self.cut_link(cut);
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let total = acked.load(Ordering::SeqCst);
        self.wait("b sees the link gone", WAIT, |_, b| {
            b.is_some_and(|b| b["connection"] != "Connected")
        });
        (at_cut, total)
    }

    pub fn cut_link(&mut self, cut: Cut) {
        match cut {
            Cut::KillPrimary => self.a.kill9(),
            Cut::Disconnect => {
                self.cli_ok("a", &["disconnect", "r0"]);
            }
            Cut::DropTcp => {
                for x in &self.proxies {
                    x.cut();
                }
            }
        }
    }

    /// Volume `v`'s disk file on node `n` (a group's; volume 0 is [`Pair::disk`]).
    pub fn disk_of(&self, n: &str, v: usize) -> PathBuf {
        volume_file(self.d(), n, v, "img")
    }
    /// Volumes 0 and 1 of a group on node `n`, as bytes.
    pub fn volumes(&self, n: &str) -> [Vec<u8>; 2] {
        [0, 1].map(|v| std::fs::read(self.disk_of(n, v)).unwrap())
    }

    /// Each volume of a group (of these `sizes`) is identical on a and b.
    pub fn assert_volumes_identical(&self, sizes: &[u64], context: &str) {
        for (v, size) in sizes.iter().enumerate() {
            assert_files_identical(
                &self.disk_of("a", v),
                &self.disk_of("b", v),
                *size,
                &format!("volume {v}: {context}\n{}", self.report()),
            );
        }
    }

    /// Volume `v`'s NBD socket on node `n`.
    pub fn nbd_of(&self, n: &str, v: usize) -> PathBuf {
        volume_file(self.d(), n, v, "nbd")
    }
    pub fn uri(&self, n: &str) -> String {
        format!("nbd+unix:///?socket={}", self.nbd(n).display())
    }
    pub fn node(&self, n: &str) -> &Node {
        if n == "a" {
            &self.a
        } else {
            &self.b
        }
    }
    pub fn node_mut(&mut self, n: &str) -> &mut Node {
        if n == "a" {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Restart a node's daemon (after `kill9` or `stop`) with its current config file.
    pub fn restart(&mut self, n: &str) {
        let sock = self.d().join(format!("{n}.sock"));
        self.node_mut(n).spawn(&sock);
        let node = self.node(n);
        wait_res(node, &format!("{n} reports r0 after restart"), WAIT, |r| {
            r.is_some()
        });
    }

    /// Restart a node with a different config text (written next to the normal one).
    pub fn restart_with_config(&mut self, n: &str, config: &str, tag: &str) {
        let path = self.d().join(format!("{n}-{tag}.toml"));
        std::fs::write(&path, config).unwrap();
        self.node_mut(n).config = path;
        self.restart(n);
    }

    /// Status of r0 on both nodes, then a check; on timeout, panic with both statuses and the
    /// tails of both logs.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(Option<&Value>, Option<&Value>) -> bool,
    ) -> (Value, Value) {
        let t0 = Instant::now();
        loop {
            let ra = res(&self.a, "r0");
            let rb = res(&self.b, "r0");
            if pred(ra.as_ref(), rb.as_ref()) {
                return (ra.unwrap_or(Value::Null), rb.unwrap_or(Value::Null));
            }
            if t0.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the pair is connected, in sync and idle with `primary` as Primary.
    pub fn wait_in_sync(&self, primary: &str, what: &str) -> (Value, Value) {
        self.wait(&format!("{what}: Connected/Established, both UpToDate, nothing out of sync, queue empty, {primary} Primary"), WAIT, |a, b| {
            let (Some(a), Some(b)) = (a, b) else { return false };
            let (p, s) = if primary == "a" { (a, b) } else { (b, a) };
            in_sync(p) && in_sync(s) && p["role"] == "Primary" && s["role"] == "Secondary"
        })
    }

    /// A readable dump for failure messages: both statuses and the last log lines.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for n in [&self.a, &self.b] {
            let st = res(n, "r0")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(no status: daemon down or r0 missing)".into());
            s += &format!(
                "--- node {} status r0: {st}\n--- node {} log (last 40 lines):\n{}\n",
                n.name,
                n.name,
                log_tail(n, 40)
            );
        }
        s
    }

    /// Run `drl ARGS` on node `n`, assert exit 0, return stdout.
    pub fn cli_ok(&self, n: &str, args: &[&str]) -> String {
        let out = self.node(n).cli(args);
        assert!(
            out.status.success(),
            "drl {} on {n} failed ({}): stdout: {} stderr: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.report()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `drl primary r0 --force` on `n`, then wait for the initial sync to finish.
    /// Waits for the pair to be Connected first (promoting during the handshake is a race
    /// of its own, tested separately).
    pub fn force_primary_and_sync(&self, n: &str) {
        self.wait(
            "both Connected before the forced promotion",
            WAIT,
            |a, b| {
                a.is_some_and(|a| a["connection"] == "Connected")
                    && b.is_some_and(|b| b["connection"] == "Connected")
            },
        );
        self.cli_ok(n, &["primary", "r0", "--force"]);
        self.wait_in_sync(n, "initial sync after `drl primary r0 --force`");
    }

    /// The contract of a restart (after `kill9` or `stop`): a replicated resource comes up
    /// Secondary whatever it was (DRBD; `daemon::resource` writes the role at attach), and not
    /// StandAlone (`drl disconnect` is not persisted: it connects again). Returns `n`'s status.
    pub fn assert_came_back_secondary(&self, n: &str) -> Value {
        let r = res(self.node(n), "r0").expect("r0 reported after the restart");
        assert_eq!(
            r["role"],
            "Secondary",
            "{n} must come back Secondary after a restart\n{}",
            self.report()
        );
        assert_ne!(
            r["connection"],
            "StandAlone",
            "{n} must come back connecting, not StandAlone, after a restart\n{}",
            self.report()
        );
        r
    }

    /// After a restart of the Primary `n`: it came back Secondary (see
    /// [`Pair::assert_came_back_secondary`]); once `drl primary` may accept it (connected to
    /// the peer, not SyncTarget, its disk UpToDate: the command's own rules), promote it, once.
    pub fn promote_again(&self, n: &str) {
        self.assert_came_back_secondary(n);
        self.wait(
            &format!("{n} promotable: Connected, not SyncTarget, UpToDate"),
            WAIT,
            |a, b| {
                let r = if n == "a" { a } else { b };
                r.is_some_and(|r| {
                    r["connection"] == "Connected"
                        && r["replication"] != "SyncTarget"
                        && r["disk"] == "UpToDate"
                        && r["peer_role"] == "Secondary"
                })
            },
        );
        self.cli_ok(n, &["primary", "r0"]);
    }

    pub fn assert_disks_identical(&self, context: &str) {
        assert_files_identical(
            &self.disk("a"),
            &self.disk("b"),
            self.opts.size,
            &format!("{context}\n{}", self.report()),
        );
    }

    /// Random bytes (incompressible, so byte counters mean what they say) from a seed.
    pub fn random(seed: u64, len: u64) -> Vec<u8> {
        random_bytes(seed, len)
    }
}

pub fn random_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v[..]);
    v
}

/// Connected, Established, both disks UpToDate, nothing out of sync, nothing queued, no lag.
pub fn in_sync(r: &Value) -> bool {
    r["connection"] == "Connected"
        && r["replication"] == "Established"
        && r["disk"] == "UpToDate"
        && r["peer_disk"] == "UpToDate"
        && r["out_of_sync_bytes"].as_u64() == Some(0)
        && r["send_queue_bytes"].as_u64() == Some(0)
        && (r["lag_ms"].is_null() || r["lag_ms"].as_u64() == Some(0))
}

/// Connected, the resync over (Established), the Secondary (b) UpToDate: writes may still be in
/// flight, so nothing is said about out-of-sync bytes here. A predicate for [`Pair::wait`].
pub fn resynced(a: Option<&Value>, b: Option<&Value>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    a["connection"] == "Connected"
        && b["connection"] == "Connected"
        && a["replication"] == "Established"
        && b["replication"] == "Established"
        && b["disk"] == "UpToDate"
}

/// `r0` (or `name`) from `drl status --json` on `node`; None when the daemon does not answer.
pub fn res(node: &Node, name: &str) -> Option<Value> {
    node.child.as_ref()?;
    let out = node.cli(&["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    if let Some(list) = v["resources"].as_array() {
        return list.iter().find(|r| r["name"] == name).cloned();
    }
    if v["name"] == name {
        return Some(v);
    }
    None
}

pub fn wait_res(
    node: &Node,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(Option<&Value>) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let r = res(node, "r0");
        if pred(r.as_ref()) {
            return r.unwrap_or(Value::Null);
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what} on {}; last status: {r:?}\nlog:\n{}", node.name, log_tail(node, 60));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter from a status object (0 when the daemon did not report it: the assertion that
/// uses it then fails with the whole object shown).
pub fn num(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no numeric {key:?}: {r}"))
}

pub fn log_tail(node: &Node, lines: usize) -> String {
    let t = strip_ansi(&node.log_text());
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The text without ANSI colour sequences (ESC [ ... letter).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Compare two disk files block by block; on a difference, panic with the first differing
/// offset and how many 4 KiB blocks differ.
pub fn assert_files_identical(a: &Path, b: &Path, size: u64, context: &str) {
    let mut fa = std::fs::File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = std::fs::File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    assert!(
        la >= size && lb >= size,
        "disk files shorter than the volume ({size}): {} is {la}, {} is {lb}",
        a.display(),
        b.display()
    );
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut first: Option<u64> = None;
    let mut differing_blocks = 0u64;
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            for (i, (x, y)) in ba[..n].chunks(4096).zip(bb[..n].chunks(4096)).enumerate() {
                if x != y {
                    differing_blocks += 1;
                    first.get_or_insert(off + i as u64 * 4096);
                }
            }
        }
        off += n as u64;
    }
    if let Some(f) = first {
        panic!(
            "disks differ: {} vs {}: {differing_blocks} blocks of 4 KiB differ ({} KiB), first at offset {f} ({} MiB)\n{context}",
            a.display(),
            b.display(),
            differing_blocks * 4,
            f / MIB
        );
    }
}

/// Read `len` bytes at `off` straight from a disk file.
pub fn file_bytes(path: &Path, off: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, off).unwrap();
    v
}

/// A cheap fingerprint of a whole file (to check it did not change).
pub fn file_digest(path: &Path) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&std::fs::read(path).unwrap());
    h.finalize()
}

/// `drl events --json` running in the background on a node; lines are collected.
pub struct EventsTap {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl EventsTap {
    pub fn start(node: &Node) -> EventsTap {
        Self::spawn(node, &["events", "--json"])
    }

    /// `drl ARGS` (an events command) on `node`, collecting its lines; returns once the
    /// command says on stderr that the daemon confirmed the subscription, so every change
    /// the test makes afterwards is seen.
    pub fn spawn(node: &Node, args: &[&str]) -> EventsTap {
        let mut child = Command::new(super::drl_bin())
            .arg("--config")
            .arg(&node.config)
            .args(["--node", &node.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drl events");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => l2.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line == "drl events: subscribed" {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            // The command ended without (or after) confirming: what it said, for the panic.
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(said)) => panic!("drl {args:?} on {} ended unsubscribed: {said}", node.name),
            Err(_) => panic!(
                "drl {args:?} on {}: no subscription within {WAIT:?}",
                node.name
            ),
        }
        EventsTap { child, lines }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(s))
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for EventsTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the daemon process is still running.
pub fn alive(node: &mut Node) -> bool {
    match node.child.as_mut() {
        None => false,
        Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
    }
}
