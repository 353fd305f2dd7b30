//! The admin operations of a replicated resource (primary, secondary, connect, disconnect)
//! and its status fields.

use super::*;
use crate::limits::{
    REPL_ADMIN_DECISION_WAIT_MS, REPL_PEER_TIMEOUT_MS, REPL_STATE_ACK_TIMEOUT_MS,
    REPL_VERIFY_RATE_MIN,
};
use std::time::Duration;

impl Replicator {
    // ---- admin operations ----

    /// `drl primary RES [--force]`.
    pub async fn primary(&self, force: bool) -> Result<(), ReplError> {
        if self.meta.superblock().role == meta::Role::Primary {
            return Ok(());
        }
        let connected = {
            let st = self.state();
            st.link.as_ref().is_some_and(|l| !l.is_closed()) && st.peer_role.is_some()
        };
        if connected {
            self.promotion_may_go().await?;
        }
        let sb = self.meta.superblock();
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
        // Over a live link, writes wait from the moment the superblock says Primary until the
        // peer confirmed it or the link closed ([`Self::promotion_settled`]).
        if connected {
            self.promoting.store(true, Ordering::Release);
        }
        let r = self.update_meta(|sb| {
            if new_gen {
                let mut g = gen_of(sb.gen);
                g.new_current_on_promote_without_peer();
                sb.gen = gen_to_meta(g);
            }
            sb.role = meta::Role::Primary;
            sb.disk_state = meta::DiskState::UpToDate;
            sb.flags |= flags::WAS_PRIMARY;
            sb.flags &= !flags::CRASHED_PRIMARY;
        });
        if r.is_err() {
            self.promoting.store(false, Ordering::Release);
        }
        r?;
        if new_gen {
            // The generation changed: a session whose Hello carried the old one (connected
            // before, or one whose handshake was running: `connected` was false then, but
            // its link may be up by now) must handshake again so both sides decide the
            // (initial) sync from the new generation ids. The session checks the same on
            // its side right after its link is up (`session::run`), so whichever of the two
            // comes second sees the other: no interleaving leaves a stale decision standing.
            let before = self.state().session;
            if self.renegotiate_if_stale("promoted with a new data generation") {
                // Return on the state the promotion causes, not the old session's: once a
                // later session (the peer has seen the new generation) decided the sync.
                self.sync_decided_after(before).await;
                self.promotion_settled_now();
                return Ok(());
            }
        }
        self.peer_learns_role().await;
        // Confirmed or closed: writes go at once. Not confirmed in time over a live link:
        // the first write waits for it.
        self.promotion_settled_now();
        Ok(())
    }

    /// Whether a promotion is settled now ([`crate::repl::state::promotion_settled`]); if so,
    /// writes no longer wait for it.
    fn promotion_settled_now(&self) -> bool {
        let link = self.state().link.clone();
        let settled = crate::repl::state::promotion_settled(
            link.as_ref().is_some_and(|l| !l.is_closed()),
            link.as_ref().is_none_or(|l| l.state_confirmed_now()),
        );
        if settled {
            self.promoting.store(false, Ordering::Release);
        }
        settled
    }

    /// Application writes wait here while a promotion over a live link is unconfirmed (issue
    /// 12, the two-Primary window): two nodes promoted at the same instant then never both
    /// acknowledge while connected; their StateChanges cross and both drop the link, and the
    /// next connect finds the split brain. A peer that reads its socket confirms within a
    /// round trip; a dead one is found by liveness, which closes the link.
    pub(crate) async fn promotion_settled(&self) {
        while self.promoting.load(Ordering::Acquire) && !self.promotion_settled_now() {
            let Some(link) = self.state().link.clone() else {
                continue;
            };
            link.state_confirmed(Duration::from_millis(REPL_STATE_ACK_TIMEOUT_MS))
                .await;
        }
    }

