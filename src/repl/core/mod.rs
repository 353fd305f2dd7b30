//! The sans-I/O core of one replication connection: a state machine that owns the session's
//! protocol state, takes events and returns actions. No tokio, no socket, no clock read, no
//! randomness: the time comes in with every event ([`Ctx::now_ms`]), so the tokio shell
//! (`repl::session`) and the deterministic simulator (`repl::core::sim`, tests) drive the same
//! code (ARCHITECTURE.md, "The sans-I/O session core").
//!
//! Events in: a decoded [`Frame`] ([`Core::on_frame`]), a completion of a disk operation the
//! core asked for ([`Core::on_disk_done`]), a timer tick ([`Core::on_tick`]), the sync
//! decision of the handshake ([`Core::start`]), leaving Ahead ([`Core::leave_ahead`]).
//! Actions out ([`Action`]): frames to send, disk operations (each with an [`OpId`] whose
//! completion comes back as an event), metadata and live-state changes, counters, and the end
//! of the session with its reason ([`SessionEnd`]). The shell carries the actions out in
//! order and never awaits anything inside a step, so the session always keeps reading,
//! pinging and timing out.
//!
//! What the core owns: liveness (ping, silence, stall), the receiver's epoch order
//! ([`EpochReceiver`]: apply, flush, then ack), barrier acks of the sender's epochs (bits
//! cleared), the sync decision acted on, the bitmap exchange, the SyncTarget's request pump and
//! its end (flush, persist, adopt the generation), the SyncSource's request checks and its end,
//! the peer's state changes. What it reads but does not own ([`Ctx`]): the local role (admin
//! commands change it on other tasks), the in-memory dirty bitmap, the sender's
//! [`EpochTracker`] (shared with application writers under a lock), the resync pause flag.
//! Online verify's protocol is here too (`verify.rs`): the runs of both sides, the
//! comparer's hold, marking; the shell reads and shows.
//!
//! Consistency groups (issue 15): disk operations name a [`VolumeId`]. A group's volumes share
//! this core ([`Core::with_volumes`]): received Data/Trim/Zeroes frames name their volume, and
//! they enter the one [`EpochReceiver`], so the Secondary applies epochs in order across
//! volumes; an epoch's barrier ack waits for a flush of every volume of the group, so an acked
//! epoch is durable on all of them. The bitmap exchange sends every volume's bitmap in one
//! transfer (each volume's bits from a byte boundary, see `sync.rs`), and resync requests and
//! answers carry offsets in the group's address space ([`VolumeId::group_offset`]), so one
//! resync covers each volume's own dirty bits; its flushes and bitmap persists run on every
//! volume before the generation is adopted.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use drbd_compat::{DiskState, ReplState, Role};

use crate::limits::{BITMAP_BLOCK_BYTES, GROUP_ADDRESS_VOLUME_SHIFT_BITS};
use crate::repl::bitmap::{bitmap_chunks, BitmapMerge};
use crate::repl::epoch::EpochTracker;
use crate::repl::frame::{Frame, RangeWrite};
use crate::repl::liveness::{LiveAction, Liveness};
use crate::repl::receiver::{EpochReceiver, RxAction, RxEvent};
use crate::repl::resync::{bitmap_bytes, check_request, or_into, Target};
use crate::repl::state::SyncDecision;
use crate::volume::bitmap::DirtyBitmap;

pub use crate::repl::liveness::SessionEnd as LiveEnd;

mod add_volume;
mod sync;
use sync::group_bitmap_bits;
mod verify;
pub use verify::{VerifyEnd, VerifyEvent};

/// Id of a disk operation the core asked for; its completion names it.
pub type OpId = u64;

/// A volume of the connection's resource (consistency groups: several share one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VolumeId(pub u16);

impl VolumeId {
    /// `offset` of this volume in the group's one address space, which the sender's epoch
    /// tracker keeps its ranges in (volume 0's offsets are unchanged).
    pub fn group_offset(self, offset: u64) -> u64 {
        debug_assert!(offset < 1 << GROUP_ADDRESS_VOLUME_SHIFT_BITS);
        u64::from(self.0) << GROUP_ADDRESS_VOLUME_SHIFT_BITS | offset
    }

    /// The volume and its offset of an offset in the group's address space (resync requests
    /// and answers carry these: volume 0's are plain offsets, so its frames are unchanged).
    pub fn of_group_offset(offset: u64) -> (VolumeId, u64) {
        (
            VolumeId((offset >> GROUP_ADDRESS_VOLUME_SHIFT_BITS) as u16),
            offset & ((1 << GROUP_ADDRESS_VOLUME_SHIFT_BITS) - 1),
        )
    }

