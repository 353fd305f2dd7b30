//! One replicated resource on this node: its DRBD-style state (role, disk, connection,
//! replication, peer), the admin operations (primary, secondary, connect, disconnect), the
//! status and events, and the write-path hook the resource's device calls.
//!
//! Write path on the Primary ([`Replicator::write_to`]): the conflicting-write wait (a write
//! overlapping one in flight waits for its local completion, `overlap.rs`) -> activity-log
//! guard (a durable AL transaction first if the extent is cold) -> shared resync lock -> set the dirty bits ->
//! the enqueue of the Data frame(s) into the bounded send buffer (if connected and not Ahead;
//! encoded straight from the write's buffer), then the local disk write -> reply (protocol A).
//! Trim and zeroes ship and run concurrently (their frames carry no data). A barrier ack
//! clears the bits of the epoch (in the session). The AL guard is dropped when the local write
//! is done: an extent can only leave the AL after the bitmap was flushed (the AL evicts that
//! way), so a write not yet acked by the peer stays covered by its bit, in memory and on disk.
//!
//! Persistent state (role, disk state, generation ids, WAS_PRIMARY) lives in the metadata
//! superblock; the live state (connection, replication, peer) only here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use drbd_compat::{ConnState, DiskState, ReplState, Role};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::options::OnCongestion;
use crate::config::ResourceConfig;
use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::limits::{
    REPL_FRAME_DATA_BYTES_MAX, REPL_FRAME_RANGE_BYTES_MAX, REPL_LOG_LINES_PER_S,
    REPL_STATE_LOG_LINES_PER_S,
};
use crate::logrl::LogLimiter;
use crate::pipeline::WritePipeline;
use crate::repl::core::VolumeId;
use crate::repl::frame::{Frame, RangeWrite};
use crate::repl::gen::GenIds;
use crate::repl::link::Link;
use crate::repl::wire::split_range;
use crate::shaping::NodeShaping;
use crate::volume::activity_log::ActivityLog;
use crate::volume::bitmap::DirtyBitmap;
use crate::volume::disk::Disk;
use crate::volume::meta::{self, flags, MetaFile};
use crate::volume::{AlignedBuf, BlockDevice, VolumeError};

#[path = "replicator_admin.rs"]
mod admin;
#[path = "replicator_ops.rs"]
mod ops;
#[path = "replicator_resize.rs"]
mod resize;
#[path = "replicator_volumes.rs"]
mod volumes;
pub use resize::size_event;
pub use volumes::VolumeParts;

/// Refusals of the admin operations (shown to the admin as is).
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("resource {res}: {what}")]
    Refused { res: String, what: String },
    #[error("resource {res}: metadata: {source}")]
    Meta {
        res: String,
        #[source]
        source: crate::volume::meta::MetaError,
    },
    #[error("resource {res}: {source}")]
    Volume {
        res: String,
        #[source]
        source: VolumeError,
    },
}

/// Byte counters of the status.
#[derive(Debug, Default)]
pub struct ReplStats {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    pub resync_bytes_sent: AtomicU64,
    pub resync_bytes_received: AtomicU64,
    pub resync_zero_bytes: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub connects: AtomicU64,
    /// Wall clock (unix ms) of the last write received from the peer (the DR orchestrator's
    /// RPO: what the backup had when the link was lost).
    pub last_received_unix_ms: AtomicU64,
}

