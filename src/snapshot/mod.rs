//! Point-in-time snapshots of a resource: copy-on-write, crash-safe, with change tracking.
//!
//! # Model
//! A resource's snapshots form a chain, oldest first. Only the *newest* snapshot preserves
//! data: before a write (or trim, or zeroing) touches a COW chunk (64 KiB by default) that the
//! newest snapshot has not preserved yet, the chunk's old contents are copied into the resource's
//! COW store and the mapping is recorded. An older snapshot S_k that lacks chunk C sees C as the
//! first later snapshot that has it, or as the live disk: S_k lacking C means C was not written
//! between S_k and the next snapshot, so the next snapshot's view of C is S_k's view too.
//!
//! - Creation waits for in-flight writes to finish and holds new ones back (the write gate), so
//!   a snapshot is taken between two writes: crash-consistent, and every write acknowledged
//!   before `create` returns is in it.
//! - Preservation is durable before the overwrite reaches the disk (COW data fdatasync'd, then
//!   the map record fdatasync'd), so snapshots survive kill -9 and power loss.
//! - Space is bounded (`snapshot-space`): when the COW store is full, every snapshot of the
//!   resource is marked invalid with the reason, its space is freed and writes go on — a write is
//!   never failed or lost to keep a snapshot.
//! - Deleting S_j hands its preserved chunks to S_{j-1} where S_{j-1} lacks them (so S_{j-1}
//!   keeps resolving), and merges its change set into S_{j-1}'s.
//!
//! # Change tracking
//! Each entry of the chain keeps the set of chunks written between it and the next entry
//! (frozen when the next snapshot is created). The chunks changed between a parent and a child
//! snapshot are the union over the entries from the parent up to the child. Deleting the oldest
//! snapshot keeps a *tombstone* (name and change set, no data) so that an incremental stream can
//! still use it as parent after the local copy is gone (bounded count).
//!
//! # Files (in the snapshot directory, default `<meta>.snap/`)
//! - `index.json`: chain entries, states, geometry; replaced atomically (write, fsync, rename).
//! - `cow.img`: the preserved chunks, one slot each.
//! - `cow.map`: append-only 32-byte records (snapshot id, chunk, slot, crc32); a torn tail record
//!   is ignored; rewritten whole on delete.
//! - `changed-ID.bin`: the frozen change set of entry ID (a bitmap, one bit per chunk).

mod device;
mod persist;
mod store;

pub use device::SnapshotDevice;
pub use store::{ChangeSet, SnapshotStore, SnapshotStoreConfig};

use serde::Serialize;

/// The state of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum SnapshotState {
    Valid,
    Invalid(String),
}

/// What `drl snapshot list` shows.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub id: u32,
    pub created_unix_ms: u64,
    #[serde(flatten)]
    pub state: SnapshotState,
    /// Bytes of COW space this snapshot holds.
    pub preserved_bytes: u64,
    /// Bytes changed on the volume between this snapshot and the next (or now, for the newest).
    pub changed_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("resource {resource}: snapshot {name:?} already exists")]
    Exists { resource: String, name: String },
    #[error("resource {resource}: no snapshot named {name:?}")]
    NotFound { resource: String, name: String },
    #[error("resource {resource}: snapshot {name:?} is invalid: {reason}")]
    Invalid {
        resource: String,
        name: String,
        reason: String,
    },
    #[error("resource {resource}: {max} snapshots exist; delete one first")]
    TooMany { resource: String, max: usize },
    #[error("snapshot name {0:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not first)")]
    BadName(String),
    #[error("snapshot store {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot store {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("reading the volume: {0}")]
    Volume(#[from] crate::volume::VolumeError),
    #[error("{parent:?} is not an older snapshot of {child:?} in this resource's chain")]
    NotAncestor { parent: String, child: String },
    #[error("resource {resource} has {entries} snapshot entries (snapshots or tombstones): a volume with snapshots is not resized; delete them first")]
    HasSnapshots { resource: String, entries: usize },
}

#[cfg(test)]
mod tests;
