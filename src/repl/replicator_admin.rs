//! The admin operations of a replicated resource (primary, secondary, connect, disconnect)
//! and its status fields.

use super::*;

impl Replicator {
    // ---- admin operations ----

    /// `drl primary RES [--force]`.
    pub async fn primary(&self, force: bool) -> Result<(), ReplError> {
        let sb = self.meta.superblock();
        if sb.role == meta::Role::Primary {
            return Ok(());
        }
        let (connected, peer_role, repl) = {
            let st = self.state();
            (
                st.link.as_ref().is_some_and(|l| !l.is_closed()) && st.peer_role.is_some(),
                st.peer_role,
                st.repl,
            )
        };
        if connected && peer_role == Some(Role::Primary) {
            return Err(self.refused(
                "the peer is Primary: demote it first (two Primaries would overwrite each other)",
            ));
        }
        if connected && repl == ReplState::SyncTarget {
            return Err(self
                .refused("this node is SyncTarget: its data is incomplete until the resync ends"));
        }
        let good = sb.disk_state == meta::DiskState::UpToDate;
        if !good && !force {
            return Err(self.refused(format!(
                "local disk is {}: use --force to promote it anyway (it becomes the source of truth)",
                sb.disk_state.as_str()
            )));
        }
        // DRBD: a Primary with a connected, in-sync peer keeps the generation (a new one
        // starts when it loses the peer); promoting without the peer, or promoting data that
        // was not UpToDate, starts a new one.
        let new_gen = !connected || !good;
        if !connected && !force {
            return Err(self.refused(format!(
                "the peer {} is not connected: use --force to promote without it (starts a new data generation)",
                self.peer_node()
            )));
        }
        self.update_meta(|sb| {
            if new_gen {
                let mut g = gen_of(sb.gen);
                g.new_current_on_promote_without_peer();
                sb.gen = gen_to_meta(g);
            }
            sb.role = meta::Role::Primary;
            sb.disk_state = meta::DiskState::UpToDate;
            sb.flags |= flags::WAS_PRIMARY;
            sb.flags &= !flags::CRASHED_PRIMARY;
        })?;
        if connected && new_gen {
            // The generation changed under a live connection: handshake again so both
            // sides decide the (initial) sync from the new generation ids.
            self.renegotiate("promoted with a new data generation");
        }
        Ok(())
    }

    /// `drl secondary RES`.
    pub async fn secondary(&self) -> Result<(), ReplError> {
        if self.meta.superblock().role == meta::Role::Secondary {
            return Ok(());
        }
        self.flush().await.map_err(|source| ReplError::Volume {
            res: self.name.clone(),
            source,
        })?;
        self.update_meta(|sb| {
            sb.role = meta::Role::Secondary;
            sb.flags &= !flags::WAS_PRIMARY;
        })
    }

    /// `drl connect RES [--discard-my-data]`.
    pub fn connect(&self, discard_my_data: bool) -> Result<(), ReplError> {
        if discard_my_data && self.meta.superblock().role == meta::Role::Primary {
            return Err(
                self.refused("--discard-my-data on a Primary: demote it first (drl secondary)")
            );
        }
        self.update(|st| {
            st.standalone = false;
            st.discard_my_data = discard_my_data;
            st.split_brain = None;
            if st.link.is_none() {
                st.conn = ConnState::Connecting;
            }
        });
        self.wake.notify_waiters();
        Ok(())
    }

    /// `drl disconnect RES`.
    pub fn disconnect(&self) {
        let link = {
            let mut st = self.state();
            st.standalone = true;
            st.link.clone()
        };
        if let Some(l) = link {
            l.push(&Frame::Disconnect {
                reason: "administrative disconnect".into(),
            });
            l.close("administrative disconnect");
        }
        self.update(|st| {
            if st.link.is_none() {
                st.conn = ConnState::StandAlone;
            }
        });
        self.wake.notify_waiters();
    }

    /// Drop the current connection and handshake again at once.
    pub(crate) fn renegotiate(&self, why: &str) {
        let link = {
            let mut st = self.state();
            st.renegotiate = true;
            st.link.clone()
        };
        if let Some(l) = link {
            l.push(&Frame::Disconnect {
                reason: format!("renegotiate: {why}"),
            });
            l.close(format!("renegotiate: {why}"));
        }
        self.wake.notify_waiters();
    }

    // ---- status ----

    /// The replication fields of `status` (merged into the resource's object).
    pub fn status_fields(&self) -> Value {
        let sb = self.meta.superblock();
        let st = self.state();
        let oos = self.bitmap.dirty_bytes();
        let (send_queue, lag, inflight) = match &st.link {
            Some(l) => {
                let t = l.tracker();
                (
                    t.buffered_bytes(),
                    t.lag_ms(self.now_ms()),
                    t.inflight_writes(),
                )
            }
            None => (0, 0, 0),
        };
        let resyncing = matches!(st.repl, ReplState::SyncSource | ReplState::SyncTarget);
        let (percent, eta_s) = if resyncing && st.resync_total_bytes > 0 {
            let done = st.resync_total_bytes.saturating_sub(oos);
            let pct = done as f64 * 100.0 / st.resync_total_bytes as f64;
            let el = st.resync_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let eta = if done > 0 {
                Some((el * oos as f64 / done as f64).round() as u64)
            } else {
                None
            };
            (Some((pct * 10.0).round() / 10.0), eta)
        } else {
            (None, None)
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "role": sb.role.as_str(),
            "disk": sb.disk_state.as_str(),
            "connection": st.conn.as_str(),
            "replication": st.repl.as_str(),
            "peer_role": st.peer_role.map(|r| r.as_str()),
            "peer_disk": st.peer_disk.map(|d| d.as_str()),
            "out_of_sync_bytes": oos,
            "send_queue_bytes": send_queue,
            "inflight_writes": inflight,
            "sent_bytes": g(&self.stats.sent_bytes),
            "received_bytes": g(&self.stats.received_bytes),
            "resync_bytes_sent": g(&self.stats.resync_bytes_sent),
            "resync_bytes_received": g(&self.stats.resync_bytes_received),
            "resync_zero_bytes": g(&self.stats.resync_zero_bytes),
            "resync_percent": percent,
            "resync_eta_s": eta_s,
            "lag_ms": lag,
            "on_congestion": self.cfg.repl.on_congestion.as_str(),
            "max_buffer_bytes": self.cfg.repl.max_buffer_bytes,
            "ahead": st.repl == ReplState::Ahead,
            "split_brain": st.split_brain,
            "last_error": st.last_error,
            "protocol_errors": g(&self.stats.protocol_errors),
            "connects": g(&self.stats.connects),
            "generation": {
                "current": format!("{:016X}", sb.gen.current),
                "bitmap": format!("{:016X}", sb.gen.bitmap),
                "history": [format!("{:016X}", sb.gen.history[0]), format!("{:016X}", sb.gen.history[1])],
            },
        })
    }
}
