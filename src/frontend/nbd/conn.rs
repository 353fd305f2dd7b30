//! The transmission phase of one connection, all in the connection's task.
//!
//! ```text
//!   socket ─read─> read stage ──> requests (FuturesUnordered, any order) ──> reply batch ─write─> socket
//!                      └── error replies ─────────────────────────────────────┘
//! ```
//!
//! One task runs one `select!` loop over four things: the stop signal, the read stage (a header,
//! a WRITE's payload, or the skipped payload of a refused WRITE), the requests being executed,
//! and the write of a batch of replies. Each of the read stage and the batch write is a
//! persistent future that owns its half of the socket, so neither is cancelled half-way and
//! neither blocks the other: a client that does not read its replies still has its requests
//! read up to the bounds, and replies keep flowing while a request is being read. Requests
//! execute concurrently inside the task (a `FuturesUnordered`), so replies may leave out of order
//! (the NBD protocol document allows it: replies are matched by cookie). Every reply ready at
//! the same moment goes into one batch, written through a buffer and flushed once: one `write`
//! for many replies. Compared with a task per request and a writer task fed by a channel, a
//! request crosses no task or thread boundary here (as in qemu-storage-daemon's coroutines).
//!
//! Batching (issue 17): the socket is read through a 64 KiB buffer, so one `read` brings many
//! requests; the loop polls the read stage before the running requests, so every request the
//! buffer holds is parsed and pushed first, and then one poll pass starts them all inside the
//! device's [`BlockDevice::batched`] (the io_uring plug: one `io_uring_enter` for the pass, not
//! one per request). The count and byte bounds below stop the reading, so the requests are
//! never starved for more than one buffer's worth. A batch is at most
//! [`NBD_SUBMIT_BATCH_REQUESTS_MAX`] requests: when the socket holds a whole queue (the client
//! sent it while this task waited for a CPU), the first requests go to the disk while the rest
//! are still being read. Reading all 32 of a queue first took 85-88 µs after the client's last
//! request, the disk idle meanwhile; with a disk that completes what it got in one burst the
//! connection then ran in lock-step, the disk idle for half of each cycle
//! (`scripts/trace-nbd-cycle.sh` shows the steps).
//!
//! Backpressure: a header is read only while fewer than [`NBD_INFLIGHT_PER_CONNECTION_MAX`]
//! requests are in flight; a WRITE's payload is read, and a READ started, only once its length
//! fits in [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`] bytes in flight and the daemon-wide
//! [`PayloadBudget`] has granted those bytes (waiting for the grant in the same loop, so replies
//! keep being written meanwhile). A request stays in flight
//! until its reply has been written, so a client that does not read its replies stops being
//! read from; the server never holds more than those bounds per connection.
//!
//! End of a connection: on NBD_CMD_DISC, end of stream, a broken frame, the stop signal, or a
//! failed reply write, reading stops; requests already dispatched finish and their replies are
//! written (unless writing failed); then the socket is shut down.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures::future::{poll_fn, Either, Fuse, FusedFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::budget::PayloadBudget;

use super::command::{validate, Command, ExportView, Kind};
use super::proto::*;
use super::stats::NbdStats;
use crate::limits::{
    NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX, NBD_INFLIGHT_PER_CONNECTION_MAX,
    NBD_SUBMIT_BATCH_REQUESTS_MAX,
};
use crate::logrl::LogLimiter;
use crate::volume::{AlignedBuf, BlockDevice, VolumeError};

/// Socket buffer sizes of the reader and the writer.
const IO_BUFFER_BYTES: usize = 64 * 1024;

/// Everything one connection shares with the server.
pub(crate) struct ConnCtx<D> {
    pub dev: Arc<D>,
    pub view: ExportView,
    pub stats: Arc<NbdStats>,
    pub log: Arc<LogLimiter>,
    pub peer: String,
    /// The daemon-wide payload budget every connection shares.
    pub budget: PayloadBudget,
    /// This connection's entry among the export's connections (idle eviction, see
    /// [`super::idle`]); None where no server tracks it (tests).
    pub(crate) idle: Option<super::idle::Registered>,
}