/// Live state, under one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub conn: ConnState,
    pub repl: ReplState,
    pub peer_role: Option<Role>,
    pub peer_disk: Option<DiskState>,
    /// The admin said `disconnect`, or a split brain waits for the admin.
    pub standalone: bool,
    pub discard_my_data: bool,
    pub split_brain: Option<String>,
    pub last_error: Option<String>,
    pub link: Option<Arc<Link>>,
    pub ahead_since: Option<Instant>,
    /// Out-of-sync bytes when the running resync started.
    pub resync_total_bytes: u64,
    /// The same, per volume (a group's per-volume progress events).
    pub resync_volume_total_bytes: Vec<u64>,
    pub resync_started: Option<Instant>,
    /// The running resync is the full sync of this volume alone, added at run time
    /// (consistency groups, `drl adjust`); None: every volume's dirty blocks.
    pub resync_volume: Option<u16>,
    /// A role or generation change needs a new handshake.
    pub renegotiate: bool,
    /// What this node's Hello announced for the live session (with `link`).
    pub announced: Option<Announced>,
    /// Features negotiated with the peer of the live session.
    pub peer_features: u64,
    /// The online verify this node drives (VerifyS), if any.
    pub verify: Option<crate::repl::verify::VerifyProgress>,
    /// The peer's online verify this node serves (VerifyT), if any.
    pub verify_peer: Option<crate::repl::verify::VerifyProgress>,
    /// Where `drl verify` hands (run id, rate) to the live session's core.
    pub verify_tx: Option<tokio::sync::mpsc::Sender<(u64, u64)>>,
    /// The last verify run this node drove.
    pub verify_last: Option<crate::repl::verify::VerifyReport>,
    /// What this node knew when its last session ended (status `link_lost`).
    pub link_lost: Option<serde_json::Value>,
    /// Counts sessions: up by one when a session's link comes up and again when it closes,
    /// so a reader of `status` (or an admin call) can tell a state of the session it knows
    /// from a later one's (odd: a session is live).
    pub session: u64,
    /// The `session` whose sync decision has been acted on (its replication state is set).
    pub decided_session: u64,
    /// The peer's capacity (its configured `size`) from the last handshake: while it differs
    /// from this node's, a grow waits for the smaller node (`drl resize`, status).
    pub peer_size_bytes: Option<u64>,
}

/// The part of a Hello ([`crate::repl::handshake::LocalInfo`]) that a later local change can
/// make stale: role, disk state and generation ids, as presented (after `--discard-my-data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announced {
    pub role: Role,
    pub disk: DiskState,
    pub gen: GenIds,
}

/// How a Hello went stale ([`Replicator::changed_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Staleness {
    /// Only the role changed (to the one given): tell the peer with a StateChange.
    Role(Announced),
    /// The disk state or the generation ids changed: the sync decision must be taken again.
    Data,
}

impl From<&crate::repl::handshake::LocalInfo> for Announced {
    fn from(l: &crate::repl::handshake::LocalInfo) -> Self {
        Announced {
            role: l.role,
            disk: l.disk,
            gen: l.gen,
        }
    }
}

pub struct Replicator {
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) cfg: ResourceConfig,
    pub(crate) disk: Arc<Disk>,
    /// The volume's write pipeline: the receiver and the resync target write through it, so
    /// snapshots on this node keep their point in time (see [`crate::pipeline`]).
    pub(crate) pipe: Arc<WritePipeline>,
    pub(crate) meta: Arc<MetaFile>,
    pub(crate) bitmap: Arc<DirtyBitmap>,
    pub(crate) al: Arc<ActivityLog>,
    /// Every volume, in number order (`vols[0]` is the fields above): writes, disk operations
    /// of the session and bitmaps are routed by volume; one session and one epoch order
    /// carry them all. `drl adjust` appends volumes at run time
    /// ([`Replicator::add_volume`]); none is ever removed while the replicator lives.
    vols: std::sync::RwLock<Vec<Arc<VolumeParts>>>,
    pub(crate) events: EventBus,
    /// The daemon's WAN shaping (its shaper and resync controller), shared by its resources.
    pub(crate) shaping: NodeShaping,
    st: Mutex<State>,
    /// Admin changes (connect, disconnect, role) wake the connection loop.
    pub(crate) wake: Notify,
    /// Signalled after every change of the live state ([`Self::update_with`]).
    pub(crate) changed: Notify,
    /// Application writes hold it shared from setting their bits until they are on disk and
    /// queued; a resync read holds it exclusively until its answer is queued, so stale
    /// resync data never overtakes an application write of the same block.
    pub(crate) resync_lock: tokio::sync::RwLock<()>,
    pub(crate) stats: ReplStats,
    pub(crate) rl: LogLimiter,
    /// For the INFO/WARN lines of state changes (connection, peer-device, role, disk, sync
    /// decision, resync end, disconnect): a peer that flaps the link causes about eight per
    /// reconnect; apart from `rl`, so they never starve the protocol-error lines.
    pub(crate) state_rl: LogLimiter,
    clock: Instant,
    /// `drl pause-sync`: this node's resync pause flag (DRBD's user pause), see
    /// `replicator_ops.rs`.
    pub(crate) resync_paused: std::sync::atomic::AtomicBool,
    /// A promotion over a live link the peer has not confirmed yet: application writes wait
    /// ([`Self::promotion_settled`], issue 12's two-Primary window).
    pub(crate) promoting: std::sync::atomic::AtomicBool,
    /// `resync-rate`: when the resync data charged so far is paid off at that rate.
    pub(crate) resync_rate_next_free: Mutex<Instant>,
    /// Where the peer is reached (`[resource.on.PEER] address`): `drl adjust` changes it
    /// live, see `replicator_ops.rs`.
    pub(crate) peer_addr: Mutex<Option<std::net::SocketAddr>>,
    /// This node's capacity, what its Hello announces (`drl resize` raises it); the volume's
    /// size is the smaller of both nodes' (see `replicator_resize.rs`).
    pub(crate) capacity_bytes: AtomicU64,
}