    /// The volume and its block index of a block of the group's address space.
    pub fn of_group_block(block: u64) -> (VolumeId, u64) {
        let shift = GROUP_ADDRESS_VOLUME_SHIFT_BITS - BITMAP_BLOCK_BYTES.trailing_zeros();
        (
            VolumeId((block >> shift) as u16),
            block & ((1 << shift) - 1),
        )
    }
}

/// A received payload, as the shell wants it for the disk (production: an aligned buffer,
/// copied out of the read buffer once; the simulator: bytes).
pub trait Payload: Send + 'static {
    fn from_wire(b: &[u8]) -> Self;
}

impl Payload for Bytes {
    fn from_wire(b: &[u8]) -> Self {
        Bytes::copy_from_slice(b)
    }
}

impl Payload for crate::volume::AlignedBuf {
    fn from_wire(b: &[u8]) -> Self {
        crate::volume::AlignedBuf::from_slice(b)
    }
}

/// A write to apply to the local volume (through its write pipeline).
#[derive(Debug)]
pub enum Write<B> {
    Data { data: B, fua: bool },
    Trim { len: u32, fua: bool },
    Zeroes { len: u32, fua: bool },
}

/// A disk operation; its completion is [`Core::on_disk_done`] with the same [`OpId`].
#[derive(Debug)]
pub enum DiskOp<B> {
    /// A received application write (released in epoch order) or a resync answer.
    Write { offset: u64, write: Write<B> },
    /// Flush the volume (fdatasync).
    Flush,
    /// Write the changed pages of the in-memory bitmap to the metadata.
    PersistBitmap,
}

/// A change of the persistent state (the superblock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaChange {
    /// This node becomes SyncTarget: its disk is Inconsistent until the resync ends.
    Inconsistent,
    /// Connected with nothing to sync: if the generations match, forget the bitmap generation.
    ConnectedInSync { peer_current: u64 },
    /// The resync ended here as SyncSource.
    ResyncFinishedSource,
    /// The resync ended here as SyncTarget: adopt the source's generation, UpToDate.
    ResyncFinishedTarget { source_current: u64 },
}

/// A change of the live state (status, events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Repl(ReplState),
    /// A resync starts in this state with this many out-of-sync bytes.
    ResyncStarted {
        repl: ReplState,
        total_bytes: u64,
    },
    /// The resync ended: Established; `peer_up_to_date` on the SyncSource.
    ResyncEnded {
        peer_up_to_date: bool,
    },
    /// The peer's StateChange.
    Peer {
        role: Role,
        disk: DiskState,
        ahead: bool,
    },
    /// Split brain or unrelated data: StandAlone with this text for the admin.
    SplitBrain {
        text: &'static str,
    },
    /// The decision needs the admin (StandAlone).
    StandAlone,
    /// The resync that starts is the full sync of this volume alone, added at run time.
    VolumeSync(VolumeId),
}

/// Counters of the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    ReceivedBytes(u64),
    ResyncReceivedBytes(u64),
    ResyncZeroBytes(u64),
}

