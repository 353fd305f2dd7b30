//! The io_uring I/O engine: submission and completion on the callers' threads, no ring thread.
//!
//! # Threads and data flow
//! An [`Engine`] owns one `io_uring` instance and the file. An async caller (a tokio task on
//! any worker) takes a permit of a semaphore of `queue_depth` permits (a full queue suspends the
//! caller: backpressure, never growth), then, under a short mutex, stores the operation in a
//! free slot of the slot table and pushes its SQE, and submits with `io_uring_enter` on its own
//! thread. Only one thread is in the submitting `io_uring_enter` at a time; SQEs pushed by
//! others meanwhile are submitted by it before it leaves (combining: concurrent submitters
//! share a syscall, an idle engine costs one syscall per operation and no thread hand-off).
//!
//! Completions: the ring fd is registered with tokio (`AsyncFd`, readable when CQEs are
//! pending). A small reaper task per engine (spawned at the first operation on the engine's
//! home runtime, [`Engine::set_home`], or else on the caller's; again if that runtime went
//! away) reaps every CQE when the fd turns readable,
//! moves the result into the slot and wakes the waiting future. A waiting future also reaps on
//! each poll, so a completion that is already there is taken without waiting for the reaper.
//! The kernel posts a completion through task work on the submitting thread, which is a tokio
//! worker: the ring is therefore set up without `COOP_TASKRUN` (a worker asleep in
//! `epoll_wait` must be interrupted to post it) and without `SINGLE_ISSUER` (any worker
//! submits). A 4 KiB O_DIRECT write at queue depth 1 thus crosses no thread: the worker that
//! submitted it is woken by the kernel, the reaper task and then the waiting task run on it.
//! (The previous design, a ring thread fed by a channel and woken by an eventfd read in the
//! ring, cost two cross-thread wake-ups per operation; `IORING_SETUP_SQPOLL` burns a core.)
//!
//! # Buffer ownership
//! Buffers ([`AlignedBuf`]) are moved into the request and handed back with the result. While
//! the kernel may write into a buffer, no Rust code holds a reference to it: the slot table
//! keeps it until the completion arrives, even if the submitter's future was dropped meanwhile
//! (the slot is then marked abandoned; the reaper frees the buffer and the slot after the
//! completion, and the lost answer is ignored). After a fatal ring error, buffers of operations
//! that may still be in the kernel are leaked, never freed.
//!
//! # Operations
//! Reads and writes loop on short transfers. `fdatasync` is `IORING_OP_FSYNC` with DATASYNC.
//! `discard`/`zero_range` are `IORING_OP_FALLOCATE` on files; on block devices they are the
//! `BLKDISCARD`/`BLKZEROOUT` ioctls, which block, so each runs on a short-lived helper thread
//! (counted as in flight and against the queue depth, joined before shutdown completes).
//!
//! # Shutdown
//! [`Engine::shutdown`] (or dropping the last clone) refuses new operations (they fail with
//! "engine shut down"), waits in `io_uring_enter` until every accepted operation completed,
//! joins the block-ioctl helpers and stops the reaper task. It blocks the calling thread for
//! that long. The engine must be used from inside a tokio runtime (with IO enabled); it may be
//! created and shut down outside one.

mod ring;
pub use ring::Plug;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::buf::AlignedBuf;

/// Largest queue depth an engine accepts (io_uring allows 32768 SQ entries; more than this
/// is never useful for one disk and costs memory).
pub const QUEUE_DEPTH_MAX: u32 = 4096;

/// Largest single read or write SQE, in bytes; larger transfers are split by the retry loop.
/// 1 GiB keeps the length in a u32 and aligned to any DIO alignment.
pub const OP_BYTES_MAX: usize = 1 << 30;

/// Chunk size of the zero-writing fallback of [`Engine::zero_range`].
pub const ZERO_WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Flags for [`Engine::write_all_at`] (`rw_flags` of the SQE, as for `pwritev2`).
pub mod flags {
    /// `RWF_DSYNC`: the write is durable when it completes (FUA on devices that have it).
    pub const DSYNC: u32 = libc::RWF_DSYNC as u32;
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Maximum number of operations in the kernel at once (1..=[`QUEUE_DEPTH_MAX`]); more
    /// submitters wait for a free slot.
    pub queue_depth: u32,
    /// Name for logs (and for block-ioctl helper threads, `blk-<name>`).
    pub name: String,
}

/// A snapshot of an engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Operations handed to the kernel (or to a block-ioctl helper thread).
    pub ops_submitted: u64,
    /// Operations whose completion was received.
    pub ops_completed: u64,
    /// Operations in the kernel right now.
    pub in_flight: u64,
    /// `io_uring_enter` calls that submitted at least one operation.
    pub batches: u64,
    /// Bytes transferred by completed reads.
    pub bytes_read: u64,
    /// Bytes transferred by completed writes.
    pub bytes_written: u64,
    /// Completions for no operation in the kernel (a slot that is free, done or lost): a bug
    /// in the engine or a completion delivered twice; logged, and always 0 in a sound engine
    /// whose ring has not failed (after a fatal ring error, the SQEs of lost operations may
    /// still complete).
    pub unexpected_completions: u64,
}

