//! The disaster drill, short: scripts/drill.sh --short runs a whole disaster between two
//! network namespaces with this build's binaries and checks, itself, that B's volumes are a
//! prefix of the writer's acknowledged writes, that the loss is within the lag A reported at
//! the kill, and that the fail back and switchover lose nothing and leave A and B identical.
//! This test runs it and holds its report to the same contract.

use std::path::Path;
use std::process::Command;

#[test]
fn short_drill_loses_at_most_the_lag_and_fails_back_without_loss() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the drill needs root (network namespaces); run the suite as root");
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let st = Command::new(top.join("scripts/drill.sh"))
        .args([
            "--short",
            "--rate",
            "100mbit",
            "--volume-size",
            "16MiB",
            "--volumes",
            "2",
        ])
        .arg("--out")
        .arg(out.path())
        .args(["--seed", "7", "--writer-rate", "800"])
        .env("DRL_BIN", env!("CARGO_BIN_EXE_drl"))
        .status()
        .expect("run scripts/drill.sh");
    assert!(st.success(), "the drill failed: {st}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("check-b.json")).unwrap())
            .unwrap();
    assert_eq!(v["prefix"], true, "{v}");
    assert!(
        v["writes_acked"].as_u64().unwrap() > 0,
        "the workload wrote nothing: {v}"
    );
    let md = std::fs::read_to_string(out.path().join("timeline.md")).unwrap();
    assert!(md.contains("| switchover RPO | 0 (checked) |"), "{md}");
}
