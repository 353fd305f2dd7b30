//! `drl resize RES` (DRBD's `resize`) and the `size` change of `drl adjust`: change the size
//! of a running volume to the `size` its config now says, while it is in use.
//!
//! Grow: writes are paused for the change (the snapshot gate: every write in flight finishes,
//! new ones wait a few milliseconds), then, in this order, the snapshot store's index, the
//! backing file (extended sparse: the new area reads zero and needs no sync), the metadata
//! (its bitmap area grows with the file, the superblock names the new size last:
//! [`crate::volume::meta::MetaFile::set_size`]) and the usable size the device checks every
//! request against. NBD clients see the new size on their next connection (the size is
//! advertised per connection; the protocol has no resize notice). A Primary stays Primary.
//!
//! Shrink: refused unless `--allow-shrink`, and then only when the tail is unused: with
//! writes paused, `SEEK_DATA` from the new end of the backing file must find nothing (a hole
//! holds no data; a block device or a file system without `SEEK_DATA` cannot tell, so it is
//! refused). Then the same steps, the file cut last. Data is never lost silently.
//!
//! A replicated resource grows DRBD's way (the volume's size is the smaller of the two nodes'
//! capacities): here its backing file is extended (it must be a hole past the current end, so
//! the new area is zero on this node as on the peer and needs no resync) and its capacity
//! raised; the replication handshakes again and both nodes grow once both have
//! (`crate::repl::replicator` `replicator_resize.rs`). `drl resize` waits for that handshake
//! and says whether the volume grew or waits for the peer. A replicated volume never shrinks.
//!
//! Not yet: a resource with snapshots (their change sets and COW maps are sized for the
//! volume they were taken of), and a consistency group or one of its volumes (`RES/N`; see
//! [`refuse_volume`]): refused with the reason.

use std::sync::Arc;

use super::resource::Resource;
use super::Node;
use crate::config::{self, units::format_bytes};
use crate::repl::replicator::{size_event, Replicator};
use crate::volume::BlockDevice;

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resized {
    Unchanged(u64),
    Grown {
        from: u64,
        to: u64,
    },
    Shrunk {
        from: u64,
        to: u64,
    },
    /// A replicated volume: this node's capacity was raised, the volume keeps `size` until
    /// the peer's capacity (`peer`, if known) has grown too.
    Pending {
        size: u64,
        capacity: u64,
        peer: Option<u64>,
    },
}

impl std::fmt::Display for Resized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Resized::Unchanged(s) => write!(f, "size unchanged ({})", format_bytes(s)),
            Resized::Grown { from, to } => write!(
                f,
                "size changed: grown online from {} to {}",
                format_bytes(from),
                format_bytes(to)
            ),
            Resized::Shrunk { from, to } => write!(
                f,
                "size changed: shrunk online from {} to {}",
                format_bytes(from),
                format_bytes(to)
            ),
            Resized::Pending {
                size,
                capacity,
                peer,
            } => write!(
                f,
                "size change pending: this node now holds {}, the volume stays {} until the peer has grown too (peer: {}); raise `size` there and run drl resize (or drl adjust) there",
                format_bytes(capacity),
                format_bytes(size),
                peer.map_or("not connected".to_owned(), format_bytes),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("no resource {0:?} is up on this node")]
    NotUp(String),
    #[error("resource {0:?} is up but no longer in the config file (drl adjust takes it down)")]
    NotInConfig(String),
    #[error("resource {name}: shrinking from {from} to {to} bytes refused: pass --allow-shrink (DRBD's resize refuses it too), and only an unused tail is cut")]
    ShrinkNotAllowed { name: String, from: u64, to: u64 },
    #[error("resource {name}: shrinking to {to} bytes refused: the backing disk holds data past byte {to} (SEEK_DATA); nothing was changed")]
    TailInUse { name: String, to: u64 },
    #[error("resource {name}: shrinking refused: {why}; nothing was changed")]
    TailUnknown { name: String, why: &'static str },
    #[error("resource {name}: a replicated volume does not shrink (from {from} to {to} bytes); nothing was changed")]
    ReplicatedShrink { name: String, from: u64, to: u64 },
    #[error("resource {name}: growing refused: {why}; nothing was changed")]
    ReplicatedTail { name: String, why: String },
    #[error("resource {name}: {source}; nothing was changed")]
    Snapshots {
        name: String,
        #[source]
        source: crate::snapshot::SnapshotError,
    },
    #[error("resource {name}: resize to {to} bytes failed: {why}")]
    Failed { name: String, to: u64, why: String },
    #[error("{0}")]
    Group(String),
}

/// Resize resource `name` to the `size` of the config file (see the module doc). `RES/N`
/// (DRBD's `res/vol`) names volume N of a consistency group: refused for now, with the reason
/// ([`refuse_volume`]).
pub async fn resize(node: &Node, name: &str, allow_shrink: bool) -> Result<Resized, ResizeError> {
    let new = config::load(&node.config.file, &node.config.node)?;
    let _one = node.lifecycle.lock().await;
    if let Some((group, vol)) = name.split_once('/') {
        let res = node
            .resource(group)
            .ok_or_else(|| ResizeError::NotUp(group.to_owned()))?;
        return Err(ResizeError::Group(refuse_volume(&res, vol)));
    }
    let res = node
        .resource(name)
        .ok_or_else(|| ResizeError::NotUp(name.to_owned()))?;
    let cfg = new
        .resource(name)
        .ok_or_else(|| ResizeError::NotInConfig(name.to_owned()))?;
    resize_locked(&res, cfg.size_bytes, allow_shrink).await
}

