//! One authenticated connection, from the sync decision to its end.
//!
//! Tasks: the session task (this module) reads and decodes frames, drives the receiver,
//! the resync and the bitmap exchange; one writer task drains the [`Link`]'s ordered queue to
//! the socket; disk writes and flushes of received frames run as short tasks that report back
//! through a channel. When the session ends (peer error, timeout, admin, shutdown) every
//! unacked write's bits stay set, the bitmap is persisted, and a Primary that lost its peer
//! starts a new data generation (DRBD), so the next connect resyncs exactly what is missing.
//!
//! Trust: everything here comes from an authenticated peer, and is still checked: frame
//! order (epochs, sequence numbers, barrier acks), resync answers against the requests, request
//! ranges against the volume. Any violation drops the connection with a rate-limited log line;
//! nothing of an unchecked frame is applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use drbd_compat::{ConnState, ReplState, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::limits::{
    REPL_AHEAD_MIN_MS, REPL_PEER_TIMEOUT_MS, REPL_READ_CHUNK_BYTES, REPL_RESYNC_WINDOW_REQUESTS,
    REPL_SEND_COALESCE_MS, REPL_WRITE_BATCH_BYTES,
};
use crate::pipeline::Write;
use crate::repl::bitmap::{bitmap_chunks, BitmapMerge};
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::{Frame, RangeWrite, VerifyRun};
use crate::repl::handshake::LocalInfo;
use crate::repl::link::Link;
use crate::repl::liveness::{LiveAction, Liveness};
use crate::repl::peer::Conn;
use crate::repl::receiver::{EpochReceiver, RxAction, RxEvent};
use crate::repl::replicator::{
    disk_of, gen_of, gen_to_meta, role_of, Announced, Replicator, Staleness,
};
use crate::repl::resync::{bitmap_bytes, check_request, or_into, Target};
use crate::repl::state::{decide, with_peer_ahead, NodeState, SyncDecision};
use crate::volume::meta;
use crate::volume::{AlignedBuf, BlockDevice};

#[path = "session_rx.rs"]
mod rx;
#[path = "session_sync.rs"]
mod sync;
#[path = "session_verify.rs"]
mod verify;

/// A received write, as the receiver queues it. Data is copied out of the read buffer into an
/// aligned buffer as soon as the frame is decoded (the disk needs it aligned anyway), so a
/// queued write never pins a chunk of the session's read buffer.
#[derive(Debug)]
enum Apply {
    Data {
        offset: u64,
        data: AlignedBuf,
        fua: bool,
    },
    Trim(RangeWrite),
    Zeroes(RangeWrite),
}

/// A received write or flush being applied; it ends with its completion.
type Applying = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// Completions of received writes and flushes.
enum Done {
    Rx(RxEvent<Apply>),
    /// A resync answer (`id` in the receiver) is on the disk.
    Resynced {
        id: u64,
        offset: u64,
        len: u64,
        zeroes: bool,
    },
    /// The SyncTarget's disk is flushed and its bitmap persisted after the last answer.
    ResyncFlushed {
        source_current: u64,
    },
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncRole {
    Source,
    Target,
}

/// What this node tells the peer in the handshake.
pub(crate) fn local_info(rep: &Replicator) -> LocalInfo {
    let sb = rep.meta.superblock();
    let discard = rep.state().discard_my_data;
    let mut gen = gen_of(sb.gen);
    let mut disk = disk_of(sb.disk_state);
    if discard {
        // `connect --discard-my-data`: present the generation this node branched from, so
        // both sides decide "this node is SyncTarget" with a bitmap resync of the union
        // (or a full sync if there is no common ancestor to present).
        if gen.bitmap != 0 {
            gen.current = gen.bitmap;
            gen.bitmap = 0;
        } else {
            gen = Default::default();
        }
        disk = drbd_compat::DiskState::Outdated;
    }
    LocalInfo {
        resource: rep.name.clone(),
        node_name: rep.node.clone(),
        size_bytes: rep.cfg.size_bytes,
        gen,
        dirty_bits: rep.bitmap.count_dirty(),
        role: role_of(sb.role),
        disk,
        features: crate::repl::wire::features::ALL,
    }
}

struct Session<'a> {
    rep: &'a Arc<Replicator>,
    link: Arc<Link>,
    rx: EpochReceiver<Apply>,
    /// Writes and flushes the receiver released and nobody polled yet (see `session_rx`).
    started: Vec<Applying>,
    merge: Option<(BitmapMerge, Vec<u8>)>,
    serve_tx: Option<mpsc::Sender<(u64, u32)>>,
    /// VerifyT: where VerifyRequests go to be answered (`verify::answer_requests`).
    verify_serve_tx: Option<mpsc::Sender<(u64, u64, u32)>>,
    /// A VerifyDigests waiting until every earlier write is on the disk; no later frame is
    /// taken meanwhile (see [`crate::repl::verify`]).
    verify_hold: Option<Frame>,
    sync: Option<SyncRole>,
    target: Option<Target>,
    peer_current: u64,
    /// Flushes (FlushThenAck) running.
    flushing: usize,
    /// Id of the next resync answer written (SyncTarget).
    resync_id: u64,
    /// Ping and timeout clocks (sans-I/O, [`crate::repl::liveness`]), on `clock`.
    live: Liveness,
    clock: Instant,
}

