//! The activity log (AL): the set of "hot" extents of the volume that may have writes in
//! flight, recorded on disk *before* a write lands in them, so that after a crash of the
//! Primary only those extents need a resync instead of the whole volume (DRBD's activity log;
//! the bitmap covers everything outside it).
//!
//! Model. The volume is split into extents of `al_extent_bytes` (4 MiB by default). At most
//! `al_extents` (DRBD's `al-extents`, 1237 by default) are hot. A write first calls
//! [`ActivityLog::begin_write`]:
//! - every extent it touches is hot and committed: [`BeginWrite::Hot`] with a guard at once;
//! - some extent is cold: [`BeginWrite::NeedsTransaction`]. The caller commits the
//!   transaction (blocking file I/O: from `spawn_blocking`) and gets the guard;
//! - the write must wait ([`BeginWrite::Wait`]): another transaction is being committed (only
//!   one at a time, which also means two writers into the same new extent never write two
//!   transactions: the second waits, retries and finds the extent hot), or the hot set is full
//!   and every extent has writes in flight. The wait ends when the transaction finishes or an
//!   extent becomes idle; then the caller calls `begin_write` again.
//!
//! [`ActivityLog::acquire`] / [`ActivityLog::acquire_blocking`] run that loop for the caller.
//!
//! The guard ([`AlGuard`]) holds a reference on each extent of the write; dropping it ends the
//! write. **For replication the guard must live until the write is on the local disk *and*
//! acknowledged by the peer (or its blocks are set in the bitmap)**, as DRBD keeps an AL
//! reference until the request is destroyed: with protocol A a write completes to the client
//! before the peer has it, and the AL must still cover it. Only extents with no reference can
//! be evicted (least recently used first), and before a transaction that evicts an extent is
//! written, the bitmap is flushed, so the region leaving the AL is covered by the bitmap on disk.
//!
//! On-disk format. The AL area of the metadata file is a ring of `al_slots` transaction slots.
//! Transaction `seq` goes to slot `seq % al_slots` and holds the *full* hot set (not a delta,
//! unlike DRBD: recovery then needs one record, and a slot is sized for `al_extents` entries,
//! 2 x 4 KiB for the default). Record: magic, seq, resource uuid, extent bytes, count, a CRC32
//! over header and entries, then `count` little-endian `u32` extent numbers; only the 4 KiB
//! blocks in use are written, then `fdatasync`. Recovery takes the valid record with the
//! highest seq: a torn newest record fails its CRC and the previous one (another slot) is used,
//! which is correct because no write entered the new extents before their record was durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use super::bitmap::DirtyBitmap;
use super::meta::{flags, get_u32, get_u64, MetaError, MetaFile, AL_TXN_HEADER_BYTES};
use crate::limits::META_BLOCK_BYTES;

const AL_MAGIC: [u8; 8] = *b"DRLALTX\0";
const OFF_SEQ: usize = 8;
const OFF_UUID: usize = 16;
const OFF_EXTENT_BYTES: usize = 32;
const OFF_COUNT: usize = 40;
const OFF_CRC: usize = 60;
const HDR: usize = AL_TXN_HEADER_BYTES as usize;
const _: () = assert!(OFF_CRC + 4 <= HDR);

/// What can go wrong with the activity log.
#[derive(Debug, thiserror::Error)]
pub enum AlError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("activity log: write at offset {offset} length {len} runs past the end of the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("activity log: write at offset {offset} length {len} spans {extents} extents, more than al-extents {max}")]
    TooManyExtents {
        offset: u64,
        len: u64,
        extents: u64,
        max: u32,
    },
    #[error("activity log of {path}: {in_flight} writes still in flight; cannot close cleanly")]
    Busy { path: String, in_flight: u64 },
    #[error("activity log is closed")]
    Closed,
    #[error("activity log transaction task failed: {0}")]
    Cancelled(String),
}

/// The answer of [`ActivityLog::begin_write`].
#[must_use]
pub enum BeginWrite {
    Hot(AlGuard),
    NeedsTransaction(AlTransaction),
    Wait(AlWait),
}

#[derive(Debug)]
struct Extent {
    refs: u32,
    committed: bool,
    last_used: u64,
    /// [`Inner::writes_done`] when a write in this extent last completed.
    last_done: u64,
}

#[derive(Debug, Default)]
struct Inner {
    hot: HashMap<u32, Extent>,
    /// A transaction is between `begin_write` and commit/rollback.
    pending: bool,
    /// A writer waits for an extent to become idle.
    starved: bool,
    closed: bool,
    next_seq: u64,
    clock: u64,
    committed_transactions: u64,
    /// Writes completed (guards dropped) so far: [`ActivityLog::writes_done`].
    writes_done: u64,
    /// Extents [`ActivityLog::retire_clean`] took out of `hot` whose record without them is
    /// not on disk yet (a crash now still resyncs them): counted by `hot_count`. Any record
    /// written from `hot` (a retirement or a transaction) is without them: it resets this.
    retiring: usize,
}

