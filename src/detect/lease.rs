//! One protection scope's authority: its lease key in etcd (`/drl/<cluster>/scope/<resource>/
//! primary`, value: the holder's node name, attached to the holder's lease) and the task that
//! keeps it.
//!
//! - A Primary holds the key and renews its lease `DETECT_LEASE_RENEWS_PER_TTL_COUNT` times per
//!   TTL; each renewal that gets through opens its [`Fence`] until send time + TTL - margin.
//!   A Primary that cannot renew fences itself when that deadline passes. When it reaches etcd
//!   again and finds the key elsewhere, it becomes Secondary with an Outdated disk (its held
//!   writes fail: none was acknowledged) and resyncs from the new Primary like after a fail
//!   back.
//! - A node that does not hold the key reads it every `DETECT_LEASE_POLL_MS` (and at once when
//!   a site changes health). It takes the key only when it is free in etcd (the old lease
//!   expired, which needs a majority of members), the node that held it last is in a site this
//!   node suspects, and this node's disk is UpToDate. Then, with `auto-promote`, it promotes
//!   its resource; without it, it keeps the key for the orchestrator (`Scope::holds`).
//! - An admin's `drl primary` takes the key first (`Scope::acquire_for_promotion`); `drl
//!   secondary` gives it back (the lease is revoked).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drbd_compat::Role;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::core::Health;
use super::etcd::{unix_ms, Etcd, EtcdError, Take};
use super::fence::Fence;
use super::pinger::Probes;
use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::detect::options::DetectConfig;
use crate::limits::{
    DETECT_LEASE_POLL_MS, DETECT_LEASE_RENEWS_PER_TTL_COUNT, DETECT_LOG_LINES_PER_S,
};
use crate::logrl::LogLimiter;
use crate::repl::replicator::Replicator;
use crate::volume::meta;

/// What `drl detect status` shows of a scope.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LeaseView {
    pub scope: String,
    pub key: String,
    /// The node whose name the key holds (None: free, or not read yet).
    pub holder: Option<String>,
    pub held_by_me: bool,
    /// How long the holder's lease has left, as etcd or (for this node's own) our clock says.
    pub expires_in_ms: Option<u64>,
    pub renewed_unix_ms: Option<u64>,
    /// The node that held the key last while this node watched (takeover needs it suspected).
    pub last_peer_holder: Option<String>,
    pub fence_open: bool,
    pub fenced_writes: u64,
    pub last_error: Option<String>,
}

pub struct Scope {
    pub resource: String,
    key: String,
    me: String,
    peer_node: String,
    peer_site: String,
    cfg: Arc<DetectConfig>,
    repl: Arc<Replicator>,
    pub fence: Arc<Fence>,
    etcd: Arc<Etcd>,
    probes: Arc<Probes>,
    events: EventBus,
    /// The lease this node holds the key with. Held for a whole round, so an admin's
    /// promotion and the task never act on the key at once.
    lease: tokio::sync::Mutex<Option<i64>>,
    view: Mutex<LeaseView>,
    holds_tx: watch::Sender<bool>,
    /// Took the key over with `auto-promote`, not promoted yet.
    promote_pending: AtomicBool,
    /// The key named this node while it was Secondary: held before a restart (a takeover or
    /// promotion whose daemon was restarted; a restarted daemon comes up Secondary).
    held_before_restart: AtomicBool,
    /// The key was read once since the daemon started.
    looked: AtomicBool,
    rl: LogLimiter,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the lease of {scope} is held by {holder}")]
    HeldBy { scope: String, holder: String },
    #[error("cannot take the lease of {scope}: {source}")]
    Etcd {
        scope: String,
        #[source]
        source: EtcdError,
    },
}

impl Scope {
    pub fn new(
        cfg: Arc<DetectConfig>,
        repl: Arc<Replicator>,
        etcd: Arc<Etcd>,
        probes: Arc<Probes>,
        events: EventBus,
    ) -> Arc<Scope> {
        let resource = repl.name().to_owned();
        let peer_node = repl
            .cfg
            .peer
            .as_ref()
            .map(|p| p.node.clone())
            .unwrap_or_default();
        let peer_site = cfg.site_of(&peer_node).unwrap_or_default().to_owned();
        let key = format!("/drl/{}/scope/{}/primary", cfg.cluster, resource);
        let fence = Arc::new(Fence::new(&resource, cfg.on_no_quorum));
        Arc::new(Scope {
            view: Mutex::new(LeaseView {
                scope: resource.clone(),
                key: key.clone(),
                ..Default::default()
            }),
            me: cfg.me.node.clone(),
            resource,
            key,
            peer_node,
            peer_site,
            repl,
            fence,
            etcd,
            probes,
            events,
            lease: tokio::sync::Mutex::new(None),
            holds_tx: watch::channel(false).0,
            promote_pending: AtomicBool::new(false),
            held_before_restart: AtomicBool::new(false),
            looked: AtomicBool::new(false),
            rl: LogLimiter::new(DETECT_LOG_LINES_PER_S),
            cfg,
        })
    }

