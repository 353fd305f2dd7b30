//! The transmission phase of one connection: a reader, concurrent request tasks, one writer.
//!
//! ```text
//!   socket ─read─> reader ──spawn──> request task ─┐  (device I/O, any order)
//!                    │                  ...         ├─> mpsc ─> writer ─write─> socket
//!                    └── error replies ─────────────┘
//! ```
//!
//! The reader parses a header, validates it ([`super::command::validate`]), reads a WRITE's
//! payload and hands the command to its own task, so requests run concurrently and replies may
//! leave out of order (the NBD protocol document allows it: replies are matched by cookie).
//! All replies go through one writer task, so frames never interleave.
//!
//! Backpressure: before reading a header the reader takes a permit from a semaphore of
//! [`NBD_INFLIGHT_PER_CONNECTION_MAX`]; before reading a payload or starting a read it takes
//! `len` permits from a semaphore of [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`]. Permits are
//! released only after the reply has been written, so a client that does not read its
//! replies stops being read from; the server never holds more than those bounds per connection.
//!
//! End of a connection: on NBD_CMD_DISC, end of stream, a broken frame, or the stop signal,
//! the reader stops; requests already dispatched finish and their replies are written; then the
//! socket is shut down.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::command::{validate, Command, ExportView, Kind};
use super::proto::*;
use super::stats::NbdStats;
use crate::limits::{NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX, NBD_INFLIGHT_PER_CONNECTION_MAX};
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
}

/// Why the transmission phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client closed the stream (possibly in the middle of a request).
    ClientClosed,
    /// The server is shutting down, or the writer could no longer write.
    Stopped,
    /// The client broke the framing (bad magic); the stream cannot be trusted any more.
    ProtocolError,
}

enum Body {
    Done,
    Data { offset: u64, buf: AlignedBuf },
}

/// Holds a request's share of the in-flight bounds until its reply has been written.
struct Inflight {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
    stats: Arc<NbdStats>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.stats.requests_inflight.fetch_sub(1, Relaxed);
    }
}

struct Reply {
    cookie: u64,
    kind: Kind,
    body: Result<Body, VolumeError>,
    _inflight: Inflight,
}