/// Run the session on `conn` until it ends; returns why it ended.
pub(crate) async fn run(
    rep: &Arc<Replicator>,
    conn: Conn,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    let Conn {
        stream,
        addr,
        est,
        local,
        enc,
        mut dec,
        mut rbuf,
    } = conn;
    // Decide on what our Hello announced, never on the state now: both sides must take
    // mirrored decisions from the same pair of states (`decide` is symmetric), and the peer
    // only knows our Hello. A promotion (new generation), demotion or
    // `connect --discard-my-data` that landed after the Hello left is caught below, once the
    // link is up, by handshaking again.
    let decision = decide(
        &NodeState::from(&local),
        &NodeState::from(&est.peer),
        &rep.cfg.repl.split_brain,
    );
    crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %est.peer.node_name, %addr, decision = ?decision.decision,
        rule = decision.rule, local_gen = %local.gen, peer_gen = %est.peer.gen, "connected: sync decision");
    rep.stats.connects.fetch_add(1, Ordering::Relaxed);
    let limits = EpochLimits {
        buffer_bytes_max: rep.cfg.repl.max_buffer_bytes,
        ..EpochLimits::default()
    };
    let mut tracker = EpochTracker::new(limits);
    tracker.set_clear_partial_blocks(true);
    let (link, frames) = Link::new(enc, tracker);
    let link = Arc::new(link);
    crate::shaping::mark_repl_socket(&stream);
    let (mut rd, wr) = stream.into_split();
    let writer = tokio::spawn(writer(wr, frames, link.clone()));
    let mut applying = futures::stream::FuturesUnordered::new();
    let mut s = Session {
        rep,
        link: link.clone(),
        rx: EpochReceiver::new(),
        started: Vec::new(),
        merge: None,
        serve_tx: None,
        verify_serve_tx: None,
        verify_hold: None,
        sync: None,
        target: None,
        peer_current: est.peer.gen.current,
        flushing: 0,
        resync_id: 0,
        live: Liveness::new(0),
        clock: Instant::now(),
    };
    rep.update(|st| {
        st.session += 1;
        st.conn = ConnState::Connected;
        st.peer_role = Some(est.peer.role);
        st.peer_disk = Some(est.peer.disk);
        st.last_error = None;
        st.link = Some(link.clone());
        st.announced = Some(Announced::from(&local));
        st.peer_features = est.features;
    });
    // The local state is read after the link is visible: an admin change that this read
    // misses comes later and finds the link (and `announced`) itself (`primary` renegotiates,
    // `update_meta` sends the StateChange).
    let started = match rep.changed_since(&Announced::from(&local)) {
        Some(Staleness::Data) => {
            let why = "the local disk state or generation changed during the handshake";
            crate::info_rl!(rep.state_rl, resource = %rep.name, local_gen = %local.gen, "{why}: handshaking again");
            rep.renegotiate_link(Some(link.clone()), why);
            Err(format!("renegotiate: {why}"))
        }
        stale => {
            if let Some(Staleness::Role(now)) = stale {
                link.push_state_change(&Frame::StateChange {
                    role: now.role,
                    disk: now.disk,
                    ahead: false,
                });
                rep.update(|st| st.announced = Some(now));
            }
            // Consumed only now: a `--discard-my-data` the Hello did not carry yet counts
            // as a change above and is presented in the next Hello.
            rep.update(|st| st.discard_my_data = false);
            let r = s
                .start(decision.decision, decision.split_brain_resolved)
                .await;
            // Acted on (a resync, Established, or StandAlone after a split brain): an admin
            // call that renegotiated waits for this ([`Replicator::primary`]).
            rep.update(|st| st.decided_session = st.session);
            r
        }
    };
    let reason = match started {
        Err(r) => r,
        Ok(()) => {
            s.main_loop(&mut rd, &mut dec, &mut rbuf, &mut applying, &mut shutdown)
                .await
        }
    };
    link.close(reason.clone());
    s.drain(&mut applying).await;
    // Give the writer a moment to flush a final Disconnect/Refuse, then stop it.
    let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
    s.finish(&reason).await;
    reason
}