/// Why the transmission phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client closed the stream (possibly in the middle of a request).
    ClientClosed,
    /// The server is shutting down, or the replies could no longer be written.
    Stopped,
    /// The client broke the framing (bad magic); the stream cannot be trusted any more.
    ProtocolError,
}

enum Body {
    Done,
    Data { offset: u64, buf: AlignedBuf },
}

/// A request's share of the in-flight bounds, held until its reply has been written.
struct Inflight {
    bytes: u64,
    stats: Arc<NbdStats>,
    /// For the latency histogram: the request's kind and when it was complete.
    kind: Kind,
    start: std::time::Instant,
    /// Its bytes of the daemon-wide budget; returned when this is dropped.
    _grant: Option<OwnedSemaphorePermit>,
}

impl Inflight {
    fn new(
        kind: Kind,
        bytes: u64,
        stats: &Arc<NbdStats>,
        grant: Option<OwnedSemaphorePermit>,
    ) -> Self {
        stats.requests_inflight.fetch_add(1, Relaxed);
        Inflight {
            bytes,
            stats: stats.clone(),
            kind,
            start: std::time::Instant::now(),
            _grant: grant,
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        // Dropped once the reply is written (or the connection gave up on it).
        self.stats.observe(self.kind, self.start.elapsed());
        self.stats.requests_inflight.fetch_sub(1, Relaxed);
    }
}

struct Reply {
    cookie: u64,
    kind: Kind,
    body: Result<Body, VolumeError>,
    inflight: Inflight,
}

/// What the read side does next.
enum Next {
    /// Read a request header (once the count bound allows).
    Header,
    /// A valid request that needs `len` bytes of the byte bound before it goes on: a WRITE's
    /// payload is then read, a READ dispatched.
    Budget {
        cookie: u64,
        kind: Kind,
        cmd: Command,
        len: u32,
    },
    /// A refused WRITE: skip its payload, then answer with the error.
    Skip {
        cookie: u64,
        kind: Kind,
        err: VolumeError,
        len: u64,
    },
}

/// One read stage, run by a persistent future that owns the reader.
enum Stage {
    Header,
    Payload(u32),
    Skip(u64),
}

enum Got {
    Header([u8; REQUEST_BYTES]),
    Payload(AlignedBuf),
    /// How many payload bytes were skipped (fewer than asked: the stream ended).
    Skipped(u64),
}

async fn read_stage<R: AsyncRead + Unpin>(mut rd: R, stage: Stage) -> (R, std::io::Result<Got>) {
    let r = match stage {
        Stage::Header => {
            let mut hb = [0u8; REQUEST_BYTES];
            rd.read_exact(&mut hb).await.map(|_| Got::Header(hb))
        }
        Stage::Payload(len) => {
            let mut buf = AlignedBuf::for_overwrite(len as usize);
            rd.read_exact(&mut buf[..]).await.map(|_| Got::Payload(buf))
        }
        Stage::Skip(n) => {
            let mut sink = tokio::io::sink();
            tokio::io::copy(&mut (&mut rd).take(n), &mut sink)
                .await
                .map(Got::Skipped)
        }
    };
    (rd, r)
}

/// Write a batch of replies and flush once. Hands back the writer and the batch (whose
/// in-flight shares the caller releases).
async fn write_batch<'a, W: AsyncWrite + Unpin>(
    mut w: W,
    batch: Vec<Reply>,
    structured: bool,
    stats: &'a NbdStats,
    log: &'a LogLimiter,
    peer: &'a str,
) -> (W, std::io::Result<()>, Vec<Reply>) {
    for r in &batch {
        if let Err(e) = write_reply(&mut w, r, structured, stats, log, peer).await {
            return (w, Err(e), batch);
        }
    }
    let res = w.flush().await;
    (w, res, batch)
}

