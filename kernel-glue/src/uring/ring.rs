//! The core of an [`Engine`](super::Engine): the `io_uring`, the slot table holding every
//! operation the kernel owns, submission from the caller's thread, and the reaper task. See the
//! parent module for the design.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::{shut_down_error, BlkRequest, Completion, Op, Shared};
use crate::blkdev;

/// How long [`Core::shutdown`] sleeps in the kernel before looking at the slot table again.
const SHUTDOWN_WAIT_SLICE: Duration = Duration::from_millis(10);

/// One entry of the slot table; `user_data` of an SQE is its slot index.
enum Slot {
    Free,
    /// In the kernel. `abandoned`: the submitter's future was dropped; the slot (and the
    /// buffer) is freed when the completion arrives.
    Pending {
        op: Op,
        waker: Option<Waker>,
        abandoned: bool,
    },
    /// Completed, not yet picked up by its future.
    Done {
        op: Op,
        result: io::Result<u32>,
    },
    /// The ring failed while the op was in the kernel: the buffer is leaked (the kernel may
    /// still write into it) and the slot is never reused.
    Lost,
}

impl Slot {
    fn name(&self) -> &'static str {
        match self {
            Slot::Free => "free",
            Slot::Pending { .. } => "pending",
            Slot::Done { .. } => "done",
            Slot::Lost => "lost",
        }
    }
}

struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Set by shutdown (and by a fatal ring error): no new operation is accepted.
    closed: bool,
    /// A fatal ring error, reported to every later submitter.
    failed: Option<String>,
    /// Operations in the kernel (blk helpers not counted).
    in_kernel: usize,
    /// A thread is in `io_uring_enter` submitting; others only push (combining).
    submitting: bool,
    reaper: Option<Arc<ReaperCtl>>,
    /// Where the next reaper runs ([`Core::set_home`]); None: the submitter's runtime.
    home: Option<tokio::runtime::Handle>,
    blk_jobs: Vec<JoinHandle<()>>,
}

/// Handle of one reaper task generation.
struct ReaperCtl {
    alive: AtomicBool,
    stop: Notify,
}

/// Drop order (fields drop top to bottom) matters, as in Firecracker's io_uring wrapper:
/// `ring` goes first (unmapped, fd closed) while the file and every buffer still exist; `Drop`
/// leaks the buffers of operations that might still be in the kernel (only after a fatal ring
/// error: shutdown waits for all of them otherwise); `file` is closed last.
pub(super) struct Core {
    ring: IoUring,
    state: Mutex<State>,
    /// One permit per slot: a full queue suspends submitters (backpressure, never growth).
    pub(super) permits: Arc<Semaphore>,
    pub(super) shared: Shared,
    file: Arc<File>,
    /// Live [`Plug`]s: while any exists, submitters only push their SQEs; the last one to go
    /// enters the ring once for all of them.
    plugs: AtomicUsize,
}

/// Holds submissions in the SQ (see [`crate::uring::Engine::plug`]); dropping the last plug
/// submits them with one `io_uring_enter`.
pub struct Plug<'a> {
    core: &'a Core,
}

impl Drop for Plug<'_> {
    fn drop(&mut self) {
        if self.core.plugs.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Most plugged passes start nothing new: no syscall for an empty SQ.
            let pending = {
                let st = self.core.lock();
                // SAFETY: the state lock is held, so no other SubmissionQueue of this ring exists.
                let sq = unsafe { self.core.ring.submission_shared() };
                let pending = !sq.is_empty();
                // A SubmissionQueue writes its cached tail back to the ring when it drops, so it
                // must drop while the lock is held. (As the block's tail expression, the
                // temporary outlived the guard, edition 2021: its write-back raced a push on
                // another thread and moved the tail backwards; the kernel then saw head > tail
                // and re-ran stale SQEs from the whole ring: old writes landed again over newer
                // data, reads wrote into buffers already handed back ("completion for an idle
                // slot", then heap corruption), and the submitter spun in io_uring_enter.)
                drop(sq);
                drop(st);
                pending
            };
            if pending {
                self.core.submit_pushed();
            }
        }
    }
}