async fn writer(
    mut wr: crate::repl::peer::PeerWrite,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    link: Arc<Link>,
) {
    // A frame taken off the queue that did not fit the last batch (another shaping class).
    let mut carry: Option<Bytes> = None;
    // Batches are built here, reused (at most REPL_WRITE_BATCH_BYTES + one frame).
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        let f = match carry.take() {
            Some(f) => Some(f),
            None => tokio::select! {
                f = frames.recv() => f,
                _ = link.closed_notify.notified() => {
                    // Drain what is already queued (a final Disconnect), then stop.
                    let mut buf = BytesMut::new();
                    while let Ok(f) = frames.try_recv() {
                        link.dequeued(&f);
                        buf.extend_from_slice(&f);
                    }
                    let _ = wr.write_all(&buf).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            },
        };
        let Some(f) = f else { return };
        link.dequeued(&f);
        if frames.is_empty() {
            link.drained();
        }
        if f.len() < REPL_WRITE_BATCH_BYTES && frames.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(REPL_SEND_COALESCE_MS)) => {}
                _ = link.closed_notify.notified() => {}
            }
        }
        scratch.clear();
        let alone = batch_queued(f, &mut frames, &link, &mut carry, &mut scratch);
        let batch: &[u8] = alone.as_deref().unwrap_or(&scratch);
        let closed = || link.is_closed();
        let mut out = Progress {
            wr: &mut wr,
            link: &link,
        };
        if let Err(e) =
            crate::shaping::write_repl_frame(&mut out, batch, &link.closed_notify, closed).await
        {
            link.close(format!("writing to the peer: {e}"));
            return;
        }
        if link.is_closed() && carry.is_none() && frames.is_empty() {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// The socket's write half, counting every byte the kernel takes as progress of the link
/// ([`Link::stalled`] judges a peer that stopped reading by the time since).
struct Progress<'a, W> {
    wr: &'a mut W,
    link: &'a Link,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Progress<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut *this.wr).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.link.progressed();
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().wr).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().wr).poll_shutdown(cx)
    }
}

/// `first` and the frames queued behind it of the same shaping class, concatenated into
/// `batch` (empty on entry) up to [`REPL_WRITE_BATCH_BYTES`]: one write and one shaper request
/// instead of one per frame (under 4 KiB writes the per-frame `send` was the Primary's largest
/// syscall cost). Returns `first` itself when nothing joined it (no copy). Order is kept: a
/// frame of another class ends the batch and is handed back in `carry`.
fn batch_queued(
    first: Bytes,
    frames: &mut mpsc::UnboundedReceiver<Bytes>,
    link: &Link,
    carry: &mut Option<Bytes>,
    batch: &mut Vec<u8>,
) -> Option<Bytes> {
    let class = crate::shaping::repl_frame_class(&first);
    let mut first = Some(first);
    while first.as_ref().map_or(batch.len(), Bytes::len) < REPL_WRITE_BATCH_BYTES {
        let Ok(next) = frames.try_recv() else { break };
        if crate::shaping::repl_frame_class(&next) != class {
            *carry = Some(next);
            break;
        }
        link.dequeued(&next);
        if let Some(f) = first.take() {
            batch.extend_from_slice(&f);
        }
        batch.extend_from_slice(&next);
    }
    first
}

