//! The backing disk of a volume, read and written through the io_uring engine.
//!
//! [`Disk`] implements [`BlockDevice`] over a file or block device opened by
//! `kernel_glue::dio::open_disk`: O_DIRECT where the file system allows it (a logged buffered
//! fallback where it does not, e.g. tmpfs). Requests aligned to the DIO alignment go straight to
//! the engine with the caller's buffer; unaligned ones are read-modify-write cycles under a
//! striped lock on their partial edge blocks, so two sub-block writes into one block never lose
//! each other's bytes.
//!
//! Durability: FUA writes carry RWF_DSYNC; `flush` is an fdatasync of the whole disk, so a flush
//! on one NBD connection covers writes completed on all of them (multi-conn is truthful).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kernel_glue::dio::{open_disk, OpenedDisk};
use kernel_glue::uring::{flags, Engine, EngineConfig};

use super::{check_range, AlignedBuf, BlockDevice, VolumeError};

/// Stripes of the read-modify-write lock (a power of two).
const RMW_STRIPES: usize = 64;

/// Counters a `status` call reports.
#[derive(Default, Debug)]
pub struct DiskStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub zeroes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub rmw_cycles: AtomicU64,
    pub errors: AtomicU64,
}

impl DiskStats {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "reads": g(&self.reads), "writes": g(&self.writes), "flushes": g(&self.flushes),
            "trims": g(&self.trims), "write_zeroes": g(&self.zeroes),
            "bytes_read": g(&self.bytes_read), "bytes_written": g(&self.bytes_written),
            "rmw_cycles": g(&self.rmw_cycles), "errors": g(&self.errors),
        })
    }
}

pub struct Disk {
    name: String,
    /// The usable size: requests past it are refused. `drl resize` changes it online
    /// ([`Disk::set_size`]); the backing file grows before the size does.
    size: AtomicU64,
    /// The backing file or device, for resizing and for finding data in a tail (the engine
    /// owns the I/O descriptor).
    backing: std::fs::File,
    /// A block device's size as found when it was opened (a file grows instead).
    device_bytes: u64,
    engine: Engine,
    direct: bool,
    /// DIO alignment in bytes (1 when buffered).
    align: u64,
    is_block_device: bool,
    read_only: AtomicBool,
    rmw_locks: Box<[tokio::sync::Mutex<()>]>,
    stats: Arc<DiskStats>,
}

