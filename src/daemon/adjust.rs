//! `drl adjust` and SIGHUP (DRBD's `adjust`): re-read the config file the daemon was started
//! with and apply what changed without a restart.
//!
//! Applied live today: the shaper (`[shaping]`: link-rate, burst, class shares and ceilings),
//! the resync controller (`[shaping.resync]`) and the TLS certificates of the replication link
//! (read again for new connections: certificate rotation). Changes that need a resource to be
//! reopened (a new or removed resource, a new size, disk, meta, NBD endpoint, peer address,
//! secret or replication option) are reported as *pending*, one line each, and take effect at
//! the next start: nothing is half-applied. A config that does not load is refused with its
//! error and the daemon keeps running on the config it has.

use serde_json::{json, Value};

use super::Node;
use crate::config::{self, NodeConfig, ResourceConfig};

/// What an adjust did and what it left for the next start.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdjustReport {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
}

/// Re-read the config of `node` and apply what can be applied live (see the module doc).
pub fn adjust(node: &Node, only: Option<&str>) -> Result<AdjustReport, config::ConfigError> {
    let new = config::load(&node.config.file, &node.config.node)?;
    Ok(apply(&node.config, &new, only))
}

fn apply(old: &NodeConfig, new: &NodeConfig, only: Option<&str>) -> AdjustReport {
    let mut r = AdjustReport::default();
    if only.is_none() {
        let shaper = crate::shaping::node();
        if shaper.config() != new.shaping {
            shaper.set_config(new.shaping.clone());
            r.applied.push("shaping: [shaping] settings applied".into());
        }
        if old.resync != new.resync {
            crate::shaping::resync::set_tuning(new.resync.clone());
            r.applied
                .push("shaping: [shaping.resync] controller settings applied".into());
        }
        // Certificates are read again whatever the paths say: rotation replaces the files in
        // place. New connections use them; a live session keeps its tunnel.
        if old.tls.is_some() || new.tls.is_some() {
            match crate::repl::tls::reload(new.tls.as_ref(), &new.node) {
                Ok(()) => r
                    .applied
                    .push("tls: certificates read again; new connections use them".into()),
                Err(e) => r.pending.push(format!(
                    "tls: not reloaded, the previous certificates stay in use: {e}"
                )),
            }
        }
    }
    for n in &new.resources {
        if only.is_some_and(|o| o != n.name) {
            continue;
        }
        match old.resource(&n.name) {
            None => r.pending.push(format!(
                "resource {}: new in the config; it starts at the next daemon start (live `up` is not built yet)",
                n.name
            )),
            Some(o) => {
                for what in changed_keys(o, n) {
                    r.pending.push(format!(
                        "resource {}: {what} changed; it applies at the next daemon start",
                        n.name
                    ));
                }
            }
        }
    }
    for o in &old.resources {
        if only.is_some_and(|x| x != o.name) {
            continue;
        }
        if new.resource(&o.name).is_none() {
            r.pending.push(format!(
                "resource {}: removed from the config; it keeps running until the daemon restarts (live `down` is not built yet)",
                o.name
            ));
        }
    }
    r
}

/// The config keys whose values differ between two versions of one resource.
fn changed_keys(a: &ResourceConfig, b: &ResourceConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |what, differs: bool| {
        if differs {
            out.push(what)
        }
    };
    check("size", a.size_bytes != b.size_bytes);
    check("secret", a.secret != b.secret);
    check("disk", a.local.disk != b.local.disk);
    check("meta", a.local.meta != b.local.meta);
    check(
        "nbd",
        a.local.nbd.as_ref().map(|e| e.to_string()) != b.local.nbd.as_ref().map(|e| e.to_string()),
    );
    check("address", a.local.address != b.local.address);
    check(
        "peer",
        a.peer.as_ref().map(|p| (&p.node, p.address))
            != b.peer.as_ref().map(|p| (&p.node, p.address)),
    );
    check("replication options", a.repl != b.repl);
    check(
        "snapshot space",
        a.snapshot_space_bytes != b.snapshot_space_bytes
            || a.snapshot_chunk_bytes != b.snapshot_chunk_bytes,
    );
    out
}

/// The report as the `adjust` control method answers it.
pub fn report_json(r: &AdjustReport) -> Value {
    json!({ "applied": r.applied, "pending": r.pending })
}
