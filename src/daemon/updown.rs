//! `drl up RES` and `drl down RES` (DRBD's names): bring one resource up or down while the
//! daemon and its other resources run; `drl adjust` uses the same two for resources added to
//! or removed from the config.
//!
//! Up: the resource's section is read from the config file the daemon was started with (so
//! `up` of a resource added to the file needs no restart), its files are claimed and checked
//! exactly as at a start (a refusal changes nothing), it is opened (replicated: Secondary, as
//! after every start), detection puts its fence in front of its writes, then its replication
//! and NBD export start.
//!
//! Down: refused while the resource is in use, naming the users: NBD clients in transmission
//! (a Secondary would fail their writes; DRBD: "held open") and the daemon's jobs on it (a
//! restore writes into it, a stream reads its snapshots). A Primary with no user is demoted
//! first (DRBD's `down` is `secondary`, `disconnect`, `detach`), and with `[detect]` its lease
//! is given back; the peer is told (`Disconnect`), the export stops and drains, the disk is
//! flushed and the metadata marked clean, and the files' locks are released.

use std::sync::Arc;

use crate::config::{self, ResourceConfig};
use crate::control::{Event, EventKind, ObjectKind};
use crate::repl::replicator::ReplError;

use super::{Node, Resource};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no resource {name:?} in {file} for node {node}")]
    NotInConfig {
        name: String,
        file: String,
        node: String,
    },
    #[error("resource {0} is not up")]
    NotUp(String),
    #[error("{0}")]
    InUse(String),
    #[error("the config file does not load, nothing changed: {0}")]
    Config(#[from] config::ConfigError),
    #[error("resource {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: super::resource::ResourceError,
    },
    #[error("resource {name}: demoting it before down: {source}")]
    Demote {
        name: String,
        #[source]
        source: ReplError,
    },
}

/// What `up` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    Started,
    AlreadyUp,
}

/// `drl up RES`: the resource as the config file says now.
pub async fn up(node: &Node, name: &str) -> Result<Up, LifecycleError> {
    let _one = node.lifecycle.lock().await;
    if node.resource(name).is_some() {
        return Ok(Up::AlreadyUp);
    }
    let fresh = config::load(&node.config.file, &node.config.node)?;
    let rc = fresh
        .resource(name)
        .ok_or_else(|| LifecycleError::NotInConfig {
            name: name.to_owned(),
            file: node.config.file.display().to_string(),
            node: node.config.node.clone(),
        })?;
    up_locked(node, rc).await.map(|()| Up::Started)
}

/// Bring `rc` up; the caller holds the lifecycle lock and checked it is not up.
pub(super) async fn up_locked(node: &Node, rc: &ResourceConfig) -> Result<(), LifecycleError> {
    let open_err = |source| LifecycleError::Open {
        name: rc.name.clone(),
        source,
    };
    let claimed = super::Claimed::take(rc).map_err(open_err)?;
    let r = super::open_on_shard(
        &node.shards,
        rc,
        &node.config.node,
        &node.events,
        claimed,
        &node.shaping,
    )
    .await
    .map_err(open_err)?;
    // Before the export starts: the fence must stand in front of the first write.
    if let Some(d) = &node.detect {
        r.protect(d);
    }
    if let Err(e) = r.start(node.shutdown.clone(), &node.nbd_budget).await {
        close(node, &r).await;
        return Err(open_err(e));
    }
    node.resources
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(r.clone());
    tracing::info!(resource = %rc.name, "resource up");
    let mut ev = Event::new(EventKind::Create, ObjectKind::Resource, &rc.name)
        .field("role", r.status_json()["role"].clone())
        .field("disk", r.status_json()["disk"].clone());
    if let Some(p) = &rc.peer {
        ev = ev.field("peer", p.node.clone());
    }
    node.events.publish(ev);
    Ok(())
}

/// `drl down RES`.
pub async fn down(node: &Node, name: &str) -> Result<(), LifecycleError> {
    let _one = node.lifecycle.lock().await;
    down_locked(node, name).await
}

/// Why `name` cannot go down now, naming every user; None when nothing uses it.
pub(super) fn in_use(node: &Node, r: &Resource) -> Option<String> {
    let mut why = Vec::new();
    if let Err(e) = r.refuse_if_held_open("taking it down") {
        why.push(e);
    }
    let jobs = node.jobs.running_on(r.name());
    if !jobs.is_empty() {
        why.push(format!(
            "{}: job{} running on it: {} (wait for {} or cancel with drl job cancel)",
            r.name(),
            if jobs.len() == 1 { "" } else { "s" },
            jobs.join(", "),
            if jobs.len() == 1 { "it" } else { "them" },
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Take `name` down; the caller holds the lifecycle lock.
pub(super) async fn down_locked(node: &Node, name: &str) -> Result<(), LifecycleError> {
    let r = node
        .resource(name)
        .ok_or_else(|| LifecycleError::NotUp(name.to_owned()))?;
    if let Some(why) = in_use(node, &r) {
        return Err(LifecycleError::InUse(why));
    }
    if let Some(rep) = r.replicator() {
        if rep.role() == drbd_compat::Role::Primary {
            rep.secondary()
                .await
                .map_err(|source| LifecycleError::Demote {
                    name: name.to_owned(),
                    source,
                })?;
            super::rpc_detect::after_demotion(node, name).await;
        }
        rep.disconnect().await;
    }
    node.resources
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|x| !Arc::ptr_eq(x, &r));
    close(node, &r).await;
    tracing::info!(resource = %name, "resource down");
    node.events
        .publish(Event::new(EventKind::Destroy, ObjectKind::Resource, name));
    Ok(())
}

/// Stop the resource's tasks, close it (flush, clean metadata, locks released), forget its
/// detection scope.
async fn close(node: &Node, r: &Resource) {
    r.stop_tasks().await;
    if let Err(e) = r.close().await {
        tracing::error!(resource = r.name(), "closing: {e}");
    }
    if let Some(d) = &node.detect {
        d.remove_scope(r.name());
    }
}