/// Execute one request and build its reply.
async fn run<D: BlockDevice>(
    dev: Arc<D>,
    cookie: u64,
    kind: Kind,
    cmd: Command,
    payload: Option<AlignedBuf>,
    inflight: Inflight,
) -> Reply {
    let body = execute(&*dev, cmd, payload).await;
    if let (Command::Write { len, .. }, Ok(_)) = (cmd, &body) {
        inflight.stats.bytes_written.fetch_add(len as u64, Relaxed);
    }
    Reply {
        cookie,
        kind,
        body,
        inflight,
    }
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Serve requests on `stream` until the connection ends.
pub(crate) async fn transmission<S, D>(
    stream: S,
    ctx: ConnCtx<D>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<End>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    D: BlockDevice,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = Some(BufReader::with_capacity(IO_BUFFER_BYTES, rd));
    let mut wr = Some(BufWriter::with_capacity(IO_BUFFER_BYTES, wr));
    let structured = ctx.view.structured;
    let stats = &ctx.stats;
    let (log, peer) = (&*ctx.log, ctx.peer.as_str());
    let dev = &*ctx.dev;

    let stopped = stop_signal(stop).fuse();
    let read_fut = Fuse::terminated();
    let write_fut = Fuse::terminated();
    let grant_fut = Fuse::terminated();
    tokio::pin!(stopped, read_fut, write_fut, grant_fut);
    // The daemon-wide budget bytes of the request in `next`, once granted.
    let mut grant: Option<OwnedSemaphorePermit> = None;
    // FuturesUnordered wakes its task and yields whenever it has polled as many futures as it
    // holds: with one request in flight, every poll costs a spurious self-wake, which tokio
    // schedules as a yield and announces to an idle worker (one more thread wake-up per request
    // at queue depth 1). A future that is never woken keeps that count out of reach.
    let mut running = FuturesUnordered::new();
    running.push(Either::Right(futures::future::pending::<Reply>()));
    // Requests pushed into `running` since it was last polled (the poll starts them).
    let mut unsubmitted = 0usize;
    let mut queued: Vec<Reply> = Vec::new();
    let mut spare: Vec<Reply> = Vec::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    let mut next = Next::Header;
    let mut end: Option<std::io::Result<End>> = None;
    let mut write_failed = false;
    // Whether this connection has asked to write (auto-promote counts writers, not opens).
    let mut writer = WriterMark {
        dev: &*ctx.dev,
        joined: false,
    };

    loop {
        // A batch's worth read while the socket still has more: start it before reading on.
        // Polled until the set is pending: a pass ends at the first request it finds done, and
        // requests done before the batch was read come first, so one pass could leave the
        // batch unstarted (and the next pass start it together with the batches read after).
        // First in the loop: the replies it takes go into the batch written below (taken after
        // that, with nothing else left to wake this task, they would wait forever).
        if unsubmitted >= NBD_SUBMIT_BATCH_REQUESTS_MAX {
            unsubmitted = 0;
            take_ready(dev, &mut running, &mut queued);
        }
        // Start the next read stage, or dispatch a READ, if the bounds allow it.
        if end.is_none() && read_fut.is_terminated() {
            let fits = |len: u32| bytes + u64::from(len) <= NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX;
            // Within this connection's bound, ask for the daemon-wide bytes too (once).
            if let Next::Budget { len, .. } = &next {
                if grant.is_none() && grant_fut.is_terminated() && fits(*len) {
                    grant = ctx.budget.try_grant(*len);
                    if grant.is_none() {
                        stats.budget_waits.fetch_add(1, Relaxed);
                        grant_fut.set(ctx.budget.clone().grant(*len).fuse());
                    }
                }
            }
            let granted = grant.is_some();
            let stage = match &next {
                Next::Header if count < NBD_INFLIGHT_PER_CONNECTION_MAX => Some(Stage::Header),
                Next::Budget {
                    cmd: Command::Write { .. },
                    len,
                    ..
                } if *len > 0 && granted && fits(*len) => {
                    bytes += u64::from(*len);
                    Some(Stage::Payload(*len))
                }
                Next::Budget { len, .. } if granted && fits(*len) => {
                    if let Next::Budget {
                        cookie,
                        kind,
                        cmd,
                        len,
                    } = std::mem::replace(&mut next, Next::Header)
                    {
                        bytes += u64::from(len);
                        unsubmitted += 1;
                        let inflight = Inflight::new(kind, u64::from(len), stats, grant.take());
                        running.push(Either::Left(run(
                            ctx.dev.clone(),
                            cookie,
                            kind,
                            cmd,
                            None,
                            inflight,
                        )));
                    }
                    continue;
                }
                Next::Skip { len, .. } => Some(Stage::Skip(*len)),
                _ => None,
            };
            // (Not a tuple pattern: that would take the reader even without a stage.)
            if let Some(stage) = stage {
                if let Some(r) = rd.take() {
                    read_fut.set(read_stage(r, stage).fuse());
                }
            }
        }
        // Write every reply ready now in one batch.
        if write_fut.is_terminated() && !queued.is_empty() {
            if write_failed {
                release(&mut queued, &mut count, &mut bytes);
            } else if let Some(w) = wr.take() {
                let batch = std::mem::replace(&mut queued, std::mem::take(&mut spare));
                write_fut.set(write_batch(w, batch, structured, stats, log, peer).fuse());
            }
        }
        if end.is_some() && running.len() == 1 && queued.is_empty() && write_fut.is_terminated() {
            break;
        }
        if let Some(r) = &ctx.idle {
            r.activity.set_busy(count, r.registry().now_ms());
        }
        tokio::select! {
            biased;
            () = &mut stopped, if end.is_none() => {
                end = Some(Ok(End::Stopped));
                read_fut.set(Fuse::terminated());
            }
            () = evicted(&ctx.idle), if end.is_none() && count == 0 => {
                crate::info_rl!(log, peer = %peer, "NBD connection closed: idle while the export is full and a new client waits");
                end = Some(Ok(End::Stopped));
                read_fut.set(Fuse::terminated());
            }
            (w, res, mut batch) = &mut write_fut, if !write_fut.is_terminated() => {
                release(&mut batch, &mut count, &mut bytes);
                spare = batch;
                wr = Some(w);
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "NBD client stopped taking replies");
                    write_failed = true;
                    if end.is_none() {
                        end = Some(Ok(End::Stopped));
                        read_fut.set(Fuse::terminated());
                    }
                }
            }
            g = &mut grant_fut, if !grant_fut.is_terminated() => grant = Some(g),
            (r, got) = &mut read_fut, if !read_fut.is_terminated() => {
                rd = Some(r);
                let got = match got {
                    Ok(g) => g,
                    Err(e) => {
                        end = Some(closed_or_err(e));
                        continue;
                    }
                };
                match (got, std::mem::replace(&mut next, Next::Header)) {
                    (Got::Header(hb), _) => match on_header(&hb, &ctx) {
                        Ok(n) => {
                            count += 1;
                            if !writer.joined && n.writes() {
                                ctx.dev.writer_joined();
                                writer.joined = true;
                            }
                            if let Next::Skip { cookie, kind, err, len: 0 } = n {
                                let inflight = Inflight::new(kind, 0, stats, None);
                                queued.push(Reply { cookie, kind, body: Err(err), inflight });
                            } else {
                                next = n;
                            }
                        }
                        Err(e) => end = Some(Ok(e)),
                    },
                    (Got::Payload(buf), Next::Budget { cookie, kind, cmd, len }) => {
                        unsubmitted += 1;
                        let inflight = Inflight::new(kind, u64::from(len), stats, grant.take());
                        running.push(Either::Left(run(ctx.dev.clone(), cookie, kind, cmd, Some(buf), inflight)));
                    }
                    (Got::Skipped(n), Next::Skip { cookie, kind, err, len }) => {
                        if n < len {
                            end = Some(Ok(End::ClientClosed));
                        } else {
                            let inflight = Inflight::new(kind, 0, stats, None);
                            queued.push(Reply { cookie, kind, body: Err(err), inflight });
                        }
                    }
                    _ => {
                        // A stage answered something its state did not ask for: a bug here,
                        // not the client's doing. End the connection rather than guess.
                        tracing::error!(peer = %peer, "NBD read stage out of step");
                        end = Some(Ok(End::Stopped));
                    }
                }
            }
            // Last: every request the socket had ready is read and pushed first, then one
            // poll pass starts them all with the device's submissions batched.
            // (The poll starts every request pushed so far: none is unsubmitted after it.)
            Some(reply) = poll_fn(|cx| {
                unsubmitted = 0;
                dev.batched(|| running.poll_next_unpin(cx))
            }), if running.len() > 1 => {
                queued.push(reply);
                take_ready(dev, &mut running, &mut queued);
            }
        }
    }

    if !write_failed {
        if let Some(mut w) = wr {
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        }
    }
    end.unwrap_or(Ok(End::Stopped))
}

