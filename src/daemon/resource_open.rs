//! Opening a resource's volumes: each volume's disk, metadata (created for a new resource,
//! refused when corrupt or another resource's), bitmap and activity log when replicated,
//! snapshot store and write pipeline. A one-volume resource opens volume 0 only; a group opens
//! every volume alike.

use std::sync::Arc;

use tracing::{info, warn};

use super::{Attached, Opened, ResourceError};
use crate::config::ResourceConfig;
use crate::limits;
use crate::pipeline::WritePipeline;
use crate::snapshot::{SnapshotStore, SnapshotStoreConfig};
use crate::volume::activity_log::ActivityLog;
use crate::volume::bitmap::DirtyBitmap;
use crate::volume::claim::{Claim, Plan};
use crate::volume::disk::Disk;
use crate::volume::meta::{flags, DiskState, MetaFile, NewMeta, Role};

/// Volume `number`'s files of a resource, for its disk, metadata and snapshot store.
struct VolumeFiles<'a> {
    /// "db" for volume 0 (a one-volume resource keeps its name), "db/1" for volume 1.
    label: String,
    size_bytes: u64,
    disk: &'a std::path::Path,
    meta: &'a std::path::Path,
    snapshot_dir: &'a std::path::Path,
    snapshot_space_bytes: u64,
}

fn volume_files(cfg: &ResourceConfig, number: u16) -> VolumeFiles<'_> {
    let v = &cfg.volumes[usize::from(number)];
    match number {
        0 => VolumeFiles {
            label: cfg.name.clone(),
            size_bytes: cfg.size_bytes,
            disk: &cfg.local.disk,
            meta: &cfg.local.meta,
            snapshot_dir: &cfg.local.snapshot_dir,
            snapshot_space_bytes: cfg.snapshot_space_bytes,
        },
        n => VolumeFiles {
            label: format!("{}/{n}", cfg.name),
            size_bytes: v.size_bytes,
            disk: &v.local.disk,
            meta: &v.local.meta,
            snapshot_dir: &v.local.snapshot_dir,
            snapshot_space_bytes: v.snapshot_space_bytes,
        },
    }
}

/// Open one volume: its disk (creating a missing file sparse), its metadata (creating a
/// missing one, refusing a corrupt one, attaching bitmap and activity log when replicated),
/// its snapshot store and write pipeline.
pub(super) async fn open_volume(
    cfg: &ResourceConfig,
    number: u16,
    node: &str,
    plan: &Plan,
    claim: &mut Claim,
) -> Result<Opened, ResourceError> {
    let f = volume_files(cfg, number);
    if plan.create_meta {
        warn!(resource = %f.label, meta = %f.meta.display(),
            "NO METADATA FOUND: creating new metadata, this node starts {} (if the resource existed here, the meta path is wrong: stop now)",
            if cfg.peer.is_some() { "as a new, Inconsistent Secondary" } else { "as a new, empty volume" });
    }
    let disk = Disk::open(
        &f.label,
        f.disk,
        f.size_bytes,
        limits::ENGINE_QUEUE_DEPTH_DEFAULT,
    )?;
    if plan.create_disk {
        claim.lock("disk", f.disk)?;
    }
    if !disk.direct_io() {
        warn!(resource = %f.label, disk = %f.disk.display(), "O_DIRECT unavailable: using buffered I/O (flushes still make data durable)");
    }
    let (cfg2, node2) = (cfg.clone(), node.to_owned());
    let (meta, attached) = tokio::task::spawn_blocking(move || open_meta(&cfg2, number, &node2))
        .await
        .map_err(|e| ResourceError::Blocking(e.to_string()))??;
    if plan.create_meta {
        claim.lock("metadata", f.meta)?;
    }
    let meta = Arc::new(meta);
    let sb = meta.superblock();
    if sb.size_bytes < f.size_bytes {
        // Replicated, grown here but not yet agreed with the peer: the disk holds the
        // configured capacity, the volume keeps the agreed size (`drl resize`).
        info!(resource = %f.label, size_bytes = sb.size_bytes, capacity_bytes = f.size_bytes,
            "the configured size is larger than the volume: it grows when the peer has grown too");
        disk.set_size(sb.size_bytes)?;
    }
    // A replicated resource's disk stays writable for the replication receiver; the
    // device refuses user writes unless Primary. (Volume 0's metadata holds the role; a
    // group's other volumes are replicated, so their disks stay writable.)
    disk.set_read_only(attached.is_none() && sb.role != Role::Primary);
    info!(resource = %f.label, role = sb.role.as_str(), disk = sb.disk_state.as_str(), direct_io = disk.direct_io(), "resource opened");
    let disk = Arc::new(disk);
    let snaps = SnapshotStore::open(
        SnapshotStoreConfig {
            dir: f.snapshot_dir.to_owned(),
            resource: f.label.clone(),
            volume_bytes: sb.size_bytes,
            chunk_bytes: cfg.snapshot_chunk_bytes,
            space_bytes: f.snapshot_space_bytes,
        },
        disk.clone(),
    )?;
    let pipe = Arc::new(WritePipeline::new(disk.clone(), Arc::new(snaps)));
    Ok(Opened {
        disk,
        meta,
        pipe,
        attached,
    })
}

