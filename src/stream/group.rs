//! A consistency group's stream in the store (issue 15): where each volume's stream lives, the
//! group record that says the group's stream is complete, and the restore of a group into
//! files.
//!
//! A group's snapshot `S` streamed to location `L` is one ordinary stream per volume, volume
//! `v` at `L/volume-v` (own manifest, chunks and parent), and then the group record
//! `L/S/group.json` (resource, snapshot, every volume's size), written last: its presence says
//! every volume completed. Every restore of a group (into the live group, `daemon/
//! rpc_stream_group.rs`, or into files, [`restore_group_to_dir`]) reads the record first and
//! refuses a location without one (an interrupted group stream, a one-volume stream) before
//! it writes anything.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::restore::{restore_to_file, RestoreOptions};
use super::store::ObjectStore;
use super::upload::Location;
use super::{Progress, Report, StreamError};
use crate::limits::{GROUP_RECORD_BYTES_MAX, GROUP_VOLUMES_COUNT_MAX};

/// What `L/S/group.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub resource: String,
    pub snapshot: String,
    /// Every volume's size in bytes, volume 0 first.
    pub volumes: Vec<u64>,
}

/// Where volume `v` of a group streams under `loc`.
pub fn volume_location(loc: &Location, v: usize) -> Location {
    Location::new(loc.container.clone(), loc.join(&format!("volume-{v}")))
}

/// The group record's object name of `snapshot` under `loc`.
pub fn record_object(loc: &Location, snapshot: &str) -> String {
    loc.join(&format!("{snapshot}/group.json"))
}

impl GroupRecord {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a group record serializes"))
    }

    /// The record of `snapshot` under `loc`; an error (naming the object) when there is none
    /// or it is no group record of ours. Nothing has been written when this fails.
    pub async fn read<S: ObjectStore>(
        store: &S,
        loc: &Location,
        snapshot: &str,
    ) -> Result<GroupRecord, String> {
        let name = record_object(loc, snapshot);
        let text = store
            .get(&loc.container, &name, GROUP_RECORD_BYTES_MAX)
            .await
            .map_err(|e| {
                format!("{name}: no group record ({e}): not a complete stream of a consistency group, nothing restored")
            })?;
        let r: GroupRecord = serde_json::from_slice(&text)
            .map_err(|e| format!("{name}: not a group record: {e}"))?;
        if r.volumes.is_empty() || r.volumes.len() > GROUP_VOLUMES_COUNT_MAX {
            return Err(format!(
                "{name}: a group record of {} volumes (1..={GROUP_VOLUMES_COUNT_MAX} expected): nothing restored",
                r.volumes.len()
            ));
        }
        Ok(r)
    }
}

/// The file volume `v` of a group restored into `dir` goes to: `DIR/RES-v.img`.
pub fn volume_file(dir: &Path, resource: &str, v: usize) -> PathBuf {
    dir.join(format!("{resource}-{v}.img"))
}

/// Restore the group snapshot `snapshot` under `loc` into directory `dir` (created if
/// missing): the group record first, then every volume into [`volume_file`], each checked to
/// have the size the record names. Returns the files and the report over all volumes.
pub async fn restore_group_to_dir<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
    dir: &Path,
    opts: &RestoreOptions,
    progress: impl Fn(Progress),
) -> Result<(Vec<PathBuf>, Report), StreamError> {
    let record = GroupRecord::read(store, loc, snapshot)
        .await
        .map_err(StreamError::Chain)?;
    std::fs::create_dir_all(dir).map_err(|e| StreamError::io(dir.display(), "create", e))?;
    let mut total = Report::default();
    let mut files = Vec::with_capacity(record.volumes.len());
    for (v, size) in record.volumes.iter().enumerate() {
        let file = volume_file(dir, &record.resource, v);
        let r = restore_to_file(
            store,
            &volume_location(loc, v),
            snapshot,
            &file,
            opts,
            &progress,
        )
        .await?;
        let got = std::fs::metadata(&file)
            .map_err(|e| StreamError::io(file.display(), "stat", e))?
            .len();
        if got != *size {
            return Err(StreamError::Chain(format!(
                "volume {v} restored to {} is {got} bytes, the group record says {size}",
                file.display()
            )));
        }
        total.absorb(&r);
        files.push(file);
    }
    Ok((files, total))
}