/// Something the shell must do, in order.
#[derive(Debug)]
pub enum Action<B> {
    Send(Frame),
    Disk {
        id: OpId,
        vol: VolumeId,
        op: DiskOp<B>,
    },
    /// Persist the bitmap in the background; nothing waits for it (a failure only leaves
    /// more marked on disk).
    PersistBitmapDetached,
    Meta(MetaChange),
    State(StateChange),
    Count(Counter),
    /// A barrier ack freed room in the send buffer: wake blocked writers.
    RoomFreed,
    /// A PingAck (a state-change confirmation if its top bit is set).
    PingAck(u64),
    /// Hand a resync request to the answering task (this node is SyncSource). `offset` is in
    /// the group's address space ([`VolumeId::of_group_offset`]; volume 0's is plain), and
    /// the answer names the same offset.
    Serve {
        offset: u64,
        len: u32,
    },
    /// The SyncSource's resync ended: the answering task may stop.
    StopServing,
    /// Online verify: read `len` bytes at `offset` at this point of the write stream and
    /// queue their VerifyDigests for `run` (the shell: under the exclusive resync lock, so
    /// the frame follows exactly the writes the read saw; in request order, on one task).
    VerifyProvide {
        run: crate::repl::frame::VerifyRun,
        id: u64,
        offset: u64,
        len: u32,
    },
    /// Online verify: read `len` bytes at `offset` now and hand their digests
    /// ([`crate::repl::verify::block_digests`]) to [`Core::on_verify_read`] with `id`.
    VerifyRead {
        id: OpId,
        offset: u64,
        len: u32,
    },
    /// Online verify's progress, marks and ends, for the status and the log.
    Verify(VerifyEvent),
    /// An INFO line for the state log (rate-limited by the shell).
    Info(&'static str),
    /// Close the open epoch and queue its Barrier, in one step under the tracker's lock (the
    /// shell's [`crate::repl::link::Link::close_epoch`]). Not a `Send` of a Barrier the core
    /// closed: the application writers enqueue their frames under that lock on other threads,
    /// so a Barrier queued after the lock was released could follow a write of the next
    /// epoch ("frame for epoch 3, expected epoch 2" at the peer, seen in tests/repl_storms.rs).
    CloseEpoch,
    /// Consistency groups: close the open epoch and queue a `VolumeAdd` of `vol` after its
    /// Barrier, in one step under the tracker's lock (as [`Action::CloseEpoch`]), and from
    /// then on ship the volume's writes ([`crate::repl::link::Link::announce_volume`]).
    AnnounceVolume {
        vol: VolumeId,
        size_bytes: u64,
    },
    /// The session ends (the last action of a step).
    Close(SessionEnd),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error(transparent)]
    Live(#[from] LiveEnd),
    /// The peer broke the protocol: the shell counts it and tells the peer.
    #[error("{0}")]
    Protocol(String),
    #[error("the peer disconnected: {0}")]
    PeerDisconnected(String),
    /// A local disk or metadata operation failed.
    #[error("{0}")]
    Local(String),
    #[error("split brain")]
    SplitBrain,
    #[error("unrelated data")]
    Unrelated,
    /// The decision cannot be acted on (e.g. a Primary would become SyncTarget).
    #[error("{0}")]
    Refused(&'static str),
    /// A volume added at run time that one node lacks: the text names the fix
    /// (`drl adjust`); the status shows it as the last error.
    #[error("{0}")]
    NeedsAdjust(String),
}

/// What the core reads from the node for one step (it owns none of it).
pub struct Ctx<'a> {
    pub now_ms: u64,
    /// The local role now (admin commands change it on other tasks).
    pub role: Role,
    /// Volume 0's dirty bitmap (resync and the bitmap exchange use it).
    pub bitmap: &'a DirtyBitmap,
    /// A group's volumes 1, 2, ..: their dirty bitmaps (empty for one volume).
    pub group_bitmaps: &'a [&'a DirtyBitmap],
    /// The sender's epochs, shared with the application writers; a group's ranges are in its
    /// one address space ([`VolumeId::group_offset`]).
    pub tracker: &'a Mutex<EpochTracker>,
    /// `drl pause-sync` on this node.
    pub resync_paused: bool,
}

