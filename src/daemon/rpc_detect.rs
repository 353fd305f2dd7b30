//! The control methods of detection: `detect.status`, and the lease a promotion needs.
//!
//! With `[detect]`, `primary` first takes the resource's lease key in etcd (refused with the
//! holder's name, or with etcd's error when no majority answers), so an admin can no more
//! promote behind the witness's back than the automatic failover can.

use std::sync::Arc;

use serde_json::Value;

use super::rpc::add;
use super::Node;
use crate::control::{Router, RpcError};
use crate::detect::lease::{AcquireError, Scope};

pub(super) fn register(r: &mut Router, node: &Arc<Node>) {
    add(r, node, "detect.status", |n, _params: Value| async move {
        match &n.detect {
            Some(d) => Ok(d.status_json()),
            None => Err(RpcError::state_refused(
                "detection is not configured: this node's config has no [detect] table",
            )),
        }
    });
}

/// Before `primary`: hold the resource's lease (no-op without `[detect]`). Returns the scope
/// and whether the key was taken just now.
pub(super) async fn take_lease(
    node: &Node,
    resource: &str,
) -> Result<Option<(Arc<Scope>, bool)>, RpcError> {
    let Some(scope) = node.detect.as_ref().and_then(|d| d.scope(resource)) else {
        return Ok(None);
    };
    match scope.acquire_for_promotion().await {
        Ok(new) => {
            scope.drop_stale_session().await;
            Ok(Some((scope, new)))
        }
        Err(e @ AcquireError::HeldBy { .. }) => Err(RpcError::state_refused(format!(
            "{e}: promotion refused (demote it there first, or wait until its lease expires)"
        ))),
        Err(e) => Err(RpcError::state_refused(format!(
            "{e}: promotion refused without the lease ([detect] is configured)"
        ))),
    }
}

/// After `primary`: a failed promotion gives back a key it took.
pub(super) async fn after_promotion(lease: Option<(Arc<Scope>, bool)>, promoted: bool) {
    if let Some((scope, true)) = lease {
        if !promoted {
            scope.release("the promotion failed").await;
        }
    }
}

/// After `secondary`: give the resource's lease back now (no-op without `[detect]`, or when
/// this node does not hold it).
pub(super) async fn after_demotion(node: &Node, resource: &str) {
    if let Some(scope) = node.detect.as_ref().and_then(|d| d.scope(resource)) {
        scope.release("demoted to Secondary").await;
    }
}
