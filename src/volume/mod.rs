//! The volume: one resource's backing disk and its metadata.
//!
//! A [`BlockDevice`] is what every front end (NBD today, kernel attach later) and every reader
//! (snapshots, streams) talks to. Offsets and lengths are bytes; a device checks its own range
//! and answers [`VolumeError::OutOfRange`] rather than trusting its caller.
//!
//! Errors from a device are mapped to NBD error codes in exactly one place,
//! [`VolumeError::nbd_errno`], the way libublk maps its errors to errnos.

use std::future::Future;

pub mod activity_log;
pub mod bitmap;
pub mod claim;
pub mod disk;
pub mod mem;
pub mod meta;
pub mod null;

pub use kernel_glue::buf::AlignedBuf;

/// What can go wrong with a block request. Messages name the thing and the value.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "request at offset {offset} length {len} runs past the end of the volume ({size} bytes)"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("volume {0} is read-only")]
    ReadOnly(String),
    #[error("volume {name}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {0}: no space left")]
    NoSpace(String),
    #[error("volume {0} is shutting down")]
    ShuttingDown(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// NBD error values (NBD protocol document, "Error values").
pub mod nbd_err {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

impl VolumeError {
    /// The one place that turns a volume error into the NBD error a client sees.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            VolumeError::OutOfRange { .. } => nbd_err::ENOSPC,
            VolumeError::ReadOnly(_) => nbd_err::EPERM,
            VolumeError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) => nbd_err::ENOSPC,
                Some(libc::ENOMEM) => nbd_err::ENOMEM,
                Some(libc::EINVAL) => nbd_err::EINVAL,
                Some(libc::EOPNOTSUPP) => nbd_err::ENOTSUP,
                _ => nbd_err::EIO,
            },
            VolumeError::NoSpace(_) => nbd_err::ENOSPC,
            VolumeError::ShuttingDown(_) => nbd_err::ESHUTDOWN,
            VolumeError::Invalid(_) => nbd_err::EINVAL,
        }
    }
}

/// The contract between a volume and whoever reads or writes it.
///
/// Semantics (what NBD promises its clients):
/// - `write` with `fua`: the data is durable when the future resolves.
/// - `flush`: every write that completed before `flush` was called is durable when it resolves
///   (survives kill -9 and power loss).
/// - `trim`: the range may read back as anything afterwards (drl reads back zeroes).
/// - `write_zeroes`: the range reads back as zeroes; `may_trim` allows deallocation.
/// - Requests need not be aligned: a device handles sub-block requests itself.
pub trait BlockDevice: Send + Sync + 'static {
    /// Resource name, for logs.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// The smallest request size that is efficient (advertised as the NBD minimum block size:
    /// 1 when the device accepts any alignment).
    fn min_block_bytes(&self) -> u32 {
        1
    }
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<AlignedBuf, VolumeError>> + Send;
    fn write(
        &self,
        offset: u64,
        data: AlignedBuf,
        fua: bool,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send;
    fn flush(&self) -> impl Future<Output = Result<(), VolumeError>> + Send;
    /// Run `f`, one synchronous pass that may start several requests (a poll of a set of
    /// request futures), with the device's submissions batched: what `f` starts goes to the
    /// kernel together when it returns (the io_uring engine's plug: one `io_uring_enter` for
    /// the pass instead of one per request). `f` must not block or wait for a completion.
    /// Default: just `f()`.
    fn batched<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
    /// An NBD connection sent its first request that changes data (write, trim, write
    /// zeroes), before that request runs. Auto-promote counts such writers.
    fn writer_joined(&self) {}
    /// A connection that had joined as a writer left (once per [`Self::writer_joined`]).
    fn writer_left(&self) {}
    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), VolumeError>> + Send;
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send;
}

/// Whether `b` is all zero bytes (64 bytes at a time: the compiler vectorises the OR). Zero
/// data is what need not cross the wire (resync) or be stored (streams).
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Check `offset + len` against `size` without overflow.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), VolumeError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(VolumeError::OutOfRange { offset, len, size }),
    }
}
