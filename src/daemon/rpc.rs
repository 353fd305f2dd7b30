//! The control methods of the daemon, registered on the control socket's router.

use std::sync::Arc;

use serde_json::{json, Value};

use super::Node;
use crate::control::{RpcError, Router};

pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new();
    let n = node.clone();
    r.method("status", move |params: Value| {
        let n = n.clone();
        async move {
            let only = params.get("resource").and_then(Value::as_str).map(str::to_owned);
            if let Some(name) = &only {
                if n.resource(name).is_none() {
                    return Err(RpcError::no_such_resource(name));
                }
            }
            let resources: Vec<Value> = n
                .resources
                .iter()
                .filter(|r| only.as_deref().is_none_or(|o| o == r.name()))
                .map(|r| r.status_json())
                .collect();
            Ok(json!({
                "node": n.config.node,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": n.started.elapsed().as_secs(),
                "resources": resources,
            }))
        }
    });
    r
}
