//! On-disk files of the snapshot store: `index.json`, `cow.map`, `changed-ID.bin`.
//!
//! All writes that replace a file go through [`write_atomic`] (temp file, fsync, rename, fsync
//! of the directory), so a crash leaves either the old or the new version.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{SnapshotError, SnapshotState};

pub const INDEX_FORMAT: u32 = 1;
const MAP_MAGIC: u32 = 0x4d4c_5244; // "DRLM" little-endian
pub const MAP_RECORD_BYTES: usize = 32;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub resource: String,
    pub volume_bytes: u64,
    pub chunk_bytes: u64,
    pub next_id: u32,
    /// Oldest first: tombstones (live = false) then live snapshots.
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub id: u32,
    pub name: String,
    pub created_unix_ms: u64,
    /// false: a tombstone (deleted; only the change set is kept).
    pub live: bool,
    #[serde(flatten)]
    pub state: SnapshotState,
    /// Whether `changed-ID.bin` holds the frozen change set (false for the newest entry).
    pub frozen: bool,
}

pub fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        what,
        source,
    }
}

/// Replace `path` with `data` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
        f.write_all(data).map_err(io_err(&tmp, "writing"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path, "renaming into place"))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "fsync of the directory"))?;
    }
    Ok(())
}

pub fn load_index(path: &Path) -> Result<Option<Index>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "reading")(e)),
    };
    let idx: Index = serde_json::from_slice(&text).map_err(|e| SnapshotError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if idx.format != INDEX_FORMAT {
        return Err(SnapshotError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "format {} (this drl reads format {INDEX_FORMAT})",
                idx.format
            ),
        });
    }
    Ok(Some(idx))
}

pub fn save_index(path: &Path, idx: &Index) -> Result<(), SnapshotError> {
    let data = serde_json::to_vec_pretty(idx).expect("index serialises");
    write_atomic(path, &data)
}

/// One mapping: snapshot `snap` has chunk `chunk` preserved in COW slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRecord {
    pub snap: u32,
    pub chunk: u64,
    pub slot: u64,
}

impl MapRecord {
    pub fn encode(&self) -> [u8; MAP_RECORD_BYTES] {
        let mut b = [0u8; MAP_RECORD_BYTES];
        b[0..4].copy_from_slice(&MAP_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.snap.to_le_bytes());
        b[16..24].copy_from_slice(&self.chunk.to_le_bytes());
        b[24..32].copy_from_slice(&self.slot.to_le_bytes());
        let crc = record_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<MapRecord> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAP_MAGIC || u32_at(12) != record_crc(b) {
            return None;
        }
        Some(MapRecord {
            snap: u32_at(8),
            chunk: u64_at(16),
            slot: u64_at(24),
        })
    }
}

fn record_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..12]);
    h.update(&b[16..32]);
    h.finalize()
}

/// Read every valid record of `cow.map`. Reading stops at the first bad record: a torn append
/// at the tail is expected after a crash; the file is truncated to the valid prefix.
pub fn load_map(path: &Path) -> Result<Vec<MapRecord>, SnapshotError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(io_err(path, "reading"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(path, "opening")(e)),
    }
    let mut out = Vec::with_capacity(data.len() / MAP_RECORD_BYTES);
    for rec in data.chunks(MAP_RECORD_BYTES) {
        match (rec.len() == MAP_RECORD_BYTES)
            .then(|| MapRecord::decode(rec))
            .flatten()
        {
            Some(r) => out.push(r),
            None => {
                tracing::warn!(file = %path.display(), valid = out.len(), "ignoring a torn record at the tail of the COW map");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path, "opening"))?;
                f.set_len((out.len() * MAP_RECORD_BYTES) as u64)
                    .map_err(io_err(path, "truncating"))?;
                break;
            }
        }
    }
    Ok(out)
}

/// Rewrite `cow.map` with exactly `maps` (atomically).
pub fn rewrite_map(
    path: &Path,
    maps: &HashMap<u32, HashMap<u64, u64>>,
) -> Result<(), SnapshotError> {
    let mut data = Vec::new();
    for (&snap, m) in maps {
        for (&chunk, &slot) in m {
            data.extend_from_slice(&MapRecord { snap, chunk, slot }.encode());
        }
    }
    write_atomic(path, &data)
}

pub fn changed_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("changed-{id}.bin"))
}

pub fn save_changed(dir: &Path, id: u32, bits: &[u64]) -> Result<(), SnapshotError> {
    let mut data = Vec::with_capacity(bits.len() * 8 + 4);
    for w in bits {
        data.extend_from_slice(&w.to_le_bytes());
    }
    data.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    write_atomic(&changed_path(dir, id), &data)
}

pub fn load_changed(dir: &Path, id: u32, words: usize) -> Result<Vec<u64>, SnapshotError> {
    let path = changed_path(dir, id);
    let data = std::fs::read(&path).map_err(io_err(&path, "reading"))?;
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    if data.len() != words * 8 + 4 {
        return Err(corrupt(format!(
            "{} bytes, expected {}",
            data.len(),
            words * 8 + 4
        )));
    }
    let (body, crc) = data.split_at(words * 8);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(body
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_record_roundtrip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cow.map");
        let recs = [
            MapRecord {
                snap: 1,
                chunk: 7,
                slot: 0,
            },
            MapRecord {
                snap: 2,
                chunk: 9,
                slot: 1,
            },
        ];
        let mut data: Vec<u8> = recs.iter().flat_map(|r| r.encode()).collect();
        data.extend_from_slice(&[0xAA; 20]); // torn append
        std::fs::write(&p, &data).unwrap();
        assert_eq!(load_map(&p).unwrap(), recs);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            64,
            "torn tail truncated"
        );
    }

    #[test]
    fn flipped_bit_in_record_is_rejected() {
        let r = MapRecord {
            snap: 3,
            chunk: 11,
            slot: 5,
        }
        .encode();
        for byte in 0..MAP_RECORD_BYTES {
            let mut b = r;
            b[byte] ^= 0x10;
            assert_eq!(MapRecord::decode(&b), None, "flip in byte {byte} accepted");
        }
    }

    #[test]
    fn changed_bitmap_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        save_changed(dir.path(), 4, &[1, 0, u64::MAX]).unwrap();
        assert_eq!(
            load_changed(dir.path(), 4, 3).unwrap(),
            vec![1, 0, u64::MAX]
        );
        let p = changed_path(dir.path(), 4);
        let mut d = std::fs::read(&p).unwrap();
        d[3] ^= 1;
        std::fs::write(&p, d).unwrap();
        assert!(load_changed(dir.path(), 4, 3)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
