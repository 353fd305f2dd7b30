//! Snapshots of a resource, and of a consistency group at one point in time (issue 15).
//!
//! A group's snapshot pauses every volume's writes first (each volume's snapshot gate, taken in
//! volume order: a writer holds one volume's gate at a time and never waits for another's, so
//! the order cannot deadlock), then takes each volume's snapshot, then lets writes go on. While
//! every gate is held no write of any volume is in flight, so the cut is one instant for the
//! whole group: a write acknowledged before it is in every volume's snapshot, a write issued
//! after it in none. A dependent write (issued after another's reply) is therefore never in
//! the snapshot without its predecessor, whichever volumes they went to; on a Secondary the
//! receiver's epoch order makes the cut an epoch boundary plus part of the next epoch, the
//! image a crash would leave. Writes wait only for the in-flight ones and the snapshots'
//! metadata writes, as for one volume.
//!
//! Before anything is created every volume is checked (name free, room for one more), so a
//! refused group snapshot leaves no volume with a snapshot of that name.

use crate::snapshot::{SnapshotError, SnapshotInfo};

use super::Resource;

impl Resource {
    /// `drl snapshot create`: one volume's snapshot, or the group's at one point in time.
    pub async fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        if !self.is_group() {
            return self.snapshots().create(name).await;
        }
        let stores: Vec<_> = self
            .vols()
            .iter()
            .map(|v| v.dev.snapshots().clone())
            .collect();
        let mut paused = Vec::with_capacity(stores.len());
        for s in &stores {
            paused.push(s.pause_writes().await);
        }
        for s in &stores {
            s.check_create(name).await?;
        }
        let mut first = None;
        for (i, s) in stores.iter().enumerate() {
            match s.create_paused(name).await {
                Ok(info) => {
                    first.get_or_insert(info);
                }
                Err(e) => {
                    // An I/O error half-way: the volumes that have it lose it again (their
                    // tombstones keep the name), so no partial group snapshot stays live.
                    for done in &stores[..i] {
                        if let Err(d) = done.delete(name).await {
                            tracing::error!(resource = %self.name(), snapshot = name, "removing a partial group snapshot: {d}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        drop(paused);
        Ok(first.expect("a group has volumes"))
    }

    /// `drl snapshot delete`: the snapshot of every volume of the resource.
    pub async fn snapshot_delete(&self, name: &str) -> Result<(), SnapshotError> {
        for v in self.vols().iter() {
            v.dev.snapshots().delete(name).await?;
        }
        Ok(())
    }
}