/// Poll the running requests until none is ready, starting the new ones (their submissions
/// batched) and queueing every reply that is done. The waker this registers does nothing: the
/// select loop polls `running` with its own before the task sleeps.
fn take_ready<D: BlockDevice, F: std::future::Future<Output = Reply>>(
    dev: &D,
    running: &mut FuturesUnordered<F>,
    queued: &mut Vec<Reply>,
) {
    while let Some(Some(reply)) = dev.batched(|| running.next().now_or_never()) {
        queued.push(reply);
    }
}

/// Resolves when the export chose this idle connection to make room for a new client.
async fn evicted(idle: &Option<super::idle::Registered>) {
    match idle {
        Some(r) => r.activity.evicted().await,
        None => std::future::pending().await,
    }
}

/// Release the in-flight shares of written (or dropped) replies.
fn release(batch: &mut Vec<Reply>, count: &mut usize, bytes: &mut u64) {
    for r in batch.drain(..) {
        *count -= 1;
        *bytes -= r.inflight.bytes;
    }
}

/// A connection that has sent a write, trim or write-zeroes request: the device learns when
/// it leaves, however the transmission ends (auto-promote demotes after the last writer).
struct WriterMark<'a, D: BlockDevice> {
    dev: &'a D,
    joined: bool,
}

