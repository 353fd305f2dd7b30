//! The ring thread of an [`Engine`](super::Engine): owns the `io_uring`, the file and every
//! buffer the kernel may be writing into. See the parent module for the design.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::oneshot;

use super::{BlkRequest, Completion, Op, Request, Shared};
use crate::blkdev;

/// `user_data` of the eventfd read that wakes the ring for new requests.
const WAKE_USER_DATA: u64 = u64::MAX;

/// Start the ring thread; returns once the ring is set up (or failed to be).
pub(super) fn spawn(
    file: File,
    queue_depth: u32,
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
) -> io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("uring-{}", shared.name))
        .spawn(
            move || match RingThread::new(file, queue_depth, rx, shared) {
                Ok(mut ring) => {
                    let _ = ready_tx.send(Ok(()));
                    ring.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
        )?;
    let setup = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("io_uring ring thread died during setup")));
    match setup {
        Ok(()) => Ok(handle),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}

/// An operation the kernel owns until its completion is reaped.
struct Slot {
    op: Op,
    reply: oneshot::Sender<Completion>,
}

/// A blocking block-device ioctl running on a helper thread.
struct BlkJob {
    done: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// Drop order (fields drop top to bottom) matters here, as in Firecracker's io_uring wrapper
/// (which declares its ring fd after the queue mappings so the rings are unmapped before the fd
/// closes; the `io-uring` crate does that inside `IoUring`):
/// 1. `ring` goes first: its mappings are unmapped and the ring fd closed while the disk file,
///    the eventfd (in `shared`) and every buffer still exist. No SQE naming the file's fd number
///    can be submitted after that fd is closed (the number could be reused by another `open`).
/// 2. Closing the ring fd does NOT wait for requests still in the kernel, so buffers must not be
///    freed while an operation is in flight. `run` only returns with nothing in flight and the
///    wake read finished; if it is left by a panic instead, `Drop` leaks what is still in flight
///    rather than freeing memory the kernel may write into.
/// 3. `file` is closed last, after the ring and after the buffers.
struct RingThread {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Target of the eventfd read. Boxed so its address is stable.
    wake_word: Box<u64>,
    wake_armed: bool,
    blk_jobs: Vec<BlkJob>,
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    queue_depth: usize,
    /// Operations in the kernel or on a blk helper thread (the wake read not counted).
    in_flight: usize,
    /// SQEs pushed since the last `io_uring_enter` (the wake read not counted).
    pushed: usize,
    file: Arc<File>,
}

impl RingThread {
    fn new(
        file: File,
        queue_depth: u32,
        rx: mpsc::Receiver<Request>,
        shared: Arc<Shared>,
    ) -> io::Result<RingThread> {
        // One extra entry for the wake read. SINGLE_ISSUER (6.0) and COOP_TASKRUN (5.19) suit a
        // ring used by one thread only; fall back to a plain ring on older kernels.
        let entries = queue_depth + 1;
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries)
        {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries)?,
            Err(e) => return Err(e),
        };
        let qd = queue_depth as usize;
        Ok(RingThread {
            ring,
            slots: (0..qd).map(|_| None).collect(),
            free: (0..qd).rev().collect(),
            wake_word: Box::new(0),
            wake_armed: false,
            blk_jobs: Vec::new(),
            rx,
            shared,
            queue_depth: qd,
            in_flight: 0,
            pushed: 0,
            file: Arc::new(file),
        })
    }

    fn run(&mut self) {
        let mut closed = false;
        let mut drained = false;
        loop {
            self.reap();
            self.reap_blk();
            if !self.wake_armed {
                self.arm_wake();
            }
            if !closed && self.shared.shutting_down.load(Ordering::SeqCst) {
                // Refuse new sends; requests already queued are still received and run.
                self.rx.close();
                closed = true;
            }
            drained |= self.fill();
            if drained && self.in_flight == 0 {
                break;
            }
            if closed && !drained && self.in_flight == 0 {
                // Shutting down with an empty queue, but a sender still holds a channel permit:
                // it is about to send (and will wake us), or it gave up (send failed on the
                // closed channel, or its future was dropped) and the permit comes back without
                // a wake-up. Poll until the channel reports Disconnected.
                if let Err(e) = self.enter(0) {
                    self.fail(e);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let mut want = 1;
            if !drained && self.in_flight < self.queue_depth {
                // Announce the sleep, then look again: a request sent before the announcement
                // is seen here, one sent after it makes its sender write the eventfd.
                self.shared.sleeping.store(true, Ordering::SeqCst);
                let shutdown_pending = !closed && self.shared.shutting_down.load(Ordering::SeqCst);
                if !self.rx.is_empty() || shutdown_pending {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    want = 0;
                }
            }
            let entered = self.enter(want);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = entered {
                self.fail(e);
                return;
            }
        }
        self.disarm_wake();
    }

    /// Take requests from the channel while the queue depth allows. Returns true once the
    /// channel is closed and empty.
    fn fill(&mut self) -> bool {
        while self.in_flight < self.queue_depth {
            match self.rx.try_recv() {
                Ok(req) => self.start(req),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    fn start(&mut self, req: Request) {
        let Request { mut op, reply } = req;
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match &mut op {
            Op::BlkRange {
                request,
                offset,
                len,
            } => {
                self.start_blk(*request, *offset, *len, reply);
                return;
            }
            Op::Read {
                buf,
                buf_off,
                len,
                offset,
            }
            | Op::Write {
                buf,
                buf_off,
                len,
                offset,
                ..
            } if *buf_off + *len as usize > buf.len() => {
                let msg = format!(
                    "{len} bytes at buffer offset {buf_off} exceed {}",
                    buf.len()
                );
                let result = Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
                let _ = reply.send(Completion {
                    result,
                    buf: op.into_buf(),
                });
                return;
            }
            Op::Read {
                buf,
                buf_off,
                len,
                offset,
            } => {
                // SAFETY: buf_off + len <= buf.len() <= capacity (checked above).
                let ptr = unsafe { buf.as_mut_ptr().add(*buf_off) };
                opcode::Read::new(fd, ptr, *len).offset(*offset).build()
            }
            Op::Write {
                buf,
                buf_off,
                len,
                offset,
                rw_flags,
            } => {
                // SAFETY: buf_off + len <= buf.len() <= capacity (checked above).
                let ptr = unsafe { buf.as_ptr().add(*buf_off) };
                opcode::Write::new(fd, ptr, *len)
                    .offset(*offset)
                    .rw_flags(*rw_flags)
                    .build()
            }
            Op::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Fallocate { mode, offset, len } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        let Some(idx) = self.free.pop() else {
            // Cannot happen: in_flight < queue_depth == slots.len(). Refuse rather than panic.
            let result = Err(io::Error::other("io_uring engine: no free slot"));
            let _ = reply.send(Completion {
                result,
                buf: op.into_buf(),
            });
            return;
        };
        self.slots[idx] = Some(Slot { op, reply });
        // SAFETY: the buffer (if any) is owned by slots[idx] and its heap memory does not move;
        // it stays there until the completion with user_data idx is reaped (or is leaked).
        unsafe { self.push(&entry.user_data(idx as u64)) };
        self.in_flight += 1;
        self.pushed += 1;
        self.shared.ops_submitted.fetch_add(1, Ordering::Relaxed);
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Push an SQE, submitting first if the SQ is full (it never is: it has queue_depth + 1
    /// entries and at most that many are pushed between two submits).
    ///
    /// # Safety
    /// Memory the entry points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the caller.
        while unsafe { self.ring.submission().push(entry) }.is_err() {
            if let Err(e) = self.ring.submit() {
                tracing::warn!(engine = %self.shared.name, error = %e, "io_uring submit failed");
            }
        }
    }

    fn start_blk(
        &mut self,
        request: BlkRequest,
        offset: u64,
        len: u64,
        reply: oneshot::Sender<Completion>,
    ) {
        let file = self.file.clone();
        let shared = self.shared.clone();
        let done = Arc::new(AtomicBool::new(false));
        let done_in_job = done.clone();
        let code = match request {
            BlkRequest::Discard => blkdev::BLKDISCARD,
            BlkRequest::ZeroOut => blkdev::BLKZEROOUT,
        };
        self.shared.ops_submitted.fetch_add(1, Ordering::Relaxed);
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("blk-{}", self.shared.name))
            .spawn(move || {
                let result = blkdev::range_ioctl(file.as_fd(), code, offset, len).map(|()| 0);
                // Counters first, so a submitter that sees the answer sees them too.
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                shared.ops_completed.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Completion { result, buf: None });
                done_in_job.store(true, Ordering::Release);
                shared.wake();
            });
        match spawned {
            Ok(handle) => {
                self.blk_jobs.push(BlkJob { done, handle });
                self.in_flight += 1;
            }
            // The closure (and the reply in it) is dropped: the submitter sees the operation
            // abandoned. Thread creation fails only when the process is out of threads.
            Err(e) => {
                self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.shared.ops_completed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(engine = %self.shared.name, error = %e, ?request,
                    "cannot spawn block ioctl thread");
            }
        }
    }

    /// Join finished block-ioctl helpers.
    fn reap_blk(&mut self) {
        let mut i = 0;
        while i < self.blk_jobs.len() {
            if self.blk_jobs[i].done.load(Ordering::Acquire) {
                let job = self.blk_jobs.swap_remove(i);
                let _ = job.handle.join();
                self.in_flight -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Handle every available completion.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let (user_data, res) = (cqe.user_data(), cqe.result());
            if user_data == WAKE_USER_DATA {
                self.wake_armed = false;
                continue;
            }
            let slot = self
                .slots
                .get_mut(user_data as usize)
                .and_then(Option::take);
            let Some(Slot { op, reply }) = slot else {
                tracing::error!(engine = %self.shared.name, user_data, "completion for no slot");
                continue;
            };
            self.free.push(user_data as usize);
            self.in_flight -= 1;
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.shared.ops_completed.fetch_add(1, Ordering::Relaxed);
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u32)
            };
            match (&op, &result) {
                (Op::Read { .. }, Ok(n)) => {
                    self.shared
                        .bytes_read
                        .fetch_add(u64::from(*n), Ordering::Relaxed);
                }
                (Op::Write { .. }, Ok(n)) => {
                    self.shared
                        .bytes_written
                        .fetch_add(u64::from(*n), Ordering::Relaxed);
                }
                _ => {}
            }
            // A submitter that went away (future dropped) is not an error: the buffer is
            // freed here, after the kernel is done with it.
            let _ = reply.send(Completion {
                result,
                buf: op.into_buf(),
            });
        }
    }

    /// Queue a read of the eventfd; its completion means "new requests or shutdown".
    fn arm_wake(&mut self) {
        let fd = types::Fd(self.shared.eventfd.as_raw_fd());
        let ptr: *mut u64 = &mut *self.wake_word;
        let entry = opcode::Read::new(fd, ptr.cast(), 8)
            .build()
            .user_data(WAKE_USER_DATA);
        // SAFETY: wake_word is boxed (stable address) and owned by self; it is only freed
        // after the wake read completed (disarm_wake) or leaked (Drop).
        unsafe { self.push(&entry) };
        self.wake_armed = true;
    }

    /// Complete the pending wake read by writing the eventfd ourselves, so nothing references
    /// `wake_word` when the ring goes away.
    fn disarm_wake(&mut self) {
        if !self.wake_armed {
            return;
        }
        self.shared.wake();
        while self.wake_armed {
            if let Err(e) = self.enter(1) {
                tracing::error!(engine = %self.shared.name, error = %e,
                    "io_uring wait for the wake read failed");
                return;
            }
            self.reap();
        }
    }

    /// Submit what was pushed and wait for `want` completions. Transient errors are retried by
    /// the caller's loop; any other error is fatal for the ring.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => {
                if self.pushed > 0 {
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                }
                self.pushed = 0;
                Ok(())
            }
            // EINTR: a signal; EAGAIN: out of kernel resources for now; EBUSY: completions must
            // be reaped first. The SQEs stay queued and are submitted on the next call.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A fatal ring error: refuse everything from now on. Operations in the kernel keep their
    /// buffers (leaked in Drop); their submitters get an error.
    fn fail(&mut self, e: io::Error) {
        tracing::error!(engine = %self.shared.name, error = %e, in_flight = self.in_flight,
            "io_uring ring failed; engine shut down");
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.rx.close();
        while let Ok(req) = self.rx.try_recv() {
            let result = Err(io::Error::other(format!(
                "engine {}: ring failed: {e}",
                self.shared.name
            )));
            let _ = req.reply.send(Completion {
                result,
                buf: req.op.into_buf(),
            });
        }
        for job in self.blk_jobs.drain(..) {
            let _ = job.handle.join();
        }
    }
}

impl Drop for RingThread {
    fn drop(&mut self) {
        let mut leaked = 0usize;
        for slot in self.slots.iter_mut() {
            if let Some(Slot { op, reply }) = slot.take() {
                // The kernel may still write into this buffer: never free it.
                std::mem::forget(op);
                drop(reply);
                leaked += 1;
            }
        }
        if self.wake_armed {
            std::mem::forget(std::mem::replace(&mut self.wake_word, Box::new(0)));
        }
        if leaked > 0 {
            tracing::error!(engine = %self.shared.name, leaked,
                "ring thread exited with operations in flight; their buffers are leaked");
        }
    }
}
