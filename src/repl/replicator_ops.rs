//! DRBD's data-placement commands on a replicated resource: `invalidate` (this node's data is
//! discarded and fully resynced from the peer), `invalidate-remote` (the peer's is, from this
//! node) and `outdate` (this node's data may no longer be promoted without `--force`).
//!
//! Both invalidations reuse the ordinary resync machinery, with no protocol change: they mark
//! every block out of sync in this node's bitmap (persisted before anything else, so a crash
//! keeps the intent), and `invalidate` also makes this disk Inconsistent; then the connection
//! is renegotiated. With equal generations the handshake decides by disk state and dirty bits
//! (`state::decide`, rules 41 and 42): an Inconsistent node is SyncTarget, the node with dirty
//! bits is SyncSource; the bitmap exchange ORs the bits, so the whole volume is resynced.

use super::*;

impl Replicator {
    /// The common precondition: connected, idle (Established), generations in step.
    fn check_established(
        &self,
        what: &str,
    ) -> Result<(Option<Role>, Option<DiskState>), ReplError> {
        let st = self.state();
        let connected = st.link.as_ref().is_some_and(|l| !l.is_closed());
        if !connected || st.conn != ConnState::Connected {
            return Err(self.refused(format!(
                "{what} needs the peer {} connected (it is {})",
                self.peer_node(),
                st.conn
            )));
        }
        if st.repl != ReplState::Established {
            return Err(self.refused(format!(
                "{what} needs replication Established (it is {}): wait for the running resync or verify to end",
                st.repl
            )));
        }
        Ok((st.peer_role, st.peer_disk))
    }

    /// Mark the whole volume out of sync, persist the bitmap, then renegotiate.
    async fn resync_everything(&self, why: &str) -> Result<(), ReplError> {
        for v in self.vols().iter() {
            v.bitmap.set_all();
        }
        self.persist_bitmaps()
            .await
            .map_err(|e| self.refused(format!("persisting the bitmap: {e}")))?;
        let link = self.state().link.clone();
        tracing::warn!(resource = %self.name, peer = %self.peer_node(), "{why}: full resync");
        self.renegotiate_link(link, why);
        Ok(())
    }

    /// `drl invalidate RES` (DRBD's): discard this node's data; a full resync from the peer
    /// follows. Refused on a Primary (its users read this disk) and unless the peer is
    /// connected, Established and UpToDate.
    pub async fn invalidate(&self) -> Result<(), ReplError> {
        if self.meta.superblock().role == meta::Role::Primary {
            return Err(self.refused(
                "invalidate on a Primary: its users read this disk; demote it first (drl secondary)",
            ));
        }
        let (_, peer_disk) = self.check_established("invalidate")?;
        if peer_disk != Some(DiskState::UpToDate) {
            return Err(self.refused(format!(
                "invalidate needs an UpToDate peer to resync from (the peer is {})",
                peer_disk.map_or("DUnknown", |d| d.as_str())
            )));
        }
        self.update_meta(|sb| sb.disk_state = meta::DiskState::Inconsistent)?;
        self.resync_everything("invalidate: this node's data was discarded")
            .await
    }

    /// `drl invalidate-remote RES` (DRBD's): the peer's data is discarded; a full resync from
    /// this node follows. Needs this disk UpToDate and the peer Secondary (a Primary peer
    /// cannot become SyncTarget).
    pub async fn invalidate_remote(&self) -> Result<(), ReplError> {
        let (peer_role, _) = self.check_established("invalidate-remote")?;
        let disk = self.meta.superblock().disk_state;
        if disk != meta::DiskState::UpToDate {
            return Err(self.refused(format!(
                "invalidate-remote needs this disk UpToDate (it is {})",
                disk.as_str()
            )));
        }
        if peer_role == Some(Role::Primary) {
            return Err(
                self.refused("the peer is Primary: its users read its disk; demote it first")
            );
        }
        self.resync_everything("invalidate-remote: the peer's data is discarded")
            .await
    }

    /// `drl outdate RES` (DRBD's): mark this node's data Outdated, so it cannot be promoted
    /// without `--force` (fencing). Refused on a Primary and while connected (DRBD: "Refusing
    /// to be Outdated while Connected"): a connected Secondary is kept current by its peer.
    pub fn outdate(&self) -> Result<(), ReplError> {
        let sb = self.meta.superblock();
        if sb.role == meta::Role::Primary {
            return Err(self.refused("outdate on a Primary: demote it first (drl secondary)"));
        }
        if self.state().conn == ConnState::Connected {
            return Err(self.refused("refusing to be Outdated while Connected (DRBD's rule)"));
        }
        match sb.disk_state {
            meta::DiskState::UpToDate | meta::DiskState::Consistent => {
                self.update_meta(|sb| sb.disk_state = meta::DiskState::Outdated)
            }
            meta::DiskState::Outdated => Ok(()),
            other => Err(self.refused(format!(
                "the disk is {}: only UpToDate or Consistent data can be outdated",
                other.as_str()
            ))),
        }
    }
}

