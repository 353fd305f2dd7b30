//! Auto-promote (DRBD 9's `auto-promote`, on by default): a replicated Secondary whose data is
//! UpToDate becomes Primary when an NBD client writes to its export, and Secondary again when
//! the last client that wrote leaves: after a daemon restart (which always comes up
//! Secondary) the VMs' reconnects bring their volumes back without an admin.
//!
//! NBD has no "open for writing": a client learns at the handshake whether the export is
//! read-only, and only its requests say what it does. So a *writer* is a connection that sent
//! a write, trim or write-zeroes request; connections that only read (`nbdinfo`, `qemu-io -r`,
//! a backup reading the Secondary) never promote. The export is advertised writable on a
//! Secondary only while a promotion would be allowed at that moment.
//!
//! A promotion must never split the brain, so it happens only when
//! - the peer is connected and Secondary (the StateChange is confirmed by the peer before the
//!   first write runs; with `[detect]` the resource's lease is taken in etcd first, which
//!   arbitrates two nodes promoting at once), or
//! - with `[detect]`, this node already holds the resource's lease (the peer's site was taken
//!   over), connected or not;
//!
//! never while disconnected without the lease. Otherwise the write fails with EPERM, as on any
//! Secondary, and the refusal is logged (rate-limited) with the reason. Without `[detect]`,
//! two nodes whose first writes arrive within one round trip of each other both see a
//! Secondary peer; the session then ends ("the peer became Primary while this node is
//! Primary"), each node sees its promotion unconfirmed and undoes it before any write of its
//! runs, and the pair stays apart for the admin (as `drl primary` on both nodes at once does).
//!
//! Only a promotion made here is undone here: a node the admin promoted stays Primary when
//! its clients leave.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use drbd_compat::{DiskState, Role};

use crate::detect::lease::Scope;
use crate::logrl::LogLimiter;
use crate::repl::replicator::Replicator;
use crate::volume::VolumeError;

pub struct AutoPromote {
    repl: Arc<Replicator>,
    /// The resource's lease scope, with `[detect]`.
    scope: OnceLock<Arc<Scope>>,
    /// NBD connections that have written and not left yet.
    writers: AtomicUsize,
    /// This node is Primary because of a write here (undone when the writers are gone).
    promoted: AtomicBool,
    /// A promotion waits for the peer's confirmation: writes must not run yet.
    confirming: AtomicBool,
    /// One promotion or demotion at a time.
    turn: tokio::sync::Mutex<()>,
    /// The resource is going down or the daemon stops: no demotion is started (a replicated
    /// resource comes up Secondary anyway, and `down` demotes by itself).
    stopping: AtomicBool,
    rl: LogLimiter,
}

impl AutoPromote {
    pub fn new(repl: Arc<Replicator>) -> Arc<AutoPromote> {
        Arc::new(AutoPromote {
            repl,
            scope: OnceLock::new(),
            writers: AtomicUsize::new(0),
            promoted: AtomicBool::new(false),
            confirming: AtomicBool::new(false),
            turn: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            rl: LogLimiter::new(crate::limits::REPL_LOG_LINES_PER_S),
        })
    }

    /// With `[detect]`: promotions need the resource's lease.
    pub fn set_scope(&self, scope: Arc<Scope>) {
        let _ = self.scope.set(scope);
    }

    /// Why a promotion is not allowed now (None: it is).
    fn refusal(&self) -> Option<String> {
        let r = &self.repl;
        if r.disk_state() != DiskState::UpToDate {
            return Some(format!(
                "this node's disk is {}, not UpToDate",
                r.disk_state()
            ));
        }
        let (connected, peer_role) = r.peer_view();
        if connected && peer_role == Some(Role::Secondary) {
            return None;
        }
        if self.scope.get().is_some_and(|s| s.view().held_by_me) {
            return None;
        }
        Some(match (connected, peer_role) {
            (true, Some(Role::Primary)) => "the peer is Primary".to_owned(),
            (true, _) => "the peer's role is not known yet".to_owned(),
            (false, _) if self.scope.get().is_some() => {
                "the peer is not connected and this node does not hold the resource's lease"
                    .to_owned()
            }
            (false, _) => {
                "the peer is not connected (a promotion could split the brain)".to_owned()
            }
        })
    }

