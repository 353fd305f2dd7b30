//! The one write pipeline of a volume: every writer of a resource's disk goes through it, in
//! one order.
//!
//! ```text
//!  writer                         snapshot      activity log +   disk     bitmap
//!                                 preservation  dirty bits
//!  NBD client (Primary, replicated)   yes        yes (Replicator)  yes    cleared on ack
//!  NBD client (unreplicated)          yes        -                 yes    -
//!  restore into a resource            yes        as an NBD client (it writes through the device)
//!  replication receiver (Secondary)   yes        - (the Primary's bits cover an unacked write)
//!  resync target (SyncTarget)         yes        -                 yes    cleared when written
//! ```
//!
//! Snapshot preservation comes first for everyone: before a write touches a chunk the newest
//! snapshot has not preserved, the chunk's old contents are copied out and made durable
//! ([`SnapshotStore::begin_write`]); the returned guard is held until the disk write
//! completed, so a snapshot is always a cut between two writes. A snapshot on a Secondary
//! therefore keeps its point in time while replicated and resync writes arrive (before this
//! pipeline those went straight to the disk and overwrote it).
//!
//! Generic over the [`BlockDevice`] (the daemon's is [`Disk`]): the simulator (`tests/sim`)
//! runs this same pipeline over a simulated disk, so its invariant that a snapshot keeps its
//! point in time checks the production order.
//!
//! Online verify changes no data (as in DRBD), so it has no repair writer here; a repair would
//! be a resync and go through [`WritePipeline::apply`] like one.

use std::sync::Arc;

use crate::snapshot::SnapshotStore;
use crate::volume::disk::Disk;
use crate::volume::{AlignedBuf, BlockDevice, VolumeError};

/// One write, as a writer hands it to [`WritePipeline::apply`].
#[derive(Debug)]
pub enum Write {
    Data { data: AlignedBuf, fua: bool },
    Trim { len: u32, fua: bool },
    Zeroes { len: u32, may_trim: bool, fua: bool },
}

impl Write {
    pub fn len(&self) -> u64 {
        match self {
            Write::Data { data, .. } => data.len() as u64,
            Write::Trim { len, .. } | Write::Zeroes { len, .. } => u64::from(*len),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The write pipeline of one volume (see the module doc).
pub struct WritePipeline<D: BlockDevice = Disk> {
    disk: Arc<D>,
    snaps: Arc<SnapshotStore<D>>,
}

impl<D: BlockDevice> WritePipeline<D> {
    pub fn new(disk: Arc<D>, snaps: Arc<SnapshotStore<D>>) -> Self {
        WritePipeline { disk, snaps }
    }

    pub fn disk(&self) -> &Arc<D> {
        &self.disk
    }

    pub fn snapshots(&self) -> &Arc<SnapshotStore<D>> {
        &self.snaps
    }

    /// Step one for every writer: record the change and preserve what the newest snapshot
    /// still needs of `offset..offset+len`. Hold the guard until the disk write completed.
    pub async fn preserve(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, VolumeError> {
        self.snaps.begin_write(offset, len).await
    }

    /// A write that neither replicates nor marks bits (the replication receiver, the resync
    /// target, an unreplicated volume): snapshot preservation, then the disk.
    pub async fn apply(&self, offset: u64, w: Write) -> Result<(), VolumeError> {
        let _g = self.preserve(offset, w.len()).await?;
        self.disk_write(offset, w).await
    }

    /// The disk step alone (for a caller that holds the preservation guard already).
    pub async fn disk_write(&self, offset: u64, w: Write) -> Result<(), VolumeError> {
        match w {
            Write::Data { data, fua } => self.disk.write(offset, data, fua).await,
            Write::Trim { len, fua } => {
                self.disk.trim(offset, len).await?;
                if fua {
                    self.disk.flush().await?;
                }
                Ok(())
            }
            Write::Zeroes { len, may_trim, fua } => {
                self.disk.write_zeroes(offset, len, may_trim, fua).await
            }
        }
    }
}
