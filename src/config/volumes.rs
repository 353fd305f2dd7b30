//! The volumes of a resource (issue 15, consistency groups): DRBD's model, where one resource
//! holds several volumes that replicate in one write order.
//!
//! Two ways to write a resource, never mixed:
//! - one volume, as before: `size` on the resource and `disk` / `meta` / `nbd` in each
//!   `[resource.on.NODE]`; this is volume 0;
//! - a group: one `[[resource.volume]]` per volume (`number`, `size`) and, in each
//!   `[resource.on.NODE]`, `volume.N = { disk = .., meta = .., nbd = .. }` for every declared
//!   number. Numbers run 0, 1, 2, .. without gaps; every node holds exactly the declared set.
//!
//! Validation here only reads the raw structs; [`super::validate`] builds the
//! [`VolumeConfig`]s from what [`declared`] and [`paths_on`] return.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{units, ByteSize, ConfigError, Placement, RawOn, RawResource};
use crate::limits;

/// `[[resource.volume]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVolume {
    pub number: i64,
    pub size: ByteSize,
}

/// `volume.N = { .. }` in a `[resource.on.NODE]` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOnVolume {
    pub disk: PathBuf,
    pub meta: PathBuf,
    pub nbd: Option<String>,
    /// Snapshot store directory (default: the meta path with ".snap" appended).
    pub snapshot_dir: Option<PathBuf>,
}

/// The paths of one volume on one node, from either form.
#[derive(Debug, Clone, Copy)]
pub struct RawPaths<'a> {
    pub disk: &'a Path,
    pub meta: &'a Path,
    pub nbd: Option<&'a str>,
    pub snapshot_dir: Option<&'a Path>,
}

/// One volume of a resource, for this node.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// DRBD's volume number: 0, 1, .. in the resource.
    pub number: u16,
    pub size_bytes: u64,
    /// COW space for this volume's snapshots (the resource's `snapshot-space`, or a quarter of
    /// this volume's size).
    pub snapshot_space_bytes: u64,
    /// This node's files and export of the volume.
    pub local: Placement,
    /// The peer's, if the resource is replicated.
    pub peer: Option<Placement>,
}

type Invalid<'a> = &'a dyn Fn(String, String) -> ConfigError;

/// The resource's volumes as (number, size), in number order: `[(0, size)]` for the
/// one-volume form.
pub fn declared(
    r: &RawResource,
    key: &dyn Fn(&str) -> String,
    invalid: Invalid,
) -> Result<Vec<(u16, u64)>, ConfigError> {
    let list: Vec<(i64, u64)> =
        match (&r.size, r.volume.is_empty()) {
            (Some(s), true) => vec![(0, s.bytes())],
            (None, true) => return Err(invalid(
                key("size"),
                "missing: give `size` (one volume) or one [[resource.volume]] section per volume"
                    .into(),
            )),
            (Some(_), false) => {
                return Err(invalid(
                    key("size"),
                    "`size` and [[resource.volume]] sections together: with volumes, give each \
                 volume's size in its own section"
                        .into(),
                ))
            }
            (None, false) => r
                .volume
                .iter()
                .map(|v| (v.number, v.size.bytes()))
                .collect(),
        };
    if list.len() > limits::GROUP_VOLUMES_COUNT_MAX {
        return Err(invalid(
            key("volume"),
            format!(
                "{} volumes: a resource holds at most {}",
                list.len(),
                limits::GROUP_VOLUMES_COUNT_MAX
            ),
        ));
    }
    let mut by_number: BTreeMap<i64, u64> = BTreeMap::new();
    for (n, size) in &list {
        let vkey = || key(&format!("volume.{n}"));
        if *n < 0 || *n >= limits::GROUP_VOLUMES_COUNT_MAX as i64 {
            return Err(invalid(
                vkey(),
                format!(
                    "volume number {n}: must be 0 to {}",
                    limits::GROUP_VOLUMES_COUNT_MAX - 1
                ),
            ));
        }
        if by_number.insert(*n, *size).is_some() {
            return Err(invalid(vkey(), format!("volume {n} is declared twice")));
        }
        let skey = |k: &str| match r.volume.is_empty() {
            true => key(k),
            false => key(&format!("volume.{n}.{k}")),
        };
        check_size(*size, &skey, invalid)?;
    }
    let numbers: Vec<i64> = by_number.keys().copied().collect();
    if let Some(gap) = (0..numbers.len() as i64).find(|i| !by_number.contains_key(i)) {
        return Err(invalid(
            key("volume"),
            format!(
                "volume numbers must run 0, 1, 2, .. without gaps: volume {gap} is missing \
                 (declared: {numbers:?})"
            ),
        ));
    }
    Ok(by_number.into_iter().map(|(n, s)| (n as u16, s)).collect())
}

