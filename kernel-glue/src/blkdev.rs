//! Block-device ioctls: size, logical sector size, discard, zero-out.
//!
//! The request numbers use the generic Linux `_IO`/`_IOR` encoding (x86_64, aarch64, riscv64);
//! `libc` only exports `BLKSSZGET`, so the others are computed here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const fn io_none(ty: u64, nr: u64) -> u64 {
    (ty << 8) | nr
}

const fn io_read(ty: u64, nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (ty << 8) | nr
}

/// `BLKGETSIZE64`: device size in bytes (`_IOR(0x12, 114, size_t)`).
pub const BLKGETSIZE64: u64 = io_read(0x12, 114, std::mem::size_of::<usize>() as u64);
/// `BLKDISCARD`: discard a `[start, len]` byte range (`_IO(0x12, 119)`).
pub const BLKDISCARD: u64 = io_none(0x12, 119);
/// `BLKZEROOUT`: zero a `[start, len]` byte range (`_IO(0x12, 127)`).
pub const BLKZEROOUT: u64 = io_none(0x12, 127);

/// Size of a block device in bytes.
pub fn size_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical sector size of a block device (the O_DIRECT alignment).
pub fn logical_sector_bytes(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET as _, &mut ssz as *mut _) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(ssz).map_err(|_| io::Error::other(format!("BLKSSZGET returned {ssz}")))
}

/// Run `BLKDISCARD` or `BLKZEROOUT` (`request`) on `[offset, offset + len)`. Blocks until the
/// device is done.
pub fn range_ioctl(fd: BorrowedFd<'_>, request: u64, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: both ioctls read two u64 through the pointer, which points to a live local array.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, range.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux_headers() {
        // Values from <linux/fs.h> on x86_64 / aarch64.
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        assert_eq!(BLKDISCARD, 0x1277);
        assert_eq!(BLKZEROOUT, 0x127f);
    }

    #[test]
    fn ioctls_on_a_regular_file_fail_cleanly() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        let e = size_bytes(f.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        assert!(range_ioctl(f.as_fd(), BLKDISCARD, 0, 4096).is_err());
    }
}
