//! Text harnesses: the TOML config and DRBD `.res` import (what an admin, or a file an admin
//! was handed, feeds the daemon and `drl import-drbd`).
//!
//! `config`: [`config::parse`], then [`config::validate`] for every node the file names and
//! for one it does not. Checked: no panic (every problem is a `ConfigError`).
//!
//! `drbd_res`: [`config::import_drbd`] (drbd-compat's importer, then drl's parser on its TOML).
//! Checked: no panic; what it accepts is TOML that drl's own parser reads. Until the importer
//! checked its TOML, this harness found keys given twice and values drl does not take (see
//! fuzz/regressions/drbd_res/); a mapping gap is now a refusal that names the line.

use std::path::Path;

use crate::config;

/// The config parser and validator (see the module doc).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/etc/drl/fuzz.toml");
    let Ok(raw) = config::parse(file, text) else {
        return;
    };
    let mut nodes: Vec<&str> = raw.node.iter().map(|n| n.name.as_str()).take(4).collect();
    nodes.push("not-a-node");
    for node in nodes {
        let _ = config::validate(file, &raw, node);
    }
}

/// DRBD resource import (see the module doc).
pub fn drbd_res(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = drbd_compat::import::ImportOptions {
        size: Some("1GiB".into()),
        meta_dir: "/var/lib/drl".into(),
        nbd_dir: "/run/drl".into(),
    };
    // The product's own check refuses TOML drl cannot read; a refusal is a clear error, so
    // what is checked here is that neither the importer nor the parser panics, and that what
    // is accepted loads again (the check cannot be skipped on the way out).
    if let Ok(imported) = config::import_drbd(text, &opts) {
        if let Err(e) = config::parse(Path::new("imported.toml"), &imported.toml) {
            panic!(
                "import-drbd accepted TOML drl cannot read: {e}\n{}",
                imported.toml
            );
        }
    }
}