/// The in-memory activity log of one volume.
#[derive(Debug)]
pub struct ActivityLog {
    extent_bytes: u64,
    extents_max: u32,
    /// The volume's size; grows with `drl resize` ([`ActivityLog::grow`]).
    volume_bytes: AtomicU64,
    uuid: [u8; 16],
    inner: Mutex<Inner>,
    notify: Arc<Notify>,
}

/// What [`ActivityLog::attach`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// The previous run ended with a clean shutdown.
    pub was_clean: bool,
    /// The previous run crashed while Primary (the flag is now set in the superblock).
    pub crashed_primary: bool,
    /// Regions from the activity log that were marked dirty in the bitmap.
    pub replayed: Vec<(u64, u64)>,
}

impl ActivityLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // State changes under the lock are single assignments; a panic elsewhere cannot leave
        // it inconsistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The activity log described by `meta`'s superblock, with an empty hot set. Private:
    /// [`ActivityLog::attach`] first replays what a crash left, which this must not skip.
    fn open(meta: &MetaFile) -> Result<Arc<ActivityLog>, AlError> {
        let sb = meta.superblock();
        let newest = read_newest(meta)?.map(|(seq, _)| seq).unwrap_or(0);
        Ok(Arc::new(ActivityLog {
            extent_bytes: sb.al_extent_bytes,
            extents_max: sb.al_extents,
            volume_bytes: AtomicU64::new(sb.size_bytes),
            uuid: sb.uuid,
            inner: Mutex::new(Inner {
                next_seq: newest + 1,
                ..Default::default()
            }),
            notify: Arc::new(Notify::new()),
        }))
    }

    /// Regions to resync after a crash: the extents of the newest valid transaction, as
    /// `(offset, len)` sorted by offset, clipped to the volume. Empty after a clean shutdown.
    pub fn recover(meta: &MetaFile) -> Result<Vec<(u64, u64)>, AlError> {
        let sb = meta.superblock();
        if sb.has_flag(flags::CLEAN_SHUTDOWN) {
            return Ok(Vec::new());
        }
        let Some((seq, mut extents)) = read_newest(meta)? else {
            tracing::warn!(path = %meta.path().display(),
                "unclean shutdown but no valid activity-log transaction: nothing to replay");
            return Ok(Vec::new());
        };
        extents.sort_unstable();
        extents.dedup();
        let ranges: Vec<(u64, u64)> = extents
            .into_iter()
            .map(|e| e as u64 * sb.al_extent_bytes)
            .filter(|&off| off < sb.size_bytes)
            .map(|off| (off, sb.al_extent_bytes.min(sb.size_bytes - off)))
            .collect();
        tracing::info!(path = %meta.path().display(), seq, extents = ranges.len(),
            "activity log recovered after unclean shutdown");
        Ok(ranges)
    }

    /// Open the activity log of a volume being attached: after an unclean shutdown the
    /// extents of the newest transaction are marked dirty in `bitmap` and flushed, an empty
    /// transaction restarts the ring, and the superblock records that the volume is in use
    /// (no `CLEAN_SHUTDOWN`; `CRASHED_PRIMARY` when it crashed as Primary). In that order, so a
    /// crash during attach loses nothing.
    pub fn attach(
        meta: &MetaFile,
        bitmap: &DirtyBitmap,
    ) -> Result<(Arc<ActivityLog>, AttachReport), AlError> {
        let sb = meta.superblock();
        let was_clean = sb.has_flag(flags::CLEAN_SHUTDOWN);
        let replayed = Self::recover(meta)?;
        for &(off, len) in &replayed {
            bitmap.set_range(off, len);
        }
        bitmap.flush_to(meta)?;
        let al = Self::open(meta)?;
        let seq = {
            let mut inner = al.lock();
            inner.next_seq += 1;
            inner.next_seq - 1
        };
        write_record(meta, &al.uuid, al.extent_bytes, seq, &[])?;
        let crashed_primary = !was_clean && sb.has_flag(flags::WAS_PRIMARY);
        meta.update(|sb| {
            sb.flags &= !flags::CLEAN_SHUTDOWN;
            if crashed_primary {
                sb.flags |= flags::CRASHED_PRIMARY;
            }
        })?;
        if crashed_primary {
            tracing::warn!(path = %meta.path().display(), regions = replayed.len(),
                "volume crashed while Primary: activity log replayed into the bitmap");
        }
        Ok((
            al,
            AttachReport {
                was_clean,
                crashed_primary,
                replayed,
            },
        ))
    }

    /// Close after all writes ended: flush the bitmap, write an empty transaction and set
    /// `CLEAN_SHUTDOWN`, so the next attach replays nothing. Later writes are refused.
    pub fn close_clean(&self, meta: &MetaFile, bitmap: &DirtyBitmap) -> Result<(), AlError> {
        let seq = {
            let mut inner = self.lock();
            let in_flight: u64 = inner.hot.values().map(|e| e.refs as u64).sum();
            if in_flight > 0 || inner.pending {
                return Err(AlError::Busy {
                    path: meta.path().display().to_string(),
                    in_flight,
                });
            }
            inner.closed = true;
            inner.hot.clear();
            inner.next_seq += 1;
            inner.next_seq - 1
        };
        self.notify.notify_waiters();
        bitmap.flush_to(meta)?;
        write_record(meta, &self.uuid, self.extent_bytes, seq, &[])?;
        meta.update(|sb| sb.flags |= flags::CLEAN_SHUTDOWN)?;
        Ok(())
    }

    /// Writes completed so far (a counter). Read it before flushing the data disk and pass it
    /// to [`Self::retire_clean`]: every write counted was on the disk when the flush began.
    pub fn writes_done(&self) -> u64 {
        self.lock().writes_done
    }

    /// Let extents leave the persisted hot set once every write in them is acknowledged by
    /// the peer and on this node's stable storage: no write in flight (`refs == 0`), no dirty
    /// bit in `bitmap` over the extent (a replicated write's bits stay set until the peer's
    /// barrier ack, which comes after its flush), and its last write completed at or before
    /// `flushed` ([`Self::writes_done`] read before a flush of the data disk that has
    /// completed). Without the last condition a power loss of this node could lose a write
    /// the peer has while the extent no longer marks it (found by the simulator,
    /// `tests/sim`). One transaction for all of them (the caller batches: the periodic bitmap
    /// persist). A crash before it is durable resyncs more, never less: the extents were only
    /// dropped from memory; a write that enters one again meanwhile waits for this
    /// transaction (`pending`) and then writes its own. Returns how many extents left.
    /// Blocking I/O.
    pub fn retire_clean(
        &self,
        meta: &MetaFile,
        bitmap: &DirtyBitmap,
        flushed: u64,
    ) -> Result<usize, AlError> {
        let (seq, set, retired) = {
            let mut inner = self.lock();
            if inner.closed || inner.pending {
                return Ok(0);
            }
            let clean: Vec<u32> = inner
                .hot
                .iter()
                .filter(|(_, x)| x.refs == 0 && x.committed && x.last_done <= flushed)
                .map(|(&e, _)| e)
                .filter(|&e| {
                    let off = e as u64 * self.extent_bytes;
                    let len = self
                        .extent_bytes
                        .min(self.volume_bytes().saturating_sub(off));
                    !bitmap.any_dirty_in(off, len)
                })
                .collect();
            if clean.is_empty() {
                return Ok(0);
            }
            for e in &clean {
                inner.hot.remove(e);
            }
            inner.retiring = clean.len();
            inner.pending = true;
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let mut set: Vec<u32> = inner.hot.keys().copied().collect();
            set.sort_unstable();
            (seq, set, clean.len())
        };
        let r = write_record(meta, &self.uuid, self.extent_bytes, seq, &set);
        {
            let mut inner = self.lock();
            inner.pending = false;
            if r.is_ok() {
                inner.committed_transactions += 1;
                inner.retiring = 0;
            }
        }
        self.notify.notify_waiters();
        r?;
        Ok(retired)
    }

    pub fn volume_bytes(&self) -> u64 {
        self.volume_bytes.load(Ordering::Acquire)
    }

    /// The volume grew to `size_bytes` (`drl resize`): writes up to the new end may begin.
    pub fn grow(&self, size_bytes: u64) {
        self.volume_bytes.fetch_max(size_bytes, Ordering::AcqRel);
    }

    pub fn extent_bytes(&self) -> u64 {
        self.extent_bytes
    }
    pub fn extents_max(&self) -> u32 {
        self.extents_max
    }
    /// Extents a crash now would resync: hot (committed or being committed), plus those
    /// being retired until the record without them is on disk (status's `al_hot_extents`,
    /// which a caller may take as "a kill -9 now resyncs only these").
    pub fn hot_count(&self) -> usize {
        let inner = self.lock();
        inner.hot.len() + inner.retiring
    }
    /// Whether extent number `extent` is hot and committed.
    pub fn is_hot(&self, extent: u32) -> bool {
        self.lock().hot.get(&extent).is_some_and(|e| e.committed)
    }
    /// Transactions committed since this log was opened.
    pub fn committed_transactions(&self) -> u64 {
        self.lock().committed_transactions
    }

    /// Start a write of `len` bytes at `offset`; see the module doc for the three answers.
    pub fn begin_write(self: &Arc<Self>, offset: u64, len: u64) -> Result<BeginWrite, AlError> {
        let volume_bytes = self.volume_bytes();
        match offset.checked_add(len) {
            Some(end) if end <= volume_bytes => {}
            _ => {
                return Err(AlError::OutOfRange {
                    offset,
                    len,
                    size: volume_bytes,
                })
            }
        }
        if len == 0 {
            return Ok(BeginWrite::Hot(AlGuard {
                al: self.clone(),
                first: 0,
                end: 0,
            }));
        }
        let first = offset / self.extent_bytes;
        let end = (offset + len - 1) / self.extent_bytes + 1;
        if end - first > self.extents_max as u64 {
            return Err(AlError::TooManyExtents {
                offset,
                len,
                extents: end - first,
                max: self.extents_max,
            });
        }
        // Extent numbers fit in u32: validated against the volume size at creation.
        let (first, end) = (first as u32, end as u32);
        let mut inner = self.lock();
        if inner.closed {
            return Err(AlError::Closed);
        }
        let wait = |inner: MutexGuard<'_, Inner>| {
            let w = AlWait(self.notify.clone().notified_owned());
            drop(inner);
            Ok(BeginWrite::Wait(w))
        };
        let mut missing = Vec::new();
        for e in first..end {
            match inner.hot.get(&e) {
                Some(x) if !x.committed => return wait(inner),
                Some(_) => {}
                None => missing.push(e),
            }
        }
        inner.clock += 1;
        let now = inner.clock;
        if missing.is_empty() {
            for e in first..end {
                if let Some(x) = inner.hot.get_mut(&e) {
                    x.refs += 1;
                    x.last_used = now;
                }
            }
            return Ok(BeginWrite::Hot(AlGuard {
                al: self.clone(),
                first,
                end,
            }));
        }
        if inner.pending {
            return wait(inner);
        }
        let overflow = (inner.hot.len() + missing.len()).saturating_sub(self.extents_max as usize);
        let mut victims = Vec::new();
        if overflow > 0 {
            // O(hot set) scan, only on this path which writes a transaction anyway.
            let mut idle: Vec<(u64, u32)> = inner
                .hot
                .iter()
                .filter(|(&e, x)| x.refs == 0 && x.committed && !(first..end).contains(&e))
                .map(|(&e, x)| (x.last_used, e))
                .collect();
            if idle.len() < overflow {
                inner.starved = true;
                return wait(inner);
            }
            idle.select_nth_unstable(overflow - 1);
            victims = idle[..overflow].iter().map(|&(_, e)| e).collect();
            for v in &victims {
                inner.hot.remove(v);
            }
        }
        for &e in &missing {
            inner.hot.insert(
                e,
                Extent {
                    refs: 0,
                    committed: false,
                    last_used: now,
                    last_done: 0,
                },
            );
        }
        for e in first..end {
            if let Some(x) = inner.hot.get_mut(&e) {
                x.refs += 1;
                x.last_used = now;
            }
        }
        inner.pending = true;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let mut set: Vec<u32> = inner.hot.keys().copied().collect();
        set.sort_unstable();
        Ok(BeginWrite::NeedsTransaction(AlTransaction {
            al: self.clone(),
            seq,
            set,
            added: missing,
            evicted: victims,
            first,
            end,
            done: false,
        }))
    }

    /// `begin_write` until the write may proceed, committing transactions on the blocking
    /// pool. The returned guard ends the write when dropped.
    pub async fn acquire(
        self: &Arc<Self>,
        meta: &Arc<MetaFile>,
        bitmap: &Arc<DirtyBitmap>,
        offset: u64,
        len: u64,
    ) -> Result<AlGuard, AlError> {
        loop {
            match self.begin_write(offset, len)? {
                BeginWrite::Hot(g) => return Ok(g),
                BeginWrite::Wait(w) => w.wait().await,
                BeginWrite::NeedsTransaction(t) => {
                    let (meta, bitmap) = (meta.clone(), bitmap.clone());
                    return tokio::task::spawn_blocking(move || t.commit(&meta, &bitmap))
                        .await
                        .map_err(|e| AlError::Cancelled(e.to_string()))?;
                }
            }
        }
    }

    /// [`ActivityLog::acquire`] for a plain thread.
    pub fn acquire_blocking(
        self: &Arc<Self>,
        meta: &MetaFile,
        bitmap: &DirtyBitmap,
        offset: u64,
        len: u64,
    ) -> Result<AlGuard, AlError> {
        loop {
            match self.begin_write(offset, len)? {
                BeginWrite::Hot(g) => return Ok(g),
                BeginWrite::Wait(w) => futures::executor::block_on(w.wait()),
                BeginWrite::NeedsTransaction(t) => return t.commit(meta, bitmap),
            }
        }
    }

    fn release(&self, first: u32, end: u32) {
        let mut inner = self.lock();
        let mut idle = false;
        inner.writes_done += 1;
        let done = inner.writes_done;
        for e in first..end {
            if let Some(x) = inner.hot.get_mut(&e) {
                x.refs = x.refs.saturating_sub(1);
                x.last_done = done;
                idle |= x.refs == 0;
            }
        }
        if idle && inner.starved {
            inner.starved = false;
            drop(inner);
            self.notify.notify_waiters();
        }
    }
}

