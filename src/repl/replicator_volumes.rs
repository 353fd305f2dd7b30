//! The volumes of a replicated resource: one for a one-volume resource, several for a
//! consistency group (issue 15). Each has its own disk, write pipeline, metadata, dirty bitmap
//! and activity log; one session, one link and one epoch tracker carry them all. Offsets of a
//! group's volumes meet in one address space ([`VolumeId::group_offset`]): the tracker, resync
//! and verify requests use it, volume 0's offsets are plain. Events about a group's devices
//! and peer devices name the volume, one per volume ([`Replicator::publish_per_volume`]).

use std::sync::Arc;

use super::Replicator;
use crate::control::{Event, ObjectKind};
use crate::pipeline::WritePipeline;
use crate::repl::core::VolumeId;
use crate::volume::activity_log::ActivityLog;
use crate::volume::bitmap::DirtyBitmap;
use crate::volume::disk::Disk;
use crate::volume::meta::MetaFile;
use crate::volume::{BlockDevice, VolumeError};

/// One volume's parts on this node: its disk behind its write pipeline, its metadata, dirty
/// bitmap and activity log. A consistency group (issue 15) has one per volume; volume 0's
/// metadata also holds the resource's role, disk state and generations.
pub struct VolumeParts {
    pub disk: Arc<Disk>,
    pub pipe: Arc<WritePipeline>,
    pub meta: Arc<MetaFile>,
    pub bitmap: Arc<DirtyBitmap>,
    pub al: Arc<ActivityLog>,
    /// The ranges of this volume's writes in flight on the Primary: an overlapping write waits
    /// (`super::overlap`).
    pub(crate) writing: crate::repl::overlap::WritingRanges,
}

impl VolumeParts {
    /// Write this volume's changed bitmap pages to its metadata (blocking I/O off the
    /// runtime).
    pub(crate) async fn persist_bitmap(&self) -> Result<(), String> {
        let (bm, meta) = (self.bitmap.clone(), self.meta.clone());
        tokio::task::spawn_blocking(move || bm.flush_to(&meta))
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn new(
        pipe: Arc<WritePipeline>,
        meta: Arc<MetaFile>,
        bitmap: Arc<DirtyBitmap>,
        al: Arc<ActivityLog>,
    ) -> VolumeParts {
        VolumeParts {
            disk: pipe.disk().clone(),
            pipe,
            meta,
            bitmap,
            al,
            writing: Default::default(),
        }
    }
}

impl Replicator {
    /// The volume list, read-locked (a poisoned lock still holds a consistent list: volumes
    /// are only ever appended).
    fn vols_locked(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<VolumeParts>>> {
        self.vols.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every volume's parts, in number order (a snapshot: `drl adjust` may add one later).
    pub(crate) fn vols(&self) -> Vec<Arc<VolumeParts>> {
        self.vols_locked().clone()
    }

    /// Volume `v`'s parts (volume 0 for a one-volume resource).
    pub(crate) fn vol(&self, v: VolumeId) -> Result<Arc<VolumeParts>, VolumeError> {
        let vols = self.vols_locked();
        vols.get(usize::from(v.0))
            .cloned()
            .ok_or_else(|| VolumeError::Io {
                name: self.name.clone(),
                what: "volume",
                source: std::io::Error::other(format!(
                    "volume {} of a resource of {} volume(s)",
                    v.0,
                    vols.len()
                )),
            })
    }

    /// The number of volumes on this node.
    pub fn volume_count(&self) -> usize {
        self.vols_locked().len()
    }

    /// A volume added at run time (`drl adjust`, issue 15): the next number, its parts opened
    /// with every block out of sync. A running session announces it to the peer at a barrier
    /// (if this node is Primary) and syncs it; until then its writes only mark its bitmap.
    pub fn add_volume(&self, parts: VolumeParts) {
        self.vols
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(parts));
        self.wake.notify_waiters();
    }

    /// Whether the resource is a consistency group (more than one volume).
    pub fn is_group(&self) -> bool {
        self.volume_count() > 1
    }

    /// Write every volume's changed bitmap pages to its metadata.
    pub(crate) async fn persist_bitmaps(&self) -> Result<(), String> {
        for (n, v) in self.vols().iter().enumerate() {
            v.persist_bitmap()
                .await
                .map_err(|e| match self.is_group() {
                    true => format!("volume {n}: {e}"),
                    false => e,
                })?;
        }
        Ok(())
    }

    /// Publish an event about a `device` or `peer-device` (DRBD's per-volume objects): for a
    /// one-volume resource `ev` as it is; for a group one per volume, naming it
    /// ([`Event::volume`]), a `peer-device` one with that volume's `out_of_sync_bytes`, each
    /// passed through `per` (which adds what else is the volume's own).
    pub(crate) fn publish_per_volume(&self, ev: Event, per: impl Fn(usize, Event) -> Event) {
        if !self.is_group() {
            self.events.publish(ev);
            return;
        }
        for (v, parts) in self.vols().iter().enumerate() {
            let mut e = ev.clone().volume(v as u16);
            if e.object == ObjectKind::PeerDevice {
                e = e.field("out_of_sync_bytes", parts.bitmap.dirty_bytes());
            }
            self.events.publish(per(v, e));
        }
    }

    /// Each volume's resync progress in percent (one decimal) against its out-of-sync bytes
    /// when the resync started; a volume with nothing to resync is done.
    pub(crate) fn volume_resync_percent(&self) -> Vec<f64> {
        let totals = self.state().resync_volume_total_bytes.clone();
        self.vols()
            .iter()
            .enumerate()
            .map(|(v, p)| match totals.get(v).copied().unwrap_or(0) {
                0 => 100.0,
                total => {
                    let done = total.saturating_sub(p.bitmap.dirty_bytes());
                    (done as f64 * 1000.0 / total as f64).round() / 10.0
                }
            })
            .collect()
    }

    /// Out-of-sync bytes of every volume together.
    pub fn out_of_sync_bytes(&self) -> u64 {
        self.vols().iter().map(|v| v.bitmap.dirty_bytes()).sum()
    }

    /// The bitmaps of volumes 1.. ([`crate::repl::core::Ctx::group_bitmaps`]).
    ///
    /// Called for every step of the session (every frame and completion): it reads the
    /// volumes under the lock rather than cloning the list first, so a one-volume resource
    /// allocates nothing here.
    pub(crate) fn group_bitmaps(&self) -> Vec<Arc<DirtyBitmap>> {
        self.vols_locked()[1..]
            .iter()
            .map(|v| v.bitmap.clone())
            .collect()
    }

    /// The volume of an offset in the group's address space ([`VolumeId::of_group_offset`]):
    /// its parts, the offset in it and its size; None for a volume the resource lacks.
    pub(crate) fn group_range(&self, offset: u64) -> Option<(Arc<VolumeParts>, u64, u64)> {
        let (vol, local) = VolumeId::of_group_offset(offset);
        let parts = self.vol(vol).ok()?;
        let size = match vol.0 {
            0 => self.size_bytes(),
            _ => parts.disk.size_bytes(),
        };
        Some((parts, local, size))
    }

    /// The bytes of every volume together (what a verify run walks).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.volume_sizes().iter().sum()
    }

    /// Every volume's size, volume 0's being the agreed one ([`Self::size_bytes`]).
    pub(crate) fn volume_sizes(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.vols().iter().map(|v| v.disk.size_bytes()).collect();
        s[0] = self.size_bytes();
        s
    }
}
