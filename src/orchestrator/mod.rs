//! The recovery orchestrator: protection plans, the recovery journal, and the flows that bring
//! a workload back at the backup site (`drl dr recover`) and home again (`drl dr failback`).
//!
//! It runs in the CLI process at the backup site, not in a daemon. It reaches each storage
//! node's daemon through its control socket ([`daemons`]) and the backup site's cloud through
//! Keystone, Cinder and Heat ([`openstack`]). Recovery, per plan:
//!
//! ```text
//! check      refuse while a resource is Connected to its peer, or the old primary is not
//!            known to be down (--confirm-primary-down, or this node holds the lease)
//! promote    every resource, all or none (those promoted are demoted again on a failure)
//! import:R   dr.handover (metadata: tracking void; symlink into the share), Cinder
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
//! - [`recover`], [`failback`], [`report`]: the flows and their timeline.

pub mod checkpoint;
pub mod daemons;
mod dryrun;
pub mod failback;
pub mod journal;
pub mod openstack;
pub mod recover;
pub mod report;
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

/// The hook for site-failure detection: `Some(why)` when this node knows the old primary site
/// is down (it holds the lease). Until detection exists, only `--confirm-primary-down` (the
/// admin's word) says so.
pub fn primary_known_down(_plan: &str) -> Option<String> {
    None
}