/// A write in progress: holds one reference on each extent it touches.
#[derive(Debug)]
pub struct AlGuard {
    al: Arc<ActivityLog>,
    first: u32,
    end: u32,
}

impl AlGuard {
    /// Extent numbers this write holds.
    pub fn extents(&self) -> std::ops::Range<u32> {
        self.first..self.end
    }
}

impl Drop for AlGuard {
    fn drop(&mut self) {
        if self.first < self.end {
            self.al.release(self.first, self.end);
        }
    }
}

/// The caller must wait before retrying `begin_write`.
pub struct AlWait(OwnedNotified);

impl AlWait {
    pub async fn wait(self) {
        self.0.await
    }
}

/// A transaction to make new extents hot. Commit it, or drop it to give up (rolled back).
#[must_use]
#[derive(Debug)]
pub struct AlTransaction {
    al: Arc<ActivityLog>,
    seq: u64,
    set: Vec<u32>,
    added: Vec<u32>,
    evicted: Vec<u32>,
    first: u32,
    end: u32,
    done: bool,
}

impl AlTransaction {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn added(&self) -> &[u32] {
        &self.added
    }
    pub fn evicted(&self) -> &[u32] {
        &self.evicted
    }

    /// Write and `fdatasync` the transaction (flushing `bitmap` first if an extent leaves the
    /// log), then hand back the guard of the write. Blocking I/O.
    pub fn commit(mut self, meta: &MetaFile, bitmap: &DirtyBitmap) -> Result<AlGuard, AlError> {
        if !self.evicted.is_empty() {
            bitmap.flush_to(meta)?;
        }
        write_record(
            meta,
            &self.al.uuid,
            self.al.extent_bytes,
            self.seq,
            &self.set,
        )?;
        let al = self.al.clone();
        {
            let mut inner = al.lock();
            for e in &self.added {
                if let Some(x) = inner.hot.get_mut(e) {
                    x.committed = true;
                }
            }
            inner.pending = false;
            inner.committed_transactions += 1;
            // The record just written is the hot set, which lacks the retired extents too.
            inner.retiring = 0;
        }
        al.notify.notify_waiters();
        self.done = true;
        Ok(AlGuard {
            al,
            first: self.first,
            end: self.end,
        })
    }
}

