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
use drbd_compat::{ConnState, ReplState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::limits::{
    REPL_AHEAD_MIN_MS, REPL_PEER_TIMEOUT_MS, REPL_READ_CHUNK_BYTES, REPL_RESYNC_WINDOW_REQUESTS,
    REPL_SEND_COALESCE_MS, REPL_WRITE_BATCH_BYTES,
};
use crate::repl::core::{Action, Core, Ctx, OpId};
use crate::repl::epoch::{EpochLimits, EpochTracker};
use crate::repl::frame::{Frame, VerifyRun};
use crate::repl::handshake::LocalInfo;
use crate::repl::link::Link;
use crate::repl::peer::Conn;
use crate::repl::replicator::{
    disk_of, gen_of, gen_to_meta, role_of, Announced, Replicator, Staleness,
};
use crate::repl::resync::check_request;
use crate::repl::state::{decide, NodeState, SyncDecision};
use crate::volume::meta;
use crate::volume::{AlignedBuf, BlockDevice};

#[path = "session_exec.rs"]
mod exec;
#[path = "session_rx.rs"]
mod rx;
#[path = "session_sync.rs"]
mod sync;
#[path = "session_verify.rs"]
mod verify;

/// A disk operation of the core being carried out; it ends with its completion.
type Applying =
    std::pin::Pin<Box<dyn std::future::Future<Output = (OpId, Result<(), String>)> + Send>>;

/// What this node tells the peer in the handshake.
pub(crate) fn local_info(rep: &Replicator) -> LocalInfo {
    let sb = rep.meta.superblock();
    let vols = rep.vols();
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
        size_bytes: rep.capacity_bytes(),
        usable_bytes: rep.size_bytes(),
        gen,
        dirty_bits: vols.iter().map(|v| v.bitmap.count_dirty()).sum(),
        role: role_of(sb.role),
        disk,
        features: crate::repl::wire::features::ALL,
        // The volumes on this node now (`drl adjust` adds some at run time).
        group_sizes: vols[1..].iter().map(|v| v.disk.size_bytes()).collect(),
    }
}