    /// Whether this node holds the scope's key now, as a watch: the orchestrator's signal that
    /// it may recover the scope here (every change is also a `lease` event).
    pub fn holds(&self) -> watch::Receiver<bool> {
        self.holds_tx.subscribe()
    }

    pub fn view(&self) -> LeaseView {
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.fence_open = self.fence.is_open();
        v.fenced_writes = self
            .fence
            .fenced_writes
            .load(std::sync::atomic::Ordering::Relaxed);
        if v.held_by_me {
            v.expires_in_ms = self.fence.open_until_instant().map(|t| {
                (t.saturating_duration_since(Instant::now()).as_millis() as u64)
                    + self.cfg.fence_margin_ms()
            });
        }
        v
    }

    fn set_view(&self, f: impl FnOnce(&mut LeaseView)) {
        f(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn event(&self, action: &str, extra: &[(&str, Value)]) {
        let v = self.view();
        tracing::info!(resource = %self.resource, action, holder = ?v.holder, "lease");
        let mut e = Event::new(EventKind::Change, ObjectKind::Lease, &self.resource)
            .field("action", action)
            .field("holder", v.holder.clone())
            .field("held_by_me", v.held_by_me)
            .field("node", self.me.clone());
        for (k, val) in extra {
            e = e.field(k, val.clone());
        }
        self.events.publish(e);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.cfg.lease_ttl_ms)
    }

    fn fence_deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl() - Duration::from_millis(self.cfg.fence_margin_ms())
    }

    /// Grant a lease and put the key with it, if free.
    async fn acquire(&self, lease: &mut Option<i64>) -> Result<(), AcquireError> {
        let etcd_err = |source| AcquireError::Etcd {
            scope: self.resource.clone(),
            source,
        };
        let ttl_s = (self.cfg.lease_ttl_ms / 1000) as i64;
        let (id, sent) = self.etcd.grant(ttl_s).await.map_err(etcd_err)?;
        match self.etcd.take(&self.key, &self.me, id).await {
            Ok(Take::Taken) => {
                *lease = Some(id);
                self.fence.open_until(self.fence_deadline(sent));
                self.set_view(|v| {
                    v.holder = Some(self.me.clone());
                    v.held_by_me = true;
                    v.renewed_unix_ms = Some(unix_ms());
                    v.last_error = None;
                });
                self.holds_tx.send_replace(true);
                self.event("acquired", &[]);
                Ok(())
            }
            Ok(Take::HeldBy(h)) => {
                let _ = self.etcd.revoke(id).await;
                self.set_view(|v| v.holder = Some(h.clone()));
                Err(AcquireError::HeldBy {
                    scope: self.resource.clone(),
                    holder: h,
                })
            }
            Err(e) => {
                let _ = self.etcd.revoke(id).await;
                Err(etcd_err(e))
            }
        }
    }

    /// Before an admin's (or the orchestrator's) promotion: hold the key, or say why not.
    /// `Ok(true)`: taken just now (give it back with [`Self::release`] if the promotion fails).
    pub async fn acquire_for_promotion(&self) -> Result<bool, AcquireError> {
        let mut lease = self.lease.lock().await;
        if lease.is_some() {
            return Ok(false);
        }
        self.acquire(&mut lease).await.map(|()| true)
    }

    /// Give the key back (demoted, or a promotion that failed after taking it).
    pub async fn release(&self, why: &str) {
        let mut lease = self.lease.lock().await;
        let Some(id) = lease.take() else { return };
        self.fence.close();
        if let Err(e) = self.etcd.revoke(id).await {
            tracing::warn!(resource = %self.resource, "could not revoke the lease (it expires by itself): {e}");
        }
        self.set_view(|v| {
            v.held_by_me = false;
            v.holder = None;
        });
        self.holds_tx.send_replace(false);
        self.event("released", &[("reason", why.into())]);
    }