impl Drop for AlTransaction {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Not committed: forget the new extents, release the others. Evicted extents stay
        // out of memory; the disk may still list them, which only means more resync.
        {
            let mut inner = self.al.lock();
            for e in &self.added {
                inner.hot.remove(e);
            }
            for e in self.first..self.end {
                if let Some(x) = inner.hot.get_mut(&e) {
                    x.refs = x.refs.saturating_sub(1);
                }
            }
            inner.pending = false;
        }
        self.al.notify.notify_waiters();
    }
}

fn write_record(
    meta: &MetaFile,
    uuid: &[u8; 16],
    extent_bytes: u64,
    seq: u64,
    set: &[u32],
) -> Result<(), MetaError> {
    let layout = meta.layout();
    let used = HDR + 4 * set.len();
    let mut b =
        vec![0u8; (used as u64).div_ceil(META_BLOCK_BYTES) as usize * META_BLOCK_BYTES as usize];
    if used as u64 > layout.al_slot_bytes {
        return Err(MetaError::Invalid {
            path: meta.path().to_path_buf(),
            field: "activity-log transaction",
            value: format!(
                "{} extents do not fit a {}-byte slot",
                set.len(),
                layout.al_slot_bytes
            ),
        });
    }
    b[..8].copy_from_slice(&AL_MAGIC);
    b[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_le_bytes());
    b[OFF_UUID..OFF_UUID + 16].copy_from_slice(uuid);
    b[OFF_EXTENT_BYTES..OFF_EXTENT_BYTES + 8].copy_from_slice(&extent_bytes.to_le_bytes());
    b[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&(set.len() as u32).to_le_bytes());
    for (i, e) in set.iter().enumerate() {
        b[HDR + 4 * i..HDR + 4 * i + 4].copy_from_slice(&e.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..used]);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    let slot = seq % layout.al_slots as u64;
    meta.write_at(
        &b,
        layout.al_offset + slot * layout.al_slot_bytes,
        "write activity-log transaction",
    )?;
    meta.sync("fdatasync activity-log transaction")
}