impl Replicator {
    /// Whether `drl pause-sync` holds this node's part of a resync.
    pub(crate) fn resync_is_paused(&self) -> bool {
        self.resync_paused.load(Ordering::Acquire)
    }

    /// The replication state as DRBD shows it: SyncSource / SyncTarget held by this node's
    /// pause flag are PausedSyncS / PausedSyncT.
    pub(crate) fn shown_repl(&self, r: ReplState) -> ReplState {
        match (r, self.resync_is_paused()) {
            (ReplState::SyncSource, true) => ReplState::PausedSyncS,
            (ReplState::SyncTarget, true) => ReplState::PausedSyncT,
            (r, _) => r,
        }
    }

    /// Until `resume-sync` (returns at once when not paused).
    pub(crate) async fn wait_resync_unpaused(&self) {
        loop {
            // Registered before the check: a resume in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.resync_is_paused() {
                return;
            }
            changed.await;
        }
    }

    /// `drl pause-sync RES` (DRBD's): hold this node's part of the resync: a SyncSource
    /// answers no more requests, a SyncTarget asks for no more ranges (what is on its way
    /// still lands). The flag outlives the resync: a resync that starts while it is set
    /// waits too, as in DRBD, until `resume-sync`.
    pub fn pause_sync(&self) -> Result<(), ReplError> {
        if self.resync_paused.swap(true, Ordering::AcqRel) {
            return Err(self.refused("the resync is already paused on this node"));
        }
        self.publish_repl("pause-sync");
        Ok(())
    }

    /// `drl resume-sync RES`: clear this node's pause flag. A SyncTarget that had stopped
    /// asking resumes from its bitmap by renegotiating (the bitmap names every range it still
    /// lacks, so nothing is lost and nothing is sent twice).
    pub fn resume_sync(&self) -> Result<(), ReplError> {
        if !self.resync_paused.swap(false, Ordering::AcqRel) {
            return Err(self.refused("the resync is not paused on this node"));
        }
        let (repl, link) = {
            let st = self.state();
            (st.repl, st.link.clone())
        };
        self.publish_repl("resume-sync");
        if repl == ReplState::SyncTarget {
            self.renegotiate_link(link, "resume-sync on the SyncTarget");
        }
        Ok(())
    }

    /// Publish the (shown) replication state after a pause change, and wake waiters.
    fn publish_repl(&self, why: &str) {
        let (repl, peer_disk) = {
            let st = self.state();
            (self.shown_repl(st.repl), st.peer_disk)
        };
        tracing::info!(resource = %self.name, replication = %repl, "{why}");
        self.publish_per_volume(
            crate::control::Event::new(
                crate::control::EventKind::Change,
                crate::control::ObjectKind::PeerDevice,
                &self.name,
            )
            .field("peer", self.peer_node())
            .field("replication", repl.as_str())
            .field("peer_disk", peer_disk.map_or("DUnknown", |d| d.as_str())),
            |_, e| e,
        );
        self.update(|_| {});
    }
}

impl Replicator {
    /// Until this resource's `resync-rate` allows the next resync answer (at once without one).
    pub(crate) async fn wait_resync_rate(&self) {
        if self.cfg.repl.resync_rate_bytes_per_s.is_none() {
            return;
        }
        let at = *self
            .resync_rate_next_free
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tokio::time::sleep_until(at.into()).await;
    }

    /// Charge `bytes` of resync data just queued against `resync-rate` (zero ranges cost a
    /// header and are free). No credit is kept for idle time, so a pause is not a burst.
    pub(crate) fn charge_resync_rate(&self, bytes: u64) {
        let Some(rate) = self.cfg.repl.resync_rate_bytes_per_s.filter(|r| *r > 0) else {
            return;
        };
        let mut next = self
            .resync_rate_next_free
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(Instant::now());
        *next = start + std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
    }
}

impl Replicator {
    /// Where the peer is reached now.
    pub fn peer_address(&self) -> Option<std::net::SocketAddr> {
        *self.peer_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `drl adjust` with a new `address` for the peer: later connection attempts go there,
    /// and a live session is dropped (it reached the old address) so the pair reconnects at
    /// once, as a renegotiation does: this node's role stays, the bitmap resyncs what was
    /// written meanwhile. True when the address changed.
    pub fn set_peer_address(&self, addr: std::net::SocketAddr) -> bool {
        {
            let mut a = self.peer_addr.lock().unwrap_or_else(|p| p.into_inner());
            if *a == Some(addr) {
                return false;
            }
            *a = Some(addr);
        }
        let link = self.state().link.clone();
        tracing::info!(resource = %self.name, peer = %self.peer_node(), address = %addr, "peer address changed: reconnecting there");
        self.renegotiate_link(link, "the peer's address changed");
        true
    }
}

impl Replicator {
    /// Whether a live session connects this node to its peer, and the peer's role as that
    /// session knows it (auto-promote's condition).
    pub fn peer_view(&self) -> (bool, Option<Role>) {
        let st = self.state();
        let live = st.link.as_ref().is_some_and(|l| !l.is_closed());
        (live && st.conn == ConnState::Connected, st.peer_role)
    }
}
