//! The recovery orchestrator: protection plans, the recovery journal, and the flows that bring
//! a workload back at the backup site (`drl dr recover`) and home again (`drl dr failback`).
//!
//! It runs in the CLI process at the backup site, and for `failover = "automatic"` plans in
//! the daemon of the node that recovers the plan (`daemon::autofail`). It reaches each storage
//! node's daemon through its control socket ([`daemons`]) and the backup site's cloud through
//! Keystone, Cinder and Heat ([`openstack`]). Recovery, per plan:
//!
//! ```text
//! check      refuse while a resource is Connected to its peer, or the old primary is not
//!            known to be down (--confirm-primary-down, or this node holds the lease)
//! promote    every resource, all or none (those promoted are demoted again on a failure);
//!            a consistency group is one resource: all its volumes at one point in time
//! import:V   dr.handover once per resource (metadata: tracking void; a symlink per volume
//!            into the share), then per volume V (`RES`, or `RES/N` in a group) Cinder
//!            manage-existing, wait for `available` (looked up by metadata first)
//! rewrite    the plan's HOT template: primary IDs -> imported IDs (parameters / by value)
//! stack      Heat stack create (looked up by name first), wait for CREATE_COMPLETE
//! ```
//!
//! Every step is journaled ([`journal`]) before and after; the same command resumes.
//!
//! - [`openstack`]: Keystone v3 token and catalog, Cinder v3, Heat v1 over reqwest.
//! - [`template`]: HOT parse, check, rewrite.
//! - [`journal`]: the fsync'd step journal with crash injection points.
//! - [`daemons`]: the plan's nodes at this site, their control sockets.
//! - [`checkpoint`]: `drl dr protect` and the checkpoints in the store (vault or Swift).
//! - [`stacks`]: Heat stacks created idempotently, waited for, deleted.
//! - [`recover`], [`failback`], [`report`]: the flows and their timeline.

pub mod checkpoint;
pub mod daemons;
mod dryrun;
pub mod failback;
pub mod journal;
pub mod openstack;
pub mod recover;
pub mod report;
pub mod stacks;
pub mod template;

use std::path::PathBuf;

/// Errors of the orchestrator. Each names the call or step and carries the service's reason.
#[derive(Debug, thiserror::Error)]
pub enum OrchError {
    #[error("{0}")]
    Config(String),
    #[error("Keystone at {url}: {reason}")]
    Auth { url: String, reason: String },
    #[error("{call}: cannot reach the service: {reason}")]
    Unreachable { call: String, reason: String },
    #[error("{call}: HTTP {status}: {message}")]
    Api {
        call: String,
        status: u16,
        message: String,
    },
    #[error("{call}: unexpected answer: {reason}")]
    BadAnswer { call: String, reason: String },
    #[error("volume {resource} ({id}) went to {status} in Cinder: {reason}")]
    Import {
        resource: String,
        id: String,
        status: String,
        reason: String,
    },
    #[error("stack {stack} ({id}) is {status}: {reason}")]
    Stack {
        stack: String,
        id: String,
        status: String,
        reason: String,
    },
    #[error("{call}: {reason}")]
    Daemon { call: String, reason: String },
    #[error("template: {0}")]
    Template(String),
    #[error("journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("checkpoint store: {0}")]
    Store(#[from] crate::stream::StreamError),
}

/// What site-failure detection says of a plan's old primary site (see [`primary_known_down`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryDown {
    /// This site's nodes hold the lease of every resource of the plan: the old primary's
    /// leases expired in etcd (a majority agreed) while its site was suspected.
    Known(String),
    /// No node of the plan runs `[detect]`: only the admin's `--confirm-primary-down` says so.
    NoDetection,
    /// Detection runs and the lease of a resource is not held here: the old primary site is
    /// not known to be down. `elsewhere`: a lease is held by another node (the admin's word
    /// cannot override that; a free lease the admin's promotion takes).
    NotHere { why: String, elsewhere: bool },
}

/// Site-failure detection's answer for a plan: asks the daemon of every member (this site's
/// node of each resource) for `detect.status` and looks for the resource's scope held by that
/// member's node. All held: [`PrimaryDown::Known`]; no member runs detection:
/// [`PrimaryDown::NoDetection`]; otherwise [`PrimaryDown::NotHere`] naming each lease that is
/// not held here and who holds it.
pub async fn primary_known_down(members: &[daemons::Member]) -> Result<PrimaryDown, OrchError> {
    let (mut held, mut not_here, mut without) = (Vec::new(), Vec::new(), 0usize);
    let mut elsewhere = false;
    for m in members {
        let st = match daemons::call(m, "detect.status", serde_json::json!({})).await {
            Ok(v) => v,
            Err(OrchError::Daemon { reason, .. })
                if reason.contains("detection is not configured") =>
            {
                without += 1;
                not_here.push(format!("{} on {} runs no [detect]", m.resource, m.node));
                continue;
            }
            Err(e) => return Err(e),
        };
        let scope = st
            .get("scopes")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|s| s.get("scope").and_then(|v| v.as_str()) == Some(&m.resource))
            });
        let holder = scope
            .and_then(|s| s.get("holder"))
            .and_then(serde_json::Value::as_str);
        let mine = scope
            .and_then(|s| s.get("held_by_me"))
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        match (mine, holder) {
            (true, _) => held.push(format!("{} on {}", m.resource, m.node)),
            (false, Some(h)) => {
                elsewhere = true;
                not_here.push(format!(
                    "the lease of {} is held by {h}, not by {}",
                    m.resource, m.node
                ))
            }
            (false, None) if scope.is_none() => not_here.push(format!(
                "{} on {} is not a protection scope of its detection",
                m.resource, m.node
            )),
            (false, None) => not_here.push(format!(
                "the lease of {} is free (nobody took it over yet)",
                m.resource
            )),
        }
    }
    if without == members.len() && !members.is_empty() {
        return Ok(PrimaryDown::NoDetection);
    }
    if not_here.is_empty() {
        return Ok(PrimaryDown::Known(format!(
            "this site holds the lease of every resource ({})",
            held.join(", ")
        )));
    }
    Ok(PrimaryDown::NotHere {
        why: not_here.join("; "),
        elsewhere,
    })
}