impl Ctx<'_> {
    /// The dirty bitmap of volume `v`.
    pub fn bitmap_of(&self, v: VolumeId) -> Option<&DirtyBitmap> {
        match v.0 {
            0 => Some(self.bitmap),
            n => self.group_bitmaps.get(usize::from(n) - 1).copied(),
        }
    }

    /// Every volume's dirty bitmap, by number, for a core of `volumes` volumes (a missing one
    /// is the shell's bug: the session ends rather than resyncing part of the group).
    fn bitmaps(&self, volumes: usize) -> Result<Vec<&DirtyBitmap>, SessionEnd> {
        (0..volumes)
            .map(|v| self.bitmap_in(VolumeId(v as u16), volumes))
            .collect()
    }

    /// Volume `v`'s dirty bitmap in a core of `volumes` volumes (missing: as for
    /// [`Self::bitmaps`]).
    fn bitmap_in(&self, v: VolumeId, volumes: usize) -> Result<&DirtyBitmap, SessionEnd> {
        self.bitmap_of(v).ok_or_else(|| {
            SessionEnd::Local(format!(
                "no dirty bitmap for volume {} of a {volumes}-volume group",
                v.0
            ))
        })
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, EpochTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the end of a session leaves to the node ([`Core::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Unacked writes forgotten by the sender (their bits stay set).
    pub lost: crate::repl::epoch::Lost,
    /// Age of the oldest unacked write when the link was lost.
    pub lag_ms: u64,
    /// Start a new data generation (after persisting the bitmap).
    pub new_generation: bool,
}

/// This node's part in a running resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    Source,
    Target,
}

/// What an [`OpId`] stands for.
#[derive(Debug, Clone, Copy)]
enum Pending {
    RxWrite {
        seq: u64,
    },
    /// One volume's flush of an epoch (the ack waits for every volume's).
    RxFlush {
        epoch: u64,
    },
    Resync {
        rid: u64,
        offset: u64,
        len: u64,
        zeroes: bool,
    },
    /// The SyncTarget's bitmap is persisted before it starts requesting.
    TargetStart,
    /// The SyncTarget's last answer is written: flush, then persist, then done.
    ResyncFlush {
        source_current: u64,
    },
    ResyncPersist {
        source_current: u64,
    },
}

/// The protocol state of one connection.
pub struct Core<B> {
    /// Every volume's size, by number (a one-volume resource: `[size_bytes]`).
    volumes: Vec<u64>,
    /// Volume flushes still running per acked-on-flush epoch.
    flushes_left: HashMap<u64, usize>,
    live: Liveness,
    rx: EpochReceiver<(VolumeId, u64, Write<B>)>,
    merge: Option<(BitmapMerge, Vec<u8>)>,
    sync: Option<SyncRole>,
    target: Option<Target>,
    peer_current: u64,
    /// Receiver flushes (FlushThenAck) running.
    flushing: usize,
    /// Volumes still to complete the resync step running on all of them (`TargetStart`,
    /// `ResyncFlush`, `ResyncPersist`: one at a time, one operation per volume).
    resync_left: usize,
    resync_id: u64,
    next_op: OpId,
    ops: HashMap<OpId, Pending>,
    /// Set once the session ended: completions only release what follows them.
    ended: bool,
    verify: verify::VerifyState,
    /// A volume added in this session whose full sync runs (`add_volume.rs`).
    adding: Option<VolumeId>,
}

impl<B: Payload> Core<B> {
    /// A core for a new connection to a peer whose current generation is `peer_current`.
    pub fn new(size_bytes: u64, peer_current: u64, now_ms: u64) -> Self {
        Self::with_volumes(vec![size_bytes], peer_current, now_ms)
    }

    /// A core for a consistency group: `volumes[n]` is volume n's size (at least one).
    pub fn with_volumes(volumes: Vec<u64>, peer_current: u64, now_ms: u64) -> Self {
        assert!(!volumes.is_empty(), "a resource has at least volume 0");
        Core {
            volumes,
            flushes_left: HashMap::new(),
            live: Liveness::new(now_ms),
            rx: EpochReceiver::new(),
            merge: None,
            sync: None,
            target: None,
            peer_current,
            flushing: 0,
            resync_left: 0,
            resync_id: 0,
            next_op: 1,
            ops: HashMap::new(),
            ended: false,
            verify: verify::VerifyState::default(),
            adding: None,
        }
    }

    /// Whether the shell should read more frames (the receiver's queue has room).
    pub fn wants_input(&self) -> bool {
        self.rx.wants_input() && !self.verify.holding()
    }

    /// Every received write is on the disk and no flush runs (online verify reads here).
    pub fn idle(&self) -> bool {
        self.rx.idle() && self.flushing == 0
    }

    /// Disk operations issued and not completed (the shell drains them after the end).
    pub fn ops_pending(&self) -> usize {
        self.ops.len()
    }

    /// Received writes (application or resync) in flight or receiver flushes running: what
    /// must still reach the disk after the end ([`Self::end`]).
    pub fn applying(&self) -> bool {
        self.rx.inflight() > 0 || self.flushing > 0
    }

    pub fn sync_role(&self) -> Option<SyncRole> {
        self.sync
    }

    /// The session ended (the shell stopped reading): later completions only release the
    /// received writes that follow them, in epoch order (the disk keeps a prefix).
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The session is over and its received writes are drained ([`Self::end`] first): every
    /// unacked write is forgotten by the sender but its bits stay set, so the next connect
    /// resyncs it. `repl` is the replication state the session ended in, `gen_bitmap` the
    /// local bitmap generation: a Primary that was replicating and has none starts a new data
    /// generation (DRBD), whose bitmap tracks the changes since.
    pub fn finish(&mut self, ctx: &Ctx, repl: ReplState, gen_bitmap: u64) -> Finished {
        self.ended = true;
        let mut t = ctx.tracker();
        let lag_ms = t.lag_ms(ctx.now_ms);
        let lost = t.on_disconnect();
        let was_replicating = matches!(
            repl,
            ReplState::Established
                | ReplState::Ahead
                | ReplState::SyncSource
                | ReplState::VerifyS
                | ReplState::VerifyT
        );
        Finished {
            lost,
            lag_ms,
            new_generation: was_replicating && ctx.role == Role::Primary && gen_bitmap == 0,
        }
    }

    /// Bytes arrived from the peer.
    pub fn on_bytes(&mut self, now_ms: u64) {
        self.live.on_receive(now_ms);
    }

    fn op(&mut self, p: Pending) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, p);
        id
    }

    /// A resync step on every volume of the group (flush or bitmap persist); its `Pending`
    /// completes once all of them did ([`Self::done`]).
    fn disk_all(&mut self, p: Pending, op: fn() -> DiskOp<B>, out: &mut Vec<Action<B>>) {
        self.resync_left = self.volumes.len();
        for v in 0..self.volumes.len() {
            self.disk_on(VolumeId(v as u16), p, op(), out);
        }
    }

    fn disk_on(&mut self, vol: VolumeId, p: Pending, op: DiskOp<B>, out: &mut Vec<Action<B>>) {
        let id = self.op(p);
        out.push(Action::Disk { id, vol, op });
    }

    /// A timer tick: liveness (keepalive, silence, a peer that reads nothing for
    /// `stalled_ms`), and the open epoch closed (a Barrier), so writes without an application
    /// flush are acked and their bits cleared.
    pub fn on_tick(&mut self, ctx: &Ctx, stalled_ms: Option<u64>) -> Vec<Action<B>> {
        let mut out = Vec::new();
        // Not reading because our own disk work is pending: the peer's frames wait unread in
        // the socket, so their absence is not the peer's silence (liveness module docs).
        let holding_back = !self.wants_input() && (!self.ops.is_empty() || self.verify.holding());
        match self.live.on_tick(ctx.now_ms, stalled_ms, holding_back) {
            Some(LiveAction::Close(why)) => {
                out.push(Action::Close(why.into()));
                return out;
            }
            Some(LiveAction::Ping(seq)) => out.push(Action::Send(Frame::Ping { seq })),
            None => {}
        }
        out.push(Action::CloseEpoch);
        self.verify_tick(ctx, &mut out);
        out
    }

    /// A frame from the peer.
    pub fn on_frame(&mut self, ctx: &Ctx, f: Frame) -> Vec<Action<B>> {
        let mut out = Vec::new();
        match self.frame(ctx, f, &mut out) {
            Ok(()) => self.verify_release(&mut out),
            Err(e) => out.push(Action::Close(e)),
        }
        out
    }

    fn frame(&mut self, ctx: &Ctx, f: Frame, out: &mut Vec<Action<B>>) -> Result<(), SessionEnd> {
        let proto = SessionEnd::Protocol;
        match f {
            Frame::Data {
                vol,
                seq,
                epoch,
                offset,
                fua,
                data,
            } => {
                let len = data.len() as u64;
                let vol = self.check_write(ctx, vol, offset, len)?;
                let w = Write::Data {
                    data: B::from_wire(&data),
                    fua,
                };
                self.receive(vol, seq, epoch, offset, len, w, out)
            }
            Frame::Trim(w) => {
                let write = Write::Trim {
                    len: w.len,
                    fua: w.fua,
                };
                self.receive_range(ctx, w, write, out)
            }
            Frame::Zeroes(w) => {
                let write = Write::Zeroes {
                    len: w.len,
                    fua: w.fua,
                };
                self.receive_range(ctx, w, write, out)
            }
            Frame::Barrier { epoch } => self.feed(RxEvent::Barrier { epoch }, out),
            Frame::BarrierAck { epoch } => {
                let rel = ctx
                    .tracker()
                    .on_barrier_ack(epoch)
                    .map_err(|e| proto(e.to_string()))?;
                for r in &rel.clearable {
                    // A write lies in one volume, and the volumes' block spaces are far
                    // apart, so a merged range never spans two volumes.
                    let (vol, first) = VolumeId::of_group_block(r.start);
                    match ctx.bitmap_of(vol) {
                        Some(b) => b.clear_blocks(first, r.end - r.start),
                        None => debug_assert!(false, "an ack of a write to unknown {vol:?}"),
                    }
                }
                out.push(Action::RoomFreed);
                Ok(())
            }
            Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits,
            } => {
                let total = group_bitmap_bits(&ctx.bitmaps(self.volumes.len())?);
                let (m, buf) = self.merge.get_or_insert_with(|| {
                    (
                        BitmapMerge::new(total),
                        vec![0u8; total.div_ceil(8) as usize],
                    )
                });
                let done = m
                    .merge(buf, first_bit, bit_count, last, &bits)
                    .map_err(|e| proto(e.to_string()))?;
                if done {
                    if let Some((_, buf)) = self.merge.take() {
                        self.bitmap_received(ctx, &buf, out)?;
                    }
                }
                Ok(())
            }
            Frame::ResyncRequest { offset, len } => {
                if self.sync != Some(SyncRole::Source) {
                    return Err(proto(
                        "ResyncRequest, but this node is not SyncSource".into(),
                    ));
                }
                let (vol, local) = VolumeId::of_group_offset(offset);
                let size = self
                    .volumes
                    .get(usize::from(vol.0))
                    .copied()
                    .ok_or_else(|| {
                        proto(format!(
                            "resync request for volume {}, but the resource has {} volume(s)",
                            vol.0,
                            self.volumes.len()
                        ))
                    })?;
                check_request(local, len, size)
                    .map_err(|e| proto(format!("volume {}: {e}", vol.0)))?;
                out.push(Action::Serve { offset, len });
                Ok(())
            }
            Frame::ResyncData { offset, data } => {
                let len = data.len() as u64;
                self.target_answer(offset, len)?;
                let w = Write::Data {
                    data: B::from_wire(&data),
                    fua: false,
                };
                self.resync_write(offset, len, false, w, out);
                Ok(())
            }
            Frame::ResyncZeroes { offset, len } => {
                self.target_answer(offset, u64::from(len))?;
                let w = Write::Zeroes { len, fua: false };
                self.resync_write(offset, u64::from(len), true, w, out);
                Ok(())
            }
            Frame::ResyncDone => self.source_done(out),
            Frame::StateChange { role, disk, ahead } => {
                if role == Role::Primary && ctx.role == Role::Primary {
                    return Err(proto(
                        "the peer became Primary while this node is Primary".into(),
                    ));
                }
                self.verify.peer_role(role);
                out.push(Action::State(StateChange::Peer { role, disk, ahead }));
                self.verify_pump(ctx, out);
                Ok(())
            }
            f @ (Frame::VerifyRequest { .. }
            | Frame::VerifyDigests { .. }
            | Frame::VerifyResult { .. }
            | Frame::VerifyDone { .. }) => self.verify_frame(ctx, f, out),
            Frame::Ping { seq } => {
                out.push(Action::Send(Frame::PingAck { seq }));
                Ok(())
            }
            Frame::PingAck { seq } => {
                out.push(Action::PingAck(seq));
                Ok(())
            }
            Frame::Disconnect { reason } => Err(self.peer_disconnected(reason)),
            Frame::VolumeAdd { vol, size_bytes } => self.volume_added(ctx, vol, size_bytes, out),
            other => Err(proto(format!(
                "unexpected {} frame after the handshake",
                other.frame_type().name()
            ))),
        }
    }

    fn check_write(
        &self,
        ctx: &Ctx,
        vol: u16,
        offset: u64,
        len: u64,
    ) -> Result<VolumeId, SessionEnd> {
        if ctx.role == Role::Primary {
            return Err(SessionEnd::Protocol(
                "the peer sent application writes to a Primary".into(),
            ));
        }
        let Some(size) = self.volumes.get(usize::from(vol)) else {
            return Err(SessionEnd::Protocol(format!(
                "a write to volume {vol}, but the resource has {} volume(s)",
                self.volumes.len()
            )));
        };
        crate::volume::check_range(offset, len, *size)
            .map_err(|e| SessionEnd::Protocol(format!("volume {vol}: {e}")))?;
        Ok(VolumeId(vol))
    }

    fn receive_range(
        &mut self,
        ctx: &Ctx,
        w: RangeWrite,
        write: Write<B>,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let len = u64::from(w.len);
        let vol = self.check_write(ctx, w.vol, w.offset, len)?;
        self.receive(vol, w.seq, w.epoch, w.offset, len, write, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn receive(
        &mut self,
        vol: VolumeId,
        seq: u64,
        epoch: u64,
        offset: u64,
        len: u64,
        write: Write<B>,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        out.push(Action::Count(Counter::ReceivedBytes(len)));
        self.feed(
            RxEvent::Write {
                seq,
                epoch,
                // The overlap checks run in the group's one address space: writes of two
                // volumes at the same offset do not overlap.
                offset: vol.group_offset(offset),
                len,
                write: (vol, offset, write),
            },
            out,
        )
    }

    fn feed(
        &mut self,
        ev: RxEvent<(VolumeId, u64, Write<B>)>,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        if matches!(ev, RxEvent::FlushDone { .. }) {
            self.flushing = self.flushing.saturating_sub(1);
        }
        let actions = self
            .rx
            .handle(ev)
            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
        self.rx_actions(actions, out);
        Ok(())
    }

    fn rx_actions(
        &mut self,
        actions: Vec<RxAction<(VolumeId, u64, Write<B>)>>,
        out: &mut Vec<Action<B>>,
    ) {
        for a in actions {
            match a {
                RxAction::Write {
                    seq,
                    write: (vol, offset, write),
                } => {
                    self.disk_on(
                        vol,
                        Pending::RxWrite { seq },
                        DiskOp::Write { offset, write },
                        out,
                    );
                }
                RxAction::FlushThenAck(epoch) => {
                    // The epoch is acked once every volume of the group is flushed: an acked
                    // epoch must be durable on all of them, or a crash of this node could keep
                    // one volume's later writes without another's earlier ones.
                    self.flushing += 1;
                    self.flushes_left.insert(epoch, self.volumes.len());
                    for v in 0..self.volumes.len() {
                        self.disk_on(
                            VolumeId(v as u16),
                            Pending::RxFlush { epoch },
                            DiskOp::Flush,
                            out,
                        );
                    }
                }
            }
        }
    }

    /// A disk operation completed (`Err`: its error text).
    pub fn on_disk_done(
        &mut self,
        ctx: &Ctx,
        id: OpId,
        result: Result<(), String>,
    ) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if !self.ended {
            // The peer's data is being applied: not silence.
            self.live.on_receive(ctx.now_ms);
        }
        let Some(p) = self.ops.remove(&id) else {
            out.push(Action::Close(SessionEnd::Local(format!(
                "completion of disk operation {id}, which was not issued"
            ))));
            return out;
        };
        if let Err(e) = result {
            let what = match p {
                Pending::RxWrite { .. } => "applying a replicated write",
                Pending::RxFlush { .. } => "flushing replicated writes",
                Pending::Resync { .. } => "writing resync data",
                Pending::TargetStart => "persisting the bitmap before the resync",
                Pending::ResyncFlush { .. } => "flushing after resync",
                Pending::ResyncPersist { .. } => "persisting the bitmap after resync",
            };
            out.push(Action::Close(SessionEnd::Local(format!("{what}: {e}"))));
            return out;
        }
        match self.done(ctx, p, &mut out) {
            Ok(()) => self.verify_release(&mut out),
            Err(e) => out.push(Action::Close(e)),
        }
        out
    }

    fn done(&mut self, ctx: &Ctx, p: Pending, out: &mut Vec<Action<B>>) -> Result<(), SessionEnd> {
        match p {
            Pending::RxWrite { seq } => self.feed(RxEvent::WriteDone { seq }, out),
            Pending::RxFlush { epoch } => {
                let left = self.flushes_left.entry(epoch).or_insert(1);
                *left -= 1;
                if *left > 0 {
                    return Ok(());
                }
                self.flushes_left.remove(&epoch);
                if !self.ended {
                    out.push(Action::Send(Frame::BarrierAck { epoch }));
                }
                self.feed(RxEvent::FlushDone { epoch }, out)
            }
            Pending::Resync {
                rid,
                offset,
                len,
                zeroes,
            } => {
                self.resynced(ctx, rid, offset, len, zeroes, out)?;
                if !self.ended {
                    self.target_progress(ctx, out);
                }
                Ok(())
            }
            Pending::TargetStart | Pending::ResyncFlush { .. } | Pending::ResyncPersist { .. }
                if self.resync_left > 1 =>
            {
                // Another volume's part of this step is still running.
                self.resync_left -= 1;
                Ok(())
            }
            Pending::TargetStart if !self.ended => {
                self.resync_left = 0;
                self.target_start(ctx, out)
            }
            Pending::ResyncFlush { source_current } if !self.ended => {
                self.disk_all(
                    Pending::ResyncPersist { source_current },
                    || DiskOp::PersistBitmap,
                    out,
                );
                Ok(())
            }
            Pending::ResyncPersist { source_current } if !self.ended => {
                self.resync_left = 0;
                self.resync_finished(source_current, out);
                Ok(())
            }
            Pending::TargetStart | Pending::ResyncFlush { .. } | Pending::ResyncPersist { .. } => {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod group_tests;

#[cfg(test)]
mod group_prop_tests;

#[cfg(test)]
mod group_sync_tests;

#[cfg(test)]
mod add_volume_tests;

#[cfg(test)]
mod verify_tests;

#[cfg(test)]
mod tick_tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use drbd_compat::Role;

    use super::{Action, Core, Ctx};
    use crate::limits::BITMAP_BLOCK_BYTES;
    use crate::repl::epoch::{EpochLimits, EpochTracker};
    use crate::repl::frame::Frame;
    use crate::repl::state::SyncDecision;
    use crate::volume::bitmap::DirtyBitmap;

    /// The tick's Barrier is the shell's to close and queue under the tracker's lock: the core
    /// closing the epoch and handing back a Barrier to send let an application write of the
    /// next epoch, queued on another thread in between, reach the peer first ("frame for epoch
    /// 3, expected epoch 2"; tests/repl_storms.rs).
    #[test]
    fn a_tick_asks_the_shell_to_close_the_epoch_and_closes_nothing_itself() {
        let size = 1 << 20;
        let bitmap = DirtyBitmap::new(size, BITMAP_BLOCK_BYTES);
        let tracker = Mutex::new(EpochTracker::new(EpochLimits::default()));
        tracker
            .lock()
            .unwrap()
            .try_enqueue(0, 4096, 4096, false, 0)
            .expect("room for one write");
        let mut core: Core<Bytes> = Core::new(size, 1, 0);
        let ctx = Ctx {
            now_ms: 1,
            role: Role::Primary,
            bitmap: &bitmap,
            group_bitmaps: &[],
            tracker: &tracker,
            resync_paused: false,
        };
        let actions = core.on_tick(&ctx, None);
        assert!(
            actions.iter().any(|a| matches!(a, Action::CloseEpoch)),
            "no CloseEpoch in {actions:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Send(Frame::Barrier { .. }))),
            "the core queued a Barrier itself: {actions:?}"
        );
        assert_eq!(
            tracker.lock().unwrap().open_epoch(),
            1,
            "the core closed the epoch"
        );
    }
    /// A Secondary whose disk completes nothing stops reading once its receive queue is full
    /// (backpressure); the peer's frames then wait unread in the socket. Ten seconds of ticks
    /// like that must not end the session as "no frame from the peer" (a stalled local disk
    /// is not a silent peer), while the same ticks with the queue open do.
    #[test]
    fn a_secondary_held_back_by_its_own_disk_does_not_call_the_peer_silent() {
        let size = 1 << 20;
        let bitmap = DirtyBitmap::new(size, BITMAP_BLOCK_BYTES);
        let tracker = Mutex::new(EpochTracker::new(EpochLimits::default()));
        let ctx = |now_ms| Ctx {
            now_ms,
            role: Role::Secondary,
            bitmap: &bitmap,
            group_bitmaps: &[],
            tracker: &tracker,
            resync_paused: false,
        };
        let closes = |a: &[Action<Bytes>]| a.iter().any(|a| matches!(a, Action::Close(_)));
        let ten_seconds_of_ticks =
            |core: &mut Core<Bytes>| (1..=100).any(|i| closes(&core.on_tick(&ctx(i * 100), None)));

        let mut open: Core<Bytes> = Core::new(size, 1, 0);
        assert!(!closes(&open.start(&ctx(0), SyncDecision::NoSync)));
        assert!(ten_seconds_of_ticks(&mut open), "a silent peer is found");

        let mut held: Core<Bytes> = Core::new(size, 1, 0);
        assert!(!closes(&held.start(&ctx(0), SyncDecision::NoSync)));
        let mut seq = 0;
        while held.wants_input() {
            seq += 1;
            // One block: the first write goes to the disk, every later one waits for it.
            let a = held.on_frame(
                &ctx(0),
                Frame::Data {
                    vol: 0,
                    seq,
                    epoch: 1,
                    offset: 0,
                    fua: false,
                    data: Bytes::from_static(&[7; 4096]),
                },
            );
            assert!(!closes(&a), "{a:?}");
        }
        assert_eq!(held.ops_pending(), 1);
        assert!(!ten_seconds_of_ticks(&mut held), "the session ended");
    }
}
