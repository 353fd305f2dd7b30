//! The DRBD admin commands that are not a single control call: `create-md` (offline, from
//! the config, like `drbdadm create-md`), `wait-connect` and `wait-sync` (follow the event
//! bus until the state is reached), and the `check-config` report of what a start would do.

use crate::config;

use super::{exit, node_name, Global};

/// `drl create-md RES`: create the resource's metadata explicitly (DRBD's `create-md`). Needs
/// the config, not the daemon; refused while a daemon holds the resource, and never over an
/// existing metadata file.
pub fn create_md(g: &Global, resource: &str) -> i32 {
    let Some(file) = &g.config else {
        eprintln!("drl create-md: --config FILE is required");
        return exit::USAGE;
    };
    let node = node_name(g);
    let cfg = match config::load(file, &node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl: {e}");
            return exit::USAGE;
        }
    };
    let Some(rc) = cfg.resources.iter().find(|r| r.name == resource) else {
        eprintln!(
            "drl create-md: no resource {resource:?} for node {node} in {}",
            file.display()
        );
        return exit::USAGE;
    };
    let claimed = match crate::daemon::Claimed::take(rc) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl create-md: {resource}: {e}");
            return exit::FAILED;
        }
    };
    if !claimed.plan().create_meta {
        eprintln!(
            "drl create-md: {resource}: {} already holds metadata; drl never reinitialises it (remove it by hand to start this node over)",
            rc.local.meta.display()
        );
        return exit::FAILED;
    }
    match crate::daemon::create_meta(rc, &cfg.node) {
        Ok(_) => {
            println!(
                "{resource}: new metadata {} ({})",
                rc.local.meta.display(),
                if rc.peer.is_some() {
                    "Secondary, Inconsistent: `drl primary --force` on one node starts the initial sync"
                } else {
                    "Primary, UpToDate"
                }
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("drl create-md: {resource}: {e}");
            exit::FAILED
        }
    }
}

/// `check-config`'s report of one resource's files: what a start would create or grow, or why
/// it would be refused. Returns false when the start would be refused.
pub fn report_plan(rc: &config::ResourceConfig) -> bool {
    match crate::volume::claim::plan(rc) {
        Ok(p) => {
            for line in p.describe(rc) {
                println!("  {line}");
            }
            true
        }
        Err(e) => {
            eprintln!("drl: resource {}: {e}", rc.name);
            false
        }
    }
}
