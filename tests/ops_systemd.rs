//! systemd integration without systemd (issue 14): the daemon speaks sd_notify to a datagram
//! socket the test listens on, exactly as systemd's would (`$NOTIFY_SOCKET`, a path or an
//! abstract `@name`): READY=1 only once the control socket answers, WATCHDOG=1 every half
//! `$WATCHDOG_USEC`, STOPPING=1 when SIGTERM starts the drain; the unit file passes
//! `systemd-analyze verify` for what it can check without the package installed.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams received until one contains `want` (panics after `timeout`).
fn recv_until(
    sock: &UnixDatagram,
    want: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> String {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        assert!(
            !left.is_zero(),
            "no {want:?} within {timeout:?}; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(m.clone());
                if m.lines().any(|l| l == want) {
                    return m;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn notify_cycle(notify_socket: &str, sock: &UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("n1.toml");
    std::fs::write(&cfg, solo_config(d, "16MiB")).unwrap();
    let log = std::fs::File::create(d.join("n1.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(drl_bin())
            .args(["daemon", "--node", "n1", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", notify_socket)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut seen = Vec::new();
    let ready = recv_until(sock, "READY=1", Duration::from_secs(30), &mut seen);
    assert!(ready.contains("STATUS=1 resources"), "{ready}");
    // READY means usable: the control socket answers at once, no retry.
    let st = Command::new(drl_bin())
        .args(["--config"])
        .arg(&cfg)
        .args(["--node", "n1", "status", "--json"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "status right after READY=1: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Watchdog pings every 100 ms: two within a few seconds even on a loaded machine.
    recv_until(sock, "WATCHDOG=1", Duration::from_secs(10), &mut seen);
    recv_until(sock, "WATCHDOG=1", Duration::from_secs(10), &mut seen);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    recv_until(sock, "STOPPING=1", Duration::from_secs(10), &mut seen);
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn sd_notify_ready_watchdog_stopping_on_a_path_socket() {
    let dir = tempfile::Builder::new()
        .prefix("drl-ops-notify")
        .tempdir()
        .unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    notify_cycle(path.to_str().unwrap(), &sock);
}

#[test]
fn sd_notify_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("drl-ops-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    notify_cycle(&format!("@{name}"), &sock);
}

#[test]
fn the_unit_file_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is not installed (Debian package systemd): scripts/test.sh installs it");
    }
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/drl.service");
    let out = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Without the package installed /usr/bin/drl and the man pages are missing; nothing else
    // may be wrong (unknown keys, bad values, a bad syscall filter).
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("drl.service"))
        .filter(|l| {
            !l.contains("/usr/bin/drl is not executable") && !l.contains("Command 'man drl")
        })
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{text}");
    let body = std::fs::read_to_string(unit).unwrap();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
    ] {
        assert!(body.contains(want), "unit lacks {want}");
    }
}

/// The journal side of the test below: in a private mount namespace, a datagram socket where
/// journald's is, the daemon started as systemd would (stderr a stream whose device:inode is
/// in $JOURNAL_STREAM, --log-format left at auto); prints what arrives as NAME=value lines
/// (decoding journald's native protocol, binary-safe values included), then stops it.
const JOURNAL_PROBE: &str = r#"
import os, socket, subprocess, sys, time, signal
def fields(b):
    out, i = [], 0
    while i < len(b):
        nl = b.index(b"\n", i)
        line = b[i:nl]
        if b"=" in line:
            out.append(line.decode("utf-8", "replace"))
            i = nl + 1
        else:
            n = int.from_bytes(b[nl + 1:nl + 9], "little")
            out.append(line.decode() + "=" + b[nl + 9:nl + 9 + n].decode("utf-8", "replace"))
            i = nl + 9 + n + 1
    return "\n".join(out)
drl, cfg = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "drl-ops-jrnl", "/run/systemd"], check=True)
os.makedirs("/run/systemd/journal")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
r, w = os.pipe()
st = os.fstat(w)
env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
p = subprocess.Popen([drl, "daemon", "--node", "n1", "--config", cfg], stderr=w, env=env)
os.close(w)
s.settimeout(60)
end = time.time() + 60
while time.time() < end:
    m = fields(s.recv(65536))
    print("DATAGRAM\n" + m, flush=True)
    if "drl daemon ready" in m:
        break
p.send_signal(signal.SIGTERM)
p.wait(60)
err = os.read(r, 65536).decode("utf-8", "replace")
print("STDERR\n" + err, flush=True)
"#;

#[test]
fn under_systemd_the_log_goes_to_the_journal_with_structured_fields() {
    need("unshare");
    need("python3");
    let dir = tempfile::Builder::new()
        .prefix("drl-ops-jrnl")
        .tempdir()
        .unwrap();
    let cfg = dir.path().join("drl.toml");
    std::fs::write(&cfg, solo_config(dir.path(), "4MiB")).unwrap();
    let out = run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "python3",
            "-c",
            JOURNAL_PROBE,
        ])
        .arg(drl_bin())
        .arg(&cfg));
    let (journal, stderr) = out.split_once("STDERR\n").expect("the probe finished");
    let ready = journal
        .split("DATAGRAM\n")
        .find(|d| d.contains("drl daemon ready"))
        .unwrap_or_else(|| panic!("no ready line in the journal:\n{out}"));
    let fields: Vec<&str> = ready.lines().collect();
    for want in [
        "MESSAGE=drl daemon ready",
        "PRIORITY=5",
        "SYSLOG_IDENTIFIER=drl",
        "F_NODE=n1",
        "F_RESOURCES=1",
    ] {
        assert!(
            fields.contains(&want),
            "{want} not in the journal entry:\n{ready}"
        );
    }
    // Nothing went to stderr instead.
    assert!(!stderr.contains("drl daemon ready"), "{stderr}");
}
