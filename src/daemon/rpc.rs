//! The control methods of the daemon, registered on the control socket's router.
//!
//! | method | params | result |
//! |---|---|---|
//! | `status` | `{resource?}` | `{node, version, uptime_s, resources: [...]}` |
//! | `snapshot.create` | `{resource, name}` | the snapshot's info |
//! | `snapshot.list` | `{resource}` | `{snapshots: [...], tombstones: [...]}` |
//! | `snapshot.delete` | `{resource, name}` | `{}` |
//! | `primary` | `{resource, force?}` | `{resource, role}` |
//! | `secondary` | `{resource}` | `{resource, role}` |
//! | `connect` | `{resource, discard_my_data?}` | `{resource}` |
//! | `disconnect` | `{resource}` | `{resource}` |
//! | `invalidate`, `invalidate-remote`, `outdate` | `{resource}` | `{resource, disk}` |
//! | `pause-sync`, `resume-sync` | `{resource}` | `{resource, replication}` |
//! | `adjust` | `{resource?}` | `{applied: [...], pending: [...], refused: [...]}` |
//! | `up` | `{resource}` | `{resource, already_up}` |
//! | `down` | `{resource}` | `{resource}` |
//! | `shaping.get`, `shaping.set` | see `rpc_shaping` | the shaper's settings and counters |
//! | `detect.status` | `{}` | sites, indicators, leases, etcd members (see `rpc_detect`) |

use std::future::Future;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Node, Resource};
use crate::control::{Event, EventKind, ObjectKind, Router, RpcError};
use crate::repl::replicator::{ReplError, Replicator};
use crate::snapshot::SnapshotError;

fn replicator(node: &Node, params: &Value) -> Result<Arc<Replicator>, RpcError> {
    let res = resource(node, params)?;
    res.replicator().cloned().ok_or_else(|| {
        RpcError::state_refused(format!(
            "resource {} is not replicated (it has no peer in the config)",
            res.name()
        ))
    })
}

fn repl_error(e: ReplError) -> RpcError {
    match e {
        ReplError::Refused { .. } => RpcError::state_refused(e.to_string()),
        _ => RpcError::internal(e.to_string()),
    }
}

fn bool_param(params: &Value, key: &str) -> bool {
    params.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Register `f(node, params)` as `name`.
pub(super) fn add<F, Fut>(r: &mut Router, node: &Arc<Node>, name: &'static str, f: F)
where
    F: Fn(Arc<Node>, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
{
    let node = node.clone();
    let f = Arc::new(f);
    r.method(name, move |params: Value| {
        let (node, f) = (node.clone(), f.clone());
        async move { f(node, params).await }
    });
}

fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("missing string parameter {key:?}")))
}

pub(super) fn resource(node: &Node, params: &Value) -> Result<Arc<Resource>, RpcError> {
    let name = str_param(params, "resource")?;
    node.resource(name)
        .ok_or_else(|| RpcError::no_such_resource(name))
}

fn snapshot_error(e: SnapshotError) -> RpcError {
    match e {
        SnapshotError::NotFound { .. }
        | SnapshotError::Exists { .. }
        | SnapshotError::BadName(_)
        | SnapshotError::NotAncestor { .. } => RpcError::invalid_params(e.to_string()),
        SnapshotError::TooMany { .. }
        | SnapshotError::Invalid { .. }
        | SnapshotError::HasSnapshots { .. } => RpcError::state_refused(e.to_string()),
        _ => RpcError::internal(e.to_string()),
    }
}

pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new();
    add(&mut r, &node, "status", |n, params| async move {
        let only = params
            .get("resource")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(name) = &only {
            if n.resource(name).is_none() {
                return Err(RpcError::no_such_resource(name));
            }
        }
        let resources: Vec<Value> = n
            .resources()
            .iter()
            .filter(|r| only.as_deref().is_none_or(|o| o == r.name()))
            .map(|r| r.status_json())
            .collect();
        Ok(json!({
            "node": n.config.node,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": n.started.elapsed().as_secs(),
            "resources": resources,
            "shaping": super::rpc_shaping::stats_json(&n),
        }))
    });
    add(&mut r, &node, "snapshot.create", |n, params| async move {
        let res = resource(&n, &params)?;
        let name = str_param(&params, "name")?;
        let info = res.snapshot_create(name).await.map_err(snapshot_error)?;
        res.events().publish(
            Event::new(EventKind::Create, ObjectKind::Snapshot, res.name()).field("snapshot", name),
        );
        Ok(serde_json::to_value(info).unwrap_or_default())
    });
    add(&mut r, &node, "snapshot.list", |n, params| async move {
        // A group's snapshots are taken and deleted on every volume together: volume 0's list
        // is the group's.
        let res = resource(&n, &params)?;
        let snaps = res.snapshots().list().await;
        let tombstones: Vec<String> = res
            .snapshots()
            .chain()
            .await
            .into_iter()
            .filter(|(_, live)| !live)
            .map(|(n, _)| n)
            .collect();
        Ok(json!({ "resource": res.name(), "snapshots": snaps, "tombstones": tombstones }))
    });
    add(&mut r, &node, "snapshot.delete", |n, params| async move {
        let res = resource(&n, &params)?;
        let name = str_param(&params, "name")?;
        res.snapshot_delete(name).await.map_err(snapshot_error)?;
        res.events().publish(
            Event::new(EventKind::Destroy, ObjectKind::Snapshot, res.name())
                .field("snapshot", name),
        );
        Ok(json!({}))
    });
    add(&mut r, &node, "primary", |n, params| async move {
        let rep = replicator(&n, &params)?;
        // With [detect]: no promotion without the scope's lease.
        let lease = super::rpc_detect::take_lease(&n, rep.name()).await?;
        let r = rep.primary(bool_param(&params, "force")).await;
        super::rpc_detect::after_promotion(lease, r.is_ok()).await;
        r.map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "role": rep.role().as_str() }))
    });
    add(&mut r, &node, "secondary", |n, params| async move {
        let rep = replicator(&n, &params)?;
        if rep.role() != drbd_compat::Role::Secondary {
            resource(&n, &params)?
                .refuse_if_held_open("demoting")
                .map_err(RpcError::state_refused)?;
        }
        rep.secondary().await.map_err(repl_error)?;
        // With [detect]: the key goes back before the call returns, so `primary` on the other
        // node right after finds it free (the lease loop would give it back only at its next
        // round).
        super::rpc_detect::after_demotion(&n, rep.name()).await;
        Ok(json!({ "resource": rep.name(), "role": rep.role().as_str() }))
    });
    add(&mut r, &node, "connect", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.connect(bool_param(&params, "discard_my_data"))
            .map_err(repl_error)?;
        Ok(json!({ "resource": rep.name() }))
    });
    add(&mut r, &node, "verify", |n, params| async move {
        let rep = replicator(&n, &params)?;
        let rate = match params.get("rate").and_then(Value::as_str) {
            None => crate::limits::REPL_VERIFY_RATE_DEFAULT,
            Some(t) => crate::units::parse_rate(t).map_err(RpcError::invalid_params)?,
        };
        rep.verify(rate).map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "replication": "VerifyS" }))
    });
    add(&mut r, &node, "disconnect", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.disconnect().await;
        Ok(json!({ "resource": rep.name() }))
    });
    add(&mut r, &node, "invalidate", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.invalidate().await.map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "disk": rep.disk_state().as_str() }))
    });
    add(&mut r, &node, "invalidate-remote", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.invalidate_remote().await.map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "disk": rep.disk_state().as_str() }))
    });
    add(&mut r, &node, "outdate", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.outdate().map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "disk": rep.disk_state().as_str() }))
    });
    add(&mut r, &node, "pause-sync", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.pause_sync().map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "replication": rep.status_fields()["replication"] }))
    });
    add(&mut r, &node, "resume-sync", |n, params| async move {
        let rep = replicator(&n, &params)?;
        rep.resume_sync().map_err(repl_error)?;
        Ok(json!({ "resource": rep.name(), "replication": rep.status_fields()["replication"] }))
    });
    add(&mut r, &node, "adjust", |n, params| async move {
        use super::adjust::{adjust, report_json, AdjustError};
        let only = params.get("resource").and_then(Value::as_str);
        match adjust(&n, only).await {
            Ok(r) => Ok(report_json(&r)),
            Err(AdjustError::NoSuchResource(name)) => Err(RpcError::no_such_resource(name)),
            Err(e) => Err(RpcError::state_refused(format!(
                "adjust refused, the daemon runs on the config it has: {e}"
            ))),
        }
    });
    add(&mut r, &node, "resize", |n, params| async move {
        use super::resize::{resize, ResizeError};
        let name = str_param(&params, "resource")?;
        let allow_shrink = params
            .get("allow_shrink")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match resize(&n, name, allow_shrink).await {
            Ok(done) => Ok(json!({
                "resource": name,
                "size_bytes": n.resource(name).map(|r| crate::volume::BlockDevice::size_bytes(&**r.disk())),
                "result": done.to_string(),
            })),
            Err(ResizeError::NotUp(n)) => Err(RpcError::no_such_resource(n)),
            Err(e @ ResizeError::Failed { .. }) => Err(RpcError::internal(e.to_string())),
            Err(e) => Err(RpcError::state_refused(e.to_string())),
        }
    });
    add(&mut r, &node, "up", |n, params| async move {
        use super::updown::{up, LifecycleError, Up};
        let name = str_param(&params, "resource")?;
        match up(&n, name).await {
            Ok(u) => Ok(json!({ "resource": name, "already_up": u == Up::AlreadyUp })),
            Err(e @ LifecycleError::NotInConfig { .. }) => Err(RpcError::new(
                crate::control::code::NO_SUCH_RESOURCE,
                e.to_string(),
            )),
            Err(e) => Err(RpcError::state_refused(e.to_string())),
        }
    });
    add(&mut r, &node, "down", |n, params| async move {
        use super::updown::{down, LifecycleError};
        let name = str_param(&params, "resource")?;
        match down(&n, name).await {
            Ok(()) => Ok(json!({ "resource": name })),
            Err(e @ LifecycleError::NotUp(_)) => Err(RpcError::new(
                crate::control::code::NO_SUCH_RESOURCE,
                e.to_string(),
            )),
            Err(e) => Err(RpcError::state_refused(e.to_string())),
        }
    });
    super::rpc_stream::register(&mut r, &node);
    super::rpc_dr::register(&mut r, &node);
    super::rpc_shaping::register(&mut r, &node);
    super::rpc_detect::register(&mut r, &node);
    r
}
