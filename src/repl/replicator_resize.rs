//! Online grow of a replicated volume (DRBD's `resize`), the replication side.
//!
//! Two sizes (DRBD's): a node's *capacity* is its configured `size`, what its backing disk
//! holds and what its Hello announces; the volume's *size* (the superblock's, DRBD's
//! last-agreed size) is the smaller of the two nodes' capacities, agreed in the handshake, so
//! a Primary never accepts a write its peer could not store.
//!
//! `drl resize RES` on a node raises its capacity ([`Replicator::raise_capacity`], the backing
//! file already extended) and drops the live session to handshake again, as a peer address
//! change does: a Primary stays Primary, what is written meanwhile is marked in the bitmap and
//! resyncs after the reconnect, nothing else does. Each handshake's agreed size is applied on
//! both nodes alike before their session starts ([`Replicator::grow_to`]): so until the second
//! node has grown, both keep the old size (status shows the two capacities); once it has,
//! both grow in the same handshake. The grown area is zero on both nodes (sparse extensions
//! of both backing files), so it needs no resync: nothing in it differs.

use std::sync::atomic::Ordering;

use crate::control::{Event, EventKind, ObjectKind};
use crate::repl::replicator::Replicator;
use crate::volume::BlockDevice;

/// The event of a size change: `change device RES size_bytes=TO from_bytes=FROM`.
pub fn size_event(name: &str, from: u64, to: u64) -> Event {
    Event::new(EventKind::Change, ObjectKind::Device, name)
        .field("size_bytes", to)
        .field("from_bytes", from)
}

impl Replicator {
    /// The volume's size now: the size both nodes agreed on, what every request is checked
    /// against.
    pub fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }

    /// This node's capacity: the `size` its Hello announces (see the module doc).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes.load(Ordering::Acquire)
    }

    /// `drl resize`: this node's capacity is now `to` (the caller grew the backing disk to
    /// it). A live session is dropped so the peer learns it in a new handshake. Returns the
    /// session counter before the change when there was a live session to wait for
    /// ([`Replicator::sync_decided_after`]); `None` if the capacity did not grow or no peer
    /// is connected (it learns the capacity at the next connect).
    pub fn raise_capacity(&self, to: u64) -> Option<u64> {
        let before = self.capacity_bytes.fetch_max(to, Ordering::AcqRel);
        if to <= before {
            return None;
        }
        let (link, session) = {
            let st = self.state();
            (st.link.clone(), st.session)
        };
        tracing::info!(resource = %self.name, capacity_bytes = to, "capacity raised: handshaking again so the peer learns it");
        let live = link.is_some();
        self.renegotiate_link(link, "the volume's size grew on this node");
        live.then_some(session)
    }

    /// After a handshake, before its session: grow the volume to `agreed`, the smaller of the
    /// two capacities (both nodes do the same). Writes pause for it (the snapshot gate every
    /// writer holds): the snapshot store's size, then the metadata with its bitmap and the
    /// bitmap in memory ([`crate::volume::bitmap::DirtyBitmap::grow`]), the activity log, and
    /// last the size requests are checked against. Returns the size before, if it grew.
    pub(crate) async fn grow_to(&self, agreed: u64) -> Result<Option<u64>, String> {
        let from = self.size_bytes();
        if agreed <= from {
            return Ok(None);
        }
        let snaps = self.pipe.snapshots().clone();
        let paused = snaps.pause_writes().await;
        snaps
            .resize(agreed, &paused)
            .await
            .map_err(|e| e.to_string())?;
        let (disk, meta, bitmap, al) = (
            self.disk.clone(),
            self.meta.clone(),
            self.bitmap.clone(),
            self.al.clone(),
        );
        let grown = tokio::task::spawn_blocking(move || -> Result<(), String> {
            bitmap.grow(agreed, &meta).map_err(|e| e.to_string())?;
            al.grow(agreed);
            disk.set_size(agreed).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(why) = grown {
            // Back to what the superblock names, so the volume stays usable as it was.
            let _ = snaps
                .resize(self.meta.superblock().size_bytes, &paused)
                .await;
            return Err(why);
        }
        drop(paused);
        tracing::info!(resource = %self.name, from_bytes = from, to_bytes = agreed, "size changed: grown online, agreed with the peer");
        self.events.publish(size_event(&self.name, from, agreed));
        Ok(Some(from))
    }
}
