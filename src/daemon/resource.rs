//! One resource on this node: its disk, its metadata, its NBD export, and its state as DRBD
//! names it (role, disk state, connection, replication).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{NbdEndpoint, ResourceConfig};
use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::frontend::nbd::{ExportConfig, NbdListen, NbdServer, NbdStats, PayloadBudget};
use crate::limits;
use crate::pipeline::WritePipeline;
use crate::snapshot::{SnapshotError, SnapshotStore, SnapshotStoreConfig};
use crate::volume::disk::Disk;

use super::device::ResourceDevice;
use crate::repl::replicator::Replicator;
use crate::volume::activity_log::{ActivityLog, AlError};
use crate::volume::bitmap::DirtyBitmap;
use crate::volume::claim::{self, Claim, Plan};
use crate::volume::meta::{flags, DiskState, MetaError, MetaFile, NewMeta, Role};
use crate::volume::{BlockDevice, VolumeError};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{0}")]
    Volume(#[from] VolumeError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("NBD export: {0}")]
    Nbd(#[from] crate::frontend::nbd::NbdError),
    #[error("snapshots: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("activity log: {0}")]
    Al(#[from] AlError),
    #[error("{0}")]
    Claim(#[from] crate::volume::claim::ClaimError),
    #[error("{0}")]
    Blocking(String),
}

/// The metadata parts of a replicated resource.
struct Attached {
    bitmap: Arc<DirtyBitmap>,
    al: Arc<ActivityLog>,
}

pub struct Resource {
    cfg: ResourceConfig,
    disk: Arc<Disk>,
    dev: Arc<ResourceDevice>,
    meta: Arc<MetaFile>,
    events: EventBus,
    repl: Option<Arc<Replicator>>,
    nbd_stats: Mutex<Option<Arc<NbdStats>>>,
    /// The exclusive hold on the disk and metadata (released by [`Resource::close`], so a
    /// resource taken `down` can be opened again, or by another owner, at once).
    claim: Mutex<Option<Claim>>,
    /// Stops this resource's tasks (replication, NBD export, progress): the daemon's
    /// shutdown, or `drl down` of this resource alone.
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// A resource's files, checked and locked, before anything was created or changed.
pub struct Claimed {
    claim: Claim,
    plan: Plan,
}

impl Claimed {
    /// Lock the resource's existing files and check everything a start needs (see
    /// [`crate::volume::claim`]); changes nothing on disk.
    pub fn take(cfg: &ResourceConfig) -> Result<Claimed, ResourceError> {
        let mut claim = Claim::new();
        for (what, path) in [("disk", &cfg.local.disk), ("metadata", &cfg.local.meta)] {
            if path.exists() {
                claim.lock(what, path)?;
            }
        }
        let plan = claim::plan(&claim_target(cfg))?;
        Ok(Claimed { claim, plan })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// The volume layer's view of a resource's files, for [`claim::plan`].
pub fn claim_target(cfg: &ResourceConfig) -> claim::Target<'_> {
    cfg.claim_target()
}

impl Resource {
    /// Open the disk (creating a missing file sparse) and the metadata (creating a missing one,
    /// refusing a corrupt one), and record that the resource is in use (clean flag cleared).
    /// `claimed` was taken for `cfg` first, for every resource of the start, so a refused start
    /// changed nothing.
    pub async fn open(
        cfg: &ResourceConfig,
        node: &str,
        events: EventBus,
        claimed: Claimed,
        shaping: &crate::shaping::NodeShaping,
    ) -> Result<Resource, ResourceError> {
        let Claimed { mut claim, plan } = claimed;
        if plan.create_meta {
            warn!(resource = %cfg.name, meta = %cfg.local.meta.display(),
                "NO METADATA FOUND: creating new metadata, this node starts {} (if the resource existed here, the meta path is wrong: stop now)",
                if cfg.peer.is_some() { "as a new, Inconsistent Secondary" } else { "as a new, empty volume" });
        }
        let disk = Disk::open(
            &cfg.name,
            &cfg.local.disk,
            cfg.size_bytes,
            limits::ENGINE_QUEUE_DEPTH_DEFAULT,
        )?;
        if plan.create_disk {
            claim.lock("disk", &cfg.local.disk)?;
        }
        if !disk.direct_io() {
            warn!(resource = %cfg.name, disk = %cfg.local.disk.display(), "O_DIRECT unavailable: using buffered I/O (flushes still make data durable)");
        }
        let cfg2 = cfg.clone();
        let node_name = node;
        let node = node.to_owned();
        let (meta, attached) = tokio::task::spawn_blocking(move || open_meta(&cfg2, &node))
            .await
            .map_err(|e| ResourceError::Blocking(e.to_string()))??;
        if plan.create_meta {
            claim.lock("metadata", &cfg.local.meta)?;
        }
        let meta = Arc::new(meta);
        let sb = meta.superblock();
        let role = sb.role;
        if sb.size_bytes < cfg.size_bytes {
            // Replicated, grown here but not yet agreed with the peer: the disk holds the
            // configured capacity, the volume keeps the agreed size (`drl resize`).
            info!(resource = %cfg.name, size_bytes = sb.size_bytes, capacity_bytes = cfg.size_bytes,
                "the configured size is larger than the volume: it grows when the peer has grown too");
            disk.set_size(sb.size_bytes)?;
        }
        // A replicated resource's disk stays writable for the replication receiver; the
        // device refuses user writes unless Primary.
        disk.set_read_only(attached.is_none() && role != Role::Primary);
        info!(resource = %cfg.name, role = role.as_str(), disk = sb.disk_state.as_str(), direct_io = disk.direct_io(), "resource opened");
        let disk = Arc::new(disk);
        let snaps = SnapshotStore::open(
            SnapshotStoreConfig {
                dir: cfg.local.snapshot_dir.clone(),
                resource: cfg.name.clone(),
                volume_bytes: sb.size_bytes,
                chunk_bytes: cfg.snapshot_chunk_bytes,
                space_bytes: cfg.snapshot_space_bytes,
            },
            disk.clone(),
        )?;
        let pipe = Arc::new(WritePipeline::new(disk.clone(), Arc::new(snaps)));
        let repl = attached.map(|a| {
            Replicator::new(
                cfg,
                node_name,
                pipe.clone(),
                meta.clone(),
                a.bitmap,
                a.al,
                events.clone(),
                shaping.clone(),
            )
        });
        let dev = Arc::new(ResourceDevice::new(
            pipe,
            repl.clone(),
            cfg.repl.auto_promote,
        ));
        Ok(Resource {
            cfg: cfg.clone(),
            disk,
            dev,
            meta,
            events,
            repl,
            nbd_stats: Mutex::new(None),
            claim: Mutex::new(Some(claim)),
            stop: watch::channel(false).0,
            tasks: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// What users read and write: the disk behind the snapshot store.
    pub fn device(&self) -> &Arc<ResourceDevice> {
        &self.dev
    }

    pub fn snapshots(&self) -> &Arc<SnapshotStore<Disk>> {
        self.dev.snapshots()
    }

    /// Copy-on-write space of the resource's snapshots (`snapshot-space`).
    pub fn snapshots_space_bytes(&self) -> u64 {
        self.cfg.snapshot_space_bytes
    }

    /// The NBD export's counters, once it is started.
    pub fn nbd_stats(&self) -> Option<Arc<NbdStats>> {
        self.nbd_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The replication of this resource (None when it has no peer).
    /// The resource's metadata (superblock flags, generations).
    pub fn meta(&self) -> &Arc<MetaFile> {
        &self.meta
    }

    pub fn replicator(&self) -> Option<&Arc<Replicator>> {
        self.repl.as_ref()
    }

    /// The NBD clients holding the export open (in transmission) now.
    pub fn nbd_clients(&self) -> Vec<String> {
        self.nbd_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.clients())
            .unwrap_or_default()
    }

    /// Refuse a demotion (or going down) while NBD clients hold the export open, naming them
    /// (DRBD: "Device is held open by someone"): a Secondary would fail their next write.
    pub fn refuse_if_held_open(&self, action: &str) -> Result<(), String> {
        let clients = self.nbd_clients();
        if clients.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{}: held open by {} NBD client{}: {}; {action} would fail their writes: disconnect them first",
            self.cfg.name,
            clients.len(),
            if clients.len() == 1 { "" } else { "s" },
            clients.join(", ")
        ))
    }

    /// A receiver that turns true when this resource's tasks are told to stop (the daemon
    /// stops, or `drl down`): for tasks started elsewhere on its behalf (detection's lease).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// With `[detect]`: protect this resource if it is replicated (its fence in front of its
    /// writes, its lease for auto-promote), before its export starts.
    pub fn protect(&self, d: &crate::detect::Detect) {
        let Some(repl) = self.replicator() else {
            return;
        };
        d.add_scope(repl, self.stop_signal(), |s| {
            self.device().set_fence(s.fence.clone());
            self.device().set_lease_scope(s.clone());
        });
    }

    /// Start the resource's tasks: replication (if it has a peer) and the NBD export (if
    /// configured), in the resource's own task set, until the daemon's `shutdown` or
    /// [`Resource::stop_tasks`]. Its NBD clients draw on `nbd_budget`, which every export of
    /// the daemon shares.
    pub async fn start(
        &self,
        mut shutdown: watch::Receiver<bool>,
        nbd_budget: &PayloadBudget,
    ) -> Result<(), ResourceError> {
        let mut tasks = self.tasks.lock().await;
        let stopped = self.stop.subscribe();
        {
            // The daemon's shutdown stops this resource too.
            let (stop, mut mine) = (self.stop.clone(), self.stop.subscribe());
            tasks.spawn(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => { let _ = stop.send(true); }
                    _ = mine.wait_for(|s| *s) => {}
                }
            });
        }
        if let Some(r) = &self.repl {
            tasks.spawn(crate::repl::service::run(r.clone(), stopped.clone()));
            tasks.spawn(crate::repl::service::persist_loop(
                r.clone(),
                std::time::Duration::from_millis(limits::REPL_BITMAP_PERSIST_MS),
                stopped.clone(),
            ));
            tasks.spawn(super::progress::run(
                r.clone(),
                self.events.clone(),
                stopped.clone(),
            ));
        }
        let Some(ep) = &self.cfg.local.nbd else {
            return Ok(());
        };
        let listen = match ep {
            NbdEndpoint::Unix(p) => NbdListen::Unix(p.clone()),
            NbdEndpoint::Tcp(a) => NbdListen::Tcp(*a),
        };
        let export = ExportConfig {
            name: self.cfg.name.clone(),
            description: format!("drl resource {}", self.cfg.name),
        };
        let mut server = NbdServer::bind(listen, export, self.dev.clone()).await?;
        server.set_payload_budget(nbd_budget.clone());
        *self.nbd_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.stats());
        let name = self.cfg.name.clone();
        tasks.spawn(async move {
            if let Err(e) = server.run(stopped).await {
                tracing::error!(resource = %name, "NBD export stopped: {e}");
            }
        });
        info!(resource = %self.cfg.name, endpoint = %ep, uri = %ep.uri(), "NBD export listening");
        Ok(())
    }

    /// Tell the resource's tasks to stop and wait for them: the NBD export stops accepting
    /// and drains, the replication session ends (it applies what it received first).
    pub async fn stop_tasks(&self) {
        self.dev.stop_auto_promote();
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }

    /// Flush the disk, mark the metadata clean, stop the engine, give the files' claim back.
    pub async fn close(&self) -> Result<(), ResourceError> {
        self.disk.flush().await?;
        self.snapshots().close().await?;
        if let Some(r) = &self.repl {
            // Close the activity log cleanly (flushes the bitmap, sets CLEAN_SHUTDOWN).
            let (al, meta, bm) = (r.al.clone(), self.meta.clone(), r.bitmap.clone());
            tokio::task::spawn_blocking(move || al.close_clean(&meta, &bm))
                .await
                .map_err(|e| ResourceError::Blocking(e.to_string()))??;
        }
        self.meta.update(|sb| sb.flags |= flags::CLEAN_SHUTDOWN)?;
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.shutdown())
            .await
            .map_err(|e| ResourceError::Blocking(e.to_string()))?;
        let mut ev = Event::new(EventKind::Change, ObjectKind::Resource, &self.cfg.name)
            .field("disk", "Detached");
        if let Some(p) = &self.cfg.peer {
            ev = ev.field("peer", p.node.clone());
        }
        self.events.publish(ev);
        drop(self.claim.lock().unwrap_or_else(|p| p.into_inner()).take());
        Ok(())
    }

    /// The resource's config (as it was when it was opened).
    pub fn config(&self) -> &ResourceConfig {
        &self.cfg
    }

    pub fn status_json(&self) -> Value {
        let sb = self.meta.superblock();
        let nbd = self
            .nbd_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (connection, replication) = ("StandAlone", "Off");
        let mut v = json!({
            "name": self.cfg.name,
            "role": sb.role.as_str(),
            "disk": sb.disk_state.as_str(),
            "connection": connection,
            "replication": replication,
            "peer_node": self.cfg.peer.as_ref().map(|p| p.node.clone()),
            "peer_role": Value::Null,
            "peer_disk": Value::Null,
            "size_bytes": crate::volume::BlockDevice::size_bytes(&*self.disk),
            "out_of_sync_bytes": 0,
            "generation": { "current": format!("{:016X}", sb.gen.current), "bitmap": format!("{:016X}", sb.gen.bitmap) },
            "direct_io": self.disk.direct_io(),
            "tracking_void": sb.has_flag(flags::TRACKING_VOID),
            "disk_path": self.cfg.local.disk,
            "meta_path": self.cfg.local.meta,
            "io": self.disk.stats().to_json(),
            "nbd": match (&self.cfg.local.nbd, nbd) {
                (Some(ep), Some(st)) => {
                    let snap = st.snapshot();
                    json!({ "endpoint": ep.to_string(), "uri": ep.uri(), "connections": snap.connections_active, "stats": snap })
                }
                (Some(ep), None) => json!({ "endpoint": ep.to_string(), "uri": ep.uri(), "connections": 0 }),
                _ => Value::Null,
            },
        });
        if let (Some(r), Some(obj)) = (&self.repl, v.as_object_mut()) {
            if let Some(fields) = r.status_fields().as_object() {
                for (k, val) in fields {
                    obj.insert(k.clone(), val.clone());
                }
            }
        }
        v
    }
}

fn open_meta(
    cfg: &ResourceConfig,
    node: &str,
) -> Result<(MetaFile, Option<Attached>), ResourceError> {
    let path = &cfg.local.meta;
    let meta = if path.exists() {
        let m = MetaFile::open(path)?;
        m.check_fits(&cfg.name, cfg.size_bytes, cfg.peer.is_some())?;
        if !m.superblock().has_flag(flags::CLEAN_SHUTDOWN) {
            warn!(resource = %cfg.name, meta = %path.display(), "the last shutdown was not clean (crash or kill -9)");
        }
        m
    } else {
        create_meta(cfg, node)?
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
        warn!(resource = %cfg.name, regions = report.replayed.len(), "crashed while Primary: the activity-log regions will be resynced");
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

/// New metadata for `cfg` on `node` (a new resource here): `drl create-md` and a first start.
pub fn create_meta(cfg: &ResourceConfig, node: &str) -> Result<MetaFile, ResourceError> {
    // An unreplicated resource has nothing to wait for: it starts Primary and UpToDate.
    // A replicated one starts Secondary and Inconsistent until the initial sync (DRBD).
    let (role, disk_state) = if cfg.peer.is_none() {
        (Role::Primary, DiskState::UpToDate)
    } else {
        (Role::Secondary, DiskState::Inconsistent)
    };
    info!(resource = %cfg.name, meta = %cfg.local.meta.display(), "creating new metadata");
    let mut new = NewMeta::new(&cfg.name, node, cfg.size_bytes);
    new.role = role;
    new.disk_state = disk_state;
    if cfg.peer.is_some() {
        // A new pair is "just created" (DRBD): no generation until the first promotion
        // with --force, which makes the initial full sync run from that node.
        new.gen = Some(Default::default());
    }
    Ok(MetaFile::create(&cfg.local.meta, &new)?)
}