/// The newest valid transaction in the ring: `(seq, extents)`.
fn read_newest(meta: &MetaFile) -> Result<Option<(u64, Vec<u32>)>, MetaError> {
    let layout = meta.layout();
    let sb = meta.superblock();
    let mut buf = vec![0u8; layout.al_slot_bytes as usize];
    let mut best: Option<(u64, Vec<u32>)> = None;
    for slot in 0..layout.al_slots as u64 {
        meta.read_at(
            &mut buf,
            layout.al_offset + slot * layout.al_slot_bytes,
            "read activity log",
        )?;
        let count = get_u32(&buf, OFF_COUNT) as usize;
        let sane = buf[..8] == AL_MAGIC
            && buf[OFF_UUID..OFF_UUID + 16] == sb.uuid
            && get_u64(&buf, OFF_EXTENT_BYTES) == sb.al_extent_bytes
            && count <= sb.al_extents as usize;
        if !sane {
            continue;
        }
        let used = HDR + 4 * count;
        let stored = get_u32(&buf, OFF_CRC);
        buf[OFF_CRC..OFF_CRC + 4].fill(0);
        if crc32fast::hash(&buf[..used]) != stored {
            tracing::warn!(path = %meta.path().display(), slot, seq = get_u64(&buf, OFF_SEQ),
                "activity-log transaction fails its checksum (torn write?); ignored");
            continue;
        }
        let seq = get_u64(&buf, OFF_SEQ);
        if best.as_ref().is_none_or(|(s, _)| seq > *s) {
            let set = (0..count).map(|i| get_u32(&buf, HDR + 4 * i)).collect();
            best = Some((seq, set));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::meta::NewMeta;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    const EXT: u64 = 4 * 1024 * 1024;

    fn make(dir: &Path, al_extents: u32) -> (Arc<MetaFile>, Arc<DirtyBitmap>, Arc<ActivityLog>) {
        let mut n = NewMeta::new("r0", "node-a", 64 * EXT);
        n.al_extents = al_extents;
        let meta = Arc::new(MetaFile::create(&dir.join("r0.meta"), &n).unwrap());
        meta.update(|sb| sb.flags |= flags::WAS_PRIMARY).unwrap();
        let bitmap = Arc::new(DirtyBitmap::load(&meta).unwrap());
        let (al, report) = ActivityLog::attach(&meta, &bitmap).unwrap();
        assert!(report.was_clean && !report.crashed_primary && report.replayed.is_empty());
        (meta, bitmap, al)
    }

    fn write(al: &Arc<ActivityLog>, meta: &MetaFile, bm: &DirtyBitmap, extent: u64) {
        let g = al
            .acquire_blocking(meta, bm, extent * EXT + 512, 4096)
            .unwrap();
        assert!(al.is_hot(extent as u32));
        drop(g);
    }

    fn expect_txn(b: BeginWrite) -> AlTransaction {
        match b {
            BeginWrite::NeedsTransaction(t) => t,
            BeginWrite::Hot(_) => panic!("expected a transaction, got Hot"),
            BeginWrite::Wait(_) => panic!("expected a transaction, got Wait"),
        }
    }

    #[test]
    fn crash_recovery_returns_exactly_the_hot_extents() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        for e in [0, 3, 7, 3, 63] {
            write(&al, &meta, &bm, e);
        }
        assert_eq!(al.committed_transactions(), 4);
        // kill -9: nothing is closed.
        drop((al, bm, meta));
        let meta = MetaFile::open(&dir.path().join("r0.meta")).unwrap();
        assert!(!meta.superblock().has_flag(flags::CLEAN_SHUTDOWN));
        let expected: Vec<_> = [0, 3, 7, 63].iter().map(|&e| (e * EXT, EXT)).collect();
        assert_eq!(ActivityLog::recover(&meta).unwrap(), expected);
        // Attach replays them into the bitmap, durably, and flags the crashed Primary.
        let bm = DirtyBitmap::load(&meta).unwrap();
        let (_al, report) = ActivityLog::attach(&meta, &bm).unwrap();
        assert!(!report.was_clean && report.crashed_primary);
        assert_eq!(report.replayed, expected);
        assert!(meta.superblock().has_flag(flags::CRASHED_PRIMARY));
        let on_disk = DirtyBitmap::load(&meta).unwrap();
        assert_eq!(on_disk.dirty_runs().collect::<Vec<_>>(), expected);
        assert_eq!(on_disk.dirty_bytes(), 4 * EXT);
        // The ring restarted empty: a second crash now replays nothing new.
        assert_eq!(ActivityLog::recover(&meta).unwrap(), vec![]);
    }

    /// Issue 12: an extent whose writes are all acknowledged (no write in flight, no dirty
    /// bit) leaves the persisted hot set, so a crash then resyncs nothing there; one with a
    /// dirty bit or a write in flight stays.
    #[test]
    fn acknowledged_extents_leave_the_persisted_hot_set() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 16);
        let eb = al.extent_bytes();
        for e in 0..3 {
            write(&al, &meta, &bm, e);
        }
        let busy = match al.begin_write(4 * eb, 4096).unwrap() {
            BeginWrite::NeedsTransaction(t) => t.commit(&meta, &bm).unwrap(),
            _ => panic!("a cold extent needs a transaction"),
        };
        bm.set_range(eb + 8192, 4096); // extent 1: a write not yet acknowledged
                                       // A write completed after the data disk's flush began is not retired yet.
        assert_eq!(
            al.retire_clean(&meta, &bm, al.writes_done() - 1).unwrap(),
            1,
            "extents 0 only: the write in extent 2 was not flushed"
        );
        assert!(!al.is_hot(0) && al.is_hot(2));
        assert_eq!(
            al.retire_clean(&meta, &bm, al.writes_done()).unwrap(),
            1,
            "extent 2"
        );
        assert!(!al.is_hot(0) && al.is_hot(1) && !al.is_hot(2) && al.is_hot(4));
        let mut left = ActivityLog::recover(&meta).unwrap();
        left.sort_unstable();
        assert_eq!(
            left,
            vec![(eb, eb), (4 * eb, eb)],
            "what a crash now resyncs"
        );
        drop(busy);
        bm.clear_range(eb, eb);
        assert_eq!(al.retire_clean(&meta, &bm, al.writes_done()).unwrap(), 2);
        assert_eq!(ActivityLog::recover(&meta).unwrap(), vec![]);
        assert_eq!(
            al.retire_clean(&meta, &bm, al.writes_done()).unwrap(),
            0,
            "nothing left: no transaction"
        );
        // A write into a retired extent makes it hot again with a transaction of its own.
        write(&al, &meta, &bm, 2);
        assert_eq!(ActivityLog::recover(&meta).unwrap(), vec![(2 * eb, eb)]);
    }

    #[test]
    fn clean_shutdown_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        write(&al, &meta, &bm, 5);
        let g = al.acquire_blocking(&meta, &bm, 0, 1).unwrap();
        let err = al.close_clean(&meta, &bm).unwrap_err();
        assert!(matches!(err, AlError::Busy { in_flight: 1, .. }), "{err}");
        drop(g);
        al.close_clean(&meta, &bm).unwrap();
        assert!(matches!(al.begin_write(0, 1), Err(AlError::Closed)));
        drop((al, bm, meta));
        let meta = MetaFile::open(&dir.path().join("r0.meta")).unwrap();
        assert!(meta.superblock().has_flag(flags::CLEAN_SHUTDOWN));
        assert_eq!(ActivityLog::recover(&meta).unwrap(), vec![]);
        let bm = DirtyBitmap::load(&meta).unwrap();
        let (_al, report) = ActivityLog::attach(&meta, &bm).unwrap();
        assert!(report.was_clean && !report.crashed_primary && report.replayed.is_empty());
        assert_eq!(bm.count_dirty(), 0);
    }

    #[test]
    fn torn_transaction_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        write(&al, &meta, &bm, 2);
        let t = expect_txn(al.begin_write(9 * EXT, 1).unwrap());
        let seq = t.seq();
        drop(t.commit(&meta, &bm).unwrap());
        drop(al);
        // Tear the newest record: its second entry never reached the disk.
        let l = meta.layout();
        let slot_off = l.al_offset + (seq % l.al_slots as u64) * l.al_slot_bytes;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(meta.path())
            .unwrap();
        f.write_all_at(&[0xff; 4], slot_off + HDR as u64 + 4)
            .unwrap();
        assert_eq!(ActivityLog::recover(&meta).unwrap(), vec![(2 * EXT, EXT)]);
    }

    #[test]
    fn hot_set_is_bounded_and_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        for e in 0..10 {
            write(&al, &meta, &bm, e);
        }
        write(&al, &meta, &bm, 0); // 0 is now the most recently used
        assert!(matches!(al.begin_write(0, 1).unwrap(), BeginWrite::Hot(_)));
        // A dirty block in extent 1, not yet flushed: eviction must flush it first.
        bm.set_range(EXT + 4096, 1);
        let t = expect_txn(al.begin_write(20 * EXT, 1).unwrap());
        assert_eq!((t.added(), t.evicted()), (&[20][..], &[1][..]));
        drop(t.commit(&meta, &bm).unwrap());
        assert_eq!(al.hot_count(), 10);
        assert!(!al.is_hot(1) && al.is_hot(20) && al.is_hot(0));
        assert!(DirtyBitmap::load(&meta).unwrap().is_dirty(EXT / 4096 + 1));
        drop(al);
        let mut rec: Vec<u64> = ActivityLog::recover(&meta)
            .unwrap()
            .iter()
            .map(|r| r.0 / EXT)
            .collect();
        rec.sort();
        assert_eq!(rec, vec![0, 2, 3, 4, 5, 6, 7, 8, 9, 20]);
    }

    #[test]
    fn full_hot_set_with_writes_in_flight_waits_for_an_idle_extent() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        let mut guards: Vec<_> = (0..10)
            .map(|e| al.acquire_blocking(&meta, &bm, e * EXT, 1).unwrap())
            .collect();
        let w = match al.begin_write(30 * EXT, 1).unwrap() {
            BeginWrite::Wait(w) => w,
            _ => panic!("every extent is busy: the write must wait"),
        };
        drop(guards.remove(4)); // extent 4 becomes idle
        futures::executor::block_on(w.wait());
        let t = expect_txn(al.begin_write(30 * EXT, 1).unwrap());
        assert_eq!(t.evicted(), &[4]);
        drop(t.commit(&meta, &bm).unwrap());
        assert_eq!(al.hot_count(), 10);
    }

    #[test]
    fn multi_extent_write_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        let t = expect_txn(al.begin_write(EXT - 1, 2).unwrap());
        assert_eq!(t.added(), &[0, 1]);
        drop(t); // given up: rolled back
        assert_eq!(al.hot_count(), 0);
        let g = expect_txn(al.begin_write(EXT - 1, 2).unwrap())
            .commit(&meta, &bm)
            .unwrap();
        assert_eq!(g.extents(), 0..2);
        assert!(al.is_hot(0) && al.is_hot(1));
        assert!(matches!(
            al.begin_write(64 * EXT, 1),
            Err(AlError::OutOfRange { .. })
        ));
        assert!(matches!(
            al.begin_write(0, 11 * EXT),
            Err(AlError::TooManyExtents { .. })
        ));
    }

    #[test]
    fn second_writer_into_a_pending_extent_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        let t = expect_txn(al.begin_write(0, 1).unwrap());
        let w = match al.begin_write(4096, 1).unwrap() {
            BeginWrite::Wait(w) => w,
            _ => panic!("the extent is not committed yet"),
        };
        drop(t.commit(&meta, &bm).unwrap());
        futures::executor::block_on(w.wait());
        assert!(matches!(
            al.begin_write(4096, 1).unwrap(),
            BeginWrite::Hot(_)
        ));
        assert_eq!(al.committed_transactions(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_tasks_write_one_transaction_per_new_extent() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let (meta, bm, al) = (meta.clone(), bm.clone(), al.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..40u64 {
                    let extent = (t + i) % 6;
                    let g = al
                        .acquire(&meta, &bm, extent * EXT + (i % 100) * 4096, 4096)
                        .await
                        .unwrap();
                    // The extent is on disk before the write may proceed.
                    assert!(al.is_hot(extent as u32));
                    tokio::task::yield_now().await;
                    drop(g);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(al.committed_transactions(), 6);
        assert_eq!(al.hot_count(), 6);
        drop(al);
        assert_eq!(ActivityLog::recover(&meta).unwrap().len(), 6);
    }

    #[test]
    fn concurrent_threads_with_eviction_never_lose_an_in_flight_extent() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, bm, al) = make(dir.path(), 10);
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let (meta, bm, al) = (meta.clone(), bm.clone(), al.clone());
                std::thread::spawn(move || {
                    for i in 0..60u64 {
                        let extent = (t * 7 + i * 3) % 24; // more extents than the hot set
                        let g = al.acquire_blocking(&meta, &bm, extent * EXT, 8192).unwrap();
                        assert!(al.is_hot(extent as u32));
                        assert!(al.hot_count() <= 10);
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(al.hot_count() <= 10);
        assert!(al.committed_transactions() >= 24);
    }
}