struct Session<'a> {
    rep: &'a Arc<Replicator>,
    link: Arc<Link>,
    /// The session's protocol state (sans-I/O, [`crate::repl::core`]).
    core: Core<AlignedBuf>,
    /// Disk operations the core asked for that nobody polled yet (see `session_rx`).
    started: Vec<Applying>,
    serve_tx: Option<mpsc::Sender<(u64, u32)>>,
    /// Where the core's VerifyProvides go to be answered, in order (`verify::answer`).
    verify_serve_tx: Option<mpsc::Sender<(VerifyRun, u64, u64, u32)>>,
    /// A provide of this node's own run that could not read (back from `verify::answer`).
    verify_failed_tx: mpsc::Sender<(u64, u32, String)>,
    verify_failed_rx: mpsc::Receiver<(u64, u32, String)>,
    /// `drl verify` on this node: (run id, rate) for the core.
    verify_cmd_rx: mpsc::Receiver<(u64, u64)>,
    /// Compare reads the core asked for that nobody polled yet.
    verify_reads: Vec<verify::VerifyReading>,
    /// The session's clock: the core gets its time from here.
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
    let shaper = rep.shaping.shaper.clone();
    let writer = tokio::spawn(writer(wr, frames, link.clone(), shaper));
    let mut applying = futures::stream::FuturesUnordered::new();
    let (verify_failed_tx, verify_failed_rx) =
        mpsc::channel(crate::limits::REPL_VERIFY_WINDOW_REQUESTS);
    let (verify_cmd_tx, verify_cmd_rx) = mpsc::channel(1);
    // The volumes of the Hellos (equal on both sides, or the handshake refused): one added
    // since is announced by the session (`announce_added_volume`).
    let mut sizes = rep.volume_sizes();
    sizes.truncate(1 + local.group_sizes.len());
    let mut core = Core::with_volumes(sizes, est.peer.gen.current, 0);
    link.set_volumes(core.volume_count());
    core.set_verify_negotiated(est.features & crate::repl::wire::features::VERIFY != 0);
    let mut s = Session {
        rep,
        link: link.clone(),
        core,
        started: Vec::new(),
        serve_tx: None,
        verify_serve_tx: None,
        verify_failed_tx,
        verify_failed_rx,
        verify_cmd_rx,
        verify_reads: Vec::new(),
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
        st.verify_tx = Some(verify_cmd_tx);
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
            let r = s.start(decision.decision, decision.split_brain_resolved);
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
    shaper: Arc<crate::shaping::Shaper>,
) {
    // A frame taken off the queue that did not fit the last batch (another shaping class).
    let mut carry: Option<Bytes> = None;
    // Batches are gathered here, the queue reused (at most REPL_WRITE_BATCH_BYTES + one frame).
    let mut batch = crate::repl::shaped::FrameBatch::default();
    // When the last batch went to the socket.
    let mut last_send: Option<Instant> = None;
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
        if waits_for_company(f.len(), frames.is_empty(), last_send.map(|t| t.elapsed())) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(REPL_SEND_COALESCE_MS)) => {}
                _ = link.closed_notify.notified() => {}
            }
        }
        batch.clear();
        batch_queued(f, &mut frames, &link, &mut carry, &mut batch);
        let closed = || link.is_closed();
        let mut out = Progress {
            wr: &mut wr,
            link: &link,
        };
        if let Err(e) = crate::repl::shaped::write_repl_frames(
            &shaper,
            &mut out,
            &mut batch,
            &link.closed_notify,
            closed,
        )
        .await
        {
            link.close(format!("writing to the peer: {e}"));
            return;
        }
        last_send = Some(Instant::now());
        if link.is_closed() && carry.is_none() && frames.is_empty() {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// Whether the socket writer, holding one frame of `len` bytes (`alone`: nothing queued behind
/// it), waits [`REPL_SEND_COALESCE_MS`] for more before it sends. Only a small frame waits,
/// and only when the last send was that recent (`since_send`): writes then come faster than
/// the wait, so it gathers company. A write after a quiet spell goes at once: waiting would
/// find nobody and cost a timer and a wake-up of the writer per write (issue 17: at queue
/// depth 1, one write every few hundred microseconds or slower, the Primary's CPU per
/// write was twice an unreplicated daemon's).
fn waits_for_company(len: usize, alone: bool, since_send: Option<Duration>) -> bool {
    len < REPL_WRITE_BATCH_BYTES
        && alone
        && since_send.is_some_and(|d| d < Duration::from_millis(REPL_SEND_COALESCE_MS))
}

/// The socket's write half, counting every byte the kernel takes as progress of the link
/// ([`Link::stalled`] judges a peer that stopped reading by the time since).
struct Progress<'a, W> {
    wr: &'a mut W,
    link: &'a Link,
}

