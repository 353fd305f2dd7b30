//! The snapshot store of one resource: the write-path hook, create / delete / list, reads of a
//! snapshot, and change sets between snapshots. See the module doc of `snapshot` for the model.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, RwLock, RwLockReadGuard};
use tracing::{info, warn};

use super::persist::{self, io_err, Entry, Index, MapRecord};
use super::{SnapshotError, SnapshotInfo, SnapshotState};
use crate::limits;
use crate::volume::{check_range, AlignedBuf, BlockDevice, VolumeError};

#[derive(Clone, Debug)]
pub struct SnapshotStoreConfig {
    pub dir: PathBuf,
    pub resource: String,
    pub volume_bytes: u64,
    pub chunk_bytes: u64,
    /// COW space: at most this many bytes of preserved chunks.
    pub space_bytes: u64,
}

/// A set of changed chunks (one bit per snapshot chunk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub chunk_bytes: u64,
    pub volume_bytes: u64,
    pub bits: Vec<u64>,
}

impl ChangeSet {
    fn empty(chunk_bytes: u64, volume_bytes: u64) -> Self {
        let chunks = volume_bytes.div_ceil(chunk_bytes);
        ChangeSet {
            chunk_bytes,
            volume_bytes,
            bits: vec![0; chunks.div_ceil(64) as usize],
        }
    }

    fn full(chunk_bytes: u64, volume_bytes: u64) -> Self {
        let mut s = Self::empty(chunk_bytes, volume_bytes);
        for c in 0..volume_bytes.div_ceil(chunk_bytes) {
            s.set(c);
        }
        s
    }

    fn set(&mut self, chunk: u64) {
        // A chunk past the end (a write that raced a shrink; the disk refuses it) is ignored.
        if let Some(w) = self.bits.get_mut((chunk / 64) as usize) {
            *w |= 1 << (chunk % 64);
        }
    }

    pub fn is_set(&self, chunk: u64) -> bool {
        self.bits
            .get((chunk / 64) as usize)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    fn union(&mut self, other: &ChangeSet) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// Whether any byte of [offset, offset+len) lies in a changed chunk.
    pub fn changed(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / self.chunk_bytes;
        let last = (offset + len - 1) / self.chunk_bytes;
        (first..=last).any(|c| self.is_set(c))
    }

    pub fn changed_bytes(&self) -> u64 {
        let n: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        (n * self.chunk_bytes).min(self.volume_bytes)
    }
}

struct State {
    index: Index,
    /// Live snapshot id -> (chunk -> COW slot).
    maps: HashMap<u32, HashMap<u64, u64>>,
    /// Change set of every entry but the newest (frozen when the next one was created).
    frozen: HashMap<u32, ChangeSet>,
    free_slots: Vec<u64>,
    slots_used_hwm: u64,
    slots_max: u64,
}

impl State {
    /// The snapshot that preserves data: the newest live, valid one.
    fn target(&self) -> Option<u32> {
        self.index
            .entries
            .iter()
            .rev()
            .find(|e| e.live && e.state == SnapshotState::Valid)
            .map(|e| e.id)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.index.entries.iter().position(|e| e.name == name)
    }

    /// Where chunk `c` of snapshot at position `pos` lives: a COW slot, or the disk (None).
    fn resolve(&self, pos: usize, c: u64) -> Option<u64> {
        self.index.entries[pos..]
            .iter()
            .filter(|e| e.live && e.state == SnapshotState::Valid)
            .find_map(|e| self.maps.get(&e.id).and_then(|m| m.get(&c)).copied())
    }

    fn alloc_slot(&mut self) -> Option<u64> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        (self.slots_used_hwm < self.slots_max).then(|| {
            self.slots_used_hwm += 1;
            self.slots_used_hwm - 1
        })
    }

    /// The change set of entry `e`: frozen, or `current` for the newest entry.
    fn set_of<'a>(&'a self, e: &Entry, current: &'a ChangeSet) -> &'a ChangeSet {
        self.frozen.get(&e.id).unwrap_or(current)
    }
}

