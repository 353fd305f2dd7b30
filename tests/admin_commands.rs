//! DRBD's admin commands (issue 13): `wait-connect` and `wait-sync` (drbdadm's), and
//! `events2` (drbdsetup's format), each on a real pair of daemons.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::drl_bin;
use common::pair::{res, Pair, PairOpts, MIB};

/// `drl ARGS` on node `n` of `p`, with its exit code and both outputs.
fn drl(p: &Pair, n: &str, args: &[&str]) -> (i32, String, String) {
    let out = p.node(n).cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wait_connect_and_wait_sync_return_when_the_state_is_reached() {
    let p = Pair::start(PairOpts::new(32 * MIB));
    let (code, out, err) = drl(&p, "a", &["wait-connect", "r0", "--timeout", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Connected"), "{out}");
    p.cli_ok("a", &["primary", "r0", "--force"]);
    let (code, out, err) = drl(&p, "b", &["wait-sync", "r0", "--timeout", "120"]);
    assert_eq!(code, 0, "{out}{err}");
    // The contract: when wait-sync returns, the resync is over on this node.
    let b = res(p.node("b"), "r0").unwrap();
    assert_eq!(b["connection"], "Connected");
    assert_eq!(b["replication"], "Established");
    assert_eq!(b["disk"], "UpToDate");
    assert_eq!(b["peer_disk"], "UpToDate");
}

#[test]
fn wait_sync_fails_at_once_on_a_standalone_resource_and_on_timeout() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    p.cli_ok("a", &["disconnect", "r0"]);
    let t0 = Instant::now();
    let (code, _, err) = drl(&p, "a", &["wait-sync", "r0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("StandAlone") && err.contains("drl connect"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // b is Connecting (its peer went StandAlone): a timeout ends the wait with exit 1.
    common::wait_until("b sees the disconnect", Duration::from_secs(30), || {
        res(p.node("b"), "r0").is_some_and(|r| r["connection"] != "Connected")
    });
    let (code, _, err) = drl(&p, "b", &["wait-connect", "r0", "--timeout", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn wait_connect_exits_3_when_the_daemon_goes_away() {
    let mut p = Pair::start(PairOpts::new(8 * MIB));
    p.cli_ok("b", &["disconnect", "r0"]);
    // a keeps trying to connect; wait there, then stop a's daemon.
    common::wait_until("a Connecting", Duration::from_secs(30), || {
        res(p.node("a"), "r0").is_some_and(|r| r["connection"] != "Connected")
    });
    let child = Command::new(drl_bin())
        .arg("--config")
        .arg(&p.node("a").config)
        .args(["--node", "a", "wait-connect", "r0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wherever the stop meets it (connecting, subscribing, waiting), the exit is 3.
    assert_eq!(p.node_mut("a").stop(), 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("went away") || err.contains("cannot reach"),
        "{err}"
    );
}

/// One events2 line, parsed by the rules of drbdsetup(8), events2: an optional timestamp
/// (`--timestamps`), the kind of event (`exists`, `create`, `destroy`, `change`, `call`,
/// `response`, `rename`), the object (`resource`, `device`, `connection`, `peer-device`,
/// `path`, `helper`, or `-` once the current state was dumped completely), then the words that
/// identify the object and describe its state, each `key:value`.
#[derive(Debug)]
struct Line {
    timestamp: Option<String>,
    kind: String,
    object: String,
    keys: Vec<(String, String)>,
}

impl Line {
    fn get(&self, k: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_events2(line: &str, timestamps: bool) -> Result<Line, String> {
    const KINDS: [&str; 7] = [
        "exists", "create", "destroy", "change", "call", "response", "rename",
    ];
    const OBJECTS: [&str; 7] = [
        "resource",
        "device",
        "connection",
        "peer-device",
        "path",
        "helper",
        "-",
    ];
    let mut words = line.split(' ');
    let timestamp = if timestamps {
        let t = words.next().ok_or("empty line")?;
        // ISO 8601 with a date, a T, a time and a zone offset.
        let ok = t.len() >= 20
            && t.as_bytes()[4] == b'-'
            && t.as_bytes()[10] == b'T'
            && (t.ends_with('Z') || t[t.len() - 6..].starts_with(['+', '-']));
        if !ok {
            return Err(format!("bad timestamp {t:?}"));
        }
        Some(t.to_owned())
    } else {
        None
    };
    let kind = words.next().ok_or("no kind")?.to_owned();
    if !KINDS.contains(&kind.as_str()) {
        return Err(format!("unknown kind {kind:?}"));
    }
    let object = words.next().ok_or("no object")?.to_owned();
    if !OBJECTS.contains(&object.as_str()) {
        return Err(format!("unknown object {object:?}"));
    }
    let mut keys = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once(':')
            .ok_or_else(|| format!("word {w:?} is not key:value"))?;
        if k.is_empty()
            || v.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_')
        {
            return Err(format!("bad key:value {w:?}"));
        }
        keys.push((k.to_owned(), v.to_owned()));
    }
    if object == "-" && !keys.is_empty() {
        return Err("`-` carries no keys".into());
    }
    if object != "-" && keys.first().map(|(k, _)| k.as_str()) != Some("name") {
        return Err(format!("{object} does not start with name: {line}"));
    }
    Ok(Line {
        timestamp,
        kind,
        object,
        keys,
    })
}

#[test]
fn events2_speaks_drbdsetups_format_from_the_dump_to_the_daemon_going_away() {
    let mut p = Pair::start(PairOpts::new(32 * MIB));
    p.cli_ok("a", &["wait-connect", "r0", "--timeout", "60"]);
    let mut child = Command::new(drl_bin())
        .arg("--config")
        .arg(&p.node("a").config)
        .args(["--node", "a", "events2", "--timestamps"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (out, lines) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    // The dump ends with `exists -`; only then is the subscription certainly live.
    common::wait_until("the initial dump", Duration::from_secs(20), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.ends_with(" exists -"))
    });
    p.cli_ok("a", &["primary", "r0", "--force"]);
    p.cli_ok("b", &["wait-sync", "r0", "--timeout", "120"]);
    common::wait_until("the Established change", Duration::from_secs(20), || {
        lines.lock().unwrap().iter().any(|l| {
            l.contains("change peer-device")
                && l.contains("replication:Established")
                && l.contains("peer-disk:UpToDate")
        })
    });
    assert_eq!(p.node_mut("a").stop(), 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("went away"), "{err}");

    let lines = lines.lock().unwrap().clone();
    let parsed: Vec<Line> = lines
        .iter()
        .map(|l| parse_events2(l, true).unwrap_or_else(|e| panic!("{e}: {l:?}\n{lines:#?}")))
        .collect();
    assert!(parsed.iter().all(|l| l.timestamp.is_some()));
    // The dump: every object of r0 exists, then `exists -`, then only changes.
    let dash = parsed.iter().position(|l| l.object == "-").unwrap();
    assert!(
        parsed[..dash].iter().all(|l| l.kind == "exists"),
        "{lines:#?}"
    );
    for obj in ["resource", "connection", "device", "peer-device"] {
        assert!(
            parsed[..dash]
                .iter()
                .any(|l| l.object == obj && l.get("name") == Some("r0")),
            "no exists {obj}: {lines:#?}"
        );
    }
    let conn = parsed[..dash]
        .iter()
        .find(|l| l.object == "connection")
        .unwrap();
    assert_eq!(conn.get("conn-name"), Some("b"));
    assert_eq!(conn.get("connection"), Some("Connected"));
    let after = &parsed[dash + 1..];
    assert!(after.iter().all(|l| l.kind == "change"), "{lines:#?}");
    assert!(
        after
            .iter()
            .any(|l| l.object == "resource" && l.get("role") == Some("Primary")),
        "{lines:#?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.object == "device" && l.get("disk") == Some("UpToDate")),
        "{lines:#?}"
    );
    assert!(
        after.iter().any(|l| l.object == "peer-device"
            && l.get("conn-name") == Some("b")
            && l.get("replication") == Some("SyncSource")),
        "{lines:#?}"
    );
}

#[test]
fn the_events2_parser_follows_the_man_page() {
    assert!(parse_events2("exists -", false).is_ok());
    assert!(parse_events2("change resource name:r0 role:Primary", false).is_ok());
    assert!(parse_events2("chnage resource name:r0", false).is_err());
    assert!(parse_events2("change volume name:r0", false).is_err());
    assert!(parse_events2("change resource role:Primary", false).is_err());
    assert!(parse_events2("change resource name:r0 role=Primary", false).is_err());
    assert!(parse_events2(
        "2026-12-05T20:16:05.123000+00:00 change device name:r0 volume:0 disk:UpToDate",
        true
    )
    .is_ok());
    assert!(parse_events2("12:00 change device name:r0", true).is_err());
}

/// The table says why a resource is not connected (here: the peer's secret differs), in
/// words, below the table; LAG is `-` without a peer.
#[test]
fn status_says_why_a_resource_is_not_connected() {
    let mut p = Pair::start(PairOpts::new(8 * MIB));
    let cfg = std::fs::read_to_string(&p.node("b").config).unwrap();
    let other = cfg.replace("correct horse battery staple", "another secret entirely");
    assert_ne!(cfg, other);
    p.node_mut("b").kill9();
    p.restart_with_config("b", &other, "badsecret");
    common::wait_until(
        "a reports a connection error",
        Duration::from_secs(60),
        || {
            res(p.node("a"), "r0")
                .is_some_and(|r| r["last_error"].is_string() && r["connection"] != "Connected")
        },
    );
    let (code, table, _) = drl(&p, "a", &["status"]);
    assert_eq!(code, 0);
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.trim_end().ends_with('-'),
        "LAG must be - while not connected: {table}"
    );
    assert!(table.contains("r0: not connected: "), "{table}");
    for l in table.lines() {
        assert!(l.len() <= 100, "{table}");
    }
}

/// A refusal prints once, in the daemon's words: no repeated command, no JSON-RPC code; the
/// code stays in `--json` and the exit status.
#[test]
fn daemon_errors_print_once_without_the_rpc_code() {
    let p = Pair::start(PairOpts::new(8 * MIB));
    let (code, _, err) = drl(&p, "a", &["primary", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(err, "drl: no such resource: nope\n");
    let (code, out, _) = drl(&p, "a", &["status", "nope", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], -32001);
}

/// `drl import-drbd` round trip: DRBD's documented examples become configs that drl's own
/// loader accepts for every host, with the addresses and disks of the .res file.
#[test]
fn import_drbd_output_is_a_config_drl_accepts() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/drbd-compat/tests/data");
    let d = tempfile::tempdir().unwrap();
    for (file, hosts, addr) in [
        ("drbd-conf-man-r0.res", ["alice", "bob"], "10.1.1.31:7789"),
        ("drbd9-conf-man-r0.res", ["alice", "bob"], "10.1.1.31:7000"),
        (
            "long-distance-pull-ahead.res",
            ["site-a", "site-b"],
            "198.18.0.1:7789",
        ),
        (
            "production-iscsi.res",
            ["iscsi1.example.org", "iscsi2.example.org"],
            "10.100.0.1:7788",
        ),
    ] {
        let out = Command::new(drl_bin())
            .args(["import-drbd", &format!("{data}/{file}"), "--size", "64M"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("not carried over"));
        let toml = String::from_utf8(out.stdout).unwrap();
        let path = d.path().join(format!("{file}.toml"));
        std::fs::write(&path, &toml).unwrap();
        for h in hosts {
            let c = drl::config::load(&path, h)
                .unwrap_or_else(|e| panic!("{file} as {h}: {e}\n{toml}"));
            assert_eq!(c.resources.len(), 1);
            assert_eq!(c.resources[0].size_bytes, 64 << 20);
            assert!(c.resources[0].peer.is_some(), "{file}: replicated");
        }
        let c = drl::config::load(&path, hosts[0]).unwrap();
        assert_eq!(
            c.resources[0]
                .local
                .address
                .map(|a| a.to_string())
                .as_deref(),
            Some(addr)
        );
    }
}

/// `drl adjust` and SIGHUP re-read the config: the shaper changes live, a new resource comes
/// up, changes of a running resource are reported as pending, a broken config is refused and the daemon keeps running (SIGHUP used
/// to kill it without a word).
#[test]
fn adjust_and_sighup_apply_the_shaper_and_report_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let base = common::solo_config(d.path(), "8MiB");
    let with_rate = |rate: &str| format!("{base}\n[shaping]\nlink-rate = \"{rate}\"\n");
    let mut n = common::Node::start(
        d.path(),
        &with_rate("100Mbit"),
        "n1",
        &d.path().join("r0.nbd"),
    );
    let link = |n: &common::Node| {
        let out = n.cli(&["shaping", "show", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["link_bytes_per_s"]
            .as_u64()
    };
    assert_eq!(link(&n), Some(12_500_000));

    // adjust: the shaper applied, a new resource up, a new size grown online.
    let r1 = format!(
        "\n[[resource]]\nname = \"r1\"\nsize = \"4MiB\"\n[resource.on.n1]\ndisk = \"{d}/r1.img\"\nmeta = \"{d}/r1.meta\"\n",
        d = d.path().display()
    );
    let changed = with_rate("50Mbit").replace("size = \"8MiB\"", "size = \"16MiB\"") + &r1;
    std::fs::write(&n.config, &changed).unwrap();
    let out = n.cli(&["adjust"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("applied: shaping"), "{text}");
    assert!(text.contains("applied: resource r1: up"), "{text}");
    assert!(text.contains("resource r0: size changed"), "{text}");
    assert_eq!(link(&n), Some(6_250_000));

    // SIGHUP: the same, from the signal; the daemon lives on.
    std::fs::write(&n.config, with_rate("20Mbit")).unwrap();
    let pid = nix::unistd::Pid::from_raw(n.child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    common::wait_until("the SIGHUP adjust", Duration::from_secs(10), || {
        link(&n) == Some(2_500_000)
    });
    assert!(n.log_text().contains("SIGHUP received"), "{}", n.log_text());

    // A broken config is refused; the daemon keeps its settings.
    std::fs::write(&n.config, "this is not toml [").unwrap();
    let sock = d.path().join("n1.sock");
    let out = Command::new(drl_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("adjust")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("adjust refused"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    common::wait_until("the refused SIGHUP adjust", Duration::from_secs(10), || {
        n.log_text()
            .contains("adjust refused, running on the config it has")
    });
    std::fs::write(&n.config, with_rate("20Mbit")).unwrap();
    assert_eq!(link(&n), Some(2_500_000));
    assert_eq!(n.stop(), 0);
}
