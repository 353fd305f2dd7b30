//! `drl adjust` and SIGHUP (DRBD's `adjust`): re-read the config file the daemon was started
//! with and apply what changed without a restart.
//!
//! Applied live: the shaper (`[shaping]`: link-rate, burst, class shares and ceilings), the
//! resync controller (`[shaping.resync]`), the TLS certificates of the replication link (read
//! again for new connections: certificate rotation), and the resources: one new in the file
//! comes up (`drl up`), one gone from it goes down (`drl down`: refused while in use, naming
//! the users; it keeps running), one whose peer `address` changed reconnects to the new
//! address (its role stays), one whose `size` grew grows online (`drl resize`, see
//! `resize.rs`; a shrink is refused here: it needs `drl resize --allow-shrink`), one with new
//! `[[resource.volume]]` sections after its last volume gets them at run time (issue 15,
//! `resource_add.rs`: opened as at startup, announced to the peer at a barrier by the
//! Primary, fully synced; removing or changing a volume stays pending). A resource
//! the admin took `down` that is still in the file comes up again, as DRBD's adjust does.
//! Other changes of a running resource (disk, meta,
//! nbd, its own address, peer node, secret, replication options) are reported as *pending*,
//! one line each, and take effect when it is next brought up: nothing is half-applied. A
//! config that does not load is refused with its error and the daemon keeps running on the
//! config it has.

use serde_json::{json, Value};

use super::updown;
use super::Node;
use crate::config::{self, NodeConfig, ResourceConfig};

/// What an adjust did, what it left for later, and what it refused.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdjustReport {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
    /// Changes that could not be applied now (a removed resource still in use, a new one
    /// whose files are refused); the daemon keeps the resource as it was.
    pub refused: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("no resource {0:?}: neither up on this node nor in the config file")]
    NoSuchResource(String),
}

/// Re-read the config of `node` and apply what can be applied live (see the module doc).
pub async fn adjust(node: &Node, only: Option<&str>) -> Result<AdjustReport, AdjustError> {
    let new = config::load(&node.config.file, &node.config.node)?;
    let _one = node.lifecycle.lock().await;
    if let Some(name) = only {
        if node.resource(name).is_none() && new.resource(name).is_none() {
            return Err(AdjustError::NoSuchResource(name.to_owned()));
        }
    }
    let mut r = AdjustReport::default();
    if only.is_none() {
        node_wide(&node.config, &new, &node.shaping, &mut r);
    }
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    // Removed ones first: a new resource may take over a removed one's port or files.
    for running in node.resources() {
        if !wanted(running.name()) || new.resource(running.name()).is_some() {
            continue;
        }
        match updown::down_locked(node, running.name()).await {
            Ok(()) => r.applied.push(format!(
                "resource {}: removed from the config: down",
                running.name()
            )),
            Err(e) => r.refused.push(format!(
                "resource {}: removed from the config, but it stays up: {e}",
                running.name()
            )),
        }
    }
    for n in new.resources.iter().filter(|n| wanted(&n.name)) {
        let Some(running) = node.resource(&n.name) else {
            match updown::up_locked(node, n).await {
                Ok(()) => r.applied.push(format!("resource {}: up", n.name)),
                Err(e) => r
                    .refused
                    .push(format!("resource {}: not brought up: {e}", n.name)),
            }
            continue;
        };
        let mut live = running.config().clone();
        live.volumes = running.volume_configs();
        live.size_bytes = crate::volume::BlockDevice::size_bytes(&**running.disk());
        if let (Some(p), Some(rep)) = (live.peer.as_mut(), running.replicator()) {
            p.address = rep.peer_address();
        }
        for what in changed_keys(&live, n) {
            if what == "peer address" {
                let (Some(rep), Some(addr)) = (
                    running.replicator(),
                    n.peer.as_ref().and_then(|p| p.address),
                ) else {
                    continue;
                };
                if rep.set_peer_address(addr) {
                    r.applied.push(format!(
                        "resource {}: the peer's address is now {addr}; reconnecting there",
                        n.name
                    ));
                }
                continue;
            }
            if what == "volumes" {
                match added_volumes(&live, n) {
                    Ok(()) => match running.add_volumes(n, &node.config.node).await {
                        Ok(lines) => r
                            .applied
                            .extend(lines.into_iter().map(|l| format!("resource {}: {l}", n.name))),
                        Err(e) => r.refused.push(format!(
                            "resource {}: adding a volume failed: {e}",
                            n.name
                        )),
                    },
                    Err(why) => r.pending.push(format!(
                        "resource {}: {why}; it applies when the resource is next brought up (drl down {} then drl up {})",
                        n.name, n.name, n.name
                    )),
                }
                continue;
            }
            if what == "size" {
                // A grow applies online (super::resize); a shrink needs `drl resize
                // --allow-shrink`, never an adjust.
                match super::resize::resize_locked(&running, n.size_bytes, false).await {
                    Ok(done) => r.applied.push(format!("resource {}: {done}", n.name)),
                    Err(e) => r.refused.push(format!(
                        "resource {}: size changed, not applied: {e}",
                        n.name
                    )),
                }
                continue;
            }
            r.pending.push(format!(
                "resource {}: {what} changed; it applies when the resource is next brought up (drl down {} then drl up {})",
                n.name, n.name, n.name
            ));
        }
    }
    Ok(r)
}