    /// Keep the key until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let renew =
            Duration::from_millis(self.cfg.lease_ttl_ms / DETECT_LEASE_RENEWS_PER_TTL_COUNT);
        let poll = Duration::from_millis(DETECT_LEASE_POLL_MS);
        let mut was_primary = self.repl.role() == Role::Primary;
        let mut fence_was_open = false;
        let mut etcd_ok = true;
        loop {
            let primary = self.repl.role() == Role::Primary;
            if was_primary && !primary {
                self.release("demoted to Secondary").await;
            }
            was_primary = primary;
            let (holding, round_ok) = {
                let mut lease = self.lease.lock().await;
                let r = match *lease {
                    Some(id) => self.renew(&mut lease, id).await,
                    None => self.look(&mut lease, primary).await,
                };
                match (&r, etcd_ok) {
                    (Err(e), true) => {
                        tracing::error!(resource = %self.resource, "etcd: {e}; no lease can be taken or renewed until a majority of members answers");
                        self.event("etcd-unreachable", &[("error", e.to_string().into())]);
                        etcd_ok = false;
                    }
                    (Ok(()), false) => {
                        self.event("etcd-reachable", &[]);
                        etcd_ok = true;
                    }
                    _ => {}
                }
                let round_ok = r.is_ok();
                if let Err(e) = r {
                    crate::warn_rl!(self.rl, resource = %self.resource, "lease: {e}");
                    self.set_view(|v| v.last_error = Some(e.to_string()));
                }
                (lease.is_some(), round_ok)
            };
            if holding {
                self.try_promote().await;
                self.resolve_split_brain();
            }
            let primary = self.repl.role() == Role::Primary;
            let open = self.fence.is_open();
            if primary && open != fence_was_open {
                if open {
                    self.event("unfenced", &[]);
                } else {
                    // The gate closed by itself at its deadline, maybe while this task waited
                    // for etcd: say when.
                    let at = self.fence.closed_since().map_or_else(unix_ms, |ago| {
                        unix_ms().saturating_sub(ago.as_millis() as u64)
                    });
                    self.event("fenced", &[("fenced_at_unix_ms", at.into())]);
                }
            }
            fence_was_open = open && primary;
            // Wake up for the next renewal (soon again after a failed one: a renewal that
            // waited a whole interval after a cut could come too late for the lease), and
            // right after the fence deadline (its event).
            let mut wait = if holding && round_ok { renew } else { poll };
            if let Some(t) = self.fence.open_until_instant() {
                let left = t.saturating_duration_since(Instant::now());
                if open && left < wait {
                    wait = left + Duration::from_millis(1);
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.probes.changed.notified(), if !holding => {}
            }
        }
    }

    async fn renew(&self, lease: &mut Option<i64>, id: i64) -> Result<(), EtcdError> {
        let (ttl, sent) = self.etcd.keep_alive(id).await?;
        if ttl > 0 {
            self.fence.open_until(self.fence_deadline(sent));
            self.set_view(|v| {
                v.renewed_unix_ms = Some(unix_ms());
                v.last_error = None;
            });
            return Ok(());
        }
        // The lease expired in etcd (we were cut off too long): the key is gone with it.
        *lease = None;
        self.fence.close();
        self.set_view(|v| {
            v.held_by_me = false;
            v.holder = None;
        });
        self.holds_tx.send_replace(false);
        self.event("expired", &[]);
        Ok(())
    }

    async fn look(&self, lease: &mut Option<i64>, primary: bool) -> Result<(), EtcdError> {
        let holder = self.etcd.holder(&self.key).await?;
        let first_look = !self.looked.swap(true, Ordering::AcqRel);
        self.set_view(|v| {
            v.holder = holder.as_ref().map(|h| h.0.clone());
            v.expires_in_ms = holder.as_ref().and_then(|h| h.1);
            v.last_error = None;
            if let Some((h, _)) = &holder {
                if *h != self.me {
                    v.last_peer_holder = Some(h.clone());
                }
            }
        });
        match holder {
            Some((h, _)) if h != self.me => {
                if primary {
                    self.demote(&h).await;
                }
                Ok(())
            }
            // Free, or still naming this node from before a restart: a Primary takes it.
            _ if primary => self.acquire_or_report(lease).await,
            Some(_) => {
                // At start, this node held it before a restart (it comes back Secondary):
                // once that lease expires, the takeover rule applies as if the peer had held
                // it last (so a recovery the restart interrupted resumes).
                if first_look {
                    self.held_before_restart.store(true, Ordering::Release);
                }
                Ok(())
            }
            None => {
                if self.may_take_over() {
                    self.take_over(lease).await?;
                }
                Ok(())
            }
        }
    }