pub fn role_of(r: meta::Role) -> Role {
    match r {
        meta::Role::Primary => Role::Primary,
        meta::Role::Secondary => Role::Secondary,
    }
}

pub fn disk_of(d: meta::DiskState) -> DiskState {
    match d {
        meta::DiskState::Diskless => DiskState::Diskless,
        meta::DiskState::Attaching => DiskState::Attaching,
        meta::DiskState::Failed => DiskState::Failed,
        meta::DiskState::Inconsistent => DiskState::Inconsistent,
        meta::DiskState::Outdated => DiskState::Outdated,
        meta::DiskState::Consistent => DiskState::Consistent,
        meta::DiskState::UpToDate => DiskState::UpToDate,
    }
}

pub fn gen_of(g: meta::GenerationIds) -> GenIds {
    GenIds {
        current: g.current,
        bitmap: g.bitmap,
        history: g.history,
    }
}

pub fn gen_to_meta(g: GenIds) -> meta::GenerationIds {
    meta::GenerationIds {
        current: g.current,
        bitmap: g.bitmap,
        history: g.history,
    }
}

/// A write the device hands to [`Replicator::write_to`].
pub enum WriteOp {
    Data(AlignedBuf),
    Trim(u32),
    Zeroes { len: u32, may_trim: bool },
}

impl WriteOp {
    fn len(&self) -> u64 {
        match self {
            WriteOp::Data(b) => b.len() as u64,
            WriteOp::Trim(l) | WriteOp::Zeroes { len: l, .. } => u64::from(*l),
        }
    }
}

