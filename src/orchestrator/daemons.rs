//! The plan's storage nodes at this site, reached through their daemons' control sockets.
//!
//! Each resource of a plan lives on two nodes; the one at the orchestrator's own site (the
//! site of `--node`, `[[node]] site`) is where the plan recovers. Several nodes per plan are
//! normal: each resource is promoted and handed over by its own node's daemon.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::OrchError;
use crate::config::plan::PlanConfig;
use crate::config::NodeConfig;
use crate::control::Client;

/// One resource of a plan (all volumes of a group), where it recovers.
#[derive(Clone, Debug)]
pub struct Member {
    pub resource: String,
    /// The node at this site that holds the resource.
    pub node: String,
    pub socket: PathBuf,
    /// The node's TCP control endpoint, used when the node is not the orchestrator's own.
    pub tcp: Option<(std::net::SocketAddr, PathBuf)>,
    /// The node at the other site (the old primary).
    pub peer: String,
}

/// The nodes of `plan` at the site of `cfg.node`, one member per resource (a consistency
/// group's volumes are one member: one promotion, one handover).
pub fn members(cfg: &NodeConfig, plan: &PlanConfig) -> Result<Vec<Member>, OrchError> {
    let site_of = |n: &str| {
        cfg.nodes
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.site.clone())
    };
    let my_site = site_of(&cfg.node)
        .ok_or_else(|| OrchError::Config(format!("node {} is not listed", cfg.node)))?;
    let mut out = Vec::new();
    for r in plan.resources() {
        let (_, nodes) = cfg
            .all_resources
            .iter()
            .find(|(n, _)| n == r)
            .ok_or_else(|| OrchError::Config(format!("resource {r} is not defined")))?;
        let here: Vec<&String> = nodes
            .iter()
            .filter(|n| site_of(n).as_deref() == Some(my_site.as_str()))
            .collect();
        let [node] = here.as_slice() else {
            return Err(OrchError::Config(format!(
                "plan {}: resource {} has {} nodes at site {my_site} (this node's): it needs exactly one; set [[node]] site",
                plan.name,
                r,
                here.len()
            )));
        };
        let peer = nodes
            .iter()
            .find(|n| n != node)
            .cloned()
            .unwrap_or_default();
        let entry = cfg.nodes.iter().find(|e| &e.name == *node);
        out.push(Member {
            resource: r.to_owned(),
            node: (*node).clone(),
            socket: entry.map(|e| e.control_socket.clone()).unwrap_or_default(),
            tcp: entry
                .and_then(|e| e.control_tcp.clone())
                .filter(|_| **node != cfg.node),
            peer,
        });
    }
    Ok(out)
}

/// Call `method` on the daemon of `m`.
pub async fn call(m: &Member, method: &str, params: Value) -> Result<Value, OrchError> {
    let what = format!("{method} {} on {}", m.resource, m.node);
    let connected = match &m.tcp {
        Some((addr, token_file)) => match crate::control::tcp::Token::from_file(token_file) {
            Ok(t) => Client::connect_tcp(*addr, &t).await,
            Err(e) => {
                return Err(OrchError::Daemon {
                    call: what,
                    reason: format!("token of the TCP control endpoint: {e}"),
                })
            }
        },
        None => Client::connect(&m.socket).await,
    };
    let mut c = connected.map_err(|e| OrchError::Daemon {
        call: what.clone(),
        reason: e.to_string(),
    })?;
    c.call(method, params).await.map_err(|e| OrchError::Daemon {
        call: what,
        reason: e.to_string(),
    })
}

/// The resource's status object from its daemon.
pub async fn status(m: &Member) -> Result<Value, OrchError> {
    let v = call(m, "status", json!({ "resource": m.resource })).await?;
    v.get("resources")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| OrchError::Daemon {
            call: format!("status {} on {}", m.resource, m.node),
            reason: "the answer lists no resource".into(),
        })
}

/// `Some(why)` when the resource still talks to a Primary (recovering would split the brain).
pub fn connected_to_primary(st: &Value) -> Option<String> {
    let conn = st.get("connection").and_then(Value::as_str).unwrap_or("?");
    let peer_role = st.get("peer_role").and_then(Value::as_str);
    if conn == "Connected" {
        return Some(format!(
            "still Connected to its peer (peer role {})",
            peer_role.unwrap_or("unknown")
        ));
    }
    None
}

/// Publish a `plan` event (`state`: Cinder's replication words) with `fields` on the daemon
/// of this node (`--node`) if it holds a resource of the plan, else on the first member's:
/// a recovery or fail back run by the CLI shows on the same event stream as the daemon's
/// automatic ones.
pub async fn plan_event(
    cfg: &NodeConfig,
    plan: &PlanConfig,
    state: &str,
    fields: Value,
) -> Result<(), OrchError> {
    let members = members(cfg, plan)?;
    let Some(m) = members
        .iter()
        .find(|m| m.node == cfg.node)
        .or_else(|| members.first())
    else {
        return Ok(());
    };
    call(
        m,
        "dr.plan_event",
        json!({ "plan": plan.name, "state": state, "fields": fields }),
    )
    .await
    .map(|_| ())
}

/// The member that holds `resource`.
pub fn member_of<'m>(members: &'m [Member], resource: &str) -> Result<&'m Member, OrchError> {
    members
        .iter()
        .find(|m| m.resource == resource)
        .ok_or_else(|| OrchError::Config(format!("resource {resource} has no member")))
}