/// A volume's size: a non-zero multiple of the bitmap block, at most the maximum.
pub fn check_size(
    size: u64,
    key: &dyn Fn(&str) -> String,
    invalid: Invalid,
) -> Result<(), ConfigError> {
    if size == 0 || !size.is_multiple_of(limits::BITMAP_BLOCK_BYTES) {
        return Err(invalid(
            key("size"),
            format!(
                "{size} bytes: must be a non-zero multiple of {} bytes",
                limits::BITMAP_BLOCK_BYTES
            ),
        ));
    }
    if size > limits::VOLUME_SIZE_BYTES_MAX {
        return Err(invalid(
            key("size"),
            format!(
                "{} is larger than the maximum {}",
                units::format_bytes(size),
                units::format_bytes(limits::VOLUME_SIZE_BYTES_MAX)
            ),
        ));
    }
    Ok(())
}

/// The paths of every declared volume in `on` (the section of node `node`), in the order of
/// `declared`. `key` names keys under `resource.NAME.on.NODE`.
pub fn paths_on<'a>(
    r: &RawResource,
    on: &'a RawOn,
    declared: &[(u16, u64)],
    key: &dyn Fn(&str) -> String,
    invalid: Invalid,
) -> Result<Vec<RawPaths<'a>>, ConfigError> {
    if r.volume.is_empty() {
        if let Some(n) = on.volume.keys().next() {
            return Err(invalid(
                key(&format!("volume.{n}")),
                "per-node volumes need [[resource.volume]] sections (number, size) on the \
                 resource, and no `size`"
                    .into(),
            ));
        }
        let (Some(disk), Some(meta)) = (&on.disk, &on.meta) else {
            let k = if on.disk.is_none() { "disk" } else { "meta" };
            return Err(invalid(key(k), "missing".into()));
        };
        return Ok(vec![RawPaths {
            disk,
            meta,
            nbd: on.nbd.as_deref(),
            snapshot_dir: on.snapshot_dir.as_deref(),
        }]);
    }
    for (k, set) in [
        ("disk", on.disk.is_some()),
        ("meta", on.meta.is_some()),
        ("nbd", on.nbd.is_some()),
        ("snapshot-dir", on.snapshot_dir.is_some()),
    ] {
        if set {
            return Err(invalid(
                key(k),
                format!(
                    "a resource with [[resource.volume]] sections names its files per volume: \
                     volume.N = {{ disk = \"..\", meta = \"..\", nbd = \"..\" }}, not `{k}`"
                ),
            ));
        }
    }
    let numbers: Vec<u16> = declared.iter().map(|(n, _)| *n).collect();
    let mut given: BTreeMap<u16, &RawOnVolume> = BTreeMap::new();
    for (text, v) in &on.volume {
        let n = text
            .parse::<u16>()
            .ok()
            .filter(|n| text == &n.to_string())
            .ok_or_else(|| {
                invalid(
                    key(&format!("volume.{text}")),
                    format!("{text:?} is not a volume number"),
                )
            })?;
        if !numbers.contains(&n) {
            return Err(invalid(
                key(&format!("volume.{n}")),
                format!(
                    "volume {n} is not declared in a [[resource.volume]] section (declared: \
                     {numbers:?}); every node holds the same volumes"
                ),
            ));
        }
        given.insert(n, v);
    }
    numbers
        .iter()
        .map(|n| {
            let v = given.get(n).ok_or_else(|| {
                invalid(
                    key(&format!("volume.{n}")),
                    format!(
                        "missing: the resource declares volume {n}, and every node holds every \
                         volume (declared: {numbers:?})"
                    ),
                )
            })?;
            Ok(RawPaths {
                disk: &v.disk,
                meta: &v.meta,
                nbd: v.nbd.as_deref(),
                snapshot_dir: v.snapshot_dir.as_deref(),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
