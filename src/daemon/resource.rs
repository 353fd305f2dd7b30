//! One resource on this node: its disk, its metadata, its NBD export, and its state as DRBD
//! names it (role, disk state, connection, replication).
//!
//! A consistency group (issue 15) is one resource of several volumes: each volume has its own
//! disk, metadata (bitmap, activity log), snapshot store and NBD export; one replicator (one
//! session, one epoch order, one role) carries them all. Volume 0's metadata holds the role,
//! disk state and generations of the resource.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::info;

use crate::config::{NbdEndpoint, ResourceConfig};
use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::frontend::nbd::{ExportConfig, NbdListen, NbdServer, NbdStats, PayloadBudget};
use crate::limits;
use crate::pipeline::WritePipeline;
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::volume::disk::Disk;

use super::device::ResourceDevice;
use crate::repl::core::VolumeId;
use crate::repl::replicator::{Replicator, VolumeParts};
use crate::volume::activity_log::{ActivityLog, AlError};
use crate::volume::bitmap::DirtyBitmap;
use crate::volume::claim::{self, Claim, ClaimError, Plan};
use crate::volume::meta::{flags, MetaError, MetaFile};
use crate::volume::{BlockDevice, VolumeError};

#[path = "resource_add.rs"]
mod add;
#[path = "group_snapshot.rs"]
mod group_snapshot;
#[path = "resource_open.rs"]
mod open;
pub use open::create_meta;
use open::open_volume;

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

/// One volume, opened (before the replicator and the device are built over it).
struct Opened {
    disk: Arc<Disk>,
    meta: Arc<MetaFile>,
    pipe: Arc<WritePipeline>,
    attached: Option<Attached>,
}

/// One volume of the resource on this node (a one-volume resource has volume 0 only).
struct LocalVolume {
    number: u16,
    /// Its config (a volume added by `drl adjust` is not in the resource's `cfg`).
    cfg: crate::config::VolumeConfig,
    disk: Arc<Disk>,
    dev: Arc<ResourceDevice>,
    meta: Arc<MetaFile>,
    nbd: Option<NbdEndpoint>,
    nbd_stats: Mutex<Option<Arc<NbdStats>>>,
}

pub struct Resource {
    cfg: ResourceConfig,
    disk: Arc<Disk>,
    dev: Arc<ResourceDevice>,
    meta: Arc<MetaFile>,
    events: EventBus,
    repl: Option<Arc<Replicator>>,
    /// Every volume in number order (`disk`, `dev`, `meta` above are volume 0's); more than
    /// one is a consistency group. `drl adjust` appends volumes (`resource_add.rs`).
    vols: Mutex<Vec<Arc<LocalVolume>>>,
    /// The NBD payload budget the exports were started with (for a volume added later).
    nbd_budget: Mutex<Option<PayloadBudget>>,
    /// The exclusive hold on the disk and metadata (released by [`Resource::close`], so a
    /// resource taken `down` can be opened again, or by another owner, at once).
    claim: Mutex<Option<Claim>>,
    /// Stops this resource's tasks (replication, NBD export, progress): the daemon's
    /// shutdown, or `drl down` of this resource alone.
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// The runtimes this resource's tasks run on (`shards.rs`): its home first (the runtime
    /// it was opened on), then the other shards its exports' connections may spread to.
    shards: Vec<tokio::runtime::Handle>,
}

/// A resource's files, checked and locked, before anything was created or changed.
pub struct Claimed {
    claim: Claim,
    /// One per volume, in number order.
    plans: Vec<Plan>,
}

impl Claimed {
    /// Lock the resource's existing files (every volume's) and check everything a start needs
    /// (see [`crate::volume::claim`]); changes nothing on disk.
    pub fn take(cfg: &ResourceConfig) -> Result<Claimed, ResourceError> {
        let mut claim = Claim::new();
        let targets = cfg.claim_targets();
        for t in &targets {
            for (what, path) in [("disk", t.disk), ("metadata", t.meta)] {
                if path.exists() {
                    claim.lock(what, path)?;
                }
            }
        }
        let plans = plan_volumes(cfg)?;
        Ok(Claimed { claim, plans })
    }

    /// Every volume's plan, in number order.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }
}

