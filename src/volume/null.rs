//! The null volume, for benchmarks only: writes are discarded, reads return zeroes.
//!
//! `drl serve-null` serves it over drl's own NBD server, so a benchmark can measure what the
//! transport alone costs (socket, parsing, replies, task wakeups) with no disk behind it: the
//! ceiling the real write path is judged against (`scripts/bench-nbd.sh`, the `null` row, beside
//! qemu-storage-daemon's `null-co` driver). Nothing written to it is kept; it holds no data and
//! allocates nothing per request except the buffers the NBD server itself hands it.

use super::{check_range, AlignedBuf, BlockDevice, VolumeError};

/// A volume of `size` bytes that keeps nothing.
#[derive(Debug)]
pub struct NullDevice {
    name: String,
    size: u64,
}

impl NullDevice {
    pub fn new(name: &str, size: u64) -> Self {
        NullDevice {
            name: name.into(),
            size,
        }
    }
}

impl BlockDevice for NullDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        check_range(offset, len as u64, self.size)?;
        Ok(AlignedBuf::zeroed(len as usize))
    }

    async fn write(&self, offset: u64, data: AlignedBuf, _fua: bool) -> Result<(), VolumeError> {
        check_range(offset, data.len() as u64, self.size)
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        check_range(offset, len as u64, self.size)
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _may_trim: bool,
        _fua: bool,
    ) -> Result<(), VolumeError> {
        check_range(offset, len as u64, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_zeroes_discards_writes_and_checks_ranges() {
        let d = NullDevice::new("n", 1 << 20);
        d.write(0, AlignedBuf::from_slice(&[7u8; 4096]), true)
            .await
            .unwrap();
        assert!(d.read(0, 4096).await.unwrap().iter().all(|&b| b == 0));
        assert!(matches!(
            d.write((1 << 20) - 512, AlignedBuf::zeroed(4096), false)
                .await,
            Err(VolumeError::OutOfRange { .. })
        ));
        assert!(d.read(u64::MAX - 1, 4096).await.is_err());
    }
}
