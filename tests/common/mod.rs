//! Shared helpers for the integration tests: start real `drl daemon` processes with a config in
//! a temp dir, talk to them with the real CLI and real NBD clients, stop or kill them.
#![allow(dead_code)]

pub mod certs;
pub mod detect;
pub mod dr;
pub mod group_writer;
pub mod nbd_client;
pub mod netns;
pub mod pair;
pub mod proxy;
pub mod writer;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn drl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drl")
}

/// Fail clearly when a client the test needs is missing (scripts/test.sh installs them all).
pub fn need(cmd: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{cmd} is not installed: run scripts/test.sh, which installs the NBD clients (qemu-utils, libnbd-bin, fio)");
}

/// The environment variable `name` parsed, or `default()` when unset or unparsable (a test's
/// seed or run count, to replay or lengthen it).
pub fn env_or<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(default)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One single-node config with one resource named `r0`.
pub fn solo_config(dir: &Path, size: &str) -> String {
    format!(
        r#"[[node]]
name = "n1"
control-socket = "{d}/n1.sock"

[[resource]]
name = "r0"
size = "{size}"

[resource.on.n1]
disk = "{d}/r0.img"
meta = "{d}/r0.meta"
nbd = "{d}/r0.nbd"
"#,
        d = dir.display()
    )
}

pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Command words put before the daemon (e.g. `ip netns exec drl-a`); empty by default.
    pub prefix: Vec<String>,
}

impl Node {
    /// Write `config` into `dir` and start the daemon as `name`; waits until `wait_socket`
    /// (usually the NBD socket) exists.
    pub fn start(dir: &Path, config: &str, name: &str, wait_socket: &Path) -> Node {
        Node::start_with_prefix(dir, config, name, wait_socket, &[])
    }

    /// Like [`Node::start`], with command words before the daemon (`ip netns exec NS`).
    pub fn start_with_prefix(
        dir: &Path,
        config: &str,
        name: &str,
        wait_socket: &Path,
        prefix: &[&str],
    ) -> Node {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let mut n = Node {
            dir: dir.to_owned(),
            config: cfg,
            name: name.to_owned(),
            child: None,
            log: dir.join(format!("{name}.log")),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        };
        n.spawn(wait_socket);
        n
    }

    pub fn spawn(&mut self, wait_socket: &Path) {
        let _ = std::fs::remove_file(wait_socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            None => Command::new(drl_bin()),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(drl_bin());
                c
            }
        };
        let child = cmd
            .args(["daemon", "--config"])
            .arg(&self.config)
            .args(["--node", &self.name])
            .env("DRL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn drl daemon");
        self.child = Some(child);
        let t0 = Instant::now();
        while !wait_socket.exists() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited with {st} before {} appeared; log:\n{}",
                    wait_socket.display(),
                    self.log_text()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "daemon did not create {} in 20 s; log:\n{}",
                wait_socket.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run `drl ARGS` against this node's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(drl_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "drl status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "daemon did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run a command, assert success, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io commands against an NBD URI (raw format).
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    let out = run(&mut c);
    // qemu-io reports a failed -P check in its output, not always in its exit code.
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io: {out}"
    );
    out
}

/// A child process that is killed and reaped when the guard goes, also when a test panics (a
/// leaked fio keeps spinning against a socket that is gone).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stop a fio started with its output in `out` (SIGINT: it prints its summary) and assert
/// every `err=` of the summary is 0: a demotion or a lost export would have failed writes
/// (EPERM, EIO).
pub fn fio_stop_without_errors(mut fio: KillOnDrop, out: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fio.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = fio.0.wait().unwrap();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let errs: Vec<&str> = text
        .split("err=")
        .skip(1)
        .map(|t| {
            t.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("")
        })
        .collect();
    assert!(
        !errs.is_empty() && errs.iter().all(|e| *e == "0"),
        "fio reported errors ({st}): {text}"
    );
}