impl Replicator {
    /// `vols`: every volume of the resource in number order (one for a one-volume resource).
    pub fn new(
        cfg: &ResourceConfig,
        node: &str,
        vols: Vec<VolumeParts>,
        events: EventBus,
        shaping: NodeShaping,
    ) -> Arc<Replicator> {
        assert!(!vols.is_empty(), "a resource has a volume 0");
        let v0 = &vols[0];
        Arc::new(Replicator {
            name: cfg.name.clone(),
            node: node.to_owned(),
            cfg: cfg.clone(),
            disk: v0.disk.clone(),
            pipe: v0.pipe.clone(),
            meta: v0.meta.clone(),
            bitmap: v0.bitmap.clone(),
            al: v0.al.clone(),
            vols: std::sync::RwLock::new(vols.into_iter().map(Arc::new).collect()),
            events,
            shaping,
            st: Mutex::new(State {
                conn: ConnState::Connecting,
                repl: ReplState::Off,
                peer_role: None,
                peer_disk: None,
                standalone: false,
                discard_my_data: false,
                split_brain: None,
                last_error: None,
                link: None,
                ahead_since: None,
                resync_total_bytes: 0,
                resync_volume_total_bytes: Vec::new(),
                resync_started: None,
                resync_volume: None,
                renegotiate: false,
                announced: None,
                peer_features: 0,
                verify: None,
                verify_peer: None,
                verify_tx: None,
                verify_last: None,
                link_lost: None,
                session: 0,
                decided_session: 0,
                peer_size_bytes: None,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            resync_lock: tokio::sync::RwLock::new(()),
            stats: ReplStats::default(),
            rl: LogLimiter::new(REPL_LOG_LINES_PER_S),
            state_rl: LogLimiter::new(REPL_STATE_LOG_LINES_PER_S),
            clock: Instant::now(),
            resync_paused: std::sync::atomic::AtomicBool::new(false),
            promoting: std::sync::atomic::AtomicBool::new(false),
            resync_rate_next_free: Mutex::new(Instant::now()),
            peer_addr: Mutex::new(cfg.peer.as_ref().and_then(|p| p.address)),
            capacity_bytes: AtomicU64::new(cfg.size_bytes),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn role(&self) -> Role {
        role_of(self.meta.role())
    }

    pub fn disk_state(&self) -> DiskState {
        disk_of(self.meta.superblock().disk_state)
    }

    pub(crate) fn peer_node(&self) -> String {
        self.cfg
            .peer
            .as_ref()
            .map(|p| p.node.clone())
            .unwrap_or_default()
    }

    /// Change the live state under the lock and publish an event for every field that moved.
    pub(crate) fn update(&self, f: impl FnOnce(&mut State)) {
        self.update_with(f)
    }

    /// [`Self::update`], returning what `f` returns.
    pub(crate) fn update_with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (before, after, r) = {
            let mut st = self.state();
            let b = (st.conn, st.repl, st.peer_role, st.peer_disk);
            let r = f(&mut st);
            (b, (st.conn, st.repl, st.peer_role, st.peer_disk), r)
        };
        self.changed.notify_waiters();
        let peer = self.peer_node();
        if before.0 != after.0 {
            crate::info_rl!(self.state_rl, resource = %self.name, peer = %peer, connection = %after.0, "connection state");
            self.events.publish(
                Event::new(EventKind::Change, ObjectKind::Connection, &self.name)
                    .field("peer", peer.clone())
                    .field("connection", after.0.as_str()),
            );
        }
        if before.1 != after.1 || before.3 != after.3 {
            crate::info_rl!(self.state_rl, resource = %self.name, peer = %peer, replication = %after.1,
                peer_disk = %after.3.map_or("DUnknown", |d| d.as_str()), "peer-device state");
            self.publish_per_volume(
                Event::new(EventKind::Change, ObjectKind::PeerDevice, &self.name)
                    .field("peer", peer.clone())
                    .field("replication", after.1.as_str())
                    .field("peer_disk", after.3.map_or("DUnknown", |d| d.as_str())),
                |_, e| e,
            );
        }
        if before.2 != after.2 {
            self.events.publish(
                Event::new(EventKind::Change, ObjectKind::Connection, &self.name)
                    .field("peer", peer)
                    .field("peer_role", after.2.map_or("Unknown", |r| r.as_str())),
            );
        }
        r
    }

    /// Change the persistent state; publish role / disk changes.
    pub(crate) fn update_meta(
        &self,
        f: impl FnOnce(&mut meta::Superblock),
    ) -> Result<(), ReplError> {
        let before = self.meta.superblock();
        self.meta.update(f).map_err(|source| ReplError::Meta {
            res: self.name.clone(),
            source,
        })?;
        let after = self.meta.superblock();
        if before.role != after.role {
            crate::info_rl!(self.state_rl, resource = %self.name, role = after.role.as_str(), "role changed");
            self.events.publish(
                Event::new(EventKind::Change, ObjectKind::Resource, &self.name)
                    .field("role", after.role.as_str()),
            );
        }
        if before.disk_state != after.disk_state {
            crate::info_rl!(self.state_rl, resource = %self.name, disk = after.disk_state.as_str(), "disk state changed");
            // A group's volumes share the disk state (volume 0's metadata holds it).
            self.publish_per_volume(
                Event::new(EventKind::Change, ObjectKind::Device, &self.name)
                    .field("disk", after.disk_state.as_str()),
                |_, e| e,
            );
        }
        if before.role != after.role || before.disk_state != after.disk_state {
            if let Some(l) = self.state().link.clone() {
                l.push_state_change(&Frame::StateChange {
                    role: role_of(after.role),
                    disk: disk_of(after.disk_state),
                    ahead: l.ahead.load(Ordering::Acquire),
                });
            }
        }
        Ok(())
    }

    fn refused(&self, what: impl Into<String>) -> ReplError {
        ReplError::Refused {
            res: self.name.clone(),
            what: what.into(),
        }
    }

    /// The link of this session if this node is Primary and connected (Ahead or not: the
    /// caller checks, an Ahead write is recorded as unsent).
    fn shipping_link(&self) -> Option<Arc<Link>> {
        let st = self.state();
        let l = st.link.as_ref()?;
        if l.is_closed() || st.peer_role.is_none() {
            return None;
        }
        if self.meta.role() != meta::Role::Primary {
            return None;
        }
        Some(l.clone())
    }

    // ---- write path ----

    /// A write (data, trim or zeroes) to volume `vol` on the Primary: see the module doc for the order. A group's
    /// writes enter the one epoch order of the session at the offset of the group's address
    /// space ([`VolumeId::group_offset`]); their frames name the volume.
    pub async fn write_to(
        &self,
        vol: VolumeId,
        offset: u64,
        op: WriteOp,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.promotion_settled().await;
        let v = self.vol(vol)?;
        let len = op.len();
        // Held until the local write completed: a write overlapping one in flight waits for
        // it, so the disk and the stream take overlapping writes in one order (`overlap.rs`).
        let _writing = v.writing.enter(offset, len).await;
        let group_offset = vol.group_offset(offset);
        let _al =
            v.al.acquire(&v.meta, &v.bitmap, offset, len)
                .await
                .map_err(|e| VolumeError::Io {
                    name: self.name.clone(),
                    what: "activity log",
                    source: std::io::Error::other(e.to_string()),
                })?;
        let _shared = self.resync_lock.read().await;
        v.bitmap.set_range(offset, len);
        let link = self.shipping_link();
        if let Some(l) = &link {
            if l.ahead.load(Ordering::Acquire) {
                // Ahead: only the bitmap records the write; no ack may clear its blocks.
                l.tracker().mark_unsent_write(group_offset, len);
            }
        }
        let link = link.filter(|l| !l.ahead.load(Ordering::Acquire));
        match op {
            WriteOp::Data(buf) => {
                // Queued first, encoded straight from the buffer the disk write then takes
                // (no copy of the payload; the local write starts once its frames are queued,
                // which is immediate unless max-buffer is full).
                if let Some(l) = &link {
                    self.ship_data(l, vol, offset, &buf, fua).await;
                }
                v.disk.write(offset, buf, fua).await
            }
            WriteOp::Trim(l) => {
                let ship = async {
                    if let Some(link) = &link {
                        self.ship_range(link, vol, offset, l, fua, true).await;
                    }
                };
                let (_, r) = tokio::join!(ship, v.disk.trim(offset, l));
                r
            }
            WriteOp::Zeroes { len: l, may_trim } => {
                let ship = async {
                    if let Some(link) = &link {
                        self.ship_range(link, vol, offset, l, fua, false).await;
                    }
                };
                let (_, r) = tokio::join!(ship, v.disk.write_zeroes(offset, l, may_trim, fua));
                r
            }
        }
    }

    /// Close the open epoch (a Barrier, for every volume of a group) and flush volume `vol`'s
    /// local disk.
    pub async fn flush(&self, vol: VolumeId) -> Result<(), VolumeError> {
        let v = self.vol(vol)?;
        if let Some(l) = self.shipping_link() {
            l.close_epoch();
        }
        v.disk.flush().await
    }

    /// Close the open epoch and flush every volume (a demotion: the group's last writes are
    /// stable together).
    pub async fn flush_all(&self) -> Result<(), VolumeError> {
        if let Some(l) = self.shipping_link() {
            l.close_epoch();
        }
        let vols = self.vols();
        for r in futures::future::join_all(vols.iter().map(|v| v.disk.flush())).await {
            r?;
        }
        Ok(())
    }

    async fn ship_data(&self, link: &Link, vol: VolumeId, offset: u64, data: &[u8], fua: bool) {
        let pieces: Vec<(u64, u32)> =
            split_range(offset, data.len() as u64, REPL_FRAME_DATA_BYTES_MAX).collect();
        let n = pieces.len();
        for (i, (off, len)) in pieces.into_iter().enumerate() {
            let at = (off - offset) as usize;
            let piece = &data[at..at + len as usize];
            let last_fua = fua && i + 1 == n;
            if !self
                .enqueue(
                    link,
                    vol.group_offset(off),
                    u64::from(len),
                    u64::from(len),
                    last_fua,
                    |seq, epoch| link.push_data(vol.0, (seq, epoch, off), last_fua, piece),
                )
                .await
            {
                self.not_shipped(link, vol.group_offset(offset), data.len() as u64);
                return;
            }
        }
    }

    /// A write (or its rest) was not shipped: if the link went Ahead meanwhile, record it as
    /// unsent so that no ack of an earlier write clears its blocks (`offset` in the group's
    /// address space).
    fn not_shipped(&self, link: &Link, offset: u64, len: u64) {
        if link.ahead.load(Ordering::Acquire) {
            link.tracker().mark_unsent_write(offset, len);
        }
    }

    async fn ship_range(
        &self,
        link: &Link,
        vol: VolumeId,
        offset: u64,
        len: u32,
        fua: bool,
        trim: bool,
    ) {
        let pieces: Vec<(u64, u32)> =
            split_range(offset, u64::from(len), REPL_FRAME_RANGE_BYTES_MAX).collect();
        let n = pieces.len();
        for (i, (off, l)) in pieces.into_iter().enumerate() {
            let f = fua && i + 1 == n;
            let ok = self
                .enqueue(
                    link,
                    vol.group_offset(off),
                    u64::from(l),
                    0,
                    f,
                    |seq, epoch| {
                        let w = RangeWrite {
                            vol: vol.0,
                            seq,
                            epoch,
                            offset: off,
                            len: l,
                            fua: f,
                        };
                        link.push(&if trim {
                            Frame::Trim(w)
                        } else {
                            Frame::Zeroes(w)
                        })
                    },
                )
                .await;
            if !ok {
                self.not_shipped(link, vol.group_offset(offset), u64::from(len));
                return;
            }
        }
    }

    /// Queue one frame-sized write (`push(seq, epoch)` encodes and queues its frame), applying
    /// the congestion policy when the buffer is full.
    /// False when the rest of the write must not be shipped (link closed, Ahead).
    async fn enqueue(
        &self,
        link: &Link,
        offset: u64,
        len: u64,
        payload: u64,
        fua: bool,
        push: impl Fn(u64, u64) -> bool,
    ) -> bool {
        let policy = self.cfg.repl.on_congestion;
        // Registered only once the buffer was found full (registering costs two locks of the
        // Notify per write): a room notification after that is never missed.
        let mut waiting: Option<std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>> = None;
        loop {
            if link.is_closed() || link.ahead.load(Ordering::Acquire) {
                return false;
            }
            // An online verify runs beside replication: it does not change how writes ship.
            let pull_ahead = policy == OnCongestion::PullAhead
                && matches!(
                    self.state().repl,
                    ReplState::Established | ReplState::VerifyS | ReplState::VerifyT
                );
            {
                let mut t = link.tracker();
                if !link.ships_volume(VolumeId::of_group_offset(offset).0 .0) {
                    // A volume added at run time, not announced to the peer yet: its bitmap
                    // holds the write, its full sync after the announcement ships it.
                    return false;
                }
                let wait =
                    !t.has_room(payload) && !pull_ahead && policy != OnCongestion::Disconnect;
                if !wait {
                    match t.try_enqueue(offset, len, payload, fua, self.now_ms()) {
                        Ok(enq) => {
                            push(enq.seq, enq.epoch);
                            if let Some(e) = enq.close_epoch {
                                link.push(&Frame::Barrier { epoch: e });
                            }
                            self.stats.sent_bytes.fetch_add(payload, Ordering::Relaxed);
                            return true;
                        }
                        Err(full) if pull_ahead => {
                            drop(t);
                            self.go_ahead(link, &full.to_string());
                            return false;
                        }
                        Err(full) => {
                            drop(t);
                            crate::warn_rl!(self.rl, resource = %self.name, "on-congestion disconnect: {full}");
                            link.close(format!("congestion: {full}"));
                            return false;
                        }
                    }
                }
            }
            match waiting.take() {
                Some(n) => n.await,
                None => {
                    let mut n = Box::pin(link.room.notified());
                    n.as_mut().enable();
                    waiting = Some(n);
                }
            }
        }
    }

    fn go_ahead(&self, link: &Link, why: &str) {
        if link.ahead.swap(true, Ordering::AcqRel) {
            return;
        }
        // What was shipped gets its barrier, so it is acked and the queue drains.
        link.close_epoch();
        link.room.notify_waiters();
        crate::warn_rl!(self.state_rl, resource = %self.name, "on-congestion pull-ahead: going Ahead ({why}); writes only mark the bitmap until the queue drains");
        self.update(|st| {
            st.repl = ReplState::Ahead;
            st.ahead_since = Some(Instant::now());
        });
        // The peer reports Behind while this node is Ahead (DRBD's pair); it leaves Behind
        // when the resync back starts (its bitmap exchange makes it SyncTarget).
        let sb = self.meta.superblock();
        link.push(&Frame::StateChange {
            role: role_of(sb.role),
            disk: disk_of(sb.disk_state),
            ahead: true,
        });
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