impl Session<'_> {
    /// Act on the sync decision.
    async fn start(&mut self, d: SyncDecision, sb_resolved: bool) -> Result<(), String> {
        let rep = self.rep;
        let local_role = rep.meta.superblock().role;
        match d {
            SyncDecision::SplitBrain | SyncDecision::Unrelated => {
                let what = if d == SyncDecision::SplitBrain {
                    "split brain: both nodes changed the data since they parted; nothing was overwritten. \
                     Decide which node's changes to discard and run `drl connect RES --discard-my-data` on it \
                     (as Secondary), then `drl connect RES` on the other"
                } else {
                    "unrelated data: the two volumes share no generation; nothing was overwritten. \
                     Run `drl connect RES --discard-my-data` on the node whose data should be replaced"
                };
                tracing::error!(resource = %rep.name, "{what}");
                self.link.push(&Frame::Disconnect {
                    reason: "split brain detected".into(),
                });
                rep.update(|st| {
                    st.standalone = true;
                    st.split_brain = Some(what.to_owned());
                });
                return Err(if d == SyncDecision::SplitBrain {
                    "split brain".into()
                } else {
                    "unrelated data".into()
                });
            }
            _ => {}
        }
        let is_source = matches!(
            d,
            SyncDecision::BitmapSyncSource | SyncDecision::FullSyncSource
        );
        let is_target = matches!(
            d,
            SyncDecision::BitmapSyncTarget | SyncDecision::FullSyncTarget
        );
        if is_target && local_role == meta::Role::Primary {
            let r = "this Primary would have to become SyncTarget: demote it (drl secondary) first";
            tracing::error!(resource = %rep.name, "{r}");
            self.link.push(&Frame::Disconnect { reason: r.into() });
            rep.update(|st| st.standalone = true);
            return Err(r.into());
        }
        if sb_resolved {
            crate::warn_rl!(rep.state_rl, resource = %rep.name, decision = ?d, "split brain resolved automatically by the after-sb policy");
        }
        if d == SyncDecision::NoSync {
            let peer_gen = self.peer_current;
            rep.update_meta(|sb| {
                if sb.gen.current == peer_gen && sb.gen.current != 0 {
                    let mut g = gen_of(sb.gen);
                    g.on_connected_in_sync();
                    sb.gen = gen_to_meta(g);
                }
            })
            .map_err(|e| e.to_string())?;
            rep.update(|st| st.repl = ReplState::Established);
            return Ok(());
        }
        if matches!(
            d,
            SyncDecision::FullSyncSource | SyncDecision::FullSyncTarget
        ) {
            rep.bitmap.set_all();
        }
        self.sync = Some(if is_source {
            SyncRole::Source
        } else {
            SyncRole::Target
        });
        rep.update(|st| {
            st.repl = if is_source {
                ReplState::WFBitMapS
            } else {
                ReplState::WFBitMapT
            }
        });
        if is_target {
            rep.update_meta(|sb| sb.disk_state = meta::DiskState::Inconsistent)
                .map_err(|e| e.to_string())?;
        }
        self.send_bitmap()
    }

    fn send_bitmap(&mut self) -> Result<(), String> {
        let bytes = bitmap_bytes(&self.rep.bitmap);
        let frames = bitmap_chunks(&bytes, self.rep.bitmap.blocks()).map_err(|e| e.to_string())?;
        for f in &frames {
            self.link.push(f);
        }
        Ok(())
    }

    async fn main_loop(
        &mut self,
        rd: &mut crate::repl::peer::PeerRead,
        dec: &mut crate::repl::wire::Decoder,
        rbuf: &mut BytesMut,
        applying: &mut futures::stream::FuturesUnordered<Applying>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> String {
        let rep = self.rep;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if let Err(e) = self.verify_compare_when_idle().await {
                // A local read error: the disk's problem, not the peer's.
                return e;
            }
            while self.rx.wants_input() && self.verify_hold.is_none() {
                match dec.decode(rbuf) {
                    Ok(Some(f)) => {
                        if let Err(e) = self.on_frame(f).await {
                            return self.protocol_error(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(format!("corrupt frame: {e}")),
                }
            }
            if self.link.is_closed() {
                return self.link.reason().unwrap_or_else(|| "closed".into());
            }
            let idle = self.rx.idle() && self.flushing == 0;
            self.link.rx_idle.store(idle, Ordering::Release);
            if self.verify_hold.is_some() && idle {
                // The held VerifyDigests can be compared now (top of the loop).
                continue;
            }
            applying.extend(self.started.drain(..));
            let want = self.rx.wants_input() && self.verify_hold.is_none();
            if rbuf.capacity() - rbuf.len() < REPL_READ_CHUNK_BYTES / 4 {
                rbuf.reserve(REPL_READ_CHUNK_BYTES);
            }
            tokio::select! {
                r = rd.read_buf(rbuf), if want => match r {
                    Ok(0) => return "the peer closed the connection".into(),
                    Ok(n) => {
                        self.live.on_receive(self.now_ms());
                        let _ = n;
                    }
                    Err(e) => return format!("reading from the peer: {e}"),
                },
                Some(d) = rx::next_applied(applying, &rep.disk), if !applying.is_empty() => {
                    // Completions show the peer's data is being applied: not idle.
                    self.live.on_receive(self.now_ms());
                    if let Err(e) = self.on_done(d, true) { return e }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick().await { return e }
                }
                _ = shutdown.changed() => {
                    self.link.push(&Frame::Disconnect { reason: "peer daemon shutting down".into() });
                    return "shutting down".into();
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn protocol_error(&self, e: String) -> String {
        let rep = self.rep;
        rep.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        crate::warn_rl!(rep.rl, resource = %rep.name, peer = %rep.peer_node(), "protocol error, dropping the connection: {e}");
        self.link.push(&Frame::Disconnect {
            reason: "protocol error".into(),
        });
        rep.update(|st| st.last_error = Some(e.clone()));
        format!("protocol error: {e}")
    }

    async fn on_tick(&mut self) -> Result<(), String> {
        self.verify_peer_idle();
        match self.live.on_tick(self.now_ms(), self.link.stalled_now()) {
            Some(LiveAction::Close(why)) => return Err(why.to_string()),
            Some(LiveAction::Ping(seq)) => {
                self.link.push(&Frame::Ping { seq });
            }
            None => {}
        }
        // Close the open epoch every tick: without a flush from the application its writes
        // would otherwise wait for a barrier (their bits set, the lag growing) indefinitely.
        {
            let mut t = self.link.tracker();
            if let Some(e) = t.close_epoch() {
                self.link.push(&Frame::Barrier { epoch: e });
            }
        }
        // Pull-ahead: once the buffer drained (and not sooner than REPL_AHEAD_MIN_MS), resync
        // what was only marked, then ship again.
        let rep = self.rep;
        let since = rep.state().ahead_since;
        if self.link.ahead.load(Ordering::Acquire)
            && since.is_some_and(|t| t.elapsed() >= Duration::from_millis(REPL_AHEAD_MIN_MS))
            && self.link.tracker().inflight_writes() == 0
            && self.sync.is_none()
        {
            // Never waited for inside the session loop (it must keep reading and timing out):
            // a writer holding the lock shared now means another try at the next tick.
            let Ok(_excl) = rep.resync_lock.try_write() else {
                return Ok(());
            };
            self.link.ahead.store(false, Ordering::Release);
            self.sync = Some(SyncRole::Source);
            rep.update(|st| {
                st.ahead_since = None;
                st.repl = ReplState::SyncSource;
                st.resync_total_bytes = rep.bitmap.dirty_bytes();
                st.resync_started = Some(Instant::now());
            });
            crate::info_rl!(rep.state_rl, resource = %rep.name, "send buffer drained: leaving Ahead, resyncing the marked blocks");
            self.send_bitmap()?;
            // The peer's bitmap now covers every write that was not shipped.
            self.link.tracker().forget_unsent();
        }
        Ok(())
    }

    async fn on_frame(&mut self, f: Frame) -> Result<(), String> {
        let rep = self.rep;
        match f {
            Frame::Data {
                seq,
                epoch,
                offset,
                fua,
                data,
            } => {
                let len = data.len() as u64;
                let data = AlignedBuf::from_slice(&data);
                self.receive_write(seq, epoch, offset, len, Apply::Data { offset, data, fua })
            }
            Frame::Trim(w) => self.receive_range(w, Apply::Trim(w)),
            Frame::Zeroes(w) => self.receive_range(w, Apply::Zeroes(w)),
            Frame::Barrier { epoch } => self.feed(RxEvent::Barrier { epoch }),
            Frame::BarrierAck { epoch } => {
                let rel = self
                    .link
                    .tracker()
                    .on_barrier_ack(epoch)
                    .map_err(|e| e.to_string())?;
                for r in &rel.clearable {
                    rep.bitmap.clear_blocks(r.start, r.end - r.start);
                }
                self.link.room.notify_waiters();
                Ok(())
            }
            Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits,
            } => {
                let total = rep.bitmap.blocks();
                let (m, buf) = self.merge.get_or_insert_with(|| {
                    (
                        BitmapMerge::new(total),
                        vec![0u8; total.div_ceil(8) as usize],
                    )
                });
                let done = m
                    .merge(buf, first_bit, bit_count, last, &bits)
                    .map_err(|e| e.to_string())?;
                if done {
                    let (_, buf) = self.merge.take().unwrap_or_default_merge();
                    self.bitmap_received(&buf).await?;
                }
                Ok(())
            }
            Frame::ResyncRequest { offset, len } => self.serve(offset, len),
            Frame::ResyncData { offset, data } => {
                let len = data.len() as u64;
                self.target_answer(offset, len)?;
                let (pipe, data) = (rep.pipe.clone(), AlignedBuf::from_slice(&data));
                self.resync_write(offset, len, false, async move {
                    let w = Write::Data { data, fua: false };
                    pipe.apply(offset, w).await
                });
                Ok(())
            }
            Frame::ResyncZeroes { offset, len } => {
                self.target_answer(offset, u64::from(len))?;
                let pipe = rep.pipe.clone();
                self.resync_write(offset, u64::from(len), true, async move {
                    let w = Write::Zeroes {
                        len,
                        may_trim: true,
                        fua: false,
                    };
                    pipe.apply(offset, w).await
                });
                Ok(())
            }
            Frame::ResyncDone => {
                if self.sync != Some(SyncRole::Source) {
                    return Err("ResyncDone, but this node is not SyncSource".into());
                }
                self.sync = None;
                self.serve_tx = None;
                // The resync cleared the bits in memory; put the clean bitmap on disk now (as
                // the SyncTarget does), not at the next periodic persist: a crash before it
                // would otherwise resync everything again on restart. Not awaited, so the
                // session goes on taking acks and pings (the metadata's flush lock keeps
                // persists in order); a failure only leaves more marked on disk, which is safe.
                let r = rep.clone();
                tokio::spawn(async move {
                    if let Err(e) = persist_bitmap(&r).await {
                        tracing::error!(resource = %r.name, "persisting the bitmap after the resync: {e}");
                    }
                });
                rep.update_meta(|sb| {
                    let mut g = gen_of(sb.gen);
                    g.on_resync_finished_as_source();
                    sb.gen = gen_to_meta(g);
                })
                .map_err(|e| e.to_string())?;
                rep.update(|st| {
                    st.repl = ReplState::Established;
                    crate::repl::verify::settle(st);
                    st.peer_disk = Some(drbd_compat::DiskState::UpToDate);
                    st.resync_started = None;
                });
                crate::info_rl!(rep.state_rl, resource = %rep.name, "resync finished (SyncSource)");
                Ok(())
            }
            Frame::StateChange { role, disk, ahead } => {
                if role == Role::Primary && rep.meta.superblock().role == meta::Role::Primary {
                    return Err("the peer became Primary while this node is Primary".into());
                }
                rep.update(|st| {
                    st.peer_role = Some(role);
                    st.peer_disk = Some(disk);
                    st.repl = with_peer_ahead(st.repl, ahead);
                    crate::repl::verify::settle(st);
                });
                Ok(())
            }
            f @ (Frame::VerifyRequest { .. }
            | Frame::VerifyDigests { .. }
            | Frame::VerifyResult { .. }
            | Frame::VerifyDone { .. }) => self.on_verify_frame(f),
            Frame::Ping { seq } => {
                self.link.push(&Frame::PingAck { seq });
                Ok(())
            }
            Frame::PingAck { seq } => {
                self.link.on_ping_ack(seq);
                Ok(())
            }
            Frame::Disconnect { reason } => {
                crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), "the peer disconnects: {reason}");
                self.link.close(format!("the peer disconnected: {reason}"));
                Ok(())
            }
            other => Err(format!(
                "unexpected {} frame after the handshake",
                other.frame_type().name()
            )),
        }
    }

    /// The session is over: keep every unacked bit, persist the bitmap, update the state.
    async fn finish(&mut self, reason: &str) {
        let rep = self.rep;
        let lag_ms = self.link.tracker().lag_ms(rep.now_ms());
        let role_at_loss = rep.meta.superblock().role.as_str();
        let lost = self.link.tracker().on_disconnect();
        let was_replicating = {
            let st = rep.state();
            matches!(
                st.repl,
                ReplState::Established
                    | ReplState::Ahead
                    | ReplState::SyncSource
                    | ReplState::VerifyS
                    | ReplState::VerifyT
            )
        };
        if let Err(e) = persist_bitmap(rep).await {
            tracing::error!(resource = %rep.name, "persisting the bitmap after disconnect: {e}");
        }
        let sb = rep.meta.superblock();
        if was_replicating && sb.role == meta::Role::Primary && sb.gen.bitmap == 0 {
            // DRBD: a Primary that loses its peer starts a new data generation; its bitmap
            // tracks the changes since.
            let _ = rep.update_meta(|sb| {
                let mut g = gen_of(sb.gen);
                g.new_current_on_peer_lost_as_primary();
                sb.gen = gen_to_meta(g);
            });
        }
        rep.update(|st| {
            st.session += 1;
            st.link = None;
            st.announced = None;
            st.peer_role = None;
            st.peer_disk = None;
            st.repl = ReplState::Off;
            st.ahead_since = None;
            st.peer_features = 0;
            // A VerifyS run ends by itself (its task sees the link close, or its results
            // channel close) and reports; the peer's run ends here.
            st.verify_tx = None;
            st.verify_peer = None;
            st.resync_started = None;
            let last = rep.stats.last_received_unix_ms.load(std::sync::atomic::Ordering::Relaxed);
            st.link_lost = Some(serde_json::json!({
                "at_unix_ms": crate::repl::replicator::unix_ms(),
                "role": role_at_loss,
                "lag_ms": lag_ms,
                "unacked_writes": lost.writes,
                "unacked_bytes": lost.bytes,
                "last_received_unix_ms": if last == 0 { serde_json::Value::Null } else { last.into() },
            }));
            st.conn = if st.standalone {
                ConnState::StandAlone
            } else {
                ConnState::Connecting
            };
        });
        crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), unacked_writes = lost.writes,
            unacked_bytes = lost.bytes, "disconnected: {reason}");
    }
}

trait TakeMerge {
    fn unwrap_or_default_merge(self) -> (BitmapMerge, Vec<u8>);
}

impl TakeMerge for Option<(BitmapMerge, Vec<u8>)> {
    fn unwrap_or_default_merge(self) -> (BitmapMerge, Vec<u8>) {
        self.unwrap_or_else(|| (BitmapMerge::new(0), Vec::new()))
    }
}

/// Write the changed bitmap pages to the metadata (blocking I/O off the runtime).
pub(crate) async fn persist_bitmap(rep: &Arc<Replicator>) -> Result<(), String> {
    let (bm, meta) = (rep.bitmap.clone(), rep.meta.clone());
    tokio::task::spawn_blocking(move || bm.flush_to(&meta))
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}