impl<D: BlockDevice> Drop for WriterMark<'_, D> {
    fn drop(&mut self) {
        if self.joined {
            self.dev.writer_left();
        }
    }
}

impl Next {
    /// A validated request that changes data.
    fn writes(&self) -> bool {
        matches!(
            self,
            Next::Budget {
                cmd: Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. },
                ..
            }
        )
    }
}

/// Parse and validate a header: what the read side does next, or why the connection ends.
fn on_header<D: BlockDevice>(hb: &[u8; REQUEST_BYTES], ctx: &ConnCtx<D>) -> Result<Next, End> {
    let h = match parse_request(hb) {
        Ok(h) => h,
        Err(e) => {
            ctx.stats.protocol_errors.fetch_add(1, Relaxed);
            crate::warn_rl!(ctx.log, peer = %ctx.peer, error = %e,
                "NBD client sent a broken request; closing the connection");
            return Err(End::ProtocolError);
        }
    };
    let kind = Kind::of(h.cmd);
    ctx.stats.count_request(kind);
    match validate(&h, &ctx.view) {
        Ok(Command::Disc) => Err(End::Disconnect),
        Ok(cmd) => {
            let len = match cmd {
                Command::Read { len, .. } | Command::Write { len, .. } => len,
                _ => 0,
            };
            Ok(Next::Budget {
                cookie: h.cookie,
                kind,
                cmd,
                len,
            })
        }
        // A refused WRITE's payload is skipped without storing it (len 0: nothing to skip).
        Err(err) => Ok(Next::Skip {
            cookie: h.cookie,
            kind,
            err,
            len: u64::from(h.payload_len()),
        }),
    }
}

