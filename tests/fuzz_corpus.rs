//! The fuzz corpora and crash regressions, replayed on stable through the very harnesses
//! the fuzzer runs (`drl::fuzzing`, `fuzz/`): every file of `fuzz/corpus/TARGET/` and
//! `fuzz/regressions/TARGET/`. A regression file is an input that once crashed its target
//! (its name says what it found); it must now pass. A short coverage-guided run of every target
//! is `scripts/fuzz.sh --smoke` (nightly + cargo-fuzz; scripts/test.sh runs it).

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("a directory entry").path()).collect();
    v.sort();
    v
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every target has a seed corpus, and no directory names a target that does not exist.
#[test]
fn every_target_has_a_corpus() {
    for (name, _) in drl::fuzzing::TARGETS {
        let n = inputs(&root().join("corpus").join(name)).len();
        assert!(n > 0, "fuzz/corpus/{name}/ holds no seed");
        assert!(
            root()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
    for kind in ["corpus", "regressions"] {
        for dir in inputs(&root().join(kind)) {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                drl::fuzzing::harness(&name).is_some(),
                "fuzz/{kind}/{name}/ names no target"
            );
        }
    }
}

fn replay(kind: &str) {
    let mut count = 0;
    for (name, harness) in drl::fuzzing::TARGETS {
        for file in inputs(&root().join(kind).join(name)) {
            let data = std::fs::read(&file).expect("a corpus file");
            eprintln!("{}", file.display());
            harness(&data);
            count += 1;
        }
    }
    eprintln!("{count} inputs of fuzz/{kind}/ passed");
}

#[test]
fn seed_corpora_pass() {
    replay("corpus");
}

#[test]
fn crash_regressions_pass() {
    replay("regressions");
}

/// Rewrites the seeds the product's encoders generate (`fuzz/corpus/*/gen-*`).
#[test]
#[ignore = "writes into fuzz/corpus; run by hand after a wire format change"]
fn write_generated_seeds() {
    for (target, name, data) in drl::fuzzing::seeds::generated() {
        let dir = root().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}
