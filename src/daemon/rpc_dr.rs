//! Control methods of the recovery orchestrator (`drl dr`), served by the daemon that owns the
//! resource (it owns the metadata and knows the disk's path).
//!
//! | method | params | result |
//! |---|---|---|
//! | `dr.handover` | `{resource, export_dir?}` | `{resource, volumes: [{volume, disk_path, size_bytes, link?}], disk_path, size_bytes, link?}` (the last three for a one-volume resource) |
//! | `dr.tracking_restored` | `{resource}` | `{resource, tracking_void: false}` |
//! | `dr.plan_event` | `{plan, state, fields?}` | `{}` |
//!
//! `dr.plan_event` publishes a `plan` event on this daemon's bus for a recovery or fail back
//! that runs in the `drl dr` CLI (the daemon's own automatic runs publish theirs directly):
//! `state` is one of Cinder's replication words, `fields` (an object of at most
//! `DR_PLAN_EVENT_FIELDS_MAX` scalars) go along.
//!
//! `dr.handover` is called before a promoted resource is imported into Cinder: it records in
//! the metadata (durably) that change tracking is void from now on (Cinder's target writes the
//! disk around drl), and, with `export_dir`, puts a symlink `drl-RESOURCE` to the disk into
//! the Cinder backend's share (Cinder renames the link to `volume-<id>`; the disk stays).
//! A consistency group is handed over whole: the mark once (volume 0's metadata holds the
//! group's flags, and fail back verifies every volume), a link `drl-RESOURCE-N` per volume.
//! Only a Primary is handed over. `dr.tracking_restored` clears the mark once a digest
//! comparison (online verify) and the resync of what it found have brought the peer level.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::rpc::add;
use super::Node;
use crate::control::{Event, EventKind, ObjectKind, Router, RpcError};
use crate::volume::meta::{flags, Role};

pub(super) fn register(r: &mut Router, node: &Arc<Node>) {
    add(r, node, "dr.handover", |n, params| async move {
        let res = super::rpc::resource(&n, &params)?;
        let sb = res.meta().superblock();
        if sb.role != Role::Primary {
            return Err(RpcError::state_refused(format!(
                "{}: is {}; only a Primary is handed to Cinder (promote it first)",
                res.name(),
                sb.role.as_str()
            )));
        }
        let export_dir = match params.get("export_dir") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.starts_with('/') => Some(PathBuf::from(s)),
            Some(other) => {
                return Err(RpcError::invalid_params(format!(
                    "export_dir {other}: must be an absolute path"
                )))
            }
        };
        let meta = res.meta().clone();
        let group = res.is_group();
        // (number, disk path, size, link name) of every volume; one link per volume. The
        // sizes are the disks' own (status), which an online resize may have grown.
        let st = res.status_json();
        let vols: Vec<(u16, PathBuf, Value, String)> = res
            .config()
            .volumes
            .iter()
            .map(|v| {
                let (size, link) = match group {
                    false => (st["size_bytes"].clone(), format!("drl-{}", res.name())),
                    true => (
                        st["volumes"][usize::from(v.number)]["size_bytes"].clone(),
                        format!("drl-{}-{}", res.name(), v.number),
                    ),
                };
                (v.number, v.local.disk.clone(), size, link)
            })
            .collect();
        let linked = vols.clone();
        let links = tokio::task::spawn_blocking(move || -> Result<Vec<Option<PathBuf>>, String> {
            // Once for the resource: a group's role and flags live in volume 0's metadata.
            meta.update(|sb| sb.flags |= flags::TRACKING_VOID)
                .map_err(|e| format!("recording the handover in the metadata: {e}"))?;
            let Some(dir) = export_dir else {
                return Ok(vec![None; linked.len()]);
            };
            linked
                .iter()
                .map(|(_, disk, _, name)| link_into(&dir, name, disk).map(Some))
                .collect()
        })
        .await
        .map_err(|e| RpcError::internal(e.to_string()))?
        .map_err(RpcError::internal)?;
        tracing::warn!(resource = %res.name(), volumes = vols.len(), "handed to Cinder: change tracking is void until the next checksum resync");
        let volumes: Vec<Value> = vols
            .iter()
            .zip(&links)
            .map(|((number, disk, size, _), link)| {
                json!({ "volume": number, "disk_path": disk, "size_bytes": size, "link": link })
            })
            .collect();
        let mut out = json!({ "resource": res.name(), "volumes": volumes });
        if !group {
            // A one-volume resource's answer as before the groups.
            for k in ["disk_path", "size_bytes", "link"] {
                out[k] = volumes[0][k].clone();
            }
        }
        Ok(out)
    });
    add(r, node, "dr.tracking_restored", |n, params| async move {
        let res = super::rpc::resource(&n, &params)?;
        let meta = res.meta().clone();
        tokio::task::spawn_blocking(move || meta.update(|sb| sb.flags &= !flags::TRACKING_VOID))
            .await
            .map_err(|e| RpcError::internal(e.to_string()))?
            .map_err(|e| RpcError::internal(e.to_string()))?;
        Ok(json!({ "resource": res.name(), "tracking_void": false }))
    });
    add(r, node, "dr.plan_event", |n, params| async move {
        let plan = params.get("plan").and_then(Value::as_str).unwrap_or("");
        if !n.config.plans.iter().any(|p| p.name == plan) {
            return Err(RpcError::invalid_params(format!(
                "no plan {plan:?} in this daemon's config"
            )));
        }
        let state = params.get("state").and_then(Value::as_str).unwrap_or("");
        if !PLAN_STATES.contains(&state) {
            return Err(RpcError::invalid_params(format!(
                "state {state:?}: one of {}",
                PLAN_STATES.join(", ")
            )));
        }
        let mut ev = Event::new(EventKind::Change, ObjectKind::Plan, plan)
            .field("state", state)
            .field("node", n.config.node.clone())
            .field("automatic", false);
        match params.get("fields") {
            None | Some(Value::Null) => {}
            Some(Value::Object(f))
                if f.len() <= crate::limits::DR_PLAN_EVENT_FIELDS_MAX
                    && f.iter().all(|(k, v)| {
                        k.len() <= 64 && !v.is_object() && !v.is_array() && v.to_string().len() <= 1024
                    }) =>
            {
                for (k, v) in f {
                    ev = ev.field(k, v.clone());
                }
            }
            Some(_) => {
                return Err(RpcError::invalid_params(format!(
                    "fields: an object of at most {} scalar values (keys up to 64 bytes, values up to 1 KiB)",
                    crate::limits::DR_PLAN_EVENT_FIELDS_MAX
                )))
            }
        }
        n.events.publish(ev);
        Ok(json!({}))
    });
}

/// Put the symlink `dir/name` -> `disk` (replacing one that points elsewhere).
fn link_into(dir: &std::path::Path, name: &str, disk: &std::path::Path) -> Result<PathBuf, String> {
    let link = dir.join(name);
    match std::fs::read_link(&link) {
        Ok(t) if t == disk => return Ok(link),
        Ok(_) => {
            std::fs::remove_file(&link).map_err(|e| format!("replacing {}: {e}", link.display()))?
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(disk, &link)
        .map_err(|e| format!("symlink {} -> {}: {e}", link.display(), disk.display()))?;
    Ok(link)
}

/// Cinder's replication words for a plan.
const PLAN_STATES: &[&str] = &[
    "enabled",
    "failing-over",
    "failed-over",
    "failover-error",
    "failing-back",
];