/// The node-wide settings: shaping, the resync controller, TLS certificates.
fn node_wide(
    old: &NodeConfig,
    new: &NodeConfig,
    shaping: &crate::shaping::NodeShaping,
    r: &mut AdjustReport,
) {
    let shaper = &shaping.shaper;
    if shaper.config() != new.shaping {
        shaper.set_config(new.shaping.clone());
        r.applied.push("shaping: [shaping] settings applied".into());
    }
    if old.resync != new.resync {
        shaping.resync.set_tuning(new.resync.clone());
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
        a.peer.as_ref().map(|p| &p.node) != b.peer.as_ref().map(|p| &p.node),
    );
    check(
        "peer address",
        a.peer.as_ref().map(|p| &p.node) == b.peer.as_ref().map(|p| &p.node)
            && a.peer.as_ref().map(|p| p.address) != b.peer.as_ref().map(|p| p.address),
    );
    check("replication options", a.repl != b.repl);
    // A volume added (applied now: `added_volumes`), removed or moved (pending).
    let vols = |c: &ResourceConfig| -> Vec<(u16, u64, String)> {
        c.volumes[1..]
            .iter()
            .map(|v| {
                let l = &v.local;
                let nbd = l.nbd.as_ref().map(|e| e.to_string()).unwrap_or_default();
                let paths = format!("{} {} {nbd}", l.disk.display(), l.meta.display());
                (v.number, v.size_bytes, paths)
            })
            .collect()
    };
    check("volumes", vols(a) != vols(b));
    check(
        "snapshot space",
        a.snapshot_space_bytes != b.snapshot_space_bytes
            || a.snapshot_chunk_bytes != b.snapshot_chunk_bytes,
    );
    out
}

/// Whether `new` only appends volumes to the running `live` ones (each kept volume with the
/// same number, size, files and export): that is applied at run time. Otherwise the reason it
/// is pending.
fn added_volumes(live: &ResourceConfig, new: &ResourceConfig) -> Result<(), String> {
    if new.volumes.len() < live.volumes.len() {
        return Err(format!(
            "volumes removed ({} configured, {} running): removing a volume of a running              resource is not built",
            new.volumes.len(),
            live.volumes.len()
        ));
    }
    let key = |v: &crate::config::VolumeConfig| {
        let l = &v.local;
        let nbd = l.nbd.as_ref().map(|e| e.to_string());
        (v.size_bytes, l.disk.clone(), l.meta.clone(), nbd)
    };
    // Volume 0's size and files are the resource's own keys (`size`, `disk`, ..).
    for (a, b) in live.volumes.iter().zip(&new.volumes).skip(1) {
        if key(a) != key(b) {
            return Err(format!(
                "volume {} changed (size, disk, meta or nbd): only new volumes after the last                  one apply at run time",
                a.number
            ));
        }
    }
    Ok(())
}

/// The report as the `adjust` control method answers it.
pub fn report_json(r: &AdjustReport) -> Value {
    json!({ "applied": r.applied, "pending": r.pending, "refused": r.refused })
}