/// End of stream while reading a request is the client going away, not a server error.
fn closed_or_err(e: std::io::Error) -> std::io::Result<End> {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | BrokenPipe => Ok(End::ClientClosed),
        _ => Err(e),
    }
}

/// Run one validated command on the device. Zero-length requests succeed without touching it.
async fn execute<D: BlockDevice>(
    dev: &D,
    cmd: Command,
    payload: Option<AlignedBuf>,
) -> Result<Body, VolumeError> {
    match cmd {
        Command::Read { offset, len: 0 } => Ok(Body::Data {
            offset,
            buf: AlignedBuf::zeroed(0),
        }),
        Command::Read { offset, len } => {
            let buf = dev.read(offset, len).await?;
            if buf.len() != len as usize {
                return Err(VolumeError::Io {
                    name: dev.name().to_string(),
                    what: "read returned a buffer of the wrong length",
                    source: std::io::Error::other(format!("{} bytes, not {len}", buf.len())),
                });
            }
            Ok(Body::Data { offset, buf })
        }
        Command::Write { len: 0, .. } => Ok(Body::Done),
        Command::Write { offset, fua, .. } => {
            let data = payload.ok_or_else(|| VolumeError::Invalid("write without data".into()))?;
            dev.write(offset, data, fua).await.map(|()| Body::Done)
        }
        Command::Flush => dev.flush().await.map(|()| Body::Done),
        Command::Trim { len: 0, .. } | Command::WriteZeroes { len: 0, .. } => Ok(Body::Done),
        Command::Trim { offset, len, fua } => {
            dev.trim(offset, len).await?;
            if fua {
                dev.flush().await?;
            }
            Ok(Body::Done)
        }
        Command::WriteZeroes {
            offset,
            len,
            may_trim,
            fua,
        } => dev
            .write_zeroes(offset, len, may_trim, fua)
            .await
            .map(|()| Body::Done),
        Command::Disc => Ok(Body::Done),
    }
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    r: &Reply,
    structured: bool,
    stats: &NbdStats,
    log: &LogLimiter,
    peer: &str,
) -> std::io::Result<()> {
    match &r.body {
        Ok(Body::Data { offset, buf }) => {
            if !structured {
                w.write_all(&simple_reply(r.cookie, 0)).await?;
                w.write_all(buf).await?;
            } else if buf.is_empty() {
                let h = structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, 0);
                w.write_all(&h).await?;
            } else {
                let len = 8 + buf.len() as u32;
                let h = structured_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie, len);
                w.write_all(&h).await?;
                w.write_all(&offset.to_be_bytes()).await?;
                w.write_all(buf).await?;
            }
            stats.bytes_read.fetch_add(buf.len() as u64, Relaxed);
        }
        Ok(Body::Done) => {
            if structured {
                let h = structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, 0);
                w.write_all(&h).await?;
            } else {
                w.write_all(&simple_reply(r.cookie, 0)).await?;
            }
        }
        Err(e) => {
            let errno = e.nbd_errno();
            stats.error_replies.fetch_add(1, Relaxed);
            crate::warn_rl!(log, peer = %peer, cookie = r.cookie, kind = ?r.kind, errno,
                error = %e, "NBD request failed");
            if structured {
                w.write_all(&structured_error(r.cookie, errno, &e.to_string()))
                    .await?;
            } else {
                w.write_all(&simple_reply(r.cookie, errno)).await?;
            }
        }
    }
    Ok(())
}
