//! Opening a disk (regular file or block device) for the io_uring engine, with O_DIRECT when
//! the filesystem or device supports it.
//!
//! O_DIRECT bypasses the page cache, so a completed write is on the device (modulo its volatile
//! cache, which `fdatasync`/`RWF_DSYNC` flush) and reads do not pollute the host's memory. It
//! requires buffer address, file offset and length aligned to the DIO alignment, found in this
//! order:
//! 1. `statx(STATX_DIOALIGN)` (Linux 6.1+, most filesystems and, since 6.11, block devices);
//!    an offset alignment of 0 there means "no direct I/O on this file";
//! 2. `BLKSSZGET` (logical sector size) for block devices;
//! 3. a test read of 512, then 4096 bytes at offset 0 (a file shorter than the probe cannot
//!    tell, so 4096 is assumed).
//!
//! When O_DIRECT is refused (open fails with EINVAL, e.g. ramfs or some FUSE filesystems) or no
//! alignment can be established, the disk is opened buffered and a `tracing::warn!` names the
//! file and the reason; `dio_align_bytes` is then 1.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::blkdev;
use crate::buf::{AlignedBuf, BUF_ALIGN_BYTES};

/// A disk opened for the engine.
#[derive(Debug)]
pub struct OpenedDisk {
    pub file: File,
    /// The file was opened with O_DIRECT.
    pub direct: bool,
    /// Alignment of offsets and lengths for I/O on `file`: the DIO alignment, 1 when buffered.
    pub dio_align_bytes: u32,
    /// Size of the file or device.
    pub size_bytes: u64,
    pub is_block_device: bool,
}

/// Open `path` for the engine, read-write unless `read_only`. If the file is missing and
/// `create_size_bytes` is given, it is created sparse with that size (not for block devices,
/// which always exist).
pub fn open_disk(
    path: &Path,
    read_only: bool,
    create_size_bytes: Option<u64>,
) -> io::Result<OpenedDisk> {
    if let Some(size) = create_size_bytes {
        create_sparse(path, size)?;
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(!read_only);
    let mut direct_opts = opts.clone();
    direct_opts.custom_flags(libc::O_DIRECT);
    let (file, refused) = match direct_opts.open(path) {
        Ok(f) => (f, None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = opts.open(path).map_err(|e| with_path(e, path, "open"))?;
            (
                f,
                Some("open with O_DIRECT failed with EINVAL: the filesystem has no direct I/O"),
            )
        }
        Err(e) => return Err(with_path(e, path, "open with O_DIRECT")),
    };
    let is_block_device = file.metadata()?.file_type().is_block_device();
    let size_bytes = if is_block_device {
        blkdev::size_bytes(file.as_fd()).map_err(|e| with_path(e, path, "BLKGETSIZE64"))?
    } else {
        file.metadata()?.len()
    };
    let opened = |file, direct, dio_align_bytes| OpenedDisk {
        file,
        direct,
        dio_align_bytes,
        size_bytes,
        is_block_device,
    };
    if let Some(reason) = refused {
        tracing::warn!(path = %path.display(), reason, "O_DIRECT unavailable; using buffered I/O");
        return Ok(opened(file, false, 1));
    }
    match dio_alignment(&file, is_block_device, size_bytes) {
        Ok(align) => {
            tracing::debug!(path = %path.display(), dio_align_bytes = align, size_bytes,
                is_block_device, "disk opened with O_DIRECT");
            Ok(opened(file, true, align))
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason = %reason,
                "O_DIRECT unavailable; using buffered I/O");
            drop(file);
            let file = opts.open(path).map_err(|e| with_path(e, path, "open"))?;
            Ok(opened(file, false, 1))
        }
    }
}

fn with_path(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Create `path` sparse with `size` bytes if it does not exist.
fn create_sparse(path: &Path, size: u64) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => {
            f.set_len(size)
                .map_err(|e| with_path(e, path, &format!("set size {size} of")))?;
            tracing::info!(path = %path.display(), size_bytes = size, "created sparse disk file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(with_path(e, path, "create")),
    }
}

/// Find the DIO alignment of `file` (opened with O_DIRECT). `Err` carries the reason why
/// direct I/O cannot be used.
fn dio_alignment(file: &File, is_block_device: bool, size_bytes: u64) -> Result<u32, String> {
    match statx_dioalign(file) {
        Ok(Some((_, 0))) => return Err("statx reports no direct I/O support".to_string()),
        Ok(Some((mem, offset))) if mem as usize > BUF_ALIGN_BYTES => {
            return Err(format!(
                "memory alignment {mem} (offset alignment {offset}) exceeds the {BUF_ALIGN_BYTES}-byte buffer alignment"
            ));
        }
        Ok(Some((_, offset))) => return Ok(offset),
        Ok(None) | Err(_) => {}
    }
    if is_block_device {
        return blkdev::logical_sector_bytes(file.as_fd())
            .map_err(|e| format!("BLKSSZGET failed: {e}"));
    }
    probe_by_reading(file, size_bytes)
}

/// `(dio_mem_align, dio_offset_align)` from statx, or None when the kernel or filesystem does
/// not report it.
fn statx_dioalign(file: &File) -> io::Result<Option<(u32, u32)>> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string used with AT_EMPTY_PATH on a
    // live fd, and stx points to a live, writable statx struct.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}

/// Try O_DIRECT reads of 512 then 4096 bytes at offset 0.
fn probe_by_reading(file: &File, size_bytes: u64) -> Result<u32, String> {
    let mut buf = AlignedBuf::zeroed(BUF_ALIGN_BYTES);
    let mut errors = Vec::new();
    for align in [512u32, 4096] {
        if size_bytes < u64::from(align) {
            // A read at or past EOF returns 0 before the alignment is checked: no evidence.
            // 4096 is valid for every device we can meet (page-sized logical blocks at most).
            return Ok(4096);
        }
        match file.read_at(&mut buf[..align as usize], 0) {
            Ok(n) if n == align as usize => return Ok(align),
            Ok(n) => errors.push(format!("{align}-byte test read returned {n}")),
            Err(e) => errors.push(format!("{align}-byte test read: {e}")),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests;