/// The snapshot store of one resource over its device `D`.
pub struct SnapshotStore<D: BlockDevice> {
    cfg: SnapshotStoreConfig,
    dev: Arc<D>,
    /// Writes hold it shared for their whole duration; `create` holds it exclusively.
    gate: RwLock<()>,
    /// Serialises preservation (copy-out) so a chunk is never copied twice.
    preserve: AsyncMutex<()>,
    state: RwLock<State>,
    cow: Arc<File>,
    map_file: Mutex<File>,
    /// Change set of the newest entry: chunks written since it was created. A plain mutex,
    /// never held across an await, so marking a write never waits for a snapshot reader.
    current: Mutex<ChangeSet>,
    /// The volume's size: `cfg.volume_bytes` at open, then what [`SnapshotStore::resize`] set.
    volume_bytes: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn check_name(name: &str) -> Result<(), SnapshotError> {
    let ok = !name.is_empty()
        && name.len() <= limits::NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadName(name.to_owned()))
    }
}

impl<D: BlockDevice> SnapshotStore<D> {
    /// Open (or create) the store in `cfg.dir`. `clean` tells whether the resource was shut down
    /// cleanly last time; after a crash the change set of the newest entry is rebuilt
    /// conservatively (see `snapshot` module doc).
    pub fn open(cfg: SnapshotStoreConfig, dev: Arc<D>) -> Result<Self, SnapshotError> {
        assert!(
            cfg.chunk_bytes.is_power_of_two() && cfg.chunk_bytes >= 4096,
            "chunk size checked by config"
        );
        std::fs::create_dir_all(&cfg.dir)
            .map_err(io_err(&cfg.dir, "creating the snapshot directory"))?;
        let index_path = cfg.dir.join("index.json");
        let index = match persist::load_index(&index_path)? {
            Some(mut i) => {
                // An index without entries holds nothing sized for the volume: it follows the
                // volume (a `drl resize` interrupted between the index and the metadata).
                if i.entries.is_empty() && i.volume_bytes != cfg.volume_bytes {
                    i.volume_bytes = cfg.volume_bytes;
                    persist::save_index(&index_path, &i)?;
                }
                if i.resource != cfg.resource
                    || i.volume_bytes != cfg.volume_bytes
                    || i.chunk_bytes != cfg.chunk_bytes
                {
                    return Err(SnapshotError::Corrupt {
                        path: index_path.display().to_string(),
                        reason: format!(
                            "belongs to resource {} of {} bytes with {}-byte chunks, not {} of {} bytes with {}-byte chunks",
                            i.resource, i.volume_bytes, i.chunk_bytes, cfg.resource, cfg.volume_bytes, cfg.chunk_bytes
                        ),
                    });
                }
                i
            }
            None => {
                let i = Index {
                    format: persist::INDEX_FORMAT,
                    resource: cfg.resource.clone(),
                    volume_bytes: cfg.volume_bytes,
                    chunk_bytes: cfg.chunk_bytes,
                    next_id: 1,
                    entries: vec![],
                };
                persist::save_index(&index_path, &i)?;
                i
            }
        };
        let cow_path = cfg.dir.join("cow.img");
        let cow = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cow_path)
            .map_err(io_err(&cow_path, "opening"))?;
        let map_path = cfg.dir.join("cow.map");
        let records = persist::load_map(&map_path)?;
        let map_file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&map_path)
            .map_err(io_err(&map_path, "opening"))?;

        let live: Vec<u32> = index
            .entries
            .iter()
            .filter(|e| e.live && e.state == SnapshotState::Valid)
            .map(|e| e.id)
            .collect();
        let mut maps: HashMap<u32, HashMap<u64, u64>> =
            live.iter().map(|&id| (id, HashMap::new())).collect();
        let slots_max = cfg.space_bytes / cfg.chunk_bytes;
        let mut used = vec![false; slots_max as usize];
        for r in records {
            if let Some(m) = maps.get_mut(&r.snap) {
                if r.slot < slots_max {
                    m.insert(r.chunk, r.slot);
                    used[r.slot as usize] = true;
                }
            }
        }
        let hwm = used.iter().rposition(|&u| u).map_or(0, |p| p as u64 + 1);
        let free_slots = (0..hwm).filter(|&s| !used[s as usize]).rev().collect();

        let words = cfg.volume_bytes.div_ceil(cfg.chunk_bytes).div_ceil(64) as usize;
        let mut frozen = HashMap::new();
        for e in index.entries.iter().filter(|e| e.frozen) {
            let bits = persist::load_changed(&cfg.dir, e.id, words)?;
            frozen.insert(
                e.id,
                ChangeSet {
                    chunk_bytes: cfg.chunk_bytes,
                    volume_bytes: cfg.volume_bytes,
                    bits,
                },
            );
        }
        // Entry id 0 is never used by a snapshot: changed-0.bin is the clean-shutdown record of
        // the newest entry's change set.
        let current = match persist::load_changed(&cfg.dir, 0, words) {
            Ok(bits) => ChangeSet {
                chunk_bytes: cfg.chunk_bytes,
                volume_bytes: cfg.volume_bytes,
                bits,
            },
            Err(_) => {
                // No clean-shutdown record: rebuild. The newest live valid snapshot's COW map
                // holds exactly the chunks written since it was created (preservation is durable
                // before each overwrite). Otherwise nothing tracked the writes: assume all changed.
                let mut s = ChangeSet::empty(cfg.chunk_bytes, cfg.volume_bytes);
                match index.entries.last() {
                    None => {}
                    Some(e) if e.live && e.state == SnapshotState::Valid => {
                        for &c in maps[&e.id].keys() {
                            s.set(c);
                        }
                    }
                    Some(e) => {
                        warn!(resource = %cfg.resource, entry = %e.name, "changes since the last snapshot were not recorded (unclean shutdown): the next incremental from it covers the whole volume");
                        s = ChangeSet::full(cfg.chunk_bytes, cfg.volume_bytes);
                    }
                }
                s
            }
        };
        // The clean-shutdown record is only good once: a later crash must not trust it.
        let _ = std::fs::remove_file(persist::changed_path(&cfg.dir, 0));

        let state = State {
            index,
            maps,
            frozen,
            free_slots,
            slots_used_hwm: hwm,
            slots_max,
        };
        Ok(SnapshotStore {
            volume_bytes: std::sync::atomic::AtomicU64::new(cfg.volume_bytes),
            cfg,
            dev,
            gate: RwLock::new(()),
            preserve: AsyncMutex::new(()),
            state: RwLock::new(state),
            cow: Arc::new(cow),
            map_file: Mutex::new(map_file),
            current: Mutex::new(current),
        })
    }

    pub fn volume_bytes(&self) -> u64 {
        self.volume_bytes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stop writes: every write in flight finishes, new ones wait until the guard drops
    /// (`drl resize` changes the volume's size behind it).
    pub async fn pause_writes(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// The volume's size changed (`drl resize`, writes paused by the caller). Only a store
    /// without snapshots follows: a snapshot's change sets, COW map and streams are sized for
    /// the volume it was taken of, so a resource with snapshots is refused (delete them, or
    /// stream them away first).
    pub async fn resize(
        &self,
        volume_bytes: u64,
        _paused: &tokio::sync::RwLockWriteGuard<'_, ()>,
    ) -> Result<(), SnapshotError> {
        let mut st = self.state.write().await;
        if !st.index.entries.is_empty() {
            return Err(SnapshotError::HasSnapshots {
                resource: self.cfg.resource.clone(),
                entries: st.index.entries.len(),
            });
        }
        st.index.volume_bytes = volume_bytes;
        persist::save_index(&self.cfg.dir.join("index.json"), &st.index)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            ChangeSet::empty(self.cfg.chunk_bytes, volume_bytes);
        self.volume_bytes
            .store(volume_bytes, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.cfg.chunk_bytes
    }

    pub fn device(&self) -> &Arc<D> {
        &self.dev
    }

    /// Call before writing, trimming or zeroing [offset, offset+len) of the volume; keep the
    /// returned guard until the disk operation completed. Records the change and preserves the
    /// old contents for the newest snapshot. Never fails a write because of snapshot space:
    /// exhaustion invalidates the snapshots instead.
    pub async fn begin_write(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<RwLockReadGuard<'_, ()>, VolumeError> {
        let gate = self.gate.read().await;
        if len == 0 {
            return Ok(gate);
        }
        let cb = self.cfg.chunk_bytes;
        let (first, last) = (offset / cb, (offset + len - 1) / cb);
        {
            let st = self.state.read().await;
            let preserved = match st.target() {
                None => true,
                Some(t) => (first..=last).all(|c| st.maps[&t].contains_key(&c)),
            };
            if preserved {
                drop(st);
                self.mark_changed(first, last);
                return Ok(gate);
            }
        }
        self.preserve_range(first, last).await?;
        self.mark_changed(first, last);
        Ok(gate)
    }

    fn mark_changed(&self, first: u64, last: u64) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for c in first..=last {
            cur.set(c);
        }
    }

    async fn preserve_range(&self, first: u64, last: u64) -> Result<(), VolumeError> {
        let _p = self.preserve.lock().await;
        let (target, todo) = {
            let st = self.state.read().await;
            let Some(t) = st.target() else { return Ok(()) };
            (
                t,
                (first..=last)
                    .filter(|c| !st.maps[&t].contains_key(c))
                    .collect::<Vec<_>>(),
            )
        };
        if todo.is_empty() {
            return Ok(());
        }
        let mut slots = Vec::with_capacity(todo.len());
        {
            let mut st = self.state.write().await;
            for _ in &todo {
                match st.alloc_slot() {
                    Some(s) => slots.push(s),
                    None => {
                        st.free_slots.append(&mut slots);
                        drop(st);
                        self.invalidate_all(&format!(
                            "COW space of {} exhausted",
                            crate::units::format_bytes(self.cfg.space_bytes)
                        ))
                        .await;
                        return Ok(());
                    }
                }
            }
        }
        let cb = self.cfg.chunk_bytes;
        for (&c, &slot) in todo.iter().zip(&slots) {
            let off = c * cb;
            let len = cb.min(self.volume_bytes().saturating_sub(off));
            let old = self.dev.read(off, len as u32).await?;
            let cow = self.cow.clone();
            let name = self.cfg.resource.clone();
            tokio::task::spawn_blocking(move || cow.write_all_at(&old, slot * cb))
                .await
                .map_err(|e| VolumeError::Invalid(format!("COW copy task: {e}")))?
                .map_err(|source| VolumeError::Io {
                    name,
                    what: "snapshot COW copy",
                    source,
                })?;
        }
        let records: Vec<u8> = todo
            .iter()
            .zip(&slots)
            .flat_map(|(&chunk, &slot)| {
                MapRecord {
                    snap: target,
                    chunk,
                    slot,
                }
                .encode()
            })
            .collect();
        let cow = self.cow.clone();
        let map = self
            .map_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_clone();
        let name = self.cfg.resource.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            cow.sync_data()?;
            let mut map = map?;
            map.write_all(&records)?;
            map.sync_data()
        })
        .await
        .map_err(|e| VolumeError::Invalid(format!("COW sync task: {e}")))?
        .map_err(|source| VolumeError::Io {
            name,
            what: "snapshot COW map",
            source,
        })?;
        let mut st = self.state.write().await;
        if let Some(m) = st.maps.get_mut(&target) {
            for (&c, &s) in todo.iter().zip(&slots) {
                m.insert(c, s);
            }
        }
        Ok(())
    }

    async fn invalidate_all(&self, reason: &str) {
        let mut st = self.state.write().await;
        warn!(resource = %self.cfg.resource, reason, "invalidating every snapshot of the resource; writes continue");
        for e in st.index.entries.iter_mut().filter(|e| e.live) {
            e.state = SnapshotState::Invalid(reason.to_owned());
        }
        st.maps.clear();
        st.free_slots.clear();
        st.slots_used_hwm = 0;
        if let Err(e) = self.persist(&st) {
            warn!(resource = %self.cfg.resource, "saving the snapshot index after invalidation: {e}");
        }
    }

    fn persist(&self, st: &State) -> Result<(), SnapshotError> {
        persist::rewrite_map(&self.cfg.dir.join("cow.map"), &st.maps)?;
        // Reopen the append handle: the rename replaced the file.
        let map_path = self.cfg.dir.join("cow.map");
        let f = OpenOptions::new()
            .append(true)
            .open(&map_path)
            .map_err(io_err(&map_path, "reopening"))?;
        *self.map_file.lock().unwrap_or_else(|p| p.into_inner()) = f;
        persist::save_index(&self.cfg.dir.join("index.json"), &st.index)
    }

    /// Take a snapshot now: waits for in-flight writes, holds new ones back meanwhile.
    pub async fn create(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        let _gate = self.gate.write().await;
        self.create_paused(name).await
    }

    /// Whether a snapshot `name` could be created now (its name valid and free, room for one
    /// more): a consistency group checks every volume before it creates any.
    pub async fn check_create(&self, name: &str) -> Result<(), SnapshotError> {
        check_name(name)?;
        let st = self.state.read().await;
        self.check_create_in(&st, name)
    }

    fn check_create_in(&self, st: &State, name: &str) -> Result<(), SnapshotError> {
        if st.index.entries.iter().any(|e| e.name == name) {
            return Err(SnapshotError::Exists {
                resource: self.cfg.resource.clone(),
                name: name.into(),
            });
        }
        let live = st.index.entries.iter().filter(|e| e.live).count();
        if live >= limits::SNAPSHOTS_PER_RESOURCE_MAX {
            return Err(SnapshotError::TooMany {
                resource: self.cfg.resource.clone(),
                max: limits::SNAPSHOTS_PER_RESOURCE_MAX,
            });
        }
        Ok(())
    }

    /// [`Self::create`] while the caller holds [`Self::pause_writes`]'s guard (a consistency
    /// group pauses all its volumes first, then takes each volume's snapshot).
    pub async fn create_paused(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        check_name(name)?;
        let mut st = self.state.write().await;
        self.check_create_in(&st, name)?;
        // No write is in flight (gate held), so the change set is complete. It belongs to the
        // previous entry; with no previous entry, changes before the first snapshot matter to
        // no incremental and are dropped.
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(newest) = st.index.entries.last().map(|e| e.id) {
            persist::save_changed(&self.cfg.dir, newest, &cur.bits)?;
            st.frozen.insert(newest, cur);
            st.index.entries.last_mut().expect("newest").frozen = true;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            ChangeSet::empty(self.cfg.chunk_bytes, self.volume_bytes());
        let id = st.index.next_id;
        st.index.next_id += 1;
        st.index.entries.push(Entry {
            id,
            name: name.into(),
            created_unix_ms: now_ms(),
            live: true,
            state: SnapshotState::Valid,
            frozen: false,
        });
        st.maps.insert(id, HashMap::new());
        persist::save_index(&self.cfg.dir.join("index.json"), &st.index)?;
        info!(resource = %self.cfg.resource, snapshot = name, id, "snapshot created");
        Ok(self.info(&st, st.index.entries.len() - 1))
    }

    /// Delete a snapshot: its data goes, its change set stays as a tombstone (so it can still be
    /// the parent of an incremental stream), its preserved chunks go to the next older live
    /// snapshot that lacks them.
    pub async fn delete(&self, name: &str) -> Result<(), SnapshotError> {
        let _p = self.preserve.lock().await;
        let mut st = self.state.write().await;
        let pos = st
            .position(name)
            .filter(|&p| st.index.entries[p].live)
            .ok_or_else(|| SnapshotError::NotFound {
                resource: self.cfg.resource.clone(),
                name: name.into(),
            })?;
        let id = st.index.entries[pos].id;
        let map = st.maps.remove(&id).unwrap_or_default();
        let heir = st.index.entries[..pos]
            .iter()
            .rev()
            .find(|e| e.live && e.state == SnapshotState::Valid)
            .map(|e| e.id);
        let mut freed = Vec::new();
        match heir.and_then(|h| st.maps.get_mut(&h).map(|m| (h, m))) {
            Some((_, hm)) => {
                for (c, s) in map {
                    if let std::collections::hash_map::Entry::Vacant(v) = hm.entry(c) {
                        v.insert(s);
                    } else {
                        freed.push(s);
                    }
                }
            }
            None => freed.extend(map.into_values()),
        }
        st.free_slots.extend(freed);
        let e = &mut st.index.entries[pos];
        e.live = false;
        e.state = SnapshotState::Valid;
        // Bound the tombstones: drop the oldest, folding its change set into the next entry's.
        while st.index.entries.iter().filter(|e| !e.live).count() > limits::SNAPSHOT_TOMBSTONES_MAX
        {
            let p = st
                .index
                .entries
                .iter()
                .position(|e| !e.live)
                .expect("a tombstone");
            let gone = st.index.entries.remove(p);
            if p > 0 {
                let prev = st.index.entries[p - 1].id;
                if let Some(set) = st.frozen.remove(&gone.id) {
                    if let Some(ps) = st.frozen.get_mut(&prev) {
                        ps.union(&set);
                    }
                }
            }
            let _ = std::fs::remove_file(persist::changed_path(&self.cfg.dir, gone.id));
        }
        self.persist(&st)?;
        info!(resource = %self.cfg.resource, snapshot = name, "snapshot deleted (kept as a change-set tombstone)");
        Ok(())
    }

    pub async fn list(&self) -> Vec<SnapshotInfo> {
        let st = self.state.read().await;
        (0..st.index.entries.len())
            .filter(|&p| st.index.entries[p].live)
            .map(|p| self.info(&st, p))
            .collect()
    }

    fn info(&self, st: &State, pos: usize) -> SnapshotInfo {
        let e = &st.index.entries[pos];
        SnapshotInfo {
            name: e.name.clone(),
            id: e.id,
            created_unix_ms: e.created_unix_ms,
            state: e.state.clone(),
            preserved_bytes: st
                .maps
                .get(&e.id)
                .map_or(0, |m| m.len() as u64 * self.cfg.chunk_bytes),
            changed_bytes: st
                .set_of(e, &self.current.lock().unwrap_or_else(|p| p.into_inner()))
                .changed_bytes(),
        }
    }

    /// Names of the entries, oldest first, with whether each is live (false: tombstone).
    pub async fn chain(&self) -> Vec<(String, bool)> {
        self.state
            .read()
            .await
            .index
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.live))
            .collect()
    }

    /// Chunks changed between `parent` (a snapshot or tombstone) and the live snapshot `child`.
    pub async fn changed_between(
        &self,
        parent: &str,
        child: &str,
    ) -> Result<ChangeSet, SnapshotError> {
        let st = self.state.read().await;
        let not_found = |n: &str| SnapshotError::NotFound {
            resource: self.cfg.resource.clone(),
            name: n.into(),
        };
        let c = st
            .position(child)
            .filter(|&p| st.index.entries[p].live)
            .ok_or_else(|| not_found(child))?;
        let p = st.position(parent).ok_or_else(|| not_found(parent))?;
        if p >= c {
            return Err(SnapshotError::NotAncestor {
                parent: parent.into(),
                child: child.into(),
            });
        }
        let mut out = ChangeSet::empty(self.cfg.chunk_bytes, self.volume_bytes());
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for e in &st.index.entries[p..c] {
            out.union(st.set_of(e, &cur));
        }
        Ok(out)
    }

    /// Read [offset, offset+len) of snapshot `name` as it was when the snapshot was taken.
    ///
    /// No lock is held while the data is read: a reader that is not polled for a while (a
    /// stream whose uploads wait for the shaper) must not hold up the application's writes,
    /// which need the state lock exclusively to preserve a chunk. Instead, where each chunk
    /// lives (the disk, or a COW slot) is planned under the shared lock, read without it, and
    /// checked again after: preservation publishes a chunk's slot before the chunk is
    /// overwritten, so a chunk that still resolves the same way was not overwritten during our
    /// disk read. A chunk preserved in between makes the read start over (it then resolves
    /// to its slot, so at most once per chunk).
    pub async fn read(&self, name: &str, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        check_range(offset, u64::from(len), self.volume_bytes())?;
        if len == 0 {
            // Nothing to read, but the snapshot must still exist and be valid.
            self.plan_read(name, 0, 0).await?;
            return Ok(AlignedBuf::zeroed(0));
        }
        let cb = self.cfg.chunk_bytes;
        let end = offset + u64::from(len);
        let (first, last) = (offset / cb, (end - 1) / cb);
        loop {
            let plan = self.plan_read(name, first, last).await?;
            let data = self.read_planned(&plan, offset, end).await?;
            if self.plan_read(name, first, last).await? == plan {
                return Ok(data);
            }
        }
    }

    /// Where each chunk of `first..=last` of snapshot `name` lives now (None: on the disk).
    async fn plan_read(
        &self,
        name: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<Option<u64>>, VolumeError> {
        let st = self.state.read().await;
        let pos = st
            .position(name)
            .filter(|&p| st.index.entries[p].live)
            .ok_or_else(|| VolumeError::Invalid(format!("no snapshot {name:?}")))?;
        if let SnapshotState::Invalid(reason) = &st.index.entries[pos].state {
            return Err(VolumeError::Io {
                name: format!("{}@{name}", self.cfg.resource),
                what: "reading an invalid snapshot",
                source: std::io::Error::other(reason.clone()),
            });
        }
        Ok((first..=last).map(|c| st.resolve(pos, c)).collect())
    }

    /// Read [offset, end) following `plan` (one entry per chunk from `offset`'s chunk on).
    async fn read_planned(
        &self,
        plan: &[Option<u64>],
        offset: u64,
        end: u64,
    ) -> Result<AlignedBuf, VolumeError> {
        let cb = self.cfg.chunk_bytes;
        let first = offset / cb;
        let slot_of = |c: u64| plan[(c - first) as usize];
        if plan.iter().all(Option::is_none) {
            // Nothing preserved in the range (the common case for a stream): the disk's
            // buffer as it comes, no second buffer and no copy.
            return self.dev.read(offset, (end - offset) as u32).await;
        }
        let mut out = AlignedBuf::zeroed((end - offset) as usize);
        let mut pos_b = offset;
        while pos_b < end {
            let c = pos_b / cb;
            let piece_end = ((c + 1) * cb).min(end);
            let dst = (pos_b - offset) as usize..(piece_end - offset) as usize;
            match slot_of(c) {
                Some(slot) => {
                    let cow = self.cow.clone();
                    let at = slot * cb + (pos_b - c * cb);
                    let n = (piece_end - pos_b) as usize;
                    let data = tokio::task::spawn_blocking(move || {
                        let mut b = vec![0u8; n];
                        cow.read_exact_at(&mut b, at).map(|_| b)
                    })
                    .await
                    .map_err(|e| VolumeError::Invalid(format!("COW read task: {e}")))?
                    .map_err(|source| VolumeError::Io {
                        name: self.cfg.resource.clone(),
                        what: "snapshot COW read",
                        source,
                    })?;
                    out[dst].copy_from_slice(&data);
                }
                None => {
                    // Extend over following chunks that also live on the disk: one read.
                    let mut run_end = piece_end;
                    while run_end < end && slot_of(run_end / cb).is_none() {
                        run_end = (run_end + cb).min(end);
                    }
                    let data = self.dev.read(pos_b, (run_end - pos_b) as u32).await?;
                    out[(pos_b - offset) as usize..(run_end - offset) as usize]
                        .copy_from_slice(&data);
                    pos_b = run_end;
                    continue;
                }
            }
            pos_b = piece_end;
        }
        Ok(out)
    }

    /// Persist the change set of the newest entry (clean shutdown).
    pub async fn close(&self) -> Result<(), SnapshotError> {
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        persist::save_changed(&self.cfg.dir, 0, &cur.bits)
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}