    async fn acquire_or_report(&self, lease: &mut Option<i64>) -> Result<(), EtcdError> {
        match self.acquire(lease).await {
            Ok(()) => Ok(()),
            Err(AcquireError::HeldBy { .. }) => Ok(()),
            Err(AcquireError::Etcd { source, .. }) => Err(source),
        }
    }

    /// The key is free: may this Secondary take it?
    fn may_take_over(&self) -> bool {
        let last = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_peer_holder
            .clone();
        let mine_before = last.is_none() && self.held_before_restart.load(Ordering::Acquire);
        if last.as_deref() != Some(self.peer_node.as_str()) && !mine_before {
            return false;
        }
        let suspected = matches!(
            self.probes.site_health(&self.peer_site),
            Some(Health::Suspected | Health::Down)
        );
        suspected && self.repl.disk_state() == drbd_compat::DiskState::UpToDate
    }

    async fn take_over(&self, lease: &mut Option<i64>) -> Result<(), EtcdError> {
        match self.acquire(lease).await {
            Ok(()) => {}
            Err(AcquireError::HeldBy { .. }) => return Ok(()),
            Err(AcquireError::Etcd { source, .. }) => return Err(source),
        }
        self.event(
            "takeover",
            &[
                ("from", self.peer_node.clone().into()),
                ("peer_site", self.peer_site.clone().into()),
            ],
        );
        if self.cfg.auto_promote {
            self.promote_pending.store(true, Ordering::Release);
            self.try_promote().await;
        }
        Ok(())
    }

    /// Before promoting with the key held: a silent cut is noticed by the replication session
    /// only when its timeouts run out, and until then it still sees the old Primary. This node
    /// holds the lease, so the old Primary fenced itself before its lease expired: drop that
    /// session (the service reconnects at once, and the handshake decides the resync).
    pub async fn drop_stale_session(&self) {
        let stale = self.repl.state().peer_role == Some(Role::Primary);
        if stale && self.view().held_by_me {
            tracing::info!(resource = %self.resource, peer = %self.peer_node, "dropping the session with the old Primary before promoting");
            self.repl.disconnect().await;
            let _ = self.repl.connect(false);
        }
    }

    /// Promote after a takeover; tried again every round until it works (or the key goes).
    async fn try_promote(&self) {
        if !self.promote_pending.load(Ordering::Acquire) {
            return;
        }
        if self.repl.role() == Role::Primary {
            self.promote_pending.store(false, Ordering::Release);
            return;
        }
        self.drop_stale_session().await;
        match self.repl.primary(true).await {
            Ok(()) => {
                self.promote_pending.store(false, Ordering::Release);
                self.event("promoted", &[]);
            }
            Err(e) => {
                crate::warn_rl!(self.rl, resource = %self.resource, "automatic promotion failed (tried again): {e}");
                self.event("promote-failed", &[("error", e.to_string().into())]);
            }
        }
    }

    /// This Primary found the key elsewhere: it was cut off and another node took over.
    async fn demote(&self, holder: &str) {
        self.fence.demote();
        tracing::warn!(resource = %self.resource, holder, "the lease is held elsewhere: demoting to Secondary (Outdated); the new Primary's data wins");
        if let Err(e) = self.repl.secondary().await {
            tracing::error!(resource = %self.resource, "demotion failed: {e}");
        }
        if let Err(e) = self
            .repl
            .update_meta(|sb| sb.disk_state = meta::DiskState::Outdated)
        {
            tracing::error!(resource = %self.resource, "marking the disk Outdated failed: {e}");
        }
        // Its changes since the cut were never acknowledged after the fence and lose to the
        // lease holder's: if the reconnect already met a split brain, resolve it this way.
        if let Err(e) = self.repl.connect(true) {
            tracing::error!(resource = %self.resource, "connect --discard-my-data after the demotion: {e}");
        }
        self.event("demoted", &[("new_holder", holder.into())]);
    }

    /// The lease holder is the authority: a split brain with the old Primary (which reconnected
    /// before it learnt it was demoted) is resolved towards this node, as `drl connect` on the
    /// survivor after `--discard-my-data` on the victim.
    fn resolve_split_brain(&self) {
        let sb = self.repl.state().split_brain.is_some();
        if sb && self.repl.role() == Role::Primary {
            tracing::info!(resource = %self.resource, "split brain with the old Primary: this node holds the lease, connecting again (the old Primary discards its data once demoted)");
            let _ = self.repl.connect(false);
        }
    }
}
