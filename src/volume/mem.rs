//! A RAM-backed [`BlockDevice`] for tests, benchmarks and demos (not for data anyone keeps).
//!
//! It keeps the whole volume in a `Vec<u8>` behind a mutex, checks ranges like a real device,
//! and can inject faults: a byte range whose requests fail with EIO, and a byte range whose
//! requests are delayed (to make replies complete out of order). Flushes are counted so tests
//! can see that FUA and FLUSH reached the device.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::{check_range, AlignedBuf, BlockDevice, VolumeError};

/// A volume held in memory.
#[derive(Debug)]
pub struct MemDevice {
    name: String,
    data: Mutex<Vec<u8>>,
    read_only: bool,
    min_block: u32,
    fail: Option<Range<u64>>,
    slow: Option<(Range<u64>, Duration)>,
    flushes: AtomicU64,
    fua_writes: AtomicU64,
}

impl MemDevice {
    /// A zero-filled writable device of `size` bytes.
    pub fn new(name: &str, size: usize) -> Self {
        MemDevice {
            name: name.into(),
            data: Mutex::new(vec![0; size]),
            read_only: false,
            min_block: 1,
            fail: None,
            slow: None,
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }

    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn with_min_block(mut self, min_block: u32) -> Self {
        self.min_block = min_block;
        self
    }

    /// Requests touching `range` fail with an I/O error (EIO).
    pub fn with_failing_range(mut self, range: Range<u64>) -> Self {
        self.fail = Some(range);
        self
    }

    /// Requests touching `range` take `delay` before they complete.
    pub fn with_slow_range(mut self, range: Range<u64>, delay: Duration) -> Self {
        self.slow = Some((range, delay));
        self
    }

    /// A copy of the whole volume.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Overwrite part of the volume directly (test setup).
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        self.lock()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Flushes seen so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Relaxed)
    }

    /// Writes (and write-zeroes) with FUA seen so far.
    pub fn fua_writes(&self) -> u64 {
        self.fua_writes.load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // The data stays consistent even if a holder panicked: every update is one copy.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touches(r: &Range<u64>, offset: u64, len: u64) -> bool {
        offset < r.end && offset.saturating_add(len) > r.start
    }

    /// Range check, fault injection and delay shared by every request.
    async fn enter(
        &self,
        offset: u64,
        len: u64,
        writes: bool,
    ) -> Result<Range<usize>, VolumeError> {
        if writes && self.read_only {
            return Err(VolumeError::ReadOnly(self.name.clone()));
        }
        let size = self.lock().len() as u64;
        check_range(offset, len, size)?;
        if let Some((r, delay)) = &self.slow {
            if Self::touches(r, offset, len) {
                tokio::time::sleep(*delay).await;
            }
        }
        if let Some(r) = &self.fail {
            if Self::touches(r, offset, len) {
                return Err(VolumeError::Io {
                    name: self.name.clone(),
                    what: "injected fault",
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                });
            }
        }
        Ok(offset as usize..(offset + len) as usize)
    }
}

impl BlockDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn min_block_bytes(&self) -> u32 {
        self.min_block
    }

    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        let r = self.enter(offset, len as u64, false).await?;
        Ok(AlignedBuf::from_slice(&self.lock()[r]))
    }

    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), VolumeError> {
        let r = self.enter(offset, data.len() as u64, true).await?;
        self.lock()[r].copy_from_slice(&data);
        if fua {
            self.fua_writes.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.flushes.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        let r = self.enter(offset, len as u64, true).await?;
        self.lock()[r].fill(0);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _may_trim: bool,
        fua: bool,
    ) -> Result<(), VolumeError> {
        let r = self.enter(offset, len as u64, true).await?;
        self.lock()[r].fill(0);
        if fua {
            self.fua_writes.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}
