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
use drl::repl::core::{
    Action, Core, Ctx, DiskOp, MetaChange, OpId, StateChange, VerifyEnd, VerifyEvent, VolumeId,
    Write,
};
use drl::repl::epoch::{EpochLimits, EpochTracker};
use drl::repl::frame::{Frame, VerifyRun};
pub use drl::repl::replicator::{disk_of, gen_of, gen_to_meta, role_of};
use drl::repl::state::NodeState;
use drl::volume::activity_log::ActivityLog;
use drl::volume::bitmap::DirtyBitmap;
use drl::volume::meta::{self, MetaFile, NewMeta};
use rand::rngs::StdRng;
use rand::Rng;

pub const BS: u64 = drl::limits::BITMAP_BLOCK_BYTES;

/// A data disk of block tags (the id of the write that wrote a block, 0: zeroes).
pub struct Disk {
    /// What survives a crash: the state at the last flush.
    pub stable: Vec<u64>,
    /// What reads see (completed writes).
    pub view: Vec<u64>,
    /// Completed writes since the last flush: (first block, tags).
    pending: Vec<(usize, Vec<u64>)>,
}

impl Disk {
    fn new(blocks: usize) -> Disk {
        Disk {
            stable: vec![0; blocks],
            view: vec![0; blocks],
            pending: Vec::new(),
        }
    }

    pub fn write(&mut self, first: usize, tags: Vec<u64>) {
        self.view[first..first + tags.len()].copy_from_slice(&tags);
        self.pending.push((first, tags));
    }

    pub fn flush(&mut self) {
        self.flush_blocks(0..self.view.len());
    }

    /// Flush one volume of a group (its blocks): the other volume's unflushed writes stay
    /// unflushed (a write lies in one volume).
    fn flush_blocks(&mut self, blocks: std::ops::Range<usize>) {
        self.stable[blocks.clone()].clone_from_slice(&self.view[blocks.clone()]);
        self.pending.retain(|(first, _)| !blocks.contains(first));
    }

    /// Power loss: each unflushed write is lost, kept or torn (some of its blocks), in any
    /// order.
    fn crash(&mut self, rng: &mut StdRng) {
        let mut img = self.stable.clone();
        let mut pend = std::mem::take(&mut self.pending);
        while !pend.is_empty() {
            let (first, tags) = pend.swap_remove(rng.random_range(0..pend.len()));
            match rng.random_range(0..3) {
                0 => {}
                1 => img[first..first + tags.len()].copy_from_slice(&tags),
                _ => {
                    for (i, t) in tags.iter().enumerate() {
                        if rng.random_bool(0.5) {
                            img[first + i] = *t;
                        }
                    }
                }
            }
        }
        self.stable = img.clone();
        self.view = img;
    }
}

/// Bytes of a write of `tags` (each block holds its tag, little endian, then zeroes).
pub fn payload(tags: &[u64]) -> Bytes {
    let mut v = vec![0u8; tags.len() * BS as usize];
    for (i, t) in tags.iter().enumerate() {
        v[i * BS as usize..i * BS as usize + 8].copy_from_slice(&t.to_le_bytes());
    }
    Bytes::from(v)
}

fn tags_of(data: &[u8]) -> Vec<u64> {
    data.chunks(BS as usize)
        .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
        .collect()
}

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
    pub disk: Disk,
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
        Node {
            name,
            up: true,
            disk: Disk::new((size / BS) as usize),
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
        }
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
            let group: Vec<&DirtyBitmap> = self.vols[1..].iter().map(|v| &*v.bitmap).collect();
            let ctx = Ctx {
                now_ms: now,
                role: self.role(),
                bitmap: &self.vols[0].bitmap,
                group_bitmaps: &group,
                tracker: &s.tracker,
                resync_paused: false,
            };
            let actions = f(&mut s.core, &ctx);
            self.exec(&mut s, actions);
            self.verify_io(&mut s, now);
        }
        self.sess = Some(s);
    }

    /// The shell's verify I/O, at once: provide digests (a Primary reads now: its local
    /// writes are synchronous here, so the read sees exactly the writes queued before; a
    /// node that is not Primary once its core is idle) and the comparer's reads.
    fn verify_io(&mut self, s: &mut Sess, now: u64) {
        loop {
            if let Some((id, offset, len)) = s.reads.pop() {
                let ours = Ok(self.digests(offset, len));
                let group: Vec<&DirtyBitmap> = self.vols[1..].iter().map(|v| &*v.bitmap).collect();
                let ctx = Ctx {
                    now_ms: now,
                    role: self.role(),
                    bitmap: &self.vols[0].bitmap,
                    group_bitmaps: &group,
                    tracker: &s.tracker,
                    resync_paused: false,
                };
                let actions = s.core.on_verify_read(&ctx, id, ours);
                drop(group);
                self.exec(s, actions);
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

    /// The production digests of what reads see of a range of volume 0.
    fn digests(&self, offset: u64, len: u32) -> Vec<u8> {
        let first = (offset / BS) as usize;
        let n = u64::from(len).div_ceil(BS) as usize;
        drl::repl::verify::block_digests(&payload(&self.disk.view[first..first + n]))
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
                    let tags = self.disk.view[first..first + n].to_vec();
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
                let first = self.block_of(vol, offset);
                let tags = match write {
                    Write::Data { data, .. } => tags_of(&data),
                    Write::Trim { len, .. } | Write::Zeroes { len, .. } => {
                        vec![0; (u64::from(len) / BS) as usize]
                    }
                };
                self.disk.write(first, tags);
                Ok(())
            }
            DiskOp::Flush => {
                let v = &self.vols[usize::from(vol.0)];
                let first = v.first;
                self.disk
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
        self.disk.write(first, tags.to_vec());
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
        self.disk.flush();
    }

    /// The periodic persist (`service::persist_loop`): bitmap, then a flush of the data disk,
    /// then retire the acknowledged and flushed activity-log extents.
    pub fn persist(&mut self) {
        self.persist_bitmaps();
        let flushed: Vec<u64> = self.vols.iter().map(|v| v.al.writes_done()).collect();
        self.disk.flush();
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
        self.disk.crash(rng);
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

fn attach(meta: MetaFile) -> (Arc<MetaFile>, Arc<DirtyBitmap>, Arc<ActivityLog>) {
    let bitmap = DirtyBitmap::load(&meta).expect("load the bitmap");
    let (al, _report) = ActivityLog::attach(&meta, &bitmap).expect("attach the activity log");
    (Arc::new(meta), Arc::new(bitmap), al)
}
