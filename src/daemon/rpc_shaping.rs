//! Control methods of the WAN shaper.
//!
//! | method | params | result |
//! |---|---|---|
//! | `shaping.get` | `{}` | `{link_bytes_per_s, burst_bytes, classes: [{class, share, guarantee_bytes_per_s, ceil_bytes_per_s, rate_bytes_per_s, granted_bytes, queued_bytes, waiting_requests}], resync: {tuning, rate_bytes_per_s, replication_estimate_bytes_per_s}}` |
//! | `shaping.set` | `{link_rate?, burst?, share?: {CLASS: N}, ceil?: {CLASS: RATE or "off"}}` | like `shaping.get`, after the change |
//!
//! A change applies at once, under load (queued requests keep their place). It is not written
//! back to the config file: a restart uses `[shaping]` again.

use std::sync::Arc;

use serde_json::Value;

use super::rpc::add;
use super::Node;
use crate::control::{Router, RpcError};
use crate::shaping::control::{apply_set, SetRequest};

pub(super) fn register(r: &mut Router, node: &Arc<Node>) {
    add(r, node, "shaping.get", |n, _params| async move {
        Ok(stats_json(&n))
    });
    add(r, node, "shaping.set", |n, params| async move {
        let req: SetRequest = serde_json::from_value(params)
            .map_err(|e| RpcError::invalid_params(format!("shaping.set: {e}")))?;
        let shaper = &n.shaping.shaper;
        let cfg = apply_set(&shaper.config(), &req)
            .map_err(|(k, r)| RpcError::invalid_params(format!("shaping.{k}: {r}")))?;
        tracing::info!(config = ?cfg, "shaping reconfigured");
        shaper.set_config(cfg);
        Ok(stats_json(&n))
    });
}

/// The node shaper's settings and counters (also `status`'s `shaping` object).
pub(super) fn stats_json(n: &Node) -> Value {
    let mut v = serde_json::to_value(n.shaping.shaper.stats()).unwrap_or_default();
    v["resync"] = serde_json::to_value(n.shaping.resync.stats()).unwrap_or_default();
    v
}