/// Why `drl resize RES/VOL` is refused. A group's volumes are checked in one handshake: its
/// Hello carries every volume's size and a differing set is refused on both sides, while the
/// one-volume grow relies on the handshake agreeing the smaller of two capacities. Growing one
/// volume needs a capacity per volume in the Hello and an agreed size per volume applied
/// before the session (each volume's snapshot store, bitmap, AL and size, as
/// `Replicator::grow_to` does for volume 0): not built yet.
fn refuse_volume(res: &Resource, vol: &str) -> String {
    let name = res.name();
    if !res.is_group() {
        return format!("{name} is a one-volume resource: drl resize {name}");
    }
    match vol.parse::<usize>() {
        Ok(v) if v < res.volume_devices().len() => format!(
            "{name}: resizing volume {v} of a consistency group is not built yet (issue 15): \
             the group's handshake compares every volume's size and refuses a differing set, \
             so one volume cannot grow on one node before the other; nothing was changed"
        ),
        _ => format!(
            "{name} has no volume {vol:?} (volumes 0..{})",
            res.volume_devices().len()
        ),
    }
}

/// Resize a running resource to `to` bytes; the caller holds the node's lifecycle lock.
pub async fn resize_locked(
    res: &Arc<Resource>,
    to: u64,
    allow_shrink: bool,
) -> Result<Resized, ResizeError> {
    let name = res.name().to_owned();
    let from = res.disk().size_bytes();
    if to == from {
        return Ok(Resized::Unchanged(from));
    }
    res.refuse_group("resizing").map_err(ResizeError::Group)?;
    if let Some(rep) = res.replicator() {
        return grow_replicated(res, rep, to).await;
    }
    if to < from && !allow_shrink {
        return Err(ResizeError::ShrinkNotAllowed { name, from, to });
    }
    let snaps = res.snapshots();
    let paused = snaps.pause_writes().await;
    if to < from {
        match res.disk().tail_has_data(to) {
            Ok(Some(false)) => {}
            Ok(Some(true)) => return Err(ResizeError::TailInUse { name, to }),
            Ok(None) => {
                return Err(ResizeError::TailUnknown {
                    name,
                    why: "the backing disk cannot say where its data is (a block device, or no SEEK_DATA)",
                })
            }
            Err(e) => {
                return Err(ResizeError::Failed {
                    name,
                    to,
                    why: e.to_string(),
                })
            }
        }
    }
    snaps
        .resize(to, &paused)
        .await
        .map_err(|source| ResizeError::Snapshots {
            name: name.clone(),
            source,
        })?;
    let result = {
        let (disk, meta) = (res.disk().clone(), res.meta().clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Grow: the file, then the metadata, then the usable size (set_size grows the file
            // before it raises the size). Shrink: the usable size, the metadata, the file cut.
            disk.set_size(to).map_err(|e| e.to_string())?;
            meta.set_size(to).map_err(|e| e.to_string())?;
            if to < from {
                disk.cut_backing(to).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
    };
    if let Err(why) = result {
        // Back to the size the metadata names, so the volume stays usable as it was.
        let back = res.meta().superblock().size_bytes;
        let _ = res.disk().set_size(back);
        let _ = snaps.resize(back, &paused).await;
        return Err(ResizeError::Failed { name, to, why });
    }
    drop(paused);
    let done = if to > from {
        Resized::Grown { from, to }
    } else {
        Resized::Shrunk { from, to }
    };
    tracing::info!(resource = %name, from_bytes = from, to_bytes = to, "{done}");
    res.events().publish(size_event(&name, from, to));
    Ok(done)
}

/// `drl resize` of a replicated resource: raise this node's capacity to `to` and wait for the
/// handshake that tells the peer (see the module doc).
async fn grow_replicated(
    res: &Arc<Resource>,
    rep: &Arc<Replicator>,
    to: u64,
) -> Result<Resized, ResizeError> {
    let name = res.name().to_owned();
    let from = rep.size_bytes();
    let capacity = rep.capacity_bytes();
    if to < from.max(capacity) {
        return Err(ResizeError::ReplicatedShrink {
            name,
            from: from.max(capacity),
            to,
        });
    }
    if to > capacity {
        let entries = res.snapshots().chain().await.len();
        if entries > 0 {
            let source = crate::snapshot::SnapshotError::HasSnapshots {
                resource: name.clone(),
                entries,
            };
            return Err(ResizeError::Snapshots { name, source });
        }
        // The grown area needs no resync only if it is zero here as on the peer: a hole.
        let why = match res.disk().tail_has_data(from) {
            Ok(Some(false)) => None,
            Ok(Some(true)) => Some(format!(
                "the backing file holds data past the volume's end (byte {from}); the grown area would differ from the peer's"
            )),
            Ok(None) => Some("the backing disk cannot say whether the area past the volume's end is zero (a block device, or no SEEK_DATA)".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            return Err(ResizeError::ReplicatedTail { name, why });
        }
        let disk = res.disk().clone();
        tokio::task::spawn_blocking(move || disk.reserve(to))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|why| ResizeError::Failed {
                name: name.clone(),
                to,
                why,
            })?;
        if let Some(session) = rep.raise_capacity(to) {
            rep.sync_decided_after(session).await;
        }
    }
    let size = rep.size_bytes();
    if size >= to {
        return Ok(if size > from {
            Resized::Grown { from, to: size }
        } else {
            Resized::Unchanged(size)
        });
    }
    let peer = rep.state().peer_size_bytes;
    Ok(Resized::Pending {
        size,
        capacity: to,
        peer,
    })
}