impl Core {
    pub(super) fn new(file: File, queue_depth: u32, shared: Shared) -> io::Result<Core> {
        // Not SINGLE_ISSUER: any thread may submit. Not COOP_TASKRUN: a tokio worker asleep in
        // epoll_wait must be interrupted to post the completions of the I/O it submitted.
        //
        // The SQ has twice the queue depth. The kernel publishes how far it consumed the SQ
        // (the shared head) only when `io_submit_sqes` ends, but an SQE it took early in that
        // batch may complete, be reaped by another thread and free its permit before then; the
        // next submitter then pushes into a ring whose head still counts the consumed SQEs.
        // The kernel runs `io_submit_sqes` under its ring lock and publishes the head at the
        // end of each call; a call takes at most the SQEs not yet consumed when it starts, each
        // holding a permit. So consumed-but-unpublished SQEs are at most queue depth, and
        // pushed-not-consumed ones at most queue depth (one per permit): 2 x queue depth never
        // overflows, whoever enters (`submit_pushed`, or `shutdown` outside `submitting`). With an SQ of queue depth, a push found it "full" under a plugged pass on
        // several threads (uring::tests::plugged_passes_on_many_threads_with_abandoned_operations)
        // and the operation failed with an I/O error nobody caused.
        let sq_entries = queue_depth.saturating_mul(2);
        let ring = IoUring::builder()
            .setup_cqsize(sq_entries)
            .build(sq_entries)?;
        let qd = queue_depth as usize;
        Ok(Core {
            ring,
            state: Mutex::new(State {
                slots: (0..qd).map(|_| Slot::Free).collect(),
                free: (0..qd).rev().collect(),
                closed: false,
                failed: None,
                in_kernel: 0,
                submitting: false,
                reaper: None,
                home: None,
                blk_jobs: Vec::new(),
            }),
            permits: Arc::new(Semaphore::new(qd)),
            shared,
            file: Arc::new(file),
            plugs: AtomicUsize::new(0),
        })
    }