fn open_meta(
    cfg: &ResourceConfig,
    number: u16,
    node: &str,
) -> Result<(MetaFile, Option<Attached>), ResourceError> {
    let f = volume_files(cfg, number);
    let path = f.meta;
    let meta = if path.exists() {
        let m = MetaFile::open(path)?;
        m.check_fits(&cfg.name, f.size_bytes, cfg.peer.is_some())?;
        if !m.superblock().has_flag(flags::CLEAN_SHUTDOWN) {
            warn!(resource = %cfg.name, meta = %path.display(), "the last shutdown was not clean (crash or kill -9)");
        }
        m
    } else {
        create_volume_meta(cfg, number, node)?
    };
    if cfg.peer.is_none() {
        meta.update(|sb| sb.flags &= !flags::CLEAN_SHUTDOWN)?;
        return Ok((meta, None));
    }
    // Attach order (activity_log module): bitmap, then the AL, which replays a crash's hot
    // extents into the bitmap and clears CLEAN_SHUTDOWN.
    let bitmap = DirtyBitmap::load(&meta)?;
    let (al, report) = ActivityLog::attach(&meta, &bitmap)?;
    if report.crashed_primary {
        warn!(resource = %f.label, regions = report.replayed.len(), "crashed while Primary: the activity-log regions will be resynced");
    }
    // DRBD: a replicated resource always comes up Secondary; the admin promotes it.
    meta.update(|sb| {
        sb.role = Role::Secondary;
        sb.flags &= !flags::WAS_PRIMARY;
    })?;
    Ok((
        meta,
        Some(Attached {
            bitmap: Arc::new(bitmap),
            al,
        }),
    ))
}

/// New metadata for every volume of `cfg` on `node` (a new resource here): `drl create-md`.
pub fn create_meta(cfg: &ResourceConfig, node: &str) -> Result<(), ResourceError> {
    for v in &cfg.volumes {
        create_volume_meta(cfg, v.number, node)?;
    }
    Ok(())
}

/// New metadata for volume `number` of `cfg` on `node`: `drl create-md` and a first start.
fn create_volume_meta(
    cfg: &ResourceConfig,
    number: u16,
    node: &str,
) -> Result<MetaFile, ResourceError> {
    let f = volume_files(cfg, number);
    // An unreplicated resource has nothing to wait for: it starts Primary and UpToDate.
    // A replicated one starts Secondary and Inconsistent until the initial sync (DRBD).
    let (role, disk_state) = if cfg.peer.is_none() {
        (Role::Primary, DiskState::UpToDate)
    } else {
        (Role::Secondary, DiskState::Inconsistent)
    };
    info!(resource = %f.label, meta = %f.meta.display(), "creating new metadata");
    let mut new = NewMeta::new(&cfg.name, node, f.size_bytes);
    new.role = role;
    new.disk_state = disk_state;
    if cfg.peer.is_some() {
        // A new pair is "just created" (DRBD): no generation until the first promotion
        // with --force, which makes the initial full sync run from that node.
        new.gen = Some(Default::default());
    }
    Ok(MetaFile::create(f.meta, &new)?)
}
