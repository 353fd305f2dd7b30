//! The device a resource's users see: the disk, with the snapshot store (and, when replicated,
//! the replicator) in its write path.
//!
//! Write path order ([`WritePipeline`], which the replication receiver and the resync target
//! take too): snapshot preservation (records the change, preserves old data for the newest
//! snapshot, holds the snapshot gate) -> the disk write, or for a replicated resource the
//! replicator's write (activity log, dirty bits, local write + enqueue to the peer). The guard
//! is held until the write completed, so a snapshot is always taken between two writes.
//!
//! A replicated resource accepts user writes only while Primary (a DRBD Secondary cannot be
//! written); it is exported read-only otherwise, unless auto-promote (`super::autopromote`)
//! would promote it at a client's first write.
//!
//! With `[detect]`, a replicated resource's writes and flushes also pass its self-fencing gate
//! (`detect::fence`), before they start and again before they are acknowledged. Without it the
//! gate is unset and costs one atomic load.

use std::sync::{Arc, OnceLock};

use crate::detect::fence::Fence;

use super::autopromote::AutoPromote;

use crate::pipeline::{Write, WritePipeline};
use crate::repl::core::VolumeId;
use crate::repl::replicator::{Replicator, WriteOp};
use crate::snapshot::SnapshotStore;
use crate::volume::disk::Disk;
use crate::volume::{check_range, AlignedBuf, BlockDevice, VolumeError};

pub struct ResourceDevice {
    /// Which volume of the resource this device is (0 unless the resource is a group).
    vol: VolumeId,
    disk: Arc<Disk>,
    pipe: Arc<WritePipeline>,
    repl: Option<Arc<Replicator>>,
    fence: OnceLock<Arc<Fence>>,
    /// Shared by every volume of a group: the role is the resource's.
    auto: Option<Arc<AutoPromote>>,
}

impl ResourceDevice {
    /// `auto_promote`: promote a replicated Secondary at an NBD client's first write (see
    /// `super::autopromote`).
    pub fn new(
        pipe: Arc<WritePipeline>,
        repl: Option<Arc<Replicator>>,
        auto_promote: bool,
    ) -> Self {
        let auto = repl
            .as_ref()
            .filter(|_| auto_promote)
            .map(|r| AutoPromote::new(r.clone()));
        ResourceDevice {
            vol: VolumeId(0),
            disk: pipe.disk().clone(),
            pipe,
            repl,
            fence: OnceLock::new(),
            auto,
        }
    }

    /// The device of volume `vol` of the same resource (a consistency group): its own disk
    /// and pipeline, the same replicator (one write order) and auto-promote (one role).
    /// Its fence is set with [`Self::set_fence`] like volume 0's.
    pub fn for_volume(&self, vol: VolumeId, pipe: Arc<WritePipeline>) -> Self {
        ResourceDevice {
            vol,
            disk: pipe.disk().clone(),
            pipe,
            repl: self.repl.clone(),
            // A volume added at run time gets the fence volume 0 already has.
            fence: self
                .fence
                .get()
                .cloned()
                .map_or_else(OnceLock::new, OnceLock::from),
            auto: self.auto.clone(),
        }
    }

    /// Whether users may write now, without a promotion (a restore into the resource needs
    /// this; only NBD writers auto-promote).
    pub fn writable_now(&self) -> bool {
        self.writable()
    }

    /// Run auto-promote's check before a write (a no-op when Primary or without it).
    async fn promoted(&self) -> Result<(), VolumeError> {
        match &self.auto {
            Some(a) => a.ensure_primary().await,
            None => Ok(()),
        }
    }

    fn writable(&self) -> bool {
        match &self.repl {
            Some(r) => r.role() == drbd_compat::Role::Primary,
            None => !self.disk.read_only(),
        }
    }

    /// Put the self-fencing gate in front of writes (once, at start, before the export).
    pub fn set_fence(&self, fence: Arc<Fence>) {
        let _ = self.fence.set(fence);
    }

    /// The resource is stopping: auto-promote changes no role from now on.
    pub fn stop_auto_promote(&self) {
        if let Some(a) = &self.auto {
            a.stop();
        }
    }

    /// With `[detect]`: auto-promote needs the resource's lease.
    pub fn set_lease_scope(&self, scope: Arc<crate::detect::lease::Scope>) {
        if let Some(a) = &self.auto {
            a.set_scope(scope);
        }
    }

    /// The gate, if `[detect]` set one: writes and acknowledgements wait or fail there.
    async fn fenced(&self) -> Result<(), VolumeError> {
        match self.fence.get() {
            None => Ok(()),
            Some(f) => f.admit().await,
        }
    }

    /// Run a write between the two passes of the gate.
    async fn gated(
        &self,
        w: impl std::future::Future<Output = Result<(), VolumeError>>,
    ) -> Result<(), VolumeError> {
        self.fenced().await?;
        w.await?;
        self.fenced().await
    }

    pub fn snapshots(&self) -> &Arc<SnapshotStore<Disk>> {
        self.pipe.snapshots()
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// Refuse writes to a read-only device and out-of-range requests before anything is
    /// recorded or preserved.
    fn check_write(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        if !self.writable() {
            return Err(VolumeError::ReadOnly(self.disk.name().to_owned()));
        }
        check_range(offset, len, self.disk.size_bytes())
    }
}

impl BlockDevice for ResourceDevice {
    fn name(&self) -> &str {
        self.disk.name()
    }

    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }

    fn read_only(&self) -> bool {
        !self.writable() && !self.auto.as_ref().is_some_and(|a| a.could_promote())
    }

    fn writer_joined(&self) {
        if let Some(a) = &self.auto {
            a.writer_joined();
        }
    }

    fn writer_left(&self) {
        if let Some(a) = &self.auto {
            a.writer_left();
        }
    }

    fn min_block_bytes(&self) -> u32 {
        self.disk.min_block_bytes()
    }

    fn batched<R>(&self, f: impl FnOnce() -> R) -> R {
        self.disk.batched(f)
    }

    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        self.disk.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), VolumeError> {
        self.promoted().await?;
        self.check_write(offset, data.len() as u64)?;
        self.gated(async {
            let _g = self.pipe.preserve(offset, data.len() as u64).await?;
            match &self.repl {
                Some(r) => r.write_to(self.vol, offset, WriteOp::Data(data), fua).await,
                None => {
                    self.pipe
                        .disk_write(offset, Write::Data { data, fua })
                        .await
                }
            }
        })
        .await
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.gated(async {
            match &self.repl {
                Some(r) => r.flush(self.vol).await,
                None => self.disk.flush().await,
            }
        })
        .await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        self.promoted().await?;
        self.check_write(offset, u64::from(len))?;
        self.gated(async {
            let _g = self.pipe.preserve(offset, u64::from(len)).await?;
            match &self.repl {
                Some(r) => {
                    r.write_to(self.vol, offset, WriteOp::Trim(len), false)
                        .await
                }
                None => {
                    let w = Write::Trim { len, fua: false };
                    self.pipe.disk_write(offset, w).await
                }
            }
        })
        .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.promoted().await?;
        self.check_write(offset, u64::from(len))?;
        self.gated(async {
            let _g = self.pipe.preserve(offset, u64::from(len)).await?;
            match &self.repl {
                Some(r) => {
                    r.write_to(self.vol, offset, WriteOp::Zeroes { len, may_trim }, fua)
                        .await
                }
                None => {
                    let w = Write::Zeroes { len, may_trim, fua };
                    self.pipe.disk_write(offset, w).await
                }
            }
        })
        .await
    }
}