    pub(super) fn plug(&self) -> Plug<'_> {
        self.plugs.fetch_add(1, Ordering::SeqCst);
        Plug { core: self }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table consistent enough to keep going: every
        // transition is a single assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusal(&self, st: &State) -> io::Error {
        match &st.failed {
            Some(msg) => {
                io::Error::other(format!("engine {}: ring failed: {msg}", self.shared.name))
            }
            None => shut_down_error(),
        }
    }

    /// Handle every available completion. The caller holds the state lock.
    fn reap_locked(&self, st: &mut State) {
        // SAFETY: the state lock is held, so no other CompletionQueue of this ring exists.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            let (idx, res) = (cqe.user_data() as usize, cqe.result());
            let Some(slot) = st.slots.get_mut(idx) else {
                self.shared
                    .unexpected_completions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(engine = %self.shared.name, idx, "completion for no slot");
                continue;
            };
            if !matches!(slot, Slot::Pending { .. }) {
                // Leave the slot as it is: a Done slot still owns its buffer for the future
                // that will pick it up, a free one may be reused; replacing it would free a
                // buffer someone still holds or lose a slot.
                self.shared
                    .unexpected_completions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(engine = %self.shared.name, idx, res = cqe.result(),
                    state = slot.name(), "completion for an idle slot");
                continue;
            }
            let Slot::Pending {
                op,
                waker,
                abandoned,
            } = std::mem::replace(slot, Slot::Free)
            else {
                unreachable!("checked above");
            };
            st.in_kernel -= 1;
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
            if abandoned {
                // The kernel is done with the buffer: free it and the slot.
                drop(op);
                st.free.push(idx);
                self.permits.add_permits(1);
            } else {
                st.slots[idx] = Slot::Done { op, result };
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }

    fn reap(&self) {
        let mut st = self.lock();
        self.reap_locked(&mut st);
    }

    /// Run the reaper tasks started from now on on `home`'s runtime, whichever runtime submits
    /// (one already running stays where it is).
    pub(super) fn set_home(&self, home: tokio::runtime::Handle) {
        self.lock().home = Some(home);
    }

    /// Start a reaper task unless one is alive: on the engine's home runtime if it has one (and
    /// it still runs), else on the submitter's.
    fn ensure_reaper(self: &Arc<Self>, st: &mut State) -> io::Result<()> {
        if Self::reaper_alive(st) {
            return Ok(());
        }
        let current = || {
            tokio::runtime::Handle::try_current().map_err(|e| {
                io::Error::other(format!(
                    "engine {}: not in a tokio runtime: {e}",
                    self.shared.name
                ))
            })
        };
        // A home that has shut down refuses the registration, one that is closing drops the
        // task unpolled: either way the caller's runtime takes the reaper.
        let ctl = match st.home.clone() {
            Some(home) => self
                .start_reaper_on(&home)
                .or_else(|_| self.start_reaper_on(&current()?))?,
            None => self.start_reaper_on(&current()?)?,
        };
        st.reaper = Some(ctl);
        Ok(())
    }

    /// Register the ring fd with `handle`'s reactor and spawn a reaper there; an error if the
    /// runtime refused either.
    fn start_reaper_on(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
    ) -> io::Result<Arc<ReaperCtl>> {
        let fd: OwnedFd = self.ring_fd_dup()?;
        let afd = {
            let _enter = handle.enter();
            // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open, names the same
            // file description and is returned unchanged by as_raw_fd until the AsyncFd drops.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? }
        };
        let ctl = Arc::new(ReaperCtl {
            alive: AtomicBool::new(true),
            stop: Notify::new(),
        });
        // Owned by the task's future from the start: a runtime that is closing drops the
        // future unpolled, and `alive` then turns false instead of staying true for good.
        let alive = Alive {
            ctl: ctl.clone(),
            core: Arc::downgrade(self),
        };
        IN_ENSURE.with(|f| f.set(true));
        handle.spawn(reaper(Arc::downgrade(self), afd, alive));
        IN_ENSURE.with(|f| f.set(false));
        match ctl.alive.load(Ordering::Acquire) {
            true => Ok(ctl),
            false => Err(io::Error::other("the runtime is shutting down")),
        }
    }

    /// Whether a reaper task is alive (it may run on another runtime).
    fn reaper_alive(st: &State) -> bool {
        st.reaper
            .as_ref()
            .is_some_and(|r| r.alive.load(Ordering::Acquire))
    }

    /// Wake every future waiting for a completion (they poll, reap and start a reaper again).
    fn wake_waiters(&self) {
        let wakers: Vec<Waker> = {
            let mut st = self.lock();
            st.slots
                .iter_mut()
                .filter_map(|s| match s {
                    Slot::Pending { waker, .. } => waker.take(),
                    _ => None,
                })
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// The reaper registers a duplicate of the ring fd: its epoll registration then never
    /// outlives the descriptor it names, whatever order the task and the engine go away in.
    fn ring_fd_dup(&self) -> io::Result<OwnedFd> {
        // SAFETY: the ring fd is valid while self lives; try_clone_to_owned dups it.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }.try_clone_to_owned()
    }

    /// Submit what was pushed. Only one thread is in `io_uring_enter` for submission at a time;
    /// SQEs pushed meanwhile are submitted by it before it leaves (so they are batched).
    fn submit_pushed(&self) {
        {
            let mut st = self.lock();
            if st.submitting {
                return;
            }
            st.submitting = true;
        }
        loop {
            let r = self.ring.submit();
            let mut st = self.lock();
            match r {
                Ok(n) if n > 0 => {
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                // EINTR: a signal; EAGAIN: out of kernel resources for now; EBUSY: completions
                // must be reaped first. The SQEs stay queued; try again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    self.reap_locked(&mut st);
                    drop(st);
                    std::thread::yield_now();
                    continue;
                }
                Err(e) => {
                    self.fail_locked(&mut st, &e);
                    st.submitting = false;
                    return;
                }
            }
            // SAFETY: the state lock is held, so no other SubmissionQueue of this ring exists.
            if unsafe { self.ring.submission_shared() }.is_empty() {
                st.submitting = false;
                return;
            }
        }
    }

    /// A fatal ring error: refuse everything from now on; operations in the kernel keep their
    /// buffers (leaked) and their submitters get an error.
    fn fail_locked(&self, st: &mut State, e: &io::Error) {
        tracing::error!(engine = %self.shared.name, error = %e, in_flight = st.in_kernel,
            "io_uring ring failed; engine shut down");
        st.closed = true;
        st.failed = Some(e.to_string());
        for slot in st.slots.iter_mut() {
            if let Slot::Pending { .. } = slot {
                if let Slot::Pending { op, waker, .. } = std::mem::replace(slot, Slot::Lost) {
                    std::mem::forget(op);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            }
        }
        self.permits.close();
    }

    /// Stop accepting, wait until nothing is in the kernel, join blk helpers, stop the reaper.
    pub(super) fn shutdown(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
        }
        self.permits.close();
        let ts = types::Timespec::from(SHUTDOWN_WAIT_SLICE);
        let args = types::SubmitArgs::new().timespec(&ts);
        loop {
            {
                let mut st = self.lock();
                self.reap_locked(&mut st);
                if st.in_kernel == 0 || st.failed.is_some() {
                    break;
                }
            }
            // A slice, not an unbounded wait: the reaper task may take the completion first.
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    let mut st = self.lock();
                    self.fail_locked(&mut st, &e);
                    break;
                }
            }
        }
        let (jobs, reaper) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.blk_jobs), st.reaper.take())
        };
        for job in jobs {
            let _ = job.join();
        }
        if let Some(r) = reaper {
            r.stop.notify_one();
        }
    }

    /// Run a blocking block-device range ioctl on a helper thread.
    async fn blk(self: &Arc<Self>, request: BlkRequest, offset: u64, len: u64) -> Completion {
        let err = |result| Completion {
            result: Err(result),
            buf: None,
        };
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return err(self.refusal(&self.lock())),
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            if st.closed {
                return err(self.refusal(&st));
            }
            st.blk_jobs.retain(|j| !j.is_finished());
            let file = self.file.clone();
            let core = self.clone();
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
                    core.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    core.shared.ops_completed.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let _ = tx.send(result);
                });
            match spawned {
                Ok(h) => st.blk_jobs.push(h),
                Err(e) => {
                    self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.shared.ops_completed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(engine = %self.shared.name, error = %e, ?request,
                        "cannot spawn block ioctl thread");
                    return err(e);
                }
            }
        }
        match rx.await {
            Ok(result) => Completion { result, buf: None },
            Err(_) => err(io::Error::other(format!(
                "engine {}: block ioctl thread failed",
                self.shared.name
            ))),
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut leaked = 0usize;
        for slot in st.slots.iter_mut() {
            if let Slot::Pending { op, .. } = std::mem::replace(slot, Slot::Lost) {
                // The kernel may still write into this buffer: never free it.
                std::mem::forget(op);
                leaked += 1;
            }
        }
        if leaked > 0 {
            tracing::error!(engine = %self.shared.name, leaked,
                "engine dropped with operations in flight; their buffers are leaked");
        }
    }
}

