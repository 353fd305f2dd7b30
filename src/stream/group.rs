//! The store layout of a consistency group's streams (issue 15), shared by the daemon's group
//! streams and restores (`daemon::rpc_stream_group`), the plans' schedule, and `drl restore`
//! of a group into files.
//!
//! Snapshot `S` of a group streamed to location `L`: volume `v` at `L/volume-v` (an ordinary
//! stream: manifest, chunks, incremental parent), then the group record `L/S/group.json`
//! (`{resource, snapshot, volumes: [size, ..]}`), written last: its presence says every
//! volume's stream completed. A reader of a group asks for the record first and refuses a
//! location without one, so an interrupted group stream is never restored as half a group.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::restore::{restore_to_file, RestoreOptions};
use super::store::ObjectStore;
use super::upload::Location;
use super::{Progress, Report, StreamError};
use crate::limits::GROUP_RECORD_BYTES_MAX;

/// Where volume `v` of a group streams under `loc`.
pub fn volume_location(loc: &Location, v: usize) -> Location {
    Location::new(loc.container.clone(), loc.join(&format!("volume-{v}")))
}

/// The group record of `snapshot` under `loc`.
pub fn record_object(loc: &Location, snapshot: &str) -> String {
    loc.join(&format!("{snapshot}/group.json"))
}

/// The volume sizes of the group record of `snapshot` under `loc`; `None` when there is no
/// record (a one-volume stream, or an interrupted group stream: see [`incomplete`]).
pub async fn read_record<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
) -> Result<Option<Vec<u64>>, StreamError> {
    let name = record_object(loc, snapshot);
    let text = match store
        .get(&loc.container, &name, GROUP_RECORD_BYTES_MAX)
        .await
    {
        Err(StreamError::NotFound { .. }) => return Ok(None),
        r => r?,
    };
    let record: Value = serde_json::from_slice(&text)
        .map_err(|e| StreamError::Config(format!("{name}: not a group record: {e}")))?;
    let sizes: Vec<u64> = record["volumes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if sizes.is_empty() {
        return Err(StreamError::Config(format!(
            "{name}: a group record without volumes"
        )));
    }
    Ok(Some(sizes))
}

/// Whether `loc` holds volume 0 of a group stream of `snapshot` (its manifest under
/// `volume-0`): with no group record, an interrupted group stream.
pub async fn incomplete<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
) -> Result<bool, StreamError> {
    let v0 = volume_location(loc, 0);
    Ok(store
        .head(&loc.container, &v0.manifest_object(snapshot))
        .await?
        .is_some())
}

/// The file volume `v` of a group is restored into, in directory `dir`.
pub fn volume_file(dir: &Path, v: usize) -> PathBuf {
    dir.join(format!("volume-{v}.img"))
}

/// Restore a group's snapshot into files, `dir/volume-N.img` per volume, after reading its
/// record (refused without one, before anything is written). `dir` must exist.
pub async fn restore_to_dir<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
    dir: &Path,
    opts: &RestoreOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let Some(sizes) = read_record(store, loc, snapshot).await? else {
        return Err(StreamError::Config(format!(
            "{}: no group record: not a complete stream of a consistency group, nothing restored",
            record_object(loc, snapshot)
        )));
    };
    if !dir.is_dir() {
        return Err(StreamError::Config(format!(
            "{}: not a directory (a group of {} volumes restores into DIR/volume-N.img)",
            dir.display(),
            sizes.len()
        )));
    }
    let mut total = Report::default();
    for v in 0..sizes.len() {
        let r = restore_to_file(
            store,
            &volume_location(loc, v),
            snapshot,
            &volume_file(dir, v),
            opts,
            &progress,
        )
        .await?;
        total.absorb(&r);
    }
    Ok(total)
}