/// Resolves once `stop` turns true (or its sender is gone) or the writer gave up.
async fn stop_signal(mut stop: watch::Receiver<bool>, writer_dead: Arc<Notify>) {
    tokio::select! {
        _ = async { let _ = stop.wait_for(|v| *v).await; } => {}
        _ = writer_dead.notified() => {}
    }
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
    let mut rd = BufReader::with_capacity(IO_BUFFER_BYTES, rd);
    let (tx, rx) = mpsc::channel::<Reply>(NBD_INFLIGHT_PER_CONNECTION_MAX);
    let writer_dead = Arc::new(Notify::new());
    let writer = tokio::spawn(writer_loop(
        wr,
        rx,
        ctx.view.structured,
        ctx.stats.clone(),
        ctx.log.clone(),
        writer_dead.clone(),
        ctx.peer.clone(),
    ));
    let count_sem = Arc::new(Semaphore::new(NBD_INFLIGHT_PER_CONNECTION_MAX));
    let bytes_sem = Arc::new(Semaphore::new(
        NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX as usize,
    ));
    let stopped = stop_signal(stop, writer_dead);
    tokio::pin!(stopped);

    let result = async {
        loop {
            let count = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(End::Stopped),
                p = count_sem.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Ok(End::Stopped),
                },
            };
            let mut hb = [0u8; REQUEST_BYTES];
            let read = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(End::Stopped),
                r = rd.read_exact(&mut hb) => r,
            };
            if let Err(e) = read {
                return closed_or_err(e);
            }
            let h = match parse_request(&hb) {
                Ok(h) => h,
                Err(e) => {
                    ctx.stats.protocol_errors.fetch_add(1, Relaxed);
                    crate::warn_rl!(ctx.log, peer = %ctx.peer, error = %e,
                        "NBD client sent a broken request; closing the connection");
                    return Ok(End::ProtocolError);
                }
            };
            let kind = Kind::of(h.cmd);
            ctx.stats.count_request(kind);
            let cmd = match validate(&h, &ctx.view) {
                Ok(Command::Disc) => return Ok(End::Disconnect),
                Ok(cmd) => cmd,
                Err(e) => {
                    // Skip a WRITE's payload without storing it, then answer with the error.
                    let skip = h.payload_len() as u64;
                    if skip > 0 {
                        let mut sink = tokio::io::sink();
                        let got = match tokio::io::copy(&mut (&mut rd).take(skip), &mut sink).await
                        {
                            Ok(n) => n,
                            Err(e) => return closed_or_err(e),
                        };
                        if got < skip {
                            return Ok(End::ClientClosed);
                        }
                    }
                    let inflight = Inflight::new(count, None, &ctx.stats);
                    let reply = Reply {
                        cookie: h.cookie,
                        kind,
                        body: Err(e),
                        _inflight: inflight,
                    };
                    if tx.send(reply).await.is_err() {
                        return Ok(End::Stopped);
                    }
                    continue;
                }
            };
            let data_len = match cmd {
                Command::Read { len, .. } | Command::Write { len, .. } => len,
                _ => 0,
            };
            let bytes = if data_len > 0 {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(End::Stopped),
                    p = bytes_sem.clone().acquire_many_owned(data_len) => match p {
                        Ok(p) => Some(p),
                        Err(_) => return Ok(End::Stopped),
                    },
                }
            } else {
                None
            };
            let payload = if let Command::Write { len, .. } = cmd {
                let mut buf = AlignedBuf::zeroed(len as usize);
                if let Err(e) = rd.read_exact(&mut buf[..]).await {
                    return closed_or_err(e);
                }
                Some(buf)
            } else {
                None
            };
            let inflight = Inflight::new(count, bytes, &ctx.stats);
            let dev = ctx.dev.clone();
            let tx = tx.clone();
            let stats = ctx.stats.clone();
            let cookie = h.cookie;
            tokio::spawn(async move {
                let body = execute(&*dev, cmd, payload).await;
                if let (Command::Write { len, .. }, Ok(_)) = (cmd, &body) {
                    stats.bytes_written.fetch_add(len as u64, Relaxed);
                }
                // A closed channel means the connection is gone; the reply has no reader.
                let _ = tx
                    .send(Reply {
                        cookie,
                        kind,
                        body,
                        _inflight: inflight,
                    })
                    .await;
            });
        }
    }
    .await;

    // No new requests; dispatched ones still hold a sender and finish before the writer ends.
    drop(tx);
    if let Err(e) = writer.await {
        tracing::error!(peer = %ctx.peer, error = %e, "NBD reply writer task failed");
    }
    result
}

impl Inflight {
    fn new(
        count: OwnedSemaphorePermit,
        bytes: Option<OwnedSemaphorePermit>,
        stats: &Arc<NbdStats>,
    ) -> Self {
        stats.requests_inflight.fetch_add(1, Relaxed);
        Inflight {
            _count: count,
            _bytes: bytes,
            stats: stats.clone(),
        }
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

/// Write replies in the order they complete; flush when no other reply is waiting.
async fn writer_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Reply>,
    structured: bool,
    stats: Arc<NbdStats>,
    log: Arc<LogLimiter>,
    dead: Arc<Notify>,
    peer: String,
) {
    let mut w = BufWriter::with_capacity(IO_BUFFER_BYTES, wr);
    let mut failed = false;
    let mut next = rx.recv().await;
    while let Some(reply) = next {
        if !failed {
            if let Err(e) = write_reply(&mut w, &reply, structured, &stats, &log, &peer).await {
                failed = true;
                tracing::debug!(peer = %peer, error = %e, "NBD client stopped taking replies");
                dead.notify_one();
            }
        }
        // Dropping the reply releases its in-flight permits, also after a failure.
        drop(reply);
        next = match rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                if !failed && w.flush().await.is_err() {
                    failed = true;
                    dead.notify_one();
                }
                rx.recv().await
            }
        };
    }
    if !failed {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
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