/// Submit one operation from the caller's thread and wait for its completion.
pub(super) async fn submit(core: &Arc<Core>, op: Op) -> Completion {
    let refuse = |op: Op, e| Completion {
        result: Err(e),
        buf: op.into_buf(),
    };
    match &op {
        Op::BlkRange {
            request,
            offset,
            len,
        } => return core.blk(*request, *offset, *len).await,
        Op::Read {
            buf, buf_off, len, ..
        }
        | Op::Write {
            buf, buf_off, len, ..
        } if *buf_off + *len as usize > buf.len() => {
            let msg = format!(
                "{len} bytes at buffer offset {buf_off} exceed {}",
                buf.len()
            );
            return refuse(op, io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        _ => {}
    }
    let fd = types::Fd(core.file.as_raw_fd());
    let permit = match core.permits.acquire().await {
        Ok(p) => p,
        Err(_) => {
            let e = core.refusal(&core.lock());
            return refuse(op, e);
        }
    };
    let idx = {
        let mut st = core.lock();
        if st.closed {
            let e = core.refusal(&st);
            return refuse(op, e);
        }
        if let Err(e) = core.ensure_reaper(&mut st) {
            return refuse(op, e);
        }
        let Some(idx) = st.free.pop() else {
            // Cannot happen: a permit guarantees a free slot. Refuse rather than panic.
            return refuse(op, io::Error::other("io_uring engine: no free slot"));
        };
        permit.forget();
        st.slots[idx] = Slot::Pending {
            op,
            waker: None,
            abandoned: false,
        };
        let Slot::Pending { op, .. } = &mut st.slots[idx] else {
            unreachable!("just stored");
        };
        let entry = match op {
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
            Op::BlkRange { .. } => unreachable!("handled above"),
        };
        // SAFETY: the state lock is held, so no other SubmissionQueue of this ring exists. The
        // buffer (if any) is owned by slots[idx], its heap memory does not move, and it stays
        // there until the completion with user_data idx is reaped (or is leaked). The SQ has
        // 2 x queue_depth entries, which the SQEs in it never exceed (see `Core::new`), so the
        // push cannot fail; if it did, the operation is refused with its buffer handed back.
        let pushed = unsafe {
            core.ring
                .submission_shared()
                .push(&entry.user_data(idx as u64))
        };
        if pushed.is_err() {
            let op = std::mem::replace(&mut st.slots[idx], Slot::Free);
            st.free.push(idx);
            core.permits.add_permits(1);
            let buf = match op {
                Slot::Pending { op, .. } => op.into_buf(),
                _ => None,
            };
            return Completion {
                result: Err(io::Error::other("io_uring engine: submission queue full")),
                buf,
            };
        }
        st.in_kernel += 1;
        core.shared.ops_submitted.fetch_add(1, Ordering::Relaxed);
        core.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        idx
    };
    // Plugged: the last plug's drop enters for this SQE (it was pushed before this load, and
    // that drop decrements before it enters, both SeqCst).
    if core.plugs.load(Ordering::SeqCst) == 0 {
        core.submit_pushed();
    }
    OpWait {
        core,
        idx,
        done: false,
    }
    .await
}

/// Waits for the completion of the operation in slot `idx`. Dropping it while the op is in
/// the kernel marks the slot abandoned: the buffer stays in the slot until the completion.
struct OpWait<'a> {
    core: &'a Arc<Core>,
    idx: usize,
    done: bool,
}

impl Future for OpWait<'_> {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let core = self.core;
        let mut st = core.lock();
        core.reap_locked(&mut st);
        let idx = self.idx;
        match &mut st.slots[idx] {
            Slot::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                if !Core::reaper_alive(&st) && !st.closed {
                    // Its runtime went away: start one here (or at home, if that runs again).
                    if let Err(e) = core.ensure_reaper(&mut st) {
                        tracing::error!(engine = %core.shared.name, error = %e,
                            "no reaper for a waiting operation");
                    }
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { op, result } = std::mem::replace(&mut st.slots[idx], Slot::Free)
                else {
                    unreachable!("matched above");
                };
                st.free.push(idx);
                drop(st);
                core.permits.add_permits(1);
                self.done = true;
                Poll::Ready(Completion {
                    result,
                    buf: op.into_buf(),
                })
            }
            Slot::Lost | Slot::Free => {
                let e = core.refusal(&st);
                drop(st);
                self.done = true;
                Poll::Ready(Completion {
                    result: Err(e),
                    buf: None,
                })
            }
        }
    }
}

