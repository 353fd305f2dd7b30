//! One simulated node: the production session core ([`drl::repl::core::Core`]), the production
//! metadata, dirty bitmap and activity log (on a tmpfs file: a crash drops every in-memory
//! object and reopens them as a restarted daemon does), and a simulated data disk whose
//! unflushed writes may be lost, torn or reordered by a crash.
//!
//! A node may hold a consistency group of two volumes (issue 15, [`Node::new`] with a split):
//! each volume has its own metadata, bitmap and activity log (volume 0's metadata holds the
//! resource's role and generations), and the simulated disk is the two volumes one after the
//! other, so the world's invariants (a prefix, identical disks) hold for the group as one.
//!
//! What this file does in place of the tokio shell (`repl::session`): carry out the core's
//! actions, answer resync requests (the shell's answering task), the Primary's write path
//! (`Replicator::write`: AL, bits, enqueue, local write) and the end of a session (drain,
//! keep unacked bits, persist, new generation of a Primary that lost its peer).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use drbd_compat::{DiskState, ReplState, Role};
use drl::pipeline::WritePipeline;
use drl::repl::core::{
    Action, Core, Ctx, DiskOp, MetaChange, OpId, StateChange, VerifyEnd, VerifyEvent, VolumeId,
    Write,
};
use drl::repl::epoch::{EpochLimits, EpochTracker};
use drl::repl::frame::{Frame, VerifyRun};
pub use drl::repl::replicator::{disk_of, gen_of, gen_to_meta, role_of};
use drl::repl::state::NodeState;
use drl::snapshot::{SnapshotStore, SnapshotStoreConfig};
use drl::volume::activity_log::ActivityLog;
use drl::volume::bitmap::DirtyBitmap;
use drl::volume::meta::{self, MetaFile, NewMeta};
use rand::rngs::StdRng;
use rand::Rng;

use super::dev::{block_on, payload, Disk, SimDev};

pub const BS: u64 = drl::limits::BITMAP_BLOCK_BYTES;

/// A live session of this node.
pub struct Sess {
    pub conn: u64,
    pub core: Core<Bytes>,
    pub tracker: Mutex<EpochTracker>,
    /// Disk operations issued by the core, not completed.
    pub ops: Vec<(OpId, VolumeId, DiskOp<Bytes>)>,
    /// Frames to send, in order (the world puts them on the network).
    pub out: Vec<Frame>,
    pub end: Option<String>,
    /// The sync decision of this session was NoSync with no dirty bit on either side.
    pub clean_start: bool,
    /// Last epoch whose flush completed here (receiver side).
    pub flushed_epoch: u64,
    /// Online verify: ranges to provide digests for, in order (a node that is not Primary
    /// provides once every write it received is on its disk), and the comparer's reads.
    provides: std::collections::VecDeque<(VerifyRun, u64, u64, u32)>,
    reads: Vec<(OpId, u64, u32)>,
}

/// One volume's metadata, bitmap and activity log, and where it lies on the node's disk.
pub struct Vol {
    path: PathBuf,
    pub meta: Arc<MetaFile>,
    pub bitmap: Arc<DirtyBitmap>,
    pub al: Arc<ActivityLog>,
    /// Its first block on the simulated disk, and its size.
    first: usize,
    size: u64,
}

pub struct Node {
    pub name: &'static str,
    pub up: bool,
    /// The data disk, written only through `pipe` (the production write pipeline: snapshot
    /// preservation, then the disk).
    pub dev: Arc<SimDev>,
    pub pipe: Arc<WritePipeline<SimDev>>,
    snap_cfg: SnapshotStoreConfig,
    /// Volume 0's metadata: the resource's role, disk state and generations.
    pub meta: Arc<MetaFile>,
    /// The volumes (one, or a group's two).
    pub vols: Vec<Vol>,
    pub sess: Option<Sess>,
    /// The admin said disconnect, or a split brain waits for the admin.
    pub standalone: bool,
    pub repl: ReplState,
    pub peer_role: Option<Role>,
    /// Fail the next data write with EIO.
    pub eio: bool,
    /// Bytes this node received as SyncTarget (resync answers written).
    pub resync_received: u64,
    /// Resync requests this node served for a volume other than 0.
    pub served_later_volumes: u64,
    /// This node's verify runs that ended (the world checks and clears them).
    pub verify_ends: Vec<VerifyEnd>,
    /// Replicated and resync writes this node applied (through its pipeline).
    pub peer_writes: u64,
    /// The snapshot the world checks: its name, the disk when it was taken, and
    /// `peer_writes` then.
    pub snap: Option<(String, Vec<u64>, u64)>,
    snaps_taken: u64,
}