/// Every volume's [`claim::plan`] (touching nothing), and the group's own check: a volume's
/// metadata missing beside an existing volume 0 is refused. Its new metadata would have clean
/// bitmaps, and with volume 0's generations (the group's) the next connect would find nothing
/// to sync and leave the new volume's data unlike the peer's.
pub fn plan_volumes(cfg: &ResourceConfig) -> Result<Vec<Plan>, ClaimError> {
    let targets = cfg.claim_targets();
    let plans = targets
        .iter()
        .map(claim::plan)
        .collect::<Result<Vec<_>, _>>()?;
    if !plans[0].create_meta {
        if let Some((_, t)) = plans.iter().zip(&targets).find(|(p, _)| p.create_meta) {
            return Err(ClaimError::Refused(format!(
                "metadata {} is missing while volume 0's exists: add a volume to an \
                 existing resource with `drl adjust` on the running daemon (it syncs the new \
                 volume in full); if the file was lost, recreate the whole resource",
                t.meta.display()
            )));
        }
    }
    Ok(plans)
}

/// The volume layer's view of a resource's files (one per volume), for [`claim::plan`].
pub fn claim_targets(cfg: &ResourceConfig) -> Vec<claim::Target<'_>> {
    cfg.claim_targets()
}

impl Resource {
    /// Open the disk (creating a missing file sparse) and the metadata (creating a missing one,
    /// refusing a corrupt one), and record that the resource is in use (clean flag cleared).
    /// `claimed` was taken for `cfg` first, for every resource of the start, so a refused start
    /// changed nothing. The resource's home is the runtime this runs on; `more_shards` are the
    /// other runtimes its NBD connections may run on (`shards.rs`).
    pub async fn open(
        cfg: &ResourceConfig,
        node: &str,
        events: EventBus,
        claimed: Claimed,
        shaping: &crate::shaping::NodeShaping,
        more_shards: Vec<tokio::runtime::Handle>,
    ) -> Result<Resource, ResourceError> {
        let Claimed { mut claim, plans } = claimed;
        let mut opened = Vec::with_capacity(plans.len());
        for (v, plan) in cfg.volumes.iter().zip(&plans) {
            opened.push(open_volume(cfg, v.number, node, plan, &mut claim).await?);
        }
        let repl = match opened.iter().all(|o| o.attached.is_some()) {
            false => None,
            true => {
                let parts = opened
                    .iter_mut()
                    .map(|o| {
                        let a = o
                            .attached
                            .take()
                            .expect("checked: every volume is attached");
                        VolumeParts::new(o.pipe.clone(), o.meta.clone(), a.bitmap, a.al)
                    })
                    .collect();
                Some(Replicator::new(
                    cfg,
                    node,
                    parts,
                    events.clone(),
                    shaping.clone(),
                ))
            }
        };
        let vol0 = &opened[0];
        let dev = Arc::new(ResourceDevice::new(
            vol0.pipe.clone(),
            repl.clone(),
            cfg.repl.auto_promote,
        ));
        let vols = opened
            .iter()
            .zip(&cfg.volumes)
            .map(|(o, v)| {
                Arc::new(LocalVolume {
                    number: v.number,
                    cfg: v.clone(),
                    disk: o.disk.clone(),
                    dev: match v.number {
                        0 => dev.clone(),
                        n => Arc::new(dev.for_volume(VolumeId(n), o.pipe.clone())),
                    },
                    meta: o.meta.clone(),
                    nbd: v.local.nbd.clone(),
                    nbd_stats: Mutex::new(None),
                })
            })
            .collect();
        Ok(Resource {
            cfg: cfg.clone(),
            disk: vol0.disk.clone(),
            dev,
            meta: vol0.meta.clone(),
            events,
            repl,
            vols: Mutex::new(vols),
            nbd_budget: Mutex::new(None),
            claim: Mutex::new(Some(claim)),
            stop: watch::channel(false).0,
            tasks: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
            shards: std::iter::once(tokio::runtime::Handle::current())
                .chain(more_shards)
                .collect(),
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

    /// The NBD export's counters (volume 0's), once it is started.
    pub fn nbd_stats(&self) -> Option<Arc<NbdStats>> {
        self.vols()[0].nbd_stats()
    }

    /// Every volume, in number order (a snapshot: `drl adjust` may add one).
    fn vols(&self) -> Vec<Arc<LocalVolume>> {
        self.vols.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every volume's config, in number order (with those added at run time).
    pub fn volume_configs(&self) -> Vec<crate::config::VolumeConfig> {
        self.vols().iter().map(|v| v.cfg.clone()).collect()
    }

    /// Every volume's device, in number order (one for a one-volume resource).
    pub fn volume_devices(&self) -> Vec<Arc<ResourceDevice>> {
        self.vols().iter().map(|v| v.dev.clone()).collect()
    }

    /// Whether the resource is a consistency group (more than one volume).
    pub fn is_group(&self) -> bool {
        self.vols().len() > 1
    }

    /// Refuse `what` on a consistency group, naming why: an operation built for one volume
    /// must not run on volume 0 alone and look like it covered the group.
    pub fn refuse_group(&self, what: &str) -> Result<(), String> {
        match self.is_group() {
            false => Ok(()),
            true => Err(format!(
                "{}: {what} of a consistency group ({} volumes) is not built yet (issue 15): \
                 it would cover volume 0 only, not the group at one point in time",
                self.cfg.name,
                self.vols().len()
            )),
        }
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

    /// The NBD clients holding an export of the resource open (in transmission) now (a
    /// group's: of any volume).
    pub fn nbd_clients(&self) -> Vec<String> {
        self.vols()
            .iter()
            .flat_map(|v| v.nbd_stats().map(|s| s.clients()).unwrap_or_default())
            .collect()
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
            for v in self.vols().iter() {
                v.dev.set_fence(s.fence.clone());
            }
            // One auto-promote for the group's devices.
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
        let home = self.home();
        {
            // The daemon's shutdown stops this resource too.
            let (stop, mut mine) = (self.stop.clone(), self.stop.subscribe());
            tasks.spawn_on(
                async move {
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => { let _ = stop.send(true); }
                        _ = mine.wait_for(|s| *s) => {}
                    }
                },
                home,
            );
        }
        if let Some(r) = &self.repl {
            tasks.spawn_on(crate::repl::service::run(r.clone(), stopped.clone()), home);
            let every = std::time::Duration::from_millis(limits::REPL_BITMAP_PERSIST_MS);
            tasks.spawn_on(
                crate::repl::service::persist_loop(r.clone(), every, stopped.clone()),
                home,
            );
            tasks.spawn_on(
                super::progress::run(r.clone(), self.events.clone(), stopped.clone()),
                home,
            );
        }
        // One export per volume that has an `nbd` endpoint.
        *self.nbd_budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(nbd_budget.clone());
        let group = self.is_group();
        for v in self.vols().iter() {
            self.start_export(v, group, &mut tasks, nbd_budget).await?;
        }
        Ok(())
    }

    /// Start volume `v`'s NBD export (if it has an endpoint) in the resource's task set: the
    /// export `RES` of a one-volume resource, `RES/N` for volume N of a group (`group`).
    async fn start_export(
        &self,
        v: &LocalVolume,
        group: bool,
        tasks: &mut tokio::task::JoinSet<()>,
        nbd_budget: &PayloadBudget,
    ) -> Result<(), ResourceError> {
        let Some(ep) = &v.nbd else { return Ok(()) };
        let listen = match ep {
            NbdEndpoint::Unix(p) => NbdListen::Unix(p.clone()),
            NbdEndpoint::Tcp(a) => NbdListen::Tcp(*a),
        };
        let (name, description) = match group {
            false => (
                self.cfg.name.clone(),
                format!("drl resource {}", self.cfg.name),
            ),
            true => (
                format!("{}/{}", self.cfg.name, v.number),
                format!("drl resource {} volume {}", self.cfg.name, v.number),
            ),
        };
        let export = ExportConfig { name, description };
        // Bound on the home shard, so its accept loop's wake-ups stay there.
        let dev = v.dev.clone();
        let mut server =
            super::shards::run_on(self.home(), NbdServer::bind(listen, export, dev)).await?;
        server.set_payload_budget(nbd_budget.clone());
        server.set_shards(self.shards.clone());
        *v.nbd_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.stats());
        let (name, stopped) = (self.cfg.name.clone(), self.stop.subscribe());
        let number = v.number;
        let run = async move {
            if let Err(e) = server.run(stopped).await {
                tracing::error!(resource = %name, volume = number, "NBD export stopped: {e}");
            }
        };
        tasks.spawn_on(run, self.home());
        info!(resource = %self.cfg.name, volume = v.number, endpoint = %ep, uri = %ep.uri(), "NBD export listening");
        Ok(())
    }

    /// The runtime this resource's tasks run on (`shards.rs`).
    pub fn home(&self) -> &tokio::runtime::Handle {
        &self.shards[0]
    }

    /// Tell the resource's tasks to stop and wait for them: the NBD export stops accepting
    /// and drains, the replication session ends (it applies what it received first).
    pub async fn stop_tasks(&self) {
        self.dev.stop_auto_promote();
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }

    /// Flush every volume's disk, mark its metadata clean, stop its engine, give the files'
    /// claim back.
    pub async fn close(&self) -> Result<(), ResourceError> {
        for v in self.vols().iter() {
            v.disk.flush().await?;
            v.dev.snapshots().close().await?;
            if let Some(r) = &self.repl {
                // Close the activity log cleanly (flushes the bitmap, sets CLEAN_SHUTDOWN).
                let parts = r.vol(VolumeId(v.number))?;
                let (al, meta, bm) = (parts.al.clone(), v.meta.clone(), parts.bitmap.clone());
                tokio::task::spawn_blocking(move || al.close_clean(&meta, &bm))
                    .await
                    .map_err(|e| ResourceError::Blocking(e.to_string()))??;
            }
            v.meta.update(|sb| sb.flags |= flags::CLEAN_SHUTDOWN)?;
            let disk = v.disk.clone();
            tokio::task::spawn_blocking(move || disk.shutdown())
                .await
                .map_err(|e| ResourceError::Blocking(e.to_string()))?;
        }
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
        let nbd = self.nbd_stats();
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
            "nbd": nbd_json(self.cfg.local.nbd.as_ref(), nbd),
        });
        if let (Some(r), Some(obj)) = (&self.repl, v.as_object_mut()) {
            if let Some(fields) = r.status_fields().as_object() {
                for (k, val) in fields {
                    obj.insert(k.clone(), val.clone());
                }
            }
        }
        if self.is_group() {
            // DRBD's `volume:N` lines: the disk state is the resource's (one role, one
            // generation, one sync decision for the group), out-of-sync is each volume's; the
            // replication state is the resource's, except while a volume added at run time
            // syncs alone (`resync_volume`): the others are Established meanwhile.
            let repl = v["replication"].as_str().unwrap_or("Off").to_owned();
            let alone = v["resync_volume"].as_u64();
            v["volumes"] = self
                .vols()
                .iter()
                .map(|vol| {
                    let oos = self
                        .repl
                        .as_ref()
                        .and_then(|r| r.vol(VolumeId(vol.number)).ok())
                        .map_or(0, |p| p.bitmap.dirty_bytes());
                    let replication = match alone {
                        Some(n) if n != u64::from(vol.number) => "Established",
                        _ => repl.as_str(),
                    };
                    json!({
                        "volume": vol.number,
                        "disk": sb.disk_state.as_str(),
                        "replication": replication,
                        "size_bytes": crate::volume::BlockDevice::size_bytes(&*vol.disk),
                        "out_of_sync_bytes": oos,
                        "disk_path": vol.cfg.local.disk,
                        "meta_path": vol.cfg.local.meta,
                        "io": vol.disk.stats().to_json(),
                        "nbd": nbd_json(vol.nbd.as_ref(), vol.nbd_stats()),
                    })
                })
                .collect();
        }
        v
    }
}

impl LocalVolume {
    fn nbd_stats(&self) -> Option<Arc<NbdStats>> {
        self.nbd_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An NBD export in `status`: its endpoint and, once started, its connections and counters.
fn nbd_json(ep: Option<&NbdEndpoint>, stats: Option<Arc<NbdStats>>) -> Value {
    match (ep, stats) {
        (Some(ep), Some(st)) => {
            let snap = st.snapshot();
            json!({ "endpoint": ep.to_string(), "uri": ep.uri(), "connections": snap.connections_active, "stats": snap })
        }
        (Some(ep), None) => {
            json!({ "endpoint": ep.to_string(), "uri": ep.uri(), "connections": 0 })
        }
        _ => Value::Null,
    }
}