impl Drop for OpWait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.core.lock();
        match &mut st.slots[self.idx] {
            Slot::Pending {
                abandoned, waker, ..
            } => {
                *abandoned = true;
                *waker = None;
            }
            Slot::Done { .. } => {
                // Completed but never picked up: the kernel is done, free it now.
                st.slots[self.idx] = Slot::Free;
                st.free.push(self.idx);
                self.core.permits.add_permits(1);
            }
            Slot::Lost | Slot::Free => {}
        }
    }
}

std::thread_local! {
    /// Set while `ensure_reaper` (which holds the state lock) spawns a reaper.
    static IN_ENSURE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A reaper generation's life: when its task ends or is dropped (its runtime shut down),
/// `alive` turns false and the futures waiting for completions are woken, so they reap for
/// themselves and start a reaper where they run instead of waiting for one that is gone.
struct Alive {
    ctl: Arc<ReaperCtl>,
    core: Weak<Core>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.ctl.alive.store(false, Ordering::Release);
        // Dropped unpolled inside `ensure_reaper`, which holds the lock and sees `alive`.
        if IN_ENSURE.with(|f| f.get()) {
            return;
        }
        if let Some(core) = self.core.upgrade() {
            core.wake_waiters();
        }
    }
}

/// Reaps completions whenever the ring fd turns readable (CQEs pending) and wakes the futures
/// waiting for them. Holds only a weak reference: the engine's lifetime is its handles'.
async fn reaper(core: Weak<Core>, afd: AsyncFd<OwnedFd>, alive: Alive) {
    loop {
        let ready = tokio::select! {
            r = afd.readable() => r,
            _ = alive.ctl.stop.notified() => return,
        };
        let mut guard = match ready {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "io_uring reaper cannot poll the ring fd");
                return;
            }
        };
        let Some(core) = core.upgrade() else { return };
        core.reap();
        drop(core);
        guard.clear_ready();
    }
}