impl Node {
    /// A node of a new pair: both sides start UpToDate with the same generation (as after
    /// `create-md` and an initial sync of an empty volume). `split`: a group whose volume 0
    /// has that many blocks and volume 1 the rest.
    pub fn new(
        dir: &std::path::Path,
        name: &'static str,
        size: u64,
        gen: u64,
        split: Option<u64>,
    ) -> Node {
        let sizes = match split {
            Some(b) => vec![b * BS, size - b * BS],
            None => vec![size],
        };
        let mut first = 0;
        let vols: Vec<Vol> = sizes
            .iter()
            .enumerate()
            .map(|(v, &vsize)| {
                let path = dir.join(format!("{name}-{v}.meta"));
                let mut nm = NewMeta::new("sim", name, vsize);
                nm.uuid = Some([7; 16]);
                nm.disk_state = meta::DiskState::UpToDate;
                nm.gen = Some(meta::GenerationIds {
                    current: gen,
                    bitmap: 0,
                    history: [0; 2],
                });
                let meta = MetaFile::create(&path, &nm).expect("create the metadata");
                let (meta, bitmap, al) = attach(meta);
                let vol = Vol {
                    path,
                    meta,
                    bitmap,
                    al,
                    first,
                    size: vsize,
                };
                first += (vsize / BS) as usize;
                vol
            })
            .collect();
        let dev = Arc::new(SimDev::new((size / BS) as usize));
        let snap_cfg = SnapshotStoreConfig {
            dir: dir.join(format!("{name}-snapshots")),
            resource: "sim".into(),
            volume_bytes: size,
            chunk_bytes: drl::limits::SNAPSHOT_CHUNK_BYTES_DEFAULT,
            space_bytes: 4 * size,
        };
        let pipe = pipeline(&dev, &snap_cfg);
        Node {
            name,
            up: true,
            dev,
            pipe,
            snap_cfg,
            meta: vols[0].meta.clone(),
            vols,
            sess: None,
            standalone: false,
            repl: ReplState::Off,
            peer_role: None,
            eio: false,
            resync_received: 0,

            served_later_volumes: 0,
            verify_ends: Vec::new(),
            peer_writes: 0,
            snap: None,
            snaps_taken: 0,
        }
    }