    /// Whether the export may be advertised writable on this Secondary now.
    pub fn could_promote(&self) -> bool {
        self.repl.role() == Role::Secondary && self.refusal().is_none()
    }

    pub fn writer_joined(&self) {
        self.writers.fetch_add(1, Ordering::AcqRel);
    }

    pub fn writer_left(self: &Arc<Self>) {
        if self.writers.fetch_sub(1, Ordering::AcqRel) == 1
            && self.promoted.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
        {
            // From a connection task's drop: within the runtime, unless it is going away.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let me = self.clone();
                rt.spawn(async move { me.demote_if_unused().await });
            }
        }
    }

    /// The resource's tasks are stopping: leave the role alone from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Before a write: Primary already (and confirmed), or promote now if a writer asks and
    /// it is safe; otherwise the write is refused as on any Secondary.
    pub async fn ensure_primary(&self) -> Result<(), VolumeError> {
        if self.is_settled_primary() {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        if self.is_settled_primary() {
            return Ok(());
        }
        let refused = |why: String| {
            crate::warn_rl!(self.rl, resource = %self.repl.name(), "auto-promote refused: {why}; the write fails as on any Secondary");
            VolumeError::ReadOnly(self.repl.name().to_owned())
        };
        if self.writers.load(Ordering::Acquire) == 0 {
            return Err(refused("no NBD client is writing".into()));
        }
        if let Some(why) = self.refusal() {
            return Err(refused(why));
        }
        let (connected, _) = self.repl.peer_view();
        // With [detect]: the lease first (etcd lets one node have it).
        let mut took = false;
        if let Some(s) = self.scope.get() {
            match s.acquire_for_promotion().await {
                Ok(t) => took = t,
                Err(e) => return Err(refused(format!("the lease: {e}"))),
            }
        }
        self.confirming.store(true, Ordering::Release);
        let r = self.repl.primary(!connected).await;
        let outcome = match r {
            Err(e) => Err(e.to_string()),
            Ok(()) if connected => {
                // The peer confirmed the StateChange on a live link, still Secondary.
                match self.repl.peer_view() {
                    (true, Some(Role::Secondary)) => Ok(()),
                    _ => Err(
                        "the peer did not confirm (it may have promoted at the same time)"
                            .to_owned(),
                    ),
                }
            }
            Ok(()) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                self.promoted.store(true, Ordering::Release);
                self.confirming.store(false, Ordering::Release);
                tracing::info!(resource = %self.repl.name(), "auto-promoted: an NBD client writes");
                Ok(())
            }
            Err(why) => {
                if self.repl.role() == Role::Primary {
                    if let Err(e) = self.repl.secondary().await {
                        tracing::error!(resource = %self.repl.name(), "undoing an unconfirmed auto-promotion: {e}");
                    }
                }
                if let (Some(s), true) = (self.scope.get(), took) {
                    s.release("the auto-promotion failed").await;
                }
                self.confirming.store(false, Ordering::Release);
                Err(refused(why))
            }
        }
    }

    fn is_settled_primary(&self) -> bool {
        self.repl.role() == Role::Primary && !self.confirming.load(Ordering::Acquire)
    }

    /// The last writer left: back to Secondary if the promotion was ours and nobody came back.
    async fn demote_if_unused(&self) {
        let _turn = self.turn.lock().await;
        if self.writers.load(Ordering::Acquire) != 0
            || !self.promoted.load(Ordering::Acquire)
            || self.stopping.load(Ordering::Acquire)
        {
            return;
        }
        self.promoted.store(false, Ordering::Release);
        if self.repl.role() != Role::Primary {
            return;
        }
        match self.repl.secondary().await {
            Ok(()) => {
                tracing::info!(resource = %self.repl.name(), "auto-demoted: the last NBD client that wrote has left");
                if let Some(s) = self.scope.get() {
                    s.release("auto-demoted: the last writer left").await;
                }
            }
            Err(e) => {
                crate::warn_rl!(self.rl, resource = %self.repl.name(), "auto-demotion failed, staying Primary: {e}")
            }
        }
    }
}
