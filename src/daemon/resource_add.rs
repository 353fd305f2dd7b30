//! A volume added to a running resource (issue 15, `drl adjust`).
//!
//! The volume is opened exactly as at startup (`resource_open.rs`: disk, metadata, bitmap,
//! activity log, snapshot store, write pipeline), with every block of its bitmap out of sync
//! and persisted: whatever else happens, the next sync of the pair covers all of it (a
//! metadata file left by an earlier try included). Then it joins the replicator (see
//! [`crate::repl::replicator::Replicator::add_volume`]: a running session of a Primary
//! announces it at a barrier and syncs it in place, a Secondary waits for the Primary's
//! announcement; with no session, the next handshake compares the volume sets), gets its
//! device and, if the daemon's exports run, its NBD export (`RES/N`).
//!
//! Volumes are only appended (numbers run without gaps); removing one stays *pending* in
//! `drl adjust` (it would need both nodes to drop it at one barrier, not built).

use std::sync::{Arc, Mutex};

use super::{open_volume, LocalVolume, Resource, ResourceError};
use crate::config::ResourceConfig;
use crate::repl::core::VolumeId;
use crate::repl::replicator::VolumeParts;
use crate::volume::claim;

impl Resource {
    /// Open and attach volumes `n..` of `cfg` (the config the admin edited), where `n` is the
    /// number of volumes this resource has; the ones it has are the caller's to compare.
    /// Returns one line per added volume for `drl adjust`.
    pub async fn add_volumes(
        &self,
        cfg: &ResourceConfig,
        node: &str,
    ) -> Result<Vec<String>, ResourceError> {
        let mut done = Vec::new();
        let targets = cfg.claim_targets();
        let have = self.vols().len();
        for (number, (t, v)) in targets.iter().zip(&cfg.volumes).enumerate().skip(have) {
            let plan = claim::plan(t)?;
            // The resource's claim, taken out for the open (it awaits) and put back after.
            let mut held = self
                .claim
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
            let opened = async {
                for (what, path) in [("disk", t.disk), ("metadata", t.meta)] {
                    if path.exists() {
                        held.lock(what, path)?;
                    }
                }
                open_volume(cfg, number as u16, node, &plan, &mut held).await
            }
            .await;
            *self.claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
            let mut o = opened?;
            // Opened on the control runtime: its completions belong on the resource's home.
            o.disk.set_home(self.home().clone());
            let vol = VolumeId(number as u16);
            if let (Some(repl), Some(a)) = (&self.repl, o.attached.take()) {
                // Every block out of sync, on disk before the volume is used: a crash or a
                // lost link before its sync ends resyncs it whole.
                a.bitmap.set_all();
                let (bm, meta) = (a.bitmap.clone(), o.meta.clone());
                tokio::task::spawn_blocking(move || bm.flush_to(&meta))
                    .await
                    .map_err(|e| ResourceError::Blocking(e.to_string()))??;
                repl.add_volume(VolumeParts::new(
                    o.pipe.clone(),
                    o.meta.clone(),
                    a.bitmap,
                    a.al,
                ));
            }
            let local = Arc::new(LocalVolume {
                number: v.number,
                cfg: v.clone(),
                disk: o.disk.clone(),
                dev: Arc::new(self.dev.for_volume(vol, o.pipe.clone())),
                meta: o.meta.clone(),
                nbd: v.local.nbd.clone(),
                nbd_stats: Mutex::new(None),
            });
            self.vols
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(local.clone());
            let budget = self
                .nbd_budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut export = String::new();
            if let Some(b) = budget {
                let mut tasks = self.tasks.lock().await;
                self.start_export(&local, true, &mut tasks, &b).await?;
                if let Some(ep) = &local.nbd {
                    export = format!(", NBD export {}/{number} at {ep}", cfg.name);
                }
            }
            let sync = match &self.repl {
                None => "",
                Some(r) if r.role() == drbd_compat::Role::Primary => {
                    "; it syncs to the peer in full once the peer has it too (drl adjust there)"
                }
                Some(_) => "; it syncs in full from the Primary once the Primary has it too",
            };
            done.push(format!(
                "volume {number} added ({} bytes{export}){sync}",
                v.size_bytes
            ));
        }
        Ok(done)
    }
}