    /// What the disk holds (reads see `view`, a crash keeps `stable`).
    pub fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.dev.disk()
    }

    /// `drl snapshot create` on this node (`SnapshotStore::create`: a cut between two
    /// writes); the previous checked snapshot is deleted. The world checks it from now on.
    pub fn take_snapshot(&mut self) {
        let store = self.pipe.snapshots().clone();
        if let Some((old, _, _)) = self.snap.take() {
            block_on(store.delete(&old)).expect("delete the previous snapshot");
        }
        self.snaps_taken += 1;
        let name = format!("s{}", self.snaps_taken);
        block_on(store.create(&name)).expect("create a snapshot");
        self.snap = Some((name, self.view(), self.peer_writes));
    }

    /// The checked snapshot's contents now (block tags), read through the store.
    pub fn read_snapshot(&self) -> Option<Vec<u64>> {
        let (name, _, _) = self.snap.as_ref()?;
        let size = drl::volume::BlockDevice::size_bytes(&*self.dev);
        let store = self.pipe.snapshots().clone();
        let mut tags = Vec::new();
        let mut off = 0;
        while off < size {
            let len = (size - off).min(1 << 20) as u32;
            let buf = block_on(store.read(name, off, len)).expect("read the snapshot");
            tags.extend(super::dev::tags_of(&buf));
            off += u64::from(len);
        }
        Some(tags)
    }

    /// What reads see, block by block (a copy: no lock held).
    pub fn view(&self) -> Vec<u64> {
        self.disk().view.clone()
    }

    /// What survives a crash (a copy).
    pub fn stable(&self) -> Vec<u64> {
        self.disk().stable.clone()
    }

    /// Dirty bits of every volume.
    pub fn dirty_bits(&self) -> u64 {
        self.vols.iter().map(|v| v.bitmap.count_dirty()).sum()
    }

    /// The volume holding disk block `block`, and the block's offset in it.
    fn locate(&self, block: usize) -> (VolumeId, u64) {
        let v = self
            .vols
            .iter()
            .rposition(|v| v.first <= block)
            .unwrap_or(0);
        (VolumeId(v as u16), (block - self.vols[v].first) as u64 * BS)
    }

    /// Whether disk block `block` is out of sync in its volume's bitmap.
    pub fn is_marked(&self, block: usize) -> bool {
        let (vol, off) = self.locate(block);
        self.vols[usize::from(vol.0)].bitmap.is_dirty(off / BS)
    }

    /// The first disk block of `offset` in volume `vol`.
    fn block_of(&self, vol: VolumeId, offset: u64) -> usize {
        self.vols[usize::from(vol.0)].first + (offset / BS) as usize
    }

    fn persist_bitmaps(&self) {
        for v in &self.vols {
            v.bitmap.flush_to(&v.meta).expect("persist");
        }
    }

    pub fn role(&self) -> Role {
        role_of(self.meta.superblock().role)
    }

    pub fn disk_state(&self) -> DiskState {
        disk_of(self.meta.superblock().disk_state)
    }

    /// What this node's Hello announces.
    pub fn hello(&self) -> NodeState {
        let sb = self.meta.superblock();
        NodeState {
            role: role_of(sb.role),
            disk: disk_of(sb.disk_state),
            gen: gen_of(sb.gen),
            dirty_bits: self.dirty_bits(),
        }
    }

    pub fn start_session(&mut self, conn: u64, peer_current: u64, now: u64) {
        let mut tracker = EpochTracker::new(EpochLimits {
            buffer_bytes_max: drl::limits::REPL_SEND_BUFFER_BYTES_MAX,
            ..EpochLimits::default()
        });
        tracker.set_clear_partial_blocks(true);
        self.sess = Some(Sess {
            conn,
            core: Core::with_volumes(
                self.vols.iter().map(|v| v.size).collect(),
                peer_current,
                now,
            ),
            tracker: Mutex::new(tracker),
            ops: Vec::new(),
            out: Vec::new(),
            end: None,
            clean_start: false,
            flushed_epoch: 0,
            provides: Default::default(),
            reads: Vec::new(),
        });
    }

    /// One step of the core: `f` gets the core and the node's facts.
    pub fn step(&mut self, now: u64, f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>) {
        let Some(mut s) = self.sess.take() else {
            return;
        };
        if s.end.is_none() || s.core.applying() {
            self.run_core(&mut s, now, f);
            self.verify_io(&mut s, now);
        }
        self.sess = Some(s);
    }

    /// `f` on the core with this node's facts, then its actions carried out.
    fn run_core(
        &mut self,
        s: &mut Sess,
        now: u64,
        f: impl FnOnce(&mut Core<Bytes>, &Ctx) -> Vec<Action<Bytes>>,
    ) {
        let actions = {
            let group: Vec<&DirtyBitmap> = self.vols[1..].iter().map(|v| &*v.bitmap).collect();
            let ctx = Ctx {
                now_ms: now,
                role: self.role(),
                bitmap: &self.vols[0].bitmap,
                group_bitmaps: &group,
                tracker: &s.tracker,
                resync_paused: false,
            };
            f(&mut s.core, &ctx)
        };
        self.exec(s, actions);
    }

    /// The shell's verify I/O, at once: provide digests (a Primary reads now: its local
    /// writes are synchronous here, so the read sees exactly the writes queued before; a
    /// node that is not Primary once its core is idle) and the comparer's reads.
    fn verify_io(&mut self, s: &mut Sess, now: u64) {
        loop {
            if let Some((id, offset, len)) = s.reads.pop() {
                let ours = Ok(self.digests(offset, len));
                self.run_core(s, now, |c, ctx| c.on_verify_read(ctx, id, ours));
                continue;
            }
            let ready = self.role() == Role::Primary || s.core.idle();
            match s.provides.front().copied() {
                Some((run, id, offset, len)) if ready && s.end.is_none() => {
                    s.provides.pop_front();
                    s.out.push(Frame::VerifyDigests {
                        run,
                        id,
                        offset,
                        len,
                        digests: Bytes::from(self.digests(offset, len)),
                    });
                }
                _ => return,
            }
        }
    }

    /// The production digests of what reads see of a range in the group's address space.
    fn digests(&self, offset: u64, len: u32) -> Vec<u8> {
        let (vol, local) = VolumeId::of_group_offset(offset);
        let first = self.block_of(vol, local);
        let n = u64::from(len).div_ceil(BS) as usize;
        drl::repl::verify::block_digests(&payload(&self.disk().view[first..first + n]))
    }

    fn exec(&mut self, s: &mut Sess, actions: Vec<Action<Bytes>>) {
        for a in actions {
            match a {
                Action::Send(f) => {
                    if s.end.is_none() {
                        s.out.push(f)
                    }
                }
                // The daemon's Link::close_epoch: close and queue under the tracker's lock.
                Action::CloseEpoch => {
                    if s.end.is_none() {
                        if let Some(e) = s.tracker.lock().unwrap().close_epoch() {
                            s.out.push(Frame::Barrier { epoch: e });
                        }
                    }
                }
                // The simulator's groups are fixed; adding a volume is not one of its admin
                // actions (tests in src/repl/core/add_volume_tests.rs and tests/add_volume.rs).
                Action::AnnounceVolume { .. } => unreachable!("the simulator adds no volume"),
                Action::Disk { id, vol, op } => s.ops.push((id, vol, op)),
                Action::PersistBitmapDetached => self.persist_bitmaps(),
                Action::Meta(m) => self.apply_meta(m),
                Action::State(c) => self.apply_state(c),
                Action::Count(drl::repl::core::Counter::ResyncReceivedBytes(n)) => {
                    self.resync_received += n
                }
                Action::Count(_) | Action::RoomFreed | Action::PingAck(_) => {}
                Action::StopServing | Action::Info(_) => {}
                Action::Serve { offset, len } => {
                    // The shell's answering task, at once: read, clear the bits, answer (the
                    // offset is in the group's address space).
                    let (vol, local) = VolumeId::of_group_offset(offset);
                    self.served_later_volumes += u64::from(vol.0 > 0);
                    let first = self.block_of(vol, local);
                    let n = (u64::from(len) / BS) as usize;
                    let tags = self.disk().view[first..first + n].to_vec();
                    self.vols[usize::from(vol.0)]
                        .bitmap
                        .clear_range(local, u64::from(len));
                    if tags.iter().all(|&t| t == 0) {
                        s.out.push(Frame::ResyncZeroes { offset, len });
                    } else {
                        s.out.push(Frame::ResyncData {
                            offset,
                            data: payload(&tags),
                        });
                    }
                }
                Action::VerifyProvide {
                    run,
                    id,
                    offset,
                    len,
                } => s.provides.push_back((run, id, offset, len)),
                Action::VerifyRead { id, offset, len } => s.reads.push((id, offset, len)),
                Action::Verify(VerifyEvent::Finished(end)) => self.verify_ends.push(end),
                Action::Verify(_) => {}
                Action::Close(e) => {
                    if s.end.is_none() {
                        s.end = Some(e.to_string());
                    }
                    return;
                }
            }
        }
    }

    fn apply_meta(&mut self, m: MetaChange) {
        self.meta
            .update(|sb| match m {
                MetaChange::Inconsistent => sb.disk_state = meta::DiskState::Inconsistent,
                MetaChange::ConnectedInSync { peer_current } => {
                    if sb.gen.current == peer_current && sb.gen.current != 0 {
                        let mut g = gen_of(sb.gen);
                        g.on_connected_in_sync();
                        sb.gen = gen_to_meta(g);
                    }
                }
                MetaChange::ResyncFinishedSource => {
                    let mut g = gen_of(sb.gen);
                    g.on_resync_finished_as_source();
                    sb.gen = gen_to_meta(g);
                }
                MetaChange::ResyncFinishedTarget { source_current } => {
                    let mut g = gen_of(sb.gen);
                    if source_current != 0 {
                        g.on_resync_finished_as_target(source_current);
                    }
                    sb.gen = gen_to_meta(g);
                    sb.disk_state = meta::DiskState::UpToDate;
                    sb.flags &= !meta::flags::CRASHED_PRIMARY;
                }
            })
            .expect("metadata update");
    }

    fn apply_state(&mut self, c: StateChange) {
        match c {
            StateChange::Repl(r) | StateChange::ResyncStarted { repl: r, .. } => self.repl = r,
            StateChange::ResyncEnded { .. } => self.repl = ReplState::Established,
            StateChange::Peer { role, ahead, .. } => {
                self.peer_role = Some(role);
                self.repl = drl::repl::state::with_peer_ahead(self.repl, ahead);
            }
            StateChange::SplitBrain { .. } | StateChange::StandAlone => self.standalone = true,
            StateChange::VolumeSync(_) => {}
        }
    }

    /// Complete the issued disk operation at `i` (its result goes to the core).
    pub fn complete(&mut self, i: usize, now: u64) {
        let Some(s) = self.sess.as_mut() else { return };
        let (id, vol, op) = s.ops.swap_remove(i);
        let r = match op {
            DiskOp::Write { .. } if self.eio => {
                self.eio = false;
                Err("Input/output error (simulated)".to_string())
            }
            DiskOp::Write { offset, write } => {
                // Through the production pipeline, as the daemon's session does: a snapshot
                // on this node keeps its point in time while replicated and resync writes
                // arrive.
                let at = self.block_of(vol, offset) as u64 * BS;
                let w = match write {
                    Write::Data { data, fua } => drl::pipeline::Write::Data {
                        data: drl::volume::AlignedBuf::from_slice(&data),
                        fua,
                    },
                    Write::Trim { len, fua } => drl::pipeline::Write::Trim { len, fua },
                    Write::Zeroes { len, fua } => drl::pipeline::Write::Zeroes {
                        len,
                        may_trim: true,
                        fua,
                    },
                };
                self.peer_writes += 1;
                block_on(self.pipe.apply(at, w)).map_err(|e| e.to_string())
            }
            DiskOp::Flush => {
                let v = &self.vols[usize::from(vol.0)];
                let first = v.first;
                self.disk()
                    .flush_blocks(first..first + (v.size / BS) as usize);
                Ok(())
            }
            DiskOp::PersistBitmap => {
                let v = &self.vols[usize::from(vol.0)];
                v.bitmap.flush_to(&v.meta).expect("persist");
                Ok(())
            }
        };
        self.step(now, |c, ctx| c.on_disk_done(ctx, id, r));
    }

    /// The Primary's write path (`Replicator::write`): AL, bits, enqueue, local write.
    /// False if the send buffer has no room (the `block` policy: the writer waits).
    /// A write lies in one volume (the world never spans two).
    pub fn app_write(&mut self, first: usize, tags: &[u64], fua: bool, now: u64) -> Option<u64> {
        let (vol, off) = self.locate(first);
        let len = tags.len() as u64 * BS;
        let v = &self.vols[usize::from(vol.0)];
        assert!(off + len <= v.size, "a write spans two volumes");
        if let Some(s) = self.sess.as_ref().filter(|s| s.end.is_none()) {
            if !s.tracker.lock().unwrap().has_room(len) {
                return None;
            }
        }
        let guard =
            v.al.acquire_blocking(&v.meta, &v.bitmap, off, len)
                .expect("activity log");
        v.bitmap.set_range(off, len);
        let mut epoch = None;
        if let Some(s) = self.sess.as_mut().filter(|s| s.end.is_none()) {
            let enq = s
                .tracker
                .lock()
                .unwrap()
                .try_enqueue(vol.group_offset(off), len, len, fua, now)
                .expect("room was checked");
            s.out.push(Frame::Data {
                vol: vol.0,
                seq: enq.seq,
                epoch: enq.epoch,
                offset: off,
                fua,
                data: payload(tags),
            });
            if let Some(e) = enq.close_epoch {
                s.out.push(Frame::Barrier { epoch: e });
            }
            epoch = Some(enq.epoch);
        }
        // The daemon's device: the snapshot's preservation, then the disk, in one pipeline.
        let at = first as u64 * BS;
        let data = drl::volume::AlignedBuf::from_slice(&payload(tags));
        let pipe = self.pipe.clone();
        block_on(async {
            let _g = pipe.preserve(at, len).await?;
            pipe.disk_write(at, drl::pipeline::Write::Data { data, fua })
                .await
        })
        .expect("the sim disk takes whole blocks");
        drop(guard);
        Some(epoch.unwrap_or(0))
    }

    /// An application flush: close the epoch, flush the local disk.
    pub fn app_flush(&mut self) {
        if let Some(s) = self.sess.as_mut().filter(|s| s.end.is_none()) {
            if let Some(e) = s.tracker.lock().unwrap().close_epoch() {
                s.out.push(Frame::Barrier { epoch: e });
            }
        }
        self.disk().flush();
    }

    /// The periodic persist (`service::persist_loop`): bitmap, then a flush of the data disk,
    /// then retire the acknowledged and flushed activity-log extents.
    pub fn persist(&mut self) {
        self.persist_bitmaps();
        let flushed: Vec<u64> = self.vols.iter().map(|v| v.al.writes_done()).collect();
        self.disk().flush();
        for (v, flushed) in self.vols.iter().zip(flushed) {
            v.al.retire_clean(&v.meta, &v.bitmap, flushed)
                .expect("retire");
        }
    }

    /// The session is over (`Session::drain` + `finish`): apply what was received, keep every
    /// unacked bit, persist, and a Primary that lost its peer starts a new generation.
    pub fn finish(&mut self, rng: &mut StdRng, new_gen: u64) {
        let Some(mut s) = self.sess.take() else {
            return;
        };
        s.core.end();
        if s.end.is_none() {
            s.end = Some("connection lost".into());
        }
        self.sess = Some(s);
        let mut guard = 0;
        while self
            .sess
            .as_ref()
            .is_some_and(|s| s.core.applying() && !s.ops.is_empty())
        {
            let n = self.sess.as_ref().map_or(0, |s| s.ops.len());
            self.complete(rng.random_range(0..n), 0);
            guard += 1;
            assert!(guard < 100_000, "drain does not end");
        }
        let Some(mut s) = self.sess.take() else {
            return;
        };
        let (repl, gen_bitmap) = (self.repl, self.meta.superblock().gen.bitmap);
        let group: Vec<&DirtyBitmap> = self.vols[1..].iter().map(|v| &*v.bitmap).collect();
        let ctx = Ctx {
            now_ms: 0,
            role: self.role(),
            bitmap: &self.vols[0].bitmap,
            group_bitmaps: &group,
            tracker: &s.tracker,
            resync_paused: false,
        };
        let done = s.core.finish(&ctx, repl, gen_bitmap);
        if let Some(end) = s.core.verify_abort("the connection closed") {
            self.verify_ends.push(end);
        }
        self.persist_bitmaps();
        if done.new_generation {
            self.meta
                .update(|sb| {
                    let mut g = gen_of(sb.gen);
                    g.start_new_generation(new_gen);
                    sb.gen = gen_to_meta(g);
                })
                .expect("metadata");
        }
        self.repl = ReplState::Off;
        self.peer_role = None;
    }

    /// kill -9 / power loss: everything in memory is gone, unflushed data writes are lost,
    /// torn or reordered; then the daemon starts again (Secondary, AL replayed into the bitmap).
    pub fn crash_and_restart(&mut self, rng: &mut StdRng) {
        self.sess = None;
        self.disk().crash(rng);
        // A snapshot holds the disk as it was, flushed or not; power loss may take back
        // unflushed writes from before it on the chunks it did not preserve, so its point in
        // time is checked only until its node crashes.
        self.snap = None;
        // The restarted daemon opens its snapshot store again (its COW copies and map records
        // were made durable before each write they preserve).
        self.pipe = pipeline(&self.dev, &self.snap_cfg);
        for v in &mut self.vols {
            let meta = MetaFile::open(&v.path).expect("reopen the metadata");
            let (meta, bitmap, al) = attach(meta);
            (v.meta, v.bitmap, v.al) = (meta, bitmap, al);
        }
        self.meta = self.vols[0].meta.clone();
        self.meta
            .update(|sb| sb.role = meta::Role::Secondary)
            .expect("metadata");
        self.repl = ReplState::Off;
        self.peer_role = None;
        self.eio = false;
        self.up = true;
    }
}

fn pipeline(dev: &Arc<SimDev>, cfg: &SnapshotStoreConfig) -> Arc<WritePipeline<SimDev>> {
    let snaps = SnapshotStore::open(cfg.clone(), dev.clone()).expect("open the snapshot store");
    Arc::new(WritePipeline::new(dev.clone(), Arc::new(snaps)))
}

fn attach(meta: MetaFile) -> (Arc<MetaFile>, Arc<DirtyBitmap>, Arc<ActivityLog>) {
    let bitmap = DirtyBitmap::load(&meta).expect("load the bitmap");
    let (al, _report) = ActivityLog::attach(&meta, &bitmap).expect("attach the activity log");
    (Arc::new(meta), Arc::new(bitmap), al)
}