    /// The rules of a promotion over a live link ([`crate::repl::state::promotion`]): refused
    /// while the peer is Primary or this node SyncTarget; held while writes received from the
    /// old Primary are still landing (bounded by [`REPL_PEER_TIMEOUT_MS`], then refused), so
    /// no write of the new Primary is overtaken by an older one on this disk.
    async fn promotion_may_go(&self) -> Result<(), ReplError> {
        use crate::repl::state::{promotion, Promotion};
        let deadline = tokio::time::Instant::now() + Duration::from_millis(REPL_PEER_TIMEOUT_MS);
        loop {
            // Read again on every round: the peer's role may change while this waits.
            let (link, peer_role, repl) = {
                let st = self.state();
                (st.link.clone(), st.peer_role, st.repl)
            };
            let Some(link) = link.filter(|l| !l.is_closed()) else {
                // Decided as a connected promotion (the generation kept): without the link
                // that would be wrong, so the admin asks again and it is decided anew.
                return Err(self.refused(
                    "the connection to the peer closed during the promotion: run it again",
                ));
            };
            let rx_idle = link.rx_idle.load(Ordering::Acquire);
            match promotion(peer_role, repl, rx_idle) {
                Promotion::Go => return Ok(()),
                Promotion::Refuse(why) => return Err(self.refused(why)),
                Promotion::WaitForReceivedWrites => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.refused(format!(
                    "the writes received from the old Primary did not reach the disk within {REPL_PEER_TIMEOUT_MS} ms: try again"
                )));
            }
            // The session loop updates `rx_idle` after each step; a short poll, as online
            // verify waits for the same (`verify::provide`), cut short if the link closes.
            let closed = link.closed_notify.notified();
            let _ = tokio::time::timeout(Duration::from_millis(5), closed).await;
        }
    }

    /// Wait until a session later than `session` has acted on its sync decision (bounded by
    /// [`REPL_ADMIN_DECISION_WAIT_MS`]; a peer that does not come back in time learns the
    /// change at its next handshake, the local change stands).
    pub(crate) async fn sync_decided_after(&self, session: u64) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(REPL_ADMIN_DECISION_WAIT_MS);
        loop {
            // Registered before the check: a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (decided, standalone) = {
                let st = self.state();
                (st.decided_session > session, st.standalone)
            };
            if decided || standalone {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(resource = %self.name, peer = %self.peer_node(),
                    "no new session decided the sync within {REPL_ADMIN_DECISION_WAIT_MS} ms of the change (a promotion, a grown size); the peer learns it at its next handshake");
                return;
            }
        }
    }

    /// `drl secondary RES`.
    pub async fn secondary(&self) -> Result<(), ReplError> {
        if self.meta.superblock().role == meta::Role::Secondary {
            return Ok(());
        }
        self.flush_all().await.map_err(|source| ReplError::Volume {
            res: self.name.clone(),
            source,
        })?;
        self.update_meta(|sb| {
            sb.role = meta::Role::Secondary;
            sb.flags &= !flags::WAS_PRIMARY;
        })?;
        self.peer_learns_role().await;
        Ok(())
    }

    /// After a role change: wait (bounded) until a connected peer has applied it, as DRBD
    /// changes roles cluster-wide. Then `drl secondary` on one node and `drl primary` on the
    /// other just work, and the peer's `status` already shows the new role. Without a live
    /// link there is nothing to wait for: the next handshake carries the role. A peer that
    /// does not confirm in time is logged; the local change stands either way.
    async fn peer_learns_role(&self) {
        let Some(link) = self.state().link.clone() else {
            return;
        };
        let timeout = Duration::from_millis(REPL_STATE_ACK_TIMEOUT_MS);
        if !link.state_confirmed(timeout).await && !link.is_closed() {
            tracing::warn!(resource = %self.name, peer = %self.peer_node(),
                "the peer did not confirm the role change within {REPL_STATE_ACK_TIMEOUT_MS} ms (a congested link?); it learns it when it reads the queued StateChange");
        }
    }

    /// `drl verify RES`: start an online verify with this node as VerifyS (see
    /// [`crate::repl::verify`]). Returns once it runs; `status` follows it.
    pub fn verify(self: &Arc<Self>, rate: u64) -> Result<(), ReplError> {
        if rate < REPL_VERIFY_RATE_MIN {
            return Err(self.refused(format!(
                "verify rate {rate} B/s is below the minimum {REPL_VERIFY_RATE_MIN} B/s"
            )));
        }
        // Checked and switched to VerifyS under one lock (and with its event): a session
        // that changes the replication state in between cannot be overwritten.
        let mut started = Err(String::new());
        self.update(|st| started = self.start_verify(st, rate));
        let id = started.map_err(|what| self.refused(what))?;
        tracing::info!(resource = %self.name, peer = %self.peer_node(), run = id, "online verify started (VerifyS)");
        Ok(())
    }

    /// Checks, then hands the run to the live session's core (which walks it, see
    /// `repl::core::verify`) and shows VerifyS; the run's end reports
    /// ([`crate::repl::verify::report`]).
    fn start_verify(&self, st: &mut State, rate: u64) -> Result<u64, String> {
        let live = matches!(&st.link, Some(l) if !l.is_closed() && st.conn == ConnState::Connected);
        let tx = match &st.verify_tx {
            Some(tx) if live => tx.clone(),
            _ => {
                return Err(format!(
                    "not connected to {}: online verify compares with the peer",
                    self.peer_node()
                ))
            }
        };
        if st.verify.is_some() {
            return Err("this node's online verify is already running".into());
        }
        // The peer's run may go on meanwhile (each frame says whose run it belongs to).
        if !matches!(st.repl, ReplState::Established | ReplState::VerifyT) {
            return Err(format!(
                "replication is {}: online verify needs Established (a resync or pull-ahead finishes first)",
                st.repl
            ));
        }
        if st.peer_features & crate::repl::wire::features::VERIFY == 0 {
            return Err(format!(
                "the peer {} runs a drl without online verify: upgrade it first",
                self.peer_node()
            ));
        }
        // A fresh number for every run: answers to an earlier run can never be taken for it.
        let id = rand::random::<u64>().max(1);
        // Room for one: the session takes each command at once, and a second run is refused
        // above until this one reported.
        tx.try_send((id, rate))
            .map_err(|_| "the session is busy starting a verify run; try again".to_string())?;
        st.verify = Some(crate::repl::verify::VerifyProgress::new(
            "VerifyS",
            id,
            self.total_bytes(),
        ));
        crate::repl::verify::settle(st);
        Ok(id)
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

    /// `drl disconnect RES`: returns once the connection is gone (StandAlone), as DRBD's
    /// does, or after [`REPL_STATE_ACK_TIMEOUT_MS`] if the session takes longer to finish
    /// (it applies what it already received first).
    pub async fn disconnect(&self) {
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
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(REPL_STATE_ACK_TIMEOUT_MS);
        loop {
            // Registered before the check: a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state().conn == ConnState::StandAlone
                || tokio::time::timeout_at(deadline, changed).await.is_err()
            {
                return;
            }
        }
    }

    /// What changed locally since `sent` (a Hello) was built: `None`, a role change only
    /// (a StateChange frame tells the peer), or a change of disk state or generation ids
    /// (the sync decision taken on `sent` is stale: handshake again).
    pub(crate) fn changed_since(&self, sent: &Announced) -> Option<Staleness> {
        let now = Announced::from(&crate::repl::session::local_info(self));
        if now.gen != sent.gen || now.disk != sent.disk {
            Some(Staleness::Data)
        } else if now.role != sent.role {
            Some(Staleness::Role(now))
        } else {
            None
        }
    }

    /// Handshake again if the live session's Hello no longer matches this node's state
    /// (see [`Self::changed_since`]); the state is read before the link, so a session whose
    /// link appears later checks it itself.
    /// True if a live session was dropped for it.
    pub(crate) fn renegotiate_if_stale(&self, why: &str) -> bool {
        let now = crate::repl::session::local_info(self);
        let link = {
            let st = self.state();
            match (&st.link, st.announced) {
                (Some(l), Some(a)) if !l.is_closed() && Announced::from(&now) != a => {
                    Some(l.clone())
                }
                _ => None,
            }
        };
        let stale = link.is_some();
        if let Some(l) = link {
            self.renegotiate_link(Some(l), why);
        }
        stale
    }

    /// Drop `link` (if any) and handshake again at once.
    pub(crate) fn renegotiate_link(&self, link: Option<Arc<Link>>, why: &str) {
        self.state().renegotiate = true;
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
        let oos = self.out_of_sync_bytes();
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
        let mut v = json!({
            "role": sb.role.as_str(),
            "disk": sb.disk_state.as_str(),
            "connection": st.conn.as_str(),
            "replication": self.shown_repl(st.repl).as_str(),
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
            "resync_volume": st.resync_volume,
            "resync_eta_s": eta_s,
            "lag_ms": lag,
            "on_congestion": self.cfg.repl.on_congestion.as_str(),
            "max_buffer_bytes": self.cfg.repl.max_buffer_bytes,
            "ahead": st.repl == ReplState::Ahead,
            "split_brain": st.split_brain,
            "verify": st.verify.as_ref().map(verify_json),
            "verify_peer": st.verify_peer.as_ref().map(verify_json),
            "verify_last": st.verify_last,
            "link_lost": st.link_lost,
            "last_error": st.last_error,
            "protocol_errors": g(&self.stats.protocol_errors),
            "tls": self.cfg.tls,
            "peer_refused": crate::repl::tls::refused_json(&self.name),
            // Which certificates the link uses: ours for new connections (changes at `drl
            // adjust` after a rotation), the peer's as presented at the last handshake.
            "tls_cert_sha256": if self.cfg.tls { crate::repl::tls::own_cert_sha256() } else { None },
            "peer_cert_sha256": if self.cfg.tls { crate::repl::tls::peer_cert_sha256(&self.peer_node()) } else { None },
            "connects": g(&self.stats.connects),
            // One authoritative snapshot (all fields above under one lock): `session` counts
            // link ups and closes, so two statuses with the same number describe one session.
            "session": st.session,
            // Activity-log extents a crash now would resync (hot, persisted).
            "al_hot_extents": self.vols().iter().map(|v| v.al.hot_count()).sum::<usize>(),
            "generation": {
                "current": format!("{:016X}", sb.gen.current),
                "bitmap": format!("{:016X}", sb.gen.bitmap),
                "history": [format!("{:016X}", sb.gen.history[0]), format!("{:016X}", sb.gen.history[1])],
            },
        });
        // Online grow (`drl resize`): this node's capacity and the peer's as of the last
        // handshake; the volume's size (`size_bytes`) is the smaller of the two.
        v["capacity_bytes"] = json!(self.capacity_bytes());
        v["peer_capacity_bytes"] = json!(st.peer_size_bytes);
        v
    }
}

/// A verify run in `status`: `verify` (this node's, VerifyS) or `verify_peer` (the peer's,
/// served as VerifyT).
fn verify_json(v: &crate::repl::verify::VerifyProgress) -> Value {
    json!({
        "side": v.side,
        "percent": v.percent(),
        "checked_bytes": v.checked_bytes,
        "differing_blocks": v.differing_blocks,
        "elapsed_s": (v.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}