/// Handle to an io_uring engine. Cheap to clone; the engine shuts down when the last clone is
/// dropped (or on [`Engine::shutdown`]).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<ring::Core>,
    is_block_device: bool,
}

/// Name and counters of an engine.
pub(crate) struct Shared {
    name: String,
    ops_submitted: AtomicU64,
    ops_completed: AtomicU64,
    in_flight: AtomicU64,
    batches: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    unexpected_completions: AtomicU64,
}

/// One operation for the engine.
pub(crate) enum Op {
    Read {
        buf: AlignedBuf,
        buf_off: usize,
        len: u32,
        offset: u64,
    },
    Write {
        buf: AlignedBuf,
        buf_off: usize,
        len: u32,
        offset: u64,
        rw_flags: i32,
    },
    Fdatasync,
    /// `fallocate(mode, offset, len)` on a file.
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// A blocking block-device ioctl taking a `[u64; 2]` range (BLKDISCARD, BLKZEROOUT).
    BlkRange {
        request: BlkRequest,
        offset: u64,
        len: u64,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum BlkRequest {
    Discard,
    ZeroOut,
}

impl Op {
    fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// The answer to a request: the syscall-style result (bytes for reads and writes) and the
/// buffer, handed back.
pub(crate) struct Completion {
    result: io::Result<u32>,
    buf: Option<AlignedBuf>,
}

fn shut_down_error() -> io::Error {
    io::Error::other("engine shut down")
}

impl Engine {
    /// Start an engine on `file` (opened by [`crate::dio::open_disk`] or any readable file).
    pub fn new(file: File, cfg: EngineConfig) -> io::Result<Engine> {
        if cfg.queue_depth == 0 || cfg.queue_depth > QUEUE_DEPTH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "engine {}: queue_depth {} outside 1..={QUEUE_DEPTH_MAX}",
                    cfg.name, cfg.queue_depth
                ),
            ));
        }
        let is_block_device = {
            use std::os::unix::fs::FileTypeExt;
            file.metadata()?.file_type().is_block_device()
        };
        let shared = Shared {
            name: cfg.name.clone(),
            ops_submitted: AtomicU64::new(0),
            ops_completed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            unexpected_completions: AtomicU64::new(0),
        };
        let core = Arc::new(ring::Core::new(file, cfg.queue_depth, shared)?);
        tracing::debug!(engine = %cfg.name, queue_depth = cfg.queue_depth, is_block_device,
            "io_uring engine started");
        Ok(Engine {
            inner: Arc::new(Inner {
                core,
                is_block_device,
            }),
        })
    }

    /// Batch submissions: while the returned guard (or any other plug of this engine) lives,
    /// operations started on any thread only queue their SQEs; dropping the last plug submits
    /// them all with one `io_uring_enter` (one doorbell for the device instead of one per
    /// write). Hold it only across a synchronous pass that starts operations (e.g. one poll of
    /// a set of write futures), never across an `.await`: an operation waiting for a free
    /// slot would wait for completions of SQEs the plug holds back.
    pub fn plug(&self) -> Plug<'_> {
        self.inner.core.plug()
    }

    /// Run the engine's completion reaper on `home`'s runtime from now on, whichever runtime
    /// submits (the daemon's shard that owns the disk; see the module doc). A reaper already
    /// running stays where it is. If `home` has shut down, the submitter's runtime is used.
    pub fn set_home(&self, home: tokio::runtime::Handle) {
        self.inner.core.set_home(home);
    }

    /// Submit one operation and wait for its completion.
    async fn submit(&self, op: Op) -> Completion {
        ring::submit(&self.inner.core, op).await
    }

    /// Reads exactly `buf.len()` bytes at `offset`; loops on short reads; EOF before that ->
    /// `UnexpectedEof`. With O_DIRECT, `offset` and `buf.len()` must be multiples of the DIO
    /// alignment.
    pub async fn read_exact_at(
        &self,
        buf: AlignedBuf,
        offset: u64,
    ) -> (io::Result<()>, AlignedBuf) {
        let total = buf.len();
        self.transfer_all(
            buf,
            offset,
            |buf, buf_off, len, offset| Op::Read {
                buf,
                buf_off,
                len,
                offset,
            },
            |_, at| {
                let msg = format!("end of file at offset {at} reading {total} bytes at {offset}");
                (io::ErrorKind::UnexpectedEof, msg)
            },
        )
        .await
    }

    /// Writes all of `buf` at `offset`; loops on short writes. `rw_flags`: e.g.
    /// [`flags::DSYNC`] for FUA, 0 for none.
    pub async fn write_all_at(
        &self,
        buf: AlignedBuf,
        offset: u64,
        rw_flags: u32,
    ) -> (io::Result<()>, AlignedBuf) {
        self.transfer_all(
            buf,
            offset,
            |buf, buf_off, len, offset| Op::Write {
                buf,
                buf_off,
                len,
                offset,
                rw_flags: rw_flags as i32,
            },
            |len, at| {
                let msg = format!("write of {len} bytes at offset {at} wrote nothing");
                (io::ErrorKind::WriteZero, msg)
            },
        )
        .await
    }

    /// The loop of [`Engine::read_exact_at`] and [`Engine::write_all_at`]: `op(buf, buf_off,
    /// len, at)` for pieces of at most `OP_BYTES_MAX` until all of `buf` is transferred,
    /// retrying on EINTR; a piece that transfers nothing fails with `nothing(len, at)` (the
    /// message gets the engine's name in front).
    async fn transfer_all(
        &self,
        mut buf: AlignedBuf,
        offset: u64,
        op: impl Fn(AlignedBuf, usize, u32, u64) -> Op,
        nothing: impl Fn(u32, u64) -> (io::ErrorKind, String),
    ) -> (io::Result<()>, AlignedBuf) {
        let total = buf.len();
        let mut done = 0usize;
        while done < total {
            let len = (total - done).min(OP_BYTES_MAX) as u32;
            let at = offset + done as u64;
            let c = self.submit(op(buf, done, len, at)).await;
            buf = c.buf.unwrap_or_else(|| AlignedBuf::zeroed(total));
            match c.result {
                Ok(0) => {
                    let (kind, what) = nothing(len, at);
                    let msg = format!("engine {}: {what}", self.inner.core.shared.name);
                    return (Err(io::Error::new(kind, msg)), buf);
                }
                Ok(n) => done += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// `fdatasync(2)` through the ring: every write completed before this call is durable when
    /// it returns.
    pub async fn fdatasync(&self) -> io::Result<()> {
        self.submit(Op::Fdatasync).await.result.map(drop)
    }

    async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        self.submit(Op::Fallocate { mode, offset, len })
            .await
            .result
            .map(drop)
    }

    async fn blk(&self, request: BlkRequest, offset: u64, len: u64) -> io::Result<()> {
        self.submit(Op::BlkRange {
            request,
            offset,
            len,
        })
        .await
        .result
        .map(drop)
    }

    /// Deallocate the range. Files: `fallocate(PUNCH_HOLE|KEEP_SIZE)` (if the filesystem cannot
    /// punch holes, the range is zeroed instead, so it always reads zeroes afterwards).
    /// Block devices: `BLKDISCARD` (what the range reads afterwards is device-defined; an
    /// unsupported discard returns the device's error, EOPNOTSUPP).
    pub async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.inner.is_block_device {
            return self.blk(BlkRequest::Discard, offset, len).await;
        }
        match self.fallocate(PUNCH_HOLE, offset, len).await {
            Err(e) if unsupported(&e) => self.zero_range(offset, len, false).await,
            r => r,
        }
    }

    /// Make the range read zeroes. Files: `fallocate(PUNCH_HOLE|KEEP_SIZE)` when
    /// `may_deallocate`, else `fallocate(ZERO_RANGE|KEEP_SIZE)`, each falling back to the other
    /// (PUNCH_HOLE only if allowed), then to writing zero buffers. Block devices: `BLKZEROOUT`,
    /// falling back to writing zero buffers. With O_DIRECT the range must be aligned.
    pub async fn zero_range(&self, offset: u64, len: u64, may_deallocate: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first_err = if self.inner.is_block_device {
            match self.blk(BlkRequest::ZeroOut, offset, len).await {
                Err(e) if unsupported(&e) => e,
                r => return r,
            }
        } else {
            let modes: &[i32] = if may_deallocate {
                &[PUNCH_HOLE, ZERO_RANGE]
            } else {
                &[ZERO_RANGE]
            };
            let mut last = None;
            for &mode in modes {
                match self.fallocate(mode, offset, len).await {
                    Err(e) if unsupported(&e) => last = Some(e),
                    r => return r,
                }
            }
            match last {
                Some(e) => e,
                None => return Ok(()),
            }
        };
        tracing::debug!(engine = %self.inner.core.shared.name, offset, len, error = %first_err,
            "zeroing by writing zero buffers");
        self.write_zeroes(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let chunk = (len as usize).min(ZERO_WRITE_CHUNK_BYTES);
        let mut zeroes = AlignedBuf::zeroed(chunk);
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(chunk);
            zeroes.set_len(n);
            let (r, b) = self.write_all_at(zeroes, offset + done, 0).await;
            zeroes = b;
            r?;
            done += n as u64;
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.core.shared;
        EngineStats {
            ops_submitted: s.ops_submitted.load(Ordering::Relaxed),
            ops_completed: s.ops_completed.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            unexpected_completions: s.unexpected_completions.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting new operations and wait for the accepted ones (see the module doc).
    /// Operations submitted afterwards fail with `ErrorKind::Other` "engine shut down".
    /// Blocks the calling thread; idempotent.
    pub fn shutdown(&self) {
        self.inner.core.shutdown();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.shutdown();
        tracing::debug!(engine = %self.core.shared.name, "io_uring engine shut down");
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.inner.core.shared.name)
            .field("is_block_device", &self.inner.is_block_device)
            .field("stats", &self.stats())
            .finish()
    }
}

const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Errors that mean "this way of zeroing/deallocating is not available here".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY)
    )
}

#[cfg(test)]
mod tests;