impl<W> Progress<'_, W> {
    /// A write's result, counted as the link's progress when the kernel took bytes.
    fn counted(
        &self,
        r: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.link.progressed();
        }
        r
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Progress<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut *this.wr).poll_write(cx, buf);
        this.counted(r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut *this.wr).poll_write_vectored(cx, bufs);
        this.counted(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.wr.is_write_vectored()
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

/// `first` and the frames queued behind it of the same shaping class, gathered into `batch`
/// (empty on entry) up to [`REPL_WRITE_BATCH_BYTES`]: one vectored write and one shaper
/// request instead of one per frame (under 4 KiB writes the per-frame `send` was the Primary's
/// largest syscall cost), and no copy of the frames. Order is kept: a frame of another class
/// ends the batch and is handed back in `carry`.
fn batch_queued(
    first: Bytes,
    frames: &mut mpsc::UnboundedReceiver<Bytes>,
    link: &Link,
    carry: &mut Option<Bytes>,
    batch: &mut crate::repl::shaped::FrameBatch,
) {
    let class = crate::repl::shaped::repl_frame_class(&first);
    batch.push(first);
    while batch.remaining() < REPL_WRITE_BATCH_BYTES {
        let Ok(next) = frames.try_recv() else { break };
        if crate::repl::shaped::repl_frame_class(&next) != class {
            *carry = Some(next);
            break;
        }
        link.dequeued(&next);
        batch.push(next);
    }
}

impl Session<'_> {
    /// Act on the sync decision (in the core).
    fn start(&mut self, d: SyncDecision, sb_resolved: bool) -> Result<(), String> {
        let sync = !matches!(
            d,
            SyncDecision::NoSync | SyncDecision::SplitBrain | SyncDecision::Unrelated
        );
        if sb_resolved && sync {
            crate::warn_rl!(self.rep.state_rl, resource = %self.rep.name, decision = ?d, "split brain resolved automatically by the after-sb policy");
        }
        self.step(|c, ctx| c.start(ctx, d))
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
        let mut verify_reads = futures::stream::FuturesUnordered::new();
        loop {
            while self.core.wants_input() {
                match dec.decode(rbuf) {
                    Ok(Some(f)) => {
                        if let Err(e) = self.step(|c, ctx| c.on_frame(ctx, f)) {
                            return e;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(format!("corrupt frame: {e}")),
                }
            }
            if self.link.is_closed() {
                return self.link.reason().unwrap_or_else(|| "closed".into());
            }
            let idle = self.core.idle();
            self.link.rx_idle.store(idle, Ordering::Release);
            applying.extend(self.started.drain(..));
            verify_reads.extend(self.verify_reads.drain(..));
            let want = self.core.wants_input();
            if rbuf.capacity() - rbuf.len() < REPL_READ_CHUNK_BYTES / 4 {
                rbuf.reserve(REPL_READ_CHUNK_BYTES);
            }
            tokio::select! {
                r = rd.read_buf(rbuf), if want => match r {
                    Ok(0) => return "the peer closed the connection".into(),
                    Ok(_) => {
                        let now = self.now_ms();
                        self.core.on_bytes(now);
                    }
                    Err(e) => return format!("reading from the peer: {e}"),
                },
                Some((id, r)) = rx::next_applied(applying, &rep.disk), if !applying.is_empty() => {
                    if let Err(e) = self.step(|c, ctx| c.on_disk_done(ctx, id, r)) { return e }
                }
                Some((id, r)) = futures::StreamExt::next(&mut verify_reads), if !verify_reads.is_empty() => {
                    if let Err(e) = self.step(|c, ctx| c.on_verify_read(ctx, id, r)) { return e }
                }
                Some((id, rate)) = self.verify_cmd_rx.recv() => {
                    let peer_primary = rep.state().peer_role == Some(drbd_compat::Role::Primary);
                    if let Err(e) = self.step(|c, ctx| c.verify_start(ctx, id, rate, peer_primary)) { return e }
                }
                Some((offset, len, why)) = self.verify_failed_rx.recv() => {
                    if let Err(e) = self.step(|c, ctx| c.verify_provide_failed(ctx, offset, len, why)) { return e }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick() { return e }
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

    fn on_tick(&mut self) -> Result<(), String> {
        self.verify_check_state()?;
        self.announce_added_volume()?;
        let stalled = self.link.stalled_now();
        self.step(|c, ctx| c.on_tick(ctx, stalled))?;
        // Pull-ahead: once the buffer drained (and not sooner than REPL_AHEAD_MIN_MS), resync
        // what was only marked, then ship again.
        let rep = self.rep;
        let since = rep.state().ahead_since;
        if self.link.ahead.load(Ordering::Acquire)
            && since.is_some_and(|t| t.elapsed() >= Duration::from_millis(REPL_AHEAD_MIN_MS))
            && self.link.tracker().inflight_writes() == 0
            && self.core.sync_role().is_none()
        {
            // Never waited for inside the session loop (it must keep reading and timing out):
            // a writer holding the lock shared now means another try at the next tick.
            let Ok(_excl) = rep.resync_lock.try_write() else {
                return Ok(());
            };
            self.link.ahead.store(false, Ordering::Release);
            rep.update(|st| st.ahead_since = None);
            self.step(|c, ctx| c.leave_ahead(ctx))?;
            // The peer's bitmap now covers every write that was not shipped.
            self.link.tracker().forget_unsent();
        }
        Ok(())
    }

    /// A volume added on this node since the handshake (`drl adjust`): a Primary announces it
    /// at a barrier and syncs it, once no resync or verify runs (the next tick tries again);
    /// a Secondary waits for the Primary's announcement.
    fn announce_added_volume(&mut self) -> Result<(), String> {
        let n = self.core.volume_count();
        // Not while Ahead either: the volume's sync starts once the marked blocks' resync
        // (leaving Ahead) is over.
        if self.rep.role() != drbd_compat::Role::Primary
            || !self.core.can_add_volume()
            || self.link.ahead.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let Some(size) = self.rep.volume_sizes().get(n).copied() else {
            return Ok(());
        };
        let vol = crate::repl::core::VolumeId(n as u16);
        self.step(|c, ctx| c.add_volume(ctx, vol, size))
    }

    /// The session is over: keep every unacked bit, persist the bitmap, update the state.
    async fn finish(&mut self, reason: &str) {
        let rep = self.rep;
        let role_at_loss = rep.meta.superblock().role.as_str();
        let repl = rep.state().repl;
        let gen_bitmap = rep.meta.superblock().gen.bitmap;
        let done = {
            let link = self.link.clone();
            let group = rep.group_bitmaps();
            let group: Vec<&crate::volume::bitmap::DirtyBitmap> =
                group.iter().map(|b| &**b).collect();
            let ctx = Ctx {
                // The tracker stamps writes on the replicator's clock (lag_ms).
                now_ms: rep.now_ms(),
                role: rep.role(),
                bitmap: &rep.bitmap,
                group_bitmaps: &group,
                tracker: &link.tracker,
                resync_paused: rep.resync_is_paused(),
            };
            self.core.finish(&ctx, repl, gen_bitmap)
        };
        let (lost, lag_ms) = (done.lost, done.lag_ms);
        // This node's verify run ends with the session (also one `drl verify` started just
        // as the link closed, before the core heard of it); the peer's ends below.
        let run = self.core.verify_abort(reason).or_else(|| {
            rep.state()
                .verify
                .as_ref()
                .map(|p| crate::repl::core::VerifyEnd {
                    id: p.id,
                    stopped: Some(reason.to_string()),
                    checked_bytes: p.checked_bytes,
                    out_of_sync_blocks: p.differing_blocks,
                    marked: "none",
                })
        });
        if let Some(end) = run {
            crate::repl::verify::report(rep, end);
        }
        if let Err(e) = persist_bitmap(rep).await {
            tracing::error!(resource = %rep.name, "persisting the bitmap after disconnect: {e}");
        }
        if done.new_generation {
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
            st.verify_tx = None;
            st.verify_peer = None;
            st.resync_started = None;
            st.resync_volume = None;
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

/// Write every volume's changed bitmap pages to its metadata.
pub(crate) async fn persist_bitmap(rep: &Arc<Replicator>) -> Result<(), String> {
    rep.persist_bitmaps().await
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn only_a_small_lone_frame_right_after_a_send_waits_for_company() {
        let recent = Some(Duration::from_micros(50));
        let quiet = Some(Duration::from_millis(REPL_SEND_COALESCE_MS));
        // Writes coming faster than the wait: gather them into one send.
        assert!(waits_for_company(4096, true, recent));
        // The first write of a session, or one after a quiet spell, goes at once.
        assert!(!waits_for_company(4096, true, None));
        assert!(!waits_for_company(4096, true, quiet));
        // Company already queued, or a frame that fills a batch alone: no wait.
        assert!(!waits_for_company(4096, false, recent));
        assert!(!waits_for_company(REPL_WRITE_BATCH_BYTES, true, recent));
    }
}
