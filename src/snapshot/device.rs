//! A snapshot as a read-only [`BlockDevice`], for streaming, restore checks and NBD export.

use std::sync::Arc;

use super::SnapshotStore;
use crate::volume::{AlignedBuf, BlockDevice, VolumeError};

pub struct SnapshotDevice<D: BlockDevice> {
    store: Arc<SnapshotStore<D>>,
    snapshot: String,
    label: String,
}

impl<D: BlockDevice> SnapshotDevice<D> {
    pub fn new(store: Arc<SnapshotStore<D>>, snapshot: &str) -> Self {
        let label = format!("{}@{snapshot}", store.device().name());
        SnapshotDevice {
            store,
            snapshot: snapshot.to_owned(),
            label,
        }
    }

    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }
}

impl<D: BlockDevice> BlockDevice for SnapshotDevice<D> {
    fn name(&self) -> &str {
        &self.label
    }

    fn size_bytes(&self) -> u64 {
        self.store.device().size_bytes()
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        self.store.read(&self.snapshot, offset, len).await
    }

    async fn write(&self, _offset: u64, _data: AlignedBuf, _fua: bool) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly(self.label.clone()))
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly(self.label.clone()))
    }

    async fn write_zeroes(
        &self,
        _offset: u64,
        _len: u32,
        _may_trim: bool,
        _fua: bool,
    ) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly(self.label.clone()))
    }
}
