//! The Debian package (issue 14): scripts/build-deb.sh packs the binary the tests just built
//! (`--profile dev --prebuilt`, so no second build), and the .deb installs with dpkg into a
//! fresh root (this machine's own system is left alone), runs `drl --version` and
//! `drl check-config` on the shipped example, verifies its unit and man pages, and removes
//! cleanly; lintian finds no error or warning.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(args))
}

#[test]
fn the_deb_installs_runs_and_removes() {
    for c in ["dpkg", "dpkg-deb", "lintian"] {
        need(c);
    }
    let repo = env!("CARGO_MANIFEST_DIR");
    // The binary the harness built for this test run is the one packed.
    assert!(
        Path::new(drl_bin()).ends_with("target/debug/drl"),
        "{}",
        drl_bin()
    );
    let out = run(Command::new(format!("{repo}/scripts/build-deb.sh")).args([
        "--profile",
        "dev",
        "--prebuilt",
    ]));
    let deb = out
        .lines()
        .last()
        .expect("build-deb.sh prints the .deb path")
        .trim()
        .to_owned();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{out}"
    );

    let listing = run(Command::new("dpkg-deb").args(["-c", &deb]));
    for f in [
        "./usr/bin/drl",
        "./lib/systemd/system/drl.service",
        "./usr/share/man/man1/drl.1.gz",
        "./usr/share/man/man1/drl-status.1.gz",
        "./usr/share/man/man1/drl-snapshot-create.1.gz",
        "./usr/share/bash-completion/completions/drl",
        "./usr/share/zsh/vendor-completions/_drl",
        "./usr/share/fish/vendor_completions.d/drl.fish",
        "./usr/share/doc/drl/examples/drl.toml",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(f)),
            "{f} is not in the package:\n{listing}"
        );
    }

    // Debian's policy checker: no error or warning (overrides name the two accepted ones).
    let lint = Command::new("lintian")
        .args([
            "--tag-display-limit",
            "0",
            "--fail-on",
            "error,warning",
            &deb,
        ])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "lintian:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let root = tempfile::Builder::new()
        .prefix("drl-ops-deb")
        .tempdir()
        .unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/dpkg/updates")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    // libc6 is the host's; the fresh root's database does not know it.
    dpkg(r, &["--force-depends", "-i", &deb]);
    let st = dpkg(r, &["-s", "drl"]);
    assert!(st.contains("Status: install ok installed"), "{st}");

    let bin = r.join("usr/bin/drl");
    let v = run(Command::new(&bin).arg("--version"));
    assert_eq!(v.trim(), format!("drl {}", env!("CARGO_PKG_VERSION")));
    let example = r.join("usr/share/doc/drl/examples/drl.toml");
    for node in ["site-a", "site-b"] {
        let c = run(Command::new(&bin)
            .args(["check-config", "--node", node, "--config"])
            .arg(&example));
        assert!(c.contains(&format!("valid for node {node}")), "{c}");
    }
    // The installed unit verifies with its binary and man pages in place.
    let unit = r.join("lib/systemd/system/drl.service");
    let body = std::fs::read_to_string(&unit).unwrap();
    assert!(body.contains("ExecStart=/usr/bin/drl daemon"), "{body}");
    if Command::new("man").arg("--version").output().is_ok() {
        let page = run(Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(r.join("usr/share/man/man1/drl-status.1.gz")));
        assert!(page.contains("drl-status"), "{page}");
    }

    dpkg(r, &["-r", "drl"]);
    assert!(!bin.exists(), "drl is still there after dpkg -r");
    assert!(!unit.exists());
    let st = Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["-s", "drl"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        !text.contains("install ok installed"),
        "still installed: {text}"
    );
}