impl Disk {
    /// Open (or create sparse, if missing) the backing disk of resource `name`. Its directory
    /// must exist (`volume::claim::plan` checked it).
    pub fn open(name: &str, path: &Path, size: u64, queue_depth: u32) -> Result<Disk, VolumeError> {
        let io = |what: &'static str| {
            let name = name.to_owned();
            move |source| VolumeError::Io { name, what, source }
        };
        let OpenedDisk {
            file,
            direct,
            dio_align_bytes,
            size_bytes,
            is_block_device,
        } = open_disk(path, false, Some(size)).map_err(io("opening the backing disk"))?;
        if size_bytes < size {
            if is_block_device {
                return Err(VolumeError::Invalid(format!(
                    "{}: block device has {size_bytes} bytes, the resource needs {size}",
                    path.display()
                )));
            }
            // A file shorter than the configured size grows sparse; never shrink user data.
            file.set_len(size).map_err(io("growing the backing file"))?;
        }
        let backing = file
            .try_clone()
            .map_err(io("keeping a handle on the backing disk"))?;
        let engine = Engine::new(
            file,
            EngineConfig {
                queue_depth,
                name: name.to_owned(),
            },
        )
        .map_err(io("starting the io_uring engine"))?;
        // Completions are reaped on the runtime that opens the disk (a daemon's resource opens
        // it on its home shard), whichever runtime submits.
        if let Ok(home) = tokio::runtime::Handle::try_current() {
            engine.set_home(home);
        }
        Ok(Disk {
            name: name.to_owned(),
            size: AtomicU64::new(size),
            backing,
            device_bytes: size_bytes,
            engine,
            direct,
            align: u64::from(dio_align_bytes.max(1)),
            is_block_device,
            read_only: AtomicBool::new(false),
            rmw_locks: (0..RMW_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<DiskStats> {
        self.stats.clone()
    }

    /// Reap this disk's completions on `home`'s runtime from now on (see
    /// [`Engine::set_home`]).
    pub fn set_home(&self, home: tokio::runtime::Handle) {
        self.engine.set_home(home);
    }

    pub fn direct_io(&self) -> bool {
        self.direct
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Change the usable size. Growing a file extends it sparse first (the new area reads
    /// zero); a block device must already be that large. Shrinking only lowers the size: the
    /// caller checks the tail ([`Disk::tail_has_data`]) and then cuts the file
    /// ([`Disk::cut_backing`]).
    pub fn set_size(&self, size: u64) -> Result<(), VolumeError> {
        if size > self.size() {
            self.reserve(size)?;
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Make the backing disk hold `size` bytes without changing the usable size: a shorter
    /// file is extended sparse and fsync'd (the new area reads zero), a block device must
    /// already be that large. A replicated volume's capacity (`drl resize`) is reserved so.
    pub fn reserve(&self, size: u64) -> Result<(), VolumeError> {
        if self.is_block_device {
            if size > self.device_bytes {
                return Err(VolumeError::Invalid(format!(
                    "{}: the block device has {} bytes, the resource needs {size}",
                    self.name, self.device_bytes
                )));
            }
            return Ok(());
        }
        let len = self
            .backing
            .metadata()
            .map_err(self.io_err("stat the backing file"))?
            .len();
        if len < size {
            self.backing
                .set_len(size)
                .map_err(self.io_err("growing the backing file"))?;
            self.backing
                .sync_all()
                .map_err(self.io_err("fsync the grown backing file"))?;
        }
        Ok(())
    }

    /// Whether the backing file holds data at or after byte `from` (`SEEK_DATA`: a hole
    /// reads zero and holds nothing). `None` when that cannot be known: a block device, or a
    /// file system without `SEEK_DATA` (it would report everything as data anyway).
    pub fn tail_has_data(&self, from: u64) -> Result<Option<bool>, VolumeError> {
        use std::os::fd::AsRawFd;
        if self.is_block_device {
            return Ok(None);
        }
        let Ok(off) = i64::try_from(from) else {
            return Ok(Some(false));
        };
        // SAFETY: lseek on a descriptor this Disk owns for its whole life; no memory is passed.
        let r = unsafe { libc::lseek(self.backing.as_raw_fd(), off, libc::SEEK_DATA) };
        if r >= 0 {
            return Ok(Some(true));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(Some(false)),
            e if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            e => Err(self.io_err("SEEK_DATA on the backing file")(e)),
        }
    }

    /// Cut a backing file to `len` bytes (after a checked shrink). A block device is left as
    /// it is.
    pub fn cut_backing(&self, len: u64) -> Result<(), VolumeError> {
        if self.is_block_device || len < self.size() {
            return Ok(());
        }
        self.backing
            .set_len(len)
            .map_err(self.io_err("cutting the backing file"))?;
        self.backing
            .sync_all()
            .map_err(self.io_err("fsync the cut backing file"))
    }

    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::Release);
    }

    /// Stop the engine after in-flight operations complete (blocks: call it off the runtime).
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
        move |source| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            VolumeError::Io {
                name: self.name.clone(),
                what,
                source,
            }
        }
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.read_only.load(Ordering::Acquire) {
            return Err(VolumeError::ReadOnly(self.name.clone()));
        }
        Ok(())
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        offset.is_multiple_of(self.align) && len.is_multiple_of(self.align)
    }

    /// The aligned span covering [offset, offset+len).
    fn span(&self, offset: u64, len: u64) -> (u64, u64) {
        let start = offset / self.align * self.align;
        let end = (offset + len).div_ceil(self.align) * self.align;
        (start, end.min(self.size().max(start)))
    }

    /// Lock the stripes of the edge blocks of an unaligned span, in ascending stripe order.
    async fn lock_edges(&self, start: u64, end: u64) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let first = ((start / self.align) as usize) % RMW_STRIPES;
        let last = (((end - 1) / self.align) as usize) % RMW_STRIPES;
        let mut stripes = vec![first, last];
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(2);
        for s in stripes {
            guards.push(self.rmw_locks[s].lock().await);
        }
        guards
    }

    async fn read_raw(&self, offset: u64, len: usize) -> Result<AlignedBuf, VolumeError> {
        let (res, buf) = self
            .engine
            .read_exact_at(AlignedBuf::for_overwrite(len), offset)
            .await;
        res.map_err(self.io_err("read"))?;
        Ok(buf)
    }

    async fn write_raw(&self, offset: u64, buf: AlignedBuf, fua: bool) -> Result<(), VolumeError> {
        let rw_flags = if fua { flags::DSYNC } else { 0 };
        let (res, _buf) = self.engine.write_all_at(buf, offset, rw_flags).await;
        res.map_err(self.io_err("write"))
    }
}

impl BlockDevice for Disk {
    fn batched<R>(&self, f: impl FnOnce() -> R) -> R {
        let _plug = self.engine.plug();
        f()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.size()
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    fn min_block_bytes(&self) -> u32 {
        // Advertise the DIO alignment as the minimum so well-behaved clients avoid the
        // read-modify-write path; smaller requests still work.
        self.align.min(4096) as u32
    }

    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        check_range(offset, u64::from(len), self.size())?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_read
            .fetch_add(u64::from(len), Ordering::Relaxed);
        if len == 0 {
            return Ok(AlignedBuf::zeroed(0));
        }
        if self.aligned(offset, u64::from(len)) {
            return self.read_raw(offset, len as usize).await;
        }
        let (start, end) = self.span(offset, u64::from(len));
        let whole = self.read_raw(start, (end - start) as usize).await?;
        let skip = (offset - start) as usize;
        Ok(AlignedBuf::from_slice(&whole[skip..skip + len as usize]))
    }

    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), VolumeError> {
        self.check_writable()?;
        let len = data.len() as u64;
        check_range(offset, len, self.size())?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        if len == 0 {
            return if fua { self.flush().await } else { Ok(()) };
        }
        if self.aligned(offset, len) {
            return self.write_raw(offset, data, fua).await;
        }
        self.stats.rmw_cycles.fetch_add(1, Ordering::Relaxed);
        let (start, end) = self.span(offset, len);
        let _guards = self.lock_edges(start, end).await;
        let mut whole = self.read_raw(start, (end - start) as usize).await?;
        let skip = (offset - start) as usize;
        whole[skip..skip + data.len()].copy_from_slice(&data);
        self.write_raw(start, whole, fua).await
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.engine
            .fdatasync()
            .await
            .map_err(self.io_err("flush (fdatasync)"))
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        self.check_writable()?;
        check_range(offset, u64::from(len), self.size())?;
        self.stats.trims.fetch_add(1, Ordering::Relaxed);
        // Trim is advisory (NBD: the range may read back as anything). Block devices only take
        // whole sectors, so clip to the aligned interior there.
        let (mut start, mut end) = (offset, offset + u64::from(len));
        if self.is_block_device {
            start = start.div_ceil(self.align.max(512)) * self.align.max(512);
            end = end / self.align.max(512) * self.align.max(512);
        }
        if end <= start {
            return Ok(());
        }
        self.engine
            .discard(start, end - start)
            .await
            .map_err(self.io_err("trim (discard)"))
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        check_range(offset, u64::from(len), self.size())?;
        self.stats.zeroes.fetch_add(1, Ordering::Relaxed);
        // The engine wants aligned ranges (BLKZEROOUT takes whole sectors; its fallback writes
        // zero buffers with O_DIRECT): zero the unaligned edges by writing, the interior in one
        // call.
        let (start, end) = (offset, offset + u64::from(len));
        let inner_start = start.div_ceil(self.align) * self.align;
        let inner_end = end / self.align * self.align;
        if inner_start >= inner_end {
            if len > 0 {
                self.write(offset, AlignedBuf::zeroed(len as usize), false)
                    .await?;
            }
        } else {
            if inner_start > start {
                self.write(
                    start,
                    AlignedBuf::zeroed((inner_start - start) as usize),
                    false,
                )
                .await?;
            }
            self.engine
                .zero_range(inner_start, inner_end - inner_start, may_trim)
                .await
                .map_err(self.io_err("write zeroes"))?;
            if end > inner_end {
                self.write(
                    inner_end,
                    AlignedBuf::zeroed((end - inner_end) as usize),
                    false,
                )
                .await?;
            }
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::BlockDevice;

    const MIB: u64 = 1 << 20;

    /// Grow extends the file sparse; SEEK_DATA tells a tail with data from an empty one; a
    /// cut never goes below the usable size.
    #[tokio::test]
    async fn set_size_and_the_tail_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.img");
        let disk = Disk::open("r0", &path, 4 * MIB, 8).unwrap();
        let mut buf = AlignedBuf::zeroed(4096);
        buf.fill(0xab);
        disk.write(MIB, buf, false).await.unwrap();
        disk.flush().await.unwrap();
        assert!(disk.read(6 * MIB, 4096).await.is_err(), "past the end");
        disk.set_size(8 * MIB).unwrap();
        assert_eq!(disk.size_bytes(), 8 * MIB);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * MIB);
        let r = disk.read(6 * MIB, 4096).await.unwrap();
        assert!(r.iter().all(|&b| b == 0), "the new area reads zero");
        match disk.tail_has_data(2 * MIB).unwrap() {
            Some(has) => assert!(!has, "nothing was written past 2 MiB"),
            None => return, // a file system without SEEK_DATA: nothing more to check
        }
        assert_eq!(disk.tail_has_data(MIB).unwrap(), Some(true));
        assert_eq!(disk.tail_has_data(0).unwrap(), Some(true));
        // Shrink: the size first, then the cut; a cut below the usable size is ignored.
        disk.cut_backing(MIB).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * MIB);
        disk.set_size(2 * MIB).unwrap();
        disk.cut_backing(2 * MIB).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * MIB);
        assert!(disk.read(3 * MIB, 4096).await.is_err());
        disk.shutdown();
    }
}
